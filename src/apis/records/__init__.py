"""Operations records: the units' action log (files, bus, UDP multicast) and its receivers."""

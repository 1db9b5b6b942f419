"""Units as separate processes: `apis unit` (one unit on the NATS bus, its driver over HTTP)
and `apis cluster up` (a 3-server NATS cluster, the emulator and N unit processes on one
machine). `LocalCluster` is the same thing as a library, for tests and benchmarks."""

"""The converter's communication watchdog: with no communication for `timeout_s`, a
converter stops by itself (back to Waiting, 0x0000).

A converter whose master has died must not go on pushing or drawing current on the grid.
The seed and the spec say nothing of the EZA2500's own timeout, so the default (60 s) is our
choice: a unit reads its converter every 5 s, so in normal operation it never fires. Every
frame addressed to the converter counts, reads as well as writes: a master that still reads
is alive and in control. The serial twin and the emulated converter both follow this model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class CommunicationWatchdog:
    """`timeout_s` of silence stops the converter; None: no watchdog."""

    timeout_s: float | None = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.timeout_s is not None and not (
            math.isfinite(self.timeout_s) and self.timeout_s > 0
        ):
            raise ValueError(f"timeout_s = {self.timeout_s} (must be a finite number > 0)")

    def deadline(self, last_heard_s: float) -> float:
        """When a converter last heard at `last_heard_s` stops (inf: never)."""
        return math.inf if self.timeout_s is None else last_heard_s + self.timeout_s

    def expired(self, last_heard_s: float, now_s: float) -> bool:
        return now_s > self.deadline(last_heard_s)

"""Battery capacity management for gateway units (spec 12.6).

Several apis-main processes on one host share one battery (one per cluster). With
`batteryCapacityManagement.enabled` a process must hold an OS lock per direction before it
takes a deal in that direction: lock files `fileSystemExclusiveLockFileFormat % name` with
names `batteryCapacity.DISCHARGE` / `batteryCapacity.CHARGE`, taken with a non-blocking
advisory `flock` (released by the OS if the holder dies, so a crash never blocks forever).

- test(direction): True if this process holds the lock or could take it now (it is taken
  and released again); always True when the feature is off;
- acquire(direction) at deal-interlock acquisition; release(direction) when the last deal of
  that direction is released, and release_all() on reset.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

from apis.config.unitconfig import UnitConfig

log = logging.getLogger(__name__)

DIRECTIONS = ("CHARGE", "DISCHARGE")


def lock_path(config: UnitConfig, direction: str, tmpdir: str | None = None) -> Path:
    pattern = config.file_system_exclusive_lock_file_format.replace(
        "{tmpdir}", tmpdir or tempfile.gettempdir()
    )
    return Path(pattern.replace("%s", f"batteryCapacity.{direction}"))


class BatteryCapacityLocks:
    def __init__(self, config: UnitConfig) -> None:
        self.config = config
        self.enabled = config.battery_capacity_management.enabled
        self._held: dict[str, int] = {}  # direction -> fd

    @staticmethod
    def _direction(direction: str) -> str:
        d = direction.upper()
        if d not in DIRECTIONS:
            raise ValueError(f"direction = {direction!r} (must be charge or discharge)")
        return d

    def _try(self, direction: str) -> int | None:
        path = lock_path(self.config, direction)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def test(self, direction: str) -> bool:
        if not self.enabled:
            return True
        d = self._direction(direction)
        if d in self._held:
            return True
        fd = self._try(d)
        if fd is None:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return True

    def acquire(self, direction: str) -> bool:
        if not self.enabled:
            return True
        d = self._direction(direction)
        if d in self._held:
            return True
        fd = self._try(d)
        if fd is None:
            return False
        self._held[d] = fd
        return True

    def release(self, direction: str) -> None:
        fd = self._held.pop(self._direction(direction), None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release_all(self) -> None:
        for d in list(self._held):
            self.release(d)

    def holds(self, direction: str) -> bool:
        return self._direction(direction) in self._held

"""What one unit knows about itself, shared by its services (node-local memory, 1.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

from apis.unit.decisions import interlocks_full
from apis.unit.errors import ErrorRecord


def effective_mode(global_mode: str, local_mode: str | None) -> str:
    """Section 12.4: a local mode matters only while the global mode lets units trade."""
    if local_mode is None:
        return global_mode
    if global_mode in ("autonomous", "heteronomous"):
        return local_mode
    return global_mode


@dataclass
class UnitState:
    unit_id: str
    interlock_capacity: int
    started: bool = False
    stopping: bool = False
    deal_ids: list[str] = field(default_factory=list)  # deal interlocks held
    is_grid_master: bool = False
    global_mode: str = "stop"  # last value read from the shared store
    local_mode: str | None = None  # None / "heteronomous" / "stop"
    local_errors: list[ErrorRecord] = field(default_factory=list)
    last_error_handling: float | None = None  # loop time of the last local handling

    @property
    def in_operation(self) -> bool:
        return self.started and not self.stopping

    @property
    def effective_mode(self) -> str:
        return effective_mode(self.global_mode, self.local_mode)

    @property
    def busy(self) -> bool:
        return interlocks_full(self.interlock_capacity, len(self.deal_ids))

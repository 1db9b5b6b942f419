"""Error records (spec 1.8, 11): category, extent and level, as the original classifies them.

Every error is published on `apis.error`; the unit it names caches its LOCAL errors and the
Grid Master caches the others (`apis.unit.errorhandling`). WARN is only logged. The handling
tables of sections 11.2 (local) and 11.3 (global) are `local_actions` / `global_actions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CATEGORIES = ("HARDWARE", "FRAMEWORK", "LOGIC", "USER", "UNKNOWN")
EXTENTS = ("GLOBAL", "LOCAL", "UNKNOWN")
LEVELS = ("WARN", "ERROR", "FATAL", "UNKNOWN")


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    unit_id: str
    category: str
    extent: str
    level: str
    message: str
    at: float = 0.0  # loop time it was raised

    def to_json(self) -> dict[str, Any]:
        return {
            "unitId": self.unit_id,
            "category": self.category,
            "extent": self.extent,
            "level": self.level,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], at: float = 0.0) -> ErrorRecord:
        return cls(
            str(data.get("unitId", "")),
            str(data.get("category", "UNKNOWN")),
            str(data.get("extent", "UNKNOWN")),
            str(data.get("level", "UNKNOWN")),
            str(data.get("message", "")),
            at,
        )

    def __str__(self) -> str:
        return f"({self.category}:{self.extent}:{self.level}:{self.unit_id}) {self.message}"


class DealFailure(Exception):
    """A deal step failed; the message becomes the abort reason."""


class GlobalError(DealFailure):
    """A failure the Grid Master must handle cluster-wide (scram, maybe mode `stop`)."""

    def __init__(self, category: str, level: str, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.level = level


# ---- handling tables (sections 11.2, 11.3) ---------------------------------------------

ASK_AND_WAIT_FOR_STOP_DEALS = "askAndWaitForStopDeals"
STOP_LOCAL = "stopLocal"
MARK_STOPPING = "markStopping"
DEACTIVATE_GRID_MASTER = "deactivateGridMaster"
RESET_LOCAL = "resetLocal"
SHUTDOWN_LOCAL = "shutdownLocal"
SCRAM = "scram"
BUDO_STOP = "budoStop"
RESET_ALL = "resetAll"
SHUTDOWN_ALL = "shutdownAll"

# The order actions run in when one round merges several buckets.
LOCAL_ORDER = (
    ASK_AND_WAIT_FOR_STOP_DEALS,
    STOP_LOCAL,
    MARK_STOPPING,
    DEACTIVATE_GRID_MASTER,
    RESET_LOCAL,
    SHUTDOWN_LOCAL,
)
GLOBAL_ORDER = (SCRAM, BUDO_STOP, RESET_ALL, SHUTDOWN_ALL)

_LOCAL_FATAL = (
    ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL, MARK_STOPPING, DEACTIVATE_GRID_MASTER,
    SHUTDOWN_LOCAL,
)
_LOCAL_ERROR = {
    "HARDWARE": (ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL),
    "FRAMEWORK": (ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL, DEACTIVATE_GRID_MASTER, RESET_LOCAL),
    "LOGIC": (ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL, DEACTIVATE_GRID_MASTER, RESET_LOCAL),
    "USER": (ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL),
    # Not in the original's table: an ERROR of unknown category is handled like LOGIC (stop
    # the converter and reset), the safe choice short of shutting the unit down.
    "UNKNOWN": (ASK_AND_WAIT_FOR_STOP_DEALS, STOP_LOCAL, DEACTIVATE_GRID_MASTER, RESET_LOCAL),
}
_GLOBAL_ERROR = {
    "HARDWARE": (SCRAM, BUDO_STOP),
    "FRAMEWORK": (SCRAM, RESET_ALL),
    "LOGIC": (SCRAM, RESET_ALL),
    "USER": (SCRAM,),
    "UNKNOWN": (SCRAM, RESET_ALL),  # not in the original's table; as LOGIC
}


def local_actions(errors: list[ErrorRecord]) -> list[str]:
    """Section 11.2: the actions for one round of local errors, merged, in order."""
    wanted: set[str] = set()
    for e in errors:
        if e.level in ("FATAL", "UNKNOWN"):
            wanted.update(_LOCAL_FATAL)
        elif e.level == "ERROR":
            wanted.update(_LOCAL_ERROR.get(e.category, _LOCAL_ERROR["UNKNOWN"]))
    return [a for a in LOCAL_ORDER if a in wanted]


def global_actions(errors: list[ErrorRecord]) -> list[str]:
    """Section 11.3: the actions for one round of global errors, merged, in order."""
    wanted: set[str] = set()
    for e in errors:
        if e.level in ("FATAL", "UNKNOWN"):
            wanted.update((SCRAM, SHUTDOWN_ALL))
        elif e.level == "ERROR":
            wanted.update(_GLOBAL_ERROR.get(e.category, _GLOBAL_ERROR["UNKNOWN"]))
    return [a for a in GLOBAL_ORDER if a in wanted]

"""Error records (spec 1.8, 11): category, extent and level, as the original classifies them.

Part 1 keeps errors and their minimal consequences; the full handling tables of section 11
come with the error-handling issue.
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

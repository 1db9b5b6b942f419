"""scenario.json: one unit's rules for when to ask for and accept deals.

Top-level keys: `refreshingPeriodMsec`, `acceptSelection`, and time windows
``"hh:mm:ss-hh:mm:ss"`` (start inclusive, end exclusive, compared as strings; the first
matching window in file order wins). Each window holds `batteryStatus` (ranges of remaining
capacity in Wh -> status name), `request` and `accept` tables, and optionally its own
`acceptSelection`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from apis.config.base import ConfigModel, rule
from apis.config.errors import show_value

Direction = Literal["charge", "discharge"]
WINDOW_KEY = re.compile(r"^(\d\d:\d\d:\d\d)-(\d\d:\d\d:\d\d)$")
_RANGE_KEY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)?\s*-\s*(-?\d+(?:\.\d+)?)?\s*$")
DAY_START = "00:00:00"
DAY_END = "24:00:00"


class AcceptSelection(ConfigModel):
    strategy: Literal["amount", "pointAndAmount"] = "amount"


class DealRule(ConfigModel):
    """One `request.<status>.<direction>` or `accept.<status>.<direction>` entry."""

    # Charge up to / discharge down to this remaining capacity (at most the battery's:
    # a rule with hwConfig.json).
    limit_wh: float = Field(ge=0)
    point_per_wh: float | None = None
    pair_unit_id: str | None = None


@dataclass(frozen=True, slots=True)
class StatusRange:
    """Remaining capacity `lower <= wh < upper` (None = open) is called `status`."""

    lower: float | None
    upper: float | None
    status: str

    def contains(self, wh: float) -> bool:
        return (self.lower is None or self.lower <= wh) and (self.upper is None or wh < self.upper)

    @property
    def key(self) -> str:
        def fmt(v: float | None) -> str:
            return "" if v is None else f"{v:g}"

        return f"{fmt(self.lower)}-{fmt(self.upper)}"


def parse_range_key(key: str) -> tuple[float | None, float | None]:
    """``"2880-3600"`` -> (2880, 3600); ``"4320-"`` -> (4320, None); ``"-2880"`` -> (None, 2880)."""
    m = _RANGE_KEY.match(key)
    if not m:
        raise ValueError(f"batteryStatus key {key!r} (must be 'lower-upper' in Wh, either empty)")
    lower = float(m.group(1)) if m.group(1) is not None else None
    upper = float(m.group(2)) if m.group(2) is not None else None
    if lower is not None and upper is not None and lower >= upper:
        raise ValueError(f"batteryStatus key {key!r} (lower {lower:g} must be < upper {upper:g})")
    return lower, upper


class ScenarioBlock(ConfigModel):
    """The rules valid in one time window."""

    battery_status: dict[str, str] = Field(min_length=1)
    request: dict[str, dict[Direction, DealRule]] = {}
    accept: dict[str, dict[Direction, DealRule]] = {}
    accept_selection: AcceptSelection | None = None

    @field_validator("battery_status")
    @classmethod
    def _range_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            parse_range_key(key)
        return value

    @rule
    def _known_statuses(self) -> list[str]:
        names = set(self.battery_status.values())
        return [
            f"{table_name}.{status} (status must be one of batteryStatus values {sorted(names)})"
            for table_name, table in (("request", self.request), ("accept", self.accept))
            for status in table
            if status not in names
        ]

    @cached_property
    def ranges(self) -> tuple[StatusRange, ...]:
        # Parsed once: house keeping asks for the status of every unit every few seconds.
        return tuple(
            StatusRange(*parse_range_key(key), status)
            for key, status in self.battery_status.items()
        )

    def band_problems(self) -> list[tuple[str, str]]:
        """The batteryStatus ranges, sorted, must join without gap or overlap from 0 Wh up
        (whether they reach the capacity is a rule with hwConfig.json): (path, message)."""
        problems: list[tuple[str, str]] = []
        ranges = sorted(self.ranges, key=lambda r: -1e300 if r.lower is None else r.lower)
        low = ranges[0].lower
        if low is not None and low > 0:
            problems.append(("batteryStatus",
                             f"(ranges start at {low:g} Wh; 0..{low:g} Wh is uncovered)"))
        for a, b in itertools.pairwise(ranges):
            if a.upper is None or (b.lower is not None and b.lower < a.upper):
                problems.append(("batteryStatus", f"(ranges {a.key!r} and {b.key!r} overlap)"))
            elif b.lower is not None and b.lower > a.upper:
                problems.append(("batteryStatus", f"(ranges {a.key!r} and {b.key!r} leave "
                                                  f"{a.upper:g}..{b.lower:g} Wh uncovered)"))
        return problems

    def status_of(self, remaining_wh: float) -> str | None:
        """The first range (file order) that holds `remaining_wh`, or None."""
        for r in self.ranges:
            if r.contains(remaining_wh):
                return r.status
        return None


@dataclass(frozen=True, slots=True)
class TimeWindow:
    start: str  # "hh:mm:ss", inclusive
    end: str  # "hh:mm:ss", exclusive; "24:00:00" allowed
    block: ScenarioBlock

    @property
    def key(self) -> str:
        return f"{self.start}-{self.end}"

    def contains(self, time_of_day: str) -> bool:
        return self.start <= time_of_day < self.end


class ScenarioError(ValueError):
    """A scenario file broke a rule; `problems` holds (path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Scenario:
    refreshing_period_msec: int
    accept_selection: AcceptSelection
    windows: tuple[TimeWindow, ...]

    def window_at(self, time_of_day: str) -> TimeWindow | None:
        """The first window (file order) holding ``hh:mm:ss``, or None."""
        for w in self.windows:
            if w.contains(time_of_day):
                return w
        return None

    def block_at(self, time_of_day: str) -> ScenarioBlock | None:
        w = self.window_at(time_of_day)
        return w.block if w else None

    def selection_at(self, time_of_day: str) -> AcceptSelection:
        block = self.block_at(time_of_day)
        if block is not None and block.accept_selection is not None:
            return block.accept_selection
        return self.accept_selection

    def band_problems(self) -> list[tuple[str, str]]:
        """Every window's batteryStatus gaps and overlaps: (path, message)."""
        return [(f"{w.key}.{path}", message)
                for w in self.windows for path, message in w.block.band_problems()]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refreshingPeriodMsec": self.refreshing_period_msec,
            "acceptSelection": self.accept_selection.to_json(),
        }
        for w in self.windows:
            out[w.key] = w.block.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> Scenario:
        """Validate a scenario (comment keys already stripped); raise ScenarioError with all
        problems found."""
        problems: list[tuple[str, str]] = []
        if not isinstance(data, dict):
            raise ScenarioError([("", f"top level = {type(data).__name__} (must be an object)")])
        period = data.get("refreshingPeriodMsec", 5000)
        if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
            problems.append(("refreshingPeriodMsec",
                             f"= {show_value(period)} (must be an integer > 0)"))
            period = 5000
        selection = AcceptSelection()
        if "acceptSelection" in data:
            try:
                selection = AcceptSelection.model_validate(data["acceptSelection"])
            except ValidationError as e:
                problems.extend(_prefixed("acceptSelection", e))
        windows: list[TimeWindow] = []
        for key, value in data.items():
            if key in ("refreshingPeriodMsec", "acceptSelection"):
                continue
            m = WINDOW_KEY.match(key)
            if not m:
                problems.append(
                    (key, "unknown key (must be refreshingPeriodMsec, acceptSelection or a "
                          "time window 'hh:mm:ss-hh:mm:ss')")
                )
                continue
            start, end = m.group(1), m.group(2)
            if not (_valid_time(start) and _valid_time(end) and start < end):
                problems.append(
                    (key, "time window (must be 'hh:mm:ss-hh:mm:ss' with start < end <= 24:00:00)")
                )
                continue
            try:
                block = ScenarioBlock.model_validate(value)
            except ValidationError as e:
                problems.extend(_prefixed(key, e))
                continue
            except ValueError as e:
                problems.append((key, str(e)))
                continue
            windows.append(TimeWindow(start, end, block))
        if not windows and not problems:
            problems.append(("", "no time window (need at least one 'hh:mm:ss-hh:mm:ss' key)"))
        problems.extend(("", gap) for gap in _uncovered(windows))
        if problems:
            raise ScenarioError(problems)
        return cls(period, selection, tuple(windows))


def _uncovered(windows: list[TimeWindow]) -> list[str]:
    """Gaps in the day left by the windows (first match wins, so overlaps are fine)."""
    if not windows:
        return []
    gaps = []
    reach = DAY_START
    for start, end in sorted((w.start, w.end) for w in windows):
        if start > reach:
            gaps.append(f"time windows leave {reach}-{start} uncovered "
                        f"(windows must cover {DAY_START}-{DAY_END})")
        reach = max(reach, end)
    if reach < DAY_END:
        gaps.append(f"time windows leave {reach}-{DAY_END} uncovered "
                    f"(windows must cover {DAY_START}-{DAY_END})")
    return gaps


def _valid_time(text: str) -> bool:
    h, m, s = (int(x) for x in text.split(":"))
    if (h, m, s) == (24, 0, 0):
        return True
    return h < 24 and m < 60 and s < 60


def _prefixed(prefix: str, error: ValidationError) -> list[tuple[str, str]]:
    from apis.config.errors import describe_pydantic_error

    out = []
    for err in error.errors():
        path, message = describe_pydantic_error(err)
        out.append((f"{prefix}.{path}" if path else prefix, message))
    return out

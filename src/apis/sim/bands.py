"""Moving a scenario's status bands: `scenario.<band>` parameters of sweeps and `apis sim
optimise`.

A scenario says, per time window, which battery status a remaining energy in Wh is in
(`batteryStatus`: ranges such as ``"3840-": "excess"``). A band parameter gives, as a share
of each unit's own battery capacity (0..1), where a band now begins:

- ``scenario.excess=0.7``: a unit is in its excess band from 70 % of its capacity up;
- ``scenario.sufficient``, ``scenario.scarce``: the same for those bands (any status name of
  the scenario works; ``short`` begins at 0 Wh and cannot move).

The range below the band ends where the band now begins, so the ranges still join without
gap or overlap. The deal limits (`limitWh` of `request` and `accept`) that equal the band's old
boundary move with it: in the generated scenarios they are the band boundaries ("discharge
down to where excess begins"). A unit whose scenario has no such band in a window keeps that
window as it is. After the move the bands must keep their order in every window.
"""

from __future__ import annotations

from typing import Any

from apis.config.scenario import parse_range_key

PREFIX = "scenario."


class BandError(ValueError):
    """A band parameter that cannot be applied; the message names it, the value, the rule."""


def band_name(parameter: str) -> str | None:
    """The band a parameter moves (``scenario.excess`` -> ``excess``), else None."""
    if not parameter.startswith(PREFIX):
        return None
    name = parameter.removeprefix(PREFIX)
    return name or None


def check_share(parameter: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BandError(f"{parameter} = {value!r} (must be a share of the battery capacity, "
                        "a number between 0 and 1)")
    share = float(value)
    if not 0.0 < share < 1.0:
        raise BandError(f"{parameter} = {value!r} (must be > 0 and < 1: a share of the "
                        "battery capacity)")
    return share


def _fmt(wh: float | None) -> str:
    return "" if wh is None else f"{wh:g}"


def move_bands(scenario: dict[str, Any], moves: dict[str, float],
               parameters: dict[str, str]) -> dict[str, Any]:
    """`scenario` (scenario.json's data) with each band of `moves` beginning at its Wh in
    every window that has it, all at once. `parameters` names each band's parameter and
    value for the messages (``"scenario.excess = 0.7"``). Raises BandError when the bands
    would lose their order."""
    result: dict[str, Any] = {}
    moved: set[str] = set()
    for key, block in scenario.items():
        if not isinstance(block, dict) or not isinstance(block.get("batteryStatus"), dict):
            result[key] = block
            continue
        new_block, changed = _move_in_block(block, moves, parameters, key)
        moved |= changed
        result[key] = new_block
    for band in moves:
        if band not in moved:
            raise BandError(f"{parameters[band]}: no time window of the scenario has a movable "
                            f"{band!r} band (statuses are the values of batteryStatus; the "
                            "lowest band begins at 0 Wh)")
    return result


def _move_in_block(block: dict[str, Any], moves: dict[str, float], parameters: dict[str, str],
                   window: str) -> tuple[dict[str, Any], set[str]]:
    ranges = []
    for key, status in block["batteryStatus"].items():
        lower, upper = parse_range_key(key)
        ranges.append([lower, upper, status])
    old_to_new: dict[float, float] = {}
    moved: set[str] = set()
    for band, begin_wh in moves.items():
        mine = [r for r in ranges if r[2] == band]
        if len(mine) == 1 and mine[0][0] is not None:
            old_to_new[mine[0][0]] = float(round(begin_wh))
            moved.add(band)
    if not old_to_new:
        return block, set()
    for r in ranges:
        for end in (0, 1):
            if r[end] in old_to_new:
                r[end] = old_to_new[r[end]]
    for lower, upper, status in ranges:
        if lower is not None and upper is not None and not lower < upper:
            named = ", ".join(f"{parameters[b]} ({moves[b]:.0f} Wh)" for b in moves)
            raise BandError(
                f"{named} in window {window!r}: the {status!r} band would run from {lower:g} "
                f"to {upper:g} Wh (bands must keep their order)")
    new = dict(block)
    new["batteryStatus"] = {f"{_fmt(lo)}-{_fmt(hi)}": status for lo, hi, status in ranges}
    for table in ("request", "accept"):
        if isinstance(block.get(table), dict):
            new[table] = _move_limits(block[table], old_to_new)
    return new, moved


def _move_limits(node: Any, old_to_new: dict[float, float]) -> Any:
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            if (key == "limitWh" and isinstance(value, int | float)
                    and not isinstance(value, bool) and float(value) in old_to_new):
                result[key] = round(old_to_new[float(value)])
            else:
                result[key] = _move_limits(value, old_to_new)
        return result
    return node

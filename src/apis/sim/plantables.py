"""The users' scenario decisions tabulated for the planning model: a cheap screen per step.

A unit's request and its accepts depend only on its scenario block (the time window) and its
remaining capacity in whole Wh. So the planning model evaluates the units' own functions
(`apis.unit.user.evaluate_request` and `evaluate_accept`) once for every remaining capacity
0..capacity of every distinct block, and keeps the amounts in arrays. Each step it looks up,
for every unit at once, whether the unit would ask and who could answer; only when a request
could find an accept does it run the negotiation, with the same functions called on the real
offers. A table is a screen, never the decision: a block whose accept rules name a pair
unit (the answer depends on who asks) always passes the screen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from apis.config.scenario import Scenario, ScenarioBlock
from apis.unit.user import ScenarioEvaluationError, evaluate_accept, evaluate_request

IntArray = NDArray[np.int64]
ALWAYS = np.iinfo(np.int32).max  # passes any screen: the real call decides
_ANYONE = "\x00plan-screen"  # a requester id no rule names


@dataclass(frozen=True)
class DecisionTables:
    """Per distinct block b and remaining capacity r (Wh): request[b, r] (> 0 charge, < 0
    discharge, 0 none), accept_charge[b, r] (the amount it would charge for a discharge
    request), accept_discharge[b, r] (to give for a charge request)."""

    request: IntArray
    accept_charge: IntArray
    accept_discharge: IntArray
    width: int  # remaining capacities 0 .. width - 1

    def flat(self) -> tuple[IntArray, IntArray, IntArray]:
        return self.request.ravel(), self.accept_charge.ravel(), self.accept_discharge.ravel()


def _request_amount(block: ScenarioBlock, remaining: int) -> int:
    try:
        offer = evaluate_request(block, remaining)
    except ScenarioEvaluationError:
        return 0
    if offer is None:
        return 0
    amount = int(offer["amountWh"])
    return amount if offer["type"] == "charge" else -amount


def _accept_amount(block: ScenarioBlock, remaining: int, request_type: str) -> int:
    try:
        offer = evaluate_accept(block, remaining, {"type": request_type, "unitId": _ANYONE},
                                _ANYONE)
    except ScenarioEvaluationError:
        return 0
    return 0 if offer is None else int(offer["amountWh"])


def _names_a_pair(block: ScenarioBlock) -> bool:
    return any(rule.pair_unit_id is not None
               for table in (block.accept, block.request)
               for entry in table.values() for rule in entry.values())


class ScenarioIndex:
    """Every unit's scenario block at any time, as an index into the tables."""

    def __init__(self, scenarios: list[Scenario], capacities_wh: list[float]) -> None:
        self.blocks: list[ScenarioBlock] = []
        block_ids: dict[str, int] = {}
        scenario_ids: dict[str, int] = {}
        # per distinct scenario: second of day where each segment starts, its block id
        self.segments: list[tuple[NDArray[np.int64], NDArray[np.int64]]] = []
        self.scenario_of = np.zeros(len(scenarios), dtype=np.intp)
        for u, scenario in enumerate(scenarios):
            key = json.dumps(scenario.to_json(), sort_keys=True)
            if key not in scenario_ids:
                scenario_ids[key] = len(self.segments)
                self.segments.append(self._segments(scenario, block_ids))
            self.scenario_of[u] = scenario_ids[key]
        width = int(max(capacities_wh, default=0.0)) + 1
        n = len(self.blocks)
        request = np.zeros((n + 1, width), dtype=np.int64)  # the last row: no block
        accept_charge = np.zeros((n + 1, width), dtype=np.int64)
        accept_discharge = np.zeros((n + 1, width), dtype=np.int64)
        for b, block in enumerate(self.blocks):
            request[b] = [_request_amount(block, r) for r in range(width)]
            if _names_a_pair(block):
                accept_charge[b] = ALWAYS
                accept_discharge[b] = ALWAYS
            else:
                accept_charge[b] = [_accept_amount(block, r, "discharge") for r in range(width)]
                accept_discharge[b] = [_accept_amount(block, r, "charge") for r in range(width)]
        self.tables = DecisionTables(request, accept_charge, accept_discharge, width)
        self.no_block = n

    def _segments(
        self, scenario: Scenario, block_ids: dict[str, int]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        # The window that holds a second changes only at a window's start or end.
        cuts = sorted({0, *(self._seconds(w.start) for w in scenario.windows),
                       *(self._seconds(w.end) for w in scenario.windows)} - {86400})
        starts, ids = [], []
        for second in cuts:
            block = scenario.block_at(_hms(second))
            if block is None:
                index = -1  # resolved to `no_block` below
            else:
                key = json.dumps(block.to_json(), sort_keys=True)
                if key not in block_ids:
                    block_ids[key] = len(self.blocks)
                    self.blocks.append(block)
                index = block_ids[key]
            starts.append(second)
            ids.append(index)
        return np.array(starts, dtype=np.int64), np.array(ids, dtype=np.int64)

    @staticmethod
    def _seconds(hms: str) -> int:
        h, m, s = (int(x) for x in hms.split(":"))
        return h * 3600 + m * 60 + s

    def block_ids(self, seconds_of_day: NDArray[np.int64]) -> NDArray[np.int64]:
        """(times x units) block ids at whole seconds of the day."""
        per_scenario = []
        for starts, ids in self.segments:
            found = ids[np.searchsorted(starts, seconds_of_day, side="right") - 1]
            per_scenario.append(np.where(found < 0, self.no_block, found))
        table = np.stack(per_scenario)  # scenarios x times
        result: NDArray[np.int64] = table[self.scenario_of].T
        return result


def _hms(second: int) -> str:
    return (datetime(2000, 1, 1) + timedelta(seconds=second)).strftime("%H:%M:%S")

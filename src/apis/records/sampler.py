"""Unit data sampled by the records receiver at its own period, into the unit-data stream.

Each period (aligned to the wall clock, so a restart keeps the same instants) the sampler
asks the Grid Master for every unit's data (`apis.GridMaster.data.all`); without a Grid
Master it asks each unit it knows (`apis.<id>.Controller.data`). Each unit's answer is
published as one JetStream message ``{"unitId", "sampledAt", "data"}`` on
``apis.records.unitData.<unitId>`` with the message id ``<unitId>@<sampledAt>`` (the stream
drops a second copy), and the server's acknowledgement awaited: from then on the sample is
the stream's to keep. A sample that cannot be taken or published is logged and skipped.

For an in-process cluster (`apis demo`, no JetStream) `deliver` takes each sample instead of
the stream, and `clock` gives the cluster's (simulated) time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import nats.errors
from nats.js import JetStreamContext

from apis.bus.base import Bus, BusError
from apis.bus.nats import encode
from apis.records.inbound import UNIT_ID, unit_data_subject
from apis.unit import subjects

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0

# (unit id, sampledAt, unit data) -> whether it was kept
Deliver = Callable[[str, float, dict[str, Any]], Awaitable[bool]]


class Sampler:
    def __init__(
        self,
        bus: Bus,
        js: JetStreamContext | None,
        period_s: float,
        known_units: Callable[[], Iterable[str]],
        on_sample: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        deliver: Deliver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"unit data period = {period_s} s (must be > 0)")
        if (js is None) == (deliver is None):
            raise ValueError("a sampler delivers to JetStream (js) or to `deliver`, one")
        self.bus = bus
        self.js = js
        self.deliver = deliver if deliver is not None else self._publish
        self.clock = clock
        self.period_s = period_s
        self.known_units = known_units
        self.on_sample = on_sample
        self.published = 0
        self._reported: set[str] = set()  # failures said once, until they end

    def _report(self, what: str, text: str, *args: Any) -> None:
        if what not in self._reported:
            self._reported.add(what)
            log.warning(text, *args)

    def _recovered(self, what: str) -> None:
        if what in self._reported:
            self._reported.discard(what)
            log.info("records: %s answers again", what)

    async def run(self) -> None:
        last: float | None = None
        while True:
            now = self.clock()
            next_at = (now // self.period_s + 1) * self.period_s
            if last is not None and next_at <= last:
                # woken before `clock` reached the instant (the loop's sleep and the clock
                # are not one clock: an emulated world's time moves in steps): the next one
                next_at = last + self.period_s
            await asyncio.sleep(next_at - now)
            last = next_at
            await self.sample(round(next_at, 3))

    async def _collect(self) -> dict[str, Any]:
        timeout = min(REQUEST_TIMEOUT_S, self.period_s)
        try:
            answer = await self.bus.request(subjects.GRID_MASTER_DATA_ALL, timeout=timeout)
            if isinstance(answer, dict):
                self._recovered("the Grid Master")
                return answer
            log.error("records: %s answered %.80r (must be an object of unit data)",
                      subjects.GRID_MASTER_DATA_ALL, answer)
        except BusError as exc:
            self._report("the Grid Master",
                         "records: no Grid Master data (%s); asking each unit", exc)
        units = sorted(set(self.known_units()))

        async def one(unit_id: str) -> tuple[str, Any]:
            try:
                data = await self.bus.request(subjects.controller_data(unit_id), timeout=timeout)
            except BusError as exc:
                self._report(unit_id, "records: no unit data from %s: %s", unit_id, exc)
                return unit_id, None
            self._recovered(unit_id)
            return unit_id, data

        answers = await asyncio.gather(*(one(unit) for unit in units))
        return {unit: data for unit, data in answers if data is not None}

    async def sample(self, sampled_at: float) -> int:
        """Take one sample of every unit and publish it; return how many were published."""
        units = await self._collect()
        count = 0
        for unit_id, data in sorted(units.items()):
            if not isinstance(unit_id, str) or not UNIT_ID.fullmatch(unit_id):
                log.error("records: unit data for unit id %.80r refused (a unit id: 1-64 of "
                          "A-Z a-z 0-9 _ -)", unit_id)
                continue
            if not isinstance(data, dict):
                log.error("records: unit data of %s = %.80r refused (must be an object)",
                          unit_id, data)
                continue
            if self.on_sample is not None:
                self.on_sample(unit_id, data)
            if await self.deliver(unit_id, sampled_at, data):
                count += 1
        self.published += count
        return count

    async def _publish(self, unit_id: str, sampled_at: float, data: dict[str, Any]) -> bool:
        assert self.js is not None
        payload = {"unitId": unit_id, "sampledAt": sampled_at, "data": data}
        try:
            await self.js.publish(
                unit_data_subject(unit_id), encode(payload),
                headers={"Nats-Msg-Id": f"{unit_id}@{sampled_at:.3f}"},
            )
        except (nats.errors.Error, TypeError) as exc:
            log.error("records: unit data sample of %s at %.3f not published: %r",
                      unit_id, sampled_at, exc)
            return False
        return True

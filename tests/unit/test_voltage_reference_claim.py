"""One voltage reference, decided in the store: the claim a Controller takes before its
converter enters CV (`apis.unit.vrclaim`).

Controllers of emulated units on one in-memory bus, in virtual time: concurrent CV choices
(the Grid Master's commands) of which exactly one wins, the claim moving with a hand-over,
renewed while in CV, expiring when nobody renews it, released on WAIT and on scram; a
converter found in CV without the claim; and the Grid Master's first deal refused by a claim
another unit holds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apis import clock
from apis.bus.base import RemoteFailure
from apis.bus.memory import MemoryHub
from apis.emulator import World
from apis.emulator.driver import EmulatedDriver
from apis.hardware.driver import ConverterData
from apis.hardware.modes import ConverterMode
from apis.unit import subjects
from apis.unit.controller import CommandError, Controller
from apis.unit.registry import (
    VOLTAGE_REFERENCE_CLAIM_TTL_S,
    VOLTAGE_REFERENCE_KEY,
    Registry,
)
from apis.unit.state import UnitState
from apis.unit.vrclaim import Claim

from .checks import until
from .harness import Rig, Watch, WatchedDriver, write_config

T = TypeVar("T")
FOUR = ["E001", "E002", "E003", "E004"]
VR, WAIT = ConverterMode.VOLTAGE_REFERENCE, ConverterMode.WAITING


class Bench:
    """Controllers of `FOUR` on one hub over one emulated world; no Grid Master, no ticks
    unless a test starts them: each test drives the commands itself."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = write_config(tmp_path, FOUR)
        self.world = World([(u.unit_id, u.hw_config) for u in self.config.units],
                           self.config.grid, seed=1, initial_rsoc=[50.0] * 4)
        for unit_id in FOUR:
            self.world.set_house_override(unit_id, pv_w=0.0, load_w=0.0)
        self.watch = Watch()
        self.hub = MemoryHub()
        self.controllers: dict[str, Controller] = {}
        self.reports: list[tuple[str, str, str, str, str]] = []

    async def start(self) -> Bench:
        for files in self.config.units:
            unit_id = files.config.unit_id
            bus = self.hub.connect(unit_id)

            async def report(category: str, extent: str, level: str, message: str,
                             unit_id: str = unit_id) -> None:
                self.reports.append((unit_id, category, extent, level, message))

            self.controllers[unit_id] = Controller(
                config=files.config, hw=files.hw_config, policy=files.policy,
                driver=WatchedDriver(EmulatedDriver(self.world, unit_id),  # type: ignore[arg-type]
                                     self.watch),
                bus=bus, registry=await Registry.open(bus), state=UnitState(unit_id, 2),
                rng=random.Random(0), report=report,
            )
        self.observer = await Registry.open(self.hub.connect("observer"))
        return self

    async def holder(self) -> Claim | None:
        entry = await self.observer.voltage_reference_kv.get(VOLTAGE_REFERENCE_KEY)
        return Claim.from_entry(entry) if entry is not None else None

    def in_cv(self) -> list[str]:
        return [u for u in FOUR if self.world.unit_data(u).dcdc.mode is VR]


def _bench(tmp_path: Path, body: Callable[[Bench], Awaitable[T]]) -> T:
    async def main() -> T:
        return await body(await Bench(tmp_path).start())

    return clock.run(main, "virtual")


def test_concurrent_voltage_reference_commands_one_wins(tmp_path: Path) -> None:
    """Every unit told VOLTAGE_REFERENCE at once (as two Grid Masters' choices, or one
    that chose twice): exactly one converter enters CV, every other command is refused
    naming the winner; after the winner's WAIT the next round has a winner again."""

    async def body(b: Bench) -> list[tuple[str, list[str]]]:
        rounds = []
        for _ in range(5):
            results = await asyncio.gather(
                *(c.execute("VOLTAGE_REFERENCE", {}) for c in b.controllers.values()),
                return_exceptions=True,
            )
            won = [u for u, r in zip(FOUR, results, strict=True)
                   if isinstance(r, ConverterData)]
            assert len(won) == 1, results
            winner = won[0]
            holder = await b.holder()
            assert holder is not None and holder.unit_id == winner
            for unit_id, result in zip(FOUR, results, strict=True):
                if unit_id != winner:
                    assert isinstance(result, CommandError), result
                    assert f"VOLTAGE_REFERENCE on {unit_id} refused" in str(result)
                    assert f"claimed by {winner} (claim {holder.claim_id}" in str(result)
            rounds.append((winner, b.in_cv()))
            await b.controllers[winner].execute("WAIT", {})
            assert await b.holder() is None  # released on WAIT
            assert b.in_cv() == []
        return rounds

    rounds = _bench(tmp_path, body)
    assert all(in_cv == [winner] for winner, in_cv in rounds), rounds
    # (only the winner ever entered CV: no two references, stiff or with droop)


def test_the_claim_moves_with_a_hand_over(tmp_path: Path) -> None:
    """Spec 6.5 with the claim: step 2 moves it from A to B by compare-and-set; A, still
    in CV with droop until step 3, finds it gone without an error; A's WAIT leaves B's
    claim alone; B's WAIT releases it."""

    async def body(b: Bench) -> list[Any]:
        a, c = b.controllers["E003"], b.controllers["E004"]
        await a.execute("VOLTAGE_REFERENCE", {})
        before = await b.holder()
        assert before is not None and before.unit_id == "E003"
        await a.execute("voltageReferenceWillHandOver", {})
        await c.execute("voltageReferenceWillTakeOver",
                        {"gridVoltageV": 350.0, "voltageReferenceUnitId": "E003"})
        moved = await b.holder()
        assert moved is not None and moved.unit_id == "E004"
        assert moved.claim_id != before.claim_id
        assert sorted(b.in_cv()) == ["E003", "E004"]  # both with droop, for an instant
        await a.keep_claim()  # a tick on A in the middle of the hand-over
        assert a.claim.held is None
        await a.execute("voltageReferenceDidHandOver", {})
        await c.execute("voltageReferenceDidTakeOver", {})
        after = await b.holder()
        assert after == moved  # A's WAIT did not delete B's claim
        assert b.in_cv() == ["E004"]
        await c.keep_claim()  # B's tick renews it
        renewed = await b.holder()
        assert renewed is not None and renewed.claim_id == moved.claim_id
        assert renewed.revision > moved.revision
        await c.execute("WAIT", {})
        return [await b.holder(), b.reports]

    assert _bench(tmp_path, body) == [None, []]


def test_take_over_only_from_the_holder(tmp_path: Path) -> None:
    """voltageReferenceWillTakeOver moves the claim only from the unit that holds it: from
    another (the Grid Master's view of the reference is stale) or without naming one it is
    refused, naming the holder, and the converter stays as it was."""

    async def body(b: Bench) -> list[str]:
        await b.controllers["E003"].execute("VOLTAGE_REFERENCE", {})
        refused = []
        for params in ({"voltageReferenceUnitId": "E001"}, {}):
            with pytest.raises(CommandError) as e:
                await b.controllers["E004"].execute("voltageReferenceWillTakeOver", params)
            refused.append(str(e.value))
        with pytest.raises(CommandError) as e:
            await b.controllers["E004"].execute(
                "voltageReferenceWillTakeOver", {"voltageReferenceUnitId": "E009"})
        refused.append(str(e.value))
        holder = await b.holder()
        assert holder is not None and holder.unit_id == "E003"
        assert b.in_cv() == ["E003"]
        await b.controllers["E003"].execute("WAIT", {})
        return refused

    refused = _bench(tmp_path, body)
    assert all("claimed by E003" in r for r in refused[:2]), refused
    assert "voltageReferenceUnitId = 'E009' (must be one of memberUnitIds" in refused[2]


def test_renewed_while_in_cv_and_expires_without_renewal(tmp_path: Path) -> None:
    """The acquisition tick renews the claim while the converter stays in CV (the same
    claim after three TTLs); a holder that stops (no tick: a crashed process) loses it
    one TTL after its last renewal, and another unit can then take it."""

    async def body(b: Bench) -> tuple[Claim | None, Claim | None, str | None]:
        holder = b.controllers["E003"]
        await holder.execute("VOLTAGE_REFERENCE", {})
        first = await b.holder()
        tick = asyncio.ensure_future(holder.acquisition_loop())
        await asyncio.sleep(3 * VOLTAGE_REFERENCE_CLAIM_TTL_S)
        kept = await b.holder()
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
        await asyncio.sleep(VOLTAGE_REFERENCE_CLAIM_TTL_S + 1)
        expired = await b.holder()
        # (E003's converter still holds the grid: the Grid Master's first-deal check and
        # the manual grid check keep a new reference off it; here only the claim matters)
        await b.controllers["E004"].execute("VOLTAGE_REFERENCE", {})
        taken = await b.holder()
        assert first is not None and kept is not None
        assert (kept.unit_id, kept.claim_id) == (first.unit_id, first.claim_id)
        return kept, expired, taken.unit_id if taken else None

    kept, expired, taken = _bench(tmp_path, body)
    assert kept is not None and kept.unit_id == "E003"
    assert expired is None
    assert taken == "E004"


def test_released_by_a_scram_and_when_the_converter_leaves_cv(tmp_path: Path) -> None:
    """A scram's local stop releases the claim; so does a tick that finds the converter
    out of CV by itself (here: set to WAIT behind the Controller's back)."""

    async def body(b: Bench) -> list[Claim | None]:
        c = b.controllers["E002"]
        await c.execute("VOLTAGE_REFERENCE", {})
        seen = [await b.holder()]
        await c.stop_local()
        seen.append(await b.holder())
        await c.execute("VOLTAGE_REFERENCE", {})
        seen.append(await b.holder())
        await c.driver.set(WAIT, 350.0, 0.0, 0.0)
        await c.acquire()
        await c.keep_claim()
        seen.append(await b.holder())
        return seen

    seen = _bench(tmp_path, body)
    assert seen[0] is not None and seen[0].unit_id == "E002" and seen[1] is None
    assert seen[2] is not None and seen[2].unit_id == "E002" and seen[3] is None


def test_a_converter_found_in_cv_without_the_claim(tmp_path: Path) -> None:
    """A converter in CV without the claim (a restarted unit, say) takes it when it is free;
    when another unit holds it, two converters may hold the grid: LOGIC/LOCAL/ERROR."""

    async def body(b: Bench) -> tuple[str | None, list[Any]]:
        e001, e002 = b.controllers["E001"], b.controllers["E002"]
        await e001.driver.set(VR, 350.0, 2.0, 0.0)  # behind its Controller's back
        await e001.acquire()
        await e001.keep_claim()
        taken = await b.holder()
        await e002.driver.set(VR, 350.0, 2.0, 0.0)
        await e002.acquire()
        await e002.keep_claim()
        for c in (e001, e002):
            await c.stop_local()
        return (taken.unit_id if taken else None), b.reports

    taken, reports = _bench(tmp_path, body)
    assert taken == "E001"
    assert reports == [(
        "E002", "LOGIC", "LOCAL", "ERROR",
        reports[0][4],
    )]
    assert reports[0][4].startswith(
        "converter in VOLTAGE_REFERENCE without the claim: the voltage reference is claimed "
        "by E001 (claim "
    )


def test_a_grid_master_s_first_deal_is_refused_by_another_s_claim(tmp_path: Path) -> None:
    """The Grid Master's choice goes through the claim too: with the claim held by E003
    (a reference the Grid Master does not see, say), the first deal's VOLTAGE_REFERENCE to
    E002 is refused naming E003, the deal ends aborted and no converter enters CV."""
    rig = Rig(tmp_path, FOUR, [70.0, 50.0, 70.0, 50.0],
              policy={"operationMode": "heteronomous"})

    async def scenario(rig: Rig) -> str | None:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 120)
        kv = c.registry.voltage_reference_kv
        await kv.create(VOLTAGE_REFERENCE_KEY, {"unitId": "E003", "claimId": "elsewhere"})
        deal = await c.inject_deal({
            "unitId": "E002", "negotiationId": "injected", "requestUnitId": "E002",
            "acceptUnitId": "E001", "type": "charge", "chargeUnitId": "E002",
            "dischargeUnitId": "E001", "dealGridCurrentA": 1.0, "dealAmountWh": 50,
        })
        await until(lambda: any(f.deal.deal_id == deal.deal_id for f in c.finished), 120)
        ended = next(f.deal for f in c.finished if f.deal.deal_id == deal.deal_id)
        return ended.abort_reason

    reason = rig.run(scenario)
    assert reason is not None and "claimed by E003 (claim elsewhere" in reason, reason
    assert all(w.mode is not VR for w in rig.writes() if w.kind == "set")


def test_manual_takes_the_claim_first_and_gives_it_back_if_the_grid_is_held(
    tmp_path: Path,
) -> None:
    """Manual VOLTAGE_REFERENCE: the claim first, so a second request is told who holds the
    reference; the unit's grid check stays: with the grid held by a source that never
    claimed (a converter set behind APIS's back) the request is refused and the claim it
    took is given back."""

    async def body(b: Bench) -> list[str]:
        observer = b.hub.connect("operator")
        for c in b.controllers.values():
            c.state.global_mode = "manual"
            await c.subscribe()

        async def manual(unit_id: str) -> str:
            try:
                await observer.request(subjects.controller_control_manual(unit_id),
                                       {"command": "VOLTAGE_REFERENCE", "params": {}},
                                       {subjects.OPERATOR: "test"}, timeout=30)
            except RemoteFailure as e:
                return str(e)
            return "ok"

        outside = b.controllers["E001"].driver
        await outside.set(VR, 350.0, 2.0, 0.0)

        async def grid_up() -> bool:
            return (await outside.read_converter()).meter.vg >= 340.0

        await until(grid_up, 300)
        seen = [await manual("E002"), str(await b.holder())]
        await outside.set(WAIT, 350.0, 0.0, 0.0)
        free_v = 300.0 + 2 * 10.0

        async def grid_free() -> bool:
            return (await outside.read_converter()).meter.vg <= free_v

        await until(grid_free, 300)
        seen += [await manual("E002"), await manual("E003"), ",".join(b.in_cv())]
        await b.controllers["E002"].execute("WAIT", {})
        return seen

    grid_held, holder, ok, second, in_cv = _bench(tmp_path, body)
    assert grid_held.startswith("manual VOLTAGE_REFERENCE refused: the grid already measures")
    assert holder == "None"  # given back
    assert ok == "ok" and in_cv == "E002"
    assert second.startswith("VOLTAGE_REFERENCE on E003 refused: the voltage reference is "
                             "claimed by E002 (claim "), second

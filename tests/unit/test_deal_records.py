"""Deal records a bus client cannot bend (issue 21, items 3-5): a dealId never names a file
outside the deal log, a record from a unit that is not one of the deal's (nor the Grid
Master) or of another deal under the same id replaces nothing, a new unit process never
draws an id an earlier one drew, and a unit that went down mid-deal closes its copy after a
restart the way its partner recorded it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from apis.bus.memory import MemoryBus
from apis.emulator.driver import EmulatedDriver
from apis.unit import subjects
from apis.unit.deal import Deal
from apis.unit.node import Unit

from .checks import until
from .harness import Rig
from .test_scenarios_c import FOUR, deal_json, inject, rig_of, until_finished, until_started


def _record(deal_id: str, discharge: str = "E001", charge: str = "E002",
            **extra: Any) -> dict[str, Any]:
    """A deal record as the Grid Master publishes it once the deal reached the converters."""
    return {
        **deal_json(discharge, charge), "dealId": deal_id,
        "createDateTime": "2020/01/01-10:00:00", "activateDateTime": "2020/01/01-10:00:05",
        **extra,
    }


def _observer(rig: Rig) -> MemoryBus:
    observer = rig.cluster._observer
    assert observer is not None
    return observer


async def _publish_as(rig: Rig, sender: str, record: dict[str, Any]) -> None:
    """A deal record published by a bus client whose identity is `sender` (signed)."""
    await rig.cluster.hub.connect(sender).publish(subjects.deal_log(sender), record)


def _files(rig: Rig, unit: str, deal_id: str) -> list[Path]:
    return [p for p in rig.deal_files(unit) if p.name == deal_id]


def test_deal_id_with_a_path_in_it_writes_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])
    absolute = tmp_path / "outside" / "absolute"
    absolute.parent.mkdir()
    # from the day's directory (dealLog/E001/2020/01/01) up to tmp_path
    relative = "../../../../../../outside/relative"
    escaped = tmp_path / "outside" / "relative"

    async def scenario(rig: Rig) -> None:
        for deal_id in (str(absolute), relative, "", "E001", "0" * 36):
            await _publish_as(rig, "E001", _record(deal_id))
        await asyncio.sleep(10)

    rig.run(scenario)
    assert not absolute.exists() and not escaped.exists()
    assert list((tmp_path / "outside").iterdir()) == []
    assert rig.deal_files("E001") == rig.deal_files("E002") == []


def test_forged_records_replace_no_deal_file(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[Deal, dict[str, list[bytes]]]:
        deal = await until_finished(rig, await inject(rig, "E001", "E002"))
        gm = rig.cluster.grid_master_unit()
        outsider = next(u for u in FOUR if u not in ("E001", "E002", gm))
        bus = _observer(rig)
        final = deal.to_json()
        seen: dict[str, list[bytes]] = {u: [] for u in ("E001", "E002")}

        async def look() -> None:
            await asyncio.sleep(5)
            for unit in seen:
                seen[unit].append(_files(rig, unit, deal.deal_id)[0].read_bytes())

        await look()
        # the same deal, from a unit that has no part in it
        await _publish_as(rig, outsider, {**final, "cumulateAmountWh": 0.0})
        # the same deal from a client claiming in the headers to be a unit of it
        await bus.publish(subjects.deal_log("observer"), {**final, "cumulateAmountWh": 0.5},
                          {subjects.UNIT_ID: "E001"})
        # unsigned, on the original subject: nobody listens there
        await bus.publish(subjects.MEDIATOR_DEAL_LOG, {**final, "cumulateAmountWh": 1.0},
                          {subjects.UNIT_ID: "E001"})
        # another deal under the same id, from a unit of it (and of the real deal)
        other = _record(deal.deal_id, "E003", "E002", deactivateDateTime="2020/01/01-10:09:00")
        await _publish_as(rig, "E002", other)
        await look()
        # a later version of the same deal from one of its units still replaces it
        await _publish_as(rig, "E001", {**final, "cumulateAmountWh": 2.0})
        await look()
        return deal, seen

    deal, seen = rig.run(scenario)
    for unit, versions in seen.items():
        assert json.loads(versions[0]) == deal.to_json(), unit
        assert versions[1] == versions[0], unit  # the forgeries changed nothing
        assert json.loads(versions[2]) == {**deal.to_json(), "cumulateAmountWh": 2.0}, unit


def test_a_new_unit_process_draws_new_ids(tmp_path: Path) -> None:
    """Two starts of one unit from the same files, as `apis unit` builds it (its default
    seed): neither the instance id nor any deal or negotiation id comes again."""
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])
    rig.cluster.unit_ids = ["E002"]  # E001 is started by hand below

    async def scenario(rig: Rig) -> list[list[str]]:
        drawn = []
        for start in range(2):
            unit = Unit(rig.config.unit("E001"), driver=EmulatedDriver(rig.world, "E001"),
                        bus=rig.cluster.hub.connect(f"E001-{start}"))
            task = asyncio.create_task(unit.run())
            await unit.ready.wait()
            assert unit.mediator is not None
            drawn.append([unit.instance_id] + [unit.mediator.new_id() for _ in range(3)])
            unit.shutdown()
            await task
        return drawn

    first, second = rig.run(scenario)
    assert len(set(first + second)) == 8, (first, second)


def test_a_restarted_unit_closes_its_copy_like_its_partner(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        c = rig.cluster
        deal_id = await inject(rig, "E001", "E002")
        await until_started(rig, deal_id)
        await until(lambda: bool(_files(rig, "E001", deal_id)), 60)  # the periodic log
        await c.kill_unit("E001")
        await until_finished(rig, deal_id, timeout=300)  # aborted: E001 does not answer
        await asyncio.sleep(5)
        left = rig.read_deal_file(_files(rig, "E001", deal_id)[0])
        partner = rig.read_deal_file(_files(rig, "E002", deal_id)[0])
        unit = c.start_unit("E001")
        await unit.ready.wait()
        return left, partner, rig.read_deal_file(_files(rig, "E001", deal_id)[0])

    left, partner, after = rig.run(scenario)
    assert left.get("abortDateTime") is None  # the crash left it live
    assert partner["abortReason"] and "E001" in partner["abortReason"]
    assert after == partner


def test_a_restarted_unit_without_its_partner_records_the_deal_aborted(tmp_path: Path) -> None:
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> tuple[dict[str, Any], list[Deal]]:
        c = rig.cluster
        deal_id = await inject(rig, "E001", "E002")
        await until_started(rig, deal_id)
        await until(lambda: bool(_files(rig, "E001", deal_id)), 60)
        await c.kill_unit("E001")
        await until_finished(rig, deal_id, timeout=300)
        await c.kill_unit("E002")  # the partner's final record is out of reach
        unit = c.start_unit("E001")
        await unit.ready.wait()
        return rig.read_deal_file(_files(rig, "E001", deal_id)[0]), await c.deals()

    after, deals = rig.run(scenario)
    assert deals == []
    assert after["abortDateTime"] not in (None, "--")
    assert "E001 restarted" in after["abortReason"]
    assert after["abort"][-1]["reason"] == after["abortReason"]

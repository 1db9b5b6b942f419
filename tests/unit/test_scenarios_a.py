"""Acceptance scenarios of spec section 13 A: cluster, start-up, Grid Master."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from apis.config import load_cluster
from apis.emulator.driver import EmulatedDriver
from apis.hardware.driver import DriverError, DriverVersion
from apis.unit import subjects
from apis.unit.node import StartupFailed, Unit
from apis.unit.registry import GRID_MASTER_LEASE_TTL_S

from .harness import Rig

FOUR = ["E001", "E002", "E003", "E004"]


def test_scenario_1_clean_start(tmp_path: Path) -> None:
    rsoc = [62.0, 55.0, 70.0, 66.0]  # all sufficient or scarce: no deals
    rig = Rig(tmp_path, FOUR, rsoc)

    async def scenario(rig: Rig) -> dict[str, dict[str, object]]:
        bus = rig.cluster.hub.connect("probe")
        out = {}
        for unit in FOUR:
            out[unit] = await bus.request(subjects.controller_data(unit), None, {"urgent": "true"})
        return out

    data = rig.run(scenario)
    for unit, value in data.items():
        apis = value["apis"]
        assert isinstance(apis, dict)
        assert apis["version"] == "3.0.0"
        assert apis["deal_interlock_capacity"] == 2
        assert apis["operation_mode"]["effective"] == "autonomous"
        assert value["oesunit"]["budo"] == "1"  # type: ignore[index]
        assert value["oesunit"]["id"] == unit  # type: ignore[index]
        rsoc = value["battery"]["rsoc"]  # type: ignore[index]
        assert apis["remaining_capacity_wh"] == int(4800 * rsoc / 100)
        assert value["dcdc"]["status"]["status"] == "0x0000"  # type: ignore[index]
        assert isinstance(value["time"], str) and value["time"].startswith("2020/01/01-")


def test_scenario_2_unit_id_collision_at_start(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])

    async def scenario(rig: Rig) -> tuple[str, object]:
        second = Unit(
            rig.config.unit("E001"),
            driver=EmulatedDriver(rig.world, "E001"),
            bus=rig.cluster.hub.connect("E001-second"),
        )
        with pytest.raises(StartupFailed) as failure:
            await second.run()
        await asyncio.sleep(30)
        probe = rig.cluster.hub.connect("probe")
        alive = await probe.request(subjects.controller_data("E001"))
        return str(failure.value), alive

    message, alive = rig.run(scenario)
    assert "another unit with id E001" in message
    assert isinstance(alive, dict) and alive["oesunit"]["id"] == "E001"
    assert rig.cluster.units["E001"].fatal is None


def test_scenario_3_unit_id_collision_at_runtime(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])

    async def scenario(rig: Rig) -> Unit:
        hub = rig.cluster.hub
        original_bus = rig.cluster.buses["E001"]
        original_bus.disconnect()  # cut off: the twin's start-up Helo finds nobody
        bus = hub.connect("E001-twin")
        twin = Unit(
            rig.config.unit("E001"),
            driver=EmulatedDriver(rig.world, "E001"),
            bus=bus,
            seed=99,
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(twin.run())
            await twin.ready.wait()
            original_bus.reconnect()  # the two meet: their Helo messages cross
            original = rig.cluster.units["E001"]
            assert await rig.cluster.wait_for(
                lambda: twin.fatal is not None and original.fatal is not None, 60
            )
            await asyncio.wait_for(task, 60)
        return twin

    twin = rig.run(scenario)
    original = rig.cluster.units["E001"]
    for unit in (twin, original):
        assert unit.fatal is not None
        assert (unit.fatal.category, unit.fatal.extent, unit.fatal.level) == (
            "USER", "LOCAL", "FATAL"
        )
        assert unit.state.stopping
    assert rig.world.unit_data("E001").dcdc.status.mode.name == "WAITING"


def test_scenario_4_policy_mismatch(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((tmp_path / "policy.json").read_text())
    data["gridCurrentStepA"] = 2
    (tmp_path / "policy.json").write_text(json.dumps(data))
    changed = load_cluster(tmp_path)

    async def scenario(rig: Rig) -> str:
        late = Unit(
            changed.unit("E002"),
            driver=EmulatedDriver(rig.world, "E002"),
            bus=rig.cluster.hub.connect("E002-late"),
            policy=changed.policy,
        )
        rig.cluster.units.pop("E002")
        await rig.cluster.kill_unit("E002")
        with pytest.raises(StartupFailed) as failure:
            await late.run()
        return str(failure.value)

    assert "POLICY is different" in rig.run(scenario)


class _VersionDriver(EmulatedDriver):
    answer: DriverVersion | None = None

    async def version(self) -> DriverVersion:
        if self.answer is None:
            raise DriverError("connection refused")
        return self.answer


@pytest.mark.parametrize(
    ("answer", "starts"),
    [("2.0", True), ("3.0", False), ("2", False), (None, False)],
)
def test_scenario_5_driver_version(tmp_path: Path, answer: str | None, starts: bool) -> None:
    rig = Rig(tmp_path, ["E001", "E002"], [62.0, 55.0])

    async def scenario(rig: Rig) -> bool:
        driver = _VersionDriver(rig.world, "E002")
        driver.answer = None if answer is None else DriverVersion(comm_interface_version=answer)
        rig.cluster.units.pop("E002")
        await rig.cluster.kill_unit("E002")
        unit = Unit(rig.config.unit("E002"), driver=driver, bus=rig.cluster.hub.connect("x"))
        try:
            await asyncio.wait_for(unit.run(), 10)  # runs until cancelled if it starts
        except StartupFailed:
            return False
        except TimeoutError:
            return unit.ready.is_set()
        return False

    assert rig.run(scenario) is starts


def test_scenario_6_single_grid_master_election(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [62.0, 55.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[str, list[int], object, object]:
        c = rig.cluster
        bound = 5 * 4 * 2 + 2 * 5 + 5  # mainLoop x members x 2 + 2 x ensureWait + a few s
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, bound)
        gm = c.grid_master_unit()
        assert gm is not None
        counts = []
        for _ in range(300):  # and it stays one for five minutes, checked every second
            counts.append(len(c.grid_master_units()))
            await asyncio.sleep(1)
        lock = await c.registry.grid_master()
        helo = await c.hub.connect("probe").request(subjects.GRID_MASTER_HELO)
        flags = [u for u, unit in c.units.items() if unit.state.is_grid_master]
        assert flags == [gm]
        return gm, counts, lock.unit_id if lock else None, helo

    gm, counts, lock_holder, helo = rig.run(scenario)
    assert set(counts) == {1}
    assert lock_holder == gm == helo


def test_scenario_7_duplicate_grid_master(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [62.0, 55.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[list[str], list[str]]:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 60)
        first = c.grid_master_unit()
        assert first is not None
        # a second Grid Master appears, bypassing the lock (as after a partition merge)
        intruder = next(u for u in FOUR if u != first)
        unit = c.units[intruder]
        assert unit.registry is not None
        await unit.registry.clear_grid_master()
        await unit.start_grid_master()
        assert len(c.grid_master_units()) == 2
        errors: list[str] = []
        for _ in range(20):
            await asyncio.sleep(1)
            for u in c.units.values():
                if u.grid_master is not None:
                    errors += [e.message for e in u.grid_master.handled_errors]
            if errors:
                break
        assert await c.wait_for(lambda: len(c.grid_master_units()) == 1, 120)
        await asyncio.sleep(60)
        return errors, c.grid_master_units()

    errors, after = rig.run(scenario)
    assert "another GridMaster exists" in errors
    assert len(after) == 1
    for unit in FOUR:
        assert rig.world.unit_data(unit).dcdc.status.mode.name == "WAITING"


def test_scenario_8_grid_master_crash_without_deals(tmp_path: Path) -> None:
    rig = Rig(tmp_path, FOUR, [62.0, 55.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[str, str | None, list[str], float]:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 60)
        old = c.grid_master_unit()
        assert old is not None
        await c.kill_unit(old)
        c.units.pop(old)
        loop = asyncio.get_running_loop()
        killed = loop.time()
        assert await c.wait_for(lambda: c.grid_master_unit() is not None, 200)
        errors = [e for u in c.units.values() if u.election for e in u.election.errors]
        return old, c.grid_master_unit(), errors, loop.time() - killed

    old, new, errors, took = rig.run(scenario)
    assert new is not None and new != old
    # The lock is a lease: it expires GRID_MASTER_LEASE_TTL_S after the last renewal, and
    # the units watching it elect anew within ensureWaitMsec (5 s here) and a few seconds.
    assert took < GRID_MASTER_LEASE_TTL_S + 5 + 5
    assert not any("activation" in e for e in errors)


def test_scenario_9_grid_master_follows_the_voltage_reference(tmp_path: Path) -> None:
    # only E002 (short) and E001 (excess) trade; the VR is on the charge side, E002
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0])

    async def scenario(rig: Rig) -> tuple[list[str], list[str]]:
        c = rig.cluster
        assert await c.wait_for(
            lambda: rig.world.unit_data("E002").dcdc.mode.name == "VOLTAGE_REFERENCE", 300
        )
        seen = []
        for _ in range(30):
            await asyncio.sleep(1)
            seen.append(c.grid_master_unit() or "-")
        return seen, c.grid_master_units()

    seen, final = rig.run(scenario)
    assert final == ["E002"]
    assert seen[-1] == "E002"


def test_scenario_9_fixed_grid_master(tmp_path: Path) -> None:
    policy = {"gridMaster": {"gridMasterSelection": {"strategy": "fixed", "fixedUnitId": "E004"}}}
    rig = Rig(tmp_path, FOUR, [95.0, 50.0, 70.0, 66.0], policy=policy)

    async def scenario(rig: Rig) -> list[str]:
        c = rig.cluster
        assert await c.wait_for(lambda: c.grid_master_unit() == "E004", 120)
        await asyncio.sleep(120)  # a deal E001 -> E002 runs meanwhile; the GM stays
        return c.grid_master_units()

    assert rig.run(scenario) == ["E004"]


def test_scenario_9_fixed_grid_master_not_running(tmp_path: Path) -> None:
    policy = {"gridMaster": {"gridMasterSelection": {"strategy": "fixed", "fixedUnitId": "E004"}}}
    rig = Rig(tmp_path, FOUR, [62.0, 55.0, 70.0, 66.0], policy=policy)
    rig.cluster.unit_ids = ["E001", "E002", "E003"]  # E004 is not running

    async def scenario(rig: Rig) -> tuple[list[str], list[str]]:
        await asyncio.sleep(120)
        errors = [e for u in rig.cluster.units.values() if u.election for e in u.election.errors]
        return rig.cluster.grid_master_units(), errors

    gms, errors = rig.run(scenario)
    assert gms == []
    assert any("activation on E004 failed" in e for e in errors)

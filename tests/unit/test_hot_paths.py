"""The unit's per-period hot paths give what their plain definitions give.

Each fast path (a mode-code cache, the deal's JSON from precomputed keys, a parsed lease or
scenario block reused while unchanged) is checked against the value computed directly, and
against a changed input that must not be served from a cache; the unit-data JSON and the
meter range checks, which the Grid Master and every unit run each period, are pinned too.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from apis.bus.memory import MemoryBus
from apis.hardware.driver import (
    BatteryData,
    ConverterData,
    ConverterStatus,
    CurrentSetting,
    Meter,
    UnitData,
    VoltageSetting,
)
from apis.hardware.modes import ConverterMode
from apis.unit.data import UnitSnapshot, deal_interlock_capacity, unit_data_json
from apis.unit.deal import Deal, TimedReason
from apis.unit.registry import GridMasterLock, Registry
from apis.unit.safety import static_checks
from tests.unit.harness import write_config


def _data(mode: ConverterMode = ConverterMode.CHARGE, **meter: float) -> UnitData:
    return UnitData(
        ConverterData(
            ConverterStatus(mode),
            Meter(**{"vg": 350.0, "ig": 1.5, "vb": 50.0, "tmp": 30.0, **meter}),
            VoltageSetting(350.0, 0.039),
            CurrentSetting(2.0),
        ),
        BatteryData(55.5),
        datetime(2020, 1, 1, 8, 0, 0, 250000),
    )


def test_unit_data_json_matches_its_definition(tmp_path: Path) -> None:
    cluster = write_config(tmp_path, ["E001", "E002"])
    data = _data()
    for files in cluster.units:
        config, hw, policy = files.config, files.hw_config, files.policy
        for effective, deal_ids, gm in (("autonomous", ["d1"], True), ("stop", [], False)):
            got = unit_data_json(
                data, config, hw, policy, deal_ids=deal_ids, is_grid_master=gm,
                global_mode="autonomous", local_mode=None, effective_mode=effective,
            )
            apis: dict[str, Any] = {
                "version": "3.0.0",
                "remaining_capacity_wh": int(hw.battery_nominal_capacity_wh * 55.5 / 100),
                "deal_interlock_capacity": deal_interlock_capacity(hw, policy),
                "operation_mode": {"global": "autonomous", "local": None, "effective": effective},
            }
            if deal_ids:
                apis["deal_id_list"] = deal_ids
            if gm:
                apis["is_grid_master"] = True
            expected = {
                "apis": apis,
                "oesunit": {
                    "communityId": config.community_id, "clusterId": config.cluster_id,
                    "id": config.unit_id, "display": config.display_name,
                    "sn": config.serial_number,
                    "budo": "1" if effective == "autonomous" else "0",
                    "ip": "NA", "ipv6_ll": "NA", "ipv6_g": "NA", "mac": "NA",
                },
                "battery": data.battery.to_json(),
                "dcdc": data.dcdc.to_json(),
                "time": data.apis_time,
                "timestamp": data.time.timestamp(),
            }
            assert got == expected
            assert list(got["oesunit"]) == list(expected["oesunit"])  # key order too
            got["oesunit"]["budo"] = "x"  # a caller's edit does not reach the next reply
    # another configuration object is another unit
    other = cluster.units[1].config.model_copy(update={"serial_number": "SN-2"})
    files = cluster.units[0]
    got = unit_data_json(
        data, other, files.hw_config, files.policy, deal_ids=[], is_grid_master=False,
        global_mode="stop", local_mode=None, effective_mode="stop",
    )
    assert got["oesunit"]["sn"] == "SN-2" and got["oesunit"]["budo"] == "0"


def test_converter_json_matches_its_definition() -> None:
    for mode in ConverterMode:
        for name in ("", "Charge (CC)"):
            status = ConverterStatus(mode, "0000 0001 0000", "Light alarm", "charge", name)
            got = status.to_json()
            expected = {
                "status": f"0x{mode.value:04x}",
                "alarmState": "Light alarm",
                "statusName": name or mode.operation_mode,
                "alarm": "0000 0001 0000",
                "runningState": "charge",
                "operationMode": mode.operation_mode,
            }
            assert got == expected and list(got) == list(expected)
    optional = ("ogv", "ugv", "cib", "obv", "ubv")
    for mask in range(2 ** len(optional)):
        values = {k: 100.0 + i for i, k in enumerate(optional) if mask >> i & 1}
        got = CurrentSetting(2.5, **values).to_json()
        assert got == {"dig": 2.5, **values} and list(got) == ["dig", *values]


def test_unit_data_json_follows_each_configuration_object(tmp_path: Path) -> None:
    files = write_config(tmp_path, ["E001"]).units[0]
    config, hw, policy = files.config, files.hw_config, files.policy

    def reply(**changed: Any) -> dict[str, Any]:
        objects = {"config": config, "hw": hw, "policy": policy, **changed}
        return unit_data_json(
            _data(), objects["config"], objects["hw"], objects["policy"], deal_ids=[],
            is_grid_master=False, global_mode="autonomous", local_mode=None,
            effective_mode="autonomous",
        )

    assert reply()["apis"]["deal_interlock_capacity"] == deal_interlock_capacity(hw, policy)
    big = hw.model_copy(update={"grid_current_capacity_a": 100.0})
    assert reply(hw=big)["apis"]["deal_interlock_capacity"] == deal_interlock_capacity(
        big, policy
    ) != deal_interlock_capacity(hw, policy)
    deal = policy.mediator.deal.model_copy(update={"grid_current_a": 0.5})
    small = policy.model_copy(
        update={"mediator": policy.mediator.model_copy(update={"deal": deal})}
    )
    assert reply(policy=small)["apis"]["deal_interlock_capacity"] == deal_interlock_capacity(
        hw, small
    ) != deal_interlock_capacity(hw, policy)
    renamed = config.model_copy(update={"unit_name": "renamed"})
    assert reply(config=renamed)["oesunit"]["display"] == "renamed"
    assert reply()["oesunit"]["display"] == config.display_name


def test_unit_data_timestamp_follows_each_time() -> None:
    config, hw, policy = _configs()
    # equal naive times (fold is ignored by ==) yet, in a zone with a repeated hour, two
    # instants: the timestamp of each time object is its own
    times = [datetime(2020, 1, 1, 8, 0, 0, 250000), datetime(2020, 1, 1, 8, 0, 0, 250000),
             datetime(2020, 1, 1, 8, 0, 0, 250000, fold=1), datetime(2020, 1, 1, 8, 0, 5)]
    for time in times + times[::-1]:
        data = dataclasses.replace(_data(), time=time)
        got = unit_data_json(
            data, config, hw, policy, deal_ids=[], is_grid_master=False,
            global_mode="autonomous", local_mode=None, effective_mode="autonomous",
        )
        assert got["timestamp"] == time.timestamp() and got["time"] == data.apis_time


@pytest.mark.parametrize(
    ("code", "mode"),
    [("0x0014", ConverterMode.VOLTAGE_REFERENCE), (" 0x0041 ", ConverterMode.CHARGE),
     (2, ConverterMode.DISCHARGE), ("0x0099", None), ("wait", None), ("", None), (True, None)],
)
def test_snapshot_mode(code: Any, mode: ConverterMode | None) -> None:
    for _ in range(2):  # the second parse may come from the cache
        snap = UnitSnapshot.from_json("E001", {"dcdc": {"status": {"status": code}}})
        assert snap.mode is mode


def test_snapshot_values() -> None:
    raw = unit_data_json(
        _data(ConverterMode.VOLTAGE_REFERENCE, wb=-12.0), *_configs(), deal_ids=["a"],
        is_grid_master=False, global_mode="autonomous", local_mode=None,
        effective_mode="autonomous",
    )
    snap = UnitSnapshot.from_json("E001", raw)
    assert (snap.vg, snap.ig, snap.wb, snap.dvg, snap.drg, snap.dig, snap.rsoc) == (
        350.0, 1.5, -12.0, 350.0, 0.039, 2.0, 55.5
    )
    assert snap.is_voltage_reference and snap.deal_ids == ["a"] and snap.raw is raw
    empty = UnitSnapshot.from_json("E002", {})
    assert empty.mode is None and empty.vg == 0.0 and empty.time == ""


_CONFIGS: list[Any] = []


def _configs() -> tuple[Any, Any, Any]:
    if not _CONFIGS:
        import tempfile

        files = write_config(Path(tempfile.mkdtemp()), ["E001"]).units[0]
        _CONFIGS.extend((files.config, files.hw_config, files.policy))
    return _CONFIGS[0], _CONFIGS[1], _CONFIGS[2]


def _plain_deal_json(deal: Deal) -> dict[str, Any]:
    """The deal's JSON by its definition: every field that is set, camelCase keys."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(deal):
        value = getattr(deal, f.name)
        if value is None or (isinstance(value, list) and not value):
            continue
        if f.name in ("reset", "abort"):
            value = [{"dateTime": r.date_time, "reason": r.reason} for r in value]
        out[to_camel(f.name)] = value
    return out


def test_deal_json_matches_its_definition() -> None:
    deal = Deal("E001", "n1", "E001", "E002", "charge", "E001", "E002", 1.5, 300.0,
                deal_id="d1", request_amount_wh=0, is_master=False, point_per_wh=0.5)
    assert deal.to_json() == _plain_deal_json(deal)
    deal.record_abort("2020/01/01-08:00:00", "why")
    deal.record_reset("2020/01/01-08:00:05", "again")
    deal.need_to_stop_reasons = ["a"]
    deal.test_feature = {"x": [1, {"y": 2}]}
    deal.cumulate_amount_wh = 0.0
    got = deal.to_json()
    assert got == _plain_deal_json(deal)
    assert list(got) == list(_plain_deal_json(deal))  # key order too
    got["testFeature"]["x"][1]["y"] = 3  # a copy: the deal is not changed through it
    got["needToStopReasons"].append("b")
    assert deal.test_feature == {"x": [1, {"y": 2}]} and deal.need_to_stop_reasons == ["a"]
    assert deal.reset == [TimedReason("2020/01/01-08:00:05", "again")]
    assert Deal.from_json(deal.to_json()) == deal
    assert Deal.from_json(deal.to_json()).copy().to_json() == deal.to_json()


def test_static_checks_follow_each_hw_config(tmp_path: Path) -> None:
    tight = {"safety": {"range": {"dcdc": {"meter": {"tmp": {"min": 0, "max": 25}}}}}}
    cluster = write_config(tmp_path, ["E001", "E002"], unit_hw={"E002": tight})
    loose, strict = cluster.units[0].hw_config, cluster.units[1].hw_config
    hot = _data(tmp=30.0)
    for _ in range(2):
        assert static_checks(hot, loose) == []
        (finding,) = static_checks(hot, strict)
        assert finding.key == "range.tmp"
        assert finding.message == "dcdc.meter.tmp = 30 (safety range 0..25)"
    nan = static_checks(_data(ig=float("nan")), loose)
    assert [f.key for f in nan] == ["range.ig"]  # not a number is never within range
    several = static_checks(_data(vg=999.0, vb=1.0, ib=-99.0), strict)
    assert [f.key for f in several] == ["range.tmp", "range.vg", "range.vb", "range.ib"]


async def test_grid_master_lease_is_read_again_when_it_changes() -> None:
    bus = MemoryBus()
    registry = await Registry.open(bus)
    assert await registry.grid_master() is None
    lock = await registry.acquire_grid_master("E001")
    read = await registry.grid_master()
    assert read == lock and read is await registry.grid_master()  # unchanged: reused
    renewed = await registry.renew_grid_master(lock, global_errors=True)
    assert await registry.grid_master() == renewed
    assert (await registry.grid_master()).global_errors  # type: ignore[union-attr]
    await registry.clear_grid_master()
    assert await registry.grid_master() is None
    await registry.grid_master_kv.create("gridMasterUnitId", "E002")
    fresh = await registry.grid_master()
    assert fresh is not None and fresh.unit_id == "E002" and fresh.epoch > lock.epoch
    await bus.close()


def test_grid_master_lock_from_json() -> None:
    from apis.bus.base import Entry

    assert GridMasterLock.from_entry(Entry("k", {"unitId": 3}, 1)) is None


def test_block_at_follows_time_and_scenario(tmp_path: Path) -> None:
    from apis.unit.userservice import UserService

    files = write_config(tmp_path, ["E001"]).units[0]
    user = object.__new__(UserService)
    user.scenario = files.scenario
    user._block = None
    user.unit_id = "E001"
    start = datetime(2020, 1, 1, 0, 0, tzinfo=UTC)
    for minutes in range(0, 24 * 60, 7):
        at = start + timedelta(minutes=minutes)
        expected = files.scenario.block_at(at.strftime("%H:%M:%S"))
        assert user._block_at(at) is expected
        assert user._block_at(at) is expected  # served again
    # equal instants in another zone are another time of day
    east = timezone(timedelta(hours=9))
    for minutes in range(0, 24 * 60, 7):
        at = start + timedelta(minutes=minutes)
        user._block_at(at)
        there = at.astimezone(east)
        assert user._block_at(there) is files.scenario.block_at(there.strftime("%H:%M:%S"))
    # a reloaded scenario is used at once
    at = datetime(2020, 1, 1, 12, 0)
    user._block_at(at)
    empty = dataclasses.replace(files.scenario, windows=())
    user.scenario = empty
    assert user._block_at(at) is None


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside a JSON value (itself included)."""
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in _containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in _containers(v))]
    return []


def test_unit_data_json_shares_nothing_between_calls(tmp_path: Path) -> None:
    # The Controller hands each reply to the Grid Master's collection over to the bus
    # (delivered uncopied): no dict or list of one reply may be part of another, or of what
    # the caller passed in.
    files = write_config(tmp_path, ["E001"]).units[0]
    data, deal_ids = _data(), ["d1"]
    replies = [
        unit_data_json(
            data, files.config, files.hw_config, files.policy, deal_ids=deal_ids,
            is_grid_master=False, global_mode="autonomous", local_mode=None,
            effective_mode=effective,
        )
        for effective in ("autonomous", "autonomous", "stop")
    ]
    seen = [id(deal_ids)]
    for reply in replies:
        ids = [id(c) for c in _containers(reply)]
        assert not set(ids) & set(seen)
        seen += ids

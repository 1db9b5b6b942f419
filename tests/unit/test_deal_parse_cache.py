"""Reading deals fast gives what reading them plainly gives.

`Deal.from_json` takes plain values as they are (checked here against the dataclass
constructor fed field by field, odd inputs included), and the registry reuses a parsed deal
only for the very value it parsed (checked against a changed value, and against callers
that edit the deal they got).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from apis.bus.memory import MemoryHub, read_only_json
from apis.unit import registry as registry_module
from apis.unit.deal import Deal, TimedReason
from apis.unit.registry import Registry


def _plain_from_json(data: dict[str, Any]) -> Deal:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Deal):
        value = data.get(to_camel(f.name))
        if value is None:
            continue
        if f.name in ("reset", "abort"):
            value = [TimedReason.from_json(r) for r in value]
        elif f.name == "need_to_stop_reasons":
            value = [str(r) for r in value]
        else:
            value = copy.deepcopy(value)
        kwargs[f.name] = value
    return Deal(**kwargs)


class _Id(str):
    pass


_BASE: dict[str, Any] = {
    "unitId": "E001", "negotiationId": "n1", "requestUnitId": "E001", "acceptUnitId": "E002",
    "type": "charge", "chargeUnitId": "E001", "dischargeUnitId": "E002",
    "dealGridCurrentA": 1.5, "dealAmountWh": 300,
}


@pytest.mark.parametrize("extra", [
    {},
    {"dealId": "d1", "isMaster": True, "cumulateAmountWh": 0.0, "requestAmountWh": 0},
    {"isMaster": None, "startDateTime": None, "unknownKey": 1, "pointPerWh": True},
    {"reset": [{"dateTime": "t", "reason": "r"}], "abort": [],
     "needToStopReasons": ["a", 2], "testFeature": {"dcdc": {"x": [1, {"y": 2}]}}},
    {"dealId": _Id("d2"), "acceptUnitId": _Id("E003"), "testFeature": "odd"},
])
def test_from_json_is_the_plain_construction(extra: dict[str, Any]) -> None:
    data = {**_BASE, **extra}
    got, plain = Deal.from_json(data), _plain_from_json(data)
    assert got == plain
    for f in dataclasses.fields(Deal):
        assert type(getattr(got, f.name)) is type(getattr(plain, f.name)), f.name
    assert list(vars(got)) == list(vars(plain))  # the same attributes, in the same order
    if "testFeature" in extra and isinstance(extra["testFeature"], dict):
        assert got.test_feature is not data["testFeature"]  # its own copy


@pytest.mark.parametrize("bad", [{"reset": "abc"}, {"needToStopReasons": 5}])
def test_from_json_refuses_what_it_refused(bad: dict[str, Any]) -> None:
    data = {**_BASE, **bad}
    with pytest.raises(Exception) as plain:
        _plain_from_json(data)
    with pytest.raises(type(plain.value)):
        Deal.from_json(data)


def test_from_json_still_names_a_missing_field() -> None:
    data = dict(_BASE)
    del data["dealAmountWh"]
    with pytest.raises(ValueError, match="dealAmountWh"):
        Deal.from_json(data)


def _deal(deal_id: str, amount: float = 300.0) -> Deal:
    return Deal("E001", "n-" + deal_id, "E001", "E002", "charge", "E001", "E002", 1.0, amount,
                deal_id=deal_id)


async def test_registries_share_the_parse_of_one_stored_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parses: list[str] = []
    real = Deal.__dict__["from_json"].__func__

    def counted(cls: type[Deal], data: dict[str, Any]) -> Deal:
        parses.append(data["dealId"])
        return real(cls, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(Deal, "from_json", classmethod(counted))
    monkeypatch.setattr(registry_module._shared_parses, "compute", Deal.from_json)
    hub = MemoryHub()
    gm, e001, e002 = [await Registry.open(hub.connect(u)) for u in ("GM", "E001", "E002")]
    await gm.create_deal(_deal("d1"))
    read = [await gm.deal("d1"), *[(await r.deals_involving(u))[0] for r, u in
                                   ((e001, "E001"), (e002, "E002"))]]
    assert parses == ["d1"]  # one stored value, parsed once for the three
    assert all(s is not None and s.deal == _deal("d1") for s in read)
    assert len({id(s.deal) for s in read if s is not None}) == 3  # each its own copy

    # a reader's edit reaches nobody else
    first = read[0]
    assert first is not None
    first.deal.cumulate_amount_wh = 99.0
    first.deal.need_to_stop_reasons.append("x")
    again = await e001.deal("d1")
    assert again is not None and again.deal == _deal("d1")

    # a new version is parsed again, once, and every reader sees it
    first.deal.need_to_stop_reasons = []
    await gm.update_deal(first.deal, first.revision)
    parses.clear()
    seen = [(await r.deals_involving(u))[0].deal for r, u in ((e001, "E001"), (e002, "E002"))]
    assert parses == ["d1"]
    assert all(d.cumulate_amount_wh == 99.0 for d in seen)


def test_shared_parses_are_bounded_and_hold_their_values() -> None:
    shared = registry_module._shared_parses
    shared.clear()
    values = [read_only_json(_deal(f"d{i}", amount=i).to_json())
              for i in range(shared.kept + 10)]
    for value in values:
        assert registry_module._parse(value) == Deal.from_json(value)
    assert len(shared) == shared.kept
    assert all(shared.holds(v) for v in values[10:])
    assert not any(shared.holds(v) for v in values[:10])  # the oldest went first
    plain = _deal("p").to_json()  # a value that may change (e.g. decoded from NATS)
    parsed = registry_module._parse(plain)
    plain["dealAmountWh"] = 5.0
    assert registry_module._parse(plain).deal_amount_wh == 5.0 != parsed.deal_amount_wh

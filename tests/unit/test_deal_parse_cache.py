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

from apis.unit.deal import Deal, TimedReason


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

"""The lifecycle lines (apis.unit.lifecycle) a test plan waits for: on an in-memory cluster,
a deal that runs to its end, one that aborts, one that a global error scrams, and an error
raised, received and handled; every line in its documented form, in order, with the deal id.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from apis.unit import lifecycle, subjects
from apis.unit.errors import ErrorRecord

from .harness import Rig
from .test_scenarios_c import inject, rig_of, until_finished, until_started


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, str]]]:
    """(form, named groups) of every lifecycle line, in the order logged; a line on the
    lifecycle logger that fits no documented form fails the test."""
    out = []
    for record in caplog.records:
        if record.name != lifecycle.LOGGER_NAME:
            continue
        message = record.getMessage()
        forms = [(name, m) for name, p in lifecycle.PATTERNS.items()
                 if (m := p.fullmatch(message)) is not None]
        assert len(forms) == 1, f"{message!r} fits {[n for n, _ in forms]}"
        name, match = forms[0]
        out.append((name, {k: v for k, v in match.groupdict().items() if v is not None}))
    return out


def _of_deal(events: list[tuple[str, dict[str, str]]], deal_id: str) -> list[str]:
    return [name.removeprefix("deal ") for name, groups in events
            if groups.get("dealId") == deal_id]


def test_deal_lines_from_created_to_disposed_and_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, lifecycle.LOGGER_NAME)
    rig = rig_of(tmp_path)
    hook = {"testFeature": {"dcdc": {"failBeforeStop": True}}}

    async def scenario(rig: Rig) -> tuple[str, str, str]:
        completed = await inject(rig, "E001", "E002", 50)
        await until_finished(rig, completed)
        aborted = await inject(rig, "E003", "E004", 50, **hook)
        await until_finished(rig, aborted)
        gm = rig.cluster.grid_master_unit()
        assert gm is not None
        return completed, aborted, gm

    completed, aborted, gm = rig.run(scenario)
    events = _events(caplog)
    assert _of_deal(events, completed) == [
        "created", "activated", "ramped up", "started", "stopped", "deactivated", "disposed",
    ]
    assert _of_deal(events, aborted) == [
        "created", "activated", "ramped up", "started", "stopped", "aborted", "deactivated",
        "disposed",
    ]
    details = {(name, g["dealId"]): g for name, g in events if "dealId" in g}
    created = details[("deal created", completed)]
    assert (created["dischargeUnitId"], created["chargeUnitId"]) == ("E001", "E002")
    assert float(created["dealAmountWh"]) == 50 and float(created["dealGridCurrentA"]) == 1.0
    started = details[("deal started", completed)]
    assert (started["dischargeUnitId"], started["chargeUnitId"]) == ("E001", "E002")
    activated = details[("deal activated", completed)]
    assert activated["masterUnitId"] == "E002" and "masterDeal" in activated
    assert details[("deal ramped up", completed)]["voltageReferenceUnitId"] == "E002"
    disposed = details[("deal disposed", completed)]
    assert abs(float(disposed["cumulateAmountWh"]) - 50) <= 0.25
    assert float(disposed["dealAmountWh"]) == 50
    assert details[("deal aborted", aborted)]["reason"] == "TEST FEATURE : failBeforeStop"
    # the Grid Master: each unit that becomes it logs it, and logs when it stops (here it
    # follows the voltage reference: it moves with the second deal's master side); the last
    # one stops with the cluster
    masters = [(name.removeprefix("grid master "), g) for name, g in events
               if name.startswith("grid master")]
    assert [name for name, _ in masters] == ["activated", "deactivated"] * (len(masters) // 2)
    for (_, up), (_, down) in zip(masters[::2], masters[1::2], strict=True):
        assert (up["unitId"], up["epoch"]) == (down["unitId"], down["epoch"])
    assert masters[-1][1]["unitId"] == gm and masters[-1][1]["reason"] == "unit stopping"
    names = [name for name, _ in events]
    assert names.index("grid master activated") < names.index("deal created")
    assert names[-1] == "grid master deactivated"


def test_error_lines_and_a_scrammed_deal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, lifecycle.LOGGER_NAME)
    rig = rig_of(tmp_path)

    async def scenario(rig: Rig) -> str:
        deal_id = await inject(rig, "E001", "E002", 500)
        await until_started(rig, deal_id)
        # a global USER error from E003 (as a tool would report one): the Grid Master takes
        # it and scrams; a local one for E004 is taken and handled by E004
        probe = rig.cluster.hub.connect("probe")
        await probe.publish(subjects.ERROR, ErrorRecord(
            "E003", "USER", "GLOBAL", "ERROR", "lifecycle test: global").to_json())
        await probe.publish(subjects.ERROR, ErrorRecord(
            "E004", "HARDWARE", "LOCAL", "ERROR", "lifecycle test: local").to_json())
        await until_finished(rig, deal_id, 120)
        await asyncio.sleep(30)  # E004's handling round
        await probe.close()
        return deal_id

    deal_id = rig.run(scenario)
    events = _events(caplog)
    assert _of_deal(events, deal_id) == [
        "created", "activated", "ramped up", "started", "scrammed", "disposed",
    ]
    errors = [(name, g) for name, g in events if name.startswith("error")]
    received = [(g["unitId"], g["extent"], g["message"]) for name, g in errors
                if name == "error received"]
    assert ("E003", "GLOBAL", "lifecycle test: global") in received
    assert ("E004", "LOCAL", "lifecycle test: local") in received
    handled = {g["message"]: g for name, g in errors if name == "error handled"}
    assert handled["lifecycle test: global"]["actions"] == "scram"
    assert (handled["lifecycle test: global"]["category"],
            handled["lifecycle test: global"]["level"]) == ("USER", "ERROR")
    assert handled["lifecycle test: local"]["actions"] == "askAndWaitForStopDeals, stopLocal"
    def index(form: str, message: str) -> int:
        return next(i for i, (name, g) in enumerate(events)
                    if name == form and g.get("message") == message)

    scram = next(i for i, (name, _) in enumerate(events) if name == "deal scrammed")
    assert index("error received", "lifecycle test: global") < scram
    assert scram < index("error handled", "lifecycle test: global")
    assert "lifecycle test: global" in events[scram][1]["reason"]

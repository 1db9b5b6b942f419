"""`apis sim optimise`: the planning fidelity searches, the faithful fidelity confirms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.sim.community import SimError
from apis.sim.optimise import parse_parameter


def test_on_the_6_unit_community_it_finds_settings_that_beat_the_generated_ones(
    tmp_path: Path,
) -> None:
    # The generated 6-unit community at night: every house is in its scarce or short band,
    # nobody offers, two houses run empty at 7-8 a.m. and buy while others hold 40-50 %.
    out = tmp_path / "opt"
    result = CliRunner().invoke(app, [
        "sim", "optimise", "--units", "6", "--days", "1", "--trials", "6", "--confirm", "1",
        "--param", "scenario.excess=0.35:0.8", "--param", "scenario.sufficient=0.2:0.35",
        "--param", "scenario.scarce=0.05:0.2", "--out", str(out), "--quiet",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "optimise.json").read_text())
    assert len(data["ranked"]) + len(data["refused"]) == 6
    reference, best = data["reference"], data["best"]
    assert best is not None and best["overrides"]
    # the faithful runs (the real unit code) confirm what the plan found
    ref_ss = reference["faithful"]["self_sufficiency"]
    best_ss = best["faithful"]["self_sufficiency"]
    assert best_ss > ref_ss
    assert data["confirmed"][0]["faithful_gain"] == pytest.approx(100 * (best_ss - ref_ss))
    assert best["faithful"]["bought_wh"] < reference["faithful"]["bought_wh"]
    assert "faithful self-sufficiency better than the reference by" in result.output
    assert (out / "optimise.md").read_text().startswith("apis sim optimise: 6 units")


@pytest.mark.parametrize(("text", "message"), [
    ("scenario.excess", "must be NAME=LOW:HIGH or NAME=V1,V2,..."),
    ("scenario.excess=0.9:0.4", "LOW 0.9 must be < HIGH 0.4"),
    ("scenario.excess=a:b", "LOW:HIGH must be two numbers"),
    ("seed=1:5", "not searchable"),
])
def test_bad_parameters_are_named(text: str, message: str) -> None:
    with pytest.raises(SimError, match=message.replace(".", r"\.").replace(":", ":")):
        parse_parameter(text)


def test_values_and_integer_ranges() -> None:
    p = parse_parameter("policy.mediator.deal.gridCurrentA=1,2,3")
    assert p.values == ("1", "2", "3")
    q = parse_parameter("policy.gridMaster.maxParallel=1:4")
    assert q.integer and (q.low, q.high) == (1.0, 4.0)


def test_an_unknown_objective_is_refused_before_any_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "sim", "optimise", "--units", "2", "--param", "scenario.excess=0.5:0.9",
        "--objective", "profit", "--out", str(tmp_path), "--quiet",
    ])
    assert result.exit_code == 2
    assert "--objective = 'profit' (must be one of self-sufficiency, utility)" in result.output

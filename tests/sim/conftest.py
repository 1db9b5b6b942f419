"""One `apis sim` run shared by the report and CLI tests: 6 generated units for 6 simulated
hours of daytime (09:00-15:00, seed 1: deals are made and complete), sharing on, so with
the baseline and every output file. The full acceptance run (20 units, one day) is
benchmarks/sim_acceptance.py: too long for CI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apis.cli import app

COMMUNITY_ARGS = ["--units", "6", "--days", "0.25", "--start", "2020-01-01T09:00:00",
                  "--seed", "1"]


@dataclass
class CliRun:
    out: Path
    output: str  # what the command printed


@pytest.fixture(scope="session")
def community_run(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    out = tmp_path_factory.mktemp("community") / "out"
    result = CliRunner().invoke(app, ["sim", *COMMUNITY_ARGS, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return CliRun(out, result.output)

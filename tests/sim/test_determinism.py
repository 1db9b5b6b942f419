"""Same configuration and seed: the same summary.json, bit for bit (also in another process
with another hash seed); another seed: another summary. One hour with deals (made, one
completed, others running at the end) keeps it short."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from apis.sim.community import SimSettings
from apis.sim.run import run
from apis.sim.summary import summarize

SETTINGS = SimSettings(
    units=4, days=1 / 24, start=datetime(2020, 1, 1, 10), seed=5,
    initial_rsoc=(88.0, 22.0, 86.0, 30.0),
)

SCRIPT = """
import json, sys
from datetime import datetime
from apis.sim.community import SimSettings
from apis.sim.run import run
from apis.sim.summary import summarize
s = SimSettings(units=4, days=1 / 24, start=datetime(2020, 1, 1, 10), seed=5,
                initial_rsoc=(88.0, 22.0, 86.0, 30.0))
sys.stdout.write(json.dumps(summarize(run(s)), indent=2))
"""


def _summary(settings: SimSettings) -> str:
    return json.dumps(summarize(run(settings)), indent=2)


@pytest.fixture(scope="module")
def first() -> str:
    return _summary(SETTINGS)


def test_same_seed_same_summary_bit_for_bit(first: str) -> None:
    assert json.loads(first)["deals"]["made"] >= 1
    assert _summary(SETTINGS) == first
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other_process = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True,
        timeout=240,
    ).stdout
    assert other_process == first


def test_another_seed_gives_another_summary(first: str) -> None:
    assert _summary(dataclasses.replace(SETTINGS, seed=6)) != first

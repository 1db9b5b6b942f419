"""The garbage collector's tuning for a simulation run is the run's alone."""

from __future__ import annotations

import gc

import pytest

from apis.sim import run as sim_run


def test_long_lived_heap_tunes_during_the_run_and_restores_after_it() -> None:
    before = gc.get_threshold()
    with sim_run._long_lived_heap():
        assert gc.get_threshold()[0] == sim_run._RUN_GC_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_long_lived_heap_restores_when_the_run_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="boom"), sim_run._long_lived_heap():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

"""The converter modes and the seed's mode-change order."""

from __future__ import annotations

import pytest

from apis.hardware.modes import (
    ConverterMode,
    ModeChangeStep,
    ModeTransitionRefused,
    transition_steps,
)

DVG, DIG, MODE = ModeChangeStep.SET_VOLTAGE, ModeChangeStep.SET_CURRENT, ModeChangeStep.SET_MODE
W, CV = ConverterMode.WAITING, ConverterMode.VOLTAGE_REFERENCE
DIS, CHG = ConverterMode.DISCHARGE, ConverterMode.CHARGE


def test_codes_and_names() -> None:
    assert [(m.code, m.operation_mode) for m in ConverterMode] == [
        ("0x0000", "Waiting"),
        ("0x0002", "Heteronomy CV"),
        ("0x0014", "Grid Autonomy"),
        ("0x0041", "Heteronomy CV"),
    ]
    assert ConverterMode.from_code("0x0014") is CV
    assert ConverterMode.from_code("0X0041") is CHG
    for bad in ("0x0005", "20", "0xzz", ""):
        with pytest.raises(ValueError, match="mode = "):
            ConverterMode.from_code(bad)


@pytest.mark.parametrize("target", list(ConverterMode))
def test_leaving_stop_sets_points_before_mode(target: ConverterMode) -> None:
    assert transition_steps(W, target) == (DVG, DIG, MODE)


@pytest.mark.parametrize("current", [DIS, CHG, CV])
def test_going_to_stop_sets_mode_first(current: ConverterMode) -> None:
    assert transition_steps(current, W) == (MODE, DVG, DIG)


@pytest.mark.parametrize("current", [DIS, CHG])
def test_cc_to_cv_voltage_mode_current(current: ConverterMode) -> None:
    assert transition_steps(current, CV) == (DVG, MODE, DIG)


@pytest.mark.parametrize("target", [DIS, CHG])
def test_cv_to_cc_for_the_cv_transfer_sets_mode_first(target: ConverterMode) -> None:
    # The seed's table omits it, but the CV transfer's hand-over (spec 6.5 step 3) needs it.
    assert transition_steps(CV, target) == (MODE, DVG, DIG)


@pytest.mark.parametrize(
    ("current", "target"),
    [(DIS, DIS), (DIS, CHG), (CHG, CHG), (CHG, DIS), (CV, CV)],
)
def test_changes_apis_never_makes_are_refused(
    current: ConverterMode, target: ConverterMode
) -> None:
    with pytest.raises(ModeTransitionRefused, match=f"mode = {target.code} from {current.code}"):
        transition_steps(current, target)

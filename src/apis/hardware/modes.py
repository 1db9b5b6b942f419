"""Converter modes of the grid side of the DC/DC converter.

Only these four codes are ever written by APIS. The mode-change order of the seed's table
lives here too (see `transition_steps`).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class ConverterMode(IntEnum):
    """APIS control mode numbers (`dcdc.status.status`)."""

    WAITING = 0x0000
    DISCHARGE = 0x0002  # constant current pushed into the grid
    VOLTAGE_REFERENCE = 0x0014  # constant grid voltage with droop: the one CV source
    CHARGE = 0x0041  # constant current drawn from the grid

    @property
    def code(self) -> str:
        """The wire form, e.g. ``0x0014``."""
        return f"0x{self.value:04x}"

    @property
    def operation_mode(self) -> str:
        """The `status.operationMode` string a converter reports in this mode."""
        return _OPERATION_MODE[self]

    @classmethod
    def from_code(cls, code: str | int) -> ConverterMode:
        """Parse ``0x0014`` (or an int); raise ValueError naming the value otherwise."""
        if isinstance(code, int):
            value = code
        else:
            text = code.strip()
            if not text.lower().startswith("0x"):
                raise ValueError(f"mode = {code!r} (must be one of {_CODES})")
            try:
                value = int(text, 16)
            except ValueError:
                raise ValueError(f"mode = {code!r} (must be one of {_CODES})") from None
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"mode = {code!r} (must be one of {_CODES})") from None


_OPERATION_MODE = {
    ConverterMode.WAITING: "Waiting",
    ConverterMode.VOLTAGE_REFERENCE: "Grid Autonomy",
    ConverterMode.DISCHARGE: "Heteronomy CV",
    ConverterMode.CHARGE: "Heteronomy CV",
}
_CODES = ", ".join(m.code for m in ConverterMode)


class ModeChangeStep(Enum):
    """One converter write of a mode change."""

    SET_VOLTAGE = "dvg"  # grid voltage set-point and droop (dvg, drg) together
    SET_CURRENT = "dig"  # grid current limit
    SET_MODE = "mode"


class ModeTransitionRefused(ValueError):
    """A mode change the seed's table says APIS never makes (e.g. CV to CC)."""


_LEAVE_STOP = (ModeChangeStep.SET_VOLTAGE, ModeChangeStep.SET_CURRENT, ModeChangeStep.SET_MODE)
# Mode first, so the converter stops switching before its set-points move.
_GO_TO_STOP = (ModeChangeStep.SET_MODE, ModeChangeStep.SET_VOLTAGE, ModeChangeStep.SET_CURRENT)
# The new voltage reference must hold the right voltage the moment it takes over, and its
# current limit must not cut in while it is still a CC unit.
_CC_TO_CV = (ModeChangeStep.SET_VOLTAGE, ModeChangeStep.SET_MODE, ModeChangeStep.SET_CURRENT)

# Not in the seed's table ("not done by APIS"), yet apis-main makes it: step 3 of the CV
# transfer (spec 6.5) turns the old voltage reference into a CC unit while the new one already
# holds the grid. Mode first, as when stopping: the converter must stop acting as a voltage
# source before its voltage set-point moves (a CV unit at dvg = range max would pull the grid
# up against the new reference).
_CV_TO_CC = (ModeChangeStep.SET_MODE, ModeChangeStep.SET_VOLTAGE, ModeChangeStep.SET_CURRENT)

_CC = (ConverterMode.DISCHARGE, ConverterMode.CHARGE)

# The seed's mode-change table (from, to) -> order, plus CV -> CC (above). Pairs absent here
# are never made by APIS.
MODE_CHANGE_ORDER: dict[tuple[ConverterMode, ConverterMode], tuple[ModeChangeStep, ...]] = {
    **{(ConverterMode.WAITING, to): _LEAVE_STOP for to in ConverterMode},
    **{(cc, ConverterMode.WAITING): _GO_TO_STOP for cc in _CC},
    (ConverterMode.VOLTAGE_REFERENCE, ConverterMode.WAITING): _GO_TO_STOP,
    **{(cc, ConverterMode.VOLTAGE_REFERENCE): _CC_TO_CV for cc in _CC},
    **{(ConverterMode.VOLTAGE_REFERENCE, cc): _CV_TO_CC for cc in _CC},
}


def transition_steps(
    current: ConverterMode, target: ConverterMode
) -> tuple[ModeChangeStep, ...]:
    """The ordered converter writes that take the converter from `current` to `target`.

    Raise `ModeTransitionRefused` for a change the seed's table marks "not done by APIS".
    """
    try:
        return MODE_CHANGE_ORDER[(current, target)]
    except KeyError:
        allowed = ", ".join(t.code for (f, t) in MODE_CHANGE_ORDER if f is current)
        raise ModeTransitionRefused(
            f"mode = {target.code} from {current.code} ({current.operation_mode}): "
            f"not a change APIS makes (allowed from {current.code}: {allowed})"
        ) from None

"""Converter modes of the grid side of the DC/DC converter.

Only these four codes are ever written by APIS. The mode-change order of the seed's table
lives here too (see `transition_steps`).
"""

from __future__ import annotations

from enum import IntEnum


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

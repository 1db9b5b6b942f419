"""The house UPS: battery (normal) or bypass operation, and AC charging from the mains.

Optional (`World(..., ups=UpsModel())`); without it the house is always served from the
battery. Thresholds as the original emulator (with hysteresis):

- RSOC <= 30 %: bypass (`ups_operation_mode.mode` 5): the mains serve the house load, the
  battery no longer does; RSOC >= 35 %: back to battery operation (mode 2).
- RSOC <= 20 %: AC charging: the mains charge the battery with a fixed power (150 W);
  RSOC >= 25 %: AC charging stops.

Unlike the original, the UPS has no loss model of its own (no transformer, bypass or AC
charging losses): the mains supply exactly the bypassed load plus the charging power, and
both count as energy bought from the utility (powermeter `p2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

NORMAL_MODE = 2  # battery operation
BYPASS_MODE = 5


@dataclass(frozen=True, slots=True)
class UpsModel:
    """UPS thresholds (% RSOC) and the AC charging power."""

    bypass_at_or_below: float = 30.0
    battery_at_or_above: float = 35.0
    ac_charge_at_or_below: float = 20.0
    ac_charge_stop_at_or_above: float = 25.0
    ac_charge_w: float = 150.0

    def __post_init__(self) -> None:
        if self.bypass_at_or_below >= self.battery_at_or_above:
            raise ValueError(
                f"bypass_at_or_below = {self.bypass_at_or_below} "
                f"(must be < battery_at_or_above = {self.battery_at_or_above})"
            )
        if self.ac_charge_at_or_below >= self.ac_charge_stop_at_or_above:
            raise ValueError(
                f"ac_charge_at_or_below = {self.ac_charge_at_or_below} "
                f"(must be < ac_charge_stop_at_or_above = {self.ac_charge_stop_at_or_above})"
            )
        if self.ac_charge_w < 0:
            raise ValueError(f"ac_charge_w = {self.ac_charge_w} (must be >= 0)")

    def next_state(
        self, bypass: BoolArray, ac_charging: BoolArray, rsoc: FloatArray
    ) -> tuple[BoolArray, BoolArray]:
        """(bypass, ac_charging) after looking at the RSOC, with hysteresis."""
        new_bypass = (bypass | (rsoc <= self.bypass_at_or_below)) & ~(
            rsoc >= self.battery_at_or_above
        )
        new_charging = (ac_charging | (rsoc <= self.ac_charge_at_or_below)) & ~(
            rsoc >= self.ac_charge_stop_at_or_above
        )
        return new_bypass, new_charging

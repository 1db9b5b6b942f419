"""hwConfig.json: one unit's hardware (battery capacity, converter limits, safety ranges)."""

from __future__ import annotations

from pydantic import Field, field_validator

from apis.config.base import ConfigModel, MinMax, rule

# The droop (drg) the EZA2500 converter takes: its register encodes 0..3.999.
DROOP_RATIO_MAX = 3.999


class MeterRanges(ConfigModel):
    """Normal ranges of the converter's meters (`dcdc.meter.*`); outside them the unit stops."""

    tmp: MinMax = MinMax(min=0, max=45)  # °C
    vg: MinMax = MinMax(min=-4, max=380)  # V
    vb: MinMax = MinMax(min=32, max=58.4)  # V
    ig: MinMax = MinMax(min=-2.35, max=2.35)  # A
    ib: MinMax = MinMax(min=-20, max=20)  # A

    @rule
    def _ordered(self) -> list[str]:
        broken = []
        for name in ("tmp", "vg", "vb", "ig", "ib"):
            r: MinMax | None = getattr(self, name, None)  # None: the range itself is wrong
            if r is not None and r.min > r.max:
                broken.append(f"{name}.min = {r.min:g} (must be <= {name}.max = {r.max:g})")
        return broken


class DcdcRanges(ConfigModel):
    meter: MeterRanges = MeterRanges()


class SafetyRanges(ConfigModel):
    dcdc: DcdcRanges = DcdcRanges()


class HwSafety(ConfigModel):
    range: SafetyRanges = SafetyRanges()


class HwConfig(ConfigModel):
    refreshing_period_msec: int = Field(5000, gt=0)
    battery_nominal_capacity_wh: float = Field(4800, gt=0)  # Wh
    grid_current_capacity_a: float = Field(2.3, gt=0)  # A: VR dig, max set-point
    grid_current_allowance_a: float = Field(0.125, ge=0)  # A: checkpoint tolerance
    droop_ratio: float = 0.039  # drg used during CV transfer
    efficient_battery_grid_voltage_ratio: float | None = Field(6.5, gt=0)
    safety: HwSafety = HwSafety()

    @field_validator("droop_ratio")
    @classmethod
    def _droop_in_converter_range(cls, value: float) -> float:
        if not 0 <= value <= DROOP_RATIO_MAX:
            raise ValueError(f"= {value:g} (must be within 0..{DROOP_RATIO_MAX:g}, the droop "
                             "the EZA2500 converter takes)")
        return value

    @property
    def meter_ranges(self) -> MeterRanges:
        return self.safety.range.dcdc.meter

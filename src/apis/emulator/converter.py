"""The DC/DC converter model: losses, thermal state, response, alarms.

Four modes (`apis.hardware.modes.ConverterMode`):

- WAITING: not switching; only the standby loss is drawn from the battery.
- VOLTAGE_REFERENCE (CV): a voltage source with droop. Droop law: the grid-side terminal
  voltage falls linearly with the current the unit pushes into the grid,
  ``v = v_ref - (r_out + r_droop) * i_out`` with ``r_droop = dvg * drg / 100`` ohm, i.e. `drg`
  is the drop in percent of `dvg` per ampere of output current (drg = 0: a stiff source behind
  the small output resistance `r_out`). `v_ref` starts at the grid's present voltage and
  moves to `dvg` at one of two rates:

  * soft start, `voltage_ramp_v_per_s` (30 V/s, about 12 s from 0 V to 350 V, as the
    original): a converter that enters CV on a dead grid, i.e. below its under-voltage level
    `under_voltage_v` (the seed's 0 V start), ramps slowly until it first reaches `dvg`; the
    slow ramp limits the inrush into the grid's capacitance;
  * set-point slew, `voltage_slew_v_per_s` (500 V/s): every other move of a running
    reference on a live grid (authorisation steps of 10-40 V, a hand-over's take-over, grid
    voltage optimisation, WAIT's ramp-down). 500 V/s is a plausible closed-loop figure for
    the grid-side voltage loop of a 2.5 kW DC/DC converter (loop bandwidth of some 100 Hz,
    slew-limited so that charging a few mF of grid capacitance stays within its current
    rating): a 40 V step settles in about 80 ms, before the original's first checkpoint
    read (3 reads, 100 ms apart).
- DISCHARGE / CC CHARGE: a current source of magnitude `dig` into / out of the grid, reached
  through a first-order lag (`response_time_s`, 0.05 s: the current loop settles to 1 % in
  about 0.23 s, inside the original's checkpoint window) and a slew limit
  (`current_ramp_a_per_s`). Without a voltage reference in its part of the grid a CC
  converter moves no current and raises GRID_UNDER_VOLTAGE.

Loss as a function of grid-side power P while switching:
``standby + active + proportional * |P| + quadratic * P**2``; WAITING (or tripped) draws only
`standby_loss_w`. The defaults give about 95 % at 2.5 kW and 96 % near 700 W, plausible for a
2.5 kW bidirectional unit. The heat-sink temperature follows the loss with a first-order
thermal model.

Communication watchdog (`apis.hardware.commwatchdog`, shared with the serial twin): a
converter that hears nothing from its driver (no read, no command) for `watchdog.timeout_s`
(60 s) goes back to WAITING by itself, as a converter whose master has died should.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np
from numpy.typing import NDArray

from apis.hardware.commwatchdog import CommunicationWatchdog
from apis.hardware.modes import ConverterMode

FloatArray = NDArray[np.float64]

WAITING = int(ConverterMode.WAITING)
VOLTAGE_REFERENCE = int(ConverterMode.VOLTAGE_REFERENCE)
DISCHARGE = int(ConverterMode.DISCHARGE)
CHARGE = int(ConverterMode.CHARGE)


class Alarm(IntFlag):
    """Bits of the emulated converter's alarm word (ALM1)."""

    OVER_TEMPERATURE = 0x0001  # heavy: the converter trips (stops switching)
    GRID_UNDER_VOLTAGE = 0x0002  # a CC converter on a dead or sagging grid
    GRID_OVER_VOLTAGE = 0x0004
    CURRENT_LIMIT = 0x0008  # grid current beyond dig / capacity, or battery current limit
    VOLTAGE_CONFLICT = 0x0010  # a stiff voltage reference in parallel with another one
    BATTERY_LIMIT = 0x0020  # battery full (no CC charge) or empty (no CC discharge)
    INJECTED = 0x0040  # heavy: fault injected by a test or demo


HEAVY_ALARMS = Alarm.OVER_TEMPERATURE | Alarm.INJECTED

ALARM_STATE_NAMES = ("No alarm", "Light alarm", "Heavy alarm")
RUNNING_STATE_NAMES = ("off", "charge", "discharge")

# The original emulator's `statusName` strings.
STATUS_NAMES = {
    ConverterMode.WAITING: "Waiting",
    ConverterMode.VOLTAGE_REFERENCE: "Grid Autonomy Mode",
    ConverterMode.DISCHARGE: "Heteronomy CV Discharging",
    ConverterMode.CHARGE: "Heteronomy CV Charging - grid current limited",
}


@dataclass(frozen=True, slots=True)
class ConverterModel:
    """Parameters shared by every emulated converter (one hardware type per community)."""

    standby_loss_w: float = 4.5  # control board and gate drivers, also while waiting
    active_loss_w: float = 12.0  # switching at no load
    proportional_loss: float = 0.02  # fraction of |P|: switching and diode losses
    quadratic_loss_per_w: float = 1.0e-5  # 1/W: resistive losses, ~62 W at 2.5 kW
    response_time_s: float = 0.05  # CC current first-order lag (time constant)
    current_ramp_a_per_s: float = 10.0  # CC slew limit
    voltage_ramp_v_per_s: float = 30.0  # CV soft start on a dead grid: 0 V to 350 V in ~12 s
    voltage_slew_v_per_s: float = 500.0  # CV set-point changes on a live grid
    output_resistance_ohm: float = 0.01  # keeps a drg = 0 source finite in the nodal solve
    ambient_c: float = 25.0
    thermal_resistance_k_per_w: float = 0.12  # 125 W of loss: 15 K above ambient
    thermal_time_constant_s: float = 600.0
    over_temperature_hysteresis_k: float = 5.0  # re-arm this far below the trip point
    under_voltage_v: float = 300.0  # `ugv`: below it a CC converter cannot work
    device_dig_max_a: float = 8.5162  # EZA2500 grid current range
    # With no driver call (read or command) for its timeout, a converter goes to WAITING.
    watchdog: CommunicationWatchdog = field(default_factory=CommunicationWatchdog)

    def loss_w(self, grid_power_w: FloatArray, switching: NDArray[np.bool_]) -> FloatArray:
        """Converter loss (W) at grid-side power P; only the standby part when not switching."""
        p = np.abs(grid_power_w)
        active = self.active_loss_w + self.proportional_loss * p + self.quadratic_loss_per_w * p * p
        return self.standby_loss_w + np.where(switching, active, 0.0)

    def temperature_after(
        self, temperature_c: FloatArray, loss_w: FloatArray, extra_k: FloatArray, dt: float
    ) -> FloatArray:
        """Heat-sink temperature after `dt` s at constant loss (exact first-order step)."""
        steady = self.ambient_c + extra_k + self.thermal_resistance_k_per_w * loss_w
        decay = np.exp(-dt / self.thermal_time_constant_s)
        result: FloatArray = steady + (temperature_c - steady) * decay
        return result

    def follow_current(self, present: FloatArray, target: FloatArray, dt: float) -> FloatArray:
        """CC output current after `dt` s: first-order lag toward `target`, slew limited."""
        if self.response_time_s > 0:
            step = (target - present) * (1.0 - np.exp(-dt / self.response_time_s))
        else:
            step = target - present
        limit = self.current_ramp_a_per_s * dt
        result: FloatArray = present + np.minimum(np.maximum(step, -limit), limit)
        return result

    def ramp_voltage(
        self, present: FloatArray, target: FloatArray, soft_start: NDArray[np.bool_], dt: float
    ) -> FloatArray:
        """CV reference voltage after `dt` s of moving toward `target`: at the soft-start
        ramp where `soft_start`, at the set-point slew elsewhere."""
        rate = np.where(soft_start, self.voltage_ramp_v_per_s, self.voltage_slew_v_per_s)
        limit = rate * dt
        result: FloatArray = present + np.minimum(np.maximum(target - present, -limit), limit)
        return result


def droop_resistance(dvg: FloatArray, drg: FloatArray) -> FloatArray:
    """Droop resistance (ohm) of the law above: `drg` percent of `dvg` per ampere."""
    result: FloatArray = dvg * drg / 100.0
    return result


def alarm_state(alarms: int) -> int:
    """0 no alarm, 1 light, 2 heavy."""
    if alarms & HEAVY_ALARMS:
        return 2
    return 1 if alarms else 0


def running_state(mode: int, tripped: bool) -> int:
    """0 off, 1 charge, 2 discharge (a voltage reference reports discharge, as the original)."""
    if tripped or mode == WAITING:
        return 0
    return 1 if mode == CHARGE else 2


def alarm_text(alarms: int, mode: int, tripped: bool) -> str:
    """`status.alarm`: ALM1 word, alarm state, running state as three 4-digit hex groups."""
    return f"{alarms:04x} {alarm_state(alarms):04x} {running_state(mode, tripped):04x}"

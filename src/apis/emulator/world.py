"""The emulated community: every unit's battery, house and converter plus the DC grid.

State lives in numpy arrays (one entry per unit) and one `step(dt)` advances every unit at
once: house PV and load, converter response, one nodal solve of the grid, losses, battery
energy, temperatures and alarms, and the energy counters.

Energy accounting, per unit and step (all in Wh):

    battery change = pv - curtailed - load + bought - spilled - converter_loss
                     + grid_in - grid_out

`curtailed` is PV the full battery could not take; `spilled` is what a full battery still
could not take once all PV was curtailed (grid charge arriving before the converter backs
off; the original counted it as "wasted"); `bought` is what an empty battery could not give
(drawn from the utility), plus, with a UPS (`apis.emulator.ups`), the load it serves from the
mains in bypass and its AC charging. For the grid: sum of (grid_out - grid_in) over units =
line losses.

Voltage references in parallel. Two or more converters in CV on one live connected part of
the grid are classified every step by their droop (`drg`):

- a *voltage conflict* (`voltage_conflicts`, alarm VOLTAGE_CONFLICT on every member) when at
  least one of them is stiff (drg = 0). A stiff source holds its voltage whatever current it
  must give or take: beside another reference, the share of the current is fixed only by the
  small output and line resistances, so any difference of set-points or sensor offsets drives
  a large current between them until one hits its current limit. They fight; that is the
  error the Grid Master exists to prevent.
- a *droop parallel* (`droop_parallels`, no alarm) when all of them have droop (drg > 0).
  Each one's voltage falls with the current it gives, so the sources share the load in
  inverse proportion to their droop resistances and a set-point difference drives only a
  small, bounded circulating current: paralleling is stable. The CV transfer of spec 6.5
  uses exactly that: for a moment the old and the new reference both run in CV with
  `drg = droopRatio` at the same `dvg`. The record (duration, largest circulating current)
  lets tests check that hand-overs stay brief and gentle.

Time: `step(dt)` is pure. `sync()` steps up to the running event loop's time (lazily, before
every read or command), and `run()` is a task that calls it periodically; so the same world
runs in real, scaled or virtual time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from apis.config.grid import DEFAULT_LINE_RESISTANCE_OHM, GridConfig, GridLine, GridNode
from apis.config.hwconfig import HwConfig
from apis.emulator import battery
from apis.emulator.converter import (
    ALARM_STATE_NAMES,
    CHARGE,
    DISCHARGE,
    RUNNING_STATE_NAMES,
    STATUS_NAMES,
    VOLTAGE_REFERENCE,
    WAITING,
    Alarm,
    ConverterModel,
    alarm_state,
    alarm_text,
    droop_resistance,
    running_state,
)
from apis.emulator.grid import (
    AT_HIGH,
    AT_LOW,
    LIMIT_TOLERANCE_A,
    LINEAR,
    GridNetwork,
    GridSolution,
    VoltageSources,
)
from apis.emulator.house import BuiltinProfiles, HouseProfiles
from apis.emulator.ups import BYPASS_MODE, NORMAL_MODE, UpsModel
from apis.hardware.driver import (
    BATTERY_SHARING_DENIED,
    BATTERY_SHARING_PERMITTED,
    BatteryData,
    ConverterData,
    ConverterStatus,
    CurrentSetting,
    Meter,
    UnitData,
    VoltageSetting,
)
from apis.hardware.modes import ConverterMode

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]

DEFAULT_START = datetime(2020, 1, 1)
_TOLERANCE_A = 1e-6  # current-limit alarms ignore rounding
_TOLERANCE_V = 1e-6  # a CC converter held at its under-voltage limit is still on the grid
_AT_LIMIT_A = 1e-9  # a voltage reference this close to its current limit is limiting
_MEMO_LIMIT = 4096  # distinct converter settings remembered before starting afresh

# What a unit is in the limited grid solve (a changed role restarts its state).
_ROLE_NONE, _ROLE_REFERENCE, _ROLE_DISCHARGE, _ROLE_CHARGE = 0, 1, 2, 3

# The alarm bits in their order (1, 2, 4, ...): the rows of the table `_update_alarms` fills.
_ALARM_BITS = np.array([int(bit) for bit in Alarm], dtype=np.int64)


def unit_ids_for(n: int) -> list[str]:
    """``E001`` .. ``E<n>``: the original emulator's unit IDs."""
    return [f"E{i:03d}" for i in range(1, n + 1)]


@dataclass(frozen=True, slots=True)
class VoltageConflict:
    """Two or more voltage references, at least one of them stiff (drg = 0), held up one
    connected part of the grid: they fight (see the module docstring)."""

    time_s: float  # world time (s since start) when the conflict began
    at: datetime
    unit_ids: tuple[str, ...]
    fight_current_a: float  # largest |grid current| of those references while it lasted
    end_s: float | None = None  # world time when it ended (None: still going on)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.time_s


@dataclass(frozen=True, slots=True)
class DroopParallel:
    """Two or more voltage references, all with droop (drg > 0), held up one connected part
    of the grid: they share the load stably, as during a CV transfer (spec 6.5)."""

    time_s: float  # world time (s since start) when the episode began
    at: datetime
    unit_ids: tuple[str, ...]
    # Largest current that flowed from these references into one another while it lasted:
    # per step min(sum given, sum taken) over the references (0 while they all give, or all
    # take, i.e. merely share a load).
    circulating_current_a: float
    end_s: float | None = None  # world time when it ended (None: still going on)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.time_s


@dataclass(frozen=True, slots=True)
class UnitCounters:
    """Cumulative energy (Wh) of one unit since the world was built."""

    pv_wh: float
    curtailed_wh: float
    load_wh: float
    bought_wh: float
    spilled_wh: float
    converter_loss_wh: float
    grid_in_wh: float  # taken from the DC grid (charging)
    grid_out_wh: float  # given to the DC grid (discharging)
    battery_start_wh: float
    battery_wh: float

    @property
    def balance_error_wh(self) -> float:
        """Battery change minus the sum of the flows; zero up to rounding."""
        flows = (
            self.pv_wh - self.curtailed_wh - self.load_wh + self.bought_wh - self.spilled_wh
            - self.converter_loss_wh + self.grid_in_wh - self.grid_out_wh
        )
        return (self.battery_wh - self.battery_start_wh) - flows

    @property
    def moved_wh(self) -> float:
        """Total energy that moved through the unit (scale for the balance error)."""
        return (
            self.pv_wh + self.curtailed_wh + self.load_wh + self.bought_wh + self.spilled_wh
            + self.converter_loss_wh + self.grid_in_wh + self.grid_out_wh
        )


@dataclass(frozen=True, slots=True)
class _Setup:
    """What the converter settings, the faults, the house overrides and the grid's topology
    decide (with the units' fixed hardware limits). It stays the same from step to step
    until one of them changes (`key`), so the step builds it only then
    (`World._current_setup`)."""

    key: tuple[object, ...]
    switching: BoolArray
    cv: BoolArray
    cc: BoolArray
    cc_discharging: BoolArray
    cc_charging: BoolArray
    source_units: NDArray[np.intp]  # the voltage references
    references: VoltageSources  # ... prepared for the grid solve
    cv_limit_a: FloatArray  # per reference: its current limit
    unit_live: BoolArray  # the unit's part of the grid holds a voltage reference
    cc_live: BoolArray  # CC converters on a live part
    cc_live_units: list[int]
    cc_target_a: FloatArray  # the CC set point, signed (+ discharge)
    # CURRENT_LIMIT beyond these: a reference's |current|, the grid and battery currents.
    cv_over_current_a: FloatArray
    ig_high_a: FloatArray
    ig_low_a: FloatArray
    ib_high_a: FloatArray
    ib_low_a: FloatArray
    pv_overridden: BoolArray | None  # None: no unit's PV is overridden
    load_overridden: BoolArray | None
    auto_permission: bool  # some unit has automatic sharing-permission thresholds


# Per-unit arrays (resized together when units are added or removed).
_UNIT_ARRAYS = (
    "capacity_wh", "energy_wh", "energy_start_wh", "vb_min", "vb_max", "tmp_max", "ogv",
    "ig_min", "ig_max", "ib_min", "ib_max",
    "permitted", "deny_below", "permit_above", "fault_deny", "fault_alarm", "fault_extra_k",
    "pv_override_w", "load_override_w",
    "mode", "dvg", "dig", "drg", "i_cc", "v_ref", "cv_active", "soft_start",
    "over_temperature", "last_heard_s",
    "temperature_c", "alarms",
    "pv_w", "pv_used_w", "load_w", "vg", "ig", "wg", "wb", "vb", "ib", "loss_w",
    "battery_power_w", "bought_w", "grid_role", "grid_state", "ups_bypass", "ups_ac_charging",
    "pv_wh", "curtailed_wh", "load_wh", "bought_wh", "spilled_wh", "loss_wh", "grid_in_wh",
    "grid_out_wh",
)


class World:
    """A community of emulated units on one DC grid."""

    # Per-unit state (see _UNIT_ARRAYS).
    capacity_wh: FloatArray
    energy_wh: FloatArray
    energy_start_wh: FloatArray
    vb_min: FloatArray
    vb_max: FloatArray
    tmp_max: FloatArray
    ogv: FloatArray
    ig_min: FloatArray
    ig_max: FloatArray
    ib_min: FloatArray
    ib_max: FloatArray
    deny_below: FloatArray
    permit_above: FloatArray
    fault_extra_k: FloatArray
    pv_override_w: FloatArray
    load_override_w: FloatArray
    dvg: FloatArray
    dig: FloatArray
    drg: FloatArray
    i_cc: FloatArray
    v_ref: FloatArray
    temperature_c: FloatArray
    last_heard_s: FloatArray  # world time of the driver's last read or command
    pv_w: FloatArray
    pv_used_w: FloatArray
    load_w: FloatArray
    vg: FloatArray
    ig: FloatArray
    wg: FloatArray
    wb: FloatArray
    vb: FloatArray
    ib: FloatArray
    loss_w: FloatArray
    battery_power_w: FloatArray
    bought_w: FloatArray
    pv_wh: FloatArray
    curtailed_wh: FloatArray
    load_wh: FloatArray
    bought_wh: FloatArray
    spilled_wh: FloatArray
    loss_wh: FloatArray
    grid_in_wh: FloatArray
    grid_out_wh: FloatArray
    permitted: BoolArray
    fault_deny: BoolArray
    fault_alarm: BoolArray
    cv_active: BoolArray
    soft_start: BoolArray  # a CV converter ramping up a dead grid at the soft-start rate
    over_temperature: BoolArray
    mode: IntArray
    alarms: IntArray
    ups_bypass: BoolArray
    ups_ac_charging: BoolArray
    grid_role: NDArray[np.int8]
    grid_state: NDArray[np.int8]

    def __init__(
        self,
        units: Sequence[tuple[str, HwConfig]],
        grid: GridConfig | None = None,
        profiles: HouseProfiles | None = None,
        *,
        seed: int = 0,
        start: datetime = DEFAULT_START,
        converter: ConverterModel | None = None,
        initial_rsoc: float | Sequence[float] | None = None,
        max_step_s: float = 1.0,
        ups: UpsModel | None = None,
    ) -> None:
        if max_step_s <= 0:
            raise ValueError(f"max_step_s = {max_step_s} (must be > 0)")
        self.unit_ids: list[str] = [u for u, _ in units]
        if len(set(self.unit_ids)) != len(self.unit_ids):
            raise ValueError(f"unit ids = {self.unit_ids} (must be unique)")
        self.hw_configs: list[HwConfig] = [hw for _, hw in units]
        self.seed = seed
        self.start = start
        self.model = converter if converter is not None else ConverterModel()
        self.max_step_s = max_step_s
        self.ups = ups  # None: no UPS, the battery always serves the house
        self.grid_config = grid if grid is not None else GridConfig.single_bus(self.unit_ids)
        self.grid = GridNetwork(self.grid_config)
        self._unit_node = self.grid.unit_nodes(self.unit_ids)
        n = len(self.unit_ids)
        self.profiles: HouseProfiles = (
            profiles if profiles is not None else BuiltinProfiles(n, seed=seed)
        )
        self.t = 0.0  # s since `start`
        self._now_of: tuple[datetime, float] | None = None  # (start, t) of `_now`
        self._now = start
        self.voltage_conflicts: list[VoltageConflict] = []
        self._active_conflicts: dict[tuple[str, ...], int] = {}  # group -> record index
        self.droop_parallels: list[DroopParallel] = []
        self._active_parallels: dict[tuple[str, ...], int] = {}  # group -> record index
        self.driver_delay_s: dict[str, float] = {}  # injected driver timeouts
        # Converters the communication watchdog stopped: (unit, world time).
        self.watchdog_stops: list[tuple[str, float]] = []
        # No converter's watchdog fires before this world time (a lower bound: the last
        # communication only moves forward; recomputed when the modes change).
        self._watchdog_due = -math.inf
        self.line_loss_wh = np.zeros(len(self.grid.line_ids))
        # Kept when units or lines are removed, so the grid balance still closes.
        self.retired_grid_out_wh = 0.0  # net energy removed units gave to the grid
        self.retired_line_loss_wh = 0.0
        self.last_solution: GridSolution | None = None
        self.last_solve_iterations = 0  # solves the last step's limited grid solve took
        self._grid_limited = False  # some source was at a limit in the last solve
        self._setup: _Setup | None = None
        self._unlimited_memo: (
            tuple[_Setup, tuple[bytes, bytes], tuple[GridSolution, BoolArray] | None] | None
        ) = None
        # The setup under which every reference has reached its set point: until the setup
        # changes, the references' ramp leaves them as they are.
        self._settled_setup: _Setup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_origin = 0.0
        self._index = {u: i for i, u in enumerate(self.unit_ids)}
        # Bumped by every change of the state (`_changed`): the key of the reading caches.
        self._version = 0
        self._readings: dict[int, UnitData] = {}  # unit index -> reading of this version
        self._readings_version = -1
        self._status_memo: dict[tuple[int, int, bool], ConverterStatus] = {}
        self._vdis_memo: dict[tuple[float, float], VoltageSetting] = {}
        self._param_memo: dict[tuple[float, ...], CurrentSetting] = {}

        self._init_arrays(n)
        for i, hw in enumerate(self.hw_configs):
            self._apply_hw(i, hw)
        rsoc = self._initial_rsoc(initial_rsoc, n, 0)
        self.energy_wh[:] = self.capacity_wh * rsoc / 100.0
        self.energy_start_wh[:] = self.energy_wh
        self.vb[:] = battery.battery_voltage(rsoc, self.vb_min, self.vb_max)
        self.step(0.0)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def with_units(
        cls,
        n: int,
        hw: HwConfig | None = None,
        *,
        seed: int = 0,
        **kwargs: object,
    ) -> World:
        """N units E001..E<N> on one bus bar with built-in profiles: needs no files."""
        hw_config = hw if hw is not None else HwConfig()
        units = [(u, hw_config) for u in unit_ids_for(n)]
        return cls(units, seed=seed, **kwargs)  # type: ignore[arg-type]

    def _init_arrays(self, n: int) -> None:
        for name in _UNIT_ARRAYS:
            setattr(self, name, np.zeros(n))
        self.mode = np.full(n, WAITING, dtype=np.int64)
        self.alarms = np.zeros(n, dtype=np.int64)
        self.grid_role = np.zeros(n, dtype=np.int8)
        self.grid_state = np.zeros(n, dtype=np.int8)
        for name in ("permitted",):
            setattr(self, name, np.ones(n, dtype=bool))
        for name in (
            "fault_deny", "fault_alarm", "cv_active", "soft_start", "over_temperature",
            "ups_bypass",
            "ups_ac_charging",
        ):
            setattr(self, name, np.zeros(n, dtype=bool))
        for name in ("deny_below", "permit_above", "pv_override_w", "load_override_w"):
            setattr(self, name, np.full(n, np.nan))
        self.temperature_c[:] = self.model.ambient_c
        self.dvg[:] = 350.0

    def _apply_hw(self, i: int, hw: HwConfig) -> None:
        ranges = hw.meter_ranges
        self.capacity_wh[i] = hw.battery_nominal_capacity_wh
        self.vb_min[i], self.vb_max[i] = ranges.vb.min, ranges.vb.max
        self.tmp_max[i] = ranges.tmp.max
        self.ogv[i] = ranges.vg.max
        self.ig_min[i], self.ig_max[i] = ranges.ig.min, ranges.ig.max
        self.ib_min[i], self.ib_max[i] = ranges.ib.min, ranges.ib.max
        self.dig[i] = 0.0
        self.drg[i] = hw.droop_ratio

    def _initial_rsoc(
        self, initial: float | Sequence[float] | None, n: int, first_index: int
    ) -> FloatArray:
        if initial is None:
            # Seeded spread so that units start apart and sharing has a reason.
            return np.array(
                [
                    np.random.default_rng([self.seed, 3, first_index + i]).uniform(40.0, 70.0)
                    for i in range(n)
                ]
            )
        if isinstance(initial, (int, float)):
            values = np.full(n, float(initial))
        else:
            values = np.asarray(initial, dtype=np.float64)
            if values.shape != (n,):
                raise ValueError(f"initial_rsoc: {len(values)} values (must be {n})")
        if np.any((values < 0) | (values > 100)):
            raise ValueError(f"initial_rsoc = {values.tolist()} (must be within 0..100 %)")
        return values

    # -- units, time -------------------------------------------------------------------

    def index(self, unit_id: str) -> int:
        try:
            return self._index[unit_id]
        except KeyError:
            raise KeyError(
                f"unit = {unit_id!r} (not emulated; units: {self._unit_range()})"
            ) from None

    def _unit_range(self) -> str:
        if not self.unit_ids:
            return "none"
        return f"{self.unit_ids[0]}..{self.unit_ids[-1]}"

    @property
    def version(self) -> int:
        """Changes whenever the world's state may have changed (steps, commands, faults,
        units added or removed): readings taken at one version are the same."""
        return self._version

    def _changed(self) -> None:
        """Every mutation of the state goes through here (readings are cached by version).

        `step` calls it, so do the mutators that do not step; the per-unit arrays are
        public, and whoever writes one directly must call it too.
        """
        self._version += 1

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    def now(self) -> datetime:
        """Calendar time of the world."""
        # Asked by the step and by every unit's reading: computed once per world time.
        if self._now_of != (self.start, self.t):
            self._now_of = (self.start, self.t)
            self._now = self.start + timedelta(seconds=self.t)
        return self._now

    @property
    def rsoc(self) -> FloatArray:
        return battery.rsoc_percent(self.energy_wh, self.capacity_wh)

    @property
    def sharing_permitted(self) -> NDArray[np.bool_]:
        result: NDArray[np.bool_] = self.permitted & ~self.fault_deny
        return result

    @property
    def voltage_conflict_active(self) -> bool:
        return bool(self._active_conflicts)

    @property
    def droop_parallel_active(self) -> bool:
        return bool(self._active_parallels)

    def advance(self, seconds: float) -> None:
        """Step forward `seconds` in steps of at most `max_step_s`."""
        self.advance_to(self.t + seconds)

    def advance_to(self, t: float) -> None:
        span = t - self.t
        if span <= 1e-12:
            return
        count = max(1, math.ceil(span / self.max_step_s - 1e-9))
        dt = span / count
        for _ in range(count - 1):
            self.step(dt)
        self.step(t - self.t)

    def sync(self) -> None:
        """Step up to the running loop's time (no-op outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if loop is not self._loop:
            # First use on this loop: world time continues from where it is.
            self._loop = loop
            self._loop_origin = loop.time() - self.t
            return
        self.advance_to(loop.time() - self._loop_origin)

    async def run(self, period_s: float = 1.0) -> None:
        """Step on the loop every `period_s` s of loop time until cancelled."""
        if period_s <= 0:
            raise ValueError(f"period_s = {period_s} (must be > 0)")
        self.sync()
        while True:
            await asyncio.sleep(period_s)
            self.sync()

    # -- the step ----------------------------------------------------------------------

    def step(self, dt: float) -> None:
        """Advance every unit and the grid by `dt` seconds (dt = 0 re-solves in place)."""
        if dt < 0 or not math.isfinite(dt):
            raise ValueError(f"dt = {dt} (must be a finite number >= 0)")
        model = self.model
        if self.t + dt > self._watchdog_due:
            self._run_watchdog(self.t + dt)
        setup = self._current_setup()
        at = self.now()
        pv, load = self._house_power(setup, at)

        energy = self.energy_wh
        if setup.auto_permission:
            self.permitted = battery.auto_permission(
                self.permitted, self.rsoc, self.deny_below, self.permit_above
            )

        # UPS: in bypass the mains serve the house; AC charging adds mains power.
        if self.ups is not None:
            self.ups_bypass, self.ups_ac_charging = self.ups.next_state(
                self.ups_bypass, self.ups_ac_charging, self.rsoc
            )
            mains = np.where(self.ups_bypass, load, 0.0) + np.where(
                self.ups_ac_charging, self.ups.ac_charge_w, 0.0
            )
        else:
            mains = np.zeros(self.n_units)

        cc = setup.cc
        source_units = setup.source_units
        unit_live = setup.unit_live

        # CC: a converter needs a live grid above its under-voltage threshold and a battery
        # that can give (discharge) or take (charge).
        full = energy >= self.capacity_wh
        empty = energy <= 0.0
        battery_blocked = (setup.cc_discharging & empty) | (setup.cc_charging & full)
        grid_ok = unit_live & (self.vg >= model.under_voltage_v - _TOLERANCE_V)
        target = np.where(cc & grid_ok & ~battery_blocked, setup.cc_target_a, 0.0)
        self.i_cc = np.where(setup.cc_live, model.follow_current(self.i_cc, target, dt), 0.0)

        if setup is not self._settled_setup:
            self._move_references(setup, dt)

        solution, limiting, under, over = self._solve_grid(setup)
        self.last_solution = solution
        i_out = self.i_cc.copy()
        i_out[source_units] = solution.source_i[: len(source_units)]
        vg = solution.node_v[self._unit_node]  # 0 on dead parts
        wg = -vg * i_out  # positive while the unit takes power from the grid
        loss = model.loss_w(wg, setup.switching)
        wb = wg - loss

        # Energy (Wh) over the step.
        hours = dt / 3600.0
        pv_e = pv * hours
        load_e = load * hours
        grid_e = wg * hours
        loss_e = loss * hours
        mains_e = mains * hours
        unclamped = energy + pv_e - load_e + mains_e + grid_e - loss_e
        surplus = np.maximum(unclamped - self.capacity_wh, 0.0)
        curtailed = np.minimum(surplus, pv_e)
        spilled = surplus - curtailed
        bought = mains_e + np.maximum(-unclamped, 0.0)
        new_energy = np.minimum(np.maximum(unclamped, 0.0), self.capacity_wh)

        self.pv_wh += pv_e
        self.curtailed_wh += curtailed
        self.load_wh += load_e
        self.bought_wh += bought
        self.spilled_wh += spilled
        self.loss_wh += loss_e
        self.grid_in_wh += np.maximum(grid_e, 0.0)
        self.grid_out_wh += np.maximum(-grid_e, 0.0)
        self.line_loss_wh += solution.line_loss_w * hours
        if dt > 0:
            self.battery_power_w = (new_energy - energy) / hours
            self.pv_used_w = pv - curtailed / hours
            self.bought_w = bought / hours
        else:
            self.battery_power_w = pv - load + mains + wb
            self.pv_used_w = pv.copy()
            if self.ups is not None:
                self.bought_w = mains.copy()
        self.energy_wh = new_energy

        # Meters.
        new_rsoc = battery.rsoc_percent(new_energy, self.capacity_wh)
        self.vb = battery.battery_voltage(new_rsoc, self.vb_min, self.vb_max)
        self.ib = wb / self.vb
        self.vg, self.ig, self.wg, self.wb, self.loss_w = vg, -i_out, wg, wb, loss
        self.pv_w, self.load_w = pv, load

        # Temperature and its trip (with hysteresis).
        self.temperature_c = model.temperature_after(
            self.temperature_c, loss, self.fault_extra_k, dt
        )
        hot = self.temperature_c > self.tmp_max
        cool = self.temperature_c < self.tmp_max - model.over_temperature_hysteresis_k
        self.over_temperature = (self.over_temperature | hot) & ~cool

        conflict = self._check_conflicts(source_units, solution, i_out, at)
        self._update_alarms(setup, battery_blocked, grid_ok, i_out, conflict, limiting, under, over)
        self.t += dt
        self._changed()

    def _current_setup(self) -> _Setup:
        """The setup of the present settings (built afresh only when one of them changed)."""
        key = (
            self.grid.topology_version, self.mode.tobytes(), self.fault_alarm.tobytes(),
            self.over_temperature.tobytes(), self.dig.tobytes(), self.dvg.tobytes(),
            self.drg.tobytes(), self.pv_override_w.tobytes(), self.load_override_w.tobytes(),
            self.deny_below.tobytes(), self.permit_above.tobytes(),
        )
        setup = self._setup
        if setup is None or setup.key != key:
            setup = self._setup = self._build_setup(key)
            self._watchdog_due = self._next_watchdog_due()
        return setup

    def _next_watchdog_due(self) -> float:
        """When the first switching converter's watchdog fires if nobody talks to it."""
        timeout = self.model.watchdog.timeout_s
        active = self.mode != WAITING
        if timeout is None or not active.any():
            return math.inf
        return float(self.last_heard_s[active].min()) + timeout

    def _run_watchdog(self, end: float) -> None:
        """Converters whose timeout without a word from their driver runs out before `end`
        (the end of the step about to be made) stop: WAITING from the step's start."""
        timeout = self.model.watchdog.timeout_s
        if timeout is not None:
            silent = (self.mode != WAITING) & (end - self.last_heard_s > timeout)
            for i in np.flatnonzero(silent).tolist():
                self.mode[i] = WAITING
                self.watchdog_stops.append((self.unit_ids[i], self.t))
        self._watchdog_due = self._next_watchdog_due()

    def heard(self, unit_id: str) -> None:
        """The unit's driver reached its converter (a read or a command): it resets the
        converter's communication watchdog. Call after `sync`, at the present time."""
        self.last_heard_s[self.index(unit_id)] = self.t

    def _build_setup(self, key: tuple[object, ...]) -> _Setup:
        model = self.model
        mode = self.mode
        tripped = self.fault_alarm | self.over_temperature
        discharging = mode == DISCHARGE
        charging = mode == CHARGE
        switching = (mode != WAITING) & ~tripped
        cv = switching & (mode == VOLTAGE_REFERENCE)
        cc = switching & (charging | discharging)
        source_units = np.flatnonzero(cv)
        r_source = model.output_resistance_ohm + droop_resistance(
            self.dvg[source_units], self.drg[source_units]
        )
        references = self.grid.prepare(self._unit_node[source_units], 1.0 / r_source)
        unit_live = references.live[self._unit_node]
        cc_live = cc & unit_live
        set_point = np.minimum(self.dig, model.device_dig_max_a)
        pv_overridden = ~np.isnan(self.pv_override_w)
        load_overridden = ~np.isnan(self.load_override_w)
        auto = ~np.isnan(self.deny_below) & ~np.isnan(self.permit_above)
        return _Setup(
            key=key,
            switching=switching,
            cv=cv,
            cc=cc,
            cc_discharging=cc & discharging,
            cc_charging=cc & charging,
            source_units=source_units,
            references=references,
            cv_limit_a=np.minimum(self.dig[source_units], model.device_dig_max_a),
            unit_live=unit_live,
            cc_live=cc_live,
            cc_live_units=np.flatnonzero(cc_live).tolist(),
            cc_target_a=np.where(discharging, set_point, -set_point),
            cv_over_current_a=self.dig + _TOLERANCE_A,
            ig_high_a=self.ig_max + _TOLERANCE_A,
            ig_low_a=self.ig_min - _TOLERANCE_A,
            ib_high_a=self.ib_max + _TOLERANCE_A,
            ib_low_a=self.ib_min - _TOLERANCE_A,
            pv_overridden=pv_overridden if pv_overridden.any() else None,
            load_overridden=load_overridden if load_overridden.any() else None,
            auto_permission=bool(auto.any()),
        )

    def _house_power(self, setup: _Setup, at: datetime) -> tuple[FloatArray, FloatArray]:
        """PV and load per unit: the profiles', or the overrides where set."""
        pv, load = self.profiles.power_w(self.t, at)
        if setup.pv_overridden is not None:
            pv = np.where(setup.pv_overridden, self.pv_override_w, pv)
        if setup.load_overridden is not None:
            load = np.where(setup.load_overridden, self.load_override_w, load)
        return pv, load

    def _move_references(self, setup: _Setup, dt: float) -> None:
        """CV: a starting reference moves from the grid's present voltage; on a dead grid
        (below the under-voltage level) it soft-starts until it first reaches its dvg."""
        model = self.model
        cv = setup.cv
        starting = cv & ~self.cv_active
        self.v_ref = np.where(starting, self.vg, self.v_ref)
        self.soft_start = cv & np.where(
            starting, self.vg < model.under_voltage_v, self.soft_start
        )
        self.v_ref = np.where(
            cv, model.ramp_voltage(self.v_ref, self.dvg, self.soft_start, dt), 0.0
        )
        self.soft_start &= np.abs(self.v_ref - self.dvg) > _TOLERANCE_V
        self.cv_active = cv
        # At their set points the ramp moves them by exactly 0 (and nothing soft-starts).
        settled = np.array_equal(self.v_ref, np.where(cv, self.dvg, 0.0))
        self._settled_setup = setup if settled else None

    def _solve_grid(self, setup: _Setup) -> tuple[GridSolution, BoolArray, BoolArray, BoolArray]:
        """The limited grid solve; updates the delivered CC currents.

        Limiting law. A voltage reference is a droop source ``v_ref - r * i`` as long as its
        output current stays within +-min(dig, hardware maximum); beyond that it is a
        constant-current source at the limit and its terminal voltage is what the grid
        gives. A CC converter delivers its current while the grid lets it: a charger takes
        less (down to nothing) rather than pull its terminal below the under-voltage limit
        `ugv`, a discharger gives less rather than push it above `ogv` (each then acts as a
        stiff source at that limit, behind the converter's output resistance). So when the
        references cannot supply the chargers the grid sags to `ugv` and the chargers share
        what there is; when they cannot absorb the dischargers it rises to `ogv`.

        Returns the grid solution (sources: the references, then the CC units moving current)
        and per unit: the reference is limiting; the CC converter is held back at `ugv`
        (under) or at `ogv` (over).
        """
        model = self.model
        n = self.n_units
        source_units = setup.source_units
        n_cv = len(source_units)
        cv_limit = setup.cv_limit_a
        g_cv = setup.references.g
        source_nodes = setup.references.nodes
        if not self._grid_limited:
            unlimited = self._unlimited_solve(setup)
            if unlimited is not None:
                self.last_solve_iterations = 1
                no_unit = np.zeros(n, dtype=bool)
                return unlimited[0], unlimited[1], no_unit, no_unit
        cc_units = np.flatnonzero(setup.cc_live & (self.i_cc != 0.0))
        units = np.concatenate([source_units, cc_units])
        i_cc = self.i_cc[cc_units]
        giving = i_cc > 0.0
        g = np.concatenate(
            [g_cv, np.full(len(cc_units), 1.0 / model.output_resistance_ohm)]
        )
        u = np.concatenate(
            [self.v_ref[source_units], np.where(giving, self.ogv[cc_units], model.under_voltage_v)]
        )
        lo = np.concatenate([-cv_limit, np.where(giving, 0.0, i_cc)])
        hi = np.concatenate([cv_limit, np.where(giving, i_cc, 0.0)])
        role = np.concatenate(
            [
                np.full(n_cv, _ROLE_REFERENCE, dtype=np.int8),
                np.where(giving, _ROLE_DISCHARGE, _ROLE_CHARGE).astype(np.int8),
            ]
        )
        # Normal operation: references linear, CC converters at their full current.
        default = np.concatenate(
            [
                np.full(n_cv, LINEAR, dtype=np.int8),
                np.where(giving, AT_HIGH, AT_LOW).astype(np.int8),
            ]
        )
        if self._grid_limited:
            warm = np.where(self.grid_role[units] == role, self.grid_state[units], default)
        else:
            warm = default
        limited = self.grid.solve_limited(
            source_nodes, self._unit_node[units], g, u, lo, hi,
            np.zeros(self.grid.n_nodes), warm.astype(np.int8),
        )
        self._grid_limited = not np.array_equal(limited.state, default)
        self.last_solve_iterations = limited.iterations
        self.grid_role = np.zeros(n, dtype=np.int8)
        self.grid_state = np.zeros(n, dtype=np.int8)
        self.grid_role[units] = role
        self.grid_state[units] = limited.state
        current = limited.grid.source_i
        self.i_cc[cc_units] = current[n_cv:]

        state = limited.state
        magnitude = np.abs(current[:n_cv])
        at_limit = (state[:n_cv] != LINEAR) | (
            (magnitude >= cv_limit - _AT_LIMIT_A) & (magnitude > _AT_LIMIT_A)
        )
        limiting = np.zeros(n, dtype=bool)
        limiting[source_units] = at_limit
        under = np.zeros(n, dtype=bool)
        over = np.zeros(n, dtype=bool)
        cc_state = state[n_cv:]
        under[cc_units] = ~giving & (cc_state != AT_LOW)
        over[cc_units] = giving & (cc_state != AT_HIGH)
        return limited.grid, limiting, under, over

    def _unlimited_solve(self, setup: _Setup) -> tuple[GridSolution, BoolArray] | None:
        """Fast path (normal operation): references linear, CC at full current. The
        solution and which references are at their limit; None if it shows a source beyond
        a limit. A settled grid (same setup, CC currents and reference voltages as the last
        time) gets the same answer again without solving."""
        inputs = (self.i_cc.tobytes(), self.v_ref.tobytes())
        memo = self._unlimited_memo
        if memo is not None and memo[0] is setup and memo[1] == inputs:
            return memo[2]
        injection = np.zeros(self.grid.n_nodes)
        injection[self._unit_node] = self.i_cc
        plain = self.grid.solve_prepared(
            setup.references, self.v_ref[setup.source_units], injection
        )
        limiting = self._references_limiting(setup, plain.source_i)
        if limiting is None or not self._cc_within_limits(setup, plain.node_v):
            result = None
        else:
            result = (plain, limiting)
        self._unlimited_memo = (setup, inputs, result)
        return result

    def _references_limiting(
        self, setup: _Setup, source_i: FloatArray
    ) -> BoolArray | None:
        """Per unit: the reference is at its current limit; None: one is beyond it.

        The few references are looked at one by one in Python floats (the same IEEE
        arithmetic as numpy's, without its per-call overhead on tiny arrays)."""
        limiting = np.zeros(self.n_units, dtype=bool)
        for unit, current, limit in zip(
            setup.source_units.tolist(), source_i.tolist(), setup.cv_limit_a.tolist(),
            strict=True,
        ):
            magnitude = abs(current)
            if not magnitude <= limit + LIMIT_TOLERANCE_A:
                return None
            limiting[unit] = magnitude >= limit - _AT_LIMIT_A and magnitude > _AT_LIMIT_A
        return limiting

    def _cc_within_limits(self, setup: _Setup, node_v: FloatArray) -> bool:
        """No CC converter moving current is beyond its grid voltage limit (the limiting
        law of `_solve_grid`: the unclipped current of the limit's stiff source, at the
        unit's voltage, still covers the converter's current). In Python floats, as
        `_references_limiting`."""
        model = self.model
        g_cc = 1.0 / model.output_resistance_ohm
        tolerance = LIMIT_TOLERANCE_A
        for unit in setup.cc_live_units:
            current = self.i_cc.item(unit)
            v = node_v.item(self._unit_node.item(unit))
            if current > 0.0:
                if not g_cc * (self.ogv.item(unit) - v) >= current - tolerance:
                    return False
            elif current < 0.0 and not g_cc * (model.under_voltage_v - v) <= current + tolerance:
                return False
        return True

    def _check_conflicts(
        self, source_units: NDArray[np.intp], solution: GridSolution, i_out: FloatArray,
        at: datetime,
    ) -> NDArray[np.bool_]:
        """Record references in parallel (module docstring); True for units in conflict."""
        conflict = np.zeros(self.n_units, dtype=bool)
        conflicts: dict[tuple[str, ...], int] = {}
        parallels: dict[tuple[str, ...], int] = {}
        if len(source_units) >= 2:
            labels = solution.component[self._unit_node[source_units]]
            counts = np.bincount(labels)
            for label in np.flatnonzero(counts >= 2):
                members = source_units[labels == label]
                group = tuple(self.unit_ids[i] for i in members)
                current = i_out[members]
                if np.any(self.drg[members] == 0.0):
                    conflict[members] = True
                    conflicts[group] = self._track_conflict(group, current, at)
                else:
                    parallels[group] = self._track_parallel(group, current, at)
        for group, index in self._active_conflicts.items():
            if group not in conflicts:
                self.voltage_conflicts[index] = replace(
                    self.voltage_conflicts[index], end_s=self.t
                )
        for group, index in self._active_parallels.items():
            if group not in parallels:
                self.droop_parallels[index] = replace(self.droop_parallels[index], end_s=self.t)
        self._active_conflicts = conflicts
        self._active_parallels = parallels
        return conflict

    def _track_conflict(self, group: tuple[str, ...], current: FloatArray, at: datetime) -> int:
        fight = float(np.max(np.abs(current)))
        index = self._active_conflicts.get(group)
        if index is None:
            self.voltage_conflicts.append(VoltageConflict(self.t, at, group, fight))
            return len(self.voltage_conflicts) - 1
        record = self.voltage_conflicts[index]
        if fight > record.fight_current_a:
            self.voltage_conflicts[index] = replace(record, fight_current_a=fight)
        return index

    def _track_parallel(self, group: tuple[str, ...], current: FloatArray, at: datetime) -> int:
        given = float(np.sum(np.maximum(current, 0.0)))
        taken = float(np.sum(np.maximum(-current, 0.0)))
        circulating = min(given, taken)
        index = self._active_parallels.get(group)
        if index is None:
            self.droop_parallels.append(DroopParallel(self.t, at, group, circulating))
            return len(self.droop_parallels) - 1
        record = self.droop_parallels[index]
        if circulating > record.circulating_current_a:
            self.droop_parallels[index] = replace(record, circulating_current_a=circulating)
        return index

    def _update_alarms(
        self,
        setup: _Setup,
        battery_blocked: NDArray[np.bool_],
        grid_ok: NDArray[np.bool_],
        i_out: FloatArray,
        conflict: NDArray[np.bool_],
        limiting: NDArray[np.bool_],
        held_under: NDArray[np.bool_],
        held_over: NDArray[np.bool_],
    ) -> None:
        over_current = limiting | (setup.cv & (np.abs(i_out) > setup.cv_over_current_a))
        over_current |= self.ig > setup.ig_high_a
        over_current |= self.ig < setup.ig_low_a
        over_current |= self.ib > setup.ib_high_a
        over_current |= self.ib < setup.ib_low_a
        # One row per bit, in the order of `Alarm`; the words are the sums of the bits set
        # (one call rather than one ufunc per bit).
        table = np.array(
            [
                self.over_temperature,  # OVER_TEMPERATURE
                (setup.cc & ~grid_ok) | held_under,  # GRID_UNDER_VOLTAGE
                (self.vg > self.ogv) | held_over,  # GRID_OVER_VOLTAGE
                over_current,  # CURRENT_LIMIT
                conflict,  # VOLTAGE_CONFLICT
                battery_blocked,  # BATTERY_LIMIT
                self.fault_alarm,  # INJECTED
            ]
        )
        if np.count_nonzero(table):
            self.alarms = _ALARM_BITS @ table
        else:
            self.alarms = np.zeros(self.n_units, dtype=np.int64)

    # -- commands ----------------------------------------------------------------------

    def set_converter(
        self, unit_id: str, mode: ConverterMode, dvg: float, dig: float, drg: float
    ) -> None:
        """Mode, grid voltage, current and droop at once (no limit checks: see the driver)."""
        i = self.index(unit_id)
        self._check_values(dvg=dvg, dig=dig, drg=drg)
        self.sync()
        self.last_heard_s[i] = self.t
        self.dvg[i], self.dig[i], self.drg[i] = dvg, dig, drg
        self.mode[i] = int(ConverterMode(mode))
        self.step(0.0)

    def set_voltage(self, unit_id: str, dvg: float, drg: float) -> None:
        i = self.index(unit_id)
        self._check_values(dvg=dvg, drg=drg)
        self.sync()
        self.last_heard_s[i] = self.t
        self.dvg[i], self.drg[i] = dvg, drg
        self.step(0.0)

    def set_current(self, unit_id: str, dig: float) -> None:
        i = self.index(unit_id)
        self._check_values(dig=dig)
        self.sync()
        self.last_heard_s[i] = self.t
        self.dig[i] = dig
        self.step(0.0)

    @staticmethod
    def _check_values(**values: float) -> None:
        for key, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{key} = {value} (must be a finite number >= 0)")

    def set_rsoc(self, unit_id: str, rsoc: float) -> None:
        """Overwrite the state of charge (demo and tests); counted as a new starting point."""
        i = self.index(unit_id)
        if not 0.0 <= rsoc <= 100.0:
            raise ValueError(f"rsoc = {rsoc} (must be within 0..100 %)")
        self.sync()
        new_energy = self.capacity_wh[i] * rsoc / 100.0
        self.energy_start_wh[i] += new_energy - self.energy_wh[i]
        self.energy_wh[i] = new_energy
        self.step(0.0)

    def set_sharing_permitted(self, unit_id: str, permitted: bool) -> None:
        """The battery's own permission flag (automatic thresholds may change it again)."""
        self.sync()
        self.permitted[self.index(unit_id)] = permitted
        self._changed()

    def set_auto_permission(
        self, unit_id: str, deny_below: float | None, permit_above: float | None
    ) -> None:
        """Deny sharing below `deny_below` %, permit again from `permit_above` %; None: off."""
        i = self.index(unit_id)
        if (deny_below is None) != (permit_above is None):
            raise ValueError("deny_below and permit_above (give both or neither)")
        if deny_below is not None and permit_above is not None and deny_below > permit_above:
            raise ValueError(
                f"deny_below = {deny_below} (must be <= permit_above = {permit_above})"
            )
        self.sync()
        self.deny_below[i] = np.nan if deny_below is None else deny_below
        self.permit_above[i] = np.nan if permit_above is None else permit_above
        self.step(0.0)

    def set_house_override(
        self, unit_id: str, pv_w: float | None = None, load_w: float | None = None
    ) -> None:
        """Hold PV and/or load at a fixed value (None: back to the profile)."""
        i = self.index(unit_id)
        for key, value in (("pv_w", pv_w), ("load_w", load_w)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{key} = {value} (must be a finite number >= 0)")
        self.sync()
        self.pv_override_w[i] = np.nan if pv_w is None else pv_w
        self.load_override_w[i] = np.nan if load_w is None else load_w
        self.step(0.0)

    # -- faults ------------------------------------------------------------------------

    def inject_sharing_denied(self, unit_id: str, denied: bool = True) -> None:
        """The battery reports "interchange denied" whatever its own flag says."""
        self.sync()
        self.fault_deny[self.index(unit_id)] = denied
        self._changed()

    def inject_converter_alarm(self, unit_id: str, active: bool = True) -> None:
        """A heavy converter alarm: the converter trips and stops switching."""
        self.sync()
        self.fault_alarm[self.index(unit_id)] = active
        self.step(0.0)

    def inject_over_temperature(self, unit_id: str, extra_k: float = 40.0) -> None:
        """Heat the converter `extra_k` above its normal temperature (a blocked fan)."""
        i = self.index(unit_id)
        self.sync()
        self.fault_extra_k[i] = extra_k
        if extra_k > 0:
            # Jump rather than wait a thermal time constant: tests want the trip now.
            self.temperature_c[i] += extra_k
        self.step(0.0)

    def inject_driver_timeout(self, unit_id: str, delay_s: float | None = 5.0) -> None:
        """The unit's driver hangs `delay_s` s of loop time, then raises; None clears it."""
        self.index(unit_id)
        if delay_s is None:
            self.driver_delay_s.pop(unit_id, None)
        else:
            if delay_s < 0:
                raise ValueError(f"delay_s = {delay_s} (must be >= 0)")
            self.driver_delay_s[unit_id] = delay_s
        self._changed()

    def break_line(self, line_id: str, broken: bool = True) -> None:
        """Open (or repair) a grid line."""
        self.sync()
        self.grid.set_line_broken(line_id, broken)
        self.step(0.0)

    def clear_faults(self, unit_id: str) -> None:
        """Remove every injected fault of one unit."""
        i = self.index(unit_id)
        self.sync()
        self.fault_deny[i] = False
        self.fault_alarm[i] = False
        self.fault_extra_k[i] = 0.0
        self.driver_delay_s.pop(unit_id, None)
        self.step(0.0)

    # -- reads -------------------------------------------------------------------------

    def counters(self, unit_id: str) -> UnitCounters:
        i = self.index(unit_id)
        return UnitCounters(
            pv_wh=float(self.pv_wh[i]),
            curtailed_wh=float(self.curtailed_wh[i]),
            load_wh=float(self.load_wh[i]),
            bought_wh=float(self.bought_wh[i]),
            spilled_wh=float(self.spilled_wh[i]),
            converter_loss_wh=float(self.loss_wh[i]),
            grid_in_wh=float(self.grid_in_wh[i]),
            grid_out_wh=float(self.grid_out_wh[i]),
            battery_start_wh=float(self.energy_start_wh[i]),
            battery_wh=float(self.energy_wh[i]),
        )

    @property
    def total_line_loss_wh(self) -> float:
        """Energy lost in the lines since the start (including lines removed since)."""
        return float(self.line_loss_wh.sum()) + self.retired_line_loss_wh

    @property
    def grid_balance_error_wh(self) -> float:
        """Energy the units gave the grid minus the line losses; zero up to rounding."""
        given = float(np.sum(self.grid_out_wh - self.grid_in_wh)) + self.retired_grid_out_wh
        return given - self.total_line_loss_wh

    def line_losses_wh(self) -> dict[str, float]:
        return dict(zip(self.grid.line_ids, self.line_loss_wh.tolist(), strict=True))

    def node_voltages(self) -> dict[str, float]:
        if self.last_solution is None:
            return {}
        return dict(zip(self.grid.node_ids, self.last_solution.node_v.tolist(), strict=True))

    def line_currents(self) -> dict[str, float]:
        if self.last_solution is None:
            return {}
        return dict(zip(self.grid.line_ids, self.last_solution.line_i.tolist(), strict=True))

    def tripped(self, i: int) -> bool:
        return bool(self.fault_alarm[i] or self.over_temperature[i])

    def ups_mode(self, unit_id: str) -> int:
        """`ups_operation_mode.mode`: 2 battery (normal), 5 bypass."""
        return BYPASS_MODE if self.ups_bypass[self.index(unit_id)] else NORMAL_MODE

    def alarm_flags(self, unit_id: str) -> Alarm:
        return Alarm(int(self.alarms[self.index(unit_id)]))

    def converter_data(self, unit_id: str) -> ConverterData:
        return self._reading(self.index(unit_id)).dcdc

    def battery_data(self, unit_id: str) -> BatteryData:
        return self._reading(self.index(unit_id)).battery

    def unit_data(self, unit_id: str) -> UnitData:
        return self._reading(self.index(unit_id))

    def _reading(self, i: int) -> UnitData:
        """Unit `i`'s reading of the present state, built once per state (`version`)."""
        if self._readings_version != self._version:
            self._readings = {}
            self._readings_version = self._version
        reading = self._readings.get(i)
        if reading is None:
            reading = self._readings[i] = UnitData(
                dcdc=self._converter_reading(i), battery=self._battery_reading(i),
                time=self.now(),
            )
        return reading

    def _converter_reading(self, i: int) -> ConverterData:
        # `.item` gives the Python float (as float() of the element would) without the
        # numpy scalar. The status and the settings seldom change: shared frozen objects.
        mode_code = self.mode.item(i)
        alarms = self.alarms.item(i)
        tripped = bool(self.fault_alarm.item(i) or self.over_temperature.item(i))
        status = self._status_memo.get((alarms, mode_code, tripped))
        if status is None:
            mode = ConverterMode(mode_code)
            status = ConverterStatus(
                mode=mode,
                alarm=alarm_text(alarms, mode_code, tripped),
                alarm_state=ALARM_STATE_NAMES[alarm_state(alarms)],
                running_state=RUNNING_STATE_NAMES[running_state(mode_code, tripped)],
                status_name=STATUS_NAMES[mode],
            )
            self._status_memo[(alarms, mode_code, tripped)] = status
        # "+ 0.0" turns -0.0 (a stopped discharge) into 0.0 on the wire.
        meter = Meter(
            vg=self.vg.item(i) + 0.0, ig=self.ig.item(i) + 0.0, wg=self.wg.item(i) + 0.0,
            vb=self.vb.item(i), ib=self.ib.item(i) + 0.0, wb=self.wb.item(i) + 0.0,
            tmp=self.temperature_c.item(i),
        )
        dvg, drg = self.dvg.item(i), self.drg.item(i)
        vdis = self._vdis_memo.get((dvg, drg))
        if vdis is None:
            vdis = self._vdis_memo[(dvg, drg)] = VoltageSetting(dvg=dvg, drg=drg)
        key = (
            self.dig.item(i), self.ogv.item(i), self.model.under_voltage_v,
            self.ib_max.item(i), self.vb_max.item(i), self.vb_min.item(i),
        )
        param = self._param_memo.get(key)
        if param is None:
            dig, ogv, ugv, cib, obv, ubv = key
            param = CurrentSetting(dig=dig, ogv=ogv, ugv=ugv, cib=cib, obv=obv, ubv=ubv)
            self._param_memo[key] = param
        if len(self._vdis_memo) + len(self._param_memo) > _MEMO_LIMIT:
            self._vdis_memo.clear()
            self._param_memo.clear()
        return ConverterData(status=status, meter=meter, vdis=vdis, param=param)

    def _battery_reading(self, i: int) -> BatteryData:
        capacity = self.capacity_wh.item(i)
        if capacity > 0.0:
            # As battery.rsoc_percent, for one unit.
            rsoc = min(max(100.0 * self.energy_wh.item(i) / capacity, 0.0), 100.0)
        else:
            rsoc = float(self.rsoc[i])
        permitted = bool(self.permitted.item(i)) and not self.fault_deny.item(i)
        return BatteryData(
            rsoc=rsoc,
            battery_operation_status=(
                BATTERY_SHARING_PERMITTED if permitted else BATTERY_SHARING_DENIED
            ),
        )

    # -- adding and removing units (the original's /add/unit and /remove/unit) ----------

    def add_unit(
        self,
        unit_id: str | None = None,
        hw: HwConfig | None = None,
        *,
        attach_to: str = "BUS",
        resistance_ohm: float = DEFAULT_LINE_RESISTANCE_OHM,
        rsoc: float | None = None,
    ) -> str:
        """Add a unit joined to node `attach_to` by a new line; returns its ID."""
        self.sync()
        new_id = unit_id if unit_id is not None else f"E{self.n_units + 1:03d}"
        if new_id in self._index:
            raise ValueError(f"unit = {new_id!r} (already emulated)")
        if attach_to not in self.grid.node_index:
            raise ValueError(f"attach_to = {attach_to!r} (not a node of the grid)")
        config = self.grid_config
        nodes = [*config.nodes, GridNode(id=new_id, kind="unit")]
        lines = [
            *config.lines,
            GridLine(
                id=f"{new_id}-{attach_to}", from_node=new_id, to_node=attach_to,
                resistance_ohm=resistance_ohm,
            ),
        ]
        hw_config = hw if hw is not None else HwConfig()
        self._resize(self.n_units + 1, keep=np.arange(self.n_units))
        self.unit_ids.append(new_id)
        self.hw_configs.append(hw_config)
        i = self.n_units - 1
        self._init_unit(i)
        self._apply_hw(i, hw_config)
        start_rsoc = self._initial_rsoc(rsoc, 1, i)
        self.energy_wh[i] = self.capacity_wh[i] * start_rsoc[0] / 100.0
        self.energy_start_wh[i] = self.energy_wh[i]
        self._rebuild_grid(GridConfig(nodes=nodes, lines=lines))
        return new_id

    def remove_unit(self, unit_id: str | None = None) -> str:
        """Remove a unit (default: the last) and its node and lines; returns its ID."""
        if not self.unit_ids:
            raise ValueError("remove unit: no units left")
        self.sync()
        gone = unit_id if unit_id is not None else self.unit_ids[-1]
        i = self.index(gone)
        keep = np.array([k for k in range(self.n_units) if k != i], dtype=np.intp)
        self.retired_grid_out_wh += float(self.grid_out_wh[i] - self.grid_in_wh[i])
        config = self.grid_config
        nodes = [n for n in config.nodes if n.id != gone]
        lines = [ln for ln in config.lines if gone not in (ln.from_node, ln.to_node)]
        self._resize(self.n_units - 1, keep=keep)
        del self.unit_ids[i]
        del self.hw_configs[i]
        self.driver_delay_s.pop(gone, None)
        self._rebuild_grid(GridConfig(nodes=nodes, lines=lines))
        return gone

    def _forget_setup(self) -> None:
        """Units or the grid were replaced: the setup's arrays and prepared sources (and
        what was computed with them) belong to the old ones, whatever the key says."""
        self._setup = self._settled_setup = None
        self._unlimited_memo = None

    def _resize(self, n: int, keep: NDArray[np.intp]) -> None:
        self._changed()
        self._forget_setup()
        for name in _UNIT_ARRAYS:
            old = getattr(self, name)
            new = np.zeros(n, dtype=old.dtype)
            new[: len(keep)] = old[keep]
            setattr(self, name, new)
        self.profiles.resize(n)

    def _init_unit(self, i: int) -> None:
        self.mode[i] = WAITING
        self.last_heard_s[i] = self.t
        self.permitted[i] = True
        for name in ("deny_below", "permit_above", "pv_override_w", "load_override_w"):
            getattr(self, name)[i] = np.nan
        self.temperature_c[i] = self.model.ambient_c
        self.dvg[i] = 350.0

    def _rebuild_grid(self, config: GridConfig) -> None:
        broken = {
            line for line, b in zip(self.grid.line_ids, self.grid.broken, strict=True) if b
        }
        old_losses = dict(zip(self.grid.line_ids, self.line_loss_wh, strict=True))
        self.grid_config = config
        self.grid = GridNetwork(config)
        self._forget_setup()
        for line in broken & set(self.grid.line_ids):
            self.grid.set_line_broken(line, True)
        self.line_loss_wh = np.array([old_losses.get(line, 0.0) for line in self.grid.line_ids])
        self.retired_line_loss_wh += sum(old_losses.values()) - float(self.line_loss_wh.sum())
        self._index = {u: k for k, u in enumerate(self.unit_ids)}
        self._unit_node = self.grid.unit_nodes(self.unit_ids)
        # Records stay open across the rebuild: groups are keyed by unit ID, and the step
        # below closes those whose members are gone.
        self.vb = battery.battery_voltage(self.rsoc, self.vb_min, self.vb_max)
        self.step(0.0)

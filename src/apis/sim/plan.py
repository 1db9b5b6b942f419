"""The planning fidelity: the community over months or years, without the control loops.

The faithful run (`apis.sim.run`) executes every unit's software on the virtual clock. This
model keeps what decides the energy and drops the mechanics that only carry it out:

- *Houses and batteries*: the emulator's own PV and load profiles and initial charge (the
  same `World` is built for the same seed), stepped every `step_s` (60 s) with numpy over all
  units: battery = PV - load + converter, full batteries curtail PV, empty ones buy.
- *Decisions*: every unit's house keeping every `houseKeepingPeriodMsec` (a seeded phase per
  unit; a negotiation adds `negotiationTimeoutMsec` before the next), the request, the
  accepts of the units not busy, the accept selection, the deal amount and current, the deal
  interlocks, the Grid Master's admission limits and the force-stop conditions: the units'
  own functions (`apis.unit.user`, `apis.unit.decisions`). A table of those same functions
  (`apis.sim.plantables`) screens each step, so that a negotiation runs only when a request
  could find an accept. A unit decides on its battery at the start of the step (a faithful
  unit on its last acquisition, at most 5 s old).
- *Deals*: created when the negotiation ends; started after the control latency
  (`latency_live_s` when the grid is already energised, `latency_dark_s` when a voltage
  reference must first start on a dark grid: calibrated on faithful runs, reported); run at
  the deal current through the emulator's converter loss model and the DC grid's nodal
  solve (one voltage reference, the others constant current); ended when the counted energy
  (battery side of the reference unit, shared between a unit's deals by current) reaches the
  amount, at that instant; aborted at the end of a step that breaks a force-stop condition.
  The voltage reference is the master-side unit of the first deal (a large-capacity slave
  takes it, as the Grid Master prefers), handed to the newest remaining deal when its own
  deals end. Not modelled: compensation trims, hand-over and ramp transients, scrams,
  unit faults, current limits of the voltage reference.

Outputs stream to disk as the run goes (units.csv per sample interval, deals.csv as deals
end); memory holds one day of steps, the running deals and a thinned series for the plots.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from apis.config.loader import Cluster
from apis.emulator.converter import droop_resistance
from apis.emulator.grid import GridNetwork
from apis.emulator.house import BuiltinProfiles
from apis.sim.community import SimSettings
from apis.sim.planoutput import (
    DealTally,
    DealWriter,
    PlanDeal,
    UnitsWriter,
    apis_time,
)
from apis.sim.plantables import ScenarioIndex
from apis.sim.recorder import Samples
from apis.unit.data import deal_interlock_capacity
from apis.unit.decisions import (
    DealFlow,
    admission_failure,
    attributed_power,
    deal_terms,
    force_stop_reason,
    interlocks_full,
    seconds_to_amount,
    worth_negotiating,
)
from apis.unit.user import (
    Offer,
    ScenarioEvaluationError,
    deal_fields,
    evaluate_accept,
    evaluate_request,
    select_accept,
)

FloatArray = NDArray[np.float64]
Progress = Callable[[float], None]
PLOT_POINTS = 2000  # at most this many samples per unit kept for the plots

_TICK, _RESOLVE, _START, _END = 0, 1, 2, 3


@dataclass
class PlanResult:
    """A planning run's figures: what the summary and the report need (no per-step data)."""

    settings: SimSettings
    unit_ids: list[str]
    capacity_wh: FloatArray
    start_battery_wh: FloatArray
    end_battery_wh: FloatArray
    end_counters: dict[str, FloatArray]
    line_loss_wh: float
    switching_s: FloatArray
    standby_loss_w: float
    active_loss_w: float
    tally: DealTally
    samples: Samples  # thinned: RSOC and grid voltages for the plots
    simulated_s: float
    files: list[Path] = field(default_factory=list)  # streamed: units.csv, deals.csv
    voltage_conflicts: list[tuple[float, float, tuple[str, ...]]] = field(default_factory=list)
    log_counts: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    world_steps: int = 0
    negotiations: int = 0


class _Plan:
    """One planning run (the state of the community and the event queue)."""

    def __init__(self, settings: SimSettings, cluster: Cluster, out: Path | None) -> None:
        from apis.sim.report import DEALS_COLUMNS, UNITS_COLUMNS
        from apis.sim.run import build_world

        self.settings = settings
        world = build_world(settings, cluster)
        if not isinstance(world.profiles, BuiltinProfiles):
            raise TypeError("the planning model needs the built-in house profiles")
        self.profiles: BuiltinProfiles = world.profiles
        self.ids = list(world.unit_ids)
        self.n = n = len(self.ids)
        self.cap = world.capacity_wh.copy()
        self.energy = world.energy_wh.copy()
        self.start_energy = self.energy.copy()
        self.model = settings.converter
        self.policy = cluster.policy
        self.rules = cluster.policy.mediator.deal
        files = [cluster.unit(u) for u in self.ids]
        self.scenarios = [f.scenario for f in files]
        self.interlocks = np.array(
            [deal_interlock_capacity(f.hw_config, self.policy) for f in files], dtype=np.int64
        )
        # the decision tables: only a run with sharing decides anything
        self.index = ScenarioIndex(
            self.scenarios if settings.sharing else [],
            [f.hw_config.battery_nominal_capacity_wh for f in files] if settings.sharing else [],
        )
        self.req_flat, self.accc_flat, self.accd_flat = self.index.tables.flat()
        self.width = self.index.tables.width
        self._prepared: dict[int, Any] = {}  # voltage reference unit -> prepared grid source
        self.grid = GridNetwork(cluster.grid)
        self.unit_node = self.grid.unit_nodes(self.ids)
        self.large = {self.ids.index(u) for u in self.policy.large_capacity_unit_ids
                      if u in self.ids}
        self.start = settings.start
        self.plan = settings.plan
        self.h = settings.plan.step_s
        self.period = self.policy.user.house_keeping_period_msec / 1000
        self.timeout = self.policy.mediator.negotiation_timeout_msec / 1000
        self.next_tick = np.array([
            np.random.default_rng([settings.seed, 7, i]).uniform(0.0, self.period)
            for i in range(n)
        ])
        self.pending = np.zeros(n, dtype=bool)
        self.held = np.zeros(n, dtype=np.int64)
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.rng = np.random.default_rng([settings.seed, 8])
        self.running: dict[str, PlanDeal] = {}
        self.waiting_start: dict[str, PlanDeal] = {}
        self.vr: int | None = None
        self.negotiations = 0
        # converter and grid: present rates and cumulative counters (Wh, s)
        self.cum = {name: np.zeros(n) for name in ("loss", "grid_in", "grid_out", "switching")}
        self.cum_line = 0.0
        self.seg_t = 0.0  # cumulative counters valid up to here
        self.conv_from = 0.0  # this step's converter energy counted up to here
        self.conv_partial: FloatArray | float = 0.0
        self.conv_changed = False
        self._idle_rates()
        self.vg = np.zeros(n)
        self.step_energy = self.energy
        self.step_remaining = np.zeros(n, dtype=np.int64)
        self.step_remaining_end = np.zeros(n, dtype=np.int64)
        self.step_rate = np.zeros(n)
        self.step_t0 = 0.0
        self.step_offset = np.zeros(n, dtype=np.int64)
        self.tally = DealTally(self.start, self.ids)
        self.units_csv = out / "units.csv" if out is not None else None
        self.deals_csv = out / "deals.csv" if out is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        self.units_out = UnitsWriter(self.units_csv, self.start, self.ids, UNITS_COLUMNS)
        self.deals_out = DealWriter(self.deals_csv, self.start, self.ids, DEALS_COLUMNS)

    # ---- converter and grid -------------------------------------------------------------

    def _idle_rates(self) -> None:
        standby = self.model.standby_loss_w
        n = self.n
        self.wb = np.full(n, -standby)
        self.loss = np.full(n, standby)
        self.gin = np.zeros(n)
        self.gout = np.zeros(n)
        self.switching = np.zeros(n)
        self.line_w = 0.0
        self.idle = True
        self.wb_step = self.wb * (self.h / 3600.0)

    def _integrate(self, t: float) -> None:
        """Bring the cumulative converter counters to t."""
        span = t - self.seg_t
        if span > 0:
            hours = span / 3600.0
            cum = self.cum
            cum["loss"] += self.loss * hours
            if not self.idle:
                cum["grid_in"] += self.gin * hours
                cum["grid_out"] += self.gout * hours
                cum["switching"] += self.switching * span
                self.cum_line += self.line_w * hours
            self.seg_t = t

    def _change(self, t: float) -> None:
        """Before the converters change at t: counters and this step's converter energy."""
        self._integrate(t)
        part = t - self.conv_from
        if part > 0:
            self.conv_partial = self.conv_partial + self.wb * (part / 3600.0)
            self.conv_from = t
            self.conv_changed = True

    def _reconfigure(self, t: float) -> None:
        """The converters and the grid for the deals running from t on; the deals' powers
        and expected ends."""
        running = list(self.running.values())
        if not running:
            self._idle_rates()
            self.vg = np.zeros(self.n)
            self.vr = None
            return
        n = self.n
        current = np.zeros(n)  # grid current each CC unit gives (A, + discharge)
        dealing = np.zeros(n, dtype=bool)
        per_unit_a = np.zeros(n)  # sum of the deal currents at the unit
        for d in running:
            current[d.discharge] += d.grid_current_a
            current[d.charge] -= d.grid_current_a
            dealing[d.charge] = dealing[d.discharge] = True
            per_unit_a[d.charge] += d.grid_current_a
            per_unit_a[d.discharge] += d.grid_current_a
        assert self.vr is not None
        vr = self.vr
        cc = current.copy()
        cc[vr] = 0.0
        injection = np.zeros(self.grid.n_nodes)
        injection[self.unit_node] = cc
        dvg = self.policy.operation_grid_voltage_v
        sources = self._prepared.get(vr)
        if sources is None:
            g = 1.0 / (self.model.output_resistance_ohm
                       + float(droop_resistance(np.array([dvg]), np.array([0.0]))[0]))
            sources = self._prepared[vr] = self.grid.prepare(self.unit_node[[vr]],
                                                             np.array([g]))
        solution = self.grid.solve_prepared(sources, np.array([dvg]), injection)
        i_out = cc
        i_out[vr] = solution.source_i[0]
        vg = solution.node_v[self.unit_node]
        wg = -vg * i_out
        dealing[vr] = True
        loss = self.model.loss_w(wg, dealing)
        self.wb = wg - loss
        self.loss = loss
        self.gin = np.maximum(wg, 0.0)
        self.gout = np.maximum(-wg, 0.0)
        self.switching = dealing.astype(np.float64)
        self.line_w = float(solution.line_loss_w.sum())
        self.vg = vg
        self.idle = False
        self.wb_step = self.wb * (self.h / 3600.0)
        reference_is_charge = self.policy.grid_master.deal.reference_side == "chargeUnit"
        for d in running:
            others_c = per_unit_a[d.charge] - d.grid_current_a
            others_d = per_unit_a[d.discharge] - d.grid_current_a
            d.charge_w = attributed_power(float(self.wb[d.charge]), d.grid_current_a, others_c)
            d.discharge_w = attributed_power(float(-self.wb[d.discharge]), d.grid_current_a,
                                             others_d)
            counted = d.charge_wh if reference_is_charge else d.discharge_wh
            power = d.charge_w if reference_is_charge else d.discharge_w
            remaining = seconds_to_amount(d.amount_wh, counted, power)
            d.version += 1
            if remaining is not None:
                self._push(t + max(remaining, 0.0), _END, (d, d.version))

    def _bring_deals_up_to(self, t: float) -> None:
        for d in self.running.values():
            d.bring_up_to(t)

    def _master(self, d: PlanDeal) -> int:
        side = self.policy.grid_master.voltage_reference_side
        master, slave = (d.charge, d.discharge) if side == "chargeUnit" \
            else (d.discharge, d.charge)
        if self.large and master not in self.large and slave in self.large:
            return slave
        return master

    # ---- events -------------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def _hms(self, t: float) -> str:
        return (self.start + timedelta(seconds=t)).strftime("%H:%M:%S")

    def _remaining(self, u: int, t: float) -> int:
        """Unit u's remaining capacity at t: its battery moves linearly within a step."""
        capacity = float(self.cap[u])
        energy = float(self.step_energy[u]) + float(self.step_rate[u]) * (t - self.step_t0)
        rsoc = min(max(100.0 * energy / capacity, 0.0), 100.0)
        return int(capacity * rsoc / 100)

    def _tick(self, t: float, u: int, t1: float) -> None:
        self.pending[u] = False
        made = False
        block = self.scenarios[u].block_at(self._hms(t))
        if block is not None and not interlocks_full(int(self.interlocks[u]), int(self.held[u])):
            try:
                offer = evaluate_request(block, self._remaining(u, t))
            except ScenarioEvaluationError:
                offer = None
            if offer is not None and worth_negotiating(offer["amountWh"], self.rules):
                made = True
                self._negotiate(t, u, offer)
        self.next_tick[u] = t + (self.timeout if made else 0.0) + self.period
        if self.next_tick[u] < t1:
            self.pending[u] = True
            self._push(float(self.next_tick[u]), _TICK, u)

    def _negotiate(self, t: float, u: int, offer: Offer) -> None:
        self.negotiations += 1
        rules = self.rules
        request = {**offer, "dealGridCurrentA": rules.grid_current_a, "unitId": self.ids[u],
                   "dateTime": apis_time(self.start, t)}
        table = self.accd_flat if request["type"] == "charge" else self.accc_flat
        free = self.held < self.interlocks
        screened = (table[self.step_offset + self.step_remaining] > rules.amount_min_wh) | (
            table[self.step_offset + self.step_remaining_end] > rules.amount_min_wh)
        accepts = []
        hms = self._hms(t)
        for v in np.flatnonzero(free & screened).tolist():
            if v == u:
                continue
            block = self.scenarios[v].block_at(hms)
            if block is None:
                continue
            try:
                accept = evaluate_accept(block, self._remaining(v, t), request, self.ids[v])
            except ScenarioEvaluationError:
                continue
            if accept is None or not worth_negotiating(accept["amountWh"], rules):
                continue
            accepts.append({**accept, "dealGridCurrentA": rules.grid_current_a,
                            "unitId": self.ids[v]})
        self._push(t + self.timeout, _RESOLVE, (u, request, accepts))

    def _resolve(self, t: float, u: int, request: Offer, accepts: list[Offer]) -> None:
        if not accepts or interlocks_full(int(self.interlocks[u]), int(self.held[u])):
            return
        strategy = self.scenarios[u].selection_at(self._hms(t)).strategy
        chosen = select_accept(strategy, request, accepts)
        if chosen is None:
            return
        amount = deal_terms(request, chosen, self.rules)
        if amount <= 0:
            return
        deal_id = str(self._uuid())
        fields = deal_fields(request, chosen, amount, deal_id)
        charge = self.ids.index(fields["chargeUnitId"])
        discharge = self.ids.index(fields["dischargeUnitId"])
        if charge == discharge:
            return
        for unit in (charge, discharge):
            if interlocks_full(int(self.interlocks[unit]), int(self.held[unit])):
                return  # the deal interlock is refused: busy
        self.held[charge] += 1
        self.held[discharge] += 1
        deal = PlanDeal(deal_id, fields["requestUnitId"], fields["acceptUnitId"], charge,
                        discharge, str(fields["type"]), float(fields["dealGridCurrentA"]),
                        float(amount), created=t)
        plan = self.plan
        if self.running:
            start = t + plan.latency_live_s
        elif self.waiting_start:
            start = max(t + plan.latency_live_s,
                        max(float(d.since) for d in self.waiting_start.values()))
        else:
            start = t + plan.latency_dark_s
        deal.since = start  # its planned start, until it starts
        self.waiting_start[deal_id] = deal
        self._push(start, _START, deal)

    def _uuid(self) -> str:
        import uuid

        value = int.from_bytes(self.rng.bytes(16), "big")
        return str(uuid.UUID(int=value, version=4))

    def _start(self, t: float, deal: PlanDeal) -> None:
        self.waiting_start.pop(deal.deal_id, None)
        active = [DealFlow(self.ids[d.charge], self.ids[d.discharge], d.grid_current_a)
                  for d in self.running.values()]
        flow = DealFlow(self.ids[deal.charge], self.ids[deal.discharge], deal.grid_current_a)
        failure = admission_failure(self.policy.safety,
                                    self.policy.grid_master.deal.reset_limit, 0, flow, active)
        if failure is not None:
            deal.abort_reason = failure
            deal.since = t
            self._release(deal)
            self._record(deal)
            return
        self._change(t)
        self._bring_deals_up_to(t)
        deal.started = deal.since = t
        self.running[deal.deal_id] = deal
        if self.vr is None:
            self.vr = self._master(deal)
        self._reconfigure(t)

    def _end(self, t: float, deal: PlanDeal, reason: str | None = None) -> None:
        self._change(t)
        self._bring_deals_up_to(t)
        deal.stopped = t
        deal.abort_reason = reason
        del self.running[deal.deal_id]
        if self.vr is not None and not any(
            self.vr in (d.charge, d.discharge) for d in self.running.values()
        ):
            newest = max(self.running.values(), key=lambda d: d.started or 0.0, default=None)
            self.vr = None if newest is None else self._master(newest)
        self._reconfigure(t)
        self._release(deal)
        self._record(deal)

    def _release(self, deal: PlanDeal) -> None:
        self.held[deal.charge] -= 1
        self.held[deal.discharge] -= 1

    def _record(self, deal: PlanDeal) -> None:
        reference_is_charge = self.policy.grid_master.deal.reference_side == "chargeUnit"
        delivered = deal.charge_wh if reference_is_charge else deal.discharge_wh
        self.tally.add(deal, delivered)
        self.deals_out.write(deal, delivered)

    # ---- the screen ---------------------------------------------------------------------

    def _screen(self, now: float, t1: float) -> None:
        """Ticks due before t1: a tick event for each unit whose request could find an
        accept; the others' house keeping moves on (a request without a possible accept
        still takes its negotiation time)."""
        due = (self.next_tick < t1) & ~self.pending
        if not due.any():
            return
        amin = self.rules.amount_min_wh
        free = self.held < self.interlocks
        charge = np.zeros(self.n, dtype=bool)
        discharge = np.zeros(self.n, dtype=bool)
        give = np.zeros(self.n, dtype=bool)
        take = np.zeros(self.n, dtype=bool)
        # the battery at the start and at the end of the step: what it passes through
        for index in (self.step_offset + self.step_remaining,
                      self.step_offset + self.step_remaining_end):
            request = self.req_flat[index]
            charge |= request > amin
            discharge |= request < -amin
            give |= self.accd_flat[index] > amin
            take |= self.accc_flat[index] > amin
        charge &= free
        discharge &= free
        give &= free
        take &= free
        n_give = int(np.count_nonzero(give))
        n_take = int(np.count_nonzero(take))
        candidate = None
        if (n_give and charge.any()) or (n_take and discharge.any()):
            candidate = due & ((charge & (n_give - give > 0))
                               | (discharge & (n_take - take > 0)))
            for u in np.flatnonzero(candidate).tolist():
                self.pending[u] = True
                self._push(max(float(self.next_tick[u]), now), _TICK, u)
        rest = due if candidate is None else due & ~candidate
        # the others' house keeping moves on: a request costs its negotiation time
        period = self.period + self.timeout * (charge | discharge)
        ahead = np.floor((t1 - self.next_tick) / period) + 1.0
        self.next_tick = np.where(rest, self.next_tick + ahead * period, self.next_tick)

    def _events_until(self, t1: float) -> None:
        heap = self.heap
        while heap and heap[0][0] < t1:
            t, _, kind, payload = heapq.heappop(heap)
            if kind == _TICK:
                self._tick(t, payload, t1)
            elif kind == _RESOLVE:
                self._resolve(t, *payload)
            elif kind == _START:
                self._start(t, payload)
            else:
                deal, version = payload
                if deal.version == version and deal.deal_id in self.running:
                    self._end(t, deal)
                    self._screen(t, t1)

    def _force_stops(self, t: float) -> None:
        if not self.running:
            return
        condition = self.policy.grid_master.deal.force_stop_condition
        rsoc = np.minimum(np.maximum(100.0 * self.energy / self.cap, 0.0), 100.0)
        stops = []
        for d in self.running.values():
            reason = force_stop_reason(condition, self.ids[d.discharge], float(rsoc[d.discharge]),
                                       self.ids[d.charge], float(rsoc[d.charge]))
            if reason is not None:
                stops.append((d, reason))
        for d, reason in stops:
            self._end(t, d, reason)

    # ---- the run ------------------------------------------------------------------------

    def _house(self, t0: float, count: int) -> tuple[FloatArray, FloatArray, FloatArray]:
        """PV and load power (W) at the start of `count` steps from t0, and the second of
        the day of each step (for the scenario windows)."""
        midnight = datetime(self.start.year, self.start.month, self.start.day)
        base = (self.start - midnight).total_seconds()
        seconds = base + t0 + self.h * np.arange(count)
        day_offset = np.floor(seconds / 86400.0).astype(np.int64)
        of_day = seconds - 86400.0 * day_offset
        pv = np.empty((count, self.n))
        load = np.empty((count, self.n))
        first = midnight.toordinal()
        for offset in np.unique(day_offset).tolist():
            rows = day_offset == offset
            pv[rows], load[rows] = self.profiles.series(first + offset, of_day[rows] / 3600.0)
        return pv, load, of_day

    def run(self, sharing: bool, progress: Progress | None) -> PlanResult:
        settings = self.settings
        duration = settings.duration_s
        h = self.h
        interval = settings.sample_interval_s
        n_steps = max(1, math.ceil(duration / h - 1e-9))
        chunk = max(1, round(86400.0 / h))
        n = self.n
        cap = self.cap
        cum_house = {name: np.zeros(n) for name in
                     ("pv_wh", "load_wh", "bought_wh", "curtailed_wh", "spilled_wh")}
        last: dict[str, FloatArray] = {name: np.zeros(n) for name in (
            "pv_wh", "load_wh", "bought_wh", "curtailed_wh", "spilled_wh",
            "converter_loss_wh", "grid_in_wh", "grid_out_wh")}
        thin = max(1, math.ceil(duration / interval / PLOT_POINTS))
        plot = Samples(list(self.ids), interval * thin)
        samples_taken = 0
        energy = self.energy
        width = self.width
        cap_min = float(cap.min()) if n else 0.0
        pv_done = np.zeros(n)
        load_done = np.zeros(n)
        for c0 in range(0, n_steps, chunk):
            count = min(chunk, n_steps - c0)
            pv_w, load_w, of_day = self._house(c0 * h, count)
            step_h = np.full(count, h / 3600.0)
            step_h[-1] = (min((c0 + count) * h, duration) - (c0 + count - 1) * h) / 3600.0
            pv_e = pv_w * step_h[:, None]
            load_e = load_w * step_h[:, None]
            net_e = pv_e - load_e
            if sharing:
                block_ids = self.index.block_ids(of_day.astype(np.int64))
                offsets = block_ids * width
            for j in range(count):
                k = c0 + j
                t0 = k * h
                t1 = min((k + 1) * h, duration)
                if sharing:
                    self.step_energy = energy
                    # whole Wh (a unit's remaining capacity: int(capacity x rsoc / 100))
                    self.step_remaining = energy.astype(np.int64)
                    self.step_t0 = t0
                    self.step_rate = (net_e[j] + self.wb_step) / h
                    end = np.minimum(np.maximum(energy + net_e[j] + self.wb_step, 0.0), cap)
                    self.step_remaining_end = end.astype(np.int64)
                    self.step_offset = offsets[j]
                    self._screen(t0, t1)
                    self._events_until(t1)
                if not self.conv_changed and t1 - t0 == h:
                    conv = self.wb_step
                else:
                    conv = self.conv_partial + self.wb * ((t1 - self.conv_from) / 3600.0)
                self.conv_partial = 0.0
                self.conv_changed = False
                self.conv_from = t1
                unclamped = energy + net_e[j]
                unclamped += conv
                low, high = unclamped.min(), unclamped.max()
                if low < 0.0 or high > cap_min:
                    surplus = np.maximum(unclamped - cap, 0.0)
                    if high > cap_min:
                        curtailed = np.minimum(surplus, pv_e[j])
                        cum_house["curtailed_wh"] += curtailed
                        cum_house["spilled_wh"] += surplus - curtailed
                    if low < 0.0:
                        cum_house["bought_wh"] += np.maximum(-unclamped, 0.0)
                    energy = np.minimum(np.maximum(unclamped, 0.0), cap)
                else:
                    energy = unclamped
                self.energy = energy
                if sharing and self.running:
                    self._force_stops(t1)
                if t1 >= duration - 1e-9 or abs(t1 / interval - round(t1 / interval)) < 1e-9:
                    self._integrate(t1)
                    cum_house["pv_wh"] = pv_done + pv_e[: j + 1].sum(axis=0)
                    cum_house["load_wh"] = load_done + load_e[: j + 1].sum(axis=0)
                    now = self._counters(cum_house)
                    increments = {name: now[name] - last[name] for name in last}
                    last = now
                    rsoc = np.minimum(np.maximum(100.0 * energy / cap, 0.0), 100.0)
                    self.units_out.write(t1, rsoc, energy, increments, interval)
                    if samples_taken % thin == 0 or t1 >= duration - 1e-9:
                        live = self.vg[self.vg > 0.0]
                        plot.times_s.append(t1)
                        plot.rsoc.append(rsoc)
                        plot.battery_wh.append(energy.copy())
                        plot.grid_voltage_max.append(float(live.max()) if live.size else 0.0)
                        plot.grid_voltage_min.append(float(live.min()) if live.size else 0.0)
                    samples_taken += 1
                    if progress is not None:
                        progress(t1)
            pv_done = pv_done + pv_e.sum(axis=0)
            load_done = load_done + load_e.sum(axis=0)
            cum_house["pv_wh"] = pv_done
            cum_house["load_wh"] = load_done
        end = duration
        self._integrate(end)
        self._bring_deals_up_to(end)
        for d in list(self.running.values()) + list(self.waiting_start.values()):
            if d.started is None:
                d.since = end
            self._record(d)
        self.units_out.close()
        self.deals_out.close()
        files = [p for p in (self.units_csv, self.deals_csv) if p is not None]
        return PlanResult(
            settings=settings,
            unit_ids=list(self.ids),
            capacity_wh=cap.copy(),
            start_battery_wh=self.start_energy,
            end_battery_wh=energy.copy(),
            end_counters=self._counters(cum_house),
            line_loss_wh=self.cum_line,
            switching_s=self.cum["switching"].copy(),
            standby_loss_w=self.model.standby_loss_w,
            active_loss_w=self.model.active_loss_w,
            tally=self.tally,
            samples=plot,
            simulated_s=end,
            files=files,
            world_steps=n_steps,
            negotiations=self.negotiations,
        )

    def _counters(self, house: dict[str, FloatArray]) -> dict[str, FloatArray]:
        return {
            "pv_wh": house["pv_wh"].copy(),
            "load_wh": house["load_wh"].copy(),
            "bought_wh": house["bought_wh"].copy(),
            "curtailed_wh": house["curtailed_wh"].copy(),
            "spilled_wh": house["spilled_wh"].copy(),
            "converter_loss_wh": self.cum["loss"].copy(),
            "grid_in_wh": self.cum["grid_in"].copy(),
            "grid_out_wh": self.cum["grid_out"].copy(),
        }


def run_plan(
    settings: SimSettings,
    cluster: Cluster,
    progress: Progress | None = None,
    out: Path | None = None,
) -> PlanResult:
    """One planning run (sharing as `settings.sharing`); streams units.csv and deals.csv
    into `out` when given."""
    began = time.perf_counter()
    plan = _Plan(settings, cluster, out)
    result = plan.run(settings.sharing, progress)
    result.wall_s = time.perf_counter() - began
    return result

"""Deal execution (spec section 5, 6): the Grid Master's state machine over all deals.

One `run_pass` per main-loop pass: read the deals, sort them, and move each one step:

    new -> Activation -> RampingUp -> MasterAuthorization -> Compensation -> Cumulation
        -> (amount reached) stop -> Deactivation -> Disposition
    any failure -> Abortion -> Deactivation -> Disposition

Exactly one converter holds the grid voltage (the voltage reference, VR). It sits on the
*master side* of the *master deal*; every other running converter is in constant current.
The VR moves only by the 4-step hand-over of section 6.5.

Where a unit has died or stopped answering, a deal must still end: Abortion and the
Deactivation it leads to skip the unit that cannot be reached (reporting a HARDWARE/LOCAL/ERROR
on its behalf, so that, if it is alive, its own error handling stops it), record the abort and
dispose of the deal, which writes the final deal log on every live unit (the original left such
a deal in the registry for ever). A voltage reference lost while other deals still need it is a
LOGIC/GLOBAL/ERROR (scram, reset). A hand-over that fails half-way is one too: two converters
might be holding the grid.

Better than the original: a deal stops on a predicted time as well as on a pass. When the
energy still missing would be reached before the next regular pass, `wake_in` asks the main
loop to come back exactly then, so the amount is met within a fraction of a percent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apis.bus.base import BusError, RevisionMismatch
from apis.config.policy import Policy
from apis.hardware.driver import APIS_TIME_FORMAT
from apis.hardware.modes import ConverterMode
from apis.unit import lifecycle
from apis.unit.commands import UnitLink, UnitUnreachable
from apis.unit.data import UnitSnapshot
from apis.unit.deal import NOT_APPLICABLE, Deal
from apis.unit.decisions import (
    DealFlow,
    admission_failure,
    amount_reached,
    attributed_power,
    force_stop_reason,
    seconds_to_amount,
)
from apis.unit.errors import DealFailure, ErrorRecord, GlobalError
from apis.unit.registry import Registry

log = logging.getLogger(__name__)

CHARGE_SIDE = "chargeUnit"
DISCHARGE_SIDE = "dischargeUnit"


def _flow(deal: Deal) -> DealFlow:
    return DealFlow(deal.charge_unit_id, deal.discharge_unit_id, deal.deal_grid_current_a)


def _other_side(side: str) -> str:
    return DISCHARGE_SIDE if side == CHARGE_SIDE else CHARGE_SIDE


def unit_of(deal: Deal, side: str) -> str:
    return deal.charge_unit_id if side == CHARGE_SIDE else deal.discharge_unit_id


def _seconds_between(earlier: str | None, later: str) -> float | None:
    if earlier is None or earlier == NOT_APPLICABLE:
        return None
    try:
        a = datetime.strptime(earlier, APIS_TIME_FORMAT)
        b = datetime.strptime(later, APIS_TIME_FORMAT)
    except ValueError:
        return None
    return (b - a).total_seconds()


@dataclass
class _Handover:
    old_vr: str
    new_vr: str
    old_vr_mode: str | None  # "CHARGE" / "DISCHARGE" / None = WAIT
    old_vr_current_a: float
    voltage_v: float | None  # the new VR's dvg (None: its own measured vg)


class DealExecution:
    def __init__(
        self,
        *,
        policy: Policy,
        registry: Registry,
        link: UnitLink,
        dispose: Callable[[str], Awaitable[Any]],
        publish_log: Callable[[dict[str, Any]], Awaitable[None]],  # a deal's JSON
        raise_global: Callable[[GlobalError], None],
        large_capacity: Callable[[str], bool] | None = None,
        global_mode: Callable[[], str] | None = None,
        report_unit_error: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self.registry = registry
        self.link = link
        self._dispose = dispose
        self._publish_log = publish_log
        self._raise_global = raise_global
        self._global_mode = global_mode or (lambda: "autonomous")
        self._report_unit_error = report_unit_error
        self.large_capacity_units = set(policy.large_capacity_unit_ids)
        self.deals: dict[str, Deal] = {}
        self.revisions: dict[str, int] = {}
        self.data: dict[str, UnitSnapshot] = {}
        self.master_side: str = policy.grid_master.voltage_reference_side
        self.wake_in: float | None = None
        self.stop_pass = False
        self._both_active: set[str] = set()

    # ---- the pass ------------------------------------------------------------------------

    async def run_pass(self, data: dict[str, UnitSnapshot]) -> None:
        self.data = dict(data)
        self.wake_in = None
        self.stop_pass = False
        stored = await self.registry.all_deals()
        self.deals = {s.deal.deal_id: s.deal for s in stored}
        self.revisions = {s.deal.deal_id: s.revision for s in stored}
        if not self.deals:
            self._both_active = set()
            return
        for deal in self.deals.values():
            deal.need_to_stop_reasons = await self.registry.need_to_stop_reasons(deal.deal_id)
        mode = self._global_mode()
        if mode in ("stop", "manual"):
            self._raise_global(
                GlobalError("LOGIC", "ERROR", f"operationMode is {mode} but deal exists")
            )
            return
        self._decide_master_side()
        if any(d.master_side_active for d in self.deals.values()) and not any(
            d.master for d in self.deals.values()
        ):
            self._raise_global(GlobalError("LOGIC", "ERROR", "no master deal found"))
            return
        for deal_id in self._sorted_ids():
            if self.stop_pass:
                break
            if deal_id in self.deals:
                await self._step(deal_id)
        both = {d.deal_id for d in self.deals.values() if d.both_sides_active}
        if both != self._both_active:
            self._both_active = both
            if self.policy.grid_master.grid_voltage_optimization.enabled:
                await self._optimize_grid_voltage()

    def _decide_master_side(self) -> None:
        self.master_side = self.policy.grid_master.voltage_reference_side
        for deal in self.deals.values():
            if deal.master and deal.master_side_active:
                other = unit_of(deal, _other_side(self.master_side))
                snap = self.data.get(other)
                if snap is not None and snap.is_voltage_reference:
                    self.master_side = _other_side(self.master_side)
                return

    def _sorted_ids(self) -> list[str]:
        deals = list(self.deals.values())
        if len(deals) <= 1:
            return [d.deal_id for d in deals]
        large = self.large_capacity_units

        def to_front(pred: Callable[[Deal], bool]) -> None:
            deals.sort(key=lambda d: 0 if pred(d) else 1)  # stable

        to_front(lambda d: not d.master and self.slave_unit(d) in large)
        to_front(lambda d: not d.master and self.master_unit(d) in large)
        ramping = [d for d in deals if d.master and d.activated and not d.started]
        if ramping:
            to_front(lambda d: d.master)
        else:
            deals.sort(key=lambda d: 1 if d.master else 0)
        to_front(lambda d: bool(d.need_to_stop_reasons))
        return [d.deal_id for d in deals]

    async def _step(self, deal_id: str) -> None:
        deal = self.deals[deal_id]
        try:
            if deal.deactivated:
                await self._disposition(deal)
            elif deal.stopped:
                await self._deactivation(deal)
            elif deal.need_to_stop_reasons:
                await self._abortion(deal, "; ".join(deal.need_to_stop_reasons))
            elif deal.started:
                await self._cumulation(deal)
            elif deal.activated and deal.master and deal.ramped_up:
                await self._authorization(deal)
            elif deal.activated and deal.master:
                await self._ramping_up(deal)
            elif deal.activated:
                await self._compensation(deal)
            else:
                await self._activation(deal)
        except GlobalError as e:
            self._raise_global(e)
            self.stop_pass = True
            await self._abort_safely(deal_id, str(e))
        except (DealFailure, UnitUnreachable, BusError) as e:
            await self._abort_safely(deal_id, str(e))

    async def _abort_safely(self, deal_id: str, reason: str) -> None:
        deal = self.deals.get(deal_id)
        if deal is None:
            return
        try:
            await self._abortion(deal, reason)
        except GlobalError as e:
            self._raise_global(e)
            self.stop_pass = True
        except (DealFailure, UnitUnreachable, BusError) as e:
            for unit in (deal.charge_unit_id, deal.discharge_unit_id):
                await self._unit_failed(unit, f"deal {deal_id} : deal abortion failed: {e}")

    async def _unit_failed(self, unit_id: str, message: str) -> None:
        """HARDWARE/LOCAL/ERROR on behalf of `unit_id`: its own handling stops it."""
        if self._report_unit_error is not None:
            await self._report_unit_error(unit_id, message)
        else:
            lifecycle.error_raised(ErrorRecord(unit_id, "HARDWARE", "LOCAL", "ERROR", message))

    # ---- helpers -------------------------------------------------------------------------

    def master_unit(self, deal: Deal) -> str:
        return unit_of(deal, self.master_side)

    def slave_unit(self, deal: Deal) -> str:
        return unit_of(deal, _other_side(self.master_side))

    def reference_unit(self, deal: Deal) -> str:
        return unit_of(deal, self.policy.grid_master.deal.reference_side)

    def others(self, deal: Deal) -> list[Deal]:
        return [d for d in self.deals.values() if d.deal_id != deal.deal_id]

    def voltage_reference_unit(self) -> str | None:
        for unit_id, snap in self.data.items():
            if snap.is_voltage_reference:
                return unit_id
        return None

    async def fetch(self, unit_id: str) -> UnitSnapshot:
        snap = await self.link.data(unit_id)
        self.data[unit_id] = snap
        return snap

    def now_of(self, deal: Deal) -> str:
        """The reference unit's time (the deal's clock)."""
        snap = self.data.get(self.reference_unit(deal))
        if snap is not None and snap.time:
            return snap.time
        return next((s.time for s in self.data.values() if s.time), NOT_APPLICABLE)

    def _sum_other_compensated(
        self, unit_id: str, deal: Deal, predicate: Callable[[Deal], bool]
    ) -> float:
        return sum(
            d.compensated_current_of(unit_id)
            for d in self.others(deal)
            if d.involves(unit_id) and predicate(d)
        )

    def _both_active_others(self, unit_id: str, deal: Deal) -> float:
        return self._sum_other_compensated(unit_id, deal, lambda d: d.both_sides_active)

    def _has_other(self, unit_id: str, deal: Deal, predicate: Callable[[Deal], bool]) -> bool:
        return any(d.involves(unit_id) and predicate(d) for d in self.others(deal))

    def _hook(self, deal: Deal, name: str) -> None:
        """Test hooks of section 5.10."""
        dcdc = (deal.test_feature or {}).get("dcdc") or {}
        if dcdc.get(name) is True:
            raise DealFailure(f"TEST FEATURE : {name}")

    async def _save(self, deal: Deal) -> None:
        # one JSON form for the registry and the deal log (each copies what it is given)
        value = deal.to_json()
        revision = self.revisions.get(deal.deal_id)
        try:
            if revision is None:
                raise RevisionMismatch(deal.deal_id)
            self.revisions[deal.deal_id] = await self.registry.update_deal_json(
                deal.deal_id, value, revision
            )
        except RevisionMismatch:
            raise GlobalError(
                "LOGIC", "ERROR", f"deal {deal.deal_id} changed by somebody else"
            ) from None
        await self._publish_log(value)

    async def _reload(self, deal: Deal) -> Deal:
        stored = await self.registry.deal(deal.deal_id)
        if stored is None:
            raise DealFailure(f"deal {deal.deal_id} disappeared")
        fresh = stored.deal
        fresh.need_to_stop_reasons = deal.need_to_stop_reasons
        self.deals[deal.deal_id] = fresh
        self.revisions[deal.deal_id] = stored.revision
        return fresh

    # ---- activation ----------------------------------------------------------------------

    def _admission_failure(self, deal: Deal) -> str | None:
        active = [_flow(d) for d in self.others(deal) if d.master_side_active]
        limit = self.policy.grid_master.deal.reset_limit
        failure = admission_failure(self.policy.safety, limit, len(deal.reset), _flow(deal), active)
        if failure is not None and len(deal.reset) >= limit:
            log.warning("(LOGIC:GLOBAL:WARN) deal %s: deal reset limit exceeded", deal.deal_id)
        return failure

    def _flip_allowed(self, deal: Deal) -> bool:
        return not any(d.transitional for d in self.others(deal))

    async def _activation(self, deal: Deal) -> None:
        deal = await self._reload(deal)
        failure = self._admission_failure(deal)
        if failure is not None:
            await self._dispose_with_abort(deal, failure)
            return
        p = self.policy
        others = self.others(deal)
        first = not any(d.master_side_active for d in others)
        master, slave = self.master_unit(deal), self.slave_unit(deal)
        vr_unit = None if first else self.voltage_reference_unit()
        large = self.large_capacity_units
        move: _Handover | None = None
        previous_master: Deal | None = None
        if first:
            if large and master not in large and slave in large and self._flip_allowed(deal):
                self.master_side = _other_side(self.master_side)
                master, slave = slave, master
            snap = await self.fetch(master)
            vmin = p.operation_grid_voltage_v_range.min
            if snap.vg > vmin + 2 * p.grid_voltage_separation_v:
                raise GlobalError(
                    "HARDWARE",
                    "ERROR",
                    f"{master} : invalid grid voltage {snap.vg} V before the first deal "
                    f"(must be <= {vmin + 2 * p.grid_voltage_separation_v} V)",
                )
            if vmin - p.grid_uvlo_mask_v <= snap.vg <= vmin + p.grid_uvlo_mask_v:
                self.master_side = self.policy.grid_master.voltage_reference_side
                return  # inside the converter's UVLO band: try again next pass
        else:
            if not any(d.started and not d.deactivated for d in others):
                return  # the first deal has not finished starting yet
            if vr_unit is None:
                raise DealFailure("no voltage reference found while other deals run")
            if large and vr_unit not in large:
                if master in large:
                    previous_master = next((d for d in others if d.master), None)
                elif slave in large and self._flip_allowed(deal):
                    self.master_side = _other_side(self.master_side)
                    master, slave = slave, master
                    previous_master = next((d for d in others if d.master), None)
                if previous_master is not None and master != vr_unit:
                    old = await self.fetch(vr_unit)
                    direction = self._old_vr_direction(vr_unit, deal)
                    voltage = (
                        old.dvg if p.grid_master.voltage_reference_take_over_dvg == "theoretical"
                        else None
                    )
                    move = _Handover(vr_unit, master, direction, abs(old.ig), voltage)
                else:
                    previous_master = None
        self._hook(deal, "failBeforeActivate")
        master_snap = await self.fetch(master)
        current = deal.deal_grid_current_a
        sign = -1.0 if master == deal.discharge_unit_id else 1.0
        if first or (move is not None and master_snap.is_waiting):
            target = sign * current
        else:
            holder = master if move is not None else vr_unit
            assert holder is not None
            holder_ig = (await self.fetch(holder)).ig
            target = holder_ig + sign * current if holder == master else holder_ig
        deal.compensation_target_voltage_reference_grid_current_a = target
        # converter commands to the master side
        if move is not None:
            await self._hand_over(move)
        elif first:
            if not master_snap.is_voltage_reference:
                await self.link.command(master, "VOLTAGE_REFERENCE")
        elif master_snap.is_voltage_reference:
            pass  # the VR absorbs this deal's current too
        elif master_snap.is_waiting:
            mode = "DISCHARGE" if master == deal.discharge_unit_id else "CHARGE"
            await self.link.command(master, mode, gridCurrentA=current)
        else:
            total = self._both_active_others(master, deal) + current
            await self.link.command(master, "current", gridCurrentA=total)
        self._hook(deal, "failAfterActivate")
        await self.fetch(self.reference_unit(deal))
        deal.activate_date_time = self.now_of(deal)
        if first or move is not None:
            deal.is_master = True
            if previous_master is not None:
                previous_master = await self._reload(previous_master)
                previous_master.is_master = None
                await self._save(previous_master)
        await self._save(deal)
        lifecycle.deal_activated(deal, master)
        if first:
            await self._ramping_up(deal)
        else:
            await self._compensation(deal)

    def _old_vr_direction(self, vr_unit: str, deal: Deal) -> str:
        """The CC mode the old VR continues in: as in its other deals (active slave first)."""
        mine = [d for d in self.others(deal) if d.involves(vr_unit) and d.master_side_active]
        mine.sort(key=lambda d: 0 if d.both_sides_active else 1)
        for d in mine:
            return "DISCHARGE" if d.discharge_unit_id == vr_unit else "CHARGE"
        return "CHARGE"

    async def _hand_over(self, move: _Handover) -> None:
        """Section 6.5: move the voltage reference from A to B in four commands.

        The first step may fail harmlessly (nothing changed yet: the caller aborts the deal);
        a failure after B entered CV mode is a LOGIC/GLOBAL/ERROR, so the scram that follows
        leaves no two converters holding the grid."""
        await self.link.command(move.old_vr, "voltageReferenceWillHandOver")
        step = "voltageReferenceWillTakeOver"
        try:
            # the new reference moves the voltage reference claim from the old one
            await self.link.command(
                move.new_vr,
                "voltageReferenceWillTakeOver",
                gridVoltageV=move.voltage_v,
                voltageReferenceUnitId=move.old_vr,
            )
            step = "voltageReferenceDidHandOver"
            if move.old_vr_mode is None:
                await self.link.command(move.old_vr, "voltageReferenceDidHandOver")
            else:
                await self.link.command(
                    move.old_vr,
                    "voltageReferenceDidHandOver",
                    mode=move.old_vr_mode,
                    gridCurrentA=move.old_vr_current_a,
                )
            step = "voltageReferenceDidTakeOver"
            await self.link.command(move.new_vr, "voltageReferenceDidTakeOver")
        except (UnitUnreachable, BusError) as e:
            raise GlobalError(
                "LOGIC",
                "ERROR",
                f"voltage reference hand-over {move.old_vr} -> {move.new_vr} failed at {step}: "
                f"{e}",
            ) from None
        for unit in (move.old_vr, move.new_vr):
            await self.fetch(unit)

    # ---- ramp-up and authorisation --------------------------------------------------------

    async def _check_vr_and_wait(self, deal: Deal) -> tuple[UnitSnapshot, UnitSnapshot]:
        master = await self.fetch(self.master_unit(deal))
        slave = await self.fetch(self.slave_unit(deal))
        if not master.is_voltage_reference or not slave.is_waiting:
            raise DealFailure(
                f"{master.unit_id} must be the voltage reference and {slave.unit_id} waiting "
                f"(modes {master.mode} / {slave.mode})"
            )
        return master, slave

    async def _ramping_up(self, deal: Deal) -> None:
        master, _ = await self._check_vr_and_wait(deal)
        if master.vg >= master.dvg - self.policy.grid_voltage_allowance_v:
            await self.fetch(self.reference_unit(deal))
            deal.ramp_up_date_time = self.now_of(deal)
            await self._save(deal)
            lifecycle.deal_ramped_up(deal, master.unit_id, master.vg)
            await self._authorization(deal)
            return
        elapsed = _seconds_between(deal.activate_date_time, self.now_of(deal))
        timeout = self.policy.controller.dcdc.voltage_reference.ramp_up.first.timeout_msec / 1000
        if elapsed is not None and elapsed >= timeout:
            raise GlobalError(
                "HARDWARE",
                "ERROR",
                f"{master.unit_id} : ramping up timed out (vg {master.vg} V after {elapsed:.0f} s)",
            )

    async def _authorization(self, deal: Deal) -> None:
        master, _ = await self._check_vr_and_wait(deal)
        try:
            self._hook(deal, "failBeforeAuthorize")
            await self.link.command(master.unit_id, "voltageReferenceAuthorization")
            self._hook(deal, "failAfterAuthorize")
        except (DealFailure, UnitUnreachable) as e:
            cause = str(e).removeprefix(f"{master.unit_id} : ")
            await self.link.command(master.unit_id, "WAIT")
            reason = f"{master.unit_id} : {cause}"
            deal.record_reset(self.now_of(deal), reason)
            await self._save(deal)
            lifecycle.deal_reset(deal, reason)
            return
        await self._compensation(deal)

    # ---- compensation --------------------------------------------------------------------

    async def _compensation(self, deal: Deal) -> None:
        master = self.master_unit(deal)
        slave = self.slave_unit(deal)
        master_snap = await self.fetch(master)
        if master_snap.is_waiting:
            raise DealFailure(f"{master} : master side is waiting")
        current = deal.deal_grid_current_a
        if not deal.warmed_up:
            self._hook(deal, "failBeforeWarmUp")
            slave_snap = await self.fetch(slave)
            if slave_snap.is_waiting:
                mode = "CHARGE" if master == deal.discharge_unit_id else "DISCHARGE"
                await self.link.command(slave, mode, gridCurrentA=current)
            elif slave_snap.is_voltage_reference:
                raise DealFailure(f"{slave} : slave side is the voltage reference")
            else:
                total = self._both_active_others(slave, deal) + current
                await self.link.command(slave, "current", gridCurrentA=total)
            self._hook(deal, "failAfterWarmUp")
            await self.fetch(self.reference_unit(deal))
            deal.warm_up_date_time = self.now_of(deal)
            await self._save(deal)
        self._hook(deal, "failBeforeCompensate")
        await self._compensate_current(deal)
        self._hook(deal, "failAfterCompensate")
        # the currents attributable to this deal after compensation
        for unit in (deal.charge_unit_id, deal.discharge_unit_id):
            snap = await self.fetch(unit)
            sign = 1.0 if unit == deal.charge_unit_id else -1.0
            others = sign * self._both_active_others(unit, deal)
            compensated = snap.ig - others
            if unit == deal.charge_unit_id:
                deal.charge_unit_compensated_grid_current_a = compensated
            else:
                deal.discharge_unit_compensated_grid_current_a = compensated
        now = self.now_of(deal)
        deal.start_date_time = now
        deal.cumulate_date_time = now
        deal.cumulate_amount_wh = 0.0
        deal.charge_unit_cumulate_amount_wh = 0.0
        deal.discharge_unit_cumulate_amount_wh = 0.0
        self._sample_power(deal)
        await self._save(deal)
        lifecycle.deal_started(deal)

    async def _compensate_current(self, deal: Deal) -> None:
        """Section 6.4: trim the non-reference CC unit until the VR carries its target."""
        reference_side = self.policy.grid_master.deal.reference_side
        master = self.master_unit(deal)
        master_snap = self.data[master]
        if master_snap.is_voltage_reference:
            if self.master_side != reference_side:
                return  # the CC side's set-point is the reference: nothing to trim
            vr_unit = master
        else:
            found = self.voltage_reference_unit()
            if found is None:
                raise DealFailure("current compensation: no voltage reference found")
            vr_unit = found
        if reference_side == DISCHARGE_SIDE:
            adjuster, plus = deal.charge_unit_id, True
        else:
            adjuster, plus = deal.discharge_unit_id, False
        target = deal.compensation_target_voltage_reference_grid_current_a
        if target is None:
            raise DealFailure("current compensation: no target")
        cc = self.policy.grid_master.current_compensation
        trials = cc.limit_of_trials
        for trial in range(trials + 1):
            vr = await self.fetch(vr_unit)
            drift = vr.ig - target
            if abs(drift) <= cc.drift_allowance_a:
                return
            if trial == trials:
                break
            adjusted = await self.fetch(adjuster)
            dig = adjusted.dig + drift if plus else adjusted.dig - drift
            await self.link.command(adjuster, "current", gridCurrentA=max(0.0, dig))
        raise DealFailure(
            f"{adjuster} : current compensation failed (VR {vr_unit} ig {vr.ig:.3f} A, "
            f"target {target:.3f} A)"
        )

    # ---- cumulation ----------------------------------------------------------------------

    def _deal_power(self, deal: Deal, unit_id: str) -> float:
        """Battery power of `unit_id` attributable to `deal` (W, positive = delivered)."""
        snap = self.data[unit_id]
        wb = snap.wb if unit_id == deal.charge_unit_id else -snap.wb
        mine = deal.compensated_current_of(unit_id)
        others = self._sum_other_compensated(
            unit_id, deal, lambda d: d.started and not d.stopped and d.master_side_active
        )
        if others > 0 and mine + others <= 0:
            raise GlobalError("LOGIC", "ERROR", f"{unit_id} : zero compensated current")
        return attributed_power(wb, mine, others)

    def _sample_power(self, deal: Deal) -> None:
        reference = self.data[self.reference_unit(deal)]
        deal.cumulate_timestamp = reference.timestamp
        deal.cumulate_date_time = reference.time or deal.cumulate_date_time
        deal.charge_unit_power_w = self._deal_power(deal, deal.charge_unit_id)
        deal.discharge_unit_power_w = self._deal_power(deal, deal.discharge_unit_id)

    def _integrate(self, deal: Deal) -> float:
        """Add the energy since the last sample (trapezoid rule); return the reference power."""
        reference_unit = self.reference_unit(deal)
        reference = self.data[reference_unit]
        dt = reference.timestamp - (deal.cumulate_timestamp or reference.timestamp)
        charge_p = self._deal_power(deal, deal.charge_unit_id)
        discharge_p = self._deal_power(deal, deal.discharge_unit_id)
        if dt > 0:
            charge_wh = (charge_p + (deal.charge_unit_power_w or charge_p)) / 2 * dt / 3600
            discharge_wh = (
                (discharge_p + (deal.discharge_unit_power_w or discharge_p)) / 2 * dt / 3600
            )
            deal.charge_unit_cumulate_amount_wh = (
                deal.charge_unit_cumulate_amount_wh or 0.0
            ) + charge_wh
            deal.discharge_unit_cumulate_amount_wh = (
                deal.discharge_unit_cumulate_amount_wh or 0.0
            ) + discharge_wh
            deal.cumulate_amount_wh = (
                deal.charge_unit_cumulate_amount_wh
                if reference_unit == deal.charge_unit_id
                else deal.discharge_unit_cumulate_amount_wh
            )
        deal.cumulate_timestamp = reference.timestamp
        deal.cumulate_date_time = reference.time or deal.cumulate_date_time
        deal.charge_unit_power_w = charge_p
        deal.discharge_unit_power_w = discharge_p
        return charge_p if reference_unit == deal.charge_unit_id else discharge_p

    async def _cumulation(self, deal: Deal) -> None:
        deal = await self._reload(deal)
        charge = await self.fetch(deal.charge_unit_id)
        discharge = await self.fetch(deal.discharge_unit_id)
        for snap in (charge, discharge):
            if snap.is_waiting:
                raise DealFailure(f"{snap.unit_id} : waiting during a started deal")
        power = self._integrate(deal)
        amount = deal.deal_amount_wh
        counted = deal.cumulate_amount_wh or 0.0
        remaining_s = seconds_to_amount(amount, counted, power)
        if amount_reached(amount, counted, remaining_s):
            self._hook(deal, "failBeforeStop")
            await self._stop_slave(deal)
            self._hook(deal, "failAfterStop")
            # count what flowed while the slave side came down
            await self.fetch(self.reference_unit(deal))
            await self.fetch(deal.charge_unit_id if self.reference_unit(deal) !=
                             deal.charge_unit_id else deal.discharge_unit_id)
            self._integrate(deal)
            deal.stop_date_time = self.now_of(deal)
            await self._save(deal)
            lifecycle.deal_stopped(deal)
            await self._deactivation(deal)
            return
        reason = force_stop_reason(
            self.policy.grid_master.deal.force_stop_condition,
            deal.discharge_unit_id, discharge.rsoc, deal.charge_unit_id, charge.rsoc,
        )
        if reason is not None:
            await self._save(deal)
            raise DealFailure(reason)
        await self._save(deal)
        if remaining_s is not None:
            self._wake(remaining_s)

    def _wake(self, seconds: float) -> None:
        if self.wake_in is None or seconds < self.wake_in:
            self.wake_in = seconds

    async def _stop_slave(self, deal: Deal) -> None:
        """Release this deal's current on the slave side (section 5.7 step 4)."""
        slave = self.slave_unit(deal)
        snap = await self.fetch(slave)
        if snap.is_voltage_reference:
            return  # never touch the voltage reference from here
        if self._has_other(slave, deal, lambda d: d.both_sides_active):
            total = self._both_active_others(slave, deal)
            await self.link.command(slave, "current", gridCurrentA=total)
        elif not snap.is_waiting:
            await self.link.command(slave, "WAIT")

    # ---- the end of a deal ---------------------------------------------------------------

    async def _abortion(self, deal: Deal, reason: str) -> None:
        deal = await self._reload(deal)
        never_activated = not deal.activated or deal.activate_date_time == NOT_APPLICABLE
        if not never_activated:
            try:
                await self._stop_slave(deal)
            except (UnitUnreachable, BusError) as e:
                await self._unit_failed(self.slave_unit(deal), f"deal {deal.deal_id} : {e}")
        now = self.now_of(deal)
        stopping = deal.started and not deal.stopped
        if stopping:
            deal.stop_date_time = now
        deal.record_abort(now, reason)
        await self._save(deal)
        if stopping:
            lifecycle.deal_stopped(deal)
        lifecycle.deal_aborted(deal, reason)
        if deal.activate_date_time == NOT_APPLICABLE:
            await self._disposition(deal)
        else:
            await self._deactivation(deal, tolerant=True)

    async def _dispose_with_abort(self, deal: Deal, reason: str) -> None:
        deal.record_abort(self.now_of(deal), reason)
        await self._save(deal)
        lifecycle.deal_aborted(deal, reason)
        await self._disposition(deal)

    def _choose_new_master(self, deal: Deal, vr_unit: str | None) -> tuple[Deal, str] | None:
        """Section 5.8: the next master deal and the unit that must hold the VR for it."""
        candidates = [d for d in self.others(deal) if d.master_side_active]
        if not candidates:
            return None
        newest = sorted(candidates, key=lambda d: d.activate_date_time or "", reverse=True)
        for d in newest:
            if self.master_unit(d) == vr_unit:
                return d, vr_unit
        large = self.large_capacity_units
        if large:
            for d in newest:
                if self.master_unit(d) in large:
                    return d, self.master_unit(d)
                if self.slave_unit(d) in large and self._flip_allowed(deal):
                    return d, self.slave_unit(d)
        chosen = newest[0]
        policy_side = self.policy.grid_master.voltage_reference_side
        if self.master_side != policy_side and self._flip_allowed(deal):
            return chosen, unit_of(chosen, policy_side)
        return chosen, self.master_unit(chosen)

    async def _deactivation(self, deal: Deal, tolerant: bool = False) -> None:
        """Release the master side, then record and dispose. `tolerant` (from Abortion): a
        master-side unit that cannot be reached is reported and skipped."""
        self._hook(deal, "failBeforeDeactivate")
        master = self.master_unit(deal)
        lost: str | None = None
        try:
            await self._release_master_side(deal, master)
        except (UnitUnreachable, BusError) as e:
            if not tolerant:
                raise
            await self._unit_failed(master, f"deal {deal.deal_id} : {e}")
            if deal.master and any(d.master_side_active for d in self.others(deal)):
                lost = master
        self._hook(deal, "failAfterDeactivate")
        now = self.now_of(deal)
        if not deal.started:
            deal.start_date_time = NOT_APPLICABLE
            deal.stop_date_time = NOT_APPLICABLE
        deal.deactivate_date_time = now
        deal.is_master = None
        await self._save(deal)
        lifecycle.deal_deactivated(deal)
        await self._disposition(deal)
        if lost is not None:
            raise GlobalError(
                "LOGIC", "ERROR", f"{lost} : voltage reference lost while other deals run"
            )

    async def _release_master_side(self, deal: Deal, master: str) -> None:
        snap = await self.fetch(master)
        if not snap.is_waiting:
            if deal.master:
                await self._release_master_deal(deal, master, snap)
            elif snap.is_voltage_reference:
                if not self._has_other(master, deal, lambda d: d.master_side_active):
                    raise GlobalError(
                        "LOGIC", "ERROR", f"{master} : voltage reference without a master deal"
                    )
            elif self._has_other(master, deal, lambda d: d.master_side_active):
                total = self._sum_other_compensated(
                    master, deal, lambda d: d.master_side_active
                )
                await self.link.command(master, "current", gridCurrentA=total)
            else:
                await self.link.command(master, "WAIT")

    async def _release_master_deal(self, deal: Deal, master: str, snap: UnitSnapshot) -> None:
        vr_unit = master if snap.is_voltage_reference else self.voltage_reference_unit()
        choice = self._choose_new_master(deal, vr_unit)
        if choice is None:
            await self.link.command(master, "WAIT")  # the grid goes dark
            return
        new_master, new_vr = choice
        if new_vr != vr_unit:
            if vr_unit is None:
                raise DealFailure("no voltage reference to hand over")
            if self._has_other(vr_unit, deal, lambda d: d.master_side_active):
                raise GlobalError(
                    "LOGIC",
                    "ERROR",
                    f"{vr_unit} : cannot hand over the voltage reference, it has other deals",
                )
            old = self.data[vr_unit]
            voltage = (
                old.dvg
                if self.policy.grid_master.voltage_reference_take_over_dvg == "theoretical"
                else None
            )
            await self._hand_over(_Handover(vr_unit, new_vr, None, 0.0, voltage))
            if new_vr != self.master_unit(new_master):
                self.master_side = _other_side(self.master_side)
        new_master = await self._reload(new_master)
        new_master.is_master = True
        await self._save(new_master)

    async def _disposition(self, deal: Deal) -> None:
        await self._dispose(deal.deal_id)
        self.deals.pop(deal.deal_id, None)
        self.revisions.pop(deal.deal_id, None)

    # ---- scram and optimisation ----------------------------------------------------------

    async def _optimize_grid_voltage(self) -> None:
        """Section 6.6: move the VR's voltage to the average efficient voltage of the deals."""
        p = self.policy
        values = []
        for d in self.deals.values():
            if not d.master_side_active:
                continue
            for v in (
                d.discharge_unit_efficient_grid_voltage_v,
                d.charge_unit_efficient_grid_voltage_v,
            ):
                if v is not None:
                    values.append(v)
        if not values:
            return
        r = p.operation_grid_voltage_v_range
        sep, drop = p.grid_voltage_separation_v, p.grid_voltage_drop_allowance_v
        lower = max(r.min + drop, r.min + 3 * sep)
        upper = min(r.max - drop, r.max - sep)
        voltage = min(max(sum(values) / len(values), lower), upper)
        vr_unit = self.voltage_reference_unit()
        if vr_unit is None:
            raise GlobalError("LOGIC", "ERROR", "grid voltage optimisation: no voltage reference")
        await self.link.command(vr_unit, "voltage", gridVoltageV=voltage)


def mode_name(mode: ConverterMode | None) -> str:
    return "unknown" if mode is None else mode.name

"""The key figures of a run, as plain JSON-able numbers (what `summary.json` holds).

Definitions (community = all units together, energies in Wh over the run):

- self-sufficiency = 1 - bought / load: the share of the households' consumption met without
  the utility;
- energy shared = the energy the deals counted as delivered (`cumulateAmountWh`);
- losses: *converter* = conversion losses that grow with the power moved; *control overhead*
  = the converters' no-load loss while they switch for sharing (voltage reference held up,
  CC converters on); *line* = I²R in the DC grid; *standby* = converter standby, drawn with
  or without sharing (reported apart, included in the balance);
- balance: energy in (PV + bought) = energy out (load + curtailed + spilled) + losses
  (converters, lines) + storage change; `error_wh` is what is left over (rounding).

Nothing here depends on the wall clock: the same run gives the same figures, bit for bit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from apis.hardware.driver import APIS_TIME_FORMAT
from apis.sim.plan import PlanResult
from apis.sim.run import RunResult
from apis.unit.deal import NOT_APPLICABLE, Deal


def deal_outcome(deal: Deal) -> str:
    """``completed``, ``aborted``, ``scram`` or ``running`` (not over when the run ended)."""
    if deal.scram_date_time is not None:
        return "scram"
    if deal.abort_date_time is not None:
        return "aborted"
    if deal.deactivate_date_time not in (None, NOT_APPLICABLE):
        return "completed"
    return "running"


def deal_delivered_wh(deal: Deal) -> float:
    return float(deal.cumulate_amount_wh or 0.0)


def deal_loss_wh(deal: Deal) -> float | None:
    """What the discharging battery gave minus what the charging battery got (both ends)."""
    given, taken = deal.discharge_unit_cumulate_amount_wh, deal.charge_unit_cumulate_amount_wh
    if given is None or taken is None:
        return None
    return float(given - taken)


def deal_overshoot_wh(deal: Deal) -> float | None:
    """Delivered beyond the agreed amount, for completed deals."""
    if deal_outcome(deal) != "completed" or deal.cumulate_amount_wh is None:
        return None
    return float(deal.cumulate_amount_wh - deal.deal_amount_wh)


def parse_apis_time(text: str | None) -> datetime | None:
    if text is None or text == NOT_APPLICABLE:
        return None
    try:
        return datetime.strptime(text, APIS_TIME_FORMAT)
    except ValueError:
        return None


def deal_day(deal: Deal) -> str | None:
    """The date a deal's energy is booked on: its stop, else its last count."""
    at = parse_apis_time(deal.stop_date_time) or parse_apis_time(deal.cumulate_date_time)
    return at.date().isoformat() if at is not None else None


def _f(value: float) -> float:
    """A plain float (JSON): numpy scalars out, -0.0 as 0.0."""
    return float(value) + 0.0


def _difference(value: float, scale: float) -> float:
    """A difference of large sums: rounding noise (relative to `scale`) shown as 0."""
    return 0.0 if abs(value) <= 1e-9 * max(scale, 1.0) else _f(value)


AnyResult = RunResult | PlanResult  # a faithful run or a planning run


def community_figures(result: AnyResult) -> dict[str, Any]:
    c = {name: float(np.sum(value)) for name, value in result.end_counters.items()}
    start = float(np.sum(result.start_battery_wh))
    if isinstance(result, PlanResult):
        end = float(np.sum(result.end_battery_wh))
    else:
        end = float(np.sum(result.samples.battery_wh[-1])) if len(result.samples) else start
    load = c["load_wh"]
    return {
        "pv_wh": _f(c["pv_wh"]),
        "pv_used_wh": _f(c["pv_wh"] - c["curtailed_wh"]),
        "load_wh": _f(load),
        "bought_wh": _f(c["bought_wh"]),
        "curtailed_wh": _f(c["curtailed_wh"]),
        "spilled_wh": _f(c["spilled_wh"]),
        "battery_start_wh": _f(start),
        "battery_end_wh": _f(end),
        "storage_change_wh": _f(end - start),
        "self_sufficiency": _f(1.0 - c["bought_wh"] / load) if load > 0 else 1.0,
        "dc_grid_in_wh": _f(c["grid_in_wh"]),
        "dc_grid_out_wh": _f(c["grid_out_wh"]),
    }


def loss_figures(result: AnyResult) -> dict[str, float]:
    total_converter = float(np.sum(result.end_counters["converter_loss_wh"]))
    standby = result.standby_loss_w * len(result.unit_ids) * result.simulated_s / 3600.0
    control = result.active_loss_w * float(np.sum(result.switching_s)) / 3600.0
    conversion = _difference(total_converter - standby - control, total_converter)
    line = result.line_loss_wh
    return {
        "converter_wh": _f(conversion),
        "line_wh": _f(line),
        "control_overhead_wh": _f(control),
        "sharing_total_wh": _f(conversion + line + control),
        "standby_wh": _f(standby),
        "total_wh": _f(total_converter + line),
    }


def deal_figures(deals: list[Deal]) -> dict[str, Any]:
    outcomes = [deal_outcome(d) for d in deals]
    overshoots = [o for d in deals if (o := deal_overshoot_wh(d)) is not None]
    relative = [
        o / d.deal_amount_wh
        for d in deals
        if (o := deal_overshoot_wh(d)) is not None and d.deal_amount_wh
    ]
    return {
        "made": len(deals),
        "completed": outcomes.count("completed"),
        "aborted": outcomes.count("aborted") + outcomes.count("scram"),
        "scram": outcomes.count("scram"),
        "running_at_end": outcomes.count("running"),
        "energy_shared_wh": _f(sum(deal_delivered_wh(d) for d in deals)),
        "agreed_wh": _f(sum(float(d.deal_amount_wh) for d in deals)),
        "overshoot_mean_wh": _f(float(np.mean(overshoots))) if overshoots else 0.0,
        "overshoot_max_wh": _f(float(np.max(overshoots))) if overshoots else 0.0,
        "overshoot_mean_pct": _f(100.0 * float(np.mean(relative))) if relative else 0.0,
    }


def shared_per_day(result: AnyResult) -> dict[str, float]:
    """Energy delivered by deals, per calendar day of the run (every day listed)."""
    if isinstance(result, PlanResult):
        return result.tally.shared_per_day(result.simulated_s)
    start = result.settings.start.date()
    days = {
        (start.toordinal() + k): 0.0
        for k in range(int(np.ceil(result.simulated_s / 86400.0 - 1e-9)) or 1)
    }
    out = {datetime.fromordinal(k).date().isoformat(): v for k, v in days.items()}
    for deal in result.deals:
        day = deal_day(deal)
        if day is not None:
            out[day] = out.get(day, 0.0) + deal_delivered_wh(deal)
    return {k: _f(v) for k, v in sorted(out.items())}


def balance(result: AnyResult) -> dict[str, float]:
    com = community_figures(result)
    losses = loss_figures(result)
    energy_in = com["pv_wh"] + com["bought_wh"]
    energy_out = com["load_wh"] + com["curtailed_wh"] + com["spilled_wh"]
    return {
        "energy_in_wh": _f(energy_in),
        "energy_out_wh": _f(energy_out),
        "losses_wh": losses["total_wh"],
        "storage_change_wh": com["storage_change_wh"],
        "error_wh": _f(energy_in - energy_out - losses["total_wh"] - com["storage_change_wh"]),
    }


def per_unit(result: AnyResult) -> list[dict[str, Any]]:
    c = result.end_counters
    roles: dict[str, dict[str, int]] = {u: {"charge": 0, "discharge": 0} for u in result.unit_ids}
    if isinstance(result, PlanResult):
        for i, unit in enumerate(result.unit_ids):
            roles[unit] = {"charge": result.tally.charging[i],
                           "discharge": result.tally.discharging[i]}
    else:
        for deal in result.deals:
            if deal.charge_unit_id in roles:
                roles[deal.charge_unit_id]["charge"] += 1
            if deal.discharge_unit_id in roles:
                roles[deal.discharge_unit_id]["discharge"] += 1
    rows = []
    for i, unit in enumerate(result.unit_ids):
        load = float(c["load_wh"][i])
        bought = float(c["bought_wh"][i])
        rows.append({
            "unit": unit,
            "capacity_wh": _f(result.capacity_wh[i]),
            "pv_wh": _f(c["pv_wh"][i]),
            "load_wh": _f(load),
            "bought_wh": _f(bought),
            "curtailed_wh": _f(c["curtailed_wh"][i]),
            "dc_grid_in_wh": _f(c["grid_in_wh"][i]),
            "dc_grid_out_wh": _f(c["grid_out_wh"][i]),
            "converter_loss_wh": _f(c["converter_loss_wh"][i]),
            "self_sufficiency": _f(1.0 - bought / load) if load > 0 else 1.0,
            "deals_charging": roles[unit]["charge"],
            "deals_discharging": roles[unit]["discharge"],
        })
    return rows


def conflict_figures(result: AnyResult) -> dict[str, Any]:
    """Times two voltage references stood on the grid at once (a hand-over overlaps them,
    both with droop, for an instant; anything long would be the error APIS prevents)."""
    spans = [end - start for start, end, _ in result.voltage_conflicts]
    return {
        "count": len(spans),
        "longest_s": _f(max(spans)) if spans else 0.0,
        "total_s": _f(sum(spans)),
    }


def settings_figures(result: AnyResult) -> dict[str, Any]:
    s = result.settings
    if s.config_dir is not None:
        source = f"directory {s.config_dir.name}"
    elif s.units is not None:
        source = f"generated ({s.units} units)"
    else:
        source = "default cluster"
    figures: dict[str, Any] = {
        "fidelity": s.fidelity,
        "community": source,
        "units": len(result.unit_ids),
        "days": s.days,
        "seed": s.seed,
        "start": s.start.isoformat(),
        "sharing": s.sharing,
        "overrides": {p: v for p, v in s.overrides},
        "sample_interval_s": s.sample_interval_s,
        "quiet_step_s": s.quiet_step_s,
    }
    if s.fidelity == "plan":
        figures["plan"] = s.plan.to_json()
    return figures


def deal_summary(result: AnyResult) -> dict[str, Any]:
    if isinstance(result, PlanResult):
        return result.tally.figures()
    return deal_figures(result.deals)


def summarize(result: AnyResult, baseline: AnyResult | None = None) -> dict[str, Any]:
    """The whole summary; with a baseline (sharing off), the comparison too."""
    out: dict[str, Any] = {
        "settings": settings_figures(result),
        "community": community_figures(result),
        "deals": deal_summary(result),
        "losses": loss_figures(result),
        "balance": balance(result),
        "shared_per_day_wh": shared_per_day(result),
        "voltage_conflicts": conflict_figures(result),
        "per_unit": per_unit(result),
    }
    if baseline is not None:
        base = community_figures(baseline)
        mine = out["community"]
        out["baseline"] = {
            "community": base,
            "losses": loss_figures(baseline),
            "balance": balance(baseline),
        }
        out["comparison"] = {
            "self_sufficiency_with_sharing": mine["self_sufficiency"],
            "self_sufficiency_without_sharing": base["self_sufficiency"],
            "self_sufficiency_gain": _f(mine["self_sufficiency"] - base["self_sufficiency"]),
            "bought_saved_wh": _f(base["bought_wh"] - mine["bought_wh"]),
            "curtailed_saved_wh": _f(base["curtailed_wh"] - mine["curtailed_wh"]),
        }
    return out

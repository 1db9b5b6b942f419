"""Rules across files: what each file may be on its own, but not together."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from apis.config.errors import Problem
from apis.config.scenario import Scenario

if TYPE_CHECKING:
    from apis.config.loader import Cluster, UnitFiles


def _name(cluster: Cluster, path: object) -> str:
    from pathlib import Path

    from apis.config.loader import display_name

    return display_name(Path(str(path)), cluster.root)


def canonical_policy(unit: UnitFiles) -> str:
    """The policy as canonical JSON: key order and defaults written out do not matter."""
    return json.dumps(unit.policy.to_json(), sort_keys=True, separators=(",", ":"))


def check_cluster(cluster: Cluster) -> tuple[list[Problem], list[Problem]]:
    """Return (errors, warnings) of the cross-file rules."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    policy = cluster.policy
    first = cluster.units[0]
    policy_name = _name(cluster, first.policy_path)

    # One unit ID, one config.
    seen: dict[str, str] = {}
    for u in cluster.units:
        name = _name(cluster, u.config_path)
        if u.unit_id in seen:
            errors.append(
                Problem(name, "unitId", f"= {u.unit_id!r} (already used by {seen[u.unit_id]})")
            )
        seen[u.unit_id] = name

    # Policy identical on all units.
    reference = canonical_policy(first)
    for u in cluster.units[1:]:
        if canonical_policy(u) != reference:
            errors.append(
                Problem(
                    _name(cluster, u.policy_path),
                    "",
                    f"differs from {policy_name} (the policy must be identical on all units)",
                )
            )

    # memberUnitIds holds every unit.
    for u in cluster.units:
        if u.unit_id not in policy.member_unit_ids:
            errors.append(
                Problem(
                    policy_name,
                    "memberUnitIds",
                    f"= {policy.member_unit_ids} (must contain unit {u.unit_id!r} of "
                    f"{_name(cluster, u.config_path)})",
                )
            )

    vrange = policy.operation_grid_voltage_v_range
    deal_current = policy.mediator.deal.grid_current_a
    for u in cluster.units:
        hw = u.hw_config
        hw_name = _name(cluster, u.hw_config_path)
        if deal_current > hw.grid_current_capacity_a:
            errors.append(
                Problem(
                    policy_name,
                    "mediator.deal.gridCurrentA",
                    f"= {deal_current:g} (must be <= gridCurrentCapacityA = "
                    f"{hw.grid_current_capacity_a:g} of {hw_name})",
                )
            )
        vg = hw.meter_ranges.vg
        for key, value in (("min", vrange.min), ("max", vrange.max)):
            if not (vg.min <= value <= vg.max):
                errors.append(
                    Problem(
                        policy_name,
                        f"operationGridVoltageVRange.{key}",
                        f"= {value:g} (must be within safety.range.dcdc.meter.vg "
                        f"{vg.min:g}..{vg.max:g} of {hw_name})",
                    )
                )
        ig = hw.meter_ranges.ig
        if hw.grid_current_capacity_a > ig.max:
            errors.append(
                Problem(
                    hw_name,
                    "gridCurrentCapacityA",
                    f"= {hw.grid_current_capacity_a:g} (must be <= safety.range.dcdc.meter.ig.max"
                    f" = {ig.max:g}, or a voltage reference at full current trips its own check)",
                )
            )
        errors.extend(check_scenario(u.scenario, hw.battery_nominal_capacity_wh,
                                     _name(cluster, u.scenario_path), policy.member_unit_ids))

    # The grid holds every unit, and only members.
    grid_name = _name(cluster, cluster.grid_path) if cluster.grid_path else "grid.json"
    grid_units = set(cluster.grid.unit_ids)
    for u in cluster.units:
        if u.unit_id not in grid_units:
            errors.append(
                Problem(grid_name, "nodes", f"(no unit node for unit {u.unit_id!r})")
            )
    for node in sorted(grid_units - set(policy.member_unit_ids)):
        errors.append(
            Problem(grid_name, "nodes", f"(unit node {node!r} is not in memberUnitIds)")
        )

    topo = policy.safety.grid_topology_based_evaluation
    if topo.enabled:
        for branch in topo.branch_ids:
            forward, backward = topo.branch_units(branch)
            for unit in forward + backward:
                if unit not in policy.member_unit_ids:
                    errors.append(
                        Problem(
                            policy_name,
                            f"safety.gridTopologyBasedEvaluation.branchAssociation.{branch}",
                            f"(unit {unit!r} is not in memberUnitIds)",
                        )
                    )
    return errors, warnings


def check_scenario(
    scenario: Scenario, capacity_wh: float, name: str, members: list[str]
) -> list[Problem]:
    """Each window's batteryStatus ranges reach the capacity; limits fit the battery; pair
    units are members. (Gaps and overlaps between the ranges are the file's own rule.)"""
    problems: list[Problem] = []
    for w in scenario.windows:
        prefix = f"{w.key}.batteryStatus"
        high = max(w.block.ranges, key=lambda r: 1e300 if r.upper is None else r.upper).upper
        if high is not None and high < capacity_wh:
            problems.append(
                Problem(name, prefix, f"(ranges end at {high:g} Wh; {high:g}..{capacity_wh:g} Wh "
                                      f"of the battery capacity is uncovered)")
            )
        for table_name, table in (("request", w.block.request), ("accept", w.block.accept)):
            for status, rules in table.items():
                for direction, rule in rules.items():
                    path = f"{w.key}.{table_name}.{status}.{direction}"
                    if rule.limit_wh > capacity_wh:
                        problems.append(
                            Problem(name, f"{path}.limitWh", f"= {rule.limit_wh:g} (must be "
                                                             f"within 0..{capacity_wh:g} Wh)")
                        )
                    if rule.pair_unit_id is not None and rule.pair_unit_id not in members:
                        problems.append(
                            Problem(name, f"{path}.pairUnitId", f"= {rule.pair_unit_id!r} "
                                                                f"(must be one of memberUnitIds)")
                        )
    return problems

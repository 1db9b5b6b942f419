"""policy.json: the cluster's rules; must be identical on every unit."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from apis.config.base import ConfigModel, rule

OperationMode = Literal["autonomous", "heteronomous", "stop", "manual"]
UnitSide = Literal["chargeUnit", "dischargeUnit"]


class VoltageRange(ConfigModel):
    min: float
    max: float

    @rule
    def _ordered(self) -> list[str]:
        if self.min >= self.max:
            return [f"min = {self.min:g} (must be < max = {self.max:g})"]
        return []


class GridTopologyBasedEvaluation(ConfigModel):
    enabled: bool = False
    branch_ids: list[str] = []
    # branch -> {"forwardUnitIds": [...], "backwardUnitIds": [...]}; the original sample
    # carries a placeholder {"": ""}, so entries are checked only when the feature is enabled.
    branch_association: dict[str, Any] = {}
    branch_current_capacity_a: dict[str, Any] = {}

    @rule
    def _branches(self) -> list[str]:
        if not self.enabled:
            return []
        broken = []
        for branch in self.branch_ids:
            assoc = self.branch_association.get(branch)
            if not isinstance(assoc, dict):
                broken.append(
                    f"branchAssociation.{branch} = {assoc!r} "
                    "(must be an object with forwardUnitIds and backwardUnitIds)"
                )
            else:
                for side in ("forwardUnitIds", "backwardUnitIds"):
                    ids = assoc.get(side, [])
                    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                        broken.append(f"branchAssociation.{branch}.{side} = {ids!r} "
                                      "(must be a list of unit IDs)")
            cap = self.branch_current_capacity_a.get(branch)
            if isinstance(cap, bool) or not isinstance(cap, int | float) or cap <= 0:
                broken.append(f"branchCurrentCapacityA.{branch} = {cap!r} (must be > 0)")
        return broken

    def branch_units(self, branch: str) -> tuple[list[str], list[str]]:
        assoc = self.branch_association.get(branch) or {}
        return list(assoc.get("forwardUnitIds", [])), list(assoc.get("backwardUnitIds", []))

    def branch_capacity_a(self, branch: str) -> float:
        return float(self.branch_current_capacity_a[branch])


class PolicySafety(ConfigModel):
    sum_of_dealing_unit_grid_current_allowance_per_unit_a: float = Field(0.125, ge=0)
    sum_of_deal_grid_current_max_a: float = Field(100, gt=0)
    grid_topology_based_evaluation: GridTopologyBasedEvaluation = GridTopologyBasedEvaluation()


class Checkpoint(ConfigModel):
    retry_limit: int = Field(3, ge=1)
    retry_wait_msec: int = Field(100, ge=0)


class RampUpFirst(ConfigModel):
    timeout_msec: int = Field(180000, gt=0)


class RampUp(ConfigModel):
    first: RampUpFirst = RampUpFirst()


class Authorization(ConfigModel):
    number_of_trials: int = Field(3, ge=0)


class VoltageReferenceControl(ConfigModel):
    ramp_up: RampUp = RampUp()
    authorization: Authorization = Authorization()


class DcdcControl(ConfigModel):
    checkpoint: Checkpoint = Checkpoint()
    voltage_reference: VoltageReferenceControl = VoltageReferenceControl()


class ControllerPolicy(ConfigModel):
    dcdc: DcdcControl = DcdcControl()
    scram_voltage_reference_delay_msec: int = Field(5000, ge=0)
    stop_me_timeout_msec: int = Field(60000, gt=0)
    stop_me_check_period_msec: int = Field(1000, gt=0)
    data_acquisition_period_msec: int = Field(5000, gt=0)
    request_timeout_msec: int = Field(5000, gt=0)
    retry_limit: int = Field(3, ge=1)


class UserPolicy(ConfigModel):
    error_handling_period_msec: int = Field(1000, gt=0)
    error_sustaining_msec: int = Field(30000, ge=0)
    house_keeping_period_msec: int = Field(60000, gt=0)


class DealPolicy(ConfigModel):
    grid_current_a: float = Field(1, gt=0)
    amount_min_wh: int = Field(50, ge=0)
    amount_max_wh: int = Field(50, gt=0)
    amount_unit_wh: int = Field(50, gt=0)

    @rule
    def _min_within_max(self) -> list[str]:
        if self.amount_min_wh > self.amount_max_wh:
            return [f"amountMinWh = {self.amount_min_wh} (must be <= amountMaxWh = "
                    f"{self.amount_max_wh})"]
        return []

    @rule
    def _max_holds_a_unit(self) -> list[str]:
        if self.amount_max_wh < self.amount_unit_wh:
            return [f"amountMaxWh = {self.amount_max_wh} (must be >= amountUnitWh = "
                    f"{self.amount_unit_wh}, or no deal can ever be made)"]
        return []


class MediatorPolicy(ConfigModel):
    deal: DealPolicy = DealPolicy()
    negotiation_timeout_msec: int = Field(2000, gt=0)
    deal_logging_period_msec: int = Field(5000, gt=0)


class MasterDealSelection(ConfigModel):
    strategy: Literal["newestDeal"] = "newestDeal"


class GridMasterSelection(ConfigModel):
    strategy: Literal["voltageReferenceUnit", "fixed", "anywhere"] = "voltageReferenceUnit"
    fixed_unit_id: str | None = None


class InterlockInconsistency(ConfigModel):
    retry_wait_msec: int = Field(2000, ge=0)


class GridMasterEnsuring(ConfigModel):
    interlock_inconsistency: InterlockInconsistency = InterlockInconsistency()


class Absence(ConfigModel):
    ensure_wait_msec: int = Field(5000, ge=0)


class GridMasterWatching(ConfigModel):
    absence: Absence = Absence()


class ForceStopCondition(ConfigModel):
    discharge_unit_lower_limit_rsoc: float = Field(20, ge=0, le=100)
    charge_unit_upper_limit_rsoc: float = Field(95, ge=0, le=100)


class GridMasterDealPolicy(ConfigModel):
    force_stop_condition: ForceStopCondition = ForceStopCondition()
    reference_side: UnitSide = "chargeUnit"
    reset_limit: int = Field(3, ge=0)


class CurrentCompensation(ConfigModel):
    limit_of_trials: int = Field(3, ge=0)
    drift_allowance_a: float = Field(0.03, ge=0)


class GridVoltageOptimization(ConfigModel):
    enabled: bool = False


class GridMasterPolicy(ConfigModel):
    voltage_reference_side: UnitSide = "chargeUnit"
    voltage_reference_take_over_dvg: Literal["theoretical", "actual"] = "theoretical"
    master_deal_selection: MasterDealSelection = MasterDealSelection()
    grid_master_selection: GridMasterSelection = GridMasterSelection()
    grid_master_ensuring: GridMasterEnsuring = GridMasterEnsuring()
    grid_master_watching: GridMasterWatching = GridMasterWatching()
    deal: GridMasterDealPolicy = GridMasterDealPolicy()
    current_compensation: CurrentCompensation = CurrentCompensation()
    grid_voltage_optimization: GridVoltageOptimization = GridVoltageOptimization()
    helo_period_msec: int = Field(5000, gt=0)
    data_collection_period_msec: int = Field(5000, gt=0)
    data_collection_timeout_msec: int = Field(2000, gt=0)
    main_loop_period_msec: int = Field(5000, gt=0)
    error_sustaining_msec: int = Field(30000, ge=0)


class Policy(ConfigModel):
    refreshing_period_msec: int = Field(5000, gt=0)
    operation_mode: OperationMode = "stop"
    member_unit_ids: list[str] = Field(min_length=1)
    large_capacity_unit_ids: list[str] = []
    operation_grid_voltage_v: float = Field(350, gt=0)
    operation_grid_voltage_v_range: VoltageRange = VoltageRange(min=300, max=380)
    grid_voltage_separation_v: float = Field(10, gt=0)
    grid_voltage_allowance_v: float = Field(4, gt=0)
    grid_voltage_drop_allowance_v: float = Field(20, ge=0)
    grid_current_step_a: float = Field(1, gt=0)
    grid_uvlo_mask_v: float = Field(10, ge=0)
    grid_voltage_step_v: float = Field(350, gt=0)  # undocumented in the original
    safety: PolicySafety = PolicySafety()
    helo_period_msec: int = Field(5000, gt=0)
    controller: ControllerPolicy = ControllerPolicy()
    user: UserPolicy = UserPolicy()
    mediator: MediatorPolicy = MediatorPolicy()
    grid_master: GridMasterPolicy = GridMasterPolicy()

    @rule
    def _unique_members(self) -> list[str]:
        ids = self.member_unit_ids
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            return [f"memberUnitIds = {ids} (must be unique; repeated: {dupes})"]
        return []

    @rule
    def _operation_voltage_in_range(self) -> list[str]:
        r = self.operation_grid_voltage_v_range
        if not (r.min <= self.operation_grid_voltage_v <= r.max):
            return [f"operationGridVoltageV = {self.operation_grid_voltage_v:g} "
                    f"(must be within operationGridVoltageVRange {r.min:g}..{r.max:g})"]
        return []

    @rule
    def _large_units_are_members(self) -> list[str]:
        ids = self.member_unit_ids
        return [f"largeCapacityUnitIds: {unit!r} (must be one of memberUnitIds {ids})"
                for unit in self.large_capacity_unit_ids if unit not in ids]

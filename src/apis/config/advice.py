"""The seed's hardware-design advice as numbers.

Control speed costs energy: while the Grid Master walks a deal through activation, ramp-up,
authorisation, compensation and deactivation, converters run but the deal's energy is not yet
(or no longer) counted. The shorter a deal, the larger that share.
"""

from __future__ import annotations

from dataclasses import dataclass

from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy

CONTROL_LOSS_WARN_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class DesignFigures:
    min_deal_duration_s: float
    control_time_s: float
    loop_time_s: float
    checkpoint_time_s: float
    control_loss_share: float
    max_cluster_deal_current_a: float
    sum_of_deal_current_max_a: float
    max_parallel_deals: int

    @property
    def control_loss_too_high(self) -> bool:
        return self.control_loss_share > CONTROL_LOSS_WARN_SHARE

    @property
    def current_limit_exceeded(self) -> bool:
        return self.max_cluster_deal_current_a > self.sum_of_deal_current_max_a

    def lines(self) -> list[str]:
        return [
            f"minimum deal duration: {self.min_deal_duration_s:.0f} s "
            "(amountMinWh / (operationGridVoltageV x gridCurrentA))",
            f"control time per deal: {self.control_time_s:.1f} s "
            f"({self.loop_time_s:.1f} s of Grid Master loop and data acquisition, "
            f"{self.checkpoint_time_s:.1f} s of checkpoint retries)",
            f"control-loss share of a deal: {100 * self.control_loss_share:.1f} % "
            f"(warning above {100 * CONTROL_LOSS_WARN_SHARE:.0f} %)",
            f"grid current of a full cluster: {self.max_cluster_deal_current_a:g} A in "
            f"{self.max_parallel_deals} parallel deals "
            f"(safety.sumOfDealGridCurrentMaxA = {self.sum_of_deal_current_max_a:g} A)",
        ]


def design_figures(policy: Policy, hw_configs: list[HwConfig]) -> DesignFigures:
    """Figures for a cluster with these units.

    Control time per deal, by the Grid Master's state machine: one main-loop pass each for
    activation, ramp-up, authorisation and start, one more for deactivation, plus the age of
    the unit data it acts on (one acquisition period); and the checkpoints at their worst
    (every attempt used): authorisation trials + the return to the original voltage, the
    compensation trials, and the current checkpoints of the two CC starts.
    """
    deal = policy.mediator.deal
    power_w = policy.operation_grid_voltage_v * deal.grid_current_a
    min_duration_s = deal.amount_min_wh / power_w * 3600.0
    loop_s = policy.grid_master.main_loop_period_msec / 1000.0
    acquisition_s = policy.controller.data_acquisition_period_msec / 1000.0
    checkpoint = policy.controller.dcdc.checkpoint
    checkpoints = (
        policy.controller.dcdc.voltage_reference.authorization.number_of_trials
        + 1
        + policy.grid_master.current_compensation.limit_of_trials
        + 2
    )
    checkpoint_s = checkpoints * checkpoint.retry_limit * checkpoint.retry_wait_msec / 1000.0
    loop_time_s = 5 * loop_s + acquisition_s
    control_s = loop_time_s + checkpoint_s
    share = control_s / min_duration_s if min_duration_s > 0 else float("inf")
    # Members whose hwConfig we were not given are taken to be like the first unit.
    units = list(hw_configs) + [hw_configs[0]] * max(
        0, len(policy.member_unit_ids) - len(hw_configs)
    )
    slots = sum(int(hw.grid_current_capacity_a // deal.grid_current_a) for hw in units)
    parallel = slots // 2  # every deal takes a slot on each of its two units
    return DesignFigures(
        min_deal_duration_s=min_duration_s,
        control_time_s=control_s,
        loop_time_s=loop_time_s,
        checkpoint_time_s=checkpoint_s,
        control_loss_share=share,
        max_cluster_deal_current_a=parallel * deal.grid_current_a,
        sum_of_deal_current_max_a=policy.safety.sum_of_deal_grid_current_max_a,
        max_parallel_deals=parallel,
    )

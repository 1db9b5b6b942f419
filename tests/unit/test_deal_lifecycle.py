"""Two units, one `short`, one with energy to give: a whole deal on emulated hardware."""

from __future__ import annotations

from pathlib import Path

from apis.hardware.modes import ConverterMode
from apis.unit.deal import Deal

from .harness import Rig


def test_two_units_one_deal_from_request_to_log(tmp_path: Path) -> None:
    # E001 at 80 % (3840 Wh, sufficient: accepts to discharge down to 3600 Wh, never asks);
    # E002 at 50 % (2400 Wh, short: asks to charge up to 2880 Wh). E001's converter allows
    # one deal at a time (1.5 A), so exactly one deal runs.
    rig = Rig(
        tmp_path, ["E001", "E002"], [80.0, 50.0], unit_hw={"E001": {"gridCurrentCapacityA": 1.5}}
    )

    async def scenario(rig: Rig) -> Deal:
        c = rig.cluster
        assert await c.wait_for(lambda: len(c.finished) >= 1, 1800)
        return c.finished[0].deal

    deal = rig.run(scenario)
    # negotiation: amount rules (min(480, 240) capped at 50, unit 50) and every field
    assert deal.request_unit_id == "E002" and deal.accept_unit_id == "E001"
    assert deal.charge_unit_id == "E002" and deal.discharge_unit_id == "E001"
    assert deal.type == "charge"
    # (the converters' standby loss has drawn a little from the batteries since the start)
    assert deal.request_amount_wh is not None and 480 <= deal.request_amount_wh <= 483
    assert deal.accept_amount_wh is not None and 237 <= deal.accept_amount_wh <= 240
    assert deal.deal_amount_wh == 50
    assert deal.deal_grid_current_a == 1.0
    assert deal.point_per_wh == 10
    for stamp in (
        deal.create_date_time,
        deal.activate_date_time,
        deal.ramp_up_date_time,
        deal.warm_up_date_time,
        deal.start_date_time,
        deal.stop_date_time,
        deal.deactivate_date_time,
    ):
        assert stamp is not None and stamp != "--"
    # stops at its amount, within 0.5 %; energy counted on both units
    assert deal.cumulate_amount_wh is not None
    assert abs(deal.cumulate_amount_wh - 50) <= 0.25
    assert deal.charge_unit_cumulate_amount_wh == deal.cumulate_amount_wh
    assert deal.discharge_unit_cumulate_amount_wh is not None
    assert deal.discharge_unit_cumulate_amount_wh > deal.charge_unit_cumulate_amount_wh
    # the emulator agrees: what E002 took from the grid covers the counted energy
    taken = rig.world.counters("E002").grid_in_wh
    assert 50 <= taken <= 50 * 1.1
    # command sequence of section 5.9: the charge side is the voltage reference
    end = rig.cluster.finished[0].at
    e002 = [w for w in rig.mode_writes("E002") if w.t <= end]
    e001 = [w for w in rig.mode_writes("E001") if w.t <= end]
    assert [w.mode for w in e002] == [ConverterMode.VOLTAGE_REFERENCE, ConverterMode.WAITING]
    assert (e002[0].dvg, e002[0].dig, e002[0].drg) == (350.0, 2.3, 0.0)
    assert [w.mode for w in e001] == [ConverterMode.DISCHARGE, ConverterMode.WAITING]
    assert (e001[0].dvg, e001[0].dig) == (380.0, 1.0)
    assert e002[0].t < e001[0].t < e001[1].t < e002[1].t
    rig.assert_one_voltage_reference()
    # both deal logs hold the same final record
    files1 = [p for p in rig.deal_files("E001") if p.name == deal.deal_id]
    files2 = [p for p in rig.deal_files("E002") if p.name == deal.deal_id]
    assert len(files1) == len(files2) == 1
    record1, record2 = rig.read_deal_file(files1[0]), rig.read_deal_file(files2[0])
    assert record1 == record2 == deal.to_json()

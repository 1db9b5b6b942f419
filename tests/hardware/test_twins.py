"""The serial twins on their own (no line): addressing and the grid they share."""

from __future__ import annotations

from apis.hardware import eza2500 as eza
from apis.hardware.modes import ConverterMode
from apis.hardware.twins import ConverterModel, Eza2500Twin, TwinGrid

OWN = eza.Address(0, 16)


def _meter(twin: Eza2500Twin) -> dict[str, float]:
    reply = twin.answer(eza.parse_frame(eza.encode_read(eza.METER, OWN)))
    assert reply is not None
    return eza.decode_reply(eza.parse_frame(reply), eza.METER)


def test_twin_ignores_frames_for_other_addresses() -> None:
    twin = Eza2500Twin(ConverterModel(), OWN)
    for other in (eza.Address(1, 16), eza.Address(0, 17), eza.Address(16, 0)):
        assert twin.answer(eza.parse_frame(eza.encode_read(eza.MODE, other))) is None
        write = eza.encode_write(eza.MODE, {"mode": ConverterMode.DISCHARGE}, other)
        assert twin.answer(eza.parse_frame(write)) is None
    assert twin.model.mode == ConverterMode.WAITING  # no write for another unit applied
    assert twin.received == [] and twin.ignored == 6
    assert twin.answer(eza.parse_frame(eza.encode_read(eza.MODE, OWN))) is not None


def test_lone_twin_reads_a_dead_grid() -> None:
    model = ConverterModel()
    twin = Eza2500Twin(model, OWN)
    assert _meter(twin)["vg"] == 0.0
    model.mode, model.dig = ConverterMode.CHARGE, 2.0
    meter = _meter(twin)
    assert meter["vg"] == 0.0 and meter["ig"] == 0.0  # nothing to draw from
    model.mode = ConverterMode.WAITING
    model.mode, model.dvg = ConverterMode.VOLTAGE_REFERENCE, 360.0
    assert _meter(twin)["vg"] == eza.GRID_VOLTAGE.fields[0].from_raw(
        eza.GRID_VOLTAGE.fields[0].to_raw(360.0))


def test_twins_on_one_grid_see_its_voltage_reference() -> None:
    grid = TwinGrid()
    reference = ConverterModel(grid=grid)
    charger = ConverterModel(grid=grid, mode=ConverterMode.CHARGE, dig=2.0)
    twin = Eza2500Twin(charger, OWN)
    assert _meter(twin)["vg"] == 0.0
    reference.mode, reference.dvg = ConverterMode.VOLTAGE_REFERENCE, 350.0
    meter = _meter(twin)
    assert abs(meter["vg"] - 350.0) < 0.03 and abs(meter["ig"] - 2.0) < 0.01
    reference.mode = ConverterMode.WAITING
    assert _meter(twin)["vg"] == 0.0

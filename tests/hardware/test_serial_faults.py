"""Corrupted, misaddressed and noisy serial lines: the driver takes no wrong value silently
and every read ends within its deadline. Real socat pty pairs, the real twins and driver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from apis.hardware import eza2500 as eza
from apis.hardware.converter import ConverterSettings, Eza2500Converter
from apis.hardware.modbus import ModbusBattery, ModbusError, ModbusSettings
from apis.hardware.modes import ConverterMode
from apis.hardware.real import WatchdogSettings
from apis.hardware.rig import TwinRig, twin_rig
from apis.hardware.serialport import close_writer, open_serial, pty_pair
from apis.hardware.twins import WRONG_ADDRESS, ConverterModel, TwinGrid

pytestmark = [
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed"),
    pytest.mark.timeout(300),
]

CONVERTER = ConverterSettings(baudrate=115200, timeout_s=0.5, retry_wait_s=0.01)
CONVERTER_LOG = "apis.hardware.converter"


@pytest.fixture
async def rig() -> AsyncIterator[TwinRig]:
    grid = TwinGrid()
    ConverterModel(grid=grid, mode=ConverterMode.VOLTAGE_REFERENCE, dvg=350.0)  # another unit
    async with twin_rig(converter=ConverterModel(grid=grid), converter_settings=CONVERTER,
                        watchdog=WatchdogSettings(force_waiting=False)) as r:
        yield r


# --- replies corrupted so that the additive checksum still matches -----------------------


def _pairs(reply: bytes, fits: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    span = range(2, len(reply) - 2)  # AD1 .. the last data byte: what the checksum sums
    return [(a, b) for a in span for b in span if a != b and fits(reply[a], reply[b])]


def swap(pick: int) -> Callable[[bytes], bytes]:
    """Exchange two different bytes of AD1..data (the sum, so the checksum, stays)."""

    def corrupt(reply: bytes) -> bytes:
        pairs = _pairs(reply, lambda x, y: x != y)
        if not pairs:
            return reply
        a, b = pairs[pick % len(pairs)]
        body = bytearray(reply)
        body[a], body[b] = body[b], body[a]
        return bytes(body)

    return corrupt


def shift(pick: int, k: int) -> Callable[[bytes], bytes]:
    """Add up to k to one byte of AD1..data and take as much from another (same sum)."""

    def corrupt(reply: bytes) -> bytes:
        pairs = _pairs(reply, lambda x, y: x < 0xFF and y > 0)
        if not pairs:
            return reply
        a, b = pairs[pick % len(pairs)]
        body = bytearray(reply)
        step = min(k, 0xFF - body[a], body[b])
        body[a] += step
        body[b] -= step
        return bytes(body)

    return corrupt


corruptions = st.one_of(
    st.builds(swap, st.integers(0, 10_000)),
    st.builds(shift, st.integers(0, 10_000), st.integers(1, 255)),
)
READS = (eza.MODE, eza.STATUS, eza.GRID_VOLTAGE, eza.CURRENT_LIMITS, eza.ALARMS, eza.METER)


@st.composite
def converter_states(draw: st.DrawFn) -> dict[str, float]:
    """A state a converter can be in (set-points within their documented ranges)."""
    state: dict[str, float] = {
        "mode": draw(st.sampled_from(list(ConverterMode))),
        "dvg": draw(st.floats(260, 390)), "drg": draw(st.floats(0, 3.999)),
        "dig": draw(st.floats(0, 6.0)),  # wg within the 2.5 kW rating
        "cib": draw(st.floats(0, 56.77)),
        "ubv": draw(st.floats(32, 68)), "obv": draw(st.floats(32, 68)),
        "ugv": draw(st.floats(260, 425)), "ogv": draw(st.floats(260, 425)),
        "battery_voltage": draw(st.floats(40, 60)), "temperature": draw(st.floats(0, 80)),
        "loss_w": draw(st.floats(0, 100)),
    }
    for name in ("alm1", "alm2", "alm3"):
        state[name] = draw(st.integers(0, 0xFFFF))
    return state


def truth(rig: TwinRig, command: eza.Command) -> dict[str, float]:
    """What the converter holds now: the uncorrupted reply, decoded."""
    raw = rig.converter_twin._values(command)
    return {f.name: f.from_raw(raw[f.name]) for f in command.fields}


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(READS), state=converter_states(), corrupt=corruptions,
       position=st.integers(0, 1))
async def test_no_corrupted_read_is_taken_silently(
    rig: TwinRig, caplog: pytest.LogCaptureFixture, command: eza.Command,
    state: dict[str, float], corrupt: Callable[[bytes], bytes], position: int,
) -> None:
    model = rig.converter_twin.model
    for name, value in state.items():
        setattr(model, name, value)
    expected = truth(rig, command)
    changed: list[bool] = []

    def recorded(reply: bytes) -> bytes:
        out = corrupt(reply)
        changed.append(out != reply)
        return out

    rig.converter_twin.corruptions.clear()
    rig.converter_twin.corruptions.extend([None] * position + [recorded])
    caplog.clear()
    with caplog.at_level(logging.ERROR, CONVERTER_LOG):
        try:
            values = await rig.driver.converter.read(command)
        except eza.EzaError:
            event(f"{command.read_name}: refused")
            return  # refused, and said so
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert changed, "the corrupted reply was never sent"
    event(f"{command.read_name}: {'corrupted' if changed[0] else 'unchanged'} reply, "
          f"{'right' if values == expected else 'WRONG'}, "
          f"{'rejection logged' if errors else 'nothing logged'}")
    assert values == expected or errors, (command.read_name, values, expected)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), corrupt=corruptions)
async def test_no_corrupted_echo_is_taken_silently(
    rig: TwinRig, caplog: pytest.LogCaptureFixture, data: st.DataObject,
    corrupt: Callable[[bytes], bytes],
) -> None:
    command = data.draw(st.sampled_from((eza.MODE, eza.GRID_VOLTAGE, eza.CURRENT_LIMITS)))
    if command is eza.MODE:
        values: dict[str, float] = {"mode": data.draw(st.sampled_from(list(ConverterMode)))}
    else:
        values = {f.name: data.draw(st.floats(f.minimum or 0.0, f.maximum or 0.0))
                  for f in command.written}
    sent = eza.decode_fields(command.written, eza.encode_write(command, values)[5:-2])
    rig.converter_twin.corruptions.clear()
    rig.converter_twin.corruptions.append(corrupt)
    caplog.clear()
    with caplog.at_level(logging.ERROR, CONVERTER_LOG):
        try:
            echo = await rig.driver.converter.write(command, values)
        except eza.EzaError:
            return
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert echo == sent or errors, (command.write_name, echo, sent)
    assert echo == sent  # a corrupted echo is refused and the write sent again


async def test_replies_from_another_address_are_refused(
    rig: TwinRig, caplog: pytest.LogCaptureFixture
) -> None:
    faults = rig.converter_twin.faults
    faults.append(WRONG_ADDRESS)
    with caplog.at_level(logging.ERROR, CONVERTER_LOG):
        assert (await rig.driver.converter.read(eza.MODE))["mode"] == ConverterMode.WAITING
    assert any("reply address = AD1=1 AD2=16 (the request went to AD1=0 AD2=16)"
               in r.getMessage() for r in caplog.records)
    faults.extend([WRONG_ADDRESS] * (CONVERTER.error_retries + 1))
    with pytest.raises(eza.EzaImplausible, match="reply address = AD1=1 AD2=16"):
        await rig.driver.converter.write(eza.MODE, {"mode": ConverterMode.DISCHARGE})
    assert not rig.converter_twin.faults  # every attempt was answered, and refused
    assert rig.converter_twin.model.mode == ConverterMode.DISCHARGE  # the write did land


# --- a line full of noise ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def noisy_line(baudrate: int) -> AsyncIterator[
    tuple[asyncio.StreamReader, asyncio.StreamWriter]
]:
    """The driver's end of a pty pair whose other end sends random bytes without a pause."""
    async with pty_pair() as (driver_end, noise_end):
        n_reader, n_writer = await open_serial(noise_end, baudrate)
        reader, writer = await open_serial(driver_end, baudrate)
        rng = random.Random(7)

        async def noise() -> None:
            while True:
                n_writer.write(rng.randbytes(64))
                await n_writer.drain()
                await asyncio.sleep(0.002)

        async def swallow() -> None:  # what the driver sends goes nowhere
            while await n_reader.read(4096):
                pass

        tasks = [asyncio.create_task(noise()), asyncio.create_task(swallow())]
        try:
            yield reader, writer
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await close_writer(writer)
            await close_writer(n_writer)


async def test_a_modbus_read_under_line_noise_ends_within_its_timeout() -> None:
    settings_ = ModbusSettings(baudrate=115200, timeout_s=0.2, attempts=2, retry_wait_s=0.1)
    budget = settings_.attempts * settings_.timeout_s + settings_.retry_wait_s
    loop = asyncio.get_running_loop()
    async with noisy_line(settings_.baudrate) as (reader, writer):
        battery = ModbusBattery(reader, writer, settings_)
        for _ in range(3):
            start = loop.time()
            with pytest.raises(ModbusError):
                async with asyncio.timeout(20):  # the old drain never returned
                    await battery.read()
            assert loop.time() - start < 3 * budget


async def test_a_converter_read_under_line_noise_ends_within_its_budget() -> None:
    s = ConverterSettings(baudrate=115200, timeout_s=0.2, timeout_retries=1, error_retries=1,
                          retry_wait_s=0.05)
    attempts = s.timeout_retries + s.error_retries + 1
    budget = attempts * s.timeout_s + (attempts - 1) * s.retry_wait_s
    loop = asyncio.get_running_loop()
    async with noisy_line(s.baudrate) as (reader, writer):
        converter = Eza2500Converter(reader, writer, s)
        for command in (eza.MODE, eza.METER):
            start = loop.time()
            with pytest.raises(eza.EzaError):
                async with asyncio.timeout(20):
                    await converter.read(command)
            assert loop.time() - start < 3 * budget

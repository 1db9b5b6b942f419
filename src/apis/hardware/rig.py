"""A complete driver rig without hardware: both serial twins on socat pty pairs, the
real serial driver on the other ends. Used by `apis driver --twin` and by tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from apis.hardware.commwatchdog import CommunicationWatchdog
from apis.hardware.converter import ConverterSettings, Eza2500Converter
from apis.hardware.driver import CommandLimits
from apis.hardware.modbus import ModbusBattery, ModbusSettings
from apis.hardware.real import RealDriver, WatchdogSettings
from apis.hardware.serialport import close_writer, open_serial, pty_pair
from apis.hardware.twins import (
    BatteryModel,
    ConverterModel,
    Eza2500Twin,
    ModbusBatteryTwin,
    SimpleBattery,
)


@dataclass
class TwinRig:
    driver: RealDriver
    battery_twin: ModbusBatteryTwin
    converter_twin: Eza2500Twin
    battery_ports: tuple[str, str]  # (driver side, twin side)
    converter_ports: tuple[str, str]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def twin_rig(
    limits: CommandLimits | None = None,
    *,
    battery: BatteryModel | None = None,
    converter: ConverterModel | None = None,
    battery_settings: ModbusSettings | None = None,
    converter_settings: ConverterSettings | None = None,
    watchdog: WatchdogSettings | None = None,
    converter_watchdog: CommunicationWatchdog | None = None,
) -> AsyncIterator[TwinRig]:
    """Start socat, the twins and the driver; stop and wait for all of them on exit.

    `watchdog` is the driver's battery watchdog, `converter_watchdog` the converter twin's
    own communication watchdog (default: 60 s)."""
    battery_settings = battery_settings or ModbusSettings(baudrate=115200)
    converter_settings = converter_settings or ConverterSettings(baudrate=115200)
    battery_twin = ModbusBatteryTwin(battery or SimpleBattery(), battery_settings.slave)
    converter_twin = Eza2500Twin(converter or ConverterModel(), converter_settings.address,
                                 converter_watchdog)
    async with contextlib.AsyncExitStack() as stack:
        b_driver, b_twin = await stack.enter_async_context(pty_pair())
        c_driver, c_twin = await stack.enter_async_context(pty_pair())
        writers: list[asyncio.StreamWriter] = []
        tasks: list[asyncio.Task[None]] = []

        async def stop() -> None:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for writer in writers:
                await close_writer(writer)

        stack.push_async_callback(stop)
        bt_reader, bt_writer = await open_serial(b_twin, battery_settings.baudrate)
        ct_reader, ct_writer = await open_serial(c_twin, converter_settings.baudrate)
        writers += [bt_writer, ct_writer]
        tasks.append(asyncio.create_task(battery_twin.serve(bt_reader, bt_writer),
                                         name="modbus-twin"))
        tasks.append(asyncio.create_task(converter_twin.serve(ct_reader, ct_writer),
                                         name="eza2500-twin"))
        bd_reader, bd_writer = await open_serial(b_driver, battery_settings.baudrate)
        cd_reader, cd_writer = await open_serial(c_driver, converter_settings.baudrate)
        writers += [bd_writer, cd_writer]
        driver = RealDriver(
            ModbusBattery(bd_reader, bd_writer, battery_settings),
            Eza2500Converter(cd_reader, cd_writer, converter_settings),
            limits or CommandLimits(),
            watchdog,
        )
        async with driver:
            yield TwinRig(driver, battery_twin, converter_twin, (b_driver, b_twin),
                          (c_driver, c_twin), tasks)

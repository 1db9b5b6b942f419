"""Commands of this part (registered by apis.cli): `apis driver`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from apis.hardware.driverconfig import load_driver_config
from apis.hardware.webapi import DEFAULT_HOST, DEFAULT_PORT
from apis.httpguard import HostNames
from apis.listening import CommandServer, ListenError, bind_listener

DRIVER_HELP = """Serve the Device Driver Web API (dcdc_v2 routes) for one unit.

With --config FILE: over real serial ports. FILE is JSON with optional keys
hwConfigFile (path of the unit's hwConfig.json, relative to FILE; narrows dvg/dig limits),
battery {port, baudrate, slave, timeoutMsec, attempts, retryWaitMsec},
converter {port, baudrate, address1, address2, timeoutMsec, timeoutRetries, errorRetries,
retryWaitMsec, cib, ubv, ugv, obv, ogv} and watchdog {forceWaiting, periodMsec}.

With --twin: a complete rig with no hardware: a Modbus battery twin and an EZA2500 twin on
socat pty pairs, the serial driver on the other ends (--config then only supplies limits,
protection values and the watchdog).

Commands (/dcdc/set, /remote/set...) are POST; the original apis-main sends them as GET,
which is served only with --legacy-get. Requests must name this server (Host, and Origin if
a browser sent them): its listen address, 127.0.0.1, localhost or [::1] with its port, or a
name given with --allow-host.

Ctrl-C (or SIGTERM) stops the server, the twins and socat.
"""


async def _serve(config_path: Path | None, twin: bool, host: str, port: int,
                 legacy_get: bool = False, allowed_hosts: HostNames | None = None) -> None:
    from apis.config.hwconfig import HwConfig
    from apis.hardware.converter import ConverterSettings, Eza2500Converter
    from apis.hardware.driver import CommandLimits
    from apis.hardware.driverconfig import DriverConfig
    from apis.hardware.modbus import ModbusBattery
    from apis.hardware.real import RealDriver
    from apis.hardware.rig import twin_rig
    from apis.hardware.serialport import close_writer, open_serial
    from apis.hardware.webapi import create_driver_app

    config, hw = load_driver_config(config_path) if config_path else (DriverConfig(), HwConfig())
    limits = CommandLimits.from_hwconfig(hw)
    loop = asyncio.get_running_loop()

    async def run(driver: RealDriver) -> None:
        sock = bind_listener(host, port)
        bound_port = sock.getsockname()[1]  # the one chosen for port 0
        app = create_driver_app(driver, limits, legacy_get=legacy_get,
                                allowed_hosts=allowed_hosts)
        server = CommandServer(uvicorn.Config(app, host=host, port=bound_port,
                                              log_level="warning", lifespan="off"))

        def stop() -> None:
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            get_forms = ", GET commands too (--legacy-get)" if legacy_get else ""
            typer.echo(f"apis driver: serving http://{host}:{bound_port} (limits: {limits}"
                       f"{get_forms})")
            await server.serve(sockets=[sock])
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    if twin:
        twin_converter = ConverterSettings(
            baudrate=115200, protection=config.converter.settings().protection
        )
        async with twin_rig(limits, converter_settings=twin_converter,
                            watchdog=config.watchdog.settings()) as rig:
            typer.echo(f"apis driver: battery twin on {rig.battery_ports[1]} "
                       f"(driver {rig.battery_ports[0]}), converter twin on "
                       f"{rig.converter_ports[1]} (driver {rig.converter_ports[0]})")
            await run(rig.driver)
        return
    battery_settings = config.battery.settings()
    converter_settings = config.converter.settings()
    b_reader, b_writer = await open_serial(battery_settings.port, battery_settings.baudrate)
    try:
        c_reader, c_writer = await open_serial(converter_settings.port,
                                               converter_settings.baudrate)
        try:
            driver = RealDriver(ModbusBattery(b_reader, b_writer, battery_settings),
                                Eza2500Converter(c_reader, c_writer, converter_settings),
                                limits, config.watchdog.settings())
            async with driver:
                await run(driver)
        finally:
            await close_writer(c_writer)
    finally:
        await close_writer(b_writer)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `apis` app."""

    @app.command("driver", help=DRIVER_HELP)
    def driver(
        config: Annotated[Path | None, typer.Option(
            "--config", exists=True, dir_okay=False, help="Driver config (JSON).")] = None,
        twin: Annotated[bool, typer.Option(
            "--twin", help="Serve over serial twins on socat pty pairs.")] = False,
        host: Annotated[str, typer.Option("--host", help="Listen address.")] = DEFAULT_HOST,
        port: Annotated[int, typer.Option("--port", help="Listen port.")] = DEFAULT_PORT,
        legacy_get: Annotated[bool, typer.Option(
            "--legacy-get", help="Also serve the commands as GET, as the original driver "
            "does (for the original apis-main; any web page could then send them).")] = False,
        allow_host: Annotated[list[str] | None, typer.Option(
            "--allow-host", help="Another name this driver is reached by (NAME: any port, "
            "or NAME:PORT); repeat for more.")] = None,
    ) -> None:
        if config is None and not twin:
            raise typer.BadParameter("give --config FILE (real serial ports) or --twin")
        try:
            names = HostNames.parse(allow_host or [])
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_serve(config, twin, host, port, legacy_get, names))
        except ListenError as e:
            typer.echo(f"apis driver: {e.strerror}", err=True)
            raise typer.Exit(1) from None

"""`apis unit --config PATH`: one unit as its own process.

The bus is NATS (config.json's `bus` key: servers, TLS, credentials), the DeviceDriver the
HTTP client `systemType` and `connection` name. SIGTERM or Ctrl-C starts the orderly
shutdown of spec 1.4 (deals asked to stop, converter to WAIT, Grid Master released); a
second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from apis.bus.base import BusError
from apis.bus.nats import NatsBus
from apis.config.errors import ConfigError
from apis.config.loader import UnitFiles, load_cluster_files, resolve
from apis.config.unitconfig import BusConfig
from apis.hardware.driver import DeviceDriver
from apis.records.unitlog import action_log

log = logging.getLogger(__name__)


class UnitRefused(Exception):
    """The unit did not start; the message says why."""


def tls_context(bus: BusConfig, base: Path) -> ssl.SSLContext | None:
    """The client TLS context of `bus.tls` (paths relative to config.json's folder)."""
    if bus.tls is None:
        return None
    ca = resolve(base, bus.tls.ca_file)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        if bus.tls.cert_file is not None and bus.tls.key_file is not None:
            context.load_cert_chain(
                str(resolve(base, bus.tls.cert_file)), str(resolve(base, bus.tls.key_file))
            )
    except (OSError, ssl.SSLError) as e:
        raise UnitRefused(f"bus.tls: {e}") from None
    return context


async def connect_bus(bus: BusConfig, base: Path, name: str) -> NatsBus:
    """Connect as config.json's `bus` says; UnitRefused when that fails."""
    creds = str(resolve(base, bus.creds_file)) if bus.creds_file is not None else None
    try:
        return await NatsBus.connect(
            bus.servers,
            name=name,
            tls=tls_context(bus, base),
            user=bus.user,
            password=bus.password,
            creds=creds,
        )
    except BusError as e:
        raise UnitRefused(str(e)) from None


async def run_unit(config_path: Path) -> str:
    """Start the unit of `config_path` and serve until it shuts down; its unit id."""
    from apis.unit.driverfactory import UnsupportedSystemType, driver_from_config

    try:
        # The loader of `apis config check`: the same problems, every one at once.
        files = load_cluster_files([config_path]).units[0]
    except ConfigError as e:
        lines = "".join(f"\n  {p}" for p in e.problems)
        raise UnitRefused(f"{len(e.problems)} configuration problem(s):{lines}") from None
    config = files.config
    try:
        driver = driver_from_config(config, files.policy)
    except UnsupportedSystemType as e:
        raise UnitRefused(str(e)) from None
    try:
        bus = await connect_bus(config.bus or BusConfig(), config_path.parent, config.unit_id)
        try:
            async with action_log(config, config_path.parent, bus):
                await _serve(files, driver, bus)
        finally:
            await bus.close()
    finally:
        await driver.aclose()
    return config.unit_id


async def _serve(files: UnitFiles, driver: DeviceDriver, bus: NatsBus) -> None:
    """Run the unit until it has shut down (the first signal: in order; the second: at once)."""
    from apis.unit.node import StartupFailed, Unit

    config = files.config
    unit = Unit(files, driver=driver, bus=bus)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1 and unit.ready.is_set():
            log.warning("%s: stopping (signal again to stop at once)", config.unit_id)
            unit.begin_shutdown("process terminated")
        else:
            unit.shutdown()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await unit.run()
    except StartupFailed as e:
        raise UnitRefused(str(e)) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

"""`apis lease-service --bus-config FILE`: one copy of the lease service as its own process.

The file is a client's ``bus`` value (``lease/bus.json`` of `apis config secure`: the
servers and the ``apis-lease`` certificate). Copies share the requests (a queue group), so
run as many as there are servers, each beside one; SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from apis.config.unitconfig import BusConfig
from apis.process.unit import UnitRefused, connect_bus

log = logging.getLogger(__name__)

READY_LINE = "lease service: serving"


class LeaseServiceRefused(Exception):
    """The service did not start; the message says why."""


def read_bus_config(path: Path) -> BusConfig:
    try:
        config = BusConfig.model_validate_json(path.read_bytes()[:1_000_000])
    except (OSError, ValueError) as e:
        raise LeaseServiceRefused(f"--bus-config = {path}: {e}") from None
    if config.tls is None or config.tls.cert_file is None:
        raise LeaseServiceRefused(
            f"--bus-config = {path}: tls.certFile missing (the lease service serves only a "
            "secured bus, as apis-lease)"
        )
    return config


async def run_lease_service(path: Path, config: BusConfig) -> None:
    """Serve with `config` (read from `path`: its paths are relative to its folder) until
    SIGTERM or SIGINT."""
    from apis.unit.leaseservice import LeaseService

    try:
        bus = await connect_bus(config, path.parent, "apis-lease")
    except UnitRefused as e:
        raise LeaseServiceRefused(str(e)) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        service = await LeaseService.open(bus)
        serving = asyncio.create_task(service.serve(
            lambda: log.warning("%s on %s", READY_LINE, ", ".join(config.servers))
        ))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, stopping):
                task.cancel()
            await asyncio.wait([serving, stopping])
        if not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]
        log.warning("lease service: stopping (%d answered, %d refused)", service.handled,
                    service.refused)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await bus.close()

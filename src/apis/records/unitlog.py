"""The action log of one unit process (`apis unit`), as config.json's `actionLog` asks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from apis.bus.base import Bus
from apis.bus.memory import cancel_and_wait
from apis.config.unitconfig import UnitConfig
from apis.records.buslog import BusLogHandler, PublishedLevel
from apis.records.logfiles import log_file_handlers
from apis.records.multicast import MulticastLogHandler

FLUSH_AT_STOP_S = 2.0


@contextlib.asynccontextmanager
async def action_log(config: UnitConfig, base: Path, bus: Bus) -> AsyncIterator[PublishedLevel]:
    """Log files, bus and multicast handlers on the `apis` logger for the body's duration.

    The console keeps the level it had; the files' `.log` gets the same lines as the console
    (`.err` WARNING and up); bus and multicast get lines at the published level. At the end,
    lines not yet published are sent for at most FLUSH_AT_STOP_S seconds.
    """
    settings = config.action_log
    apis_logger = logging.getLogger("apis")
    console_level = apis_logger.getEffectiveLevel()
    handlers: list[logging.Handler] = []
    publishers: list[logging.Handler] = []
    bus_handler: BusLogHandler | None = None
    pinned: list[logging.Handler] = []
    old_level = apis_logger.level
    try:
        if settings is not None and settings.directory is not None:
            files = log_file_handlers(
                base / settings.directory,
                config.unit_id,
                max_bytes=settings.max_bytes,
                backup_count=settings.backup_count,
            )
            files[0].setLevel(console_level)
            handlers.extend(files)
        if settings is not None and settings.publish:
            bus_handler = BusLogHandler(config.unit_id)
            publishers.append(bus_handler)
        if settings is not None and settings.multicast is not None:
            group = settings.multicast
            publishers.append(
                MulticastLogHandler(
                    config.unit_id, group.group, group.port,
                    interface=group.interface, ttl=group.ttl,
                )
            )
        for handler in logging.getLogger().handlers:  # the console stays as it was
            if handler.level == logging.NOTSET:
                handler.setLevel(console_level)
                pinned.append(handler)
        level = PublishedLevel(settings.publish_level if settings else "INFO", publishers)
        handlers.extend(publishers)
        for handler in handlers:
            apis_logger.addHandler(handler)
        if publishers:
            await level.follow(bus)
        if bus_handler is None:
            yield level
            return
        task = asyncio.create_task(
            bus_handler.publish_forever(bus), name=f"{config.unit_id} action log"
        )
        try:
            yield level
        finally:
            await cancel_and_wait([task])
            await bus_handler.flush_to(bus, FLUSH_AT_STOP_S)
    finally:
        for handler in handlers:
            apis_logger.removeHandler(handler)
            handler.close()
        for handler in pinned:
            handler.setLevel(logging.NOTSET)
        apis_logger.setLevel(old_level)

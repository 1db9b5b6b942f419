"""A unit's action log on the bus, in files, and its level changed for the whole cluster."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from apis.bus.base import Bus, Message
from apis.bus.memory import MemoryHub
from apis.config.unitconfig import UnitConfig
from apis.records.actionlog import parse_line
from apis.records.buslog import LEVEL_SUBJECT, BusLogHandler, log_subject
from apis.records.unitlog import action_log

log = logging.getLogger("apis.unit.testunitlog")


def _config(**action_log_settings: Any) -> UnitConfig:
    return UnitConfig.model_validate(
        {
            "unitId": "E001",
            "systemType": "dcdc_emulator",
            "hwConfigFile": "hw.json",
            "policyFile": "p.json",
            "scenarioFile": "s.json",
            "actionLog": action_log_settings,
        }
    )


async def _listen(bus: Bus, subject: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def on_line(message: Message) -> None:
        assert isinstance(message.payload, dict)
        got.append(message.payload)

    await bus.subscribe(subject, on_line)
    return got


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _console_at_info() -> Any:
    apis_logger = logging.getLogger("apis")
    old = apis_logger.level
    apis_logger.setLevel(logging.INFO)
    yield
    apis_logger.setLevel(old)


async def test_lines_reach_the_bus_and_files_and_the_level_follows_the_cluster(
    tmp_path: Path,
) -> None:
    hub = MemoryHub()
    unit_bus, operator = hub.connect("E001"), hub.connect("web")
    got = await _listen(operator, log_subject("E001"))
    config = _config(directory="logs", publishLevel="INFO", maxBytes=100_000)
    async with action_log(config, tmp_path, unit_bus) as level:
        log.info("deal d1 started")
        log.debug("not made: below the configured level")
        await _settle()
        await operator.publish(LEVEL_SUBJECT, "WARNING")
        await _settle()
        log.info("not published: below WARNING")
        log.warning("deal d1 aborted")
        await operator.publish(LEVEL_SUBJECT, "FINE")
        await _settle()
        log.debug("published at FINE")
        await operator.publish(LEVEL_SUBJECT, "LOUD")  # refused: the level stays FINE
        await _settle()
        assert level.level == logging.DEBUG
        await operator.publish(LEVEL_SUBJECT, "")  # back to the configured level
        await _settle()
        log.debug("not published: configured INFO again")
        log.info("deal d2 started")
        await _settle()
    messages = [parse_line(x["line"]).message for x in got if x.get("unitId") == "E001"]
    wanted = ["deal d1 started", "deal d1 aborted", "published at FINE", "deal d2 started"]
    assert [m for m in messages if m in wanted or "not published" in m] == wanted
    assert any("log level = 'LOUD'" in m for m in messages)  # the refusal is itself logged
    everything = (tmp_path / "logs" / "E001.log").read_text()
    assert "deal d1 started" in everything and "not published: below WARNING" in everything
    assert "published at FINE" not in everything  # the files keep the console's level
    errors = [parse_line(x) for x in (tmp_path / "logs" / "E001.err").read_text().splitlines()]
    assert [(x.level, x.message[:20]) for x in errors] == [
        ("WARNING", "deal d1 aborted"), ("SEVERE", f"{LEVEL_SUBJECT[:20]}")
    ]
    assert not logging.getLogger("apis").handlers  # all removed at the end


async def test_lines_logged_while_the_bus_lags_are_kept_then_sent_in_order() -> None:
    hub = MemoryHub()
    unit_bus, operator = hub.connect("E001"), hub.connect("web")
    got = await _listen(operator, log_subject("E001"))
    handler = BusLogHandler("E001", capacity=5)
    log.addHandler(handler)
    try:
        for n in range(8):  # no chance to publish in between: 3 are dropped, and counted
            log.info("line %d", n)
        task = asyncio.create_task(handler.publish_forever(unit_bus))
        await _settle()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        log.removeHandler(handler)
    assert got[0]["dropped"] == 3
    assert [parse_line(x["line"]).message for x in got[1:]] == [f"line {n}" for n in range(3, 8)]


async def test_the_bus_own_complaints_while_publishing_are_not_published_again() -> None:
    hub = MemoryHub()
    unit_bus, operator = hub.connect("E001"), hub.connect("web")
    got = await _listen(operator, log_subject("E001"))
    handler = BusLogHandler("E001")
    logging.getLogger("apis").addHandler(handler)

    class ComplainingBus:
        async def publish(self, subject: str, payload: object, *args: object) -> None:
            logging.getLogger("apis.bus.test").warning("bus trouble")
            await unit_bus.publish(subject, payload)  # type: ignore[arg-type]

    try:
        log.info("one line")
        await handler.flush_to(ComplainingBus(), 1.0)  # type: ignore[arg-type]
    finally:
        logging.getLogger("apis").removeHandler(handler)
    await _settle()
    assert [parse_line(x["line"]).message for x in got] == ["one line"]


def test_a_bad_published_level_in_config_is_named() -> None:
    with pytest.raises(ValueError, match="log level = 'LOUD'"):
        _config(publishLevel="LOUD")

"""`driver_from_config`: the unit's HTTP driver from config.json, against the emulator's app
and a dcdc_v2 driver app (in process, through httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from apis.config.policy import Policy
from apis.config.unitconfig import UnitConfig
from apis.emulator import World
from apis.emulator.driver import EmulatedDriver
from apis.emulator.server import create_emulator_app
from apis.hardware.driver import CommandLimits
from apis.hardware.modes import ConverterMode
from apis.hardware.webapi import create_driver_app
from apis.unit.driverfactory import UnsupportedSystemType, driver_from_config

from .harness import write_config


def _files(tmp_path: Path, system_type: str) -> tuple[UnitConfig, Policy]:
    cluster = write_config(tmp_path, ["E001", "E002"], {"controller": {"retryLimit": 2}})
    files = cluster.unit("E001")
    config = files.config.model_copy(update={"system_type": system_type})
    return config, cluster.policy


def test_emulator_routes(tmp_path: Path) -> None:
    config, policy = _files(tmp_path, "dcdc_emulator")
    world = World.with_units(2, initial_rsoc=60.0)
    app = create_emulator_app(world)

    async def main() -> None:
        driver = driver_from_config(config, policy, transport=httpx.ASGITransport(app=app))
        async with driver:
            assert driver.routes == "dcdc_emulator" and driver.retry_limit == 2
            data = await driver.read()
            assert data.battery.rsoc == pytest.approx(60.0, abs=0.5)
            assert data.dcdc.mode is ConverterMode.WAITING
            result = await driver.set(ConverterMode.WAITING, 350.0, 0.0, 0.0)
            assert result.mode is ConverterMode.WAITING

    asyncio.run(main())


def test_dcdc_v2_routes(tmp_path: Path) -> None:
    config, policy = _files(tmp_path, "dcdc_v2")
    world = World.with_units(2, initial_rsoc=40.0)
    app = create_driver_app(EmulatedDriver(world, world.unit_ids[0]), CommandLimits())

    async def main() -> None:
        driver = driver_from_config(config, policy, transport=httpx.ASGITransport(app=app))
        async with driver:
            assert driver.routes == "dcdc_v2"
            version = await driver.version()
            assert version.comm_interface_version.startswith("2.")
            data = await driver.read()
            assert data.battery.rsoc == pytest.approx(40.0, abs=0.5)

    asyncio.run(main())


def test_dcdc_v1_is_refused_by_name(tmp_path: Path) -> None:
    config, policy = _files(tmp_path, "dcdc_v1")
    with pytest.raises(UnsupportedSystemType, match="systemType = 'dcdc_v1'"):
        driver_from_config(config, policy)

"""The driver config file: camelCase keys, hwConfig narrowing the command limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from apis.hardware.driver import CommandLimits
from apis.hardware.driverconfig import load_driver_config


def test_load_with_hwconfig(tmp_path: Path) -> None:
    (tmp_path / "hw.json").write_text(json.dumps({"#": "comment", "gridCurrentCapacityA": 3.0}))
    (tmp_path / "driver.json").write_text(json.dumps({
        "hwConfigFile": "hw.json",
        "battery": {"port": "/dev/ttyA", "baudrate": 115200, "slave": 2, "timeoutMsec": 500},
        "converter": {"port": "/dev/ttyB", "address2": 17, "cib": 40},
        "watchdog": {"periodMsec": 2000},
    }))
    config, hw = load_driver_config(tmp_path / "driver.json")
    battery = config.battery.settings()
    assert (battery.port, battery.baudrate, battery.slave, battery.timeout_s) == (
        "/dev/ttyA", 115200, 2, 0.5)
    converter = config.converter.settings()
    assert converter.address.ad2 == 17 and converter.protection.cib == 40
    assert config.watchdog.settings().period_s == 2.0
    assert CommandLimits.from_hwconfig(hw).dig_max == 3.0


def test_bad_values_are_named(tmp_path: Path) -> None:
    (tmp_path / "driver.json").write_text(json.dumps({"battery": {"baudrate": 1234}}))
    config, _ = load_driver_config(tmp_path / "driver.json")
    with pytest.raises(ValueError, match="baudrate = 1234"):
        config.battery.settings()
    (tmp_path / "driver.json").write_text(json.dumps({"battery": {"slave": 0}}))
    with pytest.raises(ValidationError, match="slave"):
        load_driver_config(tmp_path / "driver.json")

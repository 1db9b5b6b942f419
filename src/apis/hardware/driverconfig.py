"""The driver's config file (JSON, camelCase keys like the other APIS files).

Example (every key optional except the two ports):

    {
      "hwConfigFile": "hwConfig.json",
      "battery": {"port": "/dev/ttyUSB0", "baudrate": 9600, "slave": 1,
                  "timeoutMsec": 1000, "attempts": 2, "retryWaitMsec": 500},
      "converter": {"port": "/dev/ttyUSB1", "baudrate": 19200, "address1": 0, "address2": 16,
                    "timeoutMsec": 200, "timeoutRetries": 3, "errorRetries": 3,
                    "retryWaitMsec": 100,
                    "cib": 52, "ubv": 40, "ugv": 300, "obv": 59, "ogv": 400},
      "watchdog": {"forceWaiting": true, "periodMsec": 10000}
    }

`hwConfigFile` (relative to this file) narrows the command limits to the unit's
`gridCurrentCapacityA` and `safety.range.dcdc.meter.vg`; without it the hwConfig defaults apply.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from apis.config.base import ConfigModel, strip_comments
from apis.config.hwconfig import HwConfig
from apis.hardware import eza2500 as eza
from apis.hardware.converter import ConverterSettings, ProtectionSettings
from apis.hardware.modbus import ModbusSettings
from apis.hardware.real import WatchdogSettings


class BatteryLink(ConfigModel):
    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    slave: int = Field(1, ge=1, le=247)
    timeout_msec: int = Field(1000, gt=0)
    attempts: int = Field(2, ge=1)
    retry_wait_msec: int = Field(500, ge=0)

    def settings(self) -> ModbusSettings:
        return ModbusSettings(self.port, self.baudrate, self.slave, self.timeout_msec / 1000,
                              self.attempts, self.retry_wait_msec / 1000)


class ConverterLink(ConfigModel):
    port: str = "/dev/ttyUSB1"
    baudrate: int = 19200
    address1: int = Field(0, ge=0, le=255)
    address2: int = Field(16, ge=0, le=255)
    timeout_msec: int = Field(200, gt=0)
    timeout_retries: int = Field(3, ge=0)
    error_retries: int = Field(3, ge=0)
    retry_wait_msec: int = Field(100, ge=0)
    cib: float = 52.0
    ubv: float = 40.0
    ugv: float = 300.0
    obv: float = 59.0
    ogv: float = 400.0

    def settings(self) -> ConverterSettings:
        return ConverterSettings(
            self.port, self.baudrate, eza.Address(self.address1, self.address2),
            self.timeout_msec / 1000, self.timeout_retries, self.error_retries,
            self.retry_wait_msec / 1000,
            ProtectionSettings(self.cib, self.ubv, self.ugv, self.obv, self.ogv),
        )


class Watchdog(ConfigModel):
    force_waiting: bool = True
    period_msec: int = Field(10000, gt=0)

    def settings(self) -> WatchdogSettings:
        return WatchdogSettings(self.force_waiting, self.period_msec / 1000)


class DriverConfig(ConfigModel):
    hw_config_file: str | None = None
    battery: BatteryLink = BatteryLink()
    converter: ConverterLink = ConverterLink()
    watchdog: Watchdog = Watchdog()


def load_driver_config(path: Path) -> tuple[DriverConfig, HwConfig]:
    """The driver config and the unit's hwConfig it names (defaults if none)."""
    with path.open() as f:
        config = DriverConfig.model_validate(strip_comments(json.load(f)))
    hw = HwConfig()
    if config.hw_config_file:
        with (path.parent / config.hw_config_file).open() as f:
            hw = HwConfig.model_validate(strip_comments(json.load(f)))
    return config, hw

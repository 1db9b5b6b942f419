"""config.json: one unit's identity, file paths, driver connection (read once at start-up)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from apis.config.base import ConfigModel

SystemType = Literal["dcdc_emulator", "dcdc_v1", "dcdc_v2"]


class Security(ConfigModel):
    enabled: bool = False
    pem_key_file: str | None = None
    pem_cert_file: str | None = None


class Endpoint(ConfigModel):
    host: str = "localhost"
    port: int = Field(ge=1, le=65535)


class Connection(ConfigModel):
    emulator: Endpoint = Endpoint(port=4390)
    dcdc_controller: Endpoint = Endpoint(port=4380)
    emu_driver: Endpoint = Endpoint(port=8080)


class ControlCenter(ConfigModel):
    # The original defaults to true; we have no control-center client, so true only warns.
    enabled: bool = True
    account: str | None = None
    password: str | None = None


class Watchdog(ConfigModel):
    enabled: bool = False
    period_msec: int = Field(5000, gt=0)
    host: str = "localhost"
    port: int = Field(12345, ge=1, le=65535)
    uri: str = "/restart"
    request_timeout_msec: int = Field(5000, gt=0)


class BatteryCapacityManagement(ConfigModel):
    enabled: bool = False


class UnitConfig(ConfigModel):
    program_id: str = "apis-main"
    community_id: str = "NA"
    cluster_id: str = "NA"
    security: Security = Security()
    unit_id: str = Field(min_length=1)
    unit_name: str | None = None  # default "auto<unitId>"
    serial_number: str = "NA"
    system_type: SystemType
    hw_config_file: str
    policy_file: str
    scenario_file: str
    state_file_format: str = "{tmpdir}/apis/state/%s"
    deal_log_dir_format: str = "'{tmpdir}/apis/dealLog/'uuuu'/'MM'/'dd"
    file_system_exclusive_lock_file_format: str = "{tmpdir}/.apis.%s.lock"
    policy_file_read_timeout_msec: int = Field(60000, gt=0)
    connection: Connection = Connection()
    control_center: ControlCenter = ControlCenter()
    watchdog: Watchdog = Watchdog()
    battery_capacity_management: BatteryCapacityManagement = BatteryCapacityManagement()

    @model_validator(mode="before")
    @classmethod
    def _no_encrypted(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key.endswith(".encrypted"):
                    raise ValueError(
                        f"{key} (encrypted values are not supported; store the plain value "
                        f"under {key.removesuffix('.encrypted')!r} and protect the file instead)"
                    )
        return data

    @property
    def display_name(self) -> str:
        return self.unit_name or f"auto{self.unit_id}"

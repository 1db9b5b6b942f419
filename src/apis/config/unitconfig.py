"""config.json: one unit's identity, file paths, driver connection (read once at start-up)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from apis.config.base import ConfigModel, rule
from apis.loglevels import python_level

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


class BusTls(ConfigModel):
    """TLS to the NATS servers: the CA that signed them, and this unit's own certificate and
    key when the servers verify clients. Relative paths are relative to config.json."""

    ca_file: str = Field(min_length=1)
    cert_file: str | None = None
    key_file: str | None = None

    @rule
    def _pair(self) -> list[str]:
        if (self.cert_file is None) != (self.key_file is None):
            return ["certFile and keyFile (give both or neither)"]
        return []


class BusConfig(ConfigModel):
    """Ours, not in the original: the NATS servers of the cluster bus (`apis unit`).

    With `tls` every server URL must be ``tls://``: a unit never falls back to a plain
    connection. `user`/`password` or `credsFile` (a NATS ``.creds`` file) authenticate it.
    """

    servers: list[str] = Field(default=["nats://127.0.0.1:4222"], min_length=1)
    tls: BusTls | None = None
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    # Ours: the Grid Master lease and the voltage reference claim are written by the lease
    # service (`apis.unit.leaseservice`), the unit only asks it (a secured bus, where the
    # unit may not write them; `apis config secure` sets it).
    lease_service: bool = False

    @rule
    def _schemes(self) -> list[str]:
        broken = []
        for url in self.servers:
            scheme = url.split("://", 1)[0] if "://" in url else ""
            if scheme not in ("nats", "tls"):
                broken.append(f"servers: {url!r} (must start with nats:// or tls://)")
            elif self.tls is not None and scheme != "tls":
                broken.append(f"servers: {url!r} is plain but tls is configured (use tls://)")
        return broken

    @rule
    def _one_way_to_authenticate(self) -> list[str]:
        if (self.user is None) != (self.password is None):
            return ["user and password (give both or neither)"]
        if self.user is not None and self.creds_file is not None:
            return ["user/password and credsFile (give one way to authenticate)"]
        return []


class ActionLogMulticast(ConfigModel):
    """UDP multicast of the action log lines, for the original apis-log (one datagram a line)."""

    group: str
    port: int = Field(ge=1, le=65535)
    interface: str | None = None  # an IPv4 address of this board (default: the system's)
    ttl: int = Field(1, ge=1, le=255)


class ActionLog(ConfigModel):
    """Ours: the unit's action log in the original apis-main line format.

    `directory` (relative to config.json) gets `<unitId>.log` (every line) and `<unitId>.err`
    (WARNING and up), each rotated at `maxBytes` keeping `backupCount` old files. Lines at
    `publishLevel` and up (java.util.logging or Python names) go on the bus, and with
    `multicast` as UDP datagrams; `apis.multicastLogHandlerLevel` changes that level at run
    time for the whole cluster (an empty value returns to this one).
    """

    directory: str | None = None
    max_bytes: int = Field(10_000_000, ge=1)
    backup_count: int = Field(10, ge=0)
    publish: bool = True
    publish_level: str = "INFO"
    multicast: ActionLogMulticast | None = None

    @field_validator("publish_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        python_level(value)  # ValueError names the value and the known levels
        return value


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
    bus: BusConfig | None = None  # ours: the NATS servers (None: the in-memory bus or defaults)
    action_log: ActionLog | None = None  # ours: log files, bus and multicast of the log lines

    @classmethod
    def refused_keys(cls, data: dict[Any, Any]) -> dict[Any, str]:
        return {
            key: f"{key} (encrypted values are not supported; store the plain value "
                 f"under {key.removesuffix('.encrypted')!r} and protect the file instead)"
            for key in data
            if isinstance(key, str) and key.endswith(".encrypted")
        }

    @property
    def display_name(self) -> str:
        return self.unit_name or f"auto{self.unit_id}"

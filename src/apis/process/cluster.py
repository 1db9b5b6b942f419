"""The distributed system on one box: a NATS cluster, the emulator and N unit processes.

    async with LocalCluster(directory, units=4) as cluster:
        cluster.signal_unit("E002", signal.SIGKILL)     # kill -9 one unit
        cluster.nats.kill(0)                            # kill -9 one nats-server
        conflicts = await cluster.emulator_get("/get/conflicts")

Everything listens on 127.0.0.1 only. The directory receives the cluster's configuration
(`config/`: policy.json and one folder per unit, written by `apis config init`'s generator,
with each config.json's `bus` key naming the servers), the servers' configs, stores and logs
(`nats/`), and one log file per process (`logs/`).

With `records`, the records receiver (`apis records`) runs too, as one more child: its store
is `records/records.sqlite`, its bus configuration `records/bus.json` (the `apis-records`
identity), and every unit publishes its action log lines on the bus for it.

The bus is secured unless told otherwise (`secure`; off when `server_tls` or `user` is
given): a CA and a certificate per unit, for the web, for records and for the lease service
in `pki/` (`apis.bus.security`), servers that accept only clients with such a certificate
over TLS and give each identity its permissions, units configured with their own
certificate, and one lease service per server (`lease_services`; `apis.unit.leaseservice`:
the only writer of the Grid Master lease and the voltage reference claim) started before
the units; a test's or a tool's client connects with `tls_context(identity)`. Every process
is a child in its own session; `stop` sends SIGTERM, waits, then SIGKILL, and waits for each
(also after a failure, from `__aexit__`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from apis.bus import security
from apis.bus.natsserver import NatsCluster, TlsFiles, free_port

DEFAULT_RSOC = (88.0, 30.0, 62.0, 45.0, 75.0, 35.0)


def merge(base: dict[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `change` merged in, dictionaries key by key."""
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class ChildProcess:
    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, env: Mapping[str, str] | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is running already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the caller reaches it once, through us
            env={**os.environ, **(env or {})},
        )

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(sig)

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` s; wait for it either way."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a paused one must run to end
                process.terminate()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + grace
                while process.poll() is None and loop.time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # a child's exit sets no event to wait on
                if process.poll() is None:
                    process.kill()
            process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        return process.returncode if process is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class LocalCluster:
    """A NATS cluster (`servers` nats-servers with JetStream), the emulator and N units."""

    def __init__(
        self,
        directory: Path,
        units: int = 4,
        *,
        servers: int = 3,
        policy: Mapping[str, Any] | None = None,
        rsoc: Sequence[float] | None = None,
        houses: bool = True,
        idle_units: Sequence[str] = (),
        server_tls: TlsFiles | None = None,
        client_tls: Mapping[str, str] | None = None,
        user: str | None = None,
        password: str | None = None,
        start_units: bool = True,
        python: str = sys.executable,
        emulator_port: int | None = None,
        secure: bool | None = None,
        records: bool = False,
        records_unit_data_period_s: float = 60.0,
        lease_services: int | None = None,
    ) -> None:
        self.directory = directory
        self.n_units = units
        self.n_servers = servers
        self.policy_changes = dict(policy or {})
        self.rsoc = list(rsoc) if rsoc is not None else [
            DEFAULT_RSOC[i % len(DEFAULT_RSOC)] for i in range(units)
        ]
        self.houses = houses
        self.idle_units = list(idle_units)
        self.server_tls = server_tls
        self.client_tls = dict(client_tls) if client_tls is not None else None
        self.user = user
        self.password = password
        if secure is None:
            secure = server_tls is None and user is None
        elif secure and (server_tls is not None or user is not None):
            raise ValueError("secure and server_tls or user (the secure bus makes its own)")
        self.secure = secure
        if lease_services is None:
            lease_services = servers if secure else 0
        elif lease_services and not secure:
            raise ValueError("lease_services on a bus that is not secured (units write the "
                             "lease themselves there)")
        self.n_lease_services = lease_services
        self.pki = security.Pki(directory / "pki") if secure else None
        self.start_units = start_units
        self.python = python
        self.emulator_port = emulator_port
        self.config_dir = directory / "config"
        self.log_dir = directory / "logs"
        self.nats = NatsCluster(
            servers, user=user, password=password, tls=server_tls, directory=directory / "nats"
        )
        self.emulator: ChildProcess | None = None
        self.units: dict[str, ChildProcess] = {}
        self.lease_services: list[ChildProcess] = []
        self.unit_ids: list[str] = []
        self.with_records = records
        self.records_unit_data_period_s = records_unit_data_period_s
        self.records_dir = directory / "records"
        self.records_store = self.records_dir / "records.sqlite"
        self.records: ChildProcess | None = None

    # ---- life ----------------------------------------------------------------------------

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            self.write_config()
            if self.pki is not None:
                self.secure_servers(self.pki)
            await self.nats.start()
            self.configure_units()
            if self.with_records:  # before the units: it makes the streams their lines go to
                await self.start_records()
            await self.start_lease_services()
            await self.start_emulator()
            if self.start_units:
                for unit_id in self.unit_ids:
                    self.start_unit(unit_id)
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the units (all at once), then the records receiver (it keeps their last
        lines) and the lease services, the emulator, then the servers."""
        await asyncio.gather(*(unit.stop(grace) for unit in self.units.values()))
        await asyncio.gather(*(child.stop(grace) for child in
                               [*([self.records] if self.records else []),
                                *self.lease_services]))
        if self.emulator is not None:
            await self.emulator.stop(grace)
        await self.nats.stop()

    # ---- configuration -------------------------------------------------------------------

    def write_config(self) -> None:
        from apis.config.generate import write_cluster

        write_cluster(self.config_dir, self.n_units)
        policy_path = self.config_dir / "policy.json"
        policy = merge(json.loads(policy_path.read_text()), self.policy_changes)
        policy_path.write_text(json.dumps(policy, indent=2))
        self.unit_ids = list(policy["memberUnitIds"])
        for unit_id in self.idle_units:  # neither requests nor accepts: never in a deal
            path = self.config_dir / unit_id / "scenario.json"
            scenario = json.loads(path.read_text())
            for block in scenario.values():
                if isinstance(block, dict) and "request" in block:
                    block["request"] = {band: {} for band in block["request"]}
                    block["accept"] = {band: {} for band in block["accept"]}
            path.write_text(json.dumps(scenario, indent=2))

    def secure_servers(self, pki: security.Pki) -> None:
        """Certificates for every identity, and the servers' TLS and users (see `secure`)."""
        security.make_pki(pki.directory, security.identities(self.unit_ids))
        self.nats.tls = TlsFiles(
            pki.cert_file(security.SERVER), pki.key_file(security.SERVER), pki.ca_file,
            verify_clients=True, map_clients=True, routes=True,
        )
        self.nats.authorization = security.authorization_config(self.unit_ids)

    def tls_context(self, identity: str = security.RECORDS) -> ssl.SSLContext:
        """A client TLS context with `identity`'s certificate (a unit ID, security.WEB or
        security.RECORDS), for `NatsBus.connect(..., tls=...)` on the secured bus."""
        if self.pki is None:
            raise ValueError("the bus of this cluster is not secured")
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        context.load_cert_chain(
            str(self.pki.cert_file(identity)), str(self.pki.key_file(identity))
        )
        return context

    def config_path(self, unit_id: str) -> Path:
        return self.config_dir / unit_id / "config.json"

    def deal_log_dir(self, unit_id: str) -> Path:
        return self.directory / "dealLog" / unit_id

    def bus_json(self, identity: str | None = None) -> dict[str, Any]:
        """The `bus` key of a client's config (`identity`'s certificate on a secured bus)."""
        if self.pki is not None:
            return security.bus_key(self.pki, identity or security.RECORDS, self.nats.urls)
        bus: dict[str, Any] = {"servers": self.nats.urls}
        if self.client_tls is not None:
            bus["tls"] = self.client_tls
        if self.user is not None:
            bus["user"] = self.user
            bus["password"] = self.password or ""
        return bus

    def configure_units(self) -> None:
        """Point every config.json at the servers, the emulator and this directory."""
        if self.emulator_port is None:
            self.emulator_port = free_port()
        for unit_id in self.unit_ids:
            path = self.config_path(unit_id)
            config = json.loads(path.read_text())
            config = merge(
                config,
                {
                    "bus": self.bus_json(unit_id),
                    "connection": {"emulator": {"host": "127.0.0.1",
                                                "port": self.emulator_port}},
                    "dealLogDirFormat": f"'{self.deal_log_dir(unit_id)}/'uuuu'/'MM'/'dd",
                    "stateFileFormat": f"{self.directory}/state/{unit_id}/%s",
                    "fileSystemExclusiveLockFileFormat": (
                        f"{self.directory}/state/.apis.{unit_id}.%s.lock"
                    ),
                },
            )
            if self.with_records:  # the lines on apis.<unitId>.log, for the receiver
                config = merge(config, {"actionLog": {"publish": True, "publishLevel": "INFO"}})
            path.write_text(json.dumps(config, indent=2))

    # ---- the records receiver ------------------------------------------------------------

    async def start_records(self, ready_timeout: float = 60.0) -> None:
        """`apis records` on this cluster's bus; ready once it has made its streams."""
        self.records_dir.mkdir(parents=True, exist_ok=True)
        bus_config = self.records_dir / "bus.json"
        bus_config.write_text(json.dumps(self.bus_json(security.RECORDS), indent=2))
        self.records = ChildProcess(
            "records",
            [self.python, "-m", "apis", "records", "--bus-config", str(bus_config),
             "--store", str(self.records_store),
             "--unit-data-period", f"{self.records_unit_data_period_s:g}"],
            self.log_dir / "records.log",
        )
        self.records.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while "records: receiving into" not in self.records.log_text():  # its first line
            if not self.records.running:
                raise RuntimeError("the records receiver exited:\n"
                                   f"{self.records.log_text()[-2000:]}")
            if loop.time() > deadline:
                raise RuntimeError(f"the records receiver was not ready within "
                                   f"{ready_timeout} s:\n{self.records.log_text()[-2000:]}")
            await asyncio.sleep(0.2)

    # ---- the lease service ---------------------------------------------------------------

    async def start_lease_services(self, ready_timeout: float = 60.0) -> None:
        """One copy of the lease service per server (`lease_services` of them), copy i
        connected to server i only; wait until each serves."""
        if self.pki is None or not self.n_lease_services:
            return
        from apis.process.lease import READY_LINE

        urls = self.nats.urls
        folder = self.directory / "lease"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(self.n_lease_services):
            path = folder / f"bus-{index + 1}.json"
            bus = security.bus_key(self.pki, security.LEASE, [urls[index % len(urls)]])
            path.write_text(json.dumps(bus, indent=2))
            service = ChildProcess(
                f"lease-{index + 1}",
                [self.python, "-m", "apis", "lease-service", "--bus-config", str(path)],
                self.log_dir / f"lease-{index + 1}.log",
            )
            self.lease_services.append(service)
            service.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        for service in self.lease_services:
            while READY_LINE not in service.log_text():
                if not service.running:
                    raise RuntimeError(f"{service.name} exited:\n{service.log_text()[-2000:]}")
                if loop.time() > deadline:
                    raise RuntimeError(f"{service.name} not serving within {ready_timeout} s")
                await asyncio.sleep(0.1)

    def lease_service(self, index: int) -> ChildProcess:
        """Copy `index` (0-based) of the lease service."""
        return self.lease_services[index]

    # ---- the emulator --------------------------------------------------------------------

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    async def start_emulator(self, ready_timeout: float = 60.0) -> None:
        args = [
            self.python, "-m", "apis", "cluster", "emulator",
            "--dir", str(self.config_dir), "--port", str(self.emulator_port),
            "--rsoc", ",".join(f"{r:g}" for r in self.rsoc),
        ]
        if not self.houses:
            args.append("--no-houses")
        self.emulator = ChildProcess("emulator", args, self.log_dir / "emulator.log")
        self.emulator.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while True:
            if not self.emulator.running:
                raise RuntimeError(f"the emulator exited:\n{self.emulator.log_text()[-2000:]}")
            try:
                await self.emulator_get("/get/acc")
                return
            except httpx.HTTPError:
                if loop.time() > deadline:
                    raise RuntimeError("the emulator did not answer within "
                                       f"{ready_timeout} s") from None
                await asyncio.sleep(0.2)

    async def emulator_get(self, path: str, **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.emulator_url, timeout=10.0) as client:
            response = await client.get(path, params=params)
            response.raise_for_status()
            return response.json()

    # ---- units ---------------------------------------------------------------------------

    def unit_process(self, unit_id: str) -> ChildProcess:
        unit = self.units.get(unit_id)
        if unit is None:
            unit = self.units[unit_id] = ChildProcess(
                unit_id,
                [self.python, "-m", "apis", "unit", "--config", str(self.config_path(unit_id))],
                self.log_dir / f"{unit_id}.log",
            )
        return unit

    def start_unit(self, unit_id: str) -> ChildProcess:
        unit = self.unit_process(unit_id)
        unit.start()
        return unit

    def signal_unit(self, unit_id: str, sig: int) -> None:
        self.units[unit_id].signal(sig)

    async def stop_unit(self, unit_id: str, grace: float = 10.0) -> int | None:
        return await self.units[unit_id].stop(grace)

    def exited(self) -> list[str]:
        """Children that have ended by themselves (units, the lease services, the emulator,
        the records receiver)."""
        children = [*self.units.values(), *self.lease_services,
                    *([self.emulator] if self.emulator else []),
                    *([self.records] if self.records else [])]
        return [c.name for c in children if c.process is not None and not c.running]


# ---- the emulator process ----------------------------------------------------------------


async def serve_emulator(
    config_dir: Path, port: int, rsoc: Sequence[float] | None, houses: bool
) -> None:
    """The emulator for the units of `config_dir` (each with its own hwConfig), real time."""
    import uvicorn

    from apis.config import load_cluster
    from apis.emulator import ConverterModel, World
    from apis.emulator.server import create_emulator_app
    from apis.listening import CommandServer, bind_listener

    config = load_cluster(config_dir)
    world = World(
        [(u.unit_id, u.hw_config) for u in config.units],
        config.grid,
        start=datetime.combine(date.today(), time(10, 0)),
        # quick enough for the checkpoints (3 reads 100 ms apart) after a set-point change
        converter=ConverterModel(voltage_ramp_v_per_s=300.0, response_time_s=0.05),
        initial_rsoc=list(rsoc) if rsoc else None,
    )
    if not houses:
        for unit_id in world.unit_ids:
            world.set_house_override(unit_id, pv_w=0.0, load_w=0.0)

    sock = bind_listener("127.0.0.1", port)
    port = sock.getsockname()[1]  # the one chosen for port 0
    server = CommandServer(  # the loop below owns the signals
        uvicorn.Config(
            create_emulator_app(world, port), host="127.0.0.1", port=port, log_level="warning",
            lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    print(f"emulating {world.n_units} units on http://127.0.0.1:{port}/", flush=True)
    async with asyncio.TaskGroup() as tasks:
        stepping = tasks.create_task(world.run(0.2))
        await server.serve(sockets=[sock])
        stepping.cancel()

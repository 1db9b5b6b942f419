"""A real PostgreSQL server for the tests, on 127.0.0.1 in a temporary folder.

PostgreSQL refuses to run as root: as root the server runs as `nobody` (the folder is
given to it). The Debian package's binaries are used (/usr/lib/postgresql/<version>/bin).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from apis.bus.natsserver import free_port

DATABASE = "records"
SUPERUSER = "apis"


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def unavailable() -> str | None:
    """Why no server can be started here, or None."""
    if postgres_bin() is None:
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "running as root and there is no user 'nobody' to run PostgreSQL as"
    return None


class PostgresServer:
    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="apis-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "postgres.log"
        self._user: str | None = "nobody" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=self._user, timeout=120)

    async def start(self) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None, unavailable()
        os.chmod(self.root, 0o755)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        await asyncio.to_thread(
            self._run, str(bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )
        self.port = free_port()
        self._launch()
        await self._wait_ready()

    def _launch(self) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=20"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                user=self._user, start_new_session=True,
            )

    async def restart(self) -> None:
        """Start the server again (after `kill`) on the same port and data."""
        self._launch()
        await self._wait_ready(create=False)

    async def _wait_ready(self, timeout: float = 60.0, create: bool = True) -> None:
        import psycopg

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        admin = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres ended: {self.log_path.read_text()[-2000:]}")
            try:
                conn = await psycopg.AsyncConnection.connect(admin, autocommit=True,
                                                             connect_timeout=2)
            except psycopg.OperationalError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            async with conn:
                if create:
                    await conn.execute(f"CREATE DATABASE {DATABASE}")
            return

    def kill(self) -> None:
        """kill -9: the server is gone at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_server(*, fsync: bool = False) -> AsyncIterator[PostgresServer]:
    server = PostgresServer(fsync=fsync)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()

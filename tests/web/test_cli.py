"""`apis web --bus nats://...` as a separate process against a cluster on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.web.token import ControlToken, TokenError, control_token

pytestmark = pytest.mark.timeout(180)


def command_line(pid: int) -> str:
    """What `ps` shows every user of the machine: the process's arguments."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_bad_options() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["web", "--bus", "memory"])
    assert result.exit_code == 2 and "nats://" in result.output
    result = runner.invoke(app, ["web", "--bus", "nats://127.0.0.1:4222", "--port", "70000"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["web", "--help"])
    assert result.exit_code == 0 and "--bus" in result.output and "127.0.0.1" in result.output


async def test_apis_web_over_nats(tmp_path: Path) -> None:
    """No token given: a new one in a 0600 file whose path is printed; the token is in no
    output and in no process's arguments; a one-time login link hands it to a page."""
    natsserver = pytest.importorskip("apis.bus.natsserver")
    from apis.bus.nats import NatsBus
    from tests.web.fakes import FakeCluster

    try:
        natsserver.find_nats_server()
    except natsserver.NatsServerError as e:
        pytest.skip(str(e))
    token_file = tmp_path / "state" / "web-token"
    async with natsserver.NatsCluster(size=1) as nats_cluster:
        url = nats_cluster.urls[0]
        bus = await NatsBus.connect(url, name="fake-cluster")
        fake = await FakeCluster(None, bus=bus).start()
        env = {k: v for k, v in os.environ.items() if k != "APIS_WEB_TOKEN"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apis", "web", "--bus", url, "--port", "0",
            "--token-file", str(token_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        printed: list[str] = []
        try:
            assert proc.stdout is not None
            for _ in range(4):
                printed.append((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())
            line, token_line, link_line, _docs = printed
            assert line.startswith("APIS operations UI: http://127.0.0.1:"), line
            base = line.split(": ", 1)[1].strip()
            assert token_line.strip() == f"control token: in {token_file} (new, mode 0600)"
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            token = token_file.read_text().strip()
            assert len(token) >= 16
            assert "--token-file" in command_line(proc.pid)
            assert token not in command_line(proc.pid)
            code = link_line.split("#login=", 1)[1].strip()
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                for _ in range(120):
                    units = (await client.get("/api/units")).json()
                    if units["units"]:
                        break
                    await asyncio.sleep(0.5)
                assert set(units["units"]) == {"E001", "E002", "E003"}
                grid = (await client.get("/api/grid")).json()
                assert grid["available"] is False
                r = await client.put("/api/operation-mode", json={"mode": "heteronomous"})
                assert r.status_code == 401
                r = await client.post("/api/login", json={"code": code})
                assert r.status_code == 200 and r.json() == {"token": token}
                r = await client.put("/api/operation-mode", json={"mode": "heteronomous"},
                                     headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
                assert fake.global_mode == "heteronomous"
                assert (await client.get("/getStatus")).json() == {"active": True}
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await fake.close()
        rest = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert proc.returncode == 0, rest
        assert token not in "".join(printed) + rest


def test_token_on_the_command_line_is_refused_with_where_to_put_it() -> None:
    result = CliRunner().invoke(app, ["web", "--bus", "nats://127.0.0.1:4222",
                                      "--token", "secret-secret-secret"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "ps" in text and "--token-file" in text and "APIS_WEB_TOKEN" in text
    assert "secret-secret-secret" not in result.output


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("a-token-of-enough-length\n")
    path.chmod(0o644)
    result = CliRunner().invoke(app, ["web", "--bus", "nats://127.0.0.1:4222",
                                      "--token-file", str(path)])
    assert result.exit_code == 2
    assert f"{path}: mode 0644 lets other users read it" in " ".join(result.output.split())
    assert "a-token-of-enough-length" not in result.output


def test_where_the_token_comes_from(tmp_path: Path) -> None:
    path = tmp_path / "token"
    env = {"APIS_WEB_TOKEN": "from-the-environment-1234", "XDG_STATE_HOME": str(tmp_path)}
    token = control_token(None, env)
    assert (token.value, token.source) == ("from-the-environment-1234", "$APIS_WEB_TOKEN")
    assert "from-the-environment" not in repr(token)
    made = control_token(path, env)  # a file given wins over the environment
    assert made.source == f"{path} (new, mode 0600)"
    assert control_token(path, env) == ControlToken(made.value, str(path))  # read again
    default = control_token(None, {"XDG_STATE_HOME": str(tmp_path)})
    assert default.source == f"{tmp_path / 'apis' / 'web-token'} (new, mode 0600)"
    assert stat.S_IMODE((tmp_path / "apis").stat().st_mode) == 0o700
    with pytest.raises(TokenError, match="token of 5 characters"):
        control_token(None, {"APIS_WEB_TOKEN": "short"})


async def test_apis_web_reads_a_records_store_given_by_option(tmp_path: Path) -> None:
    """`apis web --records STORE`: the log viewer, the history page and /api/records read
    the store of `apis records`, read only."""
    natsserver = pytest.importorskip("apis.bus.natsserver")
    from apis.records.store import LogRow, open_store

    try:
        natsserver.find_nats_server()
    except natsserver.NatsServerError as e:
        pytest.skip(str(e))
    records = tmp_path / "records.sqlite"
    store = open_store(str(records))
    store.write([LogRow("o@1", 1, "E001", 1_767_225_600.0, "WARNING", "apis.x", "main",
                        "kept", "[[[apis-main:E001]]] ... kept")], 1_767_225_601.0)
    store.close()
    env = {**os.environ, "APIS_WEB_TOKEN": "a-token-for-this-test-1234"}
    async with natsserver.NatsCluster(size=1) as nats_cluster:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apis", "web", "--bus", nats_cluster.urls[0], "--port", "0",
            "--records", str(records),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        try:
            assert proc.stdout is not None
            printed = [(await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
                       for _ in range(5)]
            base = printed[0].split(": ", 1)[1].strip()
            assert printed[4].startswith(f"records (SQLite {records}, read only)")
            assert f"{base}logs" in printed[4] and f"{base}history" in printed[4]
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                lines = (await client.get("/api/records/logs")).json()["rows"]
                assert [(r["unitId"], r["level"], r["message"]) for r in lines] == [
                    ("E001", "WARNING", "kept")]
                for page in ("/logs", "/history"):
                    r = await client.get(page)
                    assert r.status_code == 200 and "APIS operations" in r.text
                status = (await client.get("/api/records/status")).json()
                assert status["store"] == f"SQLite {records}" and status["units"] == ["E001"]
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        rest = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert proc.returncode == 0, rest

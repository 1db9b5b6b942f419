"""`apis web --bus nats://...` as a separate process against a cluster on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest
from typer.testing import CliRunner

from apis.cli import app

pytestmark = pytest.mark.timeout(180)


def test_bad_options() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["web", "--bus", "memory"])
    assert result.exit_code == 2 and "nats://" in result.output
    result = runner.invoke(app, ["web", "--bus", "nats://127.0.0.1:4222", "--port", "70000"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["web", "--help"])
    assert result.exit_code == 0 and "--bus" in result.output and "127.0.0.1" in result.output


async def test_apis_web_over_nats() -> None:
    natsserver = pytest.importorskip("apis.bus.natsserver")
    from apis.bus.nats import NatsBus
    from tests.web.fakes import FakeCluster

    try:
        natsserver.find_nats_server()
    except natsserver.NatsServerError as e:
        pytest.skip(str(e))
    async with natsserver.NatsCluster(size=1) as nats_cluster:
        url = nats_cluster.urls[0]
        bus = await NatsBus.connect(url, name="fake-cluster")
        fake = await FakeCluster(None, bus=bus).start()
        env = {**os.environ, "APIS_WEB_TOKEN": "nats-token"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apis", "web", "--bus", url, "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line.startswith("APIS operations UI: http://127.0.0.1:"), line
            base = line.split(": ", 1)[1].strip()
            token_line = (await proc.stdout.readline()).decode()
            assert token_line.strip() == "control token: nats-token"
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
                r = await client.put("/api/operation-mode", json={"mode": "heteronomous"},
                                     headers={"Authorization": "Bearer nats-token"})
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

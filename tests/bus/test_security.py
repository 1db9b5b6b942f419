"""`apis config secure`: the certificates, the nats-server configuration it writes (run for
real), the `bus` keys it puts in each unit's config.json, and the permissions they give."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from apis.bus.base import BusError, KeyExists, PermissionDenied
from apis.bus.nats import NatsBus
from apis.bus.natsserver import find_nats_server, free_port
from apis.bus.security import (
    LEASE,
    RECORDS,
    WEB,
    SecurityError,
    authorization_config,
    make_pki,
    permissions,
    write_secure,
)
from apis.cli import app
from apis.config.generate import write_cluster
from apis.config.unitconfig import BusConfig
from apis.process.unit import connect_bus
from apis.unit import subjects
from apis.web.service import Operations

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

UNITS = ["E001", "E002", "E003"]


def test_identities_and_inputs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="identity = 'E 1'"):
        make_pki(tmp_path, ["E 1"])
    with pytest.raises(SecurityError, match="must be a member unit ID"):
        permissions("E009", UNITS)
    with pytest.raises(SecurityError, match=r"policy\.json"):
        write_secure(tmp_path / "none")
    write_cluster(tmp_path / "c", 2)
    with pytest.raises(SecurityError, match="server = 'nats://h:4222'"):
        write_secure(tmp_path / "c", ["nats://h:4222"])
    result = CliRunner().invoke(app, ["config", "secure", str(tmp_path / "none")])
    assert result.exit_code == 1 and "apis config init" in result.output


def test_a_unit_may_sign_only_as_itself_and_not_set_the_mode() -> None:
    unit = permissions("E002", UNITS)
    published = unit["publish"]["allow"]
    assert "apis.*.Controller.control.device.from.E002" in published
    assert not any("from.E001" in s or "from.*" in s for s in published)
    assert not any("operationMode" in s for s in published)
    assert not any(s.endswith(("Controller.control.manual", "*.shutdown", "deal.create"))
                   for s in published)  # the operations interface is the web's
    assert "apis.operationMode" in unit["subscribe"]["deny"]
    web = permissions(WEB, UNITS)["publish"]["allow"]
    assert "apis.operationMode" in web and "$KV.apis_state.operationMode" in web
    assert not any("Controller.control.device" in s or "apis_grid_master." in s for s in web)
    records = permissions(RECORDS, UNITS)["publish"]["allow"]
    assert not any(s.startswith("$KV.") for s in records)
    # records only asks for unit data and files its own samples; it commands nothing
    assert {s for s in records if s.startswith("apis.")} == {
        "apis.records.unitData.*", "apis.GridMaster.data.all", "apis.*.Controller.data"}
    assert authorization_config(UNITS).count('"user": "CN=') == len(UNITS) + 3


def test_only_the_lease_service_writes_the_lease_and_the_claim() -> None:
    unit = permissions("E002", UNITS)
    published = unit["publish"]["allow"]
    assert not any(s.startswith(("$KV.apis_grid_master.", "$KV.apis_voltage_reference."))
                   for s in published)
    assert "$KV.apis_deals.>" in published
    assert "apis.lease.*.from.E002" in published  # its own requests, signed
    assert not any(s.startswith("apis.lease.") and not s.endswith(".from.E002")
                   for s in published)
    assert "apis.lease.>" in unit["subscribe"]["deny"]  # nor hear (and answer) others'
    assert "apis.lease.>" in permissions(WEB, UNITS)["subscribe"]["deny"]
    lease = permissions(LEASE, UNITS)
    assert {s for s in lease["publish"]["allow"] if s.startswith("$KV.")} == {
        "$KV.apis_grid_master.>", "$KV.apis_voltage_reference.>"}
    assert lease["subscribe"]["allow"] == ["apis.lease.>", "_INBOX.>"]


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[Path, str]]:
    """`apis config secure` on a generated cluster, and its nats-server running."""
    directory = tmp_path / "cluster"
    write_cluster(directory, len(UNITS))
    port = free_port()
    layout = write_secure(directory, [f"tls://127.0.0.1:{port}"], store_dir=str(tmp_path),
                          listen_host="127.0.0.1", monitor_port=free_port())
    (config,) = layout.server_configs
    process = await asyncio.create_subprocess_exec(
        str(find_nats_server()), "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert process.returncode is None
        yield directory, f"tls://127.0.0.1:{port}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def bus_config(path: Path) -> BusConfig:
    """The bus a config file names: a unit's config.json (its `bus` key) or a bus.json."""
    data = json.loads(path.read_text())
    return BusConfig.model_validate(data.get("bus", data))


async def connect_from(path: Path, name: str) -> NatsBus:
    bus = bus_config(path)
    connected = await connect_bus(bus, path.parent, name)
    connected.kv_timeout, connected.kv_attempts = 1.0, 2
    return connected


@pytest.mark.timeout(120)
async def test_the_generated_server_config_enforces_identities(
    secured: tuple[Path, str]
) -> None:
    directory, url = secured
    with pytest.raises(BusError, match="cannot connect"):
        await NatsBus.connect([url], name="anonymous", connect_attempts=1)
    e001 = await connect_from(directory / "E001" / "config.json", "E001")
    e002 = await connect_from(directory / "E002" / "config.json", "E002")
    web = await connect_from(directory / "web" / "bus.json", "web")
    records = await connect_from(directory / "records" / "bus.json", "records")
    try:
        senders: list[str | None] = []

        async def command(message: object) -> str:
            senders.append(getattr(message, "sender", None))
            return "done"

        await e001.subscribe(subjects.controller_control("E001", "*"), command)
        assert await e002.request(subjects.controller_control("E001", "E002"), {},
                                  timeout=5) == "done"
        assert senders == ["E002"]
        with pytest.raises(PermissionDenied):  # refused by the server: not E002's to sign
            await e002.request(subjects.controller_control("E001", "E003"), {}, timeout=2)
        assert senders == ["E002"]

        lease = await e002.kv("apis_grid_master", ttl=4.0)
        with pytest.raises(PermissionDenied):  # a unit asks the lease service instead
            await lease.create("gridMasterUnitId", "E002")
        with pytest.raises(PermissionDenied):
            await (await records.kv("apis_grid_master", ttl=4.0)).put("gridMasterUnitId", "x")
        with pytest.raises(PermissionDenied):
            await (await web.kv("apis_grid_master", ttl=4.0)).put("gridMasterUnitId", "x")

        with pytest.raises(PermissionDenied):  # the mode is the web's to set, not a unit's
            await (await e002.kv("apis_state")).put("operationMode", "stop")
        ops = Operations(web, request_timeout_real_s=2.0)  # the web's own path: the key
        await ops.start()
        try:
            result = await ops.set_global_mode("heteronomous", "tester")
        finally:
            await ops.stop()
        assert result["via"] == "apis_state/operationMode"
        entry = await (await records.kv("apis_state")).get("operationMode")
        assert entry is not None and entry.value == "heteronomous"
    finally:
        for bus in (e001, e002, web, records):
            await bus.close()


WEB_TOKEN = "secured-bus-test-token-0123456789"


@pytest.mark.timeout(120)
async def test_apis_web_connects_with_the_web_bus_config(secured: tuple[Path, str]) -> None:
    directory, _ = secured
    result = CliRunner().invoke(
        app, ["web", "--bus-config", str(directory / "nowhere.json")], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 2 and "nowhere.json" in result.output
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apis", "web", "--bus-config", str(directory / "web" / "bus.json"),
        "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "APIS_WEB_TOKEN": WEB_TOKEN},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("APIS operations UI: http://127.0.0.1:"), line
        base = line.split(": ", 1)[1].strip()
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # no unit answers the request: the web writes the key itself, as a secured bus has it
            r = await client.put("/api/operation-mode", json={"mode": "heteronomous"},
                                 headers={"Authorization": f"Bearer {WEB_TOKEN}"})
            assert r.status_code == 200, r.text
        records = await connect_from(directory / "records" / "bus.json", "records")
        try:
            entry = await (await records.kv("apis_state")).get("operationMode")
        finally:
            await records.close()
        assert entry is not None and entry.value == "heteronomous"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(120)
async def test_the_lease_service_runs_from_the_lease_bus_config(
    secured: tuple[Path, str]
) -> None:
    """`apis lease-service --bus-config DIR/lease/bus.json` as `apis config secure` wrote it:
    units (configured with leaseService) take and renew the lease through it."""
    from apis.unit.leaseclient import LeaseServiceClient
    from apis.unit.registry import Registry

    directory, _ = secured
    result = CliRunner().invoke(
        app, ["lease-service", "--bus-config", str(directory / "nowhere.json")],
        env={"COLUMNS": "400"},
    )
    assert result.exit_code == 2 and "nowhere.json" in result.output
    assert bus_config(directory / "E001" / "config.json").lease_service is True
    assert bus_config(directory / "lease" / "bus.json").lease_service is False
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apis", "lease-service", "--bus-config",
        str(directory / "lease" / "bus.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    buses: list[NatsBus] = []
    try:
        assert proc.stdout is not None
        while b"lease service: serving" not in await asyncio.wait_for(proc.stdout.readline(),
                                                                       60):
            pass
        registries = {}
        for unit_id in ("E001", "E002"):
            bus = await connect_from(directory / unit_id / "config.json", unit_id)
            buses.append(bus)
            registries[unit_id] = await Registry.open(bus, LeaseServiceClient(bus, unit_id))
        lock = await registries["E001"].acquire_grid_master("E001")
        assert (lock.unit_id, lock.epoch) == ("E001", lock.epoch)
        with pytest.raises(KeyExists):
            await registries["E002"].acquire_grid_master("E002")
        renewed = await registries["E001"].renew_grid_master(lock, global_errors=True)
        assert renewed.revision > lock.revision and renewed.epoch == lock.epoch
        stored = await registries["E002"].grid_master()
        assert stored is not None and (stored.unit_id, stored.global_errors) == ("E001", True)
        assert await registries["E002"].release_grid_master("E001") is False  # not its own
        assert await registries["E001"].release_grid_master("E001") is True
        assert await registries["E002"].grid_master() is None
    finally:
        for bus in buses:
            await bus.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()

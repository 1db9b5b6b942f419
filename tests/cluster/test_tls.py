"""TLS with a CA made here (openssl CLI), client certificates and a password: units connect;
a unit with a wrong certificate, a wrong password, or TLS configured against a plain server
is refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apis.bus.natsserver import NatsCluster, TlsFiles
from apis.process.cluster import LocalCluster
from tests.cluster.conftest import ClusterFactory, Observer

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=directory)


def make_cert(directory: Path, ca: str, name: str, ext: str) -> None:
    (directory / f"{name}.ext").write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_cert(d, "ca", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    make_cert(d, "ca", "unit", "extendedKeyUsage=clientAuth")
    make_ca(d, "rogue")  # a CA the servers do not trust
    make_cert(d, "rogue", "intruder", "extendedKeyUsage=clientAuth")
    return d


async def start_unit_expecting_refusal(
    cluster: LocalCluster, name: str, bus: dict[str, Any]
) -> str:
    """Run `apis unit` with E002's config but this `bus`; it must exit 2; return its output."""
    path = cluster.config_path("E002").with_name(f"{name}.json")
    config = json.loads(cluster.config_path("E002").read_text())
    config["bus"] = bus
    path.write_text(json.dumps(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apis", "unit", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode == 2, text[-3000:]
    assert "refused to start" in text, text[-3000:]
    return text


async def test_units_connect_over_tls_and_strangers_are_refused(
    make_cluster: ClusterFactory, pki: Path, tmp_path: Path
) -> None:
    client_tls = {"caFile": str(pki / "ca.pem"), "certFile": str(pki / "unit.pem"),
                  "keyFile": str(pki / "unit.key")}
    cluster = await make_cluster(
        servers=1,
        server_tls=TlsFiles(pki / "server.pem", pki / "server.key", pki / "ca.pem",
                            verify_clients=True),
        client_tls=client_tls,
        user="apis",
        password="s3cret",
    )
    import ssl

    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "unit.pem"), str(pki / "unit.key"))
    observer = await Observer.connect(cluster, tls=context, user="apis", password="s3cret")
    try:
        assert all(url.startswith("tls://") for url in cluster.nats.urls)
        await observer.wait_lock(lambda lock: lock is not None, 60)  # the units are up
        url = cluster.nats.urls
        rogue = {"caFile": str(pki / "ca.pem"), "certFile": str(pki / "intruder.pem"),
                 "keyFile": str(pki / "intruder.key")}
        await start_unit_expecting_refusal(
            cluster, "wrong-cert", {"servers": url, "tls": rogue, "user": "apis",
                                    "password": "s3cret"})
        text = await start_unit_expecting_refusal(
            cluster, "wrong-password", {"servers": url, "tls": client_tls, "user": "apis",
                                        "password": "guess"})
        assert "uthorization" in text  # the server's "Authorization Violation"
        assert cluster.exited() == []
    finally:
        await observer.close()
    async with NatsCluster(1, directory=tmp_path / "plain") as plain:
        text = await start_unit_expecting_refusal(
            cluster, "plain-server",
            {"servers": [plain.url(0).replace("nats://", "tls://")], "tls": client_tls})
        assert "plain connection" in text

"""`apis driver --twin` as a real process: curl-like GET of /all/get, commands as POST (GET
only with --legacy-get), foreign Hosts refused, then a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from .test_webapi import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed"),
    pytest.mark.timeout(180),
]


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_driver_twin_serves_all_get(stop_signal: signal.Signals) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from apis.cli import main; main()",
         "driver", "--twin", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    socats: list[int] = []
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/all/get", timeout=10)
                body = response.json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert body is not None, "driver did not answer within 60 s"
        assert response.status_code == 200
        assert set(body) == {"rsoc", "battery_operation_status", "meter", "param", "status",
                             "vdis"}
        assert body["battery_operation_status"] == 3
        assert body["status"]["status"] == "0x0000"
        command = f"http://127.0.0.1:{port}/dcdc/set?mode=0x0000&dvg=350&dig=0"
        refused = httpx.get(command, timeout=10)
        assert refused.status_code == 405 and "--legacy-get" in refused.json()["err"]
        assert httpx.post(command, timeout=10).status_code == 200
        socats = children(process.pid)
        assert len(socats) == 2
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert b"serving http://127.0.0.1" in output
        assert not [pid for pid in socats if alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in socats:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_driver_legacy_get_and_allow_host() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", "from apis.cli import main; main()", "driver", "--twin",
         "--port", str(port), "--legacy-get", "--allow-host", "driver.lan"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    socats: list[int] = []
    try:
        command = f"http://127.0.0.1:{port}/dcdc/set?mode=0x0000&dvg=350&dig=0"
        response = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(command, timeout=10)  # as the original apis-main
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert response is not None, "driver did not answer within 60 s"
        assert response.status_code == 200, response.text
        assert response.json()["status"]["status"] == "0x0000"
        r = httpx.get(f"http://127.0.0.1:{port}/all/get", headers={"Host": "driver.lan"},
                      timeout=10)
        assert r.status_code == 200
        r = httpx.get(command, headers={"Host": f"rebound.example:{port}"}, timeout=10)
        assert r.status_code == 403 and "rebound.example" in r.json()["err"]
        r = httpx.get(command, headers={"Sec-Fetch-Site": "cross-site"}, timeout=10)
        assert r.status_code == 403  # an image tag on another site's page
        socats = children(process.pid)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert b"GET commands too (--legacy-get)" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pid in socats:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

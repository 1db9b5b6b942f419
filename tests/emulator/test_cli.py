"""`apis emulator` is registered and documents its options."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys

import httpx
from typer.testing import CliRunner

from apis.cli import app
from tests.rawhttp import SIXTY_MB, announce_body


def test_emulator_command_help() -> None:
    result = CliRunner().invoke(app, ["emulator", "--help"])
    assert result.exit_code == 0
    for option in ("--units", "--port", "--speed", "--host", "--grid", "--profile-csv",
                   "--legacy-get", "--allow-host"):
        assert option in result.output


def test_emulator_on_port_0_names_the_port_it_serves_on_and_stops_on_ctrl_c() -> None:
    emulator = subprocess.Popen(
        [sys.executable, "-m", "apis", "emulator", "--units", "2", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert emulator.stdout is not None
        first = emulator.stdout.readline()
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", first)
        assert found is not None, first
        port = int(found.group(1))
        assert port != 0, first
        reply = httpx.get(f"http://127.0.0.1:{port}/units/E002/all/get", timeout=10.0)
        assert reply.status_code == 200 and "rsoc" in reply.json(), reply.text
        # Without --legacy-get a GET command is refused; as POST it is served.
        command = {"mode": "0x0000", "dvg": 350, "dig": 0}
        reply = httpx.get(f"http://127.0.0.1:{port}/set/dcdc/E001", params=command, timeout=10)
        assert reply.status_code == 405 and "--legacy-get" in reply.json()["err"]
        reply = httpx.post(f"http://127.0.0.1:{port}/set/dcdc/E001", params=command, timeout=10)
        assert reply.status_code == 200, reply.text
        emulator.send_signal(signal.SIGINT)
        _, stderr = emulator.communicate(timeout=60)
        assert emulator.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        if emulator.poll() is None:
            emulator.kill()
            emulator.wait()


def test_emulator_on_a_taken_port_says_so_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "apis", "emulator", "--units", "2", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"apis emulator: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        result.stderr
    ), result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_emulator_options_legacy_get_and_allow_host_over_a_real_socket() -> None:
    """`--legacy-get` serves the original apis-main's GET commands; `--allow-host` names
    another Host; any other Host is refused; a 60 MB body gets 413 unread."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "apis", "emulator", "--units", "2", "--port", "0",
         "--legacy-get", "--allow-host", "emu.lan"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert emulator.stdout is not None
        first = emulator.stdout.readline()
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", first)
        assert found is not None and "--legacy-get" in first, first
        base = f"http://127.0.0.1:{found.group(1)}"
        command = {"mode": "0x0014", "dvg": 350, "dig": 2}
        with httpx.Client(base_url=base, timeout=10.0) as http:
            r = http.get("/set/dcdc/E001", params=command)  # as the original apis-main
            assert r.status_code == 200 and r.json()["status"]["status"] == "0x0014", r.text
            r = http.get("/get/unit/E001", headers={"Host": "emu.lan"})
            assert r.status_code == 200
            r = http.get("/set/dcdc/E002", params=command, headers={"Host": "rebound.example"})
            assert r.status_code == 403 and "'rebound.example'" in r.json()["err"]
            answer = asyncio.run(announce_body(int(found.group(1)), "POST", "/add/unit"))
            assert answer.status == 413 and str(SIXTY_MB) in answer.json()["err"]
            log = http.get("/get/log").json()
            assert set(log) == {"E001", "E002"}  # /add/unit did not run
            assert log["E002"]["dcdc"]["status"]["status"] == "0x0000"
        emulator.send_signal(signal.SIGINT)
        _, stderr = emulator.communicate(timeout=60)
        assert emulator.returncode == 0, stderr
    finally:
        if emulator.poll() is None:
            emulator.kill()
            emulator.wait()

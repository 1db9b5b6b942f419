"""`apis emulator` is registered and documents its options."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import httpx
from typer.testing import CliRunner

from apis.cli import app


def test_emulator_command_help() -> None:
    result = CliRunner().invoke(app, ["emulator", "--help"])
    assert result.exit_code == 0
    for option in ("--units", "--port", "--speed", "--host", "--grid", "--profile-csv"):
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

"""`apis demo`, the main job, as a user runs it (a real subprocess)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time


def test_demo_one_hour_at_speed_1000_completes_a_deal_and_serves_the_ui() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apis", "demo", "--duration", "1h", "--speed", "1000",
         "--port", "0"],
        capture_output=True, text=True, timeout=600,
    )
    out = " ".join(result.stdout.split())  # the terminal view wraps long lines
    assert result.returncode == 0, result.stdout + result.stderr
    # A one-time login link, never the token itself.
    assert re.search(r"operations UI: http://127\.0\.0\.1:\d+/#login=\S+ \(one-time login link\)",
                     out), out
    assert "token=" not in out, out
    completed = re.search(r"completed deals: (\d+)", out)
    assert completed is not None, out
    assert int(completed.group(1)) >= 1, out
    assert "voltage conflicts: 0" in out, out


def test_ctrl_c_stops_the_demo_cleanly_with_its_summary() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "apis", "demo", "--speed", "1000", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(8.0)  # started, and an hour or two of the cluster simulated
        assert demo.poll() is None, "the demo ended by itself"
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    out = " ".join(stdout.split())
    assert demo.returncode == 0, stdout + stderr
    assert "stopped" in out and "summary after" in out, out
    assert re.search(r"completed deals: \d+", out), out
    # Every task was cancelled and awaited before the loop closed: nothing complains.
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert "error occurred" not in stdout + stderr, stdout + stderr

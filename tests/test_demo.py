"""`apis demo`, the main job, as a user runs it (a real subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_one_hour_at_speed_1000_completes_a_deal_and_serves_the_ui() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apis", "demo", "--duration", "1h", "--speed", "1000",
         "--port", "0"],
        capture_output=True, text=True, timeout=600,
    )
    out = " ".join(result.stdout.split())  # the terminal view wraps long lines
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"operations UI: http://127\.0\.0\.1:\d+/#token=\S+", out), out
    completed = re.search(r"completed deals: (\d+)", out)
    assert completed is not None, out
    assert int(completed.group(1)) >= 1, out
    assert "voltage conflicts: 0" in out, out

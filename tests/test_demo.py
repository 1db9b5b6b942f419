"""`apis demo`, the main job, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from apis.demo import local_time_zone
from apis.records.store import open_store
from apis.unit import lifecycle


def test_demo_one_hour_at_speed_1000_completes_a_deal_and_serves_the_ui(tmp_path: Path) -> None:
    records = tmp_path / "records.sqlite"
    result = subprocess.run(
        [sys.executable, "-m", "apis", "demo", "--duration", "1h", "--speed", "1000",
         "--port", "0", "--records", str(records)],
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
    # the records built up: every unit's lines, the deals' versions, the units' data
    assert f"records: SQLite {records}" in out, out
    store = open_store(str(records))
    try:
        lines = store.query("SELECT unit_id, logger, message FROM log_lines")
        ended = store.query("SELECT DISTINCT deal_id FROM deal_versions "
                            "WHERE state = 'deactivated'")
        units = store.query("SELECT unit_id, COUNT(*) FROM unit_data GROUP BY unit_id")
        summaries = store.query("SELECT deal_id FROM deal_summaries "
                                "WHERE completed_at IS NOT NULL")
        hours = store.query("SELECT unit_id, SUM(samples) FROM unit_hours GROUP BY unit_id")
    finally:
        store.close()
    disposed = {m["dealId"] for _, logger, message in lines
                if logger == lifecycle.LOGGER_NAME
                and (m := lifecycle.PATTERNS["deal disposed"].fullmatch(message))}
    assert len(disposed) >= int(completed.group(1)), lines
    assert disposed <= {deal_id for (deal_id,) in ended}, (disposed, ended)
    assert {u for u, _, _ in lines} <= {"E001", "E002", "E003", "E004"}
    assert sorted(u for u, _ in units) == ["E001", "E002", "E003", "E004"]
    assert all(count >= 50 for _, count in units), units  # one a minute of the hour
    # and the figures derived from them, up to the end
    assert disposed <= {deal_id for (deal_id,) in summaries}, (disposed, summaries)
    sampled = dict(units)  # all counted but those past the figures' horizon (a period)
    assert {u: n for u, n in hours}.keys() == sampled.keys(), (hours, units)
    assert all(sampled[u] - 1 <= n <= sampled[u] for u, n in hours), (hours, units)


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
    assert re.search(r"records: SQLite \S+records\.sqlite \(gone at the end", out), out
    # Every task was cancelled and awaited before the loop closed: nothing complains.
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert "error occurred" not in stdout + stderr, stdout + stderr


def test_records_must_be_a_new_file(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    old.write_bytes(b"")
    for path, problem in [(old, "exists (give a new file)"),
                          (tmp_path / "no" / "r.sqlite", "does not exist")]:
        result = subprocess.run(
            [sys.executable, "-m", "apis", "demo", "--records", str(path), "--no-web"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "500"},  # the error box not wrapped
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert problem in " ".join(result.stderr.split()), result.stderr


def test_the_demo_s_ui_shows_its_records() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "apis", "demo", "--speed", "1000", "--port", "0", "--no-live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "500"},
    )
    try:
        assert demo.stdout is not None
        base = None
        for line in demo.stdout:
            found = re.search(r"records: (http://127\.0\.0\.1:\d+/)logs \(log viewer\), "
                              r"\1history", line)
            if found:
                base = found.group(1)
                break
        assert base is not None, "no records line"
        for page in ("logs", "history"):
            with urllib.request.urlopen(base + page, timeout=30) as answer:
                assert answer.status == 200 and b"<html" in answer.read().lower()
        deadline = time.monotonic() + 120
        while True:  # lines, and the figures' hours, as the simulated time goes by
            with urllib.request.urlopen(base + "api/records/logs?unit=E001,E002,E003,E004",
                                        timeout=30) as answer:
                lines = json.load(answer)["rows"]
            with urllib.request.urlopen(base + "api/records/energy?resolution=hour",
                                        timeout=30) as answer:
                hours = json.load(answer)["rows"]
            if lines and {h["unitId"] for h in hours} == {"E001", "E002", "E003", "E004"}:
                break
            assert time.monotonic() < deadline, (lines, hours)
            time.sleep(1.0)
        assert all(line["line"].startswith(f"[[[apis-main:{line['unitId']}]]] ")
                   for line in lines), lines
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr, stdout + stderr


def test_the_figures_days_are_the_zone_of_the_simulated_calendar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for tz, zone in [("Asia/Tokyo", "Asia/Tokyo"), (":Europe/Paris", "Europe/Paris"),
                     ("JST-9", "UTC"), ("", "UTC")]:
        monkeypatch.setenv("TZ", tz)
        assert local_time_zone() == zone, tz

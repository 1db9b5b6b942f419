"""Sweeps in worker processes (`apis sim --sweep ... --jobs N`): the same files as one case
after another, progress from every case, a failing case or Ctrl-C stops every worker and
leaves no process or temporary file behind; nor does a killed sweep leave a process."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apis.cli import app
from apis.sim.community import SimSettings
from apis.sim.sweep import run_sweep

runner = CliRunner()

# One hour with deals (made, one completed, others running at the end), as
# test_determinism.py; the sweep keeps the seed, so both cases make deals.
SETTINGS = SimSettings(
    units=4, days=1 / 24, start=datetime(2020, 1, 1, 10), seed=5,
    initial_rsoc=(88.0, 22.0, 86.0, 30.0),
)
PARAMETER, VALUES = "mediator.deal.gridCurrentA", ["1", "2"]
# run-info.json: what depends on the wall clock or on the process that ran the case.
WALL_CLOCK_KEYS = {"wall_s", "speed", "baseline_wall_s", "peak_memory_mb"}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def _sweep(out: Path, jobs: int) -> tuple[dict[str, bytes], dict[str, tuple[float, float]]]:
    """The files a sweep writes and the last progress each phase reported."""
    last: dict[str, tuple[float, float]] = {}

    def progress(phase: str, done: float, total: float) -> None:
        last[phase] = (done, total)

    cases, _files_written = run_sweep(SETTINGS, PARAMETER, VALUES, out, progress, jobs=jobs)
    assert [c.value for c in cases] == VALUES
    assert all(c.files and c.files[0].parent == out / "cases" / f"{PARAMETER}={c.value}"
               for c in cases)
    return _files(out), last


def test_workers_write_what_one_process_writes(tmp_path: Path) -> None:
    serial, serial_progress = _sweep(tmp_path / "serial", jobs=1)
    parallel, parallel_progress = _sweep(tmp_path / "parallel", jobs=2)
    assert sorted(serial) == sorted(parallel)
    for value in VALUES:
        summary = json.loads(serial[f"cases/{PARAMETER}={value}/summary.json"])
        assert summary["deals"]["made"] >= 1
    compared = 0
    for name, content in serial.items():
        if name.endswith("run-info.json"):
            # The only file with wall-clock figures: the rest of it must agree.
            ours, theirs = json.loads(content), json.loads(parallel[name])
            assert WALL_CLOCK_KEYS <= set(ours)
            for key in WALL_CLOCK_KEYS:
                del ours[key], theirs[key]
            assert ours == theirs, name
        else:
            # summary.json, units.csv, deals.csv, sim.log, the PNGs, report.html and
            # sweep.csv, sweep.md, sweep.png: byte for byte.
            assert content == parallel[name], name
            compared += 1
    assert compared >= 2 * 9 + 3
    # Every phase of every case reported, through to its end.
    phases = {f"{PARAMETER}={v} {p}" for v in VALUES for p in ("sharing", "baseline")}
    assert set(serial_progress) == set(parallel_progress) == phases
    assert all(done == total for done, total in parallel_progress.values())


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sim", "--sweep", "seed=1,2", "--jobs", "0", "--out",
                                 str(tmp_path / "x"), "-q"])
    assert result.exit_code == 2
    assert "--jobs = 0 (must be >= 1)" in result.output
    assert not (tmp_path / "x").exists()


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every process (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return found


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@linux_only
def test_a_failing_case_stops_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gridCurrentA=abc fails as its worker loads the community; the other case (a whole
    # day) is still running then, and must be stopped rather than finished.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "sim", "--units", "3", "--days", "1", "--sweep", f"{PARAMETER}=1,abc",
        "--jobs", "2", "--out", str(out), "-q",
    ])
    assert result.exit_code == 2, result.output
    assert (
        f"apis sim: sweep case {PARAMETER}=abc: policy.json: {PARAMETER} = 'abc' "
        "(must be a number)"
    ) in result.output
    assert not (out / "cases" / f"{PARAMETER}=1" / "summary.json").exists()
    assert not (out / "sweep.csv").exists()
    assert multiprocessing.active_children() == []
    # The workers are the forkserver's children: none left.
    processes = _processes()
    servers = [pid for pid, (ppid, _, cmd) in processes.items()
               if ppid == os.getpid() and "forkserver" in cmd]
    assert not [pid for pid, (ppid, _, _) in processes.items() if ppid in servers]
    assert list(scratch.iterdir()) == []  # the communities' temporary files too


@linux_only
@pytest.mark.parametrize("killed", [False, True], ids=["ctrl-c", "killed"])
def test_no_worker_outlives_the_sweep(tmp_path: Path, killed: bool) -> None:
    # Ctrl-C: the command stops its workers. Killed (SIGKILL, nothing to clean up): each
    # worker sees the command gone and leaves by itself (its temporary files stay). Thirty
    # days per case: a worker left to finish would outlast the deadlines below.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", "from apis.cli import main; main()", "sim",
               "--units", "3", "--days", "30", "--sweep", "seed=1,2", "--jobs", "2",
               "--out", str(tmp_path / "out"), "-q"]
    # Its own session, as a terminal's foreground job: Ctrl-C signals the whole group.
    sweep = subprocess.Popen(command, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def group() -> list[int]:
        return [pid for pid, (_, pgid, _) in _processes().items() if pgid == sweep.pid]

    try:
        # Generous bounds (only reached when something is wrong): a loaded 2-core machine
        # once took more than 60 s to start the command, its forkserver and the workers.
        deadline = time.monotonic() + 180
        # The command, the forkserver and two workers (and multiprocessing's resource
        # tracker); then let the workers run a moment.
        while len(group()) < 4:
            assert sweep.poll() is None, sweep.communicate()[0]
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        time.sleep(1)
        if killed:
            os.kill(sweep.pid, signal.SIGKILL)
        else:
            os.killpg(sweep.pid, signal.SIGINT)
        output = sweep.communicate(timeout=60)[0]
        assert sweep.returncode != 0, output
        # The forkserver and the resource tracker leave when the command has gone.
        deadline = time.monotonic() + 60
        while group() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group() == []
        if not killed:
            assert list(scratch.iterdir()) == []
            assert sweep.returncode == 130, output
            assert "apis sim: interrupted; the outputs in" in output, output
        assert not (tmp_path / "out" / "sweep.csv").exists()
    finally:
        # Whatever is left of the group when a check failed (the workers included).
        if sweep.poll() is None or group():
            os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()


@linux_only
@pytest.mark.timeout(600)
def test_a_worker_killed_mid_case_has_its_case_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    serial, _ = _sweep(tmp_path / "serial", jobs=1)
    outcome: dict[str, object] = {}

    def sweep() -> None:
        try:
            outcome["files"] = _sweep(tmp_path / "parallel", jobs=2)[0]
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        workers: list[int] = []
        while not workers:  # the forkserver's children: the workers
            assert time.monotonic() < deadline, "no worker started"
            processes = _processes()
            servers = [pid for pid, (ppid, _, cmd) in processes.items()
                       if ppid == os.getpid() and "forkserver" in cmd]
            workers = [pid for pid, (ppid, _, _) in processes.items() if ppid in servers]
            time.sleep(0.05)
        time.sleep(0.5)  # into its case
        os.kill(workers[0], signal.SIGKILL)
    finally:
        thread.join(timeout=540)
    assert "error" not in outcome, outcome.get("error")
    assert "its worker process ended without a result (exit code -9); running it again " \
        "(attempt 2 of 3)" in caplog.text
    parallel = outcome["files"]
    assert isinstance(parallel, dict)
    assert sorted(serial) == sorted(parallel)
    for name, content in serial.items():
        if not name.endswith("run-info.json"):
            assert content == parallel[name], name

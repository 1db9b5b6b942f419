"""Sweeps on a real Dask cluster (`apis sim --sweep ... --scheduler tcp://...`): a scheduler and
two workers started here on 127.0.0.1 as separate processes (`python -m dask scheduler|worker`);
the comparison table and every case's files as in a serial sweep; a worker killed mid-case
has its case run again on the other; a sweep of the planning fidelity as well."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from apis.sim.community import SimError, SimSettings
from apis.sim.sweep import run_sweep

distributed = pytest.importorskip("distributed")

# Long enough per case (4 units, 3 h with deals) that a worker can be killed mid-case.
SETTINGS = SimSettings(
    units=4, days=3 / 24, start=datetime(2020, 1, 1, 10), seed=5,
    initial_rsoc=(88.0, 22.0, 86.0, 30.0),
)
PARAMETER, VALUES = "mediator.deal.gridCurrentA", ["1", "1.5", "2", "2.2"]
WALL_CLOCK_KEYS = {"wall_s", "speed", "baseline_wall_s", "peak_memory_mb"}


@dataclass
class DaskCluster:
    address: str
    workers: list[subprocess.Popen[bytes]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    processes: list[subprocess.Popen[bytes]] = []
    log = (folder / "dask.log").open("wb")
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            env=_env(), stdout=log, stderr=subprocess.STDOUT,
        ))
        deadline = time.monotonic() + 120
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert processes[0].poll() is None, (folder / "dask.log").read_text()
            assert time.monotonic() < deadline, "the Dask scheduler did not start"
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                 "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                env=_env(), stdout=log, stderr=subprocess.STDOUT,
            )
            for _ in range(2)
        ]
        processes.extend(workers)
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield DaskCluster(address, workers)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def _same_outputs(serial: dict[str, bytes], other: dict[str, bytes]) -> None:
    assert sorted(serial) == sorted(other)
    for name, content in serial.items():
        if name.endswith("run-info.json"):
            ours, theirs = json.loads(content), json.loads(other[name])
            for key in WALL_CLOCK_KEYS:
                ours.pop(key, None), theirs.pop(key, None)
            assert ours == theirs, name
        else:
            assert content == other[name], name


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial")
    run_sweep(SETTINGS, PARAMETER, VALUES, out, jobs=1)
    return _files(out)


@pytest.mark.timeout(600)
def test_a_sweep_on_dask_writes_what_a_serial_sweep_writes(
    tmp_path: Path, dask_cluster: DaskCluster, serial: dict[str, bytes]
) -> None:
    seen: list[str] = []
    cases, _ = run_sweep(SETTINGS, PARAMETER, VALUES, tmp_path,
                         lambda phase, done, total: seen.append(phase),
                         scheduler=dask_cluster.address)
    assert [c.value for c in cases] == VALUES
    assert sorted(seen) == sorted(f"{PARAMETER}={v} done" for v in VALUES)
    ran = _files(tmp_path)
    assert "sweep.md" in ran and f"cases/{PARAMETER}=2/summary.json" in ran
    _same_outputs(serial, ran)


# The planning fidelity: a case is a few seconds, so a whole day with a seed sweep.
PLAN_SETTINGS = dataclasses.replace(SETTINGS, days=1.0, start=datetime(2020, 1, 1),
                                    fidelity="plan", sample_interval_s=900.0)


@pytest.mark.timeout(600)
def test_a_plan_sweep_on_dask_writes_what_a_serial_plan_sweep_writes(
    tmp_path: Path, dask_cluster: DaskCluster
) -> None:
    run_sweep(PLAN_SETTINGS, "seed", ["5", "6"], tmp_path / "serial", jobs=1)
    run_sweep(PLAN_SETTINGS, "seed", ["5", "6"], tmp_path / "dask",
              scheduler=dask_cluster.address)
    serial, ran = _files(tmp_path / "serial"), _files(tmp_path / "dask")
    for seed in ("5", "6"):
        summary = json.loads(ran[f"cases/seed={seed}/summary.json"])
        assert summary["settings"]["fidelity"] == "plan"
        assert summary["settings"]["seed"] == int(seed)
    _same_outputs(serial, ran)


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_case_has_its_case_run_again(
    tmp_path: Path, dask_cluster: DaskCluster, serial: dict[str, bytes]
) -> None:
    outcome: dict[str, object] = {}

    def sweep() -> None:
        try:
            outcome["cases"] = run_sweep(SETTINGS, PARAMETER, VALUES, tmp_path,
                                         scheduler=dask_cluster.address)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        with distributed.Client(dask_cluster.address, timeout=60) as client:
            pids = client.run(os.getpid)
            deadline = time.monotonic() + 120
            busy: list[str] = []
            while not busy:
                assert time.monotonic() < deadline, "no case started"
                busy = [worker for worker, tasks in client.processing().items() if tasks]
                time.sleep(0.05)
            time.sleep(0.5)  # into the case
            os.kill(pids[busy[0]], signal.SIGKILL)
    finally:
        thread.join(timeout=540)
    assert "error" not in outcome, outcome.get("error")
    assert not thread.is_alive()
    _same_outputs(serial, _files(tmp_path))
    alive = [w for w in dask_cluster.workers if w.poll() is None]
    assert len(alive) == 1  # the other one ran every case left


def test_a_scheduler_address_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SimError, match=r"--scheduler = 'localhost:8786' \(must be a Dask "):
        run_sweep(SETTINGS, PARAMETER, VALUES, tmp_path, scheduler="localhost:8786")
    with pytest.raises(SimError, match=r"--jobs = 2 with --scheduler"):
        run_sweep(SETTINGS, PARAMETER, VALUES, tmp_path, jobs=2,
                  scheduler="tcp://127.0.0.1:1")
    assert not tmp_path.joinpath("cases").exists()

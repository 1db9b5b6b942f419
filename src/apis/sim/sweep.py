"""Scenario sweeps: the same simulation for each value of one parameter, compared.

Each case gets its own full output folder (`cases/<param>=<value>/`); the comparison is one
table (`sweep.csv`, `sweep.md`) and one plot (`sweep.png`).

Cases run in parallel worker processes (`jobs`, default one per usable CPU), one fresh
process per case from a forkserver (spawn where there is none; never fork: the parent may
hold threads, e.g. rich's progress refresher). Every case is deterministic, so the files
are the same as in a serial sweep (run-info.json aside: wall time and peak memory) and the
table keeps the order of the values given.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import queue
import re
import shutil
import signal
import tempfile
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from apis.config.errors import ConfigError
from apis.sim.community import SimError, SimSettings
from apis.sim.simulate import PhaseProgress, simulate

log = logging.getLogger(__name__)

# A case whose worker process dies without a result (killed, out of memory) runs again from
# the start, this many times in all; a case that fails with an error does not.
CASE_ATTEMPTS = 3

COLUMNS = (
    ("value", "value"),
    ("units", "units"),
    ("energy_shared_kwh", "energy shared (kWh)"),
    ("self_sufficiency_pct", "self-sufficiency (%)"),
    ("self_sufficiency_without_pct", "without sharing (%)"),
    ("gain_pct_points", "gain (points)"),
    ("bought_kwh", "bought (kWh)"),
    ("curtailed_kwh", "curtailed (kWh)"),
    ("converter_loss_kwh", "converter loss (kWh)"),
    ("line_loss_kwh", "line loss (kWh)"),
    ("control_overhead_kwh", "control overhead (kWh)"),
    ("deals_made", "deals made"),
    ("deals_completed", "completed"),
    ("deals_aborted", "aborted"),
    ("overshoot_mean_wh", "overshoot mean (Wh)"),
)


@dataclass
class SweepCase:
    """One case's outcome: what the comparison needs (not the run's samples and deals)."""

    value: str
    summary: dict[str, Any]
    run_info: dict[str, Any]  # wall-clock figures
    files: list[Path] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        s = self.summary
        com, deals, losses = s["community"], s["deals"], s["losses"]
        comparison = s.get("comparison", {})
        without = comparison.get("self_sufficiency_without_sharing", com["self_sufficiency"])
        return {
            "value": self.value,
            "units": s["settings"]["units"],
            "energy_shared_kwh": deals["energy_shared_wh"] / 1000,
            "self_sufficiency_pct": 100 * com["self_sufficiency"],
            "self_sufficiency_without_pct": 100 * without,
            "gain_pct_points": 100 * (com["self_sufficiency"] - without),
            "bought_kwh": com["bought_wh"] / 1000,
            "curtailed_kwh": com["curtailed_wh"] / 1000,
            "converter_loss_kwh": losses["converter_wh"] / 1000,
            "line_loss_kwh": losses["line_wh"] / 1000,
            "control_overhead_kwh": losses["control_overhead_wh"] / 1000,
            "deals_made": deals["made"],
            "deals_completed": deals["completed"],
            "deals_aborted": deals["aborted"],
            "overshoot_mean_wh": deals["overshoot_mean_wh"],
        }


class SweepCaseError(RuntimeError):
    """A case failed unexpectedly in its worker process (the worker's traceback is a note)."""


def case_folder(parameter: str, value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]", "_", f"{parameter}={value}")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_jobs(jobs: int | None) -> None:
    if jobs is not None and jobs < 1:
        raise SimError(f"--jobs = {jobs} (must be >= 1)")


@dataclass(frozen=True)
class _Case:
    index: int
    value: str
    label: str  # param=value
    settings: SimSettings
    folder: Path


def run_sweep(
    settings: SimSettings,
    parameter: str,
    values: list[str],
    out: Path,
    progress: PhaseProgress | None = None,
    jobs: int | None = None,
    scheduler: str | None = None,
) -> tuple[list[SweepCase], list[Path]]:
    """Every case (full outputs in out/cases/...), then the comparison table and plot.

    `jobs`: worker processes (None: one per usable CPU; at most one per case); 1 runs the
    cases one after another in this process. `scheduler`: the address of a Dask cluster's
    scheduler to run the cases on instead (`apis.sim.dasksweep`)."""
    check_jobs(jobs)
    if scheduler is not None:
        from apis.sim.dasksweep import check_scheduler

        check_scheduler(scheduler)
        if jobs is not None:
            raise SimError(f"--jobs = {jobs} with --scheduler (the Dask cluster's workers "
                           "run the cases: give one or the other)")
    # Check every case's settings before spending time on the first run.
    cases = [
        _Case(i, value, f"{parameter}={value}", settings.with_override(parameter, value),
              out / "cases" / case_folder(parameter, value))
        for i, value in enumerate(values)
    ]
    workers = min(jobs if jobs is not None else usable_cpus(), len(cases))
    if scheduler is not None:
        from apis.sim.dasksweep import run_on_dask

        done = run_on_dask(cases, scheduler, progress)
    elif workers <= 1:
        done = [_run_here(case, progress) for case in cases]
    else:
        done = _run_in_workers(cases, workers, progress)
    return done, write_comparison(out, parameter, done)


def _run_here(case: _Case, progress: PhaseProgress | None) -> SweepCase:
    def told(phase: str, done: float, total: float) -> None:
        if progress is not None:
            progress(f"{case.label} {phase}", done, total)

    try:
        outcome = simulate(case.settings, case.folder, told)
    except (SimError, ConfigError) as error:
        raise SimError(f"sweep case {case.label}: {error}") from error
    except Exception as error:
        error.add_note(f"in sweep case {case.label}")
        raise
    return SweepCase(case.value, outcome.summary, outcome.run_info, outcome.files)


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # The forkserver imports the simulation (with the unit software and the plotting
        # it loads on first use) once; each case forks from it ready to run.
        ctx.set_forkserver_preload(["apis.sim.simulate", "apis.unit.cluster", "matplotlib.pyplot"])
        return ctx
    return multiprocessing.get_context("spawn")


def _run_in_workers(
    cases: list[_Case], workers: int, progress: PhaseProgress | None
) -> list[SweepCase]:
    """Each case in its own process, `workers` at a time; the outcomes in the cases' order.

    A failing case stops the sweep: the other workers are terminated and its error raised
    (with the case's label); so are they on any interruption (Ctrl-C)."""
    ctx = _context()
    messages: Any = ctx.Queue()
    scratch = tempfile.mkdtemp(prefix="apis-sweep-")
    # Never written: the workers see its end of file when this process has gone.
    lifeline, lifeline_held = ctx.Pipe(duplex=False)
    waiting = list(cases)
    running: dict[int, BaseProcess] = {}
    exited: set[int] = set()  # running cases whose process was gone at the last look
    attempts: dict[int, int] = {}
    done: dict[int, SweepCase] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                case = waiting.pop(0)
                worker = ctx.Process(  # type: ignore[attr-defined]
                    target=_worker,
                    args=(case, case.folder.absolute(), scratch, messages, progress is not None,
                          lifeline),
                    name=f"apis sim {case.label}",
                    daemon=True,
                )
                worker.start()
                running[case.index] = worker
                attempts[case.index] = attempts.get(case.index, 0) + 1
            try:
                message = messages.get(timeout=0.5)
            except queue.Empty:
                for index in _died(cases, running, exited, attempts):
                    waiting.insert(0, cases[index])  # run again, before the others
                continue
            kind, index, *rest = message
            case = cases[index]
            if kind == "progress" and progress is not None:
                phase, so_far, total = rest
                progress(f"{case.label} {phase}", so_far, total)
            elif kind == "done":
                summary, run_info, files = rest
                absolute = case.folder.absolute()
                files = [case.folder / Path(f).relative_to(absolute) for f in files]
                done[index] = SweepCase(case.value, summary, run_info, files)
                _forget(index, running, waiting)
            elif kind == "failed":
                _forget(index, running, waiting)
                raise _case_error(case, *rest)
    finally:
        _stop(list(running.values()))
        messages.close()
        lifeline.close()
        lifeline_held.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return [done[case.index] for case in cases]


def _forget(index: int, running: dict[int, BaseProcess], waiting: list[_Case]) -> None:
    """The case has its answer: its worker is waited for (a case put back to run again,
    whose answer came late after all, is taken out again)."""
    worker = running.pop(index, None)
    if worker is not None:
        worker.join()
    waiting[:] = [case for case in waiting if case.index != index]


def _died(
    cases: list[_Case], running: dict[int, BaseProcess], exited: set[int],
    attempts: dict[int, int],
) -> list[int]:
    """The running cases whose worker died without a word (killed, out of memory): its last
    messages are in the queue before it exits, so one that stays silent for a whole further
    wait has died. Each is taken off `running` to be run again from the start (its folder
    emptied), up to `CASE_ATTEMPTS` times in all; then the sweep fails."""
    died = []
    for index, worker in list(running.items()):
        if worker.exitcode is None:
            continue
        if index not in exited:
            exited.add(index)
            continue
        exited.discard(index)
        running.pop(index).join()
        case = cases[index]
        if attempts[index] >= CASE_ATTEMPTS:
            raise SweepCaseError(
                f"sweep case {case.label}: its worker process ended without a result "
                f"{attempts[index]} times (last exit code {worker.exitcode})"
            )
        log.warning("sweep case %s: its worker process ended without a result (exit code "
                    "%s); running it again (attempt %d of %d)", case.label, worker.exitcode,
                    attempts[index] + 1, CASE_ATTEMPTS)
        shutil.rmtree(case.folder, ignore_errors=True)
        died.append(index)
    return died


def _case_error(case: _Case, expected: bool, message: str, worker_traceback: str) -> Exception:
    if expected:  # a setting or configuration the case cannot run with
        return SimError(f"sweep case {case.label}: {message}")
    error = SweepCaseError(f"sweep case {case.label}: {message}")
    error.add_note(f"in the worker process:\n{worker_traceback}")
    return error


def _stop(workers: list[BaseProcess]) -> None:
    """Terminate the workers still running and wait for them (kill those that linger)."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=10)
        if worker.is_alive():
            worker.kill()
            worker.join()


def _worker(
    case: _Case,
    folder: Path,
    scratch: str,
    messages: Any,
    report_progress: bool,
    lifeline: Connection,
) -> None:
    """One case in a worker process; tells progress, then the outcome or the error."""
    # Ctrl-C reaches the whole process group: the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The community's temporary files go into the sweep's scratch folder, which the parent
    # removes: a worker terminated in the middle of a run leaves nothing behind.
    tempfile.tempdir = scratch
    seen: set[str] = set()

    def told(phase: str, done: float, total: float) -> None:
        # What the progress bar shows (cli._ProgressBar: the first report of a phase, each
        # simulated 10 minutes, the end): the rest would only load the queue.
        if phase in seen and done < total and int(done) % 600:
            return
        if lifeline.poll():
            # End of file: the sweep's process died without stopping this one (killed).
            # Nothing else tells: the forkserver, this process's parent, lives on with it.
            os._exit(1)
        seen.add(phase)
        if report_progress:
            messages.put(("progress", case.index, phase, done, total))

    try:
        outcome = simulate(case.settings, folder, told)
    except (SimError, ConfigError) as error:
        messages.put(("failed", case.index, True, str(error), ""))
    except Exception as error:
        messages.put((
            "failed", case.index, False, f"{type(error).__name__}: {error}",
            traceback.format_exc(),
        ))
    else:
        messages.put(("done", case.index, outcome.summary, outcome.run_info, outcome.files))


def write_comparison(out: Path, parameter: str, cases: list[SweepCase]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = [c.row() for c in cases]
    csv_path = out / "sweep.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([parameter if key == "value" else key for key, _ in COLUMNS])
        for row in rows:
            writer.writerow([_fmt(row[key]) for key, _ in COLUMNS])
    md_path = out / "sweep.md"
    header = [parameter if key == "value" else title for key, title in COLUMNS]
    lines = [
        f"# Sweep of {parameter}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS) + " |" for row in rows),
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    png_path = out / "sweep.png"
    _plot(png_path, parameter, rows)
    return [csv_path, md_path, png_path]


def _plot(path: Path, parameter: str, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["value"]) for r in rows]
    x = list(range(len(rows)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(x, [r["self_sufficiency_pct"] for r in rows], "o-", label="with sharing")
    left.plot(x, [r["self_sufficiency_without_pct"] for r in rows], "s--",
              label="without sharing")
    left.set_xticks(x, labels)
    left.set_xlabel(parameter)
    left.set_ylabel("self-sufficiency (%)")
    left.legend(fontsize="small")
    right.bar(x, [r["energy_shared_kwh"] for r in rows], color="tab:green")
    right.set_xticks(x, labels)
    right.set_xlabel(parameter)
    right.set_ylabel("energy shared (kWh)")
    fig.suptitle(f"Sweep of {parameter}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

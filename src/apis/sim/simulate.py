"""A whole simulation as `apis sim` does it: the run, its baseline, the outputs.

With sharing on, the same community is also run with sharing off (same seed, same weather,
every converter idle) so the report can say what sharing bought; with `--no-sharing` only
that baseline runs.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apis import __version__
from apis.config.loader import Cluster
from apis.sim.community import SimSettings, community
from apis.sim.plan import run_plan
from apis.sim.report import write_outputs
from apis.sim.run import Progress, run
from apis.sim.summary import AnyResult, summarize

# Told (phase, simulated seconds done, simulated seconds of the phase).
PhaseProgress = Callable[[str, float, float], None]


@dataclass
class SimOutcome:
    summary: dict[str, Any]
    run_info: dict[str, Any]
    result: AnyResult
    baseline: AnyResult | None
    files: list[Path]


def peak_memory_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def _phase(progress: PhaseProgress | None, name: str, total: float) -> Progress | None:
    if progress is None:
        return None
    return lambda done: progress(name, done, total)


def simulate(
    settings: SimSettings, out: Path | None = None, progress: PhaseProgress | None = None
) -> SimOutcome:
    """Run (with the baseline when sharing is on) and write the outputs into `out`."""
    with community(settings) as cluster:
        return _simulate(settings, cluster, out, progress)


def _simulate(
    settings: SimSettings, cluster: Cluster, out: Path | None, progress: PhaseProgress | None
) -> SimOutcome:
    total = settings.duration_s
    plan = settings.fidelity == "plan"

    def one(s: SimSettings, phase: str, main: bool) -> AnyResult:
        told = _phase(progress, phase, total)
        if plan:  # the main run streams its CSV files into `out`
            return run_plan(s, cluster, told, out if main else None)
        return run(s, cluster, told)

    baseline: AnyResult | None = None
    if settings.sharing:
        result = one(settings, "sharing", True)
        baseline = one(dataclasses.replace(settings, sharing=False), "baseline", False)
    else:
        result = one(settings, "no sharing", True)
    summary = summarize(result, baseline)
    run_info = {
        "apis_version": __version__,
        "fidelity": settings.fidelity,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "units": len(result.unit_ids),
        "simulated_s": result.simulated_s,
        "wall_s": result.wall_s,
        "speed": result.simulated_s / result.wall_s if result.wall_s > 0 else None,
        "baseline_wall_s": baseline.wall_s if baseline is not None else None,
        "world_syncs": result.world_steps,
        "peak_memory_mb": peak_memory_mb(),
        "unit_log_records": result.log_counts,
    }
    files = write_outputs(out, result, summary, run_info) if out is not None else []
    return SimOutcome(summary, run_info, result, baseline, files)

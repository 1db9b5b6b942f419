"""One simulation run: the community's real unit code on the in-memory bus, the emulated world,
and the virtual clock; or, with sharing off, the same world with every converter idle.

The baseline (sharing off) runs no unit code at all: nothing can start a converter, so it is
exactly "the same houses and batteries, no sharing". Both runs use the same seed (houses,
starting charge) and step the world on the same quiet grid.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from apis import clock
from apis.config.loader import Cluster
from apis.emulator.world import World
from apis.sim.community import SimSettings, community
from apis.sim.driver import WorldStepper, sim_drivers
from apis.sim.recorder import Recorder, Samples
from apis.unit.deal import Deal

FloatArray = NDArray[np.float64]
Progress = Callable[[float], None]  # called with the simulated seconds done


@dataclass
class RunResult:
    """Everything a run produced (deterministic parts) plus how long it took (`wall_s`)."""

    settings: SimSettings
    unit_ids: list[str]
    capacity_wh: FloatArray
    samples: Samples
    start_battery_wh: FloatArray
    end_counters: dict[str, FloatArray]  # cumulative world counters at the last sample
    line_loss_wh: float
    switching_s: FloatArray  # per unit: time its converter switched
    standby_loss_w: float
    active_loss_w: float
    deals: list[Deal]
    voltage_conflicts: list[tuple[float, float, tuple[str, ...]]]  # (start s, end s, units)
    log_counts: dict[str, int] = field(default_factory=dict)
    log_lines: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    world_steps: int = 0

    @property
    def simulated_s(self) -> float:
        return self.samples.times_s[-1] if self.samples.times_s else 0.0


class _LogCapture(logging.Handler):
    """Keeps the unit code's log off the terminal: counts records, keeps the first lines."""

    def __init__(self, keep: int = 2000) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()
        self.lines: list[str] = []
        self.keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if len(self.lines) < self.keep:
            loop_time = _loop_time()
            where = f"{loop_time:10.1f}s " if loop_time is not None else ""
            self.lines.append(f"{where}{record.levelname} {record.name}: {record.getMessage()}")


def _loop_time() -> float | None:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None


@contextmanager
def _captured_logs() -> Iterator[_LogCapture]:
    logger = logging.getLogger("apis")
    handler = _LogCapture()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def build_world(settings: SimSettings, cluster: Cluster) -> World:
    from apis.sim.seasons import year_profiles

    return World(
        [(u.unit_id, u.hw_config) for u in cluster.units],
        cluster.grid,
        year_profiles(settings, len(cluster.units)),
        seed=settings.seed,
        start=settings.start,
        converter=settings.converter,
        max_step_s=settings.quiet_step_s,
        initial_rsoc=list(settings.initial_rsoc) if settings.initial_rsoc is not None else None,
    )


def sample_times(settings: SimSettings) -> list[float]:
    """End of each sample interval (s since the start); the last one is the run's end."""
    interval = settings.sample_interval_s
    duration = settings.duration_s
    count = math.floor(duration / interval + 1e-9)
    times = [k * interval for k in range(1, count + 1)]
    if not times or duration - times[-1] > 1e-9:
        times.append(duration)
    return times


# Allocations (less deallocations) between two collections of the youngest generation during
# a run; Python's default is 700.
_RUN_GC_THRESHOLD = 20_000


@contextmanager
def _long_lived_heap() -> Iterator[None]:
    """The garbage collector tuned for a run, restored after it.

    A run allocates and frees objects (messages, tasks, dicts) at a high rate, nearly all
    freed by reference counting; the cyclic collector still ran every 700 allocations and
    now and then went through every object of the process (the modules, the world, the
    units), about a tenth of the CPU time of a night. So what exists before the run is
    frozen (never looked at again by the collector) and the youngest generation collected
    less often. Cyclic garbage is still collected, in bigger batches.
    """
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(_RUN_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def run(
    settings: SimSettings, cluster: Cluster | None = None, progress: Progress | None = None
) -> RunResult:
    """Simulate `settings.days` days; `progress` is told the simulated time once a sample.

    `cluster` must have its files on disk for the run (see `community`); None: this run
    writes its own copy."""
    if cluster is None:
        with community(settings) as files:
            return run(settings, files, progress)
    world = build_world(settings, cluster)
    stepper = WorldStepper(world, quiet_step_s=settings.quiet_step_s)
    recorder = Recorder(world, settings.sample_interval_s)
    times = sample_times(settings)
    deals: list[Deal] = []
    switching_s = np.zeros(world.n_units)

    async def timeline() -> None:
        loop = asyncio.get_running_loop()
        assert stepper.origin is not None
        for t in times:
            delay = stepper.origin + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            stepper.sync_exact()
            recorder.sample()
            if progress is not None:
                progress(t)
        switching_s[:] = stepper.switching_s  # not what the units do while shutting down

    async def main() -> None:
        stepper.attach()
        if not settings.sharing:
            await timeline()
            return
        from apis.unit.cluster import InProcessCluster
        from apis.unit.ids import seeded_ids

        # seeded ids: the run repeats bit for bit (and writes no deal log they could clash in)
        units = InProcessCluster(
            cluster, sim_drivers(stepper), seed=settings.seed, ids=seeded_ids,
            deal_logging=False,
        )
        async with units.running():
            await timeline()
            still_open = await units.deals()
        done = {f.deal.deal_id for f in units.finished}
        deals.extend(f.deal for f in units.finished)
        deals.extend(d for d in still_open if d.deal_id not in done)

    with _captured_logs() as logs, _long_lived_heap():
        started = time.perf_counter()
        clock.run(main, "virtual")
        wall = time.perf_counter() - started
    model = settings.converter
    return RunResult(
        settings=settings,
        unit_ids=list(world.unit_ids),
        capacity_wh=world.capacity_wh.copy(),
        samples=recorder.samples,
        start_battery_wh=recorder.start_battery_wh,
        end_counters=recorder.last_counters,
        line_loss_wh=recorder.last_line_loss_wh,
        switching_s=switching_s,
        standby_loss_w=model.standby_loss_w,
        active_loss_w=model.active_loss_w,
        deals=deals,
        voltage_conflicts=[
            (c.time_s, c.end_s if c.end_s is not None else world.t, c.unit_ids)
            for c in world.voltage_conflicts
        ],
        log_counts=dict(sorted(logs.counts.items())),
        log_lines=logs.lines,
        wall_s=wall,
        world_steps=stepper.steps_taken,
    )

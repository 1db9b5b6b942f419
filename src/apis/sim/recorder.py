"""Per-minute samples of every unit: what `units.csv` and the plots are made of.

Energies are the increments of the world's cumulative counters over each sample interval,
so summing a column over the run gives back the world's totals exactly (no integration of
sampled powers). Powers are the interval means (energy / interval); RSOC and grid voltages
are the values at the end of the interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from apis.emulator.world import World

FloatArray = NDArray[np.float64]

# Cumulative world counters sampled as per-interval increments (Wh), in CSV column order.
ENERGY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pv_wh", "pv_wh"),
    ("load_wh", "load_wh"),
    ("bought_wh", "bought_wh"),
    ("curtailed_wh", "curtailed_wh"),
    ("spilled_wh", "spilled_wh"),
    ("converter_loss_wh", "loss_wh"),
    ("grid_in_wh", "grid_in_wh"),
    ("grid_out_wh", "grid_out_wh"),
)


@dataclass
class Samples:
    """Time series of one run: rows are sample times, columns are units."""

    unit_ids: list[str]
    interval_s: float
    times_s: list[float] = field(default_factory=list)  # end of each interval, s since start
    rsoc: list[FloatArray] = field(default_factory=list)
    battery_wh: list[FloatArray] = field(default_factory=list)
    energy: dict[str, list[FloatArray]] = field(
        default_factory=lambda: {name: [] for name, _ in ENERGY_COLUMNS}
    )
    grid_voltage_max: list[float] = field(default_factory=list)
    grid_voltage_min: list[float] = field(default_factory=list)
    line_loss_wh: list[float] = field(default_factory=list)  # per interval, whole grid

    def array(self, name: str) -> FloatArray:
        """(samples x units) array of an energy column, `rsoc` or `battery_wh`."""
        rows = self.rsoc if name == "rsoc" else (
            self.battery_wh if name == "battery_wh" else self.energy[name]
        )
        if not rows:
            return np.zeros((0, len(self.unit_ids)))
        return np.vstack(rows)

    def __len__(self) -> int:
        return len(self.times_s)


class Recorder:
    """Takes a sample of the world each time `sample()` is called (the run calls it per minute)."""

    def __init__(self, world: World, interval_s: float = 60.0) -> None:
        self.world = world
        self.samples = Samples(list(world.unit_ids), interval_s)
        self._last = self._counters()
        self._last_line_loss = world.total_line_loss_wh
        self.start_battery_wh = world.energy_wh.copy()

    @property
    def last_counters(self) -> dict[str, FloatArray]:
        """The world's cumulative counters at the last sample (by CSV column name)."""
        return {name: value.copy() for name, value in self._last.items()}

    @property
    def last_line_loss_wh(self) -> float:
        return self._last_line_loss

    def _counters(self) -> dict[str, FloatArray]:
        return {name: getattr(self.world, attr).copy() for name, attr in ENERGY_COLUMNS}

    def sample(self) -> None:
        world = self.world
        s = self.samples
        now = self._counters()
        for name, _ in ENERGY_COLUMNS:
            s.energy[name].append(now[name] - self._last[name])
        self._last = now
        line_loss = world.total_line_loss_wh
        s.line_loss_wh.append(line_loss - self._last_line_loss)
        self._last_line_loss = line_loss
        s.times_s.append(world.t)
        s.rsoc.append(np.asarray(world.rsoc, dtype=np.float64).copy())
        s.battery_wh.append(world.energy_wh.copy())
        vg = world.vg
        live = vg[vg > 0.0]
        s.grid_voltage_max.append(float(live.max()) if live.size else 0.0)
        s.grid_voltage_min.append(float(live.min()) if live.size else 0.0)

"""The houses over a year: the built-in houses with PV from a weather series and/or
household load with seasons (`apis sim --weather`, `--load`).

Each unit keeps what the built-in profiles give it (its seeded module capacity, daily
energy and load noise); what the options name replaces a part:

- weather: PV = the series' W per kWp at the instant's position in the year times the
  unit's module capacity (its built-in peak power, in kWp);
- ``--load seasonal``: the built-in load times `seasonal_factor` (mean 1 over a year);
- ``--load PATH``: the file's load, as given (unit i: column i mod the columns).

Both fidelities read the same object: the faithful world one instant at a time
(`power_w`), the planning model a day of steps at a time (`series`).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from apis.emulator.house import BuiltinProfiles
from apis.sim.community import SimSettings
from apis.sim.weather import (
    YearSeries,
    read_load,
    read_weather,
    seasonal_factor,
    year_position,
)

FloatArray = NDArray[np.float64]

SEASONAL = "seasonal"


class YearProfiles(BuiltinProfiles):
    """Built-in houses with PV from `pv_per_kwp` and load from `load` or with seasons."""

    def __init__(
        self, n_units: int, seed: int, pv_per_kwp: YearSeries | None,
        load: YearSeries | None, seasonal: bool,
    ) -> None:
        self.pv_per_kwp = pv_per_kwp
        self.load_series = load
        self.seasonal = seasonal
        super().__init__(n_units, seed=seed)

    def _apply(self, positions: FloatArray, pv: FloatArray,
               load: FloatArray) -> tuple[FloatArray, FloatArray]:
        n = len(self.peak_w)
        if self.pv_per_kwp is not None:
            pv = self.pv_per_kwp.at(positions)[:, :1] * (self.peak_w / 1000.0)[None, :]
        if self.load_series is not None:
            columns = np.arange(n) % self.load_series.columns
            load = self.load_series.at(positions)[:, columns]
        elif self.seasonal:
            load = load * seasonal_factor(positions)[:, None]
        return pv, load

    def series(self, day: int, hours: FloatArray) -> tuple[FloatArray, FloatArray]:
        pv, load = super().series(day, hours)
        midnight = year_position(datetime.fromordinal(day))
        positions = midnight + np.asarray(hours, dtype=np.float64) * 3600.0
        return self._apply(positions, pv, load)

    def power_w(self, elapsed_s: float, at: datetime) -> tuple[FloatArray, FloatArray]:
        pv, load = super().power_w(elapsed_s, at)
        new_pv, new_load = self._apply(np.array([year_position(at)]), pv[None, :],
                                       load[None, :])
        return new_pv[0], new_load[0]


def year_profiles(settings: SimSettings, n_units: int) -> YearProfiles | None:
    """The houses `settings` ask for; None: the built-in ones (no --weather, no --load)."""
    if settings.weather is None and settings.load is None:
        return None
    pv = read_weather(settings.weather) if settings.weather is not None else None
    load = None
    if settings.load is not None and settings.load != SEASONAL:
        load = read_load(settings.load)
    for series in (pv, load):
        if series is not None:
            series.check_covers(settings.start, settings.duration_s)
    return YearProfiles(n_units, settings.seed, pv, load, settings.load == SEASONAL)

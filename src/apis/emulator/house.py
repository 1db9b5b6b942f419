"""The house on a unit's internal DC bus: PV generation and household load.

Built-in profiles need no files: PV is a clear-sky curve for the site's latitude times a
seeded daily weather factor (one sky for the neighbourhood), scaled by each unit's peak power;
load is a household daily curve (morning and evening peaks) times seeded noise, scaled by each
unit's kWh per day. Peak power and daily energy differ between units (seeded), so batteries
drift apart and sharing has a reason.

Sampled profiles come from files: the original emulator's solar CSV (365 rows x 24 hourly
values, already in W) and load CSV (one row per household per day, 48 half-hourly kW values
from column 6, household number in column 1), or a simple ``time,pv_w,load_w`` CSV (seconds
since the start of the run). Samples are interpolated linearly and repeat after the last one.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600.0


class HouseProfiles(Protocol):
    """PV and load of every unit's house, as a function of time."""

    def power_w(self, elapsed_s: float, at: datetime) -> tuple[FloatArray, FloatArray]:
        """(pv_w, load_w) per unit at `elapsed_s` seconds since the run began (= `at`)."""
        ...

    def resize(self, n_units: int) -> None:
        """Follow a change in the number of units (new units get their own houses)."""
        ...


def _load_shape(hour: FloatArray | float) -> FloatArray:
    """Household daily curve (mean 1 over the day): night base, morning and evening peaks."""
    h = np.asarray(hour, dtype=np.float64)

    def bump(centre: float, width: float) -> FloatArray:
        # Periodic distance so the evening tail wraps past midnight smoothly.
        d = (h - centre + 12.0) % 24.0 - 12.0
        result: FloatArray = np.exp(-0.5 * (d / width) ** 2)
        return result

    raw = 0.45 + 1.1 * bump(7.5, 1.1) + 0.35 * bump(12.5, 1.5) + 1.6 * bump(19.5, 1.8)
    result: FloatArray = raw / _LOAD_SHAPE_MEAN
    return result


def _load_shape_at(hour: float) -> float:
    """`_load_shape` at one hour, in Python floats (numpy's overhead dominates a scalar)."""

    def bump(centre: float, width: float) -> float:
        d = (hour - centre + 12.0) % 24.0 - 12.0
        return math.exp(-0.5 * (d / width) ** 2)

    raw = 0.45 + 1.1 * bump(7.5, 1.1) + 0.35 * bump(12.5, 1.5) + 1.6 * bump(19.5, 1.8)
    return raw / _LOAD_SHAPE_MEAN


def _hour_of_day(at: datetime) -> float:
    return at.hour + at.minute / 60.0 + at.second / 3600.0 + at.microsecond / 3.6e9


def _raw_mean() -> float:
    hours = np.linspace(0.0, 24.0, 24 * 60, endpoint=False)
    d = (hours[:, None] - np.array([7.5, 12.5, 19.5]) + 12.0) % 24.0 - 12.0
    widths = np.array([1.1, 1.5, 1.8])
    weights = np.array([1.1, 0.35, 1.6])
    return float(np.mean(0.45 + (weights * np.exp(-0.5 * (d / widths) ** 2)).sum(axis=1)))


_LOAD_SHAPE_MEAN = _raw_mean()


class BuiltinProfiles:
    """Seeded synthetic PV and load; deterministic for a given seed and unit index."""

    def __init__(
        self,
        n_units: int,
        seed: int = 0,
        peak_w: Sequence[float] | None = None,
        kwh_per_day: Sequence[float] | None = None,
        latitude_deg: float = 35.7,
        peak_w_range: tuple[float, float] = (1500.0, 4500.0),
        kwh_per_day_range: tuple[float, float] = (5.0, 14.0),
        load_noise: float = 0.25,
    ) -> None:
        self.seed = seed
        self.latitude = math.radians(latitude_deg)
        self.peak_w_range = peak_w_range
        self.kwh_per_day_range = kwh_per_day_range
        self.load_noise = load_noise
        self._fixed_peak = list(peak_w) if peak_w is not None else None
        self._fixed_kwh = list(kwh_per_day) if kwh_per_day is not None else None
        self.peak_w = np.zeros(0)
        self.kwh_per_day = np.zeros(0)
        self._noise_cache: dict[int, FloatArray] = {}
        self._weather_cache: dict[int, float] = {}
        self._sun_cache: dict[tuple[int, float], tuple[float, float]] = {}
        self.resize(n_units)

    def resize(self, n_units: int) -> None:
        peak = np.empty(n_units)
        kwh = np.empty(n_units)
        for i in range(n_units):
            rng = np.random.default_rng([self.seed, 0, i])
            peak[i] = rng.uniform(*self.peak_w_range)
            kwh[i] = rng.uniform(*self.kwh_per_day_range)
            if self._fixed_peak is not None:
                peak[i] = self._fixed_peak[i % len(self._fixed_peak)]
            if self._fixed_kwh is not None:
                kwh[i] = self._fixed_kwh[i % len(self._fixed_kwh)]
        self.peak_w = peak
        self.kwh_per_day = kwh
        self._noise_cache.clear()

    def weather(self, day: int) -> float:
        """Share of clear-sky PV reaching the panels on a day (same sky for all units)."""
        if day not in self._weather_cache:
            rng = np.random.default_rng([self.seed, 1, day])
            kind = rng.uniform()
            if kind < 0.5:  # clear
                factor = rng.uniform(0.85, 1.0)
            elif kind < 0.8:  # broken cloud
                factor = rng.uniform(0.4, 0.8)
            else:  # overcast
                factor = rng.uniform(0.08, 0.35)
            if len(self._weather_cache) > 8:
                self._weather_cache.clear()
            self._weather_cache[day] = float(factor)
        return self._weather_cache[day]

    def clear_sky(self, at: datetime) -> float:
        """Clear-sky PV as a share of peak (1 at solstice noon), solar time = clock time."""
        return self._clear_sky_at(at.toordinal(), _hour_of_day(at), at)

    def _clear_sky_at(self, day: int, hour: float, at: datetime) -> float:
        # sin(elevation) = fixed + varying * cos(hour angle); the terms change once a day.
        sun = self._sun_cache.get((day, self.latitude))
        if sun is None:
            if len(self._sun_cache) > 8:
                self._sun_cache.clear()
            sun = self._sun_terms(at.timetuple().tm_yday)
            self._sun_cache[(day, self.latitude)] = sun
        fixed, varying = sun
        hour_angle = math.radians(15.0 * (hour - 12.0))
        sin_elevation = fixed + varying * math.cos(hour_angle)
        if sin_elevation <= 0:
            return 0.0
        best = math.cos(self.latitude - math.radians(23.44))  # sin of the highest elevation
        return float((sin_elevation / best) ** 1.15)

    def _sun_terms(self, day_of_year: int) -> tuple[float, float]:
        declination = math.radians(23.44) * math.sin(2 * math.pi * (284 + day_of_year) / 365)
        return (
            math.sin(self.latitude) * math.sin(declination),
            math.cos(self.latitude) * math.cos(declination),
        )

    def _noise(self, day: int) -> FloatArray:
        """Per unit, per hour multiplicative load noise for one day (mean about 1)."""
        if day not in self._noise_cache:
            n = len(self.peak_w)
            noise = np.empty((n, HOURS_PER_DAY))
            for i in range(n):
                rng = np.random.default_rng([self.seed, 2, day, i])
                noise[i] = rng.normal(0.0, self.load_noise, HOURS_PER_DAY)
            if len(self._noise_cache) > 4:
                self._noise_cache.clear()
            self._noise_cache[day] = np.exp(noise - 0.5 * self.load_noise**2)
        return self._noise_cache[day]

    def series(self, day: int, hours: FloatArray) -> tuple[FloatArray, FloatArray]:
        """`power_w` at many times of one calendar day (`day`: its ordinal; `hours`: hours
        of the day, 0 <= h < 24): (pv_w, load_w), each (times x units). The same laws,
        evaluated with numpy (results equal to `power_w` up to rounding)."""
        h = np.asarray(hours, dtype=np.float64)
        at = datetime.fromordinal(day)
        fixed, varying = self._sun_terms(at.timetuple().tm_yday)
        sin_elevation = fixed + varying * np.cos(np.radians(15.0 * (h - 12.0)))
        best = math.cos(self.latitude - math.radians(23.44))
        share = np.where(
            sin_elevation > 0, (np.maximum(sin_elevation, 0.0) / best) ** 1.15, 0.0
        )
        pv = (share * self.weather(day))[:, None] * self.peak_w[None, :]
        k = h.astype(np.intp) % HOURS_PER_DAY
        w = (h - np.floor(h))[:, None]
        noise_day = np.hstack([self._noise(day), self._noise(day + 1)[:, :1]])  # units x 25
        noise = (1.0 - w) * noise_day.T[k] + w * noise_day.T[k + 1]
        load = (
            self.kwh_per_day[None, :] * (1000.0 / HOURS_PER_DAY) * _load_shape(h)[:, None] * noise
        )
        return pv, load

    def power_w(self, elapsed_s: float, at: datetime) -> tuple[FloatArray, FloatArray]:
        day = at.toordinal()
        hour = _hour_of_day(at)
        pv = self.peak_w * (self._clear_sky_at(day, hour, at) * self.weather(day))
        k = int(hour) % HOURS_PER_DAY
        w = hour - int(hour)
        today = self._noise(day)
        following = today[:, k + 1] if k + 1 < HOURS_PER_DAY else self._noise(day + 1)[:, 0]
        noise = (1.0 - w) * today[:, k] + w * following
        load = self.kwh_per_day * (1000.0 / HOURS_PER_DAY) * _load_shape_at(hour) * noise
        return pv, load


class SampledProfiles:
    """PV and load from sample tables (columns are houses; unit i uses column i mod count)."""

    def __init__(
        self,
        times_s: Sequence[float] | FloatArray,
        pv_w: FloatArray,
        load_w: FloatArray,
        n_units: int,
        period_s: float | None = None,
    ) -> None:
        times = np.asarray(times_s, dtype=np.float64)
        pv = np.asarray(pv_w, dtype=np.float64)
        load = np.asarray(load_w, dtype=np.float64)
        if pv.ndim == 1:
            pv = pv[:, None]
        if load.ndim == 1:
            load = load[:, None]
        if len(times) < 2 or pv.shape[0] != len(times) or load.shape[0] != len(times):
            raise ValueError(
                f"samples: {len(times)} times, {pv.shape[0]} pv rows, {load.shape[0]} load rows"
                " (need at least 2 and the same count)"
            )
        if np.any(np.diff(times) <= 0):
            raise ValueError("time (must increase from row to row)")
        self.times = times
        self.period = float(period_s) if period_s is not None else float(
            times[-1] - times[0] + (times[-1] - times[-2])
        )
        # Close the period: the sample after the last one is the first one again.
        self._times = np.append(times, times[0] + self.period)
        self._pv = np.vstack([pv, pv[:1]])
        self._load = np.vstack([load, load[:1]])
        self._pv_columns = np.zeros(0, dtype=np.intp)
        self._load_columns = np.zeros(0, dtype=np.intp)
        self.resize(n_units)

    def resize(self, n_units: int) -> None:
        units = np.arange(n_units)
        self._pv_columns = units % self._pv.shape[1]
        self._load_columns = units % self._load.shape[1]

    def power_w(self, elapsed_s: float, at: datetime) -> tuple[FloatArray, FloatArray]:
        del at
        t = self.times[0] + (elapsed_s - self.times[0]) % self.period
        k = int(np.searchsorted(self._times, t, side="right") - 1)
        k = min(max(k, 0), len(self._times) - 2)
        w = (t - self._times[k]) / (self._times[k + 1] - self._times[k])
        pv = (1.0 - w) * self._pv[k] + w * self._pv[k + 1]
        load = (1.0 - w) * self._load[k] + w * self._load[k + 1]
        return pv[self._pv_columns], load[self._load_columns]

    @classmethod
    def from_simple_csv(
        cls, paths: Sequence[str | Path] | str | Path, n_units: int
    ) -> SampledProfiles:
        """One or more ``time,pv_w,load_w`` files (one house each, cycled over the units)."""
        files = [paths] if isinstance(paths, (str, Path)) else list(paths)
        series = [read_simple_csv(p) for p in files]
        times = series[0][0]
        for path, (other_times, _, _) in zip(files, series, strict=True):
            if not np.array_equal(other_times, times):
                raise ValueError(f"{path}: time column (must match {files[0]})")
        pv = np.column_stack([s[1] for s in series])
        load = np.column_stack([s[2] for s in series])
        return cls(times, pv, load, n_units)

    @classmethod
    def from_original(
        cls,
        solar_path: str | Path,
        load_path: str | Path,
        unit_ids: Sequence[str],
        pv_scale: float = 1.0,
    ) -> SampledProfiles:
        """The original emulator's sample files; unit ``E%03d`` uses household n.

        The same PV series serves every unit (as in the original), times `pv_scale`.
        """
        pv = read_original_solar_csv(solar_path) * pv_scale
        households = read_original_load_csv(load_path)
        columns = []
        for unit_id in unit_ids:
            number = household_number(unit_id)
            if number not in households:
                raise ValueError(
                    f"unit {unit_id}: household {number} (not in {load_path}; "
                    f"has {min(households)}..{max(households)})"
                )
            columns.append(households[number])
        length = min(len(pv), *(len(c) for c in columns))
        load = np.column_stack([c[:length] for c in columns])
        times = np.arange(length, dtype=np.float64) * SECONDS_PER_HOUR
        return cls(times, pv[:length], load, len(unit_ids))


def household_number(unit_id: str) -> int:
    """``E007`` -> 7."""
    digits = unit_id.lstrip("Ee")
    if not digits.isdigit():
        raise ValueError(f"unit id = {unit_id!r} (must look like E001)")
    return int(digits)


def read_simple_csv(path: str | Path) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``time,pv_w,load_w`` with a header; time in seconds since the start of the run."""
    times: list[float] = []
    pv: list[float] = []
    load: list[float] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        expected = {"time", "pv_w", "load_w"}
        if reader.fieldnames is None or not expected <= set(reader.fieldnames):
            raise ValueError(f"{path}: header = {reader.fieldnames} (must hold time,pv_w,load_w)")
        for line, row in enumerate(reader, start=2):
            try:
                times.append(float(row["time"]))
                pv.append(float(row["pv_w"]))
                load.append(float(row["load_w"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: row = {row} (numbers expected)") from None
    return np.array(times), np.array(pv), np.array(load)


def read_original_solar_csv(path: str | Path) -> FloatArray:
    """365 rows x 24 hourly values (W), no header -> one series of 8760 hourly samples."""
    rows: list[list[float]] = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < HOURS_PER_DAY:
                raise ValueError(f"{path}:{line}: {len(row)} values (must be 24)")
            try:
                rows.append([float(v) for v in row[:HOURS_PER_DAY]])
            except ValueError:
                raise ValueError(f"{path}:{line}: non-numeric value") from None
    return np.array(rows, dtype=np.float64).reshape(-1)


_LOAD_FIRST_COLUMN = 6  # 48 half-hourly kW values start here; the on-the-hour ones are used


def read_original_load_csv(path: str | Path) -> dict[int, FloatArray]:
    """Household number -> hourly load in W (rows of a household are its days, in order)."""
    days: dict[int, list[FloatArray]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            last = _LOAD_FIRST_COLUMN + 2 * (HOURS_PER_DAY - 1)
            if len(row) <= last:
                raise ValueError(f"{path}:{line}: {len(row)} columns (need {last + 1})")
            try:
                household = int(float(row[1]))
                kw = [float(row[c]) for c in range(_LOAD_FIRST_COLUMN, last + 1, 2)]
            except ValueError:
                raise ValueError(f"{path}:{line}: non-numeric value") from None
            days.setdefault(household, []).append(np.array(kw) * 1000.0)
    return {h: np.concatenate(d) for h, d in days.items()}

"""Year series for the houses: PV per kWp from real weather, household load from a file.

A year series holds values at positions in a calendar year (seconds since 1 January 00:00,
local clock time, of a non-leap year: 29 February takes the values of 28 February). The
simulation maps each simulated instant onto that year by its day of year and time of day,
and interpolates linearly between samples.

Weather sources (`apis sim --weather`):

- ``builtin``: the typical meteorological year (TMY3) of Greensboro, North Carolina
  (36.1 N, 79.95 W) that ships in pvlib's package data;
- a TMY3 file (``.csv``, the NREL format pvlib reads) or an EnergyPlus weather file
  (``.epw``): hourly GHI, DNI, DHI, air temperature and wind, and the site in the header;
- a CSV of our own (see `read_csv_series`): a ``time`` column and either ``ghi_w_m2``
  (global horizontal irradiance, W/m2; the site as ``# latitude=..`` and ``# longitude=..``
  comment lines, optional ``temp_air_c``) or ``pv_w_per_kwp`` (PV power, used as given).

PV from irradiance is a simple fixed-tilt model with pvlib: the sun's position for the
site, the irradiance on a plane tilted `TILT_DEG` facing the equator (Erbs split of GHI
when only GHI is given; isotropic sky), the Faiman cell temperature, the PVWatts DC model
(-0.37 %/K) and `SYSTEM_FACTOR` for wiring, soiling and mismatch. A unit's PV is that power
per kWp times its module capacity (the peak power the simulation gives its house).

Household load files (`apis sim --load PATH`): a ``time`` column and one or more columns
of household load in W; unit i takes column i mod the number of columns, as given.

Every sample is checked: a bad one is a `WeatherError` naming the file, the line, the
column, the value and the limit.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from apis.sim.community import SimError

FloatArray = NDArray[np.float64]

BUILTIN = "builtin"
BUILTIN_FILE = "723170TYA.CSV"  # in pvlib/data: Greensboro NC, TMY3
YEAR_S = 365 * 86400.0
MAX_GAP_S = 3 * 3600.0  # samples further apart than this are a gap
TILT_DEG = 30.0
SYSTEM_FACTOR = 0.90
GAMMA_PDC = -0.0037  # 1/K
MAX_GHI_W_M2 = 1500.0
MAX_PV_W_PER_KWP = 1500.0
MAX_LOAD_W = 100_000.0
_REFERENCE_YEAR = 1990  # a non-leap year: positions are counted in it


class WeatherError(SimError):
    """A weather or load file cannot be used; the message names the file, place and value."""


def year_position(at: datetime) -> float:
    """Seconds since 1 January 00:00 of `at`'s year, counted in a non-leap year."""
    day = 28 if at.month == 2 and at.day == 29 else at.day
    date = datetime(_REFERENCE_YEAR, at.month, day)
    return ((date - datetime(_REFERENCE_YEAR, 1, 1)).days * 86400.0 + at.hour * 3600.0
            + at.minute * 60.0 + at.second + at.microsecond / 1e6)


@dataclass(frozen=True)
class YearSeries:
    """Samples at positions in the year (increasing); values: one column or several."""

    source: str
    positions_s: FloatArray
    values: FloatArray  # (samples x columns)
    full_year: bool  # True: the series wraps around from 31 December to 1 January

    @property
    def columns(self) -> int:
        return int(self.values.shape[1])

    def at(self, positions: FloatArray) -> FloatArray:
        """(positions x columns) by linear interpolation."""
        x = np.asarray(positions, dtype=np.float64) % YEAR_S
        out = np.empty((x.size, self.columns))
        for c in range(self.columns):
            if self.full_year:
                out[:, c] = np.interp(x, self.positions_s, self.values[:, c], period=YEAR_S)
            else:
                out[:, c] = np.interp(x, self.positions_s, self.values[:, c])
        return out

    def check_covers(self, start: datetime, duration_s: float) -> None:
        """A series of less than a year must cover the simulated span (in one year)."""
        if self.full_year:
            return
        first, last = float(self.positions_s[0]), float(self.positions_s[-1])
        begin = year_position(start)
        end = begin + duration_s
        if begin < first or end > last + 1e-6:
            raise WeatherError(
                f"{self.source}: covers {_when(first)} .. {_when(last)} of the year, the run "
                f"needs {_when(begin)} .. {_when(end)} (a file of less than a year must "
                "cover the whole run)"
            )


def _when(position: float) -> str:
    at = datetime(_REFERENCE_YEAR, 1, 1) + timedelta(seconds=position)
    return at.strftime("%m-%d %H:%M") if position < YEAR_S else "12-31 24:00+"


def _checked_positions(source: str, positions: FloatArray, lines: list[int]) -> bool:
    """Positions must increase, with no gap over MAX_GAP_S; True if they span a year."""
    if positions.size < 2:
        raise WeatherError(f"{source}: {positions.size} sample(s) (need at least 2)")
    steps = np.diff(positions)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        k = int(bad[0]) + 1
        raise WeatherError(
            f"{source}:{lines[k]}: time {_when(float(positions[k]))} is not after the line "
            f"before ({_when(float(positions[k - 1]))}); times must increase within one year "
            "(29 February rows are dropped)"
        )
    gaps = np.flatnonzero(steps > MAX_GAP_S)
    if gaps.size:
        k = int(gaps[0]) + 1
        raise WeatherError(
            f"{source}:{lines[k]}: gap of {steps[k - 1] / 3600:.2f} h before "
            f"{_when(float(positions[k]))} (limit {MAX_GAP_S / 3600:g} h)"
        )
    wrap = positions[0] + YEAR_S - positions[-1]
    return bool(positions[-1] - positions[0] >= YEAR_S - 86400.0 and wrap <= MAX_GAP_S)


def _check_values(source: str, name: str, values: FloatArray, lines: list[int],
                  limit: float) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        k = int(bad[0])
        raise WeatherError(f"{source}:{lines[k]}: column {name} = {values[k]} (a number needed)")
    low = np.flatnonzero(values < 0)
    if low.size:
        k = int(low[0])
        raise WeatherError(f"{source}:{lines[k]}: column {name} = {values[k]:g} (must be >= 0)")
    high = np.flatnonzero(values > limit)
    if high.size:
        k = int(high[0])
        raise WeatherError(
            f"{source}:{lines[k]}: column {name} = {values[k]:g} (must be <= {limit:g})"
        )


# ---- PV from irradiance ------------------------------------------------------------------


def pv_w_per_kwp(
    positions_s: FloatArray, tz_hours: float, latitude: float, longitude: float,
    altitude: float, ghi: FloatArray, dni: FloatArray | None, dhi: FloatArray | None,
    temp_air: FloatArray | None, wind: FloatArray | None,
) -> FloatArray:
    """DC power per kWp of a fixed-tilt array at the positions (local standard time)."""
    import pandas as pd
    import pvlib

    zone = timezone(timedelta(hours=tz_hours))
    origin = pd.Timestamp(datetime(_REFERENCE_YEAR, 1, 1, tzinfo=zone))
    times = pd.DatetimeIndex(origin + pd.to_timedelta(positions_s, unit="s"))
    sun = pvlib.solarposition.get_solarposition(times, latitude, longitude, altitude=altitude)
    ghi_s = pd.Series(ghi, index=times)
    if dni is None or dhi is None:
        split = pvlib.irradiance.erbs(ghi_s, sun["zenith"], np.asarray(times.day_of_year))
        dni_s, dhi_s = split["dni"], split["dhi"]
    else:
        dni_s, dhi_s = pd.Series(dni, index=times), pd.Series(dhi, index=times)
    azimuth = 180.0 if latitude >= 0 else 0.0
    poa = pvlib.irradiance.get_total_irradiance(
        TILT_DEG, azimuth, sun["apparent_zenith"], sun["azimuth"], dni_s, ghi_s, dhi_s,
        albedo=0.2, model="isotropic",
    )["poa_global"].fillna(0.0).clip(lower=0.0)
    air = pd.Series(temp_air if temp_air is not None else np.full(len(times), 20.0),
                    index=times)
    wind_s = pd.Series(wind if wind is not None else np.full(len(times), 1.0), index=times)
    cell = pvlib.temperature.faiman(poa, air, wind_s)
    dc = pvlib.pvsystem.pvwatts_dc(poa, cell, pdc0=1000.0, gamma_pdc=GAMMA_PDC)
    result: FloatArray = np.clip(np.nan_to_num(np.asarray(dc, dtype=np.float64)), 0.0, None)
    return result * SYSTEM_FACTOR


# ---- typical-year files (pvlib's readers) ------------------------------------------------


def builtin_path() -> Path:
    import pvlib

    return Path(pvlib.__file__).parent / "data" / BUILTIN_FILE


def _read_typical_year(path: Path, kind: str) -> YearSeries:
    from pvlib.iotools import read_epw, read_tmy3

    source = str(path)
    try:
        if kind == "epw":
            data, meta = read_epw(str(path))
            header_lines = 8
        else:
            data, meta = read_tmy3(str(path), map_variables=True)
            header_lines = 2
    except Exception as error:  # any failure of the reader: its own message, shown as is
        raise WeatherError(f"{source}: not a readable {kind.upper()} file ({error})") from None
    for column in ("ghi", "dni", "dhi"):
        if column not in data.columns:
            raise WeatherError(f"{source}: no {column} column (a {kind.upper()} file has one)")
    try:
        latitude, longitude = float(meta["latitude"]), float(meta["longitude"])
        altitude, tz = float(meta.get("altitude", 0.0)), float(meta["TZ"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeatherError(f"{source}: header lacks the site ({error})") from None
    # hour-ending stamps (24:00 is the next day's 00:00): a sample stands for the middle
    # of its hour; real 29 February rows are dropped
    stamps = data.index
    keep = np.asarray(~((stamps.month == 2) & (stamps.day == 29)))
    ends = np.array([year_position(datetime(2001, m, d, h, mi)) for m, d, h, mi in zip(
        stamps.month[keep], stamps.day[keep], stamps.hour[keep], stamps.minute[keep],
        strict=True)], dtype=np.float64)
    unsorted = (ends - 1800.0) % YEAR_S
    order = np.argsort(unsorted, kind="stable")
    positions = unsorted[order]
    file_lines = np.arange(len(data))[keep] + header_lines + 1
    lines = [int(x) for x in file_lines[order]]
    columns: dict[str, FloatArray] = {}
    for name in ("ghi", "dni", "dhi", "temp_air", "wind_speed"):
        if name in data.columns:
            columns[name] = np.asarray(_numeric(data[name]), dtype=np.float64)[keep][order]
    for name in ("ghi", "dni", "dhi"):
        _check_values(source, name, columns[name], lines, MAX_GHI_W_M2)
    full = _checked_positions(source, positions, lines)
    pv = pv_w_per_kwp(positions, tz, latitude, longitude, altitude, columns["ghi"],
                      columns["dni"], columns["dhi"], columns.get("temp_air"),
                      columns.get("wind_speed"))
    return YearSeries(source, positions, pv[:, None], full)


def _numeric(column: Any) -> Any:
    import pandas as pd

    return pd.to_numeric(column, errors="coerce")


# ---- our CSV -----------------------------------------------------------------------------


def _parse_time(source: str, line: int, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise WeatherError(
            f"{source}:{line}: column time = {text!r} (an ISO date and time expected, e.g. "
            "2020-06-01 12:00)"
        ) from None


def read_csv_series(path: Path, allowed: tuple[str, ...] | None) -> tuple[
        YearSeries, dict[str, str], list[str], list[int]]:
    """A CSV with ``# key=value`` comment lines, a header with ``time`` and value columns.

    `allowed`: the value columns one of which must be there (the others are ignored);
    None: every column but time is a value column. Returns the series (its columns in
    `allowed` or header order), the comment keys, the column names and the file line of
    each sample."""
    source = str(path)
    meta: dict[str, str] = {}
    header: list[str] | None = None
    lines: list[int] = []
    times: list[datetime] = []
    rows: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip():
                    continue
                if row[0].lstrip().startswith("#"):
                    key, _, value = ",".join(row).lstrip().lstrip("#").partition("=")
                    meta[key.strip().lower()] = value.strip()
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    if "time" not in header:
                        raise WeatherError(
                            f"{source}:{line}: header = {header} (must hold a time column)"
                        )
                    continue
                if len(row) != len(header):
                    raise WeatherError(f"{source}:{line}: {len(row)} values (the header has "
                                       f"{len(header)}: {','.join(header)})")
                at = _parse_time(source, line, row[header.index("time")])
                if at.month == 2 and at.day == 29:
                    continue
                lines.append(line)
                times.append(at)
                rows.append(row)
    except OSError as error:
        raise WeatherError(f"{source}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise WeatherError(f"{source}: not a text file (UTF-8)") from None
    if header is None:
        raise WeatherError(f"{source}: no header line (must hold a time column)")
    if allowed is None:
        names = [c for c in header if c != "time"]
        if not names:
            raise WeatherError(f"{source}: header = {header} (needs a column of values)")
    else:
        names = [c for c in allowed if c in header]
        if not names:
            raise WeatherError(
                f"{source}: header = {header} (must hold time and one of {', '.join(allowed)})"
            )
    values = np.empty((len(rows), len(names)))
    for c, name in enumerate(names):
        index = header.index(name)
        for r, row in enumerate(rows):
            try:
                values[r, c] = float(row[index])
            except ValueError:
                raise WeatherError(
                    f"{source}:{lines[r]}: column {name} = {row[index]!r} (a number needed)"
                ) from None
    positions = np.array([year_position(t) for t in times], dtype=np.float64)
    full = _checked_positions(source, positions, lines)
    return YearSeries(source, positions, values, full), meta, names, lines


def _read_weather_csv(path: Path) -> YearSeries:
    source = str(path)
    series, meta, names, lines = read_csv_series(path, ("pv_w_per_kwp", "ghi_w_m2"))
    name = names[0]
    if name == "pv_w_per_kwp":
        _check_values(source, name, series.values[:, 0], lines, MAX_PV_W_PER_KWP)
        return series
    ghi = series.values[:, 0]
    _check_values(source, name, ghi, lines, MAX_GHI_W_M2)
    site = {}
    for key, low, high in (("latitude", -90.0, 90.0), ("longitude", -180.0, 180.0)):
        if key not in meta:
            raise WeatherError(
                f"{source}: no '# {key}=...' line (GHI needs the site's latitude and longitude)"
            )
        try:
            site[key] = float(meta[key])
        except ValueError:
            raise WeatherError(f"{source}: {key} = {meta[key]!r} (a number needed)") from None
        if not low <= site[key] <= high:
            raise WeatherError(f"{source}: {key} = {site[key]:g} (must be {low:g}..{high:g})")
    tz = meta.get("tz_hours")
    try:
        tz_hours = float(tz) if tz is not None else round(site["longitude"] / 15.0)
    except ValueError:
        raise WeatherError(f"{source}: tz_hours = {tz!r} (a number needed)") from None
    temp: FloatArray | None = None
    if "temp_air_c" in _header_of(path):
        temp = read_csv_series(path, ("temp_air_c",))[0].values[:, 0]
        if not np.all(np.isfinite(temp)) or np.any(np.abs(temp) > 70):
            k = int(np.flatnonzero(~np.isfinite(temp) | (np.abs(temp) > 70))[0])
            raise WeatherError(f"{source}:{lines[k]}: column temp_air_c = {temp[k]:g} "
                               "(must be -70..70)")
    pv = pv_w_per_kwp(series.positions_s, tz_hours, site["latitude"], site["longitude"], 0.0,
                      ghi, None, None, temp, None)
    return YearSeries(source, series.positions_s, pv[:, None], series.full_year)


def _header_of(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if row and "".join(row).strip() and not row[0].lstrip().startswith("#"):
                return [c.strip() for c in row]
    return []


def _kind(path: Path) -> str:
    if path.suffix.lower() == ".epw":
        return "epw"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.readline()
            second = f.readline()
    except OSError as error:
        raise WeatherError(f"{path}: cannot be read ({error.strerror})") from None
    return "tmy3" if second.startswith("Date (MM/DD/YYYY)") else "csv"


@lru_cache(maxsize=8)
def _weather_cached(path: str, stamp: tuple[int, int]) -> YearSeries:
    del stamp
    file = Path(path)
    kind = _kind(file)
    if kind == "csv":
        return _read_weather_csv(file)
    return _read_typical_year(file, kind)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = path.stat()
    except OSError as error:
        raise WeatherError(f"{path}: cannot be read ({error.strerror})") from None
    if not path.is_file():
        raise WeatherError(f"{path}: not a file")
    return (info.st_mtime_ns, info.st_size)


def weather_path(source: str) -> Path:
    """The file of a --weather value (``builtin`` or a path), resolved."""
    return builtin_path() if source == BUILTIN else Path(source).expanduser().resolve()


def read_weather(source: str) -> YearSeries:
    """PV power per kWp (W) over the year from a --weather value (cached per file)."""
    path = weather_path(source)
    return _weather_cached(str(path), _stamp(path))


@lru_cache(maxsize=8)
def _load_cached(path: str, stamp: tuple[int, int]) -> YearSeries:
    del stamp
    series, _, names, lines = read_csv_series(Path(path), None)
    for c, name in enumerate(names):
        _check_values(path, name, series.values[:, c], lines, MAX_LOAD_W)
    return series


def read_load(source: str) -> YearSeries:
    """Household load (W) per column over the year from a --load file (cached per file)."""
    path = Path(source).expanduser().resolve()
    return _load_cached(str(path), _stamp(path))


def seasonal_factor(positions_s: FloatArray | float) -> FloatArray:
    """The built-in seasonal load shape (mean 1 over the year): heating in winter, cooling
    in summer, least in spring and autumn. With d the day of the year (0 = 1 January):
    1 + 0.10 cos(2 pi (d - 15) / 365) + 0.20 cos(4 pi (d - 15) / 365): 1.30 in mid-January,
    about 1.10 in mid-July, about 0.80 in mid-April and mid-October."""
    d = np.asarray(positions_s, dtype=np.float64) / 86400.0
    angle = 2.0 * math.pi * (d - 15.0) / 365.0
    result: FloatArray = 1.0 + 0.10 * np.cos(angle) + 0.20 * np.cos(2.0 * angle)
    return result

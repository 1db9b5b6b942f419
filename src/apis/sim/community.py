"""What a simulation runs: the community's configuration, the settings and sweep overrides.

A community comes from a cluster directory (`--config`), from the generator (`--units N`,
the same files `apis config init` writes) or, with neither, from the embedded default
4-unit cluster. A run works on a private copy of the files (the unit code re-reads them
while it runs); sweep parameters change that copy, never the original:

- ``units``: number of generated units (not with a configuration directory);
- ``seed``: the seed of the run (houses, starting charge, unit randomness);
- ``battery``: every unit's `batteryNominalCapacityWh`; ``battery.scale``: a factor on each
  unit's own capacity. Both scale the Wh thresholds of the scenarios with the capacity, so a
  household keeps its attitude (status bands as shares of its battery);
- ``scenario.<band>``: where a status band of every unit's scenario begins, as a share of
  the unit's capacity, e.g. ``scenario.excess=0.7`` (`apis.sim.bands`);
- ``hwConfig.<path>``: a key of every unit's hwConfig.json;
- ``policy.<path>`` or any other dotted path, e.g. ``mediator.deal.gridCurrentA``: a key of
  policy.json (original camelCase names).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from apis.config.errors import ConfigError, Problem
from apis.config.generate import default_cluster_dir, write_cluster
from apis.config.loader import Cluster, find_unit_configs, load_cluster
from apis.emulator.converter import ConverterModel
from apis.emulator.world import DEFAULT_START as EMULATOR_START
from apis.sim.bands import BandError, band_name, check_share, move_bands

# The emulator's converter made as quick as the real EZA2500 (milliseconds): the unit's
# checkpoints (3 reads, 100 ms apart) see the commanded current, as on hardware. The
# emulator's default (0.2 s lag) fails them: a deal would never start.
RESPONSIVE_CONVERTER = ConverterModel(voltage_ramp_v_per_s=300.0, response_time_s=0.05)
DEFAULT_START = EMULATOR_START  # 2020-01-01, as the emulator
SAMPLE_INTERVAL_S = 60.0


FIDELITIES = ("faithful", "plan")
PLAN_SAMPLE_INTERVAL_S = 900.0  # the planning fidelity's default: a metering interval


class SimError(ValueError):
    """A simulation cannot be set up as asked; the message says which setting and why."""


@dataclass(frozen=True)
class PlanParameters:
    """The planning fidelity's own settings (`apis.sim.plan`).

    The latencies are from deal creation to the start of its current, as faithful runs
    measure them (`apis sim validate` prints the measured ones): on a grid already
    energised the Grid Master activates a deal at its next main-loop pass; on a dark grid a
    voltage reference must first soft-start and be authorised."""

    step_s: float = 60.0
    latency_live_s: float = 5.0
    latency_dark_s: float = 13.0

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise SimError(f"plan step = {self.step_s} s (must be > 0)")
        for name in ("latency_live_s", "latency_dark_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise SimError(f"plan {name} = {value} (must be >= 0)")

    def to_json(self) -> dict[str, float]:
        return {"step_s": self.step_s, "latency_live_s": self.latency_live_s,
                "latency_dark_s": self.latency_dark_s}


@dataclass(frozen=True)
class SimSettings:
    config_dir: Path | None = None  # None: --units or the default cluster
    units: int | None = None  # generate this many units
    days: float = 1.0
    seed: int = 0
    start: datetime = DEFAULT_START
    sharing: bool = True
    overrides: tuple[tuple[str, str], ...] = ()  # (parameter, value) from a sweep
    initial_rsoc: tuple[float, ...] | None = None  # per unit, %; None: seeded 40..70 %
    quiet_step_s: float = 10.0
    sample_interval_s: float = SAMPLE_INTERVAL_S
    converter: ConverterModel = field(default=RESPONSIVE_CONVERTER)
    fidelity: str = "faithful"  # or "plan" (see FIDELITIES)
    plan: PlanParameters = field(default_factory=PlanParameters)
    weather: str | None = None  # "builtin" or a weather file (apis.sim.weather); None: built-in
    load: str | None = None  # "seasonal" or a load file; None: the built-in daily load

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise SimError(f"--fidelity = {self.fidelity!r} (must be one of "
                           f"{', '.join(FIDELITIES)})")
        if self.days <= 0:
            raise SimError(f"--days = {self.days} (must be > 0)")
        if self.units is not None and self.units < 1:
            raise SimError(f"--units = {self.units} (must be >= 1)")
        if self.config_dir is not None and self.units is not None:
            raise SimError("--config and --units (give one or neither)")
        step, name = ((self.plan.step_s, "plan step") if self.fidelity == "plan"
                      else (self.quiet_step_s, "quiet step"))
        if self.sample_interval_s <= 0 or self.sample_interval_s % step:
            raise SimError(
                f"sample interval = {self.sample_interval_s} s (must be a positive multiple "
                f"of the {name} {step} s)"
            )

    @property
    def duration_s(self) -> float:
        return self.days * 86400.0

    def with_override(self, parameter: str, value: str) -> SimSettings:
        """These settings with one sweep parameter set (`units` and `seed` apply here)."""
        if parameter == "units":
            if self.config_dir is not None:
                raise SimError("sweep units: only with generated units (not with --config)")
            return dataclasses.replace(self, units=_int(parameter, value))
        if parameter == "seed":
            return dataclasses.replace(self, seed=_int(parameter, value))
        if parameter == "days":
            return dataclasses.replace(self, days=_float(parameter, value))
        return dataclasses.replace(self, overrides=(*self.overrides, (parameter, value)))


def _int(parameter: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SimError(f"{parameter} = {value!r} (must be an integer)") from None


def _float(parameter: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SimError(f"{parameter} = {value!r} (must be a number)") from None


def parse_value(text: str) -> Any:
    """A sweep value: JSON when it parses (numbers, true, null, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@contextmanager
def community(settings: SimSettings) -> Iterator[Cluster]:
    """The cluster a run simulates, its files in a private folder for the run's duration.

    The unit code re-reads hwConfig, scenario and policy from disk every refreshing period,
    as the original does, so the community (with the sweep's overrides applied to the
    files) must exist on disk while it runs. Each unit's state, deal-log and lock paths are
    moved into that folder too, so that runs never share files."""
    with tempfile.TemporaryDirectory(prefix="apis-sim-") as tmp:
        yield load_community(settings, Path(tmp))


def load_community(settings: SimSettings, directory: Path) -> Cluster:
    """Write the community's files into `directory` (overrides applied) and load them."""
    if settings.units is not None:
        write_cluster(directory, settings.units)
    else:
        source = settings.config_dir if settings.config_dir is not None else default_cluster_dir()
        if not source.is_dir():
            raise ConfigError([Problem(str(source), "", "not a directory")])
        shutil.copytree(source, directory, dirs_exist_ok=True)
    for config_path in find_unit_configs(directory):
        _private_paths(config_path, directory)
    cluster = load_cluster(directory)
    bands = [(p, v) for p, v in settings.overrides if band_name(p) is not None]
    for parameter, value in settings.overrides:
        if band_name(parameter) is None:
            apply_override(cluster, directory, parameter, value)
    if bands:  # after the battery overrides: the shares are of the capacity they set
        apply_bands(load_cluster(directory), directory, bands)
    return load_cluster(directory) if settings.overrides else cluster


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _private_paths(config_path: Path, directory: Path) -> None:
    data = _read(config_path)
    unit = str(data.get("unitId", config_path.parent.name))
    data["stateFileFormat"] = f"{directory}/state/{unit}/%s"
    data["dealLogDirFormat"] = f"'{directory}/dealLog/{unit}/'uuuu'/'MM'/'dd"
    data["fileSystemExclusiveLockFileFormat"] = f"{directory}/lock/.apis.{unit}.%s.lock"
    _write(config_path, data)


def _inside(path: Path, directory: Path, parameter: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(directory.resolve()):
        raise SimError(
            f"sweep parameter {parameter!r}: {path} lies outside the cluster directory "
            "(the simulation edits copies only)"
        )
    return resolved


def apply_bands(cluster: Cluster, directory: Path, overrides: list[tuple[str, str]]) -> None:
    """Move the status bands of every unit's scenario (`apis.sim.bands`), all at once."""
    shares: dict[str, float] = {}
    parameters: dict[str, str] = {}
    for parameter, value in overrides:
        band = band_name(parameter)
        assert band is not None
        try:
            shares[band] = check_share(parameter, parse_value(value))
        except BandError as error:
            raise SimError(str(error)) from None
        parameters[band] = f"{parameter} = {value}"
    written: dict[Path, float] = {}
    for unit in cluster.units:
        capacity = unit.hw_config.battery_nominal_capacity_wh
        path = _inside(unit.scenario_path, directory, overrides[0][0])
        if path in written:
            if written[path] != capacity:
                raise SimError(
                    f"{', '.join(p for p, _v in overrides)}: units of {capacity:g} Wh and "
                    f"{written[path]:g} Wh share the scenario file {path.name} (a band given "
                    "as a share of the capacity needs one capacity per file)")
            continue
        moves = {band: share * capacity for band, share in shares.items()}
        try:
            data = move_bands(_read(path), moves, parameters)
        except BandError as error:
            raise SimError(f"unit {unit.unit_id}: {error}") from None
        _write(path, data)
        written[path] = capacity


def apply_override(cluster: Cluster, directory: Path, parameter: str, value: str) -> None:
    """Change one parameter in the community's files under `directory` (copies)."""
    if parameter in ("battery", "battery.scale"):
        number = _float(parameter, value)
        if number <= 0:
            raise SimError(f"{parameter} = {value!r} (must be > 0)")
        done: set[Path] = set()
        for unit in cluster.units:
            capacity = unit.hw_config.battery_nominal_capacity_wh
            factor = number / capacity if parameter == "battery" else number
            hw_path = _inside(unit.hw_config_path, directory, parameter)
            scenario_path = _inside(unit.scenario_path, directory, parameter)
            if hw_path not in done:
                data = _read(hw_path)
                data["batteryNominalCapacityWh"] = capacity * factor
                _write(hw_path, data)
                done.add(hw_path)
            if scenario_path not in done:
                _write(scenario_path, scale_scenario_json(_read(scenario_path), factor))
                done.add(scenario_path)
        return
    if parameter.startswith("hwConfig."):
        path = parameter.removeprefix("hwConfig.")
        files = {_inside(u.hw_config_path, directory, parameter) for u in cluster.units}
        known = cluster.units[0].hw_config.model_dump(by_alias=True, mode="json")
        file_name = "hwConfig.json"
    else:
        path = parameter.removeprefix("policy.")
        files = {_inside(u.policy_path, directory, parameter) for u in cluster.units}
        known = cluster.policy.model_dump(by_alias=True, mode="json")
        file_name = "policy.json"
    _check_path(known, path, file_name, parameter)
    for file in sorted(files):
        data = _read(file)
        _set_path(data, path, parse_value(value))
        _write(file, data)


def _check_path(data: dict[str, Any], path: str, file: str, parameter: str) -> None:
    """The path must name a key of the file's model (defaults included)."""
    node: Any = data
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[:depth]) or "the top level"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise SimError(
                f"sweep parameter {parameter!r}: {file} has no key {key!r} under {where} "
                f"(keys: {known})"
            )
        node = node[key]


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted key in a file's JSON, creating the objects on the way if absent."""
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def scale_scenario_json(data: dict[str, Any], factor: float) -> dict[str, Any]:
    """A scenario whose Wh thresholds (status ranges, `limitWh`) are multiplied by `factor`."""

    def scale_number(match: re.Match[str]) -> str:
        return str(round(float(match.group(0)) * factor))

    def walk(value: Any, key: str | None) -> Any:
        if isinstance(value, dict):
            if key == "batteryStatus":
                return {_NUMBER.sub(scale_number, k): v for k, v in value.items()}
            return {k: walk(v, k) for k, v in value.items()}
        if key == "limitWh" and isinstance(value, int | float) and not isinstance(value, bool):
            return round(value * factor)
        return value

    result: dict[str, Any] = walk(data, None)
    return result


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``param=v1,v2,...`` -> (param, [v1, v2, ...])."""
    parameter, sep, values = text.partition("=")
    parameter = parameter.strip()
    cases = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not parameter or not cases:
        raise SimError(f"--sweep {text!r} (must be param=v1,v2,..., e.g. units=4,8)")
    return parameter, cases



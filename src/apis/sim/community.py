"""What a simulation runs: the community's configuration, the settings and sweep overrides.

A community comes from a cluster directory (`--config`), from the generator (`--units N`,
the same files `apis config init` writes) or, with neither, from the embedded default
4-unit cluster. Sweep parameters change it in memory, never on disk:

- ``units``: number of generated units (not with a configuration directory);
- ``seed``: the seed of the run (houses, starting charge, unit randomness);
- ``battery``: every unit's `batteryNominalCapacityWh`; ``battery.scale``: a factor on each
  unit's own capacity. Both scale the Wh thresholds of the scenarios with the capacity, so a
  household keeps its attitude (status bands as shares of its battery);
- ``hwConfig.<path>``: a key of every unit's hwConfig.json;
- ``policy.<path>`` or any other dotted path, e.g. ``mediator.deal.gridCurrentA``: a key of
  policy.json (original camelCase names).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from apis.config.errors import ConfigError, Problem, describe_pydantic_error
from apis.config.generate import default_cluster_dir, write_cluster
from apis.config.hwconfig import HwConfig
from apis.config.loader import Cluster, UnitFiles, load_cluster
from apis.config.policy import Policy
from apis.config.scenario import Scenario, ScenarioError
from apis.emulator.converter import ConverterModel
from apis.emulator.world import DEFAULT_START as EMULATOR_START

# The emulator's converter made as quick as the real EZA2500 (milliseconds): the unit's
# checkpoints (3 reads, 100 ms apart) see the commanded current, as on hardware. The
# emulator's default (0.2 s lag) fails them: a deal would never start.
RESPONSIVE_CONVERTER = ConverterModel(voltage_ramp_v_per_s=300.0, response_time_s=0.05)
DEFAULT_START = EMULATOR_START  # 2020-01-01, as the emulator
SAMPLE_INTERVAL_S = 60.0


class SimError(ValueError):
    """A simulation cannot be set up as asked; the message says which setting and why."""


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

    def __post_init__(self) -> None:
        if self.days <= 0:
            raise SimError(f"--days = {self.days} (must be > 0)")
        if self.units is not None and self.units < 1:
            raise SimError(f"--units = {self.units} (must be >= 1)")
        if self.config_dir is not None and self.units is not None:
            raise SimError("--config and --units (give one or neither)")
        if self.sample_interval_s <= 0 or self.sample_interval_s % self.quiet_step_s:
            raise SimError(
                f"sample interval = {self.sample_interval_s} s (must be a positive multiple "
                f"of the quiet step {self.quiet_step_s} s)"
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


def load_community(settings: SimSettings) -> Cluster:
    """The cluster a run simulates, with the settings' overrides applied and checked."""
    if settings.config_dir is not None:
        cluster = load_cluster(settings.config_dir)
    elif settings.units is not None:
        with tempfile.TemporaryDirectory(prefix="apis-sim-") as tmp:
            write_cluster(tmp, settings.units)
            cluster = load_cluster(tmp)
    else:
        cluster = load_cluster(default_cluster_dir())
    for parameter, value in settings.overrides:
        cluster = apply_override(cluster, parameter, value)
    return cluster


def apply_override(cluster: Cluster, parameter: str, value: str) -> Cluster:
    """A copy of `cluster` with one parameter changed; raises SimError or ConfigError."""
    if parameter in ("battery", "battery.scale"):
        number = _float(parameter, value)
        if number <= 0:
            raise SimError(f"{parameter} = {value!r} (must be > 0)")
        scale: Callable[[float], float] = (
            (lambda capacity: number / capacity) if parameter == "battery"
            else (lambda capacity: number)
        )
        units = [_scaled_battery(u, scale(u.hw_config.battery_nominal_capacity_wh))
                 for u in cluster.units]
        return _checked(dataclasses.replace(cluster, units=units))
    if parameter.startswith("hwConfig."):
        path = parameter.removeprefix("hwConfig.")
        units = []
        for u in cluster.units:
            data = u.hw_config.model_dump(by_alias=True, mode="json")
            _set_path(data, path, parse_value(value), "hwConfig.json", parameter)
            hw = _validate(HwConfig, data, f"{u.unit_id}/hwConfig.json")
            units.append(dataclasses.replace(u, hw_config=hw))
        return _checked(dataclasses.replace(cluster, units=units))
    path = parameter.removeprefix("policy.")
    data = cluster.policy.model_dump(by_alias=True, mode="json")
    _set_path(data, path, parse_value(value), "policy.json", parameter)
    policy = _validate(Policy, data, "policy.json")
    units = [dataclasses.replace(u, policy=policy) for u in cluster.units]
    return _checked(dataclasses.replace(cluster, units=units, policy=policy))


def _set_path(data: dict[str, Any], path: str, value: Any, file: str, parameter: str) -> None:
    keys = path.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[:depth]) or "the top level"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise SimError(
                f"sweep parameter {parameter!r}: {file} has no key {key!r} under {where} "
                f"(keys: {known})"
            )
        if depth == len(keys) - 1:
            node[key] = value
        else:
            node = node[key]


def _validate(model: type[Policy] | type[HwConfig], data: Any, file: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = []
        for err in error.errors():
            path, message = describe_pydantic_error(err)
            problems.append(Problem(file, path, message))
        raise ConfigError(problems) from None


def _checked(cluster: Cluster) -> Cluster:
    from apis.config.rules import check_cluster

    errors, warnings = check_cluster(cluster)
    if errors:
        raise ConfigError(errors)
    cluster.warnings = warnings
    return cluster


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


def _scaled_battery(unit: UnitFiles, factor: float) -> UnitFiles:
    capacity = unit.hw_config.battery_nominal_capacity_wh * factor
    hw = unit.hw_config.model_copy(update={"battery_nominal_capacity_wh": capacity})
    try:
        scenario = Scenario.from_json(scale_scenario_json(unit.scenario.to_json(), factor))
    except ScenarioError as error:
        raise ConfigError(
            [Problem(f"{unit.unit_id}/scenario.json", p, m) for p, m in error.problems]
        ) from None
    return dataclasses.replace(unit, hw_config=hw, scenario=scenario)


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``param=v1,v2,...`` -> (param, [v1, v2, ...])."""
    parameter, sep, values = text.partition("=")
    parameter = parameter.strip()
    cases = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not parameter or not cases:
        raise SimError(f"--sweep {text!r} (must be param=v1,v2,..., e.g. units=4,8)")
    return parameter, cases



"""Reading the configuration files of one unit or a whole cluster, with every problem found.

A cluster directory holds `policy.json`, optionally `grid.json`, and one `config.json` per
unit, either in the directory itself (the original single-unit layout) or in one
sub-directory per unit. Paths inside config.json are relative to the config.json's folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from apis.config.base import strip_comments
from apis.config.errors import ConfigError, Problem, describe_pydantic_error
from apis.config.grid import GridConfig
from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy
from apis.config.scenario import Scenario, ScenarioError
from apis.config.unitconfig import UnitConfig

M = TypeVar("M", bound=BaseModel)

FILE_KINDS = ("config", "hwConfig", "policy", "scenario", "grid")


def display_name(path: Path, root: Path | None) -> str:
    """A short file name for messages: relative to the cluster root when possible."""
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return str(path)


def read_json(path: Path, name: str, problems: list[Problem]) -> Any | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(Problem(name, "", "file not found"))
        return None
    except OSError as e:
        problems.append(Problem(name, "", f"cannot read ({e.strerror})"))
        return None
    try:
        return strip_comments(json.loads(text))
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        problems.append(Problem(name, "", f"not valid JSON: {e.msg} at {where}"))
        return None


def validate(model: type[M], data: Any, name: str, problems: list[Problem]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            path, message = describe_pydantic_error(err)
            problems.append(Problem(name, path, message))
        return None


def load_model(model: type[M], path: Path, name: str, problems: list[Problem]) -> M | None:
    data = read_json(path, name, problems)
    return None if data is None else validate(model, data, name, problems)


def load_scenario(path: Path, name: str, problems: list[Problem]) -> Scenario | None:
    data = read_json(path, name, problems)
    if data is None:
        return None
    try:
        return Scenario.from_json(data)
    except ScenarioError as e:
        problems.extend(Problem(name, p, m) for p, m in e.problems)
        return None


@dataclass
class UnitFiles:
    """One unit's files, loaded."""

    config_path: Path
    config: UnitConfig
    hw_config_path: Path
    hw_config: HwConfig
    policy_path: Path
    policy: Policy
    scenario_path: Path
    scenario: Scenario

    @property
    def unit_id(self) -> str:
        return self.config.unit_id


@dataclass
class Cluster:
    """A whole cluster's configuration: per-unit files, the common policy and the grid."""

    root: Path | None
    units: list[UnitFiles]
    policy: Policy
    grid: GridConfig
    grid_path: Path | None = None
    warnings: list[Problem] = field(default_factory=list)

    @property
    def unit_ids(self) -> list[str]:
        return [u.unit_id for u in self.units]

    def unit(self, unit_id: str) -> UnitFiles:
        for u in self.units:
            if u.unit_id == unit_id:
                return u
        raise KeyError(f"unit {unit_id!r} (cluster has {self.unit_ids})")


def resolve(base: Path, file_path: str) -> Path:
    p = Path(file_path.replace("{tmpdir}", "/tmp"))
    return p if p.is_absolute() else (base / p)


def load_unit(config_path: Path, root: Path | None, problems: list[Problem]) -> UnitFiles | None:
    """Load config.json and the three files it names."""
    name = display_name(config_path, root)
    config = load_model(UnitConfig, config_path, name, problems)
    if config is None:
        return None
    base = config_path.parent
    hw_path = resolve(base, config.hw_config_file)
    policy_path = resolve(base, config.policy_file)
    scenario_path = resolve(base, config.scenario_file)
    hw = load_model(HwConfig, hw_path, display_name(hw_path, root), problems)
    policy = load_model(Policy, policy_path, display_name(policy_path, root), problems)
    scenario = load_scenario(scenario_path, display_name(scenario_path, root), problems)
    if hw is None or policy is None or scenario is None:
        return None
    return UnitFiles(config_path, config, hw_path, hw, policy_path, policy, scenario_path, scenario)


def find_unit_configs(directory: Path) -> list[Path]:
    """config.json in the directory and in each direct sub-directory, sorted."""
    found = []
    if (directory / "config.json").is_file():
        found.append(directory / "config.json")
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if (sub / "config.json").is_file():
            found.append(sub / "config.json")
    return found


def load_cluster(directory: Path | str) -> Cluster:
    """Load and check a cluster directory; raise ConfigError with every problem found."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError([Problem(str(root), "", "not a directory")])
    configs = find_unit_configs(root)
    if not configs:
        raise ConfigError(
            [Problem(str(root), "", "no config.json here or in any sub-directory")]
        )
    return load_cluster_files(configs, root=root)


def load_cluster_files(
    config_paths: Sequence[Path], root: Path | None = None, grid_path: Path | None = None
) -> Cluster:
    from apis.config.rules import check_cluster

    problems: list[Problem] = []
    units = [u for p in config_paths if (u := load_unit(p, root, problems)) is not None]
    if grid_path is None and root is not None and (root / "grid.json").is_file():
        grid_path = root / "grid.json"
    grid: GridConfig | None = None
    if grid_path is not None:
        grid = load_model(GridConfig, grid_path, display_name(grid_path, root), problems)
    if problems or not units:
        # Units that share a file would report its problems once each.
        raise ConfigError(list(dict.fromkeys(problems)))
    if grid is None:
        grid = GridConfig.single_bus(u.unit_id for u in units)
    cluster = Cluster(root, units, units[0].policy, grid, grid_path)
    errors, warnings = check_cluster(cluster)
    if errors:
        raise ConfigError(errors)
    cluster.warnings = warnings
    return cluster


def load_files(paths: Iterable[Path]) -> tuple[list[Problem], list[str]]:
    """Check loose files by kind (named by file name); return problems and what was checked."""
    problems: list[Problem] = []
    checked: list[str] = []
    for path in paths:
        kind = path.stem
        name = str(path)
        if kind == "config":
            load_model(UnitConfig, path, name, problems)
        elif kind == "hwConfig":
            load_model(HwConfig, path, name, problems)
        elif kind == "policy":
            load_model(Policy, path, name, problems)
        elif kind == "scenario":
            load_scenario(path, name, problems)
        elif kind == "grid":
            load_model(GridConfig, path, name, problems)
        else:
            problems.append(
                Problem(name, "", f"unknown file kind {kind!r} (must be one of {FILE_KINDS})")
            )
            continue
        checked.append(name)
    return problems, checked

"""Reading the configuration files of one unit or a whole cluster, with every problem found.

A cluster directory holds `policy.json`, optionally `grid.json`, and one `config.json` per
unit, either in the directory itself (the original single-unit layout) or in one
sub-directory per unit. Paths inside config.json are relative to the config.json's folder.
"""

from __future__ import annotations

import os
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
from apis.config.reader import FileRefused, read_object
from apis.config.scenario import Scenario, ScenarioError
from apis.config.unitconfig import UnitConfig

M = TypeVar("M", bound=BaseModel)

FILE_KINDS = ("config", "hwConfig", "policy", "scenario", "grid")


def display_name(path: Path, root: Path | None) -> str:
    """A short file name for messages: relative to the cluster root when possible."""
    if root is not None:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except (ValueError, OSError, RuntimeError):  # elsewhere, or a symlink loop
            pass
    return str(path)


def read_json(path: Path, name: str, problems: list[Problem]) -> dict[str, Any] | None:
    """The file's JSON object without its comment keys, or None (the reason in problems)."""
    try:
        return strip_comments(read_object(path))  # type: ignore[no-any-return]
    except FileRefused as e:
        problems.extend([Problem(name, p, m) for p, m in e.problems]
                        or [Problem(name, "", str(e))])
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


def _read_scenario(path: Path, name: str, problems: list[Problem]) -> Scenario | None:
    """The scenario, also when its batteryStatus ranges have gaps or overlaps (added to
    `problems`): the rules with hwConfig.json can still be judged."""
    data = read_json(path, name, problems)
    if data is None:
        return None
    try:
        scenario = Scenario.from_json(data)
    except ScenarioError as e:
        problems.extend(Problem(name, p, m) for p, m in e.problems)
        return None
    problems.extend(Problem(name, p, m) for p, m in scenario.band_problems())
    return scenario


def load_scenario(path: Path, name: str, problems: list[Problem]) -> Scenario | None:
    """The scenario if it breaks none of its own rules, else None (problems added)."""
    before = len(problems)
    scenario = _read_scenario(path, name, problems)
    return scenario if len(problems) == before else None


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


# The names of the original single-unit layout, checked when config.json cannot tell.
_SIBLINGS = (("hwConfigFile", "hwConfig.json"), ("policyFile", "policy.json"),
             ("scenarioFile", "scenario.json"))


def _named_files(
    config_path: Path, data: Any, config: UnitConfig | None
) -> list[Path | None]:
    """The hwConfig, policy and scenario files config.json names. Without a valid config.json
    they are still checked: the name it gives if it is a string, else the file of the
    original name beside it, if there is one."""
    base = config_path.parent
    if config is not None:
        return [resolve(base, f) for f in
                (config.hw_config_file, config.policy_file, config.scenario_file)]
    found: list[Path | None] = []
    for key, sibling in _SIBLINGS:
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str) and value:
            found.append(resolve(base, value))
        else:
            found.append(base / sibling if present(base / sibling) else None)
    return found


def _unit_files(
    config_path: Path, root: Path | None, problems: list[Problem]
) -> UnitFiles | None:
    """Load config.json and the three files it names, each judged by its own rules even
    when another is wrong. The UnitFiles when all four could be read into models (their
    batteryStatus gaps may still be among `problems`), else None."""
    name = display_name(config_path, root)
    data = read_json(config_path, name, problems)
    config = None if data is None else validate(UnitConfig, data, name, problems)
    hw_path, policy_path, scenario_path = _named_files(config_path, data, config)
    hw = policy = scenario = None
    if hw_path is not None:
        hw = load_model(HwConfig, hw_path, display_name(hw_path, root), problems)
    if policy_path is not None:
        policy = load_model(Policy, policy_path, display_name(policy_path, root), problems)
    if scenario_path is not None:
        scenario = _read_scenario(scenario_path, display_name(scenario_path, root), problems)
    if (config is None or hw_path is None or hw is None or policy_path is None
            or policy is None or scenario_path is None or scenario is None):
        return None
    return UnitFiles(config_path, config, hw_path, hw, policy_path, policy, scenario_path, scenario)


def load_unit(config_path: Path, root: Path | None, problems: list[Problem]) -> UnitFiles | None:
    """Load config.json and the three files it names; None if any breaks its own rules
    (every problem of every file added to `problems`). The rules across files are
    load_cluster_files'."""
    before = len(problems)
    files = _unit_files(config_path, root, problems)
    return files if len(problems) == before else None


def present(path: Path) -> bool:
    """Something other than a directory is at `path` (a FIFO or a dangling link too: the
    reader says what is wrong with it)."""
    return os.path.lexists(path) and not path.is_dir()


def find_unit_configs(directory: Path) -> list[Path]:
    """config.json in the directory and in each direct sub-directory, sorted."""
    found = []
    if present(directory / "config.json"):
        found.append(directory / "config.json")
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if present(sub / "config.json"):
            found.append(sub / "config.json")
    return found


def load_cluster(directory: Path | str) -> Cluster:
    """Load and check a cluster directory; raise ConfigError with every problem found."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError([Problem(str(root), "", "not a directory")])
    try:
        configs = find_unit_configs(root)
    except OSError as e:
        raise ConfigError([Problem(str(root), "", f"cannot list ({e.strerror})")]) from None
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
    loaded = [_unit_files(p, root, problems) for p in config_paths]
    if grid_path is None and root is not None and present(root / "grid.json"):
        grid_path = root / "grid.json"
    grid: GridConfig | None = None
    if grid_path is not None:
        grid = load_model(GridConfig, grid_path, display_name(grid_path, root), problems)
    units = [u for u in loaded if u is not None]
    if len(units) < len(loaded) or not units or (grid_path is not None and grid is None):
        # Units that share a file would report its problems once each.
        raise ConfigError(list(dict.fromkeys(problems)))
    if grid is None:
        grid = GridConfig.single_bus(u.unit_id for u in units)
    cluster = Cluster(root, units, units[0].policy, grid, grid_path)
    # Every file could be read into its model: the rules across files can be judged.
    errors, warnings = check_cluster(cluster)
    problems.extend(errors)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
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

"""Test rig: a cluster of units from the original sample files, emulated hardware, virtual time.

`Rig` owns the emulated `World` (the emulator's default converter: quick enough for the
original's checkpoints, 3 reads 100 ms apart, once the grid is up), one `WatchedDriver` per
unit (records every converter write and checks, after each, that no two voltage references
stand on the grid without droop), and the `InProcessCluster`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from apis import clock
from apis.config import load_cluster
from apis.config.loader import Cluster
from apis.emulator import ConverterModel, World
from apis.emulator.driver import EmulatedDriver
from apis.hardware.driver import ConverterData, DriverVersion, UnitData
from apis.hardware.modes import ConverterMode
from apis.unit.cluster import InProcessCluster
from apis.unit.ids import IdSource, seeded_ids

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "original-format"
T = TypeVar("T")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "#"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _strip(json.loads((SAMPLE_DIR / name).read_text()))
    return data


def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config(
    root: Path,
    unit_ids: list[str],
    policy: dict[str, Any] | None = None,
    scenarios: dict[str, dict[str, Any]] | None = None,
    hw: dict[str, Any] | None = None,
    unit_hw: dict[str, dict[str, Any]] | None = None,
) -> Cluster:
    """The sample files for `unit_ids`, policy in `autonomous` mode without large-capacity
    units (section 13's common setup), with the given changes."""
    base_policy = merge(
        sample("policy.json"),
        {"operationMode": "autonomous", "memberUnitIds": unit_ids, "largeCapacityUnitIds": []},
    )
    (root / "policy.json").write_text(json.dumps(merge(base_policy, policy or {})))
    for unit_id in unit_ids:
        d = root / unit_id
        d.mkdir(parents=True, exist_ok=True)
        config = merge(
            sample("config.json"),
            {
                "unitId": unit_id,
                "unitName": unit_id,
                "systemType": "dcdc_emulator",
                "hwConfigFile": "./hwConfig.json",
                "policyFile": "../policy.json",
                "scenarioFile": "./scenario.json",
                "dealLogDirFormat": f"'{root}/dealLog/{unit_id}/'uuuu'/'MM'/'dd",
                "stateFileFormat": f"{root}/state/{unit_id}/%s",
                "controlCenter": {"enabled": False},
            },
        )
        config = {k: v for k, v in config.items() if not k.endswith(".encrypted")}
        (d / "config.json").write_text(json.dumps(config))
        hw_config = merge(sample("hwConfig.json"), hw or {})
        hw_config = merge(hw_config, (unit_hw or {}).get(unit_id, {}))
        (d / "hwConfig.json").write_text(json.dumps(hw_config))
        scenario = (scenarios or {}).get(unit_id) or sample("scenario.json")
        (d / "scenario.json").write_text(json.dumps(scenario))
    return load_cluster(root)


@dataclass(frozen=True)
class Write:
    """One converter write seen by a driver."""

    t: float
    unit: str
    kind: str  # "set", "voltage", "current"
    mode: ConverterMode | None
    dvg: float | None
    dig: float | None
    drg: float | None


@dataclass
class Watch:
    writes: list[Write] = field(default_factory=list)
    stiff_conflicts: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    overlaps: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)


class WatchedDriver:
    """An EmulatedDriver that records converter writes and checks the one-CV rule."""

    def __init__(self, inner: EmulatedDriver, watch: Watch) -> None:
        self.inner = inner
        self.world = inner.world
        self.unit_id = inner.unit_id
        self.watch = watch

    def _check(self) -> None:
        world = self.world
        cv = world.mode == int(ConverterMode.VOLTAGE_REFERENCE)
        if int(cv.sum()) >= 2:
            members = tuple(u for u, c in zip(world.unit_ids, cv, strict=True) if c)
            t = asyncio.get_running_loop().time()
            if bool(np.any(world.drg[cv] == 0.0)):
                self.watch.stiff_conflicts.append((t, members))
            else:
                self.watch.overlaps.append((t, members))

    def _record(self, kind: str, mode: ConverterMode | None, dvg: float | None,
                dig: float | None, drg: float | None) -> None:
        t = asyncio.get_running_loop().time()
        self.watch.writes.append(Write(t, self.unit_id, kind, mode, dvg, dig, drg))

    async def read(self) -> UnitData:
        return await self.inner.read()

    async def read_converter(self) -> ConverterData:
        return await self.inner.read_converter()

    async def set(self, mode: ConverterMode, dvg: float, dig: float, drg: float) -> ConverterData:
        self._record("set", mode, dvg, dig, drg)
        result = await self.inner.set(mode, dvg, dig, drg)
        self._check()
        return result

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        self._record("voltage", None, dvg, None, drg)
        result = await self.inner.set_voltage(dvg, drg)
        self._check()
        return result

    async def set_current(self, dig: float) -> ConverterData:
        self._record("current", None, None, dig, None)
        result = await self.inner.set_current(dig)
        self._check()
        return result

    async def version(self) -> DriverVersion:
        return await self.inner.version()


class Rig:
    def __init__(
        self,
        root: Path,
        unit_ids: list[str],
        rsoc: list[float],
        policy: dict[str, Any] | None = None,
        scenarios: dict[str, dict[str, Any]] | None = None,
        hw: dict[str, Any] | None = None,
        unit_hw: dict[str, dict[str, Any]] | None = None,
        seed: int = 1,
        converter: ConverterModel | None = None,
        ids: IdSource = seeded_ids,
    ) -> None:
        self.root = root
        self.config = write_config(root, unit_ids, policy, scenarios, hw, unit_hw)
        self.world = World(
            [(u.unit_id, u.hw_config) for u in self.config.units],
            self.config.grid,
            seed=seed,
            converter=converter,
            initial_rsoc=rsoc,
        )
        for unit_id in unit_ids:
            self.world.set_house_override(unit_id, pv_w=0.0, load_w=0.0)
        self.watch = Watch()
        self.drivers = {
            u: WatchedDriver(EmulatedDriver(self.world, u), self.watch) for u in unit_ids
        }
        # seeded ids by default: a virtual-time test runs the same way each time
        self.cluster = InProcessCluster(self.config, self.drivers, seed=seed, ids=ids)

    def run(self, scenario: Callable[[Rig], Awaitable[T]]) -> T:
        async def main() -> T:
            async with self.cluster.running():
                return await scenario(self)

        result = clock.run(main, "virtual")
        self.assert_one_voltage_reference()  # in every test
        return result

    # ---- observation helpers -------------------------------------------------------------

    def writes(self, unit: str | None = None) -> list[Write]:
        return [w for w in self.watch.writes if unit is None or w.unit == unit]

    def mode_writes(self, unit: str) -> list[Write]:
        return [w for w in self.writes(unit) if w.kind == "set"]

    def assert_one_voltage_reference(self) -> None:
        """The one physical rule: never two stiff voltage references on one grid.

        A hand-over (spec 6.5) overlaps two references, both with droop, for an instant: the
        emulator records that as a droop-parallel episode, not a conflict; each must be over
        within a second."""
        assert self.watch.stiff_conflicts == [], self.watch.stiff_conflicts
        assert self.world.voltage_conflicts == [], self.world.voltage_conflicts
        for episode in self.world.droop_parallels:
            assert episode.duration_s is not None and episode.duration_s < 1.0, episode
            assert any(
                set(members) == set(episode.unit_ids) for _, members in self.watch.overlaps
            ), episode

    def deal_files(self, unit: str) -> list[Path]:
        base = self.root / "dealLog" / unit
        if not base.exists():
            return []
        return sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def read_deal_file(self, path: Path) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(path.read_text())
        return data


def sample_root(tmp_path: Path) -> Path:
    root = tmp_path / "cluster"
    root.mkdir()
    return root


def copy_sample(tmp_path: Path) -> Path:
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, target)
    return target

"""`apis sim optimise`: search scenario and policy values for the best community.

The search runs the planning fidelity (a day of a community in well under a second) on
candidate settings, seeded random points in the ranges given (plus the community as it is,
the reference). Candidates a rule refuses (bands out of order, a value out of its limits)
are counted and skipped. The best few and the reference then run again in the faithful
fidelity, on the same seeds, so the result says what the real unit code does with them.

Parameters are those of `--sweep` (`apis.sim.community`): ``scenario.<band>`` (a share of
each unit's capacity), ``policy.<path>``, ``hwConfig.<path>``, ``battery``/``battery.scale``.
Each is given as ``NAME=LOW:HIGH`` (a number drawn in the range; an integer when both ends
are integers) or ``NAME=V1,V2,...`` (one of the values).

The objective is the community's self-sufficiency (maximised) or the energy bought from the
utility (minimised), summed over the seeds (self-sufficiency: of the summed load and bought
energy).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apis.config.errors import ConfigError
from apis.sim.community import SimError, SimSettings, community
from apis.sim.plan import run_plan
from apis.sim.run import run
from apis.sim.summary import summarize

OBJECTIVES = ("self-sufficiency", "utility")
RESERVED = ("units", "seed", "days")

# Told (what is running, done, total).
SearchProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SearchParameter:
    """One parameter of the search: a range or a list of values."""

    name: str
    low: float | None = None
    high: float | None = None
    values: tuple[str, ...] = ()
    integer: bool = False

    def draw(self, rng: np.random.Generator) -> str:
        if self.values:
            return self.values[int(rng.integers(len(self.values)))]
        assert self.low is not None and self.high is not None
        if self.integer:
            return str(int(rng.integers(int(self.low), int(self.high) + 1)))
        return f"{rng.uniform(self.low, self.high):.4g}"


def parse_parameter(text: str) -> SearchParameter:
    """``NAME=LOW:HIGH`` or ``NAME=V1,V2,...``."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise SimError(f"--param {text!r} (must be NAME=LOW:HIGH or NAME=V1,V2,..., e.g. "
                       "scenario.excess=0.4:0.9)")
    if name in RESERVED:
        raise SimError(f"--param {name}: not searchable ({', '.join(RESERVED)} are set by "
                       "--units, --seeds and --days)")
    if ":" in spec:
        low_text, _, high_text = spec.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise SimError(f"--param {name} = {spec!r} (LOW:HIGH must be two numbers)") from None
        if not low < high:
            raise SimError(f"--param {name} = {spec!r} (LOW {low:g} must be < HIGH {high:g})")
        integer = _is_int(low_text) and _is_int(high_text)
        return SearchParameter(name, low=low, high=high, integer=integer)
    values = tuple(v.strip() for v in spec.split(",") if v.strip())
    if not values:
        raise SimError(f"--param {name} = {spec!r} (no values)")
    return SearchParameter(name, values=values)


def _is_int(text: str) -> bool:
    try:
        int(text.strip())
    except ValueError:
        return False
    return True


@dataclass
class Candidate:
    """Settings tried: the overrides (empty: the community as it is) and the figures."""

    overrides: tuple[tuple[str, str], ...]
    plan: dict[str, float] = field(default_factory=dict)
    faithful: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.overrides:
            return "as generated (reference)"
        return " ".join(f"{p}={v}" for p, v in self.overrides)

    def to_json(self) -> dict[str, Any]:
        return {"overrides": dict(self.overrides), "plan": self.plan,
                "faithful": self.faithful}


@dataclass
class Optimisation:
    objective: str
    seeds: int
    days: float
    units: int
    reference: Candidate
    ranked: list[Candidate]  # every feasible candidate, best first by the plan
    confirmed: list[Candidate]  # the best few, with faithful figures
    refused: list[tuple[str, str]]  # (candidate, why)
    wall_s: dict[str, float]

    def score(self, figures: dict[str, float]) -> float:
        return _score(self.objective, figures)

    @property
    def best(self) -> Candidate | None:
        """The confirmed candidate that does best in the faithful runs."""
        if not self.confirmed:
            return None
        return max(self.confirmed, key=lambda c: self.score(c.faithful))

    def gain(self, candidate: Candidate, fidelity: str = "faithful") -> float:
        """How much better than the reference (points of self-sufficiency, or kWh bought
        less)."""
        mine: dict[str, float] = getattr(candidate, fidelity)
        ref: dict[str, float] = getattr(self.reference, fidelity)
        if self.objective == "utility":
            return (ref["bought_wh"] - mine["bought_wh"]) / 1000.0
        return 100.0 * (mine["self_sufficiency"] - ref["self_sufficiency"])

    def table(self) -> str:
        unit = "points" if self.objective == "self-sufficiency" else "kWh less bought"
        lines = [
            f"apis sim optimise: {self.units} units, {self.days:g} days x {self.seeds} seeds, "
            f"objective {self.objective}; {len(self.ranked)} candidates run with the planning "
            f"fidelity ({len(self.refused)} refused), the best {len(self.confirmed)} and the "
            "reference confirmed with the faithful fidelity",
            "",
            f"| settings | plan SS (%) | plan bought (kWh) | faithful SS (%) | faithful bought "
            f"(kWh) | faithful gain ({unit}) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in [self.reference, *self.confirmed]:
            lines.append(
                f"| {c.label} | {100 * c.plan['self_sufficiency']:.3f} | "
                f"{c.plan['bought_wh'] / 1000:.3f} | {100 * c.faithful['self_sufficiency']:.3f} "
                f"| {c.faithful['bought_wh'] / 1000:.3f} | "
                f"{self.gain(c):+.3f} |")
        best = self.best
        lines.append("")
        if best is not None and self.gain(best) > 0:
            lines.append(f"best: {best.label}: faithful {self.objective} better than the "
                         f"reference by {self.gain(best):.3f} {unit}")
        else:
            lines.append("no candidate beat the reference in the faithful runs")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "objective": self.objective, "units": self.units, "days": self.days,
            "seeds": self.seeds, "reference": self.reference.to_json(),
            "confirmed": [c.to_json() | {"faithful_gain": self.gain(c)}
                          for c in self.confirmed],
            "best": best.to_json() if best is not None else None,
            "ranked": [c.to_json() for c in self.ranked],
            "refused": [{"candidate": c, "why": why} for c, why in self.refused],
            "wall_s": self.wall_s,
        }


def _score(objective: str, figures: dict[str, float]) -> float:
    """Higher is better."""
    if objective == "utility":
        return -figures["bought_wh"]
    return figures["self_sufficiency"]


def _figures(settings: SimSettings) -> dict[str, float]:
    """One run with sharing on (no baseline: a candidate does not change it)."""
    with community(settings) as cluster:
        if settings.fidelity == "plan":
            result: Any = run_plan(settings, cluster)
        else:
            result = run(settings, cluster)
    c = summarize(result)["community"]
    return {"load_wh": c["load_wh"], "bought_wh": c["bought_wh"], "pv_wh": c["pv_wh"],
            "curtailed_wh": c["curtailed_wh"]}


def _over_seeds(base: SimSettings, overrides: tuple[tuple[str, str], ...], fidelity: str,
                seeds: int) -> dict[str, float]:
    total = {"load_wh": 0.0, "bought_wh": 0.0, "pv_wh": 0.0, "curtailed_wh": 0.0}
    for seed in range(seeds):
        settings = dataclasses.replace(base, seed=seed, fidelity=fidelity,
                                       overrides=base.overrides + overrides)
        for key, value in _figures(settings).items():
            total[key] += value
    load = total["load_wh"]
    total["self_sufficiency"] = 1.0 - total["bought_wh"] / load if load > 0 else 1.0
    return total


def optimise(
    base: SimSettings,
    parameters: list[SearchParameter],
    *,
    trials: int = 40,
    confirm: int = 3,
    seeds: int = 1,
    objective: str = "self-sufficiency",
    search_seed: int = 0,
    progress: SearchProgress | None = None,
) -> Optimisation:
    """Search `parameters` over `base` (its units or configuration, days, start)."""
    if objective not in OBJECTIVES:
        raise SimError(f"--objective = {objective!r} (must be one of {', '.join(OBJECTIVES)})")
    if not parameters:
        raise SimError("--param: give at least one parameter to search")
    for name, value in (("--trials", trials), ("--seeds", seeds)):
        if value < 1:
            raise SimError(f"{name} = {value} (must be >= 1)")
    if confirm < 0:
        raise SimError(f"--confirm = {confirm} (must be >= 0)")
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise SimError(f"--param: a parameter is given twice ({', '.join(names)})")
    rng = np.random.default_rng(search_seed)
    seen: set[tuple[tuple[str, str], ...]] = set()
    wanted: list[tuple[tuple[str, str], ...]] = []
    for _ in range(trials * 20):  # ranges of few values repeat: stop when no new point comes
        if len(wanted) == trials:
            break
        point = tuple((p.name, p.draw(rng)) for p in parameters)
        if point not in seen:
            seen.add(point)
            wanted.append(point)
    began = time.perf_counter()
    total = len(wanted) + 1 + confirm + 1
    done = 0

    def told(what: str) -> None:
        if progress is not None:
            progress(what, done, total)

    told("plan: reference")
    reference = Candidate((), plan=_over_seeds(base, (), "plan", seeds))
    done += 1
    ranked: list[Candidate] = []
    refused: list[tuple[str, str]] = []
    for point in wanted:
        candidate = Candidate(point)
        told(f"plan: {candidate.label}")
        try:
            candidate.plan = _over_seeds(base, point, "plan", seeds)
        except (SimError, ConfigError) as error:
            refused.append((candidate.label, str(error)))
        else:
            ranked.append(candidate)
        done += 1
    plan_wall = time.perf_counter() - began
    ranked.sort(key=lambda c: _score(objective, c.plan), reverse=True)
    confirmed = ranked[:confirm]
    total = done + len(confirmed) + 1
    began = time.perf_counter()
    for candidate in [reference, *confirmed]:
        told(f"faithful: {candidate.label}")
        candidate.faithful = _over_seeds(base, candidate.overrides, "faithful", seeds)
        done += 1
    told("done")
    units = base.units if base.units is not None else 0
    if base.units is None:
        with community(base) as cluster:
            units = len(cluster.units)
    return Optimisation(objective, seeds, base.days, units, reference, ranked, confirmed,
                        refused, {"plan": plan_wall, "faithful": time.perf_counter() - began})


def write_outputs(out: Path, result: Optimisation) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = out / "optimise.md"
    table.write_text(result.table() + "\n", encoding="utf-8")
    data = out / "optimise.json"
    data.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return [table, data]

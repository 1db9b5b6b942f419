"""Simulated seconds per wall second of `apis sim`, both fidelities, and peak memory.

Run: .venv/bin/python benchmarks/sim_speed.py [--units 4,20,100] [--days 1] [--seed 0]
     .venv/bin/python benchmarks/sim_speed.py --fidelity plan [--units 20,100,1000] [--days 365]

Each case runs in its own process (so the peak resident memory, from getrusage, is the
case's own), sharing on, no baseline, no output files. `faithful`: the real unit code of every
unit on the in-memory bus, the emulated world, the virtual clock. `plan`: the planning model
(`apis.sim.plan`; its decision tables are built in the run and counted). Speed is given per
wall second and per CPU second of the process: on a shared machine the second is the
steadier figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(units: int, days: float, seed: int, fidelity: str) -> dict[str, float]:
    from apis.sim.community import SimSettings, community
    from apis.sim.simulate import peak_memory_mb

    settings = SimSettings(units=units, days=days, seed=seed, fidelity=fidelity,
                           sample_interval_s=900.0 if fidelity == "plan" else 60.0)
    cpu = time.process_time()
    wall = time.perf_counter()
    if fidelity == "plan":
        from apis.sim.plan import run_plan

        with community(settings) as cluster:
            plan = run_plan(settings, cluster)
        simulated, deals = plan.simulated_s, plan.tally.made
    else:
        from apis.sim.run import run

        result = run(settings)
        simulated, deals = result.simulated_s, len(result.deals)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    return {
        "units": units,
        "simulated_s": simulated,
        "wall_s": wall,
        "cpu_s": cpu,
        "deals": deals,
        "peak_mb": peak_memory_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fidelity", choices=("faithful", "plan"), default="faithful")
    parser.add_argument("--units", default=None, help="default 4,20,100 (plan: 20,100,1000)")
    parser.add_argument("--days", type=float, default=None, help="default 1 (plan: 365)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    plan = args.fidelity == "plan"
    days = args.days if args.days is not None else (365.0 if plan else 1.0)
    if args.one is not None:
        print(json.dumps(one(args.one, days, args.seed, args.fidelity)))
        return
    units = args.units or ("20,100,1000" if plan else "4,20,100")
    print(f"fidelity {args.fidelity}, {days:g} day(s)")
    print(f"{'units':>5} {'sim s':>10} {'wall s':>8} {'sim/wall':>9} {'CPU s':>8} "
          f"{'sim/CPU':>8} {'deals':>7} {'peak MB':>8}")
    for n in (int(u) for u in units.split(",")):
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--days", str(days),
             "--seed", str(args.seed), "--fidelity", args.fidelity],
            capture_output=True, text=True, check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{n:5d} {r['simulated_s']:10.0f} {r['wall_s']:8.1f} "
              f"{r['simulated_s'] / r['wall_s']:9.0f} {r['cpu_s']:8.1f} "
              f"{r['simulated_s'] / r['cpu_s']:8.0f} {r['deals']:7d} {r['peak_mb']:8.0f}",
              flush=True)


if __name__ == "__main__":
    main()

"""Simulated seconds per wall second of `apis sim` for 4, 20 and 100 units, and peak memory.

Run: .venv/bin/python benchmarks/sim_speed.py [--units 4,20,100] [--days 1] [--seed 0]

Each case runs in its own process (so the peak resident memory, from getrusage, is the
case's own): the real unit code of every unit on the in-memory bus, the emulated world, the
virtual clock; sharing on, no baseline, no output files. Speed is given per wall second and
per CPU second of the process: on a shared machine the second is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(units: int, days: float, seed: int) -> dict[str, float]:
    from apis.sim.community import SimSettings
    from apis.sim.run import run
    from apis.sim.simulate import peak_memory_mb

    settings = SimSettings(units=units, days=days, seed=seed)
    cpu = time.process_time()
    result = run(settings)
    cpu = time.process_time() - cpu
    return {
        "units": units,
        "simulated_s": result.simulated_s,
        "wall_s": result.wall_s,
        "cpu_s": cpu,
        "deals": len(result.deals),
        "peak_mb": peak_memory_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="4,20,100")
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.days, args.seed)))
        return
    print(f"{'units':>5} {'sim s':>8} {'wall s':>8} {'sim/wall':>9} {'CPU s':>8} "
          f"{'sim/CPU':>8} {'deals':>6} {'peak MB':>8}")
    for n in (int(u) for u in args.units.split(",")):
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--days", str(args.days),
             "--seed", str(args.seed)],
            capture_output=True, text=True, check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{n:5d} {r['simulated_s']:8.0f} {r['wall_s']:8.1f} "
              f"{r['simulated_s'] / r['wall_s']:9.0f} {r['cpu_s']:8.1f} "
              f"{r['simulated_s'] / r['cpu_s']:8.0f} {r['deals']:6d} {r['peak_mb']:8.0f}",
              flush=True)


if __name__ == "__main__":
    main()

"""The acceptance run of `apis sim`: 20 generated units for one simulated day, through the
command line in its own process, then the checks of tests/sim on its outputs.

Run: .venv/bin/python benchmarks/sim_acceptance.py [--units 20] [--days 1] [--keep DIR]

Checks: every output file is written; the summary and the report's figures agree with what
the CSVs add up to; energy is conserved (community, DC grid, the summary's balance); deals
were made; the command printed its key figures and the report's path. Prints the wall and
CPU time of the command (with the baseline run and the outputs). Too long for the test
suite (minutes on a 2-core machine); tests/sim runs the same checks on 6 units for 6 hours.
Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sim.checks import check_conservation, check_report_agrees_with_csvs  # noqa: E402

OUTPUTS = ("summary.json", "units.csv", "deals.csv", "report.html", "rsoc.png",
           "shared_per_day.png", "grid_voltage.png", "import_export.png", "run-info.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--keep", type=Path, help="write the outputs here (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep if args.keep is not None else Path(tmp) / "out"
        command = [sys.executable, "-m", "apis", "sim", "--units", str(args.units),
                   "--days", str(args.days), "--out", str(out), "-q"]
        print("$", " ".join(command[1:]), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        print(done.stdout, end="")
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            sys.exit(f"apis sim exited with {done.returncode}")
        for name in OUTPUTS:
            assert (out / name).is_file(), f"{name} not written"
        summary = check_report_agrees_with_csvs(out)
        check_conservation(out)
        assert summary["settings"]["units"] == args.units, summary["settings"]
        assert summary["deals"]["made"] >= 1, summary["deals"]
        assert "Self-sufficiency with sharing" in done.stdout
        assert str(out / "report.html") in done.stdout
        info = json.loads((out / "run-info.json").read_text())
        simulated = info["simulated_s"]
        print(f"checks passed: {args.units} units, {args.days:g} days, "
              f"{summary['deals']['made']} deals made, {summary['deals']['completed']} completed")
        print(f"command: {wall:.1f} s wall, {cpu:.1f} s CPU (sharing run {info['wall_s']:.1f} s "
              f"= {simulated / info['wall_s']:,.0f} simulated s per wall s; baseline "
              f"{info['baseline_wall_s']:.1f} s; peak {info['peak_memory_mb']:.0f} MB)")


if __name__ == "__main__":
    main()

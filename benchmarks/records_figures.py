"""How long the derived figures' passes take (records.figures), SQLite and PostgreSQL.

Run: .venv/bin/python benchmarks/records_figures.py [--units 100] [--period 5] [--hours 2]
     [--postgresql]

A store is filled with `--hours` of records as the receiver commits them (one commit per
sampling period, a second after): every unit's data every `--period` seconds (the data of
a real unit, ~1 KB of JSON) and, per pair of units, a deal every 30 minutes lasting 20
minutes with a version every 5 s. Then, printed: the first pass over all of it (a store
caught up at once), and steady passes every 5 minutes of records (what the receiver does
every --figures-every 300 s): their wall time, and the rows written. No assertion: the
figures are for the closing note, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apis.records.figures import FigureSettings, compute_pass
from apis.records.store import DealRow, RecordStore, Row, UnitDataRow, open_store

T0 = 1_767_225_600.0
DATA: dict[str, Any] = {
    "apis": {"version": "3.0.0", "remaining_capacity_wh": 2400, "deal_interlock_capacity": 2,
             "operation_mode": {"global": "autonomous", "local": None,
                                "effective": "autonomous"}},
    "oesunit": {"communityId": "c", "clusterId": "k", "display": "Emulated", "sn": "1",
                "budo": "1", "ip": "10.0.0.1", "ipv6_ll": "NA", "ipv6_g": "NA", "mac": "NA"},
    "battery": {"rsoc": 55.2, "battery_operation_status": 3},
    "dcdc": {"status": {"status": "0x0000", "alarmState": "No alarm", "operationMode": "Waiting",
                        "statusName": "Ignore", "runningState": "0x0000", "alarm": "0"},
             "meter": {"wg": 0.0, "vg": 350.1, "ig": 0.0, "wb": 0.0, "vb": 52.1, "ib": 0.0,
                       "tmp": 30.0},
             "vdis": {"dvg": 350.0, "drg": 0.0}, "param": {"dig": 3.0, "ogv": 400.0,
                                                           "ugv": 300.0}},
    "time": "2026/01/01-00:00:00", "timestamp": T0,
}


def records(units: int, period: float, hours: float) -> dict[float, list[Row]]:
    """Rows by the time they are committed."""
    ids = [f"E{i:03d}" for i in range(1, units + 1)]
    out: dict[float, list[Row]] = {}
    texts = {unit: json.dumps({**DATA, "oesunit": {**DATA["oesunit"], "id": unit}})
             for unit in ids}
    end = T0 + hours * 3600
    t = T0
    while t < end:
        for unit in ids:
            out.setdefault(t + 1, []).append(UnitDataRow(
                unit, t, "c", "k", 55.2, 3, 350.1, 0.0, 0.0, 52.1, 0.0, 0.0, "0x0000",
                "autonomous", None, None, t, texts[unit]))
        t += period
    revision = 0
    for pair in range(units // 2):
        discharge, charge = ids[2 * pair], ids[2 * pair + 1]
        start = T0 + 60 * pair % 1800
        while start < end:
            deal_id = f"d{pair}-{int(start)}"
            for k in range(0, 20 * 60 + 1, 5):
                revision += 1
                at = start + k
                deal = {"dealId": deal_id, "chargeUnitId": charge, "dischargeUnitId": discharge,
                        "dealAmountWh": 100.0, "startDateTime": "s",
                        "cumulateAmountWh": 100.0 * k / 1200,
                        **({"deactivateDateTime": "d"} if k == 1200 else {})}
                out.setdefault(at // period * period + period + 1, []).append(DealRow(
                    deal_id, revision, "PUT", at, "c", "k", charge, discharge, "started",
                    deal["cumulateAmountWh"], json.dumps(deal)))
            start += 1800
    return out


def run(store: RecordStore, units: int, period: float, hours: float) -> None:
    batches = records(units, period, hours)
    total = sum(len(b) for b in batches.values())
    settings = FigureSettings(period_s=period)
    steady = 300.0
    cut = T0 + hours * 3600 - 4 * steady  # the last 20 minutes come in steady passes
    began = time.perf_counter()
    for at, batch in sorted(batches.items()):
        if at < cut:
            store.write(batch, at)
    fill_s = time.perf_counter() - began
    began = time.perf_counter()
    first = compute_pass(store, cut, settings)
    first_s = time.perf_counter() - began
    print(f"  {total:,} records ({units} units, data every {period:g} s, {hours:g} h); "
          f"filled {fill_s:.1f} s")
    print(f"  first pass over {(cut - T0) / 3600:.2f} h: {first_s:.2f} s ({first.deals} deals, "
          f"{first.hours} unit-hours, {first.days} unit-days)")
    now = cut
    while now < T0 + hours * 3600:
        later = now + steady
        for at, batch in sorted(batches.items()):
            if now <= at < later:
                store.write(batch, at)
        began = time.perf_counter()
        result = compute_pass(store, later, settings)
        print(f"  steady pass (5 min of records): {time.perf_counter() - began:.2f} s "
              f"({result.deals} deals, {result.hours} unit-hours)")
        now = later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--postgresql", action="store_true",
                        help="also against a PostgreSQL server started for it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite:")
        store = open_store(str(Path(tmp) / "r.sqlite"))
        try:
            run(store, args.units, args.period, args.hours)
        finally:
            store.close()
    if args.postgresql:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pgserver import PostgresServer

        server = PostgresServer()
        asyncio.run(server.start())
        try:
            print("PostgreSQL:")
            store = open_store(server.url)
            try:
                run(store, args.units, args.period, args.hours)
            finally:
                store.close()
        finally:
            asyncio.run(server.stop())


if __name__ == "__main__":
    main()

"""`apis demo`: a whole cluster on emulated hardware, in one process, with a live view.

Every unit runs the full node software (Controller, User, Mediator, Grid Master) on the
in-memory bus; the emulator supplies batteries, converters and the DC grid. Time runs
`--speed` times faster than real time.

The operations records build up as the demo runs: every unit's log lines, every deal version,
the units' data and the figures derived from them (records.inprocess, the checks, store and
figures of `apis records`), in a SQLite file (`--records FILE`; by default one in the demo's
temporary folder, gone at the end), on the simulated clock, whose days are this machine's
local days; the web UI reads them (`/logs`, `/history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from apis import clock
from apis.config import load_cluster
from apis.config.generate import default_cluster_dir, write_cluster
from apis.config.loader import Cluster
from apis.emulator import ConverterModel, World
from apis.emulator.driver import EmulatedDriver
from apis.hardware.modes import ConverterMode
from apis.unit.cluster import InProcessCluster
from apis.unit.deal import Deal

if TYPE_CHECKING:
    from apis.records.inprocess import InProcessRecorder

# A pass of the derived figures every this many simulated seconds (and at the end).
FIGURES_EVERY_S = 600.0

# Starting charge levels, cycled over the units: some have plenty, some need energy.
DEMO_RSOC = (88.0, 30.0, 62.0, 45.0, 75.0, 35.0)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MODE_NAMES = {
    ConverterMode.WAITING: "WAIT",
    ConverterMode.VOLTAGE_REFERENCE: "CV (VR)",
    ConverterMode.CHARGE: "CC charge",
    ConverterMode.DISCHARGE: "CC discharge",
}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"--duration = {text!r} (must be a number with s, m, h or d, e.g. 2h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def emulated_cluster(
    config: Cluster,
    *,
    seed: int = 0,
    start: datetime | None = None,
    initial_rsoc: Sequence[float] | None = None,
    converter: ConverterModel | None = None,  # None: the emulator's default converter
    deal_log_tmpdir: str | None = None,
    label_handlers: bool = False,  # each unit's handlers run labelled (for a recorder)
) -> tuple[World, InProcessCluster]:
    """A world of emulated units for `config` and the cluster of nodes driving it."""
    ids = config.unit_ids
    rsoc = list(initial_rsoc) if initial_rsoc is not None else [
        DEMO_RSOC[i % len(DEMO_RSOC)] for i in range(len(ids))
    ]
    world = World(
        [(u.unit_id, u.hw_config) for u in config.units],
        config.grid,
        seed=seed,
        start=start or datetime.combine(date.today(), time(10, 0)),
        converter=converter,
        initial_rsoc=rsoc,
    )
    drivers = {u: EmulatedDriver(world, u) for u in ids}
    cluster = InProcessCluster(config, drivers, seed=seed, deal_log_tmpdir=deal_log_tmpdir,
                               label_handlers=label_handlers)
    return world, cluster


@dataclass
class DemoState:
    world: World
    cluster: InProcessCluster
    deals: list[Deal] = field(default_factory=list)
    elapsed_s: float = 0.0


def render(state: DemoState) -> Group:
    world, cluster = state.world, state.cluster
    gm = cluster.grid_master_unit()
    units = Table(title=f"APIS demo - {world.now():%Y-%m-%d %H:%M:%S} (simulated)")
    for name in ("unit", "RSOC %", "converter", "grid V", "grid A", "role"):
        units.add_column(name, justify="right" if name not in ("unit", "converter", "role")
                         else "left")
    for unit_id in cluster.unit_ids:
        data = world.unit_data(unit_id)
        roles = []
        if unit_id == gm:
            roles.append("Grid Master")
        if data.dcdc.mode is ConverterMode.VOLTAGE_REFERENCE:
            roles.append("voltage reference")
        units.add_row(
            unit_id,
            f"{data.battery.rsoc:5.1f}",
            _MODE_NAMES.get(data.dcdc.mode, str(data.dcdc.mode)),
            f"{data.dcdc.meter.vg:6.1f}",
            f"{data.dcdc.meter.ig:+5.2f}",
            ", ".join(roles),
        )
    deals = Table(title="deals")
    for name in ("deal", "from -> to", "amount Wh", "counted Wh", "progress", "state"):
        deals.add_column(name)
    for deal in state.deals:
        bar = "#" * int(deal.progress * 10)
        deals.add_row(
            deal.deal_id[:8],
            f"{deal.discharge_unit_id} -> {deal.charge_unit_id}",
            f"{deal.deal_amount_wh:g}",
            f"{deal.cumulate_amount_wh or 0:.1f}",
            f"{bar:<10} {deal.progress * 100:3.0f}%",
            deal.state.value + (" (master)" if deal.master else ""),
        )
    done = len(cluster.finished)
    moved = sum(f.deal.cumulate_amount_wh or 0.0 for f in cluster.finished)
    footer = Table.grid()
    footer.add_row(f"completed deals: {done}, energy shared: {moved:.1f} Wh; Ctrl-C to stop")
    return Group(units, deals, footer)


def summary(state: DemoState, console: Console) -> None:
    world, cluster = state.world, state.cluster
    table = Table(title=f"summary after {state.elapsed_s / 3600:.2f} h (simulated)")
    for name in ("unit", "RSOC %", "grid in Wh", "grid out Wh"):
        table.add_column(name, justify="right" if name != "unit" else "left")
    for unit_id in cluster.unit_ids:
        c = world.counters(unit_id)
        table.add_row(unit_id, f"{world.unit_data(unit_id).battery.rsoc:.1f}",
                      f"{c.grid_in_wh:.1f}", f"{c.grid_out_wh:.1f}")
    console.print(table)
    completed = [f.deal for f in cluster.finished]
    aborted = [d for d in completed if d.abort_reason or d.scram_reason]
    for deal in aborted:
        reason = deal.abort_reason or deal.scram_reason
        console.print(f"deal {deal.deal_id[:8]} ended early: {reason}")
    console.print(
        f"completed deals: {len(completed)} ({len(aborted)} aborted), energy shared "
        f"(charge side): {sum(d.cumulate_amount_wh or 0 for d in completed):.1f} Wh, "
        f"voltage conflicts: {len(world.voltage_conflicts)}"
    )
    # Stopped (Ctrl-C or --duration) with deals under way: say so, or the energy they moved
    # would seem to be missing from the deals.
    finished = {d.deal_id for d in completed}
    open_deals = [d for d in state.deals if d.deal_id not in finished]
    if open_deals:
        console.print(
            f"deals under way at the last update: {len(open_deals)}, "
            f"{sum(d.cumulate_amount_wh or 0 for d in open_deals):.1f} Wh moved so far"
        )


@dataclass(frozen=True)
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    records: str | None = None  # the records store the UI reads (/logs, /history)


async def run_demo(state: DemoState, duration_s: float | None, refresh_s: float,
                   console: Console, live: bool, web: WebOptions | None = None,
                   recorder: InProcessRecorder | None = None) -> None:
    loop = asyncio.get_running_loop()
    cluster = state.cluster
    start = loop.time()
    recording = recorder.recording() if recorder is not None else contextlib.nullcontext()
    # the recorder first and last: it has the units' first lines and their last
    async with recording, cluster.running(), _web_ui(state, web, console):
        with Live(render(state), console=console, auto_refresh=False,
                  transient=False) if live else _NoLive() as view:
            while duration_s is None or loop.time() - start < duration_s:
                await asyncio.sleep(refresh_s)
                state.elapsed_s = loop.time() - start
                state.deals = await cluster.deals()
                view.update(render(state), refresh=True)
    state.elapsed_s = loop.time() - start


@contextlib.asynccontextmanager
async def _web_ui(
    state: DemoState, options: WebOptions | None, console: Console
) -> AsyncIterator[None]:
    """Serve the operations UI for the demo's cluster, on the same loop, if asked."""
    if options is None:
        yield
        return
    from apis.web.records import RecordsReader
    from apis.web.server import WebServer  # the web layer is optional for the demo

    records = RecordsReader(options.records) if options.records is not None else None
    server = WebServer(state.cluster.connect("web"), world=state.world,
                       host=options.host, port=options.port, records=records)
    try:
        await server.start()
    except OSError as e:
        # Another program has the port: take a free one rather than give up the demo.
        console.print(f"{e}; using a free port instead")
        server.port = 0
        await server.start()
    # A one-time login link: the page trades its code for the control token, which is never
    # printed (the address alone opens the page read only).
    console.print(f"operations UI: {server.login_url()} (one-time login link)", soft_wrap=True)
    if records is not None:
        console.print(f"records: {server.url}logs (log viewer), {server.url}history",
                      soft_wrap=True)
    try:
        yield
    finally:
        await server.stop()
        if records is not None:
            await asyncio.get_running_loop().run_in_executor(None, records.close)


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *args: object) -> None:
        return None

    def update(self, renderable: object, refresh: bool = False) -> None:
        return None


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        config: Annotated[
            Path | None,
            typer.Option("--config", help="Cluster directory (default: the embedded 4 units)."),
        ] = None,
        units: Annotated[
            int | None,
            typer.Option("--units", min=1, help="Generate a cluster of N units instead."),
        ] = None,
        speed: Annotated[
            float, typer.Option("--speed", help="Simulated seconds per real second (at most).")
        ] = 60.0,
        duration: Annotated[
            str | None,
            typer.Option("--duration", help="Stop after this much simulated time (30m, 2h)."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the world and units.")] = 0,
        live: Annotated[bool, typer.Option("--live/--no-live", help="Show the live view.")] = True,
        web: Annotated[
            bool, typer.Option("--web/--no-web", help="Serve the operations UI in the browser.")
        ] = True,
        host: Annotated[str, typer.Option("--host", help="Address of the UI.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="Port of the UI (0: any free).")] = 8080,
        records: Annotated[
            Path | None,
            typer.Option("--records", dir_okay=False,
                         help="Keep the operations records (log lines, deals, unit data) in "
                              "this new SQLite file (default: one in the demo's temporary "
                              "folder, gone at the end)."),
        ] = None,
    ) -> None:
        """Run a cluster on emulated hardware with a live view of every unit and deal."""
        console = Console()
        try:
            duration_s = parse_duration(duration) if duration is not None else None
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        if speed <= 0:
            raise typer.BadParameter(f"--speed = {speed} (must be > 0)")
        if records is not None and records.exists():
            # the simulated clock starts at 10:00 today every run: samples would collide
            raise typer.BadParameter(f"--records = {records} exists (give a new file)")
        if records is not None and not records.parent.is_dir():
            raise typer.BadParameter(f"--records = {records}: folder {records.parent} "
                                     "does not exist")
        with tempfile.TemporaryDirectory(prefix="apis-demo-") as tmp:
            # Warnings go to a file: the live view owns the terminal.
            handler = logging.FileHandler(Path(tmp) / "apis-demo.log")
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
            apis_log = logging.getLogger("apis")
            apis_log.addHandler(handler)
            apis_log.propagate = False
            if units is not None:
                write_cluster(Path(tmp) / "cluster", units)
                directory = Path(tmp) / "cluster"
            else:
                directory = config if config is not None else default_cluster_dir()
            cluster_config = load_cluster(directory)
            world, cluster = emulated_cluster(
                cluster_config, seed=seed, deal_log_tmpdir=str(Path(tmp) / "logs"),
                label_handlers=True,
            )
            records_path = records or Path(tmp) / "records.sqlite"
            recorder = _recorder(cluster, world, records_path)
            kept = "" if records is not None else " (gone at the end; --records FILE keeps it)"
            console.print(f"records: {recorder.store.description}{kept}", soft_wrap=True)
            state = DemoState(world, cluster)
            refresh_s = max(0.25 * speed, 1.0)  # about four screen updates per real second
            try:
                web_options = WebOptions(host, port, str(records_path)) if web else None
                clock.run(run_demo(state, duration_s, refresh_s, console, live, web_options,
                                   recorder),
                          "scaled", speed)
            except KeyboardInterrupt:
                console.print("stopped")
            summary(state, console)


def _recorder(cluster: InProcessCluster, world: World, path: Path) -> InProcessRecorder:
    from apis.records.inprocess import InProcessRecorder
    from apis.records.store import StoreError, open_store

    try:
        store = open_store(str(path))
    except StoreError as e:
        raise typer.BadParameter(f"--records = {path}: {e}") from None
    return InProcessRecorder(cluster, store, clock=lambda: world.now().timestamp(),
                             figures_every_s=FIGURES_EVERY_S, time_zone=local_time_zone())


def local_time_zone() -> str:
    """The IANA name of this machine's time zone ($TZ if set, else what /etc/localtime links
    to), else UTC: the simulated calendar is local time, and its days are the figures'."""
    tz = os.environ.get("TZ")
    if tz is not None:
        name = tz.removeprefix(":")
    else:
        target = os.path.realpath("/etc/localtime")
        name = target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else ""
    if name:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return "UTC"  # a POSIX rule such as JST-9, or no zone to be found

"""Commands of this part (registered by apis.cli): `apis emulator`."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from apis.emulator.server import DEFAULT_HOST, DEFAULT_PORT
from apis.httpguard import HostNames
from apis.listening import CommandServer, ListenError, bind_listener

EMULATOR_HELP = """Emulate N units (battery, house, DC/DC converter) on one DC grid and serve them.

Routes: the original emulator's (/get/unit/E001, /set/dcdc/E001?mode=&dvg=&dig=, /get/log,
...) and the Device Driver Web API per unit under /units/<id>/ (e.g. /units/E001/all/get).
Runs on real time, or --speed K times faster. Needs no files: built-in PV and load profiles,
one bus bar. Ctrl-C stops it.

Commands (/set/..., /add/unit, /remove/unit, /units/<id>/dcdc/set) are POST; the original
apis-main sends them as GET, which is served only with --legacy-get. Requests must name this
server (Host, and Origin if a browser sent them): its listen address, 127.0.0.1, localhost or
[::1] with its port, or a name given with --allow-host.
"""


def _read_json(path: Path) -> object:
    from apis.config.base import strip_comments

    try:
        return strip_comments(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise typer.BadParameter(f"{path}: {error}") from None


async def _serve(
    units: int, host: str, port: int, seed: int, grid: Path | None, hw_config: Path | None,
    solar: Path | None, load: Path | None, profile_csv: list[Path], start: datetime | None,
    step_s: float,
    ups: bool = False,
    legacy_get: bool = False,
    allowed_hosts: HostNames | None = None,
) -> None:
    from apis.config.grid import GridConfig
    from apis.config.hwconfig import HwConfig
    from apis.emulator.house import HouseProfiles, SampledProfiles
    from apis.emulator.server import create_emulator_app
    from apis.emulator.ups import UpsModel
    from apis.emulator.world import DEFAULT_START, World, unit_ids_for

    hw = HwConfig.model_validate(_read_json(hw_config)) if hw_config else HwConfig()
    grid_config = GridConfig.model_validate(_read_json(grid)) if grid else None
    unit_ids = grid_config.unit_ids if grid_config else unit_ids_for(units)
    profiles: HouseProfiles | None = None
    if solar or load:
        if not (solar and load):
            raise typer.BadParameter("--solar and --load (give both)")
        profiles = SampledProfiles.from_original(solar, load, unit_ids)
    elif profile_csv:
        profiles = SampledProfiles.from_simple_csv(profile_csv, len(unit_ids))
    world = World(
        [(u, hw) for u in unit_ids], grid_config, profiles, seed=seed,
        start=start or DEFAULT_START, ups=UpsModel() if ups else None,
    )
    sock = bind_listener(host, port)
    port = sock.getsockname()[1]  # the one chosen for port 0
    server = CommandServer(
        uvicorn.Config(
            create_emulator_app(world, port, legacy_get=legacy_get,
                                allowed_hosts=allowed_hosts),
            host=host, port=port, log_level="warning", lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    get_forms = "; GET commands too (--legacy-get)" if legacy_get else ""
    typer.echo(f"emulating {world.n_units} units on http://{host}:{port}/ (Ctrl-C stops"
               f"{get_forms})")
    try:
        async with asyncio.TaskGroup() as tasks:
            stepping = tasks.create_task(world.run(step_s))
            await server.serve(sockets=[sock])
            stepping.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `apis` app."""

    @app.command("emulator", help=EMULATOR_HELP)
    def emulator(
        units: Annotated[int, typer.Option("--units", "-n", min=1, help="Units E001..")] = 4,
        host: Annotated[str, typer.Option(help="Listen address.")] = DEFAULT_HOST,
        port: Annotated[int, typer.Option(help="Listen port.")] = DEFAULT_PORT,
        speed: Annotated[
            float, typer.Option(min=0.001, help="Run K times faster than real time.")
        ] = 1.0,
        seed: Annotated[int, typer.Option(help="Seed of profiles and start RSOCs.")] = 0,
        grid: Annotated[
            Path | None, typer.Option(help="grid.json (its unit nodes replace --units).")
        ] = None,
        hw_config: Annotated[
            Path | None, typer.Option("--hw-config", help="hwConfig.json for every unit.")
        ] = None,
        solar: Annotated[
            Path | None, typer.Option(help="Original solar CSV (365 x 24 values, W).")
        ] = None,
        load: Annotated[
            Path | None, typer.Option(help="Original load CSV (households x days).")
        ] = None,
        profile_csv: Annotated[
            list[Path] | None,
            typer.Option("--profile-csv", help="time,pv_w,load_w CSV (repeat: one per house)."),
        ] = None,
        start: Annotated[
            datetime | None, typer.Option(help="Calendar time at start (default 2020-01-01).")
        ] = None,
        step: Annotated[
            float, typer.Option(min=0.01, help="Stepping period, s of emulated time.")
        ] = 1.0,
        ups: Annotated[
            bool,
            typer.Option(
                "--ups", help="Model the house UPS (bypass <= 30 %, AC charging <= 20 % RSOC)."
            ),
        ] = False,
        legacy_get: Annotated[
            bool,
            typer.Option(
                "--legacy-get", help="Also serve the commands as GET, as the original emulator "
                "does (for the original apis-main; any web page could then send them)."
            ),
        ] = False,
        allow_host: Annotated[
            list[str] | None,
            typer.Option(
                "--allow-host", help="Another name the emulator is reached by (NAME: any "
                "port, or NAME:PORT); repeat for more."
            ),
        ] = None,
    ) -> None:
        from apis import clock

        try:
            names = HostNames.parse(allow_host or [])
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        kind = "real" if speed == 1.0 else "scaled"
        try:
            clock.run(
                _serve(
                    units, host, port, seed, grid, hw_config, solar, load, profile_csv or [],
                    start, step, ups, legacy_get, names,
                ),
                kind,
                speed,
            )
        except ListenError as e:
            typer.echo(f"apis emulator: {e.strerror}", err=True)
            raise typer.Exit(1) from None

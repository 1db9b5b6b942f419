"""Commands of this part (registered by apis.cli): `apis sim`."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

SIM_HELP = """Fast-forward a whole community: the real unit software on the in-memory bus and the
emulated batteries, houses, converters and DC grid, on a virtual clock (as fast as the CPU
allows).

Writes into --out: summary.json, units.csv (per unit per minute), deals.csv, PNG plots,
report.html (self-contained) and run-info.json (wall-clock figures). With sharing on, the same
community also runs with sharing off (same seed) for the comparison.

Sweeps: --sweep param=v1,v2,... runs every case (outputs in out/cases/) and writes
sweep.csv, sweep.md and sweep.png. Parameters: units, seed, days, battery (Wh per unit),
battery.scale (factor), hwConfig.<key path>, or a policy.json key path such as
mediator.deal.gridCurrentA. The cases run in parallel processes (--jobs, default one
per usable CPU; a worker killed mid-case has its case run again), or on a Dask cluster
(--scheduler tcp://HOST:PORT); the outputs are the same as one after another (wall-clock
figures aside).

--fidelity plan: the planning model instead of the unit software (the same houses,
batteries, converter and grid models and decision functions, without the control loops):
a year of 20 units in about a minute; with --sweep, for every case (locally or on
--scheduler). apis sim validate compares the two fidelities.

Year runs with seasons: --weather builtin (pvlib's typical year) or a TMY3/EPW/CSV file
for PV, --load seasonal or a CSV of hourly W for the household load; a run over more than
one month gets monthly figures (see the README for the file formats).
"""


class _ProgressBar:
    """A rich progress bar: simulated date and speed (simulated seconds per wall second)."""

    def __init__(self, start: datetime, enabled: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.start = start
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[date]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.began: dict[str, float] = {}

    def __enter__(self) -> _ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def __call__(self, phase: str, done: float, total: float) -> None:
        from datetime import timedelta

        now = time.perf_counter()
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, date="", speed="")
            self.began[phase] = now
        # Refresh at most once per simulated 10 minutes: the bar must not slow the run.
        if done < total and int(done) % 600:
            return
        wall = now - self.began[phase]
        speed = f"{done / wall:,.0f}x" if wall > 0 else ""
        date = (self.start + timedelta(seconds=done)).strftime("%Y-%m-%d %H:%M")
        self.progress.update(self.tasks[phase], completed=done, date=date, speed=speed)


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `apis` app."""
    sim_app = typer.Typer(help=SIM_HELP, invoke_without_command=True,
                          context_settings={"help_option_names": ["--help", "-h"]})
    app.add_typer(sim_app, name="sim")
    _register_validate(sim_app)
    _register_optimise(sim_app)

    @sim_app.callback()
    def sim(
        ctx: typer.Context,
        config: Annotated[
            Path | None, typer.Option("--config", help="Cluster directory (default: built-in).")
        ] = None,
        units: Annotated[
            int | None, typer.Option("--units", "-n", min=1, help="Generate N units instead.")
        ] = None,
        days: Annotated[float, typer.Option(min=0.001, help="Simulated days.")] = 1.0,
        seed: Annotated[int, typer.Option(help="Seed (houses, start RSOC, units).")] = 0,
        out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("sim-out"),
        no_sharing: Annotated[
            bool, typer.Option("--no-sharing", help="Only the baseline: every converter idle.")
        ] = False,
        sweep: Annotated[
            str | None, typer.Option("--sweep", help="param=v1,v2,... (see above).")
        ] = None,
        start: Annotated[
            datetime | None, typer.Option(help="Calendar start (default 2020-01-01).")
        ] = None,
        jobs: Annotated[
            int | None,
            typer.Option("--jobs", "-j", help="Sweep cases run at once (default: one per "
                         "usable CPU; 1: one after another in this process)."),
        ] = None,
        scheduler: Annotated[
            str | None,
            typer.Option("--scheduler", help="Run the sweep's cases on this Dask cluster "
                         "(its scheduler's address, e.g. tcp://10.0.0.5:8786)."),
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
        fidelity: Annotated[
            str, typer.Option("--fidelity", help="faithful (the real unit code) or plan (the "
                              "planning model: a year in about a minute).")
        ] = "faithful",
        sample_interval: Annotated[
            float | None,
            typer.Option("--sample-interval", help="Seconds per units.csv row (default 60; "
                         "plan: 900)."),
        ] = None,
        latency_live: Annotated[
            float | None, typer.Option("--plan-latency-live", help="Plan: seconds from a deal's "
                                       "creation to its current on a live grid (default 5).")
        ] = None,
        latency_dark: Annotated[
            float | None, typer.Option("--plan-latency-dark", help="Plan: the same on a dark "
                                       "grid (default 13).")
        ] = None,
        weather: Annotated[
            str | None, typer.Option("--weather", help="PV from real weather: builtin (pvlib's "
                                     "typical year of Greensboro NC) or a TMY3/EPW file or a "
                                     "CSV of GHI or PV per kWp (see the README).")
        ] = None,
        load: Annotated[
            str | None, typer.Option("--load", help="Household load: seasonal (built-in daily "
                                     "load with seasons) or a CSV of hourly W (see the README).")
        ] = None,
    ) -> None:
        if ctx.invoked_subcommand is not None:
            return
        import dataclasses

        from apis.config.errors import ConfigError
        from apis.sim.community import (
            DEFAULT_START,
            PLAN_SAMPLE_INTERVAL_S,
            SAMPLE_INTERVAL_S,
            PlanParameters,
            SimError,
            SimSettings,
            parse_sweep,
        )
        from apis.sim.simulate import simulate
        from apis.sim.sweep import check_jobs, run_sweep

        try:
            check_jobs(jobs)
            plan = PlanParameters()
            if latency_live is not None:
                plan = dataclasses.replace(plan, latency_live_s=latency_live)
            if latency_dark is not None:
                plan = dataclasses.replace(plan, latency_dark_s=latency_dark)
            interval = sample_interval if sample_interval is not None else (
                PLAN_SAMPLE_INTERVAL_S if fidelity == "plan" else SAMPLE_INTERVAL_S)
            settings = SimSettings(
                config_dir=config, units=units, days=days, seed=seed,
                start=start or DEFAULT_START, sharing=not no_sharing, fidelity=fidelity,
                plan=plan, sample_interval_s=interval,
                weather=_year_source(weather, "builtin", "--weather"),
                load=_year_source(load, "seasonal", "--load"),
            )
            _check_year_sources(settings)
            parsed = parse_sweep(sweep) if sweep else None
            if scheduler is not None and parsed is None:
                raise SimError(f"--scheduler = {scheduler!r} without --sweep (a Dask cluster "
                               "runs the cases of a sweep)")
            with _ProgressBar(settings.start, enabled=not quiet) as bar:
                if parsed is not None:
                    _cases, files = run_sweep(
                        settings, parsed[0], parsed[1], out, bar, jobs=jobs,
                        scheduler=scheduler,
                    )
                else:
                    outcome = simulate(settings, out, bar)
        except (SimError, ConfigError) as error:
            typer.echo(f"apis sim: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(
                f"apis sim: interrupted; the outputs in {out} are missing or incomplete",
                err=True,
            )
            raise typer.Exit(130) from None
        if parsed is not None:
            typer.echo((out / "sweep.md").read_text(encoding="utf-8"))
            for path in files:
                typer.echo(f"wrote {path}")
            return
        _print_outcome(outcome.summary, outcome.run_info, out)


def _year_source(value: str | None, builtin: str, option: str) -> str | None:
    """A --weather/--load value: the built-in name, or the file's absolute path (sweep
    workers may run elsewhere in the file system)."""
    if value is None or value == builtin:
        return value
    from apis.sim.community import SimError

    path = Path(value).expanduser()
    if not path.is_file():
        raise SimError(f"{option} = {value!r} (must be {builtin} or an existing file)")
    return str(path.resolve())


def _check_year_sources(settings: Any) -> None:
    """Read the --weather and --load files once before any run: a bad one stops here."""
    from apis.sim.seasons import SEASONAL
    from apis.sim.weather import read_load, read_weather

    if settings.weather is not None:
        read_weather(settings.weather).check_covers(settings.start, settings.duration_s)
    if settings.load is not None and settings.load != SEASONAL:
        read_load(settings.load).check_covers(settings.start, settings.duration_s)


def _print_outcome(summary: dict[str, Any], info: dict[str, Any], out: Path) -> None:
    from apis.sim.report import key_figures

    for label, value in key_figures(summary):
        typer.echo(f"  {label:<50} {value}")
    speed = info.get("speed")
    typer.echo(
        f"  {'Wall time':<50} {info['wall_s']:.1f} s"
        + (f" ({speed:,.0f} simulated s per wall s)" if speed else "")
    )
    records = info.get("unit_log_records") or {}
    if records.get("ERROR") or records.get("CRITICAL"):
        typer.echo(f"  unit log: {records} (see {out / 'sim.log'})")
    typer.echo(f"wrote {out / 'report.html'}")


def _register_validate(sim_app: typer.Typer) -> None:
    @sim_app.command("validate")
    def validate(
        units: Annotated[int, typer.Option("--units", "-n", min=1, help="Generated units.")] = 20,
        days: Annotated[float, typer.Option(min=0.001, help="Simulated days per seed.")] = 2.0,
        seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..K-1.")] = 5,
        start: Annotated[
            datetime | None, typer.Option(help="Calendar start (default 2020-01-01).")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    ) -> None:
        """Run both fidelities on the same communities and seeds; print the differences."""
        from apis.sim.community import DEFAULT_START, SimError
        from apis.sim.validate import validate as run_validation

        try:
            with _ProgressBar(start or DEFAULT_START, enabled=not quiet) as bar:
                result = run_validation(units, days, seeds, start, bar)
        except SimError as error:
            typer.echo(f"apis sim validate: {error}", err=True)
            raise typer.Exit(2) from None
        typer.echo(result.table())
        if not result.passed:
            raise typer.Exit(1)


def _register_optimise(sim_app: typer.Typer) -> None:
    @sim_app.command("optimise")
    def optimise(
        param: Annotated[
            list[str],
            typer.Option("--param", help="NAME=LOW:HIGH or NAME=V1,V2,... (repeat): a sweep "
                         "parameter, e.g. scenario.excess=0.4:0.9 (a share of each unit's "
                         "capacity) or policy.mediator.deal.gridCurrentA=1,2,3."),
        ],
        config: Annotated[
            Path | None, typer.Option("--config", help="Cluster directory (default: built-in).")
        ] = None,
        units: Annotated[
            int | None, typer.Option("--units", "-n", min=1, help="Generate N units instead.")
        ] = None,
        days: Annotated[float, typer.Option(min=0.001, help="Simulated days per seed.")] = 1.0,
        seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..K-1 per candidate.")] = 1,
        trials: Annotated[int, typer.Option(min=1, help="Candidates for the planning "
                                            "fidelity.")] = 40,
        confirm: Annotated[int, typer.Option(min=0, help="Best candidates run again with the "
                                             "faithful fidelity.")] = 3,
        objective: Annotated[str, typer.Option(help="self-sufficiency (highest) or utility "
                                               "(least energy bought).")] = "self-sufficiency",
        search_seed: Annotated[int, typer.Option(help="Seed of the candidates drawn.")] = 0,
        start: Annotated[
            datetime | None, typer.Option(help="Calendar start (default 2020-01-01).")
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path(
            "sim-optimise"),
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    ) -> None:
        """Search scenario and policy values with the planning fidelity for the best
        community, then confirm the best few with faithful runs."""
        from apis.config.errors import ConfigError
        from apis.sim.community import DEFAULT_START, SimError, SimSettings
        from apis.sim.optimise import optimise as run_search
        from apis.sim.optimise import parse_parameter, write_outputs

        def told(what: str, done: int, total: int) -> None:
            if not quiet:
                typer.echo(f"[{done}/{total}] {what}", err=True)

        try:
            base = SimSettings(config_dir=config, units=units, days=days,
                               start=start or DEFAULT_START)
            parameters = [parse_parameter(text) for text in param]
            result = run_search(base, parameters, trials=trials, confirm=confirm, seeds=seeds,
                                objective=objective, search_seed=search_seed, progress=told)
        except (SimError, ConfigError) as error:
            typer.echo(f"apis sim optimise: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("apis sim optimise: interrupted; nothing written", err=True)
            raise typer.Exit(130) from None
        typer.echo(result.table())
        for path in write_outputs(out, result):
            typer.echo(f"wrote {path}")

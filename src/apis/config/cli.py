"""`apis config check | init | schema`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from apis.config.advice import design_figures
from apis.config.errors import ConfigError, Problem, printable
from apis.config.generate import DEFAULT_UNITS, write_cluster
from apis.config.grid import GridConfig
from apis.config.hwconfig import HwConfig
from apis.config.loader import Cluster, load_cluster, load_cluster_files, load_files
from apis.config.policy import Policy
from apis.config.scenario import ScenarioBlock
from apis.config.unitconfig import UnitConfig

EXIT_CONFIG_ERROR = 2

config_app = typer.Typer(help="Check, create and describe configuration files.",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


def _print_problems(console: Console, problems: list[Problem]) -> None:
    console.print(f"[bold red]{len(problems)} problem(s):[/]")
    for p in problems:
        console.print(Text.assemble(("  x ", "red"), str(p)), highlight=False)


def _report_cluster(console: Console, cluster: Cluster, where: str) -> None:
    # Unit IDs and paths are the files' text: never rich markup.
    console.print(
        f"[green]ok[/] {escape(printable(where))}: {len(cluster.units)} unit(s) "
        f"({escape(printable(', '.join(cluster.unit_ids)))}), "
        f"members {escape(printable(str(cluster.policy.member_unit_ids)))}",
        highlight=False,
    )
    for w in cluster.warnings:
        console.print(Text.assemble(("  warning ", "yellow"), str(w)), highlight=False)
    figures = design_figures(cluster.policy, [u.hw_config for u in cluster.units])
    console.print("[bold]Hardware-design figures (seed section 5):[/]")
    for line in figures.lines():
        console.print(f"  {escape(line)}", highlight=False)
    if figures.control_loss_too_high:
        console.print(
            "  [yellow]warning[/] the control-loss share exceeds 5 %: make deals larger "
            "(mediator.deal.amountMinWh, gridCurrentA) or control faster "
            "(gridMaster.mainLoopPeriodMsec, controller.dataAcquisitionPeriodMsec)",
            highlight=False,
        )
    if figures.current_limit_exceeded:
        console.print(
            "  [yellow]warning[/] a full cluster can draw more grid current than "
            "safety.sumOfDealGridCurrentMaxA: the global safety check will refuse deals",
            highlight=False,
        )


@config_app.command("check")
def check(
    paths: list[Path] = typer.Argument(  # noqa: B008
        ..., help="A cluster directory, or files (config.json pulls in the files it names)."
    ),
) -> None:
    """Validate configuration: every problem at once, with file, key, value and rule."""
    console = Console(soft_wrap=True)
    problems: list[Problem] = []
    # Anything but a directory is a file to read: the reader says if it cannot be one.
    files = [p for p in paths if not p.is_dir() and os.path.lexists(p)]
    configs = [p for p in files if p.name == "config.json"]
    loose = [p for p in files if p.name != "config.json"]
    for p in paths:
        if p.is_dir():
            try:
                _report_cluster(console, load_cluster(p), str(p))
            except ConfigError as e:
                problems.extend(e.problems)
        elif not os.path.lexists(p):
            problems.append(Problem(str(p), "", "no such file or directory"))
    if configs:
        try:
            _report_cluster(console, load_cluster_files(configs), ", ".join(map(str, configs)))
        except ConfigError as e:
            problems.extend(e.problems)
    if loose:
        loose_problems, checked = load_files(loose)
        problems.extend(loose_problems)
        bad = {p.file for p in loose_problems}
        for name in checked:
            if name not in bad:
                console.print(f"[green]ok[/] {escape(name)}", highlight=False)
    if problems:
        _print_problems(console, problems)
        raise typer.Exit(EXIT_CONFIG_ERROR)


@config_app.command("init")
def init(
    directory: Path = typer.Argument(..., help="Where to write the cluster."),  # noqa: B008
    units: int = typer.Option(DEFAULT_UNITS, "--units", "-n", min=1, max=999,
                              help="Number of units."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
) -> None:
    """Write a working cluster: policy.json, grid.json and a folder per unit."""
    if (directory / "policy.json").exists() and not force:
        typer.echo(f"{directory}/policy.json exists (use --force to overwrite)", err=True)
        raise typer.Exit(1)
    written = write_cluster(directory, units)
    typer.echo(f"wrote {len(written)} files for {units} unit(s) in {directory}")


@config_app.command("schema")
def schema(
    directory: Path = typer.Argument(..., help="Where to write the schemas."),  # noqa: B008
) -> None:
    """Write the JSON Schema of each configuration file."""
    directory.mkdir(parents=True, exist_ok=True)
    models: dict[str, type[BaseModel]] = {
        "config": UnitConfig,
        "hwConfig": HwConfig,
        "policy": Policy,
        "grid": GridConfig,
    }
    for name, model in models.items():
        doc = model.model_json_schema(by_alias=True)
        (directory / f"{name}.schema.json").write_text(json.dumps(doc, indent=2) + "\n")
    block = ScenarioBlock.model_json_schema(by_alias=True)
    scenario = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "scenario.json",
        "type": "object",
        "properties": {
            "refreshingPeriodMsec": {"type": "integer", "exclusiveMinimum": 0},
            "acceptSelection": block["$defs"]["AcceptSelection"],
        },
        "patternProperties": {
            r"^\d\d:\d\d:\d\d-\d\d:\d\d:\d\d$": {"$ref": "#/$defs/ScenarioBlock"},
            "^#$": {},
        },
        "additionalProperties": False,
        "$defs": {**block.pop("$defs", {}), "ScenarioBlock": block},
    }
    (directory / "scenario.schema.json").write_text(json.dumps(scenario, indent=2) + "\n")
    typer.echo(f"wrote {len(models) + 1} schemas in {directory}")

"""The `apis` command. Each part adds its own commands in its `cli` module."""

from __future__ import annotations

import typer

from apis import __version__

app = typer.Typer(
    name="apis",
    help="APIS: peer-to-peer energy sharing between home batteries on a shared DC grid.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"apis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """APIS command line."""


def _register() -> None:
    # Imported here so that `apis --help` stays fast and each part owns its commands.
    from apis import demo as demo_cli
    from apis.config import cli as config_cli
    from apis.emulator import cli as emulator_cli
    from apis.hardware import cli as hardware_cli
    from apis.web import cli as web_cli

    config_cli.register(app)
    hardware_cli.register(app)
    emulator_cli.register(app)
    __import__("apis.sim.cli", fromlist=["register"]).register(app)
    demo_cli.register(app)
    web_cli.register(app)
    __import__("apis.process.cli", fromlist=["register"]).register(app)
    __import__("apis.records.cli", fromlist=["register"]).register(app)


_register()


def main() -> None:
    app()

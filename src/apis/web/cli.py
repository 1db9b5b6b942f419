"""`apis web --bus nats://...`: the operations UI and API for a running multi-process cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from apis.bus.base import BusError
from apis.config.unitconfig import BusConfig
from apis.httpguard import HostNames
from apis.web.server import DEFAULT_HOST, DEFAULT_PORT
from apis.web.token import TOKEN_ENV, ControlToken, TokenError, control_token, default_token_file

DEFAULT_TOKEN_FILE = default_token_file()
TOKEN_ON_COMMAND_LINE = (
    "--token: a token on the command line is shown to every user of the machine by `ps`; "
    f"put it in a file only you can read (--token-file FILE, mode 0600) or in ${TOKEN_ENV}"
)


async def _serve(bus_url: str | None, bus_config: tuple[BusConfig, Path] | None, host: str,
                 port: int, token: ControlToken, history: str,
                 allowed_hosts: HostNames, records_url: str | None = None) -> None:
    from apis.bus.nats import NatsBus
    from apis.store.history import HistoryStore
    from apis.web.server import WebServer

    if bus_config is not None:  # a secured bus: servers, TLS and the web's certificate
        from apis.process.unit import UnitRefused, connect_bus

        config, base = bus_config
        try:
            bus = await connect_bus(config, base, "apis-web")
        except UnitRefused as e:
            raise BusError(str(e)) from None
    else:
        assert bus_url is not None
        servers = [s.strip() for s in bus_url.split(",") if s.strip()]
        bus = await NatsBus.connect(servers, name="apis-web")
    from apis.web.records import RecordsReader

    store = HistoryStore(history)
    records = RecordsReader(records_url) if records_url else None
    try:
        web = WebServer(bus, store=store, host=host, port=port, token=token.value,
                        allowed_hosts=allowed_hosts, records=records)
        async with web.running():
            typer.echo(f"APIS operations UI: {web.url}")
            typer.echo(f"control token: in {token.source}")
            typer.echo(f"one-time login link (works once, within {web.logins.ttl_s:g} s): "
                       f"{web.login_url()}")
            typer.echo(f"API docs: {web.url}docs")
            if records is not None:
                typer.echo(f"records ({records.description}, read only): {web.url}logs, "
                           f"{web.url}history")
            await asyncio.Event().wait()  # until Ctrl-C
    finally:
        await bus.close()
        store.close()
        if records is not None:
            records.close()


def register(app: typer.Typer) -> None:
    @app.command("web")
    def web(
        bus: str | None = typer.Option(None, "--bus", help="NATS server URL(s), "
                                       "comma-separated, e.g. nats://127.0.0.1:4222."),
        bus_config: Path | None = typer.Option(  # noqa: B008
            None, "--bus-config", help="Instead of --bus: a JSON file like a unit's \"bus\" "
            "key (servers, tls), e.g. web/bus.json of 'apis config secure'."
        ),
        host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to listen on."),
        port: int = typer.Option(DEFAULT_PORT, "--port", help="Port to listen on."),
        token_file: Annotated[Path | None, typer.Option(
            "--token-file", dir_okay=False,
            help=f"File with the control token (mode 0600; created with a new random token "
            f"if it does not exist). Default: ${TOKEN_ENV} if set, else {DEFAULT_TOKEN_FILE}."
        )] = None,
        token: Annotated[str | None, typer.Option("--token", hidden=True)] = None,
        allow_host: Annotated[list[str] | None, typer.Option(
            "--allow-host", help="Another name the UI is reached by (NAME: any port, or "
            "NAME:PORT), e.g. behind a reverse proxy; repeat for more. Requests naming any "
            "other Host or Origin are refused.")] = None,
        history: str = typer.Option(":memory:", "--history",
                                    help="SQLite file for deal/error/mode history."),
        records: str | None = typer.Option(
            None, "--records", help="The store of `apis records` (SQLite file or "
            "postgresql:// URL), read only: log viewer, history page, /api/records."),
    ) -> None:
        """Serve the operations web UI and API for a cluster on a NATS bus."""
        if token is not None:
            raise typer.BadParameter(TOKEN_ON_COMMAND_LINE)
        if (bus is None) == (bus_config is None):
            raise typer.BadParameter("give --bus or --bus-config (one of them)")
        if bus is not None and not bus.startswith(("nats://", "tls://")):
            raise typer.BadParameter(f"--bus = {bus!r} (must be a nats:// or tls:// URL)")
        if not 0 <= port <= 65535:
            raise typer.BadParameter(f"--port = {port} (must be within 0..65535)")
        secured: tuple[BusConfig, Path] | None = None
        if bus_config is not None:
            try:
                secured = (BusConfig.model_validate_json(bus_config.read_text()),
                           bus_config.parent)
            except (OSError, ValueError) as e:
                raise typer.BadParameter(f"--bus-config = {bus_config}: {e}") from None
        try:
            names = HostNames.parse(allow_host or [])
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        try:
            control = control_token(token_file)
        except TokenError as e:
            typer.echo(f"apis web: control token: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            asyncio.run(_serve(bus, secured, host, port, control, history, names, records))
        except KeyboardInterrupt:
            typer.echo("stopped")
        except (OSError, BusError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

"""`apis records`: the long-running records receiver (registered by apis.cli)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from apis.records.receiver import Settings

RECORDS_HELP = """Keep the cluster's operations records: every action log line, every deal
version and the units' data sampled every --unit-data-period seconds, from durable JetStream
streams (made on first start; records published while this receiver is down wait there), in
one SQLite file (default) or PostgreSQL (--store postgresql://user:pw@host/db). Each record is
stored once and acknowledged only after it is committed. Rows older than their table's
retention are deleted. --multicast GROUP:PORT also keeps the action log lines that units (the
original apis-main too) send as UDP multicast datagrams; with neither --bus nor --bus-config
that is all it keeps. SIGTERM or Ctrl-C stops it."""

DEFAULT_STORE = "apis-records.sqlite"


def _servers(values: list[str]) -> list[str]:
    servers = [part.strip() for value in values for part in value.split(",") if part.strip()]
    for url in servers:
        if "://" not in url:
            raise typer.BadParameter(f"--bus = {url!r} (a NATS URL, e.g. nats://127.0.0.1:4222)")
    return servers


def _retention(default_days: float, per_table: list[str]) -> dict[str, float]:
    from apis.records.store import TABLES

    days = dict.fromkeys(TABLES, default_days)
    for item in per_table:
        table, sep, value = item.partition("=")
        if not sep or table.strip() not in TABLES:
            raise typer.BadParameter(
                f"--table-retention = {item!r} (TABLE=DAYS, TABLE one of {', '.join(TABLES)})"
            )
        try:
            days[table.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--table-retention = {item!r} (DAYS is a number)") from None
    return days


def register(app: typer.Typer) -> None:
    @app.command("records", help=RECORDS_HELP)
    def records(
        bus: Annotated[
            list[str] | None,
            typer.Option("--bus", help="NATS URL(s); repeat or separate with commas."),
        ] = None,
        bus_config: Annotated[
            Path | None,
            typer.Option("--bus-config", dir_okay=False,
                         help="Instead of --bus: a JSON file like a unit's \"bus\" key "
                              "(servers, tls), e.g. records/bus.json of 'apis config secure'."),
        ] = None,
        store: Annotated[
            str, typer.Option("--store", help="SQLite file path or postgresql:// URL.")
        ] = DEFAULT_STORE,
        unit_data_period: Annotated[
            float, typer.Option("--unit-data-period", help="Seconds between unit data samples.")
        ] = 60.0,
        retention_days: Annotated[
            float, typer.Option("--retention-days", help="Days each table keeps its rows.")
        ] = 365.0,
        table_retention: Annotated[
            list[str] | None,
            typer.Option("--table-retention",
                         help="TABLE=DAYS for one table (log_lines, deal_versions, "
                              "unit_data, rejected); repeatable."),
        ] = None,
        stream_max_mb: Annotated[
            int, typer.Option("--stream-max-mb",
                              help="Size of each records stream (records waiting for this "
                                   "receiver); when full the oldest are dropped.")
        ] = 256,
        time_zone: Annotated[
            str, typer.Option("--time-zone", help="Where the derived figures' days begin "
                              "(IANA name, e.g. Asia/Tokyo).")
        ] = "UTC",
        figures_every: Annotated[
            float, typer.Option("--figures-every", help="Seconds between two passes of the "
                                "derived figures (energy per hour and day, availability).")
        ] = 300.0,
        retention_check: Annotated[
            float, typer.Option("--retention-check", hidden=True,
                                help="Seconds between retention passes.")
        ] = 3600.0,
        multicast: Annotated[
            str | None,
            typer.Option("--multicast", metavar="GROUP:PORT",
                         help="Also keep action log lines sent as UDP multicast datagrams "
                              "to this group, e.g. 239.255.42.1:8888."),
        ] = None,
        multicast_interface: Annotated[
            str | None,
            typer.Option("--multicast-interface", metavar="ADDR",
                         help="The IPv4 address of the interface to join the group on "
                              "(default: the system's choice; 127.0.0.1 for this host's "
                              "loopback)."),
        ] = None,
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        from apis.bus.base import BusError
        from apis.records.datagrams import MulticastSource, MulticastUnavailable
        from apis.records.receiver import Settings
        from apis.records.store import StoreError

        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if bus is not None and bus_config is not None:
            raise typer.BadParameter("give --bus or --bus-config, not both")
        if bus is None and bus_config is None and multicast is None:
            raise typer.BadParameter("give --bus, --bus-config or --multicast")
        if multicast_interface is not None and multicast is None:
            raise typer.BadParameter("--multicast-interface needs --multicast")
        secured = None
        if bus_config is not None:
            from apis.config.unitconfig import BusConfig

            try:
                secured = BusConfig.model_validate_json(bus_config.read_text())
            except (OSError, ValueError) as e:
                typer.echo(f"apis records: --bus-config = {bus_config}: {e}", err=True)
                raise typer.Exit(2) from None
        try:
            source = (
                MulticastSource.parse(multicast, multicast_interface)
                if multicast is not None else None
            )
            settings = Settings(
                servers=_servers(bus or []),
                bus=secured,
                bus_base=bus_config.parent if bus_config is not None else Path("."),
                store=store,
                unit_data_period_s=unit_data_period,
                retention_days=_retention(retention_days, table_retention or []),
                retention_check_s=retention_check,
                stream_max_bytes=stream_max_mb * 1024 * 1024,
                multicast=source,
                time_zone=time_zone,
                figures_every_s=figures_every,
            )
        except ValueError as exc:
            typer.echo(f"apis records: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            asyncio.run(_main(settings))
        except BusError as exc:
            typer.echo(f"apis records: bus: {exc}", err=True)
            raise typer.Exit(1) from None
        except StoreError as exc:
            typer.echo(f"apis records: store: {exc}", err=True)
            raise typer.Exit(1) from None
        except MulticastUnavailable as exc:
            typer.echo(f"apis records: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("apis records: interrupted", err=True)
            raise typer.Exit(130) from None
        typer.echo("apis records: stopped", err=True)


async def _main(settings: Settings) -> None:
    from apis.records.receiver import run_receiver

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_receiver(settings, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

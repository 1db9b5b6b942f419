"""Bus security: a CA, a certificate per identity, and NATS users with per-subject permissions.

Identities: each unit (its unit ID), `WEB` (the operations UI and API), `RECORDS` (a
read-only observer: history, monitoring, tests) and `LEASE` (the lease service,
`apis.unit.leaseservice`: the only writer of the Grid Master lease and the voltage reference
claim). Every client proves its identity with a
certificate the CA signed, whose subject is ``CN=<identity>``; the server checks it and maps it
to the user of that name (TLS ``verify_and_map``): there is no password to copy, and nobody
connects without a certificate. Clients verify the server's certificate against the same CA.

What each may publish (the server refuses everything else; see `permissions`):

- a unit: the protocol among units (data, Helo, errors, deals, Grid Master activation, scram,
  reset, shutdown.all), converter commands only signed by itself
  (``apis.*.Controller.control.device.from.<own id>``: the Controller then checks that the
  sender holds the Grid Master lease), its own ``apis.<id>.helo``, requests to the lease
  service only signed by itself (``apis.lease.*.from.<own id>``), and writes to the deal and
  need-to-stop buckets and the ``policy`` key; not the lease nor the voltage reference claim
  (it reads and watches them; JetStream cannot tell a create from a put, so a unit allowed
  to write there could overwrite the live lease in its own name), not the operation mode
  (neither ``apis.operationMode`` nor the key it is stored at) and nothing of the operations
  interface (manual control, local modes, per-unit shutdown). It may not subscribe to the
  lease service's requests (nor answer them).
- `WEB`: the operations interface (global and local modes, manual control, shutdown, scram,
  deal creation, error injection, data requests) and the ``operationMode`` key, which it
  writes itself: units do not receive ``apis.operationMode`` (the subscription is denied), so
  its request finds no handler and it takes its direct path to the key every unit watches.
- `LEASE`: writes of the two buckets ``apis_grid_master`` and ``apis_voltage_reference``
  (reads, watches, bucket creation), and it receives the requests ``apis.lease.>``.
- `RECORDS`: nothing but reads (key-value reads and watches; deal logs, errors and Helo
  messages heard); it may create the (empty) buckets, as a unit would, when it starts first.

Replies to requests are allowed to whoever received the request (``allow_responses``), so
nobody may publish into another client's inbox.

The files: `make_pki` writes ``ca.pem``/``ca.key`` (reused when present, so units can be
added), ``server.pem``/``server.key`` (SAN: the given hosts; also the routes' client
certificate) and ``<identity>.pem``/``<identity>.key``, with the openssl command line.
`server_config` is the nats-server configuration text (TLS for clients and routes,
`authorization` with every user); `bus_key` is a client's config.json ``bus`` value.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apis.bus.base import signed

WEB = "apis-web"
RECORDS = "apis-records"
LEASE = "apis-lease"
SERVER = "server"
CA = "ca"
CERT_DAYS = 825
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

# the buckets (`apis.unit.registry`): units write these
UNIT_BUCKETS = ("apis_deals", "apis_need_to_stop")
# ... and the lease service these (the Grid Master lease, the voltage reference claim)
LEASE_BUCKETS = ("apis_grid_master", "apis_voltage_reference")
STATE_BUCKET = "apis_state"
BUCKETS = (*UNIT_BUCKETS, *LEASE_BUCKETS, STATE_BUCKET)
LEASE_REQUESTS = "apis.lease.>"  # `apis.unit.subjects.lease_request`
UNIT_STATE_KEYS = ("policy",)  # the cluster policy every unit checks at start
WEB_STATE_KEYS = ("operationMode", "operationMode.audit")

_IDENTITY_RE = re.compile(r"[A-Za-z0-9_-]+")


class SecurityError(Exception):
    """The security files cannot be made (openssl missing or failing, a bad identity)."""


def check_identity(identity: str) -> None:
    """An identity is a subject token and a file name: letters, digits, '-' and '_'."""
    if not _IDENTITY_RE.fullmatch(identity) or identity in (SERVER, CA):
        raise SecurityError(
            f"identity = {identity!r} (must be letters, digits, '-' or '_', not "
            f"{SERVER!r} or {CA!r})"
        )


@dataclass(frozen=True, slots=True)
class Pki:
    """Where the CA and the certificates are (PEM files in one directory)."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / f"{CA}.pem"

    def cert_file(self, identity: str) -> Path:
        return self.directory / f"{identity}.pem"

    def key_file(self, identity: str) -> Path:
        return self.directory / f"{identity}.key"


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise SecurityError("no openssl command on PATH (needed to make the certificates)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SecurityError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def _new_key(name: str) -> tuple[str, ...]:
    return ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key")


def _issue(directory: Path, name: str, extensions: str, days: int) -> None:
    (directory / f"{name}.ext").write_text(extensions + "\n")
    try:
        _openssl("req", *_new_key(name), "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{CA}.pem", "-CAkey",
                 f"{CA}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days),
                 "-extfile", f"{name}.ext", cwd=directory)
    finally:
        for suffix in (".ext", ".csr"):
            (directory / f"{name}{suffix}").unlink(missing_ok=True)
    os.chmod(directory / f"{name}.key", 0o600)


def make_pki(
    directory: Path,
    identities: Iterable[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = CERT_DAYS,
) -> Pki:
    """The CA (kept if `directory` has one), the server's certificate for `hosts` and one
    client certificate per identity (made again each time: a new key each)."""
    names = list(identities)
    for identity in names:
        check_identity(identity)
    if not hosts:
        raise SecurityError("hosts = [] (the server certificate needs at least one name)")
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if not (pki.ca_file.is_file() and pki.key_file(CA).is_file()):
        _openssl("req", "-x509", *_new_key(CA), "-out", f"{CA}.pem", "-days", str(days),
                 "-subj", "/CN=APIS bus CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        os.chmod(pki.key_file(CA), 0o600)
    alt = ",".join(
        f"IP:{host}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*", host)
        else f"DNS:{host}"
        for host in hosts
    )
    # serverAuth for clients, clientAuth too: a server is the client of its routes
    _issue(directory, SERVER,
           f"subjectAltName={alt}\nextendedKeyUsage=serverAuth,clientAuth", days)
    for identity in names:
        _issue(directory, identity, "extendedKeyUsage=clientAuth", days)
    return pki


# ---- permissions -----------------------------------------------------------------------

# JetStream's API as the key-value client uses it (reads, watches, bucket creation), and
# nothing that deletes, purges or edits a stream.
_JS_READ = [
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.*",
    "$JS.API.DIRECT.GET.*.>",
    "$JS.API.CONSUMER.CREATE.*",
    "$JS.API.CONSUMER.CREATE.*.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.*.*",
    "$JS.API.CONSUMER.INFO.*.*",
    "$JS.API.CONSUMER.DELETE.*.*",
    "$JS.API.CONSUMER.MSG.NEXT.*.*",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.FC.>",
    "$JS.ACK.>",
]

UNIT_PUBLISH = [
    "apis.*.Controller.data",
    "apis.Controller.data.all",
    "apis.Controller.scram",
    "apis.error",
    "apis.Mediator.externalRequest",
    "apis.*.Mediator.deal.record",
    "apis.Mediator.deal.needToStop",
    "apis.negotiation.*",
    "apis.GridMaster.helo",
    "apis.GridMaster.error.test",
    "apis.GridMaster.collection.>",
    "apis.*.User.error.test",
    "apis.*.Mediator.interlock.deal",
    "apis.*.Mediator.gridMaster.activate",
    "apis.*.Mediator.gridMaster.deactivate",
    "apis.reset.all",
    "apis.shutdown.all",
]

WEB_PUBLISH = [
    "apis.operationMode",
    "apis.*.operationMode",
    "apis.*.Controller.control.manual",
    "apis.*.Controller.data",
    "apis.*.shutdown",
    "apis.shutdown.all",
    "apis.Controller.scram",
    "apis.error",
    "apis.GridMaster.data.all",
    "apis.GridMaster.unitId.all",
    "apis.GridMaster.error.test",
    "apis.Mediator.deals",
    "apis.Mediator.deal.create",
    "apis.multicastLogHandlerLevel",  # the published level of the units' action log
]

# The records receiver's streams (apis.records.streams), which it makes and updates itself.
RECORDS_STREAMS = ("APIS_RECORDS_LOG", "APIS_RECORDS_DEALS", "APIS_RECORDS_UNIT_DATA")
RECORDS_PUBLISH = [
    *(f"$JS.API.STREAM.{verb}.{name}" for verb in ("CREATE", "UPDATE")
      for name in RECORDS_STREAMS),
    "apis.records.unitData.*",  # its unit data samples, into its own stream
    "apis.GridMaster.data.all",
    "apis.*.Controller.data",
]

RECORDS_SUBSCRIBE = [
    signed("apis.Mediator.deal.log", "*"), "apis.error", "apis.*.helo", "apis.GridMaster.helo",
    "apis.*.log", "apis.records.unitData.*",
]


def _bucket_create(buckets: Iterable[str]) -> list[str]:
    return [f"$JS.API.STREAM.CREATE.KV_{bucket}" for bucket in buckets]


def _keys(bucket: str, keys: Iterable[str]) -> list[str]:
    return [f"$KV.{bucket}.{key}" for key in keys]


def permissions(identity: str, unit_ids: Sequence[str]) -> dict[str, Any]:
    """The NATS permissions of `identity` (a unit ID, `WEB` or `RECORDS`)."""
    if identity in unit_ids:
        publish = [
            f"apis.{identity}.helo",
            f"apis.{identity}.log",  # its action log lines (the records receiver keeps them)
            signed("apis.*.Controller.control.device", identity),
            signed("apis.Mediator.deal.log", identity),
            signed("apis.lease.*", identity),  # its requests to the lease service
            *UNIT_PUBLISH,
            *_JS_READ,
            *_bucket_create(BUCKETS),
            *(f"$KV.{bucket}.>" for bucket in UNIT_BUCKETS),
            *_keys(STATE_BUCKET, UNIT_STATE_KEYS),
        ]
        # The global mode is not theirs to set: the request goes unheard (the operations
        # user then writes the key itself).
        # The lease service's requests are not theirs to hear (a unit in its queue group
        # could answer another's request).
        subscribe: dict[str, Any] = {"allow": ["apis.>", "_INBOX.>"],
                                     "deny": ["apis.operationMode", LEASE_REQUESTS]}
    elif identity == WEB:
        publish = [*WEB_PUBLISH, *_JS_READ, *_bucket_create(BUCKETS),
                   *_keys(STATE_BUCKET, WEB_STATE_KEYS)]
        subscribe = {"allow": ["apis.>", "_INBOX.>"], "deny": [LEASE_REQUESTS]}
    elif identity == LEASE:
        publish = [*_JS_READ, *_bucket_create(BUCKETS),
                   *(f"$KV.{bucket}.>" for bucket in LEASE_BUCKETS)]
        subscribe = {"allow": [LEASE_REQUESTS, "_INBOX.>"]}
    elif identity == RECORDS:
        # the buckets as the units make them (it may start first): no value is written
        publish = [*_JS_READ, *_bucket_create(BUCKETS), *RECORDS_PUBLISH]
        subscribe = {"allow": [*RECORDS_SUBSCRIBE, "_INBOX.>"]}
    else:
        raise SecurityError(
            f"identity = {identity!r} (must be a member unit ID, {WEB!r}, {RECORDS!r} or "
            f"{LEASE!r})"
        )
    return {
        "publish": {"allow": publish},
        "subscribe": subscribe,
        "allow_responses": True,  # a reply to a request received, and only one
    }


def identities(unit_ids: Sequence[str]) -> list[str]:
    return [*unit_ids, WEB, RECORDS, LEASE]


def authorization_config(unit_ids: Sequence[str]) -> str:
    """The nats-server ``authorization`` block: one user per certificate subject."""
    for unit_id in unit_ids:
        check_identity(unit_id)
    users = [
        {"user": f"CN={identity}", "permissions": permissions(identity, unit_ids)}
        for identity in identities(unit_ids)
    ]
    # NATS configuration is a superset of JSON
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


def _quote(path: Path) -> str:
    return json.dumps(str(path))


def tls_config(pki: Pki) -> str:
    """The client-facing ``tls`` block: a CA-signed client certificate is required and names
    the user."""
    return (
        "tls {\n"
        f"  cert_file: {_quote(pki.cert_file(SERVER))}\n"
        f"  key_file: {_quote(pki.key_file(SERVER))}\n"
        f"  ca_file: {_quote(pki.ca_file)}\n"
        "  verify_and_map: true\n"
        "  timeout: 5\n"
        "}\n"
    )


def route_tls_config(pki: Pki) -> str:
    """The ``tls`` block inside ``cluster {}``: routes between servers with mutual TLS."""
    return (
        "  tls {\n"
        f"    cert_file: {_quote(pki.cert_file(SERVER))}\n"
        f"    key_file: {_quote(pki.key_file(SERVER))}\n"
        f"    ca_file: {_quote(pki.ca_file)}\n"
        "    verify: true\n"
        "    timeout: 5\n"
        "  }\n"
    )


def server_config(pki: Pki, unit_ids: Sequence[str]) -> str:
    """The security part of a nats-server configuration (client TLS and the users)."""
    return tls_config(pki) + authorization_config(unit_ids)


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(path.resolve(), base.resolve())


def bus_key(pki: Pki, identity: str, servers: Sequence[str], base: Path | None = None
            ) -> dict[str, Any]:
    """A client's ``bus`` configuration (servers, TLS files; paths relative to `base`, the
    folder of the config.json, when given); a unit's (not `WEB`, `RECORDS`, `LEASE`) with
    ``leaseService``: it writes the lease and the claim through the lease service."""
    for url in servers:
        if not url.startswith("tls://"):
            raise SecurityError(f"servers: {url!r} (must be tls:// on a secured bus)")

    def where(path: Path) -> str:
        return _relative(path, base) if base is not None else str(path)

    key: dict[str, Any] = {
        "servers": list(servers),
        "tls": {
            "caFile": where(pki.ca_file),
            "certFile": where(pki.cert_file(identity)),
            "keyFile": where(pki.key_file(identity)),
        },
    }
    if identity not in (WEB, RECORDS, LEASE):
        key["leaseService"] = True
    return key


# ---- a production layout (`apis config secure DIR`) ------------------------------------

CLIENT_PORT = 4222
ROUTE_PORT = 6222
MONITOR_PORT = 8222


def nats_server_config(
    pki: Pki,
    unit_ids: Sequence[str],
    *,
    server_name: str = "apis-1",
    listen: str = f"0.0.0.0:{CLIENT_PORT}",
    monitor: str | None = f"127.0.0.1:{MONITOR_PORT}",
    store_dir: str = "/var/lib/apis/nats",
    cluster_listen: str = f"0.0.0.0:{ROUTE_PORT}",
    routes: Sequence[str] = (),
) -> str:
    """A whole nats-server configuration: JetStream, TLS for clients (certificates map to
    the users) and, with `routes`, a cluster whose routes use mutual TLS too."""
    lines = [
        "# APIS bus server, written by `apis config secure`. One file per server: give each",
        "# its own server_name (and store_dir); the routes name every server of the cluster.",
        f"server_name: {json.dumps(server_name)}",
        f"listen: {json.dumps(listen)}",
    ]
    if monitor is not None:
        lines.append(f"http: {json.dumps(monitor)}  # monitoring: keep it local")
    lines += [
        "jetstream {",
        f"  store_dir: {json.dumps(store_dir)}",
        "}",
    ]
    if routes:
        lines += [
            "cluster {",
            "  name: apis",
            f"  listen: {json.dumps(cluster_listen)}",
            f"  routes: [{', '.join(json.dumps(route) for route in routes)}]",
            route_tls_config(pki).rstrip("\n"),
            "}",
        ]
    return "\n".join(lines) + "\n" + server_config(pki, unit_ids)


def _host_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port or CLIENT_PORT
    except ValueError:
        port = -1
    if parts.scheme != "tls" or not parts.hostname or port < 0:
        raise SecurityError(f"server = {url!r} (must be tls://HOST[:PORT])")
    return parts.hostname, port


@dataclass(frozen=True, slots=True)
class SecureLayout:
    pki: Pki
    server_configs: list[Path]
    unit_configs: list[Path]
    client_configs: dict[str, Path]  # WEB, RECORDS, LEASE: their `bus` value as a JSON file


def write_secure(
    directory: Path,
    servers: Sequence[str] = (f"tls://127.0.0.1:{CLIENT_PORT}",),
    *,
    store_dir: str = "/var/lib/apis/nats",
    listen_host: str = "0.0.0.0",
    monitor_port: int | None = MONITOR_PORT,
    days: int = CERT_DAYS,
) -> SecureLayout:
    """Secure the cluster configuration in `directory` (policy.json and one folder per
    member unit, as `apis config init` writes it): the CA and certificates in ``pki/``, one
    nats-server configuration per server in ``nats/``, each unit's ``bus`` key in its
    config.json, and ``web/bus.json``, ``records/bus.json`` and ``lease/bus.json`` for the
    other identities (the lease service: ``apis lease-service --bus-config lease/bus.json``,
    one or more copies; units cannot be Grid Master without one).

    The server configurations name the certificate files by their absolute paths here:
    copy ``pki/ca.pem``, ``pki/server.pem`` and ``pki/server.key`` to the same place on each
    server (or edit the paths); a unit needs only ``ca.pem`` and its own pair; ``ca.key``
    belongs on no server (keep it where certificates are made)."""
    policy_path = directory / "policy.json"
    try:
        policy = json.loads(policy_path.read_text())
    except (OSError, ValueError) as e:
        raise SecurityError(f"{policy_path}: {e} (write a cluster first: apis config init)"
                            ) from None
    units = policy.get("memberUnitIds") if isinstance(policy, dict) else None
    if not isinstance(units, list) or not units or not all(isinstance(u, str) for u in units):
        raise SecurityError(f"{policy_path}: memberUnitIds = {units!r} (must be unit IDs)")
    if not servers:
        raise SecurityError("servers = [] (name at least one tls://HOST:PORT)")
    hosts = [_host_of(url) for url in servers]
    names = list(dict.fromkeys([*(host for host, _ in hosts), *DEFAULT_HOSTS]))
    pki = make_pki((directory / "pki").resolve(), identities(units), names, days)
    nats_dir = directory / "nats"
    nats_dir.mkdir(exist_ok=True)
    routes = [f"nats://{host}:{ROUTE_PORT}" for host, _ in hosts] if len(hosts) > 1 else []
    server_configs = []
    for index, (_host, port) in enumerate(hosts, 1):
        path = nats_dir / f"apis-{index}.conf"
        path.write_text(nats_server_config(
            pki, units, server_name=f"apis-{index}", listen=f"{listen_host}:{port}",
            monitor=f"127.0.0.1:{monitor_port}" if monitor_port is not None else None,
            store_dir=f"{store_dir}/apis-{index}", routes=routes,
        ))
        server_configs.append(path)
    unit_configs = []
    for unit_id in units:
        path = directory / unit_id / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SecurityError(f"{path}: {e}") from None
        config["bus"] = bus_key(pki, unit_id, servers, path.parent)
        path.write_text(json.dumps(config, indent=2) + "\n")
        unit_configs.append(path)
    clients = {}
    for identity in (WEB, RECORDS, LEASE):
        folder = directory / identity.removeprefix("apis-")
        folder.mkdir(exist_ok=True)
        path = folder / "bus.json"
        path.write_text(json.dumps(bus_key(pki, identity, servers, folder), indent=2) + "\n")
        clients[identity] = path
    return SecureLayout(pki, server_configs, unit_configs, clients)

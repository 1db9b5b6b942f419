"""What arrives on the records streams, checked and turned into store rows.

Nothing a message says about itself is trusted: the unit id is the subject's (which the bus
can restrict per unit), a payload naming another unit is refused, and every value that
goes into a typed column must have that type. A message that fails a check becomes a
`RejectRow` whose reason names the key, the value and what it must be; it is kept (table
``rejected``) and acknowledged, so a bad message neither blocks the stream nor vanishes.

Messages:

- log lines on ``apis.<unitId>.log``: ``{"unitId", "line", "dropped"?}`` (records.buslog);
- deal versions: the deal registry's key-value writes, ``$KV.apis_deals.<dealId>``, copied
  into the records stream by the server with a ``Nats-Stream-Source`` header that carries the
  registry's sequence (the revision); a ``KV-Operation: DEL``/``PURGE`` header marks removal;
- unit data on ``apis.records.unitData.<unitId>``: ``{"unitId", "sampledAt", "data"}``
  (records.sampler);
- UDP multicast datagrams from the original apis-main (or ours): one action log line each,
  in any of the four patterns of records.actionlog (records.datagrams).

No text that goes into the store may hold a NUL character (PostgreSQL's text cannot): a
message with one in a field is refused, and a refused message's data keeps it as ``\\x00``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from apis.records.actionlog import parse_line
from apis.records.store import DealRow, LogRow, RejectRow, UnitDataRow

UNIT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # one subject token
DEAL_ID = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_=.-]{0,127}")
MAX_LINE = 1_000_000  # characters; the bus's own payload limit is about this
MAX_REJECT_DATA = 64_000  # characters of a rejected message kept with it
UNIT_DATA_PREFIX = "apis.records.unitData."
DEALS_PREFIX = "$KV.apis_deals."
SOURCE_HEADER = "Nats-Stream-Source"
KV_OPERATION = "KV-Operation"


class Refused(ValueError):
    """The message cannot be a record; the text names key, value and limit."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a stream delivered it (what the decoders may read)."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    seq: int  # in the records stream
    timestamp: float  # when the records stream stored it


Homes = Callable[[str], tuple[str | None, str | None]]  # unit id -> (communityId, clusterId)


def reject(delivery: Delivery, origin: str, reason: str) -> RejectRow:
    return RejectRow(origin, delivery.seq, _no_nul(delivery.subject[:300]), _no_nul(reason),
                     kept_data(delivery.data))


def kept_data(data: bytes) -> str:
    """A refused message's bytes as text for table `rejected`: undecodable bytes and NUL
    as ``\\xNN`` escapes, cut to MAX_REJECT_DATA characters."""
    text = data.decode("utf-8", errors="backslashreplace")
    return _no_nul(text)[:MAX_REJECT_DATA]


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\\x00")


def _check_no_nul(text: str, key: str) -> str:
    if "\x00" in text:
        raise Refused(f"{key} holds a NUL character at {text.index(chr(0))} (text may not)")
    return text


def _json(delivery: Delivery) -> Any:
    try:
        return json.loads(delivery.data) if delivery.data else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"payload is not JSON ({exc})") from None


def _unit_id(text: str, what: str) -> str:
    if not UNIT_ID.fullmatch(text):
        raise Refused(f"{what} = {text[:80]!r} (a unit id: 1-64 of A-Z a-z 0-9 _ -)")
    return text


def _number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"{key} = {value!r:.80} (must be a number)")
    if not math.isfinite(value):
        raise Refused(f"{key} = {value!r} (must be finite)")
    return float(value)


def _integer(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(f"{key} = {value!r:.80} (must be an integer)")
    return value


def _text(value: Any, key: str, limit: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(f"{key} = {value!r:.80} (must be a string)")
    if len(value) > limit:
        raise Refused(f"{key} is {len(value)} characters long (at most {limit})")
    return _check_no_nul(value, key)


def _object(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refused(f"{key} = {value!r:.80} (must be an object)")
    return value


# ---- log lines -----------------------------------------------------------------------------


def log_row(delivery: Delivery, origin: str) -> LogRow:
    parts = delivery.subject.split(".")
    if len(parts) != 3 or parts[0] != "apis" or parts[2] != "log":
        raise Refused(f"subject = {delivery.subject!r:.100} (must be apis.<unitId>.log)")
    unit_id = _unit_id(parts[1], "subject's unit id")
    payload = _json(delivery)
    if not isinstance(payload, dict):
        raise Refused(f"payload = {payload!r:.80} (must be an object with unitId and line)")
    said = payload.get("unitId")
    if said != unit_id:
        raise Refused(f"unitId = {said!r:.80} (the subject is {unit_id}'s)")
    row = line_row(unit_id, payload.get("line"), origin, delivery.seq, delivery.timestamp)
    _integer(payload.get("dropped"), "dropped")
    return row


def line_row(unit_id: str, line: Any, origin: str, seq: int, arrived_at: float) -> LogRow:
    """One action log line of `unit_id` (an id already checked), parsed; its time is the
    line's own (see `_line_time`), or `arrived_at`."""
    if not isinstance(line, str):
        raise Refused(f"line = {line!r:.80} (must be a string)")
    if len(line) > MAX_LINE:
        raise Refused(f"line is {len(line)} characters long (at most {MAX_LINE})")
    _check_no_nul(line, "line")
    parsed = parse_line(line)
    return LogRow(origin, seq, unit_id, _line_time(parsed.at, arrived_at), parsed.level,
                  parsed.logger, parsed.thread, parsed.message, line)


# ---- deal versions -------------------------------------------------------------------------

_STATES = (
    ("deactivateDateTime", "deactivated"),
    ("stopDateTime", "stopped"),
    ("startDateTime", "started"),
    ("activateDateTime", "activated"),
)


def registry_revision(delivery: Delivery) -> int:
    """The registry's sequence of this write, from the header the server's copy carries
    (``KV_apis_deals 139 > > $KV.apis_deals.<id> ...``)."""
    header = delivery.headers.get(SOURCE_HEADER, "")
    parts = header.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise Refused(f"{SOURCE_HEADER} = {header!r:.100} (must name the registry's sequence)")
    return int(parts[1])


def deal_row(delivery: Delivery, homes: Homes) -> DealRow:
    if not delivery.subject.startswith(DEALS_PREFIX):
        raise Refused(f"subject = {delivery.subject!r:.100} (must be {DEALS_PREFIX}<dealId>)")
    deal_id = delivery.subject.removeprefix(DEALS_PREFIX)
    if not DEAL_ID.fullmatch(deal_id):
        raise Refused(f"dealId = {deal_id[:80]!r} (1-128 of A-Z a-z 0-9 _ = - .)")
    revision = registry_revision(delivery)
    operation = delivery.headers.get(KV_OPERATION, "PUT").upper()
    if operation in ("DEL", "PURGE") or "Nats-Marker-Reason" in delivery.headers:
        return DealRow(deal_id, revision, operation if operation != "PUT" else "DEL",
                       delivery.timestamp, None, None, None, None, None, None, None)
    if operation != "PUT":
        raise Refused(f"{KV_OPERATION} = {operation!r:.40} (must be PUT, DEL or PURGE)")
    return deal_version_row(deal_id, revision, _json(delivery), delivery.timestamp, homes)


def deal_version_row(deal_id: str, revision: int, deal: Any, reported_at: float,
                     homes: Homes) -> DealRow:
    """One version (a PUT) of deal `deal_id` (a key already checked): `deal` is its JSON."""
    if not isinstance(deal, dict):
        raise Refused(f"deal {deal_id}: value = {deal!r:.80} (must be an object)")
    if deal.get("dealId") != deal_id:
        raise Refused(f"deal {deal_id}: dealId = {deal.get('dealId')!r:.80} (the key is {deal_id})")
    charge = _text(deal.get("chargeUnitId"), "chargeUnitId")
    discharge = _text(deal.get("dischargeUnitId"), "dischargeUnitId")
    for key, unit in (("chargeUnitId", charge), ("dischargeUnitId", discharge)):
        if unit is not None:
            _unit_id(unit, f"deal {deal_id}: {key}")
    cumulate = _number(deal.get("cumulateAmountWh"), f"deal {deal_id}: cumulateAmountWh")
    for key, _ in _STATES:
        _text(deal.get(key), f"deal {deal_id}: {key}")
    state = next((name for key, name in _STATES if deal.get(key) is not None), "notActivated")
    community, cluster = None, None
    for unit in (discharge, charge):
        if unit is not None and community is None:
            community, cluster = homes(unit)
    return DealRow(deal_id, revision, "PUT", reported_at, community, cluster, charge,
                   discharge, state, cumulate, json.dumps(deal, separators=(",", ":")))


# ---- unit data -----------------------------------------------------------------------------


def unit_data_subject(unit_id: str) -> str:
    return UNIT_DATA_PREFIX + unit_id


def unit_data_row(delivery: Delivery) -> UnitDataRow:
    if not delivery.subject.startswith(UNIT_DATA_PREFIX):
        raise Refused(f"subject = {delivery.subject!r:.100} (must be {UNIT_DATA_PREFIX}<unitId>)")
    unit_id = _unit_id(delivery.subject.removeprefix(UNIT_DATA_PREFIX), "subject's unit id")
    payload = _json(delivery)
    if not isinstance(payload, dict):
        raise Refused(f"payload = {payload!r:.80} (must be an object: unitId, sampledAt, data)")
    if payload.get("unitId") != unit_id:
        raise Refused(f"unitId = {payload.get('unitId')!r:.80} (the subject is {unit_id}'s)")
    sampled_at = _number(payload.get("sampledAt"), "sampledAt")
    if sampled_at is None:
        raise Refused("sampledAt = None (must be a number: seconds since the epoch)")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise Refused(f"unit data of {unit_id}: data = {data!r:.80} (must be an object)")
    return unit_data_fields(unit_id, sampled_at, data)


def unit_data_fields(unit_id: str, sampled_at: float, data: dict[str, Any]) -> UnitDataRow:
    """The columns of one unit's data (spec 9); PV and load where the driver reports them
    (the emulator's ``emu`` object)."""
    where = f"unit data of {unit_id}: "
    oesunit = _object(data.get("oesunit"), where + "oesunit")
    said = oesunit.get("id")
    if said is not None and said != unit_id:
        raise Refused(f"{where}oesunit.id = {said!r:.80} (the unit is {unit_id})")
    battery = _object(data.get("battery"), where + "battery")
    dcdc = _object(data.get("dcdc"), where + "dcdc")
    meter = _object(dcdc.get("meter"), where + "dcdc.meter")
    status = _object(dcdc.get("status"), where + "dcdc.status")
    apis = _object(data.get("apis"), where + "apis")
    modes = _object(apis.get("operation_mode"), where + "apis.operation_mode")
    emu = _object(data.get("emu"), where + "emu")

    def number(obj: dict[str, Any], key: str, path: str) -> float | None:
        return _number(obj.get(key), where + path + key)

    return UnitDataRow(
        unit_id=unit_id,
        sampled_at=sampled_at,
        community_id=_text(oesunit.get("communityId"), where + "oesunit.communityId"),
        cluster_id=_text(oesunit.get("clusterId"), where + "oesunit.clusterId"),
        rsoc=number(battery, "rsoc", "battery."),
        battery_operation_status=_integer(battery.get("battery_operation_status"),
                                          where + "battery.battery_operation_status"),
        grid_v=number(meter, "vg", "dcdc.meter."),
        grid_a=number(meter, "ig", "dcdc.meter."),
        grid_w=number(meter, "wg", "dcdc.meter."),
        battery_v=number(meter, "vb", "dcdc.meter."),
        battery_a=number(meter, "ib", "dcdc.meter."),
        battery_w=number(meter, "wb", "dcdc.meter."),
        converter_mode=_text(status.get("status"), where + "dcdc.status.status"),
        operation_mode=_text(modes.get("effective"), where + "apis.operation_mode.effective"),
        pv_w=number(emu, "pvc_charge_power", "emu."),
        load_w=number(emu, "ups_output_power", "emu."),
        unit_time=number(data, "timestamp", ""),
        data=json.dumps(data, separators=(",", ":")),
    )


# ---- multicast datagrams -------------------------------------------------------------------


def datagram_row(data: bytes, sender: tuple[str, int], origin: str, seq: int,
                 received_at: float) -> LogRow:
    """One datagram as a log line. The unit column gets the line's unit id (pattern 1), else
    the name it gives (patterns 2 and 3: a program id, or a legacy unit name), checked as a
    unit id; empty for a line that names nobody (pattern 4, or none: kept whole as SEVERE).
    Refused: bytes that are not UTF-8 text, a NUL, an empty datagram, a name that is no unit
    id."""
    where = f"datagram from {sender[0]}:{sender[1]}"
    if len(data) > MAX_LINE:
        raise Refused(f"{where} is {len(data)} bytes long (at most {MAX_LINE})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"{where}: not UTF-8 text ({exc})") from None
    _check_no_nul(text, where)
    text = text.strip()
    if not text:
        raise Refused(f"{where} is empty (an action log line is expected)")
    parsed = parse_line(text)
    name = parsed.unit_name
    unit_id = _unit_id(name, f"{where}: unit id") if name is not None else ""
    at = _line_time(parsed.at, received_at)
    return LogRow(origin, seq, unit_id, at, parsed.level, parsed.logger, parsed.thread,
                  parsed.message, text)


def _line_time(at: datetime | None, received_at: float) -> float:
    """The line's own time (one without an offset is the receiver's local time, as the
    original apis-log read it); the time of arrival for a line without one."""
    if at is None:
        return received_at
    try:
        value = at.timestamp()
    except (OverflowError, OSError, ValueError):
        return received_at
    return value if math.isfinite(value) else received_at

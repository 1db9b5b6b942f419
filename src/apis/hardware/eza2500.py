"""The TDK-Lambda EZA2500 DC/DC converter's serial protocol, as a sans-I/O codec.

Frame (both directions): SFD, LEN, AD1, AD2, CMD, LEN data bytes, checksum (u16 little-endian,
sum of AD1 through the last data byte mod 65536). Requests start with SFD 0x05, replies with
0x02. A read request has no data; a write carries the fields and is answered with an echo.
A rejected request (NAK) comes back with CMD | 0x80 and a 16-bit error code `ercd`.

Values are fixed point: raw = trunc(2**q * value / rating), value = raw * rating / 2**q.

Nothing here does I/O: `encode_request` / `encode_reply` build bytes, `FrameScanner` finds
frames in a byte stream, `decode_*` turn frames into values and raise `EzaError` subclasses,
`check_reply` also refuses what passes the checksum but cannot be the answer (another
address, an echo that differs from the request, a value the converter cannot hold or read).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from apis.hardware.driver import DriverError

REQUEST_SFD = 0x05
REPLY_SFD = 0x02
NAK_FLAG = 0x80
NAK_LENGTH = 2
HEADER_LENGTH = 5  # SFD, LEN, AD1, AD2, CMD
CHECKSUM_LENGTH = 2

# NAK error codes (ercd).
ERCD_NOT_SUPPORTED = 0xFFFF
ERCD_BAD_PARAMETER = 0xFFFE
ERCD_NOT_NOW = 0xFFFD
ERCD_BUSY = 0xFFFC
ERCD_INTERNAL_FAULT = 0xFFFB
ERCD_NAMES = {
    ERCD_NOT_SUPPORTED: "command not supported",
    ERCD_BAD_PARAMETER: "bad parameter",
    ERCD_NOT_NOW: "valid but cannot accept now",
    ERCD_BUSY: "busy",
    ERCD_INTERNAL_FAULT: "internal communication fault",
}
# Retrying cannot help these: the request itself is wrong or the device is broken.
FATAL_ERCDS = frozenset({ERCD_NOT_SUPPORTED, ERCD_BAD_PARAMETER, ERCD_INTERNAL_FAULT})


# --- errors -----------------------------------------------------------------------------------


class EzaError(DriverError):
    """The converter exchange failed."""

    retryable = True


class EzaTimeout(EzaError):
    """No (complete) reply within the read deadline."""


class EzaChecksumError(EzaError):
    """A reply whose checksum does not match its bytes."""


class EzaValueError(EzaError):
    """A reply that is not the answer to the request (wrong CMD, wrong length)."""


class EzaImplausible(EzaValueError):
    """A reply that passed its checksum yet cannot be true: the wrong address, a value
    outside what the converter can hold or measure, an echo that differs from the request.
    The additive checksum misses swapped bytes and changes that cancel out, so replies are
    checked against what the request and physics allow."""


class EzaNak(EzaError):
    """The converter rejected the request with error code `ercd`."""

    def __init__(self, cmd: int, ercd: int) -> None:
        self.cmd = cmd
        self.ercd = ercd
        self.retryable = ercd not in FATAL_ERCDS
        name = ERCD_NAMES.get(ercd, "unknown error")
        super().__init__(f"converter rejected cmd 0x{cmd:02x}: ERCD={ercd:04x} ({name})")


class EzaEncodeError(EzaError, ValueError):
    """A value that cannot be encoded (outside the field's documented range)."""

    retryable = False


# --- fields and commands ----------------------------------------------------------------------


class FieldType(Enum):
    U8 = "B"
    U16 = "H"
    S16 = "h"


@dataclass(frozen=True, slots=True)
class Field:
    """One data field: its name, wire type, fixed-point scale and documented range."""

    name: str
    type: FieldType = FieldType.U16
    q: int = 0
    rating: float = 1.0
    minimum: float | None = None
    maximum: float | None = None
    scaled: bool = True  # False: the raw integer is the value (codes, bit words)

    @property
    def size(self) -> int:
        return 1 if self.type is FieldType.U8 else 2

    def to_raw(self, value: float) -> int:
        if not math.isfinite(value):
            raise EzaEncodeError(f"{self.name} = {value} (must be a finite number)")
        if self.minimum is not None and self.maximum is not None and not (
            self.minimum <= value <= self.maximum
        ):
            raise EzaEncodeError(
                f"{self.name} = {value} (must be within {self.minimum}..{self.maximum})"
            )
        raw = math.trunc(2**self.q * value / self.rating) if self.scaled else int(value)
        lo, hi = self.raw_bounds
        if not lo <= raw <= hi:
            raise EzaEncodeError(f"{self.name} = {value} (raw {raw} outside {lo}..{hi})")
        return raw

    def from_raw(self, raw: int) -> float:
        return raw * self.rating / 2**self.q if self.scaled else float(raw)

    @property
    def resolution(self) -> float:
        """One raw step in engineering units (the converter's resolution)."""
        return self.rating / 2**self.q if self.scaled else 1.0

    @property
    def raw_bounds(self) -> tuple[int, int]:
        if self.type is FieldType.U8:
            return 0, 0xFF
        if self.type is FieldType.S16:
            return -0x8000, 0x7FFF
        return 0, 0xFFFF


def _raw(name: str, type_: FieldType = FieldType.U16) -> Field:
    return Field(name, type_, scaled=False)


def _grid_v(name: str, lo: float = 260.0, hi: float = 425.0) -> Field:
    return Field(name, q=14, rating=380.0, minimum=lo, maximum=hi)


def _batt_v(name: str, lo: float, hi: float) -> Field:
    return Field(name, q=14, rating=48.0, minimum=lo, maximum=hi)


def _meter(name: str, q: int, rating: float) -> Field:
    return Field(name, FieldType.S16, q=q, rating=rating)


@dataclass(frozen=True, slots=True)
class Command:
    """One of the 16 commands; `-1` reads `fields`, `-4` writes `write_fields` (if any)."""

    number: int
    cmd: int
    fields: tuple[Field, ...]
    writable: bool = False
    write_fields: tuple[Field, ...] | None = None  # when the write differs from the read

    @property
    def read_name(self) -> str:
        return f"{self.number}-1"

    @property
    def write_name(self) -> str:
        return f"{self.number}-4"

    @property
    def written(self) -> tuple[Field, ...]:
        return self.write_fields if self.write_fields is not None else self.fields

    @property
    def reply_length(self) -> int:
        return sum(f.size for f in self.fields)

    @property
    def write_reply_length(self) -> int:
        return sum(f.size for f in self.written)


MODE = Command(1, 0x00, (_raw("mode"),), writable=True)
STATUS = Command(2, 0x01, (_raw("cst"), _raw("ext")))
BATTERY_VOLTAGE = Command(
    3, 0x18, (_batt_v("cvb", 32, 62), Field("drb", q=13, minimum=0, maximum=3.999)),
    writable=True,
)
GRID_VOLTAGE = Command(
    4, 0x1A, (_grid_v("dvg", 260, 390), Field("drg", q=13, minimum=0, maximum=3.999)),
    writable=True,
)
DEAD_ZONE = Command(5, 0x17, (_grid_v("pdz", 0, 57), _grid_v("mdz", 0, 57)), writable=True)
CURRENT_LIMITS = Command(
    6, 0x1C,
    (
        Field("cib", q=13, rating=52.08, minimum=0, maximum=56.77),
        Field("dig", q=13, rating=7.8125, minimum=0, maximum=8.5162),
        _batt_v("ubv", 32, 68), _grid_v("ugv"), _batt_v("obv", 32, 68), _grid_v("ogv"),
    ),
    writable=True,
)
BATTERY_CONFIG = Command(
    7, 0x1D,
    (_raw("bcf"), _batt_v("cvb", 32, 62), _batt_v("dlb", 32, 64),
     _batt_v("cdb", 0, 12), _batt_v("ddb", 0, 12)),
    writable=True,
)
CHARGE_RATES = Command(8, 0x16, (_batt_v("ccr", 0, 12), _batt_v("ddr", 0, 12)), writable=True)
ALARMS = Command(
    9, 0x12, (_raw("alm1"), _raw("alm2"), _raw("alm3")),
    writable=True, write_fields=(_raw("d0", FieldType.U8), _raw("d1", FieldType.U8)),
)
METER = Command(
    10, 0x09,
    (_meter("vg", 14, 380.0), _meter("ig", 13, 7.8125), _meter("vb", 14, 48.0),
     _meter("ib", 13, 52.08), _meter("wg", 11, 2500.0), _meter("wb", 11, 2500.0),
     _raw("ic", FieldType.S16), _meter("tmp", 7, 1.0)),
)
SENSORS = Command(
    11, 0x0A,
    (_raw("ts", FieldType.S16), _raw("tp", FieldType.S16), _meter("v5s", 10, 1.0),
     *(_meter(f"fan{i}", 0, 1.0) for i in range(1, 6))),
)
METER_Q = Command(
    12, 0x0D, tuple(_raw(n) for n in ("vgq", "igq", "vbq", "ibq", "wgq", "wbq", "icq", "tmpq"))
)
SENSORS_Q = Command(
    13, 0x0E, tuple(_raw(n) for n in ("tsq", "tpq", "v5q", *(f"fn{i}q" for i in range(1, 6))))
)
RATINGS = Command(
    14, 0x11,
    tuple(_raw(n) for n in ("vgn", "vgnq", "ign", "ignq", "vbn", "vbnq", "ibn", "ibnq",
                            "wn", "wnq")),
)
VERSION_A = Command(15, 0x1E, (_raw("min", FieldType.U8), _raw("maj", FieldType.U8)))
VERSION_B = Command(16, 0x1F, (_raw("min", FieldType.U8), _raw("maj", FieldType.U8)))

COMMANDS: tuple[Command, ...] = (
    MODE, STATUS, BATTERY_VOLTAGE, GRID_VOLTAGE, DEAD_ZONE, CURRENT_LIMITS, BATTERY_CONFIG,
    CHARGE_RATES, ALARMS, METER, SENSORS, METER_Q, SENSORS_Q, RATINGS, VERSION_A, VERSION_B,
)
COMMANDS_BY_CMD: dict[int, Command] = {c.cmd: c for c in COMMANDS}
# Mode codes a converter accepts (APIS writes only the first four).
MODE_CODES = frozenset({0x0000, 0x0002, 0x0014, 0x0041, 0x0001, 0x0022, 0x0004, 0x0034})
# LEN values a request may carry (reads carry no data).
REQUEST_LENGTHS = frozenset({0} | {c.write_reply_length for c in COMMANDS if c.writable})


# --- checksum and frames ----------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """Sum of the bytes (AD1 through the last data byte) mod 65536."""
    return sum(data) & 0xFFFF


def _frame(sfd: int, ad1: int, ad2: int, cmd: int, data: bytes) -> bytes:
    body = bytes([ad1, ad2, cmd]) + data
    return bytes([sfd, len(data)]) + body + struct.pack("<H", checksum(body))


def encode_fields(fields: Iterable[Field], values: Mapping[str, float]) -> bytes:
    out = b""
    for f in fields:
        if f.name not in values:
            raise EzaEncodeError(f"{f.name} missing (needed by this command)")
        out += struct.pack("<" + f.type.value, f.to_raw(values[f.name]))
    return out


def decode_fields(fields: Iterable[Field], data: bytes) -> dict[str, float]:
    fields = tuple(fields)
    expected = sum(f.size for f in fields)
    if len(data) != expected:
        raise EzaValueError(f"data length = {len(data)} (expected {expected})")
    fmt = "<" + "".join(f.type.value for f in fields)
    return {f.name: f.from_raw(raw) for f, raw in zip(fields, struct.unpack(fmt, data),
                                                      strict=True)}


def decode_raw_fields(fields: Iterable[Field], data: bytes) -> dict[str, int]:
    fields = tuple(fields)
    fmt = "<" + "".join(f.type.value for f in fields)
    if len(data) != struct.calcsize(fmt):
        raise EzaValueError(f"data length = {len(data)} (expected {struct.calcsize(fmt)})")
    return {f.name: raw for f, raw in zip(fields, struct.unpack(fmt, data), strict=True)}


@dataclass(frozen=True, slots=True)
class Address:
    """AD1 (converter side) and AD2 (driver side) of every frame."""

    ad1: int = 0
    ad2: int = 16


DEFAULT_ADDRESS = Address()


def encode_read(command: Command, address: Address = DEFAULT_ADDRESS) -> bytes:
    """The `n-1` request: no data."""
    return _frame(REQUEST_SFD, address.ad1, address.ad2, command.cmd, b"")


def encode_write(
    command: Command, values: Mapping[str, float], address: Address = DEFAULT_ADDRESS
) -> bytes:
    """The `n-4` request. Raise `EzaEncodeError` for a value outside its field's range."""
    if not command.writable:
        raise EzaEncodeError(f"command {command.number} is read-only ({command.read_name})")
    return _frame(REQUEST_SFD, address.ad1, address.ad2, command.cmd,
                  encode_fields(command.written, values))


def encode_ack(
    command: Command,
    raw: Mapping[str, int],
    address: Address = DEFAULT_ADDRESS,
    *,
    write: bool = False,
) -> bytes:
    """An ACK reply carrying raw field values (what a converter sends)."""
    fields = command.written if write else command.fields
    data = b"".join(struct.pack("<" + f.type.value, raw[f.name]) for f in fields)
    return _frame(REPLY_SFD, address.ad1, address.ad2, command.cmd, data)


def encode_nak(cmd: int, ercd: int, address: Address = DEFAULT_ADDRESS) -> bytes:
    return _frame(REPLY_SFD, address.ad1, address.ad2, (cmd | NAK_FLAG) & 0xFF,
                  struct.pack("<H", ercd))


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose checksum was verified."""

    sfd: int
    ad1: int
    ad2: int
    cmd: int
    data: bytes

    @property
    def is_nak(self) -> bool:
        return self.sfd == REPLY_SFD and bool(self.cmd & NAK_FLAG)


def parse_frame(raw: bytes) -> Frame:
    """One complete frame. Raise `EzaValueError` (shape) or `EzaChecksumError`."""
    if len(raw) < HEADER_LENGTH + CHECKSUM_LENGTH:
        raise EzaValueError(f"frame length = {len(raw)} (must be >= 7)")
    if raw[0] not in (REQUEST_SFD, REPLY_SFD):
        raise EzaValueError(f"SFD = 0x{raw[0]:02x} (must be 0x05 or 0x02)")
    if len(raw) != raw[1] + HEADER_LENGTH + CHECKSUM_LENGTH:
        raise EzaValueError(f"frame length = {len(raw)} (LEN {raw[1]} needs {raw[1] + 7})")
    (received,) = struct.unpack("<H", raw[-2:])
    computed = checksum(raw[2:-2])
    if received != computed:
        raise EzaChecksumError(f"checksum error: received {received:04x}, computed {computed:04x}")
    return Frame(raw[0], raw[2], raw[3], raw[4], bytes(raw[5:-2]))


class FrameScanner:
    """Finds frames in a byte stream (h11 style: feed bytes, take frames out).

    Bytes before the SFD are skipped; an SFD followed by a LEN not in `lengths` is taken as
    noise and skipped too, so the scanner resynchronises on garbage. A frame with a bad
    checksum is consumed and reported as `EzaChecksumError`.
    """

    def __init__(self, sfd: int, lengths: Iterable[int]) -> None:
        self._sfd = sfd
        self._lengths = frozenset(lengths)
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed."""
        buf = self._buffer
        while True:
            start = buf.find(self._sfd)
            if start < 0:
                buf.clear()
                return None
            del buf[:start]
            if len(buf) < 2:
                return None
            if buf[1] not in self._lengths:
                del buf[:1]
                continue
            total = buf[1] + HEADER_LENGTH + CHECKSUM_LENGTH
            if len(buf) < total:
                return None
            raw = bytes(buf[:total])
            del buf[:total]
            return parse_frame(raw)


def reply_scanner(command: Command, *, write: bool = False) -> FrameScanner:
    """A scanner for the reply to one request: its ACK length or the NAK length."""
    length = command.write_reply_length if write else command.reply_length
    return FrameScanner(REPLY_SFD, {length, NAK_LENGTH})


def request_scanner() -> FrameScanner:
    return FrameScanner(REQUEST_SFD, REQUEST_LENGTHS)


def decode_reply(frame: Frame, command: Command, *, write: bool = False) -> dict[str, float]:
    """The values of an ACK to `command`; raise `EzaNak` or `EzaValueError`."""
    if frame.sfd != REPLY_SFD:
        raise EzaValueError(f"SFD = 0x{frame.sfd:02x} (a reply starts with 0x02)")
    if frame.cmd == command.cmd | NAK_FLAG:
        if len(frame.data) != NAK_LENGTH:
            raise EzaValueError(f"NAK length = {len(frame.data)} (must be 2)")
        (ercd,) = struct.unpack("<H", frame.data)
        raise EzaNak(command.cmd, ercd)
    if frame.cmd != command.cmd:
        raise EzaValueError(f"reply CMD = 0x{frame.cmd:02x} (expected 0x{command.cmd:02x})")
    return decode_fields(command.written if write else command.fields, frame.data)


# --- plausibility of replies -------------------------------------------------------------

# What a reply to a read may carry beyond the fields' documented ranges: the meter's physical
# range of a 2.5 kW converter (5 % over its ratings for transients); None: no bound.
_METER_RANGES: dict[str, tuple[float, float] | None] = {
    "vg": (-5.0, 450.0), "ig": (-9.0, 9.0), "vb": (-1.0, 72.0), "ib": (-60.0, 60.0),
    "wg": (-2625.0, 2625.0), "wb": (-2625.0, 2625.0), "ic": None, "tmp": (-40.0, 150.0),
}
# |wg - vg * ig| and |wb - vb * ib| above this are not one measurement (W): the meter's
# quantisation is about 2 W, the rest allows for sensors that are sampled apart.
POWER_MISMATCH_W = 10.0
POWER_MISMATCH_RATIO = 0.02
CST_DOCUMENTED_BITS = 0x000F  # running state (bits 0-1) and alarm state (bits 2-3)
# Commands whose values move by themselves (measurements), and how far the meter may move
# between two replies a few ms apart (more is a corrupted reply, logged as such).
MEASUREMENTS = frozenset({METER, SENSORS})
MEASUREMENT_NOISE = {"vg": 2.0, "ig": 0.1, "vb": 0.5, "ib": 0.5, "wg": 40.0, "wb": 40.0,
                     "ic": 16.0, "tmp": 1.0, "ts": 16.0, "tp": 16.0, "v5s": 0.1,
                     **{f"fan{i}": 100.0 for i in range(1, 6)}}


def check_reply(
    frame: Frame, command: Command, address: Address, *, write: bool, request: bytes = b""
) -> dict[str, float]:
    """The values of a reply to `command` sent to `address`, if the reply can be true.

    Beyond `decode_reply`: the reply's AD1/AD2 must be the request's, a write's reply must
    echo the request's data byte for byte (`request`: the request frame), and a read's values
    must lie within what the converter can hold or measure (`plausibility_error`). Raise
    `EzaImplausible` (or what `decode_reply` raises) naming the field, value and limit.
    """
    if (frame.ad1, frame.ad2) != (address.ad1, address.ad2):
        raise EzaImplausible(
            f"reply address = AD1={frame.ad1} AD2={frame.ad2} (the request went to "
            f"AD1={address.ad1} AD2={address.ad2})"
        )
    values = decode_reply(frame, command, write=write)
    if write:
        sent = request[HEADER_LENGTH:-CHECKSUM_LENGTH]
        if frame.data != sent:
            expected = decode_fields(command.written, sent)
            wrong = next(n for n in values if values[n] != expected[n])
            raise EzaImplausible(
                f"{command.write_name} echo {wrong} = {values[wrong]} (sent {expected[wrong]})"
            )
        return values
    error = plausibility_error(command, values)
    if error is not None:
        raise EzaImplausible(f"{command.read_name} reply {error}")
    return values


def plausibility_error(command: Command, values: Mapping[str, float]) -> str | None:
    """Why the values of a read reply cannot be true (None: they can)."""
    if command is MODE:
        if int(values["mode"]) not in MODE_CODES:
            return f"mode = 0x{int(values['mode']):04x} (not a mode of the converter)"
        return None
    if command is STATUS:
        cst = int(values["cst"])
        if cst & ~CST_DOCUMENTED_BITS:
            return f"cst = 0x{cst:04x} (only bits 0-3 are defined)"
        try:
            decode_cst(cst)
        except EzaValueError as error:
            return str(error)
        return None
    if command is METER:
        return _meter_error(values)
    for f in command.fields:
        if f.minimum is None or f.maximum is None:
            continue
        # one raw step of slack below: a limit value is truncated just under it
        if not f.minimum - f.resolution <= values[f.name] <= f.maximum:
            return f"{f.name} = {values[f.name]} (must be within {f.minimum}..{f.maximum})"
    return None


def _meter_error(values: Mapping[str, float]) -> str | None:
    for name, bounds in _METER_RANGES.items():
        if bounds is not None and not bounds[0] <= values[name] <= bounds[1]:
            return f"{name} = {values[name]} (must be within {bounds[0]}..{bounds[1]})"
    for power, voltage, current in (("wg", "vg", "ig"), ("wb", "vb", "ib")):
        product = values[voltage] * values[current]
        allowed = POWER_MISMATCH_W + POWER_MISMATCH_RATIO * abs(product)
        if abs(values[power] - product) > allowed:
            return (f"{power} = {values[power]} ({voltage} * {current} = {product:.1f}: must "
                    f"agree within {allowed:.1f} W)")
    return None


# --- converter words --------------------------------------------------------------------------

RUNNING_STATES = ("off", "charge", "discharge")
ALARM_STATES = ("No alarm", "Light alarm", "Heavy alarm")


def decode_cst(cst: int) -> tuple[str, str]:
    """(runningState, alarmState) of the CST status word; value 3 of either is an error."""
    running, alarm = cst & 0x3, (cst >> 2) & 0x3
    if running == 3:
        raise EzaValueError(f"CST running state = 3 (cst = 0x{cst:04x}, must be 0..2)")
    if alarm == 3:
        raise EzaValueError(f"CST alarm state = 3 (cst = 0x{cst:04x}, must be 0..2)")
    return RUNNING_STATES[running], ALARM_STATES[alarm]


def encode_cst(running_state: str, alarm_state: str = "No alarm") -> int:
    return RUNNING_STATES.index(running_state) | (ALARM_STATES.index(alarm_state) << 2)


def alarm_text(alm1: int, cst: int) -> str:
    """The `alarm` string: ALM1, alarm state, running state as 4-digit hex groups."""
    return f"{alm1:04x} {(cst >> 2) & 0x3:04x} {cst & 0x3:04x}"

"""The battery over Modbus RTU: frames (sans I/O) and a thin master over a byte stream.

Register map (input registers, function 0x04): offset 0x001D = RSOC in tenths of a percent,
offset 0x001E bit 0 = 0 sharing permitted / 1 denied. Register values are big-endian on the
wire; the CRC-16/MODBUS is sent low byte first.

The frame functions are pure: `encode_*` build bytes, `decode_*` check bytes and raise a
`ModbusFrameError` subclass, never anything else. `ModbusBattery` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

from apis.hardware.driver import (
    BATTERY_SHARING_DENIED,
    BATTERY_SHARING_PERMITTED,
    BatteryData,
    DriverError,
)

READ_INPUT_REGISTERS = 0x04
EXCEPTION_FLAG = 0x80

RSOC_OFFSET = 0x001D  # Modbus address 30030
STATUS_OFFSET = 0x001E  # Modbus address 30031
SHARING_DENIED_BIT = 0x0001

# Limits a slave enforces (exception codes 02 and 03).
MAX_START_OFFSET = 0x270E
REGISTER_SPACE_END = 0x270F  # one past the last register
MAX_REGISTER_COUNT = 125

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
SERVER_DEVICE_FAILURE = 0x04

EXCEPTION_NAMES = {
    ILLEGAL_FUNCTION: "illegal function",
    ILLEGAL_DATA_ADDRESS: "illegal data address",
    ILLEGAL_DATA_VALUE: "illegal data value",
    SERVER_DEVICE_FAILURE: "server device failure",
}

SUPPORTED_BAUDRATES = (9600, 19200, 38400, 57600, 115200)


# --- errors -----------------------------------------------------------------------------------


class ModbusError(DriverError):
    """The battery could not be read over Modbus."""


class ModbusFrameError(ModbusError):
    """A frame that is not a valid answer (too short, wrong slave/function, bad length)."""


class ModbusCrcError(ModbusFrameError):
    """The CRC of a received frame does not match its content."""


class ModbusTimeout(ModbusError):
    """The slave stayed silent (or stopped mid-frame) past the timeout."""


class ModbusExceptionReply(ModbusError):
    """The slave answered with an exception code (01-04)."""

    def __init__(self, code: int) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"modbus exception {code}: {name}")


# --- CRC --------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (init 0xFFFF, reflected polynomial 0xA001)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """`body` followed by its CRC, low byte first."""
    return body + struct.pack("<H", crc16(body))


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 3 and crc16(frame[:-2]) == struct.unpack("<H", frame[-2:])[0]


# --- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A function 0x04 request as a slave sees it."""

    slave: int
    start: int
    count: int


def encode_read_request(slave: int, start: int, count: int) -> bytes:
    """Read `count` input registers from offset `start` of `slave` (8 bytes)."""
    if not 1 <= slave <= 247:
        raise ValueError(f"slave = {slave} (must be within 1..247)")
    if not 0 <= start <= 0xFFFF:
        raise ValueError(f"start = {start} (must be within 0..0xFFFF)")
    if not 0 <= count <= 0xFFFF:
        raise ValueError(f"count = {count} (must be within 0..0xFFFF)")
    return with_crc(struct.pack(">BBHH", slave, READ_INPUT_REGISTERS, start, count))


def encode_registers_reply(slave: int, registers: list[int]) -> bytes:
    """Normal reply to function 0x04: byte count then the registers, big-endian."""
    for value in registers:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register = {value} (must be within 0..0xFFFF)")
    body = struct.pack(">BBB", slave, READ_INPUT_REGISTERS, 2 * len(registers))
    return with_crc(body + b"".join(struct.pack(">H", v) for v in registers))


def encode_exception_reply(slave: int, function: int, code: int) -> bytes:
    """Exception reply (5 bytes): function with the high bit set, then the code."""
    return with_crc(bytes([slave, (function | EXCEPTION_FLAG) & 0xFF, code]))


def request_length(prefix: bytes) -> int | None:
    """Length of a request frame from its first two bytes, if the function fixes it.

    Functions 1-6 have 8-byte requests; 15 and 16 carry a byte count at offset 6.
    None means the length cannot be known (framing falls back to the inter-frame silence).
    """
    if len(prefix) < 2:
        return None
    function = prefix[1]
    if 1 <= function <= 6:
        return 8
    if function in (15, 16) and len(prefix) >= 7:
        return 9 + prefix[6]
    return None


def decode_request(frame: bytes) -> ReadRequest:
    """Check a request's CRC and shape. Function other than 0x04 -> `ModbusExceptionReply(1)`;
    a malformed frame -> `ModbusFrameError` (a slave stays silent on those)."""
    if len(frame) < 4:
        raise ModbusFrameError(f"request length = {len(frame)} (must be >= 4)")
    if not crc_ok(frame):
        raise ModbusCrcError(f"request crc = {frame[-2:].hex()} (expected "
                             f"{struct.pack('<H', crc16(frame[:-2])).hex()})")
    if frame[1] != READ_INPUT_REGISTERS:
        raise ModbusExceptionReply(ILLEGAL_FUNCTION)
    if len(frame) != 8:
        raise ModbusFrameError(f"request length = {len(frame)} (must be 8 for function 0x04)")
    slave, _, start, count = struct.unpack(">BBHH", frame[:6])
    return ReadRequest(slave, start, count)


def check_register_range(start: int, count: int) -> None:
    """Raise the exception a slave owes for a bad range (03 count, 02 address)."""
    if not 1 <= count <= MAX_REGISTER_COUNT:
        raise ModbusExceptionReply(ILLEGAL_DATA_VALUE)
    if start > MAX_START_OFFSET or start + count > REGISTER_SPACE_END:
        raise ModbusExceptionReply(ILLEGAL_DATA_ADDRESS)


def reply_length(prefix: bytes) -> int | None:
    """Length of a reply to function 0x04 from its first three bytes (None: need more)."""
    if len(prefix) < 2:
        return None
    if prefix[1] & EXCEPTION_FLAG:
        return 5
    if len(prefix) < 3:
        return None
    return 5 + prefix[2]


def decode_reply(frame: bytes, slave: int, count: int) -> list[int]:
    """The registers of a reply to `encode_read_request(slave, _, count)`.

    Raise `ModbusCrcError`, `ModbusExceptionReply` or `ModbusFrameError`.
    """
    if len(frame) < 5:
        raise ModbusFrameError(f"reply length = {len(frame)} (must be >= 5)")
    if not crc_ok(frame):
        raise ModbusCrcError(f"reply crc = {frame[-2:].hex()} (expected "
                             f"{struct.pack('<H', crc16(frame[:-2])).hex()})")
    if frame[0] != slave:
        raise ModbusFrameError(f"reply slave = {frame[0]} (expected {slave})")
    if frame[1] == READ_INPUT_REGISTERS | EXCEPTION_FLAG:
        if len(frame) != 5:
            raise ModbusFrameError(f"exception reply length = {len(frame)} (must be 5)")
        raise ModbusExceptionReply(frame[2])
    if frame[1] != READ_INPUT_REGISTERS:
        raise ModbusFrameError(f"reply function = 0x{frame[1]:02x} (expected 0x04)")
    if frame[2] != 2 * count or len(frame) != 5 + 2 * count:
        raise ModbusFrameError(
            f"reply byte count = {frame[2]}, length = {len(frame)} "
            f"(expected {2 * count} and {5 + 2 * count})"
        )
    return [v for (v,) in struct.iter_unpack(">H", frame[3:-2])]


# --- the battery's registers ------------------------------------------------------------------


def battery_from_registers(rsoc_register: int, status_register: int) -> BatteryData:
    """RSOC in tenths of a percent; bit 0 of the status register set = sharing denied."""
    denied = status_register & SHARING_DENIED_BIT
    return BatteryData(
        rsoc=rsoc_register / 10.0,
        battery_operation_status=BATTERY_SHARING_DENIED if denied else BATTERY_SHARING_PERMITTED,
    )


def registers_from_battery(rsoc: float, sharing_permitted: bool) -> tuple[int, int]:
    """The two registers a battery shows (RSOC clamped to 0..100 %)."""
    tenths = round(min(max(rsoc, 0.0), 100.0) * 10)
    return tenths, 0 if sharing_permitted else SHARING_DENIED_BIT


# --- the master -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """Link settings of the battery (8N1 is fixed by the hardware recommendation)."""

    port: str = "/dev/ttyUSB0"
    baudrate: int = 9600
    slave: int = 1
    timeout_s: float = 1.0
    attempts: int = 2  # documented: 2 attempts, 0.5 s apart
    retry_wait_s: float = 0.5

    def __post_init__(self) -> None:
        if self.baudrate not in SUPPORTED_BAUDRATES:
            raise ValueError(f"baudrate = {self.baudrate} (must be one of {SUPPORTED_BAUDRATES})")
        if not 1 <= self.slave <= 247:
            raise ValueError(f"slave = {self.slave} (must be within 1..247)")
        if self.attempts < 1:
            raise ValueError(f"attempts = {self.attempts} (must be >= 1)")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s = {self.timeout_s} (must be > 0)")


async def read_exactly(reader: asyncio.StreamReader, n: int, deadline: float) -> bytes:
    """`n` bytes before the loop time `deadline`, else `ModbusTimeout` naming what came."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ModbusTimeout(f"reply: {len(data)} of {n} bytes before the timeout")
        try:
            chunk = await asyncio.wait_for(reader.read(n - len(data)), remaining)
        except TimeoutError:
            raise ModbusTimeout(f"reply: {len(data)} of {n} bytes before the timeout") from None
        if not chunk:
            raise ModbusTimeout("reply: serial line closed")
        data += chunk
    return data


async def drain_input(reader: asyncio.StreamReader, deadline: float, quiet_s: float = 0.02) -> None:
    """Drop what is left of a broken frame: read until the line has been quiet `quiet_s`, but
    not past the loop time `deadline` (or `quiet_s` from now, if later): a line full of noise
    never goes quiet, and the transaction must still end."""
    loop = asyncio.get_running_loop()
    end = max(deadline, loop.time() + quiet_s)
    while (remaining := end - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(256), min(quiet_s, remaining))
        except TimeoutError:
            return
        if not chunk:
            return


class ModbusBattery:
    """Reads RSOC and the permission flag; one transaction at a time on the line."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ModbusSettings | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.settings = settings or ModbusSettings()
        self._line = asyncio.Lock()

    async def read_registers(self, start: int, count: int) -> list[int]:
        """One read with the configured retries; the last error when all attempts fail."""
        request = encode_read_request(self.settings.slave, start, count)
        last: ModbusError | None = None
        for attempt in range(self.settings.attempts):
            if attempt:
                await asyncio.sleep(self.settings.retry_wait_s)
            try:
                return await self._transaction(request, count)
            except ModbusError as error:
                last = error
        assert last is not None
        if isinstance(last, ModbusExceptionReply):
            raise last  # its message names the code; callers may look at `.code`
        raise type(last)(f"battery read failed after {self.settings.attempts} attempts: {last}")

    async def _transaction(self, request: bytes, count: int) -> list[int]:
        loop = asyncio.get_running_loop()
        async with self._line:
            self._writer.write(request)
            await self._writer.drain()
            deadline = loop.time() + self.settings.timeout_s
            try:
                frame = await read_exactly(self._reader, 2, deadline)
                length = reply_length(frame)
                if length is None:
                    frame += await read_exactly(self._reader, 1, deadline)
                    length = reply_length(frame)
                assert length is not None
                frame += await read_exactly(self._reader, length - len(frame), deadline)
                return decode_reply(frame, self.settings.slave, count)
            except (ModbusTimeout, ModbusFrameError):
                # A late or broken frame must not be taken as the answer to the next request.
                await drain_input(self._reader, deadline)
                raise

    async def read(self) -> BatteryData:
        rsoc, status = await self.read_registers(RSOC_OFFSET, 2)
        return battery_from_registers(rsoc, status)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

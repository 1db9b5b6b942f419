"""Serial twins: a Modbus RTU battery slave and an EZA2500 converter, for rigs without hardware.

Each twin answers on an asyncio stream pair (a serial port, one end of a socat pty pair, or
a TCP connection) from a small model object. Faults can be queued to test the master: a
silent reply, a corrupted checksum/CRC, an exception or NAK reply, garbage on the line, a
reply from another address, any corruption of a reply. The converter twin answers only its
own address (AD1, AD2), sees the voltage of the grid its model shares with other twins (0 V
with no CV converter on it) and has the converter's communication watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from apis.hardware import eza2500 as eza
from apis.hardware import modbus
from apis.hardware.commwatchdog import CommunicationWatchdog
from apis.hardware.modes import ConverterMode

log = logging.getLogger(__name__)

# Fault names understood by both twins (plus "exception:N" / "nak:XXXX").
SILENT = "silent"
BAD_CHECKSUM = "bad_checksum"
GARBAGE_FIRST = "garbage_first"
WRONG_CMD = "wrong_cmd"
WRONG_ADDRESS = "wrong_address"  # converter twin: the reply carries AD1 + 1 (checksum right)

INTER_FRAME_QUIET_S = 0.02  # Modbus frames of unknown length end with silence


class BatteryModel(Protocol):
    """What the battery twin reads: RSOC in % and the sharing permission."""

    @property
    def rsoc(self) -> float: ...

    @property
    def sharing_permitted(self) -> bool: ...


@dataclass
class SimpleBattery:
    rsoc: float = 50.0
    sharing_permitted: bool = True


class ModbusBatteryTwin:
    """A Modbus RTU slave serving RSOC (offset 0x1D) and permission (0x1E), function 0x04."""

    def __init__(self, battery: BatteryModel, slave: int = 1) -> None:
        self.battery = battery
        self.slave = slave
        self.faults: deque[str] = deque()
        self.requests: list[bytes] = []

    def register(self, offset: int) -> int:
        rsoc, status = modbus.registers_from_battery(
            self.battery.rsoc, self.battery.sharing_permitted
        )
        return {modbus.RSOC_OFFSET: rsoc, modbus.STATUS_OFFSET: status}.get(offset, 0)

    def answer(self, frame: bytes) -> bytes | None:
        """The reply to one request frame (None: stay silent, as a slave does on errors)."""
        try:
            request = modbus.decode_request(frame)
            if request.slave != self.slave:
                return None
            fault = self.faults.popleft() if self.faults else None
            if fault == SILENT:
                return None
            if fault and fault.startswith("exception:"):
                raise modbus.ModbusExceptionReply(int(fault.split(":")[1]))
            modbus.check_register_range(request.start, request.count)
            registers = [self.register(request.start + i) for i in range(request.count)]
            reply = modbus.encode_registers_reply(self.slave, registers)
            if fault == BAD_CHECKSUM:
                reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
            return reply
        except modbus.ModbusExceptionReply as error:
            if frame[0] != self.slave:
                return None
            return modbus.encode_exception_reply(self.slave, frame[1] & 0x7F, error.code)
        except modbus.ModbusError:
            return None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer requests until the line closes (or the task is cancelled)."""
        while True:
            head = await reader.read(2)
            if not head:
                return
            frame = head
            with contextlib.suppress(TimeoutError):
                while len(frame) < 2:
                    frame += await asyncio.wait_for(reader.read(1), 0.5)
                length = modbus.request_length(frame)
                if length is None:
                    # Unknown function: the frame ends when the line goes quiet.
                    while chunk := await asyncio.wait_for(reader.read(256), INTER_FRAME_QUIET_S):
                        frame += chunk
                else:
                    while len(frame) < length:
                        more = await asyncio.wait_for(reader.read(length - len(frame)), 0.5)
                        if not more:
                            return
                        frame += more
            self.requests.append(frame)
            reply = self.answer(frame)
            if reply is not None:
                writer.write(reply)
                await writer.drain()


# --- the converter ----------------------------------------------------------------------------


class TwinGrid:
    """The DC grid the converter twins of one rig share.

    Its voltage is what a converter in CV (`VOLTAGE_REFERENCE`) on it holds; with none, the
    grid is dead (0 V). A lone twin is on a grid of its own.
    """

    def __init__(self) -> None:
        self.converters: list[ConverterModel] = []

    def voltage(self) -> float:
        for converter in self.converters:
            if int(converter.mode) == ConverterMode.VOLTAGE_REFERENCE:
                return converter.dvg
        return 0.0


@dataclass
class ConverterModel:
    """A converter as its registers see it: set-points in, meters computed from them.

    The grid voltage is the one its `grid` holds (0 V unless a CV converter is on it); a CC
    converter on a dead grid moves no current. Values are in engineering units (V, A, W, °C).
    """

    mode: int = ConverterMode.WAITING
    dvg: float = 350.0
    drg: float = 0.0
    dig: float = 0.0
    cib: float = 52.0
    ubv: float = 40.0
    ugv: float = 300.0
    obv: float = 59.0
    ogv: float = 400.0
    cvb: float = 57.6
    drb: float = 0.0
    pdz: float = 0.0
    mdz: float = 0.0
    bcf: float = 0x0003
    dlb: float = 49.0
    cdb: float = 1.2
    ddb: float = 1.8
    ccr: float = 0.0
    ddr: float = 0.0
    alm1: float = 0
    alm2: float = 0
    alm3: float = 0
    battery_voltage: float = 51.2
    temperature: float = 30.0
    loss_w: float = 20.0
    grid: TwinGrid = field(default_factory=TwinGrid, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.grid.converters.append(self)

    def meter(self) -> dict[str, float]:
        mode = int(self.mode)
        vg = self.grid.voltage()
        ig = {0x0041: self.dig, 0x0002: -self.dig}.get(mode, 0.0) if vg > 0 else 0.0
        wg = vg * ig
        wb = wg - self.loss_w if mode != ConverterMode.WAITING else -self.loss_w / 4
        return {"vg": vg, "ig": ig, "vb": self.battery_voltage, "ib": wb / self.battery_voltage,
                "wg": wg, "wb": wb, "ic": 0, "tmp": self.temperature}

    def cst(self) -> int:
        mode = int(self.mode)
        running = ("charge" if mode == ConverterMode.CHARGE
                   else "off" if mode == ConverterMode.WAITING else "discharge")
        return eza.encode_cst(running)


def _raw_of(f: eza.Field, value: float) -> int:
    """Encode a model value for a reply, clamped into the field's raw range."""
    lo, hi = f.raw_bounds
    if f.scaled:
        raw = int(2**f.q * value / f.rating)
    else:
        raw = int(value)
    return min(max(raw, lo), hi)


class Eza2500Twin:
    """Answers EZA2500 request frames from a `ConverterModel`.

    `received` lists the command names seen ("4-4", "1-1", ...) in order; `refused_values`
    lists every write the converter had to reject because a value was out of range. While
    serving, the converter's communication `watchdog` puts it in Waiting after a silence
    (no frame for its address) of `watchdog.timeout_s`; `watchdog_stops` counts that.
    """

    def __init__(
        self,
        model: ConverterModel,
        address: eza.Address = eza.DEFAULT_ADDRESS,
        watchdog: CommunicationWatchdog | None = None,
    ) -> None:
        self.model = model
        self.address = address
        self.watchdog = watchdog if watchdog is not None else CommunicationWatchdog()
        self.last_heard: float | None = None  # loop time of the last frame for this address
        self.watchdog_stops = 0
        self.faults: deque[str] = deque()
        self.received: list[str] = []
        self.refused_values: list[str] = []
        self.ignored = 0  # frames for other addresses
        # Applied to the next replies, one each (a test's line corruption); None: untouched.
        self.corruptions: deque[Callable[[bytes], bytes] | None] = deque()

    def _values(self, command: eza.Command) -> dict[str, int]:
        if command is eza.METER:
            meter = self.model.meter()
            return {f.name: _raw_of(f, meter[f.name]) for f in command.fields}
        if command is eza.STATUS:
            return {"cst": self.model.cst(), "ext": 0}
        if command in (eza.VERSION_A, eza.VERSION_B):
            return {"min": 4, "maj": 1}
        return {f.name: _raw_of(f, float(getattr(self.model, f.name, 0.0)))
                for f in command.fields}

    def _for_me(self, frame: eza.Frame) -> bool:
        return (frame.ad1, frame.ad2) == (self.address.ad1, self.address.ad2)

    def answer(self, frame: eza.Frame) -> bytes | None:
        """The reply to one request frame; None (silence) for a frame addressed to another
        converter on the line, as a real one on a shared RS485 bus."""
        if not self._for_me(frame):
            self.ignored += 1
            return None
        command = eza.COMMANDS_BY_CMD.get(frame.cmd)
        if command is None:
            return eza.encode_nak(frame.cmd, eza.ERCD_NOT_SUPPORTED, self.address)
        write = len(frame.data) > 0
        if write and not command.writable:
            return eza.encode_nak(frame.cmd, eza.ERCD_NOT_SUPPORTED, self.address)
        self.received.append(command.write_name if write else command.read_name)
        fault = self.faults.popleft() if self.faults else None
        if fault == SILENT:
            return None
        if fault and fault.startswith("nak:"):
            return eza.encode_nak(frame.cmd, int(fault.split(":")[1], 16), self.address)
        if write:
            reply = self._write(command, frame)
        else:
            reply = eza.encode_ack(command, self._values(command), self.address)
        if fault == BAD_CHECKSUM:
            reply = reply[:-2] + bytes([reply[-2] ^ 0x01, reply[-1]])
        elif fault == GARBAGE_FIRST:
            reply = b"\xff\x00\x02\x55" + reply
        elif fault == WRONG_CMD:
            body = reply[2:4] + bytes([reply[4] ^ 0x40]) + reply[5:-2]
            reply = reply[:2] + body + struct.pack("<H", eza.checksum(body))
        elif fault == WRONG_ADDRESS:
            body = bytes([(reply[2] + 1) & 0xFF]) + reply[3:-2]
            reply = reply[:2] + body + struct.pack("<H", eza.checksum(body))
        corrupt = self.corruptions.popleft() if self.corruptions else None
        return reply if corrupt is None else corrupt(reply)

    def _write(self, command: eza.Command, frame: eza.Frame) -> bytes:
        try:
            raw = eza.decode_raw_fields(command.written, frame.data)
        except eza.EzaError:
            return eza.encode_nak(frame.cmd, eza.ERCD_BAD_PARAMETER, self.address)
        values = {f.name: f.from_raw(raw[f.name]) for f in command.written}
        for f in command.written:
            v = values[f.name]
            if f.minimum is not None and f.maximum is not None and not (
                # one raw step of slack: truncation can put a limit value just below it
                f.minimum - f.rating / 2**f.q <= v <= f.maximum
            ):
                self.refused_values.append(f"{f.name} = {v}")
                return eza.encode_nak(frame.cmd, eza.ERCD_BAD_PARAMETER, self.address)
        if command is eza.MODE and raw["mode"] not in eza.MODE_CODES:
            self.refused_values.append(f"mode = 0x{raw['mode']:04x}")
            return eza.encode_nak(frame.cmd, eza.ERCD_BAD_PARAMETER, self.address)
        if command is not eza.ALARMS:
            for name, value in values.items():
                setattr(self.model, name, int(value) if name == "mode" else value)
        else:
            self.model.alm1 = self.model.alm2 = self.model.alm3 = 0
        return eza.encode_ack(command, raw, self.address, write=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        scanner = eza.request_scanner()
        self.last_heard = loop.time()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(256), self._wait_s(loop.time()))
            except TimeoutError:
                self._check_watchdog(loop.time())
                continue
            if not chunk:
                return
            scanner.feed(chunk)
            while True:
                try:
                    frame = scanner.next_frame()
                except eza.EzaError:
                    continue  # a corrupted request gets no answer
                if frame is None:
                    break
                if self._for_me(frame):
                    self.last_heard = loop.time()
                reply = self.answer(frame)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
            self._check_watchdog(loop.time())

    def _wait_s(self, now: float) -> float | None:
        """How long to wait for bytes before looking at the watchdog again (None: forever).
        At most 1 s: a test may change the model's mode while the line is quiet."""
        assert self.last_heard is not None
        deadline = self.watchdog.deadline(self.last_heard)
        return None if math.isinf(deadline) else min(max(deadline - now, 0.0) + 1e-3, 1.0)

    def _check_watchdog(self, now: float) -> None:
        assert self.last_heard is not None
        if int(self.model.mode) != ConverterMode.WAITING and self.watchdog.expired(
            self.last_heard, now
        ):
            log.warning("converter twin %s: no communication for %.1f s, back to Waiting "
                        "(was 0x%04x)", self.address, now - self.last_heard, int(self.model.mode))
            self.model.mode = ConverterMode.WAITING
            self.watchdog_stops += 1

"""The EZA2500 converter over a serial line: one transaction at a time, with the retry policy.

Per command: up to 1 + `timeout_retries` attempts for silence and 1 + `error_retries` for bad
replies (checksum, wrong CMD, retryable NAK), `retry_wait_s` apart. NAK 0xFFFF, 0xFFFE and
0xFFFB are final at once. Values are encoded before anything is sent, so a value outside a
field's range never reaches the converter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from apis.hardware import eza2500 as eza
from apis.hardware.modbus import drain_input

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProtectionSettings:
    """Thresholds sent with every 6-4 (current limit) command; from the driver config."""

    cib: float = 52.0
    ubv: float = 40.0
    ugv: float = 300.0
    obv: float = 59.0
    ogv: float = 400.0


@dataclass(frozen=True, slots=True)
class ConverterSettings:
    port: str = "/dev/ttyUSB1"
    baudrate: int = 19200
    address: eza.Address = eza.DEFAULT_ADDRESS
    timeout_s: float = 0.2  # per reply; the original used 0.1 s
    timeout_retries: int = 3
    error_retries: int = 3
    retry_wait_s: float = 0.1
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s = {self.timeout_s} (must be > 0)")
        if self.timeout_retries < 0 or self.error_retries < 0:
            raise ValueError(
                f"timeout_retries = {self.timeout_retries}, error_retries = "
                f"{self.error_retries} (must be >= 0)"
            )


class Eza2500Converter:
    """Sends EZA2500 commands and returns the decoded replies.

    Every reply is checked (`eza.check_reply`: address, command, echo, plausible values);
    each rejected reply is logged as an error and the request retried within the budget.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ConverterSettings | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.settings = settings or ConverterSettings()
        self._line = asyncio.Lock()
        self.rejected = 0  # replies refused as broken or implausible

    async def read(
        self, command: eza.Command, expect: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """An `n-1` read whose value is confirmed.

        The additive checksum lets swapped bytes and changes that cancel out through, and a
        plausible wrong value cannot be told from a right one in a single reply. So a value
        is taken when it equals `expect` (what the converter is known to hold, e.g. the
        set-points last written) or when two replies in a row agree; a measurement (10-1,
        11-1), which may move between two replies, takes the per-field median of three when
        two disagree. A reply that disagrees is logged as an error.
        """
        request = eza.encode_read(command, self.settings.address)
        measurement = command in eza.MEASUREMENTS
        async with self._line:
            replies = [await self._transact(command, request, write=False)]
            while True:
                last = replies[-1]
                if expect is not None and _same(command, last, expect):
                    return last
                if len(replies) >= 2:
                    if _same(command, last, replies[-2]):
                        if expect is not None:
                            log.warning("converter %s to %s: now holds %s (was %s)",
                                        command.read_name, self._address(),
                                        _shown(command, last), _shown(command, expect))
                        return last
                    if measurement and len(replies) >= 3:
                        return _median(command, replies[-3:])
                    if not measurement or _apart(command, last, replies[-2]):
                        self.rejected += 1
                        log.error("converter %s to %s: replies disagree (%s; before %s)",
                                  command.read_name, self._address(), _shown(command, last),
                                  _shown(command, replies[-2]))
                    if len(replies) > self.settings.error_retries + 1:
                        raise eza.EzaImplausible(
                            f"{command.read_name} to {self._address()}: {len(replies)} "
                            f"replies, no two in a row agree (last {_shown(command, last)})"
                        )
                replies.append(await self._transact(command, request, write=False))

    async def write(self, command: eza.Command, values: Mapping[str, float]) -> dict[str, float]:
        """An `n-4` write; returns the converter's echo (the request's data, byte for byte).
        `EzaEncodeError` before any I/O."""
        request = eza.encode_write(command, values, self.settings.address)
        async with self._line:
            return await self._transact(command, request, write=True)

    async def _transact(
        self, command: eza.Command, request: bytes, *, write: bool
    ) -> dict[str, float]:
        """One request with its retries (the caller holds the line)."""
        s = self.settings
        name = f"{self._name(command, write)} to {self._address()}"
        timeouts = errors = 0
        while True:
            try:
                return await self._attempt(command, request, write=write)
            except eza.EzaTimeout as error:
                timeouts += 1
                log.warning("converter %s: attempt %d timed out (%s)", name,
                            timeouts + errors, error)
                if timeouts > s.timeout_retries:
                    raise eza.EzaTimeout(
                        f"{name}: read timeout after {timeouts} attempts ({error})"
                    ) from None
            except eza.EzaNak as error:
                if not error.retryable:
                    raise
                errors += 1
                log.warning("converter %s: attempt %d refused (%s)", name, timeouts + errors,
                            error)
                if errors > s.error_retries:
                    raise eza.EzaError(
                        f"{name}: timeout ({errors} attempts refused, last {error})"
                    ) from None
            except eza.EzaError as error:
                errors += 1
                self.rejected += 1
                log.error("converter %s: reply rejected at attempt %d (%s)", name,
                          timeouts + errors, error)
                if errors > s.error_retries:
                    raise type(error)(f"{name}: {error} ({errors} attempts)") from None
            await asyncio.sleep(s.retry_wait_s)

    def _address(self) -> str:
        a = self.settings.address
        return f"AD1={a.ad1} AD2={a.ad2}"

    @staticmethod
    def _name(command: eza.Command, write: bool) -> str:
        return command.write_name if write else command.read_name

    async def _attempt(
        self, command: eza.Command, request: bytes, *, write: bool
    ) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        scanner = eza.reply_scanner(command, write=write)
        self._writer.write(request)
        await self._writer.drain()
        deadline = loop.time() + self.settings.timeout_s
        try:
            while True:
                frame = scanner.next_frame()
                if frame is not None:
                    return eza.check_reply(frame, command, self.settings.address, write=write,
                                           request=request)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise eza.EzaTimeout("no complete reply")
                try:
                    chunk = await asyncio.wait_for(self._reader.read(256), remaining)
                except TimeoutError:
                    raise eza.EzaTimeout(
                        f"no complete reply within {self.settings.timeout_s} s"
                    ) from None
                if not chunk:
                    raise eza.EzaTimeout("serial line closed")
                scanner.feed(chunk)
        except (eza.EzaTimeout, eza.EzaChecksumError, eza.EzaValueError):
            # A late or broken reply must not be read as the answer to the next request.
            await drain_input(self._reader, deadline)
            raise


def _same(command: eza.Command, a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Equal at the converter's resolution (the same raw value of every field)."""
    return all(_raw(f, a[f.name]) == _raw(f, b[f.name]) for f in command.fields)


def _raw(f: eza.Field, value: float) -> int:
    return round(value / f.resolution)


def _median(command: eza.Command, replies: list[dict[str, float]]) -> dict[str, float]:
    return {f.name: sorted(r[f.name] for r in replies)[1] for f in command.fields}


def _apart(command: eza.Command, a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Two measurements further apart than a converter's meter moves between two replies."""
    return any(abs(a[f.name] - b[f.name]) > eza.MEASUREMENT_NOISE.get(f.name, 0.0)
               for f in command.fields)


def _shown(command: eza.Command, values: Mapping[str, float]) -> str:
    return ", ".join(f"{f.name} = {values[f.name]:g}" for f in command.fields)

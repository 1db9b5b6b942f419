"""The EZA2500 converter over a serial line: one transaction at a time, with the retry policy.

Per command: up to 1 + `timeout_retries` attempts for silence and 1 + `error_retries` for bad
replies (checksum, wrong CMD, retryable NAK), `retry_wait_s` apart. NAK 0xFFFF, 0xFFFE and
0xFFFB are final at once. Values are encoded before anything is sent, so a value outside a
field's range never reaches the converter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from apis.hardware import eza2500 as eza
from apis.hardware.modbus import drain_input


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
    """Sends EZA2500 commands and returns the decoded replies."""

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

    async def read(self, command: eza.Command) -> dict[str, float]:
        """An `n-1` read."""
        return await self._transact(command, eza.encode_read(command, self.settings.address),
                                    write=False)

    async def write(self, command: eza.Command, values: Mapping[str, float]) -> dict[str, float]:
        """An `n-4` write; returns the converter's echo. `EzaEncodeError` before any I/O."""
        request = eza.encode_write(command, values, self.settings.address)
        return await self._transact(command, request, write=True)

    async def _transact(
        self, command: eza.Command, request: bytes, *, write: bool
    ) -> dict[str, float]:
        s = self.settings
        timeouts = errors = 0
        async with self._line:
            while True:
                try:
                    return await self._attempt(command, request, write=write)
                except eza.EzaTimeout as error:
                    timeouts += 1
                    if timeouts > s.timeout_retries:
                        raise eza.EzaTimeout(
                            f"{self._name(command, write)} to {self._address()}: read timeout "
                            f"after {timeouts} attempts ({error})"
                        ) from None
                except eza.EzaNak as error:
                    if not error.retryable:
                        raise
                    errors += 1
                    if errors > s.error_retries:
                        raise eza.EzaError(
                            f"{self._name(command, write)}: timeout ({errors} attempts "
                            f"refused, last {error})"
                        ) from None
                except eza.EzaError as error:
                    errors += 1
                    if errors > s.error_retries:
                        raise type(error)(
                            f"{self._name(command, write)}: {error} ({errors} attempts)"
                        ) from None
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
                    return eza.decode_reply(frame, command, write=write)
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
            await drain_input(self._reader)
            raise

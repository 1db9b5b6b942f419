"""Action log lines on the cluster bus, and the cluster-wide level of what units publish.

`BusLogHandler` keeps each line (bounded: when the bus cannot keep up the oldest lines are
dropped and counted, never the caller blocked) until its `publish_forever` task sends it as
``{"unitId", "line"}`` on `apis.<unitId>.log`. Lines logged while that task publishes (the bus's
own complaints) are not published again, so a failing bus cannot feed itself.

`PublishedLevel` holds the configured level of the published lines and follows
`apis.multicastLogHandlerLevel` (payload: a level name, or empty for the configured level).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import threading
from collections.abc import Iterable

from apis.bus.base import Bus, BusError, Message
from apis.loglevels import jul_level, python_level
from apis.records.actionlog import ActionLogFormatter

LEVEL_SUBJECT = "apis.multicastLogHandlerLevel"

log = logging.getLogger(__name__)

_publishing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "apis_action_log_publishing", default=False
)


def log_subject(unit_id: str) -> str:
    return f"apis.{unit_id}.log"


class BusLogHandler(logging.Handler):
    def __init__(self, unit_id: str, *, capacity: int = 10_000) -> None:
        super().__init__()
        self.unit_id = unit_id
        self.subject = log_subject(unit_id)
        self.setFormatter(ActionLogFormatter(unit_id))
        self.dropped = 0
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._waiting = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if _publishing.get():
            return
        line = self.format(record)
        if len(self._lines) == self._lines.maxlen:
            self.dropped += 1
        self._lines.append(line)
        if threading.get_ident() == self._loop_thread:
            self._waiting.set()
        else:
            self._loop.call_soon_threadsafe(self._waiting.set)

    async def publish_forever(self, bus: Bus) -> None:
        """Send the kept lines as they come; cancel to stop (call `flush_to` after)."""
        _publishing.set(True)  # this task's context only
        while True:
            await self._waiting.wait()
            self._waiting.clear()
            await self._send(bus)

    async def flush_to(self, bus: Bus, timeout: float) -> None:
        """Send what is still kept, for at most `timeout` seconds (at shutdown)."""
        token = _publishing.set(True)
        try:
            async with asyncio.timeout(timeout):
                await self._send(bus)
        except TimeoutError:
            log.warning("%s: %d action log lines not published", self.unit_id, len(self._lines))
        finally:
            _publishing.reset(token)

    async def _send(self, bus: Bus) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            note = f"{dropped} action log lines dropped: the bus did not keep up"
            await bus.publish(self.subject, {"unitId": self.unit_id, "dropped": dropped,
                                             "line": note})
        while self._lines:
            line = self._lines[0]
            try:
                await bus.publish(self.subject, {"unitId": self.unit_id, "line": line})
            except BusError as exc:
                log.warning("%s: action log line not published: %s", self.unit_id, exc)
                return  # kept; tried again with the next line
            self._lines.popleft()


class PublishedLevel:
    """The level of the lines a unit publishes (bus, multicast); the cluster may change it."""

    def __init__(self, configured: str, handlers: Iterable[logging.Handler]) -> None:
        self.configured = python_level(configured)
        self.handlers = list(handlers)
        self.level = self.configured
        self._apply(self.configured)

    def _apply(self, level: int) -> None:
        self.level = level
        for handler in self.handlers:
            handler.setLevel(level)
        # Records below a logger's level are never made: open the `apis` logger as far as
        # the published level needs, and keep the console at the level it had.
        apis_logger = logging.getLogger("apis")
        if apis_logger.getEffectiveLevel() > level:
            apis_logger.setLevel(level)

    def set(self, name: str) -> None:
        """`name`: a level name (JUL or Python), or empty for the configured level."""
        level = self.configured if not name.strip() else python_level(name)
        self._apply(level)
        log.info("action log: published level now %s", jul_level(level))

    async def follow(self, bus: Bus) -> None:
        """Subscribe to the cluster-wide level (subscription ends with the bus)."""

        async def on_level(message: Message) -> None:
            value = message.payload
            if value is None:
                value = ""
            if not isinstance(value, str):
                log.error("%s: %r (must be a level name or empty)", LEVEL_SUBJECT, value)
                return
            try:
                self.set(value)
            except ValueError as exc:
                log.error("%s: %s", LEVEL_SUBJECT, exc)

        await bus.subscribe(LEVEL_SUBJECT, on_level)

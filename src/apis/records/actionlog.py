"""The unit's action log line: the original apis-main format, both ways.

A line (one log record; the message may span lines):

    [[[apis-main:E001]]] [MainThread/acquisition] 2026-12-02T16:10:00.123+00:00 INFO
    [apis.unit.controller]  message            (one line, cut here to fit)

Levels are java.util.logging names, so the original apis-log and its tools read our lines.
`parse_line` reads the four patterns the original receivers know, tried in order: apis-main
(v3, `[[[program:unit]]]`), other tools (v3, `[[[program]]]`), legacy (v2, `[[name]]`) and a
plain formatter (anything, then `[thread] datetime LEVEL [logger]  message`). A line that
fits none is kept whole, as SEVERE, so nothing a unit said is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from apis.loglevels import JUL_LEVELS, jul_level

PROGRAM_ID = "apis-main"

def _bracket_safe(text: str) -> str:
    """Thread and logger names sit in brackets: keep them free of brackets and newlines."""
    return text.replace("[", "(").replace("]", ")").replace("\n", " ")


class ActionLogFormatter(logging.Formatter):
    """Formats records as apis-main v3 lines for one unit (exceptions on the lines after)."""

    def __init__(self, unit_id: str, program_id: str = PROGRAM_ID,
                 clock: Callable[[], float] | None = None) -> None:
        """`clock`: the time of a line (seconds since the epoch) where it is not the record's
        (an emulated cluster's simulated time); None: when the record was made."""
        super().__init__()
        self.head = f"[[[{program_id}:{unit_id}]]]"
        self.clock = clock

    def format(self, record: logging.LogRecord) -> str:
        thread = record.threadName or "thread"
        task = _task_name()
        if task:
            thread = f"{thread}/{task}"
        at = record.created if self.clock is None else self.clock()
        when = datetime.fromtimestamp(at).astimezone()
        line = (
            f"{self.head} [{_bracket_safe(thread)}] {when.isoformat(timespec='milliseconds')} "
            f"{jul_level(record.levelno)} [{_bracket_safe(record.name)}]  "
            f"{record.getMessage()}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None
    return task.get_name() if task is not None else None


@dataclass(frozen=True, slots=True)
class LogLine:
    """One parsed line. `pattern`: 1-4 as in the module doc, 0 for a line kept whole."""

    pattern: int
    level: str
    message: str
    program_id: str | None = None
    unit_id: str | None = None
    thread: str | None = None
    at: datetime | None = None
    logger: str | None = None

    @property
    def unit_name(self) -> str | None:
        """The unit id where the line has one, else the program id (as apis-log stores it)."""
        return self.unit_id if self.unit_id is not None else self.program_id


_LEVEL_NAMES = "|".join(JUL_LEVELS)
_TAIL = (
    r"\[(?P<thread>[^\]\n]*)\] (?P<at>\S+) (?P<level>" + _LEVEL_NAMES + r") "
    r"\[(?P<logger>[^\]\n]*)\]  (?P<message>.*)\Z"
)
_PATTERNS = (
    (1, re.compile(r"\A\[\[\[(?P<program>[^:\n]*):(?P<unit>.*?)\]\]\] " + _TAIL, re.DOTALL)),
    (2, re.compile(r"\A\[\[\[(?P<program>[^\n]*?)\]\]\] " + _TAIL, re.DOTALL)),
    (3, re.compile(r"\A\[\[(?P<name>[^\n]*?)\]\] " + _TAIL, re.DOTALL)),
    (4, re.compile(r"\A(?P<prefix>.*?)" + _TAIL, re.DOTALL)),
)


def parse_line(text: str) -> LogLine:
    """Read one line (a datagram's text) in any of the four patterns; see the module doc."""
    text = text.strip()
    for pattern, regex in _PATTERNS:
        match = regex.match(text)
        if match is None:
            continue
        try:
            at = datetime.fromisoformat(match["at"])
        except ValueError:
            continue  # not a date-time where one must be: try the next pattern
        fields = match.groupdict()
        program = fields.get("program")
        unit = fields.get("unit")
        if pattern == 3:  # legacy lines name a unit or a program; keep it as both did
            program = fields["name"]
        return LogLine(
            pattern=pattern,
            level=fields["level"],
            message=fields["message"],
            program_id=program,
            unit_id=unit,
            thread=fields["thread"],
            at=at,
            logger=fields["logger"],
        )
    return LogLine(pattern=0, level="SEVERE", message=text)

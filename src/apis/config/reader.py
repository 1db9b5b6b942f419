"""Reading one configuration file with nothing taken on trust.

A configuration file is a regular file of at most MAX_FILE_BYTES, UTF-8, holding one JSON
object nested at most MAX_DEPTH levels, with finite numbers only. Anything else is refused
with one sentence (FileRefused) instead of a traceback, a hang (a FIFO without a writer, a
terminal) or exhausted memory (/dev/zero, a huge file, 100,000 nested brackets).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1 << 20  # 1 MiB: the original files are a few KiB
MAX_DEPTH = 32  # the original files nest 6 levels; json recurses once per level
MAX_INT_DIGITS = 30  # no setting needs more; far below Python's 4300-digit limit
_BOM = b"\xef\xbb\xbf"

# Strings (possibly unterminated) and brackets.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')


class FileRefused(Exception):
    """The file cannot be a configuration file; the message says why, in one sentence.
    `problems` (JSON path, message) when the reason is in particular values."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened non-blocking, so a FIFO or a device never waits for a writer, and checked with
    fstat on the open descriptor (no race with a rename) before anything is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileRefused("file not found") from None
    except OSError as e:
        raise FileRefused(f"cannot open ({e.strerror})") from None
    except ValueError:  # a NUL in the name
        raise FileRefused("cannot open (a file name holds no NUL character)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"is {_kind(info.st_mode)} (must be a regular file)")
        too_big = (f"is larger than {limit:,} bytes (a configuration file must be at most "
                   f"{limit:,} bytes)")
        if info.st_size > limit:
            raise FileRefused(too_big)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat: read one byte past the limit
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(too_big)
        return b"".join(chunks)
    except OSError as e:
        raise FileRefused(f"cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def decode(data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark is allowed and dropped)."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        raise FileRefused(
            f"not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} "
            "(a configuration file must be UTF-8 text)"
        ) from None


def _where(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line} column {column}"


def _scan(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before json recurses into it."""
    depth = 0
    for token in _TOKENS.finditer(text):
        first = token.group()[0]
        if first in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise FileRefused(
                    f"nested deeper than {MAX_DEPTH} levels at {_where(text, token.start())} "
                    f"(a configuration file nests at most {MAX_DEPTH})"
                )
        elif first in "]}":
            depth -= 1


class _NotFinite(float):
    """NaN, Infinity, -Infinity or a number too large for a float, as the file wrote it:
    json accepts them, no setting may be one."""

    written: str

    def __new__(cls, written: str) -> _NotFinite:
        value = super().__new__(cls, float(written))  # float() reads json's spellings too
        value.written = written
        return value


def _float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


class _TooLong(ValueError):
    pass


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _TooLong(f"a number of {digits} digits (numbers have at most {MAX_INT_DIGITS})")
    return int(text)


def _not_finite(value: Any, path: str, found: list[tuple[str, str]]) -> None:
    if isinstance(value, _NotFinite):
        found.append((path, f"= {value.written} (numbers must be finite)"))
    elif isinstance(value, dict):
        for key, item in value.items():
            _not_finite(item, f"{path}.{key}" if path else key, found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _not_finite(item, f"{path}[{i}]", found)


def parse(text: str) -> dict[str, Any]:
    """The JSON object in `text`; FileRefused for anything else."""
    _scan(text)
    try:
        value = json.loads(text, parse_constant=_NotFinite, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as e:
        raise FileRefused(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    except _TooLong as e:
        raise FileRefused(f"not valid JSON: {e}") from None
    except RecursionError:  # _scan bounds the depth; kept in case a limit is ever raised
        raise FileRefused(f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    if not isinstance(value, dict):
        raise FileRefused(f"top level is {_json_type(value)} (must be an object {{...}})")
    found: list[tuple[str, str]] = []
    _not_finite(value, "", found)
    if found:
        raise FileRefused(f"{len(found)} number(s) not finite", found)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object of a configuration file; FileRefused says why it is not one."""
    return parse(decode(read_bytes(path)))

"""The action log's rotating files: `<unit>.log` takes every line, `<unit>.err` WARNING and up."""

from __future__ import annotations

import logging
import re
from logging.handlers import RotatingFileHandler
from pathlib import Path

from apis.records.actionlog import ActionLogFormatter

# A unit id becomes a file name: letters, digits, '-', '_' and '.', not starting with '.'.
_FILE_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def log_file_handlers(
    directory: Path, unit_id: str, *, max_bytes: int, backup_count: int
) -> list[logging.Handler]:
    """The two handlers (all lines; WARNING and up), formatted as apis-main lines."""
    if not _FILE_SAFE_ID.fullmatch(unit_id):
        raise ValueError(
            f"unitId = {unit_id!r} (to name log files it must match {_FILE_SAFE_ID.pattern})"
        )
    if max_bytes < 1:
        raise ValueError(f"actionLog.maxBytes = {max_bytes} (must be >= 1)")
    if backup_count < 0:
        raise ValueError(f"actionLog.backupCount = {backup_count} (must be >= 0)")
    directory.mkdir(parents=True, exist_ok=True)
    formatter = ActionLogFormatter(unit_id)
    handlers: list[logging.Handler] = []
    for suffix, level in ((".log", logging.NOTSET), (".err", logging.WARNING)):
        handler = RotatingFileHandler(
            directory / f"{unit_id}{suffix}",
            maxBytes=max_bytes,
            backupCount=backup_count,
            encoding="utf-8",
        )
        handler.setLevel(level)
        handler.setFormatter(formatter)
        handlers.append(handler)
    return handlers

"""Log levels by their java.util.logging names (the original's), and Python's."""

from __future__ import annotations

import logging

# java.util.logging levels, most severe first, with the Python level each stands for.
JUL_LEVELS: dict[str, int] = {
    "SEVERE": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "CONFIG": 15,
    "FINE": logging.DEBUG,
    "FINER": 5,
    "FINEST": 1,
}


def jul_level(levelno: int) -> str:
    """The java.util.logging name of a Python level (CRITICAL and ERROR are SEVERE)."""
    for name, threshold in JUL_LEVELS.items():
        if levelno >= threshold:
            return name
    return "FINEST"


def python_level(name: str) -> int:
    """The Python level for a level name, JUL (`FINE`) or Python (`DEBUG`), any case."""
    key = name.strip().upper()
    if key in JUL_LEVELS:
        return JUL_LEVELS[key]
    python = logging.getLevelNamesMapping().get(key)
    if python is None:
        known = ", ".join([*JUL_LEVELS, "CRITICAL", "ERROR", "DEBUG"])
        raise ValueError(f"log level = {name!r} (must be one of {known})")
    return python

"""Configuration problems a person can act on: file, JSON path, value found, rule broken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import ErrorDetails


@dataclass(frozen=True, slots=True)
class Problem:
    file: str  # e.g. "policy.json" or "E002/scenario.json"
    path: str  # JSON path with dots, e.g. "mediator.deal.gridCurrentA"; "" for the whole file
    message: str  # "= -1 (must be > 0)", or a sentence that starts with a key name

    def __str__(self) -> str:
        if not self.path:
            return printable(f"{self.file}: {self.message}")
        sep = " " if self.message.startswith("=") or self.message.startswith("(") else "."
        if self.message.startswith(("unknown key", "missing", "time window", "status ")):
            sep = ": "
        return printable(f"{self.file}: {self.path}{sep}{self.message}")


def printable(text: str) -> str:
    """`text` with control characters and lone surrogates (from a file's keys) escaped: a
    message must not drive the terminal nor fail to encode."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(Exception):
    """One or more configuration problems, all reported together."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


MAX_SHOWN = 60  # characters of a value shown in a message


def _show(value: Any) -> str:
    text = _show_whole(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def show_value(value: Any) -> str:
    """A value as the file wrote it (null, true, 'text'), shortened for a message."""
    return _show(value)


def _show_whole(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list) and len(value) > 6:
        return "[...]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts)


def describe_pydantic_error(err: ErrorDetails) -> tuple[str, str]:
    """Turn one pydantic error into (path, message) in our wording."""
    kind = err["type"]
    ctx = err.get("ctx", {}) or {}
    loc = tuple(err["loc"])
    value = err.get("input")
    if kind == "missing":
        return _loc(loc), "missing (required key)"
    if kind == "extra_forbidden":
        return _loc(loc), f"unknown key (value {_show(value)})"
    if kind == "value_error":
        # Our own validators already name the key, the value and the rule.
        text = str(ctx.get("error", err["msg"]))
        return _loc(loc), text
    rules: dict[str, Callable[[], str]] = {
        "greater_than": lambda: f"must be > {_num(ctx.get('gt'))}",
        "greater_than_equal": lambda: f"must be >= {_num(ctx.get('ge'))}",
        "less_than": lambda: f"must be < {_num(ctx.get('lt'))}",
        "less_than_equal": lambda: f"must be <= {_num(ctx.get('le'))}",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "too_short": lambda: f"must have at least {ctx.get('min_length')} item(s)",
        "string_too_short": lambda: f"must have at least {ctx.get('min_length')} character(s)",
        "int_parsing": lambda: "must be an integer",
        "int_from_float": lambda: "must be an integer",
        "int_type": lambda: "must be an integer",
        "float_parsing": lambda: "must be a number",
        "float_type": lambda: "must be a number",
        "finite_number": lambda: "must be a finite number",
        "bool_parsing": lambda: "must be true or false",
        "bool_type": lambda: "must be true or false",
        "string_type": lambda: "must be a string",
        "list_type": lambda: "must be a list",
        "dict_type": lambda: "must be an object",
        "model_type": lambda: "must be an object",
        "model_attributes_type": lambda: "must be an object",
    }
    rule = rules.get(kind, lambda: err["msg"])()
    return _loc(loc), f"= {_show(value)} ({rule})"

"""Base of the configuration models: camelCase keys on disk, snake_case in Python.

Rules that read more than one key of a file are methods marked `@rule`; each returns the
messages of what it found broken. They are judged even when other keys of the same file
are wrong (pydantic would skip a model's own validators then), so a file shows every
problem at once; a rule that reads a wrong key is left out, as its verdict would mean
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

COMMENT_KEY = "#"

Rule = Callable[[Any], list[str]]


def rule(method: Rule) -> Rule:
    """Mark a method as a rule across keys: it returns one message per broken rule, each
    starting with the key it names (`"amountMinWh = 60 (must be <= amountMaxWh = 50)"`)."""
    method.__config_rule__ = True  # type: ignore[attr-defined]
    return method


_RULES: dict[type, tuple[Rule, ...]] = {}
_ADAPTERS: dict[tuple[type, str], TypeAdapter[Any]] = {}


def _rules_of(cls: type) -> tuple[Rule, ...]:
    if cls not in _RULES:
        found: dict[str, Rule] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if getattr(value, "__config_rule__", False):
                    found[name] = value
        _RULES[cls] = tuple(found.values())
    return _RULES[cls]


def _adapter(cls: type[BaseModel], name: str) -> TypeAdapter[Any]:
    key = (cls, name)
    if key not in _ADAPTERS:
        field = cls.model_fields[name]
        kind: Any = field.annotation
        if field.metadata:
            kind = Annotated[kind, *field.metadata]
        _ADAPTERS[key] = TypeAdapter(kind)
    return _ADAPTERS[key]


def _partial(cls: type[ConfigModel], data: Any, error: ValidationError) -> ConfigModel | None:
    """The model with its valid keys only (a wrong or missing key is no attribute), or None
    when the input as a whole is wrong."""
    if not isinstance(data, dict):
        return None
    wrong: set[Any] = set()
    for err in error.errors():
        if not err["loc"]:
            return None
        wrong.add(err["loc"][0])
    values: dict[str, Any] = {}
    absent: list[str] = []
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        key = alias if alias in data else name if name in data else None
        if alias in wrong or name in wrong or (key is None and field.is_required()):
            absent.append(name)
        elif key is None:
            values[name] = field.get_default(call_default_factory=True)
        else:
            try:
                values[name] = _adapter(cls, name).validate_python(data[key])
            except ValidationError:
                absent.append(name)
    view = cls.model_construct(**values)
    for name in absent:
        view.__dict__.pop(name, None)
    return view


def _judge(rules: tuple[Rule, ...], model: Any, partial: bool) -> list[str]:
    broken: list[str] = []
    for judge in rules:
        try:
            broken.extend(judge(model))
        except AttributeError:
            if not partial:
                raise
            # The rule reads a key that is itself wrong: no verdict.
    return broken


def _combined(
    cls: type, data: Any, earlier: ValidationError | None, broken: list[str]
) -> ValidationError:
    errors: list[InitErrorDetails] = []
    if earlier is not None:
        for err in earlier.errors():
            one: InitErrorDetails = {"type": err["type"], "loc": err["loc"], "input": err["input"]}
            if "ctx" in err:
                one["ctx"] = err["ctx"]
            errors.append(one)
    for message in broken:
        errors.append({
            "type": PydanticCustomError("value_error", "{error}", {"error": message}),
            "loc": (),
            "input": data,
        })
    return ValidationError.from_exception_data(cls.__name__, errors)


class ConfigModel(BaseModel):
    """Keys as in the original files (camelCase); unknown keys are refused, `"#"` ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,  # no setting is infinite; NaN would pass every comparison
    )

    @model_validator(mode="wrap")
    @classmethod
    def _judge_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        rules = _rules_of(cls)
        refused = cls.refused_keys(data) if isinstance(data, dict) else {}
        if not rules and not refused:
            return handler(data)
        if refused:
            data = {k: v for k, v in data.items() if k not in refused}
        try:
            model = handler(data)
        except ValidationError as e:
            view = _partial(cls, data, e)
            broken = [] if view is None else _judge(rules, view, partial=True)
            if not broken and not refused:
                raise
            raise _combined(cls, data, e, [*refused.values(), *broken]) from None
        broken = [*refused.values(), *_judge(rules, model, partial=False)]
        if broken:
            raise _combined(cls, data, None, broken)
        return model

    @classmethod
    def refused_keys(cls, data: dict[Any, Any]) -> dict[Any, str]:
        """Keys refused with a reason of their own (not just "unknown key"): key -> message."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The file form: camelCase keys, defaults included."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class MinMax(ConfigModel):
    min: float
    max: float


def strip_comments(value: Any) -> Any:
    """Remove the original files' `"#"` comment keys, at any depth."""
    if isinstance(value, dict):
        return {k: strip_comments(v) for k, v in value.items() if k != COMMENT_KEY}
    if isinstance(value, list):
        return [strip_comments(v) for v in value]
    return value

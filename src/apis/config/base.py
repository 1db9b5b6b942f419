"""Base of the configuration models: camelCase keys on disk, snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

COMMENT_KEY = "#"


class ConfigModel(BaseModel):
    """Keys as in the original files (camelCase); unknown keys are refused, `"#"` ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

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

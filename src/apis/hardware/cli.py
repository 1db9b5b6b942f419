"""Commands of this part (registered by apis.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to the `apis` app."""

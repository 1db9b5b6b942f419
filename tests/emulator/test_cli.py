"""`apis emulator` is registered and documents its options."""

from __future__ import annotations

from typer.testing import CliRunner

from apis.cli import app


def test_emulator_command_help() -> None:
    result = CliRunner().invoke(app, ["emulator", "--help"])
    assert result.exit_code == 0
    for option in ("--units", "--port", "--speed", "--host", "--grid", "--profile-csv"):
        assert option in result.output

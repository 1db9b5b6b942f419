"""Files that cannot be configuration files: one line each and exit 2, through the real
commands, never a traceback, a hang or exhausted memory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from apis.config.cli import config_app
from tests.config.conftest import edit_json

TIMEOUT_S = 120  # far beyond a check's run; only a hang reaches it


def apis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apis", *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)


def problem_lines(output: str) -> list[str]:
    return [line.removeprefix("  x ") for line in output.splitlines()[1:]]


def hw_config_with_droop(sample_dir: Path, droop: str) -> str:
    text = (sample_dir / "hwConfig.json").read_text()
    assert '"droopRatio": 0.039' in text
    return text.replace('"droopRatio": 0.039', f'"droopRatio": {droop}')


def test_each_bad_file_is_one_line(tmp_path: Path, sample_dir: Path) -> None:
    tmp_path = tmp_path / "cases"

    def place(case: str, name: str) -> Path:
        (tmp_path / case).mkdir(parents=True)
        return tmp_path / case / name

    utf8 = place("latin1", "policy.json")
    utf8.write_bytes(b'{"operationMode": "arr\xeat"}')
    deep = place("deep", "policy.json")
    deep.write_text("[" * 100_000 + "]" * 100_000)
    place("zero", "policy.json").symlink_to("/dev/zero")
    loop = place("loop", "policy.json")
    loop.symlink_to(tmp_path / "loop" / "other.json")
    (tmp_path / "loop" / "other.json").symlink_to(loop)
    place("null", "policy.json").write_text("null")
    place("list", "grid.json").write_text("[]")
    big = place("big", "scenario.json")
    big.write_text('{"#": "' + "x" * (1 << 20) + '"}')
    place("infinite", "hwConfig.json").write_text(hw_config_with_droop(sample_dir, "Infinity"))
    place("five", "hwConfig.json").write_text(hw_config_with_droop(sample_dir, "5"))
    nan = place("nan", "policy.json")
    nan.write_text('{"memberUnitIds": ["E001"], "gridCurrentStepA": NaN, '
                   '"mediator": {"deal": {"gridCurrentA": -1e999}}}')
    check = apis("config", "check", *(str(p) for p in sorted(tmp_path.glob("*/*.json"))
                                      if p.name != "other.json"))
    out = check.stdout + check.stderr
    assert check.returncode == 2, out
    assert "Traceback" not in out
    assert problem_lines(check.stdout) == [
        f"{big}: is larger than 1,048,576 bytes (a configuration file must be at most "
        "1,048,576 bytes)",
        f"{deep}: nested deeper than 32 levels at line 1 column 33 (a configuration file "
        "nests at most 32)",
        f"{tmp_path}/five/hwConfig.json: droopRatio = 5 (must be within 0..3.999, the droop "
        "the EZA2500 converter takes)",
        f"{tmp_path}/infinite/hwConfig.json: droopRatio = Infinity (numbers must be finite)",
        f"{utf8}: not UTF-8: byte 0xea at byte offset 22 (a configuration file must be UTF-8 "
        "text)",
        f"{tmp_path}/list/grid.json: top level is an array (must be an object {{...}})",
        f"{loop}: cannot open (Too many levels of symbolic links)",
        f"{nan}: gridCurrentStepA = NaN (numbers must be finite)",
        f"{nan}: mediator.deal.gridCurrentA = -1e999 (numbers must be finite)",
        f"{tmp_path}/null/policy.json: top level is null (must be an object {{...}})",
        f"{tmp_path}/zero/policy.json: is a character device (must be a regular file)",
    ]
    assert check.stdout.splitlines()[0] == "11 problem(s):"


def test_a_fifo_never_blocks_the_check(sample_dir: Path) -> None:
    (sample_dir / "policy.json").unlink()
    os.mkfifo(sample_dir / "policy.json")  # no writer: a blocking open would wait forever
    check = apis("config", "check", str(sample_dir))
    assert check.returncode == 2, check.stdout + check.stderr
    assert problem_lines(check.stdout) == ["policy.json: is a FIFO (must be a regular file)"]
    alone = apis("config", "check", str(sample_dir / "policy.json"))
    assert alone.returncode == 2
    assert f"{sample_dir}/policy.json: is a FIFO (must be a regular file)" in alone.stdout


def test_unit_refuses_a_bad_file_before_starting_anything(sample_dir: Path) -> None:
    # A listener where config.json puts the bus: the unit must never connect to it.
    bus = socket.socket()
    bus.bind(("127.0.0.1", 0))
    bus.listen()
    bus.setblocking(False)
    try:
        port = bus.getsockname()[1]
        edit_json(sample_dir / "config.json",
                  lambda d: d.update(bus={"servers": [f"nats://127.0.0.1:{port}"]},
                                     scenarioFile="/dev/zero"))
        (sample_dir / "hwConfig.json").write_text(hw_config_with_droop(sample_dir, "Infinity"))
        (sample_dir / "policy.json").unlink()
        os.mkfifo(sample_dir / "policy.json")
        unit = apis("unit", "--config", str(sample_dir / "config.json"))
        assert unit.returncode == 2, unit.stdout + unit.stderr
        assert "Traceback" not in unit.stderr
        assert unit.stderr.splitlines() == [
            "apis unit: refused to start: 3 configuration problem(s):",
            f"  {sample_dir}/hwConfig.json: droopRatio = Infinity (numbers must be finite)",
            f"  {sample_dir}/policy.json: is a FIFO (must be a regular file)",
            "  /dev/zero: is a character device (must be a regular file)",
        ]
        try:
            bus.accept()
            raise AssertionError("the refused unit connected to its bus")
        except BlockingIOError:
            pass
    finally:
        bus.close()


def test_text_from_the_files_is_never_markup_nor_a_control_sequence(sample_dir: Path) -> None:
    edit_json(sample_dir / "config.json", lambda d: d.update(unitId="[/x]"))
    edit_json(sample_dir / "policy.json", lambda d: d.update(memberUnitIds=["[/x]"],
                                                          largeCapacityUnitIds=[]))
    ok = CliRunner().invoke(config_app, ["check", str(sample_dir)])
    assert ok.exit_code == 0, ok.output
    assert "1 unit(s) ([/x]), members ['[/x]']" in ok.output
    edit_json(sample_dir / "policy.json", lambda d: d.update({"\x1b[2J": 1}))
    bad = CliRunner().invoke(config_app, ["check", str(sample_dir)])
    assert bad.exit_code == 2
    assert "policy.json: \\x1b[2J: unknown key (value 1)" in bad.output
    assert "\x1b" not in bad.output
    assert json.loads((sample_dir / "policy.json").read_text())["\x1b[2J"] == 1


def test_names_numbers_and_marks_the_reader_judges(sample_dir: Path) -> None:
    edit_json(sample_dir / "config.json", lambda d: d.update(scenarioFile="./a\x00b"))
    (sample_dir / "policy.json").write_text(
        (sample_dir / "policy.json").read_text().replace('"gridCurrentA": 1,',
                                                         '"gridCurrentA": 1' + "0" * 30 + ","))
    hw = sample_dir / "hwConfig.json"
    hw.write_bytes(b"\xef\xbb\xbf" + hw.read_bytes())  # a byte-order mark is still UTF-8
    result = CliRunner().invoke(config_app, ["check", str(sample_dir)])
    assert result.exit_code == 2, result.output
    assert problem_lines(result.output) == [
        "policy.json: not valid JSON: a number of 31 digits (numbers have at most 30)",
        f"{sample_dir}/a\\x00b: cannot open (a file name holds no NUL character)",
    ]

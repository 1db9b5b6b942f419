from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

# Our own files in the original apis-main format (every key and nesting of the format).
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "original-format"


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """A copy of the original sample files, to modify freely."""
    target = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, target)
    return target


def edit_json(path: Path, change: Any) -> None:
    """Apply `change(data)` to a JSON file in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))

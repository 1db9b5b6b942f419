"""The deal log (spec 10.2): one file per deal, named by its dealId, on both of its units.

The directory comes from config.json's `dealLogDirFormat`, a Java date pattern (quoted
literal parts, `uuuu`/`yyyy`, `MM`, `dd` date fields) applied to the deal's `createDateTime`;
``{tmpdir}`` is the system (or the given) temporary directory. A file is rewritten whole each
time (write a temporary file, then rename: a reader never sees half a deal).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from apis.hardware.driver import APIS_TIME_FORMAT
from apis.unit.deal import NOT_APPLICABLE, Deal

_FIELDS = re.compile(r"uuuu|yyyy|MM|dd|HH")


def format_directory(pattern: str, at: datetime, tmpdir: str | None = None) -> Path:
    """Apply a `dealLogDirFormat` pattern to a date."""
    out = []
    for i, part in enumerate(pattern.split("'")):
        if i % 2 == 1:  # inside quotes: literal
            out.append(part)
            continue
        out.append(
            _FIELDS.sub(
                lambda m: {
                    "uuuu": f"{at.year:04d}",
                    "yyyy": f"{at.year:04d}",
                    "MM": f"{at.month:02d}",
                    "dd": f"{at.day:02d}",
                    "HH": f"{at.hour:02d}",
                }[m.group(0)],
                part,
            )
        )
    text = "".join(out).replace("{tmpdir}", tmpdir or tempfile.gettempdir())
    return Path(text)


def worth_saving(deal: Deal) -> bool:
    """Only deals that reached the converters, or were reset, are logged."""
    activated = deal.activate_date_time not in (None, NOT_APPLICABLE)
    return activated or bool(deal.reset)


class DealLog:
    """Writes the deals of one unit."""

    def __init__(self, unit_id: str, directory_format: str, tmpdir: str | None = None) -> None:
        self.unit_id = unit_id
        self.directory_format = directory_format
        self.tmpdir = tmpdir
        self._written: dict[str, str] = {}  # dealId -> last text written

    def path_of(self, deal: Deal) -> Path:
        try:
            created = datetime.strptime(deal.create_date_time or "", APIS_TIME_FORMAT)
        except ValueError:
            created = datetime(1970, 1, 1)
        directory = format_directory(self.directory_format, created, self.tmpdir)
        return directory / deal.deal_id

    def write(self, deal: Deal) -> Path | None:
        """Write `deal` if this unit takes part and it is worth saving; return the path."""
        if not deal.involves(self.unit_id) or not deal.deal_id or not worth_saving(deal):
            return None
        text = json.dumps(deal.to_json(), separators=(",", ":"))
        path = self.path_of(deal)
        if self._written.get(deal.deal_id) == text:
            return path  # unchanged since the last write
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
        if deal.deactivated:
            self._written.pop(deal.deal_id, None)  # final: forget it
        else:
            self._written[deal.deal_id] = text
        return path

    def read(self, deal: Deal) -> Deal | None:
        path = self.path_of(deal)
        if not path.is_file():
            return None
        return Deal.from_json(json.loads(path.read_text(encoding="utf-8")))

    def files(self) -> list[Path]:
        """Every deal file this unit wrote (searches the pattern's fixed prefix)."""
        root = format_directory(self.directory_format.split("'")[1], datetime(1970, 1, 1),
                                self.tmpdir) if "'" in self.directory_format else None
        if root is None or not root.exists():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

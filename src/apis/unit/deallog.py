"""The deal log (spec 10.2): one file per deal, named by its dealId, on both of its units.

The directory comes from config.json's `dealLogDirFormat`, a Java date pattern (quoted
literal parts, `uuuu`/`yyyy`, `MM`, `dd` date fields) applied to the deal's `createDateTime`;
``{tmpdir}`` is the system (or the given) temporary directory.

A deal id comes from the bus, so it is checked before it names a file: it must have the form
of an id (`apis.unit.ids`) and the file must resolve inside its directory. A record whose
dealId names a file of a *different* deal (other units or another creation time) is refused:
later versions of the same deal replace it, nothing else does.

A file is rewritten whole each time, durably: a temporary file in the same directory is
written and fsync'ed, renamed over the old one, and the directory fsync'ed, so a reader (or
a unit after a power cut) finds the old record or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from apis.hardware.driver import APIS_TIME_FORMAT
from apis.unit.deal import NOT_APPLICABLE, Deal
from apis.unit.ids import check_deal_id, is_deal_id

log = logging.getLogger(__name__)

_FIELDS = re.compile(r"uuuu|yyyy|MM|dd|HH")


class DealLogRefused(Exception):
    """A record the deal log will not write; the message says why."""


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


def ended(deal: Deal) -> bool:
    """The record is final: the deal was deactivated, aborted or scrammed."""
    return deal.deactivated or deal.aborted or deal.scram_date_time is not None


Identity = tuple[str, str, str, str, str | None]


def identity(deal: Deal) -> Identity:
    """What does not change over a deal's versions: its units and its creation time."""
    return (deal.request_unit_id, deal.accept_unit_id, deal.charge_unit_id,
            deal.discharge_unit_id, deal.create_date_time)


def same_deal(a: Deal, b: Deal) -> bool:
    return a.deal_id == b.deal_id and identity(a) == identity(b)


def write_durably(path: Path, text: str) -> None:
    """Replace `path` by `text`: temporary file, fsync, rename, fsync of the directory."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide it from other readers
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


class DealLog:
    """Writes the deals of one unit."""

    def __init__(self, unit_id: str, directory_format: str, tmpdir: str | None = None) -> None:
        self.unit_id = unit_id
        self.directory_format = directory_format
        self.tmpdir = tmpdir
        self._written: dict[str, str] = {}  # dealId -> last text written (live deals)
        self._identities: dict[str, Identity] = {}  # dealId -> identity (live deals)

    def path_of(self, deal: Deal) -> Path:
        """The deal's file; InvalidDealId or DealLogRefused if its id cannot name one."""
        deal_id = check_deal_id(deal.deal_id)
        try:
            created = datetime.strptime(deal.create_date_time or "", APIS_TIME_FORMAT)
        except (TypeError, ValueError):
            created = datetime(1970, 1, 1)
        directory = format_directory(self.directory_format, created, self.tmpdir)
        path = directory / deal_id
        # the id's form allows no separator; a link planted at the name could still lead out
        if path.resolve().parent != directory.resolve():
            raise DealLogRefused(f"dealId = {deal_id!r}: {path} leads out of {directory}")
        return path

    def write(self, deal: Deal) -> Path | None:
        """Write `deal` if this unit takes part and it is worth saving; return the path.

        InvalidDealId or DealLogRefused (nothing written) for an id that cannot name a file
        or a record of another deal than the one the file holds."""
        if not deal.involves(self.unit_id) or not worth_saving(deal):
            return None
        path = self.path_of(deal)
        text = json.dumps(deal.to_json(), separators=(",", ":"))
        if self._written.get(deal.deal_id) == text:
            return path  # unchanged since the last write
        self._check_same_deal(deal, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, text)
        if ended(deal):
            self._written.pop(deal.deal_id, None)  # final: forget it
            self._identities.pop(deal.deal_id, None)
        else:
            self._written[deal.deal_id] = text
            self._identities[deal.deal_id] = identity(deal)
        return path

    def _check_same_deal(self, deal: Deal, path: Path) -> None:
        known = self._identities.get(deal.deal_id)
        if known is None:
            present = self._load(path)
            known = identity(present) if present is not None else None
        if known is not None and known != identity(deal):
            raise DealLogRefused(
                f"dealId = {deal.deal_id!r}: {path} holds another deal (units and creation "
                f"time {known}, not {identity(deal)})"
            )

    def _load(self, path: Path) -> Deal | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Deal.from_json(json.loads(text))
        except (ValueError, TypeError, AttributeError) as e:
            # unreadable: what it held cannot be told, so it is not overwritten either
            raise DealLogRefused(f"{path}: unreadable deal record ({e})") from None

    def read(self, deal: Deal) -> Deal | None:
        return self._load(self.path_of(deal))

    def find(self, deal_id: str) -> Deal | None:
        """The record of `deal_id` in any directory of the log, None if there is none."""
        check_deal_id(deal_id)
        for path in self.files():
            if path.name == deal_id:
                return self._load(path)
        return None

    def live(self) -> list[Deal]:
        """This unit's records that have not ended (after a crash: deals to reconcile)."""
        out = []
        for path in self.files():
            if not is_deal_id(path.name):
                continue
            try:
                deal = self._load(path)
            except DealLogRefused as e:
                log.error("%s: deal log: %s", self.unit_id, e)
                continue
            if deal is not None and deal.involves(self.unit_id) and not ended(deal):
                out.append(deal)
        return out

    def files(self) -> list[Path]:
        """Every deal file this unit wrote (searches the pattern's fixed prefix)."""
        root = format_directory(self.directory_format.split("'")[1], datetime(1970, 1, 1),
                                self.tmpdir) if "'" in self.directory_format else None
        if root is None or not root.exists():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

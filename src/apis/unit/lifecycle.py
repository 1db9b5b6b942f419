"""Lifecycle lines: the one place where the texts a person or a test plan waits for are made.

Each deal transition, each change of Grid Master and each error raised, received and handled
is logged once, in one fixed form, on the logger ``apis.unit.lifecycle`` (so a unit's action
log line reads ``... INFO [apis.unit.lifecycle]  deal <dealId> started: E001 -> E002 at 1.0
A``). The forms are documented in one table in ``src/apis/records/README.md``; `PATTERNS`
holds a regular expression for each, with named groups, which matches the message (the part
of an action log line after the logger's bracket and two spaces).

Every deal line begins ``deal <dealId> <event>:``; every Grid Master line ``grid master
<unitId> <event>:``; every error line ``error <event>``. The details after the colon are
part of the form too (see `PATTERNS`). Texts are made lazily (logging's %-arguments), and
only at transitions, never on a pass that changes nothing.

Who logs what (in an in-process cluster all units share one process, and so one logger):

- ``created``: the unit whose Mediator registered the deal (the requester, or the unit that
  took an `apis.Mediator.deal.create`);
- every other deal event: the Grid Master's unit, as the transition is saved;
- ``grid master ... activated`` / ``deactivated``: the unit that becomes / stops being
  Grid Master;
- ``error raised``: the unit where the error was raised; ``error received``: the unit that
  took it from `apis.error` (the unit a LOCAL error names, the Grid Master for the others);
  ``error handled``: the unit that ran the actions (LOCAL) or the Grid Master (GLOBAL).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from apis.unit.deal import Deal
from apis.unit.errors import ErrorRecord

LOGGER_NAME = "apis.unit.lifecycle"
log = logging.getLogger(LOGGER_NAME)

# The deal events in the order they come. A deal that runs to its end: created, activated,
# (ramped up: only the deal that brings the grid up), started, stopped, deactivated,
# disposed; ``reset`` (authorisation failed: back to not activated) may come before
# ``started`` any number of times. An aborted deal: what it reached, then ``stopped`` if it
# had started, ``aborted``, ``deactivated`` if it had been activated, ``disposed``. A
# scrammed deal: what it reached, then ``scrammed`` and ``disposed``. Every deal that ends
# logs ``disposed`` last.
DEAL_EVENTS = (
    "created", "activated", "ramped up", "reset", "started", "stopped", "aborted",
    "scrammed", "deactivated", "disposed",
)
GRID_MASTER_EVENTS = ("activated", "deactivated")
ERROR_EVENTS = ("raised", "received", "handled")

_ID = r"(?P<dealId>\S+)"
_UNIT = r"(?P<{}>\S+)"
_NUMBER = r"-?[0-9][0-9.eE+-]*"
_RECORD = (
    r"\((?P<category>[A-Z]+):(?P<extent>[A-Z]+):(?P<level>[A-Z]+):(?P<unitId>[^)]*)\) "
    r"(?P<message>.*)"
)

# One regular expression per form (fullmatch it against a message; `re.DOTALL` lets an
# error's message span lines).
PATTERNS: dict[str, re.Pattern[str]] = {
    "deal created": re.compile(
        rf"deal {_ID} created: {_UNIT.format('dischargeUnitId')} -> "
        rf"{_UNIT.format('chargeUnitId')}, (?P<dealAmountWh>{_NUMBER}) Wh at "
        rf"(?P<dealGridCurrentA>{_NUMBER}) A"
    ),
    "deal activated": re.compile(
        rf"deal {_ID} activated: master side {_UNIT.format('masterUnitId')}"
        r"(?P<masterDeal> \(master deal\))?"
    ),
    "deal ramped up": re.compile(
        rf"deal {_ID} ramped up: {_UNIT.format('voltageReferenceUnitId')} holds the grid at "
        rf"(?P<gridVoltageV>{_NUMBER}) V"
    ),
    "deal reset": re.compile(rf"deal {_ID} reset: (?P<reason>.*)", re.DOTALL),
    "deal started": re.compile(
        rf"deal {_ID} started: {_UNIT.format('dischargeUnitId')} -> "
        rf"{_UNIT.format('chargeUnitId')} at (?P<dealGridCurrentA>{_NUMBER}) A"
    ),
    "deal stopped": re.compile(
        rf"deal {_ID} stopped: (?P<cumulateAmountWh>{_NUMBER}) Wh of "
        rf"(?P<dealAmountWh>{_NUMBER}) Wh"
    ),
    "deal aborted": re.compile(rf"deal {_ID} aborted: (?P<reason>.*)", re.DOTALL),
    "deal scrammed": re.compile(rf"deal {_ID} scrammed: (?P<reason>.*)", re.DOTALL),
    "deal deactivated": re.compile(
        rf"deal {_ID} deactivated: (?P<cumulateAmountWh>{_NUMBER}) Wh of "
        rf"(?P<dealAmountWh>{_NUMBER}) Wh"
    ),
    "deal disposed": re.compile(
        rf"deal {_ID} disposed: (?P<cumulateAmountWh>{_NUMBER}) Wh of "
        rf"(?P<dealAmountWh>{_NUMBER}) Wh"
    ),
    "grid master activated": re.compile(
        rf"grid master {_UNIT.format('unitId')} activated: epoch (?P<epoch>[0-9]+)"
    ),
    "grid master deactivated": re.compile(
        rf"grid master {_UNIT.format('unitId')} deactivated: epoch (?P<epoch>[0-9]+), "
        r"(?P<reason>.*)",
        re.DOTALL,
    ),
    "error raised": re.compile(rf"error raised: {_RECORD}", re.DOTALL),
    "error received": re.compile(rf"error received: {_RECORD}", re.DOTALL),
    "error handled": re.compile(
        rf"error handled \((?P<actions>[A-Za-z, ]*)\): {_RECORD}", re.DOTALL
    ),
}


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _counted(deal: Deal) -> float:
    return deal.cumulate_amount_wh or 0.0


# ---- deals -------------------------------------------------------------------------------


def deal_created(deal: Deal) -> None:
    log.info("deal %s created: %s -> %s, %g Wh at %s A", deal.deal_id, deal.discharge_unit_id,
             deal.charge_unit_id, deal.deal_amount_wh, deal.deal_grid_current_a)


def deal_activated(deal: Deal, master_unit_id: str) -> None:
    log.info("deal %s activated: master side %s%s", deal.deal_id, master_unit_id,
             " (master deal)" if deal.master else "")


def deal_ramped_up(deal: Deal, voltage_reference_unit_id: str, grid_voltage_v: float) -> None:
    log.info("deal %s ramped up: %s holds the grid at %.1f V", deal.deal_id,
             voltage_reference_unit_id, grid_voltage_v)


def deal_reset(deal: Deal, reason: str) -> None:
    log.warning("deal %s reset: %s", deal.deal_id, _one_line(reason))


def deal_started(deal: Deal) -> None:
    log.info("deal %s started: %s -> %s at %s A", deal.deal_id, deal.discharge_unit_id,
             deal.charge_unit_id, deal.deal_grid_current_a)


def deal_stopped(deal: Deal) -> None:
    log.info("deal %s stopped: %.1f Wh of %g Wh", deal.deal_id, _counted(deal),
             deal.deal_amount_wh)


def deal_aborted(deal: Deal, reason: str) -> None:
    log.warning("deal %s aborted: %s", deal.deal_id, _one_line(reason))


def deal_scrammed(deal: Deal, reason: str) -> None:
    log.warning("deal %s scrammed: %s", deal.deal_id, _one_line(reason))


def deal_deactivated(deal: Deal) -> None:
    log.info("deal %s deactivated: %.1f Wh of %g Wh", deal.deal_id, _counted(deal),
             deal.deal_amount_wh)


def deal_disposed(deal: Deal) -> None:
    log.info("deal %s disposed: %.1f Wh of %g Wh", deal.deal_id, _counted(deal),
             deal.deal_amount_wh)


# ---- the Grid Master ---------------------------------------------------------------------


def grid_master_activated(unit_id: str, epoch: int) -> None:
    log.info("grid master %s activated: epoch %d", unit_id, epoch)


def grid_master_deactivated(unit_id: str, epoch: int, reason: str) -> None:
    log.info("grid master %s deactivated: epoch %d, %s", unit_id, epoch, _one_line(reason))


# ---- errors ------------------------------------------------------------------------------


def _level(record: ErrorRecord) -> int:
    return logging.WARNING if record.level == "WARN" else logging.ERROR


def error_raised(record: ErrorRecord) -> None:
    log.log(_level(record), "error raised: %s", record)


def error_received(record: ErrorRecord) -> None:
    log.log(_level(record), "error received: %s", record)


def errors_handled(records: Sequence[ErrorRecord], actions: Sequence[str]) -> None:
    """One line per error of a handling round, each naming the round's actions."""
    done = ", ".join(actions) or "none"
    for record in records:
        log.warning("error handled (%s): %s", done, record)

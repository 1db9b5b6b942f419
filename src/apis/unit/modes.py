"""Operation modes (spec 12.4): the cluster's global mode and this unit's local mode.

Global mode, key `operationMode` in bucket `apis_state` (a plain string, as the web app and
older tools read and write it). Who set it and when goes to a separate key,
`operationMode.audit`: ``{"mode": <mode or null>, "previous": <mode or null>, "by": <who>,
"at": <ISO time>, "unitId": <unit that handled the request>}``. Absent -> the policy's
`operationMode`; invalid in the store -> `stop`. Every unit *watches* the key, so a change
takes effect at once (the Grid Master is woken).

Local mode: null (follow the global mode), `heteronomous` or `stop`, persisted in the state
file `config.stateFileFormat % "operationMode"` (deleted when null), read at start-up.

Effective mode (`apis.unit.state.effective_mode`): local null -> global; global `autonomous`
or `heteronomous` -> the local value; global `stop` or `manual` -> the global value.

What an operator's buttons mean, precisely (the spec's Run / Soft Stop / Force Stop /
Manual are the four global modes):

- **Run** = `autonomous`: units request, accept and create deals themselves.
- **Soft Stop** = `heteronomous`: no unit requests or accepts any more, so no new deal is
  negotiated; every deal already registered runs to its end (its amount, an abort or a
  scram). Only a deal injected explicitly through `apis.Mediator.deal.create` could still
  start, which is what `heteronomous` is for.
- **Force Stop** = `stop`: the Grid Master finds deals while the mode is `stop` (a
  LOGIC/GLOBAL/ERROR, spec 5.2 step 4), scrams (CC converters to Waiting at once, the voltage
  reference `scramVoltageReferenceDelayMsec` later), ends every deal with a scram record and
  resets the cluster. Without deals, any converter not in Waiting is scrammed as well (ours:
  the original left that to the local checks, two acquisitions later). Local checks raise a
  USER/LOCAL/ERROR on a unit that still has deals, so each unit stops itself too.
- **Manual** = `manual`: no deals; converters only by hand (`apis.<id>.Controller.control
  .manual`); static range checks keep running.

Setting `autonomous` again resumes trading (after a `stop` caused by a HARDWARE/GLOBAL/ERROR,
an operator has to do exactly that).

An invalid mode in a set request is refused (the original removed the key, which falls back
to the policy's mode and could silently resume trading: unsafe). An explicit null removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apis.bus.base import Bus, BusError, Message, Subscription
from apis.config.policy import Policy
from apis.config.unitconfig import UnitConfig
from apis.unit import subjects
from apis.unit.registry import OPERATION_MODE_KEY, OPERATION_MODES, Registry
from apis.unit.state import UnitState

log = logging.getLogger(__name__)

AUDIT_KEY = "operationMode.audit"
LOCAL_MODES = (None, "heteronomous", "stop")
STATE_NAME = "operationMode"


class ModeRefused(Exception):
    """A mode change was refused; the message names the value and what is allowed."""


def state_file_path(config: UnitConfig, name: str, tmpdir: str | None = None) -> Path:
    """`stateFileFormat` with `{tmpdir}` and `%s` filled in."""
    pattern = config.state_file_format.replace("{tmpdir}", tmpdir or tempfile.gettempdir())
    return Path(pattern.replace("%s", name))


class OperationModes:
    def __init__(
        self,
        *,
        state: UnitState,
        config: UnitConfig,
        policy: Policy,
        bus: Bus,
        registry: Registry,
        now_iso: Callable[[], str],
        on_global_change: Callable[[str], None],
    ) -> None:
        self.state = state
        self.config = config
        self.policy = policy
        self.bus = bus
        self.registry = registry
        self.unit_id = state.unit_id
        self._now_iso = now_iso
        self._on_global_change = on_global_change
        self.state_file = state_file_path(config, STATE_NAME)
        self.stored_global: str | None = None  # the key's value as last seen (None: absent)

    # ---- start-up ------------------------------------------------------------------------

    def read_local_mode(self) -> str | None:
        """The persisted local mode; an unreadable or invalid file counts as `stop` (safe)."""
        try:
            text = self.state_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("(FRAMEWORK:LOCAL:ERROR:%s) state file %s: %s", self.unit_id,
                      self.state_file, e)
            return "stop"
        if text in ("heteronomous", "stop"):
            return text
        log.error("(USER:LOCAL:ERROR:%s) state file %s holds %r (must be heteronomous or "
                  "stop); local mode stop", self.unit_id, self.state_file, text)
        return "stop"

    async def load(self) -> None:
        self.state.local_mode = self.read_local_mode()
        entry = await self.registry.state.get(OPERATION_MODE_KEY)
        self._apply_global(entry.value if entry is not None else None)

    def _apply_global(self, value: Any) -> None:
        self.stored_global = value if isinstance(value, str) else None
        mode: str
        if value is None:
            mode = self.policy.operation_mode
        elif value in OPERATION_MODES:
            mode = str(value)
        else:
            mode = "stop"
        mode = mode if mode in OPERATION_MODES else "stop"
        if mode != self.state.global_mode:
            log.info("%s: global operation mode %s -> %s", self.unit_id,
                     self.state.global_mode, mode)
            self.state.global_mode = mode
            self._on_global_change(mode)
        self.state.global_mode = mode

    async def watch_loop(self) -> None:
        """Follow the global mode key (a KV watch; re-opened if it ends)."""
        while True:
            try:
                async for change in self.registry.state.watch(OPERATION_MODE_KEY):
                    if change.key != OPERATION_MODE_KEY:
                        continue
                    self._apply_global(change.entry.value if change.entry else None)
            except BusError as e:
                log.warning("%s: operation mode watch failed: %s", self.unit_id, e)
            await asyncio.sleep(1.0)
            with contextlib.suppress(BusError):
                entry = await self.registry.state.get(OPERATION_MODE_KEY)
                self._apply_global(entry.value if entry is not None else None)

    def policy_changed(self, policy: Policy) -> None:
        self.policy = policy
        self._apply_global(self.stored_global)

    # ---- bus -----------------------------------------------------------------------------

    async def subscribe(self) -> list[Subscription]:
        return [
            await self.bus.subscribe(
                subjects.OPERATION_MODE, self._on_global, queue="operationMode"
            ),
            await self.bus.subscribe(subjects.operation_mode(self.unit_id), self._on_local),
        ]

    async def _on_global(self, msg: Message) -> Any:
        if msg.headers.get(subjects.COMMAND) != "set":
            return self.state.global_mode
        mode = msg.payload
        by = msg.headers.get(subjects.OPERATOR) or msg.headers.get(subjects.UNIT_ID) or "unknown"
        await self.set_global(mode if mode is None else str(mode), by)
        return self.unit_id

    async def set_global(self, mode: str | None, by: str) -> None:
        if mode is not None and mode not in OPERATION_MODES:
            raise ModeRefused(
                f"operationMode = {mode!r} (must be one of {', '.join(OPERATION_MODES)}, or "
                "null to fall back to the policy)"
            )
        previous = self.stored_global
        await self.registry.set_global_mode(mode)
        await self.registry.state.put(
            AUDIT_KEY,
            {"mode": mode, "previous": previous, "by": by, "at": self._now_iso(),
             "unitId": self.unit_id},
        )
        log.warning("%s: global operation mode set to %s by %s", self.unit_id, mode, by)
        self._apply_global(mode)

    async def _on_local(self, msg: Message) -> Any:
        if msg.headers.get(subjects.COMMAND) != "set":
            return self.state.local_mode
        mode = msg.payload
        self.set_local(mode if mode is None else str(mode))
        return self.unit_id

    def set_local(self, mode: str | None) -> None:
        """Set and persist the local mode (applied first: a `stop` holds even if the file
        cannot be written; the failure is reported to the caller)."""
        if mode not in LOCAL_MODES:
            raise ModeRefused(
                f"local operationMode = {mode!r} (must be null, heteronomous or stop)"
            )
        previous = self.state.local_mode
        self.state.local_mode = mode
        log.warning("%s: local operation mode %s -> %s", self.unit_id, previous, mode)
        try:
            if mode is None:
                self.state_file.unlink(missing_ok=True)
            else:
                self.state_file.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.state_file.with_name(f".{self.state_file.name}.tmp")
                temporary.write_text(mode, encoding="utf-8")
                os.replace(temporary, self.state_file)
        except OSError as e:
            raise ModeRefused(
                f"local operationMode {mode!r} applied but not persisted to "
                f"{self.state_file}: {e}"
            ) from None

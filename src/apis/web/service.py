"""What the operations web app knows of a cluster and what it may do to it, over the bus.

`Operations` reads the cluster through any `Bus` (in-memory in the demo, NATS for a real
cluster), keeps the last good answer of each kind (served with its age when the Grid Master
does not answer), stores finished deals, errors and mode changes in a `HistoryStore`, and
pushes a compact view of the cluster to listeners (the server-sent-events route).

Bus and key-value contracts it relies on (see README.md in this package for the full list):

- reads: request `apis.GridMaster.data.all` -> ``{unitId: unitData}``,
  `apis.GridMaster.unitId.all` -> ``[unitId]``, `apis.GridMaster.error.test` -> bool,
  `apis.Mediator.deals` -> ``[deal]`` (falls back to the `apis_deals` bucket); key
  ``operationMode`` and ``gridMasterUnitId`` in bucket `apis_state`;
- subscriptions: `apis.Mediator.deal.log.from.*` (deal records, signed by their publisher;
  stored once ended) and `apis.error`
  (error objects);
- actions: request `apis.operationMode` (header ``command=set``, body = mode) with a fall
  back to writing ``apis_state/operationMode``; request `apis.<id>.operationMode` (header
  ``command=set``, body = null / "heteronomous" / "stop"); request
  `apis.<id>.Controller.control.manual` (body ``{"command", "params"}``) for manual converter
  control; request `apis.Mediator.deal.create`; publish `apis.error`; publish
  `apis.Controller.scram` (header ``excludeVoltageReference=false``) as the Stop-all fall-back.

Time: periods and timeouts are given in real seconds and converted to loop seconds with the
loop's `speed` (the demo's scaled-time loop), so a page refreshes about once a real second
whatever the loop. Times shown to operators (when a mode changed, how old a snapshot is)
are wall-clock times: they answer "when did I do that", not "when in the simulation".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apis.bus.base import (
    Bus,
    BusError,
    KeyValue,
    Message,
    NoHandlers,
    RemoteFailure,
    Subscription,
    signed,
)
from apis.store.history import HistoryStore, ModeChange, Schedule, deal_ending

if TYPE_CHECKING:  # only the demo process has a world; the web app never builds one
    from apis.emulator.world import World

log = logging.getLogger(__name__)

STATE_BUCKET = "apis_state"
DEALS_BUCKET = "apis_deals"
OPERATION_MODE_KEY = "operationMode"
OPERATION_MODE_AUDIT_KEY = "operationMode.audit"  # written by the units: who, when, from, to
GRID_MASTER_KEY = "gridMasterUnitId"

GRID_MASTER_DATA_ALL = "apis.GridMaster.data.all"
GRID_MASTER_UNIT_ID_ALL = "apis.GridMaster.unitId.all"
GRID_MASTER_ERROR_TEST = "apis.GridMaster.error.test"
MEDIATOR_DEALS = "apis.Mediator.deals"
MEDIATOR_DEAL_CREATE = "apis.Mediator.deal.create"
MEDIATOR_DEAL_LOG = "apis.Mediator.deal.log"
ERROR = "apis.error"
GLOBAL_OPERATION_MODE = "apis.operationMode"
CONTROLLER_SCRAM = "apis.Controller.scram"
SHUTDOWN_ALL = "apis.shutdown.all"

GLOBAL_MODES = ("autonomous", "heteronomous", "stop", "manual")
LOCAL_MODES = (None, "heteronomous", "stop")
MODE_LABELS = {
    "autonomous": "Run",
    "heteronomous": "Soft Stop",
    "stop": "Force Stop",
    "manual": "Manual",
}
CONVERTER_MODES = {
    "0x0000": "WAIT",
    "0x0014": "VOLTAGE_REFERENCE",
    "0x0041": "CHARGE",
    "0x0002": "DISCHARGE",
}
MANUAL_COMMANDS = ("WAIT", "VOLTAGE_REFERENCE", "CHARGE", "DISCHARGE")


def local_operation_mode(unit_id: str) -> str:
    return f"apis.{unit_id}.operationMode"


def manual_control(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.control.manual"


def controller_data(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.data"


def unit_shutdown(unit_id: str) -> str:
    return f"apis.{unit_id}.shutdown"


def loop_seconds(real_seconds: float) -> float:
    """`real_seconds` of wall time in the running loop's seconds (scaled-time loops)."""
    speed = getattr(asyncio.get_running_loop(), "speed", 1.0)
    return real_seconds * float(speed)


class ActionRefused(Exception):
    """The cluster's state does not allow the action (HTTP 409)."""


class ClusterUnavailable(Exception):
    """The cluster did not answer or does not offer the mechanism (HTTP 503)."""


@dataclass
class Snapshot:
    """The last good answer of the Grid Master, and what happened since."""

    units: dict[str, dict[str, Any]] = field(default_factory=dict)
    taken_at: float | None = None  # wall clock of the last good answer
    error: str | None = None  # why the last attempt failed (None: it did not)
    attempts: int = 0

    def age_s(self, now: float) -> float | None:
        return None if self.taken_at is None else max(0.0, now - self.taken_at)


def _float(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def unit_view(unit_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The few values a unit box shows, from one unit's data (spec 2.1)."""
    apis = data.get("apis") or {}
    modes = apis.get("operation_mode") or {}
    oesunit = data.get("oesunit") or {}
    battery = data.get("battery") or {}
    dcdc = data.get("dcdc") or {}
    status = dcdc.get("status") or {}
    meter = dcdc.get("meter") or {}
    code = str(status.get("status", ""))
    return {
        "id": unit_id,
        "name": oesunit.get("display") or unit_id,
        "rsoc": _float(battery.get("rsoc")),
        "permitted": battery.get("battery_operation_status"),
        "mode": code,
        "modeName": CONVERTER_MODES.get(code, code or "?"),
        "statusName": status.get("operationMode"),
        "vg": _float(meter.get("vg")),
        "ig": _float(meter.get("ig")),
        "wg": _float(meter.get("wg")),
        "wb": _float(meter.get("wb")),
        "dvg": _float((dcdc.get("vdis") or {}).get("dvg")),
        "dig": _float((dcdc.get("param") or {}).get("dig")),
        "isGridMaster": bool(apis.get("is_grid_master")),
        "isVoltageReference": code == "0x0014",
        "global": modes.get("global"),
        "local": modes.get("local"),
        "effective": modes.get("effective"),
        "dealIds": list(apis.get("deal_id_list") or []),
        "time": data.get("time"),
        "timestamp": _float(data.get("timestamp")),
    }


def deal_state(record: Mapping[str, Any]) -> str:
    for key, state in (
        ("deactivateDateTime", "deactivated"),
        ("stopDateTime", "stopped"),
        ("startDateTime", "started"),
        ("activateDateTime", "activated"),
    ):
        if record.get(key) is not None:
            return state
    return "notActivated"


def deal_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A deal as the cluster view draws it: who gives, who takes, how much, how far."""
    amount = _float(record.get("dealAmountWh"), 0.0) or 0.0
    done = _float(record.get("cumulateAmountWh"), 0.0) or 0.0
    return {
        "dealId": record.get("dealId"),
        "dischargeUnitId": record.get("dischargeUnitId"),
        "chargeUnitId": record.get("chargeUnitId"),
        "gridCurrentA": _float(record.get("dealGridCurrentA")),
        "amountWh": amount,
        "cumulateAmountWh": done,
        "progress": max(0.0, min(1.0, done / amount)) if amount > 0 else 0.0,
        "state": deal_state(record),
        "isMaster": bool(record.get("isMaster")),
        "type": record.get("type"),
        "requestUnitId": record.get("requestUnitId"),
        "acceptUnitId": record.get("acceptUnitId"),
        "createDateTime": record.get("createDateTime"),
    }


def budo_deal(record: Mapping[str, Any]) -> dict[str, Any]:
    """The Budo format of a deal (spec 2.3), as the original apis-web `/deals` returns it."""
    return {
        "chargingUnit": record.get("chargeUnitId"),
        "dischargingUnit": record.get("dischargeUnitId"),
        "isMasterDeal": bool(record.get("isMaster")),
        "request": str(record.get("type", "")).upper(),
        "requester": record.get("requestUnitId"),
        "responder": record.get("acceptUnitId"),
        "startTime": record.get("createDateTime"),
    }


class Operations:
    """The web app's link to one cluster. Run it with `async with ops.running():`."""

    def __init__(
        self,
        bus: Bus,
        *,
        world: World | None = None,
        store: HistoryStore | None = None,
        refresh_real_s: float = 1.0,
        request_timeout_real_s: float = 3.0,
        error_keep: int = 50,
    ) -> None:
        self.bus = bus
        self.world = world
        self.store = store if store is not None else HistoryStore()
        self.refresh_real_s = refresh_real_s
        self.request_timeout_real_s = request_timeout_real_s
        self.error_keep = error_keep
        self.snapshot = Snapshot()
        self.deals: list[dict[str, Any]] = []
        self.deals_taken_at: float | None = None
        self.unit_ids: list[str] = []
        self.global_mode: str | None = None
        self.grid_master: str | None = None
        self.mode_audit: dict[str, Any] | None = None  # the units' last audit record
        self.seq = 0
        self._state: KeyValue | None = None
        self._deal_kv: KeyValue | None = None
        self._subscriptions: list[Subscription] = []
        self._listeners: set[asyncio.Queue[str | None]] = set()
        self._wake = asyncio.Event()
        self._refresh_lock = asyncio.Lock()
        self._local_seen: dict[str, str | None] = {}
        self._last_view: str | None = None
        self._changes: dict[str, ModeChange | None] = {}  # last change per scope (cache)
        self.started = False

    # ---- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._state = await self.bus.kv(STATE_BUCKET)
        self._deal_kv = await self.bus.kv(DEALS_BUCKET)
        self._subscriptions.append(
            await self.bus.subscribe(signed(MEDIATOR_DEAL_LOG, "*"), self._on_deal_log)
        )
        self._subscriptions.append(await self.bus.subscribe(ERROR, self._on_error))
        self.started = True

    async def stop(self) -> None:
        self.close_listeners()
        for sub in self._subscriptions:
            with contextlib.suppress(BusError):
                await sub.unsubscribe()
        self._subscriptions.clear()
        self.started = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Operations]:
        """Subscribe, refresh periodically, push views; stop everything on exit."""
        await self.start()
        task = asyncio.create_task(self._refresh_loop(), name="apis-web refresh")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.stop()

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.run_due_schedules(time.time())
                await self.refresh()
            except Exception:  # a bad answer must not end the view
                log.exception("apis-web: refresh failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(loop_seconds(self.refresh_real_s)):
                    await self._wake.wait()

    def wake(self) -> None:
        """Refresh now (after an action), not at the next period."""
        self._wake.set()

    # ---- mode-change records ----------------------------------------------------------

    def _record_change(self, change: ModeChange) -> None:
        self.store.add_mode_change(change)
        self._changes[change.scope] = change

    def _last_change(self, scope: str) -> ModeChange | None:
        if scope not in self._changes:  # once per scope: the store may hold older records
            self._changes[scope] = self.store.last_mode_change(scope)
        return self._changes[scope]

    # ---- reading -------------------------------------------------------------------------

    def _timeout(self) -> float:
        return loop_seconds(self.request_timeout_real_s)

    async def refresh(self) -> None:
        async with self._refresh_lock:
            await self._refresh()
        self._push()

    async def _refresh(self) -> None:
        now = time.time()
        self.snapshot.attempts += 1
        try:
            units = await self.bus.request(GRID_MASTER_DATA_ALL, timeout=self._timeout())
            if not isinstance(units, dict):
                raise BusError(f"{GRID_MASTER_DATA_ALL}: answer is not an object")
            self.snapshot.units = {str(k): v for k, v in units.items() if isinstance(v, dict)}
            self.snapshot.taken_at = now
            self.snapshot.error = None
        except BusError as e:
            self.snapshot.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        try:
            ids = await self.bus.request(GRID_MASTER_UNIT_ID_ALL, timeout=self._timeout())
            if isinstance(ids, list):
                self.unit_ids = [str(u) for u in ids]
        except BusError:
            pass
        if not self.unit_ids or set(self.snapshot.units) - set(self.unit_ids):
            self.unit_ids = sorted(set(self.unit_ids) | set(self.snapshot.units))
        self.deals = await self._read_deals()
        self.deals_taken_at = now
        await self._read_state()
        self._observe_local_modes()

    async def _read_deals(self) -> list[dict[str, Any]]:
        try:
            answer = await self.bus.request(MEDIATOR_DEALS, timeout=self._timeout())
            if isinstance(answer, list):
                return [d for d in answer if isinstance(d, dict)]
        except BusError:
            pass
        # No Mediator answered: read the deal registry itself.
        out: list[dict[str, Any]] = []
        if self._deal_kv is None:
            return out
        try:
            for key in await self._deal_kv.keys():
                entry = await self._deal_kv.get(key)
                if entry is not None and isinstance(entry.value, dict):
                    out.append(entry.value)
        except BusError:
            return self.deals
        return out

    async def _read_state(self) -> None:
        if self._state is None:
            return
        try:
            mode_entry = await self._state.get(OPERATION_MODE_KEY)
            gm_entry = await self._state.get(GRID_MASTER_KEY)
            audit_entry = await self._state.get(OPERATION_MODE_AUDIT_KEY)
        except BusError:
            return
        audit = audit_entry.value if audit_entry is not None else None
        self.mode_audit = audit if isinstance(audit, dict) else None
        mode: str | None = None
        if mode_entry is not None and mode_entry.value in GLOBAL_MODES:
            mode = str(mode_entry.value)
        else:  # nothing stored: the units fall back to their policy; show what they report
            reported = {
                (u.get("apis") or {}).get("operation_mode", {}).get("global")
                for u in self.snapshot.units.values()
            }
            reported.discard(None)
            if len(reported) == 1:
                mode = str(reported.pop())
        if mode != self.global_mode and self.global_mode is not None and mode is not None:
            last = self._last_change("global")
            if last is None or last.new_mode != mode:
                # Changed by somebody else: the units' audit record says who.
                by = "cluster"
                if self.mode_audit is not None and self.mode_audit.get("mode") == mode:
                    by = str(self.mode_audit.get("by") or "cluster")
                self._record_change(
                    ModeChange(time.time(), "global", self.global_mode, mode, by)
                )
        self.global_mode = mode
        # The Grid Master says so in its own unit data (it answered data.all); the lock's
        # key is only a fall-back (its bucket and form belong to the unit layer).
        self.grid_master = None
        for unit_id, data in self.snapshot.units.items():
            if (data.get("apis") or {}).get("is_grid_master"):
                self.grid_master = unit_id
        if self.grid_master is None and gm_entry is not None:
            value = gm_entry.value
            if isinstance(value, dict):
                value = value.get("unitId")
            self.grid_master = str(value) if value else None

    def _observe_local_modes(self) -> None:
        """Record local-mode changes made by others (seen in the unit data)."""
        for unit_id, data in self.snapshot.units.items():
            local = ((data.get("apis") or {}).get("operation_mode") or {}).get("local")
            if unit_id in self._local_seen and self._local_seen[unit_id] != local:
                last = self._last_change(unit_id)
                if last is None or last.new_mode != local:
                    self._record_change(
                        ModeChange(time.time(), unit_id, self._local_seen[unit_id], local,
                                   "cluster")
                    )
            self._local_seen[unit_id] = local

    async def has_global_errors(self) -> bool | None:
        """The Grid Master's answer, or None when nobody answered."""
        try:
            return bool(await self.bus.request(GRID_MASTER_ERROR_TEST, timeout=self._timeout()))
        except BusError:
            return None

    async def read_global_mode(self) -> str | None:
        """The global mode as stored now (not the last refresh's)."""
        if self._state is not None:
            try:
                entry = await self._state.get(OPERATION_MODE_KEY)
            except BusError:
                entry = None
            if entry is not None and entry.value in GLOBAL_MODES:
                return str(entry.value)
        try:
            answer = await self.bus.request(GLOBAL_OPERATION_MODE, None, {"command": "get"},
                                            timeout=self._timeout())
            if answer in GLOBAL_MODES:
                return str(answer)
        except BusError:
            pass
        return self.global_mode

    async def effective_mode(self, unit_id: str) -> str | None:
        """Effective mode of a unit from the fresh global mode and its reported local mode
        (spec 2.4: `manual` and `stop` are global-only overrides)."""
        global_mode = await self.read_global_mode()
        data = self.snapshot.units.get(unit_id) or {}
        local = ((data.get("apis") or {}).get("operation_mode") or {}).get("local")
        if global_mode in ("stop", "manual") or local is None:
            return global_mode
        return str(local)

    def grid(self) -> dict[str, Any]:
        world = self.world
        if world is None:
            return {"available": False, "reason": "no emulator in this process"}
        voltages = world.node_voltages()
        currents = world.line_currents()
        losses = world.line_losses_wh()
        lines = [
            {
                "id": line.id,
                "from": line.from_node,
                "to": line.to_node,
                "resistanceOhm": line.resistance_ohm,
                "currentA": currents.get(line.id),
                "lossWh": losses.get(line.id),
            }
            for line in world.grid_config.lines
        ]
        return {
            "available": True,
            "time": world.now().isoformat(),
            "nodes": [
                {"id": n.id, "kind": n.kind, "voltageV": voltages.get(n.id)}
                for n in world.grid_config.nodes
            ],
            "lines": lines,
            "totalLineLossWh": world.total_line_loss_wh,
            "voltageConflicts": [
                {
                    "at": c.at.isoformat(),
                    "unitIds": list(c.unit_ids),
                    "fightCurrentA": c.fight_current_a,
                    "ended": c.end_s is not None,
                }
                for c in world.voltage_conflicts
            ],
        }

    def modes(self) -> dict[str, Any]:
        last = self._last_change("global")
        units = {}
        for unit_id in self.unit_ids:
            data = self.snapshot.units.get(unit_id) or {}
            modes = (data.get("apis") or {}).get("operation_mode") or {}
            change = self._last_change(unit_id)
            units[unit_id] = {
                "local": modes.get("local"),
                "effective": modes.get("effective"),
                "changedBy": change.changed_by if change else None,
                "changedAt": change.at if change else None,
            }
        return {
            "global": self.global_mode,
            "globalLabel": MODE_LABELS.get(self.global_mode or "", "--"),
            "changedBy": last.changed_by if last else None,
            "changedAt": last.at if last else None,
            "audit": self.mode_audit,
            "units": units,
        }

    def view(self) -> dict[str, Any]:
        """The compact cluster view pushed to browsers."""
        now = time.time()
        units = [
            unit_view(u, self.snapshot.units[u]) for u in self.unit_ids
            if u in self.snapshot.units
        ]
        missing = [u for u in self.unit_ids if u not in self.snapshot.units]
        stamps = [u["timestamp"] for u in units if u["timestamp"] is not None]
        grid = self.grid()
        voltages = (
            {n["id"]: n["voltageV"] for n in grid["nodes"]} if grid["available"] else None
        )
        lines = (
            [{k: ln[k] for k in ("id", "currentA", "lossWh")} for ln in grid["lines"]]
            if grid["available"] else None
        )
        return {
            "seq": self.seq,
            "now": now,
            "snapshot": {
                "ok": self.snapshot.error is None and self.snapshot.taken_at is not None,
                "takenAt": self.snapshot.taken_at,
                "ageS": self.snapshot.age_s(now),
                "error": self.snapshot.error,
            },
            "clusterTimestamp": max(stamps) if stamps else None,
            "gridMaster": self.grid_master,
            "units": units,
            "missingUnits": missing,
            "deals": [deal_view(d) for d in self.deals],
            "grid": {
                "available": grid["available"],
                "nodeVoltages": voltages,
                "lines": lines,
                "totalLineLossWh": grid.get("totalLineLossWh"),
                "voltageConflicts": len(grid.get("voltageConflicts") or []),
            },
            "modes": self.modes(),
            "errors": self.store.errors(limit=20),
            "history": {"count": self.store.deal_count(), "energyWh": self.store.energy_wh()},
            "schedules": self.schedules_json(),
        }

    # ---- pushing -------------------------------------------------------------------------

    def listen(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[str | None]) -> None:
        self._listeners.discard(queue)

    def close_listeners(self) -> None:
        """Tell every listener to end (None), e.g. before the server stops."""
        for queue in list(self._listeners):
            _offer(queue, None)
        self._listeners.clear()

    def _push(self) -> None:
        self.seq += 1
        text = json.dumps(self.view(), separators=(",", ":"))
        self._last_view = text
        for queue in list(self._listeners):
            _offer(queue, text)

    def current_view_text(self) -> str:
        if self._last_view is None:
            self._last_view = json.dumps(self.view(), separators=(",", ":"))
        return self._last_view

    # ---- subscriptions -------------------------------------------------------------------

    async def _on_deal_log(self, msg: Message) -> Any:
        if isinstance(msg.payload, dict) and deal_ending(msg.payload) is not None:
            # the publisher as the bus vouches for it (a signed subject)
            self.store.add_deal(msg.payload, time.time(), sender=msg.sender or "",
                                grid_master=self.grid_master)
        return None

    async def _on_error(self, msg: Message) -> Any:
        if isinstance(msg.payload, dict):
            source = "injected" if msg.headers.get("apisWebInjected") else "cluster"
            self.store.add_error(msg.payload, time.time(), source)
            self.wake()
        return None

    # ---- actions -------------------------------------------------------------------------

    async def set_global_mode(self, mode: str, by: str) -> dict[str, Any]:
        if mode not in GLOBAL_MODES:
            raise ValueError(f"mode = {mode!r} (must be one of {', '.join(GLOBAL_MODES)})")
        old = await self.read_global_mode()
        via = GLOBAL_OPERATION_MODE
        try:
            await self.bus.request(GLOBAL_OPERATION_MODE, mode,
                                   {"command": "set", "operator": by},
                                   timeout=self._timeout())
        except NoHandlers:
            # No unit handles the subject: write the shared key the units read.
            if self._state is None:
                raise ClusterUnavailable("not started") from None
            try:
                await self._state.put(OPERATION_MODE_KEY, mode)
            except BusError as e:
                raise ClusterUnavailable(f"{STATE_BUCKET}/{OPERATION_MODE_KEY}: {e}") from None
            via = f"{STATE_BUCKET}/{OPERATION_MODE_KEY}"
        except BusError as e:
            raise ClusterUnavailable(f"{GLOBAL_OPERATION_MODE}: {e}") from None
        self._record_change(ModeChange(time.time(), "global", old, mode, by))
        self.global_mode = mode
        self.wake()
        return {"succeeded": True, "global": mode, "previous": old, "via": via}

    async def set_local_mode(self, unit_id: str, mode: str | None, by: str) -> dict[str, Any]:
        if mode not in LOCAL_MODES:
            raise ValueError(f"mode = {mode!r} (must be null, heteronomous or stop)")
        self._check_unit(unit_id)
        data = self.snapshot.units.get(unit_id) or {}
        old = ((data.get("apis") or {}).get("operation_mode") or {}).get("local")
        subject = local_operation_mode(unit_id)
        try:
            await self.bus.request(subject, mode, {"command": "set", "operator": by},
                                   timeout=self._timeout())
        except NoHandlers:
            raise ClusterUnavailable(
                f"{subject}: no handler (the unit is down or does not offer local modes)"
            ) from None
        except BusError as e:
            raise ClusterUnavailable(f"{subject}: {e}") from None
        self._record_change(ModeChange(time.time(), unit_id, old, mode, by))
        self._local_seen[unit_id] = mode
        self.wake()
        return {"succeeded": True, "unitId": unit_id, "local": mode, "previous": old}

    def _check_unit(self, unit_id: str) -> None:
        known = set(self.unit_ids) | set(self.snapshot.units)
        if known and unit_id not in known:
            raise KeyError(f"unitId = {unit_id!r} (not a member: {', '.join(sorted(known))})")

    async def manual_dcdc(
        self, unit_id: str, command: str, params: dict[str, Any], by: str
    ) -> dict[str, Any]:
        """Drive one converter by hand; refused unless the unit's effective mode is Manual.

        The unit decides (one voltage reference: it takes the cluster's claim first) and its
        refusal, e.g. naming the unit that holds the voltage reference, is an ActionRefused."""
        if command not in MANUAL_COMMANDS:
            raise ValueError(f"mode = {command!r} (must be one of {', '.join(MANUAL_COMMANDS)})")
        self._check_unit(unit_id)
        effective = await self.effective_mode(unit_id)
        if effective != "manual":
            raise ActionRefused(
                f"manual converter control of {unit_id} refused: effective mode is "
                f"{effective!r} (must be 'manual')"
            )
        subject = manual_control(unit_id)
        body = {"command": command, "params": params}
        try:
            reply = await self.bus.request(subject, body, {"operator": by},
                                           timeout=self._timeout())
        except NoHandlers:
            raise ClusterUnavailable(
                f"{subject}: no handler (the unit is down or does not offer manual control)"
            ) from None
        except RemoteFailure as e:  # the unit answered: it refused, or its converter failed
            raise ActionRefused(f"manual {command} on {unit_id} refused by the unit: {e}") from None
        except BusError as e:
            raise ClusterUnavailable(f"{subject}: {e}") from None
        log.info("manual %s on %s by %s: %s", command, unit_id, by, params)
        self.wake()
        return {"unitId": unit_id, "command": command, "params": params, "dcdc": reply}

    async def shutdown(self, unit_id: str | None, by: str) -> dict[str, Any]:
        """Shut one unit (or all) down; only in Manual, as the operator panel requires."""
        if unit_id is not None:
            self._check_unit(unit_id)
            effective = await self.effective_mode(unit_id)
        else:
            effective = await self.read_global_mode()
        if effective != "manual":
            raise ActionRefused(
                f"shutdown refused: effective mode is {effective!r} (must be 'manual')"
            )
        try:
            if unit_id is None:
                await self.bus.publish(SHUTDOWN_ALL, None, {"operator": by})
            else:
                await self.bus.request(unit_shutdown(unit_id), None, {"operator": by},
                                       timeout=self._timeout())
        except BusError as e:
            raise ClusterUnavailable(f"shutdown: {e}") from None
        return {"succeeded": True}

    async def inject_deal(self, deal: dict[str, Any]) -> dict[str, Any]:
        if await self.read_global_mode() == "stop":
            raise ActionRefused("deal injection refused: the global mode is 'stop'")
        try:
            reply = await self.bus.request(MEDIATOR_DEAL_CREATE, deal, timeout=self._timeout())
        except NoHandlers:
            raise ClusterUnavailable(f"{MEDIATOR_DEAL_CREATE}: no Mediator answers") from None
        except BusError as e:
            raise ActionRefused(f"deal creation failed: {e}") from None
        self.wake()
        return reply if isinstance(reply, dict) else {"reply": reply}

    async def inject_error(self, error: dict[str, Any]) -> None:
        try:
            await self.bus.publish(
                ERROR, error, {"unitId": str(error.get("unitId", "")), "apisWebInjected": "1"}
            )
        except BusError as e:
            raise ClusterUnavailable(f"{ERROR}: {e}") from None

    # ---- Soft Stop schedules (main_controller's, executed once and removed) ------------

    def schedules_json(self) -> list[dict[str, Any]]:
        return [
            {"scope": s.scope, "unitId": None if s.scope == "global" else s.scope,
             "operation": s.operation, "at": s.at, "by": s.created_by}
            for s in self.store.schedules.all()
        ]

    async def set_schedule(
        self, unit_id: str | None, at: float, by: str
    ) -> dict[str, Any]:
        """Schedule a Soft Stop of the cluster (unit_id None) or of one unit at `at`
        (wall-clock seconds, in the future)."""
        if unit_id is not None:
            self._check_unit(unit_id)
        if at <= time.time():
            raise ValueError(f"time = {at} (must be in the future)")
        scope = unit_id or "global"
        self.store.schedules.set(Schedule(scope, "softStop", at, by))
        self.wake()
        return {"scope": scope, "operation": "softStop", "at": at, "by": by}

    async def clear_schedule(self, unit_id: str | None) -> bool:
        removed = self.store.schedules.delete(unit_id or "global", "softStop")
        self.wake()
        return removed

    async def run_due_schedules(self, now: float) -> list[str]:
        """Execute every due Soft Stop once, then remove it. Like main_controller: the global
        one only while the global mode is autonomous, a local one only while the unit
        follows the global mode (no local mode); otherwise it is dropped."""
        done = []
        for schedule in self.store.schedules.due(now):
            self.store.schedules.delete(schedule.scope, schedule.operation)
            by = f"schedule by {schedule.created_by}"
            try:
                if schedule.scope == "global":
                    if await self.read_global_mode() == "autonomous":
                        await self.set_global_mode("heteronomous", by)
                        done.append("global")
                else:
                    data = self.snapshot.units.get(schedule.scope) or {}
                    local = ((data.get("apis") or {}).get("operation_mode") or {}).get("local")
                    if local is None:
                        await self.set_local_mode(schedule.scope, "heteronomous", by)
                        done.append(schedule.scope)
            except (ClusterUnavailable, KeyError, ValueError) as e:
                log.warning("scheduled Soft Stop of %s failed: %s", schedule.scope, e)
                self.store.add_error(
                    {"unitId": "" if schedule.scope == "global" else schedule.scope,
                     "category": "USER", "extent": "GLOBAL" if schedule.scope == "global"
                     else "LOCAL", "level": "WARN",
                     "message": f"scheduled Soft Stop failed: {e}"},
                    now, "web",
                )
        return done

    async def stop_all(self, by: str) -> dict[str, Any]:
        """Force Stop when the cluster answers; else WAIT to every converter directly.

        Returns what was done and, per unit, the converter mode read back (or why not).
        """
        errors = await self.has_global_errors()
        method = "forceStop"
        detail: str | None = None
        if errors is not None:
            try:
                await self.set_global_mode("stop", by)
            except ClusterUnavailable as e:
                method, detail = "directWait", str(e)
        else:
            method, detail = "directWait", "the Grid Master does not answer"
        if method == "directWait":
            try:
                await self.bus.publish(CONTROLLER_SCRAM, None,
                                       {"excludeVoltageReference": "false", "operator": by})
            except BusError as e:
                raise ClusterUnavailable(f"{CONTROLLER_SCRAM}: {e}") from None
            with contextlib.suppress(BusError):  # keep a record where possible
                if self._state is not None:
                    await self._state.put(OPERATION_MODE_KEY, "stop")
                    self._record_change(
                        ModeChange(time.time(), "global", self.global_mode, "stop", by)
                    )
        units: dict[str, Any] = {}
        for unit_id in self.unit_ids:
            try:
                data = await self.bus.request(controller_data(unit_id), None,
                                              {"urgent": "true"}, timeout=self._timeout())
                status = ((data or {}).get("dcdc") or {}).get("status") or {}
                units[unit_id] = {"ok": True, "mode": status.get("status")}
            except BusError as e:
                units[unit_id] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        self.wake()
        return {"stopAll": "done.", "method": method, "detail": detail, "units": units}


def _offer(queue: asyncio.Queue[str | None], item: str | None) -> None:
    """Put without blocking; a slow listener loses its oldest view, never the newest."""
    while True:
        try:
            queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()

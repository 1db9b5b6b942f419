"""The Controller (spec 1.3, 7.2): the only part of a unit that talks to its DeviceDriver.

- periodic data acquisition (`acquisition_loop`), with a cache that urgent reads refresh;
- unit data for the Grid Master (`apis.<id>.Controller.data`, `apis.Controller.data.all`);
- converter commands from the current Grid Master only (`apis.<id>.Controller.control.device`),
  checked against the Grid Master lock and its fencing epoch, executed one at a time under
  the driver-access lock, with current/voltage stepping, checkpoints and mode read-back;
- local stop and scram;
- the local safety checks after every periodic acquisition (`apis.unit.safety`), reported
  through the unit's error handling (a first tolerated finding as WARN, the second in a row
  as ERROR); a driver that fails (after its own retries) is a HARDWARE/LOCAL/ERROR;
- manual converter control (`apis.<id>.Controller.control.manual`) while the effective
  mode is `manual`;
- the voltage reference claim (`apis.unit.vrclaim`): taken before the converter enters
  VOLTAGE_REFERENCE (refused, naming the holder, when another unit holds it), moved here by
  a take-over, renewed at every tick while the converter stays in CV, released when it
  leaves CV.

The checks run on the periodic acquisitions only, not on the urgent reads the Grid Master
makes in the middle of a command sequence (those would see every ramp half-way).
Starting commands (VOLTAGE_REFERENCE, CHARGE, DISCHARGE, take-over) are refused while the
last data shows a heavy alarm or a battery that denies sharing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from apis.bus.base import Bus, BusError, Message
from apis.config.hwconfig import HwConfig
from apis.config.policy import Policy
from apis.config.unitconfig import UnitConfig
from apis.hardware.driver import ConverterData, DeviceDriver, UnitData
from apis.hardware.modes import ConverterMode
from apis.unit import subjects
from apis.unit.data import unit_data_json
from apis.unit.leaseclient import LeaseServiceUnavailable
from apis.unit.registry import Registry
from apis.unit.safety import (
    Consecutive,
    Finding,
    always_checks,
    dynamic_checks,
    mode_deal_checks,
    static_checks,
)
from apis.unit.state import UnitState
from apis.unit.vrclaim import ClaimRefused, VoltageReferenceClaim, new_claim_id

T = TypeVar("T")
Reporter = Callable[[str, str, str, str], Awaitable[Any]]
HISTORY = 1000  # entries kept of bounded histories
MANUAL_COMMANDS = ("WAIT", "VOLTAGE_REFERENCE", "CHARGE", "DISCHARGE")
STARTING_COMMANDS = (
    "VOLTAGE_REFERENCE", "CHARGE", "DISCHARGE", "voltageReferenceWillTakeOver",
)
# voltageReferenceWillTakeOver's parameter naming the present voltage reference, from which
# the claim moves (ours)
TAKE_OVER_FROM = "voltageReferenceUnitId"

log = logging.getLogger(__name__)

COMMANDS = (
    "WAIT",
    "VOLTAGE_REFERENCE",
    "CHARGE",
    "DISCHARGE",
    "current",
    "voltage",
    "voltageReferenceAuthorization",
    "voltageReferenceWillHandOver",
    "voltageReferenceWillTakeOver",
    "voltageReferenceDidHandOver",
    "voltageReferenceDidTakeOver",
    "scram",
)


# A tick due within this much of now is due now (float loop times).
TICK_TOLERANCE_S = 1e-3


def needs_read(now: float, acquired_at: float, period: float) -> bool:
    """Whether an acquisition tick must read the driver: no read (an urgent one for the
    Grid Master, say) happened within the last `period`.

    A read less than `TICK_TOLERANCE_S` short of a period counts as a period old: loop times
    are floats, and a tick and a read that are both "every period" must not flip between
    reading and not reading on rounding.
    """
    return now - acquired_at >= period - TICK_TOLERANCE_S


async def within(limit: float, read: Coroutine[Any, Any, T]) -> T:
    """`read` awaited under `asyncio.timeout(limit)`, without the timer when it has no use.

    The timeout can cut a coroutine off only while it waits. So `read` is first run up to
    its first wait: when it finishes without one (an in-memory driver, as in a simulation,
    where the timer that every read scheduled and cancelled was about 2 % of the work)
    there is nothing to cut off; otherwise the rest runs under the timeout, whose deadline
    is taken before the read started, as `asyncio.timeout(limit)` takes it: the same bound.
    """
    deadline = asyncio.get_running_loop().time() + limit
    try:
        waiting_for = read.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    async with asyncio.timeout_at(deadline):
        return await _Resumed(read, waiting_for)



def _quiet_if_unavailable(e: BusError, message: str, *args: object) -> None:
    """A warning, but only a debug line while no lease service answers (its client has
    said so once for the whole episode): the tick would repeat it every period."""
    level = logging.DEBUG if isinstance(e, LeaseServiceUnavailable) else logging.WARNING
    log.log(level, message, *args)

class _Resumed(Generic[T]):
    """Awaiting a coroutine that has run up to its first wait (`waiting_for`, what it
    yielded): what `await` does, from there on (which `await` on the coroutine itself
    refuses). The task's wake-ups and cancellations go on into the coroutine."""

    def __init__(self, coroutine: Coroutine[Any, Any, T], waiting_for: Any) -> None:
        self._coroutine = coroutine
        self._waiting_for = waiting_for

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, waiting_for = self._coroutine, self._waiting_for
        try:
            while True:
                try:
                    sent = yield waiting_for
                except BaseException as error:  # thrown in by the task: a cancellation
                    waiting_for = coroutine.throw(error)
                else:
                    waiting_for = coroutine.send(sent)
        except StopIteration as done:  # the coroutine returned
            result: T = done.value
            return result


class CommandError(Exception):
    """A converter command was refused or failed; the message says which and why."""


class Controller:
    def __init__(
        self,
        *,
        config: UnitConfig,
        hw: HwConfig,
        policy: Policy,
        driver: DeviceDriver,
        bus: Bus,
        registry: Registry,
        state: UnitState,
        rng: random.Random,
        report: Reporter | None = None,
        instance_id: str | None = None,
    ) -> None:
        self.config = config
        self.hw = hw
        self.policy = policy
        self.driver = driver
        self.bus = bus
        self.registry = registry
        self.state = state
        self.rng = rng
        self.unit_id = config.unit_id
        self._driver_lock = asyncio.Lock()
        self._data: UnitData | None = None
        self._dcdc: ConverterData | None = None
        self._acquired_at = -math.inf
        # Converter commands begun so far, and how many had begun when the last read began:
        # when they differ, a command may have changed the converter after that read.
        self._commands_begun = 0
        self._commands_before_read = 0
        self._max_epoch = 0
        self.skip_dynamic_check = False
        self.commands_executed = 0
        self._report = report
        self._consecutive = Consecutive()
        # Claim ids: the unit instance's id (drawn once at start: from the OS on a real unit,
        # from the seed in a simulation, so a run repeats to the byte) and a count.
        claims = itertools.count(1)
        self.claim = VoltageReferenceClaim(
            registry.voltage_reference_kv, self.unit_id,
            (lambda: f"{instance_id}.{next(claims)}") if instance_id is not None
            else new_claim_id,
            registry.lease_service,
        )
        self._entering_cv = 0  # commands between taking the claim and the converter in CV
        # the latest findings (loop time, level, finding), for tests and displays
        self.findings: deque[tuple[float, str, Finding]] = deque(maxlen=HISTORY)

    # ---- acquisition ---------------------------------------------------------------------

    @property
    def acquired_at(self) -> float:
        """Loop time of the last acquisition."""
        return self._acquired_at

    @property
    def data(self) -> UnitData | None:
        """The last acquired unit data."""
        return self._data

    async def acquire(self) -> UnitData:
        async with self._driver_lock:
            return await self._acquire_unlocked()

    async def _acquire_unlocked(self) -> UnitData:
        c = self.policy.controller
        # The driver retries itself; this only bounds a driver that hangs altogether.
        limit = c.request_timeout_msec * c.retry_limit / 1000 + 1.0
        # Counted before the read: a command begun while it runs (a scram takes no lock)
        # leaves the read older than the command.
        commands_before = self._commands_begun
        data = await within(limit, self.driver.read())
        self._data = data
        self._dcdc = data.dcdc
        self._acquired_at = asyncio.get_running_loop().time()
        self._commands_before_read = commands_before
        return data

    async def acquisition_loop(self) -> None:
        """Every period, the local safety check (12.3) on data at most a period old."""
        period = self.policy.controller.data_acquisition_period_msec / 1000
        loop = asyncio.get_running_loop()
        while True:
            data = self._data
            if (
                data is None
                or self._commands_begun != self._commands_before_read
                or needs_read(loop.time(), self._acquired_at, period)
            ):
                try:
                    data = await self.acquire()
                except Exception as e:  # the driver failed; the next tick retries
                    data = None
                    await self.report(
                        "HARDWARE", "ERROR", f"Communication failed with Device Driver: {e!r}"
                    )
            # else: a read for somebody else (the Grid Master's urgent collection) happened
            # since the last tick and no command followed it; check that one instead of
            # reading the driver twice. (After a command it would show the converter as it
            # was: a unit told to WAIT as its deal ended was then found "in CHARGE but no
            # deal".)
            if data is not None:
                await self.check_safety(data)
            await self.keep_claim()
            await asyncio.sleep(period)

    async def report(self, category: str, level: str, message: str) -> None:
        if self._report is not None:
            await self._report(category, "LOCAL", level, message)
        else:
            log.warning("(%s:LOCAL:%s:%s) %s", category, level, self.unit_id, message)

    async def check_safety(self, data: UnitData) -> list[tuple[Finding, str]]:
        """Section 12.3 on one acquisition; report what is found."""
        findings = always_checks(data) + static_checks(data, self.hw)
        effective = self.state.effective_mode
        if effective != "manual":
            try:
                deals = [s.deal for s in await self.registry.deals_involving(self.unit_id)]
            except Exception as e:
                log.warning("%s: safety check: deals unreadable: %s", self.unit_id, e)
                deals = None
            if deals is not None:
                findings += mode_deal_checks(self.unit_id, data, deals, effective)
            if not self.skip_dynamic_check:
                findings += dynamic_checks(data, self.hw, self.policy)
        levels = self._consecutive.levels(findings)
        now = asyncio.get_running_loop().time()
        for finding, level in levels:
            self.findings.append((now, level, finding))
            await self.report(finding.category, level, finding.message)
        return levels

    def _refuse_if_unsafe(self, command: str) -> None:
        data = self._data
        if command not in STARTING_COMMANDS or data is None:
            return
        for finding in always_checks(data):
            raise CommandError(f"{command} refused: {finding.message}")

    async def unit_data(self, urgent: bool = False) -> dict[str, Any]:
        data = self._data
        if urgent or data is None:
            data = await self.acquire()
        return unit_data_json(
            data,
            self.config,
            self.hw,
            self.policy,
            deal_ids=self.state.deal_ids,
            is_grid_master=self.state.is_grid_master,
            global_mode=self.state.global_mode,
            local_mode=self.state.local_mode,
            effective_mode=self.state.effective_mode,
        )

    # ---- bus handlers --------------------------------------------------------------------

    async def subscribe(self) -> list[Any]:
        return [
            await self.bus.subscribe(subjects.controller_data(self.unit_id), self._on_data),
            await self.bus.subscribe(subjects.CONTROLLER_DATA_ALL, self._on_data_all),
            await self.bus.subscribe(
                subjects.controller_control(self.unit_id, "*"), self._on_control
            ),
            await self.bus.subscribe(subjects.CONTROLLER_SCRAM, self._on_scram),
            await self.bus.subscribe(
                subjects.controller_control_manual(self.unit_id), self._on_manual
            ),
        ]

    async def _on_data(self, msg: Message) -> Any:
        return await self.unit_data(urgent=msg.headers.get(subjects.URGENT) == "true")

    async def _on_data_all(self, msg: Message) -> Any:
        reply = msg.headers.get(subjects.REPLY_ADDRESS)
        if reply is None or not self.state.in_operation:
            return None
        data = await self.unit_data(urgent=msg.headers.get(subjects.URGENT) == "true")
        # `unit_data` builds a new JSON value each time (nothing in it is kept here): the bus
        # may give it to the Grid Master's collection as it is
        await self.bus.publish(reply, data, {subjects.UNIT_ID: self.unit_id}, handover=True)
        return None

    async def _on_control(self, msg: Message) -> Any:
        try:
            await self._check_grid_master(msg)
        except CommandError as e:  # fencing: a stale or foreign Grid Master is refused
            log.error("(LOGIC:LOCAL:ERROR:%s) converter command refused: %s", self.unit_id, e)
            raise
        body = msg.payload if isinstance(msg.payload, dict) else {}
        command = str(body.get("command", ""))
        params = body.get("params") or {}
        dcdc = await self.execute(command, params)
        return dcdc.to_json()

    async def _on_manual(self, msg: Message) -> Any:
        """Manual converter control (operators, tests): only in effective mode `manual`."""
        effective = self.state.effective_mode
        body = msg.payload if isinstance(msg.payload, dict) else {}
        command = str(body.get("command", ""))
        params = body.get("params") or {}
        if effective != "manual":
            raise CommandError(
                f"manual {command} on {self.unit_id} refused: effective mode is {effective} "
                "(must be manual)"
            )
        if command not in MANUAL_COMMANDS:
            raise CommandError(
                f"manual command = {command!r} (must be one of {', '.join(MANUAL_COMMANDS)})"
            )
        log.warning("%s: manual %s %s by %s", self.unit_id, command, params,
                    msg.headers.get(subjects.OPERATOR, "unknown"))
        async with self._driver_lock:
            if command == "WAIT":
                return (await self._wait()).to_json()
            if command == "VOLTAGE_REFERENCE":
                return (await self._manual_voltage_reference(params)).to_json()
            self._refuse_if_unsafe(command)
            current = self._current_param(params, command)
            return (await self._start_current(ConverterMode[command], current)).to_json()

    async def _manual_voltage_reference(self, params: dict[str, Any]) -> ConverterData:
        """The claim first (of concurrent requests one wins, the others are told who holds
        it), then this unit's own check that no other source holds the grid yet."""
        self._refuse_if_unsafe("VOLTAGE_REFERENCE")
        p = self.policy
        voltage = (
            self._voltage_param(params, "VOLTAGE_REFERENCE")
            if params.get("gridVoltageV") is not None
            else p.operation_grid_voltage_v
        )
        self._entering_cv += 1
        try:
            await self._take_claim(None)
            try:
                dcdc = await self._read_converter()
                limit = p.operation_grid_voltage_v_range.min + 2 * p.grid_voltage_separation_v
                if dcdc.mode is not ConverterMode.VOLTAGE_REFERENCE and dcdc.meter.vg > limit:
                    raise CommandError(
                        f"manual VOLTAGE_REFERENCE refused: the grid already measures "
                        f"{dcdc.meter.vg:.1f} V (> {limit:g} V: another source may hold it)"
                    )
                result = await self._set_mode(
                    ConverterMode.VOLTAGE_REFERENCE, voltage, self.hw.grid_current_capacity_a,
                    0.0,
                )
            except Exception:
                if self._dcdc is None or self._mode() is not ConverterMode.VOLTAGE_REFERENCE:
                    await self._release_claim()
                raise
        finally:
            self._entering_cv -= 1
        self.skip_dynamic_check = True
        return result

    async def _on_scram(self, msg: Message) -> Any:
        exclude = msg.headers.get(subjects.EXCLUDE_VOLTAGE_REFERENCE) == "true"
        if exclude and self._dcdc is not None and self._mode() is ConverterMode.VOLTAGE_REFERENCE:
            return None
        await self.stop_local()
        return None

    async def _check_grid_master(self, msg: Message) -> None:
        """Converter commands come only from the Grid Master holding the lock (fencing).

        Who sent it is the bus's word (`Message.sender`: the identity the signed subject
        names, which only that identity may publish on), never the headers': they, the lease
        and the epoch are readable by any bystander.
        """
        headers = msg.headers
        sender = msg.sender
        if sender not in self.policy.member_unit_ids:
            raise CommandError(f"sender = {sender!r} (not a member)")
        claimed = headers.get(subjects.GRID_MASTER_UNIT_ID, sender)
        if claimed != sender:
            raise CommandError(
                f"{subjects.GRID_MASTER_UNIT_ID} = {claimed!r} from sender {sender} (must be "
                "the sender)"
            )
        try:
            epoch = int(headers.get(subjects.GRID_MASTER_EPOCH, ""))
        except ValueError:
            raise CommandError(f"{subjects.GRID_MASTER_EPOCH} missing or not an integer") from None
        if epoch < self._max_epoch:
            raise CommandError(
                f"{subjects.GRID_MASTER_EPOCH} = {epoch} from {sender} "
                f"(older than epoch {self._max_epoch} already seen)"
            )
        lock = await self.registry.grid_master()
        if lock is None or lock.unit_id != sender or lock.epoch != epoch:
            held = f"{lock.unit_id} at epoch {lock.epoch}" if lock else "nobody"
            raise CommandError(
                f"command from {sender} at epoch {epoch} refused: the Grid Master lock is "
                f"held by {held}"
            )
        self._max_epoch = epoch

    # ---- local actions -------------------------------------------------------------------

    async def stop_local(self) -> ConverterData:
        """WAIT without the driver lock (section 7.2, local stop and scram)."""
        return await self._wait()

    async def execute(self, command: str, params: dict[str, Any]) -> ConverterData:
        """Run one converter command of section 7.2 under the driver-access lock."""
        async with self._driver_lock:
            if self._dcdc is None:
                await self._acquire_unlocked()
            self._refuse_if_unsafe(command)
            result = await self._dispatch(command, params)
            self.commands_executed += 1
            return result

    async def _dispatch(self, command: str, params: dict[str, Any]) -> ConverterData:
        if command in ("WAIT", "scram"):
            return await self._wait()
        if command == "VOLTAGE_REFERENCE":
            result = await self._set_mode(
                ConverterMode.VOLTAGE_REFERENCE,
                self.policy.operation_grid_voltage_v,
                self.hw.grid_current_capacity_a,
                0.0,
            )
            self.skip_dynamic_check = True
            return result
        if command in ("CHARGE", "DISCHARGE"):
            return await self._start_current(
                ConverterMode[command], self._current_param(params, command)
            )
        if command == "current":
            return await self._step_current(self._current_param(params, command))
        if command == "voltage":
            return await self._step_voltage(self._voltage_param(params, command))
        if command == "voltageReferenceAuthorization":
            return await self._authorize()
        if command == "voltageReferenceWillHandOver":
            await self._begin_hand_over()  # the new reference takes the claim at step 2
            self.skip_dynamic_check = True
            return await self._set_voltage(self._converter().vdis.dvg, self.hw.droop_ratio)
        if command == "voltageReferenceWillTakeOver":
            voltage = params.get("gridVoltageV")
            dvg = float(voltage) if voltage is not None else self._converter().meter.vg
            result = await self._set_mode(
                ConverterMode.VOLTAGE_REFERENCE,
                dvg,
                self.hw.grid_current_capacity_a,
                self.hw.droop_ratio,
                take_over_from=self._take_over_param(params),
            )
            self.skip_dynamic_check = True
            return result
        if command == "voltageReferenceDidHandOver":
            return await self._did_hand_over(params)
        if command == "voltageReferenceDidTakeOver":
            result = await self._set_voltage(self._converter().vdis.dvg, 0.0)
            self.skip_dynamic_check = False
            return result
        raise CommandError(f"command = {command!r} (must be one of {', '.join(COMMANDS)})")

    # ---- command building blocks ---------------------------------------------------------

    def _converter(self) -> ConverterData:
        assert self._dcdc is not None
        return self._dcdc

    def _mode(self) -> ConverterMode:
        return self._converter().mode

    def _current_param(self, params: dict[str, Any], command: str) -> float:
        value = params.get("gridCurrentA")
        if value is None:
            raise CommandError(f"{command}: gridCurrentA missing")
        current = float(value)
        if current < 0:
            raise CommandError(f"{command}: gridCurrentA = {current} (must be >= 0)")
        capacity = self.hw.grid_current_capacity_a
        if current > capacity + 1e-9:
            raise CommandError(
                f"{command}: gridCurrentA = {current} (must be <= gridCurrentCapacityA "
                f"{capacity})"
            )
        return current

    def _voltage_param(self, params: dict[str, Any], command: str) -> float:
        value = params.get("gridVoltageV")
        if value is None:
            raise CommandError(f"{command}: gridVoltageV missing")
        voltage = float(value)
        r = self.policy.operation_grid_voltage_v_range
        if not r.min <= voltage <= r.max:
            raise CommandError(
                f"{command}: gridVoltageV = {voltage} (must be within "
                f"operationGridVoltageVRange {r.min}..{r.max})"
            )
        return voltage

    def _take_over_param(self, params: dict[str, Any]) -> str | None:
        holder = params.get(TAKE_OVER_FROM)
        if holder is not None and holder not in self.policy.member_unit_ids:
            raise CommandError(
                f"voltageReferenceWillTakeOver: {TAKE_OVER_FROM} = {holder!r} (must be one of "
                f"memberUnitIds {', '.join(self.policy.member_unit_ids)})"
            )
        return holder

    async def _set_mode(
        self,
        mode: ConverterMode,
        dvg: float,
        dig: float,
        drg: float,
        *,
        take_over_from: str | None = None,
    ) -> ConverterData:
        """Set the converter's mode. VOLTAGE_REFERENCE only with the claim (taken first;
        moved from `take_over_from` in a hand-over); any other mode gives the claim up."""
        if not 0 <= dig <= self.hw.grid_current_capacity_a + 1e-9:
            raise CommandError(
                f"dig = {dig} (must be within 0..gridCurrentCapacityA "
                f"{self.hw.grid_current_capacity_a})"
            )
        if mode is ConverterMode.VOLTAGE_REFERENCE:
            self._entering_cv += 1  # the tick must not judge the claim meanwhile
            try:
                await self._take_claim(take_over_from)
                self._commands_begun += 1
                result = await self.driver.set(mode, dvg, dig, drg)
                self._dcdc = result
            finally:
                self._entering_cv -= 1
        else:
            self._commands_begun += 1
            result = await self.driver.set(mode, dvg, dig, drg)
            self._dcdc = result
        if result.mode is not ConverterMode.VOLTAGE_REFERENCE:
            await self._release_claim()
        if result.mode is not mode:
            raise CommandError(
                f"mode read-back {result.mode.code} ({result.status.operation_mode}) after "
                f"setting {mode.code} ({mode.operation_mode})"
            )
        return result

    # ---- the voltage reference claim -----------------------------------------------------

    async def _take_claim(self, take_over_from: str | None) -> None:
        try:
            await self.claim.take(take_over_from)
        except ClaimRefused as e:
            raise CommandError(f"VOLTAGE_REFERENCE on {self.unit_id} refused: {e}") from None
        except BusError as e:  # unknown who holds it: not ours
            raise CommandError(
                f"VOLTAGE_REFERENCE on {self.unit_id} refused: the voltage reference claim "
                f"could not be taken: {e}"
            ) from None
        self.claim.handing_over = False

    async def _begin_hand_over(self) -> None:
        try:
            await self.claim.begin_hand_over()
        except (ClaimRefused, BusError) as e:
            raise CommandError(
                f"voltageReferenceWillHandOver on {self.unit_id} refused: the voltage "
                f"reference claim cannot be handed over: {e}"
            ) from None

    async def _release_claim(self) -> None:
        claim = self.claim
        claim.handing_over = False
        if claim.held is None:
            return
        try:
            await claim.release()
        except BusError as e:  # the tick tries again; else it expires
            _quiet_if_unavailable(e, "%s: voltage reference claim not released: %s",
                                  self.unit_id, e)

    async def keep_claim(self) -> None:
        """At every tick: renew the claim while the converter is in CV, give it up once it
        is not; a converter found in CV without the claim takes it (a restarted unit, a
        claim expired while the store was unreachable), unless another unit holds it: then
        two converters may hold the grid, a LOGIC/LOCAL/ERROR (this one is stopped)."""
        if self._entering_cv:
            return  # a command is between the claim and the converter: it decides
        dcdc = self._dcdc
        claim = self.claim
        try:
            if dcdc is None or dcdc.mode is not ConverterMode.VOLTAGE_REFERENCE:
                await self._release_claim()
                return
            if await claim.renew() or claim.handing_over or self._entering_cv:
                return  # renewed; or moved to the new reference in a hand-over
            dcdc = self._dcdc  # a command may have changed it while the renewal waited
            if dcdc is None or dcdc.mode is not ConverterMode.VOLTAGE_REFERENCE:
                return
            try:
                taken = await claim.take()
            except ClaimRefused as e:
                await self.report(
                    "LOGIC", "ERROR", f"converter in VOLTAGE_REFERENCE without the claim: {e}"
                )
                return
            log.warning("%s: converter found in VOLTAGE_REFERENCE without the claim; took %s",
                        self.unit_id, taken)
        except BusError as e:
            _quiet_if_unavailable(e, "%s: voltage reference claim not renewed: %s",
                                  self.unit_id, e)

    async def _set_current(self, dig: float) -> ConverterData:
        self._commands_begun += 1
        self._dcdc = await self.driver.set_current(dig)
        return self._dcdc

    async def _set_voltage(self, dvg: float, drg: float) -> ConverterData:
        self._commands_begun += 1
        self._dcdc = await self.driver.set_voltage(dvg, drg)
        return self._dcdc

    async def _read_converter(self) -> ConverterData:
        self._dcdc = await self.driver.read_converter()
        return self._dcdc

    async def _checkpoint(
        self, *, voltage: float | None = None, current: float | None = None
    ) -> None:
        cp = self.policy.controller.dcdc.checkpoint
        dcdc = self._converter()
        for _ in range(cp.retry_limit):
            await asyncio.sleep(cp.retry_wait_msec / 1000)
            dcdc = await self._read_converter()
            if voltage is not None:
                if abs(dcdc.meter.vg - voltage) <= self.policy.grid_voltage_allowance_v:
                    return
            elif current is not None:
                if abs(abs(dcdc.meter.ig) - current) <= self.hw.grid_current_allowance_a:
                    return
        what = f"vg = {dcdc.meter.vg} V (target {voltage} V)" if voltage is not None else (
            f"ig = {dcdc.meter.ig} A (target {current} A)"
        )
        raise CommandError(f"checkpoint failed: {what} after {cp.retry_limit} reads")

    async def _step_current(self, target: float) -> ConverterData:
        step = self.policy.grid_current_step_a
        dig = self._converter().param.dig
        while abs(target - dig) > step:
            dig = dig + step if target > dig else dig - step
            await self._set_current(dig)
        await self._set_current(target)
        await self._checkpoint(current=target)
        return self._converter()

    async def _step_voltage(self, target: float, drg: float = 0.0) -> ConverterData:
        step = self.policy.grid_voltage_step_v
        dvg = self._converter().vdis.dvg
        while abs(target - dvg) > step:
            dvg = dvg + step if target > dvg else dvg - step
            await self._set_voltage(dvg, drg)
        await self._set_voltage(target, drg)
        await self._checkpoint(voltage=target)
        return self._converter()

    async def _start_current(self, mode: ConverterMode, current: float) -> ConverterData:
        r = self.policy.operation_grid_voltage_v_range
        dvg = r.max if mode is ConverterMode.DISCHARGE else self.policy.operation_grid_voltage_v
        step = self.policy.grid_current_step_a
        self.skip_dynamic_check = False
        if current < step:
            await self._set_mode(mode, dvg, current, 0.0)
            await self._checkpoint(current=current)
            return self._converter()
        await self._set_mode(mode, dvg, step, 0.0)
        return await self._step_current(current)

    async def _wait(self) -> ConverterData:
        """WAIT: bring the converter down gently, then stop it whatever the checkpoint says."""
        if self._dcdc is None:
            await self._read_converter()
        mode = self._mode()
        p = self.policy
        try:
            if mode is ConverterMode.VOLTAGE_REFERENCE:
                low = p.operation_grid_voltage_v_range.min + p.grid_voltage_separation_v
                await self._step_voltage(low)
            elif mode in (ConverterMode.CHARGE, ConverterMode.DISCHARGE):
                await self._step_current(0.0)
        except CommandError as e:
            log.info("%s: WAIT continues after %s", self.unit_id, e)
        result = await self._set_mode(ConverterMode.WAITING, p.operation_grid_voltage_v, 0.0, 0.0)
        self.skip_dynamic_check = False
        return result

    async def _authorize(self) -> ConverterData:
        """Section 6.3: prove this converter holds the grid voltage by moving it at random."""
        p = self.policy
        r = p.operation_grid_voltage_v_range
        sep = p.grid_voltage_separation_v
        original = self._converter().vdis.dvg
        candidates = []
        v = r.min + 3 * sep
        while v <= r.max - sep + 1e-9:
            if abs(v - original) > 1e-6:
                candidates.append(v)
            v += sep
        self.skip_dynamic_check = True
        try:
            for _ in range(p.controller.dcdc.voltage_reference.authorization.number_of_trials):
                if candidates:
                    await self._step_voltage(self.rng.choice(candidates))
            return await self._step_voltage(original)
        except CommandError as e:
            raise CommandError(f"voltage reference authorization failed: {e}") from None
        finally:
            self.skip_dynamic_check = False

    async def _did_hand_over(self, params: dict[str, Any]) -> ConverterData:
        mode = params.get("mode")
        p = self.policy
        if mode is None:
            try:
                await self._step_current(0.0)
            except CommandError as e:
                log.info("%s: hand-over WAIT continues after %s", self.unit_id, e)
            result = await self._set_mode(
                ConverterMode.WAITING, p.operation_grid_voltage_v, 0.0, 0.0
            )
        elif mode in ("CHARGE", "DISCHARGE"):
            current = self._current_param(params, "voltageReferenceDidHandOver")
            dvg = (
                p.operation_grid_voltage_v_range.max
                if mode == "DISCHARGE"
                else p.operation_grid_voltage_v
            )
            result = await self._set_mode(ConverterMode[mode], dvg, current, 0.0)
        else:
            raise CommandError(
                f"voltageReferenceDidHandOver: mode = {mode!r} (must be CHARGE, DISCHARGE or "
                "absent)"
            )
        self.skip_dynamic_check = False
        return result

"""One unit (apis-main): its Controller, User, Mediator, Grid Master placement and, when
elected, its Grid Master, all owned by one TaskGroup.

    unit = Unit(files, driver=driver, bus=hub.connect("E001"))
    await unit.run()          # until cancelled (or a fatal error shuts it down)

Beyond part 1: the error collection and local handling loop (`apis.unit.errorhandling`), the
operation modes (`apis.unit.modes`), the orderly shutdown of spec 1.4 (`apis.shutdown.all`,
`apis.<id>.shutdown`, a local FATAL error): ask the Grid Master to stop this unit's deals and
wait, converter to Waiting, mark stopping, deactivate a local Grid Master, end; reset-local
and reset-all (11.5); gateway battery locks (12.6); and hwConfig, policy and scenario re-read
every `refreshingPeriodMsec`.

A re-read policy that differs from the one in use is applied only if it equals the cluster's
(the shared `policy` key); otherwise it is refused with a USER/LOCAL/WARN and the unit keeps
the policy it started with. (The original applied it silently without comparing, so units
could drift apart; to change the policy, stop every unit, or replace the shared key.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from apis.bus.base import Bus, BusError, KeyExists, Message, NoHandlers, Subscription
from apis.config.errors import Problem
from apis.config.hwconfig import HwConfig
from apis.config.loader import UnitFiles, load_model, load_scenario
from apis.config.policy import Policy
from apis.hardware.driver import DeviceDriver, DriverError
from apis.unit import lifecycle, subjects
from apis.unit.capacity import BatteryCapacityLocks
from apis.unit.controller import Controller
from apis.unit.data import deal_interlock_capacity
from apis.unit.deallog import DealLog
from apis.unit.election import ActivationFailed, Election
from apis.unit.errorhandling import ErrorHandling
from apis.unit.errors import ErrorRecord
from apis.unit.gridmaster import GridMaster
from apis.unit.ids import IdSource, os_ids
from apis.unit.lease import LeaseLost
from apis.unit.leaseclient import LeaseServiceClient, LeaseServiceUnavailable
from apis.unit.mediator import Mediator
from apis.unit.modes import OperationModes
from apis.unit.registry import Registry
from apis.unit.state import UnitState
from apis.unit.userservice import UserService

log = logging.getLogger(__name__)

SUPPORTED_INTERFACE_MAJOR = "2"
POLICY_KEY = "policy"
RESET_ALL = subjects.RESET_ALL


def canonical(policy: Policy) -> str:
    """The policy as compared across the cluster: canonical JSON (sorted keys)."""
    return json.dumps(policy.to_json(), sort_keys=True, separators=(",", ":"))


class StartupFailed(Exception):
    """The unit refused to start; the message says why."""


class Unit:
    def __init__(
        self,
        files: UnitFiles,
        *,
        driver: DeviceDriver,
        bus: Bus,
        policy: Policy | None = None,
        seed: int = 0,
        ids: IdSource = os_ids,
        deal_log_tmpdir: str | None = None,
        deal_logging: bool = True,
        check_driver_version: bool = True,
    ) -> None:
        self.files = files
        self.config = files.config
        self.hw = files.hw_config
        self.policy = policy if policy is not None else files.policy
        self.scenario = files.scenario
        self.unit_id = self.config.unit_id
        self.driver = driver
        self.bus = bus
        # the seed drives timing jitter; ids come from `ids` (the OS unless a simulation
        # asks for seeded ones: a seeded id repeats after a restart)
        self.rng = random.Random(f"{seed}:{self.unit_id}")
        self.new_id = ids(self.rng)
        self.instance_id = self.new_id()
        self.state = UnitState(self.unit_id, deal_interlock_capacity(self.hw, self.policy))
        self.deal_log = (
            DealLog(self.unit_id, self.config.deal_log_dir_format, deal_log_tmpdir)
            if deal_logging
            else None
        )
        self.check_driver_version = check_driver_version
        self.registry: Registry | None = None
        self.controller: Controller | None = None
        self.user: UserService | None = None
        self.mediator: Mediator | None = None
        self.election: Election | None = None
        self.grid_master: GridMaster | None = None
        self._gm_task: asyncio.Task[None] | None = None
        self._gm_guard = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[Subscription] = []
        self._shutdown = asyncio.Event()
        self.ready = asyncio.Event()
        self.fatal: ErrorRecord | None = None
        self.grid_master_history: list[tuple[float, str, int]] = []  # (time, event, epoch)
        self.errors: ErrorHandling | None = None
        self.modes: OperationModes | None = None
        self.capacity = BatteryCapacityLocks(self.config)
        self.shutdown_started = False
        self.exited = False
        self.refused_policy: str | None = None  # why a re-read policy was not applied
        # what the files held when last read: a re-read applies only what changed in them
        self._read_hw = files.hw_config
        self._read_scenario = files.scenario
        self._read_policy = canonical(files.policy)
        self._file_stamps: list[tuple[int, int]] = []
        self._stamped_paths: tuple[tuple[Any, ...], tuple[str, ...]] = ((), ())

    # ---- life ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start up (section 1.4), serve until cancelled or shut down, then clean up."""
        try:
            await self._start_up()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                assert self.controller and self.mediator and self.election
                self._spawn("acquisition", self.controller.acquisition_loop)
                self._spawn("house keeping", self.mediator.house_keeping_loop)
                self._spawn("deal logging", self.mediator.deal_logging_loop)
                self._spawn("grid master watch", self.election.watch_loop)
                self._spawn("helo", self._helo_loop)
                assert self.errors is not None and self.modes is not None
                self._spawn("error handling", self.errors.handling_loop)
                self._spawn("operation mode watch", self.modes.watch_loop)
                self._spawn("file refresh", self._refresh_loop)
                self.state.started = True
                self.ready.set()
                await self._shutdown.wait()
                self.state.stopping = True
                for task in self._tasks:
                    task.cancel()
                if self._gm_task is not None:
                    self._gm_task.cancel()
        finally:
            self.state.stopping = True
            await self._clean_up()
            self.capacity.release_all()
            self.exited = True

    def shutdown(self) -> None:
        """Ask the unit to stop (its `run` returns)."""
        self._shutdown.set()

    def _spawn(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        assert self._tg is not None
        self._tasks.append(self._tg.create_task(self._guarded(name, loop)))

    async def _guarded(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep a periodic activity alive: an unexpected exception is logged, then it restarts."""
        while True:
            try:
                await loop()
                return
            except Exception:
                log.exception("(LOGIC:LOCAL:ERROR:%s) %s failed", self.unit_id, name)
                await asyncio.sleep(1.0)

    async def _start_up(self) -> None:
        if self.unit_id not in self.policy.member_unit_ids:
            raise StartupFailed(f"unitId {self.unit_id} is not in memberUnitIds")
        try:
            await self.bus.request(subjects.helo(self.unit_id), timeout=5.0)
        except NoHandlers:
            pass
        except BusError:
            pass
        else:
            raise StartupFailed(f"another unit with id {self.unit_id} is running")
        if self.check_driver_version:
            try:
                version = await self.driver.version()
            except DriverError as e:
                raise StartupFailed(f"driver unreachable: {e}") from None
            major = version.comm_interface_version.split(".")[0]
            if "." not in version.comm_interface_version or major != SUPPORTED_INTERFACE_MAJOR:
                raise StartupFailed(
                    f"driver comm_interface_version = {version.comm_interface_version!r} "
                    f"(must be {SUPPORTED_INTERFACE_MAJOR}.x)"
                )
        bus_config = self.config.bus
        lease_service = (  # a secured bus: the lease and the claim are the service's to write
            LeaseServiceClient(self.bus, self.unit_id)
            if bus_config is not None and bus_config.lease_service else None
        )
        self.registry = registry = await Registry.open(self.bus, lease_service)
        # Every unit of a cluster must run the same policy (compared in canonical JSON, so
        # key order does not matter; the original compared its compact serialisation).
        mine = canonical(self.policy)
        try:
            await registry.state.create(POLICY_KEY, mine)
        except KeyExists:
            entry = await registry.state.get(POLICY_KEY)
            if entry is not None and entry.value != mine:
                raise StartupFailed("my POLICY is different from cluster's") from None
        self.errors = errors = ErrorHandling(
            state=self.state,
            policy=self.policy,
            bus=self.bus,
            registry=registry,
            instance_id=self.instance_id,
            stop_local=self._stop_local,
            deactivate_grid_master=lambda: self.stop_grid_master("local error handling"),
            reset_local=self.reset_local,
            shutdown_local=self.shutdown,
            global_sink=self._global_sink,
        )
        self.modes = OperationModes(
            state=self.state,
            config=self.config,
            policy=self.policy,
            bus=self.bus,
            registry=registry,
            now_iso=self.now_iso,
            on_global_change=self._global_mode_changed,
        )
        self.controller = Controller(
            config=self.config,
            hw=self.hw,
            policy=self.policy,
            driver=self.driver,
            bus=self.bus,
            registry=registry,
            state=self.state,
            rng=self.rng,
            report=errors.report,
            instance_id=self.instance_id,
        )
        self.user = UserService(
            state=self.state,
            hw=self.hw,
            policy=self.policy,
            scenario=self.scenario,
            controller=self.controller,
            bus=self.bus,
            registry=registry,
            capacity=self.capacity,
        )
        self.mediator = Mediator(
            state=self.state,
            policy=self.policy,
            bus=self.bus,
            registry=registry,
            user=self.user,
            controller=self.controller,
            deal_log=self.deal_log,
            rng=self.rng,
            new_id=self.new_id,
            capacity=self.capacity,
        )
        self.election = Election(
            state=self.state,
            policy=self.policy,
            bus=self.bus,
            registry=registry,
            rng=self.rng,
            start_local=self.start_grid_master,
            stop_local=lambda: self.stop_grid_master("asked to deactivate (election)"),
            voltage_reference_unit=self._voltage_reference_unit,
        )
        await self.controller.acquire()
        await self.mediator.reconcile_deal_log()  # deals left live by a crash
        await self.modes.load()
        subs = self._subscriptions
        subs.append(await self.bus.subscribe(subjects.helo(self.unit_id), self._on_helo))
        subs.extend(await self.controller.subscribe())
        subs.extend(await self.user.subscribe())
        subs.extend(await self.mediator.subscribe())
        subs.extend(await self.election.subscribe())
        subs.append(await self.bus.subscribe(RESET_ALL, self._on_reset_all))
        subs.extend(await errors.subscribe())
        subs.extend(await self.modes.subscribe())
        subs.append(await self.bus.subscribe(subjects.SHUTDOWN_ALL, self._on_shutdown))
        subs.append(await self.bus.subscribe(subjects.shutdown(self.unit_id), self._on_shutdown))

    async def _clean_up(self) -> None:
        tasks = [t for t in [*self._tasks, self._gm_task] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for sub in self._subscriptions:
            try:
                await sub.unsubscribe()
            except BusError:
                pass
        self._subscriptions.clear()
        if self.grid_master is not None and self.registry is not None:
            lifecycle.grid_master_deactivated(self.unit_id, self.grid_master.epoch,
                                              "unit stopping")
            self.grid_master = None
            self.state.is_grid_master = False
            try:
                await self.registry.release_grid_master(self.unit_id)
            except BusError:
                pass

    # ---- unit helo (duplicate unit IDs, section 4.5) --------------------------------------

    async def _helo_loop(self) -> None:
        period = self.policy.helo_period_msec / 1000
        while True:
            await asyncio.sleep(period)
            try:
                await self.bus.publish(subjects.helo(self.unit_id), self.instance_id)
            except BusError:
                pass

    async def _on_helo(self, msg: Message) -> Any:
        if msg.reply is not None:
            return self.unit_id
        if msg.payload != self.instance_id and self.fatal is None and self.errors is not None:
            # handled by the local loop: stop deals, converter to WAIT, shut down
            self.fatal = await self.errors.report(
                "USER", "LOCAL", "FATAL", "another unit with same id"
            )
        return None

    async def _on_reset_all(self, msg: Message) -> Any:
        """Section 11.5: forget coordination state; a Grid Master is elected afresh."""
        await self.stop_grid_master("reset all")
        self.state.deal_ids.clear()
        self.capacity.release_all()
        if self.registry is not None:
            try:
                await self.registry.clear_grid_master()
            except BusError:
                pass
        return None

    async def reset_local(self) -> None:
        """Section 11.5, this unit only: stop a local Grid Master; forget deal interlocks no
        deal in the registry still needs; clear a Grid Master lock nobody answers for."""
        await self.stop_grid_master("reset local")
        registry, election = self.registry, self.election
        if registry is None or election is None:
            return
        try:
            mine = {s.deal.deal_id for s in await registry.all_deals()
                    if s.deal.involves(self.unit_id)}
            if not mine:
                self.state.deal_ids.clear()
                self.capacity.release_all()
            lock = await registry.grid_master()
            if lock is not None and await election.current_grid_master() is None:
                await registry.release_grid_master(lock.unit_id)
        except BusError as e:
            log.warning("%s: reset local: %s", self.unit_id, e)

    # ---- errors, modes, shutdown ------------------------------------------------------------

    def _global_sink(self, record: ErrorRecord) -> bool:
        gm = self.grid_master
        if gm is None:
            return False
        gm.take_error(record)
        return True

    def _global_mode_changed(self, mode: str) -> None:
        gm = self.grid_master
        if gm is not None:
            gm.mode_changed(mode)

    def now_iso(self) -> str:
        """The unit's clock (the driver's time, advanced by loop time since the read)."""
        controller = self.controller
        data = controller.data if controller is not None else None
        if data is None or controller is None:
            return ""
        elapsed = asyncio.get_running_loop().time() - controller.acquired_at
        return (data.time + timedelta(seconds=max(0.0, elapsed))).isoformat(
            timespec="milliseconds"
        )

    async def _stop_local(self) -> Any:
        assert self.controller is not None
        return await self.controller.stop_local()

    async def _report_unit_error(self, unit_id: str, message: str) -> None:
        if self.errors is not None:
            await self.errors.report("HARDWARE", "LOCAL", "ERROR", message, unit_id=unit_id)

    async def _budo_stop(self, by: str) -> None:
        assert self.modes is not None
        await self.modes.set_global("stop", by)

    async def _on_shutdown(self, msg: Message) -> Any:
        self.begin_shutdown(f"shutdown requested ({msg.subject})")
        return "ok"

    def begin_shutdown(self, reason: str) -> None:
        """Start the orderly shutdown (once), as a task this unit owns."""
        if self.shutdown_started or self._tg is None:
            return
        self.shutdown_started = True
        self._tasks.append(self._tg.create_task(self.orderly_shutdown(reason)))

    async def orderly_shutdown(self, reason: str) -> None:
        """Spec 1.4: AskAndWaitForStopDeals -> StopLocal -> stopping -> DeactivateGridMaster
        -> exit."""
        log.warning("%s: orderly shutdown: %s", self.unit_id, reason)
        assert self.errors is not None
        try:
            await self.errors.ask_and_wait_for_stop_deals([f"{self.unit_id} : {reason}"])
            try:
                await self._stop_local()
            except Exception as e:
                log.error("%s: shutdown: converter stop failed: %s", self.unit_id, e)
            self.state.stopping = True
            await self.stop_grid_master(f"shutdown: {reason}")
        finally:
            self.shutdown()

    # ---- file refresh --------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            period = min(
                self.policy.refreshing_period_msec,
                self.hw.refreshing_period_msec,
                self.scenario.refreshing_period_msec or self.policy.refreshing_period_msec,
            )
            await asyncio.sleep(period / 1000)
            await self.refresh_files()

    def _changed_on_disk(self) -> bool:
        """Whether any of the three files changed (size or modification time) since the
        last look: only then are they parsed again."""
        files = self.files
        paths = (files.hw_config_path, files.scenario_path, files.policy_path)
        if self._stamped_paths[0] != paths:  # as strings: os.stat of a Path converts it
            self._stamped_paths = (paths, tuple(os.fspath(p) for p in paths))
        stamps = []
        for path in self._stamped_paths[1]:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((-1, -1))
        changed = stamps != self._file_stamps
        self._file_stamps = stamps
        return changed

    async def refresh_files(self) -> None:
        """Re-read hwConfig, scenario and policy; a broken file keeps the cached copy."""
        if not self._changed_on_disk():
            return
        files = self.files
        problems: list[Problem] = []
        hw = load_model(HwConfig, files.hw_config_path, "hwConfig.json", problems)
        if hw is not None and hw != self._read_hw:
            self._read_hw = self.hw = hw
            for service in (self.controller, self.user):
                if service is not None:
                    service.hw = hw
        scenario = load_scenario(files.scenario_path, "scenario.json", problems)
        if (
            scenario is not None
            and self.user is not None
            and scenario.to_json() != self._read_scenario.to_json()
        ):
            self._read_scenario = self.scenario = scenario
            self.user.scenario = scenario
        policy = load_model(Policy, files.policy_path, "policy.json", problems)
        if policy is not None and canonical(policy) != self._read_policy:
            if canonical(policy) != canonical(self.policy):
                await self._offer_policy(policy)
            if self.refused_policy is None:
                self._read_policy = canonical(policy)
        for problem in problems:
            if self.errors is not None:
                await self.errors.report(
                    "USER", "LOCAL", "WARN", f"re-read failed, cached copy kept: {problem}"
                )

    async def _offer_policy(self, policy: Policy) -> None:
        registry = self.registry
        if registry is None:
            return
        try:
            entry = await registry.state.get(POLICY_KEY)
        except BusError:
            return
        if entry is None or entry.value != canonical(policy):
            why = "policy.json changed but differs from the cluster's policy: not applied"
            if self.refused_policy != why and self.errors is not None:
                await self.errors.report("USER", "LOCAL", "WARN", why)
            self.refused_policy = why
            return
        self.refused_policy = None
        self.apply_policy(policy)

    def apply_policy(self, policy: Policy) -> None:
        self.policy = policy
        services: list[Any] = [
            self.controller, self.user, self.mediator, self.election, self.errors,
            self.grid_master,
        ]
        for service in services:
            if service is not None:
                service.policy = policy
        if self.grid_master is not None:
            self.grid_master.execution.policy = policy
        if self.modes is not None:
            self.modes.policy_changed(policy)

    # ---- the Grid Master on this unit -----------------------------------------------------

    def _voltage_reference_unit(self) -> str | None:
        gm = self.grid_master
        return gm.voltage_reference_unit() if gm is not None else None

    async def start_grid_master(self) -> None:
        """Activation (section 4.4): take the lock, then start the service."""
        async with self._gm_guard:
            if self.grid_master is not None:
                raise ActivationFailed(f"Grid Master already active on {self.unit_id}")
            assert self.registry and self.mediator and self.election and self._tg
            try:
                lock = await self.registry.acquire_grid_master(self.unit_id)
            except KeyExists:
                held = await self.registry.grid_master()
                raise ActivationFailed(
                    f"Grid Master lock held by {held.unit_id if held else '?'}"
                ) from None
            except LeaseServiceUnavailable as e:
                raise ActivationFailed(f"Grid Master lock not taken: {e}") from None
            gm = GridMaster(
                unit_id=self.unit_id,
                epoch=lock.epoch,
                instance_id=self.instance_id,
                bus=self.bus,
                registry=self.registry,
                policy=self.policy,
                mediator=self.mediator,
                request_ensure=self.election.request_ensure,
                global_mode=lambda: self.state.global_mode,
                budo_stop=self._budo_stop,
                report_unit_error=self._report_unit_error,
                stopping=lambda: self.state.stopping,
            )
            self.grid_master = gm
            self.state.is_grid_master = True
            self.grid_master_history.append(
                (asyncio.get_running_loop().time(), "activate", lock.epoch)
            )
            lifecycle.grid_master_activated(self.unit_id, lock.epoch)
            self._gm_task = self._tg.create_task(self._run_grid_master(gm))

    async def _run_grid_master(self, gm: GridMaster) -> None:
        try:
            await gm.run()
        except Exception as exc:
            lost = _only_lease_lost(exc)
            if lost is not None:  # expected when the bus is gone: one line, no traceback
                log.error("(LOGIC:LOCAL:ERROR:%s) Grid Master stopped: %s", self.unit_id, lost)
                why = f"lease lost: {lost}"
            else:
                log.exception("(LOGIC:LOCAL:ERROR:%s) Grid Master failed", self.unit_id)
                why = f"failed: {exc!r}"
            if self.grid_master is gm:
                lifecycle.grid_master_deactivated(self.unit_id, gm.epoch, why)
                self.grid_master = None
                self.state.is_grid_master = False
                if self.registry is not None:
                    await self.registry.release_grid_master(self.unit_id)

    async def stop_grid_master(self, reason: str = "requested") -> None:
        """Deactivation: stop the service (after its current pass), then release the lock.
        `reason`: for the lifecycle line."""
        async with self._gm_guard:
            gm, task = self.grid_master, self._gm_task
            if gm is not None and task is not None:
                async with gm.main_loop_lock:
                    task.cancel()
                await asyncio.wait([task])
                self.grid_master_history.append(
                    (asyncio.get_running_loop().time(), "deactivate", gm.epoch)
                )
                if self.grid_master is gm:  # not already ended (and logged) by a failure
                    lifecycle.grid_master_deactivated(self.unit_id, gm.epoch, reason)
            self.grid_master = None
            self._gm_task = None
            self.state.is_grid_master = False
            if self.registry is not None:
                await self.registry.release_grid_master(self.unit_id)


def _only_lease_lost(exc: BaseException) -> LeaseLost | None:
    """The LeaseLost that `exc` is, or that is all a task group raised; else None."""
    if isinstance(exc, LeaseLost):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        lost, rest = exc.split(LeaseLost)
        if lost is not None and rest is None:
            return _only_lease_lost(lost.exceptions[0])
    return None

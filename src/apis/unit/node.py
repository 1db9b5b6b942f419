"""One unit (apis-main): its Controller, User, Mediator, Grid Master placement and, when
elected, its Grid Master, all owned by one TaskGroup.

    unit = Unit(files, driver=driver, bus=hub.connect("E001"))
    await unit.run()          # until cancelled (or a fatal error shuts it down)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from apis.bus.base import Bus, BusError, KeyExists, Message, NoHandlers, Subscription
from apis.config.loader import UnitFiles
from apis.config.policy import Policy
from apis.hardware.driver import DeviceDriver, DriverError
from apis.unit import subjects
from apis.unit.controller import Controller
from apis.unit.data import deal_interlock_capacity
from apis.unit.deallog import DealLog
from apis.unit.election import ActivationFailed, Election
from apis.unit.errors import ErrorRecord
from apis.unit.gridmaster import GridMaster
from apis.unit.mediator import Mediator
from apis.unit.registry import Registry
from apis.unit.state import UnitState
from apis.unit.userservice import UserService

log = logging.getLogger(__name__)

SUPPORTED_INTERFACE_MAJOR = "2"
POLICY_KEY = "policy"
RESET_ALL = "apis.reset.all"


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
        self.rng = random.Random(f"{seed}:{self.unit_id}")
        self.instance_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
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
        self.registry = registry = await Registry.open(self.bus)
        # Every unit of a cluster must run the same policy (compared in canonical form).
        mine = json.dumps(self.policy.to_json(), sort_keys=True, separators=(",", ":"))
        try:
            await registry.state.create(POLICY_KEY, mine)
        except KeyExists:
            entry = await registry.state.get(POLICY_KEY)
            if entry is not None and entry.value != mine:
                raise StartupFailed("my POLICY is different from cluster's") from None
        self.controller = Controller(
            config=self.config,
            hw=self.hw,
            policy=self.policy,
            driver=self.driver,
            bus=self.bus,
            registry=registry,
            state=self.state,
            rng=self.rng,
        )
        self.user = UserService(
            state=self.state,
            hw=self.hw,
            policy=self.policy,
            scenario=self.scenario,
            controller=self.controller,
            bus=self.bus,
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
        )
        self.election = Election(
            state=self.state,
            policy=self.policy,
            bus=self.bus,
            registry=registry,
            rng=self.rng,
            start_local=self.start_grid_master,
            stop_local=self.stop_grid_master,
            voltage_reference_unit=self._voltage_reference_unit,
        )
        await self.controller.acquire()
        self.state.global_mode = await registry.global_mode(self.policy.operation_mode)
        subs = self._subscriptions
        subs.append(await self.bus.subscribe(subjects.helo(self.unit_id), self._on_helo))
        subs.extend(await self.controller.subscribe())
        subs.extend(await self.user.subscribe())
        subs.extend(await self.mediator.subscribe())
        subs.extend(await self.election.subscribe())
        subs.append(await self.bus.subscribe(RESET_ALL, self._on_reset_all))

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
        if msg.payload != self.instance_id and self.fatal is None:
            self.fatal = ErrorRecord(
                self.unit_id, "USER", "LOCAL", "FATAL", "another unit with same id",
                asyncio.get_running_loop().time(),
            )
            log.error("%s", self.fatal)
            if self.controller is not None:
                try:
                    await self.controller.stop_local()
                except Exception as e:
                    log.error("%s: stop on fatal error failed: %s", self.unit_id, e)
            self.shutdown()
        return None

    async def _on_reset_all(self, msg: Message) -> Any:
        """Section 11.5: forget coordination state; a Grid Master is elected afresh."""
        await self.stop_grid_master()
        self.state.deal_ids.clear()
        if self.registry is not None:
            try:
                await self.registry.clear_grid_master()
            except BusError:
                pass
        return None

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
            gm = GridMaster(
                unit_id=self.unit_id,
                epoch=lock.epoch,
                instance_id=self.instance_id,
                bus=self.bus,
                registry=self.registry,
                policy=self.policy,
                mediator=self.mediator,
                request_ensure=self.election.request_ensure,
            )
            self.grid_master = gm
            self.state.is_grid_master = True
            self.grid_master_history.append(
                (asyncio.get_running_loop().time(), "activate", lock.epoch)
            )
            self._gm_task = self._tg.create_task(self._run_grid_master(gm))

    async def _run_grid_master(self, gm: GridMaster) -> None:
        try:
            await gm.run()
        except Exception:
            log.exception("(LOGIC:LOCAL:ERROR:%s) Grid Master failed", self.unit_id)
            if self.grid_master is gm:
                self.grid_master = None
                self.state.is_grid_master = False
                if self.registry is not None:
                    await self.registry.release_grid_master(self.unit_id)

    async def stop_grid_master(self) -> None:
        """Deactivation: stop the service (after its current pass), then release the lock."""
        async with self._gm_guard:
            gm, task = self.grid_master, self._gm_task
            if gm is not None and task is not None:
                async with gm.main_loop_lock:
                    task.cancel()
                await asyncio.wait([task])
                self.grid_master_history.append(
                    (asyncio.get_running_loop().time(), "deactivate", gm.epoch)
                )
            self.grid_master = None
            self._gm_task = None
            self.state.is_grid_master = False
            if self.registry is not None:
                await self.registry.release_grid_master(self.unit_id)

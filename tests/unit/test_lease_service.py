"""The lease service's rules (`apis.unit.leaseservice`), on the in-memory bus in virtual time.

The in-memory bus refuses a `signed` subject to any endpoint but the one it names, as the
NATS permissions do, so the service learns the requester as on the secured bus (the
bucket permissions themselves are the servers' and are tested in tests/cluster). Here:
Controllers whose claim goes through the service (concurrent CV choices, a hand-over that
the old reference marks first), and the lease and claim rules against a unit that asks for
what is not its own, with malformed requests refused naming the key.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from apis import clock
from apis.bus.base import KeyExists, RemoteFailure, RevisionMismatch, SenderRefused
from apis.bus.memory import MemoryBus, MemoryHub
from apis.emulator import World
from apis.emulator.driver import EmulatedDriver
from apis.hardware.driver import ConverterData
from apis.hardware.modes import ConverterMode
from apis.unit import subjects
from apis.unit.controller import CommandError, Controller
from apis.unit.leaseclient import LeaseServiceClient, LeaseServiceUnavailable
from apis.unit.leaseservice import LeaseService
from apis.unit.registry import VOLTAGE_REFERENCE_KEY, GridMasterLock, Registry
from apis.unit.state import UnitState
from apis.unit.vrclaim import Claim

from .harness import Watch, WatchedDriver, write_config

T = TypeVar("T")
FOUR = ["E001", "E002", "E003", "E004"]
VR = ConverterMode.VOLTAGE_REFERENCE


class Bench:
    """Controllers of `FOUR` whose claim writes go through one lease service."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = write_config(tmp_path, FOUR)
        self.world = World([(u.unit_id, u.hw_config) for u in self.config.units],
                           self.config.grid, seed=1, initial_rsoc=[50.0] * 4)
        for unit_id in FOUR:
            self.world.set_house_override(unit_id, pv_w=0.0, load_w=0.0)
        self.hub = MemoryHub()
        self.buses: dict[str, MemoryBus] = {}
        self.registries: dict[str, Registry] = {}
        self.controllers: dict[str, Controller] = {}
        self.reports: list[tuple[str, ...]] = []

    async def start(self, service: bool = True) -> Bench:
        self.service = await LeaseService.open(self.hub.connect("apis-lease"))
        if service:
            await self.service.subscribe()
        for files in self.config.units:
            unit_id = files.config.unit_id
            bus = self.buses[unit_id] = self.hub.connect(unit_id)
            registry = await Registry.open(bus, LeaseServiceClient(bus, unit_id))
            self.registries[unit_id] = registry

            async def report(category: str, extent: str, level: str, message: str,
                             unit_id: str = unit_id) -> None:
                self.reports.append((unit_id, category, extent, level, message))

            self.controllers[unit_id] = Controller(
                config=files.config, hw=files.hw_config, policy=files.policy,
                driver=WatchedDriver(EmulatedDriver(self.world, unit_id),  # type: ignore[arg-type]
                                     Watch()),
                bus=bus, registry=registry, state=UnitState(unit_id, 2),
                rng=random.Random(0), report=report,
            )
        self.observer = await Registry.open(self.hub.connect("observer"))
        return self

    async def holder(self) -> Claim | None:
        entry = await self.observer.voltage_reference_kv.get(VOLTAGE_REFERENCE_KEY)
        return Claim.from_entry(entry) if entry is not None else None

    def in_cv(self) -> list[str]:
        return [u for u in FOUR if self.world.unit_data(u).dcdc.mode is VR]

    async def ask(self, unit_id: str, op: str, body: Any, signer: str | None = None) -> Any:
        return await self.buses[unit_id].request(
            subjects.lease_request(op, signer or unit_id), body, timeout=2.0)


def _bench(tmp_path: Path, body: Callable[[Bench], Awaitable[T]], service: bool = True) -> T:
    async def main() -> T:
        return await body(await Bench(tmp_path).start(service))

    return clock.run(main, "virtual")


def test_concurrent_voltage_reference_commands_one_wins_through_the_service(
    tmp_path: Path,
) -> None:
    async def body(b: Bench) -> None:
        for _ in range(3):
            results = await asyncio.gather(
                *(c.execute("VOLTAGE_REFERENCE", {}) for c in b.controllers.values()),
                return_exceptions=True,
            )
            won = [u for u, r in zip(FOUR, results, strict=True)
                   if isinstance(r, ConverterData)]
            assert len(won) == 1, results
            holder = await b.holder()
            assert holder is not None and holder.unit_id == won[0]
            assert b.in_cv() == won
            assert all(isinstance(r, CommandError) and f"claimed by {won[0]}" in str(r)
                       for u, r in zip(FOUR, results, strict=True) if u != won[0])
            await b.controllers[won[0]].execute("WAIT", {})
            assert await b.holder() is None

    _bench(tmp_path, body)


def test_a_hand_over_through_the_service_is_marked_by_the_old_reference(
    tmp_path: Path,
) -> None:
    async def body(b: Bench) -> None:
        a, c, d = (b.controllers[u] for u in ("E003", "E004", "E001"))
        await a.execute("VOLTAGE_REFERENCE", {})
        before = await b.holder()
        assert before is not None and (before.unit_id, before.hand_over) == ("E003", False)
        # not marked: nobody may move it, whatever the command says
        with pytest.raises(CommandError, match="claimed by E003"):
            await d.execute("voltageReferenceWillTakeOver",
                            {"gridVoltageV": 350.0, "voltageReferenceUnitId": "E003"})
        await a.execute("voltageReferenceWillHandOver", {})
        marked = await b.holder()
        assert marked is not None and (marked.unit_id, marked.hand_over) == ("E003", True)
        await a.keep_claim()  # renewed with its mark
        assert (await b.holder()).hand_over is True  # type: ignore[union-attr]
        await c.execute("voltageReferenceWillTakeOver",
                        {"gridVoltageV": 350.0, "voltageReferenceUnitId": "E003"})
        moved = await b.holder()
        assert moved is not None and (moved.unit_id, moved.hand_over) == ("E004", False)
        await a.keep_claim()
        assert a.claim.held is None
        await a.execute("voltageReferenceDidHandOver", {})
        await c.execute("voltageReferenceDidTakeOver", {})
        assert await b.holder() == moved  # A's WAIT did not delete B's claim
        assert b.in_cv() == ["E004"]
        await c.keep_claim()
        renewed = await b.holder()
        assert renewed is not None and renewed.revision > moved.revision
        await c.execute("WAIT", {})
        assert await b.holder() is None
        assert b.reports == []

    _bench(tmp_path, body)


def test_the_lease_only_for_the_requester_and_only_by_its_holder(tmp_path: Path) -> None:
    async def body(b: Bench) -> None:
        e1, e2 = b.registries["E001"], b.registries["E002"]
        lock = await e1.acquire_grid_master("E001")
        with pytest.raises(KeyExists):
            await e2.acquire_grid_master("E002")
        with pytest.raises(ValueError, match="acts only for 'E002'"):
            await e2.acquire_grid_master("E001")
        with pytest.raises(SenderRefused):  # the bus: not E002's to sign
            await b.ask("E002", "renew", {"epoch": lock.epoch, "revision": lock.revision,
                                          "globalErrors": False}, signer="E001")
        with pytest.raises(RevisionMismatch, match="not E002's"):
            await e2.renew_grid_master(GridMasterLock("E002", lock.epoch, lock.revision))
        assert await e2.release_grid_master("E002") is False
        await e2.clear_grid_master()  # a reset by E002: E001's lease stays
        stored = await b.observer.grid_master()
        assert stored is not None and (stored.unit_id, stored.epoch) == ("E001", lock.epoch)
        # A renewal whose answer was lost: the next one, from the older revision, succeeds.
        renewed = await e1.renew_grid_master(lock, global_errors=True)
        again = await e1.renew_grid_master(lock)
        assert again.revision > renewed.revision and again.epoch == lock.epoch
        crossing = await asyncio.gather(*(e1.renew_grid_master(again) for _ in range(3)))
        assert len({lock.revision for lock in crossing}) == 3  # a retried renewal crossing
        again = max(crossing, key=lambda lock: lock.revision)
        with pytest.raises(RevisionMismatch, match="revision = 999"):  # not from the future
            await e1.renew_grid_master(GridMasterLock("E001", lock.epoch, 999))
        with pytest.raises(RevisionMismatch):  # another epoch: not this lease
            await e1.renew_grid_master(GridMasterLock("E001", lock.epoch + 1, again.revision))
        assert await e1.release_grid_master("E001") is True
        with pytest.raises(RevisionMismatch):  # released: nothing to renew
            await e1.renew_grid_master(again)
        taken = await e2.acquire_grid_master("E002")
        assert taken.epoch > lock.epoch

    _bench(tmp_path, body)


def test_the_claim_only_by_its_holder(tmp_path: Path) -> None:
    async def body(b: Bench) -> None:
        await b.controllers["E003"].execute("VOLTAGE_REFERENCE", {})
        claim = await b.holder()
        assert claim is not None and claim.unit_id == "E003"
        held = {"claimId": claim.claim_id, "revision": claim.revision, "handOver": False}
        reply = await b.ask("E002", "claimTake",
                            {"held": held, "from": "E003", "newClaimId": "x.1"})
        assert (reply["ok"], reply["refused"]) == (False, "ClaimRefused")
        assert await b.ask("E002", "claimRelease", held) == {"ok": True, "released": False}
        assert await b.ask("E002", "claimRenew", held) == {"ok": True, "claim": None}
        reply = await b.ask("E002", "claimHandOver", held)
        assert (reply["ok"], reply["refused"]) == (False, "ClaimRefused")
        assert await b.holder() == claim
        await b.controllers["E003"].execute("WAIT", {})
        assert await b.holder() is None

    _bench(tmp_path, body)


@pytest.mark.parametrize(("op", "body", "message"), [
    ("renew", {"epoch": 1, "revision": True, "globalErrors": False},
     "revision = True (must be an integer within 1.."),
    ("renew", {"epoch": 0, "revision": 1, "globalErrors": False},
     "epoch = 0 (must be an integer within 1.."),
    ("renew", {"epoch": 1, "revision": 1, "globalErrors": "no"},
     "globalErrors = 'no' (must be true or false)"),
    ("renew", {"epoch": 1, "revision": 1}, "'globalErrors' missing"),
    ("acquire", {"unitId": "E009"}, "'unitId' (unknown key"),
    ("acquire", [1], "body = [1] (must be an object)"),
    ("claimTake", {"held": None, "from": "../x", "newClaimId": "a"},
     "from = '../x' (must be a unit ID"),
    ("claimTake", {"held": None, "from": None, "newClaimId": "a" * 81},
     "newClaimId = 'aaaa"),
    ("claimRenew", {"claimId": "a", "revision": 2**63, "handOver": False},
     "revision = 9223372036854775808 (must be an integer"),
    ("steal", {}, "operation = 'steal' (must be one of acquire, renew"),
])
def test_malformed_requests_are_refused_naming_the_key(
    tmp_path: Path, op: str, body: Any, message: str
) -> None:
    async def main(b: Bench) -> str:
        with pytest.raises(RemoteFailure) as e:
            await b.ask("E001", op, body)
        assert await b.observer.grid_master() is None
        return str(e.value)

    assert message in _bench(tmp_path, main)


def test_without_a_service_nobody_takes_the_lease_and_it_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(b: Bench) -> None:
        e1 = b.registries["E001"]
        for _ in range(5):
            with pytest.raises(LeaseServiceUnavailable):
                await e1.acquire_grid_master("E001")
        with pytest.raises(CommandError, match="could not be taken"):
            await b.controllers["E001"].execute("VOLTAGE_REFERENCE", {})
        assert b.in_cv() == [] and await b.observer.grid_master() is None
        await b.service.subscribe()
        lock = await e1.acquire_grid_master("E001")
        assert lock.unit_id == "E001"

    with caplog.at_level("INFO"):
        _bench(tmp_path, body, service=False)
    said = [r.getMessage() for r in caplog.records if "no lease service answers" in
            r.getMessage()]
    assert len(said) == 1 and "E001" in said[0], said
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_a_hand_over_given_up_closes_the_claim_again(tmp_path: Path) -> None:
    async def body(b: Bench) -> None:
        a, c = b.controllers["E003"], b.controllers["E004"]
        await a.execute("VOLTAGE_REFERENCE", {})
        await a.execute("voltageReferenceWillHandOver", {})
        assert (await b.holder()).hand_over is True  # type: ignore[union-attr]
        a.claim.handing_over = False  # the hand-over is off (A keeps the grid)
        await a.keep_claim()
        closed = await b.holder()
        assert closed is not None and (closed.unit_id, closed.hand_over) == ("E003", False)
        with pytest.raises(CommandError, match="claimed by E003"):
            await c.execute("voltageReferenceWillTakeOver",
                            {"gridVoltageV": 350.0, "voltageReferenceUnitId": "E003"})
        assert b.in_cv() == ["E003"]
        await a.execute("WAIT", {})
        assert await b.holder() is None

    _bench(tmp_path, body)

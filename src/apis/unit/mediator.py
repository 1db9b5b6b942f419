"""The Mediator (spec 3, 5.8 disposition, 10.2): negotiation, the deal registry, interlocks,
the deal log.

- A unit's own request becomes a *negotiation*: broadcast on `apis.Mediator.externalRequest`
  with a temporary reply address, accepts gathered for `negotiationTimeoutMsec`, one chosen
  by the User, the deal built by the amount rules and registered.
- Foreign requests are answered with the User's accept.
- Registration takes a *deal interlock* on both units (ascending unit ID) and stores the
  deal in the shared registry with create-if-absent.
- Disposition publishes the final deal on `apis.Mediator.deal.log.from.<id>` (signed: the
  bus vouches for the publisher; both units write their file), removes it, and releases the
  interlocks (descending unit ID).
- A deal record is written only if its publisher, as the bus vouches for it, is one of the
  deal's units or the Grid Master (the one holding the lock); what the headers or the
  payload say about the sender counts for nothing.
- After a crash, the unit's live deal files are reconciled at start-up: a deal the registry
  no longer holds is closed with its partner's final record (`apis.<id>.Mediator.deal.record`)
  or, without one, recorded as aborted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from apis.bus.base import Bus, BusError, KeyExists, Message
from apis.config.policy import Policy
from apis.unit import lifecycle, subjects
from apis.unit.capacity import BatteryCapacityLocks
from apis.unit.controller import Controller
from apis.unit.deal import NOT_APPLICABLE, Deal
from apis.unit.deallog import DealLog, DealLogRefused, ended, same_deal
from apis.unit.decisions import deal_terms, worth_negotiating
from apis.unit.ids import InvalidDealId, check_deal_id
from apis.unit.registry import Registry
from apis.unit.state import UnitState
from apis.unit.user import Offer, deal_fields
from apis.unit.userservice import UserService

log = logging.getLogger(__name__)


class DealCreationFailed(Exception):
    pass


class Mediator:
    def __init__(
        self,
        *,
        state: UnitState,
        policy: Policy,
        bus: Bus,
        registry: Registry,
        user: UserService,
        controller: Controller,
        deal_log: DealLog | None,
        rng: random.Random,
        new_id: Callable[[], str],
        capacity: BatteryCapacityLocks | None = None,
    ) -> None:
        self.state = state
        self.capacity = capacity
        self.directions: dict[str, str] = {}  # dealId -> this unit's direction
        self.policy = policy
        self.bus = bus
        self.registry = registry
        self.user = user
        self.controller = controller
        self.deal_log = deal_log
        self.rng = rng
        self.new_id = new_id  # deal and negotiation ids (see apis.unit.ids)
        self.unit_id = state.unit_id
        self.negotiations = 0
        self.deals_created = 0

    async def subscribe(self) -> list[Any]:
        bus = self.bus
        subscriptions = [
            await bus.subscribe(subjects.MEDIATOR_EXTERNAL_REQUEST, self._on_external_request),
            await bus.subscribe(subjects.interlock_deal(self.unit_id), self._on_interlock),
            await bus.subscribe(subjects.MEDIATOR_DEAL_CREATE, self._on_create, queue="mediator"),
            await bus.subscribe(subjects.MEDIATOR_DEALS, self._on_deals, queue="mediator"),
            await bus.subscribe(subjects.MEDIATOR_DEAL_NEED_TO_STOP, self._on_need_to_stop,
                                queue="mediator"),
        ]
        if self.deal_log is not None:  # without a log there is nothing to do with one
            subscriptions.append(await bus.subscribe(subjects.deal_log("*"), self._on_deal_log))
            subscriptions.append(
                await bus.subscribe(subjects.deal_record(self.unit_id), self._on_deal_record)
            )
        return subscriptions

    # ---- house keeping and negotiation ----------------------------------------------------

    async def house_keeping_loop(self) -> None:
        period = self.policy.user.house_keeping_period_msec / 1000
        # Start at a random phase so the units of a cluster do not all ask at once.
        await asyncio.sleep(self.rng.uniform(0, period))
        while True:
            try:
                await self.house_keeping()
            except Exception:
                log.exception("%s: house keeping failed", self.unit_id)
            await asyncio.sleep(period)

    async def house_keeping(self) -> Deal | None:
        """One pass: ask the User for a request and negotiate it."""
        request = await self.user.request_now()
        if request is None:
            return None
        return await self.negotiate(request)

    async def negotiate(self, request: Offer) -> Deal | None:
        rules = self.policy.mediator.deal
        if not worth_negotiating(request.get("amountWh", 0), rules):
            return None  # too small to be worth a deal
        request = {**request, "dealGridCurrentA": rules.grid_current_a, "unitId": self.unit_id}
        negotiation_id = self.new_id()
        reply_address = f"apis.negotiation.{negotiation_id}"
        accepts: list[Offer] = []

        async def gather(msg: Message) -> None:
            accept = msg.payload
            if isinstance(accept, dict) and accept.get("unitId") in self.policy.member_unit_ids:
                accepts.append(accept)

        self.negotiations += 1
        subscription = await self.bus.subscribe(reply_address, gather)
        try:
            await self.bus.publish(
                subjects.MEDIATOR_EXTERNAL_REQUEST, request, {subjects.REPLY_ADDRESS: reply_address}
            )
            await asyncio.sleep(self.policy.mediator.negotiation_timeout_msec / 1000)
        finally:
            await subscription.unsubscribe()
        chosen = await self.user.choose(request, accepts)
        if chosen is None:
            return None
        amount = deal_terms(request, chosen, rules)
        if amount <= 0:
            return None
        deal = Deal.from_json(deal_fields(request, chosen, amount, negotiation_id))
        try:
            return await self.create_deal(deal)
        except DealCreationFailed as e:
            log.info("%s: deal not created: %s", self.unit_id, e)
            return None

    async def _on_external_request(self, msg: Message) -> Any:
        request = msg.payload
        reply = msg.headers.get(subjects.REPLY_ADDRESS)
        if not isinstance(request, dict) or reply is None or not self.state.in_operation:
            return None
        requester = request.get("unitId")
        if requester == self.unit_id or requester not in self.policy.member_unit_ids:
            return None
        accept = await self.user.accept_for(request)
        if accept is None or not worth_negotiating(accept["amountWh"], self.policy.mediator.deal):
            return None
        accept = {
            **accept,
            "dealGridCurrentA": self.policy.mediator.deal.grid_current_a,
            "unitId": self.unit_id,
        }
        await self.bus.publish(reply, accept)
        return None

    # ---- deal registration ----------------------------------------------------------------

    async def _on_create(self, msg: Message) -> Any:
        if not isinstance(msg.payload, dict):
            raise DealCreationFailed("deal.create: body must be a deal object")
        deal = await self.create_deal(Deal.from_json(msg.payload))
        return deal.to_json()

    async def create_deal(self, deal: Deal) -> Deal:
        """Section 3.6: check, interlock both units, store. Raise DealCreationFailed."""
        members = self.policy.member_unit_ids
        for unit in (deal.request_unit_id, deal.accept_unit_id):
            if unit not in members:
                raise DealCreationFailed(f"unit {unit!r} is not a member")
        if deal.charge_unit_id == deal.discharge_unit_id:
            raise DealCreationFailed(f"charge and discharge unit are both {deal.charge_unit_id}")
        global_errors = await self.user.grid_master_reports_errors()
        if global_errors is None:
            raise DealCreationFailed("no Grid Master")
        if global_errors:
            raise DealCreationFailed("the Grid Master reports global errors")
        for unit in (deal.charge_unit_id, deal.discharge_unit_id):
            try:
                if await self.bus.request(subjects.user_error_test(unit), timeout=5.0):
                    raise DealCreationFailed(f"unit {unit} has local errors")
            except BusError as e:
                raise DealCreationFailed(f"unit {unit} did not answer: {e}") from None
        deal.deal_id = self.new_id()
        units = sorted({deal.charge_unit_id, deal.discharge_unit_id})
        locked: list[str] = []
        try:
            for unit in units:
                if not await self._interlock(unit, deal, "acquire"):
                    raise DealCreationFailed(f"unit {unit} is busy")
                locked.append(unit)
            data = self.controller.data
            deal.create_date_time = data.apis_time if data is not None else None
            try:
                await self.registry.create_deal(deal)
            except KeyExists:
                raise DealCreationFailed(f"dealId {deal.deal_id} exists") from None
        except BaseException:
            for unit in reversed(locked):
                await self._interlock(unit, deal, "release")
            raise
        self.deals_created += 1
        lifecycle.deal_created(deal)
        return deal

    async def _interlock(self, unit: str, deal: Deal, command: str) -> bool:
        try:
            return bool(
                await self.bus.request(
                    subjects.interlock_deal(unit),
                    {
                        "dealId": deal.deal_id,
                        "chargeUnitId": deal.charge_unit_id,
                        "dischargeUnitId": deal.discharge_unit_id,
                    },
                    {subjects.COMMAND: command},
                    timeout=5.0,
                )
            )
        except BusError as e:
            log.warning("%s: interlock %s on %s failed: %s", self.unit_id, command, unit, e)
            return False

    async def _on_interlock(self, msg: Message) -> Any:
        body = msg.payload if isinstance(msg.payload, dict) else {}
        deal_id = body.get("dealId")
        if not deal_id:
            return False
        if msg.headers.get(subjects.COMMAND) == "acquire":
            if deal_id in self.state.deal_ids or self.state.busy:
                return False
            direction = "CHARGE" if body.get("chargeUnitId") == self.unit_id else "DISCHARGE"
            # a gateway's shared battery: one process per direction (section 12.6)
            if self.capacity is not None and not self.capacity.acquire(direction):
                return False
            self.state.deal_ids.append(deal_id)
            self.directions[deal_id] = direction
            return True
        if deal_id in self.state.deal_ids:
            self.state.deal_ids.remove(deal_id)
        direction = self.directions.pop(str(deal_id), "")
        if (
            direction
            and self.capacity is not None
            and direction not in self.directions.values()
        ):
            self.capacity.release(direction)
        return True

    async def _on_deals(self, msg: Message) -> Any:
        return [stored.deal.to_json() for stored in await self.registry.all_deals()]

    async def _on_need_to_stop(self, msg: Message) -> Any:
        body = msg.payload if isinstance(msg.payload, dict) else {}
        deal_id = str(body.get("dealId", ""))
        reasons = [str(r) for r in body.get("reasons") or []]
        if deal_id and reasons:
            await self.registry.add_need_to_stop(deal_id, reasons)
        return deal_id

    # ---- disposition and the deal log -----------------------------------------------------

    async def dispose(self, deal_id: str) -> Deal | None:
        """Final log on both units, removal, interlock release (descending unit ID)."""
        await self.registry.clear_need_to_stop(deal_id)
        stored = await self.registry.deal(deal_id)
        if stored is None:
            return None
        deal = stored.deal
        await self.bus.publish(subjects.deal_log(self.unit_id), deal.to_json())
        await self.registry.remove_deal(deal_id)
        lifecycle.deal_disposed(deal)
        for unit in sorted({deal.charge_unit_id, deal.discharge_unit_id}, reverse=True):
            await self._interlock(unit, deal, "release")
        return deal

    async def _on_deal_log(self, msg: Message) -> Any:
        if self.deal_log is None or not isinstance(msg.payload, dict):
            return None
        try:
            deal = Deal.from_json(msg.payload)
            check_deal_id(deal.deal_id)
        except (ValueError, TypeError, AttributeError) as e:
            log.error("%s: deal log refused: %s", self.unit_id, e)
            return None
        if not deal.involves(self.unit_id):
            return "N/A"
        sender = msg.sender  # as the bus vouches for it, not as the message says
        if not await self._may_log(deal, sender):
            log.error(
                "%s: deal log of %s refused: its sender %r is neither a unit of the deal nor "
                "the Grid Master", self.unit_id, deal.deal_id, sender,
            )
            return None
        if self._write(deal) is None:
            return None
        return self.unit_id

    async def _may_log(self, deal: Deal, sender: str | None) -> bool:
        if sender in (deal.charge_unit_id, deal.discharge_unit_id, deal.request_unit_id,
                      deal.accept_unit_id):
            return True
        try:
            lock = await self.registry.grid_master()
        except BusError as e:
            log.warning("%s: deal log of %s: Grid Master unknown: %s", self.unit_id,
                        deal.deal_id, e)
            return False
        return sender is not None and lock is not None and lock.unit_id == sender

    def _write(self, deal: Deal) -> Deal | None:
        """Write `deal` to the log; a refusal is logged (nothing written) and gives None."""
        assert self.deal_log is not None
        try:
            self.deal_log.write(deal)
        except (InvalidDealId, DealLogRefused) as e:
            log.error("%s: deal log refused: %s", self.unit_id, e)
            return None
        except OSError as e:
            log.error("%s: deal log of %s not written: %s", self.unit_id, deal.deal_id, e)
            return None
        return deal

    async def _on_deal_record(self, msg: Message) -> Any:
        """A partner asks for this unit's record of a deal (its reconciliation)."""
        body = msg.payload if isinstance(msg.payload, dict) else {}
        if self.deal_log is None:
            return None
        deal = self.deal_log.find(check_deal_id(body.get("dealId")))
        return deal.to_json() if deal is not None else None

    async def reconcile_deal_log(self) -> list[Deal]:
        """After a restart: close every live deal file whose deal is over; return them.

        A deal the registry still holds runs on (the Grid Master ends it and the log follows).
        One it no longer holds gets its partner's final record, or, without one, is recorded
        as aborted: this unit went down while it ran."""
        if self.deal_log is None:
            return []
        closed = []
        for deal in self.deal_log.live():
            try:
                stored = await self.registry.deal(deal.deal_id)
            except BusError as e:
                log.warning("%s: deal %s not reconciled: %s", self.unit_id, deal.deal_id, e)
                continue
            if stored is not None and same_deal(stored.deal, deal):
                continue
            final = await self._partner_record(deal)
            if final is None:
                final = deal
                final.record_abort(
                    self._now(),
                    f"{self.unit_id} restarted: deal no longer in the registry and no final "
                    "record from its partner",
                )
            if self._write(final) is not None:
                log.warning("%s: deal %s closed after a restart: %s", self.unit_id,
                            deal.deal_id, final.abort_reason or "ended")
                closed.append(final)
        return closed

    async def _partner_record(self, deal: Deal) -> Deal | None:
        """The partner's final record of `deal` (same deal, ended), None if it has none."""
        partner = deal.discharge_unit_id if deal.charge_unit_id == self.unit_id \
            else deal.charge_unit_id
        try:
            reply = await self.bus.request(
                subjects.deal_record(partner), {"dealId": deal.deal_id}, timeout=5.0
            )
            record = Deal.from_json(reply) if isinstance(reply, dict) else None
        except (BusError, ValueError, TypeError, AttributeError) as e:
            log.info("%s: no record of deal %s from %s: %s", self.unit_id, deal.deal_id,
                     partner, e)
            return None
        if record is None or not same_deal(record, deal) or not ended(record):
            return None
        return record

    def _now(self) -> str:
        data = self.controller.data
        return data.apis_time if data is not None else NOT_APPLICABLE

    async def deal_logging_loop(self) -> None:
        """Rewrite this unit's live deals every `dealLoggingPeriodMsec`."""
        if self.deal_log is None:
            return  # deal logging is off: nothing to wake up for
        period = self.policy.mediator.deal_logging_period_msec / 1000
        while True:
            await asyncio.sleep(period)
            for deal_id in list(self.state.deal_ids):
                try:
                    stored = await self.registry.deal(deal_id)
                except BusError:
                    continue
                if stored is not None:
                    self._write(stored.deal)

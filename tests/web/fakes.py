"""A fake cluster on an in-memory hub: just the bus handlers the web app talks to."""

from __future__ import annotations

from typing import Any

from apis.bus.base import Bus, Message, Subscription
from apis.bus.memory import MemoryHub


def unit_data(unit_id: str, *, rsoc: float = 50.0, mode: str = "0x0000",
              global_mode: str = "autonomous", local: str | None = None,
              grid_master: bool = False) -> dict[str, Any]:
    effective = global_mode if local is None or global_mode in ("stop", "manual") else local
    apis: dict[str, Any] = {
        "version": "3.0.0",
        "remaining_capacity_wh": 1000.0,
        "deal_interlock_capacity": 2,
        "operation_mode": {"global": global_mode, "local": local, "effective": effective},
    }
    if grid_master:
        apis["is_grid_master"] = True
    return {
        "apis": apis,
        "oesunit": {"id": unit_id, "display": f"House {unit_id[-1]}"},
        "battery": {"rsoc": rsoc, "battery_operation_status": 3},
        "dcdc": {
            "status": {"status": mode, "operationMode": "Waiting"},
            "meter": {"vg": 350.0, "ig": 0.0, "wg": 0.0, "wb": 0.0},
            "vdis": {"dvg": 350.0, "drg": 0.0},
            "param": {"dig": 0.0},
        },
        "time": "2026/01/01-10:00:00",
        "timestamp": 1767261600.0,
    }


def deal(deal_id: str = "d1", discharge: str = "E001", charge: str = "E002",
         **extra: Any) -> dict[str, Any]:
    out = {
        "unitId": discharge, "negotiationId": "n1", "requestUnitId": discharge,
        "acceptUnitId": charge, "type": "discharge", "chargeUnitId": charge,
        "dischargeUnitId": discharge, "dealGridCurrentA": 2.0, "dealAmountWh": 100.0,
        "dealId": deal_id, "createDateTime": "2026/01/01-10:00:00", "isMaster": True,
    }
    out.update(extra)
    return out


class FakeCluster:
    """Answers like a Grid Master, a Mediator and units would; records what it was sent."""

    def __init__(self, hub: MemoryHub | None,
                 unit_ids: tuple[str, ...] = ("E001", "E002", "E003"),
                 *, mode_handlers: bool = True, bus: Bus | None = None) -> None:
        self.hub = hub
        self.unit_ids = unit_ids
        self.mode_handlers = mode_handlers
        self.global_mode = "autonomous"
        self.local: dict[str, str | None] = dict.fromkeys(unit_ids)
        self.deals: list[dict[str, Any]] = []
        self.global_errors = False
        self.grid_master_up = True
        self.manual_commands: list[tuple[str, dict[str, Any]]] = []
        self.created: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.scrams = 0
        self.shutdowns: list[str] = []
        self.tick = 0  # answers to data.all so far; with `moving`, values change with it
        self.moving = False
        if bus is None:
            assert hub is not None
            bus = hub.connect("fake-cluster")
        self.bus: Bus = bus
        self._subs: list[Subscription] = []

    def data(self) -> dict[str, Any]:
        out = {
            u: unit_data(u, rsoc=40.0 + 10 * i, global_mode=self.global_mode,
                         local=self.local[u], grid_master=(i == 0),
                         mode="0x0014" if i == 0 else "0x0000")
            for i, u in enumerate(self.unit_ids)
        }
        if self.moving:
            for i, data in enumerate(out.values()):
                data["battery"]["rsoc"] = 20.0 + (7 * i + self.tick) % 70
                data["dcdc"]["meter"]["vg"] = 349.0 + ((3 * i + self.tick) % 20) / 10
                data["timestamp"] = 1767261600.0 + 5 * self.tick
        return out

    async def start(self) -> FakeCluster:
        bus = self.bus
        sub = bus.subscribe

        async def data_all(msg: Message) -> Any:
            if not self.grid_master_up:
                raise RuntimeError("Grid Master down")
            self.tick += 1
            return self.data()

        async def unit_ids(msg: Message) -> Any:
            return list(self.unit_ids)

        async def error_test(msg: Message) -> Any:
            if not self.grid_master_up:
                raise RuntimeError("Grid Master down")
            return self.global_errors

        async def deals(msg: Message) -> Any:
            return self.deals

        async def create(msg: Message) -> Any:
            if msg.payload.get("chargeUnitId") == msg.payload.get("dischargeUnitId"):
                raise ValueError("charge and discharge unit are the same")
            record = {**msg.payload, "dealId": f"injected-{len(self.created) + 1}"}
            self.created.append(record)
            return record

        async def error(msg: Message) -> Any:
            self.errors.append(msg.payload)
            return None

        async def scram(msg: Message) -> Any:
            self.scrams += 1
            return None

        self._subs += [
            await sub("apis.GridMaster.data.all", data_all),
            await sub("apis.GridMaster.unitId.all", unit_ids),
            await sub("apis.GridMaster.error.test", error_test),
            await sub("apis.Mediator.deals", deals),
            await sub("apis.Mediator.deal.create", create),
            await sub("apis.error", error),
            await sub("apis.Controller.scram", scram),
            await sub("apis.shutdown.all", self._shutdown_all),
        ]
        if self.mode_handlers:
            self._subs.append(await sub("apis.operationMode", self._global_mode))
        for unit_id in self.unit_ids:
            self._subs += [
                await sub(f"apis.{unit_id}.operationMode", self._local(unit_id)),
                await sub(f"apis.{unit_id}.Controller.control.manual", self._manual(unit_id)),
                await sub(f"apis.{unit_id}.Controller.data", self._unit_data(unit_id)),
                await sub(f"apis.{unit_id}.shutdown", self._shutdown(unit_id)),
            ]
        return self

    async def _global_mode(self, msg: Message) -> Any:
        if msg.headers.get("command") == "set":
            self.global_mode = msg.payload
            kv = await self.bus.kv("apis_state")
            await kv.put("operationMode", msg.payload)
            return "E001"
        return self.global_mode

    def _local(self, unit_id: str) -> Any:
        async def handler(msg: Message) -> Any:
            if msg.headers.get("command") == "set":
                self.local[unit_id] = msg.payload
            return self.local[unit_id]
        return handler

    def _manual(self, unit_id: str) -> Any:
        async def handler(msg: Message) -> Any:
            self.manual_commands.append((unit_id, msg.payload))
            return {"status": {"status": "0x0014"}}
        return handler

    def _unit_data(self, unit_id: str) -> Any:
        async def handler(msg: Message) -> Any:
            return self.data()[unit_id]
        return handler

    def _shutdown(self, unit_id: str) -> Any:
        async def handler(msg: Message) -> Any:
            self.shutdowns.append(unit_id)
            return "ok"
        return handler

    async def _shutdown_all(self, msg: Message) -> Any:
        self.shutdowns.append("all")
        return None

    async def set_stored_mode(self, mode: str) -> None:
        self.global_mode = mode
        kv = await self.bus.kv("apis_state")
        await kv.put("operationMode", mode)

    async def close(self) -> None:
        for s in self._subs:
            await s.unsubscribe()
        await self.bus.close()

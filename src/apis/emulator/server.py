"""HTTP service of the emulator: the original emulator's routes plus dcdc_v2 per unit.

Original routes (spec 2.2, same JSON shapes, so the original apis-main with
`systemType: dcdc_emulator` runs unchanged): `/get/unit/<id>`, `/get/dcdc/status/<id>`,
`/set/dcdc/<id>`, `/set/dcdc/voltage/<id>`, `/set/dcdc/current/<id>`, `/get/emu/<id>`,
`/get/dcdc/<id>`, `/set/emu/<id>?key=value`, `/get/acc`, `/set/acc/<n>`, `/add/unit`,
`/remove/unit`, `/get/log`. Ours, read only: `/get/conflicts`, every voltage conflict (two or
more references, one of them stiff, on one live part of the grid: the error the Grid Master
exists to prevent) and droop parallel (a CV transfer) seen so far. Each unit is also served
with the Device Driver Web API (`dcdc_v2`) under `/units/<id>/` (e.g. `/units/E001/all/get`).

Unlike the original: an unknown unit is 404 `{"err": ...}`, a bad request is 400
`{"err": ...}` (never a frozen clock), commands are checked against the unit's limits, and
`dvg` keeps its decimals. The dcdc_v2 routes of an unknown or removed unit are 404 too.
The acceleration is the loop's speed (`apis emulator --speed`), so
`/set/acc` only accepts the present value.

What changes the world (`/set/...`, `/add/unit`, `/remove/unit` and the dcdc_v2 commands) is
POST with the same query parameters; the original's GET forms (what the original apis-main
sends) only with `legacy_get=True` (`apis emulator --legacy-get`), else a GET of them is 405
naming the option. Every request passes the `RequestGuard` first, as the driver's (Host,
Origin, another site's fetches, body size).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from apis.emulator.driver import EmulatedDriver
from apis.emulator.world import World
from apis.hardware.driver import APIS_TIME_FORMAT, CommandRefused, DriverError
from apis.hardware.modes import ConverterMode
from apis.hardware.webapi import (
    add_command_route,
    create_driver_router,
    driver_guard_policy,
)
from apis.httpguard import HostNames, guard

log = logging.getLogger(__name__)

DEFAULT_PORT = 4390
DEFAULT_HOST = "127.0.0.1"
UPS_OUTPUT_VOLTAGE = 100.0  # V AC, only to express the house load as a current


class UnknownUnit(LookupError):
    pass


class BadRequest(ValueError):
    pass


def _number(query: Mapping[str, str], key: str) -> float | None:
    text = query.get(key)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{key} = {text!r} (must be a decimal number)") from None
    if not math.isfinite(value):
        raise BadRequest(f"{key} = {text!r} (must be a finite decimal number)")
    return value


def _required(query: Mapping[str, str], key: str) -> float:
    value = _number(query, key)
    if value is None:
        raise BadRequest(f"{key} (missing; required)")
    return value


class EmulatorService:
    """The world, one EmulatedDriver per unit, and the JSON shapes of the original."""

    def __init__(self, world: World, port: int = DEFAULT_PORT) -> None:
        self.world = world
        self.port = port
        self.drivers: dict[str, EmulatedDriver] = {
            u: EmulatedDriver(world, u) for u in world.unit_ids
        }

    def driver(self, unit_id: str) -> EmulatedDriver:
        if unit_id not in self.drivers or unit_id not in self.world.unit_ids:
            raise UnknownUnit(
                f"unit = {unit_id!r} (not emulated; units: {', '.join(self.world.unit_ids)})"
            )
        return self.drivers[unit_id]

    # -- JSON shapes -------------------------------------------------------------------

    def emu_json(self, unit_id: str) -> dict[str, Any]:
        w = self.world
        i = w.index(unit_id)
        vb = float(w.vb[i])
        power = float(w.battery_power_w[i])
        load = float(w.load_w[i])
        pv = float(w.pv_used_w[i])
        rsoc = float(w.rsoc[i])
        now = w.now()
        # Time the battery would last at the present net drain.
        drain = max(-power, 0.0)
        hours = float(w.energy_wh[i]) / drain if drain > 1e-9 else 0.0
        hours = min(hours, 99.0)
        return {
            "charge_discharge_power": abs(power),
            "rsoc": rsoc,
            "battery_rsoc": rsoc,
            "battery_voltage": vb,
            "battery_current": power / vb,
            "battery_operation_status": w.battery_data(unit_id).battery_operation_status,
            "pvc_charge_voltage": vb,
            "pvc_charge_current": pv / vb,
            "pvc_charge_power": pv,
            "ups_input_voltage": UPS_OUTPUT_VOLTAGE,
            "ups_output_voltage": UPS_OUTPUT_VOLTAGE,
            "ups_output_current": load / UPS_OUTPUT_VOLTAGE,
            "ups_output_power": load,
            "ups_output_frequency": 60,
            "ups_operation_mode": {
                "parameter": 80, "mode": w.ups_mode(unit_id), "stop_mode": 2,
            },
            "ups_operation_schedule": 1,
            "system_time": {
                "year": now.year, "month": now.month, "day": now.day,
                "hour": now.hour, "minute": now.minute,
            },
            "dischargeable_time": {"hour": int(hours), "minute": int(hours * 60) % 60},
        }

    def dcdc_json(self, unit_id: str) -> dict[str, Any]:
        """The complete `dcdc` object (with `powermeter`)."""
        w = self.world
        i = w.index(unit_id)
        out = w.converter_data(unit_id).to_json()
        out["powermeter"] = {
            "p1": float(w.load_w[i]),  # house consumption
            "p2": float(w.bought_w[i]),  # AC power the storage system draws
            "v1": UPS_OUTPUT_VOLTAGE, "i1": float(w.load_w[i]) / UPS_OUTPUT_VOLTAGE,
            "kwh1": float(w.load_wh[i]) / 1000.0, "kwh2": float(w.bought_wh[i]) / 1000.0,
        }
        return out

    def reduced_dcdc_json(self, unit_id: str) -> dict[str, Any]:
        """The `dcdc` part of `/get/unit`: the keys apis-main reads."""
        full = self.world.converter_data(unit_id).to_json()
        status = full["status"]
        return {
            "status": {k: status[k] for k in ("status", "alarmState", "operationMode")},
            "meter": full["meter"],
            "vdis": full["vdis"],
            "param": {"dig": full["param"]["dig"]},
        }

    def oesunit_json(self, unit_id: str) -> dict[str, Any]:
        number = self.world.index(unit_id) + 1
        return {
            "id": unit_id, "display": f"Emulated_{unit_id}",
            "ip": f"localhost:{self.port}/{unit_id}", "ipv6_ll": "", "ipv6_g": "", "mac": "",
            "sn": str(number), "on": True, "budo": True,
        }

    def time_text(self) -> str:
        return self.world.now().strftime(APIS_TIME_FORMAT)

    def unit_json(self, unit_id: str, complete: bool = False) -> dict[str, Any]:
        return {
            "emu": self.emu_json(unit_id),
            "dcdc": self.dcdc_json(unit_id) if complete else self.reduced_dcdc_json(unit_id),
            "oesunit": self.oesunit_json(unit_id),
            "time": self.time_text(),
        }

    def log_json(self) -> dict[str, Any]:
        return {u: self.unit_json(u, complete=True) for u in self.world.unit_ids}

    # -- /set/emu --------------------------------------------------------------------

    def set_emu(self, unit_id: str, query: Mapping[str, str]) -> None:
        """Apply `key=value` pairs; every key is checked before any is applied."""
        w = self.world
        w.index(unit_id)
        known = {
            "rsoc", "battery_operation_status", "pvc_charge_power", "ups_output_power",
        }
        values: dict[str, float] = {}
        for key in query:
            if key not in known:
                raise BadRequest(f"key = {key!r} (not settable; one of {sorted(known)})")
            values[key] = _required(query, key)
        if not values:
            raise BadRequest(f"no key given (one of {sorted(known)})")
        if "battery_operation_status" in values and values["battery_operation_status"] not in (
            0, 3,
        ):
            raise BadRequest(
                f"battery_operation_status = {values['battery_operation_status']} (must be 0 or 3)"
            )
        for key in ("rsoc",):
            if key in values and not 0.0 <= values[key] <= 100.0:
                raise BadRequest(f"rsoc = {values[key]} (must be within 0..100)")
        for key in ("pvc_charge_power", "ups_output_power"):
            if key in values and values[key] < 0:
                raise BadRequest(f"{key} = {values[key]} (must be >= 0)")
        if "rsoc" in values:
            w.set_rsoc(unit_id, values["rsoc"])
        if "battery_operation_status" in values:
            w.set_sharing_permitted(unit_id, values["battery_operation_status"] == 3)
        if "pvc_charge_power" in values or "ups_output_power" in values:
            i = w.index(unit_id)
            pv = values.get("pvc_charge_power")
            load = values.get("ups_output_power")
            keep_pv = None if math.isnan(w.pv_override_w[i]) else float(w.pv_override_w[i])
            keep_load = (
                None if math.isnan(w.load_override_w[i]) else float(w.load_override_w[i])
            )
            w.set_house_override(
                unit_id, pv if pv is not None else keep_pv, load if load is not None else keep_load
            )


def _speed() -> float:
    loop = asyncio.get_running_loop()
    speed = getattr(loop, "speed", 1.0)
    return float(speed) if isinstance(speed, (int, float)) else 1.0


async def _answer(work: Callable[[], Awaitable[Any]]) -> JSONResponse:
    try:
        return JSONResponse(await work())
    except UnknownUnit as error:
        return JSONResponse({"err": str(error)}, status_code=404)
    except (BadRequest, CommandRefused, DriverError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return JSONResponse({"err": str(message)}, status_code=400)
    except Exception as error:  # keep serving whatever happens
        log.exception("emulator request failed")
        return JSONResponse({"err": f"{type(error).__name__}: {error}"}, status_code=400)


def create_emulator_app(
    world: World, port: int = DEFAULT_PORT, *, legacy_get: bool = False,
    allowed_hosts: HostNames | None = None,
) -> FastAPI:
    """The emulator's HTTP app for `world` (both route sets), behind the `RequestGuard`
    (names besides the server's own: `allowed_hosts`). Commands are POST; with
    `legacy_get` also GET, as the original emulator serves them."""
    service = EmulatorService(world, port)
    app = FastAPI(title="APIS emulator", docs_url=None, redoc_url=None)
    app.state.emulator = service
    commands = APIRouter()

    def command(path: str) -> Callable[[Callable[..., Awaitable[JSONResponse]]],
                                      Callable[..., Awaitable[JSONResponse]]]:
        def add(route: Callable[..., Awaitable[JSONResponse]]
                ) -> Callable[..., Awaitable[JSONResponse]]:
            add_command_route(commands, path, route, legacy_get=legacy_get)
            return route

        return add

    mounted: set[str] = set()

    def mount_driver(unit_id: str) -> None:
        if unit_id in mounted:  # removed, then added again: the routes are still there
            return
        driver = service.drivers[unit_id]
        app.include_router(create_driver_router(driver, driver.limits, legacy_get=legacy_get),
                           prefix=f"/units/{unit_id}")
        mounted.add(unit_id)

    for unit in world.unit_ids:
        mount_driver(unit)

    @app.middleware("http")
    async def unknown_unit_routes(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # dcdc_v2 routes of a unit that is not (or no longer) emulated: 404 JSON.
        parts = request.url.path.split("/")
        if len(parts) > 2 and parts[1] == "units" and parts[2] not in service.drivers:
            return JSONResponse(
                {"err": f"unit = {parts[2]!r} (not emulated; units: "
                 f"{', '.join(world.unit_ids)})"},
                status_code=404,
            )
        return await call_next(request)

    @app.get("/get/unit/{unit_id}")
    async def get_unit(unit_id: str) -> JSONResponse:
        async def work() -> dict[str, Any]:
            await service.driver(unit_id).read()  # steps to now; honours injected faults
            return service.unit_json(unit_id)

        return await _answer(work)

    @app.get("/get/dcdc/status/{unit_id}")
    async def get_dcdc_status(unit_id: str) -> JSONResponse:
        async def work() -> dict[str, Any]:
            await service.driver(unit_id).read_converter()
            dcdc = service.reduced_dcdc_json(unit_id)
            return {"status": dcdc["status"], "meter": dcdc["meter"]}

        return await _answer(work)

    @command("/set/dcdc/{unit_id}")
    async def set_dcdc(unit_id: str, request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            driver = service.driver(unit_id)
            q = request.query_params
            if not q.get("mode"):
                raise BadRequest("mode (missing; required)")
            mode = ConverterMode.from_code(q["mode"])
            dvg = _required(q, "dvg")
            dig = _required(q, "dig")
            drg = _number(q, "drg")
            for key in ("p1", "p2"):  # the original's power-meter overrides: accepted, unused
                _number(q, key)
            if drg is None:
                drg = float(world.drg[world.index(unit_id)])
            await driver.set(mode, dvg, dig, drg)
            return service.reduced_dcdc_json(unit_id)

        return await _answer(work)

    @command("/set/dcdc/voltage/{unit_id}")
    async def set_dcdc_voltage(unit_id: str, request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            driver = service.driver(unit_id)
            q = request.query_params
            dvg = _required(q, "dvg")
            drg = _number(q, "drg")
            if drg is None:
                drg = float(world.drg[world.index(unit_id)])
            data = (await driver.set_voltage(dvg, drg)).to_json()
            return {"meter": data["meter"], "vdis": data["vdis"]}

        return await _answer(work)

    @command("/set/dcdc/current/{unit_id}")
    async def set_dcdc_current(unit_id: str, request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            driver = service.driver(unit_id)
            dig = _required(request.query_params, "dig")
            data = (await driver.set_current(dig)).to_json()
            return {"meter": data["meter"], "param": data["param"]}

        return await _answer(work)

    @app.get("/get/emu/{unit_id}")
    async def get_emu(unit_id: str) -> JSONResponse:
        async def work() -> dict[str, Any]:
            await service.driver(unit_id).read()
            return service.emu_json(unit_id)

        return await _answer(work)

    @app.get("/get/dcdc/{unit_id}")
    async def get_dcdc(unit_id: str) -> JSONResponse:
        async def work() -> dict[str, Any]:
            await service.driver(unit_id).read()
            return service.dcdc_json(unit_id)

        return await _answer(work)

    @command("/set/emu/{unit_id}")
    async def set_emu(unit_id: str, request: Request) -> JSONResponse:
        async def work() -> dict[str, Any]:
            service.driver(unit_id)
            world.sync()
            service.set_emu(unit_id, request.query_params)
            return service.log_json()

        return await _answer(work)

    @app.get("/get/log")
    async def get_log() -> JSONResponse:
        async def work() -> dict[str, Any]:
            world.sync()
            return service.log_json()

        return await _answer(work)

    @app.get("/get/conflicts")
    async def get_conflicts() -> JSONResponse:
        async def work() -> dict[str, Any]:
            world.sync()
            return {
                "active": world.voltage_conflict_active,
                "voltageConflicts": [
                    {
                        "unitIds": list(c.unit_ids),
                        "startS": c.time_s,
                        "endS": c.end_s,
                        "fightCurrentA": c.fight_current_a,
                    }
                    for c in world.voltage_conflicts
                ],
                "droopParallels": [
                    {
                        "unitIds": list(p.unit_ids),
                        "startS": p.time_s,
                        "endS": p.end_s,
                        "circulatingCurrentA": p.circulating_current_a,
                    }
                    for p in world.droop_parallels
                ],
            }

        return await _answer(work)

    @app.get("/get/acc")
    async def get_acc() -> JSONResponse:
        return JSONResponse(_speed())

    @command("/set/acc/{value}")
    async def set_acc(value: str) -> JSONResponse:
        async def work() -> float:
            try:
                wanted = float(value)
            except ValueError:
                raise BadRequest(f"acc = {value!r} (must be a number)") from None
            speed = _speed()
            if wanted != speed:
                raise BadRequest(
                    f"acc = {value} (fixed at {speed} by the loop's clock; restart with --speed)"
                )
            return speed

        return await _answer(work)

    @command("/add/unit")
    async def add_unit() -> JSONResponse:
        async def work() -> dict[str, Any]:
            unit = world.add_unit()
            service.drivers[unit] = EmulatedDriver(world, unit)
            mount_driver(unit)
            return service.log_json()

        return await _answer(work)

    @command("/remove/unit")
    async def remove_unit() -> JSONResponse:
        async def work() -> dict[str, Any]:
            unit = world.remove_unit()
            # Its dcdc_v2 routes stay mounted; the middleware answers them 404.
            service.drivers.pop(unit, None)
            return service.log_json()

        return await _answer(work)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        rows = "".join(
            f'<li><a href="/get/unit/{u}">{u}</a> · <a href="/units/{u}/all/get">dcdc_v2</a></li>'
            for u in world.unit_ids
        )
        return f"<!doctype html><title>APIS emulator</title><h1>Units</h1><ul>{rows}</ul>"

    app.include_router(commands)
    guard(app, driver_guard_policy(allowed_hosts))
    return app

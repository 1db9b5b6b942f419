"""The Device Driver Web API: a server for any DeviceDriver, and its HTTP client.

Server (`create_driver_app`, `create_driver_router`): the `dcdc_v2` routes apis-main uses
and the original driver's legacy `dcdc_v1` aliases on the same driver and set-point
cache: `/remote/get` (`/dcdc/get` plus `powermeter`), `/remote/get/status`, `/remote/set`
(always a full set), `/remote/set/voltage`, `/remote/set/current`, `/1/log/data` (the battery
log dict) and `/remote/ioctl/get`; `/remote/ioctl/clr_alarm` only for a driver that can clear
alarms (`AlarmClearing`). `/remote/ioctl/set` (re-pushing the converter's protection and battery
parameters) is not served. Success is 200 with a JSON object; every failure is 400 with
`{"err": reason}`. Unlike the original driver, every converter command is checked against
`CommandLimits` before it reaches the driver; a refused command's body also carries
`"refused": true`.

Reads are GET. What changes the converter or the driver (`/dcdc/set`, `/remote/set`,
`/remote/set/voltage`, `/remote/set/current`, `/remote/ioctl/clr_alarm`, `/essx/hello`) is
POST, with the same query parameters: a web page can make a browser send a GET to 127.0.0.1
from an image tag, but not a POST without an `Origin` that the `RequestGuard` refuses. The
original apis-main sends them as GET; `legacy_get=True` (`apis driver --legacy-get`) serves
those GET forms too, otherwise a GET of them is 405 naming the option. Every request passes
the `RequestGuard` (Host, Origin, another site's fetches, body size) first.

Client (`DeviceDriverClient`): implements DeviceDriver over HTTP, with the `dcdc_v2` routes or
the original emulator's per-unit routes (`dcdc_emulator`), a per-request timeout and a total
number of attempts, as apis-main's `requestTimeoutMsec` and `retryLimit`. It sends commands
as POST; a server that answers 405 with GET allowed (the original driver and emulator serve
only GET) gets them as GET from then on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from apis.hardware.driver import (
    AlarmClearing,
    BatteryData,
    CommandLimits,
    CommandRefused,
    ConverterData,
    DeviceDriver,
    DriverError,
    DriverVersion,
    UnitData,
    battery_data_from_json,
    converter_data_from_json,
    driver_version_from_json,
    parse_apis_time,
    unit_data_from_flat_json,
)
from apis.hardware.modes import ConverterMode
from apis.httpguard import GuardPolicy, HostNames, guard

log = logging.getLogger(__name__)

DEFAULT_PORT = 4380
DEFAULT_HOST = "127.0.0.1"
# Commands carry their values in the query; no route reads a body.
MAX_BODY_BYTES = 64 * 1024
LEGACY_GET_OPTION = "--legacy-get"


# --- server -----------------------------------------------------------------------------------


@dataclass
class _SetCache:
    """The last accepted set-points: a partial `/dcdc/set` fills its gaps from here."""

    mode: ConverterMode | None = None
    dvg: float | None = None
    dig: float | None = None
    drg: float | None = None

    def clear(self) -> None:
        self.mode = self.dvg = self.dig = self.drg = None


def _err(message: str, *, refused: bool = False) -> JSONResponse:
    body: dict[str, Any] = {"err": message}
    if refused:
        body["refused"] = True
    return JSONResponse(body, status_code=400)


def _mode(text: str) -> ConverterMode:
    try:
        return ConverterMode.from_code(text)
    except ValueError as error:  # from_code names the bad mode
        raise CommandRefused(str(error)) from None


def _required(q: dict[str, str], name: str) -> str:
    if name not in q:
        raise CommandRefused(f"No {name}")
    return q[name]


# The AC power meters: the DeviceDriver protocol has none, and the original driver answers
# zeros for all of them too.
_POWERMETER_ZEROS: dict[str, float] = dict.fromkeys(("p1", "p2", "v1", "i1", "kwh1", "kwh2"), 0.0)

# `/1/log/data`: the original copies these from its configuration ("provisional" values).
LOG_BATTERY_VOLTAGE = 52.0
LOG_BATTERY_CURRENT = 20.0


def battery_log(battery: BatteryData) -> dict[str, Any]:
    """The original driver's full battery log dict (`/1/log/data`).

    Only `rsoc`, `battery_rsoc` (the same value) and `battery_operation_status` are read from
    the battery. Everything else is a placeholder with the value the original answers:
    `system_time` and `dischargeable_time` all zeros, `battery_voltage` and `battery_current`
    the fixed `LOG_BATTERY_VOLTAGE` / `LOG_BATTERY_CURRENT` (not measurements), their product
    as `charge_discharge_power`, `battery_status`, `battery_warning`,
    `ups_operation_schedule` and `ups_operation_mode` zeros. `battery_comm_err` is 0: a
    failed battery read is not a 200 reply here but a 400 `{"err": ...}`.
    """
    return {
        "system_time": {"year": 0, "month": 0, "day": 0, "hour": 0, "minute": 0},
        "rsoc": battery.rsoc,
        "dischargeable_time": {"hour": 0, "minute": 0},
        "battery_voltage": LOG_BATTERY_VOLTAGE,
        "battery_current": LOG_BATTERY_CURRENT,
        "battery_rsoc": battery.rsoc,
        "battery_status": 0,
        "battery_warning": 0,
        "battery_operation_status": battery.battery_operation_status,
        "battery_comm_err": 0,
        "charge_discharge_power": LOG_BATTERY_VOLTAGE * LOG_BATTERY_CURRENT,
        "ups_operation_schedule": 0,
        "ups_operation_mode": {"mode": 0, "parameter": 0, "stop_mode": 0},
    }


def _with_powermeter(data: ConverterData) -> dict[str, Any]:
    return {**data.to_json(), "powermeter": dict(_POWERMETER_ZEROS)}


def _decimal(name: str, text: str) -> float:
    """A query value as a number; refuse text, NaN and infinities naming the parameter."""
    try:
        value = float(text)
    except ValueError:
        raise CommandRefused(f"{name} = {text!r} (must be a decimal number)") from None
    if not math.isfinite(value):
        raise CommandRefused(f"{name} = {text!r} (must be a finite decimal number)")
    return value


async def _answer(work: Callable[[], Awaitable[dict[str, Any]]]) -> JSONResponse:
    try:
        return JSONResponse(await work())
    except CommandRefused as error:
        return _err(str(error), refused=True)
    except DriverError as error:
        return _err(str(error))
    except Exception as error:  # the original answers 400 for anything; keep serving
        log.exception("driver request failed")
        return _err(f"{type(error).__name__}: {error}")


def get_refused(path: str) -> JSONResponse:
    """The answer to a GET of a command route when the GET forms are not served."""
    return JSONResponse(
        {"err": f"GET {path} (a command: send it as POST; the GET form is served only with "
                f"{LEGACY_GET_OPTION}, for the original apis-main)"},
        status_code=405, headers={"Allow": "POST"},
    )


def add_command_route(
    router: APIRouter, path: str, route: Callable[..., Awaitable[JSONResponse]], *,
    legacy_get: bool, name: str | None = None,
) -> None:
    """`route` as POST, and as GET only with `legacy_get` (else GET is a 405 saying why)."""
    name = name or path
    router.add_api_route(path, route, methods=["POST", "GET"] if legacy_get else ["POST"],
                         name=name)
    if not legacy_get:
        async def refuse(request: Request) -> JSONResponse:
            return get_refused(request.url.path)

        router.add_api_route(path, refuse, methods=["GET"], name=f"{name} (GET refused)",
                             include_in_schema=False)


def create_driver_router(
    driver: DeviceDriver, limits: CommandLimits, *, legacy_get: bool = False
) -> APIRouter:
    """The `dcdc_v2` routes and their `dcdc_v1` aliases for one unit, with one set-point cache.

    Commands are POST; with `legacy_get` also GET, as the original driver serves them.
    `/remote/ioctl/clr_alarm` is served only when `driver` implements `AlarmClearing`.
    """
    router = APIRouter()
    cache = _SetCache()

    async def full_set(q: dict[str, str]) -> dict[str, Any]:
        mode = _mode(q["mode"]) if "mode" in q else cache.mode
        if mode is None:
            raise CommandRefused("No operationMode")
        dig = _decimal("dig", q["dig"]) if "dig" in q else cache.dig
        if dig is None:
            raise CommandRefused("No dig")
        dvg = _decimal("dvg", q["dvg"]) if "dvg" in q else cache.dvg
        if dvg is None:
            raise CommandRefused("No dvg")
        drg = _decimal("drg", q["drg"]) if "drg" in q else (cache.drg or 0.0)
        limits.check(mode=mode, dvg=dvg, dig=dig, drg=drg)
        data = await driver.set(mode, dvg, dig, drg)
        cache.mode, cache.dvg, cache.dig, cache.drg = mode, dvg, dig, drg
        return data.to_json()

    async def current_set(q: dict[str, str]) -> dict[str, Any]:
        dig = _decimal("dig", _required(q, "dig"))
        if cache.mode is None:
            raise CommandRefused("No operationMode")
        if cache.dvg is None:
            raise CommandRefused("No dvg")
        limits.check(dig=dig)
        data = await driver.set_current(dig)
        cache.dig = dig
        return {"meter": data.meter.to_json(), "param": data.param.to_json()}

    async def voltage_set(q: dict[str, str]) -> dict[str, Any]:
        dvg = _decimal("dvg", _required(q, "dvg"))
        drg = _decimal("drg", q["drg"]) if "drg" in q else (cache.drg or 0.0)
        if cache.mode is None:
            raise CommandRefused("No operationMode")
        if cache.dig is None:
            raise CommandRefused("No dig")
        limits.check(dvg=dvg, drg=drg)
        data = await driver.set_voltage(dvg, drg)
        cache.dvg, cache.drg = dvg, drg
        return {"meter": data.meter.to_json(), "vdis": data.vdis.to_json()}

    async def dispatched_set(q: dict[str, str]) -> dict[str, Any]:
        """`/dcdc/set`: current-only, voltage-only or full set by the keys present."""
        if "dig" in q and not q.keys() & {"dvg", "drg", "mode"}:
            return await current_set(q)
        if "dvg" in q and not q.keys() & {"dig", "mode"}:
            return await voltage_set(q)
        return await full_set(q)

    def set_route(path: str, setter: Callable[[dict[str, str]], Awaitable[dict[str, Any]]]) -> None:
        async def route(request: Request) -> JSONResponse:
            q = dict(request.query_params)
            return await _answer(lambda: setter(q))

        add_command_route(router, path, route, legacy_get=legacy_get)

    set_route("/dcdc/set", dispatched_set)
    set_route("/remote/set", full_set)  # the legacy alias never dispatches
    set_route("/remote/set/voltage", voltage_set)
    set_route("/remote/set/current", current_set)

    def read_route(path: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        async def route() -> JSONResponse:
            return await _answer(work)

        router.add_api_route(path, route, methods=["GET"], name=path)

    async def dcdc_get() -> dict[str, Any]:
        return (await driver.read_converter()).to_json()

    async def remote_get() -> dict[str, Any]:
        return _with_powermeter(await driver.read_converter())

    async def dcdc_get_status() -> dict[str, Any]:
        data = await driver.read_converter()
        return {"status": data.status.to_json(), "meter": data.meter.to_json()}

    async def battery_get() -> dict[str, Any]:
        return (await driver.read()).battery.to_json()

    async def log_data() -> dict[str, Any]:
        return battery_log((await driver.read()).battery)

    async def all_get() -> dict[str, Any]:
        return (await driver.read()).to_flat_json()

    async def ioctl_get() -> dict[str, Any]:
        unit = await driver.read()
        return {**battery_log(unit.battery), **_with_powermeter(unit.dcdc)}

    async def version_get() -> dict[str, Any]:
        return (await driver.version()).to_json()

    read_route("/dcdc/get", dcdc_get)
    read_route("/remote/get", remote_get)
    read_route("/dcdc/get/status", dcdc_get_status)
    read_route("/remote/get/status", dcdc_get_status)
    read_route("/battery/get", battery_get)
    read_route("/1/log/data", log_data)
    read_route("/all/get", all_get)
    read_route("/remote/ioctl/get", ioctl_get)
    read_route("/version/get", version_get)

    if isinstance(driver, AlarmClearing):
        clearing: AlarmClearing = driver

        async def cleared() -> dict[str, Any]:
            return _with_powermeter(await clearing.clear_alarm())

        async def clear_alarm() -> JSONResponse:
            return await _answer(cleared)

        add_command_route(router, "/remote/ioctl/clr_alarm", clear_alarm, legacy_get=legacy_get)

    async def hello() -> JSONResponse:
        cache.clear()
        return JSONResponse({"message": "hello world"})

    add_command_route(router, "/essx/hello", hello, legacy_get=legacy_get)
    return router


def driver_guard_policy(allowed_hosts: HostNames | None = None) -> GuardPolicy:
    """The `RequestGuard` policy of the driver and the emulator: APIs for programs."""
    return GuardPolicy(names=allowed_hosts or HostNames(), max_body_bytes=MAX_BODY_BYTES,
                       refuse_cross_site=True, error_key="err")


def create_driver_app(
    driver: DeviceDriver, limits: CommandLimits, *, legacy_get: bool = False,
    allowed_hosts: HostNames | None = None,
) -> FastAPI:
    """A FastAPI app serving `driver` with the `dcdc_v2` routes and their legacy aliases,
    behind the `RequestGuard` (names besides the server's own: `allowed_hosts`)."""
    app = FastAPI(title="APIS Device Driver", docs_url=None, redoc_url=None)
    app.include_router(create_driver_router(driver, limits, legacy_get=legacy_get))
    guard(app, driver_guard_policy(allowed_hosts))
    return app


# --- client -----------------------------------------------------------------------------------

RouteSet = Literal["dcdc_v2", "dcdc_emulator"]


def _number_text(value: float) -> str:
    return repr(float(value))


class DeviceDriverClient:
    """A DeviceDriver over HTTP: the unit software's view of a driver or the emulator.

    `routes="dcdc_v2"` talks to this module's server (or the original dcdc_batt_comm);
    `routes="dcdc_emulator"` to the original emulator's per-unit routes, which need `unit_id`.
    Each request waits at most `request_timeout_msec`; a failure is retried until
    `retry_limit` attempts in total were made. A refused command is not retried. Commands are
    POST until the server answers one with 405 and GET allowed (the original driver and
    emulator, which serve only GET): then GET, at once and from then on.
    """

    def __init__(
        self,
        base_url: str,
        *,
        routes: RouteSet = "dcdc_v2",
        unit_id: str | None = None,
        request_timeout_msec: int = 5000,
        retry_limit: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if routes == "dcdc_emulator" and not unit_id:
            raise ValueError("unit_id missing (the dcdc_emulator routes need it)")
        if retry_limit < 1:
            raise ValueError(f"retry_limit = {retry_limit} (must be >= 1)")
        if request_timeout_msec <= 0:
            raise ValueError(f"request_timeout_msec = {request_timeout_msec} (must be > 0)")
        self.routes = routes
        self.unit_id = unit_id
        self.retry_limit = retry_limit
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=request_timeout_msec / 1000, transport=transport
        )
        self._converter: ConverterData | None = None
        self.command_method = "POST"

    async def __aenter__(self) -> DeviceDriverClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def last_converter_data(self) -> ConverterData | None:
        """The converter data as merged from every reply so far."""
        return self._converter

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self._request("GET", path, params)

    async def _command(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return await self._request(self.command_method, path, params)

    def _serves_only_get(self, response: httpx.Response) -> bool:
        allow = response.headers.get("allow")
        return response.status_code == 405 and (
            allow is None or "GET" in allow.upper().replace(" ", "").split(","))

    async def _request(
        self, method: str, path: str, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        last = ""
        for _ in range(self.retry_limit):
            try:
                response = await self._http.request(method, path, params=params)
                if method == "POST" and self._serves_only_get(response):
                    log.info("%s%s serves commands only as GET (an original driver or "
                             "emulator): sending them as GET", self._http.base_url, path)
                    method = self.command_method = "GET"
                    response = await self._http.request(method, path, params=params)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
                continue
            try:
                body = response.json()
            except ValueError:
                body = None
            if response.status_code == 200 and isinstance(body, dict):
                return body
            reason = body.get("err") if isinstance(body, dict) else None
            last = f"HTTP {response.status_code}: {reason or response.text[:200]}"
            if isinstance(body, dict) and body.get("refused"):
                raise CommandRefused(str(reason))
        raise DriverError(
            f"Communication failed with Device Driver: {method} {path} failed "
            f"{self.retry_limit} times, last: {last}"
        )

    def _merge(self, obj: dict[str, Any]) -> ConverterData:
        self._converter = converter_data_from_json(obj, self._converter)
        return self._converter

    async def _merge_partial(self, obj: dict[str, Any]) -> ConverterData:
        """Partial replies lack `status`; learn it once if nothing was read before."""
        if self._converter is None and "status" not in obj:
            await self.read_converter()
        return self._merge(obj)

    async def read(self) -> UnitData:
        if self.routes == "dcdc_v2":
            body = await self._get("/all/get")
            data = unit_data_from_flat_json(body, datetime.now(), self._converter)
            self._converter = data.dcdc
            return data
        body = await self._get(f"/get/unit/{self.unit_id}")
        if not body:
            raise DriverError(f"unit_id = {self.unit_id!r} (unknown to the emulator)")
        emu = body.get("emu")
        if not isinstance(emu, dict):
            raise DriverError(f"emu = {emu!r} (must be a JSON object)")
        battery: BatteryData = battery_data_from_json(emu)
        dcdc = self._merge(body.get("dcdc", {}))
        time = parse_apis_time(body["time"]) if "time" in body else datetime.now()
        return UnitData(dcdc=dcdc, battery=battery, time=time)

    async def read_converter(self) -> ConverterData:
        if self.routes == "dcdc_v2":
            return self._merge(await self._get("/dcdc/get/status"))
        body = await self._get(f"/get/dcdc/status/{self.unit_id}")
        if not body:
            raise DriverError(f"unit_id = {self.unit_id!r} (unknown to the emulator)")
        return self._merge(body)

    async def set(self, mode: ConverterMode, dvg: float, dig: float, drg: float) -> ConverterData:
        params = {"mode": mode.code, "dvg": _number_text(dvg), "dig": _number_text(dig),
                  "drg": _number_text(drg)}
        path = "/dcdc/set" if self.routes == "dcdc_v2" else f"/set/dcdc/{self.unit_id}"
        return self._merge(await self._command(path, params))

    async def set_voltage(self, dvg: float, drg: float) -> ConverterData:
        params = {"dvg": _number_text(dvg), "drg": _number_text(drg)}
        path = "/dcdc/set" if self.routes == "dcdc_v2" else f"/set/dcdc/voltage/{self.unit_id}"
        return await self._merge_partial(await self._command(path, params))

    async def set_current(self, dig: float) -> ConverterData:
        params = {"dig": _number_text(dig)}
        path = "/dcdc/set" if self.routes == "dcdc_v2" else f"/set/dcdc/current/{self.unit_id}"
        return await self._merge_partial(await self._command(path, params))

    async def version(self) -> DriverVersion:
        if self.routes == "dcdc_emulator":
            # The emulator has no version route; apis-main skips negotiation with it.
            return DriverVersion("2.0", "dcdc_emulator")
        return driver_version_from_json(await self._get("/version/get"))

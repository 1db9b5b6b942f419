"""The operations web app: a JSON API under `/api`, live updates over server-sent events,
the browser UI (static files under `/static`, page at `/`), and the original apis-web and
main_controller route names for tools that still call them.

    app = create_app(bus, token="secret", world=world)   # world: optional, demo only

Reading needs nothing; every action needs the control token: header
``Authorization: Bearer <token>`` or ``X-APIS-Token: <token>``, or (for the original tools,
which only know URLs) the query parameter ``token``. Who acted is the ``X-APIS-Operator``
header when given, else ``web <client address>``. The page gets the token by a one-time
login link (`apis.web.token`). Before any of that, the `RequestGuard` refuses a foreign Host
or Origin and a body over `MAX_BODY_BYTES` (413 without reading it, so before the token is
checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.responses import StreamingResponse

from apis.bus.base import Bus
from apis.httpguard import GuardPolicy, HostNames, guard
from apis.store.history import HistoryStore
from apis.web.records import RecordsReader, records_router
from apis.web.service import (
    GLOBAL_MODES,
    ActionRefused,
    ClusterUnavailable,
    Operations,
    budo_deal,
    loop_seconds,
)
from apis.web.token import LoginCodes

if TYPE_CHECKING:
    from apis.emulator.world import World

STATIC_DIR = Path(str(resources.files("apis.web") / "static"))
KEEPALIVE_REAL_S = 15.0
COMPAT_VERBS = {"active": "autonomous", "quiet": "heteronomous", "stop": "stop",
                "manual": "manual"}
DCDC_CODES = {"0x0000": "WAIT", "0x0014": "VOLTAGE_REFERENCE", "0x0041": "CHARGE",
              "0x0002": "DISCHARGE"}

# Bodies are small JSON objects (a deal, an error); anything larger is refused unread.
MAX_BODY_BYTES = 64 * 1024
# A Soft Stop schedule further ahead is a typo, and beyond year 9999 no clock can show it.
SCHEDULE_MAX_AHEAD = timedelta(days=3660)
# Offsets in use on Earth are -12:00 .. +14:00.
MAX_UTC_OFFSET = timedelta(hours=14)

GlobalMode = Literal["autonomous", "heteronomous", "stop", "manual"]
LocalMode = Literal["heteronomous", "stop"] | None


# ---- request bodies ----------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GlobalModeIn(_Body):
    mode: GlobalMode = Field(description="autonomous (Run), heteronomous (Soft Stop), "
                             "stop (Force Stop) or manual (Manual)")


class LocalModeIn(_Body):
    mode: LocalMode = Field(description="null (follow the global mode), heteronomous or stop")


class DcdcIn(_Body):
    mode: Literal["WAIT", "VOLTAGE_REFERENCE", "CHARGE", "DISCHARGE"]
    gridVoltageV: float | None = Field(None, gt=0, le=1000, description="dvg (CV, CC)")
    gridCurrentA: float | None = Field(None, ge=0, le=100, description="dig: CV limit, CC "
                                       "current")

    @model_validator(mode="after")
    def _needs(self) -> DcdcIn:
        if self.mode != "WAIT" and self.gridCurrentA is None:
            raise ValueError(f"gridCurrentA is required for mode {self.mode}")
        if self.mode == "VOLTAGE_REFERENCE" and self.gridVoltageV is None:
            raise ValueError("gridVoltageV is required for mode VOLTAGE_REFERENCE")
        return self

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.gridVoltageV is not None:
            out["gridVoltageV"] = self.gridVoltageV
        if self.gridCurrentA is not None:
            out["gridCurrentA"] = self.gridCurrentA
        return out


class ScheduleIn(_Body):
    unitId: str | None = Field(None, description="null: the whole cluster")
    softStopAt: datetime = Field(description="ISO 8601 date-time; local time of the server "
                                 "when it has no offset; in the next 3660 days")

    @field_validator("softStopAt")
    @classmethod
    def _in_range(cls, at: datetime) -> datetime:
        offset = at.utcoffset()
        if offset is not None and abs(offset) > MAX_UTC_OFFSET:
            raise ValueError(f"softStopAt = {at.isoformat()!r} (UTC offset {at:%z} is not "
                             "one of Earth's: must be within -12:00..+14:00)")
        now = datetime.now(UTC)
        latest = now + SCHEDULE_MAX_AHEAD
        when = at
        if at.tzinfo is None:  # the server's local time
            try:
                when = at.astimezone()
            except (OverflowError, ValueError, OSError):  # at an end of the calendar
                when = at.replace(tzinfo=UTC)
        # Aware datetimes compare without conversion, so nothing overflows here.
        if when <= now:
            raise ValueError(f"softStopAt = {at.isoformat()!r} (must be in the future: "
                             f"after {now.isoformat(timespec='seconds')})")
        if when > latest:
            raise ValueError(f"softStopAt = {at.isoformat()!r} (must be at most "
                             f"{SCHEDULE_MAX_AHEAD.days} days ahead: before "
                             f"{latest.isoformat(timespec='seconds')})")
        return at

    def epoch(self) -> float:
        return self.softStopAt.astimezone(UTC).timestamp()


class LoginIn(_Body):
    code: str = Field(min_length=1, max_length=200, description="the code of a login link")


class ErrorIn(_Body):
    unitId: str = Field(min_length=1)
    category: Literal["HARDWARE", "FRAMEWORK", "LOGIC", "USER"]
    extent: Literal["LOCAL", "GLOBAL"]
    level: Literal["WARN", "ERROR", "FATAL"]
    message: str = ""


class DealIn(BaseModel):
    """A deal to inject: the tester's minimal form (spec 3.3) or a full record."""

    model_config = ConfigDict(extra="allow")
    requestUnitId: str | None = None
    acceptUnitId: str | None = None
    chargeUnitId: str = Field(min_length=1)
    dischargeUnitId: str = Field(min_length=1)
    dealGridCurrentA: float = Field(gt=0, le=100)
    dealAmountWh: float = Field(gt=0)
    type: Literal["charge", "discharge"] = "discharge"
    pointPerWh: float | None = None

    def record(self) -> dict[str, Any]:
        out = self.model_dump(exclude_none=True)
        # Fill what the tester's minimal form leaves to the Mediator.
        requester = self.dischargeUnitId if self.type == "discharge" else self.chargeUnitId
        acceptor = self.chargeUnitId if self.type == "discharge" else self.dischargeUnitId
        out.setdefault("requestUnitId", requester)
        out.setdefault("acceptUnitId", acceptor)
        out.setdefault("unitId", out["requestUnitId"])
        out.setdefault("negotiationId", f"web-{secrets.token_hex(8)}")
        return out


# ---- helpers ---------------------------------------------------------------------------


def compat(value: Any, status_code: int = 200) -> Response:
    """The original servers' form: JSON followed by a newline."""
    return Response(json.dumps(value) + "\n", status_code=status_code,
                    media_type="application/json")


def _operator(request: Request) -> str:
    given = request.headers.get("x-apis-operator")
    if given:
        return given[:100]
    host = request.client.host if request.client else "?"
    return f"web {host}"


def local_iso(epoch: float) -> str:
    """`epoch` as ISO 8601 in the server's local time; UTC or the number itself where the
    calendar ends (a schedule stored by an older version may lie there)."""
    try:
        return datetime.fromtimestamp(epoch).astimezone().isoformat()
    except (OverflowError, ValueError, OSError):
        pass
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return str(epoch)


def require_token(request: Request) -> str:
    """The control-token check of every action; returns who acts."""
    token: str = request.app.state.token
    given = request.headers.get("x-apis-token") or request.query_params.get("token")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise HTTPException(401, "control token required (Authorization: Bearer <token>)")
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(403, "wrong control token")
    return _operator(request)


Operator = Annotated[str, Depends(require_token)]


def create_app(
    bus: Bus,
    *,
    token: str,
    world: World | None = None,
    store: HistoryStore | None = None,
    refresh_real_s: float = 1.0,
    request_timeout_real_s: float = 3.0,
    allowed_hosts: HostNames | None = None,
    logins: LoginCodes | None = None,
    records: RecordsReader | None = None,
) -> FastAPI:
    """The app for one cluster reached through `bus`. Its lifespan runs the `Operations`
    (subscriptions and periodic refresh); `app.state.ops` is that object. Host and Origin
    must be the server's own or in `allowed_hosts`; `logins` are the one-time codes of login
    links (`app.state.logins`); `records`: the records store read under `/api/records`
    (`apis.web.records`; without it those routes answer 503)."""
    if not token:
        raise ValueError("token must not be empty")
    ops = Operations(bus, world=world, store=store, refresh_real_s=refresh_real_s,
                     request_timeout_real_s=request_timeout_real_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with ops.running():
            yield

    app = FastAPI(
        title="APIS operations",
        version="1",
        description="Watch and steer an APIS cluster. Reading is open; actions need the "
        "control token (`Authorization: Bearer <token>`).",
        lifespan=lifespan,
        docs_url=None,  # served below from vendored files: sites run offline
        redoc_url=None,
    )
    app.state.ops = ops
    app.state.token = token
    app.state.logins = logins = logins or LoginCodes()

    async def act(coro: Any) -> Any:
        try:
            return await coro
        except KeyError as e:
            raise HTTPException(404, str(e.args[0]) if e.args else "not found") from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        except ActionRefused as e:
            raise HTTPException(409, str(e)) from None
        except ClusterUnavailable as e:
            raise HTTPException(503, str(e)) from None

    def unit_or_404(unit_id: str) -> dict[str, Any]:
        data = ops.snapshot.units.get(unit_id)
        if data is None:
            raise HTTPException(404, f"unitId = {unit_id!r} (no data; known: "
                                f"{', '.join(ops.unit_ids) or 'none'})")
        return data

    def snapshot_meta() -> dict[str, Any]:
        import time

        return {
            "takenAt": ops.snapshot.taken_at,
            "ageS": ops.snapshot.age_s(time.time()),
            "error": ops.snapshot.error,
        }

    # ---- the page ------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/logs", include_in_schema=False)
    async def logs_page() -> FileResponse:
        """The log viewer (records store: `--records`)."""
        return FileResponse(STATIC_DIR / "logs.html", headers={"Cache-Control": "no-cache"})

    @app.get("/history", include_in_schema=False)
    async def history_page() -> FileResponse:
        """Daily energy, deals and availability (records store: `--records`)."""
        return FileResponse(STATIC_DIR / "history.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="APIS operations - API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    # ---- reading -------------------------------------------------------------------------

    app.include_router(records_router(records))

    @app.get("/api/cluster", tags=["read"], summary="The compact live view the page shows")
    async def cluster() -> Response:
        return Response(ops.current_view_text(), media_type="application/json")

    @app.get("/api/units", tags=["read"], summary="Every unit's latest data (spec 2.1)")
    async def units() -> dict[str, Any]:
        return {**snapshot_meta(), "unitIds": ops.unit_ids, "units": ops.snapshot.units}

    @app.get("/api/units/{unit_id}", tags=["read"], summary="One unit's latest data")
    async def unit(unit_id: str) -> dict[str, Any]:
        return {**snapshot_meta(), "unitId": unit_id, "data": unit_or_404(unit_id)}

    @app.get("/api/unit-ids", tags=["read"], summary="Member unit ids")
    async def unit_ids() -> list[str]:
        return ops.unit_ids

    @app.get("/api/deals", tags=["read"], summary="Live deals, full records")
    async def deals() -> dict[str, Any]:
        return {"takenAt": ops.deals_taken_at, "deals": ops.deals}

    @app.get("/api/deals/history", tags=["read"], summary="Finished deals, newest first")
    async def deal_history(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        unitId: str | None = None,
    ) -> dict[str, Any]:
        return {
            "count": ops.store.deal_count(),
            "deals": ops.store.deals(limit=limit, offset=offset, unit_id=unitId),
        }

    @app.get("/api/grid", tags=["read"],
             summary="Node voltages, line currents and losses (emulator only)")
    async def grid() -> dict[str, Any]:
        return ops.grid()

    @app.get("/api/errors", tags=["read"], summary="Errors seen on the bus, newest first")
    async def errors(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, unitId: str | None = None
    ) -> dict[str, Any]:
        return {"count": ops.store.error_count(),
                "errors": ops.store.errors(limit=limit, unit_id=unitId)}

    @app.get("/api/operation-mode", tags=["read"],
             summary="Global, local and effective modes, who changed them and when")
    async def operation_mode() -> dict[str, Any]:
        return {**ops.modes(), "globalErrors": await ops.has_global_errors()}

    @app.get("/api/operation-mode/history", tags=["read"], summary="Mode changes, newest first")
    async def mode_history(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, scope: str | None = None
    ) -> list[dict[str, Any]]:
        return [c.to_json() for c in ops.store.mode_changes(limit=limit, scope=scope)]

    @app.get("/api/events", tags=["read"], summary="Server-sent events: `cluster` views")
    async def events(request: Request) -> StreamingResponse:
        queue = ops.listen()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                yield f"event: cluster\ndata: {ops.current_view_text()}\n\n"
                while True:
                    try:
                        async with asyncio.timeout(loop_seconds(KEEPALIVE_REAL_S)):
                            text = await queue.get()
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if text is None:  # the server is stopping
                        return
                    yield f"event: cluster\ndata: {text}\n\n"
            finally:
                ops.unlisten(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # ---- actions -------------------------------------------------------------------------

    @app.post("/api/login", tags=["control"],
              summary="Trade the one-time code of a login link for the control token")
    async def login(body: LoginIn) -> dict[str, Any]:
        if not logins.redeem(body.code):
            raise HTTPException(403, "login code (unknown, used or expired: a login link "
                                f"works once, within {logins.ttl_s:g} s; or enter the token "
                                "from its file)")
        return {"token": token}

    @app.get("/api/auth", tags=["control"], summary="Check a control token")
    async def auth(operator: Operator) -> dict[str, Any]:
        return {"ok": True, "operator": operator}

    @app.put("/api/operation-mode", tags=["control"], summary="Set the global mode")
    async def set_global(body: GlobalModeIn, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.set_global_mode(body.mode, operator))
        return result

    @app.put("/api/units/{unit_id}/operation-mode", tags=["control"],
             summary="Set (or clear with null) a unit's local mode")
    async def set_local(unit_id: str, body: LocalModeIn, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.set_local_mode(unit_id, body.mode, operator))
        return result

    @app.post("/api/units/{unit_id}/dcdc", tags=["control"],
              summary="Manual converter control (only while the effective mode is Manual)")
    async def set_dcdc(unit_id: str, body: DcdcIn, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(
            ops.manual_dcdc(unit_id, body.mode, body.params(), operator)
        )
        return result

    @app.post("/api/units/{unit_id}/shutdown", tags=["control"],
              summary="Shut one unit down (only in Manual)")
    async def shutdown_unit(unit_id: str, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.shutdown(unit_id, operator))
        return result

    @app.post("/api/shutdown", tags=["control"], summary="Shut every unit down (only in Manual)")
    async def shutdown_all(operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.shutdown(None, operator))
        return result

    @app.get("/api/schedules", tags=["read"], summary="Scheduled Soft Stops")
    async def schedules() -> list[dict[str, Any]]:
        return ops.schedules_json()

    @app.put("/api/schedules", tags=["control"],
             summary="Schedule a Soft Stop of the cluster or of one unit (replaces one set "
             "before); it runs once, only if the mode is still Run, then is removed")
    async def set_schedule(body: ScheduleIn, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.set_schedule(body.unitId, body.epoch(),
                                                            operator))
        return result

    @app.delete("/api/schedules", tags=["control"], summary="Clear a scheduled Soft Stop")
    async def clear_schedule(operator: Operator, unitId: str | None = None) -> dict[str, Any]:
        return {"removed": await ops.clear_schedule(unitId)}

    @app.get("/schedules", tags=["compat"], summary="main_controller: scheduled Soft Stops")
    async def compat_schedules() -> Response:
        out: dict[str, dict[str, str]] = {}
        for item in ops.schedules_json():
            key = item["unitId"] or ""
            out.setdefault(key, {})["softStop"] = local_iso(item["at"])
        return compat(out)

    @app.get("/setSchedule", tags=["compat"],
             summary="main_controller: set (value) or clear (no value) a Soft Stop schedule")
    async def compat_set_schedule(operator: Operator, operation: str = "softStop",
                                  unitId: str = "", value: str = "") -> Response:
        if operation != "softStop":
            raise HTTPException(422, f"operation = {operation!r} (must be softStop)")
        if not value:
            return compat({"removed": await ops.clear_schedule(unitId or None)})
        try:
            body = ScheduleIn(unitId=unitId or None, softStopAt=value)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        result = await act(ops.set_schedule(body.unitId, body.epoch(), operator))
        return compat(result)

    @app.post("/api/stop-all", tags=["control"],
              summary="Force Stop; WAIT to every converter if the cluster does not answer")
    async def stop_all(operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.stop_all(operator))
        return result

    @app.post("/api/deals", tags=["test"], summary="Inject a deal (refused in Force Stop)")
    async def inject_deal(body: DealIn, operator: Operator) -> dict[str, Any]:
        result: dict[str, Any] = await act(ops.inject_deal(body.record()))
        return {"deal": result}

    @app.post("/api/errors", tags=["test"], summary="Inject an error as if raised by a unit")
    async def inject_error(body: ErrorIn, operator: Operator) -> dict[str, Any]:
        await act(ops.inject_error(body.model_dump()))
        return {"published": body.model_dump()}

    # ---- the original route names (apis-web and main_controller) --------------------------

    @app.get("/get/log", tags=["compat"], summary="apis-web: all unit data (cached)")
    async def get_log() -> Response:
        return compat(ops.snapshot.units)

    @app.get("/get/logInfo", tags=["compat"], summary="main_controller: all unit data")
    async def get_log_info() -> Response:
        return compat(ops.snapshot.units)

    @app.get("/get/unit/{unit_id}", tags=["compat"], summary="main_controller: one unit")
    async def get_unit(unit_id: str) -> Response:
        data = ops.snapshot.units.get(unit_id)
        if data is None:
            return PlainTextResponse(f"No response from Beaglebone {unit_id}", 404)
        return compat(data)

    @app.get("/unitIds", tags=["compat"], summary="apis-web: member unit ids")
    async def compat_unit_ids() -> Response:
        return compat(ops.unit_ids)

    @app.get("/deals", tags=["compat"], summary="apis-web: live deals in Budo format")
    async def compat_deals() -> Response:
        return compat([budo_deal(d) for d in ops.deals])

    @app.get("/get/dealsInfo", tags=["compat"], summary="main_controller: Budo-format deals")
    async def compat_deals_info() -> Response:
        return compat([budo_deal(d) for d in ops.deals])

    async def status() -> dict[str, Any]:
        mode = await ops.read_global_mode()
        if mode not in ("autonomous", "heteronomous"):
            return {"active": False}
        errors = await ops.has_global_errors()
        if errors is None:
            return {"active": False, "error": "no answer from the Grid Master"}
        return {"active": not errors}

    @app.get("/getStatus", tags=["compat"], summary="apis-web: active = Run/Soft Stop, no "
             "errors")
    async def get_status() -> Response:
        return compat(await status())

    @app.get("/get/globalmode", tags=["compat"], summary="main_controller: same as /getStatus")
    async def get_globalmode() -> Response:
        return compat(await status())

    async def set_by_verb(verb: str, operator: str) -> Response:
        try:
            await ops.set_global_mode(COMPAT_VERBS[verb], operator)
        except ClusterUnavailable as e:
            return compat({"active": False, "error": str(e)})
        return compat(await status())

    def add_verb(verb: str) -> None:
        mode = COMPAT_VERBS[verb]

        async def by_verb(operator: Operator) -> Response:
            return await set_by_verb(verb, operator)

        for path in (f"/{verb}", f"/set/budo/{verb}"):
            app.add_api_route(
                path, by_verb, methods=["GET"], tags=["compat"],
                summary=f"apis-web /{verb}: set the global mode to {mode}, then /getStatus",
                name=f"compat_{path.strip('/').replace('/', '_')}",
            )

    for verb in COMPAT_VERBS:
        add_verb(verb)

    @app.get("/setOperationMode", tags=["compat"],
             summary="apis-web: global mode, or a unit's local mode with unitId")
    async def compat_set_mode(operator: Operator, value: str = "",
                              unitId: str | None = None) -> Response:
        try:
            if unitId:
                await ops.set_local_mode(unitId, value or None, operator)
            else:
                if value not in GLOBAL_MODES:
                    raise ValueError(f"value = {value!r} (must be one of "
                                     f"{', '.join(GLOBAL_MODES)})")
                await ops.set_global_mode(value, operator)
        except (ValueError, KeyError, ClusterUnavailable) as e:
            text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            return compat({"succeeded": False, "error": text})
        return compat({"succeeded": True})

    @app.get("/shutdown", tags=["compat"], summary="apis-web: shut down (only in Manual)")
    async def compat_shutdown(operator: Operator, unitId: str | None = None) -> Response:
        try:
            await ops.shutdown(unitId, operator)
        except (ActionRefused, ClusterUnavailable, KeyError) as e:
            text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            return compat({"succeeded": False, "error": text},
                          409 if isinstance(e, ActionRefused) else 200)
        return compat({"succeeded": True})

    @app.get("/stopAll", tags=["compat"], summary="main_controller: Stop all")
    async def compat_stop_all(operator: Operator) -> Response:
        return compat(await act(ops.stop_all(operator)))

    @app.get("/set/dcdc/{unit_id}", tags=["compat"],
             summary="main_controller: manual DC/DC (mode code, dvg, dig); Manual only")
    async def compat_dcdc(unit_id: str, operator: Operator, mode: str,
                          dvg: float | None = None, dig: float | None = None) -> Response:
        command = DCDC_CODES.get(mode.lower())
        if command is None:
            raise HTTPException(422, f"mode = {mode!r} (must be one of "
                                f"{', '.join(DCDC_CODES)})")
        try:
            body = DcdcIn(mode=command, gridVoltageV=dvg,
                          gridCurrentA=dig)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        result = await act(ops.manual_dcdc(unit_id, body.mode, body.params(), operator))
        return compat(result.get("dcdc"))

    @app.post("/deal", tags=["compat"], summary="apis-web API server: inject a deal (form "
              "field `json`, or a JSON body)")
    async def compat_deal(request: Request, operator: Operator) -> Response:
        raw = await request.body()
        kind = request.headers.get("content-type", "")
        try:
            if kind.startswith("application/x-www-form-urlencoded"):
                text = parse_qs(raw.decode()).get("json", [""])[0]
            else:
                text = raw.decode()
            deal = DealIn.model_validate(json.loads(text))
        except ValueError as e:
            return PlainTextResponse(f"invalid deal: {e}", 500)
        record = deal.record()
        try:
            await ops.inject_deal(record)
        except (ActionRefused, ClusterUnavailable) as e:
            return PlainTextResponse(f"deal creation failed : {e}", 500)
        return PlainTextResponse(f"requesting deal creation : {json.dumps(record)} ...")

    @app.post("/error", tags=["compat"], summary="apis-web API server: inject an error (form)")
    async def compat_error(request: Request, operator: Operator) -> Response:
        raw = await request.body()
        kind = request.headers.get("content-type", "")
        try:
            if kind.startswith("application/json"):
                fields = json.loads(raw)
            else:
                fields = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            error = ErrorIn.model_validate(fields)
        except ValueError as e:
            return PlainTextResponse(f"invalid error: {e}", 500)
        await act(ops.inject_error(error.model_dump()))
        return PlainTextResponse(f"publishing error : {json.dumps(error.model_dump())}")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        detail = getattr(exc, "detail", None)
        if request.url.path.startswith("/api/") or (detail and detail != "Not Found"):
            return JSONResponse({"detail": detail or "Not Found"}, 404)
        return compat({"error": f"not found : {request.url.path}"}, 404)

    guard(app, GuardPolicy(names=allowed_hosts or HostNames(), max_body_bytes=MAX_BODY_BYTES))
    return app

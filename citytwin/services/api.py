"""The HTTP service (FastAPI) of a twin: its data services and its monitoring, in one app.

``create_app(ctx)`` composes the routers of ``services``: OGC API Features (``features``),
Tiles (``tiles``), Processes (``processes``), the kept flood scenarios (``flood``), the
SensorThings read side (``sensorthings``), the catalogue (``catalogue``), credentials and audit
(``access``), and the operations console (``citytwin.web``), all answering through the same
authentication, access policy and audit. This module adds the monitoring side:

- ``POST /v1.1/Observations`` (the Datastream in the body), ``POST /v1.1/Datastreams(<id>)/
  Observations`` and ``POST /v1.1/CreateObservations`` (the DataArray extension) — the create
  side of OGC SensorThings API 1.1. A 201 means the readings are committed (rules evaluated,
  alarms stored). Posting a reading again is harmless (it is stored once; the answer is the
  same). A malformed body is a 400, a refused reading a 422 (404 for an unknown datastream)
  with the reason; refused readings also go to the dead letters.
- ``GET /alarms`` (filters), ``GET /alarms/{id}`` (with its log), ``POST /alarms/{id}/
  acknowledge | clear | assign | comments``; ``GET /incidents``, ``GET /incidents/{id}``.
- ``GET /events``: server-sent events of alarm and incident changes for the console.

Errors never leave as a 500 for a bad request: ``InvalidInput`` is a 400/422, ``NotFound`` a
404, each ``{"error": ..., "hint": ...}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
from anyio import to_thread
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from citytwin.errors import Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from citytwin.sensing import payloads
from citytwin.sensing.ingest import Ingestor, IngestResult
from citytwin.services.access import AccessControl
from citytwin.services.catalogue import Catalogue
from citytwin.store.base import Store

API_PREFIX = "/v1.1"
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_LIST = 100_000
"""The most alarms or incidents one request lists."""


class ORJSONResponse(JSONResponse):
    """JSON via orjson (NumPy values and datetimes included)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=_plain
        )


def _plain(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


@dataclass
class ServiceContext:
    """What the routers of one app share. ``ingestor``, ``hub`` and ``desk`` are there when the
    app also runs the twin's monitoring; ``registry`` (credentials), ``audit`` and ``jobs`` (the
    processes' job runner) are filled in by their modules when the app is made."""

    store: Store
    catalogue: Catalogue
    access: AccessControl
    ingestor: Ingestor | None = None
    hub: Any = None
    desk: Any = None
    registry: Any = None
    audit: Any = None
    jobs: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Store, **parts: Any) -> ServiceContext:
        """A context over ``store`` with its catalogue and access policies (the store tuned
        for serving)."""
        store.tune_for_serving()
        catalogue = Catalogue.of(store)
        return cls(store, catalogue, AccessControl(catalogue, store), **parts)


def default_request_threads() -> int:
    """Two worker threads per core, at least 4."""
    return max(4, 2 * (os.cpu_count() or 1))


def create_app(
    ctx: ServiceContext,
    *,
    on_start: Callable[[], Any] | None = None,
    on_stop: Callable[[], Any] | None = None,
    request_threads: int | None = None,
) -> FastAPI:
    """The twin's service. ``on_start`` / ``on_stop``: what starts and stops with the app
    (default: the ingestor alone, when there is one); ``request_threads`` the most requests
    handled at once on worker threads (default: ``default_request_threads()``; more wait in
    turn)."""
    threads = default_request_threads() if request_threads is None else request_threads
    if threads < 1:
        raise InvalidInput(f"request threads must be 1 or more, not {threads}")
    from citytwin import web
    from citytwin.services import access, catalogue, features, flood, processes, sensorthings, tiles

    ingestor = ctx.ingestor
    start = on_start or (ingestor.start if ingestor is not None else None)
    stop = on_stop or (ingestor.stop if ingestor is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sync endpoints run on anyio's worker threads: a few per core keep the cores busy
        # (the store's queries release the GIL); more only take turns at the GIL, which
        # stretches every request (measured: 1 M buildings, 16 clients, 2 cores: p99 190 ms
        # with anyio's default of 40, 130 ms with 4, at a fifth more requests per second)
        to_thread.current_default_thread_limiter().total_tokens = threads
        if start is not None:
            await asyncio.to_thread(start)
        try:
            yield
        finally:
            for part in (ctx.jobs, ctx.audit):
                if part is not None and hasattr(part, "close"):
                    await asyncio.to_thread(part.close)
            if stop is not None:
                await asyncio.to_thread(stop)

    app = FastAPI(
        title="CityTwin",
        summary="Data services (OGC API Features, Tiles, Processes; SensorThings API), alarms"
        " and the operations console of a city's digital twin",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        openapi_url="/api",
        docs_url="/api.html",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.ingestor = ingestor
    app.state.hub = ctx.hub

    @app.exception_handler(InvalidInput)
    async def invalid(request: Request, exc: InvalidInput) -> Response:
        return _error(400, exc)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(404, exc)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> Response:
        response = _error(401, exc)
        response.headers["WWW-Authenticate"] = 'Bearer realm="citytwin"'
        return response

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _error(403, exc)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        response = _error(429, exc)
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return ORJSONResponse(
            {"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400
        )

    access.install(app, ctx)
    for module in (features, tiles, processes, flood, sensorthings, catalogue):
        app.include_router(module.router(ctx))
    web.mount(app, ctx)
    if ingestor is not None:
        _ingest_routes(app, ingestor)
    if ctx.desk is not None:
        _alarm_routes(app, ctx.desk)
    if ctx.hub is not None:
        from citytwin.services.notify import sse_response

        @app.get("/events")
        async def events(request: Request) -> Response:
            """Alarm and incident changes as server-sent events (resume with Last-Event-ID)."""
            return sse_response(ctx.hub, request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        if ingestor is None:
            return {"status": "ok"}
        s = ingestor.stats
        return {
            "status": "ok",
            "commits": s.commits,
            "observations": s.observations,
            "inserted": s.inserted,
            "events": s.events,
            "alarm_changes": s.alarm_changes,
        }

    return app


def _ingest_routes(app: FastAPI, ingestor: Ingestor) -> None:
    """The SensorThings create side."""

    @app.post(API_PREFIX + "/Observations", status_code=201)
    async def create_observation(request: Request) -> Response:
        doc = payloads.loads(await _body(request), source="Observations")
        frame = payloads.decode_observation(doc, source="Observations")
        return await _single(ingestor, frame)

    @app.post(API_PREFIX + "/{path:path}", status_code=201)
    async def create_under(path: str, request: Request) -> Response:
        if path == "CreateObservations":
            doc = payloads.loads(await _body(request), source=path)
            frame = payloads.decode_data_array(doc, source=path)
            return await _bulk(ingestor, frame)
        if path.startswith("Datastreams(") and path.endswith(")/Observations"):
            ds = payloads.datastream_from_path(path)
            doc = payloads.loads(await _body(request), source=path)
            frame = payloads.decode_observation(doc, ds, source=path)
            return await _single(ingestor, frame)
        raise NotFound(
            f"POST {API_PREFIX}/{path} is not a create endpoint here",
            hint="POST Observations, Datastreams(<id>)/Observations or CreateObservations",
        )


async def _body(request: Request) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
        raise InvalidInput(
            f"the body is {int(size):,} bytes; at most {MAX_BODY_BYTES:,}",
            hint="send smaller batches",
        )
    return await request.body()


async def _commit(ingestor: Ingestor, frame: pd.DataFrame) -> IngestResult:
    return await asyncio.wrap_future(ingestor.submit(frame, source="http"))


async def _single(ingestor: Ingestor, frame: pd.DataFrame) -> Response:
    res = await _commit(ingestor, frame)
    if len(res.rejected):
        reason = str(res.rejected["reason"].iloc[0])
        status = 404 if reason == "unknown datastream" else 422
        return ORJSONResponse(
            {
                "error": f"observation of {frame['datastream_id'].iloc[0]!r} refused: {reason}",
                "reason": reason,
            },
            status_code=status,
        )
    oid = payloads.observation_ids(frame["datastream_id"].tolist(), frame["phenomenon_time"])[0]
    link = f"{API_PREFIX}/Observations('{oid}')"
    body = {
        "@iot.id": oid,
        "@iot.selfLink": link,
        "phenomenonTime": frame["phenomenon_time"].iloc[0],
        "result": frame["result"].iloc[0],
        "stored": "new" if res.inserted else "already stored",
    }
    return ORJSONResponse(body, status_code=201, headers={"Location": link})


async def _bulk(ingestor: Ingestor, frame: pd.DataFrame) -> Response:
    """The DataArray answer: per reading its self link, or ``error: <reason>``; 201 when any
    reading is stored, 422 when none is."""
    if not len(frame):
        raise InvalidInput("the DataArray holds no readings", source="CreateObservations")
    res = await _commit(ingestor, frame)
    ids = payloads.observation_ids(
        frame["datastream_id"].astype(str).tolist(),
        pd.to_datetime(frame["phenomenon_time"], utc=True, errors="coerce", format="ISO8601"),
    )
    answer = np.array([f"{API_PREFIX}/Observations('{i}')" for i in ids], object)
    if len(res.rejected):
        rows = res.rejected["row"].to_numpy()
        answer[rows] = ("error: " + res.rejected["reason"].astype(str)).to_numpy(object)
    status = 201 if res.accepted else 422
    return ORJSONResponse(answer.tolist(), status_code=status)


def _error(status: int, exc: InvalidInput | NotFound) -> Response:
    body: dict[str, Any] = {"error": getattr(exc, "message", None) or str(exc)}
    for key in ("source", "feature", "hint"):
        value = getattr(exc, key, None)
        if value:
            body[key] = value
    return ORJSONResponse(body, status_code=status)


def _alarm_routes(app: FastAPI, desk: Any) -> None:
    """Alarm and incident endpoints over an ``AlarmDesk`` (citytwin.app.monitoring)."""

    @app.get("/alarms")
    async def list_alarms(
        status: str | None = None,
        acknowledged: bool | None = None,
        rule_id: str | None = None,
        severity: str | None = None,
        incident_id: str | None = None,
        since: dt.datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 1000,
    ) -> Response:
        frame = await asyncio.to_thread(
            desk.alarms,
            status=status,
            acknowledged=acknowledged,
            rule_id=rule_id,
            severity_at_least=severity,
            incident_id=incident_id,
            since=since,
            limit=limit,
        )
        return ORJSONResponse({"value": _records(frame), "count": len(frame)})

    @app.get("/alarms/{alarm_id}")
    async def get_alarm(alarm_id: str) -> Response:
        return ORJSONResponse(await asyncio.to_thread(desk.alarm, alarm_id))

    @app.post("/alarms/{alarm_id}/{action}")
    async def act(alarm_id: str, action: str, request: Request) -> Response:
        raw = await request.body()
        doc = payloads.loads(raw, source=f"alarms/{alarm_id}/{action}") if raw else {}
        if not isinstance(doc, dict):
            raise InvalidInput("the body must be a JSON object", source=action)
        by = str(doc.get("by") or request.headers.get("x-citytwin-user") or "")
        row = await asyncio.to_thread(
            desk.act, alarm_id, action, by=by, to=doc.get("to"), text=doc.get("text")
        )
        return ORJSONResponse(row)

    @app.get("/incidents")
    async def list_incidents(
        status: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 1000
    ) -> Response:
        frame = await asyncio.to_thread(desk.incidents, status=status, limit=limit)
        return ORJSONResponse({"value": _records(frame), "count": len(frame)})

    @app.get("/incidents/{incident_id}")
    async def get_incident(incident_id: str) -> Response:
        return ORJSONResponse(await asyncio.to_thread(desk.incident, incident_id))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    if not len(frame):
        return []
    return orjson.loads(frame.to_json(orient="records", date_format="iso"))

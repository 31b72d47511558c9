"""OGC API – Processes (Part 1: Core 1.0) over the twin's network analyses and flood runs.

Processes (``PROCESSES``), over ``citytwin.app.networks`` and ``citytwin.app.flood``:

- ``trace``: what is connected to, upstream or downstream of (or both) a node, a link or a
  point on a link; closed valves and links stop the trace unless asked otherwise.
- ``isolate-burst``: a burst on a link (or at a point, snapped to the nearest link): the
  valves to close, the isolated and cut-off parts, the buildings and critical facilities
  that lose supply, and an impact summary.
- ``excavation-check``: "call before you dig" — the utility lines within reach of a planned
  dig (a polygon, a trench line or a point with a buffer) and its depth, per network, with
  their distances and crown depths; which would be struck and which are critical.
- ``clearance-check``: utility lines closer to each other or to buildings than the rules
  allow, for some networks or all, optionally within an area.
- ``flood-storm`` (over ``citytwin.app.flood``): a design storm run on the twin's surface
  (optionally coupled to its drains), kept as a flood scenario (``/flood/scenarios``,
  ``citytwin.services.flood``): the buildings, roads and facilities it reaches, its summary,
  and links to its rasters (Cloud-Optimised GeoTIFF). Progress follows the simulated time; a
  dismissed job stops at the next step. Only signed-in callers may run it (it computes for a
  while and writes to the twin).

Geometries go in and come out in CRS84 (longitude, latitude); results are a GeoJSON
FeatureCollection (``features``) and a ``summary`` object, both described by JSON Schemas in
the process descriptions. A request executes synchronously (200 with the results) unless it
says ``Prefer: respond-async``: then it becomes a job (201, ``Location: /jobs/{id}``), run by
the ``JobRunner`` (``citytwin.services.jobs``) and kept in the twin.

Access: a process over network X needs read access to the collection ``X_links`` (401/403
otherwise); features of collections the caller may not read, and rows their grant hides
(``Grant.hidden``, ``Grant.district_geometry``), are left out of the results and counted in
``summary.withheld``. Jobs belong to whoever submitted them (admins see every job).

Errors are RFC 7807 problem details (``application/problem+json``) with the OGC exception
types (no-such-process, no-such-job, result-not-ready, invalid-parameter-value for bad
input); they also carry ``error`` and ``hint`` like the rest of the service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any

import geopandas as gpd
import jsonschema
import numpy as np
import orjson
import pandas as pd
import shapely
from fastapi import APIRouter, Header, Request
from fastapi import Query as Param
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from shapely.errors import ShapelyError

from citytwin.app import flood as flooding
from citytwin.app import networks as nets
from citytwin.errors import (
    CityTwinError,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
)
from citytwin.flood.rain import design_storm
from citytwin.model import GRAVITY_NETWORKS
from citytwin.networks.clearance import CLEARANCE_RULES_DOCUMENT
from citytwin.networks.excavation import Dig
from citytwin.networks.trace import Trace
from citytwin.services.access import Grant, Principal, Who, narrow
from citytwin.services.api import ORJSONResponse, _body
from citytwin.services.jobs import STATUSES, Job, JobControl, JobDismissed, JobRunner, Work
from citytwin.store.base import Store

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
]
"""The OGC API – Processes conformance classes this module implements."""

EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
NO_SUCH_PROCESS = EXCEPTIONS + "no-such-process"
NO_SUCH_JOB = EXCEPTIONS + "no-such-job"
RESULT_NOT_READY = EXCEPTIONS + "result-not-ready"
INVALID_PARAMETER = EXCEPTIONS + "invalid-parameter-value"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EXECUTE_REL = "http://www.opengis.net/def/rel/ogc/1.0/execute"
MAX_VERTICES = 10_000
"""Most vertices an input geometry may have."""


# -- problem details ------------------------------------------------------------------------


class Problem(CityTwinError):
    """An OGC API exception with its type URI and HTTP status."""

    def __init__(
        self, status: int, type_: str, title: str, detail: str, *, hint: str | None = None
    ) -> None:
        self.status, self.type, self.title = status, type_, title
        self.message, self.hint = detail, hint
        super().__init__(detail)


def problem_response(exc: BaseException) -> Response:
    """An RFC 7807 problem details response for ``exc`` (a CityTwin error or a request the
    framework could not validate)."""
    headers: dict[str, str] = {}
    if isinstance(exc, Problem):
        status, type_, title = exc.status, exc.type, exc.title
    elif isinstance(exc, InvalidInput):
        status, type_, title = 400, INVALID_PARAMETER, "invalid parameter value"
    elif isinstance(exc, NotFound):
        status, type_, title = 404, "about:blank", "not found"
    elif isinstance(exc, Unauthorized):
        status, type_, title = 401, "about:blank", "unauthorized"
        headers["WWW-Authenticate"] = 'Bearer realm="citytwin"'
    elif isinstance(exc, Forbidden):
        status, type_, title = 403, "about:blank", "forbidden"
    elif isinstance(exc, RateLimited):
        status, type_, title = 429, "about:blank", "too many requests"
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        exc = InvalidInput(f"{where}: {first.get('msg', 'invalid request')}")
        status, type_, title = 400, INVALID_PARAMETER, "invalid parameter value"
    else:
        status, type_, title = 400, INVALID_PARAMETER, "the request can't be done"
    detail = str(getattr(exc, "message", None) or exc)
    body: dict[str, Any] = {
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "error": detail,
    }
    hint = getattr(exc, "hint", None)
    if hint:
        body["hint"] = hint
    return ORJSONResponse(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


class ProblemRoute(APIRoute):
    """A route whose CityTwin errors (and invalid parameters) answer as problem details."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (CityTwinError, RequestValidationError) as exc:
                return problem_response(exc)

        return route


# -- process descriptions -------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    """A process input: its JSON Schema and how many values it takes."""

    title: str
    description: str
    schema: dict[str, Any]
    min_occurs: int = 1
    max_occurs: int | str = 1  # or "unbounded"

    def describe(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "schema": self.schema,
            "minOccurs": self.min_occurs,
            "maxOccurs": self.max_occurs,
        }


@dataclass(frozen=True)
class Output:
    """A process output: its JSON Schema and media type."""

    title: str
    description: str
    schema: dict[str, Any]
    media_type: str = "application/json"

    def describe(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "description": self.description,
            "schema": {**self.schema, "contentMediaType": self.media_type},
        }


def _nullable(kind: str | list[str], **more: Any) -> dict[str, Any]:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return {"type": [*kinds, "null"], **more}


_POSITION = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}
_LINE = {"type": "array", "minItems": 2, "items": _POSITION}
_RING = {"type": "array", "minItems": 4, "items": _POSITION}


def _geometry_schema(kind: str, coordinates: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": f"GeoJSON {kind} in CRS84 (longitude, latitude)",
        "type": "object",
        "required": ["type", "coordinates"],
        "properties": {"type": {"const": kind}, "coordinates": coordinates},
    }


POINT = _geometry_schema("Point", _POSITION)
LINESTRING = _geometry_schema("LineString", _LINE)
POLYGON = _geometry_schema("Polygon", {"type": "array", "minItems": 1, "items": _RING})
MULTIPOLYGON = _geometry_schema(
    "MultiPolygon",
    {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": _RING}},
)
BBOX = {
    "title": "OGC bounding box in CRS84: [west, south, east, north]",
    "type": "object",
    "required": ["bbox"],
    "properties": {
        "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}},
        "crs": {"const": CRS84},
    },
}
AREA = {"oneOf": [POLYGON, MULTIPOLYGON, BBOX], "format": "geojson-geometry"}
DIG_AREA = {"oneOf": [POLYGON, MULTIPOLYGON, LINESTRING, POINT, BBOX], "format": "geojson-geometry"}
IDS = {"type": "string", "minLength": 1, "maxLength": 200}


def feature_collection(properties: dict[str, dict[str, Any]], geometries: list[str]) -> dict:
    """The JSON Schema of a GeoJSON FeatureCollection (CRS84) whose features carry exactly
    ``properties`` and have geometries of the given types."""
    return {
        "type": "object",
        "required": ["type", "features"],
        "properties": {
            "type": {"const": "FeatureCollection"},
            "features": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "geometry", "properties"],
                    "properties": {
                        "type": {"const": "Feature"},
                        "id": _nullable("string"),
                        "geometry": {
                            "type": "object",
                            "required": ["type", "coordinates"],
                            "properties": {"type": {"enum": geometries}},
                        },
                        "properties": {
                            "type": "object",
                            "required": list(properties),
                            "properties": properties,
                            "additionalProperties": False,
                        },
                    },
                },
            },
        },
    }


def _counts(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "integer", "minimum": 0},
    }


WITHHELD = _counts(
    "Features left out because the caller may not read them (by collection id): the whole"
    " collection, rows hidden by its access rules, or rows outside the caller's district"
)
IMPACT = {
    "type": "object",
    "description": "Summed over the nodes that lose supply",
    "properties": {
        name: {"type": "number"}
        for name in (
            "service_connections",
            "buildings",
            "residents",
            "demand_m3s",
            "hospitals",
            "schools",
            "fire_stations",
        )
    },
}


class Process:
    """A process: its description and, for one execution, ``prepare`` — which checks the
    inputs against the twin and the caller's access and returns the work to run."""

    id: str = ""
    title: str = ""
    title_zh: str = ""
    description: str = ""
    keywords: tuple[str, ...] = ()
    access = "read access to the network's links collection"
    """Who may run it (the catalogue's record says so)."""
    version = "1.0.0"
    outputs: dict[str, Output] = {}  # noqa: RUF012 (class constants)

    def inputs(self, env: Analyses) -> dict[str, Input]:
        raise NotImplementedError

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        raise NotImplementedError

    def summary(self, base: str) -> dict[str, Any]:
        """The process summary (``/processes``)."""
        href = f"{base}/processes/{self.id}"
        return {
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "title_zh": self.title_zh,
            "description": self.description,
            "keywords": list(self.keywords),
            "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
            "outputTransmission": ["value"],
            "links": [
                {"href": href, "rel": "self", "type": "application/json", "title": self.title},
                {
                    "href": f"{href}/execution",
                    "rel": EXECUTE_REL,
                    "type": "application/json",
                    "title": "execute",
                },
            ],
        }

    def describe(self, env: Analyses, base: str) -> dict[str, Any]:
        """The process description (``/processes/{id}``): the summary with the inputs and
        outputs."""
        out = self.summary(base)
        out["inputs"] = {k: v.describe() for k, v in self.inputs(env).items()}
        out["outputs"] = {k: v.describe() for k, v in self.outputs.items()}
        return out


# -- what the processes work with -----------------------------------------------------------


class DerivedCache:
    """Values derived from the twin's layers (a loaded network, its isolation model, a
    clearance check), kept while those layers do not change: ``get`` rebuilds a value when
    ``store.data_version(layers)`` differs from the one it was built at. At most ``size``
    values; one build per key at a time."""

    def __init__(self, store: Store, size: int = 24) -> None:
        self.store, self.size = store, size
        self._values: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, layers: Sequence[str], build: Callable[[], Any]) -> Any:
        version = self.store.data_version(layers)
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and hit[0] == version:
                self._values.move_to_end(key)
                return hit[1]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                hit = self._values.get(key)
                if hit is not None and hit[0] == version:
                    return hit[1]
            value = build()
            with self._lock:
                self._values[key] = (version, value)
                self._values.move_to_end(key)
                while len(self._values) > self.size:
                    self._values.popitem(last=False)
        return value


NETWORK_LAYERS = ("utility_links", "utility_nodes")
IMPACT_LAYERS = (*NETWORK_LAYERS, "buildings", "facilities")


@dataclass
class Analyses:
    """The twin as the processes see it: store, catalogue, access policies, caches."""

    ctx: Any
    cache: DerivedCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = DerivedCache(self.ctx.store)

    @property
    def store(self) -> Store:
        return self.ctx.store

    def networks(self) -> list[str]:
        """The networks with a published links collection."""
        return sorted(
            {c.network for c in self.ctx.catalogue if c.layer == "utility_links" and c.network}
        )

    def network_input(self) -> Input:
        return Input(
            "network",
            "The utility network (its links collection is <network>_links)",
            {"type": "string", "enum": self.networks()},
        )

    def network(self, name: str) -> nets.NetworkData:
        """The network, loaded once per version of the utility layers."""
        return self.cache.get(
            ("network", name), NETWORK_LAYERS, lambda: nets.load_network(self.store, name)
        )

    def isolation(self, name: str) -> tuple[nets.NetworkData, Any, nets.Valves]:
        """The network with its isolation model (valve segments, impact weights)."""

        def build() -> tuple[nets.NetworkData, Any, nets.Valves]:
            data = self.network(name)
            model, valves = nets.isolation_model(self.store, data)
            return data, model, valves

        return self.cache.get(("isolation", name), IMPACT_LAYERS, build)

    # -- access -----------------------------------------------------------------------------
    def grant(self, who: Principal, cid: str) -> Grant:
        """The caller's grant on collection ``cid`` (401/403 when there is none)."""
        return self.ctx.access.grant(who, self.ctx.catalogue.get(cid))

    def grant_or_none(self, who: Principal, cid: str) -> Grant | None:
        """The caller's grant on ``cid``; None when they may not read it (or it is not
        published): its features are then withheld."""
        try:
            return self.grant(who, cid)
        except (Unauthorized, Forbidden, NotFound):
            return None

    def admit(self, grant: Grant | None, frame: gpd.GeoDataFrame) -> tuple[Any, int]:
        """The rows of ``frame`` (features of ``grant.collection`` by ``id``) that the grant
        lets through — its hidden rows and, for a district grant, features outside the
        district left out, as the features service does (``features.narrow``) — and how many
        it leaves out."""
        if not len(frame):
            return frame, 0
        if grant is None:
            return frame.iloc[:0], len(frame)
        if not grant.narrowed:
            return frame, 0
        ids = list(pd.unique(frame["id"].astype(str)))
        allowed = self.store.query(narrow(grant.collection.query(ids=ids, columns=()), grant))
        keep = frame["id"].isin(allowed["id"]).to_numpy()
        return frame[keep], int((~keep).sum())

    # -- geometry ---------------------------------------------------------------------------
    def geometry(self, value: dict[str, Any], name: str) -> shapely.Geometry:
        """A GeoJSON geometry or OGC bbox in CRS84 as a valid shapely geometry in the twin's
        CRS; ``InvalidInput`` saying what is wrong with it."""
        if "bbox" in value:
            west, south, east, north = value["bbox"]
            if not (west < east and south < north):
                raise InvalidInput(
                    f"input {name!r}: the bbox {value['bbox']} is empty",
                    hint="give [west, south, east, north] with west < east and south < north",
                )
            geom = shapely.box(west, south, east, north)
        else:
            try:
                geom = shapely.geometry.shape(value)
            except (ValueError, TypeError, AttributeError, IndexError, ShapelyError) as exc:
                raise InvalidInput(f"input {name!r} is not a GeoJSON geometry: {exc}") from None
        xy = shapely.get_coordinates(geom)
        if len(xy) > MAX_VERTICES:
            raise InvalidInput(
                f"input {name!r} has {len(xy):,} vertices",
                hint=f"simplify it to at most {MAX_VERTICES:,}",
            )
        if geom.is_empty or not np.isfinite(xy).all():
            raise InvalidInput(f"input {name!r} is empty")
        if (np.abs(xy[:, 0]) > 180).any() or (np.abs(xy[:, 1]) > 90).any():
            raise InvalidInput(
                f"input {name!r} has coordinates outside longitude ±180, latitude ±90",
                hint="give CRS84 coordinates: longitude first, then latitude",
            )
        if not geom.is_valid:
            raise InvalidInput(
                f"input {name!r} is not a valid geometry: {shapely.is_valid_reason(geom)}",
                hint="rings must be closed and must not cross themselves",
            )
        crs = self.store.meta.pyproj_crs
        reach = self.reach
        if reach is not None and not geom.intersects(reach):
            w, s, e, n = reach.bounds
            raise InvalidInput(
                f"input {name!r} lies outside the twin",
                hint=f"the twin covers longitude {w:.5f} to {e:.5f}, latitude {s:.5f} to {n:.5f}",
            )
        twin = gpd.GeoSeries([geom], crs="OGC:CRS84").to_crs(crs).iloc[0]
        if not np.isfinite(shapely.get_coordinates(twin)).all():
            raise InvalidInput(f"input {name!r} can't be brought into the twin's CRS")
        return twin

    @cached_property
    def reach(self) -> shapely.Geometry | None:
        """The twin's extent in CRS84, grown by the snapping distance (None: no extent)."""
        extent = self.store.meta.extent
        if extent is None:
            return None
        grown = shapely.box(*extent).buffer(nets.MAX_SNAP, join_style="mitre")
        series = gpd.GeoSeries([grown], crs=self.store.meta.pyproj_crs)
        return shapely.box(*series.to_crs("OGC:CRS84").total_bounds)

    def snap(self, data: nets.NetworkData, point: shapely.Geometry, name: str) -> tuple[int, float]:
        """The link of ``data`` nearest to ``point`` (twin CRS) and its distance."""
        try:
            k = nets.nearest_link(data, point.x, point.y)
        except InvalidInput:
            raise InvalidInput(
                f"input {name!r}: no {data.network} link within {nets.MAX_SNAP:.0f} m",
                hint=f"give a point within {nets.MAX_SNAP:.0f} m of a {data.network} link",
            ) from None
        return k, float(shapely.distance(data.links.geometry.iloc[k], point))


def _crs84(frame: gpd.GeoDataFrame, columns: list[str]) -> dict[str, Any]:
    """``frame`` as a GeoJSON FeatureCollection in CRS84 with ``columns`` as properties."""
    for column in columns:
        if column not in frame:
            frame = frame.assign(**{column: None})
    if not len(frame):
        return {"type": "FeatureCollection", "features": []}
    # RFC 7946: CRS84 goes unnamed (and naming it would cost a search of the EPSG database)
    plain = frame.to_crs("OGC:CRS84").set_crs(None, allow_override=True)
    return nets.features_geojson(plain, columns)


def _withheld(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def _number(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


# -- the processes --------------------------------------------------------------------------

NETWORK_FEATURE = {
    "id": {"type": "string"},
    "feature": {"enum": ["link", "node"]},
    "role": {"enum": ["start", "reached"]},
    "class": {"type": "string"},
    "name": _nullable("string"),
    "diameter_m": _nullable("number"),
    "seq": {"type": "integer", "description": "Order in which the trace reached it"},
}


class TraceProcess(Process):
    id = "trace"
    title = "Network trace"
    title_zh = "管网追踪"
    description = (
        "What is connected to, upstream or downstream of (or both) a node, a link or a point on"
        " a link of a utility network. Directions follow invert levels in gravity networks"
        " (sewers, drains) and run away from the sources in pressurised ones. Closed valves and"
        " closed links stop the trace unless stop_at_closed is false."
    )
    keywords = ("network", "trace", "upstream", "downstream", "utility")
    outputs = {  # noqa: RUF012
        "features": Output(
            "Traced features",
            "The links (lines) then the nodes (points) reached, in the order reached; the"
            " starting ones have role start.",
            feature_collection(NETWORK_FEATURE, ["LineString", "MultiLineString", "Point"]),
            "application/geo+json",
        ),
        "summary": Output(
            "Summary",
            "What the trace reached",
            {
                "type": "object",
                "required": ["network", "direction", "start", "links", "nodes", "length_m"],
                "properties": {
                    "network": {"type": "string"},
                    "direction": {"type": "string"},
                    "directions_from": {"enum": ["invert levels", "sources", "none"]},
                    "start": {"type": "array", "items": {"type": "string"}},
                    "snapped_m": {"type": "number", "description": "Distance of 'at' to the link"},
                    "stop_at_closed": {"type": "boolean"},
                    "links": {"type": "integer"},
                    "nodes": {"type": "integer"},
                    "length_m": {"type": "number"},
                    "withheld": WITHHELD,
                },
            },
        ),
    }

    def inputs(self, env: Analyses) -> dict[str, Input]:
        return {
            "network": env.network_input(),
            "start": Input(
                "start", "Node or link ids to start from (give start or at)", IDS, 0, "unbounded"
            ),
            "at": Input("at", "Or a point on a link (within 50 m; CRS84)", POINT, 0),
            "direction": Input(
                "direction",
                "connected, upstream, downstream or both (upstream and downstream)",
                {
                    "type": "string",
                    "enum": ["connected", "upstream", "downstream", "both"],
                    "default": "connected",
                },
                0,
            ),
            "stop_at_closed": Input(
                "stop at closed valves",
                "Whether closed valves and closed links stop the trace",
                {"type": "boolean", "default": True},
                0,
            ),
        }

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        network, direction = values["network"], values["direction"]
        stop = values["stop_at_closed"]
        grant = env.grant(who, f"{network}_links")
        nodes_grant = env.grant_or_none(who, f"{network}_nodes")
        data = env.network(network)
        if direction != "connected" and not data.gravity and not nets.source_nodes(data).any():
            classes = ", ".join(nets.SOURCE_CLASSES.get(network, ())) or "source"
            raise InvalidInput(
                f"the {network} network has no sources ({classes} nodes): it has no upstream"
                " or downstream",
                hint="trace it with direction connected",
            )
        start, snapped = _start(env, data, values)

        def work(control: JobControl) -> dict[str, Any]:
            control.progress(10, "tracing")
            kinds = ["upstream", "downstream"] if direction == "both" else [direction]
            found = [
                nets.trace_network(env.store, network, kind, start, stop_at_closed=stop, data=data)[
                    1
                ]
                for kind in kinds
            ]
            trace = found[0] if len(found) == 1 else _union(found)
            control.progress(60, "collecting features")
            return _trace_results(
                env,
                data,
                trace,
                start,
                grant,
                nodes_grant,
                {
                    "network": network,
                    "direction": direction,
                    "directions_from": _basis(data, direction),
                    "start": start,
                    **({"snapped_m": snapped} if snapped is not None else {}),
                    "stop_at_closed": stop,
                },
            )

        return work


def _start(
    env: Analyses, data: nets.NetworkData, values: dict[str, Any]
) -> tuple[list[str], float | None]:
    ids, at = values.get("start"), values.get("at")
    if (ids is None) == (at is None):
        raise InvalidInput("give either start (node or link ids) or at (a point)")
    if at is not None:
        k, distance = env.snap(data, env.geometry(at, "at"), "at")
        return [str(data.links["id"].iloc[k])], round(distance, 2)
    graph = data.graph
    known = np.isin(ids, graph.node_ids) | np.isin(ids, graph.link_ids)
    if not known.all():
        bad = ids[int(np.flatnonzero(~known)[0])]
        raise InvalidInput(
            f"input 'start': {bad!r} is not a node or link of the {data.network} network",
            hint=f"GET /collections/{data.network}_links/items lists its links",
        )
    return list(dict.fromkeys(ids)), None


def _basis(data: nets.NetworkData, direction: str) -> str:
    if direction == "connected":
        return "none"
    return "invert levels" if data.network in GRAVITY_NETWORKS else "sources"


def _union(traces: list[Trace]) -> Trace:
    nodes = pd.unique(np.concatenate([t.nodes for t in traces]))
    links = pd.unique(np.concatenate([t.links for t in traces]))
    return Trace(traces[0].network, nodes, links)


def _trace_results(
    env: Analyses,
    data: nets.NetworkData,
    trace: Trace,
    start: list[str],
    grant: Grant,
    nodes_grant: Grant | None,
    summary: dict[str, Any],
) -> dict[str, Any]:
    columns = ["id", "class", "name", "diameter", "geometry"]
    links = data.links.iloc[trace.links][columns].assign(
        feature="link", seq=np.arange(len(trace.links))
    )
    real = trace.nodes[trace.nodes < len(data.nodes)]  # nodes the builder added have no feature
    nodes = data.nodes.iloc[real][["id", "class", "name", "geometry"]].assign(
        feature="node", diameter=np.nan, seq=np.arange(len(real))
    )
    links, hidden_links = env.admit(grant, links)
    nodes, hidden_nodes = env.admit(nodes_grant, nodes)
    frame = gpd.GeoDataFrame(pd.concat([links, nodes], ignore_index=True), crs=data.links.crs)
    frame["role"] = np.where(frame["id"].isin(start), "start", "reached")
    frame = frame.rename(columns={"diameter": "diameter_m"})
    summary.update(
        links=len(trace.links),
        nodes=len(real),
        length_m=round(float(np.nansum(data.graph.link_length[trace.links])), 2),
        withheld=_withheld(
            {f"{data.network}_links": hidden_links, f"{data.network}_nodes": hidden_nodes}
        ),
    )
    return {"features": _crs84(frame, list(NETWORK_FEATURE)), "summary": summary}


BURST_FEATURE = {
    "id": {"type": "string"},
    "role": {
        "enum": [
            "burst",
            "valve_to_close",
            "isolated",
            "cut_off",
            "affected_building",
            "critical_facility",
        ],
        "description": "burst: the failed link; isolated: links inside the closed valves;"
        " cut_off: links left without any source beyond them",
    },
    "class": {"type": "string"},
    "name": _nullable("string"),
    "diameter_m": _nullable("number"),
    "residents": _nullable("number"),
}


class IsolateBurstProcess(Process):
    id = "isolate-burst"
    title = "Burst isolation"
    title_zh = "爆管关阀分析"
    description = (
        "Isolate a burst on a link of a pressurised network (water supply, gas, heating): the"
        " valves to close (growing past valves that can't be operated), the isolated links, the"
        " links cut off from every source beyond them, and who loses supply — service"
        " connections, buildings, residents, demand and critical facilities."
    )
    keywords = ("network", "burst", "valve", "isolation", "impact", "water supply")
    outputs = {  # noqa: RUF012
        "features": Output(
            "Isolation features",
            "The failed link, the valves to close, the isolated and cut-off links, the"
            " buildings that lose supply and the critical facilities among them (role)",
            feature_collection(
                BURST_FEATURE,
                ["LineString", "MultiLineString", "Point", "Polygon", "MultiPolygon"],
            ),
            "application/geo+json",
        ),
        "summary": Output(
            "Impact summary",
            "Valves, extent and impact of the isolation",
            {
                "type": "object",
                "required": [
                    "network",
                    "burst_link",
                    "valves_to_close",
                    "isolable",
                    "loses_supply",
                    "affected_buildings",
                    "residents",
                ],
                "properties": {
                    "network": {"type": "string"},
                    "burst_link": {"type": "string"},
                    "snapped_m": {"type": "number"},
                    "valves_to_close": {"type": "array", "items": {"type": "string"}},
                    "inoperable_bypassed": {"type": "array", "items": {"type": "string"}},
                    "isolable": {"type": "boolean"},
                    "note": {"type": "string"},
                    "isolated_links": {"type": "integer"},
                    "isolated_nodes": {"type": "integer"},
                    "cut_off_links": {"type": "integer"},
                    "cut_off_nodes": {"type": "integer"},
                    "volume_m3": _nullable("number", description="Water to drain"),
                    "loses_supply": IMPACT,
                    "in_isolated_part": IMPACT,
                    "affected_buildings": {"type": "integer"},
                    "residents": {"type": "number"},
                    "critical_facilities": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "class": {"type": "string"},
                                "name": _nullable("string"),
                            },
                        },
                    },
                    "withheld": WITHHELD,
                },
            },
        ),
    }

    def inputs(self, env: Analyses) -> dict[str, Input]:
        return {
            "network": env.network_input(),
            "link": Input("link", "The failed link's id (give link or at)", IDS, 0),
            "at": Input("at", "Or the burst's location (within 50 m of a link; CRS84)", POINT, 0),
            "inoperable": Input(
                "inoperable valves", "Ids of valves that can't be closed", IDS, 0, "unbounded"
            ),
        }

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        network = values["network"]
        grants = {
            "links": env.grant(who, f"{network}_links"),
            "nodes": env.grant_or_none(who, f"{network}_nodes"),
            "buildings": env.grant_or_none(who, "buildings"),
            "facilities": env.grant_or_none(who, "facilities"),
        }
        data, model, valves = env.isolation(network)
        link, at = values.get("link"), values.get("at")
        if (link is None) == (at is None):
            raise InvalidInput("give either link (a link id) or at (a point)")
        snapped = None
        if at is not None:
            k, snapped = env.snap(data, env.geometry(at, "at"), "at")
            link = str(data.links["id"].iloc[k])
        elif not np.isin(link, data.graph.link_ids):
            raise InvalidInput(
                f"input 'link': {link!r} is not a link of the {network} network",
                hint=f"GET /collections/{network}_links/items lists them",
            )
        inoperable = list(dict.fromkeys(values.get("inoperable") or []))
        unknown = [v for v in inoperable if not np.isin(v, valves.ids)]
        if unknown:
            raise InvalidInput(
                f"input 'inoperable': {unknown[0]!r} is not a valve of the {network} network"
            )

        def work(control: JobControl) -> dict[str, Any]:
            control.progress(10, "isolating")
            report = nets.isolate_burst(
                env.store,
                network,
                link=link,
                inoperable=inoperable,
                data=data,
                model=(model, valves),
            )
            control.progress(60, "collecting the affected")
            return _burst_results(env, report, grants, snapped)

        return work


def _burst_results(
    env: Analyses, report: nets.BurstReport, grants: dict[str, Grant | None], snapped: Any
) -> dict[str, Any]:
    data, iso = report.data, report.isolation
    network, crs = data.network, data.links.crs
    failed = str(data.graph.link_ids[iso.link])
    found = report.features()
    role = found["role"].to_numpy(object)
    found["role"] = np.where(
        (found["id"].to_numpy(object) == failed) & (role == "isolated"), "burst", role
    )
    is_valve = role == "valve_to_close"
    links, hidden_links = env.admit(grants["links"], found[~is_valve])
    valves, hidden_valves = env.admit(grants["nodes"], found[is_valve])
    buildings, hidden_buildings = env.admit(grants["buildings"], report.buildings)
    facilities, hidden_facilities = env.admit(grants["facilities"], report.facilities)
    parts = [
        links,
        valves,
        buildings.assign(**{"class": "building", "role": "affected_building"}),
        facilities[["id", "class", "name", "geometry"]].assign(role="critical_facility"),
    ]
    frame = gpd.GeoDataFrame(
        pd.concat([p for p in parts if len(p)], ignore_index=True)
        if any(map(len, parts))
        else found.iloc[:0],
        crs=crs,
    ).rename(columns={"diameter": "diameter_m"})
    shown_valves = set(valves["id"])
    summary = {
        "network": network,
        "burst_link": failed,
        **({"snapped_m": snapped} if snapped is not None else {}),
        "valves_to_close": [v for v in report.valve_ids if v in shown_valves],
        "inoperable_bypassed": [str(v) for v in report.valves.ids[iso.inoperable]],
        "isolable": bool(iso.isolable),
        "note": iso.note,
        "isolated_links": len(iso.isolated_links),
        "isolated_nodes": len(iso.isolated_nodes),
        "cut_off_links": len(iso.cutoff_links),
        "cut_off_nodes": len(iso.cutoff_nodes),
        "volume_m3": _number(iso.volume),
        "loses_supply": {k: float(v) for k, v in iso.impact.items()},
        "in_isolated_part": {k: float(v) for k, v in iso.direct.items()},
        "affected_buildings": len(report.buildings),
        "residents": float(report.buildings["residents"].fillna(0).sum()),
        "critical_facilities": [
            {"id": r["id"], "class": r["class"], "name": r.get("name")}
            for r in facilities[["id", "class", "name"]].to_dict("records")
        ],
        "withheld": _withheld(
            {
                f"{network}_links": hidden_links,
                f"{network}_nodes": hidden_valves,
                "buildings": hidden_buildings,
                "facilities": hidden_facilities,
            }
        ),
    }
    return {"features": _crs84(frame, list(BURST_FEATURE)), "summary": summary}


DIG_FEATURE = {
    "id": {"type": "string"},
    "network": {"type": "string"},
    "class": {"type": "string"},
    "owner": _nullable("string"),
    "diameter_m": _nullable("number"),
    "pressure_class": _nullable("string"),
    "distance_m": {"type": "number", "description": "Horizontal distance to the dig (0 inside)"},
    "crown_depth_m": _nullable("number", description="Shallowest crown depth within reach"),
    "struck": {"type": "boolean", "description": "Whether the dig would strike it"},
    "critical": _nullable("string", description="Why the line is critical"),
}
_PER_NETWORK = {
    "type": "object",
    "properties": {
        name: {"type": "integer"} for name in ("within_reach", "struck", "critical", "withheld")
    },
}


class ExcavationCheckProcess(Process):
    id = "excavation-check"
    title = "Excavation check (call before you dig)"
    title_zh = "开挖前地下管线检查"
    description = (
        "Every utility line within reach of a planned dig — a polygon, or a trench line or a"
        " point with a buffer — and its depth: horizontal distance, shallowest crown depth"
        " within reach, whether the dig would strike it, and why it is critical (high-pressure"
        " gas, high-voltage power, trunk mains). Lines of networks the caller may not read are"
        " counted per network but not shown: ask their owners before digging."
    )
    keywords = ("excavation", "dig", "utility", "safety", "underground")
    outputs = {  # noqa: RUF012
        "features": Output(
            "Lines within reach",
            "The lines within reach, the struck and critical first",
            feature_collection(DIG_FEATURE, ["LineString", "MultiLineString"]),
            "application/geo+json",
        ),
        "summary": Output(
            "Summary",
            "Counts in all and per network",
            {
                "type": "object",
                "required": ["depth_m", "within_reach", "struck", "critical", "networks"],
                "properties": {
                    "depth_m": {"type": "number"},
                    "buffer_m": {"type": "number"},
                    "vertical_margin_m": {"type": "number"},
                    "within_reach": {"type": "integer"},
                    "struck": {"type": "integer"},
                    "critical": {"type": "integer"},
                    "networks": {"type": "object", "additionalProperties": _PER_NETWORK},
                    "withheld": WITHHELD,
                },
            },
        ),
    }

    def inputs(self, env: Analyses) -> dict[str, Input]:
        return {
            "area": Input("area", "The dig's outline (CRS84)", DIG_AREA),
            "depth": Input(
                "depth",
                "Depth of the dig below ground, m",
                {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            ),
            "buffer": Input(
                "buffer",
                "Horizontal safety distance around the outline, m",
                {"type": "number", "minimum": 0, "maximum": 100, "default": 1.0},
                0,
            ),
            "vertical_margin": Input(
                "vertical margin",
                "Lines whose crown is within this below the dig's floor count as struck, m",
                {"type": "number", "minimum": 0, "maximum": 20, "default": 0.5},
                0,
            ),
        }

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        grants = _network_grants(env, who, env.networks())
        dig = Dig(
            env.geometry(values["area"], "area"),
            values["depth"],
            values["buffer"],
            values["vertical_margin"],
        )

        def work(control: JobControl) -> dict[str, Any]:
            control.progress(10, "finding the lines within reach")
            hits = nets.dig_check(env.store, dig)
            control.progress(60, "collecting features")
            return _dig_results(env, hits, grants, dig)

        return work


def _network_grants(env: Analyses, who: Principal, networks: list[str]) -> dict[str, Grant | None]:
    """Grants on the links collections of ``networks`` (None: not readable); the error of the
    first when none is readable."""
    grants = {n: env.grant_or_none(who, f"{n}_links") for n in networks}
    if networks and not any(grants.values()):
        env.grant(who, f"{networks[0]}_links")  # raises 401 or 403
    return grants


def _dig_results(
    env: Analyses, hits: gpd.GeoDataFrame, grants: dict[str, Grant | None], dig: Dig
) -> dict[str, Any]:
    shown, per_network, withheld = [], {}, {}
    for network, rows in hits.groupby("network", sort=True):
        admitted, hidden = env.admit(grants.get(network), rows)
        shown.append(admitted)
        critical = rows["struck"] & rows["critical"].notna()
        per_network[network] = {
            "within_reach": len(rows),
            "struck": int(rows["struck"].sum()),
            "critical": int(critical.sum()),
            "withheld": hidden,
        }
        withheld[f"{network}_links"] = hidden
    frame = pd.concat(shown) if shown else hits
    frame = gpd.GeoDataFrame(frame, crs=hits.crs).sort_index()
    summary = {
        "depth_m": dig.depth,
        "buffer_m": dig.buffer,
        "vertical_margin_m": dig.vertical_margin,
        "within_reach": len(hits),
        "struck": int(hits["struck"].sum()) if len(hits) else 0,
        "critical": int((hits["struck"] & hits["critical"].notna()).sum()) if len(hits) else 0,
        "networks": per_network,
        "withheld": _withheld(withheld),
    }
    return {"features": _crs84(frame, list(DIG_FEATURE)), "summary": summary}


CLEARANCE_FEATURE = {
    "kind": {"type": "string", "description": "horizontal, crossing or building"},
    "id_a": {"type": "string"},
    "id_b": {"type": "string"},
    "network_a": {"type": "string"},
    "network_b": {"type": "string", "description": "a network, or building"},
    "class_a": _nullable("string"),
    "class_b": _nullable("string"),
    "required_m": {"type": "number"},
    "actual_m": {"type": "number"},
    "depth": _nullable("number"),
    "source": _nullable("string", description="The rule's source"),
}


class ClearanceCheckProcess(Process):
    id = "clearance-check"
    title = "Clearance check"
    title_zh = "管线间距检查"
    description = (
        "Utility lines closer to each other (in plan, or where they cross) or to buildings"
        " than the clearance rules allow (GB 50289-2016 by default, or the city's own rules"
        " kept in the twin), in 3D, for the networks given (default all) and optionally within"
        " an area. A violation is shown when the caller may read both sides of it."
    )
    keywords = ("clearance", "utility", "GB 50289", "quality", "underground")
    outputs = {  # noqa: RUF012
        "features": Output(
            "Violations",
            "One point per violation, where it is closest",
            feature_collection(CLEARANCE_FEATURE, ["Point"]),
            "application/geo+json",
        ),
        "summary": Output(
            "Summary",
            "Counts per kind and per pair of networks",
            {
                "type": "object",
                "required": ["rules", "violations", "by_kind", "by_networks"],
                "properties": {
                    "rules": {"type": "string"},
                    "networks": {"type": "array", "items": {"type": "string"}},
                    "violations": {"type": "integer"},
                    "by_kind": _counts("Violations per kind"),
                    "by_networks": _counts("Violations per pair of networks ('a/b')"),
                    "withheld": WITHHELD,
                },
            },
        ),
    }

    def inputs(self, env: Analyses) -> dict[str, Input]:
        return {
            "networks": Input(
                "networks",
                "Networks to check (default: all)",
                {"type": "string", "enum": env.networks()},
                0,
                "unbounded",
            ),
            "area": Input("area", "Only violations within this area (CRS84)", AREA, 0),
            "buildings": Input(
                "buildings",
                "Also check clearances to buildings",
                {"type": "boolean", "default": True},
                0,
            ),
        }

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        chosen = values.get("networks")
        if chosen:
            chosen = sorted(set(chosen))
            grants = {n: env.grant(who, f"{n}_links") for n in chosen}
        else:
            grants = _network_grants(env, who, env.networks())
        grants_b = {"building": env.grant_or_none(who, "buildings")}
        area = env.geometry(values["area"], "area") if values.get("area") else None
        with_buildings = values["buildings"]

        def work(control: JobControl) -> dict[str, Any]:
            control.progress(10, "checking clearances")
            found = _clearances(env, chosen, with_buildings)
            control.progress(70, "collecting features")
            return _clearance_results(env, found, grants | grants_b, area, chosen)

        return work


def _clearances(env: Analyses, networks: list[str] | None, buildings: bool) -> pd.DataFrame:
    """The twin's clearance violations (cached per version of the layers and of its rules)."""
    rules_doc = env.store.get_document(CLEARANCE_RULES_DOCUMENT)
    key = (
        "clearance",
        tuple(networks or ()),
        buildings,
        orjson.dumps(rules_doc, option=orjson.OPT_SORT_KEYS),
    )

    def build() -> pd.DataFrame:
        rules = nets.twin_clearance_rules(env.store)
        found = nets.clearance_check(env.store, rules, networks=networks, buildings=buildings)
        found.attrs["rules"] = rules.name
        return found

    layers = (*NETWORK_LAYERS, "buildings")
    return env.cache.get(key, layers, build)


def _clearance_results(
    env: Analyses,
    found: pd.DataFrame,
    grants: dict[str, Grant | None],
    area: shapely.Geometry | None,
    networks: list[str] | None,
) -> dict[str, Any]:
    crs = env.store.meta.pyproj_crs
    points = gpd.GeoDataFrame(found, geometry=gpd.points_from_xy(found["x"], found["y"]), crs=crs)
    if area is not None:
        points = points[shapely.intersects(points.geometry.to_numpy(), area)]
    points = points.reset_index(drop=True)
    keep = np.ones(len(points), dtype=bool)
    withheld: dict[str, int] = {}
    for side in ("a", "b"):  # a violation is shown when both its sides may be read
        for network, rows in points.groupby(f"network_{side}", sort=False):
            sides = gpd.GeoDataFrame(
                {"id": rows[f"id_{side}"].to_numpy(object)},
                geometry=rows.geometry.to_numpy(),
                index=rows.index,
            )
            admitted, _ = env.admit(grants.get(network), sides)
            dropped = rows.index.difference(admitted.index).to_numpy()
            dropped = dropped[keep[dropped]]
            cid = "buildings" if network == "building" else f"{network}_links"
            withheld[cid] = withheld.get(cid, 0) + len(dropped)
            keep[dropped] = False
    shown = points[keep]
    pairs = shown["network_a"].astype(str) + "/" + shown["network_b"].astype(str)
    summary = {
        "rules": str(found.attrs.get("rules", "")),
        "networks": networks or env.networks(),
        "violations": len(shown),
        "by_kind": {str(k): int(v) for k, v in shown["kind"].value_counts().items()},
        "by_networks": {str(k): int(v) for k, v in pairs.value_counts().items()},
        "withheld": _withheld(withheld),
    }
    return {"features": _crs84(shown, list(CLEARANCE_FEATURE)), "summary": summary}


FLOOD_FEATURE = {
    "id": {"type": "string"},
    "kind": {"enum": list(flooding.AFFECTED)},
    "class": _nullable("string"),
    "name": _nullable("string"),
    "depth_m": _nullable(
        "number", description="Deepest water at a building's walls or at a facility"
    ),
    "flooded_m": _nullable("number", description="Length of a road under more than 0.3 m"),
    "residents": _nullable("number"),
    "flooded": {
        "type": "boolean",
        "description": "A building with water above its sill (0.15 m), an impassable road, a"
        " facility reached",
    },
    "basement_at_risk": _nullable("boolean"),
    "critical": _nullable("boolean"),
}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
"""The media type of a Cloud-Optimised GeoTIFF."""
RASTER_TITLES = {
    "max_depth": "Deepest water (m)",
    "max_speed": "Fastest flow (m/s)",
    "hazard": "Worst hazard class (0 none, 1 low, 2 moderate, 3 significant, 4 extreme)",
    "first_wet": "When the water first rose above 1 cm (s from the start of the storm)",
    "wet_duration": "How long the water stood above 1 cm (s)",
}
MAX_FLOOD_CELLS = 1_000_000
"""Most grid cells a flood run may have (a larger cell size or a smaller area otherwise)."""
_LINK = {
    "type": "object",
    "required": ["href", "rel", "type"],
    "properties": {
        "href": {"type": "string"},
        "rel": {"type": "string"},
        "type": {"type": "string"},
        "title": {"type": "string"},
    },
}


class FloodStormProcess(Process):
    id = "flood-storm"
    title = "Rainstorm flood"
    title_zh = "暴雨内涝模拟"
    description = (
        "Run a Chicago design storm (Guangzhou's storm intensity formula) of a return period"
        " and duration on the twin's surface — terrain, buildings as walls, road and ground"
        " roughness, infiltration — alone or coupled to its storm drains through SWMM, and keep"
        " it as a flood scenario: the buildings with water above their sill, residents"
        " affected, impassable roads, critical facilities reached, the deepest water and the"
        " mass balance, with its rasters as Cloud-Optimised GeoTIFF. Needs a signed-in caller;"
        " coupling needs read access to the drainage network's links."
    )
    keywords = ("flood", "rainstorm", "design storm", "inundation", "SWMM", "scenario")
    access = "a signed-in caller; coupled runs: read access to the drainage network's links"
    outputs = {  # noqa: RUF012
        "features": Output(
            "What the flood reaches",
            "The buildings, roads and critical facilities the flood reaches (kind)",
            feature_collection(
                FLOOD_FEATURE,
                ["Polygon", "MultiPolygon", "LineString", "MultiLineString", "Point"],
            ),
            "application/geo+json",
        ),
        "summary": Output(
            "Scenario summary",
            "What the flood reaches in all, its extremes and its mass balance",
            {
                "type": "object",
                "required": [
                    "scenario",
                    "params",
                    "buildings_flooded",
                    "residents_affected",
                    "impassable_length_m",
                    "facilities_reached",
                    "critical_facilities_reached",
                    "max_depth_m",
                    "mass_balance",
                ],
                "properties": {
                    "scenario": {"type": "string", "description": "The kept scenario's id"},
                    "params": {"type": "object"},
                    "flooded_area_m2": {"type": "number"},
                    "max_depth_m": {"type": "number"},
                    "hazard_area_m2": {
                        "type": "object",
                        "description": "Area per hazard class, m²",
                        "additionalProperties": {"type": "number"},
                    },
                    "first_flooding_s": _nullable("number"),
                    "buildings_flooded": {"type": "integer"},
                    "basements_at_risk": {"type": "integer"},
                    "residents_affected": {"type": "integer"},
                    "roads_impassable": {"type": "integer"},
                    "impassable_length_m": {"type": "number"},
                    "facilities_reached": {"type": "integer"},
                    "critical_facilities_reached": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "class": {"type": "string"},
                                "name": _nullable("string"),
                            },
                        },
                    },
                    "mass_balance": {"type": "object"},
                    "drainage": {"type": "object"},
                    "withheld": WITHHELD,
                },
            },
        ),
        "rasters": Output(
            "Rasters",
            "Links (paths on this service) to the kept scenario's rasters: Cloud-Optimised"
            " GeoTIFF in the twin's CRS",
            {"type": "array", "items": _LINK},
        ),
    }

    def inputs(self, env: Analyses) -> dict[str, Input]:
        return {
            "return_period": Input(
                "return period",
                "Years between storms this heavy",
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
            ),
            "duration": Input(
                "duration",
                "Minutes of rain (a multiple of 5)",
                {"type": "number", "minimum": 5, "maximum": 1440, "multipleOf": 5},
            ),
            "peak_ratio": Input(
                "peak position",
                "When the rain peaks, as a share of the duration (the storm's pattern)",
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.4},
                0,
            ),
            "after": Input(
                "run on",
                "Minutes simulated after the rain stops",
                {"type": "number", "minimum": 0, "maximum": 1440, "default": 60},
                0,
            ),
            "cell": Input(
                "cell size",
                f"Grid cell size, m (at most {MAX_FLOOD_CELLS:,} cells)",
                {"type": "number", "minimum": 1, "maximum": 100, "default": 5},
                0,
            ),
            "solver": Input(
                "solver",
                "inertial (local inertia: fast) or swe (the full shallow-water equations)",
                {"type": "string", "enum": ["inertial", "swe"], "default": "inertial"},
                0,
            ),
            "coupled": Input(
                "coupled to the drains",
                "Exchange water with the storm (or combined) drainage network through SWMM",
                {"type": "boolean", "default": False},
                0,
            ),
            "bbox": Input(
                "area of interest", "Only this area (CRS84); default: the whole terrain", BBOX, 0
            ),
        }

    def prepare(self, env: Analyses, who: Principal, values: dict[str, Any]) -> Work:
        if who.anonymous:
            raise Unauthorized(
                "running a flood simulation needs a signed-in user",
                hint="send your API key (X-API-Key) or a bearer token (POST /oauth/token)",
            )
        if values["coupled"]:
            drains = [n for n in ("storm", "combined") if n in env.networks()]
            if not drains:
                raise InvalidInput(
                    "the twin publishes no storm or combined drainage network to couple",
                    hint="run it with coupled false",
                )
            env.grant(who, f"{drains[0]}_links")
        grants = flood_grants(env, who)
        bounds = env.geometry(values["bbox"], "bbox").bounds if values.get("bbox") else None
        cell = float(values["cell"])
        rows, cols = flooding.grid_shape(env.store, cell=cell, bounds=bounds)
        if rows * cols > MAX_FLOOD_CELLS:
            raise InvalidInput(
                f"a {cell:g} m grid of this area has {rows * cols:,} cells;"
                f" at most {MAX_FLOOD_CELLS:,}",
                hint="give a larger cell size or a smaller bbox",
            )
        storm = dict(
            return_period=float(values["return_period"]),
            duration_min=float(values["duration"]),
            after_min=float(values["after"]),
            solver=values["solver"],
            cell=cell,
            bounds=bounds,
            coupled=bool(values["coupled"]),
        )
        peak = float(values["peak_ratio"])
        try:
            rain = design_storm(storm["return_period"], storm["duration_min"], peak_ratio=peak)
        except ValueError as exc:
            raise InvalidInput(f"the design storm: {exc}") from None

        def work(control: JobControl) -> dict[str, Any]:
            control.progress(2, "building the grid")
            scenario = flooding.run_storm(
                env.store, rain=rain, on_step=_flood_progress(control, storm), **storm
            )
            scenario.params["peak_ratio"] = peak
            control.progress(92, "keeping the scenario")
            key = flooding.save_scenario(env.store, scenario)
            return flood_results(env, env.store.get_document(key) or {}, grants)

        return work


def _flood_progress(control: JobControl, storm: dict[str, Any]) -> Callable[[float, float], None]:
    """The simulation's step callback: progress from 5 to 90 % with the simulated time (at most
    twice a second), and the end of the run once the job is dismissed."""
    seconds = (storm["duration_min"] + storm["after_min"]) * 60.0
    last = [0.0, -1]

    def step(t: float, dt_: float) -> None:
        if control.dismissed:
            raise JobDismissed("the flood run was dismissed")
        percent = 5 + int(85 * min(1.0, t / seconds))
        now = time.monotonic()
        if percent != last[1] and now - last[0] >= 0.5:
            last[:] = [now, percent]
            control.progress(
                percent, f"simulating: {t / 60:.0f} of {seconds / 60:g} min (step {dt_:.2f} s)"
            )

    return step


def flood_grants(env: Analyses, who: Principal) -> dict[str, Grant | None]:
    """The caller's grants on the collections a flood reaches (None: not readable)."""
    return {cid: env.grant_or_none(who, cid) for cid in flooding.AFFECTED.values()}


def flood_results(
    env: Analyses, doc: dict[str, Any], grants: dict[str, Grant | None]
) -> dict[str, Any]:
    """A kept flood scenario as the process's results (``features``, ``summary``, ``rasters``):
    features of collections the caller may not read, and rows their grant hides, are left out
    and counted in ``summary.withheld`` (critical facilities among them as well)."""
    found = flooding.affected_features(env.store, doc)
    shown, withheld = [], {}
    for kind, cid in flooding.AFFECTED.items():
        admitted, hidden = env.admit(grants.get(cid), found[found["kind"] == kind])
        shown.append(admitted)
        withheld[cid] = hidden
    frame = gpd.GeoDataFrame(pd.concat(shown, ignore_index=True), crs=found.crs)
    facilities = set(frame.loc[frame["kind"] == "facility", "id"])
    sid = str(doc.get("id"))
    summary = {
        **doc.get("summary", {}),
        "scenario": sid,
        "params": doc.get("params", {}),
        "facilities_reached": len(doc.get("facilities") or ()),
        "withheld": _withheld(withheld),
    }
    summary["critical_facilities_reached"] = [
        f for f in summary.get("critical_facilities_reached", []) if f.get("id") in facilities
    ]
    rasters = [
        {
            "href": f"/flood/scenarios/{sid}/rasters/{name}",
            "rel": "enclosure",
            "type": COG,
            "title": RASTER_TITLES.get(name, name),
        }
        for name in flooding.RASTERS
    ]
    return {
        "features": _crs84(frame, list(FLOOD_FEATURE)),
        "summary": summary,
        "rasters": rasters,
    }


PROCESSES: dict[str, Process] = {
    p.id: p
    for p in (
        TraceProcess(),
        IsolateBurstProcess(),
        ExcavationCheckProcess(),
        ClearanceCheckProcess(),
        FloodStormProcess(),
    )
}
"""The processes offered, by id."""


# -- execute requests -----------------------------------------------------------------------

EXECUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "inputs": {"type": "object", "additionalProperties": True},
        "outputs": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"transmissionMode": {"enum": ["value", "reference"]}},
            },
        },
        "response": {"enum": ["raw", "document"], "default": "raw"},
    },
}
"""The execute request (OGC API – Processes 1.0 ``execute.yaml``, without subscribers)."""


@dataclass
class Execution:
    """A checked execute request."""

    process: Process
    values: dict[str, Any]
    outputs: list[str]
    response: str
    request: dict[str, Any]


def parse_execute(env: Analyses, process: Process, raw: bytes) -> Execution:
    """Check an execute request body against the process description."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput(
            "the execute request must be a JSON object", hint='send {"inputs": {...}}'
        )
    if body.get("subscriber") is not None:
        raise InvalidInput(
            "callbacks (subscriber) are not offered",
            hint="run it with Prefer: respond-async and poll /jobs/{jobId}",
        )
    values = check_inputs(process.inputs(env), body.get("inputs", {}))
    wanted = body.get("outputs")
    if wanted is None or wanted == {}:
        outputs = list(process.outputs)
    elif not isinstance(wanted, dict):
        raise InvalidInput("'outputs' must be an object of output ids")
    else:
        outputs = []
        for name, spec in wanted.items():
            if name not in process.outputs:
                raise InvalidInput(
                    f"{process.id} has no output {name!r}",
                    hint=f"outputs: {', '.join(process.outputs)}",
                )
            mode = spec.get("transmissionMode", "value") if isinstance(spec, dict) else None
            if mode != "value":
                raise InvalidInput(
                    f"output {name!r}: transmissionMode {mode!r} is not offered",
                    hint='outputs are sent by value: {"transmissionMode": "value"}',
                )
            outputs.append(name)
    response = body.get("response", "raw")
    if response not in ("raw", "document"):
        raise InvalidInput(f"response {response!r} is not raw or document")
    request = {"inputs": body.get("inputs", {}), "outputs": outputs, "response": response}
    return Execution(process, values, outputs, response, request)


def check_inputs(spec: dict[str, Input], given: Any) -> dict[str, Any]:
    """The input values of an execute request, checked against ``spec`` (JSON Schema, counts),
    with the defaults filled in; ``InvalidInput`` naming the input and what is wrong."""
    if not isinstance(given, dict):
        raise InvalidInput("'inputs' must be an object of input ids")
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}", hint=f"inputs: {', '.join(spec)}")
    out: dict[str, Any] = {}
    for name, item in spec.items():
        value = given.get(name)
        if isinstance(value, dict) and "href" in value:
            raise InvalidInput(
                f"input {name!r}: inputs by reference are not offered", hint="give the value inline"
            )
        if isinstance(value, dict) and "value" in value and "type" not in value:
            value = value["value"]  # a qualified value
        if value is None:
            if item.min_occurs:
                raise InvalidInput(f"input {name!r} is required", hint=item.description)
            out[name] = item.schema.get("default")
            continue
        many = item.max_occurs != 1
        values = value if many and isinstance(value, list) else [value]
        if not many and isinstance(value, list) and item.schema.get("type") != "array":
            raise InvalidInput(f"input {name!r} takes one value, not a list")
        if many and not item.min_occurs <= len(values) <= _most(item):
            raise InvalidInput(
                f"input {name!r} takes {item.min_occurs} to {item.max_occurs}"
                f" values, not {len(values)}"
            )
        validator = jsonschema.Draft202012Validator(item.schema)
        for v in values:
            error = jsonschema.exceptions.best_match(validator.iter_errors(v))
            if error is not None:
                where = "".join(f"[{p!r}]" for p in error.absolute_path)
                raise InvalidInput(f"input {name!r}{where}: {_said(error)}", hint=item.description)
        out[name] = values if many else values[0]
    return out


def _said(error: jsonschema.ValidationError) -> str:
    """A schema error in a line (its message repeats the value, which may be long)."""
    if error.validator in ("oneOf", "anyOf"):
        kinds = [s.get("title") or s.get("type") for s in error.validator_value]
        return "must be one of: " + "; ".join(str(k) for k in kinds)
    text = error.message
    return text if len(text) <= 200 else text[:199] + "…"


def _most(item: Input) -> float:
    return float("inf") if item.max_occurs == "unbounded" else float(item.max_occurs)


def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    """Results as plain JSON values (what a job document can hold)."""
    return orjson.loads(orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain))


def _plain(v: Any) -> Any:
    if isinstance(v, pd.Timestamp | dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    if v is pd.NA or v is pd.NaT:
        return None
    raise TypeError(type(v).__name__)


def _features_in(results: dict[str, Any]) -> int:
    fc = results.get("features")
    return len(fc.get("features", ())) if isinstance(fc, dict) else 0


def _respond_async(prefer: str | None) -> bool:
    tokens = {p.split(";")[0].split("=")[0].strip().lower() for p in (prefer or "").split(",")}
    return "respond-async" in tokens


# -- the router -----------------------------------------------------------------------------


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _process(pid: str) -> Process:
    try:
        return PROCESSES[pid]
    except KeyError:
        raise Problem(
            404,
            NO_SUCH_PROCESS,
            "no such process",
            f"there is no process {pid!r}",
            hint=f"processes: {', '.join(PROCESSES)}",
        ) from None


def _job(runner: JobRunner, jid: str, who: Principal) -> Job:
    """The job ``jid`` if ``who`` may see it (its owner, an admin, or anyone for a job that
    an anonymous caller submitted: its id is then the key)."""
    try:
        job = runner.get(jid)
    except NotFound:
        raise Problem(
            404,
            NO_SUCH_JOB,
            "no such job",
            f"there is no job {jid!r}",
            hint="GET /jobs lists your jobs",
        ) from None
    if job.owner is None or who.admin or job.owner == who.user:
        return job
    if who.anonymous:
        raise Unauthorized(
            f"job {jid!r} belongs to a signed-in user", hint="send your API key or bearer token"
        )
    raise Forbidden(f"job {jid!r} is not yours", hint="GET /jobs lists your jobs")


def router(ctx: Any) -> APIRouter:
    """The OGC API – Processes routes. Creates the job runner (``ctx.jobs``) if there is none
    (or it was closed) and puts the processes' ``Analyses`` (cached networks) in
    ``ctx.extras["analyses"]`` for other parts of the service to share."""
    if ctx.jobs is None or getattr(ctx.jobs, "closed", False):
        ctx.jobs = JobRunner(ctx.store)
    env = Analyses(ctx)
    ctx.extras["analyses"] = env
    api = APIRouter(route_class=ProblemRoute, tags=["Processes"])

    @api.get("/processes", summary="The processes offered")
    async def list_processes(
        request: Request, limit: Annotated[int, Param(ge=1, le=10_000)] = 100
    ) -> Response:
        base = _base(request)
        found = [p.summary(base) for p in list(PROCESSES.values())[:limit]]
        request.state.audit_count = len(found)
        return ORJSONResponse(
            {
                "processes": found,
                "links": [{"href": f"{base}/processes", "rel": "self", "type": "application/json"}],
            }
        )

    @api.get("/processes/{pid}", summary="A process description")
    async def describe(pid: str, request: Request) -> Response:
        process = _process(pid)
        request.state.audit_count = 1
        return ORJSONResponse(process.describe(env, _base(request)))

    @api.post(
        "/processes/{pid}/execution",
        summary="Execute a process (synchronously, or as a job with Prefer: respond-async)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EXECUTE_SCHEMA}},
            }
        },
    )
    async def execute(
        pid: str, request: Request, who: Who, prefer: Annotated[str | None, Header()] = None
    ) -> Response:
        process = _process(pid)
        run = parse_execute(env, process, await _body(request))
        work = await asyncio.to_thread(process.prepare, env, who, run.values)
        outputs = run.outputs

        def selected(control: JobControl) -> dict[str, Any]:
            results = work(control)
            return _jsonable({k: results[k] for k in outputs})

        base = _base(request)
        if _respond_async(prefer):
            job = await asyncio.to_thread(
                ctx.jobs.submit,
                process.id,
                selected,
                owner=who.user,
                department=who.department,
                request=run.request,
            )
            request.state.audit_count = 0
            return ORJSONResponse(
                job.status_info(base),
                status_code=201,
                headers={
                    "Location": f"{base}/jobs/{job.id}",
                    "Preference-Applied": "respond-async",
                },
            )
        results = await asyncio.wrap_future(ctx.jobs.run(selected))
        request.state.audit_count = _features_in(results)
        return _results_response(process, results, run.response)

    @api.get("/jobs", summary="Your jobs (all jobs for admins)")
    async def list_jobs(
        request: Request,
        who: Who,
        processID: Annotated[list[str] | None, Param()] = None,
        status: Annotated[list[str] | None, Param()] = None,
        limit: Annotated[int, Param(ge=1, le=1000)] = 10,
        offset: Annotated[int, Param(ge=0)] = 0,
    ) -> Response:
        statuses = _split(status)
        bad = sorted(set(statuses or ()) - set(STATUSES))
        if bad:
            raise InvalidInput(f"unknown job status {bad[0]!r}", hint=f"use {', '.join(STATUSES)}")
        jobs = ctx.jobs.jobs(
            owner=who.user, everyone=who.admin, processes=_split(processID), statuses=statuses
        )
        base = _base(request)
        page = jobs[offset : offset + limit]
        links = [{"href": str(request.url), "rel": "self", "type": "application/json"}]
        if offset + limit < len(jobs):
            links.append(
                {
                    "href": str(request.url.include_query_params(offset=offset + limit)),
                    "rel": "next",
                    "type": "application/json",
                }
            )
        if offset:
            links.append(
                {
                    "href": str(request.url.include_query_params(offset=max(0, offset - limit))),
                    "rel": "prev",
                    "type": "application/json",
                }
            )
        request.state.audit_count = len(page)
        return ORJSONResponse(
            {
                "jobs": [j.status_info(base) for j in page],
                "numberMatched": len(jobs),
                "numberReturned": len(page),
                "links": links,
            }
        )

    @api.get("/jobs/{jid}", summary="A job's status")
    async def job_status(jid: str, request: Request, who: Who) -> Response:
        job = _job(ctx.jobs, jid, who)
        request.state.audit_count = 1
        return ORJSONResponse(job.status_info(_base(request)))

    @api.get("/jobs/{jid}/results", summary="A job's results")
    async def job_results(jid: str, request: Request, who: Who) -> Response:
        job = _job(ctx.jobs, jid, who)
        if job.status in ("accepted", "running"):
            raise Problem(
                404,
                RESULT_NOT_READY,
                "result not ready",
                f"job {jid} is {job.status}",
                hint="poll the job until it is finished",
            )
        if job.status == "dismissed":
            raise Problem(404, NO_SUCH_JOB, "no such job", f"job {jid} was dismissed")
        if job.status == "failed":
            raise _failure(job)
        process = PROCESSES.get(job.process)
        if process is not None:  # still allowed to read what it was run over?
            network = job.request.get("inputs", {}).get("network")
            if isinstance(network, str) and network in env.networks():
                env.grant(who, f"{network}_links")
        results = await asyncio.to_thread(ctx.jobs.results, jid)
        request.state.audit_count = _features_in(results)
        response = job.request.get("response", "raw")
        return _results_response(process, results, response)

    @api.delete("/jobs/{jid}", summary="Dismiss a job (cancel it, or remove a finished one)")
    async def dismiss(jid: str, request: Request, who: Who) -> Response:
        _job(ctx.jobs, jid, who)
        job = await asyncio.to_thread(ctx.jobs.dismiss, jid)
        request.state.audit_count = 1
        return ORJSONResponse(job.status_info(_base(request)))

    return api


def _failure(job: Job) -> Problem:
    """What the results of a failed job answer: the HTTP status of the reason it failed (400
    for bad input, 500 for an error of the service) with its message."""
    error = job.error or {"status": 500, "title": "failed", "detail": job.message}
    status = int(error.get("status", 500))
    kind = INVALID_PARAMETER if status == 400 else "about:blank"
    title, detail = str(error.get("title", "failed")), str(error.get("detail") or job.message)
    return Problem(status, kind, title, detail, hint=error.get("hint"))


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated or comma-separated query values."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _results_response(process: Process | None, results: dict[str, Any], response: str) -> Response:
    """The results: the value alone for a raw response with one output (with that output's
    media type), else the results document (output id: value)."""
    if response == "raw" and len(results) == 1:
        ((name, value),) = results.items()
        output = process.outputs.get(name) if process is not None else None
        media = output.media_type if output is not None else "application/json"
        return ORJSONResponse(value, media_type=media)
    return ORJSONResponse(results)

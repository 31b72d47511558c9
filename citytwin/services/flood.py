"""Flood scenarios kept in the twin (``citytwin.app.flood.save_scenario``: the ``flood-storm``
process, ``citytwin flood run | ensemble``) over HTTP, for GIS clients and the console:

- ``GET /flood/scenarios``: the kept scenarios, newest first — id, when, the storm, headline
  figures, links (``limit``, ``offset``).
- ``GET /flood/scenarios/{sid}``: one scenario — its parameters, its summary (as the process
  gives it), links to its rasters and its depth overlay for a map: the PNG's address, its
  four corners and bounding box in CRS84, and the colour ramp (``DEPTH_RAMP``) for a legend.
- ``GET /flood/scenarios/{sid}/features``: the buildings, roads and facilities it reaches as
  GeoJSON in CRS84 (``kind`` narrows to building, road or facility).
- ``GET /flood/scenarios/{sid}/rasters/{name}``: a raster (``RASTERS``: max_depth, max_speed,
  hazard, first_wet, wet_duration) as a Cloud-Optimised GeoTIFF in the twin's CRS, with single
  byte ranges answered (206) for range readers such as GDAL's ``/vsicurl/``.
- ``GET /flood/scenarios/{sid}/overlay.png``: the deepest water drawn with ``DEPTH_RAMP``,
  transparent where it stayed below ``min_depth`` (default 5 cm) and inside buildings, one
  pixel per cell, to lay on a map as an image between the corners the scenario gives.

Access: the rasters, the overlay and the totals are as open as the terrain they are computed
from (the terrain tiles are); the features and the critical facilities named go through the
caller's grants on ``buildings``, ``streets`` and ``facilities`` exactly as the process's
results do (``processes.flood_results``): what a grant leaves out is counted in ``withheld``.
Every request is audited by the access middleware with the number of things it returned.
Errors are problem details, as the processes' are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from PIL import Image

from citytwin.app.flood import AFFECTED, RASTERS, SCENARIO_PREFIX, kept_scenario, kept_scenarios
from citytwin.errors import InvalidInput, NotFound
from citytwin.formats.raster import open_raster
from citytwin.services.access import Who
from citytwin.services.api import ORJSONResponse
from citytwin.services.features import transformer
from citytwin.services.processes import (
    COG,
    RASTER_TITLES,
    Analyses,
    ProblemRoute,
    flood_grants,
    flood_results,
)

DEPTH_RAMP: tuple[tuple[float, str], ...] = (
    (0.05, "#bfe3ff"),
    (0.15, "#6cb4f0"),
    (0.30, "#2a7fd4"),
    (0.50, "#1746a2"),
    (1.00, "#4b1c8c"),
    (2.00, "#7a0a52"),
)
"""Depth (m) → colour of the overlay, linear between stops and held beyond the last: 0.15 m is
where a building counts as flooded, 0.3 m where a road turns impassable."""
MIN_DEPTH = 0.05
"""Water shallower than this (m) is left transparent in the overlay."""
GEOJSON = "application/geo+json"
MAX_AGE = 300
_SID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def depth_png(depth: np.ndarray, min_depth: float = MIN_DEPTH) -> bytes:
    """The deepest water as an RGBA PNG coloured by ``DEPTH_RAMP``; transparent where it is
    NaN (no cell: buildings, outside the terrain) or below ``min_depth``."""
    stops = np.array([d for d, _ in DEPTH_RAMP])
    colours = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in DEPTH_RAMP], float)
    d = np.nan_to_num(depth.astype(float), nan=-1.0)
    rgba = np.zeros((*d.shape, 4), np.uint8)
    for band in range(3):
        rgba[..., band] = np.rint(np.interp(d, stops, colours[:, band])).astype(np.uint8)
    rgba[..., 3] = np.where(d >= min_depth, 255, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def raster_corners(data: bytes) -> dict[str, Any]:
    """A GeoTIFF's corners in CRS84 — top left, top right, bottom right, bottom left, as an
    image source on a map takes them — and its bounding box [west, south, east, north]."""
    with open_raster(data) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs.to_string()
    xs, ys = transformer(crs, "EPSG:4326").transform(
        [left, right, right, left], [top, top, bottom, bottom]
    )
    corners = [[round(float(x), 8), round(float(y), 8)] for x, y in zip(xs, ys, strict=True)]
    bbox = [min(xs), min(ys), max(xs), max(ys)]
    return {"coordinates": corners, "bbox": [round(float(v), 8) for v in bbox]}


def _created(sid: str) -> str | None:
    """When a scenario was run, from its id (``YYYYmmddTHHMMSS-…``, UTC)."""
    try:
        at = dt.datetime.strptime(sid[:15], "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return at.isoformat().replace("+00:00", "Z")


def _headline(sid: str, doc: dict[str, Any], base: str) -> dict[str, Any]:
    s = doc.get("summary", {})
    return {
        "id": sid,
        "created": _created(sid),
        "params": doc.get("params", {}),
        "summary": {
            "buildings_flooded": s.get("buildings_flooded"),
            "residents_affected": s.get("residents_affected"),
            "impassable_length_m": s.get("impassable_length_m"),
            "max_depth_m": s.get("max_depth_m"),
            "flooded_area_m2": s.get("flooded_area_m2"),
            "facilities_reached": len(doc.get("facilities") or ()),
        },
        "links": [
            {"href": f"{base}/flood/scenarios/{sid}", "rel": "item", "type": "application/json"}
        ],
    }


def _single_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte of a single ``Range: bytes=…`` (None: the whole body); an
    unsatisfiable range is a ``_Unsatisfiable``."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units, several ranges: the whole body (RFC 9110 allows it)
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # the last N bytes
            n = int(last)
            if n <= 0:
                raise _Unsatisfiable
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None  # a malformed range is ignored
    if start >= size or end < start:
        raise _Unsatisfiable
    return start, min(end, size - 1)


class _Unsatisfiable(Exception):
    pass


def _etag(*parts: Any) -> str:
    return '"' + hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest() + '"'


def _matches(header: str | None, etag: str) -> bool:
    return bool(header) and (
        header.strip() == "*" or etag in [t.strip() for t in header.split(",")]
    )


def router(ctx: Any) -> APIRouter:
    """The flood scenario routes (they share the processes' ``Analyses`` when it is there)."""
    api = APIRouter(route_class=ProblemRoute, tags=["Flood scenarios"])

    def env() -> Analyses:
        found = ctx.extras.get("analyses")
        if found is None:
            found = ctx.extras["analyses"] = Analyses(ctx)
        return found

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def scenario(sid: str) -> dict[str, Any]:
        if not _SID.match(sid):
            raise NotFound(f"no flood scenario {sid!r}", hint="GET /flood/scenarios lists them")
        return kept_scenario(ctx.store, sid)

    def raster(sid: str, name: str) -> bytes:
        if name not in RASTERS:
            raise NotFound(
                f"a flood scenario has no raster {name!r}", hint=f"rasters: {', '.join(RASTERS)}"
            )
        try:
            return ctx.store.get_raster(f"{SCENARIO_PREFIX}{sid}/{name}")
        except (KeyError, NotFound):
            raise NotFound(f"scenario {sid!r} keeps no raster {name!r}") from None

    @api.get("/flood/scenarios", summary="The flood scenarios kept in the twin, newest first")
    async def list_scenarios(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        kept = await asyncio.to_thread(kept_scenarios, ctx.store)
        ids = list(reversed(kept))
        page = ids[offset : offset + limit]
        root = base(request)
        links = [{"href": str(request.url), "rel": "self", "type": "application/json"}]
        if offset + limit < len(ids):
            links.append(
                {
                    "href": str(request.url.include_query_params(offset=offset + limit)),
                    "rel": "next",
                    "type": "application/json",
                }
            )
        request.state.audit_count = len(page)
        return ORJSONResponse(
            {
                "scenarios": [_headline(sid, kept[sid], root) for sid in page],
                "numberMatched": len(ids),
                "numberReturned": len(page),
                "links": links,
            }
        )

    @api.get("/flood/scenarios/{sid}", summary="A flood scenario: summary, rasters, map overlay")
    async def get_scenario(sid: str, request: Request, who: Who) -> Response:
        doc = await asyncio.to_thread(scenario, sid)
        results = await asyncio.to_thread(flood_results, env(), doc, flood_grants(env(), who))
        depth = await asyncio.to_thread(raster, sid, "max_depth")
        overlay = await asyncio.to_thread(raster_corners, depth)
        root, path = base(request), f"/flood/scenarios/{sid}"
        request.state.audit_count = 1
        return ORJSONResponse(
            {
                "id": sid,
                "created": _created(sid),
                "params": doc.get("params", {}),
                "summary": results["summary"],
                "rasters": [{**lk, "href": root + lk["href"]} for lk in results["rasters"]],
                "overlay": {
                    "href": f"{root}{path}/overlay.png",
                    "type": "image/png",
                    **overlay,
                    "min_depth_m": MIN_DEPTH,
                    "legend": [{"depth_m": d, "colour": c} for d, c in DEPTH_RAMP],
                },
                "links": [
                    {"href": root + path, "rel": "self", "type": "application/json"},
                    {"href": f"{root}{path}/features", "rel": "items", "type": GEOJSON},
                    {
                        "href": f"{root}/flood/scenarios",
                        "rel": "collection",
                        "type": "application/json",
                    },
                ],
            }
        )

    @api.get(
        "/flood/scenarios/{sid}/features",
        summary="What a flood scenario reaches (buildings, roads, facilities) as GeoJSON",
    )
    async def get_features(
        sid: str, request: Request, who: Who, kind: Annotated[str | None, Query()] = None
    ) -> Response:
        if kind is not None and kind not in AFFECTED:
            raise InvalidInput(f"unknown kind {kind!r}", hint=f"use one of {', '.join(AFFECTED)}")
        doc = await asyncio.to_thread(scenario, sid)
        results = await asyncio.to_thread(flood_results, env(), doc, flood_grants(env(), who))
        fc = results["features"]
        if kind is not None:
            fc = {**fc, "features": [f for f in fc["features"] if f["properties"]["kind"] == kind]}
        fc["numberReturned"] = len(fc["features"])
        fc["withheld"] = results["summary"].get("withheld", {})
        request.state.audit_count = len(fc["features"])
        return ORJSONResponse(fc, media_type=GEOJSON)

    @api.get(
        "/flood/scenarios/{sid}/rasters/{name}",
        summary="A flood scenario's raster as a Cloud-Optimised GeoTIFF (byte ranges served)",
        response_class=Response,
        responses={
            200: {"content": {COG: {}}, "description": "the raster"},
            206: {"content": {COG: {}}, "description": "the byte range asked for"},
        },
    )
    async def get_raster(
        sid: str,
        name: str,
        request: Request,
        range_: Annotated[str | None, Header(alias="range")] = None,
    ) -> Response:
        await asyncio.to_thread(scenario, sid)
        data = await asyncio.to_thread(raster, sid, name)
        etag = _etag(sid, name, len(data), hashlib.blake2b(data, digest_size=8).hexdigest())
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": f"private, max-age={MAX_AGE}",
            "Content-Disposition": f'inline; filename="{sid}-{name}.tif"',
            "X-Raster-Title": RASTER_TITLES.get(name, name),
        }
        request.state.audit_count = 1
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        try:
            span = _single_range(range_, len(data))
        except _Unsatisfiable:
            return Response(
                status_code=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"}
            )
        if span is None:
            return Response(data, media_type=COG, headers=headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start : end + 1], status_code=206, media_type=COG, headers=headers)

    @api.get(
        "/flood/scenarios/{sid}/overlay.png",
        summary="A flood scenario's deepest water as a transparent PNG for a map",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the overlay"}},
    )
    async def get_overlay(
        sid: str,
        request: Request,
        min_depth: Annotated[float, Query(ge=0, le=10)] = MIN_DEPTH,
    ) -> Response:
        await asyncio.to_thread(scenario, sid)
        data = await asyncio.to_thread(raster, sid, "max_depth")
        etag = _etag(sid, min_depth, DEPTH_RAMP, hashlib.blake2b(data, digest_size=8).hexdigest())
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={MAX_AGE}"}
        request.state.audit_count = 1
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)

        def draw() -> bytes:
            with open_raster(data) as ds:
                depth = ds.read(1, masked=True).filled(np.nan)
            return depth_png(depth, min_depth)

        png = await asyncio.to_thread(draw)
        return Response(png, media_type="image/png", headers=headers)

    return api

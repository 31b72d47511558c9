"""OGC API – Features over the twin's collections, and the landing page and conformance of the
whole service.

- Part 1 Core: ``/``, ``/conformance``, ``/collections``, ``/collections/{cid}``,
  ``/collections/{cid}/items`` (``limit`` 1..10,000 — more is clamped —, ``offset`` paging with
  ``next``/``prev`` links, ``bbox``, ``datetime`` over the features' lifecycle: an instant is the
  state as of then, an interval the features valid at some time in it, each in its latest
  state there), ``/collections/{cid}/items/{fid}``; GeoJSON and HTML (``f=html`` or an
  ``Accept`` of text/html).
- Part 2 CRS by reference: ``crs``, ``bbox-crs`` (CRS84 by default, EPSG:4326 and EPSG:4490 in
  latitude/longitude order, EPSG:3857, the twin's own CRS), ``Content-Crs``, ``storageCrs``.
- Part 3 Filtering: ``/collections/{cid}/queryables``, ``filter`` in CQL2 text or JSON
  (``filter-lang``), ``filter-crs``, and queryables as query parameters (``use=office``).
  The filter goes to the store as a syntax tree (``Query.filter``), which translates it to SQL
  (``citytwin.store.sql_filter``).
- Besides: ``sortby`` (``+a,-b``), ``properties`` (which attributes), ``/search?q=`` (features
  whose id or name matches, across the readable collections; for the console's search box).

Every read is authorised: ``ctx.access.grant`` per collection, rows of ``grant.hidden`` left out
and a district grant narrowing to its district (``narrow``, for other services too); counts
respect the grant. Bad parameters are 400s naming the parameter and what would do.
"""

from __future__ import annotations

import datetime as dt
import html
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
import orjson
import shapely
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pygeofilter import ast
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import STATUSES, AttrType, layer
from citytwin.services.access import Grant, Principal, Who, narrow
from citytwin.services.catalogue import Collection
from citytwin.store import sql_filter
from citytwin.store.base import Filter, Rows

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG_URI = "http://www.opengis.net/def/crs/EPSG/0/"
SERVED_EPSG = (4326, 3857, 4490)
"""CRSs served besides CRS84 and the twin's own."""
DEFAULT_LIMIT = 10
MAX_LIMIT = 10_000
MAX_OFFSET = 10**12
EXTENT_TTL_S = 60.0
"""How long a collection's extent is reused before it is computed again."""
GREGORIAN = "http://www.opengis.net/def/uri/ISO-8601/0/Gregorian"
SEARCH_MAX = 100
GEOJSON = "application/geo+json"
OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"

CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/accent-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/property-property",
)
"""What this module conforms to. Not claimed: temporal-functions (the model's times are
instants; T_MEETS, T_OVERLAPS ... need interval properties), arithmetic (pygeofilter's grammar
lacks ``%``, ``div`` and ``^``), functions, array-functions."""

_BASE_PROPERTIES = ("class", "status", "valid_from", "valid_to")
"""Feature properties every collection has besides its layer's attributes."""
_SORTABLE_BASE = ("id", "class", "status", "valid_from")
_ITEM_QUERY: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("limit", {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT},
     f"1..{MAX_LIMIT} (more: clamped)"),
    ("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}, ""),
    ("bbox", {"type": "string"}, "minx,miny,maxx,maxy (or 6 numbers)"),
    ("bbox-crs", {"type": "string"}, "the CRS of bbox (default CRS84)"),
    ("datetime", {"type": "string"}, "an instant, or an interval a/b, ../b, a/.."),
    ("crs", {"type": "string"}, "the CRS of the response"),
    ("filter", {"type": "string"}, "a CQL2 filter"),
    ("filter-lang", {"type": "string"}, "cql2-text (default) or cql2-json"),
    ("filter-crs", {"type": "string"}, "the CRS of the filter's geometries"),
    ("sortby", {"type": "string"}, "+a,-b"),
    ("properties", {"type": "string"}, "the properties to return"),
    ("f", {"type": "string"}, "json or html"),
)  # fmt: skip
"""The query parameters of items, as documented. The handler reads them itself, on its worker
thread: FastAPI checks declared parameters on the event loop, which the requests in flight
share (measured: 1 M buildings, 16 clients, about 3 % more pages per second without it)."""
_ITEM_PARAMS = frozenset([name for name, _, _ in _ITEM_QUERY] + ["api_key"])
_KIND_SCHEMA = {
    AttrType.STR: {"type": "string"},
    AttrType.INT: {"type": "integer"},
    AttrType.FLOAT: {"type": "number"},
    AttrType.BOOL: {"type": "boolean"},
    AttrType.DATE: {"type": "string", "format": "date"},
}
_GEOMETRY_FORMAT = {
    "Polygon": "geometry-polygon-or-multipolygon",
    "LineString": "geometry-linestring-or-multilinestring",
    "Point": "geometry-point-or-multipoint",
}


# -- coordinate reference systems ------------------------------------------------------------
def crs_uri(crs: Any) -> str | None:
    """The OGC URI of a CRS (``EPSG:4547``, a pyproj CRS ...); None for one without a code."""
    c = _crs(crs) if isinstance(crs, str) else crs
    if c.to_string() == "OGC:CRS84" or c.name.endswith("(CRS84)"):
        return CRS84
    epsg = c.to_epsg()
    return f"{EPSG_URI}{epsg}" if epsg else None


@lru_cache(maxsize=64)
def _crs(value: str) -> CRS:
    return CRS.from_user_input(value)


@lru_cache(maxsize=64)
def _north_first(uri: str) -> bool:
    """Whether the CRS's first axis points north or south (EPSG:4326 latitude first ...)."""
    axes = _crs(uri).axis_info
    return bool(axes) and axes[0].direction.lower() in ("north", "south")


@lru_cache(maxsize=128)
def transformer(src: str, dst: str) -> Transformer:
    """Cached; x/y (east, north) order on both sides — axis swaps are done by the callers.

    PROJ's search for the best operation (``from_crs``) takes about 0.4 s for CGCS2000 to WGS 84,
    and pyproj repeats it in every thread that uses such a Transformer (each gets its own PROJ
    object); so the search runs once here and the chosen pipeline is rebuilt per thread
    (``from_pipeline``: microseconds). ``only_best``: the same single operation either way."""
    best = Transformer.from_crs(_crs(src), _crs(dst), always_xy=True, only_best=True)
    try:
        return Transformer.from_pipeline(best.to_proj4())
    except ProjError:
        return best


def _decimals(uri: str) -> int:
    return 8 if _crs(uri).is_geographic else 3


def _mover(src: str, dst: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The coordinate function from the store's CRS ``src`` (x/y) into ``dst`` in its axis
    order, rounded to about a millimetre; None when nothing changes."""
    swap = _north_first(dst)
    if src == dst and not swap:
        return None
    to_dst, digits = (None if src == dst else transformer(src, dst)), _decimals(dst)

    def move(xy: np.ndarray) -> np.ndarray:
        if to_dst is not None:
            x, y = to_dst.transform(xy[:, 0], xy[:, 1])
            xy = np.column_stack((x, y))
        xy = np.round(xy, digits)
        return xy[:, ::-1] if swap else xy

    return move


_RAGGED = {
    shapely.GeometryType.POINT: "Point",
    shapely.GeometryType.LINESTRING: "LineString",
    shapely.GeometryType.POLYGON: "Polygon",
    shapely.GeometryType.MULTIPOINT: "MultiPoint",
    shapely.GeometryType.MULTILINESTRING: "MultiLineString",
    shapely.GeometryType.MULTIPOLYGON: "MultiPolygon",
}


def geojson_geometries(geoms: np.ndarray, src: str, dst: str) -> list[Any]:
    """GeoJSON geometry objects of ``geoms`` (in the store's CRS ``src``) in ``dst``, as
    moved by ``_mover``, ready for orjson (with ``OPT_SERIALIZE_NUMPY``): the
    coordinates of each type are moved in one array and handed out as slices of it, which is
    several times faster than GEOS's GeoJSON writer (that also holds the GIL). Geometry
    collections and rings go through GEOS."""
    move = _mover(src, dst)
    out: list[Any] = [None] * len(geoms)
    types = np.where(shapely.is_empty(geoms), -2, shapely.get_type_id(geoms))
    has_z = shapely.has_z(geoms) if move is None else np.zeros(len(geoms), bool)
    for type_id in np.unique(types):
        for z in (False, True):
            at = np.flatnonzero((types == type_id) & (has_z == z))
            if not len(at):
                continue
            if type_id not in _RAGGED:  # collections, rings, empty, missing
                moved = geoms[at] if move is None else shapely.transform(geoms[at], move)
                for i, text in zip(at, shapely.to_geojson(moved), strict=True):
                    out[i] = None if text is None else orjson.Fragment(text)
                continue
            _, coords, offsets = shapely.to_ragged_array(geoms[at], include_z=z)
            if move is not None and len(coords):
                coords = np.ascontiguousarray(move(coords))
            name = _RAGGED[type_id]
            for i, coordinates in zip(at, _nest(coords, offsets), strict=True):
                out[i] = {"type": name, "coordinates": coordinates}
    return out


def _nest(coords: np.ndarray, offsets: tuple[np.ndarray, ...]) -> list[Any]:
    """Per geometry, its coordinates nested as GeoJSON nests them: ``to_ragged_array``'s
    offsets (innermost first) turned into lists of slices of ``coords``."""
    if not offsets:  # points: one position each
        return list(coords)
    parts: list[Any] = [coords[a:b] for a, b in itertools.pairwise(offsets[0].tolist())]
    for level in offsets[1:]:
        parts = [parts[a:b] for a, b in itertools.pairwise(level.tolist())]
    return parts


def transform_in(geom: shapely.Geometry, src: str, dst: str) -> shapely.Geometry:
    """A geometry given in ``src`` (in its axis order) into the store's CRS ``dst`` (x/y)."""
    if _north_first(src):
        geom = shapely.transform(geom, lambda xy: xy[:, ::-1])
    out = reproject(geom, src, dst)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise InvalidInput("a geometry lies outside the area of its CRS", hint="check the CRS")
    return out


def reproject(geom: shapely.Geometry, src: str, dst: str) -> shapely.Geometry:
    """A geometry from ``src`` to ``dst``, x/y order on both sides; lines and polygons are
    densified first (up to 32 segments along their extent, none shorter than about 100 m) so
    that their edges follow the curve."""
    if src == dst:
        return geom
    if shapely.get_type_id(geom) not in (0, 4):
        x0, y0, x1, y1 = shapely.bounds(geom)
        shortest = 0.001 if _crs(src).is_geographic else 100.0
        step = max(x1 - x0, y1 - y0) / 32
        if step > 0:
            geom = shapely.segmentize(geom, max(step, shortest))
    t = transformer(src, dst)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


# -- the service -----------------------------------------------------------------------------
@dataclass
class _Page:
    """The parameters of an items request, checked and in the store's terms."""

    limit: int
    offset: int
    out_crs: str
    conditions: dict[str, Any]
    columns: list[str]


class FeatureService:
    """The OGC API Features of one ``ServiceContext``."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.storage_crs = crs_uri(self.store.meta.pyproj_crs) or self.store.meta.crs
        served = [CRS84, *(f"{EPSG_URI}{c}" for c in SERVED_EPSG), self.storage_crs]
        self.crs_list = list(dict.fromkeys(served))
        self._extents: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._extent_lock = threading.Lock()

    # CRS parameters
    def crs_param(self, value: str | None, name: str) -> str:
        """A ``crs``/``bbox-crs``/``filter-crs`` value as one of the served CRS URIs."""
        if value is None or value == "":
            return CRS84
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):  # safe CURIE [EPSG:4326]
            text = text[1:-1]
        if text in self.crs_list:
            return text
        try:
            uri = crs_uri(_crs(text))
        except CRSError:
            uri = None
        if uri is None or uri not in self.crs_list:
            raise InvalidInput(
                f"{name} {value!r} is not a CRS served here",
                source=name,
                hint=f"use one of {', '.join(self.crs_list)}",
            )
        return uri

    # collections
    def collection_for(self, who: Principal, cid: str) -> tuple[Collection, Grant]:
        """The collection and the principal's grant on it (404 when they can't even see it)."""
        coll = self.ctx.catalogue.get(cid)
        if not self.ctx.access.can_see(who, coll):
            raise NotFound(f"no collection {cid!r}", hint="GET /collections lists the collections")
        return coll, self.ctx.access.grant(who, coll)

    def extent(self, coll: Collection) -> dict[str, Any] | None:
        """The collection's extent: its features' bounding box in CRS84 and the span of their
        current versions' starts (``Store.extent``; kept a minute)."""
        with self._extent_lock:
            at, doc = self._extents.get(coll.id, (-math.inf, None))
        if time.monotonic() - at <= EXTENT_TTL_S:
            return doc
        found = self.store.extent(coll.query())
        doc = None
        if found.bbox is not None:
            # the box's outline, not the box: a box of no width or height (points on a line,
            # one point) is an empty polygon, with no bounds
            x0, y0, x1, y1 = found.bbox
            outline = shapely.LineString([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
            box = shapely.bounds(reproject(outline, self.storage_crs, CRS84)).tolist()
            lo = [math.floor(v * 1e7) / 1e7 for v in box[:2]]  # rounded outward
            doc = {"spatial": {"bbox": [lo + [math.ceil(v * 1e7) / 1e7 for v in box[2:]]],
                               "crs": CRS84}}  # fmt: skip
            if found.first is not None:
                start = found.first.isoformat().replace("+00:00", "Z")
                doc["temporal"] = {"interval": [[start, None]], "trs": GREGORIAN}
        with self._extent_lock:
            self._extents[coll.id] = (time.monotonic(), doc)
        return doc

    def collection_doc(self, coll: Collection, base: str) -> dict[str, Any]:
        href = f"{base}/collections/{coll.id}"
        doc: dict[str, Any] = {
            "id": coll.id,
            "title": coll.title,
            "title_zh": coll.title_zh,
            "description": coll.description,
            "keywords": list(coll.keywords),
            "itemType": "feature",
            "crs": self.crs_list,
            "storageCrs": self.storage_crs,
            "owner": coll.owner,
            "sensitivity": coll.sensitivity,
            "updateFrequency": coll.update_frequency,
            "license": coll.licence,
            "links": [
                _link(href, "self", "application/json", f"collection {coll.id}"),
                _link(href + "?f=html", "alternate", "text/html", "as HTML"),
                _link(href + "/items", "items", GEOJSON, "the features"),
                _link(href + "/items?f=html", "items", "text/html", "the features as HTML"),
                _link(
                    href + "/queryables",
                    OGC_REL + "queryables",
                    "application/schema+json",
                    "what can be filtered on",
                ),
                _link(
                    href + "/tiles", OGC_REL + "tilesets-vector", "application/json", "vector tiles"
                ),
            ],
        }
        extent = self.extent(coll)
        if extent is not None:
            doc["extent"] = extent
        return doc

    def queryables(self, coll: Collection, base: str) -> dict[str, Any]:
        """The JSON Schema of what a collection's filters can name (from the model layer)."""
        lay = layer(coll.layer)
        props: dict[str, Any] = {
            "id": {"title": "id", "type": "string", "x-ogc-role": "id"},
            "class": {"title": "feature class", "type": "string", "enum": list(lay.classes)}
            if not lay.open_classes
            else {"title": "feature class", "type": "string"},
            "status": {"title": "lifecycle status", "type": "string", "enum": list(STATUSES)},
            "valid_from": {
                "title": "this state valid from",
                "type": "string",
                "format": "date-time",
            },
            "valid_to": {
                "title": "this state valid until (null: current)",
                "type": "string",
                "format": "date-time",
            },
            "geometry": {
                "title": "geometry",
                "x-ogc-role": "primary-geometry",
                "format": _GEOMETRY_FORMAT.get(lay.geometry, "geometry-any"),
            },
        }
        for a in lay.attributes:
            schema: dict[str, Any] = {"title": a.name, **_KIND_SCHEMA[a.type]}
            if a.description:
                schema["description"] = a.description
            if a.choices is not None:
                schema["enum"] = list(a.choices)
            if a.minimum is not None:
                schema["minimum"] = a.minimum
            if a.unit:
                schema["x-ogc-unit"] = a.unit
            props[a.name] = schema
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{base}/collections/{coll.id}/queryables",
            "type": "object",
            "title": coll.title,
            "properties": props,
            "additionalProperties": False,
        }

    # reading
    def page(self, coll: Collection, request: Request, params: dict[str, Any]) -> _Page:
        """Check an items request's parameters and turn them into store conditions."""
        lay = layer(coll.layer)
        names = [a.name for a in lay.attributes]
        queryable = {"id", "class", "status", *names}
        extra = [k for k in request.query_params if k not in _ITEM_PARAMS]
        unknown = [k for k in extra if k not in queryable]
        if unknown:
            raise InvalidInput(
                f"unknown query parameter {unknown[0]!r}",
                source=unknown[0],
                hint=f"parameters: {', '.join(sorted(_ITEM_PARAMS))}; and queryables as"
                f" property=value: {', '.join(sorted(queryable))}",
            )
        conditions: dict[str, Any] = {}
        where = [_property_filter(lay, k, request.query_params.getlist(k)) for k in extra]
        if where:
            conditions["where"] = where
        nodes: list[ast.Node] = []
        bbox_crs = self.crs_param(params["bbox_crs"], "bbox-crs")
        if params["bbox"] is not None:  # the geometry intersects the box (not just its bbox)
            v = _bbox(params["bbox"])
            box = shapely.box(*(v[:2] + v[2:4] if len(v) == 4 else v[:2] + v[3:5]))
            nodes.append(_intersects(transform_in(box, bbox_crs, self.storage_crs)))
        if params["datetime"] is not None:
            conditions.update(_datetime(params["datetime"]))
        if params["filter"] is not None:
            nodes.append(
                self.user_filter(params["filter"], params["filter_lang"], params["filter_crs"])
            )
        if nodes:
            conditions["filter"] = sql_filter.all_of(*nodes)
        if params["filter"] is None and (params["filter_lang"] or params["filter_crs"]):
            sql_filter.parse("INCLUDE", params["filter_lang"] or "cql2-text")  # check the lang
            self.crs_param(params["filter_crs"], "filter-crs")
        if params["sortby"] is not None:
            conditions["order_by"] = _sortby(params["sortby"], {*_SORTABLE_BASE, *names})
        columns = list(_BASE_PROPERTIES) + names
        if params["properties"] is not None:
            columns = _properties(params["properties"], columns)
        limit = min(int(params["limit"]), MAX_LIMIT)
        return _Page(
            limit, int(params["offset"]), self.crs_param(params["crs"], "crs"), conditions, columns
        )

    def user_filter(self, text: str, lang: str | None, crs: str | None) -> ast.Node:
        """A filter parameter as a tree over the store's CRS."""
        filter_crs = self.crs_param(crs, "filter-crs")
        node = sql_filter.parse(text, lang or "cql2-text")
        return sql_filter.map_geometries(
            node, lambda g: transform_in(g, filter_crs, self.storage_crs)
        )

    def read(self, coll: Collection, grant: Grant, page: _Page) -> tuple[Rows, int]:
        """The features of a page and how many match in all (``Store.query_page``)."""
        q = narrow(
            coll.query(
                **page.conditions, limit=page.limit, offset=page.offset, columns=page.columns
            ),
            grant,
        )
        return self.store.query_page(q)

    def geojson_features(
        self, rows: Rows, columns: Sequence[str], out_crs: str, **extra: Any
    ) -> list[dict[str, Any]]:
        """Features as GeoJSON dicts, built from the store's rows: the geometries transformed
        and written as JSON in one vectorised pass (and embedded as ready fragments), the
        properties picked from each row."""
        if not rows.values:
            return []
        wkb = np.array(rows.column("wkb"), dtype=object)
        geometry = geojson_geometries(shapely.from_wkb(wkb), self.storage_crs, out_crs)
        names = [c for c in columns if c in rows.names]
        at = [rows.names.index(c) for c in names]
        # a row's values of those columns as a tuple (itemgetter of one gives the bare value)
        pick = itemgetter(*at) if len(at) > 1 else (lambda row: tuple(row[i] for i in at))
        first = rows.names.index("id")
        features = []
        for row, g in zip(rows.values, geometry, strict=True):
            props = dict(zip(names, pick(row), strict=True))
            if extra:
                props.update(extra)
            feature = {"type": "Feature", "id": row[first], "geometry": g, "properties": props}
            features.append(feature)
        return features


def _intersects(geom: shapely.Geometry) -> ast.Node:
    return ast.GeometryIntersects(ast.Attribute("geometry"), geom)


# -- parameters ------------------------------------------------------------------------------
def _bbox(text: str) -> list[float]:
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        v = []
    n = len(v) // 2
    ok = len(v) in (4, 6) and all(math.isfinite(x) for x in v)
    if not ok or any(v[i] > v[i + n] for i in range(n)):
        raise InvalidInput(
            f"bbox {text!r} is not 4 (or 6) numbers, lower corner first",
            source="bbox",
            hint="bbox=minx,miny,maxx,maxy in CRS84 (longitude, latitude) or in bbox-crs",
        )
    return v


def _instant(text: str) -> dt.datetime | None:
    if text in ("..", ""):
        return None
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"datetime {text!r} is not an RFC 3339 date-time",
            source="datetime",
            hint="e.g. 2024-05-01T00:00:00Z, or an interval 2024-01-01T00:00:00Z/.. ",
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _datetime(text: str) -> dict[str, Any]:
    """An instant (the state as of then) or an interval (features valid at some time in it)."""
    if "/" not in text:
        t = _instant(text)
        if t is None:
            raise InvalidInput("datetime '..' needs an interval", source="datetime")
        return {"as_of": t}
    start_text, _, end_text = text.partition("/")
    start, end = _instant(start_text), _instant(end_text)
    if start is not None and end is not None and start > end:
        raise InvalidInput(
            f"datetime {text!r}: the interval ends before it starts", source="datetime"
        )
    return {"during": (start, end)}


def _sortby(text: str, sortable: set[str]) -> list[str]:
    keys = []
    for part in text.split(","):
        part = part.strip()
        desc = part.startswith("-")
        name = part.lstrip("+-").strip()
        if name not in sortable:
            raise InvalidInput(
                f"can't sort by {name!r}",
                source="sortby",
                hint=f"sortby=+a,-b over {', '.join(sorted(sortable))}",
            )
        keys.append(("-" if desc else "") + name)
    return keys


def _properties(text: str, known: list[str]) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInput(
            f"no property {unknown[0]!r}", source="properties", hint=f"of {', '.join(known)}"
        )
    return names


def _property_filter(lay: Any, name: str, values: list[str]) -> Filter:
    if len(values) != 1:
        raise InvalidInput(f"{name} is given {len(values)} times", source=name)
    value: Any = values[0]
    if lay.has_attribute(name):
        attribute = lay.attribute(name)
        try:
            value = _COERCE_PARAM[attribute.type](value)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"{name}={values[0]!r}: {name} is a {attribute.type.value}", source=name
            ) from None
    return Filter(name, "=", value)


def _to_bool(v: str) -> bool:
    if v.lower() in ("true", "1"):
        return True
    if v.lower() in ("false", "0"):
        return False
    raise ValueError(v)


def _to_int(v: str) -> int:
    out = int(v)
    if abs(out) >= 2**63:
        raise ValueError(v)
    return out


def _to_float(v: str) -> float:
    out = float(v)
    if not math.isfinite(out):
        raise ValueError(v)
    return out


_COERCE_PARAM: dict[AttrType, Callable[[str], Any]] = {
    AttrType.STR: str,
    AttrType.INT: _to_int,
    AttrType.FLOAT: _to_float,
    AttrType.BOOL: _to_bool,
    AttrType.DATE: dt.date.fromisoformat,
}


# -- responses -------------------------------------------------------------------------------
def _link(href: str, rel: str, type_: str, title: str | None = None) -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": type_}
    if title:
        out["title"] = title
    return out


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _wants_html(request: Request, f: str | None) -> bool:
    if f is not None:
        if f.lower() in ("json", "geojson", "application/json", GEOJSON):
            return False
        if f.lower() in ("html", "text/html"):
            return True
        raise InvalidInput(f"unknown format f={f!r}", source="f", hint="f=json or f=html")
    accept = request.headers.get("accept", "")
    at_html, at_json = accept.find("text/html"), accept.find("json")
    return at_html >= 0 and (at_json < 0 or at_html < at_json)


_JSON_OPTIONS = (
    orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
)
"""Naive times are UTC in the store: written with a Z."""


def _json(body: Any, media_type: str = "application/json", **headers: str) -> Response:
    return Response(
        orjson.dumps(body, option=_JSON_OPTIONS),
        media_type=media_type,
        headers=headers or None,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em;color:#222}"
    "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}a{color:#0645ad}"
    "nav a{margin-right:1em}.wrap{overflow-x:auto}"
)


def _html_page(title: str, body: str, links: Sequence[dict[str, str]] = ()) -> Response:
    nav = "".join(
        f'<a href="{html.escape(link["href"])}">{html.escape(link.get("title") or link["rel"])}</a>'
        for link in links
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<nav><a href="/">CityTwin</a><a href="/collections">collections</a>{nav}</nav>'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(page, media_type="text/html; charset=utf-8")


def _html_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="wrap"><table><tr>{head}</tr>{body}</table></div>'


def _cell(v: Any) -> str:
    if isinstance(v, tuple) and len(v) == 2:  # (text, href)
        return f'<a href="{html.escape(v[1])}">{html.escape(str(v[0]))}</a>'
    return "" if v is None else html.escape(str(v))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- routes ----------------------------------------------------------------------------------
def router(ctx: Any) -> APIRouter:
    """The landing page, conformance and OGC API Features routes."""
    svc = FeatureService(ctx)
    r = APIRouter(tags=["OGC API Features"])

    @r.get("/", summary="Landing page")
    def landing(request: Request, f: str | None = None) -> Response:
        base = _base(request)
        links = [
            _link(base + "/", "self", "application/json", "this document"),
            _link(base + "/?f=html", "alternate", "text/html", "as HTML"),
            _link(
                base + "/api",
                "service-desc",
                "application/vnd.oai.openapi+json;version=3.1",
                "the API definition",
            ),
            _link(base + "/api.html", "service-doc", "text/html", "the API documentation"),
            _link(base + "/conformance", "conformance", "application/json", "conformance"),
            _link(base + "/collections", "data", "application/json", "collections"),
            _link(
                base + "/tileMatrixSets",
                OGC_REL + "tiling-schemes",
                "application/json",
                "tile matrix sets",
            ),
            _link(base + "/processes", OGC_REL + "processes", "application/json", "processes"),
            _link(base + "/jobs", OGC_REL + "job-list", "application/json", "jobs"),
            _link(base + "/catalogue", "search", "application/json", "data catalogue"),
            _link(base + "/search", "search", GEOJSON, "features by id or name (?q=)"),
            _link(base + "/v1.1", "related", "application/json", "SensorThings API 1.1"),
            _link(base + "/console/", "related", "text/html", "operations console"),
        ]
        meta = ctx.store.meta
        title = f"CityTwin — {meta.name}"
        if _wants_html(request, f):
            rows = [((lk.get("title") or lk["rel"], lk["href"]), lk["rel"]) for lk in links[2:]]
            body = f"<p>{html.escape(meta.description)}</p>" + _html_table(rows, ["", "rel"])
            return _html_page(title, body)
        return _json({"title": title, "description": meta.description, "links": links})

    @r.get("/conformance", summary="Conformance classes")
    def conformance(request: Request, f: str | None = None) -> Response:
        from citytwin.services import processes, tiles

        classes = [*CONFORMANCE]
        for module in (tiles, processes):
            classes += list(getattr(module, "CONFORMANCE", ()))
        classes = sorted(dict.fromkeys(classes))
        if _wants_html(request, f):
            return _html_page("Conformance", _html_table([[c] for c in classes], ["class"]))
        return _json({"conformsTo": classes})

    @r.get("/collections", summary="The collections the caller can read")
    def collections(request: Request, who: Who, f: str | None = None) -> Response:
        base = _base(request)
        docs = [svc.collection_doc(c, base) for c in ctx.access.readable(who)]
        if _wants_html(request, f):
            rows = [
                (
                    (d["id"], f"{base}/collections/{d['id']}?f=html"),
                    d["title"],
                    d["title_zh"],
                    d["owner"],
                    d["sensitivity"],
                )
                for d in docs
            ]
            table = _html_table(rows, ["id", "title", "标题", "owner", "sensitivity"])
            return _html_page("Collections", table)
        return _json(
            {
                "links": [
                    _link(base + "/collections", "self", "application/json", "this document"),
                    _link(base + "/collections?f=html", "alternate", "text/html", "as HTML"),
                ],
                "collections": docs,
                "crs": svc.crs_list,
            }
        )

    @r.get("/collections/{cid}", summary="A collection")
    def collection(request: Request, who: Who, cid: str, f: str | None = None) -> Response:
        coll, _ = svc.collection_for(who, cid)
        doc = svc.collection_doc(coll, _base(request))
        if _wants_html(request, f):
            rows = [
                (k, doc[k])
                for k in (
                    "id",
                    "title",
                    "title_zh",
                    "description",
                    "owner",
                    "sensitivity",
                    "updateFrequency",
                    "license",
                    "storageCrs",
                )
            ]
            rows.append(("extent (CRS84)", doc.get("extent", {}).get("spatial", {}).get("bbox")))
            rows += [((lk["title"], lk["href"]), lk["rel"]) for lk in doc["links"][2:]]
            return _html_page(f"{coll.title} · {coll.title_zh}", _html_table(rows, ["", ""]))
        return _json(doc)

    @r.get("/collections/{cid}/queryables", summary="What a collection's filters can name")
    def queryables(request: Request, who: Who, cid: str, f: str | None = None) -> Response:
        coll, _ = svc.collection_for(who, cid)
        doc = svc.queryables(coll, _base(request))
        if _wants_html(request, f):
            rows = [
                (k, v.get("type") or v.get("format"), v.get("description", ""))
                for k, v in doc["properties"].items()
            ]
            return _html_page(f"Queryables of {cid}", _html_table(rows, ["name", "type", ""]))
        return _json(doc, "application/schema+json")

    @r.get(
        "/collections/{cid}/items",
        summary="Features of a collection",
        responses={200: {"content": {GEOJSON: {}, "text/html": {}}}},
        openapi_extra={
            "parameters": [
                {"name": name, "in": "query", "required": False, "schema": schema}
                | ({"description": text} if text else {})
                for name, schema, text in _ITEM_QUERY
            ]
        },
    )
    def items(request: Request, who: Who, cid: str) -> Response:
        coll, grant = svc.collection_for(who, cid)
        params = _item_params(request)
        f = params.pop("f")
        as_html = _wants_html(request, f)
        page = svc.page(coll, request, params)
        rows, matched = svc.read(coll, grant, page)
        request.state.audit_count = len(rows)
        features = svc.geojson_features(rows, page.columns, page.out_crs)
        links = _item_links(request, page, len(rows), matched)
        if as_html:
            return _items_html(coll, features, page, matched, links)
        body = {"type": "FeatureCollection", "features": features, "numberMatched": matched,
                "numberReturned": len(features), "timeStamp": _now(), "links": links}  # fmt: skip
        return _json(body, GEOJSON, **{"Content-Crs": f"<{page.out_crs}>"})

    @r.get(
        "/collections/{cid}/items/{fid}",
        summary="One feature",
        responses={200: {"content": {GEOJSON: {}, "text/html": {}}}},
    )
    def item(
        request: Request,
        who: Who,
        cid: str,
        fid: str,
        crs: str | None = Query(None, description="the CRS of the response"),
        f: str | None = Query(None, description="json or html"),
    ) -> Response:
        coll, grant = svc.collection_for(who, cid)
        out_crs = svc.crs_param(crs, "crs")
        as_html = _wants_html(request, f)
        columns = list(_BASE_PROPERTIES) + [a.name for a in layer(coll.layer).attributes]
        found = ctx.store.query_rows(narrow(coll.query(ids=[fid], columns=columns), grant))
        request.state.audit_count = len(found)
        if not found.values:
            raise NotFound(
                f"no feature {fid!r} in collection {cid!r}",
                hint=f"GET /collections/{cid}/items lists them",
            )
        feature = svc.geojson_features(found, columns, out_crs)[0]
        base = f"{_base(request)}/collections/{cid}"
        feature["links"] = [
            _link(f"{base}/items/{fid}", "self", GEOJSON, "this feature"),
            _link(f"{base}/items/{fid}?f=html", "alternate", "text/html", "as HTML"),
            _link(base, "collection", "application/json", coll.title),
        ]
        if as_html:
            rows = [
                ("id", fid),
                *feature["properties"].items(),
                ("geometry", shapely.from_wkb(found.column("wkb")[0]).geom_type),
            ]
            return _html_page(
                f"{coll.title}: {fid}", _html_table(rows, ["", ""]), feature["links"][2:]
            )
        return _json(feature, GEOJSON, **{"Content-Crs": f"<{out_crs}>"})

    @r.get("/search", summary="Features whose id or name matches, across the collections")
    def search(
        request: Request,
        who: Who,
        q: str = Query(..., min_length=1, max_length=200, description="part of an id or name"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=SEARCH_MAX),
    ) -> Response:
        pattern = f"%{_escape_like(q.strip())}%"
        match = ast.Or(
            ast.Like(ast.Attribute("id"), pattern, True, "%", "_", "\\", False),
            ast.Like(ast.Attribute("name"), pattern, True, "%", "_", "\\", False),
        )
        features: list[dict[str, Any]] = []
        for coll in ctx.access.readable(who):
            if len(features) >= limit:
                break
            grant = ctx.access.grant(who, coll)
            query = coll.query(
                filter=match, columns=["name"], order_by="id", limit=limit - len(features)
            )
            rows = ctx.store.query_rows(narrow(query, grant))
            features += svc.geojson_features(
                rows, ["class", "name"], CRS84, collection=coll.id, title=coll.title
            )
        request.state.audit_count = len(features)
        return _json(
            {
                "type": "FeatureCollection",
                "features": features,
                "numberReturned": len(features),
                "timeStamp": _now(),
            },
            GEOJSON,
        )

    return r


def _item_params(request: Request) -> dict[str, Any]:
    """The items parameters of ``request`` (strings, or None where not given), ``limit`` and
    ``offset`` checked and read as integers."""
    query = request.query_params
    params: dict[str, Any] = {
        name.replace("-", "_"): query.get(name) for name, _, _ in _ITEM_QUERY
    }
    params["limit"] = _bounded_int(params["limit"], "limit", DEFAULT_LIMIT, 1, None)
    params["offset"] = _bounded_int(params["offset"], "offset", 0, 0, MAX_OFFSET)
    return params


def _bounded_int(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number, not {text!r}", source=name) from None
    if value < low or (high is not None and value > high):
        span = f"{low} or more" if high is None else f"from {low} to {high}"
        raise InvalidInput(f"{name} must be {span}, not {value}", source=name)
    return value


def _item_links(
    request: Request, page: _Page, returned: int, matched: int
) -> list[dict[str, str]]:
    url = str(request.url)
    links = [
        _link(url, "self", GEOJSON, "this page"),
        _link(_with_params(url, f="html"), "alternate", "text/html", "as HTML"),
    ]
    more = returned == page.limit and page.offset + returned < matched
    if more:
        nxt = _with_params(url, offset=page.offset + page.limit, limit=page.limit)
        links.append(_link(nxt, "next", GEOJSON, "next page"))
    if page.offset > 0:
        prev = _with_params(url, offset=max(0, page.offset - page.limit), limit=page.limit)
        links.append(_link(prev, "prev", GEOJSON, "previous page"))
    return links


def _with_params(url: str, **params: Any) -> str:
    """``url`` with ``params`` set (replacing those of the same name, which move to the end),
    as Starlette's ``URL.include_query_params`` does, without parsing the whole URL."""
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in params]
    pairs += [(k, str(v)) for k, v in params.items()]
    return f"{base}?{urlencode(pairs)}"


def _items_html(
    coll: Collection,
    features: list[dict[str, Any]],
    page: _Page,
    matched: int,
    links: list[dict[str, str]],
) -> Response:
    names = page.columns
    rows = [
        [
            (f["id"], f"/collections/{coll.id}/items/{f['id']}?f=html"),
            *(f["properties"].get(n) for n in names),
        ]
        for f in features
    ]
    nav = [lk for lk in links if lk["rel"] in ("prev", "next")]
    summary = (
        f"<p>{len(features)} of {matched} features"
        f" (from {page.offset + 1 if features else page.offset}).</p>"
    )
    return _html_page(
        f"{coll.title} · {coll.title_zh}", summary + _html_table(rows, ["id", *names]), nav
    )

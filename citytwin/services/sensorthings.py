"""The OGC SensorThings API 1.1 read side (Part 1: Sensing, §8-9) of a twin's devices, datastreams
and observations. (The create side — POST of Observations — is in ``services/api.py``.)

- ``GET /v1.1``: the service root (entity sets, ``serverSettings.conformance``).
- ``GET /v1.1/<EntitySet>``: Things, Locations, HistoricalLocations, Datastreams, Sensors,
  ObservedProperties, Observations, FeaturesOfInterest (``citytwin.sensing.entities`` says how
  each maps onto the twin), with ``$filter $expand $select $orderby $top $skip $count``
  (``citytwin.services.odata``); ``$top`` is 100 unless given, at most 10,000; a page that
  has more ends with ``@iot.nextLink``.
- ``GET /v1.1/Things('id')`` (numbers without quotes too), a property
  (``Things('id')/name``), its raw value (``.../name/$value``), navigation
  (``Things('id')/Datastreams``, ``Datastreams('id')/Thing/Locations``,
  ``Datastreams('id')/Observations``) and ``$ref`` (self links only).

Answers are shaped as FROST-Server writes them: ``@iot.count``, ``@iot.nextLink`` and
``value`` for collections; per entity ``@iot.id``, ``@iot.selfLink``, the properties,
``<Nav>@iot.navigationLink``, and an expanded navigation property inline (``<Nav>`` with
``<Nav>@iot.count`` and ``<Nav>@iot.nextLink`` where they apply). Geometries (Locations'
``location``, a FeatureOfInterest's ``feature``, a Datastream's ``observedArea``) are GeoJSON in
WGS84; geometry literals in ``$filter`` are WGS84 too, and ``geo.distance`` is in metres
(computed in the twin's projected CRS). Times are UTC (ISO 8601, ``Z``).

Access: a Thing, Datastream or Observation of network X is visible to principals who may read
the collection ``<X>_nodes`` where the catalogue has one (else, and for devices without a
network, the ``devices`` collection); this is a condition of the store's query, so counts and
pages only ever hold what the principal may see. Sensors, ObservedProperties and
FeaturesOfInterest are those of the visible datastreams.

Each level of ``$expand`` is one store query for the whole page (related entities paged per
parent); the latest observation of datastreams
(``$expand=Observations($top=1;$orderby=phenomenonTime desc)``) comes from the store's latest
values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import numpy as np
import orjson
import pandas as pd
import pyproj
import shapely
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import NETWORK_TYPES
from citytwin.sensing.entities import (
    DEFAULT_TOP,
    ENTITY_SETS,
    EntityRequest,
    EntitySet,
    Link,
    Navigation,
)
from citytwin.sensing.model import OM
from citytwin.sensing.payloads import observation_ids
from citytwin.services.access import Principal, Who
from citytwin.services.api import ORJSONResponse
from citytwin.services.odata import Expand, QueryOptions, Segment, parse_options, parse_path

ROOT = "/v1.1"
CONFORMANCE = (
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
)
DATA_ARRAY = "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array"
GEO_JSON = "application/geo+json"
_ID_SAFE = ":@!$&*+,;=-._~'"
_QUERY_SAFE = "$'(),;=:@/"


def _option(name: str, description: str) -> Any:
    """A query option as the OpenAPI document lists it (``odata`` reads the values)."""
    return Annotated[str | None, Query(alias=name, description=description)]


FilterOption = _option("$filter", "an OData condition, e.g. name eq 'x'")
ExpandOption = _option("$expand", "e.g. Datastreams($top=1;$orderby=name)")
SelectOption = _option("$select", "e.g. id,name")
OrderbyOption = _option("$orderby", "e.g. phenomenonTime desc")
TopOption = _option("$top", "page size: 100 unless given, at most 10000")
SkipOption = _option("$skip", "entities to skip")
CountOption = _option("$count", "true: the total in @iot.count")


def router(ctx: Any) -> APIRouter:
    """The SensorThings read routes over ``ctx`` (a ``ServiceContext``)."""
    r = APIRouter(tags=["SensorThings API"])

    @r.get(ROOT, summary="SensorThings service root: entity sets and conformance")
    def service_root(request: Request) -> Response:
        base = _base(request)
        conformance = [*CONFORMANCE, *([DATA_ARRAY] if ctx.ingestor is not None else [])]
        return ORJSONResponse(
            {
                "value": [{"name": n, "url": f"{base}/{n}"} for n in ENTITY_SETS],
                "serverSettings": {"conformance": conformance},
            }
        )

    @r.get(
        ROOT + "/{path:path}",
        summary="SensorThings entities, entity sets, properties and navigation",
        description="Paths: `<EntitySet>`, `<EntitySet>('id')`, `.../<navigation property>`,"
        " `.../<property>`, `.../<property>/$value`, `.../$ref`. Entity sets: "
        + ", ".join(ENTITY_SETS),
    )
    def read(
        request: Request,
        path: str,
        who: Who,
        filter_: FilterOption = None,
        expand: ExpandOption = None,
        select: SelectOption = None,
        orderby: OrderbyOption = None,
        top: TopOption = None,
        skip: SkipOption = None,
        count: CountOption = None,
    ) -> Response:
        return _Answer(ctx, request, who).respond(path)

    return r


def readable_networks(ctx: Any, who: Principal) -> tuple[str | None, ...] | None:
    """The networks whose devices, datastreams and observations ``who`` may read (None in
    it: devices without a network); None: all of them."""
    collections = ctx.catalogue.collections
    devices = "devices" in collections and ctx.access.can_read(who, collections["devices"])
    readable: list[str | None] = []
    for network in NETWORK_TYPES:
        coll = collections.get(f"{network}_nodes")
        if (coll is not None and ctx.access.can_read(who, coll)) or (coll is None and devices):
            readable.append(network)
    if devices:
        readable.append(None)
    return None if len(readable) == len(NETWORK_TYPES) + 1 else tuple(readable)


@lru_cache(maxsize=16)
def _transformers(crs: str) -> tuple[pyproj.Transformer, pyproj.Transformer]:
    """(twin CRS -> WGS84, WGS84 -> twin CRS), longitude first."""
    return (
        pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True),
        pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True),
    )


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + ROOT


def _quote_id(ident: Any) -> str:
    """An id as it appears in a URL path: quoted, ``'`` doubled, unsafe characters escaped."""
    return "'" + quote(str(ident).replace("'", "''"), safe=_ID_SAFE) + "'"


@dataclass
class _Target:
    """What a resource path addresses."""

    entity_set: str
    link: Link | None = None
    ident: str | None = None
    single: bool = False
    prop: str | None = None
    raw_value: bool = False
    ref: bool = False
    path: str = ""  # the canonical path of the entity or collection (for links)


class _Answer:
    """One GET request."""

    def __init__(self, ctx: Any, request: Request, who: Principal) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.request = request
        self.base = _base(request)
        self.networks = readable_networks(ctx, who)
        self.to_wgs84, self.to_twin = _transformers(self.store.meta.pyproj_crs.to_string())

    # -- the resource ---------------------------------------------------------------------
    def respond(self, path: str) -> Response:
        if not path.strip("/"):
            raise NotFound(f"use {ROOT} for the service root", hint=f"GET {ROOT}")
        target = self.resolve(parse_path(path))
        opts = parse_options(dict(self.request.query_params), self._to_twin)
        if target.ref:
            return self._refs(target, opts)
        if target.single:
            return self._entity(target, opts)
        return self._collection(target, opts)

    def resolve(self, segments: list[Segment]) -> _Target:
        first = segments[0]
        if first.name not in ENTITY_SETS:
            raise NotFound(
                f"no entity set {first.name!r}", hint=f"entity sets: {', '.join(ENTITY_SETS)}"
            )
        t = _Target(first.name, ident=first.id, single=first.id is not None, path=first.name)
        if first.id is not None:
            t.path += f"({_quote_id(first.id)})"
        rest = segments[1:]
        while rest:
            seg, rest = rest[0], rest[1:]
            es = ENTITY_SETS[t.entity_set]
            if seg.name == "$ref" and not rest and seg.id is None:
                t.ref = True
                return t
            if not t.single:
                raise NotFound(
                    f"{seg.name!r} after the collection {t.path}: navigate from one entity",
                    hint=f"give its id, e.g. {t.entity_set}('id')/{seg.name}",
                )
            nav = es.nav(seg.name)
            if nav is not None:
                t = self._navigate(t, nav, seg)
                continue
            if seg.name in es.properties and not seg.name.startswith("@") and seg.id is None:
                if rest and [s.name for s in rest] != ["$value"]:
                    raise NotFound(f"{t.path}/{seg.name}: nothing below a property but $value")
                t.prop, t.raw_value = seg.name, bool(rest)
                return t
            raise NotFound(
                f"{es.singular} has no property or navigation property {seg.name!r}",
                hint=f"properties: {', '.join(p for p in es.properties if p[0] != '@')};"
                f" navigation: {', '.join(es.navigation)}",
            )
        return t

    def _navigate(self, t: _Target, nav: Navigation, seg: Segment) -> _Target:
        row = self._row(t)
        value = row[nav.link]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            raise NotFound(f"{t.path} has no {nav.name}")
        if not nav.many and seg.id is not None:
            raise NotFound(f"{nav.name} is a single entity: it takes no id")
        path = f"{t.path}/{nav.name}"
        if seg.id is not None:
            path = f"{nav.target}({_quote_id(seg.id)})"
        return _Target(
            nav.target,
            link=Link(t.entity_set, nav.name, (_plain(value),)),
            ident=seg.id,
            single=not nav.many or seg.id is not None,
            path=path,
        )

    def _row(self, t: _Target) -> dict[str, Any]:
        """The one entity a target addresses (404 when it does not exist or is hidden)."""
        request = EntityRequest(
            t.entity_set,
            ids=(t.ident,) if t.ident is not None else None,
            link=t.link,
            top=1,
            networks=self.networks,
        )
        frame = self.store.sta_entities(request).frame
        if not len(frame):
            raise NotFound(
                f"no {ENTITY_SETS[t.entity_set].singular} {t.path}",
                hint=f"GET {ROOT}/{t.entity_set} lists them",
            )
        return frame.iloc[0].to_dict()

    # -- answers --------------------------------------------------------------------------
    def _collection(self, t: _Target, opts: QueryOptions) -> Response:
        top = DEFAULT_TOP if opts.top is None else opts.top
        page = self.store.sta_entities(
            EntityRequest(
                t.entity_set,
                filter=opts.filter,
                order_by=opts.orderby,
                top=top,
                skip=opts.skip,
                count=opts.count,
                link=t.link,
                networks=self.networks,
            )
        )
        frame = page.frame.iloc[:top]
        docs = self.entities(t.entity_set, frame, opts)
        body: dict[str, Any] = {}
        if opts.count:
            body["@iot.count"] = page.count
        if len(page.frame) > top:
            body["@iot.nextLink"] = self._next_link(
                self.base + "/" + t.path, opts.raw, opts.skip + top, top
            )
        body["value"] = docs
        self.request.state.audit_count = len(docs)
        return ORJSONResponse(body)

    def _entity(self, t: _Target, opts: QueryOptions) -> Response:
        row = pd.DataFrame([self._row(t)])
        if t.prop is not None:
            opts = QueryOptions()  # a property: the entity's own values
        doc = self.entities(t.entity_set, row, opts)[0]
        self.request.state.audit_count = 1
        if t.prop is None:
            return ORJSONResponse(doc)
        value = doc.get(t.prop)
        if t.raw_value:
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            return PlainTextResponse(text)
        return ORJSONResponse({t.prop: value})

    def _refs(self, t: _Target, opts: QueryOptions) -> Response:
        if t.single:
            doc = self.entities(t.entity_set, pd.DataFrame([self._row(t)]), QueryOptions())[0]
            self.request.state.audit_count = 1
            return ORJSONResponse({"@iot.selfLink": doc["@iot.selfLink"]})
        t.path += "/$ref"
        ref_opts = QueryOptions(
            filter=opts.filter,
            orderby=opts.orderby,
            top=opts.top,
            skip=opts.skip,
            count=opts.count,
            select=("@iot.selfLink",),
            raw=opts.raw,
        )
        return self._collection(t, ref_opts)

    def _next_link(self, url: str, raw: tuple[tuple[str, str], ...], skip: int, top: int) -> str:
        params = [(k, v) for k, v in raw if k not in ("$skip", "$top")]
        params += [("$top", str(top)), ("$skip", str(skip))]
        return f"{url}?{urlencode(params, quote_via=quote, safe=_QUERY_SAFE)}"

    # -- entities -------------------------------------------------------------------------
    def entities(self, entity_set: str, frame: pd.DataFrame, opts: QueryOptions) -> list[dict]:
        """The JSON of a page of entities, expanded as ``opts`` asks (one store query per
        expanded navigation property for the whole page)."""
        es = ENTITY_SETS[entity_set]
        select = opts.select
        if select is not None:
            known = {*es.properties, *es.navigation}
            unknown = [s for s in select if s not in known]
            if unknown:
                raise InvalidInput(
                    f"$select: {es.singular} has no property {unknown[0]!r}",
                    hint=f"properties: {', '.join(sorted(known))}",
                )
        ids = self._ids(entity_set, frame)
        props = _FORMATS[entity_set](self, frame)
        out = []
        for ident, own in zip(ids, props, strict=True):
            link = f"{self.base}/{entity_set}({_quote_id(ident)})"
            doc: dict[str, Any] = {}
            if select is None or "@iot.id" in select:
                doc["@iot.id"] = ident
            if select is None or "@iot.selfLink" in select:
                doc["@iot.selfLink"] = link
            for key, value in own.items():
                if select is None or key in select:
                    doc[key] = value
            for nav in es.navigation:
                if select is None or nav in select:
                    doc[f"{nav}@iot.navigationLink"] = f"{link}/{nav}"
            out.append(doc)
        for item in opts.expand:
            self._expand(es, frame, ids, out, item)
        return out

    def _ids(self, entity_set: str, frame: pd.DataFrame) -> list[str]:
        if entity_set == "Observations":
            return observation_ids(frame["datastream_id"].tolist(), frame["phenomenon_time"])
        if entity_set == "HistoricalLocations":
            times = _iso(frame["time"])
            return [f"{t}@{s}" for t, s in zip(frame["thing_id"].tolist(), times, strict=True)]
        return [str(i) for i in frame["id"].tolist()]

    def _expand(
        self, es: EntitySet, frame: pd.DataFrame, ids: list[str], docs: list[dict], item: Expand
    ) -> None:
        nav = es.nav(item.navigation)
        if nav is None:
            raise InvalidInput(
                f"$expand: {es.singular} has no navigation property {item.navigation!r}",
                hint=f"navigation properties: {', '.join(es.navigation)}",
            )
        o = item.options
        links = [_plain(v) for v in frame[nav.link].tolist()] if len(frame) else []
        values = tuple(dict.fromkeys(v for v in links if v is not None))
        top = 1 if not nav.many else (DEFAULT_TOP if o.top is None else o.top)
        grouped: dict[Any, list[dict]] = {}
        more: set[Any] = set()
        counts: dict[Any, int] = {}
        if values:
            page = self.store.sta_entities(
                EntityRequest(
                    nav.target,
                    filter=o.filter,
                    order_by=o.orderby,
                    top=top,
                    skip=o.skip if nav.many else 0,
                    count=o.count and nav.many,
                    link=Link(es.name, nav.name, values, per_parent=True),
                    networks=self.networks,
                )
            )
            child = page.frame
            rank = child.groupby("_link", sort=False).cumcount().to_numpy()
            more = {_plain(v) for v in child["_link"][rank == top].tolist()}
            child = child[rank < top].reset_index(drop=True)
            child_docs = self.entities(nav.target, child, o)
            for v, doc in zip(child["_link"].tolist(), child_docs, strict=True):
                grouped.setdefault(_plain(v), []).append(doc)
            counts = page.counts
        for ident, v, doc in zip(ids, links, docs, strict=True):
            related = grouped.get(v, [])
            if not nav.many:
                if related:
                    doc[nav.name] = related[0]
                continue
            if o.count:
                doc[f"{nav.name}@iot.count"] = int(counts.get(v, 0))
            doc[nav.name] = related
            if v in more:
                url = f"{self.base}/{es.name}({_quote_id(ident)})/{nav.name}"
                doc[f"{nav.name}@iot.nextLink"] = self._next_link(url, o.raw, o.skip + top, top)

    # -- values ---------------------------------------------------------------------------
    def _to_twin(self, geom: shapely.Geometry) -> shapely.Geometry:
        return shapely.transform(geom, _apply(self.to_twin))

    def geojson(self, wkb: pd.Series) -> list[dict | None]:
        """WKB geometries (twin CRS) as GeoJSON geometries in WGS84."""
        if not len(wkb):
            return []
        geoms = shapely.from_wkb(wkb.to_numpy(object))
        geoms = shapely.transform(geoms, _apply(self.to_wgs84, 8))
        return [None if g is None else orjson.loads(g) for g in shapely.to_geojson(geoms)]

    def points(self, x: pd.Series, y: pd.Series) -> list[dict]:
        """Points (twin CRS) as GeoJSON Points in WGS84."""
        lon, lat = self.to_wgs84.transform(x.to_numpy(float), y.to_numpy(float))
        return [
            {"type": "Point", "coordinates": [a, b]}
            for a, b in zip(np.round(lon, 8).tolist(), np.round(lat, 8).tolist(), strict=True)
        ]


def _apply(transformer: pyproj.Transformer, decimals: int | None = None) -> Callable:
    def fn(xy: np.ndarray) -> np.ndarray:
        out = np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        return np.round(out, decimals) if decimals is not None else out

    return fn


def _plain(value: Any) -> Any:
    """A frame value as a plain Python value (None for missing)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT:
        return None
    return value


def _iso(times: pd.Series) -> list[str | None]:
    """Naive UTC times as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (None where missing)."""
    us = pd.to_datetime(times).to_numpy("datetime64[us]")
    out = np.char.add(np.datetime_as_string(us, unit="us"), "Z").astype(object)
    out[np.isnat(us)] = None
    return out.tolist()


def _texts(s: pd.Series) -> list[str | None]:
    return [_plain(v) for v in s.tolist()]


# -- the properties of each entity set ---------------------------------------------------------
def _things(a: _Answer, f: pd.DataFrame) -> list[dict]:
    cols = {
        c: _texts(f[c])
        for c in (
            "name",
            "description",
            "class",
            "feature_id",
            "network",
            "model",
            "status",
            "props",
        )
    }
    out = []
    for i in range(len(f)):
        props = {k: cols[k][i] for k in ("class", "feature_id", "network", "model", "status")}
        props = {k: v for k, v in props.items() if v is not None}
        extra = cols["props"][i]
        if extra:
            props.update(orjson.loads(extra))
        out.append(
            {"name": cols["name"][i], "description": cols["description"][i], "properties": props}
        )
    return out


def _locations(a: _Answer, f: pd.DataFrame) -> list[dict]:
    shapes = a.geojson(f["geometry"])
    return [
        {"name": n, "description": d, "encodingType": GEO_JSON, "location": g}
        for n, d, g in zip(_texts(f["name"]), _texts(f["description"]), shapes, strict=True)
    ]


def _historical_locations(a: _Answer, f: pd.DataFrame) -> list[dict]:
    return [{"time": t} for t in _iso(f["time"])]


def _datastreams(a: _Answer, f: pd.DataFrame) -> list[dict]:
    cols = {
        c: _texts(f[c])
        for c in (
            "name",
            "description",
            "unit",
            "unit_name",
            "unit_definition",
            "observation_type",
            "asset_id",
            "network",
            "zone",
            "group",
            "tags",
        )
    }
    area = a.points(f["x"], f["y"]) if len(f) else []
    out = []
    for i in range(len(f)):
        props = {k: cols[k][i] for k in ("asset_id", "network", "zone", "group")}
        props = {k: v for k, v in props.items() if v is not None}
        if cols["tags"][i]:
            props["tags"] = cols["tags"][i].split(",")
        out.append(
            {
                "name": cols["name"][i],
                "description": cols["description"][i] or "",
                "unitOfMeasurement": {
                    "name": cols["unit_name"][i],
                    "symbol": cols["unit"][i],
                    "definition": cols["unit_definition"][i],
                },
                "observationType": OM + cols["observation_type"][i],
                "observedArea": area[i],
                "properties": props,
            }
        )
    return out


def _sensors(a: _Answer, f: pd.DataFrame) -> list[dict]:
    return [
        {"name": n, "description": d, "encodingType": "text/plain", "metadata": m}
        for n, d, m in zip(
            _texts(f["name"]), _texts(f["description"]), _texts(f["metadata"]), strict=True
        )
    ]


def _observed_properties(a: _Answer, f: pd.DataFrame) -> list[dict]:
    return [
        {"name": n, "definition": d, "description": s or ""}
        for n, d, s in zip(
            _texts(f["name"]), _texts(f["definition"]), _texts(f["description"]), strict=True
        )
    ]


def _observations(a: _Answer, f: pd.DataFrame) -> list[dict]:
    out = []
    quality = _texts(f["result_quality"])
    for t, r, rt, q in zip(
        _iso(f["phenomenon_time"]),
        f["result"].tolist(),
        _iso(f["result_time"]),
        quality,
        strict=True,
    ):
        doc = {"phenomenonTime": t, "resultTime": rt, "result": r}
        if q is not None:
            doc["resultQuality"] = q
        out.append(doc)
    return out


def _features_of_interest(a: _Answer, f: pd.DataFrame) -> list[dict]:
    shapes = a.geojson(f["geometry"])
    return [
        {"name": n, "description": d, "encodingType": GEO_JSON, "feature": g}
        for n, d, g in zip(_texts(f["name"]), _texts(f["description"]), shapes, strict=True)
    ]


_FORMATS: dict[str, Callable[[_Answer, pd.DataFrame], list[dict]]] = {
    "Things": _things,
    "Locations": _locations,
    "HistoricalLocations": _historical_locations,
    "Datastreams": _datastreams,
    "Sensors": _sensors,
    "ObservedProperties": _observed_properties,
    "Observations": _observations,
    "FeaturesOfInterest": _features_of_interest,
}

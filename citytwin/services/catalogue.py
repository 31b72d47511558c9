"""What a twin publishes: its collections (one per model layer, one per utility network's nodes
and links) with the metadata a catalogue shows — title in English and Chinese, owning
department, update frequency, licence, sensitivity — and the access policy of each.

The defaults come from the model; a twin keeps its own choices in the document
``services/catalogue`` (``{"collections": {<id>: {<field>: value, ...}}, "departments": {...}}``),
which overrides field by field. ``Catalogue.of(store)`` reads both.

Sensitivity levels:

- ``public``: anyone, without credentials.
- ``restricted``: staff of the owning department and of ``departments``; listed in the
  catalogue for everyone (so others can ask for access), data only for those.
- ``confidential``: as restricted, and not even listed for anyone else.

``row_rules`` narrow a collection further: rows matching a rule's CQL2 condition are only for
the rule's departments (e.g. high-pressure gas mains only for the gas utility and emergency
management). ``district_scoped``: a user bound to a district sees only features in it.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Query as Param
from fastapi.responses import Response

from citytwin.errors import InvalidInput, NotFound, Unauthorized
from citytwin.model import LAYERS, NETWORK_TYPES, layer
from citytwin.store.base import Filter, Query, Store

SENSITIVITIES = ("public", "restricted", "confidential")
CATALOGUE_DOCUMENT = "services/catalogue"

DEPARTMENTS: dict[str, dict[str, str]] = {
    "planning": {"name": "Planning and Natural Resources", "name_zh": "规划和自然资源局"},
    "housing": {"name": "Housing and Urban-Rural Development", "name_zh": "住房和城乡建设局"},
    "water": {"name": "Water Authority (supply)", "name_zh": "水务局（供水）"},
    "drainage": {"name": "Water Authority (drainage)", "name_zh": "水务局（排水）"},
    "gas": {"name": "Gas Utility", "name_zh": "燃气集团"},
    "power": {"name": "Power Supply Bureau", "name_zh": "供电局"},
    "heating": {"name": "Heating Utility", "name_zh": "热力公司"},
    "telecom": {"name": "Telecommunications", "name_zh": "通信管理局"},
    "transport": {"name": "Transport Bureau", "name_zh": "交通运输局"},
    "emergency": {"name": "Emergency Management Bureau", "name_zh": "应急管理局"},
    "civil_affairs": {"name": "Civil Affairs Bureau", "name_zh": "民政局"},
}
"""The default departments of a city (a twin may add its own in the catalogue document)."""

NETWORK_OWNERS = {
    "water_supply": "water",
    "sewer": "drainage",
    "storm": "drainage",
    "combined": "drainage",
    "gas": "gas",
    "power": "power",
    "heating": "heating",
    "telecom": "telecom",
}
_NETWORK_ZH = {
    "water_supply": "供水",
    "sewer": "污水",
    "storm": "雨水",
    "combined": "合流",
    "gas": "燃气",
    "power": "电力",
    "heating": "热力",
    "telecom": "通信",
}
_LAYER_ZH = {
    "buildings": "建筑",
    "streets": "道路",
    "water_bodies": "水系",
    "zones": "区划与分区",
    "facilities": "公共与关键设施",
    "devices": "监测设备",
    "city_objects": "其他城市对象",
}
_LAYER_FREQUENCY = {"devices": "daily", "zones": "yearly", "city_objects": "yearly"}


@dataclass(frozen=True)
class RowRule:
    """Rows matching ``where`` (CQL2 text) are only for ``departments``; others don't see them."""

    where: str
    departments: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class Collection:
    """A published collection: a model layer, optionally narrowed to one network."""

    id: str
    layer: str
    title: str
    title_zh: str
    description: str = ""
    network: str | None = None
    owner: str = "planning"
    sensitivity: str = "public"
    departments: tuple[str, ...] = ()
    row_rules: tuple[RowRule, ...] = ()
    district_scoped: bool = False
    update_frequency: str = "monthly"
    licence: str = "CC-BY-4.0"
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sensitivity not in SENSITIVITIES:
            raise InvalidInput(
                f"collection {self.id!r}: unknown sensitivity {self.sensitivity!r}",
                hint=f"use one of {', '.join(SENSITIVITIES)}",
            )
        layer(self.layer)

    @property
    def readers(self) -> frozenset[str]:
        """Departments that may read a restricted or confidential collection."""
        return frozenset((self.owner, *self.departments))

    def query(self, **conditions: Any) -> Query:
        """A store query over this collection (its network filter included)."""
        where = list(conditions.pop("where", ()))
        if self.network is not None:
            where.append(Filter("network", "=", self.network))
        return Query(self.layer, where=where, **conditions)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["row_rules"] = [r.__dict__ for r in self.row_rules]
        return out


def default_collections(store: Store) -> list[Collection]:
    """One collection per non-empty layer; utility layers split by network type."""
    present = {s.layer: s for s in store.summary()}
    out: list[Collection] = []
    for name, lay in LAYERS.items():
        if name.startswith("utility_") or name not in present:
            continue
        out.append(
            Collection(
                id=name,
                layer=name,
                title=name.replace("_", " ").capitalize(),
                title_zh=_LAYER_ZH.get(name, name),
                description=lay.description,
                update_frequency=_LAYER_FREQUENCY.get(name, "monthly"),
                district_scoped=name in ("buildings", "facilities"),
                keywords=(name,),
            )
        )
    for kind, label in (("utility_nodes", "nodes"), ("utility_links", "links")):
        if kind not in present:
            continue
        for network in _networks_in(store, kind):
            out.append(_network_collection(kind, label, network))
    return out


def _network_collection(kind: str, label: str, network: str) -> Collection:
    words = network.replace("_", " ")
    zh = _NETWORK_ZH[network] + ("管点" if label == "nodes" else "管线")
    rules: tuple[RowRule, ...] = ()
    if network == "gas" and label == "links":
        rules = (
            RowRule(
                "pressure_class IN ('high', 'sub_high')",
                ("gas", "emergency"),
                "exact geometry of high-pressure gas mains",
            ),
        )
    return Collection(
        id=f"{network}_{label}",
        layer=kind,
        network=network,
        title=f"{words.capitalize()} network {label}",
        title_zh=zh,
        description=f"{LAYERS[kind].description} ({words} network)",
        owner=NETWORK_OWNERS[network],
        sensitivity="restricted",
        departments=("planning", "emergency", "housing"),
        row_rules=rules,
        update_frequency="weekly",
        licence="restricted: for the departments named",
        keywords=(network, "utility", "underground", label),
    )


def _networks_in(store: Store, kind: str) -> list[str]:
    found = []
    for network in NETWORK_TYPES:
        if store.count(Query(kind, where=[Filter("network", "=", network)], limit=1)):
            found.append(network)
    return found


@dataclass
class Catalogue:
    """A twin's published collections and its departments."""

    collections: dict[str, Collection]
    departments: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEPARTMENTS))

    @classmethod
    def of(cls, store: Store) -> Catalogue:
        """The twin's catalogue: the defaults, overridden by its ``services/catalogue``."""
        base = {c.id: c for c in default_collections(store)}
        doc = store.get_document(CATALOGUE_DOCUMENT) or {}
        for cid, changes in (doc.get("collections") or {}).items():
            base[cid] = _override(base.get(cid), cid, changes)
        departments = dict(DEPARTMENTS)
        departments.update(doc.get("departments") or {})
        return cls(base, departments)

    def __iter__(self) -> Iterator[Collection]:
        return iter(self.collections.values())

    def __len__(self) -> int:
        return len(self.collections)

    def get(self, cid: str) -> Collection:
        """The collection ``cid``; ``NotFound`` naming the collections otherwise."""
        try:
            return self.collections[cid]
        except KeyError:
            raise NotFound(
                f"no collection {cid!r}", hint="GET /collections lists the collections"
            ) from None


def _override(current: Collection | None, cid: str, changes: dict[str, Any]) -> Collection:
    if not isinstance(changes, dict):
        raise InvalidInput(
            f"collection {cid!r}: expected an object of fields", source=CATALOGUE_DOCUMENT
        )
    values = dict(changes)
    if "row_rules" in values:
        values["row_rules"] = tuple(
            RowRule(r["where"], tuple(r["departments"]), r.get("reason", ""))
            for r in values["row_rules"]
        )
    for key in ("departments", "keywords"):
        if key in values:
            values[key] = tuple(values[key])
    known = {f.name for f in fields(Collection)}
    unknown = set(values) - known
    if unknown:
        raise InvalidInput(
            f"collection {cid!r}: unknown fields {', '.join(sorted(unknown))}",
            source=CATALOGUE_DOCUMENT,
            hint=f"fields: {', '.join(sorted(known))}",
        )
    if current is None:
        return Collection(id=cid, **{k: v for k, v in values.items() if k != "id"})
    return replace(current, **{k: v for k, v in values.items() if k != "id"})


def router(ctx: Any) -> Any:
    """The catalogue's HTTP side, in the manner of OGC API – Records: ``/catalogue`` (the
    catalogue), ``/catalogue/items`` (a GeoJSON FeatureCollection of records — one per
    collection the caller can see, one per process, one each for the SensorThings and the
    tiles service — searchable with ``q``, ``department``, ``sensitivity``, ``type``, ``bbox``,
    paged with ``limit``/``offset``), ``/catalogue/items/{rid}`` and ``/catalogue/usage``
    (requests and features served per service and department, from the audit log)."""
    from citytwin.services.access import who_asks
    from citytwin.services.api import ORJSONResponse

    records = RecordShelf(ctx)
    api = APIRouter(tags=["Catalogue"])
    asker = Depends(who_asks)  # a default, not an annotation: evaluated here

    @api.get("/catalogue", summary="The data catalogue")
    def landing(request: Request) -> Response:
        base = _base_url(request)
        return ORJSONResponse(
            {
                "id": "catalogue",
                "type": "Catalog",
                "itemType": "record",
                "title": "Data catalogue",
                "title_zh": "数据目录",
                "description": "The twin's datasets, services and processes: who owns them, how"
                " often they change, their licence and sensitivity, and where to get them.",
                "recordTypes": list(RECORD_TYPES),
                "departments": [{"id": k, **v} for k, v in ctx.catalogue.departments.items()],
                "links": [
                    _link(base, "/catalogue", "self", "application/json", "this catalogue"),
                    _link(base, "/catalogue/items", "items", GEOJSON, "the records"),
                    _link(base, "/catalogue/usage", "related", "application/json", "usage"),
                ],
            }
        )

    @api.get("/catalogue/items", summary="Search the catalogue's records")
    def items(
        request: Request,
        who: Any = asker,
        q: str | None = None,
        department: str | None = None,
        sensitivity: str | None = None,
        type: str | None = None,
        bbox: str | None = None,
        limit: Annotated[int, Param(ge=1, le=10_000)] = 10,
        offset: Annotated[int, Param(ge=0, le=10**9)] = 0,
    ) -> Response:
        base = _base_url(request)
        found = records.search(
            who, q=q, department=department, sensitivity=sensitivity, kind=type, bbox=bbox
        )
        page = found[offset : offset + limit]
        links = [{"href": str(request.url), "rel": "self", "type": GEOJSON}]
        if offset + limit < len(found):
            nxt = request.url.include_query_params(offset=offset + limit, limit=limit)
            links.append({"href": str(nxt), "rel": "next", "type": GEOJSON})
        if offset:
            prev = request.url.include_query_params(offset=max(0, offset - limit), limit=limit)
            links.append({"href": str(prev), "rel": "prev", "type": GEOJSON})
        request.state.audit_count = len(page)
        return ORJSONResponse(
            {
                "type": "FeatureCollection",
                "features": [absolute(r, base) for r in page],
                "numberMatched": len(found),
                "numberReturned": len(page),
                "timeStamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "links": links,
            },
            media_type=GEOJSON,
        )

    @api.get("/catalogue/items/{rid}", summary="One record")
    def item(request: Request, rid: str, who: Any = asker) -> Response:
        record = records.get(who, rid)
        request.state.audit_count = 1
        return ORJSONResponse(absolute(record, _base_url(request)), media_type=GEOJSON)

    @api.get("/catalogue/usage", summary="Requests and features served per service and department")
    def usage(
        request: Request,
        who: Any = asker,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> Response:
        if who.anonymous:
            raise Unauthorized(
                "usage figures are for signed-in staff",
                hint="send an API key (X-API-Key) or a bearer token",
            )
        if since is not None and until is not None and since >= until:
            raise InvalidInput("since must come before until", source="since")
        frame = ctx.store.audit_usage(since=since, until=until)
        body = usage_report(frame, ctx.catalogue.departments)
        body["since"] = since.isoformat() if since else None
        body["until"] = until.isoformat() if until else None
        request.state.audit_count = len(frame)
        return ORJSONResponse(body)

    return api


# -- the catalogue's records ------------------------------------------------------------------

RECORD_TYPES = ("dataset", "service", "process")
GEOJSON = "application/geo+json"
MVT = "application/vnd.mapbox-vector-tile"
JSON_SCHEMA = "application/schema+json"
RECORD_CORE = "http://www.opengis.net/spec/ogcapi-records-1/1.0/req/record-core"
_OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"


def _base_url(request: Any) -> str:
    return str(request.base_url).rstrip("/")


def _link(base: str, path: str, rel: str, media: str, title: str, **more: Any) -> dict[str, Any]:
    return {"href": base + path, "rel": rel, "type": media, "title": title, **more}


def absolute(record: dict[str, Any], base: str) -> dict[str, Any]:
    """A record with its links made absolute under ``base`` (records keep paths)."""
    links = [{**lk, "href": base + lk["href"]} for lk in record["links"]]
    return {**record, "links": links}


class RecordShelf:
    """The catalogue's records: built from the catalogue, the processes and the twin's
    extents (kept until the twin's layers change), and searched per caller."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._version: Any = None
        self._records: list[tuple[Collection | None, dict[str, Any]]] = []

    def all(self) -> list[tuple[Collection | None, dict[str, Any]]]:
        """Every record with the collection it describes (None for services and processes)."""
        version = self.ctx.store.data_version(list(LAYERS))
        with self._lock:
            if version != self._version:
                self._records, self._version = self._build(), version
            return self._records

    def visible(self, who: Any) -> list[dict[str, Any]]:
        access = self.ctx.access
        return [r for c, r in self.all() if c is None or access.can_see(who, c)]

    def get(self, who: Any, rid: str) -> dict[str, Any]:
        for record in self.visible(who):
            if record["id"] == rid:
                return record
        raise NotFound(f"no record {rid!r}", hint="GET /catalogue/items lists the records")

    def search(
        self,
        who: Any,
        *,
        q: str | None = None,
        department: str | None = None,
        sensitivity: str | None = None,
        kind: str | None = None,
        bbox: str | None = None,
    ) -> list[dict[str, Any]]:
        """The records ``who`` can see matching every condition given: ``q`` (every word in
        the title, Chinese title, description or keywords, ignoring case), the owning
        ``department``, ``sensitivity``, record ``kind`` (dataset, service, process) and a
        CRS84 ``bbox`` their extent intersects."""
        departments = self.ctx.catalogue.departments
        if department is not None and department not in departments:
            raise InvalidInput(
                f"unknown department {department!r}",
                source="department",
                hint=f"departments: {', '.join(departments)}",
            )
        if sensitivity is not None and sensitivity not in SENSITIVITIES:
            raise InvalidInput(
                f"unknown sensitivity {sensitivity!r}",
                source="sensitivity",
                hint=f"use one of {', '.join(SENSITIVITIES)}",
            )
        if kind is not None and kind not in RECORD_TYPES:
            raise InvalidInput(
                f"unknown record type {kind!r}",
                source="type",
                hint=f"use one of {', '.join(RECORD_TYPES)}",
            )
        window = _bbox_param(bbox) if bbox is not None else None
        words = q.casefold().split() if q else []
        out = []
        for record in self.visible(who):
            p = record["properties"]
            if kind is not None and p["type"] != kind:
                continue
            if department is not None and (p.get("owner") or {}).get("id") != department:
                continue
            if sensitivity is not None and p.get("sensitivity") != sensitivity:
                continue
            if window is not None and not _overlaps(record.get("bbox"), window):
                continue
            if words:
                text = " ".join(
                    [
                        p["title"],
                        p.get("title_zh") or "",
                        p.get("description") or "",
                        *p.get("keywords", ()),
                    ]
                ).casefold()
                if not all(w in text for w in words):
                    continue
            out.append(record)
        return out

    # -- building -------------------------------------------------------------------------
    def _build(self) -> list[tuple[Collection | None, dict[str, Any]]]:
        from citytwin.services.processes import PROCESSES

        store, catalogue = self.ctx.store, self.ctx.catalogue
        to_crs84 = _to_crs84(store)
        out: list[tuple[Collection | None, dict[str, Any]]] = []
        for c in catalogue:
            extent = store.extent(c.query())
            path = f"/collections/{c.id}"
            record = self._record(
                c.id,
                "dataset",
                title=c.title,
                title_zh=c.title_zh,
                description=c.description,
                keywords=c.keywords,
                owner=c.owner,
                sensitivity=c.sensitivity,
                frequency=c.update_frequency,
                licence=c.licence,
                bbox=to_crs84(extent.bbox),
                created=extent.first,
                updated=extent.last,
                count=extent.count,
                formats=[("GeoJSON", GEOJSON), ("Mapbox Vector Tiles", MVT)],
                links=[
                    _link("", path, "describes", "application/json", "the collection"),
                    _link("", path + "/items", "items", GEOJSON, "its features"),
                    _link(
                        "",
                        path + "/queryables",
                        _OGC_REL + "queryables",
                        JSON_SCHEMA,
                        "what can be filtered on",
                    ),
                    _link(
                        "",
                        path + "/tiles",
                        _OGC_REL + "tilesets-vector",
                        "application/json",
                        "vector tiles",
                    ),
                ],
            )
            readers = sorted(c.readers) if c.sensitivity != "public" else []
            record["properties"]["departments"] = readers
            out.append((c, record))
        twin_box = to_crs84(store.meta.extent)
        for p in PROCESSES.values():
            path = f"/processes/{p.id}"
            record = self._record(
                f"process-{p.id}",
                "process",
                title=p.title,
                title_zh=p.title_zh,
                description=p.description,
                keywords=(*p.keywords, "process"),
                sensitivity="restricted",
                frequency="on request",
                bbox=twin_box,
                links=[
                    _link("", path, "describedby", "application/json", "process description"),
                    _link(
                        "", path + "/execution", _OGC_REL + "execute", "application/json", "execute"
                    ),
                    _link("", "/jobs", _OGC_REL + "job-list", "application/json", "jobs"),
                ],
            )
            record["properties"]["access"] = p.access
            out.append((None, record))
        devices = store.extent(Query("devices"))
        sensorthings = self._record(
            "service-sensorthings",
            "service",
            title="SensorThings API (sensor observations)",
            title_zh="物联感知数据服务（SensorThings API）",
            description="Things, datastreams and observations of the twin's monitoring devices"
            " (OGC SensorThings API 1.1) with $filter, $expand, $select, $orderby, $top, $skip.",
            keywords=("sensors", "observations", "monitoring", "SensorThings", "IoT"),
            owner="planning",
            frequency="continuous",
            bbox=to_crs84(devices.bbox),
            updated=devices.last,
            count=devices.count,
            links=[
                _link("", "/v1.1", "service", "application/json", "SensorThings API 1.1"),
                _link("", "/v1.1/Datastreams", "items", "application/json", "datastreams"),
            ],
        )
        sensorthings["properties"]["access"] = (
            "devices on a utility network: for readers of its <network>_nodes collection"
        )
        tiles = self._record(
            "service-tiles",
            "service",
            title="Vector tiles of the twin",
            title_zh="城市矢量瓦片服务",
            description="Every readable collection as Mapbox vector tiles in the WebMercatorQuad"
            " tile matrix set (OGC API – Tiles), one layer per collection.",
            keywords=("tiles", "map", "MVT", "WebMercatorQuad"),
            owner="planning",
            frequency="continuous",
            bbox=twin_box,
            formats=[("Mapbox Vector Tiles", MVT)],
            links=[
                _link("", "/tiles", _OGC_REL + "tilesets-vector", "application/json", "tilesets"),
                _link(
                    "",
                    "/tiles/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}",
                    "item",
                    MVT,
                    "a tile",
                    templated=True,
                ),
                _link(
                    "",
                    "/tileMatrixSets",
                    _OGC_REL + "tiling-schemes",
                    "application/json",
                    "tile matrix sets",
                ),
            ],
        )
        return [*out, (None, sensorthings), (None, tiles)]

    def _record(
        self,
        rid: str,
        kind: str,
        *,
        title: str,
        title_zh: str,
        description: str,
        keywords: Any,
        links: list[dict[str, Any]],
        owner: str | None = None,
        sensitivity: str = "public",
        frequency: str = "monthly",
        licence: str = "CC-BY-4.0",
        bbox: list[float] | None = None,
        created: Any = None,
        updated: Any = None,
        count: int | None = None,
        formats: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        """A record (GeoJSON feature, OGC API – Records core properties plus CityTwin's)."""
        names = self.ctx.catalogue.departments.get(owner, {}) if owner else {}
        props: dict[str, Any] = {
            "type": kind,
            "title": title,
            "title_zh": title_zh,
            "description": description,
            "keywords": list(keywords),
            "owner": {"id": owner, **names} if owner else None,
            "contacts": [{"organization": names.get("name", owner), "roles": ["owner"]}]
            if owner
            else [],
            "update_frequency": frequency,
            "license": licence,
            "sensitivity": sensitivity,
            "created": _iso(created),
            "updated": _iso(updated),
            "extent": {"spatial": {"bbox": [bbox], "crs": CRS84}} if bbox else None,
        }
        if count is not None:
            props["feature_count"] = count
        if formats:
            props["formats"] = [{"name": n, "mediaType": m} for n, m in formats]
        links = [
            _link("", f"/catalogue/items/{rid}", "self", GEOJSON, "this record"),
            _link("", "/catalogue", "collection", "application/json", "the catalogue"),
            *links,
        ]
        return {
            "id": rid,
            "type": "Feature",
            "conformsTo": [RECORD_CORE],
            "geometry": _box_geometry(bbox),
            **({"bbox": bbox} if bbox else {}),
            "properties": props,
            "links": links,
        }


CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


def _to_crs84(store: Store) -> Any:
    from pyproj import Transformer

    transformer = Transformer.from_crs(store.meta.pyproj_crs, "OGC:CRS84", always_xy=True)

    def convert(box: Any) -> list[float] | None:
        if box is None:
            return None
        west, south, east, north = transformer.transform_bounds(*box, densify_pts=21)
        return [round(v, 7) for v in (west, south, east, north)]

    return convert


def _box_geometry(bbox: list[float] | None) -> dict[str, Any] | None:
    if not bbox:
        return None
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _bbox_param(text: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if (
        len(box) != 4
        or not all(math.isfinite(v) for v in box)
        or box[0] > box[2]
        or (box[1] > box[3])
    ):
        raise InvalidInput(
            f"bbox {text!r} is not west,south,east,north",
            source="bbox",
            hint="bbox=113.30,23.07,113.35,23.10 (CRS84: longitude, latitude)",
        )
    return box


def _overlaps(box: list[float] | None, window: tuple[float, ...]) -> bool:
    if not box:
        return False
    return (
        box[0] <= window[2]
        and box[2] >= window[0]
        and box[1] <= window[3]
        and (box[3] >= window[1])
    )


def _iso(t: Any) -> str | None:
    if t is None:
        return None
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def usage_report(frame: Any, departments: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The usage answer from ``Store.audit_usage`` rows (service, department, requests,
    features): totals, per service (with its departments) and per department (with names;
    ``None`` is anonymous use)."""

    def dept(d: Any) -> dict[str, Any]:
        key = None if d is None or d != d else str(d)
        names = departments.get(key, {}) if key else {"name": "anonymous", "name_zh": "匿名"}
        return {"department": key, **names}

    services = []
    for service, rows in frame.groupby("service", sort=False):
        services.append(
            {
                "service": str(service),
                "requests": int(rows["requests"].sum()),
                "features": int(rows["features"].sum()),
                "departments": [
                    {**dept(r.department), "requests": int(r.requests), "features": int(r.features)}
                    for r in rows.itertuples(index=False)
                ],
            }
        )
    services.sort(key=lambda s: (-s["requests"], s["service"]))
    per_dept = (
        frame.assign(
            department=frame["department"].astype(object).where(frame["department"].notna(), None)
        )
        .groupby("department", dropna=False, sort=False)[["requests", "features"]]
        .sum()
    )
    by_department = [
        {**dept(d), "requests": int(r["requests"]), "features": int(r["features"])}
        for d, r in per_dept.iterrows()
    ]
    by_department.sort(key=lambda d: (-d["requests"], str(d["department"])))
    return {
        "total": {
            "requests": int(frame["requests"].sum()),
            "features": int(frame["features"].sum()),
        },
        "services": services,
        "departments": by_department,
    }

"""OGC API - Tiles of a twin: Mapbox Vector Tiles of its collections, and terrain tiles.

Endpoints (tiles of the WebMercatorQuad tile matrix set, addressed ``{tileMatrix}/{tileRow}/
{tileCol}``, i.e. ``{z}/{y}/{x}``):

- ``/tileMatrixSets``, ``/tileMatrixSets/WebMercatorQuad``: the tile matrix set (OGC 2D TMS 2.0
  JSON).
- ``/collections/{cid}/tiles``: the collection's tilesets; ``/collections/{cid}/tiles/
  WebMercatorQuad``: tileset metadata (layer, fields, zoom range, bounds) or, with
  ``f=tilejson``, TileJSON 3.0 that MapLibre takes as a source; ``.../{z}/{y}/{x}``: the tile.
- ``/tiles``, ``/tiles/WebMercatorQuad`` (``f=tilejson``), ``/tiles/WebMercatorQuad/{z}/{y}/
  {x}``: one tile with a layer per collection the caller may read (what the console uses: one
  request per tile); collections they may not read are left out, not refused.
- ``/terrain/WebMercatorQuad/{z}/{y}/{x}.png`` and ``/terrain/tilejson``: Terrarium-encoded
  elevation tiles (256 px) resampled from the twin's DEM, for hillshading and 3D terrain;
  ``/terrain/hillshade/...`` and ``/terrain/hillshade/tilejson``: the shading drawn by the
  server (what the console shows: a software renderer spends about a second on a map's own).

A tile layer is named after its collection; its features carry ``id``, ``class`` and the
attributes of ``LAYER_RULES`` (NULLs left out). Each layer (and some classes) starts at a zoom
level, so tiles stay small (``LAYER_RULES``); below zoom ``SIMPLIFY_BELOW`` lines and polygons
are simplified within half a pixel. An empty tile is a 204; an address outside the tile matrix
set is a 404, one that is not a number a 400.

Access: every collection goes through ``ctx.access.grant``: a grant's hidden rows (CQL2) are
left out and a district-bound user gets the features meeting their district only. The audit
count of a tile request is the number of features in the tile (0 for a 304).

Caching: tiles (bytes and feature counts) are kept in an in-process LRU bounded by bytes
(``TileCache``), keyed by the tile, what was asked (a collection or all), the grants' narrowing
and the data version of every layer in it (``Store.data_version``: it changes with every
insert, update or retire), so a change of a layer makes its tiles new. The ETag is a digest of
that key, so a revalidation (``If-None-Match``) is answered with a 304 without drawing the
tile. Tiles depend on the caller's credentials: ``Cache-Control: private``.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pyproj import Transformer

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import AttrType, layer
from citytwin.services.access import Grant, Principal, Who, narrow
from citytwin.services.catalogue import Collection
from citytwin.store.base import TileLayer, VectorTile
from citytwin.store.duckdb_tiles import HALF_WORLD, tile_bounds

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/dataset-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/tilesetmetadata",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilesetmetadata",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixsetlimits",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixsetlimits",
]
"""The OGC API - Tiles (and 2D Tile Matrix Set 2.0) conformance classes implemented here."""

TMS_ID = "WebMercatorQuad"
TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
TMS_CRS = "http://www.opengis.net/def/crs/EPSG/0/3857"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
TMS_MAX_ZOOM = 24
"""The deepest tile matrix of WebMercatorQuad (as registered by the OGC)."""
MAX_ZOOM = 22
"""The deepest zoom the tilesets advertise (MapLibre over-zooms beyond)."""
MVT = "application/vnd.mapbox-vector-tile"
EXTENT = 4096
"""Tile grid units a side (4096: the MVT default; a 512 px tile gets 8 units a pixel)."""
BUFFER = 64
"""Grid units drawn beyond each edge, so lines and outlines join up across tiles."""
SIMPLIFY_BELOW = 14
SIMPLIFY_UNITS = 8.0
"""Below zoom ``SIMPLIFY_BELOW``, lines and polygons are simplified within this many grid
units (half a pixel of a 256 px tile)."""
TERRAIN_SIZE = 256
TERRAIN_MIN_ZOOM = 8
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
MAX_AGE = 60
"""Seconds a browser may reuse a tile before revalidating it (a 304 when unchanged)."""
_RELS = "http://www.opengis.net/def/rel/ogc/1.0/"
_FORMAT = f"mvt3/{EXTENT}/{BUFFER}/{SIMPLIFY_BELOW}/{SIMPLIFY_UNITS}"
"""Part of every cache key and ETag: change it when tiles are drawn differently."""


@dataclass(frozen=True)
class LayerRule:
    """What a model layer shows in tiles: its ``attributes``, the zoom it starts at, and later
    starts of some of its classes (small, numerous features)."""

    attributes: tuple[str, ...]
    min_zoom: int
    class_min_zoom: dict[str, int] = field(default_factory=dict)

    def classes_at(self, layer_name: str, z: int) -> list[str] | None:
        """The classes shown at zoom ``z``: None for all, [] for none."""
        if z < self.min_zoom:
            return []
        late = {c for c, start in self.class_min_zoom.items() if z < start}
        if not late:
            return None
        return [c for c in layer(layer_name).classes if c not in late]


_KEY_NODES = ("reservoir", "tank", "pumping_station", "outfall", "storage", "substation",
              "regulator")  # fmt: skip
"""Utility nodes shown with the mains from zoom 15; the others (junctions, manholes, valves,
service connections ...) from zoom 16, with the service pipes."""
_SMALL_NODES = {c: 16 for c in layer("utility_nodes").classes if c not in _KEY_NODES}
LAYER_RULES: dict[str, LayerRule] = {
    "zones": LayerRule(
        ("name", "code", "network"),
        8,
        {"catchment": 11, "dma": 11, "land_use": 14, "subcatchment": 14, "grid_cell": 14},
    ),
    "water_bodies": LayerRule(("name",), 8),
    "streets": LayerRule(("name", "street_class", "width", "bridge", "tunnel"), 10),
    "buildings": LayerRule(("name", "height", "ground_level", "floors", "use"), 13),
    "facilities": LayerRule(("name", "critical", "capacity"), 12),
    "city_objects": LayerRule(("name",), 14),
    "utility_links": LayerRule(
        ("name", "diameter", "depth", "pressure_class"), 15, {"service_pipe": 16}
    ),
    "utility_nodes": LayerRule(("name", "depth"), 15, _SMALL_NODES),
    "devices": LayerRule(("name", "network", "feature_id"), 16, {"water_meter": 17}),
}
"""Per model layer: the attributes in its tiles and the zooms its features start at. Tiles
carry what the map draws and labels with (every attribute costs encoding time in each tile);
a click reads the whole feature from the features service."""


# -- tile matrix set ---------------------------------------------------------------------------
def tile_matrix_set() -> dict[str, Any]:
    """WebMercatorQuad as an OGC 2D Tile Matrix Set 2.0 JSON document."""
    matrices = []
    for z in range(TMS_MAX_ZOOM + 1):
        cell = 2 * HALF_WORLD / 256 / 2**z
        matrices.append(
            {
                "id": str(z),
                "scaleDenominator": cell / 0.00028,
                "cellSize": cell,
                "cornerOfOrigin": "topLeft",
                "pointOfOrigin": [-HALF_WORLD, HALF_WORLD],
                "tileWidth": 256,
                "tileHeight": 256,
                "matrixWidth": 2**z,
                "matrixHeight": 2**z,
            }
        )
    return {
        "id": TMS_ID,
        "title": "Google Maps Compatible for the World",
        "uri": TMS_URI,
        "crs": TMS_CRS,
        "orderedAxes": ["X", "Y"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
        "boundingBox": {
            "lowerLeft": [-HALF_WORLD, -HALF_WORLD],
            "upperRight": [HALF_WORLD, HALF_WORLD],
            "crs": TMS_CRS,
        },
        "tileMatrices": matrices,
    }


def check_tms(tms: str) -> None:
    """``NotFound`` unless ``tms`` is the tile matrix set offered."""
    if tms != TMS_ID:
        raise NotFound(f"no tile matrix set {tms!r}", hint=f"use {TMS_ID}")


def check_address(tms: str, z: int, y: int, x: int) -> None:
    """``NotFound`` unless ``z/y/x`` is a tile of the tile matrix set ``tms``."""
    check_tms(tms)
    if not 0 <= z <= TMS_MAX_ZOOM:
        raise NotFound(
            f"no tile matrix {z} in {TMS_ID}", hint=f"tile matrices run from 0 to {TMS_MAX_ZOOM}"
        )
    n = 2**z
    if not (0 <= x < n and 0 <= y < n):
        raise NotFound(
            f"tile {z}/{y}/{x} is outside tile matrix {z}",
            hint=f"rows and columns of tile matrix {z} run from 0 to {n - 1}",
        )


# -- cache ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CachedTile:
    """A drawn tile: its bytes (empty: no content) and how many features it holds."""

    data: bytes
    count: int


class TileCache:
    """A least-recently-used cache of tiles holding at most ``max_bytes`` of tile data (0: off).
    Safe to share between threads."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[tuple[Any, ...], CachedTile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        """Bytes of tile data held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[Any, ...]) -> CachedTile | None:
        with self._lock:
            tile = self._items.get(key)
            if tile is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return tile

    def put(self, key: tuple[Any, ...], tile: CachedTile) -> None:
        size = len(tile.data) + 64
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old.data) + 64
            self._items[key] = tile
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted.data) + 64

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def etag_of(key: tuple[Any, ...]) -> str:
    """A strong ETag from a cache key (what determines the tile's bytes)."""
    return '"' + hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest() + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


# -- access ----------------------------------------------------------------------------------
def _narrowing(grants: Sequence[Grant]) -> tuple[Any, ...]:
    return tuple((g.collection.id, g.hidden, g.district) for g in grants)


# -- the service -----------------------------------------------------------------------------
class TileService:
    """Draws, caches and describes the tiles of a ``ServiceContext``'s twin."""

    def __init__(self, ctx: Any, cache_bytes: int | None = None) -> None:
        self.ctx = ctx
        if cache_bytes is None:
            cache_bytes = int(ctx.extras.get("tile_cache_bytes", DEFAULT_CACHE_BYTES))
        self.cache = TileCache(cache_bytes)
        self._bounds: tuple[float, float, float, float] | None = None
        self._terrain: _Terrain | None = None
        self._terrain_lock = threading.Lock()

    @property
    def store(self) -> Any:
        return self.ctx.store

    # -- vector tiles ----------------------------------------------------------------------
    def tile_layer(self, grant: Grant, z: int) -> TileLayer | None:
        """The layer of ``grant``'s collection in tiles of zoom ``z`` (None: not shown there)."""
        coll = grant.collection
        rule = LAYER_RULES.get(coll.layer)
        if rule is None:
            return None
        classes = rule.classes_at(coll.layer, z)
        if classes is not None and not classes:
            return None
        polygonal = layer(coll.layer).geometry != "Point"
        simplify = SIMPLIFY_UNITS if polygonal and z < SIMPLIFY_BELOW else 0.0
        q = narrow(grant.collection.query(classes=classes), grant)
        return TileLayer(coll.id, q, rule.attributes, simplify)

    def tile_key(
        self, scope: str, grants: Sequence[Grant], z: int, x: int, y: int
    ) -> tuple[Any, ...] | None:
        """The cache key (and ETag source) of a tile: None when nothing is shown at ``z``."""
        layers = [tl for g in grants if (tl := self.tile_layer(g, z)) is not None]
        if not layers:
            return None
        tables = sorted({tl.query.layer for tl in layers})
        if any(g.district for g in grants):
            tables = sorted({*tables, "zones"})
        versions = self.store.data_version(tables)
        stamp = tuple(zip(tables, versions, strict=True))
        return (_FORMAT, scope, z, x, y, _narrowing(grants), stamp)

    def tile(
        self, scope: str, grants: Sequence[Grant], z: int, x: int, y: int
    ) -> tuple[CachedTile, str | None]:
        """Tile ``z/x/y`` of the collections of ``grants`` (``scope``: a collection id or
        ``"all"``) and its ETag (None for a zoom where none of them is shown)."""
        key = self.tile_key(scope, grants, z, x, y)
        if key is None:
            return CachedTile(b"", 0), None
        cached = self.cache.get(key)
        if cached is None:
            cached = self.draw(grants, z, x, y)
            self.cache.put(key, cached)
        return cached, etag_of(key)

    def draw(self, grants: Sequence[Grant], z: int, x: int, y: int) -> CachedTile:
        """Draw a tile (no cache)."""
        layers = [tl for g in grants if (tl := self.tile_layer(g, z)) is not None]
        if not layers:
            return CachedTile(b"", 0)
        vt: VectorTile = self.store.vector_tile(z, x, y, layers, extent=EXTENT, buffer=BUFFER)
        return CachedTile(vt.data, vt.count)

    # -- metadata --------------------------------------------------------------------------
    def bounds(self) -> tuple[float, float, float, float]:
        """The twin's extent in longitude and latitude (west, south, east, north)."""
        if self._bounds is None:
            ext = self.store.meta.extent
            if ext is None:
                boxes = [s.extent for s in self.store.summary() if s.extent is not None]
                ext = (
                    (min(b[0] for b in boxes), min(b[1] for b in boxes),
                     max(b[2] for b in boxes), max(b[3] for b in boxes))
                    if boxes else None
                )  # fmt: skip
            if ext is None:
                self._bounds = (-180.0, -85.0511287798066, 180.0, 85.0511287798066)
            else:
                t = Transformer.from_crs(self.store.meta.crs, "OGC:CRS84", always_xy=True)
                self._bounds = tuple(float(v) for v in t.transform_bounds(*ext, densify_pts=21))
        return self._bounds

    def layer_metadata(self, coll: Collection) -> dict[str, Any]:
        """A tileset's description of one layer (OGC TMS 2.0 ``layers`` item)."""
        rule = LAYER_RULES[coll.layer]
        lay = layer(coll.layer)
        props: dict[str, Any] = {
            "id": {"type": "string", "description": "feature id"},
            "class": {"type": "string", "enum": list(lay.classes)},
        }
        for name in rule.attributes:
            a = lay.attribute(name)
            prop: dict[str, Any] = {"type": _JSON_TYPE[a.type]}
            if a.description:
                prop["description"] = a.description
            if a.unit:
                prop["x-ogc-unit"] = a.unit
            props[name] = prop
        out: dict[str, Any] = {
            "id": coll.id,
            "title": coll.title,
            "description": coll.title_zh,
            "dataType": "vector",
            "minTileMatrix": str(rule.min_zoom),
            "maxTileMatrix": str(MAX_ZOOM),
            "propertiesSchema": {"type": "object", "required": ["id", "class"],
                                 "properties": props},
        }  # fmt: skip
        dim = {"Point": 0, "LineString": 1, "Polygon": 2}.get(lay.geometry)
        if dim is not None:
            out["geometryDimension"] = dim
        return out

    def tileset(
        self, base: str, colls: Sequence[Collection], path: str, title: str
    ) -> dict[str, Any]:
        """Tileset metadata (OGC TMS 2.0) of the collections ``colls`` served under ``path``."""
        w, s, e, n = self.bounds()
        shown = [c for c in colls if c.layer in LAYER_RULES]
        low = min((LAYER_RULES[c.layer].min_zoom for c in shown), default=MAX_ZOOM)
        links = [
            _link("self", f"{base}{path}"),
            _link("alternate", f"{base}{path}?f=tilejson", title="TileJSON"),
            _link(_RELS + "tiling-scheme", f"{base}/tileMatrixSets/{TMS_ID}"),
            _link("item", f"{base}{path}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}", MVT,
                  templated=True),
        ]  # fmt: skip
        if len(colls) == 1 and path.startswith("/collections/"):
            links.append(_link(_RELS + "geodata", f"{base}/collections/{colls[0].id}"))
        return {
            "title": title,
            "dataType": "vector",
            "crs": TMS_CRS,
            "tileMatrixSetURI": TMS_URI,
            "boundingBox": {"lowerLeft": [w, s], "upperRight": [e, n], "crs": CRS84},
            "centerPoint": {"coordinates": [(w + e) / 2, (s + n) / 2], "crs": CRS84,
                            "tileMatrix": str(max(low, 14))},
            "tileMatrixSetLimits": self.limits(low, MAX_ZOOM),
            "layers": [self.layer_metadata(c) for c in shown],
            "links": links,
        }  # fmt: skip

    def limits(self, low: int, high: int) -> list[dict[str, Any]]:
        """The tile matrix set limits covering the twin from zoom ``low`` to ``high``."""
        w, s, e, n = self.bounds()
        out = []
        for z in range(low, high + 1):
            col0, row0 = _tile_of(w, n, z)
            col1, row1 = _tile_of(e, s, z)
            out.append({"tileMatrix": str(z), "minTileRow": row0, "maxTileRow": row1,
                        "minTileCol": col0, "maxTileCol": col1})  # fmt: skip
        return out

    def tilejson(
        self, base: str, colls: Sequence[Collection], path: str, title: str, suffix: str = ""
    ) -> dict[str, Any]:
        """TileJSON 3.0 of the collections ``colls`` served under ``path``."""
        w, s, e, n = self.bounds()
        shown = [c for c in colls if c.layer in LAYER_RULES]
        low = min((LAYER_RULES[c.layer].min_zoom for c in shown), default=MAX_ZOOM)
        vector_layers = []
        for c in shown:
            rule = LAYER_RULES[c.layer]
            lay = layer(c.layer)
            fields = {"id": "String", "class": "String"}
            fields.update({a: _TILEJSON_TYPE[lay.attribute(a).type] for a in rule.attributes})
            vector_layers.append(
                {"id": c.id, "description": f"{c.title} / {c.title_zh}", "fields": fields,
                 "minzoom": rule.min_zoom, "maxzoom": MAX_ZOOM}
            )  # fmt: skip
        return {
            "tilejson": "3.0.0",
            "name": title,
            "scheme": "xyz",
            "tiles": [f"{base}{path}/{{z}}/{{y}}/{{x}}{suffix}"],
            "minzoom": low,
            "maxzoom": MAX_ZOOM,
            "bounds": [w, s, e, n],
            "center": [(w + e) / 2, (s + n) / 2, max(low, 14)],
            "attribution": _attribution(self.store.meta),
            "vector_layers": vector_layers,
        }

    # -- terrain ---------------------------------------------------------------------------
    def terrain(self) -> _Terrain:
        """The twin's DEM, opened once (again when the stored DEM changes)."""
        dems = [r for r in self.store.rasters() if r["kind"] == "dem"]
        if not dems:
            raise NotFound("this twin has no DEM", hint="import a GeoTIFF DEM into the twin")
        dem = max(dems, key=lambda r: (r["width"] or 0) * (r["height"] or 0))
        ident = (dem["name"], dem["crs"], dem["width"], dem["height"], tuple(dem["bounds"]),
                 dem["source"])  # fmt: skip
        with self._terrain_lock:
            if self._terrain is None or self._terrain.ident != ident:
                if self._terrain is not None:
                    self._terrain.close()
                self._terrain = _Terrain.open(ident, self.store.get_raster(dem["name"]))
            return self._terrain

    def terrain_tile(
        self, z: int, x: int, y: int, shading: bool = False
    ) -> tuple[CachedTile, str]:
        """A Terrarium PNG of tile ``z/x/y`` (``shading``: the terrain's shading instead; no
        data: empty) and its ETag."""
        terrain = self.terrain()
        key = ("hillshade/1" if shading else "terrarium/1", terrain.ident, z, x, y)
        cached = self.cache.get(key)
        if cached is None:
            draw = terrain.hillshade_png if shading else terrain.png
            cached = CachedTile(draw(z, x, y), 1)
            self.cache.put(key, cached)
        return cached, etag_of(key)

    def terrain_tilejson(
        self, base: str, suffix: str = "", shading: bool = False
    ) -> dict[str, Any]:
        """TileJSON of the elevation tiles (a MapLibre ``raster-dem``) or, with ``shading``,
        of the shading tiles (a ``raster``: drawn by the server, so a map draws no slopes of
        its own)."""
        terrain = self.terrain()
        w, s, e, n = terrain.lonlat_bounds
        doc = {
            "tilejson": "3.0.0",
            "name": "terrain",
            "description": "Elevation (m), Terrarium-encoded: (R * 256 + G + B / 256) - 32768",
            "encoding": "terrarium",
            "tileSize": TERRAIN_SIZE,
            "scheme": "xyz",
            "tiles": [f"{base}/terrain/{TMS_ID}/{{z}}/{{y}}/{{x}}.png{suffix}"],
            "minzoom": TERRAIN_MIN_ZOOM,
            "maxzoom": terrain.max_zoom,
            "bounds": [w, s, e, n],
            "attribution": _attribution(self.store.meta),
        }
        if shading:
            del doc["encoding"]
            doc.update(
                name="terrain shading",
                description=f"Hillshade (sun at {SUN_AZIMUTH:g}°, {SUN_ALTITUDE:g}° up): shadow"
                " and light over a transparent flat",
                tiles=[f"{base}/terrain/hillshade/{TMS_ID}/{{z}}/{{y}}/{{x}}.png{suffix}"],
            )
        return doc


_JSON_TYPE = {
    AttrType.STR: "string",
    AttrType.INT: "integer",
    AttrType.FLOAT: "number",
    AttrType.BOOL: "boolean",
    AttrType.DATE: "string",
}
_TILEJSON_TYPE = {
    AttrType.STR: "String",
    AttrType.INT: "Number",
    AttrType.FLOAT: "Number",
    AttrType.BOOL: "Boolean",
    AttrType.DATE: "String",
}


def _attribution(meta: Any) -> str:
    text = f"CityTwin: {meta.name}"
    return text + " (virtual city, not real data)" if getattr(meta, "virtual", False) else text


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The (column, row) of the tile of zoom ``z`` holding a point."""
    n = 2**z
    lat = max(min(lat, 85.0511287798066), -85.0511287798066)
    col = int((lon + 180.0) / 360.0 * n)
    row = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return min(max(col, 0), n - 1), min(max(row, 0), n - 1)


# -- terrain ---------------------------------------------------------------------------------
@dataclass
class _Terrain:
    """An opened DEM and the Terrarium tiles resampled from it (GDAL datasets are not
    thread-safe: one tile at a time)."""

    ident: tuple[Any, ...]
    memfile: Any
    dataset: Any
    lonlat_bounds: tuple[float, float, float, float]
    mercator_bounds: tuple[float, float, float, float]
    max_zoom: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, ident: tuple[Any, ...], data: bytes) -> _Terrain:
        from rasterio.io import MemoryFile

        memfile = MemoryFile(data)
        ds = memfile.open()
        to_ll = Transformer.from_crs(ds.crs, "OGC:CRS84", always_xy=True)
        to_merc = Transformer.from_crs(ds.crs, "EPSG:3857", always_xy=True)
        lonlat = tuple(float(v) for v in to_ll.transform_bounds(*ds.bounds, densify_pts=21))
        merc = tuple(float(v) for v in to_merc.transform_bounds(*ds.bounds, densify_pts=21))
        pixel = min(abs(ds.res[0]), abs(ds.res[1]))
        # the zoom whose tile pixels are about the DEM's cells
        lat = math.radians((lonlat[1] + lonlat[3]) / 2)
        max_zoom = round(math.log2(2 * HALF_WORLD * math.cos(lat) / (TERRAIN_SIZE * pixel)))
        return cls(ident, memfile, ds, lonlat, merc, int(np.clip(max_zoom, 10, 20)))

    def close(self) -> None:
        self.dataset.close()
        self.memfile.close()

    def elevations(self, z: int, x: int, y: int, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Elevations of tile ``z/x/y`` resampled from the DEM (bilinear, exact coordinates),
        ``pad`` pixels wider on every side, with the nearest elevation where the DEM has no
        data, and where it has (``(elevations, valid)``; both empty outside the DEM)."""
        import rasterio
        from rasterio.transform import from_bounds
        from rasterio.warp import Resampling, reproject
        from scipy import ndimage

        minx, miny, maxx, maxy = tile_bounds(z, x, y)
        mb = self.mercator_bounds
        if minx >= mb[2] or maxx <= mb[0] or miny >= mb[3] or maxy <= mb[1]:
            return np.empty((0, 0)), np.empty((0, 0), bool)
        step = (maxx - minx) / TERRAIN_SIZE
        size = TERRAIN_SIZE + 2 * pad
        minx, miny, maxx, maxy = (minx - pad * step, miny - pad * step,
                                  maxx + pad * step, maxy + pad * step)  # fmt: skip
        out = np.full((size, size), np.nan, np.float32)
        with self.lock:
            reproject(
                source=rasterio.band(self.dataset, 1),
                destination=out,
                src_transform=self.dataset.transform,
                src_crs=self.dataset.crs,
                src_nodata=self.dataset.nodata,
                dst_transform=from_bounds(minx, miny, maxx, maxy, size, size),
                dst_crs="EPSG:3857",
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
                tolerance=0,  # exact coordinates for every pixel, no approximation
            )
        valid = np.isfinite(out)
        if not valid.any():
            return np.empty((0, 0)), np.empty((0, 0), bool)
        if not valid.all():
            idx = ndimage.distance_transform_edt(
                ~valid, return_distances=False, return_indices=True
            )
            out = out[tuple(idx)]
        return out.astype(np.float64), valid

    def png(self, z: int, x: int, y: int) -> bytes:
        """The Terrarium PNG of tile ``z/x/y``; empty bytes where the DEM has no data.
        Pixels without data are transparent and carry the nearest elevation (so a renderer
        that ignores alpha draws no cliffs)."""
        out, valid = self.elevations(z, x, y)
        if not valid.any():
            return b""
        # elevation + 32768 in 1/256 m steps, rounded: R * 65536 + G * 256 + B
        q = np.clip(np.rint((out + 32768.0) * 256), 0, 2**24 - 1).astype(np.int64)
        rgba = np.empty((TERRAIN_SIZE, TERRAIN_SIZE, 4), np.uint8)
        rgba[..., 0] = q >> 16
        rgba[..., 1] = (q >> 8) & 255
        rgba[..., 2] = q & 255
        rgba[..., 3] = np.where(valid, 255, 0).astype(np.uint8)
        return _png(rgba)

    def hillshade_png(self, z: int, x: int, y: int) -> bytes:
        """Tile ``z/x/y`` of the terrain's shading as a PNG to lay over the map: shadow where
        the ground turns away from a sun in the north-west 45° up, light where it faces it,
        transparent on the flat and where the DEM has no data; empty bytes outside the DEM."""
        e, valid = self.elevations(z, x, y, pad=1)
        if not valid.any():
            return b""
        minx, miny, maxx, maxy = tile_bounds(z, x, y)
        lat = math.atan(math.sinh((miny + maxy) / 2 / HALF_WORLD * math.pi))
        ground = (maxx - minx) / TERRAIN_SIZE * math.cos(lat)  # a pixel on the ground (m)
        light = hillshade(e, ground)
        d = light - math.sin(math.radians(SUN_ALTITUDE))  # against flat ground
        alpha = np.clip(np.abs(d) * SHADE_GAIN, 0.0, 1.0) * SHADE_OPACITY * 255
        rgba = np.empty((TERRAIN_SIZE, TERRAIN_SIZE, 4), np.uint8)
        rgba[..., :3] = np.where((d < 0)[..., None], SHADOW_RGB, HIGHLIGHT_RGB)
        rgba[..., 3] = np.where(valid[1:-1, 1:-1], np.rint(alpha), 0).astype(np.uint8)
        return _png(rgba)


SUN_AZIMUTH, SUN_ALTITUDE = 315.0, 45.0
"""Where the shading's light comes from (degrees clockwise from north, and above the horizon)."""
SHADE_GAIN, SHADE_OPACITY = 2.5, 0.6
SHADOW_RGB, HIGHLIGHT_RGB = (91, 95, 85), (255, 255, 255)


def hillshade(elevations: np.ndarray, cell: float, z_factor: float = 1.5) -> np.ndarray:
    """Lambertian illumination (cosine of the angle to the sun, ``SUN_AZIMUTH`` /
    ``SUN_ALTITUDE``) of each inner cell of a north-up elevation grid with square ``cell``s
    (m); Horn's slopes, heights scaled by ``z_factor``. The result is one cell smaller on
    every side."""
    e = elevations * (z_factor / (8.0 * cell))
    west_col, east_col = e[:, :-2], e[:, 2:]
    east = (east_col[:-2] + 2 * east_col[1:-1] + east_col[2:]
            - west_col[:-2] - 2 * west_col[1:-1] - west_col[2:])  # fmt: skip
    north_row, south_row = e[:-2], e[2:]
    north = (north_row[:, :-2] + 2 * north_row[:, 1:-1] + north_row[:, 2:]
             - south_row[:, :-2] - 2 * south_row[:, 1:-1] - south_row[:, 2:])  # fmt: skip
    az, alt = math.radians(SUN_AZIMUTH), math.radians(SUN_ALTITUDE)
    sun = (math.cos(alt) * math.sin(az), math.cos(alt) * math.cos(az), math.sin(alt))
    return (sun[2] - east * sun[0] - north * sun[1]) / np.sqrt(1.0 + east**2 + north**2)


def _png(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def decode_terrarium(rgb: np.ndarray) -> np.ndarray:
    """Elevations (m) from Terrarium RGB pixels (the inverse of ``_Terrain.png``)."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 256 + rgb[..., 1] + rgb[..., 2] / 256 - 32768


# -- routes ------------------------------------------------------------------------------------
def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _key_suffix(request: Request) -> str:
    """Tile URLs carry the caller's ``api_key`` query parameter, when they gave one, so that
    a map client can fetch them as they are."""
    from urllib.parse import urlencode

    key = request.query_params.get("api_key")
    return "?" + urlencode({"api_key": key}) if key else ""


def _tile_response(
    request: Request, tile: CachedTile, etag: str | None, media_type: str
) -> Response:
    headers = {"Cache-Control": f"private, max-age={MAX_AGE}", "Vary": "Authorization, X-API-Key"}
    if etag is not None:
        headers["ETag"] = etag
        if _matches(request.headers.get("if-none-match"), etag):
            request.state.audit_count = 0
            return Response(status_code=304, headers=headers)
    request.state.audit_count = tile.count
    if not tile.data:
        return Response(status_code=204, headers=headers)
    return Response(tile.data, media_type=media_type, headers=headers)


def _format(f: str | None) -> str:
    f = (f or "json").lower()
    if f not in ("json", "tilejson"):
        raise InvalidInput(f"unknown format f={f!r}", hint="use f=json or f=tilejson")
    return f


Z = Annotated[int, Path(description="tileMatrix: the zoom level (0 .. 24)")]
Y = Annotated[int, Path(description="tileRow: the row, from the north")]
X = Annotated[int, Path(description="tileCol: the column, from the west")]
F = Annotated[
    str | None, Query(description="json (tileset metadata, default) or tilejson (TileJSON 3.0)")
]
_TILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MVT: {}}, "description": "the tile"},
    204: {"description": "no feature in the tile"},
    304: {"description": "not modified (If-None-Match)"},
}


def _link(rel: str, href: str, media_type: str = "application/json", **extra: Any) -> dict:
    return {"rel": rel, "type": media_type, "href": href, **extra}


def _tilesets(base: str, path: str, title: str) -> dict[str, Any]:
    """A tilesets list (one tileset, in WebMercatorQuad) of what is served under ``path``."""
    item = f"{base}{path}/{TMS_ID}/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"
    tileset = {
        "title": title,
        "dataType": "vector",
        "crs": TMS_CRS,
        "tileMatrixSetURI": TMS_URI,
        "links": [
            _link("self", f"{base}{path}/{TMS_ID}"),
            _link(_RELS + "tiling-scheme", f"{base}/tileMatrixSets/{TMS_ID}"),
            _link("item", item, MVT, templated=True),
        ],
    }
    return {"links": [_link("self", f"{base}{path}")], "tilesets": [tileset]}


def router(ctx: Any) -> APIRouter:
    """The routes of OGC API - Tiles and of the terrain tiles."""
    svc = TileService(ctx)
    ctx.extras["tiles"] = svc
    api = APIRouter(tags=["Tiles"])

    def collection_grant(cid: str, who: Principal) -> Grant:
        grant = ctx.access.grant(who, ctx.catalogue.get(cid))
        if grant.collection.layer not in LAYER_RULES:
            raise NotFound(f"collection {cid!r} has no tiles")
        return grant

    def readable(who: Principal) -> list[Grant]:
        return [ctx.access.grant(who, c) for c in ctx.access.readable(who)]

    @api.get("/tileMatrixSets")
    def tile_matrix_sets(request: Request) -> dict[str, Any]:
        """The tile matrix sets tiles are offered in."""
        href = f"{_base(request)}/tileMatrixSets/{TMS_ID}"
        tms = {"id": TMS_ID, "title": "Google Maps Compatible for the World", "uri": TMS_URI,
               "crs": TMS_CRS, "links": [_link("self", href)]}  # fmt: skip
        return {"tileMatrixSets": [tms]}

    @api.get("/tileMatrixSets/{tms}")
    def tile_matrix_set_doc(tms: str) -> dict[str, Any]:
        """A tile matrix set (OGC 2D TMS 2.0 JSON)."""
        check_tms(tms)
        return tile_matrix_set()

    @api.get("/collections/{cid}/tiles")
    def collection_tilesets(cid: str, request: Request, who: Who) -> dict[str, Any]:
        """The tilesets of a collection."""
        grant = collection_grant(cid, who)
        return _tilesets(_base(request), f"/collections/{cid}/tiles", grant.collection.title)

    @api.get("/collections/{cid}/tiles/{tms}")
    def collection_tileset(
        cid: str, tms: str, request: Request, who: Who, f: F = None
    ) -> dict[str, Any]:
        """A collection's tileset: metadata, or TileJSON with ``f=tilejson``."""
        fmt = _format(f)
        coll = collection_grant(cid, who).collection
        check_tms(tms)
        path = f"/collections/{cid}/tiles/{TMS_ID}"
        if fmt == "tilejson":
            return svc.tilejson(_base(request), [coll], path, coll.title, _key_suffix(request))
        return svc.tileset(_base(request), [coll], path, coll.title)

    @api.get(
        "/collections/{cid}/tiles/{tms}/{z}/{y}/{x}",
        response_class=Response,
        responses=_TILE_RESPONSES,
    )
    def collection_tile(
        cid: str, tms: str, z: Z, y: Y, x: X, request: Request, who: Who
    ) -> Response:
        """A vector tile (MVT) of one collection."""
        grant = collection_grant(cid, who)
        check_address(tms, z, y, x)
        tile, etag = svc.tile(cid, [grant], z, x, y)
        return _tile_response(request, tile, etag, MVT)

    @api.get("/tiles")
    def dataset_tilesets(request: Request) -> dict[str, Any]:
        """The tilesets of the whole twin (all collections the caller may read)."""
        return _tilesets(_base(request), "/tiles", _attribution(ctx.store.meta))

    @api.get("/tiles/{tms}")
    def dataset_tileset(tms: str, request: Request, who: Who, f: F = None) -> dict[str, Any]:
        """The twin's tileset (a layer per readable collection): metadata or TileJSON."""
        fmt = _format(f)
        check_tms(tms)
        colls = [g.collection for g in readable(who)]
        title = _attribution(ctx.store.meta)
        path = f"/tiles/{TMS_ID}"
        if fmt == "tilejson":
            return svc.tilejson(_base(request), colls, path, title, _key_suffix(request))
        return svc.tileset(_base(request), colls, path, title)

    @api.get("/tiles/{tms}/{z}/{y}/{x}", response_class=Response, responses=_TILE_RESPONSES)
    def dataset_tile(tms: str, z: Z, y: Y, x: X, request: Request, who: Who) -> Response:
        """A vector tile (MVT) with a layer per collection the caller may read."""
        check_address(tms, z, y, x)
        tile, etag = svc.tile("all", readable(who), z, x, y)
        return _tile_response(request, tile, etag, MVT)

    @api.get("/terrain/tilejson")
    def terrain_tilejson(request: Request) -> dict[str, Any]:
        """TileJSON of the terrain tiles (``encoding: terrarium``: a MapLibre raster-dem)."""
        return svc.terrain_tilejson(_base(request), _key_suffix(request))

    @api.get("/terrain/hillshade/tilejson")
    def hillshade_tilejson(request: Request) -> dict[str, Any]:
        """TileJSON of the terrain's shading tiles (a MapLibre raster)."""
        return svc.terrain_tilejson(_base(request), _key_suffix(request), shading=True)

    @api.get(
        "/terrain/{tms}/{z}/{y}/{x}.png",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the tile"},
            204: {"description": "outside the DEM"},
        },
    )
    def terrain_tile(tms: str, z: Z, y: Y, x: X, request: Request) -> Response:
        """Elevations of a tile as a Terrarium PNG (256 px), resampled from the twin's DEM."""
        check_address(tms, z, y, x)
        tile, etag = svc.terrain_tile(z, x, y)
        return _tile_response(request, tile, etag, "image/png")

    @api.get(
        "/terrain/hillshade/{tms}/{z}/{y}/{x}.png",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the tile"},
            204: {"description": "outside the DEM"},
        },
    )
    def hillshade_tile(tms: str, z: Z, y: Y, x: X, request: Request) -> Response:
        """The terrain's shading on a tile (256 px RGBA PNG: shadow and light, transparent
        where flat), from the twin's DEM."""
        check_address(tms, z, y, x)
        tile, etag = svc.terrain_tile(z, x, y, shading=True)
        return _tile_response(request, tile, etag, "image/png")

    return api

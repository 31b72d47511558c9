"""Vector tiles from the embedded store (a mixin of ``DuckDBStore``): Mapbox Vector Tiles of the
WebMercatorQuad grid, encoded by DuckDB spatial's ``ST_AsMVT``.

How a tile is made:

1. The tile's envelope (EPSG:3857) plus its buffer is sampled on a ``GRID`` x ``GRID`` grid and
   projected into the twin's CRS with pyproj (``always_xy``: easting first, whatever the CRS's
   axis order). The grid's bounding box is the window that prunes on the ``minx .. maxy``
   columns (the zone maps of the Hilbert-ordered rows); a tile the twin's CRS can't represent
   (the grid does not survive the round trip) holds nothing.
2. Projection: over a tile, the projection from a projected CRS to Web Mercator is affine to
   within a fraction of a grid unit from zoom 12-13 on (both are conformal; what an affine map
   misses grows with the square of the tile's size). Where an affine map fitted to the grid
   reproduces pyproj within ``AFFINE_TOLERANCE`` grid units everywhere on it, the candidates go
   straight from the twin's CRS to tile units through one ``ST_Affine`` (projection, scaling
   and the flip of the y axis in one). Elsewhere (low zooms) pyproj projects the candidates
   exactly and hands them to DuckDB in EPSG:3857. (``ST_Transform`` sets PROJ up again in
   every query, 100-250 ms, so it is not used.)
3. Tile geometry, made of cheap steps rather than ``ST_AsMVTGeom``, which snap-rounds every
   polygon through GEOS (0.1-0.2 ms a polygon: ten times the budget of a whole tile): features
   whose bounding box lies inside the buffered tile are taken whole, the others are cut to it
   (``ST_Intersection``, in the source CRS); polygons are normalised (GEOS: shells clockwise,
   holes counter-clockwise, so that after the flip of the y axis shells wind as MVT wants),
   mapped to tile units, and simplified within ``max(1, simplify)`` units
   (``ST_SimplifyPreserveTopology``: drops the vertices that rounding would stack); ``ST_AsMVT``
   rounds to the grid (the affine map adds half a unit to its truncation; within the buffer,
   left of or above the tile, a vertex may land one unit off). Lines and polygons smaller than
   a unit are left out, as ``ST_AsMVTGeom`` would.
4. One SQL statement: per layer, ``ST_AsMVT`` over the rows matching its query (``_where``:
   the current state, classes, filters, a grant's narrowing), the window and the tile; the
   layers are joined with ``UNION ALL`` and the tile is the concatenation of their encodings
   (MVT layers are independent messages of one protobuf).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import Transformer
from pyproj.exceptions import ProjError

from citytwin.errors import InvalidInput
from citytwin.model import AttrType, layer
from citytwin.store.base import TileLayer, VectorTile

if TYPE_CHECKING:
    import duckdb

    from citytwin.model import TwinMeta
    from citytwin.store.base import Query

WEB_MERCATOR = "EPSG:3857"
HALF_WORLD = math.pi * 6378137.0
"""Half the width of the Web Mercator world (m): the grid's origin is (-HALF_WORLD, HALF_WORLD)."""
MAX_ZOOM = 30
"""The deepest tile matrix a tile may be asked of."""
GRID = 9
"""Points per side of the grid a tile's envelope is sampled on (the fit and the window)."""
GROUP_PART = 4
"""The most tile layers drawn from one table in one statement (statements run side by side)."""
AFFINE_TOLERANCE = 0.5
"""Largest error (grid units) for which the affine map stands in for the projection: what
rounding to the grid costs anyway (reached at zoom 13 in UTM and Gauss-Kruger zones)."""


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """The envelope (EPSG:3857: minx, miny, maxx, maxy) of tile ``z/x/y`` (``y`` from the
    north)."""
    size = 2 * HALF_WORLD / 2**z
    return (-HALF_WORLD + x * size, HALF_WORLD - (y + 1) * size,
            -HALF_WORLD + (x + 1) * size, HALF_WORLD - y * size)  # fmt: skip


def check_tile_address(z: int, x: int, y: int) -> None:
    """``InvalidInput`` unless ``z/x/y`` is a tile of the WebMercatorQuad grid."""
    if not 0 <= z <= MAX_ZOOM:
        raise InvalidInput(f"zoom {z} is outside 0 .. {MAX_ZOOM}")
    n = 2**z
    if not (0 <= x < n and 0 <= y < n):
        raise InvalidInput(
            f"tile {z}/{x}/{y} is outside the grid",
            hint=f"at zoom {z} rows and columns run from 0 to {n - 1}",
        )


@functools.lru_cache(maxsize=16)
def _transformers(crs: str) -> tuple[Transformer, Transformer]:
    """(twin CRS -> EPSG:3857, EPSG:3857 -> twin CRS), easting first. PROJ chooses the
    operation once; the transformers used are made from its pipeline, which a thread sets up
    in microseconds (one made by ``from_crs`` repeats the search, ~100 ms, in every thread
    that uses it)."""
    return (
        _portable(Transformer.from_crs(crs, WEB_MERCATOR, always_xy=True)),
        _portable(Transformer.from_crs(WEB_MERCATOR, crs, always_xy=True)),
    )


def _portable(t: Transformer) -> Transformer:
    definition = t.definition
    if not definition or not definition.startswith("proj=pipeline"):
        return t
    try:
        return Transformer.from_pipeline(definition)
    except ProjError:
        return t


@dataclass(frozen=True)
class TilePlacement:
    """Where a tile lies in the twin's CRS: the ``window`` (minx, miny, maxx, maxy) its
    features' bounding boxes must meet, and the ``affine`` map (a, b, d, e, xoff, yoff:
    x' = a x + b y + xoff, y' = d x + e y + yoff) from the twin's CRS to EPSG:3857 over it,
    or None where only the exact projection will do (with its largest ``error`` in grid
    units)."""

    window: tuple[float, float, float, float]
    affine: tuple[float, float, float, float, float, float] | None
    error: float


def place_tile(
    crs: str, z: int, x: int, y: int, extent: int = 4096, buffer: int = 64
) -> TilePlacement | None:
    """The placement of tile ``z/x/y`` (with ``buffer`` of ``extent`` units around it) in
    ``crs``; None where that CRS can't represent the tile."""
    fwd, inv = _transformers(crs)
    minx, miny, maxx, _ = tile_bounds(z, x, y)
    size = maxx - minx
    unit = size / extent
    steps = np.linspace(-buffer / extent, 1 + buffer / extent, GRID)
    gx, gy = np.meshgrid(minx + steps * size, miny + steps * size)
    gx, gy = gx.ravel(), gy.ravel()
    with np.errstate(all="ignore"):
        sx, sy = (np.asarray(v) for v in inv.transform(gx, gy, errcheck=False))
        bx, by = (np.asarray(v) for v in fwd.transform(sx, sy, errcheck=False))
    if not (np.isfinite(sx).all() and np.isfinite(sy).all() and np.isfinite(bx).all()):
        return None
    if np.hypot(bx - gx, by - gy).max() > unit:  # the CRS folds or tears here
        return None
    cx, cy = sx.mean(), sy.mean()
    a = np.column_stack([sx - cx, sy - cy, np.ones_like(sx)])
    px, *_ = np.linalg.lstsq(a, gx, rcond=None)
    py, *_ = np.linalg.lstsq(a, gy, rcond=None)
    error = float(np.hypot(a @ px - gx, a @ py - gy).max() / unit)
    affine = None
    if error <= AFFINE_TOLERANCE:
        affine = (
            float(px[0]), float(px[1]), float(py[0]), float(py[1]),
            float(px[2] - px[0] * cx - px[1] * cy), float(py[2] - py[0] * cx - py[1] * cy),
        )  # fmt: skip
    # two grid units of margin (in the twin's metres, about) cover the edges' curvature
    # between the sampled points
    margin = unit * 2
    window = (float(sx.min() - margin), float(sy.min() - margin),
              float(sx.max() + margin), float(sy.max() + margin))  # fmt: skip
    return TilePlacement(window, affine, error)


class TileStoreMixin:
    """``Store.vector_tile`` for ``DuckDBStore``."""

    meta: TwinMeta
    _lock: Any  # DuckDBStore's FairRLock

    def _where(self, q: Query) -> tuple[str, list[Any]]:  # DuckDBStore's
        raise NotImplementedError

    def _reading(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:  # DuckDBStore's
        raise NotImplementedError

    def vector_tile(
        self,
        z: int,
        x: int,
        y: int,
        layers: Sequence[TileLayer],
        *,
        extent: int = 4096,
        buffer: int = 64,
    ) -> VectorTile:
        check_tile_address(z, x, y)
        if not 256 <= extent <= 16384 or not 0 <= buffer <= extent // 4:
            raise InvalidInput(f"extent {extent} and buffer {buffer} are out of range")
        if not layers:
            return VectorTile(b"", {})
        place = place_tile(self.meta.crs, z, x, y, extent, buffer)
        if place is None:
            return VectorTile(b"", {tl.name: 0 for tl in layers})
        # EPSG:3857 -> tile units (y down), plus half a unit: ST_AsMVT truncates
        minx, _, maxx, maxy = tile_bounds(z, x, y)
        s = extent / (maxx - minx)
        to_tile = (s, 0.0, 0.0, -s, -minx * s + 0.5, maxy * s + 0.5)
        lo, hi = -buffer + 0.5, extent + buffer + 0.5
        if place.affine is not None:  # one scan per table, the tables side by side
            frame = _TileFrame(_compose(to_tile, place.affine), lo, hi)
            groups: dict[str, list[int]] = {}
            for i, tl in enumerate(layers):
                groups.setdefault(tl.query.layer, []).append(i)
            # the tables of many layers (the networks) first, in parts: the pool's threads
            # then finish together
            parts = [(table, members[k : k + GROUP_PART])
                     for table, members in sorted(groups.items(), key=lambda g: -len(g[1]))
                     for k in range(0, len(members), GROUP_PART)]  # fmt: skip
            statements = []
            for table, members in parts:
                conds = [self._conditions(layers[i].query) for i in members]
                statements.append(
                    _group_sql(table, place.window, frame, layers, members, conds, extent)
                )
            rows = [r for part in self._run_all(statements) for r in part]
        else:  # the candidates projected by pyproj, staged for DuckDB
            frame = _TileFrame(to_tile, lo, hi)
            parts: list[str] = []
            params: list[Any] = []
            with self._reading() as con:
                staged: list[str] = []
                try:
                    for i, tl in enumerate(layers):
                        where, p = self._conditions(tl.query, place.window)
                        source = f"_tile_rows_{i}"
                        con.register(source, self._projected(con, tl, where, p))
                        staged.append(source)
                        sql, p = _group_sql(source, frame.bounds, frame, layers, [i],
                                            [("TRUE", [])], extent)  # fmt: skip
                        parts.append(sql)
                        params += p
                    rows = con.execute(" UNION ALL ".join(parts), params).fetchall()
                finally:
                    for source in staged:
                        con.unregister(source)
        found: dict[int, tuple[bytes, int]] = {}
        for indices, tiles, counts in rows:
            for i, data, n in zip(indices, tiles, counts, strict=True):
                if n:
                    found[int(i)] = (bytes(data), int(n))
        counts = {tl.name: found.get(i, (b"", 0))[1] for i, tl in enumerate(layers)}
        data = b"".join(found[i][0] for i in sorted(found))
        return VectorTile(data, counts)

    def _run_all(self, statements: list[tuple[str, list[Any]]]) -> list[list[tuple]]:
        """The rows of each statement. Several run side by side, each on a pool thread's own
        cursor (DuckDB plans one statement on one thread, and planning is a good part of a
        tile); a thread inside a transaction runs them itself, on its connection."""
        if len(statements) == 1 or self._lock._owner == threading.get_ident():
            with self._reading() as con:
                return [con.execute(sql, p).fetchall() for sql, p in statements]

        def run(statement: tuple[str, list[Any]]) -> list[tuple]:
            with self._reading() as con:
                return con.execute(*statement).fetchall()

        return list(_pool().map(run, statements))

    def _conditions(
        self, q: Query, window: tuple[float, float, float, float] | None = None
    ) -> tuple[str, list[Any]]:
        """``_where`` of a tile layer's query (and ``window``), its classes by
        ``list_contains``."""
        where, params = self._where(replace(_whole(q), bbox=window))
        if q.classes is not None:
            where += " AND list_contains(?::VARCHAR[], class)"
            params = [*params, [str(c) for c in q.classes]]
        return where, params

    def _projected(
        self, con: duckdb.DuckDBPyConnection, tl: TileLayer, where: str, params: list[Any]
    ) -> pa.Table:
        """The rows of a tile layer (id, class, attributes, WKB and bounding box) with their
        geometry projected to EPSG:3857 by pyproj."""
        columns = ", ".join(["fid", "class", *_attribute_names(tl)])
        table = con.execute(
            f"SELECT {columns}, wkb FROM {tl.query.layer} WHERE {where}", params
        ).to_arrow_table()
        fwd, _ = _transformers(self.meta.crs)

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(fwd.transform(xy[:, 0], xy[:, 1]))

        geoms = shapely.transform(
            shapely.from_wkb(table.column("wkb").to_numpy(zero_copy_only=False)), project
        )
        table = table.drop_columns(["wkb"]).append_column(
            "wkb", pa.array(shapely.to_wkb(geoms), pa.binary())
        )
        bounds = shapely.bounds(geoms)
        for k, name in enumerate(("minx", "miny", "maxx", "maxy")):
            table = table.append_column(name, pa.array(bounds[:, k]))
        return table


@dataclass(frozen=True)
class _TileFrame:
    """An affine map (a, b, d, e, xoff, yoff) from a source CRS to tile units and the square
    [lo, hi]² of tile units kept (the tile and its buffer), with what the SQL of a tile needs
    in the source CRS: the square (a parallelogram there), a box inside it (features whose
    bounding box lies in it need no cutting) and the size of a unit."""

    affine: tuple[float, float, float, float, float, float]
    lo: float
    hi: float

    @functools.cached_property
    def corners(self) -> np.ndarray:
        """The square's corners in the source CRS (closed ring)."""
        a, b, d, e, xoff, yoff = self.affine
        inv = np.linalg.inv(np.array([[a, b], [d, e]]))
        lo, hi = self.lo, self.hi
        square = np.array([[lo, lo], [hi, lo], [hi, hi], [lo, hi], [lo, lo]])
        return (square - [xoff, yoff]) @ inv.T

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The square's bounding box in the source CRS."""
        (x0, y0), (x1, y1) = self.corners.min(axis=0), self.corners.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    @property
    def inner(self) -> tuple[float, float, float, float]:
        """A box (minx, miny, maxx, maxy) inside the square, in the source CRS: the square is
        a slightly turned rectangle there, so the second smallest and second largest corner
        coordinates bound it."""
        xs, ys = np.sort(self.corners[:4, 0]), np.sort(self.corners[:4, 1])
        return float(xs[1]), float(ys[1]), float(xs[2]), float(ys[2])

    @property
    def unit(self) -> float:
        """A tile unit in the source CRS's units (the maps are conformal: one scale)."""
        a, b, d, e, *_ = self.affine
        return 1.0 / math.sqrt(abs(a * e - b * d))

    def geometry_sql(self, points: bool, tolerance: float) -> str:
        """The tile geometry of a row (before ``ST_AsMVT`` rounds it): cut to the square
        unless it lies inside, mapped to tile units; lines and polygons normalised (so that
        shells wind as MVT wants once the y axis is flipped) and simplified."""
        x0, y0, x1, y1 = (repr(v) for v in self.inner)
        inside = f"minx >= {x0} AND maxx <= {x1} AND miny >= {y0} AND maxy <= {y1}"
        ring = ", ".join(f"{float(px)!r} {float(py)!r}" for px, py in self.corners)
        cut = f"ST_Intersection(ST_GeomFromWKB(wkb), ST_GeomFromText('POLYGON (({ring}))'))"
        geom = f"CASE WHEN {inside} THEN ST_GeomFromWKB(wkb) ELSE {cut} END"
        affine = ", ".join(repr(v) for v in self.affine)
        if points:
            return f"ST_Affine({geom}, {affine})"
        geom = f"ST_Affine(ST_Normalize(ST_CollectionExtract({geom})), {affine})"
        return f"ST_SimplifyPreserveTopology({geom}, {tolerance!r})"


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="citytwin-tiles"
    )


def _compose(
    outer: tuple[float, ...], inner: tuple[float, ...]
) -> tuple[float, float, float, float, float, float]:
    """The affine map ``outer(inner(p))`` (both as a, b, d, e, xoff, yoff)."""
    a1, b1, d1, e1, x1, y1 = outer
    a2, b2, d2, e2, x2, y2 = inner
    return (a1 * a2 + b1 * d2, a1 * b2 + b1 * e2, d1 * a2 + e1 * d2, d1 * b2 + e1 * e2,
            a1 * x2 + b1 * y2 + x1, d1 * x2 + e1 * y2 + y1)  # fmt: skip


def _whole(q: Query) -> Query:
    """The query without paging, and without its classes: ``_where`` reads those with a
    subquery, which DuckDB joins (as it does an ``IN`` list of five values or more); a tile
    asks ``list_contains`` instead (``_conditions``)."""
    return replace(q, bbox=None, limit=None, offset=0, order_by=None, classes=None)


def _group_sql(
    source: str,
    window: tuple[float, float, float, float],
    frame: _TileFrame,
    layers: Sequence[TileLayer],
    members: list[int],
    conds: list[tuple[str, list[Any]]],
    extent: int,
) -> tuple[str, list[Any]]:
    """One scan of ``source`` (rows meeting ``window``, lines and polygons a unit across or
    more) drawing the tile layers ``members`` (all of one model layer), each from the rows
    matching its condition: ``SELECT [i ...], [tile ...], [n ...]`` and its parameters."""
    lay = layer(layers[members[0]].query.layer)
    tolerance = max([1.0, *(float(layers[i].simplify) for i in members)])
    geom = frame.geometry_sql(lay.geometry == "Point", tolerance)
    flags = ", ".join(f"({sql}) AS _m{k}" for k, (sql, _) in enumerate(conds))
    wx0, wy0, wx1, wy1 = window
    params = [v for _, p in conds for v in p] + [wx1, wx0, wy1, wy0]
    meets = "minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?"
    if lay.geometry != "Point":
        meets += " AND (greatest(maxx - minx, maxy - miny) >= ? OR (minx = maxx AND miny = maxy))"
        params.append(frame.unit)
    # members share the model layer, so their rows have the same properties: one struct
    tiles, counts = [], []
    for k, i in enumerate(members):
        keep = f"FILTER (WHERE _m{k} AND NOT ST_IsEmpty(g))"
        tiles.append(f"ST_AsMVT(_row, {sql_text(layers[i].name)}, {extent}, 'geom') {keep}")
        counts.append(f"count(*) {keep}")
    any_member = " OR ".join(f"_m{k}" for k in range(len(members)))
    sql = (
        f"SELECT [{', '.join(map(str, members))}] AS i, [{', '.join(tiles)}] AS tiles,"
        f" [{', '.join(counts)}] AS n FROM (SELECT *, {_properties(layers[members[0]])} AS _row"
        f" FROM (SELECT *, {geom} AS g FROM (SELECT *, {flags} FROM {source} WHERE {meets})"
        f" WHERE {any_member}))"
    )
    return sql, params


def _attribute_names(tl: TileLayer) -> list[str]:
    return [n for n in dict.fromkeys(tl.attributes) if n not in ("id", "class")]


def _properties(tl: TileLayer) -> str:
    """The row ``ST_AsMVT`` encodes: id, class, the attributes (dates as text: MVT has no
    date type) and the tile geometry ``g`` as ``geom``."""
    lay = layer(tl.query.layer)
    props = ["'id': fid", "'class': class"]
    for name in _attribute_names(tl):
        date = lay.attribute(name).type is AttrType.DATE
        props.append(f"'{name}': " + (f"CAST({name} AS VARCHAR)" if date else name))
    return "{" + ", ".join([*props, "'geom': g"]) + "}"


def sql_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"

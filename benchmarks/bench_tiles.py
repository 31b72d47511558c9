"""Vector tile benchmark: Mapbox Vector Tiles of the 100 km² virtual city, drawn uncached.

The twin is ``build_city(path, 100.0, 1)`` (about 12 k buildings, 8 k streets, 255 k utility
nodes and links, 325 k devices), built once and kept in ``benchmarks/.cache`` (the build time
is printed when it is built, and remembered next to it).

Measured, at zoom 14, 15 and 16, over tiles sampled at random inside the city's extent, with
the tile cache off: milliseconds per tile (median and 95th percentile) and tile sizes

- in process (``TileService.tile``: the grants' layers, the data version, the store's
  ``vector_tile``) for one collection (buildings, streets, the largest utility collection and
  the largest one of links) and for the combined tile of every collection (what the console
  asks for, as an administrator), with the CPU time of the process per tile beside the wall
  time (on a shared machine the wall time also counts the waits for a core);
- through HTTP: uvicorn serving the app, httpx asking for the combined tiles one after the
  other (credentials by API key), uncached, then again from the cache.

Target (issue 6): median <= 30 ms per uncached tile.

Run: .venv/bin/python benchmarks/bench_tiles.py [--tiles 40] [--area 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(__file__).parent / ".cache"
ZOOMS = (14, 15, 16)
TARGET_MS = 30.0


def city_twin(area: float, seed: int) -> Path:
    """The virtual city's twin, built on first use and kept in the cache folder."""
    from citytwin.synth.city import build_city

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"city-{area:g}km2-seed{seed}.twin"
    note = path.with_suffix(".build.json")
    if path.exists():
        built = json.loads(note.read_text())["seconds"] if note.exists() else None
        print(f"twin: {path} (cached; built in {built:.0f} s)" if built else f"twin: {path}")
        return path
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    t0 = time.perf_counter()
    build_city(part, area, seed).close()
    seconds = time.perf_counter() - t0
    part.rename(path)
    note.write_text(json.dumps({"seconds": seconds}))
    print(f"twin: {path} built in {seconds:.0f} s")
    return path


def sample_tiles(store: Any, z: int, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` distinct tiles (x, y) of zoom ``z`` whose centres lie inside the twin's extent."""
    from pyproj import Transformer

    from citytwin.store.duckdb_tiles import HALF_WORLD, tile_bounds

    minx, miny, maxx, maxy = store.meta.extent
    fwd = Transformer.from_crs(store.meta.crs, "EPSG:3857", always_xy=True)
    size = 2 * HALF_WORLD / 2**z
    mx0, my0, mx1, my1 = fwd.transform_bounds(minx, miny, maxx, maxy)
    cols = np.arange(math.floor((mx0 + HALF_WORLD) / size), math.ceil((mx1 + HALF_WORLD) / size))
    rows = np.arange(math.floor((HALF_WORLD - my1) / size), math.ceil((HALF_WORLD - my0) / size))
    inv = Transformer.from_crs("EPSG:3857", store.meta.crs, always_xy=True)
    inside = []
    for x in cols:
        for y in rows:
            b = tile_bounds(z, int(x), int(y))
            cx, cy = inv.transform((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            if minx <= cx <= maxx and miny <= cy <= maxy:
                inside.append((int(x), int(y)))
    pick = rng.choice(len(inside), size=min(n, len(inside)), replace=False)
    return [inside[i] for i in pick]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def summary(
    label: str, ms: list[float], sizes: list[int], counts: list[int], cpu: list[float] | None
) -> dict:
    """Print and return one row of figures (``cpu``: CPU ms of this process per tile)."""
    row = {
        "what": label,
        "tiles": len(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": p95(ms),
        "median_cpu_ms": statistics.median(cpu) if cpu else None,
        "median_kb": statistics.median(sizes) / 1024,
        "max_kb": max(sizes) / 1024,
        "median_features": statistics.median(counts),
    }
    ok = "ok" if row["median_ms"] <= TARGET_MS else "MISSED"
    cpu_text = f" cpu {row['median_cpu_ms']:5.1f} ms" if cpu else " " * 15
    print(
        f"  {label:<30} {row['tiles']:>3} tiles  median {row['median_ms']:6.1f} ms"
        f"  p95 {row['p95_ms']:6.1f} ms {cpu_text}  size median {row['median_kb']:5.1f} KB"
        f" max {row['max_kb']:5.1f} KB  features {row['median_features']:>5.0f}  [{ok}]"
    )
    return row


def serve(app: Any) -> tuple[Any, threading.Thread, int]:
    """uvicorn serving ``app`` on a free local port, in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--area", type=float, default=100.0, help="city area (km²)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tiles", type=int, default=40, help="tiles sampled per zoom")
    args = parser.parse_args()

    import httpx

    from citytwin.services.access import Principal
    from citytwin.services.api import ServiceContext, create_app
    from citytwin.services.tiles import TileService
    from citytwin.store import open_store

    path = city_twin(args.area, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    twin = work / path.name  # a copy: the HTTP part writes credentials and its audit log
    shutil.copy(path, twin)
    store = open_store(twin)
    ctx = ServiceContext.of(store)
    admin = Principal("bench", "planning", frozenset({"admin"}))
    svc = TileService(ctx, cache_bytes=0)
    grants = {c.id: ctx.access.grant(admin, c) for c in ctx.access.readable(admin)}
    utility = [c for c in grants if grants[c].collection.layer.startswith("utility_")]
    sizes = {c: store.count(grants[c].collection.query()) for c in utility}
    biggest = max(sizes, key=sizes.get)
    links = max((c for c in sizes if c.endswith("_links")), key=sizes.get)
    print(
        f"collections: {len(grants)}; largest utility collections: {biggest}"
        f" ({sizes[biggest]:,}), {links} ({sizes[links]:,})"
    )
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at the start")
    rng = np.random.default_rng(7)
    samples = {z: sample_tiles(store, z, args.tiles, rng) for z in ZOOMS}
    # warm up: DuckDB's first queries and pyproj's first transformation
    for x, y in samples[ZOOMS[0]][:3]:
        svc.tile("all", list(grants.values()), ZOOMS[0], x, y)

    results = []
    print("\nin process, uncached (TileService.tile with the cache off):")
    for z in ZOOMS:
        print(f" zoom {z}")
        for label, scope, gs in (
            ("buildings", "buildings", [grants["buildings"]]),
            ("streets", "streets", [grants["streets"]]),
            (biggest, biggest, [grants[biggest]]),
            (links, links, [grants[links]]),
            (f"all ({len(grants)} collections)", "all", list(grants.values())),
        ):
            ms, cpu, nbytes, counts = [], [], [], []
            for x, y in samples[z]:
                t0, c0 = time.perf_counter(), time.process_time()
                tile, _ = svc.tile(scope, gs, z, x, y)
                ms.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                nbytes.append(len(tile.data))
                counts.append(tile.count)
            row = summary(label, ms, nbytes, counts, cpu)
            results.append({"zoom": z, "mode": "in process", **row})

    print("\nHTTP (uvicorn + httpx, one request at a time), combined tile /tiles/...:")
    from citytwin.services.access import Registry

    ctx.registry = Registry(store, catalogue=ctx.catalogue)
    ctx.registry.add_user("bench", "Benchmark", "planning", roles=("admin",))
    key = ctx.registry.issue_key("bench", rate=1e6, burst=1e6).secret
    for cached in (False, True):
        ctx.extras["tile_cache_bytes"] = 256 * 1024 * 1024 if cached else 0
        app = create_app(ctx)
        server, thread, port = serve(app)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}) as c:
                for x, y in samples[ZOOMS[-1]][-3:]:  # warm up (not among the timed tiles)
                    c.get(f"/tiles/WebMercatorQuad/{ZOOMS[-1] + 1}/{2 * y}/{2 * x}")
                for z in ZOOMS:
                    urls = [f"/tiles/WebMercatorQuad/{z}/{y}/{x}" for x, y in samples[z]]
                    if cached:  # fill the cache first
                        for u in urls:
                            c.get(u)
                    ms, nbytes = [], []
                    for u in urls:
                        t0 = time.perf_counter()
                        r = c.get(u)
                        ms.append((time.perf_counter() - t0) * 1000)
                        if r.status_code not in (200, 204):
                            raise SystemExit(f"{u}: {r.status_code} {r.text[:200]}")
                        nbytes.append(len(r.content))
                    label = f"z{z} all, {'cached' if cached else 'uncached'}"
                    row = summary(label, ms, nbytes, [0] * len(ms), None)
                    results.append({"zoom": z, "mode": "http", **row})
        finally:
            server.should_exit = True
            thread.join()
    missed = [r for r in results if r["median_ms"] > TARGET_MS and r["what"][-6:] != "cached"]
    print(
        f"\ntarget: median <= {TARGET_MS:.0f} ms per uncached tile —"
        f" {'met' if not missed else 'MISSED by ' + ', '.join(r['what'] for r in missed)}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    store.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

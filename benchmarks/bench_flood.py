"""Flood engine benchmark (issue 7): CityTwin vs itzï, a million cells, the demo city coupled.

CityTwin's surface model against the peer itzï, at a million cells, and on the demo city's storms
coupled to its drains:

1. itzï (Courty et al. 2017, version 25.8, its in-memory simulation, no GRASS) and CityTwin's
   local inertia solver on the same real terrain — the USGS DEM of the KY4 network's area
   (``../shared/data/ky4/ky4_elevation.tif``: 587 x 402 cells, 90.975 US survey feet = 27.73 m
   on a side, elevations in metres) — with the same design storm (``design_storm(P, 60)``,
   Guangzhou's formula, 5-minute blocks, handed to itzï block by block as its rain array in m/s),
   the same uniform Manning's n, the same closed sides (a wall all round: itzï's "open" side
   extrapolates the inner velocity, CityTwin's passes critical depth, so only closed sides are
   the same boundary in both), no infiltration in either, the same Courant number (0.7) and
   discharge weighting θ (CityTwin's 0.8 given to itzï, whose default is 0.9); the rest is each
   engine's own (itzï: 5 s longest step, 5 mm least flow depth with its rain routing below it,
   float32 arrays as it runs them; CityTwin: 1 mm, float64). itzï runs in a subprocess with its
   own virtual environment and ``OMP_NUM_THREADS`` threads, CityTwin on numba's threads (both 2
   by default); numba is warmed up on the same grid first, so no compile time is counted.

   Work is counted the same way for both: time steps x cells computed. CityTwin:
   ``Result.cell_updates`` (steps x active cells); itzï: its steps (``Simulation.update`` calls,
   plus the closing step of ``finalize``) x the cells of the grid (its kernels sweep every cell).
   Reported: wall and CPU seconds, cell updates per second, the throughput ratio (target:
   CityTwin >= 5x itzï), each engine's mass balance (CityTwin's run loop checks every step;
   itzï's own volume accounting: the depth it clips back to zero, i.e. water created), and the
   agreement of the two depth fields: MAE and RMSE of the deepest water and of the final depth
   over the cells wet (> 1 cm) in either.

2. Scaling: 1 km² at 1 m (1000 x 1000 cells) of a synthetic, deterministic urban terrain (a
   gentle slope, smooth undulation, streets 15 cm below the blocks, buildings as walls), the
   2-year 60-minute storm, the local inertia solver, open sides, run for the storm's hour
   (target <= 60 s), and 250 x 250 and 500 x 500 cuts of it with the same storm.

3. The demo city (``build_city(path, 4, 1)``, as ``citytwin demo`` plans it; built once and kept
   in ``benchmarks/.cache``): ``run_storm(..., coupled=True)`` with the 2- and the 50-year
   60-minute storm and an hour after it, at 5 m and at 10 m cells (``--demo-cells``; target
   <= 2 min each): wall time, the coupled volume balance, buildings flooded, residents
   affected. The grid is ``flood_grid``'s: buildings as walls, road/ground Manning, Green-Ampt
   on the pervious share, open sides.

The machine is shared: the load average is printed at the start and the end, and CPU seconds
beside wall seconds.

Run: .venv/bin/python benchmarks/bench_flood.py [--quick] [--part itzi|scaling|demo]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_tiles import CACHE, city_twin  # the virtual city, built once and cached

ROOT = Path(__file__).resolve().parent.parent
DEM = ROOT.parent / "shared" / "data" / "ky4" / "ky4_elevation.tif"
JUNCTIONS = DEM.with_name("ky4_junctions.geojson")
ITZI_PYTHON = CACHE / "itzi-venv" / "bin" / "python"
DEMO_AREA_KM2, DEMO_SEED = 4.0, 1  # citytwin.demo's DEMO_AREA_KM2, DEMO_SEED
TARGET_RATIO = 5.0
TARGET_1M_S = 60.0
TARGET_DEMO_S = 120.0
WET = 0.01
ALPHA, THETA = 0.7, 0.8  # CityTwin LocalInertia defaults, given to itzï as cfl and theta

ITZI_SCRIPT = textwrap.dedent(
    """
    import csv, json, sys, time
    from datetime import timedelta
    from importlib.metadata import version
    from pathlib import Path
    import numpy as np
    from itzi.configreader import SimulationTimes
    from itzi.const import DefaultValues as D
    from itzi.rasterdomain import DomainData
    from itzi.simulation_factories import create_memory_simulation

    work = Path(sys.argv[1])
    cfg = json.loads((work / "config.json").read_text())
    z = np.load(work / "z.npy")
    ny, nx = z.shape
    dx = cfg["dx"]
    dtype = np.dtype(cfg["dtype"]).type

    def hms(s):
        s = int(round(s))
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

    total = cfg["duration_s"]
    times = SimulationTimes({"duration": hms(total), "start_time": None, "end_time": None,
                             "record_step": hms(cfg["record_s"])})
    sim_param = {"hmin": D.HFMIN, "cfl": cfg["cfl"], "theta": cfg["theta"], "g": 9.81,
                 "vrouting": D.VROUTING, "dtmax": D.DTMAX, "slmax": D.SLMAX, "dtinf": D.DTINF,
                 "max_error": 1e9, "inf_model": "null"}  # report the error, don't stop on it
    drainage = {"swmm_inp": None, "output": None, "orifice_coeff": D.ORIFICE_COEFF,
                "free_weir_coeff": D.FREE_WEIR_COEFF,
                "submerged_weir_coeff": D.SUBMERGED_WEIR_COEFF}
    domain = DomainData(north=ny * dx, south=0.0, east=nx * dx, west=0.0, rows=ny, cols=nx)
    mask = ~np.isfinite(z)
    stats = work / "itzi_stats.csv"
    c0, t0 = time.process_time(), time.perf_counter()
    sim = create_memory_simulation(times, {}, sim_param, drainage, domain, mask, dtype=dtype,
                                   stats_file=str(stats))
    sim.set_array("dem", np.where(mask, np.nan, z).astype(dtype))
    sim.set_array("friction", np.full(z.shape, cfg["manning"], dtype))
    sim.set_array("bctype", np.full(z.shape, cfg["bctype"], dtype))  # 0 closed, 2 open
    rain_t, rain_v = cfg["rain_times"], cfg["rain_ms"]
    sim.set_array("rain", np.full(z.shape, rain_v[0], dtype))
    sim.initialize()
    steps = 0
    edges = [t for t in rain_t[1:] if t < total] + [total]
    for k, edge in enumerate(edges):  # Simulation.update_until, counting the steps
        end = sim.start_time + timedelta(seconds=edge)
        sim.next_ts["temp_end"] = end
        while sim.sim_time < end:
            sim.update()
            steps += 1
        del sim.next_ts["temp_end"]
        if edge < total:  # the next block of the hyetograph
            sim.set_array("rain", np.full(z.shape, rain_v[k + 1], dtype))
    sim.finalize()  # itzï's closing surface step
    steps += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    h = sim.get_array("water_depth").astype(np.float64)
    hmax = sim.get_array("hmax").astype(np.float64)
    np.save(work / "itzi_h.npy", np.where(mask, np.nan, h))
    np.save(work / "itzi_hmax.npy", np.where(mask, np.nan, hmax))
    rows = list(csv.DictReader(stats.open()))

    def col(name):
        return sum(float(r[name]) for r in rows if r[name] not in ("-", ""))

    out = {"seconds": seconds, "cpu_seconds": cpu, "steps": steps, "cells": int(ny * nx),
           "version": version("itzi"), "rain_m3": col("rainfall_volume"),
           "boundary_m3": col("boundary_volume"), "created_m3": col("volume_error"),
           "final_m3": float(h[~mask].sum() * dx * dx)}
    (work / "itzi_result.json").write_text(json.dumps(out))
    """
)


# -- helpers --------------------------------------------------------------------------------------
def load() -> float:
    return os.getloadavg()[0]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISSED"


def warm_up() -> None:
    """Compile the numba kernels (run loop and local inertia) on a small grid with walls, a
    per-cell Manning, losses and every side kind, so that no timed run pays for compiling."""
    from citytwin.flood.domain import Boundary, Domain, GreenAmpt
    from citytwin.flood.rain import uniform_rain
    from citytwin.flood.run import simulate

    y, x = np.mgrid[0:40, 0:40]
    blocked = np.zeros((40, 40), bool)
    blocked[10:15, 10:15] = True
    for manning in (0.03, np.full((40, 40), 0.03)):
        for kind in ("closed", "open"):
            d = Domain(
                10.0 - 0.01 * x - 0.01 * y,
                1.0,
                manning=manning,
                blocked=blocked,
                boundaries=dict.fromkeys(("north", "south", "west", "east"), Boundary(kind)),
                losses=GreenAmpt(ks=np.full((40, 40), 1e-6), psi=0.1, dtheta=0.3),
            )
            simulate(d, 30.0, rain=uniform_rain(100.0, 1.0))


def depth_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and mean difference (a − b) over the cells wet (> 1 cm) in either."""
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    wet = (a > WET) | (b > WET)
    d = a[wet] - b[wet]
    both = (a > 0.1) & (b > 0.1)
    either = (a > 0.1) | (b > 0.1)
    return {
        "cells": int(wet.sum()),
        "mae": float(np.abs(d).mean()) if d.size else 0.0,
        "rmse": float(np.sqrt((d**2).mean())) if d.size else 0.0,
        "bias": float(d.mean()) if d.size else 0.0,
        "csi_10cm": float(both.sum() / either.sum()) if either.any() else 1.0,
    }


# -- 1. itzï --------------------------------------------------------------------------------------
def read_ky4(quick: bool) -> tuple[np.ndarray, float, str]:
    """The KY4 DEM (m) and its cell size (m), with a note on the units."""
    import rasterio

    with rasterio.open(DEM) as ds:
        z = ds.read(1, masked=True).filled(np.nan).astype(np.float64)
        unit, factor = ds.crs.linear_units_factor
        cell = abs(ds.transform.a) * factor
        tags = ds.tags()
        # the vertical unit: GeoTIFF carries none here; check against the network's junction
        # elevations (metres, in the same CRS)
        feats = json.loads(JUNCTIONS.read_text())["features"]
        xy = [f["geometry"]["coordinates"][:2] for f in feats]
        elev = np.array([f["properties"]["elevation"] for f in feats], float)
        rows, cols = rasterio.transform.rowcol(ds.transform, *zip(*xy, strict=True))
    rows, cols = np.asarray(rows), np.asarray(cols)
    ok = (rows >= 0) & (rows < z.shape[0]) & (cols >= 0) & (cols < z.shape[1])
    ratio = float(np.nanmedian(z[rows[ok], cols[ok]] / elev[ok]))
    vertical = "m" if 0.8 < ratio < 1.25 else "ft"
    if vertical == "ft":
        z = z * 0.3048006096012192
    note = (
        f"KY4 DEM {z.shape[1]} x {z.shape[0]} cells, CRS unit {unit!r} (x {factor:.7f} m):"
        f" cell {cell:.2f} m; elevations {np.nanmin(z):.1f}-{np.nanmax(z):.1f} m (vertical unit"
        f" {vertical}: DEM / junction elevation (m) at {ok.sum()} junctions, median"
        f" {ratio:.3f}; tags {sorted(tags)})"
    )
    if quick:  # the central 160 x 240 cells
        r0, c0 = (z.shape[0] - 160) // 2, (z.shape[1] - 240) // 2
        z = z[r0 : r0 + 160, c0 : c0 + 240].copy()
        note += f"; --quick: the central {z.shape[1]} x {z.shape[0]} cells"
    return z, cell, note


def part_itzi(args: argparse.Namespace) -> dict[str, Any]:
    import numba

    from citytwin.flood.domain import Domain
    from citytwin.flood.rain import design_storm
    from citytwin.flood.run import simulate

    print("\n== 1. CityTwin vs itzï on the KY4 DEM ==")
    z, cell, note = read_ky4(args.quick)
    print(note)
    storm = design_storm(args.return_period, 60.0)
    after = 15.0 if args.quick else args.after
    duration = (60.0 + after) * 60.0
    rain_times = storm.series.times.tolist()
    rain_ms = storm.series.values.tolist()
    print(
        f"storm: {args.return_period:g}-year 60-min design storm (Guangzhou),"
        f" {storm.series.integral(3600.0) * 1000:.1f} mm, peak"
        f" {max(rain_ms) * 3.6e6:.0f} mm/h; run {duration / 60:.0f} min; Manning n"
        f" {args.manning}; sides closed; no infiltration; alpha/cfl {ALPHA}, theta {THETA}"
    )
    domain = Domain(z, cell, manning=args.manning)
    cells = int(domain.active.sum())

    if args.threads:
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    threads = numba.get_num_threads()
    simulate(domain, 120.0, rain=storm)  # warm-up on this grid: compiled before timing
    work = Path(tempfile.mkdtemp(prefix="bench-flood-itzi-"))
    np.save(work / "z.npy", z)
    config = {
        "dx": cell,
        "dtype": "float32",
        "duration_s": duration,
        "record_s": 300,
        "cfl": ALPHA,
        "theta": THETA,
        "manning": args.manning,
        "bctype": 0.0,
        "rain_times": rain_times,
        "rain_ms": rain_ms,
    }
    (work / "config.json").write_text(json.dumps(config))
    (work / "run_itzi.py").write_text(ITZI_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or 2))
    print(
        f"CityTwin: {threads} numba threads; itzï: {args.itzi_python} with OMP_NUM_THREADS="
        f"{env['OMP_NUM_THREADS']}; {args.repeat} run(s) of each, alternating (the fastest"
        " of each is kept: the machine is shared)"
    )
    cts: list[dict[str, Any]] = []
    its: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        l0 = load()
        c0, t0 = time.process_time(), time.perf_counter()
        res = simulate(domain, duration, rain=storm, solver="inertial")
        ct_s, ct_cpu = time.perf_counter() - t0, time.process_time() - c0
        b = res.balance.summary()
        ct = {
            "seconds": ct_s,
            "cpu_seconds": ct_cpu,
            "steps": res.steps,
            "cells": cells,
            "updates": res.cell_updates,
            "ups": res.cell_updates / ct_s,
            "balance_final": b["error_m3"] / b["rain_m3"],
            "balance_max": b["relative_error"],
        }
        cts.append(ct)
        print(
            f"  CityTwin: {ct_s:.1f} s wall ({ct_cpu:.1f} s CPU), {res.steps} steps x"
            f" {cells:,} cells = {res.cell_updates:.3e} cell updates, {ct['ups'] / 1e6:.2f} M/s;"
            f" mass balance: rain {b['rain_m3']:,.0f} m³, held {b['final_m3']:,.0f} m³, error"
            f" {ct['balance_final']:.1e} (largest of any step {ct['balance_max']:.1e});"
            f" load {l0:.1f} -> {load():.1f}"
        )
        l0 = load()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(args.itzi_python), str(work / "run_itzi.py"), str(work)],
            env=env,
            capture_output=True,
            text=True,
        )
        it_wall = time.perf_counter() - t0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(f"itzï failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        it = json.loads((work / "itzi_result.json").read_text())
        it["process_wall"] = it_wall
        it["process_cpu"] = ru.ru_utime - before.ru_utime + ru.ru_stime - before.ru_stime
        it["updates"] = it["steps"] * it["cells"]
        it["ups"] = it["updates"] / it["seconds"]
        it["balance_final"] = (it["final_m3"] - it["rain_m3"] - it["boundary_m3"]) / it["rain_m3"]
        its.append(it)
        print(
            f"  itzï {it['version']}: {it['seconds']:.1f} s wall in its loop"
            f" ({it['cpu_seconds']:.1f} s CPU; the process {it_wall:.1f} s,"
            f" {it['process_cpu']:.1f} s CPU), {it['steps']} steps x {it['cells']:,} cells ="
            f" {it['updates']:.3e} cell updates, {it['ups'] / 1e6:.2f} M/s; mass balance: rain"
            f" {it['rain_m3']:,.0f} m³, held {it['final_m3']:,.0f} m³, water created by"
            f" clipping negative depths {it['created_m3']:,.0f} m³: error"
            f" {it['balance_final']:.1e}; load {l0:.1f} -> {load():.1f}"
        )
    ct = min(cts, key=lambda r: r["seconds"])
    it = min(its, key=lambda r: r["seconds"])
    hmax_it = np.load(work / "itzi_hmax.npy")
    h_it = np.load(work / "itzi_h.npy")
    agree_max = depth_agreement(res.max_depth, hmax_it)
    agree_fin = depth_agreement(res.state.h, h_it)
    for label, a in (("deepest water", agree_max), ("final depth", agree_fin)):
        print(
            f"  {label}: over {a['cells']:,} cells wet (> 1 cm) in either: MAE"
            f" {a['mae'] * 100:.2f} cm, RMSE {a['rmse'] * 100:.2f} cm, bias (CityTwin − itzï)"
            f" {a['bias'] * 100:+.2f} cm; > 10 cm in both / in either (CSI) {a['csi_10cm']:.3f}"
        )
    print(f"  deepest: CityTwin {np.nanmax(res.max_depth):.2f} m, itzï {np.nanmax(hmax_it):.2f} m")
    ratio = ct["ups"] / it["ups"]
    print(
        f"  throughput: CityTwin / itzï = {ratio:.2f} x (target >= {TARGET_RATIO:g} x:"
        f" {verdict(ratio >= TARGET_RATIO)}); wall time itzï / CityTwin ="
        f" {it['seconds'] / ct['seconds']:.2f} x; CPU time"
        f" {it['cpu_seconds'] / ct['cpu_seconds']:.2f} x (fastest runs)"
    )
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return {"ct": ct, "itzi": it, "ratio": ratio, "max": agree_max, "final": agree_fin,
            "threads": threads, "minutes": duration / 60, "runs": (cts, its)}  # fmt: skip


# -- 2. scaling -----------------------------------------------------------------------------------
def urban_dem(n: int = 1000, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A deterministic urban-like terrain at 1 m: ``z`` (m), ``blocked`` (buildings) and
    ``street`` cells. A 0.4 % / 0.3 % slope to the south-east, smooth undulation (±~0.3 m
    over ~50 m), 2 cm of roughness, 80 m blocks between 16 m streets lying 15 cm lower (kerbs),
    and 2-6 buildings per block (walls to the water)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n].astype(float)
    z = 30.0 - 0.004 * x - 0.003 * y
    wave = gaussian_filter(rng.standard_normal((n, n)), 25.0, mode="reflect")
    z += wave / wave.std() * 0.12
    z += rng.uniform(-0.02, 0.02, (n, n))
    pitch, street = 96, 16
    on_street = ((x % pitch) < street) | ((y % pitch) < street)
    z[on_street] -= 0.15
    blocked = np.zeros((n, n), bool)
    for by in range(street, n, pitch):
        for bx in range(street, n, pitch):
            size = pitch - street
            for _ in range(int(rng.integers(2, 7))):
                h, w = int(rng.integers(12, 36)), int(rng.integers(12, 36))
                r0 = by + int(rng.integers(2, max(3, size - h - 2)))
                c0 = bx + int(rng.integers(2, max(3, size - w - 2)))
                blocked[r0 : min(r0 + h, by + size - 2, n), c0 : min(c0 + w, bx + size - 2, n)] = (
                    True
                )
    return z, blocked, on_street


def part_scaling(args: argparse.Namespace) -> list[dict[str, Any]]:
    import numba

    from citytwin.flood.domain import Boundary, Domain
    from citytwin.flood.rain import design_storm
    from citytwin.flood.run import simulate

    print("\n== 2. Scaling: synthetic urban terrain at 1 m, 2-year 60-min storm ==")
    sizes = (250, 500) if args.quick else (250, 500, 1000)
    z, blocked, street = urban_dem(1000)  # the smaller grids are cuts of it
    storm = design_storm(2.0, 60.0)
    seconds = 3600.0 + args.scaling_after * 60.0
    print(
        f"terrain: {z.shape[1]} x {z.shape[0]} at 1 m, {blocked.mean():.0%} buildings,"
        f" {street.mean():.0%} streets (n 0.016; elsewhere 0.035); open sides; no infiltration;"
        f" storm {storm.series.integral(3600.0) * 1000:.1f} mm; run {seconds / 60:.0f} min;"
        f" local inertia, {numba.get_num_threads()} numba threads"
    )
    rows = []
    for n in sizes:
        manning = np.where(street[:n, :n], 0.016, 0.035)
        sides = dict.fromkeys(("north", "south", "west", "east"), Boundary("open"))
        d = Domain(z[:n, :n], 1.0, manning=manning, blocked=blocked[:n, :n], boundaries=sides)
        simulate(d, 5.0, rain=storm)  # warm-up on this grid
        l0 = load()
        c0, t0 = time.process_time(), time.perf_counter()
        res = simulate(d, seconds, rain=storm, solver="inertial")
        s, cpu = time.perf_counter() - t0, time.process_time() - c0
        b = res.balance.summary()
        row = {
            "n": n,
            "cells": int(d.active.sum()),
            "seconds": s,
            "cpu_seconds": cpu,
            "steps": res.steps,
            "ups": res.cell_updates / s,
            "max_depth": float(np.nanmax(res.max_depth)),
            "balance": b["relative_error"],
            "outflow_share": b["outflow_m3"] / b["rain_m3"],
            "load": (l0, load()),
        }
        rows.append(row)
        print(
            f"  {n} x {n}: {row['cells']:,} active cells, {s:.1f} s wall ({cpu:.1f} s CPU),"
            f" {res.steps} steps, {row['ups'] / 1e6:.2f} M cell updates/s; deepest"
            f" {row['max_depth']:.2f} m; {row['outflow_share']:.0%} of the rain left by the"
            f" sides; mass balance error {row['balance']:.1e}; load {l0:.1f} -> {load():.1f}"
        )
    for a, b in itertools.pairwise(rows):
        k = np.log(b["seconds"] / a["seconds"]) / np.log(b["cells"] / a["cells"])
        print(
            f"  {a['n']}² -> {b['n']}²: time x {b['seconds'] / a['seconds']:.2f} for cells"
            f" x {b['cells'] / a['cells']:.2f} (time ~ cells^{k:.2f}; steps {a['steps']} ->"
            f" {b['steps']})"
        )
    return rows


# -- 3. demo city ---------------------------------------------------------------------------------
def part_demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    from citytwin.app.flood import run_storm
    from citytwin.drainage.coupling import SwmmCoupling
    from citytwin.store import open_store

    # the time spent in the coupling's syncs (SWMM's strides and the exchange), measured by
    # wrapping SwmmCoupling.sync for this benchmark only
    in_sync = [0.0]
    sync = SwmmCoupling.sync

    def timed_sync(self: Any, *a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return sync(self, *a)
        finally:
            in_sync[0] += time.perf_counter() - t0

    SwmmCoupling.sync = timed_sync  # type: ignore[method-assign]
    print(f"\n== 3. Demo city ({DEMO_AREA_KM2:g} km², seed {DEMO_SEED}): coupled storms ==")
    path = city_twin(DEMO_AREA_KM2, DEMO_SEED)
    periods = (2.0,) if args.quick else (2.0, 50.0)
    cells = [float(c) for c in args.demo_cells.split(",")]
    rows = []
    with open_store(path, read_only=True) as store:
        for cell in cells:
            for p in periods:
                l0 = load()
                in_sync[0] = 0.0
                c0, t0 = time.process_time(), time.perf_counter()
                sc = run_storm(store, return_period=p, duration_min=60.0, after_min=60.0,
                               coupled=True, cell=cell)  # fmt: skip
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                s = sc.summary
                dr = s.get("drainage", {})
                row = {
                    "cell": cell,
                    "period": p,
                    "wall": wall,
                    "cpu": cpu,
                    "engine_s": sc.seconds,
                    "sync_s": in_sync[0],
                    "cells": s["cells"],
                    "steps": s["steps"],
                    "ups": s["cell_updates_per_s"],
                    "coupled_error": dr.get("relative_error"),
                    "surface_error": s["mass_balance"]["relative_error"],
                    "buildings": s["buildings_flooded"],
                    "residents": s["residents_affected"],
                    "max_depth": s["max_depth_m"],
                    "flooded_m2": s["flooded_area_m2"],
                    "load": (l0, load()),
                }
                rows.append(row)
                print(
                    f"  {p:g}-year at {cell:g} m: {wall:.1f} s wall ({cpu:.1f} s CPU;"
                    f" run loop {sc.seconds:.1f} s, of which SWMM syncs {in_sync[0]:.1f} s),"
                    f" {row['cells']:,} cells,"
                    f" {row['steps']} steps, {row['ups'] / 1e6:.2f} M cell updates/s; coupled"
                    f" volume balance error {row['coupled_error']:.2e} (surface"
                    f" {row['surface_error']:.1e}); {row['buildings']} buildings flooded,"
                    f" {row['residents']} residents affected; deepest {row['max_depth']:.2f} m,"
                    f" {row['flooded_m2'] / 1e4:.1f} ha deeper than 15 cm;"
                    f" load {l0:.1f} -> {load():.1f}"
                )
    SwmmCoupling.sync = sync  # type: ignore[method-assign]
    return rows


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("itzi", "scaling", "demo", "all"), default="all")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller runs: a 240 x 160 cut of the DEM and 15 min after the"
        " storm, no 1000 x 1000 grid, the demo's 2-year storm only",
    )
    parser.add_argument(
        "--return-period",
        type=float,
        default=50.0,
        help="the itzï comparison's design storm (years)",
    )
    parser.add_argument(
        "--after",
        type=float,
        default=60.0,
        help="minutes run after the storm in the itzï comparison",
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs of each engine in part 1 (fastest kept)"
    )
    parser.add_argument("--manning", type=float, default=0.03, help="uniform Manning's n (part 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="itzï's OMP_NUM_THREADS, CityTwin's numba threads (part 1)",
    )
    parser.add_argument("--itzi-python", type=Path, default=ITZI_PYTHON)
    parser.add_argument(
        "--scaling-after",
        type=float,
        default=0.0,
        help="minutes run after the storm's hour in the scaling runs",
    )
    parser.add_argument(
        "--demo-cells",
        default="5,10",
        help="cell sizes (m, comma-separated) of the demo city's runs",
    )
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, load average {load():.1f} at the start")
    warm_up()
    parts = ("itzi", "scaling", "demo") if args.part == "all" else (args.part,)
    out: dict[str, Any] = {}
    if "itzi" in parts:
        out["itzi"] = part_itzi(args)
    if "scaling" in parts:
        out["scaling"] = part_scaling(args)
    if "demo" in parts:
        out["demo"] = part_demo(args)
    summary(out)
    print(f"load average {load():.1f} at the end")


def summary(out: dict[str, Any]) -> None:
    """The table of every figure, with PASS / MISSED against the targets."""
    lines: list[tuple[str, str, str]] = []
    if "itzi" in out:
        r = out["itzi"]
        ct, it = r["ct"], r["itzi"]
        lines += [
            ("KY4 DEM, storm + after", f"{r['minutes']:.0f} min simulated", ""),
            ("CityTwin wall / CPU", f"{ct['seconds']:.1f} s / {ct['cpu_seconds']:.1f} s", ""),
            ("itzï wall / CPU", f"{it['seconds']:.1f} s / {it['cpu_seconds']:.1f} s", ""),
            ("CityTwin cell updates/s", f"{ct['ups'] / 1e6:.2f} M ({ct['steps']} steps)", ""),
            ("itzï cell updates/s", f"{it['ups'] / 1e6:.2f} M ({it['steps']} steps)", ""),
            ("throughput CityTwin / itzï", f"{r['ratio']:.2f} x",
             f"{verdict(r['ratio'] >= TARGET_RATIO)} (>= {TARGET_RATIO:g} x)"),
            ("CityTwin mass balance error", f"{ct['balance_final']:.1e}", ""),
            ("itzï mass balance error", f"{it['balance_final']:.1e} (water created)", ""),
            ("max depth MAE / RMSE", f"{r['max']['mae'] * 100:.2f} / {r['max']['rmse'] * 100:.2f}"
             f" cm over {r['max']['cells']:,} cells", ""),
            ("final depth MAE / RMSE",
             f"{r['final']['mae'] * 100:.2f} / {r['final']['rmse'] * 100:.2f} cm over"
             f" {r['final']['cells']:,} cells", ""),
        ]  # fmt: skip
    for row in out.get("scaling", []):
        target = verdict(row["seconds"] <= TARGET_1M_S) + " (<= 60 s)" if row["n"] == 1000 else ""
        lines.append(
            (
                f"scaling {row['n']} x {row['n']} (1 m, 60 min)",
                f"{row['seconds']:.1f} s, {row['ups'] / 1e6:.2f} M cell updates/s",
                target,
            )
        )
    for row in out.get("demo", []):
        lines.append(
            (
                f"demo {row['period']:g}-year coupled, {row['cell']:g} m",
                f"{row['wall']:.1f} s; balance {row['coupled_error']:.1e}; {row['buildings']}"
                f" buildings, {row['residents']} residents",
                f"{verdict(row['wall'] <= TARGET_DEMO_S)} (<= 120 s)",
            )
        )
    print("\nSummary")
    w0 = max(len(a) for a, _, _ in lines)
    w1 = max(len(b) for _, b, _ in lines)
    for a, b, c in lines:
        print(f"  {a:<{w0}}  {b:<{w1}}  {c}")


if __name__ == "__main__":
    sys.exit(main())

"""Rainstorm flooding on a twin: the surface grid from its terrain, buildings, streets and land
use; a storm run (surface only, or coupled to the drainage network through SWMM); what the
flood reaches (buildings, residents, roads, critical facilities); the scenario kept in the twin
(rasters as Cloud-Optimised GeoTIFF, the summary as a document) and drawn as a map.

The engine (``citytwin.flood``) works on arrays; this module is the adapter between it and the
model.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.io import MemoryFile
from rasterio.transform import Affine, from_origin
from rasterio.warp import reproject

from citytwin.errors import InvalidInput, NotFound
from citytwin.flood.domain import Boundary, Domain, GreenAmpt, Rainfall
from citytwin.flood.impacts import (
    BASEMENT_AT_RISK,
    BUILDING_FLOODED,
    HAZARD_CLASSES,
    IMPASSABLE,
    Raster,
    building_depths,
    flooded_length,
    hazard_class,
    point_depths,
)
from citytwin.flood.rain import design_storm
from citytwin.flood.run import Result, simulate, solver_for
from citytwin.formats.raster import open_raster
from citytwin.store import Query, Store

MANNING_ROAD = 0.016
"""Manning's n of asphalt and concrete carriageways (Chow 1959: 0.013–0.016)."""
MANNING_GROUND = 0.035
"""Manning's n elsewhere in town: yards, verges, pavements with obstructions (Chow 1959 /
Engman 1986 ranges for short grass to paved-with-debris)."""
SOIL = {"ks": 10.9 / 3.6e6, "psi": 0.1101, "dtheta": 0.3}
"""Green–Ampt parameters of a sandy loam (Rawls, Brakensiek & Miller 1983: Ks 10.9 mm/h,
wetting-front suction 110.1 mm, effective porosity 0.412; an initial deficit of 0.3): the
pervious part of each land-use block; sealed surfaces take nothing."""
CRITICAL = (
    "hospital",
    "clinic",
    "elderly_care",
    "shelter",
    "fire_station",
    "police",
    "metro_station",
    "metro_entrance",
    "substation",
    "power_plant",
    "pumping_station",
    "water_treatment_plant",
    "sewage_treatment_plant",
    "telecom_exchange",
    "gas_regulator_station",
    "school",
    "kindergarten",
)
"""Facility classes reported as critical when the flood reaches them (and any marked so)."""
SCENARIO_PREFIX = "flood/"
RASTERS = ("max_depth", "max_speed", "hazard", "first_wet", "wet_duration")


# -- the grid -----------------------------------------------------------------------------------
@dataclass
class FloodGrid:
    """A twin's surface as a flood domain, with where it lies (``raster``) and its CRS."""

    domain: Domain
    raster: Raster
    crs: str

    @property
    def transform(self) -> Affine:
        return from_origin(self.raster.x0, self.raster.y0, self.raster.dx, self.raster.dx)


def flood_grid(
    store: Store,
    *,
    cell: float | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    sides: str = "open",
) -> FloodGrid:
    """The surface of the twin as a flood grid: its DEM (resampled to ``cell`` metres and cut
    to ``bounds`` when given), buildings as walls, Manning's n of roads and of the rest, and
    Green–Ampt infiltration on the pervious share of each land-use block; every side ``open``
    (water leaves the area) or ``closed``."""
    with open_raster(_dem_bytes(store)) as ds:
        src, src_t = ds.read(1, masked=True).filled(np.nan).astype(float), ds.transform
        src_crs, src_cell = ds.crs, abs(src_t.a)
        (x0, y1, _, y0), dx, shape = _grid_window(ds, cell, bounds)
    transform = from_origin(x0, y0, dx, dx)
    z = np.full(shape, np.nan)
    reproject(
        src,
        z,
        src_transform=src_t,
        src_crs=src_crs,
        dst_transform=transform,
        dst_crs=src_crs,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=Resampling.average if dx > src_cell else Resampling.bilinear,
    )
    box = shapely.box(x0, y1, x0 + shape[1] * dx, y0)
    buildings = store.query(Query("buildings", intersects=box, columns=["height"]))
    blocked = _burn(buildings.geometry.to_numpy(), shape, transform)
    streets = store.query(Query("streets", intersects=box, columns=["width"]))
    manning = np.full(shape, MANNING_GROUND)
    if len(streets):
        width = streets["width"].astype(float).fillna(8.0).to_numpy()
        roads = shapely.buffer(
            streets.geometry.to_numpy(), np.maximum(width, dx) / 2, cap_style="flat"
        )
        manning[_burn(roads, shape, transform)] = MANNING_ROAD
    pervious = np.ones(shape)
    zones = store.query(
        Query("zones", intersects=box, classes=["land_use"], columns=["imperviousness"])
    )
    if len(zones):
        imp = zones["imperviousness"].astype(float).fillna(0.5).clip(0, 1).to_numpy()
        shapes = zip(zones.geometry.to_numpy(), 1.0 - imp, strict=True)
        pervious = rasterize(
            shapes, out_shape=shape, transform=transform, fill=1.0, dtype="float64"
        )
    pervious[manning == MANNING_ROAD] = 0.0
    losses = GreenAmpt(ks=SOIL["ks"] * pervious, psi=SOIL["psi"], dtheta=SOIL["dtheta"])
    kind = {"open": Boundary("open"), "closed": Boundary("closed")}.get(sides)
    if kind is None:
        raise InvalidInput(f"unknown sides {sides!r}", hint="open or closed")
    domain = Domain(
        z,
        dx,
        manning=manning,
        blocked=blocked,
        boundaries=dict.fromkeys(("north", "south", "west", "east"), kind),
        losses=losses,
    )
    return FloodGrid(domain, Raster(x0, y0, dx, shape), store.meta.crs)


def _burn(geoms: np.ndarray, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Cells whose centre lies in one of ``geoms``."""
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, bool)
    return rasterize(
        ((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8"
    ).astype(bool)


# -- a run --------------------------------------------------------------------------------------
@dataclass
class FloodScenario:
    """A storm's run on a twin and what it reached."""

    id: str
    params: dict[str, Any]
    grid: FloodGrid
    result: Result
    summary: dict[str, Any]
    buildings: pd.DataFrame
    roads: pd.DataFrame
    facilities: pd.DataFrame
    seconds: float
    drainage: dict[str, Any] = field(default_factory=dict)


def run_storm(
    store: Store,
    *,
    return_period: float = 2.0,
    duration_min: float = 60.0,
    after_min: float = 60.0,
    rain: Rainfall | None = None,
    solver: str = "inertial",
    cell: float | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    coupled: bool = False,
    on_step: Callable[[float, float], None] | None = None,
    grid: FloodGrid | None = None,
) -> FloodScenario:
    """Run a design storm (``return_period`` years, ``duration_min``; or the given ``rain``) on
    the twin's surface for the storm plus ``after_min``, optionally coupled to its storm
    drainage through SWMM, and assess what it reaches; ``grid``: the twin's flood grid when
    the caller has made it already (else made for ``cell`` and ``bounds``)."""
    try:
        solver_for(solver)
        rain = rain or design_storm(return_period, duration_min)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    grid = grid or flood_grid(store, cell=cell, bounds=bounds)
    seconds = (duration_min + after_min) * 60.0
    exchange, coupling = None, None
    if coupled:
        coupling = drainage_coupling(store, grid, seconds)
        exchange = coupling
    started = time.perf_counter()
    try:
        result = simulate(
            grid.domain, seconds, solver=solver, rain=rain, exchange=exchange, on_step=on_step
        )
    finally:
        if coupling is not None:
            coupling.close()
    drainage: dict[str, Any] = {}
    if coupling is not None:
        drainage = coupled_balance(result, coupling.volume_report(result.balance.volume[-1]))
    took = time.perf_counter() - started
    params = {
        "return_period": return_period,
        "duration_min": duration_min,
        "after_min": after_min,
        "solver": solver,
        "cell": grid.raster.dx,
        "coupled": coupled,
        "bounds": list(bounds) if bounds else None,
    }
    sid = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    return assess(store, sid, params, grid, result, took, drainage)


def drainage_coupling(store: Store, grid: FloodGrid, seconds: float) -> Any:
    """The twin's storm drainage (or combined sewers) coupled to the grid through SWMM: every
    manhole on an open cell of the grid is an inlet (its rim the ground there)."""
    import tempfile

    from citytwin.drainage.coupling import SwmmCoupling
    from citytwin.formats.swmm import write_swmm

    swmm = {}
    for k in store.documents("network/"):
        doc = store.get_document(k) or {}
        if doc.get("format") == "swmm":
            swmm[doc.get("network")] = k
    key = swmm.get("storm") or swmm.get("combined")
    if key is None:
        raise InvalidInput(
            "the twin has no storm or combined drainage network to couple",
            hint="import one (citytwin import model.inp) or run --surface-only",
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "drainage.inp"
        write_swmm(store, path, network_key=key)
        text = path.read_text()
    r = grid.raster
    return SwmmCoupling.from_coordinates(text, grid.domain, r.x0, r.y0, duration=seconds)


def coupled_balance(result: Result, sewer: Any) -> dict[str, Any]:
    """The coupled volume balance: the water put on the surface (rain, inflows) less its own
    losses and side outflow, against what the surface and the sewers hold or let out."""
    b = result.balance
    put = b.rain[-1] + b.inflow[-1] - b.losses[-1] - b.outflow[-1] + b.initial
    held = sewer.total
    out = {k: float(v) for k, v in vars(sewer).items()}
    out.update(
        put_m3=float(put),
        held_m3=float(held),
        relative_error=float(abs(held - put) / put) if put > 0 else 0.0,
    )
    return out


def assess(
    store: Store,
    sid: str,
    params: dict[str, Any],
    grid: FloodGrid,
    result: Result,
    seconds: float,
    drainage: dict[str, Any] | None = None,
) -> FloodScenario:
    """What a run's flood reaches in the twin: buildings (depth at the walls; basements at
    risk), residents, roads (impassable length), critical facilities; and the summary."""
    r, depth = grid.raster, np.nan_to_num(result.max_depth, nan=0.0)
    box = shapely.box(r.x0, r.y0 - r.shape[0] * r.dx, r.x0 + r.shape[1] * r.dx, r.y0)
    b = store.query(
        Query("buildings", intersects=box, columns=["residents", "basement_floors", "use", "name"])
    )
    walls = building_depths(depth, r, b.geometry.to_numpy()) if len(b) else np.zeros(0)
    buildings = pd.DataFrame(
        {
            "id": b["id"].to_numpy() if len(b) else [],
            "depth_m": walls,
            "residents": b["residents"].fillna(0).astype(float).to_numpy() if len(b) else [],
            "basement": (b["basement_floors"].fillna(0).astype(float) > 0).to_numpy()
            if len(b)
            else [],
        }
    )
    buildings["flooded"] = buildings["depth_m"] > BUILDING_FLOODED
    buildings["basement_at_risk"] = buildings["basement"] & (
        buildings["depth_m"] > BASEMENT_AT_RISK
    )
    s = store.query(Query("streets", intersects=box, columns=["name", "street_class"]))
    lengths = flooded_length(depth, r, s.geometry.to_numpy()) if len(s) else np.zeros(0)
    roads = pd.DataFrame(
        {
            "id": s["id"].to_numpy() if len(s) else [],
            "name": s["name"].to_numpy() if len(s) else [],
            "flooded_m": lengths,
        }
    )
    f = store.query(Query("facilities", intersects=box, columns=["name", "critical"]))
    at = point_depths(depth, r, f.geometry.to_numpy()) if len(f) else np.zeros(0)
    facilities = pd.DataFrame(
        {
            "id": f["id"].to_numpy() if len(f) else [],
            "class": f["class"].to_numpy() if len(f) else [],
            "name": f["name"].to_numpy() if len(f) else [],
            "depth_m": at,
        }
    )
    critical = facilities["class"].isin(CRITICAL).to_numpy(copy=True)
    if len(f) and "critical" in f:
        critical |= f["critical"].fillna(False).astype(bool).to_numpy()
    facilities["critical"] = critical
    facilities["reached"] = facilities["depth_m"] > BUILDING_FLOODED
    hz = hazard_class(result.max_hazard, result.max_depth > result.threshold)
    area = r.dx * r.dx
    wet = np.isfinite(result.first_wet)
    summary = {
        "flooded_area_m2": float(np.count_nonzero(depth > BUILDING_FLOODED) * area),
        "max_depth_m": float(np.nanmax(result.max_depth)),
        "hazard_area_m2": {
            HAZARD_CLASSES[k]: float(np.count_nonzero(hz == k) * area)
            for k in range(1, len(HAZARD_CLASSES))
        },
        "first_flooding_s": float(np.nanmin(result.first_wet)) if wet.any() else None,
        "buildings_flooded": int(buildings["flooded"].sum()),
        "basements_at_risk": int(buildings["basement_at_risk"].sum()),
        "residents_affected": int(buildings.loc[buildings["flooded"], "residents"].sum()),
        "roads_impassable": int((roads["flooded_m"] > 0).sum()),
        "impassable_length_m": float(roads["flooded_m"].sum()),
        "impassable_depth_m": IMPASSABLE,
        "critical_facilities_reached": facilities.loc[
            facilities["critical"] & facilities["reached"], ["id", "class", "name"]
        ].to_dict("records"),
        "mass_balance": result.balance.summary(),
        "steps": result.steps,
        "cells": int(np.count_nonzero(grid.domain.active)),
        "cell_updates_per_s": result.cell_updates / seconds if seconds > 0 else None,
        "seconds": seconds,
    }
    if drainage:
        summary["drainage"] = drainage
    return FloodScenario(
        sid, params, grid, result, summary, buildings, roads, facilities, seconds, drainage or {}
    )


# -- keeping and drawing ------------------------------------------------------------------------
def cog_bytes(values: np.ndarray, grid: FloodGrid, nodata: float = -9999.0) -> bytes:
    """A Cloud-Optimised GeoTIFF of a float grid (NaN written as ``nodata``)."""
    data = np.where(np.isfinite(values), values, nodata).astype("float32")
    with MemoryFile() as mem:
        with mem.open(
            driver="COG",
            width=data.shape[1],
            height=data.shape[0],
            count=1,
            dtype="float32",
            crs=grid.crs,
            transform=grid.transform,
            nodata=nodata,
            compress="deflate",
            blocksize=256,
        ) as ds:
            ds.write(data, 1)
        return mem.read()


def scenario_rasters(scenario: FloodScenario) -> dict[str, np.ndarray]:
    """The rasters a scenario keeps."""
    res = scenario.result
    hz = hazard_class(res.max_hazard, res.max_depth > res.threshold).astype(float)
    return {
        "max_depth": res.max_depth,
        "max_speed": res.max_speed,
        "hazard": hz,
        "first_wet": res.first_wet,
        "wet_duration": res.wet_duration,
    }


def save_scenario(store: Store, scenario: FloodScenario) -> str:
    """Keep the scenario in the twin: its rasters (COG) as ``flood/<id>/<name>`` and its
    summary, parameters and affected features as the document ``flood/<id>``."""
    key = SCENARIO_PREFIX + scenario.id
    with store.transaction():
        for name, values in scenario_rasters(scenario).items():
            store.put_raster(
                f"{key}/{name}",
                "other",
                cog_bytes(values, scenario.grid),
                source=f"flood scenario {scenario.id}",
            )
        doc = {
            "id": scenario.id,
            "params": scenario.params,
            "summary": scenario.summary,
            "buildings": scenario.buildings[
                scenario.buildings["flooded"] | scenario.buildings["basement_at_risk"]
            ].to_dict("records"),
            "roads": scenario.roads[scenario.roads["flooded_m"] > 0].to_dict("records"),
            "facilities": scenario.facilities[scenario.facilities["reached"]].to_dict("records"),
            "rasters": [f"{key}/{n}" for n in RASTERS],
        }
        store.put_document(key, json.loads(json.dumps(doc, default=_plain)))
    return key


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


def draw_flood(scenario: FloodScenario, png: str | Path, *, virtual: bool = False) -> Path:
    """A map of the flood: the deepest water over the terrain's hillshade, buildings, and the
    impassable roads (``virtual``: the twin is a virtual city, and the title says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LightSource

    grid, res = scenario.grid, scenario.result
    r = grid.raster
    extent = (r.x0, r.x0 + r.shape[1] * r.dx, r.y0 - r.shape[0] * r.dx, r.y0)
    fig, ax = plt.subplots(figsize=(10, 10 * r.shape[0] / max(r.shape[1], 1) + 0.8))
    z = np.where(np.isfinite(grid.domain.z), grid.domain.z, np.nanmin(grid.domain.z))
    ax.imshow(
        LightSource(315, 45).hillshade(z, vert_exag=2, dx=r.dx, dy=r.dx),
        cmap="gray",
        extent=extent,
        alpha=0.6,
    )
    depth = np.where(res.max_depth > res.threshold, res.max_depth, np.nan)
    im = ax.imshow(
        depth,
        cmap="Blues",
        vmin=0,
        vmax=max(0.5, float(np.nanpercentile(depth, 99)) if np.isfinite(depth).any() else 0.5),
        extent=extent,
    )
    ax.imshow(
        np.where(grid.domain.blocked if grid.domain.blocked is not None else False, 1.0, np.nan),
        cmap="Greys",
        vmin=0,
        vmax=1.6,
        extent=extent,
    )
    fig.colorbar(im, ax=ax, shrink=0.7, label="deepest water (m)")
    p = scenario.params
    s = scenario.summary
    storm = (
        f"{p['return_period']:g}-year {p['duration_min']:g}-min storm"
        if "return_period" in p
        else f"forecast {p.get('forecast', '')} issued {p.get('issued', '?')}"
    )
    ax.set_title(
        f"{'VIRTUAL CITY — ' if virtual else ''}{storm}"
        f" ({'coupled to the drains' if p.get('coupled') else 'surface only'}):"
        f" {s['buildings_flooded']} buildings, {s['residents_affected']} residents,"
        f" {s['impassable_length_m'] / 1000:.1f} km of road impassable",
        fontsize=9,
    )
    ax.set_xlabel("easting (m)")
    ax.set_ylabel("northing (m)")
    out = Path(png)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# -- ensembles ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One storm of an ensemble: ``return_period`` years, ``duration_min``, the peak at
    ``peak_ratio`` of the duration (the rainfall pattern)."""

    return_period: float
    duration_min: float
    peak_ratio: float = 0.4

    @property
    def label(self) -> str:
        return f"P{self.return_period:g}-D{self.duration_min:g}-r{self.peak_ratio:g}"


def members(
    return_periods: list[float], durations: list[float], peaks: list[float]
) -> list[Member]:
    """Every combination of return period, duration and peak position."""
    return [Member(p, d, r) for p in return_periods for d in durations for r in peaks]


def _member_run(
    domain: Domain, member: Member, after_min: float, solver: str
) -> tuple[Result, float]:
    """One member on a worker (the engine alone: pure, no store)."""
    import numba

    numba.set_num_threads(1)  # a worker per core: the members are the parallelism
    rain = design_storm(member.return_period, member.duration_min, peak_ratio=member.peak_ratio)
    started = time.perf_counter()
    result = simulate(domain, (member.duration_min + after_min) * 60.0, solver=solver, rain=rain)
    return result, time.perf_counter() - started


def run_ensemble(
    store: Store,
    storms: list[Member],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    after_min: float = 60.0,
    solver: str = "inertial",
    cell: float | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    save: bool = True,
    on_done: Callable[[FloodScenario, int, int], None] | None = None,
) -> list[FloodScenario]:
    """Run many storms through Dask — a local cluster (``workers`` processes, default one per
    core) or the ``scheduler`` at an address — each member's result assessed and (``save``)
    kept in the twin as it comes in; ``on_done(scenario, done, total)`` hears each."""
    import os

    from dask.distributed import Client, LocalCluster, as_completed

    if not storms:
        raise InvalidInput("an ensemble needs at least one storm")
    grid = flood_grid(store, cell=cell, bounds=bounds)
    cluster = None
    if scheduler is None:
        n = workers or max(1, os.cpu_count() or 1)
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
        )
    out: list[FloodScenario] = []
    try:
        with Client(scheduler or cluster) as client:
            domain = client.scatter(grid.domain, broadcast=True)
            futures = {
                client.submit(_member_run, domain, m, after_min, solver, pure=False): m
                for m in storms
            }
            for future in as_completed(futures):
                m = futures[future]
                result, took = future.result()
                params = {
                    "return_period": m.return_period,
                    "duration_min": m.duration_min,
                    "peak_ratio": m.peak_ratio,
                    "after_min": after_min,
                    "solver": solver,
                    "cell": grid.raster.dx,
                    "coupled": False,
                    "ensemble": m.label,
                    "bounds": list(bounds) if bounds else None,
                }
                sid = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{m.label}"
                scenario = assess(store, sid, params, grid, result, took)
                if save:
                    save_scenario(store, scenario)
                out.append(scenario)
                if on_done is not None:
                    on_done(scenario, len(out), len(storms))
    finally:
        if cluster is not None:
            cluster.close()
    return out


# -- kept scenarios (for the services and the console) ------------------------------------------
AFFECTED = {"building": "buildings", "road": "streets", "facility": "facilities"}
"""The layer of each kind of feature a kept scenario reaches."""
_LISTS = {"building": "buildings", "road": "roads", "facility": "facilities"}
AFFECTED_COLUMNS = [
    "id", "kind", "class", "name", "depth_m", "flooded_m", "residents", "flooded",
    "basement_at_risk", "critical",
]  # fmt: skip


def kept_scenarios(store: Store) -> dict[str, dict[str, Any]]:
    """The scenarios kept in the twin (``save_scenario``), by id, oldest first."""
    docs = store.get_documents(SCENARIO_PREFIX)
    return {
        key[len(SCENARIO_PREFIX) :]: doc
        for key, doc in sorted(docs.items())
        if key.count("/") == 1 and isinstance(doc, dict) and "summary" in doc
    }


def kept_scenario(store: Store, sid: str) -> dict[str, Any]:
    """The kept scenario ``sid`` (its document); ``NotFound`` when there is none."""
    doc = store.get_document(SCENARIO_PREFIX + sid) if sid and "/" not in sid else None
    if not isinstance(doc, dict) or "summary" not in doc:
        raise NotFound(
            f"no flood scenario {sid!r}", hint="GET /flood/scenarios lists the kept scenarios"
        )
    return doc


def affected_features(store: Store, doc: dict[str, Any]) -> Any:
    """What a kept scenario's flood reaches as a GeoDataFrame in the twin's CRS
    (``AFFECTED_COLUMNS``): per building, road and facility of its document its ``kind``,
    class, name, deepest water (``depth_m``: at a building's walls, at a facility), impassable
    length (``flooded_m``, roads), residents, whether it counts as flooded (a building above
    the sill, an impassable road, a facility reached), basement at risk, critical; geometries
    from the twin (features retired since are left out)."""
    import geopandas as gpd

    parts = []
    for kind, layer_name in AFFECTED.items():
        rows = pd.DataFrame(doc.get(_LISTS[kind]) or [])
        if not len(rows):
            continue
        rows["id"] = rows["id"].astype(str)
        found = store.query(Query(layer_name, ids=list(rows["id"]), columns=["name"]))
        found = pd.DataFrame(found[["id", "class", "name", "geometry"]]).rename(
            columns={"class": "layer_class", "name": "layer_name"}
        )
        rows = rows.merge(found, on="id", how="inner")
        rows["class"] = rows["class"] if "class" in rows else rows["layer_class"]
        rows["name"] = rows["name"] if "name" in rows else rows["layer_name"]
        rows["name"] = rows["name"].where(rows["name"].notna(), rows["layer_name"])
        rows["kind"] = kind
        if kind == "building":
            rows["flooded"] = rows["flooded"].astype(bool)
        elif kind == "road":
            rows["flooded"] = rows["flooded_m"].astype(float) > 0
        else:
            rows["flooded"] = rows["reached"].astype(bool)
        parts.append(rows.reindex(columns=[*AFFECTED_COLUMNS, "geometry"]))
    frame = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame({c: [] for c in [*AFFECTED_COLUMNS, "geometry"]})
    )
    for c in ("flooded", "basement_at_risk", "critical"):  # yes, no, or not asked (None)
        frame[c] = pd.Series(
            [None if v is None or v is pd.NA or v != v else bool(v) for v in frame[c]],
            index=frame.index,
            dtype=object,
        )
    for c in ("depth_m", "flooded_m", "residents"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=store.meta.crs)


def grid_shape(
    store: Store, *, cell: float, bounds: tuple[float, float, float, float] | None = None
) -> tuple[int, int]:
    """The (rows, columns) of the grid ``flood_grid`` makes for ``cell`` and ``bounds``,
    without making it (to refuse a run too large before it starts); ``InvalidInput`` as
    ``flood_grid`` for a twin without terrain or bounds that miss it."""
    with open_raster(_dem_bytes(store)) as ds:
        return _grid_window(ds, cell, bounds)[2]


def _dem_bytes(store: Store) -> bytes:
    try:
        return store.get_raster("dem")
    except (KeyError, NotFound):
        raise InvalidInput(
            "the twin has no terrain model (raster 'dem')", hint="citytwin import a GeoTIFF DEM"
        ) from None


def _grid_window(
    ds: Any, cell: float | None, bounds: tuple[float, float, float, float] | None
) -> tuple[tuple[float, float, float, float], float, tuple[int, int]]:
    """The flood grid over the DEM ``ds``: its (west, south, east, north) — the DEM's, cut to
    ``bounds`` —, its cell (``cell``, default the DEM's) and its (rows, columns)."""
    t = ds.transform
    left, top = t.c, t.f
    right, bottom = left + t.a * ds.width, top + t.e * ds.height
    x0, y1, x1, y0 = left, bottom, right, top
    if bounds is not None:
        x0, y1 = max(x0, bounds[0]), max(y1, bounds[1])
        x1, y0 = min(x1, bounds[2]), min(y0, bounds[3])
        if x1 <= x0 or y0 <= y1:
            raise InvalidInput(
                "the bounds miss the terrain model", hint=f"it covers {left, bottom, right, top}"
            )
    dx = float(cell or abs(t.a))
    if not dx > 0:
        raise InvalidInput("the cell size must be > 0 m")
    return (x0, y1, x1, y0), dx, (max(2, round((y0 - y1) / dx)), max(2, round((x1 - x0) / dx)))

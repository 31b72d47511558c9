"""The virtual city as model features: what ``synth`` writes into a twin, through the normal
import path (validated frames, one transaction)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pandas as pd

from citytwin.formats.base import ImportBundle, Raster, load_bundle
from citytwin.formats.raster import grid_geotiff
from citytwin.model import TwinMeta
from citytwin.store import Store, create_store
from citytwin.synth.layout import CRS, CityLayout, plan_layout

IMPERVIOUS = {"cbd": 95.0, "old_town": 90.0, "residential": 70.0, "industrial": 85.0, "park": 15.0}
"""Impervious share (%) of a block by land use (typical values for dense Chinese cities)."""

SOURCE = "citytwin.synth (virtual city)"


def layout_bundle(layout: CityLayout) -> ImportBundle:
    """The layout's layers as an import bundle: buildings, streets, river, zones, facilities,
    and the DEM."""
    bundle = ImportBundle(f"{SOURCE} seed={layout.seed} area={layout.area_km2:g} km2")
    b = layout.buildings
    bundle.add(
        "buildings",
        b.drop(columns=["block", "district_use"]).assign(
            props=[
                {"block": f"block-{k:06d}", "district": u}
                for k, u in zip(b["block"], b["district_use"], strict=True)
            ]
        ),
    )
    s = layout.streets
    bundle.add(
        "streets",
        gpd.GeoDataFrame(
            {
                "id": [f"street-{i:06d}" for i in range(len(s.edges))],
                "class": "road",
                "street_class": s.street_class,
                "width": s.width,
                "bridge": s.bridge,
                "name": s.name,
                "props": [{"from": int(a), "to": int(c)} for a, c in s.edges],
            },
            geometry=s.lines(),
            crs=CRS,
        ),
    )
    bundle.add(
        "water_bodies",
        gpd.GeoDataFrame(
            {
                "id": ["river-1"],
                "class": "river",
                "name": "Virtual Pearl River",
                "water_level": layout.river.water_level,
                "props": [{"width": layout.river.width, "bed_level": layout.river.bed_level}],
            },
            geometry=[layout.river.channel],
            crs=CRS,
        ),
    )
    blocks = layout.blocks
    land = gpd.GeoDataFrame(
        {
            "id": [f"block-{k:06d}" for k in blocks["block"]],
            "class": "land_use",
            "land_use": blocks["land_use"],
            "imperviousness": blocks["land_use"].map(IMPERVIOUS),
            "area": blocks.geometry.area,
        },
        geometry=blocks.geometry.to_numpy(),
        crs=CRS,
    )
    bundle.add(
        "zones", gpd.GeoDataFrame(pd.concat([layout.districts, land], ignore_index=True), crs=CRS)
    )
    bundle.add("facilities", layout.facilities)
    t = layout.terrain
    bundle.rasters.append(Raster("dem", "dem", grid_geotiff(t.dem, CRS, t.x0, t.y0, t.cell)))
    return bundle


def twin_meta(layout: CityLayout, name: str | None = None) -> TwinMeta:
    """Metadata of a virtual twin: clearly labelled as generated."""
    return TwinMeta(
        name or f"virtual-city-{layout.seed}",
        CRS,
        layout.extent,
        virtual=True,
        description=(
            f"VIRTUAL CITY (generated, not real data): {layout.area_km2:g} km2, "
            f"seed {layout.seed}, modelled on a Pearl River Delta district"
        ),
    )


def build_city(
    path: str | Path,
    area_km2: float = 4.0,
    seed: int = 1,
    *,
    name: str | None = None,
    valid_from: dt.datetime | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> Store:
    """Generate a virtual city and write it into a new twin at ``path``; returns the store.

    ``on_step(what, done, total)`` hears of each step (layout, networks, writing)."""
    steps = ["laying out terrain, streets and buildings", "writing the twin"]
    report = on_step or (lambda _w, _d, _t: None)
    report(steps[0], 0, len(steps))
    layout = plan_layout(area_km2, seed)
    bundle = layout_bundle(layout)
    report(steps[1], 1, len(steps))
    store = create_store(path, twin_meta(layout, name))
    try:
        load_bundle(store, bundle, valid_from=valid_from or dt.datetime(2020, 1, 1))
    except BaseException:
        store.close()
        raise
    report("done", len(steps), len(steps))
    return store


__all__ = ["IMPERVIOUS", "build_city", "layout_bundle", "twin_meta"]

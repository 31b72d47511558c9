"""The virtual city as model features: what ``synth`` writes into a twin, through the normal
import path (validated frames, one transaction)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd

from citytwin.formats.base import ImportBundle, Raster, load_bundle
from citytwin.formats.raster import grid_geotiff
from citytwin.model import TwinMeta
from citytwin.networks.clearance import CLEARANCE_RULES_DOCUMENT, read_rule_file
from citytwin.store import Store, create_store
from citytwin.synth.corridors import VIRTUAL_CITY_RULES
from citytwin.synth.drainage import DrainagePlan, drainage_bundle, plan_drainage
from citytwin.synth.layout import CRS, IMPERVIOUS, SOURCE, CityLayout, plan_layout
from citytwin.synth.sensors import plan_sensors
from citytwin.synth.utilities import UtilityPlan, plan_utilities, utilities_bundle
from citytwin.synth.water import WaterPlan, plan_water, water_bundle


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
    if len(layout.creeks):  # the creeks, reach by reach (each with its normal water level)
        bundle.add(
            "water_bodies",
            layout.creeks[["id", "class", "name", "water_level", "props", "geometry"]],
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


@dataclass
class VirtualCity:
    """A generated city: its layout, the plans of its networks, and their bundles."""

    layout: CityLayout
    water: WaterPlan
    drainage: DrainagePlan
    utilities: UtilityPlan
    bundles: list[ImportBundle]


OWNERS = {
    "water_supply": "Virtual Water Supply Co.",
    "sewer": "Virtual Drainage Co.",
    "storm": "Virtual Drainage Co.",
    "combined": "Virtual Drainage Co.",
    "gas": "Virtual Gas Co.",
    "power": "Virtual Power Grid Co.",
    "telecom": "Virtual Telecom Co.",
    "heating": "Virtual District Cooling Co.",
}
"""The (made-up) utility that owns each network of the virtual city."""

STEPS = (
    "terrain, streets and buildings",
    "water supply",
    "drainage",
    "gas, power, telecom",
    "sensors",
)


def plan_city(
    area_km2: float = 4.0, seed: int = 1, on_step: Callable[[str, int, int], None] | None = None
) -> VirtualCity:
    """Generate a virtual city: layout, networks and sensors, as import bundles (no I/O)."""
    report = on_step or (lambda _w, _d, _t: None)
    total = len(STEPS) + 1
    report(STEPS[0], 0, total)
    layout = plan_layout(area_km2, seed)
    report(STEPS[1], 1, total)
    water = plan_water(layout, seed)
    water_layers = water_bundle(layout, water)
    report(STEPS[2], 2, total)
    # the sewers keep clear of the water mains (in plan and where they cross)
    drainage = plan_drainage(layout, seed, water=water_layers.layers["utility_links"])
    report(STEPS[3], 3, total)
    utilities = plan_utilities(layout, seed)
    report(STEPS[4], 4, total)
    bundles = [
        layout_bundle(layout),
        water_layers,
        drainage_bundle(layout, drainage),
        utilities_bundle(layout, utilities),
    ]
    # the city's own clearance rules, kept in the twin for its clearance checks
    bundles[0].documents[CLEARANCE_RULES_DOCUMENT] = read_rule_file(VIRTUAL_CITY_RULES)
    for bundle in bundles[1:]:
        for name in ("utility_nodes", "utility_links"):
            frame = bundle.layers[name]
            bundle.layers[name] = frame.assign(owner=frame["network"].map(OWNERS))
    nodes = pd.concat([b.layers["utility_nodes"] for b in bundles[1:]], ignore_index=True)
    links = pd.concat([b.layers["utility_links"] for b in bundles[1:]], ignore_index=True)
    networks = {}
    for network in nodes["network"].unique():
        networks[f"{network}_nodes"] = nodes[nodes["network"] == network]
        networks[f"{network}_links"] = links[links["network"] == network]
    sensors = ImportBundle(f"{SOURCE} sensors seed={seed}")
    sensors.add("devices", plan_sensors(layout, networks))
    bundles.append(sensors)
    return VirtualCity(layout, water, drainage, utilities, bundles)


def build_city(
    path: str | Path,
    area_km2: float = 4.0,
    seed: int = 1,
    *,
    name: str | None = None,
    valid_from: dt.datetime | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> Store:
    """Generate a virtual city and write it into a new twin at ``path`` (one transaction);
    returns the open store. ``on_step(what, done, total)`` hears of each step."""
    city = plan_city(area_km2, seed, on_step)
    if on_step:
        on_step("writing the twin", len(STEPS), len(STEPS) + 1)
    store = write_city(path, city, name=name, valid_from=valid_from)
    if on_step:
        on_step("done", len(STEPS) + 1, len(STEPS) + 1)
    return store


def write_city(
    path: str | Path,
    city: VirtualCity,
    *,
    name: str | None = None,
    valid_from: dt.datetime | None = None,
) -> Store:
    """Write a planned city into a new twin at ``path`` in one transaction; returns the
    open store (closed again if the write fails)."""
    store = create_store(path, twin_meta(city.layout, name))
    try:
        with store.transaction():
            for bundle in city.bundles:
                load_bundle(store, bundle, valid_from=valid_from or dt.datetime(2020, 1, 1))
    except BaseException:
        store.close()
        raise
    return store


__all__ = [
    "IMPERVIOUS",
    "OWNERS",
    "STEPS",
    "VirtualCity",
    "build_city",
    "layout_bundle",
    "plan_city",
    "twin_meta",
    "write_city",
]

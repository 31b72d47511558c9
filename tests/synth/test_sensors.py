"""Sensors of the virtual city: on the assets they watch, in the numbers the utilities call for.

The water and drainage networks are built elsewhere; here they are stood in for by small
frames laid on the same layout (junctions and DMA meters on the water corridor, manholes and
outfalls on the storm corridor), next to the real gas and power networks."""

from __future__ import annotations

from functools import cache

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.formats.base import ImportBundle, load_bundle
from citytwin.model import validate_frame
from citytwin.store import Query
from citytwin.synth.city import layout_bundle
from citytwin.synth.corridors import corridor_nodes
from citytwin.synth.layout import CRS, plan_layout
from citytwin.synth.sensors import (
    HOUSEHOLD_SIZE,
    HOUSEHOLDS_PER_METER,
    RIVER_ID,
    TOWER_FLOORS,
    critical_points,
    meters_per_building,
    plan_sensors,
)
from citytwin.synth.utilities import plan_utilities, utilities_bundle


def _water(layout) -> gpd.GeoDataFrame:
    """Junctions at the water corridor nodes in four DMAs (quadrants), a DMA inlet meter in
    each, a source at the treatment plant and a tank on the highest node. Every third junction
    and the highest of each DMA (a hilltop) serve no one (``base_demand`` 0)."""
    xy = corridor_nodes(layout.streets, "water_supply")
    mid = np.array(layout.origin) + layout.side / 2
    zone = np.array([f"dma-{k}" for k in (xy[:, 0] > mid[0]) * 2 + (xy[:, 1] > mid[1])])
    ground = layout.terrain.sample(xy)
    demand = np.where(np.arange(len(xy)) % 3 == 0, 0.0, 0.002)
    for z in np.unique(zone):
        demand[np.flatnonzero(zone == z)[np.argmax(ground[zone == z])]] = 0.0
    ids = [f"ws:J{i:05d}" for i in range(len(xy))]
    first = [int(np.flatnonzero(zone == z)[0]) for z in np.unique(zone)]
    plant = layout.facilities[layout.facilities["class"] == "water_treatment_plant"]
    top = int(np.argmax(ground))
    frame = gpd.GeoDataFrame(
        {
            "id": ids + [f"ws:M{i:05d}" for i in first] + ["ws:R1", "ws:T1"],
            "class": ["junction"] * len(xy) + ["meter"] * len(first) + ["reservoir", "tank"],
            "network": "water_supply",
            "zone_id": list(zone) + list(zone[first]) + [None, None],
            "elevation": list(ground - 1.5) + list(ground[first] - 1.5) + [5.0, ground[top] + 30],
            "base_demand": list(demand) + [None] * (len(first) + 2),
        },
        geometry=list(shapely.points(xy))
        + list(shapely.points(xy[first] + 1.0))
        + [plant.geometry.iloc[0].centroid, shapely.Point(xy[top] + 20.0)],
        crs=CRS,
    )
    return frame


def _storm(layout) -> gpd.GeoDataFrame:
    """Manholes at the storm corridor nodes and an outfall at the bank beside each of the
    three nodes nearest the river."""
    xy = corridor_nodes(layout.streets, "storm")
    river = layout.river.channel
    near = np.argsort(shapely.distance(shapely.points(xy), river))[:3]
    bank = shapely.get_coordinates(shapely.shortest_line(shapely.points(xy[near]), river))[1::2]
    return gpd.GeoDataFrame(
        {
            "id": [f"st:MH{i:05d}" for i in range(len(xy))] + [f"st:O{i}" for i in range(3)],
            "class": ["manhole"] * len(xy) + ["outfall"] * 3,
            "network": "storm",
        },
        geometry=list(shapely.points(xy)) + list(shapely.points(bank)),
        crs=CRS,
    )


@cache
def _city(seed: int):
    layout = plan_layout(4.0, seed)
    plan = plan_utilities(layout, seed)
    networks = {
        "water_supply_nodes": _water(layout),
        "storm_nodes": _storm(layout),
        **plan.frames(),
    }
    return layout, plan, networks, plan_sensors(layout, networks)


@pytest.fixture(params=[1, 2], ids=["seed1", "seed2"])
def city(request):
    return _city(request.param)


def test_devices_are_valid_and_reference_existing_features(city):
    layout, _, networks, devices = city
    frame = validate_frame("devices", devices)
    assert frame["id"].str.startswith("dev:").all()
    assert frame["model"].notna().all()
    known = {RIVER_ID, *layout.buildings["id"], *layout.facilities["id"]}
    for nodes in networks.values():
        known |= set(nodes["id"])
    assert devices["feature_id"].isin(known).all()
    assert set(devices["class"]) == {
        "water_meter",
        "flow_meter",
        "pressure_sensor",
        "level_sensor",
        "rain_gauge",
        "gas_detector",
    }
    # every device sits on (or within a metre of) the asset it watches
    assets = {
        **dict(zip(layout.buildings["id"], layout.buildings.geometry, strict=True)),
        **dict(zip(layout.facilities["id"], layout.facilities.geometry, strict=True)),
        RIVER_ID: layout.river.channel,
    }
    for nodes in networks.values():
        assets.update(zip(nodes["id"], nodes.geometry, strict=True))
    d = shapely.distance(
        devices.geometry.to_numpy(),
        np.array([assets[f] for f in devices["feature_id"]], dtype=object),
    )
    assert d.max() <= 1.0


def test_water_meters_count_households(city):
    layout, _, _, devices = city
    b = layout.buildings
    meters = devices[devices["class"] == "water_meter"]
    assert (meters["network"] == "water_supply").all()
    per = meters["feature_id"].value_counts().reindex(b["id"]).to_numpy()
    households = np.ceil(b["residents"].to_numpy() / HOUSEHOLD_SIZE)
    tower = b["floors"].to_numpy() >= TOWER_FLOORS
    assert (per[~tower] == 1).all()  # every building has a meter; low ones one
    homes = tower & (households > 0)
    assert (per[homes] == np.ceil(households[homes] / HOUSEHOLDS_PER_METER)).all()
    assert per[homes].max() > 20  # many on a tower
    # meters grow with households: tower meters are a quarter of the tower households
    assert per[homes].sum() == pytest.approx(
        households[homes].sum() / HOUSEHOLDS_PER_METER, rel=0.05
    )
    assert np.corrcoef(per[homes], households[homes])[0, 1] > 0.99
    assert (meters_per_building(layout) == per).all()


def test_level_pressure_flow_rain_and_gas_where_the_networks_call_for_them(city):
    layout, plan, networks, devices = city
    by = devices.groupby("class")
    level = by.get_group("level_sensor")
    storm = networks["storm_nodes"]
    manholes = set(storm[storm["class"] == "manhole"]["id"])
    sampled = level["feature_id"].isin(manholes).sum()
    assert sampled == -(-len(manholes) // 10)
    assert set(storm[storm["class"] == "outfall"]["id"]) <= set(level["feature_id"])
    river = level[level["feature_id"] == RIVER_ID]
    assert len(river) == 2
    assert river.geometry.intersects(layout.river.channel).all()
    water = networks["water_supply_nodes"]
    tanks = set(water[water["class"] == "tank"]["id"])
    assert tanks <= set(level["feature_id"])
    inlets = set(water[water["class"].isin(["meter", "reservoir"])]["id"])
    flow = by.get_group("flow_meter")
    assert set(flow["feature_id"]) == inlets
    pressure = set(by.get_group("pressure_sensor")["feature_id"])
    junctions = water[water["class"] == "junction"]
    served = junctions[junctions["base_demand"] > 0]
    critical = served.loc[served.groupby("zone_id")["elevation"].idxmax(), "id"]
    hilltops = junctions.loc[junctions.groupby("zone_id")["elevation"].idxmax(), "id"]
    # inlets and each DMA's highest junction with customers, not its empty hilltop
    assert pressure == inlets | set(critical) and not pressure & set(hilltops)
    rain = by.get_group("rain_gauge")
    assert len(rain) == round(layout.area_km2 / 2)
    fac = layout.facilities.set_index("id")
    assert fac.loc[rain["feature_id"], "class"].isin(["school", "hospital", "fire_station"]).all()
    gas = by.get_group("gas_detector")
    regulators = plan.nodes[plan.nodes["class"] == "regulator"]
    assert sorted(gas["feature_id"]) == sorted(regulators["id"])
    assert (gas["network"] == "gas").all()


def test_critical_points_are_the_highest_junctions_with_customers():
    j = pd.DataFrame(
        {
            "id": ["a1", "a2", "a3", "b1", "b2", "s1", "c1"],
            "zone_id": ["A", "A", "A", "B", "B", None, "C"],
            "elevation": [30.0, 20.0, 25.0, 10.0, 12.0, 99.0, np.nan],
            "base_demand": [0.0, 0.001, 0.002, 0.0, np.nan, 0.5, 0.1],
        }
    )
    # A: a3 (a1 is higher, nobody draws from it); B: nobody draws, its highest; the station
    # node s1 is in no DMA; c1 has no elevation
    assert critical_points(j)["id"].tolist() == ["a3", "b2"]
    assert critical_points(j.drop(columns="base_demand"))["id"].tolist() == ["a1", "b2"]
    no_zones = j.drop(columns="zone_id")  # a network without DMAs: one zone
    assert critical_points(no_zones)["id"].tolist() == ["s1"]
    assert critical_points(j.drop(columns="elevation")).empty


def test_a_network_left_out_gets_no_devices():
    layout, plan, _, _ = _city(1)
    devices = plan_sensors(layout, {"gas_nodes": plan.frames()["gas_nodes"]})
    assert set(devices["class"]) == {"water_meter", "level_sensor", "rain_gauge", "gas_detector"}
    assert (devices[devices["class"] == "level_sensor"]["feature_id"] == RIVER_ID).all()


def test_devices_load_into_the_twin_beside_what_they_watch(make_twin):
    layout, plan, _, _ = _city(1)
    devices = plan_sensors(layout, plan.frames())
    store = make_twin("EPSG:4547", extent=layout.extent)
    load_bundle(store, layout_bundle(layout))
    load_bundle(store, utilities_bundle(layout, plan))
    bundle = ImportBundle("sensors")
    bundle.add("devices", devices)
    assert load_bundle(store, bundle) == {"devices": len(devices)}
    stored = store.query(Query("devices"))
    assert len(stored) == len(devices)
    ids = set()
    for layer in ("buildings", "facilities", "water_bodies", "utility_nodes"):
        ids |= set(store.query(Query(layer))["id"])
    assert stored["feature_id"].isin(ids).all()

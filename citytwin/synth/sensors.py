"""Sensors of the virtual city, where the utilities put them.

``plan_sensors`` returns a ``devices`` frame: smart water meters on every building (many on a
tower), level gauges in a sample of storm and combined manholes, at every outfall and pumping
wet well and on the river's bridges, rain gauges on public roofs, pressure and flow at the
water network's sources and district metered area (DMA) inlets and pressure at each DMA's
critical point (its highest junction with customers: ``critical_points``), level in the
service reservoirs, gas detectors at every gas regulator. Each device sits at (or on) the
asset it watches and names it in ``feature_id``. Everything is vectorised: a tower city of
100 km² gets a few hundred thousand meters.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from citytwin.synth.layout import CityLayout, spread_out

HOUSEHOLD_SIZE = 2.6  # people per household (Guangzhou, 2020 census: about 2.5)
HOUSEHOLDS_PER_METER = 4  # a tower's smart meters: one per ~4 households (per floor cabinet)
TOWER_FLOORS = 10  # buildings of this many floors or more are towers
MANHOLE_SAMPLE = 10  # a level gauge in about one of this many storm / combined manholes
RAIN_GAUGE_KM2 = 2.0  # a rain gauge per this many km²
RIVER_ID = "river-1"  # the river's feature id (``citytwin.synth.city.layout_bundle``)

_MODELS = {
    "water_meter": "DN20 ultrasonic smart water meter, NB-IoT",
    "flow_meter": "electromagnetic flow meter",
    "pressure_sensor": "piezoresistive pressure transmitter 0-1 MPa",
    "level_sensor": "radar level sensor",
    "rain_gauge": "tipping-bucket rain gauge 0.1 mm",
    "gas_detector": "infrared methane detector",
}


def plan_sensors(layout: CityLayout, networks: dict[str, gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """The devices of a virtual city (layer ``devices``, ids ``dev:...``).

    ``networks`` holds the utility frames by network, keyed ``<network>_nodes`` (layer
    ``utility_nodes`` frames: ``id``, ``class``, ``network``, point geometry, and for water
    ``zone_id``, ``elevation`` and ``base_demand``), e.g. ``water_supply_nodes``,
    ``storm_nodes``, ``combined_nodes``, ``sewer_nodes``, ``gas_nodes``; ``<network>_links``
    frames may be there too and are not needed. A network that is missing gets no devices.
    Read from them: water ``meter`` nodes are DMA inlets; ``reservoir`` and ``pumping_station``
    nodes sources; ``tank`` nodes service reservoirs; ``junction`` nodes, grouped by
    ``zone_id``, give each DMA's critical point (the highest with customers:
    ``critical_points``); gravity ``manhole``, ``outfall`` and ``pumping_station`` nodes and
    ``storage`` nodes (the stations' wet wells), gas ``regulator`` nodes.
    """
    parts = [_water_meters(layout)]
    water = networks.get("water_supply_nodes")
    if water is not None and len(water):
        parts.append(_water_network(water))
    rng = np.random.default_rng([layout.seed, 5])
    for net in ("storm", "combined", "sewer"):
        nodes = networks.get(f"{net}_nodes")
        if nodes is None or len(nodes) == 0:
            continue
        cls = nodes["class"].to_numpy(object)
        manholes = np.flatnonzero(cls == "manhole") if net != "sewer" else np.array([], int)
        pick = np.sort(rng.choice(manholes, -(-len(manholes) // MANHOLE_SAMPLE), replace=False))
        wells = np.flatnonzero(np.isin(cls, ["outfall", "pumping_station", "storage"]))
        parts.append(_at(nodes.iloc[np.concatenate([pick, wells])], "level_sensor", "lv"))
    gas = networks.get("gas_nodes")
    if gas is not None and len(gas):
        parts.append(_at(gas[gas["class"] == "regulator"], "gas_detector", "gd"))
    parts += [_river_gauges(layout), _rain_gauges(layout, rng)]
    frame = pd.concat(parts, ignore_index=True)
    frame["model"] = frame["class"].map(_MODELS)
    frame["id"] = _numbered(frame["id"].to_numpy(object))
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=layout.crs)


def meters_per_building(layout: CityLayout) -> np.ndarray:
    """Smart water meters on each building (layout order): one on a low building, one per
    ``HOUSEHOLDS_PER_METER`` households (or, without residents, per as many floors) on a
    tower."""
    b = layout.buildings
    floors = b["floors"].to_numpy(dtype=float)
    households = np.ceil(b["residents"].to_numpy(dtype=float) / HOUSEHOLD_SIZE)
    units = np.where(households > 0, households, floors)
    return np.where(
        floors >= TOWER_FLOORS, np.maximum(1, np.ceil(units / HOUSEHOLDS_PER_METER)), 1
    ).astype(int)


def _water_meters(layout: CityLayout) -> pd.DataFrame:
    b = layout.buildings
    n = meters_per_building(layout)
    which = np.repeat(np.arange(len(b)), n)
    k = np.arange(len(which)) - np.repeat(np.cumsum(n) - n, n)
    at = shapely.get_coordinates(shapely.point_on_surface(b.geometry.to_numpy()))
    ids = b["id"].to_numpy(object)
    return pd.DataFrame(
        {
            "id": [f"dev:wm:{i:07d}-{j:03d}" for i, j in zip(which, k, strict=True)],
            "class": "water_meter",
            "feature_id": ids[which],
            "network": "water_supply",
            "geometry": shapely.points(at[which]),
        }
    )


def _at(nodes: gpd.GeoDataFrame, cls: str, tag: str) -> pd.DataFrame:
    """One device of class ``cls`` on each node (ids numbered later)."""
    return pd.DataFrame(
        {
            "id": f"dev:{tag}:",
            "class": cls,
            "feature_id": nodes["id"].to_numpy(object),
            "network": nodes["network"].to_numpy(object),
            "geometry": nodes.geometry.to_numpy(),
        }
    )


def _water_network(nodes: gpd.GeoDataFrame) -> pd.DataFrame:
    cls = nodes["class"].to_numpy(object)
    inlets = nodes[np.isin(cls, ["meter", "reservoir", "pumping_station"])]
    return pd.concat(
        [
            _at(inlets, "flow_meter", "fm"),
            _at(inlets, "pressure_sensor", "ps"),
            _at(critical_points(nodes[cls == "junction"]), "pressure_sensor", "ps"),
            _at(nodes[cls == "tank"], "level_sensor", "lv"),
        ],
        ignore_index=True,
    )


def critical_points(junctions: pd.DataFrame) -> pd.DataFrame:
    """Each DMA's critical point: its highest junction with customers (``base_demand`` > 0),
    where the service pressure is least. A hilltop junction nobody draws from is no one's
    service pressure; a DMA without demand data (no ``base_demand`` column, or no junction
    with demand) gets its highest junction. DMAs are the junctions' ``zone_id``; junctions
    without one are in no DMA (a station's node) unless none has one (then they are all one);
    junctions without an elevation are left out; ties go to the first. In the zones' order."""
    if "elevation" not in junctions:
        return junctions.iloc[:0]
    elevation = pd.to_numeric(junctions["elevation"], errors="coerce").to_numpy(float)
    zone = junctions.get("zone_id")
    zone = np.full(len(junctions), None, object) if zone is None else zone.to_numpy(object)
    zoned = pd.notna(zone)
    keep = np.isfinite(elevation) & (zoned if zoned.any() else True)
    known = np.flatnonzero(keep)
    if not len(known):
        return junctions.iloc[:0]
    zone = np.array([str(z) if zoned.any() else "" for z in zone[known]], dtype=object)
    demand = junctions.get("base_demand")
    served = (
        np.ones(len(known), bool)
        if demand is None
        else (pd.to_numeric(demand, errors="coerce").to_numpy(float)[known] > 0)
    )
    # by zone, junctions with customers first, highest first (stable: ties keep their order)
    order = np.lexsort((-elevation[known], ~served, zone))
    z = zone[order]
    return junctions.iloc[known[order[np.r_[True, z[1:] != z[:-1]]]]]


def _river_gauges(layout: CityLayout) -> pd.DataFrame:
    """Two gauges (three on a city wider than 3 km) on bridges spread along the river, or on
    its centre line where there are too few bridges."""
    n = 2 if layout.side < 3000 else 3
    s = layout.streets
    bridges = np.flatnonzero(s.bridge & shapely.intersects(s.lines(), layout.river.channel))
    if len(bridges) >= n:
        lines = s.lines()[bridges]
        mid = shapely.line_interpolate_point(lines, 0.5, normalized=True)
        order = np.argsort(shapely.get_x(mid))
        pick = order[np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))]
        points = mid[pick]
        props = [{"bridge": f"street-{e:06d}"} for e in bridges[pick]]
    else:
        x0, y0, x1, y1 = layout.extent
        line = shapely.intersection(layout.river.centerline, shapely.box(x0, y0, x1, y1))
        points = shapely.line_interpolate_point(line, np.linspace(0.2, 0.8, n), normalized=True)
        props = [{} for _ in range(n)]
    return pd.DataFrame(
        {
            "id": "dev:lv:",
            "class": "level_sensor",
            "name": [f"River gauge {k + 1}" for k in range(len(points))],
            "feature_id": RIVER_ID,
            "geometry": points,
            "props": props,
        }
    )


def _rain_gauges(layout: CityLayout, rng: np.random.Generator) -> pd.DataFrame:
    """About one per ``RAIN_GAUGE_KM2``, on the roofs of schools, hospitals and fire stations
    spread over the city."""
    f = layout.facilities
    f = f[f["class"].isin(["school", "hospital", "fire_station"])]
    at = shapely.point_on_surface(f.geometry.to_numpy())
    n = max(1, round(layout.area_km2 / RAIN_GAUGE_KM2))
    pick = np.sort(spread_out(shapely.get_coordinates(at), n, rng))
    return pd.DataFrame(
        {
            "id": "dev:rg:",
            "class": "rain_gauge",
            "name": [f"Rain gauge {k + 1}" for k in range(len(pick))],
            "feature_id": f["id"].to_numpy(object)[pick],
            "geometry": at[pick],
        }
    )


def _numbered(ids: np.ndarray) -> np.ndarray:
    """Prefixes ending in ':' numbered in order within their prefix; full ids kept."""
    s = pd.Series(ids)
    open_ = s.str.endswith(":").to_numpy()
    k = s[open_].groupby(s[open_]).cumcount().to_numpy() + 1
    out = ids.copy()
    out[open_] = [f"{p}{i:06d}" for p, i in zip(ids[open_], k, strict=True)]
    return out

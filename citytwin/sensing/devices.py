"""From devices to datastreams: what each class of device measures, and how its datastreams are
tagged for the rule engine (``citytwin/warning/data/virtual_city_rules.yaml``).

    frame = plan_datastreams(devices, assets=nodes, zones=zones)   # then Store.provision(frame)

Per device class (layer ``devices``), by the class of the asset it is attached to
(``feature_id``, looked up in ``assets``):

=================  ====================  =====  ==========================================
device             observed property     unit   tags (asset class)
=================  ====================  =====  ==========================================
water_meter        water_volume          m3     smart_meter
flow_meter         flow                  m3/h   dma_inlet (meter), source (reservoir,
                                                pumping_station)
pressure_sensor    pressure              MPa    dma_inlet, source, dma_critical (junction)
level_sensor       depth_below_cover     m      manhole (manhole)
level_sensor       water_level           m      tank, outfall, wet_well (pumping_station,
                                                storage), river (river, canal, lake ...)
rain_gauge         rain_intensity        mm/h
gas_detector       gas_concentration     %LEL
water_quality      free_chlorine, turbidity
=================  ====================  =====  ==========================================

``group``: each rain gauge and the manhole gauges nearest to it share ``rain:<gauge id>``
(the composite surcharge rule's rain zone). ``zone``: the asset's ``zone_id`` where it has
one, otherwise the zone containing the device (a DMA for water, a subcatchment or catchment
for drainage, else a district) when ``zones`` are given. Datastream ids are
``<device id>:<observed property>``; the Sensor is ``sensor:<device class>``. Pure: frames in,
a frame out.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import GRAVITY_NETWORKS

DEVICE_PROPERTIES: dict[str, tuple[str, ...]] = {
    "water_meter": ("water_volume",),
    "flow_meter": ("flow",),
    "pressure_sensor": ("pressure",),
    "level_sensor": ("water_level",),  # depth_below_cover on a manhole
    "rain_gauge": ("rain_intensity",),
    "gas_detector": ("gas_concentration",),
    "water_quality_sensor": ("free_chlorine", "turbidity"),
}
"""What each device class measures (cameras and ``other`` devices have no datastreams)."""

_WATER_BODIES = ("river", "stream", "canal", "lake", "pond", "reservoir_lake", "sea", "water")
_TAGS: dict[tuple[str, str], str] = {
    **{("flow_meter", c): t for c, t in (("meter", "dma_inlet"),)},
    **{("flow_meter", c): "source" for c in ("reservoir", "pumping_station")},
    ("pressure_sensor", "meter"): "dma_inlet",
    ("pressure_sensor", "junction"): "dma_critical",
    **{("pressure_sensor", c): "source" for c in ("reservoir", "pumping_station")},
    ("level_sensor", "manhole"): "manhole",
    ("level_sensor", "tank"): "tank",
    ("level_sensor", "outfall"): "outfall",
    ("level_sensor", "pumping_station"): "wet_well",
    ("level_sensor", "storage"): "wet_well",  # the virtual city's pumping wet wells
    **{("level_sensor", c): "river" for c in _WATER_BODIES},
}
ZONE_CLASSES: dict[str | None, tuple[str, ...]] = {
    "water_supply": ("dma",),
    **{n: ("subcatchment", "catchment") for n in GRAVITY_NETWORKS},
    None: ("district",),
}
"""Which zones a device falls in, by its network (others: ``None``)."""


def plan_datastreams(
    devices: pd.DataFrame,
    assets: pd.DataFrame | None = None,
    zones: gpd.GeoDataFrame | None = None,
) -> pd.DataFrame:
    """The datastreams of a ``devices`` frame (columns ``id``, ``class``, ``feature_id``,
    ``network``, point geometry; ``name`` optional), as a frame for ``Store.provision``.

    ``assets``: the features devices are attached to (``id``, ``class``, optionally
    ``zone_id``), e.g. the twin's utility nodes and water bodies; without them tags that
    depend on the asset are left out. ``zones``: a ``zones`` frame (``id``, ``class``,
    polygons) to place devices in DMAs / catchments / districts."""
    for col in ("id", "class", "feature_id"):
        if col not in devices:
            raise InvalidInput(f"devices need a {col!r} column", layer="devices")
    n = len(devices)
    dev_id = devices["id"].to_numpy(object)
    dev_cls = devices["class"].to_numpy(object)
    asset = devices["feature_id"].to_numpy(object)
    network = (
        devices["network"].to_numpy(object) if "network" in devices else np.full(n, None, object)
    )
    asset_cls = np.full(n, None, object)
    zone = np.full(n, None, object)
    if assets is not None and len(assets):
        a = assets.drop_duplicates("id").set_index("id")
        pos = a.index.get_indexer(asset)
        hit = pos >= 0
        asset_cls[hit] = a["class"].to_numpy(object)[pos[hit]]
        if "zone_id" in a:
            zone[hit] = a["zone_id"].to_numpy(object)[pos[hit]]
    has_geometry = isinstance(devices, gpd.GeoDataFrame)
    points = devices.geometry.to_numpy() if has_geometry else None
    if zones is not None and len(zones) and points is not None:
        zone = _zones(points, network, zone, zones)

    # one row per (device, observed property)
    props = [DEVICE_PROPERTIES.get(c, ()) for c in dev_cls]
    counts = np.fromiter((len(p) for p in props), int, n)
    row = np.repeat(np.arange(n), counts)
    prop = np.array([p for ps in props for p in ps], dtype=object)
    manhole = (dev_cls[row] == "level_sensor") & (asset_cls[row] == "manhole")
    prop[manhole] = "depth_below_cover"
    keys = list(zip(dev_cls[row], asset_cls[row], strict=True))
    tags = np.array([_TAGS.get(k) for k in keys], dtype=object)
    tags[dev_cls[row] == "water_meter"] = "smart_meter"
    names = devices["name"].to_numpy(object) if "name" in devices else np.full(n, None, object)
    label = np.where(pd.isna(names), dev_id, names)[row]
    out = pd.DataFrame(
        {
            "datastream_id": _join(dev_id[row], prop),
            "name": _join(label, prop, sep=" "),
            "thing_id": dev_id[row],
            "sensor_id": _join(np.full(len(row), "sensor", object), dev_cls[row]),
            "observed_property": prop,
            "asset_id": asset[row],
            "network": network[row],
            "zone": zone[row],
            "group": _rain_groups(dev_id, dev_cls, points, row, prop),
            "tags": tags,
        }
    )
    return out


def _join(a: np.ndarray, b: np.ndarray, sep: str = ":") -> np.ndarray:
    return (pd.Series(a, dtype=object).astype(str) + sep + pd.Series(b, dtype=object)).to_numpy(
        object
    )


def _zones(
    points: np.ndarray, network: np.ndarray, zone: np.ndarray, zones: gpd.GeoDataFrame
) -> np.ndarray:
    """Fill the devices' missing zones with the zone (of their network's classes) they lie in."""
    zone = zone.copy()
    zone_cls = zones["class"].to_numpy(object)
    zone_ids = zones["id"].to_numpy(object)
    geoms = zones.geometry.to_numpy()
    for net, classes in ZONE_CLASSES.items():
        wanted = (
            np.isin(network, [net])
            if net is not None
            else ~np.isin(network, [k for k in ZONE_CLASSES if k is not None])
        )
        todo = np.flatnonzero(wanted & pd.isna(zone))
        for cls in classes:
            pick = np.flatnonzero(zone_cls == cls)
            if not len(todo) or not len(pick):
                continue
            tree = shapely.STRtree(geoms[pick])
            pt, poly = tree.query(points[todo], predicate="intersects")
            first = np.unique(pt, return_index=True)[1]
            zone[todo[pt[first]]] = zone_ids[pick[poly[first]]]
            todo = np.flatnonzero(wanted & pd.isna(zone))
    return zone


def _rain_groups(
    dev_id: np.ndarray,
    dev_cls: np.ndarray,
    points: np.ndarray | None,
    row: np.ndarray,
    prop: np.ndarray,
) -> np.ndarray:
    """``rain:<gauge id>`` for rain gauges and for the manhole datastreams nearest to each."""
    group = np.full(len(row), None, object)
    gauges = np.flatnonzero(dev_cls == "rain_gauge")
    if not len(gauges):
        return group
    is_rain = prop == "rain_intensity"
    group[is_rain] = [f"rain:{d}" for d in dev_id[row[is_rain]]]
    manhole = np.flatnonzero(prop == "depth_below_cover")
    if len(manhole) and points is not None:
        tree = shapely.STRtree(points[gauges])
        near = tree.query_nearest(points[row[manhole]], return_distance=False, all_matches=False)
        group[manhole[near[0]]] = [f"rain:{d}" for d in dev_id[gauges[near[1]]]]
    return group

"""Utility network use cases on a twin: read a network from the store, run the network engine,
answer with feature ids, tables and GeoJSON.

The engine (``citytwin.networks``) works on arrays; this module is the adapter between it and
the model: which nodes are sources, where the valves sit, who is served by which node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import NETWORK_TYPES
from citytwin.networks.excavation import Dig, critical_line, excavation_hits
from citytwin.networks.graph import Network
from citytwin.store import Filter, Query, Store

SOURCE_CLASSES: dict[str, tuple[str, ...]] = {
    "water_supply": ("reservoir", "tank"),
    "gas": ("regulator",),
    "power": ("substation",),
    "heating": ("pumping_station",),
}
"""Node classes that feed a pressurised network (gas: regulator stations feed the
low-pressure networks; the medium-pressure mains enter the twin at their gate station)."""

ON_LINK_CLASSES = ("valve", "meter", "hydrant")
"""Node classes that sit on a link (``link_id``) rather than join links."""

CRITICAL_FACILITIES = ("hospital", "school", "fire_station")
"""Facility classes whose loss of service an impact report names."""


@dataclass
class NetworkData:
    """One network of a twin: the engine's ``Network`` and the features behind it, aligned."""

    network: str
    graph: Network
    nodes: gpd.GeoDataFrame  # row i is graph node i
    links: gpd.GeoDataFrame  # row k is graph link k
    devices: gpd.GeoDataFrame  # nodes that sit on a link: valves, meters, hydrants
    problems: list[str] = field(default_factory=list)  # what could not be taken as it is


def _network_frame(store: Store, layer: str, network: str, as_of: dt.datetime | None):
    return store.query(
        Query(layer, where=[Filter("network", "=", network)], as_of=as_of, order_by="id")
    )


def load_network(store: Store, network: str, as_of: dt.datetime | None = None) -> NetworkData:
    """Read ``network`` (a network type: water_supply, sewer, gas ...) from the twin."""
    if network not in NETWORK_TYPES:
        raise InvalidInput(
            f"unknown network type {network!r}", hint=f"use one of {', '.join(NETWORK_TYPES)}"
        )
    nodes = _network_frame(store, "utility_nodes", network, as_of)
    links = _network_frame(store, "utility_links", network, as_of)
    if not len(links):
        raise NotFound(
            f"the twin has no {network} links",
        )
    on_link = nodes["class"].isin(ON_LINK_CLASSES) & nodes["link_id"].notna()
    devices = nodes[on_link].reset_index(drop=True)
    nodes = nodes[~on_link].reset_index(drop=True)
    graph = Network.from_ids(
        nodes["id"],
        links["id"],
        links["from_node"],
        links["to_node"],
        node_xy=shapely.get_coordinates(nodes.geometry.to_numpy())
        if len(nodes)
        else np.empty((0, 2)),
        link_length=_lengths(links),
    )
    return NetworkData(network, graph, nodes, links, devices)


def _lengths(links: gpd.GeoDataFrame) -> np.ndarray:
    given = links["length"].to_numpy(float) if "length" in links else np.full(len(links), np.nan)
    return np.where(np.isnan(given), shapely.length(links.geometry.to_numpy()), given)


@dataclass
class Valves:
    """The isolation valves of a network, as the engine takes them: valve ``i`` sits on graph
    link ``link[i]`` next to graph node ``node[i]``; ``closed`` ones are shut in normal
    operation (DMA boundaries)."""

    ids: np.ndarray
    link: np.ndarray
    node: np.ndarray
    closed: np.ndarray


def network_valves(data: NetworkData) -> Valves:
    """The valves sitting on the network's links (utility nodes of class ``valve`` with a
    ``link_id``). The node a valve is next to is ``props["node"]`` where given and an end of
    its link, otherwise the end of the link nearer to the valve. Valves on unknown links are
    left out and listed in ``data.problems``."""
    valves = data.devices[data.devices["class"] == "valve"]
    graph = data.graph
    link = graph._link_lookup.get_indexer(valves["link_id"].to_numpy(object))
    for vid, lid in zip(valves["id"][link < 0], valves["link_id"][link < 0], strict=True):
        data.problems.append(f"valve {vid} sits on {lid}, which is not a {data.network} link")
    valves, link = valves[link >= 0], link[link >= 0]
    ends = graph.link_nodes[link]
    props = [p if isinstance(p, dict) else {} for p in valves["props"]]
    named = graph._node_lookup.get_indexer(np.array([p.get("node") for p in props], dtype=object))
    at = shapely.get_coordinates(valves.geometry.to_numpy())
    xy = graph.node_xy
    nearer = np.where(
        np.linalg.norm(xy[ends[:, 0]] - at, axis=1) <= np.linalg.norm(xy[ends[:, 1]] - at, axis=1),
        ends[:, 0],
        ends[:, 1],
    )
    named_is_end = (named == ends[:, 0]) | (named == ends[:, 1])
    status = np.array([str(p.get("status", "")).lower() for p in props], dtype=object)
    return Valves(
        ids=valves["id"].to_numpy(object),
        link=link.astype(np.int64),
        node=np.where(named_is_end, named, nearer).astype(np.int64),
        closed=status == "closed",
    )


def source_nodes(data: NetworkData) -> np.ndarray:
    """Boolean mask of the nodes that feed the network (``SOURCE_CLASSES``)."""
    return data.nodes["class"].isin(SOURCE_CLASSES.get(data.network, ())).to_numpy()


def impact_weights(store: Store, data: NetworkData) -> dict[str, np.ndarray]:
    """What each node of the network stands for, to sum over the nodes that lose service:
    service connections, buildings, residents (of the buildings they serve), demand (m³/s)
    and the critical facilities (``CRITICAL_FACILITIES``) in those buildings."""
    nodes = data.nodes
    served = nodes["building_id"].where(nodes["class"] == "service_connection")
    weights: dict[str, np.ndarray] = {
        "service_connections": (nodes["class"] == "service_connection").to_numpy(float),
        "buildings": served.notna().to_numpy(float),
        "demand_m3s": nodes["base_demand"].fillna(0.0).to_numpy(float),
    }
    buildings = store.query(Query("buildings")) if served.notna().any() else None
    residents = (
        buildings.set_index("id")["residents"].fillna(0)
        if buildings is not None and len(buildings)
        else pd.Series(dtype=float)
    )
    # a building served by several connections shares its people among them
    share = 1.0 / served.map(served.value_counts()).fillna(1.0).to_numpy(float)
    weights["buildings"] *= share
    weights["residents"] = residents.reindex(served).fillna(0).to_numpy(float) * share
    facilities = store.query(Query("facilities", classes=list(CRITICAL_FACILITIES)))
    for kind in CRITICAL_FACILITIES:
        here = facilities[facilities["class"] == kind]["building_id"].dropna()
        counts = here.value_counts()
        weights[f"{kind}s"] = counts.reindex(served).fillna(0).to_numpy(float) * share
    return weights


# -- excavation ----------------------------------------------------------------------------


def dig_check(store: Store, dig: Dig, as_of: dt.datetime | None = None) -> gpd.GeoDataFrame:
    """Every utility line within reach of ``dig``, across all networks: network, class, id,
    owner, diameter, pressure class, horizontal distance, shallowest crown depth within reach,
    whether the dig would strike it, and why it is critical (high-pressure gas, high-voltage
    power, trunk main). A GeoDataFrame of the lines, the struck and critical first."""
    reach = dig.area.buffer(dig.buffer) if dig.buffer > 0 else dig.area
    links = store.query(Query("utility_links", intersects=reach, as_of=as_of, order_by="id"))
    if not len(links):
        return gpd.GeoDataFrame(
            {"network": [], "id": [], "struck": [], "critical": []},
            geometry=gpd.GeoSeries([], crs=links.crs),
        )
    crown_from, crown_to = _gravity_crowns(store, links, as_of)
    hits = excavation_hits(
        links.geometry.to_numpy(),
        links["depth"].to_numpy(float),
        dig,
        crown_from=crown_from,
        crown_to=crown_to,
    )
    rows = links.iloc[hits["index"].to_numpy()].reset_index(drop=True)
    diameter = rows["diameter"].to_numpy(float)
    critical = [
        critical_line(n, p if isinstance(p, str) else None, d)
        for n, p, d in zip(rows["network"], rows["pressure_class"], diameter, strict=True)
    ]
    out = gpd.GeoDataFrame(
        {
            "network": rows["network"].to_numpy(object),
            "class": rows["class"].to_numpy(object),
            "id": rows["id"].to_numpy(object),
            "owner": rows["owner"].to_numpy(object),
            "diameter_m": diameter,
            "pressure_class": rows["pressure_class"].to_numpy(object),
            "distance_m": hits["distance_m"].to_numpy(float),
            "crown_depth_m": hits["crown_depth_m"].to_numpy(float),
            "struck": hits["struck"].to_numpy(bool),
            "critical": np.array(critical, dtype=object),
        },
        geometry=rows.geometry.to_numpy(),
        crs=links.crs,
    )
    order = np.lexsort(
        (out["id"], out["crown_depth_m"].fillna(-1), out["critical"].isna(), ~out["struck"])
    )
    return out.iloc[order].reset_index(drop=True)


def _gravity_crowns(
    store: Store, links: gpd.GeoDataFrame, as_of: dt.datetime | None
) -> tuple[np.ndarray, np.ndarray]:
    """Crown depths at both ends of links with invert levels (gravity conduits): ground from
    the end nodes' cover levels minus the invert and the conduit's height; NaN elsewhere."""
    n = len(links)
    inverts = links["invert_from"].notna() & links["invert_to"].notna()
    if not inverts.any():
        return np.full(n, np.nan), np.full(n, np.nan)
    ends = pd.unique(links.loc[inverts, ["from_node", "to_node"]].to_numpy().ravel())
    nodes = store.query(Query("utility_nodes", ids=list(ends), as_of=as_of))
    ground = nodes.set_index("id")["cover_level"]
    height = links["diameter"].fillna(0).to_numpy(float)
    g0 = ground.reindex(links["from_node"]).to_numpy(float)
    g1 = ground.reindex(links["to_node"]).to_numpy(float)
    return (
        g0 - links["invert_from"].to_numpy(float) - height,
        g1 - links["invert_to"].to_numpy(float) - height,
    )


# -- GeoJSON ----------------------------------------------------------------------------------


def features_geojson(frame: gpd.GeoDataFrame, columns: list[str] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of ``frame`` (in its CRS, which is named) with the given
    columns as properties."""
    columns = columns or [c for c in frame.columns if c != frame.geometry.name]
    features = []
    for geom, row in zip(
        frame.geometry.to_numpy(), frame[columns].itertuples(index=False), strict=True
    ):
        features.append(
            {
                "type": "Feature",
                "id": getattr(row, "id", None),
                "geometry": shapely.geometry.mapping(geom) if geom is not None else None,
                "properties": {c: _plain(v) for c, v in zip(columns, row, strict=True)},
            }
        )
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if frame.crs is not None and frame.crs.to_epsg():
        out["crs"] = {
            "type": "name",
            "properties": {"name": f"urn:ogc:def:crs:EPSG::{frame.crs.to_epsg()}"},
        }
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if v is pd.NA or v is pd.NaT:
        return None
    return v

"""Utility network use cases on a twin: read a network from the store, run the network engine,
answer with feature ids, tables and GeoJSON.

The engine (``citytwin.networks``) works on arrays; this module is the adapter between it and
the model: which nodes are sources, where the valves sit, who is served by which node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput, NotFound
from citytwin.formats.base import ImportBundle
from citytwin.model import GRAVITY_NETWORKS, NETWORK_TYPES
from citytwin.networks.clearance import (
    CLEARANCE_RULES_DOCUMENT,
    ClearanceRules,
    check_clearances,
    clearance_lines,
    default_clearance_rules,
    load_clearance_rules,
    parse_clearance_rules,
    read_rule_file,
)
from citytwin.networks.excavation import Dig, critical_line, excavation_hits
from citytwin.networks.graph import Network
from citytwin.networks.segments import Isolation, IsolationModel
from citytwin.networks.topology import (
    TopologyReport,
    check_topology,
    network_from_geometry,
    network_from_ids,
)
from citytwin.networks.trace import (
    Trace,
    connected,
    downstream,
    feeding_sources,
    flow_direction,
    gravity_direction,
    loop_through,
    shortest_path,
    source_direction,
    upstream,
)
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
    nodes: gpd.GeoDataFrame  # row i is graph node i (nodes the builder added have no row)
    links: gpd.GeoDataFrame  # row k is graph link k
    devices: gpd.GeoDataFrame  # nodes that sit on a link: valves, meters, hydrants
    issues: pd.DataFrame  # what the builder had to repair (topology.ISSUE_COLUMNS)

    @property
    def gravity(self) -> bool:
        """Whether the network drains by gravity (directions from invert levels)."""
        return self.network in GRAVITY_NETWORKS

    @cached_property
    def node_class(self) -> np.ndarray:
        """Class of every graph node ("" for nodes the builder added)."""
        out = np.full(self.graph.n_nodes, "", dtype=object)
        out[: len(self.nodes)] = self.nodes["class"].to_numpy(object)
        return out

    @cached_property
    def closed_links(self) -> np.ndarray:
        """Links shut in normal operation: status closed, or a closed valve on them."""
        status = self.links["initial_status"].fillna("").str.lower()
        shut = np.array(status.eq("closed"), dtype=bool)
        valves = self.devices[self.devices["class"] == "valve"]
        status = [p.get("status") if isinstance(p, dict) else None for p in valves["props"]]
        closed_on = valves["link_id"][np.array([s == "closed" for s in status], dtype=bool)]
        at = self.graph._link_lookup.get_indexer(closed_on.to_numpy(object))
        shut[at[at >= 0]] = True
        return shut

    def direction(self, store: Store | None = None, flows_at: float | None = None) -> np.ndarray:
        """Flow direction of every link: from invert levels for gravity networks; for
        pressurised ones from an EPANET run of the twin's hydraulic model at ``flows_at``
        hours where asked (``store`` needed; links outside the model, such as service pipes,
        and links without flow then), else away from the sources (``citytwin.networks.trace``)."""
        if self.gravity:
            return gravity_direction(
                self.links["invert_from"].to_numpy(float), self.links["invert_to"].to_numpy(float)
            )
        by_sources = source_direction(self.graph, source_nodes(self), closed=self.closed_links)
        if flows_at is None:
            return by_sources
        if store is None:
            raise ValueError("a hydraulic direction needs the store")
        flow = hydraulic_flows(store, self.network, flows_at).reindex(self.graph.link_ids)
        by_flow = flow_direction(flow.to_numpy(float), tolerance=1e-9)
        return np.where(flow.isna().to_numpy(), by_sources, by_flow).astype(np.int8)


def hydraulic_flows(store: Store, network: str, hour: float) -> pd.Series:
    """Link flows (m³/s, by link id) of an EPANET run of the twin's hydraulic model of
    ``network`` at ``hour`` hours; the model is rebuilt from the twin's current features."""
    import wntr

    from citytwin.formats.epanet import epanet_model_dict
    from citytwin.hydraulics.epanet import flows_at, run_epanet

    for key in store.documents("network/"):
        doc = store.get_document(key) or {}
        if doc.get("format") == "epanet" and doc.get("network", "water_supply") == network:
            break
    else:
        raise InvalidInput(
            f"the twin holds no hydraulic (EPANET) model of its {network} network",
            hint="import one (citytwin import net.inp) or trace from the sources instead",
        )
    wn = wntr.network.from_dict(epanet_model_dict(store, key))
    duration = wn.options.time.duration / 3600.0
    if not 0 <= hour <= duration:
        raise InvalidInput(
            f"hour {hour:g} is outside the hydraulic model's run of {duration:g} h",
            hint=f"give an hour from 0 to {duration:g}",
        )
    flow = flows_at(run_epanet(wn), hour)
    return pd.Series(flow.to_numpy(), index=doc["id_prefix"] + flow.index.astype(str))


NODE_COLUMNS = ("network", "name", "elevation", "cover_level", "invert_level", "depth",
                "base_demand", "building_id", "link_id", "owner")  # fmt: skip
LINK_COLUMNS = ("network", "name", "from_node", "to_node", "diameter", "length", "invert_from",
                "invert_to", "depth", "pressure_class", "initial_status", "owner")  # fmt: skip
"""What a network analysis reads of its nodes and links (props only of the on-link devices)."""


def _network_frame(
    store: Store,
    layer: str,
    network: str,
    as_of: dt.datetime | None,
    columns: tuple[str, ...] | None,
    classes: tuple[str, ...] | None = None,
) -> gpd.GeoDataFrame:
    where = [Filter("network", "=", network)]
    return store.query(Query(layer, classes=classes, where=where, as_of=as_of, columns=columns))


def load_network(store: Store, network: str, as_of: dt.datetime | None = None) -> NetworkData:
    """Read ``network`` (a network type: water_supply, sewer, gas ...) from the twin. Links
    whose end nodes are missing are kept (the builder adds the nodes) and listed in
    ``issues``: a network with errors is analysed as far as it can be."""
    if network not in NETWORK_TYPES:
        raise InvalidInput(
            f"unknown network type {network!r}", hint=f"use one of {', '.join(NETWORK_TYPES)}"
        )
    links = _network_frame(store, "utility_links", network, as_of, LINK_COLUMNS)
    if not len(links):
        raise NotFound(f"the twin has no {network} links")
    nodes = _network_frame(store, "utility_nodes", network, as_of, NODE_COLUMNS)
    on_link = (nodes["class"].isin(ON_LINK_CLASSES) & nodes["link_id"].notna()).to_numpy()
    devices = _network_frame(store, "utility_nodes", network, as_of, None, ON_LINK_CLASSES)
    devices = devices[devices["link_id"].notna()].reset_index(drop=True)
    nodes = nodes[~on_link].reset_index(drop=True)
    built = network_from_ids(
        nodes["id"].to_numpy(object),
        links["id"].to_numpy(object),
        links["from_node"].to_numpy(object),
        links["to_node"].to_numpy(object),
        node_xy=shapely.get_coordinates(nodes.geometry.to_numpy()).reshape(-1, 2),
        link_length=_lengths(links),
        link_end_xy=_line_ends(links),
    )
    return NetworkData(network, built.network, nodes, links, devices, built.issues)


def _line_ends(links: gpd.GeoDataFrame) -> np.ndarray:
    """``(m, 2, 2)``: first and last point of every line (where a missing node is placed)."""
    xy, line = shapely.get_coordinates(links.geometry.to_numpy(), return_index=True)
    ends = np.full((len(links), 2, 2), np.nan)
    if len(line):
        starts = np.r_[0, np.flatnonzero(np.diff(line)) + 1]
        stops = np.r_[starts[1:], len(line)] - 1
        ends[line[starts], 0], ends[line[starts], 1] = xy[starts], xy[stops]
    return ends


def _lengths(links: gpd.GeoDataFrame) -> np.ndarray:
    given = links["length"].to_numpy(float)
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
    problems: list[str] = field(default_factory=list)


def network_valves(data: NetworkData) -> Valves:
    """The valves sitting on the network's links (utility nodes of class ``valve`` with a
    ``link_id``). The node a valve is next to is ``props["node"]`` where given and an end of
    its link, otherwise the end of the link nearer to the valve. Valves on unknown links are
    left out and listed in ``problems``."""
    valves = data.devices[data.devices["class"] == "valve"]
    graph = data.graph
    link = graph._link_lookup.get_indexer(valves["link_id"].to_numpy(object))
    problems = [
        f"valve {vid} sits on {lid}, which is not a {data.network} link"
        for vid, lid in zip(valves["id"][link < 0], valves["link_id"][link < 0], strict=True)
    ]
    valves, link = valves[link >= 0], link[link >= 0]
    ends = graph.link_nodes[link]
    props = [p if isinstance(p, dict) else {} for p in valves["props"]]
    named = graph._node_lookup.get_indexer(np.array([p.get("node") for p in props], dtype=object))
    at = shapely.get_coordinates(valves.geometry.to_numpy()).reshape(-1, 2)
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
        problems=problems,
    )


def source_nodes(data: NetworkData) -> np.ndarray:
    """Boolean mask of the nodes that feed the network (``SOURCE_CLASSES``; for gravity
    networks the outfalls, where everything drains to)."""
    classes = ("outfall",) if data.gravity else SOURCE_CLASSES.get(data.network, ())
    return np.isin(data.node_class, classes)


def impact_weights(store: Store, data: NetworkData) -> dict[str, np.ndarray]:
    """What each node of the network stands for, to sum over the nodes that lose service:
    service connections, buildings, residents (of the buildings they serve), demand (m³/s)
    and the critical facilities (``CRITICAL_FACILITIES``) in those buildings. Aligned with
    the graph's nodes (added nodes weigh nothing)."""
    n = data.graph.n_nodes
    served = _served_buildings(data)
    share = 1.0 / served.map(served.value_counts()).fillna(1.0).to_numpy(float)
    weights: dict[str, np.ndarray] = {
        "service_connections": (data.node_class == "service_connection").astype(float),
        "buildings": _pad(served.notna().to_numpy(float) * share, n),
        "residents": np.zeros(n),
        "demand_m3s": _pad(data.nodes["base_demand"].fillna(0.0).to_numpy(float), n),
    }
    if served.notna().any():
        residents = store.query(Query("buildings")).set_index("id")["residents"].fillna(0)
        weights["residents"] = _pad(residents.reindex(served).fillna(0).to_numpy(float) * share, n)
    facilities = store.query(Query("facilities", classes=list(CRITICAL_FACILITIES)))
    for kind in CRITICAL_FACILITIES:
        counts = facilities.loc[facilities["class"] == kind, "building_id"].dropna().value_counts()
        weights[f"{kind}s"] = _pad(counts.reindex(served).fillna(0).to_numpy(float) * share, n)
    return weights


def _served_buildings(data: NetworkData) -> pd.Series:
    """The building each node serves (service connections), None elsewhere."""
    nodes = data.nodes
    return nodes["building_id"].where(nodes["class"] == "service_connection").reset_index(drop=True)


def _pad(values: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([values, np.zeros(n - len(values))])


# -- topology from geometry ---------------------------------------------------------------------


def snap_links(
    store: Store, bundle: ImportBundle, tolerance: float, *, as_of: dt.datetime | None = None
) -> pd.DataFrame:
    """Give the utility links of an import ``bundle`` that lack end nodes (GIS layers: lines
    only) their ``from_node`` / ``to_node`` by snapping their ends, within ``tolerance`` m, to
    the utility nodes of the same network in the bundle and in the twin; ends near no node
    meet at new junctions, added to the bundle. Returns what the snapping had to decide
    (``citytwin.networks.topology`` issues: new nodes, ambiguous ends)."""
    links = bundle.layers.get("utility_links")
    if links is None:
        raise InvalidInput("--snap joins utility links, and this import brings none",
                           hint="import the lines with --layer utility_links")  # fmt: skip
    if not isinstance(links, gpd.GeoDataFrame):
        raise InvalidInput(
            "--snap needs the whole layer at once; this file is read in chunks",
            hint="split the file, or give from_node / to_node fields instead",
        )
    if "network" not in links or links["network"].isna().any():
        raise InvalidInput("--snap needs the links' network type",
                           hint="add --set network=water_supply (or map a field)")  # fmt: skip
    for column in ("from_node", "to_node"):
        if column not in links:
            links[column] = None
    new_nodes, found = [], []
    given = bundle.layers.get("utility_nodes")
    for network, rows in links.groupby("network", sort=True):
        loose = rows["from_node"].isna() | rows["to_node"].isna()
        if not loose.any():
            continue
        ours = given[given["network"] == network] if isinstance(given, gpd.GeoDataFrame) else None
        stored = store.query(
            Query("utility_nodes", where=[Filter("network", "=", network)], as_of=as_of,
                  columns=("network", "link_id"))
        )  # fmt: skip
        nodes = pd.concat([f for f in (ours, stored) if f is not None and len(f)])
        if len(nodes):
            nodes = nodes[~nodes["class"].isin(ON_LINK_CLASSES)].drop_duplicates("id")
        prefix = f"{network}:snap-"
        built = network_from_geometry(
            rows.geometry.to_numpy(),
            rows["id"].to_numpy(object),
            node_points=nodes.geometry.to_numpy() if len(nodes) else None,
            node_ids=nodes["id"].to_numpy(object) if len(nodes) else None,
            tolerance=tolerance,
            new_node_prefix=prefix,
        )
        graph = built.network
        ends = graph.node_ids[graph.link_nodes]
        links.loc[rows.index[loose], "from_node"] = ends[loose.to_numpy(), 0]
        links.loc[rows.index[loose], "to_node"] = ends[loose.to_numpy(), 1]
        added = np.isin(graph.node_ids, built.added_nodes)
        used = np.zeros(graph.n_nodes, dtype=bool)
        used[graph.link_nodes[loose.to_numpy()].ravel()] = True
        keep = added & used
        if keep.any():
            new_nodes.append(
                gpd.GeoDataFrame(
                    {"id": graph.node_ids[keep], "class": "junction", "network": network},
                    geometry=shapely.points(graph.node_xy[keep]),
                    crs=links.crs,
                )
            )
        found.append(built.issues.assign(network=network))
    for frame in new_nodes:
        bundle.add("utility_nodes", frame)
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame()


# -- topology and traces ----------------------------------------------------------------------

TERMINAL_CLASSES = (
    "reservoir", "tank", "service_connection", "hydrant", "outfall", "inlet", "storage",
    "substation", "transformer", "regulator", "pumping_station", "cap",
)  # fmt: skip
"""Node classes that may end a line: not dangling ends."""


def check_network(
    store: Store, network: str, *, near_miss: float = 1.0, as_of: dt.datetime | None = None
) -> tuple[NetworkData, TopologyReport]:
    """Check a network's topology: dangling ends, near-misses, duplicate and zero-length links,
    components (and those without a source), isolated nodes, adverse slopes of gravity pipes;
    plus what the builder had to repair (missing nodes) and valves on unknown links."""
    data = load_network(store, network, as_of)
    terminals = np.isin(data.node_class, TERMINAL_CLASSES)
    if data.gravity:  # a sewer starts at its head manholes: one link, draining away
        direction = data.direction()
        start = np.where(direction == 1, data.graph.link_nodes[:, 0], data.graph.link_nodes[:, 1])
        heads = np.zeros(data.graph.n_nodes, dtype=bool)
        heads[start] = True
        terminals |= heads & (data.graph.degree == 1)
    report = check_topology(
        data.graph,
        link_geometry=data.links.geometry.to_numpy(),
        terminals=terminals,
        sources=source_nodes(data) if source_nodes(data).any() else None,
        near_miss=near_miss,
        invert_from=data.links["invert_from"].to_numpy(float) if data.gravity else None,
        invert_to=data.links["invert_to"].to_numpy(float) if data.gravity else None,
        loose_ends_only=True,
    )
    # separate systems each with a source (sewer catchments with their own outfall, an
    # island with its own tank) are not errors: only the parts without a source are
    components = report.components
    if "has_source" in components and source_nodes(data).any():
        fed = set(components.loc[components["has_source"].astype(bool), "node"])
        apart = (report.issues["kind"] == "disconnected_component") & report.issues["node"].isin(
            fed
        )
        report = TopologyReport(report.issues[~apart].reset_index(drop=True), components)
    found = [data.issues, report.issues]
    for problem in network_valves(data).problems:
        found.append(pd.DataFrame([{"kind": "valve_off_network", "other": problem}]))
    found = [f for f in found if len(f)]
    issues = pd.concat(found, ignore_index=True) if found else report.issues
    return data, TopologyReport(issues, report.components)


TRACES = ("connected", "upstream", "downstream", "path", "sources", "loop")


def trace_network(
    store: Store,
    network: str,
    kind: str,
    start: list[str],
    *,
    end: str | None = None,
    flows_at: float | None = None,
    as_of: dt.datetime | None = None,
    stop_at_closed: bool = True,
    data: NetworkData | None = None,
) -> tuple[NetworkData, Trace | None, np.ndarray | None]:
    """Trace ``network`` from ``start`` (node or link ids): ``connected``, ``upstream`` or
    ``downstream`` (directions from invert levels for gravity networks, else from the
    sources, or from an EPANET run's flows at ``flows_at`` hours), ``path`` (shortest, to
    ``end``), ``sources`` (which sources feed the start
    node) or ``loop`` (the shortest loop through the start link). Closed links and links with
    closed valves are not passed (unless ``stop_at_closed`` is False). ``data``: the network,
    already loaded. Returns the data, the trace (None for a link on no loop) and, for
    ``sources``, the source ids."""
    if kind not in TRACES:
        raise InvalidInput(f"unknown trace {kind!r}", hint=f"use one of {', '.join(TRACES)}")
    if not start:
        raise InvalidInput("a trace needs a start", hint="give a node or link id")
    data = data if data is not None else load_network(store, network, as_of)
    graph = data.graph
    closed = data.closed_links if stop_at_closed else None
    nodes = [s for s in start if s in graph._node_lookup]
    links = [s for s in start if s in graph._link_lookup]
    unknown = sorted(set(start) - set(nodes) - set(links))
    if unknown:
        raise NotFound(
            f"{unknown[0]!r} is not a node or link of the {network} network",
        )
    if kind == "connected":
        return data, connected(graph, nodes, links, closed=closed), None
    if kind in ("upstream", "downstream"):
        walk = upstream if kind == "upstream" else downstream
        direction = data.direction(store, flows_at)
        return data, walk(graph, direction, nodes, links, closed=closed), None
    if kind == "path":
        if end is None or len(nodes) != 1:
            raise InvalidInput("a path runs from one node to another", hint="give --to NODE")
        return data, shortest_path(graph, nodes[0], end, closed=closed), None
    if kind == "sources":
        if len(nodes) != 1:
            raise InvalidInput("name one node to find the sources that feed it")
        direction = None if data.gravity else data.direction(store, flows_at)
        found = feeding_sources(graph, nodes[0], source_nodes(data), closed=closed,
                                direction=direction)  # fmt: skip
        return data, None, found
    if len(links) != 1:
        raise InvalidInput("name one link to find a loop through it")
    return data, loop_through(graph, links[0], closed=closed), None


# -- burst isolation, segments, criticality ----------------------------------------------------


@dataclass
class BurstReport:
    """A burst isolation on a twin: the engine's ``Isolation`` and what it means on the map."""

    data: NetworkData
    valves: Valves
    isolation: Isolation
    buildings: gpd.GeoDataFrame  # id, name, residents, footprint of those that lose supply
    facilities: gpd.GeoDataFrame  # the critical facilities among them

    @property
    def valve_ids(self) -> np.ndarray:
        """Ids of the valves to close."""
        return self.valves.ids[self.isolation.valves]

    def features(self) -> gpd.GeoDataFrame:
        """Valves to close (points), isolated and cut-off links (lines), each with its ``id``,
        ``role`` (valve_to_close, isolated, cut_off), ``class``, ``name`` and ``diameter``; the
        failed link is among the isolated ones."""
        iso, links, devices = self.isolation, self.data.links, self.data.devices
        at = pd.Index(devices["id"]).get_indexer(self.valve_ids)
        rows = np.r_[iso.isolated_links, iso.cutoff_links].astype(np.int64)
        n_iso, n_cut = len(iso.isolated_links), len(iso.cutoff_links)

        def both(column: str) -> np.ndarray:
            return np.r_[devices[column].to_numpy(object)[at], links[column].to_numpy(object)[rows]]

        role = ["valve_to_close"] * len(at) + ["isolated"] * n_iso + ["cut_off"] * n_cut
        diameter = np.r_[np.full(len(at), np.nan), links["diameter"].to_numpy(float)[rows]]
        return gpd.GeoDataFrame(
            {
                "id": both("id"),
                "role": np.array(role, dtype=object),
                "class": both("class"),
                "name": both("name"),
                "diameter": diameter,
            },
            geometry=np.r_[devices.geometry.to_numpy()[at], links.geometry.to_numpy()[rows]],
            crs=links.crs,
        )

    def to_geojson(self) -> dict[str, Any]:
        """``features()`` as a GeoJSON FeatureCollection (in the twin's CRS)."""
        return features_geojson(self.features())


def isolation_model(store: Store, data: NetworkData) -> tuple[IsolationModel, Valves]:
    """The network's valves, sources and impact weights prepared for isolation queries."""
    valves = network_valves(data)
    if not len(valves.ids):
        raise InvalidInput(
            f"the {data.network} network of this twin has no valves: nothing can be isolated",
            hint="import its valve layer (utility nodes of class valve with link_id)",
        )
    model = IsolationModel.build(
        data.graph,
        valves.link,
        valves.node,
        source_nodes(data),
        weights=impact_weights(store, data),
        diameter=data.links["diameter"].to_numpy(float),
        length=data.graph.link_length,
        closed=valves.closed,
    )
    return model, valves


MAX_SNAP = 50.0  # m: a burst located by a point must lie this close to a link


def nearest_link(data: NetworkData, x: float, y: float) -> int:
    """The link nearest to point (x, y), within ``MAX_SNAP`` m."""
    geoms = data.links.geometry.to_numpy()
    point = shapely.Point(x, y)
    k = int(shapely.STRtree(geoms).nearest(point))
    distance = shapely.distance(geoms[k], point)
    if distance > MAX_SNAP:
        raise InvalidInput(
            f"the point ({x:.1f}, {y:.1f}) is {distance:.0f} m from the nearest {data.network} "
            f"link",
            hint=f"give a point within {MAX_SNAP:.0f} m of a link, in the twin's CRS",
        )
    return k


def isolate_burst(
    store: Store,
    network: str,
    *,
    link: str | None = None,
    at: tuple[float, float] | None = None,
    inoperable: list[str] | None = None,
    as_of: dt.datetime | None = None,
    data: NetworkData | None = None,
    model: tuple[IsolationModel, Valves] | None = None,
) -> BurstReport:
    """Isolate a burst on ``link`` (id) or at a point ``at`` on a link: the valves to close, the
    isolated part, what else loses supply, and who is affected (buildings, residents,
    critical facilities). ``inoperable``: valve ids that can't be closed. ``data`` and
    ``model``: the network and its ``isolation_model``, already built."""
    if (link is None) == (at is None):
        raise InvalidInput("say where the burst is", hint="give a link id or a point x,y")
    data = data if data is not None else load_network(store, network, as_of)
    k = nearest_link(data, *at) if at is not None else int(data.graph.link_index(link)[0])
    model, valves = model if model is not None else isolation_model(store, data)
    blocked = []
    if inoperable:
        index = pd.Index(valves.ids)
        blocked = index.get_indexer(inoperable)
        if (blocked < 0).any():
            bad = inoperable[int(np.flatnonzero(blocked < 0)[0])]
            raise NotFound(f"no valve {bad!r} in the {network} network")
    isolation = model.isolate(k, blocked)
    served = _served_buildings(data)
    lost = isolation.lost_nodes
    lost = lost[lost < len(served)]
    building_ids = served.iloc[lost].dropna().unique()
    table = gpd.GeoDataFrame(
        {"id": pd.Series([], dtype=object), "name": pd.Series([], dtype=object), "residents": []},
        geometry=gpd.GeoSeries([], crs=data.links.crs),
    )
    if len(building_ids):
        buildings = store.query(Query("buildings", ids=list(building_ids), order_by="id",
                                      columns=("name", "residents")))  # fmt: skip
        table = buildings[["id", "name", "residents", "geometry"]].reset_index(drop=True)
    facilities = store.query(Query("facilities", classes=list(CRITICAL_FACILITIES)))
    facilities = facilities[facilities["building_id"].isin(building_ids)].reset_index(drop=True)
    return BurstReport(data, valves, isolation, table, facilities)


def segment_table(store: Store, network: str) -> tuple[NetworkData, IsolationModel, pd.DataFrame]:
    """Every valve segment of ``network`` with its size, demand, residents and critical
    facilities, and the impact of its isolation (``IsolationModel.criticality``), ranked by
    residents who lose supply."""
    data = load_network(store, network)
    model, _ = isolation_model(store, data)
    return data, model, model.criticality(by="residents")


# -- clearances -------------------------------------------------------------------------------

def twin_clearance_rules(store: Store, path: str | Path | None = None) -> ClearanceRules:
    """The clearance rules for this twin: the default (GB 50289-2016), the city's own rules
    kept in the twin (``CLEARANCE_RULES_DOCUMENT``) merged over it, and a rule file at
    ``path`` merged over that."""
    rules = default_clearance_rules()
    kept = store.get_document(CLEARANCE_RULES_DOCUMENT)
    if kept:
        rules = parse_clearance_rules(
            kept, source=f"twin document {CLEARANCE_RULES_DOCUMENT}", base=rules
        )
    return load_clearance_rules(path, base=rules)


def keep_clearance_rules(store: Store, path: str | Path) -> ClearanceRules:
    """Check the rule file at ``path`` and keep it in the twin as the city's own rules."""
    content = read_rule_file(path)
    rules = parse_clearance_rules(content, source=str(path), base=default_clearance_rules())
    store.put_document(CLEARANCE_RULES_DOCUMENT, content)
    return rules


def clearance_check(
    store: Store,
    rules: ClearanceRules,
    *,
    networks: list[str] | None = None,
    buildings: bool = True,
    as_of: dt.datetime | None = None,
) -> pd.DataFrame:
    """Every clearance violation among the twin's utility lines (of ``networks``, default all)
    and against its buildings (``citytwin.networks.clearance.check_clearances``)."""
    where = [Filter("network", "in", list(networks))] if networks else []
    for name in networks or ():
        if name not in NETWORK_TYPES:
            raise InvalidInput(
                f"unknown network type {name!r}", hint=f"use one of {', '.join(NETWORK_TYPES)}"
            )
    nodes = store.query(
        Query("utility_nodes", where=where, as_of=as_of, columns=("network", "cover_level"))
    )
    links = store.query(Query("utility_links", where=where, as_of=as_of))
    footprints = store.query(Query("buildings", as_of=as_of, columns=())) if buildings else None
    return check_clearances(clearance_lines(nodes, links, rules), rules, footprints)


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

"""The virtual city's water supply: a looped network of mains under the streets, sized by the
demand it carries, fed by the water treatment plant's pumps and floating on hill tanks.

One main runs along every street edge at the water corridor (bridges carry mains across the
river); its junctions sit at the corridor's street nodes with elevations from the DEM (the
junction elevation is the ground level, so pressures are at street level). Buildings draw their
water (residents at 180 L/day, workers at 60 L/day, schools, hospitals and industry at their
own rates) at the main junction nearest them, through a service pipe from a service connection
at the building; service connections and pipes are GIS features only, their demand is lumped
at that junction in the hydraulic model. Demands follow diurnal patterns (residential with
morning and evening peaks, commercial by day, industry in shifts).

The treatment plant's clear-water well is a reservoir; a pumping station (two duty pumps and a
standby, on one head curve) lifts into the network through a discharge main. A city larger than
one plant serves (``SOURCE_CAPACITY``) also draws on booster stations of the regional
transmission mains, each modelled alike. Balancing tanks on the highest ground near the network
(in parks, raised on towers where the ground is too low) fill at night and drain by day; their
level sets the head of the plant's pressure zone: enough for its highest demand junction, or
where its relief is more than the band spans, the head that keeps the most junctions between
20 and 60 m. The network is cut into district metered areas of about 1.4 km²: the pipes across
a DMA boundary are closed at a boundary valve, except one or two inlets, each with a flow meter.

Where the demand junctions span more relief than one zone keeps within 20-60 m
(``ZONE_RELIEF``: a large city's slopes and hills), the DMAs are grouped into pressure zones by
elevation bands. The plant's zone floats on the tanks; each other zone is fed through stations
in a chamber on a closed main across the zone boundary (at the DMA inlets the routing picks, a
step into another zone counting ``ZONE_STEP`` steps): a pressure-reducing valve holding the
zone's head, after two duty booster pumps and a standby where the water comes from lower ground
(together standing for the variable-speed boosters common in Chinese cities, which EPANET does
not model directly), and a metered outlet main. Regional sources that fall in such a zone hold
its head the same way.

Diameters come from the peak demand accumulated along the shortest-path tree from the sources
(through the stations), rounded up to standard DN sizes (looped mains at least DN150, secondary
streets DN200, arterials DN300); each zone's head covers the losses from its feeds. Isolation
valves follow the "N-1" pattern (valves on all branches of a junction but one),
hydrants stand every 100 m along the streets.

``plan_water`` is pure (arrays and a wntr model); ``water_bundle`` turns a plan into model
features through the EPANET adapter, so ``write_epanet`` exports an INP that EPANET runs with the
same results; ``water_check`` runs the 24 h EPANET simulation and sums up the pressures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import wntr
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from citytwin.formats.base import ImportBundle
from citytwin.formats.epanet import epanet_bundle
from citytwin.hydraulics.epanet import run_epanet
from citytwin.synth.corridors import corridor_nodes, cover_depth
from citytwin.synth.layout import CRS, LOCAL_SPACING, CityLayout

NETWORK = "water_supply"
PREFIX = "ws:"

DN = np.array([100, 150, 200, 300, 400, 500, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000]) / 1e3
"""Standard nominal diameters (m); above DN1000 only for the trunk mains of large cities."""
MIN_DN = {"primary": 0.3, "secondary": 0.2, "residential": 0.15}
"""Smallest main by street class (dead-end residential mains may be DN100)."""
DESIGN_VELOCITY = 0.9  # m/s at the peak hour, for sizing
HAZEN_WILLIAMS = {"PE100": 140.0, "DI": 130.0, "steel": 120.0}

LITRES_PER_DAY = {
    # use: (litres per resident, litres per day-time person other than residents at home)
    "residential": (180.0, 0.0),
    "office": (0.0, 60.0),
    "commercial": (0.0, 60.0),
    "public": (0.0, 60.0),
    "school": (0.0, 50.0),
    "hospital": (0.0, 250.0),
    "industrial": (0.0, 100.0),
}
"""Water use per person and day (GB 50013 ranges for a large southern Chinese city)."""


def _hourly(values: str) -> np.ndarray:
    """24 hourly multipliers from midnight, scaled to a mean of 1."""
    a = np.array(values.split(), dtype=float)
    return a / a.mean()


PATTERNS = {
    "RES": _hourly(
        "0.45 0.35 0.30 0.30 0.35 0.55 1.05 1.60 1.75 1.40 1.15 1.10 "
        "1.20 1.05 0.95 0.90 0.95 1.15 1.45 1.70 1.65 1.35 0.95 0.65"
    ),
    "COM": _hourly(
        "0.30 0.25 0.25 0.25 0.30 0.40 0.70 1.20 1.70 1.90 1.90 1.85 "
        "1.60 1.80 1.85 1.80 1.60 1.30 0.95 0.70 0.55 0.45 0.40 0.35"
    ),
    "IND": _hourly(" ".join(["0.7"] * 6 + ["1.0"] + ["1.3"] * 10 + ["1.0"] + ["0.8"] * 6)),
}
"""Diurnal demand patterns: residential (morning and evening peaks), commercial and public
(day-time), industrial (two day shifts)."""
CATEGORY = {"residential": "RES", "industrial": "IND"}  # everything else: COM

DMA_LINES = 8  # street lines per DMA cell side: 1,200 m cells, about 1.4 km²
MIN_DMA_JUNCTIONS = 15
MIN_PRESSURE = 22.0  # m, design minimum at the peak hour (the service standard is 20 m)
MAX_PRESSURE = 58.0  # m, design maximum at night (the service standard is 60 m)
LEAST_PRESSURE = 10.0  # m, where one zone can't keep every junction in the band
TANK_LEVELS = (0.5, 7.5)  # m, min and max level
MAX_TOWER = 12.0  # m, the tallest tower a balancing tank stands on
MAX_TANK_RADIUS = 30.0  # m, larger storage is split into several tanks
TANK_WORKING = 5.0  # m of level the design day uses, between the min and max with margins
STORAGE_MARGIN = 1.5  # tank volume over the design day's balancing storage
TANKS_PER_M3_DAY = 70_000.0  # one balancing tank per this much daily demand
SOURCE_CAPACITY = 250_000.0  # m3/day a source (plant or booster station) supplies at most
ZONE_RELIEF = 30.0  # m of ground level the demand junctions of one pressure zone span at most
ZONE_STEP = 3.0  # a feed from another pressure zone counts as this many DMA steps
STATION_MARGIN = 3.0  # m of head a station's pumps keep above what its valve holds
STATION_AT = (0.6, 0.65)  # where a zone station's chamber begins and ends along its main
HYDRANT_SPACING = 100.0  # m
SERVICE_DN = np.array([25, 32, 40, 50, 65, 80, 100, 150, 200]) / 1e3
SERVICE_COVER = cover_depth(NETWORK)  # m over service pipes: the mains' level

_CLASS_WEIGHT = {"primary": 0.5, "secondary": 0.75, "residential": 1.0}


@dataclass
class WaterPlan:
    """A planned water supply network: the EPANET model and the GIS-only features.

    ``wn`` node and link names are the feature ids without ``PREFIX``. ``node_attrs`` and
    ``link_attrs`` (indexed by those names) hold model attributes EPANET does not carry: DMA,
    cover and invert levels, material, role. ``nodes`` are the GIS-only utility nodes (isolation and
    boundary valves, hydrants, DMA inlet meters, service connections), ``links`` the service
    pipes, ``dmas`` the district metered areas; all are model frames in the layout's CRS.
    """

    wn: wntr.network.WaterNetworkModel
    node_attrs: pd.DataFrame
    link_attrs: pd.DataFrame
    nodes: gpd.GeoDataFrame
    links: gpd.GeoDataFrame
    dmas: gpd.GeoDataFrame
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class WaterCheck:
    """What a 24 h EPANET run of a water network says."""

    pressures: pd.DataFrame  # m, time x demand junction
    tank_levels: pd.DataFrame  # m, time x tank
    share_20_60: float  # share of demand-node pressures (all times) within 20-60 m
    min_pressure: float
    max_pressure: float

    @property
    def ok(self) -> bool:
        """Pressures mostly (90 %) within 20-60 m and none negative at demand nodes."""
        return self.share_20_60 >= 0.9 and self.min_pressure >= 0.0


def _hw_loss(q: np.ndarray, d: np.ndarray, length: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Hazen-Williams head loss (m) for flows q (m3/s)."""
    return 10.67 * length * np.abs(q) ** 1.852 / (c**1.852 * d**4.8704)


def _material(d: np.ndarray) -> np.ndarray:
    return np.where(d <= 0.15, "PE100", np.where(d <= 1.0, "DI", "steel"))


def _dn_for(q: np.ndarray) -> np.ndarray:
    """Smallest standard DN carrying q at the design velocity (the largest DN where none does)."""
    need = np.sqrt(4 * np.abs(q) / (np.pi * DESIGN_VELOCITY))
    return DN[np.minimum(np.searchsorted(DN, need - 1e-9), len(DN) - 1)]


def _building_demand(b: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Average demand of each building (m3/s) and its pattern category."""
    use = b["use"].to_numpy().astype(str)
    residents = b["residents"].to_numpy(float)
    day = b["daytime_population"].to_numpy(float)
    rates = np.array([LITRES_PER_DAY.get(u, LITRES_PER_DAY["public"]) for u in use])
    visitors = np.maximum(day - np.round(0.35 * residents), 0.0)  # not the residents at home
    litres = rates[:, 0] * residents + rates[:, 1] * visitors
    category = np.array([CATEGORY.get(u, "COM") for u in use])
    return litres / 1000.0 / 86400.0, category


def _nearest(
    points: np.ndarray, targets: np.ndarray, channel: shapely.Geometry, k: int = 6
) -> np.ndarray:
    """Index of the nearest target to each point whose straight line does not cross the river."""
    k = min(k, len(targets))
    _, idx = cKDTree(targets).query(points, k=k)
    idx = idx.reshape(len(points), k)
    lines = shapely.linestrings(
        np.stack([np.repeat(points, k, axis=0), targets[idx.ravel()]], axis=1)
    )
    shapely.prepare(channel)
    crossing = shapely.intersects(channel, lines).reshape(len(points), k)
    return idx[np.arange(len(points)), np.argmax(~crossing, axis=1)]


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _dangling(n: int, edges: np.ndarray) -> np.ndarray:
    """Edges on no loop's way: what pruning dead ends (degree-1 nodes) repeatedly removes."""
    alive = np.ones(len(edges), bool)
    while True:
        degree = np.bincount(edges[alive].ravel(), minlength=n)
        leaf = degree == 1
        cut = alive & (leaf[edges[:, 0]] | leaf[edges[:, 1]])
        if not cut.any():
            return ~alive
        alive &= ~cut


# -- the plan --------------------------------------------------------------------------------
@dataclass
class _Mains:
    """The street mains as arrays: junctions (xy, ground) and pipes between junction indices."""

    xy: np.ndarray
    z: np.ndarray
    edges: np.ndarray
    cls: np.ndarray
    bridge: np.ndarray
    length: np.ndarray
    unserved: int  # street nodes left without a main (hill parks above the pressure's reach)


@dataclass
class _Sizing:
    """Diameters and roughness of the street mains, and what the tree sizing them says."""

    diameter: np.ndarray
    roughness: np.ndarray
    loss_peak: np.ndarray  # m, head loss from the source to each junction along the tree
    loss_avg: np.ndarray
    source_flow: np.ndarray  # m3/s, the peak each source main is sized for
    source_average: np.ndarray  # m3/s, the average demand of the junctions each source feeds
    through: np.ndarray  # m3/s, the peak (or the night's) flow into each junction's subtree


def plan_water(layout: CityLayout, seed: int | None = None) -> WaterPlan:
    """Plan the water supply network of ``layout`` (deterministic from ``seed``, by default the
    layout's)."""
    rng = np.random.default_rng(layout.seed if seed is None else seed)
    channel = layout.river.channel
    b = layout.buildings
    b_demand, b_cat = _building_demand(b)
    b_xy = shapely.get_coordinates(b.geometry.centroid.to_numpy())
    mains = _mains(layout, b_xy)
    xy, z = mains.xy, mains.z
    n = len(xy)

    # demands at the junction serving each building
    b_node = _nearest(b_xy, xy, channel)
    cats = list(PATTERNS)
    demand = np.column_stack(
        [np.bincount(b_node[b_cat == c], weights=b_demand[b_cat == c], minlength=n) for c in cats]
    )
    peak = demand @ np.array([PATTERNS[c].max() for c in cats])
    served = demand.sum(axis=1) > 0

    total = demand.sum(axis=0)
    q_avg = float(total.sum())

    # the sources: the treatment plant's pumping station into the nearest junction and, for a
    # city larger than one plant serves, booster stations on the regional transmission mains
    plant = layout.facilities.loc[
        layout.facilities["class"] == "water_treatment_plant", "geometry"
    ].iloc[0]
    plant_xy = shapely.get_coordinates(plant.centroid)
    sources = _sources(
        xy,
        demand.sum(axis=1),
        int(_nearest(plant_xy, xy, channel)[0]),
        int(np.ceil(q_avg * 86400 / SOURCE_CAPACITY)),
    )
    dma = _dma_cells(layout, mains)
    zone = _pressure_zones(mains, dma, served)
    tank_zone = int(zone[dma[sources[0]]])  # the plant's: it floats on the balancing tanks
    inlets, stations, closed = _feeds(mains, dma, zone, sources, tank_zone)
    tree = _tree(mains, closed, stations, sources)
    in_tank_zone = zone[dma] == tank_zone
    tank_fed = np.isin(tree.origin, sources[zone[dma[sources]] == tank_zone])

    # balancing tanks on the highest ground of the tanks' zone, for the demand fed from it
    fed_total = demand[tank_fed].sum(axis=0)
    q_tanks = float(fed_total.sum())
    storage = _storage(fed_total)
    area = STORAGE_MARGIN * storage["volume"] / TANK_WORKING  # m2 of all tanks together
    n_tanks = max(
        round(q_tanks * 86400 / TANKS_PER_M3_DAY), int(np.ceil(area / (np.pi * MAX_TANK_RADIUS**2)))
    )
    radius = float(np.sqrt(area / n_tanks / np.pi))
    margin = (TANK_LEVELS[1] - TANK_LEVELS[0] - TANK_WORKING) / 2
    low = served & in_tank_zone
    bottom = float(z[low].max()) + MIN_PRESSURE - TANK_LEVELS[0] - margin  # a first guess
    tz = np.flatnonzero(in_tank_zone)
    for _ in range(2):  # again if the head came out lower than the ground of a site
        sites, site_ground, tank_at = _tank_sites(layout, xy[tz], bottom, n_tanks, radius)
        tank_node = tz[tank_at]
        tank_flow = storage["flow"] / len(sites)
        sizing = _size(mains, tree, peak, demand.sum(axis=1), tank_node, tank_flow)
        hgl_low = _design_head(z[low], 0.5 * sizing.loss_peak[low])
        guess, bottom = bottom, hgl_low - TANK_LEVELS[0] - margin
        if (site_ground <= bottom).all() or bottom >= guess:
            break
    # the other zones hold the head their feeds (constant-pressure stations) keep at the peak
    zone_head = _zone_heads(mains, dma, zone, served, sizing.loss_peak)
    zone_head[tank_zone] = hgl_low

    wn = wntr.network.WaterNetworkModel()
    wn.name = f"virtual city {layout.seed} water supply"
    o = wn.options
    o.time.duration = 24 * 3600
    o.time.hydraulic_timestep = 900
    o.time.pattern_timestep = 3600
    o.time.report_timestep = 3600
    o.hydraulic.headloss = "H-W"
    o.hydraulic.inpfile_units = "LPS"
    for name, values in PATTERNS.items():
        wn.add_pattern(name, np.round(values, 4).tolist())
    j_names = [f"J{k + 1:06d}" for k in range(n)]
    p_names = [f"P{k + 1:06d}" for k in range(len(mains.edges))]
    for k in range(n):
        wn.add_junction(
            j_names[k], elevation=round(float(z[k]), 2), coordinates=tuple(np.round(xy[k], 3))
        )
        demands = wn.get_node(j_names[k]).demand_timeseries_list
        demands.clear()
        for c, cat in enumerate(cats):
            if demand[k, c] > 0:
                demands.append((float(demand[k, c]), cat, cat))
    for k, (a, c) in enumerate(mains.edges):
        wn.add_pipe(
            p_names[k],
            j_names[a],
            j_names[c],
            length=round(float(mains.length[k]), 2),
            diameter=float(sizing.diameter[k]),
            roughness=float(sizing.roughness[k]),
            initial_status="CLOSED" if closed[k] else "OPEN",
        )
    extra = _add_tanks(wn, sites, site_ground, tank_node, xy, j_names, storage, bottom, tank_flow)
    head = bottom + TANK_LEVELS[0] + margin + TANK_WORKING / 2  # the tanks' mid level
    head += float(np.mean(sizing.loss_avg[tank_node])) + 1.0  # and the way there
    from_tanks = zone[dma[sources]] == tank_zone
    share = sizing.source_average / sizing.source_average[from_tanks].sum()
    lifts = []
    for k, j in enumerate(sources, 1):
        # the plant's clear-water well; beside the others, a ground tank in the block corner
        centre = plant_xy[0] if k == 1 else xy[j] - 40.0
        well = float(layout.terrain.sample(centre)[0]) - 2.0
        flow = sizing.source_flow[k - 1]
        if zone[dma[j]] == tank_zone:  # fixed-speed pumps the tanks' level steers
            extra.append(_add_source(wn, k, centre, well, xy[j], j_names[j], flow, j))
            _add_pumps(
                wn,
                f"PU{k}",
                f"R{k}",
                f"PS{k}",
                q_tanks * share[k - 1],
                head - well,
                steep=k == 1,
            )
            lifts.append(round(head - well, 2))
        else:  # variable-speed pumps holding the zone's head at the outlet
            outlet = float(zone_head[zone[dma[j]]])
            extra.append(
                _add_source(wn, k, centre, well, xy[j], j_names[j], flow, j, outlet=outlet)
            )
            lift = outlet + STATION_MARGIN - well
            _add_pumps(wn, f"PU{k}", f"R{k}", f"PS{k}", flow, lift, steep=False)
            lifts.append(round(lift, 2))
    for k, st in enumerate(stations, 1):
        extra.append(_add_station(wn, k, st, mains, j_names, zone_head, zone, sizing))

    node_attrs, link_attrs = _model_attrs(wn, mains, dma, extra, layout)
    zone_ids = np.array([f"PZ-{k + 1}" for k in range(int(zone.max()) + 1)], dtype=object)
    nodes, links, dmas = _gis_features(
        layout,
        rng,
        mains,
        sizing,
        dma,
        inlets,
        closed,
        j_names,
        p_names,
        extra,
        b,
        b_node,
        b_demand,
    )
    notes = {
        "junctions": n,
        "pipes": len(mains.edges),
        "average_demand_m3s": round(q_avg, 4),
        "daily_demand_m3": round(q_avg * 86400),
        "storage_m3": round(storage["volume"] * STORAGE_MARGIN),
        "hgl_design_low_m": round(hgl_low, 2),
        "sources": len(sources),
        "pump_heads_m": lifts,
        "tanks": [
            {"floor": round(max(bottom, float(g)), 2), "ground": round(float(g), 2)}
            for g in site_ground
        ],
        "dmas": len(dmas),
        "pressure_zones": [
            {
                "zone": str(zone_ids[k]),
                "head_m": round(float(zone_head[k]), 2),
                "dmas": int((zone == k).sum()),
                "fed_by": "tanks"
                if k == tank_zone
                else "sources"
                if k in set(zone[dma[sources]].tolist())
                else "stations",
            }
            for k in range(len(zone_ids))
        ],
        "zone_stations": len(stations),
        "zone_boosters": sum(name.startswith("PUB") for name in wn.pump_name_list) // 3,
        "closed_boundary_pipes": int(closed.sum()),
        "unserved_street_nodes": mains.unserved,
        "service_connections": "GIS only: their demand is lumped at the junction they tap",
    }
    dmas["props"] = [
        {
            **props,
            "pressure_zone": str(zone_ids[zone[d]]),
            "zone_head": round(float(zone_head[zone[d]]), 2),
        }
        for d, props in enumerate(dmas["props"])
    ]
    return WaterPlan(wn, node_attrs, link_attrs, nodes, links, dmas, notes)


def _sources(xy: np.ndarray, demand: np.ndarray, plant: int, count: int) -> np.ndarray:
    """The junctions the sources feed: the plant's, and ``count - 1`` more at the centres of
    demand of the areas nearest them (a few rounds of demand-weighted k-means)."""
    chosen = [plant]
    reach = np.linalg.norm(xy - xy[plant], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(reach)))
        reach = np.minimum(reach, np.linalg.norm(xy - xy[chosen[-1]], axis=1))
    junctions = cKDTree(xy)
    for _ in range(8):
        owner = cKDTree(xy[chosen]).query(xy)[1]
        for i in range(1, len(chosen)):
            weight = np.where(owner == i, demand, 0.0)
            if weight.sum() > 0:
                centre = (xy * weight[:, None]).sum(axis=0) / weight.sum()
                chosen[i] = int(junctions.query(centre)[1])
    return np.array(list(dict.fromkeys(chosen)))


def _mains(layout: CityLayout, b_xy: np.ndarray) -> _Mains:
    """Mains under every street, except up the hill parks, above the pressure's reach."""
    streets, channel = layout.streets, layout.river.channel
    xy = corridor_nodes(streets, NETWORK)
    z = layout.terrain.sample(xy)
    served = np.zeros(len(xy), bool)
    served[_nearest(b_xy, xy, channel)] = True
    keep = served | (z <= z[served].max() + MIN_PRESSURE - 10.0)
    edges = streets.edges
    inner = keep[edges[:, 0]] & keep[edges[:, 1]]
    labels = _components(len(xy), edges[inner])
    keep &= labels == np.bincount(labels[served]).argmax()
    inner &= keep[edges[:, 0]]
    remap = -np.ones(len(xy), int)
    remap[keep] = np.arange(int(keep.sum()))
    e = remap[edges[inner]]
    return _Mains(
        xy[keep],
        z[keep],
        e,
        streets.street_class[inner].astype(str),
        streets.bridge[inner].astype(bool),
        np.linalg.norm(xy[keep][e[:, 0]] - xy[keep][e[:, 1]], axis=1),
        int((~keep).sum()),
    )


def _dma_cells(layout: CityLayout, mains: _Mains) -> np.ndarray:
    """District metered areas: cells of ``DMA_LINES`` street lines, split where not connected
    inside, small pieces merged into a neighbour, numbered from the south-west. Returns the DMA
    of each junction."""
    xy, edges = mains.xy, mains.edges
    n = len(xy)
    x0, y0 = layout.origin
    ix = ((xy[:, 0] - x0) // LOCAL_SPACING).astype(int) // DMA_LINES
    iy = ((xy[:, 1] - y0) // LOCAL_SPACING).astype(int) // DMA_LINES
    cell = ix * (iy.max() + 1) + iy
    inside = cell[edges[:, 0]] == cell[edges[:, 1]]
    label = _components(n, edges[inside])
    while True:
        sizes = np.bincount(label)
        small = np.flatnonzero((sizes > 0) & (sizes < MIN_DMA_JUNCTIONS))
        if len(small) == 0 or (sizes > 0).sum() == 1:
            break
        s = small[np.argmin(sizes[small])]
        la, lb = label[edges[:, 0]], label[edges[:, 1]]
        near = np.concatenate([lb[(la == s) & (lb != s)], la[(lb == s) & (la != s)]])
        label[label == s] = np.bincount(near).argmax()
    # number the DMAs from the south-west
    _, label = np.unique(label, return_inverse=True)
    k = int(label.max()) + 1
    centre = np.column_stack([np.bincount(label, weights=xy[:, i]) for i in (0, 1)])
    centre /= np.bincount(label)[:, None]
    rank = np.empty(k, int)
    rank[np.lexsort((centre[:, 0], np.round(centre[:, 1] / 500.0)))] = np.arange(k)
    return rank[label]


def _pressure_zones(mains: _Mains, dma: np.ndarray, served: np.ndarray) -> np.ndarray:
    """The pressure zone of each DMA. Where the demand junctions span more relief than one zone
    keeps within the service band (``ZONE_RELIEF``), the DMAs are banded by elevation: sorted by
    their median ground level, a new band opens where the band's lowest and highest junctions
    (5th and 95th percentiles of each DMA) would lie more than ``ZONE_RELIEF`` apart; a zone is a
    connected group of DMAs of one band. Zones are numbered from the lowest."""
    k = int(dma.max()) + 1
    z = mains.z
    if np.ptp(z[served]) <= ZONE_RELIEF:
        return np.zeros(k, int)
    lo, hi, mid = np.empty(k), np.empty(k), np.empty(k)
    for d, members in enumerate(
        np.split(np.argsort(dma, kind="stable"), np.cumsum(np.bincount(dma))[:-1])
    ):
        own = z[members[served[members]]] if served[members].any() else z[members]
        lo[d], mid[d], hi[d] = np.percentile(own, [5, 50, 95])
    band = np.empty(k, int)
    current, floor, top = -1, np.inf, -np.inf
    for d in np.argsort(mid, kind="stable"):
        if max(top, hi[d]) - min(floor, lo[d]) > ZONE_RELIEF or current < 0:
            current, floor, top = current + 1, lo[d], hi[d]
        else:
            floor, top = min(floor, lo[d]), max(top, hi[d])
        band[d] = current
    la, lb = dma[mains.edges[:, 0]], dma[mains.edges[:, 1]]
    same = (la != lb) & (band[la] == band[lb])
    label = _components(k, np.column_stack([la[same], lb[same]]))
    # number the zones by band, then by size
    key = np.column_stack(
        [np.bincount(label, weights=band) / np.bincount(label), -np.bincount(label)]
    )
    order = np.lexsort((key[:, 1], key[:, 0]))
    rank = np.empty(len(order), int)
    rank[order] = np.arange(len(order))
    return rank[label]


def _feeds(
    mains: _Mains, dma: np.ndarray, zone: np.ndarray, sources: np.ndarray, tank_zone: int
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int, int]], np.ndarray]:
    """How water reaches every DMA: each DMA but the sources' is fed over one or two inlets
    from DMAs nearer a source (shortest paths over the DMAs, a step into another pressure zone
    counting ``ZONE_STEP`` steps; nothing enters the tanks' zone from another). An inlet from
    another zone is a station beside the boundary pipe (a booster pumping up, or a
    pressure-reducing valve down); the other pipes across DMA boundaries are closed.

    Returns the inlets (pipe, DMA, feeding DMA, junction inside), the stations (pipe, DMA,
    feeding DMA, junction outside, junction inside), and the closed-pipe mask.
    """
    edges = mains.edges
    la, lb = dma[edges[:, 0]], dma[edges[:, 1]]
    k = int(dma.max()) + 1
    boundary = np.flatnonzero(la != lb)
    u, v = np.r_[la[boundary], lb[boundary]], np.r_[lb[boundary], la[boundary]]
    step = np.where(zone[u] == zone[v], 1.0, ZONE_STEP)
    allowed = (zone[v] != tank_zone) | (zone[u] == tank_zone)
    pairs = np.unique(np.column_stack([u, v, step])[allowed], axis=0)
    graph = sparse.csr_matrix(
        (pairs[:, 2], (pairs[:, 0].astype(int), pairs[:, 1].astype(int))), shape=(k, k)
    )
    dist = dijkstra(graph, indices=np.unique(dma[sources]), min_only=True)
    if not np.isfinite(dist).all():
        raise RuntimeError("water network: DMAs not reachable from the sources")
    strength = np.array([{"primary": 3, "secondary": 2}.get(c, 1) for c in mains.cls])
    inlets: list[tuple[int, int, int, int]] = []
    stations: list[tuple[int, int, int, int, int]] = []
    for d in np.argsort(dist):
        if dist[d] == 0:
            continue
        mine_a = la[boundary] == d
        other = np.where(mine_a, lb[boundary], la[boundary])
        into = (mine_a | (lb[boundary] == d)) & (dist[other] < dist[d])
        into &= (zone[d] != tank_zone) | (zone[other] == tank_zone)
        cand = boundary[into]
        up = np.where(la[cand] == d, lb[cand], la[cand])
        across = zone[up] != zone[d]
        reach = dist[up] + np.where(across, ZONE_STEP, 1.0)
        order = np.lexsort(
            (mains.length[cand], -strength[cand], across & mains.bridge[cand], reach)
        )
        chosen = [order[0]]
        rest = [i for i in order[1:] if not across[i]]
        rest = [i for i in rest if up[i] != up[order[0]]] or rest
        if rest:
            chosen.append(rest[0])
        for i in chosen:
            e = int(cand[i])
            inner, outer = (edges[e, 0], edges[e, 1]) if la[e] == d else (edges[e, 1], edges[e, 0])
            if across[i]:
                stations.append((e, int(d), int(up[i]), int(outer), int(inner)))
            else:
                inlets.append((e, int(d), int(up[i]), int(inner)))
    closed = la != lb
    closed[[e for e, *_ in inlets]] = False
    return inlets, stations, closed


@dataclass
class _Tree:
    """The shortest-path tree from the sources over the open mains and the stations."""

    dist: np.ndarray
    pred: np.ndarray
    origin: np.ndarray  # the source junction each junction is fed from
    edge: np.ndarray  # the main each junction is fed over; -1 - station where a station
    order: np.ndarray  # the junctions but the sources, farthest first
    sources: np.ndarray


def _tree(
    mains: _Mains,
    closed: np.ndarray,
    stations: list[tuple[int, int, int, int, int]],
    sources: np.ndarray,
) -> _Tree:
    """Shortest paths from the sources over the open mains (favouring the arterials) and the
    stations (from the feeding zone into the fed one only)."""
    n, edges = len(mains.xy), mains.edges
    weight = mains.length * np.array([_CLASS_WEIGHT[c] for c in mains.cls])
    oe, ow = edges[~closed], weight[~closed]
    st = np.array([(a, c, e) for e, _, _, a, c in stations], dtype=int).reshape(-1, 3)
    rows = np.r_[oe[:, 0], oe[:, 1], st[:, 0]]
    cols = np.r_[oe[:, 1], oe[:, 0], st[:, 1]]
    graph = sparse.csr_matrix((np.r_[ow, ow, weight[st[:, 2]]], (rows, cols)), shape=(n, n))
    dist, pred, origin = dijkstra(graph, indices=sources, return_predecessors=True, min_only=True)
    if not np.isfinite(dist).all():
        raise RuntimeError("water network: junctions not reachable from the sources")
    key = np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])
    sorter = np.argsort(key)
    v = np.flatnonzero(~np.isin(np.arange(n), sources))
    vkey = np.minimum(v, pred[v]) * n + np.maximum(v, pred[v])
    tree_edge = np.full(n, -1)
    tree_edge[v] = sorter[np.searchsorted(key, vkey, sorter=sorter)]
    for i, (a, c, _) in enumerate(st):
        if pred[c] == a:  # over the station, not the closed pipe beside it
            tree_edge[c] = -1 - i
    return _Tree(dist, pred, origin, tree_edge, v[np.argsort(-dist[v])], sources)


def _tank_sites(
    layout: CityLayout, xy: np.ndarray, top: float, n_tanks: int, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sites of the tanks (of ``radius``): in parks, on the highest ground not above ``top``
    (the tank floor that the pressures need) and not more than ``MAX_TOWER`` below it, spread
    over the city where the hills allow, else side by side; their ground and the junction each
    is fed from. A site lower than ``top`` gets a tower."""
    parks = layout.blocks.geometry[layout.blocks["land_use"] == "park"].to_numpy()
    room = shapely.union_all(shapely.buffer(parks, -radius - 5.0))
    step = max(20.0, layout.side / 500.0)
    x0, y0 = layout.origin
    gx, gy = np.meshgrid(
        np.arange(x0, x0 + layout.side, step), np.arange(y0, y0 + layout.side, step)
    )
    cand = np.column_stack([gx.ravel(), gy.ravel()])
    if not room.is_empty:
        cand = cand[shapely.contains_xy(room, cand[:, 0], cand[:, 1])]
        cand = cand[cKDTree(xy).query(cand)[0] <= 250.0]  # near the network
    if room.is_empty or len(cand) == 0:  # no park large enough: at the street corners
        cand = xy - 20.0
    ground = layout.terrain.sample(cand)
    low_enough = ground <= top
    high_enough = low_enough & (ground >= top - MAX_TOWER)
    if high_enough.any():
        pool = np.flatnonzero(high_enough)
    elif low_enough.any():  # no hill high enough: one tower on the highest ground
        pool = np.flatnonzero(low_enough)[np.argmax(ground[low_enough])][None]
    else:  # every park is above the head: the lowest
        pool = np.argmin(ground)[None]
    pool = pool[np.argsort(-ground[pool], kind="stable")]
    chosen: list[int] = []
    for apart in (max(600.0, layout.side / np.sqrt(n_tanks) / 1.5), 2 * radius + 10.0):
        for i in range(len(pool)):
            if len(chosen) == n_tanks:
                break
            gap = np.linalg.norm(cand[pool[chosen]] - cand[pool[i]], axis=1) if chosen else [apart]
            if i not in chosen and np.min(gap) >= apart:
                chosen.append(i)
    sites = pool[np.array(chosen, dtype=int)]
    return cand[sites], ground[sites], _nearest(cand[sites], xy, layout.river.channel)


def _size(
    mains: _Mains,
    tree: _Tree,
    peak: np.ndarray,
    average: np.ndarray,
    tank_node: np.ndarray,
    tank_flow: float,
) -> _Sizing:
    """Diameters from the demand at the peak hour (or at night, with the tanks filling, where
    that is more) accumulated along the shortest-path tree from the sources; head losses along
    that tree, from the source or the station that feeds each junction's zone."""
    n, edges = len(mains.xy), mains.edges
    pred, order, tree_edge = tree.pred, tree.order, tree.edge
    # the peak hour, and the night when the tanks fill (demand at the lowest hour and the
    # tanks' inflow), and the average day for the head losses
    load = peak.copy()
    night = average * min(float(p.min()) for p in PATTERNS.values())
    np.add.at(night, tank_node, tank_flow)
    avg = average.copy()
    for child, parent in zip(order.tolist(), pred[order].tolist(), strict=True):
        load[parent] += load[child]
        night[parent] += night[child]
        avg[parent] += avg[child]
    load = np.maximum(load, night)
    main = order[tree_edge[order] >= 0]
    e_peak = np.zeros(len(edges))
    e_avg = np.zeros(len(edges))
    e_peak[tree_edge[main]] = load[main]
    e_avg[tree_edge[main]] = avg[main]

    floor = np.array([MIN_DN[c] for c in mains.cls])
    floor = np.where(_dangling(n, edges) & (mains.cls == "residential"), DN[0], floor)
    diameter = np.maximum(_dn_for(e_peak), floor)
    roughness = np.array([HAZEN_WILLIAMS[x] for x in _material(diameter)])
    h_peak = np.r_[_hw_loss(e_peak, diameter, mains.length, roughness), 0.0]
    h_avg = np.r_[_hw_loss(e_avg, diameter, mains.length, roughness), 0.0]
    via = np.where(tree_edge >= 0, tree_edge, len(edges))  # a station starts afresh
    restart = (tree_edge < 0).astype(float)
    loss_peak = np.zeros(n)
    loss_avg = np.zeros(n)
    for child in order[::-1].tolist():
        keep = 1.0 - restart[child]
        loss_peak[child] = keep * loss_peak[pred[child]] + h_peak[via[child]]
        loss_avg[child] = keep * loss_avg[pred[child]] + h_avg[via[child]]
    return _Sizing(
        diameter, roughness, loss_peak, loss_avg, load[tree.sources], avg[tree.sources], load
    )


@dataclass
class _Extra:
    """A pipe added beside the street mains (tank connection, source main): its name, the
    street junction it joins, the node at its other end and where that is."""

    pipe: str
    junction: int
    node: str
    far: np.ndarray
    diameter: float
    role: str
    feeder: int = -1  # a station's: the DMA it draws from


def _add_tanks(
    wn: wntr.network.WaterNetworkModel,
    sites: np.ndarray,
    ground: np.ndarray,
    tank_node: np.ndarray,
    xy: np.ndarray,
    j_names: list[str],
    storage: dict[str, float],
    bottom: float,
    tank_flow: float,
) -> list[_Extra]:
    """Tanks sharing the balancing storage, with levels so the design day stays between their
    minimum and maximum; each joined to its junction by a pipe."""
    area = STORAGE_MARGIN * storage["volume"] / TANK_WORKING  # m2 of all tanks together
    margin = (TANK_LEVELS[1] - TANK_LEVELS[0] - TANK_WORKING) / 2
    swing = TANK_WORKING / STORAGE_MARGIN
    start = TANK_LEVELS[0] + margin + (TANK_WORKING - swing) / 2 + storage["start"] / area
    out = []
    for i, (site, g, j) in enumerate(zip(np.round(sites, 3), ground, tank_node, strict=True), 1):
        floor = max(bottom, float(g))  # on a tower where the ground is lower than the floor
        wn.add_tank(
            f"T{i}",
            elevation=round(floor, 2),
            init_level=round(max(start - (floor - bottom), TANK_LEVELS[0] + 0.5), 2),
            min_level=TANK_LEVELS[0],
            max_level=TANK_LEVELS[1],
            diameter=round(float(np.sqrt(4 * area / len(sites) / np.pi)), 1),
            coordinates=tuple(site),
        )
        diameter = float(max(_dn_for(np.array([1.5 * tank_flow]))[0], 0.3))
        wn.add_pipe(
            f"PT{i}",
            j_names[j],
            f"T{i}",
            length=round(max(float(np.linalg.norm(site - xy[j])), 1.0), 2),
            diameter=diameter,
            roughness=HAZEN_WILLIAMS[str(_material(np.array([diameter]))[0])],
        )
        out.append(_Extra(f"PT{i}", int(j), f"T{i}", site, diameter, "tank"))
    return out


def _add_source(
    wn: wntr.network.WaterNetworkModel,
    k: int,
    centre: np.ndarray,
    well: float,
    junction_xy: np.ndarray,
    junction: str,
    flow: float,
    index: int,
    outlet: float | None = None,
) -> _Extra:
    """Source ``k``: its well (a reservoir at its water level) and its pumping station's
    discharge header, joined to the network by the source main. With an ``outlet`` head the
    station holds that head at its outlet (variable-speed pumps, modelled as a
    pressure-reducing valve after the pumps)."""
    towards = junction_xy - centre
    reach = max(float(np.linalg.norm(towards)), 2.0)
    header = np.round(centre + towards / reach * min(30.0, reach / 2), 3)  # it may span a street
    wn.add_reservoir(f"R{k}", base_head=round(well, 2), coordinates=tuple(np.round(centre, 3)))
    wn.add_junction(f"PS{k}", elevation=round(well - 2.0, 2), coordinates=tuple(header))
    diameter = float(_dn_for(np.array([flow]))[0])
    start = f"PS{k}"
    if outlet is not None:
        start = f"PO{k}"
        at = np.round(header + towards / reach * min(3.0, reach / 4), 3)
        _add_prv(wn, f"VS{k}", f"PS{k}", start, at, well - 2.0, outlet, diameter)
    wn.add_pipe(
        f"PM{k}",
        start,
        junction,
        length=round(max(float(np.linalg.norm(header - junction_xy)), 1.0), 2),
        diameter=diameter,
        roughness=HAZEN_WILLIAMS[str(_material(np.array([diameter]))[0])],
    )
    return _Extra(f"PM{k}", index, start, header, diameter, "source")


def _add_prv(
    wn: wntr.network.WaterNetworkModel,
    name: str,
    upstream: str,
    node: str,
    at: np.ndarray,
    elevation: float,
    head: float,
    diameter: float,
) -> None:
    """A pressure-reducing valve from ``upstream`` into a new junction ``node`` at ``at``,
    holding ``head`` there."""
    wn.add_junction(node, elevation=round(elevation, 2), coordinates=tuple(np.round(at, 3)))
    wn.add_valve(
        name,
        upstream,
        node,
        diameter=diameter,
        valve_type="PRV",
        initial_setting=round(max(head - elevation, 0.0), 2),
    )


def _add_pumps(
    wn: wntr.network.WaterNetworkModel,
    name: str,
    suction: str,
    header: str,
    q: float,
    head: float,
    *,
    steep: bool,
) -> None:
    """Two duty pumps and a standby in parallel from ``suction`` to the discharge ``header``,
    on a head curve through the duty point (half of ``q`` at ``head``). The plant's curve is
    ``steep`` (shut-off at 1.3 x the duty head, 0.6 x at 1.6 x the duty flow), so the tanks'
    level steers it; the booster stations' curves are flat (1.12 x, 0.76 x at twice the duty
    flow), as variable-speed pumps holding their outlet pressure run."""
    q = q / 2
    curve = name.replace("PU", "PUMP", 1)
    shape = (
        [(0.0, 1.3), (1.0, 1.0), (1.6, 0.6)] if steep else [(0.0, 1.12), (1.0, 1.0), (2.0, 0.76)]
    )
    wn.add_curve(curve, "HEAD", [(f * q, h * head) for f, h in shape])
    well = np.array(wn.get_node(suction).coordinates)
    end = np.array(wn.get_node(header).coordinates)
    along = (end - well) / max(float(np.linalg.norm(end - well)), 1e-9)
    across = np.array([-along[1], along[0]])
    for i, offset in enumerate((-4.0, 0.0, 4.0), 1):
        pump = f"{name}-{i}"
        wn.add_pump(
            pump, suction, header, "HEAD", curve, initial_status="CLOSED" if i == 3 else "OPEN"
        )
        if offset:
            wn.get_link(pump).vertices = [tuple(np.round((well + end) / 2 + offset * across, 3))]


def _add_station(
    wn: wntr.network.WaterNetworkModel,
    k: int,
    station: tuple[int, int, int, int, int],
    mains: _Mains,
    j_names: list[str],
    zone_head: np.ndarray,
    zone: np.ndarray,
    sizing: _Sizing,
) -> _Extra:
    """Station ``k`` feeding a DMA of one pressure zone from a DMA of another, in a chamber
    on the (closed) street main between them: from a higher zone a pressure-reducing valve;
    from a lower one a booster (two duty pumps and a standby) before it, the pair standing for
    variable-speed pumps that hold the zone's head at the outlet. Its outlet main runs on along
    the street to the junction inside."""
    _, d, up, outer, inner = station
    a, c = mains.xy[outer], mains.xy[inner]
    suction, outlet = a + STATION_AT[0] * (c - a), a + STATION_AT[1] * (c - a)
    ground = float(np.interp(STATION_AT[1], [0.0, 1.0], [mains.z[outer], mains.z[inner]]))
    head = float(zone_head[zone[d]])
    flow = float(sizing.through[inner])
    diameter = float(max(_dn_for(np.array([flow]))[0], 0.15))
    supply = float(zone_head[zone[up]] - sizing.loss_peak[outer])  # at the peak hour
    upstream = j_names[outer]
    if supply < head + STATION_MARGIN:  # a booster, then the valve holding the zone's head
        upstream = f"BS{k}"
        wn.add_junction(
            upstream, elevation=round(ground - 2.0, 2), coordinates=tuple(np.round(suction, 3))
        )
        lift = head + STATION_MARGIN - supply
        _add_pumps(wn, f"PUB{k}", j_names[outer], upstream, flow, lift, steep=False)
    _add_prv(wn, f"VB{k}", upstream, f"BO{k}", outlet, ground - 2.0, head, diameter)
    wn.add_pipe(
        f"PB{k}",
        f"BO{k}",
        j_names[inner],
        length=round(max(float(np.linalg.norm(c - outlet)), 1.0), 2),
        diameter=diameter,
        roughness=HAZEN_WILLIAMS[str(_material(np.array([diameter]))[0])],
    )
    return _Extra(f"PB{k}", inner, f"BO{k}", outlet, diameter, "station", up)


def _zone_heads(
    mains: _Mains, dma: np.ndarray, zone: np.ndarray, served: np.ndarray, loss: np.ndarray
) -> np.ndarray:
    """The head each pressure zone's feeds hold (``_design_head`` without a tank's swing)."""
    zj = zone[dma]
    heads = np.empty(int(zone.max()) + 1)
    for k in range(len(heads)):
        mine = (zj == k) & served
        if mine.any():
            heads[k] = _design_head(mains.z[mine], loss[mine], swing=0.0)
        else:  # no demand: enough for the highest junction
            heads[k] = float(mains.z[zj == k].max()) + MIN_PRESSURE
    return heads


def _dma_ids(k: int) -> np.ndarray:
    width = max(2, len(str(k)))
    return np.array([f"{PREFIX}DMA-{i + 1:0{width}d}" for i in range(k)], dtype=object)


def _model_attrs(
    wn: wntr.network.WaterNetworkModel,
    mains: _Mains,
    dma: np.ndarray,
    extra: list[_Extra],
    layout: CityLayout,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed attributes of the model's features that EPANET does not carry: the DMA, ground
    (cover) and invert levels, depth, material, and each pipe's role (``main`` along a street,
    else the extra pipe's role), which the bundle puts into ``props``."""
    cover = cover_depth(NETWORK)
    dma_ids = _dma_ids(int(dma.max()) + 1)
    names = list(wn.node_name_list)
    ground = layout.terrain.sample(np.array([wn.get_node(x).coordinates for x in names]))
    at = {name: i for i, name in enumerate(names)}
    pipes = list(wn.pipe_name_list)
    start = np.array([at[wn.get_link(p).start_node_name] for p in pipes])
    end = np.array([at[wn.get_link(p).end_node_name] for p in pipes])
    diameter = np.array([wn.get_link(p).diameter for p in pipes])
    widest = np.zeros(len(names))
    np.maximum.at(widest, start, diameter)
    np.maximum.at(widest, end, diameter)
    zone = np.full(len(names), None, dtype=object)
    n = len(mains.xy)
    zone[:n] = dma_ids[dma]  # the street junctions come first, in order
    for x in extra:
        if x.role in ("tank", "station"):  # a station's outlet and suction header: the DMA fed
            for node in (x.node, x.node.replace("BO", "BS", 1)):
                if node in at:
                    zone[at[node]] = dma_ids[dma[x.junction]]
    is_junction = np.array([wn.get_node(x).node_type == "Junction" for x in names])
    role = {x.pipe: x.role for x in extra}  # the rest are street mains
    depth = np.where(is_junction & (widest > 0), cover + widest, np.nan)
    nodes = pd.DataFrame(
        {
            "zone_id": zone,
            "cover_level": np.round(ground, 2),
            "invert_level": np.round(ground - depth, 2),
            "depth": np.round(depth, 2),
        },
        index=names,
    )
    links = pd.DataFrame(
        {
            "material": _material(diameter),
            "depth": cover,
            "invert_from": np.round(ground[start] - cover - diameter, 2),
            "invert_to": np.round(ground[end] - cover - diameter, 2),
            "role": [role.get(p, "main") for p in pipes],
        },
        index=pipes,
    )
    return nodes, links


def _frame(columns: dict[str, Any], geometry: np.ndarray) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=geometry, crs=CRS)


def _gis_features(
    layout: CityLayout,
    rng: np.random.Generator,
    mains: _Mains,
    sizing: _Sizing,
    dma: np.ndarray,
    inlets: list[tuple[int, int, int, int]],
    closed: np.ndarray,
    j_names: list[str],
    p_names: list[str],
    extra: list[_Extra],
    b: gpd.GeoDataFrame,
    b_node: np.ndarray,
    b_demand: np.ndarray,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Valves, hydrants, inlet meters and service connections (utility nodes), service pipes
    (utility links) and the DMA polygons."""
    xy, edges, terrain = mains.xy, mains.edges, layout.terrain
    cover = cover_depth(NETWORK)
    dma_ids = _dma_ids(int(dma.max()) + 1)
    jid = np.array([PREFIX + x for x in j_names], dtype=object)
    pid = np.array([PREFIX + x for x in [*p_names, *(x.pipe for x in extra)]], dtype=object)
    m = len(edges)

    # isolation valves, "N-1": on every branch of a junction but one (chosen at random), and
    # always at the junction end of the tank and source pipes; a closed valve on every closed
    # DMA boundary pipe
    end_pipe = np.r_[np.arange(m), np.arange(m), m + np.arange(len(extra))]
    end_node = np.r_[edges[:, 0], edges[:, 1], [x.junction for x in extra]].astype(int)
    far = np.vstack([xy[edges[:, 1]], xy[edges[:, 0]], *[x.far[None, :] for x in extra]])
    diameter = np.r_[sizing.diameter, sizing.diameter, [x.diameter for x in extra]]
    rank = rng.random(len(end_node))
    rank[2 * m :] = -1.0
    order = np.lexsort((rank, end_node))
    last = np.r_[end_node[order][1:] != end_node[order][:-1], True]
    valve = np.ones(len(end_node), bool)
    valve[order[last]] = False
    valve[2 * m :] = True
    shut = np.zeros(len(end_node), bool)
    shut[np.flatnonzero(closed)] = True
    valve |= shut
    k = np.flatnonzero(valve)
    span = far[k] - xy[end_node[k]]
    length = np.linalg.norm(span, axis=1)
    at = xy[end_node[k]] + span * (np.minimum(3.0, 0.2 * length) / length)[:, None]
    ground = terrain.sample(at)
    valves = _frame(
        {
            "id": [f"{PREFIX}V{i + 1:07d}" for i in range(len(k))],
            "class": "valve",
            "network": NETWORK,
            "name": [f"V{i + 1:07d}" for i in range(len(k))],
            "elevation": np.round(ground, 2),
            "cover_level": np.round(ground, 2),
            "depth": np.round(cover + diameter[k], 2),
            "link_id": pid[end_pipe[k]],
            "zone_id": dma_ids[dma[end_node[k]]],
            "props": [
                {
                    "node": jid[j],
                    "role": "boundary" if s else "isolation",
                    "status": "closed" if s else "open",
                    "diameter": float(d),
                }
                for j, s, d in zip(end_node[k], shut[k], diameter[k], strict=True)
            ],
        },
        shapely.points(at),
    )

    # hydrants every 100 m along each street line (the mains run straight along the lattice),
    # at chainages 50, 150, 250 ... m from the city's edge; none on bridges
    on = np.flatnonzero(~mains.bridge)
    a, c = xy[edges[on, 0]], xy[edges[on, 1]]
    axis = (np.abs(c[:, 1] - a[:, 1]) > np.abs(c[:, 0] - a[:, 0])).astype(int)
    lo = np.minimum(a, c)[np.arange(len(on)), axis] - np.array(layout.origin)[axis]
    hi = np.maximum(a, c)[np.arange(len(on)), axis] - np.array(layout.origin)[axis]
    half = HYDRANT_SPACING / 2
    first = np.floor((lo - half) / HYDRANT_SPACING).astype(int) + 1
    count = np.maximum(np.ceil((hi - half) / HYDRANT_SPACING).astype(int) - first, 0)
    h_pipe = np.repeat(on, count)
    nth = np.arange(len(h_pipe)) - np.repeat(np.cumsum(count) - count, count)
    chainage = half + (np.repeat(first, count) + nth) * HYDRANT_SPACING
    t = (chainage - np.repeat(lo, count)) / np.repeat(hi - lo, count)
    start = np.repeat(
        np.where(a[np.arange(len(on)), axis] <= c[np.arange(len(on)), axis], 0, 1), count
    )
    t = np.where(start == 0, t, 1.0 - t)
    h_xy = xy[edges[h_pipe, 0]] + (xy[edges[h_pipe, 1]] - xy[edges[h_pipe, 0]]) * t[:, None]
    nearer = np.where(t < 0.5, edges[h_pipe, 0], edges[h_pipe, 1])
    ground = terrain.sample(h_xy)
    hydrants = _frame(
        {
            "id": [f"{PREFIX}H{i + 1:07d}" for i in range(len(h_pipe))],
            "class": "hydrant",
            "network": NETWORK,
            "name": [f"H{i + 1:07d}" for i in range(len(h_pipe))],
            "elevation": np.round(ground, 2),
            "cover_level": np.round(ground, 2),
            "link_id": pid[h_pipe],
            "zone_id": dma_ids[dma[nearer]],
            "props": [{"node": jid[j]} for j in nearer],
        },
        shapely.points(h_xy),
    )

    # flow meters: on every DMA inlet, just inside the DMA, and on the source main
    feeds = [
        (e, d, u, j, xy[edges[e, 1] if edges[e, 0] == j else edges[e, 0]]) for e, d, u, j in inlets
    ]
    feeds += [
        (m + i, int(dma[x.junction]), x.feeder, x.junction, x.far)
        for i, x in enumerate(extra)
        if x.role in ("source", "station")
    ]
    m_xy = np.array(
        [xy[j] + (f - xy[j]) * min(8.0 / np.linalg.norm(f - xy[j]), 0.4) for _, _, _, j, f in feeds]
    )
    ground = terrain.sample(m_xy)
    meter_ids = [f"{PREFIX}M{i + 1:04d}" for i in range(len(feeds))]
    meters = _frame(
        {
            "id": meter_ids,
            "class": "meter",
            "network": NETWORK,
            "name": [x[len(PREFIX) :] for x in meter_ids],
            "elevation": np.round(ground, 2),
            "cover_level": np.round(ground, 2),
            "link_id": [pid[e] for e, *_ in feeds],
            "zone_id": [dma_ids[d] for _, d, *_ in feeds],
            "props": [
                {
                    "node": jid[j],
                    "measures": "flow",
                    "dma": dma_ids[d],
                    "from": dma_ids[u] if u >= 0 else "source",
                }
                for _, d, u, j, _ in feeds
            ],
        },
        shapely.points(m_xy),
    )

    # a service connection at every building, on its footprint towards the junction it taps
    taps = shapely.points(xy[b_node])
    s_xy = shapely.get_coordinates(shapely.shortest_line(b.geometry.to_numpy(), taps))[0::2]
    ground = terrain.sample(s_xy)
    sc_ids = np.array([f"{PREFIX}SC{i + 1:07d}" for i in range(len(b))], dtype=object)
    connections = _frame(
        {
            "id": sc_ids,
            "class": "service_connection",
            "network": NETWORK,
            "name": [x[len(PREFIX) :] for x in sc_ids],
            "elevation": np.round(ground, 2),
            "cover_level": np.round(ground, 2),
            "depth": SERVICE_COVER,
            "building_id": b["id"].to_numpy(),
            "zone_id": dma_ids[dma[b_node]],
            "props": [
                {"junction": jid[j], "average_demand": float(q), "in_hydraulic_model": False}
                for j, q in zip(b_node, b_demand, strict=True)
            ],
        },
        shapely.points(s_xy),
    )
    peak = b_demand * max(v.max() for v in PATTERNS.values()) * 1.5  # a building peaks sharper
    service_dn = SERVICE_DN[
        np.minimum(
            np.searchsorted(SERVICE_DN, np.sqrt(4 * peak / (np.pi * 1.5))), len(SERVICE_DN) - 1
        )
    ]
    lengths = np.linalg.norm(xy[b_node] - s_xy, axis=1)
    service = _frame(
        {
            "id": [f"{PREFIX}SP{i + 1:07d}" for i in range(len(b))],
            "class": "service_pipe",
            "network": NETWORK,
            "name": [f"SP{i + 1:07d}" for i in range(len(b))],
            "from_node": sc_ids,
            "to_node": jid[b_node],
            "diameter": service_dn,
            "length": np.round(lengths, 2),
            "material": "PE100",
            "depth": SERVICE_COVER,
            "props": [{"building_id": x} for x in b["id"]],
        },
        shapely.linestrings(np.stack([s_xy, xy[b_node]], axis=1)),
    )

    # the DMAs: the street lattice's cells around their junctions
    half = LOCAL_SPACING / 2
    squares = shapely.box(xy[:, 0] - half, xy[:, 1] - half, xy[:, 0] + half, xy[:, 1] + half)
    feeds_of: dict[int, list[int]] = {}
    for i, (_, d, *_) in enumerate(feeds):
        feeds_of.setdefault(d, []).append(i)
    residents = np.bincount(
        dma[b_node], weights=b["residents"].to_numpy(float), minlength=len(dma_ids)
    )
    demand = np.bincount(dma[b_node], weights=b_demand, minlength=len(dma_ids))
    polygons = [shapely.union_all(squares[dma == d]) for d in range(len(dma_ids))]
    dmas = _frame(
        {
            "id": dma_ids,
            "class": "dma",
            "name": [f"DMA {x.split('-')[-1]}" for x in dma_ids],
            "code": [x[len(PREFIX) :] for x in dma_ids],
            "network": NETWORK,
            "population": residents.round().astype(int),
            "area": np.round(shapely.area(polygons), 1),
            "props": [
                {
                    "inlets": [meters["link_id"].iloc[i] for i in feeds_of[d]],
                    "meters": [meter_ids[i] for i in feeds_of[d]],
                    "junctions": int((dma == d).sum()),
                    "connections": int((dma[b_node] == d).sum()),
                    "average_demand": round(float(demand[d]), 6),
                }
                for d in range(len(dma_ids))
            ],
        },
        np.array(polygons, dtype=object),
    )
    nodes = gpd.GeoDataFrame(
        pd.concat([valves, hydrants, meters, connections], ignore_index=True), crs=CRS
    )
    return nodes, service, dmas


def _design_head(z: np.ndarray, loss: np.ndarray, swing: float = TANK_WORKING) -> float:
    """The head at the tanks' lowest working level (or, with no ``swing``, the head a station
    holds): enough for the highest demand junction to keep the minimum pressure at the peak
    hour; where the zone's relief is more than the band spans, the head that keeps the most
    junctions within the band (and none below ``LEAST_PRESSURE``)."""
    need = z + loss
    full = float((need + MIN_PRESSURE).max())
    heads = np.arange(float((need + LEAST_PRESSURE).max()), full + 0.25, 0.25)
    low = heads[:, None] - need[None, :]  # peak hour, lowest tank level
    high = heads[:, None] + swing - z[None, :]  # night, highest tank level
    share = ((low >= MIN_PRESSURE) & (high <= MAX_PRESSURE)).mean(axis=1)
    if share[-1] >= share.max() - 1e-9:
        return full
    return float(heads[np.argmax(share)])


def _storage(total: np.ndarray) -> dict[str, float]:
    """Balancing storage for a day of demand against a steady supply of the daily average:
    the volume (m3) the tanks must hold, the largest in- or outflow (m3/s), and where the day
    starts within the stored volume (m3 above the lowest point)."""
    hourly = sum(t * PATTERNS[c] for t, c in zip(total, PATTERNS, strict=True))
    surplus = np.concatenate([[0.0], np.cumsum((hourly.mean() - hourly) * 3600.0)])
    return {
        "volume": float(surplus.max() - surplus.min()),
        "flow": float(np.abs(hourly.mean() - hourly).max()),
        "start": float(-surplus.min()),
    }


# -- into the twin, and the check ------------------------------------------------------------
def water_bundle(layout: CityLayout, plan: WaterPlan) -> ImportBundle:
    """The plan as model features: the EPANET model's junctions, tanks, reservoir, pipes and
    pumps through the EPANET adapter (with the document ``network/water_supply`` that
    ``write_epanet`` exports), then the GIS-only nodes, service pipes and DMAs."""
    source = f"citytwin.synth (virtual city) seed={layout.seed} area={layout.area_km2:g} km2"
    bundle = epanet_bundle(
        plan.wn, layout.crs, source=f"{source} water supply", network_name=NETWORK, id_prefix=PREFIX
    )
    for layer_name, attrs in (
        ("utility_nodes", plan.node_attrs),
        ("utility_links", plan.link_attrs),
    ):
        frame = bundle.layers[layer_name]
        for column in attrs.columns.drop("role", errors="ignore"):
            frame[column] = frame["name"].map(attrs[column])
    links = bundle.layers["utility_links"]
    role = links["name"].map(plan.link_attrs["role"])
    links["props"] = [
        {**p, "role": r} if isinstance(r, str) else p
        for p, r in zip(links["props"], role, strict=True)
    ]
    bundle.add("utility_nodes", plan.nodes)
    bundle.add("utility_links", plan.links)
    bundle.add("zones", plan.dmas)
    return bundle


def water_check(wn: wntr.network.WaterNetworkModel) -> WaterCheck:
    """Run EPANET (through wntr) over the model's duration and sum up the pressures at the
    demand junctions and the tank levels."""
    results = run_epanet(wn)
    demand_nodes = [
        name
        for name, node in wn.junctions()
        if any(d.base_value > 0 for d in node.demand_timeseries_list)
    ]
    pressure = results.node["pressure"][demand_nodes]
    tanks = list(wn.tank_name_list)
    levels = results.node["head"][tanks] - [wn.get_node(t).elevation for t in tanks]
    values = pressure.to_numpy()
    return WaterCheck(
        pressure,
        levels,
        float(((values >= 20.0) & (values <= 60.0)).mean()),
        float(values.min()),
        float(values.max()),
    )

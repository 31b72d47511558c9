"""The virtual city's drainage: separate foul and storm sewers, combined sewers in the old town.

Every network is a tree of pipes under the streets (bridges carry no gravity sewers): a manhole
at each street node of the network's corridor and between them at most ``MANHOLE_SPACING``
apart, so that every street has its sewer; each manhole's one outgoing pipe runs towards the
catchment's sink, chosen by a shortest-path tree that makes climbing expensive (so the flow
follows the terrain). The sinks: a pumping station on the river bank at a street corner in each
stretch of it (``SINK_SPACING``), and for the storm sewers the creeks (河涌, ``layout.creeks``)
that cross the town to the river: an outfall with a flap gate through the creek's wall beside
each bridge, where the sewers can be expected to reach it above the creek's normal level. Where
a storm sewer would still reach its creek below that level, a drainage pumping station beside
the creek pumps into it instead (one for each ``CREEK_PUMP_SPACING`` of the creek's bank; the
other such outfalls are given up and their catchments drain to the neighbours). The creeks keep
every storm catchment small: no conduit needs more than a 3.0 × 3.0 m box culvert (the largest
standard section here; any that would is listed in ``notes["conduits_over_capacity"]``).
Pipes are sized from the upstream ends down:

- storm (and the rain part of combined): the rational method, Q = ψ·q·F, with the Guangzhou
  storm formula for P = 2 years at t = 5 min inlet time + the flow time in the pipes above
  (counted at the flood wave's speed, 1.5 × the full-bore velocity), and peak runoff
  coefficients from the blocks' impervious shares (0.95 paved, 0.45 green: what the model's
  SWMM surfaces give under the design storm's peak);
- foul: 200 L per resident and 50 L per worker a day, times the peak factor Kz = 2.7/Q^0.11
  (Q in L/s, held to 1.3–2.3: the usual fit of GB 50014's table), at most 60 % full;

to the smallest standard DN 300–2000 (then box culverts, RECT_CLOSED) whose full flow at the
pipe's slope carries it, never smaller than any pipe above. Each street edge places its sewers
in the band its other lines leave (``citytwin.synth.corridors``) from the widths of the pipes
laid there, the design repeated until every pipe fits the width it was placed for (the tree and
catchments don't move with it); conduits wider than their band are listed
(``notes["conduits_too_wide"]``, and in the bundle's ``synth/clearance_shortfalls``). Pipes
keep the gravity networks' minimum cover (``cover_depth``: below the water services) at every
manhole and pass the vertical clearance below every water pipe (``water``) they cross; foul
and combined sewers, designed after the storm sewers, pass below every storm pipe they cross:
their minimum cover is deepened at both ends of such a pipe and the network designed again
(``_Network.design_clear_of``). Pipes follow the ground where it falls and otherwise fall at
the minimum slope for their size (0.9/DN in mm: 0.3 % for DN300, no less than 0.1 %), crowns
matched at manholes. Where a pipe would end deeper than 8.5 m, a lift station (wet well, pump
with a depth–flow curve, discharge chamber) starts the next pipe at minimum cover; where even
that pipe would end too deep (the street climbs), the station pumps through a rising main to
the next manhole.

Every building's foul drain leaves it at the point of its footprint nearest the manhole its
lateral runs to (of the few nearest, the one it reaches shallowest): a DN 150 (DN 200 for the
largest flows) ``service_pipe`` falling at least ``LATERAL_SLOPE`` from the gravity networks'
minimum cover, below every water pipe and storm sewer it crosses (or over a storm sewer that
lies deep enough), its crown at the manhole never below the sewer's (the sewer's minimum cover
there is deepened to take it: the textbook rule that house connections set a foul sewer's
depth). The laterals are GIS features; their flows join the SWMM model at their manholes.

The river's normal level (1.5 m) is close below the low ground of its banks (2–3 m), so no
sewer laid with minimum cover can reach the river by gravity: as in the Pearl River Delta,
every storm and combined catchment that does not drain to a creek ends in a drainage pumping
station on the bank that lifts the water to an outfall at the river's normal level (a FIXED
stage there); the combined stations send up to three times the dry-weather flow (interception
ratio 2) to the sewage treatment works and spill the rest to the river. Foul catchments end in
sewage pumping stations whose rising mains run to the treatment works by the river downstream.
A pumping station is its wet well: the ``storage`` node carries the station's name and, in its
props, role, pumps and capacity (and a ``pumping_station`` facility stands around it).

``plan_drainage`` is pure: tables and a SWMM 5 INP text per network (CMS, DYNWAVE with a 2 s
variable routing step, ALLOW_PONDING NO so flood water leaves the model as flooding, one
thread, 4 simulated hours for storm and combined, a day of dry-weather flow for foul; the
storm and combined models carry the 2-year Chicago design storm and run as they are; creek
outfalls are FIXED at the creek's normal level, with flap gates).
``drainage_bundle`` turns the plan into model features through the SWMM adapter.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from citytwin.drainage.storms import GUANGZHOU, StormFormula, chicago_hyetograph, rate
from citytwin.formats.base import ImportBundle
from citytwin.formats.swmm import swmm_bundle
from citytwin.synth.corridors import (
    NOMINAL,
    SEWER_GAP,
    cooling_edges,
    corridor_nodes,
    cover_depth,
    drainage_band,
    street_lines,
    vertical,
)
from citytwin.synth.layout import CREEK_SETBACK, IMPERVIOUS, SOURCE, CityLayout

PREFIXES = {"storm": "st:", "sewer": "sw:", "combined": "cb:"}
"""Feature id prefix of each drainage network's SWMM objects (its document's ``id_prefix``)."""

DESIGN_RETURN_PERIOD = 2.0  # years, storm sewers
INLET_TIME = 5.0  # min, overland flow time to the first inlet (dense city blocks)
CELERITY = 1.5  # flood-wave speed / full-bore velocity: what the flow time t2 is counted at
SEWER_CLEARANCE = vertical("sewer", "storm")  # m, where foul and storm sewers cross
MAX_DEPTH = 8.5  # m, deepest pipe invert below ground before a lift station
SUMP = 1.0  # m, wet well floor below the lowest incoming invert
FOUL_PER_RESIDENT = 200.0  # L/day
FOUL_PER_WORKER = 50.0  # L/day
FOUL_FILL = 0.6  # design flow / full-bore capacity of foul sewers
INTERCEPTION_RATIO = 2.0  # combined: rain flow sent to treatment, in dry-weather flows
LOW_LIFT_GAIN = 1.2  # pump flow with the incoming pipe full / at half full (less lift)
DISCHARGE_OFFSET = 6.0  # m from a lift station's wet well to its discharge chamber
BANK_REACH = 200.0  # m: street nodes this close to the river can host a catchment's sink
SINK_SPACING = {"storm": 500.0, "combined": 500.0, "sewer": 1200.0}  # m along each bank
MANHOLE_SPACING = 75.0  # m, the most between manholes (GB 50014-2021 table 5.4.2, recalled)
CREEK_PUMP_SPACING = 900.0  # m of a creek's bank per drainage pumping station beside it
GRAVITY_REACH = 4.5  # m: a storm outfall to a creek where the ground is this far above its level
LATERAL_SLOPE = 0.01  # fall of the buildings' laterals (DN 150/200)
LATERAL_FILL = 0.5  # a building's peak foul flow / full-bore flow of its lateral (else DN 200)
LATERAL_OUTER = {0.15: 0.16, 0.2: 0.225}  # m, outer diameter of the laterals (PVC-U, HDPE)
LATERAL_MARGIN = 0.003  # m kept beyond the covers and clearances a lateral is laid to
LATERAL_CHOICES = 4  # manholes near a building its lateral may run to
LATERAL_DETOUR = 30.0  # m: a lateral runs to a manhole at most this much farther than the nearest
LATERAL_LENGTH_COST = 0.02  # m of depth a metre of lateral is worth, choosing among them
UPHILL_COST = 300.0  # m of extra path per m a pipe climbs (flow follows the terrain)
WWTP_PER_KM2 = 1 / 150  # sewage treatment works per km² (at least one)
MANNING = {"CIRCULAR": 0.013, "RECT_CLOSED": 0.014}  # design roughness
ROUTING_STEP = 2.0  # s, DYNWAVE (variable step below it)
STORM_HOURS = 4  # simulated hours of the storm and combined models
SEWER_HOURS = 24  # simulated hours of the foul model (a day of dry-weather flow)
START = dt.datetime(2020, 6, 1)
OPERATOR = "Virtual City Drainage Company"
RAIN_SERIES = "design_storm"
DIURNAL = (0.45, 0.35, 0.3, 0.3, 0.35, 0.55, 0.95, 1.35, 1.5, 1.4, 1.3, 1.25,
           1.25, 1.15, 1.05, 1.0, 1.05, 1.2, 1.4, 1.45, 1.35, 1.15, 0.85, 0.6)  # fmt: skip
"""Hourly multipliers of the foul flow (mean 1): night low, morning and evening peaks."""


def runoff_coefficient(imperviousness: np.ndarray) -> np.ndarray:
    """Peak runoff coefficient ψ of surfaces with this impervious share (%): 0.95 on roofs and
    paving, 0.45 on green ground, which under a design storm's peak is wet through (what the
    SWMM surfaces of the model give: Horton infiltration 76.2 → 12.7 mm/h)."""
    share = np.asarray(imperviousness, dtype=float) / 100.0
    return 0.95 * share + 0.45 * (1.0 - share)


def min_slope(height: np.ndarray) -> np.ndarray:
    """Minimum slope of a sewer of this diameter or height (m): 0.9/DN in mm, at least 0.1 %."""
    return np.maximum(0.001, 0.9 / (np.asarray(height, dtype=float) * 1000.0))


# -- standard sections ------------------------------------------------------------------------
def _sections() -> pd.DataFrame:
    """Standard sections by capacity: DN 300–2000 pipes, then box culverts (with barrels)."""
    rows = [("CIRCULAR", d, d, 1) for d in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2,
                                           1.35, 1.5, 1.65, 1.8, 2.0)]  # fmt: skip
    boxes = [(2.0, 2.0), (2.0, 2.5), (2.0, 3.0), (2.5, 3.0), (3.0, 3.0)]  # (height, width)
    rows += [("RECT_CLOSED", h, w, 1) for h, w in boxes]
    frame = pd.DataFrame(rows, columns=["shape", "height", "width", "barrels"])
    circ = frame["shape"] == "CIRCULAR"
    h, w, k = frame["height"], frame["width"], frame["barrels"]
    frame["area"] = np.where(circ, np.pi * h**2 / 4, h * w * k)
    frame["radius"] = np.where(circ, h / 4, h * w / (2 * (h + w)))
    frame["n"] = frame["shape"].map(MANNING)
    frame["conveyance"] = frame["area"] * frame["radius"] ** (2 / 3) / frame["n"]
    return frame.sort_values("conveyance", kind="stable").reset_index(drop=True)


SECTIONS = _sections()
SEC_H = SECTIONS["height"].to_numpy()
SEC_AREA = SECTIONS["area"].to_numpy()
SEC_CONVEYANCE = SECTIONS["conveyance"].to_numpy()


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class DrainageNetwork:
    """One drainage network: its tables and its SWMM model.

    ``nodes``: name, kind (junction / storage / outfall), role, x, y, invert, max_depth,
    ground (of an outfall to a creek: its bank), street_node (-1: between street nodes),
    catchment, stage (an outfall's fixed water level; NaN: free), gate (a flap gate).
    ``links``: name, kind (conduit / pump), from_node,
    to_node, length, shape, height, width, barrels, invert_from, invert_to, roughness,
    material, design_flow, capacity. ``subcatchments``: name, block, land_use, outlet, area
    (m²), imperviousness, width, slope, geometry. ``stations``: name, role (drainage / lift /
    sewage / combined), plant (the treatment works it pumps to), street_node, x, y, ground,
    wet_well, well_floor, area (of the wet well, m²), pumps, capacity (m³/s). Names are SWMM
    names; feature ids are ``prefix + name``.
    """

    network: str
    prefix: str
    nodes: pd.DataFrame
    links: pd.DataFrame
    subcatchments: pd.DataFrame
    stations: pd.DataFrame
    inp: str


@dataclass
class DrainagePlan:
    """The drainage of a virtual city: its networks, building connections and works."""

    seed: int
    networks: dict[str, DrainageNetwork]
    connections: pd.DataFrame
    """Each building's connection and lateral: building_id, network, x, y (drain exit), dwf
    (m³/s), node (its manhole's SWMM name), node_x, node_y, dn, outer (m), length, ground0,
    ground1 (at both ends), cover0, cover1 (over the crown), invert0, invert1."""
    treatment_plants: gpd.GeoDataFrame  # name, x, y (its outfall on the bank), geometry
    storm: tuple[np.ndarray, np.ndarray]  # the design storm: step starts (min), mm/h
    return_period: float = DESIGN_RETURN_PERIOD
    notes: dict = field(default_factory=dict)


def plan_drainage(
    layout: CityLayout,
    seed: int = 1,
    *,
    formula: StormFormula = GUANGZHOU,
    return_period: float = DESIGN_RETURN_PERIOD,
    water: pd.DataFrame | None = None,
) -> DrainagePlan:
    """Lay out, size and model the drainage of ``layout`` (to the river and its creeks) and
    every building's lateral; ``seed`` picks pipe materials.
    ``water``: the water network's ``utility_links`` frame, if laid already: its widest main
    in each street line sets how far from it the storm sewer stays, and gravity pipes and
    the buildings' laterals pass the vertical clearance below every water pipe they cross."""
    rng = np.random.default_rng([seed, 0xD7A1])
    streets, river = layout.streets, layout.river
    n = len(streets.nodes)
    runs = np.flatnonzero(~np.asarray(streets.bridge, dtype=bool))  # the edges sewers run along
    edges = streets.edges[runs]
    bank_dist = shapely.distance(river.channel, shapely.points(streets.nodes))
    combined = _combined_nodes(layout, edges, bank_dist)
    storm = chicago_hyetograph(return_period, formula=formula)
    crossings = _creek_crossings(layout)

    blocks = layout.blocks
    block_xy = shapely.get_coordinates(shapely.centroid(blocks.geometry.to_numpy()))
    old_block = (blocks["land_use"] == "old_town").to_numpy() & combined.any()
    buildings = layout.buildings
    old_building = _on_combined_streets(layout, combined, runs)
    plants = _treatment_plants(layout)
    mains = _Obstacles.water(water) if water is not None else None
    band = _bands(layout, water)

    members = {"storm": ~combined, "sewer": ~combined, "combined": combined}
    members = {name: mask for name, mask in members.items() if mask.any()}
    assumed = {name: np.zeros(len(streets.edges)) for name in members}  # widest pipe per edge
    dropped: set[str] = set()  # creek outfalls the storm sewers don't use
    pumped: dict[str, tuple] = {}  # creek outfalls a pumping station pumps to: their stretch

    def lay(name: str, xy: np.ndarray, designed: dict[str, _Network]) -> _Network:
        """One network laid and designed in the corridor ``xy``; for the storm sewers without
        the creek outfalls they would reach below the creek's level (those catchments drain
        to the others, or to the river)."""
        while True:
            outfalls = crossings if name == "storm" else None  # storm sewers outfall to creeks
            across = crossings if name != "storm" else None  # foul sewers cross them
            net = _Network(
                name, layout, np.flatnonzero(members[name]), runs, xy, outfalls, dropped, across
            )
            unused = net.unused_outfalls()  # the street beside them drains elsewhere
            if unused:
                dropped.update(unused)
                continue
            if name != "sewer":
                mine = old_block if name == "combined" else ~old_block
                net.add_blocks(blocks[mine], block_xy[mine])
            below = [mains] if mains is not None else []
            if name != "storm" and "storm" in designed:
                # foul and combined sewers, and the laterals into them, keep clear of the storm
                # sewers they cross: below them, or above where there is room
                below.append(_Obstacles.network(designed["storm"], SEWER_CLEARANCE))
            if name != "storm":
                mine = old_building if name == "combined" else ~old_building
                net.add_buildings(buildings[mine])
                net.lay_laterals(below)
            net.design_clear_of(below, formula, return_period)
            drowned = net.drowned_outfalls()
            # a drainage pumping station beside the creek for each stretch of its bank, where
            # the sewers reach it too deep: the others' catchments drain to those (or the river)
            drowned = drowned[~drowned["label"].isin(pumped)]
            if not len(drowned):
                return net
            drowned = drowned.sort_values(["flow", "label"], ascending=[False, True])
            first = ~drowned.duplicated(["wall", "bin"]) & ~drowned.set_index(
                ["wall", "bin"]
            ).index.isin(list(pumped.values()))
            pumped.update(
                zip(
                    drowned["label"][first],
                    zip(drowned["wall"][first], drowned["bin"][first], strict=True),
                    strict=True,
                )
            )
            if first.all():  # stations beside the creek for all of them: nothing moves
                return net
            dropped.update(drowned["label"][~first])

    for round_ in range(8):  # until every pipe fits the widths its street was laid out for
        offsets = _edge_offsets(band, assumed)
        designed: dict[str, _Network] = {}
        for name in members:
            designed[name] = lay(name, _shifted(streets, offsets[name], name), designed)
        widths = {name: net.edge_widths() for name, net in designed.items()}
        if all((widths[k] <= assumed[k] + 1e-9).all() for k in members):
            break
        # the widths just found; from the fourth round on no narrower, so that it settles
        keep = round_ >= 3
        assumed = {k: np.maximum(assumed[k] * keep, widths[k]) for k in members}
    else:
        raise RuntimeError("drainage: the sewers' widths in the streets did not settle")
    networks: dict[str, DrainageNetwork] = {}
    connections = []
    for name, net in designed.items():
        networks[name] = net.model(rng, storm, plants)
        if net.conn is not None:
            connections.append(net.laterals())
    conn = pd.concat(connections, ignore_index=True)
    # pipes wider than their street leaves room for: they break clearances there
    too_wide = [net.too_wide(band) for net in designed.values()]
    over = [
        f"{net.prefix}{r.name}"
        for net in networks.values()
        for r in net.links.itertuples(index=False)
        if r.kind == "conduit"
        and r.capacity < r.design_flow / (FOUL_FILL if net.network == "sewer" else 1.0) - 1e-9
    ]
    return DrainagePlan(
        seed,
        networks,
        conn,
        plants,
        storm,
        return_period,
        notes={
            "street_nodes": n,
            "combined_street_nodes": int(combined.sum()),
            "conduits_too_wide": sorted(x for ids in too_wide for x in ids),
            "conduits_over_capacity": sorted(over),
            "creek_outfalls": int(sum(net.outfall.sum() for net in designed.values())),
        },
    )


def _bands(layout: CityLayout, water: pd.DataFrame | None) -> np.ndarray:
    """(left, right) edges of the band each street edge leaves the sewers, (m, 2)."""
    s = layout.streets
    cls = np.asarray(s.street_class).astype(str)
    half = np.asarray(s.width, dtype=float) / 2
    heating = cooling_edges(layout)
    water_outer = _widest_water(layout, water)
    band = np.array(
        [
            drainage_band(c, h, heat, w)
            for c, h, heat, w in zip(cls, half, heating, water_outer, strict=True)
        ]
    ).reshape(-1, 2)
    # the lines of the next edge along the street reach a few m past the corner node: its band
    # holds there too
    line = street_lines(s).edge_line
    ends = pd.DataFrame(
        {
            "node": s.edges.ravel(),
            "line": np.repeat(line, 2),
            "left": np.repeat(band[:, 0], 2),
            "right": np.repeat(band[:, 1], 2),
        }
    )
    at = ends.groupby(["node", "line"]).agg(left=("left", "max"), right=("right", "min"))
    both = at.reindex(pd.MultiIndex.from_arrays([ends["node"], ends["line"]]))
    left = both["left"].to_numpy().reshape(-1, 2).max(axis=1)
    right = both["right"].to_numpy().reshape(-1, 2).min(axis=1)
    return np.column_stack([left, right])


def _edge_offsets(band: np.ndarray, widths: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Offsets of the sewers along every street edge: the storm sewer at its nominal offset
    where the band has room, the foul sewer ``SEWER_GAP`` beside it; where that overflows the
    band, both as near the water main as its clearance allows; a combined sewer beside the
    water main."""
    left, right = band[:, 0], band[:, 1]
    zero = np.zeros(len(band))
    storm_w, sewer_w = widths.get("storm", zero), widths.get("sewer", zero)
    storm = np.minimum(NOMINAL["storm"], right - storm_w / 2)
    sewer = np.minimum(NOMINAL["sewer"], storm - storm_w / 2 - SEWER_GAP - sewer_w / 2)
    tight = sewer - sewer_w / 2 < left
    storm = np.where(tight, right - storm_w / 2, storm)
    sewer = np.where(tight, storm - storm_w / 2 - SEWER_GAP - sewer_w / 2, sewer)
    sewer = np.where(storm_w > 0, sewer, np.minimum(NOMINAL["sewer"], right - sewer_w / 2))
    out = {"storm": storm, "sewer": sewer}
    if "combined" in widths:
        out["combined"] = np.minimum(NOMINAL["combined"], right - widths["combined"] / 2)
    return {k: v for k, v in out.items() if k in widths}


def _shifted(streets, offset: np.ndarray, network: str) -> np.ndarray:
    """Street nodes moved by the sewers' offsets: each node by the smallest offset of its
    east-west edges in y and of its north-south edges in x (a pipe between two manholes may
    then run a little askew to its street, every point of it inside the band)."""
    n = len(streets.nodes)
    a, b = streets.nodes[streets.edges[:, 0]], streets.nodes[streets.edges[:, 1]]
    ew = np.abs(b[:, 1] - a[:, 1]) <= np.abs(b[:, 0] - a[:, 0])
    dy, dx = np.full(n, np.inf), np.full(n, np.inf)
    for end in (0, 1):
        np.minimum.at(dy, streets.edges[ew, end], offset[ew])
        np.minimum.at(dx, streets.edges[~ew, end], offset[~ew])
    nominal = corridor_nodes(streets, network) - streets.nodes
    dx = np.where(np.isinf(dx), np.where(np.isinf(dy), nominal[:, 0], dy), dx)
    dy = np.where(np.isinf(dy), dx, dy)
    return streets.nodes + np.column_stack([dx, dy])


def _widest_water(layout: CityLayout, water: pd.DataFrame | None) -> np.ndarray:
    """The widest water main along each street edge (m; 0.3 where the water is not known)."""
    streets = layout.streets.lines()
    if water is None:
        return np.full(len(streets), 0.3)
    pipes = water[(water["class"] == "pipe") & water["depth"].notna()]
    geoms = pipes.geometry.to_numpy()
    i, j = shapely.STRtree(streets).query_nearest(
        shapely.line_interpolate_point(geoms, 0.5, normalized=True), all_matches=False
    )
    a = shapely.get_coordinates(shapely.get_point(geoms[i], 0))
    b = shapely.get_coordinates(shapely.get_point(geoms[i], -1))
    s = shapely.get_coordinates(shapely.boundary(streets[j])).reshape(-1, 2, 2)
    u = (b - a) / np.maximum(np.linalg.norm(b - a, axis=1), 1e-9)[:, None]
    v = (s[:, 1] - s[:, 0]) / np.linalg.norm(s[:, 1] - s[:, 0], axis=1)[:, None]
    along = np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]) < 0.05
    out = np.zeros(len(streets))
    np.maximum.at(out, j[along], pipes["diameter"].to_numpy(float)[i][along])
    return out


class _Obstacles:
    """Lines that gravity pipes must pass at least ``clearance`` below where they cross them:
    plan geometry, cover over the crown at both ends (linear between), outer height."""

    def __init__(self, lines, cover0, cover1, height, clearance) -> None:
        self.lines = lines
        self.cover0, self.cover1, self.height = cover0, cover1, height
        self.clearance = clearance
        self.tree = shapely.STRtree(lines)

    @classmethod
    def water(cls, links: pd.DataFrame) -> _Obstacles:
        pipes = links[links["depth"].notna() & links.geometry.notna()]
        depth = pipes["depth"].to_numpy(float)
        height = pipes["diameter"].to_numpy(float)
        return cls(
            pipes.geometry.to_numpy(),
            depth,
            depth,
            height,
            vertical("water_supply", "storm"),
        )

    @classmethod
    def network(cls, net: _Network, clearance: float) -> _Obstacles:
        k, lines, g0, g1 = net._pipes()
        h = SEC_H[net.idx[k]]
        return cls(lines, g0 - net.start[k] - h, g1 - net.end[k] - h, h, clearance)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _combined_nodes(layout: CityLayout, edges: np.ndarray, bank_dist: np.ndarray) -> np.ndarray:
    """Street nodes of the combined network: those mostly surrounded by old-town blocks, plus
    pieces of the separate networks that the old town cuts off from the river."""
    nodes = layout.streets.nodes
    blocks = layout.blocks
    old = (blocks["land_use"] == "old_town").to_numpy()
    if not old.any():
        return np.zeros(len(nodes), bool)
    centres = shapely.get_coordinates(shapely.centroid(blocks.geometry.to_numpy()))
    near = cKDTree(centres).query_ball_point(nodes, r=110.0, return_length=False)
    counts = np.array([len(k) for k in near])
    olds = np.array([old[k].sum() if len(k) else 0 for k in near])
    combined = (counts > 0) & (olds * 2 >= np.maximum(counts, 1))
    separate = ~combined
    keep = separate[edges[:, 0]] & separate[edges[:, 1]]
    labels = _components(len(nodes), edges[keep])
    reach = np.zeros(labels.max() + 1, bool)
    reach[labels[separate & (bank_dist <= BANK_REACH)]] = True
    return combined | (separate & ~reach[labels])


def _on_combined_streets(layout: CityLayout, combined: np.ndarray, runs: np.ndarray) -> np.ndarray:
    """Buildings whose foul drains go to the combined sewer: those the nearest street with a
    combined sewer in it passes (``combined``: the street nodes of the combined network;
    ``runs``: the street edges sewers run along)."""
    s = layout.streets
    both = combined[s.edges[runs]]
    mine = both.all(axis=1) | ~both.any(axis=1)  # edges with a combined or a foul sewer
    centres = shapely.centroid(layout.buildings.geometry.to_numpy())
    if not combined.any():
        return np.zeros(len(centres), bool)
    edge = runs[mine][
        shapely.STRtree(s.lines()[runs[mine]]).query_nearest(centres, all_matches=False)[1]
    ]
    return combined[s.edges[edge, 0]]


def _treatment_plants(layout: CityLayout) -> gpd.GeoDataFrame:
    """Sewage treatment works by the river downstream, one per ~150 km², alternating banks;
    each with its outfall point on the bank."""
    river, side = layout.river, layout.side
    count = max(1, round(layout.area_km2 * WWTP_PER_KM2))
    line = river.centerline
    creeks = layout.creeks[layout.creeks["reach"] == 1]
    rows = []
    for k in range(count):
        along = line.length * (k + 0.9) / count
        sign = -1.0 if k % 2 == 0 else 1.0  # south bank first (the water works is north)
        bank = shapely.offset_curve(line, sign * river.width / 2)
        point = bank.interpolate(bank.project(line.interpolate(along)))
        x = min(max(point.x, layout.origin[0] + 150.0), layout.origin[0] + side - 150.0)
        for c in creeks.itertuples(index=False):  # beside a creek's mouth, not over it
            clear = 110.0 + c.width / 2 + CREEK_SETBACK
            if abs(x - c.x) < clear:
                x = c.x + clear if x >= c.x else c.x - clear
        point = bank.interpolate(bank.project(shapely.Point(x, point.y)))
        y0, y1 = sorted((point.y, point.y + sign * 140.0))  # on the land side of its outfall
        plant = shapely.box(point.x - 110.0, y0, point.x + 110.0, y1)
        plant = shapely.difference(plant, river.channel.buffer(5.0))
        rows.append({"name": f"WWTP{k + 1}", "x": point.x, "y": point.y, "geometry": plant})
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=layout.crs)


@dataclass
class _Graph:
    """The pipe graph of one network: its manholes at the street nodes, between them every
    ``MANHOLE_SPACING`` m at most, and at the creek walls its outfalls."""

    street: np.ndarray  # street node of each node (-1: between street nodes, or an outfall)
    label: np.ndarray  # name of each node after its kind's prefix (object)
    plan_xy: np.ndarray  # (n, 2) in the network's nominal corridor
    xy: np.ndarray  # (n, 2) where laid (the corridor moved by the widths of the pipes laid)
    outfall: np.ndarray  # bool: an outfall through a creek's wall
    level: np.ndarray  # normal water level of the creek at an outfall (NaN elsewhere)
    bank: np.ndarray  # (n, 2) where an outfall's ground is taken: on the bank behind the wall
    edges: np.ndarray  # (k, 2) node pairs a pipe may run between
    edge_street: np.ndarray  # (k,) the street edge each runs along


def _creek_crossings(layout: CityLayout) -> pd.DataFrame:
    """Street edges that bridge a creek: edge, its west and east nodes, the creek's walls
    (x) on either side and the normal water level of the reach below the bridge."""
    s, creeks = layout.streets, layout.creeks
    creeks = creeks[~creeks["culvert"].to_numpy(bool)] if len(creeks) else creeks
    bridges = np.flatnonzero(np.asarray(s.bridge, dtype=bool))
    cols = ["edge", "west", "east", "wall_west", "wall_east", "level", "reach"]
    if not len(creeks) or not len(bridges):
        return pd.DataFrame({c: [] for c in cols})
    lines = s.lines()[bridges]
    i, j = shapely.STRtree(creeks.geometry.to_numpy()).query(lines, predicate="intersects")
    first = np.unique(i, return_index=True)[1]  # a bridge spans one creek (one reach of it)
    i, j = i[first], j[first]
    e = bridges[i]
    a, b = s.edges[e, 0], s.edges[e, 1]
    west = np.where(s.nodes[a, 0] <= s.nodes[b, 0], a, b)
    east = np.where(west == a, b, a)
    x, w = creeks["x"].to_numpy(float)[j], creeks["width"].to_numpy(float)[j]
    return pd.DataFrame(
        {
            "edge": e,
            "west": west,
            "east": east,
            "wall_west": x - w / 2,
            "wall_east": x + w / 2,
            "level": creeks["water_level"].to_numpy(float)[j],
            "reach": creeks["id"].to_numpy(object)[j],
        }
    )


def _runs(
    start: np.ndarray,
    end: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    x0: np.ndarray,
    x1: np.ndarray,
    prefix: np.ndarray,
    edge: np.ndarray,
    first_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Straight runs from node ``start`` to node ``end`` (plan ends ``p0``, ``p1``; laid ends
    ``x0``, ``x1``) cut into equal pieces of at most ``MANHOLE_SPACING``: the manholes between
    (plan and laid positions, labels ``prefix`` + 1, 2 ...), numbered from ``first_id``, and
    the pieces as node pairs with their street edge."""
    pieces = np.maximum(np.ceil(np.linalg.norm(p1 - p0, axis=1) / MANHOLE_SPACING), 1).astype(int)
    mids = pieces - 1
    run = np.repeat(np.arange(len(start)), mids)
    k = np.arange(len(run)) - np.repeat(np.cumsum(mids) - mids, mids) + 1
    t = (k / pieces[run])[:, None]
    plan = p0[run] + t * (p1 - p0)[run]
    laid = x0[run] + t * (x1 - x0)[run]
    labels = np.array([f"{p}{j}" for p, j in zip(prefix[run], k, strict=True)], dtype=object)
    # every run's chain of nodes, and its pieces
    at = np.repeat(np.arange(len(start)), pieces + 1)
    p = np.arange(len(at)) - np.repeat(np.cumsum(pieces + 1) - (pieces + 1), pieces + 1)
    base = first_id + np.cumsum(mids) - mids
    chain = np.where(p == 0, start[at], np.where(p == pieces[at], end[at], base[at] + p - 1))
    first = np.flatnonzero(p < pieces[at])
    pairs = np.column_stack([chain[first], chain[first + 1]])
    return plan, laid, labels, pairs, edge[at[first]], mids


def _graph(
    layout: CityLayout,
    street_nodes: np.ndarray,
    edge_ids: np.ndarray,
    plan: np.ndarray,
    xy: np.ndarray,
    crossings: pd.DataFrame | None,
    skip: set[str] | None = None,
    across: pd.DataFrame | None = None,
) -> _Graph:
    """The pipe graph on ``street_nodes`` along the street edges ``edge_ids`` (those with
    both ends among them), with an outfall at the creek wall beyond each street node that a
    creek bridge in ``crossings`` starts from (but those labelled in ``skip``), and across
    each creek bridge in ``across`` a pipe slung under it between manholes on both banks
    (``plan``, ``xy``: every street node's nominal and laid position)."""
    s = layout.streets
    n_street = len(s.nodes)
    local = -np.ones(n_street, int)
    local[street_nodes] = np.arange(len(street_nodes))
    m = len(street_nodes)
    e = edge_ids[(local[s.edges[edge_ids]] >= 0).all(axis=1)]
    a, b = s.edges[e, 0], s.edges[e, 1]
    d = s.nodes[b] - s.nodes[a]
    ew = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    flip = np.where(ew, d[:, 0] < 0, d[:, 1] < 0)
    a, b = np.where(flip, b, a), np.where(flip, a, b)  # west -> east, south -> north
    prefix = np.array(
        [f"{x:06d}{'E' if e else 'N'}" for x, e in zip(a, ew, strict=True)], dtype=object
    )
    mid_plan, mid_xy, mid_label, pairs, edge_of, _ = _runs(
        local[a], local[b], plan[a], plan[b], xy[a], xy[b], prefix, e, m
    )
    parts = {
        "street": [street_nodes, np.full(len(mid_plan), -1)],
        "label": [np.array([f"{x:06d}" for x in street_nodes], dtype=object), mid_label],
        "plan_xy": [plan[street_nodes], mid_plan],
        "xy": [xy[street_nodes], mid_xy],
        "outfall": [np.zeros(m + len(mid_plan), bool)],
        "level": [np.full(m + len(mid_plan), np.nan)],
    }
    edges, edge_street = [pairs], [edge_of]
    count = m + len(mid_plan)
    if crossings is not None and len(crossings):
        rows = []
        for end, other, wall, letter in (
            ("west", "east", "wall_west", "E"),
            ("east", "west", "wall_east", "W"),
        ):
            mine = crossings[local[crossings[end].to_numpy(int)] >= 0]
            # an outfall where a sewer can be expected to reach the creek above its level
            ground = layout.terrain.sample(plan[mine[end].to_numpy(int)])
            mine = mine[ground - GRAVITY_REACH >= mine["level"].to_numpy(float)]
            label = [f"{k:06d}{letter}" for k in mine[end].to_numpy(int)]
            mine = mine[~np.isin(label, list(skip or ()))]
            rows.append(
                pd.DataFrame(
                    {
                        "node": mine[end].to_numpy(int),
                        "other": mine[other].to_numpy(int),
                        "wall": mine[wall].to_numpy(float),
                        "level": mine["level"].to_numpy(float),
                        "edge": mine["edge"].to_numpy(int),
                        "letter": letter,
                    }
                )
            )
        out = pd.concat(rows, ignore_index=True)
        if len(out):
            u, v = out["node"].to_numpy(), out["other"].to_numpy()
            wall = out["wall"].to_numpy()

            def at_wall(p: np.ndarray) -> np.ndarray:  # the line u -> v where it meets the wall
                t = (wall - p[u, 0]) / (p[v, 0] - p[u, 0])
                return p[u] + t[:, None] * (p[v] - p[u])

            o_plan, o_xy = at_wall(plan), at_wall(xy)
            label = np.array([f"{k:06d}{c}" for k, c in zip(u, out["letter"], strict=True)])
            ids = count + np.arange(len(out))
            count += len(out)
            h_plan, h_xy, h_label, h_pairs, h_edge, _ = _runs(
                local[u], ids, plan[u], o_plan, xy[u], o_xy, label, out["edge"].to_numpy(), count
            )
            parts["street"] += [np.full(len(out), -1), np.full(len(h_plan), -1)]
            parts["label"] += [label.astype(object), h_label]
            parts["plan_xy"] += [o_plan, h_plan]
            parts["xy"] += [o_xy, h_xy]
            parts["outfall"] += [np.ones(len(out), bool), np.zeros(len(h_plan), bool)]
            parts["level"] += [out["level"].to_numpy(float), np.full(len(h_plan), np.nan)]
            edges.append(h_pairs)
            edge_street.append(h_edge)
    if across is not None and len(across):
        mine = across[(local[across[["west", "east"]].to_numpy(int)] >= 0).all(axis=1)]
        a, b = mine["west"].to_numpy(int), mine["east"].to_numpy(int)
        back = 2 * layout.terrain.cell + 0.5  # the banks' manholes stand clear of the walls
        walls = np.column_stack([mine["wall_west"] - back, mine["wall_east"] + back])
        ids = count + np.arange(2 * len(mine)).reshape(-1, 2)
        count += ids.size
        chain = np.column_stack([local[a], ids, local[b]])
        bank_plan, bank_xy = [], []
        for p, store in ((plan, bank_plan), (xy, bank_xy)):
            t = (walls - p[a, :1]) / (p[b, :1] - p[a, :1])
            store.append((p[a][:, None] + t[..., None] * (p[b] - p[a])[:, None]).reshape(-1, 2))
        parts["street"].append(np.full(ids.size, -1))
        parts["label"].append(np.array([f"{x:06d}E{k}" for x in a for k in (1, 2)], dtype=object))
        parts["plan_xy"] += bank_plan
        parts["xy"] += bank_xy
        parts["outfall"].append(np.zeros(ids.size, bool))
        parts["level"].append(np.full(ids.size, np.nan))
        edges.append(np.stack([chain[:, :-1], chain[:, 1:]], axis=2).reshape(-1, 2))
        edge_street.append(np.repeat(mine["edge"].to_numpy(int), 3))
    g = {k: np.concatenate(v) for k, v in parts.items()}
    # an outfall's ground: on the bank two cells behind the wall, towards the street node
    back = np.zeros_like(g["xy"])
    if g["outfall"].any():
        k = np.flatnonzero(g["outfall"])
        pair = np.concatenate(edges)
        into = pair[np.isin(pair[:, 1], k)]
        toward = np.zeros((len(g["xy"]), 2))
        toward[into[:, 1]] = g["xy"][into[:, 0]] - g["xy"][into[:, 1]]
        unit = toward / np.maximum(np.linalg.norm(toward, axis=1), 1e-9)[:, None]
        back = g["xy"] + 2 * layout.terrain.cell * unit
    return _Graph(
        g["street"],
        g["label"],
        g["plan_xy"],
        g["xy"],
        g["outfall"],
        g["level"],
        back,
        np.concatenate(edges),
        np.concatenate(edge_street),
    )


def _first_points(geoms: np.ndarray) -> np.ndarray:
    """The first point of each geometry (where two lines cross, or start to overlap)."""
    xy, which = shapely.get_coordinates(geoms, return_index=True)
    return shapely.points(xy[np.unique(which, return_index=True)[1]])


def _lateral_covers(
    start: np.ndarray,
    end: np.ndarray,
    g0: np.ndarray,
    g1: np.ndarray,
    outer: np.ndarray,
    others: list[_Obstacles],
    base: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cover over the crown at both ends (m) and length of straight laterals from ``start``
    (ground ``g0``) to ``end`` (ground ``g1``), laid as shallow as they may be: at least
    ``base`` deep, falling at least ``LATERAL_SLOPE``, and wherever they cross a line of
    ``others``, below it by its clearance, or above it by as much where it lies deep enough
    (the cover linear along a lateral, as the clearance check reads it)."""
    lines = shapely.linestrings(np.stack([start, end], axis=1))
    length = np.maximum(np.linalg.norm(end - start, axis=1), 0.5)
    base = base + LATERAL_MARGIN
    fall = g1 - g0 + LATERAL_SLOPE * length  # cover gained from start to end at the slope
    lowest = np.maximum(base, base + fall)  # the end's cover without crossings
    hits = []  # every crossing: lateral, where along it (0-1), the line's crown and underside
    for other in others:
        i, j = other.tree.query(lines, predicate="intersects")
        if not len(i):
            continue
        at = _first_points(shapely.intersection(lines[i], other.lines[j]))
        t = shapely.line_locate_point(lines[i], at, normalized=True)
        u = shapely.line_locate_point(other.lines[j], at, normalized=True)
        crown = other.cover0[j] + u * (other.cover1[j] - other.cover0[j])
        gap = np.full(len(i), other.clearance + LATERAL_MARGIN)
        hits.append((i, np.minimum(t, 1 - 1e-6), crown, crown + other.height[j], gap))
    if not hits:
        return lowest - fall, lowest, length
    i, t, crown, under, gap = (np.concatenate(x) for x in zip(*hits, strict=True))
    below = np.zeros(len(i), bool)  # the crossings passed below
    for _ in range(8):
        # the end cover: the lowest that passes below those crossings, with the start as deep
        # as the slope allows (cover along the lateral: end - fall · (1 - t))
        need = np.full(len(lines), -np.inf)
        np.maximum.at(need, i[below], (under + gap + fall[i] * (1 - t))[below])
        c1 = np.maximum(lowest, need)
        over = c1[i] - fall[i] * (1 - t) + outer[i] + gap <= crown
        if (below | over).all():
            break
        below |= ~over
    c1 = np.ceil(c1 * 1000) / 1000
    # the start as shallow as those crossings allow (a steeper lateral where one is near its end)
    floor = np.full(len(lines), base)
    np.maximum.at(floor, i[below], ((under + gap - c1[i] * t) / (1 - t))[below])
    c0 = np.minimum(np.ceil(floor * 1000) / 1000, c1 - fall)
    return c0, c1, length


class _Network:
    """One network being laid out: tree, loads, sizes and levels, then its SWMM model."""

    def __init__(
        self,
        name: str,
        layout: CityLayout,
        street_nodes: np.ndarray,
        edge_ids: np.ndarray,
        xy: np.ndarray | None = None,
        crossings: pd.DataFrame | None = None,
        skip: set[str] | None = None,
        across: pd.DataFrame | None = None,
    ) -> None:
        self.name, self.layout = name, layout
        # the tree and the catchments follow the nominal corridor, whatever the street line's
        # offset: they don't change when the pipes' sizes move the sewers across the street
        plan = corridor_nodes(layout.streets, name)
        g = _graph(
            layout,
            street_nodes,
            edge_ids,
            plan,
            plan if xy is None else xy,
            crossings,
            skip,
            across,
        )
        self.street, self.label, self.outfall, self.water_level = (
            g.street,
            g.label,
            g.outfall,
            g.level,
        )
        self.plan_xy, self.xy, self.edges, self.edge_street = (
            g.plan_xy,
            g.xy,
            g.edges,
            g.edge_street,
        )
        terrain = layout.terrain
        self.plan_ground = terrain.sample(self.plan_xy)
        self.ground = terrain.sample(self.xy)
        if self.outfall.any():
            self.plan_ground[self.outfall] = self.ground[self.outfall] = terrain.sample(
                g.bank[self.outfall]
            )
        m = len(self.xy)
        self.cover = np.full(m, cover_depth(name))  # minimum cover over the crowns, per node
        self.bank_dist = shapely.distance(layout.river.channel, shapely.points(self.plan_xy))
        self.area_psi = np.zeros(m)  # ψ·F, ha
        self.dwf = np.zeros(m)  # m³/s, average dry-weather flow
        self.blocks: pd.DataFrame | None = None
        self.conn: pd.DataFrame | None = None  # building connections and their laterals
        self._tree()

    # the drainage tree
    def _tree(self) -> None:
        river = self.layout.river
        m = len(self.xy)
        labels = _components(m, self.edges)
        cx, cy = shapely.get_coordinates(river.centerline).T
        xy, ground = self.plan_xy, self.plan_ground
        self.side = np.where(xy[:, 1] > np.interp(xy[:, 0], cx, cy), 1, -1)
        along = shapely.line_locate_point(river.centerline, shapely.points(xy))
        frame = pd.DataFrame(
            {
                "label": labels,
                "side": self.side,
                "bin": (along // SINK_SPACING[self.name]).astype(int),
                "score": ground + 0.005 * self.bank_dist,
                "dist": np.where(self.street >= 0, self.bank_dist, np.inf),
            }
        )
        # pumping stations on the river bank at street corners, one in each stretch of it
        near = frame[frame["dist"] <= BANK_REACH]
        sinks = set(near.groupby(["label", "side", "bin"])["score"].idxmin())
        sinks |= set(np.flatnonzero(self.outfall).tolist())  # and the outfalls to the creeks
        cut_off = ~np.isin(np.arange(labels.max() + 1), labels[list(sinks)])
        for label in np.flatnonzero(cut_off):  # no bank nearby: the node nearest the river
            sinks.add(int(frame.loc[frame["label"] == label, "dist"].idxmin()))
        self.sinks = np.array(sorted(sinks))

        a, b = self.edges[:, 0], self.edges[:, 1]
        length = np.linalg.norm(xy[a] - xy[b], axis=1)
        g = ground
        # Dijkstra runs from the sinks upstream: stepping a -> b means water flowing b -> a
        rows = np.concatenate([a, b])
        cols = np.concatenate([b, a])
        climb = np.maximum(g[rows] - g[cols], 0.0)
        cost = np.concatenate([length, length]) + UPHILL_COST * climb
        graph = sparse.csr_matrix((cost, (rows, cols)), shape=(m, m))
        _, pred, source = dijkstra(
            graph, directed=True, indices=self.sinks, min_only=True, return_predecessors=True
        )
        self.parent = np.where(pred < 0, -1, pred)
        self.sink_of = source
        self.is_sink = np.zeros(m, bool)
        self.is_sink[self.sinks] = True
        # levels: number of pipes between a node and its sink
        level = np.zeros(m, int)
        cur = np.arange(m)
        while (self.parent[cur] >= 0).any():
            step = self.parent[cur] >= 0
            level += step
            cur = np.where(step, self.parent[cur], cur)
        self.level = level
        has_parent = self.parent >= 0
        p = np.where(has_parent, self.parent, np.arange(m))
        self.length = np.linalg.norm(self.xy[p] - self.xy, axis=1)
        direction = (self.xy[p] - self.xy) / np.maximum(self.length, 1e-9)[:, None]
        self.dc_xy = self.xy + DISCHARGE_OFFSET * direction
        self.dc_ground = self.layout.terrain.sample(self.dc_xy)
        # the street edge each node's pipe runs along
        key = pd.MultiIndex.from_arrays([self.edges.min(axis=1), self.edges.max(axis=1)])
        at = key.get_indexer(
            pd.MultiIndex.from_arrays([np.minimum(np.arange(m), p), np.maximum(np.arange(m), p)])
        )
        edge_of = np.append(self.edge_street, -1)  # -1: no pipe
        self.pipe_edge = np.where(has_parent, edge_of[at], -1)

    def outlet_nodes(self, xy: np.ndarray, ground_first: bool) -> np.ndarray:
        """The manhole each point drains to: the lowest of the four nearest within 110 m
        (blocks) or the nearest (buildings); never an outfall."""
        cand = np.flatnonzero(~self.outfall)
        tree = cKDTree(self.plan_xy[cand])
        if not ground_first:
            return cand[tree.query(xy)[1]]
        k = min(4, len(cand))
        dist, idx = tree.query(xy, k=k)
        dist, idx = dist.reshape(len(xy), k), cand[idx.reshape(len(xy), k)]
        level = np.where(dist <= 110.0, self.plan_ground[idx], np.inf)
        best = idx[np.arange(len(xy)), np.argmin(level, axis=1)]
        return np.where(np.isinf(level.min(axis=1)), idx[:, 0], best)

    def add_blocks(self, blocks: gpd.GeoDataFrame, centres: np.ndarray) -> None:
        """Each block a subcatchment draining to an inlet at its lowest corner."""
        outlet = self.outlet_nodes(centres, ground_first=True)
        geoms = blocks.geometry.to_numpy()
        area = shapely.area(geoms)
        imperv = blocks["land_use"].map(IMPERVIOUS).to_numpy()
        np.add.at(self.area_psi, outlet, area / 1e4 * runoff_coefficient(imperv))
        x0, y0, x1, y1 = shapely.bounds(geoms).T
        corners = np.stack([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], axis=1)  # (2, 4, k)
        levels = self.layout.terrain.sample(corners.transpose(2, 1, 0).reshape(-1, 2))
        levels = levels.reshape(-1, 4)
        diagonal = np.hypot(x1 - x0, y1 - y0)
        slope = np.clip(100 * (levels.max(axis=1) - levels.min(axis=1)) / diagonal, 0.3, 20.0)
        flow_length = np.clip(np.sqrt(area) / 2, 20.0, 100.0)
        self.blocks = pd.DataFrame(
            {
                "block": blocks["block"].to_numpy(),
                "land_use": blocks["land_use"].to_numpy(),
                "node": outlet,
                "area": area,
                "imperviousness": imperv,
                "width": area / flow_length,
                "slope": slope,
                "geometry": geoms,
            }
        )

    def add_buildings(self, buildings: gpd.GeoDataFrame) -> None:
        """The buildings whose foul drains this network takes: their flows, and the manholes
        near each that its lateral may run to (``lay_laterals`` picks one)."""
        geoms = buildings.geometry.to_numpy()
        centres = shapely.get_coordinates(shapely.centroid(geoms))
        cand = np.flatnonzero(~self.outfall)
        k = min(LATERAL_CHOICES, len(cand))
        dist, idx = cKDTree(self.plan_xy[cand]).query(centres, k=k)
        dist, idx = dist.reshape(len(geoms), k), cand[idx.reshape(len(geoms), k)]
        residents = buildings["residents"].to_numpy(float)
        workers = np.maximum(buildings["daytime_population"].to_numpy(float) - 0.35 * residents, 0)
        self.conn = pd.DataFrame(
            {
                "building_id": buildings["id"].to_numpy(),
                "network": self.name,
                "dwf": (FOUL_PER_RESIDENT * residents + FOUL_PER_WORKER * workers) / 86_400 / 1000,
            }
        )
        self._choices = (geoms, idx, dist)

    def lay_laterals(self, others: list[_Obstacles]) -> None:
        """Give each building (``add_buildings``) its lateral: straight from its drain exit to
        one of the manholes near it, the one it reaches shallowest (a metre of depth is worth
        ``1 / LATERAL_LENGTH_COST`` m of length), laid by ``_lateral_covers`` below the
        lines of ``others``; the building's flow joins that manhole, whose minimum cover
        becomes at least the lateral's there (the lateral's crown is never below the sewer's:
        crowns matched, or a drop into the manhole)."""
        conn = self.conn
        geoms, idx, dist = self._choices
        b = np.arange(idx.size) // idx.shape[1]  # the building of each choice
        node = idx.ravel()
        exits = shapely.get_coordinates(
            shapely.get_point(shapely.shortest_line(geoms[b], shapely.points(self.xy[node])), 0)
        )
        dwf = conn["dwf"].to_numpy(float)
        dn = np.where(dwf * 2.3 <= LATERAL_FILL * _full_flow(0.15, LATERAL_SLOPE), 0.15, 0.2)
        outer = np.where(dn < 0.2, LATERAL_OUTER[0.15], LATERAL_OUTER[0.2])
        g0 = self.layout.terrain.sample(exits)
        c0, c1, length = _lateral_covers(
            exits, self.xy[node], g0, self.ground[node], outer[b], others, cover_depth(self.name)
        )
        score = (c1 + LATERAL_LENGTH_COST * length).reshape(idx.shape)
        score[dist > dist[:, :1] + LATERAL_DETOUR] = np.inf  # only manholes nearly as near
        best = np.arange(len(idx)) * idx.shape[1] + np.argmin(score, axis=1)
        conn["local"] = node[best]
        conn["x"], conn["y"] = exits[best, 0], exits[best, 1]
        conn["dn"], conn["outer"], conn["length"] = dn, outer, length[best]
        conn["ground0"], conn["cover0"], conn["cover1"] = g0[best], c0[best], c1[best]
        np.add.at(self.dwf, node[best], dwf)
        np.maximum.at(self.cover, node[best], c1[best])

    def unused_outfalls(self) -> set[str]:
        """Labels of the creek outfalls no pipe reaches (the tree drains the street beside
        them to another sink)."""
        used = np.zeros(len(self.xy), bool)
        used[self.parent[self.parent >= 0]] = True
        return set(self.label[self.outfall & ~used])

    def drowned_outfalls(self) -> pd.DataFrame:
        """The creek outfalls that pipes would reach below the creek's level, or too deep (a
        pumping station pumps into them instead): label, the creek wall (x) and stretch of
        the creek (``CREEK_PUMP_SPACING``) they are on, and the flow pumped."""
        v = np.flatnonzero(self.force & (self.parent >= 0))
        v = v[self.outfall[self.parent[v]]]
        o = self.parent[v]
        return pd.DataFrame(
            {
                "label": self.label[o],
                "wall": np.round(self.xy[o, 0], 1),
                "bin": (self.xy[o, 1] // CREEK_PUMP_SPACING).astype(int),
                "flow": self.flow[v],
            }
        )

    def _pipes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The designed gravity pipes: their nodes, lines (from the discharge chamber after a
        lift station), and the ground at both ends."""
        k = np.flatnonzero(~self.is_sink & ~self.force & (self.parent >= 0))
        lift = self.lift[k]
        start = np.where(lift[:, None], self.dc_xy[k], self.xy[k])
        lines = shapely.linestrings(np.stack([start, self.xy[self.parent[k]]], axis=1))
        g0 = np.where(lift, self.dc_ground[k], self.ground[k])
        return k, lines, g0, self.ground[self.parent[k]]

    def _crossings(self, other: _Obstacles) -> tuple[np.ndarray, np.ndarray]:
        """(pipe of mine) node index of every crossing with ``other``'s lines, with the depths
        below ground of (my crown, my invert, its crown, its underside) there, (n, 4)."""
        k, lines, g0, g1 = self._pipes()
        i, j = other.tree.query(lines, predicate="intersects")
        at = _first_points(shapely.intersection(lines[i], other.lines[j]))
        t = shapely.line_locate_point(lines[i], at, normalized=True)
        n = k[i]
        invert = g0[i] + t * (g1[i] - g0[i]) - (self.start[n] + t * (self.end[n] - self.start[n]))
        t = shapely.line_locate_point(other.lines[j], at, normalized=True)
        crown = other.cover0[j] + t * (other.cover1[j] - other.cover0[j])
        return n, np.column_stack(
            [invert - SEC_H[self.idx[n]], invert, crown, crown + other.height[j]]
        )

    def design_clear_of(
        self, others: list[_Obstacles], formula: StormFormula, period: float
    ) -> None:
        """Design the network, then wherever one of its pipes crosses a line of ``others``
        with less than that line's clearance above or below it, deepen the minimum cover at
        both ends of the pipe to pass below (the crown's cover, linear along a pipe, is then
        deep enough at the crossing) and design again, until every crossing is clear."""
        for _ in range(30):
            self.design(formula, period)
            clear = True
            for other in others:
                k, d = self._crossings(other)
                crown, invert, their_crown, their_under = d.T
                gap = other.clearance
                bad = (crown < their_under + gap - 1e-6) & (invert > their_crown - gap)
                if not bad.any():
                    continue
                clear = False
                need = np.ceil((their_under[bad] + gap) * 1000) / 1000 + 0.002
                np.maximum.at(self.cover, k[bad], need)
                np.maximum.at(self.cover, self.parent[k[bad]], need)
            if clear:
                return
        raise RuntimeError(f"{self.name}: crossings still too close")

    def _pipe_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The designed gravity pipes (their nodes) and the street edge each runs along."""
        k = np.flatnonzero(~self.is_sink & ~self.force & (self.parent >= 0))
        return k, self.pipe_edge[k]

    def too_wide(self, band: np.ndarray) -> list[str]:
        """Feature ids of the conduits that reach out of their street's band, (left, right)
        per street edge: where the street is too narrow for them beside the other lines."""
        k, e = self._pipe_edges()
        if not len(k):
            return []
        sec = SECTIONS.iloc[self.idx[k]]
        half = (sec["width"] * sec["barrels"]).to_numpy(float) / 2
        s = self.layout.streets
        a, b = s.nodes[s.edges[e, 0]], s.nodes[s.edges[e, 1]]
        axis = np.where(np.abs(b[:, 1] - a[:, 1]) <= np.abs(b[:, 0] - a[:, 0]), 1, 0)
        rows = np.arange(len(k))
        off_a = (self.xy[k] - a)[rows, axis]
        off_b = (self.xy[self.parent[k]] - a)[rows, axis]
        out = (np.minimum(off_a, off_b) - half < band[e, 0] - 1e-6) | (
            np.maximum(off_a, off_b) + half > band[e, 1] + 1e-6
        )
        return [f"{PREFIXES[self.name]}C{x}" for x in self.label[k[out]]]

    def edge_widths(self) -> np.ndarray:
        """The widest pipe (m, all barrels) along each street edge."""
        out = np.zeros(len(self.layout.streets.edges))
        k, e = self._pipe_edges()
        if not len(k):
            return out
        sec = SECTIONS.iloc[self.idx[k]]
        np.maximum.at(out, e, (sec["width"] * sec["barrels"]).to_numpy(float))
        return out

    # sizes and levels
    def design(self, formula: StormFormula, period: float) -> None:
        """Size every pipe and set its levels, from the upstream ends down; place pumping
        stations where pipes would get too deep: a lift to a discharge chamber where the next
        pipe can start shallow again, a rising main to the next manhole where even a shallow
        pipe would end too deep (the street climbs), and where a pipe would reach its creek
        below the creek's normal level, a drainage pumping station beside the creek."""
        m = len(self.xy)
        c, g = self.cover, self.ground
        self.area_acc = self.area_psi.copy()
        self.dwf_acc = self.dwf.copy()
        self.t_up = np.zeros(m)  # min of flow in pipes from the farthest inlet
        min_idx = np.zeros(m, int)
        crown_in = np.full(m, np.inf)
        bottom_in = np.full(m, np.inf)
        height_in = np.zeros(m)  # tallest incoming pipe
        self.idx = np.zeros(m, int)
        self.start = np.full(m, np.nan)
        self.end = np.full(m, np.nan)
        self.flow = np.zeros(m)  # design flow of the pipe (sinks: of the station)
        self.capacity = np.zeros(m)
        self.lift = np.zeros(m, bool)  # a lift station and a discharge chamber
        self.force = np.zeros(m, bool)  # a pumping station and a rising main to the parent
        for k in range(self.level.max(), -1, -1):
            v = np.flatnonzero(self.level == k)
            self.flow[v] = self.design_flow(v, self.t_up[v], formula, period)
            if k == 0:
                break
            self.size(v, crown_in[v], bottom_in[v], min_idx[v])
            w, idx, end = self.parent[v], self.idx[v], self.end[v]
            gravity = ~self.force[v]
            length = self.length[v] - np.where(self.lift[v], DISCHARGE_OFFSET, 0.0)
            velocity = np.clip(self.capacity[v] / SEC_AREA[idx], 0.6, 5.0)
            time = length / np.where(gravity, CELERITY * velocity, 1.5) / 60.0
            np.maximum.at(self.t_up, w, self.t_up[v] + time)
            np.maximum.at(min_idx, w, idx)
            np.minimum.at(crown_in, w[gravity], (end + SEC_H[idx])[gravity])
            np.minimum.at(bottom_in, w[gravity], end[gravity])
            np.maximum.at(height_in, w[gravity], SEC_H[idx][gravity])
            np.add.at(self.area_acc, w, self.area_acc[v])
            np.add.at(self.dwf_acc, w, self.dwf_acc[v])
        shallowest = np.floor((g - c - SEC_H[0]) * 1000) / 1000
        # wet wells: a sump below the lowest incoming pipe
        self.well_floor = np.floor((np.minimum(bottom_in, shallowest) - SUMP) * 1000) / 1000
        self.height_in = np.maximum(height_in, SEC_H[0])
        # outfalls: at the lowest pipe reaching them, or the creek's level (pumped only)
        self.outfall_invert = np.where(np.isfinite(bottom_in), bottom_in, self.water_level)

    def size(
        self, v: np.ndarray, crown_in: np.ndarray, bottom_in: np.ndarray, min_idx: np.ndarray
    ) -> None:
        """The smallest section, from ``min_idx`` up, that carries each pipe's design flow at
        the slope it gets, with its levels and pumping station if any."""
        c, g = self.cover, self.ground
        w = self.parent[v]
        need = self.flow[v] / (FOUL_FILL if self.name == "sewer" else 1.0)
        idx = min_idx.copy()
        todo = np.ones(len(v), bool)
        fields = {key: np.zeros(len(v)) for key in ("start", "end", "capacity")}
        lift = np.zeros(len(v), bool)
        force = np.zeros(len(v), bool)
        inflow = np.isfinite(crown_in)
        creek = self.water_level[w]  # NaN: not into a creek
        while todo.any():
            pos = np.flatnonzero(todo)
            h, length, g_end = SEC_H[idx[pos]], self.length[v[pos]], g[w[pos]]
            s = np.minimum(np.minimum(g[v[pos]] - c[v[pos]], crown_in[pos]) - h, bottom_in[pos])
            s = np.floor(s * 1000) / 1000
            e = self.lay(s, length, h, g_end, c[w[pos]])
            deep = (g_end - e > MAX_DEPTH) | (g[v[pos]] - s > MAX_DEPTH)
            shallow = np.floor((self.dc_ground[v[pos]] - c[v[pos]] - h) * 1000) / 1000
            e_lift = self.lay(shallow, length - DISCHARGE_OFFSET, h, g_end, c[w[pos]])
            up = deep & inflow[pos]
            lift[pos] = up & (g_end - e_lift <= MAX_DEPTH)
            force[pos] = deep & ~lift[pos]
            s = np.where(lift[pos], shallow, s)
            e = np.where(lift[pos], e_lift, e)
            drowned = e < creek[pos]  # would reach its creek below the creek's level: pumped
            force[pos] |= drowned
            lift[pos] &= ~drowned
            length = length - np.where(lift[pos], DISCHARGE_OFFSET, 0.0)
            cap = SEC_CONVEYANCE[idx[pos]] * np.sqrt((s - e) / length)
            ok = (cap >= need[pos]) | (idx[pos] == len(SEC_H) - 1) | force[pos]
            fields["start"][pos], fields["end"][pos], fields["capacity"][pos] = s, e, cap
            idx[pos[~ok]] += 1
            todo[pos[ok]] = False
        self.idx[v], self.lift[v], self.force[v] = idx, lift, force
        self.start[v] = np.where(force, np.nan, fields["start"])
        self.end[v] = np.where(force, np.nan, fields["end"])
        self.capacity[v] = np.where(force, self.flow[v], fields["capacity"])

    def lay(
        self,
        start: np.ndarray,
        length: np.ndarray,
        h: np.ndarray,
        g_end: np.ndarray,
        c_end: np.ndarray,
    ) -> np.ndarray:
        """Downstream invert of a pipe: at least the minimum slope below the start, and deeper
        where the ground ahead needs it for cover ``c_end`` (rounded down to the mm)."""
        end = np.minimum(start - min_slope(h) * length, g_end - c_end - h)
        return np.floor(end * 1000) / 1000

    def design_flow(
        self, v: np.ndarray, t_up: np.ndarray, formula: StormFormula, period: float
    ) -> np.ndarray:
        """Design flow (m³/s) of the pipes leaving nodes ``v``."""
        dwf = self.dwf_acc[v]
        peak = dwf * np.clip(2.7 / np.maximum(dwf * 1000, 1e-6) ** 0.11, 1.3, 2.3)
        if self.name == "sewer":
            return peak
        rain = self.area_acc[v] * rate(INLET_TIME + t_up, period, formula) / 1000
        return rain + dwf

    # the SWMM model
    def model(
        self,
        rng: np.random.Generator,
        storm: tuple[np.ndarray, np.ndarray],
        plants: gpd.GeoDataFrame,
    ) -> DrainageNetwork:
        """Tables and SWMM INP text of the designed network."""
        g = self.ground
        label = self.label
        station = (self.is_sink & ~self.outfall) | self.lift | self.force
        kind = np.where(station, "WW", np.where(self.outfall, "OF", "MH")).astype(object)
        self.node_name = kind + label
        catchment = ("OF" + label)[self.sink_of]
        nodes = pd.DataFrame(
            {
                "kind": np.where(station, "storage", np.where(self.outfall, "outfall", "junction")),
                "role": np.where(station, "wet_well", np.where(self.outfall, "outfall", "manhole")),
                "name": self.node_name,
                "x": self.xy[:, 0],
                "y": self.xy[:, 1],
                "invert": np.where(
                    station,
                    self.well_floor,
                    np.where(self.outfall, self.outfall_invert, self.start),
                ),
                "ground": g,
                "street_node": self.street,
                "catchment": catchment,
                "stage": self.water_level,
                "gate": self.outfall,
            }
        )
        lift = self.lift
        chambers = pd.DataFrame(
            {
                "kind": "junction",
                "role": "discharge_chamber",
                "name": "DC" + label[lift],
                "x": self.dc_xy[lift, 0],
                "y": self.dc_xy[lift, 1],
                "invert": self.start[lift],
                "ground": self.dc_ground[lift],
                "street_node": self.street[lift],
                "catchment": catchment[lift],
            }
        )
        pipes = np.flatnonzero(~self.is_sink & ~self.force)
        sec = SECTIONS.iloc[self.idx[pipes]].reset_index(drop=True)
        material = self.materials(rng, pipes)
        conduits = pd.DataFrame(
            {
                "name": "C" + label[pipes],
                "kind": "conduit",
                "from_node": np.where(lift, "DC" + label, self.node_name)[pipes],
                "to_node": self.node_name[self.parent[pipes]],
                "length": np.round(self.length[pipes] - DISCHARGE_OFFSET * lift[pipes], 2),
                "shape": sec["shape"],
                "height": sec["height"],
                "width": sec["width"],
                "barrels": sec["barrels"],
                "invert_from": self.start[pipes],
                "invert_to": self.end[pipes],
                "roughness": np.where(material == "HDPE", 0.011, sec["n"]),
                "material": material,
                "design_flow": self.flow[pipes],
                "capacity": self.capacity[pipes],
            }
        )
        stations, pumps, curves, outfalls = self.stations(plants)
        nodes = pd.concat([nodes, chambers, outfalls], ignore_index=True)
        nodes["max_depth"] = nodes["ground"] - nodes["invert"]
        links = pd.concat([conduits, pumps], ignore_index=True)
        has_rain = self.name != "sewer"
        subs = self.subcatchment_frame() if has_rain else _empty_subcatchments()
        dwf = pd.Series(self.dwf, index=self.node_name)
        dwf = dwf[dwf > 0] if self.name != "storm" else dwf.iloc[:0]
        inp = _inp(
            self.name,
            self.layout,
            nodes,
            links,
            stations,
            curves,
            subs,
            dwf,
            storm if has_rain else None,
        )
        return DrainageNetwork(self.name, PREFIXES[self.name], nodes, links, subs, stations, inp)

    def laterals(self) -> pd.DataFrame:
        """The building connections with their laterals as laid (after ``model``): manhole
        name, size, length, and the inverts and cover at both ends."""
        conn = self.conn.copy()
        node = conn.pop("local").to_numpy()
        conn["node"] = self.node_name[node]
        conn["node_x"], conn["node_y"] = self.xy[node, 0], self.xy[node, 1]
        conn["ground1"] = self.ground[node]
        conn["invert0"] = np.round(conn["ground0"] - conn["cover0"] - conn["dn"], 3)
        conn["invert1"] = np.round(conn["ground1"] - conn["cover1"] - conn["dn"], 3)
        return conn

    def stations(
        self, plants: gpd.GeoDataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame, list, pd.DataFrame]:
        """Pumping stations (wet well, pumps and their depth–flow curves) at the sinks and
        lift points, and the outfalls they pump to: the river (drainage stations), a creek
        (drainage stations beside a creek) or their own inlet at the nearest treatment works
        (sewage and combined stations)."""
        river = self.layout.river
        g, label = self.ground, self.label
        plant_xy = plants[["x", "y"]].to_numpy()
        plant_level = np.maximum(river.water_level, self.layout.terrain.sample(plant_xy))
        rows, pumps, curves, outfalls = [], [], [], []
        for i in np.flatnonzero((self.is_sink & ~self.outfall) | self.lift | self.force):
            name = self.node_name[i]
            depth = g[i] - self.well_floor[i]
            flow = max(float(self.flow[i]), 0.05)
            full = SUMP + 0.5 * self.height_in[i]  # design flow with the incoming pipe half full
            plant = int(np.argmin(np.linalg.norm(plant_xy - self.xy[i], axis=1)))
            works = None
            if self.lift[i]:
                role, targets = "lift", [("PU", "DC" + label[i], flow, 0.0)]
            elif self.force[i] and self.outfall[self.parent[i]]:
                role = "drainage"
                targets = [("PU", self.node_name[self.parent[i]], flow, SUMP)]
            elif self.force[i]:
                role, targets = "lift", [("PU", self.node_name[self.parent[i]], flow, 0.0)]
            elif self.name == "sewer":
                works = plant
                role, targets = "sewage", [("PU", "TW" + label[i], flow, 0.0)]
            else:
                bank = shapely.offset_curve(river.centerline, self.side[i] * river.width / 2)
                point = bank.interpolate(bank.project(shapely.Point(self.xy[i])))
                outfalls.append(("OF" + label[i], point.x, point.y, river.water_level, True))
                role, targets = "drainage", [("PU", "OF" + label[i], flow, SUMP)]
                if self.name == "combined":
                    intercept = max((1 + INTERCEPTION_RATIO) * self.dwf_acc[i], 0.005)
                    works, role = plant, "combined"
                    targets = [
                        ("PI", "TW" + label[i], intercept, None),
                        ("PU", "OF" + label[i], max(flow - intercept, 0.05), SUMP),
                    ]
            if works is not None:
                x, y = plant_xy[works]
                outfalls.append(("TW" + label[i], x, y, round(float(plant_level[works]), 3), False))
            for kind, target, q, begin in targets:
                if begin is None:  # interception: all it can take once the sump is half full
                    points = [(0.0, 0.0), (SUMP / 2, q), (depth, q)]
                else:  # the design flow with the incoming pipe half full, more as lift falls
                    first = max(begin, 0.3)
                    at = max(full, first + 0.2)
                    top = at + 0.5 * self.height_in[i]
                    points = [
                        (0.0, 0.0),
                        (first, 0.0),
                        (at, q),
                        (top, LOW_LIFT_GAIN * q),
                        (depth, LOW_LIFT_GAIN * q),
                    ]
                curves.append((kind + label[i], points))
                pumps.append(
                    {
                        "name": kind + label[i],
                        "kind": "pump",
                        "from_node": name,
                        "to_node": target,
                        "design_flow": q,
                        "capacity": q,
                    }
                )
            rows.append(
                {
                    "name": name,
                    "role": role,
                    "plant": None if works is None else plants["name"].iloc[works],
                    "street_node": int(self.street[i]),
                    "x": self.xy[i, 0],
                    "y": self.xy[i, 1],
                    "ground": g[i],
                    "wet_well": name,
                    "well_floor": self.well_floor[i],
                    "area": max(20.0, 20.0 * flow),
                    "pumps": [kind + label[i] for kind, *_ in targets],
                    "capacity": float(sum(q for _, _, q, _ in targets)),
                }
            )
        out = pd.DataFrame(outfalls, columns=["name", "x", "y", "invert", "fixed"])
        out = out.assign(
            kind="outfall",
            role="outfall",
            ground=np.nan,
            street_node=-1,
            gate=False,
            stage=np.where(out["fixed"].astype(bool), river.water_level, np.nan),
        ).drop(columns="fixed")
        return pd.DataFrame(rows), pd.DataFrame(pumps), curves, out

    def materials(self, rng: np.random.Generator, pipes: np.ndarray) -> np.ndarray:
        """Concrete, and plastic (HDPE) for half of the small new separate sewers."""
        box = SECTIONS["shape"].to_numpy()[self.idx[pipes]] == "RECT_CLOSED"
        small = SECTIONS["height"].to_numpy()[self.idx[pipes]] <= 0.8
        plastic = small & (rng.random(len(pipes)) < 0.5) & (self.name != "combined")
        return np.where(box, "RC box", np.where(plastic, "HDPE", "concrete"))

    def subcatchment_frame(self) -> pd.DataFrame:
        """The blocks as subcatchments, each draining to its inlet's node."""
        b = self.blocks
        return pd.DataFrame(
            {
                "name": [f"S{k:06d}" for k in b["block"]],
                "block": b["block"].to_numpy(),
                "land_use": b["land_use"].to_numpy(),
                "outlet": self.node_name[b["node"].to_numpy()],
                "area": b["area"].to_numpy(),
                "imperviousness": b["imperviousness"].to_numpy(),
                "width": b["width"].to_numpy(),
                "slope": b["slope"].to_numpy(),
                "geometry": b["geometry"].to_numpy(),
            }
        )


def _empty_subcatchments() -> pd.DataFrame:
    columns = ["name", "block", "land_use", "outlet", "area", "imperviousness", "width", "slope"]
    return pd.DataFrame({c: [] for c in [*columns, "geometry"]})


# -- SWMM text --------------------------------------------------------------------------------
def _row(*tokens: object) -> str:
    return " ".join(f"{t!s:<16}" for t in tokens).rstrip()


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _clock(minutes: float) -> str:
    return f"{int(minutes // 60)}:{round(minutes % 60):02d}"


def _inp(
    network: str,
    layout: CityLayout,
    nodes: pd.DataFrame,
    links: pd.DataFrame,
    stations: pd.DataFrame,
    curves: list[tuple[str, list[tuple[float, float]]]],
    subs: pd.DataFrame,
    dwf: pd.Series,
    storm: tuple[np.ndarray, np.ndarray] | None,
) -> str:
    """The SWMM 5 input file of one network."""
    hours = STORM_HOURS if storm is not None else SEWER_HOURS
    end = START + dt.timedelta(hours=hours)
    out = [
        "[TITLE]",
        f";;Virtual city {network} drainage (generated by citytwin.synth, not real data)",
        f"Virtual city seed {layout.seed}, {layout.area_km2:g} km2: {network} network",
        "",
        "[OPTIONS]",
        _row("FLOW_UNITS", "CMS"),
        _row("INFILTRATION", "HORTON"),
        _row("FLOW_ROUTING", "DYNWAVE"),
        _row("LINK_OFFSETS", "ELEVATION"),
        _row("MIN_SLOPE", "0"),
        _row("ALLOW_PONDING", "NO"),
        _row("SKIP_STEADY_STATE", "NO"),
        _row("START_DATE", f"{START:%m/%d/%Y}"),
        _row("START_TIME", f"{START:%H:%M:%S}"),
        _row("REPORT_START_DATE", f"{START:%m/%d/%Y}"),
        _row("REPORT_START_TIME", f"{START:%H:%M:%S}"),
        _row("END_DATE", f"{end:%m/%d/%Y}"),
        _row("END_TIME", f"{end:%H:%M:%S}"),
        _row("DRY_DAYS", "5"),
        _row("REPORT_STEP", "00:05:00"),
        _row("WET_STEP", "00:01:00"),
        _row("DRY_STEP", "00:05:00"),
        _row("ROUTING_STEP", f"{ROUTING_STEP:g}"),
        _row("INERTIAL_DAMPING", "PARTIAL"),
        _row("NORMAL_FLOW_LIMITED", "BOTH"),
        _row("FORCE_MAIN_EQUATION", "H-W"),
        _row("VARIABLE_STEP", "0.75"),
        _row("LENGTHENING_STEP", "0"),
        _row("MIN_SURFAREA", "1.167"),
        _row("MAX_TRIALS", "8"),
        _row("HEAD_TOLERANCE", "0.0015"),
        _row("SYS_FLOW_TOL", "5"),
        _row("LAT_FLOW_TOL", "5"),
        _row("MINIMUM_STEP", "0.5"),
        _row("THREADS", "1"),
        "",
        "[EVAPORATION]",
        _row("CONSTANT", "0.0"),
        _row("DRY_ONLY", "NO"),
        "",
    ]
    if storm is not None:
        step = float(storm[0][1] - storm[0][0]) if len(storm[0]) > 1 else 5.0
        out += [
            "[RAINGAGES]",
            _row("RG1", "INTENSITY", _clock(step), "1.0", "TIMESERIES", RAIN_SERIES),
            "",
        ]
    if len(subs):
        out += ["[SUBCATCHMENTS]"]
        out += [
            _row(
                r.name,
                "RG1",
                r.outlet,
                _f(r.area / 1e4, 4),
                _f(r.imperviousness, 1),
                _f(r.width, 1),
                _f(r.slope, 2),
                "0",
            )
            for r in subs.itertuples(index=False)
        ]
        out += ["", "[SUBAREAS]"]
        out += [_row(name, "0.013", "0.15", "2", "5", "25", "OUTLET") for name in subs["name"]]
        out += ["", "[INFILTRATION]"]
        out += [_row(name, "76.2", "12.7", "4.14", "7", "0") for name in subs["name"]]
        out += [""]
    junctions = nodes[nodes["kind"] == "junction"]
    out += ["[JUNCTIONS]"]
    out += [
        _row(r.name, _f(r.invert), _f(r.max_depth), "0", "0", "0")
        for r in junctions.itertuples(index=False)
    ]
    outfalls = nodes[nodes["kind"] == "outfall"]
    out += ["", "[OUTFALLS]"]
    out += [
        _row(r.name, _f(r.invert), "FIXED", _f(r.stage), "YES" if r.gate else "NO")
        if np.isfinite(r.stage)
        else _row(r.name, _f(r.invert), "FREE", "NO")
        for r in outfalls.itertuples(index=False)
    ]
    if len(stations):
        area = dict(zip(stations["wet_well"], stations["area"], strict=True))
        wells = nodes[nodes["kind"] == "storage"]
        out += ["", "[STORAGE]"]
        out += [
            _row(
                r.name,
                _f(r.invert),
                _f(r.max_depth),
                "0",
                "FUNCTIONAL",
                "0",
                "0",
                _f(area[r.name], 1),
                "0",
                "0",
            )
            for r in wells.itertuples(index=False)
        ]
    conduits = links[links["kind"] == "conduit"]
    out += ["", "[CONDUITS]"]
    out += [
        _row(
            r.name,
            r.from_node,
            r.to_node,
            _f(r.length, 2),
            f"{r.roughness:g}",
            _f(r.invert_from),
            _f(r.invert_to),
            "0",
            "0",
        )
        for r in conduits.itertuples(index=False)
    ]
    pumps = links[links["kind"] == "pump"]
    if len(pumps):
        out += ["", "[PUMPS]"]
        out += [
            _row(r.name, r.from_node, r.to_node, "PC" + r.name, "ON", "0", "0")
            for r in pumps.itertuples(index=False)
        ]
    out += ["", "[XSECTIONS]"]
    out += [
        _row(
            r.name,
            r.shape,
            f"{r.height:g}",
            f"{r.width:g}" if r.shape != "CIRCULAR" else "0",
            "0",
            "0",
            str(r.barrels),
        )
        for r in conduits.itertuples(index=False)
    ]
    if len(dwf):
        out += ["", "[DWF]"]
        out += [_row(name, "FLOW", f"{q:.6g}", '"DIURNAL"') for name, q in dwf.items()]
    if curves:
        out += ["", "[CURVES]"]
        for name, points in curves:
            for k, (d, q) in enumerate(points):
                out.append(_row("PC" + name, "Pump4" if k == 0 else "", _f(d), f"{q:.4f}"))
            out.append("")
        out.pop()
    if storm is not None:
        out += ["", "[TIMESERIES]", *_series_rows(*storm)]
    if len(dwf):
        mean = sum(DIURNAL) / len(DIURNAL)
        factors = [f"{v / mean:.3f}" for v in DIURNAL]
        out += ["", "[PATTERNS]"]
        for k in range(0, 24, 6):
            out.append(_row("DIURNAL", "HOURLY" if k == 0 else "", *factors[k : k + 6]))
    out += [
        "",
        "[REPORT]",
        _row("INPUT", "NO"),
        _row("CONTROLS", "NO"),
        _row("SUBCATCHMENTS", "NONE"),
        _row("NODES", "NONE"),
        _row("LINKS", "NONE"),
        "",
        "[MAP]",
        _row("DIMENSIONS", *(_f(v) for v in layout.extent)),
        _row("Units", "Meters"),
        "",
        "[COORDINATES]",
    ]
    out += [_row(r.name, _f(r.x), _f(r.y)) for r in nodes.itertuples(index=False)]
    if len(subs):
        out += ["", "[Polygons]"]
        for name, geom in zip(subs["name"], subs["geometry"], strict=True):
            ring = shapely.get_coordinates(geom.exterior)[:-1]
            out += [_row(name, _f(x), _f(y)) for x, y in ring]
    return "\n".join(out) + "\n"


def _series_rows(times_min: np.ndarray, mm_per_h: np.ndarray) -> list[str]:
    rows = [
        _row(RAIN_SERIES, _clock(t), f"{i:.3f}") for t, i in zip(times_min, mm_per_h, strict=True)
    ]
    end = float(times_min[-1] + (times_min[1] - times_min[0] if len(times_min) > 1 else 5.0))
    return [*rows, _row(RAIN_SERIES, _clock(end), "0.000")]


def with_storm(inp_text: str, times_min: np.ndarray, mm_per_h: np.ndarray) -> str:
    """``inp_text`` with another design storm: the rain series and the gauge's interval
    replaced, and the simulation made long enough for the storm plus two hours."""
    times_min = np.asarray(times_min, dtype=float)
    steps = np.diff(times_min)
    if len(times_min) < 2 or not np.allclose(steps, steps[0]):
        raise ValueError("the storm needs at least two steps, evenly spaced")
    if "[TIMESERIES]" not in inp_text or RAIN_SERIES not in inp_text:
        raise ValueError(f"the model has no rain series {RAIN_SERIES!r} to replace")
    lines = inp_text.splitlines()
    out, section = [], ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.upper()
            out.append(line)
            if section == "[TIMESERIES]":
                out += _series_rows(times_min, np.asarray(mm_per_h, dtype=float))
            continue
        tokens = stripped.split()
        if section == "[TIMESERIES]" and tokens and tokens[0] == RAIN_SERIES:
            continue
        if section == "[RAINGAGES]" and len(tokens) > 2 and tokens[0] == "RG1":
            tokens[2] = _clock(float(steps[0]))
            line = _row(*tokens)
        out.append(line)
    text = "\n".join(out) + "\n"
    options = dict(re.findall(r"(?m)^\s*(START_DATE|START_TIME|END_DATE|END_TIME)\s+(\S+)", text))
    start = dt.datetime.strptime(
        f"{options['START_DATE']} {options['START_TIME']}", "%m/%d/%Y %H:%M:%S"
    )
    end = dt.datetime.strptime(f"{options['END_DATE']} {options['END_TIME']}", "%m/%d/%Y %H:%M:%S")
    needed = start + dt.timedelta(minutes=float(times_min[-1] + steps[0]) + 120.0)
    if needed > end:
        text = re.sub(r"(?m)^(\s*END_DATE\s+)\S+", rf"\g<1>{needed:%m/%d/%Y}", text)
        text = re.sub(r"(?m)^(\s*END_TIME\s+)\S+", rf"\g<1>{needed:%H:%M:%S}", text)
    return text


# -- into the twin ----------------------------------------------------------------------------
def drainage_bundle(layout: CityLayout, plan: DrainagePlan) -> ImportBundle:
    """The plan as model features: per network its SWMM objects (manholes, wet wells,
    outfalls, conduits, pumps, subcatchments) with a ``network/<name>`` document that
    ``write_swmm`` exports; every pumping station is its wet well (a ``storage`` node named
    after the station, with its role, pumps and capacity in its props); a
    ``service_connection`` node at each building's drain exit (``svc:`` ids) and its lateral
    to the manhole (``service_pipe``, ``lat:`` ids), GIS features outside the SWMM model;
    and the pumping stations, the creeks' sluice and pumping stations and the treatment
    works as facilities."""
    source = f"{SOURCE} drainage seed={plan.seed} area={layout.area_km2:g} km2"
    bundle = ImportBundle(source)
    stations = _stations(plan)
    for name, net in plan.networks.items():
        part = swmm_bundle(net.inp, layout.crs, source=source, id_prefix=net.prefix, network=name)
        mine = stations[stations["network"] == name] if len(stations) else stations
        bundle.add("utility_nodes", _with_plan(part.layers["utility_nodes"], net, mine))
        bundle.add("utility_links", _with_design(part.layers["utility_links"], net))
        if "zones" in part.layers:
            subs = net.subcatchments.set_index("name").reindex(part.layers["zones"]["name"])
            bundle.add(
                "zones",
                part.layers["zones"].assign(
                    land_use=subs["land_use"].to_numpy(),
                    props=[
                        {**p, "block": f"block-{k:06d}"}
                        for p, k in zip(part.layers["zones"]["props"], subs["block"], strict=True)
                    ],
                ),
            )
        (doc,) = part.documents.values()
        bundle.documents[f"network/{name}"] = doc
    bundle.documents["synth/clearance_shortfalls"] = {
        "conduits_too_wide": plan.notes.get("conduits_too_wide", []),
        "why": (
            "sewers (box culverts) wider than the band their street leaves beside the water, "
            "gas, power and cooling lines: they break horizontal clearances there"
        ),
    }
    conn = plan.connections
    prefix = conn["network"].map(PREFIXES).to_numpy(object)
    svc = "svc:" + prefix + conn["building_id"].to_numpy(object)
    bundle.add(
        "utility_nodes",
        gpd.GeoDataFrame(
            {
                "id": svc,
                "class": "service_connection",
                "network": conn["network"].to_numpy(object),
                "building_id": conn["building_id"].to_numpy(object),
                "cover_level": conn["ground0"].round(3).to_numpy(),
                "invert_level": conn["invert0"].to_numpy(),
                "depth": (conn["ground0"].round(3) - conn["invert0"]).round(3).to_numpy(),
                "props": [
                    {"manhole": p + node, "dwf_m3_s": round(float(q), 7)}
                    for p, node, q in zip(prefix, conn["node"], conn["dwf"], strict=True)
                ],
            },
            geometry=shapely.points(conn[["x", "y"]].to_numpy()),
            crs=layout.crs,
        ),
    )
    dn = conn["dn"].to_numpy(float)
    bundle.add(
        "utility_links",
        gpd.GeoDataFrame(
            {
                "id": "lat:" + prefix + conn["building_id"].to_numpy(object),
                "class": "service_pipe",
                "network": conn["network"].to_numpy(object),
                "from_node": svc,
                "to_node": prefix + conn["node"].to_numpy(object),
                "diameter": dn,
                "length": conn["length"].round(2).to_numpy(),
                "material": np.where(dn < 0.2, "PVC-U", "HDPE"),
                "roughness": 0.011,
                "invert_from": conn["invert0"].to_numpy(),
                "invert_to": conn["invert1"].to_numpy(),
                "depth": np.round(np.minimum(conn["cover0"], conn["cover1"]), 3),
                "props": [
                    {
                        "role": "lateral",
                        "building_id": b,
                        "outer_diameter": float(o),
                        "slope": round(float((i0 - i1) / length), 4),
                    }
                    for b, o, i0, i1, length in zip(
                        conn["building_id"],
                        conn["outer"],
                        conn["invert0"],
                        conn["invert1"],
                        conn["length"],
                        strict=True,
                    )
                ],
            },
            geometry=shapely.linestrings(
                np.stack(
                    [conn[["x", "y"]].to_numpy(float), conn[["node_x", "node_y"]].to_numpy(float)],
                    axis=1,
                )
            ),
            crs=layout.crs,
        ),
    )
    bundle.add("facilities", _facilities(layout, plan, stations))
    return bundle


def _with_plan(
    nodes: gpd.GeoDataFrame, net: DrainageNetwork, stations: pd.DataFrame
) -> gpd.GeoDataFrame:
    """SWMM nodes with the outfall of their catchment in their props, the creek outfalls'
    ground (their bank) as cover level, and each pumping station on its wet well: the
    station's name, and its role, pumps and capacity in the props."""
    table = net.nodes.set_index("name")
    catchment = table["catchment"].reindex(nodes["name"])
    ground = table["ground"].reindex(nodes["name"]).to_numpy(float)
    at = stations.set_index("wet_well") if len(stations) else pd.DataFrame()
    names, props = [], []
    for name, p, c in zip(nodes["name"], nodes["props"], catchment, strict=True):
        p = {**p, "catchment": net.prefix + c} if isinstance(c, str) else dict(p)
        if name in at.index:
            s = at.loc[name]
            p["station"] = {
                "role": s["role"],
                "pumps": [net.prefix + x for x in s["pumps"]],
                "capacity_m3_s": round(float(s["capacity"]), 4),
                **({"treatment_works": s["plant"]} if isinstance(s["plant"], str) else {}),
                "facility": s["facility"],
            }
            names.append(s["title"])
        else:
            names.append(name)
        props.append(p)
    outfall = (nodes["class"] == "outfall").to_numpy() & np.isfinite(ground)
    cover = np.where(outfall, np.round(ground, 3), nodes["cover_level"].to_numpy(float))
    invert = nodes["invert_level"].to_numpy(float)
    return nodes.assign(
        name=names,
        props=props,
        cover_level=cover,
        depth=np.where(outfall, np.round(cover - invert, 3), nodes["depth"].to_numpy(float)),
    )


def _with_design(links: gpd.GeoDataFrame, net: DrainageNetwork) -> gpd.GeoDataFrame:
    """SWMM links with material, cover over the crown, design flow and capacity, and the
    conduits' role (``main``: a corridor line, for the clearance rules)."""
    table = net.links.set_index("name").reindex(links["name"])
    ground = net.nodes.set_index("name")["ground"]
    inverts = links.reindex(columns=["invert_from", "invert_to"])  # absent: a network of pumps only
    crown_from = inverts["invert_from"].to_numpy(float) + table["height"].to_numpy(float)
    crown_to = inverts["invert_to"].to_numpy(float) + table["height"].to_numpy(float)
    cover = np.fmin(
        ground.reindex(table["from_node"]).to_numpy(float) - crown_from,
        ground.reindex(table["to_node"]).to_numpy(float) - crown_to,
    )
    return links.assign(
        material=table["material"].to_numpy(),
        depth=np.round(cover, 3),
        props=[
            {
                **p,
                **({"role": "main"} if kind == "conduit" else {}),
                "design_flow": round(float(q), 4),
                "capacity": round(float(c), 4),
            }
            for p, kind, q, c in zip(
                links["props"], table["kind"], table["design_flow"], table["capacity"], strict=True
            )
        ],
    )


_TITLES = {
    "drainage": "Drainage Pumping Station",
    "combined": "Combined Sewage Pumping Station",
    "sewage": "Sewage Pumping Station",
    "lift": "Lift Station",
}


def _stations(plan: DrainagePlan) -> pd.DataFrame:
    """Every pumping station of the plan with its node's feature id (its wet well), a
    numbered title and its facility's id."""
    frames = [
        net.stations.assign(network=name, prefix=net.prefix)
        for name, net in plan.networks.items()
        if len(net.stations)
    ]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["id"] = out["prefix"] + out["wet_well"]
    number = out.groupby(["network", "role"]).cumcount() + 1
    label = np.where(out["role"] == "lift", out["network"].str.title() + " ", "")
    out["title"] = label + out["role"].map(_TITLES) + " " + number.astype(str)
    out["facility"] = "fac-" + out["prefix"].str[:-1] + "-" + out["wet_well"].str[2:]
    return out


def _facilities(layout: CityLayout, plan: DrainagePlan, stations: pd.DataFrame) -> gpd.GeoDataFrame:
    """Pumping stations (small round sites around their wet wells), the sluice and pumping
    station at each creek's mouth, and the sewage treatment works as facilities."""
    rows = [
        {
            "id": s.facility,
            "class": "pumping_station",
            "name": s.title,
            "critical": s.role != "lift",
            "operator": OPERATOR,
            "props": {"network": s.network, "role": s.role, "node": s.id},
            "geometry": shapely.Point(s.x, s.y).buffer(12.0, quad_segs=4),
        }
        for s in stations.itertuples(index=False)
    ]
    creeks = layout.creeks
    for c in creeks[creeks["reach"] == 1].itertuples(index=False):
        mouth = c.y_from + 2.0 * c.side  # at the river's edge
        rows.append(
            {
                "id": f"fac-creek-{c.creek}",
                "class": "pumping_station",
                "name": f"Creek Sluice and Pumping Station {c.creek}",
                "critical": True,
                "operator": OPERATOR,
                "props": {
                    "network": "storm",
                    "role": "creek_mouth",
                    "water_body": c.id,
                    "holds_level": c.water_level,
                    "discharges_to": "river-1",
                },
                "geometry": shapely.box(
                    c.x - c.width / 2,
                    min(mouth, mouth + 15 * c.side),
                    c.x + c.width / 2,
                    max(mouth, mouth + 15 * c.side),
                ),
            }
        )
    for p in plan.treatment_plants.itertuples(index=False):
        inlets = [
            s.prefix + "TW" + s.name[2:]
            for s in stations.itertuples(index=False)
            if s.plant == p.name
        ]
        rows.append(
            {
                "id": f"fac-{p.name.lower()}",
                "class": "sewage_treatment_plant",
                "name": f"Virtual Sewage Treatment Works {p.name[4:]}",
                "critical": True,
                "operator": OPERATOR,
                "props": {"inlets": inlets},
                "geometry": p.geometry,
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=layout.crs)


def _full_flow(dn: float, slope: float, n: float = 0.011) -> float:
    """Full-bore flow (m³/s) of a round pipe of diameter ``dn`` at ``slope`` (Manning)."""
    return math.pi * dn**2 / 4 * (dn / 4) ** (2 / 3) * math.sqrt(slope) / n


__all__ = [
    "DESIGN_RETURN_PERIOD",
    "PREFIXES",
    "SECTIONS",
    "DrainageNetwork",
    "DrainagePlan",
    "drainage_bundle",
    "min_slope",
    "plan_drainage",
    "runoff_coefficient",
    "with_storm",
]

"""The virtual city's drainage: separate foul and storm sewers, combined sewers in the old town.

Every network is a tree on the street graph (bridges carry no gravity sewers): each street
node in the network's corridor gets a manhole, and its one outgoing pipe runs along a street
towards the catchment's sink on the river bank, chosen by a shortest-path tree that makes
climbing expensive (so the flow follows the terrain). Pipes are sized from the upstream ends
down:

- storm (and the rain part of combined): the rational method, Q = ψ·q·F, with the Guangzhou
  storm formula for P = 2 years at t = 5 min inlet time + the flow time in the pipes above
  (counted at the flood wave's speed, 1.5 × the full-bore velocity), and peak runoff
  coefficients from the blocks' impervious shares (0.95 paved, 0.45 green: what the model's
  SWMM surfaces give under the design storm's peak);
- foul: 200 L per resident and 50 L per worker a day, times the peak factor Kz = 2.7/Q^0.11
  (Q in L/s, held to 1.3–2.3: the usual fit of GB 50014's table), at most 60 % full;

to the smallest standard DN 300–2000 (then box culverts, RECT_CLOSED, with barrels) whose full
flow at the pipe's slope carries it, never smaller than any pipe above. Pipes keep the
network's minimum cover (``cover_depth``: 3.7 m, below every pressure network in the
corridors' vertical order), and foul sewers, designed after the storm sewers, pass 0.15 m above
or below the storm pipes they cross at street corners (below where they would clash: their
minimum cover deepened at both ends of such a pipe, ``_Network.design_clear_of``). Pipes
follow the ground where it falls and otherwise fall at the minimum slope for their size (0.9/DN
in mm: 0.3 % for DN300, no less than 0.1 %), crowns matched at manholes. Where a pipe would
end deeper than 6.5 m, a lift station (wet well, pump with a depth–flow curve, discharge
chamber) starts the next pipe at minimum cover; where even that pipe would end too deep (the
street climbs), the station pumps through a rising main to the next manhole.

The river's normal level (1.5 m) is close below the low ground of its banks (2–3 m), so no
sewer laid with minimum cover can reach the river by gravity: as in the Pearl River Delta,
every storm and combined catchment ends in a drainage pumping station on the bank that lifts
the water to an outfall at the river's normal level (a FIXED stage there); the combined
stations send up to three times the dry-weather flow (interception ratio 2) to the sewage
treatment works and spill the rest to the river. Foul catchments end in sewage pumping
stations whose rising mains run to the treatment works by the river downstream.

``plan_drainage`` is pure: tables and a SWMM 5 INP text per network (CMS, DYNWAVE with a 2 s
variable routing step, ALLOW_PONDING NO so flood water leaves the model as flooding, one
thread, 4 simulated hours for storm and combined, a day of dry-weather flow for foul; the
storm and combined models carry the 2-year Chicago design storm and run as they are).
``drainage_bundle`` turns the plan into model features through the SWMM adapter.
"""

from __future__ import annotations

import datetime as dt
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
from citytwin.synth.corridors import corridor_nodes, cover_depth
from citytwin.synth.layout import IMPERVIOUS, SOURCE, CityLayout

PREFIXES = {"storm": "st:", "sewer": "sw:", "combined": "cb:"}
"""Feature id prefix of each drainage network's SWMM objects (its document's ``id_prefix``)."""

DESIGN_RETURN_PERIOD = 2.0  # years, storm sewers
INLET_TIME = 5.0  # min, overland flow time to the first inlet (dense city blocks)
CELERITY = 1.5  # flood-wave speed / full-bore velocity: what the flow time t2 is counted at
SEWER_CLEARANCE = 0.15  # m, GB 50289's vertical clearance where foul and storm sewers cross
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
    boxes = [(1.8, 2.5), (2.0, 3.0), (2.5, 3.5), (2.5, 4.0), (3.0, 4.5), (3.0, 5.0)]
    rows += [("RECT_CLOSED", h, w, 1) for h, w in boxes]
    rows += [("RECT_CLOSED", 3.0, 5.0, k) for k in range(2, 13)]
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
    ground, street_node, catchment. ``links``: name, kind (conduit / pump), from_node,
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
    connections: pd.DataFrame  # building_id, network, x, y (drain exit), dwf (m³/s), node
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
) -> DrainagePlan:
    """Lay out, size and model the drainage of ``layout``; ``seed`` picks pipe materials."""
    rng = np.random.default_rng([seed, 0xD7A1])
    streets, river = layout.streets, layout.river
    n = len(streets.nodes)
    edges = streets.edges[~streets.bridge]
    bank_dist = shapely.distance(river.channel, shapely.points(streets.nodes))
    combined = _combined_nodes(layout, edges, bank_dist)
    storm = chicago_hyetograph(return_period, formula=formula)

    blocks = layout.blocks
    block_xy = shapely.get_coordinates(shapely.centroid(blocks.geometry.to_numpy()))
    old_block = (blocks["land_use"] == "old_town").to_numpy() & combined.any()
    land_use = pd.Series(blocks["land_use"].to_numpy(), index=blocks["block"].to_numpy())
    buildings = layout.buildings
    old_building = land_use.reindex(buildings["block"]).to_numpy() == "old_town"
    old_building &= combined.any()
    plants = _treatment_plants(layout)

    members = {"storm": ~combined, "sewer": ~combined, "combined": combined}
    networks: dict[str, DrainageNetwork] = {}
    connections = []
    designed: dict[str, _Network] = {}
    for name, mask in members.items():
        if not mask.any():
            continue
        net = _Network(name, layout, np.flatnonzero(mask), edges, bank_dist[mask])
        if name != "sewer":
            mine = old_block if name == "combined" else ~old_block
            net.add_blocks(blocks[mine], block_xy[mine])
        if name != "storm":
            mine = old_building if name == "combined" else ~old_building
            served = net.add_buildings(buildings[mine])
        if name == "sewer":  # foul sewers keep clear of the storm sewers they cross
            net.design_clear_of(designed["storm"], SEWER_CLEARANCE, formula, return_period)
        else:
            net.design(formula, return_period)
        designed[name] = net
        networks[name] = net.model(rng, storm, plants)
        if name != "storm":
            served["node"] = net.node_name[served.pop("local").to_numpy()]
            connections.append(served)
    conn = pd.concat(connections, ignore_index=True)
    return DrainagePlan(
        seed,
        networks,
        conn,
        plants,
        storm,
        return_period,
        notes={"street_nodes": n, "combined_street_nodes": int(combined.sum())},
    )


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


def _treatment_plants(layout: CityLayout) -> gpd.GeoDataFrame:
    """Sewage treatment works by the river downstream, one per ~150 km², alternating banks;
    each with its outfall point on the bank."""
    river, side = layout.river, layout.side
    count = max(1, round(layout.area_km2 * WWTP_PER_KM2))
    line = river.centerline
    rows = []
    for k in range(count):
        along = line.length * (k + 0.9) / count
        sign = -1.0 if k % 2 == 0 else 1.0  # south bank first (the water works is north)
        bank = shapely.offset_curve(line, sign * river.width / 2)
        point = bank.interpolate(bank.project(line.interpolate(along)))
        x = min(max(point.x, layout.origin[0] + 150.0), layout.origin[0] + side - 150.0)
        point = bank.interpolate(bank.project(shapely.Point(x, point.y)))
        y0, y1 = sorted((point.y, point.y + sign * 140.0))  # on the land side of its outfall
        plant = shapely.box(point.x - 110.0, y0, point.x + 110.0, y1)
        plant = shapely.difference(plant, river.channel.buffer(5.0))
        rows.append({"name": f"WWTP{k + 1}", "x": point.x, "y": point.y, "geometry": plant})
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=layout.crs)


class _Network:
    """One network being laid out: tree, loads, sizes and levels, then its SWMM model."""

    def __init__(
        self,
        name: str,
        layout: CityLayout,
        street_nodes: np.ndarray,
        edges: np.ndarray,
        bank_dist: np.ndarray,
    ) -> None:
        self.name, self.layout = name, layout
        self.street = street_nodes
        self.xy = corridor_nodes(layout.streets, name)[street_nodes]
        self.ground = layout.terrain.sample(self.xy)
        m = len(street_nodes)
        self.cover = np.full(m, cover_depth(name))  # minimum cover over the crowns, per node
        local = -np.ones(len(layout.streets.nodes), int)
        local[street_nodes] = np.arange(m)
        e = local[edges]
        self.edges = e[(e >= 0).all(axis=1)]
        self.bank_dist = bank_dist
        self.area_psi = np.zeros(m)  # ψ·F, ha
        self.dwf = np.zeros(m)  # m³/s, average dry-weather flow
        self.blocks: pd.DataFrame | None = None
        self._tree()

    # the drainage tree
    def _tree(self) -> None:
        river = self.layout.river
        m = len(self.xy)
        labels = _components(m, self.edges)
        cx, cy = shapely.get_coordinates(river.centerline).T
        self.side = np.where(self.xy[:, 1] > np.interp(self.xy[:, 0], cx, cy), 1, -1)
        along = shapely.line_locate_point(river.centerline, shapely.points(self.xy))
        frame = pd.DataFrame(
            {
                "label": labels,
                "side": self.side,
                "bin": (along // SINK_SPACING[self.name]).astype(int),
                "score": self.ground + 0.005 * self.bank_dist,
                "dist": self.bank_dist,
            }
        )
        near = frame[frame["dist"] <= BANK_REACH]
        sinks = set(near.groupby(["label", "side", "bin"])["score"].idxmin())
        cut_off = ~np.isin(np.arange(labels.max() + 1), labels[list(sinks)])
        for label in np.flatnonzero(cut_off):  # no bank nearby: the node nearest the river
            sinks.add(int(frame.loc[frame["label"] == label, "dist"].idxmin()))
        self.sinks = np.array(sorted(sinks))

        a, b = self.edges[:, 0], self.edges[:, 1]
        length = np.linalg.norm(self.xy[a] - self.xy[b], axis=1)
        g = self.ground
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

    def outlet_nodes(self, xy: np.ndarray, ground_first: bool) -> np.ndarray:
        """The node each point drains to: its lowest corner within 110 m (blocks) or the
        nearest node (buildings)."""
        tree = cKDTree(self.xy)
        if not ground_first:
            return tree.query(xy)[1]
        k = min(4, len(self.xy))
        dist, idx = tree.query(xy, k=k)
        dist, idx = dist.reshape(len(xy), k), idx.reshape(len(xy), k)
        level = np.where(dist <= 110.0, self.ground[idx], np.inf)
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

    def add_buildings(self, buildings: gpd.GeoDataFrame) -> pd.DataFrame:
        """Each building's foul drain to the nearest manhole; returns the connections."""
        geoms = buildings.geometry.to_numpy()
        node = self.outlet_nodes(shapely.get_coordinates(shapely.centroid(geoms)), False)
        residents = buildings["residents"].to_numpy(float)
        workers = np.maximum(buildings["daytime_population"].to_numpy(float) - 0.35 * residents, 0)
        dwf = (FOUL_PER_RESIDENT * residents + FOUL_PER_WORKER * workers) / 86_400 / 1000
        np.add.at(self.dwf, node, dwf)
        exits = shapely.get_coordinates(
            shapely.get_point(shapely.shortest_line(geoms, shapely.points(self.xy[node])), 0)
        )
        return pd.DataFrame(
            {
                "building_id": buildings["id"].to_numpy(),
                "network": self.name,
                "local": node,
                "x": exits[:, 0],
                "y": exits[:, 1],
                "dwf": dwf,
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

    def _crossings(self, above: _Network) -> tuple[np.ndarray, np.ndarray]:
        """(pipe of mine, pipe of ``above``) node indices of every crossing, with the depths
        below ground of (my crown, my invert, its crown, its invert) there, (n, 4)."""
        k, lines, g0, g1 = self._pipes()
        ka, pipes, a0, a1 = above._pipes()
        i, j = shapely.STRtree(pipes).query(lines, predicate="intersects")
        at = shapely.points(
            shapely.get_coordinates(
                shapely.get_geometry(shapely.intersection(lines[i], pipes[j]), 0)
            )
        )

        def depths(net, n, line, h0, h1):
            t = shapely.line_locate_point(line, at, normalized=True)
            invert = h0 + t * (h1 - h0) - (net.start[n] + t * (net.end[n] - net.start[n]))
            return invert - SEC_H[net.idx[n]], invert

        mine = depths(self, k[i], lines[i], g0[i], g1[i])
        theirs = depths(above, ka[j], pipes[j], a0[j], a1[j])
        return k[i], np.column_stack([*mine, *theirs])

    def design_clear_of(
        self, above: _Network, clearance: float, formula: StormFormula, period: float
    ) -> None:
        """Design the network, then wherever one of its pipes crosses one of ``above``'s
        (designed already) with less than ``clearance`` above or below it, deepen the minimum
        cover at both ends of the pipe to pass below (the crown's cover, linear along a pipe,
        is then deep enough at the crossing) and design again, until every crossing is clear."""
        for _ in range(20):
            self.design(formula, period)
            k, d = self._crossings(above)
            crown, invert, their_crown, their_invert = d.T
            bad = (crown < their_invert + clearance) & (invert > their_crown - clearance)
            if not bad.any():
                return
            need = np.ceil((their_invert[bad] + clearance) * 1000) / 1000 + 0.001
            np.maximum.at(self.cover, k[bad], need)
            np.maximum.at(self.cover, self.parent[k[bad]], need)
        raise RuntimeError(f"{self.name}: crossings with {above.name} still too close")

    # sizes and levels
    def design(self, formula: StormFormula, period: float) -> None:
        """Size every pipe and set its levels, from the upstream ends down; place pumping
        stations where pipes would get too deep: a lift to a discharge chamber where the next
        pipe can start shallow again, a rising main to the next manhole where even a shallow
        pipe would end too deep (the street climbs)."""
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
        label = np.char.zfill(self.street.astype(str), 6).astype(object)
        station = self.is_sink | self.lift | self.force
        self.node_name = np.where(station, "WW", "MH").astype(object) + label
        catchment = ("OF" + label)[self.sink_of]
        nodes = pd.DataFrame(
            {
                "kind": np.where(station, "storage", "junction"),
                "role": np.where(station, "wet_well", "manhole"),
                "name": self.node_name,
                "x": self.xy[:, 0],
                "y": self.xy[:, 1],
                "invert": np.where(station, self.well_floor, self.start),
                "ground": g,
                "street_node": self.street,
                "catchment": catchment,
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
        stations, pumps, curves, outfalls = self.stations(label, plants)
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

    def stations(
        self, label: np.ndarray, plants: gpd.GeoDataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame, list, pd.DataFrame]:
        """Pumping stations (wet well, pumps and their depth–flow curves) at the sinks and
        lift points, and the outfalls they pump to: the river (drainage stations) or their
        own inlet at the nearest treatment works (sewage and combined stations)."""
        river = self.layout.river
        g = self.ground
        plant_xy = plants[["x", "y"]].to_numpy()
        plant_level = np.maximum(river.water_level, self.layout.terrain.sample(plant_xy))
        rows, pumps, curves, outfalls = [], [], [], []
        for i in np.flatnonzero(self.is_sink | self.lift | self.force):
            name = self.node_name[i]
            depth = g[i] - self.well_floor[i]
            flow = max(float(self.flow[i]), 0.05)
            full = SUMP + 0.5 * self.height_in[i]  # design flow with the incoming pipe half full
            plant = int(np.argmin(np.linalg.norm(plant_xy - self.xy[i], axis=1)))
            works = None
            if self.lift[i]:
                role, targets = "lift", [("PU", "DC" + label[i], flow, 0.0)]
            elif self.force[i]:
                role, targets = "lift", [("PU", self.node_name[self.parent[i]], flow, 0.0)]
            elif self.name == "sewer":
                works = plant
                role, targets = "sewage", [("PU", "TW" + label[i], flow, 0.0)]
            else:
                bank = shapely.offset_curve(river.centerline, self.side[i] * river.width / 2)
                point = bank.interpolate(bank.project(shapely.Point(self.xy[i])))
                outfalls.append(("OF" + label[i], point.x, point.y, river.water_level))
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
                outfalls.append(("TW" + label[i], x, y, round(float(plant_level[works]), 3)))
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
        out = pd.DataFrame(outfalls, columns=["name", "x", "y", "invert"])
        out = out.assign(kind="outfall", role="outfall", ground=np.nan, street_node=-1)
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
        _row(r.name, _f(r.invert), "FIXED", _f(layout.river.water_level), "NO")
        if r.name.startswith("OF")
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
    ``write_swmm`` exports, plus a ``pumping_station`` node per station (``ps:`` ids), a
    ``service_connection`` node per building (``svc:`` ids, the manhole in its props), and the
    pumping stations and treatment works as facilities."""
    source = f"{SOURCE} drainage seed={plan.seed} area={layout.area_km2:g} km2"
    bundle = ImportBundle(source)
    for name, net in plan.networks.items():
        part = swmm_bundle(net.inp, layout.crs, source=source, id_prefix=net.prefix, network=name)
        bundle.add("utility_nodes", _with_catchments(part.layers["utility_nodes"], net))
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
    stations = _stations(plan)
    if len(stations):
        bundle.add(
            "utility_nodes",
            gpd.GeoDataFrame(
                {
                    "id": stations["id"],
                    "class": "pumping_station",
                    "network": stations["network"],
                    "name": stations["title"],
                    "cover_level": stations["ground"].round(3),
                    "invert_level": stations["well_floor"],
                    "depth": (stations["ground"] - stations["well_floor"]).round(3),
                    "link_id": [
                        p + pumps[-1]
                        for p, pumps in zip(stations["prefix"], stations["pumps"], strict=True)
                    ],
                    "props": [
                        {
                            "role": s.role,
                            "wet_well": s.prefix + s.wet_well,
                            "pumps": [s.prefix + p for p in s.pumps],
                            "capacity_m3_s": round(float(s.capacity), 4),
                        }
                        for s in stations.itertuples(index=False)
                    ],
                },
                geometry=shapely.points(stations[["x", "y"]].to_numpy()),
                crs=layout.crs,
            ),
        )
    conn = plan.connections
    prefix = conn["network"].map(PREFIXES)
    bundle.add(
        "utility_nodes",
        gpd.GeoDataFrame(
            {
                "id": "svc:" + prefix + conn["building_id"],
                "class": "service_connection",
                "network": conn["network"],
                "building_id": conn["building_id"],
                "props": [
                    {"manhole": p + node, "dwf_m3_s": round(float(q), 7)}
                    for p, node, q in zip(prefix, conn["node"], conn["dwf"], strict=True)
                ],
            },
            geometry=shapely.points(conn[["x", "y"]].to_numpy()),
            crs=layout.crs,
        ),
    )
    bundle.add("facilities", _facilities(plan, stations, layout.crs))
    return bundle


def _with_catchments(nodes: gpd.GeoDataFrame, net: DrainageNetwork) -> gpd.GeoDataFrame:
    """SWMM nodes with the outfall of their catchment in their props."""
    catchment = net.nodes.set_index("name")["catchment"].reindex(nodes["name"])
    return nodes.assign(
        props=[
            {**p, "catchment": net.prefix + c} if isinstance(c, str) else p
            for p, c in zip(nodes["props"], catchment, strict=True)
        ]
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
    """Every pumping station of the plan with its feature id and a numbered title."""
    frames = [
        net.stations.assign(network=name, prefix=net.prefix)
        for name, net in plan.networks.items()
        if len(net.stations)
    ]
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    out["id"] = "ps:" + out["prefix"] + out["name"].str[2:]
    number = out.groupby(["network", "role"]).cumcount() + 1
    label = np.where(out["role"] == "lift", out["network"].str.title() + " ", "")
    out["title"] = label + out["role"].map(_TITLES) + " " + number.astype(str)
    return out


def _facilities(plan: DrainagePlan, stations: pd.DataFrame, crs: str) -> gpd.GeoDataFrame:
    """Pumping stations (small round sites) and sewage treatment works as facilities."""
    rows = [
        {
            "id": "fac-" + s.id.replace(":", "-")[3:],
            "class": "pumping_station",
            "name": s.title,
            "critical": s.role != "lift",
            "operator": OPERATOR,
            "props": {"network": s.network, "role": s.role, "node": s.id},
            "geometry": shapely.Point(s.x, s.y).buffer(12.0, quad_segs=4),
        }
        for s in stations.itertuples(index=False)
    ]
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
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


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

"""A large virtual water distribution network, for network benchmarks (VIRTUAL, not real data).

The virtual city's own water network has a few thousand street mains; a utility's GIS holds far
more features, because it stores mains split into pipes at every service tee, a service pipe
and a service connection for every building, hydrants on their laterals and a valve at every
branch of every crossing. ``plan_water_network`` generates such a network at any size up to
millions of pipes, vectorised (numpy, scipy.sparse), deterministic from a seed:

- **streets**: an irregular lattice of blocks 80-150 m deep, corners jittered, about one local
  street link in ten removed, cul-de-sacs off about one block side in twelve; arterials every
  sixth line, secondary streets every third (``citytwin.synth.layout``'s pattern);
- **sources and tanks**: treatment plants' clear-water reservoirs (one per ~200,000 pipes, at
  least two) spread over the network, balancing tanks on the higher ground, each joined to a
  street junction by its own main;
- **buildings**: along both sides of every street, each tapping the main at a service tee
  through a service pipe to its service connection; residents drawn from a mix of houses,
  walk-ups, apartment blocks, towers and non-residential buildings; hospitals, schools and fire
  stations among the non-residential ones; average demand at 180 L a resident a day and 60 L a
  worker (``citytwin.synth.water.LITRES_PER_DAY``);
- **hydrants** every ~100 m on a short lateral from a tee on the main;
- **diameters** from the peak demand accumulated along the shortest-path tree from the sources
  (so they decrease away from them), at least the street class's minimum, standard DN sizes;
- **isolation valves** "N-1" at every street junction (on all its branches but one, always on a
  source or tank main) and on every hydrant lateral, as ``(link, node)`` pairs: a valve on link
  L next to node N (the convention of ``wntr.network.layer.generate_valve_layer``).

``WaterNetworkPlan.network()`` is the engine's ``citytwin.networks.Network``; ``frames()``
the model frames (``utility_nodes`` with the valves as nodes of class ``valve``,
``utility_links``) in the virtual city's CRS, and ``bundle()`` an import bundle of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle
from citytwin.model import TwinMeta
from citytwin.networks.graph import Network
from citytwin.synth.layout import CRS, ORIGIN, spread_out
from citytwin.synth.water import (
    LITRES_PER_DAY,
    MIN_DN,
    NETWORK,
    PATTERNS,
    PREFIX,
    SERVICE_DN,
    _dn_for,
    _material,
)

NODE_CLASSES = ("junction", "reservoir", "tank", "service_connection", "hydrant")
LINK_CLASSES = ("pipe", "service_pipe")
CRITICAL = ("hospital", "school", "fire_station")

BLOCK = (80.0, 150.0)  # m, depth of a block between two street lines
JITTER = 8.0  # m, standard deviation of a street corner's offset from the lattice
REMOVED = 0.10  # share of local street links removed (superblocks, parks, rail)
CUL_DE_SAC = 0.08  # share of local street links with a cul-de-sac off their middle
FRONTAGE = 24.0  # m of street front a building takes, on each side
HYDRANT_SPACING = 100.0  # m along the mains
PIPES_PER_SOURCE = 200_000
PIPES_PER_TANK = 150_000
MIN_PIPES = 200
LINKS_PER_STREET = 22.0  # links a street link becomes, about: tees, services, hydrants
HYDRANT_DN = 0.1  # m, DN100 hydrant laterals
MIN_FEED_DN = 0.3  # m, the smallest source or tank main
_CLASS_WEIGHT = (0.5, 0.75, 1.0, 1.0)  # primary, secondary, residential, cul-de-sac
_STREET_MIN_DN = (MIN_DN["primary"], MIN_DN["secondary"], MIN_DN["residential"], 0.1)

# buildings: share, and residents (or workers) per building as (median, log-sd); houses are
# 1 + Poisson(2) residents
BUILDINGS = {
    "house": (0.55, None),
    "walk_up": (0.25, (12.0, 0.5)),
    "apartment_block": (0.03, (80.0, 0.5)),
    "tower": (0.005, (300.0, 0.4)),
    "non_residential": (0.165, (25.0, 0.9)),
}
PEOPLE_PER = {"hospital": 60_000, "school": 9_000, "fire_station": 50_000}
"""Residents per critical facility of each kind."""


@dataclass
class WaterNetworkPlan:
    """A generated water distribution network as arrays (VIRTUAL).

    Nodes are junctions (street corners and service tees), reservoirs, tanks, service
    connections and hydrants, in that order; links are pipes (mains between tees, hydrant
    laterals, source and tank mains) and service pipes. ``valve_link[i]``, ``valve_node[i]``:
    isolation valve ``i`` sits on that link next to that node. ``demand`` (m3/s, average) and
    ``residents`` are per node (non-zero at service connections only), ``critical`` names the
    critical facility a service connection serves (None elsewhere).
    """

    seed: int
    node_ids: np.ndarray  # (n,) object
    node_xy: np.ndarray  # (n, 2) float, in ``crs``
    node_class: np.ndarray  # (n,) object, one of NODE_CLASSES
    elevation: np.ndarray  # (n,) float, ground level (m)
    demand: np.ndarray  # (n,) float, average demand (m3/s)
    residents: np.ndarray  # (n,) int
    critical: np.ndarray  # (n,) object: "hospital", "school", "fire_station" or None
    link_ids: np.ndarray  # (m,) object
    link_nodes: np.ndarray  # (m, 2) int64, from and to node index
    link_class: np.ndarray  # (m,) object, one of LINK_CLASSES
    diameter: np.ndarray  # (m,) float (m)
    length: np.ndarray  # (m,) float (m)
    valve_link: np.ndarray  # (v,) int64
    valve_node: np.ndarray  # (v,) int64
    crs: str = CRS
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> np.ndarray:
        """Indices of the reservoirs (the sources)."""
        return np.flatnonzero(self.node_class == "reservoir")

    @property
    def sc_index(self) -> np.ndarray:
        """Indices of the service connections."""
        return np.flatnonzero(self.node_class == "service_connection")

    @property
    def tanks(self) -> np.ndarray:
        """Indices of the tanks."""
        return np.flatnonzero(self.node_class == "tank")

    def network(self) -> Network:
        """The topology for the network engine."""
        return Network(self.node_ids, self.link_ids, self.link_nodes, self.node_xy, self.length)

    def frames(self) -> dict[str, gpd.GeoDataFrame]:
        """Model frames: ``utility_nodes`` (the nodes, then the valves as nodes of class
        ``valve`` with ``link_id`` and ``props["node"]``) and ``utility_links``, in ``crs``."""
        n = len(self.node_ids)
        names = pd.Series(self.node_ids).str.slice(len(PREFIX)).to_numpy(dtype=object)
        connection = self.node_class == "service_connection"
        props = np.full(n, None, dtype=object)
        props[connection] = [
            {"residents": int(r), "critical": c}
            for r, c in zip(self.residents[connection], self.critical[connection], strict=True)
        ]
        nodes = gpd.GeoDataFrame(
            {
                "id": self.node_ids,
                "class": self.node_class,
                "network": NETWORK,
                "name": names,
                "elevation": np.round(self.elevation, 2),
                "cover_level": np.round(self.elevation, 2),
                "base_demand": np.where(connection, self.demand, np.nan),
                "props": props,
            },
            geometry=shapely.points(self.node_xy),
            crs=self.crs,
        )
        v_ids = np.array([f"{PREFIX}V{i + 1:07d}" for i in range(len(self.valve_link))], object)
        # a valve stands on its link, 2 m from its node (or a third of a shorter link)
        ends = self.link_nodes[self.valve_link]
        far = np.where(ends[:, 0] == self.valve_node, ends[:, 1], ends[:, 0])
        a, b = self.node_xy[self.valve_node], self.node_xy[far]
        span = np.linalg.norm(b - a, axis=1)
        t = np.minimum(2.0, span / 3.0) / np.maximum(span, 1e-9)
        at = a + (b - a) * t[:, None]
        valves = gpd.GeoDataFrame(
            {
                "id": v_ids,
                "class": "valve",
                "network": NETWORK,
                "name": pd.Series(v_ids).str.slice(len(PREFIX)).to_numpy(dtype=object),
                "elevation": np.round(self.elevation[self.valve_node], 2),
                "cover_level": np.round(self.elevation[self.valve_node], 2),
                "link_id": self.link_ids[self.valve_link],
                "props": [{"node": x, "role": "isolation"} for x in self.node_ids[self.valve_node]],
            },
            geometry=shapely.points(at),
            crs=self.crs,
        )
        ends = self.node_xy[self.link_nodes].reshape(-1, 2)
        lines = shapely.linestrings(ends, indices=np.repeat(np.arange(len(self.link_ids)), 2))
        links = gpd.GeoDataFrame(
            {
                "id": self.link_ids,
                "class": self.link_class,
                "network": NETWORK,
                "name": pd.Series(self.link_ids).str.slice(len(PREFIX)).to_numpy(dtype=object),
                "from_node": self.node_ids[self.link_nodes[:, 0]],
                "to_node": self.node_ids[self.link_nodes[:, 1]],
                "diameter": self.diameter,
                "length": np.round(self.length, 2),
                "material": np.where(
                    self.link_class == "service_pipe", "PE100", _material(self.diameter)
                ),
            },
            geometry=lines,
            crs=self.crs,
        )
        return {
            "utility_nodes": gpd.GeoDataFrame(
                pd.concat([nodes, valves], ignore_index=True), crs=self.crs
            ),
            "utility_links": links,
        }

    def bundle(self) -> ImportBundle:
        """The frames as an import bundle, labelled as a virtual network."""
        bundle = ImportBundle(self.notes["source"])
        for layer_name, frame in self.frames().items():
            bundle.add(layer_name, frame)
        return bundle

    def twin_meta(self, name: str | None = None) -> TwinMeta:
        """Metadata for a twin holding only this network: clearly labelled as virtual."""
        lo, hi = self.node_xy.min(axis=0), self.node_xy.max(axis=0)
        return TwinMeta(
            name or f"virtual-water-network-{self.seed}",
            self.crs,
            (float(lo[0]) - 100, float(lo[1]) - 100, float(hi[0]) + 100, float(hi[1]) + 100),
            virtual=True,
            description=(
                f"VIRTUAL WATER NETWORK (generated, not real data): {len(self.link_ids):,} "
                f"pipes, seed {self.seed}"
            ),
        )


def plan_water_network(pipes: int = 1_000_000, seed: int = 1) -> WaterNetworkPlan:
    """Generate a virtual water distribution network of about ``pipes`` links (all kinds:
    mains between tees, service pipes, hydrant laterals, source and tank mains; within a few
    per cent), deterministic from ``seed``."""
    if int(pipes) < MIN_PIPES:
        raise InvalidInput(
            f"{pipes} pipes is too small a network to generate",
            hint=f"ask for at least {MIN_PIPES} pipes",
        )
    pipes = int(pipes)
    rng = np.random.default_rng(seed)
    k = max(4, round(np.sqrt(pipes / LINKS_PER_STREET / 2)))
    s_xy, s_edges, s_class = _streets(k, rng)
    ns, ne = len(s_xy), len(s_edges)
    s_len = np.linalg.norm(s_xy[s_edges[:, 0]] - s_xy[s_edges[:, 1]], axis=1)
    terrain = _terrain(s_xy, rng)

    # sources on low ground, tanks on high ground, spread over the network
    n_src = max(2, int(np.ceil(pipes / PIPES_PER_SOURCE)))
    n_tank = max(1, round(pipes / PIPES_PER_TANK))
    z = terrain(s_xy)
    low = np.flatnonzero(z <= np.quantile(z, 0.5))
    src_at = low[spread_out(s_xy[low], n_src, rng)]
    high = np.setdiff1d(np.flatnonzero(z >= np.quantile(z, 0.7)), src_at)
    tank_at = high[spread_out(s_xy[high], n_tank, rng)]

    # buildings and hydrants along the streets: the rest of the budget, two links each
    hydrants = np.floor(s_len / HYDRANT_SPACING + rng.random(ne)).astype(np.int64)
    hydrants[s_class == 3] = 0  # none in the cul-de-sacs
    budget = pipes - ne - 2 * int(hydrants.sum()) - n_src - n_tank
    n_bldg = max(budget // 2, ne)
    per_street = rng.multinomial(n_bldg, s_len / s_len.sum())

    # tees on the mains, sorted along each street link: buildings' and hydrants'
    n_hyd = int(hydrants.sum())
    t_street = np.r_[np.repeat(np.arange(ne), per_street), np.repeat(np.arange(ne), hydrants)]
    h_rank = np.arange(n_hyd) - np.repeat(np.cumsum(hydrants) - hydrants, hydrants)
    t_pos = np.r_[
        rng.uniform(0.03, 0.97, n_bldg),
        (h_rank + 0.5 + rng.uniform(-0.2, 0.2, n_hyd)) / np.repeat(hydrants, hydrants),
    ]
    is_hydrant = np.r_[np.zeros(n_bldg, bool), np.ones(n_hyd, bool)]
    order = np.lexsort((t_pos, t_street))
    t_street, t_pos, is_hydrant = t_street[order], t_pos[order], is_hydrant[order]
    a, b = s_xy[s_edges[t_street, 0]], s_xy[s_edges[t_street, 1]]
    t_xy = a + (b - a) * t_pos[:, None]
    n_tee = len(t_street)

    # node numbering: street junctions, tees, reservoirs, tanks, service connections, hydrants
    tee0 = ns
    res0 = tee0 + n_tee
    tank0 = res0 + n_src
    sc0 = tank0 + n_tank
    hyd0 = sc0 + n_bldg
    n = hyd0 + n_hyd

    # the mains: each street link a chain from its start through its tees to its end
    per = np.bincount(t_street, minlength=ne)
    width = per + 2
    start = np.r_[0, np.cumsum(width)[:-1]]
    seq = np.empty(int(width.sum()), np.int64)
    inner = np.ones(len(seq), bool)
    inner[start] = inner[start + per + 1] = False
    seq[start], seq[start + per + 1] = s_edges[:, 0], s_edges[:, 1]
    seq[inner] = tee0 + np.arange(n_tee)
    last = np.zeros(len(seq), bool)
    last[start + per + 1] = True
    main_nodes = np.column_stack([seq[:-1][~last[:-1]], seq[1:][~last[:-1]]])
    main_street = np.repeat(np.arange(ne), per + 1)
    first_seg = np.r_[0, np.cumsum(per + 1)[:-1]]  # the segment at each street link's start
    last_seg = first_seg + per  # and at its end

    # service connections and hydrants beside their tees
    direction = (b - a) / np.maximum(np.linalg.norm(b - a, axis=1), 1e-9)[:, None]
    normal = np.column_stack([-direction[:, 1], direction[:, 0]])
    side = np.where(rng.random(n_tee) < 0.5, -1.0, 1.0)
    setback = np.where(is_hydrant, rng.uniform(2.0, 4.0, n_tee), rng.uniform(8.0, 25.0, n_tee))
    beside = t_xy + normal * (side * setback)[:, None]
    bldg_tee = np.flatnonzero(~is_hydrant)
    hyd_tee = np.flatnonzero(is_hydrant)

    # sources and tanks beside their street junctions
    r_xy = s_xy[src_at] + rng.choice([-1.0, 1.0], (n_src, 2)) * 45.0
    k_xy = s_xy[tank_at] + rng.choice([-1.0, 1.0], (n_tank, 2)) * 35.0

    xy = np.vstack([s_xy, t_xy, r_xy, k_xy, beside[bldg_tee], beside[hyd_tee]])
    node_code = np.repeat(
        np.arange(5, dtype=np.int8)[[0, 0, 1, 2, 3, 4]],
        [ns, n_tee, n_src, n_tank, n_bldg, n_hyd],
    )

    # people and demand
    residents, demand, critical = _buildings(n_bldg, rng)
    node_demand = np.zeros(n)
    node_demand[sc0:hyd0] = demand
    node_residents = np.zeros(n, np.int64)
    node_residents[sc0:hyd0] = residents
    node_critical = np.full(n, None, dtype=object)
    node_critical[sc0:hyd0] = critical

    # diameters: the peak accumulated along the shortest-path tree from the sources
    peak_factor = float(PATTERNS["RES"].max())
    near_end = np.where(
        t_pos[bldg_tee] < 0.5, s_edges[t_street[bldg_tee], 0], s_edges[t_street[bldg_tee], 1]
    )
    corner_peak = np.bincount(near_end, weights=demand * peak_factor, minlength=ns)
    q_street, src_flow = _tree_flows(s_xy, s_edges, s_class, s_len, src_at, corner_peak)
    s_diameter = np.maximum(_dn_for(q_street), np.array(_STREET_MIN_DN)[s_class])
    service_dn = SERVICE_DN[
        np.minimum(
            np.searchsorted(SERVICE_DN, np.sqrt(4 * demand * 3.0 / (np.pi * 1.5))),
            len(SERVICE_DN) - 1,
        )
    ]
    tank_flow = 0.3 * float(demand.sum()) * peak_factor / n_tank

    # the links: mains, hydrant laterals, source mains, tank mains, service pipes
    links = np.vstack(
        [
            main_nodes,
            np.column_stack([tee0 + hyd_tee, hyd0 + np.arange(n_hyd)]),
            np.column_stack([res0 + np.arange(n_src), src_at]),
            np.column_stack([tank_at, tank0 + np.arange(n_tank)]),
            np.column_stack([tee0 + bldg_tee, sc0 + np.arange(n_bldg)]),
        ]
    )
    n_main = len(main_nodes)
    diameter = np.r_[
        s_diameter[main_street],
        np.full(n_hyd, HYDRANT_DN),
        np.maximum(_dn_for(src_flow), MIN_FEED_DN),
        np.maximum(_dn_for(np.full(n_tank, tank_flow)), MIN_FEED_DN),
        service_dn,
    ]
    link_code = np.r_[np.zeros(len(links) - n_bldg, np.int8), np.ones(n_bldg, np.int8)]
    length = np.linalg.norm(xy[links[:, 0]] - xy[links[:, 1]], axis=1)
    length = np.maximum(length, 0.5)  # two tees on one spot are still a fitting apart

    # isolation valves: N-1 at every street junction (always on source and tank mains), and
    # one on every hydrant lateral at its tee
    lateral0 = n_main
    src_link0 = lateral0 + n_hyd
    tank_link0 = src_link0 + n_src
    end_link = np.r_[
        first_seg, last_seg, src_link0 + np.arange(n_src), tank_link0 + np.arange(n_tank)
    ]
    end_node = np.r_[s_edges[:, 0], s_edges[:, 1], src_at, tank_at]
    rank = rng.random(len(end_link))
    rank[2 * ne :] = -1.0
    order = np.lexsort((rank, end_node))
    skipped = np.r_[end_node[order][1:] != end_node[order][:-1], True]
    valved = np.ones(len(end_link), bool)
    valved[order[skipped]] = False
    valved[2 * ne :] = True
    valve_link = np.r_[end_link[valved], lateral0 + np.arange(n_hyd)]
    valve_node = np.r_[end_node[valved], tee0 + hyd_tee]

    node_ids = np.empty(n, dtype=object)
    node_ids[:res0] = _ids("J", res0, 7)
    node_ids[res0:tank0] = _ids("R", n_src)
    node_ids[tank0:sc0] = _ids("T", n_tank)
    node_ids[sc0:hyd0] = _ids("SC", n_bldg, 7)
    node_ids[hyd0:] = _ids("H", n_hyd, 7)
    link_ids = np.concatenate(
        [
            _ids("P", n_main, 7),
            _ids("PH", n_hyd, 7),
            _ids("PM", n_src),
            _ids("PT", n_tank),
            _ids("SP", n_bldg, 7),
        ]
    )
    elevation = terrain(xy)
    area_km2 = float(np.prod(s_xy.max(axis=0) - s_xy.min(axis=0))) / 1e6
    source = f"citytwin.synth (virtual water network, not real data) seed={seed} pipes={pipes}"
    notes = {
        "virtual": True,
        "source": source,
        "requested_pipes": pipes,
        "links": len(links),
        "nodes": n,
        "area_km2": round(area_km2, 1),
        "street_junctions": ns,
        "street_links": ne,
        "mains": n_main,
        "service_pipes": n_bldg,
        "hydrants": n_hyd,
        "sources": n_src,
        "tanks": n_tank,
        "valves": len(valve_link),
        "residents": int(residents.sum()),
        "average_demand_m3s": round(float(demand.sum()), 3),
        "critical": {c: int((critical == c).sum()) for c in CRITICAL},
    }
    return WaterNetworkPlan(
        seed=seed,
        node_ids=node_ids,
        node_xy=xy,
        node_class=np.array(NODE_CLASSES, dtype=object)[node_code],
        elevation=elevation,
        demand=node_demand,
        residents=node_residents,
        critical=node_critical,
        link_ids=link_ids,
        link_nodes=links.astype(np.int64),
        link_class=np.array(LINK_CLASSES, dtype=object)[link_code],
        diameter=diameter,
        length=length,
        valve_link=valve_link.astype(np.int64),
        valve_node=valve_node.astype(np.int64),
        notes=notes,
    )


def _ids(kind: str, count: int, width: int = 0) -> np.ndarray:
    return np.array([f"{PREFIX}{kind}{i:0{width}d}" for i in range(1, count + 1)], dtype=object)


def _line_class(k: int) -> int:
    return 0 if k % 6 == 0 else 1 if k % 3 == 0 else 2


def _streets(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular k x k street lattice: corners (n, 2), links (m, 2) and their class (0
    primary, 1 secondary, 2 residential, 3 cul-de-sac), connected."""
    gaps = rng.uniform(*BLOCK, (2, k - 1))
    xs, ys = np.r_[0.0, np.cumsum(gaps[0])], np.r_[0.0, np.cumsum(gaps[1])]
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    i, j = i.ravel(), j.ravel()
    xy = np.column_stack([xs[i], ys[j]]) + np.clip(rng.normal(0, JITTER, (k * k, 2)), -20, 20)
    xy += np.array(ORIGIN)
    node = np.arange(k * k).reshape(k, k)
    classes = np.array([_line_class(x) for x in range(k)])
    along_x = np.column_stack([node[:-1, :].ravel(), node[1:, :].ravel()])  # lines of constant j
    along_y = np.column_stack([node[:, :-1].ravel(), node[:, 1:].ravel()])  # constant i
    edges = np.vstack([along_x, along_y])
    cls = np.r_[classes[j[along_x[:, 0]]], classes[i[along_y[:, 0]]]]
    keep = ~((cls == 2) & (rng.random(len(edges)) < REMOVED))
    edges, cls = edges[keep], cls[keep]

    # cul-de-sacs: off the middle of some local links, into the block, one or two links long
    pick = np.flatnonzero((cls == 2) & (rng.random(len(edges)) < CUL_DE_SAC))
    a, b = xy[edges[pick, 0]], xy[edges[pick, 1]]
    mid = a + (b - a) * rng.uniform(0.35, 0.65, len(pick))[:, None]
    direction = (b - a) / np.linalg.norm(b - a, axis=1)[:, None]
    normal = np.column_stack([-direction[:, 1], direction[:, 0]])
    reach = rng.uniform(0.25, 0.45, len(pick)) * BLOCK[0]
    two = rng.random(len(pick)) < 0.4
    side = np.where(rng.random(len(pick)) < 0.5, -1.0, 1.0)[:, None]
    first = mid + normal * side * np.where(two, reach / 2, reach)[:, None]
    second = mid + normal * side * reach[:, None]
    n0 = len(xy)
    m_id = n0 + np.arange(len(pick))
    f_id = m_id[-1] + 1 + np.arange(len(pick)) if len(pick) else m_id
    s_id = (f_id[-1] + 1 if len(pick) else n0) + np.arange(int(two.sum()))
    xy = np.vstack([xy, mid, first, second[two]])
    split = np.vstack(
        [np.column_stack([edges[pick, 0], m_id]), np.column_stack([m_id, edges[pick, 1]])]
    )
    spur = np.vstack([np.column_stack([m_id, f_id]), np.column_stack([f_id[two], s_id])])
    rest = np.ones(len(edges), bool)
    rest[pick] = False
    edges = np.vstack([edges[rest], split, spur])
    cls = np.r_[cls[rest], cls[pick], cls[pick], np.full(len(spur), 3)]

    # the largest connected piece, renumbered
    n = len(xy)
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    main = np.bincount(label[edges[:, 0]]).argmax()
    keep_node = label == main
    remap = np.full(n, -1)
    remap[keep_node] = np.arange(int(keep_node.sum()))
    keep_edge = keep_node[edges[:, 0]]
    return xy[keep_node], remap[edges[keep_edge]], cls[keep_edge]


def _terrain(xy: np.ndarray, rng: np.random.Generator):
    """Ground level: a gentle rise across the network and a few low hills; a function of xy."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 1.0)
    n_hills = max(2, int(np.prod(span) / 15e6))
    centres = lo + rng.random((n_hills, 2)) * span
    sigma = rng.uniform(300.0, 900.0, n_hills)
    height = rng.uniform(8.0, 35.0, n_hills)
    tilt = rng.uniform(0.0005, 0.0015)

    def ground(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float).reshape(-1, 2)
        z = 3.0 + tilt * ((p[:, 0] - lo[0]) + (p[:, 1] - lo[1])) / 2
        for c, s, h in zip(centres, sigma, height, strict=True):
            z += h * np.exp(-((p[:, 0] - c[0]) ** 2 + (p[:, 1] - c[1]) ** 2) / (2 * s * s))
        return np.round(z, 2)

    return ground


def _buildings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residents, average demand (m3/s) and critical facility of ``n`` buildings."""
    kinds = list(BUILDINGS)
    share = np.array([BUILDINGS[x][0] for x in kinds])
    kind = rng.choice(len(kinds), n, p=share / share.sum())
    people = np.zeros(n)
    for c, name in enumerate(kinds):
        mine = kind == c
        spec = BUILDINGS[name][1]
        if spec is None:
            people[mine] = 1 + rng.poisson(2.0, int(mine.sum()))
        else:
            people[mine] = np.maximum(
                1, np.round(rng.lognormal(np.log(spec[0]), spec[1], int(mine.sum())))
            )
    residential = kind != kinds.index("non_residential")
    residents = np.where(residential, people, 0).astype(np.int64)
    litres = np.where(
        residential,
        people * LITRES_PER_DAY["residential"][0],
        people * LITRES_PER_DAY["office"][1],
    )
    critical = np.full(n, None, dtype=object)
    pool = rng.permutation(np.flatnonzero(~residential))
    total = int(residents.sum())
    at = 0
    for name in CRITICAL:
        count = min(max(1, round(total / PEOPLE_PER[name])), len(pool) - at)
        chosen = pool[at : at + count]
        critical[chosen] = name
        at += count
        if name == "hospital":  # hospitals use more: 1,000 L a bed a day, a bed per 5 people
            litres[chosen] = np.maximum(litres[chosen], 200.0 * people[chosen] * 5)
    return residents, litres / 1000.0 / 86400.0, critical


def _tree_flows(
    xy: np.ndarray,
    edges: np.ndarray,
    cls: np.ndarray,
    length: np.ndarray,
    sources: np.ndarray,
    peak: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Peak flow on each street link along the shortest-path tree from the sources (favouring
    the arterials), and the peak each source delivers."""
    n = len(xy)
    w = length * np.array(_CLASS_WEIGHT)[cls]
    graph = sparse.csr_matrix(
        (np.r_[w, w], (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
        shape=(n, n),
    )
    dist, pred, _ = dijkstra(graph, indices=sources, return_predecessors=True, min_only=True)
    v = np.flatnonzero(pred >= 0)
    order = v[np.argsort(-dist[v])]
    load = peak.astype(float).copy()
    for child, parent in zip(order.tolist(), pred[order].tolist(), strict=True):
        load[parent] += load[child]
    key = np.minimum(edges[:, 0], edges[:, 1]) * n + np.maximum(edges[:, 0], edges[:, 1])
    sorter = np.argsort(key)
    vkey = np.minimum(v, pred[v]) * n + np.maximum(v, pred[v])
    flow = np.zeros(len(edges))
    flow[sorter[np.searchsorted(key, vkey, sorter=sorter)]] = load[v]
    return flow, load[sources]


__all__ = ["CRITICAL", "LINK_CLASSES", "NODE_CLASSES", "WaterNetworkPlan", "plan_water_network"]

"""The virtual city's energy and telecom utilities: gas, power, telecom and district cooling.

Everything runs under the streets in the corridors of ``citytwin.synth.corridors`` (each
network's nodes at ``corridor_nodes``), at a depth of cover that is the network's level in
the corridors' common vertical order (``cover_depth``), so that lines of different networks
crossing at street corners keep the virtual city's vertical clearances (``LAID_COVER``: telecom
ducts on top, then the 10 kV cables, then gas, then district cooling, with the water mains and
the gravity sewers below them). Pressure utilities follow the ground at constant cover, so a
line's crown is ``ground − depth`` all along it; where two lines of one network cross without
a joint (a regulator station's pipes across the mains, the cooling return across the supply),
one passes over the other, or under it, over a short piece (``_pass_below``; the piece's
``props["passes"]`` says which).

- **Gas** (``gas:``): a city gate at the west edge feeds a looped medium-pressure (0.4 MPa) PE
  network under the arterials and secondaries (steel on bridges). District regulator stations
  (the layout's ``gas_regulator_station`` facilities, each reached by a medium-pressure supply
  main) and regulator cabinets feed low-pressure networks under the local streets: every local
  area between medium-pressure streets has a feed (a station feeds a local street at its
  corner where there is one, a cabinet the others), and its mains stop 6 m short of the
  medium-pressure mains, closed there by an end cap (class ``cap``, as every main that ends:
  the areas are looped inside, not across the medium-pressure streets). Every building except
  industrial sheds
  (whose process gas is a separate contract, not modelled) has a service pipe from the nearest
  main; a service from a medium-pressure main ends at a building regulator box.
- **Power** (``pw:``): 10 kV radial feeders from the layout's substations along a shortest-path
  tree of the streets, cut into feeders of at most ~8 MVA (one street with more, e.g. CBD
  towers, still hangs on one feeder); a street off the tree with transformers has a spur that
  ends at its last one. Every feeder is an open ring: one normally-open tie to each neighbouring
  feeder, joined to both (the last piece of a spur on to the next corner, where the other
  feeder has it, else a tie cable along a street between them). The twin's status convention
  is EPANET's, so the ties (``role`` tie, ``props["normally_open"]``) are ``closed``: they carry
  nothing in normal operation and traces from the substations stay radial; every other cable is
  ``open``. Distribution substations (``transformer``: one per ~1,000 kVA of load in a block,
  ``units`` × 1,000 kVA at 80 % loading) stand at the block edge, tapped from the feeder (a
  ring main unit); every building has a 0.4 kV service cable from its transformer.
- **Telecom** (``tc:``): duct banks under the arterials and secondaries, a chamber at every
  street corner they pass; where a street ends at the river, the bank ends in a capped
  stub-out (class ``cap``).
- **Heating** (``ht:``): Guangzhou has practically no district heating (it lies far south of the
  Qinling–Huaihe heating line), but its CBD (Zhujiang New Town) runs one of Asia's largest
  district *cooling* systems. The ``heating`` network here is that: a chilled-water supply and
  return pair under the CBD's streets from an underground energy centre, with a connection to
  every CBD building; both pipes end at caps where a branch ends. Where a seed has no CBD
  blocks there is none (see ``UtilityPlan.notes``).

A few clearance violations are seeded on purpose (``synth/clearance_violations`` in the bundle's
documents), each checked with the clearance engine (``citytwin.networks.clearance``) against
the virtual city's rules (``citytwin.synth.corridors.rules``); everything else complies with
them. Links carry ``props``: ``role``
(``main``, ``feeder``, ``tie``, ``duct``: along a corridor, ``street`` naming the street;
``service``, ``tap``, ``station``: connections), ``outer_diameter`` (m), ``on_bridge`` where a
line hangs on a bridge deck over the river (its ``depth`` is that of the buried approaches),
``installation`` (conduit, duct, direct_buried: what the clearance rules distinguish).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from citytwin.formats.base import ImportBundle
from citytwin.networks.clearance import check_clearances
from citytwin.synth.corridors import (
    HEATING_HALF_SPACING,
    cooling_edges,
    corridor_nodes,
    cover_depth,
    rules,
    vertical,
)
from citytwin.synth.layout import CRS, CityLayout

CORRIDOR_ROLES = ("main", "feeder", "tie", "duct")
"""Link roles (``props["role"]``) of the lines laid along the street corridors."""

LAID_COVER = {net: cover_depth(net) for net in ("telecom", "power", "gas", "heating")}
"""Cover over the crown (m) each network is laid at, services included: its level in the
common vertical order of ``citytwin.synth.corridors`` (telecom ducts, 10 kV conduits, gas, then
district cooling, all above the water mains and the gravity sewers), so that crossings keep
table 4.1.14's clearances."""

INSTALLATION = {"power": "conduit", "telecom": "duct", "heating": "direct_buried"}
"""How each network's lines are laid (the ``installation`` the clearance rules distinguish)."""

LOAD_VA_PER_M2 = {
    "residential": 35.0,
    "commercial": 90.0,
    "office": 80.0,
    "industrial": 50.0,
    "school": 30.0,
    "hospital": 90.0,
}
"""Design electrical load per m² of floor area (after diversity), typical Chinese planning
values."""

STATION_KVA = 1000.0  # a distribution substation per ~1,000 kVA of a block's load
UNIT_KVA = 1000.0  # transformer rating
UNIT_LOADING = 0.8  # transformers are sized to run at 80 %
FEEDER_KVA = 8000.0  # a 10 kV cable feeder carries ~8 MVA
GAS_USES = ("residential", "commercial", "office", "school", "hospital", "fire_station")
"""Building uses with a gas service (kitchens and canteens; industrial sheds have none)."""

_TRIM = 6.0  # m: local low-pressure mains stop this far from a medium-pressure main
_OUTER = {"telecom": 0.2, "power_mv": 0.15, "power_lv": 0.1, "heating": 0.25, "heating_sv": 0.16}
_GATE_SETBACK = 40.0  # m west of the first street corner
_TAP_MARGIN = 10.0  # m: no tap nearer a run's end
_SITE_SPACING = 200.0  # m between seeded violations


@dataclass
class UtilityPlan:
    """The energy and telecom networks of a virtual city, as model frames."""

    nodes: gpd.GeoDataFrame  # layer utility_nodes: networks gas, power, telecom, heating
    links: gpd.GeoDataFrame  # layer utility_links
    violations: list[dict[str, Any]]  # the seeded clearance violations
    notes: dict[str, str] = field(default_factory=dict)

    def frames(self) -> dict[str, gpd.GeoDataFrame]:
        """Nodes and links per network, keyed ``<network>_nodes`` and ``<network>_links``
        (the form ``citytwin.synth.sensors.plan_sensors`` takes)."""
        out = {}
        for net in ("gas", "power", "telecom", "heating"):
            out[f"{net}_nodes"] = self.nodes[self.nodes["network"] == net]
            out[f"{net}_links"] = self.links[self.links["network"] == net]
        return out


def plan_utilities(layout: CityLayout, seed: int) -> UtilityPlan:
    """Lay gas, power, telecom and district cooling under ``layout``'s streets, serve its
    buildings, and seed a few clearance violations (deterministic from ``seed``)."""
    rng = np.random.default_rng([seed, 3])
    c = _Ctx(layout)
    nets = [_gas(c, rng), _power(c), _telecom(c)]
    notes = {}
    cooling = _cooling(c)
    if cooling is None:
        notes["heating"] = "no CBD blocks at this seed: no district cooling network"
    else:
        nets.append(cooling)
        notes["heating"] = (
            "district cooling (chilled water) in the CBD: Guangzhou has no district heating"
        )
    nodes = pd.concat([n for n, _ in nets], ignore_index=True)
    links = pd.concat([lk for _, lk in nets], ignore_index=True)
    links["installation"] = links["network"].map(INSTALLATION)
    nodes, links = _pass_below(c, nodes, links)
    links, violations = _seed_violations(c, nodes, links, rng)
    nodes = _cap_dead_ends(nodes, links, ("gas", "heating", "telecom"))
    nodes_frame, links_frame = _frames(c, nodes, links)
    return UtilityPlan(nodes_frame, links_frame, violations, notes)


def utilities_bundle(layout: CityLayout, plan: UtilityPlan) -> ImportBundle:
    """The plan as an import bundle: utility nodes and links, and the seeded clearance
    violations as the document ``synth/clearance_violations``."""
    bundle = ImportBundle(
        f"citytwin.synth utilities seed={layout.seed} area={layout.area_km2:g} km2"
    )
    bundle.add("utility_nodes", plan.nodes)
    bundle.add("utility_links", plan.links)
    table = rules()
    bundle.documents["synth/clearance_violations"] = {
        "rules": table.name,
        "rule_files": [Path(f).name for f in table.files],
        "violations": plan.violations,
    }
    bundle.documents["synth/utilities"] = {"notes": plan.notes}
    return bundle


# -- context -----------------------------------------------------------------------------
class _Ctx:
    """Arrays of the layout that every network needs."""

    def __init__(self, layout: CityLayout) -> None:
        self.layout = layout
        s = layout.streets
        self.xy = s.nodes
        self.a, self.b = s.edges[:, 0], s.edges[:, 1]
        self.n = len(s.nodes)
        d = s.nodes[self.b] - s.nodes[self.a]
        self.length = np.hypot(d[:, 0], d[:, 1])
        self.u = d / self.length[:, None]
        self.cls = np.asarray(s.street_class).astype(str)
        self.half = np.asarray(s.width, dtype=float) / 2
        self.bridge = np.asarray(s.bridge, dtype=bool)
        self.lines = s.lines()
        self.edge_of = {
            (int(min(p, q)), int(max(p, q))): e for e, (p, q) in enumerate(s.edges.tolist())
        }
        self.graph = sparse.coo_matrix(
            (self.length, (self.a, self.b)), shape=(self.n, self.n)
        ).tocsr()
        b = layout.buildings
        self.bgeom = b.geometry.to_numpy()
        self.bid = b["id"].to_numpy(dtype=object)
        self.buse = b["use"].to_numpy(dtype=object)
        self.bfloors = b["floors"].to_numpy(dtype=float)
        self.bblock = b["block"].to_numpy()
        self.bdistrict = b["district_use"].to_numpy(dtype=object)
        self.bxy = shapely.get_coordinates(shapely.centroid(self.bgeom))
        self.btree = shapely.STRtree(self.bgeom)

    def corridor(self, net: str) -> np.ndarray:
        return corridor_nodes(self.layout.streets, net)

    def nearest_node(self, xy: np.ndarray) -> np.ndarray:
        return cKDTree(self.xy).query(xy)[1]


# -- building blocks: runs along corridors, taps, pieces ----------------------------------
def _runs(
    base: np.ndarray,
    frm: np.ndarray,
    to: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    **cols: Any,
) -> pd.DataFrame:
    """Straight runs of a network between two nodes (before they are cut at taps)."""
    return pd.DataFrame(
        {
            "base": base,
            "from_node": frm,
            "to_node": to,
            "x0": p0[:, 0],
            "y0": p0[:, 1],
            "x1": p1[:, 0],
            "y1": p1[:, 1],
            **cols,
        }
    )


def _taps(
    runs: pd.DataFrame, run: np.ndarray, pos: np.ndarray, prefix: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Tap nodes on ``runs`` at ``pos`` m from their starts, merged within 0.5 m: the taps and,
    for every request, its tap's id. Taps keep ``_TAP_MARGIN`` from the run's ends, clear of the
    other networks' lines that cross near the street corners."""
    x0, y0 = runs["x0"].to_numpy()[run], runs["y0"].to_numpy()[run]
    dx, dy = runs["x1"].to_numpy()[run] - x0, runs["y1"].to_numpy()[run] - y0
    length = np.hypot(dx, dy)
    pos = np.round(np.clip(pos, _TAP_MARGIN, length - _TAP_MARGIN) * 2) / 2
    key = pd.MultiIndex.from_arrays([run, pos])
    codes, uniq = pd.factorize(key)
    r = uniq.get_level_values(0).to_numpy()
    p = uniq.get_level_values(1).to_numpy(dtype=float)
    ids = np.array([f"{prefix}{i:07d}" for i in range(len(uniq))], dtype=object)
    rx0, ry0 = runs["x0"].to_numpy()[r], runs["y0"].to_numpy()[r]
    rdx, rdy = runs["x1"].to_numpy()[r] - rx0, runs["y1"].to_numpy()[r] - ry0
    rl = np.hypot(rdx, rdy)
    taps = pd.DataFrame(
        {"run": r, "pos": p, "node": ids, "x": rx0 + rdx / rl * p, "y": ry0 + rdy / rl * p}
    )
    return taps, ids[codes]


def _pieces(runs: pd.DataFrame, taps: pd.DataFrame) -> pd.DataFrame:
    """Each run cut at its taps into links (id ``base`` or ``base-k``), carrying the run's
    other columns."""
    n = len(runs)
    x0, y0, x1, y1 = (runs[k].to_numpy(dtype=float) for k in ("x0", "y0", "x1", "y1"))
    length = np.hypot(x1 - x0, y1 - y0)
    run = np.concatenate([np.arange(n), taps["run"].to_numpy(dtype=int), np.arange(n)])
    pos = np.concatenate([np.zeros(n), taps["pos"].to_numpy(dtype=float), length])
    node = np.concatenate(
        [
            runs["from_node"].to_numpy(object),
            taps["node"].to_numpy(object),
            runs["to_node"].to_numpy(object),
        ]
    )
    order = np.lexsort((pos, run))
    run, pos, node = run[order], pos[order], node[order]
    start = np.flatnonzero(run[1:] == run[:-1])
    r = run[start]
    first = np.searchsorted(r, r, side="left")
    k = np.arange(len(r)) - first
    many = np.bincount(r, minlength=n)[r] > 1
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    out = runs.iloc[r].drop(columns=["base", "from_node", "to_node"]).reset_index(drop=True)
    base = runs["base"].to_numpy(object)[r]
    out.insert(0, "id", np.where(many, [f"{b}-{i}" for b, i in zip(base, k, strict=True)], base))
    out["from_node"] = node[start]
    out["to_node"] = node[start + 1]
    pa, pb = pos[start], pos[start + 1]
    out["x0"], out["y0"] = x0[r] + ux[r] * pa, y0[r] + uy[r] * pa
    out["x1"], out["y1"] = x0[r] + ux[r] * pb, y0[r] + uy[r] * pb
    return out


def _nodes(ids, cls, net, xy, **cols: Any) -> pd.DataFrame:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return pd.DataFrame(
        {"id": ids, "class": cls, "network": net, "x": xy[:, 0], "y": xy[:, 1], **cols}
    )


def _lines(df: pd.DataFrame) -> np.ndarray:
    """LineStrings from the x0, y0, x1, y1 columns."""
    coords = np.stack(
        [df[["x0", "y0"]].to_numpy(dtype=float), df[["x1", "y1"]].to_numpy(dtype=float)], axis=1
    )
    return shapely.linestrings(coords.reshape(-1, 2), indices=np.repeat(np.arange(len(df)), 2))


def _finish(pieces: pd.DataFrame, extra: list[pd.DataFrame]) -> pd.DataFrame:
    """Pieces and point-to-point links as one link table with geometries."""
    out = pd.concat([pieces, *extra], ignore_index=True)
    out["geometry"] = _lines(out)
    if "path" in out:  # links with a bend
        bent = out["path"].notna().to_numpy()
        out.loc[bent, "geometry"] = [shapely.LineString(p) for p in out["path"][bent]]
        out = out.drop(columns=["path"])
    return out.drop(columns=["x0", "y0", "x1", "y1"])


def _cap_dead_ends(
    nodes: pd.DataFrame, links: pd.DataFrame, networks: tuple[str, ...]
) -> pd.DataFrame:
    """The junctions (chambers) of ``networks`` where a line ends (one link) become end caps
    (class ``cap``): a dead-ended main is closed by a cap or plug, not left open; a duct bank
    that stops where its street ends at the river is a stub-out, its ducts plugged."""
    ends = pd.concat([links["from_node"], links["to_node"]]).value_counts()
    dead = (
        nodes["network"].isin(networks)
        & nodes["class"].isin(["junction", "chamber"])
        & nodes["id"].map(ends).eq(1)
    )
    return nodes.assign(**{"class": nodes["class"].where(~dead, "cap")})


def _prune(links: pd.DataFrame, keep: set[str]) -> pd.DataFrame:
    """``links`` without their stubs: links that end at a node no other link reaches (but for
    the nodes in ``keep``), taken off until none is left (a run past its last connection)."""
    while True:
        ends = pd.concat([links["from_node"], links["to_node"]])
        count = ends.value_counts()
        loose = count.index[(count == 1).to_numpy() & ~count.index.isin(list(keep))]
        stub = links["from_node"].isin(loose) | links["to_node"].isin(loose)
        if not stub.any():
            return links.reset_index(drop=True)
        links = links[~stub]


def _service_taps(
    c: _Ctx, runs: pd.DataFrame, eligible: np.ndarray, buildings: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each building (index), the eligible run nearest to it, the position along that run
    of the point nearest the building, and the building's boundary point nearest the run."""
    cand = np.flatnonzero(eligible)
    geoms = _lines(runs.iloc[cand])
    tree = shapely.STRtree(geoms)
    (bi, ri) = tree.query_nearest(c.bgeom[buildings], all_matches=False)
    run = cand[ri[np.argsort(bi, kind="stable")]]
    line = geoms[ri[np.argsort(bi, kind="stable")]]
    near = shapely.shortest_line(line, c.bgeom[buildings])
    pts = shapely.get_coordinates(near).reshape(-1, 2, 2)
    pos = shapely.line_locate_point(line, shapely.points(pts[:, 0]))
    return run, pos, pts[:, 1]


# -- gas -------------------------------------------------------------------------------------
def _gas(c: _Ctx, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    cor = c.corridor("gas")
    depth = LAID_COVER["gas"]
    major = np.isin(c.cls, ["primary", "secondary"])
    ix = np.flatnonzero(major)
    g = sparse.coo_matrix((np.ones(len(ix)), (c.a[ix], c.b[ix])), shape=(c.n, c.n))
    _, label = connected_components(g, directed=False)
    used = np.zeros(c.n, bool)
    used[c.a[ix]] = used[c.b[ix]] = True
    main_label = np.bincount(label[used]).argmax()
    mp_edge = major & (label[c.a] == main_label)
    # the city gate: west end of an east-west medium-pressure street
    ew = mp_edge & (np.abs(c.u[:, 1]) < 0.5) & ~c.bridge
    ends = np.concatenate([c.a[ew], c.b[ew]])
    west = ends[np.isclose(c.xy[ends, 0], c.xy[ends, 0].min())]
    mid_y = c.layout.origin[1] + c.layout.side / 2
    gate = int(west[np.argmin(np.abs(c.xy[west, 1] - mid_y))])

    # district regulator stations, each reached by a medium-pressure supply main
    fac = c.layout.facilities
    fac = fac[fac["class"] == "gas_regulator_station"]
    fxy = shapely.get_coordinates(shapely.centroid(fac.geometry.to_numpy()))
    fnode = c.nearest_node(fxy)
    mp_node = np.zeros(c.n, bool)
    mp_node[c.a[mp_edge]] = mp_node[c.b[mp_edge]] = True
    supply = np.zeros(len(c.a), bool)
    if (~mp_node[fnode]).any():
        _, pred, _ = dijkstra(
            c.graph,
            directed=False,
            indices=np.flatnonzero(mp_node),
            return_predecessors=True,
            min_only=True,
        )
        for v in fnode[~mp_node[fnode]]:
            while not mp_node[v] and pred[v] >= 0:
                supply[c.edge_of[(min(v, pred[v]), max(v, pred[v]))]] = True
                v = pred[v]
    mp_all = mp_edge | supply
    mp_node[c.a[mp_all]] = mp_node[c.b[mp_all]] = True

    # low-pressure areas: local streets between the medium-pressure streets
    lp = ~mp_all & ~(mp_node[c.a] & mp_node[c.b])
    inner = lp & ~mp_node[c.a] & ~mp_node[c.b]
    gi = sparse.coo_matrix((np.ones(inner.sum()), (c.a[inner], c.b[inner])), shape=(c.n, c.n))
    _, area = connected_components(gi, directed=False)
    edge_end = np.where(mp_node[c.a], c.b, c.a)  # the low-pressure end of an lp edge
    edge_mp = np.where(mp_node[c.a], c.a, np.where(mp_node[c.b], c.b, -1))
    edge_area = area[edge_end]
    touching = lp & (edge_mp >= 0)

    feed = np.full(len(c.a), -2)  # -2 none, -1 cabinet, k >= 0 station k
    for k, v in enumerate(fnode):  # a station feeds a local street at its corner, if any
        cand = np.flatnonzero(touching & (edge_mp == v) & (feed == -2))
        if len(cand):
            _, first = np.unique(edge_area[cand], return_index=True)
            feed[cand[first]] = k
    fed_areas = set(edge_area[feed >= 0].tolist())
    cand = rng.permutation(np.flatnonzero(touching))
    cand = cand[~np.isin(edge_area[cand], list(fed_areas))]
    _, first = np.unique(edge_area[cand], return_index=True)
    feed[cand[first]] = -1

    # diameters of low-pressure mains by hops from their area's feed
    sources = np.unique(edge_end[feed != -2])
    hops = dijkstra(gi, directed=False, indices=sources, unweighted=True, min_only=True)
    lp_hops = np.where(feed != -2, 0.0, hops[edge_end])
    lp_dn = np.select([lp_hops <= 1, lp_hops <= 4], [160.0, 110.0], 63.0)

    mid = lambda prefix, v: np.array([f"gas:{prefix}{i:06d}" for i in v], dtype=object)  # noqa: E731
    mp_dn = np.select([supply, c.cls == "primary"], [160.0, 315.0], 250.0)
    e = np.flatnonzero(mp_all)
    runs = [
        _runs(
            mid("MP", e),
            mid("M", c.a[e]),
            mid("M", c.b[e]),
            cor[c.a[e]],
            cor[c.b[e]],
            street=e,
            role="main",
            pressure_class="medium",
            dn=mp_dn[e],
            on_bridge=c.bridge[e],
        )
    ]
    node_frames = [_nodes(mid("M", np.flatnonzero(mp_node)), "junction", "gas", cor[mp_node])]
    lp_node = np.zeros(c.n, bool)
    lp_node[c.a[lp]] = lp_node[c.b[lp]] = True
    lp_node &= ~mp_node
    node_frames.append(_nodes(mid("L", np.flatnonzero(lp_node)), "junction", "gas", cor[lp_node]))
    e = np.flatnonzero(inner)
    runs.append(
        _runs(
            mid("LP", e),
            mid("L", c.a[e]),
            mid("L", c.b[e]),
            cor[c.a[e]],
            cor[c.b[e]],
            street=e,
            role="main",
            pressure_class="low",
            dn=lp_dn[e],
            on_bridge=False,
        )
    )
    # local mains that reach a medium-pressure street stop _TRIM short of it, at a dead end, a
    # regulator cabinet or a station's outlet
    e = np.flatnonzero(touching)
    pm, pl = cor[edge_mp[e]], cor[edge_end[e]]
    cut = pm + (pl - pm) / np.linalg.norm(pl - pm, axis=1)[:, None] * _TRIM
    kind = feed[e]
    cut_id = np.where(kind == -1, mid("RC", e), np.where(kind >= 0, mid("LS", e), mid("LE", e)))
    runs.append(
        _runs(
            mid("LP", e),
            cut_id,
            mid("L", edge_end[e]),
            cut,
            pl,
            street=e,
            role="main",
            pressure_class="low",
            dn=lp_dn[e],
            on_bridge=False,
        )
    )
    cab = kind == -1
    runs.append(
        _runs(
            mid("RI", e[cab]),
            mid("M", edge_mp[e[cab]]),
            cut_id[cab],
            pm[cab],
            cut[cab],
            street=e[cab],
            role="main",
            pressure_class="medium",
            dn=160.0,
            on_bridge=False,
        )
    )
    node_frames += [
        _nodes(cut_id[cab], "regulator", "gas", cut[cab], props=[{"role": "cabinet"}] * cab.sum()),
        _nodes(cut_id[~cab], "junction", "gas", cut[~cab]),
    ]
    runs = pd.concat(runs, ignore_index=True)

    # stations, the city gate and their pipes (point to point, not along a corridor)
    st_ids = np.array([f"gas:ST{k:03d}" for k in range(len(fac))], dtype=object)
    node_frames.append(
        _nodes(
            st_ids,
            "regulator",
            "gas",
            fxy,
            name=fac["name"].to_numpy(object),
            props=[{"facility": f, "role": "district"} for f in fac["id"]],
        )
    )
    gate_xy = cor[gate] - np.array([_GATE_SETBACK, 0.0])
    node_frames.append(
        _nodes(
            ["gas:GATE"],
            "regulator",
            "gas",
            gate_xy,
            name=["City gate station"],
            props=[{"role": "city_gate"}],
        )
    )
    lp_xy = pd.concat(node_frames).set_index("id")[["x", "y"]]
    frm, to, p0, p1, pclass, ids = (
        ["gas:GATE"],
        [f"gas:M{gate:06d}"],
        [gate_xy],
        [cor[gate]],
        ["medium"],
        ["gas:GO"],
    )
    paths: list[np.ndarray | None] = [None]
    for k, v in enumerate(fnode):
        paths.append(None)
        frm.append(f"gas:M{v:06d}")
        to.append(st_ids[k])
        p0.append(cor[v])
        p1.append(fxy[k])
        pclass.append("medium")
        ids.append(f"gas:SI{k:03d}")
        for j, x in enumerate(np.flatnonzero(feed == k)):
            t = f"gas:LS{x:06d}"
            frm.append(st_ids[k])
            to.append(t)
            p0.append(fxy[k])
            p1.append(lp_xy.loc[t].to_numpy())
            pclass.append("low")
            ids.append(f"gas:SO{k:03d}-{j}")
            paths.append(None)
    stations = pd.DataFrame(
        {
            "id": ids,
            "from_node": frm,
            "to_node": to,
            "x0": np.array(p0)[:, 0],
            "y0": np.array(p0)[:, 1],
            "x1": np.array(p1)[:, 0],
            "y1": np.array(p1)[:, 1],
            "pressure_class": pclass,
            "role": "station",
            "street": -1,
            "on_bridge": False,
            "dn": np.where(np.array(ids) == "gas:GO", 315.0, 160.0),
            "path": paths,
        }
    )

    # service pipes to every building that uses gas
    users = np.flatnonzero(np.isin(c.buse, GAS_USES))
    rl = np.hypot(runs["x1"] - runs["x0"], runs["y1"] - runs["y0"]).to_numpy()
    eligible = (rl > 3 * _TAP_MARGIN) & ~runs["on_bridge"].to_numpy(bool)
    run, pos, bpt = _service_taps(c, runs, eligible, users)
    taps, tap_of = _taps(runs, run, pos, "gas:T")
    node_frames.append(
        _nodes(taps["node"].to_numpy(object), "junction", "gas", taps[["x", "y"]].to_numpy())
    )
    sc = np.array([f"gas:SC{i:07d}" for i in users], dtype=object)
    big = (c.bfloors[users] > 6) | ~np.isin(c.buse[users], ["residential", "commercial"])
    node_frames.append(_nodes(sc, "service_connection", "gas", bpt, building_id=c.bid[users]))
    tx = taps.set_index("node").loc[tap_of]
    services = pd.DataFrame(
        {
            "id": [f"gas:SV{i:07d}" for i in users],
            "from_node": tap_of,
            "to_node": sc,
            "x0": tx["x"].to_numpy(),
            "y0": tx["y"].to_numpy(),
            "x1": bpt[:, 0],
            "y1": bpt[:, 1],
            "class": "service_pipe",
            "role": "service",
            "pressure_class": runs["pressure_class"].to_numpy(object)[run],
            "dn": np.where(big, 63.0, 32.0),
            "street": -1,
            "on_bridge": False,
        }
    )
    services["building_regulator"] = services["pressure_class"] == "medium"
    links = _finish(_pieces(runs, taps), [stations, services])
    links["class"] = links["class"].fillna("pipe") if "class" in links else "pipe"
    links["network"] = "gas"
    steel = links["on_bridge"].to_numpy(bool) | (links["id"] == "gas:GO").to_numpy()
    links["material"] = np.where(steel, "steel", "PE100")
    outer = links["dn"].to_numpy(float) / 1000
    links["outer"] = outer
    links["diameter"] = np.where(steel, outer - 0.016, outer * 9 / 11)
    links["depth"] = depth
    links["initial_status"] = "open"
    nodes = pd.concat(node_frames, ignore_index=True)
    return nodes, links.drop(columns=["dn"])


# -- power -----------------------------------------------------------------------------------
def _power(c: _Ctx) -> tuple[pd.DataFrame, pd.DataFrame]:
    cor = c.corridor("power")
    # building loads and distribution substations (~1,000 kVA of a block's load each)
    floor_area = shapely.area(c.bgeom) * c.bfloors
    load = floor_area * pd.Series(c.buse).map(LOAD_VA_PER_M2).fillna(50.0).to_numpy() / 1000
    order = np.lexsort((c.bxy[:, 1], c.bxy[:, 0], c.bblock))
    blk, ld = c.bblock[order], load[order]
    cum = pd.Series(ld).groupby(blk).cumsum().to_numpy() - ld
    total = pd.Series(ld).groupby(blk).transform("sum").to_numpy()
    n_st = np.maximum(1, np.round(total / STATION_KVA))
    k = np.minimum(np.floor(cum / (total / n_st)), n_st - 1)
    grp_sorted = pd.factorize(pd.MultiIndex.from_arrays([blk, k]))[0]
    grp = np.empty(len(order), int)
    grp[order] = grp_sorted
    ng = grp.max() + 1
    g_load = np.bincount(grp, weights=load, minlength=ng)
    w = np.maximum(load, 1e-6)
    gxy = (
        np.column_stack([np.bincount(grp, weights=c.bxy[:, i] * w, minlength=ng) for i in (0, 1)])
        / np.bincount(grp, weights=w, minlength=ng)[:, None]
    )

    # each stands at the edge of its block beside the nearest street (not a bridge)
    land = np.flatnonzero(~c.bridge)
    tree = shapely.STRtree(c.lines[land])
    gi, ei = tree.query(shapely.points(gxy), predicate="dwithin", distance=200.0)
    e = land[ei]
    rel = gxy[gi] - c.xy[c.a[e]]
    along = np.einsum("ij,ij->i", rel, c.u[e])
    off = rel[:, 0] * c.u[e, 1] - rel[:, 1] * c.u[e, 0]
    score = np.abs(off) + np.where((along >= 0) & (along <= c.length[e]), 0.0, 1e6)
    best = pd.DataFrame({"g": gi, "e": e, "s": score}).sort_values(["g", "s"]).drop_duplicates("g")
    edge = land[tree.query_nearest(shapely.points(gxy), all_matches=False)[1]]
    edge[best["g"].to_numpy()] = best["e"].to_numpy()  # beside it rather than off its end
    rel = gxy - c.xy[c.a[edge]]
    along = np.clip(
        np.einsum("ij,ij->i", rel, c.u[edge]), 0.2 * c.length[edge], 0.8 * c.length[edge]
    )
    side = np.sign(rel[:, 1] * c.u[edge, 0] - rel[:, 0] * c.u[edge, 1])
    normal = np.column_stack([-c.u[edge, 1], c.u[edge, 0]]) * side[:, None]
    # on the cables' side of the street under their line, on the far side 0.3 m past the kerb
    far = normal.sum(axis=1) > 0  # the positive side (north of east-west streets, east)
    shift = cor[c.a[edge]] - c.xy[c.a[edge]]
    line_off = np.where(np.abs(c.u[edge, 0]) > 0.5, shift[:, 1], shift[:, 0])
    kerb = np.where(far, c.half[edge] + 0.3, -line_off)
    txy = c.xy[c.a[edge]] + c.u[edge] * along[:, None] + normal * kerb[:, None]
    start = cor[c.a[edge]]
    tap_xy = start + c.u[edge] * np.einsum("ij,ij->i", txy - start, c.u[edge])[:, None]

    # a shortest-path tree of the streets from the substations
    fac = c.layout.facilities
    fac = fac[fac["class"] == "substation"]
    sxy = shapely.get_coordinates(shapely.centroid(fac.geometry.to_numpy()))
    snode = c.nearest_node(sxy)
    dist, pred, src = dijkstra(
        c.graph, directed=False, indices=snode, return_predecessors=True, min_only=True
    )
    pe = np.full(c.n, -1)
    has = pred >= 0
    pe[has] = [
        c.edge_of[(min(v, p), max(v, p))]
        for v, p in zip(np.flatnonzero(has), pred[has], strict=True)
    ]
    child_of_edge = np.full(len(c.a), -1)
    child_of_edge[pe[has]] = np.flatnonzero(has)
    tree_tap = child_of_edge[edge] >= 0
    origin = np.where(dist[c.a[edge]] <= dist[c.b[edge]], c.a[edge], c.b[edge])
    holder = np.where(tree_tap, child_of_edge[edge], origin)  # the node whose load a tap is
    own = np.bincount(holder, weights=g_load, minlength=c.n)

    # cut the tree into feeders of at most FEEDER_KVA (bottom up, largest branches first)
    acc = own.copy()
    kids: list[list[int]] = [[] for _ in range(c.n)]
    roots: list[int] = []
    for v in np.argsort(-dist, kind="stable"):
        total_v = acc[v]
        while total_v > FEEDER_KVA and kids[v]:
            big = max(kids[v], key=lambda x: acc[x])
            kids[v].remove(big)
            total_v -= acc[big]
            roots.append(big)
        acc[v] = total_v
        if pred[v] >= 0 and total_v > 0:
            kids[pred[v]].append(int(v))
            acc[pred[v]] += total_v
    roots += [int(s) for s in snode if acc[s] > 0]
    root_set = set(roots)
    owner = np.full(c.n, -1)
    for v in np.argsort(dist, kind="stable"):
        if v in root_set:
            owner[v] = v
        elif acc[v] > 0 and pred[v] >= 0:
            owner[v] = owner[pred[v]]
    feeder_of = np.full(c.n, -1)
    feeder_of[roots] = np.arange(len(roots))

    # feeder runs: trunk from the substation, then the feeder's own branches
    rows = []  # (feeder, edge, from street node, to street node)
    for f, r in enumerate(roots):
        v = r
        while pred[v] >= 0:
            rows.append((f, pe[v], pred[v], v))
            v = pred[v]
    cabled = np.flatnonzero((owner >= 0) & (pred >= 0))
    cabled = cabled[owner[cabled] != cabled]
    rows += zip(feeder_of[owner[cabled]], pe[cabled], pred[cabled], cabled, strict=True)
    fr = np.array(rows, dtype=int).reshape(-1, 4)
    sub_of = np.array([int(np.flatnonzero(snode == src[r])[0]) for r in roots], dtype=int)

    def fid(f: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.array([f"pw:F{a:04d}N{b:06d}" for a, b in zip(f, v, strict=True)], dtype=object)

    runs = _runs(
        np.array(
            [f"pw:F{f:04d}E{e:06d}" for f, e in zip(fr[:, 0], fr[:, 1], strict=True)], dtype=object
        ),
        fid(fr[:, 0], fr[:, 2]),
        fid(fr[:, 0], fr[:, 3]),
        cor[fr[:, 2]],
        cor[fr[:, 3]],
        street=fr[:, 1],
        role="feeder",
        pressure_class="MV",
        initial_status="open",
        on_bridge=c.bridge[fr[:, 1]],
        feeder=fr[:, 0],
        spur=False,
    )
    # spurs along the streets off the tree, from the end nearer the substation: on to the far
    # corner where another feeder has it (the piece past the spur's last transformer is then
    # the normally-open tie between the two feeders), else to the last transformer (run on
    # _TAP_MARGIN past it, a stub that ``_prune`` takes off again)
    tap_f = feeder_of[owner[holder]]
    spur = ~tree_tap
    other = np.where(origin == c.a[edge], c.b[edge], c.a[edge])
    ahead = (cor[other] - cor[origin]) / c.length[edge][:, None]
    far = np.einsum("ij,ij->i", tap_xy - cor[origin], ahead)
    sp = (
        pd.DataFrame({"j": np.flatnonzero(spur), "f": tap_f[spur], "e": edge[spur], "d": far[spur]})
        .sort_values("d")
        .drop_duplicates(["f", "e"], keep="last")
    )
    j = sp["j"].to_numpy()
    sp_f = sp["f"].to_numpy()
    feeder_at = np.where(owner >= 0, feeder_of[np.maximum(owner, 0)], -1)  # by street node
    sp_g = feeder_at[other[j]]
    to_tie = (sp_g >= 0) & (sp_g != sp_f)
    pair = pd.Series(list(zip(np.minimum(sp_f, sp_g), np.maximum(sp_f, sp_g), strict=True)))
    to_tie &= ~pair.where(to_tie).duplicated().to_numpy()  # one tie between two feeders
    spur_base = np.array(
        [f"pw:F{f:04d}S{e:06d}" for f, e in zip(sp_f, sp["e"], strict=True)], dtype=object
    )
    spur_end = np.where(
        to_tie[:, None],
        cor[other[j]],
        cor[origin[j]] + ahead[j] * (far[j] + _TAP_MARGIN)[:, None],
    )
    spur_to = np.where(to_tie, fid(sp_g, other[j]), spur_base + "X")
    spur_runs = _runs(
        spur_base,
        fid(sp_f, origin[j]),
        spur_to,
        cor[origin[j]],
        spur_end,
        street=sp["e"].to_numpy(),
        role="feeder",
        pressure_class="MV",
        initial_status="open",
        on_bridge=False,
        feeder=sp_f,
        spur=True,
        tie_at=np.where(to_tie, spur_to, None),
    )
    runs = pd.concat([runs, spur_runs], ignore_index=True)
    key = pd.Series(
        np.arange(len(runs)),
        index=pd.MultiIndex.from_arrays(
            [runs["feeder"].to_numpy(), runs["street"].to_numpy(), runs["spur"].to_numpy()]
        ),
    )
    run_of_tap = key.loc[list(zip(tap_f, edge, ~tree_tap, strict=True))].to_numpy()
    r0 = runs[["x0", "y0"]].to_numpy()[run_of_tap]
    r1 = runs[["x1", "y1"]].to_numpy()[run_of_tap]
    ru = (r1 - r0) / np.linalg.norm(r1 - r0, axis=1)[:, None]
    taps, tap_of = _taps(runs, run_of_tap, np.einsum("ij,ij->i", tap_xy - r0, ru), "pw:TP")
    tap_xy = taps.set_index("node").loc[tap_of][["x", "y"]].to_numpy()
    pieces = _pieces(runs, taps)
    nop = (pieces["to_node"] == pieces["tie_at"]).to_numpy()  # the spurs' last pieces
    pieces.loc[nop, ["role", "initial_status"]] = ["tie", "closed"]
    pieces = pieces.drop(columns=["tie_at"])

    # a normally-open tie cable along a street between two feeders that no spur joins
    joined = {(min(f, g), max(f, g)) for f, g in zip(sp_f[to_tie], sp_g[to_tie], strict=True)}
    cand = (feeder_at[c.a] >= 0) & (feeder_at[c.b] >= 0) & (feeder_at[c.a] != feeder_at[c.b])
    cand &= ~np.isin(np.arange(len(c.a)), sp["e"].to_numpy())
    e = np.flatnonzero(cand)
    fa, fb = feeder_at[c.a[e]], feeder_at[c.b[e]]
    ties = (
        pd.DataFrame(
            {
                "e": e,
                "lo": np.minimum(fa, fb),
                "hi": np.maximum(fa, fb),
                "fa": fa,
                "fb": fb,
                "tree": child_of_edge[e] >= 0,  # beside a feeder's cable: only where no other
            }
        )
        .sort_values(["tree", "e"], kind="stable")
        .drop_duplicates(["lo", "hi"])
        .sort_values("e")
    )
    ties = ties[[(lo, hi) not in joined for lo, hi in zip(ties["lo"], ties["hi"], strict=True)]]
    e = ties["e"].to_numpy()
    tie_links = _runs(
        np.array([f"pw:TIE{k:05d}" for k in range(len(ties))], dtype=object),
        fid(ties["fa"].to_numpy(), c.a[e]),
        fid(ties["fb"].to_numpy(), c.b[e]),
        cor[c.a[e]],
        cor[c.b[e]],
        street=e,
        role="tie",
        pressure_class="MV",
        initial_status="closed",
        on_bridge=c.bridge[e],
    ).rename(columns={"base": "id"})

    # substations, their exits, transformers, taps and the 0.4 kV services
    ss_ids = np.array([f"pw:SS{k:03d}" for k in range(len(fac))], dtype=object)
    nf = len(roots)
    exits = _runs(
        np.array([f"pw:SX{f:04d}" for f in range(nf)], dtype=object),
        ss_ids[sub_of],
        fid(np.arange(nf), snode[sub_of]),
        sxy[sub_of],
        cor[snode[sub_of]],
        street=-1,
        role="station",
        pressure_class="MV",
        initial_status="open",
        on_bridge=False,
    ).rename(columns={"base": "id"})
    tr_ids = np.array([f"pw:TR{j:06d}" for j in range(ng)], dtype=object)
    tap_cables = _runs(
        np.array([f"pw:TC{j:06d}" for j in range(ng)], dtype=object),
        tap_of,
        tr_ids,
        tap_xy,
        txy,
        street=-1,
        role="tap",
        pressure_class="MV",
        initial_status="open",
        on_bridge=False,
    ).rename(columns={"base": "id"})
    nb = len(c.bgeom)
    near = shapely.shortest_line(shapely.points(txy[grp]), c.bgeom)
    bpt = shapely.get_coordinates(near).reshape(-1, 2, 2)[:, 1]
    sc = np.array([f"pw:SC{i:07d}" for i in range(nb)], dtype=object)
    services = _runs(
        np.array([f"pw:LV{i:07d}" for i in range(nb)], dtype=object),
        tr_ids[grp],
        sc,
        txy[grp],
        bpt,
        street=-1,
        role="service",
        pressure_class="LV",
        initial_status="open",
        on_bridge=False,
    ).rename(columns={"base": "id"})
    mv = pd.concat([pieces, tie_links, exits, tap_cables], ignore_index=True)
    mv = _prune(mv, keep=set(ss_ids) | set(tr_ids))
    mv["normally_open"] = (mv["role"] == "tie").to_numpy()
    mv["outer"] = _OUTER["power_mv"]
    services["outer"] = _OUTER["power_lv"]
    links = _finish(mv, [services])
    links["class"] = "cable"
    links["network"] = "power"
    links["material"] = np.where(
        links["pressure_class"] == "MV",
        "XLPE 3x300 Cu in MPP conduit",
        "XLPE 4x185 Al in PVC conduit",
    )
    links["diameter"] = links["outer"]
    links["depth"] = LAID_COVER["power"]
    links = links.drop(columns=["feeder", "spur"])

    used = set(mv["from_node"]) | set(mv["to_node"])
    fn = np.array(sorted(v for v in used if v.startswith("pw:F") and "N" in v), dtype=object)
    fv = np.array([int(s[-6:]) for s in fn], dtype=int)
    taps = taps[taps["node"].isin(used)]
    units = np.ceil(g_load / (UNIT_KVA * UNIT_LOADING)).astype(int)
    units = np.maximum(units, 1)
    nodes = pd.concat(
        [
            _nodes(
                ss_ids,
                "substation",
                "power",
                sxy,
                name=fac["name"].to_numpy(object),
                props=[{"facility": f, "voltage": "110/10 kV"} for f in fac["id"]],
            ),
            _nodes(fn, "junction", "power", cor[fv]),
            _nodes(
                taps["node"].to_numpy(object),
                "junction",
                "power",
                taps[["x", "y"]].to_numpy(),
                props=[{"kind": "ring_main_unit"}] * len(taps),
            ),
            _nodes(
                tr_ids,
                "transformer",
                "power",
                txy,
                props=[
                    {
                        "rating_kva": UNIT_KVA,
                        "units": int(u),
                        "load_kva": round(float(x), 1),
                        "feeder": int(f),
                    }
                    for u, x, f in zip(units, g_load, tap_f, strict=True)
                ],
            ),
            _nodes(
                sc,
                "service_connection",
                "power",
                bpt,
                building_id=c.bid,
                props=[{"transformer": t} for t in tr_ids[grp]],
            ),
        ],
        ignore_index=True,
    )
    return nodes, links


# -- telecom ---------------------------------------------------------------------------------
def _telecom(c: _Ctx) -> tuple[pd.DataFrame, pd.DataFrame]:
    cor = c.corridor("telecom")
    e = np.flatnonzero(np.isin(c.cls, ["primary", "secondary"]))
    v = np.unique(np.concatenate([c.a[e], c.b[e]]))
    ch = lambda x: np.array([f"tc:CH{i:06d}" for i in x], dtype=object)  # noqa: E731
    links = _runs(
        np.array([f"tc:D{i:06d}" for i in e], dtype=object),
        ch(c.a[e]),
        ch(c.b[e]),
        cor[c.a[e]],
        cor[c.b[e]],
        street=e,
        role="duct",
        on_bridge=c.bridge[e],
        ducts=np.where(c.cls[e] == "primary", 6, 4),
    ).rename(columns={"base": "id"})
    links = _finish(links, [])
    links["class"] = "duct"
    links["network"] = "telecom"
    links["material"] = "PVC"
    links["outer"] = _OUTER["telecom"]
    links["diameter"] = _OUTER["telecom"]
    links["depth"] = LAID_COVER["telecom"]
    return _nodes(ch(v), "chamber", "telecom", cor[v]), links


# -- district cooling ------------------------------------------------------------------------
def _cooling(c: _Ctx) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    blocks = c.layout.blocks
    cbd = blocks[blocks["land_use"] == "cbd"].geometry.to_numpy()
    e = np.flatnonzero(cooling_edges(c.layout))
    if len(e) == 0:
        return None
    g = sparse.coo_matrix((np.ones(len(e)), (c.a[e], c.b[e])), shape=(c.n, c.n))
    _, label = connected_components(g, directed=False)
    v = np.unique(np.concatenate([c.a[e], c.b[e]]))
    base = c.corridor("heating")
    s = HEATING_HALF_SPACING
    cor = {"supply": base - s, "return": base + s}
    ids = {
        k: (lambda x, k=k: np.array([f"ht:{k[0].upper()}{i:06d}" for i in x], dtype=object))
        for k in cor
    }
    node_frames, runs = [], []
    for circuit in ("supply", "return"):
        node_frames.append(_nodes(ids[circuit](v), "junction", "heating", cor[circuit][v]))
        runs.append(
            _runs(
                np.array([f"ht:{circuit[0].upper()}P{i:06d}" for i in e], dtype=object),
                ids[circuit](c.a[e]),
                ids[circuit](c.b[e]),
                cor[circuit][c.a[e]],
                cor[circuit][c.b[e]],
                street=e,
                role="main",
                circuit=circuit,
                on_bridge=False,
                outer=_OUTER["heating"],
                dn=0.15,
            )
        )
    runs = pd.concat(runs, ignore_index=True)
    # one underground energy centre per CBD cluster, in the corner of the CBD block nearest
    # the cluster's middle
    plants, extra = [], []
    cbd_xy = shapely.get_coordinates(shapely.centroid(cbd))
    sites = c.layout.facilities.geometry.to_numpy()
    sites = sites[shapely.get_type_id(sites) == shapely.GeometryType.POLYGON]
    for k, lab in enumerate(np.unique(label[v])):
        members = v[label[v] == lab]
        middle = c.xy[members].mean(axis=0)
        block = cbd_xy[np.argmin(np.linalg.norm(cbd_xy - middle, axis=1))]
        order = members[np.argsort(np.linalg.norm(c.xy[members] - block, axis=1), kind="stable")]
        taken = [  # corners where another facility's site (a substation, a regulator) stands
            shapely.intersects(
                sites, shapely.Point(c.xy[a] + np.sign(block - c.xy[a]) * 20.0)
            ).any()
            for a in order
        ]
        at = order[taken.index(False)] if False in taken else order[0]
        pxy = c.xy[at] + np.sign(block - c.xy[at]) * 20.0
        pid = f"ht:PL{k:02d}"
        plants.append((pid, pxy))
        for circuit in ("supply", "return"):
            a, b = (
                (pid, ids[circuit]([at])[0])
                if circuit == "supply"
                else (ids[circuit]([at])[0], pid)
            )
            pa, pb = (pxy, cor[circuit][at]) if circuit == "supply" else (cor[circuit][at], pxy)
            extra.append(
                {
                    "id": f"ht:{circuit[0].upper()}X{k:02d}",
                    "from_node": a,
                    "to_node": b,
                    "x0": pa[0],
                    "y0": pa[1],
                    "x1": pb[0],
                    "y1": pb[1],
                    "role": "station",
                    "circuit": circuit,
                    "street": -1,
                    "on_bridge": False,
                    "outer": _OUTER["heating"],
                    "dn": 0.15,
                }
            )
    node_frames.append(
        _nodes(
            [p for p, _ in plants],
            "pumping_station",
            "heating",
            [x for _, x in plants],
            name=[f"District cooling energy centre {k + 1}" for k in range(len(plants))],
            props=[{"role": "cooling_plant", "medium": "chilled water 5/13 °C"}] * len(plants),
        )
    )
    # a supply and a return connection to every CBD building near the network
    users = np.flatnonzero(c.bdistrict == "cbd")
    supply_runs = (runs["circuit"] == "supply").to_numpy()
    if len(users):
        run, pos, bpt = _service_taps(c, runs, supply_runs, users)
        back = run + int(supply_runs.sum())  # the return run of the same street
        taps, tap_of = _taps(runs, np.concatenate([run, back]), np.concatenate([pos, pos]), "ht:T")
        node_frames.append(
            _nodes(
                taps["node"].to_numpy(object), "junction", "heating", taps[["x", "y"]].to_numpy()
            )
        )
        sc = np.array([f"ht:SC{i:07d}" for i in users], dtype=object)
        node_frames.append(
            _nodes(
                sc,
                "service_connection",
                "heating",
                bpt,
                building_id=c.bid[users],
                props=[{"kind": "energy_transfer_station"}] * len(users),
            )
        )
        tx = taps.set_index("node").loc[tap_of][["x", "y"]].to_numpy()
        n = len(users)
        for i, circuit in enumerate(("supply", "return")):
            t = tap_of[i * n : (i + 1) * n]
            p = tx[i * n : (i + 1) * n]
            a, b = (t, sc) if circuit == "supply" else (sc, t)
            pa, pb = (p, bpt) if circuit == "supply" else (bpt, p)
            extra += pd.DataFrame(
                {
                    "id": [f"ht:{circuit[0].upper()}V{j:07d}" for j in users],
                    "from_node": a,
                    "to_node": b,
                    "x0": pa[:, 0],
                    "y0": pa[:, 1],
                    "x1": pb[:, 0],
                    "y1": pb[:, 1],
                    "role": "service",
                    "circuit": circuit,
                    "street": -1,
                    "on_bridge": False,
                    "outer": _OUTER["heating_sv"],
                    "dn": 0.08,
                    "class": "service_pipe",
                }
            ).to_dict("records")
    else:
        taps = pd.DataFrame(columns=["run", "pos", "node", "x", "y"])
    links = _finish(_pieces(runs, taps), [pd.DataFrame(extra)])
    links["class"] = links["class"].fillna("pipe") if "class" in links else "pipe"
    links["network"] = "heating"
    links["material"] = "pre-insulated steel"
    links["diameter"] = links["dn"]
    links["depth"] = LAID_COVER["heating"]
    links = links.drop(columns=["dn"])
    return pd.concat(node_frames, ignore_index=True), links


# -- the clearance check, same-network crossings, seeded violations -------------------------
_REACH = 6.0  # m around a line within which a change of it may break a clearance


def _engine_lines(nodes: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """The links as the clearance engine's line table (``citytwin.networks.clearance``)."""
    svc = set(nodes.loc[nodes["class"] == "service_connection", "id"])
    table = rules()
    net = links["network"].to_numpy(object)
    pclass = (
        links["pressure_class"].to_numpy(object)
        if "pressure_class" in links
        else np.full(len(links), None)
    )
    cls = [
        table.classify(n, p if n == "gas" else INSTALLATION.get(n))
        for n, p in zip(net, pclass, strict=True)
    ]
    depth = links["depth"].to_numpy(float)
    outer = links["outer"].to_numpy(float)
    return pd.DataFrame(
        {
            "id": links["id"].to_numpy(object),
            "network": net,
            "cls": cls,
            "geometry": links["geometry"].to_numpy(),
            "width": outer,
            "height": outer,
            "cover_from": depth,
            "cover_to": depth,
            "from_node": links["from_node"].to_numpy(object),
            "to_node": links["to_node"].to_numpy(object),
            "service": (links["from_node"].isin(svc) | links["to_node"].isin(svc)).to_numpy(),
        }
    )


class _Check:
    """Clearance conflicts of one line, laid anew, against the other lines and the buildings
    around it: the clearance engine on the neighbourhood."""

    def __init__(self, c: _Ctx, nodes: pd.DataFrame, links: pd.DataFrame) -> None:
        self.c = c
        self.lines = _engine_lines(nodes, links)
        self.tree = shapely.STRtree(self.lines["geometry"].to_numpy())
        self.buildings = c.layout.buildings[["id", "geometry"]]

    def conflicts(self, i: int, geom: shapely.Geometry, depth: float) -> pd.DataFrame:
        """Violations line ``i`` would have laid as ``geom`` at cover ``depth``."""
        near = np.union1d(self.tree.query(geom, predicate="dwithin", distance=_REACH), [i])
        sub = self.lines.iloc[near].copy()
        me = self.lines.at[i, "id"]
        at = sub["id"] == me
        sub.loc[at, "geometry"] = geom
        sub.loc[at, ["cover_from", "cover_to"]] = depth
        nearby = self.c.btree.query(geom, predicate="dwithin", distance=_REACH)
        found = check_clearances(sub, rules(), self.buildings.iloc[nearby])
        return found[(found["id_a"] == me) | (found["id_b"] == me)]

    def update(self, i: int, geom: shapely.Geometry, depth: float) -> None:
        self.lines.at[i, "geometry"] = geom
        self.lines.loc[i, ["cover_from", "cover_to"]] = depth


_DIP = 0.75  # m either side of a crossing over which a line passes over or under another


def _pass_below(
    c: _Ctx,
    nodes: pd.DataFrame,
    links: pd.DataFrame,
    networks: tuple[str, ...] = ("gas", "heating"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where two lines of one network cross without a joint at the same level (a regulator
    station's pipes across the mains, the cooling return across the supply, a building's
    connection across the other circuit), the one that is not a main along the street (else the
    return circuit) passes over the other, or below it where passing over would break another
    clearance: a piece ``_DIP`` either side of the crossing, laid the vertical clearance above
    or below the other line, between two new joints."""
    for _ in range(4):
        links = links.reset_index(drop=True)
        mine = links["network"].isin(networks).to_numpy()
        found = check_clearances(_engine_lines(nodes, links[mine]), rules())
        found = found[(found["kind"] == "vertical") & (found["network_a"] == found["network_b"])]
        if found.empty:
            return nodes, links
        check = _Check(c, nodes, links)
        index = pd.Index(links["id"])
        role = links["role"].to_numpy(object)
        circuit = (
            links["circuit"].to_numpy(object) if "circuit" in links else np.full(len(links), None)
        )
        done: set[int] = set()
        new_links, new_nodes, drop = [], [], []
        for v in found.itertuples(index=False):
            a, b = index.get_loc(v.id_a), index.get_loc(v.id_b)
            rank = [(role[k] in CORRIDOR_ROLES, circuit[k] != "return") for k in (a, b)]
            low, high = (a, b) if rank[0] <= rank[1] else (b, a)
            if low in done:
                continue  # one change per line and pass
            done.add(low)
            row, other = links.iloc[low], links.iloc[high]
            gap = vertical(row["network"], row["network"])
            at = np.array([v.x, v.y])
            depth = round(float(other["depth"] - gap - row["outer"]), 3)  # over it
            pieces, joints = _dip(row, at, depth, f"over {other['id']}")
            piece = next(p for p in pieces if p["depth"] == depth)
            if depth <= 0.3 or not check.conflicts(low, piece["geometry"], depth).empty:
                depth = round(float(other["depth"] + other["outer"] + gap), 3)  # under it
                pieces, joints = _dip(row, at, depth, f"under {other['id']}")
            drop.append(low)
            new_links += pieces
            new_nodes += joints
        links = pd.concat(
            [links.drop(index=links.index[drop]), pd.DataFrame(new_links)], ignore_index=True
        )
        nodes = pd.concat([nodes, pd.DataFrame(new_nodes)], ignore_index=True)
    raise RuntimeError("utilities: same-network crossings still too close after 4 passes")


def _dip(
    row: pd.Series, at: np.ndarray, depth: float, passes: str
) -> tuple[list[dict], list[dict]]:
    """``row``'s link cut into pieces around ``at``, the middle one at cover ``depth`` (its
    ``passes``: over or under which line)."""
    from shapely.ops import substring

    geom = row["geometry"]
    length = geom.length
    s = geom.project(shapely.Point(at))
    s0, s1 = s - _DIP, s + _DIP
    s0 = 0.0 if s0 < 0.3 else s0
    s1 = length if s1 > length - 0.3 else s1
    cuts = [x for x in (0.0, s0, s1, length) if 0.0 <= x <= length]
    cuts = sorted(set(cuts))
    ends = [row["from_node"]] + [f"{row['id']}-J{k}" for k in range(1, len(cuts) - 1)]
    ends.append(row["to_node"])
    pieces, joints = [], []
    for k in range(len(cuts) - 1):
        piece = row.to_dict()
        piece["id"] = f"{row['id']}-{'abc'[k]}" if len(cuts) > 2 else row["id"]
        piece["geometry"] = substring(geom, cuts[k], cuts[k + 1])
        piece["from_node"], piece["to_node"] = ends[k], ends[k + 1]
        if cuts[k] <= s <= cuts[k + 1]:
            piece["depth"] = depth
            piece["passes"] = passes
        pieces.append(piece)
    for k in range(1, len(cuts) - 1):
        xy = shapely.get_coordinates(geom.interpolate(cuts[k]))[0]
        joints.append(
            {"id": ends[k], "class": "junction", "network": row["network"], "x": xy[0], "y": xy[1]}
        )
    return pieces, joints


def _midpoint(line: shapely.LineString) -> np.ndarray:
    return shapely.get_coordinates(line).mean(axis=0)


def _dogleg(geom: shapely.LineString, s0: float, s1: float, shift: np.ndarray) -> shapely.Geometry:
    """``geom`` (a straight piece) with its stretch from ``s0`` to ``s1`` m moved by ``shift``."""
    a, b = shapely.get_coordinates(geom)
    u = (b - a) / np.linalg.norm(b - a)
    return shapely.LineString(
        [a, a + u * s0, a + u * s0 + shift, a + u * s1 + shift, a + u * s1, b]
    )


_PARTNER = {
    "horizontal": ("horizontal", "power"),
    "building": ("building", "building"),
    "vertical_power": ("vertical", "power"),
    "vertical_telecom": ("vertical", "telecom"),
}


def _seed_violations(
    c: _Ctx, nodes: pd.DataFrame, links: pd.DataFrame, rng: np.random.Generator
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Place a few realistic violations of the virtual city's clearance rules (about 1.25 per
    km², at least 3), each checked with the clearance engine to be the only kind of conflict
    where it is; return the links changed and their records."""
    links = links.reset_index(drop=True)
    check = _Check(c, nodes, links)
    net, role = links["network"].to_numpy(object), links["role"].to_numpy(object)
    street = links["street"].to_numpy(int)
    geoms = links["geometry"].to_numpy().copy()
    depths = links["depth"].to_numpy(float).copy()
    outer = links["outer"].to_numpy(float)
    length = shapely.length(geoms)
    bridge = links["on_bridge"].to_numpy(bool)
    power_streets = set(street[(net == "power") & np.isin(role, ["feeder", "tie"])].tolist())
    gas_main = np.flatnonzero((net == "gas") & (role == "main") & ~bridge & (length >= 40))
    on_power = np.isin(street[gas_main], list(power_streets))
    gas_service = np.flatnonzero((net == "gas") & (role == "service"))
    pools = {
        "horizontal": iter(rng.permutation(gas_main[on_power])),
        "building": iter(rng.permutation(gas_main)),
        "vertical_power": iter(rng.permutation(gas_service)),
        "vertical_telecom": iter(rng.permutation(gas_service)),
    }
    power_xy = c.corridor("power")
    gas_xy = c.corridor("gas")
    target = max(3, round(1.25 * c.layout.area_km2))
    sites: dict[tuple[int, int], list[np.ndarray]] = {}  # by 200 m cell
    used: set[int] = set()
    records: list[dict[str, Any]] = []
    tree = check.tree

    def attempt(kind: str, i: int) -> tuple[dict[str, Any], shapely.Geometry, float] | None:
        g, d, o = geoms[i], depths[i], outer[i]
        if kind in ("horizontal", "building"):
            a, b = shapely.get_coordinates(g)[[0, -1]]
            u = (b - a) / np.linalg.norm(b - a)
            e = street[i]
            away = gas_xy[c.a[e]] - c.xy[c.a[e]]  # from the centre line towards the gas main
            away = away - u * (away @ u)
            away /= np.linalg.norm(away)
            if kind == "horizontal":  # towards the 10 kV cables of the same street
                gap = abs((power_xy[c.a[e]] - gas_xy[c.a[e]]) @ away)
                shift = away * (gap - 0.3 - (o + _OUTER["power_mv"]) / 2)
                new = _dogleg(g, 0.35 * length[i], 0.65 * length[i], shift)
            else:  # towards the nearest building on the kerb side of the main
                near = c.btree.query(g, predicate="dwithin", distance=30.0)
                near = near[(c.bxy[near] - a) @ away > 0]
                if len(near) == 0:
                    return None
                k = near[np.argmin(shapely.distance(g, c.bgeom[near]))]
                along = (shapely.get_coordinates(c.bgeom[k]) - a) @ u
                s0, s1 = along.min() - 1.0, along.max() + 1.0
                if s0 < 3.0 or s1 > length[i] - 3.0:
                    return None
                shift = away * (shapely.distance(g, c.bgeom[k]) - 0.5 - o / 2)
                new = _dogleg(g, s0, s1, shift)
        else:
            other = "power" if kind == "vertical_power" else "telecom"
            hit = tree.query(g, predicate="intersects")
            hit = hit[(net[hit] == other) & np.isin(role[hit], ["feeder", "tie", "duct"])]
            if len(hit) == 0:
                return None
            if other == "power":  # laid shallow, just over the cable
                d = float(depths[hit].min()) - 0.05 - o
            else:  # just under the duct bank
                d = float((depths[hit] + outer[hit]).max()) + 0.05
            new = g
        found = check.conflicts(i, new, d)
        want_kind, want_net = _PARTNER[kind]
        partner_net = np.where(
            found["id_a"] == links.at[i, "id"], found["network_b"], found["network_a"]
        )
        if found.empty or not ((found["kind"] == want_kind) & (partner_net == want_net)).all():
            return None
        me = links.at[i, "id"]
        others = np.where(found["id_a"] == me, found["id_b"], found["id_a"])
        worst = found.iloc[int(np.argmin(found["actual_m"].to_numpy()))]
        actual = float(worst["actual_m"])
        required = float(worst["required_m"])
        what = {
            "horizontal": "gas main shifted to within {a} m of a 10 kV cable",
            "building": "gas main within {a} m of a building's foundation",
            "vertical_power": "gas service pipe laid shallow, {a} m over a 10 kV cable",
            "vertical_telecom": "gas service pipe {a} m under a telecom duct bank",
        }[kind]
        record = {
            "kind": want_kind,
            "description": what.format(a=actual) + f" (the rules require {required} m)",
            "networks": ["gas", want_net],
            "feature_ids": [me, *sorted(set(others))],
            "location": [float(worst["x"]), float(worst["y"])],
            "depth": float(worst["depth"]),
            "required_m": required,
            "actual_m": actual,
            "source": str(worst["source"]),
        }
        return record, new, d

    kinds = list(pools)
    for t in range(target):
        for kind in kinds[t % 4 :] + kinds[: t % 4]:
            placed = False
            for i in pools[kind]:
                if i in used:
                    continue
                mid = _midpoint(geoms[i])
                cell = (int(mid[0] // _SITE_SPACING), int(mid[1] // _SITE_SPACING))
                around = [
                    p
                    for dx in (-1, 0, 1)
                    for dy in (-1, 0, 1)
                    for p in sites.get((cell[0] + dx, cell[1] + dy), [])
                ]
                if any(np.linalg.norm(mid - p) < _SITE_SPACING for p in around):
                    continue
                result = attempt(kind, int(i))
                if result is None:
                    continue
                record, new, d = result
                geoms[i], depths[i] = new, d
                check.update(int(i), new, d)
                used.add(int(i))
                sites.setdefault(cell, []).append(mid)
                records.append({"id": f"cv-{len(records) + 1:03d}", **record})
                placed = True
                break
            if placed:
                break
    links = links.assign(geometry=geoms, depth=depths)
    return links, records


# -- levels and model frames -----------------------------------------------------------------
_PROP_COLUMNS = (
    "role",
    "street",
    "outer",
    "on_bridge",
    "building_regulator",
    "circuit",
    "ducts",
    "installation",
    "passes",
    "normally_open",
)


def _frames(
    c: _Ctx, nodes: pd.DataFrame, links: pd.DataFrame
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Model frames: levels from the terrain (crowns at ``depth`` below ground, inverts below
    them), lengths, and everything else in ``props``."""
    terrain = c.layout.terrain
    ground = pd.Series(terrain.sample(nodes[["x", "y"]].to_numpy()), index=nodes["id"])
    geoms = links["geometry"].to_numpy()
    ends = shapely.get_coordinates(shapely.boundary(geoms)).reshape(-1, 2, 2)
    g0, g1 = terrain.sample(ends[:, 0]), terrain.sample(ends[:, 1])
    outer = links["outer"].to_numpy(float)
    inner = links["diameter"].to_numpy(float)
    below = links["depth"].to_numpy(float) + (outer + inner) / 2  # ground to invert
    reach = (
        pd.concat(
            [pd.Series(below, index=links["from_node"]), pd.Series(below, index=links["to_node"])]
        )
        .groupby(level=0)
        .max()
    )
    node_depth = reach.reindex(nodes["id"]).to_numpy()
    cover = ground.to_numpy()
    props = nodes["props"] if "props" in nodes else pd.Series([None] * len(nodes))
    node_frame = gpd.GeoDataFrame(
        {
            "id": nodes["id"].to_numpy(object),
            "class": nodes["class"].to_numpy(object),
            "network": nodes["network"].to_numpy(object),
            "name": nodes["name"].to_numpy(object) if "name" in nodes else None,
            "elevation": np.round(cover - node_depth, 3),
            "cover_level": np.round(cover, 3),
            "invert_level": np.round(cover - node_depth, 3),
            "depth": np.round(node_depth, 3),
            "building_id": nodes["building_id"].to_numpy(object)
            if "building_id" in nodes
            else None,
            "props": [p if isinstance(p, dict) else {} for p in props],
        },
        geometry=shapely.points(nodes[["x", "y"]].to_numpy()),
        crs=CRS,
    )
    extras = [k for k in _PROP_COLUMNS if k in links]
    values = {k: links[k].to_numpy(object) for k in extras}
    link_props = []
    for i in range(len(links)):
        p = {}
        for k in extras:
            v = values[k][i]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if k == "street":
                if int(v) >= 0:
                    p["street"] = f"street-{int(v):06d}"
            elif k == "outer":
                p["outer_diameter"] = float(v)
            elif k in ("on_bridge", "building_regulator", "normally_open"):
                if bool(v):
                    p[k] = True
            else:
                p[k] = int(v) if k == "ducts" else v
        link_props.append(p)
    link_frame = gpd.GeoDataFrame(
        {
            "id": links["id"].to_numpy(object),
            "class": links["class"].to_numpy(object),
            "network": links["network"].to_numpy(object),
            "from_node": links["from_node"].to_numpy(object),
            "to_node": links["to_node"].to_numpy(object),
            "diameter": np.round(inner, 4),
            "length": np.round(shapely.length(geoms), 2),
            "material": links["material"].to_numpy(object),
            "invert_from": np.round(g0 - below, 3),
            "invert_to": np.round(g1 - below, 3),
            "depth": np.round(links["depth"].to_numpy(float), 3),
            "pressure_class": links["pressure_class"].to_numpy(object)
            if "pressure_class" in links
            else None,
            "initial_status": links["initial_status"].to_numpy(object)
            if "initial_status" in links
            else None,
            "props": link_props,
        },
        geometry=geoms,
        crs=CRS,
    )
    return node_frame, link_frame

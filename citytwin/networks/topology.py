"""Network topology: build a ``Network`` from explicit end-node ids or from GIS geometry, and
check it for the errors that break analyses.

Builders are tolerant: a network with topology errors is built as far as it can be, and what
could not be taken as it is comes back as a list of *issues* next to the network. Issues (of the
builders and of ``check_topology``) share one table layout, so that a caller can print them or
write them as GeoJSON points without caring about their kind:

=========  ============================================================================
column     meaning
=========  ============================================================================
kind       one of the ``*`` kind names below (``DANGLING_END``, ``NEAR_MISS`` ...)
node       the node id concerned (None for link issues)
link       the link id concerned (None for node issues)
other      the feature it clashes with: the other node / link, the links of a duplicate
x, y       where to look: the node, or the middle of the link
value      a number that qualifies it: a distance, a length, a fall, a component size
=========  ============================================================================

Distances (tolerances, near-miss distances, lengths) are in the units of the coordinates: metres
in the twin's projected CRS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import shapely
from scipy import sparse
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import cKDTree

from citytwin.errors import InvalidInput, NotFound
from citytwin.networks.graph import Network

# -- issue kinds ---------------------------------------------------------------------------
MISSING_NODE = "missing_node"
"""A link names an end node that is not among the nodes (build): the node is added, unplaced."""
AMBIGUOUS_END = "ambiguous_end"
"""A line end lies equally near several node points (build): ``other`` lists the candidates."""
DANGLING_END = "dangling_end"
"""A node with one link that is not a terminal (source, tank, outfall ... as told)."""
NEAR_MISS = "near_miss"
"""Two nodes closer than the near-miss distance and not joined by a link."""
NEAR_MISS_LINK = "near_miss_link"
"""A node closer than the near-miss distance to another link's interior, not joined to it."""
DUPLICATE_LINK = "duplicate_link"
"""A link with the same two end nodes and the same geometry as another (``other``)."""
PARALLEL_LINK = "parallel_link"
"""A link with the same two end nodes as another but a different course (twin mains are real;
listed for review)."""
ZERO_LENGTH = "zero_length"
"""A line no longer than the tolerance."""
SELF_LOOP = "self_loop"
"""A line that starts and ends at the same node."""
ISOLATED_NODE = "isolated_node"
"""A node without links."""
DISCONNECTED = "disconnected_component"
"""A group of linked nodes not connected to the largest one; ``value`` is its node count."""
NO_SOURCE = "no_source"
"""A group of linked nodes without any source."""
ADVERSE_SLOPE = "adverse_slope"
"""A gravity link whose invert rises from its from-node to its to-node; ``value`` the rise."""

ISSUE_COLUMNS = ("kind", "node", "link", "other", "x", "y", "value")


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltNetwork:
    """A network as built, with what the builder had to repair or guess (``issues``).

    The network's links are the input links in input order (geometry lines first, then the
    point links), so arrays aligned with the input stay aligned with ``network.link_ids``.
    Nodes are the given nodes in order, then the nodes the builder added."""

    network: Network
    issues: pd.DataFrame
    added_nodes: np.ndarray  # ids of the nodes the builder created (missing ids, loose ends)
    link_geometry: np.ndarray | None = None  # shapely geometry of every link, where known


@dataclass(frozen=True)
class TopologyReport:
    """What ``check_topology`` found: one row per issue (``ISSUE_COLUMNS``), and the connected
    components (``component`` 0 is the largest; ``n_nodes``, ``n_links``, ``has_source`` where
    sources were given, a representative ``node`` and its ``x``, ``y``)."""

    issues: pd.DataFrame
    components: pd.DataFrame

    def of(self, kind: str) -> pd.DataFrame:
        """The issues of one kind."""
        return self.issues[self.issues["kind"] == kind].reset_index(drop=True)

    def counts(self) -> dict[str, int]:
        """Number of issues per kind (kinds without issues left out)."""
        return {str(k): int(v) for k, v in self.issues["kind"].value_counts(sort=False).items()}

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not len(self.issues)

    def to_geojson(self) -> dict[str, Any]:
        """The issues as a GeoJSON FeatureCollection of points (unplaced ones without geometry)."""
        return issues_geojson(self.issues)


def issues_geojson(issues: pd.DataFrame) -> dict[str, Any]:
    """Issue rows (``ISSUE_COLUMNS``) as a GeoJSON FeatureCollection of points."""
    points = shapely.points(issues[["x", "y"]].to_numpy(float)) if len(issues) else []
    props = {c: issues[c].to_numpy(object) for c in ISSUE_COLUMNS if c not in ("x", "y")}
    return feature_collection(points, props)


def feature_collection(geometries: Sequence | np.ndarray, properties: dict[str, Any]) -> dict:
    """A GeoJSON FeatureCollection from shapely geometries (None or empty: no geometry) and
    property columns aligned with them. NaN and None properties become null."""
    geometries = np.asarray(geometries, dtype=object)
    texts = shapely.to_geojson(geometries) if len(geometries) else []
    empty = shapely.is_missing(geometries) | shapely.is_empty(geometries)
    columns = {k: np.asarray(v, dtype=object) for k, v in properties.items()}
    features = []
    for i in range(len(geometries)):
        props = {k: _plain(v[i]) for k, v in columns.items()}
        geometry = None if empty[i] else json.loads(texts[i])
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {"type": "FeatureCollection", "features": features}


def _plain(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- building from ids ---------------------------------------------------------------------


def network_from_ids(
    node_ids: Iterable,
    link_ids: Iterable,
    from_node: Iterable,
    to_node: Iterable,
    *,
    node_xy: np.ndarray | None = None,
    link_length: np.ndarray | None = None,
    link_end_xy: np.ndarray | None = None,
) -> BuiltNetwork:
    """A network from explicit end-node ids (EPANET / SWMM style), tolerant of links that name
    nodes which are not there: such a node is added (placed at the link's end where
    ``link_end_xy`` ``(m, 2, 2)`` is given, else unplaced) and listed as ``MISSING_NODE``. An
    empty end id (None, NaN, "") gets a node of its own, named after the link and end.
    Duplicate node or link ids are refused (``InvalidInput``)."""
    nodes = np.asarray(list(node_ids), dtype=object)
    links = np.asarray(list(link_ids), dtype=object)
    ends = np.stack(
        [np.asarray(list(from_node), dtype=object), np.asarray(list(to_node), dtype=object)],
        axis=1,
    ).reshape(-1, 2)
    if len(ends) != len(links):
        raise InvalidInput(f"{len(links)} link ids but {len(ends)} from/to node pairs")
    _require_unique(nodes, "node")
    _require_unique(links, "link")
    xy = None if node_xy is None else np.asarray(node_xy, dtype=float).reshape(-1, 2)
    end_xy = None if link_end_xy is None else np.asarray(link_end_xy, dtype=float)
    index, added, added_xy, issues = _resolve_ids(nodes, links, ends, end_xy)
    all_nodes = np.concatenate([nodes, np.asarray(added, dtype=object)])
    if xy is not None or end_xy is not None:
        base = xy if xy is not None else np.full((len(nodes), 2), np.nan)
        xy = np.concatenate([base, np.asarray(added_xy, dtype=float).reshape(-1, 2)])
    net = Network(all_nodes, links, index, xy, link_length)
    return BuiltNetwork(net, _issue_frame(issues), all_nodes[len(nodes) :])


def _resolve_ids(
    nodes: np.ndarray, links: np.ndarray, ends: np.ndarray, end_xy: np.ndarray | None
) -> tuple[np.ndarray, list, list, list[dict]]:
    """End ids → node indices, adding a node for every id that is not there."""
    lookup = pd.Index(nodes)
    flat = ends.ravel()
    at = lookup.get_indexer(flat) if len(flat) else np.empty(0, dtype=np.int64)
    added: list = []
    added_xy: list = []
    issues: list[dict] = []
    new_of: dict = {}
    for j in np.flatnonzero(at < 0):
        k, side = divmod(int(j), 2)
        name = flat[j]
        blank = name is None or (isinstance(name, float) and np.isnan(name)) or name == ""
        if blank:
            name = f"{links[k]}:{'from' if side == 0 else 'to'}"
        if name not in new_of:
            if name in lookup:  # a blank end named like an existing node: keep it apart
                raise InvalidInput(
                    f"link {links[k]} has no {'from' if side == 0 else 'to'} node, and the "
                    f"name {name!r} given to it is taken",
                    feature=str(links[k]),
                    hint="give the link its end node id",
                )
            new_of[name] = len(nodes) + len(added)
            added.append(name)
            pos = end_xy[k, side] if end_xy is not None else (np.nan, np.nan)
            added_xy.append(pos)
            issues.append(
                _issue(MISSING_NODE, node=name, link=links[k], xy=pos, value=np.nan)
            )
        at[j] = new_of[name]
    return at.reshape(-1, 2), added, added_xy, issues


# -- building from geometry ----------------------------------------------------------------


@dataclass(frozen=True)
class LinkEnds:
    """Links given by their end-node ids rather than by a line: pumps and valves that a GIS
    layer draws as points (with from/to node attributes). ``geometry`` (points, optional) is
    where they are drawn; ``length`` (optional) their length, NaN by default."""

    link_ids: Sequence
    from_node: Sequence
    to_node: Sequence
    geometry: np.ndarray | None = None
    length: np.ndarray | None = None


def network_from_geometry(
    lines: np.ndarray | Sequence,
    link_ids: Iterable,
    *,
    node_points: np.ndarray | Sequence | None = None,
    node_ids: Iterable | None = None,
    tolerance: float = 0.01,
    point_links: LinkEnds | None = None,
    sources: Iterable | None = None,
    new_node_prefix: str = "~node-",
) -> BuiltNetwork:
    """A network from GIS geometry: link lines and, optionally, node points with ids.

    Every line end is snapped to the nearest node point within ``tolerance``; ends with no node
    point that near are merged with each other where they lie within ``tolerance`` (chains
    included) and become new nodes named ``new_node_prefix`` + a number. ``point_links`` adds
    links given by end-node ids (pumps and valves drawn as points). Link lengths are the line
    lengths (point links: ``LinkEnds.length`` or NaN).

    Coincident node points (a pump's inlet and outlet nodes drawn at one place) cannot be told
    apart by geometry. The line ends at such a place are dealt out over its nodes, one each in
    turn, and listed as ``AMBIGUOUS_END``: nodes in the order inlet (from-node of a point link
    joining them), outlet, others; line ends in the order of the distance from a source
    (``sources``, node ids, e.g. the reservoirs) to the line's far end over the rest of the
    network, then lines drawn towards the place before lines drawn away from it. With a source
    on the suction side this puts the suction line on the pump's inlet.

    ``InvalidInput`` for a line that is missing, empty, or made of disjoint parts, and for
    duplicate ids."""
    links = np.asarray(list(link_ids), dtype=object)
    lines = _as_lines(lines, links)
    m = len(lines)
    if len(links) != m:
        raise InvalidInput(f"{len(links)} link ids for {m} lines")
    if node_points is None:
        nodes = np.empty(0, dtype=object)
        node_xy = np.empty((0, 2))
    else:
        if node_ids is None:
            raise InvalidInput("node points were given without their ids", hint="pass node_ids")
        nodes = np.asarray(list(node_ids), dtype=object)
        node_xy = _as_xy(node_points)
        if len(node_xy) != len(nodes):
            raise InvalidInput(f"{len(nodes)} node ids but {len(node_xy)} node points")
    pl = point_links or LinkEnds([], [], [])
    pl_ids = np.asarray(list(pl.link_ids), dtype=object)
    _require_unique(nodes, "node")
    _require_unique(np.concatenate([links, pl_ids]), "link")
    if not tolerance >= 0:
        raise InvalidInput(f"snapping tolerance {tolerance} must be ≥ 0")

    # line ends: rows 2k (start of line k) and 2k + 1 (end of line k)
    coords = shapely.get_coordinates(lines)
    n_points = shapely.get_num_points(lines)
    stop = np.cumsum(n_points)
    ends = np.empty((2 * m, 2))
    ends[0::2] = coords[stop - n_points]
    ends[1::2] = coords[stop - 1]
    end_node = np.full(2 * m, -1, dtype=np.int64)
    near_d = np.full(2 * m, np.inf)
    ambiguous = np.zeros(2 * m, dtype=bool)
    bound = max(tolerance * (1 + 1e-9), 1e-100)  # kd-tree searches: a hair wider, then exact
    tie = 1e-9 * max(tolerance, 1e-9)  # nodes this much apart are one place
    tree = cKDTree(node_xy) if len(nodes) else None
    if tree is not None and m:
        k = min(2, len(nodes))
        d, i = tree.query(ends, k=k, distance_upper_bound=bound)
        d, i = d.reshape(2 * m, k), i.reshape(2 * m, k)
        hit = d[:, 0] <= tolerance
        end_node[hit] = i[hit, 0]
        near_d[hit] = d[hit, 0]
        if k == 2:
            second = np.isfinite(d[:, 1])
            ambiguous[second] = hit[second] & (d[second, 1] - d[second, 0] <= tie)

    # point links: end ids → nodes, adding the missing ones
    pl_ends = np.stack(
        [np.asarray(list(pl.from_node), dtype=object), np.asarray(list(pl.to_node), dtype=object)],
        axis=1,
    ).reshape(-1, 2)
    pl_xy = None
    if pl.geometry is not None and len(pl_ids):
        at = _as_xy(pl.geometry)
        pl_xy = np.stack([at, at], axis=1)
    pl_index, added, added_xy, issues = _resolve_ids(nodes, pl_ids, pl_ends, pl_xy)
    n_known = len(nodes) + len(added)

    # unmatched line ends: merge those within the tolerance of each other into new nodes
    loose = np.flatnonzero(end_node < 0)
    new_xy = np.empty((0, 2))
    new_ids: list[str] = []
    if len(loose):
        pairs = cKDTree(ends[loose]).query_pairs(bound, output_type="ndarray")
        pairs = pairs[np.hypot(*(ends[loose][pairs[:, 0]] - ends[loose][pairs[:, 1]]).T)
                      <= tolerance] if len(pairs) else pairs
        graph = sparse.coo_matrix(
            (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(loose), len(loose))
        )
        n_new, label = connected_components(graph, directed=False)
        count = np.bincount(label, minlength=n_new)
        new_xy = np.stack(
            [np.bincount(label, ends[loose, c], minlength=n_new) / count for c in (0, 1)], axis=1
        )
        taken = set(nodes.tolist()) | set(added)
        new_ids = [f"{new_node_prefix}{j + 1}" for j in range(n_new)]
        clash = next((x for x in new_ids if x in taken), None)
        if clash is not None:
            raise InvalidInput(
                f"the name {clash!r} for a new node is already a node id",
                hint="pass another new_node_prefix",
            )
        end_node[loose] = n_known + label

    all_nodes = np.concatenate(
        [nodes, np.asarray(added, dtype=object), np.asarray(new_ids, dtype=object)]
    )
    all_xy = np.concatenate([node_xy, np.asarray(added_xy, float).reshape(-1, 2), new_xy])
    line_ends = end_node.reshape(m, 2)
    if ambiguous.any():
        issues += _deal_ambiguous(
            tree, ends, ambiguous, near_d + tie, line_ends, lines, pl_index, all_nodes, links,
            sources,
        )
    length = np.concatenate(
        [
            shapely.length(lines),
            np.full(len(pl_ids), np.nan)
            if pl.length is None
            else np.asarray(pl.length, dtype=float),
        ]
    )
    net = Network(
        all_nodes,
        np.concatenate([links, pl_ids]),
        np.concatenate([line_ends, pl_index]).astype(np.int64),
        all_xy,
        length,
    )
    geometry = np.concatenate(
        [lines, np.asarray(pl.geometry if pl.geometry is not None else [None] * len(pl_ids),
                           dtype=object)]
    )
    return BuiltNetwork(net, _issue_frame(issues), all_nodes[len(nodes) :], geometry)


def _deal_ambiguous(
    tree: cKDTree,
    ends: np.ndarray,
    ambiguous: np.ndarray,
    radius: np.ndarray,
    line_ends: np.ndarray,
    lines: np.ndarray,
    pl_index: np.ndarray,
    all_nodes: np.ndarray,
    links: np.ndarray,
    sources: Iterable | None,
) -> list[dict]:
    """Deal the line ends at places with coincident node points out over those nodes (see
    ``network_from_geometry``); ``line_ends`` is updated in place."""
    amb = np.flatnonzero(ambiguous)
    lengths = shapely.length(lines)
    # distance from a source to every node over the lines whose ends are all certain, and the
    # point links
    far_dist = np.full(len(amb), np.inf)
    if sources is not None:
        names = np.asarray(list(sources), dtype=object)
        src = pd.Index(all_nodes).get_indexer(names)
        if (src < 0).any():
            raise NotFound(f"source {names[src < 0][0]!r} is not a node of the network")
        if len(src):
            certain = ~ambiguous.reshape(-1, 2).any(axis=1)
            ends_now = np.r_[line_ends, pl_index]  # ambiguous ends at their nearest node
            draft = Network(all_nodes, np.arange(len(ends_now)), ends_now)
            usable = np.r_[certain, np.ones(len(pl_index), dtype=bool)]
            w = np.r_[lengths, np.zeros(len(pl_index))]
            dist = dijkstra(
                draft.adjacency(usable, weights=w), directed=False, indices=src, min_only=True
            )
            far = amb ^ 1  # the other end of the same line
            far_dist = np.where(ambiguous[far], np.inf, dist[line_ends.ravel()[far]])
            far_dist = far_dist + lengths[amb // 2]
    inlet = {int(a) for a, b in pl_index}
    outlet = {int(b) for a, b in pl_index}
    candidates = tree.query_ball_point(ends[amb], r=radius[amb])
    groups: dict[tuple, list[int]] = {}
    for j, cand in enumerate(candidates):
        groups.setdefault(tuple(sorted(cand)), []).append(j)
    issues = []
    flat = line_ends.reshape(-1)
    for cand, members in groups.items():
        in_group = set(cand)
        rank = {
            c: (0 if c in inlet and _partner_in(pl_index, c, 0, in_group) else
                1 if c in outlet and _partner_in(pl_index, c, 1, in_group) else 2, c)
            for c in cand
        }
        order_nodes = sorted(cand, key=rank.__getitem__)
        # lines drawn towards the place (their last point) before lines drawn away from it
        members = sorted(members, key=lambda j: (far_dist[j], 1 - amb[j] % 2, amb[j]))
        for turn, j in enumerate(members):
            node = order_nodes[turn % len(order_nodes)]
            flat[amb[j]] = node
            others = ", ".join(str(all_nodes[c]) for c in order_nodes if c != node)
            issues.append(
                _issue(
                    AMBIGUOUS_END,
                    node=all_nodes[node],
                    link=links[amb[j] // 2],
                    other=others,
                    xy=ends[amb[j]],
                    value=np.hypot(*(ends[amb[j]] - tree.data[node])),
                )
            )
    return issues


def _partner_in(pl_index: np.ndarray, node: int, side: int, group: set[int]) -> bool:
    rows = pl_index[pl_index[:, side] == node]
    return bool(np.isin(rows[:, 1 - side], list(group)).any())


def _as_lines(lines: np.ndarray | Sequence, link_ids: np.ndarray) -> np.ndarray:
    """Line geometries as a shapely array; single-part MultiLineStrings are merged."""
    geoms = np.asarray(lines, dtype=object)
    kind = shapely.get_type_id(geoms)
    multi = kind == shapely.GeometryType.MULTILINESTRING
    if multi.any():
        geoms = geoms.copy()
        geoms[multi] = shapely.line_merge(geoms[multi], directed=True)
        kind = shapely.get_type_id(geoms)
    line_kinds = [shapely.GeometryType.LINESTRING, shapely.GeometryType.LINEARRING]
    bad = ~np.isin(kind, line_kinds) | shapely.is_empty(geoms)
    bad[~bad] = shapely.get_num_points(geoms[~bad]) < 2
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        if geoms[k] is None:
            what = "no geometry"
        elif kind[k] == shapely.GeometryType.MULTILINESTRING:
            what = "a line of disjoint parts"
        else:
            what = f"a {geoms[k].geom_type} geometry with {shapely.get_num_points(geoms[k])} points"
        raise InvalidInput(
            f"link has {what}; {int(bad.sum())} link(s) in all",
            feature=str(link_ids[k]) if k < len(link_ids) else None,
            hint="every link needs a single connected line of at least two points",
        )
    return geoms


def _as_xy(points: np.ndarray | Sequence) -> np.ndarray:
    """(n, 2) coordinates from shapely points or from an (n, 2) array; NaN where missing."""
    arr = np.asarray(points)
    if arr.dtype == object:
        return np.stack([shapely.get_x(arr), shapely.get_y(arr)], axis=1).astype(float)
    return arr.astype(float).reshape(-1, 2)


def _require_unique(ids: np.ndarray, what: str) -> None:
    index = pd.Index(ids)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise InvalidInput(
            f"{what} id {dup!r} appears more than once", hint=f"{what} ids must be unique"
        )


# -- checking ------------------------------------------------------------------------------


def check_topology(
    net: Network,
    *,
    link_geometry: np.ndarray | None = None,
    terminals: np.ndarray | Iterable | None = None,
    sources: np.ndarray | Iterable | None = None,
    near_miss: float = 1.0,
    tolerance: float = 1e-3,
    invert_from: np.ndarray | None = None,
    invert_to: np.ndarray | None = None,
    loose_ends_only: bool = False,
) -> TopologyReport:
    """Check a network's topology; every finding with ids and a location (``ISSUE_COLUMNS``).

    - ``DANGLING_END``: nodes with one link, except ``terminals`` (node ids or a boolean mask:
      sources, tanks, outfalls, hydrants, service connections ... whatever may end a line);
    - ``NEAR_MISS`` / ``NEAR_MISS_LINK``: a node within ``near_miss`` of another node, or of
      another link's interior, that it is not joined to by a link (for the interior: and not
      within ``near_miss`` of that link's ends, which the node check covers); with
      ``loose_ends_only`` only for loose ends (isolated nodes and dangling ends, the
      undershoots and overshoots of GIS editing), not for nodes where lines meet or end on
      purpose, which lines of other circuits may pass close by;
    - ``DUPLICATE_LINK`` / ``PARALLEL_LINK``: links sharing both end nodes, with the same line
      (Hausdorff distance ≤ ``tolerance``, or no geometry known) or a different one;
    - ``ZERO_LENGTH``: lines no longer than ``tolerance`` (lines of ``link_geometry``, else
      ``net.link_length`` where known: links without a length, such as pumps, are skipped);
      ``SELF_LOOP``: longer links from a node to itself;
    - ``ISOLATED_NODE``, ``DISCONNECTED`` (every linked component but the largest) and, where
      ``sources`` (ids or mask) are given, ``NO_SOURCE``;
    - ``ADVERSE_SLOPE``: links with ``invert_to > invert_from`` (gravity links; NaN elsewhere).

    Vectorised: about 2 s for a million links with geometry (the spatial checks dominate)."""
    n, m = net.n_nodes, net.n_links
    ends = net.link_nodes
    xy = net.node_xy if net.node_xy is not None else np.full((n, 2), np.nan)
    geom = None if link_geometry is None else np.asarray(link_geometry, dtype=object)
    if geom is not None and len(geom) != m:
        raise InvalidInput(f"{len(geom)} link geometries for {m} links")
    is_line = (
        np.isin(
            shapely.get_type_id(geom),
            [shapely.GeometryType.LINESTRING, shapely.GeometryType.LINEARRING],
        )
        if geom is not None
        else np.zeros(m, dtype=bool)
    )

    def mid(links: np.ndarray) -> np.ndarray:
        return _link_midpoints(xy, ends, geom, is_line, links)

    frames: list[pd.DataFrame] = []
    degree = net.degree

    terminal = net.node_mask(terminals)
    dangling = np.flatnonzero((degree == 1) & ~terminal)
    indptr, inc = net.incidence
    frames.append(
        _frame(DANGLING_END, net, xy, nodes=dangling, links=inc[indptr[dangling]])
    )
    loose = (degree <= 1) & ~terminal if loose_ends_only else np.ones(n, dtype=bool)
    frames += _near_misses(net, xy, geom, is_line, near_miss, loose)
    frames += _duplicates(net, mid, geom, tolerance)

    # zero length and self-loops
    length = np.full(m, np.nan)
    if geom is not None:
        length[is_line] = shapely.length(geom[is_line])
    if net.link_length is not None:
        known = np.isnan(length) & (geom is None or ~is_line)
        length = np.where(known, np.asarray(net.link_length, dtype=float), length)
    zero = np.flatnonzero(length <= tolerance)
    frames.append(_frame(ZERO_LENGTH, net, mid, links=zero, value=length[zero]))
    loop = np.flatnonzero((ends[:, 0] == ends[:, 1]) & ~(length <= tolerance))
    frames.append(_frame(SELF_LOOP, net, mid, links=loop, value=length[loop]))

    isolated = np.flatnonzero(degree == 0)
    frames.append(_frame(ISOLATED_NODE, net, xy, nodes=isolated))
    source = net.node_mask(sources) if sources is not None else None
    components = _components(net, xy, source)
    linked = components[components["n_links"] > 0]
    others = linked[linked["component"] > 0]
    rep = net.node_index(others["node"]) if len(others) else np.empty(0, dtype=np.int64)
    frames.append(_frame(DISCONNECTED, net, xy, nodes=rep, value=others["n_nodes"].to_numpy()))
    if source is not None:
        dry = linked[~linked["has_source"].astype(bool)]
        rep = net.node_index(dry["node"]) if len(dry) else np.empty(0, dtype=np.int64)
        frames.append(_frame(NO_SOURCE, net, xy, nodes=rep, value=dry["n_nodes"].to_numpy()))

    if invert_from is not None and invert_to is not None:
        rise = np.asarray(invert_to, dtype=float) - np.asarray(invert_from, dtype=float)
        adverse = np.flatnonzero(rise > 0)
        frames.append(_frame(ADVERSE_SLOPE, net, mid, links=adverse, value=rise[adverse]))
    elif (invert_from is None) != (invert_to is None):
        raise InvalidInput("invert_from and invert_to go together", hint="give both or neither")

    issues = pd.concat([f for f in frames if len(f)] or [_issue_frame([])], ignore_index=True)
    return TopologyReport(issues, components)


def _near_misses(
    net: Network,
    xy: np.ndarray,
    geom: np.ndarray | None,
    is_line: np.ndarray,
    r: float,
    candidate: np.ndarray,
) -> list[pd.DataFrame]:
    """Near-misses of the ``candidate`` nodes (mask) to other nodes and to link interiors."""
    n, ends = net.n_nodes, net.link_nodes
    placed = np.flatnonzero(np.isfinite(xy).all(axis=1))
    if not len(placed) or r <= 0 or not candidate.any():
        return []
    # node ↔ node
    pairs = cKDTree(xy[placed]).query_pairs(r, output_type="ndarray")
    pairs = placed[pairs] if len(pairs) else np.empty((0, 2), dtype=np.int64)
    pairs = pairs[~_joined(ends, pairs, n) & candidate[pairs].any(axis=1)]
    # name the lower-degree node (the likely loose end) first
    swap = net.degree[pairs[:, 0]] > net.degree[pairs[:, 1]]
    pairs[swap] = pairs[swap][:, ::-1]
    dist = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    pairs, dist = pairs[order], dist[order]
    out = [_frame(NEAR_MISS, net, xy, nodes=pairs[:, 0], other=net.node_ids[pairs[:, 1]],
                  value=dist)]
    # node ↔ link interior
    if geom is None:
        ok = np.isfinite(xy[ends]).all(axis=(1, 2))
        shapes = np.full(len(ends), None, dtype=object)
        shapes[ok] = shapely.linestrings(xy[ends[ok]])
    else:
        shapes = np.where(is_line, geom, None)
    tree = shapely.STRtree(shapes)
    placed = placed[candidate[placed]]
    points = shapely.points(xy[placed])
    at, k = tree.query(points, predicate="dwithin", distance=r)
    node = placed[at]
    keep = (ends[k, 0] != node) & (ends[k, 1] != node)
    node, k = node[keep], k[keep]
    far_from_ends = (np.hypot(*(xy[node] - xy[ends[k, 0]]).T) > r) & (
        np.hypot(*(xy[node] - xy[ends[k, 1]]).T) > r
    )
    node, k = node[far_from_ends], k[far_from_ends]
    dist = shapely.distance(shapely.points(xy[node]), shapes[k]) if len(k) else np.empty(0)
    order = np.lexsort((k, node))
    out.append(
        _frame(NEAR_MISS_LINK, net, xy, nodes=node[order], other=net.link_ids[k[order]],
               value=dist[order])
    )
    return out


def _joined(ends: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """Whether each node pair is joined by a link (looking only at the links at those nodes)."""
    if not len(pairs):
        return np.zeros(0, dtype=bool)
    lo, hi = np.minimum(ends[:, 0], ends[:, 1]), np.maximum(ends[:, 0], ends[:, 1])
    near = np.isin(lo, pairs.min(axis=1), kind="table")
    link_key = lo[near] * n + hi[near]
    return np.isin(pairs.min(axis=1) * n + pairs.max(axis=1), link_key)


def _duplicates(
    net: Network, mid: Callable[[np.ndarray], np.ndarray], geom: np.ndarray | None, tol: float
) -> list[pd.DataFrame]:
    ends = net.link_nodes
    key = np.sort(ends, axis=1) @ np.array([net.n_nodes, 1], dtype=np.int64)
    order = np.argsort(key, kind="stable")
    sk = key[order]
    repeat = np.flatnonzero(sk[1:] == sk[:-1]) + 1
    if not len(repeat):
        return []
    # the first link of each group of same-ended links
    start = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    group_first = order[start[np.searchsorted(start, repeat, side="right") - 1]]
    link = order[repeat]
    same = np.ones(len(link), dtype=bool)
    if geom is not None:
        a, b = geom[link], geom[group_first]
        both = ~shapely.is_missing(a) & ~shapely.is_missing(b)
        same[both] = shapely.hausdorff_distance(a[both], b[both]) <= tol
    other = net.link_ids[group_first]
    return [
        _frame(DUPLICATE_LINK, net, mid, links=link[same], other=other[same]),
        _frame(PARALLEL_LINK, net, mid, links=link[~same], other=other[~same]),
    ]


def _components(net: Network, xy: np.ndarray, source: np.ndarray | None) -> pd.DataFrame:
    label = component_labels(net)
    count = int(label.max()) + 1 if len(label) else 0
    frame = {
        "component": np.arange(count),
        "n_nodes": np.bincount(label, minlength=count),
        "n_links": np.bincount(label[net.link_nodes[:, 0]], minlength=count),
    }
    if source is not None:
        frame["has_source"] = np.bincount(label, source.astype(float), minlength=count) > 0
    _, rep = np.unique(label, return_index=True)
    frame["node"] = net.node_ids[rep]
    frame["x"], frame["y"] = xy[rep, 0], xy[rep, 1]
    return pd.DataFrame(frame)


def component_labels(net: Network) -> np.ndarray:
    """Component number of every node over all links: 0 for the largest (most nodes, then most
    links, then lowest first node), 1 for the next ..., as in ``TopologyReport.components``."""
    count, label = net.components()
    n_nodes = np.bincount(label, minlength=count)
    n_links = np.bincount(label[net.link_nodes[:, 0]], minlength=count)
    _, first = np.unique(label, return_index=True)
    rank = np.lexsort((first, -n_links, -n_nodes))
    new = np.empty(count, dtype=np.int64)
    new[rank] = np.arange(count)
    return new[label]


def _link_midpoints(
    xy: np.ndarray, ends: np.ndarray, geom: np.ndarray | None, is_line: np.ndarray,
    links: np.ndarray,
) -> np.ndarray:
    """Where to show link issues: the middle of the line, the point of a point link, else the
    middle between the end nodes."""
    e = ends[links]
    mid = (xy[e[:, 0]] + xy[e[:, 1]]) / 2 if len(e) else np.empty((0, 2))
    if geom is not None and len(e):
        g, line = geom[links], is_line[links]
        if line.any():
            mid[line] = _as_xy(shapely.line_interpolate_point(g[line], 0.5, normalized=True))
        point = shapely.get_type_id(g) == shapely.GeometryType.POINT
        if point.any():
            mid[point] = _as_xy(g[point])
    return mid


def _issue(kind: str, *, node=None, link=None, other=None, xy=(np.nan, np.nan), value=np.nan):
    return {
        "kind": kind,
        "node": node,
        "link": link,
        "other": other,
        "x": float(xy[0]),
        "y": float(xy[1]),
        "value": float(value),
    }


def _issue_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ISSUE_COLUMNS))
    return frame.astype(
        {"kind": object, "node": object, "link": object, "other": object, "x": float,
         "y": float, "value": float}
    )


def _frame(
    kind: str,
    net: Network,
    where: np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    nodes: np.ndarray | None = None,
    links: np.ndarray | None = None,
    other: np.ndarray | None = None,
    value: np.ndarray | None = None,
) -> pd.DataFrame:
    """Issue rows of one kind, located at ``where[nodes]`` or at ``where(links)``."""
    at = np.asarray(nodes if nodes is not None else links, dtype=np.int64)
    k = len(at)
    place = where(at) if callable(where) else where[at] if k else np.empty((0, 2))
    none = np.full(k, None, dtype=object)
    return pd.DataFrame(
        {
            "kind": np.full(k, kind, dtype=object),
            "node": net.node_ids[at] if nodes is not None else none,
            "link": net.link_ids[np.asarray(links, dtype=np.int64)] if links is not None else none,
            "other": np.asarray(other, dtype=object) if other is not None else none,
            "x": place[:, 0],
            "y": place[:, 1],
            "value": np.asarray(value, dtype=float) if value is not None else np.full(k, np.nan),
        }
    )

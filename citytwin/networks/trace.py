"""Network traces: connected, upstream and downstream, shortest paths, feeding sources, loops.

Every trace takes node / link *ids* (a single id or several) and answers with a ``Trace``: the
graph indices and ids of the nodes and links it reached, and its GeoJSON on request. Closed
links (valves shut, pumps off) are given as link ids or as a boolean mask over the links and
are never passed.

Upstream and downstream need a flow direction per link, an ``int8`` array aligned with the links:
``FORWARD`` (from-node → to-node), ``BACKWARD``, ``BOTH`` (either way) or ``NONE`` (no flow).
Three ways to get one:

- ``gravity_direction``: gravity drainage, from the invert levels at the two ends;
- ``flow_direction``: from a hydraulic result's signed link flows;
- ``source_direction``: pressurised networks, from the sources. A link is oriented away from
  the end nearer to a source, nearness being the shortest-path length from any source over the
  open links. In a tree this is exact (water can only come from the source side); in a looped
  network it is the usual first guess, not a hydraulic result: use ``flow_direction`` when a
  simulation is at hand. Links whose ends are equally near (both unreachable included) are
  ``BOTH``; closed links ``NONE``.

Traversals run in a compiled breadth-first search over the network's CSR neighbour lists
(``Network.neighbours``, built once per network), so a trace costs time in proportion to what
it reaches plus a few vector operations over the links; paths use ``scipy.sparse.csgraph``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numba
import numpy as np
import shapely
from scipy import sparse
from scipy.sparse.csgraph import dijkstra

from citytwin.errors import InvalidInput, NotFound
from citytwin.networks.graph import Network
from citytwin.networks.kernels import bridges as _bridges
from citytwin.networks.kernels import csr_neighbours, lowlink
from citytwin.networks.topology import feature_collection

FORWARD = np.int8(1)
"""Flow from the link's from-node to its to-node."""
BACKWARD = np.int8(-1)
"""Flow from the link's to-node to its from-node."""
BOTH = np.int8(2)
"""Either way (unknown, or equally near a source): traces pass it in both directions."""
NONE = np.int8(0)
"""No flow: traces do not pass it."""


@dataclass(frozen=True, eq=False)
class Trace:
    """What a trace reached: graph indices of its nodes and links (``nodes``, ``links``; in
    the order reached, starts first) and their ids (``node_ids``, ``link_ids``, made on first
    use). For a path or a loop, nodes and links are in order along it and ``length`` is its
    length."""

    network: Network
    nodes: np.ndarray
    links: np.ndarray
    length: float = float("nan")

    @cached_property
    def node_ids(self) -> np.ndarray:
        """Ids of the nodes reached."""
        return self.network.node_ids[self.nodes]

    @cached_property
    def link_ids(self) -> np.ndarray:
        """Ids of the links reached."""
        return self.network.link_ids[self.links]

    def to_geojson(
        self,
        *,
        node_geometry: np.ndarray | None = None,
        link_geometry: np.ndarray | None = None,
        properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The trace as a GeoJSON FeatureCollection: its links (lines from ``link_geometry``,
        else straight between the end nodes) then its nodes (points from ``node_geometry``,
        else ``network.node_xy``), each with ``id`` and ``feature`` ("link" / "node")
        properties and, for a path or loop, its position ``seq``; ``properties`` are added to
        every feature. Geometry arrays are aligned with the network's links / nodes; features
        without a position have no geometry."""
        net = self.network
        xy = net.node_xy if net.node_xy is not None else np.full((net.n_nodes, 2), np.nan)
        if link_geometry is not None:
            lines = np.asarray(link_geometry, dtype=object)[self.links]
        else:
            e = xy[net.link_nodes[self.links]]
            lines = np.full(len(e), None, dtype=object)
            ok = np.isfinite(e).all(axis=(1, 2)) if len(e) else np.zeros(0, dtype=bool)
            lines[ok] = shapely.linestrings(e[ok])
        if node_geometry is not None:
            points = np.asarray(node_geometry, dtype=object)[self.nodes]
        else:
            points = np.full(len(self.nodes), None, dtype=object)
            ok = np.isfinite(xy[self.nodes]).all(axis=1)
            points[ok] = shapely.points(xy[self.nodes[ok]])
        n_l, n_n = len(self.links), len(self.nodes)
        props: dict[str, Any] = {
            "feature": np.r_[np.full(n_l, "link", object), np.full(n_n, "node", object)],
            "id": np.r_[self.link_ids, self.node_ids],
        }
        if np.isfinite(self.length):
            props["seq"] = np.r_[np.arange(n_l), np.arange(n_n)]
        for key, value in (properties or {}).items():
            props[key] = np.full(n_l + n_n, value, dtype=object)
        return feature_collection(np.r_[lines, points], props)


@dataclass(frozen=True)
class Loops:
    """The loops of a network over its open links: ``count`` independent loops (links − nodes
    + components), the links that lie on a loop (``on_loop``) and the bridges, whose loss
    splits a component (``bridges``), as link ids."""

    count: int
    on_loop: np.ndarray
    bridges: np.ndarray


# -- directions ----------------------------------------------------------------------------


def gravity_direction(invert_from: np.ndarray, invert_to: np.ndarray) -> np.ndarray:
    """Flow direction of gravity links: ``FORWARD`` where the invert at the from-node is at
    least the invert at the to-node, ``BACKWARD`` where it is lower. Where an invert is unknown
    (NaN: pumps, weirs, links without levels) the link is taken as drawn: ``FORWARD``."""
    a = np.asarray(invert_from, dtype=float)
    b = np.asarray(invert_to, dtype=float)
    return np.where(a < b, BACKWARD, FORWARD).astype(np.int8)


def flow_direction(flow: np.ndarray, *, tolerance: float = 0.0) -> np.ndarray:
    """Flow direction from signed link flows (positive: from-node → to-node, as EPANET and
    SWMM report them); ``NONE`` where ``|flow| <= tolerance`` or the flow is NaN."""
    q = np.asarray(flow, dtype=float)
    out = np.full(q.shape, NONE, dtype=np.int8)
    out[q > tolerance] = FORWARD
    out[q < -tolerance] = BACKWARD
    return out


def source_direction(
    net: Network, sources: Iterable | np.ndarray, *, closed: Iterable | np.ndarray | None = None
) -> np.ndarray:
    """Flow direction of a pressurised network from its sources (node ids or mask): each open
    link points away from its end nearer to a source by shortest-path length over the open
    links (``BOTH`` where the ends are equally near, ``NONE`` where closed; links without a
    length count as ``MIN_LENGTH``). See the module note for what this rule can and cannot
    tell."""
    src = np.flatnonzero(net.node_mask(sources))
    if not len(src):
        raise InvalidInput("no sources given", hint="name the reservoirs, tanks or inlets")
    shut = net.link_mask(closed)
    adj = _length_adjacency(net) if not shut.any() else _open_adjacency(net, ~shut)
    dist = dijkstra(adj, directed=False, indices=src, min_only=True)
    du, dv = dist[net.link_nodes[:, 0]], dist[net.link_nodes[:, 1]]
    out = np.full(net.n_links, BOTH, dtype=np.int8)
    out[du < dv] = FORWARD
    out[du > dv] = BACKWARD
    out[shut] = NONE
    return out


# -- traces --------------------------------------------------------------------------------


def connected(
    net: Network,
    nodes: Iterable | str = (),
    links: Iterable | str = (),
    *,
    closed: Iterable | np.ndarray | None = None,
) -> Trace:
    """Everything connected to the start nodes and links over open links."""
    ok = ~net.link_mask(closed)
    return _walk(net, nodes, links, ok, ok)


def downstream(
    net: Network,
    direction: np.ndarray,
    nodes: Iterable | str = (),
    links: Iterable | str = (),
    *,
    closed: Iterable | np.ndarray | None = None,
) -> Trace:
    """Everything downstream of the start nodes and links: what flows on from them, following
    ``direction`` over open links. A start link counts with its downstream end(s)."""
    fwd, bwd = _passable(net, direction, closed)
    return _walk(net, nodes, links, fwd, bwd)


def upstream(
    net: Network,
    direction: np.ndarray,
    nodes: Iterable | str = (),
    links: Iterable | str = (),
    *,
    closed: Iterable | np.ndarray | None = None,
) -> Trace:
    """Everything upstream of the start nodes and links: where their water comes from,
    against ``direction`` over open links. A start link counts with its upstream end(s)."""
    fwd, bwd = _passable(net, direction, closed)
    return _walk(net, nodes, links, bwd, fwd)


def feeding_sources(
    net: Network,
    node: str,
    sources: Iterable | np.ndarray,
    *,
    closed: Iterable | np.ndarray | None = None,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Ids of the sources that can feed ``node``: those connected to it over open links, or,
    given a ``direction``, those upstream of it."""
    source = net.node_mask(sources)
    if direction is None:
        reached = connected(net, node, closed=closed)
    else:
        reached = upstream(net, direction, node, closed=closed)
    found = reached.nodes[source[reached.nodes]]
    return net.node_ids[np.sort(found)]


def shortest_path(
    net: Network,
    start: str,
    end: str,
    *,
    closed: Iterable | np.ndarray | None = None,
) -> Trace:
    """The shortest path by length (``Network.link_length``; links without a length count as
    ``MIN_LENGTH``, networks without lengths use the distance between the end nodes) from
    ``start`` to ``end`` over open links, nodes and links in order; its ``length`` is the sum
    of the link lengths. ``NotFound`` where no open path joins them."""
    a, b = (int(i) for i in net.node_index([start, end]))
    shut = net.link_mask(closed)
    adj = _length_adjacency(net) if not shut.any() else _open_adjacency(net, ~shut)
    dist, pred = dijkstra(adj, directed=False, indices=a, return_predecessors=True)
    if not np.isfinite(dist[b]):
        raise NotFound(f"no open path from node {start} to node {end}")
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    path_nodes = np.asarray(path[::-1], dtype=np.int64)
    path_links = _links_along(net, path_nodes, ~shut)
    return _trace(net, path_nodes, path_links, float(_weights(net)[path_links].sum()))


def loops(net: Network, *, closed: Iterable | np.ndarray | None = None) -> Loops:
    """Independent loop count, links on a loop and bridges, over the open links."""
    ok = ~net.link_mask(closed)
    keep = np.flatnonzero(ok)
    n = net.n_nodes
    if ok.all():
        indptr, nbr_node, nbr_link = net.neighbours
    else:
        indptr, nbr_node, sub = csr_neighbours(net.link_nodes[keep], n)
        nbr_link = keep[sub]
    _, parent, parent_link, disc, low = lowlink(indptr, nbr_node, nbr_link, n)
    count = len(keep) - n + int((parent < 0).sum())  # a DFS tree per component
    bridge = _bridges(parent, parent_link, disc, low)
    on = ok.copy()
    on[bridge] = False
    return Loops(int(count), net.link_ids[np.flatnonzero(on)], net.link_ids[bridge])


def loop_through(
    net: Network, link: str, *, closed: Iterable | np.ndarray | None = None
) -> Trace | None:
    """The shortest loop (by length) through ``link`` over open links, nodes and links in
    order starting with ``link``; None where the link lies on no loop (a bridge, or closed)."""
    k = int(net.link_index(link)[0])
    ok = ~net.link_mask(closed)
    if not ok[k]:
        return None
    u, v = (int(x) for x in net.link_nodes[k])
    w = _weights(net)
    if u == v:
        return _trace(net, np.array([u, u]), np.array([k]), float(w[k]))
    all_open = bool(ok.all())
    ok[k] = False
    indptr, nbr_node, nbr_link = net.neighbours
    at_u = slice(indptr[u], indptr[u + 1])
    twins = nbr_link[at_u][(nbr_node[at_u] == v) & ok[nbr_link[at_u]]]
    if len(twins):  # a parallel link closes the loop at once
        twin = twins[np.argmin(w[twins])]
        return _trace(net, np.array([u, v, u]), np.array([k, twin]), float(w[k] + w[twin]))
    if all_open:
        adj = _length_adjacency(net).copy()  # the link's entries made impassable
        for a, b in ((u, v), (v, u)):
            row = slice(adj.indptr[a], adj.indptr[a + 1])
            adj.data[row][adj.indices[row] == b] = np.inf
    else:
        adj = _open_adjacency(net, ok)
    dist, pred = dijkstra(adj, directed=False, indices=v, return_predecessors=True)
    if not np.isfinite(dist[u]):
        return None
    path = [u]
    while path[-1] != v:
        path.append(int(pred[path[-1]]))
    # the loop: u → v over the link, then v → ... → u back over the path
    back = np.asarray(path[::-1], dtype=np.int64)
    loop_links = np.r_[k, _links_along(net, back, ok)]
    return _trace(net, np.r_[u, back], loop_links, float(w[loop_links].sum()))


# -- internals -----------------------------------------------------------------------------


def _passable(
    net: Network, direction: np.ndarray, closed: Iterable | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each link may be passed from its from-node to its to-node, and the other way."""
    d = np.asarray(direction)
    if d.shape != (net.n_links,):
        raise InvalidInput(
            f"direction has shape {d.shape} for {net.n_links} links",
            hint="give one direction per link (gravity_direction, flow_direction ...)",
        )
    ok = ~net.link_mask(closed)
    both = d == BOTH
    return ok & ((d == FORWARD) | both), ok & ((d == BACKWARD) | both)


def _walk(
    net: Network,
    nodes: Iterable | str,
    links: Iterable | str,
    ok_from: np.ndarray,
    ok_to: np.ndarray,
) -> Trace:
    """Breadth-first over links passable from their from-node (``ok_from``) or to-node."""
    start = net.node_index(nodes) if _given(nodes) else np.empty(0, dtype=np.int64)
    start_links = net.link_index(links) if _given(links) else np.empty(0, dtype=np.int64)
    ends = net.link_nodes[start_links]
    seeds = np.r_[start, ends[ok_from[start_links], 1], ends[ok_to[start_links], 0]]
    indptr, nbr_node, nbr_link = net.neighbours
    seen = np.zeros(net.n_nodes, dtype=bool)
    link_seen = np.zeros(net.n_links, dtype=bool)
    link_seen[start_links] = True
    reached, passed = _bfs(
        indptr, nbr_node, nbr_link, _at_from(net), seeds.astype(np.int64), ok_from, ok_to,
        seen, link_seen,
    )
    all_links = np.r_[np.unique(start_links), passed]
    return _trace(net, reached, all_links)


@numba.njit(cache=True)
def _bfs(indptr, nbr_node, nbr_link, at_from, seeds, ok_from, ok_to, seen, link_seen):
    """Breadth-first search from ``seeds``; a link ``e`` met at vertex ``v`` (entry ``j``) is
    passed when ``ok_from[e]`` (``v`` is its from-node: ``at_from[j]``) or ``ok_to[e]`` (``v``
    is its to-node). Returns the
    vertices reached (seeds first) and the links passed that were not yet ``link_seen``."""
    queue = np.empty(len(seen), dtype=np.int64)
    passed = np.empty(len(link_seen), dtype=np.int64)
    head = 0
    tail = 0
    n_passed = 0
    for s in seeds:
        if not seen[s]:
            seen[s] = True
            queue[tail] = s
            tail += 1
    while head < tail:
        v = queue[head]
        head += 1
        for j in range(indptr[v], indptr[v + 1]):
            e = nbr_link[j]
            if not (ok_from[e] if at_from[j] else ok_to[e]):
                continue
            if not link_seen[e]:
                link_seen[e] = True
                passed[n_passed] = e
                n_passed += 1
            w = nbr_node[j]
            if not seen[w]:
                seen[w] = True
                queue[tail] = w
                tail += 1
    return queue[:tail].copy(), passed[:n_passed].copy()


def _trace(net: Network, nodes: np.ndarray, links: np.ndarray, length: float = np.nan) -> Trace:
    return Trace(net, np.asarray(nodes, dtype=np.int64), np.asarray(links, dtype=np.int64), length)


def _given(ids: Iterable | str) -> bool:
    if isinstance(ids, str):
        return True
    return len(ids) > 0 if hasattr(ids, "__len__") else True


def _links_along(net: Network, path: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The open link joining each pair of consecutive path nodes (of parallel links, the
    shortest)."""
    indptr, nbr_node, nbr_link = net.neighbours
    w = _weights(net)
    out = np.empty(len(path) - 1, dtype=np.int64)
    for i in range(len(path) - 1):
        a, b = path[i], path[i + 1]
        sl = slice(indptr[a], indptr[a + 1])
        cand = nbr_link[sl][(nbr_node[sl] == b) & ok[nbr_link[sl]]]
        out[i] = cand[np.argmin(w[cand])]
    return out


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(net: Network, key: str, build):
    """A structure derived from ``net`` built once per network (dropped with the network)."""
    store = _CACHE.setdefault(net, {})
    if key not in store:
        store[key] = build()
    return store[key]


def _weights(net: Network) -> np.ndarray:
    """Link lengths for path searches: ``link_length`` (NaN: 0), else the end-node distance,
    else 1 per link."""

    def build() -> np.ndarray:
        if net.link_length is not None:
            w = np.asarray(net.link_length, dtype=float)
            return np.where(np.isfinite(w), w, 0.0)
        if net.node_xy is not None:
            xy = net.node_xy[net.link_nodes]
            d = np.hypot(*(xy[:, 0] - xy[:, 1]).T)
            return np.where(np.isfinite(d), d, 0.0)
        return np.ones(net.n_links)

    return _cached(net, "weights", build)


def _at_from(net: Network) -> np.ndarray:
    """For every entry of ``net.neighbours``: whether its vertex is the link's from-node."""

    def build() -> np.ndarray:
        indptr, _, nbr_link = net.neighbours
        vertex = np.repeat(np.arange(net.n_nodes), np.diff(indptr))
        return net.link_nodes[nbr_link, 0] == vertex

    return _cached(net, "at_from", build)


MIN_LENGTH = 1e-3
"""Length a link without one (pump, valve) counts in path searches: 1 mm, negligible in a path,
but enough to order its ends, so that a pump next to a source points away from it."""


def _search_weights(net: Network) -> np.ndarray:
    return _cached(net, "search", lambda: np.maximum(_weights(net), MIN_LENGTH))


def _length_adjacency(net: Network) -> sparse.csr_matrix:
    return _cached(net, "adjacency", lambda: net.adjacency(weights=_search_weights(net)))


def _open_adjacency(net: Network, ok: np.ndarray) -> sparse.csr_matrix:
    return net.adjacency(ok, weights=_search_weights(net))

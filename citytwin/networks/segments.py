"""Valve segments, burst isolation ("mincut") and the criticality of every segment.

Valves follow the WNTR valve-layer convention: valve ``i`` sits on link ``valve_link[i]`` at its
end ``valve_node[i]`` and, closed, separates that link from that node. A *segment* is what stays
connected when every valve is closed: a set of nodes and links, found as the connected components
of a bipartite graph whose vertices are the nodes and the links, joined at every link end that
carries no valve (``valve_segments``; the same partition as ``wntr.metrics.valve_segments``).

For isolation and criticality the segments are contracted to a *segment graph*: one vertex per
segment plus a super-source joined to every segment holding a source (reservoir, tank), one edge
per valve between the segment of its link and the segment of its node. A depth-first low-link
search rooted at the super-source (``kernels.lowlink``) then tells, for every segment at once,
what its isolation cuts off from all sources: the DFS subtrees of its children ``c`` with
``low[c] >= disc[segment]``. ``IsolationModel`` precomputes all of that once, so that one burst
query costs work proportional to what it affects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from citytwin.errors import InvalidInput, NotFound
from citytwin.networks.graph import Network
from citytwin.networks.kernels import (
    concat_ranges,
    csr_neighbours,
    cut_off,
    lowlink,
    subtree_size,
)

SOURCE = -1
"""``edge_valve`` of a segment-graph edge that joins the super-source (not a valve)."""

_RESERVED = {"n_nodes", "n_links", "length", "cutoff_segments", "n_valves", "volume", "supplied"}
_RESERVED |= {"rank", "segment"}


@dataclass(frozen=True, eq=False)
class Segments:
    """Valve segments of a network: a partition of its nodes and links."""

    node_segment: np.ndarray  # (n,) int64: segment of every node
    link_segment: np.ndarray  # (m,) int64: segment of every link
    n_segments: int
    valve_link: np.ndarray  # (v,) int64: the valves as given
    valve_node: np.ndarray  # (v,) int64
    valve_first: np.ndarray  # (v,) int64: the first valve at the same (link, node): duplicates

    @cached_property
    def valve_sides(self) -> np.ndarray:
        """``(v, 2)``: the segment on the link side and on the node side of every valve (equal
        when the valve separates nothing: both sides are joined some other way)."""
        return np.column_stack(
            [self.link_segment[self.valve_link], self.node_segment[self.valve_node]]
        )

    def sizes(self) -> pd.DataFrame:
        """Number of nodes and links per segment (columns ``n_nodes``, ``n_links``)."""
        k = self.n_segments
        return pd.DataFrame(
            {
                "n_nodes": np.bincount(self.node_segment, minlength=k),
                "n_links": np.bincount(self.link_segment, minlength=k),
            },
            index=pd.RangeIndex(k, name="segment"),
        )


def valve_segments(net: Network, valve_link: Iterable[int], valve_node: Iterable[int]) -> Segments:
    """Valve segments of ``net`` for the valves ``(valve_link[i], valve_node[i])`` (link and
    node indices). Segments are numbered by their lowest node index; segments without nodes
    (a link with valves at both ends) come after. ``InvalidInput`` names a valve whose node is
    not an end of its link; repeated valves count once (``Segments.valve_first``)."""
    vl, vn = _valve_arrays(net, valve_link, valve_node)
    n, m = net.n_nodes, net.n_links
    ends = net.link_nodes
    at_from = ends[vl, 0] == vn
    at_to = ends[vl, 1] == vn
    if len(vl) and not (at_from | at_to).all():
        i = int(np.flatnonzero(~(at_from | at_to))[0])
        raise InvalidInput(
            f"valve {i} is placed at node {net.node_ids[vn[i]]!r}, which is not an end of link "
            f"{net.link_ids[vl[i]]!r} (ends {net.node_ids[ends[vl[i], 0]]!r}, "
            f"{net.node_ids[ends[vl[i], 1]]!r})",
            feature=str(net.link_ids[vl[i]]),
            hint="a valve is given as (link, node) with the node one of the link's two ends",
        )
    open_end = np.ones((m, 2), dtype=bool)
    open_end[vl[at_from], 0] = False
    open_end[vl[at_to], 1] = False
    link, end = np.nonzero(open_end)
    graph = sparse.csr_matrix(
        (np.ones(len(link), dtype=np.int8), (ends[link, end], n + link)), shape=(n + m, n + m)
    )
    k, label = connected_components(graph, directed=False)
    label = label.astype(np.int64)
    key = vl * max(n, 1) + vn
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return Segments(label[:n], label[n:], int(k), vl, vn, first[inverse].astype(np.int64))


@dataclass(frozen=True, eq=False)
class Isolation:
    """What isolating a failed link takes and what it costs."""

    link: int  # the failed link (index)
    valves: np.ndarray  # valves to close (indices into the valve arrays)
    inoperable: np.ndarray  # inoperable valves that had to be bypassed (a larger region closed)
    segments: np.ndarray  # the isolated segments (the failed link's, plus those merged)
    isolated_nodes: np.ndarray  # nodes inside the closed valves
    isolated_links: np.ndarray
    cutoff_segments: np.ndarray  # segments outside the closed valves left without any source
    cutoff_nodes: np.ndarray
    cutoff_links: np.ndarray
    volume: float  # m³ to drain: π/4·d²·L over the isolated links (NaN without diameters)
    impact: dict[str, float]  # every weight summed over the nodes losing supply (both kinds)
    direct: dict[str, float]  # the same over the isolated nodes only
    isolable: bool  # False: no valve bounds the region, a whole connected part is shut
    note: str = ""

    @property
    def lost_nodes(self) -> np.ndarray:
        """Every node that loses supply: isolated or cut off."""
        return np.concatenate([self.isolated_nodes, self.cutoff_nodes])

    @property
    def lost_links(self) -> np.ndarray:
        """Every link that loses supply: isolated or cut off."""
        return np.concatenate([self.isolated_links, self.cutoff_links])


@dataclass(frozen=True, eq=False)
class IsolationModel:
    """Segments, segment graph and low-link search of one network, its valves, sources and
    node weights, prepared once for any number of isolation queries and a criticality table.
    Build with ``IsolationModel.build``.

    Everything per segment is kept in the DFS preorder of the segment graph, where the
    subtree of a segment is a contiguous run: its nodes and links are then one slice, and its
    sums one difference of prefix sums."""

    net: Network
    segments: Segments
    sources: np.ndarray  # (n,) bool
    weight_names: tuple[str, ...]
    segment_volume: np.ndarray  # (k,) π/4·d²·L per segment (NaN without diameters)
    has_length: bool  # whether any link length is known (else length columns are NaN)
    # prefix sums over preorder positions 0..k of n_nodes, n_links, length, 1, *weights
    cum: np.ndarray  # (k + 2, 4 + w)
    # nodes and links grouped by the preorder position of their segment (CSR)
    pre_node_ptr: np.ndarray
    pre_nodes: np.ndarray
    pre_link_ptr: np.ndarray
    pre_links: np.ndarray
    # segment graph: vertex 0 the super-source, vertex s + 1 segment s
    indptr: np.ndarray
    nbr: np.ndarray
    nbr_edge: np.ndarray
    edge_valve: np.ndarray  # (e,) valve of every edge, SOURCE for super-source edges
    order: np.ndarray
    parent: np.ndarray
    disc: np.ndarray
    low: np.ndarray
    size: np.ndarray
    child_ptr: np.ndarray  # DFS children of every vertex in CSR form
    children: np.ndarray

    @classmethod
    def build(
        cls,
        net: Network,
        valve_link: Iterable[int],
        valve_node: Iterable[int],
        sources: np.ndarray,
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        diameter: np.ndarray | None = None,
        length: np.ndarray | None = None,
        segments: Segments | None = None,
        closed: np.ndarray | None = None,
    ) -> IsolationModel:
        """Prepare ``net`` for isolation queries. ``sources``: node mask (or node indices) of
        reservoirs and tanks; ``weights``: name → per-node array to sum over the nodes that lose
        supply (demand, service connections, residents, hospitals ...); ``diameter`` and
        ``length`` (m, per link; length defaults to ``net.link_length``) give pipe length and
        the volume to drain. ``segments`` reuses a ``valve_segments`` result for these valves.
        ``closed``: valve mask of the valves shut in normal operation (DMA boundaries): they
        bound segments but carry no supply, and an isolation never has to close them."""
        if segments is None:
            segments = valve_segments(net, valve_link, valve_node)
        if len(segments.valve_link) == 0:
            raise InvalidInput(
                "the network has no valves, so no part of it can be isolated",
                hint="import the valve layer (or generate one, e.g. N-1 valves at junctions)",
            )
        k = segments.n_segments
        src = _node_mask(net, sources, "sources")
        if not src.any():
            raise InvalidInput(
                "no source node given: supply can't be traced",
                hint="mark the reservoirs and tanks (the nodes water comes from) as sources",
            )
        length = _link_values(net, net.link_length if length is None else length, "length")
        diameter = _link_values(net, diameter, "diameter")
        node_seg, link_seg = segments.node_segment, segments.link_segment
        per_segment = [
            np.bincount(node_seg, minlength=k),
            np.bincount(link_seg, minlength=k),
            np.bincount(link_seg, np.nan_to_num(length), minlength=k),  # unknown: 0
            np.ones(k),
        ]
        names = []
        for name, values in (weights or {}).items():
            if name in _RESERVED or str(name).endswith("_direct"):
                raise InvalidInput(
                    f"a weight can't be called {name!r}: the criticality table has that column",
                    hint="rename the weight",
                )
            names.append(str(name))
            per_segment.append(np.bincount(node_seg, _node_weight(net, name, values), minlength=k))
        volume = np.bincount(link_seg, np.pi / 4 * diameter**2 * length, minlength=k)

        # segment graph: valves between different segments (once per place), source edges
        v = np.flatnonzero(segments.valve_first == np.arange(len(segments.valve_first)))
        if closed is not None:
            shut = np.asarray(closed, dtype=bool)
            if shut.shape != segments.valve_link.shape:
                raise InvalidInput(
                    f"closed-valve mask of length {len(shut)} for {len(segments.valve_link)} "
                    "valves",
                    hint="give one flag per valve",
                )
            # a valve shut at a place shuts it, whichever duplicate says so
            shut_at = np.zeros(len(shut), dtype=bool)
            np.logical_or.at(shut_at, segments.valve_first, shut)
            v = v[~shut_at[v]]
        sides = segments.valve_sides[v]
        v = v[sides[:, 0] != sides[:, 1]]
        sides = sides[sides[:, 0] != sides[:, 1]] + 1
        fed = np.unique(node_seg[src]) + 1
        ends = np.concatenate([sides, np.column_stack([np.zeros_like(fed), fed])])
        edge_valve = np.concatenate([v, np.full(len(fed), SOURCE)])
        indptr, nbr, nbr_edge = csr_neighbours(ends, k + 1)
        order, parent, _, disc, low = lowlink(indptr, nbr, nbr_edge, k + 1)
        size = subtree_size(order, parent)
        child_ptr, children = _group(parent[1:], k + 1, offset=1)

        pos = disc[1:]  # preorder position of every segment
        per_position = np.zeros((k + 1, len(per_segment)))
        per_position[pos] = np.column_stack(per_segment)
        cum = np.zeros((k + 2, len(per_segment)))
        np.cumsum(per_position, axis=0, out=cum[1:])
        pre_node_ptr, pre_nodes = _group(pos[node_seg], k + 1)
        pre_link_ptr, pre_links = _group(pos[link_seg], k + 1)
        return cls(
            net, segments, src, tuple(names), volume, bool(np.isfinite(length).any()), cum,
            pre_node_ptr, pre_nodes, pre_link_ptr, pre_links,
            indptr, nbr, nbr_edge, edge_valve, order, parent, disc, low, size,
            child_ptr, children,
        )  # fmt: skip

    # ------------------------------------------------------------------ queries
    def _supplied(self, vertex: np.ndarray) -> np.ndarray:
        """Whether segment-graph vertices lie in the super-source's DFS tree (are supplied)."""
        return (self.disc[vertex] < self.size[0]) & (vertex > 0)

    def isolate(self, link: int | str, inoperable: Iterable[int] = ()) -> Isolation:
        """Isolate a failed link (index, or id as a string): the valves to close, the isolated
        nodes and links, and everything cut off from every source as a consequence, with the
        weights summed over the nodes that lose supply. ``inoperable``: valves (indices into
        the valve arrays) that can't be closed; the region then grows past each of them to the
        next valves. A region that no valve bounds is a whole connected part of the network:
        it is returned with ``isolable=False`` and a note."""
        li = self._link(link)
        start = int(self.segments.link_segment[li]) + 1
        blocked = self._inoperable(inoperable)
        sides = self.segments.valve_sides[blocked] + 1  # as segment-graph vertices
        region = _grow(start, sides)
        # boundary: valve edges from the region to outside it
        rows = _rows(self.indptr, region)
        valve = self.edge_valve[self.nbr_edge[rows]]
        outside = ~np.isin(self.nbr[rows], region)
        close = np.unique(valve[outside & (valve != SOURCE)])
        # inoperable valves now inside the region, between two of its segments
        bypassed = blocked[np.isin(sides, region).all(axis=1) & (sides[:, 0] != sides[:, 1])]

        isolated = self._collect(self.disc[region], self.disc[region] + 1)
        cut = self._collect(*self._cut_off(region))
        w_direct, w_total = isolated[3][4:], isolated[3][4:] + cut[3][4:]
        isolable = len(close) > 0
        note = ""
        if not isolable:
            note = (
                f"no valve bounds link {self.net.link_ids[li]!r}: isolating it shuts its whole "
                f"connected part ({len(isolated[1])} nodes, {len(isolated[2])} links)"
            )
        elif len(bypassed):
            note = (
                f"{len(bypassed)} inoperable valve(s) bypassed: {len(region)} segments closed "
                "instead of one"
            )
        return Isolation(
            link=li,
            valves=close,
            inoperable=bypassed,
            segments=isolated[0],
            isolated_nodes=isolated[1],
            isolated_links=isolated[2],
            cutoff_segments=cut[0],
            cutoff_nodes=cut[1],
            cutoff_links=cut[2],
            volume=float(self.segment_volume[region - 1].sum()),
            impact=dict(zip(self.weight_names, w_total.tolist(), strict=True)),
            direct=dict(zip(self.weight_names, w_direct.tolist(), strict=True)),
            isolable=isolable,
            note=note,
        )

    def _cut_off(self, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Runs ``[starts, ends)`` of preorder positions: the supplied segments outside
        ``region`` that lose every source with it."""
        none = np.zeros(0, dtype=np.int64)
        if not self._supplied(region).any():
            return none, none
        if len(region) == 1:  # low-link rule: the children subtrees that don't reach above
            s = region[0]
            kids = self.children[self.child_ptr[s] : self.child_ptr[s + 1]]
            kids = kids[self.low[kids] >= self.disc[s]]
            return self.disc[kids], self.disc[kids] + self.size[kids]
        # several segments: search from the region's neighbours for a way around it
        lost = cut_off(self.indptr, self.nbr, self.disc, self.low, self.size, self.order, region)
        at = np.sort(self.disc[lost])
        if not len(at):
            return at, at
        run = np.flatnonzero(np.diff(at) != 1) + 1  # merge consecutive positions into runs
        return at[np.r_[0, run]], np.r_[at[run - 1], at[-1]] + 1

    def _collect(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
        """Segments, nodes, links and summed values over runs of preorder positions."""
        return (
            concat_ranges(self.order, starts, ends) - 1,
            concat_ranges(self.pre_nodes, self.pre_node_ptr[starts], self.pre_node_ptr[ends]),
            concat_ranges(self.pre_links, self.pre_link_ptr[starts], self.pre_link_ptr[ends]),
            (self.cum[ends] - self.cum[starts]).sum(axis=0),
        )

    def criticality(self, by: str | None = None) -> pd.DataFrame:
        """The impact of isolating each segment, for every segment at once (one DFS, O(V+E)).

        One row per segment: ``n_nodes``, ``n_links``, ``length`` (of the links with a known
        length; NaN if none has one) and every weight summed over the nodes that lose supply
        (the segment itself plus what it cuts off from all sources), each also as
        ``<name>_direct`` (the segment's own share); ``cutoff_segments``,
        ``n_valves`` (to close), ``volume`` (to drain), ``supplied`` (fed by a source at all),
        and ``rank`` by ``by`` (default: the first weight, else ``n_nodes``; 1 = worst).
        Sorted by rank. A link's row is that of ``segments.link_segment[link]``."""
        k = self.segments.n_segments
        pos = self.disc[1:]
        direct = self.cum[pos + 1] - self.cum[pos]  # (k, c): each segment's own values
        # the children c whose subtree a removed parent p cuts off: low[c] >= disc[p]
        c = np.flatnonzero(self.parent > 0)
        p = self.parent[c]
        keep = (self.low[c] >= self.disc[p]) & self._supplied(c)
        c, p = c[keep], p[keep]
        sub = self.cum[self.disc[c] + self.size[c]] - self.cum[self.disc[c]]
        total = direct + np.column_stack(
            [np.bincount(p, sub[:, j], minlength=k + 1)[1:] for j in range(sub.shape[1])]
        )
        frame = pd.DataFrame(index=pd.RangeIndex(k, name="segment"))
        names = ["n_nodes", "n_links", "length", "cutoff_segments", *self.weight_names]
        for j, name in enumerate(names):
            if name in ("n_nodes", "n_links"):
                frame[name] = np.rint(total[:, j]).astype(np.int64)
                frame[f"{name}_direct"] = np.rint(direct[:, j]).astype(np.int64)
            elif name == "cutoff_segments":
                frame[name] = np.rint(total[:, j] - 1).astype(np.int64)
            elif name == "length" and not self.has_length:
                frame[name] = frame[f"{name}_direct"] = np.nan
            else:
                frame[name] = total[:, j]
                frame[f"{name}_direct"] = direct[:, j]
        valve_edges = self.edge_valve[self.nbr_edge] != SOURCE
        vertex = np.repeat(np.arange(k + 1), np.diff(self.indptr))
        frame["n_valves"] = np.bincount(vertex[valve_edges], minlength=k + 1)[1:]
        frame["volume"] = self.segment_volume
        frame["supplied"] = self._supplied(np.arange(1, k + 1))
        by = by or (self.weight_names[0] if self.weight_names else "n_nodes")
        if by not in frame:
            raise InvalidInput(
                f"can't rank by {by!r}", hint=f"choose one of {', '.join(frame.columns)}"
            )
        ranked = frame.sort_values([by, "n_nodes"], ascending=False, kind="stable")
        ranked["rank"] = np.arange(1, k + 1)
        return ranked

    # ------------------------------------------------------------------ helpers
    def _link(self, link: int | str) -> int:
        if isinstance(link, str):
            return int(self.net.link_index(link)[0])
        li = int(link)
        if not 0 <= li < self.net.n_links:
            raise NotFound(
                f"no link with index {li}: the network has {self.net.n_links} links "
                "(give a link id as a string to look it up by id)"
            )
        return li

    def _inoperable(self, valves: Iterable[int]) -> np.ndarray:
        idx = np.asarray(list(valves), dtype=np.int64)
        n_valves = len(self.segments.valve_first)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_valves):
            bad = int(idx[(idx < 0) | (idx >= n_valves)][0])
            raise InvalidInput(
                f"inoperable valve {bad} does not exist: there are {n_valves} valves",
                hint="give inoperable valves as indices into the valve layer",
            )
        return np.unique(self.segments.valve_first[idx])


def isolate(
    net: Network,
    valve_link: Iterable[int],
    valve_node: Iterable[int],
    link: int | str,
    *,
    sources: np.ndarray,
    inoperable: Iterable[int] = (),
    weights: Mapping[str, np.ndarray] | None = None,
    diameter: np.ndarray | None = None,
    length: np.ndarray | None = None,
) -> Isolation:
    """One-shot burst isolation (see ``IsolationModel.isolate``); for many queries on the same
    network, build an ``IsolationModel`` once."""
    model = IsolationModel.build(
        net, valve_link, valve_node, sources, weights=weights, diameter=diameter, length=length
    )
    return model.isolate(link, inoperable)


def criticality(
    net: Network,
    valve_link: Iterable[int],
    valve_node: Iterable[int],
    *,
    sources: np.ndarray,
    weights: Mapping[str, np.ndarray] | None = None,
    diameter: np.ndarray | None = None,
    length: np.ndarray | None = None,
    by: str | None = None,
) -> pd.DataFrame:
    """Criticality of every valve segment in one call (see ``IsolationModel.criticality``)."""
    model = IsolationModel.build(
        net, valve_link, valve_node, sources, weights=weights, diameter=diameter, length=length
    )
    return model.criticality(by)


# ---------------------------------------------------------------------- input checks
def _valve_arrays(
    net: Network, valve_link: Iterable[int], valve_node: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    vl = np.asarray(list(valve_link) if not hasattr(valve_link, "__len__") else valve_link)
    vn = np.asarray(list(valve_node) if not hasattr(valve_node, "__len__") else valve_node)
    if vl.shape != vn.shape or vl.ndim != 1:
        raise InvalidInput(
            f"{vl.shape} valve links but {vn.shape} valve nodes",
            hint="give one link index and one node index per valve",
        )
    for arr, what, count in ((vl, "link", net.n_links), (vn, "node", net.n_nodes)):
        if len(arr) and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInput(
                f"valve {what}s must be {what} indices, got {arr.dtype}",
                hint=f"map ids to indices with Network.{what}_index",
            )
        if len(arr) and (arr.min() < 0 or arr.max() >= count):
            i = int(np.flatnonzero((arr < 0) | (arr >= count))[0])
            raise InvalidInput(
                f"valve {i}: {what} index {arr[i]} is outside the network's {count} {what}s",
                hint=f"map ids to indices with Network.{what}_index",
            )
    return vl.astype(np.int64), vn.astype(np.int64)


def _node_mask(net: Network, values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        if arr.shape != (net.n_nodes,):
            raise InvalidInput(
                f"{what}: a mask of {arr.shape} for {net.n_nodes} nodes",
                hint="give one flag per node, or node indices",
            )
        return arr
    mask = np.zeros(net.n_nodes, dtype=bool)
    idx = arr.astype(np.int64).ravel()
    if len(idx) and (idx.min() < 0 or idx.max() >= net.n_nodes):
        raise InvalidInput(
            f"{what}: node index outside the network's {net.n_nodes} nodes",
            hint="map ids to indices with Network.node_index",
        )
    mask[idx] = True
    return mask


def _node_weight(net: Network, name: str, values: np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != (net.n_nodes,):
        raise InvalidInput(
            f"weight {name!r} has shape {arr.shape}, the network has {net.n_nodes} nodes",
            hint="give one value per node, aligned with Network.node_ids",
        )
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise InvalidInput(
            f"weight {name!r} is {arr[i]} at node {net.node_ids[i]!r}",
            feature=str(net.node_ids[i]),
            hint="fill unknown values with 0",
        )
    return arr


def _link_values(net: Network, values: np.ndarray | None, what: str) -> np.ndarray:
    if values is None:
        return np.full(net.n_links, np.nan)
    arr = np.asarray(values, dtype=float)
    if arr.shape != (net.n_links,):
        raise InvalidInput(
            f"{what} has shape {arr.shape}, the network has {net.n_links} links",
            hint="give one value per link, aligned with Network.link_ids",
        )
    return arr


def _grow(start: int, sides: np.ndarray) -> np.ndarray:
    """The vertices joined to ``start`` over the links ``sides`` (a few inoperable valves)."""
    region, frontier = {start}, [start]
    while frontier:
        v = frontier.pop()
        for a, b in sides[(sides[:, 0] == v) | (sides[:, 1] == v)].tolist():
            w = b if a == v else a
            if w not in region:
                region.add(w)
                frontier.append(w)
    return np.array(sorted(region), dtype=np.int64)


def _rows(indptr: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The CSR positions ``indptr[w]:indptr[w + 1]`` of every ``w`` in ``which``, concatenated."""
    starts, counts = indptr[which], indptr[which + 1] - indptr[which]
    shift = np.repeat(starts - np.cumsum(counts) + counts, counts)
    return shift + np.arange(counts.sum())


def _group(labels: np.ndarray, n_groups: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, items)`` of the positions (plus ``offset``) of each label; items of a
    label ascend. Negative labels are left out."""
    keep = labels >= 0
    pos = np.flatnonzero(keep)
    lab = labels[keep]
    order = np.argsort(lab, kind="stable")
    indptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(lab, minlength=n_groups), out=indptr[1:])
    return indptr, (pos[order] + offset).astype(np.int64)

"""A utility network as arrays and sparse graphs: the core every network analysis shares.

A ``Network`` holds one network's topology: node and link feature ids, each link's two end
nodes as integer indices, and optionally node positions and link lengths. Everything else an
analysis needs (sources, valves, demands, residents, invert levels, flows) is passed to it as
arrays aligned with ``node_ids`` or ``link_ids``. The engine is pure: no store, no files.

Graph algorithms run on scipy sparse matrices (``adjacency``) or on the node→link incidence in
CSR form (``incidence``), so that parallel links keep their identity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from citytwin.errors import InvalidInput, NotFound


@dataclass(frozen=True, eq=False)
class Network:
    """One utility network's topology. ``link_nodes[k] = (from, to)`` indexes ``node_ids``."""

    node_ids: np.ndarray  # (n,) object: feature ids of the nodes
    link_ids: np.ndarray  # (m,) object: feature ids of the links
    link_nodes: np.ndarray  # (m, 2) int64: from and to node index of every link
    node_xy: np.ndarray | None = None  # (n, 2) float: node positions, NaN where unknown
    link_length: np.ndarray | None = None  # (m,) float: link lengths in m

    def __post_init__(self) -> None:
        object.__setattr__(self, "node_ids", np.asarray(self.node_ids, dtype=object))
        object.__setattr__(self, "link_ids", np.asarray(self.link_ids, dtype=object))
        ends = np.asarray(self.link_nodes, dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "link_nodes", ends)
        if len(ends) != len(self.link_ids):
            raise ValueError(f"{len(self.link_ids)} link ids but {len(ends)} link ends")
        if len(ends) and (ends.min() < 0 or ends.max() >= len(self.node_ids)):
            raise ValueError("link_nodes refers to a node index outside node_ids")

    @classmethod
    def from_ids(
        cls,
        node_ids: Iterable[str],
        link_ids: Iterable[str],
        from_node: Iterable[str],
        to_node: Iterable[str],
        *,
        node_xy: np.ndarray | None = None,
        link_length: np.ndarray | None = None,
    ) -> Network:
        """A network from explicit end-node ids (EPANET / SWMM style). Raises ``NotFound``
        naming the first link whose end node is not among ``node_ids``."""
        nodes = np.asarray(list(node_ids), dtype=object)
        links = np.asarray(list(link_ids), dtype=object)
        index = _index_of(nodes)
        ends = []
        for column in (from_node, to_node):
            names = np.asarray(list(column), dtype=object)
            at = index.get_indexer(names)
            if (at < 0).any():
                k = int(np.flatnonzero(at < 0)[0])
                raise NotFound(
                    f"link {links[k]}: end node {names[k]!r} is not a node of the network"
                )
            ends.append(at)
        return cls(nodes, links, np.stack(ends, axis=1), node_xy, link_length)

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.node_ids)

    @property
    def n_links(self) -> int:
        """Number of links."""
        return len(self.link_ids)

    @cached_property
    def _node_lookup(self):  # pandas Index: fast id → position
        return _index_of(self.node_ids)

    @cached_property
    def _link_lookup(self):
        return _index_of(self.link_ids)

    def node_index(self, ids: str | Iterable[str]) -> np.ndarray:
        """Positions of node ids; ``NotFound`` names the first unknown one."""
        return _positions(self._node_lookup, ids, "node")

    def link_index(self, ids: str | Iterable[str]) -> np.ndarray:
        """Positions of link ids; ``NotFound`` names the first unknown one."""
        return _positions(self._link_lookup, ids, "link")

    @cached_property
    def incidence(self) -> tuple[np.ndarray, np.ndarray]:
        """Node → incident links in CSR form ``(indptr, links)``: the links at node ``i`` are
        ``links[indptr[i]:indptr[i + 1]]`` (a self-loop appears twice)."""
        ends = self.link_nodes.ravel()
        order = np.argsort(ends, kind="stable")
        indptr = np.zeros(self.n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(ends, minlength=self.n_nodes), out=indptr[1:])
        return indptr, (order // 2).astype(np.int64)

    def node_mask(self, which: Iterable | np.ndarray | None) -> np.ndarray:
        """A boolean mask over the nodes from node ids or from a mask (None: no node)."""
        return _mask(which, self.n_nodes, self.node_index, "node")

    def link_mask(self, which: Iterable | np.ndarray | None) -> np.ndarray:
        """A boolean mask over the links from link ids or from a mask (None: no link)."""
        return _mask(which, self.n_links, self.link_index, "link")

    @cached_property
    def neighbours(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Node → neighbours in CSR form ``(indptr, nbr_node, nbr_link)`` for the compiled
        kernels (``kernels.csr_neighbours``): node ``i`` reaches ``nbr_node[j]`` over link
        ``nbr_link[j]`` for ``j`` in ``indptr[i]:indptr[i + 1]``. Built once per network."""
        from citytwin.networks.kernels import csr_neighbours

        return csr_neighbours(self.link_nodes, self.n_nodes)

    @cached_property
    def degree(self) -> np.ndarray:
        """Number of link ends at every node."""
        return np.diff(self.incidence[0])

    def other_end(self, links: np.ndarray, node: np.ndarray | int) -> np.ndarray:
        """The end of each link that is not ``node``."""
        ends = self.link_nodes[links]
        return np.where(ends[:, 0] == node, ends[:, 1], ends[:, 0])

    def adjacency(
        self,
        links: np.ndarray | None = None,
        *,
        weights: np.ndarray | None = None,
        directed: bool = False,
    ) -> sparse.csr_matrix:
        """Node adjacency as an ``n × n`` CSR matrix over the links selected by ``links``
        (a boolean mask or indices; all by default). Undirected unless ``directed``, in which
        case a link points from its from-node to its to-node. Entries hold ``weights``
        (default 1); of parallel links the smallest weight is kept."""
        k = np.arange(self.n_links) if links is None else _as_indices(links, self.n_links)
        u, v = self.link_nodes[k, 0], self.link_nodes[k, 1]
        w = np.ones(len(k)) if weights is None else np.asarray(weights, dtype=float)[k]
        if not directed:
            u, v, w = np.r_[u, v], np.r_[v, u], np.r_[w, w]
        # keep the smallest weight of parallel links: sort so it comes first, drop repeats
        order = np.lexsort((w, v, u))
        u, v, w = u[order], v[order], w[order]
        first = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])][: len(u)]
        # explicit zeros would vanish from a sparse matrix: a tiny positive weight stands in
        w = np.where(w[first] > 0, w[first], 1e-12)
        n = self.n_nodes
        return sparse.csr_matrix((w, (u[first], v[first])), shape=(n, n))

    def components(self, links: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Connected components over the selected links: ``(count, label per node)``."""
        return connected_components(self.adjacency(links), directed=False)


def _index_of(ids: np.ndarray):
    import pandas as pd

    index = pd.Index(ids)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise ValueError(f"duplicate id {dup!r} in the network")
    return index


def _positions(lookup, ids: str | Iterable[str], what: str) -> np.ndarray:
    names = np.asarray([ids] if isinstance(ids, str) else list(ids), dtype=object)
    at = lookup.get_indexer(names)
    if (at < 0).any():
        bad = names[np.flatnonzero(at < 0)[0]]
        raise NotFound(f"no {what} {bad!r} in the network — check the id (ids are case-sensitive)")
    return at.astype(np.int64)


def _mask(which, size: int, index, what: str) -> np.ndarray:
    out = np.zeros(size, dtype=bool)
    if which is None:
        return out
    if isinstance(which, str):
        which = [which]
    arr = np.asarray(which if isinstance(which, np.ndarray) else list(which))
    if arr.dtype == bool:
        if len(arr) != size:
            raise InvalidInput(
                f"{what} mask of length {len(arr)} for {size} {what}s",
                hint=f"give one flag per {what}, or {what} ids",
            )
        return arr.copy()
    if len(arr):
        out[index(arr.astype(object))] = True
    return out


def _as_indices(links: np.ndarray, m: int) -> np.ndarray:
    links = np.asarray(links)
    if links.dtype == bool:
        if len(links) != m:
            raise ValueError(f"link mask of length {len(links)} for {m} links")
        return np.flatnonzero(links)
    return links.astype(np.int64)

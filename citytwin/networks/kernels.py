"""Compiled graph kernels (numba) for what scipy.sparse.csgraph does not offer.

Graphs are undirected multigraphs in CSR incidence form: the neighbours of vertex ``v`` are
``nbr_node[indptr[v]:indptr[v + 1]]``, reached over the links ``nbr_link[indptr[v]:indptr[v + 1]]``
(every link appears once at each of its two ends, a self-loop twice at its vertex).
``csr_neighbours(net.link_nodes, net.n_nodes)`` builds the three arrays; its ``indptr`` and
``nbr_link`` are ``Network.incidence``.

``lowlink`` is Tarjan's depth-first search with discovery times and low-links, written
iteratively (no recursion limit on million-vertex graphs). From its five arrays follow
``bridges``, ``articulation_points`` and, per vertex, the parts of the graph that its removal
cuts off from the DFS root (``subtree_size``: the subtree of ``v`` is the slice
``order[disc[v]:disc[v] + size[v]]`` of the preorder). ``cut_off`` answers the same for the
removal of a connected set of vertices; ``concat_ranges`` gathers runs of a CSR array.
"""

from __future__ import annotations

import numba
import numpy as np


def csr_neighbours(ends: np.ndarray, n_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR incidence ``(indptr, nbr_node, nbr_link)`` of the multigraph whose link ``k`` joins
    ``ends[k, 0]`` and ``ends[k, 1]``. Links at a vertex are listed in increasing link order."""
    ends = np.ascontiguousarray(ends, dtype=np.int64).reshape(-1, 2)
    if len(ends) and (ends.min() < 0 or ends.max() >= n_vertices):
        raise ValueError(f"link ends must lie in 0..{n_vertices - 1}")
    return _csr(ends.ravel(), n_vertices)


@numba.njit(cache=True)
def _csr(flat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.zeros(n + 1, dtype=np.int64)
    for v in flat:
        indptr[v + 1] += 1
    for v in range(n):
        indptr[v + 1] += indptr[v]
    fill = indptr[:-1].copy()
    nbr_node = np.empty(len(flat), dtype=np.int64)
    nbr_link = np.empty(len(flat), dtype=np.int64)
    for i in range(len(flat)):  # counting sort: stable, so links come in increasing order
        v = flat[i]
        nbr_node[fill[v]] = flat[i ^ 1]
        nbr_link[fill[v]] = i // 2
        fill[v] += 1
    return indptr, nbr_node, nbr_link


@numba.njit(cache=True)
def lowlink(
    indptr: np.ndarray, nbr_node: np.ndarray, nbr_link: np.ndarray, n_nodes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Iterative DFS low-link over an undirected multigraph in CSR incidence form.

    Covers every component; roots are taken in increasing vertex index, so vertex 0 is the root
    of the first tree (put a super-source there to root the search at the supply).

    Returns ``(order, parent, parent_link, disc, low)``, all int64 of length ``n_nodes``:
    ``order`` the vertices in preorder (``order[disc[v]] == v``), ``parent`` / ``parent_link``
    the DFS-tree parent vertex and the link to it (-1 at roots), ``disc`` the discovery time,
    ``low`` the smallest discovery time reachable from the subtree of ``v`` over one non-tree
    link. Only the parent *link* is skipped when looking back, not every link to the parent,
    so a doubled link counts as a back edge (it is not a bridge, and its end is not cut off).

    Bridges: ``parent_link[v]`` where ``low[v] > disc[parent[v]]``. Removing a non-root ``p``
    cuts off exactly the subtrees of its children ``c`` with ``low[c] >= disc[p]``.
    """
    order = np.empty(n_nodes, dtype=np.int64)
    parent = np.full(n_nodes, -1, dtype=np.int64)
    parent_link = np.full(n_nodes, -1, dtype=np.int64)
    disc = np.full(n_nodes, -1, dtype=np.int64)
    low = np.zeros(n_nodes, dtype=np.int64)
    nxt = np.empty(n_nodes, dtype=np.int64)  # next CSR position to look at, per vertex
    stack = np.empty(n_nodes, dtype=np.int64)
    t = 0
    for root in range(n_nodes):
        if disc[root] >= 0:
            continue
        disc[root] = t
        low[root] = t
        order[t] = root
        t += 1
        nxt[root] = indptr[root]
        stack[0] = root
        sp = 1
        while sp > 0:
            v = stack[sp - 1]
            j = nxt[v]
            if j < indptr[v + 1]:
                nxt[v] = j + 1
                e = nbr_link[j]
                if e == parent_link[v]:
                    continue
                w = nbr_node[j]
                if disc[w] < 0:
                    parent[w] = v
                    parent_link[w] = e
                    disc[w] = t
                    low[w] = t
                    order[t] = w
                    t += 1
                    nxt[w] = indptr[w]
                    stack[sp] = w
                    sp += 1
                elif disc[w] < low[v]:
                    low[v] = disc[w]
            else:
                sp -= 1
                p = parent[v]
                if p >= 0 and low[v] < low[p]:
                    low[p] = low[v]
    return order, parent, parent_link, disc, low


@numba.njit(cache=True)
def subtree_size(order: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Number of vertices in every vertex's DFS subtree (itself included)."""
    size = np.ones(len(order), dtype=np.int64)
    for i in range(len(order) - 1, -1, -1):
        v = order[i]
        p = parent[v]
        if p >= 0:
            size[p] += size[v]
    return size


def bridges(
    parent: np.ndarray, parent_link: np.ndarray, disc: np.ndarray, low: np.ndarray
) -> np.ndarray:
    """Links whose removal disconnects their component, from ``lowlink``'s output (sorted)."""
    child = np.flatnonzero(parent >= 0)
    return np.sort(parent_link[child[low[child] > disc[parent[child]]]])


def articulation_points(parent: np.ndarray, disc: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Vertices whose removal disconnects their component, from ``lowlink``'s output (sorted):
    a root with two or more DFS children, or a non-root with a child ``c`` whose subtree has no
    link reaching above it (``low[c] >= disc[v]``)."""
    child = np.flatnonzero(parent >= 0)
    p = parent[child]
    is_root = parent[p] < 0
    cut = np.unique(p[~is_root & (low[child] >= disc[p])])
    roots, n_children = np.unique(p[is_root], return_counts=True)
    return np.union1d(cut, roots[n_children >= 2])


@numba.njit(cache=True)
def concat_ranges(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of the slices ``items[starts[i]:ends[i]]`` (CSR rows: pass
    ``indptr[rows]`` and ``indptr[rows + 1]``; runs of rows: ``indptr[a]`` and ``indptr[b]``)."""
    total = 0
    for i in range(len(starts)):
        total += ends[i] - starts[i]
    out = np.empty(total, dtype=items.dtype)
    k = 0
    for i in range(len(starts)):
        n = ends[i] - starts[i]
        out[k : k + n] = items[starts[i] : ends[i]]
        k += n
    return out


@numba.njit(cache=True)
def cut_off(
    indptr: np.ndarray,
    nbr_node: np.ndarray,
    disc: np.ndarray,
    low: np.ndarray,
    size: np.ndarray,
    order: np.ndarray,
    region: np.ndarray,
) -> np.ndarray:
    """Vertices of the first DFS tree (the one rooted at vertex ``order[0]``) that lose every
    path to its root when the *connected* vertex set ``region`` is removed, from ``lowlink``'s
    ``disc``/``low``/``order`` and ``subtree_size``. The region must not hold the root.

    Work is proportional to what is cut off plus, for every part that stays connected, the
    search until it proves so. A vertex is proven connected when it lies outside the subtree
    ``T`` of the region's topmost vertex ``r0`` (all of the region lies in ``T``: DFS links only
    join ancestors and descendants), or when its own subtree holds no region vertex and reaches
    above ``r0`` over a back link (``low[v] < disc[r0]``). A search from each neighbour of the
    region that finds no such vertex has found a part that is cut off."""
    n = len(disc)
    r0 = region[0]
    for r in region:
        if disc[r] < disc[r0]:
            r0 = r
    lo = disc[r0]
    hi = lo + size[r0]
    if lo >= size[order[0]]:
        return np.empty(0, dtype=np.int64)  # not in the root's tree: never supplied
    region_disc = np.sort(disc[region])
    state = np.zeros(n, dtype=np.int8)  # 1 region, 2 proven connected, 3 cut off, 4 in search
    for r in region:
        state[r] = 1
    queue = np.empty(n, dtype=np.int64)
    lost = np.empty(n, dtype=np.int64)
    n_lost = 0
    for r in region:
        for j in range(indptr[r], indptr[r + 1]):
            seed = nbr_node[j]
            if state[seed] != 0:
                continue
            head, tail = 0, 1
            queue[0] = seed
            state[seed] = 4
            escaped = False
            while head < tail and not escaped:
                v = queue[head]
                head += 1
                dv = disc[v]
                if dv < lo or dv >= hi:
                    escaped = True
                    break
                if low[v] < lo:
                    # no region vertex in v's subtree [dv, dv + size[v])?
                    k = np.searchsorted(region_disc, dv)
                    if k == len(region_disc) or region_disc[k] >= dv + size[v]:
                        escaped = True
                        break
                for i in range(indptr[v], indptr[v + 1]):
                    w = nbr_node[i]
                    s = state[w]
                    if s == 2:
                        escaped = True
                        break
                    if s == 0:
                        state[w] = 4
                        queue[tail] = w
                        tail += 1
            mark = 2 if escaped else 3
            for i in range(tail):
                state[queue[i]] = mark
            if not escaped:
                lost[n_lost : n_lost + tail] = queue[:tail]
                n_lost += tail
    return lost[:n_lost].copy()

"""Utility network benchmark: valve segmentation vs WNTR, burst isolation and criticality at scale.

Sections (one function each, every one returns table rows):
- valve segmentation vs WNTR: Net6 and BWSN_Network_2 with WNTR's strategic N-2 valve layer;
  ours (median of several runs) against ``wntr.metrics.valve_segments`` (once), with the
  partitions asserted identical. Target: >= 100 x faster.
- isolation and criticality at scale: a synthetic street-grid network of ~1 M pipes (spanning
  tree plus loops) with N-1 valves at every branching junction and a few sources. Targets:
  segmentation <= 2 s, one isolation with impacts median <= 20 ms, criticality of every
  segment <= 10 s.

Run: .venv/bin/python benchmarks/bench_networks.py [--side 950] [--queries 200] [--skip-wntr]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from citytwin.networks.graph import Network
from citytwin.networks.segments import IsolationModel, valve_segments

Row = tuple[str, str, str, str, str]


def timed(fn: Callable, repeat: int = 1) -> tuple[float, object]:
    """Median wall time in seconds over ``repeat`` runs, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def epanet_network(path: Path):
    """The WNTR model and our ``Network`` of an EPANET file."""
    import wntr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wn = wntr.network.WaterNetworkModel(str(path))
    links = wn.link_name_list
    net = Network.from_ids(
        wn.node_name_list,
        links,
        [wn.get_link(k).start_node_name for k in links],
        [wn.get_link(k).end_node_name for k in links],
    )
    return wn, net


def _partition(node_names, node_label, link_names, link_label) -> set[frozenset]:
    groups: dict = {}
    for kind, names, labels in (("N", node_names, node_label), ("L", link_names, link_label)):
        for name, label in zip(names, labels, strict=True):
            groups.setdefault(label, set()).add((kind, name))
    return {frozenset(g) for g in groups.values()}


def section_segmentation_vs_wntr(repeat: int = 7) -> list[Row]:
    """Valve segmentation of Net6 and BWSN_Network_2: ours vs ``wntr.metrics.valve_segments``."""
    import epyt
    import wntr

    cases = {
        "Net6": Path(wntr.__file__).parent / "library" / "networks" / "Net6.inp",
        "BWSN_Network_2": Path(epyt.__file__).parent
        / "networks"
        / "asce-tf-wdst"
        / "BWSN_Network_2.inp",
    }
    rows: list[Row] = []
    for name, path in cases.items():
        wn, net = epanet_network(path)
        layer = wntr.network.layer.generate_valve_layer(wn, "strategic", 2, seed=17)
        graph = wn.to_graph()

        def ours(net=net, layer=layer):  # from the layer's ids, as a caller hands them over
            return valve_segments(net, net.link_index(layer["link"]), net.node_index(layer["node"]))

        ours_s, seg = timed(ours, repeat)
        peer_s, (node_seg, link_seg, _) = timed(
            lambda graph=graph, layer=layer: wntr.metrics.valve_segments(graph, layer)
        )
        same = _partition(net.node_ids, seg.node_segment, net.link_ids, seg.link_segment) == (
            _partition(node_seg.index, node_seg.to_numpy(), link_seg.index, link_seg.to_numpy())
        )
        assert same, f"{name}: segments differ from WNTR's"
        rows.append(
            (
                f"segmentation {name} ({net.n_links:,} links, {len(layer):,} valves, "
                f"{seg.n_segments:,} segments, identical to WNTR)",
                f"{ours_s * 1000:.1f} ms",
                f"{peer_s:.2f} s (WNTR)",
                f"{peer_s / ours_s:,.0f} x",
                ">= 100 x",
            )
        )
    return rows


def lattice(side: int, extra: float = 0.3, seed: int = 1, n_sources: int = 4):
    """A street-grid-like network on a ``side`` × ``side`` lattice: a random spanning tree of
    the grid (branches, dead ends) plus a share ``extra`` of the remaining grid pipes (loops),
    about ``side² · (1 + extra)`` pipes. N-1 valves at every branching junction (degree >= 3:
    all incident pipes but one, chosen at random, carry a valve there), ``n_sources`` source
    nodes, node weights and pipe diameters."""
    from scipy import sparse
    from scipy.sparse.csgraph import minimum_spanning_tree

    rng = np.random.default_rng(seed)
    n = side * side
    idx = np.arange(n).reshape(side, side)
    grid = np.concatenate(
        [
            np.column_stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()]),
            np.column_stack([idx[:-1].ravel(), idx[1:].ravel()]),
        ]
    )
    w = rng.random(len(grid)) + 1e-9
    tree = minimum_spanning_tree(sparse.csr_matrix((w, (grid[:, 0], grid[:, 1])), shape=(n, n)))
    tree = tree.tocoo()
    code = grid[:, 0] * n + grid[:, 1]  # grid pipes have from < to
    by_code = np.argsort(code)
    row, col = tree.row.astype(np.int64), tree.col.astype(np.int64)
    tree_code = np.minimum(row, col) * n + np.maximum(row, col)
    in_tree = np.zeros(len(grid), dtype=bool)
    in_tree[by_code[np.searchsorted(code, tree_code, sorter=by_code)]] = True
    ends = grid[in_tree | (rng.random(len(grid)) < extra)]
    xy = np.column_stack([(idx % side).ravel(), (idx // side).ravel()]) * 100.0
    net = Network(
        np.char.add("J", np.arange(n).astype(str)),
        np.char.add("P", np.arange(len(ends)).astype(str)),
        ends,
        node_xy=xy,
        link_length=np.full(len(ends), 100.0),
    )
    indptr, links = net.incidence
    degree = np.diff(indptr)
    node = np.repeat(np.arange(n), degree)
    key = rng.random(len(links))
    best = np.maximum.reduceat(key, indptr[:-1])  # a spanning tree: every node has links
    valved = (key < best[node]) & (degree[node] >= 3)  # all but one pipe at branchings
    sources = np.zeros(n, dtype=bool)
    sources[rng.choice(n, n_sources, replace=False)] = True
    weights = {
        "demand": rng.gamma(2.0, 0.5, n),
        "connections": rng.poisson(4, n).astype(float),
        "residents": rng.poisson(12, n).astype(float),
        "hospitals": (rng.random(n) < 2e-4).astype(float),
        "schools": (rng.random(n) < 1e-3).astype(float),
    }
    diameter = rng.choice([0.1, 0.15, 0.2, 0.3, 0.5], len(ends), p=[0.4, 0.3, 0.15, 0.1, 0.05])
    return net, links[valved], node[valved], sources, weights, diameter


def recompute_isolation(model: IsolationModel, link: int) -> int:
    """The peer for one query: drop the failed link's segment from the segment graph and
    recompute connected components from the super-source with scipy (no low-link index).
    Returns the number of nodes that lose supply."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    s = int(model.segments.link_segment[link]) + 1
    u = np.repeat(np.arange(len(model.indptr) - 1), np.diff(model.indptr))
    keep = (u != s) & (model.nbr != s)
    k = len(model.indptr) - 1
    graph = sparse.csr_matrix((np.ones(keep.sum()), (u[keep], model.nbr[keep])), shape=(k, k))
    _, label = connected_components(graph, directed=False)
    lost = label[1:] != label[0]
    lost[s - 1] = True
    return int(np.bincount(model.segments.node_segment, minlength=k - 1)[lost].sum())


def section_isolation_at_scale(
    side: int = 950, extra: float = 0.1, queries: int = 200
) -> list[Row]:
    """Segmentation, one isolation with impacts and criticality on a ~1 M-pipe lattice; the
    peer recomputes connected components per query (scipy)."""
    t = time.perf_counter()
    net, vl, vn, sources, weights, diameter = lattice(side, extra)
    gen_s = time.perf_counter() - t
    seg_s, seg = timed(lambda: valve_segments(net, vl, vn), 3)
    build_s, model = timed(
        lambda: IsolationModel.build(
            net, vl, vn, sources, weights=weights, diameter=diameter, segments=seg
        )
    )
    crit_s, table = timed(lambda: model.criticality("residents"), 3)
    rng = np.random.default_rng(7)
    failed = rng.choice(net.n_links, queries, replace=False)
    model.isolate(int(failed[0]))  # compile / warm
    times, lost = [], []
    for link in failed:
        t = time.perf_counter()
        r = model.isolate(int(link))
        times.append(time.perf_counter() - t)
        lost.append(len(r.lost_nodes))
    peer_times = []
    for link in failed[:5]:
        t = time.perf_counter()
        n_lost = recompute_isolation(model, int(link))
        peer_times.append(time.perf_counter() - t)
        assert n_lost == len(model.isolate(int(link)).lost_nodes)
    peer_q = statistics.median(peer_times)
    # one of the valves to close is inoperable: the region grows past it
    times_inop, sizes_inop = [], []
    for link in failed[: max(queries // 4, 1)]:
        first = model.isolate(int(link))
        if not len(first.valves):
            continue
        t = time.perf_counter()
        r = model.isolate(int(link), inoperable=first.valves[:1])
        times_inop.append(time.perf_counter() - t)
        sizes_inop.append(len(r.segments))
    worst = table.iloc[0]
    worst_link = int(np.flatnonzero(seg.link_segment == table.index[0])[0])
    worst_s, worst_r = timed(lambda: model.isolate(worst_link), 5)
    return [
        (
            f"lattice {side}×{side}: {net.n_links:,} pipes, {len(vl):,} valves, "
            f"{int(sources.sum())} sources (generated in {gen_s:.1f} s)",
            "", "", "", "",
        ),
        (f"  full valve segmentation → {seg.n_segments:,} segments", f"{seg_s:.2f} s",
         "", "", "<= 2 s"),
        ("  isolation model build (segment graph + DFS)", f"{build_s:.2f} s", "", "", ""),
        (
            f"  one isolation with impacts (median of {queries}; nodes losing supply: "
            f"mean {np.mean(lost):,.1f}, max {max(lost):,})",
            f"{statistics.median(times) * 1000:.2f} ms",
            f"{peer_q * 1000:.0f} ms (recompute, scipy)",
            f"{peer_q / statistics.median(times):,.0f} x",
            "<= 20 ms",
        ),
        (
            f"  … the worst segment ({len(worst_r.lost_nodes):,} nodes lose supply)",
            f"{worst_s * 1000:.2f} ms", "", "", "<= 20 ms",
        ),
        (
            f"  … with one inoperable valve (median of {len(times_inop)}; mean "
            f"{np.mean(sizes_inop):.1f} segments closed)",
            f"{statistics.median(times_inop) * 1000:.2f} ms", "", "", "",
        ),
        (
            f"  criticality of all {len(table):,} segments (worst: {worst['n_nodes']:,} nodes, "
            f"{worst['residents']:,.0f} residents)",
            f"{crit_s:.2f} s",
            f"{peer_q * len(table) / 3600:,.0f} h (recompute × segments, est.)",
            f"{peer_q * len(table) / crit_s:,.0f} x",
            "<= 10 s",
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=950, help="lattice side (950: ~1 M pipes)")
    parser.add_argument("--extra", type=float, default=0.1, help="share of loop-closing pipes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-wntr", action="store_true", help="leave out the WNTR section")
    args = parser.parse_args()

    rows: list[Row] = []
    if not args.skip_wntr:
        rows += section_segmentation_vs_wntr()
    rows += section_isolation_at_scale(args.side, args.extra, args.queries)

    table = Table(title="CityTwin utility networks")
    for name, justify in (
        ("run", "left"),
        ("CityTwin", "right"),
        ("peer", "right"),
        ("speed-up", "right"),
        ("target", "left"),
    ):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()

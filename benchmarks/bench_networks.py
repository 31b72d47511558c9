"""Utility network benchmark: valve segmentation vs WNTR, burst isolation and criticality at scale.

Sections (one function each, every one returns table rows):
- valve segmentation vs WNTR: Net6 and BWSN_Network_2 with WNTR's strategic N-2 valve layer;
  ours (median of several runs) against ``wntr.metrics.valve_segments`` (once), with the
  partitions asserted identical. Target: >= 100 x faster.
- the virtual 1 M-pipe water network (``citytwin.synth.network``), written into a twin and
  read back: graph build <= 10 s, segmentation <= 2 s, one isolation with impacts median
  <= 20 ms, upstream / downstream trace median <= 50 ms (networkx on the same directed graph
  as the reference), criticality of every segment <= 10 s.
- clearance check of all networks of the 100 km² virtual city (``citytwin.networks.clearance``
  with the virtual city's rules): <= 60 s; violations found vs seeded (and vs those the drainage
  plan explains: culverts wider than their street). No open tool checks clearances: no peer.

Run: .venv/bin/python benchmarks/bench_networks.py [--pipes 1000000] [--queries 200] [--skip-wntr]
     [--clearance-km2 100 (0: leave it out)]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from citytwin.hydraulics.epanet import network_from_wntr
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
    net = network_from_wntr(wn)
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


def virtual_network_twin(pipes: int, folder: Path) -> tuple[object, Path, float]:
    """The virtual 1 M-pipe water network (``citytwin.synth.network``) written into a twin
    through the normal import path; returns the plan, the twin's path and the write time."""
    from citytwin.formats.base import load_bundle
    from citytwin.store import create_store
    from citytwin.synth.network import plan_water_network

    plan = plan_water_network(pipes, seed=1)
    path = folder / "network.twin"
    t = time.perf_counter()
    store = create_store(path, plan.twin_meta())
    with store.transaction():
        load_bundle(store, plan.bundle())
    store.close()
    return plan, path, time.perf_counter() - t


def section_network_at_scale(pipes: int = 1_000_000, queries: int = 200) -> list[Row]:
    """On the virtual ~1 M-pipe network, read from a twin: graph build, segmentation, one
    isolation with impacts, upstream / downstream traces (networkx as the reference on the
    same directed graph), criticality of every segment. The isolation peer recomputes
    connected components per query (scipy)."""
    import tempfile

    import networkx as nx

    from citytwin.app.networks import load_network, network_valves, source_nodes
    from citytwin.networks import trace
    from citytwin.store import open_store

    folder = Path(tempfile.mkdtemp(prefix="citytwin-bench-"))
    t = time.perf_counter()
    plan, path, write_s = virtual_network_twin(pipes, folder)
    gen_s = time.perf_counter() - t - write_s
    store = open_store(path, read_only=True)
    build_s, data = timed(lambda: load_network(store, "water_supply"))
    valves_s, valves = timed(lambda: network_valves(data))
    store.close()
    net = data.graph
    # impacts from the plan's arrays, aligned with the graph by node id
    at = pd.Index(plan.node_ids).get_indexer(net.node_ids)
    weights = {
        "residents": plan.residents[at].astype(float),
        "demand": plan.demand[at],
        "connections": (plan.node_class[at] == "service_connection").astype(float),
        **{f"{k}s": (plan.critical[at] == k).astype(float) for k in ("hospital", "school")},
    }
    sources = source_nodes(data)
    diameter = data.links["diameter"].to_numpy(float)
    seg_s, seg = timed(lambda: valve_segments(net, valves.link, valves.node), 3)
    model_s, model = timed(
        lambda: IsolationModel.build(
            net, valves.link, valves.node, sources, weights=weights, diameter=diameter,
            segments=seg,
        )
    )  # fmt: skip
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
    # traces: directions away from the sources, then upstream / downstream of random nodes
    dir_s, direction = timed(lambda: trace.source_direction(net, sources))
    starts = net.node_ids[rng.choice(net.n_nodes, 50, replace=False)]
    trace.downstream(net, direction, starts[0])  # compile / warm
    down_t, up_t, reached = [], [], []
    for node in starts:
        t = time.perf_counter()
        d = trace.downstream(net, direction, node)
        down_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        trace.upstream(net, direction, node)
        up_t.append(time.perf_counter() - t)
        reached.append(len(d.nodes))
    g = nx.DiGraph()
    ends = net.link_nodes
    fwd = (direction == trace.FORWARD) | (direction == trace.BOTH)
    bwd = (direction == trace.BACKWARD) | (direction == trace.BOTH)
    g.add_nodes_from(range(net.n_nodes))
    g.add_edges_from(ends[fwd].tolist())
    g.add_edges_from(ends[bwd][:, ::-1].tolist())
    nx_down, nx_up = [], []
    for node in starts[:10]:
        i = int(net.node_index(node)[0])
        t = time.perf_counter()
        expect = nx.descendants(g, i) | {i}
        nx_down.append(time.perf_counter() - t)
        t = time.perf_counter()
        nx.ancestors(g, i)
        nx_up.append(time.perf_counter() - t)
        assert expect == set(trace.downstream(net, direction, node).nodes.tolist())
    # the largest traces: everything downstream of each source (the zone it feeds)
    src_t, src_nx, src_n = [], [], []
    for i in np.flatnonzero(sources):
        t = time.perf_counter()
        d = trace.downstream(net, direction, net.node_ids[i])
        src_t.append(time.perf_counter() - t)
        src_n.append(len(d.nodes))
        t = time.perf_counter()
        expect = nx.descendants(g, int(i)) | {int(i)}
        src_nx.append(time.perf_counter() - t)
        assert expect == set(d.nodes.tolist())
    ms = 1000.0
    worst = table.iloc[0]
    return [
        (
            f"virtual water network: {net.n_links:,} pipes, {net.n_nodes:,} nodes, "
            f"{len(valves.ids):,} valves, {int(sources.sum())} sources "
            f"(generated in {gen_s:.1f} s, written to a twin in {write_s:.0f} s)",
            "", "", "", "",
        ),
        ("  graph build: read the network from the twin", f"{build_s:.2f} s", "", "",
         "<= 10 s"),
        ("  … and place its valves", f"{valves_s:.2f} s", "", "", ""),
        (f"  full valve segmentation → {seg.n_segments:,} segments", f"{seg_s:.2f} s",
         "", "", "<= 2 s"),
        ("  isolation model build (segment graph + DFS)", f"{model_s:.2f} s", "", "", ""),
        (
            f"  one isolation with impacts (median of {queries}; nodes losing supply: "
            f"mean {np.mean(lost):,.1f}, max {max(lost):,})",
            f"{statistics.median(times) * ms:.2f} ms",
            f"{peer_q * ms:.0f} ms (recompute, scipy)",
            f"{peer_q / statistics.median(times):,.0f} x",
            "<= 20 ms",
        ),
        ("  flow directions from the sources (once)", f"{dir_s:.2f} s", "", "", ""),
        (
            f"  downstream trace (median of {len(starts)}; mean {np.mean(reached):,.0f} nodes)",
            f"{statistics.median(down_t) * ms:.2f} ms",
            f"{statistics.median(nx_down) * ms:.2f} ms (networkx descendants)",
            f"{statistics.median(nx_down) / statistics.median(down_t):,.1f} x",
            "<= 50 ms",
        ),
        (
            f"  downstream of each source (median of {len(src_t)}; mean "
            f"{np.mean(src_n):,.0f} nodes)",
            f"{statistics.median(src_t) * ms:.1f} ms",
            f"{statistics.median(src_nx) * ms:.1f} ms (networkx descendants)",
            f"{statistics.median(src_nx) / statistics.median(src_t):,.1f} x",
            "<= 50 ms",
        ),
        (
            f"  upstream trace (median of {len(starts)})",
            f"{statistics.median(up_t) * ms:.2f} ms",
            f"{statistics.median(nx_up) * ms:.2f} ms (networkx ancestors)",
            f"{statistics.median(nx_up) / statistics.median(up_t):,.1f} x",
            "<= 50 ms",
        ),
        (
            f"  criticality of all {len(table):,} segments (worst: {worst['n_nodes']:,} nodes, "
            f"{worst['residents']:,.0f} residents)",
            f"{crit_s:.2f} s",
            f"{peer_q * len(table) / 3600:,.1f} h (recompute × segments, est.)",
            f"{peer_q * len(table) / crit_s:,.0f} x",
            "<= 10 s",
        ),
    ]  # fmt: skip


def section_clearance(area_km2: float = 100.0, seed: int = 1) -> list[Row]:
    """The clearance check on every network of a virtual city, from the model frames."""
    from citytwin.networks.clearance import check_clearances, clearance_lines
    from citytwin.synth.city import plan_city
    from citytwin.synth.corridors import rules

    t = time.perf_counter()
    city = plan_city(area_km2, seed)
    plan_s = time.perf_counter() - t
    bundles = [b for b in city.bundles if "utility_links" in b.layers]
    nodes = pd.concat([b.layers["utility_nodes"] for b in bundles], ignore_index=True)
    links = pd.concat([b.layers["utility_links"] for b in bundles], ignore_index=True)
    table = rules()
    buildings = city.layout.buildings

    def run():
        return check_clearances(clearance_lines(nodes, links, table), table, buildings)

    check_s, found = timed(run, 1)
    seeded = {
        frozenset((r["feature_ids"][0], x))
        for r in city.utilities.violations
        for x in r["feature_ids"][1:]
    }
    pairs = [frozenset(p) for p in zip(found["id_a"], found["id_b"], strict=True)]
    hit = sum(p in seeded for p in pairs)
    wide = set(city.drainage.notes["conduits_too_wide"])
    role = np.array([p.get("role") for p in links["props"]], dtype=object)
    off_grid = set(links.loc[np.isin(role, ["source", "tank"]), "id"])  # laid across streets
    other = [p for p in pairs if p not in seeded]
    explained = sum(bool(p & wide) for p in other)
    by_mains = sum(bool(p & off_grid) and not p & wide for p in other)
    return [
        (
            f"clearance check, {area_km2:g} km² virtual city: {len(links):,} links of "
            f"{links['network'].nunique()} networks, {len(buildings):,} buildings "
            f"(city planned in {plan_s:.0f} s)",
            f"{check_s:.1f} s",
            "no open tool",
            "—",
            "<= 60 s",
        ),
        (
            f"  violations found {len(found):,}: seeded pairs {hit:,} of {len(seeded):,} "
            f"({len(city.utilities.violations)} seeded violations); others {len(other):,}, of "
            f"which {explained:,} involve the {len(wide)} culverts too wide for their street, "
            f"{by_mains:,} an off-grid water source or tank main",
            f"{len(found):,}",
            "",
            "",
            "exactly the seeded + explained",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipes", type=int, default=1_000_000, help="virtual network size")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-wntr", action="store_true", help="leave out the WNTR section")
    parser.add_argument("--clearance-km2", type=float, default=100.0, help="0: leave it out")
    args = parser.parse_args()

    rows: list[Row] = []
    if not args.skip_wntr:
        rows += section_segmentation_vs_wntr()
    rows += section_network_at_scale(args.pipes, args.queries)
    if args.clearance_km2 > 0:
        rows += section_clearance(args.clearance_km2)

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

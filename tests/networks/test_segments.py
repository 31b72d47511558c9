"""Valve segments against WNTR, isolation and criticality against brute force, the DFS kernel
against networkx."""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import wntr
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from citytwin.errors import InvalidInput, NotFound
from citytwin.hydraulics.epanet import network_from_wntr
from citytwin.networks.graph import Network
from citytwin.networks.kernels import articulation_points, bridges, csr_neighbours, lowlink
from citytwin.networks.segments import IsolationModel, criticality, isolate, valve_segments
from tests.conftest import package_data

NETWORKS = {
    "Net3": ("wntr", "library", "networks", "Net3.inp"),
    "Net6": ("wntr", "library", "networks", "Net6.inp"),
    "BWSN_Network_2": ("epyt", "networks", "asce-tf-wdst", "BWSN_Network_2.inp"),
}


def epanet(name: str) -> tuple[wntr.network.WaterNetworkModel, Network]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wn = wntr.network.WaterNetworkModel(str(package_data(*NETWORKS[name])))
    net = network_from_wntr(wn)
    return wn, net


def partition(node_names, node_label, link_names, link_label) -> set[frozenset]:
    groups: dict = {}
    for kind, names, labels in (("N", node_names, node_label), ("L", link_names, link_label)):
        for name, label in zip(names, labels, strict=True):
            groups.setdefault(label, set()).add((kind, name))
    return {frozenset(g) for g in groups.values()}


@pytest.fixture(scope="module", params=list(NETWORKS))
def wntr_case(request):
    """A network, its strategic N-2 valve layer and WNTR's segments (BWSN_2 takes WNTR ~15 s:
    computed once for the module)."""
    wn, net = epanet(request.param)
    layer = wntr.network.layer.generate_valve_layer(wn, "strategic", 2, seed=17)
    node_seg, link_seg, size = wntr.metrics.valve_segments(wn.to_graph(), layer)
    return request.param, net, layer, node_seg, link_seg, size


def test_segments_equal_wntr(wntr_case):
    _, net, layer, node_seg, link_seg, size = wntr_case
    seg = valve_segments(net, net.link_index(layer["link"]), net.node_index(layer["node"]))
    assert len(layer) > 50  # a real valve layer, not an empty one
    ours = partition(net.node_ids, seg.node_segment, net.link_ids, seg.link_segment)
    theirs = partition(node_seg.index, node_seg.to_numpy(), link_seg.index, link_seg.to_numpy())
    assert seg.n_segments == len(theirs) > 1
    assert ours == theirs
    # numbered by lowest node index, node-less segments (links valved at both ends) last
    first = pd.Series(np.arange(net.n_nodes)).groupby(seg.node_segment).min()
    assert first.index.tolist() == list(range(len(first))) and first.is_monotonic_increasing
    # segment sizes: the same multiset of (nodes, links) per segment
    sizes = seg.sizes()
    assert sizes["n_nodes"].sum() == net.n_nodes and sizes["n_links"].sum() == net.n_links
    mine = sorted(zip(sizes["n_nodes"], sizes["n_links"], strict=True))
    peer = sorted(zip(size["node"], size["link"], strict=True))
    assert mine == peer


# ---------------------------------------------------------------------------- kernel
def test_lowlink_bridges_and_articulation_points_match_networkx():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        ends = rng.integers(0, n, (int(rng.integers(0, 45)), 2))
        if rng.random() < 0.5 and len(ends):  # double some links: parallel links are no bridges
            ends = np.concatenate([ends, ends[rng.integers(0, len(ends), 3)]])
        order, parent, parent_link, disc, low = lowlink(*csr_neighbours(ends, n), n)
        assert (order[disc] == np.arange(n)).all()
        g = nx.MultiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from((int(u), int(v), k) for k, (u, v) in enumerate(ends))
        simple = nx.Graph(g)
        multiplicity = {}
        for u, v in ends:
            key = (min(u, v), max(u, v))
            multiplicity[key] = multiplicity.get(key, 0) + 1
        expected = sorted(
            k
            for k, (u, v) in enumerate(ends)
            if u != v
            and multiplicity[(min(u, v), max(u, v))] == 1
            and (min(u, v), max(u, v)) in {tuple(sorted(b)) for b in nx.bridges(simple)}
        )
        assert list(bridges(parent, parent_link, disc, low)) == expected
        assert list(articulation_points(parent, disc, low)) == sorted(
            nx.articulation_points(simple)
        )


# ---------------------------------------------------------------------------- brute force
def physical(net: Network) -> sparse.csr_matrix:
    """Nodes and links as vertices (links after the nodes), joined at every link end."""
    n, m = net.n_nodes, net.n_links
    rows = net.link_nodes.ravel()
    cols = n + np.repeat(np.arange(m), 2)
    return sparse.csr_matrix((np.ones(2 * m), (rows, cols)), shape=(n + m, n + m))


def fed(graph: sparse.csr_matrix, sources: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Vertices connected to a source once ``removed`` vertices are taken out."""
    keep = np.ones(graph.shape[0], dtype=bool)
    keep[removed] = False
    sub = graph[keep][:, keep]
    _, label = connected_components(sub, directed=False)
    full = np.full(graph.shape[0], -1)
    full[keep] = label
    src = np.flatnonzero(sources)
    src = src[keep[src]]
    return keep & np.isin(full, full[src])


def brute_force_lost(net, seg, sources, region_segments):
    """Node and link masks losing supply when ``region_segments`` are closed off."""
    n = net.n_nodes
    graph = physical(net)
    vertex_seg = np.concatenate([seg.node_segment, seg.link_segment])
    removed = np.flatnonzero(np.isin(vertex_seg, region_segments))
    before = fed(graph, sources, np.array([], dtype=int))
    after = fed(graph, sources, removed)
    lost = before & ~after
    lost[removed] = True
    return lost[:n], lost[n:]


def random_network(seed: int, n: int = 60, m: int = 90, p_valve: float = 0.35):
    rng = np.random.default_rng(seed)
    ends = rng.integers(0, n, (m, 2))
    ends = ends[ends[:, 0] != ends[:, 1]]
    net = Network(
        [f"n{i}" for i in range(n)],
        [f"l{k}" for k in range(len(ends))],
        ends,
        link_length=rng.uniform(10, 100, len(ends)),
    )
    link = np.repeat(np.arange(net.n_links), 2)
    node = net.link_nodes.ravel()
    valved = rng.random(len(link)) < p_valve
    sources = np.zeros(n, dtype=bool)
    sources[rng.choice(n, 3, replace=False)] = True
    return net, link[valved], node[valved], sources, rng


def test_criticality_matches_brute_force_on_random_networks():
    for seed in range(6):
        net, vl, vn, sources, rng = random_network(seed)
        demand = rng.uniform(0, 5, net.n_nodes)
        hospitals = (rng.random(net.n_nodes) < 0.1).astype(float)
        length = net.link_length.copy()
        length[rng.choice(net.n_links, 3)] = np.nan  # unknown lengths count as 0, not as NaN
        model = IsolationModel.build(
            net, vl, vn, sources, weights={"demand": demand, "hospitals": hospitals}, length=length
        )
        table = model.criticality().sort_index()
        seg = model.segments
        assert len(table) == seg.n_segments
        for s in range(seg.n_segments):
            lost_nodes, lost_links = brute_force_lost(net, seg, sources, [s])
            row = table.loc[s]
            assert row["n_nodes"] == lost_nodes.sum(), (seed, s)
            assert row["n_links"] == lost_links.sum(), (seed, s)
            assert row["demand"] == pytest.approx(demand[lost_nodes].sum())
            assert row["hospitals"] == pytest.approx(hospitals[lost_nodes].sum())
            assert row["length"] == pytest.approx(np.nansum(length[lost_links]))
            assert row["n_nodes_direct"] == (seg.node_segment == s).sum()
            assert row["demand_direct"] == pytest.approx(demand[seg.node_segment == s].sum())


def test_criticality_matches_brute_force_on_net3():
    wn, net = epanet("Net3")
    layer = wntr.network.layer.generate_valve_layer(wn, "strategic", 1, seed=5)
    sources = np.isin(net.node_ids, wn.reservoir_name_list + wn.tank_name_list)
    demand = np.array([wn.get_node(n).demand_timeseries_list[0].base_value
                       if n in wn.junction_name_list else 0.0 for n in net.node_ids])  # fmt: skip
    vl, vn = net.link_index(layer["link"]), net.node_index(layer["node"])
    table = criticality(net, vl, vn, sources=sources, weights={"demand": demand}).sort_index()
    seg = valve_segments(net, vl, vn)
    cut_somewhere = 0
    for s in range(seg.n_segments):
        lost_nodes, _ = brute_force_lost(net, seg, sources, [s])
        assert table.loc[s, "n_nodes"] == lost_nodes.sum()
        assert table.loc[s, "demand"] == pytest.approx(demand[lost_nodes].sum(), abs=1e-12)
        cut_somewhere += lost_nodes.sum() > (seg.node_segment == s).sum()
    assert cut_somewhere > 0  # some segments cut off more than themselves
    # ranking: rank 1 is the largest demand lost
    assert table.sort_values("rank")["demand"].is_monotonic_decreasing


def test_isolation_matches_brute_force_with_inoperable_valves():
    grown = 0
    for seed in range(30):  # sparse to meshed networks, few to many valves
        shape = np.random.default_rng(seed)
        n = int(shape.integers(20, 120))
        net, vl, vn, sources, rng = random_network(
            seed + 10, n=n, m=int(n * shape.uniform(1.0, 2.2)), p_valve=shape.uniform(0.2, 0.8)
        )
        diameter = rng.uniform(0.1, 0.5, net.n_links)
        residents = rng.integers(0, 50, net.n_nodes).astype(float)
        model = IsolationModel.build(
            net, vl, vn, sources, weights={"residents": residents}, diameter=diameter
        )
        seg = model.segments
        sides = seg.valve_sides
        for link in rng.choice(net.n_links, 10, replace=False):
            inoperable = []
            if rng.random() < 0.7:
                count = int(rng.integers(1, max(2, len(vl) // 3)))
                inoperable = rng.choice(len(vl), count, replace=False)
            result = model.isolate(int(link), inoperable)
            # region: the failed link's segment grown over inoperable valves (brute force)
            region = {seg.link_segment[link]}
            while True:
                grow = {
                    int(b if a in region else a)
                    for a, b in sides[inoperable]
                    if (a in region) != (b in region)
                }
                if not grow:
                    break
                region |= grow
            grown += len(region) > 1
            assert set(result.segments) == region
            crossing = np.flatnonzero(np.isin(sides[:, 0], list(region)) ^
                                      np.isin(sides[:, 1], list(region)))  # fmt: skip
            assert set(result.valves) == set(np.unique(seg.valve_first[crossing]))
            assert not set(result.valves) & set(seg.valve_first[inoperable])
            lost_nodes, lost_links = brute_force_lost(net, seg, sources, list(region))
            assert set(result.lost_nodes) == set(np.flatnonzero(lost_nodes))
            assert set(result.lost_links) == set(np.flatnonzero(lost_links))
            assert result.impact["residents"] == pytest.approx(residents[lost_nodes].sum())
            inside = np.isin(seg.node_segment, list(region))
            assert set(result.isolated_nodes) == set(np.flatnonzero(inside))
            assert result.direct["residents"] == pytest.approx(residents[inside].sum())
            iso = np.isin(seg.link_segment, list(region))
            assert result.volume == pytest.approx(
                (np.pi / 4 * diameter[iso] ** 2 * net.link_length[iso]).sum()
            )
    assert grown > 50  # the region grew past inoperable valves often enough to matter


def test_closing_the_valves_isolates_the_link_and_each_valve_is_needed():
    net, vl, vn, sources, _ = random_network(4, n=200, m=320, p_valve=0.5)
    model = IsolationModel.build(net, vl, vn, sources)

    def component_of_link(closed: np.ndarray) -> np.ndarray:
        """Node mask connected to the failed link with only ``closed`` valves shut."""
        n = net.n_nodes
        open_end = np.ones((net.n_links, 2), dtype=bool)
        for v in closed:
            open_end[vl[v], net.link_nodes[vl[v]] == vn[v]] = False
        link, end = np.nonzero(open_end)
        g = sparse.csr_matrix(
            (np.ones(len(link)), (net.link_nodes[link, end], n + link)),
            shape=(n + net.n_links, n + net.n_links),
        )
        _, label = connected_components(g, directed=False)
        return label[:n] == label[n + failed]

    checked = 0
    for failed in range(0, net.n_links, 7):
        result = model.isolate(failed)
        if not result.isolable or not len(result.isolated_nodes):
            continue
        shut = np.flatnonzero(np.isin(model.segments.valve_first, result.valves))
        inside = component_of_link(shut)
        assert set(np.flatnonzero(inside)) == set(result.isolated_nodes)
        for v in result.valves:  # leave one open: the region reaches further
            assert component_of_link(shut[model.segments.valve_first[shut] != v]).sum() > len(
                result.isolated_nodes
            )
        checked += 1
    assert checked > 5


# ---------------------------------------------------------------------------- bad input
def test_unknown_link_network_without_valves_and_unisolable_link():
    net = Network(
        ["a", "b", "c", "d", "e"],
        ["ab", "bc", "cd", "de"],
        [[0, 1], [1, 2], [2, 3], [3, 4]],
    )
    sources = np.array([True, False, False, False, False])
    with pytest.raises(InvalidInput, match="no valves"):
        isolate(net, [], [], 0, sources=sources)
    model = IsolationModel.build(net, [1], [1], sources)  # one valve: bc at b
    with pytest.raises(NotFound, match="'zz'"):
        model.isolate("zz")
    with pytest.raises(NotFound):
        model.isolate(17)
    whole = model.isolate("ab")  # a, b and ab: bounded by the valve on bc at b
    assert whole.isolable and list(whole.valves) == [0]
    assert set(whole.isolated_nodes) == {0, 1}
    assert set(whole.cutoff_nodes) == {2, 3, 4}  # the source is gone: everything downstream
    tail = model.isolate("de")
    assert set(tail.isolated_nodes) == {2, 3, 4} and not len(tail.cutoff_nodes)
    # the same valve inoperable: nothing else bounds the region → the whole network
    everything = model.isolate("de", inoperable=[0])
    assert not everything.isolable and "no valve" in everything.note
    assert set(everything.isolated_nodes) == set(range(5))
    assert list(everything.inoperable) == [0]
    with pytest.raises(InvalidInput, match="not an end"):
        valve_segments(net, [0], [3])
    with pytest.raises(InvalidInput, match="inoperable valve 5"):
        model.isolate("ab", inoperable=[5])
    with pytest.raises(InvalidInput, match="source"):
        IsolationModel.build(net, [1], [1], np.zeros(5, dtype=bool))
    with pytest.raises(InvalidInput, match="can't be called 'n_nodes'"):
        IsolationModel.build(net, [1], [1], sources, weights={"n_nodes": np.ones(5)})
    with pytest.raises(InvalidInput, match="weight 'demand'"):
        IsolationModel.build(net, [1], [1], sources, weights={"demand": np.ones(3)})


def test_duplicate_valves_count_once_and_parallel_valves_are_not_cut_vertices():
    # a - b = c (two pipes b-c, each valved at b) - d ; source at a
    net = Network(
        ["a", "b", "c", "d"], ["ab", "bc1", "bc2", "cd"], [[0, 1], [1, 2], [1, 2], [2, 3]]
    )
    model = IsolationModel.build(net, [1, 1, 2, 3], [1, 1, 1, 2], [0])
    seg = model.segments
    assert seg.valve_first.tolist() == [0, 0, 2, 3]
    bc1 = model.isolate("bc1")  # bc1 joins c's segment (open at c): bounded by valves 0, 2, 3
    assert set(bc1.valves) == {0, 2, 3}
    assert set(bc1.isolated_nodes) == {2} and set(bc1.cutoff_nodes) == {3}
    table = model.criticality().sort_index()
    assert table.loc[seg.node_segment[0], "n_nodes"] == 4  # the source's segment: all of it
    assert table.loc[seg.node_segment[0], "cutoff_segments"] == seg.n_segments - 1

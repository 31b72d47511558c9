"""Traces on real networks: EPANET Net3 against networkx on wntr's own graph, flow directions
from an EPANET run of Net3, and gravity traces on a real SWMM sewer (pystorms "epsilon")."""

from __future__ import annotations

import itertools
import shutil

import networkx as nx
import numpy as np
import pytest
import wntr

from citytwin.errors import InvalidInput, NotFound
from citytwin.hydraulics.epanet import network_from_wntr
from citytwin.networks.topology import network_from_ids
from citytwin.networks.trace import (
    BACKWARD,
    BOTH,
    FORWARD,
    MIN_LENGTH,
    NONE,
    connected,
    downstream,
    feeding_sources,
    flow_direction,
    gravity_direction,
    loop_through,
    loops,
    shortest_path,
    source_direction,
    upstream,
)
from tests.conftest import package_data


@pytest.fixture(scope="module")
def net3():
    wn = wntr.network.WaterNetworkModel(str(package_data("wntr", "library/networks/Net3.inp")))
    net = network_from_wntr(wn)
    return wn, net


def _graph(wn, closed=(), pump_length=0.0):
    """wntr's graph, undirected, weighted by pipe length (pumps and valves: ``pump_length``),
    closed links taken out."""
    g = wn.to_graph().to_undirected()
    for u, v, k in list(g.edges(keys=True)):
        if k in closed:
            g.remove_edge(u, v, k)
        else:
            link = wn.get_link(k)
            g.edges[u, v, k]["length"] = link.length if k in wn.pipe_name_list else pump_length
    return g


def _closed(wn) -> list[str]:
    """The links shut in the file (a pipe and a pump), and two more pipes that cut the network
    into pieces, so that closing matters."""
    shut = [k for k, link in wn.links() if link.initial_status == wntr.network.LinkStatus.Closed]
    g = _graph(wn, shut)
    cut = sorted(nx.bridges(nx.Graph(g)))[:2]
    return shut + [next(iter(g.get_edge_data(u, v))) for u, v in cut]


def test_connected_matches_networkx(net3):
    wn, net = net3
    closed = _closed(wn)
    g = _graph(wn, closed)
    assert nx.number_connected_components(g) >= 3
    for node in wn.node_name_list:
        trace = connected(net, node, closed=closed)
        assert set(trace.node_ids) == nx.node_connected_component(g, node)
        # the links reached: every open link among those nodes
        want = {k for u, v, k in g.edges(trace.node_ids, keys=True)}
        assert set(trace.link_ids) == want
    # from a link: both its ends and what hangs on them; a closed start link reaches nothing
    pipe = wn.pipe_name_list[0]
    a = wn.get_link(pipe).start_node_name
    assert set(connected(net, links=pipe, closed=closed).node_ids) == nx.node_connected_component(
        g, a
    )
    assert list(connected(net, links=closed[0], closed=closed).link_ids) == [closed[0]]


def test_shortest_path_matches_networkx(net3):
    wn, net = net3
    g = _graph(wn)
    rng = np.random.default_rng(7)
    names = np.array(wn.node_name_list, dtype=object)
    for a, b in rng.choice(names, size=(25, 2)):
        path = shortest_path(net, a, b)
        assert path.length == pytest.approx(nx.dijkstra_path_length(g, a, b, weight="length"))
        assert path.node_ids[0] == a and path.node_ids[-1] == b
        ends = net.link_nodes[path.links]
        # consecutive links join consecutive nodes, and the lengths add up
        assert all(
            {int(x) for x in e} == {int(path.nodes[i]), int(path.nodes[i + 1])}
            for i, e in enumerate(ends)
        )
        assert path.length == pytest.approx(np.nansum(net.link_length[path.links]))
    closed = _closed(wn)
    gc = _graph(wn, closed)
    a, b = next(
        (u, v) for u, v in itertools.pairwise(names) if not nx.has_path(gc, u, v)
    )
    with pytest.raises(NotFound, match=f"no open path from node {a} to node {b}"):
        shortest_path(net, a, b, closed=closed)
    with pytest.raises(NotFound, match="no node 'nowhere'"):
        shortest_path(net, a, "nowhere")


def test_feeding_sources_match_networkx(net3):
    wn, net = net3
    closed = _closed(wn)
    g = _graph(wn, closed)
    sources = wn.reservoir_name_list + wn.tank_name_list
    fed = 0
    for node in wn.node_name_list:
        got = set(feeding_sources(net, node, sources, closed=closed))
        assert got == set(sources) & nx.node_connected_component(g, node)
        fed += bool(got)
    assert 0 < fed < net.n_nodes  # some nodes are cut off from every source


def test_loops_and_bridges_match_networkx(net3):
    wn, net = net3
    closed = _closed(wn)[:2]  # the links shut in the file
    g = _graph(wn, closed)
    info = loops(net, closed=closed)
    assert info.count == g.number_of_edges() - g.number_of_nodes() + nx.number_connected_components(
        g
    )
    # a bridge: a link whose removal adds a component (multigraph aware, brute force)
    base = nx.number_connected_components(g)
    bridge = set()
    for u, v, k in list(g.edges(keys=True)):
        data = g.edges[u, v, k]
        g.remove_edge(u, v, k)
        if nx.number_connected_components(g) > base:
            bridge.add(k)
        g.add_edge(u, v, k, **data)
    assert set(info.bridges) == bridge
    assert set(info.on_loop) == {k for *_, k in g.edges(keys=True)} - bridge
    assert len(bridge) and len(info.on_loop)
    for k in wn.link_name_list:
        loop = loop_through(net, k, closed=closed)
        if k in bridge or k in closed:
            assert loop is None
            continue
        assert loop.link_ids[0] == k and loop.node_ids[0] == loop.node_ids[-1]
        u, v = wn.get_link(k).start_node_name, wn.get_link(k).end_node_name
        data = g.get_edge_data(u, v)[k]
        g.remove_edge(u, v, k)
        rest = nx.dijkstra_path_length(g, u, v, weight="length")
        g.add_edge(u, v, k, **data)
        assert loop.length == pytest.approx(data["length"] + rest)
        assert len(set(loop.links.tolist())) == len(loop.links)


def test_source_direction_follows_the_distance_from_the_sources(net3):
    wn, net = net3
    sources = wn.reservoir_name_list + wn.tank_name_list
    closed = _closed(wn)[:2]
    direction = source_direction(net, sources, closed=closed)
    # pumps count as MIN_LENGTH (1 mm): a pump next to the source side points away from it
    g = _graph(wn, closed, pump_length=MIN_LENGTH)
    dist = nx.multi_source_dijkstra_path_length(g, set(sources), weight="length")
    for k, d in zip(net.link_ids, direction, strict=True):
        link = wn.get_link(k)
        if k in closed:
            assert d == NONE
            continue
        du = dist.get(link.start_node_name, np.inf)
        dv = dist.get(link.end_node_name, np.inf)
        assert d == (FORWARD if du < dv else BACKWARD if du > dv else BOTH)
    # downstream of the sources, over these directions, is everything they are connected to
    # (along each node's shortest path from its nearest source every link points onwards)
    assert set(downstream(net, direction, sources, closed=closed).node_ids) == set(
        connected(net, sources, closed=closed).node_ids
    )
    assert set(downstream(net, direction, sources[:1], closed=closed).node_ids) < set(
        connected(net, sources[:1], closed=closed).node_ids
    )
    with pytest.raises(InvalidInput, match="no sources"):
        source_direction(net, [])


def test_flow_direction_trace_from_an_epanet_run(net3, tmp_path):
    wn, net = net3
    results = wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=str(tmp_path / "net3"))
    flow = results.link["flowrate"].loc[3600, list(net.link_ids)].to_numpy()
    direction = flow_direction(flow, tolerance=1e-9)
    assert (direction == NONE).any() and (direction == FORWARD).any()
    assert (direction == BACKWARD).any()
    g = nx.DiGraph()
    g.add_nodes_from(net.node_ids)
    for (a, b), d in zip(net.node_ids[net.link_nodes], direction, strict=True):
        if d == FORWARD:
            g.add_edge(a, b)
        elif d == BACKWARD:
            g.add_edge(b, a)
    for node in wn.node_name_list:
        assert set(downstream(net, direction, node).node_ids) == {node} | nx.descendants(g, node)
        assert set(upstream(net, direction, node).node_ids) == {node} | nx.ancestors(g, node)
    # water comes from somewhere: every junction drawing water at 1 h has a reservoir or a
    # tank upstream
    demand = results.node["demand"].loc[3600]
    supply = set(wn.reservoir_name_list + wn.tank_name_list)
    drawing = [n for n in wn.junction_name_list if demand[n] > 1e-9]
    assert len(drawing) > 50
    for node in drawing:
        assert supply & set(upstream(net, direction, node).node_ids), node
    # and the sources feeding a node over the flow directions are its upstream sources
    some = drawing[0]
    assert set(feeding_sources(net, some, sorted(supply), direction=direction)) == supply & (
        nx.ancestors(g, some) | {some}
    )


@pytest.fixture(scope="module")
def epsilon(tmp_path_factory):
    """The pystorms "epsilon" sewer read by the SWMM engine itself (pyswmm): conduits with the
    invert levels at their two ends, weirs without."""
    import pyswmm

    path = tmp_path_factory.mktemp("swmm") / "epsilon.inp"
    shutil.copy(package_data("pystorms", "networks/epsilon.inp"), path)
    with pyswmm.Simulation(str(path)) as sim:
        nodes = list(pyswmm.Nodes(sim))
        invert = {n.nodeid: n.invert_elevation for n in nodes}
        outfalls = [n.nodeid for n in nodes if n.is_outfall()]
        rows = []
        for link in pyswmm.Links(sim):
            a, b = link.inlet_node, link.outlet_node
            if link.is_conduit():
                levels = (invert[a] + link.inlet_offset, invert[b] + link.outlet_offset)
            else:
                levels = (np.nan, np.nan)
            rows.append((link.linkid, a, b, *levels))
    return list(invert), outfalls, rows


def _sewer(node_ids, rows, flip=()):
    """A network of the sewer's links; links in ``flip`` drawn the other way round."""
    ids, a, b, ia, ib = (list(c) for c in zip(*rows, strict=True))
    for i, k in enumerate(ids):
        if k in flip:
            a[i], b[i], ia[i], ib[i] = b[i], a[i], ib[i], ia[i]
    net = network_from_ids(node_ids, ids, a, b).network
    return net, gravity_direction(np.array(ia), np.array(ib))


def test_gravity_trace_on_a_real_sewer(epsilon):
    node_ids, outfalls, rows = epsilon
    assert len(outfalls) == 1 and len(rows) > 70
    net, direction = _sewer(node_ids, rows)
    # draw every other falling conduit against the flow: the levels, not the drawing, decide
    # (a flat one is taken as drawn)
    falling = [r[0] for r in rows if r[3] > r[4]]
    assert len(falling) > 60
    flipped, flipped_dir = _sewer(node_ids, rows, flip=set(falling[::2]))
    assert (flipped_dir == BACKWARD).sum() == len(falling[::2])
    everything = set(node_ids)
    for node in node_ids:
        down = downstream(net, direction, node)
        up = upstream(net, direction, node)
        assert outfalls[0] in set(down.node_ids)  # every manhole drains to the outfall
        assert set(down.node_ids) & set(up.node_ids) == {node}  # nothing upstream is downstream
        assert set(downstream(flipped, flipped_dir, node).node_ids) == set(down.node_ids)
        assert set(upstream(flipped, flipped_dir, node).node_ids) == set(up.node_ids)
    assert set(upstream(net, direction, outfalls[0]).node_ids) == everything
    # a closed weir holds back what lies upstream of it
    weir = next(r[0] for r in rows if not np.isfinite(r[3]))
    k = int(net.link_index(weir)[0])
    above = int(net.link_nodes[k, 0])
    held = downstream(net, direction, net.node_ids[above], closed=[weir])
    assert outfalls[0] not in set(held.node_ids)


def test_hand_made_sewer_and_start_links():
    #   A → B → D (outfall); C → B; E → D, drawn D → E but falling towards D
    net = network_from_ids(
        ["A", "B", "C", "D", "E"],
        ["ab", "cb", "bd", "de"],
        ["A", "C", "B", "D"],
        ["B", "B", "D", "E"],
    ).network
    direction = gravity_direction(np.array([10, 11, 9, 7.0]), np.array([9.5, 9.2, 8, 8.0]))
    assert direction.tolist() == [FORWARD, FORWARD, FORWARD, BACKWARD]
    assert set(downstream(net, direction, "A").node_ids) == {"A", "B", "D"}
    assert set(upstream(net, direction, "B").node_ids) == {"A", "B", "C"}
    assert set(upstream(net, direction, "D").link_ids) == {"ab", "cb", "bd", "de"}
    # from a link: its downstream end onwards / its upstream end backwards
    down = downstream(net, direction, links="cb")
    assert set(down.node_ids) == {"B", "D"} and set(down.link_ids) == {"cb", "bd"}
    assert set(upstream(net, direction, links="bd").node_ids) == {"A", "B", "C"}
    assert set(upstream(net, direction, links="de").node_ids) == {"E"}
    gj = down.to_geojson()
    assert len(gj["features"]) == 4 and gj["features"][0]["geometry"] is None
    with pytest.raises(InvalidInput, match="direction has shape"):
        downstream(net, direction[:2], "A")


def test_trace_geojson_uses_positions_and_geometry(net3):
    _, net = net3
    path = shortest_path(net, "River", "1")
    gj = path.to_geojson(properties={"query": "path"})
    features = gj["features"]
    assert len(features) == len(path.links) + len(path.nodes)
    first = features[0]
    assert first["properties"] == {"feature": "link", "id": path.link_ids[0], "seq": 0,
                                   "query": "path"}
    xy = net.node_xy[net.link_nodes[path.links[0]]]
    assert first["geometry"]["coordinates"] == xy.tolist()
    node = features[len(path.links)]
    assert node["geometry"]["coordinates"] == net.node_xy[path.nodes[0]].tolist()

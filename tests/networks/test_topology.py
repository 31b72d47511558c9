"""Topology: the KY4 GIS layers built from geometry equal wntr's ky4.inp; the check finds the
real findings of KY4 and exactly the damage done to a copy of it."""

from __future__ import annotations

from collections import Counter

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pytest
import shapely
import wntr

from citytwin.errors import InvalidInput
from citytwin.networks.topology import (
    ADVERSE_SLOPE,
    AMBIGUOUS_END,
    DANGLING_END,
    DISCONNECTED,
    DUPLICATE_LINK,
    ISOLATED_NODE,
    MISSING_NODE,
    NEAR_MISS,
    NEAR_MISS_LINK,
    NO_SOURCE,
    PARALLEL_LINK,
    SELF_LOOP,
    ZERO_LENGTH,
    LinkEnds,
    check_topology,
    network_from_geometry,
    network_from_ids,
)
from tests.conftest import SHARED_DATA, package_data

METRIC = "EPSG:3546"  # KY single zone in metres: the layers' own projection (EPSG:3547, ftUS)


@pytest.fixture(scope="module")
def ky4() -> dict[str, gpd.GeoDataFrame]:
    folder = SHARED_DATA / "ky4"
    if not folder.is_dir():
        pytest.fail(f"the KY4 layers are missing: expected {folder}")
    return {
        k: gpd.read_file(folder / f"ky4_{k}.geojson").to_crs(METRIC)
        for k in ("junctions", "pipes", "pumps", "reservoirs", "tanks")
    }


@pytest.fixture(scope="module")
def ky4_inp() -> wntr.network.WaterNetworkModel:
    return wntr.network.WaterNetworkModel(str(package_data("wntr", "library/networks/ky4.inp")))


def _nodes(layers):
    nodes = pd.concat([layers["junctions"], layers["reservoirs"], layers["tanks"]])
    return nodes.reset_index(drop=True)


def _supply(layers) -> np.ndarray:
    return np.r_[layers["reservoirs"]["name"], layers["tanks"]["name"]].astype(object)


def _build(layers, pipes=None, **kw):
    nodes, pumps = _nodes(layers), layers["pumps"]
    pipes = layers["pipes"] if pipes is None else pipes
    return network_from_geometry(  # pipes by geometry only: their node-name columns unused
        pipes.geometry.to_numpy(),
        pipes["name"],
        node_points=nodes.geometry.to_numpy(),
        node_ids=nodes["name"],
        tolerance=0.05,
        point_links=LinkEnds(
            pumps["name"], pumps["start_node_name"], pumps["end_node_name"], pumps.geometry.values
        ),
        **kw,
    )


def _partition(groups) -> set[frozenset]:
    return {frozenset(g) for g in groups}


def test_ky4_from_geometry_equals_the_inp(ky4, ky4_inp):
    built = _build(ky4, sources=ky4["reservoirs"]["name"])
    net = built.network
    graph = ky4_inp.to_graph()  # MultiDiGraph: parallel pipes stay apart
    assert set(net.node_ids) == set(graph.nodes) and net.n_links == graph.number_of_edges()
    assert len(built.added_nodes) == 0
    # same node degrees
    degree = dict(zip(net.node_ids, net.degree.tolist(), strict=True))
    assert degree == dict(graph.degree())
    # same components
    _, label = net.components()
    ours = pd.Series(net.node_ids).groupby(label).apply(list)
    assert _partition(ours) == _partition(nx.connected_components(graph.to_undirected()))
    # and every link joins the same two nodes, in the same direction
    got = net.node_ids[net.link_nodes]
    want = [(ky4_inp.get_link(k).start_node_name, ky4_inp.get_link(k).end_node_name)
            for k in net.link_ids]
    assert [tuple(p) for p in got] == want
    # the pumps' inlet and outlet nodes are drawn at one place: the four pipe ends there are
    # the only guesses, and they are listed
    guess = built.issues[built.issues["kind"] == AMBIGUOUS_END]
    assert len(built.issues) == len(guess) == 4
    assert set(guess["link"]) == {
        ky4_inp.get_link(link).name
        for pump in ky4_inp.pump_name_list
        for end in (ky4_inp.get_link(pump).start_node_name, ky4_inp.get_link(pump).end_node_name)
        for link in ky4_inp.get_links_for_node(end)
        if link != pump
    }


def test_ky4_without_sources_still_has_the_inp_degrees(ky4, ky4_inp):
    """Without a source the pump ends are still dealt one per node: degrees and components
    hold, and only the four pipes at the pumps may be turned round."""
    net = _build(ky4).network
    graph = ky4_inp.to_graph()
    assert dict(zip(net.node_ids, net.degree.tolist(), strict=True)) == dict(graph.degree())
    assert net.components()[0] == nx.number_connected_components(graph.to_undirected())
    differ = {
        k
        for k, (a, b) in zip(net.link_ids, net.node_ids[net.link_nodes], strict=True)
        if (a, b) != (ky4_inp.get_link(k).start_node_name, ky4_inp.get_link(k).end_node_name)
    }
    assert differ <= set(_build(ky4).issues["link"])


def _rows(report) -> set[tuple]:
    return {
        (r.kind, r.node, r.link, r.other)
        for r in report.issues.itertuples(index=False)
    }


def test_ky4_check_finds_what_the_data_holds(ky4, ky4_inp):
    built = _build(ky4, sources=ky4["reservoirs"]["name"])
    net = built.network
    report = check_topology(
        net,
        link_geometry=built.link_geometry,
        terminals=_supply(ky4),
        sources=_supply(ky4),
        near_miss=1.0,
    )
    multi = ky4_inp.to_graph().to_undirected()
    # dead ends: the junctions of degree one in the inp
    dead = {n for n, d in multi.degree() if d == 1 and n not in set(_supply(ky4))}
    assert set(report.of(DANGLING_END)["node"]) == dead and len(dead) > 100
    # parallel pipes: node pairs joined more than once in the inp, each extra pipe listed
    pairs = Counter(frozenset(e) for e in multi.edges())
    extra = sum(c - 1 for c in pairs.values())
    assert len(report.of(PARALLEL_LINK)) == extra > 0
    assert report.of(DUPLICATE_LINK).empty
    # near-misses to a pipe's interior, by brute force over every node and pipe
    nodes = _nodes(ky4)
    pipes = ky4["pipes"]
    xy = shapely.get_coordinates(nodes.geometry.to_numpy())
    d = shapely.distance(
        shapely.points(xy)[:, None], pipes.geometry.to_numpy()[None, :]
    )  # (nodes, pipes)
    end_names = np.stack([pipes["start_node_name"], pipes["end_node_name"]], axis=1)
    pos = dict(zip(nodes["name"], xy, strict=True))
    expect = set()
    for i, j in zip(*np.nonzero(d <= 1.0), strict=True):
        name = nodes["name"][i]
        if name in end_names[j]:
            continue
        if all(np.hypot(*(xy[i] - pos[e])) > 1.0 for e in end_names[j]):
            expect.add((name, pipes["name"][j]))
    found = set(zip(report.of(NEAR_MISS_LINK)["node"], report.of(NEAR_MISS_LINK)["other"],
                    strict=True))
    assert found == expect and len(expect) > 0
    # everything else is clean: one component with a source, no isolated nodes
    assert set(report.counts()) == {DANGLING_END, PARALLEL_LINK, NEAR_MISS_LINK}
    assert report.components[["n_nodes", "n_links", "has_source"]].values.tolist() == [
        [net.n_nodes, net.n_links, True]
    ]
    # the GeoJSON has one point per finding
    gj = report.to_geojson()
    assert len(gj["features"]) == len(report.issues)
    assert gj["features"][0]["geometry"]["type"] == "Point"


def _pick_sites(ky4_inp, supply):
    """Deterministic places to damage: a pipe ending a dead-end branch (its far node of
    degree 2), a junction of degree ≥ 3 (to move a pipe end away from), a pipe without
    parallels (to copy), a junction of degree ≥ 2 (for a zero-length pipe)."""
    g = ky4_inp.to_graph().to_undirected()
    deg = dict(g.degree())
    pipes = sorted(ky4_inp.pipe_name_list)
    twins = Counter(frozenset(e[:2]) for e in g.edges(keys=True))

    def ends(p):
        link = ky4_inp.get_link(p)
        return link.start_node_name, link.end_node_name

    delete = next(
        p for p in pipes
        if sorted(deg[n] for n in ends(p)) == [1, 2] and not set(ends(p)) & set(supply)
    )
    taken = set(ends(delete))
    move = next(p for p in pipes if deg[ends(p)[1]] >= 3 and not set(ends(p)) & taken)
    taken |= set(ends(move))
    copy = next(p for p in pipes if twins[frozenset(ends(p))] == 1 and not set(ends(p)) & taken)
    taken |= set(ends(copy))
    zero = next(  # not at a pump, where two nodes share one place
        n for n in sorted(ky4_inp.junction_name_list)
        if deg[n] >= 2 and n not in taken and n.startswith("J-")
    )
    adverse = next(p for p in pipes if p not in (delete, move, copy))
    return delete, move, copy, zero, adverse


def test_ky4_check_reports_exactly_the_damage(ky4, ky4_inp):
    supply = _supply(ky4)
    base_built = _build(ky4, sources=ky4["reservoirs"]["name"])
    base = check_topology(
        base_built.network, link_geometry=base_built.link_geometry, terminals=supply,
        sources=supply, near_miss=1.0,
    )
    delete, move, copy, zero, adverse = _pick_sites(ky4_inp, supply)
    g = ky4_inp.to_graph().to_undirected()
    pipes = ky4["pipes"].set_index("name", drop=False)
    # 1. delete a pipe ending a dead-end branch
    a, b = ky4_inp.get_link(delete).start_node_name, ky4_inp.get_link(delete).end_node_name
    loose, inner = (a, b) if g.degree(a) == 1 else (b, a)
    inner_other = next(k for _, _, k in g.edges(inner, keys=True) if k != delete)
    damaged = pipes.drop(index=delete)
    # 2. move the end of a pipe 0.5 m off its node, square to its last segment
    line = damaged.loc[move, "geometry"]
    c = shapely.get_coordinates(line)
    step = c[-1] - c[-2]
    off = np.array([-step[1], step[0]]) / np.hypot(*step) * 0.5
    c[-1] = c[-1] + off
    damaged.loc[move, "geometry"] = shapely.LineString(c)
    moved_from = ky4_inp.get_link(move).end_node_name
    # 3. a copy of a pipe, 4. a zero-length pipe at a junction
    at = _nodes(ky4).set_index("name").loc[zero, "geometry"]
    extra = gpd.GeoDataFrame(
        {"name": ["DUP-1", "ZERO-1"]},
        geometry=[damaged.loc[copy, "geometry"], shapely.LineString([at, at])],
        crs=damaged.crs,
    )
    damaged = pd.concat([damaged, extra], ignore_index=True)
    built = _build(ky4, pipes=damaged, sources=ky4["reservoirs"]["name"])
    net = built.network
    assert list(built.added_nodes) == ["~node-1"]
    # 5. an adverse sewer: every pipe falls 1 cm from its from-node, one rises 0.5 m
    k_adv = int(net.link_index(adverse)[0])
    inv_from = np.full(net.n_links, 100.0)
    inv_to = np.full(net.n_links, 99.99)
    inv_to[k_adv] = 100.5
    inv_from[net.n_links - 2 :] = inv_to[net.n_links - 2 :] = np.nan  # the pumps: no levels
    report = check_topology(
        net, link_geometry=built.link_geometry, terminals=supply, sources=supply,
        near_miss=1.0, invert_from=inv_from, invert_to=inv_to,
    )
    new = _rows(report) - _rows(base)
    gone = _rows(base) - _rows(report)
    assert new == {
        (ISOLATED_NODE, loose, None, None),
        (DANGLING_END, inner, inner_other, None),
        (DANGLING_END, "~node-1", move, None),
        (NEAR_MISS, "~node-1", None, moved_from),
        (DUPLICATE_LINK, None, "DUP-1", copy),
        (ZERO_LENGTH, None, "ZERO-1", None),
        (ADVERSE_SLOPE, None, adverse, None),
    }
    assert gone == {(DANGLING_END, loose, delete, None)}  # it lost its last link
    by_kind = report.issues.set_index("kind")
    assert by_kind.loc[NEAR_MISS, "value"] == pytest.approx(0.5, abs=1e-6)
    assert by_kind.loc[ADVERSE_SLOPE, "value"] == pytest.approx(0.5)
    assert by_kind.loc[ZERO_LENGTH, "value"] == 0.0
    # located where the damage is
    near = report.of(NEAR_MISS).iloc[0]
    assert (near.x, near.y) == pytest.approx(tuple(c[-1]))
    iso = report.of(ISOLATED_NODE).iloc[0]
    loose_at = _nodes(ky4).set_index("name").loc[loose, "geometry"]
    assert (iso.x, iso.y) == (loose_at.x, loose_at.y)


def test_components_and_sources_on_a_split_network():
    # two pieces, the second without a source; a self-loop with length; a lone node
    built = network_from_ids(
        ["S", "A", "B", "C", "D", "L"],
        ["1", "2", "3", "4"],
        ["S", "A", "C", "D"],
        ["A", "B", "D", "D"],
        node_xy=np.array([[0, 0], [10, 0], [20, 0], [0, 50], [10, 50], [99, 99]], float),
        link_length=np.array([10.0, 10.0, 10.0, 5.0]),
    )
    report = check_topology(built.network, terminals=["S"], sources=["S"], near_miss=0.5)
    assert report.components[["n_nodes", "n_links", "has_source"]].values.tolist() == [
        [3, 2, True], [2, 2, False], [1, 0, False]
    ]
    assert report.of(DISCONNECTED)[["node", "value"]].values.tolist() == [["C", 2.0]]
    assert report.of(NO_SOURCE)["node"].tolist() == ["C"]
    assert report.of(ISOLATED_NODE)["node"].tolist() == ["L"]
    assert report.of(SELF_LOOP)["link"].tolist() == ["4"]
    assert report.of(DANGLING_END)[["node", "link"]].values.tolist() == [["B", "2"], ["C", "3"]]


def test_tolerant_build_from_ids_keeps_every_link():
    built = network_from_ids(
        ["A", "B"],
        ["1", "2", "3"],
        ["A", "B", "B"],
        ["B", "X", None],
        node_xy=np.array([[0.0, 0.0], [1.0, 0.0]]),
        link_end_xy=np.array([[[0, 0], [1, 0]], [[1, 0], [2, 0]], [[1, 0], [1, 1]]], float),
    )
    net = built.network
    assert list(net.link_ids) == ["1", "2", "3"]
    assert list(built.added_nodes) == ["X", "3:to"]
    assert built.issues[["kind", "node", "link"]].values.tolist() == [
        [MISSING_NODE, "X", "2"], [MISSING_NODE, "3:to", "3"]
    ]
    assert net.node_xy[net.node_index("X")[0]].tolist() == [2.0, 0.0]
    assert net.degree.tolist() == [1, 3, 1, 1]
    with pytest.raises(InvalidInput, match="link id '1' appears more than once"):
        network_from_ids(["A", "B"], ["1", "1"], ["A", "A"], ["B", "B"])


def test_geometry_without_nodes_snaps_ends_together():
    lines = [
        shapely.LineString([(0, 0), (10, 0)]),
        shapely.LineString([(10.004, 0.003), (10, 10)]),  # 5 mm off: same node
        shapely.MultiLineString([[(10, 0.002), (20, 0)]]),  # one part: taken as a line
        shapely.LineString([(20.2, 0), (30, 0)]),  # 20 cm off: a gap
    ]
    built = network_from_geometry(lines, ["a", "b", "c", "d"], tolerance=0.01)
    net = built.network
    assert net.n_nodes == 6 and net.degree.tolist() == [1, 3, 1, 1, 1, 1]
    assert net.link_nodes[:3, 0].tolist() == [0, 1, 1]
    report = check_topology(net, link_geometry=built.link_geometry, near_miss=0.5)
    assert report.of(NEAR_MISS)[["node", "other"]].values.tolist() == [["~node-4", "~node-5"]]
    assert report.of(NEAR_MISS)["value"][0] == pytest.approx(0.2)
    exact = network_from_geometry(
        lines[:2], ["a", "b"], node_points=np.array([[10.0, 0.0]]), node_ids=["N"], tolerance=0
    )
    assert exact.network.node_ids.tolist() == ["N", "~node-1", "~node-2", "~node-3"]
    assert exact.network.link_nodes.tolist() == [[1, 0], [2, 3]]  # only the exact end snaps
    with pytest.raises(InvalidInput, match="disjoint parts") as err:
        network_from_geometry(
            [lines[0], shapely.MultiLineString([[(0, 0), (1, 0)], [(5, 5), (6, 6)]])],
            ["a", "b"],
        )
    assert err.value.feature == "b"
    with pytest.raises(InvalidInput, match="no geometry"):
        network_from_geometry([None], ["a"])

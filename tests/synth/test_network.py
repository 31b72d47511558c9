"""The large virtual water network for benchmarks: the size asked for, one connected network
fed by its sources, buildings with people, valves where a utility puts them, and frames the
model takes."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import wntr
from scipy.sparse.csgraph import dijkstra

from citytwin.errors import InvalidInput
from citytwin.formats.base import load_bundle
from citytwin.model import validate_frame
from citytwin.store import Query, create_store
from citytwin.synth.layout import CRS
from citytwin.synth.network import CRITICAL, plan_water_network
from citytwin.synth.water import DN, LITRES_PER_DAY, SERVICE_DN


@pytest.fixture(scope="module")
def plan():
    return plan_water_network(20_000, seed=3)


@pytest.mark.parametrize("pipes", [500, 3_000, 20_000])
def test_the_network_has_the_pipes_asked_for(pipes):
    p = plan_water_network(pipes, seed=1)
    assert len(p.link_ids) == pytest.approx(pipes, rel=0.03)
    assert len(p.link_ids) == len(p.link_nodes) == len(p.diameter) == len(p.length)
    assert set(p.link_class) == {"pipe", "service_pipe"}
    assert set(p.node_class) == {"junction", "reservoir", "tank", "service_connection", "hydrant"}
    # one service pipe per service connection; nodes and links have unique, prefixed ids
    assert (p.link_class == "service_pipe").sum() == (p.node_class == "service_connection").sum()
    for ids in (p.node_ids, p.link_ids):
        assert pd.Index(ids).is_unique and all(x.startswith("ws:") for x in ids)
    assert p.notes["virtual"] and "virtual" in p.notes["source"]


def test_the_plan_is_deterministic_from_the_seed(plan):
    again = plan_water_network(20_000, seed=3)
    for name in ("node_ids", "node_xy", "link_nodes", "diameter", "valve_link", "valve_node"):
        assert np.array_equal(getattr(plan, name), getattr(again, name)), name
    other = plan_water_network(20_000, seed=4)
    assert not np.array_equal(other.node_xy[:100], plan.node_xy[:100])


def test_one_network_fed_by_its_sources_and_tanks(plan):
    net = plan.network()
    count, _ = net.components()
    assert count == 1
    assert len(plan.sources) >= 2 and len(plan.tanks) >= 1
    # every node is reached from the sources; service connections and hydrants are leaves
    dist = dijkstra(net.adjacency(), indices=plan.sources, min_only=True, unweighted=True)
    assert np.isfinite(dist).all()
    degree = net.degree
    leaves = np.isin(plan.node_class, ["service_connection", "hydrant", "reservoir", "tank"])
    assert (degree[leaves] == 1).all()
    # an irregular street lattice: crossings, T-junctions and dead ends (cul-de-sacs)
    street = np.arange(plan.notes["street_junctions"])
    mains_only = net.adjacency(plan.link_class == "pipe")
    street_degree = np.diff(mains_only.indptr)[street]
    for d in (1, 2, 3, 4):
        assert (street_degree == d).any(), d
    # blocks 80-150 m: street links between corners, split at the tees into short pipes
    main = plan.link_class == "pipe"
    assert 2.0 < np.median(plan.length[main]) < 30.0
    assert plan.length.min() > 0


def test_buildings_have_people_and_demand(plan):
    sc = plan.node_class == "service_connection"
    residents = plan.residents[sc]
    assert residents.dtype.kind == "i" and (residents >= 0).all()
    assert (plan.residents[~sc] == 0).all() and (plan.demand[~sc] == 0).all()
    # mostly homes, a few large buildings, some non-residential
    assert 0.75 < np.mean(residents > 0) < 0.95
    assert 2 <= np.median(residents) <= 10 and residents.max() >= 150
    assert 3 < residents.mean() < 20
    # 180 L a resident a day at a home
    home = sc & (plan.residents > 0)
    litres = plan.demand[home] * 86400 * 1000 / plan.residents[home]
    assert np.allclose(litres, LITRES_PER_DAY["residential"][0])
    assert (plan.demand[sc] > 0).all()
    # critical facilities sit on non-residential service connections
    kinds = pd.Series(plan.critical[sc]).value_counts()
    assert set(kinds.index) == set(CRITICAL) and kinds["school"] > kinds["hospital"]
    critical = pd.notna(plan.critical)
    assert (plan.residents[critical] == 0).all() and not critical[~sc].any()


def test_diameters_are_standard_and_shrink_away_from_the_sources(plan):
    main = plan.link_class == "pipe"
    assert np.isin(np.round(plan.diameter[main], 3), np.round(DN, 3)).all()
    assert np.isin(np.round(plan.diameter[~main], 3), np.round(SERVICE_DN, 3)).all()
    net = plan.network()
    reach = dijkstra(net.adjacency(weights=plan.length), indices=plan.sources, min_only=True)
    ends = plan.node_class[plan.link_nodes]
    street = main & (ends == "junction").all(axis=1)
    near = reach[plan.link_nodes[:, 0]]
    close = street & (near <= np.quantile(near[street], 0.05))
    far = street & (near >= np.quantile(near[street], 0.5))
    assert plan.diameter[close].mean() > 1.1 * plan.diameter[far].mean()
    # the mains leaving each source's junction are among the largest
    fed = plan.link_nodes[np.isin(plan.link_nodes[:, 0], plan.sources), 1]
    for j in fed:
        out = street & (plan.link_nodes == j).any(axis=1)
        assert plan.diameter[out].max() >= np.quantile(plan.diameter[street], 0.9)
    # each source main is larger than any service pipe and at least DN300
    source_mains = np.isin(plan.link_nodes[:, 0], plan.sources)
    assert (plan.diameter[source_mains] >= 0.3).all()
    assert plan.diameter[~main].max() < plan.diameter[source_mains].min()


def test_valves_isolate_small_segments(plan):
    ends = plan.link_nodes[plan.valve_link]
    assert ((ends[:, 0] == plan.valve_node) | (ends[:, 1] == plan.valve_node)).all()
    pairs = pd.DataFrame({"link": plan.valve_link, "node": plan.valve_node})
    assert not pairs.duplicated().any()
    # N-1 at every street junction: valves on all its branches but one
    net = plan.network()
    street = np.arange(plan.notes["street_junctions"])
    per_node = np.bincount(plan.valve_node, minlength=net.n_nodes)
    assert (per_node[street] == np.maximum(net.degree[street] - 1, 0)).all()
    # always on the source and tank mains, and on every hydrant lateral, at the main
    feeds = np.flatnonzero(np.isin(plan.link_nodes, np.r_[plan.sources, plan.tanks]).any(axis=1))
    assert set(feeds) <= set(plan.valve_link)
    laterals = np.flatnonzero(plan.node_class[plan.link_nodes[:, 1]] == "hydrant")
    valved = dict(zip(plan.valve_link, plan.valve_node, strict=True))
    assert all(valved.get(k) == plan.link_nodes[k, 0] for k in laterals)


def test_wntr_segments_the_network_by_its_valves():
    small = plan_water_network(1_500, seed=2)
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(small.node_ids)
    for k, (a, b) in enumerate(small.link_nodes):
        graph.add_edge(small.node_ids[a], small.node_ids[b], key=small.link_ids[k])
    layer = pd.DataFrame(
        {"link": small.link_ids[small.valve_link], "node": small.node_ids[small.valve_node]}
    )
    _, link_seg, size = wntr.metrics.valve_segments(graph, layer)
    # a burst shuts off a street or two: a few dozen pipes, not the city
    assert len(size) > 20
    assert size["link"].max() <= 0.1 * len(small.link_ids)
    service = small.link_class == "service_pipe"
    per_segment = pd.Series(link_seg[small.link_ids[service]].to_numpy()).value_counts()
    assert 2 <= per_segment.median() <= 60


def test_the_frames_go_into_a_twin_labelled_virtual(plan, tmp_path):
    small = plan_water_network(1_000, seed=5)
    frames = small.frames()
    nodes, links = frames["utility_nodes"], frames["utility_links"]
    assert nodes.crs == links.crs == CRS
    for layer_name, frame in frames.items():
        validate_frame(layer_name, frame)
    valves = nodes[nodes["class"] == "valve"]
    assert len(valves) == len(small.valve_link)
    assert set(valves["link_id"]) <= set(links["id"])
    assert [p["node"] for p in valves["props"]] == list(small.node_ids[small.valve_node])
    assert len(nodes) == len(small.node_ids) + len(valves) and len(links) == len(small.link_ids)
    sc = nodes[nodes["class"] == "service_connection"]
    assert [p["residents"] for p in sc["props"]] == list(small.residents[small.sc_index])
    meta = small.twin_meta()
    assert meta.virtual and "VIRTUAL" in meta.description
    store = create_store(tmp_path / "network.twin", meta)
    try:
        counts = load_bundle(store, small.bundle())
        assert counts == {"utility_nodes": len(nodes), "utility_links": len(links)}
        stored = store.query(Query("utility_links", classes=["service_pipe"]))
        assert len(stored) == (small.link_class == "service_pipe").sum()
        assert store.meta.virtual
    finally:
        store.close()


def test_a_tiny_network_is_refused_with_a_hint():
    with pytest.raises(InvalidInput, match="too small") as err:
        plan_water_network(10)
    assert "at least" in err.value.hint

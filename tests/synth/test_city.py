"""The whole virtual city in a twin: every building served, nothing above ground, the real
engines content, and what the demo prints."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from citytwin.app.networks import CRITICAL_FACILITIES, check_network, impact_weights
from citytwin.demo import engine_checks, network_lengths
from citytwin.store import Query, open_store
from citytwin.synth.city import build_city, plan_city


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    store = build_city(tmp_path_factory.mktemp("city") / "city.twin", 4.0, seed=2)
    yield store
    store.close()


def test_every_building_is_served_by_water_sewer_and_power(twin):
    buildings = set(twin.query(Query("buildings"))["id"])
    nodes = twin.query(Query("utility_nodes", classes=["service_connection"]))
    served = {net: set(group["building_id"].dropna()) for net, group in nodes.groupby("network")}
    assert served["water_supply"] == buildings
    assert served["sewer"] | served.get("combined", set()) == buildings
    assert served["power"] == buildings


def test_nothing_floats_above_ground(twin):
    nodes = twin.query(Query("utility_nodes"))
    with_levels = nodes.dropna(subset=["cover_level", "invert_level"])
    assert len(with_levels) > 1000
    assert (with_levels["invert_level"] < with_levels["cover_level"]).all()
    links = twin.query(Query("utility_links"))
    buried = links.dropna(subset=["depth"])
    assert len(buried) > 1000 and (buried["depth"] > 0).all()


def test_links_join_existing_nodes_of_their_network(twin):
    nodes = twin.query(Query("utility_nodes")).set_index("id")
    links = twin.query(Query("utility_links"))
    for end in ("from_node", "to_node"):
        assert links[end].isin(nodes.index).all()
        assert (nodes.loc[links[end], "network"].to_numpy() == links["network"].to_numpy()).all()


def test_networks_and_engine_checks_as_the_demo_reports_them():
    city = plan_city(4.0, seed=2)
    table = engine_checks(city)
    results = list(table.columns[1].cells)
    assert results == ["[green]passed[/]"] * 3


def test_network_lengths_cover_every_utility(twin):
    table = network_lengths(twin)
    networks = list(table.columns[0].cells)
    assert set(networks) >= {"water_supply", "sewer", "storm", "gas", "power", "telecom"}
    km = np.array([float(v) for v in table.columns[1].cells])
    assert (km > 1).all()


@pytest.fixture(scope="module")
def default_city(virtual_city):
    """The default virtual city (4 km², seed 1), read-only."""
    store = open_store(virtual_city, read_only=True)
    yield store
    store.close()


@pytest.mark.parametrize("network", ["gas", "power", "heating", "telecom"])
def test_energy_and_telecom_networks_have_no_topology_errors(default_city, network):
    data, report = check_network(default_city, network)
    assert len(data.links) > 50
    assert report.ok, report.issues.head(10).to_string()


def test_power_runs_radially_from_the_substations(default_city):
    """Through the cables that carry (the normally-open ties are closed), every node hangs on
    exactly one substation by exactly one way."""
    data, _ = check_network(default_city, "power")
    graph, live = data.graph, ~data.closed_links
    assert 0 < (~live).sum() < 0.1 * len(live)
    ends = graph.link_nodes[live]
    n = graph.n_nodes
    adjacency = sparse.coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(n, n))
    k, label = connected_components(adjacency, directed=False)
    assert live.sum() == n - k  # a forest
    substations = np.bincount(label[data.node_class == "substation"], minlength=k)
    assert (substations == 1).all()


def test_every_critical_facility_is_a_building_served_with_water(default_city):
    facilities = default_city.query(Query("facilities", classes=list(CRITICAL_FACILITIES)))
    assert set(facilities["class"]) == set(CRITICAL_FACILITIES)
    buildings = default_city.query(Query("buildings")).set_index("id")
    assert facilities["building_id"].isin(buildings.index).all()
    housed = buildings.loc[facilities["building_id"]]
    assert shapely.contains(housed.geometry.to_numpy(), facilities.geometry.to_numpy()).all()
    stations = housed[(facilities["class"] == "fire_station").to_numpy()]
    assert (stations["use"] == "fire_station").all() and (stations["floors"] >= 2).all()
    # served by water, sewer and power, and counted where a burst cuts their water off
    nodes = default_city.query(Query("utility_nodes", classes=["service_connection"]))
    links = default_city.query(Query("utility_links"))
    joined = nodes[nodes["id"].isin(links["to_node"]) | nodes["id"].isin(links["from_node"])]
    served = {net: set(g["building_id"]) for net, g in joined.groupby("network")}
    for net in ("water_supply", "power"):
        assert set(facilities["building_id"]) <= served[net], net
    drained = set(nodes.loc[nodes["network"].isin(["sewer", "combined"]), "building_id"])
    assert set(facilities["building_id"]) <= drained
    weights = impact_weights(default_city, check_network(default_city, "water_supply")[0])
    for kind in CRITICAL_FACILITIES:
        assert weights[f"{kind}s"].sum() == (facilities["class"] == kind).sum(), kind

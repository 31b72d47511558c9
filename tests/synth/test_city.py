"""The whole virtual city in a twin: every building served, nothing above ground, the real
engines content, and what the demo prints."""

from __future__ import annotations

import numpy as np
import pytest

from citytwin.demo import engine_checks, network_lengths
from citytwin.store import Query
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

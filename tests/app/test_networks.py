"""Network use cases on the virtual city twin: loading, valves, impacts, excavation checks."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from citytwin.app.networks import (
    dig_check,
    features_geojson,
    impact_weights,
    load_network,
    network_valves,
    source_nodes,
)
from citytwin.errors import InvalidInput
from citytwin.networks.excavation import Dig
from citytwin.store import Filter, Query, open_store


@pytest.fixture(scope="module")
def twin(virtual_city):
    store = open_store(virtual_city, read_only=True)
    yield store
    store.close()


def test_load_water_network_and_valves(twin):
    data = load_network(twin, "water_supply")
    links = twin.query(Query("utility_links", where=[Filter("network", "=", "water_supply")]))
    assert data.graph.n_links == len(links)
    assert set(data.devices["class"]) <= {"valve", "meter", "hydrant"}
    valves = network_valves(data)
    assert len(valves.ids) == (data.devices["class"] == "valve").sum()
    # every valve is next to one end of its link, and the closed ones are DMA boundaries
    ends = data.graph.link_nodes[valves.link]
    assert ((valves.node == ends[:, 0]) | (valves.node == ends[:, 1])).all()
    assert valves.closed.any() and not valves.closed.all()
    assert source_nodes(data).sum() >= 2  # the works' reservoir and at least one tank


def test_impact_weights_add_up_to_the_city(twin):
    data = load_network(twin, "water_supply")
    weights = impact_weights(twin, data)
    buildings = twin.query(Query("buildings"))
    served = data.nodes.loc[data.nodes["class"] == "service_connection", "building_id"]
    assert weights["residents"].sum() == pytest.approx(
        buildings.set_index("id").loc[served.unique(), "residents"].sum()
    )
    assert weights["hospitals"].sum() == (
        len(twin.query(Query("facilities", classes=["hospital"])))
    )
    assert weights["service_connections"].sum() == len(served)


def test_dig_over_a_water_main(twin):
    mains = twin.query(
        Query("utility_links", classes=["pipe"], where=[Filter("network", "=", "water_supply")])
    )
    main = mains.iloc[len(mains) // 2]
    mid = main.geometry.interpolate(0.5, normalized=True)
    pit = shapely.box(mid.x - 1, mid.y - 1, mid.x + 1, mid.y + 1)
    deep = dig_check(twin, Dig(pit, depth=main["depth"] + 0.1, buffer=0.5))
    row = deep.set_index("id").loc[main["id"]]
    assert row["struck"] and row["crown_depth_m"] == pytest.approx(main["depth"])
    assert row["owner"] == "Virtual Water Supply Co."
    shallow = dig_check(twin, Dig(pit, depth=main["depth"] - 1.0, buffer=0.5))
    assert not shallow.set_index("id").loc[main["id"], "struck"]
    # everything listed really lies within reach, and the struck come first
    assert (deep["distance_m"] <= 0.5 + 1e-6).all()
    assert deep["struck"].is_monotonic_decreasing
    fc = features_geojson(deep)
    assert len(fc["features"]) == len(deep) and fc["crs"]["properties"]["name"].endswith("4547")


def test_dig_over_a_sewer_uses_its_fall(twin):
    conduits = twin.query(
        Query("utility_links", classes=["conduit"], where=[Filter("network", "=", "sewer")])
    )
    conduits = conduits[conduits.geometry.length > 60]
    pipe = conduits.iloc[0]
    ends = twin.query(Query("utility_nodes", ids=[pipe["from_node"], pipe["to_node"]]))
    ground = ends.set_index("id")["cover_level"]
    crown0 = ground[pipe["from_node"]] - pipe["invert_from"] - pipe["diameter"]
    crown1 = ground[pipe["to_node"]] - pipe["invert_to"] - pipe["diameter"]
    at = pipe.geometry.interpolate(0.25, normalized=True)
    hits = dig_check(twin, Dig(at.buffer(0.5), depth=1.0, buffer=0.0))
    got = hits.set_index("id").loc[pipe["id"], "crown_depth_m"]
    expected = [
        crown0 + t * (crown1 - crown0)
        for t in (0.25 - 0.5 / pipe.geometry.length, 0.25 + 0.5 / pipe.geometry.length)
    ]
    assert min(expected) - 0.01 <= got <= max(expected) + 0.01


def test_bad_network_and_empty_dig(twin):
    with pytest.raises(InvalidInput, match="unknown network type"):
        load_network(twin, "sewage")
    far = dig_check(twin, Dig(shapely.box(0, 0, 1, 1), depth=2.0))
    assert len(far) == 0


def test_directions_from_an_epanet_run(twin):
    from citytwin.app.networks import hydraulic_flows, trace_network
    from citytwin.networks.trace import BACKWARD, FORWARD

    data = load_network(twin, "water_supply")
    flow = hydraulic_flows(twin, "water_supply", 8.0)
    direction = data.direction(twin, 8.0)
    at = data.graph.link_index(flow.index)
    moving = flow.abs().to_numpy() > 1e-9
    expected = np.where(flow.to_numpy() > 0, FORWARD, BACKWARD)
    assert (direction[at][moving] == expected[moving]).all()
    # water drawn at a junction at 8:00 comes from a reservoir or a tank upstream of it
    junctions = data.nodes.loc[data.nodes["base_demand"].fillna(0) > 0, "id"].iloc[::50]
    for node in junctions:
        _, up, _ = trace_network(twin, "water_supply", "upstream", [node], flows_at=8.0)
        assert source_nodes(data)[up.nodes].any(), node
    with pytest.raises(InvalidInput, match="no hydraulic"):
        hydraulic_flows(twin, "gas", 8.0)

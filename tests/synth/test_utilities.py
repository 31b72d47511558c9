"""The virtual city's gas, power, telecom and district cooling: served, radial, buried,
co-located, and compliant with GB 50289 except where violations were seeded on purpose."""

from __future__ import annotations

from functools import cache

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.formats.base import load_bundle
from citytwin.networks.clearance import check_clearances, clearance_lines
from citytwin.store import Query
from citytwin.synth.city import layout_bundle
from citytwin.synth.corridors import by_class, corridor_nodes, cover_depth, rules
from citytwin.synth.layout import plan_layout
from citytwin.synth.utilities import (
    CORRIDOR_ROLES,
    GAS_USES,
    HEATING_HALF_SPACING,
    plan_utilities,
    utilities_bundle,
)


@cache
def _city(seed: int):
    layout = plan_layout(4.0, seed)
    return layout, plan_utilities(layout, seed)


@pytest.fixture(params=[1, 2], ids=["seed1", "seed2"])
def city(request):
    return _city(request.param)


def _prop(frame, key):
    return np.array([p.get(key) for p in frame["props"]], dtype=object)


def _seeded_ids(plan) -> set[str]:
    return {v["feature_ids"][0] for v in plan.violations}


def test_links_join_existing_nodes_of_their_network(city):
    _, plan = city
    nodes, links = plan.nodes, plan.links
    assert nodes["id"].is_unique and links["id"].is_unique
    net = dict(zip(nodes["id"], nodes["network"], strict=True))
    for end in ("from_node", "to_node"):
        assert links[end].isin(nodes["id"]).all(), links[~links[end].isin(nodes["id"])][end]
        assert (links[end].map(net) == links["network"]).all()
    # every node is used by some link, and links end where their nodes are
    used = set(links["from_node"]) | set(links["to_node"])
    assert set(nodes["id"]) == used
    xy = dict(
        zip(nodes["id"], shapely.get_coordinates(nodes.geometry.to_numpy()).tolist(), strict=True)
    )
    coords = [shapely.get_coordinates(g) for g in links.geometry]
    start = np.array([xy[n] for n in links["from_node"]])
    stop = np.array([xy[n] for n in links["to_node"]])
    assert np.allclose([c[0] for c in coords], start, atol=1e-6)
    assert np.allclose([c[-1] for c in coords], stop, atol=1e-6)
    assert set(links["network"]) == {"gas", "power", "telecom", "heating"}


def test_every_building_has_power_and_gas_where_it_uses_gas(city):
    layout, plan = city
    nodes, links = plan.nodes, plan.links
    b = layout.buildings
    sc = nodes[nodes["class"] == "service_connection"]
    fed = links.set_index("to_node")
    power = sc[sc["network"] == "power"]
    assert sorted(power["building_id"]) == sorted(b["id"])
    lv = fed.loc[power["id"]]
    assert (lv["pressure_class"] == "LV").all() and (lv["class"] == "cable").all()
    assert lv["from_node"].str.startswith("pw:TR").all()
    gas = sc[sc["network"] == "gas"]
    users = b[b["use"].isin(GAS_USES)]["id"]
    assert sorted(gas["building_id"]) == sorted(users)
    assert (b["use"] == "industrial").any()  # the sheds are left out on purpose
    service = fed.loc[gas["id"]]
    assert (service["class"] == "service_pipe").all()
    assert service["pressure_class"].isin(["low", "medium"]).all()
    # the service connection is on the building it serves
    geom = dict(zip(b["id"], b.geometry, strict=True))
    d = [
        shapely.distance(p, geom[bid])
        for p, bid in zip(sc.geometry, sc["building_id"], strict=True)
    ]
    assert max(d) < 1e-6
    # low and medium pressure meet only at regulators
    pipes = links[(links["network"] == "gas") & (links["class"] == "pipe")]
    ends = pd.concat(
        [
            pipes[["from_node", "pressure_class"]].set_axis(["node", "p"], axis=1),
            pipes[["to_node", "pressure_class"]].set_axis(["node", "p"], axis=1),
        ]
    )
    mixed = ends.groupby("node")["p"].nunique()
    gas_nodes = nodes[nodes["network"] == "gas"].set_index("id")
    assert (gas_nodes.loc[mixed[mixed > 1].index, "class"] == "regulator").all()
    assert set(pipes["pressure_class"]) == {"low", "medium"}
    regulators = gas_nodes[gas_nodes["class"] == "regulator"]
    roles = {p.get("role") for p in regulators["props"]}
    assert roles == {"city_gate", "district", "cabinet"}
    stations = layout.facilities[layout.facilities["class"] == "gas_regulator_station"]
    assert sorted(
        p["facility"] for p in regulators["props"] if p.get("role") == "district"
    ) == sorted(stations["id"])


def test_gas_mains_and_district_cooling_are_sized_and_placed(city):
    layout, plan = city
    links = plan.links
    mains = links[(links["network"] == "gas") & (_prop(links, "role") == "main")]
    dn = _prop(mains, "outer_diameter").astype(float) * 1000
    medium = (mains["pressure_class"] == "medium").to_numpy()
    assert ((dn[medium] >= 160) & (dn[medium] <= 315)).all()
    assert ((dn[~medium] >= 63) & (dn[~medium] <= 160)).all()
    assert set(mains["material"]) <= {"PE100", "steel"}
    assert (mains[_prop(mains, "on_bridge").astype(bool)]["material"] == "steel").all()
    # the cooling pair: as much supply as return pipe, only in the CBD, to every CBD building
    cooling = links[links["network"] == "heating"]
    circuit = _prop(cooling, "circuit")
    supply, back = cooling["length"][circuit == "supply"], cooling["length"][circuit == "return"]
    assert supply.sum() == pytest.approx(back.sum(), rel=0.01) and len(supply) > 0
    cbd = layout.blocks[layout.blocks["land_use"] == "cbd"].geometry.union_all()
    along = cooling[_prop(cooling, "role") == "main"]
    assert (along.distance(cbd) < 20.0).all()
    sc = plan.nodes[(plan.nodes["network"] == "heating")]
    towers = layout.buildings[layout.buildings["district_use"] == "cbd"]["id"]
    assert sorted(sc["building_id"].dropna()) == sorted(towers)


def test_feeders_are_radial_with_normally_open_ties(city):
    _, plan = city
    nodes = plan.nodes[plan.nodes["network"] == "power"]
    links = plan.links[plan.links["network"] == "power"]
    # the twin's (EPANET's) convention: closed carries nothing; only the ties are closed
    live = links[links["initial_status"] == "open"]
    ties = links[links["initial_status"] == "closed"]
    assert len(live) + len(ties) == len(links) and len(ties) > 0
    assert (_prop(ties, "role") == "tie").all() and _prop(ties, "normally_open").all()
    assert not _prop(live, "normally_open").any()
    g = nx.Graph()
    g.add_nodes_from(nodes["id"])
    g.add_edges_from(zip(live["from_node"], live["to_node"], strict=True))
    assert g.number_of_edges() == len(live)  # no two live cables between the same nodes
    assert nx.is_forest(g)
    subs = set(nodes[nodes["class"] == "substation"]["id"])
    assert subs
    for component in nx.connected_components(g):
        assert len(component & subs) == 1  # each transformer is fed from exactly one substation
    for tr in nodes[nodes["class"] == "transformer"]["id"]:
        assert any(nx.has_path(g, tr, s) for s in subs)
    # the feeders: what hangs on the substations' exits; every tie joins two of them (both
    # live), one tie between two feeders, and every feeder has a tie (an open ring)
    feeders = g.subgraph(set(g) - subs)
    feeder = {n: k for k, part in enumerate(nx.connected_components(feeders)) for n in part}
    exits = live[live["from_node"].isin(subs)]
    assert len({feeder[n] for n in exits["to_node"]}) == len(exits)
    pairs = [
        frozenset((feeder[a], feeder[b]))
        for a, b in zip(ties["from_node"], ties["to_node"], strict=True)
    ]
    assert all(len(p) == 2 for p in pairs) and len(set(pairs)) == len(pairs)
    assert set().union(*pairs) == set(feeder[n] for n in exits["to_node"])
    for a, b in zip(ties["from_node"], ties["to_node"], strict=True):
        assert any(nx.has_path(g, a, s) for s in subs) and any(nx.has_path(g, b, s) for s in subs)
    # ten kilovolt to the transformers, 0.4 kV from them
    mv = _prop(links, "role") != "service"
    assert (links["pressure_class"][mv] == "MV").all()
    assert (links["pressure_class"][~mv] == "LV").all()


def test_lines_end_only_where_something_ends_them(city):
    """No loose ends: a power cable ends at a substation, a transformer or a building; a gas
    or cooling main that ends is closed by a cap, and so is a duct bank's stub-out."""
    _, plan = city
    nodes, links = plan.nodes, plan.links
    degree = pd.concat([links["from_node"], links["to_node"]]).value_counts()
    ends = nodes[nodes["id"].map(degree).eq(1).to_numpy()]
    allowed = {
        "power": {"substation", "transformer", "service_connection"},
        "gas": {"regulator", "service_connection", "cap"},
        "heating": {"pumping_station", "service_connection", "cap"},
        "telecom": {"cap"},
    }
    for net, group in ends.groupby("network"):
        assert set(group["class"]) <= allowed[net], net
    caps = nodes[nodes["class"] == "cap"]
    assert set(caps["network"]) <= {"gas", "heating", "telecom"} and len(caps) > 0
    assert (caps["id"].map(degree) == 1).all()
    # the low-pressure mains that stop short of a medium-pressure main without a feed
    stops = nodes[nodes["id"].str.startswith("gas:LE")]
    assert len(stops) > 0 and (stops["class"] == "cap").all()


def test_nothing_floats_above_ground(city):
    layout, plan = city
    nodes, links = plan.nodes, plan.links
    ground = layout.terrain.sample(shapely.get_coordinates(nodes.geometry.to_numpy()))
    assert np.allclose(nodes["cover_level"], ground, atol=2e-3)
    assert (nodes["depth"] > 0).all()
    assert (nodes["invert_level"] < nodes["cover_level"]).all()
    assert np.allclose(nodes["cover_level"] - nodes["invert_level"], nodes["depth"], atol=2e-3)
    assert (links["depth"] > 0).all() and (links["diameter"] > 0).all()
    ends = np.array([shapely.get_coordinates(g)[[0, -1]] for g in links.geometry])
    g0, g1 = layout.terrain.sample(ends[:, 0]), layout.terrain.sample(ends[:, 1])
    crown0 = links["invert_from"] + links["diameter"]
    crown1 = links["invert_to"] + links["diameter"]
    assert (crown0 <= g0 - links["depth"] + 2e-3).all()
    assert (crown1 <= g1 - links["depth"] + 2e-3).all()
    # laid at least at the corridor's minimum cover, but for the seeded shallow services and
    # the short pieces where a line passes over another of its network
    minimum = links["network"].map(cover_depth)
    shallow = links[links["depth"] < minimum]
    over = {i for i, p in zip(links["id"], _prop(links, "passes"), strict=True) if p}
    assert set(shallow["id"]) <= _seeded_ids(plan) | over


def test_utilities_lie_in_their_corridors(city):
    layout, plan = city
    s = layout.streets
    links = plan.links
    role = _prop(links, "role")
    street = _prop(links, "street")
    along = np.isin(role, CORRIDOR_ROLES) & ~links["id"].isin(_seeded_ids(plan)).to_numpy()
    assert along.sum() > 0.3 * len(links)
    assert all(isinstance(x, str) for x in street[along])
    k = np.array([int(x.split("-")[1]) for x in street[along]])
    a, b = s.nodes[s.edges[k, 0]], s.nodes[s.edges[k, 1]]
    u = (b - a) / np.linalg.norm(b - a, axis=1)[:, None]
    cls, half = np.asarray(s.street_class)[k], np.asarray(s.width)[k] / 2
    for i, (geom, net) in enumerate(
        zip(links.geometry[along], links["network"][along], strict=True)
    ):
        p = shapely.get_coordinates(geom) - a[i]
        d = np.abs(p[:, 0] * u[i, 1] - p[:, 1] * u[i, 0])  # distance to the centre line
        spread = HEATING_HALF_SPACING if net == "heating" else 0.0
        offset = abs(by_class(net, cls[i], half[i]))  # by the street's class
        assert np.all(np.abs(np.abs(d - offset) - spread) <= 0.1), links["id"].iloc[i]
    # the street-corner nodes of each network are the corridor nodes
    nodes = plan.nodes
    for net, prefix in (("gas", "gas:M"), ("telecom", "tc:CH")):
        mine = nodes[nodes["id"].str.startswith(prefix)]
        v = mine["id"].str[-6:].astype(int).to_numpy()
        xy = shapely.get_coordinates(mine.geometry.to_numpy())
        assert np.allclose(xy, corridor_nodes(s, net)[v], atol=1e-6)


def _conflicts(plan, buildings) -> dict[frozenset, float]:
    """Every violation of the virtual city's clearance rules among the plan's links (and
    against buildings), found by the clearance engine on the model frames, as {pair of feature
    ids: clear distance}."""
    lines = clearance_lines(plan.nodes, plan.links, rules())
    found = check_clearances(lines, rules(), buildings)
    pairs = zip(found.id_a, found.id_b, found.actual_m, strict=True)
    return {frozenset((a, b)): x for a, b, x in pairs}


def test_the_only_clearance_violations_are_the_seeded_ones(city):
    layout, plan = city
    records = plan.violations
    assert 3 <= len(records) <= 6
    assert {r["kind"] for r in records} == {"horizontal", "vertical", "building"}
    found = _conflicts(plan, layout.buildings)
    expected = {frozenset((r["feature_ids"][0], x)) for r in records for x in r["feature_ids"][1:]}
    assert set(found) == expected
    links = plan.links.set_index("id")
    outer = dict(zip(links.index, _prop(links, "outer_diameter"), strict=True))
    geom = dict(zip(links.index, links.geometry, strict=True))
    geom.update(zip(layout.buildings["id"], layout.buildings.geometry, strict=True))
    for r in records:
        first, *others = r["feature_ids"]
        worst = min(found[frozenset((first, x))] for x in others)
        assert r["actual_m"] == pytest.approx(worst, abs=1e-3)
        assert r["actual_m"] < r["required_m"]
        kind = "vertical" if r["kind"] == "vertical" else "horizontal"
        assert r["required_m"] == rules().lookup(*r["networks"], kind).value
        # the recorded location lies between the two features of the worst pair
        loc = shapely.Point(r["location"])
        pair = next(x for x in others if found[frozenset((first, x))] == pytest.approx(worst))
        gap = r["actual_m"] + (outer[first] + outer.get(pair, 0.0)) / 2
        if r["kind"] == "vertical":
            gap = 0.0
        assert shapely.distance(loc, geom[first]) + shapely.distance(loc, geom[pair]) <= gap + 0.05


def test_violations_grow_with_area():
    layout = plan_layout(9.0, 3)
    plan = plan_utilities(layout, 3)
    assert len(plan.violations) >= 10
    ids = [r["id"] for r in plan.violations]
    assert len(set(ids)) == len(ids)


def test_utilities_load_into_a_twin(make_twin):
    layout, plan = _city(1)
    store = make_twin("EPSG:4547", extent=layout.extent)
    load_bundle(store, layout_bundle(layout))
    counts = load_bundle(store, utilities_bundle(layout, plan))
    assert counts == {"utility_nodes": len(plan.nodes), "utility_links": len(plan.links)}
    doc = store.get_document("synth/clearance_violations")
    assert doc["violations"] == plan.violations
    tr = store.query(Query("utility_nodes", classes=["transformer"]))
    assert len(tr) == (plan.nodes["class"] == "transformer").sum()
    assert (tr["network"] == "power").all() and (tr["depth"] > 0).all()
    cables = store.query(Query("utility_links", classes=["cable"]))
    shut = (plan.links["initial_status"] == "closed") & (plan.links["network"] == "power")
    assert (cables["initial_status"] == "closed").sum() == shut.sum() > 0
    caps = store.query(Query("utility_nodes", classes=["cap"]))
    assert len(caps) == (plan.nodes["class"] == "cap").sum() > 0
    # every building served in the twin has a power service connection there
    sc = store.query(Query("utility_nodes", classes=["service_connection"]))
    assert set(sc[sc["network"] == "power"]["building_id"]) == set(
        store.query(Query("buildings"))["id"]
    )

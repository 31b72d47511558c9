"""The virtual city's water supply: EPANET solves a day of it within the service pressures, and
the GIS around the hydraulic model (DMAs, valves, hydrants, service connections) fits it."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import shapely
import wntr
from scipy.spatial import cKDTree

from citytwin.formats.base import load_bundle
from citytwin.formats.epanet import write_epanet
from citytwin.store import Query
from citytwin.synth.corridors import CORRIDORS, corridor_nodes
from citytwin.synth.layout import plan_layout
from citytwin.synth.water import DN, LITRES_PER_DAY, plan_water, water_bundle, water_check

SEEDS = (1, 2)


@pytest.fixture(scope="module", params=SEEDS)
def city(request, tmp_path_factory):
    """A 4 km² city, its water plan and a 24 h EPANET run of it."""
    layout = plan_layout(4.0, request.param)
    plan = plan_water(layout, request.param)
    prefix = tmp_path_factory.mktemp(f"water-{request.param}") / "day"
    results = wntr.sim.EpanetSimulator(plan.wn).run_sim(file_prefix=str(prefix))
    return layout, plan, results


def _street_junctions(wn):
    return [name for name, _ in wn.junctions() if name.startswith("J")]


def _of(frame, cls):
    return frame[frame["class"] == cls]


def test_a_day_of_epanet_keeps_the_pressures_in_the_service_band(city):
    layout, plan, _ = city
    wn = plan.wn
    assert wn.options.time.duration == 24 * 3600
    check = water_check(wn)
    assert check.pressures.index[-1] == 24 * 3600 and len(check.pressures) == 25
    assert check.pressures.shape[1] > 100  # demand junctions
    assert check.share_20_60 >= 0.9
    assert check.min_pressure >= 0.0
    assert check.ok
    # junctions stand on the DEM, at the water corridor under the streets
    names = _street_junctions(wn)
    xy = np.array([wn.get_node(n).coordinates for n in names])
    z = np.array([wn.get_node(n).elevation for n in names])
    assert np.allclose(z, layout.terrain.sample(xy), atol=0.01)
    corridor = corridor_nodes(layout.streets, "water_supply")
    assert cKDTree(corridor).query(xy)[0].max() < 1e-3


def test_tanks_fill_at_night_and_drain_by_day(city):
    _, plan, results = city
    wn = plan.wn
    assert wn.num_tanks >= 1
    for name, tank in wn.tanks():
        level = results.node["head"][name] - tank.elevation
        assert tank.min_level + 0.1 < level.min() and level.max() < tank.max_level - 0.1
        hour = level.index // 3600
        assert level[hour == 6].iloc[0] > level[hour == 0].iloc[0] + 0.5  # fills at night
        assert level[hour == 21].iloc[0] < level[hour == 7].iloc[0] - 0.5  # drains by day
        # floating on the highest demand junction with 20 m to spare at its lowest level
        highest = max(
            node.elevation
            for _, node in wn.junctions()
            if any(d.base_value > 0 for d in node.demand_timeseries_list)
        )
        assert tank.elevation + tank.min_level >= highest + 20.0


def test_the_source_pumps_from_the_clear_water_well(city):
    _, plan, results = city
    wn = plan.wn
    assert list(wn.reservoir_name_list) == ["R1"]
    pumps = [wn.get_link(p) for p in wn.pump_name_list]
    assert len(pumps) == 3 and {p.start_node_name for p in pumps} == {"R1"}
    flow = results.link["flowrate"][[p.name for p in pumps]]
    running = flow.columns[(flow > 0.01).all()]
    assert len(running) == 2 and (flow.drop(columns=running).abs() < 1e-9).all().all()
    # the pumps deliver the day's demand, the tanks the difference
    demand = sum(d.base_value for _, node in wn.junctions() for d in node.demand_timeseries_list)
    assert flow.sum(axis=1).mean() == pytest.approx(demand, rel=0.15)
    curve = np.array(wn.get_curve(pumps[0].pump_curve_name).points)
    assert (np.diff(curve[:, 0]) > 0).all() and (np.diff(curve[:, 1]) < 0).all()


def test_every_building_has_one_service_connection_to_a_nearby_junction(city):
    layout, plan, _ = city
    wn = plan.wn
    connections = _of(plan.nodes, "service_connection")
    buildings = layout.buildings.set_index("id")
    assert sorted(connections["building_id"]) == sorted(buildings.index)
    pipes = plan.links.set_index("from_node")
    assert (_of(plan.links, "service_pipe")["from_node"].value_counts() == 1).all()
    junction = pipes.loc[connections["id"], "to_node"].str.removeprefix("ws:")
    assert set(junction) <= set(_street_junctions(wn))
    at = shapely.points([wn.get_node(j).coordinates for j in junction])
    reach = shapely.distance(buildings.geometry[connections["building_id"]].to_numpy(), at)
    assert np.mean(reach <= 100.0) >= 0.98 and reach.max() <= 150.0
    # the service pipe runs from the building's footprint to its junction
    ends = shapely.get_coordinates(pipes.loc[connections["id"]].geometry.to_numpy())
    assert np.allclose(ends[1::2], shapely.get_coordinates(at))
    footprints = buildings.geometry[connections["building_id"]].to_numpy()
    assert (shapely.distance(footprints, shapely.points(ends[0::2])) < 1e-6).all()
    # each junction carries the demand of the buildings it serves: 180 L a resident a day
    served = pd.Series(
        [p["average_demand"] for p in connections["props"]], index=junction.to_numpy()
    )
    per_junction = served.groupby(level=0).sum()
    model = pd.Series(
        {
            name: sum(d.base_value for d in wn.get_node(name).demand_timeseries_list)
            for name in per_junction.index
        }
    )
    assert np.allclose(model[per_junction.index], per_junction, rtol=1e-9)
    residential = sum(
        d.base_value
        for _, node in wn.junctions()
        for d in node.demand_timeseries_list
        if d.pattern_name == "RES"
    )
    litres = residential * 86400 * 1000 / buildings["residents"].sum()
    assert litres == pytest.approx(LITRES_PER_DAY["residential"][0])


def test_mains_have_standard_sizes_and_the_source_main_is_the_largest(city):
    layout, plan, results = city
    wn = plan.wn
    diameter = pd.Series({name: pipe.diameter for name, pipe in wn.pipes()})
    assert np.isin(np.round(diameter, 3), np.round(DN, 3)).all()
    assert diameter["PM1"] == diameter.max() >= 0.5
    assert wn.get_link("PM1").start_node_name == "PS1"
    street = _street_junctions(wn)
    mains = [n for n, p in wn.pipes() if p.start_node_name in street and p.end_node_name in street]
    links = plan.link_attrs
    assert len(mains) == len(plan.wn.pipe_name_list) - wn.num_tanks - 1
    # a main under every street edge of the network, bridges carrying some over the river
    s = layout.streets
    lines = shapely.linestrings(
        [
            [
                wn.get_node(wn.get_link(m).start_node_name).coordinates,
                wn.get_node(wn.get_link(m).end_node_name).coordinates,
            ]
            for m in mains
        ]
    )
    crossing = shapely.intersects(lines, layout.river.channel)
    assert 0 < crossing.sum() <= s.bridge.sum()
    # DN100 only on dead ends, arterials at least DN300, secondary streets DN200
    graph = nx.Graph(
        [(wn.get_link(m).start_node_name, wn.get_link(m).end_node_name) for m in mains]
    )
    bridges = {frozenset(e) for e in nx.bridges(graph)}
    for m in mains:
        pipe = wn.get_link(m)
        if pipe.diameter < 0.15:
            assert frozenset((pipe.start_node_name, pipe.end_node_name)) in bridges
    street_of = _street_classes(layout)
    minimum = {"primary": 0.3, "secondary": 0.2, "residential": 0.1}
    for m in mains:
        assert diameter[m] >= minimum[street_of[_ends(wn, m)]] - 1e-9
    assert links.loc[mains, "material"].isin(["PE100", "DI", "steel"]).all()
    velocity = results.link["velocity"][mains]
    assert velocity.max().max() < 2.0


def _ends(wn, link):
    pipe = wn.get_link(link)
    return frozenset(
        tuple(np.round(np.array(wn.get_node(n).coordinates) - CORRIDORS["water_supply"][0], 1))
        for n in (pipe.start_node_name, pipe.end_node_name)
    )


def _street_classes(layout):
    """Street class by the pair of street nodes an edge joins (the water corridor lies 3 m
    off the street nodes)."""
    s = layout.streets
    return {
        frozenset(tuple(np.round(s.nodes[i], 1)) for i in edge): cls
        for edge, cls in zip(s.edges, s.street_class, strict=True)
    }


def test_dmas_are_closed_but_for_their_metered_inlets(city):
    layout, plan, results = city
    wn = plan.wn
    dmas = plan.dmas.set_index("id")
    assert 2 <= len(dmas) <= 6  # about one per 1-2 km²
    zone = plan.node_attrs["zone_id"]
    street = _street_junctions(wn)
    # every street junction in exactly one DMA, the one its zone_id names
    points = shapely.points([wn.get_node(n).coordinates for n in street])
    inside = np.array([shapely.contains(g, points) for g in dmas.geometry])
    assert (inside.sum(axis=0) == 1).all()
    assert (dmas.index.to_numpy()[inside.argmax(axis=0)] == zone[street].to_numpy()).all()
    assert dmas["population"].sum() == layout.buildings["residents"].sum()
    # pipes across a boundary are closed, except the inlets, each with a flow meter
    meters = _of(plan.nodes, "meter")
    inlets = set()
    for dma, row in dmas.iterrows():
        feeds = row["props"]["inlets"]
        assert 1 <= len(feeds) <= 2
        metered = meters[meters["zone_id"] == dma]
        assert set(metered["link_id"]) == set(feeds)
        inlets |= {f.removeprefix("ws:") for f in feeds}
    side = zone.reindex(wn.node_name_list).fillna("source")
    flow = results.link["flowrate"]
    for name, pipe in wn.pipes():
        a, b = side[pipe.start_node_name], side[pipe.end_node_name]
        if a != b:
            shut = str(pipe.initial_status).lower().endswith("closed")
            assert shut != (name in inlets), name
            if shut:
                assert (flow[name].abs() < 1e-9).all()
    # so what the meters count into a DMA, less what it passes on, is what it uses
    demand = results.node["demand"]
    for dma in dmas.index:
        net = 0.0
        for name, pipe in wn.pipes():
            a, b = side[pipe.start_node_name], side[pipe.end_node_name]
            if a != b and dma in (a, b):
                net = net + (flow[name] if b == dma else -flow[name])
        used = demand[side.index[side == dma]].sum(axis=1)
        assert np.allclose(net, used, atol=1e-4)


def test_valves_cut_the_mains_into_small_isolation_segments(city):
    _, plan, _ = city
    wn = plan.wn
    valves = _of(plan.nodes, "valve")
    at = [p["node"].removeprefix("ws:") for p in valves["props"]]
    on = [link.removeprefix("ws:") for link in valves["link_id"]]
    for point, link, node in zip(valves.geometry, on, at, strict=True):
        pipe = wn.get_link(link)  # an existing pipe, next to one of its ends
        assert node in (pipe.start_node_name, pipe.end_node_name)
        ends = [wn.get_node(n).coordinates for n in (pipe.start_node_name, pipe.end_node_name)]
        assert shapely.LineString(ends).distance(point) < 1e-6
        assert point.distance(shapely.Point(wn.get_node(node).coordinates)) <= 3.0 + 1e-6
    # "N-1": most junctions of degree 3 or more have valves on all their branches but one
    graph = wn.to_graph().to_undirected()
    per_node = pd.Series(at).value_counts()
    crossings = [n for n in _street_junctions(wn) if graph.degree(n) >= 3]
    covered = [per_node.get(n, 0) >= graph.degree(n) - 1 for n in crossings]
    assert np.mean(covered) >= 0.9
    # every closed boundary pipe has a closed valve
    shut = {link for link, p in zip(on, valves["props"], strict=True) if p["status"] == "closed"}
    closed = {n for n, p in wn.pipes() if str(p.initial_status).lower().endswith("closed")}
    assert shut == closed
    # a burst is isolated by closing a few valves: segments of at most a handful of pipes
    layer = pd.DataFrame({"link": on, "node": at})
    _, _, size = wntr.metrics.valve_segments(graph, layer)
    assert size["link"].max() <= 6 and size["link"].median() <= 2


def test_hydrants_stand_every_100_m_along_the_mains(city):
    layout, plan, _ = city
    wn = plan.wn
    hydrants = _of(plan.nodes, "hydrant")
    for point, link in zip(hydrants.geometry, hydrants["link_id"], strict=True):
        pipe = wn.get_link(link.removeprefix("ws:"))
        ends = [wn.get_node(n).coordinates for n in (pipe.start_node_name, pipe.end_node_name)]
        assert shapely.LineString(ends).distance(point) < 1e-6
    assert not shapely.intersects(layout.river.channel, hydrants.geometry.to_numpy()).any()
    mains = [
        shapely.LineString(
            [wn.get_node(n).coordinates for n in (p.start_node_name, p.end_node_name)]
        )
        for name, p in wn.pipes()
        if name.startswith("P0")
    ]
    on_land = sum(m.length for m in mains if not m.intersects(layout.river.channel))
    assert len(hydrants) == pytest.approx(on_land / 100.0, rel=0.1)


def test_the_twin_exports_the_network_that_epanet_solved(city, make_twin, tmp_path):
    layout, plan, results = city
    store = make_twin("EPSG:4547", extent=layout.extent)
    counts = load_bundle(store, water_bundle(layout, plan))
    assert counts["utility_nodes"] == plan.wn.num_nodes + len(plan.nodes)
    assert counts["utility_links"] == plan.wn.num_links + len(plan.links)
    assert counts["zones"] == len(plan.dmas)
    out = tmp_path / "water_supply.inp"
    written = write_epanet(store, out, network_key="network/water_supply")
    assert written == plan.wn.num_nodes + plan.wn.num_links
    again = wntr.sim.EpanetSimulator(wntr.network.WaterNetworkModel(str(out))).run_sim(
        file_prefix=str(tmp_path / "again")
    )
    pressure = results.node["pressure"]
    assert np.allclose(again.node["pressure"][pressure.columns], pressure, atol=1e-3)
    # the GIS side in the twin: typed attributes and links between features
    junctions = store.query(Query("utility_nodes", classes=["junction"]))
    street = junctions[junctions["name"].str.startswith("J")]
    assert street["zone_id"].str.startswith("ws:DMA-").all()
    assert (street["depth"] > 1.2).all() and (street["invert_level"] < street["cover_level"]).all()
    valves = store.query(Query("utility_nodes", classes=["valve"]))
    pipes = store.query(Query("utility_links", classes=["pipe"]))
    assert set(valves["link_id"]) <= set(pipes["id"])
    connections = store.query(Query("utility_nodes", classes=["service_connection"]))
    assert connections["building_id"].notna().all() and len(connections) == len(layout.buildings)
    dmas = store.query(Query("zones", classes=["dma"]))
    assert (dmas["network"] == "water_supply").all() and len(dmas) == len(plan.dmas)


def test_the_plan_is_deterministic_from_the_seed(city):
    layout, plan, _ = city
    again = plan_water(layout, layout.seed)
    assert again.wn.to_dict() == plan.wn.to_dict()
    assert again.nodes.drop(columns="geometry").equals(plan.nodes.drop(columns="geometry"))
    assert again.nodes.geometry.geom_equals(plan.nodes.geometry).all()


# -- pressure zones: a hillside town spans more relief than one zone keeps in the band ------
@pytest.fixture(scope="module")
def hillside(tmp_path_factory):
    """A 4 km² city on ground rising 45 m northwards, its water plan and a day of EPANET."""
    layout = plan_layout(4.0, 1)
    terrain = layout.terrain
    rows = terrain.dem.shape[0]
    rise = 45.0 * (1.0 - (np.arange(rows) + 0.5) / rows)  # row 0 is the northern edge
    terrain.dem = (terrain.dem + rise[:, None]).astype(np.float32)
    plan = plan_water(layout, 1)
    prefix = tmp_path_factory.mktemp("hillside") / "day"
    results = wntr.sim.EpanetSimulator(plan.wn).run_sim(file_prefix=str(prefix))
    return layout, plan, results


def test_a_hillside_town_gets_pressure_zones_that_keep_the_band(hillside):
    _, plan, _ = hillside
    zones = plan.notes["pressure_zones"]
    assert len(zones) >= 2 and sum(z["fed_by"] == "tanks" for z in zones) == 1
    check = water_check(plan.wn)
    assert check.share_20_60 >= 0.95 and check.min_pressure >= 0.0
    # higher ground, higher head: each DMA's zone head follows its junctions' ground level
    zone = plan.node_attrs["zone_id"]
    street = _street_junctions(plan.wn)
    ground = pd.Series({j: plan.wn.get_node(j).elevation for j in street})
    dmas = plan.dmas.set_index("id")
    head = dmas["props"].map(lambda p: p["zone_head"])
    by_zone = pd.DataFrame({"zone": dmas["props"].map(lambda p: p["pressure_zone"]), "head": head})
    mean_ground = ground.groupby(zone[street].to_numpy()).mean()
    per_zone = by_zone.assign(ground=mean_ground).groupby("zone").mean().sort_values("ground")
    assert per_zone["head"].idxmax() == per_zone.index[-1]
    assert per_zone["head"].idxmin() == per_zone.index[0]
    assert per_zone["head"].iloc[-1] - per_zone["head"].iloc[0] > 15.0


def test_zones_meet_only_at_metered_stations(hillside):
    _, plan, results = hillside
    wn = plan.wn
    dmas = plan.dmas.set_index("id")
    zone_of = dmas["props"].map(lambda p: p["pressure_zone"])
    zone = plan.node_attrs["zone_id"].map(zone_of)
    # every street main between two zones is closed
    for _, pipe in wn.pipes():
        a, b = zone.get(pipe.start_node_name), zone.get(pipe.end_node_name)
        if isinstance(a, str) and isinstance(b, str) and a != b:
            assert str(pipe.initial_status).lower().endswith("closed")
    # water crosses into a zone through a pressure-reducing valve holding the zone's head,
    # after booster pumps where it comes from lower ground
    valves = [wn.get_link(v) for v in wn.valve_name_list]
    assert valves and all(v.valve_type == "PRV" for v in valves)
    pressure = results.node["pressure"]
    head = results.node["head"]
    meters = _of(plan.nodes, "meter")
    for v in valves:
        if not v.name.startswith("VB"):
            continue
        k = v.name[2:]
        outlet = wn.get_link(f"PB{k}")  # the station's outlet main to the street junction
        inner = outlet.end_node_name
        zone_head = dmas.loc[plan.node_attrs.loc[inner, "zone_id"], "props"]["zone_head"]
        assert np.allclose(pressure[v.end_node_name], v.initial_setting, atol=0.05)
        assert np.allclose(head[v.end_node_name], zone_head, atol=0.1)
        assert f"ws:PB{k}" in set(meters["link_id"])  # metered like every DMA inlet
        if v.start_node_name.startswith("BS"):  # a booster: suction in the lower zone
            pumps = [p for p in wn.pump_name_list if p.startswith(f"PUB{k}-")]
            assert len(pumps) == 3
            suction = wn.get_link(pumps[0]).start_node_name
            assert zone[suction] != zone[inner]
            flow = results.link["flowrate"][pumps].sum(axis=1)
            assert (flow > 0).all()
    boosters = [p for p in wn.pump_name_list if p.startswith("PUB")]
    assert boosters  # the town's upper zone is pumped up to


def test_a_zoned_network_exports_and_runs_the_same(hillside, make_twin, tmp_path):
    layout, plan, results = hillside
    store = make_twin("EPSG:4547", extent=layout.extent)
    load_bundle(store, water_bundle(layout, plan))
    out = tmp_path / "zoned.inp"
    write_epanet(store, out, network_key="network/water_supply")
    again = wntr.sim.EpanetSimulator(wntr.network.WaterNetworkModel(str(out))).run_sim(
        file_prefix=str(tmp_path / "again")
    )
    pressure = results.node["pressure"]
    assert np.allclose(again.node["pressure"][pressure.columns], pressure, atol=1e-3)

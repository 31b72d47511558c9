"""The virtual city's drainage: laid downhill with cover, outfalls to the river and the creeks,
no conduit larger than a 3 × 3 m box, every building connected through its lateral, a sound
topology, and SWMM runs the 2-year design storm cleanly while a 50-year storm floods
manholes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.app.networks import check_network
from citytwin.drainage.storms import chicago_hyetograph
from citytwin.drainage.swmm import run_swmm_file
from citytwin.formats.base import load_bundle
from citytwin.formats.swmm import write_swmm
from citytwin.store import Query, open_store
from citytwin.synth.corridors import cover_depth
from citytwin.synth.drainage import (
    LATERAL_SLOPE,
    MANHOLE_SPACING,
    PREFIXES,
    SECTIONS,
    drainage_bundle,
    min_slope,
    plan_drainage,
    with_storm,
)
from citytwin.synth.layout import IMPERVIOUS, plan_layout

SEEDS = (1, 2)


@pytest.fixture(scope="module", params=SEEDS)
def city(request):
    layout = plan_layout(4.0, request.param)
    plan = plan_drainage(layout, request.param)
    return layout, plan, drainage_bundle(layout, plan)


@pytest.fixture(scope="module")
def storm_runs(city, tmp_path_factory):
    """The storm network's 2-year run (as planned) and 50-year run (storm swapped in)."""
    _, plan, _ = city
    folder = tmp_path_factory.mktemp(f"storm{plan.seed}")
    inp = plan.networks["storm"].inp
    return {
        2: simulate(write(folder / "p2.inp", inp)),
        50: simulate(write(folder / "p50.inp", with_storm(inp, *chicago_hyetograph(50)))),
    }


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def simulate(path: Path) -> dict:
    """Continuity errors (%), node statistics and routing totals of a pyswmm run."""
    run = run_swmm_file(path)
    return {
        "runoff_error": run.runoff_error,
        "routing_error": run.routing_error,
        "nodes": run.nodes,
        "routing": run.routing,
    }


def features(bundle, layer: str, network: str | None = None) -> pd.DataFrame:
    frame = bundle.layers[layer]
    return frame if network is None else frame[frame["network"] == network]


# -- the layout in the ground ---------------------------------------------------------------------


def test_gravity_pipes_fall_with_minimum_slope_and_keep_their_cover(city):
    _, plan, bundle = city
    for network in plan.networks:
        nodes = features(bundle, "utility_nodes", network).set_index("id")
        pipes = features(bundle, "utility_links", network)
        pipes = pipes[pipes["class"] == "conduit"]
        assert len(pipes) > 10
        fall = pipes["invert_from"] - pipes["invert_to"]
        assert (fall > 0).all(), network
        assert (fall / pipes["length"] >= min_slope(pipes["diameter"]) - 1e-9).all(), network
        cover = cover_depth(network)
        for end, invert in (("from_node", "invert_from"), ("to_node", "invert_to")):
            ground = nodes["cover_level"].reindex(pipes[end]).to_numpy()
            assert np.isfinite(ground).all()  # every pipe end is in a manhole or wet well
            crown = pipes[invert].to_numpy() + pipes["diameter"].to_numpy()
            assert (ground - crown >= cover - 1e-6).all(), (network, end)
        assert (pipes["depth"] >= cover - 1e-6).all()
        # no pipe or node deeper than realistic, none floating
        assert nodes["invert_level"].min() > -10.0
        depth = nodes["depth"].dropna()
        assert (depth > 0).all() and (depth[nodes["class"] != "storage"] < 10.0).all()
        assert (depth < 12.0).all()  # the deepest wet wells of the lift stations


def test_manhole_covers_are_on_the_ground(city):
    layout, plan, bundle = city
    for network in plan.networks:
        nodes = features(bundle, "utility_nodes", network)
        chambers = nodes[nodes["class"].isin(["manhole", "storage"])]
        xy = shapely.get_coordinates(chambers.geometry.to_numpy())
        ground = layout.terrain.sample(xy)
        assert np.allclose(chambers["cover_level"], ground, atol=0.002), network
        # manholes sit in the network's corridor under the streets: at street nodes
        manholes = chambers[chambers["class"] == "manhole"]
        on_street = shapely.distance(
            shapely.points(shapely.get_coordinates(manholes.geometry.to_numpy())),
            shapely.union_all(layout.streets.lines()),
        )
        assert (on_street < 12.0).all(), network


def test_pipes_grow_downstream_and_every_manhole_drains_to_an_outfall(city):
    _, plan, bundle = city
    for network, net in plan.networks.items():
        links = features(bundle, "utility_links", network)
        conduits = links[links["class"] == "conduit"]
        assert not conduits["from_node"].duplicated().any()  # a tree: one pipe out of a node
        # where a combined station also pumps to the treatment works, follow the river pump
        downstream = dict(zip(links["from_node"], links["to_node"], strict=False))
        nodes = features(bundle, "utility_nodes", network)
        kind = dict(zip(nodes["id"], nodes["class"], strict=True))
        for start in nodes.loc[nodes["class"] == "manhole", "id"]:
            node, seen = start, set()
            while kind[node] != "outfall":
                assert node not in seen
                seen.add(node)
                node = downstream[node]
        conduits = conduits.set_index("id")
        rank = {tuple(r): k for k, r in enumerate(SECTIONS[["height", "width", "barrels"]].values)}
        table = net.links.set_index("name")
        size = {
            net.prefix + name: rank[(r.height, r.width, r.barrels)]
            for name, r in table[table["kind"] == "conduit"].iterrows()
        }
        into = conduits.reset_index().groupby("to_node")["id"].apply(list)
        for pipe, row in conduits.iterrows():
            above = into.get(row["from_node"], [])
            assert all(size[u] <= size[pipe] for u in above), pipe
        assert set(conduits["diameter"]) <= set(SECTIONS["height"])
        assert conduits["diameter"].between(0.3, 3.0).all()


def test_no_conduit_is_larger_than_a_three_metre_box_or_overloaded(city):
    """Catchments stay small (the creeks, stations along the river): the largest conduit is a
    single 3 × 3 m box culvert, every one carries its design flow, and every one fits the band
    its street leaves it; manholes stand at most ``MANHOLE_SPACING`` apart."""
    _, plan, bundle = city
    assert plan.notes["conduits_too_wide"] == []
    assert plan.notes["conduits_over_capacity"] == []
    assert bundle.documents["synth/clearance_shortfalls"]["conduits_too_wide"] == []
    for net in plan.networks.values():
        pipes = net.links[net.links["kind"] == "conduit"]
        assert (pipes["width"] * pipes["barrels"] <= 3.0).all() and (pipes["height"] <= 3.0).all()
        fill = 0.6 if net.network == "sewer" else 1.0
        assert (pipes["capacity"] * fill >= pipes["design_flow"] - 1e-9).all(), net.network
        assert pipes["length"].max() <= MANHOLE_SPACING + 1.0  # askew a little where shifted


def test_outfalls_are_on_the_river_bank_and_the_creek_walls(city):
    """Pumping stations lift to outfalls on the river bank at its normal level; storm sewers
    outfall by gravity (flap-gated) through the creeks' walls above the creek's level, or a
    station beside the creek pumps into it."""
    layout, plan, bundle = city
    river, creeks = layout.river, layout.creeks
    nodes = features(bundle, "utility_nodes")
    outfalls = nodes[nodes["class"] == "outfall"]
    geoms = outfalls.geometry.to_numpy()
    on_river = shapely.distance(geoms, river.channel.boundary) < 1.0
    walls = shapely.union_all(creeks.geometry.to_numpy()).boundary
    on_creek = shapely.distance(geoms, walls) < 1e-3
    assert (on_river ^ on_creek).all()
    assert (outfalls.loc[on_river, "invert_level"] >= river.water_level).all()
    assert on_creek.any() or plan.notes["creek_outfalls"] == 0
    levels = creeks.set_index("id")["water_level"]
    reach = shapely.STRtree(creeks.geometry.to_numpy()).query_nearest(geoms[on_creek])[1]
    level = levels.iloc[reach].to_numpy()
    assert (outfalls.loc[on_creek, "invert_level"].to_numpy() >= level).all()
    # in the SWMM model: FIXED at the water's level, flap-gated into the creeks
    rows = {}
    section = ""
    for line in plan.networks["storm"].inp.splitlines():
        section = line.strip() if line.startswith("[") else section
        if section == "[OUTFALLS]" and line and not line.startswith("["):
            name, invert, kind, *rest = line.split()
            rows[name] = (float(invert), kind, rest)
    creek_names = {
        n[3:] for n in outfalls.loc[on_creek & (outfalls["network"] == "storm").to_numpy(), "id"]
    }
    for name in creek_names:
        invert, kind, (stage, gate) = rows[name]
        assert kind == "FIXED" and gate == "YES" and float(stage) <= invert
    # the river's outfalls on both banks
    river_storm = outfalls[on_river & (outfalls["network"] == "storm").to_numpy()]
    cx, cy = shapely.get_coordinates(river.centerline).T
    north = river_storm.geometry.y.to_numpy() > np.interp(river_storm.geometry.x.to_numpy(), cx, cy)
    assert north.any() and (~north).any()


def test_stations_are_their_wet_wells_and_pump_to_the_river_creeks_and_works(city):
    *_, bundle = city
    nodes = features(bundle, "utility_nodes").set_index("id")
    links = features(bundle, "utility_links").set_index("id")
    assert "pumping_station" not in set(nodes["class"])  # no node beside the network
    stations = nodes[[isinstance(p, dict) and "station" in p for p in nodes["props"]]]
    assert (stations["class"] == "storage").all()
    wells = nodes[nodes["class"] == "storage"]
    assert set(wells.index) == set(stations.index)  # every wet well is a station's
    roles = {p["station"]["role"] for p in stations["props"]}
    assert {"drainage", "sewage"} <= roles
    facilities = features(bundle, "facilities").set_index("id")
    for sid, station in stations.iterrows():
        info = station["props"]["station"]
        assert "Station" in station["name"]
        assert facilities.loc[info["facility"], "props"]["node"] == sid
        for pump in info["pumps"]:
            assert links.loc[pump, "class"] == "pump"
            assert links.loc[pump, "from_node"] == sid
            curve = "PC" + pump.split(":")[1]
            doc = bundle.documents[f"network/{station['network']}"]
            assert any(line.split()[:1] == [curve] for line in doc["sections"]["CURVES"]), sid
        to_outfall = nodes.loc[links.loc[info["pumps"][-1], "to_node"], "class"] == "outfall"
        assert to_outfall != (info["role"] == "lift")
    # the foul sewer ends at the sewage treatment works
    sewage = stations[[p["station"]["role"] == "sewage" for p in stations["props"]]]
    works = facilities[facilities["class"] == "sewage_treatment_plant"]
    inlets = {i for p in works["props"] for i in p["inlets"]}
    for props in sewage["props"]:
        assert links.loc[props["station"]["pumps"][0], "to_node"] in inlets
    pumping = facilities[facilities["class"] == "pumping_station"]
    mouths = [p["role"] == "creek_mouth" for p in pumping["props"]]
    assert len(pumping) - sum(mouths) == len(stations)
    assert sum(mouths) == (layout_creeks(city)["reach"] == 1).sum()


def layout_creeks(city):
    return city[0].creeks


# -- what it serves -------------------------------------------------------------------------------


def test_every_building_drains_through_its_lateral_to_a_manhole(city):
    layout, _, bundle = city
    nodes = features(bundle, "utility_nodes")
    by_id = nodes.drop_duplicates("id").set_index("id")
    served = nodes[nodes["class"] == "service_connection"]
    assert sorted(served["building_id"]) == sorted(layout.buildings["id"])
    assert set(served["network"]) == {"sewer", "combined"}
    # most of the old town drains to the combined sewer, the rest of the town to the foul one
    old = (
        layout.buildings.set_index("id")["district_use"].reindex(served["building_id"])
        == "old_town"
    )
    combined = (served["network"] == "combined").to_numpy()
    assert combined[old.to_numpy()].mean() > 0.8 and (~combined[~old.to_numpy()]).mean() > 0.9
    # the foul flow is the buildings' population at 200 L a day (and 50 L per worker)
    flow = sum(p["dwf_m3_s"] for p in served["props"]) * 86_400 * 1000
    assert flow >= 200 * layout.buildings["residents"].sum() * 0.999
    # one lateral from each connection to its manhole (in the SWMM model), falling
    links = features(bundle, "utility_links")
    laterals = links[links["class"] == "service_pipe"].set_index("from_node")
    assert laterals.index.is_unique and set(laterals.index) == set(served["id"])
    lat = laterals.loc[served["id"]]
    manhole = [p["manhole"] for p in served["props"]]
    assert (lat["to_node"].to_numpy() == np.array(manhole, dtype=object)).all()
    ends = by_id.loc[lat["to_node"]]
    assert set(ends["class"]) <= {"manhole", "storage"}
    assert all(m.startswith(PREFIXES[n]) for m, n in zip(manhole, served["network"], strict=True))
    assert set(lat["diameter"]) <= {0.15, 0.2}
    fall = lat["invert_from"] - lat["invert_to"]
    assert (fall >= LATERAL_SLOPE * lat["length"] - 2e-3).all()
    assert np.allclose(lat["length"], shapely.length(lat.geometry.to_numpy()), atol=0.01)
    # laid from the gravity networks' cover down; both ends on the ground's levels
    assert (lat["depth"] >= cover_depth("sewer") - 1e-3).all()
    start = by_id.loc[lat.index]
    exits = shapely.get_coordinates(start.geometry.to_numpy())
    assert np.allclose(start["cover_level"], layout.terrain.sample(exits), atol=0.002)
    assert np.allclose(start["invert_level"], lat["invert_from"])
    crown = lat["invert_to"].to_numpy() + lat["diameter"].to_numpy()
    assert (ends["cover_level"].to_numpy() - crown >= cover_depth("sewer") - 2e-3).all()
    # the lateral's crown is never below the crown of the sewer leaving its manhole
    conduits = links[links["class"] == "conduit"].set_index("from_node")
    out = conduits.reindex(lat["to_node"])
    sewer_crown = (out["invert_from"] + out["diameter"]).to_numpy()
    known = np.isfinite(sewer_crown)
    assert (crown[known] >= sewer_crown[known] - 1e-3).all()
    # short: to a manhole in the street in front, rarely across a block
    assert np.median(lat["length"]) < 45.0 and (lat["length"] < 100.0).mean() > 0.98


def test_subcatchments_cover_the_blocks(city):
    layout, _, bundle = city
    zones = features(bundle, "zones")
    subs = zones[zones["class"] == "subcatchment"]
    blocks = layout.blocks
    expected = {f"block-{k:06d}" for k in blocks.loc[blocks["land_use"] != "park", "block"]}
    covered = {p["block"] for p in subs["props"]}
    assert expected <= covered
    nodes = set(features(bundle, "utility_nodes")["id"])
    assert set(subs["outlet"]) <= nodes
    by_block = blocks.set_index("block")
    for zone in subs.itertuples(index=False):
        block = by_block.loc[int(zone.props["block"][6:])]
        assert zone.network == ("combined" if block["land_use"] == "old_town" else "storm")
        assert zone.outlet.startswith(PREFIXES[zone.network])
        assert zone.imperviousness == IMPERVIOUS[block["land_use"]]
        assert zone.area == pytest.approx(block.geometry.area, rel=1e-3)


def test_plan_is_deterministic(city):
    layout, plan, _ = city
    again = plan_drainage(layout, plan.seed)
    for name, net in plan.networks.items():
        assert again.networks[name].inp == net.inp
    pd.testing.assert_frame_equal(again.connections, plan.connections)


def test_each_network_has_a_sound_topology(city, make_twin):
    """No isolated nodes (every connection has its lateral, a station is its wet well), no
    dangling ends, adverse slopes or parts without an outfall."""
    layout, plan, bundle = city
    store = make_twin("EPSG:4547", extent=layout.extent)
    load_bundle(store, bundle)
    for network in plan.networks:
        _, report = check_network(store, network)
        assert report.ok, (network, report.issues.head().to_dict("records"))


def test_the_virtual_city_twin_drains_with_a_sound_topology(virtual_city):
    store = open_store(virtual_city, read_only=True)
    try:
        for network in ("sewer", "storm", "combined"):
            data, report = check_network(store, network)
            assert report.ok, (network, report.issues.head().to_dict("records"))
            assert (data.node_class == "service_connection").any() or network == "storm"
    finally:
        store.close()


# -- SWMM -----------------------------------------------------------------------------------------


def test_two_year_design_storm_runs_cleanly(city, storm_runs, tmp_path):
    run = storm_runs[2]
    assert abs(run["runoff_error"]) < 1.0 and abs(run["routing_error"]) < 1.0
    nodes = run["nodes"]
    surcharged = sum(s["surcharge_duration"] > 0 for s in nodes.values())
    flooded = sum(s["flooding_volume"] for s in nodes.values())
    assert surcharged <= 0.1 * len(nodes)  # the design storm: a few surcharge at most
    assert flooded <= 0.001 * run["routing"]["wet_weather_inflow"]
    assert run["routing"]["outflow"] > 0.8 * run["routing"]["wet_weather_inflow"]
    # the combined sewers too
    _, plan, _ = city
    combined = simulate(write(tmp_path / "cb.inp", plan.networks["combined"].inp))
    assert abs(combined["runoff_error"]) < 1.0 and abs(combined["routing_error"]) < 1.0


def test_fifty_year_storm_surcharges_and_floods_manholes(city, storm_runs):
    run, design = storm_runs[50], storm_runs[2]
    assert abs(run["runoff_error"]) < 1.0 and abs(run["routing_error"]) < 1.0
    nodes = run["nodes"]
    flooded = [n for n, s in nodes.items() if s["flooding_volume"] > 0]
    assert any(n.startswith("MH") for n in flooded)
    surcharged = sum(s["surcharge_duration"] > 0 for s in nodes.values())
    assert surcharged > sum(s["surcharge_duration"] > 0 for s in design["nodes"].values())
    assert run["routing"]["flooding"] > 0


def test_foul_sewer_carries_the_dry_weather_flow(city, tmp_path):
    _, plan, _ = city
    text = plan.networks["sewer"].inp
    text = re.sub(r"(?m)^END_DATE\s+\S+", "END_DATE 06/01/2020", text)
    text = re.sub(r"(?m)^END_TIME\s+\S+", "END_TIME 08:00:00", text)
    run = simulate(write(tmp_path / "sw.inp", text))
    assert abs(run["routing_error"]) < 1.0
    assert run["routing"]["dry_weather_inflow"] > 0 and run["routing"]["flooding"] == 0
    assert all(s["surcharge_duration"] == 0 for s in run["nodes"].values())


def test_swmm_round_trip_through_the_twin(city, storm_runs, make_twin, tmp_path):
    layout, _, bundle = city
    store = make_twin("EPSG:4547", extent=layout.extent)
    load_bundle(store, bundle)
    assert store.count(Query("utility_nodes", classes=["manhole"])) > 100
    out = tmp_path / "storm.inp"
    written = write_swmm(store, out, network_key="network/storm")
    prefix = PREFIXES["storm"]
    expected = sum(
        frame["id"].str.startswith(prefix).sum()
        for name, frame in bundle.layers.items()
        if name in ("utility_nodes", "utility_links", "zones")
    )
    assert written == expected
    again = simulate(out)
    assert again["routing"] == pytest.approx(storm_runs[2]["routing"], rel=1e-9)
    assert again["routing_error"] == pytest.approx(storm_runs[2]["routing_error"], abs=1e-9)

"""The virtual city's drainage: laid downhill with cover, every building served, and SWMM runs
the 2-year design storm cleanly while a 50-year storm floods manholes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.drainage.storms import chicago_hyetograph
from citytwin.drainage.swmm import run_swmm_file
from citytwin.formats.base import load_bundle
from citytwin.formats.swmm import write_swmm
from citytwin.store import Query
from citytwin.synth.corridors import cover_depth
from citytwin.synth.drainage import (
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
        assert (nodes["depth"].dropna() > 0).all() and (nodes["depth"].dropna() < 10.0).all()


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


def test_outfalls_are_on_the_river_bank_on_both_banks(city):
    layout, _, bundle = city
    river = layout.river
    outfalls = features(bundle, "utility_nodes")
    outfalls = outfalls[outfalls["class"] == "outfall"]
    assert len(outfalls) >= 4
    bank = shapely.distance(outfalls.geometry.to_numpy(), river.channel.boundary)
    assert (bank < 1.0).all()
    assert (outfalls["invert_level"] >= river.water_level).all()
    storm = outfalls[outfalls["network"] == "storm"]
    cx, cy = shapely.get_coordinates(river.centerline).T
    north = storm.geometry.y.to_numpy() > np.interp(storm.geometry.x.to_numpy(), cx, cy)
    assert north.any() and (~north).any()


def test_stations_pump_to_the_river_and_the_treatment_works(city):
    *_, bundle = city
    nodes = features(bundle, "utility_nodes").set_index("id")
    links = features(bundle, "utility_links").set_index("id")
    stations = nodes[nodes["class"] == "pumping_station"]
    roles = {p["role"] for p in stations["props"]}
    assert {"drainage", "sewage"} <= roles
    for sid, station in stations.iterrows():
        props = station["props"]
        assert nodes.loc[props["wet_well"], "class"] == "storage"
        for pump in props["pumps"]:
            assert links.loc[pump, "class"] == "pump"
            assert links.loc[pump, "from_node"] == props["wet_well"]
            curve = "PC" + pump.split(":")[1]
            doc = bundle.documents[f"network/{station['network']}"]
            assert any(line.split()[:1] == [curve] for line in doc["sections"]["CURVES"]), sid
    # the foul sewer ends at the sewage treatment works
    sewage = stations[[p["role"] == "sewage" for p in stations["props"]]]
    facilities = features(bundle, "facilities")
    works = facilities[facilities["class"] == "sewage_treatment_plant"]
    inlets = {i for p in works["props"] for i in p["inlets"]}
    for props in sewage["props"]:
        assert links.loc[props["pumps"][0], "to_node"] in inlets
    assert (facilities["class"] == "pumping_station").sum() == len(stations)


# -- what it serves -------------------------------------------------------------------------------


def test_every_building_is_connected_to_the_foul_or_combined_sewer(city):
    layout, _, bundle = city
    nodes = features(bundle, "utility_nodes")
    ids = set(nodes["id"])
    served = nodes[nodes["class"] == "service_connection"]
    assert sorted(served["building_id"]) == sorted(layout.buildings["id"])
    assert set(served["network"]) == {"sewer", "combined"}
    for network, props in zip(served["network"], served["props"], strict=True):
        assert props["manhole"] in ids and props["manhole"].startswith(PREFIXES[network])
    # the old town's buildings drain to the combined sewer, the rest to the foul sewer
    use = layout.blocks.set_index("block")["land_use"]
    old = use.reindex(layout.buildings["block"]).to_numpy() == "old_town"
    by_building = dict(zip(served["building_id"], served["network"], strict=True))
    network = np.array([by_building[b] for b in layout.buildings["id"]])
    assert (network[old] == "combined").all() and (network[~old] == "sewer").all()
    # the foul flow is the buildings' population at 200 L a day (and 50 L per worker)
    flow = sum(p["dwf_m3_s"] for p in served["props"]) * 86_400 * 1000
    assert flow >= 200 * layout.buildings["residents"].sum() * 0.999


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

"""``citytwin network``: every sub-command on the virtual city, in process."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import shapely

from citytwin.app.networks import isolate_burst, load_network, segment_table, trace_network
from citytwin.store import Filter, Query, open_store
from tests.cli.test_commands import run


@pytest.fixture(scope="module")
def store(virtual_city):
    s = open_store(virtual_city, read_only=True)
    yield s
    s.close()


def test_check_lists_issues_and_writes_geojson(virtual_city, tmp_path):
    out = tmp_path / "issues.geojson"
    result = run("network", "check", "-t", virtual_city, "-n", "water_supply", "--geojson", out)
    assert "water_supply:" in result.output and "connected parts" in result.output
    with open_store(virtual_city, read_only=True) as s:
        data = load_network(s, "water_supply")
    open_links = ~data.closed_links
    n_parts, _ = data.graph.components(open_links)
    independent = int(open_links.sum()) - data.graph.n_nodes + n_parts
    assert f"{independent:,} independent loops" in result.output
    fc = json.loads(out.read_text()) if out.exists() else {"features": []}
    assert all(f["properties"]["kind"] for f in fc["features"])
    bad = run("network", "check", "-t", virtual_city, "-n", "sewage", ok=False)
    assert bad.exit_code == 1 and "unknown network type" in bad.output


def test_trace_downstream_of_a_manhole_reaches_an_outfall(virtual_city, store, tmp_path):
    data = load_network(store, "sewer")
    head = data.nodes.loc[data.nodes["class"] == "manhole", "id"].iloc[0]
    out = tmp_path / "trace.geojson"
    result = run("network", "trace", "-t", virtual_city, "-n", "sewer", "--from", head,
                 "-k", "downstream", "--geojson", out)  # fmt: skip
    _, found, _ = trace_network(store, "sewer", "downstream", [head])
    assert f"{len(found.nodes):,} nodes" in result.output
    fc = json.loads(out.read_text())
    assert {f["properties"]["id"] for f in fc["features"]} == {*found.link_ids, *found.node_ids}
    classes = set(data.node_class[found.nodes])
    assert classes & {"outfall", "storage"}, classes  # drains to an outfall or a wet well
    missing = run("network", "trace", "-t", virtual_city, "-n", "sewer", "--from", "nope",
                  ok=False)  # fmt: skip
    assert missing.exit_code == 1 and "not a node or link" in missing.output


def test_isolate_at_a_point_and_with_an_inoperable_valve(virtual_city, store, tmp_path):
    mains = store.query(Query("utility_links", classes=["pipe"],
                              where=[Filter("network", "=", "water_supply")]))  # fmt: skip
    main = mains.iloc[len(mains) // 3]
    mid = main.geometry.interpolate(0.5, normalized=True)
    expected = isolate_burst(store, "water_supply", link=main["id"])
    out = tmp_path / "burst.geojson"
    result = run("network", "isolate", "-t", virtual_city, "-n", "water_supply",
                 "--at", f"{mid.x},{mid.y}", "--geojson", out)  # fmt: skip
    assert f"burst on {main['id']}" in result.output
    assert " ".join(expected.valve_ids) in result.output
    fc = json.loads(out.read_text())
    roles = [f["properties"]["role"] for f in fc["features"]]
    assert roles.count("valve_to_close") == len(expected.valve_ids)
    assert roles.count("isolated") == len(expected.isolation.isolated_links)
    # one valve stuck: more valves, a larger isolated part
    stuck = expected.valve_ids[0]
    larger = isolate_burst(store, "water_supply", link=main["id"], inoperable=[stuck])
    assert stuck not in larger.valve_ids
    assert len(larger.isolation.isolated_links) > len(expected.isolation.isolated_links)
    result = run("network", "isolate", "-t", virtual_city, "-n", "water_supply",
                 "--link", main["id"], "--inoperable", stuck)  # fmt: skip
    assert "inoperable valve(s) bypassed" in result.output
    far = run("network", "isolate", "-t", virtual_city, "-n", "water_supply", "--at", "0,0",
              ok=False)  # fmt: skip
    assert far.exit_code == 1 and "from the nearest water_supply link" in far.output
    novalves = run("network", "isolate", "-t", virtual_city, "-n", "telecom",
                   "--link", "tc:D000063", ok=False)  # fmt: skip
    assert novalves.exit_code == 1 and "no valves" in novalves.output


def test_isolating_a_hospital_main_names_the_hospital(store):
    data, model, table = segment_table(store, "water_supply")
    worst = table[table["hospitals_direct"] > 0].iloc[0]
    link = data.graph.link_ids[(model.segments.link_segment == worst.name).argmax()]
    report = isolate_burst(store, "water_supply", link=link)
    assert set(report.facilities["class"]) >= {"hospital"}
    hospitals = store.query(Query("facilities", classes=["hospital"]))
    assert set(report.facilities["id"]) <= set(
        store.query(Query("facilities")).loc[
            lambda f: f["building_id"].isin(report.buildings["id"]), "id"
        ]
    )
    assert len(hospitals)


def test_segments_and_criticality(virtual_city, store, tmp_path):
    csv = tmp_path / "segments.csv"
    result = run("network", "segments", "-t", virtual_city, "-n", "water_supply", "--csv", csv)
    _, model, table = segment_table(store, "water_supply")
    assert f"{model.segments.n_segments:,} segments" in result.output
    assert csv.read_text().count("\n") == len(table) + 1
    ranking = tmp_path / "ranking.csv"
    run("network", "criticality", "-t", virtual_city, "-n", "water_supply",
        "--by", "demand_m3s", "--limit", "3", "--csv", ranking)  # fmt: skip
    ranked = pd.read_csv(ranking)
    assert ranked["demand_m3s"].is_monotonic_decreasing and len(ranked) == len(table)
    assert ranked["segment"].iloc[0] == table["demand_m3s"].idxmax()
    bad = run("network", "criticality", "-t", virtual_city, "-n", "water_supply", "--by", "x",
              ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "can't rank by 'x'" in bad.output


def test_dig_command(virtual_city, store, tmp_path):
    water = store.query(Query("utility_links", classes=["pipe"],
                              where=[Filter("network", "=", "water_supply")]))  # fmt: skip
    at = water.geometry.iloc[5].interpolate(0.5, normalized=True)
    box = shapely.box(at.x - 2, at.y - 2, at.x + 2, at.y + 2)
    out = tmp_path / "dig.geojson"
    result = run("network", "dig", "-t", virtual_city, "--depth", "3",
                 "--bbox", ",".join(str(v) for v in box.bounds), "--geojson", out)  # fmt: skip
    assert "would be struck" in result.output
    hits = {f["properties"]["id"]: f["properties"] for f in json.loads(out.read_text())["features"]}
    assert hits[water["id"].iloc[5]]["struck"] is True


def test_import_lines_and_snap_their_ends(tmp_path, shared_data):
    """GIS pipes without end-node ids get their topology from geometry at import: the same
    ends as the source's own start/end node names, except where pump nodes coincide."""
    import geopandas as gpd

    ky4, twin = shared_data / "ky4", tmp_path / "ky4.twin"
    run("init", "-t", twin, "--crs", "EPSG:32616")
    for name, cls in (("junctions", "junction"), ("tanks", "tank"), ("reservoirs", "reservoir")):
        run("import", ky4 / f"ky4_{name}.geojson", "-t", twin, "--layer", "utility_nodes",
            "--class", cls, "--id-field", "name", "--set", "network=water_supply")  # fmt: skip
    result = run("import", ky4 / "ky4_pipes.geojson", "-t", twin, "--layer", "utility_links",
                 "--class", "pipe", "--id-field", "name", "--set", "network=water_supply",
                 "--snap", "0.05")  # fmt: skip
    assert "1,156 utility_links" in result.output
    source = gpd.read_file(ky4 / "ky4_pipes.geojson").set_index("name")
    with open_store(twin, read_only=True) as s:
        links = s.query(Query("utility_links")).set_index("id")
    same = (links["from_node"] == source.loc[links.index, "start_node_name"]) & (
        links["to_node"] == source.loc[links.index, "end_node_name"]
    )
    # the two pumps' inlet and outlet nodes are drawn at one point each: 4 ambiguous ends
    assert "ambiguous_end" in result.output
    at_pumps = source["start_node_name"].str.contains("Pump") | source[
        "end_node_name"
    ].str.contains("Pump")
    assert set(links.index[~same]) <= set(source.index[at_pumps]) and at_pumps.sum() == 4
    bad = run("import", ky4 / "ky4_pipes.geojson", "-t", twin, "--layer", "utility_links",
              "--class", "pipe", "--id-field", "name", "--snap", "0.05", ok=False)  # fmt: skip
    assert bad.exit_code == 1 and "network type" in bad.output


def test_clearance_finds_the_seeded_violations(virtual_city, store, tmp_path):
    out = tmp_path / "violations.geojson"
    result = run("network", "clearance", "-t", virtual_city, "--geojson", out)
    seeded = store.get_document("synth/clearance_violations")["violations"]
    expected = {frozenset((v["feature_ids"][0], x)) for v in seeded for x in v["feature_ids"][1:]}
    found = json.loads(out.read_text())["features"]
    assert {
        frozenset((f["properties"]["id_a"], f["properties"]["id_b"])) for f in found
    } == expected
    assert f"{len(found):,} violations" in result.output
    assert "virtual city design rules" in result.output
    only_water = run("network", "clearance", "-t", virtual_city, "-n", "water_supply",
                     "--no-buildings")  # fmt: skip
    assert "no clearance violation found" in only_water.output


def test_clearance_rules_given_kept_and_refused(virtual_city, tmp_path):
    import shutil

    twin = tmp_path / "copy.twin"
    shutil.copy(virtual_city, twin)
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        "name: strict\nrules:\n  - between: [gas, power]\n"
        "    horizontal: {value: 5.0, source: test}\n"
    )
    check = ("network", "clearance", "-t", twin, "-n", "gas", "-n", "power", "--no-buildings")
    loose = run(*check, "--geojson", tmp_path / "a.geojson")
    tight = run(*check, "--rules", strict, "--geojson", tmp_path / "b.geojson")
    n_loose = len(json.loads((tmp_path / "a.geojson").read_text())["features"])
    n_tight = len(json.loads((tmp_path / "b.geojson").read_text())["features"])
    assert n_tight > n_loose and "strict" in tight.output and "strict" not in loose.output
    run("network", "clearance", "-t", twin, "--rules", strict, "--keep", "-n", "gas")
    kept = run(*check)
    assert "rules: strict" in kept.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - between: [gas, sewage]\n    horizontal: {value: 1, source: x}\n")
    bad = run("network", "clearance", "-t", twin, "--rules", broken, ok=False)
    assert bad.exit_code == 1 and "broken.yaml" in bad.output and "sewage" in bad.output

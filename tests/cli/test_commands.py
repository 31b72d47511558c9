"""The command line, end to end on real data, in process."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from citytwin.cli import app
from tests.conftest import package_data

runner = CliRunner()


def run(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def geojson_query(twin, layer, *args):
    """``citytwin query`` with GeoJSON output, parsed."""
    return json.loads(run("query", "-t", twin, "--layer", layer, "-o", "geojson", *args).output)


@pytest.fixture
def twin(tmp_path):
    path = tmp_path / "ky4.twin"
    run("init", "--twin", path, "--crs", "EPSG:32616", "--name", "ky4")
    return path


def test_import_info_query_export(twin, shared_data, tmp_path):
    ky4 = shared_data / "ky4"
    out = run(
        "import",
        ky4 / "ky4_junctions.geojson",
        "-t",
        twin,
        "--layer",
        "utility_nodes",
        "--class",
        "junction",
        "--id-field",
        "name",
        "--id-prefix",
        "gis:",
        "--set",
        "network=water_supply",
    ).output
    assert "959 utility_nodes" in out
    out = run(
        "import",
        package_data("wntr", "library", "networks", "ky4.inp"),
        "-t",
        twin,
        "--crs",
        "EPSG:3547",
    ).output
    assert "964 utility_nodes" in out and "1,158 utility_links" in out
    run("import", ky4 / "ky4_elevation.tif", "-t", twin)

    info = json.loads(run("info", "-t", twin, "--json").output)
    layers = {x["layer"]: x for x in info["layers"]}
    assert layers["utility_nodes"]["count"] == 959 + 964
    assert info["networks"] == ["network/ky4"] and info["rasters"][0]["name"] == "dem"
    assert "ky4" in run("info", "-t", twin).output

    fc = geojson_query(
        twin, "utility_nodes", "--where", "elevation>=215", "--class", "junction", "--limit", "500"
    )
    assert fc["numberMatched"] == fc["numberReturned"] > 0
    assert all(f["properties"]["elevation"] >= 215 for f in fc["features"])

    node = fc["features"][0]["geometry"]["coordinates"]
    near = run(
        "query",
        "-t",
        twin,
        "--layer",
        "utility_nodes",
        "--near",
        f"{node[0]},{node[1]}",
        "--k",
        "3",
    ).output
    assert "0.0" in near and "3 of 3" in near
    page = geojson_query(
        twin, "utility_links", "--limit", "10", "--offset", "1150", "--order-by", "id"
    )
    assert page["numberReturned"] == 8 and page["numberMatched"] == 1158

    assert (
        "exported 2,122"
        in run("export", tmp_path / "net.inp", "-t", twin, "--network", "ky4").output
    )
    run(
        "export",
        tmp_path / "nodes.gpkg",
        "-t",
        twin,
        "--layer",
        "utility_nodes",
        "--where",
        "elevation>200",
    )
    import pyogrio

    assert pyogrio.read_info(tmp_path / "nodes.gpkg")["features"] > 0


def test_as_of_query_after_reimport_update(twin, tmp_path):
    run(
        "import",
        package_data("wntr", "library", "networks", "Net3.inp"),
        "-t",
        twin,
        "--valid-from",
        "2020-01-01",
    )
    past = geojson_query(twin, "utility_links", "--as-of", "2019-06-01")
    assert past["numberMatched"] == 0
    now = geojson_query(twin, "utility_links", "--as-of", "2021-06-01", "--limit", "1000")
    assert now["numberMatched"] == 119


def test_errors_exit_non_zero_with_one_clear_line(twin, tmp_path, shared_data):
    text = (shared_data / "ky4" / "ky4_pipes.geojson").read_text()
    cut = tmp_path / "cut.geojson"
    cut.write_text(text[:5000])
    result = run("import", cut, "-t", twin, "--layer", "utility_links", ok=False)
    assert result.exit_code == 1
    assert "error:" in result.output and "cut.geojson" in result.output
    assert "Traceback" not in result.output
    result = run(
        "import",
        shared_data / "ky4" / "ky4_pipes.geojson",
        "-t",
        twin,
        "--layer",
        "utility_links",
        "--class",
        "pipe",
        "--set",
        "network=water_supply",
        ok=False,
    )
    assert result.exit_code == 1 and "required attribute 'from_node' is missing" in result.output
    info = json.loads(run("info", "-t", twin, "--json").output)
    assert info["layers"] == []  # nothing was written
    assert run("init", "-t", twin, "--crs", "EPSG:4326", ok=False).exit_code == 1
    assert (
        "not projected"
        in run("init", "-t", tmp_path / "x.twin", "--crs", "EPSG:4326", ok=False).output
    )
    assert run("info", "-t", tmp_path / "missing.twin", ok=False).exit_code == 1
    assert (
        "can't read filter"
        in run("query", "-t", twin, "--layer", "buildings", "--where", "height", ok=False).output
    )


def test_synth_builds_a_virtual_twin_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "v.twin"
    text = run("synth", "--out", out, "--area-km2", "1", "--seed", "4").output
    assert "VIRTUAL CITY" in text and "utility_links" in text
    info = json.loads(run("info", "-t", out, "--json").output)
    assert info["meta"]["virtual"] is True
    assert set(info["networks"]) >= {"network/water_supply", "network/storm", "network/sewer"}
    again = run("synth", "--out", out, ok=False)
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize("command", ["init", "import", "export", "info", "query", "demo", "synth"])
def test_help_everywhere(command):
    assert "Usage" in run(command, "--help").output

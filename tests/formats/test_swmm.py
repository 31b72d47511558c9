"""SWMM INP import and export on real models: the pystorms networks and pyswmm/swmmio examples."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import pytest
import shapely
from pyproj import Transformer
from pyswmm import Links, Nodes, Simulation, SystemStats

from citytwin.errors import InvalidInput
from citytwin.formats.base import load_bundle
from citytwin.formats.swmm import (
    ACRE,
    FT,
    HECTARE,
    LINK_SECTIONS,
    NODE_SECTIONS,
    read_swmm,
    write_swmm,
)
from citytwin.store import Query
from tests.conftest import package_data

PYSTORMS = ("alpha", "beta", "delta", "epsilon", "gamma", "theta", "zeta")
LAYERS = ("utility_nodes", "utility_links", "zones")


def pystorms(name: str) -> Path:
    return package_data("pystorms", "networks", f"{name}.inp")


MODELS = {
    **{name: pystorms(name) for name in PYSTORMS},
    "model_full_features": package_data("pyswmm", "tests", "data", "model_full_features.inp"),
    "Example6": package_data("swmmio", "tests", "data", "Example6.inp"),
}
STATE_PLANE = package_data("swmmio", "tests", "data", "model_state_plane.inp")


def rows(path: Path) -> dict[str, list[list[str]]]:
    """Data rows per section, read independently of the importer (comments and blanks dropped)."""
    out: dict[str, list[list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        data = line.split(";", 1)[0].strip()
        if data.startswith("["):
            section = data.strip("[]").upper()
            out.setdefault(section, [])
        elif data and section:
            out[section].append(data.split())
    return out


def raw_section(path: Path, name: str) -> list[str]:
    """The lines of section ``name`` as they are in the file, header included."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        if line.strip().startswith("["):
            if out:
                break
            if line.strip().upper() == f"[{name}]":
                out.append(line)
        elif out:
            out.append(line)
    return out


def us_units(path: Path) -> bool:
    options = {r[0]: r[1] for r in rows(path)["OPTIONS"] if len(r) > 1}
    return options.get("FLOW_UNITS", "CFS") in ("CFS", "GPM", "MGD")


def runnable(src: Path, folder: Path, hours: float | None = None) -> Path:
    """A copy of ``src`` for fast runs: one thread (OpenMP threads crawl on a busy machine),
    and the simulation cut to ``hours`` after its start if given."""
    text = re.sub(r"(?m)^THREADS\s+\d+", "THREADS 1", src.read_text())
    if hours is not None:
        options = {r[0]: r[1] for r in rows(src)["OPTIONS"] if len(r) > 1}
        start = dt.datetime.strptime(
            f"{options['START_DATE']} {options.get('START_TIME', '0:00:00')}", "%m/%d/%Y %H:%M:%S"
        )
        end = start + dt.timedelta(hours=hours)
        text = re.sub(r"(?m)^END_DATE\s+\S+", f"END_DATE {end:%m/%d/%Y}", text)
        text = re.sub(r"(?m)^END_TIME\s+\S+", f"END_TIME {end:%H:%M:%S}", text)
    folder.mkdir(exist_ok=True)
    dst = folder / src.name
    dst.write_text(text)
    return dst


def results(inp: Path) -> tuple[dict, dict, dict]:
    """Node statistics, link statistics and routing continuity of a full pyswmm run."""
    with Simulation(str(inp)) as sim:
        for _ in sim:
            pass
        nodes = {n.nodeid: n.statistics for n in Nodes(sim)}
        links = {}
        for link in Links(sim):
            if link.is_conduit():
                links[link.linkid] = link.conduit_statistics
            elif link.is_pump():
                links[link.linkid] = link.pump_statistics
        routing = SystemStats(sim).routing_stats
    return nodes, links, routing


def numbers(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if isinstance(v, int | float)}


def load(make_twin, path: Path, twin_crs: str = "EPSG:32616", **options):
    store = make_twin(twin_crs)
    bundle = read_swmm(path, twin_crs, **options)
    load_bundle(store, bundle)
    return store, bundle


# -- import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_import_counts_and_values_match_the_file(make_twin, name):
    path = MODELS[name]
    file = rows(path)
    store, _ = load(make_twin, path, network="combined")
    ft = FT if us_units(path) else 1.0
    area = ACRE if us_units(path) else HECTARE

    nodes = store.query(Query("utility_nodes")).set_index("id")
    for section, cls in NODE_SECTIONS.items():
        assert (nodes["class"] == cls).sum() == len(file.get(section, [])), section
    links = store.query(Query("utility_links")).set_index("id")
    for section, cls in LINK_SECTIONS.items():
        assert (links["class"] == cls).sum() == len(file.get(section, [])), section
    zones = store.query(Query("zones", classes=["subcatchment"])).set_index("id")
    assert len(zones) == len(file.get("SUBCATCHMENTS", []))
    assert set(nodes["network"]) == {"combined"}

    prefix = f"{path.stem}:"
    for r in file.get("JUNCTIONS", []) + file.get("STORAGE", []):
        node = nodes.loc[prefix + r[0]]
        assert node["name"] == r[0]
        assert node["invert_level"] == pytest.approx(float(r[1]) * ft, rel=1e-12)
        if float(r[2]) > 0:
            assert node["depth"] == pytest.approx(float(r[2]) * ft, rel=1e-12)
            assert node["cover_level"] == pytest.approx((float(r[1]) + float(r[2])) * ft)
        else:
            assert math.isnan(node["depth"])
        assert node["props"]["elevation"] == r[1]
    for r in file.get("OUTFALLS", []):
        assert nodes.loc[prefix + r[0], "invert_level"] == pytest.approx(float(r[1]) * ft)
    for r in file.get("CONDUITS", []):
        link = links.loc[prefix + r[0]]
        assert link["length"] == pytest.approx(float(r[3]) * ft, rel=1e-12)
        assert link["roughness"] == float(r[4])
        assert nodes.loc[link["from_node"], "name"].casefold() == r[1].casefold()
        assert nodes.loc[link["to_node"], "name"].casefold() == r[2].casefold()
        start = links.loc[prefix + r[0], "geometry"].boundary.geoms[0]
        assert start.distance(nodes.loc[link["from_node"], "geometry"]) < 1e-6
    for r in file.get("XSECTIONS", []):
        if r[1] not in ("IRREGULAR", "STREET"):
            assert links.loc[prefix + r[0], "diameter"] == pytest.approx(float(r[2]) * ft)
    for r in file.get("SUBCATCHMENTS", []):
        zone = zones.loc[prefix + r[0]]
        assert zone["area"] == pytest.approx(float(r[3]) * area, rel=1e-12)
        assert zone["imperviousness"] == float(r[4])
        outlet = zone["outlet"]
        assert outlet.startswith(prefix) and outlet[len(prefix) :].casefold() == r[2].casefold()

    doc = store.get_document(f"network/{path.stem}")
    assert doc["format"] == "swmm" and doc["id_prefix"] == prefix and doc["crs"] is None
    for section in ("OPTIONS", "TIMESERIES", "CURVES", "CONTROLS", "DWF", "SUBAREAS"):
        if section in file:
            assert doc["sections"][section] == raw_section(path, section), section


def test_link_inverts_follow_the_offset_convention(make_twin):
    # alpha: LINK_OFFSETS DEPTH — the invert is the node's invert plus the offset
    store, _ = load(make_twin, pystorms("alpha"))
    c1a = store.get("utility_links", "alpha:C1a").attributes
    assert c1a["invert_from"] == pytest.approx((4968.5 + 6) * FT)
    assert c1a["invert_to"] == pytest.approx(4968 * FT)  # JC1a, offset 0
    # delta: LINK_OFFSETS ELEVATION — the offsets are the inverts (never below the node's)
    store, _ = load(make_twin, pystorms("delta"))
    n43 = store.get("utility_links", "delta:conduit_N43").attributes
    assert n43["invert_from"] == pytest.approx(853.5 * FT)
    assert n43["invert_to"] == pytest.approx(848.2 * FT)
    down_b = store.get("utility_links", "delta:conduit_NdownB").attributes
    assert down_b["invert_from"] == pytest.approx(835.57 * FT)  # 0.0: at junc_NdownB's invert


def test_si_model_areas_are_hectares(make_twin):
    path = pystorms("theta")
    store, _ = load(make_twin, path)
    file = rows(path)
    for r in file["SUBCATCHMENTS"]:
        zone = store.get("zones", f"theta:{r[0]}")
        assert zone.attributes["area"] == pytest.approx(float(r[3]) * HECTARE)
    node = store.get("utility_nodes", "theta:P1").attributes
    assert node["invert_level"] == 100 and node["depth"] == 2  # metres as written


def test_subcatchment_without_polygon_gets_a_square_at_its_outlet(make_twin, tmp_path):
    lines = MODELS["model_full_features"].read_text().splitlines()
    start = lines.index("[POLYGONS]")
    path = tmp_path / "model_full_features.inp"
    path.write_text(
        "\n".join(line for i, line in enumerate(lines) if i < start or not line.startswith("S3 "))
    )
    bundle = read_swmm(path, "EPSG:32616")
    zones = bundle.layers["zones"].set_index("id")
    s3 = zones.loc["model_full_features:S3"]
    assert s3["props"]["geometry_estimated"] is True
    assert s3["outlet"] == "model_full_features:J3"  # "j3" in the file: SWMM names ignore case
    assert s3.geometry.area == pytest.approx(3 * ACRE)
    j3 = bundle.layers["utility_nodes"].set_index("id").loc["model_full_features:J3"].geometry
    assert s3.geometry.centroid.distance(j3) < 1e-6
    assert "geometry_estimated" not in zones.loc["model_full_features:S1", "props"]
    store = make_twin("EPSG:32616")
    load_bundle(store, bundle)
    out = tmp_path / "out.inp"
    write_swmm(store, out, network_key="network/model_full_features")
    assert {r[0] for r in rows(out)["POLYGONS"]} == {"S1", "S2"}  # no invented outline


def test_source_crs_is_applied_and_written_back(make_twin, tmp_path):
    src = runnable(STATE_PLANE, tmp_path / "src")
    store, bundle = load(make_twin, src, "EPSG:32619", crs="EPSG:2817")
    file = rows(src)
    name, x, y = file["COORDINATES"][0]
    to_utm = Transformer.from_crs("EPSG:2817", "EPSG:32619", always_xy=True)
    node = store.get("utility_nodes", f"model_state_plane:{name}")
    assert node.geometry.distance(shapely.Point(to_utm.transform(float(x), float(y)))) < 1e-6
    assert store.get_document("network/model_state_plane")["crs"] == "EPSG:2817"

    out = tmp_path / "out.inp"
    assert write_swmm(store, out, network_key="network/model_state_plane") == sum(
        bundle.counts().values()
    )
    written = {r[0]: r for r in rows(out)["COORDINATES"]}
    for r in file["COORDINATES"]:
        assert float(written[r[0]][1]) == pytest.approx(float(r[1]), abs=1e-5)
        assert float(written[r[0]][2]) == pytest.approx(float(r[2]), abs=1e-5)
    assert results(out)[2] == results(src)[2]


# -- export ---------------------------------------------------------------------------------------


SLOW = {"beta": 3, "epsilon": 24}  # hours simulated in the comparison runs


@pytest.mark.parametrize("name", [n for n in MODELS if n != "delta"])
def test_round_trip_simulates_the_same(make_twin, tmp_path, name):
    src = runnable(MODELS[name], tmp_path / "src", SLOW.get(name))
    store, bundle = load(make_twin, src)
    out = tmp_path / "exported.inp"
    written = write_swmm(store, out, network_key=f"network/{src.stem}")
    assert written == sum(bundle.counts().values())

    nodes, links, routing = results(src)
    nodes2, links2, routing2 = results(out)
    assert max(stats["peak_total_inflow"] for stats in nodes.values()) > 0  # water moved
    assert routing2 == pytest.approx(routing, rel=1e-9)
    assert nodes2.keys() == nodes.keys() and links2.keys() == links.keys()
    for n, stats in nodes.items():
        assert numbers(nodes2[n]) == pytest.approx(numbers(stats), rel=1e-6, abs=1e-9), n
    for link, stats in links.items():
        assert numbers(links2[link]) == pytest.approx(numbers(stats), rel=1e-6, abs=1e-9), link


@pytest.mark.parametrize("name", list(MODELS))
def test_reimport_of_export_is_identical(make_twin, tmp_path, name):
    src = MODELS[name]
    store, bundle = load(make_twin, src)
    out = tmp_path / "exported.inp"
    write_swmm(store, out, network_key=f"network/{src.stem}")
    again = read_swmm(out, "EPSG:32616", id_prefix=f"{src.stem}:")
    assert again.counts() == bundle.counts()
    for layer, frame in bundle.layers.items():
        other = again.layers[layer]
        assert list(other["id"]) == list(frame["id"])
        assert list(other["props"]) == list(frame["props"])
        for column in ("invert_level", "depth", "length", "diameter", "invert_from", "area"):
            if column in frame:
                assert other[column].tolist() == pytest.approx(
                    frame[column].tolist(), nan_ok=True
                ), column
        assert all(
            a.equals_exact(b, 1e-9) for a, b in zip(frame.geometry, other.geometry, strict=True)
        )
    doc, doc2 = bundle.documents[f"network/{src.stem}"], again.documents[f"network/{src.stem}"]
    assert doc2["section_order"] == doc["section_order"]
    assert doc2["sections"]["TIMESERIES"] == doc["sections"]["TIMESERIES"]


def test_edits_show_up_in_the_export(make_twin, tmp_path):
    src = runnable(pystorms("alpha"), tmp_path / "src")
    store, _ = load(make_twin, src)
    node = store.query(Query("utility_nodes", ids=["alpha:J2"]))
    node.loc[:, "invert_level"] += 0.5
    node["geometry"] = node.geometry.translate(10.0, 0.0)
    store.update("utility_nodes", node)
    link = store.query(Query("utility_links", ids=["alpha:C1b"]))
    link.loc[:, "length"] = 50.0
    store.update("utility_links", link)

    out = tmp_path / "alpha.inp"
    write_swmm(store, out, network_key="network/alpha")
    before, after = rows(src), rows(out)
    junctions = {r[0]: r for r in after["JUNCTIONS"]}
    assert float(junctions["J2"][1]) == pytest.approx(4969 + 0.5 / FT)
    assert junctions["J2"][2:] == ["4.2", "0", "0", "0"]
    assert [r for r in after["JUNCTIONS"] if r[0] != "J2"] == [
        r for r in before["JUNCTIONS"] if r[0] != "J2"
    ]
    conduits = {r[0]: r for r in after["CONDUITS"]}
    assert float(conduits["C1b"][3]) == pytest.approx(50.0 / FT)
    assert [r for r in after["CONDUITS"] if r[0] != "C1b"] == [
        r for r in before["CONDUITS"] if r[0] != "C1b"
    ]
    coords = {r[0]: r for r in after["COORDINATES"]}
    original = {r[0]: r for r in before["COORDINATES"]}
    assert float(coords["J2"][1]) == pytest.approx(float(original["J2"][1]) + 10.0)
    assert after["TIMESERIES"] == before["TIMESERIES"]
    assert results(out)[0]["J2"]["max_depth"] != results(src)[0]["J2"]["max_depth"]


def test_export_of_an_unknown_network_is_refused(make_twin, tmp_path):
    store, _ = load(make_twin, pystorms("theta"))
    with pytest.raises(InvalidInput, match="network/nope") as err:
        write_swmm(store, tmp_path / "x.inp", network_key="network/nope")
    assert "network/theta" in err.value.hint


# -- bad input ------------------------------------------------------------------------------------


def broken(tmp_path: Path, edit) -> tuple[Path, list[str]]:
    lines = pystorms("alpha").read_text().splitlines()
    path = tmp_path / "alpha.inp"
    path.write_text(edit(lines))
    return path, lines


def line_of(lines: list[str], start: str) -> int:
    return next(i for i, line in enumerate(lines, start=1) if line.startswith(start))


def assert_refused(make_twin, path: Path, line: int | None, feature: str, text: str) -> None:
    store = make_twin("EPSG:32616")
    with pytest.raises(InvalidInput) as err:
        load_bundle(store, read_swmm(path, "EPSG:32616"))
    assert err.value.source == str(path)
    assert err.value.line == line and err.value.feature == feature
    assert text in str(err.value) and err.value.hint
    assert all(store.count(Query(layer)) == 0 for layer in LAYERS)
    assert store.get_document("network/alpha") is None


def test_truncated_file_is_refused(make_twin, tmp_path):
    def cut(lines):
        n = line_of(lines, "C3a ")
        return "\n".join([*lines[: n - 1], lines[n - 1][:30]])  # cut in the middle of a row

    path, lines = broken(tmp_path, cut)
    assert_refused(make_twin, path, line_of(lines, "C3a "), "alpha:C3a", "needs at least")


def test_link_to_unknown_node_is_refused(make_twin, tmp_path):
    path, lines = broken(
        tmp_path,
        lambda ls: "\n".join(
            line.replace("JC1a             JC1b", "JC1a             NOWHERE") for line in ls
        ),
    )
    assert_refused(make_twin, path, line_of(lines, "C1b "), "alpha:C1b", "'NOWHERE'")


def test_non_numeric_invert_is_refused(make_twin, tmp_path):
    path, lines = broken(
        tmp_path,
        lambda ls: "\n".join(
            line.replace("J2               4969 ", "J2               49x9 ") for line in ls
        ),
    )
    assert_refused(make_twin, path, line_of(lines, "J2  "), "alpha:J2", "'49x9' is not a number")


def test_value_the_model_rejects_is_refused_with_its_line(make_twin, tmp_path):
    path, lines = broken(
        tmp_path,
        lambda ls: "\n".join(
            line.replace("J1               3.74", "J1               -3.74") for line in ls
        ),
    )
    assert_refused(make_twin, path, line_of(lines, "S1      "), "alpha:S1", "'area' must be >= 0")


def test_node_without_coordinates_is_refused(make_twin, tmp_path):
    def drop(lines):
        n = line_of(lines, "[COORDINATES]")
        return "\n".join(
            line for i, line in enumerate(lines, start=1) if not (i > n and line.startswith("J3 "))
        )

    path, lines = broken(tmp_path, drop)
    assert_refused(make_twin, path, line_of(lines, "J3 "), "alpha:J3", "no coordinates")

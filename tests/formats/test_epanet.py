"""EPANET INP through wntr: real networks in, the same hydraulics out."""

from __future__ import annotations

import numpy as np
import pytest
import wntr

from citytwin.errors import InvalidInput
from citytwin.formats.base import load_bundle
from citytwin.formats.epanet import read_epanet, write_epanet
from citytwin.formats.vector import Mapping, read_vector
from citytwin.store import Query
from tests.conftest import package_data

NET3 = package_data("wntr", "library", "networks", "Net3.inp")
KY4 = package_data("wntr", "library", "networks", "ky4.inp")
RICHMOND = package_data("epyt", "networks", "exeter-benchmarks", "Richmond_standard.inp")
# Richmond's coordinates are British National Grid in millimetres (metres x 1000)
RICHMOND_CRS = (
    "+proj=tmerc +lat_0=49 +lon_0=-2 +k=0.9996012717 +x_0=400000 +y_0=-100000 "
    "+ellps=airy +units=mm +no_defs"
)


def simulate(inp, tmp_path, name):
    wn = wntr.network.WaterNetworkModel(str(inp))
    return wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=str(tmp_path / name))


def test_ky4_inp_matches_its_gis_layers(make_twin, shared_data):
    store = make_twin("EPSG:32616")
    counts = load_bundle(store, read_epanet(KY4, store.meta.crs, crs="EPSG:3547"))
    wn = wntr.network.WaterNetworkModel(str(KY4))
    assert counts == {"utility_nodes": wn.num_nodes, "utility_links": wn.num_links}
    ky4 = shared_data / "ky4"
    for layer_file, cls in (
        ("junctions", "junction"),
        ("tanks", "tank"),
        ("reservoirs", "reservoir"),
    ):
        m = Mapping(
            "utility_nodes",
            cls=cls,
            id_field="name",
            id_prefix="gis:",
            constants={"network": "water_supply"},
        )
        load_bundle(store, read_vector(ky4 / f"ky4_{layer_file}.geojson", store.meta.crs, [m]))
        inp = store.query(
            Query("utility_nodes", classes=[cls], where=[_prefix("ky4:")], order_by="name")
        )
        gis = store.query(
            Query("utility_nodes", classes=[cls], where=[_prefix("gis:")], order_by="name")
        )
        assert len(inp) == len(gis) > 0
        assert list(inp["name"]) == list(gis["name"])
        assert np.allclose(inp.geometry.x, gis.geometry.x, atol=1e-6)
        assert np.allclose(inp.geometry.y, gis.geometry.y, atol=1e-6)
    m = Mapping(
        "utility_links",
        cls="pipe",
        id_field="name",
        id_prefix="gis:",
        fields={"from_node": "start_node_name", "to_node": "end_node_name"},
        constants={"network": "water_supply"},
    )
    load_bundle(store, read_vector(ky4 / "ky4_pipes.geojson", store.meta.crs, [m]))
    inp = store.query(
        Query("utility_links", classes=["pipe"], where=[_prefix("ky4:")], order_by="name")
    )
    gis = store.query(
        Query("utility_links", classes=["pipe"], where=[_prefix("gis:")], order_by="name")
    )
    assert len(inp) == len(gis) == 1156
    assert (
        inp.geometry.reset_index(drop=True)
        .geom_equals_exact(gis.geometry.reset_index(drop=True), tolerance=1e-6)
        .all()
    )
    assert np.allclose(inp["diameter"], gis["diameter"]) and np.allclose(
        inp["length"], gis["length"]
    )
    assert store.count(Query("utility_links", classes=["pump"])) == 2


def _prefix(p):
    from citytwin.store import Filter

    return Filter("id", "startswith", p)


def test_richmond_real_coordinates(make_twin):
    store = make_twin("EPSG:27700")
    load_bundle(store, read_epanet(RICHMOND, store.meta.crs, crs=RICHMOND_CRS))
    wn = wntr.network.WaterNetworkModel(str(RICHMOND))
    nodes = store.query(Query("utility_nodes"))
    assert len(nodes) == wn.num_nodes
    assert store.count(Query("utility_links")) == wn.num_links
    assert store.count(Query("utility_links", classes=["pump"])) == wn.num_pumps
    assert store.count(Query("utility_nodes", classes=["tank"])) == wn.num_tanks
    x, y = nodes.geometry.x, nodes.geometry.y  # Richmond, North Yorkshire: ~E 417 km, N 501 km
    assert x.min() > 405_000 and x.max() < 430_000 and y.min() > 490_000 and y.max() < 510_000
    node1 = store.get("utility_nodes", "Richmond_standard:1")
    assert node1.geometry.x == pytest.approx(422347.008, abs=1e-3)


@pytest.mark.parametrize(
    ("inp", "twin_crs", "crs"), [(NET3, "EPSG:32650", None), (RICHMOND, "EPSG:27700", RICHMOND_CRS)]
)
def test_round_trip_gives_the_same_hydraulics(make_twin, tmp_path, inp, twin_crs, crs):
    store = make_twin(twin_crs)
    bundle = read_epanet(inp, store.meta.crs, crs=crs)
    load_bundle(store, bundle)
    key = next(iter(bundle.documents))
    out = tmp_path / "out.inp"
    write_epanet(store, out, network_key=key)
    a, b = simulate(inp, tmp_path, "a"), simulate(out, tmp_path, "b")
    for table in ("pressure", "head", "demand"):
        x = a.node[table]
        y = b.node[table][x.columns]
        assert x.shape == y.shape and x.shape[0] > 1
        assert np.allclose(x.to_numpy(), y.to_numpy(), atol=1e-3), table
    flow_a, flow_b = a.link["flowrate"], b.link["flowrate"][a.link["flowrate"].columns]
    assert np.allclose(flow_a.to_numpy(), flow_b.to_numpy(), atol=1e-5)
    if crs is not None:  # coordinates go back into the source CRS
        wn = wntr.network.WaterNetworkModel(str(out))
        assert wn.get_node("1").coordinates == pytest.approx((422347008.0, 499939008.0), abs=1.0)


def test_edited_features_change_the_export(make_twin, tmp_path):
    store = make_twin("EPSG:32650")
    load_bundle(store, read_epanet(NET3, store.meta.crs))
    pipe = store.query(Query("utility_links", ids=["Net3:20"]))
    pipe["diameter"] = 0.3
    store.update("utility_links", pipe)
    node = store.query(Query("utility_nodes", ids=["Net3:10"]))
    node["elevation"] = node["elevation"] + 5.0
    store.update("utility_nodes", node)
    out = tmp_path / "edited.inp"
    write_epanet(store, out, network_key="network/Net3")
    wn = wntr.network.WaterNetworkModel(str(out))
    assert wn.get_link("20").diameter == pytest.approx(0.3)
    orig = wntr.network.WaterNetworkModel(str(NET3))
    assert wn.get_node("10").elevation == pytest.approx(orig.get_node("10").elevation + 5.0)


def test_truncated_and_garbled_inp_name_the_line(make_twin, tmp_path):
    store = make_twin("EPSG:32650")
    text = NET3.read_text()
    cut = tmp_path / "cut.inp"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(InvalidInput, match="Error 205: undefined time pattern") as err:
        read_epanet(cut, store.meta.crs)
    assert "cut.inp" in str(err.value) and err.value.line is not None

    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(" 20 ") and "Open" in line)
    lines[i] = lines[i].replace("99", "abc", 1)
    bad = tmp_path / "bad.inp"
    bad.write_text("\n".join(lines))
    with pytest.raises(InvalidInput, match="illegal numeric value abc in \\[PIPES\\]") as err:
        read_epanet(bad, store.meta.crs)
    assert err.value.line == i + 1
    assert store.count(Query("utility_nodes")) == 0


def test_unknown_crs_for_inp(make_twin):
    store = make_twin("EPSG:32650")
    with pytest.raises(InvalidInput, match="unknown CRS") as err:
        read_epanet(NET3, store.meta.crs, crs="EPSG:999999")
    assert "Net3.inp" in str(err.value)

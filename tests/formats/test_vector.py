"""OGR vector formats and GeoParquet on the real KY4 network layers (EPSG:3547, US feet)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
from pyproj import Transformer

from citytwin.errors import InvalidInput
from citytwin.formats.base import load_bundle
from citytwin.formats.vector import Mapping, load_mappings, read_vector, write_vector
from citytwin.store import Query

TWIN_CRS = "EPSG:32616"  # UTM 16N, metres


def junctions(prefix="ky4:"):
    return Mapping(
        "utility_nodes",
        cls="junction",
        id_field="name",
        id_prefix=prefix,
        constants={"network": "water_supply"},
    )


def pipes(prefix="ky4:"):
    return Mapping(
        "utility_links",
        cls="pipe",
        id_field="name",
        id_prefix=prefix,
        fields={"from_node": "start_node_name", "to_node": "end_node_name"},
        constants={"network": "water_supply"},
    )


def test_ky4_layers_import_reprojected_with_attributes(make_twin, shared_data):
    store = make_twin(TWIN_CRS)
    ky4 = shared_data / "ky4"
    assert load_bundle(
        store, read_vector(ky4 / "ky4_junctions.geojson", TWIN_CRS, [junctions()])
    ) == {"utility_nodes": 959}
    assert load_bundle(store, read_vector(ky4 / "ky4_pipes.geojson", TWIN_CRS, [pipes()])) == {
        "utility_links": 1156
    }

    src = gpd.read_file(ky4 / "ky4_junctions.geojson").set_index("name")
    got = store.query(Query("utility_nodes")).set_index("name")
    to_utm = Transformer.from_crs("EPSG:3547", TWIN_CRS, always_xy=True)
    x, y = to_utm.transform(src.geometry.x.to_numpy(), src.geometry.y.to_numpy())
    got = got.loc[src.index]
    assert np.allclose(got.geometry.x, x, atol=1e-6) and np.allclose(got.geometry.y, y, atol=1e-6)
    assert np.allclose(got["elevation"], src["elevation"])  # same-named fields map by themselves
    assert np.allclose(got["base_demand"], src["base_demand"])
    assert got["props"].iloc[0]["demand_pattern"] == "1"  # unmapped fields are kept, not lost
    link = store.get("utility_links", "ky4:P-1")
    assert link.attributes["from_node"] == "ky4:J-1" and link.attributes["to_node"] == "ky4:J-34"
    assert link.attributes["diameter"] == pytest.approx(0.1524)
    # a pipe's length survives reprojection: geometry in metres vs the stored EPANET length
    assert link.geometry.length == pytest.approx(link.attributes["length"], rel=0.05)


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".shp", ".fgb", ".parquet"])
def test_export_and_reimport_round_trip(make_twin, shared_data, tmp_path, suffix):
    store = make_twin(TWIN_CRS)
    load_bundle(store, read_vector(shared_data / "ky4" / "ky4_pipes.geojson", TWIN_CRS, [pipes()]))
    out = tmp_path / f"pipes{suffix}"
    assert write_vector(store, "utility_links", out) == 1156
    again = make_twin(TWIN_CRS)
    # exported files carry id, class and attribute columns: they map back by name alone
    load_bundle(again, read_vector(out, TWIN_CRS, [Mapping("utility_links")]))
    a = store.query(Query("utility_links", order_by="id"))
    b = again.query(Query("utility_links", order_by="id"))
    assert list(a["id"]) == list(b["id"])
    assert np.allclose(a["diameter"], b["diameter"]) and list(a["to_node"]) == list(b["to_node"])
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=1e-6).all()
    if suffix != ".shp":  # Shapefile cuts field names to 10 characters
        assert a["props"].iloc[0] == b["props"].iloc[0]
        assert list(a["initial_status"]) == list(b["initial_status"])


def test_mapping_file_and_export_filters(make_twin, shared_data, tmp_path):
    spec = tmp_path / "map.yaml"
    spec.write_text(
        "layer: utility_nodes\nclass: tank\nid_field: name\nid_prefix: 'ky4:'\n"
        "fields: {elevation: elevation}\nconstants: {network: water_supply}\n"
    )
    store = make_twin(TWIN_CRS)
    load_bundle(
        store, read_vector(shared_data / "ky4" / "ky4_tanks.geojson", TWIN_CRS, load_mappings(spec))
    )
    assert store.count(Query("utility_nodes", classes=["tank"])) == 4
    out = tmp_path / "high.geojson"
    q = Query("utility_nodes", where=[], order_by="-elevation", limit=2)
    assert write_vector(store, "utility_nodes", out, query=q, crs="EPSG:4326") == 2
    doc = json.loads(out.read_text())
    lon, lat = doc["features"][0]["geometry"]["coordinates"]
    assert -90 < lon < -80 and 35 < lat < 40  # Kentucky


def test_mapping_errors_are_clear(tmp_path):
    with pytest.raises(InvalidInput, match="does not have"):
        Mapping("buildings", fields={"colour": "c"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: buildings\nkolour: 3\n")
    with pytest.raises(InvalidInput, match="unknown mapping key") as err:
        load_mappings(bad)
    assert "bad.yaml" in str(err.value)


# -- bad input: one clear error, store unchanged ------------------------------------------


def _nodes_geojson(tmp_path, features, crs="urn:ogc:def:crs:EPSG::3547"):
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": features,
    }
    path = tmp_path / "nodes.geojson"
    path.write_text(json.dumps(doc, indent=1))
    return path


def _point(name, elevation=100.0, xy=(4971350.0, 3905604.0)):
    return {
        "type": "Feature",
        "properties": {"name": name, "elevation": elevation},
        "geometry": {"type": "Point", "coordinates": list(xy)},
    }


def _assert_unchanged(store):
    assert store.count(Query("utility_nodes")) == 0 and store.count(Query("utility_links")) == 0


def test_truncated_file(make_twin, shared_data, tmp_path):
    store = make_twin(TWIN_CRS)
    text = (shared_data / "ky4" / "ky4_junctions.geojson").read_text()
    cut = tmp_path / "cut.geojson"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(InvalidInput, match="can't read as a vector dataset") as err:
        load_bundle(store, read_vector(cut, TWIN_CRS, [junctions()]))
    assert "cut.geojson" in str(err.value)
    _assert_unchanged(store)


def test_unknown_crs(make_twin, tmp_path):
    store = make_twin(TWIN_CRS)
    path = _nodes_geojson(tmp_path, [_point("J-1")])
    with pytest.raises(InvalidInput, match="unknown CRS 'EPSG:999999'"):
        read_vector(path, TWIN_CRS, [junctions()], crs="EPSG:999999")
    bare = tmp_path / "bare.geojson"
    bare.write_text(
        json.dumps({"type": "FeatureCollection", "features": [_point("J-1", xy=(1e9, 1e9))]})
    )
    # GeoJSON without a crs member is WGS84 by RFC 7946: these coordinates are impossible there
    with pytest.raises(InvalidInput, match="can't be transformed from EPSG:4326") as err:
        load_bundle(store, read_vector(bare, TWIN_CRS, [junctions()]))
    assert "bare.geojson" in str(err.value) and err.value.feature == "ky4:J-1"
    _assert_unchanged(store)


def test_invalid_geometry_names_feature_and_line(make_twin, tmp_path):
    store = make_twin(TWIN_CRS)
    bowtie = {
        "type": "Feature",
        "properties": {"name": "B-7", "height": 10},
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]],
        },
    }
    ok = {
        **bowtie,
        "properties": {"name": "B-1", "height": 5},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]},
    }
    path = _nodes_geojson(tmp_path, [ok, bowtie], crs="urn:ogc:def:crs:EPSG::32616")
    m = Mapping("buildings", cls="building", id_field="name")
    with pytest.raises(InvalidInput, match="invalid geometry") as err:
        load_bundle(store, read_vector(path, TWIN_CRS, [m]))
    assert err.value.feature == "B-7"
    lines = path.read_text().splitlines()
    assert '"Feature"' in lines[err.value.line - 1]
    assert '"B-7"' in "".join(lines[err.value.line - 1 : err.value.line + 4])
    assert "nodes.geojson" in str(err.value) and f"line {err.value.line}" in str(err.value)
    assert store.count(Query("buildings")) == 0


def test_missing_required_field_and_wrong_type(make_twin, shared_data, tmp_path):
    store = make_twin(TWIN_CRS)
    # pipes whose to-node field is not mapped: to_node is required
    m = Mapping(
        "utility_links",
        cls="pipe",
        id_field="name",
        fields={"from_node": "start_node_name"},
        constants={"network": "water_supply"},
    )
    with pytest.raises(InvalidInput, match="required attribute 'to_node' is missing") as err:
        load_bundle(store, read_vector(shared_data / "ky4" / "ky4_pipes.geojson", TWIN_CRS, [m]))
    assert err.value.feature == "P-1" and "ky4_pipes.geojson" in str(err.value)

    path = _nodes_geojson(tmp_path, [_point("J-1"), _point("J-2"), _point("J-3", elevation="high")])
    with pytest.raises(
        InvalidInput, match="attribute 'elevation' expects float, got 'high'"
    ) as err:
        load_bundle(store, read_vector(path, TWIN_CRS, [junctions()]))
    assert err.value.feature == "ky4:J-3" and err.value.line is not None
    _assert_unchanged(store)


@pytest.mark.parametrize("suffix", [".parquet", ".gpkg", ".fgb"])
def test_large_sources_stream_in_chunks_all_or_nothing(
    make_twin, shared_data, tmp_path, monkeypatch, suffix
):
    import citytwin.formats.vector as vector

    store = make_twin(TWIN_CRS)
    load_bundle(store, read_vector(shared_data / "ky4" / "ky4_pipes.geojson", TWIN_CRS, [pipes()]))
    path = tmp_path / f"pipes{suffix}"
    write_vector(store, "utility_links", path)
    monkeypatch.setattr(vector, "CHUNK_ROWS", 300)  # 1,156 pipes: four chunks

    bundle = read_vector(path, TWIN_CRS, [Mapping("utility_links")])
    assert bundle.expected == 1156 and not isinstance(
        bundle.layers["utility_links"], gpd.GeoDataFrame
    )
    seen = []
    chunked = make_twin(TWIN_CRS)
    counts = load_bundle(chunked, bundle, progress=lambda done, total: seen.append((done, total)))
    assert counts == {"utility_links": 1156}
    assert len(seen) >= 4 and seen[-1] == (1156, 1156)
    a = store.query(Query("utility_links", order_by="id"))
    b = chunked.query(Query("utility_links", order_by="id"))
    assert list(a["id"]) == list(b["id"]) and np.allclose(a["length"], b["length"])

    # a bad value in the last chunk: nothing of the earlier chunks stays
    frame = gpd.read_file(path) if suffix != ".parquet" else gpd.read_parquet(path)
    frame.loc[len(frame) - 1, "diameter"] = -1.0
    bad = tmp_path / f"bad{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(bad)
    else:
        frame.to_file(bad)
    empty = make_twin(TWIN_CRS)
    with pytest.raises(InvalidInput, match="'diameter' must be >= 0"):
        load_bundle(empty, read_vector(bad, TWIN_CRS, [Mapping("utility_links")]))
    # the same id in two chunks is caught too
    frame.loc[len(frame) - 1, ["diameter", "id"]] = [0.2, frame["id"].iloc[0]]
    dup = tmp_path / f"dup{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(dup)
    else:
        frame.to_file(dup)
    with pytest.raises(InvalidInput, match="duplicate feature id"):
        load_bundle(empty, read_vector(dup, TWIN_CRS, [Mapping("utility_links")]))
    assert empty.count(Query("utility_links")) == 0

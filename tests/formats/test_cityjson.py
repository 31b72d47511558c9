"""CityJSON import, export and validation on the real files in shared/data/cityjson."""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from pathlib import Path

import cityjson_lib
import geopandas as gpd
import numpy as np
import pytest
import shapely
from pyproj import Transformer

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, load_bundle
from citytwin.formats.cityjson import read_cityjson, validate_cityjson, write_cityjson
from citytwin.store import Query
from tests.conftest import SHARED_DATA

# file -> (twin CRS, CRS to give: None where the file names its own)
FILES = {
    "delft.json": ("EPSG:28992", None),  # 2.0, EPSG:7415 (RD New + NAP)
    "DH_01_subs.city.json": ("EPSG:28992", "EPSG:7415"),  # 1.1, no CRS in the file
    "rotterdam_subset.json": ("EPSG:28992", "EPSG:7415"),  # 2.0, no CRS in the file
    "zurich_subset_lod2.json": ("EPSG:2056", None),  # 1.1, EPSG:2056, parts carry geometry
    "multi_lod.json": ("EPSG:28992", "EPSG:7415"),  # 2.0, 3D BAG LoD 1.2/1.3/2.2
}
SURFACE_DEPTH = {
    "MultiSurface": 3,
    "CompositeSurface": 3,
    "Solid": 4,
    "MultiSolid": 5,
    "CompositeSolid": 5,
}


@functools.cache
def source(name: str) -> dict:
    return json.loads((SHARED_DATA / "cityjson" / name).read_text(encoding="utf-8"))


@functools.cache
def imported(name: str, twin_crs: str | None = None) -> ImportBundle:
    """The file read into a twin CRS (shared between tests, never modified)."""
    twin, crs = FILES[name]
    return read_cityjson(SHARED_DATA / "cityjson" / name, twin_crs or twin, crs=crs)


def real_vertices(doc: dict) -> np.ndarray:
    t = doc["transform"]
    return np.asarray(doc["vertices"], dtype=float) * t["scale"] + t["translate"]


def coords(geometry_3d: dict | None) -> np.ndarray:
    """Every [x, y, z] of a geometry_3d, in order."""
    out: list = []

    def walk(b):
        if b and isinstance(b[0], int | float):
            out.append(b)
        else:
            for sub in b:
                walk(sub)

    for g in (geometry_3d or {}).get("geometries", []):
        walk(g["boundaries"])
    return np.asarray(out, dtype=float).reshape(-1, 3)


def write_doc(tmp_path: Path, doc: dict, name: str = "doc.city.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def signed_volume(shell: list, vertices: np.ndarray) -> float:
    """Volume of a closed shell by the divergence theorem; positive if the faces point out."""
    vertices = vertices - vertices.min(axis=0)
    vol = 0.0
    for surface in shell:
        for ring in surface:  # holes run the other way round and count negative
            xyz = vertices[ring]
            for i in range(1, len(xyz) - 1):
                vol += np.dot(xyz[0], np.cross(xyz[i], xyz[i + 1])) / 6
    return vol


def test_the_table_names_every_shared_file(shared_data):
    assert sorted(p.name for p in (shared_data / "cityjson").glob("*.json")) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
def test_import_counts_footprints_heights(make_twin, shared_data, name):
    twin, _ = FILES[name]
    doc = source(name)
    bundle = imported(name)
    store = make_twin(twin)
    counts = load_bundle(store, bundle)

    types = Counter(o["type"] for o in doc["CityObjects"].values())
    n_buildings = types["Building"] + types["BuildingPart"]
    assert counts.get("buildings", 0) == n_buildings
    assert counts.get("city_objects", 0) == len(doc["CityObjects"]) - n_buildings
    got = store.query(Query("buildings"))
    assert Counter(got["class"]) == {
        k: v
        for k, v in {"building": types["Building"], "building_part": types["BuildingPart"]}.items()
        if v
    }
    if "city_objects" in counts:
        others = store.query(Query("city_objects"))
        assert Counter(others["source_type"]) == {
            t: n for t, n in types.items() if t not in ("Building", "BuildingPart")
        }

    # footprints: valid polygons inside the file's extent (the twin shares its horizontal CRS)
    everything = gpd.pd.concat([store.query(Query(layer)) for layer in counts])
    assert set(everything.geom_type) <= {"Polygon", "MultiPolygon"}
    assert everything.is_valid.all() and (everything.area > 0).all()
    v = real_vertices(doc)
    lo, hi = v.min(axis=0), v.max(axis=0)
    if "geographicalExtent" in doc.get("metadata", {}):
        ext = doc["metadata"]["geographicalExtent"]
        assert np.all(lo >= np.array(ext[:3]) - 1e-3) and np.all(hi <= np.array(ext[3:]) + 1e-3)
    minx, miny, maxx, maxy = everything.total_bounds
    assert minx >= lo[0] - 1e-3 and miny >= lo[1] - 1e-3
    assert maxx <= hi[0] + 1e-3 and maxy <= hi[1] + 1e-3

    # heights positive and within the vertical extent of the data; a CIM level per LoD
    assert got["height"].notna().all() and (got["height"] > 0).all()
    assert (got["height"] <= hi[2] - lo[2] + 1e-6).all()
    assert got["lod"].notna().all()
    assert set(got["cim_level"]) <= {3, 4}
    assert (got.loc[got["lod"].str.startswith("2"), "cim_level"] == 4).all()


def test_delft_counts_attributes_and_3d(make_twin, shared_data):
    store = make_twin("EPSG:28992")
    assert load_bundle(store, imported("delft.json")) == {"buildings": 160, "city_objects": 410}
    others = store.query(Query("city_objects"))
    assert Counter(others["class"]) == {
        "road": 143,
        "plant_cover": 126,
        "land_use": 81,
        "generic": 54,
        "bridge": 3,
        "water_body": 3,
    }
    fid = "b1105d28c-00ba-11e6-b420-2bdcc4ab5d7f"
    src = source("delft.json")["CityObjects"][fid]
    b = store.get("buildings", fid)
    assert b.attributes["height"] == 6  # measuredHeight
    assert b.attributes["lod"] == "1" and b.attributes["cim_level"] == 3
    assert "measuredHeight" not in b.props
    assert b.props["identificatiebagpnd"] == src["attributes"]["identificatiebagpnd"]
    # the 3D geometry keeps every vertex, with real coordinates
    doc = source("delft.json")
    idx = np.asarray(src["geometry"][0]["boundaries"]).reshape(-1)
    assert b.geometry_3d["geometries"][0]["type"] == "Solid"
    np.testing.assert_allclose(coords(b.geometry_3d), real_vertices(doc)[idx], atol=1e-6)
    road = others[others["class"] == "road"].iloc[0]
    assert road["props"]["function"] == doc["CityObjects"][road["id"]]["attributes"]["function"]


@pytest.mark.parametrize(
    "name",
    ["DH_01_subs.city.json", "rotterdam_subset.json", "zurich_subset_lod2.json", "multi_lod.json"],
)
def test_lod2_semantics_kept_in_geometry_3d(make_twin, name):
    store = make_twin(FILES[name][0])
    load_bundle(store, imported(name))
    got = store.query(Query("buildings")).set_index("id")
    doc = source(name)
    n_checked = 0
    for oid, obj in doc["CityObjects"].items():
        g3 = got.loc[oid, "geometry_3d"]
        if not obj.get("geometry"):
            assert g3 is None
            continue
        assert [g["lod"] for g in g3["geometries"]] == [g["lod"] for g in obj["geometry"]]
        for mine, theirs in zip(g3["geometries"], obj["geometry"], strict=True):
            assert mine["type"] == theirs["type"]
            assert mine.get("semantics") == theirs.get("semantics")
            if theirs["lod"].startswith("2"):
                kinds = {s["type"] for s in mine["semantics"]["surfaces"]}
                assert {"RoofSurface", "WallSurface"} <= kinds
                n_checked += 1
            assert len(coords({"geometries": [mine]})) == len(indices(theirs))
    assert n_checked > 0


def indices(g: dict) -> list:
    out: list = []

    def walk(b):
        for x in b:
            if isinstance(x, int):
                out.append(x)
            else:
                walk(x)

    walk(g["boundaries"])
    return out


@pytest.mark.parametrize("name", ["DH_01_subs.city.json", "zurich_subset_lod2.json"])
def test_building_parts_keep_their_parent(make_twin, name):
    twin, crs = FILES[name]
    store = make_twin(twin)
    load_bundle(
        store, read_cityjson(SHARED_DATA / "cityjson" / name, twin, crs=crs, id_prefix="x:")
    )
    got = store.query(Query("buildings")).set_index("id")
    doc = source(name)
    parts = got[got["class"] == "building_part"]
    assert len(parts) == sum(o["type"] == "BuildingPart" for o in doc["CityObjects"].values())
    for pid, part in parts.iterrows():
        parent = doc["CityObjects"][pid[2:]]["parents"][0]
        assert part["parent_id"] == "x:" + parent
        assert got.loc[part["parent_id"], "class"] == "building"
    # a building without geometry of its own: its footprint is the union of its parts'
    for bid, b in got[got["class"] == "building"].iterrows():
        if b["geometry_3d"] is None:
            mine = parts[parts["parent_id"] == bid]
            assert len(mine) > 0
            union = shapely.union_all(mine.geometry.to_numpy())
            assert abs(b.geometry.area - union.area) <= 1e-6 * union.area
            assert b["height"] == pytest.approx(
                max(h + g for h, g in zip(mine["height"], mine["ground_level"], strict=True))
                - min(mine["ground_level"])
            )


def test_multi_lod_3dbag_attributes(make_twin):
    store = make_twin("EPSG:28992")
    load_bundle(store, imported("multi_lod.json"))
    got = store.query(Query("buildings")).set_index("id")
    for oid, obj in source("multi_lod.json")["CityObjects"].items():
        b = got.loc[oid]
        assert b["lod"] == "2.2" and b["cim_level"] == 4
        assert b["year_built"] == obj["attributes"]["oorspronkelijk_bouwjaar"]
        assert b["ground_level"] == obj["attributes"]["h_maaiveld"]
        top = coords({"geometries": [b["geometry_3d"]["geometries"][2]]})[:, 2].max()
        assert b["height"] == pytest.approx(top - obj["attributes"]["h_maaiveld"])
        assert b["props"]["identificatie"] == obj["attributes"]["identificatie"]
        # the footprint is the LoD2.2 ground surface: flat at the lowest z of the geometry
        assert b.geometry.area > 0


@pytest.mark.parametrize("name", FILES)
def test_export_validates_and_round_trips(make_twin, tmp_path, name):
    twin, _ = FILES[name]
    store = make_twin(twin)
    load_bundle(store, imported(name))
    out = tmp_path / "out.city.json"
    before = store.query(Query("buildings")).set_index("id").sort_index()
    assert write_cityjson(store, out) == len(before)

    doc = json.loads(out.read_text())
    assert validate_cityjson(doc) == []
    # an independent, strict CityJSON 2.0 implementation (cityjson-lib, Rust) reads it
    summary = cityjson_lib.CityModel.parse_document_bytes(out.read_bytes()).summary()
    assert summary.cityobject_count == len(doc["CityObjects"])
    assert summary.vertex_count == len(doc["vertices"])
    assert doc["version"] == "2.0" and doc["transform"]["scale"] == [0.001] * 3
    assert doc["metadata"]["referenceSystem"] == (
        f"https://www.opengis.net/def/crs/EPSG/0/{twin.split(':')[1]}"
    )
    assert all(isinstance(i, int) for v in doc["vertices"][:100] for i in v)
    heights = {oid: o["attributes"].get("measuredHeight") for oid, o in doc["CityObjects"].items()}
    assert heights == before["height"].to_dict()

    again = make_twin(twin, name="again")
    load_bundle(again, read_cityjson(out, twin))
    after = again.query(Query("buildings")).set_index("id").sort_index()
    assert list(after.index) == list(before.index)
    assert (after["class"] == before["class"]).all()
    assert after["parent_id"].fillna("").equals(before["parent_id"].fillna(""))
    np.testing.assert_allclose(after.area, before.area, rtol=1e-6)
    np.testing.assert_allclose(after["height"], before["height"], rtol=0, atol=1e-9)
    for fid in before.index:
        a, b = coords(before.loc[fid, "geometry_3d"]), coords(after.loc[fid, "geometry_3d"])
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3)


def test_export_extrudes_footprints_without_3d(make_twin, tmp_path):
    """Buildings with no stored 3D geometry become LoD1 blocks (LoD0 without a height)."""
    store = make_twin("EPSG:28992")
    delft = imported("delft.json").layers["buildings"]
    flat = delft.assign(geometry_3d=None)
    courtyard = shapely.Polygon(
        [(85000, 447500), (85020, 447500), (85020, 447520), (85000, 447520)],
        [[(85005, 447505), (85005, 447515), (85015, 447515), (85015, 447505)]],
    )
    twins = shapely.MultiPolygon(
        [shapely.box(85100, 447600, 85110, 447610), shapely.box(85120, 447600, 85125, 447612)]
    )
    extra = gpd.GeoDataFrame(
        {
            "id": ["courtyard", "twins", "flat"],
            "class": ["building"] * 3,
            "height": [12.5, 7.0, None],
            "ground_level": [1.25, None, 0.5],
            "floors": [4, 2, None],
            "use": ["residential", "office", None],
            "props": [{"architect": "X"}, {}, {}],
        },
        geometry=[courtyard, twins, shapely.box(85200, 447700, 85210, 447705)],
        crs="EPSG:28992",
    )
    load_bundle(store, ImportBundle("test", {"buildings": gpd.pd.concat([flat, extra])}))
    out = tmp_path / "blocks.city.json"
    assert write_cityjson(store, out) == 163
    doc = json.loads(out.read_text())
    assert validate_cityjson(doc) == []
    objs = doc["CityObjects"]
    v = real_vertices(doc)
    assert objs["courtyard"]["attributes"] == {
        "architect": "X",
        "measuredHeight": 12.5,
        "ground_level": 1.25,
        "storeysAboveGround": 4,
        "function": "residential",
    }
    solid = objs["courtyard"]["geometry"][0]
    assert (solid["type"], solid["lod"]) == ("Solid", "1")
    assert signed_volume(solid["boundaries"][0], v) == pytest.approx(300 * 12.5)
    assert objs["twins"]["geometry"][0]["type"] == "MultiSolid"
    assert sum(signed_volume(s[0], v) for s in objs["twins"]["geometry"][0]["boundaries"]) == (
        pytest.approx(160 * 7.0)
    )
    assert (objs["flat"]["geometry"][0]["type"], objs["flat"]["geometry"][0]["lod"]) == (
        "MultiSurface",
        "0",
    )
    for fid in delft["id"][:20]:
        g = objs[fid]["geometry"][0]
        assert signed_volume(g["boundaries"][0], v) > 0

    again = make_twin("EPSG:28992", name="again")
    load_bundle(again, read_cityjson(out, "EPSG:28992"))
    before = store.query(Query("buildings")).set_index("id").sort_index()
    after = again.query(Query("buildings")).set_index("id").sort_index()
    np.testing.assert_allclose(after.area, before.area, rtol=1e-6)
    assert after.loc["courtyard"].geometry.equals(before.loc["courtyard"].geometry)
    assert after.loc["courtyard", "use"] == "residential"
    assert after.loc["courtyard", "floors"] == 4
    assert after.loc["courtyard", "lod"] == "1" and after.loc["flat", "lod"] == "0"
    np.testing.assert_allclose(after["height"].dropna(), before["height"].dropna(), atol=1e-9)
    assert np.isnan(after.loc["flat", "height"])


def test_export_bbox_brings_the_parent_along(make_twin, tmp_path):
    store = make_twin("EPSG:2056")
    load_bundle(store, imported("zurich_subset_lod2.json"))
    parts = store.query(Query("buildings", classes=["building_part"]))
    part = parts.iloc[0]
    out = tmp_path / "box.city.json"
    n = write_cityjson(store, out, bbox=tuple(part.geometry.buffer(0.1).bounds))
    doc = json.loads(out.read_text())
    assert validate_cityjson(doc) == []
    objs = doc["CityObjects"]
    assert part["id"] in objs and part["parent_id"] in objs and n == len(objs) < 210
    assert part["id"] in objs[part["parent_id"]]["children"]
    assert objs[part["parent_id"]]["geometry"] == []


def test_reprojection_into_utm(shared_data):
    bundle = imported("delft.json", "EPSG:32631")
    doc = source("delft.json")
    fid = "b1105d28c-00ba-11e6-b420-2bdcc4ab5d7f"
    b = bundle.layers["buildings"].set_index("id").loc[fid]
    first = doc["CityObjects"][fid]["geometry"][0]["boundaries"][0][0][0][0]
    x, y, z = real_vertices(doc)[first]
    ux, uy = Transformer.from_crs("EPSG:28992", "EPSG:32631", always_xy=True).transform(x, y)
    got = coords(b["geometry_3d"])[0]
    assert got[0] == pytest.approx(ux, abs=2e-4) and got[1] == pytest.approx(uy, abs=2e-4)
    assert got[2] == pytest.approx(z, abs=1e-9)  # NAP height kept
    assert b.geometry.contains(shapely.Point(got[:2])) or b.geometry.touches(shapely.Point(got[:2]))
    ext = doc["metadata"]["geographicalExtent"]
    bounds = Transformer.from_crs("EPSG:28992", "EPSG:32631", always_xy=True).transform_bounds(
        ext[0], ext[1], ext[3], ext[4]
    )
    for layer_frame in bundle.layers.values():
        minx, miny, maxx, maxy = layer_frame.total_bounds
        assert minx >= bounds[0] - 1e-3 and miny >= bounds[1] - 1e-3
        assert maxx <= bounds[2] + 1e-3 and maxy <= bounds[3] + 1e-3
    native = imported("delft.json").layers["buildings"].set_index("id").loc[fid]
    assert b.geometry.area == pytest.approx(native.geometry.area, rel=1e-3)


def test_cityjson_1_0_reads_like_1_1(tmp_path):
    """The same buildings as CityJSON 1.0: real-number vertices, numeric lods, a URN CRS."""
    doc = copy.deepcopy(source("DH_01_subs.city.json"))
    doc["vertices"] = real_vertices(doc).tolist()
    del doc["transform"]
    doc["version"] = "1.0"
    doc["metadata"]["referenceSystem"] = "urn:ogc:def:crs:EPSG::7415"
    for obj in doc["CityObjects"].values():
        for g in obj.get("geometry", []):
            g["lod"] = int(g["lod"])
    old = read_cityjson(write_doc(tmp_path, doc), "EPSG:28992").layers["buildings"]
    new = imported("DH_01_subs.city.json").layers["buildings"]
    assert list(old["id"]) == list(new["id"])
    assert list(old["lod"]) == list(new["lod"]) == ["2"] * len(new)
    np.testing.assert_allclose(old.area, new.area, rtol=1e-9)
    np.testing.assert_allclose(old["height"], new["height"], atol=1e-6)


def test_geometry_instances_are_placed(tmp_path, make_twin):
    """A template (a 1 m cube) placed twice, scaled by 2 and moved to its reference points."""
    cube = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]
    shell = [
        [[0, 3, 2, 1]],
        [[4, 5, 6, 7]],
        [[0, 1, 5, 4]],
        [[1, 2, 6, 5]],
        [[2, 3, 7, 6]],
        [[3, 0, 4, 7]],
    ]
    scale2 = [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1]
    doc = {
        "type": "CityJSON",
        "version": "2.0",
        "transform": {"scale": [0.001] * 3, "translate": [85000.0, 447500.0, 0.0]},
        "metadata": {"referenceSystem": "https://www.opengis.net/def/crs/EPSG/0/7415"},
        "geometry-templates": {
            "templates": [{"type": "Solid", "lod": "2", "boundaries": [shell]}],
            "vertices-templates": cube,
        },
        "CityObjects": {
            **{
                f"tree{i}": {
                    "type": "SolitaryVegetationObject",
                    "attributes": {"species": "oak"},
                    "parents": ["avenue"],
                    "geometry": [
                        {
                            "type": "GeometryInstance",
                            "template": 0,
                            "boundaries": [i],
                            "transformationMatrix": scale2,
                        }
                    ],
                }
                for i in range(2)
            },
            "avenue": {"type": "CityObjectGroup", "children": ["tree0", "tree1"]},
        },
        "vertices": [[0, 0, 500], [10000, 5000, 1000]],
    }
    assert validate_cityjson(doc) == []
    store = make_twin("EPSG:28992")
    assert load_bundle(store, read_cityjson(write_doc(tmp_path, doc), "EPSG:28992")) == {
        "city_objects": 2
    }
    trees = store.query(Query("city_objects")).set_index("id")
    assert set(trees["class"]) == {"other"}
    assert set(trees["source_type"]) == {"SolitaryVegetationObject"}
    t1 = trees.loc["tree1"]
    xyz = coords(t1["geometry_3d"])
    np.testing.assert_allclose(xyz.min(axis=0), [85010, 447505, 1])
    np.testing.assert_allclose(xyz.max(axis=0), [85012, 447507, 3])
    assert t1.geometry.area == pytest.approx(4)
    assert t1["props"] == {"species": "oak", "parents": ["avenue"]}  # the group is not a feature


def test_real_2_0_files_validate(shared_data):
    versions = {
        p.name: json.loads(p.read_text())["version"]
        for p in sorted((shared_data / "cityjson").glob("*.json"))
    }
    v2 = [n for n, v in versions.items() if v == "2.0"]
    assert {"delft.json", "rotterdam_subset.json", "multi_lod.json"} <= set(v2)
    for name in v2:
        assert validate_cityjson(source(name)) == [], name
    # a 1.1 file differs from 2.0 in its version (here nothing else)
    assert validate_cityjson(source("DH_01_subs.city.json")) == ["version: '2.0' was expected"]


def broken(mutate) -> list[str]:
    doc = copy.deepcopy(source("rotterdam_subset.json"))
    mutate(doc)
    return validate_cityjson(doc)


def first_object(doc: dict) -> dict:
    return next(iter(doc["CityObjects"].values()))


def test_broken_documents_fail_validation():
    problems = broken(lambda d: d.pop("transform"))
    assert problems == ["(root): 'transform' is a required property"]

    def out_of_range(d):
        first_object(d)["geometry"][0]["boundaries"][0][0][0] = len(d["vertices"])

    assert any("vertex index 383 is out of range (383 vertices)" in p for p in broken(out_of_range))

    def bad_lod(d):
        first_object(d)["geometry"][0]["lod"] = "2.x"

    assert any("geometry/0/lod" in p and "2.x" in p for p in broken(bad_lod))

    def unknown_type(d):
        first_object(d)["type"] = "Skyscraper"

    assert any("/type" in p for p in broken(unknown_type))

    def extension_type(d):
        first_object(d)["type"] = "+Skyscraper"

    assert broken(extension_type) == []

    def short_ring(d):
        first_object(d)["geometry"][0]["boundaries"][0][0] = [0, 1]

    assert any("boundaries/0/0" in p for p in broken(short_ring))

    def float_vertex(d):
        d["vertices"][0][0] = 0.5

    assert any(p.startswith("vertices/0/0") for p in broken(float_vertex))

    def bad_semantic(d):
        first_object(d)["geometry"][0]["semantics"]["surfaces"][0]["type"] = "Chimney"

    assert any("semantics/surfaces/0/type" in p for p in broken(bad_semantic))

    doc = copy.deepcopy(source("DH_01_subs.city.json"))
    doc["version"] = "2.0"
    assert validate_cityjson(doc) == []
    parent = next(o for o in doc["CityObjects"].values() if o.get("children"))
    child = parent["children"].pop()
    problems = validate_cityjson(doc)
    assert problems == [
        f"CityObjects/{child}/parents: {doc['CityObjects'][child]['parents'][0]!r}"
        f" does not list {child!r} among its children"
    ]


def check_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> InvalidInput:
    err = exc.value
    assert err.source == str(path)
    assert err.hint
    for w in words:
        assert w in str(err)
    return err


def test_truncated_file(make_twin, tmp_path):
    data = (SHARED_DATA / "cityjson" / "delft.json").read_bytes()
    cut = tmp_path / "delft_cut.json"
    cut.write_bytes(data[: len(data) // 2])
    store = make_twin("EPSG:28992")
    with pytest.raises(InvalidInput) as exc:
        load_bundle(store, read_cityjson(cut, "EPSG:28992"))
    err = check_error(exc, cut, "not valid JSON", "column")
    assert err.line == 1
    assert store.count(Query("buildings")) == 0 and store.count(Query("city_objects")) == 0


def test_crs_errors(make_twin, tmp_path):
    doc = copy.deepcopy(source("DH_01_subs.city.json"))
    doc["metadata"]["referenceSystem"] = "https://www.opengis.net/def/crs/EPSG/0/999999"
    path = write_doc(tmp_path, doc)
    store = make_twin("EPSG:28992")
    with pytest.raises(InvalidInput) as exc:
        load_bundle(store, read_cityjson(path, "EPSG:28992"))
    check_error(exc, path, "unknown CRS", "999999", "crs=")
    assert store.count(Query("buildings")) == 0
    # the crs argument overrides the file's
    assert len(read_cityjson(path, "EPSG:28992", crs="EPSG:7415").layers["buildings"]) == 12

    nocrs = SHARED_DATA / "cityjson" / "rotterdam_subset.json"
    with pytest.raises(InvalidInput) as exc:
        read_cityjson(nocrs, "EPSG:28992")
    check_error(exc, nocrs, "referenceSystem", "EPSG:7415")
    with pytest.raises(InvalidInput) as exc:
        read_cityjson(nocrs, "EPSG:28992", crs="EPSG:4326")  # RD coordinates are no degrees
    check_error(exc, nocrs, "can't be transformed")


def test_vertex_index_out_of_range(make_twin, tmp_path):
    doc = copy.deepcopy(source("DH_01_subs.city.json"))
    oid = "GUID_13974D93-CB4F-4B5A-AB1E-577DD9928CF2_2"
    doc["CityObjects"][oid]["geometry"][0]["boundaries"][0][1][0][2] = 92
    path = write_doc(tmp_path, doc)
    store = make_twin("EPSG:28992")
    with pytest.raises(InvalidInput) as exc:
        load_bundle(store, read_cityjson(path, "EPSG:28992", crs="EPSG:7415"))
    err = check_error(exc, path, "vertex index 92 is out of range", "92 vertices")
    assert err.feature == oid
    assert store.count(Query("buildings")) == 0


@pytest.mark.parametrize(
    ("mutate", "words", "feature"),
    [
        (lambda d: d.update(type="FeatureCollection"), ["not a CityJSON file"], None),
        (lambda d: d.update(version="3.0"), ["unsupported CityJSON version '3.0'"], None),
        (lambda d: d["vertices"][5].__setitem__(0, 12.5), ["vertex 5", "integers"], None),
        (
            lambda d: d["CityObjects"]["GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2"].pop("geometry"),
            ["no geometry"],
            "GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2",
        ),
        (
            lambda d: d["CityObjects"]["GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2"]["geometry"][
                0
            ].update(lod="LoD2"),
            ["bad lod 'LoD2'"],
            "GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2",
        ),
        (
            lambda d: d["CityObjects"]["GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2"]["geometry"][
                0
            ].update(boundaries=[[0, 1, 2]]),
            ["nested lists 4 deep"],
            "GUID_3D7D60B9-8F3A-4D3B-A3E5-CD9B5565A5B2",
        ),
    ],
)
def test_bad_documents(tmp_path, mutate, words, feature):
    doc = copy.deepcopy(source("DH_01_subs.city.json"))
    mutate(doc)
    path = write_doc(tmp_path, doc)
    with pytest.raises(InvalidInput) as exc:
        read_cityjson(path, "EPSG:28992", crs="EPSG:7415")
    assert check_error(exc, path, *words).feature == feature


def test_failed_load_writes_nothing(make_twin):
    """A clash in the second layer rolls back the first: the store is as it was."""
    store = make_twin("EPSG:28992")
    bundle = imported("delft.json")
    load_bundle(store, ImportBundle("delft", {"city_objects": bundle.layers["city_objects"]}))
    with pytest.raises(InvalidInput, match="already exists"):
        load_bundle(store, bundle)
    assert store.count(Query("buildings")) == 0
    assert store.count(Query("city_objects")) == 410

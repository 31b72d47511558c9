"""The embedded store: queries checked against brute force, history, transactions, persistence."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import geopandas as gpd
import numpy as np
import pytest
import shapely
from pygeofilter import ast

from citytwin.errors import InvalidInput
from citytwin.model import TwinMeta, validate_frame
from citytwin.store import Filter, Query, Store, create_store, open_store

T0 = dt.datetime(2020, 1, 1)


def buildings(n: int, seed: int = 0, prefix: str = "b") -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 2000, n)
    w = rng.uniform(5, 30, n)
    frame = gpd.GeoDataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(n)],
            "class": "building",
            "height": rng.uniform(3, 120, n).round(1),
            "floors": rng.integers(1, 40, n),
            "use": rng.choice(["residential", "office", "school"], n),
        },
        geometry=shapely.box(x, y, x + w, y + w),
        crs="EPSG:32650",
    )
    return validate_frame("buildings", frame, source="test", valid_from=T0)


@pytest.fixture
def store(make_twin):
    s = make_twin(extent=(0, 0, 2100, 2100))
    s.insert("buildings", buildings(3000))
    return s


def test_bbox_intersects_within_match_brute_force(store):
    truth = buildings(3000)
    box = (500, 500, 900, 800)
    got = store.query(Query("buildings", bbox=box))
    expected = truth[truth.intersects(shapely.box(*box))]
    assert set(got["id"]) == set(expected["id"]) and len(got) > 10

    tri = shapely.Polygon([(100, 100), (1500, 200), (700, 1400)])
    got = store.query(Query("buildings", intersects=tri))
    assert set(got["id"]) == set(truth[truth.intersects(tri)]["id"])

    p = shapely.Point(1000, 1000)
    got = store.query(Query("buildings", within=(p, 150.0)))
    assert set(got["id"]) == set(truth[truth.distance(p) <= 150]["id"])


def test_nearest_matches_brute_force(store):
    truth = buildings(3000)
    for x, y in [(1000, 1000), (0, 0), (2050, 10), (5000, 5000)]:
        p = shapely.Point(x, y)
        got = store.nearest(Query("buildings"), p, 10)
        d = truth.distance(p).sort_values()
        assert np.allclose(got["distance"].to_numpy(), d.iloc[:10].to_numpy())
        assert list(got["distance"]) == sorted(got["distance"])


def test_nearest_with_fewer_matches_than_k(store, make_twin):
    got = store.nearest(
        Query("buildings", where=[Filter("height", ">", 119.5)]), shapely.Point(0, 0), 50
    )
    truth = buildings(3000)
    assert len(got) == (truth.height > 119.5).sum() < 50
    assert len(make_twin().nearest(Query("buildings"), shapely.Point(0, 0), 3)) == 0


def test_attribute_filters_order_and_paging(store):
    truth = buildings(3000)
    got = store.query(
        Query("buildings", where=[Filter("height", ">=", 100), Filter("use", "=", "office")])
    )
    assert set(got["id"]) == set(truth[(truth.height >= 100) & (truth.use == "office")]["id"])
    top = store.query(Query("buildings", order_by="-height", limit=5))
    assert list(top["height"]) == sorted(truth["height"], reverse=True)[:5]
    pages = list(store.iter_pages(Query("buildings"), page_size=700))
    assert [len(p) for p in pages] == [700, 700, 700, 700, 200]
    assert len(set().union(*(set(p["id"]) for p in pages))) == 3000
    assert (
        store.count(Query("buildings", where=[Filter("use", "in", ["school"])]))
        == (truth.use == "school").sum()
    )
    assert Filter.parse("height>=30") == Filter("height", ">=", 30)
    assert Filter.parse("name~Tower%") == Filter("name", "like", "Tower%")


def test_selected_columns(store):
    truth = buildings(3000).set_index("id")
    got = store.query(Query("buildings", where=[Filter("floors", ">", 30)], columns=["height"]))
    assert list(got.columns) == ["id", "class", "height", "geometry"]
    assert len(got) == (truth.floors > 30).sum()
    assert (got.set_index("id")["height"] == truth.loc[got["id"], "height"]).all()
    assert shapely.equals_exact(
        got.geometry.to_numpy(), truth.loc[got["id"]].geometry.to_numpy(), 0
    ).all()


def test_rows_match_the_frame_and_the_generic_rows(store):
    """``query_rows`` (what the data services serialise) holds what ``query`` does, and the
    backend's own answer equals the generic one built from the frame."""
    q = Query("buildings", bbox=(400, 400, 900, 900), columns=["height", "use", "valid_from"])
    rows = store.query_rows(q)
    frame = store.query(q).set_index("id")
    assert rows.names == ("id", "class", "height", "use", "valid_from", "wkb")
    assert len(rows) == len(frame) > 10
    assert rows.column("height") == frame.loc[rows.column("id"), "height"].tolist()
    assert shapely.equals_exact(
        shapely.from_wkb(rows.column("wkb")), frame.loc[rows.column("id")].geometry.to_numpy(), 0
    ).all()
    generic = Store.query_rows(store, q)
    assert generic.names == rows.names
    assert sorted(generic.values) == sorted(rows.values)


@pytest.mark.parametrize("few", [True, False], ids=["page and count in one query", "apart"])
def test_a_page_and_its_count_walk_the_matches_once_in_order(store, few, monkeypatch):
    """``query_page`` (the items pages): each page what ``query_rows`` gives for that limit and
    offset, the count every match (also on pages that are full, or empty past the end),
    whether the backend asks for both in one query (few expected matches) or apart."""
    import citytwin.store.duckdb as backend

    monkeypatch.setattr(backend, "FEW_MATCHES", 10**9 if few else 0)
    truth = buildings(3000)
    box = shapely.box(300, 300, 1300, 1100)
    cases = [
        Query("buildings", filter=ast.GeometryIntersects(ast.Attribute("geometry"), box)),
        Query("buildings", bbox=(300, 300, 1300, 1100), where=[Filter("use", "=", "office")]),
        Query("buildings", order_by="-height"),
    ]
    for q in cases:
        everything = store.query_rows(q).values
        assert 100 < len(everything) <= 3000
        for limit in (7, 100, 1000):
            seen = []
            for offset in range(0, len(everything) + limit, limit):
                rows, matched = store.query_page(replace(q, limit=limit, offset=offset))
                assert matched == len(everything), (q, limit, offset)
                assert rows.values == everything[offset : offset + limit]
                seen += rows.values
            assert seen == everything
    inside = truth[truth.intersects(box)]
    rows, matched = store.query_page(replace(cases[0], limit=5))
    assert matched == len(inside) and set(rows.column("id")) <= set(inside["id"])
    nothing = Query("buildings", bbox=(5000, 5000, 5100, 5100), limit=10)
    assert store.query_page(nothing)[1] == 0 and store.query_page(nothing)[0].values == []
    rows, matched = store.query_page(Query("buildings", bbox=(300, 300, 1300, 1100)))
    assert matched == len(rows) == len(inside)  # no limit: the rows are the matches


def test_few_matches_are_judged_by_the_spatial_conditions(store):
    """Whether a page and its count go in one query: the layer's 3,000 rows spread over the
    twin's extent (2,100 m square), in the window the conditions hold the features to."""
    near = ast.GeometryIntersects(ast.Attribute("geometry"), shapely.box(0, 0, 500, 500))
    far = ast.GeometryIntersects(ast.Attribute("geometry"), shapely.box(0, 0, 1500, 1500))
    assert store._few_match(Query("buildings", filter=near))  # about 170
    assert not store._few_match(Query("buildings", filter=far))  # about 1,530
    assert not store._few_match(Query("buildings"))
    assert store._few_match(Query("buildings", bbox=(0, 0, 500, 500)))
    assert store._few_match(Query("buildings", bbox=(0, 0, 1500, 1500), filter=near))
    assert not store._few_match(
        Query("buildings", filter=ast.Or(near, ast.GreaterThan(ast.Attribute("height"), 3)))
    )
    assert store._few_match(Query("buildings", ids=[f"b{i}" for i in range(400)]))


def test_update_keeps_history_and_as_of_returns_past_state(store):
    f = store.query(Query("buildings", ids=["b1"]))
    old_height = f["height"].iloc[0]
    f["height"] = 200.0
    f["status"] = "under_construction"
    store.update("buildings", f, at=dt.datetime(2023, 5, 1))
    assert store.get("buildings", "b1").attributes["height"] == 200.0
    assert (
        store.get("buildings", "b1", as_of=dt.datetime(2022, 1, 1)).attributes["height"]
        == old_height
    )
    assert store.get("buildings", "b1", as_of=dt.datetime(2019, 1, 1)) is None
    assert len(store.history("buildings", "b1")) == 2
    store.retire("buildings", ["b2"], at=dt.datetime(2024, 1, 1))
    assert store.get("buildings", "b2") is None
    assert store.get("buildings", "b2", as_of=dt.datetime(2023, 6, 1)) is not None
    assert store.count(Query("buildings")) == 2999
    assert store.count(Query("buildings", as_of=dt.datetime(2023, 6, 1))) == 3000
    with pytest.raises(InvalidInput, match="not before the update time"):
        store.update("buildings", f, at=dt.datetime(2021, 1, 1))
    with pytest.raises(InvalidInput, match="no current feature"):
        store.update("buildings", buildings(1, prefix="zz"))


def test_failing_writes_leave_store_unchanged(store):
    before = store.count(Query("buildings"))
    with pytest.raises(InvalidInput, match="already exists"):
        store.insert("buildings", buildings(5))
    with pytest.raises(RuntimeError), store.transaction():
        store.insert("buildings", buildings(10, prefix="new"))
        store.put_document("x", {"a": 1})
        raise RuntimeError("boom")
    assert store.count(Query("buildings")) == before
    assert store.get_document("x") is None
    assert store.get("buildings", "new1") is None


def test_persists_across_reopen_with_rasters_and_documents(tmp_path):
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    path = tmp_path / "city.twin"
    s = create_store(path, TwinMeta("city", "EPSG:4547", (0, 0, 2100, 2100)))
    s.insert("buildings", buildings(50))
    s.put_document("network/x", {"k": [1, 2]})
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=4,
            height=3,
            count=1,
            dtype="float32",
            crs="EPSG:4547",
            transform=from_origin(0, 30, 10, 10),
        ) as ds:
            ds.write(np.arange(12, dtype="float32").reshape(1, 3, 4))
        s.put_raster("dem", "dem", mem.read())
    s.close()
    s = open_store(path, read_only=True)
    assert s.meta.name == "city" and s.meta.crs == "EPSG:4547"
    assert s.count(Query("buildings")) == 50
    assert s.get_document("network/x") == {"k": [1, 2]}
    assert s.rasters()[0]["width"] == 4
    with MemoryFile(s.get_raster("dem")) as mem, mem.open() as ds:
        assert ds.read(1)[2, 3] == 11
    assert rasterio.crs.CRS.from_string("EPSG:4547") == ds.crs
    summary = s.summary()[0]
    assert (
        summary.layer == "buildings" and summary.count == 50 and summary.classes == {"building": 50}
    )
    s.close()


def test_query_names_unknown_attributes():
    with pytest.raises(KeyError, match="no attribute 'colour'"):
        Query("buildings", where=[Filter("colour", "=", "red")])
    with pytest.raises(KeyError, match="unknown layer"):
        Query("castles")
    with pytest.raises(KeyError, match="no attribute 'colour'"):
        Query("buildings", columns=["height", "colour"])

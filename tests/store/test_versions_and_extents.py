"""What the services ask of the store besides features: a data version per set of layers (the
key of derived caches), the extent of a query in one pass, and removing a document."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import shapely

from citytwin.store import Filter, Query
from tests.store.test_duckdb import T0, buildings


@pytest.fixture
def store(make_twin):
    s = make_twin(extent=(0, 0, 2100, 2100))
    s.insert("buildings", buildings(500))
    return s


def test_the_data_version_changes_with_every_write_and_only_then(store):
    layers = ["buildings", "zones"]
    v0 = store.data_version(layers)
    assert store.data_version(layers) == v0  # reading changes nothing
    store.query(Query("buildings", limit=10))
    store.put_document("x", {"a": 1})  # documents are not features
    assert store.data_version(layers) == v0
    store.insert("buildings", buildings(1, prefix="new"))
    v1 = store.data_version(layers)
    assert v1 != v0
    f = store.query(Query("buildings", ids=["b1"]))
    f["height"] = 99.0
    store.update("buildings", f, at=dt.datetime(2024, 1, 1))
    v2 = store.data_version(layers)
    assert v2 not in (v0, v1)
    store.retire("buildings", ["b2"], at=dt.datetime(2024, 2, 1))
    v3 = store.data_version(layers)
    assert v3 not in (v0, v1, v2)
    assert store.data_version(["zones"]) == store.data_version(["zones"])
    assert store.data_version(["streets"]) != store.data_version(["buildings"])
    assert store.data_version([]) == ()


def test_extent_of_a_query_in_one_pass(store):
    q = Query("buildings", where=[Filter("use", "=", "school")])
    frame = store.query(q)
    ext = store.extent(q)
    assert ext.count == len(frame) > 0
    assert np.allclose(ext.bbox, frame.total_bounds)
    assert ext.first == ext.last == T0.replace(tzinfo=dt.UTC)
    f = frame.iloc[:1].copy()
    f["height"] = 1.0
    store.update("buildings", f, at=dt.datetime(2024, 3, 1))
    later = store.extent(q)
    assert later.first == T0.replace(tzinfo=dt.UTC)
    assert later.last == dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    window = shapely.box(0, 0, 500, 500)
    inside = store.extent(Query("buildings", intersects=window))
    assert inside.count == len(store.query(Query("buildings", intersects=window)))
    nothing = store.extent(Query("buildings", ids=["nope"]))
    assert (nothing.count, nothing.bbox, nothing.first, nothing.last) == (0, None, None, None)


def test_delete_document(store):
    store.put_document("jobs/1", {"status": "running"})
    assert store.delete_document("jobs/1") is True
    assert store.get_document("jobs/1") is None
    assert store.delete_document("jobs/1") is False
    assert "jobs/1" not in store.documents("jobs/")

"""The kept flood scenarios over HTTP (``citytwin.services.flood``): the list, a scenario's
summary and overlay corners, its features through the caller's grants, its rasters as COG
(byte ranges, revalidation) and the depth overlay PNG, errors, and the audit."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.io import MemoryFile

from citytwin.app.flood import RASTERS, run_storm, save_scenario
from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import CATALOGUE_DOCUMENT
from citytwin.services.features import transformer
from citytwin.services.flood import DEPTH_RAMP, MIN_DEPTH
from citytwin.services.processes import COG
from citytwin.store import open_store

RESTRICTED = {"collections": {"facilities": {"sensitivity": "restricted", "owner": "emergency"}}}


@pytest.fixture(scope="module")
def kept(live_city, tmp_path_factory):
    """A service over a copy of the live city (facilities for the emergency bureau only) that
    keeps two storm runs; the client, the runs (older first) and a duty officer's headers."""
    path = tmp_path_factory.mktemp("flood-scenarios") / "city.twin"
    shutil.copy(live_city, path)
    store = open_store(path)
    store.put_document(CATALOGUE_DOCUMENT, RESTRICTED)
    runs = []
    for period, sid in ((2, "20250601T080000-small"), (50, "20250601T090000-heavy")):
        sc = run_storm(store, return_period=period, duration_min=10, after_min=5, cell=20)
        sc.id = sid
        save_scenario(store, sc)
        runs.append(sc)
    ctx = ServiceContext.of(store)
    try:
        with TestClient(create_app(ctx)) as client:
            ctx.registry.add_user("duty", "duty", "emergency", roles=("viewer",))
            duty = {"X-API-Key": ctx.registry.issue_key("duty").secret}
            yield ctx, client, runs, duty
    finally:
        store.close()


def test_the_list_is_newest_first_with_headline_figures(kept):
    _, client, runs, _ = kept
    doc = client.get("/flood/scenarios").json()
    assert doc["numberMatched"] == doc["numberReturned"] == 2
    listed = doc["scenarios"]
    assert [s["id"] for s in listed] == [runs[1].id, runs[0].id]
    heavy = listed[0]
    assert heavy["created"] == "2025-06-01T09:00:00Z"
    assert heavy["params"]["return_period"] == 50 and heavy["params"]["cell"] == 20
    s = runs[1].summary
    assert heavy["summary"]["buildings_flooded"] == s["buildings_flooded"] > 0
    assert heavy["summary"]["residents_affected"] == s["residents_affected"]
    assert heavy["summary"]["max_depth_m"] == pytest.approx(s["max_depth_m"])
    assert heavy["summary"]["facilities_reached"] == int(runs[1].facilities["reached"].sum())
    assert heavy["links"][0]["href"].endswith(f"/flood/scenarios/{runs[1].id}")
    # the heavier storm floods more
    assert heavy["summary"]["buildings_flooded"] > listed[1]["summary"]["buildings_flooded"]
    page = client.get("/flood/scenarios", params={"limit": 1}).json()
    assert [s["id"] for s in page["scenarios"]] == [runs[1].id]
    following = next(lk["href"] for lk in page["links"] if lk["rel"] == "next")
    assert [s["id"] for s in client.get(following).json()["scenarios"]] == [runs[0].id]
    assert client.get("/flood/scenarios", params={"limit": 0}).status_code == 400


def test_a_scenario_with_its_rasters_and_overlay_corners(kept):
    ctx, client, runs, duty = kept
    sc = runs[1]
    doc = client.get(f"/flood/scenarios/{sc.id}", headers=duty).json()
    assert doc["id"] == sc.id and doc["params"]["duration_min"] == 10
    summary = doc["summary"]
    assert summary["buildings_flooded"] == sc.summary["buildings_flooded"]
    assert summary["mass_balance"]["relative_error"] < 1e-6
    assert summary["critical_facilities_reached"] == sc.summary["critical_facilities_reached"]
    assert [lk["href"].rsplit("/", 1)[1] for lk in doc["rasters"]] == list(RASTERS)
    assert all(lk["type"] == COG for lk in doc["rasters"])
    overlay = doc["overlay"]
    assert overlay["href"].endswith(f"/flood/scenarios/{sc.id}/overlay.png")
    assert overlay["legend"] == [{"depth_m": d, "colour": c} for d, c in DEPTH_RAMP]
    # the corners are the grid's, in longitude and latitude (top left, clockwise)
    r = sc.grid.raster
    left, top = r.x0, r.y0
    right, bottom = left + r.shape[1] * r.dx, top - r.shape[0] * r.dx
    to_lonlat = transformer(ctx.store.meta.crs, "EPSG:4326")
    for (lon, lat), (x, y) in zip(
        overlay["coordinates"],
        [(left, top), (right, top), (right, bottom), (left, bottom)],
        strict=True,
    ):
        assert (lon, lat) == pytest.approx(to_lonlat.transform(x, y), abs=1e-7)
    west, south, east, north = overlay["bbox"]
    assert west < east and south < north
    # without the facilities grant they are left out of the list and counted
    anonymous = client.get(f"/flood/scenarios/{sc.id}").json()["summary"]
    assert anonymous["critical_facilities_reached"] == []
    assert anonymous["withheld"]["facilities"] == int(sc.facilities["reached"].sum()) > 0


def test_features_through_the_grants(kept):
    _, client, runs, duty = kept
    sc = runs[1]
    url = f"/flood/scenarios/{sc.id}/features"
    r = client.get(url, headers=duty)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    fc = r.json()
    kinds = {k: sum(f["properties"]["kind"] == k for f in fc["features"])
             for k in ("building", "road", "facility")}  # fmt: skip
    b = sc.buildings
    assert kinds == {
        "building": int((b["flooded"] | b["basement_at_risk"]).sum()),
        "road": int((sc.roads["flooded_m"] > 0).sum()),
        "facility": int(sc.facilities["reached"].sum()),
    }
    assert fc["withheld"] == {} and fc["numberReturned"] == len(fc["features"])
    buildings = client.get(url, params={"kind": "building"}).json()  # anonymous
    assert {f["properties"]["kind"] for f in buildings["features"]} == {"building"}
    assert buildings["numberReturned"] == kinds["building"]
    assert buildings["withheld"] == {"facilities": kinds["facility"]}
    depths = {f["id"]: f["properties"]["depth_m"] for f in buildings["features"]}
    expected = sc.buildings.set_index("id")["depth_m"]
    assert all(depths[i] == pytest.approx(expected[i]) for i in depths)
    assert client.get(url, params={"kind": "river"}).status_code == 400


def test_the_rasters_are_cloud_optimised_geotiffs(kept):
    _, client, runs, _ = kept
    sc = runs[1]
    url = f"/flood/scenarios/{sc.id}/rasters/max_depth"
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == COG
    assert r.headers["accept-ranges"] == "bytes"
    with MemoryFile(r.content) as mem, mem.open() as ds:
        assert ds.driver == "GTiff" and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.block_shapes[0] == (256, 256)
        assert ds.crs.to_epsg() == 4547 and ds.transform.a == 20.0
        got = ds.read(1, masked=True).filled(np.nan)
    assert np.allclose(got, sc.result.max_depth.astype("float32"), equal_nan=True)
    # byte ranges, as a range reader asks for them, make up the file
    size = len(r.content)
    parts = [client.get(url, headers={"Range": f"bytes={a}-{a + 4095}"}) for a in
             range(0, size, 4096)]  # fmt: skip
    assert all(p.status_code == 206 for p in parts)
    assert parts[0].headers["content-range"] == f"bytes 0-{min(4095, size - 1)}/{size}"
    assert b"".join(p.content for p in parts) == r.content
    tail = client.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == r.content[-100:]
    assert client.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    assert client.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    # the hazard classes and first flooding too
    hazard_tif = client.get(url.replace("max_depth", "hazard")).content
    with MemoryFile(hazard_tif) as mem, mem.open() as ds:
        hazard = ds.read(1, masked=True).compressed()
    assert set(np.unique(hazard)) <= {0.0, 1.0, 2.0, 3.0, 4.0} and hazard.max() >= 1
    assert client.get(url.replace("max_depth", "first_wet")).status_code == 200


def test_the_overlay_png_colours_the_depth(kept):
    _, client, runs, _ = kept
    sc = runs[1]
    r = client.get(f"/flood/scenarios/{sc.id}/overlay.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    depth = sc.result.max_depth.astype("float32")
    assert rgba.shape == (*depth.shape, 4)
    wet = np.nan_to_num(depth, nan=-1) >= MIN_DEPTH
    assert wet.any() and (~wet).any()
    assert (rgba[..., 3][wet] == 255).all() and (rgba[..., 3][~wet] == 0).all()
    # colours follow the ramp: the deepest cell's and a shallow one's
    stops = [d for d, _ in DEPTH_RAMP]
    ramp = np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for _, c in DEPTH_RAMP])
    for cell in (np.unravel_index(np.nanargmax(depth), depth.shape), tuple(np.argwhere(wet)[0])):
        d = float(depth[cell])
        expected = [np.interp(d, stops, ramp[:, k]) for k in range(3)]
        assert np.abs(rgba[cell][:3].astype(float) - expected).max() <= 1
    deeper = client.get(f"/flood/scenarios/{sc.id}/overlay.png", params={"min_depth": 0.3})
    alpha = np.asarray(Image.open(io.BytesIO(deeper.content)).convert("RGBA"))[..., 3]
    assert 0 < (alpha == 255).sum() < wet.sum()
    assert (
        client.get(f"/flood/scenarios/{sc.id}/overlay.png", params={"min_depth": -1}).status_code
        == 400
    )


def test_missing_scenarios_and_rasters_are_404s_and_requests_are_audited(kept):
    ctx, client, runs, duty = kept
    for path in (
        "/flood/scenarios/20990101T000000-none",
        "/flood/scenarios/20990101T000000-none/overlay.png",
        f"/flood/scenarios/{runs[0].id}/rasters/rainfall",
        "/flood/scenarios/not%20an%20id/features",
    ):
        r = client.get(path, headers=duty)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/problem+json" and r.json()["detail"]
    client.get("/flood/scenarios", headers=duty)
    ctx.audit.flush()
    entries = ctx.store.audit_entries(limit=None, path_prefix="/flood/scenarios")
    listed = entries[entries["path"] == "/flood/scenarios"]
    assert (listed["user"] == "duty").any() and set(entries["family"]) == {"flood"}
    assert int(listed.loc[listed["user"] == "duty", "count"].iloc[-1]) == 2

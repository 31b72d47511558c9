"""The ``flood-storm`` process over the live virtual city: its description, a synchronous run
equal to the storm run called directly and kept as a scenario, an asynchronous job that reports
the simulated time as progress, a dismissed run that stops, bad inputs as 400 problems, and
access (sign-in, the drains' grant for coupling, the features a department's grants hide
counted as withheld)."""

from __future__ import annotations

import shutil
import time

import geopandas as gpd
import jsonschema
import pytest
from fastapi.testclient import TestClient

from citytwin.app.flood import kept_scenario, kept_scenarios, run_storm
from citytwin.flood.rain import design_storm
from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import CATALOGUE_DOCUMENT
from citytwin.services.processes import EXCEPTIONS
from citytwin.store import open_store

STORM = {"return_period": 50, "duration": 10, "after": 5, "cell": 20}
"""A storm that floods the whole city at 20 m in well under a second."""
POLICY = {
    "collections": {
        "facilities": {"sensitivity": "restricted", "owner": "emergency"},
        "buildings": {
            "row_rules": [
                {"where": "residents >= 500", "departments": ["emergency"], "reason": "estates"}
            ]
        },
    }
}
"""Facilities for the emergency bureau only; large estates hidden from other departments."""


@pytest.fixture(scope="module")
def flood_api(live_city, tmp_path_factory):
    """A service over a copy of the live city with ``POLICY``, and API-key headers of a duty
    officer (emergency), a planner and a gas engineer (no drainage grant)."""
    path = tmp_path_factory.mktemp("flood-process") / "city.twin"
    shutil.copy(live_city, path)
    store = open_store(path)
    store.put_document(CATALOGUE_DOCUMENT, POLICY)
    ctx = ServiceContext.of(store)
    try:
        with TestClient(create_app(ctx)) as client:
            staff = {}
            for uid, department in (("duty", "emergency"), ("li", "planning"), ("zhao", "gas")):
                ctx.registry.add_user(uid, uid, department, roles=("viewer",))
                staff[department] = {"X-API-Key": ctx.registry.issue_key(uid).secret}
            yield ctx, client, staff
    finally:
        store.close()


def _execute(client, inputs, headers, **body):
    return client.post(
        "/processes/flood-storm/execution", json={"inputs": inputs, **body}, headers=headers
    )


@pytest.fixture(scope="module")
def duty_run(flood_api):
    """The duty officer's synchronous run of ``STORM`` (the results document)."""
    _, client, staff = flood_api
    r = _execute(client, STORM, staff["emergency"])
    assert r.status_code == 200, r.text
    return r.json()


def test_the_process_is_described(flood_api):
    _, client, _ = flood_api
    assert "flood-storm" in [p["id"] for p in client.get("/processes").json()["processes"]]
    doc = client.get("/processes/flood-storm").json()
    assert set(doc["inputs"]) == {
        "return_period", "duration", "peak_ratio", "after", "cell", "solver", "coupled", "bbox",
    }  # fmt: skip
    assert doc["inputs"]["solver"]["schema"]["enum"] == ["inertial", "swe"]
    assert doc["inputs"]["return_period"]["minOccurs"] == 1
    assert doc["inputs"]["bbox"]["minOccurs"] == 0
    for item in [*doc["inputs"].values(), *doc["outputs"].values()]:
        jsonschema.Draft202012Validator.check_schema(item["schema"])
    assert doc["outputs"]["features"]["schema"]["contentMediaType"] == "application/geo+json"
    assert set(doc["outputs"]) == {"features", "summary", "rasters"}
    assert doc["title_zh"] and {"sync-execute", "async-execute", "dismiss"} <= set(
        doc["jobControlOptions"]
    )


def test_a_sync_run_equals_the_storm_run_and_is_kept(flood_api, duty_run):
    ctx, client, _ = flood_api
    doc = client.get("/processes/flood-storm").json()
    for name, value in duty_run.items():
        jsonschema.validate(value, doc["outputs"][name]["schema"])
    summary = duty_run["summary"]
    sid = summary["scenario"]
    kept = kept_scenario(ctx.store, sid)
    assert kept["params"]["peak_ratio"] == 0.4 and kept["params"]["return_period"] == 50
    # the same storm run directly on the same twin reaches the same
    direct = run_storm(
        ctx.store,
        return_period=50,
        duration_min=10,
        after_min=5,
        cell=20,
        rain=design_storm(50, 10, peak_ratio=0.4),
    )
    for key in ("buildings_flooded", "residents_affected", "roads_impassable", "cells"):
        assert summary[key] == direct.summary[key], key
    assert summary["impassable_length_m"] == pytest.approx(direct.summary["impassable_length_m"])
    assert summary["max_depth_m"] == pytest.approx(direct.summary["max_depth_m"])
    assert summary["mass_balance"]["relative_error"] < 1e-6
    assert summary["buildings_flooded"] > 0 and summary["critical_facilities_reached"]
    assert summary["facilities_reached"] == int(direct.facilities["reached"].sum()) > 0
    assert summary["withheld"] == {}  # the duty officer may read everything
    # the features are the flooded buildings (and basements at risk), roads and facilities
    features = duty_run["features"]["features"]
    by_kind = {k: {f["id"] for f in features if f["properties"]["kind"] == k} for k in
               ("building", "road", "facility")}  # fmt: skip
    b = direct.buildings
    assert by_kind["building"] == set(b.loc[b["flooded"] | b["basement_at_risk"], "id"])
    assert by_kind["road"] == set(direct.roads.loc[direct.roads["flooded_m"] > 0, "id"])
    assert by_kind["facility"] == set(direct.facilities.loc[direct.facilities["reached"], "id"])
    flooded = [f for f in features if f["properties"]["kind"] == "building"]
    assert sum(f["properties"]["flooded"] for f in flooded) == summary["buildings_flooded"]
    # in CRS84, where the twin is
    frame = gpd.GeoDataFrame.from_features(features, crs="OGC:CRS84")
    west, south, east, north = frame.total_bounds
    assert 113 < west < east < 114 and 22 < south < north < 24
    # the rasters it links to are kept and served as COG
    names = [lk["href"].rsplit("/", 1)[1] for lk in duty_run["rasters"]]
    assert {"max_depth", "hazard", "first_wet"} <= set(names)
    for link in duty_run["rasters"]:
        assert link["href"].startswith(f"/flood/scenarios/{sid}/rasters/")
        r = client.get(link["href"])
        assert r.status_code == 200 and r.headers["content-type"] == link["type"]
        assert r.content == ctx.store.get_raster(f"flood/{sid}/{link['href'].rsplit('/', 1)[1]}")


def test_an_async_job_reports_progress_and_keeps_its_results(flood_api):
    ctx, client, staff = flood_api
    headers = {**staff["emergency"], "Prefer": "respond-async"}
    longer = {**STORM, "cell": 10, "duration": 20, "after": 10}  # a few seconds
    r = _execute(client, longer, headers)
    assert r.status_code == 201 and r.headers["preference-applied"] == "respond-async"
    location = r.headers["location"]
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = client.get(location, headers=staff["emergency"]).json()
        seen.append((info["status"], info["progress"], info["message"]))
        if info["status"] in ("successful", "failed", "dismissed"):
            break
        time.sleep(0.05)
    assert seen[-1][0] == "successful", seen[-1]
    running = [s for s in seen if s[0] == "running" and s[2].startswith("simulating")]
    assert running, seen
    progress = [p for _, p, _ in running]
    assert progress == sorted(progress) and progress[0] >= 5 and progress[-1] <= 90
    results = client.get(location + "/results", headers=staff["emergency"]).json()
    assert set(results) == {"features", "summary", "rasters"}
    kept = kept_scenario(ctx.store, results["summary"]["scenario"])
    assert kept["params"]["cell"] == 10 and kept["params"]["duration_min"] == 20
    assert results["summary"]["buildings_flooded"] == kept["summary"]["buildings_flooded"]


def test_a_dismissed_run_stops_and_keeps_nothing(flood_api):
    ctx, client, staff = flood_api
    before = set(kept_scenarios(ctx.store))
    long_run = {"return_period": 10, "duration": 240, "after": 240, "cell": 5}
    r = _execute(client, long_run, {**staff["emergency"], "Prefer": "respond-async"})
    location = r.headers["location"]
    deadline = time.monotonic() + 60
    while client.get(location, headers=staff["emergency"]).json()["message"][:10] != "simulating":
        assert time.monotonic() < deadline, "the run never started simulating"
        time.sleep(0.05)
    r = client.delete(location, headers=staff["emergency"])
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    jid = location.rsplit("/", 1)[1]
    deadline = time.monotonic() + 20
    while jid in ctx.jobs._futures:  # the work ends at its next step
        assert time.monotonic() < deadline, "the dismissed run went on"
        time.sleep(0.05)
    assert client.get(location, headers=staff["emergency"]).json()["status"] == "dismissed"
    assert set(kept_scenarios(ctx.store)) == before


BAD = [
    ({**STORM, "return_period": 0}, "return_period"),
    ({**STORM, "duration": 7}, "duration"),
    ({**STORM, "peak_ratio": 1.5}, "peak_ratio"),
    ({**STORM, "solver": "magic"}, "solver"),
    ({**STORM, "cell": 0.5}, "cell"),
    ({**STORM, "coupled": "yes"}, "coupled"),
    ({k: v for k, v in STORM.items() if k != "duration"}, "'duration' is required"),
    ({**STORM, "rain": 3}, "unknown input 'rain'"),
    ({**STORM, "bbox": {"bbox": [10, 10, 11, 11]}}, "outside the twin"),
    ({**STORM, "bbox": {"bbox": [113.34, 23.07, 113.33, 23.08]}}, "empty"),
    ({**STORM, "bbox": {"bbox": [113.3, 23.0]}}, "bbox"),
    ({**STORM, "cell": 1}, "at most 1,000,000"),
]


def test_bad_inputs_are_400_problems(flood_api):
    ctx, client, staff = flood_api
    before, jobs = set(kept_scenarios(ctx.store)), len(ctx.jobs.jobs(everyone=True))
    for inputs, message in BAD:
        for prefer in ({}, {"Prefer": "respond-async"}):  # refused before any job is made
            r = _execute(client, inputs, {**staff["emergency"], **prefer})
            assert r.status_code == 400, (inputs, r.text)
            problem = r.json()
            assert problem["type"] == EXCEPTIONS + "invalid-parameter-value"
            assert message in problem["detail"], (inputs, problem)
            assert r.headers["content-type"] == "application/problem+json"
    assert len(ctx.jobs.jobs(everyone=True)) == jobs  # no job was made
    assert set(kept_scenarios(ctx.store)) == before


def test_access_sign_in_drains_and_withheld_features(flood_api, duty_run):
    _, client, staff = flood_api
    r = _execute(client, STORM, {})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = _execute(client, {**STORM, "coupled": True}, staff["gas"])
    assert r.status_code == 403 and "storm_links" in r.json()["detail"]
    # a planner: the restricted facilities and the large estates are withheld, counted
    r = _execute(client, STORM, staff["planning"])
    assert r.status_code == 200, r.text
    planner = r.json()
    duty = duty_run["features"]["features"]
    facilities = [f for f in duty if f["properties"]["kind"] == "facility"]
    estates = [
        f for f in duty
        if f["properties"]["kind"] == "building" and (f["properties"]["residents"] or 0) >= 500
    ]  # fmt: skip
    assert facilities and estates
    withheld = planner["summary"]["withheld"]
    assert withheld == {"facilities": len(facilities), "buildings": len(estates)}
    shown = {f["id"] for f in planner["features"]["features"]}
    assert not shown & {f["id"] for f in facilities + estates}
    assert len(shown) == len(duty) - len(facilities) - len(estates)
    assert planner["summary"]["critical_facilities_reached"] == []
    # counted, not shown: the totals are the same storm's
    for key in ("buildings_flooded", "residents_affected", "facilities_reached"):
        assert planner["summary"][key] == duty_run["summary"][key]

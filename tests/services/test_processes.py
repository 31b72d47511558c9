"""OGC API – Processes over the live virtual city: descriptions, synchronous executions equal to
the network analyses called directly, jobs (accepted → running → successful or failed,
dismissed, kept across a restart), problem details for bad requests, and access (API keys of
real users through the credential registry; rows a grant hides left out)."""

from __future__ import annotations

import threading
import time

import geopandas as gpd
import jsonschema
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient

from citytwin.app.networks import (
    clearance_check,
    dig_check,
    isolate_burst,
    trace_network,
    twin_clearance_rules,
)
from citytwin.networks.clearance import CLEARANCE_RULES_DOCUMENT
from citytwin.networks.excavation import Dig
from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import CATALOGUE_DOCUMENT
from citytwin.services.jobs import JobRunner
from citytwin.services.processes import CONFORMANCE, EXCEPTIONS
from citytwin.store import Filter, Query, open_store

STAFF = {
    "water": ("wang", "water", ()),
    "planning": ("li", "planning", ()),
    "gas": ("zhao", "gas", ()),
    "drainage": ("chen", "drainage", ()),
    "admin": ("root", "planning", ("admin",)),
}


def _staff(ctx) -> dict[str, dict[str, str]]:
    """API-key headers of a user per department (and an admin), from the real registry."""
    headers = {}
    for who, (uid, department, roles) in STAFF.items():
        ctx.registry.add_user(uid, uid, department, roles=roles or ("viewer",))
        headers[who] = {"X-API-Key": ctx.registry.issue_key(uid).secret}
    return headers


@pytest.fixture
def staff(api, service_ctx):
    return _staff(service_ctx)


def _main(store) -> str:
    """A water main in the middle of the list (as the CLI tests pick one)."""
    mains = store.query(
        Query("utility_links", classes=["pipe"], where=[Filter("network", "=", "water_supply")])
    )
    return str(mains.iloc[len(mains) // 3]["id"])


def _execute(client, pid, inputs, headers, **body):
    return client.post(
        f"/processes/{pid}/execution", json={"inputs": inputs, **body}, headers=headers
    )


def _wait(client, location, headers, until=("successful", "failed", "dismissed"), seconds=30):
    deadline = time.monotonic() + seconds
    while True:
        info = client.get(location, headers=headers).json()
        if info["status"] in until or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def _to_twin(store, fc) -> gpd.GeoDataFrame:
    """A FeatureCollection in CRS84 back in the twin's CRS."""
    frame = gpd.GeoDataFrame.from_features(fc["features"], crs="OGC:CRS84")
    return frame.to_crs(store.meta.pyproj_crs)


def _validates(process_doc, results) -> None:
    for name, value in results.items():
        jsonschema.validate(value, process_doc["outputs"][name]["schema"])


# -- descriptions ------------------------------------------------------------------------------


def test_processes_are_listed_and_described(api, service_ctx):
    listed = api.get("/processes").json()["processes"]
    assert [p["id"] for p in listed] == [
        "trace",
        "isolate-burst",
        "excavation-check",
        "clearance-check",
        "flood-storm",
    ]
    networks = sorted(
        c.network for c in service_ctx.catalogue if c.layer == "utility_links" and c.network
    )
    for summary in listed:
        assert {"sync-execute", "async-execute"} <= set(summary["jobControlOptions"])
        assert summary["outputTransmission"] == ["value"]
        assert summary["title"] and summary["title_zh"]
        rels = {lk["rel"]: lk["href"] for lk in summary["links"]}
        assert rels["self"].endswith(f"/processes/{summary['id']}")
        assert rels["http://www.opengis.net/def/rel/ogc/1.0/execute"].endswith("/execution")
        doc = api.get(f"/processes/{summary['id']}").json()
        assert doc["id"] == summary["id"] and doc["inputs"] and doc["outputs"]
        for item in [*doc["inputs"].values(), *doc["outputs"].values()]:
            jsonschema.Draft202012Validator.check_schema(item["schema"])
        for item in doc["inputs"].values():
            assert item["minOccurs"] in (0, 1) and item["maxOccurs"] in (1, "unbounded")
        if "network" in doc["inputs"]:
            assert doc["inputs"]["network"]["schema"]["enum"] == networks
        assert doc["outputs"]["features"]["schema"]["contentMediaType"] == "application/geo+json"
    conformance = api.get("/conformance").json()["conformsTo"]
    assert set(CONFORMANCE) <= set(conformance)


# -- synchronous executions --------------------------------------------------------------------


def test_sync_isolate_burst_equals_the_analysis(api, service_ctx, staff):
    store = service_ctx.store
    main = _main(store)
    r = _execute(api, "isolate-burst", {"network": "water_supply", "link": main}, staff["water"])
    assert r.status_code == 200, r.text
    results = r.json()
    _validates(api.get("/processes/isolate-burst").json(), results)
    expected = isolate_burst(store, "water_supply", link=main)
    iso = expected.isolation
    summary = results["summary"]
    assert summary["burst_link"] == main
    assert summary["valves_to_close"] == list(expected.valve_ids)
    assert summary["isolated_links"] == len(iso.isolated_links)
    assert summary["cut_off_links"] == len(iso.cutoff_links)
    assert summary["loses_supply"] == pytest.approx(iso.impact)
    assert summary["affected_buildings"] == len(expected.buildings)
    assert summary["residents"] == pytest.approx(expected.buildings["residents"].sum())
    assert summary["critical_facilities"] == [
        {"id": f["id"], "class": f["class"], "name": f["name"]}
        for f in expected.facilities.to_dict("records")
    ]
    features = results["features"]["features"]
    roles: dict[str, set[str]] = {}
    for f in features:
        roles.setdefault(f["properties"]["role"], set()).add(f["id"])
    links = expected.data.links["id"].to_numpy()
    assert roles["burst"] == {main}
    assert roles["burst"] | roles.get("isolated", set()) == set(links[iso.isolated_links])
    assert roles.get("cut_off", set()) == set(links[iso.cutoff_links])
    assert roles["valve_to_close"] == set(expected.valve_ids)
    assert roles.get("affected_building", set()) == set(expected.buildings["id"])
    # CRS84 out: back in the twin's CRS, the burst link is where the twin has it
    back = _to_twin(store, results["features"]).set_index(
        gpd.GeoDataFrame.from_features(features)["id"]
    )
    stored = store.query(Query("utility_links", ids=[main])).geometry.iloc[0]
    assert shapely.hausdorff_distance(back.geometry.loc[main], stored) < 0.01
    # the same burst located by a point on the main (CRS84), snapped to it
    mid = gpd.GeoSeries([stored.interpolate(0.5, normalized=True)], crs=store.meta.crs)
    lon, lat = mid.to_crs("OGC:CRS84").iloc[0].coords[0]
    at = {"type": "Point", "coordinates": [lon, lat]}
    r = _execute(api, "isolate-burst", {"network": "water_supply", "at": at}, staff["water"])
    assert r.status_code == 200, r.text
    assert r.json()["summary"]["burst_link"] == main
    assert r.json()["summary"]["snapped_m"] < 0.01
    assert r.json()["summary"]["valves_to_close"] == list(expected.valve_ids)


def test_a_stuck_valve_and_raw_responses(api, service_ctx, staff):
    main = _main(service_ctx.store)
    first = _execute(
        api, "isolate-burst", {"network": "water_supply", "link": main}, staff["water"]
    ).json()["summary"]
    stuck = first["valves_to_close"][0]
    inputs = {"network": "water_supply", "link": main, "inoperable": [stuck]}
    r = _execute(api, "isolate-burst", inputs, staff["water"], outputs={"summary": {}})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    summary = r.json()  # raw, one output: the summary itself
    assert stuck not in summary["valves_to_close"] and summary["inoperable_bypassed"] == [stuck]
    assert summary["isolated_links"] > first["isolated_links"]
    r = _execute(api, "isolate-burst", inputs, staff["water"], outputs={"features": {}})
    assert r.headers["content-type"] == "application/geo+json"
    assert r.json()["type"] == "FeatureCollection"
    r = _execute(
        api, "isolate-burst", inputs, staff["water"], outputs={"summary": {}}, response="document"
    )
    assert list(r.json()) == ["summary"]


def test_trace_equals_the_analysis(api, service_ctx, staff):
    store = service_ctx.store
    sewer = store.query(
        Query(
            "utility_nodes",
            classes=["manhole"],
            where=[Filter("network", "=", "sewer")],
            order_by="id",
        )
    )
    start = str(sewer["id"].iloc[len(sewer) // 2])
    found = {}
    for direction in ("upstream", "downstream", "both", "connected"):
        inputs = {"network": "sewer", "start": start, "direction": direction}
        r = _execute(api, "trace", inputs, staff["drainage"])
        assert r.status_code == 200, r.text
        _validates(api.get("/processes/trace").json(), r.json())
        found[direction] = r.json()
        links = [
            f["id"]
            for f in r.json()["features"]["features"]
            if f["properties"]["feature"] == "link"
        ]
        if direction != "both":
            _, trace, _ = trace_network(store, "sewer", direction, [start])
            assert links == list(trace.link_ids)
            assert r.json()["summary"]["links"] == len(trace.links)
    both = {f["id"] for f in found["both"]["features"]["features"]}
    up = {f["id"] for f in found["upstream"]["features"]["features"]}
    down = {f["id"] for f in found["downstream"]["features"]["features"]}
    assert both == up | down
    starts = [
        f["id"]
        for f in found["upstream"]["features"]["features"]
        if f["properties"]["role"] == "start"
    ]
    assert starts == [start]
    assert found["both"]["summary"]["directions_from"] == "invert levels"


def test_trace_past_closed_valves(api, service_ctx, staff):
    data_links = service_ctx.store.query(
        Query("utility_links", where=[Filter("network", "=", "water_supply")])
    )
    start = str(data_links["id"].iloc[0])
    sizes = {}
    for stop in (True, False):
        inputs = {"network": "water_supply", "start": [start], "stop_at_closed": stop}
        r = _execute(api, "trace", inputs, staff["water"])
        sizes[stop] = r.json()["summary"]["links"]
        _, trace, _ = trace_network(
            service_ctx.store, "water_supply", "connected", [start], stop_at_closed=stop
        )
        assert sizes[stop] == len(trace.links)
    assert sizes[False] >= sizes[True]


def test_excavation_check_per_network(api, service_ctx, staff):
    store = service_ctx.store
    box = gpd.GeoSeries([shapely.box(431990, 2552990, 432050, 2553050)], crs=store.meta.crs)
    polygon = box.to_crs("OGC:CRS84").iloc[0]
    area = shapely.geometry.mapping(polygon)
    area = {
        "type": "Polygon",
        "coordinates": [list(map(list, ring)) for ring in area["coordinates"]],
    }
    twin_area = gpd.GeoSeries([polygon], crs="OGC:CRS84").to_crs(store.meta.crs).iloc[0]
    expected = dig_check(store, Dig(twin_area, 2.5))
    assert len(expected)  # the dig reaches several networks
    r = _execute(api, "excavation-check", {"area": area, "depth": 2.5}, staff["admin"])
    assert r.status_code == 200, r.text
    _validates(api.get("/processes/excavation-check").json(), r.json())
    features = r.json()["features"]["features"]
    assert [f["id"] for f in features] == list(expected["id"])
    assert [f["properties"]["struck"] for f in features] == list(expected["struck"])
    summary = r.json()["summary"]
    assert (
        summary["within_reach"] == len(expected) and summary["struck"] == expected["struck"].sum()
    )
    # the water authority sees its own lines; the others are counted, not shown
    r = _execute(api, "excavation-check", {"area": area, "depth": 2.5}, staff["water"])
    shown = {f["properties"]["network"] for f in r.json()["features"]["features"]}
    assert shown <= {"water_supply"}
    per = r.json()["summary"]["networks"]
    for network, rows in expected.groupby("network"):
        assert per[network]["within_reach"] == len(rows)
        assert per[network]["withheld"] == (0 if network == "water_supply" else len(rows))
    # a bbox input does the same as the polygon of its corners
    west, south, east, north = polygon.bounds
    r = _execute(
        api,
        "excavation-check",
        {"area": {"bbox": [west, south, east, north]}, "depth": 2.5},
        staff["admin"],
    )
    assert {f["id"] for f in r.json()["features"]["features"]} >= set(expected["id"])


def test_clearance_check(api, service_ctx, staff):
    store = service_ctx.store
    expected = clearance_check(store, twin_clearance_rules(store))
    assert len(expected)  # violations are seeded in the virtual city
    r = _execute(api, "clearance-check", {}, staff["admin"])
    assert r.status_code == 200, r.text
    _validates(api.get("/processes/clearance-check").json(), r.json())
    summary = r.json()["summary"]
    assert summary["violations"] == len(expected)
    assert summary["by_kind"] == expected["kind"].value_counts().to_dict()
    got = {
        (f["properties"]["id_a"], f["properties"]["id_b"]) for f in r.json()["features"]["features"]
    }
    assert got == set(zip(expected["id_a"], expected["id_b"], strict=True))
    # within an area around the first violation: that one, and only violations inside it
    first = expected.iloc[0]
    around = gpd.GeoSeries([shapely.Point(first["x"], first["y"]).buffer(30)], crs=store.meta.crs)
    area = shapely.geometry.mapping(around.to_crs("OGC:CRS84").iloc[0])
    r = _execute(api, "clearance-check", {"area": area}, staff["admin"])
    inside = [
        (f["properties"]["id_a"], f["properties"]["id_b"]) for f in r.json()["features"]["features"]
    ]
    assert (first["id_a"], first["id_b"]) in inside and len(inside) < len(expected)
    # the water authority sees violations between lines it may read only
    r = _execute(api, "clearance-check", {}, staff["water"]).json()["summary"]
    readable = expected["network_a"].eq("water_supply") & expected["network_b"].isin(
        ["water_supply", "building"]
    )
    assert r["violations"] == readable.sum()
    assert sum(r["withheld"].values()) == len(expected) - readable.sum()


# -- jobs -----------------------------------------------------------------------------------


def test_async_job_lifecycle(api, service_ctx, staff):
    main = _main(service_ctx.store)
    inputs = {"network": "water_supply", "link": main}
    r = _execute(api, "isolate-burst", inputs, {**staff["water"], "Prefer": "respond-async"})
    assert r.status_code == 201, r.text
    assert r.headers["preference-applied"] == "respond-async"
    info = r.json()
    location = r.headers["location"]
    assert location.endswith(f"/jobs/{info['jobID']}")
    assert info["status"] == "accepted" and info["processID"] == "isolate-burst"
    assert info["type"] == "process" and info["created"]
    done = _wait(api, location, staff["water"])
    assert done["status"] == "successful" and done["progress"] == 100
    assert done["started"] <= done["finished"]
    results_link = next(lk for lk in done["links"] if lk["rel"].endswith("/results"))
    results = api.get(results_link["href"], headers=staff["water"]).json()
    sync = _execute(api, "isolate-burst", inputs, staff["water"], response="document").json()
    assert results == sync
    # the job is in the twin
    assert service_ctx.store.get_document(f"jobs/{info['jobID']}")["status"] == "successful"
    # listed for its owner (filtered by process and status), not for others; admins see all
    listed = api.get(
        "/jobs",
        params={"processID": "isolate-burst", "status": "successful"},
        headers=staff["water"],
    ).json()
    assert [j["jobID"] for j in listed["jobs"]] == [info["jobID"]]
    assert (
        api.get("/jobs", params={"processID": "trace"}, headers=staff["water"]).json()["jobs"] == []
    )
    assert api.get("/jobs", headers=staff["planning"]).json()["jobs"] == []
    assert [j["jobID"] for j in api.get("/jobs", headers=staff["admin"]).json()["jobs"]] == [
        info["jobID"]
    ]
    assert api.get(location, headers=staff["planning"]).status_code == 403
    r = api.get(location)
    assert r.status_code == 401 and "www-authenticate" in r.headers
    assert api.get(location, headers=staff["admin"]).status_code == 200
    # dismissing a finished job removes it and its results
    r = api.delete(location, headers=staff["water"])
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    r = api.get(location, headers=staff["water"])
    assert r.status_code == 404 and r.json()["type"] == EXCEPTIONS + "no-such-job"
    assert service_ctx.store.get_document(f"jobs/{info['jobID']}") is None
    assert service_ctx.store.get_document(f"job-results/{info['jobID']}") is None


def test_job_list_pages(api, staff):
    inputs = {"network": "water_supply", "start": "ws:J000010"}
    headers = {**staff["water"], "Prefer": "respond-async"}
    ids = [_execute(api, "trace", inputs, headers).json()["jobID"] for _ in range(3)]
    page = api.get("/jobs", params={"limit": 2}, headers=staff["water"]).json()
    assert page["numberMatched"] == 3 and len(page["jobs"]) == 2
    following = next(lk["href"] for lk in page["links"] if lk["rel"] == "next")
    rest = api.get(following, headers=staff["water"]).json()
    assert {j["jobID"] for j in page["jobs"] + rest["jobs"]} == set(ids)
    assert api.get("/jobs", params={"status": "nope"}, headers=staff["water"]).status_code == 400


def _blocker(release: threading.Event, started: threading.Event):
    def work(control):
        started.set()
        release.wait(30)
        control.progress(90, "almost")
        return {"summary": {"done": True}}

    return work


def test_queued_job_not_ready_then_dismissed(api, service_ctx, staff):
    runner = service_ctx.jobs
    release = threading.Event()
    busy = [threading.Event(), threading.Event()]
    try:
        held = [
            runner.submit("trace", _blocker(release, e), owner="root", department=None, request={})
            for e in busy
        ]
        assert all(e.wait(10) for e in busy)  # both workers are taken
        inputs = {"network": "water_supply", "start": "ws:J000010"}
        r = _execute(api, "trace", inputs, {**staff["water"], "Prefer": "respond-async"})
        location = r.headers["location"]
        assert api.get(location, headers=staff["water"]).json()["status"] == "accepted"
        r = api.get(location + "/results", headers=staff["water"])
        assert r.status_code == 404 and r.json()["type"] == EXCEPTIONS + "result-not-ready"
        assert r.headers["content-type"] == "application/problem+json"
        # a running job dismissed by an admin: cancelled, listed as dismissed
        r = api.delete(f"/jobs/{held[0].id}", headers=staff["admin"])
        assert r.status_code == 200 and r.json()["status"] == "dismissed"
        r = api.delete(location, headers=staff["water"])
        assert r.json()["status"] == "dismissed"
        assert api.get(location, headers=staff["water"]).json()["status"] == "dismissed"
    finally:
        release.set()
    assert _wait(api, f"/jobs/{held[1].id}", staff["admin"])["status"] == "successful"
    time.sleep(0.2)
    assert runner.get(held[0].id).status == "dismissed"  # its late results are not kept
    assert service_ctx.store.get_document(f"job-results/{held[0].id}") is None
    assert api.get(location, headers=staff["water"]).json()["status"] == "dismissed"
    assert api.delete(location, headers=staff["water"]).status_code == 200  # now removed
    assert api.get(location, headers=staff["water"]).status_code == 404


def test_a_failing_job_ends_failed_with_the_message(api, service_ctx, staff):
    service_ctx.store.put_document(CLEARANCE_RULES_DOCUMENT, {"bogus": 1})  # a broken rule set
    r = _execute(api, "clearance-check", {}, {**staff["admin"], "Prefer": "respond-async"})
    assert r.status_code == 201
    done = _wait(api, r.headers["location"], staff["admin"])
    assert done["status"] == "failed"
    assert "unknown key 'bogus'" in done["message"]
    r = api.get(r.headers["location"] + "/results", headers=staff["admin"])
    assert r.status_code == 400 and "unknown key 'bogus'" in r.json()["detail"]
    assert r.json()["type"] == EXCEPTIONS + "invalid-parameter-value"


def test_a_restart_fails_the_running_jobs_and_keeps_the_finished(service_ctx):
    store = service_ctx.store
    first = JobRunner(store)
    release, started = threading.Event(), threading.Event()
    try:
        done = first.submit(
            "trace",
            lambda control: {"summary": {"n": 1}},
            owner="wang",
            department="water",
            request={"inputs": {}},
        )
        deadline = time.monotonic() + 10
        while first.get(done.id).status != "successful" and time.monotonic() < deadline:
            time.sleep(0.02)
        running = first.submit(
            "trace", _blocker(release, started), owner="wang", department="water", request={}
        )
        assert started.wait(10)
        again = JobRunner(store)  # the service came back while that job was running
        failed = again.get(running.id)
        assert failed.status == "failed" and "stopped while the job was running" in failed.message
        assert store.get_document(f"jobs/{running.id}")["status"] == "failed"
        assert again.get(done.id).status == "successful"
        assert again.results(done.id) == {"summary": {"n": 1}}
        assert [j.id for j in again.jobs(owner="wang")] == [running.id, done.id]
        again.close()
    finally:
        release.set()
        first.close()


def test_a_job_that_raises_fails_with_its_error(service_ctx):
    runner = JobRunner(service_ctx.store, workers=1)
    try:
        job = runner.submit("trace", lambda control: 1 / 0, owner=None, department=None, request={})
        deadline = time.monotonic() + 10
        while runner.get(job.id).status != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        failed = runner.get(job.id)
        assert failed.message == "ZeroDivisionError: division by zero"
        assert failed.error["status"] == 500
    finally:
        runner.close()


# -- bad requests ------------------------------------------------------------------------------

POINT_OUTSIDE = {"type": "Point", "coordinates": [10.0, 50.0]}
BOWTIE = {
    "type": "Polygon",
    "coordinates": [
        [[113.33, 23.07], [113.34, 23.08], [113.34, 23.07], [113.33, 23.08], [113.33, 23.07]]
    ],
}


BAD_REQUESTS = [
    ("isolate-burst", {"inputs": {"network": "nope", "link": "x"}}, "'network'"),
    (
        "isolate-burst",
        {"inputs": {"network": "water_supply", "link": "ws:NOPE"}},
        "'ws:NOPE' is not a link",
    ),
    ("isolate-burst", {"inputs": {"network": "water_supply"}}, "either link"),
    (
        "isolate-burst",
        {"inputs": {"network": "water_supply", "link": "x", "at": POINT_OUTSIDE}},
        "either link",
    ),
    (
        "isolate-burst",
        {"inputs": {"network": "water_supply", "at": POINT_OUTSIDE}},
        "outside the twin",
    ),
    ("isolate-burst", {"inputs": {"network": "water_supply", "link": ["a", "b"]}}, "one value"),
    ("isolate-burst", {"inputs": {"link": "x"}}, "'network' is required"),
    (
        "isolate-burst",
        {"inputs": {"network": "water_supply", "pipe": "x"}},
        "unknown input 'pipe'",
    ),
    (
        "isolate-burst",
        {
            "inputs": {
                "network": "water_supply",
                "inoperable": ["ws:NOPE"],
                "link": "ws:P000100",
            }
        },
        "not a valve",
    ),
    (
        "trace",
        {"inputs": {"network": "water_supply", "start": "x", "direction": "sideways"}},
        "'direction'",
    ),
    (
        "trace",
        {"inputs": {"network": "telecom", "start": "x", "direction": "upstream"}},
        "no sources",
    ),
    ("excavation-check", {"inputs": {"area": BOWTIE, "depth": 2}}, "not a valid geometry"),
    (
        "excavation-check",
        {"inputs": {"area": {"type": "Polygon", "coordinates": [[[1, 2]]]}, "depth": 2}},
        "'area'",
    ),
    (
        "excavation-check",
        {"inputs": {"area": {"bbox": [113.34, 23.07, 113.33, 23.08]}, "depth": 2}},
        "empty",
    ),
    (
        "excavation-check",
        {"inputs": {"area": {"bbox": [113.33, 23.07, 113.34, 23.08]}, "depth": -1}},
        "'depth'",
    ),
    (
        "excavation-check",
        {
            "inputs": {
                "area": {"type": "Point", "coordinates": [113.335, 23.075]},
                "depth": 1,
                "buffer": 0,
            }
        },
        "needs a buffer",
    ),
    ("clearance-check", {"inputs": {"networks": ["water_supply", "lava"]}}, "'networks'"),
    ("clearance-check", {"inputs": {}, "outputs": {"everything": {}}}, "no output"),
    (
        "clearance-check",
        {"inputs": {}, "outputs": {"summary": {"transmissionMode": "reference"}}},
        "'reference' is not offered",
    ),
    ("clearance-check", {"inputs": {}, "response": "zip"}, "raw or document"),
    ("clearance-check", {"inputs": [1, 2]}, "'inputs' must be an object"),
    ("clearance-check", {"inputs": {}, "subscriber": {"successUri": "http://x"}}, "callbacks"),
]


def test_bad_inputs_are_400s(api, staff):
    for pid, body, message in BAD_REQUESTS:
        r = api.post(f"/processes/{pid}/execution", json=body, headers=staff["admin"])
        assert r.status_code == 400, (body, r.text)
        problem = r.json()
        assert problem["type"] == EXCEPTIONS + "invalid-parameter-value"
        assert problem["status"] == 400 and message in problem["detail"], (body, problem)
        assert r.headers["content-type"] == "application/problem+json"


def test_bodies_that_are_not_execute_requests(api, staff):
    url = "/processes/trace/execution"
    for raw in (b"{not json", b"[1, 2]", b'{"inputs": {"network": NaN}}'):
        r = api.post(
            url, content=raw, headers={**staff["admin"], "content-type": "application/json"}
        )
        assert r.status_code == 400, raw


def test_unknown_process_and_job_are_404s(api, staff):
    r = api.get("/processes/flood")
    assert r.status_code == 404 and r.json()["type"] == EXCEPTIONS + "no-such-process"
    r = api.post("/processes/flood/execution", json={"inputs": {}}, headers=staff["admin"])
    assert r.status_code == 404 and r.json()["type"] == EXCEPTIONS + "no-such-process"
    for path in ("/jobs/nope", "/jobs/nope/results"):
        r = api.get(path, headers=staff["admin"])
        assert r.status_code == 404 and r.json()["type"] == EXCEPTIONS + "no-such-job"
    assert api.delete("/jobs/nope", headers=staff["admin"]).status_code == 404


# -- access ------------------------------------------------------------------------------------


def test_running_a_process_needs_read_access_to_the_network(api, service_ctx, staff):
    inputs = {"network": "water_supply", "link": _main(service_ctx.store)}
    r = _execute(api, "isolate-burst", inputs, {})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = _execute(api, "isolate-burst", inputs, {"Prefer": "respond-async"})
    assert r.status_code == 401  # no job is made either
    r = _execute(api, "isolate-burst", inputs, staff["gas"])
    assert r.status_code == 403 and "water_supply_links" in r.json()["detail"]
    assert _execute(api, "isolate-burst", inputs, staff["planning"]).status_code == 200
    assert api.get("/jobs").json()["jobs"] == []


@pytest.fixture
def ruled(service_twin):
    """A service over the live city whose catalogue hides water mains of DN 300 and more from
    everyone but the water authority (a row rule kept in the twin)."""
    store = open_store(service_twin)
    rule = {"where": "diameter >= 0.3", "departments": ["water"], "reason": "trunk mains"}
    store.put_document(
        CATALOGUE_DOCUMENT, {"collections": {"water_supply_links": {"row_rules": [rule]}}}
    )
    ctx = ServiceContext.of(store)
    try:
        with TestClient(create_app(ctx)) as client:
            yield ctx, client, _staff(ctx)
    finally:
        store.close()


def test_rows_a_grant_hides_are_left_out(ruled):
    ctx, client, staff = ruled
    links = ctx.store.query(Query("utility_links", where=[Filter("network", "=", "water_supply")]))
    start = str(links.loc[links["diameter"] < 0.3, "id"].iloc[0])
    inputs = {"network": "water_supply", "start": start}
    _, trace, _ = trace_network(ctx.store, "water_supply", "connected", [start])
    big = set(links.loc[links["diameter"] >= 0.3, "id"]) & set(trace.link_ids)
    assert big  # the trace runs through trunk mains
    seen = _execute(client, "trace", inputs, staff["water"]).json()
    assert big <= {f["id"] for f in seen["features"]["features"]}
    assert "water_supply_links" not in seen["summary"]["withheld"]
    planner = _execute(client, "trace", inputs, staff["planning"]).json()
    shown = {f["id"] for f in planner["features"]["features"]}
    assert not big & shown
    assert planner["summary"]["withheld"]["water_supply_links"] == len(big)
    assert planner["summary"]["links"] == len(trace.links)  # counted, not shown


def test_cached_networks_follow_the_twin(api, service_ctx, staff):
    main = _main(service_ctx.store)
    inputs = {"network": "water_supply", "link": main}
    before = _execute(api, "isolate-burst", inputs, staff["water"]).json()["summary"]
    gone = before["valves_to_close"][0]
    service_ctx.store.retire("utility_nodes", [gone])  # the valve is taken out
    after = _execute(api, "isolate-burst", inputs, staff["water"]).json()["summary"]
    expected = isolate_burst(service_ctx.store, "water_supply", link=main)
    assert gone not in after["valves_to_close"]
    assert after["valves_to_close"] == list(expected.valve_ids)
    assert np.isclose(after["loses_supply"]["residents"], expected.isolation.impact["residents"])

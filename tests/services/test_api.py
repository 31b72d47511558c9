"""The HTTP service: SensorThings create endpoints (single, by datastream, DataArray), errors
that are never 500s, and the alarm desk over HTTP — through a real Ingestor on a twin."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from citytwin.services.runtime import MonitoringService
from citytwin.warning.rules import load_rules
from tests.sensing.test_ingest import RULES, T0, twin_path  # noqa: F401  (fixture)

NOW = (T0 + pd.Timedelta(days=1)).to_pydatetime()


@pytest.fixture
def client(twin_path, tmp_path):  # noqa: F811
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    service = MonitoringService.open(twin_path, rules=rules, clock="data")
    service.ingestor.clock = lambda: NOW
    with TestClient(service.http_app()) as c:
        c.service = service
        yield c


def _t(minutes: float) -> str:
    return (T0 + pd.Timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_single_observations_by_body_and_by_path(client):
    r = client.post(
        "/v1.1/Observations",
        json={"Datastream": {"@iot.id": "GD-0:gas"}, "phenomenonTime": _t(0), "result": 3},
    )
    assert r.status_code == 201, r.text
    assert r.json()["@iot.id"] == "GD-0:gas@2026-06-01T00:00:00.000000Z"
    assert r.headers["location"].endswith("Observations('GD-0:gas@2026-06-01T00:00:00.000000Z')")
    r = client.post(
        "/v1.1/Datastreams('GD-0:gas')/Observations", json={"phenomenonTime": _t(0), "result": 3}
    )
    assert r.status_code == 201 and r.json()["stored"] == "already stored"
    r = client.post("/v1.1/Datastreams(GD-1:gas)/Observations",
                    json={"phenomenonTime": _t(1), "result": 4.5})  # fmt: skip
    assert r.status_code == 201 and r.json()["stored"] == "new"
    stored = client.service.store.observations(["GD-0:gas", "GD-1:gas"])
    assert stored["result"].tolist() == [3.0, 4.5]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1.1/Observations", b"{not json", 400, "not JSON"),
        ("/v1.1/Observations", b"[1,2]", 400, "JSON object"),
        ("/v1.1/Observations", b'{"phenomenonTime": "2026-06-01T00:00:00Z", "result": 1}', 400,
         "names no Datastream"),
        ("/v1.1/Datastreams(nope:gas)/Observations",
         b'{"phenomenonTime": "2026-06-01T00:00:00Z", "result": 1}', 404, "unknown datastream"),
        ("/v1.1/Datastreams(GD-0:gas)/Observations",
         b'{"phenomenonTime": "2026-06-01T00:00:00Z", "result": "high"}', 422, "not a number"),
        ("/v1.1/Datastreams(GD-0:gas)/Observations",
         b'{"phenomenonTime": "2030-06-01T00:00:00Z", "result": 1}', 422, "in the future"),
        ("/v1.1/Datastreams(GD-0:gas)/Observations",
         b'{"phenomenonTime": 12, "result": 1}', 422, "not a time"),
        ("/v1.1/CreateObservations", b"{}", 400, "no Datastream"),
        ("/v1.1/CreateObservations", b"[]", 400, "no readings"),
        ("/v1.1/Things", b"{}", 404, "not a create endpoint"),
        ("/v1.1/Datastreams(x/Observations", b"{}", 404, "not a create endpoint"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_4xx_answers(client, path, body, status, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_data_array_answers_per_reading_and_dead_letters_the_refused(client):
    doc = [
        {
            "Datastream": {"@iot.id": "GD-2:gas"},
            "components": ["phenomenonTime", "result", "resultQuality"],
            "dataArray": [[_t(0), 1.0, None], [_t(1), "x", None], [_t(2), 2.0, {"flag": "ok"}]],
        },
        {
            "Datastream": {"@iot.id": "missing"},
            "components": ["phenomenonTime", "result"],
            "dataArray": [[_t(0), 1.0]],
        },
    ]
    r = client.post("/v1.1/CreateObservations", content=orjson.dumps(doc))
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer[0].startswith("/v1.1/Observations('GD-2:gas@")
    assert answer[1] == "error: not a number"
    assert answer[3] == "error: unknown datastream"
    dead = client.service.store.rejected(source="http")
    assert sorted(dead["reason"]) == ["not a number", "unknown datastream"]
    only_bad = [{**doc[1]}]
    assert (
        client.post("/v1.1/CreateObservations", content=orjson.dumps(only_bad)).status_code == 422
    )


def test_alarms_over_http_with_lifecycle(client):
    readings = {"Datastream": {"@iot.id": "GD-3:gas"}, "components": ["phenomenonTime", "result"],
                "dataArray": [[_t(m), v] for m, v in [(0, 1), (1, 30), (2, 60)]]}  # fmt: skip
    assert client.post("/v1.1/CreateObservations", json=[readings]).status_code == 201
    listed = client.get("/alarms", params={"status": "active"}).json()
    assert listed["count"] == 1
    alarm = listed["value"][0]
    assert alarm["severity"] == "red" and alarm["source"] == "GD-3:gas"
    aid = alarm["alarm_id"]
    r = client.post(f"/alarms/{aid}/acknowledge", json={"by": "duty-officer", "text": "crew sent"})
    assert r.status_code == 200 and r.json()["acknowledged"] is True
    again = client.post(f"/alarms/{aid}/acknowledge", json={"by": "duty-officer"})
    assert again.status_code == 400 and "already acknowledged" in again.json()["error"]
    assert client.post(f"/alarms/{aid}/assign", json={"by": "a", "to": "crew-7"}).status_code == 200
    assert client.post(f"/alarms/{aid}/shout", json={"by": "a"}).status_code == 400
    assert client.post("/alarms/AL-nope/acknowledge", json={"by": "a"}).status_code == 404
    detail = client.get(f"/alarms/{aid}").json()
    assert [e["action"] for e in detail["log"]][-2:] == ["acknowledge", "assign"]
    assert detail["assignee"] == "crew-7"
    assert client.get("/alarms", params={"status": "nonsense"}).status_code == 400
    assert client.get("/alarms", params={"limit": "many"}).status_code == 400


def test_rules_file_reload_is_picked_up(client, tmp_path):
    service = client.service
    path = service.rules_path
    path.write_text(RULES.replace("red: 50", "red: 40"))
    service.reload_rules()
    assert service.ingestor.rules["gas"].condition.levels[-1] == ("red", 40.0)
    path.write_text("rules: [{id: broken")
    with pytest.raises(Exception, match=r"rules\.yaml"):
        service.reload_rules()
    assert service.ingestor.rules["gas"].condition.levels[-1] == ("red", 40.0)
    assert load_rules  # the same loader the service uses


def test_requests_run_on_a_bounded_number_of_worker_threads(twin_path, tmp_path):  # noqa: F811
    # Sync endpoints share anyio's worker threads: a few per core (more only take turns at the
    # GIL and stretch every request); the bound is the app's, set as it starts, and a bound
    # below one is refused.
    from anyio import to_thread

    from citytwin.errors import InvalidInput
    from citytwin.services.api import default_request_threads

    def tokens(client: TestClient) -> float:
        assert client.portal is not None
        return client.portal.call(lambda: to_thread.current_default_thread_limiter().total_tokens)

    service = MonitoringService.open(twin_path, clock="data")
    with pytest.raises(InvalidInput, match="request threads"):
        service.http_app(request_threads=0)
    with TestClient(service.http_app(request_threads=3)) as c:
        assert tokens(c) == 3
        assert c.get("/collections/devices/items").json()["numberReturned"] == 8
    service = MonitoringService.open(twin_path, clock="data")
    with TestClient(service.http_app()) as c:
        assert tokens(c) == default_request_threads() >= 4


def test_a_collection_on_a_line_has_an_extent(client):
    # The fixture's devices lie on one east-west line: their bounding box has no height (an
    # empty polygon, once a 500 on /collections); the extent is the line's box in CRS84.
    doc = client.get("/collections/devices").json()
    (x0, y0, x1, y1), = doc["extent"]["spatial"]["bbox"]
    assert x0 < x1 and y1 - y0 < 1e-6
    assert client.get("/collections").status_code == 200

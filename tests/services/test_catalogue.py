"""The data catalogue over HTTP (OGC API – Records style) on the live virtual city: one record
per visible collection, process and service, with owners, licences, sensitivity and extents;
search in English and Chinese, filters and paging; links that work; confidential collections
hidden from other departments; usage per service and department from the audit log."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import pytest
import shapely
from fastapi.testclient import TestClient

from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import CATALOGUE_DOCUMENT
from citytwin.services.processes import PROCESSES
from citytwin.store import open_store

PEOPLE = {
    "water": ("wang", "water", ("viewer",)),
    "gas": ("zhao", "gas", ("viewer",)),
    "planning": ("li", "planning", ("viewer",)),
    "admin": ("root", "planning", ("admin",)),
}


def _keys(ctx) -> dict[str, dict[str, str]]:
    headers = {}
    for who, (uid, department, roles) in PEOPLE.items():
        ctx.registry.add_user(uid, uid, department, roles=roles)
        headers[who] = {"X-API-Key": ctx.registry.issue_key(uid).secret}
    return headers


@pytest.fixture
def keys(api, service_ctx):
    return _keys(service_ctx)


def _ids(client, headers=None, **params) -> list[str]:
    r = client.get("/catalogue/items", params={"limit": 1000, **params}, headers=headers or {})
    assert r.status_code == 200, r.text
    return [f["id"] for f in r.json()["features"]]


def test_records_describe_every_collection_process_and_service(api, service_ctx, keys):
    landing = api.get("/catalogue").json()
    assert landing["itemType"] == "record" and landing["title_zh"]
    assert {lk["rel"] for lk in landing["links"]} >= {"self", "items"}
    r = api.get("/catalogue/items", params={"limit": 1000}, headers=keys["admin"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    records = {f["id"]: f for f in r.json()["features"]}
    collections = {c.id: c for c in service_ctx.catalogue}
    expected = {*collections, *(f"process-{p}" for p in PROCESSES)}
    assert set(records) == expected | {"service-sensorthings", "service-tiles"}
    crs = service_ctx.store.meta.crs
    for rid, record in records.items():
        p = record["properties"]
        assert record["type"] == "Feature" and p["type"] in ("dataset", "service", "process")
        assert p["title"] and p["title_zh"] and p["license"] and p["sensitivity"]
        assert record["bbox"][0] < record["bbox"][2] and record["bbox"][1] < record["bbox"][3]
        assert 113 < record["bbox"][0] < 114 and 22 < record["bbox"][1] < 24  # CRS84
        assert record["geometry"]["type"] == "Polygon"
        if rid in collections:
            c = collections[rid]
            assert p["type"] == "dataset"
            assert p["owner"]["id"] == c.owner
            assert p["owner"]["name"] == service_ctx.catalogue.departments[c.owner]["name"]
            assert p["owner"]["name_zh"] == service_ctx.catalogue.departments[c.owner]["name_zh"]
            assert p["update_frequency"] == c.update_frequency and p["license"] == c.licence
            assert p["sensitivity"] == c.sensitivity and p["title_zh"] == c.title_zh
            assert p["feature_count"] == service_ctx.store.count(c.query())
            assert dt.datetime.fromisoformat(p["created"]) <= dt.datetime.fromisoformat(
                p["updated"]
            )
            box = shapely.box(*service_ctx.store.extent(c.query()).bbox)
            corners = gpd.GeoSeries(shapely.points(shapely.get_coordinates(box)), crs=crs)
            assert shapely.box(*record["bbox"]).buffer(1e-7).contains(
                shapely.multipoints(corners.to_crs("OGC:CRS84").to_numpy())
            )
            assert p["extent"]["spatial"]["bbox"] == [record["bbox"]]
    assert records["process-isolate-burst"]["properties"]["title_zh"] == "爆管关阀分析"
    one = api.get("/catalogue/items/water_supply_links", headers=keys["admin"]).json()
    assert one["properties"] == records["water_supply_links"]["properties"]
    assert api.get("/catalogue/items/nope").status_code == 404


def test_records_link_to_working_endpoints(api, keys):
    features = api.get("/catalogue/items", params={"limit": 1000}, headers=keys["admin"]).json()
    checked = 0
    for record in features["features"]:
        for link in record["links"]:
            if link.get("templated") or link["rel"].endswith("/execute"):
                continue  # a template, or a POST
            r = api.get(link["href"], headers=keys["admin"])
            assert r.status_code == 200, (record["id"], link, r.text[:300])
            checked += 1
    assert checked > 4 * len(features["features"])


def test_search_in_english_and_chinese(api, keys):
    water = _ids(api, q="water supply")
    assert {"water_supply_nodes", "water_supply_links"} <= set(water)
    assert "sewer_links" not in water
    assert _ids(api, q="WATER Supply") == water  # case does not matter
    assert set(_ids(api, q="供水")) == {"water_supply_nodes", "water_supply_links"}
    assert _ids(api, q="供水 管线") == ["water_supply_links"]  # every word must match
    assert _ids(api, q="gas links", type="dataset") == ["gas_links"]
    assert "process-isolate-burst" in _ids(api, q="burst")
    assert _ids(api, q="爆管") == ["process-isolate-burst"]
    assert _ids(api, q="no such words anywhere") == []


def test_filters_and_paging(api, service_ctx):
    everything = _ids(api)
    assert set(_ids(api, department="gas")) == {"gas_nodes", "gas_links"}
    processes = _ids(api, type="process")
    assert processes == [f"process-{p}" for p in PROCESSES]
    assert set(_ids(api, type="service")) == {"service-sensorthings", "service-tiles"}
    public = _ids(api, sensitivity="public")
    restricted = _ids(api, sensitivity="restricted")
    assert set(public) | set(restricted) == set(everything)
    assert "water_supply_links" in restricted and "buildings" in public
    assert _ids(api, bbox="10,50,11,51") == []
    assert _ids(api, bbox="113.33,23.07,113.34,23.08") == everything
    assert set(_ids(api, type="dataset", department="water", q="links")) == {"water_supply_links"}
    # pages of 5, following the next links, give every record once
    seen, url = [], "/catalogue/items?limit=5"
    while url:
        page = api.get(url).json()
        assert page["numberMatched"] == len(everything) and page["numberReturned"] <= 5
        seen += [f["id"] for f in page["features"]]
        url = next((lk["href"] for lk in page["links"] if lk["rel"] == "next"), None)
    assert seen == everything
    for params in (
        {"department": "nope"},
        {"type": "map"},
        {"sensitivity": "secret"},
        {"bbox": "1,2,3"},
        {"bbox": "3,2,1,4"},
        {"limit": 0},
        {"offset": -1},
    ):
        r = api.get("/catalogue/items", params=params)
        assert r.status_code == 400, (params, r.text)


@pytest.fixture
def confidential(service_twin):
    """The live city with its gas links confidential (kept in the twin's catalogue document)."""
    store = open_store(service_twin)
    store.put_document(
        CATALOGUE_DOCUMENT, {"collections": {"gas_links": {"sensitivity": "confidential"}}}
    )
    ctx = ServiceContext.of(store)
    try:
        with TestClient(create_app(ctx)) as client:
            yield client, _keys(ctx)
    finally:
        store.close()


def test_confidential_collections_are_hidden_from_others(confidential):
    client, keys = confidential
    assert "gas_links" in _ids(client, keys["gas"])
    assert "gas_links" in _ids(client, keys["planning"])  # planning reads the networks
    assert "gas_links" in _ids(client, keys["admin"])
    for who in (None, keys["water"]):
        assert "gas_links" not in _ids(client, who)
        assert "gas_links" not in _ids(client, who, q="gas")
        assert "water_supply_links" in _ids(client, who)  # restricted: listed for everyone
        r = client.get("/catalogue/items/gas_links", headers=who or {})
        assert r.status_code == 404
    r = client.get("/catalogue/items/gas_links", headers=keys["gas"])
    assert r.json()["properties"]["sensitivity"] == "confidential"


def test_usage_per_service_and_department(api, service_ctx, keys):
    for _ in range(2):
        r = api.get(
            "/collections/water_supply_links/items", params={"limit": 5}, headers=keys["water"]
        )
        assert r.status_code == 200 and len(r.json()["features"]) == 5
    r = api.get("/collections/buildings/items", params={"limit": 3}, headers=keys["planning"])
    assert len(r.json()["features"]) == 3
    api.get("/collections/buildings/items", params={"limit": 4})  # anonymous
    service_ctx.audit.flush()
    assert api.get("/catalogue/usage").status_code == 401
    usage = api.get("/catalogue/usage", headers=keys["admin"]).json()
    services = {s["service"]: s for s in usage["services"]}
    water = services["water_supply_links"]
    assert water["requests"] == 2 and water["features"] == 10
    assert water["departments"] == [
        {
            "department": "water",
            "name": "Water Authority (supply)",
            "name_zh": "水务局（供水）",
            "requests": 2,
            "features": 10,
        }
    ]
    buildings = {d["department"]: d for d in services["buildings"]["departments"]}
    assert buildings["planning"]["features"] == 3 and buildings[None]["features"] == 4
    departments = {d["department"]: d for d in usage["departments"]}
    assert departments["water"]["requests"] >= 2 and departments["water"]["features"] >= 10
    assert usage["total"]["requests"] == sum(s["requests"] for s in usage["services"])
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    empty = api.get("/catalogue/usage", params={"since": later}, headers=keys["admin"]).json()
    assert empty["total"] == {"requests": 0, "features": 0} and empty["services"] == []
    r = api.get("/catalogue/usage", params={"since": later, "until": later}, headers=keys["admin"])
    assert r.status_code == 400

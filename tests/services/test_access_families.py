"""Access across the endpoint families on the live virtual city: a gas utility user can't get
the water authority's restricted collections (403, or 404 where the family hides what the
caller may not see), anonymous callers get 401, a forged or unknown credential 401 — never
data — and the water authority gets its data. Through the real middleware, registry, catalogue
policies and routers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jwt
import mapbox_vector_tile
import pyproj
import pytest
from fastapi.testclient import TestClient

from citytwin.services.access import Registry
from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import CATALOGUE_DOCUMENT
from citytwin.store import Filter, Query, open_store

WATER = "water_supply_links"  # restricted: water owns it (planning, emergency, housing read)


@pytest.fixture
def fam(service_twin):
    store = open_store(service_twin)
    # a confidential collection: not even listed in the catalogue for other departments
    store.put_document(
        CATALOGUE_DOCUMENT, {"collections": {"gas_links": {"sensitivity": "confidential"}}}
    )
    ctx = ServiceContext.of(store)
    reg = ctx.registry = Registry(store, catalogue=ctx.catalogue)
    reg.add_user("zhao", "Zhao", "gas", password="gas-password")
    reg.add_user("wang", "Wang", "water")
    forged = jwt.encode(
        {"iss": reg.issuer, "sub": "wang", "iat": 0, "exp": 2**40, "jti": "forged"},
        "a secret that is not the twin's own, 32+ bytes",
        algorithm="HS256",
    )
    try:
        with TestClient(create_app(ctx)) as client:
            token = client.post(
                "/oauth/token",
                data={"grant_type": "password", "username": "zhao", "password": "gas-password"},
            ).json()["access_token"]
            callers = {
                "anonymous": {},
                "forged token": {"Authorization": f"Bearer {forged}"},
                "unknown key": {"X-API-Key": "ct_0123456789_" + "x" * 43},
                "gas": {"X-API-Key": reg.issue_key("zhao").secret},
                "gas token": {"Authorization": f"Bearer {token}"},
                "water": {"X-API-Key": reg.issue_key("wang").secret},
            }
            yield SimpleNamespace(client=client, store=store, callers=callers)
    finally:
        store.close()


def _ask(fam, path, method="GET", **kw):
    return {
        who: fam.client.request(method, path, headers=headers, **kw)
        for who, headers in fam.callers.items()
    }


def _refused(answers, gas_status=403, anonymous_status=401):
    """The non-owners' answers: the statuses expected and no data of the water network."""
    expected = {
        "anonymous": anonymous_status,
        "forged token": 401,
        "unknown key": 401,
        "gas": gas_status,
        "gas token": gas_status,
    }
    assert {who: answers[who].status_code for who in expected} == expected
    for who in expected:
        assert "ws:" not in answers[who].text and "error" in answers[who].json()
    for who in ("forged token", "unknown key"):
        assert answers[who].headers["www-authenticate"].startswith("Bearer")


def test_features(fam):
    answers = _ask(fam, f"/collections/{WATER}/items", params={"limit": 5})
    _refused(answers)
    mine = answers["water"]
    assert mine.status_code == 200 and mine.json()["numberReturned"] == 5
    fid = mine.json()["features"][0]["id"]
    assert all(f["id"].startswith("ws:") for f in mine.json()["features"])
    answers = _ask(fam, f"/collections/{WATER}/items/{fid}")
    _refused(answers)
    assert answers["water"].status_code == 200 and answers["water"].json()["id"] == fid


def _tile_of_a_water_main(store, z=16):
    link = store.query(Query("utility_links", where=[Filter("network", "=", "water_supply")],
                             limit=1))  # fmt: skip
    x, y = link.geometry.iloc[0].interpolate(0.5, normalized=True).coords[0]
    lon, lat = pyproj.Transformer.from_crs(store.meta.crs, "EPSG:4326", always_xy=True).transform(
        x, y
    )
    n = 2**z
    col = int((lon + 180) / 360 * n)
    row = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return z, row, col


def test_tiles(fam):
    z, row, col = _tile_of_a_water_main(fam.store)
    answers = _ask(fam, f"/collections/{WATER}/tiles/WebMercatorQuad/{z}/{row}/{col}")
    _refused(answers)
    mine = answers["water"]
    assert mine.status_code == 200 and mine.headers["content-type"].startswith(
        "application/vnd.mapbox-vector-tile"
    )
    assert len(mapbox_vector_tile.decode(mine.content)[WATER]["features"]) > 0
    # the tile of every readable collection: the water layers only for the water authority
    answers = _ask(fam, f"/tiles/WebMercatorQuad/{z}/{row}/{col}")
    for who in ("forged token", "unknown key"):
        assert answers[who].status_code == 401
    layers = {
        who: set(mapbox_vector_tile.decode(answers[who].content))
        for who in ("anonymous", "gas", "gas token", "water")
    }
    assert WATER in layers["water"] and "buildings" in layers["anonymous"]
    for who in ("anonymous", "gas", "gas token"):
        assert not any(name.startswith("water_supply") for name in layers[who])


def test_processes(fam):
    start = fam.store.query(
        Query("utility_nodes", where=[Filter("network", "=", "water_supply")], limit=1)
    )["id"].iloc[0]
    body = {"inputs": {"network": "water_supply", "start": [start]}}
    answers = _ask(fam, "/processes/trace/execution", method="POST", json=body)
    _refused(answers)
    mine = answers["water"]
    assert mine.status_code == 200, mine.text
    features = mine.json()["features"]["features"]
    assert features and all(f["id"].startswith("ws:") for f in features)


def test_sensorthings(fam):
    streams = fam.store.datastreams()
    water = streams[(streams["network"] == "water_supply") & (streams["observed_property"]
                                                              == "pressure")]  # fmt: skip
    ds = str(water["datastream_id"].iloc[0])  # read every few seconds in the replay
    path = f"/v1.1/Datastreams('{ds}')/Observations"
    answers = _ask(fam, path, params={"$top": 2})
    # SensorThings hides what the caller may not read: 404 for the entity, as if absent
    _refused(answers, gas_status=404, anonymous_status=404)
    mine = answers["water"]
    assert mine.status_code == 200 and len(mine.json()["value"]) == 2
    listing = _ask(fam, "/v1.1/Datastreams", params={"$filter": "properties/network eq"
                                                     " 'water_supply'", "$top": 3})  # fmt: skip
    for who in ("anonymous", "gas", "gas token"):
        assert listing[who].status_code == 200 and listing[who].json()["value"] == []
    assert len(listing["water"].json()["value"]) == 3


def test_catalogue(fam):
    answers = _ask(fam, "/catalogue/items/gas_links")  # confidential, owned by gas
    expected = {"anonymous": 404, "forged token": 401, "unknown key": 401, "water": 404}
    assert {who: answers[who].status_code for who in expected} == expected
    assert answers["gas"].status_code == 200 and answers["gas"].json()["id"] == "gas_links"
    listed = _ask(fam, "/catalogue/items", params={"q": "gas"})
    assert "gas_links" not in listed["water"].text and "gas_links" in listed["gas"].text
    usage = _ask(fam, "/catalogue/usage")
    assert usage["anonymous"].status_code == 401 and usage["forged token"].status_code == 401
    assert usage["water"].status_code == 200


def test_search(fam):
    answers = _ask(fam, "/search", params={"q": "ws:J00000"})
    for who in ("forged token", "unknown key"):
        assert answers[who].status_code == 401 and "ws:" not in answers[who].text
    for who in ("anonymous", "gas", "gas token"):
        assert answers[who].status_code == 200 and "ws:" not in answers[who].text
    found = answers["water"].json()["features"]
    assert answers["water"].status_code == 200 and found
    assert all(f["id"].startswith("ws:J00000") for f in found)

"""The SensorThings API read side over the live virtual city (8,783 devices, their datastreams,
two hours of readings): entity shapes and links, every query option, filters checked against
the store's frames in pandas, paging, counts, expansion, geometry, errors and access."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time

import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely

from citytwin.model import NETWORK_TYPES
from citytwin.sensing.entities import ENTITY_SETS
from citytwin.services.access import Principal, who_asks
from citytwin.store.base import Query, StreamQuery
from tests.conftest import LIVE_START

V = "/v1.1"
ADMIN = Principal(user="root", department="planning", roles=frozenset({"admin"}))


def get(api, path: str, status: int = 200, **params) -> dict:
    r = api.get(path if path.startswith("http") else V + path, params=params or None)
    assert r.status_code == status, r.text
    return r.json()


def all_pages(api, path: str, **params) -> tuple[list[dict], int]:
    """Every entity of a collection, following @iot.nextLink; (entities, pages)."""
    doc = get(api, path, **params)
    out, pages = list(doc["value"]), 1
    while "@iot.nextLink" in doc:
        doc = get(api, doc["@iot.nextLink"])
        out += doc["value"]
        pages += 1
    return out, pages


@pytest.fixture
def as_admin(api):
    api.app.dependency_overrides[who_asks] = lambda: ADMIN
    yield api
    api.app.dependency_overrides.clear()


def test_service_root_lists_the_entity_sets_and_conformance(api):
    doc = get(api, "")
    assert [v["name"] for v in doc["value"]] == list(ENTITY_SETS)
    assert all(v["url"] == f"http://testserver{V}/{v['name']}" for v in doc["value"])
    conformance = doc["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel" in conformance
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data" in conformance


@pytest.mark.parametrize("entity_set", list(ENTITY_SETS))
def test_entities_have_ids_self_links_properties_and_navigation_links(as_admin, entity_set):
    es = ENTITY_SETS[entity_set]
    doc = get(as_admin, f"/{entity_set}", **{"$top": "3"})
    assert len(doc["value"]) == 3 and "@iot.nextLink" in doc
    for entity in doc["value"]:
        for prop in es.properties:
            if prop != "resultQuality":  # only where a reading has one
                assert prop in entity, (entity_set, prop)
        for nav in es.navigation:
            assert entity[f"{nav}@iot.navigationLink"] == f"{entity['@iot.selfLink']}/{nav}"
        assert entity["@iot.selfLink"].endswith(f"{entity_set}('{entity['@iot.id']}')")
        # the self link answers the same entity; every navigation link answers
        assert get(as_admin, entity["@iot.selfLink"]) == entity
        for nav, spec in es.navigation.items():
            linked = get(as_admin, entity[f"{nav}@iot.navigationLink"])
            assert ("value" in linked) == spec.many
            if not spec.many:
                assert linked["@iot.selfLink"].startswith(f"http://testserver{V}/{spec.target}(")


def test_property_values_follow_the_model(as_admin, service_ctx):
    store = service_ctx.store
    ds = store.datastreams()
    one = ds[ds["observed_property"] == "pressure"].iloc[0]
    d = get(as_admin, f"/Datastreams('{one['datastream_id']}')")
    assert d["unitOfMeasurement"] == {
        "name": one["unit_name"],
        "symbol": one["unit"],
        "definition": one["unit_definition"],
    }
    assert d["observationType"].endswith("/OGC-OM/2.0/OM_Measurement")
    lon, lat = pyproj.Transformer.from_crs(store.meta.crs, 4326, always_xy=True).transform(
        one["x"], one["y"]
    )
    assert d["observedArea"]["coordinates"] == pytest.approx([lon, lat], abs=1e-7)
    thing = get(as_admin, f"/Datastreams('{one['datastream_id']}')/Thing")
    device = store.get("devices", one["thing_id"])
    assert thing["@iot.id"] == device.id
    assert thing["properties"]["class"] == device.cls == "pressure_sensor"
    location = get(as_admin, f"/Things('{device.id}')/Locations")["value"][0]
    assert location["encodingType"] == "application/geo+json"
    assert location["location"]["coordinates"] == pytest.approx([lon, lat], abs=1e-7)
    sensor = get(as_admin, f"/Datastreams('{one['datastream_id']}')/Sensor")
    assert (
        sensor["@iot.id"] == one["sensor_id"] and sensor["metadata"] == device.attributes["model"]
    )
    prop = get(as_admin, f"/Datastreams('{one['datastream_id']}')/ObservedProperty")
    assert prop["name"] == "pressure" and prop["definition"] == one["property_definition"]
    foi = get(as_admin, f"/Datastreams('{one['datastream_id']}')/Observations?$top=1")["value"][0]
    feature = get(as_admin, foi["FeatureOfInterest@iot.navigationLink"])
    assert feature["@iot.id"] == one["asset_id"]
    assert feature["description"].startswith("utility_nodes")
    # a property, its raw value, and an id given as a bare number
    assert get(as_admin, f"/Things('{device.id}')/properties") == {
        "properties": thing["properties"]
    }
    r = as_admin.get(f"{V}/Datastreams('{one['datastream_id']}')/unitOfMeasurement/$value")
    assert r.status_code == 200 and r.json()["symbol"] == one["unit"]
    r = as_admin.get(f"{V}/Things('{device.id}')/name/$value")
    assert r.status_code == 200 and r.text == thing["name"]
    assert "no Thing" in get(as_admin, "/Things(42)", 404)["error"]


def test_counts_agree_with_the_store(as_admin, service_ctx):
    store = service_ctx.store
    ds = store.datastreams()
    obs = store.observations(StreamQuery())
    expected = {
        "Things": store.count(Query("devices")),
        "Locations": store.count(Query("devices")),
        "HistoricalLocations": store.count(Query("devices")),
        "Datastreams": len(ds),
        "Sensors": ds["sensor_id"].nunique(),
        "ObservedProperties": ds["observed_property"].nunique(),
        "Observations": len(obs),
        "FeaturesOfInterest": ds["asset_id"].fillna(ds["thing_id"]).nunique(),
    }
    for entity_set, n in expected.items():
        assert get(as_admin, f"/{entity_set}", **{"$count": "true", "$top": "0"})["@iot.count"] == n
    assert len(obs) > 100_000


def test_paging_with_next_links_returns_the_whole_set_once(as_admin, service_ctx):
    ids = set(service_ctx.store.datastreams()["datastream_id"])
    got, pages = all_pages(as_admin, "/Datastreams", **{"$top": "1000", "$select": "id"})
    assert pages == -(-len(ids) // 1000)
    assert [set(e) for e in got[:1]] == [{"@iot.id"}]
    assert len(got) == len(ids) and {e["@iot.id"] for e in got} == ids
    # an ordered, filtered page sequence matches the same query in one page
    q = {"$filter": "Datastream/ObservedProperty/name eq 'depth_below_cover'",
         "$orderby": "result desc"}  # fmt: skip
    paged, _ = all_pages(as_admin, "/Observations", **q, **{"$top": "700"})
    whole = get(as_admin, "/Observations", **q, **{"$top": "10000", "$count": "true"})
    assert whole["@iot.count"] == len(paged) == len(whole["value"]) > 700
    assert [e["@iot.id"] for e in paged] == [e["@iot.id"] for e in whole["value"]]


def test_top_defaults_to_100_and_is_capped(as_admin):
    assert len(get(as_admin, "/Things")["value"]) == 100
    doc = get(as_admin, "/Observations", **{"$top": "50000", "$select": "result"})
    assert len(doc["value"]) == 10_000 and "$top=10000&$skip=10000" in doc["@iot.nextLink"]
    doc = get(as_admin, "/Things", **{"$skip": "8780", "$count": "true"})
    assert len(doc["value"]) == 3 and "@iot.nextLink" not in doc and doc["@iot.count"] == 8783


def _obs(service_ctx) -> pd.DataFrame:
    store = service_ctx.store
    obs = store.observations(StreamQuery())
    ds = store.datastreams().set_index("datastream_id")
    obs["property"] = ds["observed_property"].reindex(obs["datastream_id"]).to_numpy()
    obs["network"] = ds["network"].reindex(obs["datastream_id"]).to_numpy()
    obs["thing"] = ds["thing_id"].reindex(obs["datastream_id"]).to_numpy()
    obs["id"] = [
        f"{d}@{t}" for d, t in zip(obs["datastream_id"], obs["phenomenon_time"].dt.strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"), strict=True)
    ]  # fmt: skip
    return obs


T1 = (LIVE_START + dt.timedelta(minutes=75)).replace(tzinfo=None)
T2 = (LIVE_START + dt.timedelta(minutes=80)).replace(tzinfo=None)
OBSERVATION_FILTERS = [
    (
        "Datastream/ObservedProperty/name eq 'gas_concentration' and result gt 5",
        lambda o: (o["property"] == "gas_concentration") & (o["result"] > 5),
    ),
    (
        f"phenomenonTime ge {T1:%Y-%m-%dT%H:%M:%S}Z and phenomenonTime lt"
        f" {T2:%Y-%m-%dT%H:%M:%S}Z and Datastream/properties/network eq 'water_supply'",
        lambda o: (o["phenomenon_time"] >= T1) & (o["phenomenon_time"] < T2)
        & (o["network"] == "water_supply"),
    ),
    (
        "Datastream/Thing/properties/class eq 'level_sensor' and (result lt 0.3 or result"
        " ge 4) and not (minute(phenomenonTime) mod 10 eq 0)",
        lambda o: o["thing"].str.startswith("dev:lv")
        & ((o["result"] < 0.3) | (o["result"] >= 4))
        & (o["phenomenon_time"].dt.minute % 10 != 0),
    ),
    (
        f"phenomenonTime gt {T2:%Y-%m-%dT%H:%M:%S}Z sub duration'PT5M' and result mul 2 sub 1"
        " gt 1000",
        lambda o: (o["phenomenon_time"] > T2 - dt.timedelta(minutes=5))
        & (o["result"] * 2 - 1 > 1000),
    ),
    (
        "hour(phenomenonTime) eq 23 and startswith(Datastream/@iot.id, 'dev:fm')"
        " and day(phenomenonTime) eq 2",
        lambda o: (o["phenomenon_time"].dt.hour == 23) & o["datastream_id"].str.startswith(
            "dev:fm") & (o["phenomenon_time"].dt.day == 2),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), OBSERVATION_FILTERS)
def test_observation_filters_match_pandas(as_admin, service_ctx, text, expected):
    obs = _obs(service_ctx)
    want = set(obs.loc[expected(obs), "id"])
    assert 0 < len(want) < 10_000
    doc = get(as_admin, "/Observations", **{"$filter": text, "$top": "10000", "$count": "true"})
    assert doc["@iot.count"] == len(want)
    assert {e["@iot.id"] for e in doc["value"]} == want


DATASTREAM_FILTERS = [
    ("ObservedProperty/name eq 'pressure'", lambda d: d["observed_property"] == "pressure"),
    ("properties/network eq 'gas' or properties/network eq null",
     lambda d: (d["network"] == "gas") | d["network"].isna()),
    ("not (properties/network eq 'water_supply')", lambda d: d["network"] != "water_supply"),
    ("properties/network ne 'water_supply'", lambda d: d["network"] != "water_supply"),
    ("unitOfMeasurement/symbol in ('m', 'MPa') and Thing/properties/class ne 'rain_gauge'",
     lambda d: d["unit"].isin(["m", "MPa"])),
    ("substringof('lv:', @iot.id) and endswith(name, 'level')",
     lambda d: d["datastream_id"].str.contains("lv:") & d["name"].str.endswith("level")),
    ("length(properties/zone) ge 9 and tolower(toupper(Sensor/name)) eq 'water meter'"
     " and indexof(properties/zone, 'DMA') eq 3",
     lambda d: (d["zone"].str.len() >= 9) & (d["sensor_id"] == "sensor:water_meter")
     & (d["zone"].str.find("DMA") == 3)),
    ("concat(concat(Thing/@iot.id, ':'), ObservedProperty/name) eq @iot.id"
     " and trim(substring(name, 0, 6)) eq 'dev:gd'",
     lambda d: d["datastream_id"].str.startswith("dev:gd")),
    ("Observations/result gt 20", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), DATASTREAM_FILTERS)
def test_datastream_filters_match_pandas(as_admin, service_ctx, text, expected):
    ds = service_ctx.store.datastreams()
    if expected is None:  # any of the datastream's observations
        obs = service_ctx.store.observations(StreamQuery())
        hits = set(obs.loc[obs["result"] > 20, "datastream_id"])
        mask = ds["datastream_id"].isin(hits)
    else:
        mask = expected(ds)
    want = set(ds.loc[mask, "datastream_id"])
    assert 0 < len(want) < len(ds)
    got, _ = all_pages(as_admin, "/Datastreams", **{"$filter": text, "$top": "5000"})
    assert {e["@iot.id"] for e in got} == want


def test_things_filtered_through_their_datastreams_and_locations(as_admin, service_ctx):
    ds = service_ctx.store.datastreams()
    want = set(ds.loc[ds["observed_property"] == "water_level", "thing_id"])
    got, _ = all_pages(
        as_admin, "/Things", **{"$filter": "Datastreams/ObservedProperty/name eq 'water_level'"}
    )
    assert {e["@iot.id"] for e in got} == want


def test_order_by_several_keys(as_admin, service_ctx):
    ds = service_ctx.store.datastreams()
    doc = get(as_admin, "/Datastreams", **{"$orderby": "properties/zone desc, name",
                                           "$top": "10000", "$select": "id"})  # fmt: skip
    want = ds.assign(name=ds["name"].fillna(ds["datastream_id"])).sort_values(
        ["zone", "name"], ascending=[False, True], na_position="last"
    )
    assert [e["@iot.id"] for e in doc["value"]] == want["datastream_id"].tolist()
    one = ds.loc[ds["observed_property"] == "flow", "datastream_id"].iloc[0]
    got, _ = all_pages(as_admin, f"/Datastreams('{one}')/Observations",
                       **{"$orderby": "result desc,phenomenonTime", "$top": "5000"})  # fmt: skip
    obs = service_ctx.store.observations([one]).sort_values(
        ["result", "phenomenon_time"], ascending=[False, True], kind="stable"
    )
    assert [e["result"] for e in got] == obs["result"].tolist()
    times = [e["phenomenonTime"] for e in got]
    assert times == obs["phenomenon_time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").tolist()


def test_select_keeps_only_what_is_named(as_admin):
    doc = get(as_admin, "/Things", **{"$select": "id,name,Datastreams", "$top": "2"})
    for e in doc["value"]:
        assert set(e) == {"@iot.id", "name", "Datastreams@iot.navigationLink"}


def test_latest_per_thing_from_nested_expand(as_admin, service_ctx, monkeypatch):
    store = service_ctx.store
    calls = []
    real = store.sta_entities
    monkeypatch.setattr(store, "sta_entities", lambda r: calls.append(r) or real(r))
    expand = "Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"
    doc = get(as_admin, "/Things", **{"$filter": "startswith(@iot.id, 'dev:lv')",
                                      "$expand": expand, "$top": "200"})  # fmt: skip
    assert len(calls) == 3  # one query per level for the whole page
    latest = store.latest(StreamQuery(things=[e["@iot.id"] for e in doc["value"]]))
    want = {
        r.datastream_id: (r.phenomenon_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), r.result)
        for r in latest.itertuples()
    }
    got = {}
    for thing in doc["value"]:
        for d in thing["Datastreams"]:
            assert len(d["Observations"]) <= 1
            for o in d["Observations"]:
                got[d["@iot.id"]] = (o["phenomenonTime"], o["result"])
    assert got == want and len(got) > 50


def test_expand_pages_and_counts_per_parent(as_admin, service_ctx):
    ds = service_ctx.store.datastreams()
    obs = service_ctx.store.observations(StreamQuery())
    obs = obs[obs["result"] >= 0]
    n = obs.groupby("datastream_id").size()
    expand = "Observations($top=3;$skip=1;$count=true;$filter=result ge 0;$select=result)"
    doc = get(as_admin, "/Datastreams", **{"$filter": "ObservedProperty/name eq 'flow'",
                                           "$expand": expand})  # fmt: skip
    assert {e["@iot.id"] for e in doc["value"]} == set(
        ds.loc[ds["observed_property"] == "flow", "datastream_id"]
    )
    for d in doc["value"]:
        assert d["Observations@iot.count"] == n[d["@iot.id"]]
        first = obs[obs["datastream_id"] == d["@iot.id"]].sort_values("phenomenon_time")
        assert [o["result"] for o in d["Observations"]] == first["result"].iloc[1:4].tolist()
        nxt = d["Observations@iot.nextLink"]
        assert nxt.startswith(f"http://testserver{V}/Datastreams('{d['@iot.id']}')/Observations?")
        page = get(as_admin, nxt)
        assert [o["result"] for o in page["value"]] == first["result"].iloc[4:7].tolist()
    # to-one expansion and an expansion of a single entity
    one = ds["datastream_id"].iloc[0]
    e = get(as_admin, f"/Datastreams('{one}')", **{"$expand": "Thing/Locations,Sensor"})
    assert e["Thing"]["@iot.id"] == ds["thing_id"].iloc[0]
    assert e["Thing"]["Locations"][0]["@iot.id"] == ds["thing_id"].iloc[0]
    assert e["Sensor"]["@iot.id"] == ds["sensor_id"].iloc[0]


def test_geo_filters_on_locations_and_things(as_admin, service_ctx):
    store = service_ctx.store
    devices = store.query(Query("devices"))
    to_wgs84 = pyproj.Transformer.from_crs(store.meta.crs, 4326, always_xy=True)
    lon, lat = to_wgs84.transform(devices.geometry.x.to_numpy(), devices.geometry.y.to_numpy())
    c = np.array([np.median(lon), np.median(lat)])
    box = shapely.box(c[0] - 0.003, c[1] - 0.002, c[0] + 0.004, c[1] + 0.003)
    inside = shapely.contains_xy(box, lon, lat)
    want = set(devices["id"][inside])
    assert 20 < len(want) < len(devices)
    text = f"geo.intersects(location, geography'{box.wkt}')"
    got, _ = all_pages(as_admin, "/Locations", **{"$filter": text, "$top": "5000"})
    assert {e["@iot.id"] for e in got} == want
    got, _ = all_pages(as_admin, "/Things", **{"$filter": f"st_within(Locations/location,"
                                               f" geography'SRID=4326;{box.wkt}')"})  # fmt: skip
    assert {e["@iot.id"] for e in got} == want
    # distances in metres, in the twin's CRS
    x0, y0 = pyproj.Transformer.from_crs(4326, store.meta.crs, always_xy=True).transform(*c)
    d = np.hypot(devices.geometry.x - x0, devices.geometry.y - y0)
    text = f"geo.distance(location, geography'POINT({c[0]} {c[1]})') lt 150"
    got, _ = all_pages(as_admin, "/Locations", **{"$filter": text})
    assert {e["@iot.id"] for e in got} == set(devices["id"][d < 150])
    near = get(as_admin, "/Locations", **{"$filter": text.replace(" lt 150", " ge 150"),
                                          "$count": "true", "$top": "0"})  # fmt: skip
    assert near["@iot.count"] == int((d >= 150).sum())


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/Things", {"$filter": "name eq"}, "$filter: expected a value"),
        ("/Things", {"$filter": "name eq 'x"}, "not closed"),
        ("/Things", {"$filter": "nope eq 1"}, "Thing has no property 'nope'"),
        ("/Things", {"$filter": "name"}, "is not a condition"),
        ("/Things", {"$filter": "name gt 3 add"}, "position"),
        ("/Observations", {"$filter": "result eq 'high'"}, "can't compare"),
        ("/Observations", {"$filter": "year(result) eq 2025"}, "year() needs a time"),
        ("/Observations", {"$filter": "phenomenonTime gt 'soon'"}, "is not a time"),
        ("/Observations", {"$filter": "Datastream eq 1"}, "names an entity"),
        ("/Things", {"$filter": "Datastreams/name eq 1 or frob(name) eq 2"}, "unknown function"),
        ("/Locations", {"$filter": "geo.intersects(location, geography'POINT(1')"}, "not WKT"),
        ("/Locations", {"$filter": "geo.intersects(name, geography'POINT(1 2)')"},
         "not a geometry"),
        ("/Things", {"$top": "-1"}, "$top='-1': expected a whole number"),
        ("/Things", {"$top": "ten"}, "$top"),
        ("/Things", {"$skip": "1.5"}, "$skip"),
        ("/Things", {"$count": "maybe"}, "$count"),
        ("/Things", {"$orderby": "name sideways"}, "$orderby"),
        ("/Things", {"$orderby": "Locations/location"}, "leads to many"),
        ("/Things", {"$select": "name,nope"}, "no property 'nope'"),
        ("/Things", {"$expand": "Nope"}, "no navigation property 'Nope'"),
        ("/Things", {"$expand": "Datastreams($top=x)"}, "$expand=Datastreams($top)"),
        ("/Things", {"$expand": "Datastreams($filter=nope eq 1)"}, "Datastream has no property"),
        ("/Things", {"$expand": "Datastreams(($top=1)"}, "not closed"),
        ("/Things", {"$frobnicate": "1"}, "unknown query option $frobnicate"),
        ("/Things", {"$filter": "(" * 3000 + "name eq 'a'" + ")" * 3000}, "nested too deeply"),
        ("/Things", {"$filter": "phenomenonTime eq 2025-01-01T00:00:00Z/2025-01-02T00:00:00Z"},
         "intervals"),
    ],
)  # fmt: skip
def test_malformed_options_are_400_with_where_and_what(as_admin, path, params, message):
    doc = get(as_admin, path, 400, **params)
    assert message in doc["error"], doc


@pytest.mark.parametrize(
    "path",
    ["/Nope", "/Things('x')/Nope", "/Things/Datastreams", "/Things('dev:fm:000001')/name/more",
     "/Observations('no-at-sign')", "/Datastreams('dev:fm:000001:flow')/Thing('x')",
     "/Things(')"],
)  # fmt: skip
def test_bad_paths_are_404_or_400_never_500(as_admin, path):
    r = as_admin.get(V + path)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"]


def _readable(service_ctx, who: Principal) -> set[str | None]:
    ctx = service_ctx
    out: set[str | None] = set()
    devices = ctx.access.can_read(who, ctx.catalogue.collections["devices"])
    for n in NETWORK_TYPES:
        coll = ctx.catalogue.collections.get(f"{n}_nodes")
        if ctx.access.can_read(who, coll) if coll is not None else devices:
            out.add(n)
    if devices:
        out.add(None)
    return out


@pytest.mark.parametrize(
    "who",
    [Principal(), Principal(user="li", department="gas"),
     Principal(user="wu", department="drainage")],
)  # fmt: skip
def test_access_by_network_filters_inside_the_query(api, service_ctx, who):
    store = service_ctx.store
    api.app.dependency_overrides[who_asks] = lambda: who
    readable = _readable(service_ctx, who)
    assert readable != set(NETWORK_TYPES) | {None}  # something is hidden from each of them
    ds = store.datastreams()
    visible = ds["network"].map(lambda n: (None if n is None or n != n else n) in readable)
    got, _ = all_pages(api, "/Datastreams", **{"$select": "id", "$top": "3000"})
    assert {e["@iot.id"] for e in got} == set(ds.loc[visible, "datastream_id"])
    n = get(api, "/Datastreams", **{"$count": "true", "$top": "1"})["@iot.count"]
    assert n == int(visible.sum())
    devices = store.query(Query("devices"))
    seen = devices["network"].map(lambda n: (None if n is None or n != n else n) in readable)
    assert get(api, "/Things", **{"$count": "true", "$top": "0"})["@iot.count"] == seen.sum()
    obs = store.observations(StreamQuery())
    want = int(obs["datastream_id"].isin(set(ds.loc[visible, "datastream_id"])).sum())
    assert get(api, "/Observations", **{"$count": "true", "$top": "0"})["@iot.count"] == want
    hidden = ds.loc[~visible].iloc[0]
    assert get(api, f"/Datastreams('{hidden['datastream_id']}')", 404)
    assert get(api, f"/Things('{hidden['thing_id']}')/Datastreams", 404)
    sensors = {e["@iot.id"] for e in get(api, "/Sensors")["value"]}
    assert sensors == set(ds.loc[visible, "sensor_id"])
    # expansion never reaches past the principal's networks either
    doc = get(api, "/Sensors", **{"$expand": "Datastreams($select=properties)"})
    nets = {d["properties"].get("network") for s in doc["value"] for d in s["Datastreams"]}
    assert nets <= readable
    api.app.dependency_overrides.clear()


def test_the_frost_python_client_reads_through_a_real_server(service_ctx):
    import frost_sta_client as fsc
    import uvicorn

    from citytwin.services.api import create_app

    app = create_app(service_ctx)
    app.dependency_overrides[who_asks] = lambda: ADMIN
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        service = fsc.SensorThingsService(f"http://127.0.0.1:{port}/v1.1")
        things = service.things().query().filter("startswith(@iot.id, 'dev:lv')").top(40).list()
        ids = [t.id for t in things]  # iterating follows @iot.nextLink
        devices = service_ctx.store.query(Query("devices"))
        assert sorted(ids) == sorted(devices["id"][devices["id"].str.startswith("dev:lv")])
        thing = service.things().find(ids[0])
        assert thing.name and thing.properties["class"] == "level_sensor"
        datastreams = service.datastreams().query().filter(f"Thing/@iot.id eq '{ids[0]}'").list()
        ds = next(iter(datastreams))
        observations = list(
            service.observations()
            .query()
            .filter(f"Datastream/@iot.id eq '{ds.id}'")
            .orderby("phenomenonTime", "asc")
            .top(500)
            .list()
        )
        stored = service_ctx.store.observations([ds.id])
        assert [o.result for o in observations] == stored["result"].tolist()
        assert ds.unit_of_measurement.symbol == "m"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

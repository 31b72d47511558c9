"""OGC API – Features over the live virtual city: paging, bbox and output in several CRSs (checked
against pyproj), datetime over the lifecycle after updates, property filters, sorting, CQL2 text
and JSON (spatial too), HTML, queryables, 400s for bad input, grants (hidden rows, districts),
search — and GDAL's OAPIF driver reading the collections from a real server."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import geopandas as gpd
import numpy as np
import pytest
import shapely
import uvicorn
from pyproj import Transformer

from citytwin.model import validate_frame
from citytwin.services.access import Principal, who_asks
from citytwin.services.api import create_app
from citytwin.services.features import CONFORMANCE, CRS84, EPSG_URI
from citytwin.store import Filter, Query

TWIN = EPSG_URI + "4547"  # the live city's CRS: CGCS2000 / 3-degree GK, northing first
WEST = shapely.box(431000, 2552000, 432000, 2554000)  # the west half of the city
WINDOW = (431400.0, 2552400.0, 432000.0, 2553100.0)


def as_principal(api, **who) -> None:
    """Requests of ``api`` come from this principal (as the credentials middleware would set)."""
    api.app.dependency_overrides[who_asks] = lambda: Principal(**who)


def items(api, cid: str, **params) -> dict:
    query = "&".join(f"{k.replace('_', '-')}={quote(str(v))}" for k, v in params.items())
    r = api.get(f"/collections/{cid}/items?{query}")
    assert r.status_code == 200, r.text
    return r.json()


def ids_of(body: dict) -> set[str]:
    return {f["id"] for f in body["features"]}


def current(store, layer: str = "buildings", **q) -> gpd.GeoDataFrame:
    return store.query(Query(layer, **q))


def test_landing_page_and_conformance(api):
    body = api.get("/").json()
    rels = {link["rel"]: link["href"] for link in body["links"]}
    for rel in ("service-desc", "conformance", "data"):
        assert rel in rels
    hrefs = [link["href"] for link in body["links"]]
    for path in (
        "/collections",
        "/tileMatrixSets",
        "/processes",
        "/catalogue",
        "/v1.1",
        "/console/",
    ):
        assert any(h.endswith(path) for h in hrefs), path
    from citytwin.services import processes, tiles

    classes = api.get("/conformance").json()["conformsTo"]
    assert set(CONFORMANCE) <= set(classes)
    for module in (tiles, processes):
        assert set(getattr(module, "CONFORMANCE", ())) <= set(classes)
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in classes
    assert "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions" not in classes


def test_collections_list_what_the_principal_can_read(api, service_ctx):
    anonymous = api.get("/collections").json()
    ids = {c["id"] for c in anonymous["collections"]}
    public = {c.id for c in service_ctx.catalogue if c.sensitivity == "public"}
    assert ids == public and "buildings" in ids
    as_principal(api, user="li", department="planning")
    ids = {c["id"] for c in api.get("/collections").json()["collections"]}
    assert {"water_supply_links", "gas_links", "buildings"} <= ids
    doc = api.get("/collections/buildings").json()
    assert doc["storageCrs"] == TWIN and doc["itemType"] == "feature"
    assert {CRS84, EPSG_URI + "4326", EPSG_URI + "3857", EPSG_URI + "4490", TWIN} <= set(doc["crs"])
    box = doc["extent"]["spatial"]["bbox"][0]
    x0, y0, x1, y1 = service_ctx.store.meta.extent
    lon, _ = Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True).transform(
        [x0, x1, x0, x1], [y0, y0, y1, y1]
    )
    summary = {s.layer: s.extent for s in service_ctx.store.summary()}["buildings"]
    inner = Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True).transform(
        [summary[0], summary[2]], [summary[1], summary[3]]
    )
    assert box[0] <= min(inner[0]) and box[2] >= max(inner[0]) and box[1] <= min(inner[1])
    assert min(lon) - 0.01 < box[0] < box[2] < max(lon) + 0.01 and 22 < box[1] < 24
    assert doc["extent"]["temporal"]["interval"][0][1] is None
    first = current(service_ctx.store, columns=["valid_from"])["valid_from"].min()
    assert doc["extent"]["temporal"]["interval"][0][0] == first.isoformat() + "Z"
    gas = api.get("/collections/gas_links").json()["extent"]["spatial"]["bbox"][0]
    links = current(service_ctx.store, "utility_links", where=[Filter("network", "=", "gas")])
    x0, y0, x1, y1 = links.total_bounds  # the gas network's own extent, not its layer's
    lons, lats = Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True).transform(
        [x0, x1, x0, x1], [y0, y0, y1, y1]
    )
    assert gas[0] == pytest.approx(min(lons), abs=1e-5) and gas[3] == pytest.approx(
        max(lats), abs=1e-5
    )
    rels = {link["rel"] for link in doc["links"]}
    assert {"items", "http://www.opengis.net/def/rel/ogc/1.0/queryables"} <= rels
    assert api.get("/collections/nope").status_code == 404
    api.app.dependency_overrides.clear()
    assert api.get("/collections/gas_links").status_code == 401


def test_paging_walks_every_feature_once(api, service_ctx):
    want = set(current(service_ctx.store, columns=[])["id"])
    url, seen = "/collections/buildings/items?limit=97", []
    while url:
        body = api.get(url).json()
        assert body["numberMatched"] == len(want)
        assert body["numberReturned"] == len(body["features"]) <= 97
        seen += [f["id"] for f in body["features"]]
        url = next((link["href"] for link in body["links"] if link["rel"] == "next"), None)
    assert len(seen) == len(set(seen)) and set(seen) == want
    body = items(api, "buildings", limit=10, offset=25)
    prev = next(link["href"] for link in body["links"] if link["rel"] == "prev")
    assert "offset=15" in prev and [f["id"] for f in body["features"]] == seen[25:35]
    body = items(api, "buildings", limit=50_000, offset=20_000)  # over the maximum: clamped
    assert body["numberReturned"] == 0 and body["numberMatched"] == len(want)
    prev = next(link["href"] for link in body["links"] if link["rel"] == "prev")
    assert "limit=10000" in prev and "offset=10000" in prev
    assert items(api, "buildings")["numberReturned"] == 10  # the default limit


def test_bbox_in_the_twin_crs_and_in_crs84(api, service_ctx):
    truth = current(service_ctx.store)
    x0, y0, x1, y1 = WINDOW
    want = set(truth[truth.intersects(shapely.box(*WINDOW))]["id"])
    assert 10 < len(want) < len(truth)
    # EPSG:4547 is northing first: the bbox is given as (y, x) pairs
    got = items(api, "buildings", limit=1000, bbox=f"{y0},{x0},{y1},{x1}", bbox_crs=TWIN)
    assert ids_of(got) == want and got["numberMatched"] == len(want)

    lon0, lat0, lon1, lat1 = 113.3320, 23.0700, 113.3380, 23.0760
    wgs = truth.to_crs("OGC:CRS84")
    box84 = shapely.box(lon0, lat0, lon1, lat1)
    want84 = set(wgs[wgs.intersects(box84)]["id"])
    edge = set(wgs[wgs.distance(box84.boundary) < 1e-6]["id"])  # within ~10 cm of the edge
    got84 = ids_of(items(api, "buildings", limit=1000, bbox=f"{lon0},{lat0},{lon1},{lat1}"))
    assert len(want84) > 5 and got84 ^ want84 <= edge
    latlon = items(
        api,
        "buildings",
        limit=1000,
        bbox=f"{lat0},{lon0},{lat1},{lon1}",
        bbox_crs=EPSG_URI + "4326",
    )
    assert ids_of(latlon) == got84
    six = items(api, "buildings", limit=1000, bbox=f"{lon0},{lat0},-10,{lon1},{lat1},500")
    assert ids_of(six) == got84


def test_crs_of_the_output_checked_against_pyproj(api, service_ctx):
    fid = "bldg-0000100"
    stored = shapely.get_coordinates(current(service_ctx.store, ids=[fid]).geometry.iloc[0])

    def coords(crs: str | None) -> tuple[np.ndarray, str]:
        params = f"?crs={quote(crs)}" if crs else ""
        r = api.get(f"/collections/buildings/items/{fid}{params}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
        return np.array(r.json()["geometry"]["coordinates"][0]), r.headers["content-crs"]

    to84 = Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True)
    lon, lat = to84.transform(stored[:, 0], stored[:, 1])
    got, header = coords(None)
    assert header == f"<{CRS84}>" and np.allclose(got, np.column_stack([lon, lat]), atol=1e-7)
    got, header = coords(EPSG_URI + "4326")  # latitude first
    assert header == f"<{EPSG_URI}4326>" and np.allclose(
        got, np.column_stack([lat, lon]), atol=1e-7
    )
    x, y = Transformer.from_crs("EPSG:4547", "EPSG:3857", always_xy=True).transform(
        stored[:, 0], stored[:, 1]
    )
    got, _ = coords(EPSG_URI + "3857")
    assert np.allclose(got, np.column_stack([x, y]), atol=2e-3)
    lon2, lat2 = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True).transform(
        stored[:, 0], stored[:, 1]
    )
    got, _ = coords("[EPSG:4490]")
    assert np.allclose(got, np.column_stack([lat2, lon2]), atol=1e-7)
    got, header = coords(TWIN)  # the twin's own CRS, in its axis order: northing, easting
    assert header == f"<{TWIN}>" and np.allclose(got, stored[:, ::-1], atol=1e-3)
    page = items(api, "buildings", limit=5, crs=EPSG_URI + "3857")
    assert all(abs(f["geometry"]["coordinates"][0][0][0]) > 1e6 for f in page["features"])


def test_datetime_as_of_and_intervals_after_an_update_and_a_retirement(api, service_ctx):
    store = service_ctx.store
    changed, gone = "bldg-0000010", "bldg-0000011"
    before = current(store, ids=[changed])
    old_height = float(before["height"].iloc[0])
    after = before.copy()
    after["height"] = old_height + 10
    store.update("buildings", after, at=dt.datetime(2024, 6, 1))
    store.retire("buildings", [gone], at=dt.datetime(2024, 9, 1))

    def state(**params) -> dict[str, dict]:
        body = items(api, "buildings", filter=f"id IN ('{changed}', '{gone}')", **params)
        return {f["id"]: f["properties"] for f in body["features"]}

    now = state()
    assert set(now) == {changed} and now[changed]["height"] == old_height + 10
    then = state(datetime="2022-01-01T00:00:00Z")
    assert set(then) == {changed, gone} and then[changed]["height"] == old_height
    assert then[changed]["valid_to"] == "2024-06-01T00:00:00Z"
    summer = state(datetime="2024-08-01T00:00:00+08:00")
    assert set(summer) == {changed, gone} and summer[changed]["height"] == old_height + 10
    year = state(datetime="2024-01-01T00:00:00Z/2024-12-31T00:00:00Z")
    assert set(year) == {changed, gone} and year[changed]["height"] == old_height + 10
    early = state(datetime="2021-01-01T00:00:00Z/2022-01-01T00:00:00Z")
    assert early[changed]["height"] == old_height
    assert set(state(datetime="2024-10-01T00:00:00Z/..")) == {changed}
    assert state(datetime="../2024-07-01T00:00:00Z")[changed]["height"] == old_height + 10
    assert set(state(datetime="2019-01-01T00:00:00Z")) == set()  # before the city was built
    n = len(current(store))
    assert items(api, "buildings", datetime="2022-01-01T00:00:00Z")["numberMatched"] == n + 1


def test_property_filters_and_sorting(api, service_ctx):
    store = service_ctx.store
    body = items(api, "buildings", use="office", limit=1000, properties="use,height")
    assert body["features"] and all(
        f["properties"] == {"use": "office", "height": f["properties"]["height"]}
        for f in body["features"]
    )
    assert body["numberMatched"] == store.count(
        Query("buildings", where=[Filter("use", "=", "office")])
    )
    both = items(api, "buildings", use="residential", floors=20, limit=1000)
    truth = current(store)
    assert ids_of(both) == set(truth[(truth.use == "residential") & (truth.floors == 20)]["id"])

    body = items(api, "buildings", sortby="-height,+id", limit=50, properties="height")
    got = [(f["properties"]["height"], f["id"]) for f in body["features"]]
    expected = truth.sort_values(["height", "id"], ascending=[False, True]).head(50)
    assert got == list(zip(expected["height"], expected["id"], strict=True))
    body = items(api, "buildings", sortby="floors,-id", limit=20, properties="floors")
    floors = [f["properties"]["floors"] for f in body["features"]]
    assert floors == sorted(floors) and floors[0] == truth.floors.min()


def test_cql2_text_and_json_filters_with_spatial(api, service_ctx):
    truth = current(service_ctx.store)
    tri = shapely.Polygon([(431300, 2552300), (432600, 2552500), (431900, 2553600)])
    want = set(truth[truth.intersects(tri) & (truth.height > 30)]["id"])
    assert 5 < len(want) < len(truth)
    northing_first = shapely.transform(tri, lambda xy: xy[:, ::-1])
    text = f"height > 30 AND S_INTERSECTS(geometry, {northing_first.wkt})"
    got = items(api, "buildings", limit=1000, filter=text, filter_crs=TWIN)
    assert ids_of(got) == want and got["numberMatched"] == len(want)
    doc = {
        "op": "and",
        "args": [
            {"op": ">", "args": [{"property": "height"}, 30]},
            {
                "op": "s_intersects",
                "args": [{"property": "geometry"}, shapely.geometry.mapping(northing_first)],
            },
        ],
    }
    got = items(
        api,
        "buildings",
        limit=1000,
        filter=json.dumps(doc),
        filter_lang="cql2-json",
        filter_crs=TWIN,
    )
    assert ids_of(got) == want

    tri84 = shapely.transform(
        tri,
        lambda xy: np.column_stack(
            Transformer.from_crs("EPSG:4547", "OGC:CRS84", always_xy=True).transform(
                xy[:, 0], xy[:, 1]
            )
        ),
    )
    wgs = truth.to_crs("OGC:CRS84")
    want84 = set(wgs[wgs.within(tri84)]["id"])
    edge = set(wgs[wgs.distance(tri84.boundary) < 1e-6]["id"])
    got84 = ids_of(items(api, "buildings", limit=1000, filter=f"S_WITHIN(geometry, {tri84.wkt})"))
    assert len(want84) > 5 and got84 ^ want84 <= edge

    r = items(
        api,
        "buildings",
        limit=1000,
        filter="CASEI(use) IN ('office', 'school') AND floors BETWEEN 3 AND 9",
    )
    mask = truth.use.str.lower().isin(["office", "school"]) & truth.floors.between(3, 9)
    assert ids_of(r) == set(truth[mask]["id"])


def test_html_pages(api):
    r = api.get("/collections/buildings/items?f=html&limit=3")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<table>" in r.text and "bldg-" in r.text and "<script" not in r.text
    r = api.get("/collections/buildings/items", headers={"Accept": "text/html,*/*;q=0.8"})
    assert r.headers["content-type"].startswith("text/html")
    for path in (
        "/",
        "/collections",
        "/collections/buildings",
        "/conformance",
        "/collections/buildings/queryables",
        "/collections/buildings/items/bldg-0000001",
    ):
        r = api.get(path + "?f=html")
        assert r.status_code == 200 and r.text.startswith("<!DOCTYPE html>"), path
    assert "建筑" in api.get("/collections?f=html").text
    assert api.get("/collections/buildings/items?f=json").headers["content-type"] == (
        "application/geo+json"
    )


def test_queryables_come_from_the_model(api):
    r = api.get("/collections/buildings/queryables")
    assert r.headers["content-type"] == "application/schema+json"
    props = r.json()["properties"]
    assert props["height"]["type"] == "number" and props["height"]["x-ogc-unit"] == "m"
    assert props["floors"]["type"] == "integer" and props["use"]["type"] == "string"
    assert props["height_estimated"]["type"] == "boolean"
    assert props["geometry"]["format"] == "geometry-polygon-or-multipolygon"
    assert props["valid_from"]["format"] == "date-time"
    assert r.json()["additionalProperties"] is False
    as_principal(api, user="wang", department="water")
    props = api.get("/collections/water_supply_links/queryables").json()["properties"]
    assert "diameter" in props and "network" in props and "height" not in props


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("bbox=1,2,3", "bbox"),
        ("bbox=3,2,1,4", "bbox"),
        ("bbox=a,b,c,d", "bbox"),
        ("bbox=1,2,3,4&bbox-crs=EPSG:9999", "bbox-crs"),
        ("crs=http://www.opengis.net/def/crs/EPSG/0/2000", "crs"),
        ("crs=nonsense", "crs"),
        ("datetime=yesterday", "datetime"),
        ("datetime=2024-02-01T00:00:00Z/2024-01-01T00:00:00Z", "ends before"),
        ("datetime=..", "interval"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=99999999999999999999", "offset"),
        ("filter=height >", "can't read"),
        ("filter=colour = 'red'", "colour"),
        ("filter=height > 'tall'", "different types"),
        ("filter=S_INTERSECTS(geometry, POINT(1 2 3 4 5))", "can't read"),
        ("filter=height > 1&filter-lang=sql", "filter-lang"),
        ('filter={"op": "="&filter-lang=cql2-json', "can't read"),
        ("filter=height > 1&filter-crs=EPSG:1", "filter-crs"),
        ("sortby=-colour", "sort"),
        ("sortby=geometry", "sort"),
        ("properties=height,colour", "colour"),
        ("floors=many", "floors"),
        ("height_estimated=perhaps", "height_estimated"),
        ("colour=red", "unknown query parameter"),
        ("f=xml", "format"),
    ],
)
def test_bad_parameters_are_400_with_a_hint(api, query, message):
    r = api.get(f"/collections/buildings/items?{query}")
    assert r.status_code == 400, (query, r.status_code, r.text)
    assert message in r.text


def test_unknown_feature_and_collection_are_404(api):
    assert api.get("/collections/buildings/items/nope").status_code == 404
    assert api.get("/collections/nope/items").status_code == 404
    assert api.get("/collections/streets/items/bldg-0000001").status_code == 404


def test_hidden_rows_are_left_out_for_other_departments(api, service_ctx):
    store = service_ctx.store
    gas = current(store, "utility_links", where=[Filter("network", "=", "gas")])
    high = gas.iloc[:5].copy()
    high["pressure_class"] = "high"
    store.update("utility_links", high, at=dt.datetime(2025, 1, 1))
    hidden = set(high["id"])

    as_principal(api, user="li", department="planning")
    body = items(api, "gas_links", limit=10_000, properties="pressure_class")
    assert not ids_of(body) & hidden and body["numberMatched"] == len(gas) - 5
    assert items(api, "gas_links", filter="pressure_class = 'high'")["numberMatched"] == 0
    assert api.get(f"/collections/gas_links/items/{high['id'].iloc[0]}").status_code == 404
    found = api.get("/search?q=" + high["id"].iloc[0]).json()["features"]
    assert not {f["id"] for f in found} & hidden

    as_principal(api, user="zhao", department="gas")
    body = items(api, "gas_links", limit=10_000, filter="pressure_class = 'high'")
    assert ids_of(body) == hidden
    assert items(api, "gas_links", limit=1)["numberMatched"] == len(gas)


def test_a_district_grant_narrows_to_its_district(api, service_ctx):
    store = service_ctx.store
    zone = gpd.GeoDataFrame(
        {"id": ["district-west"], "class": ["district"], "name": ["West"]},
        geometry=[WEST],
        crs="EPSG:4547",
    )
    store.insert("zones", validate_frame("zones", zone, source="test"))
    truth = current(store)
    west = set(truth[truth.intersects(WEST)]["id"])
    assert 10 < len(west) < len(truth)

    as_principal(api, user="chen", department="housing", district="district-west")
    body = items(api, "buildings", limit=10_000)
    assert ids_of(body) == west and body["numberMatched"] == len(west)
    x0, y0, x1, y1 = WINDOW  # a bbox and the district together: both apply
    both = items(api, "buildings", limit=1000, bbox=f"{y0},{x0},{y1},{x1}", bbox_crs=TWIN)
    assert ids_of(both) == west & set(truth[truth.intersects(shapely.box(*WINDOW))]["id"])
    east = sorted(set(truth["id"]) - west)[0]
    assert api.get(f"/collections/buildings/items/{east}").status_code == 404
    assert items(api, "streets")["numberMatched"] == len(current(store, "streets"))  # not scoped

    as_principal(
        api,
        user="root",
        department="planning",
        roles=frozenset({"admin"}),
        district="district-west",
    )
    assert items(api, "buildings", limit=1)["numberMatched"] == len(truth)


def test_search_by_id_or_name_across_readable_collections(api):
    body = api.get("/search?q=bldg-00001&limit=20").json()
    assert body["type"] == "FeatureCollection" and 0 < len(body["features"]) <= 20
    for f in body["features"]:
        assert "bldg-00001" in f["id"] and f["properties"]["collection"] == "buildings"
    named = api.get("/search?q=school&limit=50").json()["features"]
    assert named and all("school" in (f["properties"]["name"] or f["id"]).lower() for f in named)
    assert all(
        f["properties"]["collection"]
        in {"buildings", "streets", "water_bodies", "zones", "facilities", "devices"}
        for f in named
    )
    assert api.get("/search?q=ws:J00000").json()["features"] == []  # restricted: not for anyone
    as_principal(api, user="wang", department="water")
    water = api.get("/search?q=ws:J00000&limit=5").json()["features"]
    assert len(water) == 5
    assert {f["properties"]["collection"] for f in water} == {"water_supply_nodes"}
    assert api.get("/search?q=").status_code == 400
    assert api.get("/search?q=a&limit=1000").status_code == 400


def test_gdal_oapif_reads_the_collections(service_ctx):
    """GDAL's OAPIF driver (pyogrio's bundled GDAL) lists and reads collections from a real
    server. The client runs in a subprocess: pyogrio holds the GIL while GDAL fetches, so a
    server thread of the same process could not answer."""
    app = create_app(service_ctx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        client = (
            "import json, sys, pyogrio\n"
            "url = sys.argv[1]\n"
            "layers = pyogrio.list_layers(url).tolist()\n"
            "df = pyogrio.read_dataframe(url, layer='buildings')\n"
            "box = tuple(map(float, sys.argv[2:]))\n"
            "part = pyogrio.read_dataframe(url, layer='streets', bbox=box)\n"
            "print(json.dumps({'layers': layers, 'crs': df.crs.to_epsg(), 'ids': df['id'].tolist(),"
            " 'wkt': df.geometry.to_wkt().tolist(), 'height': df['height'].tolist(),"
            " 'streets': part['id'].tolist()}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", client, f"OAPIF:http://127.0.0.1:{port}", *map(str, WINDOW)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    store = service_ctx.store
    public = {c.id for c in service_ctx.catalogue if c.sensitivity == "public"}
    assert {name for name, _ in got["layers"]} == public
    truth = current(store).set_index("id")
    assert sorted(got["ids"]) == sorted(truth.index) and got["crs"] == 4547
    for fid, wkt, height in list(zip(got["ids"], got["wkt"], got["height"], strict=True))[::50]:
        geom = shapely.from_wkt(wkt)
        assert shapely.equals_exact(geom, truth.geometry[fid], tolerance=1e-3), fid
        assert height == pytest.approx(truth.height[fid])
    streets = current(store, "streets")
    assert set(got["streets"]) == set(streets[streets.intersects(shapely.box(*WINDOW))]["id"])

"""The operations console in a real browser (Debian's Chromium through Playwright) against the
real service over the live virtual city: it loads without errors and without asking anything
outside the service, draws the twin from its tiles, toggles layers, isolates a burst with the
process's valves and buildings highlighted, shows an alarm the moment a reading breaks a rule,
switches the underground view, finds a building by id, and charts a sensor. Also the console's
own JSON endpoints. A screenshot goes to ``test-output/console.png``."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pandas as pd
import pytest
import shapely

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "test-output" / "console.png"


def canvas_point(console, lon: float, lat: float) -> tuple[float, float]:
    """Where a longitude/latitude is on the page (for a mouse click on the map)."""
    return console.eval(
        """([lon, lat]) => {
            const map = window.citytwin.map;
            const p = map.project([lon, lat]);
            const r = map.getCanvas().getBoundingClientRect();
            return [p.x + r.left, p.y + r.top];
        }""",
        [lon, lat],
    )


def look_at(console, lon: float, lat: float, zoom: float, pitch: float = 0) -> None:
    console.eval(
        "([lon, lat, zoom, pitch]) => window.citytwin.map.jumpTo("
        "{center: [lon, lat], zoom, pitch, bearing: 0})",
        [lon, lat, zoom, pitch],
    )
    console.eval("window.citytwin.sensors.load()")  # the devices of the new view, now
    console.idle()


# -- the page ---------------------------------------------------------------------------------
def test_console_loads_without_errors_or_outside_requests(console, console_server):
    assert console.eval("window.citytwin.errors") == []
    assert console.eval("window.citytwin.notes") == []  # every service it uses answered
    assert console.eval("document.body.dataset.ready") == "true"
    assert console.page_errors == []
    assert [m for m in console.console if m[0] == "error"] == []
    assert console.failed == []
    outside = [
        u for u in console.requests
        if not (u.startswith(console_server.base + "/") or u.startswith(("blob:", "data:")))
    ]  # fmt: skip
    assert outside == []
    # the vendored libraries came from the service itself
    assert any(u.endswith("/console/vendor/maplibre-gl/maplibre-gl.js") for u in console.requests)
    assert any(u.endswith("/console/vendor/deck.gl/deck.gl.min.js") for u in console.requests)
    # a virtual twin says so
    assert console.page.is_visible("#virtual-badge")
    assert "Virtual city" in console.page.inner_text("#virtual-badge")
    # the twin is drawn from the combined vector tiles: buildings, streets and every network
    counts = console.eval(
        """() => {
            const map = window.citytwin.map;
            const n = (layer) => map.querySourceFeatures('twin', {sourceLayer: layer}).length;
            return {buildings: n('buildings'), streets: n('streets'),
                    water: n('water_supply_links'), sewer: n('sewer_links'), gas: n('gas_links')};
        }"""
    )
    assert all(v > 0 for v in counts.values()), counts
    # each network in its conventional colour
    colours = console.eval(
        """() => Object.fromEntries(['water_supply', 'sewer', 'storm', 'gas', 'power']
            .map((n) => [n, window.citytwin.map.getPaintProperty(`${n}-links`, 'line-color')]))"""
    )
    assert colours == {
        "water_supply": "#1f6fd1",
        "sewer": "#8b5a2b",
        "storm": "#2e9e44",
        "gas": "#f2c200",
        "power": "#e0231b",
    }
    # the panel holds what the service says is active, and the stream is connected
    with console_server.client() as http:
        active = http.get("/alarms", params={"status": "active"}).json()["value"]
    assert int(console.page.get_attribute("#alarms", "data-alarm-count")) == len(active) > 0
    shown = console.page.eval_on_selector_all(
        "#alarms li[data-alarm-id]", "els => els.map((e) => e.dataset.alarmId)"
    )
    assert sorted(shown) == sorted(a["alarm_id"] for a in active)
    console.page.wait_for_selector("#live[data-state='open']")


def test_layer_toggles_change_the_style(console):
    page = console.page
    visibility = "(id) => window.citytwin.map.getLayoutProperty(id, 'visibility') || 'visible'"
    assert console.eval(visibility, "gas-links") == "visible"
    page.uncheck("#layer-gas")
    assert console.eval(visibility, "gas-links") == "none"
    assert console.eval(visibility, "gas-nodes") == "none"
    assert console.eval(visibility, "water_supply-links") == "visible"
    page.check("#layer-gas")
    assert console.eval(visibility, "gas-links") == "visible"
    page.uncheck("#layer-buildings")
    assert console.eval(visibility, "buildings-3d") == "none"
    page.check("#layer-buildings")
    assert console.eval(visibility, "buildings-3d") == "visible"


def _isolable_pipe(http) -> tuple[dict, dict]:
    """A water main whose burst closes valves and cuts buildings off, with the process's
    answer for it."""
    pipes = http.get(
        "/collections/water_supply_links/items", params={"class": "pipe", "limit": 60}
    ).json()["features"]
    for pipe in pipes:
        answer = http.post(
            "/processes/isolate-burst/execution",
            json={"inputs": {"network": "water_supply", "link": pipe["id"]}},
        )
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        if doc["summary"]["valves_to_close"] and doc["summary"]["affected_buildings"]:
            return pipe, doc
    pytest.fail("no water main of the virtual city isolates buildings")


def test_burst_isolation_highlights_the_valves_and_buildings(console, console_server):
    with console_server.client() as http:
        pipe, expected = _isolable_pipe(http)
    mid = shapely.geometry.shape(pipe["geometry"]).interpolate(0.5, normalized=True)
    look_at(console, mid.x, mid.y, zoom=19)
    page = console.page
    page.click('#tool-buttons button[data-tool="isolate"]')
    page.mouse.click(*canvas_point(console, mid.x, mid.y))
    page.wait_for_function(
        "window.citytwin.tools.last && window.citytwin.tools.last.kind === 'isolate'"
    )
    assert page.inner_text("#tool-result").count("\n") >= 3
    assert console.eval("window.citytwin.tools.last.summary.burst_link") == pipe["id"]
    highlighted = console.eval(
        """() => window.citytwin.map.getSource('highlight').serialize().data.features
            .filter((f) => f.properties.role === 'valve_to_close').map((f) => f.properties.id)"""
    )
    assert sorted(highlighted) == sorted(expected["summary"]["valves_to_close"])
    buildings = sorted(
        f["id"] for f in expected["features"]["features"]
        if f["properties"]["role"] == "affected_building"
    )  # fmt: skip
    assert len(buildings) == expected["summary"]["affected_buildings"]
    building_filter = console.eval("window.citytwin.map.getFilter('highlight-buildings')")
    assert building_filter[0] == "in" and sorted(building_filter[2][1]) == buildings
    # the valves are drawn where the service says they are
    drawn = console.eval(
        """() => window.citytwin.map.querySourceFeatures('highlight')
            .filter((f) => f.properties.role === 'valve_to_close').length"""
    )
    assert drawn >= 1
    page.click("#clear-highlight")
    page.click('#tool-buttons button[data-tool="select"]')
    left = console.eval("window.citytwin.map.getSource('highlight').serialize().data.features")
    assert left == []


def test_excavation_check_of_a_drawn_outline(console, console_server):
    with console_server.client() as http:
        pipe = http.get(
            "/collections/gas_links/items", params={"class": "pipe", "limit": 1}
        ).json()["features"][0]
    mid = shapely.geometry.shape(pipe["geometry"]).interpolate(0.5, normalized=True)
    look_at(console, mid.x, mid.y, zoom=18.5)
    page = console.page
    page.click('#tool-buttons button[data-tool="excavation"]')
    x, y = canvas_point(console, mid.x, mid.y)
    corners = [(x - 30, y - 30), (x + 30, y - 30), (x + 30, y + 30), (x - 30, y + 30)]
    for cx, cy in corners:
        page.mouse.click(cx, cy)
    page.fill("#dig-depth", "3")
    page.click("#dig-finish")
    page.wait_for_function(
        "window.citytwin.tools.last && window.citytwin.tools.last.kind === 'excavation'"
    )
    area = console.eval("window.citytwin.tools.last.area")
    assert len(area["coordinates"][0]) == 5
    assert shapely.geometry.shape(area).contains(mid)
    with console_server.client() as http:
        expected = http.post(
            "/processes/excavation-check/execution",
            json={"inputs": {"area": area, "depth": 3}},
        ).json()
    shown = console.eval(
        """() => window.citytwin.map.getSource('highlight').serialize().data.features
            .map((f) => [f.properties.id, f.properties.role])"""
    )
    assert sorted(shown) == sorted(
        [f["properties"]["id"], "struck" if f["properties"]["struck"] else "near"]
        for f in expected["features"]["features"]
    )
    assert [pipe["id"], "struck"] in shown  # the main under the dig, shallower than 3 m
    page.click("#clear-highlight")
    page.click('#tool-buttons button[data-tool="select"]')


def test_an_alarm_appears_in_the_panel_as_it_is_raised(console, console_server):
    page = console.page
    with console_server.client() as http:
        doc = http.get(
            "/console/api/sensors", params={"classes": "gas_detector", "readings": "true"}
        ).json()
        calm = next(f for f in doc["features"] if f["properties"]["state"] == "normal")
        datastream = calm["properties"]["readings"][0]["datastream"]
        at = pd.Timestamp(doc["at"]) + pd.Timedelta(seconds=30)
        before = int(page.get_attribute("#alarms", "data-alarm-count"))
        posted = http.post(
            f"/v1.1/Datastreams('{datastream}')/Observations",
            json={"phenomenonTime": at.isoformat(), "result": 62.0},
        )
        assert posted.status_code == 201, posted.text
        raised = http.get("/alarms", params={"status": "active", "rule_id": "gas-leak"}).json()[
            "value"
        ]
        alarm = next(a for a in raised if a["datastream_id"] == datastream)
        item = page.wait_for_selector(f"#alarms li[data-alarm-id='{alarm['alarm_id']}']")
        active = http.get("/alarms", params={"status": "active"}).json()["value"]
    # the panel counts what the service holds active (the replay may raise others meanwhile)
    assert int(page.get_attribute("#alarms", "data-alarm-count")) == len(active) > before
    assert alarm["alarm_id"] in {a["alarm_id"] for a in active}
    assert item.get_attribute("data-severity") == alarm["severity"]
    # a click flies to it and shows it; the device turns to 'alarm' on the map
    item.click()
    page.wait_for_function("window.citytwin.map.getZoom() >= 16")
    console.idle()
    page.wait_for_selector(f"#info-body:has-text('{alarm['alarm_id']}')")
    console.eval("window.citytwin.sensors.load()")
    state = console.eval(
        """(id) => window.citytwin.map.getSource('sensors').serialize().data.features
            .filter((f) => f.properties.id === id).map((f) => f.properties.state)""",
        calm["properties"]["id"],
    )
    assert state == ["alarm"]


def test_a_sensor_click_charts_its_readings(console, console_server):
    with console_server.client() as http:
        doc = http.get(
            "/console/api/sensors", params={"classes": "rain_gauge", "readings": "true"}
        ).json()
    gauge = doc["features"][0]
    datastream = gauge["properties"]["readings"][0]["datastream"]
    lon, lat = gauge["geometry"]["coordinates"]
    look_at(console, lon, lat, zoom=18)
    console.page.mouse.click(*canvas_point(console, lon, lat))
    console.page.wait_for_selector("#info-body svg.chart path.series")
    box = console.page.query_selector("#info-body .chart-box")
    assert box.get_attribute("data-datastream") == datastream
    drawn = int(box.get_attribute("data-points"))
    width = console.eval("document.querySelector('#info-body .chart-box').clientWidth")
    with console_server.client() as http:
        series = http.get(
            "/console/api/series", params={"datastream": datastream, "buckets": max(200, width)}
        ).json()
    assert drawn == len(series["points"]) > 10
    assert gauge["properties"]["id"] in console.page.inner_text("#info-body")


def test_the_underground_view_shows_pipes_at_their_depth(console, console_server):
    meta = console.eval("window.citytwin.meta")
    w, s, e, n = meta["bounds"]
    look_at(console, (w + e) / 2, (s + n) / 2, zoom=16, pitch=45)
    page = console.page
    page.check("#underground")
    page.wait_for_function("window.citytwin.deck.pipes.length > 0")
    assert console.eval("window.citytwin.map.getPaintProperty('buildings-3d', "
                        "'fill-extrusion-opacity')") < 0.5  # fmt: skip
    pipes = console.eval(
        "window.citytwin.deck.pipes.slice(0, 400).map((p) => [p.collection, p.id, p.z])"
    )
    assert {c for c, _, _ in pipes} <= {c["id"] for c in meta["collections"]}
    assert all(z < 0 for _, _, z in pipes)
    collection, fid, z = pipes[0]
    with console_server.client() as http:
        props = http.get(f"/collections/{collection}/items/{fid}").json()["properties"]
    assert z == pytest.approx(-((props["depth"] or 1.2) + (props["diameter"] or 0.1) / 2))
    layers = console.eval("window.citytwin.deck.overlay._deck.props.layers.map((l) => l.id)")
    assert "underground-pipes" in layers
    page.uncheck("#underground")
    assert console.eval("window.citytwin.deck.pipes.length") == 0
    assert console.eval("window.citytwin.map.getPaintProperty('buildings-3d', "
                        "'fill-extrusion-opacity')") > 0.5  # fmt: skip


def test_search_finds_a_building_by_id(console, console_server):
    with console_server.client() as http:
        building = http.get("/collections/buildings/items", params={"limit": 1}).json()["features"][
            0
        ]
    page = console.page
    page.fill("#search", building["id"])
    page.press("#search", "Enter")
    hit = page.wait_for_selector(f"#search-results li[data-id='{building['id']}']")
    assert hit.get_attribute("data-collection") == "buildings"
    hit.click()
    page.wait_for_selector("#info-body table.attributes")
    text = page.inner_text("#info-body")
    assert building["id"] in text and "height" in text


def test_the_console_in_chinese(console):
    page = console.page
    page.click("#lang")
    try:
        assert "虚拟城市" in page.inner_text("#virtual-badge")
        assert "供水" in page.inner_text("#layer-list")
        assert page.get_attribute("html", "lang") == "zh-CN"
    finally:
        page.click("#lang")
    assert "Water supply" in page.inner_text("#layer-list")


def test_screenshot_of_the_city_with_its_networks_and_alarms(console, tmp_path):
    """The whole virtual city, its networks and the alarms (kept for people to look at)."""
    console.eval("window.citytwin.overview()")
    console.eval("window.citytwin.sensors.load()")
    console.idle()
    assert console.eval(
        "window.citytwin.map.querySourceFeatures('twin', {sourceLayer: 'water_supply_links'})"
        ".length"
    )
    assert console.eval("window.citytwin.map.getSource('events').serialize().data.features.length")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    console.page.screenshot(path=str(SCREENSHOT))
    shutil.copy(SCREENSHOT, tmp_path / "console.png")
    assert SCREENSHOT.stat().st_size > 50_000
    # nothing went wrong along the way
    assert console.page_errors == []
    assert [m for m in console.console if m[0] == "error"] == []
    assert console.eval("window.citytwin.errors") == []
    assert console.eval("window.citytwin.notes") == []


def test_sign_in_with_a_password_keeps_a_token_for_the_tab(browser, console_server):
    context = browser.new_context(viewport={"width": 800, "height": 500})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(console_server.base + "/console/", wait_until="domcontentloaded")
        page.wait_for_selector("#who:has-text('not signed in')")
        page.click("#signin")
        page.fill("#signin-form input[name=username]", "duty")
        page.fill("#signin-form input[name=password]", "not-the-password")
        page.click("#signin-submit")
        error = page.wait_for_selector("#signin-error:not([hidden])")
        assert "wrong user name or password" in error.inner_text()
        page.fill("#signin-form input[name=password]", "s3cret-pass")
        with page.expect_navigation():
            page.click("#signin-submit")
        page.wait_for_selector("#who:has-text('duty')")
        stored = page.evaluate("JSON.parse(sessionStorage.getItem('citytwin.credentials'))")
        assert stored["kind"] == "token" and stored["user"] == "duty"
        me = httpx.get(
            console_server.base + "/me", headers={"Authorization": f"Bearer {stored['value']}"}
        )
        assert me.status_code == 200 and me.json()["user"] == "duty"
        page.click("#signout")
        page.wait_for_selector("#who:has-text('not signed in')")
        assert page.evaluate("sessionStorage.getItem('citytwin.credentials')") is None
    finally:
        context.close()


# -- the console's JSON endpoints ----------------------------------------------------------------
def test_meta_names_the_twin_and_what_the_caller_may_read(console_server):
    with console_server.client() as http:
        meta = http.get("/console/api/meta").json()
    anonymous = httpx.get(console_server.base + "/console/api/meta").json()
    assert meta["virtual"] is True and meta["proj4"].startswith("+proj=")
    w, s, e, n = meta["bounds"]
    assert -180 < w < e < 180 and -90 < s < n < 90
    assert meta["principal"]["user"] == "duty"
    ids = {c["id"] for c in meta["collections"]}
    assert {"buildings", "water_supply_links", "gas_links"} <= ids
    assert all(c["title_zh"] for c in meta["collections"])
    assert anonymous["principal"]["user"] is None
    assert "water_supply_links" not in {c["id"] for c in anonymous["collections"]}


def test_sensor_states_follow_the_active_alarms(console_server):
    with console_server.client() as http:
        doc = http.get(
            "/console/api/sensors", params={"exclude": "water_meter", "readings": "true"}
        ).json()
        active = http.get("/alarms", params={"status": "active"}).json()["value"]
        everything = http.get("/console/api/sensors").json()
    streams = {a["datastream_id"] for a in active}
    in_alarm = {f["id"] for f in doc["features"] if f["properties"]["state"] == "alarm"}
    expected = {
        f["id"] for f in doc["features"]
        if streams & {r["datastream"] for r in f["properties"]["readings"]}
    }  # fmt: skip
    assert in_alarm == expected and in_alarm
    assert {f["properties"]["class"] for f in doc["features"]}.isdisjoint({"water_meter"})
    states = {f["properties"]["state"] for f in everything["features"]}
    assert states <= {"alarm", "normal", "no_data"} and len(everything["features"]) > len(
        doc["features"]
    )
    at = pd.Timestamp(doc["at"])
    for f in doc["features"]:
        if f["properties"]["state"] == "normal":
            assert at - pd.Timestamp(f["properties"]["latest"]) < pd.Timedelta(hours=1)


def test_sensors_leave_out_the_rows_a_grant_hides(console_server):
    """A row rule on the devices collection (gas detectors only for the gas utility) hides
    them from others, in the console's sensors as everywhere."""
    from dataclasses import replace

    from citytwin.services.catalogue import RowRule

    catalogue = console_server.app.state.ctx.catalogue
    devices = catalogue.collections["devices"]
    anonymous = httpx.Client(base_url=console_server.base, timeout=60)
    before = anonymous.get(
        "/console/api/sensors", params={"exclude": "water_meter", "readings": "true"}
    ).json()
    assert "gas_detector" in {f["properties"]["class"] for f in before["features"]}
    catalogue.collections["devices"] = replace(
        devices, row_rules=(RowRule("class = 'gas_detector'", ("gas",)),)
    )
    try:
        hidden = anonymous.get("/console/api/sensors", params={"exclude": "water_meter"}).json()
        with console_server.client() as admin:
            seen = admin.get("/console/api/sensors", params={"exclude": "water_meter"}).json()
        gas = [f for f in before["features"] if f["properties"]["class"] == "gas_detector"]
        series = anonymous.get(
            "/console/api/series",
            params={"datastream": gas[0]["properties"]["readings"][0]["datastream"]},
        )
    finally:
        catalogue.collections["devices"] = devices
    classes = {f["properties"]["class"] for f in hidden["features"]}
    assert "gas_detector" not in classes
    assert len(hidden["features"]) == len(before["features"]) - len(gas)
    assert len(seen["features"]) == len(before["features"])  # an admin sees every row
    assert series.status_code == 404  # nor can its readings be charted


def test_sensors_in_a_bbox_and_bad_requests(console_server):
    with console_server.client() as http:
        meta = http.get("/console/api/meta").json()
        w, s, e, n = meta["bounds"]
        box = (w, s, (w + e) / 2, (s + n) / 2)
        inside = http.get("/console/api/sensors", params={"bbox": ",".join(map(str, box))}).json()
        assert inside["features"]
        for f in inside["features"]:
            lon, lat = f["geometry"]["coordinates"]
            assert box[0] - 1e-6 <= lon <= box[2] + 1e-6 and box[1] - 1e-6 <= lat <= box[3] + 1e-6
        bad = http.get("/console/api/sensors", params={"bbox": "1,2,3"})
        assert bad.status_code == 400 and "bbox" in bad.json()["error"]
        swapped = http.get("/console/api/sensors", params={"bbox": "114,23,113,24"})
        assert swapped.status_code == 400
        missing = http.get("/console/api/series", params={"datastream": "no-such-stream"})
        assert missing.status_code == 404 and "no-such-stream" in missing.json()["error"]
        backwards = http.get(
            "/console/api/series",
            params={
                "datastream": "dev:rg:000001:rain_intensity",
                "start": "2025-06-03T00:00:00Z",
                "end": "2025-06-02T00:00:00Z",
            },
        )
        assert backwards.status_code == 400


def test_series_is_downsampled_for_the_chart(console_server):
    with console_server.client() as http:
        doc = http.get(
            "/console/api/series",
            params={"datastream": "dev:rg:000001:rain_intensity", "buckets": 20},
        ).json()
    times = [pd.Timestamp(t) for t, _ in doc["points"]]
    assert 0 < len(times) <= 4 * 20
    assert times == sorted(times)
    assert doc["unit"] == "mm/h" and doc["property"] == "rain_intensity"
    assert pd.Timestamp(doc["end"]) - pd.Timestamp(doc["start"]) == pd.Timedelta(hours=24)
    assert all(pd.Timestamp(doc["start"]) <= t < pd.Timestamp(doc["end"]) for t in times)


def test_the_console_is_served_with_its_vendored_libraries(console_server):
    redirect = httpx.get(console_server.base + "/console", follow_redirects=False)
    assert redirect.status_code in (307, 308) and redirect.headers["location"] == "/console/"
    page = httpx.get(console_server.base + "/console/")
    assert page.status_code == 200 and "maplibre-gl.js" in page.text
    for path in ("vendor/maplibre-gl/maplibre-gl.js", "vendor/deck.gl/deck.gl.min.js",
                 "vendor/proj4/proj4.js", "js/main.js"):  # fmt: skip
        r = httpx.get(f"{console_server.base}/console/{path}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    # nothing in the page refers to another host
    for path in ("", "console.css", "js/main.js", "js/map.js", "js/underground.js"):
        text = httpx.get(f"{console_server.base}/console/{path}").text
        assert "http://" not in text and "https://" not in text, path

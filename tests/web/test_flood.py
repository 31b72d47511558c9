"""The console's flood panel in a real browser against the real service: nothing of it is fetched
before it is opened; a kept scenario is listed, laid on the map as its depth overlay (between the
corners the service gives) with a legend, its flooded buildings raised and its summary shown; a
design storm run from the panel's form goes through the process as a job and is shown when done.
A screenshot goes to ``test-output/flood.png``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "test-output" / "flood.png"
STORM = {"return_period": 50, "duration": 10, "after": 5, "cell": 20}


def test_a_kept_scenario_on_the_map(console, console_server):
    page = console.page
    # nothing of the flood panel before it is opened
    assert not [u for u in console.requests if "/flood" in u]
    with console_server.client() as http:
        r = http.post("/processes/flood-storm/execution", json={"inputs": STORM})
        assert r.status_code == 200, r.text
        sid = r.json()["summary"]["scenario"]
        scenario = http.get(f"/flood/scenarios/{sid}").json()
        buildings = http.get(f"/flood/scenarios/{sid}/features", params={"kind": "building"})
    flooded = sorted(f["id"] for f in buildings.json()["features"] if f["properties"]["flooded"])
    assert flooded
    page.click("#flood summary")
    page.wait_for_selector(f"#flood-body li[data-sid='{sid}']")
    assert any(u.endswith("/js/flood.js") for u in console.requests)
    page.click(f"#flood-body li[data-sid='{sid}']")
    page.wait_for_selector(f"#flood-body[data-shown='{sid}']")
    console.idle()
    drawn = console.eval(
        """() => {
            const map = window.citytwin.map;
            const source = map.getSource('flood-depth');
            const filter = map.getFilter('flood-buildings');
            return {layer: map.getLayer('flood-depth')?.type, kind: source?.type,
                    coordinates: source?.coordinates, loaded: map.isSourceLoaded('flood-depth'),
                    visible: map.getLayoutProperty('flood-depth', 'visibility') || 'visible',
                    buildings: filter ? filter[2][1] : null,
                    ticks: document.querySelectorAll('#flood-legend .flood-ticks span').length};
        }"""
    )
    assert drawn["layer"] == "raster" and drawn["kind"] == "image"
    assert drawn["loaded"] and drawn["visible"] == "visible"
    assert drawn["coordinates"] == scenario["overlay"]["coordinates"]
    assert sorted(drawn["buildings"]) == flooded
    assert drawn["ticks"] == len(scenario["overlay"]["legend"])
    # the overlay PNG came from the service, and the summary is in the panel
    assert any(u.startswith(scenario["overlay"]["href"]) for u in console.requests)
    summary = page.inner_text("#flood-body .flood-summary")
    assert f"{scenario['summary']['buildings_flooded']:,}" in summary
    assert "Buildings flooded" in page.inner_text("#info-body")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    # in Chinese
    page.click("#lang")
    assert page.text_content("#flood summary").strip() == "内涝情景"
    assert "进水建筑" in page.inner_text("#flood-body .flood-summary")
    assert "最大水深" in page.inner_text("#flood-legend")
    page.click("#lang")
    assert page.text_content("#flood summary").strip() == "Flood scenarios"
    assert console.eval("window.citytwin.errors") == []
    assert console.page_errors == []


def test_a_storm_run_from_the_panel(console, console_server):
    page = console.page
    if not page.is_visible("#flood-form"):
        page.click("#flood summary")
    before = int(page.get_attribute("#flood-body", "data-count") or 0)
    page.select_option("#flood-form select[name=return_period]", "50")
    for name in ("duration", "after", "cell"):
        page.fill(f"#flood-form input[name={name}]", str(STORM[name]))
    page.uncheck("#flood-form input[name=view_only]")
    page.click("#flood-start")
    page.wait_for_selector("#flood-body[data-job='successful']", timeout=120_000)
    with console_server.client() as http:
        newest = http.get("/flood/scenarios", params={"limit": 1}).json()["scenarios"][0]
        jobs = http.get("/jobs", params={"processID": "flood-storm"}).json()["jobs"]
    assert newest["params"]["return_period"] == 50 and newest["params"]["duration_min"] == 10
    assert jobs[0]["status"] == "successful"  # it ran as a job
    # the new scenario is listed and shown
    page.wait_for_selector(f"#flood-body[data-shown='{newest['id']}']")
    assert page.get_attribute("#flood-body", "data-count") == str(before + 1)
    assert page.is_visible(f"#flood-body li.active[data-sid='{newest['id']}']")
    assert "Done" in page.inner_text("#flood-body .flood-job")
    assert console.eval("window.citytwin.errors") == []

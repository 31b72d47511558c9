"""Flood forecasts on the virtual city: a gridded rainfall forecast written as a real NetCDF or
GeoTIFF runs the flood model, its predicted flooding raises alarms with lead times through the
alarm machinery (store, webhooks' outbox, event stream), a dry forecast clears them; the CLI,
and the drop folder a running service watches."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import xarray as xr
from pyproj import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from typer.testing import CliRunner

from citytwin.app.forecast import ForecastInbox, run_forecast
from citytwin.app.monitoring import keep_webhooks
from citytwin.cli import app
from citytwin.errors import InvalidInput
from citytwin.services.notify import EventHub
from citytwin.store import Query, open_store

START = pd.Timestamp("2025-06-03T08:00Z")
ISSUED = pd.Timestamp("2025-06-03T07:50Z")


@pytest.fixture(scope="module")
def city(virtual_city, tmp_path_factory):
    path = tmp_path_factory.mktemp("forecast") / "city.twin"
    shutil.copy(virtual_city, path)
    return path


def window(store, side: float = 600.0) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = store.meta.extent
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def rain_cells(store, cell: float = 250.0) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (x west to east, y north to south) of a coarse rain grid over the twin."""
    x0, y0, x1, y1 = store.meta.extent
    x = np.arange(x0 - 500 + cell / 2, x1 + 500, cell)
    y = np.arange(y1 + 500 - cell / 2, y0 - 500, -cell)
    return x, y


def netcdf_forecast(path, store, mm_h: float, *, steps: int = 6, issued=ISSUED):
    """A CF-style NetCDF of ``steps`` 5-minute rain rates (mm/h) from ``START`` in the twin's
    CRS (a grid-mapping variable with its WKT), stating its issue time."""
    x, y = rain_cells(store)
    times = (START.tz_localize(None) + pd.to_timedelta(np.arange(steps) * 5, "min")).to_numpy()
    rate = np.full((steps, len(y), len(x)), float(mm_h))
    rate[:, :, :2] = 0.0  # a dry western edge: the forecast varies in space
    da = xr.DataArray(
        rate,
        dims=("time", "y", "x"),
        coords={"time": times, "y": y, "x": x},
        attrs={"units": "mm h-1", "grid_mapping": "crs", "long_name": "rainfall rate"},
    )
    crs = xr.DataArray(0, attrs={"crs_wkt": CRS.from_user_input(store.meta.crs).to_wkt()})
    ds = xr.Dataset({"rainfall_rate": da, "crs": crs})
    if issued is not None:
        ds.attrs["issued"] = issued.isoformat()
    ds.to_netcdf(path)
    return path


def geotiff_forecast(path, store, mm_h: float, *, steps: int = 6):
    """A GeoTIFF forecast: a band per 5-minute step with its ``time`` tag, in mm/h."""
    x, _ = rain_cells(store)
    cell = 250.0
    x0, _, _, y1 = store.meta.extent
    transform = from_origin(x0 - 500, y1 + 500, cell, cell)
    data = np.full((steps, len(x), len(x)), mm_h, dtype="float32")
    with rasterio.open(
        path, "w", driver="GTiff", width=len(x), height=len(x), count=steps,
        dtype="float32", crs=store.meta.crs, transform=transform,
    ) as ds:  # fmt: skip
        ds.write(data)
        ds.update_tags(units="mm/h", issued=ISSUED.isoformat())
        for b in range(steps):
            ds.update_tags(b + 1, time=(START + pd.Timedelta(minutes=5 * b)).isoformat())
    return path


async def _take(stream, n: int, timeout: float = 2.0) -> list[dict]:
    """The next ``n`` events of an event-hub stream, parsed from its SSE text."""
    got: list[dict] = []
    while len(got) < n:
        for block in (await asyncio.wait_for(stream.__anext__(), timeout)).split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.split("\n") if ": " in line
            )  # fmt: skip
            if "event" in fields:
                got.append({"event": fields["event"], "data": json.loads(fields["data"])})
    return got


def first_wet_near(store, key: str, footprint, reach: float) -> np.ndarray:
    """The first-wetting times (s) kept with a scenario of the cells whose centres lie outside
    a footprint and within ``reach`` metres of it."""
    with MemoryFile(store.get_raster(f"{key}/first_wet")) as mem, mem.open() as ds:
        fw = ds.read(1, masked=True).filled(np.nan)
        t = ds.transform
    rows, cols = np.indices(fw.shape)
    xs, ys = t.c + (cols + 0.5) * t.a, t.f + (rows + 0.5) * t.e
    d = shapely.distance(footprint, shapely.points(xs.ravel(), ys.ravel())).reshape(fw.shape)
    near = (d > 0) & (d <= reach) & np.isfinite(fw)
    return fw[near]


def test_a_forecast_raises_predicted_alarms_with_lead_times_and_a_dry_one_clears_them(
    city, tmp_path
):
    hub = EventHub()
    with open_store(city) as store:
        wet = netcdf_forecast(tmp_path / "wet.nc", store, 90.0)
        keep_webhooks(store, [{"name": "ops", "url": "http://127.0.0.1:9/h", "secret": "s"}])
        bounds = window(store)
        run = run_forecast(store, wet, cell=10.0, bounds=bounds, after_min=20, hub=hub)
        # the scenario is kept with the others, as a forecast
        doc = store.get_document(run.key)
        assert doc["params"]["forecast"] == "wet.nc" and doc["params"]["cell"] == 10.0
        assert run.issued == ISSUED and run.start == START  # the file's issue time
        assert doc["summary"]["buildings_flooded"] > 0
        active = store.alarms(status="active", limit=None)
        active = active[active["kind"] == "predicted"]
        assert len(active) == len(run.changes.changes) > 0
        assert set(active["rule_id"]) >= {"basement-flood-forecast", "road-flood-forecast"}
        assert (active["scenario_id"] == run.scenario.id).all()
        assert (active["raised_at"] == ISSUED).all()
        # shown where the asset is (a building's centre may lie a little off the run's area)
        assert active["x"].between(bounds[0] - 100, bounds[2] + 100).all()
        assert active["y"].between(bounds[1] - 100, bounds[3] + 100).all()
        # every basement alarm: the depth at its walls and a lead time that is the simulated
        # first wetting of a cell along its walls, from the issue time
        basements = active[active["rule_id"] == "basement-flood-forecast"]
        assert len(basements)
        depth = run.scenario.buildings.set_index("id")["depth_m"]
        b = store.query(Query("buildings", ids=list(basements["source"])))
        footprints = b.set_index("id").geometry
        for alarm in basements.itertuples(index=False):
            assert alarm.value == pytest.approx(depth[alarm.source])
            assert alarm.value >= 0.15 and alarm.severity == (
                "red" if alarm.value >= 0.5 else "orange"
            )
            assert 0 < alarm.lead_time_s <= 2 * 3600
            onset_s = alarm.lead_time_s + (ISSUED - START).total_seconds()
            near = first_wet_near(store, run.key, footprints[alarm.source], 1.5 * 10.0)
            assert np.isclose(near, onset_s, atol=0.01).any()  # a cell at its walls ...
            assert onset_s >= near.min() - 0.01  # ... and none near it wet earlier, but those
            assert f"in {alarm.lead_time_s / 60:.0f} min" in alarm.message  # further out
        roads = active[active["rule_id"] == "road-flood-forecast"]
        assert (roads["value"] >= 0.3).all()
        # the webhooks' outbox and the console's event stream got the same alarms
        queued = store.notifications(status="pending", limit=None)
        assert (queued["event"] == "alarm.raised").sum() == len(active)
        events = asyncio.run(_take(hub.stream(f"{hub.epoch}-0"), len(active)))
        assert {e["data"]["alarm_id"] for e in events} == set(active["alarm_id"])
        assert all(e["data"]["lead_time_s"] > 0 for e in events)

        # the same forecast again changes nothing
        again = run_forecast(store, wet, cell=10.0, bounds=bounds, after_min=20)
        assert again.changes.alarms.empty
        # a later, dry forecast clears them all, as readings clear threshold alarms
        dry = netcdf_forecast(tmp_path / "dry.nc", store, 0.0, issued=None)
        later = ISSUED + pd.Timedelta(minutes=30)
        cleared = run_forecast(
            store, dry, issued=later, cell=10.0, bounds=bounds, after_min=20, hub=hub
        )
        assert cleared.issued == later
        assert set(cleared.changes.changes["change"]) == {"cleared"}
        now = store.alarms(limit=None)
        assert not (now["status"].eq("active") & now["kind"].eq("predicted")).any()
        gone = now[now["alarm_id"].isin(active["alarm_id"])]
        assert (gone["status"] == "cleared").all() and (gone["cleared_at"] == later).all()
        assert (gone["scenario_id"] == cleared.scenario.id).all()
        events = asyncio.run(_take(hub.stream(f"{hub.epoch}-0"), 2 * len(active)))
        assert [e["event"] for e in events[len(active) :]] == ["alarm.cleared"] * len(active)
        assert store.get_document(cleared.key)["summary"]["buildings_flooded"] == 0


def test_bad_forecasts_are_refused_clearly(city, tmp_path):
    with open_store(city) as store:
        bounds = window(store, 200.0)
        one = netcdf_forecast(tmp_path / "one.nc", store, 30.0, steps=1)
        with pytest.raises(InvalidInput, match="one time step has no length") as exc:
            run_forecast(store, one, bounds=bounds)
        assert "two time steps" in exc.value.hint
        two = netcdf_forecast(tmp_path / "two.nc", store, 30.0, steps=2)
        with pytest.raises(InvalidInput, match="'soon' is not a time"):
            run_forecast(store, two, issued="soon", bounds=bounds)
        text = tmp_path / "rain.csv"
        text.write_text("08:00,30\n")
        with pytest.raises(InvalidInput, match="not a rainfall file"):
            run_forecast(store, text, bounds=bounds)


def test_the_cli_runs_a_geotiff_forecast_and_reports_its_alarms(city, tmp_path):
    with open_store(city, read_only=True) as store:
        bbox = ",".join(f"{v:.1f}" for v in window(store, 400.0))
        tif = geotiff_forecast(tmp_path / "forecast.tif", store, 120.0)
    runner = CliRunner()
    args = ["flood", "forecast", str(tif), "-t", str(city), "--bbox", bbox, "--after", "10"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "forecast forecast.tif issued 2025-06-03T07:50:00+00:00" in res.output
    assert "predicted-flooding alarms" in res.output and "kept as flood/" in res.output
    with open_store(city, read_only=True) as store:
        key = res.output.split("kept as ")[1].split(";")[0]
        assert store.get_document(key)["params"]["forecast"] == "forecast.tif"
    bad = runner.invoke(app, [*args, "--issued", "tomorrow-ish"])
    assert bad.exit_code == 1 and "is not a time" in bad.output
    # the server's drop folder must be there before it serves
    missing = tmp_path / "no-inbox"
    bad = runner.invoke(app, ["serve", "-t", str(city), "--forecast-dir", str(missing)])
    assert bad.exit_code == 1 and "no such folder" in bad.output


def test_the_running_service_runs_forecasts_dropped_into_its_folder(virtual_city, tmp_path):
    from citytwin.services.runtime import MonitoringService

    twin = tmp_path / "served.twin"
    shutil.copy(virtual_city, twin)
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    inbox.mkdir()
    staging.mkdir()
    service = MonitoringService.open(twin)
    with service:
        store = service.store
        bounds = window(store)
        netcdf_forecast(staging / "wet.nc", store, 90.0)
        (staging / "broken.nc").write_text("not NetCDF")
        service.watch_forecasts(inbox, poll_s=0.1, cell=10.0, bounds=bounds, after_min=10)
        assert "watching a forecast folder" in service.describe()
        for name in ("wet.nc", "broken.nc"):  # written elsewhere, moved in whole
            (staging / name).replace(inbox / name)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (
            (inbox / "done" / "wet.nc").exists() and (inbox / "failed" / "broken.nc").exists()
        ):
            time.sleep(0.2)
        assert (inbox / "done" / "wet.nc").exists()
        why = (inbox / "failed" / "broken.nc.error.txt").read_text()
        assert "can't read it as NetCDF" in why
        assert not list(inbox.glob("*.nc"))
        alarms = store.alarms(status="active", limit=None)
        predicted = alarms[alarms["kind"] == "predicted"]
        assert len(predicted) and (predicted["lead_time_s"] > 0).all()
        # the console's event stream heard them
        events = asyncio.run(_take(service.hub.stream(f"{service.hub.epoch}-0"), 1))
        assert events[0]["event"] == "alarm.raised"


def test_an_inbox_waits_for_whole_files_and_keeps_a_stopped_one(city, tmp_path):
    with open_store(city) as store:
        with pytest.raises(InvalidInput, match="does not exist"):
            ForecastInbox(store, tmp_path / "nowhere")
        folder = tmp_path / "inbox"
        folder.mkdir()
        stop = threading.Event()

        def rules_then_stop():  # the service stops just as the run begins
            stop.set()
            return None

        inbox = ForecastInbox(
            store, folder, rules=rules_then_stop, stop=stop,
            options={"cell": 10.0, "bounds": window(store, 200.0)},
        )  # fmt: skip
        netcdf_forecast(folder / "wet.nc", store, 60.0)
        (folder / ".part.nc").write_text("being written")
        assert inbox.poll() == []  # seen once: it may still be growing
        assert inbox.poll() == [] and stop.is_set()  # its run began, and was stopped
        assert (folder / "wet.nc").exists() and not (folder / "done").exists()
        assert (folder / ".part.nc").exists()  # hidden files are never taken

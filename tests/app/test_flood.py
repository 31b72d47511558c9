"""Storm runs on the virtual city: the grid from the twin, a run with its impacts, the scenario
kept (COG rasters and a document), the map, the CLI, and a Dask ensemble."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import shapely
from rasterio.io import MemoryFile
from typer.testing import CliRunner

from citytwin.app.flood import (
    BUILDING_FLOODED,
    MANNING_ROAD,
    draw_flood,
    flood_grid,
    members,
    run_ensemble,
    run_storm,
    save_scenario,
)
from citytwin.cli import app
from citytwin.flood.impacts import building_depths
from citytwin.store import Query, open_store


@pytest.fixture(scope="module")
def city(virtual_city, tmp_path_factory):
    path = tmp_path_factory.mktemp("flood") / "city.twin"
    shutil.copy(virtual_city, path)
    return path


def window(store, side: float = 600.0) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = store.meta.extent
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def test_the_grid_comes_from_the_twin(city):
    with open_store(city, read_only=True) as store:
        bounds = window(store)
        grid = flood_grid(store, cell=5.0, bounds=bounds)
        d = grid.domain
        assert d.shape == (120, 120) and d.dx == 5.0
        assert np.isfinite(d.z).all()
        # buildings are walls: a building's centre cell is blocked
        b = store.query(Query("buildings", intersects=shapely.box(*bounds)))
        big = b[b.geometry.area > 400]
        assert len(big)
        xy = shapely.get_coordinates(shapely.point_on_surface(big.geometry.to_numpy()))
        rows, cols, inside = grid.raster.cells(xy)
        assert d.blocked[rows[inside], cols[inside]].mean() > 0.9
        # roads are smooth and sealed
        assert (d.n == MANNING_ROAD).any() and (d.n > MANNING_ROAD).any()
        assert np.all(np.asarray(d.losses.ks)[d.n == MANNING_ROAD] == 0)


def test_a_storm_run_and_what_it_reaches(city, tmp_path):
    with open_store(city) as store:
        bounds = window(store)
        sc = run_storm(
            store, return_period=50, duration_min=30, after_min=10, cell=5.0, bounds=bounds
        )
        s = sc.summary
        assert sc.result.balance.relative_error <= 1e-6
        assert s["max_depth_m"] > 0.05 and s["flooded_area_m2"] > 0
        # the buildings flagged are exactly those with water deeper than a sill at their walls
        depth = np.nan_to_num(sc.result.max_depth)
        b = store.query(Query("buildings", ids=list(sc.buildings["id"])))
        b = b.set_index("id").loc[sc.buildings["id"]]
        walls = building_depths(depth, sc.grid.raster, b.geometry.to_numpy())
        assert np.allclose(walls, sc.buildings["depth_m"], equal_nan=True)
        assert s["buildings_flooded"] == int((walls > BUILDING_FLOODED).sum())
        flooded = sc.buildings[sc.buildings["flooded"]]
        assert s["residents_affected"] == int(flooded["residents"].sum())
        key = save_scenario(store, sc)
        doc = store.get_document(key)
        assert doc["summary"]["buildings_flooded"] == s["buildings_flooded"]
        with MemoryFile(store.get_raster(f"{key}/max_depth")) as mem, mem.open() as ds:
            assert ds.profile["driver"] == "GTiff" and ds.is_tiled
            got = ds.read(1, masked=True).filled(np.nan)
            assert ds.crs is not None and ds.transform.a == 5.0
        assert np.allclose(got, sc.result.max_depth.astype("float32"), equal_nan=True)
        png = draw_flood(sc, tmp_path / "flood.png", virtual=True)
        assert png.stat().st_size > 20_000


def test_the_cli_runs_and_reports(city, tmp_path):
    with open_store(city, read_only=True) as store:
        bbox = ",".join(f"{v:.1f}" for v in window(store, 400.0))
    runner = CliRunner()
    png = tmp_path / "cli.png"
    res = runner.invoke(
        app,
        [
            "flood",
            "run",
            "-t",
            str(city),
            "-P",
            "10",
            "-d",
            "20",
            "--after",
            "5",
            "--cell",
            "8",
            "--bbox",
            bbox,
            "--png",
            str(png),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "buildings flooded" in res.output and png.exists()
    res = runner.invoke(app, ["flood", "impacts", "-t", str(city)])
    assert res.exit_code == 0, res.output
    assert "roads reached" in res.output
    bad = runner.invoke(app, ["flood", "run", "-t", str(city), "--solver", "magic", "--bbox", bbox])
    assert bad.exit_code == 1 and "unknown solver" in bad.output
    bad = runner.invoke(app, ["flood", "run", "-t", str(city), "-P", "0", "--bbox", bbox])
    assert bad.exit_code == 1 and "return period" in bad.output


def test_an_ensemble_through_dask(city):
    with open_store(city) as store:
        storms = members([2, 50], [20], [0.4])
        done = []
        out = run_ensemble(
            store,
            storms,
            workers=2,
            after_min=5,
            cell=10.0,
            bounds=window(store, 400.0),
            on_done=lambda sc, k, n: done.append((k, n)),
        )
        assert sorted(done) == [(1, 2), (2, 2)]
        by = {sc.params["return_period"]: sc.summary for sc in out}
        # the 50-year storm floods more than the 2-year one, on the same grid
        assert by[50]["flooded_area_m2"] >= by[2]["flooded_area_m2"]
        assert by[50]["max_depth_m"] > by[2]["max_depth_m"]
        kept = [k for k in store.documents("flood/") if k.count("/") == 1]
        assert sum("P50-D20" in k for k in kept) == 1


def test_a_coupled_run_drains_into_the_sewers_and_balances(city):
    with open_store(city, read_only=True) as store:
        bounds = window(store, 500.0)
        kwargs = {
            "return_period": 10,
            "duration_min": 20,
            "after_min": 10,
            "cell": 5.0,
            "bounds": bounds,
        }
        alone = run_storm(store, **kwargs)
        coupled = run_storm(store, coupled=True, **kwargs)
    d = coupled.summary["drainage"]
    assert d["drained"] > 0.05 * coupled.result.balance.rain[-1]  # the inlets took water
    assert d["outfall"] > 0 or d["sewer_storage"] > d["sewer_initial"]
    # the bar: the coupled volume balance closes within 1 %
    assert d["relative_error"] <= 0.01
    # with drains, less water stands on the surface
    assert coupled.summary["flooded_area_m2"] <= alone.summary["flooded_area_m2"]
    assert coupled.result.balance.volume[-1] < alone.result.balance.volume[-1]

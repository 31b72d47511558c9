"""Rain for flood runs: design storms, gauge readings, grids; and gridded files read onto a
flood grid (NetCDF through xarray, GeoTIFF through rasterio)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from citytwin.drainage.storms import depth
from citytwin.errors import InvalidInput
from citytwin.flood.rain import design_storm, gauge_rain, gridded_rain, total_mm, uniform_rain
from citytwin.formats.rainfall import Grid, read_rainfall


def test_design_storm_holds_the_formulas_depth():
    rain = design_storm(50, 120)
    # the whole storm holds exactly the formula's 120-minute depth, and nothing falls after it
    assert total_mm(rain, 7200) == pytest.approx(float(depth(120, 50)), rel=1e-9)
    assert total_mm(rain, 10_000) == pytest.approx(total_mm(rain, 7200), rel=1e-12)
    # the peak is at 0.4 of the duration
    peak = rain.series.times[int(np.argmax(rain.series.values))]
    assert 0.35 * 7200 <= peak <= 0.45 * 7200
    assert design_storm(2, 60).series.values.max() < rain.series.values.max()


def test_gauge_readings_in_every_kind_give_the_same_rain():
    ends = np.array([600.0, 1200.0, 1800.0, 2400.0])
    mm_h = np.array([12.0, 60.0, 30.0, 0.0])
    depth_mm = mm_h * 600 / 3600
    a = gauge_rain(ends, mm_h)
    b = gauge_rain(ends, depth_mm, kind="depth")
    c = gauge_rain(ends, np.cumsum(depth_mm), kind="cumulative")
    for r in (a, b, c):
        assert total_mm(r, 2400) == pytest.approx(depth_mm.sum())
        assert r.rate(600, 1200) * 3.6e6 == pytest.approx(60.0)
    with pytest.raises(ValueError, match="missing"):
        gauge_rain(ends, np.array([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match="reset"):
        gauge_rain(ends, np.array([1.0, 3.0, 2.0, 4.0]), kind="cumulative")
    assert total_mm(uniform_rain(36.0, 30), 3600) == pytest.approx(18.0)


def test_gridded_rain_varies_in_space_and_time():
    grids = np.zeros((2, 3, 4))
    grids[0, 1, 2] = 36.0
    grids[1] = 3.6
    rain = gridded_rain(np.array([0.0, 600.0]), grids)
    assert rain.rate(0, 10)[1, 2] * 3.6e6 == pytest.approx(36.0)
    assert rain.rate(0, 10)[0, 0] == 0.0
    assert rain.rate(700, 710)[0, 0] * 3.6e6 == pytest.approx(3.6)
    total = rain.total(1200)
    assert total[1, 2] * 1000 == pytest.approx(36 * 600 / 3600 + 3.6 * 600 / 3600)
    with pytest.raises(ValueError, match="missing"):
        gridded_rain(np.array([0.0]), np.full((1, 2, 2), np.nan))


# -- files ----------------------------------------------------------------------------------------
UTM = "EPSG:32649"  # Guangzhou's UTM zone
TARGET = Grid(UTM, 750_000.0, 2_560_000.0, 100.0, (20, 30))


def _lonlat_box():
    from pyproj import Transformer

    to_ll = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    lon0, lat1 = to_ll.transform(TARGET.x0 - 2000, TARGET.y0 + 2000)
    lon1, lat0 = to_ll.transform(TARGET.x0 + 5000, TARGET.y0 - 4000)
    return lon0, lon1, lat0, lat1


def test_netcdf_rain_in_lonlat_is_resampled_onto_the_grid(tmp_path):
    import xarray as xr

    lon0, lon1, lat0, lat1 = _lonlat_box()
    lon = np.linspace(lon0, lon1, 40)
    lat = np.linspace(lat0, lat1, 50)  # south to north, as many radar files are
    times = np.array(["2026-06-01T08:00", "2026-06-01T08:10", "2026-06-01T08:20"],
                     dtype="datetime64[ns]")  # fmt: skip
    rate = np.zeros((3, len(lat), len(lon)))
    rate[0] = 12.0
    rate[1] = 48.0
    rate[2, :, : len(lon) // 2] = 6.0  # the west half only
    da = xr.DataArray(rate, dims=("time", "lat", "lon"),
                      coords={"time": times, "lat": lat, "lon": lon},
                      attrs={"units": "mm h-1"})  # fmt: skip
    path = tmp_path / "radar.nc"
    xr.Dataset({"rainfall_rate": da}).to_netcdf(path)

    out = read_rainfall(path, TARGET)
    assert out.mm_per_h.shape == (3, 20, 30)
    assert out.start == dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC)
    assert list(out.times_s) == [0.0, 600.0, 1200.0]
    assert np.allclose(out.mm_per_h[0], 12.0, atol=1e-6)
    assert np.allclose(out.mm_per_h[1], 48.0, atol=1e-6)
    # the west half of the source is rainy: the grid's west edge is, its east edge is not
    from pyproj import Transformer

    lon_mid = lon[len(lon) // 2]
    to_utm = Transformer.from_crs("EPSG:4326", UTM, always_xy=True)
    x_mid, _ = to_utm.transform(lon_mid, (lat0 + lat1) / 2)
    col = int((x_mid - TARGET.x0) // TARGET.dx)
    assert 0 < col < 30
    assert np.allclose(out.mm_per_h[2][:, : max(col - 2, 1)], 6.0, atol=1e-6)
    assert np.allclose(out.mm_per_h[2][:, min(col + 2, 29) :], 0.0, atol=1e-6)


def test_geotiff_rain_with_band_times_and_depths(tmp_path):
    path = tmp_path / "forecast.tif"
    cell = 500.0
    transform = from_origin(TARGET.x0 - 1000, TARGET.y0 + 1000, cell, cell)
    depths = np.stack([np.full((12, 12), 2.0), np.full((12, 12), 5.0)]).astype("float32")
    with rasterio.open(path, "w", driver="GTiff", width=12, height=12, count=2,
                       dtype="float32", crs=UTM, transform=transform) as ds:  # fmt: skip
        ds.write(depths)
        ds.update_tags(units="mm")
        ds.update_tags(1, time="2026-06-01T08:00:00+00:00")
        ds.update_tags(2, time="2026-06-01T08:30:00+00:00")
    out = read_rainfall(path, TARGET)
    # 2 mm in the first 30 min: 4 mm/h; 5 mm in the next (as long): 10 mm/h
    assert np.allclose(out.mm_per_h[0], 4.0) and np.allclose(out.mm_per_h[1], 10.0)
    assert list(out.times_s) == [0.0, 1800.0]
    rain = gridded_rain(out.times_s, out.mm_per_h)
    assert total_mm(rain, 3600) == pytest.approx(7.0)


def test_bad_rain_files_are_refused_clearly(tmp_path):
    import xarray as xr

    bad = tmp_path / "nocrs.nc"
    xr.Dataset({"rain": (("time", "y", "x"), np.zeros((1, 3, 3)))},
               coords={"time": np.array(["2026-06-01"], dtype="datetime64[ns]"),
                       "y": [0.0, 1.0, 2.0], "x": [0.0, 1.0, 2.0]}).to_netcdf(bad)  # fmt: skip
    with pytest.raises(InvalidInput, match="no CRS"):
        read_rainfall(bad, TARGET)
    units = tmp_path / "units.nc"
    lon0, lon1, lat0, lat1 = _lonlat_box()
    xr.Dataset({"rain": (("time", "lat", "lon"), np.zeros((1, 3, 3)), {"units": "inches"})},
               coords={"time": np.array(["2026-06-01"], dtype="datetime64[ns]"),
                       "lat": np.linspace(lat0, lat1, 3),
                       "lon": np.linspace(lon0, lon1, 3)}).to_netcdf(units)  # fmt: skip
    with pytest.raises(InvalidInput, match="unknown rain units"):
        read_rainfall(units, TARGET)
    text = tmp_path / "rain.txt"
    text.write_text("12 mm")
    with pytest.raises(InvalidInput, match="not a rainfall file"):
        read_rainfall(text, TARGET)


def test_rain_that_misses_part_of_the_grid_is_refused_not_read_as_dry(tmp_path):
    """Rain unknown is not no rain: a forecast over part of the grid, or with missing cells,
    is refused (a run would otherwise clear the warnings of the part it does not cover)."""
    cell = 500.0
    times = ["2026-06-01T08:00:00+00:00", "2026-06-01T08:30:00+00:00"]

    def write(path, width, hole=False):
        values = np.full((2, 12, width), 3.0, dtype="float32")
        if hole:
            values[1, 5, 5] = np.nan
        with rasterio.open(path, "w", driver="GTiff", width=width, height=12, count=2,
                           dtype="float32", crs=UTM, nodata=np.nan,
                           transform=from_origin(TARGET.x0 - 1000, TARGET.y0 + 1000, cell,
                                                 cell)) as ds:  # fmt: skip
            ds.write(values)
            ds.update_tags(units="mm/h", times=",".join(times))
        return path

    whole = read_rainfall(write(tmp_path / "whole.tif", 12), TARGET)
    assert np.allclose(whole.mm_per_h, 3.0)
    with pytest.raises(InvalidInput, match=r"08:00Z covers 5\d\.\d % of the grid") as info:
        read_rainfall(write(tmp_path / "west.tif", 5), TARGET)  # 1.5 of the grid's 3 km
    assert "narrow the run's bounds" in info.value.hint
    with pytest.raises(InvalidInput, match=r"08:30Z covers 9\d\.\d %"):
        read_rainfall(write(tmp_path / "hole.tif", 12, hole=True), TARGET)

"""GeoTIFF import, sampling and export on the real USGS DEM of the Kentucky KY4 network."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import Transformer

from citytwin.errors import InvalidInput
from citytwin.formats.base import load_bundle
from citytwin.formats.raster import (
    open_raster,
    read_geotiff,
    sample_along_line,
    sample_points,
    write_geotiff,
)

UTM = "EPSG:32616"  # WGS 84 / UTM 16N, metres; the DEM is in EPSG:3547 (US survey feet)


@pytest.fixture
def dem_path(shared_data):
    return shared_data / "ky4" / "ky4_elevation.tif"


@pytest.fixture
def dem(dem_path) -> bytes:
    bundle = read_geotiff(dem_path, UTM)
    assert [(r.name, r.kind) for r in bundle.rasters] == [("dem", "dem")]
    assert bundle.layers == {}
    return bundle.rasters[0].data


def test_import_reprojects_into_the_twin(dem, dem_path, make_twin):
    with rasterio.open(dem_path) as src:
        assert src.crs.to_epsg() == 3547 and src.shape == (402, 587)
        source_cells = src.read(1, masked=True)
    with open_raster(dem) as ds:
        assert ds.crs.to_epsg() == 32616
        assert ds.res[0] == pytest.approx(27.73, abs=0.01)  # 90.975 ftUS
        assert ds.profile["compress"] == "deflate" and ds.profile["tiled"]
        assert ds.nodata == -999999.0
        cells = ds.read(1, masked=True)
    # Bilinear resampling keeps the range of the terrain (117.4 - 226.2 m in the source).
    assert cells.min() == pytest.approx(source_cells.min(), abs=0.5)
    assert cells.max() == pytest.approx(source_cells.max(), abs=0.5)
    assert 117 < cells.min() < cells.max() < 227
    # The rotated footprint leaves nodata corners, about as many cells as the source's.
    assert cells.mask.any() and cells.count() == pytest.approx(source_cells.count(), rel=0.02)

    store = make_twin(UTM)
    load_bundle(store, read_geotiff(dem_path, UTM, name="terrain"))
    (info,) = store.rasters()
    assert (info["name"], info["kind"], info["crs"]) == ("terrain", "dem", "EPSG:32616")


def test_resample_and_clip(dem_path):
    bounds = (618000.0, 4208000.0, 623000.0, 4211000.0)
    bundle = read_geotiff(dem_path, UTM, resolution=50, bounds=bounds)
    with open_raster(bundle.rasters[0].data) as ds:
        assert ds.res == (50.0, 50.0)
        assert ds.shape == (60, 100)
        assert tuple(ds.bounds) == bounds
        cells = ds.read(1, masked=True)
    assert not cells.mask.any() and 117 < cells.min() < cells.max() < 227

    whole = read_geotiff(dem_path, UTM, resolution=50)
    with open_raster(whole.rasters[0].data) as ds:
        assert ds.res == (50.0, 50.0)
        # 16.4 km x 11.4 km of terrain at 50 m
        assert ds.shape == (228, 329)


def test_junction_elevations_match_the_dem(dem, shared_data):
    junctions = gpd.read_file(shared_data / "ky4" / "ky4_junctions.geojson").to_crs(UTM)
    xy = np.column_stack([junctions.geometry.x, junctions.geometry.y])
    sampled = sample_points(dem, xy)
    assert np.isfinite(sampled).all()
    diff = np.abs(sampled - junctions["elevation"].to_numpy())
    # The model's junction elevations were taken from this DEM: median 0.7 m apart, 90 % within
    # 2 m (the rest are junctions on steep ground within a 28 m cell).
    assert np.median(diff) < 1.0
    assert np.percentile(diff, 90) < 2.5


def test_sample_at_an_independently_located_cell(dem, dem_path):
    row, col = 200, 300
    with rasterio.open(dem_path) as src:
        cells = src.read(1)
        x, y = src.xy(row, col)  # the cell's centre, in US survey feet
        rows, cols = np.mgrid[5 : src.height - 5 : 7, 5 : src.width - 5 : 7].reshape(2, -1)
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
    to_utm = Transformer.from_crs("EPSG:3547", UTM, always_xy=True)
    (value,) = sample_points(dem, np.array([to_utm.transform(x, y)]))
    assert value == pytest.approx(cells[row, col], abs=0.5)
    around = cells[row - 1 : row + 2, col - 1 : col + 2]
    assert around.min() <= value <= around.max()
    # Over 4,600 cell centres the reprojected DEM stays close to the source.
    diff = np.abs(sample_points(dem, np.column_stack(to_utm.transform(xs, ys))) - cells[rows, cols])
    assert np.median(diff) < 0.3 and np.percentile(diff, 99) < 2.5
    # On the source grid itself, bilinear interpolation at cell centres returns the cells.
    exact = sample_points(dem_path.read_bytes(), np.column_stack([xs, ys]))
    np.testing.assert_allclose(exact, cells[rows, cols], atol=1e-6)


def test_sampling_outside_and_at_nodata(dem):
    with open_raster(dem) as ds:
        left, bottom, right, top = ds.bounds
        corner_is_nodata = ds.read(1, window=((0, 1), (0, 1)))[0, 0] == ds.nodata
    assert corner_is_nodata
    half = 27.73 / 2
    points = np.array(
        [
            [left - 100, (bottom + top) / 2],  # outside
            [left + half, top - half],  # the nodata corner
            [(left + right) / 2, (bottom + top) / 2],  # inside
        ]
    )
    values = sample_points(dem, points)
    assert np.isnan(values[0]) and np.isnan(values[1]) and 117 < values[2] < 227


def test_profile_along_a_line(dem, shared_data):
    junctions = gpd.read_file(shared_data / "ky4" / "ky4_junctions.geojson").to_crs(UTM)
    a, b = junctions.geometry.iloc[0], junctions.geometry.iloc[1]
    line = shapely.LineString([a, b])
    distances, values = sample_along_line(dem, line, 25.0)
    assert len(distances) == int(np.ceil(line.length / 25.0)) + 1
    assert distances[0] == 0 and distances[-1] == pytest.approx(line.length)
    assert np.all(np.diff(distances) > 0) and np.all(np.diff(distances) <= 25.0 + 1e-9)
    assert np.isfinite(values).all()
    ends = sample_points(dem, np.array([[a.x, a.y], [b.x, b.y]]))
    np.testing.assert_allclose(values[[0, -1]], ends)
    with pytest.raises(InvalidInput):
        sample_along_line(dem, line, 0)


def test_export_reads_back(dem_path, make_twin, tmp_path):
    store = make_twin(UTM)
    load_bundle(store, read_geotiff(dem_path, UTM, resolution=50))
    out = tmp_path / "dem.tif"
    write_geotiff(store, "dem", out)
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32616 and ds.shape == (228, 329) and ds.res == (50.0, 50.0)
        exported = ds.read(1)
    with open_raster(store.get_raster("dem")) as ds:
        np.testing.assert_array_equal(exported, ds.read(1))


def test_source_without_crs(dem_path, tmp_path):
    with rasterio.open(dem_path) as src:
        profile = {k: v for k, v in src.profile.items() if k != "crs"}
        cells = src.read()
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", **profile) as dst:
        dst.write(cells)
    with pytest.raises(InvalidInput) as err:
        read_geotiff(bare, UTM)
    assert err.value.source == str(bare) and "crs" in err.value.hint.lower()
    with pytest.raises(InvalidInput, match="unknown CRS"):
        read_geotiff(bare, UTM, crs="EPSG:999999")
    given = read_geotiff(bare, UTM, crs="EPSG:3547")
    with open_raster(given.rasters[0].data) as ds:
        assert ds.crs.to_epsg() == 32616 and ds.shape == (410, 592)


def test_bad_files(dem_path, tmp_path, make_twin):
    data = dem_path.read_bytes()
    truncated = tmp_path / "dem.tif"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.tif"
    text.write_text("elevation, 117 m\n")
    store = make_twin(UTM)
    for bad in (truncated, text):
        with pytest.raises(InvalidInput) as err:
            load_bundle(store, read_geotiff(bad, UTM))
        assert err.value.source == str(bad) and err.value.hint
    assert store.rasters() == []
    with pytest.raises(InvalidInput, match="do not overlap"):
        read_geotiff(dem_path, UTM, bounds=(0, 0, 1000, 1000))
    with pytest.raises(InvalidInput, match="raster kind"):
        read_geotiff(dem_path, UTM, kind="height")
    with pytest.raises(InvalidInput, match="resampling"):
        read_geotiff(dem_path, UTM, resampling="smooth")

"""GeoTIFF rasters (terrain models, land cover): import into the twin's CRS, sample, export.

``read_geotiff`` reprojects a raster into the twin's CRS (optionally clipped to bounds and
resampled to a resolution) and hands it on as compressed GeoTIFF bytes, the form the store
keeps rasters in. ``open_raster``, ``sample_points`` and ``sample_along_line`` read such bytes
for the rest of the platform (ground levels of buildings and manholes, terrain profiles
along pipes) without touching a store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.transform import Affine
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, Raster, parse_crs, require_file, source_name
from citytwin.model import RASTER_KINDS
from citytwin.store import Store

_CATEGORICAL_KINDS = ("land_cover",)
"""Kinds whose cell values are classes: resampled with ``nearest`` unless told otherwise."""

_TIFF_HINT = "give a GeoTIFF (.tif); if it is one, it is truncated or damaged: copy it again"


def read_geotiff(
    path: str | Path,
    twin_crs: Any,
    *,
    name: str = "dem",
    kind: str = "dem",
    crs: Any = None,
    resolution: float | None = None,
    bounds: Sequence[float] | None = None,
    resampling: str | None = None,
) -> ImportBundle:
    """Read a GeoTIFF into the twin's CRS as raster ``name`` of ``kind``.

    ``crs`` gives the source CRS of a file that has none (or overrides a wrong one);
    ``bounds`` (minx, miny, maxx, maxy in the twin's CRS) clips the result; ``resolution``
    (metres) resamples it; ``resampling`` is a rasterio method name, by default ``bilinear``
    (``nearest`` for ``land_cover``). Nodata cells stay nodata; cells outside the source
    become nodata (NaN for float rasters without a nodata value).
    """
    p = require_file(path)
    source = source_name(p)
    if kind not in RASTER_KINDS:
        raise InvalidInput(
            f"unknown raster kind {kind!r}",
            source=source,
            hint=f"use one of {', '.join(RASTER_KINDS)}",
        )
    method = _resampling(resampling, kind, source)
    dst_crs = _rio_crs(parse_crs(twin_crs, source=source))
    if resolution is not None and not resolution > 0:
        raise InvalidInput(f"resolution must be positive, got {resolution}", source=source)
    if bounds is not None and (
        len(bounds) != 4 or not (bounds[0] < bounds[2] and bounds[1] < bounds[3])
    ):
        raise InvalidInput(
            f"bounds {tuple(bounds)} are not an area",
            source=source,
            hint="give minx, miny, maxx, maxy in the twin's CRS",
        )
    try:
        with rasterio.open(p) as ds:
            src_crs = _source_crs(ds, crs, source)
            if ds.transform.is_identity:
                raise InvalidInput(
                    "the raster is not georeferenced (no geotransform)",
                    source=source,
                    hint="georeference it first (e.g. gdal_translate -a_ullr)",
                )
            values = ds.read()
            src_transform, src_bounds, src_nodata = ds.transform, ds.bounds, ds.nodata
            tags, descriptions, units = ds.tags(), ds.descriptions, ds.units
    except RasterioError as exc:
        raise InvalidInput(
            f"not a readable raster: {exc.__cause__ or exc}", source=source, hint=_TIFF_HINT
        ) from None

    count, height, width = values.shape
    dst_transform, dst_width, dst_height = calculate_default_transform(
        src_crs, dst_crs, width, height, *src_bounds, resolution=resolution
    )
    if bounds is not None:
        res = resolution or dst_transform.a
        covered = transform_bounds(src_crs, dst_crs, *src_bounds)
        if (
            bounds[0] >= covered[2]
            or bounds[2] <= covered[0]
            or bounds[1] >= covered[3]
            or bounds[3] <= covered[1]
        ):
            raise InvalidInput(
                f"bounds {tuple(bounds)} do not overlap the raster",
                source=source,
                hint=f"the raster covers {tuple(round(v, 1) for v in covered)} in the twin's CRS",
            )
        dst_transform = Affine(res, 0.0, bounds[0], 0.0, -res, bounds[3])
        dst_width = max(1, math.ceil((bounds[2] - bounds[0]) / res - 1e-9))
        dst_height = max(1, math.ceil((bounds[3] - bounds[1]) / res - 1e-9))

    dst_nodata = _nodata(values.dtype, src_nodata)
    out = np.full((count, dst_height, dst_width), dst_nodata, dtype=values.dtype)
    try:
        reproject(
            values,
            out,
            src_transform=src_transform,
            src_crs=src_crs,
            src_nodata=src_nodata,
            dst_transform=dst_transform,
            dst_crs=dst_crs,
            dst_nodata=dst_nodata,
            resampling=method,
        )
    except RasterioError as exc:
        raise InvalidInput(
            f"can't reproject the raster into {twin_crs}: {exc}",
            source=source,
            hint="check the source CRS (pass crs=...)",
        ) from None
    data = _geotiff_bytes(out, dst_crs, dst_transform, dst_nodata, tags, descriptions, units)
    bundle = ImportBundle(source)
    bundle.rasters.append(Raster(name, kind, data))
    return bundle


def _resampling(resampling: str | None, kind: str, source: str) -> Resampling:
    name = resampling or ("nearest" if kind in _CATEGORICAL_KINDS else "bilinear")
    try:
        return Resampling[name]
    except KeyError:
        raise InvalidInput(
            f"unknown resampling method {name!r}",
            source=source,
            hint=f"use one of {', '.join(m.name for m in Resampling)}",
        ) from None


def _rio_crs(crs: CRS) -> RioCRS:
    epsg = crs.to_epsg()
    return RioCRS.from_epsg(epsg) if epsg else RioCRS.from_wkt(crs.to_wkt())


def _source_crs(ds: DatasetReader, crs: Any, source: str) -> RioCRS:
    """The source CRS: ``crs`` when given, else the file's; an error when neither is known."""
    if crs is not None:
        return _rio_crs(parse_crs(crs, source=source))
    if ds.crs is None:
        raise InvalidInput(
            "the raster has no coordinate reference system",
            source=source,
            hint="say which one with crs=EPSG:nnnn (--crs)",
        )
    try:
        return _rio_crs(CRS.from_wkt(ds.crs.to_wkt()))
    except CRSError as exc:
        raise InvalidInput(
            f"unknown CRS in the raster: {exc}",
            source=source,
            hint="give the right one with crs=EPSG:nnnn (--crs)",
        ) from None


def _nodata(dtype: np.dtype, nodata: float | None) -> float | int:
    """The nodata value of the result: the source's, else NaN (floats) or the type's extreme
    value (integers: the largest unsigned, the smallest signed)."""
    if nodata is not None:
        return nodata
    if np.issubdtype(dtype, np.floating):
        return float("nan")
    info = np.iinfo(dtype)
    return int(info.max if info.min == 0 else info.min)


def _geotiff_bytes(
    values: np.ndarray,
    crs: RioCRS,
    transform: Any,
    nodata: float | int,
    tags: dict[str, str],
    descriptions: tuple[str | None, ...],
    units: tuple[str | None, ...],
) -> bytes:
    """A tiled, deflate-compressed GeoTIFF of ``values`` (bands, rows, columns)."""
    count, height, width = values.shape
    floating = np.issubdtype(values.dtype, np.floating)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": values.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "predictor": 3 if floating else 2,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(values)
            dst.update_tags(**tags)
            for band, (description, unit) in enumerate(zip(descriptions, units, strict=True), 1):
                if description:
                    dst.set_band_description(band, description)
                if unit:
                    dst.set_band_unit(band, unit)
        return mem.read()


@contextmanager
def open_raster(data: bytes) -> Iterator[DatasetReader]:
    """A rasterio dataset reading GeoTIFF ``data`` (as the store keeps rasters)."""
    with MemoryFile(data) as mem:
        try:
            ds = mem.open()
        except RasterioError as exc:
            raise InvalidInput(
                f"the raster data is not a GeoTIFF: {exc}", hint=_TIFF_HINT
            ) from None
        with ds:
            yield ds


def sample_points(data: bytes, xy: np.ndarray, *, band: int = 1) -> np.ndarray:
    """Bilinear interpolation of a raster at points ``xy`` (n × 2, in the raster's CRS).

    Between the outermost cell centres and the raster's edge the edge cells' values hold;
    points outside the raster, or whose interpolation involves a nodata cell, give NaN.
    """
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    with open_raster(data) as ds:
        grid = ds.read(band, masked=True).astype("float64").filled(np.nan)
        inv = ~ds.transform
    x, y = xy[:, 0], xy[:, 1]
    col = inv.a * x + inv.b * y + inv.c
    row = inv.d * x + inv.e * y + inv.f
    return _bilinear(grid, row - 0.5, col - 0.5)


def _bilinear(grid: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Values of ``grid`` at fractional cell-centre coordinates (row ``r``, column ``c``)."""
    h, w = grid.shape
    inside = (r >= -0.5) & (r <= h - 0.5) & (c >= -0.5) & (c <= w - 0.5)
    r = np.clip(np.where(inside, r, 0.0), 0, h - 1)
    c = np.clip(np.where(inside, c, 0.0), 0, w - 1)
    r0 = np.minimum(np.floor(r).astype(np.intp), max(h - 2, 0))
    c0 = np.minimum(np.floor(c).astype(np.intp), max(w - 2, 0))
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = r - r0, c - c0
    values = np.stack([grid[r0, c0], grid[r0, c1], grid[r1, c0], grid[r1, c1]])
    weights = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    used = weights > 0
    out = np.where(used, values * weights, 0.0).sum(axis=0)
    out[(used & np.isnan(values)).any(axis=0) | ~inside] = np.nan
    return out


def sample_along_line(
    data: bytes, line: shapely.LineString, spacing: float, *, band: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A profile: distances along ``line`` every ``spacing`` (and its end) and the raster's
    bilinear values there."""
    if not spacing > 0:
        raise InvalidInput(f"profile spacing must be positive, got {spacing}")
    if line.is_empty:
        raise InvalidInput("the profile line is empty")
    length = line.length
    distances = np.arange(0.0, length, spacing)
    if len(distances) == 0 or distances[-1] < length:
        distances = np.append(distances, length)
    xy = shapely.get_coordinates(shapely.line_interpolate_point(line, distances))
    return distances, sample_points(data, xy, band=band)


def write_geotiff(store: Store, name: str, path: str | Path) -> None:
    """Write the twin's raster ``name`` to a GeoTIFF file."""
    Path(path).write_bytes(store.get_raster(name))


def grid_geotiff(
    values: np.ndarray,
    crs: Any,
    west: float,
    north: float,
    cell: float,
    *,
    nodata: float | None = None,
    units: str | None = "m",
) -> bytes:
    """GeoTIFF bytes (tiled, compressed) of a north-up grid of square cells."""
    from rasterio.transform import from_origin

    values = np.asarray(values)
    return _geotiff_bytes(
        values[None, :, :],
        _rio_crs(parse_crs(crs)),
        from_origin(west, north, cell, cell),
        _nodata(values.dtype, nodata),
        {},
        (None,),
        (units,),
    )

"""Gridded rainfall in time (radar composites, forecasts) from NetCDF (xarray) or a multi-band
GeoTIFF (rasterio, a band per time), resampled onto a flood grid.

A NetCDF file holds one rain variable over (time, y, x) with a CRS (a ``crs``/``spatial_ref``
grid-mapping variable's ``crs_wkt`` or ``spatial_ref``, or the ``crs`` attribute; plain
latitude/longitude coordinates mean WGS 84). A GeoTIFF holds a band per time, each band's
start in its ``time`` tag (ISO 8601) or the file's ``times`` tag (comma-separated ISO times).
Units: ``mm/h`` (also ``mm h-1``, ``mm hr-1``), ``mm/s`` / ``kg m-2 s-1``, ``m/s``, or ``mm``
(the depth of each interval). The result is the grids in mm/h and each grid's start in seconds
after the first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.crs import CRS as RioCRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from citytwin.errors import InvalidInput
from citytwin.formats.base import require_file

_PER_HOUR = {
    "mm/h": 1.0,
    "mm h-1": 1.0,
    "mm hr-1": 1.0,
    "mm/hr": 1.0,
    "mm.h-1": 1.0,
    "mm/s": 3600.0,
    "mm s-1": 3600.0,
    "kg m-2 s-1": 3600.0,
    "kg/m2/s": 3600.0,
    "m/s": 3.6e6,
    "m s-1": 3.6e6,
}
"""Factors to mm/h of the rate units understood."""


@dataclass(frozen=True)
class Grid:
    """The grid rain is resampled onto: ``shape`` (rows, cols), the upper-left corner ``x0``,
    ``y0`` and the square cell ``dx`` in ``crs``."""

    crs: str
    x0: float
    y0: float
    dx: float
    shape: tuple[int, int]

    @property
    def transform(self) -> Affine:
        return Affine(self.dx, 0.0, self.x0, 0.0, -self.dx, self.y0)


@dataclass(frozen=True)
class RainGrids:
    """Rain grids ``mm_per_h`` (nt, rows, cols) from ``times_s`` (seconds after ``start``) on."""

    start: dt.datetime
    times_s: np.ndarray
    mm_per_h: np.ndarray


def read_rainfall(path: str | Path, grid: Grid, *, variable: str | None = None) -> RainGrids:
    """Gridded rain from a NetCDF (.nc) or GeoTIFF (.tif) file, resampled onto ``grid``
    (averaged where the source is finer, bilinear where coarser)."""
    p = require_file(path)
    if p.suffix.lower() in (".nc", ".nc4", ".netcdf"):
        return _netcdf(p, grid, variable)
    if p.suffix.lower() in (".tif", ".tiff"):
        return _geotiff(p, grid)
    raise InvalidInput(f"{p.name}: not a rainfall file I read", hint="give a .nc or a .tif")


def _netcdf(path: Path, grid: Grid, variable: str | None) -> RainGrids:
    import xarray as xr

    try:
        ds = xr.open_dataset(path)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: can't read it as NetCDF ({exc})") from None
    with ds:
        name = variable or _rain_variable(ds, path)
        if name not in ds:
            raise InvalidInput(
                f"{path.name} has no variable {name!r}",
                hint=f"variables: {', '.join(map(str, ds.data_vars))}",
            )
        da = ds[name]
        tdim = next((d for d in da.dims if "time" in str(d).lower()), None)
        if tdim is None or da.ndim != 3:
            raise InvalidInput(
                f"{path.name}: {name} is not a (time, y, x) grid",
                hint=f"its dimensions are {da.dims}",
            )
        ydim, xdim = (d for d in da.dims if d != tdim)
        da = da.transpose(tdim, ydim, xdim)
        x = np.asarray(da[xdim].values, dtype=float)
        y = np.asarray(da[ydim].values, dtype=float)
        crs = _netcdf_crs(ds, da, xdim, path)
        times = np.asarray(da[tdim].values)
        if not np.issubdtype(times.dtype, np.datetime64):
            raise InvalidInput(
                f"{path.name}: the times of {name} are not dates",
                hint="give the time axis CF units, e.g. 'minutes since ...'",
            )
        values = np.asarray(da.values, dtype=float)
        units = str(da.attrs.get("units", "")).strip()
    if len(x) < 2 or len(y) < 2:
        raise InvalidInput(f"{path.name}: the rain grid needs 2 x 2 cells or more")
    dxs, dys = np.diff(x), np.diff(y)
    if not (np.allclose(dxs, dxs[0], rtol=1e-6) and np.allclose(dys, dys[0], rtol=1e-6)):
        raise InvalidInput(f"{path.name}: the rain grid is not regular")
    if dys[0] > 0:  # rows from the south: flip to north-up
        values, y = values[:, ::-1, :], y[::-1]
    cx, cy = float(dxs[0]), float(abs(dys[0]))
    src = Affine(cx, 0.0, float(x[0]) - cx / 2, 0.0, -cy, float(y[0]) + cy / 2)
    t = times.astype("datetime64[ms]").astype("int64") / 1000.0
    return _resampled(values, src, crs, t, units, grid, path.name)


def _rain_variable(ds: object, path: Path) -> str:
    names = [str(n) for n, v in ds.data_vars.items() if v.ndim == 3]  # type: ignore[attr-defined]
    rainy = [n for n in names if any(k in n.lower() for k in ("rain", "precip", "pr", "tp"))]
    pick = rainy or names
    if len(pick) != 1:
        raise InvalidInput(
            f"{path.name}: which variable is the rain?",
            hint=f"name it (variable=...) among {', '.join(names) or 'none'}",
        )
    return pick[0]


def _netcdf_crs(ds: object, da: object, xdim: str, path: Path) -> CRS:
    attrs = da.attrs  # type: ignore[attr-defined]
    mapping = attrs.get("grid_mapping")
    for holder in ([ds[mapping].attrs] if mapping and mapping in ds else []) + [attrs]:  # type: ignore[index,operator]
        for key in ("crs_wkt", "spatial_ref", "crs"):
            if key in holder:
                return CRS.from_user_input(holder[key])
    if str(xdim).lower().startswith("lon"):
        return CRS.from_epsg(4326)
    raise InvalidInput(
        f"{path.name}: the rain grid has no CRS",
        hint="add a grid mapping with crs_wkt, or use lon/lat coordinates",
    )


def _geotiff(path: Path, grid: Grid) -> RainGrids:
    try:
        with rasterio.open(path) as ds:
            values = ds.read(masked=True).filled(np.nan).astype(float)
            src, crs = ds.transform, ds.crs
            tags = ds.tags()
            band_times = [ds.tags(b).get("time") for b in range(1, ds.count + 1)]
            units = tags.get("units", "") or (ds.units[0] or "")
    except rasterio.errors.RasterioError as exc:
        raise InvalidInput(f"{path.name}: can't read it as GeoTIFF ({exc})") from None
    if crs is None:
        raise InvalidInput(f"{path.name}: the rain raster has no CRS", hint="georeference it")
    if all(band_times):
        stamps = band_times
    elif "times" in tags:
        stamps = [s.strip() for s in tags["times"].split(",")]
    else:
        raise InvalidInput(
            f"{path.name}: no times for its bands",
            hint="tag each band with 'time' or the file with 'times'",
        )
    if len(stamps) != len(values):
        raise InvalidInput(f"{path.name}: {len(stamps)} times for {len(values)} bands")
    try:
        t = np.array([dt.datetime.fromisoformat(s).timestamp() for s in stamps])
    except ValueError as exc:
        raise InvalidInput(f"{path.name}: a band time is not ISO 8601 ({exc})") from None
    return _resampled(values, src, CRS.from_wkt(crs.to_wkt()), t, units, grid, path.name)


def _resampled(
    values: np.ndarray, src: Affine, crs: CRS, t: np.ndarray, units: str, grid: Grid, name: str
) -> RainGrids:
    if np.any(np.diff(t) <= 0):
        raise InvalidInput(f"{name}: the rain times do not increase")
    key = units.lower().replace("**", "").replace("^", "")
    if key in _PER_HOUR:
        mm_h = values * _PER_HOUR[key]
    elif key == "mm":  # depth per interval: to a rate over the interval up to the next time
        if len(t) < 2:
            raise InvalidInput(f"{name}: depths need two times or more to make rates")
        widths = np.diff(np.append(t, t[-1] + (t[-1] - t[-2])))
        mm_h = values / (widths / 3600.0)[:, None, None]
    else:
        raise InvalidInput(
            f"{name}: unknown rain units {units!r}", hint=f"one of {', '.join(_PER_HOUR)} or mm"
        )
    out = np.full((len(mm_h), *grid.shape), np.nan)
    coarser = abs(src.a) > grid.dx
    for k, band in enumerate(mm_h):
        reproject(
            band,
            out[k],
            src_transform=src,
            src_crs=RioCRS.from_wkt(crs.to_wkt()),
            src_nodata=np.nan,
            dst_transform=grid.transform,
            dst_crs=RioCRS.from_user_input(grid.crs),
            dst_nodata=np.nan,
            resampling=Resampling.bilinear if coarser else Resampling.average,
        )
    missing = np.isnan(out)
    if missing.any():  # rain unknown is not no rain: a run would read it as dry
        k = int(np.argmax(missing.reshape(len(out), -1).any(axis=1)))
        share = 100.0 * (1.0 - missing[k].mean())
        raise InvalidInput(
            f"{name}: the rain at {dt.datetime.fromtimestamp(t[k], dt.UTC):%Y-%m-%d %H:%M}Z"
            f" covers {share:.1f} % of the grid's cells (the rest is outside the file or"
            " missing)",
            hint="give rain over the whole area (0 where dry), or narrow the run's bounds",
        )
    if np.any(out < -1e-9):
        raise InvalidInput(f"{name}: negative rain")
    start = dt.datetime.fromtimestamp(t[0], dt.UTC)
    return RainGrids(start, t - t[0], np.maximum(out, 0.0))

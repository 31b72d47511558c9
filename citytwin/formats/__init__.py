"""Importers and exporters of real formats, and the one entry point that picks among them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, Progress, Raster, load_bundle, require_file

FORMATS = ("vector", "geoparquet", "cityjson", "osm", "geotiff", "epanet", "swmm")


def detect_format(path: str | Path) -> str:
    """Which importer reads ``path``, from its name and, where names are ambiguous, its content."""
    p = require_file(path)
    name = p.name.lower()
    if name.endswith(".pbf"):
        return "osm"
    if name.endswith((".tif", ".tiff")):
        return "geotiff"
    if name.endswith((".parquet", ".geoparquet")):
        return "geoparquet"
    if name.endswith((".gpkg", ".shp", ".fgb", ".geojson")):
        return "vector"
    head = p.open("rb").read(65536).decode("utf-8", errors="replace")
    if name.endswith(".json"):
        return "cityjson" if '"CityJSON"' in head else "vector"
    if name.endswith(".inp"):
        upper = head.upper()
        swmm = any(
            s in upper for s in ("[CONDUITS]", "[OUTFALLS]", "[SUBCATCHMENTS]", "FLOW_UNITS")
        )
        return "swmm" if swmm else "epanet"
    raise InvalidInput(
        "can't tell the format from the file name",
        source=str(p),
        hint="name it .geojson .gpkg .shp .fgb .parquet .json (CityJSON) .osm.pbf "
        ".tif .inp, or pass --format",
    )


def read_any(
    path: str | Path, twin_crs: Any, *, fmt: str | None = None, **options: Any
) -> ImportBundle:
    """Read ``path`` with the importer for its format; ``options`` go to that importer."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}", hint=f"formats: {', '.join(FORMATS)}")
    if fmt in ("vector", "geoparquet"):
        from citytwin.formats.vector import read_vector

        return read_vector(path, twin_crs, options.pop("mappings"), **options)
    if fmt == "cityjson":
        from citytwin.formats.cityjson import read_cityjson

        return read_cityjson(path, twin_crs, **options)
    if fmt == "osm":
        from citytwin.formats.osm import read_osm

        return read_osm(path, twin_crs, **options)
    if fmt == "geotiff":
        from citytwin.formats.raster import read_geotiff

        return read_geotiff(path, twin_crs, **options)
    if fmt == "epanet":
        from citytwin.formats.epanet import read_epanet

        return read_epanet(path, twin_crs, **options)
    from citytwin.formats.swmm import read_swmm

    return read_swmm(path, twin_crs, **options)


def import_file(
    store: Any,
    path: str | Path,
    *,
    fmt: str | None = None,
    valid_from: dt.datetime | None = None,
    repair_geometry: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, int]:
    """Import one file into the twin, all or nothing; returns features written per layer.

    ``progress(done, total)`` is called as features are validated (total None if unknown).
    """
    bundle = read_any(path, store.meta.crs, fmt=fmt, **options)
    return load_bundle(
        store, bundle, valid_from=valid_from, repair_geometry=repair_geometry, progress=progress
    )


__all__ = [
    "FORMATS",
    "ImportBundle",
    "Raster",
    "detect_format",
    "import_file",
    "load_bundle",
    "read_any",
]

"""What every importer and exporter shares: the import bundle, CRS handling, loading into a store.

An importer reads a file into an ``ImportBundle``: feature frames per layer already in the
twin's CRS, rasters (GeoTIFF bytes in the twin's CRS) and documents (a network model's
non-spatial parts). ``load_bundle`` validates everything first and then writes it in one
transaction, so a bad file leaves the store exactly as it was.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError

from citytwin.errors import InvalidInput
from citytwin.model import validate_frame
from citytwin.store import Store

Progress = Callable[[int, int | None], None]
"""Progress callback: (features done, features in all or None where unknown)."""


@dataclass
class Raster:
    """A raster ready for the store: GeoTIFF bytes in the twin's CRS."""

    name: str
    kind: str
    data: bytes


FrameChunk = Callable[[], gpd.GeoDataFrame]
"""Reads one piece of a large source: a mapped frame in the twin's CRS, read when called."""


@dataclass
class ImportBundle:
    """Everything one source file brings into a twin.

    A layer holds a frame, or for sources too large to hold at once, a list of chunks that
    ``load_bundle`` reads, validates and writes a few at a time, on parallel threads.
    """

    source: str
    layers: dict[str, gpd.GeoDataFrame | Iterable[FrameChunk]] = field(default_factory=dict)
    rasters: list[Raster] = field(default_factory=list)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    locators: dict[str, Callable[[InvalidInput], InvalidInput]] = field(default_factory=dict)
    """Per layer: adds the source line to a validation error, where the format has lines."""
    expected: int | None = None
    """Features the chunked layers will bring, where the source says so (for progress)."""

    def add(self, layer_name: str, frame: gpd.GeoDataFrame) -> None:
        """Add features to a layer of the bundle (concatenating with what is there)."""
        if len(frame) == 0:
            return
        if _is_chunked(self.layers.get(layer_name)):
            raise ValueError(f"layer {layer_name} of this bundle is read in chunks")
        if layer_name in self.layers:
            frame = gpd.GeoDataFrame(
                gpd.pd.concat([self.layers[layer_name], frame], ignore_index=True),
                crs=frame.crs,
            )
        self.layers[layer_name] = frame

    def counts(self) -> dict[str, int]:
        """Features per layer (chunked layers are counted when loaded: -1 here)."""
        return {name: -1 if _is_chunked(f) else len(f) for name, f in self.layers.items()}


def parse_crs(crs: Any, *, source: str | None = None) -> CRS:
    """A pyproj CRS from user input, or a clear error naming the source."""
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise InvalidInput(
            f"unknown CRS {crs!r}: {exc}",
            source=source,
            hint="give the source CRS as an EPSG code (e.g. --crs EPSG:3547) or a PROJ string",
        ) from None


def to_twin_crs(frame: gpd.GeoDataFrame, twin_crs: Any, *, source: str) -> gpd.GeoDataFrame:
    """Reproject ``frame`` into the twin's CRS; a frame without a CRS is an error."""
    if frame.crs is None:
        raise InvalidInput(
            "the source has no coordinate reference system",
            source=source,
            hint="say which one with --crs EPSG:nnnn",
        )
    target = parse_crs(twin_crs)
    if frame.crs.equals(target):
        return frame
    out = frame.to_crs(target)
    coords_ok = np.isfinite(shapely.get_coordinates(out.geometry.to_numpy())).all()
    if not coords_ok:
        bad = ~np.array([np.isfinite(shapely.get_coordinates(g)).all() for g in out.geometry])
        pos = int(np.flatnonzero(bad)[0])
        sample = shapely.get_coordinates(frame.geometry.iloc[pos])[0].tolist()
        raise InvalidInput(
            f"coordinates {sample} can't be transformed from {frame.crs.to_string()} to "
            f"{target.to_string()}",
            source=source,
            feature=str(frame["id"].iloc[pos]) if "id" in frame.columns else f"#{pos}",
            hint="the source CRS is probably wrong: give the right one with --crs",
        )
    return out


def load_bundle(
    store: Store,
    bundle: ImportBundle,
    *,
    valid_from: dt.datetime | None = None,
    repair_geometry: bool = False,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Validate every frame of ``bundle`` and write it all in one transaction.

    Returns the number of features written per layer. On any error nothing is written.
    ``progress(done, total)`` hears of every frame or chunk validated.
    """
    total = bundle.expected
    if total is not None or not any(_is_chunked(c) for c in bundle.layers.values()):
        total = (total or 0) + sum(len(f) for f in bundle.layers.values() if not _is_chunked(f))
    done = 0

    def report(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        nonlocal done
        done += len(frame)
        if progress is not None:
            progress(done, total)
        return frame

    def validated(name: str, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        try:
            return validate_frame(
                name,
                frame,
                source=bundle.source,
                valid_from=valid_from,
                repair_geometry=repair_geometry,
            )
        except InvalidInput as exc:
            locate = bundle.locators.get(name)
            raise (locate(exc) if locate else exc) from None

    # whole frames are checked before anything is written; chunks as they stream in
    ready = {
        name: report(validated(name, f)) for name, f in bundle.layers.items() if not _is_chunked(f)
    }
    counts = {}
    with store.transaction():
        for name, content in bundle.layers.items():
            if _is_chunked(content):
                chunks = _parallel(lambda chunk, name=name: validated(name, chunk()), content)
                counts[name] = store.insert_chunks(name, map(report, chunks))
            else:
                counts[name] = store.insert(name, ready[name])
        for raster in bundle.rasters:
            store.put_raster(raster.name, raster.kind, raster.data, source=bundle.source)
        for key, body in bundle.documents.items():
            store.put_document(key, body)
    return counts


def _is_chunked(content: Any) -> bool:
    return content is not None and not isinstance(content, gpd.GeoDataFrame)


def _parallel(
    fn: Callable[[Any], gpd.GeoDataFrame], items: Iterable[Any], workers: int = 2, ahead: int = 2
) -> Iterator[gpd.GeoDataFrame]:
    """``fn`` over ``items`` on worker threads, results in order, at most ``ahead`` in flight
    (so memory stays bounded). GEOS, Arrow and DuckDB release the GIL: both cores work."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def source_name(path: str | Path) -> str:
    """How a source file is named in provenance and errors."""
    return str(Path(path))


def require_file(path: str | Path) -> Path:
    """``path`` as a Path, or a clear error if there is no such file."""
    p = Path(path)
    if not p.exists():
        raise InvalidInput("no such file", source=str(p), hint="check the path")
    if p.is_file() and p.stat().st_size == 0:
        raise InvalidInput("the file is empty", source=str(p))
    return p

"""The store interface every backend implements (embedded DuckDB, PostGIS).

Frames in, frames out: backends take and return feature frames (see ``citytwin.model``) in
the twin's CRS. Writes are transactional; ``transaction()`` groups several into one.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import geopandas as gpd
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import BASE_COLUMNS, Feature, TwinMeta, features_from_frame, layer

FILTER_OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "like", "startswith", "is_null", "not_null")


@dataclass(frozen=True)
class Filter:
    """An attribute condition: ``Filter("height", ">", 30)``."""

    attribute: str
    op: str
    value: Any = None

    def __post_init__(self) -> None:
        if self.op not in FILTER_OPS:
            raise InvalidInput(
                f"unknown filter operator {self.op!r}", hint=f"use one of {' '.join(FILTER_OPS)}"
            )

    @classmethod
    def parse(cls, text: str) -> Filter:
        """Parse ``"height>=30"``, ``"use=residential"``, ``"name~Tower%"`` (like) or
        ``"floors?"`` (not null)."""
        text = text.strip()
        if text.endswith("?"):
            return cls(text[:-1].strip(), "not_null")
        for op in ("<=", ">=", "!=", "=", "<", ">", "~"):
            if op in text:
                name, value = (s.strip() for s in text.split(op, 1))
                if not name:
                    break
                return cls(name, "like" if op == "~" else op, _literal(value))
        raise InvalidInput(
            f"can't read filter {text!r}", hint="write e.g. height>=30 or use=residential"
        )


def _literal(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


@dataclass
class Query:
    """What to read from one layer. Every condition is optional; they combine with AND."""

    layer: str
    ids: Sequence[str] | None = None
    classes: Sequence[str] | None = None
    where: Sequence[Filter] = ()
    bbox: tuple[float, float, float, float] | None = None
    intersects: shapely.Geometry | None = None
    within: tuple[shapely.Geometry, float] | None = None  # (geometry, distance in metres)
    as_of: dt.datetime | None = None  # None: the current state
    order_by: str | None = None  # attribute name, "-name" for descending
    limit: int | None = None
    offset: int = 0
    columns: Sequence[str] | None = None  # only these attributes (id, class, geometry always)

    def __post_init__(self) -> None:
        lay = layer(self.layer)
        for name in self.columns or ():
            if name not in BASE_COLUMNS and not lay.has_attribute(name):
                lay.attribute(name)  # raises with the known names
        for f in self.where:
            if f.attribute not in ("id", "class", "status") and not lay.has_attribute(f.attribute):
                lay.attribute(f.attribute)  # raises with the known names
        if self.order_by:
            name = self.order_by.lstrip("-")
            if name not in ("id", "class", "status", "valid_from") and not lay.has_attribute(name):
                lay.attribute(name)
        if (self.limit is not None and self.limit < 0) or self.offset < 0:
            raise InvalidInput("limit and offset must not be negative")


@dataclass
class LayerSummary:
    """What ``Store.summary`` says about a layer."""

    layer: str
    count: int
    classes: dict[str, int] = field(default_factory=dict)
    extent: tuple[float, float, float, float] | None = None
    sources: list[str] = field(default_factory=list)
    versions: int = 0


class Store(ABC):
    """A twin's persistent home: features with history, rasters and documents."""

    meta: TwinMeta

    # -- writing ------------------------------------------------------------------------
    @abstractmethod
    def insert(self, layer_name: str, frame: gpd.GeoDataFrame) -> int:
        """Add new features (a validated frame); fails if an id already exists."""

    def insert_chunks(self, layer_name: str, frames: Iterable[gpd.GeoDataFrame]) -> int:
        """Insert several validated frames as one batch (for imports too big for one frame)."""
        with self.transaction():
            return sum(self.insert(layer_name, f) for f in frames)

    @abstractmethod
    def update(
        self, layer_name: str, frame: gpd.GeoDataFrame, at: dt.datetime | None = None
    ) -> int:
        """Give existing features a new state from ``at`` (default now), keeping the old one."""

    @abstractmethod
    def retire(self, layer_name: str, ids: Sequence[str], at: dt.datetime | None = None) -> int:
        """End features' existence at ``at``: they drop out of the current state, not history."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """All writes inside happen together or not at all."""

    @abstractmethod
    def set_meta(self, meta: TwinMeta) -> None:
        """Replace the twin's metadata."""

    @abstractmethod
    def put_raster(self, name: str, kind: str, data: bytes, *, source: str | None = None) -> None:
        """Store a raster (GeoTIFF bytes in the twin's CRS) under ``name``."""

    @abstractmethod
    def put_document(self, key: str, body: dict[str, Any]) -> None:
        """Store a JSON document (network options, scenario settings ...) under ``key``."""

    # -- reading ------------------------------------------------------------------------
    @abstractmethod
    def query(self, q: Query) -> gpd.GeoDataFrame:
        """Features matching ``q`` as a frame."""

    @abstractmethod
    def count(self, q: Query) -> int:
        """How many features match ``q`` (limit and offset ignored)."""

    @abstractmethod
    def nearest(self, q: Query, point: shapely.Point, k: int) -> gpd.GeoDataFrame:
        """The ``k`` features matching ``q`` nearest to ``point``, nearest first, with a
        ``distance`` column."""

    @abstractmethod
    def history(self, layer_name: str, fid: str) -> gpd.GeoDataFrame:
        """Every version of a feature, oldest first."""

    @abstractmethod
    def summary(self) -> list[LayerSummary]:
        """Counts, classes, extent and sources of every non-empty layer (current state)."""

    @abstractmethod
    def get_raster(self, name: str) -> bytes:
        """The GeoTIFF bytes of raster ``name``."""

    @abstractmethod
    def rasters(self) -> list[dict[str, Any]]:
        """Name, kind, size, CRS and source of every raster."""

    @abstractmethod
    def get_document(self, key: str) -> dict[str, Any] | None:
        """The document stored under ``key``, or None."""

    @abstractmethod
    def documents(self, prefix: str = "") -> list[str]:
        """Keys of the documents starting with ``prefix``."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources."""

    # -- conveniences built on the above ------------------------------------------------
    def get(self, layer_name: str, fid: str, as_of: dt.datetime | None = None) -> Feature | None:
        """One feature by id (current, or as of a date), or None."""
        frame = self.query(Query(layer_name, ids=[fid], as_of=as_of))
        return features_from_frame(layer_name, frame)[0] if len(frame) else None

    def iter_pages(self, q: Query, page_size: int = 10_000) -> Iterator[gpd.GeoDataFrame]:
        """The features matching ``q`` page by page, in id order (keyset paging: each page
        costs the same however deep it is)."""
        if q.order_by not in (None, "id") or q.offset or q.limit is not None:
            raise InvalidInput(
                "pages run over all matches in id order",
                hint="drop order_by, offset and limit, or use query()",
            )
        last: str | None = None
        while True:
            where = [*q.where, Filter("id", ">", last)] if last is not None else list(q.where)
            page = self.query(replace(q, where=where, order_by="id", limit=page_size, offset=0))
            if len(page):
                yield page
                last = str(page["id"].iloc[-1])
            if len(page) < page_size:
                return

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

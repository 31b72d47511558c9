"""The store interface every backend implements (embedded DuckDB, PostGIS).

Frames in, frames out: backends take and return feature frames (see ``citytwin.model``) in
the twin's CRS. Writes are transactional; ``transaction()`` groups several into one.

Time series (``citytwin.sensing`` is the vocabulary): ``provision`` datastreams in bulk,
``append_observations`` in columnar batches (idempotent on (datastream, phenomenon time);
unknown datastreams and bad readings come back per row with a reason), and read them back as
raw ranges, latest values in bulk (by bbox, zone, network, property, ids), aggregates per
interval and downsampled series for charts. Times are naive UTC; intervals are half-open
``[start, end)``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import BASE_COLUMNS, Feature, TwinMeta, features_from_frame, layer
from citytwin.sensing.entities import EntityPage, EntityRequest

FILTER_OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "like", "startswith", "is_null", "not_null")
FILTER_PROPERTIES = ("id", "class", "status", "valid_from", "valid_to", "geometry")
"""What ``Query.filter`` can name in every layer, besides the layer's attributes."""


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
    order_by: str | Sequence[str] | None = None  # attribute name, "-name" descending; or several
    limit: int | None = None
    offset: int = 0
    columns: Sequence[str] | None = None  # only these attributes (id, class, geometry always)
    # versions valid at some time in [start, end] (None: open), per feature its latest in there
    during: tuple[dt.datetime | None, dt.datetime | None] | None = None
    # a CQL2 filter tree (pygeofilter; see citytwin.store.sql_filter) over FILTER_PROPERTIES
    # and the layer's attributes, its geometries in the twin's CRS
    filter: Any = None

    def __post_init__(self) -> None:
        lay = layer(self.layer)
        for name in self.columns or ():
            if name not in BASE_COLUMNS and not lay.has_attribute(name):
                lay.attribute(name)  # raises with the known names
        for f in self.where:
            if f.attribute not in ("id", "class", "status") and not lay.has_attribute(f.attribute):
                lay.attribute(f.attribute)  # raises with the known names
        for key in self.order_keys:
            name = key.lstrip("-")
            if name not in ("id", "class", "status", "valid_from") and not lay.has_attribute(name):
                lay.attribute(name)
        if self.filter is not None:
            from citytwin.store.sql_filter import properties

            known = {*FILTER_PROPERTIES, *(a.name for a in lay.attributes)}
            unknown = properties(self.filter) - known
            if unknown:
                raise InvalidInput(
                    f"layer {self.layer!r} has no {', '.join(map(repr, sorted(unknown)))}",
                    hint=f"queryables: {', '.join(sorted(known))}",
                )
        if self.during is not None and self.as_of is not None:
            raise InvalidInput("give as_of (an instant) or during (an interval), not both")
        if (self.limit is not None and self.limit < 0) or self.offset < 0:
            raise InvalidInput("limit and offset must not be negative")

    @property
    def order_keys(self) -> tuple[str, ...]:
        """``order_by`` as a tuple of keys (``"-name"`` descending)."""
        if not self.order_by:
            return ()
        return (self.order_by,) if isinstance(self.order_by, str) else tuple(self.order_by)


@dataclass(frozen=True)
class TileLayer:
    """One layer of a vector tile: the features of ``query`` (the current state or ``as_of``;
    the tile sets the window, so leave ``bbox``, ``limit`` and ``order_by`` out) under the
    layer name ``name``, with ``id``, ``class`` and ``attributes`` as properties, lines and
    polygons simplified within ``simplify`` units of the tile's grid (0: not simplified)."""

    name: str
    query: Query
    attributes: tuple[str, ...] = ()
    simplify: float = 0.0

    def __post_init__(self) -> None:
        lay = layer(self.query.layer)
        for name in self.attributes:
            lay.attribute(name)  # raises with the known names


@dataclass(frozen=True)
class Rows:
    """Rows of a query as plain tuples, in the order of ``names`` (``id``, ``class``, the
    columns asked for, ``props`` and ``geometry_3d`` as JSON text, and the geometry as WKB in
    ``wkb``): what the data services serialise, without a frame or an Arrow table between."""

    names: tuple[str, ...]
    values: list[tuple[Any, ...]]

    def __len__(self) -> int:
        return len(self.values)

    def column(self, name: str) -> list[Any]:
        """One column's values."""
        i = self.names.index(name)
        return [row[i] for row in self.values]


@dataclass(frozen=True)
class VectorTile:
    """A Mapbox Vector Tile (``data``, empty when no feature is in it) and the number of
    features of each layer in it."""

    data: bytes
    features: dict[str, int]

    @property
    def count(self) -> int:
        return sum(self.features.values())


@dataclass
class LayerSummary:
    """What ``Store.summary`` says about a layer."""

    layer: str
    count: int
    classes: dict[str, int] = field(default_factory=dict)
    extent: tuple[float, float, float, float] | None = None
    sources: list[str] = field(default_factory=list)
    versions: int = 0


@dataclass(frozen=True)
class Extent:
    """What ``Store.extent`` says about the features matching a query: how many, their
    bounding box (twin CRS) and the earliest and latest start of their current versions."""

    count: int
    bbox: tuple[float, float, float, float] | None = None
    first: dt.datetime | None = None
    last: dt.datetime | None = None


AGGREGATES = ("min", "max", "mean", "sum", "count")
"""Statistics ``Store.aggregate`` computes per interval."""
REJECT_SOURCES = ("http", "mqtt", "replay", "import")
"""Where a rejected reading came from (the dead-letter table's ``source``)."""


@dataclass(frozen=True)
class StreamQuery:
    """Which datastreams: every condition is optional; they combine with AND (a list means
    any of its values; a single string is a list of one)."""

    ids: Sequence[str] | None = None
    things: Sequence[str] | None = None
    assets: Sequence[str] | None = None
    observed_properties: Sequence[str] | None = None
    networks: Sequence[str] | None = None
    zones: Sequence[str] | None = None
    groups: Sequence[str] | None = None
    tags: Sequence[str] | None = None  # datastreams carrying any of these tags
    bbox: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("ids", "things", "assets", "observed_properties", "networks", "zones",
                     "groups", "tags"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        if self.bbox is not None:
            try:
                box = tuple(float(v) for v in self.bbox)
            except (TypeError, ValueError):
                box = ()
            if len(box) != 4 or not (box[0] <= box[2] and box[1] <= box[3]):
                raise InvalidInput(
                    f"bbox {self.bbox!r} is not minx, miny, maxx, maxy",
                    hint="give four numbers in the twin's CRS with min <= max",
                )
            object.__setattr__(self, "bbox", box)

    @classmethod
    def of(cls, select: StreamQuery | Sequence[str] | str | None) -> StreamQuery:
        """A query from a query, a list of datastream ids or one id (None: all)."""
        if select is None:
            return cls()
        if isinstance(select, StreamQuery):
            return select
        return cls(ids=select)


@dataclass
class ProvisionResult:
    """What ``Store.provision`` did."""

    created: int
    updated: int


@dataclass
class AppendResult:
    """What ``Store.append_observations`` did with a batch: rows stored, rows already stored
    (or repeated in the batch), the rejected rows (``row``: position in the batch,
    ``datastream_id``, ``phenomenon_time``, ``result``, ``reason``), and the rows stored by
    this call (``new``: ``OBSERVATION_COLUMNS`` as Arrow, what the rule engine should see
    once; ``new_rows``: their positions in the batch)."""

    inserted: int
    duplicates: int
    rejected: pd.DataFrame
    new: pa.Table | None = None
    new_rows: np.ndarray | None = None

    @property
    def accepted(self) -> int:
        """Rows that are now stored (new or already there): safe to acknowledge."""
        return self.inserted + self.duplicates


def interval_us(interval: Any, *, name: str = "interval") -> int:
    """An interval (``"5min"``, ``"1h"``, ``"1D"``, a timedelta) in microseconds: 1 s to 366 d."""
    try:
        td = pd.Timedelta(interval)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{name} {interval!r} is not a duration", hint="e.g. 5min, 15min, 1h, 1D"
        ) from None
    us = int(td / pd.Timedelta(microseconds=1))
    if not 1_000_000 <= us <= 366 * 86_400_000_000:
        raise InvalidInput(f"{name} {interval!r} must be between 1 s and 366 days")
    return us


AUDIT_COLUMNS = (
    "seq", "at", "user", "department", "key_id", "client", "method", "path", "query",
    "family", "resource", "status", "count", "duration_ms", "prev_hash", "hash",
)  # fmt: skip
"""The audit log's columns: ``seq`` (1, 2, ...), ``at`` (UTC), who (``user``, ``department``,
``key_id``, ``client`` address), what (``method``, ``path``, ``query``, ``family`` of
endpoints, ``resource``: the collection or process the path names, ``status``, ``count`` of
features returned or None), ``duration_ms``, and the chain: ``prev_hash``, ``hash``."""
AUDIT_GENESIS = "0" * 64
"""The ``prev_hash`` of the first audit entry."""


def audit_time(t: Any) -> str:
    """An audit time as the chain hashes it: ISO 8601 UTC to the microsecond, ``Z``."""
    if isinstance(t, pd.Timestamp) or not isinstance(t, dt.datetime):
        ts = pd.Timestamp(t)
        ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts
        t = ts.floor("us").to_pydatetime()
    elif t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t.isoformat(timespec="microseconds") + "Z"


def audit_digest(prev_hash: str, entry: dict[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of the entry)`` (hex): the entry's columns but
    ``prev_hash`` and ``hash``, keys sorted, no spaces (``json.dumps``), ``at`` as
    ``audit_time`` (or given as that text), ``seq``, ``status`` and ``count`` integers (or
    null), ``duration_ms`` a float rounded to 3 decimals (or null)."""
    body = {c: entry.get(c) for c in AUDIT_COLUMNS[:-2]}
    at = body["at"]
    body["at"] = at if isinstance(at, str) else audit_time(at)
    for c in ("seq", "status", "count"):
        v = body[c]
        body[c] = None if v is None or v is pd.NA or v != v else int(v)
    ms = body["duration_ms"]
    body["duration_ms"] = None if ms is None or ms != ms else round(float(ms), 3)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


@dataclass(frozen=True)
class AuditCheck:
    """What ``Store.verify_audit`` found: ``ok``, how many entries it checked, the first
    broken ``seq`` (tampered, missing, repeated or out of order) and why, and the tail."""

    ok: bool
    entries: int
    broken_seq: int | None = None
    reason: str | None = None
    tail_seq: int = 0
    tail_hash: str = AUDIT_GENESIS


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

    def query_rows(self, q: Query) -> Rows:
        """Features matching ``q`` as ``Rows`` for callers that serialise without pandas (the
        data services). Backends answer it without building a frame."""
        frame = self.query(q)
        df = pd.DataFrame(frame.drop(columns=frame.geometry.name))
        for c in ("props", "geometry_3d"):
            if c in df:
                df[c] = [None if v is None else json.dumps(v) for v in df[c]]
        df = df.astype(object).where(df.notna(), None)
        df["wkb"] = shapely.to_wkb(frame.geometry.to_numpy())
        return Rows(tuple(df.columns), list(df.itertuples(index=False, name=None)))

    @abstractmethod
    def count(self, q: Query) -> int:
        """How many features match ``q`` (limit and offset ignored)."""

    def query_page(self, q: Query) -> tuple[Rows, int]:
        """A page of features (``q``'s limit and offset) as ``Rows``, and how many match ``q``
        in all: counted only where the page cannot tell (a full page, or an empty one past the
        first). Backends may answer both in one query."""
        rows = self.query_rows(q)
        n = len(rows)
        if q.limit is None or 0 < n < q.limit or (n == 0 and q.offset == 0):
            return rows, q.offset + n
        return rows, self.count(q)

    @abstractmethod
    def extent(self, q: Query) -> Extent:
        """Count, bounding box and first/last ``valid_from`` of the features matching ``q``
        (limit and offset ignored), in one pass."""

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
    def delete_document(self, key: str) -> bool:
        """Remove the document under ``key``; whether there was one."""

    @abstractmethod
    def data_version(self, layers: Sequence[str]) -> tuple[Any, ...]:
        """A value that changes whenever a feature of one of ``layers`` is inserted, updated
        or retired (and only then): a cache key for what is derived from those layers, such
        as a loaded network graph."""

    @abstractmethod
    def close(self) -> None:
        """Release the backend's resources."""

    def tune_for_serving(self) -> None:  # noqa: B027 - a backend without such a knob keeps it
        """Prefer many concurrent small reads (a server's requests, each its own thread) to
        one large read spread over every core."""

    # -- time series ----------------------------------------------------------------------
    @abstractmethod
    def provision(
        self, datastreams: pd.DataFrame | pa.Table | Iterable[pd.DataFrame | pa.Table]
    ) -> ProvisionResult:
        """Create or update datastreams (a frame, or chunks of one; see
        ``citytwin.sensing.validate_datastreams``), all or nothing. A datastream's Thing must
        be a current feature of the ``devices`` layer: the datastream takes its location, and
        its ``asset_id`` and ``network`` where the frame leaves them out."""

    @abstractmethod
    def datastreams(self, select: StreamQuery | Sequence[str] | None = None) -> pd.DataFrame:
        """The datastreams selected (``DATASTREAM_COLUMNS`` plus ``x``, ``y``,
        ``created_at``, ``updated_at``); usable as the rule engine's ``Catalog``."""

    @abstractmethod
    def append_observations(
        self,
        batch: pd.DataFrame | pa.Table | Any,
        *,
        not_after: dt.datetime | None = None,
        dead_letter: str | None = None,
    ) -> AppendResult:
        """Store a batch (``citytwin.sensing.OBSERVATION_COLUMNS``) in one transaction and keep
        each datastream's latest value. Idempotent: a (datastream, phenomenon time) already
        stored, or repeated in the batch, is stored once (the first wins). Rows that can't be
        stored (``citytwin.sensing.REJECT_REASONS``; ``not_after`` rejects later times) come
        back in ``rejected`` and, with ``dead_letter`` (a ``REJECT_SOURCES`` name), are also
        written to the dead-letter table in the same transaction. Raises only for a batch
        without the required columns."""

    @abstractmethod
    def observations(
        self,
        select: StreamQuery | Sequence[str] | str,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        *,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Raw observations of the selected datastreams in ``[start, end)``, by datastream
        then time (``OBSERVATION_COLUMNS``)."""

    @abstractmethod
    def latest(
        self, select: StreamQuery | Sequence[str] | None = None, *, include_empty: bool = False
    ) -> pd.DataFrame:
        """The latest observation of each selected datastream: ``datastream_id``,
        ``thing_id``, ``observed_property``, ``unit``, ``asset_id``, ``network``, ``zone``,
        ``x``, ``y``, ``phenomenon_time``, ``result``, ``result_time``, ``result_quality``
        (datastreams never observed only with ``include_empty``)."""

    @abstractmethod
    def aggregate(
        self,
        select: StreamQuery | Sequence[str] | str,
        start: dt.datetime,
        end: dt.datetime,
        interval: Any = "1h",
        *,
        stats: Sequence[str] = AGGREGATES,
        per_datastream: bool = True,
        offset: Any = None,
    ) -> pd.DataFrame:
        """``stats`` (of ``AGGREGATES``) per interval over ``[start, end)``: per datastream
        (``datastream_id`` as a categorical, ``bucket``, stats; by bucket, then datastream)
        or, with ``per_datastream`` False, over all selected datastreams together
        (``bucket``, stats). Buckets start at the Unix epoch plus ``offset`` (e.g. ``"-8h"``
        for days from midnight in UTC+8); empty buckets are left out."""

    @abstractmethod
    def downsample(
        self, datastream_id: str, start: dt.datetime, end: dt.datetime, buckets: int = 1000
    ) -> pd.DataFrame:
        """A series for a chart ``buckets`` pixels wide: per bucket the first, last, lowest and
        highest observation (M4), so extremes are never lost (``phenomenon_time``,
        ``result``; at most 4 per bucket)."""

    @abstractmethod
    def append_rejected(self, records: pd.DataFrame | Sequence[dict[str, Any]]) -> int:
        """Add readings that were refused to the dead-letter table: ``payload`` (the raw
        text, bytes or a JSON-able value), ``reason``, ``source`` (``REJECT_SOURCES``),
        optionally ``datastream_id`` and ``received_at`` (default now)."""

    @abstractmethod
    def rejected(
        self,
        *,
        source: str | None = None,
        reason: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = 1000,
    ) -> pd.DataFrame:
        """Dead letters, newest first: ``received_at``, ``source``, ``reason``,
        ``datastream_id``, ``payload``."""

    # -- alarms, incidents, notifications (``citytwin.warning.alarms`` records) ------------
    @abstractmethod
    def alarms_for(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Per (``rule_id``, ``source``) of ``pairs`` the latest alarm (active or cleared, by
        ``raised_at``), as ``ALARM_COLUMNS``; pairs without alarms give no row."""

    @abstractmethod
    def save_alarms(self, alarms: pd.DataFrame, log: pd.DataFrame | None = None) -> None:
        """Upsert alarm rows (``ALARM_COLUMNS``) by ``alarm_id`` and append log rows
        (``ALARM_LOG_COLUMNS``), together. The database keeps at most one active alarm per
        (rule_id, source): a write that would make a second one raises ``InvalidInput``."""

    @abstractmethod
    def alarms(
        self,
        status: str | None = None,
        acknowledged: bool | None = None,
        rule_id: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        severity_at_least: str | None = None,
        incident_id: str | None = None,
        since: Any = None,
        limit: int | None = 1000,
    ) -> pd.DataFrame:
        """Alarms matching every condition given (``since``: raised at or after), newest
        first (``ALARM_COLUMNS``)."""

    @abstractmethod
    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        """One alarm's row as a dict, or None."""

    @abstractmethod
    def alarm_log(self, alarm_id: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        """An alarm's log (``ALARM_LOG_COLUMNS``; None: every alarm's), in the order written."""

    @abstractmethod
    def save_incidents(self, incidents: pd.DataFrame) -> None:
        """Upsert incident rows (``INCIDENT_COLUMNS``) by ``incident_id``."""

    @abstractmethod
    def incidents(
        self, status: str | None = None, since: Any = None, limit: int | None = 1000
    ) -> pd.DataFrame:
        """Incidents (``since``: opened at or after), newest first (``INCIDENT_COLUMNS``;
        ``alarm_ids`` and ``candidates`` as lists)."""

    @abstractmethod
    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """One incident's row as a dict, or None."""

    @abstractmethod
    def enqueue(self, outbox_rows: pd.DataFrame) -> int:
        """Add notifications to the outbox (``OUTBOX_COLUMNS`` but ``id``, which comes from a
        sequence in row order; ``status`` pending, ``attempts`` 0 and ``next_attempt_at`` =
        ``created_at`` where left out); returns how many."""

    @abstractmethod
    def due_notifications(self, now: Any, limit: int | None = 100) -> pd.DataFrame:
        """Pending notifications whose ``next_attempt_at`` is not after ``now``, oldest
        first."""

    @abstractmethod
    def record_delivery(
        self,
        outbox_id: int,
        *,
        at: Any,
        ok: bool,
        status_code: int | None = None,
        error: str | None = None,
        next_attempt_at: Any = None,
        dead: bool = False,
        ms: float | None = None,
    ) -> None:
        """Log a delivery attempt of a pending notification and count it: ``ok`` marks it
        delivered, ``dead`` gives up, otherwise it is tried again at ``next_attempt_at``."""

    @abstractmethod
    def notifications(self, status: str | None = None, limit: int | None = 1000) -> pd.DataFrame:
        """Outbox rows (of one status), newest first."""

    @abstractmethod
    def deliveries(self, outbox_id: int | None = None) -> pd.DataFrame:
        """Delivery attempts (``outbox_id``, ``at``, ``status_code``, ``error``, ``ms``), in
        time order."""

    @abstractmethod
    def log_ingest(self, seq: int, committed_at: Any, n: int, t_min: Any, t_max: Any) -> None:
        """Record an ingest commit: its sequence number (unique), time, rows stored and the
        span of their phenomenon times."""

    @abstractmethod
    def ingest_log(self, after_seq: int | None = None, limit: int | None = None) -> pd.DataFrame:
        """Ingest commits after ``after_seq`` (``seq``, ``committed_at``, ``n``, ``t_min``,
        ``t_max``), in order."""

    # -- SensorThings API read side (``citytwin.sensing.entities``) --------------------------
    @abstractmethod
    def sta_entities(self, request: EntityRequest) -> EntityPage:
        """Entities of one SensorThings entity set (``request.entity_set``) as a frame of
        ``FRAME_COLUMNS``: those matching the request's filter, ids, link (related to given
        parents; with ``per_parent``, paged and counted per parent, one query for all) and
        networks (the principal's), in its order then the set's default, ``skip`` then at most
        ``top + 1`` (per parent), and the count when asked. The latest observation of
        datastreams comes from the latest values, not a scan. ``InvalidInput`` for a filter or
        order that can't be evaluated (unknown property, kinds that don't compare)."""

    # -- the audit log (``AUDIT_COLUMNS``; written by ``citytwin.services.access``) ---------
    @abstractmethod
    def append_audit(self, entries: pd.DataFrame | Sequence[dict[str, Any]]) -> tuple[int, str]:
        """Append audit entries (``AUDIT_COLUMNS`` but ``seq``, ``prev_hash`` and ``hash``,
        which the store assigns in the same transaction, chaining each entry to the last:
        ``hash = audit_digest(prev_hash, entry)``). Returns the new tail (seq, hash)."""

    @abstractmethod
    def audit_entries(
        self,
        *,
        since: Any = None,
        until: Any = None,
        user: str | None = None,
        department: str | None = None,
        path_prefix: str | None = None,
        seq_from: int | None = None,
        seq_to: int | None = None,
        limit: int | None = 1000,
        newest_first: bool = False,
    ) -> pd.DataFrame:
        """Audit entries (``AUDIT_COLUMNS``, ``at`` tz-aware UTC) matching every condition
        given (``since`` <= at < ``until``; ``seq_from`` <= seq < ``seq_to``), in seq order
        (``newest_first``: reversed); an empty frame when nothing was audited yet."""

    @abstractmethod
    def audit_tail(self) -> tuple[int, str]:
        """The (seq, hash) the last append recorded (``(0, AUDIT_GENESIS)`` when empty); kept
        apart from the entries so that removing the last entries is detected too."""

    @abstractmethod
    def audit_usage(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Requests answered (status below 400) per ``service`` (the collection or process
        the path names, else the endpoint family) and ``department`` (None: anonymous), with
        ``requests`` and ``features`` (sum of counts), most requests first."""

    @abstractmethod
    def get_documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every document whose key starts with ``prefix``, by key, in one read."""

    @abstractmethod
    def vector_tile(
        self, z: int, x: int, y: int, layers: Sequence[TileLayer], *, extent: int = 4096,
        buffer: int = 64,
    ) -> VectorTile:  # fmt: skip
        """Tile ``z/x/y`` of the WebMercatorQuad grid (EPSG:3857; column ``x`` from the west,
        row ``y`` from the north) as a Mapbox Vector Tile of ``extent`` units a side: a layer
        per entry of ``layers`` with features in the tile, in the order given. Each feature
        meeting the tile plus ``buffer`` units is projected to EPSG:3857, cut to that square
        and rounded to the grid; lines and polygons less than a unit across are left out.
        ``InvalidInput`` for an address outside the grid."""

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

    def verify_audit(
        self, page_size: int = 50_000, anchor: tuple[int, str] | None = None
    ) -> AuditCheck:
        """Recompute the audit chain: every entry's hash from its fields and the previous
        hash, seqs 1, 2, ... without gaps or repeats, the recorded tail at the end (and
        ``anchor``, a (seq, hash) saved elsewhere, still in the chain). Reports the first
        broken seq."""
        tail_seq, tail_hash = self.audit_tail()
        seq, prev, checked = 0, AUDIT_GENESIS, 0

        def broken(at: int, why: str) -> AuditCheck:
            return AuditCheck(False, checked, at, why, tail_seq, tail_hash)

        lo = 1
        while True:
            page = self.audit_entries(seq_from=lo, seq_to=lo + page_size, limit=None)
            at = page["at"].dt.tz_localize(None).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            rows = page.assign(at=at).to_dict("records")
            for row in rows:
                if row["seq"] != seq + 1:
                    if row["seq"] <= seq:
                        return broken(int(row["seq"]), "the seq appears twice or out of order")
                    return broken(seq + 1, f"entries {seq + 1} to {row['seq'] - 1} are missing")
                if row["prev_hash"] != prev:
                    return broken(seq + 1, "its prev_hash is not the hash of the entry before")
                if audit_digest(prev, row) != row["hash"]:
                    return broken(seq + 1, "its fields do not match its hash (changed)")
                if anchor is not None and seq + 1 == anchor[0] and row["hash"] != anchor[1]:
                    return broken(seq + 1, "its hash differs from the anchor")
                seq, prev, checked = seq + 1, row["hash"], checked + 1
            lo += page_size
            if lo > max(tail_seq, seq) + 1:
                break
        later = self.audit_entries(seq_from=lo, limit=1)
        if seq > tail_seq or len(later):
            at = tail_seq + 1 if seq > tail_seq else int(later["seq"].iloc[0])
            return broken(at, f"entries after the recorded tail (seq {tail_seq})")
        if seq < tail_seq:
            return broken(seq + 1, f"the tail records seq {tail_seq}: entries from here missing")
        if prev != tail_hash:
            return broken(seq, "the last entry is not the recorded tail")
        if anchor is not None and anchor[0] > seq:
            return broken(seq + 1, f"the anchor's seq {anchor[0]} is past the end")
        return AuditCheck(True, checked, None, None, tail_seq, tail_hash)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The device model, after OGC SensorThings API 1.1: entities, vocabulary and batch validation.

How SensorThings maps onto the twin:

- **Thing** = one feature of the ``devices`` layer (a smart meter, a level gauge ...): its
  ``@iot.id`` is the feature id, ``properties`` carry the device class, make/model, network and
  ``feature_id`` (the model feature it is attached to: a manhole, a DMA inlet, a building).
  Things are created, moved and retired through the layer (``Store.insert/update/retire``), so
  they have the layer's history (SensorThings' HistoricalLocations).
- **Location** = the device feature's point (in the twin's CRS; the API reprojects).
- **Sensor** = the instrument type (one per device class and model), id ``sensor:<class>``.
- **ObservedProperty** = a name of ``OBSERVED_PROPERTIES`` (the rule engine's names:
  ``depth_below_cover``, ``water_level``, ``pressure`` ...), with a definition URI.
- **Datastream** = one row of the store's datastreams table: the Thing, Sensor and observed
  property, the unit of measurement (SensorThings name/symbol/definition, symbols as the rule
  engine spells them: ``m``, ``MPa``, ``m3/h``, ``%LEL`` ...), the observation type, the model
  feature it measures (``asset_id``), and ``network``/``zone``/``group``/``tags`` for bulk
  queries and rule selection. Its location is its Thing's, copied at provisioning.
  Ids are ``<thing id>:<observed property>`` by default and must be safe inside URLs and MQTT
  topics (no ``/ + # ( ) ' "``, no spaces).
- **FeatureOfInterest** = the model feature a datastream measures (``asset_id``).
- **Observation** = (datastream, phenomenonTime, result, resultTime, resultQuality); results
  are numbers (Measurement, Count, Truth as 0/1). Times are instants, stored as naive UTC.

Frames: ``validate_datastreams`` checks and normalises a datastreams frame for
``Store.provision``; ``prepare_observations`` turns a batch (DataFrame, Arrow table or mapping
of arrays) into the store's Arrow columns and gives each row a reject reason (or none) —
the checks every ingestion path shares. Pure: no store, no I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import NETWORK_TYPES, Feature

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
OBSERVATION_TYPES = {
    name: OM + name
    for name in (
        "OM_Measurement",
        "OM_CountObservation",
        "OM_TruthObservation",
        "OM_Observation",
        "OM_CategoryObservation",
    )
}
"""SensorThings observation types (short name -> definition URI)."""
NUMERIC_TYPES = ("OM_Measurement", "OM_CountObservation", "OM_TruthObservation", "OM_Observation")
"""The observation types the store keeps (numeric results; truth as 0/1)."""

QUDT_UNIT = "http://qudt.org/vocab/unit/"
QUDT_KIND = "http://qudt.org/vocab/quantitykind/"
CITYTWIN_DEF = "urn:citytwin:def:"


@dataclass(frozen=True)
class UnitOfMeasurement:
    """SensorThings unitOfMeasurement: a name, a symbol and a definition URI."""

    name: str
    symbol: str
    definition: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "symbol": self.symbol, "definition": self.definition}


def _u(name: str, symbol: str, qudt: str | None) -> tuple[str, UnitOfMeasurement]:
    return symbol, UnitOfMeasurement(
        name, symbol, QUDT_UNIT + qudt if qudt else f"{CITYTWIN_DEF}unit:{symbol}"
    )


UNITS: dict[str, UnitOfMeasurement] = dict(
    (
        _u("metre", "m", "M"),
        _u("centimetre", "cm", "CentiM"),
        _u("millimetre", "mm", "MilliM"),
        _u("pascal", "Pa", "PA"),
        _u("kilopascal", "kPa", "KiloPA"),
        _u("megapascal", "MPa", "MegaPA"),
        _u("bar", "bar", "BAR"),
        _u("millimetre per hour", "mm/h", "MilliM-PER-HR"),
        _u("millimetre per minute", "mm/min", "MilliM-PER-MIN"),
        _u("cubic metre per second", "m3/s", "M3-PER-SEC"),
        _u("cubic metre per hour", "m3/h", "M3-PER-HR"),
        _u("litre per second", "L/s", "L-PER-SEC"),
        _u("cubic metre", "m3", "M3"),
        _u("litre", "L", "L"),
        _u("percent of the lower explosive limit", "%LEL", None),
        _u("parts per million", "ppm", "PPM"),
        _u("percent", "%", "PERCENT"),
        _u("milligram per litre", "mg/L", "MilliGM-PER-L"),
        _u("nephelometric turbidity unit", "NTU", "NTU"),
        _u("degree Celsius", "°C", "DEG_C"),
        _u("count", "1", "NUM"),
    )
)
"""Units by symbol. Every symbol of the rule engine's ``citytwin.warning.rules.UNITS`` is here
(rules convert between them), plus water quality units."""


@dataclass(frozen=True)
class ObservedProperty:
    """What a datastream observes: a name, a definition URI, and its usual unit (a symbol)."""

    name: str
    definition: str
    description: str = ""
    unit: str | None = None

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "definition": self.definition, "description": self.description}


def _p(name: str, kind: str | None, unit: str, description: str) -> tuple[str, ObservedProperty]:
    definition = QUDT_KIND + kind if kind else f"{CITYTWIN_DEF}observed-property:{name}"
    return name, ObservedProperty(name, definition, description, unit)


OBSERVED_PROPERTIES: dict[str, ObservedProperty] = dict(
    (
        _p(
            "depth_below_cover",
            None,
            "m",
            "water surface below a manhole's cover (freeboard; smaller is worse)",
        ),
        _p("water_level", None, "m", "water surface level above the vertical datum"),
        _p("pressure", "Pressure", "MPa", "water or gas pressure in a main (gauge)"),
        _p("flow", "VolumeFlowRate", "m3/h", "volume flow through a pipe or an inlet"),
        _p("water_volume", "Volume", "m3", "a water meter's cumulative register"),
        _p("rain_intensity", None, "mm/h", "rainfall intensity"),
        _p(
            "gas_concentration",
            None,
            "%LEL",
            "combustible gas concentration as a share of its lower explosive limit",
        ),
        _p("free_chlorine", None, "mg/L", "free residual chlorine in drinking water"),
        _p("turbidity", "Turbidity", "NTU", "turbidity of drinking water"),
    )
)
"""The observed properties the twin knows, by name (the rule engine's names)."""


@dataclass(frozen=True)
class Sensor:
    """The instrument type behind datastreams (``sensor:<device class>`` by default)."""

    id: str
    name: str
    description: str = ""
    encoding_type: str = "text/plain"
    metadata: str = ""


@dataclass(frozen=True)
class Thing:
    """A device: a feature of the ``devices`` layer."""

    id: str
    name: str
    description: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_device(cls, device: Feature) -> Thing:
        """The Thing of a ``devices`` feature."""
        _check_device(device)
        a = device.attributes
        props = {
            "class": device.cls,
            **{k: a[k] for k in ("feature_id", "network", "model") if a.get(k) is not None},
            "status": device.status,
            **device.props,
        }
        return cls(
            device.id,
            a.get("name") or device.id,
            " ".join(str(v) for v in (device.cls.replace("_", " "), a.get("model")) if v),
            props,
        )


@dataclass(frozen=True)
class Location:
    """Where a Thing is: the device's point, in the twin's CRS."""

    id: str
    name: str
    geometry: shapely.Geometry
    description: str = ""
    encoding_type: str = "application/geo+json"

    @classmethod
    def from_device(cls, device: Feature) -> Location:
        _check_device(device)
        return cls(device.id, device.attributes.get("name") or device.id, device.geometry)


@dataclass(frozen=True)
class FeatureOfInterest:
    """The model feature a datastream measures (a manhole, a DMA inlet, a building ...)."""

    id: str
    name: str
    geometry: shapely.Geometry
    description: str = ""
    encoding_type: str = "application/geo+json"

    @classmethod
    def from_feature(cls, feature: Feature) -> FeatureOfInterest:
        name = feature.attributes.get("name") or feature.id
        return cls(feature.id, name, feature.geometry, f"{feature.layer} {feature.cls}")


def _check_device(device: Feature) -> None:
    if device.layer != "devices":
        raise InvalidInput(
            f"a Thing is a feature of the 'devices' layer, not of {device.layer!r}",
            feature=device.id,
        )


@dataclass(frozen=True)
class Datastream:
    """A time series of one observed property of one Thing (see the module's docstring)."""

    id: str
    thing_id: str
    observed_property: str
    unit: str | UnitOfMeasurement | None = None  # a symbol of UNITS, or a full unit
    observation_type: str = "OM_Measurement"
    sensor_id: str | None = None
    name: str | None = None
    description: str | None = None
    asset_id: str | None = None
    network: str | None = None
    zone: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_datastreams(datastreams_frame([self]))  # one set of rules for rows and frames

    def unit_of_measurement(self) -> UnitOfMeasurement:
        if isinstance(self.unit, UnitOfMeasurement):
            return self.unit
        symbol = self.unit or _default_unit(self.observed_property)
        return UNITS[symbol]

    def row(self) -> dict[str, Any]:
        """This datastream as a row of a datastreams frame."""
        d = asdict(self)
        d["datastream_id"] = d.pop("id")
        d["tags"] = ",".join(self.tags) or None
        if isinstance(self.unit, UnitOfMeasurement):
            d["unit"], d["unit_name"] = self.unit.symbol, self.unit.name
            d["unit_definition"] = self.unit.definition
        return d


@dataclass(frozen=True)
class Observation:
    """One reading. Times are converted to naive UTC; the result must be a finite number."""

    datastream_id: str
    phenomenon_time: dt.datetime
    result: float
    result_time: dt.datetime | None = None
    result_quality: str | None = None

    def __post_init__(self) -> None:
        _, reason = prepare_observations(observations_frame([self]))
        if reason[0] >= 0:
            raise InvalidInput(
                f"observation rejected: {REJECT_REASONS[reason[0]]}",
                feature=str(self.datastream_id),
                hint="give a datastream id, a phenomenon time and a finite number",
            )


def datastreams_frame(items: Iterable[Datastream]) -> pd.DataFrame:
    """A datastreams frame (for ``Store.provision``) of Datastream objects."""
    rows = [d.row() for d in items]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["datastream_id"])


def observations_frame(items: Iterable[Observation]) -> pd.DataFrame:
    """An observations batch (for ``Store.append_observations``) of Observation objects."""
    rows = [asdict(o) for o in items]
    return pd.DataFrame(rows, columns=list(OBSERVATION_COLUMNS))


# -- datastream frames -----------------------------------------------------------------------
DATASTREAM_COLUMNS = (
    "datastream_id",
    "name",
    "description",
    "thing_id",
    "sensor_id",
    "observed_property",
    "property_definition",
    "unit",
    "unit_name",
    "unit_definition",
    "observation_type",
    "asset_id",
    "network",
    "zone",
    "group",
    "tags",
)
"""Columns of a validated datastreams table (all strings). Required in a frame:
``datastream_id``, ``thing_id``, ``observed_property``; the rest is filled from the vocabulary
(``unit`` from the property, ``unit_name``/``unit_definition`` from the symbol,
``observation_type`` OM_Measurement) or, at provisioning, from the Thing (``asset_id``,
``network``). ``tags``: comma-separated (or a list per row)."""
_REQUIRED = ("datastream_id", "thing_id", "observed_property")
_ID_PATTERN = r"^[^\s/+#()'\"]{1,200}$"


def validate_datastreams(frame: pd.DataFrame | pa.Table, *, source: str | None = None) -> pa.Table:
    """Check a datastreams frame and return it normalised as Arrow (``DATASTREAM_COLUMNS``).

    Raises ``InvalidInput`` naming the first bad datastream: a missing or duplicate id, an id
    unsafe in URLs and MQTT topics, an unknown observed property (without a
    ``property_definition``), an unknown unit symbol (without ``unit_name`` and
    ``unit_definition``), a non-numeric observation type, an unknown network."""
    table = _arrow(frame)
    unknown = [c for c in table.column_names if c not in DATASTREAM_COLUMNS]
    if unknown:
        raise InvalidInput(
            f"unknown datastream column(s) {', '.join(unknown)}",
            source=source,
            hint=f"columns: {', '.join(DATASTREAM_COLUMNS)}",
        )
    n = table.num_rows
    cols = {
        c: _strings(table.column(c), c) if c in table.column_names else pa.nulls(n, pa.string())
        for c in DATASTREAM_COLUMNS
    }
    ids = cols["datastream_id"]

    def fail(mask: Any, message: str, hint: str | None = None, column: str | None = None):
        pos = int(np.flatnonzero(np.asarray(mask))[0])
        value = cols[column][pos].as_py() if column else None
        raise InvalidInput(
            message.format(value=value),
            source=source,
            feature=ids[pos].as_py() if ids[pos].is_valid else f"at position {pos}",
            hint=hint,
        )

    for c in _REQUIRED:
        if c not in table.column_names:
            raise InvalidInput(
                f"datastreams need a {c!r} column", source=source, hint=f"required: {_REQUIRED}"
            )
        missing = cols[c].is_null().to_numpy(zero_copy_only=False)
        if missing.any():
            fail(missing, f"datastream has no {c}")
    bad = ~pc.match_substring_regex(ids, _ID_PATTERN).to_numpy(zero_copy_only=False)
    if bad.any():
        fail(
            bad,
            "datastream id {value!r} can't be used in URLs and MQTT topics",
            "ids of 1-200 characters without spaces, / + # ( ) or quotes",
            "datastream_id",
        )
    if pc.count_distinct(ids).as_py() != n:
        dup = pd.Index(ids.to_numpy(zero_copy_only=False)).duplicated()
        fail(dup, "duplicate datastream id", "datastream ids must be unique")

    props = cols["observed_property"]
    known_prop = pc.is_in(props, pa.array(list(OBSERVED_PROPERTIES))).to_numpy(zero_copy_only=False)
    bad = ~known_prop & cols["property_definition"].is_null().to_numpy(zero_copy_only=False)
    if bad.any():
        fail(
            bad,
            "unknown observed property {value!r}",
            f"use one of {', '.join(OBSERVED_PROPERTIES)} or give a property_definition URI",
            "observed_property",
        )
    cols["property_definition"] = _fill(
        cols["property_definition"],
        props,
        {k: p.definition for k, p in OBSERVED_PROPERTIES.items()},
    )
    cols["unit"] = pc.coalesce(
        cols["unit"],
        _lookup(props, {k: p.unit for k, p in OBSERVED_PROPERTIES.items()}).cast(cols["unit"].type),
    )
    unit = cols["unit"]
    missing = unit.is_null().to_numpy(zero_copy_only=False)
    if missing.any():
        fail(missing, "datastream has no unit", "give a unit symbol such as m, MPa or m3/h")
    known_unit = pc.is_in(unit, pa.array(list(UNITS))).to_numpy(zero_copy_only=False)
    custom = ~(
        cols["unit_name"].is_null().to_numpy(zero_copy_only=False)
        | cols["unit_definition"].is_null().to_numpy(zero_copy_only=False)
    )
    bad = ~known_unit & ~custom
    if bad.any():
        fail(
            bad,
            "unknown unit {value!r}",
            f"use one of {', '.join(UNITS)} or give unit_name and unit_definition",
            "unit",
        )
    cols["unit_name"] = _fill(cols["unit_name"], unit, {k: u.name for k, u in UNITS.items()})
    cols["unit_definition"] = _fill(
        cols["unit_definition"], unit, {k: u.definition for k, u in UNITS.items()}
    )
    kind = cols["observation_type"]
    cols["observation_type"] = _fill(kind, pa.nulls(n, pa.string()), {None: "OM_Measurement"})
    bad = ~pc.is_in(kind, pa.array(NUMERIC_TYPES)).to_numpy(zero_copy_only=False)
    bad &= kind.is_valid().to_numpy(zero_copy_only=False)
    if bad.any():
        fail(
            bad,
            "observation type {value!r} is not stored",
            f"numeric results only: {', '.join(NUMERIC_TYPES)}",
            "observation_type",
        )
    network = cols["network"]
    bad = ~pc.or_(network.is_null(), pc.is_in(network, pa.array(NETWORK_TYPES))).to_numpy(
        zero_copy_only=False
    )
    if bad.any():
        fail(bad, "unknown network {value!r}", f"use one of {', '.join(NETWORK_TYPES)}", "network")
    return pa.table(cols)


def _arrow(frame: Any) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pd.DataFrame):
        df = frame.drop(columns=[frame.geometry.name]) if hasattr(frame, "geometry") else frame
        return pa.Table.from_pandas(df, preserve_index=False)
    if isinstance(frame, Mapping):
        return pa.Table.from_pandas(pd.DataFrame(dict(frame)), preserve_index=False)
    raise InvalidInput(
        f"expected a DataFrame, an Arrow table or a mapping of columns, got {type(frame).__name__}"
    )


def _strings(col: pa.ChunkedArray | pa.Array, name: str) -> pa.Array | pa.ChunkedArray:
    """A column as Arrow strings (lists joined with commas: tags)."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col  # as it is: pandas' Arrow-backed strings come without a copy
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return col
    if pa.types.is_null(col.type):
        return pa.nulls(len(col), pa.string())
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        joined = pc.binary_join(col.cast(pa.list_(pa.string())), ",")
        return pc.if_else(pc.equal(joined, ""), pa.scalar(None, pa.string()), joined)
    if pa.types.is_integer(col.type):
        return col.cast(pa.string())
    values = col.to_pylist()
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, list | tuple):
            out.append(",".join(map(str, v)) or None)
        else:
            out.append(str(v))
    return pa.array(out, pa.string())


def _lookup(keys: pa.Array, mapping: Mapping[str | None, str | None]) -> pa.Array:
    """Values of ``mapping`` for Arrow string ``keys`` (null where unknown; a ``None`` key
    gives the value for null keys)."""
    names = [k for k in mapping if k is not None]
    idx = pc.index_in(keys, pa.array(names, pa.string()))
    values = pa.array([mapping[k] for k in names] + [mapping.get(None)], pa.string())
    return values.take(pc.fill_null(idx, len(names)))


def _fill(given: pa.Array, keys: pa.Array, mapping: Mapping[str | None, str | None]) -> pa.Array:
    """``given``, where missing the value of ``mapping`` for ``keys``. All from the
    vocabulary, it comes dictionary-encoded: a few long strings (URIs) on millions of rows
    would otherwise take hundreds of MB."""
    if given.null_count < len(given):
        return pc.coalesce(given, _lookup(keys, mapping).cast(given.type))
    names = [k for k in mapping if k is not None]
    idx = pc.fill_null(pc.index_in(keys, pa.array(names, pa.string())), len(names))
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks()
    values = pa.array([mapping[k] for k in names] + [mapping.get(None)], pa.string())
    return pa.DictionaryArray.from_arrays(idx, values)


def _default_unit(prop: str) -> str:
    p = OBSERVED_PROPERTIES.get(prop)
    if p is None or p.unit is None:
        raise InvalidInput(f"no default unit for observed property {prop!r}", hint="give a unit")
    return p.unit


# -- observation batches ---------------------------------------------------------------------
OBSERVATION_COLUMNS = (
    "datastream_id",
    "phenomenon_time",
    "result",
    "result_time",
    "result_quality",
)
"""Columns of an observations batch: ``datastream_id``, ``phenomenon_time`` (datetimes or ISO
8601 strings; naive times are UTC), ``result`` (or ``value``; numbers, booleans as 0/1), and
optionally ``result_time`` and ``result_quality`` (text; dicts are written as JSON)."""
REJECT_REASONS = (
    "unknown datastream",
    "no time",
    "not a time",
    "not a number",
    "wrong type",
    "in the future",
)
"""Why a reading is not stored (codes are positions in this tuple). The first, ``no time`` and
``not a number`` are the rule engine's drop reasons too."""
UNKNOWN, NO_TIME, NOT_A_TIME, NOT_A_NUMBER, WRONG_TYPE, IN_FUTURE = range(len(REJECT_REASONS))
OBSERVATION_SCHEMA = pa.schema(
    [
        ("datastream_id", pa.string()),
        ("phenomenon_time", pa.timestamp("us")),
        ("result", pa.float64()),
        ("result_time", pa.timestamp("us")),
        ("result_quality", pa.string()),
    ]
)


def prepare_observations(
    batch: pd.DataFrame | pa.Table | Mapping[str, Any], *, not_after: Any = None
) -> tuple[pa.Table, np.ndarray]:
    """A batch as the store's Arrow columns (``OBSERVATION_SCHEMA``), and per row the code of
    the reason it can't be stored (an index into ``REJECT_REASONS``; -1: fine so far).

    Checked here, for every ingestion path alike: a phenomenon time (missing: ``no time``,
    unreadable: ``not a time``; also an unreadable ``result_time``), a finite numeric result
    (``not a number``), and, with ``not_after``, no phenomenon time later than it
    (``in the future``). Datastreams and observation types are the store's to check.
    A batch without the required columns, or with numbers for times, raises ``InvalidInput``.
    """
    df = batch if isinstance(batch, pd.DataFrame) else _frame(batch)
    for col in ("datastream_id", "phenomenon_time"):
        if col not in df:
            raise InvalidInput(
                f"observations need a {col!r} column",
                source="observations",
                hint=f"columns: {', '.join(OBSERVATION_COLUMNS)}",
            )
    value_col = "result" if "result" in df else "value"
    if value_col not in df:
        raise InvalidInput(
            "observations need a 'result' column",
            source="observations",
            hint=f"columns: {', '.join(OBSERVATION_COLUMNS)}",
        )
    n = len(df)
    reason = np.full(n, -1, np.int8)
    id_arr = _str_array(df["datastream_id"])
    reason[id_arr.is_null().to_numpy(zero_copy_only=False)] = UNKNOWN

    t, t_missing, t_bad = _times(df["phenomenon_time"], "phenomenon_time")
    reason[(reason < 0) & t_missing] = NO_TIME
    reason[(reason < 0) & t_bad] = NOT_A_TIME
    v, v_bad = _results(df[value_col])
    reason[(reason < 0) & v_bad] = NOT_A_NUMBER
    if "result_time" in df:
        rt, _, rt_bad = _times(df["result_time"], "result_time")
        reason[(reason < 0) & rt_bad] = NOT_A_TIME
    else:
        rt = np.full(n, np.datetime64("NaT"), "datetime64[us]")
    if not_after is not None:
        limit = np.datetime64(_utc_naive(not_after), "us")
        reason[(reason < 0) & (t > limit) & ~np.isnat(t)] = IN_FUTURE
    quality = _quality(df["result_quality"]) if "result_quality" in df else pa.nulls(n, pa.string())
    table = pa.table(
        [
            id_arr,
            pa.array(t, pa.timestamp("us")),
            pa.array(v, pa.float64()),
            pa.array(rt, pa.timestamp("us")),
            quality,
        ],
        schema=OBSERVATION_SCHEMA,
    )
    return table, reason


def _frame(batch: Any) -> pd.DataFrame:
    if isinstance(batch, pa.Table):
        return batch.to_pandas()
    if isinstance(batch, Mapping):
        return pd.DataFrame(dict(batch))
    raise InvalidInput(
        f"expected a DataFrame, an Arrow table or a mapping of columns, got {type(batch).__name__}",
        source="observations",
    )


def _times(s: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(datetime64[us] naive UTC, missing, unreadable) of a time column."""
    missing = s.isna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    if numeric and not missing.all():
        raise InvalidInput(
            f"{name} must be datetimes, not numbers",
            source="observations",
            hint="give datetime64 values or ISO 8601 strings (naive times are UTC)",
        )
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(s.dtype):
        s = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601").dt.tz_localize(None)
    t = s.to_numpy("datetime64[ns]").astype("datetime64[us]")
    bad = np.isnat(t) & ~missing
    return t, missing, bad


def _results(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 results, not-a-number) of a result column."""
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=float, na_value=np.nan)
    else:
        v = pd.to_numeric(
            s.map(lambda x: float(x) if isinstance(x, bool) else x), errors="coerce"
        ).to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(v)
    return np.where(bad, np.nan, v), bad


def _quality(s: pd.Series) -> pa.Array:
    if s.dtype == object:
        s = s.map(lambda q: json.dumps(q) if isinstance(q, dict | list) else q)
    return _str_array(s)


def _str_array(s: pd.Series) -> pa.Array:
    """A pandas column as Arrow strings (numbers as text, missing as null)."""
    try:
        arr = pa.array(s, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types
        arr = pa.array([None if v is None or v != v else str(v) for v in s], pa.string())
    return _strings(arr, str(s.name))


def _utc_naive(t: Any) -> dt.datetime:
    ts = pd.Timestamp(t)
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_pydatetime()


def check_result_types(result: np.ndarray, observation_type: np.ndarray) -> np.ndarray:
    """Rows whose result does not fit their datastream's observation type: a count must be a
    whole number, a truth 0 or 1 (``observation_type`` holds the type names per row)."""
    count = observation_type == "OM_CountObservation"
    truth = observation_type == "OM_TruthObservation"
    with np.errstate(invalid="ignore"):
        return (count & (result != np.round(result))) | (truth & (result != 0) & (result != 1))

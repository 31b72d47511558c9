"""SensorThings payloads in and out: one decoder for every ingestion path (HTTP, MQTT, replay).

- A single Observation (OGC SensorThings API 1.1, §8.2.5 / the MQTT create extension):
  ``{"phenomenonTime": "2026-06-01T08:00:00Z", "result": 0.31, "resultTime"?: ...,
  "resultQuality"?: ..., "Datastream"?: {"@iot.id": "DEV-000123:pressure"}}``; the datastream
  comes from the URL or topic (``Datastreams(<id>)/Observations``) or from the body.
- The DataArray bulk extension (§14.1): a list of ``{"Datastream": {"@iot.id": id},
  "components": ["phenomenonTime", "result", ...], "dataArray": [[t, v], ...]}`` — HTTP
  ``POST /v1.1/CreateObservations`` and the compact bulk MQTT topic ``v1.1/CreateObservations``.

Decoding checks the structure (a broken document raises ``InvalidInput`` naming the item and
field); the values of each reading are checked by ``prepare_observations`` and the store, so
one bad reading never spoils its batch. Encoders write the same formats (replay, benchmarks).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np
import orjson
import pandas as pd

from citytwin.errors import InvalidInput

TOPIC_PREFIX = "v1.1"
BULK_TOPIC = f"{TOPIC_PREFIX}/CreateObservations"
"""The compact bulk MQTT topic (a DataArray document per message)."""
OBSERVATION_TOPICS = f"{TOPIC_PREFIX}/+/Observations"
"""The topic filter of the SensorThings MQTT create topics (``+`` is the ``Datastreams(<id>)``
level; wildcards take whole levels)."""
COMPONENTS = ("phenomenonTime", "result", "resultTime", "resultQuality")
_ROW = ("datastream_id", "phenomenon_time", "result", "result_time", "result_quality")
_FRAME_COLUMNS = {
    "phenomenonTime": "phenomenon_time",
    "result": "result",
    "resultTime": "result_time",
    "resultQuality": "result_quality",
}
_PATH = re.compile(r"Datastreams\((?:'((?:[^']|'')*)'|([^)'/]+))\)/Observations$")


def datastream_from_path(path: str) -> str:
    """The datastream id of ``…/Datastreams(<id>)/Observations`` (a URL path or an MQTT topic;
    string ids may be quoted, ``'`` doubled inside quotes)."""
    m = _PATH.search(path)
    if m is None:
        raise InvalidInput(
            f"{path!r} is not a Datastream's Observations",
            source="observations",
            hint="use v1.1/Datastreams(<id>)/Observations",
        )
    quoted, plain = m.groups()
    return quoted.replace("''", "'") if quoted is not None else plain


def observation_path(datastream_id: str, prefix: str = TOPIC_PREFIX) -> str:
    """``v1.1/Datastreams('<id>')/Observations`` for a datastream (the MQTT create topic)."""
    return f"{prefix}/Datastreams('{datastream_id.replace(chr(39), chr(39) * 2)}')/Observations"


def loads(body: bytes | str, *, source: str) -> Any:
    """Parse JSON, or raise ``InvalidInput`` saying where it broke."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"the body is not JSON: {exc}", source=source, hint="send UTF-8 JSON"
        ) from None


def decode_observation(
    doc: Any, datastream_id: str | None = None, *, source: str = "observation"
) -> pd.DataFrame:
    """One SensorThings Observation as a one-row observations frame (the datastream from the
    path, else from the body's ``Datastream``)."""
    row = observation_row(doc, datastream_id, source=source)
    return pd.DataFrame({name: [value] for name, value in zip(_ROW, row, strict=True)})


def observation_row(
    doc: Any, datastream_id: str | None = None, *, source: str = "observation"
) -> tuple[Any, ...]:
    """One SensorThings Observation, checked as ``decode_observation`` does, as a tuple
    (datastream_id, phenomenon_time, result, result_time, result_quality); ``rows_frame`` makes
    one frame of many (many MQTT messages, one frame)."""
    if not isinstance(doc, Mapping):
        raise InvalidInput(
            "an Observation must be a JSON object",
            source=source,
            hint='e.g. {"phenomenonTime": "2026-06-01T08:00:00Z", "result": 0.31}',
        )
    ds = doc.get("Datastream")
    if datastream_id is None:
        if not isinstance(ds, Mapping) or ds.get("@iot.id") is None:
            raise InvalidInput(
                "the Observation names no Datastream",
                source=source,
                hint='add "Datastream": {"@iot.id": <id>}, or post to '
                "Datastreams(<id>)/Observations",
            )
        datastream_id = str(ds["@iot.id"])
    elif isinstance(ds, Mapping) and ds.get("@iot.id") not in (None, datastream_id):
        raise InvalidInput(
            f"the body's Datastream {ds.get('@iot.id')!r} is not the path's {datastream_id!r}",
            source=source,
        )
    for key in ("phenomenonTime", "result"):
        if key not in doc:
            raise InvalidInput(f"the Observation has no {key!r}", source=source)
    return (
        datastream_id,
        _time_text(doc["phenomenonTime"]),
        _result(doc["result"]),
        _time_text(doc.get("resultTime")),
        _quality(doc.get("resultQuality")),
    )


def rows_frame(rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """The observations frame of ``observation_row`` tuples."""
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in _ROW]
    return _observations(
        np.array(cols[0], dtype=object), dict(zip(_ROW[1:], cols[1:], strict=True))
    )


def decode_data_array(doc: Any, *, source: str = "CreateObservations") -> pd.DataFrame:
    """A DataArray document as one observations frame (rows in document order).

    Built for throughput (every bulk ingest goes through here): per item only its structure is
    looked at; the rows of consecutive items with the same components are checked, transposed
    (``zip(*rows)``) and type-checked column by column at once, and values are only visited one
    by one when a column holds something other than plain JSON numbers or strings."""
    if isinstance(doc, Mapping):
        doc = [doc]
    if not isinstance(doc, list):
        raise InvalidInput(
            "a DataArray document must be a list of {Datastream, components, dataArray}",
            source=source,
        )
    ids: list[str] = []
    sizes: list[int] = []
    cols: dict[str, list[Any]] = {c: [] for c in _FRAME_COLUMNS.values()}
    run: tuple[Any, ...] | None = None  # the components of the current run of items
    run_rows: list[Any] = []
    run_first = 0  # the index of the run's first item
    for k, item in enumerate(doc):
        if not isinstance(item, dict | Mapping):
            raise InvalidInput("each DataArray item must be a JSON object", source=f"{source}[{k}]")
        ds = item.get("Datastream")
        ident = ds.get("@iot.id") if isinstance(ds, dict | Mapping) else None
        if ident is None:
            raise InvalidInput(
                "the item names no Datastream",
                source=f"{source}[{k}]",
                hint='"Datastream": {"@iot.id": id}',
            )
        comps = item.get("components")
        rows = item.get("dataArray")
        if not isinstance(comps, list) or not isinstance(rows, list):
            raise InvalidInput(
                "the item needs 'components' and 'dataArray' lists", source=f"{source}[{k}]"
            )
        key = _components(comps, f"{source}[{k}]")
        if key != run:
            if run is not None:
                _take_rows(run, run_rows, sizes, run_first, cols, source)
            run, run_rows, run_first = key, [], k
        ids.append(str(ident))
        sizes.append(len(rows))
        run_rows.extend(rows)
    if run is not None:
        _take_rows(run, run_rows, sizes, run_first, cols, source)
    return _observations(np.repeat(np.array(ids, dtype=object), sizes), cols)


def _observations(ids: np.ndarray, cols: dict[str, list[Any]]) -> pd.DataFrame:
    """The frame of decoded columns: numbers as float64 when they all are plain JSON numbers,
    text columns as they came when they hold only strings and nulls (else value by value)."""
    results = cols["result"]
    if set(map(type, results)) <= {float, int}:
        result: Any = np.array(results, dtype=float)
    else:
        result = pd.Series([_result(v) for v in results], dtype=object)
    return pd.DataFrame(
        {
            "datastream_id": ids,
            "phenomenon_time": _text_column(cols["phenomenon_time"], _time_text),
            "result": result,
            "result_time": _text_column(cols["result_time"], _time_text),
            "result_quality": _text_column(cols["result_quality"], _quality),
        }
    )


def _components(comps: list[Any], where: str) -> tuple[str, ...]:
    """An item's components, checked (known names, each once, with phenomenonTime and
    result)."""
    try:
        return _checked_components(tuple(comps))
    except (TypeError, ValueError):  # unhashable, or not usable
        raise InvalidInput(
            f"components {comps!r} are not usable",
            source=where,
            hint=f"use phenomenonTime and result, optionally {', '.join(COMPONENTS[2:])},"
            " each once",
        ) from None


@lru_cache(maxsize=64)
def _checked_components(comps: tuple[Any, ...]) -> tuple[str, ...]:
    if (
        not all(isinstance(c, str) and c in _FRAME_COLUMNS for c in comps)
        or len(set(comps)) != len(comps)
        or not {"phenomenonTime", "result"} <= set(comps)
    ):
        raise ValueError(comps)
    return comps


def _take_rows(
    comps: tuple[str, ...],
    rows: list[Any],
    sizes: list[int],
    first: int,
    cols: dict[str, list[Any]],
    source: str,
) -> None:
    """Append the rows of a run of items (from item ``first`` on) to the columns, checking that
    every row is a list of the components' width."""
    if not rows:
        return
    width = len(comps)
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {width}:
        bad = next(i for i, r in enumerate(rows) if not isinstance(r, list) or len(r) != width)
        k = first
        while bad >= sizes[k]:
            bad -= sizes[k]
            k += 1
        raise InvalidInput(
            f"dataArray row {bad} does not have the {width} components {list(comps)}",
            source=f"{source}[{k}]",
        )
    for name, values in zip(comps, zip(*rows, strict=True), strict=True):
        cols[_FRAME_COLUMNS[name]].extend(values)
    for name, col in _FRAME_COLUMNS.items():
        if name not in comps:
            cols[col].extend(repeat(None, len(rows)))


def _text_column(values: list[Any], clean: Callable[[Any], Any]) -> pd.Series:
    """A text column as it came when it holds only strings and nulls, else value by value."""
    if not set(map(type, values)) <= {str, type(None)}:
        values = [clean(v) for v in values]
    return pd.Series(values, dtype=object)


def _time_text(t: Any) -> Any:
    """Times must be ISO 8601 text (numbers would be read as epochs by pandas): anything else
    becomes an unreadable value that ``prepare_observations`` rejects as ``not a time``."""
    if t is None or isinstance(t, str):
        return t
    return f"<{type(t).__name__}>"


def _result(v: Any) -> Any:
    """Numbers and booleans pass; anything else (text, objects) is left for the store to refuse
    as ``not a number`` (a numeric string is not a number in JSON)."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return v
    return None if v is None else float("nan")


def _quality(q: Any) -> Any:
    if isinstance(q, dict | list):
        return orjson.dumps(q).decode()
    return q


# -- encoding --------------------------------------------------------------------------------
def _iso(times: pd.Series) -> list[str]:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` per time (NaN where there is none), as
    ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` writes it; NumPy formats in C, about 4 times
    faster (each HTTP answer writes one per reading)."""
    t = pd.to_datetime(pd.Series(times), utc=True).dt.tz_convert(None)
    us = t.to_numpy("datetime64[us]")
    out = np.char.add(np.datetime_as_string(us, unit="us"), "Z").astype(object)
    out[np.isnat(us)] = np.nan
    return out.tolist()


def encode_data_array(frame: pd.DataFrame) -> bytes:
    """A DataArray document of an observations frame (``datastream_id``, ``phenomenon_time``,
    ``result``), one item per datastream."""
    if not len(frame):
        return b"[]"
    t = _iso(frame["phenomenon_time"])
    v = frame["result"].to_numpy(float).tolist()
    ids = frame["datastream_id"].to_numpy(object)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], len(order)]
    doc = [
        {
            "Datastream": {"@iot.id": sorted_ids[s]},
            "components": ["phenomenonTime", "result"],
            "dataArray": [[t[i], v[i]] for i in order[s:e]],
        }
        for s, e in zip(starts, ends, strict=True)
    ]
    return orjson.dumps(doc)


def encode_observations(frame: pd.DataFrame) -> Iterable[tuple[str, bytes]]:
    """(MQTT create topic, Observation JSON) per row of an observations frame."""
    t = _iso(frame["phenomenon_time"])
    for ds, ti, v in zip(frame["datastream_id"], t, frame["result"].tolist(), strict=True):
        yield observation_path(str(ds)), orjson.dumps({"phenomenonTime": ti, "result": v})


def observation_ids(datastream_ids: Sequence[str], times: Sequence[Any]) -> list[str]:
    """The ``@iot.id`` of stored observations: ``<datastream>@<phenomenon time, ISO 8601 Z>``
    (a reading is identified by its datastream and time, which is what makes posting
    idempotent)."""
    iso = _iso(pd.Series(times))
    return [f"{d}@{t}" for d, t in zip(datastream_ids, iso, strict=True)]

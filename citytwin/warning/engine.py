"""The early-warning engine: pure, a batch of readings and the previous state in, alarm events
and the next state out.

- ``Catalog``: the datastreams the engine knows, one row each: ``datastream_id``,
  ``observed_property``, and optionally ``unit``, ``asset_id`` (the Thing / model feature it
  measures), ``group`` (a key or a list of keys: a catchment, a DMA ...) and ``tags`` (a list,
  or a comma-separated string). Rules are bound to it once (cached on the catalog).
- ``evaluate(rules, catalog, readings, state, now=..., baseline=...)``: readings
  (``datastream_id``, ``phenomenon_time``, ``result`` or ``value``; a DataFrame or a mapping of
  arrays) in, an ``Evaluation`` out: the events, the next ``EngineState``, and the readings it
  did not take with the reason (unknown datastream, not a number, no time, duplicate, late).
- ``Engine``: holds a rule set, a catalog and the state for an ingest worker; ``reload`` swaps
  in a freshly loaded rule set.

Events (``EVENT_COLUMNS``) are ``raise``, ``escalate``, ``deescalate`` and ``clear`` of one
condition per (rule, source); the source is the datastream for single-datastream rules and the
group key for composites. There is at most one active condition per (rule, source).

Time never comes from the clock: it comes with the readings, or as ``now``. The state's
watermark is the latest of both seen so far; a ``no_data`` rule fires when the watermark is
more than ``silence`` past a datastream's last reading (or past the time the rule started
watching, for one never heard from).

Determinism: readings are sorted by (datastream, time) first, so their order within a batch
does not matter; the same readings cut into batches in time order (no batch holding readings
earlier than the previous batch's) give the same events as one batch. A reading no later than
its datastream's latest one already evaluated is a duplicate or late, and is returned in
``dropped`` rather than evaluated. Readings of several datastreams with the same time must come
in one batch for composites (whose groups combine datastreams) to see them together.

Predictions: ``predicted`` rules are not evaluated on readings but on a flood forecast's
impact table, by ``evaluate_predictions(rules, impacts, issued, active=...)``: per asset, the
predicted depth (``value``) against the rule's levels and the predicted onset of flooding
against its ``within``; events of the same shape (``PREDICTED_EVENT_COLUMNS``: the lead time,
the scenario and the asset's place besides), all at the issue time: ``raise`` for an asset
newly predicted, ``escalate`` / ``deescalate`` when an active prediction changes level,
``raise`` again at the same level (the forecast confirms it: new value and lead time), and
``clear`` for an active prediction the forecast assessed and no longer predicts.

Reload: each rule's state carries the rule's fingerprint; a rule whose fingerprint changed, or
that was removed or disabled, loses its state, and its active conditions are cleared (events
with the watermark's time); unchanged rules keep theirs. The state is aligned to a catalog and
realigned (by datastream id) when a new catalog comes, so datastreams can be added.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from citytwin.errors import InvalidInput
from citytwin.warning.baseline import MAD_TO_SIGMA, Baseline, hour_of_week
from citytwin.warning.kernels import NO_TIME, combine, rates, scan_levels, silences
from citytwin.warning.rules import (
    LEVEL_ZH,
    LEVELS,
    UNITS,
    Condition,
    Rule,
    RuleSet,
    Selector,
)

EVENTS = ("raise", "escalate", "deescalate", "clear")
EVENT_COLUMNS = (
    "time",
    "rule_id",
    "kind",
    "event",
    "source",
    "level",
    "previous_level",
    "value",
    "signal",
    "datastream_id",
    "asset_id",
    "message",
)
DROP_REASONS = ("unknown datastream", "not a number", "no time", "duplicate", "late")
_TOKENS = itertools.count(1)
_MINUTE = 60e9
_DEFAULT_MESSAGE = {
    "no_data": "{rule_name}: {source} silent for {value:.0f} min ({event}, {level_zh})",
    "composite": "{rule_name}: {source} ({event}, {level_zh})",
}
_LEVELED_MESSAGE = "{rule_name}: {source} {value:.4g} {unit} ({event}, {level_zh})"


# -- the datastream catalog ------------------------------------------------------------------
class Catalog:
    """The datastreams the engine evaluates, one row each (see the module's docstring)."""

    def __init__(self, frame: pd.DataFrame | Mapping[str, Any]) -> None:
        df = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(dict(frame))
        for col in ("datastream_id", "observed_property"):
            if col not in df:
                raise InvalidInput(
                    f"the datastream catalog has no {col!r} column",
                    source="catalog",
                    hint="columns: datastream_id, observed_property, and optionally unit, "
                    "asset_id, group, tags",
                )
        ids = pd.Index(df["datastream_id"].to_numpy(object), dtype=object)
        if not ids.is_unique:
            dup = ids[ids.duplicated()][0]
            raise InvalidInput(
                f"datastream {dup!r} is listed twice", source="catalog", feature=str(dup)
            )
        self.ids = ids
        self.id_array = ids.to_numpy(object)  # the ids as an array, once
        self.observed_property = df["observed_property"].to_numpy(object)
        self._prop_codes, self._props = pd.factorize(pd.Series(self.observed_property))
        n = len(df)
        self.unit = df["unit"].to_numpy(object) if "unit" in df else np.full(n, None, object)
        self.asset_id = df["asset_id"].to_numpy(object) if "asset_id" in df else self.id_array
        self._group = df["group"].to_numpy(object) if "group" in df else None
        self._tags = df["tags"].to_numpy(object) if "tags" in df else None
        self._tag_index: dict[str, np.ndarray] | None = None
        self.token = next(_TOKENS)
        self._bindings: dict[str, _Binding] = {}

    @classmethod
    def from_readings(cls, readings: pd.DataFrame) -> Catalog:
        """A catalog of the datastreams of a readings frame that carries their metadata
        (``observed_property`` and optionally ``unit``, ``asset_id``, ``group``, ``tags``)
        on every reading (the first reading of each datastream counts)."""
        cols = [
            c
            for c in ("datastream_id", "observed_property", "unit", "asset_id", "group", "tags")
            if c in readings
        ]
        return cls(readings[cols].drop_duplicates("datastream_id").reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, selector: Selector) -> np.ndarray:
        """The rows (ascending) of the datastreams a selector picks."""
        wanted = np.flatnonzero(np.isin(self._props, list(selector.observed_property)))
        mask = np.isin(self._prop_codes, wanted)
        if selector.datastreams:
            mask &= self.ids.isin(list(selector.datastreams))
        if selector.tags:
            tagged = np.zeros(len(self), bool)
            index = self._tags_by_name()
            for tag in selector.tags:
                tagged[index.get(tag, np.array([], np.int64))] = True
            mask &= tagged
        return np.flatnonzero(mask)

    def _tags_by_name(self) -> dict[str, np.ndarray]:
        if self._tag_index is None:
            rows, keys = _explode(self._tags, split=True)
            self._tag_index = {k: r for k, r in pd.Series(rows).groupby(keys).agg(np.array).items()}
        return self._tag_index

    def group_pairs(self, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
        """(row, group key) pairs of a composite rule's grouping."""
        if rule.group_by == "asset":
            keys = pd.Series(self.asset_id).astype(str).to_numpy(object)
            ok = pd.notna(self.asset_id)
            return np.flatnonzero(ok), keys[ok]
        if rule.group_by == "groups":
            rows, keys = [], []
            for key, ids in rule.groups:
                r = self.ids.get_indexer(list(ids))
                rows.append(r[r >= 0])
                keys.append(np.full((r >= 0).sum(), key, object))
            return np.concatenate(rows), np.concatenate(keys)
        if self._group is None:
            raise InvalidInput(
                "the datastream catalog has no 'group' column",
                source=rule.source,
                feature=f"rule {rule.id}",
                line=rule.line,
                hint="give the catalog a group per datastream (a key or a list of keys), "
                "or the rule 'group_by: asset' or 'groups: {key: [datastream ids]}'",
            )
        return _explode(self._group, split=False)


def _explode(col: np.ndarray | None, *, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row, key) pairs of a column of keys, lists of keys (or comma-separated strings with
    ``split``); missing values give no pair. Each distinct value is parsed once."""
    if col is None:
        return np.array([], np.int64), np.array([], object)
    s = pd.Series(col, dtype=object)
    try:
        codes, uniques = pd.factorize(s)
    except TypeError:  # lists: parsed one by one
        codes, uniques = np.arange(len(s)), s.to_numpy(object)
    order = np.argsort(codes, kind="stable")
    start = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
    rows, keys = [np.array([], np.int64)], [np.array([], object)]
    for u, value in enumerate(uniques):
        items = value.split(",") if split and isinstance(value, str) else value
        items = [items] if isinstance(items, str) or not hasattr(items, "__iter__") else items
        for item in items:
            if item is None or (isinstance(item, float) and math.isnan(item)):
                continue
            key = str(item).strip()
            if key:
                members = order[start[u] : start[u + 1]]
                rows.append(members)
                keys.append(np.full(len(members), key, object))
    return np.concatenate(rows).astype(np.int64), np.concatenate(keys)


# -- binding rules to a catalog --------------------------------------------------------------
@dataclass
class _Track:
    """A condition (or a no-data rule) bound to the catalog: its rows and thresholds."""

    rows: np.ndarray  # catalog rows, ascending
    local: np.ndarray  # catalog row -> local row (-1 where not bound)
    scale: np.ndarray | None  # per local row: reading -> rule unit
    raise_at: np.ndarray  # ascending, oriented (higher is worse)
    hold_at: np.ndarray
    sign: float
    # composite parts: local row -> group indices (CSR)
    member_ptr: np.ndarray | None = None
    member_grp: np.ndarray | None = None


@dataclass
class _Binding:
    tracks: list[_Track]
    group_keys: np.ndarray | None = None  # composite


def _bind(rule: Rule, catalog: Catalog) -> _Binding:
    cached = catalog._bindings.get(rule.fingerprint)
    if cached is not None:
        return cached
    if rule.kind == "composite":
        tracks = [_bind_condition(rule, c, catalog) for c in rule.conditions]
        rows, keys = catalog.group_pairs(rule)
        group_keys, gidx = np.unique(keys.astype(str), return_inverse=True)
        for tr in tracks:
            loc = tr.local[rows] if len(rows) else np.array([], np.int32)
            ok = loc >= 0
            order = np.lexsort((gidx[ok], loc[ok]))
            tr.member_grp = gidx[ok][order].astype(np.int64)
            ptr = np.zeros(len(tr.rows) + 1, np.int64)
            np.add.at(ptr, loc[ok].astype(np.int64) + 1, 1)
            tr.member_ptr = np.cumsum(ptr)
        binding = _Binding(tracks, group_keys.astype(object))
    elif rule.kind == "no_data":
        rows = catalog.rows(rule.applies_to)
        binding = _Binding([_track(rows, catalog, None, np.zeros(0), np.zeros(0), 1.0)])
    else:
        binding = _Binding([_bind_condition(rule, rule.condition, catalog)])
    catalog._bindings[rule.fingerprint] = binding
    return binding


def _bind_condition(rule: Rule, cond: Condition, catalog: Catalog) -> _Track:
    rows = catalog.rows(cond.applies_to)
    values = np.array([v for _, v in cond.levels], float)
    sign = -1.0 if cond.direction == "below" and cond.kind != "anomaly" else 1.0
    raise_at = sign * values
    scale = _unit_scale(rule, cond, catalog, rows)
    return _track(rows, catalog, scale, raise_at, raise_at - cond.hysteresis, sign)


def _track(rows, catalog, scale, raise_at, hold_at, sign) -> _Track:
    local = np.full(len(catalog), -1, np.int32)
    local[rows] = np.arange(len(rows), dtype=np.int32)
    return _Track(rows, local, scale, raise_at, hold_at, sign)


def _unit_scale(rule: Rule, cond: Condition, catalog: Catalog, rows: np.ndarray):
    """Factors from each datastream's unit to the rule's (``None``: all 1)."""
    if cond.unit is None or not len(rows):
        return None
    units = pd.Series(catalog.unit[rows], dtype=object)
    scale = np.ones(len(rows))
    for u in units.dropna().unique():
        if u == "" or u == cond.unit:
            continue
        have, want = UNITS.get(u), UNITS.get(cond.unit)
        if have is None or want is None or have[0] != want[0]:
            first = catalog.ids[rows[(units == u).to_numpy()][0]]
            raise InvalidInput(
                f"datastream {first!r} is in {u!r}, which can't be converted to the rule's "
                f"unit {cond.unit!r}",
                source=rule.source,
                feature=f"rule {rule.id}",
                line=rule.line,
                hint="fix the datastream's unit in the catalog or narrow 'applies_to'; "
                f"convertible units: {', '.join(UNITS)}",
            )
        scale[(units == u).to_numpy()] = have[1] / want[1]
    return None if (scale == 1).all() else scale


def coverage(rules: RuleSet, catalog: Catalog) -> pd.Series:
    """How many datastreams each enabled rule on readings watches (for a composite: in any
    group)."""
    out = {}
    for rule in rules.on_readings:
        b = _bind(rule, catalog)
        if rule.kind == "composite":
            out[rule.id] = sum(int((np.diff(t.member_ptr) > 0).sum()) for t in b.tracks)
        else:
            out[rule.id] = len(b.tracks[0].rows)
    return pd.Series(out, name="datastreams", dtype=np.int64)


# -- state -----------------------------------------------------------------------------------
@dataclass
class _TrackState:
    """Per bound datastream: emitted level (no-data: 1 while silent), raw hysteresis level,
    since when each raw level is held; for rates, the recent readings (``tail``)."""

    ids: np.ndarray  # datastream id per local row
    level: np.ndarray  # int8
    raw: np.ndarray  # int8
    since: np.ndarray  # int64 (n, levels)
    tail_loc: np.ndarray = field(default_factory=lambda: np.array([], np.int64))
    tail_t: np.ndarray = field(default_factory=lambda: np.array([], np.int64))
    tail_v: np.ndarray = field(default_factory=lambda: np.array([], float))

    @classmethod
    def empty(cls, ids: np.ndarray, n_levels: int) -> _TrackState:
        n = len(ids)
        return cls(
            ids,
            np.zeros(n, np.int8),
            np.zeros(n, np.int8),
            np.full((n, n_levels), NO_TIME, np.int64),
        )

    def copy(self) -> _TrackState:
        return _TrackState(
            self.ids,
            self.level.copy(),
            self.raw.copy(),
            self.since.copy(),
            self.tail_loc,
            self.tail_t,
            self.tail_v,
        )

    def realigned(self, track: _Track, catalog: Catalog) -> _TrackState:
        ids = catalog.id_array[track.rows]
        if len(ids) == len(self.ids) and (ids == self.ids).all():
            return self
        new = _TrackState.empty(ids, self.since.shape[1])
        rows = catalog.ids.get_indexer(self.ids) if len(self.ids) else np.array([], np.int64)
        loc = np.where(rows >= 0, track.local[np.maximum(rows, 0)], -1)
        ok = loc >= 0
        new.level[loc[ok]] = self.level[ok]
        new.raw[loc[ok]] = self.raw[ok]
        new.since[loc[ok]] = self.since[ok]
        if len(self.tail_loc):
            tl = loc[self.tail_loc]
            keep = tl >= 0
            order = np.lexsort((self.tail_t[keep], tl[keep]))
            new.tail_loc = tl[keep][order].astype(np.int64)
            new.tail_t = self.tail_t[keep][order]
            new.tail_v = self.tail_v[keep][order]
        return new


@dataclass
class _RuleState:
    fingerprint: str
    kind: str
    levels: tuple[str, ...]  # level names by rank (1-based in the arrays)
    tracks: list[_TrackState]
    token: int | None = None  # the catalog the arrays are aligned to
    watch_start: int = NO_TIME  # no_data: when the rule started watching
    group_keys: np.ndarray = field(default_factory=lambda: np.array([], object))
    group_active: np.ndarray = field(default_factory=lambda: np.array([], bool))

    def copy(self) -> _RuleState:
        return _RuleState(
            self.fingerprint,
            self.kind,
            self.levels,
            [t.copy() for t in self.tracks],
            self.token,
            self.watch_start,
            self.group_keys,
            self.group_active.copy(),
        )


@dataclass
class EngineState:
    """What the engine remembers between batches: the watermark, each datastream's latest
    reading time, and per rule the state of its conditions. Plain arrays; ``to_dict`` /
    ``from_dict`` turn it into JSON-able data and back."""

    watermark: int = NO_TIME  # ns
    seen_ids: np.ndarray = field(default_factory=lambda: np.array([], object))
    seen_t: np.ndarray = field(default_factory=lambda: np.array([], np.int64))
    rules: dict[str, _RuleState] = field(default_factory=dict)
    token: int | None = None  # the catalog seen_* are aligned to

    def copy(self) -> EngineState:
        return EngineState(
            self.watermark,
            self.seen_ids,
            self.seen_t.copy(),
            {k: v.copy() for k, v in self.rules.items()},
            self.token,
        )

    @property
    def watermark_time(self) -> pd.Timestamp | None:
        return None if self.watermark == NO_TIME else pd.Timestamp(self.watermark, tz="UTC")

    def to_dict(self) -> dict:
        """JSON-able: times in ns since the epoch; only datastreams with some state."""
        seen = self.seen_t != NO_TIME
        rules = {}
        for rid, rs in self.rules.items():
            tracks = []
            for ts in rs.tracks:
                keep = (ts.level > 0) | (ts.raw > 0) | (ts.since != NO_TIME).any(axis=1)
                keep[ts.tail_loc] = True
                renumber = np.cumsum(keep) - 1
                tracks.append(
                    {
                        "datastream_id": _py(ts.ids[keep]),
                        "level": ts.level[keep].tolist(),
                        "raw": ts.raw[keep].tolist(),
                        "since": ts.since[keep].tolist(),
                        "levels": ts.since.shape[1],
                        "tail": {
                            "row": renumber[ts.tail_loc].tolist(),
                            "time": ts.tail_t.tolist(),
                            "value": ts.tail_v.tolist(),
                        },
                    }
                )
            rules[rid] = {
                "fingerprint": rs.fingerprint,
                "kind": rs.kind,
                "levels": list(rs.levels),
                "watch_start": None if rs.watch_start == NO_TIME else rs.watch_start,
                "tracks": tracks,
                "active_groups": _py(rs.group_keys[rs.group_active]),
            }
        return {
            "version": 1,
            "watermark": None if self.watermark == NO_TIME else self.watermark,
            "last_seen": {
                "datastream_id": _py(np.asarray(self.seen_ids, object)[seen]),
                "time": self.seen_t[seen].tolist(),
            },
            "rules": rules,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> EngineState:
        """The state ``to_dict`` wrote (aligned to a catalog at the next evaluation)."""
        if data.get("version") != 1:
            raise InvalidInput(
                f"unknown engine state version {data.get('version')!r}", source="state"
            )
        rules = {}
        for rid, r in data["rules"].items():
            tracks = []
            for tr in r["tracks"]:
                ids = np.array(tr["datastream_id"], object)
                tracks.append(
                    _TrackState(
                        ids,
                        np.array(tr["level"], np.int8),
                        np.array(tr["raw"], np.int8),
                        np.array(tr["since"], np.int64).reshape(len(ids), tr["levels"]),
                        np.array(tr["tail"]["row"], np.int64),
                        np.array(tr["tail"]["time"], np.int64),
                        np.array(tr["tail"]["value"], float),
                    )
                )
            active = np.array(r["active_groups"], object)
            rules[rid] = _RuleState(
                r["fingerprint"],
                r["kind"],
                tuple(r["levels"]),
                tracks,
                None,
                NO_TIME if r["watch_start"] is None else int(r["watch_start"]),
                active,
                np.ones(len(active), bool),
            )
        seen = data["last_seen"]
        return cls(
            NO_TIME if data["watermark"] is None else int(data["watermark"]),
            np.array(seen["datastream_id"], object),
            np.array(seen["time"], np.int64),
            rules,
            None,
        )


def _py(a: np.ndarray) -> list:
    return [x.item() if isinstance(x, np.generic) else x for x in a]


def active_conditions(state: EngineState) -> pd.DataFrame:
    """The active conditions of a state: ``rule_id``, ``source``, ``level``."""
    out = []
    for rid, rs in state.rules.items():
        if rs.kind == "composite":
            for key in rs.group_keys[rs.group_active]:
                out.append((rid, key, rs.levels[0]))
        else:
            ts = rs.tracks[0]
            for i in np.flatnonzero(ts.level > 0):
                out.append((rid, ts.ids[i], rs.levels[ts.level[i] - 1]))
    return pd.DataFrame(out, columns=["rule_id", "source", "level"])


# -- readings --------------------------------------------------------------------------------
def _times(frame: pd.DataFrame) -> np.ndarray:
    """``phenomenon_time`` as int64 ns UTC (naive times are UTC); NaT -> ``NO_TIME``."""
    if "phenomenon_time" not in frame:
        raise InvalidInput("readings need a 'phenomenon_time' column", source="readings")
    col = frame["phenomenon_time"]
    if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        if len(col):
            raise InvalidInput(
                "phenomenon_time must be datetimes, not numbers",
                source="readings",
                hint="give datetime64 values or ISO 8601 strings (naive times are UTC)",
            )
        return np.array([], np.int64)
    if not isinstance(col.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(
        col.dtype
    ):
        try:
            col = pd.to_datetime(col, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"phenomenon_time is not a time: {exc}",
                source="readings",
                hint="give datetime64 values or ISO 8601 strings",
            ) from None
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    return col.dt.as_unit("ns").to_numpy().view(np.int64)


def _values(frame: pd.DataFrame) -> np.ndarray:
    name = "result" if "result" in frame else "value"
    if name not in frame:
        raise InvalidInput("readings need a 'result' (or 'value') column", source="readings")
    try:
        return frame[name].to_numpy(dtype=float, na_value=np.nan)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"readings' {name!r} must be numbers", source="readings", hint="numeric results only"
        ) from None


def _ns(when: Any) -> int:
    t = pd.Timestamp(when)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return int(t.as_unit("ns").value)


@dataclass
class _Batch:
    rows: np.ndarray  # catalog rows, sorted with t
    t: np.ndarray
    v: np.ndarray
    last: np.ndarray  # index of each row's last reading (run ends)


def _prepare(
    readings: pd.DataFrame | Mapping[str, Any], catalog: Catalog, seen_t: np.ndarray
) -> tuple[_Batch, pd.DataFrame]:
    frame = readings if isinstance(readings, pd.DataFrame) else pd.DataFrame(dict(readings))
    if "datastream_id" not in frame:
        raise InvalidInput("readings need a 'datastream_id' column", source="readings")
    ds = frame["datastream_id"].to_numpy()
    t = _times(frame)
    v = _values(frame)
    rows = catalog.ids.get_indexer(ds) if len(ds) else np.array([], np.int64)
    reason = np.full(len(ds), -1, np.int8)
    reason[rows < 0] = 0
    reason[(reason < 0) & ~np.isfinite(v)] = 1
    reason[(reason < 0) & (t == NO_TIME)] = 2
    keep = np.flatnonzero(reason < 0)
    order = keep[np.lexsort((v[keep], t[keep], rows[keep]))]
    r, tt = rows[order], t[order]
    dup = np.zeros(len(order), bool)
    dup[1:] = (r[1:] == r[:-1]) & (tt[1:] == tt[:-1])
    late = ~dup & (tt <= seen_t[r])
    reason[order[dup]] = 3
    reason[order[late]] = 4
    order = order[~dup & ~late]
    r = rows[order]
    ends = np.flatnonzero(np.append(r[1:] != r[:-1], True)) if len(r) else np.array([], int)
    batch = _Batch(r.astype(np.int64), t[order], v[order], ends)
    bad = np.flatnonzero(reason >= 0)
    dropped = pd.DataFrame(
        {
            "datastream_id": ds[bad],
            "phenomenon_time": pd.to_datetime(t[bad], utc=True),
            "reason": np.array(DROP_REASONS, object)[reason[bad]],
        }
    )
    return batch, dropped


# -- evaluation ------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What one batch gave: events (``EVENT_COLUMNS``, in time order), the next state, and the
    readings not evaluated with the reason (``DROP_REASONS``)."""

    events: pd.DataFrame
    state: EngineState
    dropped: pd.DataFrame
    evaluated: int


class _Events:
    """Event columns gathered rule by rule, as arrays."""

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []

    def add(self, rule_id, kind, rank, t, event, source, level, prev, value, sig, ds, asset, msg):
        if len(t):
            self.parts.append(
                dict(
                    rank=np.full(len(t), rank),
                    time=t,
                    rule_id=np.full(len(t), rule_id, object),
                    kind=np.full(len(t), kind, object),
                    event=np.asarray(event, np.int8),
                    source=np.asarray(source, object),
                    level=np.asarray(level, object),
                    previous_level=np.asarray(prev, object),
                    value=np.asarray(value, float),
                    signal=np.asarray(sig, float),
                    datastream_id=np.asarray(ds, object),
                    asset_id=np.asarray(asset, object),
                    message=np.full(len(t), msg, object),
                )
            )

    def frame(self, rules: RuleSet, units: dict[str, str]) -> pd.DataFrame:
        if not self.parts:
            return _empty_events()
        cols = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        # object columns stay object (ids may be numbers; a missing level is None)
        df = pd.DataFrame({k: pd.Series(v, dtype=v.dtype) for k, v in cols.items()})
        df["sort_source"] = df["source"].astype(str)
        df = df.sort_values(["time", "rank", "sort_source"], kind="stable").reset_index(drop=True)
        df["time"] = pd.to_datetime(df["time"].to_numpy(), utc=True)
        df["event"] = pd.Series(np.array(EVENTS, object)[df["event"].to_numpy()], dtype=object)
        by_id = {r.id: r for r in rules.rules}
        messages = [
            _message(by_id.get(row.rule_id), row.message, row, units.get(row.rule_id, ""))
            for row in df.itertuples(index=False)
        ]
        df["message"] = pd.Series(messages, dtype=object)
        return df[list(EVENT_COLUMNS)].reset_index(drop=True)


def _empty_events() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series([], dtype=object) for c in EVENT_COLUMNS})
    df["time"] = pd.to_datetime(df["time"], utc=True)
    df["value"] = df["value"].astype(float)
    df["signal"] = df["signal"].astype(float)
    return df


def _message(rule: Rule | None, template: str, row: Any, unit: str, **extra: Any) -> str:
    fields = dict(
        rule_id=row.rule_id,
        rule_name=(rule.name if rule else "") or row.rule_id,
        event=row.event,
        source=row.source,
        asset_id=row.asset_id,
        datastream_id=row.datastream_id,
        level=row.level or "",
        level_zh=LEVEL_ZH.get(row.level or row.previous_level, ""),
        previous_level=row.previous_level or "",
        value=row.value,
        signal=row.signal,
        unit=unit,
        time=row.time,
        **extra,
    )
    try:
        return template.format(**fields)
    except (ValueError, TypeError, KeyError, IndexError):
        return f"{fields['rule_name']}: {row.source} {row.event} {row.level or ''}".strip()


def evaluate(
    rules: RuleSet,
    catalog: Catalog,
    readings: pd.DataFrame | Mapping[str, Any],
    state: EngineState | None = None,
    *,
    now: Any = None,
    baseline: Baseline | None = None,
) -> Evaluation:
    """Evaluate a batch of readings against the enabled rules on readings (``predicted``
    rules wait for forecasts: ``evaluate_predictions``), continuing from ``state``
    (``None``: a fresh start). ``now`` (optional) moves the watermark for ``no_data`` rules
    past the latest reading; ``baseline`` is needed by ``anomaly`` rules. Pure: the given
    state is not changed."""
    st = EngineState() if state is None else state.copy()
    out = _Events()
    ranks = {r.id: k for k, r in enumerate(rules.on_readings)}
    _reconcile(rules, st, catalog, out, len(ranks))
    if st.token != catalog.token:
        st.seen_ids, st.seen_t = _realign_seen(st, catalog)
        st.token = catalog.token
    batch, dropped = _prepare(readings, catalog, st.seen_t)
    marks = [st.watermark]
    if len(batch.t):
        marks.append(int(batch.t.max()))
    if now is not None:
        marks.append(_ns(now))
    st.watermark = max(marks)
    units = {}
    for rule in rules.on_readings:
        binding = _bind(rule, catalog)
        rs = _rule_state(rule, binding, st, catalog)
        if rule.kind == "no_data":
            _no_data(rule, ranks[rule.id], binding, rs, batch, st, catalog, out)
        elif rule.kind == "composite":
            _composite(rule, ranks[rule.id], binding, rs, batch, catalog, baseline, out)
        else:
            units[rule.id] = rule.condition.unit or ""
            _leveled_rule(rule, ranks[rule.id], binding, rs, batch, catalog, baseline, out)
    if len(batch.last):
        st.seen_t[batch.rows[batch.last]] = batch.t[batch.last]
    return Evaluation(out.frame(rules, units), st, dropped, len(batch.t))


def _realign_seen(st: EngineState, catalog: Catalog) -> tuple[np.ndarray, np.ndarray]:
    seen = np.full(len(catalog), NO_TIME, np.int64)
    if len(st.seen_ids):
        rows = catalog.ids.get_indexer(st.seen_ids)
        ok = rows >= 0
        seen[rows[ok]] = st.seen_t[ok]
    return catalog.id_array, seen


def _rule_state(rule: Rule, binding: _Binding, st: EngineState, catalog: Catalog) -> _RuleState:
    rs = st.rules.get(rule.id)
    if rs is None:
        if rule.kind == "composite":
            levels = (rule.level,)
            n_levels = [1] * len(rule.conditions)
        elif rule.kind == "no_data":
            levels, n_levels = (rule.level,), [0]
        else:
            levels = tuple(name for name, _ in rule.condition.levels)
            n_levels = [len(levels)]
        rs = _RuleState(
            rule.fingerprint,
            rule.kind,
            levels,
            [_TrackState.empty(np.array([], object), k) for k in n_levels],
        )
        st.rules[rule.id] = rs
    if rs.token != catalog.token:
        rs.tracks = [
            ts.realigned(tr, catalog) for ts, tr in zip(rs.tracks, binding.tracks, strict=True)
        ]
        if binding.group_keys is not None:
            was = set(rs.group_keys[rs.group_active].tolist())
            rs.group_keys = binding.group_keys
            rs.group_active = np.array([k in was for k in binding.group_keys], bool)
        rs.token = catalog.token
    return rs


def _reconcile(rules: RuleSet, st: EngineState, catalog: Catalog, out: _Events, rank: int):
    """Drop the state of rules that changed, were removed or disabled; clear what they had
    active (at the watermark)."""
    current = {r.id: r.fingerprint for r in rules.on_readings}
    for rid in list(st.rules):
        rs = st.rules[rid]
        if current.get(rid) == rs.fingerprint:
            continue
        why = "rule removed" if rid not in current else "rule changed"
        if rs.kind == "composite":
            src = rs.group_keys[rs.group_active]
            levels = np.full(len(src), rs.levels[0], object)
            ds = asset = src
        else:
            ts = rs.tracks[0]
            on = np.flatnonzero(ts.level > 0)
            src = ts.ids[on]
            levels = np.array(rs.levels, object)[ts.level[on] - 1]
            rows = catalog.ids.get_indexer(src) if len(src) else np.array([], np.int64)
            asset = np.where(rows >= 0, catalog.asset_id[np.maximum(rows, 0)], None)
            ds = src
        n = len(src)
        out.add(
            rid,
            rs.kind,
            rank,
            np.full(n, st.watermark, np.int64),
            np.full(n, 3),
            src,
            np.full(n, None, object),
            levels,
            np.full(n, np.nan),
            np.full(n, np.nan),
            ds,
            asset,
            f"{{rule_id}}: {{source}} cleared, {why} (condition reset)",
        )
        del st.rules[rid]


def _scan(
    rule: Rule,
    cond: Condition,
    track: _Track,
    ts: _TrackState,
    batch: _Batch,
    catalog: Catalog,
    baseline: Baseline | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One levelled condition over its readings of the batch: the readings' batch indices,
    values (in the rule's unit), signals (value, rate or z-score) and the emitted level before
    and after each, and their local rows."""
    loc_all = track.local[batch.rows]
    sel = np.flatnonzero(loc_all >= 0)
    loc = loc_all[sel].astype(np.int64)
    t = batch.t[sel]
    v = batch.v[sel] if track.scale is None else batch.v[sel] * track.scale[loc]
    if cond.kind == "rate_of_change":
        sig = _rates(cond, ts, loc, t, v)
    elif cond.kind == "anomaly":
        sig = _zscores(rule, cond, batch.rows[sel], t, v, catalog, baseline)
    else:
        sig = v
    duration = cond.duration.value  # sustained, anomaly; 0 for the others
    before, after = scan_levels(
        loc, t, track.sign * sig, track.raise_at, track.hold_at, duration, ts.level, ts.raw,
        ts.since,
    )  # fmt: skip
    return sel, v, sig, before, after, loc


def _rates(cond: Condition, ts: _TrackState, loc, t, v) -> np.ndarray:
    """Rates of change of the batch's readings, with the recent readings kept in the state."""
    window = cond.window.value
    all_loc = np.concatenate([ts.tail_loc, loc])
    all_t = np.concatenate([ts.tail_t, t])
    all_v = np.concatenate([ts.tail_v, v])
    new = np.concatenate([np.zeros(len(ts.tail_loc), bool), np.ones(len(loc), bool)])
    o = np.lexsort((all_t, all_loc))
    all_loc, all_t, all_v, new = all_loc[o], all_t[o], all_v[o], new[o]
    r = rates(all_loc, all_t, all_v, new, window, cond.per * 1e9)
    # keep what a later reading may still refer to: up to 2 windows before its series' last
    ends = np.flatnonzero(np.append(all_loc[1:] != all_loc[:-1], True)) if len(o) else o
    last_t = np.repeat(all_t[ends], np.diff(np.append(-1, ends)))
    keep = all_t >= last_t - 2 * window
    ts.tail_loc, ts.tail_t, ts.tail_v = all_loc[keep], all_t[keep], all_v[keep]
    return r[new]


def _zscores(rule, cond, rows, t, v, catalog, baseline) -> np.ndarray:
    if not len(rows):
        return np.zeros(0)
    if baseline is None:
        raise InvalidInput(
            "an anomaly rule needs a baseline",
            source=rule.source,
            feature=f"rule {rule.id}",
            hint="pass baseline=... (citytwin.warning.build_baseline makes one from history)",
        )
    med, mad = baseline.lookup(catalog.token, catalog.ids, rows, hour_of_week(t, rule.timezone))
    scale = np.maximum(MAD_TO_SIGMA * mad, max(cond.min_mad, 1e-12))
    z = (v - med) / scale
    return {"above": z, "below": -z}.get(cond.direction, np.abs(z))


def _leveled_rule(rule, rank, binding, rs, batch, catalog, baseline, out: _Events) -> None:
    track, ts = binding.tracks[0], rs.tracks[0]
    sel, v, sig, before, after, _ = _scan(rule, rule.condition, track, ts, batch, catalog, baseline)
    ch = np.flatnonzero(before != after)
    b, a = before[ch].astype(np.int64), after[ch].astype(np.int64)
    event = np.where(b == 0, 0, np.where(a == 0, 3, np.where(a > b, 1, 2)))
    names = np.array((None, *rs.levels), object)
    rows = batch.rows[sel[ch]]
    ds = catalog.id_array[rows]
    out.add(
        rule.id,
        rule.kind,
        rank,
        batch.t[sel[ch]],
        event,
        ds,
        names[a],
        names[b],
        v[ch],
        sig[ch],
        ds,
        catalog.asset_id[rows],
        rule.message or _LEVELED_MESSAGE,
    )


def _no_data(rule, rank, binding, rs, batch, st: EngineState, catalog, out: _Events) -> None:
    track, ts = binding.tracks[0], rs.tracks[0]
    if rs.watch_start == NO_TIME:
        rs.watch_start = int(batch.t.min()) if len(batch.t) else st.watermark
    if rs.watch_start == NO_TIME:
        return
    seen = st.seen_t[track.rows]
    last = np.where(seen != NO_TIME, seen, rs.watch_start)
    loc_all = track.local[batch.rows]
    sel = np.flatnonzero(loc_all >= 0)
    loc = loc_all[sel].astype(np.int64)
    silence = rule.silence.value
    idx, kind, at, gap = silences(loc, batch.t[sel], last, ts.level, silence)
    # datastreams silent at the end of the batch
    if len(sel):
        ends = np.flatnonzero(np.append(loc[1:] != loc[:-1], True))
        last[loc[ends]] = batch.t[sel][ends]
    quiet = np.flatnonzero((ts.level == 0) & (st.watermark - last > silence))
    ts.level[quiet] = 1
    rows = np.concatenate([batch.rows[sel[idx]], track.rows[quiet]])
    ds = catalog.id_array[rows]
    is_raise = np.concatenate([kind == 1, np.ones(len(quiet), bool)])
    minutes = np.concatenate([gap, np.full(len(quiet), silence)]) / _MINUTE
    out.add(
        rule.id,
        rule.kind,
        rank,
        np.concatenate([at, last[quiet] + silence]),
        np.where(is_raise, 0, 3),
        ds,
        np.where(is_raise, rule.level, None),
        np.where(is_raise, None, rule.level),
        minutes,
        minutes,
        ds,
        catalog.asset_id[rows],
        rule.message or _DEFAULT_MESSAGE["no_data"],
    )


def _composite(rule, rank, binding, rs, batch, catalog, baseline, out: _Events) -> None:
    n_groups, n_parts = len(binding.group_keys), len(rule.conditions)
    counts = np.zeros((n_groups, n_parts), np.int64)
    changes = []
    for c, (cond, track, ts) in enumerate(
        zip(rule.conditions, binding.tracks, rs.tracks, strict=True)
    ):
        holding = np.flatnonzero(ts.level > 0)
        g, _ = _members(track, holding)
        np.add.at(counts[:, c], g, 1)
        sel, v, sig, before, after, loc = _scan(rule, cond, track, ts, batch, catalog, baseline)
        ch = np.flatnonzero((before > 0) != (after > 0))
        g, which = _members(track, loc[ch])
        k = ch[which]
        changes.append(
            (
                g,
                batch.t[sel[k]],
                np.full(len(k), c),
                np.where(after[k] > 0, 1, -1),
                v[k],
                sig[k],
                batch.rows[sel[k]],
            )
        )
    grp, t, part, delta, value, sig, rows = (np.concatenate(x) for x in zip(*changes, strict=True))
    o = np.lexsort((rows, part, t, grp))
    grp, t, part, delta, value, sig, rows = (x[o] for x in (grp, t, part, delta, value, sig, rows))
    idx, on = combine(grp, t, part, delta, counts, rs.group_active, rule.op == "all")
    keys = binding.group_keys[grp[idx]]
    ds = catalog.id_array[rows[idx]]
    out.add(
        rule.id,
        rule.kind,
        rank,
        t[idx],
        np.where(on, 0, 3),
        keys,
        np.where(on, rule.level, None),
        np.where(on, None, rule.level),
        value[idx],
        sig[idx],
        ds,
        keys,
        rule.message or _DEFAULT_MESSAGE["composite"],
    )


def _members(track: _Track, loc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group indices of local rows ``loc``, and for each the position in ``loc`` it came from."""
    start = track.member_ptr[loc]
    n = track.member_ptr[loc + 1] - start
    which = np.repeat(np.arange(len(loc)), n)
    offset = np.arange(len(which)) - np.repeat(np.cumsum(n) - n, n)
    return track.member_grp[start[which] + offset], which


# -- predictions ---------------------------------------------------------------------------
IMPACT_COLUMNS = ("asset_id", "asset_kind", "value", "onset")
"""A forecast's impact table (``evaluate_predictions``): one row per asset and kind
(``rules.ASSET_KINDS``; an asset may be of several, a building with a basement is both), the
deepest water predicted there (m; NaN: not assessed, e.g. off the forecast's grid) and when
flooding is predicted to start there (a time; NaT: not flooded). Optional: ``x``, ``y`` (where
the alarm is shown) and ``name``."""
PREDICTED_EVENT_COLUMNS = (*EVENT_COLUMNS, "lead_time_s", "scenario_id", "x", "y")
"""The events of ``evaluate_predictions``: the engine's, with the lead time (seconds from the
issue time to the predicted onset; NaN for a clear), the forecast's scenario and the asset's
place."""
_PREDICTED_MESSAGE = (
    "{rule_name}: {asset_name} {value:.2f} {unit} predicted in {lead_min:.0f} min"
    " ({event}, {level_zh})"
)
_PREDICTED_CLEAR = (
    "{rule_name}: {asset_name} no longer predicted to flood ({value:.2f} {unit} predicted;"
    " forecast {scenario_id})"
)
_LEVEL_RANK = {name: k for k, name in enumerate(LEVELS)}
_NO_TIME = pd.Timedelta(0)


def evaluate_predictions(
    rules: RuleSet,
    impacts: pd.DataFrame,
    issued: Any,
    *,
    active: pd.DataFrame | None = None,
    scenario_id: str | None = None,
) -> pd.DataFrame:
    """The events (``PREDICTED_EVENT_COLUMNS``, all at ``issued``) of a flood forecast issued
    at ``issued`` for the enabled ``predicted`` rules, from its impact table
    (``IMPACT_COLUMNS``) and the predictions active before it (``active``: ``rule_id``,
    ``source``, ``level``; the source is the asset id).

    A rule predicts an asset of its kinds (and among its ``assets``) whose predicted depth,
    in the rule's unit, reaches a level, where flooding is predicted to start, and, with
    ``within``, to start no later than that after ``issued``. The lead time is onset −
    issued (0 where flooding is predicted to have begun already). An asset in several rows of
    one rule (two kinds) counts once, at its deepest. An active prediction is cleared when the
    forecast assessed its asset for the rule (a finite value) and predicts it no more, or when
    its rule is no longer an enabled ``predicted`` rule; one the forecast did not assess (off
    its area) is left as it is. Pure."""
    table = _impact_table(impacts)
    t = pd.Timestamp(_ns(issued), tz="UTC")
    before = _active_predictions(active)
    rows: list[dict[str, Any]] = []
    by_id = {r.id: r for r in rules.predicted}
    assessed_rows = table[np.isfinite(table["value"].to_numpy())]
    for rank, rule in enumerate(by_id.values()):
        p = rule.prediction
        assert p is not None
        mine = assessed_rows
        if p.asset_kind:
            mine = mine[mine["asset_kind"].isin(p.asset_kind)]
        if p.assets:
            mine = mine[mine["asset_id"].isin(p.assets)]
        value = mine["value"].to_numpy() * (UNITS["m"][1] / UNITS[p.unit][1])
        lead = ((mine["onset"] - t).dt.total_seconds().clip(lower=0.0)).to_numpy()
        level = np.searchsorted([v for _, v in p.levels], value, side="right") - 1
        hit = (level >= 0) & np.isfinite(lead)
        if p.within > _NO_TIME:
            hit &= lead <= p.within.total_seconds()
        found = (
            mine.assign(value=value, lead=lead, level=level)[hit]
            .sort_values(["value", "asset_id"], ascending=[False, True], kind="stable")
            .drop_duplicates("asset_id")
            .sort_values("asset_id", kind="stable")
        )
        for row in found.itertuples(index=False):
            name = p.levels[row.level][0]
            was = before.get((rule.id, row.asset_id))
            if was is None or was == name:
                event = "raise"
            else:
                event = "escalate" if _LEVEL_RANK[name] > _LEVEL_RANK[was] else "deescalate"
            rows.append(_prediction_event(rule, rank, t, event, row, name, was, scenario_id))
        # the deepest row of each asset the forecast assessed for the rule
        deepest = mine.assign(value=value).sort_values("value", ascending=False, kind="stable")
        assessed = deepest.drop_duplicates("asset_id").set_index("asset_id")
        predicted = set(found["asset_id"])
        for (rid, source), was in sorted(before.items()):
            if rid == rule.id and source not in predicted and source in assessed.index:
                gone = _Asset(source, assessed.loc[source])
                rows.append(_prediction_event(rule, rank, t, "clear", gone, None, was, scenario_id))
    for (rid, source), was in sorted(before.items()):
        if rid not in by_id:
            rows.append(_removed_prediction(rid, len(by_id), t, source, was, scenario_id))
    return _prediction_frame(rows)


class _Asset:
    """An assessed asset as ``_prediction_event`` reads it (for a clear)."""

    def __init__(self, asset_id: str, row: pd.Series) -> None:
        self.asset_id = asset_id
        self.asset_kind = row["asset_kind"]
        self.value = row["value"]
        self.lead = np.nan
        self.name = row.get("name")
        self.x, self.y = row.get("x", np.nan), row.get("y", np.nan)


def _prediction_event(
    rule: Rule,
    rank: int,
    t: pd.Timestamp,
    event: str,
    asset: Any,
    level: str | None,
    previous: str | None,
    scenario_id: str | None,
) -> dict[str, Any]:
    """One event of a predicted rule about ``asset`` (a row of the impact table, with its
    ``value`` in the rule's unit and its ``lead``)."""
    p = rule.prediction
    assert p is not None
    name = getattr(asset, "name", None)
    row = dict(
        rank=rank,
        time=t,
        rule_id=rule.id,
        kind=rule.kind,
        event=event,
        source=asset.asset_id,
        level=level,
        previous_level=previous,
        value=float(asset.value),
        signal=float(asset.value),
        datastream_id=None,
        asset_id=asset.asset_id,
        lead_time_s=float(asset.lead),
        scenario_id=scenario_id,
        x=float(getattr(asset, "x", np.nan)),
        y=float(getattr(asset, "y", np.nan)),
    )
    template = rule.message or _PREDICTED_MESSAGE
    if event == "clear":  # a rule's message speaks of the flooding, not of its end
        template = _PREDICTED_CLEAR
    row["message"] = _message(
        rule,
        template,
        SimpleNamespace(**row),
        p.unit,
        lead_min=float(asset.lead) / 60.0,
        asset_kind=asset.asset_kind,
        asset_name=name if isinstance(name, str) and name else asset.asset_id,
        scenario_id=scenario_id or "",
    )
    return row


def _removed_prediction(rid, rank, t, source, was, scenario_id) -> dict[str, Any]:
    return dict(
        rank=rank,
        time=t,
        rule_id=rid,
        kind="predicted",
        event="clear",
        source=source,
        level=None,
        previous_level=was,
        value=np.nan,
        signal=np.nan,
        datastream_id=None,
        asset_id=source,
        lead_time_s=np.nan,
        scenario_id=scenario_id,
        x=np.nan,
        y=np.nan,
        message=f"{rid}: {source} cleared, rule removed or disabled",
    )


def _prediction_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    cols = PREDICTED_EVENT_COLUMNS
    if not rows:
        out = _empty_events()
        for c in cols[len(EVENT_COLUMNS) :]:
            out[c] = pd.Series([], dtype=float if c != "scenario_id" else object)
        return out
    rows = sorted(rows, key=lambda r: r["rank"])  # stable: each rule's events in their order
    out = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in cols})
    out["time"] = pd.to_datetime(out["time"].tolist(), utc=True)
    for c in ("value", "signal", "lead_time_s", "x", "y"):
        out[c] = out[c].astype(float)
    return out


def _impact_table(impacts: pd.DataFrame) -> pd.DataFrame:
    """The impact table checked: ids as strings, values as floats, onsets as UTC times."""
    if not isinstance(impacts, pd.DataFrame):
        raise InvalidInput("the impact table must be a DataFrame", source="impacts")
    missing = [c for c in IMPACT_COLUMNS if c not in impacts]
    if missing:
        raise InvalidInput(
            f"the impact table lacks column(s) {', '.join(missing)}",
            source="impacts",
            hint=f"columns: {', '.join(IMPACT_COLUMNS)} (and optionally x, y, name)",
        )
    try:
        value = impacts["value"].to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError):
        raise InvalidInput("the impact table's 'value' must be numbers (m)") from None
    try:
        onset = pd.to_datetime(impacts["onset"], utc=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"the impact table's 'onset' must be times: {exc}",
            source="impacts",
            hint="the predicted start of flooding at each asset (NaT: not flooded)",
        ) from None
    out = pd.DataFrame(
        {
            "asset_id": impacts["asset_id"].astype(str).to_numpy(object),
            "asset_kind": impacts["asset_kind"].astype(str).to_numpy(object),
            "value": value,
            "onset": onset.to_numpy(),
        }
    )
    out["onset"] = pd.to_datetime(out["onset"], utc=True)
    for c in ("x", "y"):
        out[c] = impacts[c].to_numpy(dtype=float, na_value=np.nan) if c in impacts else np.nan
    out["name"] = impacts["name"].to_numpy(object) if "name" in impacts else None
    return out


def _active_predictions(active: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    if active is None or not len(active):
        return {}
    missing = [c for c in ("rule_id", "source", "level") if c not in active]
    if missing:
        raise InvalidInput(
            f"the active predictions lack column(s) {', '.join(missing)}",
            source="active",
            hint="rule_id, source (the asset id) and level of each active predicted alarm",
        )
    out = {}
    for rid, src, level in zip(active["rule_id"], active["source"], active["level"], strict=True):
        if level not in _LEVEL_RANK:
            raise InvalidInput(
                f"active prediction {rid}/{src} has level {level!r}",
                source="active",
                hint=f"levels are {', '.join(LEVELS)}",
            )
        out[str(rid), str(src)] = str(level)
    return out


# -- a holder for ingest workers -------------------------------------------------------------
class Engine:
    """A rule set, a catalog, an optional baseline and the state, for one ingest worker:
    ``evaluate`` batch after batch, ``reload`` a new rule set (swapped in whole; rules whose
    fingerprint is unchanged keep their state). Calls are serialised by a lock."""

    def __init__(
        self,
        rules: RuleSet,
        catalog: Catalog,
        *,
        state: EngineState | None = None,
        baseline: Baseline | None = None,
    ) -> None:
        self._rules = rules
        self.catalog = catalog
        self.baseline = baseline
        self.state = state or EngineState()
        self._lock = threading.Lock()

    @property
    def rules(self) -> RuleSet:
        return self._rules

    def evaluate(self, readings: pd.DataFrame | Mapping[str, Any], *, now: Any = None):
        """Events of one batch (``Evaluation``); the engine keeps the next state."""
        with self._lock:
            result = evaluate(
                self._rules,
                self.catalog,
                readings,
                self.state,
                now=now,
                baseline=self.baseline,
            )
            self.state = result.state
            return result

    def reload(self, rules: RuleSet) -> pd.DataFrame:
        """Swap in ``rules``; returns the clear events of the conditions whose rule changed
        or went away (unchanged rules keep their state)."""
        with self._lock:
            st = self.state.copy()
            out = _Events()
            _reconcile(rules, st, self.catalog, out, len(rules.on_readings))
            self._rules, self.state = rules, st
            return out.frame(rules, {})

    def set_catalog(self, catalog: Catalog) -> None:
        """Use a new datastream catalog (the state follows it by datastream id)."""
        with self._lock:
            self.catalog = catalog

    def active(self) -> pd.DataFrame:
        """The active conditions (``rule_id``, ``source``, ``level``)."""
        return active_conditions(self.state)

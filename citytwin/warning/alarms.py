"""Alarms: the life of what the rule engine raises, as pure transitions on frames.

An alarm is one episode of one condition per (rule, source): raised, escalated or
de-escalated, cleared (``ALARM_COLUMNS``, one row per alarm; every change is also a row of the
alarm log, ``ALARM_LOG_COLUMNS``). Operators acknowledge, clear, assign and comment on alarms;
an escalation policy re-notifies alarms nobody acknowledged in time; webhook subscriptions
turn changes into outbox rows (``OUTBOX_COLUMNS``) that a dispatcher delivers.

    current = store.alarms_for(events[["rule_id", "source"]])  # the latest alarm per pair
    ch = apply_events(current, events, context=store.datastreams())
    store.save_alarms(ch.alarms, ch.log)
    store.enqueue(notification_rows(ch.changes, ch.alarms, webhooks, created_at=now))

Idempotent, keyed by time: an alarm's id is ``alarm_key(rule_id, source, raised_at)`` and its
``updated_at`` is the time of the last engine event applied to it, so applying events again
(a restart re-evaluating readings committed after the engine's checkpoint) changes nothing.
Pure: frames in, frames out; times come with the events or as arguments, never from a clock.
Times are tz-aware UTC timestamps (microseconds: what the store keeps).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from citytwin.errors import InvalidInput
from citytwin.warning.rules import LEVELS

# -- the records ----------------------------------------------------------------------------
_STR, _FLOAT, _BOOL, _INT, _TIME, _LIST = "str", "float", "bool", "int", "time", "list"
_NINT = "Int64"  # a nullable integer
_KINDS: dict[str, dict[str, str]] = {
    "alarms": {
        "alarm_id": _STR,
        "rule_id": _STR,
        "kind": _STR,
        "source": _STR,
        "datastream_id": _STR,
        "asset_id": _STR,
        "network": _STR,
        "zone": _STR,
        "x": _FLOAT,
        "y": _FLOAT,
        "severity": _STR,
        "max_severity": _STR,
        "status": _STR,
        "acknowledged": _BOOL,
        "raised_at": _TIME,
        "updated_at": _TIME,
        "cleared_at": _TIME,
        "acknowledged_at": _TIME,
        "acknowledged_by": _STR,
        "assignee": _STR,
        "value": _FLOAT,
        "message": _STR,
        "incident_id": _STR,
        "escalations": _INT,
        "escalated_at": _TIME,
        "scenario_id": _STR,  # predicted alarms: the forecast's flood scenario ...
        "lead_time_s": _FLOAT,  # ... and the time until the flooding it predicts (at updated_at)
    },
    "alarm_log": {
        "alarm_id": _STR,
        "at": _TIME,
        "action": _STR,
        "actor": _STR,
        "severity": _STR,
        "value": _FLOAT,
        "text": _STR,
    },
    "incidents": {
        "incident_id": _STR,
        "kind": _STR,
        "title": _STR,
        "status": _STR,
        "severity": _STR,
        "opened_at": _TIME,
        "updated_at": _TIME,
        "closed_at": _TIME,
        "network": _STR,
        "zone": _STR,
        "x": _FLOAT,
        "y": _FLOAT,
        "asset_id": _STR,
        "alarm_ids": _LIST,
        "candidates": _LIST,
    },
    "outbox": {
        "id": _NINT,  # given by the store when enqueued
        "created_at": _TIME,
        "event": _STR,
        "target": _STR,
        "url": _STR,
        "payload": _STR,
        "status": _STR,
        "attempts": _INT,
        "next_attempt_at": _TIME,
        "last_error": _STR,
        "delivered_at": _TIME,
    },
    "deliveries": {
        "outbox_id": _INT,
        "at": _TIME,
        "status_code": _NINT,
        "error": _STR,
        "ms": _FLOAT,
    },
    "changes": {
        "alarm_id": _STR,
        "change": _STR,
        "at": _TIME,
        "severity": _STR,
        "previous_severity": _STR,
    },
}
ALARM_COLUMNS = tuple(_KINDS["alarms"])
ALARM_LOG_COLUMNS = tuple(_KINDS["alarm_log"])
INCIDENT_COLUMNS = tuple(_KINDS["incidents"])
OUTBOX_COLUMNS = tuple(_KINDS["outbox"])
DELIVERY_COLUMNS = tuple(_KINDS["deliveries"])
CHANGE_COLUMNS = tuple(_KINDS["changes"])
SCHEMAS = tuple(_KINDS)
"""The names ``typed_frame`` knows."""

STATUSES = ("active", "cleared")
LOG_ACTIONS = (
    "raise",
    "escalate",
    "deescalate",
    "clear",
    "acknowledge",
    "assign",
    "comment",
    "escalation",
)
CHANGES = ("raised", "escalated", "deescalated", "cleared", "acknowledged", "escalation")
"""What ``AlarmChanges.changes`` rows say happened; each is a notification event."""
CHANGE_EVENTS = {c: f"alarm.{c}" for c in CHANGES}
INCIDENT_EVENTS = ("incident.opened", "incident.updated", "incident.closed")
NOTIFY_EVENTS = (*CHANGE_EVENTS.values(), *INCIDENT_EVENTS)
"""Every event a webhook can subscribe to."""
ENGINE, ESCALATION = "engine", "escalation"
"""The log's actors besides operators."""
_RANK = {level: i for i, level in enumerate(LEVELS)}


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float | np.floating):
        return math.isnan(v)
    if isinstance(v, np.datetime64):
        return bool(np.isnat(v))
    return False


def _time(v: Any, what: str = "time") -> pd.Timestamp:
    """A time as a tz-aware UTC timestamp in microseconds (naive times are UTC)."""
    if _missing(v):
        return pd.NaT
    try:
        ts = pd.Timestamp(v)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{what} {v!r} is not a time", hint="give an ISO-8601 time or a timestamp"
        ) from None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("us").as_unit("us")


def _times(values: Sequence[Any] | pd.Series, name: str) -> pd.Series:
    """A column of times as tz-aware UTC in microseconds (naive times are UTC)."""
    s = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    s = s.reset_index(drop=True)
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        t = s.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(s.dtype):
        t = s.dt.tz_localize("UTC")
    else:
        try:
            t = pd.to_datetime(s, utc=True)
        except (TypeError, ValueError):  # one by one, to name the bad one
            t = pd.Series([_time(v, name) for v in s], dtype=pd.DatetimeTZDtype("us", "UTC"))
    return t.dt.floor("us").astype(pd.DatetimeTZDtype("us", "UTC"))


def _column(values: Sequence[Any], kind: str, name: str) -> pd.Series | Any:
    if kind == _STR:
        return pd.Series([None if _missing(v) else str(v) for v in values], dtype=object)
    if kind == _FLOAT:
        try:
            return pd.Series(
                [np.nan if _missing(v) else float(v) for v in values], dtype=np.float64
            )
        except (TypeError, ValueError):
            raise InvalidInput(f"column {name!r} must hold numbers") from None
    if kind == _BOOL:
        return pd.Series([False if _missing(v) else bool(v) for v in values], dtype=bool)
    if kind == _INT:
        return pd.Series([0 if _missing(v) else int(v) for v in values], dtype=np.int64)
    if kind == _NINT:
        return pd.Series(
            pd.array([pd.NA if _missing(v) else int(v) for v in values], dtype="Int64")
        )
    if kind == _TIME:
        return _times(values, name)
    if any(isinstance(v, str | bytes | Mapping) for v in values):
        raise InvalidInput(f"column {name!r} must hold lists", hint="e.g. ['AL-1', 'AL-2']")
    return pd.Series([[] if _missing(v) else list(v) for v in values], dtype=object)


def typed_frame(schema: str, rows: pd.DataFrame | Iterable[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """Rows (a frame or dicts) as a frame of one of ``SCHEMAS`` with its columns, in order,
    and types: strings as objects (None when missing), floats, bools, ints, times as tz-aware
    UTC (naive ones are taken as UTC), lists. Columns the rows lack are left empty."""
    if schema not in _KINDS:
        raise InvalidInput(f"unknown record schema {schema!r}", hint=f"one of {SCHEMAS}")
    kinds = _KINDS[schema]
    if isinstance(rows, pd.DataFrame):
        n = len(rows)
        cols = {
            c: (rows[c] if kinds[c] == _TIME else rows[c].tolist()) if c in rows else [None] * n
            for c in kinds
        }
    else:
        records = list(rows)
        cols = {c: [r.get(c) for r in records] for c in kinds}
    return pd.DataFrame({c: _column(cols[c], k, c) for c, k in kinds.items()})


def empty_alarms() -> pd.DataFrame:
    """No alarms (``ALARM_COLUMNS``, typed)."""
    return typed_frame("alarms")


def empty_alarm_log() -> pd.DataFrame:
    """No alarm log rows (``ALARM_LOG_COLUMNS``, typed)."""
    return typed_frame("alarm_log")


def empty_incidents() -> pd.DataFrame:
    """No incidents (``INCIDENT_COLUMNS``, typed)."""
    return typed_frame("incidents")


def empty_outbox() -> pd.DataFrame:
    """No outbox rows (``OUTBOX_COLUMNS``, typed)."""
    return typed_frame("outbox")


def empty_changes() -> pd.DataFrame:
    """No alarm changes (``CHANGE_COLUMNS``, typed)."""
    return typed_frame("changes")


def alarm_key(rule_id: str, source: Any, raised_at: Any) -> str:
    """The alarm id of (rule, source) raised at a time: ``AL-`` and 16 hex digits of a SHA-1,
    the same wherever and however often it is computed."""
    t = _time(raised_at, "raised_at")
    if t is pd.NaT:
        raise InvalidInput("an alarm's id needs the time it was raised")
    text = f"{rule_id}\x1f{source}\x1f{iso_z(t)}"
    return "AL-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def iso_z(t: Any) -> str | None:
    """A time as ISO-8601 UTC with a ``Z`` (microseconds only when there are any)."""
    ts = _time(t)
    if ts is pd.NaT:
        return None
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ts.microsecond:06d}" if ts.microsecond else "") + "Z"


def jsonable(value: Any) -> Any:
    """A value JSON can carry: times as ISO-8601 Z, NaN/NaT/NA as null, numpy scalars as
    Python numbers, containers converted through."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if _missing(value):
        return None
    if isinstance(value, pd.Timestamp | dt.datetime | np.datetime64):
        return iso_z(value)
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def alarm_json(alarm: Mapping[str, Any]) -> dict[str, Any]:
    """An alarm row as a JSON-able dict (``ALARM_COLUMNS``; times ISO-8601 Z)."""
    return {c: jsonable(alarm.get(c)) for c in ALARM_COLUMNS}


def _records(schema: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    return typed_frame(schema, frame).to_dict("records") if len(frame) else []


# -- engine events ------------------------------------------------------------------------
@dataclass
class AlarmChanges:
    """What a step changed: the alarms in their final state (``ALARM_COLUMNS``), the log rows
    (``ALARM_LOG_COLUMNS``), one row per change to notify (``CHANGE_COLUMNS``: ``change`` of
    ``CHANGES``), and the engine events not applied, with the ``reason``."""

    alarms: pd.DataFrame = field(default_factory=empty_alarms)
    log: pd.DataFrame = field(default_factory=empty_alarm_log)
    changes: pd.DataFrame = field(default_factory=empty_changes)
    skipped: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def empty(self) -> bool:
        """Nothing to save."""
        return len(self.alarms) == 0 and len(self.log) == 0


_EVENT_NEEDS = ("time", "rule_id", "event", "source", "level", "previous_level")
_ENGINE_EVENTS = ("raise", "escalate", "deescalate", "clear")


def apply_events(
    current: pd.DataFrame, events: pd.DataFrame, *, context: pd.DataFrame | None = None
) -> AlarmChanges:
    """Apply the rule engine's events (``EVENT_COLUMNS``) to the alarms.

    ``current`` holds, per (rule_id, source) of the events, the latest alarm (active or
    cleared; older ones are ignored); ``context`` maps ``datastream_id`` to ``network``,
    ``zone``, ``x``, ``y`` (the store's datastreams) for new alarms. Events apply in time
    order (ties in the given order), idempotently: a raise at the time the pair's latest alarm
    was raised or before its last update, an escalate or de-escalate not later than the
    active alarm's last update, a clear earlier than it, or any of them without an active
    alarm (an operator cleared it) changes nothing and comes back in ``skipped`` (a clear and
    a raise of one pair at one time replay right too). A raise while an alarm of the pair is
    active updates that alarm (there is never a second active alarm). Acknowledgement is kept
    across escalations; ``max_severity`` is the highest level reached. Events of ``predicted``
    rules (``engine.evaluate_predictions``) carry the alarm's ``lead_time_s`` and
    ``scenario_id`` (kept from each event that has them) and its place (``x``, ``y``)."""
    missing = [c for c in _EVENT_NEEDS if c not in events]
    if missing:
        raise InvalidInput(
            f"the events lack column(s) {', '.join(missing)}",
            source="events",
            hint="pass the rule engine's events (citytwin.warning.EVENT_COLUMNS)",
        )
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in _records("alarms", current):
        pair = (row["rule_id"], row["source"])
        if pair not in latest or row["raised_at"] > latest[pair]["raised_at"]:
            latest[pair] = row
    places = _places(context)
    changed: dict[str, dict[str, Any]] = {}
    log: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    skipped: list[tuple[int, str]] = []
    times = _times(events["time"], "event time").tolist()
    if any(t is pd.NaT for t in times):
        raise InvalidInput(
            f"event {[t is pd.NaT for t in times].index(True)} has no time", source="events"
        )
    order = sorted(range(len(events)), key=times.__getitem__)  # stable: ties keep their order
    cols = {c: events[c].tolist() for c in events.columns}
    raises = {  # (pair, time) of each raise -> its place in the order
        ((str(cols["rule_id"][i]), str(cols["source"][i])), times[i]): k
        for k, i in enumerate(order)
        if cols["event"][i] == "raise"
    }
    for k, i in enumerate(order):
        ev = {c: v[i] for c, v in cols.items()}
        t, what = times[i], ev["event"]
        if what not in _ENGINE_EVENTS:
            raise InvalidInput(
                f"event {i} is {what!r}", source="events", hint=f"one of {_ENGINE_EVENTS}"
            )
        level = None if _missing(ev["level"]) else str(ev["level"])
        if what != "clear" and level not in _RANK:
            raise InvalidInput(
                f"{what} event {i} of rule {ev['rule_id']!r} has level {level!r}",
                source="events",
                hint=f"levels are {', '.join(LEVELS)}",
            )
        pair = (str(ev["rule_id"]), str(ev["source"]))
        alarm = latest.get(pair)
        active = alarm is not None and alarm["status"] == "active"
        value = None if _missing(ev.get("value")) else float(ev["value"])
        message = None if _missing(ev.get("message")) else str(ev["message"])
        if what == "raise":
            if alarm is not None and alarm["raised_at"] == t:
                skipped.append((i, "already applied"))
                continue
            if alarm is not None and (
                t <= alarm["updated_at"] if active else t < alarm["updated_at"]
            ):
                skipped.append((i, "older than the alarm's last update"))
                continue
            if not active:  # a new alarm (perhaps at the time the previous one cleared)
                alarm = _new_alarm(ev, pair, t, level, value, message, places)
                latest[pair] = alarm
                changed[alarm["alarm_id"]] = alarm
                log.append(_log(alarm, t, "raise", ENGINE, level, value, message))
                changes.append(_change(alarm, "raised", t, level, None))
                continue
            # raised again while active: the same alarm, perhaps at another level
        elif not active:
            skipped.append((i, "no active alarm"))
            continue
        elif what == "clear":
            if t < alarm["updated_at"]:
                skipped.append((i, "older than the alarm's last update"))
                continue
            if t == alarm["raised_at"] and (pair, t) in raises and raises[pair, t] > k:
                # a clear and a raise of the pair at one time: replayed, this clear was the
                # previous alarm's, and the active one is the raise's (applied before)
                skipped.append((i, "clears the alarm before"))
                continue
            alarm.update(status="cleared", cleared_at=t, updated_at=t, value=value)
            alarm["message"] = message or alarm["message"]
            _predicted(alarm, ev)
            changed[alarm["alarm_id"]] = alarm
            log.append(_log(alarm, t, "clear", ENGINE, alarm["severity"], value, message))
            changes.append(_change(alarm, "cleared", t, alarm["severity"], alarm["severity"]))
            continue
        elif t <= alarm["updated_at"]:
            skipped.append((i, "older than the alarm's last update"))
            continue
        before = alarm["severity"]
        alarm.update(severity=level, updated_at=t, value=value)
        alarm["message"] = message or alarm["message"]
        _predicted(alarm, ev)
        if _RANK[level] > _RANK.get(alarm["max_severity"], -1):
            alarm["max_severity"] = level
        changed[alarm["alarm_id"]] = alarm
        up = _RANK[level] > _RANK.get(before, -1)
        action, text = what, message
        if what == "raise":  # the engine restarted the condition: it continues this alarm
            action = "raise" if level == before else "escalate" if up else "deescalate"
            text = f"raised again while active: {message or ''}"
        log.append(_log(alarm, t, action, ENGINE, level, value, text))
        if level != before:
            changes.append(_change(alarm, "escalated" if up else "deescalated", t, level, before))
    skipped_rows = events.iloc[[i for i, _ in skipped]].copy()
    skipped_rows["reason"] = pd.Series([r for _, r in skipped], index=skipped_rows.index)
    return AlarmChanges(
        typed_frame("alarms", sorted(changed.values(), key=lambda a: a["raised_at"])),
        typed_frame("alarm_log", log),
        typed_frame("changes", changes),
        skipped_rows.reset_index(drop=True),
    )


def _places(context: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    if context is None or len(context) == 0:
        return {}
    if "datastream_id" not in context:
        raise InvalidInput(
            "the alarm context has no 'datastream_id' column",
            source="context",
            hint="pass the store's datastreams (datastream_id, network, zone, x, y)",
        )
    cols = [c for c in ("network", "zone", "x", "y") if c in context]
    frame = context.drop_duplicates("datastream_id", keep="last")
    return {
        str(ds): dict(zip(cols, values, strict=True))
        for ds, *values in zip(frame["datastream_id"], *(frame[c] for c in cols), strict=True)
    }


def _predicted(alarm: dict[str, Any], ev: Mapping[str, Any]) -> dict[str, Any]:
    """Take a prediction's lead time and scenario from its event (when it has them)."""
    for key in ("scenario_id", "lead_time_s"):
        if not _missing(ev.get(key)):
            alarm[key] = ev[key]
    return alarm


def _new_alarm(ev, pair, t, level, value, message, places) -> dict[str, Any]:
    ds = None if _missing(ev.get("datastream_id")) else str(ev["datastream_id"])
    place = dict(places.get(ds, {})) if ds is not None else {}
    place.update({k: ev[k] for k in ("network", "zone", "x", "y") if not _missing(ev.get(k))})
    alarm = {
        "alarm_id": alarm_key(pair[0], pair[1], t),
        "rule_id": pair[0],
        "kind": None if _missing(ev.get("kind")) else str(ev["kind"]),
        "source": pair[1],
        "datastream_id": ds,
        "asset_id": None if _missing(ev.get("asset_id")) else str(ev["asset_id"]),
        "network": place.get("network"),
        "zone": place.get("zone"),
        "x": place.get("x"),
        "y": place.get("y"),
        "severity": level,
        "max_severity": level,
        "status": "active",
        "acknowledged": False,
        "raised_at": t,
        "updated_at": t,
        "cleared_at": pd.NaT,
        "acknowledged_at": pd.NaT,
        "acknowledged_by": None,
        "assignee": None,
        "value": value,
        "message": message,
        "incident_id": None,
        "escalations": 0,
        "escalated_at": pd.NaT,
        "scenario_id": None,
        "lead_time_s": None,
    }
    return _predicted(alarm, ev)


def _log(alarm, at, action, actor, severity, value, text) -> dict[str, Any]:
    return {
        "alarm_id": alarm["alarm_id"],
        "at": at,
        "action": action,
        "actor": actor,
        "severity": severity,
        "value": value,
        "text": text,
    }


def _change(alarm, change, at, severity, previous) -> dict[str, Any]:
    return {
        "alarm_id": alarm["alarm_id"],
        "change": change,
        "at": at,
        "severity": severity,
        "previous_severity": previous,
    }


# -- operator actions -----------------------------------------------------------------------
def _operator_row(alarm: Mapping[str, Any] | pd.Series, by: str, at: Any) -> tuple[dict, Any]:
    row = dict(alarm.items())
    if "alarm_id" not in row or _missing(row["alarm_id"]):
        raise InvalidInput("not an alarm row: it has no alarm_id")
    if not isinstance(by, str) or not by.strip():
        raise InvalidInput(
            "who did it is missing", feature=row["alarm_id"], hint="give the operator's name"
        )
    t = _time(at, "the action's time")
    if t is pd.NaT:
        raise InvalidInput("the action needs a time", feature=row["alarm_id"])
    return typed_frame("alarms", [row]).to_dict("records")[0], t


def acknowledge(
    alarm: Mapping[str, Any] | pd.Series, by: str, at: Any, comment: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Acknowledge an alarm (active or cleared): (the new row, its log row). An alarm is
    acknowledged once; the acknowledgement stays through escalations."""
    row, t = _operator_row(alarm, by, at)
    if row["acknowledged"]:
        raise InvalidInput(
            f"already acknowledged by {row['acknowledged_by']} at {iso_z(row['acknowledged_at'])}",
            feature=row["alarm_id"],
            hint="comment on it instead",
        )
    row.update(acknowledged=True, acknowledged_at=t, acknowledged_by=by.strip())
    return row, _log(row, t, "acknowledge", by.strip(), row["severity"], row["value"], comment)


def clear(
    alarm: Mapping[str, Any] | pd.Series, by: str, at: Any, comment: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Clear an active alarm by hand: (the new row, its log row). The engine's later events
    for the same condition are ignored; its next raise makes a new alarm."""
    row, t = _operator_row(alarm, by, at)
    if row["status"] != "active":
        raise InvalidInput(
            f"the alarm was cleared at {iso_z(row['cleared_at'])}",
            feature=row["alarm_id"],
            hint="only active alarms can be cleared",
        )
    row.update(status="cleared", cleared_at=t)
    return row, _log(row, t, "clear", by.strip(), row["severity"], row["value"], comment)


def assign(
    alarm: Mapping[str, Any] | pd.Series, to: str | None, by: str, at: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Assign an alarm to someone (``None``: nobody): (the new row, its log row)."""
    row, t = _operator_row(alarm, by, at)
    if to is not None and (not isinstance(to, str) or not to.strip()):
        raise InvalidInput(
            "the assignee is empty", feature=row["alarm_id"], hint="give a name, or None"
        )
    to = to.strip() if to is not None else None
    if to == row["assignee"]:
        raise InvalidInput(f"the alarm is assigned to {to!r} already", feature=row["alarm_id"])
    row["assignee"] = to
    text = f"assigned to {to}" if to else "unassigned"
    return row, _log(row, t, "assign", by.strip(), row["severity"], row["value"], text)


def comment(
    alarm: Mapping[str, Any] | pd.Series, by: str, at: Any, text: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A comment on an alarm: (the row, unchanged, and the log row)."""
    row, t = _operator_row(alarm, by, at)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the comment is empty", feature=row["alarm_id"], hint="write something")
    return row, _log(row, t, "comment", by.strip(), row["severity"], row["value"], text.strip())


def operator_changes(row: Mapping[str, Any], log_row: Mapping[str, Any]) -> AlarmChanges:
    """An operator action's (row, log row) as ``AlarmChanges`` to save and notify (an
    acknowledgement is an ``acknowledged`` change, a clear a ``cleared`` one)."""
    change = {"acknowledge": "acknowledged", "clear": "cleared"}.get(log_row["action"])
    changes = (
        [_change(row, change, log_row["at"], row["severity"], row["severity"])] if change else []
    )
    return AlarmChanges(
        typed_frame("alarms", [row]),
        typed_frame("alarm_log", [log_row]),
        typed_frame("changes", changes),
    )


# -- escalation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EscalationPolicy:
    """Minutes after it was raised until an active alarm nobody acknowledged is escalated
    (re-notified), per severity (None: never), and the minutes until it is escalated again
    (None: once only)."""

    blue: float | None = None
    yellow: float | None = 30
    orange: float | None = 15
    red: float | None = 5
    repeat: float | None = 30

    def after(self, severity: str | None) -> pd.Timedelta | None:
        """How long an alarm of this severity may stay unacknowledged (None: for ever)."""
        minutes = getattr(self, severity) if severity in _RANK else None
        return None if minutes is None else pd.Timedelta(minutes=minutes)


def parse_escalation_policy(mapping: Mapping[str, Any] | None) -> EscalationPolicy:
    """A policy from ``{"red": 5, "orange": "15min", ..., "repeat": 30}`` (minutes, or
    durations; null: never). Levels left out keep the default's value."""
    if mapping is None:
        return EscalationPolicy()
    if not isinstance(mapping, Mapping):
        raise InvalidInput(
            "the escalation policy must be a mapping",
            source="escalation",
            hint='e.g. {"red": 5, "orange": 15, "yellow": 30, "blue": null, "repeat": 30}',
        )
    known = (*LEVELS, "repeat")
    values: dict[str, float | None] = {}
    for key, value in mapping.items():
        if key not in known:
            raise InvalidInput(
                f"unknown escalation setting {key!r}",
                source="escalation",
                hint=f"settings are {', '.join(known)} (minutes)",
            )
        if value is None:
            values[key] = None
            continue
        try:
            minutes = (
                float(value)
                if isinstance(value, int | float) and not isinstance(value, bool)
                else pd.Timedelta(value) / pd.Timedelta(minutes=1)
            )
        except (TypeError, ValueError):
            minutes = math.nan
        if not minutes > 0 or math.isinf(minutes):
            raise InvalidInput(
                f"escalation {key} {value!r} is not a positive duration",
                source="escalation",
                hint="give minutes (e.g. 15), a duration (e.g. '15min') or null for never",
            )
        values[key] = minutes
    return EscalationPolicy(**values)


def due_escalations(alarms: pd.DataFrame, now: Any, policy: EscalationPolicy) -> AlarmChanges:
    """The active, unacknowledged alarms due for escalation at ``now``: first when they have
    been raised longer than their severity allows, again every ``repeat`` minutes after.
    Each gets ``escalations`` + 1 and ``escalated_at`` = now, a log row (actor
    ``escalation``) and an ``escalation`` change."""
    t = _time(now, "now")
    if t is pd.NaT:
        raise InvalidInput("escalations need the time now")
    repeat = None if policy.repeat is None else pd.Timedelta(minutes=policy.repeat)
    out, log, changes = [], [], []
    for row in _records("alarms", alarms):
        after = policy.after(row["severity"])
        if row["status"] != "active" or row["acknowledged"] or after is None:
            continue
        if row["escalations"] == 0 or _missing(row["escalated_at"]):
            due = row["raised_at"] + after
        elif repeat is None:
            continue
        else:
            due = row["escalated_at"] + repeat
        if t < due:
            continue
        row["escalations"] += 1
        row["escalated_at"] = t
        minutes = (t - row["raised_at"]) / pd.Timedelta(minutes=1)
        text = (
            f"{row['severity']} alarm unacknowledged {minutes:.0f} min after it was raised"
            f" (escalation {row['escalations']})"
        )
        out.append(row)
        log.append(_log(row, t, "escalation", ESCALATION, row["severity"], row["value"], text))
        changes.append(_change(row, "escalation", t, row["severity"], row["severity"]))
    return AlarmChanges(
        typed_frame("alarms", out), typed_frame("alarm_log", log), typed_frame("changes", changes)
    )


# -- notifications --------------------------------------------------------------------------
WEBHOOKS_DOCUMENT = "notify/webhooks"


@dataclass(frozen=True)
class Webhook:
    """A subscription: where to POST which events (``NOTIFY_EVENTS``, ``*`` for all, or
    ``alarm.*`` / ``incident.*``), of at least which severity, signed with ``secret``."""

    name: str
    url: str
    secret: str
    events: tuple[str, ...] = ("*",)
    min_severity: str = "blue"
    enabled: bool = True

    def accepts(self, event: str, severity: str | None) -> bool:
        """Whether this webhook wants ``event`` at ``severity`` (None: any severity)."""
        if not self.enabled:
            return False
        family = event.split(".", 1)[0] + ".*"
        if not any(e in ("*", event, family) for e in self.events):
            return False
        return severity is None or _RANK.get(severity, -1) >= _RANK[self.min_severity]


def twin_webhooks(store: Any) -> tuple[Webhook, ...]:
    """The webhooks a twin keeps (its ``notify/webhooks`` document; none without one).
    ``store``: anything with ``get_document`` (the store hands its document over)."""
    return parse_webhooks(store.get_document(WEBHOOKS_DOCUMENT))


def parse_webhooks(document: Mapping[str, Any] | None) -> tuple[Webhook, ...]:
    """The webhooks of a ``notify/webhooks`` document, ``{"webhooks": [{"name", "url",
    "secret", "events": [...] or ["*"], "min_severity": "blue", "enabled": true}]}``,
    checked (None: no webhooks)."""
    src = WEBHOOKS_DOCUMENT
    if document is None:
        return ()
    if not isinstance(document, Mapping) or not isinstance(document.get("webhooks"), list):
        raise InvalidInput(
            'the document must be {"webhooks": [...]}',
            source=src,
            hint='e.g. {"webhooks": [{"name": "ops", "url": "https://...", "secret": "...",'
            ' "events": ["*"], "min_severity": "yellow"}]}',
        )
    known = ("name", "url", "secret", "events", "min_severity", "enabled")
    out: list[Webhook] = []
    for i, entry in enumerate(document["webhooks"]):
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"webhook {i} is not a mapping", source=src)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput(f"webhook {i} has no name", source=src, hint="give it a name")
        name = name.strip()
        unknown = [k for k in entry if k not in known]
        if unknown:
            raise InvalidInput(
                f"unknown webhook setting(s) {', '.join(map(str, unknown))}",
                source=src,
                feature=name,
                hint=f"settings are {', '.join(known)}",
            )
        if any(w.name == name for w in out):
            raise InvalidInput("two webhooks have this name", source=src, feature=name)
        url = entry.get("url")
        parsed = urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInput(
                f"url {url!r} is not an http(s) URL",
                source=src,
                feature=name,
                hint="e.g. https://ops.example.com/hooks/citytwin",
            )
        secret = entry.get("secret")
        if not isinstance(secret, str) or not secret:
            raise InvalidInput(
                "the secret is missing",
                source=src,
                feature=name,
                hint="give a shared secret: deliveries are signed with it (HMAC-SHA256)",
            )
        events = entry.get("events", ["*"])
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, list) or not events:
            raise InvalidInput(
                "events must be a list of event names",
                source=src,
                feature=name,
                hint=f'["*"] or some of {", ".join(NOTIFY_EVENTS)}',
            )
        for e in events:
            if e not in ("*", "alarm.*", "incident.*", *NOTIFY_EVENTS):
                raise InvalidInput(
                    f"unknown event {e!r}",
                    source=src,
                    feature=name,
                    hint=f"events are *, alarm.*, incident.*, {', '.join(NOTIFY_EVENTS)}",
                )
        level = entry.get("min_severity", "blue")
        if level not in _RANK:
            raise InvalidInput(
                f"min_severity {level!r} is not a level",
                source=src,
                feature=name,
                hint=f"levels are {', '.join(LEVELS)}",
            )
        enabled = entry.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidInput("enabled must be true or false", source=src, feature=name)
        out.append(Webhook(name, url, secret, tuple(events), level, enabled))
    return tuple(out)


def outbox_rows(
    messages: Iterable[tuple[str, str | None, Mapping[str, Any]]],
    webhooks: Sequence[Webhook],
    *,
    created_at: Any,
) -> pd.DataFrame:
    """Outbox rows (``OUTBOX_COLUMNS``, pending, due at ``created_at``, no id yet) of
    (event, severity, payload) messages, one per message and webhook that accepts it; the
    payload goes as compact JSON text (see ``jsonable``)."""
    t = _time(created_at, "created_at")
    if t is pd.NaT:
        raise InvalidInput("outbox rows need the time they are made")
    rows = []
    for event, severity, payload in messages:
        if event not in NOTIFY_EVENTS:
            raise InvalidInput(f"unknown notification event {event!r}", hint=f"{NOTIFY_EVENTS}")
        text = None
        for hook in webhooks:
            if hook.accepts(event, severity):
                text = text or json.dumps(
                    jsonable(payload), ensure_ascii=False, separators=(",", ":")
                )
                rows.append(
                    {
                        "created_at": t,
                        "event": event,
                        "target": hook.name,
                        "url": hook.url,
                        "payload": text,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": t,
                    }
                )
    return typed_frame("outbox", rows)


def notification_rows(
    changes: pd.DataFrame,
    alarms: pd.DataFrame,
    webhooks: Sequence[Webhook] | Mapping[str, Any] | None,
    *,
    created_at: Any,
) -> pd.DataFrame:
    """Outbox rows for alarm changes (``CHANGE_COLUMNS``; the alarms in ``alarms``, their
    state after the changes): per change and webhook whose events and ``min_severity`` accept
    it, payload ``{"event", "alarm": {...}, "at", "severity", "previous_severity"}``.
    ``webhooks``: parsed, or the ``notify/webhooks`` document."""
    hooks = webhooks if isinstance(webhooks, Sequence) else parse_webhooks(webhooks)
    if not len(changes) or not hooks:
        return empty_outbox()
    return outbox_rows(alarm_messages(changes, alarms), hooks, created_at=created_at)


def alarm_messages(changes: pd.DataFrame, alarms: pd.DataFrame) -> list[tuple[str, Any, dict]]:
    """(event, severity, payload) per alarm change (``CHANGE_COLUMNS``; ``alarms``: their state
    after the changes): what webhooks and the console's event stream say. Payload:
    ``{"event", "alarm": {...}, "at", "severity", "previous_severity"}``."""
    by_id = {a["alarm_id"]: a for a in _records("alarms", alarms)}
    messages = []
    for ch in _records("changes", changes):
        if ch["change"] not in CHANGE_EVENTS:
            raise InvalidInput(f"unknown alarm change {ch['change']!r}", hint=f"{CHANGES}")
        alarm = by_id.get(ch["alarm_id"])
        if alarm is None:
            raise InvalidInput(
                "a change names an alarm that is not among the alarms given",
                feature=ch["alarm_id"],
                hint="pass the AlarmChanges' alarms with its changes",
            )
        event = CHANGE_EVENTS[ch["change"]]
        payload = {
            "event": event,
            "alarm": alarm_json(alarm),
            "at": iso_z(ch["at"]),
            "severity": ch["severity"],
            "previous_severity": ch["previous_severity"],
        }
        messages.append((event, ch["severity"], payload))
    return messages


def incident_notification_rows(
    changes: pd.DataFrame,
    incidents: pd.DataFrame,
    webhooks: Sequence[Webhook] | Mapping[str, Any] | None,
    *,
    created_at: Any,
) -> pd.DataFrame:
    """Outbox rows for incident changes (``incident_id``, ``change`` of opened / updated /
    closed, ``at``; ``incidents``: their rows after the changes, ``INCIDENT_COLUMNS``): per
    change and webhook that accepts ``incident.<change>`` at the incident's severity, payload
    ``{"event", "incident": {...}, "at"}``."""
    hooks = webhooks if isinstance(webhooks, Sequence) else parse_webhooks(webhooks)
    if not len(changes) or not hooks:
        return empty_outbox()
    missing = [c for c in ("incident_id", "change", "at") if c not in changes]
    if missing:
        raise InvalidInput(f"the incident changes lack column(s) {', '.join(missing)}")
    by_id = {i["incident_id"]: i for i in _records("incidents", incidents)}
    messages = []
    for iid, change, t in zip(
        changes["incident_id"], changes["change"], changes["at"], strict=True
    ):
        event = f"incident.{change}"
        if event not in INCIDENT_EVENTS:
            raise InvalidInput(f"unknown incident change {change!r}", hint=f"{INCIDENT_EVENTS}")
        incident = by_id.get(iid)
        if incident is None:
            raise InvalidInput(
                "a change names an incident that is not among the incidents given",
                feature=str(iid),
                hint="pass the correlation's incidents with its changes",
            )
        payload = {"event": event, "incident": jsonable(incident), "at": iso_z(t)}
        messages.append((event, incident["severity"], payload))
    return outbox_rows(messages, hooks, created_at=created_at)

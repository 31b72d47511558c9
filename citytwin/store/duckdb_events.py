"""Alarms, incidents, notifications and the ingest log in the embedded store (a mixin of
``DuckDBStore``; the records are those of ``citytwin.warning.alarms``).

- ``alarms``: one row per alarm, keyed by ``alarm_id``; ``open_alarms``: one row per active
  alarm keyed by (rule_id, source), kept in step by ``save_alarms`` in the same transaction,
  so the database itself refuses a second active alarm for a (rule, source).
- ``alarm_log``: every change and operator action, in order.
- ``incidents``: keyed by ``incident_id``; ``alarm_ids`` and ``candidates`` as JSON text.
- ``outbox`` (ids from a sequence) and ``deliveries`` (every attempt): the notification queue.
- ``ingest_log``: one row per ingest commit (sequence number, time, rows, time span).

Small tables with set-based writes: a batch goes in as a registered Arrow table and a few SQL
statements, never row by row. Times are naive UTC in the database and tz-aware UTC in the
frames returned. Every method takes the store's lock; writes run in ``transaction()``, so
they join the caller's transaction when there is one (a refused write aborts it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from citytwin.errors import InvalidInput, NotFound

LEVELS = ("blue", "yellow", "orange", "red")
"""Warning levels, least severe first (as ``citytwin.warning.LEVELS``; not imported from
there to keep the rule engine out of the store's imports)."""
_LEVEL_CHECK = f"IN ({', '.join(repr(v) for v in LEVELS)})"
ALARM_STATUSES = ("active", "cleared")
INCIDENT_STATUSES = ("open", "closed")
OUTBOX_STATUSES = ("pending", "delivered", "dead")

_SPECS: dict[str, tuple[tuple[str, str], ...]] = {
    "alarms": (
        ("alarm_id", "VARCHAR PRIMARY KEY"),
        ("rule_id", "VARCHAR NOT NULL"),
        ("kind", "VARCHAR"),
        ("source", "VARCHAR NOT NULL"),
        ("datastream_id", "VARCHAR"),
        ("asset_id", "VARCHAR"),
        ("network", "VARCHAR"),
        ("zone", "VARCHAR"),
        ("x", "DOUBLE"),
        ("y", "DOUBLE"),
        ("severity", f"VARCHAR NOT NULL CHECK (severity {_LEVEL_CHECK})"),
        ("max_severity", f"VARCHAR NOT NULL CHECK (max_severity {_LEVEL_CHECK})"),
        ("status", "VARCHAR NOT NULL CHECK (status IN ('active', 'cleared'))"),
        ("acknowledged", "BOOLEAN NOT NULL"),
        ("raised_at", "TIMESTAMP NOT NULL"),
        ("updated_at", "TIMESTAMP NOT NULL"),
        ("cleared_at", "TIMESTAMP"),
        ("acknowledged_at", "TIMESTAMP"),
        ("acknowledged_by", "VARCHAR"),
        ("assignee", "VARCHAR"),
        ("value", "DOUBLE"),
        ("message", "VARCHAR"),
        ("incident_id", "VARCHAR"),
        ("escalations", "INTEGER NOT NULL"),
        ("escalated_at", "TIMESTAMP"),
        ("scenario_id", "VARCHAR"),
        ("lead_time_s", "DOUBLE"),
    ),
    "alarm_log": (
        ("alarm_id", "VARCHAR NOT NULL"),
        ("at", "TIMESTAMP NOT NULL"),
        ("action", "VARCHAR NOT NULL"),
        ("actor", "VARCHAR NOT NULL"),
        ("severity", "VARCHAR"),
        ("value", "DOUBLE"),
        ("text", "VARCHAR"),
    ),
    "incidents": (
        ("incident_id", "VARCHAR PRIMARY KEY"),
        ("kind", "VARCHAR NOT NULL"),
        ("title", "VARCHAR"),
        ("status", "VARCHAR NOT NULL CHECK (status IN ('open', 'closed'))"),
        ("severity", f"VARCHAR CHECK (severity {_LEVEL_CHECK})"),
        ("opened_at", "TIMESTAMP NOT NULL"),
        ("updated_at", "TIMESTAMP NOT NULL"),
        ("closed_at", "TIMESTAMP"),
        ("network", "VARCHAR"),
        ("zone", "VARCHAR"),
        ("x", "DOUBLE"),
        ("y", "DOUBLE"),
        ("asset_id", "VARCHAR"),
        ("alarm_ids", "JSON NOT NULL"),
        ("candidates", "JSON NOT NULL"),
    ),
    "outbox": (
        ("id", "BIGINT PRIMARY KEY DEFAULT nextval('outbox_ids')"),
        ("created_at", "TIMESTAMP NOT NULL"),
        ("event", "VARCHAR NOT NULL"),
        ("target", "VARCHAR NOT NULL"),
        ("url", "VARCHAR NOT NULL"),
        ("payload", "VARCHAR NOT NULL"),
        ("status", "VARCHAR NOT NULL CHECK (status IN ('pending', 'delivered', 'dead'))"),
        ("attempts", "INTEGER NOT NULL"),
        ("next_attempt_at", "TIMESTAMP NOT NULL"),
        ("last_error", "VARCHAR"),
        ("delivered_at", "TIMESTAMP"),
    ),
    "deliveries": (
        ("outbox_id", "BIGINT NOT NULL"),
        ("at", "TIMESTAMP NOT NULL"),
        ("status_code", "INTEGER"),
        ("error", "VARCHAR"),
        ("ms", "DOUBLE"),
    ),
    "ingest_log": (
        ("seq", "BIGINT PRIMARY KEY"),
        ("committed_at", "TIMESTAMP NOT NULL"),
        ("n", "BIGINT NOT NULL"),
        ("t_min", "TIMESTAMP"),
        ("t_max", "TIMESTAMP"),
    ),
}
COLUMNS = {name: tuple(c for c, _ in spec) for name, spec in _SPECS.items()}
"""The columns of each table, as the frames the methods take and return have them."""
_EXTRA = {"alarm_log": "n BIGINT NOT NULL DEFAULT nextval('alarm_log_seq')"}
"""Columns kept for order only (not returned)."""


def _ddl(name: str) -> str:
    cols = [f'"{c}" {t.replace("JSON", "VARCHAR")}' for c, t in _SPECS[name]]
    cols += [_EXTRA[name]] if name in _EXTRA else []
    return f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(cols)})"


_ADDED = {"alarms": ("scenario_id", "lead_time_s")}
"""Columns added since the tables were first made: added to older twins when they are opened
for writing, read as empty from those opened read-only."""
EVENT_TABLES = (
    "CREATE SEQUENCE IF NOT EXISTS outbox_ids START 1",
    "CREATE SEQUENCE IF NOT EXISTS alarm_log_seq START 1",
    *(_ddl(name) for name in _SPECS),
    "CREATE TABLE IF NOT EXISTS open_alarms (rule_id VARCHAR NOT NULL, source VARCHAR NOT NULL,"
    " alarm_id VARCHAR NOT NULL, PRIMARY KEY (rule_id, source))",
    *(
        f'ALTER TABLE {name} ADD COLUMN IF NOT EXISTS "{c}" {dict(_SPECS[name])[c]}'
        for name, added in _ADDED.items()
        for c in added
    ),
)
"""DDL of the tables, run when a twin is created and when one is opened (older twins)."""


# -- frames <-> Arrow -------------------------------------------------------------------------
def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float | np.floating):
        return math.isnan(v)
    return isinstance(v, np.datetime64) and bool(np.isnat(v))


def _json_default(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray | tuple | set):
        return list(v)
    if isinstance(v, pd.Timestamp | dt.datetime):
        return pd.Timestamp(v).isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON-able")


def _naive_times(values: Any, what: str) -> pd.Series:
    try:
        t = pd.to_datetime(pd.Series(values, dtype=object), utc=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"column {what!r} must hold times: {exc}") from None
    return t.dt.floor("us").dt.tz_localize(None).dt.as_unit("us")


def _arrow(frame: pd.DataFrame, table: str, skip: Sequence[str] = ()) -> pa.Table:
    """A frame as Arrow columns of a table's types (all its columns but ``skip`` needed)."""
    spec = [(c, t) for c, t in _SPECS[table] if c not in skip]
    missing = [c for c, _ in spec if c not in frame]
    if missing:
        raise InvalidInput(
            f"the {table} rows lack column(s) {', '.join(missing)}",
            hint=f"columns are {', '.join(COLUMNS[table])}",
        )
    cols: dict[str, pa.Array] = {}
    for c, sql in spec:
        values = frame[c].tolist()
        kind = sql.split()[0]
        try:
            if kind == "VARCHAR":
                arr = pa.array([None if _missing(v) else str(v) for v in values], pa.string())
            elif kind == "JSON":
                text = [json.dumps(_listed(v), default=_json_default) for v in values]
                arr = pa.array(text, pa.string())
            elif kind == "DOUBLE":
                arr = pa.array([None if _missing(v) else float(v) for v in values], pa.float64())
            elif kind == "BOOLEAN":
                arr = pa.array([None if _missing(v) else bool(v) for v in values], pa.bool_())
            elif kind in ("BIGINT", "INTEGER"):
                arr = pa.array([None if _missing(v) else int(v) for v in values], pa.int64())
            else:  # TIMESTAMP
                arr = pa.Array.from_pandas(_naive_times(values, c), type=pa.timestamp("us"))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"column {c!r} of the {table} rows: {exc}") from None
        if "NOT NULL" in sql and arr.null_count and "DEFAULT" not in sql:
            raise InvalidInput(
                f"column {c!r} of the {table} rows must not be empty",
                feature=_first_id(frame, table, arr),
            )
        cols[c] = arr
    return pa.table(cols)


def _listed(v: Any) -> list[Any]:
    """A list column's value as a list (missing: empty)."""
    if isinstance(v, str | bytes | dict):
        raise TypeError(f"a list is needed, not {type(v).__name__} {v!r:.40}")
    if v is None or (not isinstance(v, list | tuple | np.ndarray | set) and _missing(v)):
        return []
    return list(v)


def _last_of_each(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """The last row of each key (an upsert of several versions keeps the last)."""
    return frame.drop_duplicates(key, keep="last") if key in frame else frame


def _first_id(frame: pd.DataFrame, table: str, arr: pa.Array) -> str | None:
    key = COLUMNS[table][0]
    i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
    return str(frame[key].iloc[i]) if key in frame else None


def _frame(table: pa.Table, name: str) -> pd.DataFrame:
    """Query results (the columns of ``name``) as a typed frame: strings as objects (None
    when missing), times as tz-aware UTC, JSON as Python values, nullable integers as
    ``Int64``."""
    types = dict(_SPECS[name])
    out: dict[str, Any] = {}
    for c in table.column_names:
        col, sql = table.column(c), types[c]
        kind, required = sql.split()[0], "NOT NULL" in sql or "PRIMARY KEY" in sql
        if kind == "VARCHAR":
            out[c] = pd.Series(col.to_pylist(), dtype=object)
        elif kind == "JSON":
            out[c] = pd.Series([json.loads(v) if v else [] for v in col.to_pylist()], dtype=object)
        elif kind == "DOUBLE":
            out[c] = pd.Series(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        elif kind == "BOOLEAN":
            out[c] = pd.Series(col.to_numpy(zero_copy_only=False), dtype=bool)
        elif kind in ("BIGINT", "INTEGER"):
            out[c] = (
                pd.Series(col.to_numpy(zero_copy_only=False), dtype=np.int64)
                if required
                else pd.Series(pd.array(col.to_pylist(), dtype="Int64"))
            )
        else:
            t = pd.Series(col.to_numpy(zero_copy_only=False)).astype("datetime64[us]")
            out[c] = t.dt.tz_localize("UTC")
    return pd.DataFrame(out, columns=list(table.column_names))


def _naive(t: Any, what: str) -> dt.datetime:
    t = t.as_py() if hasattr(t, "as_py") else t  # an Arrow scalar
    if t is None or _missing(t):
        raise InvalidInput(f"{what} is missing")
    try:
        ts = pd.Timestamp(t)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} {t!r} is not a time") from None
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts
    return ts.floor("us").to_pydatetime()


def _naive_or_none(t: Any, what: str) -> dt.datetime | None:
    t = t.as_py() if hasattr(t, "as_py") else t
    return None if t is None or _missing(t) else _naive(t, what)


def _values(v: str | Sequence[str]) -> list[str]:
    return [v] if isinstance(v, str) else [str(x) for x in v]


def _limit(limit: int | None) -> str:
    if limit is None:
        return ""
    if int(limit) < 0:
        raise InvalidInput("limit must not be negative")
    return f" LIMIT {int(limit)}"


def _one_of(value: str | None, allowed: Sequence[str], what: str) -> None:
    if value is not None and value not in allowed:
        raise InvalidInput(f"unknown {what} {value!r}", hint=f"use one of {', '.join(allowed)}")


class EventStoreMixin:
    """``Store``'s alarm, incident, notification and ingest-log methods for ``DuckDBStore``."""

    con: duckdb.DuckDBPyConnection
    path: str
    _lock: threading.RLock
    transaction: Callable[[], AbstractContextManager[None]]

    def _require_events(self) -> None:
        ready = getattr(self, "_events_ready", None)
        if ready is None:
            ready = bool(
                self.con.execute(
                    "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'open_alarms'"
                ).fetchone()[0]
            )
            self._events_ready = ready
            self._events_lacking: dict[str, set[str]] = {}
            for name, added in _ADDED.items() if ready else ():
                have = self.con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [name]
                ).fetchall()
                self._events_lacking[name] = set(added) - {c for (c,) in have}
        if not ready:
            raise NotFound(
                f"{self.path} has no alarm tables: it was made by an older CityTwin;"
                " open it once without read_only to add them"
            )

    def _read_events(self, table: str, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """``sql`` (its columns those of ``table``) as a typed frame."""
        with self._lock:
            self._require_events()
            return _frame(self.con.execute(sql, list(params)).to_arrow_table(), table)

    def _event_cols(self, table: str, alias: str = "") -> str:
        with self._lock:
            self._require_events()
        lacking = self._events_lacking.get(table, ())  # an older twin opened read-only
        return ", ".join(  # "at" is a keyword
            f'NULL::{dict(_SPECS[table])[c].split()[0]} AS "{c}"'
            if c in lacking
            else f'{alias}"{c}"'
            for c in COLUMNS[table]
        )

    # -- alarms -------------------------------------------------------------------------------
    def alarms_for(self, pairs: pd.DataFrame) -> pd.DataFrame:
        if not {"rule_id", "source"} <= set(pairs.columns):
            raise InvalidInput("the pairs need 'rule_id' and 'source' columns")
        keys = pa.table(
            {
                "rule_id": pa.array([str(v) for v in pairs["rule_id"]], pa.string()),
                "source": pa.array([str(v) for v in pairs["source"]], pa.string()),
            }
        )
        with self._lock:
            self._require_events()
            self.con.register("_pairs", keys)
            try:
                return self._read_events(
                    "alarms",
                    f"SELECT {self._event_cols('alarms', 'a.')} FROM alarms a"
                    " SEMI JOIN _pairs p ON p.rule_id = a.rule_id AND p.source = a.source"
                    " QUALIFY row_number() OVER (PARTITION BY a.rule_id, a.source"
                    " ORDER BY a.raised_at DESC, a.alarm_id DESC) = 1"
                    " ORDER BY a.raised_at, a.alarm_id",
                )
            finally:
                self.con.unregister("_pairs")

    def save_alarms(self, alarms: pd.DataFrame, log: pd.DataFrame | None = None) -> None:
        table = _arrow(_last_of_each(alarms, "alarm_id"), "alarms") if len(alarms) else None
        entries = _arrow(log, "alarm_log") if log is not None and len(log) else None
        statuses = set(table.column("status").to_pylist()) if table is not None else set()
        bad = [s for s in statuses if s not in ALARM_STATUSES]
        if bad:
            raise InvalidInput(
                f"unknown alarm status {bad[0]!r}", hint=f"use one of {', '.join(ALARM_STATUSES)}"
            )
        with self._lock, self.transaction():
            self._require_events()
            if table is not None:
                self.con.register("_alarms", table)
                try:
                    self._write_alarms()
                finally:
                    self.con.unregister("_alarms")
            if entries is not None:
                self.con.register("_log", entries)
                try:
                    cols = self._event_cols("alarm_log")
                    self.con.execute(f"INSERT INTO alarm_log ({cols}) SELECT {cols} FROM _log")
                finally:
                    self.con.unregister("_log")

    def _write_alarms(self) -> None:
        """Upsert ``_alarms``, then move ``open_alarms`` along: the rows of alarms no longer
        active go, those of alarms now active come (a second one for a pair is refused)."""
        cols = self._event_cols("alarms")
        try:
            self.con.execute(f"INSERT OR REPLACE INTO alarms ({cols}) SELECT {cols} FROM _alarms")
        except duckdb.ConstraintException as exc:
            raise InvalidInput(f"alarm rows refused: {exc}") from None
        self.con.execute(
            "DELETE FROM open_alarms WHERE alarm_id IN"
            " (SELECT alarm_id FROM _alarms WHERE status <> 'active')"
        )
        try:
            self.con.execute(
                "INSERT INTO open_alarms SELECT rule_id, source, alarm_id FROM _alarms a"
                " WHERE status = 'active' AND NOT EXISTS"
                " (SELECT 1 FROM open_alarms o WHERE o.alarm_id = a.alarm_id)"
            )
        except duckdb.ConstraintException as exc:
            raise InvalidInput(
                f"a second active alarm for the same rule and source: {exc}",
                hint="at most one alarm per (rule_id, source) is active: clear the active"
                " one first, or update it (the same alarm_id)",
            ) from None

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
        _one_of(status, ALARM_STATUSES, "alarm status")
        _one_of(severity_at_least, LEVELS, "severity")
        conds, params = ["TRUE"], []
        if status is not None:
            conds.append("status = ?")
            params.append(status)
        if acknowledged is not None:
            conds.append("acknowledged = ?")
            params.append(bool(acknowledged))
        for col, value in (("rule_id", rule_id), ("source", source)):
            if value is not None:
                conds.append(f"{col} IN (SELECT unnest(?::VARCHAR[]))")
                params.append(_values(value))
        if severity_at_least is not None:
            conds.append("severity IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(LEVELS[LEVELS.index(severity_at_least) :]))
        if incident_id is not None:
            conds.append("incident_id = ?")
            params.append(str(incident_id))
        if since is not None:
            conds.append("raised_at >= ?")
            params.append(_naive(since, "since"))
        return self._read_events(
            "alarms",
            f"SELECT {self._event_cols('alarms')} FROM alarms WHERE {' AND '.join(conds)}"
            f" ORDER BY raised_at DESC, alarm_id{_limit(limit)}",
            params,
        )

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        return self._read_one("alarms", "alarm_id", alarm_id)

    def _read_one(self, table: str, key: str, value: str) -> dict[str, Any] | None:
        """The row of ``table`` whose ``key`` is ``value``, as a dict, or None."""
        frame = self._read_events(
            table, f"SELECT {self._event_cols(table)} FROM {table} WHERE {key} = ?", [value]
        )
        return frame.to_dict("records")[0] if len(frame) else None

    def alarm_log(self, alarm_id: str | None = None, *, limit: int | None = None) -> pd.DataFrame:
        where, params = ("alarm_id = ?", [alarm_id]) if alarm_id is not None else ("TRUE", [])
        return self._read_events(
            "alarm_log",
            f"SELECT {self._event_cols('alarm_log')} FROM alarm_log WHERE {where}"
            f' ORDER BY "at", n{_limit(limit)}',
            params,
        )

    # -- incidents ----------------------------------------------------------------------------
    def save_incidents(self, incidents: pd.DataFrame) -> None:
        if not len(incidents):
            return
        table = _arrow(_last_of_each(incidents, "incident_id"), "incidents")
        cols = self._event_cols("incidents")
        with self._lock, self.transaction():
            self._require_events()
            self.con.register("_incidents", table)
            try:
                self.con.execute(
                    f"INSERT OR REPLACE INTO incidents ({cols}) SELECT {cols} FROM _incidents"
                )
            except duckdb.ConstraintException as exc:
                raise InvalidInput(f"incident rows refused: {exc}") from None
            finally:
                self.con.unregister("_incidents")

    def incidents(
        self, status: str | None = None, since: Any = None, limit: int | None = 1000
    ) -> pd.DataFrame:
        _one_of(status, INCIDENT_STATUSES, "incident status")
        conds, params = ["TRUE"], []
        if status is not None:
            conds.append("status = ?")
            params.append(status)
        if since is not None:
            conds.append("opened_at >= ?")
            params.append(_naive(since, "since"))
        return self._read_events(
            "incidents",
            f"SELECT {self._event_cols('incidents')} FROM incidents WHERE {' AND '.join(conds)}"
            f" ORDER BY opened_at DESC, incident_id{_limit(limit)}",
            params,
        )

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        return self._read_one("incidents", "incident_id", incident_id)

    # -- notifications ------------------------------------------------------------------------
    def enqueue(self, outbox_rows: pd.DataFrame) -> int:
        if not len(outbox_rows):
            return 0
        rows = outbox_rows.copy()
        if "created_at" not in rows:
            raise InvalidInput("outbox rows need a 'created_at' time")
        defaults = {
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": rows["created_at"],
            "last_error": None,
            "delivered_at": None,
        }
        for c, v in defaults.items():
            if c not in rows:
                rows[c] = v
        table = _arrow(rows, "outbox", skip=("id",))
        bad = [s for s in set(table.column("status").to_pylist()) if s not in OUTBOX_STATUSES]
        if bad:
            raise InvalidInput(
                f"unknown outbox status {bad[0]!r}", hint=f"use one of {', '.join(OUTBOX_STATUSES)}"
            )
        table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
        cols = ", ".join(f'"{c}"' for c in COLUMNS["outbox"][1:])
        with self._lock, self.transaction():
            self._require_events()
            self.con.register("_outbox", table)
            try:
                self.con.execute(
                    f"INSERT INTO outbox ({cols}) SELECT {cols} FROM _outbox ORDER BY _row"
                )
            finally:
                self.con.unregister("_outbox")
        return table.num_rows

    def due_notifications(self, now: Any, limit: int | None = 100) -> pd.DataFrame:
        return self._read_events(
            "outbox",
            f"SELECT {self._event_cols('outbox')} FROM outbox WHERE status = 'pending'"
            f" AND next_attempt_at <= ? ORDER BY id{_limit(limit)}",
            [_naive(now, "now")],
        )

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
        if ok and dead:
            raise InvalidInput("a delivery can't be both ok and dead")
        when = _naive(at, "the delivery time")
        retry = None
        if not ok and not dead:
            if next_attempt_at is None:
                raise InvalidInput(
                    "a failed delivery needs the next attempt's time",
                    feature=str(outbox_id),
                    hint="give next_attempt_at, or dead=True to give up",
                )
            retry = _naive(next_attempt_at, "next_attempt_at")
        with self._lock, self.transaction():
            self._require_events()
            row = self.con.execute(
                "SELECT status FROM outbox WHERE id = ?", [int(outbox_id)]
            ).fetchone()
            if row is None:
                raise NotFound(f"no notification {outbox_id} in the outbox")
            if row[0] != "pending":
                raise InvalidInput(
                    f"notification {outbox_id} is {row[0]} already", feature=str(outbox_id)
                )
            self.con.execute(
                "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?)",
                [
                    int(outbox_id),
                    when,
                    None if status_code is None else int(status_code),
                    error,
                    None if ms is None else float(ms),
                ],
            )
            status = "delivered" if ok else "dead" if dead else "pending"
            self.con.execute(
                "UPDATE outbox SET attempts = attempts + 1, status = ?, last_error = ?,"
                " next_attempt_at = coalesce(?, next_attempt_at), delivered_at = ? WHERE id = ?",
                [status, None if ok else error, retry, when if ok else None, int(outbox_id)],
            )

    def notifications(self, status: str | None = None, limit: int | None = 1000) -> pd.DataFrame:
        _one_of(status, OUTBOX_STATUSES, "notification status")
        where, params = ("status = ?", [status]) if status is not None else ("TRUE", [])
        return self._read_events(
            "outbox",
            f"SELECT {self._event_cols('outbox')} FROM outbox WHERE {where}"
            f" ORDER BY id DESC{_limit(limit)}",
            params,
        )

    def deliveries(self, outbox_id: int | None = None) -> pd.DataFrame:
        where, params = ("outbox_id = ?", [int(outbox_id)]) if outbox_id is not None else (
            "TRUE", []
        )  # fmt: skip
        return self._read_events(
            "deliveries",
            f"SELECT {self._event_cols('deliveries')} FROM deliveries WHERE {where}"
            ' ORDER BY "at", outbox_id',
            params,
        )

    # -- the ingest log -----------------------------------------------------------------------
    def log_ingest(self, seq: int, committed_at: Any, n: int, t_min: Any, t_max: Any) -> None:
        row = [
            int(seq),
            _naive(committed_at, "committed_at"),
            int(n),
            _naive_or_none(t_min, "t_min"),
            _naive_or_none(t_max, "t_max"),
        ]
        with self._lock, self.transaction():
            self._require_events()
            try:
                self.con.execute("INSERT INTO ingest_log VALUES (?, ?, ?, ?, ?)", row)
            except duckdb.ConstraintException:
                raise InvalidInput(
                    f"ingest commit {seq} is logged already", hint="sequence numbers are unique"
                ) from None

    def ingest_log(self, after_seq: int | None = None, limit: int | None = None) -> pd.DataFrame:
        where, params = ("seq > ?", [int(after_seq)]) if after_seq is not None else ("TRUE", [])
        return self._read_events(
            "ingest_log",
            f"SELECT {self._event_cols('ingest_log')} FROM ingest_log WHERE {where}"
            f" ORDER BY seq{_limit(limit)}",
            params,
        )

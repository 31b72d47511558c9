"""The audit log of the data services in the embedded store (a mixin of ``DuckDBStore``), and
the one-read document fetch the credential registry loads itself with.

- ``audit_log``: append-only, one row per request (``AUDIT_COLUMNS``), hash-chained: each
  row's ``hash`` is ``audit_digest(prev_hash, row)`` and its ``prev_hash`` the hash of the row
  before (``AUDIT_GENESIS`` for seq 1). Rows go in sorted by seq, so the per-row-group zone maps
  on ``seq`` and ``at`` prune range reads; no index (appends stay cheap).
- ``audit_tail``: one row, the (seq, hash) of the last append, written in the same
  transaction. Appending reads the tail from there (not a scan of the log), and
  ``verify_audit`` compares it with the log's end, so deleting the last entries shows too.

The tables are made on the first append (twins made before the audit log existed get them
then); reading a twin without them gives empty answers. A batch is chained in Python (each
hash needs the one before), then inserted as one Arrow table.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from citytwin.errors import InvalidInput
from citytwin.store.base import AUDIT_COLUMNS, AUDIT_GENESIS, audit_digest

_TYPES = {
    "seq": "BIGINT NOT NULL",
    "at": "TIMESTAMP NOT NULL",
    "status": "INTEGER NOT NULL",
    "count": "BIGINT",
    "duration_ms": "DOUBLE",
}
AUDIT_TABLES = (
    "CREATE TABLE IF NOT EXISTS audit_log ("
    + ", ".join(f'"{c}" {_TYPES.get(c, "VARCHAR")}' for c in AUDIT_COLUMNS)
    + ")",
    "CREATE TABLE IF NOT EXISTS audit_tail (seq BIGINT NOT NULL, hash VARCHAR NOT NULL)",
)
_COLS = ", ".join(f'"{c}"' for c in AUDIT_COLUMNS)
_TEXT = ("user", "department", "key_id", "client", "method", "path", "query", "family", "resource")
MAX_TEXT = 2000
"""Longer paths and query strings are cut to this many characters in the log."""


class AuditStoreMixin:
    """``Store``'s audit-log methods and ``get_documents`` for ``DuckDBStore``."""

    con: duckdb.DuckDBPyConnection
    _lock: threading.RLock
    transaction: Callable[[], AbstractContextManager[None]]

    def _audit_ready(self, create: bool = False) -> bool:
        if getattr(self, "_audit_tables", False):
            return True
        found = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'audit_tail'"
        ).fetchone()[0]
        if not found and create:
            for sql in AUDIT_TABLES:
                self.con.execute(sql)
            found = 1
        self._audit_tables = bool(found)
        return self._audit_tables

    def append_audit(self, entries: pd.DataFrame | Sequence[dict[str, Any]]) -> tuple[int, str]:
        rows = entries.to_dict("records") if isinstance(entries, pd.DataFrame) else list(entries)
        with self._lock:
            self._audit_ready(create=True)
        with self._lock, self.transaction():
            seq, prev = self._tail()
            if not rows:
                return seq, prev
            cols: dict[str, list[Any]] = {c: [] for c in AUDIT_COLUMNS}
            for i, raw in enumerate(rows):
                entry = _entry(raw, i)
                seq += 1
                entry["seq"], entry["prev_hash"] = seq, prev
                prev = entry["hash"] = audit_digest(prev, entry)
                for c in AUDIT_COLUMNS:
                    cols[c].append(entry[c])
            table = pa.table([pa.array(cols[f.name], f.type) for f in _SCHEMA], schema=_SCHEMA)
            self.con.register("_audit", table)
            try:
                self.con.execute(f"INSERT INTO audit_log ({_COLS}) SELECT {_COLS} FROM _audit")
            finally:
                self.con.unregister("_audit")
            self.con.execute("DELETE FROM audit_tail")
            self.con.execute("INSERT INTO audit_tail VALUES (?, ?)", [seq, prev])
            return seq, prev

    def _tail(self) -> tuple[int, str]:
        row = self.con.execute("SELECT seq, hash FROM audit_tail").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, AUDIT_GENESIS)

    def audit_tail(self) -> tuple[int, str]:
        with self._lock:
            return self._tail() if self._audit_ready() else (0, AUDIT_GENESIS)

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
        conds, params = _time_conds(since, until)
        for col, value in (("user", user), ("department", department)):
            if value is not None:
                conds.append(f'"{col}" = ?')
                params.append(str(value))
        if path_prefix:
            conds.append("starts_with(path, ?)")
            params.append(str(path_prefix))
        if seq_from is not None:
            conds.append("seq >= ?")
            params.append(int(seq_from))
        if seq_to is not None:
            conds.append("seq < ?")
            params.append(int(seq_to))
        if limit is not None and int(limit) < 0:
            raise InvalidInput("limit must not be negative")
        order = "seq DESC, hash" if newest_first else "seq, hash"
        sql = f"SELECT {_COLS} FROM audit_log WHERE {' AND '.join(conds)} ORDER BY {order}" + (
            "" if limit is None else f" LIMIT {int(limit)}"
        )
        with self._lock:
            if not self._audit_ready():
                return _frame(_SCHEMA.empty_table())
            table = self.con.execute(sql, params).to_arrow_table()
        return _frame(table)

    def audit_usage(self, since: Any = None, until: Any = None) -> pd.DataFrame:
        conds, params = _time_conds(since, until)
        sql = (
            "SELECT coalesce(resource, family) AS service, department, count(*) AS requests,"
            ' coalesce(sum("count"), 0) AS features FROM audit_log'
            f" WHERE status < 400 AND {' AND '.join(conds)}"
            " GROUP BY ALL ORDER BY requests DESC, service, department NULLS FIRST"
        )
        with self._lock:
            if not self._audit_ready():
                rows: list[tuple[Any, ...]] = []
            else:
                rows = self.con.execute(sql, params).fetchall()
        names = ("service", "department", "requests", "features")
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
        dtypes = (object, object, "int64", "int64")
        return pd.DataFrame(
            {n: pd.Series(list(v), dtype=d) for n, v, d in zip(names, columns, dtypes, strict=True)}
        )

    def get_documents(self, prefix: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self.con.execute(
                "SELECT key, body FROM documents WHERE starts_with(key, ?) ORDER BY key", [prefix]
            ).fetchall()
        return {key: json.loads(body) for key, body in rows}


_SCHEMA = pa.schema(
    [
        (c, {"seq": pa.int64(), "at": pa.timestamp("us"), "status": pa.int32(),
             "count": pa.int64(), "duration_ms": pa.float64()}.get(c, pa.string()))
        for c in AUDIT_COLUMNS
    ]
)  # fmt: skip


def _frame(table: pa.Table) -> pd.DataFrame:
    """Audit rows as a frame: strings as objects (None when missing), ``at`` tz-aware UTC,
    ``count`` nullable ``Int64``."""
    out: dict[str, Any] = {}
    for c in AUDIT_COLUMNS:
        col = table.column(c)
        if c == "at":
            t = pd.Series(col.to_numpy(zero_copy_only=False)).astype("datetime64[us]")
            out[c] = t.dt.tz_localize("UTC")
        elif c in ("seq", "status"):
            out[c] = pd.Series(col.to_numpy(zero_copy_only=False), dtype="int64")
        elif c == "count":
            out[c] = pd.Series(pd.array(col.to_pylist(), dtype="Int64"))
        elif c == "duration_ms":
            out[c] = pd.Series(col.to_numpy(zero_copy_only=False), dtype="float64")
        else:
            out[c] = pd.Series(col.to_pylist(), dtype=object)
    return pd.DataFrame(out, columns=list(AUDIT_COLUMNS))


def _time_conds(since: Any, until: Any) -> tuple[list[str], list[Any]]:
    conds, params = ["TRUE"], []
    for op, value, what in ((">=", since, "since"), ("<", until, "until")):
        if value is not None:
            conds.append(f'"at" {op} ?')
            params.append(_naive(value, what))
    return conds, params


def _naive(value: Any, what: str) -> dt.datetime:
    """A time as naive UTC to the microsecond (plain datetimes take the fast way)."""
    if isinstance(value, dt.datetime) and not isinstance(value, pd.Timestamp):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{what} {value!r} is not a time", hint="e.g. 2025-06-02T08:00Z"
        ) from None
    if ts is pd.NaT:
        raise InvalidInput(f"{what} is missing")
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts
    return ts.floor("us").to_pydatetime()


def _entry(raw: dict[str, Any], i: int) -> dict[str, Any]:
    """One entry to append, checked and normalised (texts cut to ``MAX_TEXT``)."""
    missing = [c for c in ("at", "method", "path", "status") if raw.get(c) is None]
    if missing:
        raise InvalidInput(
            f"audit entry {i} lacks {', '.join(missing)}",
            hint=f"entries have the columns {', '.join(AUDIT_COLUMNS[:-2])} (seq is assigned)",
        )
    entry: dict[str, Any] = {}
    for c in _TEXT:
        v = raw.get(c)
        entry[c] = None if v is None or (isinstance(v, float) and v != v) else str(v)[:MAX_TEXT]
    entry["at"] = _naive(raw["at"], f"audit entry {i}'s time")
    try:
        entry["status"] = int(raw["status"])
        count = raw.get("count")
        entry["count"] = None if count is None or count is pd.NA or count != count else int(count)
        ms = raw.get("duration_ms")
        entry["duration_ms"] = None if ms is None or ms != ms else round(float(ms), 3)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"audit entry {i}: {exc}") from None
    return entry

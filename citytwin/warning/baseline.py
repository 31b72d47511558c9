"""Same-hour-of-week baselines for anomaly rules: a median and a MAD per datastream and hour.

A ``Baseline`` is data handed to the engine (``evaluate(..., baseline=...)``): a table with
``datastream_id``, ``hour_of_week`` (0 = Monday 00:00-01:00 local time ... 167), ``median``,
``mad`` (median absolute deviation) and optionally ``count``. ``build_baseline`` computes one
from a history of readings; both use the rule set's timezone for the hour of week.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from citytwin.errors import InvalidInput

HOURS_PER_WEEK = 168
MAD_TO_SIGMA = 1.4826  # robust z = (x - median) / (1.4826 · MAD): a standard z for normal data


def hour_of_week(times: Any, timezone: str = "UTC") -> np.ndarray:
    """Hour of the week (0 = Monday 00:00 local time ... 167) of UTC ``times`` (datetime64,
    or int64 nanoseconds since the epoch) in ``timezone``."""
    t = pd.DatetimeIndex(np.asarray(times).astype("datetime64[ns]"), tz="UTC")
    if timezone != "UTC":
        t = t.tz_convert(timezone)
    return (t.day_of_week.to_numpy() * 24 + t.hour.to_numpy()).astype(np.int64)


class Baseline:
    """Median and MAD per (datastream, hour of week)."""

    def __init__(self, table: pd.DataFrame) -> None:
        need = ("datastream_id", "hour_of_week", "median", "mad")
        if missing := [c for c in need if c not in table]:
            raise InvalidInput(
                f"a baseline table needs the column {missing[0]!r}",
                source="baseline",
                hint=f"columns: {', '.join(need)} (build_baseline makes one from history)",
            )
        how = table["hour_of_week"].to_numpy()
        if len(how) and (how.min() < 0 or how.max() >= HOURS_PER_WEEK):
            raise InvalidInput("hour_of_week must lie in 0..167", source="baseline")
        if (table["mad"].to_numpy(float) < 0).any():
            raise InvalidInput("a MAD can't be negative", source="baseline")
        self.table = table.reset_index(drop=True)
        self._bound: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.table)

    def lookup(
        self, catalog_token: int, catalog_ids: pd.Index, rows: np.ndarray, how: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(median, mad)`` for catalog ``rows`` at hours ``how``; NaN where there is none."""
        bound = self._bound.get(catalog_token)
        if bound is None:
            r = catalog_ids.get_indexer(self.table["datastream_id"])
            ok = r >= 0
            key = (
                r[ok].astype(np.int64) * HOURS_PER_WEEK
                + self.table["hour_of_week"].to_numpy(np.int64)[ok]
            )
            order = np.argsort(key, kind="stable")
            bound = (
                key[order],
                self.table["median"].to_numpy(float)[ok][order],
                self.table["mad"].to_numpy(float)[ok][order],
            )
            self._bound = {catalog_token: bound}  # one catalog at a time
        keys, med, mad = bound
        if not len(keys):
            return np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        q = rows.astype(np.int64) * HOURS_PER_WEEK + how
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        found = keys[pos] == q
        return np.where(found, med[pos], np.nan), np.where(found, mad[pos], np.nan)


def build_baseline(
    history: pd.DataFrame | Mapping[str, Any], *, timezone: str = "UTC", min_count: int = 3
) -> Baseline:
    """The same-hour-of-week baseline of a history of readings (``datastream_id``,
    ``phenomenon_time``, ``result`` or ``value``): per datastream and hour of week (in
    ``timezone``) the median and the MAD of the values, kept where there are at least
    ``min_count`` of them."""
    from citytwin.warning.engine import _times, _values  # one reading parser

    frame = history if isinstance(history, pd.DataFrame) else pd.DataFrame(dict(history))
    if "datastream_id" not in frame:
        raise InvalidInput("history needs a 'datastream_id' column", source="baseline")
    t = _times(frame)
    v = _values(frame)
    ok = np.isfinite(v)
    df = pd.DataFrame(
        {
            "datastream_id": frame["datastream_id"].to_numpy()[ok],
            "hour_of_week": hour_of_week(t[ok], timezone),
            "value": v[ok],
        }
    )
    keys = ["datastream_id", "hour_of_week"]
    g = df.groupby(keys, sort=True)["value"]
    df["median"] = g.transform("median")
    df["dev"] = (df["value"] - df["median"]).abs()
    table = df.groupby(keys, sort=True).agg(
        median=("median", "first"), mad=("dev", "median"), count=("value", "size")
    )
    table = table[table["count"] >= min_count].reset_index()
    return Baseline(table)

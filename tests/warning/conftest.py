"""Helpers for the warning tests: hand-made series, catalogs and compact event lists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from citytwin.warning import Catalog, evaluate, parse_rules

T0 = pd.Timestamp("2024-06-03 00:00", tz="UTC")  # a Monday


def at(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def series(ds: str, points: list[tuple[float, float]]) -> pd.DataFrame:
    """Readings of one datastream from (minute, value) pairs."""
    return pd.DataFrame(
        {
            "datastream_id": ds,
            "phenomenon_time": [at(m) for m, _ in points],
            "result": [float(v) for _, v in points],
        }
    )


def readings(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


def rules(*entries: dict, timezone: str = "UTC"):
    return parse_rules({"version": 1, "timezone": timezone, "rules": list(entries)})


def catalog(*rows: dict) -> Catalog:
    return Catalog(pd.DataFrame(list(rows)))


def compact(events: pd.DataFrame) -> list[tuple]:
    """(minute, rule, event, source, level or previous level) per event."""
    minutes = (events["time"] - T0) / pd.Timedelta(minutes=1)
    return [
        (float(m), r, e, s, lv if isinstance(lv, str) else pv)
        for m, r, e, s, lv, pv in zip(
            minutes,
            events["rule_id"],
            events["event"],
            events["source"],
            events["level"],
            events["previous_level"],
            strict=True,
        )
    ]


def run(rule_set, cat, rd, state=None, **kw):
    return evaluate(rule_set, cat, rd, state, **kw)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240603)

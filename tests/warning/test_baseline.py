"""Same-hour-of-week baselines: hour of week in a timezone, median and MAD from history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.warning import Baseline, build_baseline, evaluate, hour_of_week
from tests.warning.conftest import T0, catalog, compact, rules


def test_hour_of_week_in_local_time():
    t = pd.DatetimeIndex(
        ["2024-06-03 00:30", "2024-06-09 23:59", "2024-06-02 16:00"], tz="UTC"
    ).tz_localize(None)
    assert hour_of_week(t.to_numpy()).tolist() == [0, 167, 6 * 24 + 16]
    # Shanghai is UTC+8: Sunday 16:00 UTC is Monday 00:00 there
    assert hour_of_week(t.to_numpy(), "Asia/Shanghai").tolist() == [8, 7, 0]


def test_build_baseline_median_and_mad_per_hour_of_week():
    weeks = pd.to_timedelta(np.arange(5) * 7, unit="D")
    monday_8 = T0 + pd.Timedelta(hours=8) + weeks
    monday_9 = T0 + pd.Timedelta(hours=9) + weeks
    history = pd.DataFrame(
        {
            "datastream_id": ["f"] * 10 + ["g"] * 2,
            "phenomenon_time": [*monday_8, *monday_9, *monday_8[:2]],
            "result": [1, 2, 3, 4, 100, 10, 10, 10, 10, 11, 5, 6],
        }
    )
    base = build_baseline(history, min_count=3)
    table = base.table.set_index(["datastream_id", "hour_of_week"])
    assert list(table.index) == [("f", 8), ("f", 9)]  # g has too few readings
    # values 1 2 3 4 100: deviations from 3 are 2 1 0 1 97
    assert table.loc[("f", 8), "median"] == 3 and table.loc[("f", 8), "mad"] == 1
    assert table.loc[("f", 9), "median"] == 10 and table.loc[("f", 9), "mad"] == 0
    assert table["count"].tolist() == [5, 5]
    shanghai = build_baseline(history, timezone="Asia/Shanghai", min_count=3).table
    assert shanghai["hour_of_week"].tolist() == [16, 17]


def test_min_mad_floors_a_flat_baseline():
    base = Baseline(
        pd.DataFrame({"datastream_id": ["f"], "hour_of_week": [0], "median": [10.0], "mad": [0.0]})
    )
    rule = {
        "id": "an",
        "kind": "anomaly",
        "applies_to": "flow",
        "direction": "above",
        "levels": {"red": 3.0},
        "min_mad": 1.0,
    }
    rd = pd.DataFrame(
        {
            "datastream_id": "f",
            "phenomenon_time": [T0, T0 + pd.Timedelta(minutes=5)],
            "result": [12.0, 13.5],
        }
    )
    ev = evaluate(rules(rule), catalog({"datastream_id": "f", "observed_property": "flow"}), rd,
                  baseline=base).events  # fmt: skip
    assert compact(ev) == [(5.0, "an", "raise", "f", "red")]  # z = 2 then 3.5
    assert ev["signal"].tolist() == [3.5]


def test_baseline_table_is_checked():
    with pytest.raises(InvalidInput, match="needs the column 'mad'"):
        Baseline(pd.DataFrame({"datastream_id": ["f"], "hour_of_week": [0], "median": [1.0]}))
    with pytest.raises(InvalidInput, match=r"0\.\.167"):
        Baseline(
            pd.DataFrame(
                {"datastream_id": ["f"], "hour_of_week": [168], "median": [1.0], "mad": [1.0]}
            )
        )

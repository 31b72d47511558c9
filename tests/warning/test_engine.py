"""The warning engine on hand-made series: exact events per rule kind, hysteresis, units,
dropped readings, batch-split invariance, state round trips, reloads."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.warning import (
    DROP_REASONS,
    EVENT_COLUMNS,
    Baseline,
    Catalog,
    Engine,
    EngineState,
    active_conditions,
    coverage,
    evaluate,
    virtual_city_rules,
)
from tests.warning.conftest import T0, at, catalog, compact, readings, rules, series

LEVELS4 = {"blue": 1.0, "yellow": 2.0, "orange": 3.0, "red": 4.0}


def threshold(rule_id="thr", prop="water_level", **kw) -> dict:
    return {
        "id": rule_id,
        "kind": "threshold",
        "applies_to": {"observed_property": prop},
        "levels": LEVELS4,
        "hysteresis": 0.2,
        **kw,
    }


def one(ds="a", prop="water_level", **kw) -> dict:
    return {"datastream_id": ds, "observed_property": prop, **kw}


# -- threshold and hysteresis ----------------------------------------------------------------
def test_threshold_raises_escalates_deescalates_and_clears_with_hysteresis():
    rd = series(
        "a",
        [
            *[(0, 0.5), (5, 1.0), (10, 0.85), (15, 0.8), (20, 2.5), (25, 4.2), (30, 3.85)],
            *[(35, 3.7), (40, 1.5), (45, 0.79)],
        ],
    )
    ev = evaluate(rules(threshold()), catalog(one()), rd).events
    assert list(ev.columns) == list(EVENT_COLUMNS)
    assert compact(ev) == [
        (5.0, "thr", "raise", "a", "blue"),  # at the level's value
        (20.0, "thr", "escalate", "a", "yellow"),  # 0.85 and 0.8 (= 1.0 - 0.2) held blue
        (25.0, "thr", "escalate", "a", "red"),  # straight past orange
        (35.0, "thr", "deescalate", "a", "orange"),  # 3.85 held red, 3.7 < 3.8 does not
        (40.0, "thr", "deescalate", "a", "blue"),
        (45.0, "thr", "clear", "a", "blue"),
    ]
    assert ev["value"].tolist() == [1.0, 2.5, 4.2, 3.7, 1.5, 0.79]
    assert ev["previous_level"].tolist()[1:] == ["blue", "yellow", "red", "orange", "blue"]
    assert ev["level"].iloc[-1] is None and ev["previous_level"].iloc[0] is None


def test_hysteresis_prevents_flapping():
    values = [0.5, 1.05, 0.95, 1.1, 0.85, 1.0, 0.9, 1.2]
    rd = series("a", [(5 * k, v) for k, v in enumerate(values)])
    with_h = evaluate(rules(threshold(hysteresis=0.2)), catalog(one()), rd).events
    without = evaluate(rules(threshold(hysteresis=0.0)), catalog(one()), rd).events
    assert compact(with_h) == [(5.0, "thr", "raise", "a", "blue")]
    assert without["event"].tolist() == ["raise", "clear"] * 3 + ["raise"]
    assert without["value"].tolist() == values[1:]


def test_below_rule_clears_only_above_value_plus_hysteresis():
    rule = {
        "id": "p",
        "kind": "threshold",
        "applies_to": "pressure",
        "direction": "below",
        "levels": {"yellow": 0.16, "red": 0.10},
        "hysteresis": 0.01,
    }
    pts = [(0, 0.2), (5, 0.16), (10, 0.165), (15, 0.171), (20, 0.09), (25, 0.105)]
    pts += [(30, 0.115), (35, 0.3)]
    ev = evaluate(rules(rule), catalog(one(prop="pressure")), series("a", pts)).events
    assert compact(ev) == [
        (5.0, "p", "raise", "a", "yellow"),
        (15.0, "p", "clear", "a", "yellow"),
        (20.0, "p", "raise", "a", "red"),
        (30.0, "p", "deescalate", "a", "yellow"),
        (35.0, "p", "clear", "a", "yellow"),
    ]


def test_rules_pick_datastreams_by_property_ids_and_tags():
    cat = catalog(
        one("a", tags="river"),
        one("b", tags="tank,reservoir"),
        one("c", tags=["river", "gauge"]),
        one("d", prop="pressure", tags="river"),
    )
    rd = readings(*(series(ds, [(0, 5.0)]) for ds in "abcd"))
    by_tag = threshold(applies_to={"observed_property": "water_level", "tags": ["river"]})
    ev = evaluate(rules(by_tag), cat, rd).events
    assert sorted(ev["source"]) == ["a", "c"]
    by_id = threshold(applies_to={"observed_property": "water_level", "datastreams": ["b", "d"]})
    assert evaluate(rules(by_id), cat, rd).events["source"].tolist() == ["b"]
    assert coverage(rules(by_tag, threshold("x", "pressure")), cat).to_dict() == {
        "thr": 2,
        "x": 1,
    }


def test_units_are_converted_or_refused():
    rule = threshold(unit="m")
    cat = catalog(one("m", unit="m"), one("cm", unit="cm"))
    rd = readings(series("m", [(0, 0.5), (5, 2.5)]), series("cm", [(0, 50), (5, 250)]))
    ev = evaluate(rules(rule), cat, rd).events
    assert compact(ev) == [
        (5.0, "thr", "raise", "cm", "yellow"),
        (5.0, "thr", "raise", "m", "yellow"),
    ]
    assert ev["value"].tolist() == [2.5, 2.5]  # in the rule's unit
    bad = catalog(one("p", unit="MPa"))
    with pytest.raises(InvalidInput, match=r"datastream 'p' is in 'MPa'.*unit 'm'") as exc:
        evaluate(rules(rule), bad, series("p", [(0, 1.0)]))
    assert exc.value.feature == "rule thr"


# -- sustained, rate of change ---------------------------------------------------------------
def test_sustained_fires_after_the_duration_and_resets_on_a_dip():
    rule = {
        "id": "s",
        "kind": "sustained",
        "applies_to": "water_level",
        "levels": {"yellow": 2, "red": 4},
        "duration": "10min",
    }
    pts = [(0, 1), (5, 2.5), (10, 2.5), (15, 2.5), (20, 5), (25, 5), (30, 5), (35, 1)]
    pts += [(40, 3), (45, 1), (50, 3), (55, 3), (60, 3)]
    ev = evaluate(rules(rule), catalog(one()), series("a", pts)).events
    assert compact(ev) == [
        (15.0, "s", "raise", "a", "yellow"),  # yellow since 5
        (30.0, "s", "escalate", "a", "red"),  # red since 20
        (35.0, "s", "clear", "a", "red"),
        (60.0, "s", "raise", "a", "yellow"),  # the dip at 45 restarted the clock (50)
    ]


def test_rate_of_change_over_a_window():
    rule = {
        "id": "r",
        "kind": "rate_of_change",
        "applies_to": "water_level",
        "levels": {"yellow": 0.05, "red": 0.1},
        "window": "10min",
    }
    pts = [(0, 0), (5, 0.2), (10, 0.6), (15, 1.6), (20, 1.7), (25, 1.7), (30, 1.7), (45, 3.0)]
    pts += [(70, 10.0)]  # 25 min after the last: no reference within 2 windows, no rate
    ev = evaluate(rules(rule), catalog(one()), series("a", pts)).events
    assert compact(ev) == [
        (10.0, "r", "raise", "a", "yellow"),
        (15.0, "r", "escalate", "a", "red"),
        (25.0, "r", "clear", "a", "red"),
        (45.0, "r", "raise", "a", "yellow"),
    ]
    np.testing.assert_allclose(ev["signal"], [0.06, 0.14, 0.01, 1.3 / 15])
    assert ev["value"].tolist() == [0.6, 1.6, 1.7, 3.0]
    per_hour = dict(rule, per="hour", levels={"yellow": 3.0, "red": 6.0})
    ev_h = evaluate(rules(per_hour), catalog(one()), series("a", pts)).events
    assert ev_h["event"].tolist() == ev["event"].tolist()
    np.testing.assert_allclose(ev_h["signal"], ev["signal"] * 60)


# -- no data ---------------------------------------------------------------------------------
def test_no_data_in_batch_gaps_at_now_and_for_never_heard_datastreams():
    rule = {"id": "nd", "kind": "no_data", "applies_to": "flow", "silence": "30min"}
    cat = catalog(one("a", "flow"), one("b", "flow"), one("c", "flow"))
    rd = readings(series("a", [(0, 1), (5, 1), (60, 1), (65, 1)]), series("b", [(0, 1)]))
    res = evaluate(rules(rule), cat, rd, now=at(100))
    assert compact(res.events) == [
        (30.0, "nd", "raise", "b", "yellow"),
        (30.0, "nd", "raise", "c", "yellow"),  # watched since the first batch (minute 0)
        (35.0, "nd", "raise", "a", "yellow"),
        (60.0, "nd", "clear", "a", "yellow"),
        (95.0, "nd", "raise", "a", "yellow"),
    ]
    assert res.events["value"].tolist() == [30.0, 30.0, 30.0, 55.0, 30.0]  # minutes silent
    later = evaluate(rules(rule), cat, series("c", [(110, 1)]), res.state)
    assert compact(later.events) == [(110.0, "nd", "clear", "c", "yellow")]
    assert later.events["value"].tolist() == [110.0]
    assert sorted(active_conditions(later.state)["source"]) == ["a", "b"]
    # exactly the silence is not more than it; the watermark comes from the readings alone
    quiet = evaluate(rules(rule), catalog(one("a", "flow")), series("a", [(0, 1), (30, 1)]))
    assert quiet.events.empty
    assert evaluate(rules(rule), cat, rd.iloc[:0]).events.empty  # no time known: nothing


# -- anomaly ---------------------------------------------------------------------------------
def test_anomaly_against_the_same_hour_of_week_in_the_rule_timezone():
    # T0 is Monday 00:00 UTC = Monday 08:00 in Shanghai: hour of week 8 there
    base = Baseline(
        pd.DataFrame(
            {
                "datastream_id": ["f", "f"],
                "hour_of_week": [8, 9],
                "median": [50.0, 80.0],
                "mad": [2.0, 4.0],
            }
        )
    )
    rule = {
        "id": "an",
        "kind": "anomaly",
        "applies_to": "flow",
        "levels": {"yellow": 3, "red": 6},
    }
    pts = [(0, 50), (10, 60), (20, 70), (30, 52), (60, 60), (70, 80)]
    rd = series("f", pts)
    cat = catalog(one("f", "flow"))
    ev = evaluate(rules(rule, timezone="Asia/Shanghai"), cat, rd, baseline=base).events
    assert compact(ev) == [
        (10.0, "an", "raise", "f", "yellow"),  # z = 10 / (1.4826 * 2) = 3.37
        (20.0, "an", "escalate", "f", "red"),  # z = 6.74
        (30.0, "an", "clear", "f", "red"),
        (60.0, "an", "raise", "f", "yellow"),  # next hour: (60 - 80) / (1.4826 * 4) = -3.37
        (70.0, "an", "clear", "f", "yellow"),
    ]
    high_only = dict(rule, direction="above")
    ev = evaluate(rules(high_only, timezone="Asia/Shanghai"), cat, rd, baseline=base).events
    assert ev["time"].min() == at(10) and at(60) not in set(ev["time"])
    # in UTC these are hours 0 and 1 of the week: no baseline there, no anomaly
    assert evaluate(rules(rule), cat, rd, baseline=base).events.empty
    with pytest.raises(InvalidInput, match="an anomaly rule needs a baseline"):
        evaluate(rules(rule), cat, rd)


def test_anomaly_with_a_duration_is_not_raised_by_one_odd_reading():
    base = Baseline(
        pd.DataFrame({"datastream_id": ["f"], "hour_of_week": [8], "median": [50.0], "mad": [2.0]})
    )
    rule = {
        "id": "an",
        "kind": "anomaly",
        "applies_to": "flow",
        "direction": "above",
        "levels": {"yellow": 3, "red": 6},
        "hysteresis": 0.5,
        "duration": "3min",
    }
    # z = (v - 50) / 2.965: 70 → 6.7, 62 → 4.0, 61 → 3.7 (held: above 3 - 0.5), 75 → 8.4
    pts = [(0, 50), (1, 70), (2, 50), (3, 62), (4, 61), (5, 62), (6, 70), (7, 75), (8, 75)]
    pts += [(9, 75), (10, 50)]
    rd, cat = series("f", pts), catalog(one("f", "flow"))
    ev = evaluate(rules(rule, timezone="Asia/Shanghai"), cat, rd, baseline=base).events
    assert compact(ev) == [
        (6.0, "an", "raise", "f", "yellow"),  # above yellow since 3; the odd 70 at 1 is not
        (9.0, "an", "escalate", "f", "red"),  # above red since 6
        (10.0, "an", "clear", "f", "red"),
    ]
    at_once = dict(rule)
    del at_once["duration"]
    ev = evaluate(rules(at_once, timezone="Asia/Shanghai"), cat, rd, baseline=base).events
    assert compact(ev)[:2] == [(1.0, "an", "raise", "f", "red"), (2.0, "an", "clear", "f", "red")]


# -- composite -------------------------------------------------------------------------------
def surcharge(op="all", **grouping) -> dict:
    return {
        "id": "sr",
        "kind": "composite",
        "op": op,
        "conditions": [
            {"kind": "threshold", "applies_to": "rain_intensity", "value": 30, "hysteresis": 5},
            {
                "kind": "rate_of_change",
                "applies_to": "depth_below_cover",
                "direction": "below",
                "value": -0.01,
                "window": "10min",
            },
        ],
        **grouping,
    }


def rain_and_manholes() -> tuple[Catalog, pd.DataFrame]:
    cat = catalog(
        one("r1", "rain_intensity", group=["z1", "z2"], asset_id="gauge"),
        one("m1", "depth_below_cover", group="z1", asset_id="mh1"),
        one("m2", "depth_below_cover", group="z2", asset_id="mh2"),
    )
    rd = readings(
        series("r1", [(0, 10), (5, 35), (10, 40), (15, 40), (20, 20), (25, 20)]),
        series("m1", [(0, 1.5), (5, 1.5), (10, 1.2), (15, 1.0), (20, 1.0), (25, 1.0)]),
        series("m2", [(m, 1.5) for m in range(0, 30, 5)]),
    )
    return cat, rd


def test_composite_and_over_groups_sharing_a_rain_gauge():
    cat, rd = rain_and_manholes()
    ev = evaluate(rules(surcharge()), cat, rd).events
    assert compact(ev) == [
        (10.0, "sr", "raise", "z1", "orange"),  # raining since 5, m1 rising from 10
        (20.0, "sr", "clear", "z1", "orange"),  # 20 mm/h < 30 - 5
    ]
    assert ev["datastream_id"].tolist() == ["m1", "r1"]  # the readings that decided


def test_composite_or_and_other_groupings():
    cat, rd = rain_and_manholes()
    ev = evaluate(rules(surcharge("any")), cat, rd).events
    assert compact(ev) == [
        (5.0, "sr", "raise", "z1", "orange"),
        (5.0, "sr", "raise", "z2", "orange"),
        (20.0, "sr", "clear", "z2", "orange"),
        (25.0, "sr", "clear", "z1", "orange"),  # m1 rose until 20
    ]
    mapped = evaluate(rules(surcharge(groups={"north": ["r1", "m1"]})), cat, rd).events
    assert compact(mapped) == [
        (10.0, "sr", "raise", "north", "orange"),
        (20.0, "sr", "clear", "north", "orange"),
    ]
    # grouped by asset, rain and manholes never share a group: nothing holds both
    assert evaluate(rules(surcharge(group_by="asset")), cat, rd).events.empty


def test_catalog_errors():
    with pytest.raises(InvalidInput, match="datastream 'a' is listed twice"):
        catalog(one("a"), one("a"))
    with pytest.raises(InvalidInput, match="no 'observed_property' column"):
        Catalog(pd.DataFrame({"datastream_id": ["a"]}))
    _, rd = rain_and_manholes()
    flat = catalog(one("r1", "rain_intensity"), one("m1", "depth_below_cover"))
    with pytest.raises(InvalidInput, match="no 'group' column") as exc:
        evaluate(rules(surcharge()), flat, rd)
    assert "group_by: asset" in exc.value.hint


# -- readings the engine does not take -------------------------------------------------------
def test_dropped_readings_with_reasons():
    cat = catalog(one("a"))
    rd = pd.DataFrame(
        {
            "datastream_id": ["a", "a", "zz", "a", "a"],
            "phenomenon_time": [at(0), at(5), at(5), at(10), pd.NaT],
            "result": [0.5, 2.5, 9.0, np.nan, 1.0],
        }
    )
    rd = pd.concat([rd, rd.iloc[[1]]], ignore_index=True)  # the same reading twice
    res = evaluate(rules(threshold()), cat, rd)
    assert res.evaluated == 2
    assert sorted(res.dropped["reason"]) == sorted(
        ["unknown datastream", "not a number", "no time", "duplicate"]
    )
    late = evaluate(rules(threshold()), cat, series("a", [(3, 5.0), (5, 5.0)]), res.state)
    assert late.evaluated == 0 and set(late.dropped["reason"]) == {"late"}
    assert set(late.dropped["reason"]) <= set(DROP_REASONS)
    with pytest.raises(InvalidInput, match="phenomenon_time must be datetimes"):
        evaluate(rules(threshold()), cat, {"datastream_id": ["a"], "phenomenon_time": [1]})


def test_times_as_strings_and_zones_are_utc_instants():
    cat = catalog(one("a"))
    rd = {
        "datastream_id": ["a", "a"],
        "phenomenon_time": ["2024-06-03T08:00:00+08:00", "2024-06-03T00:05:00Z"],
        "value": [0.5, 2.5],
    }
    ev = evaluate(rules(threshold()), cat, rd).events
    assert ev["time"].tolist() == [at(5)]


# -- determinism: batches, order, state round trips ------------------------------------------
def all_kinds() -> tuple:
    entries = (
        threshold("thr", "level"),
        {
            "id": "sus",
            "kind": "sustained",
            "applies_to": "level",
            "levels": {"yellow": 2.0, "red": 3.0},
            "hysteresis": 0.3,
            "duration": "7min",
        },
        {
            "id": "roc",
            "kind": "rate_of_change",
            "applies_to": "level",
            "direction": "below",
            "levels": {"blue": -0.1, "red": -0.3},
            "hysteresis": 0.05,
            "window": "6min",
        },
        {"id": "nd", "kind": "no_data", "applies_to": ["level", "rain"], "silence": "12min"},
        {
            "id": "an",
            "kind": "anomaly",
            "applies_to": "level",
            "levels": {"yellow": 2.0, "red": 4.0},
            "hysteresis": 0.5,
        },
        {
            "id": "comp",
            "kind": "composite",
            "op": "all",
            "conditions": [
                {"kind": "threshold", "applies_to": "rain", "value": 1.0, "hysteresis": 0.3},
                {"kind": "threshold", "applies_to": "level", "value": 2.0, "hysteresis": 0.3},
            ],
        },
    )
    return entries


def random_world(rng, n_level=5, minutes=240):
    ids = [f"L{i}" for i in range(n_level)] + ["R0", "R1"]
    cat = catalog(
        *(one(f"L{i}", "level", group=f"g{i % 2}") for i in range(n_level)),
        one("R0", "rain", group="g0"),
        one("R1", "rain", group=["g0", "g1"]),
    )
    frames = []
    for ds in ids:
        t = np.sort(rng.choice(minutes, size=rng.integers(20, 90), replace=False))
        v = np.cumsum(rng.normal(0, 0.6, len(t))) + (2.0 if ds[0] == "L" else 0.5)
        frames.append(series(ds, list(zip(t.tolist(), v.tolist(), strict=True))))
    rd = readings(*frames)
    hours = np.arange(168)
    base = Baseline(
        pd.DataFrame(
            {
                "datastream_id": np.repeat(ids, 168),
                "hour_of_week": np.tile(hours, len(ids)),
                "median": 2.0,
                "mad": 0.5,
            }
        )
    )
    return cat, rd, base


def check_one_active_per_rule_and_source(events: pd.DataFrame) -> None:
    active: dict = {}
    for rule, src, ev, lv, prev in zip(
        events["rule_id"],
        events["source"],
        events["event"],
        events["level"],
        events["previous_level"],
        strict=True,
    ):
        key = (rule, src)
        if ev == "raise":
            assert key not in active, f"{key} raised twice"
            active[key] = lv
        else:
            assert active.get(key) == prev, f"{key}: {ev} from {prev}, active {active.get(key)}"
            if ev == "clear":
                del active[key]
            else:
                active[key] = lv


def split_run(rule_set, cat, rd, cuts, rng, base, end, roundtrip=False) -> pd.DataFrame:
    state, out = None, []
    bounds = [0, *cuts, len(rd)]
    for k, (i, j) in enumerate(itertools.pairwise(bounds)):
        part = rd.iloc[i:j].sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
        last = k == len(bounds) - 2
        now = end if last else None
        if not last and j < len(rd) and rng.random() < 0.5:
            now = rd["phenomenon_time"].iloc[j]  # a clock no later than the next reading
        res = evaluate(rule_set, cat, part, state, now=now, baseline=base)
        state = res.state
        if roundtrip:
            state = EngineState.from_dict(json.loads(json.dumps(state.to_dict())))
        out.append(res.events)
    return pd.concat(out, ignore_index=True)


def canonical(events: pd.DataFrame) -> list[tuple]:
    cols = ["time", "rule_id", "event", "source", "level", "previous_level", "datastream_id"]
    rows = [tuple(r) for r in events[cols].astype(str).itertuples(index=False)]
    values = events["value"].round(9).astype(str)
    return sorted((*r, v) for r, v in zip(rows, values, strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_same_events_however_the_readings_are_batched(seed):
    rng = np.random.default_rng(seed)
    cat, rd, base = random_world(rng)
    rd = rd.sort_values("phenomenon_time", kind="stable").reset_index(drop=True)
    end = at(260)
    rule_set = rules(*all_kinds())
    whole = evaluate(rule_set, cat, rd.sample(frac=1.0, random_state=seed), now=end, baseline=base)
    ev = whole.events
    assert set(ev["rule_id"]) == {"thr", "sus", "roc", "nd", "an", "comp"}  # all kinds fire
    check_one_active_per_rule_and_source(ev)
    expected = canonical(ev)
    times = rd["phenomenon_time"].to_numpy()
    boundaries = np.flatnonzero(times[1:] != times[:-1]) + 1  # between distinct times
    for trial in range(4):
        cuts = np.sort(rng.choice(boundaries, size=rng.integers(1, 25), replace=False))
        got = split_run(rule_set, cat, rd, cuts.tolist(), rng, base, end, roundtrip=trial % 2)
        assert canonical(got) == expected
    # single-datastream rules don't need whole timestamps in one batch: cut anywhere
    single = rules(*all_kinds()[:5])
    expected = canonical(evaluate(single, cat, rd, now=end, baseline=base).events)
    cuts = np.sort(rng.choice(np.arange(1, len(rd)), size=30, replace=False))
    assert canonical(split_run(single, cat, rd, cuts.tolist(), rng, base, end)) == expected


def test_evaluate_is_pure():
    cat, rd = rain_and_manholes()
    rule_set = rules(surcharge(), threshold("t", "depth_below_cover"))
    first = evaluate(rule_set, cat, rd.iloc[:9])
    before = json.dumps(first.state.to_dict())
    a = evaluate(rule_set, cat, rd.iloc[9:], first.state)
    b = evaluate(rule_set, cat, rd.iloc[9:], first.state)
    assert json.dumps(first.state.to_dict()) == before
    pd.testing.assert_frame_equal(a.events, b.events)


# -- reload and catalog changes --------------------------------------------------------------
def test_reload_keeps_unchanged_rules_and_resets_changed_ones():
    cat = catalog(one("a"), one("b"))
    old = rules(threshold("keep"), threshold("change"), threshold("drop"))
    engine = Engine(old, cat)
    first = engine.evaluate(readings(series("a", [(0, 2.5)]), series("b", [(0, 0.0)])))
    assert sorted(first.events["rule_id"]) == ["change", "drop", "keep"]
    new = rules(
        threshold("keep", message="{source} high"),  # wording only: same fingerprint
        threshold("change", levels={"blue": 1.0, "red": 2.2}),
        threshold("added"),
    )
    cleared = engine.reload(new)
    assert compact(cleared) == [
        (0.0, "change", "clear", "a", "yellow"),
        (0.0, "drop", "clear", "a", "yellow"),
    ]
    assert "rule changed" in cleared["message"].iloc[0]
    assert "rule removed" in cleared["message"].iloc[1]
    assert engine.rules is new
    ev = engine.evaluate(series("a", [(5, 2.4), (10, 0.5)])).events
    assert compact(ev) == [  # at one time, in the rule file's order
        (5.0, "change", "raise", "a", "red"),  # fresh state under the new levels
        (5.0, "added", "raise", "a", "yellow"),
        (10.0, "keep", "clear", "a", "yellow"),  # kept its raise from before the reload
        (10.0, "change", "clear", "a", "red"),
        (10.0, "added", "clear", "a", "yellow"),
    ]
    assert ev["message"].iloc[2] == "a high"


def test_a_changed_rule_set_given_to_evaluate_reconciles_the_same_way():
    cat = catalog(one("a"))
    s1 = evaluate(rules(threshold("x")), cat, series("a", [(0, 3.5)])).state
    res = evaluate(rules(threshold("x", hysteresis=0.5)), cat, series("a", [(5, 3.5)]), s1)
    assert compact(res.events) == [
        (0.0, "x", "clear", "a", "orange"),
        (5.0, "x", "raise", "a", "orange"),
    ]
    disabled = evaluate(rules(threshold("x", enabled=False)), cat, series("a", [(9, 9)]), s1)
    assert compact(disabled.events) == [(0.0, "x", "clear", "a", "orange")]


def test_new_catalog_keeps_the_state_of_known_datastreams():
    engine = Engine(rules(threshold()), catalog(one("a")))
    engine.evaluate(series("a", [(0, 2.5)]))
    engine.set_catalog(catalog(one("b"), one("a")))  # another order, one more
    ev = engine.evaluate(readings(series("a", [(5, 2.6), (10, 0.1)]), series("b", [(5, 4)])))
    assert compact(ev.events) == [
        (5.0, "thr", "raise", "b", "red"),
        (10.0, "thr", "clear", "a", "yellow"),
    ]
    assert active_conditions(engine.state).values.tolist() == [["thr", "b", "red"]]


def test_virtual_city_rules_run_on_a_small_city_catalog():
    cat = Catalog(
        pd.DataFrame(
            {
                "datastream_id": ["lv1", "lv2", "rg1", "ps1", "gd1", "wm1", "fm1"],
                "observed_property": [
                    "depth_below_cover",
                    "depth_below_cover",
                    "rain_intensity",
                    "pressure",
                    "gas_concentration",
                    "water_volume",
                    "flow",
                ],
                "unit": ["m", "m", "mm/h", "kPa", "%LEL", "m3", "m3/h"],
                "tags": ["manhole", "manhole", None, "dma_critical", None, "smart_meter", ""],
                "group": ["rain:rg1", "rain:rg1", "rain:rg1", None, None, None, None],
                "asset_id": ["mh-1", "mh-2", "school-1", "dma-3", "reg-1", "bldg-1", "dma-3"],
            }
        )
    )
    rule_set = virtual_city_rules()
    assert coverage(rule_set, cat)["surcharge-risk"] == 3
    rd = readings(
        series("lv1", [(m, 1.6 - 0.025 * m) for m in range(0, 65, 5)]),
        series("lv2", [(m, 1.6) for m in range(0, 65, 5)]),
        series("rg1", [(m, 45.0) for m in range(0, 65, 5)]),
        series("ps1", [(m, 150.0) for m in range(0, 65, 5)]),  # kPa: 0.15 MPa
        series("gd1", [(0, 2.0), (30, 60.0)]),
        series("wm1", [(0, 100.0)]),
    )
    usual = pd.DataFrame({"datastream_id": "ps1", "hour_of_week": range(168), "median": 400.0})
    res = Engine(rule_set, cat, baseline=Baseline(usual.assign(mad=2.0))).evaluate(rd)
    events = compact(res.events)
    assert (10.0, "surcharge-risk", "raise", "rain:rg1", "orange") in events
    assert (5.0, "dma-pressure-low", "raise", "ps1", "yellow") in events  # 0.15 MPa, 5 min
    assert (5.0, "dma-pressure-drop", "raise", "ps1", "red") in events  # usually 400 kPa, 3 min
    assert (30.0, "gas-leak", "raise", "gd1", "red") in events
    assert (0.0, "rainstorm", "raise", "rg1", "yellow") in events
    assert (30.0, "telemetry-silent", "raise", "fm1", "yellow") in events  # never reported
    assert (25.0, "manhole-level", "raise", "lv1", "blue") in events  # 0.975 m below cover
    assert not any(e[1] == "meter-silent" for e in events)
    msg = res.events.loc[res.events["rule_id"] == "manhole-level", "message"].iloc[0]
    assert msg == f"mh-1: water {1.6 - 0.025 * 25:.2f} m below the cover, 蓝色预警"


# -- predictions (flood forecasts) ----------------------------------------------------------
PREDICTED_RULES = (
    {
        "id": "basements",
        "kind": "predicted",
        "applies_to": "basement",
        "levels": {"orange": 0.15, "red": 0.5},
        "within": "2h",
        "message": "{asset_id}: {value:.2f} m predicted in {lead_min:.0f} min",
    },
    {
        "id": "roads",
        "kind": "predicted",
        "applies_to": ["road"],
        "unit": "cm",
        "levels": {"yellow": 30, "orange": 50},
    },
    {
        "id": "named",
        "kind": "predicted",
        "applies_to": {"assets": ["f1"]},
        "value": 0.1,
        "level": "red",
    },
)


def impact(*rows: tuple) -> pd.DataFrame:
    """An impact table from (asset, kind, depth m, onset minutes after T0 or None) rows."""
    return pd.DataFrame(
        {
            "asset_id": [r[0] for r in rows],
            "asset_kind": [r[1] for r in rows],
            "value": [float(r[2]) for r in rows],
            "onset": [pd.NaT if r[3] is None else at(r[3]) for r in rows],
            "x": [100.0 + k for k in range(len(rows))],
            "y": [200.0 + k for k in range(len(rows))],
            "name": [f"{r[0]} name" for r in rows],
        }
    )


def predicted(ev: pd.DataFrame) -> list[tuple]:
    """(rule, event, source, level or previous level, value, lead min) per event."""
    lead = ev["lead_time_s"] / 60
    return [
        (r, e, s, lv if isinstance(lv, str) else pv, None if np.isnan(v) else round(v, 3),
         None if np.isnan(m) else m)
        for r, e, s, lv, pv, v, m in zip(
            ev["rule_id"], ev["event"], ev["source"], ev["level"], ev["previous_level"],
            ev["value"], lead, strict=True,
        )
    ]  # fmt: skip


def test_predictions_level_by_depth_and_carry_the_lead_time():
    from citytwin.warning.engine import PREDICTED_EVENT_COLUMNS, evaluate_predictions

    table = impact(
        ("b1", "building", 0.45, 38.0),
        ("b1", "basement", 0.45, 38.0),  # orange, 38 min ahead
        ("b2", "basement", 0.60, 180.0),  # red, but 3 h ahead: past 'within'
        ("b3", "basement", 0.10, 20.0),  # below every level
        ("b4", "building", 0.90, 5.0),  # no basement: not the basement rule's
        ("b5", "basement", 0.55, -10.0),  # flooding already begun: red, lead 0
        ("b6", "basement", 0.30, 120.0),  # at the edge of the window: still in
        ("b7", "basement", 0.30, 120.02),  # just past it
        ("r1", "road", 0.31, 12.5),  # 31 cm against levels in cm
        ("r2", "road", 0.29, 12.5),
        ("f1", "critical_facility", 0.12, 240.0),  # named, whatever its kind; no window
        ("f2", "critical_facility", 0.80, 1.0),  # not named
    )
    ev = evaluate_predictions(rules(*PREDICTED_RULES), table, T0, scenario_id="fc-1")
    assert list(ev.columns) == list(PREDICTED_EVENT_COLUMNS)
    assert predicted(ev) == [
        ("basements", "raise", "b1", "orange", 0.45, 38.0),
        ("basements", "raise", "b5", "red", 0.55, 0.0),
        ("basements", "raise", "b6", "orange", 0.3, 120.0),
        ("roads", "raise", "r1", "yellow", 31.0, 12.5),
        ("named", "raise", "f1", "red", 0.12, 240.0),
    ]
    assert (ev["time"] == T0).all() and (ev["kind"] == "predicted").all()
    assert (ev["scenario_id"] == "fc-1").all() and ev["datastream_id"].isna().all()
    assert ev["asset_id"].tolist() == ev["source"].tolist()
    b1 = ev.iloc[0]
    assert b1["message"] == "b1: 0.45 m predicted in 38 min"
    assert (b1["x"], b1["y"]) == (101.0, 201.0)  # the basement row's place
    # the default message names the asset and the lead time
    assert ev.iloc[3]["message"] == "roads: r1 name 31.00 cm predicted in 12 min (raise, 黄色预警)"


def test_a_later_forecast_relevels_confirms_and_clears_what_it_assessed():
    from citytwin.warning.engine import evaluate_predictions

    active = pd.DataFrame(
        {
            "rule_id": ["basements", "basements", "basements", "basements", "basements",
                        "roads", "retired"],
            "source": ["b1", "b5", "b6", "b8", "b9", "r1", "x1"],
            "level": ["orange", "red", "orange", "orange", "red", "yellow", "red"],
        }
    )  # fmt: skip
    table = impact(
        ("b1", "basement", 0.70, 20.0),  # deeper now: escalate
        ("b5", "basement", 0.20, 0.0),  # shallower: de-escalate
        ("b6", "basement", 0.25, 90.0),  # the same level: confirmed, with its new lead time
        ("b8", "basement", 0.0, None),  # dry now: cleared
        ("b9", "basement", 0.40, 300.0),  # only after the window now: cleared
        ("r1", "road", 0.6, 30.0),
    )  # b-off is not in the table (off the forecast's area): its alarm stays
    active.loc[len(active)] = ["basements", "b-off", "red"]
    ev = evaluate_predictions(rules(*PREDICTED_RULES), table, at(10), active=active)
    assert predicted(ev) == [
        ("basements", "escalate", "b1", "red", 0.7, 10.0),
        ("basements", "deescalate", "b5", "orange", 0.2, 0.0),
        ("basements", "raise", "b6", "orange", 0.25, 80.0),
        ("basements", "clear", "b8", "orange", 0.0, None),
        ("basements", "clear", "b9", "red", 0.4, None),
        ("roads", "escalate", "r1", "orange", 60.0, 20.0),
        ("retired", "clear", "x1", "red", None, None),  # its rule is gone
    ]
    assert ev["previous_level"].tolist()[:5] == ["orange", "red", "orange", "orange", "red"]
    assert ev["level"].iloc[3] is None
    assert "b8 name no longer predicted to flood" in ev["message"].iloc[3]
    assert "rule removed" in ev["message"].iloc[6]
    # nothing active, nothing predicted: no events (an empty frame of the columns)
    dry = evaluate_predictions(rules(*PREDICTED_RULES), table.assign(value=0.0), at(10))
    assert dry.empty and "lead_time_s" in dry.columns


def test_predictions_refuse_bad_tables():
    from citytwin.warning.engine import evaluate_predictions

    rs = rules(*PREDICTED_RULES)
    good = impact(("b1", "basement", 0.45, 38.0))
    with pytest.raises(InvalidInput, match="lacks column\\(s\\) onset") as exc:
        evaluate_predictions(rs, good.drop(columns="onset"), T0)
    assert "asset_kind" in exc.value.hint
    with pytest.raises(InvalidInput, match="'onset' must be times"):
        evaluate_predictions(rs, good.assign(onset="soon"), T0)
    with pytest.raises(InvalidInput, match="'value' must be numbers"):
        evaluate_predictions(rs, good.assign(value="deep"), T0)
    bad = pd.DataFrame({"rule_id": ["basements"], "source": ["b1"], "level": ["amber"]})
    with pytest.raises(InvalidInput, match="level 'amber'"):
        evaluate_predictions(rs, good, T0, active=bad)


def test_the_readings_engine_leaves_predicted_rules_to_forecasts():
    rs = rules(threshold(), *PREDICTED_RULES)
    cat = catalog(one())
    assert coverage(rs, cat).to_dict() == {"thr": 1}
    ev = evaluate(rs, cat, series("a", [(0, 2.5)])).events
    assert compact(ev) == [(0.0, "thr", "raise", "a", "yellow")]
    # the virtual city's rules: the predicted ones are left out of the readings' coverage
    city = virtual_city_rules()
    assert {r.kind for r in city.predicted} == {"predicted"} and len(city.predicted) == 3
    covered = set(coverage(city, catalog(one(group="g"))).index)
    assert covered == {r.id for r in city.on_readings} and covered.isdisjoint(city.ids[-3:])

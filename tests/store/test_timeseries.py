"""Time series in the embedded store: provisioning, idempotent appends (also from threads),
rejections and dead letters, latest values, aggregates, downsampling — checked against brute
force on random data, and across a reopen."""

from __future__ import annotations

import datetime as dt
import threading

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import validate_frame
from citytwin.store import open_store
from citytwin.store.base import StreamQuery

T0 = pd.Timestamp("2024-03-01")
N_DEV = 300


def devices(n: int = N_DEV, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    frame = gpd.GeoDataFrame(
        {
            "id": [f"dev:{i:04d}" for i in range(n)],
            "class": "pressure_sensor",
            "feature_id": [f"node-{i}" for i in range(n)],
            "network": rng.choice(["water_supply", "gas"], n),
        },
        geometry=shapely.points(rng.uniform(0, 2000, (n, 2))),
        crs="EPSG:32650",
    )
    return validate_frame("devices", frame, source="test")


def datastreams(devs: gpd.GeoDataFrame, seed: int = 0) -> pd.DataFrame:
    """Pressure for every device, flow (counted pulses) for every third."""
    rng = np.random.default_rng(seed)
    n = len(devs)
    p = pd.DataFrame(
        {
            "datastream_id": devs["id"] + ":pressure",
            "thing_id": devs["id"],
            "observed_property": "pressure",
            "zone": rng.choice(["DMA-1", "DMA-2", "DMA-3"], n),
            "tags": rng.choice(["dma_inlet", "dma_critical", "dma_inlet,source"], n),
            "group": rng.choice(["rain:1", "rain:2", None], n),
        }
    )
    f = pd.DataFrame(
        {
            "datastream_id": devs["id"][::3] + ":pulses",
            "thing_id": devs["id"][::3],
            "observed_property": "flow",
            "unit": "m3/h",
            "observation_type": "OM_CountObservation",
            "zone": "DMA-1",
        }
    )
    return pd.concat([p, f], ignore_index=True)


@pytest.fixture
def twin(make_twin):
    store = make_twin(extent=(0, 0, 2000, 2000))
    devs = devices()
    store.insert("devices", devs)
    store.provision(datastreams(devs))
    return store


def readings(ids, times, seed: int = 0) -> pd.DataFrame:
    """A reading of every datastream at every time (random values)."""
    rng = np.random.default_rng(seed)
    ids, times = np.asarray(ids, object), pd.DatetimeIndex(times)
    return pd.DataFrame(
        {
            "datastream_id": np.tile(ids, len(times)),
            "phenomenon_time": np.repeat(times, len(ids)),
            "result": rng.integers(0, 1000, len(ids) * len(times)).astype(float),
        }
    )


def every(minutes: int, n: int, start=T0) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq=f"{minutes}min")


def stored(store, ids=None) -> pd.DataFrame:
    ids = list(store.datastreams()["datastream_id"]) if ids is None else ids
    return store.observations(ids)


# -- provisioning ----------------------------------------------------------------------------
def test_provision_takes_location_asset_and_network_from_the_thing(twin):
    devs = devices()
    ds = twin.datastreams()
    assert len(ds) == N_DEV + N_DEV // 3
    by_thing = devs.set_index("id")
    thing = by_thing.loc[ds["thing_id"]]
    assert np.allclose(ds["x"], thing.geometry.x) and np.allclose(ds["y"], thing.geometry.y)
    assert (ds["asset_id"].to_numpy() == thing["feature_id"].to_numpy()).all()
    assert (ds["network"].to_numpy() == thing["network"].to_numpy()).all()
    assert set(ds.loc[ds["observed_property"] == "pressure", "unit"]) == {"MPa"}
    # every datastream has an empty latest row until it is observed
    assert len(twin.latest(include_empty=True)) == len(ds) and len(twin.latest()) == 0


def test_provision_updates_in_place_and_is_all_or_nothing(twin):
    devs = devices()
    ds = datastreams(devs)
    before = twin.datastreams().set_index("datastream_id")
    ds.loc[0, "zone"] = "DMA-9"
    extra = ds.iloc[:1].assign(datastream_id="dev:0000:pressure2")
    result = twin.provision(pd.concat([ds.iloc[:5], extra]))
    assert (result.created, result.updated) == (1, 5)
    after = twin.datastreams().set_index("datastream_id")
    assert after.loc["dev:0000:pressure", "zone"] == "DMA-9"
    assert (
        after.loc["dev:0001:pressure", "created_at"]
        == before.loc["dev:0001:pressure", "created_at"]
    )
    # appends keep working for the updated datastream (its key did not change)
    r = twin.append_observations(readings(["dev:0000:pressure"], every(5, 3)))
    assert r.inserted == 3

    unknown_thing = ds.iloc[:3].assign(datastream_id=["n1", "n2", "n3"], thing_id="dev:nope")
    with pytest.raises(InvalidInput, match="not a current device") as err:
        twin.provision(pd.concat([ds.iloc[5:10].assign(zone="X"), unknown_thing]))
    assert err.value.feature == "n1"
    assert len(twin.datastreams()) == len(after)  # nothing of the failed batch
    assert twin.datastreams(["dev:0005:pressure"])["zone"].iloc[0] != "X"
    with pytest.raises(InvalidInput, match="duplicate"):
        twin.provision(iter([ds.iloc[:2], ds.iloc[1:3]]))  # chunks clash with each other
    # chunks of different make-up (a unit given in one, from the vocabulary in the other)
    r = twin.provision(iter([ds.iloc[10:12].assign(unit="kPa"), ds.iloc[12:14]]))
    assert (r.created, r.updated) == (0, 4)
    units = twin.datastreams(list(ds["datastream_id"][10:14])).set_index("datastream_id")["unit"]
    assert units[list(ds["datastream_id"][10:14])].tolist() == ["kPa", "kPa", "MPa", "MPa"]


# -- appends ---------------------------------------------------------------------------------
def test_same_batch_twice_is_stored_once(twin):
    ids = twin.datastreams()["datastream_id"]
    batch = readings(ids, every(5, 6))
    first = twin.append_observations(batch)
    second = twin.append_observations(batch.sample(frac=1.0, random_state=1))
    assert (first.inserted, first.duplicates) == (len(batch), 0)
    assert (second.inserted, second.duplicates) == (0, len(batch))
    assert second.accepted == len(batch) and len(second.rejected) == 0
    assert len(stored(twin)) == len(batch)


def test_overlapping_batches_and_duplicates_within_a_batch(twin):
    ids = twin.datastreams()["datastream_id"][:50]
    a = readings(ids, every(5, 10), seed=1)
    b = readings(ids, every(5, 10, start=T0 + pd.Timedelta("25min")), seed=2)  # half overlap
    twin.append_observations(a)
    r = twin.append_observations(b)
    assert r.inserted == len(b) // 2 and r.duplicates == len(b) // 2
    got = stored(twin, list(ids)).set_index(["datastream_id", "phenomenon_time"])["result"]
    truth = pd.concat([a, b]).drop_duplicates(["datastream_id", "phenomenon_time"])
    truth = truth.set_index(["datastream_id", "phenomenon_time"])["result"]
    assert len(got) == len(truth) == 15 * len(ids)
    assert got.sort_index().equals(truth.sort_index())  # the first stored wins

    # within one batch: the first occurrence is kept
    t = T0 + pd.Timedelta("3h")
    dup = pd.DataFrame(
        {"datastream_id": [ids[0], ids[0], ids[1]], "phenomenon_time": t, "result": [1.0, 2.0, 3.0]}
    )
    r = twin.append_observations(dup)
    assert (r.inserted, r.duplicates) == (2, 1)
    assert twin.observations(ids[0], t, t + pd.Timedelta("1s"))["result"].tolist() == [1.0]


def test_backlog_batches_spanning_many_windows_dedupe(twin):
    """Readings scattered over weeks (more clusters than dedupe windows) are checked too."""
    ids = twin.datastreams()["datastream_id"][:20]
    rng = np.random.default_rng(3)
    times = T0 + pd.to_timedelta(np.sort(rng.choice(40 * 24, 60, replace=False)), unit="h")
    batch = readings(ids, times, seed=4)
    assert twin.append_observations(batch).inserted == len(batch)
    again = pd.concat([batch.iloc[::7], readings(ids, times + pd.Timedelta("1min"), seed=5)])
    r = twin.append_observations(again)
    assert r.duplicates == len(batch.iloc[::7]) and r.inserted == len(batch)
    assert len(stored(twin, list(ids))) == 2 * len(batch)


def test_concurrent_writers_store_each_reading_once(twin):
    ids = twin.datastreams()["datastream_id"]
    batch = readings(ids, every(1, 20), seed=6)
    chunks = [batch.sample(frac=0.6, random_state=k) for k in range(6)]
    results = [None] * len(chunks)
    barrier = threading.Barrier(len(chunks))

    def write(k: int) -> None:
        barrier.wait()
        results[k] = twin.append_observations(chunks[k])

    threads = [threading.Thread(target=write, args=(k,)) for k in range(len(chunks))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    union = pd.concat(chunks).drop_duplicates(["datastream_id", "phenomenon_time"])
    assert sum(r.inserted for r in results) == len(union)
    assert sum(r.accepted for r in results) == sum(len(c) for c in chunks)
    got = stored(twin)
    assert len(got) == len(union) and not got.duplicated(["datastream_id", "phenomenon_time"]).any()


def test_rejected_rows_come_back_with_reasons_and_go_to_dead_letters(twin):
    now = dt.datetime(2024, 3, 2)
    batch = pd.DataFrame(
        {
            "datastream_id": [
                "dev:0000:pressure",
                "nope",
                "dev:0000:pulses",
                "dev:0001:pressure",
                "dev:0002:pressure",
                "dev:0003:pressure",
            ],
            "phenomenon_time": [T0, T0, T0, None, T0 + pd.Timedelta("2D"), T0],
            "result": [0.3, 0.3, 2.5, 0.3, 0.3, "high"],
        }
    )
    r = twin.append_observations(batch, not_after=now, dead_letter="mqtt")
    assert r.inserted == 1
    assert r.rejected["row"].tolist() == [1, 2, 3, 4, 5]
    assert r.rejected["reason"].tolist() == [
        "unknown datastream",
        "wrong type",  # a count of 2.5
        "no time",
        "in the future",
        "not a number",
    ]
    dead = twin.rejected(source="mqtt")
    assert len(dead) == 5 and set(dead["reason"]) == set(r.rejected["reason"])
    assert '"high"' in dead.loc[dead["reason"] == "not a number", "payload"].iloc[0]
    assert dead.loc[dead["reason"] == "unknown datastream", "datastream_id"].iloc[0] == "nope"
    assert len(twin.rejected(source="http")) == 0
    assert len(twin.rejected(reason="no time")) == 1
    # without dead_letter nothing is written there
    twin.append_observations(batch.iloc[1:2])
    assert len(twin.rejected()) == 5


def test_dead_letter_table_directly(twin):
    n = twin.append_rejected(
        [
            {"payload": b'{"result": }', "reason": "bad JSON", "source": "http"},
            {
                "payload": {"a": 1},
                "reason": "unknown datastream",
                "source": "replay",
                "datastream_id": "x",
                "received_at": dt.datetime(2024, 1, 1),
            },
        ]
    )
    assert n == 2
    dead = twin.rejected()
    assert dead["source"].tolist() == ["http", "replay"]  # newest first
    assert dead["payload"].tolist() == ['{"result": }', '{"a": 1}']
    assert len(twin.rejected(since=dt.datetime(2024, 6, 1))) == 1
    assert len(twin.rejected(until=dt.datetime(2024, 6, 1))) == 1
    with pytest.raises(InvalidInput, match="source"):
        twin.append_rejected([{"payload": "x", "reason": "r", "source": "fax"}])
    with pytest.raises(InvalidInput, match="dead-letter source"):
        twin.append_observations(readings(["dev:0000:pressure"], every(5, 1)), dead_letter="fax")


# -- reading back ----------------------------------------------------------------------------
def test_latest_by_bbox_zone_property_tags_vs_brute_force(twin):
    ds = twin.datastreams()
    rng = np.random.default_rng(8)
    batches = [
        readings(ds["datastream_id"], every(5, 4, T0 + pd.Timedelta(h, "h")), seed=h)
        for h in (3, 0, 2, 1)
    ]
    subset = [b.sample(frac=0.7, random_state=k) for k, b in enumerate(batches)]
    for b in subset:  # out of time order: latest must be the latest time, not the last write
        twin.append_observations(b)
    every_reading = pd.concat(subset)
    truth = every_reading.sort_values("phenomenon_time").groupby("datastream_id").tail(1)
    truth = truth.set_index("datastream_id").join(ds.set_index("datastream_id"))

    def check(q: StreamQuery, mask: pd.Series) -> None:
        got = twin.latest(q).set_index("datastream_id").sort_index()
        want = truth[mask.reindex(truth.index).to_numpy()].sort_index()
        assert len(want) > 0
        assert got.index.equals(want.index)
        assert (got["phenomenon_time"] == want["phenomenon_time"]).all()
        assert np.array_equal(got["result"].to_numpy(), want["result"].to_numpy())

    box = tuple(rng.uniform(0, 1000, 2)) + tuple(rng.uniform(1000, 2000, 2))
    inside = (truth["x"].between(box[0], box[2])) & (truth["y"].between(box[1], box[3]))
    check(StreamQuery(bbox=box), inside)
    check(StreamQuery(zones="DMA-2"), truth["zone"] == "DMA-2")
    check(StreamQuery(observed_properties=["flow"]), truth["observed_property"] == "flow")
    check(StreamQuery(networks="gas", bbox=box), inside & (truth["network"] == "gas"))
    check(StreamQuery(tags=["source"]), truth["tags"].fillna("").str.contains("source"))
    some = list(truth.index[::17])
    check(StreamQuery(ids=some), truth.index.to_series().isin(some))
    check(StreamQuery(groups="rain:2"), truth["group"] == "rain:2")
    things = list(truth["thing_id"].iloc[::5])
    check(StreamQuery(things=things), truth["thing_id"].isin(things))
    check(StreamQuery(assets=["node-3", "node-4"]), truth["asset_id"].isin(["node-3", "node-4"]))
    assert len(twin.latest(StreamQuery(zones=[]))) == 0
    with pytest.raises(InvalidInput, match="bbox"):
        StreamQuery(bbox=(10, 10, 0, 0))


def test_raw_range_half_open_and_limit(twin):
    ids = ["dev:0003:pressure", "dev:0004:pressure"]
    twin.append_observations(readings(ids, every(5, 24), seed=9))
    got = twin.observations(ids, T0 + pd.Timedelta("10min"), T0 + pd.Timedelta("30min"))
    assert len(got) == 8  # 10, 15, 20, 25 for both
    assert got["datastream_id"].tolist() == [ids[0]] * 4 + [ids[1]] * 4
    assert got["phenomenon_time"].is_monotonic_increasing is False  # by datastream, then time
    assert (
        got.groupby("datastream_id")["phenomenon_time"]
        .apply(lambda s: s.is_monotonic_increasing)
        .all()
    )
    assert len(twin.observations(ids, limit=5)) == 5
    assert len(twin.observations(StreamQuery(zones="nowhere"))) == 0


@pytest.mark.parametrize(
    ("interval", "offset", "slice_groups"),
    [("5min", None, 100_000), ("1h", None, 100_000), ("1D", "-8h", 100_000), ("1h", "30min", 25)],
)
def test_aggregates_match_pandas_resample(twin, monkeypatch, interval, offset, slice_groups):
    monkeypatch.setattr("citytwin.store.duckdb.AGG_GROUPS", slice_groups)  # 25: 2-hour slices
    ids = list(twin.datastreams()["datastream_id"][:12])
    rng = np.random.default_rng(10)
    n = 4000
    frame = pd.DataFrame(
        {
            "datastream_id": rng.choice(ids, n),
            "phenomenon_time": T0 + pd.to_timedelta(rng.integers(0, 3 * 86400, n), unit="s"),
            "result": rng.normal(0.3, 0.1, n),
        }
    ).drop_duplicates(["datastream_id", "phenomenon_time"])
    frame.loc[frame["datastream_id"].str.endswith("pulses"), "result"] = 7.0
    twin.append_observations(frame)
    start, end = T0 + pd.Timedelta("7h"), T0 + pd.Timedelta("2D 5h")
    inside = frame[(frame["phenomenon_time"] >= start) & (frame["phenomenon_time"] < end)]
    origin = pd.Timestamp(0) + (pd.Timedelta(offset) if offset else pd.Timedelta(0))
    stats = ["min", "max", "mean", "sum", "count"]

    got = twin.aggregate(ids, start, end, interval, offset=offset)
    want = (
        inside.set_index("phenomenon_time")
        .groupby("datastream_id")["result"]
        .resample(interval, origin=origin)
        .agg(stats)
    )
    want = want[want["count"] > 0].reset_index()
    key = ["datastream_id", "bucket"]
    want = want.rename(columns={"phenomenon_time": "bucket"}).sort_values(key)
    got = got.assign(datastream_id=got["datastream_id"].astype(str)).sort_values(key)
    assert len(got) == len(want) > 0
    assert (got["bucket"].to_numpy() == want["bucket"].to_numpy()).all()
    assert (got["datastream_id"].to_numpy() == want["datastream_id"].to_numpy()).all()
    for s in stats:
        assert np.allclose(got[s].to_numpy(float), want[s].to_numpy(float)), s

    together = twin.aggregate(
        ids, start, end, interval, offset=offset, per_datastream=False, stats=["sum", "count"]
    )
    all_want = inside.set_index("phenomenon_time")["result"].resample(interval, origin=origin)
    all_want = all_want.agg(["sum", "count"])
    all_want = all_want[all_want["count"] > 0]
    assert np.allclose(together["sum"], all_want["sum"]) and list(together.columns) == [
        "bucket",
        "sum",
        "count",
    ]
    assert (together["bucket"].to_numpy() == all_want.index.to_numpy()).all()


def test_aggregate_arguments(twin):
    with pytest.raises(InvalidInput, match="statistic"):
        twin.aggregate(["dev:0000:pressure"], T0, T0 + pd.Timedelta("1D"), stats=["median"])
    with pytest.raises(InvalidInput, match="between 1 s and 366 days"):
        twin.aggregate(["dev:0000:pressure"], T0, T0 + pd.Timedelta("1D"), "10ms")
    with pytest.raises(InvalidInput, match="duration"):
        twin.aggregate(["dev:0000:pressure"], T0, T0 + pd.Timedelta("1D"), "hourly")


def test_downsample_keeps_first_last_min_max_of_every_bucket(twin):
    ds_id = "dev:0007:pressure"
    rng = np.random.default_rng(11)
    n = 5000
    times = T0 + pd.to_timedelta(np.sort(rng.choice(7 * 86400, n, replace=False)), unit="s")
    values = np.cumsum(rng.normal(0, 1, n))
    values[1234], values[4321] = 1e3, -1e3  # spikes must survive
    twin.append_observations(
        pd.DataFrame({"datastream_id": ds_id, "phenomenon_time": times, "result": values})
    )
    start, end, buckets = T0, T0 + pd.Timedelta("7D"), 50
    got = twin.downsample(ds_id, start, end, buckets)
    assert len(got) <= 4 * buckets and got["phenomenon_time"].is_monotonic_increasing
    truth = pd.Series(values, index=times)
    assert np.array_equal(got["result"].to_numpy(), truth.loc[got["phenomenon_time"]].to_numpy())
    width = (end - start) / buckets
    b = ((truth.index - start) // width).to_numpy()
    gb = got.assign(b=((got["phenomenon_time"] - start) // width).to_numpy()).groupby("b")
    for k, part in truth.groupby(b):
        mine = gb.get_group(k)
        assert mine["result"].max() == part.max() and mine["result"].min() == part.min()
        assert mine["phenomenon_time"].min() == part.index.min()
        assert mine["phenomenon_time"].max() == part.index.max()
    assert {1e3, -1e3} <= set(got["result"])
    with pytest.raises(NotFound):
        twin.downsample("nope", start, end)
    with pytest.raises(InvalidInput, match="not after"):
        twin.downsample(ds_id, end, start)


def test_persistence_across_reopen(make_twin):
    store = make_twin(extent=(0, 0, 2000, 2000))
    devs = devices(50)
    store.insert("devices", devs)
    store.provision(datastreams(devs))
    ids = store.datastreams()["datastream_id"]
    batch = readings(ids, every(5, 12), seed=12)
    store.append_observations(batch)
    store.append_rejected([{"payload": "x", "reason": "bad JSON", "source": "http"}])
    before = store.latest().sort_values("datastream_id").reset_index(drop=True)
    path = store.path
    store.close()

    again = open_store(path)
    try:
        assert len(again.datastreams()) == len(ids)
        after = again.latest().sort_values("datastream_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(before, after)
        assert len(again.observations(list(ids))) == len(batch)
        assert len(again.rejected()) == 1
        r = again.append_observations(batch.iloc[: len(batch) // 2])
        assert (r.inserted, r.duplicates) == (0, len(batch) // 2)
        more = readings(ids, every(5, 2, T0 + pd.Timedelta("1h")), seed=13)
        assert again.append_observations(more).inserted == len(more)
        assert (again.latest()["phenomenon_time"] == T0 + pd.Timedelta("65min")).all()
    finally:
        again.close()
    ro = open_store(path, read_only=True)
    try:
        assert len(ro.observations(list(ids))) == len(batch) + 2 * len(ids)
    finally:
        ro.close()


def test_batch_forms_empty_and_arrow(twin):
    import pyarrow as pa

    empty = twin.append_observations(
        pd.DataFrame({"datastream_id": [], "phenomenon_time": [], "result": []})
    )
    assert (empty.inserted, empty.duplicates, len(empty.rejected)) == (0, 0, 0)
    t = pd.date_range("2024-03-01 08:00", periods=3, freq="5min", tz="Asia/Shanghai")
    table = pa.table(
        {
            "datastream_id": ["dev:0001:pressure"] * 3,
            "phenomenon_time": pa.array(t),
            "result": [0.1, 0.2, 0.3],
            "result_time": pa.array(t + pd.Timedelta("2s")),
            "result_quality": ["ok", None, "suspect"],
        }
    )
    assert twin.append_observations(table).inserted == 3
    got = twin.observations("dev:0001:pressure")
    assert got["phenomenon_time"].iloc[0] == pd.Timestamp("2024-03-01 00:00")  # UTC
    assert (got["result_time"] - got["phenomenon_time"] == pd.Timedelta("2s")).all()
    assert got["result_quality"].iloc[2] == "suspect" and pd.isna(got["result_quality"].iloc[1])
    latest = twin.latest(["dev:0001:pressure"]).iloc[0]
    assert latest["result"] == 0.3 and latest["result_quality"] == "suspect"


def test_the_datastreams_table_is_the_rule_engines_catalog(twin):
    from citytwin.warning import Catalog, evaluate, parse_rules

    rules = parse_rules(
        {
            "version": 1,
            "rules": [
                {
                    "id": "low",
                    "kind": "threshold",
                    "applies_to": {"observed_property": "pressure", "tags": ["source"]},
                    "unit": "MPa",
                    "direction": "below",
                    "levels": {"yellow": 0.2, "red": 0.1},
                    "hysteresis": 0.01,
                }
            ],
        }
    )
    ds = twin.datastreams(StreamQuery(tags="source"))
    batch = readings(ds["datastream_id"], every(5, 2)).assign(result=0.05)
    twin.append_observations(batch)
    events = evaluate(rules, Catalog(twin.datastreams()), twin.observations(ds["datastream_id"]))
    raised = events.events[events.events["event"] == "raise"]
    assert set(raised["datastream_id"]) == set(ds["datastream_id"]) and len(ds) > 10
    assert set(raised["asset_id"]) == set(ds["asset_id"])


def test_provision_without_an_extent_and_the_keys_follow_space(make_twin):
    store = make_twin()  # no extent: the devices' own
    devs = devices(400, seed=4)
    store.insert("devices", devs)
    ds = datastreams(devs).iloc[:400]
    assert store.provision(ds).created == 400
    got = store.datastreams()  # in key order
    # Hilbert order: consecutive keys are near each other (random order would be ~1 km)
    step = np.hypot(np.diff(got["x"]), np.diff(got["y"]))
    assert np.median(step) < 200
    with pytest.raises(InvalidInput, match="not a current device"):
        store.provision(ds.iloc[:1].assign(datastream_id="x:pressure", thing_id="nobody"))

"""``Store.sta_entities`` on a small twin made here: the latest values against a scan, paging
per parent, links, ids with times, network restriction, parameterised values, and OData
filters (parsed by ``citytwin.services.odata``) against pandas."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pygeofilter import ast

from citytwin.errors import InvalidInput
from citytwin.model import validate_frame
from citytwin.sensing import plan_datastreams
from citytwin.sensing.entities import EntityRequest, Link
from citytwin.services.odata import parse_expand, parse_filter, parse_orderby, parse_path

T0 = pd.Timestamp("2025-06-01")
N = 60  # devices, one datastream each
STEPS = 48  # readings each, every 10 minutes (sent late for every third device)


@pytest.fixture
def twin(make_twin):
    store = make_twin(extent=(0, 0, 1000, 1000))
    rng = np.random.default_rng(1)
    devices = gpd.GeoDataFrame(
        {
            "id": [f"dev:{i:03d}" for i in range(N)],
            "class": "level_sensor",
            "name": [f"O'Brien gauge {i}" if i == 7 else None for i in range(N)],
            "feature_id": [f"mh{i:03d}" for i in range(N)],
            "network": ["gas" if i % 3 == 0 else "storm" if i % 3 == 1 else None for i in range(N)],
        },
        geometry=shapely.points(rng.uniform(0, 1000, (N, 2))),
        crs="EPSG:32650",
    )
    store.insert("devices", validate_frame("devices", devices, source="test"))
    store.provision(plan_datastreams(devices))
    ids = store.datastreams()["datastream_id"].to_numpy(object)
    times = T0 + pd.to_timedelta(np.arange(STEPS) * 10, unit="min")
    frame = pd.DataFrame(
        {
            "datastream_id": np.repeat(ids, STEPS),
            "phenomenon_time": np.tile(times, len(ids)),
            "result": rng.normal(1.0, 0.3, len(ids) * STEPS).round(3),
        }
    )
    late = frame["datastream_id"].isin(ids[::3])
    late &= frame["phenomenon_time"] < T0 + pd.Timedelta("2h")
    store.append_observations(frame[~late])
    store.append_observations(frame[late])  # out of order: the latest stays the latest
    store.observed = frame.sort_values(["datastream_id", "phenomenon_time"], ignore_index=True)
    return store


def read(store, entity_set, **kw):
    return store.sta_entities(EntityRequest(entity_set, **kw))


def test_latest_comes_from_the_latest_table_and_equals_a_scan(twin):
    keys = tuple(twin.con.execute("SELECT key FROM datastreams ORDER BY key").fetchnumpy()["key"])
    desc = parse_orderby("phenomenonTime desc")
    link = Link("Datastreams", "Observations", keys, per_parent=True)
    fast = read(twin, "Observations", link=link, top=1, order_by=desc).frame
    scan = read(twin, "Observations", link=link, top=2, order_by=desc).frame  # a window
    scan = scan.groupby("_link").head(1).reset_index(drop=True)
    assert len(fast) == len(keys) == N
    pd.testing.assert_frame_equal(fast, scan, check_dtype=False)
    want = twin.observed.groupby("datastream_id").tail(1).set_index("datastream_id")
    got = fast.set_index("datastream_id")
    assert (got["phenomenon_time"] == want["phenomenon_time"].reindex(got.index)).all()
    assert np.allclose(got["result"], want["result"].reindex(got.index))
    # and it reads the latest table: emptied, the answer is empty although observations exist
    twin.con.execute("UPDATE latest_observations SET phenomenon_time = NULL")
    assert not len(read(twin, "Observations", link=link, top=1, order_by=desc).frame)


def test_per_parent_paging_and_counts(twin):
    ds = twin.datastreams()
    keys = tuple(
        int(k) for k in twin.con.execute("SELECT key FROM datastreams").fetchnumpy()["key"]
    )
    link = Link("Datastreams", "Observations", keys, per_parent=True)
    flt = parse_filter("result gt 1")
    page = read(twin, "Observations", link=link, top=4, skip=2, filter=flt, count=True)
    obs = twin.observed[twin.observed["result"] > 1]
    assert page.counts and sum(page.counts.values()) == len(obs)
    for key, rows in page.frame.groupby("_link"):
        name = rows["datastream_id"].iloc[0]
        want = obs[obs["datastream_id"] == name]["phenomenon_time"].iloc[2:7]
        assert rows["phenomenon_time"].tolist() == want.tolist()  # top + 1: one more told
        assert page.counts[key] == (obs["datastream_id"] == name).sum()
    assert set(ds["datastream_id"]) >= set(page.frame["datastream_id"])


def test_links_ids_and_timed_ids(twin):
    ds = twin.datastreams()
    one = ds.iloc[5]
    things = read(twin, "Things", link=Link("Datastreams", "Thing", (one["thing_id"],))).frame
    assert things["id"].tolist() == [one["thing_id"]]
    t = T0 + pd.Timedelta("30min")
    ident = f"{one['datastream_id']}@{t:%Y-%m-%dT%H:%M:%S}.000000Z"
    obs = read(twin, "Observations", ids=(ident, "nonsense", "x@notatime")).frame
    assert obs["datastream_id"].tolist() == [one["datastream_id"]]
    assert obs["phenomenon_time"].tolist() == [t]
    hl = read(twin, "HistoricalLocations", ids=(f"{one['thing_id']}@2020-01-01T00:00:00Z",))
    assert len(read(twin, "HistoricalLocations").frame) == N
    assert len(hl.frame) in (0, 1)  # valid_from is the import time, not 2020
    stamp = read(
        twin, "HistoricalLocations", link=Link("Things", "HistoricalLocations", (one["thing_id"],))
    ).frame
    ident = f"{one['thing_id']}@{stamp['time'].iloc[0].isoformat()}Z"
    assert read(twin, "HistoricalLocations", ids=(ident,)).frame["thing_id"].tolist() == [
        one["thing_id"]
    ]


def test_networks_restrict_every_set_and_count(twin):
    ds = twin.datastreams()
    for networks in (("gas",), ("storm", None), (None,), ()):
        allowed = ds["network"].isin([n for n in networks if n]) | (
            ds["network"].isna() & (None in networks)
        )
        page = read(twin, "Datastreams", networks=networks, count=True, top=1000)
        assert set(page.frame["id"]) == set(ds.loc[allowed, "datastream_id"])
        assert page.count == allowed.sum()
        n_obs = read(twin, "Observations", networks=networks, count=True, top=0).count
        assert n_obs == twin.observed["datastream_id"].isin(ds.loc[allowed, "datastream_id"]).sum()
        assert read(twin, "Things", networks=networks, count=True, top=0).count == allowed.sum()
        fois = read(twin, "FeaturesOfInterest", networks=networks, top=1000).frame
        assert set(fois["id"]) == set(ds.loc[allowed, "asset_id"])
        sensors = read(twin, "Sensors", networks=networks, top=10).frame
        assert len(sensors) == (1 if allowed.any() else 0)


def test_values_are_parameters_never_sql(twin):
    flt = parse_filter("name eq 'O''Brien gauge 7' or name eq ''') OR 1=1 --'")
    frame = read(twin, "Things", filter=flt).frame
    assert frame["name"].tolist() == ["O'Brien gauge 7"]
    flt = parse_filter("startswith(name, 'O''Brien_') or contains(name, '%')")
    assert not len(read(twin, "Things", filter=flt).frame)  # _ and % are matched literally


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("result ge 1.2 and result lt 1.5", lambda o, storm: (o.result >= 1.2) & (o.result < 1.5)),
        (
            "phenomenonTime ge 2025-06-01T02:00:00Z and phenomenonTime lt 2025-06-01T03:00:00Z",
            lambda o, storm: (
                (o.phenomenon_time >= T0 + pd.Timedelta("2h"))
                & (o.phenomenon_time < T0 + pd.Timedelta("3h"))
            ),
        ),
        (
            "minute(phenomenonTime) eq 40 or round(result) eq 2",
            lambda o, storm: (o.phenomenon_time.dt.minute == 40) | (o.result.round() == 2),
        ),
        ("result sub 1 mul 0.5 ge 0.7", lambda o, storm: (o.result - 0.5) >= 0.7),
        ("(result sub 1) mul 2 ge 0.5", lambda o, storm: (o.result - 1) * 2 >= 0.5),
        (
            "phenomenonTime lt 2025-06-01T09:00:00+08:00",
            lambda o, storm: o.phenomenon_time < T0 + pd.Timedelta("1h"),
        ),
        (
            "phenomenonTime ge 2025-06-01T07:00:00Z sub duration'PT90M'",
            lambda o, storm: o.phenomenon_time >= T0 + pd.Timedelta("5h30min"),
        ),
        (
            "Datastream/Thing/properties/network eq 'storm' and not (result gt 1)",
            lambda o, storm: o.datastream_id.isin(storm) & ~(o.result > 1),
        ),
        (
            "date(phenomenonTime) eq 2025-06-01 and hour(phenomenonTime) in (3, 5)",
            lambda o, storm: o.phenomenon_time.dt.hour.isin([3, 5]),
        ),
    ],
)
def test_observation_filters_against_pandas(twin, text, expected):
    ds = twin.datastreams()
    obs = twin.observed
    want = obs[expected(obs, set(ds.loc[ds["network"] == "storm", "datastream_id"]))]
    page = read(twin, "Observations", filter=parse_filter(text), count=True, top=100_000)
    assert page.count == len(want) > 0
    got = page.frame.sort_values(["datastream_id", "phenomenon_time"], ignore_index=True)
    assert got["phenomenon_time"].tolist() == want["phenomenon_time"].tolist()


def test_unknown_properties_and_kinds_are_invalid_input(twin):
    for text, message in [
        ("nope eq 1", "Observation has no property 'nope'"),
        ("result eq 'x'", "can't compare"),
        ("Datastream/nope eq 1", "Datastream has no property 'nope'"),
        ("length(result) eq 1", "length() needs a text"),
        ("geo.intersects(result, geography'POINT(1 2)')", "not a geometry"),
    ]:
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            read(twin, "Observations", filter=parse_filter(text))
    with pytest.raises(InvalidInput, match="geometry"):
        read(twin, "Locations", order_by=parse_orderby("location"))


def test_the_parser_builds_pygeofilter_trees():
    node = parse_filter("Datastream/id eq 'a' and not (result gt 2.5 or startswith(name,'x_'))")
    assert isinstance(node, ast.And) and node.lhs == ast.Equal(
        ast.Attribute("Datastream/@iot.id"), "a"
    )
    assert isinstance(node.rhs, ast.Not)
    like = node.rhs.sub_node.rhs
    assert isinstance(like, ast.Like) and like.pattern == "x\\_%"
    t = parse_filter("phenomenonTime gt 2025-06-01T08:00:00+08:00")
    assert t.rhs == dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert parse_filter("name eq null") == ast.IsNull(ast.Attribute("name"), False)
    (ds,) = parse_expand("Datastreams/Observations($top=1;$orderby=phenomenonTime desc)")
    (obs,) = ds.options.expand
    assert (ds.navigation, obs.navigation, obs.options.top) == ("Datastreams", "Observations", 1)
    assert obs.options.orderby == ((ast.Attribute("phenomenonTime"), True),)
    assert [(s.name, s.id) for s in parse_path("Things('a''b')/Datastreams(3)/name/$value")] == [
        ("Things", "a'b"),
        ("Datastreams", "3"),
        ("name", None),
        ("$value", None),
    ]

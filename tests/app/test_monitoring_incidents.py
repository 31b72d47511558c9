"""Incident correlation on the virtual city, through the store as the ingest commit runs it:
engine events → alarms (``apply_events``) → ``IncidentCorrelator`` → alarms and incidents saved.
A surcharge along a real storm line, a suspected burst in a real DMA with its valve segments,
closing, idempotence, alarms arriving one by one, and the time a correlation takes."""

from __future__ import annotations

import math
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.app.monitoring import IncidentCorrelator, _fed_from
from citytwin.app.networks import NetworkData, load_network, network_valves
from citytwin.model import validate_frame
from citytwin.networks.segments import valve_segments
from citytwin.networks.trace import downstream
from citytwin.sensing import plan_datastreams
from citytwin.store import Query, open_store
from citytwin.warning import virtual_city_rules
from citytwin.warning.alarms import apply_events

T0 = pd.Timestamp("2024-07-01 02:00", tz="UTC")
DMA = "ws:DMA-03"
NORMAL = 0.30  # MPa, the loggers' pressure the day before


def minutes(m: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=m)


def _loggers(store) -> pd.DataFrame:
    """Three pressure loggers on junctions of the DMA, far apart (leak-detection loggers a
    utility adds to its fixed sensors)."""
    nodes = store.query(Query("utility_nodes", classes=["junction"], columns=("zone_id",)))
    nodes = nodes[nodes["zone_id"] == DMA].sort_values("id").reset_index(drop=True)
    xy = shapely.get_coordinates(nodes.geometry.to_numpy())
    pick = [0]
    for i in range(len(nodes)):
        if all(np.hypot(*(xy[i] - xy[j])) > 400 for j in pick):
            pick.append(i)
        if len(pick) == 3:
            break
    chosen = nodes.iloc[pick]
    devices = pd.DataFrame(
        {
            "id": [f"dev:pl:{k:06d}" for k in range(1, 4)],
            "class": "pressure_sensor",
            "name": [f"Pressure logger {k}" for k in range(1, 4)],
            "feature_id": chosen["id"].to_numpy(object),
            "network": "water_supply",
            "geometry": chosen.geometry.to_numpy(),
        }
    )
    import geopandas as gpd

    return validate_frame(
        "devices", gpd.GeoDataFrame(devices, geometry="geometry", crs=nodes.crs), source="test"
    )


@pytest.fixture(scope="module")
def monitored_city(virtual_city, tmp_path_factory):
    """The virtual city with its datastreams provisioned, three pressure loggers in DMA 03 and
    a day of normal pressure before T0."""
    path = tmp_path_factory.mktemp("monitoring") / "city.twin"
    shutil.copy(virtual_city, path)
    store = open_store(path)
    try:
        store.insert("devices", _loggers(store))
        assets = store.query(Query("utility_nodes", columns=("zone_id",)))
        store.provision(
            plan_datastreams(store.query(Query("devices")), assets, store.query(Query("zones")))
        )
        ds = store.datastreams()
        pressure = ds[(ds["observed_property"] == "pressure") & (ds["zone"] == DMA)]
        times = pd.date_range(T0 - pd.Timedelta("1D"), T0, freq="30min", inclusive="left")
        ids = pressure["datastream_id"].to_numpy(object)
        store.append_observations(
            pd.DataFrame(
                {
                    "datastream_id": np.repeat(ids, len(times)),
                    "phenomenon_time": np.tile(times, len(ids)),
                    "result": NORMAL,
                }
            )
        )
    finally:
        store.close()
    return path


@pytest.fixture
def twin(monitored_city, tmp_path):
    path = tmp_path / "city.twin"
    shutil.copy(monitored_city, path)
    store = open_store(path)
    yield store
    store.close()


def streams(store) -> pd.DataFrame:
    ds = store.datastreams()
    return ds.set_axis(ds["datastream_id"].to_numpy(object), axis=0)


def event(ds: pd.Series, rule: str, kind: str, at: float, *, what: str = "raise",
          level: str | None = "yellow", previous: str | None = None,
          value: float = math.nan) -> dict:  # fmt: skip
    """An engine event of a single-datastream rule on datastream ``ds``."""
    return {
        "time": minutes(at),
        "rule_id": rule,
        "kind": kind,
        "event": what,
        "source": ds["datastream_id"],
        "level": level if what != "clear" else None,
        "previous_level": previous,
        "value": value,
        "signal": value,
        "datastream_id": ds["datastream_id"],
        "asset_id": ds["asset_id"],
        "message": f"{rule} {what}",
    }


def commit(store, correlator: IncidentCorrelator, events: list[dict], now: float):
    """What the ingest commit does with engine events: alarms, incidents, in one transaction.
    Older alarms that joined an incident are saved with their incident too."""
    ev = pd.DataFrame(events)
    with store.transaction():
        current = store.alarms_for(ev[["rule_id", "source"]].drop_duplicates())
        changes = apply_events(current, ev, context=store.datastreams())
        alarms = changes.alarms
        out = correlator.correlate(alarms, store.incidents(status="open", limit=None), minutes(now))
        joined = out.assignments.set_index("alarm_id")["incident_id"]
        older = store.alarms(status="active", limit=None)
        older = older[
            older["alarm_id"].isin(joined.index) & ~older["alarm_id"].isin(alarms["alarm_id"])
        ]
        alarms = pd.concat([alarms, older], ignore_index=True)
        hit = alarms["alarm_id"].isin(joined.index)
        alarms.loc[hit, "incident_id"] = alarms.loc[hit, "alarm_id"].map(joined)
        store.save_alarms(alarms, changes.log)
        store.save_incidents(out.incidents)
    return out


# -- a surcharge along a storm line ------------------------------------------------------------
def storm_line(store) -> tuple[list[str], str]:
    """The storm line with the most gauges one after another downstream (traced with the
    network engine), and a gauged manhole far from it on no path to or from it."""
    data = load_network(store, "storm")
    direction = data.direction()
    ds = store.datastreams()
    gauges = ds[(ds["network"] == "storm") & ds["observed_property"].isin(
        ["depth_below_cover", "water_level"])]  # fmt: skip
    gauged = set(gauges["asset_id"])
    manholes = sorted(gauges.loc[gauges["observed_property"] == "depth_below_cover", "asset_id"])
    below = {m: downstream(data.graph, direction, m).node_ids for m in manholes}
    best: list[str] = []
    for m in manholes:
        line = []
        for n in below[m]:  # a drainage tree: in order down the line
            if n in gauged:
                if n not in manholes:
                    break
                line.append(n)
        if len(line) > len(best):
            best = line
    xy = ds.set_index("asset_id")[["x", "y"]]
    far = next(
        m
        for m in manholes
        if not (set(below[m]) & set(best))
        and not any(m in below[b] for b in best)
        and min(np.hypot(*(xy.loc[m].to_numpy() - xy.loc[b].to_numpy())) for b in best) > 800
    )
    return best, far


def gauge(store, asset: str) -> pd.Series:
    ds = streams(store)
    return ds[(ds["asset_id"] == asset) & (ds["observed_property"] == "depth_below_cover")].iloc[0]


def test_manhole_alarms_along_a_storm_line_are_one_surcharge(twin):
    line, far = storm_line(twin)
    assert len(line) >= 3
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    # the line's gauges (downstream order reversed) and the far one rise together
    events = [event(gauge(twin, m), "manhole-level", "threshold", k, value=0.4)
              for k, m in enumerate(reversed(line))]  # fmt: skip
    events.append(event(gauge(twin, far), "manhole-level", "threshold", 0, value=0.3,
                        level="orange"))  # fmt: skip
    out = commit(twin, correlator, events, now=10)
    assert out.changes["change"].tolist() == ["opened"]
    inc = twin.incident(out.changes["incident_id"].iloc[0])
    assert inc["kind"] == "surcharge" and inc["network"] == "storm"
    assert inc["asset_id"] == line[0]  # the most upstream
    top = gauge(twin, line[0])
    assert (inc["x"], inc["y"]) == pytest.approx((top["x"], top["y"]))
    alarms = twin.alarms(status="active").set_index("asset_id")
    assert sorted(inc["alarm_ids"]) == sorted(alarms.loc[line, "alarm_id"])
    assert (alarms.loc[line, "incident_id"] == inc["incident_id"]).all()
    assert alarms.loc[far, "incident_id"] is None  # on another line: no incident
    # correlating again with nothing new changes nothing
    assert correlator.correlate(twin.alarms(status="active").iloc[:0], now=minutes(11)).empty
    n = len(line)
    assert inc["title"] == f"surcharge in the storm network from {line[0]} ({n} points in alarm)"
    # the most upstream gauge clears first: the surcharge began there, its point stays
    out = commit(twin, correlator, [event(gauge(twin, line[0]), "manhole-level", "threshold",
                                          15, what="clear")], now=16)  # fmt: skip
    assert out.changes[["change", "at"]].values.tolist() == [["updated", minutes(15)]]
    inc = twin.incident(inc["incident_id"])
    assert inc["asset_id"] == line[0] and (inc["x"], inc["y"]) == pytest.approx(
        (top["x"], top["y"])
    )
    assert inc["title"] == (
        f"surcharge in the storm network from {line[0]} ({n - 1} of {n} points still in alarm)"
    )
    # after a restart (a new correlator) the cleared alarms are read back from the store:
    # the next one to clear still counts every point
    again = IncidentCorrelator(twin, virtual_city_rules())
    out = commit(twin, again, [event(gauge(twin, line[1]), "manhole-level", "threshold", 17,
                                     what="clear")], now=18)  # fmt: skip
    inc = twin.incident(inc["incident_id"])
    assert inc["asset_id"] == line[0]
    assert inc["title"] == (
        f"surcharge in the storm network from {line[0]} ({n - 2} of {n} points still in alarm)"
    )
    # all clear: the incident closes when the last of its alarms clears
    clear = [event(gauge(twin, m), "manhole-level", "threshold", 20 + k, what="clear")
             for k, m in enumerate(line[2:])]  # fmt: skip
    out = commit(twin, again, clear, now=30)
    assert out.changes[["change", "at"]].values.tolist() == [["closed", minutes(20 + n - 3)]]
    assert twin.incidents(status="open").empty
    assert twin.incident(inc["incident_id"])["status"] == "closed"


def test_alarms_arriving_one_by_one_join_the_same_surcharge(twin):
    line, _ = storm_line(twin)
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    bottom, *rest = reversed(line)
    assert commit(twin, correlator, [event(gauge(twin, bottom), "manhole-level",
                                           "threshold", 0)], now=1).empty  # fmt: skip
    ids = []
    for k, m in enumerate(rest, start=1):
        out = commit(twin, correlator, [event(gauge(twin, m), "manhole-level", "threshold",
                                              10 * k, level="orange")], now=10 * k + 1)  # fmt: skip
        assert out.changes["change"].tolist() == ["opened" if k == 1 else "updated"]
        ids.append(out.changes["incident_id"].iloc[0])
        assert twin.incident(ids[-1])["asset_id"] == m  # each new gauge is further upstream
    assert len(set(ids)) == 1
    inc = twin.incident(ids[0])
    assert len(inc["alarm_ids"]) == len(line) and inc["severity"] == "orange"
    # the first alarm, raised alone, was saved with its incident when the second came
    first = twin.alarms(status="active").set_index("asset_id").loc[bottom]
    assert first["incident_id"] == ids[0]


# -- a suspected burst in a DMA -----------------------------------------------------------------
def test_low_pressure_then_an_inflow_rise_is_a_suspected_burst_in_the_dma(twin):
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    ds = streams(twin)
    loggers = ds[ds["thing_id"].str.startswith("dev:pl:")].sort_values("thing_id")
    assert len(loggers) == 3 and set(loggers["zone"]) == {DMA}
    drops = [0.12, 0.24, 0.26]  # MPa now, 0.30 the day before: the first dropped most
    lows = [
        event(row, "dma-pressure-low", "sustained", k, value=v)
        for k, (row, v) in enumerate(zip(loggers.to_dict("records"), drops, strict=True))
    ]
    out = commit(twin, correlator, lows, now=5)
    assert out.changes["change"].tolist() == ["opened"]
    iid = out.changes["incident_id"].iloc[0]
    inc = twin.incident(iid)
    assert inc["kind"] == "place" and inc["title"] == "low pressure in DMA 03 (3 points in alarm)"
    assert inc["asset_id"] == loggers["asset_id"].iloc[0] and inc["candidates"] == []

    inflow = ds["zone"].eq(DMA) & ds["observed_property"].eq("flow")
    inlet = ds[inflow & ds["tags"].str.contains("dma_inlet")].sort_values("datastream_id").iloc[0]
    out = commit(twin, correlator, [event(inlet, "dma-inflow-anomaly", "anomaly", 8,
                                          level="orange", value=9.0)], now=9)  # fmt: skip
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "updated"]]
    inc = twin.incident(iid)
    assert inc["kind"] == "suspected_burst" and inc["title"] == "suspected burst in DMA 03"
    assert inc["asset_id"] == inlet["asset_id"] and inc["severity"] == "orange"
    assert inc["zone"] == DMA and len(inc["alarm_ids"]) == 4

    # the candidates: valve segments of the DMA, the first one holding the largest drop
    data = load_network(twin, "water_supply")
    valves = network_valves(data)
    seg = valve_segments(data.graph, valves.link, valves.node)
    worst = int(data.graph.node_index(loggers["asset_id"].iloc[0])[0])
    cands = inc["candidates"]
    assert 3 <= len(cands) <= 5
    assert cands[0]["segment"] == seg.node_segment[worst] and cands[0]["distance_m"] == 0
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    zone = twin.query(Query("utility_nodes", columns=("zone_id",))).set_index("id")["zone_id"]
    for c in cands:
        links = data.graph.link_index(c["links"])
        assert (seg.link_segment[links] == c["segment"]).all()
        ends = data.graph.node_ids[data.graph.link_nodes[links].ravel()]
        assert (zone.reindex(ends) == DMA).any()  # in the DMA
        assert c["valves"] and set(c["valves"]) <= set(valves.ids)  # closing them isolates it
    assert (inc["x"], inc["y"]) == pytest.approx((cands[0]["x"], cands[0]["y"]))
    # its links lie where the loggers' pressure dropped most
    logger_xy = loggers.iloc[0][["x", "y"]].to_numpy(float)
    assert np.hypot(*(np.array([cands[0]["x"], cands[0]["y"]]) - logger_xy)) < 300

    # the same commit again changes nothing; then everything clears and the incident closes
    assert correlator.correlate(twin.alarms(status="active").iloc[:0], now=minutes(10)).empty
    clear = [event(r, "dma-pressure-low", "sustained", 30, what="clear")
             for r in loggers.to_dict("records")]  # fmt: skip
    clear.append(event(inlet, "dma-inflow-anomaly", "anomaly", 31, what="clear"))
    out = commit(twin, correlator, clear, now=32)
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "closed"]]


def _inlets(store) -> pd.DataFrame:
    """The DMA inlet meters of the city: their DMA and the DMA (or source) they take from."""
    meters = store.query(Query("utility_nodes", classes=["meter"], columns=("zone_id", "props")))
    return pd.DataFrame(
        {
            "meter": meters["id"].to_numpy(object),
            "dma": [p["dma"] for p in meters["props"]],
            "from": [p["from"] for p in meters["props"]],
        }
    )


def test_the_dmas_feed_each_other_over_their_inlet_meters(twin):
    inlets = _inlets(twin)
    dmas = set(inlets["dma"])
    expected = {
        dma: tuple(sorted(set(group["from"]) & dmas))
        for dma, group in inlets.groupby("dma")
        if set(group["from"]) & dmas
    }
    assert expected  # the city has DMAs fed through others
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    ds = streams(twin)
    flow = ds[ds["tags"].str.contains("dma_inlet") & ds["observed_property"].eq("flow")]
    one = {"alarm_id": "a", "datastream_id": flow.index[0], "status": "active", "raised_at": T0}
    water = correlator.relations(pd.DataFrame([one])).water["water_supply"]
    assert water.fed_from == expected
    # without the meters' "from", the pipe each meter sits on tells the same
    data = load_network(twin, "water_supply")
    bare = data.devices.assign(
        props=[{k: v for k, v in p.items() if k != "from"} if isinstance(p, dict) else p
               for p in data.devices["props"]]
    )  # fmt: skip
    plain = NetworkData(data.network, data.graph, data.nodes, data.links, bare, data.issues)
    assert _fed_from(plain, water.node_zone) == expected


def test_a_burst_in_a_dma_fed_through_others_is_its_own_suspected_burst(twin):
    """The inflow rises at the inlets of every DMA the burst's water passes through: one
    suspected burst, in the DMA fed through the others; their rises and the pressure that
    drops in them later join it."""
    inlets = _inlets(twin)
    dmas = set(inlets["dma"])
    fed = inlets[inlets["from"].isin(dmas)]
    # a DMA fed through another that is itself fed through a third, where there is one
    below = fed[fed["from"].isin(fed["dma"])]
    burst_dma = sorted((below if len(below) else fed)["dma"])[-1]
    chain, todo = set(), [burst_dma]
    while todo:  # the DMAs it is fed through
        up = set(inlets.loc[inlets["dma"] == todo.pop(), "from"]) & dmas
        todo += sorted(up - chain)
        chain |= up
    assert chain
    ds = streams(twin)
    flow = ds[ds["tags"].str.contains("dma_inlet") & ds["observed_property"].eq("flow")]
    rises = flow[flow["zone"].isin(chain | {burst_dma})].sort_values("datastream_id")
    pressure = ds[ds["observed_property"].eq("pressure") & ds["zone"].eq(burst_dma)]
    assert len(pressure) >= 1
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    events = [event(r, "dma-inflow-anomaly", "anomaly", 0, level="orange", value=50.0)
              for r in rises.to_dict("records")]  # fmt: skip
    events += [event(r, "dma-pressure-drop", "anomaly", 1, level="red", value=0.2)
               for r in pressure.to_dict("records")]  # fmt: skip
    out = commit(twin, correlator, events, now=2)
    assert out.changes["change"].tolist() == ["opened"]
    inc = twin.incident(out.changes["incident_id"].iloc[0])
    name = twin.query(Query("zones", ids=[burst_dma], columns=["name"]))["name"].iloc[0]
    assert inc["kind"] == "suspected_burst" and inc["title"] == f"suspected burst in {name}"
    assert inc["zone"] == burst_dma
    assert inc["asset_id"] in set(rises.loc[rises["zone"] == burst_dma, "asset_id"])
    members = twin.alarms(incident_id=inc["incident_id"], limit=None)
    assert set(members["source"]) == set(rises["datastream_id"]) | set(pressure["datastream_id"])
    # later the pressure drops in the DMAs upstream too: it joins, nothing else opens
    upstream = ds[ds["observed_property"].eq("pressure") & ds["zone"].isin(chain)]
    late = [event(r, "dma-pressure-drop", "anomaly", 50, value=0.25)
            for r in upstream.to_dict("records")]  # fmt: skip
    out = commit(twin, correlator, late, now=51)
    assert out.changes[["incident_id", "change"]].values.tolist() == [
        [inc["incident_id"], "updated"]
    ]
    assert set(out.assignments["alarm_id"]) == set(
        twin.alarms(source=list(upstream["datastream_id"]), limit=None)["alarm_id"]
    )
    opened = twin.incidents(limit=None)
    assert opened["incident_id"].tolist() == [inc["incident_id"]]
    assert twin.incident(inc["incident_id"])["zone"] == burst_dma


def test_a_correlation_takes_milliseconds_once_the_networks_are_loaded(twin):
    """Every level gauge of the city and the DMA's pressure points in alarm, and a thousand
    smart meters gone silent: the correlation inside a commit, after the first one loaded the
    networks, takes a few milliseconds."""
    correlator = IncidentCorrelator(twin, virtual_city_rules())
    ds = streams(twin)
    level = ds[ds["observed_property"] == "depth_below_cover"]
    events = [event(r, "manhole-level", "threshold", 0) for r in level.to_dict("records")]
    pressure = ds[(ds["observed_property"] == "pressure") & (ds["zone"] == DMA)]
    events += [event(r, "dma-pressure-low", "sustained", 1, value=0.2)
               for r in pressure.to_dict("records")]  # fmt: skip
    meters = ds[ds["observed_property"] == "water_volume"].iloc[:1000]
    events += [event(r, "meter-silent", "no_data", 1, level="blue")
               for r in meters.to_dict("records")]  # fmt: skip
    commit(twin, correlator, events, now=2)  # loads the networks
    assert correlator.problems == []
    active = twin.alarms(status="active", limit=None)
    n_alarms = int((active["kind"] != "no_data").sum())
    assert n_alarms >= 40 and active["incident_id"][active["kind"] == "no_data"].isna().all()
    gas = ds[ds["observed_property"] == "gas_concentration"].iloc[0]
    one = pd.DataFrame([event(gas, "gas-leak", "threshold", 3, value=30.0)])
    changed = apply_events(twin.alarms_for(one[["rule_id", "source"]]), one,
                           context=twin.datastreams()).alarms  # fmt: skip
    incidents = twin.incidents(status="open", limit=None)
    assert len(incidents) >= 2
    took = []
    for _ in range(5):
        t = time.perf_counter()
        correlator.correlate(changed, incidents, minutes(4))
        took.append(time.perf_counter() - t)
    print(f"correlation of {n_alarms + 1} alarms ({len(incidents)} incidents open, 1000 silent "
          f"meters): {1000 * min(took):.1f} ms")  # fmt: skip
    assert min(took) < 0.1

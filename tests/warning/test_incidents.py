"""Incident correlation on small hand-made networks: surcharge chains along gravity lines (flow
direction, gauges that read normal, long gaps, branches), suspected bursts in a DMA with ranked
valve segments, place incidents, the incident life cycle and idempotence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.networks.graph import Network
from citytwin.networks.segments import valve_segments
from citytwin.networks.trace import BACKWARD, FORWARD
from citytwin.warning.alarms import INCIDENT_COLUMNS, typed_frame
from citytwin.warning.incidents import (
    CorrelationSettings,
    GravityNetwork,
    IncidentChanges,
    Relations,
    WaterNetwork,
    alarm_roles,
    correlate,
)

T0 = pd.Timestamp("2024-06-01 08:00", tz="UTC")


def minutes(m: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=m)


def alarm(aid: str, ds: str, *, at: float = 0, **fields) -> dict:
    """An active alarm row on datastream ``ds`` raised ``at`` minutes after T0."""
    row = {
        "alarm_id": aid,
        "rule_id": fields.pop("rule_id", "manhole-level"),
        "kind": fields.pop("kind", "threshold"),
        "source": ds,
        "datastream_id": ds,
        "severity": fields.pop("severity", "yellow"),
        "status": "active",
        "raised_at": minutes(at),
        "updated_at": minutes(at),
    }
    row.update(fields)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return typed_frame("alarms", rows)


def cleared(row: dict, at: float) -> dict:
    return {**row, "status": "cleared", "cleared_at": minutes(at), "updated_at": minutes(at)}


class Twin:
    """Alarms and incidents kept between correlations, as the store would."""

    def __init__(self, relations: Relations, settings: CorrelationSettings | None = None):
        self.relations, self.settings = relations, settings
        self.alarms: dict[str, dict] = {}
        self.incidents = typed_frame("incidents")

    def step(self, rows: list[dict], now: float) -> IncidentChanges:
        for r in rows:
            self.alarms[r["alarm_id"]] = {**self.alarms.get(r["alarm_id"], {}), **r}
        out = correlate(
            frame(list(self.alarms.values())),
            self.incidents,
            self.relations,
            now=minutes(now),
            settings=self.settings,
        )
        for aid, iid in zip(
            out.assignments["alarm_id"], out.assignments["incident_id"], strict=True
        ):
            self.alarms[aid]["incident_id"] = iid
        if len(out.incidents):
            keep = self.incidents[~self.incidents["incident_id"].isin(out.incidents["incident_id"])]
            self.incidents = pd.concat([keep, out.incidents], ignore_index=True)
        # as the store keeps them: lists as JSON text
        self.incidents["alarm_ids"] = [
            json.dumps(list(v)) if not isinstance(v, str) else v
            for v in self.incidents["alarm_ids"]
        ]
        return out

    def open(self) -> pd.DataFrame:
        return self.incidents[self.incidents["status"] == "open"]


# -- a storm network ---------------------------------------------------------------------------
#   A1 → A2 → A3 → A4 → A5 → A6 → OUT      (the trunk, 100 m per pipe)
#   B1 → B2 → A4                           (a branch joining at A4)
#   C1 → C2 → C3 → OUT                     (another line, 200 m per pipe)
#   L1 → L2 (1200 m) → L3                  (a long unmonitored stretch)
STORM_LINKS = [
    ("A1", "A2", 100), ("A2", "A3", 100), ("A3", "A4", 100), ("A4", "A5", 100),
    ("A5", "A6", 100), ("A6", "OUT", 100), ("B1", "B2", 100), ("B2", "A4", 100),
    ("C1", "C2", 200), ("C2", "C3", 200), ("C3", "OUT", 200),
    ("L1", "L2", 1200), ("L2", "L3", 100),
]  # fmt: skip
STORM_XY = {
    "A1": (0, 0), "A2": (100, 0), "A3": (200, 0), "A4": (300, 0), "A5": (400, 0),
    "A6": (500, 0), "OUT": (600, 0), "B1": (300, 200), "B2": (300, 100),
    "C1": (600, 600), "C2": (600, 400), "C3": (600, 200),
    "L1": (0, 2000), "L2": (1200, 2000), "L3": (1300, 2000),
}  # fmt: skip
GAUGED = ["A1", "A2", "A3", "A5", "B1", "C1", "C3", "L1", "L3"]  # A4, A6, B2 have no gauge


def storm(monitored=GAUGED) -> GravityNetwork:
    nodes = list(STORM_XY)
    graph = Network.from_ids(
        nodes,
        [f"{u}-{v}" for u, v, _ in STORM_LINKS],
        [u for u, _, _ in STORM_LINKS],
        [v for _, v, _ in STORM_LINKS],
        node_xy=np.array([STORM_XY[n] for n in nodes], float),
        link_length=np.array([w for _, _, w in STORM_LINKS], float),
    )
    return GravityNetwork(
        graph, np.full(graph.n_links, FORWARD, np.int8), np.isin(nodes, list(monitored))
    )


def storm_relations(**kw) -> Relations:
    """A gauge datastream ``lv:<node>`` for every node (alarms name the ones they need); the
    network's ``monitored`` mask says which gauges a chain must not pass when they read
    normal."""
    streams = pd.DataFrame(
        {"observed_property": "depth_below_cover", "tags": "manhole", "node": list(STORM_XY)},
        index=pd.Index([f"lv:{n}" for n in STORM_XY], name="datastream_id"),
    )
    return Relations(streams=streams, gravity={"storm": storm(**kw)})


def manhole(aid: str, node: str, at: float = 0, **kw) -> dict:
    x, y = STORM_XY[node]
    return alarm(aid, f"lv:{node}", at=at, network="storm", asset_id=node, x=x, y=y, **kw)


def test_manhole_alarms_along_one_line_are_one_surcharge_anchored_upstream():
    rows = [manhole("a5", "A5"), manhole("a2", "A2", 1), manhole("a3", "A3", 2)]
    rows.append(manhole("c1", "C1", 3))  # another line: alone
    out = correlate(frame(rows), None, storm_relations(), now=minutes(5))
    assert len(out.incidents) == 1
    inc = out.incidents.iloc[0]
    assert inc["kind"] == "surcharge" and inc["status"] == "open"
    assert sorted(inc["alarm_ids"]) == ["a2", "a3", "a5"]
    assert inc["asset_id"] == "A2" and (inc["x"], inc["y"]) == STORM_XY["A2"]
    assert inc["network"] == "storm" and inc["severity"] == "yellow"
    assert inc["opened_at"] == minutes(2)  # when the last of its alarms came
    assert inc["incident_id"].startswith("IN-")
    assert "A2" in inc["title"]
    assert sorted(out.assignments["alarm_id"]) == ["a2", "a3", "a5"]
    assert set(out.assignments["incident_id"]) == {inc["incident_id"]}
    assert out.changes[["incident_id", "change"]].values.tolist() == [
        [inc["incident_id"], "opened"]
    ]
    assert list(out.incidents.columns) == list(INCIDENT_COLUMNS)


def test_a_gauge_reading_normal_breaks_the_chain():
    # A3 is gauged and not in alarm: A1, A2 above it and A5 below it are two stories
    rows = [manhole("a1", "A1"), manhole("a2", "A2"), manhole("a5", "A5")]
    out = correlate(frame(rows), None, storm_relations(), now=minutes(5))
    assert [sorted(v) for v in out.incidents["alarm_ids"]] == [["a1", "a2"]]
    assert out.incidents["asset_id"].iloc[0] == "A1"
    # without a gauge at A3 nothing says the water is low there: one surcharge
    ungauged = storm_relations(monitored=[n for n in GAUGED if n != "A3"])
    out = correlate(frame(rows), None, ungauged, now=minutes(5))
    assert [sorted(v) for v in out.incidents["alarm_ids"]] == [["a1", "a2", "a5"]]


def test_flow_direction_and_gaps_decide_not_distance():
    # B1 drains into A4 and on to A5; A3 and B1 are siblings (neither drains to the other)
    out = correlate(
        frame([manhole("b1", "B1"), manhole("a3", "A3")]), None, storm_relations(), now=T0
    )
    assert len(out.incidents) == 0 and len(out.assignments) == 0
    rows = [manhole("b1", "B1"), manhole("a3", "A3"), manhole("a5", "A5")]
    out = correlate(frame(rows), None, storm_relations(), now=T0)
    assert [sorted(v) for v in out.incidents["alarm_ids"]] == [["a3", "a5", "b1"]]
    # two heads reach A5 alike; A3 is 200 m up the line from A5, B1 300 m: B1 is the farthest
    assert out.incidents["asset_id"].iloc[0] == "B1"
    # 1300 m of pipe without a gauge between L1 and L3: beyond max_gap_m unless allowed
    rows = [manhole("l1", "L1"), manhole("l3", "L3")]
    assert len(correlate(frame(rows), None, storm_relations(), now=T0).incidents) == 0
    wide = CorrelationSettings(max_gap_m=1500)
    out = correlate(frame(rows), None, storm_relations(), now=T0, settings=wide)
    assert out.incidents["asset_id"].tolist() == ["L1"]


def test_only_levelled_high_water_alarms_chain():
    relations = storm_relations()
    rows = [
        manhole("a1", "A1"),
        manhole("a2", "A2"),
        manhole("s2", "A2", kind="no_data", rule_id="telemetry-silent"),
        manhole("r3", "A3", rule_id="rising", kind="composite"),
    ]
    roles = alarm_roles(frame(rows), relations).set_index("alarm_id")
    assert roles.loc["a1", "role"] == "high_water" and roles.loc["a1", "node"] == "A1"
    assert roles.loc["s2", "role"] == "none"  # a silent gauge says nothing about the water
    assert roles.loc["r3", "role"] == "place"
    # a rule watching the other way (a dry manhole) is not high water
    dry = Relations(streams=relations.streams, gravity=relations.gravity,
                    directions={"manhole-level": "above"})  # fmt: skip
    assert set(alarm_roles(frame(rows[:2]), dry)["role"]) == {"place"}
    out = correlate(frame(rows), None, relations, now=T0)
    assert [sorted(v) for v in out.incidents["alarm_ids"]] == [["a1", "a2"]]


def test_alarms_one_by_one_join_and_clearing_all_closes():
    twin = Twin(storm_relations())
    out = twin.step([manhole("a5", "A5", 0)], now=1)
    assert out.empty  # one alarm is not an incident
    out = twin.step([manhole("a3", "A3", 10)], now=11)
    assert out.changes["change"].tolist() == ["opened"]
    iid = out.incidents["incident_id"].iloc[0]
    assert out.incidents["asset_id"].iloc[0] == "A3"
    out = twin.step([manhole("a2", "A2", 20, severity="orange")], now=21)
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "updated"]]
    inc = out.incidents.iloc[0]
    assert inc["asset_id"] == "A2" and inc["severity"] == "orange"  # the new head, the worst
    assert inc["alarm_ids"] == ["a5", "a3", "a2"] and inc["updated_at"] == minutes(20)
    assert out.assignments.values.tolist() == [["a2", iid]]
    assert inc["title"] == "surcharge in the storm network from A2 (3 points in alarm)"
    # the same alarms again: nothing to do
    assert twin.step([], now=22).empty
    # A3 clears and now reads normal between A2 and A5: they no longer relate, but the
    # incident keeps its alarms (it never splits), its point and stays open
    out = twin.step([cleared(twin.alarms["a3"], 30)], now=31)
    assert out.changes[["incident_id", "change", "at"]].values.tolist() == [
        [iid, "updated", minutes(30)]
    ]
    inc = out.incidents.iloc[0]
    assert inc["title"] == "surcharge in the storm network from A2 (2 of 3 points still in alarm)"
    assert inc["asset_id"] == "A2" and len(twin.open()) == 1
    # the head clears first: the surcharge still began at A2, its point does not move down
    out = twin.step([cleared(twin.alarms["a2"], 40)], now=41)
    assert out.changes["change"].tolist() == ["updated"]
    inc = out.incidents.iloc[0]
    assert inc["severity"] == "yellow" and inc["asset_id"] == "A2"
    assert (inc["x"], inc["y"]) == STORM_XY["A2"]
    assert inc["title"] == "surcharge in the storm network from A2 (1 of 3 points still in alarm)"
    out = twin.step([cleared(twin.alarms["a5"], 50)], now=99)
    assert out.changes.values.tolist() == [[iid, "closed", minutes(50)]]
    inc = out.incidents.iloc[0]
    assert inc["status"] == "closed" and inc["closed_at"] == minutes(50)
    assert twin.step([], now=100).empty
    # a new surcharge later is a new incident
    out = twin.step([manhole("a1b", "A1", 60), manhole("a2b", "A2", 61)], now=62)
    assert out.changes["change"].tolist() == ["opened"]
    assert out.incidents["incident_id"].iloc[0] != iid


def test_the_point_moves_only_up_to_a_newly_alarmed_node_upstream():
    twin = Twin(storm_relations(monitored=[]))
    twin.step([manhole("a3", "A3", 0), manhole("a5", "A5", 1)], now=2)
    iid = twin.open()["incident_id"].iloc[0]
    assert twin.open()["asset_id"].tolist() == ["A3"]
    # B1 drains to A5 too, 300 m of pipe against A3's 200: by itself it would head the
    # chain (test_flow_direction_and_gaps_decide_not_distance), but it is no further up
    # than A3, where the surcharge began
    out = twin.step([manhole("b1", "B1", 5)], now=6)
    assert out.assignments.values.tolist() == [["b1", iid]]
    inc = out.incidents.iloc[0]
    assert inc["asset_id"] == "A3"
    assert inc["title"] == "surcharge in the storm network from A3 (3 points in alarm)"
    # A1 drains to A3: the surcharge reaches further up, the point moves there
    out = twin.step([manhole("a1", "A1", 7)], now=8)
    assert out.incidents["asset_id"].tolist() == ["A1"]
    assert (out.incidents["x"].iloc[0], out.incidents["y"].iloc[0]) == STORM_XY["A1"]
    # A1, A3 and A5 clear, in that order: B1 is the only one left, the point stays at A1
    for k, aid in enumerate(["a1", "a3", "a5"]):
        out = twin.step([cleared(twin.alarms[aid], 10 + k)], now=11 + k)
        assert out.incidents["asset_id"].tolist() == ["A1"]
    assert out.incidents["title"].tolist() == [
        "surcharge in the storm network from A1 (1 of 4 points still in alarm)"
    ]
    # A5 rises again (a new alarm on the same gauge) and joins: still four points
    out = twin.step([manhole("a5b", "A5", 20, severity="orange")], now=21)
    assert out.assignments.values.tolist() == [["a5b", iid]]
    inc = out.incidents.iloc[0]
    assert inc["asset_id"] == "A1" and inc["severity"] == "orange"
    assert inc["title"] == "surcharge in the storm network from A1 (2 of 4 points still in alarm)"


def test_two_gauges_at_one_manhole_are_one_point():
    relations = storm_relations()
    streams = pd.concat([relations.streams, pd.DataFrame(
        {"observed_property": ["water_level"], "tags": ["manhole"], "node": ["A2"]},
        index=pd.Index(["wl:A2"], name="datastream_id"))])  # fmt: skip
    relations = Relations(streams=streams, gravity=relations.gravity)
    x, y = STORM_XY["A2"]
    rows = [manhole("a2", "A2"), alarm("w2", "wl:A2", rule_id="high-level", network="storm",
                                       asset_id="A2", x=x, y=y)]  # fmt: skip
    inc = correlate(frame(rows), None, relations, now=T0).incidents.iloc[0]
    assert inc["title"] == "surcharge in the storm network from A2 (1 point in alarm)"


def test_same_input_same_result_and_ids_do_not_depend_on_order_or_clock():
    rows = [manhole("a5", "A5"), manhole("a2", "A2", 1), manhole("a3", "A3", 2)]
    one = correlate(frame(rows), None, storm_relations(), now=minutes(5))
    two = correlate(frame(rows[::-1]), None, storm_relations(), now=minutes(500))
    pd.testing.assert_frame_equal(one.incidents, two.incidents)
    pd.testing.assert_frame_equal(one.assignments, two.assignments)


def test_incidents_never_merge_a_bridging_alarm_joins_the_nearer():
    twin = Twin(storm_relations(monitored=[]), CorrelationSettings(max_gap_m=250))
    twin.step([manhole("a1", "A1"), manhole("a2", "A2")], now=1)
    twin.step([manhole("a6", "A6", 2), manhole("out", "OUT", 2)], now=3)
    assert len(twin.open()) == 2
    # A5 is 300 m below A2 (too far) and 100 m above A6: it joins the lower incident
    out = twin.step([manhole("a5", "A5", 5)], now=6)
    lower = twin.alarms["a6"]["incident_id"]
    assert out.assignments.values.tolist() == [["a5", lower]]
    out = twin.step([manhole("a4", "A4", 7)], now=8)
    # A4 is 200 m below A2 and 100 m above A5: it relates to both, joins the nearer, and
    # the two incidents stay apart
    assert out.assignments.values.tolist() == [["a4", lower]]
    assert len(twin.open()) == 2


# -- a water network ----------------------------------------------------------------------------
#   R ─ P0 ─ J1 ─ P1 ─ J2 ─ P2 ─ J3 ─ P3 ─ J4 ─ P4 ─ J5      (200 m pipes, DMA "D1" from J1)
#                        └─ P5 ─ J6 ─ P6 ─ J7                (a branch at J2)
#   valves: on P0 at J1 (the inlet), on P2 at J2, on P3 at J4, on P5 at J2
WATER_LINKS = [("R", "J1"), ("J1", "J2"), ("J2", "J3"), ("J3", "J4"), ("J4", "J5"),
               ("J2", "J6"), ("J6", "J7")]  # fmt: skip
WATER_XY = {"R": (0, 0), "J1": (200, 0), "J2": (400, 0), "J3": (600, 0), "J4": (800, 0),
            "J5": (1000, 0), "J6": (400, 200), "J7": (400, 400)}  # fmt: skip
VALVES = [("P0", "J1"), ("P2", "J2"), ("P3", "J4"), ("P5", "J2")]


def water() -> WaterNetwork:
    nodes = list(WATER_XY)
    graph = Network.from_ids(
        nodes,
        [f"P{k}" for k in range(len(WATER_LINKS))],
        [u for u, _ in WATER_LINKS],
        [v for _, v in WATER_LINKS],
        node_xy=np.array([WATER_XY[n] for n in nodes], float),
        link_length=np.full(len(WATER_LINKS), 200.0),
    )
    seg = valve_segments(
        graph, graph.link_index([v[0] for v in VALVES]), graph.node_index([v[1] for v in VALVES])
    )
    zone = np.array([None if n == "R" else "D1" for n in nodes], dtype=object)
    return WaterNetwork(graph, zone, seg, valve_ids=np.array(["V0", "V2", "V3", "V5"], object))


def water_relations(normal=None) -> Relations:
    streams = pd.DataFrame(
        {
            "observed_property": ["pressure"] * 4 + ["flow"],
            "tags": ["dma_critical"] * 4 + ["dma_inlet"],
            "node": ["J1", "J3", "J5", "J7", "J1"],
        },
        index=pd.Index(["p:J1", "p:J3", "p:J5", "p:J7", "q:in"], name="datastream_id"),
    )
    return Relations(
        streams=streams,
        water={"water_supply": water()},
        zone_names={"D1": "DMA 1"},
        normal=normal or {},
    )


def low(aid: str, node: str, value: float, at: float = 0, **kw) -> dict:
    x, y = WATER_XY[node]
    return alarm(aid, f"p:{node}", at=at, rule_id="dma-pressure-low", kind="sustained",
                 network="water_supply", zone="D1", asset_id=node, x=x, y=y, value=value,
                 **kw)  # fmt: skip


def inflow(aid: str, at: float = 0, **kw) -> dict:
    return alarm(aid, "q:in", at=at, rule_id="dma-inflow-anomaly", kind="anomaly",
                 network="water_supply", zone="D1", asset_id="M1", x=200, y=0, **kw)  # fmt: skip


def segment_of(link: str) -> int:
    w = water()
    return int(w.segments.link_segment[w.graph.link_index(link)[0]])


def test_low_pressure_and_inflow_rise_is_a_suspected_burst_with_ranked_segments():
    normal = {"l3": 0.30, "l5": 0.30, "l7": 0.30}
    rows = [low("l3", "J3", 0.24), low("l5", "J5", 0.15), low("l7", "J7", 0.27)]
    rows.append(inflow("q", at=1, severity="orange"))
    out = correlate(frame(rows), None, water_relations(normal), now=minutes(2))
    assert len(out.incidents) == 1
    inc = out.incidents.iloc[0]
    assert inc["kind"] == "suspected_burst" and inc["title"] == "suspected burst in DMA 1"
    assert inc["zone"] == "D1" and inc["asset_id"] == "M1" and inc["severity"] == "orange"
    assert sorted(inc["alarm_ids"]) == ["l3", "l5", "l7", "q"]
    cands = inc["candidates"]
    assert 1 <= len(cands) <= 5
    # J5 dropped most (50 %): its segment (J4, P4, J5) comes first, isolated by V3
    top = cands[0]
    assert top["segment"] == segment_of("P4") and top["links"] == ["P4"]
    assert top["valves"] == ["V3"] and top["distance_m"] == 0.0
    assert (inc["x"], inc["y"]) == (top["x"], top["y"])
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    # the segment upstream of J1 (R side) lies outside the DMA and is no candidate
    assert segment_of("P0") not in {c["segment"] for c in cands}
    # J7 (the branch) dropped least: its segment ranks below J3's
    order = [c["segment"] for c in cands]
    assert order.index(segment_of("P2")) < order.index(segment_of("P6"))


def test_without_usual_values_severity_weighs_the_points():
    rows = [low("l3", "J3", 0.12, severity="yellow"), low("l7", "J7", 0.09, severity="red")]
    rows.append(inflow("q", at=1))
    inc = correlate(frame(rows), None, water_relations(), now=minutes(2)).incidents.iloc[0]
    assert inc["candidates"][0]["segment"] == segment_of("P6")  # J7's: red outweighs yellow


def test_low_pressure_alone_is_a_place_incident_that_becomes_a_burst():
    twin = Twin(water_relations({"l3": 0.3, "l5": 0.3}))
    assert twin.step([low("l3", "J3", 0.2)], now=1).empty  # one point: no incident
    out = twin.step([low("l5", "J5", 0.25, at=5)], now=6)
    inc = out.incidents.iloc[0]
    assert inc["kind"] == "place" and inc["title"] == "low pressure in DMA 1 (2 points in alarm)"
    assert inc["asset_id"] == "J3" and inc["candidates"] == []  # J3 dropped most
    out = twin.step([inflow("q", at=8)], now=9)
    assert out.changes[["incident_id", "change"]].values.tolist() == [
        [inc["incident_id"], "updated"]
    ]
    burst = out.incidents.iloc[0]
    assert burst["kind"] == "suspected_burst" and burst["asset_id"] == "M1"
    assert burst["candidates"][0]["segment"] == segment_of("P2")
    assert out.assignments.values.tolist() == [["q", inc["incident_id"]]]
    # the inflow settles, the pressure is still low: still a suspected burst
    out = twin.step([cleared(twin.alarms["q"], 20)], now=21)
    assert out.empty or out.incidents["kind"].tolist() == ["suspected_burst"]
    assert twin.open()["kind"].tolist() == ["suspected_burst"]


def test_inflow_rise_and_pressure_at_the_same_inlet_node():
    rows = [low("l1", "J1", 0.2), inflow("q")]
    inc = correlate(frame(rows), None, water_relations(), now=T0).incidents.iloc[0]
    assert inc["kind"] == "suspected_burst"
    assert inc["candidates"][0]["distance_m"] == 0.0


# -- cascaded DMAs ------------------------------------------------------------------------------
#   R ─ L0 ─ A1 ─ L1 ─ A2 ─ L2 ─ A3 ─ L7 ─ E1 ─ L8 ─ E2      DMA A fed from the source (meter MA
#                      │                                     on L0), DMA E from A (ME on L7)
#                      L3 ─ B1 ─ L4 ─ B2 ─ L5 ─ C1 ─ L6 ─ C2  DMA B from A (MB on L3), DMA C
#                                                             from B (MC on L5); 200 m pipes
CASCADE_XY = {"R": (0, 0), "A1": (200, 0), "A2": (400, 0), "A3": (600, 0), "E1": (800, 0),
              "E2": (1000, 0), "B1": (400, -200), "B2": (400, -400), "C1": (400, -600),
              "C2": (400, -800)}  # fmt: skip
CASCADE_LINKS = [("R", "A1"), ("A1", "A2"), ("A2", "A3"), ("A2", "B1"), ("B1", "B2"),
                 ("B2", "C1"), ("C1", "C2"), ("A3", "E1"), ("E1", "E2")]  # fmt: skip
INLETS = {"A": ("L0", "A1"), "B": ("L3", "B1"), "C": ("L5", "C1"), "E": ("L7", "E1")}
FED_FROM = {"B": ["A"], "C": ["B"], "E": ["A"]}


def cascade(fed_from=FED_FROM) -> Relations:
    nodes = list(CASCADE_XY)
    graph = Network.from_ids(
        nodes,
        [f"L{k}" for k in range(len(CASCADE_LINKS))],
        [u for u, _ in CASCADE_LINKS],
        [v for _, v in CASCADE_LINKS],
        node_xy=np.array([CASCADE_XY[n] for n in nodes], float),
        link_length=np.full(len(CASCADE_LINKS), 200.0),
    )
    valves = [*INLETS.values(), ("L1", "A2"), ("L6", "C2")]
    seg = valve_segments(
        graph, graph.link_index([v[0] for v in valves]), graph.node_index([v[1] for v in valves])
    )
    zone = np.array([None if n == "R" else n[0] for n in nodes], dtype=object)
    net = WaterNetwork(graph, zone, seg, fed_from=fed_from)
    pressure = ["A2", "A3", "B1", "B2", "C1", "C2", "E2"]
    streams = pd.DataFrame(
        {
            "observed_property": ["pressure"] * len(pressure) + ["flow"] * len(INLETS),
            "tags": ["dma_critical"] * len(pressure) + ["dma_inlet"] * len(INLETS),
            "node": pressure + [node for _, node in INLETS.values()],
        },
        index=pd.Index([f"p:{n}" for n in pressure] + [f"q:{d}" for d in INLETS],
                       name="datastream_id"),
    )  # fmt: skip
    names = {d: f"DMA {d}" for d in INLETS}
    return Relations(streams=streams, water={"water_supply": net}, zone_names=names)


def c_low(aid: str, node: str, at: float = 0, value: float = 0.2, **kw) -> dict:
    x, y = CASCADE_XY[node]
    return alarm(aid, f"p:{node}", at=at, rule_id="dma-pressure-drop", kind="anomaly",
                 network="water_supply", zone=node[0], asset_id=node, x=x, y=y, value=value,
                 **kw)  # fmt: skip


def c_inflow(aid: str, dma: str, at: float = 0, **kw) -> dict:
    x, y = CASCADE_XY[INLETS[dma][1]]
    return alarm(aid, f"q:{dma}", at=at, rule_id="dma-inflow-anomaly", kind="anomaly",
                 network="water_supply", zone=dma, asset_id=f"M{dma}", x=x, y=y,
                 **kw)  # fmt: skip


def test_the_dmas_fed_through_a_dma():
    net = cascade().water["water_supply"]
    assert net.fed_through == {"A": {"B": 1, "C": 2, "E": 1}, "B": {"C": 1}}
    # DMAs that feed each other (a loop) pass nothing on to each other
    loop = cascade({"B": ["A", "C"], "C": ["B"], "A": ["A"]}).water["water_supply"]
    assert loop.fed_through == {"A": {"B": 1, "C": 2}, "B": {}, "C": {}}
    with pytest.raises(InvalidInput, match="fed_from"):
        cascade({"B": "A"})


def test_a_burst_downstream_is_one_incident_the_rises_upstream_are_passed_on():
    twin = Twin(cascade())
    # a burst in C: the inflow rises at C's inlet and at every inlet upstream, C's pressure
    # drops; the upstream inlets alarm first
    out = twin.step([c_inflow("qa", "A", 0), c_inflow("qb", "B", 1), c_inflow("qc", "C", 2),
                     c_low("c1", "C1", 2), c_low("c2", "C2", 3, value=0.1)], now=4)  # fmt: skip
    assert out.changes["change"].tolist() == ["opened"]
    inc = out.incidents.iloc[0]
    iid = inc["incident_id"]
    assert inc["kind"] == "suspected_burst" and inc["title"] == "suspected burst in DMA C"
    assert inc["zone"] == "C" and inc["asset_id"] == "MC"
    assert sorted(inc["alarm_ids"]) == ["c1", "c2", "qa", "qb", "qc"]
    # the candidates lie in C (its one valve segment with pipes), none upstream
    assert [c["links"] for c in inc["candidates"]] == [["L6"]]
    # an hour on, the pressure in B drops too (its mains carry C's burst): context of the same
    # incident, which stays C's
    out = twin.step([c_low("b1", "B1", 50), c_low("b2", "B2", 51)], now=52)
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "updated"]]
    assert sorted(out.assignments.values.tolist()) == [["b1", iid], ["b2", iid]]
    inc = out.incidents.iloc[0]
    assert inc[["kind", "zone", "title"]].tolist() == [
        "suspected_burst",
        "C",
        "suspected burst in DMA C",
    ]
    # C's inflow alarm clears first: the rises upstream stay passed on (they are in C's
    # incident); B's pressure flaps: its new alarm joins too, nothing opens for B
    twin.step([cleared(twin.alarms["qc"], 60)], now=61)
    out = twin.step([cleared(twin.alarms["b1"], 62), c_low("b1b", "B1", 65)], now=66)
    assert out.assignments.values.tolist() == [["b1b", iid]]
    assert len(twin.open()) == 1
    inc = twin.open().iloc[0]
    assert (inc["incident_id"], inc["zone"], inc["title"]) == (iid, "C", "suspected burst in DMA C")
    assert inc["asset_id"] == "MC"
    # every alarm clears: the incident closes
    gone = [
        cleared(twin.alarms[m], 90) for m in twin.alarms if twin.alarms[m]["status"] == "active"
    ]
    out = twin.step(gone, now=91)
    assert out.changes.values.tolist() == [[iid, "closed", minutes(90)]]


def test_without_the_cascade_each_dma_with_a_rise_is_a_suspected_burst():
    rows = [c_inflow("qa", "A", 0), c_inflow("qb", "B", 1), c_inflow("qc", "C", 2),
            c_low("c1", "C1", 2), c_low("b1", "B1", 3)]  # fmt: skip
    for relations, bursts in ((cascade({}), ["B", "C"]), (cascade(), ["C"])):
        inc = correlate(frame(rows), None, relations, now=minutes(4)).incidents
        assert sorted(inc.loc[inc["kind"] == "suspected_burst", "zone"]) == bursts
    # no DMA fed through B has a rise: B's rise is its own
    rows = [c_inflow("qa", "A", 0), c_inflow("qb", "B", 1), c_low("b1", "B1", 2)]
    inc = correlate(frame(rows), None, cascade(), now=minutes(4)).incidents
    assert inc[["kind", "zone", "title"]].values.tolist() == [
        ["suspected_burst", "B", "suspected burst in DMA B"]
    ]
    assert sorted(inc["alarm_ids"].iloc[0]) == ["b1", "qa", "qb"]  # A's rise: passed on to B


def test_an_incident_moves_down_to_the_dma_whose_own_inflow_rose():
    twin = Twin(cascade())
    out = twin.step([c_low("b1", "B1", 0), c_low("b2", "B2", 1, value=0.15)], now=2)
    inc = out.incidents.iloc[0]
    iid = inc["incident_id"]
    assert inc["title"] == "low pressure in DMA B (2 points in alarm)" and inc["zone"] == "B"
    # B's inflow rises, and C's: the water goes on to C
    out = twin.step([c_inflow("qb", "B", 5), c_inflow("qc", "C", 5)], now=6)
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "updated"]]
    inc = out.incidents.iloc[0]
    assert inc[["kind", "zone", "title", "asset_id"]].tolist() == [
        "place",
        "C",
        "high inflow into DMA C",
        "MC",
    ]
    assert (inc["x"], inc["y"]) == CASCADE_XY["C1"]
    # C's pressure drops: a suspected burst in C, with candidates in C only
    out = twin.step([c_low("c2", "C2", 8)], now=9)
    inc = out.incidents.iloc[0]
    assert inc[["kind", "zone", "title"]].tolist() == [
        "suspected_burst",
        "C",
        "suspected burst in DMA C",
    ]
    assert inc["candidates"][0]["links"] == ["L6"]
    assert len(twin.open()) == 1
    # a DMA fed through C (none) or beside it (E) never takes it: E's own rise is E's
    out = twin.step([c_inflow("qe", "E", 10), c_low("e2", "E2", 10)], now=11)
    assert out.changes["change"].tolist() == ["opened"]
    assert out.incidents["title"].tolist() == ["suspected burst in DMA E"]
    assert twin.open().set_index("incident_id").loc[iid, "zone"] == "C"


def test_a_suspected_burst_called_before_the_rise_downstream_moves_down():
    # B's inflow and pressure first: on what is known, B's own burst
    twin = Twin(cascade())
    out = twin.step([c_inflow("qb", "B", 0), c_low("b1", "B1", 1)], now=2)
    iid = out.incidents["incident_id"].iloc[0]
    assert out.incidents["title"].tolist() == ["suspected burst in DMA B"]
    # then C's inflow rises: B's rise was C's water, the incident moves to C (still a
    # suspected burst: a kind never goes back), B's candidates go, C's inlet is its point
    out = twin.step([c_inflow("qc", "C", 3)], now=4)
    inc = out.incidents.iloc[0]
    assert inc[["incident_id", "kind", "zone", "title", "asset_id"]].tolist() == [
        iid,
        "suspected_burst",
        "C",
        "suspected burst in DMA C",
        "MC",
    ]
    assert inc["candidates"] == [] and (inc["x"], inc["y"]) == CASCADE_XY["C1"]
    # C's pressure drops: C's candidates
    out = twin.step([c_low("c1", "C1", 5)], now=6)
    assert [c["links"] for c in out.incidents["candidates"].iloc[0]] == [["L6"]]
    # C's inflow alarm clears: the incident does not move back up to B
    out = twin.step([cleared(twin.alarms["qc"], 7)], now=8)
    assert twin.open()[["zone", "title"]].values.tolist() == [["C", "suspected burst in DMA C"]]


# -- place incidents ---------------------------------------------------------------------------
def gas(aid: str, x: float, y: float, at: float = 0, **kw) -> dict:
    kw.setdefault("rule_id", "gas-leak")
    return alarm(aid, f"gd:{aid}", at=at, network="gas", x=x, y=y, asset_id=f"RC-{aid}", **kw)


def test_alarms_near_each_other_in_time_form_place_incidents():
    rows = [
        gas("g1", 0, 0),
        gas("g2", 120, 0, at=10, severity="red"),
        gas("g3", 240, 0, at=20),  # 120 m from g2: joins through it
        gas("g4", 1000, 0),  # far
        gas("g5", 1050, 0, at=200),  # near g4 but three hours later
        gas("g6", 10, 10, kind="no_data", rule_id="telemetry-silent"),  # silent sensor
        alarm("r1", "rain:1", rule_id="rainstorm", x=60, y=60),  # no network, still a place
    ]
    out = correlate(frame(rows), None, Relations(), now=minutes(300))
    assert len(out.incidents) == 1
    inc = out.incidents.iloc[0]
    assert inc["kind"] == "place" and sorted(inc["alarm_ids"]) == ["g1", "g2", "g3", "r1"]
    assert inc["asset_id"] == "RC-g2" and inc["severity"] == "red"  # the worst alarm
    assert inc["network"] is None  # gas and rain
    assert "gas-leak" in inc["title"] and "rainstorm" in inc["title"]
    twin = Twin(Relations())
    twin.step(rows, now=300)
    # an alarm near the open incident joins it later, whatever the time
    out = twin.step([gas("g7", 300, 0, at=400)], now=401)
    assert out.assignments.values.tolist() == [["g7", inc["incident_id"]]]
    assert out.changes["change"].tolist() == ["updated"]
    narrow = CorrelationSettings(radius_m=50)
    assert correlate(frame(rows), None, Relations(), now=T0, settings=narrow).empty


def test_network_alarms_do_not_join_place_incidents():
    rows = [manhole("a1", "A1"), gas("g1", 10, 0), gas("g2", 20, 0)]
    out = correlate(frame(rows), None, storm_relations(), now=T0)
    assert [sorted(v) for v in out.incidents["alarm_ids"]] == [["g1", "g2"]]


# -- input ---------------------------------------------------------------------------------------
def test_bad_input_is_named():
    with pytest.raises(InvalidInput, match="raised_at"):
        correlate(pd.DataFrame({"alarm_id": ["a"], "rule_id": ["r"], "kind": ["threshold"],
                                "status": ["active"]}), None, now=T0)  # fmt: skip
    with pytest.raises(InvalidInput, match="status 'open'"):
        correlate(frame([gas("g", 0, 0, status="open")]), None, now=T0)
    with pytest.raises(InvalidInput, match="alarm_ids"):
        correlate(frame([]), pd.DataFrame({"incident_id": ["x"], "status": ["open"]}), now=T0)
    with pytest.raises(InvalidInput, match="direction has 2 values"):
        GravityNetwork(storm().graph, np.zeros(2, np.int8), np.zeros(15, bool))
    with pytest.raises(InvalidInput, match="radius_m"):
        CorrelationSettings(radius_m=0)


def test_an_incident_whose_alarms_are_gone_closes_at_now():
    twin = Twin(Relations())
    twin.step([gas("g1", 0, 0), gas("g2", 10, 0)], now=1)
    iid = twin.open()["incident_id"].iloc[0]
    out = correlate(frame([]), twin.incidents, Relations(), now=minutes(30))
    assert out.changes.values.tolist() == [[iid, "closed", minutes(30)]]


def test_stored_incident_rows_and_stale_alarm_rows_are_read_as_they_come():
    twin = Twin(Relations())
    twin.step([gas("g1", 0, 0), gas("g2", 10, 0)], now=1)
    stored = twin.open().copy()
    iid = stored["incident_id"].iloc[0]
    # lists as arrays (Arrow / DuckDB), naive times (UTC), and a closed incident that is ignored
    stored["alarm_ids"] = [np.array(json.loads(v)) for v in stored["alarm_ids"]]
    stored["opened_at"] = stored["opened_at"].dt.tz_localize(None)
    closed = stored.assign(incident_id="IN-old", status="closed")
    rows = [{**twin.alarms["g1"]}, {**twin.alarms["g2"]}]
    # an alarm that names the incident but is not on its list yet joins it
    rows.append(gas("g3", 20, 0, at=2, incident_id=iid))
    out = correlate(frame(rows), pd.concat([stored, closed]), Relations(), now=minutes(3))
    assert out.changes[["incident_id", "change"]].values.tolist() == [[iid, "updated"]]
    assert out.incidents["alarm_ids"].iloc[0] == ["g1", "g2", "g3"]
    assert out.assignments.empty  # g3 already names it


def test_links_drawn_against_the_flow_and_closed_links():
    # the trunk drawn upstream (to → from) with BACKWARD directions: the same chain
    g = storm().graph
    flipped = Network(g.node_ids, g.link_ids, g.link_nodes[:, ::-1], g.node_xy, g.link_length)
    backward = np.full(g.n_links, BACKWARD, np.int8)
    gravity = GravityNetwork(flipped, backward, np.isin(g.node_ids, GAUGED))
    relations = Relations(streams=storm_relations().streams, gravity={"storm": gravity})
    rows = [manhole("a5", "A5"), manhole("a2", "A2", 1), manhole("a3", "A3", 2)]
    inc = correlate(frame(rows), None, relations, now=T0).incidents
    assert inc["asset_id"].tolist() == ["A2"] and len(inc["alarm_ids"].iloc[0]) == 3
    # a shut link (a penstock closed) between A3 and A4 separates A5
    shut = g.link_mask(["A3-A4"])
    gravity = GravityNetwork(g, np.full(g.n_links, FORWARD, np.int8), gravity.monitored, shut)
    relations = Relations(streams=relations.streams, gravity={"storm": gravity})
    inc = correlate(frame(rows), None, relations, now=T0).incidents
    assert [sorted(v) for v in inc["alarm_ids"]] == [["a2", "a3"]]


def test_an_escalation_updates_the_incident_severity():
    twin = Twin(storm_relations())
    twin.step([manhole("a2", "A2"), manhole("a3", "A3", 1)], now=2)
    worse = {**twin.alarms["a3"], "severity": "red", "value": 0.05, "updated_at": minutes(7)}
    out = twin.step([worse], now=8)
    assert out.changes[["change", "at"]].values.tolist() == [["updated", minutes(7)]]
    assert out.incidents["severity"].tolist() == ["red"] and out.assignments.empty


def test_of_segments_meeting_at_the_alarmed_node_the_one_holding_it_ranks_first():
    # J4: the valve on P3 sits there, so P3's segment (J3, P2, P3) touches J4 as well as the
    # segment holding J4 (J4, P4, J5); both are 0 m away with the same score
    streams = water_relations().streams
    streams = pd.concat([streams, pd.DataFrame({"observed_property": ["pressure"],
                        "tags": ["dma_critical"], "node": ["J4"]},
                        index=pd.Index(["p:J4"], name="datastream_id"))])  # fmt: skip
    relations = Relations(streams=streams, water=water_relations().water)
    rows = [low("l4", "J4", 0.2), inflow("q")]
    cands = correlate(frame(rows), None, relations, now=T0).incidents["candidates"].iloc[0]
    assert [c["segment"] for c in cands[:2]] == [segment_of("P4"), segment_of("P3")]
    assert cands[0]["score"] == cands[1]["score"] == 1.0

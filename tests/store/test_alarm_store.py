"""Alarms, incidents, the notification outbox and the ingest log in the embedded store: round
trips, the database's one-active-alarm-per-(rule, source) guarantee, filters, retry
bookkeeping, transactions, reopening and older twins."""

from __future__ import annotations

import json
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import TwinMeta
from citytwin.store import open_store
from citytwin.store.duckdb import DuckDBStore
from citytwin.store.duckdb_events import COLUMNS, LEVELS
from citytwin.warning import LEVELS as ENGINE_LEVELS
from citytwin.warning.alarms import (
    ALARM_COLUMNS,
    ALARM_LOG_COLUMNS,
    DELIVERY_COLUMNS,
    INCIDENT_COLUMNS,
    OUTBOX_COLUMNS,
    acknowledge,
    alarm_key,
    apply_events,
    clear,
    empty_alarms,
    notification_rows,
    parse_webhooks,
    typed_frame,
)

T0 = pd.Timestamp("2024-06-03", tz="UTC")


def at(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def ev(minute: float, event: str, level: str | None, src: str = "a", rule: str = "thr") -> dict:
    return {
        "time": at(minute),
        "rule_id": rule,
        "kind": "threshold",
        "event": event,
        "source": src,
        "level": level,
        "previous_level": None,
        "value": minute / 10,
        "signal": np.nan,
        "datastream_id": src,
        "asset_id": f"MH-{src}",
        "message": f"{src} {event} {level}",
    }


def events(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def apply(store, batch: pd.DataFrame):
    """One ingest step: the latest alarms of the batch's pairs, the events, saved."""
    ch = apply_events(store.alarms_for(batch), batch)
    store.save_alarms(ch.alarms, ch.log)
    return ch


@pytest.fixture
def store(make_twin):
    return make_twin(extent=(0, 0, 1000, 1000))


def one_alarm(rule="thr", source="a", minute=0.0, **fields) -> dict:
    ch = apply_events(empty_alarms(), events(ev(minute, "raise", "orange", source, rule)))
    return ch.alarms.to_dict("records")[0] | fields


def test_tables_have_the_record_columns():
    assert COLUMNS["alarms"] == ALARM_COLUMNS
    assert COLUMNS["alarm_log"] == ALARM_LOG_COLUMNS
    assert COLUMNS["incidents"] == INCIDENT_COLUMNS
    assert COLUMNS["outbox"] == OUTBOX_COLUMNS
    assert COLUMNS["deliveries"] == DELIVERY_COLUMNS
    assert LEVELS == ENGINE_LEVELS


# -- alarms -----------------------------------------------------------------------------------
SCRIPT = events(
    ev(0, "raise", "yellow"),
    ev(1, "raise", "blue", "b"),
    ev(5, "escalate", "red"),
    ev(10, "deescalate", "orange"),
    ev(20, "clear", None),
    ev(30, "raise", "blue"),
)


def test_alarms_round_trip_and_reapplying_changes_nothing(store):
    ch = apply(store, SCRIPT)
    got = store.alarms_for(SCRIPT).sort_values("alarm_id", ignore_index=True)
    latest = ch.alarms[ch.alarms.raised_at != at(0)].sort_values("alarm_id", ignore_index=True)
    pd.testing.assert_frame_equal(got, latest)  # the latest per pair, types and all
    everything = store.alarms(limit=None)
    assert everything["raised_at"].tolist() == [at(30), at(1), at(0)]  # newest first
    first = store.alarm(alarm_key("thr", "a", at(0)))
    assert first["status"] == "cleared" and first["max_severity"] == "red"
    assert first["cleared_at"] == at(20) and first["cleared_at"].tzinfo is not None
    assert store.alarm("AL-nope") is None
    log = store.alarm_log(first["alarm_id"])
    assert log["action"].tolist() == ["raise", "escalate", "deescalate", "clear"]
    pd.testing.assert_frame_equal(
        log, ch.log[ch.log.alarm_id == first["alarm_id"]].reset_index(drop=True)
    )
    # a restart re-applies the same events: nothing changes
    again = apply(store, SCRIPT)
    assert len(again.alarms) == len(again.log) == 0
    assert len(store.alarm_log()) == len(SCRIPT)
    pd.testing.assert_frame_equal(store.alarms(limit=None), everything)


def test_clear_and_new_raise_of_the_same_pair_in_one_save(store):
    apply(store, events(ev(0, "raise", "yellow")))
    # the same pair cleared and raised again in one batch: the open-alarm row moves
    ch = apply(store, events(ev(5, "clear", None), ev(6, "raise", "red"), ev(7, "escalate", "red")))
    assert ch.changes["change"].tolist() == ["cleared", "raised"]
    active = store.alarms(status="active")
    assert active["alarm_id"].tolist() == [alarm_key("thr", "a", at(6))]
    # and again, twice inside one outer transaction
    with store.transaction():
        apply(store, events(ev(8, "clear", None)))
        apply(store, events(ev(9, "raise", "blue")))
        apply(store, events(ev(10, "clear", None), ev(11, "raise", "orange")))
    assert store.alarms(status="active")["alarm_id"].tolist() == [alarm_key("thr", "a", at(11))]
    assert len(store.alarms(limit=None)) == 4
    # a clear and a raise at one time, and their replay
    same_time = events(ev(12, "clear", None), ev(12, "raise", "red"))
    apply(store, same_time)
    assert apply(store, same_time).alarms.empty
    assert store.alarms(status="active")["alarm_id"].tolist() == [alarm_key("thr", "a", at(12))]


def test_database_refuses_a_second_active_alarm_for_a_rule_and_source(store):
    first = one_alarm(minute=0)
    store.save_alarms(typed_frame("alarms", [first]), None)
    second = one_alarm(minute=5)
    with pytest.raises(InvalidInput, match="second active alarm"):
        store.save_alarms(typed_frame("alarms", [second]))
    with pytest.raises(InvalidInput, match="second active alarm"):  # two in one batch
        store.save_alarms(
            typed_frame("alarms", [one_alarm(source="z"), one_alarm(source="z", minute=1)])
        )
    assert store.alarms(limit=None)["alarm_id"].tolist() == [first["alarm_id"]]
    # inside an outer transaction the whole of it is refused
    with pytest.raises(InvalidInput), store.transaction():
        store.save_alarms(typed_frame("alarms", [one_alarm(source="b")]))
        store.log_ingest(1, at(1), 10, at(0), at(1))
        store.save_alarms(typed_frame("alarms", [second]))
    assert store.alarm(one_alarm(source="b")["alarm_id"]) is None and len(store.ingest_log()) == 0
    # even straight into the tables the key holds
    with pytest.raises(duckdb.ConstraintException):
        store.con.execute("INSERT INTO open_alarms VALUES ('thr', 'a', 'AL-x')")
    # clearing the first one lets the second in, in the same save
    cleared, log = clear(first, "ops", at(4))
    store.save_alarms(typed_frame("alarms", [cleared, second]), typed_frame("alarm_log", [log]))
    assert store.alarms(status="active")["alarm_id"].tolist() == [second["alarm_id"]]
    assert store.alarm_log(first["alarm_id"])["actor"].tolist() == ["ops"]


def test_bad_alarm_rows_are_refused(store):
    with pytest.raises(InvalidInput, match="lack column"):
        store.save_alarms(typed_frame("alarms", [one_alarm()]).drop(columns="severity"))
    with pytest.raises(InvalidInput, match="unknown alarm status 'open'"):
        store.save_alarms(typed_frame("alarms", [one_alarm(status="open")]))
    with pytest.raises(InvalidInput, match=r"'raised_at'.*must not be empty"):
        store.save_alarms(typed_frame("alarms", [one_alarm(raised_at=None)]))
    with pytest.raises(InvalidInput, match="refused"):
        store.save_alarms(typed_frame("alarms", [one_alarm(severity="purple")]))
    assert len(store.alarms()) == 0


def test_alarm_queries_filter_and_order(store):
    rows = []
    for i, (sev, status, acked) in enumerate(
        [
            ("blue", "active", False),
            ("yellow", "active", True),
            ("orange", "cleared", False),
            ("red", "active", False),
            ("red", "cleared", True),
        ]
    ):
        rows.append(
            one_alarm(
                rule=f"r{i % 2}",
                source=f"s{i}",
                minute=10 * i,
                severity=sev,
                max_severity=sev,
                status=status,
                acknowledged=acked,
                incident_id="INC-1" if i in (3, 4) else None,
            )
        )
    store.save_alarms(typed_frame("alarms", rows))

    def sources(**kw) -> list[str]:
        return store.alarms(**kw)["source"].tolist()

    assert sources() == ["s4", "s3", "s2", "s1", "s0"]
    assert sources(status="active") == ["s3", "s1", "s0"]
    assert sources(acknowledged=False) == ["s3", "s2", "s0"]
    assert sources(acknowledged=True, status="cleared") == ["s4"]
    assert sources(rule_id="r1") == ["s3", "s1"] and sources(rule_id=["r0", "r1"], limit=2) == [
        "s4",
        "s3",
    ]
    assert sources(source=["s0", "s2"]) == ["s2", "s0"] and sources(source="s9") == []
    assert sources(severity_at_least="orange") == ["s4", "s3", "s2"]
    assert sources(severity_at_least="red", status="active") == ["s3"]
    assert sources(incident_id="INC-1") == ["s4", "s3"]
    assert sources(since=at(20)) == ["s4", "s3", "s2"]
    assert sources(since=(at(20)).tz_localize(None)) == ["s4", "s3", "s2"]  # naive is UTC
    with pytest.raises(InvalidInput, match="unknown alarm status"):
        store.alarms(status="open")
    with pytest.raises(InvalidInput, match="unknown severity"):
        store.alarms(severity_at_least="purple")
    with pytest.raises(InvalidInput, match="negative"):
        store.alarms(limit=-1)


def test_acknowledgement_round_trip_and_escalation_count(store):
    apply(store, events(ev(0, "raise", "red")))
    row, log = acknowledge(store.alarm(alarm_key("thr", "a", at(0))), "ops", at(3), "on it")
    store.save_alarms(typed_frame("alarms", [row]), typed_frame("alarm_log", [log]))
    got = store.alarm(row["alarm_id"])
    assert got["acknowledged"] is True
    assert (got["acknowledged_by"], got["acknowledged_at"]) == ("ops", at(3))
    assert store.alarm_log(row["alarm_id"])["text"].tolist() == ["a raise red", "on it"]
    assert store.alarms(acknowledged=True)["alarm_id"].tolist() == [row["alarm_id"]]


def test_save_alarms_is_set_based_and_fast(store):
    n = 500
    batch = events(*(ev(i % 60, "raise", "yellow", f"ds-{i}") for i in range(n)))
    ch = apply_events(store.alarms_for(batch), batch)
    t = time.perf_counter()
    store.save_alarms(ch.alarms, ch.log)
    first = time.perf_counter() - t
    later = events(*(ev(61 + i % 60, "escalate", "red", f"ds-{i}") for i in range(n)))
    t = time.perf_counter()
    current = store.alarms_for(later)
    ch2 = apply_events(current, later)
    store.save_alarms(ch2.alarms, ch2.log)
    second = time.perf_counter() - t
    print(f"save {n} new alarms {first * 1e3:.0f} ms; read, apply, save {n} updates", end=" ")
    print(f"{second * 1e3:.0f} ms")
    assert len(store.alarms(status="active", severity_at_least="red", limit=None)) == n
    assert len(store.alarm_log()) == 2 * n
    assert first < 1.0 and second < 2.0


# -- incidents --------------------------------------------------------------------------------
def test_incidents_round_trip_upsert_and_filters(store):
    inc = [
        {
            "incident_id": "INC-1",
            "kind": "suspected_burst",
            "title": "DMA-1 inflow anomaly",
            "status": "open",
            "severity": "orange",
            "opened_at": at(0),
            "updated_at": at(0),
            "zone": "DMA-1",
            "x": 10.5,
            "y": 20.5,
            "asset_id": "DMA-1-inlet",
            "alarm_ids": ["AL-1", "AL-2"],
            "candidates": [
                {"segment": np.int64(3), "links": ["P1", "P2"], "score": np.float64(0.7)}
            ],
        },
        {
            "incident_id": "INC-2",
            "kind": "surcharge",
            "status": "open",
            "severity": "red",
            "opened_at": at(30),
            "updated_at": at(30),
            "alarm_ids": np.array(["AL-3"]),
        },
    ]
    store.save_incidents(typed_frame("incidents", inc))
    got = store.incident("INC-1")
    assert got["alarm_ids"] == ["AL-1", "AL-2"]
    assert got["candidates"] == [{"segment": 3, "links": ["P1", "P2"], "score": 0.7}]
    assert got["opened_at"] == at(0) and got["closed_at"] is pd.NaT and got["network"] is None
    assert store.incident("INC-9") is None
    frame = store.incidents()
    assert tuple(frame.columns) == INCIDENT_COLUMNS
    assert frame["incident_id"].tolist() == ["INC-2", "INC-1"]
    assert frame["candidates"].tolist()[0] == []
    # upsert: close one
    closed = inc[0] | {"status": "closed", "closed_at": at(60), "updated_at": at(60)}
    store.save_incidents(typed_frame("incidents", [closed]))
    assert store.incidents(status="open")["incident_id"].tolist() == ["INC-2"]
    assert store.incidents(status="closed")["closed_at"].tolist() == [at(60)]
    assert store.incidents(since=at(10))["incident_id"].tolist() == ["INC-2"]
    assert len(store.incidents(limit=1)) == 1
    with pytest.raises(InvalidInput, match="a list is needed"):
        store.save_incidents(typed_frame("incidents", [inc[1]]).assign(alarm_ids=["AL-3"]))
    with pytest.raises(InvalidInput, match="unknown incident status"):
        store.incidents(status="done")
    with pytest.raises(InvalidInput, match="refused"):
        store.save_incidents(typed_frame("incidents", [inc[1] | {"status": "resolved"}]))


# -- the outbox -------------------------------------------------------------------------------
HOOKS = parse_webhooks(
    {
        "webhooks": [
            {"name": "ops", "url": "http://127.0.0.1:9/ops", "secret": "k"},
            {"name": "duty", "url": "https://duty.example", "secret": "k", "min_severity": "red"},
        ]
    }
)


def test_outbox_queue_and_retry_bookkeeping(store):
    ch = apply(
        store, events(ev(0, "raise", "yellow"), ev(5, "escalate", "red"), ev(9, "clear", None))
    )
    rows = notification_rows(ch.changes, ch.alarms, HOOKS, created_at=at(10))
    assert store.enqueue(rows) == len(rows) == 5  # ops: 3, duty: escalated and cleared (red)
    queued = store.notifications()
    assert queued["id"].tolist() == sorted(queued["id"], reverse=True)  # newest first
    assert queued["status"].eq("pending").all() and queued["attempts"].eq(0).all()
    assert store.enqueue(rows.iloc[:0]) == 0

    due = store.due_notifications(at(10))
    assert due["id"].tolist() == sorted(due["id"]) and len(due) == 5  # oldest first
    assert due["event"].tolist() == rows["event"].tolist()  # ids in row order
    assert json.loads(due["payload"].iloc[0])["alarm"]["alarm_id"] == ch.alarms.alarm_id.iloc[0]
    assert len(store.due_notifications(at(9))) == 0
    assert len(store.due_notifications(at(10), limit=2)) == 2
    a, b, c = (int(i) for i in due["id"].iloc[:3])

    store.record_delivery(a, at=at(10.1), ok=True, status_code=204, ms=12.5)
    store.record_delivery(b, at=at(10.1), ok=False, status_code=503, error="HTTP 503",
                          next_attempt_at=at(12), ms=30.0)  # fmt: skip
    store.record_delivery(c, at=at(10.1), ok=False, error="connection refused", dead=True)
    assert store.due_notifications(at(11))["id"].tolist() == [int(i) for i in due["id"].iloc[3:]]
    assert store.due_notifications(at(12))["id"].tolist()[0] == b
    by_id = store.notifications(limit=None).set_index("id")
    assert (by_id.loc[a, "status"], by_id.loc[a, "delivered_at"], by_id.loc[a, "attempts"]) == (
        "delivered",
        at(10.1),
        1,
    )
    assert by_id.loc[b, "last_error"] == "HTTP 503" and by_id.loc[b, "next_attempt_at"] == at(12)
    assert by_id.loc[c, "status"] == "dead" and by_id.loc[c, "last_error"] == "connection refused"
    store.record_delivery(b, at=at(12), ok=True, status_code=200, ms=8.0)
    assert store.notifications(status="delivered")["id"].tolist() == [b, a]
    assert store.notifications(status="delivered").set_index("id").loc[b, "attempts"] == 2
    assert store.notifications(status="delivered").set_index("id").loc[b, "last_error"] is None

    tries = store.deliveries(b)
    assert tuple(tries.columns) == DELIVERY_COLUMNS
    assert tries["status_code"].tolist() == [503, 200] and tries["ms"].tolist() == [30.0, 8.0]
    assert tries["at"].tolist() == [at(10.1), at(12)]
    everything = store.deliveries()
    assert len(everything) == 4 and pd.isna(everything.set_index("outbox_id").loc[c, "status_code"])

    with pytest.raises(InvalidInput, match="delivered already"):
        store.record_delivery(a, at=at(13), ok=True)
    with pytest.raises(NotFound):
        store.record_delivery(10_000, at=at(13), ok=True)
    with pytest.raises(InvalidInput, match="next attempt"):
        store.record_delivery(int(due["id"].iloc[3]), at=at(13), ok=False, error="x")
    with pytest.raises(InvalidInput, match="both ok and dead"):
        store.record_delivery(int(due["id"].iloc[3]), at=at(13), ok=True, dead=True)
    with pytest.raises(InvalidInput, match="unknown notification status"):
        store.notifications(status="sent")


def test_outbox_ids_follow_row_order_and_defaults(store):
    n = 300
    rows = pd.DataFrame(
        {
            "created_at": [at(i % 7) for i in range(n)],
            "event": "alarm.raised",
            "target": [f"hook-{i}" for i in range(n)],
            "url": "https://h.example",
            "payload": "{}",
        }
    )
    assert store.enqueue(rows) == n
    got = store.notifications(limit=None).sort_values("id")
    assert got["target"].tolist() == rows["target"].tolist()
    assert got["id"].diff().iloc[1:].eq(1).all()
    assert got["next_attempt_at"].tolist() == got["created_at"].tolist()
    assert got["status"].eq("pending").all()
    with pytest.raises(InvalidInput, match="lack column"):
        store.enqueue(rows.drop(columns="url"))
    with pytest.raises(InvalidInput, match="unknown outbox status"):
        store.enqueue(rows.assign(status="queued"))


# -- the ingest log and transactions ------------------------------------------------------------
def test_ingest_log(store):
    store.log_ingest(1, at(1), 100, at(0), at(0.9))
    store.log_ingest(2, at(2), 0, None, None)
    store.log_ingest(3, at(3), 5, at(2.5), at(2.9))
    log = store.ingest_log(after_seq=1)
    assert log["seq"].tolist() == [2, 3] and log["n"].tolist() == [0, 5]
    assert pd.isna(log["t_min"].iloc[0]) and log["t_max"].iloc[1] == at(2.9)
    assert log["committed_at"].tolist() == [at(2), at(3)]
    assert store.ingest_log()["seq"].tolist() == [1, 2, 3]
    assert len(store.ingest_log(after_seq=3)) == 0
    with pytest.raises(InvalidInput, match="logged already"):
        store.log_ingest(2, at(4), 1, at(3), at(3))


def test_one_transaction_holds_alarms_outbox_and_ingest_log_together(store):
    batch = events(ev(0, "raise", "red"))
    with pytest.raises(RuntimeError), store.transaction():
        ch = apply(store, batch)
        store.enqueue(notification_rows(ch.changes, ch.alarms, HOOKS, created_at=at(1)))
        store.log_ingest(1, at(1), 1, at(0), at(0))
        raise RuntimeError("crash before the commit")
    assert len(store.alarms()) == len(store.notifications()) == len(store.ingest_log()) == 0
    with store.transaction():
        ch = apply(store, batch)
        store.enqueue(notification_rows(ch.changes, ch.alarms, HOOKS, created_at=at(1)))
        store.log_ingest(1, at(1), 1, at(0), at(0))
    assert len(store.alarms()) == 1 and len(store.notifications()) == 2
    assert len(store.ingest_log()) == 1


def test_everything_persists_across_reopen_and_the_key_still_holds(tmp_path):
    path = tmp_path / "t.twin"
    s = DuckDBStore.create(path, TwinMeta("t", "EPSG:32650"))
    apply(s, SCRIPT)
    apply(s, events(ev(40, "clear", None), ev(41, "raise", "yellow")))
    s.enqueue(pd.DataFrame({"created_at": [at(1)], "event": ["alarm.raised"], "target": ["h"],
                            "url": ["https://h.example"], "payload": ["{}"]}))  # fmt: skip
    s.log_ingest(7, at(1), 3, at(0), at(1))
    before = s.alarms(limit=None)
    s.close()
    s = open_store(path)
    try:
        pd.testing.assert_frame_equal(s.alarms(limit=None), before)
        assert s.ingest_log()["seq"].tolist() == [7]
        s.enqueue(pd.DataFrame({"created_at": [at(2)], "event": ["alarm.cleared"], "target": ["h"],
                                "url": ["https://h.example"], "payload": ["{}"]}))  # fmt: skip
        assert s.notifications()["id"].tolist() == [2, 1]  # the sequence goes on
        with pytest.raises(InvalidInput, match="second active alarm"):
            s.save_alarms(typed_frame("alarms", [one_alarm(minute=50)]))
        again = apply(s, events(ev(41, "raise", "yellow"), ev(45, "escalate", "orange")))
        assert again.changes["change"].tolist() == ["escalated"]
    finally:
        s.close()


def test_older_twins_get_the_tables_when_opened(tmp_path):
    path = tmp_path / "old.twin"
    s = DuckDBStore.create(path, TwinMeta("t", "EPSG:32650"))
    for table in ("open_alarms", "alarms", "alarm_log", "incidents", "outbox", "deliveries",
                  "ingest_log"):  # fmt: skip
        s.con.execute(f"DROP TABLE {table}")
    s.con.execute("DROP SEQUENCE outbox_ids")
    s.con.execute("DROP SEQUENCE alarm_log_seq")
    s.close()
    ro = open_store(path, read_only=True)
    try:
        with pytest.raises(NotFound, match="no alarm tables"):
            ro.alarms()
    finally:
        ro.close()
    s = open_store(path)
    try:
        assert len(s.alarms()) == 0 and len(s.incidents()) == 0
        apply(s, events(ev(0, "raise", "red")))
        assert len(s.alarms()) == 1
    finally:
        s.close()


def test_older_alarm_tables_gain_the_prediction_columns(tmp_path):
    path = tmp_path / "old.twin"
    s = DuckDBStore.create(path, TwinMeta("t", "EPSG:32650"))
    apply(s, events(ev(0, "raise", "red")))
    for column in ("scenario_id", "lead_time_s"):  # as a twin made before predicted alarms
        s.con.execute(f"ALTER TABLE alarms DROP COLUMN {column}")
    s.close()
    ro = open_store(path, read_only=True)  # read as they are, the new columns empty
    try:
        alarms = ro.alarms(limit=None)
        assert tuple(alarms.columns) == ALARM_COLUMNS and len(alarms) == 1
        assert alarms["scenario_id"].isna().all() and alarms["lead_time_s"].isna().all()
        assert ro.alarm(alarms["alarm_id"].iloc[0])["severity"] == "red"
    finally:
        ro.close()
    s = open_store(path)  # opened for writing: the columns are added, the alarm kept
    try:
        row = s.alarms(limit=None).iloc[0].to_dict() | {"scenario_id": "fc-1", "lead_time_s": 60.0}
        s.save_alarms(typed_frame("alarms", [row]))
        back = s.alarm(row["alarm_id"])
        assert (back["scenario_id"], back["lead_time_s"], back["severity"]) == ("fc-1", 60.0, "red")
    finally:
        s.close()

"""Alarms as pure transitions: the lifecycle from engine events, idempotence under replays
and batch splits, operator actions and their refusals, escalation timing, webhook outbox
rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.warning import evaluate
from citytwin.warning.alarms import (
    ALARM_COLUMNS,
    ALARM_LOG_COLUMNS,
    CHANGE_COLUMNS,
    INCIDENT_COLUMNS,
    OUTBOX_COLUMNS,
    EscalationPolicy,
    acknowledge,
    alarm_key,
    apply_events,
    assign,
    clear,
    comment,
    due_escalations,
    empty_alarms,
    empty_incidents,
    empty_outbox,
    incident_notification_rows,
    notification_rows,
    operator_changes,
    outbox_rows,
    parse_escalation_policy,
    parse_webhooks,
    typed_frame,
)
from tests.warning.conftest import T0, at, catalog, readings, rules, series

CONTEXT = pd.DataFrame(
    {
        "datastream_id": ["a", "b", "c"],
        "network": ["storm", "storm", "water_supply"],
        "zone": ["C-1", "C-2", "DMA-1"],
        "x": [10.0, 20.0, 30.0],
        "y": [1.0, 2.0, 3.0],
    }
)


def ev(minute: float, event: str, level: str | None, src: str = "a", **kw) -> dict:
    """An engine event of rule 'thr' on datastream ``src``."""
    return {
        "time": at(minute),
        "rule_id": kw.pop("rule_id", "thr"),
        "kind": "threshold",
        "event": event,
        "source": src,
        "level": level,
        "previous_level": kw.pop("prev", None),
        "value": kw.pop("value", minute / 10),
        "signal": np.nan,
        "datastream_id": src,
        "asset_id": f"MH-{src}",
        "message": f"{src} {event} {level}",
    }


def events(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def ledger() -> dict:
    return {}


def step(book: dict, batch: pd.DataFrame):
    """Apply a batch the way the ingestor does: the latest alarm per pair of the batch from
    what is stored (``book``: alarm_id -> row), then store the changed rows."""
    rows = list(book.values())
    current = typed_frame("alarms", rows)
    pairs = set(zip(batch["rule_id"], batch["source"], strict=True))
    wanted = [p in pairs for p in zip(current.rule_id, current.source, strict=True)]
    current = current.loc[np.array(wanted, dtype=bool)]
    latest = current.sort_values("raised_at").drop_duplicates(["rule_id", "source"], keep="last")
    ch = apply_events(latest, batch, context=CONTEXT)
    for row in ch.alarms.to_dict("records"):
        book[row["alarm_id"]] = row
    return ch


def stored(book: dict) -> pd.DataFrame:
    return typed_frame("alarms", list(book.values())).sort_values("alarm_id", ignore_index=True)


SCRIPT = events(
    ev(0, "raise", "yellow"),
    ev(1, "raise", "blue", src="b"),
    ev(5, "escalate", "red", prev="yellow"),
    ev(6, "raise", "orange", src="c", rule_id="other"),
    ev(10, "deescalate", "orange", prev="red"),
    ev(12, "clear", None, src="b", prev="blue"),
    ev(20, "clear", None, prev="orange"),
    ev(25, "raise", "blue", src="b"),
    ev(30, "raise", "blue"),
    ev(31, "escalate", "yellow", src="b", prev="blue"),
)


# -- records ----------------------------------------------------------------------------------
def test_record_columns_are_the_contract():
    assert ALARM_COLUMNS == (
        "alarm_id", "rule_id", "kind", "source", "datastream_id", "asset_id", "network", "zone",
        "x", "y", "severity", "max_severity", "status", "acknowledged", "raised_at",
        "updated_at", "cleared_at", "acknowledged_at", "acknowledged_by", "assignee", "value",
        "message", "incident_id", "escalations", "escalated_at", "scenario_id", "lead_time_s",
    )  # fmt: skip
    assert ALARM_LOG_COLUMNS == ("alarm_id", "at", "action", "actor", "severity", "value", "text")
    assert INCIDENT_COLUMNS == (
        "incident_id", "kind", "title", "status", "severity", "opened_at", "updated_at",
        "closed_at", "network", "zone", "x", "y", "asset_id", "alarm_ids", "candidates",
    )  # fmt: skip
    assert OUTBOX_COLUMNS == (
        "id", "created_at", "event", "target", "url", "payload", "status", "attempts",
        "next_attempt_at", "last_error", "delivered_at",
    )  # fmt: skip
    alarms = empty_alarms()
    assert tuple(alarms.columns) == ALARM_COLUMNS and len(alarms) == 0
    assert str(alarms["raised_at"].dtype) == "datetime64[us, UTC]"
    assert alarms["acknowledged"].dtype == bool and alarms["escalations"].dtype == np.int64
    assert tuple(empty_incidents().columns) == INCIDENT_COLUMNS
    assert tuple(empty_outbox().columns) == OUTBOX_COLUMNS


def test_typed_frame_normalises_times_and_missing_values():
    frame = typed_frame(
        "incidents",
        [
            {"incident_id": "I1", "opened_at": "2024-06-03T08:00:00+08:00", "x": None},
            {"incident_id": 2, "opened_at": pd.Timestamp("2024-06-03"), "alarm_ids": ("A",)},
        ],
    )
    assert frame["opened_at"].tolist() == [T0, T0]  # +08:00 and naive (UTC) alike
    assert frame["incident_id"].tolist() == ["I1", "2"]
    assert frame["alarm_ids"].tolist() == [[], ["A"]] and np.isnan(frame["x"]).all()
    assert frame["title"].tolist() == [None, None]
    with pytest.raises(InvalidInput, match="not a time"):
        typed_frame("alarms", [{"raised_at": "yesterday-ish"}])
    with pytest.raises(InvalidInput, match="'alarm_ids' must hold lists"):
        typed_frame("incidents", [{"alarm_ids": "AL-1"}])
    with pytest.raises(InvalidInput, match="unknown record schema"):
        typed_frame("alarmz")


def test_alarm_key_is_deterministic_and_short():
    k = alarm_key("thr", "a", at(5))
    assert k == alarm_key("thr", "a", at(5).tz_convert("Asia/Shanghai"))
    assert k == alarm_key("thr", "a", at(5).tz_localize(None))  # naive is UTC
    assert k == alarm_key("thr", "a", at(5) + pd.Timedelta(nanoseconds=300))  # µs, as stored
    assert k.startswith("AL-") and len(k) == 19
    assert len({k, alarm_key("thr", "b", at(5)), alarm_key("thr2", "a", at(5))}) == 3
    assert alarm_key("thr", "a", at(6)) != k


# -- the lifecycle ------------------------------------------------------------------------------
def test_lifecycle_from_engine_events():
    ch = apply_events(empty_alarms(), SCRIPT, context=CONTEXT)
    assert len(ch.skipped) == 0
    a = ch.alarms.set_index("alarm_id")
    first = a.loc[alarm_key("thr", "a", at(0))]
    assert first["status"] == "cleared" and first["severity"] == "orange"
    assert first["max_severity"] == "red"
    assert (first["raised_at"], first["updated_at"], first["cleared_at"]) == (at(0), at(20), at(20))
    assert (first["network"], first["zone"], first["x"], first["y"]) == ("storm", "C-1", 10, 1)
    assert first["asset_id"] == "MH-a" and first["kind"] == "threshold"
    assert first["value"] == 2.0 and first["message"] == "a clear None"
    again = a.loc[alarm_key("thr", "a", at(30))]  # a new alarm after the clear
    assert again["status"] == "active" and again["severity"] == "blue"
    b2 = a.loc[alarm_key("thr", "b", at(25))]
    assert b2["severity"] == b2["max_severity"] == "yellow" and b2["zone"] == "C-2"
    assert len(a) == 5 and (a["escalations"] == 0).all() and not a["acknowledged"].any()
    # at most one active alarm per pair
    active = ch.alarms[ch.alarms.status == "active"]
    assert not active.duplicated(["rule_id", "source"]).any()

    log = ch.log[ch.log.alarm_id == first.name]
    assert log["action"].tolist() == ["raise", "escalate", "deescalate", "clear"]
    assert log["at"].tolist() == [at(0), at(5), at(10), at(20)]
    assert set(ch.log["actor"]) == {"engine"}
    assert log["severity"].tolist() == ["yellow", "red", "orange", "orange"]
    changes = ch.changes[ch.changes.alarm_id == first.name]
    assert list(ch.changes.columns) == list(CHANGE_COLUMNS)
    assert changes["change"].tolist() == ["raised", "escalated", "deescalated", "cleared"]
    assert changes["previous_severity"].tolist() == [None, "yellow", "red", "orange"]
    assert len(ch.changes) == len(SCRIPT)


def test_reapplying_the_same_events_changes_nothing():
    book = ledger()
    step(book, SCRIPT)
    before = stored(book)
    again = step(book, SCRIPT)
    assert len(again.alarms) == len(again.log) == len(again.changes) == 0
    assert len(again.skipped) == len(SCRIPT)
    assert set(again.skipped["reason"]) <= {
        "already applied",
        "older than the alarm's last update",
        "no active alarm",
    }
    pd.testing.assert_frame_equal(stored(book), before)


@pytest.mark.parametrize("cut", range(1, len(SCRIPT)))
def test_batches_split_anywhere_give_the_same_alarms_and_log(cut):
    whole = apply_events(empty_alarms(), SCRIPT, context=CONTEXT)
    book = ledger()
    logs = [step(book, SCRIPT.iloc[:cut]).log, step(book, SCRIPT.iloc[cut:]).log]
    expected = whole.alarms.sort_values("alarm_id", ignore_index=True)
    pd.testing.assert_frame_equal(stored(book), expected)
    pd.testing.assert_frame_equal(pd.concat(logs, ignore_index=True), whole.log)
    # a crash recovery re-evaluates from an older checkpoint: overlapping events, no change
    replay = step(book, SCRIPT.iloc[max(cut - 3, 0) :])
    assert len(replay.alarms) == len(replay.log) == 0
    pd.testing.assert_frame_equal(stored(book), expected)


def test_events_apply_in_time_order_whatever_the_frame_order():
    shuffled = SCRIPT.sample(frac=1, random_state=3).reset_index(drop=True)
    a = apply_events(empty_alarms(), shuffled, context=CONTEXT)
    b = apply_events(empty_alarms(), SCRIPT, context=CONTEXT)
    pd.testing.assert_frame_equal(a.alarms, b.alarms)
    pd.testing.assert_frame_equal(a.log, b.log)


def test_raise_while_active_updates_the_active_alarm():
    book = ledger()
    step(book, events(ev(0, "raise", "yellow")))
    ch = step(book, events(ev(10, "raise", "red"), ev(15, "raise", "red"), ev(20, "raise", "blue")))
    assert len(book) == 1
    (row,) = book.values()
    assert row["alarm_id"] == alarm_key("thr", "a", at(0))
    assert (row["severity"], row["max_severity"], row["updated_at"]) == ("blue", "red", at(20))
    assert ch.changes["change"].tolist() == ["escalated", "deescalated"]  # same level: no news
    assert ch.log["action"].tolist() == ["escalate", "raise", "deescalate"]
    assert ch.log["text"].str.startswith("raised again while active").all()


def test_out_of_turn_events_are_skipped_with_a_reason():
    book = ledger()
    step(book, events(ev(0, "raise", "yellow"), ev(10, "escalate", "red", prev="yellow")))
    ch = step(
        book,
        events(
            ev(5, "escalate", "orange", prev="yellow"),  # older than the last update
            ev(10, "deescalate", "blue", prev="red"),  # not later than it either
            ev(3, "clear", None, prev="yellow"),  # a clear before the last update
            ev(1, "escalate", "red", src="b"),  # no alarm at all
            ev(2, "clear", None, src="b"),
        ),
    )
    assert len(ch.alarms) == 0 and len(ch.log) == 0
    reasons = dict(zip(ch.skipped["time"], ch.skipped["reason"], strict=True))
    assert reasons[at(5)] == reasons[at(10)] == reasons[at(3)]
    assert reasons[at(3)] == "older than the alarm's last update"
    assert reasons[at(1)] == reasons[at(2)] == "no active alarm"
    # escalate after a clear applies to nothing; a later clear on a cleared alarm neither
    step(book, events(ev(20, "clear", None, prev="red")))
    ch = step(book, events(ev(25, "escalate", "red"), ev(30, "clear", None)))
    assert len(ch.alarms) == 0 and ch.skipped["reason"].tolist() == ["no active alarm"] * 2


def test_a_clear_at_the_raise_time_applies_and_same_time_clear_and_raise_replay():
    book = ledger()
    step(book, events(ev(0, "raise", "red")))
    # a rule reload clears at the watermark: the time of the very reading that raised it
    ch = step(book, events(ev(0, "clear", None, prev="red")))
    assert ch.changes["change"].tolist() == ["cleared"]
    assert book[alarm_key("thr", "a", at(0))]["status"] == "cleared"
    # a clear and a new raise of the same pair at one time (a reload, then a reading)
    step(book, events(ev(5, "raise", "yellow")))
    batch = events(ev(9, "clear", None, prev="yellow"), ev(9, "raise", "orange"))
    ch = step(book, batch)
    assert ch.changes["change"].tolist() == ["cleared", "raised"]
    assert book[alarm_key("thr", "a", at(5))]["status"] == "cleared"
    assert book[alarm_key("thr", "a", at(9))]["status"] == "active"
    replay = step(book, batch)
    assert len(replay.alarms) == 0
    assert replay.skipped["reason"].tolist() == ["clears the alarm before", "already applied"]
    assert book[alarm_key("thr", "a", at(9))]["status"] == "active"


def test_acknowledgement_survives_escalation_and_max_severity_tracks_the_peak():
    book = ledger()
    step(book, events(ev(0, "raise", "orange")))
    (row,) = book.values()
    acked, _ = acknowledge(row, "li.wei", at(2))
    book[acked["alarm_id"]] = acked
    ch = step(book, events(ev(4, "escalate", "red"), ev(8, "deescalate", "yellow")))
    final = ch.alarms.iloc[0]
    assert final["acknowledged"] and final["acknowledged_by"] == "li.wei"
    assert final["acknowledged_at"] == at(2)
    assert (final["severity"], final["max_severity"]) == ("yellow", "red")


def test_bad_events_are_refused():
    with pytest.raises(InvalidInput, match="lack column"):
        apply_events(empty_alarms(), events(ev(0, "raise", "red")).drop(columns="source"))
    with pytest.raises(InvalidInput, match="'explode'"):
        apply_events(empty_alarms(), events(ev(0, "explode", "red")))
    with pytest.raises(InvalidInput, match="level None"):
        apply_events(empty_alarms(), events(ev(0, "raise", None)))
    with pytest.raises(InvalidInput, match="no time"):
        apply_events(empty_alarms(), events(ev(0, "raise", "red") | {"time": pd.NaT}))


def test_alarms_from_the_real_engine_survive_re_evaluation_from_a_checkpoint():
    """The rule engine's events, batch by batch; a restart re-evaluates the readings
    committed after the last checkpoint: the alarms come out the same, none twice."""
    rule_set = rules(
        {
            "id": "thr",
            "kind": "threshold",
            "applies_to": {"observed_property": "water_level"},
            "levels": {"blue": 1.0, "yellow": 2.0, "orange": 3.0, "red": 4.0},
            "hysteresis": 0.2,
        }
    )
    cat = catalog(
        {"datastream_id": "a", "observed_property": "water_level"},
        {"datastream_id": "b", "observed_property": "water_level"},
    )
    rng = np.random.default_rng(7)
    minutes = np.arange(120)
    level_a = 2.5 + 2.2 * np.sin(minutes / 6) + rng.normal(0, 0.3, 120)
    level_b = 2.0 + 2.5 * np.sin(minutes / 9 + 1) + rng.normal(0, 0.3, 120)
    rd = readings(
        series("a", [(m, v) for m, v in enumerate(level_a)]),
        series("b", [(m, v) for m, v in enumerate(level_b)]),
    ).sort_values(["phenomenon_time", "datastream_id"], ignore_index=True)
    one = evaluate(rule_set, cat, rd)
    assert len(one.events) > 20  # the walk crosses levels often
    expected = apply_events(empty_alarms(), one.events, context=CONTEXT).alarms

    book, state, checkpoint = ledger(), None, None
    chunks = np.array_split(np.arange(len(rd)), 6)
    for i, chunk in enumerate(chunks):
        out = evaluate(rule_set, cat, rd.iloc[chunk], state)
        step(book, out.events)
        state = out.state
        if i == 2:
            checkpoint = (state, chunk[-1] + 1)
    # crash: restart from the checkpoint, re-evaluating everything committed after it
    state, start = checkpoint
    replayed = evaluate(rule_set, cat, rd.iloc[start:], state)
    ch = step(book, replayed.events)
    assert len(replayed.events) and len(ch.alarms) == 0 and len(ch.log) == 0
    pd.testing.assert_frame_equal(stored(book), expected.sort_values("alarm_id", ignore_index=True))


# -- operator actions ---------------------------------------------------------------------------
def active_alarm() -> dict:
    ch = apply_events(empty_alarms(), events(ev(0, "raise", "orange")), context=CONTEXT)
    return ch.alarms.to_dict("records")[0]


def test_acknowledge_then_refuse_a_second_acknowledgement():
    row, log = acknowledge(pd.Series(active_alarm()), " duty.officer ", "2024-06-03T00:07:00Z")
    assert row["acknowledged"] and row["acknowledged_by"] == "duty.officer"
    assert row["acknowledged_at"] == at(7) and row["status"] == "active"
    assert log["action"] == "acknowledge" and log["actor"] == "duty.officer"
    assert (log["at"], log["severity"]) == (at(7), "orange")
    with pytest.raises(InvalidInput, match=r"already acknowledged by duty\.officer"):
        acknowledge(row, "someone", at(8))
    ch = operator_changes(row, log)
    assert ch.changes["change"].tolist() == ["acknowledged"]
    assert ch.alarms["acknowledged"].tolist() == [True]


def test_manual_clear_and_what_the_engine_does_after_it():
    alarm = active_alarm()
    row, log = clear(alarm, "ops", at(3), comment="false alarm: sensor washed")
    assert row["status"] == "cleared" and row["cleared_at"] == at(3)
    assert row["updated_at"] == at(0)  # the engine's time is kept
    assert log["text"] == "false alarm: sensor washed" and log["action"] == "clear"
    with pytest.raises(InvalidInput, match="only active alarms"):
        clear(row, "ops", at(4))
    assert operator_changes(row, log).changes["change"].tolist() == ["cleared"]
    book = {row["alarm_id"]: row}
    ch = step(book, events(ev(5, "escalate", "red"), ev(9, "clear", None)))
    assert len(ch.alarms) == 0  # the condition goes on, the alarm stays cleared
    ch = step(book, events(ev(12, "raise", "yellow")))  # the engine's next raise: a new one
    assert ch.changes["change"].tolist() == ["raised"] and len(book) == 2


def test_assign_and_comment():
    alarm = active_alarm()
    row, log = assign(alarm, "zhang.san", "ops", at(1))
    assert row["assignee"] == "zhang.san" and log["text"] == "assigned to zhang.san"
    with pytest.raises(InvalidInput, match="already"):
        assign(row, "zhang.san", "ops", at(2))
    row2, log2 = assign(row, None, "ops", at(2))
    assert row2["assignee"] is None and log2["text"] == "unassigned"
    with pytest.raises(InvalidInput, match="assignee is empty"):
        assign(row, "  ", "ops", at(2))
    same, note = comment(row, "ops", at(3), "  crew on the way ")
    assert typed_frame("alarms", [same]).equals(typed_frame("alarms", [row]))  # unchanged
    assert note["text"] == "crew on the way" and note["action"] == "comment"
    with pytest.raises(InvalidInput, match="comment is empty"):
        comment(row, "ops", at(3), "   ")
    with pytest.raises(InvalidInput, match="who did it"):
        comment(row, "", at(3), "x")
    with pytest.raises(InvalidInput, match="needs a time"):
        comment(row, "ops", None, "x")
    with pytest.raises(InvalidInput, match="no alarm_id"):
        comment({"status": "active"}, "ops", at(3), "x")
    assert len(operator_changes(same, note).changes) == 0


# -- escalation ---------------------------------------------------------------------------------
def test_unacknowledged_alarms_escalate_on_time_and_repeat():
    ch = apply_events(
        empty_alarms(),
        events(
            ev(0, "raise", "red"),
            ev(0, "raise", "yellow", src="b"),
            ev(0, "raise", "blue", src="c"),
        ),
        context=CONTEXT,
    )
    alarms = ch.alarms
    policy = EscalationPolicy()  # red 5, orange 15, yellow 30, blue never, repeat 30
    assert len(due_escalations(alarms, at(4.9), policy).alarms) == 0
    first = due_escalations(alarms, at(5), policy)
    assert first.alarms["source"].tolist() == ["a"]
    row = first.alarms.iloc[0]
    assert (row["escalations"], row["escalated_at"]) == (1, at(5))
    assert first.changes["change"].tolist() == ["escalation"]
    assert first.log["actor"].tolist() == ["escalation"]
    assert first.log["action"].tolist() == ["escalation"]
    assert "unacknowledged 5 min" in first.log["text"].iloc[0]
    alarms = pd.concat([first.alarms, alarms[alarms.source != "a"]], ignore_index=True)
    later = due_escalations(alarms, at(34), policy)  # a again only after the repeat (35)
    assert later.alarms["source"].tolist() == ["b"]
    alarms = pd.concat([first.alarms, later.alarms, alarms[alarms.source == "c"]])
    again = due_escalations(alarms, at(35), policy)
    assert again.alarms["source"].tolist() == ["a"] and again.alarms["escalations"].iloc[0] == 2
    # acknowledged, cleared and "never" alarms are not escalated; repeat None: once only
    a = first.alarms.to_dict("records")[0]
    acked, _ = acknowledge(a, "ops", at(6))
    cleared, _ = clear(a, "ops", at(6))
    assert len(due_escalations(typed_frame("alarms", [acked, cleared]), at(99), policy).alarms) == 0
    once = EscalationPolicy(red=5, repeat=None)
    assert len(due_escalations(first.alarms, at(999), once).alarms) == 0
    assert len(due_escalations(alarms[alarms.source == "c"], at(9999), policy).alarms) == 0


def test_escalation_policy_parsing():
    p = parse_escalation_policy({"red": 2, "orange": "10min", "blue": "1h", "repeat": None})
    assert p.after("red") == pd.Timedelta(minutes=2)
    assert p.after("orange") == pd.Timedelta(minutes=10)
    assert p.after("blue") == pd.Timedelta(hours=1)
    assert p.after("yellow") == pd.Timedelta(minutes=30)  # the default's
    assert p.repeat is None and p.after(None) is None
    assert parse_escalation_policy(None) == EscalationPolicy()
    assert parse_escalation_policy({"yellow": None}).after("yellow") is None
    for bad, match in (
        ({"purple": 5}, "unknown escalation setting 'purple'"),
        ({"red": 0}, "not a positive duration"),
        ({"red": -3}, "not a positive duration"),
        ({"red": "soon"}, "not a positive duration"),
        ({"repeat": float("inf")}, "not a positive duration"),
        ([("red", 5)], "must be a mapping"),
    ):
        with pytest.raises(InvalidInput, match=match):
            parse_escalation_policy(bad)


# -- notifications ------------------------------------------------------------------------------
HOOKS = {
    "webhooks": [
        {"name": "all", "url": "http://127.0.0.1:9000/hook", "secret": "s1", "events": ["*"]},
        {
            "name": "duty",
            "url": "https://duty.example.com/citytwin",
            "secret": "s2",
            "events": ["alarm.raised", "alarm.escalated"],
            "min_severity": "orange",
        },
        {"name": "gone", "url": "https://x.example.com", "secret": "s3", "enabled": False},
    ]
}


def test_outbox_rows_follow_each_webhooks_events_and_severity():
    hooks = parse_webhooks(HOOKS)
    assert [h.name for h in hooks] == ["all", "duty", "gone"]
    ch = apply_events(
        empty_alarms(),
        events(
            ev(0, "raise", "yellow"),
            ev(5, "escalate", "red", prev="yellow"),
            ev(9, "clear", None, prev="red"),
            ev(1, "raise", "orange", src="b"),
        ),
        context=CONTEXT,
    )
    out = notification_rows(ch.changes, ch.alarms, hooks, created_at=at(10))
    assert tuple(out.columns) == OUTBOX_COLUMNS
    got = sorted(zip(out["target"], out["event"], strict=True))
    assert got == sorted(
        [
            *[("all", "alarm.raised"), ("all", "alarm.escalated"), ("all", "alarm.cleared")],
            *[("all", "alarm.raised"), ("duty", "alarm.escalated"), ("duty", "alarm.raised")],
        ]
    )
    assert (out["status"] == "pending").all() and (out["attempts"] == 0).all()
    assert (out["next_attempt_at"] == at(10)).all() and out["id"].isna().all()
    assert set(out["url"]) == {"http://127.0.0.1:9000/hook", "https://duty.example.com/citytwin"}
    escalated = json.loads(
        out[(out.target == "duty") & (out.event == "alarm.escalated")].payload.iloc[0]
    )
    assert escalated["event"] == "alarm.escalated" and escalated["at"] == "2024-06-03T00:05:00Z"
    assert (escalated["severity"], escalated["previous_severity"]) == ("red", "yellow")
    alarm = escalated["alarm"]
    assert set(alarm) == set(ALARM_COLUMNS)
    assert alarm["alarm_id"] == alarm_key("thr", "a", at(0))
    assert alarm["raised_at"] == "2024-06-03T00:00:00Z" and alarm["acknowledged_at"] is None
    assert alarm["x"] == 10.0 and alarm["escalations"] == 0 and alarm["acknowledged"] is False
    # the webhooks document itself works too; no webhooks, no rows
    assert len(notification_rows(ch.changes, ch.alarms, HOOKS, created_at=at(10))) == len(out)
    assert len(notification_rows(ch.changes, ch.alarms, None, created_at=at(10))) == 0
    with pytest.raises(InvalidInput, match="not among the alarms given"):
        notification_rows(ch.changes, ch.alarms.iloc[:0], hooks, created_at=at(10))


def test_outbox_rows_for_any_message_and_family_wildcards():
    hooks = parse_webhooks(
        {"webhooks": [{"name": "inc", "url": "https://h.example", "secret": "k",
                       "events": ["incident.*"], "min_severity": "yellow"}]}
    )  # fmt: skip
    rows = outbox_rows(
        [
            (
                "incident.opened",
                "red",
                {"incident": {"opened_at": at(1), "score": np.float32(0.5)}},
            ),
            ("incident.closed", "blue", {}),
            ("alarm.raised", "red", {}),
        ],
        hooks,
        created_at=at(2),
    )
    assert rows["event"].tolist() == ["incident.opened"]
    body = json.loads(rows["payload"].iloc[0])
    assert body == {"incident": {"opened_at": "2024-06-03T00:01:00Z", "score": 0.5}}
    with pytest.raises(InvalidInput, match="unknown notification event"):
        outbox_rows([("alarm.exploded", "red", {})], hooks, created_at=at(2))


def test_outbox_rows_for_incident_changes():
    hooks = parse_webhooks(HOOKS)
    incidents = typed_frame(
        "incidents",
        [
            {"incident_id": "INC-1", "kind": "surcharge", "status": "open", "severity": "red",
             "opened_at": at(0), "updated_at": at(3), "alarm_ids": ["AL-1", "AL-2"]},
            {"incident_id": "INC-2", "kind": "place", "status": "closed", "severity": "blue",
             "opened_at": at(1), "updated_at": at(4), "closed_at": at(4)},
        ],
    )  # fmt: skip
    changes = pd.DataFrame(
        {"incident_id": ["INC-1", "INC-2"], "change": ["opened", "closed"], "at": [at(3), at(4)]}
    )
    rows = incident_notification_rows(changes, incidents, hooks, created_at=at(5))
    assert sorted(zip(rows["target"], rows["event"], strict=True)) == [
        ("all", "incident.closed"),
        ("all", "incident.opened"),
    ]  # duty takes alarm events only
    body = json.loads(rows[rows.event == "incident.opened"].payload.iloc[0])
    assert body["at"] == "2024-06-03T00:03:00Z" and body["incident"]["alarm_ids"] == [
        "AL-1",
        "AL-2",
    ]
    assert body["incident"]["closed_at"] is None and body["incident"]["severity"] == "red"
    with pytest.raises(InvalidInput, match="unknown incident change"):
        incident_notification_rows(
            changes.assign(change="merged"), incidents, hooks, created_at=at(5)
        )
    with pytest.raises(InvalidInput, match="not among the incidents"):
        incident_notification_rows(changes, incidents.iloc[:1], hooks, created_at=at(5))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"url": "https://a.example", "secret": "k"}, "has no name"),
        ({"name": "w", "url": "ftp://a.example", "secret": "k"}, "not an http"),
        ({"name": "w", "url": "https://", "secret": "k"}, "not an http"),
        ({"name": "w", "url": "https://a.example", "secret": ""}, "secret is missing"),
        ({"name": "w", "url": "https://a.example", "secret": "k", "events": ["alarm.boom"]},
         "unknown event 'alarm.boom'"),
        ({"name": "w", "url": "https://a.example", "secret": "k", "events": []}, "list of event"),
        ({"name": "w", "url": "https://a.example", "secret": "k", "min_severity": "purple"},
         "not a level"),
        ({"name": "w", "url": "https://a.example", "secret": "k", "retries": 3},
         "unknown webhook setting"),
    ],
)  # fmt: skip
def test_webhook_documents_are_checked(entry, match):
    with pytest.raises(InvalidInput, match=match):
        parse_webhooks({"webhooks": [entry]})


def test_webhook_document_shape_and_duplicate_names():
    assert parse_webhooks(None) == ()
    with pytest.raises(InvalidInput, match="must be"):
        parse_webhooks({"hooks": []})
    same = {"name": "w", "url": "https://a.example", "secret": "k"}
    with pytest.raises(InvalidInput, match="two webhooks have this name") as err:
        parse_webhooks({"webhooks": [same, same]})
    assert err.value.source == "notify/webhooks" and err.value.feature == "w"


# -- predicted alarms ---------------------------------------------------------------------------
def test_predicted_alarms_keep_their_lead_time_scenario_and_place():
    from citytwin.warning.engine import evaluate_predictions

    rs = rules(
        {"id": "cellars", "kind": "predicted", "applies_to": "basement",
         "levels": {"orange": 0.15, "red": 0.5}, "within": "2h"}
    )  # fmt: skip

    def forecast(minute: float, depth: float, onset: float | None, sid: str, book: dict):
        table = pd.DataFrame(
            {"asset_id": ["B-1"], "asset_kind": ["basement"], "value": [depth],
             "onset": [pd.NaT if onset is None else at(onset)], "x": [5.0], "y": [6.0]}
        )  # fmt: skip
        active = stored(book)
        active = active[active["status"] == "active"].rename(columns={"severity": "level"})
        ev = evaluate_predictions(rs, table, at(minute), active=active, scenario_id=sid)
        return step(book, ev)

    book = ledger()
    ch = forecast(0, 0.3, 40, "fc-1", book)
    a = ch.alarms.iloc[0]
    assert (a["kind"], a["severity"], a["status"]) == ("predicted", "orange", "active")
    assert (a["scenario_id"], a["lead_time_s"], a["x"], a["y"]) == ("fc-1", 2400.0, 5.0, 6.0)
    assert a["datastream_id"] is None and a["asset_id"] == "B-1" and a["raised_at"] == at(0)
    assert ch.changes["change"].tolist() == ["raised"]
    # the next forecast confirms it, nearer: the same alarm, its lead time and scenario updated
    ch = forecast(10, 0.35, 40, "fc-2", book)
    a = ch.alarms.iloc[0]
    assert a["alarm_id"] == alarm_key("cellars", "B-1", at(0)) and len(book) == 1
    assert (a["scenario_id"], a["lead_time_s"], a["value"]) == ("fc-2", 1800.0, 0.35)
    assert ch.log["text"].iloc[0].startswith("raised again while active")
    assert ch.changes.empty  # no change of level: nobody is notified again
    # deeper: escalated
    ch = forecast(20, 0.6, 30, "fc-3", book)
    assert ch.changes["change"].tolist() == ["escalated"]
    assert ch.alarms.iloc[0]["severity"] == "red" and ch.alarms.iloc[0]["lead_time_s"] == 600.0
    # the same forecast again changes nothing
    assert forecast(20, 0.6, 30, "fc-3", book).alarms.empty
    # dry: cleared, by the forecast that said so
    ch = forecast(30, 0.0, None, "fc-4", book)
    a = ch.alarms.iloc[0]
    assert ch.changes["change"].tolist() == ["cleared"] and a["status"] == "cleared"
    assert a["cleared_at"] == at(30) and a["scenario_id"] == "fc-4" and a["max_severity"] == "red"
    assert "no longer predicted" in a["message"]

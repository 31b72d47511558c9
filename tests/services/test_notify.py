"""Notifications against real HTTP: a receiver on a local port verifies every signature; the
outbox lives in a real twin file; the event stream is read as a client reads it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from citytwin.errors import InvalidInput
from citytwin.services.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Backoff,
    Dispatcher,
    Escalator,
    EventHub,
    load_webhooks,
    save_webhooks,
    sign,
    sse_response,
    verify,
)
from citytwin.store import open_store
from citytwin.warning.alarms import (
    EscalationPolicy,
    acknowledge,
    apply_events,
    notification_rows,
    operator_changes,
    parse_webhooks,
)
from citytwin.warning.engine import EVENT_COLUMNS

SECRETS = {"/ops": "ops-secret-0123456789", "/gis": "gis-secret-abcdef", "/down": "down-secret"}


# -- a real webhook receiver ------------------------------------------------------------------
class Receiver:
    """An HTTP server on a free local port that checks each request's signature with
    ``verify`` (401 when it is wrong) and can be told to fail or to stall per path."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.requests: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}  # path -> how many more requests get a 500
        self.status: dict[str, tuple[int, dict[str, str]]] = {}  # path -> fixed answer
        self.stall: dict[str, float] = {}  # path -> seconds before answering
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path
                ok = verify(
                    receiver.secrets.get(path, ""),
                    self.headers.get(TIMESTAMP_HEADER),
                    body,
                    self.headers.get(SIGNATURE_HEADER),
                )
                with receiver.lock:
                    failing = receiver.fail.get(path, 0) > 0
                    if failing:
                        receiver.fail[path] -= 1
                    fixed = receiver.status.get(path)
                    receiver.requests.append(
                        {
                            "path": path,
                            "event": self.headers.get(EVENT_HEADER),
                            "delivery": int(self.headers.get(DELIVERY_HEADER)),
                            "verified": ok,
                            "body": json.loads(body),
                            "at": time.monotonic(),
                        }
                    )
                time.sleep(receiver.stall.get(path, 0.0))
                code, headers = (500, {}) if failing else fixed or ((204, {}) if ok else (401, {}))
                try:
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up waiting
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def hooks(self, **min_severity: str) -> list:
        doc = {
            "webhooks": [
                {
                    "name": path.strip("/"),
                    "url": self.url(path),
                    "secret": secret,
                    "min_severity": min_severity.get(path.strip("/"), "blue"),
                }
                for path, secret in self.secrets.items()
            ]
        }
        return list(parse_webhooks(doc))

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(SECRETS)
    yield r
    r.close()


@pytest.fixture
def store(make_twin):
    return make_twin()


T0 = pd.Timestamp.now(tz="UTC").floor("s")


def _events(source: str, steps: list[tuple[int, str, str | None]]) -> pd.DataFrame:
    """Rule-engine events of one source: (second after T0, event, level)."""
    rows = []
    previous = None
    for sec, event, level in steps:
        rows.append(
            {
                "time": T0 + pd.Timedelta(seconds=sec),
                "rule_id": "manhole-level",
                "kind": "threshold",
                "event": event,
                "source": source,
                "level": level,
                "previous_level": previous,
                "value": 1.0 + sec,
                "signal": 1.0 + sec,
                "datastream_id": source,
                "asset_id": source.split(":")[0],
                "message": f"{event} {level}",
            }
        )
        previous = level
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))


def _enqueue(store, hooks, *sources: tuple[str, list]) -> pd.DataFrame:
    """Apply engine events and enqueue their notifications in one transaction, as the
    ingestor does; the alarm changes."""
    events = pd.concat([_events(s, steps) for s, steps in sources], ignore_index=True)
    ch = apply_events(store.alarms_for(events[["rule_id", "source"]]), events)
    with store.transaction():
        store.save_alarms(ch.alarms, ch.log)
        store.enqueue(notification_rows(ch.changes, ch.alarms, hooks, created_at=T0))
    return ch


def _outbox(store) -> pd.DataFrame:
    return store.notifications(limit=100_000).sort_values("id").reset_index(drop=True)


RAISE_ESC_CLEAR = [(0, "raise", "yellow"), (60, "escalate", "red"), (120, "clear", None)]


# -- signing ----------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_of_timestamp_dot_body_and_verify_checks_it():
    secret, ts = "s3cr3t-key", "1760000000"
    body = '{"event":"alarm.raised","text":"水位 ↑\\n"}'.encode() + b"\x00\xff"
    sig = sign(secret, ts, body)
    # an independent implementation (OpenSSL) over the same bytes
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret, "-r"],
        input=ts.encode() + b"." + body,
        capture_output=True,
        check=True,
    )
    assert sig == "sha256=" + out.stdout.split()[0].decode()

    now = int(ts)
    assert verify(secret, ts, body, sig, now=now)
    assert verify(secret, ts, body, sig, now=now + 300)  # at the edge of the tolerance
    assert verify(secret, ts, body, sig, now=pd.Timestamp(now, unit="s", tz="UTC"))
    assert not verify(secret, ts, body, sig, now=now + 301)  # stale: a replay
    assert not verify(secret, ts, body, sig, now=now - 301)  # from the future
    assert not verify(secret, ts, body + b" ", sig, now=now)  # body changed
    assert not verify("other", ts, body, sig, now=now)  # other secret
    assert not verify(secret, str(now + 1), body, sig, now=now)  # timestamp changed
    assert not verify(secret, ts, body, sig.removeprefix("sha256="), now=now)
    assert not verify(secret, "1760000000.5", body, sig, now=now)
    assert not verify(secret, None, body, sig, now=now)
    assert not verify(secret, ts, body, "sha256=é" + sig[8:], now=now)
    assert not verify(secret, ts, body, None, now=now)


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap():
    exact = Backoff(jitter=0)
    assert [exact(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    jittered = Backoff(seed=7)
    delays = [jittered(n) for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        assert 0.75 * 2 ** (n - 1) <= d <= 2 ** (n - 1)
    assert delays == sorted(delays)
    assert len({round(d / 2 ** (n - 1), 6) for n, d in enumerate(delays, 1)}) > 1
    with pytest.raises(InvalidInput, match="backoff"):
        Backoff(base_s=0)
    with pytest.raises(InvalidInput, match="backoff"):
        Backoff(jitter=1.5)


# -- delivery ---------------------------------------------------------------------------------
def test_delivers_signed_notifications_to_each_subscriber_in_order(store, receiver):
    hooks = receiver.hooks(gis="orange")
    _enqueue(store, hooks, ("DS-1:level", RAISE_ESC_CLEAR), ("DS-2:level", [(30, "raise", "red")]))
    outbox = _outbox(store)
    # ops takes everything, gis from orange up (not the yellow raise); down takes everything
    assert (outbox["target"] == "ops").sum() == 4
    assert (outbox["target"] == "gis").sum() == 3
    d = Dispatcher(store, hooks, timeout_s=2)
    try:
        assert d.run_once(T0) == 4 + 3 + 4
        assert d.run_once(T0 + pd.Timedelta(hours=1)) == 0  # nothing twice
    finally:
        d.stop()
    assert all(r["verified"] for r in receiver.requests)
    for path, n in (("/ops", 4), ("/gis", 3), ("/down", 4)):
        got = receiver.on(path)
        assert len(got) == n
        ids = [r["delivery"] for r in got]
        assert ids == sorted(ids)  # in outbox order per target
    ops = receiver.on("/ops")
    first = [r["event"] for r in ops if r["body"]["alarm"]["source"] == "DS-1:level"]
    assert first == ["alarm.raised", "alarm.escalated", "alarm.cleared"]
    assert [r["body"]["event"] for r in ops] == [r["event"] for r in ops]
    gis = {(r["body"]["alarm"]["source"], r["event"]) for r in receiver.on("/gis")}
    assert gis == {
        ("DS-1:level", "alarm.escalated"),
        ("DS-1:level", "alarm.cleared"),
        ("DS-2:level", "alarm.raised"),
    }
    outbox = _outbox(store)
    assert (outbox["status"] == "delivered").all()
    assert (outbox["attempts"] == 1).all()
    assert outbox["delivered_at"].notna().all()
    log = store.deliveries()
    assert len(log) == 11
    assert (log["status_code"] == 204).all() and log["error"].isna().all()
    assert (log["ms"] > 0).all()


def test_failed_deliveries_back_off_then_die(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name == "down"]
    receiver.status["/down"] = (500, {})
    _enqueue(store, hooks, ("DS-1:level", [(0, "raise", "red")]))
    d = Dispatcher(store, hooks, max_attempts=5, backoff=Backoff(seed=3), timeout_s=2)
    t, delays = T0, []
    try:
        for attempt in range(1, 6):
            assert d.run_once(t) == 0
            row = _outbox(store).iloc[0]
            assert row["attempts"] == attempt
            assert row["last_error"].startswith("HTTP 500")
            if attempt == 5:
                break
            assert row["status"] == "pending"
            due = row["next_attempt_at"]
            delays.append((due - t).total_seconds())
            # not due yet: nothing is sent
            assert d.run_once(due - pd.Timedelta(milliseconds=1)) == 0
            assert len(receiver.on("/down")) == attempt
            t = due
    finally:
        d.stop()
    assert delays == sorted(delays) and len(set(delays)) == 4
    for n, s in enumerate(delays, start=1):
        assert 0.75 * 2 ** (n - 1) - 1e-6 <= s <= 2 ** (n - 1) + 1e-6
    row = _outbox(store).iloc[0]
    assert row["status"] == "dead" and row["attempts"] == 5
    assert pd.isna(row["delivered_at"])
    log = store.deliveries(int(row["id"]))
    assert list(log["status_code"]) == [500] * 5
    assert len(receiver.on("/down")) == 5
    assert all(r["verified"] for r in receiver.on("/down"))
    assert {r["delivery"] for r in receiver.on("/down")} == {int(row["id"])}


def test_recovers_after_errors_and_honours_retry_after(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name in ("ops", "gis")]
    receiver.fail["/ops"] = 2
    receiver.status["/gis"] = (503, {"Retry-After": "120"})
    _enqueue(store, hooks, ("DS-1:level", [(0, "raise", "red")]))
    d = Dispatcher(store, hooks, backoff=Backoff(jitter=0), timeout_s=2)
    try:
        t = T0
        for _ in range(3):
            d.run_once(t)
            t += pd.Timedelta(seconds=10)
    finally:
        d.stop()
    out = _outbox(store).set_index("target")
    assert out.loc["ops", "status"] == "delivered" and out.loc["ops", "attempts"] == 3
    codes = store.deliveries(int(out.loc["ops", "id"]))["status_code"].tolist()
    assert codes == [500, 500, 204]
    # the 503 asked for two minutes: one attempt only, the next not before T0 + 120 s
    assert out.loc["gis", "attempts"] == 1
    assert out.loc["gis", "next_attempt_at"] >= T0 + pd.Timedelta(seconds=120)


def test_wrong_secret_is_refused_by_the_receiver_and_retried(store, receiver):
    doc = {"webhooks": [{"name": "ops", "url": receiver.url("/ops"), "secret": "not-it"}]}
    hooks = list(parse_webhooks(doc))
    _enqueue(store, hooks, ("DS-1:level", [(0, "raise", "red")]))
    d = Dispatcher(store, hooks, timeout_s=2)
    try:
        assert d.run_once(T0) == 0
    finally:
        d.stop()
    (req,) = receiver.on("/ops")
    assert not req["verified"]
    row = _outbox(store).iloc[0]
    assert row["status"] == "pending" and row["last_error"].startswith("HTTP 401")


def test_removed_webhook_dies_at_once_and_document_edits_apply(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name == "ops"]
    _enqueue(store, hooks, ("DS-1:level", [(0, "raise", "red")]))
    d = Dispatcher(store, [], timeout_s=2)  # no webhook named "ops" any more
    try:
        assert d.run_once(T0) == 0
    finally:
        d.stop()
    row = _outbox(store).iloc[0]
    assert row["status"] == "dead" and "'ops' no longer exists" in row["last_error"]
    assert receiver.requests == []
    # webhooks=None: the dispatcher reads the twin's notify/webhooks document
    doc = {"webhooks": [{"name": "ops", "url": receiver.url("/ops"), "secret": SECRETS["/ops"]}]}
    save_webhooks(store, doc)
    assert [h.name for h in load_webhooks(store)] == ["ops"]
    _enqueue(store, hooks, ("DS-2:level", [(0, "raise", "red")]))
    d = Dispatcher(store, timeout_s=2)
    try:
        assert d.run_once(T0) == 1
    finally:
        d.stop()
    assert receiver.on("/ops")[0]["body"]["alarm"]["source"] == "DS-2:level"
    with pytest.raises(InvalidInput, match="url"):
        save_webhooks(store, {"webhooks": [{"name": "x", "url": "ftp://x", "secret": "s"}]})
    assert [h.name for h in load_webhooks(store)] == ["ops"]  # a bad document is not stored


def test_an_alarms_notifications_stay_in_order_behind_a_retry(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name == "ops"]
    receiver.fail["/ops"] = 1  # the first request (DS-1's raise) fails
    _enqueue(store, hooks, ("DS-1:level", RAISE_ESC_CLEAR), ("DS-2:level", [(30, "raise", "red")]))
    d = Dispatcher(store, hooks, timeout_s=2)
    try:
        assert d.run_once(T0) == 1  # DS-2's raise: another alarm goes on
        sent = [(r["body"]["alarm"]["source"], r["event"]) for r in receiver.on("/ops")]
        assert sent == [("DS-1:level", "alarm.raised"), ("DS-2:level", "alarm.raised")]
        # DS-1's escalate and clear are due but wait behind its raise
        assert d.run_once(T0 + pd.Timedelta(milliseconds=500)) == 0
        head = _outbox(store).iloc[0]
        assert head["attempts"] == 1 and head["status"] == "pending"
        assert d.run_once(head["next_attempt_at"]) == 3
    finally:
        d.stop()
    ds1 = [r["event"] for r in receiver.on("/ops") if r["body"]["alarm"]["source"] == "DS-1:level"]
    assert ds1 == ["alarm.raised", "alarm.raised", "alarm.escalated", "alarm.cleared"]


def test_a_restart_delivers_what_was_pending_in_order(make_twin, receiver):
    store = make_twin()
    path = store.path
    hooks = [h for h in receiver.hooks() if h.name == "ops"]
    receiver.fail["/ops"] = 1
    _enqueue(store, hooks, ("DS-1:level", RAISE_ESC_CLEAR))
    d = Dispatcher(store, hooks, timeout_s=2)
    assert d.run_once(T0) == 0  # the raise failed; escalate and clear wait behind it
    d.stop()
    due = _outbox(store).iloc[0]["next_attempt_at"]
    store.close()

    store = open_store(path)
    try:
        d = Dispatcher(store, hooks, timeout_s=2)
        # a new dispatcher knows the raise is waiting for its retry: nothing overtakes it
        assert d.run_once(due - pd.Timedelta(milliseconds=100)) == 0
        d.stop()
        # and one running in its thread delivers everything once due
        d = Dispatcher(store, hooks, timeout_s=2, clock=lambda: due, poll_s=30).start()
        deadline = time.monotonic() + 5
        while len(receiver.on("/ops")) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        d.stop()
        assert [r["event"] for r in receiver.on("/ops")] == [
            "alarm.raised",
            "alarm.raised",
            "alarm.escalated",
            "alarm.cleared",
        ]
        assert (_outbox(store)["status"] == "delivered").all()
    finally:
        store.close()


def test_a_slow_target_delays_only_itself(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name in ("ops", "gis")]
    receiver.stall["/gis"] = 1.5
    three = [(f"DS-{i}:level", [(i, "raise", "red")]) for i in range(3)]
    _enqueue(store, hooks, *three)
    d = Dispatcher(store, hooks, timeout_s=0.3)
    try:
        start = time.monotonic()
        assert d.run_once(T0) == 3  # ops
        took = time.monotonic() - start
    finally:
        d.stop()
    # ops was served while gis stalled; gis' lane stopped at its first timeout
    assert max(r["at"] for r in receiver.on("/ops")) - start < 0.25
    assert took < 1.0
    gis = _outbox(store).query("target == 'gis'")
    assert gis["attempts"].tolist() == [1, 0, 0]
    assert "timed out" in gis.iloc[0]["last_error"]
    assert (gis["status"] == "pending").all()

    # in the thread: new rows for ops go out at once while gis' lane waits for its answer
    receiver.stall["/gis"] = 1.5
    d = Dispatcher(store, hooks, timeout_s=1.2, poll_s=30).start()
    try:
        deadline = time.monotonic() + 2
        while len(receiver.on("/gis")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(receiver.on("/gis")) == 2  # gis' second attempt is under way
        before = len(receiver.on("/ops"))
        _enqueue(store, hooks, ("DS-9:level", [(0, "raise", "red")]))
        woke = time.monotonic()
        d.wake()
        while len(receiver.on("/ops")) == before and time.monotonic() < woke + 2:
            time.sleep(0.01)
        assert len(receiver.on("/ops")) == before + 1
        assert receiver.on("/ops")[-1]["at"] - woke < 0.5
        assert len(store.deliveries(int(gis.iloc[0]["id"]))) == 1  # gis still waiting
    finally:
        d.stop()
    assert len(store.deliveries(int(gis.iloc[0]["id"]))) == 2


# -- escalation -------------------------------------------------------------------------------
def test_escalator_escalates_unacknowledged_alarms_and_notifies(store, receiver):
    hooks = [h for h in receiver.hooks() if h.name == "ops"]
    ch = _enqueue(
        store, hooks, ("DS-1:level", [(0, "raise", "red")]), ("DS-2:level", [(0, "raise", "red")])
    )
    acked = ch.alarms[ch.alarms["source"] == "DS-2:level"].iloc[0]
    row, log_row = acknowledge(acked, "li.wei", T0 + pd.Timedelta(minutes=1))
    ack = operator_changes(row, log_row)
    store.save_alarms(ack.alarms, ack.log)
    hub = EventHub()
    d = Dispatcher(store, hooks, timeout_s=2)
    esc = Escalator(store, EscalationPolicy(red=5, repeat=10), hub, dispatcher=d, webhooks=hooks)
    try:
        assert esc.run_once(T0 + pd.Timedelta(minutes=4)).empty
        done = esc.run_once(T0 + pd.Timedelta(minutes=6))
        assert done.changes["change"].tolist() == ["escalation"]
        assert d.run_once(T0 + pd.Timedelta(minutes=6)) == 3  # two raises + the escalation
        assert esc.run_once(T0 + pd.Timedelta(minutes=10)).empty  # repeats after 10 min
        assert len(esc.run_once(T0 + pd.Timedelta(minutes=16)).changes) == 1
    finally:
        d.stop()
    alarm = store.alarm(done.alarms.iloc[0]["alarm_id"])
    assert alarm["source"] == "DS-1:level" and alarm["escalations"] == 2
    assert list(store.alarm_log(alarm["alarm_id"])["action"]) == [
        "raise",
        "escalation",
        "escalation",
    ]
    assert store.alarm(acked["alarm_id"])["escalations"] == 0
    last = receiver.on("/ops")[-1]
    assert last["event"] == "alarm.escalation" and last["verified"]
    assert last["body"]["alarm"]["escalations"] == 1
    # the console's stream got both escalations (the alarm record as JSON)
    events = asyncio.run(_take(hub.stream(f"{hub.epoch}-0"), 2))
    assert [e["event"] for e in events] == ["alarm.escalation"] * 2
    assert [e["data"]["escalations"] for e in events] == [1, 2]
    assert {e["data"]["alarm_id"] for e in events} == {alarm["alarm_id"]}


# -- event stream -----------------------------------------------------------------------------
def _parse(chunks: list[str]) -> list[dict[str, Any]]:
    """SSE text as events ({id?, event, data}); comments and retry hints left out."""
    out = []
    for block in "".join(chunks).split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if "event" in fields:
            out.append(fields)
    return out


async def _take(stream, n: int, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The next n events of a stream."""
    got: list[dict[str, Any]] = []
    while len(got) < n:
        got += _parse([await asyncio.wait_for(stream.__anext__(), timeout)])
    return got


def test_stream_sends_live_events_and_what_a_reconnecting_client_missed():
    async def main() -> None:
        hub = EventHub(buffer=5)
        early = [hub.publish("alarm.raised", {"n": i}) for i in range(2)]
        live = hub.stream(None)
        assert await live.__anext__() == "retry: 2000\n\n"
        threading.Thread(target=hub.publish, args=("alarm.cleared", {"n": 2})).start()
        (ev,) = await _take(live, 1)
        assert ev["event"] == "alarm.cleared" and ev["data"] == {"n": 2}  # not the earlier two
        assert ev["id"] == hub.last_id

        resumed = await _take(hub.stream(early[0]), 2)
        assert [e["data"]["n"] for e in resumed] == [1, 2]
        assert [int(e["id"].rsplit("-", 1)[1]) for e in resumed] == [2, 3]

        for i in range(3, 10):
            hub.publish("alarm.raised", {"n": i})
        assert [e["data"]["n"] for e in await _take(live, 7)] == list(range(3, 10))
        # the ring keeps 5: an id older than that, from another hub, or garbage -> resync
        for last in (early[0], "1a2b-3", "nonsense"):
            s = hub.stream(last)
            (ev,) = await _take(s, 1)
            assert ev["event"] == "resync" and "id" not in ev
            assert ev["data"]["last_event_id"] == hub.last_id
            hub.publish("alarm.raised", {"n": "after"})
            (ev,) = await _take(s, 1)
            assert ev["data"] == {"n": "after"}
            await s.aclose()
        assert hub.subscribers == 1  # closed streams unsubscribe; `live` is still there
        await live.aclose()
        assert hub.subscribers == 0

    asyncio.run(main())


def test_slow_consumer_is_dropped_with_a_final_event_and_can_resume():
    async def main() -> None:
        hub = EventHub(buffer=100, queue_size=3)
        slow = hub.stream(None)
        await slow.__anext__()  # subscribed
        start = time.perf_counter()
        ids = [hub.publish("alarm.raised", {"n": i}) for i in range(10)]
        assert time.perf_counter() - start < 0.05  # the publisher never waits for it
        assert hub.dropped == 1 and hub.subscribers == 0
        got = await _take(slow, 4)
        assert [e["data"]["n"] for e in got[:3]] == [0, 1, 2]
        assert got[3]["event"] == "dropped" and got[3]["data"]["last_event_id"] == ids[2]
        with pytest.raises(StopAsyncIteration):
            await slow.__anext__()
        # resuming where it was dropped loses nothing
        again = await _take(hub.stream(got[3]["data"]["last_event_id"]), 7)
        assert [e["data"]["n"] for e in again] == list(range(3, 10))

    asyncio.run(main())


def test_stream_heartbeats_and_takes_publishers_on_many_threads():
    async def main() -> None:
        hub = EventHub(queue_size=10_000)
        s = hub.stream(None, heartbeat_s=0.05)
        await s.__anext__()
        assert await asyncio.wait_for(s.__anext__(), 1) == ": heartbeat\n\n"

        def publish(k: int) -> None:
            for i in range(250):
                hub.publish("tick", {"k": k, "i": i})

        threads = [threading.Thread(target=publish, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        got: list[dict[str, Any]] = []
        while len(got) < 1000:
            chunk = await asyncio.wait_for(s.__anext__(), 5)
            got += _parse([chunk])
        for t in threads:
            t.join()
        seqs = [int(e["id"].rsplit("-", 1)[1]) for e in got]
        assert seqs == list(range(1, 1001))
        for k in range(4):
            assert [e["data"]["i"] for e in got if e["data"]["k"] == k] == list(range(250))
        hub.close()
        with pytest.raises(StopAsyncIteration):
            while True:
                await asyncio.wait_for(s.__anext__(), 1)
        hub.publish("late", {"after": "close"})  # a late commit still publishes, to no one
        assert [c async for c in hub.stream(None)] == ["retry: 2000\n\n"]

    asyncio.run(main())


def test_event_names_are_checked():
    hub = EventHub()
    for bad in ("", "a\nb", "x:y", " pad"):
        with pytest.raises(InvalidInput):
            hub.publish(bad, {})


def _app(hub: EventHub) -> FastAPI:
    app = FastAPI()

    @app.get("/v1.1/events")
    async def events(request: Request):
        return sse_response(hub, request, heartbeat_s=0.2)

    return app


def test_sse_over_http_with_a_real_server():
    hub = EventHub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(hub), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/v1.1/events"
    try:
        deadline = time.monotonic() + 5
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        with httpx.Client(timeout=5) as client:
            with client.stream("GET", url) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["cache-control"] == "no-cache"
                lines = r.iter_lines()
                assert next(lines) == "retry: 2000"
                while hub.subscribers == 0:
                    time.sleep(0.01)
                first = hub.publish("alarm.raised", {"alarm_id": "AL-1", "level": "红色预警"})
                hub.publish("alarm.cleared", {"alarm_id": "AL-1"})
                text = []
                for line in lines:
                    text.append(line)
                    if line.startswith("data:") and "event: alarm.cleared" in text:
                        break
            events = _parse(["\n".join(text) + "\n\n"])
            assert [e["event"] for e in events] == ["alarm.raised", "alarm.cleared"]
            assert events[0]["data"]["level"] == "红色预警"
            assert events[0]["id"] == first
            # the client went away: its subscription ends
            deadline = time.monotonic() + 3
            while hub.subscribers and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hub.subscribers == 0
            # reconnecting with Last-Event-ID resumes after it
            with client.stream("GET", url, headers={"Last-Event-ID": first}) as r:
                got = []
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        got.append(line)
                        break
            assert got == ["event: alarm.cleared"]
            # closing the hub ends open streams (so the server can shut down)
            with client.stream("GET", url) as r:
                while hub.subscribers == 0:
                    time.sleep(0.01)
                threading.Timer(0.5, hub.close).start()
                body = "".join(r.iter_text())
            assert ": heartbeat" in body
    finally:
        server.should_exit = True
        thread.join(5)
    assert not thread.is_alive()


def test_sse_response_in_the_test_client_resumes_from_the_query_parameter():
    hub = EventHub()
    first = hub.publish("incident.opened", {"incident_id": "IN-1"})
    hub.publish("incident.updated", {"incident_id": "IN-1"})
    threading.Timer(0.5, hub.close).start()  # the test client reads until the stream ends
    with TestClient(_app(hub)) as client:
        r = client.get("/v1.1/events", params={"lastEventId": first})
    assert r.status_code == 200
    events = _parse([r.text])
    assert [(e["event"], e["data"]["incident_id"]) for e in events] == [
        ("incident.updated", "IN-1")
    ]

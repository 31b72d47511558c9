"""Notifications: signed webhooks delivered from the store's outbox, the console's event stream
(server-sent events) and the ticker that escalates unacknowledged alarms.

Webhooks. Notification rows are written to the store's outbox in the same transaction as the
alarm changes they report (``citytwin.warning.alarms.notification_rows``), so a crash or
restart loses none: a ``Dispatcher`` on the same store delivers whatever is pending, at least
once. Each delivery is an HTTP ``POST`` of the row's JSON payload (for an alarm change
``{"event", "alarm": {...}, "at", "severity", "previous_severity"}``) with the headers

- ``X-CityTwin-Event``: the event (``alarm.raised`` ...),
- ``X-CityTwin-Delivery``: the outbox id (the same on every retry: receivers dedupe on it),
- ``X-CityTwin-Timestamp``: unix seconds when this attempt was sent,
- ``X-CityTwin-Signature``: ``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.

This is the Stripe / GitHub scheme: the receiver recomputes the HMAC over the raw body bytes
with its shared secret, compares in constant time and rejects timestamps more than five minutes
from its clock (``verify``), which stops replays of a captured request.

A 2xx answer delivers a row; any other status, a timeout or a connection error schedules a retry
after an exponential, jittered, capped backoff (``Backoff``: 1 s, 2 s, 4 s ... 5 min) and
after ``max_attempts`` the row is dead (at once when its webhook was removed or disabled).
Every attempt is logged (``store.deliveries``). The notifications of one alarm (or incident)
reach a target in order: while one waits for a retry, the later ones of that alarm for that
target wait behind it until it is delivered or dead; other alarms go on. Targets are served by
a small thread pool, one lane per target, so a slow or unreachable endpoint delays only its own
deliveries (a lane stops at the first timeout or connection error of a round and after
``lane_budget_s``; what it leaves stays due).

Event stream. ``EventHub`` keeps the last events in a ring buffer with increasing ids and fans
them out to ``stream`` consumers (``sse_response`` makes the Starlette response for
``GET /v1.1/events``); a client reconnecting with ``Last-Event-ID`` gets what it missed.

Escalation. ``Escalator`` runs ``citytwin.warning.alarms.due_escalations`` periodically and
saves the escalations with their notifications in one store transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pandas as pd
from starlette.requests import Request
from starlette.responses import StreamingResponse

from citytwin.errors import InvalidInput
from citytwin.store import Store
from citytwin.warning.alarms import (
    WEBHOOKS_DOCUMENT,
    AlarmChanges,
    EscalationPolicy,
    Webhook,
    alarm_messages,
    due_escalations,
    jsonable,
    notification_rows,
    parse_webhooks,
    twin_webhooks,
)

log = logging.getLogger(__name__)

EVENT_HEADER = "X-CityTwin-Event"
DELIVERY_HEADER = "X-CityTwin-Delivery"
TIMESTAMP_HEADER = "X-CityTwin-Timestamp"
SIGNATURE_HEADER = "X-CityTwin-Signature"
SIGNATURE_PREFIX = "sha256="
TOLERANCE_S = 300
"""How far a delivery's timestamp may be from the receiver's clock (Stripe's default)."""
USER_AGENT = "CityTwin-Webhooks/1"


# -- signing ----------------------------------------------------------------------------------
def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``"sha256=" + hex(HMAC-SHA256(secret, timestamp + "." + body))``: the value of
    ``X-CityTwin-Signature`` for a request body sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | dt.datetime | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> bool:
    """Whether ``signature`` (``X-CityTwin-Signature``) signs the raw ``body`` sent at
    ``timestamp`` (``X-CityTwin-Timestamp``) with ``secret``, and the timestamp is within
    ``tolerance_s`` of ``now`` (unix seconds or a datetime; default: this machine's clock).
    Compares in constant time; a malformed timestamp or signature is simply not valid."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if now is None:
        now = time.time()
    elif isinstance(now, dt.datetime):
        now = _utc(now).timestamp()
    if abs(float(now) - sent) > tolerance_s:
        return False
    try:
        given = signature.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode("ascii"), given)


def signed_headers(
    secret: str, event: str, delivery: int | str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The headers of one delivery attempt (``timestamp``: unix seconds, default now)."""
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: str(delivery),
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, ts, body),
    }


# -- subscriptions ----------------------------------------------------------------------------
load_webhooks = twin_webhooks
"""The webhook subscriptions stored in the twin (``notify/webhooks``; none if missing)."""


def save_webhooks(store: Store, document: Mapping[str, Any]) -> tuple[Webhook, ...]:
    """Check and store the webhook subscriptions document (replacing it); the webhooks."""
    hooks = parse_webhooks(document)
    store.put_document(WEBHOOKS_DOCUMENT, dict(document))
    return hooks


def change_events(changes: pd.DataFrame, alarms: pd.DataFrame) -> list[tuple[str, dict]]:
    """(event, alarm record as JSON) per alarm change (``CHANGE_COLUMNS``; ``alarms``: their
    state after the changes, as ``AlarmChanges`` has them): what the console's stream says."""
    if not len(changes):
        return []
    return [(event, payload["alarm"]) for event, _, payload in alarm_messages(changes, alarms)]


# -- delivery ---------------------------------------------------------------------------------
class Backoff:
    """Retry delays: ``base_s * factor**(attempt-1)`` capped at ``cap_s``, less a random
    fraction up to ``jitter`` (so retries of many rows spread out and still grow:
    1 s, 2 s, 4 s ... 5 min by default)."""

    def __init__(
        self,
        base_s: float = 1.0,
        factor: float = 2.0,
        cap_s: float = 300.0,
        jitter: float = 0.25,
        seed: int | None = None,
    ) -> None:
        if base_s <= 0 or factor < 1 or cap_s < base_s or not 0 <= jitter < 1:
            raise InvalidInput(
                f"bad backoff base_s={base_s} factor={factor} cap_s={cap_s} jitter={jitter}",
                hint="0 < base_s <= cap_s, factor >= 1, 0 <= jitter < 1",
            )
        self.base_s, self.factor, self.cap_s, self.jitter = base_s, factor, cap_s, jitter
        self._rng = random.Random(seed)

    def __call__(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failed attempt (1, 2, ...)."""
        exp = min(max(attempt - 1, 0), 64)
        delay = min(self.cap_s, self.base_s * self.factor**exp)
        return delay * (1.0 - self.jitter * self._rng.random())


@dataclass
class Attempt:
    """What one delivery attempt did."""

    outbox_id: int
    target: str
    ok: bool
    dead: bool
    status_code: int | None
    error: str | None
    ms: float
    next_attempt_at: pd.Timestamp | None
    unreachable: bool = False
    at: pd.Timestamp | None = None


class _Ticker:
    """A daemon thread calling ``fn`` every ``interval_s`` seconds, or at once on ``wake``."""

    def __init__(self, name: str, fn: Callable[[], Any], interval_s: float) -> None:
        self.name, self.fn, self.interval_s = name, fn, interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._wake.set()  # a first round at once: deliver what a previous run left pending
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.fn()
            except Exception:
                log.exception("%s: round failed", self.name)
                self._stop.wait(min(self.interval_s, 5.0))


def utc_now() -> pd.Timestamp:
    """The default clock: now, tz-aware UTC."""
    return pd.Timestamp.now(tz="UTC")


class Dispatcher:
    """Delivers the store's outbox to the webhooks, signed, with retries (see the module doc).

    ``webhooks``: the subscriptions (None: read the ``notify/webhooks`` document each round, so
    edits apply without a restart); the secret of a row is that of the webhook named by its
    ``target`` and it is POSTed to the row's ``url``. ``clock`` gives the times recorded in the
    store and used for scheduling (the signature timestamp is always this machine's clock).
    One dispatcher per store: ``start()`` a thread that delivers what is due every ``poll_s``
    seconds and at once on ``wake()`` (call it after a commit that enqueued rows);
    ``run_once(now)`` does one synchronous round (tests, tools)."""

    def __init__(
        self,
        store: Store,
        webhooks: Sequence[Webhook] | None = None,
        *,
        client: httpx.Client | None = None,
        backoff: Callable[[int], float] | None = None,
        max_attempts: int = 8,
        timeout_s: float = 5.0,
        clock: Callable[[], Any] = utc_now,
        batch: int = 100,
        workers: int = 8,
        poll_s: float = 1.0,
        lane_budget_s: float | None = None,
    ) -> None:
        if max_attempts < 1 or timeout_s <= 0 or batch < 1 or workers < 1:
            raise InvalidInput(
                f"bad dispatcher settings max_attempts={max_attempts} timeout_s={timeout_s}"
                f" batch={batch} workers={workers}",
                hint="all must be positive",
            )
        self.store = store
        self.webhooks = None if webhooks is None else list(webhooks)
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.clock = clock
        self.batch = batch
        self.lane_budget_s = 2 * timeout_s if lane_budget_s is None else lane_budget_s
        self._own_client = client is None
        self.client = client
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._halt = False
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # targets whose lane is running
        # (target, subject) -> (outbox id, due): a row waiting for a retry holds back the
        # later rows of its subject to that target
        self._holds: dict[tuple[str, str], tuple[int, pd.Timestamp]] = {}
        self._holds_loaded = False
        self._offered: list[dict[str, Any]] = []  # rows just committed, handed over in memory
        self._finished: deque[int] = deque(maxlen=10_000)  # ids delivered or dead lately
        self._ticker = _Ticker("citytwin-dispatcher", self._round, poll_s)

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> Dispatcher:
        """Deliver in a background thread (first round at once: what a restart left)."""
        self._ticker.start()
        return self

    def wake(self) -> None:
        """Deliver what is due now rather than at the next poll."""
        self._ticker.wake()

    def offer(self, rows: pd.DataFrame) -> None:
        """Outbox rows just committed (with their ids): the next round delivers them without
        waiting for the store (which the ingest's next commit may hold); what it can't take
        now it finds in the store later, as ever."""
        if len(rows):
            with self._lock:
                self._offered.extend(rows.to_dict("records"))
        self._ticker.wake()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread, let running attempts finish, close the own HTTP client."""
        self._halt = True  # running lanes stop after their current attempt
        self._ticker.stop(timeout)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._halt = False
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> Dispatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _round(self) -> None:
        self._dispatch(None, wait=False)

    # -- rounds ---------------------------------------------------------------------------
    def run_once(self, now: Any = None) -> int:
        """Deliver what is due at ``now`` (default: the clock; given, it is the time of every
        attempt of this round) and wait for it; the number of rows delivered."""
        return sum(a.ok for a in self._dispatch(now, wait=True))

    def _dispatch(self, now: Any, *, wait: bool) -> list[Attempt]:
        at = _utc(now) if now is not None else None

        def stamp() -> pd.Timestamp:
            return at if at is not None else _utc(self.clock())

        hooks = {h.name: h for h in self._hooks()}
        lanes = self._plan(stamp())
        futures: list[Future[list[Attempt]]] = []
        with self._lock:
            if lanes and self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="citytwin-webhook")
                if self._own_client and self.client is None:
                    self.client = httpx.Client(
                        timeout=self.timeout_s,
                        follow_redirects=False,
                        headers={"User-Agent": USER_AGENT},
                    )
            pool = self._pool
        for target, rows in lanes.items():
            try:
                futures.append(pool.submit(self._lane, target, rows, hooks.get(target), stamp))
            except RuntimeError:  # stopped meanwhile: the rows stay due
                with self._lock:
                    self._busy.discard(target)
        if not wait:
            return []
        return [a for f in futures for a in f.result()]

    def _hooks(self) -> list[Webhook]:
        return self.webhooks if self.webhooks is not None else load_webhooks(self.store)

    def _plan(self, now: pd.Timestamp) -> dict[str, list[dict[str, Any]]]:
        """The due rows to attempt now, per target in outbox order: not of a busy target, not
        behind a held row of their subject."""
        self._load_holds(now)
        with self._lock:
            offered, self._offered = self._offered, []
            finished = set(self._finished)
        limit = self.batch
        while True:
            if offered:
                rows = pd.DataFrame([r for r in offered if r["id"] not in finished])
                if not len(rows):
                    return {}
            else:
                rows = self.store.due_notifications(now, limit)
            lanes: dict[str, list[dict[str, Any]]] = {}
            heads: set[tuple[str, str | None]] = set()  # held keys whose head is due now
            with self._lock:
                for row in sorted(rows.to_dict("records"), key=lambda r: r["id"]):
                    target = row["target"]
                    if target in self._busy:
                        if offered:  # its lane is running: taken when that lane is done
                            self._offered.append(row)
                        continue
                    row["subject"] = _subject(row["payload"])
                    key = (target, row["subject"])
                    hold = self._holds.get(key)
                    if hold is not None:
                        if hold[0] == row["id"]:
                            heads.add(key)
                        elif key not in heads:
                            continue  # its lane goes on behind the head, or stops there
                    lanes.setdefault(target, []).append(row)
                self._busy.update(lanes)  # taken: no other round runs these targets
            # everything due was held or busy and there may be more: look further
            if offered or lanes or len(rows) < limit or limit >= 64 * self.batch:
                return lanes
            limit *= 4

    def _load_holds(self, now: pd.Timestamp) -> None:
        """After a restart: the rows waiting for a retry hold back their subjects' later rows."""
        if self._holds_loaded:
            return
        pending = self.store.notifications(status="pending", limit=None)
        holds: dict[tuple[str, str], tuple[int, pd.Timestamp]] = {}
        for row in sorted(pending.to_dict("records"), key=lambda r: r["id"]):
            key = (row["target"], _subject(row["payload"]))
            if key[1] is None or key in holds:
                continue
            due = _utc(row["next_attempt_at"])
            holds[key] = (row["id"], due)
        with self._lock:
            self._holds = {k: v for k, v in holds.items() if v[1] > now}
            self._holds_loaded = True

    def _lane(
        self,
        target: str,
        rows: list[dict[str, Any]],
        hook: Webhook | None,
        stamp: Callable[[], pd.Timestamp],
    ) -> list[Attempt]:
        """Attempt one target's rows in order; a failed row holds back its subject's later
        rows; stop early on an unreachable target or when the lane budget is spent (the rest
        stay due for the next round)."""
        done: list[Attempt] = []
        deadline = time.monotonic() + self.lane_budget_s
        held: set[str] = set()
        try:
            for row in rows:
                if self._halt or time.monotonic() > deadline:
                    break
                if row["subject"] is not None and row["subject"] in held:
                    continue
                a = self._attempt(row, hook, stamp)
                done.append(a)
                key = (target, row["subject"])
                with self._lock:
                    if a.ok or a.dead:
                        if self._holds.get(key, (None,))[0] == row["id"]:
                            del self._holds[key]
                    elif row["subject"] is not None:
                        self._holds[key] = (row["id"], a.next_attempt_at)
                if not (a.ok or a.dead) and row["subject"] is not None:
                    held.add(row["subject"])
                if a.unreachable:
                    break
        except Exception:
            log.exception("webhook %s: delivery round failed", target)
            raise
        finally:
            self._record(done)
            with self._lock:
                self._busy.discard(target)
                self._finished.extend(a.outbox_id for a in done if a.ok or a.dead)
                more = bool(self._offered)
            if len(done) < len(rows) or more:
                self._ticker.wake()  # what this lane left (or skipped while busy) is due
        return done

    def _attempt(
        self, row: dict[str, Any], hook: Webhook | None, stamp: Callable[[], pd.Timestamp]
    ) -> Attempt:
        """POST one row; the attempt (recorded with the lane's others by ``_record``)."""
        oid, target = int(row["id"]), row["target"]
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        unreachable = False
        t0 = time.perf_counter()
        if hook is None or not hook.enabled:
            what = "is disabled" if hook is not None else "no longer exists"
            error = f"webhook {target!r} {what} (see the {WEBHOOKS_DOCUMENT} document)"
        else:
            body = row["payload"].encode()
            headers = signed_headers(hook.secret, row["event"], oid, body)
            try:
                r = self.client.post(
                    row["url"], content=body, headers=headers, timeout=self.timeout_s
                )
                status = r.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}" + (f": {r.text[:200]}" if r.text else "")
                    retry_after = _retry_after(r.headers.get("Retry-After"))
            except httpx.TimeoutException as exc:
                error = f"timed out after {self.timeout_s:g} s ({type(exc).__name__})"
                unreachable = True
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
                unreachable = True
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1000.0
        at = stamp()
        ok = error is None
        attempts = int(row["attempts"]) + 1
        dead = not ok and (hook is None or not hook.enabled or attempts >= self.max_attempts)
        next_at = None
        if not ok and not dead:
            delay = self.backoff(attempts)
            if retry_after is not None:
                delay = max(delay, retry_after)
            next_at = at + pd.Timedelta(seconds=delay)
        if dead:
            log.warning(
                "webhook %s: delivery %s dead after %d attempts: %s", target, oid, attempts, error
            )
        return Attempt(oid, target, ok, dead, status, error, ms, next_at, unreachable, at)

    def _record(self, attempts: list[Attempt]) -> None:
        """Log a lane's attempts in one store transaction (after its POSTs, so a delivery never
        waits for the ingest's commit in progress; a crash in between re-sends them: at least
        once, receivers dedupe on the delivery id)."""
        if not attempts:
            return
        with self.store.transaction():
            for a in attempts:
                self.store.record_delivery(
                    a.outbox_id,
                    at=a.at,
                    ok=a.ok,
                    status_code=a.status_code,
                    error=a.error,
                    next_attempt_at=a.next_attempt_at,
                    dead=a.dead,
                    ms=a.ms,
                )


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta seconds only), capped at an hour."""
    if not value:
        return None
    try:
        s = float(value)
    except ValueError:
        return None
    return min(max(s, 0.0), 3600.0) if math.isfinite(s) else None


def _subject(payload: str) -> str | None:
    """What a payload is about (``alarm:<id>`` / ``incident:<id>``, or its ``subject``): the
    deliveries of one subject to one target keep their order. None: no order to keep."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("subject"), str):
        return body["subject"]
    for kind in ("alarm", "incident"):
        record = body.get(kind)
        if isinstance(record, dict) and isinstance(record.get(f"{kind}_id"), str):
            return f"{kind}:{record[f'{kind}_id']}"
    return None


# -- event stream -----------------------------------------------------------------------------
class _Subscriber:
    __slots__ = ("closed", "loop", "overflow", "queue", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready = asyncio.Event()
        self.queue: deque[tuple[int, str, str]] = deque()
        self.overflow = False
        self.closed = False

    def notify(self) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # its event loop is closed: the consumer is gone
            return False
        return True


class EventHub:
    """In-process publish/subscribe for the console's server-sent events.

    ``publish`` (any thread; never blocks on consumers) appends to a ring buffer of the last
    ``buffer`` events, ids ``<epoch>-<n>`` increasing (the epoch tells a restarted hub's ids
    from an old one's), and hands the event to every subscriber's queue. A subscriber whose
    queue holds ``queue_size`` undelivered events is dropped: its stream sends what it has,
    then a final ``dropped`` event, and ends; the client reconnects with ``Last-Event-ID`` and
    resumes from the ring buffer. A client whose ``Last-Event-ID`` is no longer buffered (or is
    from an earlier hub) gets a ``resync`` event: reload the state, then follow live events."""

    def __init__(self, buffer: int = 1000, *, queue_size: int = 1000, retry_ms: int = 2000):
        if buffer < 1 or queue_size < 1:
            raise InvalidInput(f"bad hub sizes buffer={buffer} queue_size={queue_size}")
        self.queue_size = queue_size
        self.retry_ms = retry_ms
        self.epoch = format(time.time_ns() // 1_000_000, "x")
        self._ring: deque[tuple[int, str, str]] = deque(maxlen=buffer)
        self._seq = 0
        self._subs: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        """How many subscribers were dropped for falling behind."""

    @property
    def last_id(self) -> str | None:
        """The id of the latest event (None before the first)."""
        return self._id(self._seq) if self._seq else None

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def _id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    def publish(self, event: str, data: Mapping[str, Any]) -> str:
        """Add an event (name: letters, digits, ``._-``); its id. Thread-safe; after ``close``
        events are still buffered (a late commit), no stream gets them."""
        if not isinstance(event, str) or not _EVENT_NAME.fullmatch(event):
            raise InvalidInput(
                f"bad event name {event!r}", hint="letters, digits, '.', '_', '-': alarm.raised"
            )
        text = orjson.dumps(jsonable(data)).decode()
        woken = []
        with self._lock:
            self._seq += 1
            item = (self._seq, event, text)
            self._ring.append(item)
            for s in list(self._subs):
                if len(s.queue) >= self.queue_size:
                    s.overflow = True
                    self._subs.discard(s)
                    self.dropped += 1
                else:
                    s.queue.append(item)
                woken.append(s)
            seq = self._seq
        for s in woken:
            if not s.notify():
                with self._lock:
                    self._subs.discard(s)
        return self._id(seq)

    def publish_changes(self, changes: pd.DataFrame, alarms: pd.DataFrame) -> list[str]:
        """Publish alarm changes (see ``change_events``); their ids."""
        return [self.publish(e, d) for e, d in change_events(changes, alarms)]

    def close(self) -> None:
        """End every stream and refuse new ones (call it before the server shuts down: open
        streams would keep it waiting)."""
        with self._lock:
            self._closed = True
            subs, self._subs = list(self._subs), set()
        for s in subs:
            s.closed = True
            s.notify()

    def _since(self, last_event_id: str | None) -> tuple[list[tuple[int, str, str]], bool]:
        """Buffered events after ``last_event_id`` and whether the client must resync.
        Call with the lock held."""
        if last_event_id is None or not last_event_id.strip():
            return [], False
        epoch, _, n = last_event_id.strip().rpartition("-")
        try:
            seq = int(n)
        except ValueError:
            return [], True
        if epoch != self.epoch or seq < 0 or seq > self._seq:
            return [], True
        oldest = self._ring[0][0] if self._ring else self._seq + 1
        if seq + 1 < oldest:
            return [], True
        return [item for item in self._ring if item[0] > seq], False

    def _format(self, item: tuple[int, str, str]) -> str:
        seq, event, text = item
        return f"id: {self._id(seq)}\nevent: {event}\ndata: {text}\n\n"

    @staticmethod
    def _control(event: str, data: dict[str, Any]) -> str:
        """An event without id (the client's last event id stays the last real one)."""
        return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n"

    async def stream(
        self, last_event_id: str | None = None, *, heartbeat_s: float = 15.0
    ) -> AsyncIterator[str]:
        """Server-sent events text: a ``retry:`` hint, the buffered events after
        ``last_event_id`` (or ``resync``), then live events; a comment every ``heartbeat_s``
        seconds of silence (keeps proxies from closing the connection and finds dead ones)."""
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            backlog, resync = self._since(last_event_id)
            if self._closed:
                sub.closed = True
            else:
                self._subs.add(sub)
        try:
            yield f"retry: {self.retry_ms}\n\n"
            if resync:
                yield self._control(
                    "resync",
                    {
                        "reason": f"events after {last_event_id} are no longer buffered",
                        "last_event_id": self.last_id,
                    },
                )
            last = None
            for item in backlog:
                last = item[0]
                yield self._format(item)
            while True:
                while True:
                    with self._lock:
                        item = sub.queue.popleft() if sub.queue else None
                    if item is None:
                        break
                    if last is not None and item[0] <= last:
                        continue  # already sent from the backlog
                    last = item[0]
                    yield self._format(item)
                if sub.overflow:
                    yield self._control(
                        "dropped",
                        {
                            "reason": f"fell {self.queue_size} events behind",
                            "last_event_id": self._id(last) if last else last_event_id,
                            "hint": "reconnect with Last-Event-ID to resume",
                        },
                    )
                    return
                if sub.closed:
                    return
                sub.ready.clear()
                if sub.queue or sub.overflow or sub.closed:
                    continue
                try:
                    await asyncio.wait_for(sub.ready.wait(), heartbeat_s)
                except TimeoutError:
                    yield ": heartbeat\n\n"
        finally:
            with self._lock:
                self._subs.discard(sub)


_EVENT_NAME = re.compile(r"[A-Za-z0-9._-]+")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(
    hub: EventHub, request: Request, *, heartbeat_s: float = 15.0
) -> StreamingResponse:
    """The ``text/event-stream`` response for ``GET /v1.1/events``: resumes after the
    ``Last-Event-ID`` header (or the ``lastEventId`` query parameter)."""
    last = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    return StreamingResponse(
        hub.stream(last, heartbeat_s=heartbeat_s),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


# -- escalation -------------------------------------------------------------------------------
class Escalator:
    """Escalates active alarms nobody acknowledged in time (``due_escalations`` with
    ``policy``): ``run_once(now)`` reads them, saves the escalations and enqueues their
    notifications in one store transaction (so an operator's acknowledgement or the engine's
    clear committed meanwhile is never overwritten), then wakes the dispatcher and publishes
    to the hub; ``start()`` does that every ``interval_s`` seconds in a thread."""

    def __init__(
        self,
        store: Store,
        policy: EscalationPolicy,
        hub: EventHub | None = None,
        *,
        dispatcher: Dispatcher | None = None,
        webhooks: Sequence[Webhook] | None = None,
        clock: Callable[[], Any] = utc_now,
        interval_s: float = 30.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.hub = hub
        self.dispatcher = dispatcher
        self.webhooks = None if webhooks is None else tuple(webhooks)
        self.clock = clock
        self._ticker = _Ticker("citytwin-escalator", self.run_once, interval_s)

    def start(self) -> Escalator:
        self._ticker.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._ticker.stop(timeout)

    def run_once(self, now: Any = None) -> AlarmChanges:
        """One escalation round at ``now`` (default: the clock); what it changed."""
        now = _utc(self.clock() if now is None else now)
        with self.store.transaction():
            alarms = self.store.alarms(status="active", acknowledged=False, limit=None)
            ch = due_escalations(alarms, now, self.policy)
            if ch.empty:
                return ch
            self.store.save_alarms(ch.alarms, ch.log)
            hooks = self.webhooks if self.webhooks is not None else load_webhooks(self.store)
            rows = notification_rows(ch.changes, ch.alarms, hooks, created_at=now)
            if len(rows):
                self.store.enqueue(rows)
        if self.dispatcher is not None and len(rows):
            self.dispatcher.wake()
        if self.hub is not None:
            self.hub.publish_changes(ch.changes, ch.alarms)
        return ch


# -- helpers ----------------------------------------------------------------------------------
def _utc(t: Any) -> pd.Timestamp:
    """A time as a tz-aware UTC timestamp (naive times are UTC)."""
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")

"""MQTT ingestion: the SensorThings MQTT create extension and a compact bulk topic, from a real
broker into the ingest pipeline (``citytwin.sensing.ingest.Ingestor``), acknowledged only once
stored.

Topics (OGC SensorThings API 1.1, §14.2 MQTT create; JSON bodies as in ``payloads``):

- ``v1.1/Datastreams(<id>)/Observations``: one Observation, the datastream from the topic;
- ``v1.1/Observations``: one Observation naming its ``Datastream`` in the body;
- ``v1.1/CreateObservations``: a DataArray document (many datastreams, many readings).

(``prefix`` puts them under another root, e.g. one per tenant or test on a shared broker.)

``MqttIngest`` runs ``workers`` MQTT v5 clients, each with its own persistent session
(clean start off, a session expiry) subscribed at QoS 1 through a shared subscription
(``$share/<group>/...``), so the broker spreads the messages over the workers (and over other
processes using the same group). Each worker decodes what has arrived and hands it to
``Ingestor.submit`` as one frame (group commit then joins the workers' frames); a message's
PUBACK is sent only when the commit that stored it is done (``manual_ack``), in the order the
messages came (MQTT v5 §4.6). So:

- a crash (even ``kill -9``) before the commit leaves the message unacknowledged in the
  worker's session; the broker sends it again when the worker reconnects, and the idempotent
  store keeps it once — every PUBACKed observation is in the store;
- a payload that can't be decoded (not JSON, broken document, a topic that names no datastream)
  goes to the dead letters (``rejected_observations``, source ``mqtt``) with the reason and the
  raw payload, and is acknowledged once that is committed; readings the store refuses (unknown
  datastream, not a number, in the future, ...) are dead-lettered by the ingestor in the commit
  that stores the rest. Nothing is dropped silently.
- a failed commit (the store's error) acknowledges nothing. Waiting for the broker to resend
  would not do: it resends only on a reconnect, and it sends no more than the receive maximum of
  unacknowledged messages, so the worker would stall. The worker keeps the failed messages,
  takes no new ones, and submits the failed ones again itself, one at a time, with backoff
  (``retry_s`` doubling up to ``max_retry_s``), so a message that breaks the commit is found
  alone. One that still fails after ``max_attempts`` goes to the dead letters with the error
  (replayable after the fix) and is then acknowledged; while the store is down the dead letter
  fails too, and the message stays unacknowledged, retried.

Broker settings a deployment needs (Mosquitto 2.0 defaults in brackets):

- ``max_queued_messages 0`` (or large) and a ``max_queued_bytes`` [1000 messages, no byte
  limit]: Mosquitto queues at most that many messages per session above those in flight and
  **drops the rest while still PUBACKing the publisher** (it logs "Outgoing messages are being
  dropped"). With a shared subscription it deals messages round-robin to the sessions of the
  members that are offline too (they wait in that session), so a stopped ingest process, or one
  worker down, fills its sessions' queues. The workers watch Mosquitto's
  ``$SYS/broker/publish/messages/dropped`` and log an error (``stats.broker_dropped``) when it
  grows.
- ``persistence true`` with a short ``autosave_interval`` (or ``autosave_on_changes``)
  [1800 s]: otherwise a broker crash loses the queued messages it had acknowledged.
- ``max_inflight_messages`` [20]: the window the broker grants publishers (the Receive Maximum
  of its CONNACK; ``publish_frames`` keeps to it). Towards the workers the window is the
  Receive Maximum they ask for (``receive_maximum``, default 1000; Mosquitto uses 20 for a
  client that asks for none). Messages in flight do not count against the queue limit, so a
  large window keeps a backlog out of the broker's limited queue while the ingest is up; it
  bounds the memory a worker holds (window x message size). The workers submit whatever has
  arrived without waiting for a batch to fill, so any window works, a small one slower.
- Stable worker client ids (``client_prefix``-0, -1, ...) and a session expiry longer than any
  outage: a session that expires loses what was queued for it. A worker taken away for good
  should be drained first (``drop_sessions`` once it is stopped and its queue is empty).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, fields
from typing import Any

import paho.mqtt.client as mqtt
import pandas as pd
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from citytwin.errors import InvalidInput
from citytwin.sensing.payloads import (
    BULK_TOPIC,
    OBSERVATION_TOPICS,
    TOPIC_PREFIX,
    datastream_from_path,
    decode_data_array,
    encode_data_array,
    encode_observations,
    loads,
    observation_row,
    rows_frame,
)

log = logging.getLogger(__name__)

OBSERVATIONS_TOPIC = f"{TOPIC_PREFIX}/Observations"
"""Single Observations naming their Datastream in the body."""
SOURCE = "mqtt"
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of the messages it dropped (per-session queue limits)."""


def ingest_topics(prefix: str = TOPIC_PREFIX) -> tuple[str, str, str]:
    """The topic filters of the ingest under a topic root: ``<prefix>/+/Observations``,
    ``<prefix>/Observations`` and ``<prefix>/CreateObservations`` (with the default root
    ``OBSERVATION_TOPICS``, ``OBSERVATIONS_TOPIC`` and ``BULK_TOPIC``)."""
    return (
        _under(OBSERVATION_TOPICS, prefix),
        _under(OBSERVATIONS_TOPIC, prefix),
        _under(BULK_TOPIC, prefix),
    )


def _under(topic: str, prefix: str) -> str:
    """A ``v1.1/...`` topic under another root (several brokers' tenants, tests)."""
    return prefix + topic[len(TOPIC_PREFIX) :]


@dataclass
class MqttStats:
    """Counters since start (all workers): messages received (``redelivered`` of them marked
    DUP by the broker), readings decoded, messages dead-lettered undecoded, the readings'
    outcome in the store (``inserted``, ``duplicates``, ``rejected`` = dead-lettered by the
    ingestor), PUBACKs sent, failed submits (``failures``) and resubmissions (``retries``),
    (re)connections, and the messages the broker said it dropped while the ingest ran
    (``broker_dropped``: Mosquitto's ``$SYS`` count, all clients)."""

    messages: int = 0
    redelivered: int = 0
    observations: int = 0
    dead_letters: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    acks: int = 0
    failures: int = 0
    retries: int = 0
    connects: int = 0
    broker_dropped: int = 0

    def add(self, other: MqttStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class _Message:
    gen: int  # the connection it came on
    mid: int
    qos: int
    topic: str
    payload: bytes
    dup: bool


@dataclass
class _Entry:
    """A received message on its way to the store; acknowledged when its future succeeds."""

    msg: _Message
    frame: pd.DataFrame | tuple | None  # the decoded readings (a frame, or one row), or
    dead: pd.DataFrame | None  # the dead letter of an undecodable message
    future: Future | None = None  # None: waiting for a retry
    attempts: int = 0
    retry_at: float = 0.0
    error: BaseException | None = None


def _connect_properties(session_expiry_s: int, receive_maximum: int | None) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(session_expiry_s)
    if receive_maximum:
        props.ReceiveMaximum = int(receive_maximum)
    return props


def _new_client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )


def _failed(exc: BaseException) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


class MqttIngest:
    """MQTT ingest workers feeding an ``Ingestor`` (see the module's docstring)."""

    def __init__(
        self,
        ingestor: Any,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        workers: int = 2,
        group: str = "citytwin",
        client_prefix: str = "citytwin-ingest",
        prefix: str = TOPIC_PREFIX,
        session_expiry_s: int = 3600,
        keepalive: int = 30,
        receive_maximum: int | None = 1000,
        watch_drops: bool = True,
        max_attempts: int = 5,
        retry_s: float = 0.5,
        max_retry_s: float = 30.0,
    ) -> None:
        if workers < 1:
            raise InvalidInput(f"workers must be at least 1, not {workers}", source="mqtt")
        if "/" in group or "+" in group or "#" in group or not group:
            raise InvalidInput(
                f"the share group {group!r} is not usable",
                source="mqtt",
                hint="a name without '/', '+' or '#'",
            )
        self.ingestor = ingestor
        self.host, self.port = host, port
        self.group = group
        self.prefix = prefix
        self.topics = ingest_topics(prefix)
        self.client_ids = [f"{client_prefix}-{i}" for i in range(workers)]
        self.session_expiry_s = session_expiry_s
        self.keepalive = keepalive
        self.receive_maximum = receive_maximum
        self.watch_drops = watch_drops
        self.max_attempts = max_attempts
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._workers: list[_Worker] = []
        self._stopped: list[_Worker] = []  # their counters stay readable

    @property
    def topic_filters(self) -> list[str]:
        """The shared-subscription filters of the workers."""
        return [f"$share/{self.group}/{t}" for t in self.topics]

    def start(self, timeout: float = 10.0) -> MqttIngest:
        """Connect the workers (resuming their sessions) and wait until each is subscribed;
        raise ``ConnectionError`` if the broker does not answer within ``timeout``."""
        if self._workers:
            return self
        self._workers = [_Worker(self, cid) for cid in self.client_ids]
        for w in self._workers:
            w.start()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            if not w.ready.wait(max(deadline - time.monotonic(), 0.0)) or w.error:
                error = next((x.error for x in self._workers if x.error), None)
                self.stop(timeout=1.0)
                raise ConnectionError(
                    f"MQTT ingest could not subscribe at {self.host}:{self.port}"
                    + (f": {error}" if error else f" within {timeout:g} s")
                    + " — is the broker running (mosquitto -d -c /etc/mosquitto/mosquitto.conf)?"
                )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, acknowledge what gets committed within ``timeout`` and
        disconnect, keeping the sessions: what was not acknowledged, and what arrives while
        stopped, is delivered again on the next start."""
        workers, self._workers = self._workers, []
        self._stopped = workers or self._stopped
        deadline = time.monotonic() + timeout
        for w in workers:
            w.stopping.set()
        for w in workers:
            w.stop(max(deadline - time.monotonic(), 0.0))

    def __enter__(self) -> MqttIngest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stats(self) -> MqttStats:
        """A snapshot of the counters of the workers (the last ones after ``stop``), summed."""
        total = MqttStats()
        for s in self.worker_stats:
            total.add(s)
        return total

    @property
    def worker_stats(self) -> list[MqttStats]:
        """A snapshot of the counters of each worker (the last ones after ``stop``)."""
        out = []
        for w in self._workers or self._stopped:
            with w.lock:
                out.append(MqttStats(**vars(w.stats)))
        return out

    def drop_sessions(self) -> None:
        """Forget the workers' sessions on the broker (after ``stop``): their subscriptions
        and whatever is queued in them are gone."""
        if self._workers:
            raise RuntimeError("stop the MQTT ingest before dropping its sessions")
        drop_sessions(self.client_ids, self.host, self.port)

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes) -> pd.DataFrame:
        """The observations frame of one message, or ``InvalidInput`` saying why not."""
        return _frame([self._decode(topic, payload)])

    def _decode(self, topic: str, payload: bytes) -> pd.DataFrame | tuple:
        """A bulk message's frame, or a single Observation's row (many rows make one frame
        at a fraction of the cost of one frame each)."""
        if topic == self.topics[2]:
            return decode_data_array(loads(payload, source=topic), source=topic)
        if topic == self.topics[1]:
            return observation_row(loads(payload, source=topic), source=topic)
        datastream = datastream_from_path(topic)
        return observation_row(loads(payload, source=topic), datastream, source=topic)

    def dead_letter(self, topic: str, payload: bytes, reason: str) -> pd.DataFrame:
        """The dead-letter record of a message (the datastream when the topic names one)."""
        datastream = None
        if topic not in self.topics[1:]:
            with contextlib.suppress(InvalidInput):
                datastream = datastream_from_path(topic)
        return pd.DataFrame(
            {
                "payload": [payload.decode("utf-8", errors="replace")],
                "reason": [reason],
                "source": [SOURCE],
                "datastream_id": [datastream],
            }
        )


class _Worker:
    """One MQTT client: its network thread (paho) puts messages in an inbox; its own thread
    decodes and submits them; the committer's callbacks send the PUBACKs in order."""

    def __init__(self, owner: MqttIngest, client_id: str) -> None:
        self.owner = owner
        self.client_id = client_id
        self.client = _new_client(client_id, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        self.inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self.lock = threading.Lock()  # pending, gen, stats; never held while paho waits on us
        self.pending: deque[_Entry] = deque()  # received, not yet acknowledged, in order
        self.retrying: deque[_Entry] = deque()  # of those, the ones whose commit failed
        self.wake = threading.Event()
        self.gen = 0
        self.stats = MqttStats()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: str | None = None
        self.watch_drops = owner.watch_drops and client_id == owner.client_ids[0]
        self.dropped_seen: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"mqtt-{client_id}", daemon=True)

    def start(self) -> None:
        o = self.owner
        self.client.connect_async(
            o.host,
            o.port,
            o.keepalive,
            clean_start=False,
            properties=_connect_properties(o.session_expiry_s, o.receive_maximum),
        )
        self.client.loop_start()
        self.thread.start()

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self.thread.join(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # let the commits in flight be acknowledged
            with self.lock:
                if not any(e.future is not None and not e.future.done() for e in self.pending):
                    break
            time.sleep(0.01)
        self.client.disconnect()  # the session stays (its expiry is set at CONNECT)
        self.client.loop_stop()

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.error = f"the broker refused the connection: {rc}"
            log.error("%s: %s", self.client_id, self.error)
            self.ready.set()  # start() reports it
            return
        with self.lock:
            self.stats.connects += 1
        # Subscribing on every connect is harmless when the session kept its subscriptions,
        # and needed when it did not (first start, expired session, a changed group).
        opts = SubscribeOptions(qos=1)
        subs = [(f, opts) for f in self.owner.topic_filters]
        if self.watch_drops:
            self.dropped_seen = None
            subs.append((DROPPED_TOPIC, SubscribeOptions(qos=0)))
        client.subscribe(subs)
        log.info("%s connected (session present: %s)", self.client_id, flags.session_present)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        n = len(self.owner.topic_filters)
        bad = [str(c) for c in codes[:n] if c.is_failure]
        if bad:
            self.error = f"the broker refused the subscriptions {self.owner.topic_filters}: {bad}"
            log.error("%s: %s", self.client_id, self.error)
        if any(c.is_failure for c in codes[n:]):
            log.warning("%s: cannot watch %s: %s", self.client_id, DROPPED_TOPIC, codes[n:])
        self.ready.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        # what is not acknowledged now is redelivered on the next connection: forget it here
        with self.lock:
            self.gen += 1
            self.pending.clear()
            self.retrying.clear()
        self.ready.clear()
        if not self.stopping.is_set():
            log.warning("%s disconnected (%s); reconnecting", self.client_id, rc)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if m.topic == DROPPED_TOPIC:
            self._on_dropped(m.payload)
            return
        self.inbox.put(_Message(self.gen, m.mid, m.qos, m.topic, m.payload, bool(m.dup)))

    def _on_dropped(self, payload: bytes) -> None:
        """Mosquitto's count of messages it dropped (queue limits; all clients, every
        ``sys_interval``): say so at start, and as an error whenever it grows."""
        try:
            count = int(payload)
        except ValueError:
            return
        if self.dropped_seen is None:
            if count:
                log.warning(
                    "the broker %s:%s has dropped %d messages since it started (queue limits:"
                    " max_queued_messages); messages for this ingest may be among them",
                    self.owner.host,
                    self.owner.port,
                    count,
                )
        elif count > self.dropped_seen:
            with self.lock:
                self.stats.broker_dropped += count - self.dropped_seen
            log.error(
                "the broker %s:%s dropped %d messages (queue limits); raise"
                " max_queued_messages (0: no limit) and the ingest's capacity",
                self.owner.host,
                self.owner.port,
                count - self.dropped_seen,
            )
        self.dropped_seen = count

    # -- the worker thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.lock:
                    recovering = bool(self.retrying)
                if recovering:  # failed messages first, one at a time; the rest waits
                    self._retry()
                    self.wake.wait(self._wait())
                    self.wake.clear()
                    continue
                try:
                    msgs = [self.inbox.get(timeout=0.2)]
                except queue.Empty:
                    continue
                while True:
                    try:
                        msgs.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                if self.stopping.is_set():
                    break  # not acknowledged: the broker keeps them
                self._take(msgs)
            except Exception:  # a bug here must not stop the worker: nothing is acked
                log.exception("%s: ingesting MQTT messages failed", self.client_id)
                time.sleep(0.2)

    def _wait(self) -> float:
        with self.lock:
            if not self.retrying or self.retrying[0].future is not None:
                return 0.2
            return min(max(self.retrying[0].retry_at - time.monotonic(), 0.0), 0.2)

    def _take(self, msgs: list[_Message]) -> None:
        """Decode messages, submit the readings of all in one frame and the dead letters in
        another, and queue them for acknowledgement in arrival order."""
        entries = []
        for m in msgs:
            try:
                frame = self.owner._decode(m.topic, m.payload)
            except InvalidInput as exc:
                dead = self.owner.dead_letter(m.topic, m.payload, str(exc))
                entries.append(_Entry(m, None, dead))
            else:
                entries.append(_Entry(m, frame, None))
        good = [e for e in entries if e.frame is not None]
        dead = [e for e in entries if e.dead is not None]
        with self.lock:
            s = self.stats
            s.messages += len(msgs)
            s.redelivered += sum(m.dup for m in msgs)
            s.observations += sum(
                1 if isinstance(e.frame, tuple) else len(e.frame)  # type: ignore[arg-type]
                for e in good
            )
            s.dead_letters += len(dead)
            gen = self.gen
            # queued for acknowledgement in arrival order, unless their connection has gone
            self.pending.extend(e for e in entries if e.msg.gen == gen)
        if good:
            self._submit(good, _frame([e.frame for e in good]), rejected=False)
        if dead:
            records = pd.concat([e.dead for e in dead], ignore_index=True)
            self._submit(dead, records, rejected=True)

    def _submit(self, entries: list[_Entry], frame: pd.DataFrame, *, rejected: bool) -> None:
        """Submit the entries' rows and watch the future (its callback may run at once)."""
        try:
            if rejected:
                fut = self.owner.ingestor.submit_rejected(frame)
            else:
                fut = self.owner.ingestor.submit(frame, source=SOURCE)
        except Exception as exc:  # not started, stopping, ...: retried like a failed commit
            fut = _failed(exc)
        with self.lock:
            for e in entries:
                e.future = fut
                e.attempts += 1
        fut.add_done_callback(self._settled)

    def _retry(self) -> None:
        """Submit the first failed message again, alone (the next waits for its outcome), or
        dead-letter it after ``max_attempts``."""
        with self.lock:
            e = self.retrying[0] if self.retrying else None
            if e is None or e.future is not None or e.retry_at > time.monotonic():
                return
            self.stats.retries += 1
            if e.attempts >= self.owner.max_attempts and e.frame is not None:
                log.error(
                    "%s: message %d failed %d times; dead-lettered: %r",
                    self.client_id,
                    e.msg.mid,
                    e.attempts,
                    e.error,
                )
                e.dead = self.owner.dead_letter(
                    e.msg.topic,
                    e.msg.payload,
                    f"could not be ingested after {e.attempts} attempts: {e.error!r}",
                )
                e.frame = None
                self.stats.dead_letters += 1
        if e.frame is not None:
            self._submit([e], _frame([e.frame]), rejected=False)
        else:
            assert e.dead is not None
            self._submit([e], e.dead, rejected=True)

    # -- completion (committer thread) --------------------------------------------------------
    def _settled(self, fut: Future) -> None:
        exc = fut.exception()
        with self.lock:
            if exc is not None:
                self.stats.failures += 1
                now = time.monotonic()
                for e in self.pending:
                    if e.future is fut:
                        e.future, e.error = None, exc
                        backoff = self.owner.retry_s * 2 ** min(e.attempts - 1, 16)
                        e.retry_at = now + min(backoff, self.owner.max_retry_s)
                        if not any(r is e for r in self.retrying):
                            self.retrying.append(e)
                log.warning("%s: commit failed, will retry: %r", self.client_id, exc)
            else:
                res = fut.result()
                if hasattr(res, "inserted"):
                    self.stats.inserted += res.inserted
                    self.stats.duplicates += res.duplicates
                    self.stats.rejected += len(res.rejected)
                while self.retrying and self.retrying[0].future is fut:
                    self.retrying.popleft()
            # PUBACK the committed messages at the head, in arrival order (MQTT v5 §4.6).
            # client.ack only appends to paho's out-queue (threaded mode): safe under the lock,
            # which keeps acks of a connection that has gone from being sent on the next one.
            while self.pending:
                head = self.pending[0].future
                if head is None or not head.done() or head.exception() is not None:
                    break
                e = self.pending.popleft()
                if e.msg.qos:
                    self.client.ack(e.msg.mid, e.msg.qos)
                    self.stats.acks += 1
        self.wake.set()


def _frame(parts: list[Any]) -> pd.DataFrame:
    """One observations frame of decoded messages (frames and single rows)."""
    rows = [p for p in parts if isinstance(p, tuple)]
    frames = [p for p in parts if not isinstance(p, tuple)]
    if rows:
        frames.insert(0, rows_frame(rows))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def drop_sessions(client_ids: Iterable[str], host: str = "127.0.0.1", port: int = 1883) -> None:
    """End the persistent sessions of these client ids on the broker (connect with clean start
    and a session expiry of 0, then disconnect)."""
    for cid in client_ids:
        c = _new_client(cid)
        c.connect(host, port, 10, clean_start=True, properties=_connect_properties(0, None))
        c.loop_start()
        try:
            deadline = time.monotonic() + 5
            while not c.is_connected() and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            c.disconnect()
            c.loop_stop()


# -- publishing ------------------------------------------------------------------------------
def publish_frames(
    frames: pd.DataFrame | Iterable[pd.DataFrame],
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    bulk: bool = True,
    qos: int = 1,
    client_id: str | None = None,
    prefix: str = TOPIC_PREFIX,
    chunk: int = 2000,
    inflight: int = 20,
    on_ack: Callable[[pd.DataFrame], None] | None = None,
    timeout: float = 60.0,
) -> int:
    """Publish observation frames (``datastream_id``, ``phenomenon_time``, ``result``) and wait
    for the broker's PUBACKs; the number of readings acknowledged.

    ``bulk``: DataArray documents of up to ``chunk`` readings on ``v1.1/CreateObservations``;
    else one message per reading on its ``v1.1/Datastreams(<id>)/Observations`` (``prefix``
    replaces the ``v1.1`` root). At most
    ``inflight`` messages are unacknowledged at a time (keep it within the broker's
    ``max_inflight_messages``, its Receive Maximum). ``on_ack`` gets the rows of every
    acknowledged message (from the network thread; keep it short). A PUBACK saying "no
    matching subscribers" (no ingest session has ever subscribed: the message is gone) or
    another failure, or a timeout, raises once everything else is acknowledged."""
    if qos not in (0, 1, 2):
        raise InvalidInput(f"qos must be 0, 1 or 2, not {qos}", source="mqtt")
    frames = [frames] if isinstance(frames, pd.DataFrame) else frames
    parts = _messages(frames, bulk, chunk, prefix)
    client = _new_client(client_id or f"citytwin-pub-{uuid.uuid4().hex[:12]}")
    client.max_inflight_messages = inflight
    window = threading.BoundedSemaphore(inflight)
    lock = threading.Lock()
    sent: dict[int, pd.DataFrame] = {}
    early: dict[int, Any] = {}  # PUBACKs that came before publish() returned the mid
    acked = [0]
    lost: list[str] = []
    connack: list[Any] = []

    def done(rows: pd.DataFrame, rc: Any) -> None:  # with ``lock`` held
        if rc is not None and (rc.is_failure or rc.value == 0x10):
            lost.append(f"{len(rows)} readings: {rc}")
        else:
            acked[0] += len(rows)
            if on_ack is not None:
                on_ack(rows)
        window.release()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with lock:  # never held while calling paho
            rows = sent.pop(mid, None)
            if rows is None:
                early[mid] = rc
            else:
                done(rows, rc)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, props: Any) -> None:
        connack.append((rc, getattr(props, "ReceiveMaximum", None)))

    client.on_publish = on_publish
    client.on_connect = on_connect
    client.connect(host, port, 30)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not connack and time.monotonic() < deadline:
            time.sleep(0.005)
        if not connack or connack[0][0].is_failure:
            raise ConnectionError(f"no MQTT broker accepted a connection at {host}:{port}")
        server_max = connack[0][1]
        if qos and server_max is not None and server_max < inflight:
            raise InvalidInput(
                f"the broker takes at most {server_max} messages in flight, not {inflight}",
                source="mqtt",
                hint=f"publish with inflight={server_max} or raise max_inflight_messages",
            )
        unsent = False
        for topic, payload, rows in parts:
            if not window.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                unsent = True
                break
            info = client.publish(topic, payload, qos=qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"publishing to {host}:{port} failed: {info.rc}")
            with lock:
                if qos == 0:
                    done(rows, None)
                elif info.mid in early:
                    done(rows, early.pop(info.mid))
                else:
                    sent[info.mid] = rows
        while time.monotonic() < deadline:  # the last PUBACKs
            with lock:
                if not sent:
                    break
            time.sleep(0.005)
        with lock:
            waiting = sum(len(r) for r in sent.values())
        problems = [f"lost {x}" for x in lost]
        if waiting:
            problems.append(f"{waiting} readings not acknowledged within {timeout:g} s")
        if unsent:
            problems.append(f"the rest was not sent within {timeout:g} s")
        if problems:
            raise ConnectionError(
                f"{acked[0]} readings acknowledged by {host}:{port}, but {'; '.join(problems)}"
                + (" — is an ingest subscribed? start it first" if lost else "")
            )
        return acked[0]
    finally:
        client.disconnect()
        client.loop_stop()


def _messages(
    frames: Iterable[pd.DataFrame], bulk: bool, chunk: int, prefix: str
) -> Iterable[tuple[str, bytes, pd.DataFrame]]:
    """(topic, payload, rows) of the messages of observation frames, made as they are sent."""
    bulk_topic = _under(BULK_TOPIC, prefix)
    for frame in frames:
        if not bulk:
            for k, (topic, body) in enumerate(encode_observations(frame)):
                yield _under(topic, prefix), body, frame.iloc[k : k + 1]
            continue
        for lo in range(0, len(frame), chunk):
            part = frame.iloc[lo : lo + chunk]
            yield bulk_topic, encode_data_array(part), part

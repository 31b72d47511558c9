"""The ingest pipeline every path feeds (HTTP, MQTT, replay): readings in, time series, alarms,
incidents and notifications out — durably, once.

``Ingestor.submit(frame, source=...)`` queues a decoded batch and returns a future. One
committer thread takes whatever is queued (group commit: many small requests become one large
append) and, in ONE store transaction:

1. appends the observations (idempotent on (datastream, phenomenon time); bad rows go to the
   dead letters with their reason and source),
2. evaluates the rules on the rows that were new (the pure engine, ``citytwin.warning``),
3. applies the events to alarms (at most one active alarm per (rule, source), enforced by the
   store too), correlates incidents, queues webhook notifications in the outbox,
4. logs the commit (sequence, time range) and, every few seconds, checkpoints the engine state.

Only then do the futures resolve, so an HTTP 2xx or an MQTT PUBACK means "stored". After the
commit the notification dispatcher is woken and the changes go to the SSE hub.

Crash recovery (``start``): the engine state comes back from its checkpoint and the readings
committed after it are evaluated again (their time range is in the ingest log). Alarm
application is idempotent (keyed by the events' times), so nothing is raised twice.

Time: readings carry their own; ``tick(now)`` advances the engine's watermark for ``no_data``
rules and runs escalation (by default with the wall clock).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from citytwin.errors import CityTwinError, InvalidInput
from citytwin.sensing.model import OBSERVATION_COLUMNS
from citytwin.store.base import REJECT_SOURCES, Store, StreamQuery
from citytwin.warning import alarms as alarm_rules
from citytwin.warning.baseline import Baseline
from citytwin.warning.engine import EVENT_COLUMNS, Catalog, Engine, EngineState, evaluate
from citytwin.warning.rules import RuleSet

log = logging.getLogger(__name__)

STATE_DOCUMENT = "warning/state"
"""Where the engine state is checkpointed (with the ingest sequence it covers)."""
_CONTEXT = ("network", "zone", "x", "y")


@dataclass
class IngestResult:
    """What became of one submitted batch: rows stored now, rows already stored (both are
    acknowledged), and the rejected rows (``row`` in the batch, ``datastream_id``,
    ``phenomenon_time``, ``reason``)."""

    inserted: int
    duplicates: int
    rejected: pd.DataFrame
    seq: int = 0

    @property
    def accepted(self) -> int:
        return self.inserted + self.duplicates


@dataclass
class AlarmOutcome:
    """Alarm and incident changes of one commit: ``changes`` (alarm_id, change, at, severity,
    previous_severity), the changed ``alarms`` rows, ``incident_changes`` / ``incidents``, and
    how many notifications were queued."""

    changes: pd.DataFrame = field(default_factory=pd.DataFrame)
    alarms: pd.DataFrame = field(default_factory=pd.DataFrame)
    incident_changes: pd.DataFrame = field(default_factory=pd.DataFrame)
    incidents: pd.DataFrame = field(default_factory=pd.DataFrame)
    queued: int = 0
    outbox: pd.DataFrame = field(default_factory=pd.DataFrame)  # the rows queued, with ids

    def add(self, other: AlarmOutcome) -> None:
        """Fold in another outcome of the same commit (escalations after events)."""
        for name in ("changes", "alarms", "incident_changes", "incidents", "outbox"):
            a, b = getattr(self, name), getattr(other, name)
            if len(b):
                setattr(self, name, pd.concat([a, b], ignore_index=True) if len(a) else b)
        self.queued += other.queued


@dataclass
class CommitReport:
    """What one commit did (for the SSE hub, logs and benchmarks)."""

    seq: int
    observations: int
    inserted: int
    events: int
    outcome: AlarmOutcome
    seconds: float


@dataclass
class _Item:
    kind: str  # "obs", "rejected", "tick", "reload", "barrier"
    future: Future
    frame: pd.DataFrame | None = None
    source: str = "http"
    now: Any = None
    rules: RuleSet | None = None


@dataclass
class IngestStats:
    """Counters since start."""

    commits: int = 0
    observations: int = 0
    inserted: int = 0
    rejected: int = 0
    events: int = 0
    alarm_changes: int = 0
    notifications: int = 0
    commit_seconds: float = 0.0
    recovered: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Ingestor:
    """The group-commit ingest pipeline of one twin (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        rules: RuleSet | None = None,
        *,
        baseline: Baseline | None = None,
        webhooks: list[Any] | None = None,
        escalation: Any = None,
        correlator: Any = None,
        hub: Any = None,
        dispatcher: Any = None,
        future_tolerance: dt.timedelta = dt.timedelta(minutes=5),
        checkpoint_s: float = 5.0,
        max_batch: int = 200_000,
        clock: Callable[[], dt.datetime] | None = None,
        on_commit: Callable[[CommitReport], None] | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.baseline = baseline
        self.webhooks = list(
            webhooks if webhooks is not None else alarm_rules.twin_webhooks(store)
        )
        self.escalation = escalation
        self.correlator = correlator
        self.hub = hub
        self.dispatcher = dispatcher
        self.future_tolerance = future_tolerance
        self.checkpoint_s = checkpoint_s
        self.max_batch = max_batch
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.on_commit = on_commit
        self.stats = IngestStats()
        self.state = EngineState()
        self.seq = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._catalog: Catalog | None = None
        self._context: pd.DataFrame | None = None
        self._last_checkpoint = float("-inf")
        self._checkpointed_seq = -1

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> Ingestor:
        """Load the datastreams, recover from the last checkpoint and start committing."""
        if self._thread is not None:
            return self
        self.refresh_catalog()
        self._recover()
        self._thread = threading.Thread(target=self._run, name="citytwin-ingest", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, checkpoint, and stop the committer."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        with self.store.transaction():
            self._checkpoint(force=True)

    def __enter__(self) -> Ingestor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- submitting -----------------------------------------------------------------------
    def submit(self, frame: pd.DataFrame, *, source: str = "http") -> Future[IngestResult]:
        """Queue an observations frame (``OBSERVATION_COLUMNS``); the future resolves with an
        ``IngestResult`` once the batch is committed (or fails with the store's error)."""
        if source not in REJECT_SOURCES:
            raise InvalidInput(f"unknown source {source!r}", hint=", ".join(REJECT_SOURCES))
        for col in ("datastream_id", "phenomenon_time"):
            if col not in frame:
                raise InvalidInput(f"observations need a {col!r} column", source=source)
        if "result" not in frame:
            if "value" not in frame:
                raise InvalidInput("observations need a 'result' column", source=source)
            frame = frame.rename(columns={"value": "result"})
        return self._put(_Item("obs", Future(), frame=frame, source=source))

    def submit_rejected(self, records: pd.DataFrame) -> Future[int]:
        """Queue dead letters (``payload``, ``reason``, ``source``, optionally
        ``datastream_id``) for payloads that could not be decoded; resolves once stored."""
        return self._put(_Item("rejected", Future(), frame=records))

    def ingest(self, frame: pd.DataFrame, *, source: str = "http") -> IngestResult:
        """Submit and wait."""
        return self.submit(frame, source=source).result()

    def tick(self, now: Any = None) -> Future[CommitReport]:
        """Advance time to ``now`` (default: the clock) for ``no_data`` rules and escalation."""
        return self._put(_Item("tick", Future(), now=now if now is not None else self.clock()))

    def reload(self, rules: RuleSet) -> Future[CommitReport]:
        """Swap in a new rule set (unchanged rules keep their state; the conditions of changed
        or removed rules clear)."""
        return self._put(_Item("reload", Future(), rules=rules))

    def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        self._put(_Item("barrier", Future())).result()

    def _put(self, item: _Item) -> Future:
        if self._thread is None:
            raise RuntimeError("the ingestor is not started")
        self._queue.put(item)
        return item.future

    def refresh_catalog(self) -> None:
        """Reload the datastreams (after provisioning) for the rule engine."""
        streams = self.store.datastreams()
        self._catalog = Catalog(streams)
        self._context = streams.set_index("datastream_id")[list(_CONTEXT)]

    # -- the committer --------------------------------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            items = [item]
            rows = len(item.frame) if item.frame is not None else 0
            while rows < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
                rows += len(nxt.frame) if nxt.frame is not None else 0
            self._commit_items(items)

    def _commit_items(self, items: list[_Item]) -> None:
        t0 = time.perf_counter()
        state, rules, seq = self.state, self.rules, self.seq
        try:
            report, results = self._commit(items)
        except Exception as exc:  # the store failed: nothing is acknowledged, nothing advanced
            self.state, self.rules, self.seq = state, rules, seq
            if len(items) > 1:  # one submitter's bad batch must not fail the others': alone
                log.warning("group commit of %d batches failed (%s); one by one", len(items), exc)
                for it in items:
                    self._commit_items([it])
                return
            log.exception("ingest commit failed")
            items[0].future.set_exception(exc)
            return
        report.seconds = time.perf_counter() - t0
        self._account(report)
        for it, res in zip(items, results, strict=True):
            it.future.set_result(res if res is not None else report)
        self._after_commit(report)

    def _commit(self, items: list[_Item]) -> tuple[CommitReport, list[Any]]:
        now = self.clock()
        results: list[Any] = [None] * len(items)
        events: list[pd.DataFrame] = []
        obs = [k for k, it in enumerate(items) if it.kind == "obs"]
        ticks = [it.now for it in items if it.kind == "tick"]
        n_obs, new = 0, None
        with self.store.transaction():
            for k, it in enumerate(items):
                if it.kind == "rejected":
                    results[k] = self.store.append_rejected(it.frame)
                elif it.kind == "reload":
                    events.append(self._reload(it.rules))
            if obs:
                n_obs, outcomes, new = self._append([items[k] for k in obs], now)
                for k, res in zip(obs, outcomes, strict=True):
                    results[k] = res
                if self.rules is not None and len(new):
                    events.append(self._evaluate(new))
            if ticks and self.rules is not None:
                events.append(self._evaluate(_no_readings(), now=max(ticks)))
            outcome = self._alarms([e for e in events if len(e)], now)
            if ticks and self.escalation is not None:
                outcome.add(self._escalate(max(ticks), now))
            self.seq += 1
            if n_obs:
                t = new["phenomenon_time"] if new is not None and len(new) else None
                self.store.log_ingest(
                    self.seq,
                    now,
                    n_obs,
                    None if t is None else t.min(),
                    None if t is None else t.max(),
                )
            self._checkpoint()
        for res in results:
            if isinstance(res, IngestResult):
                res.seq = self.seq
        report = CommitReport(
            self.seq,
            n_obs,
            0 if new is None else len(new),
            sum(len(e) for e in events),
            outcome,
            0.0,
        )
        return report, results

    def _append(
        self, obs: list[_Item], now: dt.datetime
    ) -> tuple[int, list[IngestResult], pd.DataFrame]:
        """Append the submitted frames as one batch; dead-letter what the store refused (with
        each row's source); per frame its outcome; the new rows for the engine."""
        frames = [it.frame[[c for c in OBSERVATION_COLUMNS if c in it.frame]] for it in obs]
        sizes = np.array([len(f) for f in frames])
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        batch = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        res = self.store.append_observations(batch, not_after=now + self.future_tolerance)
        rejected = res.rejected
        rows = rejected["row"].to_numpy()
        if len(rejected):
            raw = batch.iloc[rows]
            self.store.append_rejected(
                pd.DataFrame(
                    {
                        "payload": raw.to_json(
                            orient="records", lines=True, date_format="iso"
                        ).splitlines(),
                        "reason": rejected["reason"].to_numpy(object),
                        "source": np.repeat([it.source for it in obs], sizes)[rows],
                        "datastream_id": raw["datastream_id"].astype(str).to_numpy(object),
                    }
                )
            )
        owner_rejected = np.searchsorted(starts, rows, side="right") - 1
        owner_new = np.searchsorted(starts, res.new_rows, side="right") - 1
        out = []
        for k in range(len(obs)):
            mine = rejected[owner_rejected == k].copy()
            mine["row"] = mine["row"].to_numpy() - starts[k]
            inserted = int((owner_new == k).sum())
            duplicates = int(sizes[k]) - len(mine) - inserted
            out.append(IngestResult(inserted, duplicates, mine.reset_index(drop=True)))
        return len(batch), out, res.new.to_pandas()

    # -- rules, alarms, incidents, notifications ------------------------------------------
    def _evaluate(self, readings: pd.DataFrame, now: Any = None) -> pd.DataFrame:
        """Events of the rules on ``readings`` (the engine keeps its next state). A rule set
        the engine can't run (an anomaly rule without a baseline ...) is logged and skipped:
        the readings are stored all the same."""
        assert self.rules is not None and self._catalog is not None
        try:
            result = evaluate(
                self.rules, self._catalog, readings, self.state, now=now, baseline=self.baseline
            )
            if (result.dropped["reason"] == "unknown datastream").any():
                self.refresh_catalog()  # provisioned since the catalog was loaded
                result = evaluate(
                    self.rules, self._catalog, readings, self.state, now=now,
                    baseline=self.baseline,
                )  # fmt: skip
        except CityTwinError as exc:
            log.error("rules not evaluated: %s", exc)
            return _no_events()
        self.state = result.state
        return result.events

    def _reload(self, rules: RuleSet | None) -> pd.DataFrame:
        assert rules is not None and self._catalog is not None
        engine = Engine(self.rules or rules, self._catalog, state=self.state)
        events = engine.reload(rules)
        self.rules, self.state = rules, engine.state
        if self.correlator is not None and hasattr(self.correlator, "set_rules"):
            self.correlator.set_rules(rules)
        return events

    def _alarms(self, events: list[pd.DataFrame], now: dt.datetime) -> AlarmOutcome:
        """Apply engine events to alarms, correlate incidents, queue notifications."""
        outcome = AlarmOutcome()
        events = [e for e in events if len(e)]
        if not events:
            return outcome
        ev = pd.concat(events, ignore_index=True) if len(events) > 1 else events[0]
        ev = ev.sort_values("time", kind="stable").reset_index(drop=True)
        current = self.store.alarms_for(ev[["rule_id", "source"]].drop_duplicates())
        assert self._context is not None
        ctx = self._context.reindex(ev["datastream_id"].dropna().unique())
        changes = alarm_rules.apply_events(
            current, ev, context=ctx.rename_axis("datastream_id").reset_index()
        )
        alarms = changes.alarms
        if not len(alarms):
            return outcome
        if self.correlator is not None:
            open_incidents = self.store.incidents(status="open", limit=None)
            corr = self.correlator.correlate(alarms, open_incidents, now)
            if len(corr.assignments):
                joined = corr.assignments.set_index("alarm_id")["incident_id"]
                older = joined.index.difference(alarms["alarm_id"])
                if len(older):  # alarms of earlier commits that joined an incident now
                    earlier = self.store.alarms(status="active", limit=None)
                    earlier = earlier[earlier["alarm_id"].isin(older)]
                    alarms = pd.concat([alarms, earlier], ignore_index=True)
                hit = alarms["alarm_id"].isin(joined.index)
                alarms.loc[hit, "incident_id"] = alarms.loc[hit, "alarm_id"].map(joined)
            outcome.incidents, outcome.incident_changes = corr.incidents, corr.changes
        self.store.save_alarms(alarms, changes.log)
        if len(outcome.incidents):
            self.store.save_incidents(outcome.incidents)
        outcome.alarms, outcome.changes = alarms, changes.changes
        if self.webhooks:
            hooks = self.webhooks
            rows = [alarm_rules.notification_rows(changes.changes, alarms, hooks, created_at=now)]
            if len(outcome.incident_changes):
                rows.append(
                    alarm_rules.incident_notification_rows(
                        outcome.incident_changes, outcome.incidents, self.webhooks, created_at=now
                    )
                )
            rows = [r for r in rows if len(r)]
            if rows:
                self._enqueue(outcome, pd.concat(rows, ignore_index=True))
        return outcome

    def _enqueue(self, outcome: AlarmOutcome, rows: pd.DataFrame) -> None:
        """Queue notifications in this commit; keep them (with their ids) for the dispatcher,
        which gets them in memory after the commit rather than waiting for the store."""
        outcome.queued = self.store.enqueue(rows)
        if outcome.queued:
            outcome.outbox = self.store.notifications(status="pending", limit=outcome.queued)

    def _escalate(self, at: Any, now: dt.datetime) -> AlarmOutcome:
        outcome = AlarmOutcome()
        active = self.store.alarms(status="active", acknowledged=False, limit=None)
        changes = alarm_rules.due_escalations(active, pd.Timestamp(at), self.escalation)
        if not len(changes.alarms):
            return outcome
        self.store.save_alarms(changes.alarms, changes.log)
        outcome.alarms, outcome.changes = changes.alarms, changes.changes
        if self.webhooks:
            rows = alarm_rules.notification_rows(
                changes.changes, changes.alarms, self.webhooks, created_at=now
            )
            if len(rows):
                self._enqueue(outcome, rows)
        return outcome

    # -- state ----------------------------------------------------------------------------
    def _checkpoint(self, *, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono - self._last_checkpoint < self.checkpoint_s:
            return
        if self._checkpointed_seq == self.seq and not force:
            return
        self.store.put_document(
            STATE_DOCUMENT,
            {
                "seq": self.seq,
                "state": self.state.to_dict(),
            },
        )
        self._last_checkpoint = mono
        self._checkpointed_seq = self.seq

    def _recover(self) -> None:
        """Engine state from the checkpoint, then the readings committed after it again."""
        doc = self.store.get_document(STATE_DOCUMENT)
        after = -1
        if doc is not None:
            after = int(doc["seq"])
            self.state = EngineState.from_dict(doc["state"])
            self.seq = after
        logged = self.store.ingest_log(after_seq=after)
        if not len(logged):
            return
        self.seq = int(logged["seq"].max())
        if self.rules is None or logged["t_min"].isna().all():
            return
        start = pd.Timestamp(logged["t_min"].min()).to_pydatetime()
        end = pd.Timestamp(logged["t_max"].max()).to_pydatetime() + dt.timedelta(microseconds=1)
        readings = self.store.observations(StreamQuery(), start, end)
        if not len(readings):
            return
        readings = readings.sort_values("phenomenon_time", kind="stable")
        now = self.clock()
        with self.store.transaction():
            self._alarms([self._evaluate(readings)], now)
            self._checkpoint(force=True)
        self.stats.recovered = len(readings)
        log.info("recovered %d readings after checkpoint %d", len(readings), after)

    # -- after a commit -------------------------------------------------------------------
    def _account(self, report: CommitReport) -> None:
        s = self.stats
        s.commits += 1
        s.observations += report.observations
        s.inserted += report.inserted
        s.events += report.events
        s.alarm_changes += len(report.outcome.changes)
        s.notifications += report.outcome.queued
        s.commit_seconds += report.seconds

    def _after_commit(self, report: CommitReport) -> None:
        out = report.outcome
        if out.queued and self.dispatcher is not None:
            if hasattr(self.dispatcher, "offer"):
                self.dispatcher.offer(out.outbox)
            else:
                self.dispatcher.wake()
        if self.hub is not None and len(out.changes):
            self.hub.publish_changes(out.changes, out.alarms)
            if len(out.incident_changes):
                incidents = out.incidents.set_index("incident_id")
                for row in out.incident_changes.itertuples(index=False):
                    incident = {"incident_id": row.incident_id, **incidents.loc[row.incident_id]}
                    self.hub.publish(f"incident.{row.change}", alarm_rules.jsonable(incident))
        if self.on_commit is not None:
            self.on_commit(report)


def _no_readings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "datastream_id": pd.Series([], dtype=object),
            "phenomenon_time": pd.Series([], dtype="datetime64[us]"),
            "result": pd.Series([], dtype=float),
        }
    )


def _no_events() -> pd.DataFrame:
    return pd.DataFrame(columns=list(EVENT_COLUMNS))



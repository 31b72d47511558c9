"""The running monitoring service of one twin: the ingest pipeline, the notification dispatcher,
the event hub, the clock (silent devices, escalation), rule-file reloading, and optionally
MQTT workers and the HTTP app — wired once here, for ``citytwin sense serve | mqtt | replay``
and the tests and benchmarks.

Embedded default: one process holds the twin (DuckDB allows one writer); HTTP ingestion, the
dispatcher and the clock run in it, and, when given a folder, the flood forecasts dropped into
it (``watch_forecasts``: each runs the flood model and raises predicted-flooding alarms).
``add_mqtt`` adds MQTT ingest workers to the same process (shared subscription, so more
processes could share the load against a server store).
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from citytwin.app.monitoring import (
    AlarmDesk,
    IncidentCorrelator,
    anomaly_baseline,
    escalation_policy,
    keep_webhooks,
    twin_rules,
)
from citytwin.errors import CityTwinError, InvalidInput, NotFound
from citytwin.sensing.ingest import Ingestor
from citytwin.services.notify import Dispatcher, EventHub
from citytwin.store import open_store
from citytwin.store.base import Store
from citytwin.warning.alarms import twin_webhooks
from citytwin.warning.rules import load_rules

log = logging.getLogger(__name__)


@dataclass
class MonitoringService:
    """Everything a twin's live monitoring runs on (see the module's docstring)."""

    store: Store
    ingestor: Ingestor
    hub: EventHub
    dispatcher: Dispatcher
    desk: AlarmDesk
    rules_path: Path | None = None
    clock: str = "wall"
    tick_s: float = 10.0
    mqtt: Any = None
    baseline_s: float = 3600.0
    _baseline_at: float = 0.0
    forecasts: threading.Thread | None = None

    @classmethod
    def open(
        cls,
        twin: str | Path | Store,
        *,
        rules: str | Path | None = None,
        clock: str = "wall",
        webhooks: list[dict[str, Any]] | None = None,
        tick_s: float = 10.0,
        checkpoint_s: float = 5.0,
    ) -> MonitoringService:
        """Open a twin for monitoring. ``rules``: a rule file (watched for changes), else the
        twin's own rules; ``webhooks``: added to (or replacing by name) the twin's list."""
        store = open_store(twin) if isinstance(twin, str | Path) else twin
        if webhooks:
            keep_webhooks(store, webhooks)
        ruleset = load_rules(rules) if rules is not None else twin_rules(store)
        hooks = twin_webhooks(store)
        hub = EventHub()
        dispatcher = Dispatcher(store, hooks)
        ingestor = Ingestor(
            store,
            ruleset,
            baseline=anomaly_baseline(store, ruleset) if ruleset is not None else None,
            webhooks=hooks,
            escalation=escalation_policy(store),
            correlator=IncidentCorrelator(store, ruleset),
            hub=hub,
            dispatcher=dispatcher,
            checkpoint_s=checkpoint_s,
        )
        desk = AlarmDesk(store, webhooks=hooks, hub=hub, dispatcher=dispatcher)
        return cls(
            store,
            ingestor,
            hub,
            dispatcher,
            desk,
            Path(rules) if rules is not None else None,
            clock,
            tick_s,
        )

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> MonitoringService:
        """Start ingesting, delivering, ticking (and consuming MQTT when added)."""
        self.ingestor.start()
        self.dispatcher.start()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="citytwin-clock", daemon=True)
        self._ticker.start()
        if self.mqtt is not None:
            self.mqtt.start()
        return self

    def stop(self) -> None:
        """Stop taking readings, commit what is queued, stop delivering, close the twin."""
        if self.mqtt is not None:
            self.mqtt.stop()
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            self._ticker.join(5)
            if self.forecasts is not None:  # a run ends at its next step
                self.forecasts.join(30)
        self.ingestor.stop()
        self.dispatcher.stop()
        self.store.close()

    def __enter__(self) -> MonitoringService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_mqtt(self, host: str, port: int, *, workers: int = 2, **options: Any) -> None:
        """Consume the SensorThings MQTT topics of a broker with ``workers`` clients."""
        from citytwin.sensing.mqtt import MqttIngest

        self.mqtt = MqttIngest(self.ingestor, host, port, workers=workers, **options)

    def watch_forecasts(
        self, folder: str | Path, *, poll_s: float = 5.0, **options: Any
    ) -> threading.Thread:
        """Run the rainfall forecasts dropped into ``folder`` (``app.forecast.ForecastInbox``)
        on the started service, polling every ``poll_s`` seconds, with the rules and webhooks
        in force; their alarms go out as the readings' do. Returns the thread (a daemon)."""
        from citytwin.app.forecast import ForecastInbox

        inbox = ForecastInbox(
            self.store,
            Path(folder),
            rules=lambda: self.ingestor.rules,
            webhooks=lambda: self.ingestor.webhooks,
            hub=self.hub,
            dispatcher=self.dispatcher,
            stop=self._stop,
            options=options,
        )

        def run() -> None:
            while not self._stop.wait(poll_s):
                try:
                    inbox.poll()
                except Exception:  # the folder gone for a moment: try again at the next poll
                    log.exception("forecast folder %s", folder)

        self.forecasts = threading.Thread(target=run, name="citytwin-forecasts", daemon=True)
        self.forecasts.start()
        return self.forecasts

    def http_app(
        self, on_started: Callable[[], Any] | None = None, request_threads: int | None = None
    ) -> Any:
        """The FastAPI app (starting and stopping this service with it; ``on_started`` runs
        once the service has started; ``request_threads`` as for ``create_app``)."""
        from citytwin.services.api import ServiceContext, create_app

        def start() -> None:
            self.start()
            if on_started is not None:
                on_started()

        ctx = ServiceContext.of(self.store, ingestor=self.ingestor, hub=self.hub, desk=self.desk)
        return create_app(ctx, on_start=start, on_stop=self.stop, request_threads=request_threads)

    def replay_live(
        self, hours: float, *, speedup: float, end: dt.datetime | None = None, **events: Any
    ) -> threading.Thread:
        """Replay the virtual city's scenario into this running service in the background:
        ``hours`` of readings ending at ``end`` (default: now, so that no reading is in the
        future), paced at ``speedup`` times real time; ``events`` as for ``scenario_spec``
        (default: a storm, a gas leak and a main burst spread over the window). Returns the
        thread (a daemon)."""
        from citytwin.sensing.replay import IngestorSink, build_scenario, replay

        end_at = pd.Timestamp(end or dt.datetime.now(dt.UTC)).floor("min")
        start = (end_at - pd.Timedelta(hours=hours)).to_pydatetime()
        for name, share in (("storm_at", 0.15), ("gas_at", 0.4), ("burst_at", 0.6)):
            events.setdefault(name, hours * share)
        spec = scenario_spec(start, hours, **events)

        def run() -> None:
            try:
                scenario = build_scenario(self.store, spec)
                done = replay(scenario, IngestorSink(self.ingestor), speedup=speedup)
                log.info("live replay done: %d readings", done.readings)
            except Exception:
                log.exception("live replay failed")

        thread = threading.Thread(target=run, name="citytwin-replay", daemon=True)
        thread.start()
        return thread

    def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        replay_hours: float = 0.0,
        speedup: float = 30.0,
        forecast_dir: str | Path | None = None,
        banner: Callable[[str], Any] | None = None,
        request_threads: int | None = None,
    ) -> None:
        """Serve the twin's app with uvicorn until interrupted (Ctrl-C / SIGTERM), optionally
        replaying ``replay_hours`` of the virtual city's sensors into it and running the
        rainfall forecasts dropped into ``forecast_dir``; ``banner`` hears the addresses once
        the service listens; ``request_threads`` as for ``create_app``."""
        import uvicorn

        base = f"http://{host}:{port}"

        def started() -> None:
            # what the service keeps for its life (store, catalogue, policies, compiled
            # kernels) leaves the collector's view, and the young generation is collected
            # less often: a request allocates thousands of short-lived objects (measured:
            # 4-8 % of the CPU per features request)
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            if replay_hours:
                self.replay_live(replay_hours, speedup=speedup)
            if forecast_dir is not None:
                self.watch_forecasts(forecast_dir)
            if banner is not None:
                banner(
                    f"  console      {base}/console/\n"
                    f"  OGC API      {base}/   (OpenAPI: {base}/api.html)\n"
                    f"  SensorThings {base}/v1.1\n"
                    f"  ({self.describe()})"
                )

        app = self.http_app(started, request_threads)
        # no access log: the audit records every request (uvicorn would format each line only
        # to drop it below its warning level)
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        )
        handle_exit = server.handle_exit

        def close_streams_then_exit(sig: int, frame: Any) -> None:
            self.hub.close()  # open event streams would hold the shutdown
            handle_exit(sig, frame)

        server.handle_exit = close_streams_then_exit  # type: ignore[method-assign]
        server.run()

    def describe(self) -> str:
        rules = self.ingestor.rules
        n = 0 if rules is None else len(rules.enabled)
        text = f"{n} rules, clock {self.clock}, {len(self.ingestor.webhooks)} webhooks"
        return text + (", watching a forecast folder" if self.forecasts is not None else "")

    # -- the clock ------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        mtime = self._rules_mtime()
        self._baseline_at = time.monotonic()
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
                self._refresh_baseline()
                now = self._rules_mtime()
                if now != mtime:
                    mtime = now
                    self.reload_rules()
            except CityTwinError as exc:  # a broken rule file keeps the rules in force
                log.error("%s", exc)
            except Exception:
                log.exception("clock tick failed")

    def tick(self) -> None:
        """Advance time: the wall clock, or with the 'data' clock the latest reading's time."""
        if self.clock == "wall":
            self.ingestor.tick().result()
        else:
            when = self.ingestor.state.watermark_time
            if when is not None:
                self.ingestor.tick(when).result()

    def _refresh_baseline(self) -> None:
        """Rebuild the anomaly baseline hourly, and at every tick while it is empty (history
        may arrive after the start, e.g. from a replay)."""
        rules, current = self.ingestor.rules, self.ingestor.baseline
        if rules is None or current is None:
            return
        due = time.monotonic() - self._baseline_at >= self.baseline_s
        if due or not len(current):
            self.ingestor.baseline = anomaly_baseline(self.store, rules)
            self._baseline_at = time.monotonic()

    def reload_rules(self) -> None:
        """Load the rule file again and swap it in (a broken file raises and changes nothing)."""
        if self.rules_path is None:
            return
        rules = load_rules(self.rules_path)
        self.ingestor.reload(rules).result()
        self.ingestor.baseline = anomaly_baseline(self.store, rules)
        log.info("reloaded %d rules from %s", len(rules), self.rules_path)

    def _rules_mtime(self) -> float | None:
        try:
            return None if self.rules_path is None else self.rules_path.stat().st_mtime
        except OSError:
            return None


class RemoteDesk:
    """The alarm operations of a running service, over its HTTP API (for the CLI while the
    service holds the twin)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def __enter__(self) -> RemoteDesk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return _answer(self.client.get(path, params=clean))

    def alarms(self, **filters: Any) -> pd.DataFrame:
        if "severity_at_least" in filters:
            filters["severity"] = filters.pop("severity_at_least")
        return pd.DataFrame(self._get("/alarms", **filters)["value"])

    def alarm(self, alarm_id: str) -> dict[str, Any]:
        return self._get(f"/alarms/{alarm_id}")

    def incidents(self, **filters: Any) -> pd.DataFrame:
        return pd.DataFrame(self._get("/incidents", **filters)["value"])

    def incident(self, incident_id: str) -> dict[str, Any]:
        return self._get(f"/incidents/{incident_id}")

    def act(self, alarm_id: str, action: str, *, by: str, to=None, text=None) -> dict[str, Any]:
        body = {k: v for k, v in {"by": by, "to": to, "text": text}.items() if v is not None}
        return _answer(self.client.post(f"/alarms/{alarm_id}/{action}", json=body))


def _answer(response: httpx.Response) -> Any:
    if response.status_code == 404:
        raise NotFound(response.json().get("error", response.text))
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise InvalidInput(f"the service answered {response.status_code}: {message}")
    return response.json()



# -- replay ------------------------------------------------------------------------------------
def scenario_spec(
    start: dt.datetime,
    hours: float,
    *,
    burst: str | None = None,
    burst_at: float | None = 3.0,
    storm: float | None = 20.0,
    storm_at: float = 1.0,
    gas_at: float | None = 2.0,
    seed: int = 1,
) -> Any:
    """The replay scenario's spec: events at hours after ``start`` (None: not this time)."""
    from citytwin.sensing.replay import Burst, GasLeak, ScenarioSpec, Storm

    at = pd.Timestamp(start)

    def hours_in(h: float) -> dt.datetime:
        return (at + pd.Timedelta(hours=h)).to_pydatetime()

    return ScenarioSpec(
        start=at.to_pydatetime(),
        hours=hours,
        storm=Storm(return_period=storm, at=hours_in(storm_at)) if storm else None,
        burst=Burst(link=burst, at=hours_in(burst_at)) if burst_at is not None else None,
        gas=GasLeak(at=hours_in(gas_at)) if gas_at is not None else None,
        seed=seed,
    )


def run_replay(
    twin: str | Path,
    *,
    to: str = "direct",
    start: dt.datetime,
    hours: float = 6.0,
    speedup: float = 0.0,
    burst: str | None = None,
    burst_at: float | None = 3.0,
    storm: float | None = 20.0,
    storm_at: float = 1.0,
    gas_at: float | None = 2.0,
    seed: int = 1,
    rules: str | Path | None = None,
    source_twin: str | Path | None = None,
    progress: Callable[[str | None, int, int | None], None] | None = None,
) -> list[str]:
    """Replay the virtual city's scenario (``citytwin.sensing.replay``) through a real path:
    ``direct`` (a monitoring service on ``twin`` in this process), ``http://HOST:PORT`` (a
    running ``citytwin sense serve``) or ``mqtt://HOST:PORT`` (a broker a ``citytwin sense
    mqtt`` consumes from). The scenario is built from ``source_twin`` (default ``twin``; a
    running service holds its twin, so give a copy then). The weeks of history the anomaly
    rules need go first. Returns lines to print."""
    from citytwin.app.monitoring import provision_datastreams
    from citytwin.sensing.replay import HttpSink, IngestorSink, MqttSink, build_scenario, replay

    spec = scenario_spec(
        start,
        hours,
        burst=burst,
        burst_at=burst_at,
        storm=storm,
        storm_at=storm_at,
        gas_at=gas_at,
        seed=seed,
    )
    remote = to != "direct"
    if remote and source_twin is None:
        source_twin = twin
    with open_store(source_twin or twin, read_only=remote) as store:
        if not len(store.datastreams()):
            if remote:
                raise NotFound(
                    "the twin has no datastreams", hint="run `citytwin sense provision` first"
                )
            provision_datastreams(store)
        if progress:
            progress("building the scenario (EPANET, SWMM)", 0, None)
        scenario = build_scenario(store, spec)
    pace = speedup if speedup else math.inf

    def report(sent: int, total: int, when: pd.Timestamp) -> None:
        if progress:
            progress(f"replaying {when:%Y-%m-%d %H:%M}Z", sent, total)

    lines = [
        f"scenario {scenario.start:%Y-%m-%d %H:%M}Z + {hours:g} h: "
        f"{len(scenario.observations):,} readings, {len(scenario.history):,} of history"
    ]
    if remote:
        sink = _remote_sink(to, HttpSink, MqttSink)
        replay(_history_only(scenario), sink, speedup=math.inf)
        sink = _remote_sink(to, HttpSink, MqttSink)
        done = replay(scenario, sink, speedup=pace, progress=report)
        lines.append(
            f"sent {done.readings:,} readings to {to} in {done.seconds:.1f} s: "
            f"{done.accepted:,} acknowledged, {done.rejected:,} refused"
        )
        return lines
    with open_store(twin) as store:
        store.append_observations(scenario.history, dead_letter="replay")
        service = MonitoringService.open(store, rules=rules, clock="data")
        with service:
            done = replay(scenario, IngestorSink(service.ingestor), speedup=pace, progress=report)
            service.tick()
            alarms = service.store.alarms(limit=None)
            incidents = service.store.incidents(limit=None)
    lines.append(
        f"ingested {done.readings:,} readings in {done.seconds:.1f} s "
        f"({done.inserted or 0:,} new, {done.rejected:,} refused)"
    )
    if len(alarms):
        counts = alarms.groupby("rule_id").size().sort_values(ascending=False)
        lines.append(
            f"{len(alarms):,} alarms: " + ", ".join(f"{r} {n}" for r, n in counts.items())
        )
    for row in incidents.itertuples(index=False):
        lines.append(f"incident {row.incident_id} ({row.kind}, {row.severity}): {row.title}")
    return lines


def _remote_sink(to: str, http: Any, mqtt_sink: Any) -> Any:
    if to.startswith(("http://", "https://")):
        return http(to)
    if to.startswith("mqtt://"):
        host, _, port = to.removeprefix("mqtt://").rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInput(f"{to!r} is not mqtt://HOST:PORT")
        return mqtt_sink(host, int(port))
    raise InvalidInput(
        f"replay to {to!r}?", hint="use direct, http://HOST:PORT or mqtt://HOST:PORT"
    )


def _history_only(scenario: Any) -> Any:
    """The scenario's history as a scenario of its own (sent first, as fast as it goes)."""
    import dataclasses

    history = scenario.history.sort_values("phenomenon_time", kind="stable")
    first = pd.Timestamp(history["phenomenon_time"].min()) if len(history) else scenario.start
    return dataclasses.replace(
        scenario, observations=history.reset_index(drop=True), start=first.floor("D")
    )

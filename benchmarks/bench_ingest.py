"""Live ingestion benchmark (issue 5): sustained SensorThings ingestion into the virtual city
with every rule evaluated and everything stored — over HTTP and over MQTT from Mosquitto — and
the alarm latency from publish to stored alarm and to webhook received.

Twin: the virtual city (``build_city``, ``--area`` km², or a copy of ``--twin``), its
datastreams provisioned, the virtual city's rule file (threshold, sustained, rate of change,
anomaly, composite, no data), and a webhook (all events) pointing at a receiver this benchmark
runs in its own process: it checks every request's HMAC signature with
``citytwin.services.notify.verify`` and records when each arrived. 25 days of one-minute
inflow history of the DMA inlets are stored first, so the anomaly rule has its
same-hour-of-week baseline (``anomaly_baseline``, built by the service when it starts).

Load: normal readings of every datastream (pressure, flow with a daily profile, manhole depth
below cover, river and other levels, no rain, a little methane, cumulative water meters), in
time steps of one reading per datastream, one minute of city time apart, after the history.
DataArray documents of ``--batch`` readings (``--steps-per-doc`` steps of a slice of the
datastreams: a gateway's upload) are encoded before any timing into a file the load processes
map. The services run on the data clock (``--clock data``, as a replay does): the readings
cover hours of city time in a minute, which the wall clock's silent-device rules would take
for outages.

Each transport runs in a fresh copy of the twin, in three phases: a warm-up, ``max``
(``--seconds`` of load as fast as the service takes it) and ``paced`` (``--paced-seconds`` at
``--rate`` readings/s, the issue's target). A phase ends when all it sent is stored.

- HTTP: ``citytwin sense serve`` in its own process; a load process posts the documents to
  ``POST /v1.1/CreateObservations`` with httpx (keep-alive, ``--concurrency`` requests in
  flight: many gateways). A 201 means committed (rules evaluated, alarms stored).
- MQTT: a private Mosquitto (``--broker`` to use a running one), ``citytwin sense mqtt
  --workers 2``, and a load process publishing the documents on ``v1.1/CreateObservations`` at
  QoS 1 with paho (at most ``--inflight`` unacknowledged by the broker). The broker PUBACKs
  before the service has the message, so the publisher follows the broker's message store
  (``$SYS/broker/store/messages/count``: messages not yet acknowledged by the ingest workers,
  which acknowledge after the commit) and pauses while more than ``--mqtt-backlog`` messages
  wait there; a phase ends when that backlog is empty.

Alarm latency: during the timed phases the load process injects, every ``--inject-every``
seconds, a gas detector reading of 60 %LEL (red), each time on the next detector, at a time
just after the readings sent so far (with a normal reading a second before, so each injection
raises a fresh alarm; the detector's next normal reading clears it). It timestamps the publish
(this machine's clock) and the alarm is found by (datastream, raised_at):

- publish -> alarm stored: HTTP: the injection's 201 (sent after the commit that stored the
  alarm) and the ``alarm.raised`` event on the service's SSE stream ``GET /events``; both
  transports: the ``created_at`` of its notification in the outbox (taken when that commit
  began: a lower bound);
- publish -> webhook received by the receiver (the dispatcher sends only committed rows).

Throughput is read from the twin's ingest log: the readings of the commits that began while
the load ran, over that time; the readings acknowledged (HTTP: 201s; MQTT: broker PUBACKs)
over the time until all were stored are shown too, and the readings in the twin afterwards
are counted against what was acknowledged. Also: commits and readings per commit, CPU of the
service, broker, load and receiver processes (psutil; 100 % = one core), the load process's
ceiling (readings sent per CPU second of it). Peers and breakdown (same twin and documents, in
this process): decoding, the store's append alone (no rules), the rule engine alone, and the
whole ingest pipeline without a transport at two commit sizes, with the time of each part.

Run: .venv/bin/python benchmarks/bench_ingest.py [--seconds 60] [--paced-seconds 30]
     [--rate 50000] [--concurrency 16] [--area 4] [--quick] [--only http|mqtt]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

SECRET = "bench-webhook-secret"
STEP = pd.Timedelta("1min")
HISTORY_EVERY = pd.Timedelta("1min")  # ~190 readings per hour of week: a steady MAD
HISTORY_DAYS = 27
TZ_HOURS = 8  # Asia/Shanghai, the rules' timezone (no daylight saving)
PROBE_HIGH = 60.0  # %LEL: red (gas-leak levels 5 / 10 / 25 / 50)
PROBE_LOW = 0.5
PROBE_AHEAD = pd.Timedelta("150.5s")  # after the readings sent so far, between their steps
SYS_TICK_S = 2.0  # Mosquitto publishes $SYS every sys_interval + 1 s
DRAIN_SLACK = 2  # messages: $SYS messages in flight to the monitor make the count jitter
BULK = "v1.1/CreateObservations"
CREATE = "/v1.1/CreateObservations"
JSON = {"Content-Type": "application/json"}
COMPONENTS = ["phenomenonTime", "result"]
DIGITS = {
    "pressure": 4,
    "flow": 2,
    "depth_below_cover": 3,
    "water_level": 3,
    "rain_intensity": 1,
    "gas_concentration": 1,
    "water_volume": 3,
}
Row = tuple[str, str, str, str]


# -- the twin and its readings ---------------------------------------------------------------
def diurnal(t_ns: np.ndarray) -> np.ndarray:
    """Water demand relative to the day's mean at UTC times (ns): low at night, peaks in the
    morning and the evening (local time)."""
    h = ((t_ns // 1_000_000_000 + TZ_HOURS * 3600) % 86400) / 3600.0
    w = 2 * np.pi * (h - 8.0) / 24.0
    return 1.0 + 0.25 * np.cos(w) + 0.15 * np.cos(2 * w)


class CityLoad:
    """Normal readings of every datastream of a twin (per observed property and tags)."""

    def __init__(self, streams: pd.DataFrame, seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.ids = streams["datastream_id"].astype(str).to_numpy(object)
        self.prop = streams["observed_property"].astype(str).to_numpy(object)
        tags = streams["tags"].fillna("").astype(str).to_numpy(object)
        n = len(self.ids)

        def tagged(tag: str) -> np.ndarray:
            return np.array([tag in t.split(",") for t in tags], bool)

        def prop(p: str) -> np.ndarray:
            return self.prop == p

        base = np.zeros(n)
        demand = np.zeros(n)  # how strongly a reading follows the daily demand
        noise_abs = np.zeros(n)
        noise_rel = np.zeros(n)
        m = prop("pressure")
        critical = m & tagged("dma_critical")
        base[m] = rng.uniform(0.30, 0.42, n)[m]
        base[critical] = rng.uniform(0.24, 0.30, n)[critical]
        demand[m], noise_abs[m] = -0.05, 0.0015
        m = prop("flow")
        base[m] = np.where(tagged("source"), rng.uniform(400, 900, n), rng.uniform(40, 250, n))[m]
        demand[m], noise_abs[m], noise_rel[m] = 1.0, 0.3, 0.01
        m = prop("depth_below_cover")
        base[m], noise_abs[m] = rng.uniform(1.4, 3.0, n)[m], 0.004
        m = prop("water_level")
        river = m & tagged("river")
        base[m] = rng.uniform(0.4, 2.5, n)[m]
        base[river] = 1.5
        noise_abs[m] = 0.004
        m = prop("gas_concentration")
        base[m], noise_abs[m] = 0.3, 0.2
        m = prop("water_volume")
        base[m] = rng.uniform(50, 3000, n)[m]
        self.use = np.where(m, rng.gamma(2.0, 0.25, n) / 1440.0, 0.0)  # m3 per minute
        self.base, self.demand, self.noise_abs, self.noise_rel = base, demand, noise_abs, noise_rel
        self.register = base.copy()
        self.digits = np.array([DIGITS.get(p, 3) for p in self.prop])
        self.inlet_flows = np.flatnonzero(prop("flow") & tagged("dma_inlet"))
        self.probes = np.flatnonzero(prop("gas_concentration"))

    def values(self, times: pd.DatetimeIndex, cols: np.ndarray | None = None) -> np.ndarray:
        """Readings at ``times`` (rows) of the datastreams ``cols`` (default: all)."""
        cols = np.arange(len(self.ids)) if cols is None else cols
        t = (times if times.tz is None else times.tz_convert(None)).as_unit("ns").asi8
        f = diurnal(t)[:, None]
        base = self.base[cols]
        level = base * (1.0 + self.demand[cols] * (f - 1.0))
        noise = self.rng.standard_normal((len(times), len(cols)))
        v = level + noise * (self.noise_abs[cols] + self.noise_rel[cols] * np.abs(base))
        meters = self.use[cols] > 0
        if meters.any():  # cumulative registers, going on from the previous call's
            minutes = np.diff(t, prepend=t[0] - STEP.value) / 60e9
            m = cols[meters]
            v[:, meters] = self.register[m] + np.cumsum(f * minutes[:, None] * self.use[m], axis=0)
            self.register[m] = v[-1, meters]
        gas = self.prop[cols] == "gas_concentration"
        v[:, gas] = np.clip(v[:, gas], 0.0, None)
        for d in np.unique(self.digits[cols]):
            sel = self.digits[cols] == d
            v[:, sel] = np.round(v[:, sel], d)
        return v


def prepare_twin(path: Path, area: float, seed: int, source: Path | None) -> dict[str, Any]:
    """Build (or copy) the twin, provision its datastreams, store the inlet-flow history."""
    from citytwin.app.monitoring import provision_datastreams
    from citytwin.store import open_store
    from citytwin.synth.city import build_city

    t = time.perf_counter()
    if source is not None:
        shutil.copy(source, path)
        store = open_store(path)
    else:
        store = build_city(path, area, seed)
    built = time.perf_counter() - t
    try:
        if not len(store.datastreams()):
            provision_datastreams(store)
        streams = store.datastreams()
        load = CityLoad(streams)
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        start = (now - pd.Timedelta(days=HISTORY_DAYS)).ceil("h")
        end = now.floor("h") - pd.Timedelta(days=2)  # the load's readings come after
        times = pd.date_range(start, end, freq=HISTORY_EVERY, inclusive="left")
        cols = load.inlet_flows
        hist = load.values(times, cols)
        frame = pd.DataFrame(
            {
                "datastream_id": np.tile(load.ids[cols], len(times)),
                "phenomenon_time": np.repeat(times.to_numpy(), len(cols)),
                "result": hist.ravel(),
            }
        )
        store.append_observations(frame)
    finally:
        store.close()
    return {
        "built_s": built,
        "datastreams": len(streams),
        "by_property": streams["observed_property"].value_counts().to_dict(),
        "history": len(frame),
        "history_end": times[-1],
        "load": load,
    }


@dataclass
class Payloads:
    """Pre-encoded DataArray documents in a file, with their index (offset, length, readings,
    time of their last step in ns)."""

    path: Path
    index: np.ndarray
    readings: int
    encode_s: float
    steps: int
    first: pd.Timestamp
    last: pd.Timestamp

    def bodies(self, k0: int, k1: int) -> list[bytes]:
        with open(self.path, "rb") as f:
            out = []
            for off, size, _, _ in self.index[k0:k1]:
                f.seek(off)
                out.append(f.read(size))
            return out


def encode_payloads(
    load: CityLoad, path: Path, readings: int, start: pd.Timestamp, batch: int, steps_per_doc: int
) -> Payloads:
    """Documents for at least ``readings`` readings: steps of one reading per datastream from
    ``start`` on, ``steps_per_doc`` steps of ``batch // steps_per_doc`` datastreams each."""
    t0 = time.perf_counter()
    n = len(load.ids)
    steps = max(steps_per_doc, -(-readings // n))
    steps = -(-steps // steps_per_doc) * steps_per_doc
    times = pd.date_range(start, periods=steps, freq=STEP)
    iso = list(times.strftime("%Y-%m-%dT%H:%M:%SZ"))
    t_ns = times.as_unit("ns").asi8
    per_doc = max(1, batch // steps_per_doc)
    ids = load.ids.tolist()
    index = []
    offset = 0
    with open(path, "wb") as f:
        for s0 in range(0, steps, steps_per_doc):
            s1 = s0 + steps_per_doc
            block = load.values(times[s0:s1]).T  # datastreams x steps
            ts = iso[s0:s1]
            for c0 in range(0, n, per_doc):
                rows = block[c0 : c0 + per_doc].tolist()
                doc = [
                    {
                        "Datastream": {"@iot.id": ident},
                        "components": COMPONENTS,
                        "dataArray": [[t, v] for t, v in zip(ts, row, strict=True)],
                    }
                    for ident, row in zip(ids[c0 : c0 + per_doc], rows, strict=True)
                ]
                body = orjson.dumps(doc)
                f.write(body)
                index.append((offset, len(body), len(rows) * len(ts), t_ns[s1 - 1]))
                offset += len(body)
    idx = np.array(index, np.int64)
    np.save(path.with_suffix(".idx.npy"), idx)
    return Payloads(
        path, idx, int(idx[:, 2].sum()), time.perf_counter() - t0, steps, times[0], times[-1]
    )


# -- helper processes ------------------------------------------------------------------------
def _receiver_main(out_path: str, secret: str) -> None:
    """(Own process) the webhook receiver: verifies each signature, records the arrival."""
    import http.server

    from citytwin.services.notify import (
        DELIVERY_HEADER,
        EVENT_HEADER,
        SIGNATURE_HEADER,
        TIMESTAMP_HEADER,
        verify,
    )

    lock = threading.Lock()
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 (open for the process's life)

    class Hook(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            t = time.time()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ok = verify(
                secret,
                self.headers.get(TIMESTAMP_HEADER, ""),
                body,
                self.headers.get(SIGNATURE_HEADER, ""),
            )
            rec: dict[str, Any] = {
                "t": t,
                "ok": ok,
                "event": self.headers.get(EVENT_HEADER),
                "delivery": self.headers.get(DELIVERY_HEADER),
            }
            if ok:
                doc = orjson.loads(body)
                alarm = doc.get("alarm") if isinstance(doc, dict) else None
                if isinstance(alarm, dict):
                    rec["source"] = alarm.get("source")
                    rec["raised_at"] = alarm.get("raised_at")
            with lock:
                out.write(orjson.dumps(rec).decode() + "\n")
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()
    out.close()


class Docs:
    """The pre-encoded documents, memory-mapped (load processes)."""

    def __init__(self, path: str) -> None:
        self.index = np.load(Path(path).with_suffix(".idx.npy"))
        self._file = open(path, "rb")  # noqa: SIM115
        self.mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.mm.madvise(mmap.MADV_WILLNEED)
        self.offset = self.index[:, 0].tolist()
        self.size = self.index[:, 1].tolist()
        self.n = self.index[:, 2].tolist()
        self.step = self.index[:, 3].tolist()
        self.next = 0
        self.last_step = self.step[0] - STEP.value

    def __len__(self) -> int:
        return len(self.n)

    def take(self) -> tuple[int, bytes] | None:
        """The next document (readings, body), or None when all are sent."""
        k = self.next
        if k >= len(self.n):
            return None
        self.next += 1
        self.last_step = max(self.last_step, self.step[k])
        return self.n[k], self.mm[self.offset[k] : self.offset[k] + self.size[k]]


class Injector:
    """Gas readings that raise a fresh red alarm, each on the next detector in turn."""

    def __init__(self, probes: list[str], docs: Docs) -> None:
        self.probes, self.docs = probes, docs
        self.count = 0
        self.last = 0
        self.records: list[dict[str, Any]] = []

    def next(self, phase: str) -> tuple[dict[str, Any], bytes]:
        probe = self.probes[self.count % len(self.probes)]
        self.count += 1
        t = max(self.docs.last_step + PROBE_AHEAD.value, self.last + 1_000_000_000)
        self.last = t
        rec = {"phase": phase, "probe": probe, "t_ns": t, "pub": None, "ack": None}
        self.records.append(rec)
        return rec, _probe_body(probe, t)


def _probe_body(probe: str, t_ns: int) -> bytes:
    """A detector's normal reading a second before ``t_ns`` (clears an alarm left over), then
    60 %LEL at ``t_ns`` (raises a red one)."""
    iso = [pd.Timestamp(x).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for x in (t_ns - 10**9, t_ns)]
    return orjson.dumps(
        [
            {
                "Datastream": {"@iot.id": probe},
                "components": COMPONENTS,
                "dataArray": [[iso[0], PROBE_LOW], [iso[1], PROBE_HIGH]],
            }
        ]
    )


def _mark(name: str, what: str) -> None:
    print(f"MARK {name} {what} {time.time():.6f}", flush=True)


def _load_main(cfg_text: str) -> None:
    """(Own process) the load: HTTP posts or MQTT publishes, phase by phase."""
    cfg = json.loads(cfg_text)
    docs = Docs(cfg["payloads"])
    inj = Injector(cfg["probes"], docs)
    if cfg["kind"] == "http":
        import asyncio

        phases = asyncio.run(_http_load(cfg, docs, inj))
    else:
        phases = _mqtt_load(cfg, docs, inj)
    result = {
        "phases": phases,
        "injections": inj.records,
        "docs_sent": docs.next,
        "docs": len(docs),
    }
    print("RESULT " + json.dumps(result), flush=True)


async def _http_worker(client: Any, docs: Docs, st: dict, t0: float, t_end: float, rate) -> None:
    """Post documents until ``t_end`` (at ``rate`` readings/s when given)."""
    import asyncio

    while True:
        due = t0 + st["sent"] / rate if rate else 0.0  # this document's slot
        if max(due, time.time()) >= t_end:
            return
        doc = docs.take()
        if doc is None:
            st["ran_out"] = True
            return
        n, body = doc
        st["sent"] += n
        if due > time.time():
            await asyncio.sleep(due - time.time())
        r = await client.post(CREATE, content=body, headers=JSON)
        st["posts"] += 1
        if r.status_code == 201:
            st["acked"] += n
        else:
            st["errors"] += 1
            st["error"] = st["error"] or f"HTTP {r.status_code}: {r.text[:300]}"


async def _http_probe(client: Any, rec: dict, body: bytes) -> None:
    rec["pub"] = time.time()
    r = await client.post(CREATE, content=body, headers=JSON)
    rec["ack"] = time.time()
    rec["status"] = r.status_code


async def _http_injector(
    client: Any, inj: Injector, name: str, every: float, t0: float, t_end: float
) -> None:
    """An injection every ``every`` seconds (each in its own task: none waits for another)."""
    import asyncio

    tasks = []
    k = 0
    while every:
        at = t0 + every * (k + 0.5)
        if at >= t_end:
            break
        await asyncio.sleep(max(at - time.time(), 0.0))
        tasks.append(asyncio.create_task(_http_probe(client, *inj.next(name))))
        k += 1
    await asyncio.gather(*tasks)


def _phase_state() -> dict[str, Any]:
    return {"acked": 0, "posts": 0, "errors": 0, "error": None, "sent": 0, "ran_out": False}


async def _http_load(cfg: dict, docs: Docs, inj: Injector) -> list[dict]:
    import asyncio

    import httpx

    conc = cfg["concurrency"]
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    out = []
    async with (
        httpx.AsyncClient(base_url=cfg["url"], limits=limits, timeout=300) as client,
        httpx.AsyncClient(base_url=cfg["url"], timeout=300) as probe_client,
    ):
        for ph in cfg["phases"]:
            name, rate, st = ph["name"], ph["rate"], _phase_state()
            _mark(name, "start")
            cpu0, t0 = time.process_time(), time.time()
            t_end = t0 + ph["seconds"]
            await asyncio.gather(
                *(_http_worker(client, docs, st, t0, t_end, rate) for _ in range(conc)),
                _http_injector(probe_client, inj, name, ph["inject_every"], t0, t_end),
            )
            t_done = time.time()
            _mark(name, "done")
            st.update(
                t0=t0, t_stop=min(t_end, t_done), t_done=t_done, cpu=time.process_time() - cpu0
            )
            out.append({"name": name, "rate": rate, **st})
    return out


def _mqtt_client(client_id: str, **kw: Any):
    import paho.mqtt.client as mqtt
    from paho.mqtt.client import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kw)


def _mqtt_injector(
    client: Any,
    inj: Injector,
    name: str,
    every: float,
    t0: float,
    t_end: float,
    stop: threading.Event,
) -> None:
    """An injection every ``every`` seconds on its own connection (QoS 1)."""
    k = 0
    while every and not stop.is_set():
        at = t0 + every * (k + 0.5)
        if at >= t_end or stop.wait(max(at - time.time(), 0.0)):
            break
        rec, body = inj.next(name)
        rec["pub"] = time.time()
        client.publish(BULK, body, qos=1)
        k += 1


def _mqtt_load(cfg: dict, docs: Docs, inj: Injector) -> list[dict]:
    host, port = cfg["broker"]
    tag = uuid.uuid4().hex[:8]
    lock = threading.Lock()
    sent: dict[int, int] = {}
    early: dict[int, Any] = {}
    acked = {"readings": 0, "messages": 0}
    failures: list[str] = []
    window = threading.BoundedSemaphore(cfg["inflight"])
    sys_state: dict[str, int | None] = {"count": None, "retained": None}
    samples: list[tuple[float, int]] = []  # (time, messages in the broker's store for the ingest)
    sampled = threading.Condition(lock)
    ack_times: list[float] = []  # when the broker acknowledged each message

    def settle(n: int, rc: Any) -> None:  # lock held
        if rc.is_failure or rc.value == 0x10:  # 0x10: no matching subscribers: lost
            failures.append(str(rc))
        else:
            acked["readings"] += n
            acked["messages"] += 1
            ack_times.append(time.time())
        window.release()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with lock:
            n = sent.pop(mid, None)
            if n is None:
                early[mid] = rc
            else:
                settle(n, rc)

    def on_sys(_c: Any, _u: Any, m: Any) -> None:
        with lock:
            key = "retained" if m.topic.endswith("retained messages/count") else "count"
            first = sys_state["retained"] is None
            sys_state[key] = int(m.payload)
            count, retained = sys_state["count"], sys_state["retained"]
            if count is not None and retained is not None and (key == "count" or first):
                samples.append((time.time(), count - retained))  # one per tick
                sampled.notify_all()

    pub = _mqtt_client(f"bench-pub-{tag}")
    pub.max_inflight_messages = cfg["inflight"]
    pub.on_publish = on_publish
    mon = _mqtt_client(f"bench-sys-{tag}")
    mon.on_message = on_sys
    probe = _mqtt_client(f"bench-probe-{tag}")
    for c in (pub, mon, probe):
        c.connect(host, port, 60)
        c.loop_start()
    mon.subscribe(
        [("$SYS/broker/store/messages/count", 0), ("$SYS/broker/retained messages/count", 0)]
    )
    deadline = time.time() + 10
    while not (pub.is_connected() and probe.is_connected()) and time.time() < deadline:
        time.sleep(0.01)

    def acked_between(t0: float, t1: float) -> int:
        return bisect.bisect_right(ack_times, t1) - bisect.bisect_right(ack_times, t0)

    def backlog() -> float:
        """Messages not yet acknowledged by the ingest, estimated: the broker's store at its
        last $SYS tick, plus what it acknowledged to us since, less what the ingest took
        meanwhile at the rate it took them in the tick interval before. Mosquitto publishes a
        $SYS value every ``SYS_TICK_S`` only when it changed: without a new sample, the last
        value was still the count at the ticks since."""
        with lock:
            if not samples:  # nothing known yet: as if nothing had been taken
                return float(len(ack_times))
            now = time.time()
            t, b = samples[-1]
            ticks = max(math.floor((now - t - 0.05) / SYS_TICK_S), 0)
            last = t + SYS_TICK_S * ticks
            before = [(tp, bp) for tp, bp in samples[-4:-1] if tp <= t - 1.0]
            if ticks:  # unchanged over the interval before ``last``: took what came
                rate = acked_between(last - SYS_TICK_S, last) / SYS_TICK_S
            elif before:
                tp, bp = before[-1]
                rate = max(bp + acked_between(tp, t) - b, 0) / (t - tp)
            else:
                rate = 0.0
            return max(b + acked_between(last, now) - rate * (now - last), 0.0)

    def wait_drained(after: float, timeout: float) -> float | None:
        """When the broker's store held no more than ``DRAIN_SLACK`` messages for the ingest,
        from ``after`` on (a tick's resolution: ``SYS_TICK_S``). Mosquitto publishes a $SYS
        value only when it changed: a value older than ``after`` still holds when no new one
        came for a tick."""
        end = time.time() + timeout
        with lock:
            while time.time() < end:
                if samples:
                    t, b = samples[-1]
                    if b <= DRAIN_SLACK:
                        if t > after:
                            return t
                        if time.time() - after > SYS_TICK_S + 0.5:
                            return after
                sampled.wait(0.1)
        return None

    out = []
    try:
        for ph in cfg["phases"]:
            name, rate, st = ph["name"], ph["rate"], _phase_state()
            _mark(name, "start")
            cpu0, t0 = time.process_time(), time.time()
            t_end = t0 + ph["seconds"]
            base_readings = acked["readings"]
            stop = threading.Event()
            th = threading.Thread(
                target=_mqtt_injector,
                args=(probe, inj, name, ph["inject_every"], t0, t_end, stop),
                daemon=True,
            )
            th.start()
            throttled = 0.0
            while time.time() < t_end:
                if rate:
                    due = t0 + st["sent"] / rate
                    if due > time.time():
                        time.sleep(due - time.time())
                w0 = time.time()
                while backlog() > cfg["backlog"] and time.time() < t_end:
                    time.sleep(0.005)
                throttled += time.time() - w0
                if time.time() >= t_end:
                    break
                doc = docs.take()
                if doc is None:
                    st["ran_out"] = True
                    break
                n, body = doc
                window.acquire()
                info = pub.publish(BULK, body, qos=1)
                with lock:
                    if info.mid in early:
                        settle(n, early.pop(info.mid))
                    else:
                        sent[info.mid] = n
                st["sent"] += n
                st["posts"] += 1
            t_stop = time.time()
            stop.set()
            th.join()
            end = time.time() + 120
            while time.time() < end:
                with lock:
                    if not sent:
                        break
                time.sleep(0.005)
            t_acked = time.time()
            drained = wait_drained(t_acked, 300)
            t_done = drained or time.time()
            _mark(name, "done")
            with lock:
                st["acked"] = acked["readings"] - base_readings
                problems = [f"{len(failures)} lost ({failures[0]})"] if failures else []
                if sent:
                    problems.append(f"{len(sent)} not acknowledged by the broker")
                if drained is None:
                    problems.append("the ingest did not take the broker's backlog in 300 s")
                st["errors"] = len(failures) + len(sent) + (drained is None)
                st["error"] = "; ".join(problems) or None
            st.update(
                t0=t0,
                t_stop=t_stop,
                t_done=t_done,
                drained=drained is not None,
                throttled_s=throttled,
                max_backlog=max((b for t, b in samples if t0 <= t <= t_done), default=0),
                cpu=time.process_time() - cpu0,
            )
            out.append({"name": name, "rate": rate, **st})
    finally:
        for c in (pub, mon, probe):
            c.disconnect()
            c.loop_stop()
    return out


# -- running one transport -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli() -> str:
    path = Path(sys.executable).with_name("citytwin")
    return str(path) if path.exists() else shutil.which("citytwin") or "citytwin"


@dataclass
class Proc:
    """A process this benchmark started (ended by its pid only)."""

    popen: subprocess.Popen
    name: str
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def tail(self, n: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _cpu(pid: int) -> float:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return float("nan")


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return float("nan")


def start_broker(tmp: Path) -> tuple[Proc, int]:
    """A private Mosquitto: in memory, $SYS every second, no per-session queue limit."""
    if shutil.which("mosquitto") is None:
        raise RuntimeError("Mosquitto is not installed (apt-get install mosquitto)")
    port = _free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "sys_interval 1\nmax_queued_messages 0\n"
    )
    log = tmp / "mosquitto.log"
    popen = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    proc = Proc(popen, "mosquitto", log)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.time() > deadline or popen.poll() is not None:
                proc.stop()
                raise RuntimeError(f"mosquitto did not start: {proc.tail()}") from None
            time.sleep(0.05)


def start_receiver(tmp: Path, name: str) -> tuple[Proc, int, Path]:
    """The webhook receiver process; its port and the file it records to."""
    out = tmp / f"{name}-webhooks.jsonl"
    popen = subprocess.Popen(
        [sys.executable, __file__, "--_receiver", str(out), SECRET],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(popen.stdout.readline())
    return Proc(popen, "receiver"), port, out


class SseListener:
    """Follows ``GET /events`` of the service; records when each ``alarm.raised`` arrives."""

    def __init__(self, url: str) -> None:
        import httpx

        self.records: list[dict[str, Any]] = []
        self.client = httpx.Client(base_url=url, timeout=None)
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        event = None
        try:
            with self.client.stream("GET", "/events") as r:
                self.ready.set()
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "alarm.raised":
                        d = orjson.loads(line[5:])
                        self.records.append(
                            {
                                "t": time.time(),
                                "source": d.get("source"),
                                "raised_at": d.get("raised_at"),
                            }
                        )
                    elif not line:
                        event = None
        except Exception:  # closed at the end
            pass
        finally:
            self.ready.set()

    def close(self) -> None:
        self.client.close()
        self.thread.join(5)


@dataclass
class Run:
    """What one transport's run measured."""

    kind: str
    phases: list[dict]
    injections: list[dict]
    marks: dict[tuple[str, str], dict[str, float]]
    webhooks: list[dict]
    sse: list[dict]
    store: dict[str, Any]
    docs_sent: int
    docs: int
    server_rss_mb: float


def run_transport(
    kind: str,
    twin: Path,
    tmp: Path,
    pay: Payloads,
    probes: list[str],
    phases: list[dict],
    args: argparse.Namespace,
    receiver: tuple[Proc, int, Path],
    broker: tuple[str, int, Proc | None] | None,
) -> Run:
    """One transport: the service, the load process, the phases, then the twin's figures."""
    recv_proc, recv_port, recv_out = receiver
    hook = f"bench=http://127.0.0.1:{recv_port}/hook={SECRET}"
    log = tmp / f"{kind}-service.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--twin", str(twin), "--clock", "data", "--webhook", hook]
    if kind == "http":
        port = _free_port()
        cmd = [_cli(), "sense", "serve", *common, "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
    else:
        assert broker is not None
        cmd = [_cli(), "sense", "mqtt", *common, "--broker", f"{broker[0]}:{broker[1]}"]
        cmd += ["--workers", str(args.workers)]
        url = ""
    server = Proc(
        subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env),
        f"citytwin sense {'serve' if kind == 'http' else 'mqtt'}",
        log,
    )
    load: Proc | None = None
    sse: SseListener | None = None
    try:
        _wait_ready(kind, server, url)
        if kind == "http":
            sse = SseListener(url)
        cfg = {
            "kind": kind,
            "payloads": str(pay.path),
            "probes": probes,
            "phases": phases,
            "url": url,
            "concurrency": args.concurrency,
            "broker": [broker[0], broker[1]] if broker else None,
            "inflight": args.inflight,
            "backlog": args.mqtt_backlog,
        }
        load = Proc(
            subprocess.Popen(
                [sys.executable, __file__, "--_load", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            ),
            "load",
        )
        pids = {"service": server.pid, "load": load.pid, "receiver": recv_proc.pid}
        if broker is not None and broker[2] is not None:
            pids["broker"] = broker[2].pid
        marks: dict[tuple[str, str], dict[str, float]] = {}
        result = None
        assert load.popen.stdout is not None
        for line in load.popen.stdout:
            if line.startswith("MARK "):
                _, name, what, t = line.split()
                marks[(name, what)] = {"t": float(t), **{k: _cpu(p) for k, p in pids.items()}}
                print(f"  {kind}: {name} {what}", file=sys.stderr)
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        if load.popen.wait() != 0 or result is None:
            raise RuntimeError(f"the {kind} load process failed (exit {load.popen.returncode})")
        rss = _rss_mb(server.pid)
        _wait_webhooks(recv_out, result["injections"], timeout=30)
    finally:
        if sse is not None:
            sse.close()
        if load is not None:
            load.stop(10)
        code = server.stop(120)
    if code not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM after shutting down
        print(f"{server.name} exited {code}:\n{server.tail()}", file=sys.stderr)
    return Run(
        kind,
        result["phases"],
        result["injections"],
        marks,
        _read_jsonl(recv_out),
        sse.records if sse is not None else [],
        read_twin(twin),
        result["docs_sent"],
        result["docs"],
        rss,
    )


def _wait_ready(kind: str, server: Proc, url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited {server.popen.returncode}:\n{server.tail()}")
        if kind == "http":
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return
        elif "consuming MQTT" in (server.log.read_text(errors="replace") if server.log else ""):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} was not ready within {timeout:.0f} s:\n{server.tail()}")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(source: Any, raised_at: Any) -> tuple[str, int] | None:
    if not source or not raised_at:
        return None
    return str(source), int(pd.Timestamp(raised_at).as_unit("ns").value)


def _wait_webhooks(path: Path, injections: list[dict], timeout: float) -> None:
    """Until every injection's alarm.raised webhook arrived (or ``timeout`` seconds)."""
    want = {(r["probe"], int(r["t_ns"])) for r in injections if r.get("pub")}
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = {
            _key(w.get("source"), w.get("raised_at"))
            for w in _read_jsonl(path)
            if w.get("event") == "alarm.raised"
        }
        if want <= got:
            return
        time.sleep(0.5)


def read_twin(path: Path) -> dict[str, Any]:
    """What the twin holds after a run: readings, dead letters, commits, alarms, outbox."""
    from citytwin.store import open_store

    store = open_store(path, read_only=True)
    try:
        con = store.con
        obs = con.execute("SELECT count(*) FROM observations").fetchone()[0]
        rejected = con.execute("SELECT count(*) FROM rejected_observations").fetchone()[0]
        log = store.ingest_log()
        alarms = store.alarms(limit=None)
        outbox = store.notifications(limit=None)
        deliveries = store.deliveries()
    finally:
        store.close()
    return {
        "observations": int(obs),
        "rejected": int(rejected),
        "ingest_log": log,
        "alarms": alarms,
        "outbox": outbox,
        "deliveries": deliveries,
    }


# -- figures ---------------------------------------------------------------------------------
def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return f"{p50:,.0f} / {p95:,.0f} / {p99:,.0f} / {a.max():,.0f} ms"


def latency(run: Run, phase: str) -> dict[str, Any]:
    """Per injection of ``phase``: publish -> 201, -> SSE alarm.raised, -> outbox row created,
    -> webhook received (seconds)."""
    inj = [r for r in run.injections if r["phase"] == phase and r.get("pub")]
    first_hook: dict[tuple[str, int], float] = {}
    for w in run.webhooks:
        if w.get("event") == "alarm.raised" and w.get("ok"):
            k = _key(w.get("source"), w.get("raised_at"))
            if k is not None:
                first_hook[k] = min(first_hook.get(k, np.inf), w["t"])
    first_sse: dict[tuple[str, int], float] = {}
    for s in run.sse:
        k = _key(s.get("source"), s.get("raised_at"))
        if k is not None:
            first_sse[k] = min(first_sse.get(k, np.inf), s["t"])
    created: dict[tuple[str, int], float] = {}
    ob = run.store["outbox"]
    if len(ob):
        for ev, payload, at in zip(ob["event"], ob["payload"], ob["created_at"], strict=True):
            if ev != "alarm.raised":
                continue
            alarm = orjson.loads(payload).get("alarm") or {}
            k = _key(alarm.get("source"), alarm.get("raised_at"))
            if k is not None:
                ts = pd.Timestamp(at)
                ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
                created[k] = ts.timestamp()
    out: dict[str, Any] = {"n": len(inj), "ack": [], "sse": [], "created": [], "hook": []}
    out["dispatch"] = []  # notification created (commit began) -> webhook received
    missing = 0
    for r in inj:
        k = (r["probe"], int(r["t_ns"]))
        if r.get("ack") is not None and r.get("status") == 201:
            out["ack"].append(r["ack"] - r["pub"])
        if k in first_sse:
            out["sse"].append(first_sse[k] - r["pub"])
        if k in created:
            out["created"].append(created[k] - r["pub"])
        if k in first_hook:
            out["hook"].append(first_hook[k] - r["pub"])
            if k in created:
                out["dispatch"].append(first_hook[k] - created[k])
        else:
            missing += 1
    out["missing"] = missing
    return out


def phase_rows(run: Run, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    log = run.store["ingest_log"]
    label = "HTTP" if run.kind == "http" else f"MQTT ({args.workers} workers)"
    for ph in run.phases:
        if ph["name"] == "warmup":
            continue
        name = ph["name"]
        loaded = ph["t_stop"] - ph["t0"]  # the load ran
        span = ph["t_done"] - ph["t0"]  # until all it sent was stored
        m0, m1 = run.marks.get((name, "start")), run.marks.get((name, "done"))
        cpu = (
            {k: (m1[k] - m0[k]) / (m1["t"] - m0["t"]) for k in m0 if k != "t"} if m0 and m1 else {}
        )
        at = pd.to_datetime(log["committed_at"]) if len(log) else pd.Series([], dtype="M8[us]")
        if getattr(at.dt, "tz", None) is not None:
            at = at.dt.tz_convert(None)
        at = at.dt.as_unit("us").astype("int64").to_numpy() / 1e6 if len(log) else np.array([])
        during = (at >= ph["t0"]) & (at < ph["t_stop"])
        committed = int(log["n"].to_numpy()[during].sum()) if len(log) else 0
        commits = int(during.sum())
        per = committed / commits if commits else float("nan")
        rate = committed / loaded
        if ph["rate"]:
            what = f"paced: {ph['rate']:,.0f} readings/s offered, {ph['sent'] / loaded:,.0f} sent"
            target = "keeps up"
        else:
            what = "as fast as it takes them"
            target = ">= 50,000"
        rows.append(
            (
                f"{label}, {name}: {what}; committed while loaded ({loaded:.1f} s, ingest log)",
                f"{rate:,.0f} obs/s",
                "",
                target,
            )
        )
        backlog = ""
        if run.kind == "mqtt":
            backlog = (
                f"; at most {ph.get('max_backlog', 0)} messages waited at the broker (publisher"
                f" paused {ph.get('throttled_s', 0):.1f} s at --mqtt-backlog)"
            )
        rows.append(
            (
                f"  acknowledged {ph['acked']:,} readings ({ph['posts']:,} documents), all stored "
                f"{span - loaded:.1f} s after the load stopped{backlog}",
                f"{ph['acked'] / span:,.0f} obs/s",
                "",
                "",
            )
        )
        if ph["errors"]:
            rows.append((f"  errors: {ph['errors']} ({ph['error']})", "", "", "none"))
        if ph.get("ran_out"):
            rows.append(
                ("  the load ran out of pre-encoded readings: raise --max-rate", "", "", "")
            )
        rows.append(
            (
                f"  commits {commits:,} ({commits / loaded:.1f}/s), readings per commit",
                f"{per:,.0f}",
                "",
                "",
            )
        )
        if cpu:
            parts = [f"service {cpu['service']:.0%}", f"load {cpu['load']:.0%}"]
            if "broker" in cpu:
                parts.append(f"broker {cpu['broker']:.0%}")
            parts.append(f"receiver {cpu['receiver']:.0%}")
            rows.append(("  CPU (100 % = one core): " + ", ".join(parts), "", "", "2 cores"))
        if ph["cpu"] > 0:
            rows.append(
                (
                    f"  load process ceiling: readings sent per CPU second of it "
                    f"({ph['cpu']:.1f} CPU s)",
                    f"{ph['sent'] / ph['cpu']:,.0f} obs/s",
                    "",
                    "",
                )
            )
        lat = latency(run, name)
        if lat["n"]:
            rows.append(
                (
                    f"  alarm latency p50 / p95 / p99 / max over {lat['n']} injected alarms "
                    f"({lat['missing']} without webhook):",
                    "",
                    "",
                    "",
                )
            )
            if run.kind == "http":
                rows.append(
                    ("    publish -> 201 (committed: alarm stored)", _pct(lat["ack"]), "", "")
                )
                rows.append(
                    ("    publish -> alarm.raised on the SSE stream", _pct(lat["sse"]), "", "")
                )
            rows.append(
                (
                    "    publish -> its commit began (outbox created_at)",
                    _pct(lat["created"]),
                    "",
                    "",
                )
            )
            rows.append(
                ("    publish -> webhook received (signed)", _pct(lat["hook"]), "", "p99 <= 1 s")
            )
            rows.append(
                (
                    "    of which: its commit began -> webhook received (the dispatcher)",
                    _pct(lat["dispatch"]),
                    "",
                    "",
                )
            )
    return rows


def twin_rows(run: Run, history: int, injected: int) -> list[Row]:
    s = run.store
    acked = sum(p["acked"] for p in run.phases)
    expected = history + acked + 2 * injected
    al = s["alarms"]
    probe_rule = al["rule_id"].eq("gas-leak") if len(al) else pd.Series([], dtype=bool)
    by_rule = al.loc[~probe_rule, "rule_id"].value_counts().to_dict() if len(al) else {}
    ob = s["outbox"]
    status = ob["status"].value_counts().to_dict() if len(ob) else {}
    bad = sum(1 for w in run.webhooks if not w.get("ok"))
    timed = [p for p in run.phases if p["name"] != "warmup"]
    t0, t1 = min(p["t0"] for p in timed), max(p["t_done"] for p in timed)
    span = max(t1 - t0, 1e-9)
    delivered = _within(s["deliveries"], "at", t0, t1)
    commits = _within(s["ingest_log"], "committed_at", t0, t1)
    return [
        (
            f"  stored in the twin afterwards: readings (history {history:,} + acknowledged "
            f"{acked:,} + injected {2 * injected:,} = {expected:,})",
            f"{s['observations']:,}",
            "",
            "all",
        ),
        ("  dead letters (refused readings)", f"{s['rejected']:,}", "", "0"),
        (
            f"  alarms: gas {int(probe_rule.sum()):,} (of {injected:,} injected); others by rule: "
            + (", ".join(f"{k} {v}" for k, v in by_rule.items()) or "none"),
            f"{len(al):,}",
            "",
            "",
        ),
        (
            "  webhooks: outbox "
            + ", ".join(f"{k} {v}" for k, v in status.items())
            + f"; received {len(run.webhooks):,}, bad signatures {bad}",
            "",
            "",
            "",
        ),
        (
            f"  webhook attempts while loaded: {delivered / span:.1f}/s; commits "
            f"{commits / span:.1f}/s (each attempt is recorded in the store: it waits for the "
            "commit in progress)",
            f"{delivered:,}",
            "",
            "",
        ),
        ("  service resident memory at the end", f"{run.server_rss_mb:,.0f} MB", "", ""),
    ]


def _within(frame: pd.DataFrame, column: str, t0: float, t1: float) -> int:
    """Rows of ``frame`` whose ``column`` (a UTC time) lies in [t0, t1] (unix seconds)."""
    if not len(frame):
        return 0
    t = pd.to_datetime(frame[column])
    if t.dt.tz is not None:
        t = t.dt.tz_convert(None)
    sec = t.dt.as_unit("us").astype("int64").to_numpy() / 1e6
    return int(((sec >= t0) & (sec <= t1)).sum())


# -- in-process breakdown (peers) ------------------------------------------------------------
class _Timer:
    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def wrap(self, name: str, fn):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t

        return timed


def breakdown(
    twin: Path, tmp: Path, pay: Payloads, group: int, per_alarm: int, budget: float
) -> list[Row]:
    """Decode, raw append, rules alone, and the whole pipeline in this process, on the first
    documents; per commit the time of each part."""
    from citytwin.sensing.payloads import decode_data_array, loads, observation_ids
    from citytwin.store import open_store
    from citytwin.warning.engine import Catalog, EngineState, evaluate

    docs = min(len(pay.index), 400)
    bodies = pay.bodies(0, docs)
    t = time.perf_counter()
    frames = []
    for b in bodies:
        frames.append(decode_data_array(loads(b, source="bench"), source="bench"))
        if time.perf_counter() - t > budget:
            break
    decode_s = time.perf_counter() - t
    n_dec = sum(len(f) for f in frames)
    t = time.perf_counter()
    for f in frames[:50]:
        observation_ids(
            f["datastream_id"].astype(str).tolist(),
            pd.to_datetime(f["phenomenon_time"], utc=True, format="ISO8601"),
        )
    ids_s = (time.perf_counter() - t) / sum(len(f) for f in frames[:50])
    groups = [
        pd.concat(frames[k : k + group], ignore_index=True) for k in range(0, len(frames), group)
    ]
    rows: list[Row] = [
        (
            f"in this process, the first {len(frames)} documents in groups of {group} "
            f"({len(groups[0]):,} readings, as the service's commits):",
            "",
            "",
            "",
        ),
        ("  decode (orjson + decode_data_array)", f"{n_dec / decode_s:,.0f} obs/s", "", ""),
        (
            "  the HTTP answer's self links (observation_ids), per reading",
            f"{1 / ids_s:,.0f} obs/s",
            "",
            "",
        ),
    ]

    # peer: the store's append alone, no rules
    copy = tmp / "peer-append.twin"
    shutil.copy(twin, copy)
    store = open_store(copy)
    n = 0
    t = time.perf_counter()
    for g in groups:
        store.append_observations(g)
        n += len(g)
        if time.perf_counter() - t > budget:
            break
    append_s = time.perf_counter() - t
    streams = store.datastreams()
    store.close()
    rows.append(
        (
            "  peer: append_observations alone (no rules, no alarms)",
            "",
            f"{n / append_s:,.0f} obs/s",
            "",
        )
    )

    # peer: the rule engine alone
    from citytwin.app.monitoring import anomaly_baseline
    from citytwin.warning.rules import virtual_city_rules

    store = open_store(copy, read_only=True)
    rules = virtual_city_rules()
    base = anomaly_baseline(store, rules)
    store.close()
    catalog = Catalog(streams)
    state = EngineState()
    n = events = 0
    t = time.perf_counter()
    for g in groups:
        res = evaluate(rules, catalog, g, state, baseline=base)
        state = res.state
        n += len(g)
        events += len(res.events)
        if time.perf_counter() - t > budget:
            break
    rules_s = time.perf_counter() - t
    rows.append(
        (
            f"  peer: the rule engine alone (virtual city rules, {len(base.table):,} baseline rows;"
            f" {events} events)",
            "",
            f"{n / rules_s:,.0f} obs/s",
            "",
        )
    )

    # the whole pipeline without a transport, timed by part, at two commit sizes
    probes = [str(x) for x in pd.unique(pd.concat(frames)["datastream_id"]) if "gas" in str(x)]
    for docs_per_commit in sorted({1, group}):
        r = _pipeline(twin, tmp, frames, docs_per_commit, probes, per_alarm, budget)
        rows.append(
            (
                f"  the ingest pipeline without a transport: {r['commits']} commits of "
                f"{r['per_commit']:,} readings, an alarm raised every {per_alarm:,} readings "
                f"({r['with_events']} commits with alarm changes)",
                f"{r['rate']:,.0f} obs/s",
                "",
                "",
            )
        )
        for k, v in r["parts"].items():
            rows.append((f"    {k}", f"{v * 1000:,.1f} ms", "", ""))
    per_doc = len(frames[0])
    rows.append(
        (
            f"    (and before, in the transport: decoding a document of {per_doc:,} readings)",
            f"{per_doc / (n_dec / decode_s) * 1000:,.1f} ms",
            "",
            "",
        )
    )
    return rows


def _pipeline(
    twin: Path,
    tmp: Path,
    frames: list[pd.DataFrame],
    docs_per_commit: int,
    probes: list[str],
    per_alarm: int,
    budget: float,
) -> dict[str, Any]:
    """``frames`` through a service's ``Ingestor`` (as ``sense serve`` builds it, without a
    transport, dispatcher or clock), ``docs_per_commit`` per commit, a probe alarm every
    ``per_alarm`` readings; the mean time of each part of a commit."""
    from citytwin.sensing.payloads import decode_data_array
    from citytwin.services.runtime import MonitoringService

    copy = tmp / f"peer-pipeline-{docs_per_commit}.twin"
    shutil.copy(twin, copy)
    service = MonitoringService.open(copy, clock="data")
    ing = service.ingestor
    timer = _Timer()
    ing.store.append_observations = timer.wrap("append", ing.store.append_observations)
    ing._evaluate = timer.wrap("rules", ing._evaluate)
    alarms = ing._alarms
    with_events = [0]

    def timed_alarms(events: list, now: Any) -> Any:
        t = time.perf_counter()
        try:
            return alarms(events, now)
        finally:
            if any(len(e) for e in events):
                with_events[0] += 1
                timer.s["alarms"] = timer.s.get("alarms", 0.0) + time.perf_counter() - t

    ing._alarms = timed_alarms
    ing._commit = timer.wrap("commit", ing._commit)
    ing.start()
    n = k = 0
    last = 0
    next_alarm = per_alarm
    t = time.perf_counter()
    try:
        for c0 in range(0, len(frames), docs_per_commit):
            group = frames[c0 : c0 + docs_per_commit]
            n_group = sum(len(f) for f in group)
            if n + n_group >= next_alarm:
                end = pd.to_datetime(group[-1]["phenomenon_time"]).max()
                at = max(end.as_unit("ns").value + PROBE_AHEAD.value, last + 10**9)
                last = at
                body = _probe_body(probes[k % len(probes)], at)
                group = [*group, decode_data_array(orjson.loads(body))]
                k += 1
                next_alarm += per_alarm
            ing.ingest(pd.concat(group, ignore_index=True), source="replay")
            n += n_group
            if time.perf_counter() - t > budget:
                break
        total = time.perf_counter() - t
    finally:
        ing.stop()
        service.store.close()
    commits = max(ing.stats.commits, 1)
    whole = timer.s.pop("commit", 0.0)
    alarm_s = timer.s.pop("alarms", 0.0)
    parts = {
        "append, per commit": timer.s.get("append", 0.0) / commits,
        "rules, per commit": timer.s.get("rules", 0.0) / commits,
        "alarms, incidents, outbox, per commit with alarm changes": alarm_s
        / max(with_events[0], 1),
        "transaction, ingest log, checkpoint, per commit": (whole - sum(timer.s.values()) - alarm_s)
        / commits,
    }
    return {
        "commits": commits,
        "per_commit": n // commits,
        "rate": n / total,
        "with_events": with_events[0],
        "parts": parts,
    }


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the max-rate phase")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="0: leave it out")
    parser.add_argument("--rate", type=float, default=50_000.0, help="the paced phase's rate")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="10 s phases, 3 s warm-up")
    parser.add_argument("--only", choices=("http", "mqtt"), help="one transport only")
    parser.add_argument("--area", type=float, default=4.0, help="virtual city, km²")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--twin", type=Path, help="start from a copy of this twin instead")
    parser.add_argument("--batch", type=int, default=2000, help="readings per document")
    parser.add_argument("--steps-per-doc", type=int, default=5)
    parser.add_argument(
        "--max-rate", type=float, default=160_000.0, help="readings/s to pre-encode (max phase)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="MQTT ingest workers")
    parser.add_argument("--inflight", type=int, default=20, help="MQTT publisher window")
    parser.add_argument(
        "--mqtt-backlog",
        type=int,
        default=50,
        help="messages waiting for the ingest before the publisher pauses",
    )
    parser.add_argument("--broker", help="HOST:PORT of a running broker (default: a private one)")
    parser.add_argument("--inject-every", type=float, default=0.5, help="seconds between alarms")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep twins, payloads and logs here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.paced_seconds, args.warmup = 10.0, 10.0, 3.0

    errors: list[str] = []
    rows: list[Row] = []
    load_before = os.getloadavg()
    started = time.time()
    procs: list[Proc] = []
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            tmp = args.workdir
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        seeded = tmp / "seeded.twin"
        info = prepare_twin(seeded, args.area, args.seed, args.twin)
        load: CityLoad = info["load"]
        print(
            f"twin: {info['datastreams']:,} datastreams in {info['built_s']:.0f} s; "
            f"{info['history']:,} history readings",
            file=sys.stderr,
        )
        phases = [{"name": "warmup", "seconds": args.warmup, "rate": None, "inject_every": 0}]
        phases.append(
            {
                "name": "max",
                "seconds": args.seconds,
                "rate": None,
                "inject_every": args.inject_every,
            }
        )
        if args.paced_seconds:
            phases.append(
                {
                    "name": "paced",
                    "seconds": args.paced_seconds,
                    "rate": args.rate,
                    "inject_every": args.inject_every,
                }
            )
        need = args.max_rate * (args.warmup + args.seconds) + args.rate * args.paced_seconds
        start = (info["history_end"] + pd.Timedelta("1h")).floor("h")
        pay = encode_payloads(
            load, tmp / "payloads.bin", int(need), start, args.batch, args.steps_per_doc
        )
        if pay.last > pd.Timestamp.now() + pd.Timedelta("4min"):
            raise SystemExit("the readings would reach into the future: lower --max-rate")
        mb = pay.path.stat().st_size / 2**20
        rows.append(
            (
                f"twin: virtual city {args.area:g} km² ({info['datastreams']:,} datastreams: "
                + ", ".join(f"{k} {v}" for k, v in info["by_property"].items())
                + f"), {info['history']:,} readings of inlet-flow history for the anomaly rule",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                f"load: {pay.readings:,} readings pre-encoded ({pay.steps} one-minute steps from "
                f"{pay.first:%Y-%m-%d %H:%M} UTC), {len(pay.index):,} documents of "
                f"{args.batch:,} ({mb:,.0f} MB), encoded in {pay.encode_s:.1f} s",
                "",
                "",
                "",
            )
        )
        probes = load.ids[load.probes].tolist()
        runs: list[Run] = []
        try:
            kinds = [args.only] if args.only else ["http", "mqtt"]
            for kind in kinds:
                twin = tmp / f"{kind}.twin"
                shutil.copy(seeded, twin)
                receiver = start_receiver(tmp, kind)
                procs.append(receiver[0])
                broker = None
                if kind == "mqtt":
                    if args.broker:
                        host, _, port = args.broker.rpartition(":")
                        broker = (host, int(port), None)
                    else:
                        bproc, bport = start_broker(tmp)
                        procs.append(bproc)
                        broker = ("127.0.0.1", bport, bproc)
                try:
                    run = run_transport(
                        kind, twin, tmp, pay, probes, phases, args, receiver, broker
                    )
                except Exception as exc:
                    errors.append(f"{kind}: {exc}")
                    print(f"{kind} failed: {exc}", file=sys.stderr)
                    continue
                finally:
                    receiver[0].stop(10)
                    if broker is not None and broker[2] is not None:
                        broker[2].stop(10)
                    if kind == "mqtt" and args.broker:
                        from citytwin.sensing.mqtt import drop_sessions

                        with contextlib.suppress(Exception):
                            drop_sessions(
                                [f"citytwin-ingest-{i}" for i in range(args.workers)],
                                broker[0],
                                broker[1],
                            )
                runs.append(run)
                injected = sum(1 for r in run.injections if r.get("pub"))
                rows += phase_rows(run, args)
                rows += twin_rows(run, info["history"], injected)
                for ph in run.phases:
                    if ph["errors"]:
                        errors.append(f"{kind} {ph['name']}: {ph['error']}")
        finally:
            for p in procs:
                p.stop(10)
        if not args.no_breakdown:
            group = 10  # documents per commit: as the service's largest commits
            sizes = [
                r.store["ingest_log"]["n"].median() for r in runs if len(r.store["ingest_log"])
            ]
            if sizes:
                group = max(1, round(max(sizes) / args.batch))
            per_alarm = int(args.rate * args.inject_every)
            budget = 4.0 if args.quick else 10.0
            rows += breakdown(seeded, tmp, pay, group, per_alarm, budget)

    from rich.console import Console
    from rich.table import Table

    load_after = os.getloadavg()
    table = Table(
        title=f"CityTwin live ingestion ({os.cpu_count()} cores; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.time() - started:.0f} s)"
    )
    for name, justify in (
        ("run", "left"),
        ("CityTwin", "right"),
        ("peer", "right"),
        ("target", "left"),
    ):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=170).print(table)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_receiver":
        _receiver_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_load":
        _load_main(sys.argv[2])
    else:
        sys.exit(main())

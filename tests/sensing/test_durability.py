"""Durability (issue 5): kill -9 the ingest process in the middle of a load; after a restart
every acknowledged reading (HTTP 2xx, MQTT PUBACK) is in the store, sending everything again
stores each reading once, and the alarms (their history and notifications included) are those
of a clean run over the same readings: none lost, none duplicated.

Real processes (``citytwin sense serve`` / ``citytwin sense mqtt``), the real Mosquitto, a real
twin with 300 datastreams and a rule file (threshold, sustained, rate of change) whose levels
part of the load crosses. The kill lands after the engine's first checkpoint, so the restart
has to recover the rules' state from the readings committed after it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.model import validate_frame
from citytwin.sensing.ingest import STATE_DOCUMENT, Ingestor
from citytwin.sensing.mqtt import publish_frames
from citytwin.sensing.payloads import encode_data_array
from citytwin.store import open_store
from citytwin.warning.alarms import parse_webhooks
from citytwin.warning.rules import load_rules

pytestmark = pytest.mark.slow

N_GAS = N_PRESSURE = 150
GAS = [f"GD-{i}:gas" for i in range(N_GAS)]
PRESSURE = [f"PS-{i}:pressure" for i in range(N_PRESSURE)]
MINUTES = 240  # a reading a minute: 72,000 readings
T0 = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)).floor("h")
RULES = """
version: 1
rules:
  - id: gas
    kind: threshold
    applies_to: {observed_property: gas_concentration}
    unit: "%LEL"
    levels: {blue: 5, yellow: 10, orange: 25, red: 50}
    hysteresis: 2
  - id: pressure-low
    kind: sustained
    applies_to: {observed_property: pressure}
    unit: MPa
    direction: below
    levels: {yellow: 0.16, orange: 0.14, red: 0.10}
    hysteresis: 0.01
    duration: 5min
  - id: pressure-falling
    kind: rate_of_change
    applies_to: {observed_property: pressure}
    unit: MPa
    direction: below
    per: minute
    window: 5min
    levels: {yellow: -0.01, red: -0.03}
    hysteresis: 0.002
"""
# every alarm change is queued in the outbox (port 9 is closed: nothing is delivered)
HOOK = {"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": "s3cret"}
WEBHOOK = f"{HOOK['name']}={HOOK['url']}={HOOK['secret']}"
CLI = [sys.executable, "-c", "import sys; from citytwin.cli import app; sys.exit(app())"]


# -- the twin and the load -------------------------------------------------------------------
@pytest.fixture
def twin(make_twin, tmp_path) -> tuple[Path, Path, Path]:
    """(the twin, an untouched copy of it for the clean run, the rule file)."""
    store = make_twin(extent=(0, 0, 20000, 2000))
    n = N_GAS + N_PRESSURE
    ids = [f"GD-{i}" for i in range(N_GAS)] + [f"PS-{i}" for i in range(N_PRESSURE)]
    devs = gpd.GeoDataFrame(
        {
            "id": ids,
            "class": ["gas_detector"] * N_GAS + ["pressure_sensor"] * N_PRESSURE,
            "feature_id": [f"node-{i}" for i in range(n)],
            "network": ["gas"] * N_GAS + ["water_supply"] * N_PRESSURE,
        },
        geometry=shapely.points(np.c_[np.arange(n) * 50.0, np.full(n, 50.0)]),
        crs="EPSG:32650",
    )
    store.insert("devices", validate_frame("devices", devs, source="test"))
    store.provision(
        pd.DataFrame(
            {
                "datastream_id": GAS + PRESSURE,
                "thing_id": ids,
                "observed_property": ["gas_concentration"] * N_GAS + ["pressure"] * N_PRESSURE,
            }
        )
    )
    path = Path(store.path)
    store.close()
    clean = tmp_path / "clean.twin"
    shutil.copy(path, clean)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return path, clean, rules


def load(minutes: int = MINUTES, *, seed: int = 5) -> pd.DataFrame:
    """A reading of every datastream every minute (sorted by datastream, time): gas detectors
    mostly quiet, every third one leaking (up to 12, 30 or 70 %LEL and back) every 40 min;
    pressures steady, every fourth sensor falling fast to 0.12 MPa for 7 min every 45 min."""
    rng = np.random.default_rng(seed)
    m = np.arange(minutes)
    gas = 1.0 + 2.0 * rng.random((N_GAS, minutes))
    for i in range(0, N_GAS, 3):
        phase = (m - 7 * i) % 40
        peak = (12.0, 30.0, 70.0)[(i // 3) % 3]
        gas[i] += peak * np.clip(1 - np.abs(phase - 10) / 10, 0, None)
    pressure = 0.30 + 0.01 * rng.random((N_PRESSURE, minutes))
    for i in range(0, N_PRESSURE, 4):
        phase = (m - 11 * i) % 45
        pressure[i] -= 0.18 * np.clip(np.minimum(phase, 13 - phase) / 3, 0, 1)
    ids = np.asarray(GAS + PRESSURE, object)
    return pd.DataFrame(
        {
            "datastream_id": np.repeat(ids, minutes),
            "phenomenon_time": np.tile(T0 + pd.to_timedelta(m, "min"), len(ids)),
            "result": np.vstack([gas, pressure]).round(4).ravel(),
        }
    )


def minute_of(frame: pd.DataFrame) -> np.ndarray:
    return ((frame["phenomenon_time"] - T0) // pd.Timedelta(minutes=1)).to_numpy()


def lanes(frame: pd.DataFrame, n: int, minutes_per_batch: int) -> list[list[pd.DataFrame]]:
    """The load cut for ``n`` senders: each its own datastreams, in batches in time order (so
    every datastream's readings come in time order, however the senders interleave)."""
    lane = pd.factorize(frame["datastream_id"])[0] % n
    batch = minute_of(frame) // minutes_per_batch
    return [
        [b.reset_index(drop=True) for _, b in frame[lane == k].groupby(batch[lane == k])]
        for k in range(n)
    ]


def keys(frame: pd.DataFrame) -> set[tuple[str, int, float]]:
    """(datastream, time in µs, value) of each reading."""
    t = pd.to_datetime(frame["phenomenon_time"], utc=True).to_numpy("datetime64[us]")
    return set(
        zip(
            frame["datastream_id"].astype(str),
            t.astype(np.int64).tolist(),
            frame["result"].to_numpy(float).round(6).tolist(),
            strict=True,
        )
    )


# -- processes -------------------------------------------------------------------------------
@pytest.fixture
def spawn() -> Iterator[Callable[[list[str], Path], subprocess.Popen]]:
    """Factory: a ``citytwin`` command in its own process, its output to a log file; killed
    at the end of the test if still running."""
    procs: list[subprocess.Popen] = []

    def run(args: list[str], log: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            p = subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    yield run
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], what: str, proc=None, timeout=60.0) -> None:
    """Poll until ``predicate()``; fail on the timeout or if ``proc`` ended."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    """Stop cleanly (SIGTERM: commit what is queued, checkpoint, close the twin). Uvicorn
    raises the signal again once it has shut down, so ``serve`` ends by SIGTERM; that the
    shutdown was complete is seen in the twin (``outcome``: the final checkpoint)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no clean stop within {timeout:g} s:\n{log.read_text()}") from None
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


# -- what the twin holds ---------------------------------------------------------------------
ALARM_KEY = ["rule_id", "source", "raised_at"]
ALARM_FIELDS = [*ALARM_KEY, "severity", "max_severity", "status", "updated_at", "cleared_at"]


def outcome(path: Path) -> dict[str, pd.DataFrame]:
    """The readings, alarms, the engine's alarm history, the notifications and incidents of
    a twin no process holds (it was stopped cleanly: its last commit is checkpointed)."""
    store = open_store(path, read_only=True)
    try:
        got = {
            "observations": store.observations(GAS + PRESSURE),
            "alarms": store.alarms(limit=None),
            "log": store.alarm_log(),
            "outbox": store.notifications(limit=None),
            "incidents": store.incidents(limit=None),
        }
        checkpoint = store.get_document(STATE_DOCUMENT)
        last = store.ingest_log(after_seq=-1)["seq"].max()
    finally:
        store.close()
    assert checkpoint is not None and checkpoint["seq"] >= last, "not stopped cleanly"
    got["log"] = got["log"][got["log"]["actor"] == "engine"]  # not the escalation reminders
    return got


def notified(outbox: pd.DataFrame) -> pd.DataFrame:
    """(event, alarm, at) of each notification of an alarm change (not the reminders)."""
    rows = [
        (event, doc["alarm"]["alarm_id"], doc["at"])
        for event, doc in zip(outbox["event"], map(json.loads, outbox["payload"]), strict=True)
        if event.startswith("alarm.") and event != "alarm.escalation"
    ]
    return pd.DataFrame(rows, columns=["event", "alarm_id", "at"])


def check_no_duplicates(got: dict[str, pd.DataFrame]) -> None:
    alarms = got["alarms"]
    assert not alarms.duplicated(ALARM_KEY).any()
    assert not alarms["alarm_id"].duplicated().any()
    active = alarms[alarms["status"] == "active"]
    assert not active.duplicated(["rule_id", "source"]).any()
    assert not got["log"].duplicated(["alarm_id", "at", "action"]).any()
    assert not notified(got["outbox"]).duplicated().any()
    members = [a for ids in got["incidents"]["alarm_ids"] for a in ids]
    assert len(members) == len(set(members)), "an alarm is in two incidents"


def clean_run(path: Path, rules: Path, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The same readings through an in-process ingestor, in one batch, without a crash."""
    store = open_store(path)
    hooks = parse_webhooks({"webhooks": [HOOK]})
    with Ingestor(store, load_rules(rules), webhooks=hooks) as ing:
        ing.ingest(frame, source="replay")
    store.close()
    return outcome(path)


def same_alarms(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    """The alarms, their history and their notifications are those of the clean run."""

    def rows(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
        return frame[cols].sort_values(cols).reset_index(drop=True)

    assert len(want["alarms"]) > 100
    assert set(want["alarms"]["rule_id"]) == {"gas", "pressure-low", "pressure-falling"}
    assert set(want["alarms"]["max_severity"]) >= {"yellow", "orange", "red"}
    pd.testing.assert_frame_equal(
        rows(got["alarms"], ALARM_FIELDS), rows(want["alarms"], ALARM_FIELDS), check_dtype=False
    )
    history = ["alarm_id", "at", "action", "severity"]
    pd.testing.assert_frame_equal(
        rows(got["log"], history), rows(want["log"], history), check_dtype=False
    )
    sent = ["alarm_id", "at", "event"]
    pd.testing.assert_frame_equal(
        rows(notified(got["outbox"]), sent), rows(notified(want["outbox"]), sent)
    )


# -- HTTP ------------------------------------------------------------------------------------
def test_kill_9_during_an_http_load(twin, tmp_path, spawn):
    """Four clients post DataArray batches to ``citytwin sense serve``; it is killed (SIGKILL)
    while requests are in flight. After a restart every reading answered with a 201 is stored
    (posting them again inserts nothing), posting everything again stores each reading once,
    and the alarms are those of a clean run."""
    path, clean, rules = twin
    frame = load()
    senders = lanes(frame, 4, 4)  # 4 × 60 batches of 300 readings
    total = sum(map(len, senders))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    args = ["sense", "serve", "--twin", str(path), "--port", url.rsplit(":", 1)[1]]
    args += ["--rules", str(rules), "--clock", "data", "--webhook", WEBHOOK]

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    first = spawn(args, log)
    wait_until(healthy, "the server to answer", first)
    acked: list[list[int]] = [[] for _ in senders]  # per sender, its batches answered 201
    errors: list[str] = []

    def send(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for b, batch in enumerate(senders[k]):
                try:
                    r = client.post("/v1.1/CreateObservations", content=encode_data_array(batch))
                except httpx.TransportError:
                    return  # the server is gone: this batch and the rest are not acknowledged
                if r.status_code != 201 or any(str(x).startswith("error") for x in r.json()):
                    errors.append(f"{r.status_code}: {r.text[:300]}")
                    return
                acked[k].append(b)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(senders))]
    t0 = time.monotonic()
    for t in threads:
        t.start()

    def loaded() -> bool:  # some acknowledged, for 2 s or half the load, whichever is first
        n = sum(map(len, acked))
        return n >= 8 and (time.monotonic() - t0 > 2.0 or n >= total // 2)

    wait_until(loaded, "a load", first)
    sending = sum(t.is_alive() for t in threads)
    kill_9(first)
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sending == len(senders)  # each had a request in flight or on its way
    assert 8 <= sum(map(len, acked)) < total - len(senders)
    acked_frame = pd.concat([senders[k][b] for k, bs in enumerate(acked) for b in bs])

    second = spawn(args, log)
    try:
        wait_until(healthy, "the restarted server to answer", second)
        with httpx.Client(base_url=url, timeout=60) as client:
            # every acknowledged reading is stored: posting them again inserts nothing
            r = client.post("/v1.1/CreateObservations", content=encode_data_array(acked_frame))
            assert r.status_code == 201
            health = client.get("/health").json()
            assert (health["observations"], health["inserted"]) == (len(acked_frame), 0)
            # then everything (each sender's batches in order), the acknowledged included
            for batches in senders:
                for lo in range(0, len(batches), 20):
                    body = encode_data_array(pd.concat(batches[lo : lo + 20]))
                    assert client.post("/v1.1/CreateObservations", content=body).status_code == 201
            health = client.get("/health").json()
            assert health["observations"] == len(acked_frame) + len(frame)
            assert 0 < health["inserted"] <= len(frame) - len(acked_frame)
    finally:
        stop(second, log)

    got = outcome(path)
    assert len(got["observations"]) == len(frame)  # each reading once
    assert keys(got["observations"]) == keys(frame)
    check_no_duplicates(got)
    same_alarms(got, clean_run(clean, rules, frame))


# -- MQTT ------------------------------------------------------------------------------------
STATUS = re.compile(r"^([\d,]+) observations, ", re.M)


def committed(log: Path) -> int | None:
    """The observations committed so far by a ``sense mqtt`` process (its last status line)."""
    found = STATUS.findall(log.read_text())
    return int(found[-1].replace(",", "")) if found else None


def test_kill_9_during_an_mqtt_load(twin, tmp_path, spawn, mqtt_broker, mqtt_names):
    """A publisher sends DataArray messages at QoS 1 while ``citytwin sense mqtt`` (two
    workers, persistent sessions) ingests them; the ingest is killed (SIGKILL) in the middle.
    Restarted with the same client ids, it gets from the broker what it had not acknowledged:
    every reading the broker acknowledged to the publisher is stored once. Then come the next
    hours of the same datastreams (their rules carry on from the state the restart recovered)
    and the first hours again: each reading stored once, and the alarms are those of a clean
    run.

    A message holds whole stretches of series (two datastreams, two hours), and the second
    stretch is published once the first is stored: the broker deals messages to the workers in
    any order and the rule engine skips a reading older than one it has evaluated, so only this
    gives the alarms of a clean run however the workers interleave (ordering, not durability).
    At most 300 messages are queued: within Mosquitto's default max_queued_messages (1000)."""
    path, clean, rules = twin
    frame = load()
    first_half = frame[minute_of(frame) < MINUTES // 2]
    second_half = frame[minute_of(frame) >= MINUTES // 2]
    host, port = mqtt_broker
    args = ["sense", "mqtt", "--twin", str(path), "--broker", f"{host}:{port}", "--workers", "2"]
    args += ["--rules", str(rules), "--clock", "data", "--webhook", WEBHOOK]
    args += ["--group", mqtt_names.group, "--client-prefix", mqtt_names.client_prefix]
    args += ["--topic-prefix", mqtt_names.prefix, "--status-every", "0.1"]
    runs = iter(range(1000))

    def ingest() -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"mqtt-{next(runs)}.log"
        proc = spawn(args, log)
        wait_until(lambda: "consuming MQTT" in log.read_text(), "the ingest to subscribe", proc)
        return proc, log

    def drain(proc: subprocess.Popen, log: Path, at_least: int, quiet_s: float) -> None:
        """Wait until the ingest has committed ``at_least`` readings and then nothing more
        for ``quiet_s``; stop it cleanly."""
        seen = [(committed(log), time.monotonic())]

        def quiet() -> bool:
            n = committed(log)
            if n != seen[-1][0]:
                seen.append((n, time.monotonic()))
            return n is not None and n >= at_least and time.monotonic() - seen[-1][1] >= quiet_s

        wait_until(quiet, "the ingest to commit the readings", proc)
        stop(proc, log)

    def publish(*parts: pd.DataFrame, pause: float = 0.0, on_ack=None) -> int:
        def messages() -> Iterator[pd.DataFrame]:  # a message: two datastreams' stretch
            for part in parts:
                size = 2 * len(part) // part["datastream_id"].nunique()
                for lo in range(0, len(part), size):
                    yield part.iloc[lo : lo + size]
                    time.sleep(pause)

        return publish_frames(
            messages(), host, port, prefix=mqtt_names.prefix, chunk=10**6, on_ack=on_ack
        )

    # the first hours (150 messages of 240 readings); the ingest is killed in the middle
    acked: list[pd.DataFrame] = []
    published: dict[str, object] = {}

    def publisher() -> None:
        try:
            published["n"] = publish(first_half, pause=0.03, on_ack=acked.append)
        except Exception as exc:  # reported below
            published["error"] = exc

    first, log = ingest()
    sender = threading.Thread(target=publisher)
    sender.start()
    wait_until(lambda: (committed(log) or 0) >= 2400, "the ingest to commit some", first)
    sent = len(acked)  # and a moment later (not right after a commit), while messages come
    wait_until(lambda: len(acked) >= sent + 8 or not sender.is_alive(), "more messages")
    kill_9(first)
    killed_at = committed(log)

    # restarted (again if need be, until the deadline) until every acknowledged reading is in
    deadline = time.monotonic() + 60
    at_least = 1
    while True:
        proc, log = ingest()
        sender.join(60)
        assert not sender.is_alive() and "error" not in published, published.get("error")
        drain(proc, log, at_least, quiet_s=1.0)
        got = outcome(path)
        missing = keys(pd.concat(acked)) - keys(got["observations"])
        if not missing or time.monotonic() > deadline:
            break
        at_least = 0
    assert published["n"] == len(first_half) and sum(map(len, acked)) == len(first_half)
    assert killed_at is not None and 2400 <= killed_at < len(first_half)
    assert not missing, f"{len(missing)} acknowledged readings are missing"
    assert len(got["observations"]) == len(first_half)
    check_no_duplicates(got)

    # the next hours, then the first hours again
    proc, log = ingest()
    assert publish(second_half, first_half) == len(frame)
    drain(proc, log, len(frame), quiet_s=0.5)
    got = outcome(path)
    assert len(got["observations"]) == len(frame)  # each reading once
    assert keys(got["observations"]) == keys(frame)
    check_no_duplicates(got)
    same_alarms(got, clean_run(clean, rules, frame))

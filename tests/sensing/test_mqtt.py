"""MQTT ingestion against the real Mosquitto into a real twin through the real Ingestor: the
SensorThings create topics and the bulk topic, idempotence, dead letters, a shared subscription
over two workers, persistent sessions, PUBACK only after the commit, retries of failed commits,
and kill -9 of the ingest process in the middle of a load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import geopandas as gpd
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pandas as pd
import pytest
import shapely
from paho.mqtt.client import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citytwin.model import validate_frame
from citytwin.sensing.ingest import Ingestor
from citytwin.sensing.mqtt import MqttIngest, publish_frames
from citytwin.sensing.payloads import BULK_TOPIC, OBSERVATION_TOPICS, observation_path
from citytwin.store import open_store

N_DEV = 12
IDS = [f"PS-{i}:pressure" for i in range(N_DEV)]
T0 = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)).floor("h")


@pytest.fixture
def twin_path(make_twin) -> Path:
    """A twin with N_DEV pressure sensors and their datastreams (closed: a path)."""
    store = make_twin(extent=(0, 0, 2000, 2000))
    devs = gpd.GeoDataFrame(
        {
            "id": [f"PS-{i}" for i in range(N_DEV)],
            "class": "pressure_sensor",
            "feature_id": [f"node-{i}" for i in range(N_DEV)],
            "network": "water_supply",
        },
        geometry=shapely.points(np.c_[np.arange(N_DEV) * 100.0, np.full(N_DEV, 50.0)]),
        crs="EPSG:32650",
    )
    store.insert("devices", validate_frame("devices", devs, source="test"))
    store.provision(
        pd.DataFrame(
            {"datastream_id": IDS, "thing_id": devs["id"], "observed_property": "pressure"}
        )
    )
    path = store.path
    store.close()
    return Path(path)


@pytest.fixture
def ingestor(twin_path):
    ing = Ingestor(open_store(twin_path)).start()
    yield ing
    ing.stop()
    ing.store.close()


@pytest.fixture
def make_mqtt(mqtt_broker, mqtt_names):
    """Factory of started ``MqttIngest``s with this test's names; stopped at the end."""
    started: list[MqttIngest] = []

    def make(ingestor, **kw) -> MqttIngest:
        m = MqttIngest(ingestor, *mqtt_broker, **mqtt_names.options(**kw))
        mqtt_names.client_ids.update(m.client_ids)
        started.append(m)
        return m.start()

    yield make
    for m in started:
        m.stop(timeout=2.0)


def readings(ids, n_times: int, *, start=T0, seed: int = 0) -> pd.DataFrame:
    """A reading of every datastream every minute (random values)."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n_times, freq="1min")
    return pd.DataFrame(
        {
            "datastream_id": np.repeat(np.asarray(ids, object), n_times),
            "phenomenon_time": np.tile(times, len(ids)),
            "result": rng.uniform(0.1, 0.5, len(ids) * n_times).round(4),
        }
    )


def wait_until(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def stored(store, ids=IDS) -> pd.DataFrame:
    obs = store.observations(list(ids))
    obs["phenomenon_time"] = pd.to_datetime(obs["phenomenon_time"], utc=True)
    return obs.sort_values(["datastream_id", "phenomenon_time"]).reset_index(drop=True)


def same_readings(got: pd.DataFrame, sent: pd.DataFrame) -> bool:
    sent = sent.assign(phenomenon_time=pd.to_datetime(sent["phenomenon_time"], utc=True))
    sent = sent.sort_values(["datastream_id", "phenomenon_time"]).reset_index(drop=True)
    cols = ["datastream_id", "phenomenon_time"]
    return (
        len(got) == len(sent)
        and got[cols].astype(str).equals(sent[cols].astype(str))
        and np.allclose(got["result"].to_numpy(float), sent["result"].to_numpy(float))
    )


def publish_raw(host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish (topic, payload) messages at QoS 1 and wait for their PUBACKs."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(host, port)
    c.loop_start()
    try:
        infos = [c.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


# -- the topics ------------------------------------------------------------------------------
def test_sensorthings_create_topics_end_to_end(ingestor, make_mqtt, mqtt_broker):
    """The OGC topics themselves (root v1.1): one Observation per message on
    Datastreams('<id>')/Observations, Datastreams(<id>)/Observations (unquoted) and on
    Observations with the Datastream in the body. Other tests use their own topic root on the
    shared broker."""
    m = make_mqtt(ingestor, prefix="v1.1", workers=1)
    assert f"$share/{m.group}/{OBSERVATION_TOPICS}" in m.topic_filters
    assert f"$share/{m.group}/{BULK_TOPIC}" in m.topic_filters
    frame = readings(IDS[:3], 4)
    assert publish_frames(frame, *mqtt_broker, bulk=False) == 12
    t = lambda k: (T0 + pd.Timedelta(minutes=30 + k)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    publish_raw(
        *mqtt_broker,
        [
            (
                "v1.1/Datastreams(PS-5:pressure)/Observations",
                orjson.dumps({"phenomenonTime": t(0), "result": 0.25}),
            ),
            (
                "v1.1/Observations",
                orjson.dumps(
                    {
                        "phenomenonTime": t(1),
                        "result": 0.5,
                        "Datastream": {"@iot.id": "PS-6:pressure"},
                        "resultQuality": {"flag": "ok"},
                    }
                ),
            ),
        ],
    )
    wait_until(lambda: m.stats.acks >= 14, what="14 PUBACKs")
    got = stored(ingestor.store)
    mine = got[got["datastream_id"].isin(IDS[:3])].reset_index(drop=True)
    assert same_readings(mine, frame)
    extra = got.set_index("datastream_id")
    assert extra.loc["PS-5:pressure", "result"] == 0.25
    assert extra.loc["PS-6:pressure", "result"] == 0.5
    assert orjson.loads(extra.loc["PS-6:pressure", "result_quality"]) == {"flag": "ok"}
    s = m.stats
    assert (s.messages, s.observations, s.inserted, s.dead_letters) == (14, 14, 14, 0)


def test_bulk_topic_stores_each_reading_once(ingestor, make_mqtt, mqtt_broker, mqtt_names):
    m = make_mqtt(ingestor, workers=1)
    frame = readings(IDS, 100)  # 1,200 readings
    kw = {"prefix": mqtt_names.prefix, "chunk": 250}
    assert publish_frames(frame, *mqtt_broker, **kw) == len(frame)
    wait_until(lambda: m.stats.acks == 5, what="5 PUBACKs")
    # the same document again, and again mixed with new readings: stored once
    again = pd.concat([frame.iloc[::7], readings(IDS, 5, start=T0 + pd.Timedelta(hours=3))])
    assert publish_frames([frame, again], *mqtt_broker, **kw) == len(frame) + len(again)
    wait_until(lambda: m.stats.acks == 5 + 5 + 1, what="11 PUBACKs")
    expected = pd.concat([frame, again]).drop_duplicates(["datastream_id", "phenomenon_time"])
    assert same_readings(stored(ingestor.store), expected)
    s = m.stats
    assert s.inserted == len(expected)
    assert s.duplicates == len(frame) + len(again) + len(frame) - len(expected)
    assert s.observations == s.inserted + s.duplicates and s.rejected == 0


def test_invalid_payloads_and_readings_go_to_dead_letters(
    ingestor, make_mqtt, mqtt_broker, mqtt_names
):
    m = make_mqtt(ingestor, workers=1)
    p = mqtt_names.prefix
    bulk = f"{p}/CreateObservations"
    t = (T0 + pd.Timedelta(minutes=1)).isoformat()
    future = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)).isoformat()
    doc = [
        {
            "Datastream": {"@iot.id": "PS-1:pressure"},
            "components": ["phenomenonTime", "result"],
            "dataArray": [[t, 0.3], [T0.isoformat(), "0.3"], [future, 0.3], ["yesterday", 0.3]],
        },
        {
            "Datastream": {"@iot.id": "XX-9:pressure"},
            "components": ["result", "phenomenonTime"],
            "dataArray": [[0.3, t]],
        },
    ]
    messages = [
        (bulk, b"not json {"),
        (bulk, orjson.dumps([{"components": ["phenomenonTime", "result"], "dataArray": []}])),
        (f"{p}/Things(7)/Observations", orjson.dumps({"phenomenonTime": t, "result": 1.0})),
        (observation_path("PS-2:pressure", p), orjson.dumps({"phenomenonTime": t})),
        (bulk, orjson.dumps(doc)),
    ]
    publish_raw(*mqtt_broker, messages)
    wait_until(lambda: m.stats.acks == len(messages), what="every message acknowledged")
    s = m.stats
    assert (s.dead_letters, s.inserted, s.rejected) == (4, 1, 4)
    dead = ingestor.store.rejected(source="mqtt").sort_values("received_at")
    undecodable = dead[dead["payload"].isin([b.decode() for _, b in messages[:4]])]
    assert len(undecodable) == 4
    reasons = " | ".join(undecodable["reason"])
    for what in ("not JSON", "names no Datastream", "not a Datastream's Observations",
                 "has no 'result'"):  # fmt: skip
        assert what in reasons
    assert set(undecodable["datastream_id"].dropna()) == {"PS-2:pressure"}
    readings_dead = dead[~dead.index.isin(undecodable.index)]
    assert sorted(readings_dead["reason"]) == [
        "in the future", "not a number", "not a time", "unknown datastream"
    ]  # fmt: skip
    assert len(stored(ingestor.store)) == 1


# -- shared subscription, sessions -----------------------------------------------------------
def test_two_workers_share_the_load(ingestor, make_mqtt, mqtt_broker, mqtt_names):
    m = make_mqtt(ingestor, workers=2)
    frame = readings(IDS, 250)  # 3,000 readings in 30 messages
    assert publish_frames(frame, *mqtt_broker, prefix=mqtt_names.prefix, chunk=100) == 3000
    wait_until(lambda: m.stats.acks == 30, what="30 PUBACKs")
    per_worker = m.worker_stats
    assert all(w.messages > 0 for w in per_worker)  # both got some
    assert sum(w.messages for w in per_worker) == 30  # nothing twice
    s = m.stats
    assert (s.inserted, s.duplicates, s.redelivered) == (3000, 0, 0)
    assert same_readings(stored(ingestor.store), frame)


def test_messages_sent_while_the_ingest_is_down_are_ingested_after_restart(
    ingestor, make_mqtt, mqtt_broker, mqtt_names
):
    first = make_mqtt(ingestor, workers=2)
    first.stop()  # the sessions stay, with their shared subscriptions
    frame = readings(IDS, 50)
    n = publish_frames(frame, *mqtt_broker, prefix=mqtt_names.prefix, chunk=60)
    assert n == len(frame)  # the broker took them: they wait in the offline sessions
    again = make_mqtt(ingestor, workers=2)
    wait_until(lambda: again.stats.acks == 10, what="the 10 queued messages")
    assert all(w.messages > 0 for w in again.worker_stats)  # queued in both sessions
    assert same_readings(stored(ingestor.store), frame)


def test_the_default_window_of_the_broker_is_enough(ingestor, make_mqtt, mqtt_broker, mqtt_names):
    """Asking for no Receive Maximum, Mosquitto sends 20 messages at a time: the worker
    submits what it has without waiting for more, so one message per reading still flows."""
    m = make_mqtt(ingestor, workers=1, receive_maximum=None)
    frame = readings(IDS, 25)  # 300 messages
    assert publish_frames(frame, *mqtt_broker, prefix=mqtt_names.prefix, bulk=False) == 300
    wait_until(lambda: m.stats.acks == 300, what="300 PUBACKs")
    assert same_readings(stored(ingestor.store), frame)


def test_a_worker_thrown_off_reconnects_and_gets_what_it_missed(
    ingestor, make_mqtt, mqtt_broker, mqtt_names
):
    """Another client takes the worker's session over (same client id) and leaves without
    acknowledging what it got: the worker reconnects on its own, resumes the session and
    stores those messages."""
    m = make_mqtt(ingestor, workers=1)
    first = readings(IDS, 2)
    publish_frames(first, *mqtt_broker, prefix=mqtt_names.prefix, chunk=8)
    wait_until(lambda: m.stats.acks == 3, what="3 PUBACKs")
    got: list[int] = []
    intruder = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=m.client_ids[0],
        protocol=mqtt.MQTTv5,
        manual_ack=True,
        reconnect_on_failure=False,
    )
    intruder.on_message = lambda _c, _u, msg: got.append(msg.mid)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    intruder.connect(*mqtt_broker, clean_start=False, properties=props)
    intruder.loop_start()
    wait_until(intruder.is_connected, what="the intruder")
    later = readings(IDS, 2, start=T0 + pd.Timedelta(hours=1))
    publish_frames(later, *mqtt_broker, prefix=mqtt_names.prefix, chunk=8)
    wait_until(lambda: got or not intruder.is_connected(), what="the intruder's messages")
    intruder.disconnect()
    intruder.loop_stop()
    # (the worker's last PUBACKs may not have reached the broker before it was thrown off:
    # those messages come again too, and are stored once)
    wait_until(lambda: m.stats.inserted == 48, what="the later readings")
    s = m.stats
    assert s.connects >= 2 and s.redelivered >= len(got)
    assert s.duplicates == 8 * (s.messages - 6)  # every message beyond the six, once more
    assert same_readings(stored(ingestor.store), pd.concat([first, later]))


class StalledIngestor:
    """An ingestor whose commits never finish (a stand-in: the futures stay pending)."""

    def __init__(self) -> None:
        self.futures: list[Future] = []

    def submit(self, frame, *, source):
        self.futures.append(Future())
        return self.futures[-1]

    def submit_rejected(self, records):
        return self.submit(records, source="mqtt")


def test_no_puback_before_the_commit(ingestor, make_mqtt, mqtt_broker, mqtt_names):
    """Messages whose commit never finishes are not acknowledged: after the worker goes away
    the broker delivers them again (DUP), and they are stored."""
    stalled = StalledIngestor()
    m = make_mqtt(stalled, workers=1)
    frame = readings(IDS[:5], 10)
    publish_frames(frame, *mqtt_broker, prefix=mqtt_names.prefix, chunk=10)
    publish_raw(*mqtt_broker, [(f"{mqtt_names.prefix}/CreateObservations", b"broken")])
    wait_until(lambda: m.stats.messages == 6, what="6 messages")
    time.sleep(0.3)
    assert m.stats.acks == 0 and stalled.futures
    m.stop(timeout=0.2)
    again = make_mqtt(ingestor, workers=1)
    wait_until(lambda: again.stats.acks == 6, what="the 6 messages again")
    s = again.stats
    assert s.redelivered == 6 and s.inserted == len(frame) and s.dead_letters == 1
    assert same_readings(stored(ingestor.store), frame)


def test_what_the_broker_drops_over_its_queue_limit_is_reported(private_broker, mqtt_names):
    """Mosquitto's default queue limit (1000 messages per session above those in flight) drops
    messages while it PUBACKs their publisher; the ingest reports the count the broker
    publishes ($SYS), so it is not silent (the broker's setting is the fix)."""
    m = MqttIngest(StalledIngestor(), *private_broker, workers=1, receive_maximum=10,
                   **mqtt_names.options()).start()  # fmt: skip
    try:
        frame = readings(IDS, 92)  # 1,104 messages: 10 in flight, 1000 queued, 94 dropped
        sent = publish_frames(frame, *private_broker, prefix=mqtt_names.prefix, bulk=False)
        assert sent == 1104
        wait_until(lambda: m.stats.broker_dropped >= 94, timeout=30, what="the broker's count")
        assert m.stats.messages == 10
    finally:
        m.stop(timeout=0.1)


def test_a_failed_commit_is_retried_and_a_poison_message_dead_lettered(
    ingestor, make_mqtt, mqtt_broker, mqtt_names, monkeypatch
):
    store = ingestor.store
    append = store.append_observations
    calls = {"n": 0}

    def flaky(batch, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("disk full (injected)")
        if (batch["datastream_id"] == "PS-3:pressure").any():
            raise ValueError("poison (injected)")
        return append(batch, **kw)

    monkeypatch.setattr(store, "append_observations", flaky)
    m = make_mqtt(ingestor, workers=1, max_attempts=3, retry_s=0.05)
    frame = readings(IDS, 20)
    parts = [frame[frame["datastream_id"] == ds] for ds in IDS]  # a message per datastream
    assert publish_frames(parts, *mqtt_broker, prefix=mqtt_names.prefix) == len(frame)
    wait_until(lambda: m.stats.acks == N_DEV, what="every message acknowledged")
    s = m.stats
    assert s.failures >= 2 and s.retries >= 3 and s.dead_letters == 1
    good = frame[frame["datastream_id"] != "PS-3:pressure"]
    assert same_readings(stored(store), good)
    dead = store.rejected(source="mqtt")
    assert len(dead) == 1
    assert dead["reason"].iloc[0].startswith("could not be ingested after 3 attempts")
    assert "poison" in dead["reason"].iloc[0]
    assert "PS-3:pressure" in dead["payload"].iloc[0]


def test_publishing_with_no_ingest_subscribed_raises(mqtt_broker, mqtt_names):
    with pytest.raises(ConnectionError, match="No matching subscribers"):
        publish_frames(readings(IDS[:2], 3), *mqtt_broker, prefix=mqtt_names.prefix)


# -- kill -9 ---------------------------------------------------------------------------------
INGEST_PROCESS = """
import sys, time
from citytwin.sensing.ingest import Ingestor
from citytwin.sensing.mqtt import MqttIngest
from citytwin.store import open_store

path, host, port, group, clients, prefix, idle = sys.argv[1:]
ingestor = Ingestor(open_store(path)).start()
mqtt = MqttIngest(ingestor, host, int(port), workers=2, group=group, client_prefix=clients,
                  prefix=prefix).start()
print("ready", flush=True)
seen, since = -1, time.monotonic()
while True:
    s = mqtt.stats
    print("acks", s.acks, flush=True)
    if s.messages != seen:
        seen, since = s.messages, time.monotonic()
    elif float(idle) and time.monotonic() - since > float(idle):
        break
    time.sleep(0.05)
mqtt.stop()
ingestor.stop()
ingestor.store.close()
print("done", s.messages, s.redelivered, flush=True)
"""


def _ingest_process(twin_path, broker, names, idle: float) -> subprocess.Popen:
    args = [str(twin_path), broker[0], str(broker[1]), names.group, names.client_prefix]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-c", INGEST_PROCESS, *args, names.prefix, str(idle)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready", "the ingest process did not start"
    return p


def test_kill_9_in_the_middle_of_a_load_loses_no_acknowledged_reading(
    twin_path, mqtt_broker, mqtt_names
):
    """The ingest runs in its own process; it is killed (SIGKILL) while it works through a load
    that is being published; after a restart, every reading whose message the broker
    acknowledged is in the store."""
    frame = readings(IDS, 2000)  # 24,000 readings in 240 messages
    acked: list[pd.DataFrame] = []
    published: dict[str, object] = {}

    def publish() -> None:
        try:
            published["n"] = publish_frames(
                frame, *mqtt_broker, prefix=mqtt_names.prefix, chunk=100, on_ack=acked.append
            )
        except Exception as exc:  # reported below
            published["error"] = exc

    first = _ingest_process(twin_path, mqtt_broker, mqtt_names, idle=0)
    publisher = threading.Thread(target=publish)
    publisher.start()
    assert first.stdout is not None
    for line in first.stdout:  # kill it once it has acknowledged some
        if line.startswith("acks") and int(line.split()[1]) >= 20:
            break
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    publisher.join(60)
    assert "error" not in published, published.get("error")
    assert published["n"] == len(frame) and sum(len(a) for a in acked) == len(frame)

    second = _ingest_process(twin_path, mqtt_broker, mqtt_names, idle=1.0)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0, out
    done = out.strip().splitlines()[-1].split()
    assert done[0] == "done" and int(done[1]) < 240  # the first process took some
    store = open_store(twin_path, read_only=True)
    try:
        got = stored(store)
    finally:
        store.close()
    assert same_readings(got, pd.concat(acked))


def test_parallel_publishers_make_one_alarm_per_rule_and_source(twin_path, make_mqtt):
    """Four publishers send the same low-pressure episode of every sensor at once (each in time
    order, as devices do, but the sensors of a minute shuffled; single and bulk topics) through
    three workers: each sensor gets exactly one alarm, raised once and cleared once."""
    from citytwin.warning.rules import parse_rules_text

    rules = parse_rules_text(
        "version: 1\nrules:\n  - id: low\n    kind: threshold\n"
        "    applies_to: {observed_property: pressure}\n    direction: below\n"
        "    levels: {yellow: 0.2, red: 0.1}\n    hysteresis: 0.01\n"
    )
    ing = Ingestor(open_store(twin_path), rules).start()
    try:
        m = make_mqtt(ing, workers=3)
        episode = readings(IDS, 30)
        minute = (pd.to_datetime(episode["phenomenon_time"]) - T0) // pd.Timedelta("1min")
        episode["result"] = np.where((minute >= 10) & (minute < 20), 0.05, 0.3)

        def publish(k: int) -> None:
            frame = episode.sample(frac=1.0, random_state=k).sort_values(
                "phenomenon_time", kind="stable"
            )
            publish_frames(
                [frame], m.host, m.port, bulk=k % 2 == 0, client_id=f"{m.group}-pub{k}",
                prefix=m.prefix, chunk=50,
            )  # fmt: skip

        threads = [threading.Thread(target=publish, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(stored(ing.store)) == len(episode), 60, "all readings")
        ing.flush()
        alarms = ing.store.alarms(rule_id="low", limit=None)
        assert sorted(alarms["source"]) == sorted(IDS)
        assert (alarms["status"] == "cleared").all() and (alarms["max_severity"] == "red").all()
        assert not alarms.duplicated(["rule_id", "source"]).any()
    finally:
        ing.stop()
        ing.store.close()

"""The ingest pipeline: group commit, idempotence, dead letters, rules to alarms, one active
alarm per (rule, source) under concurrent submitters, recovery after a crash, ticks, reload."""

from __future__ import annotations

import random
import threading

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.model import validate_frame
from citytwin.sensing.ingest import STATE_DOCUMENT, Ingestor
from citytwin.store import open_store
from citytwin.warning.rules import parse_rules_text

T0 = pd.Timestamp("2026-06-01T00:00:00Z")
RULES = """
version: 1
rules:
  - id: gas
    kind: threshold
    applies_to: {observed_property: gas_concentration}
    unit: "%LEL"
    levels: {yellow: 10, orange: 25, red: 50}
    hysteresis: 2
  - id: silent
    kind: no_data
    applies_to: {observed_property: pressure}
    silence: 30min
    level: yellow
"""


def _devices(n: int) -> gpd.GeoDataFrame:
    frame = gpd.GeoDataFrame(
        {
            "id": [f"GD-{i}" for i in range(n)] + [f"PS-{i}" for i in range(n)],
            "class": ["gas_detector"] * n + ["pressure_sensor"] * n,
            "feature_id": [f"node-{i}" for i in range(2 * n)],
            "network": ["gas"] * n + ["water_supply"] * n,
        },
        geometry=shapely.points(np.c_[np.arange(2 * n) * 100.0, np.zeros(2 * n) + 50]),
        crs="EPSG:32650",
    )
    return validate_frame("devices", frame, source="test")


@pytest.fixture
def twin_path(make_twin):
    store = make_twin(extent=(0, 0, 2000, 2000))
    devs = _devices(4)
    store.insert("devices", devs)
    ids = devs["id"]
    store.provision(
        pd.DataFrame(
            {
                "datastream_id": ids + np.where(ids.str.startswith("GD"), ":gas", ":pressure"),
                "thing_id": ids,
                "observed_property": np.where(
                    ids.str.startswith("GD"), "gas_concentration", "pressure"
                ),
            }
        )
    )
    path = store.path
    store.close()
    return path


def _obs(ds, minutes, values) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "datastream_id": ds,
            "phenomenon_time": [(T0 + pd.Timedelta(minutes=m)).isoformat() for m in minutes],
            "result": values,
        }
    )


def _ingestor(path, **kw) -> Ingestor:
    clock = kw.pop("clock", lambda: (T0 + pd.Timedelta(days=1)).to_pydatetime())
    return Ingestor(open_store(path), parse_rules_text(RULES), clock=clock, **kw)


def test_batches_are_stored_once_and_bad_rows_dead_lettered(twin_path):
    with _ingestor(twin_path) as ing:
        a = ing.submit(_obs(["GD-0:gas"] * 3, [0, 1, 2], [1.0, 2.0, 3.0]), source="http")
        ids = ["GD-0:gas", "nope:gas", "GD-1:gas", "GD-1:gas"]
        b = ing.submit(_obs(ids, [2, 0, 0, 1], [3.0, 1.0, float("nan"), 2.0]), source="mqtt")
        ra, rb = a.result(), b.result()
        again = ing.ingest(_obs(["GD-0:gas"], [1], [2.0]), source="http")
        future = ing.ingest(_obs(["GD-2:gas"], [60 * 24 * 3], [1.0]))
        store = ing.store
        assert (ra.inserted, ra.duplicates, len(ra.rejected)) == (3, 0, 0)
        assert (rb.inserted, rb.duplicates) == (1, 1)  # GD-0 at 2 came first in batch a
        assert rb.rejected["row"].tolist() == [1, 2]
        assert rb.rejected["reason"].tolist() == ["unknown datastream", "not a number"]
        assert (again.inserted, again.duplicates) == (0, 1)
        assert future.rejected["reason"].tolist() == ["in the future"]
        dead = store.rejected()
        assert sorted(dead["source"]) == ["http", "mqtt", "mqtt"]
        assert len(store.observations(["GD-0:gas", "GD-1:gas"])) == 4


def test_rules_raise_escalate_and_clear_one_alarm(twin_path):
    with _ingestor(twin_path) as ing:
        ing.ingest(_obs(["GD-0:gas"] * 4, [0, 1, 2, 3], [5.0, 12.0, 30.0, 55.0]))
        alarms = ing.store.alarms()
        assert len(alarms) == 1
        a = alarms.iloc[0]
        assert a["rule_id"] == "gas" and a["source"] == "GD-0:gas"
        assert a["severity"] == "red" and a["status"] == "active"
        assert a["x"] == 0.0 and a["network"] == "gas"
        ing.ingest(_obs(["GD-0:gas"] * 2, [4, 5], [20.0, 1.0]))
        a = ing.store.alarms().iloc[0]
        assert a["status"] == "cleared" and a["max_severity"] == "red"
        log = ing.store.alarm_log(a["alarm_id"])
        assert log["action"].tolist() == ["raise", "escalate", "escalate", "deescalate", "clear"]


def test_one_active_alarm_under_concurrent_submitters(twin_path):
    """Eight threads send overlapping, shuffled readings of the same detectors: one alarm per
    (rule, source), however the batches interleave."""
    values = {m: (60.0 if 10 <= m < 40 else 1.0) for m in range(60)}
    with _ingestor(twin_path) as ing:

        def send(k: int) -> None:
            rng = random.Random(k)
            minutes = list(range(60))
            rng.shuffle(minutes)
            for chunk in np.array_split(minutes, 6):
                ds = [f"GD-{j % 2}:gas" for j in range(len(chunk))]
                ing.ingest(_obs(ds, chunk.tolist(), [values[m] for m in chunk]))

        threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alarms = ing.store.alarms(rule_id="gas")
        assert not alarms.duplicated(["rule_id", "source", "raised_at"]).any()
        active = alarms[alarms["status"] == "active"]
        assert not active.duplicated(["rule_id", "source"]).any()
        assert set(alarms["source"]) == {"GD-0:gas", "GD-1:gas"}


def test_recovery_after_a_crash_duplicates_nothing(twin_path):
    """Readings committed after the last checkpoint are evaluated again at restart; the alarm
    they raised is not raised twice, and the engine knows it is active (a low reading clears
    it)."""
    ing = _ingestor(twin_path, checkpoint_s=1e9).start()
    ing.ingest(_obs(["GD-0:gas"], [0], [1.0]))  # the first commit checkpoints
    ing.ingest(_obs(["GD-0:gas"] * 2, [1, 2], [30.0, 31.0]))
    assert len(ing.store.alarms(status="active")) == 1
    seq = ing.store.get_document(STATE_DOCUMENT)["seq"]
    assert seq < ing.seq  # the alarm's commit is after the checkpoint
    ing._queue.put(None)  # "crash": stop committing without the final checkpoint
    ing._thread.join()
    ing.store.close()

    with _ingestor(twin_path) as again:
        assert again.stats.recovered >= 2
        assert len(again.store.alarms()) == 1
        again.ingest(_obs(["GD-0:gas"], [3], [0.5]))
        alarms = again.store.alarms()
        assert len(alarms) == 1 and alarms.iloc[0]["status"] == "cleared"


def test_ticks_find_silent_devices_and_reload_swaps_rules(twin_path):
    with _ingestor(twin_path) as ing:
        ing.ingest(_obs(["PS-0:pressure", "PS-1:pressure"], [0, 0], [0.3, 0.3]))
        ing.tick((T0 + pd.Timedelta(minutes=20)).to_pydatetime()).result()
        assert not len(ing.store.alarms(rule_id="silent"))
        ing.ingest(_obs(["PS-0:pressure"], [25], [0.3]))
        ing.tick((T0 + pd.Timedelta(minutes=45)).to_pydatetime()).result()
        silent = ing.store.alarms(rule_id="silent", status="active")
        assert set(silent["source"]) == {"PS-1:pressure", "PS-2:pressure", "PS-3:pressure"}
        ing.reload(parse_rules_text(RULES.replace("silence: 30min", "silence: 2h"))).result()
        assert not len(ing.store.alarms(rule_id="silent", status="active"))


def test_a_store_failure_acknowledges_nothing(twin_path, monkeypatch):
    with _ingestor(twin_path) as ing:

        def broken(*a, **k):
            raise RuntimeError("disk full")

        monkeypatch.setattr(ing.store, "append_observations", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            ing.ingest(_obs(["GD-0:gas"], [0], [60.0]))
        monkeypatch.undo()
        assert ing.ingest(_obs(["GD-0:gas"], [0], [60.0])).inserted == 1
        assert len(ing.store.alarms()) == 1


def test_unacknowledged_alarms_escalate_on_ticks_and_notify(twin_path):
    from citytwin.warning.alarms import EscalationPolicy, parse_webhooks

    hooks = parse_webhooks(
        {"webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": "s"}]}
    )
    policy = EscalationPolicy(red=5, repeat=30)
    with _ingestor(twin_path, escalation=policy, webhooks=list(hooks)) as ing:
        ing.ingest(_obs(["GD-0:gas", "GD-1:gas"], [0, 0], [60.0, 60.0]))
        aid = ing.store.alarms(source="GD-1:gas").iloc[0]["alarm_id"]
        from citytwin.app.monitoring import AlarmDesk

        AlarmDesk(ing.store, webhooks=hooks).act(aid, "acknowledge", by="duty")
        ing.tick((T0 + pd.Timedelta(minutes=3)).to_pydatetime()).result()
        assert ing.store.alarms(rule_id="gas")["escalations"].sum() == 0
        ing.tick((T0 + pd.Timedelta(minutes=6)).to_pydatetime()).result()
        alarms = ing.store.alarms(rule_id="gas").set_index("source")
        assert alarms.loc["GD-0:gas", "escalations"] == 1
        assert alarms.loc["GD-1:gas", "escalations"] == 0  # acknowledged: no escalation
        events = ing.store.notifications()["event"].tolist()
        assert events.count("alarm.raised") == 2
        assert events.count("alarm.acknowledged") == 1
        assert events.count("alarm.escalation") == 1


def test_a_silent_device_uploading_its_buffer_clears_its_alarm(twin_path):
    """Silence raised at last reading + 30 min (10 + 30 = 40); the device then uploads what it
    buffered from minute 15 on: the alarm clears (at 40, not before its raise at 40)."""
    with _ingestor(twin_path) as ing:
        ing.ingest(_obs(["PS-0:pressure"] * 3, [0, 5, 10], [0.3] * 3))
        ing.ingest(_obs(["PS-1:pressure"], [60], [0.3]))  # the watermark moves to 60
        silent = ing.store.alarms(rule_id="silent", source="PS-0:pressure")
        assert len(silent) == 1 and silent.iloc[0]["status"] == "active"
        assert silent.iloc[0]["raised_at"] == T0 + pd.Timedelta(minutes=40)
        ing.ingest(_obs(["PS-0:pressure"] * 11, list(range(15, 70, 5)), [0.3] * 11))
        silent = ing.store.alarms(rule_id="silent", source="PS-0:pressure")
        assert len(silent) == 1 and silent.iloc[0]["status"] == "cleared"
        assert silent.iloc[0]["cleared_at"] == T0 + pd.Timedelta(minutes=40)

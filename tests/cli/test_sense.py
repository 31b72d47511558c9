"""``citytwin sense`` and ``citytwin alarms`` on a copy of the virtual city, in process:
provision, a short replay through the pipeline, then the operators' commands."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from citytwin.store import open_store
from tests.cli.test_commands import run


@pytest.fixture(scope="module")
def replayed(virtual_city, tmp_path_factory):
    """The virtual city provisioned and replayed for 2 h (a storm at 15 min, a gas leak at
    45 min, a main burst at 1.5 h)."""
    twin = tmp_path_factory.mktemp("sense") / "city.twin"
    shutil.copy(virtual_city, twin)
    out = run("sense", "provision", "-t", twin)
    assert "datastreams created" in out.output
    with open_store(twin, read_only=True) as store:
        streams = store.datastreams()
    start = (pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=3)).isoformat()
    replay = run(
        "sense", "replay", "-t", twin, "--hours", "2", "--start", start,
        "--storm-at", "0.25", "--gas-at", "0.75", "--burst-at", "1.5",
    )  # fmt: skip
    return twin, streams, replay.output


def test_provision_makes_a_datastream_per_measured_property(replayed):
    _, streams, _ = replayed
    assert len(streams) > 1000
    assert streams["datastream_id"].is_unique
    props = set(streams["observed_property"])
    assert {"pressure", "flow", "depth_below_cover", "rain_intensity", "gas_concentration"} <= props
    manholes = streams[streams["observed_property"] == "depth_below_cover"]
    assert (manholes["tags"].astype(str).str.contains("manhole")).all()


def test_replay_prints_what_the_pipeline_raised(replayed):
    twin, _, output = replayed
    assert "readings" in output and "refused" in output
    assert "gas-leak" in output and "manhole-level" in output
    with open_store(twin, read_only=True) as store:
        alarms = store.alarms(limit=None)
    assert not alarms.duplicated(["rule_id", "source", "raised_at"]).any()
    assert set(alarms["rule_id"]) >= {"gas-leak", "manhole-level", "rainstorm"}


def test_operators_list_show_acknowledge_assign_and_clear(replayed):
    twin, _, _ = replayed
    listed = run("alarms", "list", "-t", twin, "--severity", "orange", "--limit", "200")
    with open_store(twin, read_only=True) as store:
        active = store.alarms(status="active", severity_at_least="orange", limit=None)
    assert f"{len(active):,} alarms" in listed.output
    gas = active[active["rule_id"] == "gas-leak"]
    aid = gas.iloc[0]["alarm_id"] if len(gas) else active.iloc[0]["alarm_id"]
    ack = run("alarms", "ack", aid, "-t", twin, "--by", "duty-officer", "--comment", "crew sent")
    assert "acknowledged" in ack.output
    twice = run("alarms", "ack", aid, "-t", twin, "--by", "duty-officer", ok=False)
    assert twice.exit_code == 1 and "already acknowledged" in twice.output
    run("alarms", "assign", aid, "-t", twin, "--to", "crew-7", "--by", "duty-officer")
    run("alarms", "comment", aid, "valve closed at 10:42", "-t", twin, "--by", "crew-7")
    cleared = run("alarms", "clear", aid, "-t", twin, "--by", "duty-officer")
    assert "cleared" in cleared.output
    shown = run("alarms", "show", aid, "-t", twin)
    for word in ("acknowledge", "assign", "comment", "clear", "crew-7", "valve closed"):
        assert word in shown.output
    missing = run("alarms", "ack", "AL-nope", "-t", twin, "--by", "x", ok=False)
    assert missing.exit_code == 1 and "no alarm" in missing.output
    unack = run("alarms", "list", "-t", twin, "--unacknowledged", "--status", "all")
    assert aid not in unack.output


def test_incidents_are_listed(replayed):
    twin, _, _ = replayed
    out = run("alarms", "incidents", "-t", twin, "--status", "all")
    with open_store(twin, read_only=True) as store:
        incidents = store.incidents(limit=None)
    assert f"{len(incidents):,} incidents" in out.output
    assert len(incidents) >= 1
    assert set(incidents["kind"]) <= {"surcharge", "suspected_burst", "place"}


def test_bad_options_are_clear_errors(replayed, tmp_path):
    twin, _, _ = replayed
    bad = run("sense", "replay", "-t", twin, "--to", "ftp://x", ok=False)
    assert bad.exit_code == 1 and "replay to" in bad.output
    nofile = run("sense", "provision", "-t", twin, "--file", tmp_path / "none.csv", ok=False)
    assert nofile.exit_code == 1 and "no file" in nofile.output

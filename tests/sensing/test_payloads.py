"""SensorThings payloads: decoding every ingestion path shares, and the encoders."""

from __future__ import annotations

import orjson
import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.sensing import payloads
from citytwin.sensing.model import prepare_observations


def test_datastream_ids_from_paths_and_topics():
    assert payloads.datastream_from_path("v1.1/Datastreams(DEV-1:pressure)/Observations") == (
        "DEV-1:pressure"
    )
    assert payloads.datastream_from_path("/v1.1/Datastreams('a''b')/Observations") == "a'b"
    topic = payloads.observation_path("it's:flow")
    assert payloads.datastream_from_path(topic) == "it's:flow"
    with pytest.raises(InvalidInput, match="not a Datastream's Observations"):
        payloads.datastream_from_path("v1.1/Things(1)/Observations")


def test_single_observation_from_path_or_body():
    doc = {"phenomenonTime": "2026-06-01T08:00:00+08:00", "result": 0.31, "resultQuality": {"q": 1}}
    f = payloads.decode_observation(doc, "DEV-1:pressure")
    assert f.loc[0, "datastream_id"] == "DEV-1:pressure"
    assert f.loc[0, "result_quality"] == '{"q":1}'
    table, reason = prepare_observations(f)
    assert reason.tolist() == [-1]
    assert str(table.column("phenomenon_time")[0]) == "2026-06-01 00:00:00"  # UTC
    body = {**doc, "Datastream": {"@iot.id": "DEV-2:flow"}}
    assert payloads.decode_observation(body).loc[0, "datastream_id"] == "DEV-2:flow"
    with pytest.raises(InvalidInput, match="names no Datastream"):
        payloads.decode_observation(doc)
    with pytest.raises(InvalidInput, match="is not the path's"):
        payloads.decode_observation(body, "DEV-1:pressure")
    with pytest.raises(InvalidInput, match="no 'result'"):
        payloads.decode_observation({"phenomenonTime": "2026-06-01T00:00:00Z"}, "x")
    with pytest.raises(InvalidInput, match="JSON object"):
        payloads.decode_observation([1, 2], "x")


def test_bad_values_are_left_for_the_reasons_not_raised():
    """A text result, a number for a time, NaN: each reading is refused on its own with a
    reason, the batch is not."""
    doc = [
        {
            "Datastream": {"@iot.id": "a"},
            "components": ["phenomenonTime", "result"],
            "dataArray": [
                ["2026-06-01T00:00:00Z", 1.5],
                ["2026-06-01T00:01:00Z", "high"],
                [1717200000, 2.0],
                ["yesterday", 2.0],
                ["2026-06-01T00:03:00Z", None],
                ["2026-06-01T00:04:00Z", True],
            ],
        }
    ]
    frame = payloads.decode_data_array(doc)
    _, reason = prepare_observations(frame)
    names = ["fine" if r < 0 else r for r in reason.tolist()]
    assert names == ["fine", 3, 2, 2, 3, "fine"]  # not a number / not a time


def test_data_array_structure_errors_name_the_item():
    ok = {"Datastream": {"@iot.id": "a"}, "components": ["phenomenonTime", "result"],
          "dataArray": [["2026-06-01T00:00:00Z", 1.0]]}  # fmt: skip
    with pytest.raises(InvalidInput, match=r"CreateObservations\[1\].*no Datastream"):
        payloads.decode_data_array([ok, {"components": [], "dataArray": []}])
    with pytest.raises(InvalidInput, match="components"):
        payloads.decode_data_array([{**ok, "components": ["result"]}])
    with pytest.raises(InvalidInput, match="row 1 does not have the 2 components"):
        payloads.decode_data_array([{**ok, "dataArray": [["2026-06-01T00:00:00Z", 1], [1]]}])
    with pytest.raises(InvalidInput, match="not JSON"):
        payloads.loads(b"[{", source="CreateObservations")
    with pytest.raises(InvalidInput, match="must be a list"):
        payloads.decode_data_array("text")


def test_encode_decode_round_trip():
    t = pd.date_range("2026-06-01", periods=5, freq="1min", tz="UTC")
    frame = pd.DataFrame(
        {
            "datastream_id": ["b", "a", "b", "a", "c"],
            "phenomenon_time": t,
            "result": [1.0, 2.5, -3.0, 4.0, 0.0],
        }
    )
    back = payloads.decode_data_array(orjson.loads(payloads.encode_data_array(frame)))
    table, reason = prepare_observations(back)
    assert (reason < 0).all()
    got = table.to_pandas().sort_values(["datastream_id", "phenomenon_time"])
    want = frame.assign(phenomenon_time=t.tz_localize(None)).sort_values(
        ["datastream_id", "phenomenon_time"]
    )
    assert got["datastream_id"].tolist() == want["datastream_id"].tolist()
    assert (got["phenomenon_time"].to_numpy() == want["phenomenon_time"].to_numpy()).all()
    assert got["result"].tolist() == want["result"].tolist()
    messages = list(payloads.encode_observations(frame))
    assert len(messages) == 5
    topic, body = messages[0]
    one = payloads.decode_observation(orjson.loads(body), payloads.datastream_from_path(topic))
    assert one.loc[0, "datastream_id"] == "b" and one.loc[0, "result"] == 1.0
    ids = payloads.observation_ids(["a"], [t[0]])
    assert ids == ["a@2026-06-01T00:00:00.000000Z"]

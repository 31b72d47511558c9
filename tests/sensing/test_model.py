"""The SensorThings device model: vocabulary shared with the rule engine, datastream frames,
observation batches and the entities made from devices."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import Feature
from citytwin.sensing import (
    OBSERVED_PROPERTIES,
    REJECT_REASONS,
    UNITS,
    Datastream,
    FeatureOfInterest,
    Location,
    Observation,
    Thing,
    datastreams_frame,
    prepare_observations,
    validate_datastreams,
)
from citytwin.sensing.model import check_result_types
from citytwin.warning import rules as warning_rules
from citytwin.warning import virtual_city_rules


def test_vocabulary_covers_the_rule_engine():
    rules = virtual_city_rules()
    used = set()
    for rule in rules.enabled:
        for sel in rule.selectors:
            used |= set(sel.observed_property)
    assert {"depth_below_cover", "water_level", "pressure", "flow"} <= used
    assert used <= set(OBSERVED_PROPERTIES)
    assert set(warning_rules.UNITS) <= set(UNITS)
    for prop in OBSERVED_PROPERTIES.values():
        assert prop.unit in UNITS and prop.definition.startswith(("http://", "urn:"))
    # the property's usual unit is one the rules can convert, for the rule engine's properties
    for name in used:
        assert OBSERVED_PROPERTIES[name].unit in warning_rules.UNITS


def test_validate_fills_from_the_vocabulary():
    frame = pd.DataFrame(
        {
            "datastream_id": ["d1:pressure", "d2:flow", "d3:x"],
            "thing_id": ["d1", "d2", "d3"],
            "observed_property": ["pressure", "flow", "salinity"],
            "property_definition": [None, None, "urn:example:salinity"],
            "unit": [None, "L/s", "psu"],
            "unit_name": [None, None, "practical salinity unit"],
            "unit_definition": [None, None, "urn:example:psu"],
            "tags": [["dma_inlet", "source"], None, []],
        }
    )
    t = validate_datastreams(frame).to_pandas()
    assert list(t["unit"]) == ["MPa", "L/s", "psu"]
    assert t["unit_name"][0] == "megapascal" and t["unit_definition"][1].endswith("L-PER-SEC")
    assert t["property_definition"][0] == OBSERVED_PROPERTIES["pressure"].definition
    assert t["property_definition"][2] == "urn:example:salinity"
    assert list(t["observation_type"]) == ["OM_Measurement"] * 3
    assert t["tags"][0] == "dma_inlet,source" and pd.isna(t["tags"][1]) and pd.isna(t["tags"][2])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"datastream_id": ["a", "a/b"]}, "URLs and MQTT"),
        ({"datastream_id": ["a", "a"]}, "duplicate"),
        ({"datastream_id": ["a", None]}, "no datastream_id"),
        ({"thing_id": ["t", None]}, "no thing_id"),
        ({"observed_property": ["pressure", "salinity"]}, "unknown observed property"),
        ({"unit": ["MPa", "furlong"]}, "unknown unit"),
        ({"observation_type": ["OM_Measurement", "OM_CategoryObservation"]}, "not stored"),
        ({"network": ["water_supply", "railway"]}, "unknown network"),
        ({"colour": ["red", "blue"]}, "unknown datastream column"),
    ],
)
def test_validate_rejects_with_the_culprit(change, words):
    frame = pd.DataFrame(
        {"datastream_id": ["a", "b"], "thing_id": ["t", "u"], "observed_property": "pressure"}
    )
    for col, values in change.items():
        frame[col] = values
    with pytest.raises(InvalidInput, match=words) as err:
        validate_datastreams(frame)
    if "column" not in words and "duplicate" not in words:
        assert err.value.feature in ("b", "a/b", "at position 1")


def test_datastream_object_round_trip_and_checks():
    d = Datastream("dev:1:pressure", "dev:1", "pressure", tags=("dma_inlet",), zone="DMA-1")
    assert d.unit_of_measurement() == UNITS["MPa"]
    row = validate_datastreams(datastreams_frame([d])).to_pylist()[0]
    assert row["datastream_id"] == "dev:1:pressure" and row["zone"] == "DMA-1"
    assert row["tags"] == "dma_inlet"
    with pytest.raises(InvalidInput, match="unknown observed property"):
        Datastream("dev:1:p", "dev:1", "presure")
    with pytest.raises(InvalidInput, match="MQTT"):
        Datastream("dev 1", "dev:1", "pressure")


def test_prepare_observations_reasons_per_row():
    t0 = pd.Timestamp("2024-06-01T00:00:00Z")
    batch = pd.DataFrame(
        {
            "datastream_id": ["a", None, "c", "d", "e", "f", "g"],
            "phenomenon_time": [
                "2024-06-01T08:00:00+08:00",  # = t0
                "2024-06-01T00:00:00Z",
                None,
                "yesterday",
                "2024-06-01T00:00:00Z",
                "2024-06-01T00:00:00Z",
                "2030-01-01T00:00:00Z",
            ],
            "result": [1.5, 1, 1, 1, "abc", float("inf"), True],
            "result_quality": [{"flag": "ok"}, None, None, None, None, None, "good"],
        }
    )
    table, reason = prepare_observations(batch, not_after=t0 + pd.Timedelta("1h"))
    named = [REJECT_REASONS[r] if r >= 0 else None for r in reason]
    assert named == [
        None,
        "unknown datastream",
        "no time",
        "not a time",
        "not a number",
        "not a number",
        "in the future",
    ]
    assert table.column("phenomenon_time")[0].as_py() == dt.datetime(2024, 6, 1)
    assert table.column("result")[6].as_py() == 1.0
    assert table.column("result_quality")[0].as_py() == '{"flag": "ok"}'


def test_prepare_observations_structural_errors():
    with pytest.raises(InvalidInput, match="phenomenon_time"):
        prepare_observations({"datastream_id": ["a"], "result": [1.0]})
    with pytest.raises(InvalidInput, match="not numbers"):
        prepare_observations(
            {"datastream_id": ["a"], "phenomenon_time": [1717200000], "result": [1.0]}
        )
    # 'value' is read like the rule engine reads it
    table, reason = prepare_observations(
        {"datastream_id": ["a"], "phenomenon_time": ["2024-01-01"], "value": [2]}
    )
    assert reason.tolist() == [-1] and table.column("result")[0].as_py() == 2.0


def test_result_types():
    result = np.array([1.0, 1.5, 0.0, 2.0, 1.5])
    kinds = np.array(
        ["OM_CountObservation"] * 2 + ["OM_TruthObservation"] * 2 + ["OM_Measurement"], object
    )
    assert check_result_types(result, kinds).tolist() == [False, True, False, True, False]


def test_observation_object():
    o = Observation("a", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 2.0)
    assert o.result == 2.0
    with pytest.raises(InvalidInput, match="not a number"):
        Observation("a", dt.datetime(2024, 1, 1), float("nan"))


def test_entities_from_devices():
    dev = Feature(
        "dev:lv:000001",
        "devices",
        "level_sensor",
        shapely.Point(10, 20),
        {"feature_id": "mh-1", "network": "storm", "model": "radar level sensor", "name": None},
    )
    thing = Thing.from_device(dev)
    assert thing.id == "dev:lv:000001" and thing.name == "dev:lv:000001"
    assert thing.properties["feature_id"] == "mh-1" and thing.properties["class"] == "level_sensor"
    assert "radar" in thing.description
    loc = Location.from_device(dev)
    assert loc.geometry.equals(shapely.Point(10, 20))
    manhole = Feature("mh-1", "utility_nodes", "manhole", shapely.Point(10, 20), {"name": "MH 1"})
    foi = FeatureOfInterest.from_feature(manhole)
    assert foi.id == "mh-1" and foi.name == "MH 1" and "manhole" in foi.description
    with pytest.raises(InvalidInput, match="devices"):
        Thing.from_device(manhole)

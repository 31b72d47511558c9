"""Rule files: loading, validation with clear errors, fingerprints."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from citytwin.errors import InvalidInput, NotFound
from citytwin.warning import KINDS, LEVELS, load_rules, parse_rules, virtual_city_rules
from citytwin.warning.rules import parse_rules_text

BASE = """\
version: 1
rules:
  - id: level
    kind: threshold
    applies_to: {observed_property: water_level}
    levels: {blue: 1.0, yellow: 2.0, orange: 3.0, red: 4.0}
    hysteresis: 0.1
"""


def write(tmp_path, text: str, name: str = "rules.yaml"):
    p = tmp_path / name
    p.write_text(text, "utf-8")
    return p


def error_of(tmp_path, text: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        load_rules(write(tmp_path, text))
    return exc.value


def test_virtual_city_rules_cover_every_kind_and_the_city_sensors():
    rules = virtual_city_rules()
    assert {r.kind for r in rules} == set(KINDS)
    assert rules.timezone == "Asia/Shanghai"
    props = {p for r in rules for s in r.selectors for p in s.observed_property}
    # the observed properties of the virtual city's device classes
    assert props == {
        "depth_below_cover",
        "pressure",
        "flow",
        "gas_concentration",
        "water_level",
        "rain_intensity",
        "water_volume",
    }
    manhole = rules["manhole-level"]
    assert manhole.condition.direction == "below"
    assert [name for name, _ in manhole.condition.levels] == list(LEVELS)
    values = [v for _, v in manhole.condition.levels]
    assert values == sorted(values, reverse=True)  # less freeboard is worse
    surcharge = rules["surcharge-risk"]
    assert surcharge.op == "all" and len(surcharge.conditions) == 2
    assert len({r.fingerprint for r in rules}) == len(rules)
    with pytest.raises(NotFound, match="no rule 'nope'"):
        rules["nope"]


def test_single_value_shorthand_and_chinese_level_names(tmp_path):
    rules = load_rules(
        write(
            tmp_path,
            BASE
            + """\
  - id: gas
    kind: threshold
    applies_to: gas_concentration
    value: 25
    level: 橙
  - id: river
    kind: threshold
    applies_to: {observed_property: water_level}
    levels: {蓝色: 1.8, 红色预警: 2.5}
""",
        )
    )
    assert rules["gas"].condition.levels == (("orange", 25.0),)
    assert rules["river"].condition.levels == (("blue", 1.8), ("red", 2.5))
    assert rules["gas"].condition.applies_to.observed_property == ("gas_concentration",)


def test_json_rule_files_load_like_yaml(tmp_path):
    import yaml

    data = yaml.safe_load(BASE)
    a = load_rules(write(tmp_path, json.dumps(data), "rules.json"))
    b = load_rules(write(tmp_path, BASE))
    assert a["level"].fingerprint == b["level"].fingerprint


def test_unknown_kind_names_file_rule_field_and_line(tmp_path):
    err = error_of(tmp_path, BASE.replace("kind: threshold", "kind: treshold"))
    text = str(err)
    assert "rules.yaml" in text and "rule level" in text and "'kind'" in text
    assert "unknown kind 'treshold'" in text
    assert err.line == 4
    assert "threshold" in err.hint and "no_data" in err.hint


def test_unknown_field_is_refused_with_the_known_ones(tmp_path):
    err = error_of(tmp_path, BASE.replace("hysteresis: 0.1", "hysterisis: 0.1"))
    assert "unknown field 'hysterisis'" in str(err)
    assert err.line == 7 and err.feature == "rule level"
    assert "hysteresis" in err.hint
    # a field of another kind is unknown too
    err = error_of(tmp_path, BASE + "    silence: 10min\n")
    assert "unknown field 'silence' in a threshold rule" in str(err)


def test_missing_level_values(tmp_path):
    err = error_of(tmp_path, BASE.replace("yellow: 2.0", "yellow: "))
    assert "field 'levels.yellow'" in str(err) and "level yellow has no value" in str(err)
    assert err.line == 6
    no_levels = BASE.replace("    levels: {blue: 1.0, yellow: 2.0, orange: 3.0, red: 4.0}\n", "")
    err = error_of(tmp_path, no_levels)
    assert "field 'levels': missing" in str(err)
    err = error_of(tmp_path, BASE.replace("yellow: 2.0", "yellow: high"))
    assert "not a number: 'high'" in str(err)
    err = error_of(tmp_path, BASE.replace("yellow: 2.0", "amber: 2.0"))
    assert "field 'levels.amber': unknown warning level" in str(err)


def test_levels_out_of_order(tmp_path):
    err = error_of(tmp_path, BASE.replace("orange: 3.0", "orange: 1.5"))
    assert "levels out of order: yellow 2 then orange 1.5" in str(err)
    assert "blue < yellow < orange < red" in err.hint
    # a 'below' rule needs falling values
    err = error_of(tmp_path, BASE.replace("hysteresis: 0.1", "direction: below"))
    assert "levels out of order: blue 1 then yellow 2" in str(err)
    assert "'below'" in err.hint
    ok = load_rules(
        write(
            tmp_path,
            BASE.replace("hysteresis: 0.1", "direction: below").replace(
                "{blue: 1.0, yellow: 2.0, orange: 3.0, red: 4.0}", "{blue: 4, yellow: 3, red: 1}"
            ),
        )
    )
    assert ok["level"].condition.levels == (("blue", 4.0), ("yellow", 3.0), ("red", 1.0))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("kind: sustained\n    duration: 10", "field 'duration': 10 has no unit"),
        ("kind: sustained\n    duration: soon", "not a duration: 'soon'"),
        ("kind: sustained", "field 'duration': missing"),
        ("kind: threshold\n    direction: up", "unknown direction 'up'"),
        ("kind: threshold\n    message: '{value} at {place}'", "unknown placeholder {place}"),
        ("kind: rate_of_change\n    window: 5min\n    per: day", "field 'per': unknown 'day'"),
    ],
)
def test_field_errors(tmp_path, extra, expected):
    err = error_of(tmp_path, BASE.replace("kind: threshold", extra))
    assert expected in str(err) and "rule level" in str(err)


def test_hysteresis_must_not_be_negative(tmp_path):
    err = error_of(tmp_path, BASE.replace("0.1", "-0.1"))
    assert "field 'hysteresis': must be ≥ 0" in str(err)


def test_duplicate_ids_and_missing_id(tmp_path):
    body = BASE.split("rules:\n")[1]
    err = error_of(tmp_path, BASE + body)
    assert "rule id 'level' is used twice (also at line 3)" in str(err)
    err = error_of(tmp_path, BASE.replace("  - id: level\n    kind", "  - kind"))
    assert "rules[0] has no 'id'" in str(err)


def test_composite_validation(tmp_path):
    comp = """\
  - id: comp
    kind: composite
    op: and
    conditions:
      - {kind: threshold, applies_to: rain_intensity, value: 30}
      - {kind: rate_of_change, applies_to: depth_below_cover, value: -0.01, window: 10min}
"""
    rules = load_rules(write(tmp_path, BASE + comp))
    assert rules["comp"].op == "all" and rules["comp"].group_by == "group"
    err = error_of(tmp_path, BASE + comp.replace("op: and", "op: xor"))
    assert "field 'op': unknown op 'xor'" in str(err)
    err = error_of(tmp_path, BASE + comp.replace("value: 30", "levels: {red: 30}"))
    assert "field 'conditions[0].levels'" not in str(err)  # named as the unknown field
    assert "unknown field 'levels' in conditions[0] (threshold)" in str(err)
    err = error_of(tmp_path, BASE + comp.replace("kind: rate_of_change", "kind: no_data"))
    assert "field 'conditions[1].kind'" in str(err)
    err = error_of(tmp_path, BASE + comp + "    group_by: street\n")
    assert "unknown grouping 'street'" in str(err)
    err = error_of(tmp_path, BASE + comp + "    group_by: asset\n    groups: {a: [x]}\n")
    assert "give 'group_by' or 'groups', not both" in str(err)


def test_file_level_errors(tmp_path):
    err = error_of(tmp_path, BASE.replace("version: 1", "version: 1\ntimezone: Mars/Olympus"))
    assert "unknown timezone 'Mars/Olympus'" in str(err)
    err = error_of(tmp_path, BASE.replace("rules:", "rulez:"))
    assert "unknown field 'rulez'" in str(err)
    err = error_of(tmp_path, BASE + "  - id: [unclosed\n")
    assert "not valid YAML" in str(err) and err.line is not None
    with pytest.raises(NotFound):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_rules_text("{", json_text=True)


def test_fingerprint_ignores_wording_but_not_semantics():
    import yaml

    data = yaml.safe_load(BASE)
    a = parse_rules(data)["level"]
    data["rules"][0]["message"] = "{source} is high"
    data["rules"][0]["name"] = "renamed"
    assert parse_rules(data)["level"].fingerprint == a.fingerprint
    data["rules"][0]["hysteresis"] = 0.2
    assert parse_rules(data)["level"].fingerprint != a.fingerprint


# -- predicted (flood forecast) rules -----------------------------------------------------------
PREDICTED = """\
  - id: basements
    kind: predicted
    applies_to: basement
    levels: {orange: 0.15, red: 0.5}
    within: 2h
    message: "{asset_id}: {value:.2f} m predicted in {lead_min:.0f} min ({asset_kind})"
"""


def test_predicted_rules_watch_forecast_assets_not_datastreams(tmp_path):
    extra = """\
  - id: named
    kind: predicted
    applies_to: {assets: [fac-1, 7]}
    unit: cm
    value: 20
    level: 红
  - id: wet-roads
    kind: predicted
    applies_to: {asset_kind: [road, critical_facility], assets: [street-1]}
    levels: {yellow: 0.3}
"""
    rules = load_rules(write(tmp_path, BASE + PREDICTED + extra))
    basements = rules["basements"]
    p = basements.prediction
    assert basements.kind == "predicted" and basements.condition is None
    assert p.asset_kind == ("basement",) and p.assets == ()
    assert p.levels == (("orange", 0.15), ("red", 0.5)) and p.unit == "m"
    assert p.within == pd.Timedelta(hours=2)
    assert basements.selectors == ()  # no datastream is watched
    named = rules["named"].prediction
    assert named.asset_kind == () and named.assets == ("fac-1", "7")
    assert named.levels == (("red", 20.0),) and named.unit == "cm"
    assert named.within == pd.Timedelta(0)  # whenever it is predicted to start
    roads = rules["wet-roads"].prediction
    assert roads.asset_kind == ("road", "critical_facility") and roads.assets == ("street-1",)
    # the readings' engine and the forecasts' evaluation each take their own rules
    assert [r.id for r in rules.on_readings] == ["level"]
    assert [r.id for r in rules.predicted] == ["basements", "named", "wet-roads"]
    # the lead-time window decides the evaluation: it is in the fingerprint
    changed = load_rules(write(tmp_path, BASE + PREDICTED.replace("within: 2h", "within: 1h")))
    assert changed["basements"].fingerprint != basements.fingerprint
    reworded = load_rules(write(tmp_path, BASE + PREDICTED.replace("({asset_kind})", "")))
    assert reworded["basements"].fingerprint == basements.fingerprint


@pytest.mark.parametrize(
    ("old", "new", "expected", "line", "hint"),
    [
        ("applies_to: basement", "applies_to: cellar",
         "field 'applies_to': unknown asset kind 'cellar'", 10, "critical_facility"),
        ("applies_to: basement", "applies_to: {asset_kind: [road, lane]}",
         "field 'applies_to.asset_kind': unknown asset kind 'lane'", 10, "basement"),
        ("applies_to: basement", "applies_to: {asset_kind: road, datastreams: [x]}",
         "unknown field 'datastreams' in a predicted rule's applies_to", 10, "asset_kind, assets"),
        ("applies_to: basement", "applies_to: {}",
         "field 'applies_to': give 'asset_kind', 'assets' or both", 10, "assets: [fac-00035]"),
        ("applies_to: basement", "applies_to: {assets: fac-1}",
         "field 'applies_to.assets': must be a list of asset ids", 10, "[fac-00035, B-12]"),
        ("    applies_to: basement\n", "",
         "field 'applies_to': missing", 8, "applies_to: basement"),
        ("{orange: 0.15, red: 0.5}", "{orange: 0.5, red: 0.15}",
         "levels out of order: orange 0.5 then red 0.15", 11, "blue < yellow < orange < red"),
        ("{orange: 0.15, red: 0.5}", "{orange: 0, red: 0.5}",
         "a predicted depth must be > 0", 11, "levels: {yellow: 0.15"),
        ("within: 2h", "within: 2h\n    unit: mm/h",
         "field 'unit': 'mm/h' is not a unit of depth", 13, "m, cm or mm"),
        ("within: 2h", "within: 120", "field 'within': 120 has no unit", 12, "2h or PT10M"),
        ("within: 2h", "within: -2h", "field 'within': must be positive", 12, None),
        ("within: 2h", "direction: below",
         "unknown field 'direction' in a predicted rule", 12, "within"),
        ("within: 2h", "hysteresis: 0.05",
         "unknown field 'hysteresis' in a predicted rule", 12, "levels"),
        ("{asset_kind}", "{datastream_id} {place}",
         "unknown placeholder {place}", 13, "{lead_min}"),
        ("{asset_kind}", "{asset_kind", "field 'message': not a message template", 13, None),
    ],
)  # fmt: skip
def test_predicted_rule_errors_say_where_and_how_to_fix(tmp_path, old, new, expected, line, hint):
    assert old in PREDICTED
    err = error_of(tmp_path, BASE + PREDICTED.replace(old, new))
    assert expected in str(err) and "rule basements" in str(err) and "rules.yaml" in str(err)
    assert err.line == line
    if hint is not None:
        assert hint in err.hint


def test_forecast_message_fields_belong_to_predicted_rules(tmp_path):
    err = error_of(tmp_path, BASE + "    message: '{source} due in {lead_min} min'\n")
    assert "unknown placeholder {lead_min}" in str(err) and err.feature == "rule level"
    as_predicted = BASE.replace("kind: threshold", "kind: predicted")
    err = error_of(tmp_path, as_predicted.replace("    hysteresis: 0.1\n", ""))
    assert "unknown field 'observed_property' in a predicted rule's applies_to" in str(err)
    assert "predicted" in error_of(tmp_path, BASE.replace("threshold", "forecast")).hint

"""The clearance check: its rule table (default GB 50289-2016 values, a city's override, bad
files) and the engine on hand-made lines (parallel, crossing, same network, connected,
sloped gravity conduits, buildings)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml

from citytwin.errors import InvalidInput, NotFound
from citytwin.networks.clearance import (
    VIOLATION_COLUMNS,
    check_clearances,
    clearance_lines,
    load_clearance_rules,
    parse_clearance_rules,
)


@pytest.fixture(scope="module")
def gb():
    return load_clearance_rules()


def _write(tmp_path, data, name="city.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


CITY = {
    "name": "Test city",
    "rules": [
        {
            "between": ["gas", "power"],
            "horizontal": {"value": 1.0, "source": "test city rule H1"},
            "vertical": {"value": 0.15, "source": "test city rule V1"},
        },
        {
            "between": ["water_supply", ["sewer", "storm"]],
            "vertical": {"value": 0.4, "source": "test city rule V2"},
        },
        {"between": ["gas", "gas"], "vertical": {"value": 0.15, "source": "test city rule V3"}},
        {
            "between": ["building", "gas"],
            "horizontal": {"value": 1.5, "source": "test city rule B1"},
        },
    ],
}


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return load_clearance_rules(_write(tmp_path_factory.mktemp("rules"), CITY))


# -- the rule table ----------------------------------------------------------------------------
def test_default_rules_carry_the_established_gb50289_values_with_their_sources(gb):
    assert gb.name == "GB 50289-2016"
    h = gb.lookup("sewer", "water_supply:d_gt_200", "horizontal")
    assert h.value == 1.5 and "4.1.9" in h.source and "d>200" in h.source
    assert gb.lookup("storm", "water_supply:d_le_200", "horizontal").value == 1.0
    assert gb.lookup("combined", "building", "horizontal").value == 2.5
    assert gb.lookup("storm", "gas:sub_high_a", "horizontal").value == 2.0
    assert gb.lookup("sewer", "power:conduit", "horizontal").value == 0.5
    # cells that could not be established stay unset: no rule, nothing checked
    assert gb.lookup("gas", "power", "horizontal") is None
    assert gb.lookup("storm", "water_supply", "vertical") is None
    assert gb.lookup("sewer", "storm", "horizontal") is None
    for table in (gb.horizontal, gb.vertical):
        for rule in table.values():
            assert rule.source.startswith("GB 50289-2016 table 4.1.")


def test_a_line_of_unknown_subtype_is_held_to_the_strictest_value(gb):
    assert gb.lookup("storm", "water_supply", "horizontal").value == 1.5
    assert gb.lookup("sewer", "gas", "horizontal").value == 2.0  # up to sub-high pressure A
    assert gb.classify("gas", "medium") == "gas:medium_b|medium_a"
    assert gb.lookup("sewer", "gas:medium_b|medium_a", "horizontal").value == 1.2
    assert gb.classify("water_supply", 0.2) == "water_supply:d_le_200"
    assert gb.classify("water_supply", 0.25) == "water_supply:d_gt_200"
    assert gb.classify("power", "Conduit") == "power:conduit"
    assert gb.classify("gas", "unheard-of") == "gas"


def test_a_city_file_merges_over_the_default(tmp_path, gb):
    data = {
        "rules": [
            {"between": ["gas", "power"], "horizontal": {"value": 1.0, "source": "city H"}},
            {  # stricter than the default
                "between": ["sewer", "water_supply:d_gt_200"],
                "horizontal": {"value": 2.0, "source": "city rule 7"},
            },
            {  # switched off
                "between": ["storm", "building"],
                "horizontal": {"value": None, "source": "city: checked elsewhere"},
            },
        ]
    }
    rules = load_clearance_rules(_write(tmp_path, data))
    assert rules.files[0] == "clearance_gb50289.yaml" and rules.files[1].endswith("city.yaml")
    assert rules.lookup("gas", "power", "horizontal").source == "city H"
    assert rules.lookup("sewer", "water_supply:d_gt_200", "horizontal").value == 2.0
    assert rules.lookup("storm", "water_supply:d_gt_200", "horizontal").value == 1.5  # kept
    assert rules.lookup("storm", "building", "horizontal") is None
    assert gb.lookup("storm", "building", "horizontal").value == 2.5  # default unchanged


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"between": ["gaz", "power"], "horizontal": {"value": 1, "source": "s"}},
            "unknown network",
        ),
        ({"between": ["gas:ultra", "power"], "horizontal": {"value": 1, "source": "s"}}, "subtype"),
        ({"between": ["gas", "power"], "horizontal": {"value": -0.5, "source": "s"}}, "negative"),
        (
            {"between": ["gas", "power"], "horizontal": {"value": "1 m", "source": "s"}},
            "not a number",
        ),
        ({"between": ["gas", "power"], "horizontal": {"value": 1.0}}, "source"),
        ({"between": ["gas"], "horizontal": {"value": 1.0, "source": "s"}}, "two classes"),
        ({"between": ["gas", "power"]}, "horizontal' and/or 'vertical"),
        ({"between": ["gas", "power"], "sideways": {"value": 1, "source": "s"}}, "unknown key"),
        ({"between": ["gas", "building"], "vertical": {"value": 1, "source": "s"}}, "building"),
    ],
)
def test_bad_rule_entries_are_refused_with_where_and_why(tmp_path, entry, message):
    path = _write(tmp_path, {"rules": [{"between": ["gas", "heating"], "vertical": {
        "value": 0.15, "source": "ok"}}, entry]})  # fmt: skip
    with pytest.raises(InvalidInput, match=message) as err:
        load_clearance_rules(path)
    assert err.value.source == str(path)
    assert "rules[1]" in str(err.value) or message in ("unknown key",)


def test_bad_rule_files_are_refused(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules:\n  - between: [gas, power\n    horizontal: 1\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="YAML") as err:
        load_clearance_rules(broken)
    assert err.value.line is not None
    with pytest.raises(InvalidInput, match="redefine the networks"):
        load_clearance_rules(_write(tmp_path, {"networks": {"gas": {}}, "rules": []}))
    with pytest.raises(NotFound, match="does not exist"):
        load_clearance_rules(tmp_path / "missing.yaml")
    with pytest.raises(InvalidInput, match="unknown network 'steam'"):
        parse_clearance_rules({"networks": {"steam": {}}, "rules": []})


# -- the engine on hand-made lines -------------------------------------------------------------
def _lines(*rows) -> pd.DataFrame:
    """Lines from (id, network, coords, outer size, cover at start, cover at end[, extra])."""
    out = []
    for row in rows:
        ident, net, coords, size, c0, c1, *extra = row
        out.append(
            {
                "id": ident,
                "network": net,
                "geometry": shapely.LineString(coords),
                "width": size,
                "height": size,
                "cover_from": c0,
                "cover_to": c1,
                **(extra[0] if extra else {}),
            }
        )
    return pd.DataFrame(out)


def _pairs(found: pd.DataFrame) -> set:
    return {
        (k, frozenset((a, b))) for k, a, b in zip(found.kind, found.id_a, found.id_b, strict=True)
    }


def test_parallel_lines_too_close_are_reported_wall_to_wall(city):
    lines = _lines(
        ("g1", "gas", [(0, 0), (50, 0)], 0.2, 1.5, 1.5),
        ("p1", "power", [(10, 0.9), (40, 0.9)], 0.1, 1.2, 1.2),  # 0.9 - 0.15 = 0.75 clear
        ("p2", "power", [(0, 3.0), (50, 3.0)], 0.1, 1.2, 1.2),  # 2.85 clear: compliant
    )
    found = check_clearances(lines, city)
    assert list(found.columns) == list(VIOLATION_COLUMNS)
    assert _pairs(found) == {("horizontal", frozenset({"g1", "p1"}))}
    row = found.iloc[0]
    assert row.required_m == 1.0 and row.actual_m == pytest.approx(0.75)
    assert row.source == "test city rule H1"
    assert 10 <= row.x <= 40 and row.y == pytest.approx(0.45)
    assert row.depth == pytest.approx(((1.5 + 0.1) + (1.2 + 0.05)) / 2, abs=0.01)


def test_lines_near_each_other_but_not_side_by_side_are_not_horizontal_violations(city):
    lines = _lines(
        ("g1", "gas", [(0, 0), (50, 0)], 0.2, 1.5, 1.5),
        ("p1", "power", [(50.5, 0.2), (90, 0.2)], 0.1, 1.2, 1.2),  # end to end: no run
        ("p2", "power", [(20, 0.5), (20.3, 30)], 0.1, 1.2, 1.2),  # leaves at right angles
        ("p3", "power", [(0, 0.7), (1.5, 0.7)], 0.1, 1.2, 1.2),  # side by side for < 2 m
    )
    assert _pairs(check_clearances(lines, city)) == set()
    assert len(check_clearances(lines, city, min_run=1.0)) == 1  # p3, once runs are shorter


def test_a_crossing_with_too_little_vertical_clearance(city):
    lines = _lines(
        ("w1", "water_supply", [(0, 0), (40, 0)], 0.6, 2.5, 2.5),  # underside 3.1 m
        ("s1", "storm", [(20, -20), (20, 20)], 1.0, 3.3, 3.3),  # crown 0.2 m below it
        ("s2", "sewer", [(30, -20), (30, 20)], 0.4, 3.6, 3.4),  # crown 3.5 at the crossing
    )
    found = check_clearances(lines, city)
    assert _pairs(found) == {("vertical", frozenset({"w1", "s1"}))}
    row = found.iloc[0]
    assert row.actual_m == pytest.approx(0.2) and row.required_m == 0.4
    assert (row.x, row.y) == (20.0, 0.0)
    assert row.depth == pytest.approx(3.2)  # the middle of the gap


def test_a_gravity_conduits_crown_is_interpolated_along_it(city):
    # the conduit's cover grows from 2.5 to 4.5 m: at x=10 it is 3.0, at x=30 4.0
    lines = _lines(
        ("s1", "storm", [(0, 0), (40, 0)], 0.5, 2.5, 4.5),
        ("w1", "water_supply", [(10, -5), (10, 5)], 0.3, 2.5, 2.5),  # underside 2.8: 0.2
        ("w2", "water_supply", [(30, -5), (30, 5)], 0.3, 2.5, 2.5),  # 1.2 clear
    )
    found = check_clearances(lines, city)
    assert _pairs(found) == {("vertical", frozenset({"s1", "w1"}))}
    assert found.iloc[0].actual_m == pytest.approx(0.2)
    lines = clearance_lines(
        pd.DataFrame(
            {
                "id": ["n1", "n2"],
                "class": ["manhole", "manhole"],
                "network": ["storm", "storm"],
                "cover_level": [10.0, 10.0],
            }
        ),
        gpd.GeoDataFrame(
            {
                "id": ["s1"],
                "network": ["storm"],
                "from_node": ["n1"],
                "to_node": ["n2"],
                "diameter": [0.5],
                "invert_from": [7.0],
                "invert_to": [5.0],
                "depth": [2.5],
                "props": [{}],
            },
            geometry=[shapely.LineString([(0, 0), (40, 0)])],
        ),
        city,
    )
    assert lines.loc[0, ["cover_from", "cover_to"]].tolist() == pytest.approx([2.5, 4.5])


def test_lines_of_one_network_crossing_unconnected_are_checked_connected_ones_not(city):
    lines = _lines(
        ("m1", "gas", [(0, 0), (40, 0)], 0.2, 1.5, 1.5, {"from_node": "a", "to_node": "b"}),
        ("m2", "gas", [(40, 0), (80, 0)], 0.2, 1.5, 1.5, {"from_node": "b", "to_node": "c"}),
        # a main of the crossing street: meets m1/m2 at their shared node b
        ("m3", "gas", [(40, -30), (40, 30)], 0.2, 1.5, 1.5, {"from_node": "d", "to_node": "b"}),
        # a service joining m1 at a tap without a node of its own (ends on the line)
        ("sv", "gas", [(20, 0), (20, 15)], 0.05, 1.5, 1.5, {"from_node": None, "to_node": "h"}),
        # an outlet pipe crossing m2 at the mains' level: a clash
        ("so", "gas", [(60, -10), (60, 10)], 0.16, 1.5, 1.5, {"from_node": "s", "to_node": "t"}),
        ("m4", "gas", [(80, 0.5), (120, 0.5)], 0.2, 1.5, 1.5, {"from_node": "c", "to_node": "e"}),
    )
    found = check_clearances(lines, city)
    assert _pairs(found) == {("vertical", frozenset({"m2", "so"}))}
    assert found.iloc[0].actual_m == pytest.approx(-0.16)  # they intersect


def test_a_service_connection_is_checked_at_crossings_only(city):
    lines = _lines(
        ("g1", "gas", [(0, 0), (50, 0)], 0.2, 1.5, 1.5),
        # a power service running beside the gas main for 10 m, then crossing it, laid too shallow
        ("sv", "power", [(10, 0.5), (20, 0.5), (20, -10)], 0.05, 1.4, 1.4, {"service": True}),
    )
    found = check_clearances(lines, city)
    assert _pairs(found) == {("vertical", frozenset({"g1", "sv"}))}
    lines.loc[1, "service"] = False
    assert _pairs(check_clearances(lines, city)) == {
        ("vertical", frozenset({"g1", "sv"}))
    }  # crossing lines: the vertical rule, not the horizontal one
    lines.loc[1, "geometry"] = shapely.LineString([(10, 0.5), (20, 0.5), (20, 10)])
    assert _pairs(check_clearances(lines, city)) == {("horizontal", frozenset({"g1", "sv"}))}


def test_lines_too_close_to_a_building(city):
    buildings = gpd.GeoDataFrame(
        {"id": ["b1", "b2"]},
        geometry=[shapely.box(10, 1.0, 30, 20), shapely.box(40, 3.0, 60, 20)],
    )
    lines = _lines(
        ("g1", "gas", [(0, 0), (80, 0)], 0.2, 1.5, 1.5),  # 0.9 m from b1, 2.9 m from b2
        ("g2", "gas", [(15, 19), (15, 30)], 0.05, 1.5, 1.5, {"service": True}),  # ends in b1
        ("w1", "water_supply", [(0, -0.5), (80, -0.5)], 0.2, 2.5, 2.5),  # no rule: unchecked
    )
    found = check_clearances(lines, city, buildings)
    assert _pairs(found) == {("building", frozenset({"g1", "b1"}))}
    row = found.iloc[0]
    assert row.network_b == "building" and row.actual_m == pytest.approx(0.9)
    assert 10 <= row.x <= 30 and row.source == "test city rule B1"


def test_rules_pick_the_subtype_of_each_line(gb):
    lines = _lines(
        ("s1", "sewer", [(0, 0), (50, 0)], 0.4, 3.0, 3.0),
        ("w1", "water_supply", [(0, 1.5), (50, 1.5)], 0.15, 2.5, 2.5),  # 1.225 clear, d≤200
        ("w2", "water_supply", [(0, -1.7), (50, -1.7)], 0.3, 2.5, 2.5),  # 1.35 clear, d>200
    )
    lines["cls"] = ["sewer", "water_supply:d_le_200", "water_supply:d_gt_200"]
    found = check_clearances(lines, gb)
    assert _pairs(found) == {("horizontal", frozenset({"s1", "w2"}))}
    assert found.iloc[0].required_m == 1.5 and "d>200" in found.iloc[0].source


def test_clearance_lines_reads_the_model_frames(city):
    nodes = pd.DataFrame(
        {
            "id": ["a", "b", "c", "svc"],
            "class": ["junction", "junction", "junction", "service_connection"],
            "network": ["gas"] * 4,
            "cover_level": [5.0] * 4,
        }
    )
    links = gpd.GeoDataFrame(
        {
            "id": ["m1", "sv", "box", "pump"],
            "network": ["gas", "gas", "storm", "storm"],
            "from_node": ["a", "b", "x", "y"],
            "to_node": ["b", "svc", "z", "x"],
            "diameter": [0.1, 0.03, 2.0, np.nan],
            "depth": [1.5, 1.5, 3.7, np.nan],
            "pressure_class": ["medium", "low", None, None],
            "props": [
                {"outer_diameter": 0.11},
                {},
                {"xsection": ["RECT_CLOSED", "2", "3", "0", "0", "2.0"]},
                {},
            ],
        },
        geometry=[shapely.LineString([(0, i), (10, i)]) for i in range(4)],
    )
    lines = clearance_lines(nodes, links, city).set_index("id")
    assert lines.attrs["unchecked"] == ["pump"]
    assert lines.loc["m1", ["width", "height", "cls"]].tolist() == [
        0.11,
        0.11,
        "gas:medium_b|medium_a",
    ]
    assert lines.loc["box", ["width", "height"]].tolist() == [6.0, 2.0]  # two 3 m barrels
    assert lines.loc["box", "cover_from"] == 3.7  # no manhole levels: its depth
    assert lines.loc["sv", "service"] and not lines.loc["m1", "service"]
    assert lines.loc["sv", "cls"] == "gas:low"


def test_bad_lines_are_refused(city):
    lines = _lines(("g1", "gas", [(0, 0), (50, 0)], 0.2, 1.5, 1.5))
    with pytest.raises(InvalidInput, match="unknown network 'steam'"):
        check_clearances(lines.assign(network="steam"), city)
    with pytest.raises(InvalidInput, match="lacks column 'cover_to'"):
        check_clearances(lines.drop(columns="cover_to"), city)
    with pytest.raises(InvalidInput, match="≥ 0") as err:
        check_clearances(lines.assign(width=-1.0), city)
    assert err.value.feature == "g1"
    with pytest.raises(InvalidInput, match="LineString"):
        check_clearances(lines.assign(geometry=[shapely.Point(0, 0)]), city)
    assert check_clearances(lines.iloc[:0], city).empty

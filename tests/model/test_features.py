"""The model's schema checks: every wrong input is refused with a clear message."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import pytest
import shapely

from citytwin.errors import InvalidInput
from citytwin.model import LAYERS, NETWORK_TYPES, TwinMeta, layer, validate_frame


def frame(**columns):
    n = len(next(iter(columns.values())))
    geoms = columns.pop("geometry", [shapely.box(i * 20, 0, i * 20 + 10, 10) for i in range(n)])
    return gpd.GeoDataFrame(columns, geometry=geoms, crs="EPSG:32650")


def test_every_layer_named_by_the_model_exists():
    for name in (
        "buildings",
        "streets",
        "water_bodies",
        "zones",
        "facilities",
        "utility_nodes",
        "utility_links",
        "devices",
    ):
        assert name in LAYERS
    assert {"water_supply", "sewer", "storm", "gas", "power", "heating", "telecom"} <= set(
        NETWORK_TYPES
    )
    for cls in (
        "hospital",
        "school",
        "shelter",
        "pumping_station",
        "substation",
        "gas_station",
        "fire_station",
    ):
        assert cls in layer("facilities").classes
    for attr in ("cover_level", "invert_level", "depth"):
        assert layer("utility_nodes").has_attribute(attr)


def test_valid_frame_is_typed_and_completed():
    out = validate_frame(
        "buildings",
        frame(
            id=["a", "b"], **{"class": ["building"] * 2}, height=["12.5", 30], floors=[4.0, None]
        ),
        source="s.geojson",
        valid_from=dt.datetime(2020, 1, 1),
    )
    assert out["height"].tolist() == [12.5, 30.0]
    assert out["floors"].iloc[0] == 4 and out["floors"].isna().iloc[1]
    assert str(out["floors"].dtype) == "Int64"
    assert out["status"].tolist() == ["in_service"] * 2
    assert out["valid_from"].iloc[0] == dt.datetime(2020, 1, 1)
    assert out["source"].tolist() == ["s.geojson"] * 2
    assert set(a.name for a in layer("buildings").attributes) <= set(out.columns)


@pytest.mark.parametrize(
    ("columns", "message", "feature"),
    [
        ({"height": [10, "tall"]}, "expects float, got 'tall'", "b"),
        ({"floors": [3, 2.5]}, "expects int", "b"),
        ({"height": [10, -3]}, "must be >= 0", "b"),
        ({"cim_level": [3, 9]}, "must be one of", "b"),
        ({"status": ["in_service", "demolished"]}, "unknown status 'demolished'", "b"),
        ({"colour": ["red", "blue"]}, "unknown attribute(s) colour", None),
    ],
)
def test_wrong_values_name_feature_and_attribute(columns, message, feature):
    f = frame(id=["a", "b"], **{"class": ["building"] * 2}, **columns)
    with pytest.raises(InvalidInput) as err:
        validate_frame("buildings", f, source="city.gpkg")
    assert message in str(err.value)
    assert "city.gpkg" in str(err.value)
    assert err.value.feature == feature


def test_unknown_class_missing_required_and_duplicate_ids():
    with pytest.raises(InvalidInput, match="unknown class 'castle'"):
        validate_frame("buildings", frame(id=["a"], **{"class": ["castle"]}))
    links = gpd.GeoDataFrame(
        {"id": ["p1"], "class": ["pipe"], "network": ["water_supply"], "from_node": ["n1"]},
        geometry=[shapely.LineString([(0, 0), (1, 1)])],
        crs="EPSG:32650",
    )
    with pytest.raises(InvalidInput, match="required attribute 'to_node' is missing"):
        validate_frame("utility_links", links)
    with pytest.raises(InvalidInput, match="duplicate feature id") as err:
        validate_frame("buildings", frame(id=["a", "a"], **{"class": ["building"] * 2}))
    assert err.value.feature == "a"
    links["to_node"] = "n2"
    links["network"] = "steam"
    with pytest.raises(InvalidInput, match="network"):
        validate_frame("utility_links", links)


def test_invalid_wrong_kind_and_missing_geometry():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    with pytest.raises(InvalidInput, match="invalid geometry: Self-intersection") as err:
        validate_frame("buildings", frame(id=["x"], **{"class": ["building"]}, geometry=[bowtie]))
    assert err.value.feature == "x" and "--repair-geometry" in str(err.value)
    repaired = validate_frame(
        "buildings",
        frame(id=["x"], **{"class": ["building"]}, geometry=[bowtie]),
        repair_geometry=True,
    )
    assert repaired.geometry.iloc[0].is_valid
    with pytest.raises(InvalidInput, match="geometry is a Point, layer 'buildings' takes Polygon"):
        validate_frame(
            "buildings", frame(id=["x"], **{"class": ["building"]}, geometry=[shapely.Point(0, 0)])
        )
    with pytest.raises(InvalidInput, match="geometry is missing or empty"):
        validate_frame("buildings", frame(id=["x"], **{"class": ["building"]}, geometry=[None]))


def test_twin_needs_a_projected_metric_crs():
    assert TwinMeta("t", "epsg:4547").crs == "EPSG:4547"
    with pytest.raises(InvalidInput, match="not projected"):
        TwinMeta("t", "EPSG:4326")
    with pytest.raises(InvalidInput, match="units"):
        TwinMeta("t", "EPSG:3547")  # US survey feet
    with pytest.raises(InvalidInput, match="unknown CRS"):
        TwinMeta("t", "EPSG:999999")

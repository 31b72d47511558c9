"""Impacts from a flood's rasters: hazard classes, depths at buildings' walls and at points,
and the flooded length of roads — against a raster whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from citytwin.flood.impacts import (
    HAZARD_CLASSES,
    Raster,
    building_depths,
    flooded_length,
    hazard_class,
    point_depths,
)

GRID = Raster(1000.0, 2000.0, 2.0, (50, 100))  # 200 m x 100 m, 2 m cells


def depths() -> np.ndarray:
    """0.5 m of water in the west half (x < 1100), dry in the east half."""
    d = np.zeros(GRID.shape)
    d[:, :50] = 0.5
    return d


def test_hazard_classes_follow_fd2320():
    rating = np.array([np.nan, 0.0, 0.6, 0.75, 1.0, 1.5, 2.5])
    classes = [HAZARD_CLASSES[k] for k in hazard_class(rating)]
    assert classes == ["none", "none", "low", "moderate", "moderate", "significant", "extreme"]
    wet = np.array([True, True, True, True, False, True, True])
    assert HAZARD_CLASSES[hazard_class(rating, wet)[4]] == "none"


def test_buildings_take_the_depth_at_their_walls():
    west = shapely.box(1020, 1950, 1040, 1970)  # in the water
    east = shapely.box(1150, 1950, 1170, 1970)  # dry
    across = shapely.box(1090, 1950, 1110, 1970)  # walls on both sides of the edge
    off = shapely.box(5000, 5000, 5010, 5010)  # off the grid
    d = building_depths(depths(), GRID, np.array([west, east, across, off]))
    assert d[0] == pytest.approx(0.5) and d[1] == 0.0 and d[2] == pytest.approx(0.5)
    assert np.isnan(d[3])


def test_points_and_roads():
    pts = np.array([shapely.Point(1010, 1990), shapely.Point(1190, 1910)])
    assert list(point_depths(depths(), GRID, pts)) == pytest.approx([0.5, 0.0])
    # a road 150 m long from x = 1020 to 1170: 80 m of it (to x = 1100) under 0.5 m of water
    road = shapely.LineString([(1020, 1955), (1170, 1955)])
    dry = shapely.LineString([(1120, 1955), (1190, 1955)])
    lengths = flooded_length(depths(), GRID, np.array([road, dry]))
    assert lengths[0] == pytest.approx(80.0, abs=GRID.dx)
    assert lengths[1] == 0.0
    # shallower than the limit: passable
    assert flooded_length(depths(), GRID, np.array([road]), depth=0.6)[0] == 0.0

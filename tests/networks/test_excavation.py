"""The excavation engine on hand-made lines: reach, depth, gravity slopes, bad plans."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from citytwin.errors import InvalidInput
from citytwin.networks.excavation import Dig, critical_line, excavation_hits


def _lines():
    return np.array(
        [
            shapely.LineString([(-50, 0), (50, 0)]),  # through the pit, 1.2 m deep
            shapely.LineString([(-50, 5.5), (50, 5.5)]),  # 0.5 m beyond the 5 m pit edge
            shapely.LineString([(-50, 7.0), (50, 7.0)]),  # 2 m beyond: out of reach
            shapely.LineString([(0, -50), (0, 50)]),  # through the pit, 4 m deep
            shapely.LineString([(-100, 2), (100, 2)]),  # a sewer falling from 1 m to 5 m cover
        ]
    )


def test_reach_and_depth():
    pit = Dig(shapely.box(-5, -5, 5, 5), depth=2.0, buffer=1.0, vertical_margin=0.5)
    depth = np.array([1.2, 1.0, 1.0, 4.0, np.nan])
    crown_from = np.array([np.nan] * 4 + [1.0])
    crown_to = np.array([np.nan] * 4 + [5.0])
    hits = excavation_hits(_lines(), depth, pit, crown_from=crown_from, crown_to=crown_to)
    assert hits["index"].tolist() == [0, 1, 3, 4]
    by = hits.set_index("index")
    assert by.loc[0, "distance_m"] == 0 and by.loc[1, "distance_m"] == pytest.approx(0.5)
    assert by.loc[0, "struck"] and by.loc[1, "struck"]
    assert not by.loc[3, "struck"] and by.loc[3, "crown_depth_m"] == 4.0
    # the sewer is shallowest where it enters the reach on its upper side: x = -6
    assert by.loc[4, "crown_depth_m"] == pytest.approx(1.0 + 4.0 * 94 / 200, abs=1e-3)
    assert by.loc[4, "location"] == (-6.0, 2.0)
    assert not by.loc[4, "struck"]  # 2.88 m: deeper than the 2 m floor plus the 0.5 m margin
    deeper = Dig(pit.area, depth=2.5, buffer=1.0, vertical_margin=0.5)
    again = excavation_hits(_lines(), depth, deeper, crown_from=crown_from, crown_to=crown_to)
    assert again.set_index("index").loc[4, "struck"]


def test_unknown_depth_counts_as_struck_and_deep_line_is_not():
    pit = Dig(shapely.box(-5, -5, 5, 5), depth=1.0, buffer=0.0)
    hits = excavation_hits(_lines()[[0, 3]], np.array([np.nan, 2.0]), pit)
    assert hits["struck"].tolist() == [True, False]


def test_trench_line_needs_a_buffer():
    with pytest.raises(InvalidInput, match="needs a buffer"):
        Dig(shapely.LineString([(0, 0), (10, 0)]), depth=1.5, buffer=0)
    with pytest.raises(InvalidInput, match="depth"):
        Dig(shapely.box(0, 0, 1, 1), depth=float("nan"))
    trench = Dig(shapely.LineString([(-20, 3), (20, 3)]), depth=1.5, buffer=0.6)
    hits = excavation_hits(_lines(), np.array([1.2, 1.0, 1.0, 4.0, 1.0]), trench)
    assert hits["index"].tolist() == [3]  # the line at y = 2 is 1 m from the trench's axis
    wider = Dig(trench.area, depth=1.5, buffer=1.0)
    assert excavation_hits(_lines(), np.full(5, 1.0), wider)["index"].tolist() == [3, 4]


def test_critical_lines():
    assert critical_line("gas", "high", 0.3) == "high-pressure gas"
    assert critical_line("gas", "medium", 0.3) is None
    assert critical_line("power", "HV", 0.1) == "high-voltage power"
    assert critical_line("water_supply", None, 0.8) == "trunk main"
    assert critical_line("water_supply", None, 0.2) is None

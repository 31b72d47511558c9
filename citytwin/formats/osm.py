"""OpenStreetMap PBF import through pyrosm: buildings, streets and rail, water, facilities.

What becomes what:

- ``building=*`` ways and relations → ``buildings`` class ``building``; ``building:part=*``
  (without ``building``) → class ``building_part`` with ``parent_id`` the building whose
  footprint holds the part. ``height`` comes from the ``height`` tag (metres, or feet written
  ``40'`` / ``40 ft``); without it, from ``building:levels`` × ``storey_height`` with
  ``height_estimated`` True.
- ``highway=*`` ways (pyrosm's street network of ``network_type``, ``"all"`` by default) →
  ``streets`` class ``road``; ``railway=rail|subway|light_rail|tram`` ways → class ``rail``.
  ``street_class`` is the highway or railway value. A missing ``width`` is estimated (see
  ``estimate_width``) and flagged ``props["width_estimated"]``. ``oneway=-1`` ways are reversed
  so that every one-way line runs in the direction of traffic.
- ``natural=water``, ``waterway=riverbank`` and ``water=*`` areas and ``waterway=river|stream|
  canal`` lines → ``water_bodies``.
- hospitals, clinics, schools, kindergartens, universities, elderly care, fire stations, police,
  shelters, metro and rail stations, bus stations, substations, power plants, fuel stations
  and town halls (``amenity``, ``railway``, ``public_transport``, ``emergency``, ``power``
  tags) → ``facilities``, with ``building_id`` the building that houses them.

Ids are ``osm:way/123``, ``osm:relation/45``, ``osm:node/6``. Tags that no attribute holds
exactly stay in ``props`` (with ``osm_version`` and ``osm_timestamp``). OSM polygons with
slightly invalid rings are repaired (``shapely.make_valid``, polygonal parts kept) and flagged
``props["geometry_repaired"]``; features left with no area or length (ways cut at the edge of
an extract) are dropped with a logged warning.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyrosm
import shapely
from google.protobuf.message import DecodeError
from pyrosm.exceptions import PBFException

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, parse_crs, require_file, source_name, to_twin_crs

log = logging.getLogger(__name__)

IN_MEMORY_MAX_BYTES = 64 * 2**20
"""Files up to this size are parsed once and every layer is read from memory (several times
faster for the five reads an import makes); larger files are streamed with bounded memory."""

_STRUCTURAL = frozenset(
    {
        "id",
        "timestamp",
        "version",
        "changeset",
        "visible",
        "osm_type",
        "geometry",
        "tags",
        "lon",
        "lat",
        "length",
        "nodes",
        "uid",
        "user",
    }
)
"""pyrosm columns that are not OSM tags."""

# -- buildings -------------------------------------------------------------------------
_USE = {
    **dict.fromkeys(
        (
            "apartments",
            "residential",
            "house",
            "detached",
            "semidetached_house",
            "terrace",
            "dormitory",
            "bungalow",
            "cabin",
            "farm",
            "houseboat",
            "static_caravan",
        ),
        "residential",
    ),
    **dict.fromkeys(("commercial", "retail", "kiosk", "supermarket", "hotel"), "commercial"),
    **dict.fromkeys(("industrial", "warehouse", "manufacture"), "industrial"),
    "office": "office",
    "school": "school",
    "hospital": "hospital",
    **dict.fromkeys(("university", "college"), "university"),
}
"""Building tag values that name a common use; other values are kept as the use itself."""

# -- streets ---------------------------------------------------------------------------
RAILWAYS = ("rail", "subway", "light_rail", "tram")

LANE_WIDTH_M = {
    "motorway": 3.75,
    "trunk": 3.5,
    "primary": 3.5,
    "secondary": 3.25,
    "tertiary": 3.0,
    "unclassified": 3.0,
    "residential": 3.0,
    "living_street": 3.0,
    "service": 3.0,
    "road": 3.0,
    "busway": 3.5,
    "track": 3.0,
}
"""Lane width by road class (``*_link`` roads take their class's); unknown road classes 3 m."""

DEFAULT_LANES = {
    "motorway": 2,
    "trunk": 2,
    "primary": 2,
    "secondary": 2,
    "tertiary": 2,
    "unclassified": 2,
    "residential": 2,
    "living_street": 2,
    "road": 2,
}
"""Lanes of a two-way road without a ``lanes`` tag. One-way roads (except motorways and
trunk roads, whose carriageways are mapped one way each), links, service roads, tracks and
unknown classes count one lane."""

PATH_WIDTH_M = {
    "pedestrian": 5.0,
    "footway": 2.0,
    "cycleway": 2.0,
    "path": 1.5,
    "bridleway": 2.0,
    "steps": 2.0,
    "corridor": 2.0,
    "trail": 1.0,
    "elevator": 1.5,
    "escalator": 1.0,
    "ladder": 0.5,
    "via_ferrata": 0.5,
    "sidewalk": 2.0,
    "crossing": 3.0,
    "platform": 3.0,
}
"""Width of ways that have no lanes (pedestrian streets, paths, steps ...)."""

RAIL_WIDTH_M = {"rail": 4.0, "subway": 4.0, "light_rail": 3.5, "tram": 3.0}
"""Approximate width taken by one track (vehicle clearance, not the gauge)."""

_TRUE = ("yes", "true", "1")
_FALSE = ("no", "false", "0")

# -- water -----------------------------------------------------------------------------
_WATER_LINES = ("river", "stream", "canal")
_WATER_CLASS = {
    "river": "river",
    "oxbow": "river",
    "canal": "canal",
    "lake": "lake",
    "pond": "pond",
    "reservoir": "reservoir",
    "basin": "reservoir",
    "stream": "stream",
    "sea": "sea",
    "wetland": "wetland",
}
"""``water=*`` (and ``landuse=reservoir|pond``) values → class; other areas are ``water``."""

# -- facilities ------------------------------------------------------------------------
_FACILITY_FILTER: dict[str, list[str]] = {
    "amenity": [
        "hospital",
        "clinic",
        "doctors",
        "school",
        "kindergarten",
        "university",
        "college",
        "nursing_home",
        "social_facility",
        "fire_station",
        "police",
        "shelter",
        "bus_station",
        "fuel",
        "townhall",
    ],
    "railway": ["station", "halt", "subway_entrance"],
    "public_transport": ["station"],
    "emergency": ["assembly_point"],
    "power": ["substation", "plant"],
}
_AMENITY_CLASS = {
    "hospital": "hospital",
    "clinic": "clinic",
    "doctors": "clinic",
    "school": "school",
    "kindergarten": "kindergarten",
    "university": "university",
    "college": "university",
    "nursing_home": "elderly_care",
    "fire_station": "fire_station",
    "police": "police",
    "bus_station": "bus_station",
    "fuel": "gas_station",
    "townhall": "government",
}
_NOT_EMERGENCY_SHELTERS = (
    "public_transport",
    "picnic_shelter",
    "lean_to",
    "sun_shelter",
    "field_shelter",
    "gazebo",
)
"""``shelter_type`` values of ``amenity=shelter`` that shelter from weather, not emergencies."""

CRITICAL_FACILITIES = ("hospital", "clinic", "fire_station", "police", "shelter", "elderly_care")


def read_osm(
    path: str | Path,
    twin_crs: Any,
    *,
    bbox: Sequence[float] | None = None,
    storey_height: float = 3.0,
    id_prefix: str = "osm:",
    network_type: str = "all",
) -> ImportBundle:
    """Read an OpenStreetMap ``.osm.pbf`` extract into ``buildings``, ``streets``,
    ``water_bodies`` and ``facilities`` in the twin's CRS.

    ``bbox`` (min lon, min lat, max lon, max lat in WGS84) limits the read to an area;
    ``storey_height`` (m) turns ``building:levels`` into a height where no ``height`` tag is
    given; ``network_type`` is pyrosm's street network type (``all``, ``driving`` ...).
    """
    p = require_file(path)
    source = source_name(p)
    crs = parse_crs(twin_crs, source=source)
    if not storey_height > 0:
        raise InvalidInput(f"storey height must be positive, got {storey_height}", source=source)
    if bbox is not None and (len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3])):
        raise InvalidInput(
            f"bbox {tuple(bbox)} is not an area",
            source=source,
            hint="give min lon, min lat, max lon, max lat (WGS84)",
        )
    if not p.name.lower().endswith(".pbf"):
        raise InvalidInput(
            "not an OSM PBF file name",
            source=source,
            hint="name it .osm.pbf; convert .osm XML with `osmium cat in.osm -o out.osm.pbf`",
        )
    frames = _read_pbf(p, source, bbox, network_type)

    bundle = ImportBundle(source)
    buildings = _buildings(
        frames["buildings"], frames["parts"], crs, id_prefix, storey_height, source
    )
    bundle.add("buildings", buildings)
    bundle.add("streets", _streets(frames["roads"], frames["rails"], crs, id_prefix, source))
    bundle.add("water_bodies", _water(frames["water"], crs, id_prefix, source))
    bundle.add("facilities", _facilities(frames["facilities"], buildings, crs, id_prefix, source))
    return bundle


def _read_pbf(
    path: Path, source: str, bbox: Sequence[float] | None, network_type: str
) -> dict[str, gpd.GeoDataFrame | None]:
    """The pyrosm reads of an import (``None`` where nothing matched)."""
    engine = "in_memory" if path.stat().st_size <= IN_MEMORY_MAX_BYTES else "out_of_core"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pyrosm warns on empty results
            osm = pyrosm.OSM(
                str(path),
                bounding_box=None if bbox is None else list(bbox),
                complete_relations=True,
                engine=engine,
                progress=False,
            )
            return {
                "buildings": osm.get_buildings(),
                "parts": osm.get_data_by_custom_criteria({"building:part": True}, keep_nodes=False),
                "roads": osm.get_network(network_type),
                "rails": osm.get_data_by_custom_criteria(
                    {"railway": list(RAILWAYS)}, keep_nodes=False, keep_relations=False
                ),
                "water": osm.get_data_by_custom_criteria(
                    {"natural": ["water"], "waterway": ["riverbank", *_WATER_LINES], "water": True},
                    keep_nodes=False,
                ),
                "facilities": osm.get_data_by_custom_criteria(_FACILITY_FILTER),
            }
    except (PBFException, DecodeError, zlib.error, EOFError) as exc:
        raise InvalidInput(
            f"not a readable OSM PBF file ({type(exc).__name__}: {str(exc)[:200]})",
            source=source,
            hint="the file is truncated or not OSM PBF: download the extract again, or check it"
            " with `osmium fileinfo`",
        ) from None
    except ValueError as exc:  # pyrosm's argument checks (network type, bounding box)
        raise InvalidInput(str(exc), source=source) from None


# -- common ----------------------------------------------------------------------------
@dataclass
class _Elements:
    """OSM elements of one read, in the twin's CRS: ids, all tags, metadata, geometry."""

    ids: np.ndarray
    tags: list[dict[str, Any]]
    meta: list[dict[str, Any]]
    geometry: np.ndarray
    repaired: np.ndarray

    def tag(self, key: str) -> pd.Series:
        """The values of tag ``key`` (None where absent), as strings."""
        return pd.Series([t.get(key) for t in self.tags], dtype=object)

    def subset(self, keep: np.ndarray) -> _Elements:
        idx = np.flatnonzero(keep)
        return _Elements(
            self.ids[idx],
            [self.tags[i] for i in idx],
            [self.meta[i] for i in idx],
            self.geometry[idx],
            self.repaired[idx],
        )


def _elements(frame: gpd.GeoDataFrame | None, crs: Any, prefix: str, source: str) -> _Elements:
    """The elements of a pyrosm frame, reprojected, with polygons repaired and degenerate
    geometries (no area, no length) dropped."""
    if frame is None or len(frame) == 0:
        return _Elements(
            np.array([], dtype=object), [], [], np.array([], dtype=object), np.array([], dtype=bool)
        )
    frame = to_twin_crs(frame, crs, source=source)
    ids = prefix + frame["osm_type"].astype(str) + "/" + frame["id"].astype("int64").astype(str)
    tag_cols = [c for c in frame.columns if c not in _STRUCTURAL]
    columns = {c: frame[c].to_numpy(dtype=object) for c in tag_cols}
    extra = frame["tags"].to_numpy(dtype=object) if "tags" in frame.columns else [None] * len(frame)
    tags = []
    for i, more in enumerate(extra):
        t = {c: v[i] for c, v in columns.items() if isinstance(v[i], str)}
        if isinstance(more, str):
            t.update(json.loads(more))
        tags.append(t)
    meta = _metadata(frame)
    geoms, repaired, keep = _repair(frame.geometry.to_numpy())
    elements = _Elements(ids.to_numpy(dtype=object), tags, meta, geoms, repaired)
    if not keep.all():
        dropped = elements.ids[~keep]
        log.warning(
            "%s: dropped %d OSM features without area or length (cut at the extract's edge?): %s",
            source,
            len(dropped),
            ", ".join(dropped[:20]),
        )
        elements = elements.subset(keep)
    return elements


def _metadata(frame: gpd.GeoDataFrame) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{} for _ in range(len(frame))]
    if "version" in frame.columns:
        for m, v in zip(out, frame["version"].to_numpy(), strict=True):
            if pd.notna(v):
                m["osm_version"] = int(v)
    if "timestamp" in frame.columns:
        for m, v in zip(out, frame["timestamp"].to_numpy(), strict=True):
            if pd.notna(v) and v > 0:
                m["osm_timestamp"] = dt.datetime.fromtimestamp(int(v), dt.UTC).isoformat()
    return out


def _repair(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(geometries, repaired, keep): invalid polygons made valid keeping their polygonal
    parts; ``keep`` is False for features that are left with no area or length."""
    geoms = geoms.copy()
    polygonal = np.isin(shapely.get_type_id(geoms), (3, 6))
    repaired = polygonal & ~shapely.is_valid(geoms)
    for i in np.flatnonzero(repaired):
        geoms[i] = _polygonal_part(shapely.make_valid(geoms[i]))
    empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    degenerate = np.where(polygonal, shapely.area(geoms) <= 0, ~shapely.is_valid(geoms))
    return geoms, repaired, ~(empty | degenerate)


def _polygonal_part(geom: shapely.Geometry) -> shapely.Geometry:
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def _props(
    el: _Elements, consumed: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """Per feature: the tags no attribute holds exactly (``consumed`` marks those that one
    does, per feature), metadata, the repair flag and ``extra`` values (where not None)."""
    out = []
    for i, t in enumerate(el.tags):
        p = {k: v for k, v in t.items() if not (k in consumed and consumed[k][i])}
        p.update(el.meta[i])
        if el.repaired[i]:
            p["geometry_repaired"] = True
        if extra:
            p.update({k: v[i] for k, v in extra.items() if v[i] is not None})
        out.append(p)
    return out


def _frame(
    el: _Elements, crs: Any, cls: Any, attrs: dict[str, Any], props: list[dict[str, Any]]
) -> gpd.GeoDataFrame:
    data = {"id": el.ids, "class": cls, **attrs, "props": props}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(el.geometry, crs=crs), crs=crs)


def _present(s: pd.Series) -> np.ndarray:
    return s.notna().to_numpy()


def parse_length(values: pd.Series) -> pd.Series:
    """Lengths in metres from OSM values: ``12``, ``12 m``, ``12.5m``, ``12,5``, feet ``40'``,
    ``40 ft``, ``40'6"``; NaN for anything else."""
    s = values.astype("string").str.strip().str.lower()
    metres = s.str.extract(r"^(\d+(?:[.,]\d+)?)\s*(?:m|metres?|meters?)?$")[0]
    metres = pd.to_numeric(metres.str.replace(",", ".", regex=False), errors="coerce")
    feet = s.str.extract(r"^(\d+(?:\.\d+)?)\s*(?:'|ft|feet)\s*(?:(\d+(?:\.\d+)?)\s*(?:\"|in)?)?$")
    in_feet = (
        pd.to_numeric(feet[0], errors="coerce") * 0.3048
        + pd.to_numeric(feet[1], errors="coerce").fillna(0.0) * 0.0254
    )
    return metres.fillna(in_feet).astype("float64")


def _number(values: pd.Series) -> pd.Series:
    s = values.astype("string").str.strip().str.replace(",", ".", regex=False)
    return pd.to_numeric(
        s.where(s.str.fullmatch(r"\d+(?:\.\d+)?").fillna(False)), errors="coerce"
    ).astype("float64")


def _whole(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Integers from OSM values, and where the value was exactly an integer."""
    n = _number(values)
    exact = (n == np.floor(n)).fillna(False).to_numpy(dtype=bool)
    return np.floor(n).astype("Int64"), exact


def _flag(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Yes/no tags as booleans: any value but a "no" means yes (``bridge=viaduct``); returns
    the booleans and where the value was plainly yes or no."""
    s = values.astype("string").str.strip().str.lower()
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[s.notna()] = ~s[s.notna()].isin(_FALSE)
    plain = s.isin(_TRUE + _FALSE).fillna(False).to_numpy(dtype=bool)
    return out, plain


# -- buildings -------------------------------------------------------------------------
def _buildings(
    frame: gpd.GeoDataFrame | None,
    parts_frame: gpd.GeoDataFrame | None,
    crs: Any,
    prefix: str,
    storey_height: float,
    source: str,
) -> gpd.GeoDataFrame:
    el = _elements(frame, crs, prefix, source)
    parts = _elements(parts_frame, crs, prefix, source)
    parts = parts.subset(np.array([t.get("building") is None for t in parts.tags], dtype=bool))
    whole = _building_frame(el, crs, "building", "building", storey_height, None)
    parent = _containing(parts.geometry, whole, crs)
    part_frame = _building_frame(
        parts, crs, "building_part", "building:part", storey_height, parent
    )
    frames = [f for f in (whole, part_frame) if len(f)]
    if not frames:
        return whole
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)


def _building_frame(
    el: _Elements,
    crs: Any,
    cls: str,
    use_key: str,
    storey_height: float,
    parent_id: np.ndarray | None,
) -> gpd.GeoDataFrame:
    height = parse_length(el.tag("height"))
    measured = height.notna().to_numpy()
    levels_tag = el.tag("building:levels")
    levels = _number(levels_tag)
    floors, floors_exact = _whole(levels_tag)
    basement, basement_exact = _whole(el.tag("building:levels:underground"))
    estimate = height.isna() & (levels > 0)
    estimated = pd.Series(pd.NA, index=height.index, dtype="boolean")
    estimated[height.notna()] = False
    estimated[estimate] = True
    height = height.where(~estimate, levels * storey_height)
    raw_use = el.tag(use_key)
    use = raw_use.map(lambda v: None if v in (None, "yes") else _USE.get(v, v))
    declared = el.tag("building:use").map(lambda v: None if v in (None, "yes") else _USE.get(v, v))
    use = use.where(use.notna(), declared)
    start = el.tag("start_date").astype("string")
    year = pd.to_numeric(start.str.extract(r"^(\d{4})")[0], errors="coerce").astype("Int64")
    attrs: dict[str, Any] = {
        "name": el.tag("name"),
        "height": height,
        "height_estimated": estimated,
        "floors": floors,
        "basement_floors": basement,
        "use": use,
        "year_built": year,
    }
    if parent_id is not None:
        attrs["parent_id"] = parent_id
    consumed = {
        "name": _present(el.tag("name")),
        "height": measured,
        "building:levels": floors_exact,
        "building:levels:underground": basement_exact,
        use_key: (raw_use.isin(["yes"]) | (raw_use == use)).fillna(False).to_numpy(dtype=bool),
        "building:use": (el.tag("building:use") == use).fillna(False).to_numpy(dtype=bool),
        "start_date": start.str.fullmatch(r"\d{4}").fillna(False).to_numpy(dtype=bool),
    }
    return _frame(el, crs, cls, attrs, _props(el, consumed))


def _containing(geoms: np.ndarray, polygons: gpd.GeoDataFrame, crs: Any) -> np.ndarray:
    """For each geometry, the id of the smallest feature of ``polygons`` holding a point of it
    (None where none does)."""
    out = np.full(len(geoms), None, dtype=object)
    if len(geoms) == 0 or len(polygons) == 0:
        return out
    points = gpd.GeoDataFrame(geometry=gpd.GeoSeries(shapely.point_on_surface(geoms), crs=crs))
    holders = gpd.GeoDataFrame(
        {"holder": polygons["id"].to_numpy(), "area": polygons.geometry.area.to_numpy()},
        geometry=polygons.geometry.to_numpy(),
        crs=crs,
    )
    hits = points.sjoin(holders, predicate="within").sort_values("area")
    hits = hits[~hits.index.duplicated(keep="first")]
    out[hits.index.to_numpy()] = hits["holder"].to_numpy()
    return out


# -- streets ---------------------------------------------------------------------------
def estimate_width(street_class: pd.Series, lanes: pd.Series, oneway: pd.Series) -> pd.Series:
    """Carriageway width (m) of streets without a width tag, by class.

    Roads: lanes (the ``lanes`` tag, else ``DEFAULT_LANES``) × ``LANE_WIDTH_M``, e.g. a
    two-way residential street 2 × 3.0 = 6 m, a motorway carriageway 2 × 3.75 = 7.5 m;
    paths and pedestrian ways ``PATH_WIDTH_M``; rail ``RAIL_WIDTH_M`` per track.
    """
    cls = street_class.astype("string").str.removesuffix("_link")
    link = street_class.astype("string").str.endswith("_link").fillna(False)
    lane_width = cls.map(LANE_WIDTH_M).astype("float64").fillna(3.0)
    default = cls.map(DEFAULT_LANES).astype("float64").fillna(1.0)
    one_way = oneway.fillna(False).astype(bool) & ~cls.isin(["motorway", "trunk"])
    default = default.where(~(one_way | link), 1.0)
    n = lanes.astype("float64").where(lanes.notna() & (lanes.astype("float64") > 0), default)
    width = n * lane_width
    fixed = cls.map({**PATH_WIDTH_M, **RAIL_WIDTH_M}).astype("float64")
    return fixed.fillna(width).astype("float64")


def _streets(
    roads: gpd.GeoDataFrame | None,
    rails: gpd.GeoDataFrame | None,
    crs: Any,
    prefix: str,
    source: str,
) -> gpd.GeoDataFrame:
    road = _street_frame(_elements(roads, crs, prefix, source), crs, "road", "highway")
    rail = _street_frame(_elements(rails, crs, prefix, source), crs, "rail", "railway")
    if len(road) and len(rail):
        # A way tagged both highway and railway (a street with tram tracks mapped on it) is
        # both a road and a rail line: the rail feature gets its own id.
        taken = rail["id"].isin(road["id"])
        rail.loc[taken, "id"] = rail.loc[taken, "id"] + "/rail"
    frames = [f for f in (road, rail) if len(f)]
    if not frames:
        return road
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)


def _street_frame(el: _Elements, crs: Any, cls: str, class_key: str) -> gpd.GeoDataFrame:
    street_class = el.tag(class_key)
    lanes, lanes_exact = _whole(el.tag("lanes"))
    oneway_tag = el.tag("oneway").astype("string").str.strip().str.lower()
    reverse = (oneway_tag == "-1").fillna(False).to_numpy(dtype=bool)
    oneway = pd.Series(pd.NA, index=oneway_tag.index, dtype="boolean")
    oneway[oneway_tag.isin(_TRUE) | (oneway_tag == "-1")] = True
    oneway[oneway_tag.isin(_FALSE)] = False
    roundabout = el.tag("junction") == "roundabout"
    implied = oneway_tag.isna() & ((street_class == "motorway") | roundabout)
    oneway[implied.fillna(False).to_numpy(dtype=bool)] = True
    bridge, bridge_plain = _flag(el.tag("bridge"))
    tunnel, tunnel_plain = _flag(el.tag("tunnel"))
    width = parse_length(el.tag("width"))
    measured = width.notna().to_numpy()
    width = width.fillna(parse_length(el.tag("est_width")))
    width = width.fillna(estimate_width(street_class, lanes, oneway))
    if reverse.any():
        el.geometry[reverse] = shapely.reverse(el.geometry[reverse])
    attrs = {
        "name": el.tag("name"),
        "street_class": street_class,
        "width": width,
        "lanes": lanes,
        "oneway": oneway,
        "bridge": bridge,
        "tunnel": tunnel,
        "surface": el.tag("surface"),
    }
    consumed = {
        "name": _present(el.tag("name")),
        class_key: _present(street_class),
        "lanes": lanes_exact,
        "oneway": oneway_tag.isin(_TRUE + _FALSE).fillna(False).to_numpy(dtype=bool),
        "bridge": bridge_plain,
        "tunnel": tunnel_plain,
        "surface": _present(el.tag("surface")),
        "width": measured,
    }
    extra = {"width_estimated": np.where(measured, None, True)}
    return _frame(el, crs, cls, attrs, _props(el, consumed, extra))


# -- water -----------------------------------------------------------------------------
def _water(frame: gpd.GeoDataFrame | None, crs: Any, prefix: str, source: str) -> gpd.GeoDataFrame:
    el = _elements(frame, crs, prefix, source)
    kind = shapely.get_type_id(el.geometry)
    waterway = el.tag("waterway")
    area = np.isin(kind, (3, 6)) & (
        (el.tag("natural") == "water") | (waterway == "riverbank") | el.tag("water").notna()
    ).fillna(False).to_numpy(dtype=bool)
    line = np.isin(kind, (1, 5)) & waterway.isin(_WATER_LINES).to_numpy()
    el = el.subset(area | line)
    area = area[area | line]
    by_water = el.tag("water").map(_WATER_CLASS)
    by_landuse = el.tag("landuse").map({"reservoir": "reservoir", "pond": "pond"})
    waterway = el.tag("waterway")
    cls = np.where(
        area,
        by_water.fillna(by_landuse).fillna(waterway.map({"riverbank": "river"})).fillna("water"),
        waterway,
    )
    consumed = {"name": _present(el.tag("name"))}
    return _frame(el, crs, cls, {"name": el.tag("name")}, _props(el, consumed))


# -- facilities ------------------------------------------------------------------------
def _facility_class(el: _Elements) -> pd.Series:
    """The facility class of each element (None where none applies)."""
    amenity, railway = el.tag("amenity"), el.tag("railway")
    station = el.tag("station")
    subway = (station == "subway") | (el.tag("subway") == "yes")
    pt_station = el.tag("public_transport") == "station"
    elderly = (amenity == "social_facility") & (
        el.tag("social_facility").isin(["nursing_home", "assisted_living"])
        | el.tag("social_facility:for").isin(["senior", "elderly"])
    )
    shelter = (amenity == "shelter") & ~el.tag("shelter_type").isin(_NOT_EMERGENCY_SHELTERS) | (
        el.tag("emergency") == "assembly_point"
    )
    power = el.tag("power").map({"substation": "substation", "plant": "power_plant"})
    rules = [
        (amenity.map(_AMENITY_CLASS), None),
        (elderly, "elderly_care"),
        (shelter, "shelter"),
        ((railway == "station") & subway, "metro_station"),
        (railway == "subway_entrance", "metro_entrance"),
        (railway.isin(["station", "halt"]), "rail_station"),
        (pt_station & subway, "metro_station"),
        (pt_station & ((station == "train") | (el.tag("train") == "yes")), "rail_station"),
        (pt_station & ((station == "bus") | (el.tag("bus") == "yes")), "bus_station"),
        (power, None),
    ]
    out = pd.Series(None, index=amenity.index, dtype=object)
    for rule, cls in rules:
        value = rule if cls is None else rule.fillna(False).map({True: cls, False: None})
        out = out.where(out.notna(), value)
    return out


def _facilities(
    frame: gpd.GeoDataFrame | None, buildings: gpd.GeoDataFrame, crs: Any, prefix: str, source: str
) -> gpd.GeoDataFrame:
    el = _elements(frame, crs, prefix, source)
    cls = _facility_class(el)
    keep = cls.notna().to_numpy()
    el, cls = el.subset(keep), cls[keep].reset_index(drop=True)
    beds, beds_exact = _whole(el.tag("beds"))
    capacity, capacity_exact = _whole(el.tag("capacity"))
    beds, capacity = beds.where(beds_exact), capacity.where(capacity_exact)
    care = cls.isin(["hospital", "clinic", "elderly_care"])
    use_beds = (beds.notna() & (care | capacity.isna())).to_numpy(dtype=bool)
    people = capacity.where(~use_beds, beds)
    in_building = buildings[buildings["class"] == "building"] if len(buildings) else buildings
    attrs = {
        "name": el.tag("name"),
        "operator": el.tag("operator"),
        "capacity": people,
        "critical": cls.isin(CRITICAL_FACILITIES).to_numpy(),
        "building_id": _containing(el.geometry, in_building, crs),
    }
    consumed = {
        "name": _present(el.tag("name")),
        "operator": _present(el.tag("operator")),
        "beds": use_beds,
        "capacity": capacity.notna().to_numpy(dtype=bool) & ~use_beds,
    }
    return _frame(el, crs, cls.to_numpy(dtype=object), attrs, _props(el, consumed))

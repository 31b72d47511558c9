"""CityJSON (1.0, 1.1, 2.0) import, CityJSON 2.0 export and validation.

Import: Buildings and BuildingParts become the ``buildings`` layer (2D footprint, height,
floors, year, LoD, CIM level, parent link); every other City Object goes to ``city_objects``
with its CityJSON type. Each feature keeps its 3D geometry in ``geometry_3d`` as CityJSON
geometries whose boundaries hold real coordinates in the twin's CRS (x, y reprojected; z kept
from the source's vertical datum). Appearances (materials, textures) are not imported.

Export: the twin's buildings as a CityJSON 2.0 file, with the stored 3D geometry where there is
one, else an LoD1 block extruded from the footprint.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import jsonschema
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from shapely.geometry.polygon import orient

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, parse_crs, require_file, source_name
from citytwin.model import features_from_frame, layer
from citytwin.model.features import Feature
from citytwin.store import Store
from citytwin.store.base import Query

SUPPORTED_VERSIONS = ("1.0", "1.1", "2.0")
SCHEMA_PATH = Path(__file__).parent / "schemas" / "cityjson-2.0.schema.json"

_BUILDING_CLASSES = {"Building": "building", "BuildingPart": "building_part"}
_OTHER_CLASSES = {
    "Road": "road",
    "LandUse": "land_use",
    "PlantCover": "plant_cover",
    "WaterBody": "water_body",
    "Bridge": "bridge",
    "GenericCityObject": "generic",
}
# CityJSON attribute -> buildings attribute; the layer's own names are read as well.
_STANDARD_NAMES = {
    "measuredHeight": "height",
    "storeysAboveGround": "floors",
    "storeysBelowGround": "basement_floors",
    "yearOfConstruction": "year_built",
    "function": "use",
}
_EXPORT_NAMES = {v: k for k, v in _STANDARD_NAMES.items()}
_DERIVED = ("lod", "cim_level", "parent_id")  # computed from the geometry and the links
_DEPTH = {
    "MultiPoint": 1,
    "MultiLineString": 2,
    "MultiSurface": 3,
    "CompositeSurface": 3,
    "Solid": 4,
    "MultiSolid": 5,
    "CompositeSolid": 5,
}
_CIM_LEVEL = {0: 2, 1: 3, 2: 4, 3: 5, 4: 6}
_LOD = re.compile(r"[0-9](\.[0-9])?")
_SLIVER = 1e-4  # m²: footprint parts and holes smaller than this are dropped
_SCALE = 0.001
_FIX = "check the file against https://www.cityjson.org/specs/ (cjio validates) or export it again"


# -- import ----------------------------------------------------------------------------------


@dataclass
class _Geometry:
    """A CityJSON geometry with its vertex indices resolved to (k, 3) arrays in the twin's CRS."""

    type: str
    lod: str
    boundaries: Any  # nested lists down to (k, 3) arrays; depth as in _DEPTH
    semantics: dict[str, Any] | None

    @property
    def lod_value(self) -> float:
        return float(self.lod)

    @property
    def depth(self) -> int:
        return _DEPTH[self.type]

    def points(self) -> np.ndarray:
        return np.concatenate(list(_leaves(self.boundaries, self.depth)))

    def surfaces(self) -> Iterator[tuple[list[np.ndarray], str | None]]:
        """Each surface (its rings) with its semantic surface type, if it has one."""
        if self.depth < 3:
            return
        sem = self.semantics or {}
        kinds = [s.get("type") if isinstance(s, dict) else None for s in sem.get("surfaces") or []]
        for rings, value in _walk_surfaces(self.boundaries, self.depth, sem.get("values")):
            ok = isinstance(value, int) and 0 <= value < len(kinds)
            yield rings, kinds[value] if ok else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "lod": self.lod,
            "boundaries": _to_lists(self.boundaries, self.depth),
        }
        if self.semantics is not None:
            out["semantics"] = self.semantics
        return out


def _leaves(b: Any, depth: int) -> Iterator[np.ndarray]:
    if depth == 1:
        yield b
    else:
        for sub in b:
            yield from _leaves(sub, depth - 1)


def _walk_surfaces(b: Any, depth: int, values: Any) -> Iterator[tuple[list[np.ndarray], Any]]:
    for i, sub in enumerate(b):
        value = values[i] if isinstance(values, list) and i < len(values) else None
        if depth == 3:
            yield sub, value
        else:
            yield from _walk_surfaces(sub, depth - 1, value)


def _to_lists(b: Any, depth: int) -> list[Any]:
    if depth == 1:
        return b.tolist()
    return [_to_lists(sub, depth - 1) for sub in b]


@dataclass
class _Object:
    id: str
    type: str
    attributes: dict[str, Any]
    parents: list[str]
    children: list[str]
    geometries: list[_Geometry]


class _Reader:
    """Reads one CityJSON document into twin-CRS geometries, object by object."""

    def __init__(self, doc: dict[str, Any], source: str, src_crs: CRS, twin: CRS) -> None:
        self.source = source
        self.src_vertices = _decode_vertices(doc, source)
        self.project = _projector(src_crs, twin, source)
        self.vertices = self.to_twin(self.src_vertices)
        self.templates = doc.get("geometry-templates")

    def to_twin(self, xyz: np.ndarray) -> np.ndarray:
        """Source coordinates in the twin's CRS, to 0.1 mm (so that a re-import is identical)."""
        return np.round(self.project(xyz), 4)

    def fail(self, oid: str | None, message: str, hint: str = _FIX) -> InvalidInput:
        return InvalidInput(message, source=self.source, feature=oid, hint=hint)

    def read_object(self, oid: str, obj: Any) -> _Object:
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise self.fail(oid, "a City Object must be a JSON object with a 'type'")
        geoms = obj.get("geometry") or []
        attrs = obj.get("attributes") or {}
        parents, children = obj.get("parents") or [], obj.get("children") or []
        if not isinstance(geoms, list) or not isinstance(attrs, dict):
            raise self.fail(oid, "'geometry' must be a list and 'attributes' an object")
        links = [parents, children]
        if not all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in links):
            raise self.fail(oid, "'parents' and 'children' must be lists of object ids")
        return _Object(
            oid,
            obj["type"],
            attrs,
            list(parents),
            list(children),
            [self.read_geometry(oid, g) for g in geoms],
        )

    def read_geometry(self, oid: str, g: Any) -> _Geometry:
        if not isinstance(g, dict):
            raise self.fail(oid, "a geometry must be a JSON object")
        if g.get("type") == "GeometryInstance":
            return self._instance(oid, g)
        return self._resolve(oid, g, self.vertices, "vertices")

    def _resolve(self, oid: str, g: dict[str, Any], coords: np.ndarray, what: str) -> _Geometry:
        gtype = g.get("type")
        if gtype not in _DEPTH:
            raise self.fail(
                oid,
                f"unknown geometry type {gtype!r}",
                f"CityJSON geometries are {', '.join(_DEPTH)} or GeometryInstance",
            )
        lod = g.get("lod")
        if isinstance(lod, int | float) and not isinstance(lod, bool):  # CityJSON 1.0: a number
            lod = str(int(lod)) if float(lod).is_integer() else str(lod)
        if not isinstance(lod, str) or not _LOD.fullmatch(lod):
            raise self.fail(
                oid,
                f"{gtype} has a missing or bad lod {lod!r}",
                'give the level of detail as a string such as "1", "2.2"',
            )
        sem = g.get("semantics")
        bounds = self._indices(oid, g.get("boundaries"), _DEPTH[gtype], coords, gtype, what)
        return _Geometry(gtype, lod, bounds, sem if isinstance(sem, dict) else None)

    def _indices(
        self, oid: str, b: Any, depth: int, coords: np.ndarray, gtype: str, what: str
    ) -> Any:
        if not isinstance(b, list):
            raise self.fail(
                oid, f"the boundaries of a {gtype} must be nested lists {_DEPTH.get(gtype, 1)} deep"
            )
        if depth > 1:
            return [self._indices(oid, sub, depth - 1, coords, gtype, what) for sub in b]
        idx = np.asarray(b)
        if idx.size == 0 or idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise self.fail(
                oid,
                f"the boundaries of a {gtype} must be nested lists "
                f"{_DEPTH.get(gtype, 1)} deep ending in vertex indices; "
                f"found {b!r:.80}",
            )
        bad = (idx < 0) | (idx >= len(coords))
        if bad.any():
            raise self.fail(
                oid,
                f"vertex index {int(idx[bad][0])} is out of range: "
                f"the file has {len(coords)} {what}",
                "the file is corrupt or was cut short; export it again",
            )
        return coords[idx]

    def _instance(self, oid: str, g: dict[str, Any]) -> _Geometry:
        tpl = self.templates if isinstance(self.templates, dict) else {}
        templates = tpl.get("templates") or []
        t, ref, matrix = g.get("template"), g.get("boundaries"), g.get("transformationMatrix")
        if not (isinstance(t, int) and 0 <= t < len(templates)):
            raise self.fail(
                oid, f"GeometryInstance refers to template {t!r}, the file has {len(templates)}"
            )
        try:
            m = np.asarray(matrix, dtype=float).reshape(4, 4)
            local = np.asarray(tpl["vertices-templates"], dtype=float).reshape(-1, 3)
        except (TypeError, ValueError, KeyError):
            raise self.fail(
                oid,
                "GeometryInstance needs a 16-number transformationMatrix and "
                "the file needs vertices-templates",
            ) from None
        ref_point = self._indices(oid, ref, 1, self.src_vertices, "GeometryInstance", "vertices")
        placed = local @ m[:3, :3].T + m[:3, 3] + ref_point[0]
        return self._resolve(oid, templates[t], self.to_twin(placed), "template vertices")


def _load_json(path: Path, source: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        hint = (
            "CityJSON Text Sequences (.city.jsonl) are not read here; convert them with cjio"
            if exc.msg == "Extra data"
            else "the file is truncated or corrupt; download or export it again"
        )
        raise InvalidInput(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            source=source,
            line=exc.lineno,
            hint=hint,
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(
            "not a UTF-8 text file", source=source, hint="CityJSON files are UTF-8 JSON"
        ) from None


def _check_root(doc: Any, source: str) -> None:
    if not isinstance(doc, dict) or doc.get("type") != "CityJSON":
        found = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise InvalidInput(
            f'not a CityJSON file: no "type": "CityJSON" (found {found!r})',
            source=source,
            hint="give a CityJSON document (.city.json / .json)",
        )
    version = str(doc.get("version"))
    if version not in SUPPORTED_VERSIONS:
        raise InvalidInput(
            f"unsupported CityJSON version {version!r}",
            source=source,
            hint=f"CityTwin reads versions {', '.join(SUPPORTED_VERSIONS)}; "
            "upgrade the file with cjio (cjio in.json upgrade save out.json)",
        )
    if not isinstance(doc.get("CityObjects"), dict) or not isinstance(doc.get("vertices"), list):
        raise InvalidInput(
            "a CityJSON file needs a 'CityObjects' object and a 'vertices' list",
            source=source,
            hint="the file is incomplete; export it again",
        )


def _decode_vertices(doc: dict[str, Any], source: str) -> np.ndarray:
    raw = np.array(doc["vertices"]) if doc["vertices"] else np.zeros((0, 3))
    if raw.ndim != 2 or raw.shape[1] != 3 or raw.dtype.kind not in "iuf":
        raise InvalidInput(
            "'vertices' must be a list of [x, y, z] numbers",
            source=source,
            hint="the file is corrupt; export it again",
        )
    transform = doc.get("transform")
    if transform is None:
        return raw.astype(float)
    try:
        scale = np.asarray(transform["scale"], dtype=float).reshape(3)
        translate = np.asarray(transform["translate"], dtype=float).reshape(3)
    except (TypeError, ValueError, KeyError):
        raise InvalidInput(
            "'transform' needs 'scale' and 'translate', three numbers each",
            source=source,
            hint="the file is corrupt; export it again",
        ) from None
    if raw.dtype.kind == "f":
        fractional = np.flatnonzero((raw != np.round(raw)).any(axis=1))
        if len(fractional):
            i = int(fractional[0])
            raise InvalidInput(
                f"vertex {i} {raw[i].tolist()} is not made of integers, as vertices "
                "must be when the file has a 'transform'",
                source=source,
                hint="the file is corrupt; export it again",
            )
    return raw * scale + translate


def _source_crs(doc: dict[str, Any], crs: Any, source: str) -> CRS:
    if crs is not None:
        return parse_crs(crs, source=source)
    ref = (doc.get("metadata") or {}).get("referenceSystem")
    if not ref:
        raise InvalidInput(
            "the file does not say its coordinate reference system (metadata.referenceSystem)",
            source=source,
            hint="give it with crs=..., e.g. EPSG:7415 for Dutch RD New + NAP data",
        )
    try:
        return CRS.from_user_input(ref)
    except CRSError:
        raise InvalidInput(
            f"unknown CRS {ref!r} in metadata.referenceSystem",
            source=source,
            hint="correct it in the file (https://www.opengis.net/def/crs/EPSG/0/<code>) "
            "or give the CRS with crs=EPSG:nnnn",
        ) from None


def _projector(src: CRS, twin: CRS, source: str) -> Callable[[np.ndarray], np.ndarray]:
    """Reproject x, y from the horizontal part of ``src`` into ``twin``; z is kept."""
    horizontal = src.sub_crs_list[0] if src.is_compound else src.to_2d()
    if horizontal.equals(twin, ignore_axis_order=True):
        return lambda xyz: xyz
    transformer = Transformer.from_crs(horizontal, twin, always_xy=True)

    def project(xyz: np.ndarray) -> np.ndarray:
        if len(xyz) == 0:
            return xyz
        x, y = transformer.transform(xyz[:, 0], xyz[:, 1])
        out = np.column_stack([x, y, xyz[:, 2]])
        if not np.isfinite(out).all():
            raise InvalidInput(
                f"coordinates can't be transformed from {horizontal.name} to {twin.name}",
                source=source,
                hint="the file's CRS is probably wrong; give the right one: crs=",
            )
        return out

    return project


def _highest(geoms: list[_Geometry]) -> list[_Geometry]:
    if not geoms:
        return []
    top = max(g.lod_value for g in geoms)
    return [g for g in geoms if g.lod_value == top]


def _polygons(faces: list[list[np.ndarray]]) -> np.ndarray:
    """The faces projected to the plane as (possibly invalid) polygons."""
    rings, owner = [], []
    n = 0
    for face in faces:
        for j, r in enumerate(face):
            closed = len(r) > 1 and np.array_equal(r[0, :2], r[-1, :2])
            if len(r) - closed >= 3:
                rings.append(r[:, :2])
                owner.append(n)
            elif j == 0:
                break  # no shell, no polygon
        n = owner[-1] + 1 if owner else 0
    if not rings:
        return np.empty(0, dtype=object)
    lengths = [len(r) for r in rings]
    ring_of = np.repeat(np.arange(len(rings)), lengths)
    linear = shapely.linearrings(np.concatenate(rings), indices=ring_of)
    return shapely.polygons(linear, indices=np.asarray(owner))


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygons of a geometry made valid (a Polygon or a MultiPolygon, maybe empty)."""
    parts = shapely.get_parts(shapely.get_parts(shapely.make_valid(geom)))
    polys = parts[shapely.get_type_id(parts) == 3]
    return shapely.union_all(polys) if len(polys) != 1 else polys[0]


def _union_2d(faces: list[list[np.ndarray]]) -> shapely.Geometry | None:
    """The union of faces projected to the plane, without slivers; None if it has no area."""
    polys = _polygons(faces)
    bad = ~shapely.is_valid(polys)
    polys[bad] = shapely.make_valid(polys[bad])
    parts = shapely.get_parts(shapely.get_parts(polys))
    parts = parts[(shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)]
    cleaned = []
    for part in shapely.get_parts(shapely.union_all(parts)):
        if part.area >= _SLIVER:
            holes = [h for h in part.interiors if shapely.Polygon(h).area >= _SLIVER]
            cleaned.append(shapely.Polygon(part.exterior, holes))
    if not cleaned:
        return None
    out = cleaned[0] if len(cleaned) == 1 else shapely.MultiPolygon(cleaned)
    return out if out.is_valid else _polygonal(out)


def _footprint(geoms: list[_Geometry]) -> shapely.Geometry:
    """LoD0 surfaces, else the ground surfaces of the highest LoD, else all its faces in 2D."""
    surfaced = [g for g in geoms if g.depth >= 3]
    chosen = [g for g in surfaced if g.lod_value < 1] or _highest(surfaced)
    faces = [f for g in chosen for f in g.surfaces()]
    ground = [rings for rings, kind in faces if kind == "GroundSurface"]
    poly = (_union_2d(ground) if ground else None) or _union_2d([rings for rings, _ in faces])
    if poly is not None:
        return poly
    pts = np.concatenate([g.points() for g in _highest(geoms)])
    hull = shapely.MultiPoint(pts[:, :2]).convex_hull
    return hull if hull.geom_type == "Polygon" and hull.area >= _SLIVER else hull.buffer(0.01)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return None
    try:
        out = float(v)
    except ValueError:
        return None
    return out if np.isfinite(out) else None


def _first(attrs: dict[str, Any], *names: str) -> float | None:
    for name in names:
        v = _number(attrs.get(name))
        if v is not None:
            return v
    return None


def _typed_attributes(attrs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split CityJSON attributes into buildings attributes and the rest (props)."""
    lay = layer("buildings")
    props = dict(attrs)
    typed: dict[str, Any] = {}
    for a in lay.attributes:
        if a.name in _DERIVED:
            continue
        for name in (_EXPORT_NAMES.get(a.name), a.name):
            if name is None or name not in props or a.name in typed:
                continue
            try:
                typed[a.name] = a.coerce(props[name])
            except ValueError:
                continue
            del props[name]
    return typed, props


class _Tree:
    """City Objects and their links: footprint, z range and LoD of parents without geometry."""

    def __init__(self, objects: dict[str, _Object], source: str) -> None:
        self.objects = objects
        self.source = source
        self._footprints: dict[str, shapely.Geometry] = {}

    def footprint(self, oid: str) -> shapely.Geometry:
        if oid not in self._footprints:
            self._footprints[oid] = self._footprint(oid)
        return self._footprints[oid]

    def _footprint(self, oid: str) -> shapely.Geometry:
        obj = self.objects[oid]
        if obj.geometries:
            return _footprint(obj.geometries)
        parts = [self.footprint(c) for c in self.parts(oid)]
        if not parts:
            raise InvalidInput(
                "the object has no geometry, nor parts with geometry",
                source=self.source,
                feature=oid,
                hint="give it a geometry or children (e.g. BuildingParts) with one",
            )
        out = shapely.union_all(parts)
        return out if out.is_valid else _polygonal(out)

    def z_range(self, oid: str) -> tuple[float, float]:
        obj = self.objects[oid]
        if obj.geometries:
            z = np.concatenate([g.points()[:, 2] for g in _highest(obj.geometries)])
            return float(z.min()), float(z.max())
        ranges = [self.z_range(c) for c in self.parts(oid)]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def lod(self, oid: str) -> str:
        obj = self.objects[oid]
        if obj.geometries:
            return _highest(obj.geometries)[0].lod
        return max((self.lod(c) for c in self.parts(oid)), key=float)

    def parts(self, oid: str, seen: frozenset[str] = frozenset()) -> list[str]:
        """The children of ``oid`` that have geometry, or parts with geometry of their own."""
        out = []
        for c in self.objects[oid].children:
            known = c in self.objects and c not in seen
            if known and (self.objects[c].geometries or self.parts(c, seen | {oid})):
                out.append(c)
        return out


def _building_row(obj: _Object, tree: _Tree, id_prefix: str) -> dict[str, Any]:
    footprint = tree.footprint(obj.id)  # first: it says if there is no geometry at all
    typed, props = _typed_attributes(obj.attributes)
    attrs = obj.attributes
    zmin, zmax = tree.z_range(obj.id)
    ground = typed.get("ground_level")
    if ground is None:
        ground = _first(attrs, "b3_h_maaiveld", "h_maaiveld")
    if ground is None:
        ground = zmin
    height = typed.get("height")
    if height is None:
        roof, maaiveld = (
            _first(attrs, "b3_h_dak_max", "h_dak_max"),
            _first(attrs, "b3_h_maaiveld", "h_maaiveld"),
        )
        if roof is not None and maaiveld is not None and roof > maaiveld:
            height = roof - maaiveld
        elif zmax > ground:
            height = zmax - ground
    if typed.get("year_built") is None:
        year = _first(attrs, "oorspronkelijkbouwjaar", "oorspronkelijk_bouwjaar")
        typed["year_built"] = int(year) if year is not None and year.is_integer() else None
    lod = tree.lod(obj.id)
    parent = obj.parents[0] if obj.parents else None
    return {
        **typed,
        "id": id_prefix + obj.id,
        "class": _BUILDING_CLASSES[obj.type],
        "height": height,
        "ground_level": ground,
        "lod": lod,
        "cim_level": _CIM_LEVEL.get(int(float(lod)), 7),
        "parent_id": id_prefix + parent if parent is not None else None,
        "props": props,
        "geometry_3d": _geometry_3d(obj),
        "geometry": footprint,
    }


def _other_row(obj: _Object, tree: _Tree, id_prefix: str) -> dict[str, Any]:
    props = dict(obj.attributes)
    name = props.pop("name") if isinstance(props.get("name"), str) else None
    for key, ids in (("parents", obj.parents), ("children", obj.children)):
        if ids:
            props[key] = [id_prefix + i for i in ids]
    return {
        "id": id_prefix + obj.id,
        "class": _OTHER_CLASSES.get(obj.type, "other"),
        "name": name,
        "source_type": obj.type,
        "props": props,
        "geometry_3d": _geometry_3d(obj),
        "geometry": tree.footprint(obj.id),
    }


def _geometry_3d(obj: _Object) -> dict[str, Any] | None:
    if not obj.geometries:
        return None
    return {"type": "CityJSONGeometry", "geometries": [g.to_dict() for g in obj.geometries]}


def read_cityjson(
    path: str | Path, twin_crs: str, *, crs: Any = None, id_prefix: str = ""
) -> ImportBundle:
    """Read a CityJSON 1.0/1.1/2.0 file: buildings and other City Objects in the twin's CRS.

    ``crs`` gives (or overrides) the file's CRS, e.g. "EPSG:7415" for RD New + NAP;
    ``id_prefix`` is put before every object id. Raises ``InvalidInput`` on bad input.
    """
    p = require_file(path)
    source = source_name(p)
    doc = _load_json(p, source)
    _check_root(doc, source)
    twin = parse_crs(twin_crs)
    reader = _Reader(doc, source, _source_crs(doc, crs, source), twin)
    objects = {oid: reader.read_object(oid, obj) for oid, obj in doc["CityObjects"].items()}
    tree = _Tree(objects, source)
    buildings, others = [], []
    for obj in objects.values():
        if obj.type == "CityObjectGroup" and not obj.geometries:
            continue  # a group of other objects (its members name it), nothing of its own
        if obj.type in _BUILDING_CLASSES:
            buildings.append(_building_row(obj, tree, id_prefix))
        else:
            others.append(_other_row(obj, tree, id_prefix))
    bundle = ImportBundle(source)
    for name, rows in (("buildings", buildings), ("city_objects", others)):
        if rows:
            bundle.add(name, gpd.GeoDataFrame(rows, geometry="geometry", crs=twin))
    return bundle


# -- export ----------------------------------------------------------------------------------


def _extruded(footprint: shapely.Geometry, ground: float, height: float | None) -> dict[str, Any]:
    """An LoD1 Solid (MultiSolid) from ``ground`` to ground + height, or an LoD0 MultiSurface."""
    polys = [
        orient(shapely.remove_repeated_points(p), 1.0)
        for p in shapely.get_parts(footprint)
        if p.geom_type == "Polygon"
    ]
    ground_surfaces = {
        "surfaces": [{"type": "GroundSurface"}, {"type": "RoofSurface"}, {"type": "WallSurface"}]
    }

    def rings(poly: shapely.Polygon) -> list[np.ndarray]:
        return [np.asarray(r.coords)[:-1, :2] for r in (poly.exterior, *poly.interiors)]

    def at(ring: np.ndarray, z: float) -> list[list[float]]:
        return np.column_stack([ring, np.full(len(ring), z)]).tolist()

    if not height or height <= 0:
        return {
            "type": "MultiSurface",
            "lod": "0",
            "boundaries": [[at(r, ground) for r in rings(p)] for p in polys],
            "semantics": {"surfaces": [{"type": "GroundSurface"}], "values": [0] * len(polys)},
        }
    top = ground + height
    shells, values = [], []
    for p in polys:
        rs = rings(p)
        walls = [
            [[*at(r[[i, (i + 1) % len(r)]], ground), *at(r[[(i + 1) % len(r), i]], top)]]
            for r in rs
            for i in range(len(r))
        ]
        shells.append([[at(r[::-1], ground) for r in rs], [at(r, top) for r in rs], *walls])
        values.append([0, 1, *[2] * len(walls)])
    if len(shells) == 1:
        return {
            "type": "Solid",
            "lod": "1",
            "boundaries": [shells[0]],
            "semantics": {**ground_surfaces, "values": [values[0]]},
        }
    return {
        "type": "MultiSolid",
        "lod": "1",
        "boundaries": [[s] for s in shells],
        "semantics": {**ground_surfaces, "values": [[v] for v in values]},
    }


def _map_coords(b: Any, depth: int, fn: Callable[[list[float]], Any]) -> Any:
    if depth == 0:
        return fn(b)
    return [_map_coords(sub, depth - 1, fn) for sub in b]


def _attributes(f: Feature) -> dict[str, Any]:
    out = dict(f.props)
    for name, value in f.attributes.items():
        if name not in _DERIVED and value is not None:
            out[_EXPORT_NAMES.get(name, name)] = value
    return out


def _buildings(store: Store, bbox: tuple[float, float, float, float] | None) -> list[Feature]:
    frame = store.query(Query("buildings", bbox=bbox))
    missing = sorted(set(frame["parent_id"].dropna()) - set(frame["id"]))
    if missing:  # parts in the box bring their building along
        frame = pd.concat([frame, store.query(Query("buildings", ids=missing))], ignore_index=True)
    return features_from_frame("buildings", frame)


_Objects = dict[str, dict[str, Any]]


def _city_objects(features: list[Feature]) -> tuple[_Objects, dict[str, list[str]]]:
    """CityObjects with geometries in real coordinates, and the children of each parent."""
    ids = {f.id for f in features}
    children: dict[str, list[str]] = {}
    for f in features:
        parent = f.attributes.get("parent_id")
        if parent in ids:
            children.setdefault(parent, []).append(f.id)
    objects: dict[str, dict[str, Any]] = {}
    for f in features:
        parent = f.attributes.get("parent_id")
        obj: dict[str, Any] = {
            "type": "BuildingPart" if f.cls == "building_part" and parent in ids else "Building",
            "attributes": _attributes(f),
        }
        stored = f.geometry_3d or {}
        geoms = [dict(g) for g in stored.get("geometries") or [] if g.get("type") in _DEPTH]
        if stored.get("type") == "CityJSONGeometry" and geoms:
            obj["geometry"] = geoms
        elif f.id in children:
            obj["geometry"] = []  # the parts carry it
        else:
            ground = f.attributes.get("ground_level") or 0.0
            obj["geometry"] = [_extruded(f.geometry, ground, f.attributes.get("height"))]
        if parent in ids:
            obj["parents"] = [parent]
        if f.id in children:
            obj["children"] = children[f.id]
        objects[f.id] = obj
    return objects, children


def _index_vertices(
    objects: _Objects, children: dict[str, list[str]]
) -> tuple[np.ndarray, np.ndarray]:
    """Replace real coordinates by indices into shared integer vertices (in place).

    Sets each object's ``geographicalExtent``; returns the vertices and the translation.
    """
    coords: list[list[float]] = []
    spans: dict[str, tuple[int, int]] = {}
    for oid, obj in objects.items():
        start = len(coords)
        for g in obj["geometry"]:
            _map_coords(g["boundaries"], _DEPTH[g["type"]], coords.append)
        spans[oid] = (start, len(coords))
    xyz = np.asarray(coords, dtype=float).reshape(-1, 3)
    translate = xyz.min(axis=0) if len(xyz) else np.zeros(3)
    grid = np.round((xyz - translate) / _SCALE).astype(np.int64)
    vertices, inverse = np.unique(grid, axis=0, return_inverse=True)
    index = iter(inverse.reshape(-1).tolist())
    for obj in objects.values():
        for g in obj["geometry"]:
            g["boundaries"] = _map_coords(
                g["boundaries"], _DEPTH[g["type"]], lambda _xyz: next(index)
            )
    extents = {
        oid: [*xyz[a:b].min(axis=0).tolist(), *xyz[a:b].max(axis=0).tolist()]
        for oid, (a, b) in spans.items()
        if b > a
    }
    for oid, kids in children.items():
        boxes = [extents[c] for c in kids if c in extents]
        if oid not in extents and boxes:
            extents[oid] = [min(e[i] for e in boxes) for i in range(3)] + [
                max(e[i] for e in boxes) for i in range(3, 6)
            ]
    for oid, ext in extents.items():
        objects[oid]["geographicalExtent"] = ext
    return vertices, translate


def write_cityjson(
    store: Store, path: str | Path, *, bbox: tuple[float, float, float, float] | None = None
) -> int:
    """Write the twin's buildings (and parts) to a CityJSON 2.0 file; return how many.

    Stored 3D geometry is written as it is; a building without one gets an LoD1 block
    extruded from its footprint (an LoD0 footprint if it has no height). ``bbox`` (minx, miny,
    maxx, maxy in the twin's CRS) limits the export; parts bring their building along.
    """
    objects, children = _city_objects(_buildings(store, bbox))
    vertices, translate = _index_vertices(objects, children)
    metadata: dict[str, Any] = {}
    authority = CRS.from_user_input(store.meta.crs).to_authority()
    if authority:
        metadata["referenceSystem"] = (
            f"https://www.opengis.net/def/crs/{authority[0]}/0/{authority[1]}"
        )
    if len(vertices):
        real = vertices * _SCALE + translate
        metadata["geographicalExtent"] = [*real.min(axis=0).tolist(), *real.max(axis=0).tolist()]
    doc = {
        "type": "CityJSON",
        "version": "2.0",
        "transform": {"scale": [_SCALE] * 3, "translate": translate.tolist()},
        "metadata": metadata,
        "CityObjects": objects,
        "vertices": vertices.tolist(),
    }
    Path(path).write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return len(objects)


# -- validation ------------------------------------------------------------------------------


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def _ints(b: Any) -> Iterator[int]:
    if isinstance(b, list):
        for sub in b:
            yield from _ints(sub)
    elif isinstance(b, int) and not isinstance(b, bool):
        yield b


def _out_of_range(where: str, b: Any, n: int, what: str) -> list[str]:
    bad = next((i for i in _ints(b) if i >= n), None)
    return [] if bad is None else [f"{where}: vertex index {bad} is out of range ({n} {what})"]


def _links(objects: dict[str, Any], oid: str, obj: dict[str, Any]) -> list[str]:
    problems = []
    for key, back in (("parents", "children"), ("children", "parents")):
        links = obj.get(key)
        for other in links if isinstance(links, list) else []:
            target = objects.get(other) if isinstance(other, str) else None
            if not isinstance(target, dict):
                problems.append(f"CityObjects/{oid}/{key}: {other!r} is not a City Object")
            elif oid not in (target.get(back) or []):
                problems.append(
                    f"CityObjects/{oid}/{key}: {other!r} does not list {oid!r} among its {back}"
                )
    return problems


def validate_cityjson(doc: dict[str, Any]) -> list[str]:
    """What makes ``doc`` invalid CityJSON 2.0; an empty list if nothing.

    Checks the CityJSON 2.0 schema (``schemas/cityjson-2.0.schema.json``), then what a schema
    can't: every vertex index points into ``vertices`` (template indices into
    ``vertices-templates``) and parent/child links are listed on both sides.
    """
    problems = []
    for err in sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.path]):
        where = "/".join(map(str, err.absolute_path)) or "(root)"
        message = err.message if len(err.message) <= 200 else err.message[:197] + "..."
        problems.append(f"{where}: {message}")
    if not isinstance(doc, dict) or not isinstance(doc.get("CityObjects"), dict):
        return problems
    objects = doc["CityObjects"]
    n = len(doc["vertices"]) if isinstance(doc.get("vertices"), list) else 0
    for oid, obj in objects.items():
        if not isinstance(obj, dict):
            continue
        geoms = obj.get("geometry")
        for k, g in enumerate(geoms if isinstance(geoms, list) else []):
            if isinstance(g, dict):
                problems += _out_of_range(
                    f"CityObjects/{oid}/geometry/{k}", g.get("boundaries"), n, "vertices"
                )
        problems += _links(objects, oid, obj)
    templates = doc.get("geometry-templates")
    if isinstance(templates, dict) and isinstance(templates.get("templates"), list):
        tv = templates.get("vertices-templates")
        nt = len(tv) if isinstance(tv, list) else 0
        for k, g in enumerate(templates["templates"]):
            if isinstance(g, dict):
                problems += _out_of_range(
                    f"geometry-templates/templates/{k}",
                    g.get("boundaries"),
                    nt,
                    "template vertices",
                )
    return problems

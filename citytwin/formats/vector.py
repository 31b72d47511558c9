"""OGR vector formats (GeoJSON, GeoPackage, Shapefile, FlatGeobuf) through pyogrio, and GeoParquet.

Source fields reach model attributes through a ``Mapping``: which layer and class the features
become, which field holds the id, which fields feed which attributes (fields named like an
attribute map onto it by themselves), constants, and unit factors. Fields that map nowhere are
kept in each feature's ``props``. A mapping can be given in code, on the command line, or in a
small YAML file (one mapping, or a list of them with ``source_layer`` for multi-layer files).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import yaml
from pyogrio.errors import DataLayerError, DataSourceError

from citytwin.errors import InvalidInput, yaml_error
from citytwin.formats.base import ImportBundle, parse_crs, require_file, to_twin_crs
from citytwin.model import BASE_COLUMNS, layer
from citytwin.store import Query, Store

PARQUET_SUFFIXES = (".parquet", ".geoparquet")
DRIVERS = {
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".fgb": "FlatGeobuf",
}
"""Export drivers by file suffix (plus GeoParquet for .parquet / .geoparquet)."""

_REFERENCE_ATTRIBUTES = (
    "from_node",
    "to_node",
    "parent_id",
    "outlet",
    "building_id",
    "feature_id",
    "zone_id",
)


@dataclass
class Mapping:
    """How the features of one source layer become model features."""

    layer: str
    cls: str | None = None  # a constant class ...
    class_field: str | None = None  # ... or the field holding it
    class_map: dict[str, str] = field(default_factory=dict)  # source value -> class
    id_field: str | None = None  # default: "id" if present, else numbered
    id_prefix: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # attribute -> source field
    constants: dict[str, Any] = field(default_factory=dict)  # attribute -> value
    units: dict[str, float] = field(default_factory=dict)  # attribute -> factor to model units
    source_layer: str | None = None

    def __post_init__(self) -> None:
        lay = layer(self.layer)
        for name in [*self.fields, *self.constants, *self.units]:
            if name not in ("status", "valid_from") and not lay.has_attribute(name):
                raise InvalidInput(
                    f"mapping names attribute {name!r}, which layer {self.layer!r} does not have",
                    hint=f"attributes of {self.layer}: {', '.join(a.name for a in lay.attributes)}",
                )
        if self.cls is not None:
            lay.check_class(self.cls)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Mapping:
        """A mapping from its YAML/JSON form (``class`` may stand for ``cls``)."""
        d = dict(d)
        if "class" in d:
            d["cls"] = d.pop("class")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput(
                f"unknown mapping key(s) {', '.join(sorted(unknown))}",
                hint=f"keys: {', '.join(cls.__dataclass_fields__)} (class for cls)",
            )
        if "layer" not in d:
            raise InvalidInput("a mapping needs a 'layer'")
        return cls(**d)


def load_mappings(path: str | Path) -> list[Mapping]:
    """Read a YAML (or JSON) mapping file: one mapping or a list of them."""
    p = require_file(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise yaml_error(exc, str(p)) from None
    items = doc if isinstance(doc, list) else [doc]
    try:
        return [Mapping.from_dict(item) for item in items]
    except InvalidInput as exc:
        raise exc.located(source=str(p)) from None
    except TypeError as exc:
        raise InvalidInput(f"malformed mapping: {exc}", source=str(p)) from None


def source_layers(path: str | Path) -> list[str]:
    """Names of the layers in a vector file."""
    p = require_file(path)
    if p.suffix.lower() in PARQUET_SUFFIXES:
        return [p.stem]
    try:
        return [str(name) for name, _ in pyogrio.list_layers(p)]
    except (DataSourceError, DataLayerError) as exc:
        raise _unreadable(p, exc) from None


def _unreadable(p: Path, exc: Exception) -> InvalidInput:
    return InvalidInput(
        f"can't read as a vector dataset: {exc}",
        source=str(p),
        hint="is the file complete and in a format GDAL reads?",
    )


def read_source_frame(
    path: str | Path, source_layer: str | None = None, crs: Any = None
) -> gpd.GeoDataFrame:
    """A vector file (one layer of it) as a GeoDataFrame in its own CRS."""
    p = require_file(path)
    try:
        if p.suffix.lower() in PARQUET_SUFFIXES:
            frame = gpd.read_parquet(p)
            geo = json.loads(pq.read_schema(p).metadata[b"geo"])
            frame = frame.drop(columns=[c for c in _covering_columns(geo) if c in frame.columns])
        else:
            frame = pyogrio.read_dataframe(p, layer=source_layer, use_arrow=True)
    except (DataSourceError, DataLayerError) as exc:
        raise _unreadable(p, exc) from None
    except (OSError, ValueError) as exc:  # pyarrow and GeoParquet metadata errors
        raise InvalidInput(
            f"can't read: {exc}", source=str(p), hint="is the file complete and valid GeoParquet?"
        ) from None
    return _with_crs(frame, crs, str(p))


def read_vector(
    path: str | Path,
    twin_crs: Any,
    mappings: list[Mapping],
    *,
    crs: Any = None,
) -> ImportBundle:
    """Read a vector file into a bundle, one mapping per source layer to read.

    ``crs`` overrides (or supplies) the file's CRS. A file with several layers needs one
    mapping per layer to read, each naming its ``source_layer``.
    """
    p = require_file(path)
    source = str(p)
    names = source_layers(p)
    bundle = ImportBundle(source)
    for m in mappings:
        if m.source_layer is None and len(names) > 1:
            raise InvalidInput(
                f"the file has {len(names)} layers ({', '.join(names)})",
                source=source,
                hint="say which one with --source-layer, or give a mapping per source layer",
            )
        if m.source_layer is not None and m.source_layer not in names:
            raise InvalidInput(
                f"no layer {m.source_layer!r} in the file",
                source=source,
                hint=f"layers: {', '.join(names)}",
            )
        large = _feature_count(p, m.source_layer)
        if large > CHUNK_ROWS and len(mappings) == 1:
            bundle.expected = large
            bundle.layers[m.layer] = (
                lambda piece=piece, m=m: to_twin_crs(
                    apply_mapping(_with_crs(piece(), crs, source), m, source=source),
                    twin_crs,
                    source=source,
                )
                for piece in _pieces(p, m.source_layer)
            )
            continue
        frame = read_source_frame(p, m.source_layer, crs)
        try:
            mapped = apply_mapping(frame, m, source=source)
        except InvalidInput as exc:
            raise _with_line(exc, p, frame, m) from None
        bundle.add(m.layer, to_twin_crs(mapped, twin_crs, source=source))
        bundle.locators[m.layer] = lambda exc, frame=frame, m=m: _with_line(exc, p, frame, m)
    return bundle


CHUNK_ROWS = 65_536
"""Sources with more features than this are read in chunks of about this many (formats with
random access only: GeoParquet by row groups, GeoPackage and FlatGeobuf by feature ranges)."""


def _feature_count(p: Path, source_layer: str | None) -> int:
    """Features in a source that can be streamed in chunks (0 for the others)."""
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return pq.ParquetFile(p).metadata.num_rows
    if suffix in (".gpkg", ".fgb"):
        return max(pyogrio.read_info(p, layer=source_layer)["features"], 0)
    return 0


def _pieces(p: Path, source_layer: str | None) -> Iterator[Callable[[], gpd.GeoDataFrame]]:
    """Stream a large file as Arrow batches; each piece turns one batch into a frame when
    called (the costly part, done on a worker thread)."""
    source = str(p)
    try:
        if p.suffix.lower() in PARQUET_SUFFIXES:
            f = pq.ParquetFile(p)
            geo = json.loads(f.schema_arrow.metadata[b"geo"])
            column = geo["primary_column"]
            crs = geo["columns"][column].get("crs", "OGC:CRS84")
            covering = _covering_columns(geo)
            wanted = [c for c in f.schema_arrow.names if c not in covering]
            for batch in f.iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
                yield lambda batch=batch: _arrow_frame(batch, column, crs)
        else:
            with pyogrio.open_arrow(
                p, layer=source_layer, batch_size=CHUNK_ROWS, use_pyarrow=True
            ) as (meta, reader):
                column = meta["geometry_name"] or "wkb_geometry"
                for batch in reader:
                    yield lambda batch=batch, crs=meta["crs"]: _arrow_frame(batch, column, crs)
    except (DataSourceError, DataLayerError, OSError, ValueError, KeyError) as exc:
        raise InvalidInput(
            f"can't read: {exc}",
            source=source,
            hint="is the file complete and in a format GDAL reads?",
        ) from None


def _covering_columns(geo: dict[str, Any]) -> set[str]:
    """GeoParquet 1.1 bbox covering columns: an index of the file, not feature attributes."""
    out = set()
    for meta in geo.get("columns", {}).values():
        bbox = meta.get("covering", {}).get("bbox", {})
        out.update(v[0] for v in bbox.values() if isinstance(v, list) and v)
    return out


def _arrow_frame(batch: pa.RecordBatch, column: str, crs: Any) -> gpd.GeoDataFrame:
    frame = batch.drop_columns([column]).to_pandas()
    wkb = batch.column(column).to_numpy(zero_copy_only=False)
    return gpd.GeoDataFrame(frame, geometry=gpd.array.from_wkb(wkb, crs=crs))


def _with_crs(frame: gpd.GeoDataFrame, crs: Any, source: str) -> gpd.GeoDataFrame:
    return (
        frame if crs is None else frame.set_crs(parse_crs(crs, source=source), allow_override=True)
    )


def apply_mapping(
    frame: gpd.GeoDataFrame, m: Mapping, *, source: str | None = None
) -> gpd.GeoDataFrame:
    """Turn a source frame into a model feature frame (not yet validated)."""
    lay = layer(m.layer)
    geom_name = frame.geometry.name
    src_cols = [c for c in frame.columns if c != geom_name]
    out: dict[str, Any] = {}
    used: set[str] = set()

    # ids
    id_field = m.id_field or ("id" if "id" in src_cols else None)
    if m.id_field is not None and m.id_field not in src_cols:
        raise InvalidInput(
            f"id field {m.id_field!r} is not in the source",
            source=source,
            hint=f"fields: {', '.join(map(str, src_cols))}",
        )
    if id_field is not None:
        ids = frame[id_field]
        if ids.isna().any():
            pos = int(np.flatnonzero(ids.isna().to_numpy())[0])
            raise InvalidInput(
                f"feature at position {pos} has no {id_field!r}",
                source=source,
                feature=f"#{pos}",
                hint="every feature needs an id",
            )
        out["id"] = m.id_prefix + ids.astype(str)
    else:
        out["id"] = pd.Series(
            [f"{m.id_prefix}{i + 1}" for i in range(len(frame))], index=frame.index
        )

    # class
    if m.class_field is not None:
        if m.class_field not in src_cols:
            raise InvalidInput(f"class field {m.class_field!r} is not in the source", source=source)
        values = frame[m.class_field].astype(str)
        out["class"] = values.map(lambda v: m.class_map.get(v, v))
        used.add(m.class_field)
    elif m.cls is not None:
        out["class"] = m.cls
    elif "class" in src_cols:
        out["class"] = frame["class"]
        used.add("class")
    elif len(lay.classes) == 1:
        out["class"] = lay.classes[0]
    else:
        raise InvalidInput(
            f"which class of {m.layer!r} are these features?",
            source=source,
            hint=f"give --class (one of {', '.join(lay.classes)}) or a class field",
        )

    # attributes: explicit fields, then same-named fields, then constants
    for attr, src in m.fields.items():
        if src not in src_cols:
            raise InvalidInput(
                f"mapped field {src!r} (for {attr}) is not in the source",
                source=source,
                hint=f"fields: {', '.join(map(str, src_cols))}",
            )
        out[attr] = frame[src]
        used.add(src)
    for col in src_cols:
        if col in used or col in out:
            continue
        if lay.has_attribute(col) or col in ("status", "valid_from"):
            out[col] = frame[col]
            used.add(col)
    for attr, value in m.constants.items():
        out[attr] = value
    for attr, factor in m.units.items():
        if attr in out:
            out[attr] = pd.to_numeric(out[attr], errors="coerce") * factor
    if m.id_prefix:
        for ref in _REFERENCE_ATTRIBUTES:
            if ref in out and not isinstance(out[ref], str):
                col = out[ref]
                out[ref] = col.where(col.isna(), m.id_prefix + col.astype(str))

    # everything else is kept in props
    rest = [c for c in src_cols if c not in used and c not in BASE_COLUMNS and c != id_field]
    props: list[dict[str, Any]] = [{} for _ in range(len(frame))]
    if "props" in src_cols:  # a CityTwin export: props travel as JSON (text, or parsed by GDAL)
        for i, v in enumerate(frame["props"]):
            if isinstance(v, str) and v:
                props[i] = json.loads(v)
            elif isinstance(v, dict):
                props[i] = dict(v)
    for col in rest:
        values = frame[col].to_numpy(dtype=object)
        for i, v in enumerate(values):
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                props[i][str(col)] = v.item() if isinstance(v, np.generic) else v
    out["props"] = [p or None for p in props]
    for col in ("status", "valid_from"):
        if col in src_cols and col not in out:
            out[col] = frame[col]
    return gpd.GeoDataFrame(
        out, geometry=frame.geometry.to_numpy(), crs=frame.crs, index=frame.index
    )


def _with_line(exc: InvalidInput, path: Path, frame: gpd.GeoDataFrame, m: Mapping) -> InvalidInput:
    """Add the line of the offending feature for GeoJSON sources."""
    if (
        exc.line is not None
        or path.suffix.lower() not in (".geojson", ".json")
        or exc.feature is None
    ):
        return exc
    id_field = m.id_field or ("id" if "id" in frame.columns else None)
    pos = None
    if str(exc.feature).startswith("#"):
        pos = int(str(exc.feature)[1:])
    elif id_field is not None:
        hits = np.flatnonzero((m.id_prefix + frame[id_field].astype(str)).to_numpy() == exc.feature)
        pos = int(hits[0]) if len(hits) else None
    if pos is None:
        return exc
    return exc.located(line=geojson_feature_line(path, pos))


_FEATURE_START = re.compile(r'"type"\s*:\s*"Feature"(?!Collection)')


def geojson_feature_line(path: Path, index: int) -> int | None:
    """The line on which the ``index``-th feature of a GeoJSON file starts."""
    text = path.read_text(errors="replace")
    for i, match in enumerate(_FEATURE_START.finditer(text)):
        if i == index:
            return text.count("\n", 0, match.start()) + 1
    return None


def write_vector(
    store: Store, layer_name: str, path: str | Path, *, query: Query | None = None, crs: Any = None
) -> int:
    """Export a layer (the features matching ``query``) to GeoJSON, GeoPackage, Shapefile,
    FlatGeobuf or GeoParquet, chosen by the file suffix. ``crs`` reprojects on the way out."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in DRIVERS and suffix not in PARQUET_SUFFIXES:
        raise InvalidInput(
            f"unknown export format {suffix!r}",
            source=str(p),
            hint=f"use one of {', '.join([*DRIVERS, *PARQUET_SUFFIXES])}",
        )
    frame = store.query(query or Query(layer_name, order_by="id"))
    out = export_frame(frame)
    if crs is not None:
        out = out.to_crs(parse_crs(crs))
    if p.exists():
        p.unlink()
    if suffix in PARQUET_SUFFIXES:
        out.to_parquet(p, index=False, geometry_encoding="WKB", write_covering_bbox=True)
    else:
        pyogrio.write_dataframe(out, p, driver=DRIVERS[suffix], layer=layer_name)
    return len(out)


def export_frame(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """A store frame made fit for flat formats: props as JSON text, no 3D geometry column,
    no empty columns."""
    out = frame.drop(columns=["geometry_3d"]).copy()
    out["props"] = [json.dumps(v) if isinstance(v, dict) and v else None for v in out["props"]]
    empty = [
        c
        for c in out.columns
        if c != out.geometry.name and out[c].isna().all() and c not in ("id", "class")
    ]
    return out.drop(columns=empty)

"""Features and feature frames: how model data travels between importers, the store and engines.

A *feature frame* is a GeoDataFrame holding features of one layer. Its columns are the
``BASE_COLUMNS`` below, the layer's attributes, and the geometry. ``validate_frame`` checks a
frame against the layer schema and returns it normalised (typed columns, every attribute
present), or raises one ``InvalidInput`` naming the first bad feature and what is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput
from citytwin.model.schema import STATUSES, Attribute, AttrType, Layer, layer

BASE_COLUMNS = (
    "id",
    "class",
    "status",
    "valid_from",
    "valid_to",
    "source",
    "imported_at",
    "props",
    "geometry_3d",
)
"""Columns every feature has besides its layer's attributes and its geometry.

``props`` holds source properties the schema does not name (kept, never lost);
``geometry_3d`` an optional 3D geometry as a CityJSON-style dict with real coordinates.
"""

_GEOMETRY_TYPES = {
    "Polygon": {"Polygon", "MultiPolygon"},
    "LineString": {"LineString", "MultiLineString"},
    "Point": {"Point"},
}

_PANDAS_DTYPE = {
    AttrType.STR: "object",
    AttrType.INT: "Int64",
    AttrType.FLOAT: "float64",
    AttrType.BOOL: "boolean",
    AttrType.DATE: "datetime64[ns]",
}


@dataclass
class Feature:
    """One feature (one version of it): a convenience view of a frame row."""

    id: str
    layer: str
    cls: str
    geometry: shapely.Geometry
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "in_service"
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None
    source: str | None = None
    imported_at: dt.datetime | None = None
    props: dict[str, Any] = field(default_factory=dict)
    geometry_3d: dict[str, Any] | None = None

    def to_geojson(self) -> dict[str, Any]:
        """This feature as a GeoJSON Feature (in the twin's CRS)."""
        return {
            "type": "Feature",
            "id": self.id,
            "geometry": json.loads(shapely.to_geojson(self.geometry)),
            "properties": {
                "class": self.cls,
                "status": self.status,
                "valid_from": _iso(self.valid_from),
                "valid_to": _iso(self.valid_to),
                **{k: _jsonable(v) for k, v in self.attributes.items()},
            },
        }


def _iso(v: dt.datetime | None) -> str | None:
    return v.isoformat() if v is not None else None


def _jsonable(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, dt.date | pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    return v


def features_from_frame(layer_name: str, frame: gpd.GeoDataFrame) -> list[Feature]:
    """Rows of a feature frame as ``Feature`` objects."""
    attrs = [a.name for a in layer(layer_name).attributes if a.name in frame.columns]
    out = []
    for row in frame.itertuples(index=False):
        r = dict(zip(frame.columns, row, strict=True))
        out.append(
            Feature(
                id=r["id"],
                layer=layer_name,
                cls=r["class"],
                geometry=r["geometry"],
                attributes={a: _jsonable(r[a]) for a in attrs},
                status=r.get("status") or "in_service",
                valid_from=_ts(r.get("valid_from")),
                valid_to=_ts(r.get("valid_to")),
                source=r.get("source"),
                imported_at=_ts(r.get("imported_at")),
                props=r.get("props") or {},
                geometry_3d=r.get("geometry_3d"),
            )
        )
    return out


def _ts(v: Any) -> dt.datetime | None:
    if v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
        return None
    return pd.Timestamp(v).to_pydatetime()


def empty_frame(layer_name: str, crs: Any = None) -> gpd.GeoDataFrame:
    """An empty, correctly typed frame for a layer."""
    lay = layer(layer_name)
    cols: dict[str, pd.Series] = {c: pd.Series([], dtype="object") for c in BASE_COLUMNS}
    for c in ("valid_from", "valid_to", "imported_at"):
        cols[c] = pd.Series([], dtype="datetime64[ns]")
    for a in lay.attributes:
        cols[a.name] = pd.Series([], dtype=_PANDAS_DTYPE[a.type])
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def validate_frame(
    layer_name: str,
    frame: gpd.GeoDataFrame,
    *,
    source: str | None = None,
    valid_from: dt.datetime | None = None,
    repair_geometry: bool = False,
) -> gpd.GeoDataFrame:
    """Check ``frame`` against the schema of ``layer_name``; return it normalised.

    Raises ``InvalidInput`` naming the first offending feature: a missing id, a duplicate id,
    an unknown class or attribute, a missing, empty, invalid or wrong-kind geometry, a value of
    the wrong type. With ``repair_geometry`` invalid geometries are made valid instead.
    """
    lay = layer(layer_name)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    df = frame.copy()
    ids = _ids(df, lay, source)

    def fail(pos: int, message: str, hint: str | None = None) -> InvalidInput:
        return InvalidInput(message, source=source, layer=lay.name, feature=ids[pos], hint=hint)

    known = set(BASE_COLUMNS) | {a.name for a in lay.attributes} | {df.geometry.name}
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        raise InvalidInput(
            f"unknown attribute(s) {', '.join(map(str, unknown))}",
            source=source,
            layer=lay.name,
            hint=f"map them onto {', '.join(a.name for a in lay.attributes)}"
            " or keep them in 'props'",
        )
    if "class" not in df.columns or df["class"].isna().any():
        pos = 0 if "class" not in df.columns else int(np.flatnonzero(df["class"].isna())[0])
        raise fail(pos, "feature has no class", f"give one of {', '.join(lay.classes)}")
    if not lay.open_classes:
        bad = ~df["class"].isin(lay.classes)
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise fail(
                pos,
                f"unknown class {df['class'].iloc[pos]!r}",
                f"use one of {', '.join(lay.classes)}",
            )

    df = _validated_geometry(df, lay, fail, repair_geometry)

    for a in lay.attributes:
        df[a.name] = _coerced_column(df, a, fail)

    n = len(df)
    status = df["status"] if "status" in df.columns else pd.Series([None] * n, index=df.index)
    status = status.where(status.notna(), "in_service")
    bad = ~status.isin(STATUSES)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise fail(pos, f"unknown status {status.iloc[pos]!r}", f"use one of {', '.join(STATUSES)}")
    df["status"] = status.astype(object)
    df["id"] = ids
    if "valid_from" in df.columns:  # times are stored as naive UTC
        values = pd.to_datetime(df["valid_from"], errors="coerce", utc=True).dt.tz_localize(None)
        df["valid_from"] = values.fillna(pd.Timestamp(valid_from or now)).astype("datetime64[ns]")
    else:
        df["valid_from"] = pd.Series(
            pd.Timestamp(valid_from or now), index=df.index, dtype="datetime64[ns]"
        )
    df["imported_at"] = pd.Series(pd.Timestamp(now), index=df.index, dtype="datetime64[ns]")
    df["valid_to"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns]")
    if "source" not in df.columns:
        df["source"] = source
    else:
        df["source"] = df["source"].where(df["source"].notna(), source)
    for col in ("props", "geometry_3d"):
        if col not in df.columns:
            df[col] = None
    ordered = list(BASE_COLUMNS) + [a.name for a in lay.attributes] + [df.geometry.name]
    return df[ordered]


def _ids(df: pd.DataFrame, lay: Layer, source: str | None) -> np.ndarray:
    if "id" not in df.columns:
        raise InvalidInput(
            "features have no 'id' column",
            source=source,
            layer=lay.name,
            hint="map a source field onto 'id' or let the importer number the features",
        )
    ids = df["id"]
    missing = ids.isna().to_numpy() | (ids.astype(str).str.strip() == "").to_numpy()
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise InvalidInput(
            f"feature at position {pos} has no id",
            source=source,
            layer=lay.name,
            hint="every feature needs a stable, unique id",
        )
    ids = ids.astype(str).to_numpy(dtype=object)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise InvalidInput(
            "duplicate feature id",
            source=source,
            layer=lay.name,
            feature=ids[pos],
            hint="ids must be unique within a layer",
        )
    return ids


def _validated_geometry(
    df: gpd.GeoDataFrame, lay: Layer, fail: Any, repair: bool
) -> gpd.GeoDataFrame:
    geoms = df.geometry.to_numpy()
    missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    if missing.any():
        raise fail(int(np.flatnonzero(missing)[0]), "geometry is missing or empty")
    if shapely.has_z(geoms).any():
        geoms = shapely.force_2d(geoms)
    if lay.geometry in _GEOMETRY_TYPES:
        kinds = shapely.get_type_id(geoms)
        allowed = [_TYPE_IDS[t] for t in _GEOMETRY_TYPES[lay.geometry]]
        bad = ~np.isin(kinds, allowed)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise fail(
                pos,
                f"geometry is a {geoms[pos].geom_type}, layer {lay.name!r} takes {lay.geometry}",
            )
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        if repair:
            geoms[invalid] = shapely.make_valid(geoms[invalid])
        else:
            pos = int(np.flatnonzero(invalid)[0])
            raise fail(
                pos,
                f"invalid geometry: {shapely.is_valid_reason(geoms[pos])}",
                "fix it in the source, or import with --repair-geometry",
            )
    df = df.set_geometry(gpd.GeoSeries(geoms, index=df.index, crs=df.crs))
    return df


_TYPE_IDS = {
    "Point": 0,
    "LineString": 1,
    "Polygon": 3,
    "MultiPoint": 4,
    "MultiLineString": 5,
    "MultiPolygon": 6,
}


def _coerced_column(df: pd.DataFrame, a: Attribute, fail: Any) -> pd.Series:
    n = len(df)
    if a.name not in df.columns:
        if a.required:
            raise fail(0, f"required attribute {a.name!r} is missing")
        return pd.Series([None] * n, index=df.index, dtype=object).astype(_PANDAS_DTYPE[a.type])
    col = df[a.name]
    present = col.notna().to_numpy()
    if a.type in (AttrType.FLOAT, AttrType.INT):
        if col.dtype == bool:
            out = pd.Series(np.nan, index=df.index)
            bad = present
        else:
            out = pd.to_numeric(col, errors="coerce")
            bad = present & ~np.isfinite(out.to_numpy(dtype=float, na_value=np.nan))
            if a.type is AttrType.INT and not bad.any():
                vals = out.to_numpy(dtype=float, na_value=0.0)
                bad = present & (vals != np.round(vals))
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise fail(pos, f"attribute {a.name!r} expects {a.type.value}, got {col.iloc[pos]!r}")
        out = out.astype("Int64") if a.type is AttrType.INT else out.astype("float64")
    elif a.type is AttrType.STR:
        values = col.to_numpy(dtype=object)
        kinds = [type(v) for v in values[present]]
        if any(k in (bytes, dict, list) for k in kinds):
            pos = int(
                np.flatnonzero(present)[
                    next(i for i, k in enumerate(kinds) if k in (bytes, dict, list))
                ]
            )
            raise fail(pos, f"attribute {a.name!r} expects str, got {values[pos]!r}")
        out = pd.Series(
            np.where(present, col.astype(str).to_numpy(dtype=object), None),
            index=df.index,
            dtype=object,
        )
    else:
        values = col.to_numpy(dtype=object)
        coerced = np.empty(n, dtype=object)
        for i in range(n):
            if present[i]:
                try:
                    coerced[i] = a.coerce(values[i])
                except ValueError as exc:
                    raise fail(i, str(exc)) from None
        out = pd.Series(coerced, index=df.index).astype(_PANDAS_DTYPE[a.type])
    nonnull = out.notna().to_numpy()
    if a.required and not nonnull.all():
        raise fail(int(np.flatnonzero(~nonnull)[0]), f"required attribute {a.name!r} is missing")
    if a.choices is not None:
        bad = nonnull & ~out.isin(a.choices).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise fail(
                pos,
                f"attribute {a.name!r} must be one of {', '.join(map(str, a.choices))}; "
                f"got {out.iloc[pos]!r}",
            )
    if a.minimum is not None:
        bad = nonnull & (out.to_numpy(dtype=float, na_value=np.inf) < a.minimum)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise fail(pos, f"attribute {a.name!r} must be >= {a.minimum}; got {out.iloc[pos]!r}")
    return out

"""The operations console: a single-page map of the twin served under ``/console/``.

The page (``static/``: plain ES modules and CSS, with MapLibre GL JS, deck.gl and proj4js
vendored under ``static/vendor`` by ``vendor.sh``; nothing is fetched from the internet) reads
the data services every other client uses — vector tiles, features, processes, alarms and the
event stream — with the operator's credentials. ``mount`` adds the few JSON endpoints the
console needs that no other family gives:

- ``GET /console/api/meta``: the twin (name, whether it is virtual, its CRS as a proj4
  definition so the page can place alarms given in twin coordinates, its extent in longitude
  and latitude), who is signed in, and the collections they may read (titles in English and
  Chinese).
- ``GET /console/api/sensors``: the devices as GeoJSON (longitude, latitude) with their state
  — ``alarm`` (an active alarm on one of their datastreams; ``severity`` its level), ``no_data``
  (no reading within ``stale_after`` before ``at``) or ``normal`` — and their latest readings.
- ``GET /console/api/series``: a datastream's readings downsampled for a chart
  (``Store.downsample``: first, last, lowest and highest per pixel column).

Each reads through the principal's grant on the ``devices`` collection (rows it must not see
are left out, a district-bound user sees only their district) and sets the audit count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import shapely
from fastapi import Query, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from pyproj import CRS, Transformer

from citytwin.errors import InvalidInput, NotFound
from citytwin.services.access import Grant, Principal, Who, narrow
from citytwin.services.features import transformer
from citytwin.store.base import StreamQuery
from citytwin.warning.rules import LEVELS

STATIC = Path(__file__).with_name("static")
DEVICES = "devices"
"""The collection whose grant decides which sensors a principal sees."""
MAX_BUCKETS = 4000
MAX_STALE_S = 366 * 86400.0
EARLIEST, LATEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
"""The times the console's endpoints take (``at``, ``start``, ``end``)."""


Names = Annotated[str | None, Query(description="comma-separated")]


HEADLESS_CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, which the console's browser tests and benchmark drive."""
HEADLESS_CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL 2 in software: ANGLE on SwiftShader (Chromium refuses the silent fallback)
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)
"""How to run the console headless without a GPU (tests, benchmarks)."""

def mount(app: Any, ctx: Any) -> None:
    """Serve the console under ``/console/`` and its JSON endpoints under ``/console/api``."""

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308)

    @app.get("/console/api/meta", tags=["console"])
    async def console_meta(who: Who) -> dict[str, Any]:
        """The twin, the signed-in principal and the collections they may read."""
        return await asyncio.to_thread(twin_meta, ctx, who)

    @app.get("/console/api/sensors", tags=["console"])
    async def console_sensors(
        request: Request,
        who: Who,
        bbox: Annotated[
            str | None, Query(description="west,south,east,north in degrees: devices in it")
        ] = None,
        classes: Names = None,
        exclude: Names = None,
        ids: Names = None,
        readings: Annotated[bool, Query(description="each device's latest readings")] = False,
        at: Annotated[
            dt.datetime | None,
            Query(description="the time states are judged at (default: the latest reading)"),
        ] = None,
        stale_after: Annotated[
            float,
            Query(gt=0, le=MAX_STALE_S, description="seconds without a reading before 'no data'"),
        ] = 3600.0,
    ) -> dict[str, Any]:
        """Devices as GeoJSON (longitude, latitude) with their state (alarm, no_data,
        normal) and, with ``readings``, their latest readings; ``classes`` / ``exclude`` /
        ``ids``: comma-separated device classes to keep or leave out, device ids."""
        grant = ctx.access.grant(who, DEVICES)
        doc = await asyncio.to_thread(
            sensor_states,
            ctx.store,
            grant,
            at=at,
            stale_after=stale_after,
            bbox=_numbers(bbox, "bbox", 4) if bbox else None,
            classes=_names(classes),
            exclude=_names(exclude),
            ids=_names(ids),
            readings=readings,
        )
        request.state.audit_count = len(doc["features"])
        return doc

    @app.get("/console/api/series", tags=["console"])
    async def console_series(
        request: Request,
        who: Who,
        datastream: Annotated[str, Query(min_length=1, max_length=200)],
        start: Annotated[
            dt.datetime | None, Query(description="default: `end` minus 24 hours")
        ] = None,
        end: Annotated[
            dt.datetime | None, Query(description="default: just after the latest reading")
        ] = None,
        buckets: Annotated[
            int, Query(ge=1, le=MAX_BUCKETS, description="the chart's width in pixels")
        ] = 600,
    ) -> dict[str, Any]:
        """A datastream's readings downsampled for a chart ``buckets`` pixels wide."""
        grant = ctx.access.grant(who, DEVICES)
        doc = await asyncio.to_thread(series, ctx.store, grant, datastream, start, end, buckets)
        request.state.audit_count = len(doc["points"])
        return doc

    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")


# -- the twin -----------------------------------------------------------------------------------
def _to_lonlat(crs: str) -> Transformer:
    return transformer(crs, "EPSG:4326")


def proj4_definition(crs: str) -> str:
    """The proj4 string of a projected CRS (what proj4js needs to place twin coordinates)."""
    import warnings

    with warnings.catch_warnings():  # pyproj warns that proj4 strings may lose datum details
        warnings.simplefilter("ignore", UserWarning)
        return CRS.from_user_input(crs).to_proj4()


def twin_meta(ctx: Any, who: Principal) -> dict[str, Any]:
    """What the console shows about the twin and the principal (``/console/api/meta``)."""
    store = ctx.store
    meta = store.meta
    extent = meta.extent or _layers_extent(store)
    bounds = None
    if extent is not None:
        x0, y0, x1, y1 = extent
        xs, ys = _to_lonlat(meta.crs).transform([x0, x1, x0, x1], [y0, y0, y1, y1])
        bounds = [min(xs), min(ys), max(xs), max(ys)]
    collections = [
        {
            "id": c.id,
            "layer": c.layer,
            "network": c.network,
            "title": c.title,
            "title_zh": c.title_zh,
            "sensitivity": c.sensitivity,
        }
        for c in ctx.access.readable(who)
    ]
    return {
        "name": meta.name,
        "virtual": bool(meta.virtual),
        "description": meta.description,
        "crs": meta.crs,
        "proj4": proj4_definition(meta.crs),
        "bounds": bounds,
        "terrain": any(r.get("kind") == "dem" for r in store.rasters()),
        "principal": {
            "user": who.user,
            "department": who.department,
            "roles": sorted(who.roles),
            "district": who.district,
        },
        "collections": collections,
        "monitoring": ctx.desk is not None,
        "events": ctx.hub is not None,
        "severities": list(LEVELS),
    }


def _layers_extent(store: Any) -> tuple[float, float, float, float] | None:
    boxes = [s.extent for s in store.summary() if getattr(s, "extent", None)]
    if not boxes:
        return None
    arr = np.asarray(boxes, float)
    return (arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())


# -- sensors ------------------------------------------------------------------------------------
def visible_devices(
    store: Any,
    grant: Grant,
    *,
    box: shapely.Geometry | None = None,
    classes: list[str] | None = None,
    ids: list[str] | None = None,
) -> pd.DataFrame:
    """The current devices the grant lets its principal see (its hidden rows and other
    districts left out, in the store's query), optionally in ``box`` (twin CRS), of
    ``classes`` and among ``ids``."""
    q = grant.collection.query(intersects=box, classes=classes, ids=ids)
    return store.query(narrow(q, grant))


def sensor_states(
    store: Any,
    grant: Grant,
    *,
    at: dt.datetime | None = None,
    stale_after: float = 3600.0,
    bbox: tuple[float, float, float, float] | None = None,
    classes: list[str] | None = None,
    exclude: list[str] | None = None,
    ids: list[str] | None = None,
    readings: bool = False,
) -> dict[str, Any]:
    """The visible devices (optionally in ``bbox``, longitude and latitude; of ``classes``;
    not of ``exclude``; among ``ids``) as a GeoJSON FeatureCollection in longitude and latitude,
    each with ``state`` (alarm | no_data | normal: a reading within ``stale_after`` seconds
    before ``at``), ``severity`` (its worst active alarm's level) and ``latest`` (time of its
    latest reading); with ``readings``, per datastream its id, property, unit, value and
    time."""
    box = _twin_box(store.meta.crs, bbox) if bbox is not None else None
    devices = visible_devices(store, grant, box=box, classes=classes, ids=ids)
    if exclude and len(devices):
        devices = devices[~devices["class"].isin(exclude)]
    empty = {"type": "FeatureCollection", "features": [], "at": None}
    if not len(devices):
        return empty
    fids = devices["id"].astype(str).to_numpy(object)
    latest = store.latest(StreamQuery(things=list(fids)), include_empty=True)
    times = pd.to_datetime(latest["phenomenon_time"], utc=True)
    if at is None:
        ref = times.max() if times.notna().any() else pd.Timestamp.now(tz="UTC")
    else:
        ref = pd.Timestamp(_utc(at, "at"))
    latest = latest.assign(
        time=times, fresh=times.notna() & (times > ref - pd.Timedelta(seconds=stale_after))
    )
    per_thing = latest.groupby("thing_id", observed=True).agg(
        newest=("time", "max"), fresh=("fresh", "any")
    )
    newest = per_thing["newest"].reindex(fids)
    fresh = per_thing["fresh"].reindex(fids).fillna(False).to_numpy(bool)
    worst = _worst_alarm(store, latest, fids)

    pts = devices.geometry.representative_point().to_numpy()
    lon, lat = _to_lonlat(store.meta.crs).transform(shapely.get_x(pts), shapely.get_y(pts))
    state = np.where(worst >= 0, "alarm", np.where(fresh, "normal", "no_data"))
    severity = [LEVELS[w] if w >= 0 else None for w in worst]
    newest_iso = [None if pd.isna(t) else t.isoformat() for t in newest]
    names = devices["name"].astype(object).where(devices["name"].notna(), None).to_numpy()
    cls = devices["class"].astype(object).to_numpy()
    network = devices["network"].astype(object).where(devices["network"].notna(), None)
    attached = devices["feature_id"].astype(object).where(devices["feature_id"].notna(), None)
    by_thing = _readings(latest) if readings else {}
    features = []
    for i, fid in enumerate(fids):
        props = {
            "id": fid,
            "name": names[i],
            "class": cls[i],
            "network": network.iat[i],
            "feature_id": attached.iat[i],
            "state": str(state[i]),
            "severity": severity[i],
            "latest": newest_iso[i],
        }
        if readings:
            props["readings"] = by_thing.get(fid, [])
        features.append(
            {
                "type": "Feature",
                "id": fid,
                "geometry": {
                    "type": "Point",
                    "coordinates": [round(float(lon[i]), 7), round(float(lat[i]), 7)],
                },
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features, "at": ref.isoformat()}


def _worst_alarm(store: Any, latest: pd.DataFrame, fids: np.ndarray) -> np.ndarray:
    """Per device the rank (in ``LEVELS``) of its worst active alarm, -1 for none: alarms on
    one of its datastreams, or whose source is the device or one of its datastreams."""
    alarms = store.alarms(status="active", limit=None)
    worst = np.full(len(fids), -1)
    if not len(alarms):
        return worst
    thing_of = pd.Series(latest["thing_id"].to_numpy(object), index=latest["datastream_id"])
    thing_of = thing_of[~thing_of.index.duplicated()]
    thing = thing_of.reindex(alarms["datastream_id"].to_numpy(object)).to_numpy(object)
    by_source = thing_of.reindex(alarms["source"].to_numpy(object)).to_numpy(object)
    own = pd.Index(fids)
    source_is_device = np.where(own.get_indexer(alarms["source"].to_numpy(object)) >= 0,
                                alarms["source"].to_numpy(object), None)  # fmt: skip
    thing = np.where(pd.isna(thing), by_source, thing)
    thing = np.where(pd.isna(thing), source_is_device, thing)
    rank = pd.Series({level: i for i, level in enumerate(LEVELS)})
    levels = rank.reindex(alarms["severity"].to_numpy(object)).fillna(0).to_numpy(int)
    where = own.get_indexer(pd.Series(thing).fillna("").to_numpy(object))
    hit = where >= 0
    np.maximum.at(worst, where[hit], levels[hit])
    return worst


def _readings(latest: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in latest.itertuples(index=False):
        out.setdefault(row.thing_id, []).append(
            {
                "datastream": row.datastream_id,
                "property": row.observed_property,
                "unit": row.unit,
                "value": None if pd.isna(row.result) else _number(row.result),
                "time": None if pd.isna(row.time) else row.time.isoformat(),
            }
        )
    return out


def _twin_box(crs: str, bbox: tuple[float, float, float, float]) -> shapely.Geometry:
    """A longitude/latitude box as a polygon in the twin's CRS (densified edges)."""
    west, south, east, north = bbox
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InvalidInput(
            f"bbox {','.join(map(str, bbox))} is not west,south,east,north in degrees",
            hint="give four numbers: longitudes -180..180, latitudes -90..90, west < east",
        )
    ring = shapely.segmentize(shapely.box(west, south, east, north), (east - west) / 8)
    to_twin = transformer("EPSG:4326", crs)
    return shapely.transform(ring, lambda xy: np.column_stack(to_twin.transform(*xy.T)))


def series(
    store: Any,
    grant: Grant,
    datastream: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    buckets: int,
) -> dict[str, Any]:
    """``/console/api/series``: the datastream (which must belong to a device the grant
    shows), its unit and the downsampled points ``[[iso time, value], ...]``."""
    streams = store.datastreams(StreamQuery(ids=[datastream]))
    if not len(streams):
        raise NotFound(
            f"no datastream {datastream!r}", hint="GET /console/api/sensors lists each device's"
        )
    stream = streams.iloc[0]
    visible = visible_devices(store, grant)
    if stream["thing_id"] not in set(visible["id"].astype(str)):
        raise NotFound(
            f"no datastream {datastream!r}", hint="GET /console/api/sensors lists each device's"
        )
    if end is None:
        last = store.latest(StreamQuery(ids=[datastream]))
        end = (
            pd.Timestamp(last["phenomenon_time"].iloc[0]).to_pydatetime() + dt.timedelta(seconds=1)
            if len(last)
            else dt.datetime.now(dt.UTC)
        )
    end = _utc(end, "end")
    start = _utc(start, "start") if start is not None else end - dt.timedelta(hours=24)
    if start >= end:
        raise InvalidInput(
            f"start {start.isoformat()} is not before end {end.isoformat()}",
            hint="give start < end (ISO 8601)",
        )
    frame = store.downsample(datastream, start, end, buckets)
    t = pd.to_datetime(frame["phenomenon_time"], utc=True)
    values = pd.to_numeric(frame["result"], errors="coerce")
    points = [
        [when.isoformat(), float(v)] for when, v in zip(t, values, strict=True) if not pd.isna(v)
    ]
    return {
        "datastream": datastream,
        "thing": stream["thing_id"],
        "property": stream["observed_property"],
        "unit": stream["unit"],
        "start": start.isoformat(),
        "end": end.isoformat(),
        "points": points,
    }


def _names(text: str | None) -> list[str] | None:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def _numbers(text: str, name: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(np.isfinite(values)):
        raise InvalidInput(
            f"{name}={text!r} is not {count} comma-separated numbers",
            hint=f"e.g. {name}=113.32,23.06,113.35,23.09",
        )
    return values


def _utc(t: dt.datetime, name: str = "time") -> dt.datetime:
    """``t`` in UTC (naive: taken as UTC); ``InvalidInput`` outside 1900..2200."""
    try:
        out = t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        out = None
    if out is None or not EARLIEST <= out < LATEST:
        raise InvalidInput(
            f"{name} {t.isoformat()} is out of range", hint="give a time between 1900 and 2200"
        )
    return out


def _number(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _text(v: Any) -> str | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

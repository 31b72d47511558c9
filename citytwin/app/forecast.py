"""Flood forecasts on a twin: a rainfall forecast arrives (gridded rain in a NetCDF or GeoTIFF
file, ``citytwin.formats.rainfall``), the flood model runs on it (surface only on 10 m cells by
default), the scenario is kept with the twin's others (``flood/<id>``), and the twin's
``predicted`` rules raise, re-level or clear alarms through the alarm machinery: the same
tables, life cycle, webhooks and event stream as the alarms of readings, each alarm with the
forecast's scenario and its lead time.

    run = run_forecast(store, "nowcast.nc", issued="2025-06-03T08:00Z")
    run.changes.alarms          # the predicted alarms raised, re-levelled or cleared

Arrivals: ``citytwin flood forecast FILE`` on a twin, and ``ForecastInbox``, a drop folder the
running service watches (``citytwin serve --forecast-dir DIR``).

Times: the model's clock starts with the forecast's first time step; flooding at an asset
starts when water first stands there (the run's ``first_wet``, deeper than 1 cm, on a cell
along a building's walls, a road's centreline, at a facility); the lead time is that onset
less the forecast's issue time (given, else the file's ``issued`` attribute or tag, else the
start of its rain).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from citytwin.app.flood import FloodScenario, flood_grid, run_storm, save_scenario
from citytwin.app.monitoring import twin_rules
from citytwin.errors import CityTwinError, InvalidInput
from citytwin.flood.impacts import building_depths, line_max, point_depths
from citytwin.flood.rain import gridded_rain
from citytwin.formats.rainfall import Grid, read_rainfall
from citytwin.store import Query, Store
from citytwin.warning.alarms import (
    AlarmChanges,
    apply_events,
    notification_rows,
    twin_webhooks,
)
from citytwin.warning.engine import IMPACT_COLUMNS, evaluate_predictions
from citytwin.warning.rules import RuleSet

log = logging.getLogger(__name__)

FORECAST_CELL = 10.0
"""Cell size (m) of a forecast's run by default: fast enough to run as forecasts come."""
AFTER_MIN = 60.0
"""Minutes the model runs on after the forecast's rain ends (the water still gathers)."""
FORECAST_SUFFIXES = (".nc", ".nc4", ".netcdf", ".tif", ".tiff")
ISSUE_KEYS = ("issued", "issue_time", "forecast_reference_time")
"""The attributes (NetCDF) or tags (GeoTIFF) a forecast file may state its issue time in."""


@dataclass
class ForecastRun:
    """A forecast's run: its flood ``scenario`` (kept as ``key``), when the forecast was
    issued and when its rain starts, the impact table (``IMPACT_COLUMNS`` with ``x``, ``y``,
    ``name``), the predicted rules' events and the alarm changes they made (``queued``:
    webhook notifications queued)."""

    scenario: FloodScenario
    key: str
    issued: pd.Timestamp
    start: pd.Timestamp
    impacts: pd.DataFrame
    events: pd.DataFrame
    changes: AlarmChanges
    queued: int = 0


def run_forecast(
    store: Store,
    path: str | Path,
    *,
    issued: Any = None,
    rules: RuleSet | None = None,
    cell: float = FORECAST_CELL,
    bounds: tuple[float, float, float, float] | None = None,
    after_min: float = AFTER_MIN,
    solver: str = "inertial",
    coupled: bool = False,
    variable: str | None = None,
    webhooks: Sequence[Any] | None = None,
    hub: Any = None,
    dispatcher: Any = None,
    on_step: Callable[[float, float], None] | None = None,
    now: Any = None,
) -> ForecastRun:
    """Run the flood model on the rainfall forecast in ``path`` (NetCDF or GeoTIFF), keep the
    scenario, and raise / re-level / clear the alarms of the ``predicted`` rules (``rules``,
    default the twin's) in one transaction; then wake the ``dispatcher`` and tell the event
    ``hub``. ``issued``: the forecast's issue time (default: the file's, else the start of
    its rain); ``cell``, ``bounds``, ``after_min``, ``solver``, ``coupled`` as for
    ``run_storm``; ``webhooks``: default the twin's."""
    path = Path(path)
    fg = flood_grid(store, cell=cell, bounds=bounds)
    r = fg.raster
    rain = read_rainfall(path, Grid(fg.crs, r.x0, r.y0, r.dx, r.shape), variable=variable)
    times, mm_h = rain.times_s, rain.mm_per_h
    if len(times) < 2:
        raise InvalidInput(
            f"{path.name}: a forecast of one time step has no length",
            hint="give two time steps or more (the last lasts as long as the one before it)",
        )
    end = float(times[-1] + (times[-1] - times[-2]))
    start = pd.Timestamp(rain.start)
    stated = _issue_time(issued, "issued") if issued is not None else _stated_issue(path)
    when = start if stated is None else stated
    try:
        rainfall = gridded_rain(np.append(times, end), np.concatenate([mm_h, mm_h[:1] * 0.0]))
    except ValueError as exc:
        raise InvalidInput(f"{path.name}: {exc}") from None
    scenario = run_storm(
        store,
        rain=rainfall,
        duration_min=end / 60.0,
        after_min=after_min,
        solver=solver,
        cell=cell,
        bounds=bounds,
        coupled=coupled,
        on_step=on_step,
        grid=fg,
    )
    scenario.id = f"{scenario.id}-forecast"
    scenario.params = {
        "forecast": path.name,
        "issued": when.isoformat(),
        "start": start.isoformat(),
        "duration_min": end / 60.0,
        "rain_mm_max": float(np.max(rainfall.total(end))) * 1000.0,
        "after_min": after_min,
        "solver": solver,
        "cell": scenario.grid.raster.dx,
        "coupled": coupled,
        "bounds": list(bounds) if bounds else None,
    }
    impacts = forecast_impacts(store, scenario, start)
    if rules is None:
        rules = twin_rules(store) or RuleSet(())
    hooks = list(webhooks) if webhooks is not None else list(twin_webhooks(store))
    with store.transaction():
        key = save_scenario(store, scenario)
        events, changes, queued = predicted_alarms(
            store, rules, impacts, when, scenario.id, webhooks=hooks, now=now
        )
    announce(changes, queued, hub=hub, dispatcher=dispatcher)
    return ForecastRun(scenario, key, when, start, impacts, events, changes, queued)


def forecast_impacts(store: Store, scenario: FloodScenario, start: Any) -> pd.DataFrame:
    """The impact table of a forecast's scenario whose rain started at ``start``
    (``IMPACT_COLUMNS``, and ``x``, ``y``, ``name``): per building its deepest water at the
    walls (a ``building``, and a ``basement`` too when it has storeys below ground), per road
    the deepest along its centreline, per facility the depth there (a ``facility``, and a
    ``critical_facility`` too when critical); each with when water first stands there (the
    earliest ``first_wet`` of the same cells). Assets off the grid are left out."""
    r = scenario.grid.raster
    depth = np.nan_to_num(scenario.result.max_depth, nan=0.0)
    earliest = -scenario.result.first_wet  # the latest of these is the earliest wetting
    t0 = pd.Timestamp(start)
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    box = shapely.box(r.x0, r.y0 - r.shape[0] * r.dx, r.x0 + r.shape[1] * r.dx, r.y0)
    parts = []

    def add(kind: str, frame: pd.DataFrame, value: np.ndarray, wet: np.ndarray, xy) -> None:
        parts.append(
            pd.DataFrame(
                {
                    "asset_id": frame["id"].astype(str).to_numpy(object),
                    "asset_kind": kind,
                    "value": value,
                    "onset": t0 + pd.to_timedelta(-wet, unit="s"),
                    "x": shapely.get_x(xy),
                    "y": shapely.get_y(xy),
                    "name": frame["name"].to_numpy(object),
                }
            )
        )

    b = store.query(Query("buildings", intersects=box, columns=["basement_floors", "name"]))
    if len(b):
        geoms = b.geometry.to_numpy()
        walls = scenario.buildings.set_index("id")["depth_m"].reindex(b["id"]).to_numpy()
        wet = building_depths(earliest, r, geoms)
        xy = shapely.point_on_surface(geoms)
        add("building", b, walls, wet, xy)
        below = (b["basement_floors"].fillna(0).astype(float) > 0).to_numpy()
        add("basement", b[below], walls[below], wet[below], xy[below])
    s = store.query(Query("streets", intersects=box, columns=["name"]))
    if len(s):
        lines = s.geometry.to_numpy()
        deepest = line_max(depth, r, lines, r.dx / 2)
        wet = line_max(earliest, r, lines, r.dx / 2)
        add("road", s, deepest, wet, shapely.line_interpolate_point(lines, 0.5, normalized=True))
    f = scenario.facilities
    if len(f):
        points = store.query(Query("facilities", ids=list(f["id"])))
        at = points.set_index("id").geometry.reindex(f["id"]).to_numpy()
        wet = point_depths(earliest, r, at)
        xy = shapely.centroid(at)
        value = f["depth_m"].to_numpy(float)
        add("facility", f, value, wet, xy)
        critical = f["critical"].to_numpy(bool)
        add("critical_facility", f[critical], value[critical], wet[critical], xy[critical])
    if not parts:
        return pd.DataFrame({c: [] for c in (*IMPACT_COLUMNS, "x", "y", "name")})
    out = pd.concat(parts, ignore_index=True)
    return out[np.isfinite(out["value"].to_numpy(float))].reset_index(drop=True)


def predicted_alarms(
    store: Store,
    rules: RuleSet,
    impacts: pd.DataFrame,
    issued: Any,
    scenario_id: str,
    *,
    webhooks: Sequence[Any] = (),
    now: Any = None,
) -> tuple[pd.DataFrame, AlarmChanges, int]:
    """Evaluate the ``predicted`` rules on a forecast's impact table against the predicted
    alarms active now, apply the events to the alarms, save them and queue their webhook
    notifications, in one transaction: (events, changes, notifications queued)."""
    now = pd.Timestamp(now if now is not None else dt.datetime.now(dt.UTC))
    with store.transaction():
        active = store.alarms(status="active", limit=None)
        active = active[active["kind"].eq("predicted")]
        events = evaluate_predictions(
            rules,
            impacts,
            issued,
            active=active.rename(columns={"severity": "level"})[["rule_id", "source", "level"]],
            scenario_id=scenario_id,
        )
        if not len(events):
            return events, AlarmChanges(), 0
        current = store.alarms_for(events[["rule_id", "source"]].drop_duplicates())
        changes = apply_events(current, events)
        store.save_alarms(changes.alarms, changes.log)
        rows = notification_rows(changes.changes, changes.alarms, list(webhooks), created_at=now)
        queued = store.enqueue(rows) if len(rows) else 0
    return events, changes, queued


def announce(
    changes: AlarmChanges, queued: int, *, hub: Any = None, dispatcher: Any = None
) -> None:
    """After the commit: wake the webhook dispatcher, tell the event stream."""
    if queued and dispatcher is not None:
        dispatcher.wake()
    if hub is not None and len(changes.changes):
        hub.publish_changes(changes.changes, changes.alarms)


def _issue_time(value: Any, what: str) -> pd.Timestamp:
    try:
        t = pd.Timestamp(value)
    except (TypeError, ValueError):
        t = pd.NaT
    if t is pd.NaT:
        raise InvalidInput(
            f"{what} {value!r} is not a time", hint="an ISO 8601 time, e.g. 2025-06-03T08:00Z"
        )
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _stated_issue(path: Path) -> pd.Timestamp | None:
    """The issue time a forecast file states (``ISSUE_KEYS``: a NetCDF global attribute or
    scalar variable, a GeoTIFF tag), or None."""
    found: Any = None
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as ds:
            tags = ds.tags()
        found = next((tags[k] for k in ISSUE_KEYS if k in tags), None)
    else:
        import xarray as xr

        with xr.open_dataset(path) as ds:
            found = next((ds.attrs[k] for k in ISSUE_KEYS if k in ds.attrs), None)
            if found is None:
                scalar = [k for k in ISSUE_KEYS if k in ds.variables and ds[k].ndim == 0]
                found = ds[scalar[0]].values if scalar else None
    return None if found is None else _issue_time(found, f"{path.name}: the issue time")


# -- a drop folder --------------------------------------------------------------------------
class ForecastStopped(CityTwinError):
    """The service is stopping: the forecast being run is left in the folder for next time."""


@dataclass
class ForecastInbox:
    """A drop folder of rainfall forecasts. ``poll`` runs each forecast file
    (``FORECAST_SUFFIXES``; names starting with ``.`` are skipped, being written) that has not
    changed since the poll before (so one still being copied in waits), oldest first, and
    moves it to ``done/``, or to ``failed/`` beside a ``.error.txt`` saying why. ``rules`` and
    ``webhooks`` are asked for at each run (a running service reloads them); ``stop`` (set
    when the service stops) ends a run midway and leaves its file for next time; ``options``
    go to ``run_forecast``."""

    store: Store
    folder: Path
    rules: Callable[[], RuleSet | None] = lambda: None
    webhooks: Callable[[], Sequence[Any]] = lambda: ()
    hub: Any = None
    dispatcher: Any = None
    stop: threading.Event = field(default_factory=threading.Event)
    options: dict[str, Any] = field(default_factory=dict)
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if not self.folder.is_dir():
            raise InvalidInput(
                f"the forecast folder {self.folder} does not exist", hint="make it first"
            )

    def poll(self) -> list[ForecastRun | CityTwinError]:
        """Run the forecasts that arrived (see the class): each run, or the error of each
        file that failed."""
        now: dict[Path, tuple[int, int]] = {}
        for p in self.folder.iterdir():
            if p.suffix.lower() in FORECAST_SUFFIXES and not p.name.startswith(".") and p.is_file():
                st = p.stat()
                now[p] = (st.st_size, st.st_mtime_ns)
        settled = [p for p, s in now.items() if self._seen.get(p) == s]
        ready = sorted(settled, key=lambda p: (now[p][1], p.name))  # oldest first
        self._seen = {p: s for p, s in now.items() if p not in settled}
        out: list[ForecastRun | CityTwinError] = []
        for path in ready:
            if self.stop.is_set():
                break
            try:
                run = run_forecast(
                    self.store,
                    path,
                    rules=self.rules() or RuleSet(()),
                    webhooks=self.webhooks(),
                    hub=self.hub,
                    dispatcher=self.dispatcher,
                    on_step=self._check_stop,
                    **self.options,
                )
            except ForecastStopped:
                break
            except CityTwinError as exc:
                self._file(path, "failed", str(exc))
                log.error("forecast %s failed: %s", path.name, exc)
                out.append(exc)
                continue
            except Exception as exc:  # a bug: keep the file and why, go on with the others
                self._file(path, "failed", traceback.format_exc())
                log.exception("forecast %s failed", path.name)
                out.append(CityTwinError(f"{path.name}: {exc}"))
                continue
            self._file(path, "done")
            log.info(
                "forecast %s: scenario %s, %d alarm changes",
                path.name,
                run.scenario.id,
                len(run.changes.changes),
            )
            out.append(run)
        return out

    def _check_stop(self, t: float, dt_s: float) -> None:
        if self.stop.is_set():
            raise ForecastStopped("the service is stopping")

    def _file(self, path: Path, where: str, error: str | None = None) -> Path:
        """Move a forecast file into ``where/`` (a new name if one is there already)."""
        folder = self.folder / where
        folder.mkdir(exist_ok=True)
        target, n = folder / path.name, 1
        while target.exists():
            target, n = folder / f"{path.stem}-{n}{path.suffix}", n + 1
        path.replace(target)
        if error is not None:
            target.with_name(target.name + ".error.txt").write_text(error + "\n", "utf-8")
        return target

"""The demo: the default virtual city, built into an embedded twin, checked with the real
engines (EPANET through wntr, SWMM through pyswmm), summed up and drawn."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from citytwin.drainage.storms import chicago_hyetograph
from citytwin.drainage.swmm import run_swmm
from citytwin.store import Query, Store
from citytwin.synth.city import VirtualCity, plan_city, write_city
from citytwin.synth.drainage import with_storm
from citytwin.synth.water import water_check

DEMO_AREA_KM2 = 4.0
DEMO_SEED = 1
REPLAY_HOURS = 4.0
"""The demo's replayed readings: hours, ending an hour ago."""
DEMO_USER = "duty"
"""The demo's console user (emergency management; a new password each run)."""


def build_demo(folder: Path, console: Console) -> Path:
    """Build ``folder/virtual-city.twin`` afresh, check it, print its summary and draw a map."""
    from citytwin.cli import print_summary

    path = folder / "virtual-city.twin"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    with console.status("generating the virtual city …"):
        city = plan_city(DEMO_AREA_KM2, DEMO_SEED)
    with console.status("writing the twin …"):
        store = write_city(path, city, name="virtual-city-demo")
    try:
        print_summary(store.meta, store.summary(), store.rasters(), store.documents("network/"))
        console.print(network_lengths(store))
        with console.status("running EPANET (24 h) and SWMM (2- and 50-year storms) …"):
            checks = engine_checks(city)
        console.print(checks)
        png = folder / "virtual-city.png"
        draw_map(store, png)
    finally:
        store.close()
    alarms_png = folder / "monitoring.png"
    start = replay_start()
    with console.status("live monitoring: replaying a storm, a main burst and a gas leak …"):
        lines = replay_demo(path, alarms_png, start)
    for line in lines:
        console.print(line)
    with console.status("flood warning: a rainfall nowcast through the flood model …"):
        lines = forecast_demo(path, folder, start + dt.timedelta(hours=REPLAY_HOURS))
    for line in lines:
        console.print(line)
    console.print(
        f"\nmaps: {png}, {alarms_png}, {folder / 'flood-forecast.png'}\ntwin: {path}  (try:"
        f" citytwin info -t {path}; citytwin alarms incidents -t {path})"
    )
    return path


def serve_demo(path: Path, port: int, console: Console) -> None:
    """Serve the demo twin (``citytwin serve``) with one more hour of its sensors replayed
    live at 20× (the readings' own clock), and print the console's address."""
    import secrets

    from citytwin.services.access import Registry
    from citytwin.services.runtime import MonitoringService
    from citytwin.store import open_store

    password = secrets.token_urlsafe(9)
    with open_store(path) as store:
        registry = Registry(store)
        if any(u.id == DEMO_USER for u in registry.users()):
            registry.set_password(DEMO_USER, password)
        else:
            registry.add_user(
                DEMO_USER,
                "Duty officer (demo)",
                "emergency",
                roles=("operator",),
                password=password,
            )
    service = MonitoringService.open(path, clock="data")
    service.serve(
        "127.0.0.1",
        port,
        replay_hours=1.0,
        speedup=20.0,
        banner=lambda text: console.print(
            f"\n[bold]the demo city is served[/bold] (Ctrl-C stops):\n{text}\n"
            f"  sign in to the console as [bold]{DEMO_USER}[/bold] / [bold]{password}[/bold]"
            " (emergency management: every network; anonymous visitors see the public layers)"
        ),
    )


def replay_demo(path: Path, png: Path, start: dt.datetime) -> list[str]:
    """Four hours of the city's sensors from ``start`` through the ingest pipeline (a 20-year
    storm at hour 1, a gas leak at hour 2, a main burst at hour 3, as fast as it goes), then a
    map of the alarms and incidents."""
    from citytwin.services.runtime import run_replay
    from citytwin.store import open_store

    lines = run_replay(
        path, start=start, hours=REPLAY_HOURS, burst_at=3.0, storm_at=1.0, gas_at=2.0
    )
    with open_store(path, read_only=True) as store:
        draw_alarms(store, png)
    return lines


def replay_start() -> dt.datetime:
    """Where the demo's replayed readings start: five hours ago, on the hour (UTC)."""
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return now - dt.timedelta(hours=5)


def forecast_demo(path: Path, folder: Path, issued: dt.datetime) -> list[str]:
    """The flood warning link: a weather service's nowcast issued at ``issued`` (the end of the
    replayed readings; a 50-year, 60-minute Chicago storm from 20 minutes after the issue,
    5-minute steps on a 500 m grid in the twin's CRS, as NetCDF) run through
    ``citytwin.app.forecast``: its flood scenario kept, the virtual city's predicted rules
    raising warnings with their lead time, and a map of it."""
    import pandas as pd
    import xarray as xr
    from pyproj import CRS

    from citytwin.app.flood import draw_flood
    from citytwin.app.forecast import run_forecast
    from citytwin.store import open_store

    issued = pd.Timestamp(issued)
    start = issued + pd.Timedelta(minutes=20)
    _, mm_h = chicago_hyetograph(50.0, 60.0, 5.0)
    nc = folder / "nowcast.nc"
    with open_store(path, read_only=True) as store:
        x0, y0, x1, y1 = store.meta.extent
        x = np.arange(x0 - 750, x1 + 1000, 500.0)
        y = np.arange(y1 + 750, y0 - 1000, -500.0)
        wkt = CRS.from_user_input(store.meta.crs).to_wkt()
    times = (start.tz_localize(None) + pd.to_timedelta(np.arange(len(mm_h)) * 5, "min"))
    rate = np.broadcast_to(np.asarray(mm_h, float)[:, None, None], (len(mm_h), len(y), len(x)))
    rain = xr.DataArray(rate, dims=("time", "y", "x"),
                        coords={"time": times.to_numpy(), "y": y, "x": x},
                        attrs={"units": "mm h-1", "grid_mapping": "crs"})  # fmt: skip
    ds = xr.Dataset({"rainfall_rate": rain, "crs": xr.DataArray(0, attrs={"crs_wkt": wkt})})
    ds.attrs.update(issued=issued.isoformat(), title="VIRTUAL nowcast (demo)")
    ds.to_netcdf(nc)
    with open_store(path) as store:
        run = run_forecast(store, nc)
        virtual = store.meta.virtual
    png = draw_flood(run.scenario, folder / "flood-forecast.png", virtual=virtual)
    s = run.scenario.summary
    raised = run.events[run.events["event"] == "raise"] if len(run.events) else run.events
    lead = (
        f", the soonest in {raised['lead_time_s'].min() / 60:.0f} min" if len(raised) else ""
    )
    return [
        f"flood nowcast issued {issued:%H:%M} UTC ({nc.name}): {s['buildings_flooded']} buildings"
        f" and {s['residents_affected']} residents reached, {s['impassable_length_m'] / 1000:.1f}"
        f" km of road impassable; {len(raised)} predicted warnings raised{lead}"
        f" (scenario {run.scenario.id}; map {png.name})"
    ]


def draw_alarms(store: Store, png: Path) -> None:
    """The alarms by severity and the incidents (anchor, burst candidates) over the networks."""
    import matplotlib

    matplotlib.use("Agg")
    import geopandas as gpd
    import matplotlib.pyplot as plt

    colours = {"blue": "#3182bd", "yellow": "#e6c300", "orange": "#fd8d3c", "red": "#de2d26"}
    fig, ax = plt.subplots(figsize=(11, 11))
    store.query(Query("water_bodies")).plot(ax=ax, color="#c6dbef")
    store.query(Query("streets")).plot(ax=ax, color="#cccccc", linewidth=0.5)
    links = store.query(Query("utility_links", classes=["pipe", "conduit"]))
    links[links["network"] == "water_supply"].plot(ax=ax, color="#9ecae1", linewidth=0.8)
    links[links["network"] == "storm"].plot(ax=ax, color="#a1d99b", linewidth=0.8)
    alarms = store.alarms(limit=None)
    for level, colour in colours.items():
        a = alarms[(alarms["max_severity"] == level) & alarms["x"].notna()]
        if len(a):
            label = f"{level} alarms ({len(a)})"
            ax.scatter(a["x"], a["y"], s=60, c=colour, edgecolors="black", zorder=5, label=label)
    incidents = store.incidents(limit=None)
    by_id = links.set_index("id")
    for row in incidents.itertuples(index=False):
        for c in (row.candidates or [])[:3]:
            ids = [i for i in c.get("links", []) if i in by_id.index]
            if ids:
                gpd.GeoSeries(by_id.loc[ids].geometry).plot(ax=ax, color="#de2d26", linewidth=3)
        if row.x == row.x:
            ax.annotate(
                row.title,
                (row.x, row.y),
                fontsize=8,
                xytext=(6, 6),
                textcoords="offset points",
                zorder=6,
                bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8},
            )
    ax.legend(loc="lower left")
    ax.set_title(
        f"{store.meta.name} — VIRTUAL CITY — alarms and incidents of the replay "
        "(burst candidates in red)"
    )
    ax.set_axis_off()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)


def network_lengths(store: Store) -> Table:
    """Length of each utility network, in km, by link class."""
    links = store.query(Query("utility_links"))
    links["km"] = links.geometry.length / 1000
    table = Table("network", "km", "of which", title="Utility networks")
    for network, group in links.groupby("network"):
        by_class = group.groupby("class")["km"].sum().sort_values(ascending=False)
        table.add_row(
            str(network),
            f"{group['km'].sum():.1f}",
            ", ".join(f"{c} {v:.1f}" for c, v in by_class.items()),
        )
    return table


def engine_checks(city: VirtualCity) -> Table:
    """EPANET 24 h on the water network; SWMM on the storm network for the 2- and 50-year
    design storms."""
    table = Table("check", "result", "figures", title="Engine checks")
    water = water_check(city.water.wn)
    table.add_row(
        "EPANET 24 h: pressures 20–60 m, none negative",
        _verdict(water.ok),
        f"{water.share_20_60:.1%} within 20–60 m, min {water.min_pressure:.1f} m, "
        f"max {water.max_pressure:.1f} m",
    )
    storm = city.drainage.networks["storm"].inp
    two = run_swmm(storm)
    table.add_row(
        "SWMM 2-year storm: continuity errors <= 1 %",
        _verdict(two.continuity_ok),
        f"runoff {two.runoff_error:.2f} %, routing {two.routing_error:.2f} %, "
        f"{len(two.flooded)} manholes flooded",
    )
    fifty = run_swmm(with_storm(storm, *chicago_hyetograph(50)))
    table.add_row(
        "SWMM 50-year storm: manholes surcharge and flood",
        _verdict(len(fifty.flooded) > 0 and len(fifty.surcharged) > 0),
        f"{len(fifty.surcharged)} surcharged, {len(fifty.flooded)} flooded, "
        f"{fifty.flood_volume:,.0f} m³",
    )
    return table


def _verdict(ok: bool) -> str:
    return "[green]passed[/]" if ok else "[red]FAILED[/]"


def draw_map(store: Store, png: Path) -> None:
    """A plan of the twin: terrain, river, streets, buildings by height, water mains and
    storm sewers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rasterio.io import MemoryFile

    fig, ax = plt.subplots(figsize=(11, 11))
    with MemoryFile(store.get_raster("dem")) as mem, mem.open() as ds:
        dem = ds.read(1)
        b = ds.bounds
    ax.imshow(
        dem,
        extent=(b.left, b.right, b.bottom, b.top),
        cmap="terrain",
        vmin=float(np.nanmin(dem)) - 10,
        vmax=float(np.nanmax(dem)) + 20,
        alpha=0.55,
    )
    store.query(Query("water_bodies")).plot(ax=ax, color="#6baed6")
    store.query(Query("streets")).plot(ax=ax, color="#888888", linewidth=0.6)
    buildings = store.query(Query("buildings"))
    buildings.plot(
        ax=ax,
        column="height",
        cmap="magma_r",
        legend=True,
        legend_kwds={"label": "building height (m)", "shrink": 0.5},
    )
    links = store.query(Query("utility_links", classes=["pipe", "conduit"]))
    links[links["network"] == "water_supply"].plot(ax=ax, color="#2171b5", linewidth=1.0)
    links[links["network"] == "storm"].plot(ax=ax, color="#41ab5d", linewidth=1.0)
    ax.set_title(f"{store.meta.name} — VIRTUAL CITY — water mains blue, storm sewers green")
    ax.set_axis_off()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)

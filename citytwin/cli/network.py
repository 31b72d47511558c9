"""``citytwin network``: topology checks, traces, burst isolation, valve segments, criticality,
clearances and excavation checks on the twin's utility networks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import geopandas as gpd
import shapely
import typer
from rich.table import Table

from citytwin.cli.common import TwinOption, cell, console, floats, open_twin, run
from citytwin.errors import CityTwinError

network_app = typer.Typer(
    help="Utility networks: check, trace, isolate, segments, criticality, clearance, dig.",
    no_args_is_help=True,
)

GeoJSONOption = Annotated[
    Path | None, typer.Option("--geojson", help="Also write the result as GeoJSON to this file.")
]


def _write_geojson(path: Path | None, collection: dict[str, Any]) -> None:
    if path is None:
        return
    path.write_text(json.dumps(collection))
    console.print(f"wrote {len(collection['features']):,} features to {path}")


def _table(frame, columns: list[str], title: str | None = None, limit: int | None = None) -> None:
    table = Table(*columns, title=title)
    rows = frame if limit is None else frame.head(limit)
    for values in rows[columns].itertuples(index=False):
        table.add_row(*(cell(v) for v in values))
    console.print(table)
    if limit is not None and len(frame) > limit:
        console.print(f"… {len(frame) - limit:,} more (use --limit)")


def _area(text: str | None, geojson: Path | None) -> shapely.Geometry:
    if (text is None) == (geojson is None):
        raise CityTwinError("give the dig's area with --bbox minx,miny,maxx,maxy or --area FILE")
    if text is not None:
        return shapely.box(*floats(text, 4, "--bbox"))  # type: ignore[misc]
    frame = gpd.read_file(geojson)
    if not len(frame):
        raise CityTwinError(f"{geojson}: no feature to take as the dig's area")
    return shapely.union_all(frame.geometry.to_numpy())


@network_app.command()
def dig(
    twin: TwinOption,
    depth: Annotated[float, typer.Option(help="Depth of the dig below ground, in m.")],
    bbox: Annotated[
        str | None, typer.Option(help="The dig's area: minx,miny,maxx,maxy in the twin's CRS.")
    ] = None,
    area: Annotated[
        Path | None,
        typer.Option(help="The dig's area from a vector file (polygons or a trench line)."),
    ] = None,
    buffer: Annotated[float, typer.Option(help="Horizontal safety distance, in m.")] = 1.0,
    margin: Annotated[
        float, typer.Option(help="Lines with a crown this far below the floor count, in m.")
    ] = 0.5,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 50,
    geojson: GeoJSONOption = None,
) -> None:
    """Call before you dig: every utility line within reach of a planned excavation."""
    from citytwin.app.networks import dig_check, features_geojson
    from citytwin.networks.excavation import Dig

    def body() -> None:
        plan = Dig(_area(bbox, area), depth, buffer, margin)
        store = open_twin(twin, read_only=True)
        try:
            hits = dig_check(store, plan)
        finally:
            store.close()
        if not len(hits):
            console.print("no utility line within reach")
            return
        columns = ["network", "class", "id", "owner", "diameter_m", "pressure_class"]
        columns += ["distance_m", "crown_depth_m", "struck", "critical"]
        _table(hits, columns, title=f"Utilities within reach of a {depth:g} m dig", limit=limit)
        struck = hits[hits["struck"]]
        critical = struck[struck["critical"].notna()]
        console.print(
            f"{len(hits):,} lines within reach, {len(struck):,} would be struck"
            + (f", [bold red]{len(critical):,} critical[/]" if len(critical) else "")
        )
        _write_geojson(geojson, features_geojson(hits))

    run(body)

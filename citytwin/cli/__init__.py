"""The ``citytwin`` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import shapely
import typer
from rich.table import Table

from citytwin.cli.access import access_app, audit_app
from citytwin.cli.common import (
    TwinOption,
    cell,
    console,
    floats,
    open_twin,
    pairs,
    parse_date,
    progress,
    run,
)
from citytwin.cli.flood import flood_app
from citytwin.cli.network import network_app
from citytwin.cli.sense import alarms_app, sense_app
from citytwin.cli.sense import serve as serve_twin
from citytwin.errors import CityTwinError
from citytwin.model import LAYERS, TwinMeta

app = typer.Typer(
    help="CityTwin: an open City Information Modelling platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def init(
    twin: TwinOption,
    crs: Annotated[str, typer.Option(help="Projected CRS in metres, e.g. EPSG:4547.")],
    extent: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy in the CRS.")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the twin.")] = None,
    virtual: Annotated[
        bool, typer.Option(help="Label the twin as a virtual (generated) city.")
    ] = False,
    description: Annotated[str, typer.Option(help="A line about the twin.")] = "",
) -> None:
    """Create a new, empty twin."""
    from citytwin.store import create_store

    def body() -> None:
        meta = TwinMeta(name or twin.stem, crs, floats(extent, 4, "--extent"), virtual, description)  # type: ignore[arg-type]
        create_store(twin, meta).close()
        console.print(f"created twin [bold]{meta.name}[/] at {twin} in {meta.crs}")

    run(body)


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="File to import.")],
    twin: TwinOption,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="vector, geoparquet, cityjson, osm, "
            "geotiff, epanet, swmm (default: from the file).",
        ),
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help=f"Target layer (vector files): {', '.join(LAYERS)}.")
    ] = None,
    cls: Annotated[
        str | None, typer.Option("--class", help="Class of the features (vector files).")
    ] = None,
    crs: Annotated[
        str | None, typer.Option(help="CRS of the source, where the file does not say.")
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option(help="YAML mapping of source fields onto the model.")
    ] = None,
    source_layer: Annotated[str | None, typer.Option(help="Layer of a multi-layer source.")] = None,
    id_field: Annotated[str | None, typer.Option(help="Source field holding feature ids.")] = None,
    id_prefix: Annotated[str | None, typer.Option(help="Prefix for feature ids.")] = None,
    field: Annotated[
        list[str] | None, typer.Option(help="ATTRIBUTE=SOURCE_FIELD (repeatable).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="ATTRIBUTE=VALUE constant (repeatable).")
    ] = None,
    network: Annotated[
        str | None, typer.Option(help="Network type for SWMM: storm, sewer, combined.")
    ] = None,
    valid_from: Annotated[
        str | None, typer.Option(help="Date the features are valid from (default now).")
    ] = None,
    repair_geometry: Annotated[
        bool, typer.Option(help="Make invalid geometries valid instead of failing.")
    ] = False,
    snap: Annotated[
        float | None,
        typer.Option(
            help="Utility lines without end-node ids: join their ends to nodes within this "
            "many metres (topology from geometry)."
        ),
    ] = None,
) -> None:
    """Import a file into the twin: all of it, or nothing."""
    from citytwin.formats import detect_format, load_bundle, read_any

    def body() -> None:
        store = open_twin(twin)
        try:
            kind = fmt or detect_format(path)
            options: dict[str, Any] = {}
            if kind in ("vector", "geoparquet"):
                from citytwin.formats.vector import Mapping, load_mappings

                if mapping is not None:
                    options["mappings"] = load_mappings(mapping)
                else:
                    if layer is None:
                        raise CityTwinError(
                            "say which layer the features go to: --layer NAME (or --mapping)"
                        )
                    options["mappings"] = [
                        Mapping(
                            layer,
                            cls=cls,
                            id_field=id_field,
                            id_prefix=id_prefix or "",
                            fields=pairs(field, "--field"),
                            constants=pairs(set_, "--set"),
                            source_layer=source_layer,
                        )
                    ]
                if crs:
                    options["crs"] = crs
            else:
                if crs:
                    options["crs"] = crs
                if id_prefix is not None:
                    options["id_prefix"] = id_prefix
                if network is not None:
                    options["network"] = network
            with progress(f"importing {path.name}") as report:
                bundle = read_any(path, store.meta.crs, fmt=kind, **options)
                if snap is not None:
                    from citytwin.app.networks import snap_links

                    decided = snap_links(store, bundle, snap)
                    if len(decided):
                        kinds = decided["kind"].value_counts().to_dict()
                        console.print(f"snapping decided: {kinds}")
                counts = load_bundle(
                    store,
                    bundle,
                    valid_from=parse_date(valid_from),
                    repair_geometry=repair_geometry,
                    progress=lambda done, total: report(None, done, total),
                )
            summary = (
                ", ".join(f"{n:,} {layer_name}" for layer_name, n in counts.items())
                or "no features"
            )
            console.print(f"imported {path} ({kind}): {summary}")
        finally:
            store.close()

    run(body)


@app.command()
def export(
    path: Annotated[
        Path,
        typer.Argument(
            help="Output file: .geojson .gpkg .shp .fgb .parquet, "
            ".city.json (buildings), .inp (a network)."
        ),
    ],
    twin: TwinOption,
    layer: Annotated[str | None, typer.Option(help="Layer to export (vector formats).")] = None,
    network: Annotated[
        str | None, typer.Option(help="Network to export to .inp (see `info`).")
    ] = None,
    bbox: Annotated[
        str | None, typer.Option(help="minx,miny,maxx,maxy: only features there.")
    ] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Attribute filter, e.g. height>=30.")
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="State as of this date.")] = None,
    crs: Annotated[str | None, typer.Option(help="Reproject to this CRS (vector formats).")] = None,
) -> None:
    """Export a layer, the buildings (CityJSON) or a network model (EPANET / SWMM INP)."""
    from citytwin.store import Filter, Query

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            name = path.name.lower()
            if name.endswith(".inp"):
                if network is None:
                    raise CityTwinError(
                        f"which network? --network NAME; networks: "
                        f"{', '.join(k[8:] for k in store.documents('network/')) or 'none'}"
                    )
                key = f"network/{network}"
                doc = store.get_document(key)
                if doc is None:
                    raise CityTwinError(f"no network {network!r} in the twin")
                if doc["format"] == "epanet":
                    from citytwin.formats.epanet import write_epanet

                    n = write_epanet(store, path, network_key=key)
                else:
                    from citytwin.formats.swmm import write_swmm

                    n = write_swmm(store, path, network_key=key)
            elif name.endswith(".json") and (layer in (None, "buildings")):
                from citytwin.formats.cityjson import write_cityjson

                n = write_cityjson(store, path, bbox=floats(bbox, 4, "--bbox"))
            else:
                from citytwin.formats.vector import write_vector

                if layer is None:
                    raise CityTwinError("say which layer to export: --layer NAME")
                q = Query(
                    layer,
                    bbox=floats(bbox, 4, "--bbox"),  # type: ignore[arg-type]
                    where=[Filter.parse(w) for w in where or []],
                    as_of=parse_date(as_of),
                    order_by="id",
                )
                n = write_vector(store, layer, path, query=q, crs=crs)
            console.print(f"exported {n:,} features to {path}")
        finally:
            store.close()

    run(body)


@app.command()
def info(
    twin: TwinOption,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """Layers, counts, extent, CRS and sources of the twin."""

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            summary = store.summary()
            rasters = store.rasters()
            networks = store.documents("network/")
            if as_json:
                console.print_json(
                    json.dumps(
                        {
                            "meta": store.meta.to_dict(),
                            "layers": [s.__dict__ for s in summary],
                            "rasters": rasters,
                            "networks": networks,
                        },
                        default=str,
                    )
                )
                return
            print_summary(store.meta, summary, rasters, networks)
        finally:
            store.close()

    run(body)


def print_summary(meta: TwinMeta, summary: list, rasters: list, networks: list[str]) -> None:
    """Print a twin's summary: what it is, a table of its layers, its rasters and networks."""
    label = " [yellow](virtual city)[/]" if meta.virtual else ""
    console.print(f"[bold]{meta.name}[/]{label} — {meta.crs}")
    if meta.description:
        console.print(meta.description)
    table = Table("layer", "features", "classes")
    extents, sources = [], set()
    for s in summary:
        classes = ", ".join(f"{k} {v:,}" for k, v in list(s.classes.items())[:5])
        more = len(s.classes) - 5
        table.add_row(s.layer, f"{s.count:,}", classes + (f" (+{more} more)" if more > 0 else ""))
        if s.extent:
            extents.append(s.extent)
        sources.update(Path(x).name for x in s.sources)
    console.print(table)
    if extents:
        e = np.array(extents)
        console.print(
            f"extent: {e[:, 0].min():.0f}, {e[:, 1].min():.0f} — "
            f"{e[:, 2].max():.0f}, {e[:, 3].max():.0f}"
        )
    if sources:
        console.print("sources: " + ", ".join(sorted(sources)))
    for r in rasters:
        console.print(
            f"raster [bold]{r['name']}[/] ({r['kind']}): "
            f"{r['width']} x {r['height']} cells, {r['crs']}"
        )
    for key in networks:
        console.print(f"network model [bold]{key[8:]}[/]")


@app.command()
def query(
    twin: TwinOption,
    layer: Annotated[str, typer.Option(help=f"Layer: {', '.join(LAYERS)}.")],
    bbox: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy.")] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Filter, e.g. height>=30, use=office, name~Tower%.")
    ] = None,
    cls: Annotated[list[str] | None, typer.Option("--class", help="Only these classes.")] = None,
    fid: Annotated[list[str] | None, typer.Option("--id", help="Only these ids.")] = None,
    near: Annotated[str | None, typer.Option(help="x,y: the k nearest features.")] = None,
    k: Annotated[int, typer.Option(help="How many nearest features.")] = 10,
    within: Annotated[
        float | None, typer.Option(help="With --near: within this many metres.")
    ] = None,
    as_of: Annotated[str | None, typer.Option(help="State as of this date.")] = None,
    order_by: Annotated[
        str | None, typer.Option(help="Attribute to sort by (-name: descending).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many features.")] = 20,
    offset: Annotated[int, typer.Option(help="Skip this many (paging).")] = 0,
    output: Annotated[str, typer.Option("--output", "-o", help="table or geojson.")] = "table",
) -> None:
    """Query features by bbox, attributes, distance and time; print a table or GeoJSON."""
    from citytwin.model import features_from_frame
    from citytwin.store import Filter, Query

    def body() -> None:
        if output not in ("table", "geojson"):
            raise CityTwinError("--output must be table or geojson")
        store = open_twin(twin, read_only=True)
        try:
            point = floats(near, 2, "--near")
            q = Query(
                layer,
                ids=fid,
                classes=cls,
                where=[Filter.parse(w) for w in where or []],
                bbox=floats(bbox, 4, "--bbox"),
                as_of=parse_date(as_of),  # type: ignore[arg-type]
                within=(shapely.Point(point), within) if point and within else None,
                order_by=order_by,
                limit=limit,
                offset=offset,
            )
            if point is not None and within is None:
                frame = store.nearest(q, shapely.Point(point), k)
            else:
                frame = store.query(q)
            total = store.count(q) if point is None else len(frame)
            features = features_from_frame(layer, frame)
            if output == "geojson":
                fc = {
                    "type": "FeatureCollection",
                    "features": [f.to_geojson() for f in features],
                    "numberMatched": total,
                    "numberReturned": len(features),
                }
                sys.stdout.write(json.dumps(fc) + "\n")
                return
            shown = [
                a.name
                for a in LAYERS[layer].attributes
                if any(f.attributes.get(a.name) is not None for f in features)
            ][:8]
            table = Table("id", "class", *shown, *(["distance"] if "distance" in frame else []))
            for i, f in enumerate(features):
                row = [f.id, f.cls, *(cell(f.attributes.get(a)) for a in shown)]
                if "distance" in frame:
                    row.append(f"{frame['distance'].iloc[i]:.1f}")
                table.add_row(*row)
            console.print(table)
            console.print(f"{len(features):,} of {total:,} matching features")
        finally:
            store.close()

    run(body)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo twin.")] = Path("demo"),
    serve: Annotated[
        bool,
        typer.Option(
            help="Then serve it (data services, the operations console) with a live replay "
            "of its sensors, until Ctrl-C."
        ),
    ] = True,
    port: Annotated[int, typer.Option(help="Port of the served demo.")] = 8000,
) -> None:
    """Build the default virtual city (4 km²), check it with EPANET and SWMM, map it, replay
    its sensors through the early-warning pipeline, and serve it with the console."""
    from citytwin.demo import build_demo, serve_demo

    def body() -> None:
        os.makedirs(out, exist_ok=True)
        path = build_demo(out, console)
        if serve:
            serve_demo(path, port, console)

    run(body)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="The twin file to create.")],
    area_km2: Annotated[float, typer.Option(help="Size of the city (0.5 to 1,000 km²).")] = 4.0,
    seed: Annotated[int, typer.Option(help="Seed: the same seed builds the same city.")] = 1,
    name: Annotated[str | None, typer.Option(help="Name of the twin.")] = None,
) -> None:
    """Generate a virtual city (clearly labelled as such) into a new twin."""
    from citytwin.synth.city import build_city

    def body() -> None:
        if out.exists():
            raise CityTwinError(f"{out} already exists; choose another --out or delete it")
        with progress("virtual city") as report:
            store = build_city(out, area_km2, seed, name=name, on_step=report)
        try:
            print_summary(store.meta, store.summary(), store.rasters(), store.documents("network/"))
        finally:
            store.close()

    run(body)


app.add_typer(network_app, name="network")
app.add_typer(flood_app, name="flood")
app.add_typer(sense_app, name="sense")
app.command("serve")(serve_twin)
app.add_typer(alarms_app, name="alarms")
app.add_typer(access_app, name="access")
app.add_typer(audit_app, name="audit")

if __name__ == "__main__":
    app()

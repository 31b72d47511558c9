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
    table = Table(title=title)
    for column in columns:  # fold long ids over lines rather than cut them
        table.add_column(column, overflow="fold")
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


NetworkOption = Annotated[
    str, typer.Option("--network", "-n", help="Network type: water_supply, sewer, gas ...")
]


@network_app.command()
def check(
    twin: TwinOption,
    network: NetworkOption,
    near_miss: Annotated[
        float, typer.Option(help="Loose ends this close to a node or line are near-misses, m.")
    ] = 1.0,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 30,
    geojson: GeoJSONOption = None,
) -> None:
    """Topology check: dangling ends, near-misses, duplicate and zero-length links, components
    without a source, isolated nodes, sewers falling the wrong way."""
    from citytwin.app.networks import check_network
    from citytwin.networks.trace import loops

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            data, report = check_network(store, network, near_miss=near_miss)
        finally:
            store.close()
        graph, comps = data.graph, report.components
        ring = loops(graph, closed=data.closed_links)
        console.print(
            f"{network}: {graph.n_nodes:,} nodes, {graph.n_links:,} links, "
            f"{int((comps['n_links'] > 0).sum()):,} connected parts, {ring.count:,} independent "
            f"loops ({len(ring.on_loop):,} links on a loop, {len(ring.bridges):,} bridges)"
        )
        if report.ok:
            console.print("[green]no topology issue found[/]")
            return
        counts = Table("issue", "count", title="Topology issues")
        for kind, n in sorted(report.counts().items(), key=lambda kv: -kv[1]):
            counts.add_row(kind, f"{n:,}")
        console.print(counts)
        columns = [c for c in ("kind", "node", "link", "other", "value") if c in report.issues]
        _table(report.issues, columns, limit=limit)
        _write_geojson(geojson, report.to_geojson())

    run(body)


@network_app.command()
def trace(
    twin: TwinOption,
    network: NetworkOption,
    start: Annotated[list[str], typer.Option("--from", help="Start node or link id(s).")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            "-k",
            help="connected, upstream, downstream, path (with --to), sources, loop.",
        ),
    ] = "connected",
    to: Annotated[str | None, typer.Option(help="End node of a path.")] = None,
    flows_at: Annotated[
        float | None,
        typer.Option(help="Directions from an EPANET run's flows at this hour (water)."),
    ] = None,
    limit: Annotated[int, typer.Option(help="Ids to print.")] = 20,
    geojson: GeoJSONOption = None,
) -> None:
    """Trace a network: what is connected to, upstream or downstream of a feature; the
    shortest path between two nodes; the sources feeding a node; a loop through a link."""
    from citytwin.app.networks import trace_network

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            data, found, sources = trace_network(
                store, network, kind, start, end=to, flows_at=flows_at
            )
        finally:
            store.close()
        if sources is not None:
            if not len(sources):
                console.print(f"[bold red]no source feeds {start[0]}[/]")
            for sid in sources:
                console.print(sid)
            return
        if found is None:
            console.print(f"{start[0]} lies on no loop (its loss splits the network)")
            return
        what = f"{len(found.nodes):,} nodes, {len(found.links):,} links"
        if found.length == found.length:  # a path or loop: not NaN
            what += f", {found.length:,.1f} m"
        console.print(f"{kind} from {', '.join(start)}: {what}")
        ids = [*found.link_ids[:limit]]
        console.print("links: " + " ".join(ids) + (" …" if len(found.links) > limit else ""))
        _write_geojson(
            geojson,
            found.to_geojson(
                link_geometry=data.links.geometry.to_numpy(),
                properties={"trace": kind, "network": network},
            ),
        )

    run(body)


@network_app.command()
def isolate(
    twin: TwinOption,
    network: NetworkOption,
    link: Annotated[str | None, typer.Option(help="The failed link's id.")] = None,
    at: Annotated[str | None, typer.Option(help="Or a point x,y on it (twin's CRS).")] = None,
    inoperable: Annotated[
        list[str] | None,
        typer.Option(help="Valves that can't be closed (repeat the option)."),
    ] = None,
    geojson: GeoJSONOption = None,
) -> None:
    """Burst isolation: the valves to close, the isolated part, everything that loses supply,
    and who is affected."""
    from citytwin.app.networks import isolate_burst

    def body() -> None:
        point = floats(at, 2, "--at")
        store = open_twin(twin, read_only=True)
        try:
            report = isolate_burst(store, network, link=link, at=point, inoperable=inoperable)  # type: ignore[arg-type]
        finally:
            store.close()
        iso = report.isolation
        failed = report.data.graph.link_ids[iso.link]
        console.print(f"burst on [bold]{failed}[/]")
        if iso.note:
            console.print(f"[yellow]{iso.note}[/]")
        console.print(f"close {len(iso.valves)} valve(s): " + " ".join(report.valve_ids))
        console.print(
            f"isolated: {len(iso.isolated_nodes):,} nodes, {len(iso.isolated_links):,} links, "
            f"{iso.volume:,.1f} m³ to drain; cut off from every source beyond that: "
            f"{len(iso.cutoff_nodes):,} nodes, {len(iso.cutoff_links):,} links"
        )
        impact = Table("loses supply", "in the isolated part", "in all")
        for name, total in iso.impact.items():
            impact.add_row(name, f"{iso.direct[name]:,.4g}", f"{total:,.4g}")
        console.print(impact)
        if len(report.facilities):
            console.print("[bold red]critical facilities without water:[/]")
            for row in report.facilities[["class", "name", "id"]].to_dict("records"):
                console.print(f"  {row['class']}: {row['name']} ({row['id']})")
        _write_geojson(geojson, report.to_geojson())

    run(body)


@network_app.command()
def segments(
    twin: TwinOption,
    network: NetworkOption,
    limit: Annotated[int, typer.Option(help="Segments to print.")] = 20,
    csv: Annotated[Path | None, typer.Option(help="Write every segment to this CSV.")] = None,
) -> None:
    """Valve segmentation: every segment with its size, demand, residents and critical
    facilities (largest first)."""
    from citytwin.app.networks import segment_table

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            _, model, table = segment_table(store, network)
        finally:
            store.close()
        direct = table.sort_values("residents_direct", ascending=False)
        columns = [
            f"{name}_direct"
            for name in ("n_nodes", "n_links", "length", "residents", "demand_m3s", "hospitals")
        ] + ["n_valves"]
        console.print(
            f"{network}: {model.segments.n_segments:,} segments between "
            f"{len(model.segments.valve_link):,} valves"
        )
        _table(direct.reset_index(), ["segment", *columns], limit=limit)
        if csv is not None:
            table.to_csv(csv)
            console.print(f"wrote {len(table):,} segments to {csv}")

    run(body)


@network_app.command()
def criticality(
    twin: TwinOption,
    network: NetworkOption,
    by: Annotated[str, typer.Option(help="Rank by this impact column.")] = "residents",
    limit: Annotated[int, typer.Option(help="Segments to print.")] = 20,
    csv: Annotated[Path | None, typer.Option(help="Write the whole ranking to this CSV.")] = None,
) -> None:
    """Criticality: every segment ranked by the impact of its failure (itself plus what it
    cuts off from every source)."""
    from citytwin.app.networks import segment_table

    def body() -> None:
        store = open_twin(twin, read_only=True)
        try:
            _, _, table = segment_table(store, network)
        finally:
            store.close()
        ranked = table.sort_values(by, ascending=False, kind="stable") if by in table else None
        if ranked is None:
            raise CityTwinError(f"can't rank by {by!r}: use one of {', '.join(table.columns)}")
        columns = ["segment", "n_nodes", "cutoff_segments", "residents", "demand_m3s",
                   "hospitals", "schools", "fire_stations", "volume"]  # fmt: skip
        _table(ranked.reset_index(), columns, title=f"Most critical segments by {by}", limit=limit)
        if csv is not None:
            ranked.to_csv(csv)
            console.print(f"wrote {len(ranked):,} segments to {csv}")

    run(body)


@network_app.command()
def clearance(
    twin: TwinOption,
    network: Annotated[
        list[str] | None,
        typer.Option("--network", "-n", help="Only these networks (repeat; default all)."),
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(help="A city's rule file (YAML) merged over the twin's rules."),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep --rules in the twin as the city's own rules.")
    ] = False,
    buildings: Annotated[bool, typer.Option(help="Check against buildings too.")] = True,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 30,
    geojson: GeoJSONOption = None,
) -> None:
    """Clearance check: utility lines closer to each other (in plan, or where they cross) or
    to buildings than the rules allow (GB 50289-2016 by default; a city's own rules kept in
    the twin or given with --rules)."""
    from citytwin.app.networks import clearance_check, keep_clearance_rules, twin_clearance_rules

    def body() -> None:
        if keep and rules is None:
            raise CityTwinError("--keep needs --rules FILE")
        store = open_twin(twin, read_only=not keep)
        try:
            if keep:
                keep_clearance_rules(store, rules)  # type: ignore[arg-type]
                console.print(f"kept {rules} as the twin's clearance rules")
            table = twin_clearance_rules(store, None if keep else rules)
            found = clearance_check(store, table, networks=network, buildings=buildings)
            crs = store.meta.crs
        finally:
            store.close()
        files = [f if f.startswith("twin ") else Path(f).name for f in table.files]
        console.print(f"rules: {table.name} ({', '.join(files)})")
        if not len(found):
            console.print("[green]no clearance violation found[/]")
            return
        counts = found.groupby(["kind", "network_a", "network_b"]).size().rename("count")
        _table(counts.reset_index(), ["kind", "network_a", "network_b", "count"])
        columns = ["kind", "id_a", "id_b", "required_m", "actual_m", "x", "y", "depth"]
        _table(found, columns, title="Clearance violations", limit=limit)
        console.print(f"{len(found):,} violations")
        points = gpd.GeoDataFrame(
            found, geometry=gpd.points_from_xy(found["x"], found["y"]), crs=crs
        )
        from citytwin.app.networks import features_geojson

        _write_geojson(geojson, features_geojson(points))

    run(body)

"""``citytwin flood``: design storms, storm runs on the twin's surface (alone or coupled to its
drains), ensembles, rainfall forecasts (a run and its predicted-flooding alarms), and what a
stored scenario's flood reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from citytwin.cli.common import TwinOption, cell, console, floats, open_twin, progress, run

flood_app = typer.Typer(
    help="Rainstorm flooding: design storms, runs, ensembles, forecasts, impacts.",
    no_args_is_help=True,
)

ReturnPeriod = Annotated[float, typer.Option("--return-period", "-P", help="Years.")]
Duration = Annotated[float, typer.Option("--duration", "-d", help="Storm duration (minutes).")]
Png = Annotated[Path | None, typer.Option("--png", help="Also draw it to this PNG file.")]


@flood_app.command()
def storm(
    return_period: ReturnPeriod = 2.0,
    duration: Duration = 120.0,
    step: Annotated[float, typer.Option(help="Time step (minutes).")] = 5.0,
    peak: Annotated[float, typer.Option(help="Peak position (share of the duration).")] = 0.4,
    png: Png = None,
) -> None:
    """Show a Chicago design storm from the storm intensity formula (Guangzhou's by default)."""

    def body() -> None:
        import numpy as np

        from citytwin.drainage.storms import GUANGZHOU, chicago_hyetograph, depth

        try:
            start, mm_h = chicago_hyetograph(return_period, duration, step, peak)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        table = Table(title=f"{return_period:g}-year, {duration:g}-minute Chicago storm")
        for col in ("from (min)", "to (min)", "mm/h", "mm"):
            table.add_column(col, justify="right")
        for t, v in zip(start, mm_h, strict=True):
            table.add_row(f"{t:g}", f"{t + step:g}", f"{v:.1f}", f"{v * step / 60:.2f}")
        console.print(table)
        total = float(depth(duration, return_period))
        console.print(
            f"total {total:.1f} mm; peak {mm_h.max():.1f} mm/h at"
            f" {start[int(np.argmax(mm_h))]:g} min; formula: {GUANGZHOU.name}"
        )
        console.print(f"source: {GUANGZHOU.source}", style="dim")
        if png is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(8, 4))
            ax.bar(start, mm_h, width=step, align="edge", color="#1f77b4")
            ax.set_xlabel("minutes")
            ax.set_ylabel("mm/h")
            ax.set_title(f"{return_period:g}-year {duration:g}-min Chicago storm, {total:.0f} mm")
            fig.savefig(png, dpi=110, bbox_inches="tight")
            plt.close(fig)
            console.print(f"drew {png}")

    run(body)


@flood_app.command("run")
def run_flood(
    twin: TwinOption,
    return_period: ReturnPeriod = 2.0,
    duration: Duration = 60.0,
    after: Annotated[float, typer.Option(help="Minutes run on after the storm.")] = 60.0,
    coupled: Annotated[
        bool, typer.Option("--coupled/--surface-only", help="Couple the drains (SWMM).")
    ] = False,
    solver: Annotated[str, typer.Option(help="inertial (local inertia) or swe.")] = "inertial",
    cell_size: Annotated[float | None, typer.Option("--cell", help="Cell size (m).")] = None,
    bbox: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy (twin CRS).")] = None,
    save: Annotated[bool, typer.Option(help="Keep the scenario in the twin.")] = True,
    png: Png = None,
) -> None:
    """Run a design storm on the twin's surface and report what the flood reaches."""

    def body() -> None:
        from citytwin.app.flood import draw_flood, run_storm, save_scenario

        bounds = floats(bbox, 4, "--bbox")
        seconds = (duration + after) * 60
        with open_twin(twin, read_only=not save) as store, progress("flood") as report:

            def step(t: float, dt: float) -> None:
                report(
                    f"flood: {t / 60:5.1f} of {seconds / 60:g} min (step {dt:.2f} s)",
                    int(t),
                    int(seconds),
                )

            scenario = run_storm(
                store,
                return_period=return_period,
                duration_min=duration,
                after_min=after,
                solver=solver,
                cell=cell_size,
                bounds=bounds,
                coupled=coupled,
                on_step=step,
            )  # type: ignore[arg-type]
            key = save_scenario(store, scenario) if save else None
        _report(scenario.summary, scenario.params)
        if key:
            console.print(f"kept as {key} (rasters {key}/max_depth …)")
        if png is not None:
            console.print(f"drew {draw_flood(scenario, png, virtual=store.meta.virtual)}")

    run(body)


@flood_app.command()
def ensemble(
    twin: TwinOption,
    return_periods: Annotated[str, typer.Option("--return-periods", "-P")] = "2,10,50",
    durations: Annotated[str, typer.Option("--durations", "-d", help="Minutes.")] = "60,120",
    peaks: Annotated[str, typer.Option(help="Peak positions (rain patterns).")] = "0.4",
    after: Annotated[float, typer.Option(help="Minutes run on after each storm.")] = 60.0,
    scheduler: Annotated[
        str | None, typer.Option(help="A Dask scheduler address (default: a local cluster).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Local workers (default: cores).")] = None,
    solver: Annotated[str, typer.Option(help="inertial or swe.")] = "inertial",
    cell_size: Annotated[float | None, typer.Option("--cell", help="Cell size (m).")] = None,
    bbox: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy (twin CRS).")] = None,
) -> None:
    """Run every combination of return period, duration and peak position through Dask;
    each member is kept in the twin as a scenario."""

    def body() -> None:
        from citytwin.app.flood import members, run_ensemble

        def numbers(text: str, what: str) -> list[float]:
            try:
                return [float(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise typer.BadParameter(f"{what}: comma-separated numbers, got {text!r}") from None

        storms = members(
            numbers(return_periods, "--return-periods"),
            numbers(durations, "--durations"),
            numbers(peaks, "--peaks"),
        )
        table = Table(title=f"ensemble of {len(storms)} storms")
        for c in ("storm", "buildings", "residents", "roads km", "deepest m", "run s"):
            table.add_column(c, justify="right")
        with open_twin(twin) as store, progress("ensemble") as report:

            def done(sc, k: int, n: int) -> None:
                s = sc.summary
                table.add_row(
                    sc.params["ensemble"],
                    f"{s['buildings_flooded']:,}",
                    f"{s['residents_affected']:,}",
                    f"{s['impassable_length_m'] / 1000:.2f}",
                    f"{s['max_depth_m']:.2f}",
                    f"{s['seconds']:.1f}",
                )
                report(f"ensemble: {k} of {n} storms", k, n)

            report(f"ensemble: 0 of {len(storms)} storms", 0, len(storms))
            run_ensemble(
                store,
                storms,
                scheduler=scheduler,
                workers=workers,
                after_min=after,
                solver=solver,
                cell=cell_size,
                bounds=floats(bbox, 4, "--bbox"),
                on_done=done,
            )  # type: ignore[arg-type]
        console.print(table)

    run(body)


@flood_app.command()
def forecast(
    file: Annotated[Path, typer.Argument(help="The rainfall forecast: NetCDF (.nc) or GeoTIFF.")],
    twin: TwinOption,
    issued: Annotated[
        str | None,
        typer.Option(
            help="When the forecast was issued (ISO 8601; naive is UTC). Default: the file's "
            "'issued' attribute or tag, else the start of its rain."
        ),
    ] = None,
    after: Annotated[float, typer.Option(help="Minutes run on after the rain.")] = 60.0,
    coupled: Annotated[
        bool, typer.Option("--coupled/--surface-only", help="Couple the drains (SWMM).")
    ] = False,
    solver: Annotated[str, typer.Option(help="inertial (local inertia) or swe.")] = "inertial",
    cell_size: Annotated[float, typer.Option("--cell", help="Cell size (m).")] = 10.0,
    bbox: Annotated[str | None, typer.Option(help="minx,miny,maxx,maxy (twin CRS).")] = None,
    variable: Annotated[
        str | None, typer.Option(help="The NetCDF variable of the rain (if several).")
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(help="Rule file with 'predicted' rules. Default: the twin's rules."),
    ] = None,
) -> None:
    """Run the flood model on a rainfall forecast, keep the scenario, and raise (or clear) the
    twin's predicted-flooding alarms with their lead times."""

    def body() -> None:
        from citytwin.app.forecast import run_forecast
        from citytwin.warning.rules import load_rules

        rule_set = load_rules(rules) if rules is not None else None
        with open_twin(twin) as store, progress("forecast") as report:

            def step(t: float, dt: float) -> None:
                report(f"forecast: {t / 60:5.1f} min (step {dt:.2f} s)", int(t), None)

            done = run_forecast(
                store,
                file,
                issued=issued,
                rules=rule_set,
                cell=cell_size,
                bounds=floats(bbox, 4, "--bbox"),
                after_min=after,
                solver=solver,
                coupled=coupled,
                variable=variable,
                on_step=step,
            )  # type: ignore[arg-type]
        _report(done.scenario.summary, done.scenario.params)
        console.print(f"kept as {done.key}; rain from {done.start:%Y-%m-%d %H:%M}Z")
        changes = done.changes
        alarms = changes.alarms.set_index("alarm_id") if len(changes.alarms) else None
        table = Table(title=f"predicted-flooding alarms: {len(changes.changes)} changes")
        for c in ("change", "severity", "asset", "depth m", "in min", "rule"):
            table.add_column(c, justify="right" if c in ("depth m", "in min") else "left")
        for row in changes.changes.itertuples(index=False):
            a = alarms.loc[row.alarm_id]  # type: ignore[union-attr]
            lead = a["lead_time_s"] / 60 if a["status"] == "active" else None
            table.add_row(
                row.change,
                row.severity,
                a["source"],
                cell(a["value"]),
                "" if lead is None else f"{lead:.0f}",
                a["rule_id"],
            )
        console.print(table)

    run(body)


@flood_app.command()
def impacts(
    twin: TwinOption,
    scenario: Annotated[
        str | None, typer.Argument(help="Scenario id (default: the latest).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows per table.")] = 15,
) -> None:
    """What a kept scenario's flood reaches: buildings, roads, critical facilities."""

    def body() -> None:
        from citytwin.app.flood import SCENARIO_PREFIX
        from citytwin.errors import NotFound

        with open_twin(twin, read_only=True) as store:
            keys = sorted(store.documents(SCENARIO_PREFIX))
            keys = [k for k in keys if k.count("/") == 1]
            if not keys:
                raise NotFound("the twin keeps no flood scenario", hint="citytwin flood run")
            key = SCENARIO_PREFIX + scenario if scenario else keys[-1]
            doc = store.get_document(key)
            if doc is None:
                raise NotFound(f"no scenario {key!r}", hint=f"kept: {', '.join(keys[-5:])}")
        _report(doc["summary"], doc["params"])
        for name, cols in (
            ("buildings", ["id", "depth_m", "residents", "basement_at_risk"]),
            ("roads", ["id", "name", "flooded_m"]),
            ("facilities", ["id", "class", "name", "depth_m", "critical"]),
        ):
            rows = sorted(doc[name], key=lambda r: -(r.get("depth_m") or r.get("flooded_m") or 0))
            table = Table(title=f"{name} reached ({len(rows)})")
            for c in cols:
                table.add_column(c)
            for r in rows[:limit]:
                table.add_row(*(cell(r.get(c)) for c in cols))
            console.print(table)

    run(body)


def _report(summary: dict, params: dict) -> None:
    storm = (
        f"forecast {params['forecast']} issued {params['issued']}"
        if "forecast" in params
        else f"{params['return_period']:g}-year {params['duration_min']:g}-min storm"
    )
    table = Table(
        title=f"{storm}, {'coupled to the drains' if params['coupled'] else 'surface only'},"
        f" {params['solver']} solver, {params['cell']:g} m cells"
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    hazard = summary["hazard_area_m2"]
    rows = [
        ("flooded area (> 0.15 m)", f"{summary['flooded_area_m2'] / 1e4:,.2f} ha"),
        ("deepest water", f"{summary['max_depth_m']:.2f} m"),
        ("buildings flooded", f"{summary['buildings_flooded']:,}"),
        ("basements / car parks at risk", f"{summary['basements_at_risk']:,}"),
        ("residents affected", f"{summary['residents_affected']:,}"),
        (
            "roads impassable (> 0.3 m)",
            f"{summary['roads_impassable']:,} ({summary['impassable_length_m'] / 1000:.2f} km)",
        ),
        ("critical facilities reached", str(len(summary["critical_facilities_reached"]))),
        (
            "hazard: significant + extreme",
            f"{(hazard['significant'] + hazard['extreme']) / 1e4:,.2f} ha",
        ),
        ("mass balance error", f"{summary['mass_balance'].get('relative_error', 0):.2e}"),
        ("cells x steps", f"{summary['cells']:,} x {summary['steps']:,}"),
        ("run time", f"{summary['seconds']:.1f} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)

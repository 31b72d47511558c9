"""``citytwin sense`` (live monitoring: provision, serve, mqtt, replay) and ``citytwin alarms``
(list, show, ack, clear, assign, comment, incidents)."""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table

from citytwin.cli.common import TwinOption, cell, console, err_console, open_twin, progress, run
from citytwin.errors import CityTwinError, InvalidInput

sense_app = typer.Typer(
    help="Live monitoring: provision datastreams, serve SensorThings ingestion, consume MQTT, "
    "replay the virtual city.",
    no_args_is_help=True,
)
alarms_app = typer.Typer(
    help="Alarms and incidents: list, show, acknowledge, clear, assign, comment.",
    no_args_is_help=True,
)

RulesOption = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        help="Early-warning rule file (YAML/JSON), reloaded when it changes. Default: the "
        "twin's own rules, or the virtual city's rules for a virtual twin.",
    ),
]
ClockOption = Annotated[
    str,
    typer.Option(
        help="What time silent-device rules and escalation run on: 'wall' (the clock) or "
        "'data' (the readings' own times; for replays of past data).",
    ),
]
WebhookOption = Annotated[
    list[str] | None,
    typer.Option(
        "--webhook",
        help="NAME=URL=SECRET of a webhook to notify (repeatable; kept in the twin).",
    ),
]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="CITYTWIN_SERVER",
        help="A running `citytwin sense serve` (e.g. http://127.0.0.1:8000): act through it "
        "(the twin file is held by the server while it runs).",
    ),
]


def _service(twin: Path, rules: Path | None, clock: str, webhooks: list[str] | None):
    from citytwin.app.monitoring import parse_webhook_options
    from citytwin.services.runtime import MonitoringService

    if clock not in ("wall", "data"):
        raise CityTwinError(f"--clock {clock!r}: use 'wall' or 'data'")
    return MonitoringService.open(
        twin, rules=rules, clock=clock, webhooks=parse_webhook_options(webhooks or [])
    )


@sense_app.command()
def provision(
    twin: TwinOption,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Datastreams to provision (CSV or Parquet with datastream_id, thing_id, "
            "observed_property ...). Default: one per measured property of every device of "
            "the twin.",
        ),
    ] = None,
) -> None:
    """Create or update datastreams (all or nothing)."""
    from citytwin.app.monitoring import provision_datastreams

    def body() -> None:
        with open_twin(twin) as store, progress("provisioning") as report:
            t0 = time.perf_counter()
            result = provision_datastreams(store, file, progress=report)
        console.print(
            f"{result.created:,} datastreams created, {result.updated:,} updated "
            f"in {time.perf_counter() - t0:.1f} s"
        )

    run(body)


@sense_app.command()
def serve(
    twin: TwinOption,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    rules: RulesOption = None,
    clock: ClockOption = "wall",
    webhook: WebhookOption = None,
    mqtt: Annotated[
        str | None,
        typer.Option(help="Also consume MQTT from this broker (HOST:PORT) in the same process."),
    ] = None,
    workers: Annotated[int, typer.Option(help="MQTT ingest workers (shared subscription).")] = 2,
    replay_hours: Annotated[
        float,
        typer.Option(
            "--replay",
            help="Replay this many hours of the virtual city's sensors (a storm, a gas leak, a "
            "main burst) into the running service, ending now (0: none; use --clock data).",
        ),
    ] = 0.0,
    speedup: Annotated[float, typer.Option(help="Pace of --replay (times real time).")] = 30.0,
    forecast_dir: Annotated[
        Path | None,
        typer.Option(
            help="Watch this folder for rainfall forecasts (NetCDF / GeoTIFF): each one dropped "
            "in runs the flood model and raises predicted-flooding alarms, then moves to done/ "
            "(or failed/, with why)."
        ),
    ] = None,
    request_threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests handled at once on worker threads; more wait their turn (default: "
            "two per core, at least 4).",
        ),
    ] = None,
) -> None:
    """Serve the twin: OGC API Features, Tiles and Processes, the SensorThings API (read and
    ingestion), the catalogue, alarms, incidents, the event stream and the operations
    console."""

    def body() -> None:
        if replay_hours < 0 or not speedup > 0:
            raise InvalidInput("--replay and --speedup must be positive")
        if forecast_dir is not None and not forecast_dir.is_dir():
            raise InvalidInput(f"--forecast-dir {forecast_dir}: no such folder", hint="make it")
        service = _service(twin, rules, clock, webhook)
        if mqtt:
            service.add_mqtt(*_host_port(mqtt), workers=workers)
        service.serve(
            host,
            port,
            replay_hours=replay_hours,
            speedup=speedup,
            forecast_dir=forecast_dir,
            banner=lambda text: console.print(f"serving {twin}; Ctrl-C stops\n{text}"),
            request_threads=request_threads,
        )

    run(body)


@sense_app.command("mqtt")
def mqtt_(
    twin: TwinOption,
    broker: Annotated[str, typer.Option(help="MQTT broker HOST:PORT.")] = "127.0.0.1:1883",
    workers: Annotated[int, typer.Option(help="Ingest workers (shared subscription).")] = 2,
    rules: RulesOption = None,
    clock: ClockOption = "wall",
    webhook: WebhookOption = None,
    group: Annotated[
        str, typer.Option(help="Shared-subscription group (processes in one group share).")
    ] = "citytwin",
    client_prefix: Annotated[
        str,
        typer.Option(
            help="Worker client ids are PREFIX-0, PREFIX-1, ...; keep them across restarts "
            "(the broker keeps their sessions)."
        ),
    ] = "citytwin-ingest",
    topic_prefix: Annotated[
        str, typer.Option(help="Topic root of the SensorThings topics.")
    ] = "v1.1",
    status_every: Annotated[
        float, typer.Option(help="Seconds between status lines on stderr.")
    ] = 5.0,
) -> None:
    """Consume SensorThings observations from an MQTT broker (QoS 1, persistent sessions)."""

    def body() -> None:
        if not status_every > 0:
            raise InvalidInput(f"--status-every {status_every}: give a positive number")
        service = _service(twin, rules, clock, webhook)
        service.add_mqtt(
            *_host_port(broker),
            workers=workers,
            group=group,
            client_prefix=client_prefix,
            prefix=topic_prefix,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with service:
            console.print(f"consuming MQTT from {broker} into {twin} ({service.describe()})")
            try:
                while not stop.wait(status_every):
                    s = service.ingestor.stats
                    err_console.print(
                        f"{s.observations:,} observations, {s.alarm_changes:,} alarm changes",
                        highlight=False,
                    )
            except KeyboardInterrupt:
                pass

    run(body)


@sense_app.command()
def replay(
    twin: TwinOption,
    to: Annotated[
        str,
        typer.Option(
            help="Where to publish: 'direct' (into the twin here), http://HOST:PORT (a "
            "running `sense serve`) or mqtt://HOST:PORT."
        ),
    ] = "direct",
    hours: Annotated[float, typer.Option(help="Length of the scenario.")] = 6.0,
    speedup: Annotated[
        float, typer.Option(help="Scenario seconds per wall second (0: as fast as possible).")
    ] = 0.0,
    start: Annotated[
        str | None,
        typer.Option(help="Scenario start (ISO 8601; default: the hours before now)."),
    ] = None,
    burst: Annotated[
        str | None, typer.Option(help="Water main to burst (link id; default: one is chosen).")
    ] = None,
    burst_at: Annotated[float, typer.Option(help="Burst time, hours after the start.")] = 3.0,
    storm: Annotated[
        float | None, typer.Option(help="Design storm return period in years (0: none).")
    ] = 20.0,
    storm_at: Annotated[float, typer.Option(help="Storm start, hours after the start.")] = 1.0,
    gas_at: Annotated[float, typer.Option(help="Gas leak time, hours after the start.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 1,
    rules: RulesOption = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Build the scenario from this twin file (a copy of the served twin: a "
            "running service holds its own).",
        ),
    ] = None,
) -> None:
    """Replay realistic readings of the virtual city (diurnal water use, a rainstorm, a main
    burst, a gas leak) through a real ingestion path."""
    from citytwin.services.runtime import run_replay

    def body() -> None:
        when = _start(start, hours)
        with progress("building the scenario") as report:
            summary = run_replay(
                twin,
                to=to,
                start=when,
                hours=hours,
                speedup=speedup,
                burst=burst,
                burst_at=burst_at,
                storm=storm or None,
                storm_at=storm_at,
                gas_at=gas_at,
                seed=seed,
                rules=rules,
                source_twin=source,
                progress=report,
            )
        for line in summary:
            console.print(line)

    run(body)


def _start(text: str | None, hours: float) -> dt.datetime:
    if text is None:
        now = pd.Timestamp.now(tz="UTC").floor("min")
        return (now - pd.Timedelta(hours=hours)).to_pydatetime()
    ts = pd.Timestamp(text)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.removeprefix("mqtt://").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"{text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:1883")
    return host, int(port)


# -- alarms ----------------------------------------------------------------------------------
def _desk(twin: Path | None, server: str | None, *, write: bool):
    from citytwin.app.monitoring import AlarmDesk
    from citytwin.services.runtime import RemoteDesk

    if server:
        return RemoteDesk(server)
    if twin is None:
        raise CityTwinError("give --twin (or --server for a running service)")
    return AlarmDesk.open(twin, write=write)


TwinOrServer = Annotated[
    Path | None,
    typer.Option("--twin", "-t", envvar="CITYTWIN_TWIN", help="The twin file."),
]
_ALARM_COLUMNS = [
    "alarm_id",
    "severity",
    "status",
    "acknowledged",
    "rule_id",
    "source",
    "raised_at",
    "value",
    "incident_id",
    "message",
]

_INCIDENT_COLUMNS = [
    "incident_id",
    "kind",
    "severity",
    "status",
    "title",
    "asset_id",
    "alarms",
    "candidates",
    "opened_at",
]


@alarms_app.command("list")
def list_(
    twin: TwinOrServer = None,
    server: ServerOption = None,
    status: Annotated[str | None, typer.Option(help="active or cleared.")] = "active",
    unacknowledged: Annotated[bool, typer.Option(help="Only those not acknowledged.")] = False,
    severity: Annotated[str | None, typer.Option(help="At least: blue/yellow/orange/red.")] = None,
    rule: Annotated[str | None, typer.Option(help="Of one rule.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """The alarms, newest first."""

    def body() -> None:
        with _desk(twin, server, write=False) as desk:
            frame = desk.alarms(
                status=None if status in (None, "all") else status,
                acknowledged=False if unacknowledged else None,
                severity_at_least=severity,
                rule_id=rule,
                limit=limit,
            )
        _print(frame, _ALARM_COLUMNS, f"{len(frame):,} alarms")

    run(body)


@alarms_app.command()
def show(
    alarm_id: Annotated[str, typer.Argument(help="The alarm.")],
    twin: TwinOrServer = None,
    server: ServerOption = None,
) -> None:
    """One alarm with its history."""

    def body() -> None:
        with _desk(twin, server, write=False) as desk:
            alarm = desk.alarm(alarm_id)
        history = pd.DataFrame(alarm.pop("log", []))
        for key, value in alarm.items():
            console.print(f"[bold]{key}[/]: {cell(value)}")
        if len(history):
            console.print("[bold]history[/]:")
        for e in history.itertuples(index=False):
            what = " ".join(
                cell(v) for v in (e.severity, e.value, f"— {e.text}" if e.text else None)
            )
            console.print(f"  {e.at}  {e.action:<11} {e.actor:<14} {what}", highlight=False)

    run(body)


def _act(action: str, alarm_id: str, twin, server, by: str, to=None, text=None) -> None:
    def body() -> None:
        with _desk(twin, server, write=True) as desk:
            row = desk.act(alarm_id, action, by=by, to=to, text=text)
        console.print(
            f"{row['alarm_id']}: {row['status']}, "
            f"{'acknowledged' if row['acknowledged'] else 'not acknowledged'}"
            + (f", assigned to {row['assignee']}" if row.get("assignee") else "")
        )

    run(body)


ByOption = Annotated[str, typer.Option("--by", help="Who does it (user name).")]


@alarms_app.command()
def ack(
    alarm_id: Annotated[str, typer.Argument(help="The alarm.")],
    by: ByOption,
    comment: Annotated[str | None, typer.Option(help="A note.")] = None,
    twin: TwinOrServer = None,
    server: ServerOption = None,
) -> None:
    """Acknowledge an alarm (stops its escalation)."""
    _act("acknowledge", alarm_id, twin, server, by, text=comment)


@alarms_app.command()
def clear(
    alarm_id: Annotated[str, typer.Argument(help="The alarm.")],
    by: ByOption,
    comment: Annotated[str | None, typer.Option(help="Why.")] = None,
    twin: TwinOrServer = None,
    server: ServerOption = None,
) -> None:
    """Clear an active alarm by hand (the rule raises a new one only after its condition
    cleared and came back)."""
    _act("clear", alarm_id, twin, server, by, text=comment)


@alarms_app.command()
def assign(
    alarm_id: Annotated[str, typer.Argument(help="The alarm.")],
    to: Annotated[str, typer.Option("--to", help="The assignee.")],
    by: ByOption,
    twin: TwinOrServer = None,
    server: ServerOption = None,
) -> None:
    """Assign an alarm to someone."""
    _act("assign", alarm_id, twin, server, by, to=to)


@alarms_app.command()
def comment(
    alarm_id: Annotated[str, typer.Argument(help="The alarm.")],
    text: Annotated[str, typer.Argument(help="The comment.")],
    by: ByOption,
    twin: TwinOrServer = None,
    server: ServerOption = None,
) -> None:
    """Add a comment to an alarm."""
    _act("comments", alarm_id, twin, server, by, text=text)


@alarms_app.command()
def incidents(
    twin: TwinOrServer = None,
    server: ServerOption = None,
    status: Annotated[str | None, typer.Option(help="open, closed or all.")] = "open",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """Incidents: alarms grouped by place and along the networks."""

    def body() -> None:
        with _desk(twin, server, write=False) as desk:
            frame = desk.incidents(status=None if status == "all" else status, limit=limit)
        if len(frame):
            frame = frame.assign(
                alarms=frame["alarm_ids"].map(len),
                candidates=frame["candidates"].map(_candidates),
            )
        _print(frame, _INCIDENT_COLUMNS, f"{len(frame):,} incidents")

    run(body)


def _candidates(items: Any) -> str:
    if not items:
        return ""
    return ", ".join(str(c.get("segment", c)) for c in list(items)[:3]) + (
        " …" if len(items) > 3 else ""
    )


def _print(frame: pd.DataFrame, columns: list[str], title: str) -> None:
    table = Table(title=title)
    cols = [c for c in columns if c in frame]
    for c in cols:
        table.add_column(c, overflow="fold")
    for values in frame[cols].itertuples(index=False):
        table.add_row(*(cell(v) for v in values))
    console.print(table)

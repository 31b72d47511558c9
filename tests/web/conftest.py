"""Fixtures of the console's browser tests: the real service (monitoring included, so alarms
stream to the page) over a copy of ``live_city`` under uvicorn in a thread, an admin's API key,
and Debian's Chromium driven by Playwright (no browser download; WebGL through SwiftShader).
One server and one browser page per test module."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from citytwin.web import HEADLESS_CHROMIUM, HEADLESS_CHROMIUM_ARGS

CHROMIUM = Path(HEADLESS_CHROMIUM)
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM_ARGS)
READY_TIMEOUT_MS = 180_000
"""The first complete render on a software renderer of a busy CI machine can take a while."""


@dataclass
class ConsoleServer:
    """The running service: its base URL, the admin's API key, the monitoring service."""

    base: str
    key: str
    service: Any
    app: Any

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"X-API-Key": self.key}, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def console_server(live_city, tmp_path_factory):
    """The twin's whole service (data services, monitoring with the data clock, the console)
    over a copy of ``live_city``, served by uvicorn on a free port of 127.0.0.1; an admin of
    the emergency department with an API key."""
    import uvicorn

    from citytwin.services.runtime import MonitoringService

    path = tmp_path_factory.mktemp("console") / "console.twin"
    shutil.copy(live_city, path)
    service = MonitoringService.open(path, clock="data")
    app = service.http_app()
    registry = app.state.ctx.registry
    registry.add_user("duty", "Duty officer", "emergency", roles=("admin",), password="s3cret-pass")
    key = registry.issue_key("duty", name="console tests").secret
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="console-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the console's service did not start")
        time.sleep(0.2)
    try:
        yield ConsoleServer(base, key, service, app)
    finally:
        service.hub.close()  # open event streams would hold the shutdown
        server.should_exit = True
        thread.join(30)


@dataclass
class Browsing:
    """A page of the console with what it logged and asked for."""

    page: Any
    base: str
    console: list[tuple[str, str]] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def eval(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def idle(self) -> None:
        """Wait for the map's next idle moment with every tile loaded."""
        self.page.evaluate("window.citytwin.idle()")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, through Playwright."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def console(browser, console_server):
    """The console opened by the signed-in admin (its API key in sessionStorage, as the sign-in
    dialog keeps it), once its first view is completely rendered."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    key = console_server.key
    context.add_init_script(
        "sessionStorage.setItem('citytwin.credentials', JSON.stringify("
        f"{{kind: 'key', value: {key!r}}}));"
        "localStorage.setItem('citytwin.lang', 'en');"
    )
    page = context.new_page()
    page.set_default_timeout(60_000)
    seen = Browsing(page, console_server.base)
    page.on("console", lambda m: seen.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: seen.page_errors.append(str(e)))
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("response", lambda r: r.status >= 400 and seen.failed.append((r.status, r.url)))
    page.goto(console_server.base + "/console/", wait_until="domcontentloaded")
    page.wait_for_function(  # ready, or failed (then the first test says why)
        "window.citytwin && (document.body.dataset.ready === 'true'"
        " || window.citytwin.errors.length > 0)",
        timeout=READY_TIMEOUT_MS,
    )
    try:
        yield seen
    finally:
        context.close()

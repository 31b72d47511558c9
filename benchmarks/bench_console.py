"""Console benchmark: the first complete render of the 100 km² virtual city in headless Chromium.

The twin is the 100 km² virtual city (built once and cached by ``bench_tiles.py`` /
this script in ``benchmarks/.cache``), served by ``citytwin serve`` in its own process with a
signed-in emergency-management user (every network visible). Debian's Chromium (headless,
WebGL on SwiftShader — a software renderer, so this is the worst case for a desktop with a GPU)
opens ``/console/`` in a fresh browser context each time; the time is from navigation start to
the console's ``window.citytwin.ready`` (the map idle with every source of the first view
loaded and drawn; the map labels, drawn by deck.gl once that view is up, are timed apart). The
first load hits a cold server (no tile cached); the next ones a warm
server and a cold browser. Also reported: the requests and bytes of the first view.

Target (issue 6): ≤ 3 s.

Run: make bench  (or: .venv/bin/python benchmarks/bench_console.py [--runs N])
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_features import free_port, wait_http

from citytwin.web import HEADLESS_CHROMIUM, HEADLESS_CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).parent / ".cache"
CITY = CACHE / "city-100km2-seed1.twin"
CHROMIUM = HEADLESS_CHROMIUM
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM_ARGS)
VIEWPORT = {"width": 1280, "height": 800}
VERBOSE = "-v" in sys.argv


def city() -> Path:
    """The 100 km² virtual city (built once, ~2 min)."""
    if not CITY.exists():
        from citytwin.synth.city import build_city

        CACHE.mkdir(exist_ok=True)
        t = time.perf_counter()
        build_city(CITY, 100.0, 1).close()
        print(f"built the 100 km² city in {time.perf_counter() - t:.0f} s")
    return CITY


def signed_in_copy(folder: Path) -> tuple[Path, str]:
    """A copy of the city with an emergency-management user and their API key."""
    from citytwin.services.access import Registry
    from citytwin.store import open_store

    path = folder / "city.twin"
    shutil.copy(city(), path)
    with open_store(path) as store:
        registry = Registry(store)
        registry.add_user("bench", "Benchmark operator", "emergency", roles=("operator",))
        key = registry.issue_key("bench", name="bench_console").secret
        registry.set_limits(anonymous=(0, 1), signed_in=(0, 1))
    return path, key


def first_render(browser, base: str, key: str) -> dict:
    """Open the console in a fresh context; seconds to ready, requests and bytes."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-GB")
    context.add_init_script(
        "sessionStorage.setItem('citytwin.credentials', JSON.stringify("
        f"{{kind: 'key', value: {key!r}}}));"
    )
    page = context.new_page()
    sizes: list[int] = []
    page.on("response", lambda r: sizes.append(int(r.headers.get("content-length") or 0)))
    slow: list[tuple[float, str]] = []
    page.on("requestfinished", lambda r: slow.append((r.timing["responseEnd"], r.url)))
    t = time.perf_counter()
    page.goto(base + "/console/", wait_until="commit")
    page.wait_for_function("window.citytwin && window.citytwin.ready", timeout=120_000)
    page.evaluate("window.citytwin.ready.then(() => true)")
    seconds = time.perf_counter() - t
    page.wait_for_function("window.citytwin.timings.labels", timeout=120_000)
    labels = page.evaluate("window.citytwin.timings.labels - window.citytwin.timings.idle")
    zoom = page.evaluate("window.citytwin.map.getZoom()")
    errors = page.evaluate("window.citytwin.errors.length")
    if VERBOSE:
        print(page.evaluate("JSON.stringify(window.citytwin.timings)"))
        for ms, url in sorted(slow)[-8:]:
            print(f"    {ms:8.0f} ms  {url[:110]}")
    context.close()
    return {
        "s": seconds,
        "labels_s": labels / 1000,
        "requests": len(sizes),
        "kb": sum(sizes) / 1024,
        "zoom": zoom,
        "errors": errors,
    }


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("-v", action="store_true", help="timings and the slowest requests")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("Chromium is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        twin, key = signed_in_copy(Path(tmp))
        port = free_port()
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/citytwin"), "serve", "-t", str(twin), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/health")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                runs = [first_render(browser, base, key) for _ in range(args.runs)]
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    cold, warm = runs[0], runs[1:]
    print(
        f"\nconsole first complete render, 100 km² virtual city, {VIEWPORT['width']}x"
        f"{VIEWPORT['height']}, headless Chromium (SwiftShader)"
    )
    print(
        f"  cold server: {cold['s']:.2f} s  ({cold['requests']} requests,"
        f" {cold['kb']:.0f} KB, zoom {cold['zoom']:.1f}, errors {cold['errors']})"
    )
    if warm:
        print(
            f"  warm server: median {statistics.median(r['s'] for r in warm):.2f} s,"
            f" max {max(r['s'] for r in warm):.2f} s over {len(warm)} fresh browsers"
        )
    print(
        "  the map labels (deck.gl, started after the first render) follow a median"
        f" {statistics.median(r['labels_s'] for r in runs):.2f} s later"
    )
    print("  target: <= 3 s")


if __name__ == "__main__":
    main()

"""SensorThings API read side on a big time-series twin: counts, latest values per Thing,
time-range reads of a Datastream, filtered counts — through the HTTP app, p50 / p99.

The twin is made as ``bench_timeseries.py`` makes its own: smart water meters at random points
over 10 km x 10 km in 100 DMAs, one datastream each, and readings every 15 minutes, loaded
through ``append_observations`` in time order (``--datastreams`` x readings =
``--observations``; default 100,000 datastreams and 10 M observations; the issue's twin has
1.7 M and 100 M). A tenth of the meters are put on the gas network so that a principal's
network restriction selects part of them.

Each request runs ``--repeat`` times (different datastreams, windows and places where the
query has a parameter) through ``fastapi.testclient`` over ``create_app``, so the figures
include parsing, the store's queries, JSON and HTTP in process. Peers where there is an
obvious other way: the latest value per Datastream by a window over the observations
(``$top=2``, what a store without a latest table does for ``$top=1``), and a Datastream's
time range without the zone maps' pruning (the same read with the time condition hidden from
DuckDB in an expression).

Run: .venv/bin/python benchmarks/bench_sensorthings.py [--datastreams 100000]
     [--observations 10000000] [--repeat 30] [--twin PATH (kept and reused)]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_timeseries import CRS, SIDE, T0, make_devices

STEP = pd.Timedelta("15min")


def build(path: Path, n: int, total: int) -> dict:
    """The twin: ``n`` meters with a datastream each and ``total`` readings in time order."""
    from citytwin.model import TwinMeta, validate_frame
    from citytwin.sensing import plan_datastreams
    from citytwin.store import create_store

    devices, zones = make_devices(n, seed=11)
    devices.loc[devices.index % 10 == 0, "network"] = "gas"
    store = create_store(path, TwinMeta("sta-bench", CRS, (0, 0, SIDE, SIDE)))
    t = time.perf_counter()
    store.insert("devices", validate_frame("devices", devices, source="bench"))
    store.insert("zones", validate_frame("zones", zones, source="bench"))
    store.provision(plan_datastreams(devices, zones=zones))
    setup = time.perf_counter() - t
    ids = store.datastreams()["datastream_id"].to_numpy(object)
    steps = max(1, total // len(ids))
    per_batch = max(1, 1_000_000 // len(ids))
    rng = np.random.default_rng(5)
    t = time.perf_counter()
    for s0 in range(0, steps, per_batch):
        k = min(per_batch, steps - s0)
        times = T0 + (s0 + np.arange(k)) * STEP
        frame = pd.DataFrame(
            {
                "datastream_id": np.tile(ids, k),
                "phenomenon_time": np.repeat(times, len(ids)),
                "result": rng.gamma(2.0, 0.5, k * len(ids)).round(3),
            }
        )
        store.append_observations(frame)
    load = time.perf_counter() - t
    store.close()
    return {"setup_s": setup, "load_s": load, "steps": steps, "datastreams": len(ids)}


def timed(client, urls: list[str]) -> tuple[list[float], dict]:
    """Milliseconds per request (each must answer 200) and the last answer."""
    out, doc = [], {}
    client.get(urls[0])  # warm
    for url in urls:
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")
        doc = r.json()
    return out, doc


def pct(ms: list[float]) -> str:
    return f"{statistics.median(ms):,.1f} / {np.percentile(ms, 99):,.1f}"


def run(path: Path, repeat: int, built: dict) -> list[tuple[str, str, str]]:
    from fastapi.testclient import TestClient

    from citytwin.services.api import ServiceContext, create_app
    from citytwin.store import open_store

    store = open_store(path)
    ctx = ServiceContext.of(store)
    with TestClient(create_app(ctx)) as client:
        rows = _requests(client, store, built, repeat)
    store.close()
    return rows


def _requests(client, store, built: dict, repeat: int) -> list[tuple[str, str, str]]:
    from citytwin.sensing.entities import EntityRequest
    from citytwin.services.odata import parse_filter

    ids = store.datastreams()["datastream_id"].to_numpy(object)
    n_obs = store.con.execute("SELECT count(*) FROM observations").fetchone()[0]
    rng = np.random.default_rng(3)
    steps = built["steps"]
    rows: list[tuple[str, str, str]] = []

    def iso(t: pd.Timestamp) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def window(hours: int) -> tuple[str, str]:
        s = T0 + int(rng.integers(0, max(1, steps - hours * 4))) * STEP
        return iso(s), iso(s + pd.Timedelta(hours=hours))

    ms, doc = timed(client, ["/v1.1/Observations?$count=true&$top=1"] * repeat)
    assert doc["@iot.count"] == n_obs
    rows.append((f"Observations?$count=true&$top=1 ({n_obs:,} observations)", pct(ms), ""))

    latest = "$expand=Observations($top=1;$orderby=phenomenonTime%20desc)"
    urls = [
        f"/v1.1/Things?$skip={int(s)}&$expand=Datastreams({latest})"
        for s in rng.integers(0, len(ids) - 100, repeat)
    ]
    ms, doc = timed(client, urls)
    got = sum(len(d["Observations"]) for t in doc["value"] for d in t["Datastreams"])
    assert got == 100
    rows.append(
        (
            "Things?$expand=Datastreams($expand=Observations($top=1;$orderby="
            "phenomenonTime desc)) (100 Things, latest value each)",
            pct(ms),
            "",
        )
    )
    urls = [
        f"/v1.1/Datastreams?$skip={int(s)}&{latest}"
        for s in rng.integers(0, len(ids) - 100, repeat)
    ]
    ms, _ = timed(client, urls)
    peer = [u.replace("$top=1", "$top=2") for u in urls[: max(3, repeat // 5)]]
    ms_peer, _ = timed(client, peer)
    rows.append(
        (
            "Datastreams?$expand=Observations($top=1;$orderby=phenomenonTime desc)"
            " (100 datastreams); peer: $top=2 (a window over the observations)",
            pct(ms),
            pct(ms_peer),
        )
    )

    hours = min(24, steps // 8)
    urls, peer_urls = [], []
    for ds in rng.choice(ids, repeat):
        a, b = window(hours)
        urls.append(
            f"/v1.1/Datastreams('{ds}')/Observations?$filter=phenomenonTime%20ge%20{a}"
            f"%20and%20phenomenonTime%20lt%20{b}&$orderby=phenomenonTime"
        )
        # the same condition where DuckDB can't see a constant range on the column
        peer_urls.append(
            f"/v1.1/Datastreams('{ds}')/Observations?$filter=phenomenonTime%20add%20"
            f"duration'PT0S'%20ge%20{a}%20and%20phenomenonTime%20add%20duration'PT0S'%20lt%20{b}"
            "&$orderby=phenomenonTime"
        )
    ms, doc = timed(client, urls)
    assert len(doc["value"]) == hours * 4, len(doc["value"])
    ms_peer, _ = timed(client, peer_urls[: max(3, repeat // 5)])
    rows.append(
        (
            "Datastreams('x')/Observations?$filter=phenomenonTime ge A and"
            f" phenomenonTime lt B ({hours} h: {hours * 4} readings)&$orderby=phenomenonTime;"
            " peer: the same time range unprunable",
            pct(ms),
            pct(ms_peer),
        )
    )

    urls = []
    for _ in range(repeat):
        a, b = window(2)
        urls.append(
            f"/v1.1/Observations?$count=true&$top=100&$filter=phenomenonTime%20ge%20{a}"
            f"%20and%20phenomenonTime%20lt%20{b}"
        )
    ms, doc = timed(client, urls)
    assert doc["@iot.count"] == 8 * len(ids)
    rows.append((f"Observations?$count=true&$filter=<2 h> ({8 * len(ids):,} match)", pct(ms), ""))

    urls = [
        f"/v1.1/Datastreams?$count=true&$top=100&$filter=properties/zone%20eq%20'DMA-{int(z):03d}'"
        for z in rng.integers(0, 100, repeat)
    ]
    ms, _ = timed(client, urls)
    rows.append(("Datastreams?$count=true&$filter=properties/zone eq 'DMA-055'", pct(ms), ""))

    import pyproj
    import shapely

    to_wgs84 = pyproj.Transformer.from_crs(CRS, 4326, always_xy=True)
    urls = []
    for x, y in rng.uniform(0, SIDE - 500, (repeat, 2)):
        box = shapely.transform(
            shapely.box(x, y, x + 500, y + 500),
            lambda xy: np.column_stack(to_wgs84.transform(*xy.T)),
        )
        urls.append(
            f"/v1.1/Locations?$count=true&$filter=geo.intersects(location,%20geography'{box.wkt}')"
        )
    ms, doc = timed(client, urls)
    rows.append(
        ("Locations?$count=true&$filter=geo.intersects(location, <500 m box>)", pct(ms), "")
    )

    # a principal who reads only the gas network and devices without one (the store call)
    times = []
    for _ in range(max(3, repeat // 3)):
        t = time.perf_counter()
        page = store.sta_entities(
            EntityRequest("Observations", top=1, count=True, networks=("gas", None))
        )
        times.append((time.perf_counter() - t) * 1000)
    assert page.count == n_obs // 10
    rows.append(
        (
            "Observations count for a gas-only principal (store call, network filter"
            " inside the query)",
            pct(times),
            "",
        )
    )
    a, b = window(2)
    flt = parse_filter(f"phenomenonTime ge {a} and phenomenonTime lt {b}")
    times = []
    for _ in range(max(3, repeat // 3)):
        t = time.perf_counter()
        store.sta_entities(
            EntityRequest("Observations", filter=flt, top=100, count=True, networks=("gas", None))
        )
        times.append((time.perf_counter() - t) * 1000)
    rows.append(("  the same with a 2 h phenomenonTime range", pct(times), ""))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datastreams", type=int, default=100_000)
    parser.add_argument("--observations", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--twin", type=Path, default=None, help="keep the twin here (reused)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.twin or Path(tmp) / "sta.twin"
        steps = max(1, args.observations // args.datastreams)
        built = {"steps": steps, "datastreams": args.datastreams, "setup_s": 0.0, "load_s": 0.0}
        if not path.exists():
            built = build(path, args.datastreams, args.observations)
            print(f"built in {built['setup_s']:.0f} s + {built['load_s']:.0f} s", file=sys.stderr)
        rows = run(path, args.repeat, built)
    table = Table(
        title=f"SensorThings read side: {args.datastreams:,} datastreams,"
        f" {steps * args.datastreams:,} observations (ms p50 / p99)"
    )
    for name, justify in (("request", "left"), ("CityTwin", "right"), ("peer", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

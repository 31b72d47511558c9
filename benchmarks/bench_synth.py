"""Virtual city benchmark: build time and peak memory as the city grows (4, 25, 100 km²), the
EPANET check of each city's water supply, and the 1 M-pipe water network generator.

Targets (issue "Virtual city"): the 4 km² demo city in <= 60 s; 100 km² in <= 10 min with
<= 8 GB peak memory; EPANET (24 h) keeps demand-node pressures mostly (>= 90 %; the pressure
zones aim at >= 95 %) within 20-60 m and none negative; a 1 M-pipe water network can be
generated (aim: well under a minute, a few GB). Each run is a fresh process, so its peak
memory is its own.

Run: make bench   (or: .venv/bin/python benchmarks/bench_synth.py [--areas 4 25 100]
     [--water-areas 1000] [--pipes 1000000])
``--water-areas`` plans only the layout and the water supply of a city (and runs EPANET):
the way to see the 1,000 km² water network without building the whole twin.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = {4.0: (60.0, None), 100.0: (600.0, 8192.0)}

_EPANET = """
def epanet(wn):
    from citytwin.synth.water import water_check
    t = time.perf_counter()
    check = water_check(wn)
    return {"epanet_s": time.perf_counter() - t, "share": check.share_20_60,
            "min": check.min_pressure, "max": check.max_pressure,
            "demand_nodes": check.pressures.shape[1]}
"""


def run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_in_subprocess(area: float, seed: int, twin: Path) -> dict:
    code = f"""
import json, resource, time
from citytwin.synth.city import plan_city, write_city
{_EPANET}
t = time.perf_counter()
city = plan_city({area!r}, {seed!r})
store = write_city({str(twin)!r}, city)
seconds = time.perf_counter() - t
counts = {{s.layer: s.count for s in store.summary()}}
store.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
notes = city.water.notes
print(json.dumps({{"seconds": seconds, "counts": counts, "peak_mb": peak, **epanet(city.water.wn),
                  "zones": len(notes["pressure_zones"]), "stations": notes["zone_stations"]}}))
"""
    return run(code)


def water_in_subprocess(area: float, seed: int) -> dict:
    code = f"""
import json, resource, time
from citytwin.synth.layout import plan_layout
from citytwin.synth.water import plan_water
{_EPANET}
t = time.perf_counter()
layout = plan_layout({area!r}, {seed!r})
t_layout = time.perf_counter() - t
t = time.perf_counter()
plan = plan_water(layout, {seed!r})
t_water = time.perf_counter() - t
result = epanet(plan.wn)
print(json.dumps({{"layout_s": t_layout, "water_s": t_water, **result,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "junctions": plan.notes["junctions"], "zones": len(plan.notes["pressure_zones"]),
                  "stations": plan.notes["zone_stations"], "sources": plan.notes["sources"]}}))
"""
    return run(code)


def network_in_subprocess(pipes: int, seed: int) -> dict:
    code = f"""
import json, resource, time
from citytwin.synth.network import plan_water_network
t = time.perf_counter()
plan = plan_water_network({pipes!r}, {seed!r})
seconds = time.perf_counter() - t
t = time.perf_counter()
net = plan.network()
count, _ = net.components()
graph_s = time.perf_counter() - t
t = time.perf_counter()
frames = plan.frames()
frames_s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "graph_s": graph_s, "frames_s": frames_s, "peak_mb": peak,
                  "components": count, **{{k: v for k, v in plan.notes.items()
                                          if isinstance(v, (int, float)) and k != "virtual"}}}}))
"""
    return run(code)


def _pressure(r: dict) -> str:
    return (
        f"EPANET 24 h {r['epanet_s']:.1f} s: {r['share']:.1%} of demand-node pressures within "
        f"20-60 m (min {r['min']:.1f} m, max {r['max']:.1f} m, {r['demand_nodes']:,} nodes); "
        f"{r['zones']} pressure zone(s), {r['stations']} zone station(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--areas", type=float, nargs="*", default=[4.0, 25.0, 100.0])
    parser.add_argument("--water-areas", type=float, nargs="*", default=[])
    parser.add_argument("--pipes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.areas:
        print(f"{'area km²':>9} {'seconds':>9} {'peak MB':>9} {'twin MB':>9}  features  target")
    for area in args.areas:
        with tempfile.TemporaryDirectory() as tmp:
            twin = Path(tmp) / "city.twin"
            r = build_in_subprocess(area, args.seed, twin)
            size = twin.stat().st_size / 2**20
        seconds_target, memory_target = TARGETS.get(area, (None, None))
        target = []
        if seconds_target:
            target.append(f"<= {seconds_target:.0f} s")
        if memory_target:
            target.append(f"<= {memory_target:.0f} MB")
        features = sum(r["counts"].values())
        print(
            f"{area:>9g} {r['seconds']:>9.1f} {r['peak_mb']:>9.0f} {size:>9.0f}  {features:>8,}  "
            + ", ".join(target)
        )
        print("          " + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()))
        print("          " + _pressure(r))
    for area in args.water_areas:
        r = water_in_subprocess(area, args.seed)
        print(
            f"water supply only, {area:g} km² seed {args.seed}: layout {r['layout_s']:.0f} s, "
            f"water plan {r['water_s']:.1f} s, peak {r['peak_mb']:,.0f} MB, "
            f"{r['junctions']:,} junctions, {r['sources']} sources"
        )
        print("          " + _pressure(r))
    for pipes in args.pipes:
        r = network_in_subprocess(pipes, args.seed)
        print(
            f"water network generator, {pipes:,} pipes asked: {r['links']:,} links "
            f"({r['mains']:,} mains, {r['service_pipes']:,} service pipes), {r['nodes']:,} nodes, "
            f"{r['valves']:,} valves, {r['area_km2']:g} km², {r['residents']:,} residents"
        )
        print(
            f"          generated in {r['seconds']:.1f} s (aim: well under 60 s), Network "
            f"{r['graph_s']:.1f} s ({r['components']} component), model frames "
            f"{r['frames_s']:.1f} s; peak {r['peak_mb']:,.0f} MB (aim: a few GB)"
        )


if __name__ == "__main__":
    main()

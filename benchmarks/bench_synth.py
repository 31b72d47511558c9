"""Virtual city benchmark: build time and peak memory as the city grows (4, 25, 100 km²).

Targets (issue "Virtual city"): the 4 km² demo city in <= 60 s; 100 km² in <= 10 min with
<= 8 GB peak memory. Each size is built in a fresh process, so its peak memory is its own.

Run: make bench   (or: .venv/bin/python benchmarks/bench_synth.py [--areas 4 25 100])
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = {4.0: (60.0, None), 100.0: (600.0, 8192.0)}


def build_in_subprocess(area: float, seed: int, twin: Path) -> dict:
    code = f"""
import json, resource, time
from citytwin.synth.city import build_city
t = time.perf_counter()
store = build_city({str(twin)!r}, {area!r}, {seed!r})
seconds = time.perf_counter() - t
counts = {{s.layer: s.count for s in store.summary()}}
store.close()
print(json.dumps({{"seconds": seconds, "counts": counts,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--areas", type=float, nargs="+", default=[4.0, 25.0, 100.0])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()

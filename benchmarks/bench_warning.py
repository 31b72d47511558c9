"""Early-warning rule evaluation throughput (``citytwin.warning``): readings per second.

Ten threshold rules with four warning levels and hysteresis (one per observed property, as in
the virtual city's rule file) over a catalog of datastreams; readings every 5 minutes per
datastream as random walks (so levels are raised, escalated, cleared), evaluated in batches
as an ingest worker would. Reported: readings evaluated per second (median of the timed
batches, after one warm-up batch) and events per batch, plus the same with the virtual city's
full rule file (threshold, sustained, rate of change, anomaly, composite, no-data).
Target: >= 200,000 readings/s against ~10 threshold rules on one core. No installed open
rule engine runs these rules, so the peer is the obvious alternative: a message-at-a-time
evaluator in plain Python (a dict of states, one reading after another, as a per-message rule
engine such as ThingsBoard's evaluates), timed on the same readings, whose events must equal
ours (a cross-check of the hysteresis semantics too). ThingsBoard's own figure (33,333 data
points/s on a 36-vCPU node, whole pipeline) is not comparable.

Run: .venv/bin/python benchmarks/bench_warning.py [--datastreams 20000] [--batch 100000]
     [--batches 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from citytwin.warning import Catalog, Engine, build_baseline, parse_rules, virtual_city_rules

PROPS = [f"prop{k}" for k in range(10)]


def threshold_rules() -> dict:
    return {
        "rules": [
            {
                "id": f"thr-{p}",
                "kind": "threshold",
                "applies_to": {"observed_property": p},
                "unit": "m",
                "direction": "above" if k % 2 == 0 else "below",
                "levels": (
                    {"blue": 1.0, "yellow": 2.0, "orange": 3.0, "red": 4.0}
                    if k % 2 == 0
                    else {"blue": -1.0, "yellow": -2.0, "orange": -3.0, "red": -4.0}
                ),
                "hysteresis": 0.2,
            }
            for k, p in enumerate(PROPS)
        ]
    }


def walks(
    catalog_ids: np.ndarray, n_steps: int, start: pd.Timestamp, rng, every: int = 5
) -> pd.DataFrame:
    """Random-walk readings every ``every`` minutes for every datastream, in time order."""
    n = len(catalog_ids)
    steps = rng.normal(0, 0.25, (n_steps, n)).cumsum(axis=0)
    times = start + pd.to_timedelta(np.arange(n_steps) * every, unit="min")
    return pd.DataFrame(
        {
            "datastream_id": np.tile(catalog_ids, n_steps),
            "phenomenon_time": np.repeat(times.to_numpy(), n),
            "result": steps.ravel(),
        }
    )


def per_message(rule_data: dict, props: dict, readings: pd.DataFrame) -> list[tuple]:
    """The peer: the same threshold rules, one reading at a time, in plain Python. Returns
    (time, rule, datastream, event, level) per event."""
    by_prop = {}
    for r in rule_data["rules"]:
        sign = -1.0 if r.get("direction") == "below" else 1.0
        names = [k for k in ("blue", "yellow", "orange", "red") if k in r["levels"]]
        up = [sign * r["levels"][k] for k in names]
        by_prop[r["applies_to"]["observed_property"]] = (r["id"], sign, up, r["hysteresis"], names)
    level: dict[tuple, int] = {}
    out = []
    order = np.lexsort((readings["phenomenon_time"].to_numpy(), readings["datastream_id"]))
    for ds, t, v in zip(
        readings["datastream_id"].to_numpy()[order],
        readings["phenomenon_time"].to_numpy()[order],
        readings["result"].to_numpy()[order],
        strict=True,
    ):
        rule_id, sign, up, h, names = by_prop[props[ds]]
        s = sign * v
        k_up = sum(s >= u for u in up)
        k_hold = sum(s >= u - h for u in up)
        old = level.get((rule_id, ds), 0)
        new = min(max(old, k_up), k_hold)
        if new != old:
            level[(rule_id, ds)] = new
            event = (
                "raise"
                if old == 0
                else "clear"
                if new == 0
                else ("escalate" if new > old else "deescalate")
            )
            out.append((t, rule_id, ds, event, names[(new or old) - 1]))
    return out


def run(engine: Engine, readings: pd.DataFrame, batch: int, batches: int) -> tuple[float, float]:
    """Median readings/s over ``batches`` timed batches (after one warm-up), mean events."""
    rates, events = [], []
    for k in range(batches + 1):
        chunk = readings.iloc[k * batch : (k + 1) * batch]
        t = time.perf_counter()
        result = engine.evaluate(chunk)
        dt = time.perf_counter() - t
        if k:
            rates.append(len(chunk) / dt)
            events.append(len(result.events))
    return statistics.median(rates), float(np.mean(events))


def virtual_city_catalog(n: int, rng) -> pd.DataFrame:
    """A catalog shaped like the virtual city's telemetry (no smart meters)."""
    props = np.array(
        [
            "depth_below_cover",
            "pressure",
            "flow",
            "gas_concentration",
            "water_level",
            "rain_intensity",
        ]
    )
    p = props[rng.integers(0, len(props), n)]
    tags = np.select(
        [p == "depth_below_cover", p == "water_level", np.isin(p, ["pressure", "flow"])],
        ["manhole", "river", "dma_inlet"],
        "",
    )
    units = pd.Series(p).map(
        {
            "depth_below_cover": "m",
            "pressure": "MPa",
            "flow": "m3/h",
            "gas_concentration": "%LEL",
            "water_level": "m",
            "rain_intensity": "mm/h",
        }
    )
    ids = np.array([f"ds-{i:07d}" for i in range(n)], object)
    return pd.DataFrame(
        {
            "datastream_id": ids,
            "observed_property": p,
            "unit": units,
            "asset_id": ids,
            "group": [f"zone-{i % 200}" for i in range(n)],
            "tags": tags,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datastreams", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    n = args.datastreams
    steps = -(-(args.batches + 1) * args.batch // n)
    start = pd.Timestamp("2024-06-01")

    ids = np.array([f"ds-{i:07d}" for i in range(n)], object)
    cat = Catalog(
        pd.DataFrame({"datastream_id": ids, "observed_property": np.resize(PROPS, n), "unit": "m"})
    )
    readings = walks(ids, steps, start, rng)
    engine = Engine(parse_rules(threshold_rules()), cat)
    rate, events = run(engine, readings, args.batch, args.batches)
    print(
        f"10 threshold rules, {n:,} datastreams, batches of {args.batch:,}: "
        f"{rate:,.0f} readings/s (target >= 200,000), {events:,.0f} events per batch"
    )
    # the peer on the first batches, and the same events from us on them in one go
    sample = readings.iloc[: min(len(readings), 2 * args.batch)]
    props = dict(zip(ids, np.resize(PROPS, n), strict=True))
    t = time.perf_counter()
    theirs = per_message(threshold_rules(), props, sample)
    peer_rate = len(sample) / (time.perf_counter() - t)
    ours = Engine(parse_rules(threshold_rules()), cat).evaluate(sample).events
    level = ours["level"].where(ours["event"] != "clear", ours["previous_level"])
    mine = sorted(
        zip(
            ours["time"].dt.tz_localize(None).to_numpy(),
            ours["rule_id"],
            ours["datastream_id"],
            ours["event"],
            level,
            strict=True,
        )
    )
    assert mine == sorted(theirs), "the per-message peer disagrees"
    print(
        f"peer: per-message plain Python on the same rules: {peer_rate:,.0f} readings/s "
        f"({len(theirs):,} events on {len(sample):,} readings, identical to ours)"
    )

    frame = virtual_city_catalog(n, rng)
    cat = Catalog(frame)
    readings = walks(frame["datastream_id"].to_numpy(object), steps, start, rng)
    readings["result"] = readings["result"].abs() + 0.5
    inlets = frame.loc[frame["observed_property"] == "flow", "datastream_id"].to_numpy(object)
    history = walks(inlets, 3 * 7 * 24, start - pd.Timedelta(weeks=3), rng, every=60)
    t = time.perf_counter()
    baseline = build_baseline(history, timezone="Asia/Shanghai")
    print(
        f"baseline of {len(inlets):,} flow datastreams from {len(history):,} hourly readings: "
        f"{time.perf_counter() - t:.2f} s"
    )
    engine = Engine(virtual_city_rules(), cat, baseline=baseline)
    rate, events = run(engine, readings, args.batch, args.batches)
    print(
        f"virtual city rule file ({len(engine.rules)} rules, all kinds), {n:,} datastreams: "
        f"{rate:,.0f} readings/s, {events:,.0f} events per batch"
    )


if __name__ == "__main__":
    main()

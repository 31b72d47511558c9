"""Replay: realistic readings of a twin's sensors for the demo and the tests, published through
the real ingestion paths at a chosen speed-up.

``build_scenario(store, ScenarioSpec(start=...))`` makes the readings of the twin's provisioned
datastreams over a few hours from the project's own engines:

- water: an EPANET run (``citytwin.hydraulics.epanet``) of the twin's water network from local
  midnight, its hourly demand patterns interpolated to 5 minutes — DMA inlet flow and pressure,
  critical-point and source pressure, source flow, tank level; a main burst is the main split
  at its middle with an emitter behind a link that a timed control opens (a pressure-driven
  outflow from the burst time on, ``Burst.size`` L/s at the main's pressure just before);
- drainage: SWMM runs (``pyswmm``) of the twin's storm, combined and foul networks from one hour
  before the scenario (spin-up), with a Chicago design storm (``citytwin.drainage.storms``) —
  manhole ``depth_below_cover`` (rim minus water surface, 0 when the water is at the cover),
  outfall and wet-well ``water_level``; the rain gauges tip (0.1 mm buckets) on the same storm;
- a gas detector's methane rising (logistic) through 25 %LEL at the leak's time, then falling
  when the leak is stopped; the other detectors read a small background;
- smart water meters: the cumulative register, uploaded once a day at the meter's own time;
- river gauges: the river's normal level (the river itself is not modelled).

Every reading carries sensor noise (seeded) and is sampled at the device's interval
(``SAMPLING``) from its own phase. Times are UTC; the engines run on the city's local clock
(``ScenarioSpec.timezone``, the rules' timezone), so demand follows the local day.

``Scenario.history`` holds normal flows and pressures of the water network's sensors for the
weeks before (the base run's daily profile and noise, with a day-to-day demand level that the
flows scale with and the pressures follow as an EPANET run at more demand says) for the
anomaly rules' same-hour-of-week baseline (``Scenario.baseline()``); ``Scenario.expected``
says what should happen.

``replay(scenario, sink, speedup=60)`` sends the readings in time-ordered batches, paced by
scenario time / speed-up, to an ``IngestorSink`` (in process), an ``HttpSink`` (``POST
/v1.1/CreateObservations``) or an ``MqttSink`` (``v1.1/CreateObservations`` at QoS 1). The
ingestor refuses readings more than a few minutes in the future: to replay faster than real
time, start the scenario at least ``hours`` in the past.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from citytwin.errors import InvalidInput
from citytwin.sensing.model import OBSERVED_PROPERTIES
from citytwin.store import Filter, Query, Store

TIMEZONE = "Asia/Shanghai"
"""The virtual city's local time (its demand patterns and its rules' hours)."""
SAMPLING: dict[str, str] = {
    "pressure": "1min",
    "flow": "1min",
    "gas_concentration": "1min",
    "depth_below_cover": "2min",
    "water_level": "5min",
    "rain_intensity": "5min",
    "water_volume": "1D",  # a smart meter's daily upload
}
"""How often each observed property is sampled (a multiple of the scenario's step)."""
NOISE: dict[str, tuple[float, float]] = {
    "pressure": (0.0015, 0.0),  # MPa: a 0-1 MPa transmitter, ±0.25 % of span
    "flow": (0.3, 0.01),  # m3/h + share of the reading: an electromagnetic meter
    "depth_below_cover": (0.004, 0.0),  # m: radar level sensor
    "water_level": (0.004, 0.0),
}
"""Sensor noise: (absolute sigma in the property's unit, sigma relative to the reading)."""
RESOLUTION: dict[str, float] = {
    "pressure": 1e-4,
    "flow": 0.01,
    "depth_below_cover": 1e-3,
    "water_level": 1e-3,
    "gas_concentration": 0.1,
    "water_volume": 1e-3,
}
DEMAND_FLUCTUATION = 0.02
"""Short-term fluctuation of DMA demand around the hydraulic model (share), live and history."""
DAY_TO_DAY = (0.05, 0.03)
"""Sigma of the daily demand level: city-wide, and each inlet's or pressure point's own
(shares)."""
DEMAND_STEP = 0.1
"""The history's pressures follow the day's demand level by an EPANET run at this much more
demand (share)."""
HISTORY_STEP = "5min"
WARMUP = pd.Timedelta("1h")
"""SWMM runs start this long before the scenario (the sewers fill with dry-weather flow)."""
MPA_PER_M = 1000 * 9.80665 / 1e6
"""Megapascal per metre of water head."""
RAIN_TIP_MM = 0.1
GAS_ALARM = 25.0
"""%LEL: the first alarm setting of GB/T 50493; the leak crosses it at ``GasLeak.at``."""
GAS_BACKGROUND = (0.4, 0.3)  # %LEL: mean and sigma of a detector's reading in clean air
LEVEL_RISE = 0.3
"""m: a manhole counts as one of the storm's when its water rises at least this much."""
_BURST_NODE, _BURST_OUT, _BURST_LINK = "BURST", "BURST_OUT", "BURST_LINK"


# -- the scenario ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Storm:
    """A design storm over the whole city: the Chicago hyetograph of the city's storm intensity
    formula (``citytwin.drainage.storms``)."""

    return_period: float = 50.0  # years
    at: dt.datetime | None = None  # its start; None: a quarter into the scenario
    minutes: float = 120.0
    step_minutes: float = 5.0


@dataclass(frozen=True)
class Burst:
    """A water main bursting: from ``at`` on, water leaves the main at its middle through an
    emitter sized to ``size`` L/s at the main's pressure just before the burst (less as the
    pressure falls)."""

    link: str | None = None  # a pipe of the water network (utility_links id); None: pick one
    at: dt.datetime | None = None  # None: two thirds into the scenario
    size: float = 100.0  # L/s


@dataclass(frozen=True)
class GasLeak:
    """Methane at a gas detector: rising (logistic, time constant ``rise_minutes``) through
    ``GAS_ALARM`` %LEL at ``at`` towards ``peak``; after ``minutes`` the leak is stopped and it
    falls away."""

    device: str | None = None  # a gas detector's id; None: the one nearest ``near``, else the first
    at: dt.datetime | None = None  # None: five sixths into the scenario
    near: tuple[float, float] | None = None  # a place (twin CRS) to pick the detector by
    peak: float = 60.0  # %LEL
    rise_minutes: float = 3.0
    minutes: float = 30.0


@dataclass(frozen=True)
class ScenarioSpec:
    """What to replay: from ``start`` (an aware time; UTC in the results) for ``hours``, the
    engines stepping by ``step``; the events (``None``: not this time); the seed of the noise;
    the city's local timezone (the engines run on its clock at the start's UTC offset);
    sampling intervals by observed property; days of flow and pressure history for the
    baseline."""

    start: dt.datetime
    hours: float = 6.0
    step: str = "1min"
    storm: Storm | None = field(default_factory=Storm)
    burst: Burst | None = field(default_factory=Burst)
    gas: GasLeak | None = field(default_factory=GasLeak)
    seed: int = 0
    timezone: str = TIMEZONE
    sampling: Mapping[str, str] = field(default_factory=lambda: dict(SAMPLING))
    history_days: int = 56


@dataclass
class Expected:
    """What the scenario's readings should make happen (times are UTC timestamps).

    ``calm_until``: the first event (nothing should fire before). Storm: its start and end, peak
    intensity, ``storm_manholes`` (``depth_below_cover`` datastreams whose water rises at least
    ``LEVEL_RISE`` m) and ``freeboard`` (each manhole datastream's least freeboard in the storm,
    noise-free, m). Burst: the link, its DMA, the DMA's inlet flow datastreams and its pressure
    datastreams (inlets and critical points), the outflow (L/s, 10 minutes in). Gas: the
    detector and its datastream."""

    calm_until: pd.Timestamp | None = None
    storm_at: pd.Timestamp | None = None
    storm_end: pd.Timestamp | None = None
    storm_peak: float | None = None  # mm/h
    storm_manholes: list[str] = field(default_factory=list)
    freeboard: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    burst_at: pd.Timestamp | None = None
    burst_link: str | None = None
    burst_dma: str | None = None
    burst_inlets: list[str] = field(default_factory=list)
    burst_pressures: list[str] = field(default_factory=list)
    burst_flow: float | None = None  # L/s
    gas_at: pd.Timestamp | None = None
    gas_device: str | None = None
    gas_datastream: str | None = None


@dataclass
class Scenario:
    """A scenario's readings, time-ordered (``datastream_id``, ``phenomenon_time`` UTC,
    ``result`` in each datastream's unit), what should happen, and the history for the
    baseline. ``spec`` has every automatic choice filled in; ``unsimulated`` lists the
    datastreams no engine gives readings for; ``seconds`` what each engine took."""

    spec: ScenarioSpec
    start: pd.Timestamp
    end: pd.Timestamp
    observations: pd.DataFrame
    expected: Expected
    history: pd.DataFrame
    datastreams: pd.DataFrame
    unsimulated: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def batches(self, every: str | pd.Timedelta = "1min") -> Iterator[pd.DataFrame]:
        """The readings in consecutive windows of ``every`` from the start (empty windows
        skipped), in time order."""
        for _, frame in self.windows(every):
            yield frame

    def windows(
        self, every: str | pd.Timedelta = "1min"
    ) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
        """(window end, readings of the window) for consecutive windows of ``every``."""
        width = _timedelta(every, "every")
        obs = self.observations
        t = obs["phenomenon_time"].to_numpy("datetime64[ns]").view(np.int64)
        k = (t - self.start.value) // width.value
        cuts = np.flatnonzero(np.diff(k)) + 1
        starts = np.r_[0, cuts] if len(k) else np.array([], int)
        ends = np.r_[cuts, len(k)] if len(k) else np.array([], int)
        for lo, hi in zip(starts, ends, strict=True):
            yield (
                self.start + width * int(k[lo] + 1),
                obs.iloc[lo:hi].reset_index(drop=True),
            )

    def baseline(self, timezone: str | None = None) -> Any:
        """The same-hour-of-week baseline of ``history`` (``citytwin.warning.Baseline``) in the
        rules' timezone (default: the scenario's)."""
        from citytwin.warning.baseline import build_baseline

        return build_baseline(self.history, timezone=timezone or self.spec.timezone)


def build_scenario(
    store: Store, spec: ScenarioSpec, datastreams: pd.DataFrame | None = None
) -> Scenario:
    """The readings of the twin's datastreams (default: those provisioned) for ``spec``."""
    streams = store.datastreams() if datastreams is None else datastreams
    if not len(streams):
        raise InvalidInput(
            "the twin has no datastreams to replay",
            source="replay",
            hint="provision its devices' datastreams first "
            "(citytwin.app.monitoring.provision_datastreams, `citytwin sense provision`)",
        )
    started = time.perf_counter()
    streams = streams.reset_index(drop=True)
    spec = _resolved(store, spec, streams)
    clock = _Clock(spec)
    rng = _Rngs(spec.seed)
    seconds: dict[str, float] = {}
    series: dict[str, np.ndarray] = {}
    expected = Expected()
    prop = streams["observed_property"].to_numpy(object)
    ids = streams["datastream_id"].to_numpy(object)

    t0 = time.perf_counter()
    water = _Water(store, streams, spec, clock)
    series.update(water.series)
    seconds["epanet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rain = _Rain(spec, clock)
    drained = _drainage(store, streams, spec, clock, rain)
    series.update(drained)
    seconds["swmm"] = time.perf_counter() - t0

    river = _river_levels(store, streams, series)
    series.update(river)
    direct: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    done = set(series)
    rain_ids = ids[(prop == "rain_intensity")]
    direct.append(rain.readings(rain_ids, spec, clock, rng.get("rain")))
    gas_ids = ids[prop == "gas_concentration"]
    gas_ds = _gas_datastream(spec, streams)
    direct.append(_gas(gas_ids, gas_ds, spec, clock, rng.get("gas")))
    meter_ids = ids[prop == "water_volume"]
    direct.append(_meters(meter_ids, water.day_use, spec, clock, rng.get("meters")))
    done |= set(rain_ids) | set(gas_ids) | set(meter_ids)

    *sampled, clean = _sample(series, streams, spec, clock, rng)
    parts = [tuple(sampled), *direct]
    obs_ids = np.concatenate([p[0] for p in parts])
    obs_t = np.concatenate([p[1] for p in parts])
    obs_v = np.concatenate([p[2] for p in parts])
    obs_v = _to_units(obs_ids, obs_v, streams)
    order = np.lexsort((obs_ids.astype(str), obs_t))
    observations = pd.DataFrame(
        {
            "datastream_id": obs_ids[order],
            "phenomenon_time": pd.DatetimeIndex(obs_t[order].astype("datetime64[ns]"), tz="UTC"),
            "result": obs_v[order],
        }
    )
    unsimulated = sorted(set(ids) - done)

    # what should happen
    events = []
    if spec.storm is not None:
        expected.storm_at = clock.ts(spec.storm.at)
        expected.storm_end = expected.storm_at + pd.Timedelta(minutes=spec.storm.minutes)
        expected.storm_peak = float(rain.intensity.max())
        manholes = set(ids[prop == "depth_below_cover"]) & set(drained)
        expected.freeboard, expected.storm_manholes = _storm_manholes(
            (*sampled, clean), manholes, expected.storm_at
        )
        events.append(expected.storm_at)
    if spec.burst is not None:
        expected.burst_at = clock.ts(spec.burst.at)
        expected.burst_link = spec.burst.link
        expected.burst_dma = water.burst_dma
        expected.burst_flow = water.burst_flow
        in_dma = streams["zone"].to_numpy(object) == water.burst_dma
        inlet = _tagged(streams, "dma_inlet")
        expected.burst_inlets = sorted(ids[in_dma & inlet & (prop == "flow")])
        watched = inlet | _tagged(streams, "dma_critical")  # the DMA's own pressure points
        expected.burst_pressures = sorted(ids[in_dma & watched & (prop == "pressure")])
        events.append(expected.burst_at)
    if spec.gas is not None:
        expected.gas_at = clock.ts(spec.gas.at)
        expected.gas_device = spec.gas.device
        expected.gas_datastream = gas_ds
        events.append(expected.gas_at)
    expected.calm_until = min(events) if events else None
    history = _history(water.profiles, water.response, spec, clock, rng.get("history"))
    seconds["total"] = time.perf_counter() - started
    used = streams[np.isin(ids, list(done))]
    return Scenario(
        spec,
        clock.start,
        clock.end,
        observations,
        expected,
        history,
        used.reset_index(drop=True),
        unsimulated,
        seconds,
    )


# -- time -------------------------------------------------------------------------------------
class _Clock:
    """The scenario's time axis: UTC ``start``/``end``, the engines' ``step`` (s) and ``n``
    steps; local (naive) times for the engines."""

    def __init__(self, spec: ScenarioSpec) -> None:
        self.start = pd.Timestamp(spec.start).tz_convert("UTC")
        self.step = int(_timedelta(spec.step, "step").total_seconds())
        self.n = round(spec.hours * 3600 / self.step)
        self.end = self.start + pd.Timedelta(seconds=self.n * self.step)
        self.tz = spec.timezone
        local = self.start.tz_convert(self.tz)
        self.start_local = local.tz_localize(None)
        self.midnight_local = self.start_local.normalize()
        self.offset = int((self.start_local - self.midnight_local).total_seconds())

    def ts(self, t: dt.datetime | pd.Timestamp) -> pd.Timestamp:
        return pd.Timestamp(t).tz_convert("UTC")

    def seconds(self, t: dt.datetime | pd.Timestamp) -> float:
        """Seconds from the start."""
        return (self.ts(t) - self.start).total_seconds()

    def local(self, t: dt.datetime | pd.Timestamp) -> pd.Timestamp:
        return self.ts(t).tz_convert(self.tz).tz_localize(None)


def _timedelta(value: Any, what: str) -> pd.Timedelta:
    try:
        td = pd.Timedelta(value)
    except (ValueError, TypeError):
        td = pd.NaT
    if pd.isna(td) or td <= pd.Timedelta(0):
        raise InvalidInput(
            f"{what} {value!r} is not a positive time span", source="replay", hint="e.g. '1min'"
        )
    return td


class _Rngs:
    """Independent random streams by purpose, from one seed."""

    _NAMES = ("sample", "noise", "rain", "gas", "meters", "history", "flow")

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def get(self, name: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._NAMES.index(name)])


def _resolved(store: Store, spec: ScenarioSpec, streams: pd.DataFrame) -> ScenarioSpec:
    """``spec`` checked, in UTC, with the events' default times and picks filled in."""
    if spec.start.tzinfo is None or spec.start.utcoffset() is None:
        raise InvalidInput(
            f"the scenario's start {spec.start} has no timezone",
            source="replay",
            hint="give an aware time, e.g. datetime(2026, 6, 1, 0, tzinfo=UTC)",
        )
    if not 0 < spec.hours <= 7 * 24:
        raise InvalidInput(f"hours must be in (0, 168], not {spec.hours}", source="replay")
    step = _timedelta(spec.step, "step")
    if step.total_seconds() < 10 or 300 % step.total_seconds():
        raise InvalidInput(
            f"step {spec.step!r} must be at least 10 s and divide 5 minutes", source="replay"
        )
    for prop, every in spec.sampling.items():
        s = _timedelta(every, f"sampling of {prop}").total_seconds()
        if s % step.total_seconds():
            raise InvalidInput(
                f"the sampling of {prop} ({every}) is not a multiple of the step {spec.step}",
                source="replay",
            )
    if spec.history_days < 7:
        raise InvalidInput(
            "history_days must be at least 7 (a same-hour-of-week baseline needs a week)",
            source="replay",
        )
    start = pd.Timestamp(spec.start).tz_convert("UTC")
    hours = pd.Timedelta(hours=spec.hours)

    def when(t: dt.datetime | None, share: float, what: str) -> dt.datetime:
        if t is None:
            at = start + (hours * share).round(step)
        elif t.tzinfo is None or t.utcoffset() is None:
            raise InvalidInput(f"the {what} time {t} has no timezone", source="replay")
        else:
            at = pd.Timestamp(t).tz_convert("UTC").floor(step)
        if not start <= at < start + hours:
            raise InvalidInput(
                f"the {what} at {at} is outside the scenario ({start} + {spec.hours:g} h)",
                source="replay",
            )
        return at.to_pydatetime()

    storm, burst, gas = spec.storm, spec.burst, spec.gas
    if storm is not None:
        if not storm.return_period > 0 or storm.minutes <= 0:
            raise InvalidInput("a storm needs a return period > 0 and minutes > 0", source="replay")
        storm = dataclasses.replace(storm, at=when(storm.at, 0.25, "storm"))
    if burst is not None:
        if not burst.size > 0:
            raise InvalidInput(f"the burst size must be > 0 L/s, not {burst.size}", source="replay")
        link = burst.link or pick_burst_link(store, streams)
        burst = dataclasses.replace(burst, link=link, at=when(burst.at, 2 / 3, "burst"))
    if gas is not None:
        if not gas.peak > GAS_ALARM:
            raise InvalidInput(
                f"a gas leak's peak must exceed {GAS_ALARM} %LEL, not {gas.peak}", source="replay"
            )
        gas = dataclasses.replace(
            gas, device=_gas_device(store, streams, gas), at=when(gas.at, 5 / 6, "gas leak")
        )
    return dataclasses.replace(spec, start=start.to_pydatetime(), storm=storm, burst=burst, gas=gas)


def _tagged(streams: pd.DataFrame, tag: str) -> np.ndarray:
    tags = streams["tags"].fillna("").astype(str)
    return tags.str.split(",").map(lambda ts: tag in [t.strip() for t in ts]).to_numpy(bool)


# -- water: EPANET -----------------------------------------------------------------------------
def _water_key(store: Store) -> tuple[str, dict[str, Any]] | None:
    for key in store.documents("network/"):
        doc = store.get_document(key) or {}
        if doc.get("format") == "epanet" and doc.get("network", "water_supply") == "water_supply":
            return key, doc
    return None


def pick_burst_link(store: Store, datastreams: pd.DataFrame | None = None) -> str:
    """A main to burst: in the smallest DMA (fewest junctions) that has an inlet flow meter,
    the widest open pipe at the DMA's critical-point pressure sensor (else the widest inside
    the DMA)."""
    streams = store.datastreams() if datastreams is None else datastreams
    found = _water_key(store)
    if found is None:
        raise InvalidInput(
            "the twin has no EPANET water network to burst a main in", source="replay"
        )
    prefix = found[1]["id_prefix"]
    prop = streams["observed_property"].to_numpy(object)
    metered = set(streams["zone"][_tagged(streams, "dma_inlet") & (prop == "flow")].dropna())
    if not metered:
        raise InvalidInput(
            "no DMA has an inlet flow meter to see a burst",
            source="replay",
            hint="provision the flow meters' datastreams, or give Burst(link=...)",
        )
    where = [Filter("network", "=", "water_supply")]
    nodes = store.query(
        Query("utility_nodes", classes=["junction"], where=where, columns=["zone_id"])
    )
    sizes = nodes[nodes["zone_id"].isin(metered)].groupby("zone_id").size()
    dma = sorted(sizes.index, key=lambda z: (sizes[z], z))[0]
    zone_of = dict(zip(nodes["id"], nodes["zone_id"], strict=True))
    links = store.query(
        Query(
            "utility_links",
            classes=["pipe"],
            where=where,
            columns=["from_node", "to_node", "diameter", "initial_status"],
        )
    )
    inside = links[
        links["id"].str.startswith(prefix)
        & (links["from_node"].map(zone_of) == dma)
        & (links["to_node"].map(zone_of) == dma)
        & (links["initial_status"].fillna("open").str.lower() != "closed")
    ]
    if not len(inside):
        raise InvalidInput(f"DMA {dma} has no open main inside it", source="replay")
    critical = set(
        streams["asset_id"][_tagged(streams, "dma_critical") & (streams["zone"] == dma).to_numpy()]
    )
    at_critical = inside[inside["from_node"].isin(critical) | inside["to_node"].isin(critical)]
    pool = at_critical if len(at_critical) else inside
    pool = pool.assign(d=pool["diameter"].fillna(0.0)).sort_values(
        ["d", "id"], ascending=[False, True]
    )
    return str(pool["id"].iloc[0])


class _Water:
    """EPANET runs of the twin's water network for the scenario: ``series`` (datastream →
    values on the scenario's steps, canonical units), ``profiles`` (flow and pressure
    datastream → its values over the first local day of the base run, for the history),
    ``response`` (pressure datastream → how it moves per unit of the day's demand level, per
    step of a day: a run at ``1 + DEMAND_STEP`` times the demand against the base run),
    ``day_use`` (the residential pattern's cumulative share of a day, per step of a day) and
    the burst's DMA and outflow."""

    def __init__(self, store: Store, streams: pd.DataFrame, spec: ScenarioSpec, clock: _Clock):
        self.series: dict[str, np.ndarray] = {}
        self.profiles: dict[str, np.ndarray] = {}
        self.response: dict[str, np.ndarray] = {}
        self.day_use: np.ndarray | None = None
        self.burst_dma: str | None = None
        self.burst_flow: float | None = None
        found = _water_key(store)
        if found is None:
            if spec.burst is not None:
                raise InvalidInput("the twin has no EPANET water network", source="replay")
            return
        key, doc = found
        self.prefix = prefix = doc["id_prefix"]
        props = streams["observed_property"].to_numpy(object)
        assets = streams["asset_id"].fillna("").astype(str).to_numpy(object)
        mine = np.flatnonzero(
            np.char.startswith(assets.astype(str), prefix)
            & np.isin(props, ["pressure", "flow", "water_level"])
        )
        if not len(mine) and spec.burst is None:
            return
        import wntr

        from citytwin.formats.epanet import epanet_model_dict
        from citytwin.hydraulics.epanet import run_epanet

        model = epanet_model_dict(store, key)
        self.duration = max(clock.offset + clock.n * clock.step, 86400)
        self.duration = -(-self.duration // clock.step) * clock.step

        def fresh() -> wntr.network.WaterNetworkModel:
            wn = wntr.network.from_dict(model)
            _fine_patterns(wn)
            t = wn.options.time
            t.hydraulic_timestep = t.report_timestep = clock.step
            t.duration = self.duration
            t.pattern_start = t.start_clocktime = t.report_start = 0
            wn.options.quality.parameter = "NONE"
            return wn

        wn = fresh()
        self.day_use = _day_use(wn, clock.step)
        probes = self._probes(store, streams.iloc[mine], wn)
        base = run_epanet(wn)
        run = base
        if spec.burst is not None:
            run = self._burst(store, fresh(), base, spec.burst, clock)
        first = clock.offset // clock.step
        at = np.arange(first, first + clock.n) * clock.step
        day = np.arange(0, 86400, clock.step)
        for ds, probe in probes.items():
            self.series[ds] = probe(run, at)
            if probe.kind in ("flow", "pressure"):
                self.profiles[ds] = probe(base, day)
        pressures = {ds: probe for ds, probe in probes.items() if probe.kind == "pressure"}
        if pressures:  # a busier day: the pressures fall as the head losses grow
            busier = fresh()
            busier.options.hydraulic.demand_multiplier *= 1.0 + DEMAND_STEP
            more = run_epanet(busier)
            for ds, probe in pressures.items():
                self.response[ds] = (probe(more, day) - self.profiles[ds]) / DEMAND_STEP

    def _probes(self, store: Store, streams: pd.DataFrame, wn: Any) -> dict[str, _Probe]:
        prefix = self.prefix
        nodes = set(wn.node_name_list)
        meters = store.query(Query("utility_nodes", ids=sorted(set(streams["asset_id"]))))
        meters = meters.set_index("id")
        out: dict[str, _Probe] = {}
        for row in streams.itertuples(index=False):
            name = str(row.asset_id)[len(prefix) :]
            prop = row.observed_property
            if name in nodes:
                node = wn.get_node(name)
                kind = node.node_type
                if kind == "Reservoir":
                    out_links = [(lk, 1.0) for lk in wn.get_links_for_node(name, "OUTLET")]
                    out_links += [(lk, -1.0) for lk in wn.get_links_for_node(name, "INLET")]
                    if prop == "flow":
                        out[row.datastream_id] = _Probe("flow", links=out_links)
                    elif prop == "pressure":  # the discharge pressure of its pumps
                        ends = [_other_end(wn, lk, name) for lk, _ in out_links]
                        out[row.datastream_id] = _Probe("pressure", nodes=ends, how="max")
                elif prop == "pressure":
                    out[row.datastream_id] = _Probe("pressure", nodes=[name])
                elif prop == "water_level":
                    out[row.datastream_id] = _Probe("head", nodes=[name])
                continue
            if row.asset_id in meters.index and prop in ("flow", "pressure"):
                m = meters.loc[row.asset_id]
                props = m["props"] if isinstance(m["props"], dict) else {}
                inside = str(props.get("node", ""))[len(prefix) :]
                link = str(m["link_id"] or "")[len(prefix) :]
                if prop == "pressure" and inside in nodes:
                    out[row.datastream_id] = _Probe("pressure", nodes=[inside])
                elif prop == "flow" and link in wn.link_name_list and inside in nodes:
                    lk = wn.get_link(link)
                    sign = 1.0 if lk.end_node_name == inside else -1.0
                    out[row.datastream_id] = _Probe("flow", links=[(link, sign)])
        return out

    def _burst(self, store: Store, wn: Any, base: Any, burst: Burst, clock: _Clock) -> Any:
        import wntr

        from citytwin.hydraulics.epanet import run_epanet

        link_id = str(burst.link)
        name = link_id[len(self.prefix) :] if link_id.startswith(self.prefix) else link_id
        if name not in wn.pipe_name_list:
            raise InvalidInput(
                f"{link_id!r} is not a pipe of the twin's water network model",
                source="replay",
                feature=link_id,
                hint=f"give a pipe id such as {self.prefix}{wn.pipe_name_list[0]}",
            )
        pipe = wn.get_link(name)
        if str(pipe.initial_status).lower().endswith("closed"):
            raise InvalidInput(
                f"{link_id} is closed: a burst there drains nothing", source="replay"
            )
        t_burst = clock.offset + int(clock.seconds(burst.at))
        ends = [pipe.start_node_name, pipe.end_node_name]
        p0 = float(
            base.node["pressure"][ends].reindex([t_burst], method="ffill").mean(axis=1).iloc[0]
        )
        coeff = burst.size / 1000.0 / math.sqrt(max(p0, 1.0))
        diameter = pipe.diameter
        wntr.morph.split_pipe(wn, name, f"{name}_{_BURST_NODE}", _BURST_NODE, return_copy=False)
        node = wn.get_node(_BURST_NODE)
        wn.add_junction(_BURST_OUT, elevation=node.elevation, coordinates=node.coordinates)
        wn.add_pipe(
            _BURST_LINK, _BURST_NODE, _BURST_OUT, length=1.0, diameter=diameter,
            roughness=140.0, initial_status="CLOSED",
        )  # fmt: skip
        wn.get_node(_BURST_OUT).emitter_coefficient = coeff
        ctl = wntr.network.controls
        opened = ctl.ControlAction(wn.get_link(_BURST_LINK), "status", wntr.network.LinkStatus.Open)
        wn.add_control("burst", ctl.Control(ctl.SimTimeCondition(wn, "=", t_burst), opened))
        run = run_epanet(wn)
        out = run.node["demand"][_BURST_OUT]
        self.burst_flow = float(out.reindex([t_burst + 600], method="ffill").iloc[0] * 1000.0)
        link = store.query(Query("utility_links", ids=[link_id], columns=["from_node"]))
        if len(link):
            node_row = store.query(
                Query("utility_nodes", ids=[link["from_node"].iloc[0]], columns=["zone_id"])
            )
            if len(node_row):
                self.burst_dma = node_row["zone_id"].iloc[0]
        return run


@dataclass
class _Probe:
    """How a datastream reads an EPANET run."""

    kind: str  # "pressure" (MPa), "head" (m), "flow" (m3/h)
    nodes: list[str] = field(default_factory=list)
    links: list[tuple[str, float]] = field(default_factory=list)
    how: str = "mean"

    def __call__(self, run: Any, at: np.ndarray) -> np.ndarray:
        if self.kind == "flow":
            flow = run.link["flowrate"]
            cols = [lk for lk, _ in self.links]
            signs = np.array([s for _, s in self.links])
            q = flow[cols].reindex(at, method="ffill").to_numpy(float) @ signs
            return q * 3600.0
        table = run.node["pressure" if self.kind == "pressure" else "head"]
        v = table[self.nodes].reindex(at, method="ffill").to_numpy(float)
        v = v.max(axis=1) if self.how == "max" else v.mean(axis=1)
        return v * MPA_PER_M if self.kind == "pressure" else v


def _other_end(wn: Any, link: str, node: str) -> str:
    lk = wn.get_link(link)
    return lk.end_node_name if lk.start_node_name == node else lk.start_node_name


def _fine_patterns(wn: Any, step: int = 300) -> None:
    """Hourly demand patterns as 5-minute ones, linear between the hours' middles (EPANET
    holds a pattern's value over its step: hourly steps would make flows jump on the hour)."""
    t = wn.options.time
    old = int(t.pattern_timestep)
    if old <= step or old % step:
        return
    k = old // step
    for name in wn.pattern_name_list:
        pat = wn.get_pattern(name)
        m = np.asarray(pat.multipliers, dtype=float)
        if len(m) < 2:
            continue
        period = len(m) * old
        x_old = (np.arange(len(m)) + 0.5) * old
        x_new = (np.arange(len(m) * k) + 0.5) * step
        pat.multipliers = np.interp(x_new, x_old, m, period=period).tolist()
    t.pattern_timestep = step


def _day_use(wn: Any, step: int) -> np.ndarray:
    """The cumulative share of a day's residential use at each step of a day (0 at midnight)."""
    n = 86400 // step
    name = "RES" if "RES" in wn.pattern_name_list else None
    if name is None:
        return np.arange(n) / n
    m = np.asarray(wn.get_pattern(name).multipliers, dtype=float)
    pstep = int(wn.options.time.pattern_timestep)
    at = (np.arange(n) * step // pstep) % len(m)
    rate = m[at]
    return np.r_[0.0, np.cumsum(rate)[:-1]] / rate.sum()


# -- drainage: SWMM ---------------------------------------------------------------------------
class _Rain:
    """The design storm as a rain series: 5-minute intensities (mm/h) from ``t0`` (local)."""

    def __init__(self, spec: ScenarioSpec, clock: _Clock) -> None:
        from citytwin.drainage.storms import chicago_hyetograph

        self.storm = spec.storm
        self.step_min = self.storm.step_minutes if self.storm else 5.0
        begin = clock.start_local - WARMUP
        if self.storm is None:
            self.t0 = begin
            self.intensity = np.zeros(2)
            self.lead = 0
            return
        _, mm_h = chicago_hyetograph(self.storm.return_period, self.storm.minutes, self.step_min)
        at = clock.local(self.storm.at)
        lead = math.ceil((at - begin) / pd.Timedelta(minutes=self.step_min))
        self.t0 = at - pd.Timedelta(minutes=self.step_min) * lead
        self.lead = lead
        self.intensity = mm_h

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(minutes from ``t0``, mm/h) with the dry steps before the storm."""
        values = np.r_[np.zeros(self.lead), self.intensity]
        return np.arange(len(values)) * self.step_min, values

    def depth(self, t_local_ns: np.ndarray) -> np.ndarray:
        """Cumulative rain (mm) from ``t0`` to local times (ns)."""
        minutes, mm_h = self.series()
        edges = np.r_[minutes, minutes[-1] + self.step_min]
        cum = np.r_[0.0, np.cumsum(mm_h * self.step_min / 60.0)]
        x = (t_local_ns - self.t0.value) / 60e9
        return np.interp(x, edges, cum)

    def readings(
        self, ids: np.ndarray, spec: ScenarioSpec, clock: _Clock, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tipping-bucket rain gauges: the rain of each sampling interval (whole 0.1 mm tips,
        each gauge catching a little more or less) as mm/h."""
        every = int(_timedelta(spec.sampling.get("rain_intensity", "5min"), "rain").total_seconds())
        t, which = _sample_times(len(ids), every, clock, rng)
        if not len(t):
            return _empty()
        catch = 1.0 + 0.04 * rng.standard_normal(len(ids))
        local = t + (clock.start_local.value - clock.start.value)
        tips_now = np.floor(self.depth(local) * catch[which] / RAIN_TIP_MM)
        tips_before = np.floor(self.depth(local - every * 10**9) * catch[which] / RAIN_TIP_MM)
        mm_h = (tips_now - tips_before) * RAIN_TIP_MM * 3600.0 / every
        return ids[which], t, mm_h


def _swmm_networks(store: Store) -> dict[str, tuple[str, str]]:
    """SWMM networks of the twin: id prefix → (document key, network)."""
    out = {}
    for key in store.documents("network/"):
        doc = store.get_document(key) or {}
        if doc.get("format") == "swmm":
            out[doc["id_prefix"]] = (key, doc.get("network", key))
    return out


def _drainage(
    store: Store, streams: pd.DataFrame, spec: ScenarioSpec, clock: _Clock, rain: _Rain
) -> dict[str, np.ndarray]:
    """Manhole freeboard and outfall / wet-well levels from SWMM runs of the networks that
    have level sensors."""
    from citytwin.formats.swmm import write_swmm

    props = streams["observed_property"].to_numpy(object)
    assets = streams["asset_id"].fillna("").astype(str).to_numpy(object)
    level = np.isin(props, ["depth_below_cover", "water_level"])
    out: dict[str, np.ndarray] = {}
    for prefix, (key, _network) in _swmm_networks(store).items():
        rows = np.flatnonzero(level & np.char.startswith(assets.astype(str), prefix))
        if not len(rows):
            continue
        names = sorted({a[len(prefix) :] for a in assets[rows]})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.inp"
            write_swmm(store, path, network_key=key)
            text = _swmm_scenario(path.read_text(), rain, clock)
            path.write_text(text)
            heads, rims = _swmm_heads(path, names, rain.t0, clock)
        col = {n: k for k, n in enumerate(names)}
        for r in rows:
            k = col[assets[r][len(prefix) :]]
            if props[r] == "depth_below_cover":
                out[streams["datastream_id"].iat[r]] = np.clip(rims[k] - heads[k], 0.0, None)
            else:
                out[streams["datastream_id"].iat[r]] = heads[k]
    return out


def _swmm_scenario(text: str, rain: _Rain, clock: _Clock) -> str:
    """The model's INP text with the scenario's rain and clock."""
    from citytwin.synth.drainage import RAIN_SERIES, with_storm

    if "[TIMESERIES]" in text and RAIN_SERIES in text:
        minutes, mm_h = rain.series()
        if len(minutes) < 2:
            minutes, mm_h = np.array([0.0, rain.step_min]), np.zeros(2)
        text = with_storm(text, minutes, mm_h)
    end = clock.start_local + pd.Timedelta(seconds=(clock.n + 1) * clock.step)
    start = rain.t0
    for k, v in (
        ("START_DATE", f"{start:%m/%d/%Y}"),
        ("START_TIME", f"{start:%H:%M:%S}"),
        ("REPORT_START_DATE", f"{start:%m/%d/%Y}"),
        ("REPORT_START_TIME", f"{start:%H:%M:%S}"),
        ("END_DATE", f"{end:%m/%d/%Y}"),
        ("END_TIME", f"{end:%H:%M:%S}"),
        (
            "REPORT_STEP",
            f"{clock.step // 3600:02d}:{clock.step // 60 % 60:02d}:{clock.step % 60:02d}",
        ),
    ):
        text = _set_option(text, k, v)
    return text


def _set_option(text: str, key: str, value: str) -> str:
    pattern = re.compile(rf"(?mi)^(\s*{key}\s+)\S+")
    if pattern.search(text):
        return pattern.sub(lambda m: m.group(1) + value, text, count=1)
    return re.sub(
        r"(?mi)^\[OPTIONS\][^\n]*\n", lambda m: f"{m.group(0)}{key:<17}{value}\n", text, count=1
    )


def _swmm_heads(
    path: Path, names: list[str], t0: pd.Timestamp, clock: _Clock
) -> tuple[np.ndarray, np.ndarray]:
    """Water surface (m) of the nodes ``names`` at the scenario's steps, and their rims
    (invert + full depth)."""
    from pyswmm import Nodes, Simulation

    heads = np.full((len(names), clock.n), np.nan)
    with Simulation(str(path)) as sim:
        sim.step_advance(clock.step)
        all_nodes = Nodes(sim)
        nodes = [all_nodes[n] for n in names]
        rims = np.array([n.invert_elevation + n.full_depth for n in nodes])
        first = clock.start_local
        for _ in sim:
            j = round((pd.Timestamp(sim.current_time) - first).total_seconds() / clock.step)
            if 0 <= j < clock.n:
                heads[:, j] = [n.head for n in nodes]
    heads = pd.DataFrame(heads.T).ffill().bfill().to_numpy().T
    return heads, rims


def _storm_manholes(
    sampled: tuple[np.ndarray, ...], manholes: set[str], storm_at: pd.Timestamp
) -> tuple[pd.Series, list[str]]:
    """Each manhole's least freeboard in the storm (its noise-free readings, m), and the
    manholes whose water rises at least ``LEVEL_RISE`` above its level before the storm."""
    ids, t, _, clean = sampled
    mine = np.isin(ids, sorted(manholes))
    frame = pd.DataFrame({"ds": ids[mine], "wet": t[mine] >= storm_at.value, "v": clean[mine]})
    least = frame[frame["wet"]].groupby("ds")["v"].min()
    before = frame[~frame["wet"]].groupby("ds")["v"].median().reindex(least.index)
    rise = before.fillna(least) - least
    return least.sort_values(), sorted(rise.index[rise >= LEVEL_RISE])


def _river_levels(
    store: Store, streams: pd.DataFrame, done: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """River and lake gauges at the water body's normal level (not modelled)."""
    rows = streams[
        (streams["observed_property"] == "water_level") & ~streams["datastream_id"].isin(list(done))
    ]
    if not len(rows):
        return {}
    bodies = store.query(
        Query("water_bodies", ids=sorted(set(rows["asset_id"].dropna())), columns=["water_level"])
    )
    level = dict(zip(bodies["id"], bodies["water_level"], strict=True))
    out = {}
    for ds, asset in zip(rows["datastream_id"], rows["asset_id"], strict=True):
        v = level.get(asset)
        if v is not None and np.isfinite(v):
            out[ds] = np.full(1, float(v))
    return out


# -- gas, meters --------------------------------------------------------------------------------
def _gas_device(store: Store, streams: pd.DataFrame, gas: GasLeak) -> str:
    detectors = streams[streams["observed_property"] == "gas_concentration"]
    if not len(detectors):
        raise InvalidInput("the twin has no gas detector datastreams for a leak", source="replay")
    things = detectors["thing_id"].astype(str)
    if gas.device is not None:
        if gas.device not in set(things):
            raise InvalidInput(
                f"{gas.device!r} is not a gas detector with a datastream",
                source="replay",
                feature=gas.device,
                hint=f"e.g. {things.iloc[0]}",
            )
        return gas.device
    if gas.near is None:
        return str(sorted(things)[0])
    if "x" not in detectors or "y" not in detectors:
        raise InvalidInput(
            "the datastreams have no locations (x, y) to find the detector near a place",
            source="replay",
            hint="give GasLeak(device=...) instead",
        )
    x, y = gas.near
    d = np.hypot(detectors["x"].to_numpy(float) - x, detectors["y"].to_numpy(float) - y)
    return str(things.iloc[int(np.nanargmin(d))])


def _gas_datastream(spec: ScenarioSpec, streams: pd.DataFrame) -> str | None:
    if spec.gas is None:
        return None
    pick = streams[
        (streams["thing_id"] == spec.gas.device)
        & (streams["observed_property"] == "gas_concentration")
    ]
    return str(pick["datastream_id"].iloc[0])


def _gas(
    ids: np.ndarray,
    leaking: str | None,
    spec: ScenarioSpec,
    clock: _Clock,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detectors in clean air read a small background; the leaking one a logistic rise through
    ``GAS_ALARM`` at the leak's time, a plateau, and a fall once the leak is stopped."""
    every = int(_timedelta(spec.sampling.get("gas_concentration", "1min"), "gas").total_seconds())
    t, which = _sample_times(len(ids), every, clock, rng)
    if not len(t):
        return _empty()
    mean, sigma = GAS_BACKGROUND
    v = np.clip(mean + sigma * rng.standard_normal(len(t)), 0.0, None)
    if spec.gas is not None and leaking is not None:
        g = spec.gas
        mine = ids[which] == leaking
        x = (t[mine] - clock.ts(g.at).value) / 60e9  # minutes from the alarm
        tau = g.rise_minutes
        shift = tau * math.log(g.peak / GAS_ALARM - 1.0)  # the rise's middle after ``at``
        stop = g.minutes

        def level(m: np.ndarray) -> np.ndarray:
            return g.peak / (1.0 + np.exp(-(m - shift) / tau))

        c = np.where(x <= stop, level(x), level(np.array(stop)) * np.exp(-(x - stop) / 5.0))
        v[mine] = v[mine] + c * (1.0 + 0.02 * rng.standard_normal(mine.sum()))
    return (
        ids[which],
        t,
        np.round(v / RESOLUTION["gas_concentration"]) * RESOLUTION["gas_concentration"],
    )


def _meters(
    ids: np.ndarray,
    day_use: np.ndarray | None,
    spec: ScenarioSpec,
    clock: _Clock,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smart meters: the cumulative register (m3), uploaded once a day at each meter's own time
    of day; a day's use (median 0.5 m3) follows the residential pattern."""
    if not len(ids):
        return _empty()
    every = int(_timedelta(spec.sampling.get("water_volume", "1D"), "meters").total_seconds())
    n = len(ids)
    phase = rng.integers(0, every, n)  # s after local midnight
    start0 = rng.uniform(20.0, 2000.0, n)  # the register when the scenario's year began
    daily = 0.5 * np.exp(0.6 * rng.standard_normal(n))
    use = day_use if day_use is not None else np.arange(86400 // clock.step) / (86400 // clock.step)
    base = clock.midnight_local - pd.Timedelta(days=365)
    first = clock.midnight_local - pd.Timedelta(days=1)
    days = math.ceil((clock.offset + clock.n * clock.step) / every) + 2
    local_t = first.value + np.arange(days)[:, None] * every * 10**9 + phase[None, :] * 10**9
    utc = local_t - (clock.start_local.value - clock.start.value)
    keep = (utc >= clock.start.value) & (utc < clock.end.value)
    d, which = np.nonzero(keep)
    t = utc[d, which]
    since = (local_t[d, which] - base.value) / 86400e9
    whole = np.floor(since)
    frac_step = ((since - whole) * len(use)).astype(int) % len(use)
    v = start0[which] + daily[which] * (whole + use[frac_step])
    return ids[which], t, np.round(v / RESOLUTION["water_volume"]) * RESOLUTION["water_volume"]


# -- sampling, noise, units ----------------------------------------------------------------------
def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array([], object), np.array([], np.int64), np.array([], float)


def _sample_times(
    n: int, every: int, clock: _Clock, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling times (UTC ns) of ``n`` devices every ``every`` s, each from its own phase;
    and which device each is."""
    if n == 0:
        return np.array([], np.int64), np.array([], np.int64)
    phase = rng.integers(0, every, n)
    total = clock.n * clock.step
    k = np.arange(math.ceil(total / every))
    off = phase[:, None] + k[None, :] * every
    keep = off < total
    which, kk = np.nonzero(keep)
    t = clock.start.value + off[which, kk].astype(np.int64) * 10**9
    return t, which


def _sample(
    series: dict[str, np.ndarray],
    streams: pd.DataFrame,
    spec: ScenarioSpec,
    clock: _Clock,
    rng: _Rngs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Readings of the engines' series at each device's sampling times, with noise; and the
    same without noise."""
    prop_of = dict(zip(streams["datastream_id"], streams["observed_property"], strict=True))
    ids = np.array(sorted(series), dtype=object)
    if not len(ids):
        return (*_empty(), np.array([], float))
    props = np.array([prop_of[i] for i in ids], object)
    sample_rng, noise_rng, flow_rng = rng.get("sample"), rng.get("noise"), rng.get("flow")
    out_i, out_t, out_v, out_c = [], [], [], []
    for prop in sorted(set(props)):
        sel = ids[props == prop]
        every = int(
            _timedelta(spec.sampling.get(prop, "5min"), f"sampling of {prop}").total_seconds()
        )
        t, which = _sample_times(len(sel), every, clock, sample_rng)
        j = (t - clock.start.value) // (clock.step * 10**9)
        grid = np.stack([np.broadcast_to(series[s], (clock.n,)) for s in sel])
        v = clean = grid[which, j].astype(float)
        if prop == "flow":  # demand's own short-term fluctuation (correlated over ~10 minutes)
            v = v * (
                1.0
                + DEMAND_FLUCTUATION
                * _ar1(len(sel), clock.n, 10 * 60 / clock.step, flow_rng)[which, j]
            )
        sigma_abs, sigma_rel = NOISE.get(prop, (0.0, 0.0))
        v = v + (sigma_abs + sigma_rel * np.abs(v)) * noise_rng.standard_normal(len(v))
        if prop in ("depth_below_cover",):
            v = np.clip(v, 0.0, None)
        res = RESOLUTION.get(prop)
        if res:
            v = np.round(v / res) * res
        out_i.append(sel[which])
        out_t.append(t)
        out_v.append(v)
        out_c.append(clean)
    return tuple(np.concatenate(x) for x in (out_i, out_t, out_v, out_c))  # type: ignore[return-value]


def _ar1(m: int, n: int, tau_steps: float, rng: np.random.Generator) -> np.ndarray:
    """``m`` stationary unit-variance AR(1) series of ``n`` steps, correlation time
    ``tau_steps``."""
    phi = math.exp(-1.0 / max(tau_steps, 1e-9))
    e = rng.standard_normal((m, n))
    out = np.empty((m, n))
    out[:, 0] = e[:, 0]
    scale = math.sqrt(1.0 - phi * phi)
    for k in range(1, n):
        out[:, k] = phi * out[:, k - 1] + scale * e[:, k]
    return out


def _to_units(ids: np.ndarray, values: np.ndarray, streams: pd.DataFrame) -> np.ndarray:
    """Values in the datastreams' units (engines give each property's canonical unit)."""
    from citytwin.warning.rules import UNITS

    s = streams.set_index("datastream_id")
    prop = s["observed_property"].reindex(ids).to_numpy(object)
    unit = s["unit"].reindex(ids).to_numpy(object)
    factor = np.ones(len(ids))
    for p, u in {(a, b) for a, b in zip(prop, unit, strict=True)}:
        canonical = OBSERVED_PROPERTIES[p].unit if p in OBSERVED_PROPERTIES else u
        if u is None or (isinstance(u, float) and np.isnan(u)) or u == canonical:
            continue
        a, b = UNITS.get(canonical), UNITS.get(u)
        if a is None or b is None or a[0] != b[0]:
            raise InvalidInput(
                f"datastreams of {p} in {u!r} can't be replayed (readings are made in {canonical})",
                source="replay",
                hint=f"provision them in {canonical}",
            )
        factor[(prop == p) & (unit == u)] = a[1] / b[1]
    return values * factor


# -- history ------------------------------------------------------------------------------------
def _history(
    profiles: Mapping[str, np.ndarray],
    response: Mapping[str, np.ndarray],
    spec: ScenarioSpec,
    clock: _Clock,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Normal readings of the weeks before the scenario (every ``HISTORY_STEP``) from the base
    run's daily profiles and a day-to-day demand level (city-wide and per datastream): flows
    scale with it, with the demand's fluctuation and the meter's noise; pressures (those with
    a ``response``) move with it, with the transmitter's noise."""
    times = pd.date_range(
        clock.start - pd.Timedelta(days=spec.history_days),
        clock.start,
        freq=HISTORY_STEP,
        inclusive="left",
    )
    local = times.tz_convert(clock.tz)
    sec = (local.hour * 3600 + local.minute * 60 + local.second).to_numpy()
    j = sec // clock.step
    day = (local.normalize().tz_localize(None) - clock.midnight_local).days.to_numpy()
    day = day - day.min()
    n_days = int(day.max()) + 1
    city_sigma, own_sigma = DAY_TO_DAY
    city = city_sigma * rng.standard_normal(n_days)[None, :]
    parts = []
    flows = np.array(sorted(set(profiles) - set(response)), dtype=object)
    if len(flows):
        level = 1.0 + city + own_sigma * rng.standard_normal((len(flows), n_days))
        prof = np.stack([profiles[i] for i in flows])  # (datastreams, steps of a day)
        v = prof[:, j] * level[:, day]
        v = v * (1.0 + DEMAND_FLUCTUATION * rng.standard_normal(v.shape))
        a, r = NOISE["flow"]
        v = v + (a + r * np.abs(v)) * rng.standard_normal(v.shape)
        parts.append((flows, np.round(v / RESOLUTION["flow"]) * RESOLUTION["flow"]))
    pressures = np.array(sorted(response), dtype=object)
    if len(pressures):
        level = 1.0 + city + own_sigma * rng.standard_normal((len(pressures), n_days))
        prof = np.stack([profiles[i] for i in pressures])
        slope = np.stack([response[i] for i in pressures])
        v = prof[:, j] + (level[:, day] - 1.0) * slope[:, j]
        v = v + NOISE["pressure"][0] * rng.standard_normal(v.shape)
        parts.append((pressures, np.round(v / RESOLUTION["pressure"]) * RESOLUTION["pressure"]))
    if not parts:
        return pd.DataFrame(
            {
                "datastream_id": pd.Series([], dtype=object),
                "phenomenon_time": pd.Series([], dtype="datetime64[ns, UTC]"),
                "result": pd.Series([], dtype=float),
            }
        )
    ids = np.concatenate([p[0] for p in parts])
    return pd.DataFrame(
        {
            "datastream_id": np.repeat(ids, len(times)),
            "phenomenon_time": np.tile(times, len(ids)),
            "result": np.concatenate([p[1].ravel() for p in parts]),
        }
    )


# -- replay ---------------------------------------------------------------------------------------
@dataclass
class Sent:
    """What a sink got acknowledged for one batch (``inserted`` / ``duplicates`` where the sink
    can tell) and the reasons of refused readings."""

    accepted: int
    rejected: int = 0
    inserted: int | None = None
    duplicates: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)


class Sink(Protocol):
    """Where replayed batches go."""

    def send(self, frame: pd.DataFrame) -> Sent: ...

    def close(self) -> None: ...


class IngestorSink:
    """Straight into an ``Ingestor`` (source ``replay``), waiting for each commit."""

    def __init__(self, ingestor: Any, source: str = "replay") -> None:
        self.ingestor = ingestor
        self.source = source

    def send(self, frame: pd.DataFrame) -> Sent:
        res = self.ingestor.ingest(frame, source=self.source)
        reasons = Counter(res.rejected["reason"].astype(str)) if len(res.rejected) else Counter()
        return Sent(
            res.inserted + res.duplicates, len(res.rejected), res.inserted, res.duplicates, reasons
        )

    def close(self) -> None:
        return None


class HttpSink:
    """``POST <base_url>/v1.1/CreateObservations`` (the DataArray extension), retrying on
    connection errors and 5xx answers; a 4xx answer raises with the server's message."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import httpx

        self.url = base_url.rstrip("/") + "/v1.1/CreateObservations"
        self.client = client or httpx.Client(timeout=timeout)
        self._own = client is None
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep

    def send(self, frame: pd.DataFrame) -> Sent:
        import httpx

        from citytwin.sensing.payloads import encode_data_array

        body = encode_data_array(frame)
        headers = {"content-type": "application/json"}
        for attempt in range(self.retries + 1):
            try:
                r = self.client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ConnectionError(
                        f"POST {self.url} failed {attempt + 1} times: {exc}"
                    ) from exc
                self.sleep(self.backoff * 2**attempt)
                continue
            if r.status_code >= 500 and attempt < self.retries:
                self.sleep(self.backoff * 2**attempt)
                continue
            if r.status_code >= 400:
                why = _server_message(r)
                raise InvalidInput(
                    f"{self.url} refused {len(frame)} readings: HTTP {r.status_code} {why}",
                    source="replay",
                    hint="readings more than a few minutes in the future are refused: start the "
                    "scenario earlier"
                    if r.status_code == 422
                    else None,
                )
            answers = r.json() if r.content else []
            errors = [
                a[len("error: ") :]
                for a in answers
                if isinstance(a, str) and a.startswith("error:")
            ]
            return Sent(len(frame) - len(errors), len(errors), reasons=Counter(errors))
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._own:
            self.client.close()


def _server_message(r: Any) -> str:
    try:
        doc = r.json()
    except ValueError:
        return r.text[:500]
    if isinstance(doc, dict):
        return " — ".join(str(doc[k]) for k in ("error", "hint") if doc.get(k))
    if isinstance(doc, list):
        errs = Counter(a for a in doc if isinstance(a, str) and a.startswith("error:"))
        return "; ".join(f"{n} × {e}" for e, n in errs.most_common(3))
    return str(doc)[:500]


class MqttSink:
    """DataArray documents on ``v1.1/CreateObservations`` at QoS 1, each batch waiting for the
    broker's PUBACKs (``citytwin.sensing.mqtt.publish_frames``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        client_id: str | None = None,
        **options: Any,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.options = options

    def send(self, frame: pd.DataFrame) -> Sent:
        from citytwin.sensing.mqtt import publish_frames

        acked = publish_frames(
            frame, self.host, self.port, bulk=True, qos=1, client_id=self.client_id, **self.options
        )
        return Sent(acked)

    def close(self) -> None:
        return None


@dataclass
class ReplayReport:
    """What a replay did: batches and readings sent, acknowledged and refused (``inserted`` /
    ``duplicates`` when the sink can tell), the reasons, wall-clock seconds, and how far the
    sends fell behind their pace at most (s)."""

    batches: int = 0
    readings: int = 0
    accepted: int = 0
    rejected: int = 0
    inserted: int | None = None
    duplicates: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    max_lag: float = 0.0


def replay(
    scenario: Scenario,
    sink: Sink,
    *,
    speedup: float = 60.0,
    every: str | pd.Timedelta = "1min",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int, pd.Timestamp], None] | None = None,
) -> ReplayReport:
    """Send the scenario's readings to ``sink`` in windows of ``every``, each when its window
    has passed at ``speedup`` times real time (``math.inf``: as fast as the sink takes them).
    ``progress(sent, total, scenario time)`` hears of each batch."""
    if not speedup > 0:
        raise InvalidInput(f"speedup must be > 0, not {speedup}", source="replay")
    report = ReplayReport()
    total = len(scenario.observations)
    t0 = clock()
    try:
        for end, frame in scenario.windows(every):
            if math.isfinite(speedup):
                due = t0 + (end - scenario.start).total_seconds() / speedup
                wait = due - clock()
                if wait > 0:
                    sleep(wait)
                else:
                    report.max_lag = max(report.max_lag, -wait)
            sent = sink.send(frame)
            report.batches += 1
            report.readings += len(frame)
            report.accepted += sent.accepted
            report.rejected += sent.rejected
            report.reasons.update(sent.reasons)
            if sent.inserted is not None:
                report.inserted = (report.inserted or 0) + sent.inserted
                report.duplicates = (report.duplicates or 0) + (sent.duplicates or 0)
            if progress is not None:
                progress(report.readings, total, end)
    finally:
        sink.close()
    report.seconds = clock() - t0
    return report


__all__ = [
    "SAMPLING",
    "TIMEZONE",
    "Burst",
    "Expected",
    "GasLeak",
    "HttpSink",
    "IngestorSink",
    "MqttSink",
    "ReplayReport",
    "Scenario",
    "ScenarioSpec",
    "Sent",
    "Sink",
    "Storm",
    "build_scenario",
    "pick_burst_link",
    "replay",
]

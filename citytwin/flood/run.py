"""The run loop shared by the surface solvers: sources, adaptive time steps, the mass balance of
every step, the flood's extremes, snapshots and hot starts. Pure: arrays in, results out.

A solver (``inertial`` — local inertia, fast, for pluvial flooding; ``swe`` — a well-balanced
finite-volume shallow-water solver with wetting and drying, for dam breaks and supercritical
flow) only moves water between cells and across the grid's sides; everything that adds or
removes water (rain, inflows, the drains, infiltration) is decided here, between its steps
(operator splitting), so each solver conserves what it is given and the balance is checked
the same way for both. Uniform rain alone is handed to the solver with its step, which adds
it in a pass it makes anyway (local inertia: in its continuity) rather than in one more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numba
import numpy as np

from citytwin.flood.domain import ConstantLoss, Domain, Inflow, Rainfall, State

WET = 0.01
"""Depth (m) from which a cell counts as flooded for arrival time and duration, by default."""
SERIAL_BELOW = 65_536
"""Grids with fewer cells are tracked on one thread (a parallel region costs more than its
work there)."""
HAZARD_DEBRIS = 0.5
"""The debris factor of the hazard rating (Defra/EA FD2320: 0.5 for depths up to 0.25 m
or in urban areas; the rating is d·(v + 0.5) + DF)."""


class Solver(Protocol):
    """What the run loop needs of a surface solver."""

    name: str

    def initial_arrays(self, domain: Domain, h: np.ndarray) -> dict[str, np.ndarray]:
        """The solver's own state arrays for water ``h`` at rest."""
        ...

    def max_dt(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        deepest: float | None = None,
    ) -> float:
        """The longest stable step (s) from this state (inf where nothing can move);
        ``deepest`` the deepest water on the active cells of ``h`` where the caller knows it
        (the run loop tracks it), to spare a pass over the grid."""
        ...

    def step(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        dt: float,
        levels: np.ndarray,
        speed: np.ndarray | None = None,
        rain: float = 0.0,
    ) -> float:
        """Move the water by ``dt`` seconds, in place (``levels``: the held level per side,
        north, south, west, east, NaN where none); the net volume (m³) that left the grid
        through its sides (negative when more came in). ``speed``, where given, receives the
        flow speed at the end of the step (as ``speed()`` gives it). ``rain``: the depth (m)
        of uniform rain that falls on every active cell during the step, which the solver adds
        where its scheme has it (a source of the continuity, or before the step)."""
        ...

    def speed(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The flow speed (m/s) in each cell (into ``out`` where given)."""
        ...


class Exchange(Protocol):
    """A model the surface trades water with (the drains), synchronised at its own steps."""

    def sync(self, t: float, h: np.ndarray, moved: np.ndarray) -> tuple[float, np.ndarray]:
        """Called at ``t`` with the surface's depths and the volume (m³ per cell, + into the
        surface) that actually moved since the last call; returns the time of the next call and
        the exchange discharges (m³/s per cell, + into the surface) to apply until then."""
        ...


def solver_for(name: str) -> Solver:
    """The solver called ``name``: ``inertial`` or ``swe``."""
    if name == "inertial":
        from citytwin.flood.inertial import LocalInertia

        return LocalInertia()
    if name == "swe":
        from citytwin.flood.swe import ShallowWater

        return ShallowWater()
    raise ValueError(f"unknown solver {name!r}: inertial (local inertia) or swe (shallow water)")


@dataclass
class MassBalance:
    """The water budget after every step (m³, cumulative from the start): what the grid holds,
    what came in (rain, inflows, the net exchange with the drains), what left (losses, the
    sides), and the error: held − (initial + in − out)."""

    t: list[float] = field(default_factory=list)
    volume: list[float] = field(default_factory=list)
    rain: list[float] = field(default_factory=list)
    inflow: list[float] = field(default_factory=list)
    exchange: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    outflow: list[float] = field(default_factory=list)
    error: list[float] = field(default_factory=list)
    initial: float = 0.0

    @property
    def relative_error(self) -> float:
        """The largest error of any step relative to the larger of the water held at the start
        and the water put in."""
        if not self.error:
            return 0.0
        put = max(self.rain) + max(self.inflow) + max(map(abs, self.exchange))
        scale = max(self.initial, put + max(map(abs, self.outflow)))  # sides may bring water
        return max(map(abs, self.error)) / scale if scale > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """The final figures."""
        if not self.t:
            return {}
        return {
            "initial_m3": self.initial,
            "final_m3": self.volume[-1],
            "rain_m3": self.rain[-1],
            "inflow_m3": self.inflow[-1],
            "exchange_m3": self.exchange[-1],
            "losses_m3": self.losses[-1],
            "outflow_m3": self.outflow[-1],
            "error_m3": self.error[-1],
            "relative_error": self.relative_error,
        }


@dataclass
class Result:
    """A run's final ``state`` (continue from it), the flood's extremes over the run (per cell:
    ``max_depth`` m, ``max_speed`` m/s, ``max_hazard`` d·(v + 0.5) + debris factor where wet,
    ``first_wet`` s (NaN: never deeper than ``threshold``), ``wet_duration`` s deeper than it),
    the ``balance``, the number of ``steps`` and the ``snapshots`` (time, depth) asked for."""

    state: State
    max_depth: np.ndarray
    max_speed: np.ndarray
    max_hazard: np.ndarray
    first_wet: np.ndarray
    wet_duration: np.ndarray
    threshold: float
    balance: MassBalance
    steps: int
    snapshots: list[tuple[float, np.ndarray]]

    @property
    def cell_updates(self) -> int:
        """Active cells times steps: the work done."""
        return int(self.steps * np.count_nonzero(np.isfinite(self.max_depth)))


def initial_state(
    domain: Domain, solver: Solver, *, level: float | np.ndarray | None = None, t: float = 0.0
) -> State:
    """Water at rest: up to ``level`` (m, a scalar or per cell) where the bed is below it, else
    dry."""
    h = np.zeros(domain.shape)
    if level is not None:
        depth = np.maximum(np.asarray(level, dtype=float) - domain.zb, 0.0)
        h = np.where(domain.active, depth, 0.0)
    return State(t, h, solver.name, solver.initial_arrays(domain, h), np.zeros(domain.shape))


def simulate(
    domain: Domain,
    duration: float,
    *,
    solver: str | Solver = "inertial",
    rain: Rainfall | None = None,
    inflows: Sequence[Inflow] = (),
    state: State | None = None,
    exchange: Exchange | None = None,
    threshold: float = WET,
    snapshot_every: float | None = None,
    max_step: float = 60.0,
    on_step: Callable[[float, float], None] | None = None,
) -> Result:
    """Run the surface model for ``duration`` seconds from ``state`` (default: dry, at t = 0)
    with ``rain``, ``inflows`` and an ``exchange`` with the drains; ``on_step(t, dt)`` hears
    each step (progress)."""
    solver = solver_for(solver) if isinstance(solver, str) else solver
    if state is None:
        state = initial_state(domain, solver)
    elif state.solver != solver.name:
        raise ValueError(
            f"the state was left by the {state.solver!r} solver, not {solver.name!r}:"
            " continue a run with the solver that made it"
        )
    if state.h.shape != domain.shape:
        raise ValueError(f"the state's grid {state.h.shape} is not the domain's {domain.shape}")
    state = state.copy()
    h, arrays, active = state.h, state.arrays, domain.active
    area = domain.cell_area
    t0 = t = state.t
    end = t0 + duration
    shape = domain.shape
    max_depth = np.where(active, h, np.nan)
    max_speed = np.where(active, 0.0, np.nan)
    max_hazard = np.where(active, 0.0, np.nan)
    first_wet = np.where(active & (h > threshold), t0, np.nan)
    wet_duration = np.where(active, 0.0, np.nan)
    balance = MassBalance(initial=float(h[active].sum() * area))
    totals = dict.fromkeys(("rain", "inflow", "exchange", "losses", "outflow"), 0.0)
    snapshots: list[tuple[float, np.ndarray]] = []
    next_snapshot = t0 + snapshot_every if snapshot_every else np.inf
    inflow_cells = [(np.array([c[0] for c in f.cells]), np.array([c[1] for c in f.cells]))
                    for f in inflows]
    for f, (rows, cols) in zip(inflows, inflow_cells, strict=True):
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        if not inside.all() or not active[rows, cols].all():
            raise ValueError(f"an inflow enters at {f.cells}: every cell must be on the grid and"
                             " open (not outside the bed or a building)")
    moved = np.zeros(shape)
    speed = np.zeros(shape)  # each step's, in place
    deepest: float | None = None  # on the grid, as the last step left it (None: not known)
    next_sync = t
    trading, rates = np.empty(0, np.intp), np.empty(0)  # the exchanging cells, their rates
    steps = 0
    n_active = int(active.sum())
    loss_params = _loss_arrays(domain)
    threads = numba.get_num_threads()
    serial = threads > 1 and active.size < SERIAL_BELOW
    while t < end - 1e-9:
        if exchange is not None and t >= next_sync - 1e-9:
            next_sync, exchange_q = exchange.sync(t, h, moved)
            moved = np.zeros(shape)
            # only the inlets trade water: work on those cells alone until the next sync
            trading = np.flatnonzero(exchange_q)
            rates = exchange_q.reshape(-1)[trading]
        stable = solver.max_dt(domain, h, arrays, deepest)
        if not stable > 0:  # NaN or 0 (inf: nothing moves)
            raise FloatingPointError(f"no stable time step at t = {t:.3f} s (the state blew up)")
        stable = min(stable, max_step)
        until = min(end, next_snapshot, next_sync if exchange is not None else np.inf) - t
        # the steps to the next stop (sync, snapshot, end) evenly sized: a sliver of a step
        # before each stop sets off a checkerboard in local inertia (its damping is per step,
        # not per second: measured in a 2-cell canal at 5 m, coupled at 1-s syncs)
        dt = until / math.ceil(until / stable - 1e-9) if until > stable else until
        if inflows:  # a step's inflow may deepen a cell enough to need a shorter step
            probe = h.copy()
            for f, (rows, cols) in zip(inflows, inflow_cells, strict=True):
                np.add.at(probe, (rows, cols), f.q.mean(t, t + dt) * dt / len(rows) / area)
            dt = min(dt, solver.max_dt(domain, probe, arrays, None))
        # sources and sinks (the water the solver is then given to move); uniform rain goes
        # to the solver, which adds it in its own pass over the grid
        uniform = 0.0
        if rain is not None:
            r = rain.rate(t, t + dt) * dt
            if np.ndim(r):
                r = np.where(active, r, 0.0)
                h += r
                totals["rain"] += float(r.sum()) * area
            elif r:
                uniform = float(r)
                totals["rain"] += uniform * n_active * area
        for f, (rows, cols) in zip(inflows, inflow_cells, strict=True):
            vol = f.q.mean(t, t + dt) * dt
            np.add.at(h, (rows, cols), vol / len(rows) / area)
            totals["inflow"] += vol
        if len(trading):
            flat_h, flat_moved = h.reshape(-1), moved.reshape(-1)  # views: both C-ordered
            dh = np.maximum(rates * dt / area, -flat_h[trading])  # no more leaves than is there
            flat_h[trading] += dh
            flat_moved[trading] += dh * area
            totals["exchange"] += float(dh.sum()) * area
        if loss_params is not None:
            totals["losses"] += _infiltrate(h, state.infiltrated, active, *loss_params, dt) * area
        totals["outflow"] += solver.step(domain, h, arrays, dt, domain.levels(t + dt), speed,
                                         uniform)  # fmt: skip
        t += dt
        steps += 1
        if serial:
            numba.set_num_threads(1)
        deepest, held = _track(h, speed, active, t, dt, threshold, HAZARD_DEBRIS,
                               max_depth, max_speed, max_hazard, first_wet, wet_duration)
        if serial:
            numba.set_num_threads(threads)
        volume = held * area
        expected = balance.initial + totals["rain"] + totals["inflow"] + totals["exchange"]
        expected -= totals["losses"] + totals["outflow"]
        balance.t.append(t)
        balance.volume.append(volume)
        for key, value in totals.items():
            getattr(balance, key).append(value)
        balance.error.append(volume - expected)
        if t >= next_snapshot - 1e-9:
            snapshots.append((t, h.copy()))
            next_snapshot += snapshot_every  # type: ignore[operator]
        if on_step is not None:
            on_step(t, dt)
    if exchange is not None:  # hand the last moves over
        exchange.sync(t, h, moved)
    state.t = t
    return Result(state, max_depth, max_speed, max_hazard, first_wet, wet_duration, threshold,
                  balance, steps, snapshots)


# reordered sums (the held depth) and fused multiply-adds; not "no NaNs": the extremes of
# inactive cells are NaN and first_wet is NaN until a cell first floods
_TRACK_MATH = {"contract", "arcp", "nsz", "reassoc"}


@numba.njit(parallel=True, cache=True, fastmath=_TRACK_MATH)
def _track(h, speed, active, t, dt, threshold, debris,
           max_depth, max_speed, max_hazard, first_wet, wet_duration):  # fmt: skip
    """Update the extremes with the state at the end of a step of ``dt`` ending at ``t``; the
    deepest water on the grid now (for the next step's length) and the depth summed over the
    active cells (the volume held over the cell area).

    Branch-free, and a row in two loops, one per row function (the row stays in cache between
    them): every cell's extremes are written back, changed or not, as whether a depth or
    speed beats its maximum changes from cell to cell while water rises and spreads (measured
    at 1 M cells in a storm: 3.5 ms a pass with branches, about 2.6 ms without); in one loop
    writing five arrays the compiler vectorised little (2.26 ms a pass, 1.55 ms in two)."""
    ny = h.shape[0]
    tops = np.zeros(ny)
    sums = np.zeros(ny)
    for i in numba.prange(ny):
        tops[i], sums[i] = _track_depth_row(h[i], active[i], max_depth[i])
        _track_flow_row(h[i], speed[i], active[i], t, dt, threshold, debris, max_speed[i],
                        max_hazard[i], first_wet[i], wet_duration[i])  # fmt: skip
    return tops.max(), sums.sum()


@numba.njit(cache=True, inline="always", fastmath=_TRACK_MATH)
def _track_depth_row(h, active, max_depth):
    """A row's deepest water: its maximum updated; the deepest and the summed depth now."""
    top = 0.0
    held = 0.0
    for j in range(h.shape[0]):
        d = h[j] if active[j] else 0.0
        held += d
        top = max(top, d)
        max_depth[j] = max(max_depth[j], d)  # NaN (inactive) stays NaN
    return top, held


@numba.njit(cache=True, inline="always", fastmath=_TRACK_MATH)
def _track_flow_row(h, speed, active, t, dt, threshold, debris,
                    max_speed, max_hazard, first_wet, wet_duration):  # fmt: skip
    """A row's extremes of the cells wet now: speed, hazard, first time wet, time wet."""
    for j in range(h.shape[0]):
        d = h[j]
        wet = active[j] & (d > threshold)
        v = speed[j]
        was = max_speed[j]
        max_speed[j] = v if wet & (v > was) else was
        hazard = d * (v + 0.5) + debris
        was = max_hazard[j]
        max_hazard[j] = hazard if wet & (hazard > was) else was
        was = first_wet[j]
        first_wet[j] = t if wet & math.isnan(was) else was
        wet_duration[j] += dt if wet else 0.0


def _loss_arrays(domain: Domain) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The losses as per-cell arrays for ``_infiltrate``: (rate or ks, psi·dtheta, Green–Ampt?)."""
    losses = domain.losses
    if losses is None:
        return None
    shape = domain.shape
    if isinstance(losses, ConstantLoss):
        rate = np.ascontiguousarray(np.broadcast_to(np.asarray(losses.rate, float), shape))
        return rate, np.zeros(shape), False
    ks = np.ascontiguousarray(np.broadcast_to(np.asarray(losses.ks, float), shape))
    suction = np.asarray(losses.psi, float) * np.asarray(losses.dtheta, float)
    return ks, np.ascontiguousarray(np.broadcast_to(suction, shape)), True


@numba.njit(parallel=True, cache=True)
def _infiltrate(h, infiltrated, active, rate, suction, green_ampt, dt):
    """Take the losses of a step of ``dt`` from the water (no more than a cell holds); the
    depth taken in all."""
    ny, nx = h.shape
    rows = np.zeros(ny)
    for i in numba.prange(ny):
        acc = 0.0
        for j in range(nx):
            if active[i, j] and h[i, j] > 0.0 and rate[i, j] > 0.0:
                cap = _capacity(green_ampt, infiltrated[i, j], rate[i, j], suction[i, j], dt)
                take = min(cap, h[i, j])
                h[i, j] -= take
                infiltrated[i, j] += take
                acc += take
        rows[i] = acc
    return rows.sum()


@numba.njit(cache=True, inline="always")
def _capacity(green_ampt: bool, f0: float, rate: float, suction: float, dt: float) -> float:
    """What a wet cell could lose in ``dt``: a constant ``rate``, or Green–Ampt (``rate`` its
    ks) integrated over the step."""
    if green_ampt:
        return _green_ampt(max(f0, 1e-9), rate, suction, dt)
    return rate * dt


@numba.njit(cache=True, inline="always")
def _green_ampt(f0: float, ks: float, s: float, dt: float) -> float:
    """The depth Green–Ampt infiltrates in ``dt`` after ``f0``: Newton on its implicit form,
    until a step moves less than a nanometre (two or three steps at a surface model's
    steps; six at most)."""
    f1 = f0 + ks * dt
    for _ in range(6):
        r = f1 - f0 - s * math.log((s + f1) / (s + f0)) - ks * dt
        dr = 1.0 - s / (s + f1)
        if dr <= 0.0:
            break
        move = r / dr
        f1 = max(f1 - move, f0)
        if abs(move) < 1e-9:
            break
    return f1 - f0

"""What a surface flood run is made of: the grid (``Domain``), its boundaries, its losses, the
water put into it (``Rainfall``, ``Inflow``) and the water on it (``State``). Pure data and
small pure functions, no I/O.

Conventions, shared by every solver:

- Arrays are ``(ny, nx)`` rasters, row 0 the northern edge (as a GeoTIFF): ``x`` runs along the
  columns (east), ``y`` along the rows (south); cells are squares of side ``dx`` metres.
- ``z`` is the bed elevation (m); water depth ``h`` (m) and water level ``eta = z + h``.
- A cell is *active* when its ``z`` is finite and it is not ``blocked`` (a building: a wall to
  the water). Inactive cells hold no water and pass none.
- Rates are SI: rain and losses in m/s, discharges in m³/s, unit discharges in m²/s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

G = 9.81
"""Gravitational acceleration (m/s²)."""
SIDES = ("north", "south", "west", "east")
MM_PER_H = 1.0 / 3.6e6
"""m/s per mm/h."""


# -- time series --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """A step function of time: ``values[i]`` from ``times[i]`` (s) to ``times[i + 1]`` (the last
    value holds on; before the first time the first value holds)."""

    times: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        t = np.asarray(self.times, dtype=float)
        v = np.asarray(self.values, dtype=float)
        if t.ndim != 1 or len(t) == 0 or len(t) != len(v):
            raise ValueError("a series needs as many times as values (at least one)")
        if np.any(np.diff(t) <= 0):
            raise ValueError("the times of a series must increase")
        object.__setattr__(self, "times", t)
        object.__setattr__(self, "values", v)
        # the integral up to each time (asked for at every step of a run)
        object.__setattr__(
            self, "_integrals", np.concatenate([[0.0], np.cumsum(np.diff(t) * v[:-1])])
        )

    @classmethod
    def constant(cls, value: float) -> Series:
        return cls(np.array([0.0]), np.array([float(value)]))

    def at(self, t: float) -> float:
        """The value at time ``t``."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return float(self.values[max(i, 0)])

    def mean(self, t0: float, t1: float) -> float:
        """The mean value over ``[t0, t1]`` (exact for the step function)."""
        if t1 <= t0:
            return self.at(t0)
        return (self.integral(t1) - self.integral(t0)) / (t1 - t0)

    def integral(self, t: float) -> float:
        """The integral of the series from the first time to ``t`` (0 before it)."""
        if t <= self.times[0]:
            return 0.0
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return float(self._integrals[i] + (t - self.times[i]) * self.values[i])

    def next_change(self, t: float) -> float:
        """The first time after ``t`` at which the value changes (inf if none)."""
        i = int(np.searchsorted(self.times, t, side="right"))
        return float(self.times[i]) if i < len(self.times) else np.inf


# -- boundaries ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Boundary:
    """What happens at one side of the grid: ``closed`` (a wall), ``open`` (free outflow at
    critical depth: nothing comes in) or ``level`` (a water level held there, ``level`` a
    series in m: a river or a storm-surge stage; water flows in or out)."""

    kind: Literal["closed", "open", "level"] = "closed"
    level: Series | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("closed", "open", "level"):
            raise ValueError(f"unknown boundary kind {self.kind!r}: closed, open or level")
        if (self.kind == "level") != (self.level is not None):
            raise ValueError("a 'level' boundary needs a level series, and only it")

    @classmethod
    def fixed_level(cls, level: float) -> Boundary:
        return cls("level", Series.constant(level))


# -- losses -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConstantLoss:
    """Infiltration at a constant rate (m/s; a scalar or per cell) while there is water."""

    rate: float | np.ndarray


@dataclass(frozen=True)
class GreenAmpt:
    """Green–Ampt infiltration: capacity ``f = ks (1 + psi · dtheta / F)`` with ``F`` the depth
    infiltrated so far (in ``State.infiltrated``). ``ks`` saturated hydraulic conductivity
    (m/s), ``psi`` wetting-front suction head (m), ``dtheta`` moisture deficit (-): scalars or
    per cell (e.g. from land cover; sealed surfaces ``ks = 0``)."""

    ks: float | np.ndarray
    psi: float | np.ndarray
    dtheta: float | np.ndarray


Losses = ConstantLoss | GreenAmpt | None


# -- water put in -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rainfall:
    """Rain on the grid: a uniform ``series`` (m/s) or ``grids`` ``(nt, ny, nx)`` (m/s) from
    ``times`` (s) on (each held until the next), e.g. radar or a forecast."""

    series: Series | None = None
    times: np.ndarray | None = None
    grids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.series is None) == (self.grids is None):
            raise ValueError("rain is either a uniform series or gridded, not both")
        if self.grids is not None:
            t = np.asarray(self.times, dtype=float)
            if self.grids.ndim != 3 or len(t) != len(self.grids) or np.any(np.diff(t) <= 0):
                raise ValueError("gridded rain needs (nt, ny, nx) grids and nt increasing times")
            object.__setattr__(self, "times", t)

    @classmethod
    def uniform(cls, times_s: Sequence[float], mm_per_h: Sequence[float]) -> Rainfall:
        """A hyetograph: ``mm_per_h[i]`` from ``times_s[i]`` on (0 after a last 0)."""
        return cls(Series(np.asarray(times_s), np.asarray(mm_per_h) * MM_PER_H))

    def rate(self, t0: float, t1: float) -> float | np.ndarray:
        """The mean rain rate (m/s) over ``[t0, t1]``: a scalar or a grid."""
        if self.series is not None:
            return self.series.mean(t0, t1)
        assert self.times is not None and self.grids is not None
        i = int(np.searchsorted(self.times, t0, side="right")) - 1
        return self.grids[max(i, 0)]

    def next_change(self, t: float) -> float:
        times = self.series.times if self.series is not None else self.times
        i = int(np.searchsorted(times, t, side="right"))
        return float(times[i]) if i < len(times) else np.inf

    def total(self, t: float) -> float | np.ndarray:
        """The rain depth (m) from 0 to ``t``."""
        if self.series is not None:
            return self.series.integral(t)
        assert self.times is not None and self.grids is not None
        edges = np.append(self.times, max(t, self.times[-1]))
        widths = np.clip(np.minimum(edges[1:], t) - edges[:-1], 0, None)
        return np.tensordot(widths, self.grids, axes=1)


@dataclass(frozen=True)
class Inflow:
    """A discharge hydrograph (``q``: m³/s) entering at ``cells`` (``(row, col)`` pairs: one for
    a point inflow, several for a line, shared equally)."""

    cells: tuple[tuple[int, int], ...]
    q: Series

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError("an inflow needs at least one cell")


# -- the grid -----------------------------------------------------------------------------------
@dataclass
class Domain:
    """The grid a flood runs on.

    ``z`` bed elevation (NaN: outside), ``dx`` cell size (m), ``manning`` Manning's n (s/m^⅓,
    scalar or per cell: roads smoother than gardens), ``blocked`` cells are walls (buildings),
    ``boundaries`` per side (default closed), ``losses`` infiltration.
    """

    z: np.ndarray
    dx: float
    manning: float | np.ndarray = 0.03
    blocked: np.ndarray | None = None
    boundaries: dict[str, Boundary] = field(default_factory=dict)
    losses: Losses = None

    def __post_init__(self) -> None:
        self.z = np.ascontiguousarray(self.z, dtype=np.float64)
        if self.z.ndim != 2 or min(self.z.shape) < 2:
            raise ValueError(f"the bed must be a grid of 2 x 2 cells or more, not {self.z.shape}")
        if not self.dx > 0:
            raise ValueError("the cell size must be > 0 m")
        unknown = set(self.boundaries) - set(SIDES)
        if unknown:
            raise ValueError(f"unknown sides {sorted(unknown)}: use {', '.join(SIDES)}")
        n = np.broadcast_to(np.asarray(self.manning, dtype=np.float64), self.z.shape)
        if np.any(n[np.isfinite(self.z)] < 0):
            raise ValueError("Manning's n must be >= 0")
        self.n = np.array(n, dtype=np.float64, order="C")  # writable: one kernel signature
        blocked = np.zeros(self.z.shape, bool) if self.blocked is None else self.blocked
        if blocked.shape != self.z.shape:
            raise ValueError("'blocked' must have the shape of the bed")
        self.active = np.isfinite(self.z) & ~blocked
        self.zb = np.where(self.active, self.z, 0.0)  # the bed with inactive cells at 0
        self.cell_area = self.dx * self.dx

    @property
    def shape(self) -> tuple[int, int]:
        return self.z.shape  # type: ignore[return-value]

    def boundary(self, side: str) -> Boundary:
        return self.boundaries.get(side, Boundary())

    def levels(self, t: float) -> np.ndarray:
        """The held water level per side (north, south, west, east) at ``t``; NaN where the side
        holds none."""
        out = np.full(4, np.nan)
        for k, side in enumerate(SIDES):
            b = self.boundary(side)
            if b.kind == "level":
                assert b.level is not None
                out[k] = b.level.at(t)
        return out

    def side_kinds(self) -> np.ndarray:
        """Per side (north, south, west, east): 0 closed, 1 open, 2 level."""
        code = {"closed": 0, "open": 1, "level": 2}
        return np.array([code[self.boundary(s).kind] for s in SIDES], dtype=np.int64)


@dataclass
class State:
    """The water on the grid at time ``t`` (s): depth ``h`` and the solver's own arrays
    (discharges), which only that solver reads; ``infiltrated`` depth so far (Green–Ampt's
    ``F``). A state saved after a run continues it (a hot start)."""

    t: float
    h: np.ndarray
    solver: str
    arrays: dict[str, np.ndarray]
    infiltrated: np.ndarray

    def copy(self) -> State:
        return State(
            self.t,
            self.h.copy(),
            self.solver,
            {k: v.copy() for k, v in self.arrays.items()},
            self.infiltrated.copy(),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The state as named arrays (for ``numpy.savez`` or a store)."""
        out = {"t": np.array(self.t), "h": self.h, "infiltrated": self.infiltrated,
               "solver": np.array(self.solver)}  # fmt: skip
        out.update({f"q_{k}": v for k, v in self.arrays.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> State:
        """The inverse of ``to_arrays``."""
        return cls(
            float(arrays["t"]),
            np.array(arrays["h"], dtype=np.float64),
            str(arrays["solver"]),
            {k[2:]: np.array(v, dtype=np.float64) for k, v in arrays.items() if k.startswith("q_")},
            np.array(arrays["infiltrated"], dtype=np.float64),
        )

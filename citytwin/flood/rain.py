"""Rain for a flood run, from a design storm, a rain gauge's readings or a sequence of grids
(radar, a forecast). Pure: arrays in, ``Rainfall`` out (reading files is ``formats.rainfall``).
"""

from __future__ import annotations

import numpy as np

from citytwin.drainage.storms import GUANGZHOU, StormFormula, chicago_hyetograph
from citytwin.flood.domain import MM_PER_H, Rainfall, Series


def design_storm(
    return_period: float,
    duration_min: float = 60.0,
    *,
    step_min: float = 5.0,
    peak_ratio: float = 0.4,
    formula: StormFormula = GUANGZHOU,
) -> Rainfall:
    """The Chicago design storm of ``return_period`` years over ``duration_min`` minutes from
    ``formula`` (default Guangzhou's), as uniform rain that stops at the storm's end."""
    start_min, mm_per_h = chicago_hyetograph(
        return_period, duration_min, step_min, peak_ratio, formula
    )
    times = np.append(start_min, duration_min) * 60.0
    return Rainfall(Series(times, np.append(mm_per_h, 0.0) * MM_PER_H))


def uniform_rain(mm_per_h: float, minutes: float) -> Rainfall:
    """Rain at a constant ``mm_per_h`` for ``minutes``, then none."""
    if mm_per_h < 0 or minutes <= 0:
        raise ValueError("rain needs an intensity >= 0 mm/h and a duration > 0 min")
    return Rainfall(Series(np.array([0.0, minutes * 60.0]), np.array([mm_per_h * MM_PER_H, 0.0])))


def gauge_rain(
    times_s: np.ndarray, values: np.ndarray, *, kind: str = "intensity", start_s: float = 0.0
) -> Rainfall:
    """A rain gauge's readings as uniform rain: ``times_s`` the end of each reading's interval
    (seconds, increasing), ``values`` in mm/h (``kind="intensity"``) or the depth in mm of each
    interval (``"depth"``, a tipping bucket's tips summed) or the running total in mm
    (``"cumulative"``). The first interval starts at ``start_s``; a gap between readings is
    rain-free only if a reading says so. Missing values (NaN) are refused: fill or cut them."""
    t = np.asarray(times_s, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.ndim != 1 or len(t) != len(v) or not len(t):
        raise ValueError("a gauge series needs as many times as values (at least one)")
    if np.isnan(v).any():
        k = int(np.argmax(np.isnan(v)))
        raise ValueError(f"the gauge reading at {t[k]:.0f} s is missing: fill or cut the gap")
    edges = np.concatenate([[start_s], t])
    widths = np.diff(edges)
    if np.any(widths <= 0):
        raise ValueError("gauge times must increase and come after the start")
    if kind == "intensity":
        rate = v * MM_PER_H
    elif kind in ("depth", "cumulative"):
        depth_mm = np.diff(np.concatenate([[0.0], v])) if kind == "cumulative" else v
        if np.any(depth_mm < -1e-9):
            raise ValueError("a cumulative rain total can't decrease (was the gauge reset?)")
        rate = depth_mm / 1000.0 / widths
    else:
        raise ValueError(f"unknown gauge kind {kind!r}: intensity, depth or cumulative")
    if np.any(rate < 0):
        raise ValueError("rain can't be negative")
    return Rainfall(Series(edges, np.append(rate, 0.0)))


def gridded_rain(times_s: np.ndarray, mm_per_h: np.ndarray) -> Rainfall:
    """Rain grids ``(nt, ny, nx)`` in mm/h from ``times_s`` on (each held until the next; the
    last holds on: end it with a grid of zeros)."""
    grids = np.asarray(mm_per_h, dtype=float)
    if np.isnan(grids).any():
        raise ValueError("the rain grids have missing cells (NaN): fill them (e.g. with 0)")
    if np.any(grids < 0):
        raise ValueError("rain can't be negative")
    return Rainfall(times=np.asarray(times_s, dtype=float), grids=grids * MM_PER_H)


def total_mm(rain: Rainfall, until_s: float) -> float:
    """The mean rain depth (mm) from 0 to ``until_s``."""
    return float(np.mean(rain.total(until_s))) * 1000.0

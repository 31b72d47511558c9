"""Design storms: the Chinese storm-intensity formula and the Chicago hyetograph built on it.

Chinese drainage design (GB 50014, 室外排水设计标准) gives a city's design rainfall as a storm
intensity formula (暴雨强度公式)::

    q = 167·A1·(1 + C·lg P) / (t + b)^n        [L/(s·ha)]
    i =     A1·(1 + C·lg P) / (t + b)^n        [mm/min]

the average intensity over the most intense ``t`` minutes of a storm of return period ``P``
years. The Chicago storm (Keifer & Chu, 1957) is the hyetograph whose every window of ``t``
minutes around the peak holds exactly the formula's depth for ``t``; its peak sits at
``r·duration`` (r ≈ 0.4 in most Chinese cities). Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

Q_PER_I = 167.0
"""L/(s·ha) per mm/min, as Chinese formulas round it (10,000 m² · 1 mm / 60 s = 166.7)."""


@dataclass(frozen=True)
class StormFormula:
    """The constants of a storm intensity formula ``i = A1(1 + C lg P)/(t + b)^n`` (mm/min)."""

    A1: float  # mm/min
    C: float
    b: float  # min
    n: float
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.A1 <= 0 or self.b < 0 or not 0 < self.n < 2:
            raise ValueError(f"implausible storm formula constants: {self}")


GUANGZHOU = StormFormula(
    A1=3618.427 / Q_PER_I,
    C=0.438,
    b=11.259,
    n=0.750,
    name="Guangzhou central districts (广州市中心城区), general formula",
    source=(
        "q = 3618.427(1 + 0.438 lg P)/(t + 11.259)^0.750 L/(s·ha), as quoted for the general "
        "formula (暴雨强度总公式) of 《广州市中心城区暴雨公式及计算图表》, Guangzhou Water "
        "Authority (广州市水务局), June 2011 edition; NOT checked against the official "
        "document (see the note on GUANGZHOU in citytwin.drainage.storms)"
    ),
)
"""Default: Guangzhou's central-district storm intensity formula (2011).

Provenance, stated plainly: the official document is 《广州市中心城区暴雨公式及计算图表》
(Guangzhou Water Authority, 2011 edition, June 2011; its interval formulas were corrected by
穗水规字〔2018〕5号, Appendix I). It gives single-return-period formulas for P = 0.25–100 a,
interval formulas ``q = 167A/(t+b)^n``, and a general formula; the constants here are those
that secondary sources quote for the general formula — A1 = 3618.427/167 mm/min (3618.427
L/(s·ha)), b = 11.259 min, n = 0.750, C = 0.438. They were not checked against the
document itself (its table number is not known here), and one secondary source gives C =
0.533 instead (0.533 is also the C of Guangzhou's older formula, q = 2424.17(1 + 0.533 lg
P)/(t + 11.0)^0.668). The values give 2-year depths of 60 mm in 1 h and 76 mm in 2 h, in line
with Guangzhou's climate. No later (e.g. 2016) edition is known here. For design work, use the
official tables.
"""


def intensity(
    duration_min: ArrayLike, return_period: float, formula: StormFormula = GUANGZHOU
) -> np.ndarray:
    """Average intensity (mm/h) of the most intense ``duration_min`` minutes of a storm with
    this return period (years)."""
    t = np.asarray(duration_min, dtype=float)
    _check(return_period)
    if np.any(t < 0):
        raise ValueError("durations must be >= 0 minutes")
    i = formula.A1 * (1 + formula.C * np.log10(return_period)) / (t + formula.b) ** formula.n
    return i * 60.0


def rate(
    duration_min: ArrayLike, return_period: float, formula: StormFormula = GUANGZHOU
) -> np.ndarray:
    """Design storm intensity q in L/(s·ha) (the rational method's unit), as the formula
    states it."""
    return intensity(duration_min, return_period, formula) / 60.0 * Q_PER_I


def depth(
    duration_min: ArrayLike, return_period: float, formula: StormFormula = GUANGZHOU
) -> np.ndarray:
    """Rain depth (mm) of the most intense ``duration_min`` minutes."""
    return intensity(duration_min, return_period, formula) * np.asarray(duration_min) / 60.0


def chicago_hyetograph(
    return_period: float,
    duration_min: float = 120.0,
    step_min: float = 5.0,
    peak_ratio: float = 0.4,
    formula: StormFormula = GUANGZHOU,
) -> tuple[np.ndarray, np.ndarray]:
    """A Chicago design storm: (start of each step in minutes, mean intensity in mm/h).

    Each step's depth is the exact integral of the Chicago intensity curve over the step, so
    the total is the formula's depth for the whole duration, and any window of ``t`` minutes
    that starts ``peak_ratio·t`` before the peak (and whose ends fall on step boundaries) holds
    exactly the formula's depth for ``t``.
    """
    _check(return_period)
    if duration_min <= 0 or step_min <= 0:
        raise ValueError("duration and step must be > 0 minutes")
    steps = duration_min / step_min
    if abs(steps - round(steps)) > 1e-9:
        raise ValueError(f"the duration {duration_min} min is not a multiple of {step_min} min")
    if not 0 < peak_ratio < 1:
        raise ValueError("peak_ratio must be between 0 and 1")
    edges = np.linspace(0.0, duration_min, round(steps) + 1)
    depths = np.diff(_chicago_mass(edges, return_period, duration_min, peak_ratio, formula))
    return edges[:-1], depths / step_min * 60.0


def _chicago_mass(
    t: np.ndarray, return_period: float, duration: float, r: float, formula: StormFormula
) -> np.ndarray:
    """Cumulative depth (mm) of the Chicago storm from its start to times ``t``.

    Around the peak, the depth of the window (peak − r·T, peak + (1 − r)·T) is the formula's
    depth H(T) = i(T)·T; so the depth from the peak back to peak − τ is r·H(τ/r), and from
    the peak on to peak + τ it is (1 − r)·H(τ/(1 − r)).
    """
    peak = r * duration

    def h(window: np.ndarray) -> np.ndarray:
        return depth(window, return_period, formula)

    before = r * (h(np.full_like(t, duration)) - h(np.maximum(peak - t, 0.0) / r))
    after = (1 - r) * h(np.maximum(t - peak, 0.0) / (1 - r))
    return np.where(t <= peak, before, r * h(np.full_like(t, duration)) + after)


def _check(return_period: float) -> None:
    if not return_period > 0:
        raise ValueError(f"return period must be > 0 years, got {return_period}")


__all__ = [
    "GUANGZHOU",
    "Q_PER_I",
    "StormFormula",
    "chicago_hyetograph",
    "depth",
    "intensity",
    "rate",
]

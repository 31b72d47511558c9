"""Design storms: the storm intensity formula and the Chicago hyetograph built on it."""

from __future__ import annotations

import numpy as np
import pytest

from citytwin.drainage.storms import (
    GUANGZHOU,
    Q_PER_I,
    StormFormula,
    chicago_hyetograph,
    depth,
    intensity,
    rate,
)

SHANGHAI_LIKE = StormFormula(A1=9.58, C=0.846, b=7.0, n=0.656, name="another city")


def window_depth(times: np.ndarray, mm_per_h: np.ndarray, step: float, a: float, b: float):
    """Rain (mm) of a step hyetograph between minutes a and b."""
    overlap = np.clip(np.minimum(times + step, b) - np.maximum(times, a), 0.0, None)
    return float((mm_per_h / 60.0 * overlap).sum())


def test_the_guangzhou_constants_are_the_documented_ones():
    # q = 3618.427(1 + 0.438 lg P)/(t + 11.259)^0.750 L/(s·ha)
    for t, p in ((5.0, 1.0), (10.0, 2.0), (60.0, 50.0)):
        expected = 3618.427 * (1 + 0.438 * np.log10(p)) / (t + 11.259) ** 0.750
        assert rate(t, p) == pytest.approx(expected, rel=1e-12)
        assert intensity(t, p) == pytest.approx(expected / Q_PER_I * 60.0, rel=1e-12)
    assert "2011" in GUANGZHOU.source and "NOT checked" in GUANGZHOU.source
    # a plausible climate: about 60 mm in the wettest hour of a 2-year storm, 76 mm in 2 h
    assert depth(60, 2) == pytest.approx(60.0, abs=1.0)
    assert depth(120, 2) == pytest.approx(76.0, abs=1.0)


def test_intensity_falls_with_duration_and_grows_with_return_period():
    t = np.array([5.0, 10.0, 30.0, 60.0, 120.0, 180.0])
    for formula in (GUANGZHOU, SHANGHAI_LIKE):
        for p in (1, 2, 5, 10, 50, 100):
            i = intensity(t, p, formula)
            assert (np.diff(i) < 0).all()
            assert (np.diff(depth(t, p, formula)) > 0).all()  # but the depth still grows
            assert (intensity(t, p * 2, formula) > i).all()


@pytest.mark.parametrize("formula", [GUANGZHOU, SHANGHAI_LIKE])
@pytest.mark.parametrize("period", [1, 2, 10, 50])
def test_chicago_total_is_the_formula_depth_for_the_duration(formula, period):
    times, mm_h = chicago_hyetograph(period, formula=formula)
    assert len(times) == 24 and times[0] == 0 and np.allclose(np.diff(times), 5.0)
    assert (mm_h > 0).all()
    total = float((mm_h * 5.0 / 60.0).sum())
    assert total == pytest.approx(float(depth(120, period, formula)), rel=0.01)


@pytest.mark.parametrize(
    ("duration", "step", "ratio"), [(120, 5, 0.4), (180, 10, 0.35), (90, 2, 0.45)]
)
def test_chicago_peak_is_at_the_peak_ratio(duration, step, ratio):
    times, mm_h = chicago_hyetograph(2, duration, step, ratio)
    peak = int(np.argmax(mm_h))
    assert times[peak] <= ratio * duration < times[peak] + step
    # rising before the peak, falling after it
    assert (np.diff(mm_h[: peak + 1]) > 0).all() and (np.diff(mm_h[peak:]) < 0).all()


def test_every_window_around_the_peak_holds_the_formula_depth():
    # the defining property: rain in (peak - r·t, peak + (1 - r)·t) = the formula's depth for t
    r, duration = 0.4, 120.0
    peak = r * duration
    for step in (1.0, 5.0):
        times, mm_h = chicago_hyetograph(2, duration, step, r)
        # windows whose ends fall on the step boundaries
        windows = [
            t for t in np.arange(5.0, duration + 1, 5.0) if round(peak - r * t, 6) % step == 0
        ]
        assert len(windows) >= 5
        for t in windows:
            rain = window_depth(times, mm_h, step, peak - r * t, peak + (1 - r) * t)
            assert rain == pytest.approx(float(depth(t, 2)), rel=1e-9), t
    # with 1-minute steps any window is within 1 % of the formula
    times, mm_h = chicago_hyetograph(2, duration, 1.0, r)
    for t in (7.0, 13.0, 33.0, 77.0):
        rain = window_depth(times, mm_h, 1.0, peak - r * t, peak + (1 - r) * t)
        assert rain == pytest.approx(float(depth(t, 2)), rel=0.01), t


def test_hyetograph_grows_with_return_period():
    previous = None
    for p in (1, 2, 5, 10, 20, 50, 100):
        _, mm_h = chicago_hyetograph(p)
        if previous is not None:
            assert (mm_h > previous).all()
        previous = mm_h


def test_bad_storms_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        chicago_hyetograph(2, 120, 7)
    with pytest.raises(ValueError, match="peak_ratio"):
        chicago_hyetograph(2, peak_ratio=1.2)
    with pytest.raises(ValueError, match="return period"):
        intensity(10, 0)
    with pytest.raises(ValueError, match="implausible"):
        StormFormula(A1=-1, C=0.5, b=10, n=0.7)

"""The run loop both solvers share: losses against Green–Ampt's analytic infiltration, hot
starts that continue a run exactly, inflows, snapshots, and refused inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from citytwin.flood import (
    Boundary,
    ConstantLoss,
    Domain,
    GreenAmpt,
    Inflow,
    Rainfall,
    Series,
    State,
    initial_state,
    simulate,
    solver_for,
)


def flat(n: int = 20, **kw) -> Domain:
    return Domain(np.zeros((n, n)), 2.0, manning=0.03, **kw)


@pytest.mark.parametrize("solver", ["swe", "inertial"])
def test_green_ampt_infiltration_follows_the_analytic_curve(solver):
    # ponded Green–Ampt (Green & Ampt 1911; Chow, Maidment & Mays 1988, eq. 4.3.6):
    # F − s·ln(1 + F/s) = ks·t, s = psi·dtheta; a sandy loam, 1 h under 0.3 m of water
    ks, psi, dth = 10.9 / 3.6e6, 0.1101, 0.3
    domain = flat(losses=GreenAmpt(ks, psi, dth))
    res = simulate(
        domain, 3600.0, solver=solver, state=initial_state(domain, solver_for(solver), level=0.3)
    )
    s = psi * dth
    expected = brentq(lambda f: f - s * np.log(1 + f / s) - ks * 3600.0, 1e-9, 1.0)
    got = res.state.infiltrated
    assert np.allclose(got, expected, rtol=0.01)  # within 1 % of the analytic depth
    assert res.balance.losses[-1] == pytest.approx(expected * 400 * 4.0, rel=0.01)
    assert res.balance.relative_error <= 1e-9
    # a constant loss stops when the water is gone, and takes nothing more
    dry = flat(losses=ConstantLoss(0.01 / 60))  # 10 mm a minute
    res = simulate(
        dry, 600.0, solver=solver, state=initial_state(dry, solver_for(solver), level=0.02)
    )
    assert np.allclose(res.state.h, 0.0) and np.allclose(res.state.infiltrated, 0.02)


@pytest.mark.parametrize("solver", ["swe", "inertial"])
def test_a_hot_start_continues_a_run_exactly(solver):
    rng = np.random.default_rng(3)
    z = np.add.outer(np.linspace(1.0, 0.0, 30), np.zeros(24)) + rng.normal(0, 0.02, (30, 24))
    domain = Domain(z, 2.0, manning=0.03, boundaries={"south": Boundary("open")})
    rain = Rainfall.uniform([0.0, 300.0], [80.0, 0.0])
    whole = simulate(domain, 600.0, solver=solver, rain=rain, max_step=5.0)
    first = simulate(domain, 300.0, solver=solver, rain=rain, max_step=5.0)
    saved = State.from_arrays({k: np.array(v) for k, v in first.state.to_arrays().items()})
    second = simulate(domain, 300.0, solver=solver, rain=rain, state=saved, max_step=5.0)
    assert second.state.t == pytest.approx(600.0)
    # the same water in the same places (the step sequence differs only at the restart)
    assert np.abs(second.state.h - whole.state.h).max() <= 1e-3
    assert abs(second.state.h.sum() - whole.state.h.sum()) <= 1e-3 * whole.state.h.sum()
    with pytest.raises(ValueError, match="continue a run with the solver that made it"):
        other = "inertial" if solver == "swe" else "swe"
        simulate(domain, 10.0, solver=other, state=saved)


def test_inflows_snapshots_and_bad_input():
    domain = flat(30)
    inflow = Inflow(((15, 15),), Series(np.array([0.0, 100.0]), np.array([0.5, 0.0])))
    res = simulate(domain, 200.0, solver="swe", inflows=[inflow], snapshot_every=50.0)
    assert res.balance.inflow[-1] == pytest.approx(50.0)
    assert res.state.h.sum() * 4.0 == pytest.approx(50.0, rel=1e-9)
    assert [round(t) for t, _ in res.snapshots] == [50, 100, 150, 200]
    assert np.isfinite(res.first_wet[15, 15]) and res.wet_duration[15, 15] > 0
    with pytest.raises(ValueError, match="unknown solver"):
        simulate(domain, 1.0, solver="magic")
    with pytest.raises(ValueError, match="not the domain's"):
        simulate(flat(10), 1.0, solver="swe", state=res.state)
    with pytest.raises(ValueError, match="grid of 2 x 2"):
        Domain(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="unknown sides"):
        flat(boundaries={"up": Boundary()})
    with pytest.raises(ValueError, match="level series"):
        Boundary("level")


class _Ticks:
    """An exchange that trades nothing, every ``every`` seconds (the drains' rhythm)."""

    def __init__(self, every: float) -> None:
        self.every = every

    def sync(self, t: float, h: np.ndarray, moved: np.ndarray) -> tuple[float, np.ndarray]:
        return t + self.every, np.zeros(h.shape)


def test_steps_between_stops_are_evenly_sized():
    """The steps up to each stop (a sync with the drains, a snapshot, the end) share what is
    left of its interval evenly, each no longer than the stable step: a sliver of a step
    before every 1-s sync set off a lasting checkerboard in local inertia (in the demo city's
    2-cell canal at 5 m: adjacent cells 2.5 m apart in level, a 3.55 m 'deepest water' that
    was not)."""
    z = np.add.outer(np.zeros(40), np.abs(np.arange(40) - 19.5) * 0.05)  # a V valley
    domain = Domain(z, 1.0, manning=0.03)
    start = initial_state(domain, solver_for("inertial"), level=0.3)  # 0.3 m at the bottom
    steps: list[tuple[float, float]] = []
    rain = Rainfall(Series(np.array([0.0, 60.0]), np.array([1e-4, 1e-4])))  # 360 mm/h
    res = simulate(domain, 60.0, rain=rain, state=start, exchange=_Ticks(1.0),
                   snapshot_every=7.5, on_step=lambda t, dt: steps.append((t, dt)))  # fmt: skip
    t = np.array([s[0] for s in steps])
    dt = np.array([s[1] for s in steps])
    assert t[-1] == pytest.approx(60.0) and res.steps == len(steps)
    stops = np.unique(np.concatenate([np.arange(1.0, 61.0), np.arange(7.5, 61.0, 7.5)]))
    landed = [k for k in range(len(dt)) if np.any(np.isclose(t[k], stops))]
    assert len(landed) == len(stops)  # every stop is landed on
    # stable steps of about 0.43 s: a second in three steps, half a second in two; a fixed
    # step up to each stop left pieces of 0.07-0.16 s
    assert dt.max() < 0.43 and dt.min() > 0.2


@pytest.mark.parametrize("solver", ["swe", "inertial"])
def test_the_extremes_follow_the_water_step_by_step(solver):
    """A storm on a slope that drains to an open side, then dries out: the extremes against the
    water of every step (a snapshot a step: steps of 1 s, shorter than the stable step)."""
    z = np.add.outer(np.linspace(0.6, 0.0, 16), np.linspace(0.0, 0.1, 12))
    blocked = np.zeros(z.shape, bool)
    blocked[6:9, 4:7] = True  # a building: no extremes there
    domain = Domain(z, 2.0, manning=0.03, blocked=blocked,
                    boundaries={"south": Boundary("open")})  # fmt: skip
    rain = Rainfall.uniform([0.0, 120.0], [150.0, 0.0])  # 150 mm/h for 2 min
    res = simulate(domain, 600.0, solver=solver, rain=rain, max_step=1.0, snapshot_every=1.0)
    assert res.steps == len(res.snapshots) == 600
    t = np.array([s[0] for s in res.snapshots])
    depths = np.stack([s[1] for s in res.snapshots])
    wet = depths > res.threshold
    active = domain.active
    # the deepest of every step (the water left since: the maximum is not the last depth)
    assert np.array_equal(res.max_depth[active], depths.max(axis=0)[active])
    assert (res.max_depth[active] > res.state.h[active] + 0.005).any()
    # the end of the first step each cell was wet at, and how long it stayed wet
    first = np.where(wet.any(axis=0), t[np.argmax(wet, axis=0)], np.nan)
    assert np.array_equal(res.first_wet[active], first[active], equal_nan=True)
    assert np.isnan(res.first_wet[active]).any() and np.isfinite(res.first_wet).any()
    assert np.allclose(res.wet_duration[active], wet.sum(axis=0)[active] * 1.0)
    # hazard d·(v + 0.5) + 0.5 of a wet step: at least that of its deepest water at rest, at
    # most that of its deepest water at its fastest; 0 where never wet
    ever = active & wet.any(axis=0)
    low = res.max_depth * 0.5 + 0.5
    high = res.max_depth * (res.max_speed + 0.5) + 0.5
    assert (res.max_hazard[ever] >= low[ever] - 1e-12).all()
    assert (res.max_hazard[ever] <= high[ever] + 1e-12).all()
    assert (res.max_speed[ever] > 0).all()
    dry = active & ~ever
    assert (res.max_hazard[dry] == 0).all() and (res.max_speed[dry] == 0).all()
    for extreme in (res.max_depth, res.max_speed, res.max_hazard, res.first_wet, res.wet_duration):
        assert np.isnan(extreme[~active]).all()

"""The local inertia solver (citytwin.flood.inertial) against analytic solutions and published
benchmarks, all through the run loop (``simulate(..., solver="inertial")``).

The grids are small, so the tests run the numba kernels on one thread (the ``one_thread``
fixture): waking a second thread for a few thousand cells costs more than it saves, and far
more on a busy machine. ``test_parallel_matches_one_thread`` runs the parallel kernels and
checks they give the same answer to the bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numba
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from citytwin.flood import (
    Boundary,
    Domain,
    Inflow,
    Rainfall,
    Result,
    Series,
    State,
    inertial,
    initial_state,
    simulate,
)
from citytwin.flood.domain import G
from citytwin.flood.inertial import LocalInertia, _cbrt_ratio


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def outflow_rate(result: Result, t: float, window: float) -> float:
    """The mean outflow (m³/s) over ``window`` seconds centred on ``t``, from the cumulative
    outflow the balance records after every step."""
    times = np.array(result.balance.t)
    out = np.array(result.balance.outflow)
    lo, hi = np.interp([t - window / 2, t + window / 2], times, out)
    return float((hi - lo) / window)


def bumpy_bed(ny: int, nx: int, dx: float) -> np.ndarray:
    """Hills and hollows between about -0.6 and 0.6 m, an island up to 1.6 m at its top, all on
    a 1/1024 m grid (so that ``eta = z + (level - z)`` is exact in floating point)."""
    y, x = np.mgrid[0:ny, 0:nx] * dx
    z = 0.4 * np.sin(x / 9.0) * np.cos(y / 13.0) + 0.2 * np.cos(x / 5.0 + y / 7.0)
    z += 1.6 * np.exp(-((x - 0.7 * nx * dx) ** 2 + (y - 0.4 * ny * dx) ** 2) / 60.0)
    return np.round(z * 1024.0) / 1024.0


# -- 1. lake at rest ------------------------------------------------------------------------------
def test_lake_at_rest_stays_at_rest() -> None:
    # Still water over any bed must stay still (the C-property): a level surface gives no
    # water-level gradient on any face, so no face ever carries water. The dry island, the
    # building (blocked cells), the cells outside the grid (NaN bed) and a level boundary held at
    # the lake's level must not disturb it. Threshold: level to 1e-12 m, speeds exactly 0.
    ny, nx, dx = 40, 50, 2.0
    z = bumpy_bed(ny, nx, dx)
    z[:6, :5] = np.nan  # outside the city
    blocked = np.zeros(z.shape, bool)
    blocked[20:26, 8:14] = True  # a building in the water
    domain = Domain(z, dx, manning=0.03, blocked=blocked,
                    boundaries={"west": Boundary.fixed_level(1.0)})  # fmt: skip
    state = initial_state(domain, LocalInertia(), level=1.0)
    island = domain.active & (domain.zb > 1.0)
    assert island.sum() > 10 and (state.h > 0).sum() > 1000  # a real island in a real lake

    result = simulate(domain, 120.0, solver="inertial", state=state)

    assert result.steps >= 100
    h = result.state.h
    wet = domain.active & ~island
    assert np.max(np.abs(h[wet] + domain.zb[wet] - 1.0)) <= 1e-12
    assert np.all(h[island] == 0.0) and np.all(h[~domain.active] == 0.0)
    assert np.nanmax(result.max_speed) == 0.0
    assert not np.any(result.state.arrays["qx"]) and not np.any(result.state.arrays["qy"])
    assert result.balance.outflow[-1] == 0.0


# -- 2. mass conservation -------------------------------------------------------------------------
def sloshing_domain() -> tuple[Domain, np.ndarray]:
    """A closed basin on the bumpy bed with a building, and an uneven water level: 1.2 m in the
    western third, 0.5 m elsewhere (a dam break over hills, islands and dry land)."""
    ny, nx, dx = 40, 60, 2.0
    blocked = np.zeros((ny, nx), bool)
    blocked[10:18, 30:36] = True
    domain = Domain(bumpy_bed(ny, nx, dx), dx, manning=0.02, blocked=blocked)
    level = np.where(np.arange(nx)[None, :] < nx // 3, 1.2, 0.5) * np.ones((ny, 1))
    return domain, level


@pytest.mark.parametrize(
    "options",
    [{}, {"friction": "semi-implicit"}, {"froude_limit": 1.0}],
    ids=["default", "semi-implicit", "froude-limit"],
)
def test_closed_basin_conserves_water(options: dict) -> None:
    # With closed sides and nothing added, the volume can only change by round-off: each face's
    # discharge (after the positivity limiter) leaves one cell and enters the other.
    # Thresholds: the loop's mass-balance error <= 1e-6 of the volume (the bound) and the
    # final volume equal to the initial to 1e-12 (what the scheme actually guarantees).
    domain, level = sloshing_domain()
    solver = LocalInertia(**options) if options else "inertial"
    state = initial_state(domain, LocalInertia(), level=level)
    v0 = state.h[domain.active].sum() * domain.cell_area

    result = simulate(domain, 120.0, solver=solver, state=state)

    h = result.state.h
    v1 = h[domain.active].sum() * domain.cell_area
    assert result.balance.relative_error <= 1e-6
    assert abs(v1 - v0) <= 1e-12 * v0
    assert h.min() >= 0.0 and np.all(h[~domain.active] == 0.0)
    # and the water did move, a dam break, not a lake at rest: the western third has lost much
    # of its water, at speeds up to (not beyond) Ritter's front speed 2 √(g h0) for the
    # deepest water h0 (measured: 5.2 m/s of 8.4 m/s)
    west = np.s_[:, : level.shape[1] // 3]
    assert h[west].sum() < 0.8 * state.h[west].sum()
    assert 0.5 < np.nanmax(result.max_speed) <= 2.0 * np.sqrt(G * state.h.max())
    if "froude_limit" in options:
        # no face faster than √(g h_f), so no cell faster than √(g h) of the deepest water
        assert np.nanmax(result.max_speed) <= np.sqrt(G * np.nanmax(result.max_depth))


@pytest.mark.parametrize("sides", ["closed", "open and level"])
def test_any_bands_and_threads_give_the_one_band_answer(sides: str, monkeypatch) -> None:
    # A step streams bands of rows in parallel, the rows at each seam between bands computed
    # apart first (their faces read the old water the next band's continuity overwrites). Any
    # cut into bands, on one thread or two, must give the single-band, single-thread answer to
    # the bit: every face is computed once from the old state, and both cells see the same value.
    # The sides' own code paths (the first and last rows) are crossed with seams beside them.
    domain, level = sloshing_domain()
    if sides != "closed":
        domain = Domain(domain.zb, domain.dx, manning=0.02, blocked=~domain.active,
                        boundaries={"south": Boundary("open"), "north": Boundary("open"),
                                    "west": Boundary.fixed_level(1.0)})  # fmt: skip
    runs = []
    for threads, bands in ((1, 1), (1, 3), (2, 2), (2, 7), (2, 10)):  # 10: four rows a band
        monkeypatch.setattr(inertial, "bands_for", lambda rows, threads, bands=bands: bands)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        solver = LocalInertia(min_parallel_cells=0)
        state = initial_state(domain, solver, level=level)
        result = simulate(domain, 15.0, solver=solver, state=state)
        runs.append((result.state, result.balance.outflow[-1]))
    (first, out), others = runs[0], runs[1:]
    assert first.h.std() > 0.1 and (out != 0.0) == (sides != "closed")  # the water moved
    for other, other_out in others:
        for key in ("qx", "qy", "hx", "hy"):
            assert np.array_equal(first.arrays[key], other.arrays[key]), key
        assert np.array_equal(first.h, other.h) and other_out == out


def test_the_speed_a_step_gives_is_the_speed_of_its_end_state() -> None:
    # A step computes each cell's speed in its continuity pass (it has the discharges at hand):
    # it must be what ``speed()`` gives for the state the step leaves, with either friction form.
    domain, level = sloshing_domain()
    for solver in (LocalInertia(), LocalInertia(friction="semi-implicit", froude_limit=1.0)):
        state = initial_state(domain, solver, level=level)
        h, arrays = state.h, state.arrays
        speed = np.full(domain.shape, np.nan)
        for _ in range(20):
            solver.step(domain, h, arrays, 0.05, domain.levels(0.0), speed)
        expected = solver.speed(domain, h, arrays)
        assert np.allclose(speed, expected, rtol=1e-12, atol=0.0)
        assert (expected > 0.01).any()


def test_hot_start_continues_the_run() -> None:
    # A state saved as arrays (``State.to_arrays``, e.g. to a store) and loaded back continues
    # the run exactly: the discharges and the flow depths they ran at are the solver's state.
    # Threshold: bit-identical to continuing from the state in memory.
    domain, level = sloshing_domain()
    first = simulate(domain, 20.0, solver="inertial",
                     state=initial_state(domain, LocalInertia(), level=level))  # fmt: skip
    saved = State.from_arrays({k: np.array(v) for k, v in first.state.to_arrays().items()})
    direct = simulate(domain, 20.0, solver="inertial", state=first.state)
    resumed = simulate(domain, 20.0, solver="inertial", state=saved)
    assert resumed.state.t == direct.state.t == 40.0
    assert np.array_equal(resumed.state.h, direct.state.h)
    assert np.array_equal(resumed.max_speed, direct.max_speed, equal_nan=True)


def test_open_sides_drain_a_mound_symmetrically() -> None:
    # A round mound of water in the middle of a flat square with all four sides open: the four
    # sides (separate code paths, north/south along the rows, west/east along the columns) must
    # treat the water alike. Threshold: the depths symmetric under both flips and the transpose
    # to 1e-10 m (round-off in the order of the sums), and the water that left equals what the
    # grid lost (mass balance <= 1e-6).
    n, dx = 41, 1.0
    sides = {side: Boundary("open") for side in ("north", "south", "west", "east")}
    domain = Domain(np.zeros((n, n)), dx, manning=0.03, boundaries=sides)
    r2 = ((np.arange(n) - n // 2)[:, None] ** 2 + (np.arange(n) - n // 2)[None, :] ** 2) * dx**2
    state = initial_state(domain, LocalInertia(), level=0.5 * np.exp(-r2 / 60.0))

    result = simulate(domain, 40.0, solver="inertial", state=state)

    h = result.state.h
    assert result.balance.outflow[-1] > 0.3 * result.balance.initial  # most of it left
    for other in (h[::-1, :], h[:, ::-1], h.T):
        assert np.max(np.abs(h - other)) <= 1e-10
    assert result.balance.relative_error <= 1e-6


def test_level_boundary_fills_a_basin_to_its_level() -> None:
    # A dry basin (bed 0.2-0.5 m, 100 m long) with a level of 1 m held on its west side fills
    # until the water stands at 1 m everywhere (then nothing flows). The filling sets off a
    # seiche (a quarter wave: period 4 L / √(g h) ≈ 160 s) that friction damps (n = 0.1 here, so
    # that it does within the hour). Thresholds: level within 2 mm of 1 m after 1 h (measured
    # 0.1 mm); the water that came in through the side (negative outflow) is what the basin
    # holds, to the mass-balance bound 1e-6.
    ny, nx, dx = 10, 20, 5.0
    z = 0.2 + 0.3 * np.random.default_rng(1).random((ny, nx))
    domain = Domain(z, dx, manning=0.1, boundaries={"west": Boundary.fixed_level(1.0)})

    result = simulate(domain, 3600.0, solver="inertial")

    eta = result.state.h + domain.zb
    assert np.max(np.abs(eta - 1.0)) <= 2e-3
    stored = result.state.h.sum() * domain.cell_area
    assert abs(-result.balance.outflow[-1] - stored) <= 1e-6 * stored


# -- 3. rain on a plane ---------------------------------------------------------------------------
def test_rain_on_a_plane_follows_the_kinematic_wave() -> None:
    # Overland flow on a plane of length L, slope S, Manning n, under uniform rain i, draining
    # freely at its lower end. Kinematic wave (e.g. Chow, Maidment & Mays 1988, ch. 9; Singh
    # 1996): unit discharge q = a h^m with a = √S / n, m = 5/3; until the time of concentration
    # t_c = (L n / (√S i^(2/3)))^(3/5) the outlet depth is h = i t, so q(t) = a (i t)^m; after
    # it, the equilibrium q = i L. The kinematic wave number k = S L / (h_n F²) ≈ 800 here
    # (>> 10: the kinematic wave holds). Thresholds: equilibrium within 2 % of i L; the rising
    # limb within 10 % of a (i t)^m at 0.5 t_c and 0.8 t_c (measured: +2.6 %, +1.2 %, and at
    # equilibrium -0.004 %; the outlet is a critical-depth overfall where the kinematic wave
    # assumes normal depth). The kinematic wave number is Woolhiser & Liggett's (1967).
    length, dx, slope, n, rain = 100.0, 1.0, 0.01, 0.05, 50.0 / 3.6e6
    nx, ny = int(length / dx), 2
    x = (np.arange(nx) + 0.5) * dx
    z = np.tile(slope * (length - x), (ny, 1))
    domain = Domain(z, dx, manning=n, boundaries={"east": Boundary("open")})
    tc = (length * n / (np.sqrt(slope) * rain ** (2 / 3))) ** 0.6  # 917 s

    result = simulate(domain, 2.0 * tc, solver="inertial", rain=Rainfall(Series.constant(rain)))

    width = ny * dx
    a = np.sqrt(slope) / n
    for f in (0.5, 0.8):
        q = outflow_rate(result, f * tc, 20.0) / width
        assert q == pytest.approx(a * (rain * f * tc) ** (5 / 3), rel=0.10)
    q_eq = outflow_rate(result, 1.9 * tc, 60.0) / width
    assert q_eq == pytest.approx(rain * length, rel=0.02)
    assert result.balance.relative_error <= 1e-6


# -- 4. the tilted V-catchment --------------------------------------------------------------------
def test_tilted_v_catchment_reaches_equilibrium_outflow() -> None:
    # Di Giammarco et al. (1996); Panday & Huyakorn (2004); Kollet et al. (2017) benchmark: two
    # hillslopes, 800 m wide and 1000 m long, slope 0.05 towards a 20 m wide channel that falls
    # 0.02 along its length; Manning 0.015 on the slopes, 0.15 in the channel; rain 10.8 mm/h
    # (3e-6 m/s) for 90 min; outflow at the channel's lower end only. At 20 m cells: 40 + 1 + 40
    # columns, 50 rows, and one more 20 m channel cell below the catchment (the outlet; the
    # rest of that row is blocked, so only the channel drains through the open south side).
    # At equilibrium the outflow is rain x area: 3e-6 x (1620 m x 1000 m + 400 m²) = 4.861 m³/s.
    # (4.92 m³/s, quoted in the issue, would need 1.64 km², e.g. hillslopes of 810 m: not the
    # published geometry; it lies 1.2 % above and inside the tolerance anyway.)
    # Thresholds: the outflow at 80-90 min and the peak within 5 % of rain x area (measured
    # 4.860 and 4.861 m³/s); nearly all of the rain gone 90 min after it stops (< 10 % of the
    # peak rate; measured 2 %); mass balance <= 1e-6.
    dx, rain = 20.0, 3e-6
    half = int(800 / dx)
    nx, rows = 2 * half + 1, int(1000 / dx)
    across = np.abs(np.arange(nx) - half) * dx  # from the channel's axis
    along = (rows - 1 - np.arange(rows + 1) + 0.5) * dx  # up the channel from the outlet end
    z = 0.02 * along[:, None] + 0.05 * across[None, :]
    manning = np.where(across == 0, 0.15, 0.015)[None, :] * np.ones((rows + 1, 1))
    blocked = np.zeros(z.shape, bool)
    blocked[rows, :] = True
    blocked[rows, half] = False
    domain = Domain(z, dx, manning=manning, blocked=blocked,
                    boundaries={"south": Boundary("open")})  # fmt: skip
    expected = rain * domain.active.sum() * dx * dx
    assert expected == pytest.approx(4.8612)

    hyetograph = Rainfall(Series(np.array([0.0, 5400.0]), np.array([rain, 0.0])))
    result = simulate(domain, 3.0 * 3600, solver="inertial", rain=hyetograph)

    at_equilibrium = outflow_rate(result, 85 * 60.0, 600.0)
    times = np.arange(600.0, 3 * 3600.0, 120.0)
    peak = max(outflow_rate(result, t, 120.0) for t in times)
    assert at_equilibrium == pytest.approx(expected, rel=0.05)
    assert peak == pytest.approx(expected, rel=0.05)
    assert outflow_rate(result, 3 * 3600.0 - 300.0, 600.0) < 0.1 * peak
    assert result.balance.relative_error <= 1e-6


# -- 5. MacDonald's steady flows ------------------------------------------------------------------
def macdonald(dx: float, rain: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """MacDonald et al. (1997), as in SWASHES (Delestre et al. 2013, the 1000 m channel,
    subcritical): a depth h(x) = (4/g)^(1/3) (1 + exp(-16 (x/1000 - 1/2)²)/2), Manning
    n = 0.033, unit discharge q(x) = q0 + r x, and the bed that makes it a steady solution of the
    shallow water equations:

        z'(x) = (q²/(g h³) - 1) h' - 2 q r / (g h²) - n² q² / h^(10/3)

    (q0 = 2 m²/s without rain; with rain r = 1 mm/s, q0 = 1 m²/s, so q(1000) = 2 m²/s, the
    SWASHES/Basilisk rain variant, here with Manning friction). Returns the cell centres, the
    bed and the depth there, the water level of a ghost cell centred dx/2 beyond the channel's
    end (the downstream level boundary) and q0."""
    n, length = 0.033, 1000.0
    q0 = 1.0 if rain else 2.0
    hc = (4.0 / G) ** (1 / 3)

    def depth(x):
        return hc * (1.0 + 0.5 * np.exp(-16.0 * (x / length - 0.5) ** 2))

    def slope(x):
        h, q = depth(x), q0 + rain * x
        dh = hc * 0.5 * np.exp(-16.0 * (x / length - 0.5) ** 2) * (-32.0 * (x / length - 0.5))
        dh /= length
        return (
            (q**2 / (G * h**3) - 1) * dh - 2 * q * rain / (G * h**2) - n**2 * q**2 / h ** (10 / 3)
        )

    x = (np.arange(int(length / dx) + 1) + 0.5) * dx  # the cells and one ghost beyond
    bed = solve_ivp(lambda s, _: [slope(s)], (0.0, x[-1]), [0.0], t_eval=x, rtol=1e-10,
                    atol=1e-12).y[0]  # fmt: skip
    return x[:-1], bed[:-1], depth(x[:-1]), bed[-1] + depth(x[-1]), q0


def local_inertia_profile(
    x: np.ndarray, bed: np.ndarray, h_end: float, q: np.ndarray
) -> np.ndarray:
    """The steady depth the local inertia equations give on that bed (they drop the advection
    and the rain's momentum): h' = -z' - n² q² / h^(10/3), integrated upstream."""
    n = 0.033
    dz = np.gradient(bed, x)
    sol = solve_ivp(lambda s, h: [-np.interp(s, x, dz) - n**2 * np.interp(s, x, q) ** 2
                                  / h[0] ** (10 / 3)],
                    (x[-1], x[0]), [h_end], t_eval=x[::-1], rtol=1e-9, atol=1e-12)  # fmt: skip
    return sol.y[0][::-1]


@pytest.mark.parametrize("rain", [0.0, 1e-3], ids=["subcritical", "subcritical-with-rain"])
def test_macdonald_steady_subcritical_flow(rain: float) -> None:
    # The discharge q0 enters the first column (an Inflow), the analytic level is held at the
    # downstream end; from the analytic depth at rest, run 3000 s (8 passes of a gravity wave
    # down the channel) to steady state. Thresholds:
    # - steady: the outflow equals the water put in (q(1000) x width) to 0.1 %;
    # - the depth against the local inertia equations' own steady profile (same bed, same
    #   boundary depth): MAE <= 0.01 m (the scheme's discretisation error; measured 0.003 m
    #   in both cases at 5 m cells, first order: 0.007 m at 10 m);
    # - the depth against the analytic shallow-water depth: MAE <= 0.03 m without rain
    #   (measured 0.020 m, of which 0.017 m is local inertia's own: its exact steady profile
    #   is that far off). With rain, local inertia cannot reach 0.03 m: its exact steady
    #   profile is 0.032 m off (advection, Froude up to 0.99, and the momentum the rain takes
    #   are what the approximation drops), so the bound there is 0.04 m (measured 0.034 m).
    # The first cell, where the inflow is put, counts in the mean: it ends each step 0.31 m
    # low (the loop adds the step's inflow before the step, which passes it on), 0.002 m of
    # the mean.
    dx, ny = 5.0, 2
    x, bed, h_exact, level_end, q0 = macdonald(dx, rain)
    z = np.tile(bed, (ny, 1))
    domain = Domain(z, dx, manning=0.033, boundaries={"east": Boundary.fixed_level(level_end)})
    width = ny * dx
    inflow = Inflow(tuple((row, 0) for row in range(ny)), Series.constant(q0 * width))
    state = initial_state(domain, LocalInertia(), level=z + h_exact)

    result = simulate(domain, 3000.0, solver="inertial", state=state, inflows=[inflow],
                      rain=Rainfall(Series.constant(rain)) if rain else None)  # fmt: skip

    q_end = q0 + rain * 1000.0
    assert outflow_rate(result, 2950.0, 100.0) / width == pytest.approx(q_end, rel=1e-3)
    h = result.state.h[0]
    h_li = local_inertia_profile(x, bed, h_exact[-1], q0 + rain * x)
    assert np.mean(np.abs(h - h_li)) <= 0.01
    assert np.mean(np.abs(h - h_exact)) <= (0.04 if rain else 0.03)
    assert result.balance.relative_error <= 1e-6


def test_fast_cube_root_is_exact_to_round_off() -> None:
    # The friction term's h_f^(7/3) uses a bit-trick cube root with two Halley steps instead of
    # libm's (the last one's division left to the friction term's); it must agree with numpy's
    # to round-off (1e-14 relative) over any flow depth, far beyond the depths a flood has.
    x = np.concatenate([10 ** np.random.default_rng(2).uniform(-30, 30, 4000), [1e-3, 1, 8, 27]])
    got = np.array([p / c for p, c in map(_cbrt_ratio, x)])
    assert np.max(np.abs(got / np.cbrt(x) - 1.0)) <= 1e-14


# -- bad input ------------------------------------------------------------------------------------
def test_bad_parameters_and_state_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        LocalInertia(alpha=1.5)
    with pytest.raises(ValueError, match="theta"):
        LocalInertia(theta=-0.1)
    with pytest.raises(ValueError, match="h_min"):
        LocalInertia(h_min=0.0)
    with pytest.raises(ValueError, match="friction"):
        LocalInertia(friction="explicit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="froude_limit"):
        LocalInertia(froude_limit=0.0)
    domain = Domain(np.zeros((5, 6)), 1.0)
    solver = LocalInertia()
    h = np.ones((5, 6))
    arrays = solver.initial_arrays(Domain(np.zeros((6, 5)), 1.0), h)
    with pytest.raises(ValueError, match="do not fit"):
        solver.step(domain, h, arrays, 0.1, domain.levels(0.0))

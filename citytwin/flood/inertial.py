"""The local inertia surface solver (Bates et al. 2010, with the θ-weighted numerical diffusion
of de Almeida et al. 2012): fast and robust for pluvial flooding, where flow is slow, shallow and
friction-dominated.

The state is the unit discharge on every face of the grid, ``qx`` ``(ny, nx + 1)`` (m²/s,
positive east: face ``j`` lies between cells ``j - 1`` and ``j`` of a row) and ``qy``
``(ny + 1, nx)`` (m²/s, positive south, along the rows: face ``i`` lies between rows ``i - 1``
and ``i``). A step first updates each face's discharge from the water-level gradient across it
(de Almeida et al. 2012, with the θ weighting),

    q' = [θ q + (1 - θ)/2 (q₋ + q₊) - g h_f dt Δη/dx] / [1 + g dt n² |q| / h_f^(7/3)]

(``q₋``, ``q₊`` the neighbouring faces along the flow direction, ``h_f = max(η) - max(z)`` the
depth of flow over the face, ``n`` the mean of the two cells' Manning), then moves the water
(continuity). Faces with ``h_f <= h_min`` and faces next to an inactive cell carry nothing.

Friction is by default fully implicit: ``|q|`` in the denominator is the new discharge, and the
quadratic ``q' (1 + b |q'|) = numerator`` is solved exactly. With the old ``|q|`` (the published
semi-implicit form, ``friction="semi-implicit"``) a face that starts to flow from rest feels no
friction in its first step; on thin sheet flow (rain on a slope: depths of millimetres, friction
time scales far below the step) that overshoots, empties cells and grows into a checkerboard at
``alpha = 0.7`` (measured: rain on a 1 % plane at 1 m cells). The implicit form tends to
Manning's normal flow ``h^(5/3) √S / n`` when friction dominates, and to the same scheme when it
does not; water at rest stays at rest exactly.

Positivity: each cell's outgoing discharges are scaled down, where they would take more than
the cell holds, by ``available / outgoing`` (as in LISFLOOD-FP); both cells of a face see the
same limited discharge, so water is conserved to round-off.

The grid's sides (``Domain.boundaries``):

- ``closed``: no flow.
- ``open``: free outflow at critical depth, ``q = h √(g h)`` outward from an edge cell deeper
  than ``h_min`` (the edge cell is the control section), nothing comes in. Chosen over the
  inertial formula with a dry ghost cell, whose gradient ``h/dx`` keeps accelerating the
  outflow, limited only by friction and the positivity limiter: it drains the edge cell faster
  than any overfall could; the critical-depth discharge is what a free overfall passes.
- ``level``: a ghost cell beyond the edge with the edge cell's bed and the held water level
  (its level is ``max(level, bed)``: a level below the bed is a dry ghost); the inertial
  formula gives the inflow or the outflow.

Time step: ``alpha · dx / √(g h_max)`` with ``h_max`` the deepest water on the grid or in a
level boundary's ghost cells (over the level series' highest value), at least ``h_min``.

Speed (for the run's extremes and hazard): per axis, the discharge through a cell's two faces
over the flow depths it ran at (kept in the state as ``hx``, ``hy``), so a cell just reached by
a front shows the speed of the water coming in, not that discharge over its own few millimetres.
Local inertia has no bound on a face's Froude number: thin sheets on steep, smooth slopes (a wave
running back off an island) reach Froude numbers far above 1 (measured: up to 13 over faces 1 cm
deep in the tests' dam break over hills). ``froude_limit`` caps each face's discharge at that
Froude number (CAESAR-Lisflood does the same), at the cost of slowing genuinely supercritical
sheet flow (steep streets, the V-catchment's hillslopes: its rising limb is slower with 1).

Performance: the three passes of a step (faces, outflow limiter, continuity, which also gives
the cells' speeds) are numba loops over rows, streamed together through bands of rows run in
parallel (see ``_step``), the per-row work inlined (a call per row costs atomic reference
counts on every array, which two threads then fight over); grids under ``min_parallel_cells``
run on one thread. The loops along a row are branch-free (every face's discharge is computed,
then selected where it flows; the limiter's factors sit in a frame of ones for the ghost
cells), so that LLVM vectorises them: four faces at a time with AVX2, about 2.5x the branchy
loops' speed on wet grids. Vectorised, the face loop waits on divisions and square roots: a
face takes two divisions and one root (the friction term's quotients over one denominator),
a cell's speed one of each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from citytwin.flood.domain import Domain, G

_CLOSED, _OPEN, _LEVEL = 0, 1, 2


class LocalInertia:
    """The local inertia solver (see the module's docstring).

    ``alpha`` the Courant number of the time step (Bates et al. 2010 recommend 0.7),
    ``theta`` the weight of a face's own discharge against its neighbours' (de Almeida et al.
    2012: 0.7–0.9; 1 is the original scheme without numerical diffusion), ``h_min`` the flow
    depth (m) below which a face carries nothing and a cell's speed is 0, ``friction``
    ``"implicit"`` (default: ``q'`` solved with friction on ``|q'|``) or ``"semi-implicit"``
    (de Almeida et al. 2012 as published: friction on the old ``|q|``), ``froude_limit`` the
    largest Froude number a face may carry (``|q| <= F h_f √(g h_f)``, as CAESAR-Lisflood's
    ``froude_limit``; None: no limit); grids of fewer than ``min_parallel_cells`` cells run on one
    thread."""

    name = "inertial"

    def __init__(
        self,
        alpha: float = 0.7,
        theta: float = 0.8,
        h_min: float = 1e-3,
        friction: Literal["implicit", "semi-implicit"] = "implicit",
        froude_limit: float | None = None,
        min_parallel_cells: int = 65_536,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(
                f"alpha (the time step's Courant number) must be in (0, 1], not {alpha}"
            )
        if not 0 <= theta <= 1:
            raise ValueError(f"theta (the discharge weighting) must be in [0, 1], not {theta}")
        if not h_min > 0:
            raise ValueError(f"h_min (the least flow depth) must be > 0 m, not {h_min}")
        if friction not in ("implicit", "semi-implicit"):
            raise ValueError(f"friction must be 'implicit' or 'semi-implicit', not {friction!r}")
        self.alpha = float(alpha)
        self.theta = float(theta)
        self.h_min = float(h_min)
        if froude_limit is not None and not froude_limit > 0:
            raise ValueError(f"froude_limit must be > 0 (or None: no limit), not {froude_limit}")
        self.implicit = friction == "implicit"
        self.froude = float(froude_limit or 0.0)
        self.min_parallel_cells = int(min_parallel_cells)
        self._scratch: dict[str, np.ndarray] = {}
        self._writable_n: tuple[np.ndarray, np.ndarray] | None = None

    # -- the Solver protocol ---------------------------------------------------------------------
    def initial_arrays(self, domain: Domain, h: np.ndarray) -> dict[str, np.ndarray]:
        """Zero face discharges ``qx``, ``qy`` (water at rest), and zero flow depths ``hx``,
        ``hy`` (the depth each face's discharge ran at in the last step, for the speed)."""
        ny, nx = domain.shape
        return {
            "qx": np.zeros((ny, nx + 1)),
            "qy": np.zeros((ny + 1, nx)),
            "hx": np.zeros((ny, nx + 1)),
            "hy": np.zeros((ny + 1, nx)),
        }

    def max_dt(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        deepest: float | None = None,
    ) -> float:
        """``alpha · dx / √(g h_max)`` (inf when there is no water anywhere); ``deepest``
        the deepest water of ``h`` where known."""
        if deepest is None:
            with self._threads(h.size):
                deepest = _max_depth(h, domain.active)
        h_max = max(deepest, _ghost_depth(domain))
        if not h_max > 0:
            return math.inf
        return self.alpha * domain.dx / math.sqrt(G * max(h_max, self.h_min))

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
        """Update the face discharges, then the depths, in place; the net volume (m³) out
        through the grid's sides; the speed at the end into ``speed`` where given (computed
        with the depths either way: the pass has the discharges at hand). The ``rain`` (a
        depth on every active cell) is a source of the continuity, added with each cell's
        net inflow: the faces move the water the step started with."""
        self._check(domain, h, arrays)
        ny, nx = domain.shape
        qx, qy = arrays["qx"], arrays["qy"]
        s = self._scratch
        if s.get("f") is None or s["f"].shape != (ny + 2, nx + 2):
            s.update(qx=np.empty_like(qx), qy=np.empty_like(qy), f=np.ones((ny + 2, nx + 2)),
                     out=np.empty(ny), speed=np.empty((ny, nx)))  # fmt: skip
        if speed is None:
            speed = s["speed"]
        elif speed.shape != (ny, nx) or speed.dtype != np.float64:
            raise ValueError(f"speed must be a {ny} x {nx} float64 array, not {speed.shape}")
        kinds = domain.side_kinds()
        lev = np.asarray(levels, dtype=np.float64)
        n = self._manning(domain)
        with self._threads(h.size):
            bands = bands_for(ny, numba.get_num_threads())
            _step(h, domain.zb, domain.active, n, qx, qy, s["qx"], s["qy"], arrays["hx"],
                  arrays["hy"], s["f"], s["out"], speed, kinds, lev, float(dt),
                  float(domain.dx), self.theta, self.implicit, self.froude, self.h_min, G,
                  bands, float(rain))  # fmt: skip
        return float(s["out"].sum())

    def speed(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The speed (m/s) in each cell, from its faces' discharges over their flow depths (0
        where shallower than ``h_min``); into ``out`` where given."""
        self._check(domain, h, arrays)
        out = np.empty(domain.shape) if out is None else out
        with self._threads(h.size):
            _speed(h, arrays["qx"], arrays["qy"], arrays["hx"], arrays["hy"], self.h_min, out)
        return out

    def _check(self, domain: Domain, h: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """A clear error where the state does not belong to this solver on this grid."""
        ny, nx = domain.shape
        want = {"qx": (ny, nx + 1), "qy": (ny + 1, nx), "hx": (ny, nx + 1), "hy": (ny + 1, nx)}
        got = {k: getattr(arrays.get(k), "shape", None) for k in want}
        if got != want or h.shape != (ny, nx):
            raise ValueError(
                f"the state's arrays {got} (depths {h.shape}) do not fit the {ny} x {nx} grid"
                f" ({want}): start from LocalInertia.initial_arrays or a state of this grid"
            )

    def _manning(self, domain: Domain) -> np.ndarray:
        """``domain.n``, or a writable copy of it where it is read-only (a per-cell Manning
        grid comes through ``np.broadcast_to`` as a read-only view; numba would compile the
        kernels once more for that type)."""
        n = domain.n
        if n.flags.writeable:
            return n
        if self._writable_n is None or self._writable_n[0] is not n:
            self._writable_n = (n, np.array(n))  # read-only: it cannot change under the copy
        return self._writable_n[1]

    @contextmanager
    def _threads(self, cells: int) -> Iterator[None]:
        """Run the kernels on one thread where the grid is small: there, waking the other
        threads costs more than it saves (and far more on a busy machine)."""
        if cells >= self.min_parallel_cells:
            yield
            return
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(before)


def _ghost_depth(domain: Domain) -> float:
    """The deepest water a level boundary's ghost cells can hold (over the level series)."""
    if all(b.kind != "level" for b in domain.boundaries.values()):
        return 0.0
    edges = {"north": (0, slice(None)), "south": (-1, slice(None)),
             "west": (slice(None), 0), "east": (slice(None), -1)}  # fmt: skip
    deepest = 0.0
    for side, index in edges.items():
        b = domain.boundary(side)
        if b.kind != "level":
            continue
        assert b.level is not None
        active = domain.active[index]
        if active.any():
            top = float(np.nanmax(b.level.values))
            deepest = max(deepest, top - float(domain.zb[index][active].min()))
    return deepest


# -- kernels ------------------------------------------------------------------------------------
@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The bits of a float32 as a uint32."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return types.uint32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, x):  # type: ignore[no-untyped-def]
    """A uint32's bits as a float32."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.uint32), codegen


@numba.njit(cache=True, inline="always")
def _cbrt_ratio(x):
    """∛x for 1e-37 < x < 1e37, to a few ulp, as a ratio ``(p, q)`` with ∛x = p / q: a
    single-precision guess that thirds the exponent bits (FreeBSD's cbrtf constant, 3 % off),
    a Halley step in single precision (2e-5 off), a Halley step in double precision (cubic
    convergence: round-off) whose division is left to the caller, who folds it into its own.
    Written so that the face loops vectorise (32-bit lanes: AVX2 has no 64-bit integer division
    by a constant); libm's cube root was two thirds of the face update, and divisions are what
    the face loop waits on."""
    x32 = np.float32(x)
    y = _from_bits(_bits(x32) // np.uint32(3) + np.uint32(709958130))
    y3 = y * y * y
    y = np.float64(y * ((y3 + np.float32(2.0) * x32) / (np.float32(2.0) * y3 + x32)))
    y3 = y * y * y
    return y * (y3 + 2.0 * x), 2.0 * y3 + x


@numba.njit(cache=True, inline="always")
def _inertial(q, q_minus, q_plus, d_eta, hf, nf, theta, implicit, froude, dt, dx, g):
    """One face's new discharge: the θ-weighted old discharge plus the pull of the water-level
    difference ``d_eta`` (along the face's axis), less friction ``b |q'|`` with
    ``b = g dt n² / h_f^(7/3)``. One division: ``b = (g dt n² c) / (h_f² p)`` with
    ``∛h_f = p / c``, and the quotients put over a common denominator ``D = h_f² p``."""
    # (g dt / dx) and (g dt): loop invariants the compiler hoists (no division per face)
    num = theta * q + 0.5 * (1.0 - theta) * (q_minus + q_plus) - (g * dt / dx) * hf * d_eta
    p, c = _cbrt_ratio(hf)
    d = hf * hf * p
    k = (g * dt) * nf * nf * c  # b = k / d
    if implicit:  # q' (1 + b |q'|) = num, solved exactly (the root that keeps num's sign):
        # q' = 2 num / (1 + √(1 + 4 b |num|)) = 2 num d / (d + √(d (d + 4 k |num|)))
        q = 2.0 * num * d / (d + math.sqrt(d * (d + 4.0 * k * abs(num))))
    else:  # de Almeida et al. (2012): friction with the old |q|
        q = num * d / (d + k * abs(q))
    if froude > 0.0:  # at most that Froude number over the face
        cap = froude * hf * math.sqrt(g * hf)
        q = min(max(q, -cap), cap)
    return q


@numba.njit(cache=True, inline="always")
def _side_face(kind, level, he, ze, ne, q, q_in, out, h_min, theta, implicit, froude, dt, dx, g):
    """The discharge through a side face of an active edge cell (depth ``he``, bed ``ze``,
    Manning ``ne``) and the flow depth over it (0: no flow); ``out`` +1 where the outward
    direction is the axis' (east, south), -1 where it is against it (west, north); ``q_in``
    the next face inwards."""
    if kind == _OPEN and he > h_min:  # critical depth, outward only
        return out * he * math.sqrt(g * he), he
    if kind == _LEVEL:  # a ghost cell with the edge's bed and the held level
        eta_e = ze + he
        eta_g = max(level, ze)
        hf = max(eta_e, eta_g) - ze
        if hf > h_min:
            d_eta = out * (eta_g - eta_e)
            return _inertial(q, q_in, q, d_eta, hf, ne, theta, implicit, froude, dt, dx, g), hf
    return 0.0, 0.0


# fused multiply-adds, reciprocals and reordered sums (about 12 % of a step); not "no NaNs":
# a state that blows up must still show it
@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"})
def _step(h, zb, active, n, qx, qy, qx1, qy1, hx, hy, f, out, speed, kinds, levels,
          dt, dx, theta, implicit, froude, h_min, g, bands, rain):  # fmt: skip
    """One step: new discharges into ``qx1``, ``qy1`` and the flow depths they ran at into
    ``hx``, ``hy``; each cell's outflow factor into ``f`` (``(ny + 2, nx + 2)``: cell ``(i, j)``
    at ``f[i + 1, j + 1]``, a frame of ones around them for the ghost cells beyond the sides,
    whose inflow is not limited); the limited discharges back into ``qx``, ``qy``, the new
    depths (with the step's ``rain`` on the active cells) and their speeds (as ``_speed``);
    ``out[i]`` the volume (m³) row ``i`` lost through the sides.

    The grid is cut into ``bands`` bands of at least four rows, run in parallel. Each band
    streams its rows through the three passes in one sweep: at row ``k`` the faces of row
    ``k + 1``, the factors of row ``k``, the continuity of row ``k - 1``, so that what one pass
    writes is still in cache when the next reads it, not three sweeps over the grid. A row's
    faces read the old depths and discharges of the rows beside it, which the continuity of
    those rows overwrites: the faces and factors of the three rows at each seam between bands
    are computed first, apart, and the bands skip them. The result is the same for any number
    of bands.

    The inner loops over a row are branch-free (a face's discharge is computed whether or not
    it flows, then selected), so that they vectorise."""
    ny = h.shape[0]
    for b in numba.prange(1, bands):  # the seams: faces of rows m - 1 .. m + 1, factors m - 1, m
        m = _band_start(b, bands, ny)
        for r in range(m - 1, m + 2):
            _faces(r, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
                   dt, dx, theta, implicit, froude, h_min, g)  # fmt: skip
        for r in range(m - 1, m + 1):
            _factor_row(r, h, qx1, qy1, f, dt / dx)
    for b in numba.prange(bands):
        a, e = _band_start(b, bands, ny), _band_start(b + 1, bands, ny)
        first_face = a + 2 if b > 0 else a  # the rows the seams left to this band
        first_factor = a + 1 if b > 0 else a
        last = e - 2 if b < bands - 1 else e - 1  # of faces and factors
        for k in range(a - 1, e + 1):
            if first_face <= k + 1 <= last:
                _faces(k + 1, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
                       dt, dx, theta, implicit, froude, h_min, g)  # fmt: skip
            if first_factor <= k <= last:
                _factor_row(k, h, qx1, qy1, f, dt / dx)
            if a <= k - 1:
                out[k - 1] = _continuity_row(k - 1, h, active, qx1, qy1, f, qx, qy, hx, hy,
                                             speed, h_min, dt / dx, rain) * dt * dx  # fmt: skip


def bands_for(rows: int, threads: int) -> int:
    """How many bands ``_step`` cuts a grid of ``rows`` rows into for ``threads`` threads: two
    per thread (for balance), none under four rows."""
    return max(1, min(2 * threads, rows // 4))


@numba.njit(cache=True, inline="always")
def _band_start(b, bands, ny):
    """The first row of band ``b`` of ``bands`` over ``ny`` rows (``ny`` for ``b == bands``)."""
    return b * ny // bands


@numba.njit(cache=True, inline="always")
def _faces(i, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
           dt, dx, theta, implicit, froude, h_min, g):  # fmt: skip
    """``_face_row``, with the default (implicit friction, no Froude limit) spelled out: the
    compiler drops the rest from that loop."""
    if implicit and froude == 0.0:
        _face_row(i, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
                  dt, dx, theta, True, 0.0, h_min, g)  # fmt: skip
    else:
        _face_row(i, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
                  dt, dx, theta, implicit, froude, h_min, g)  # fmt: skip


@numba.njit(cache=True, inline="always")
def _face_row(i, h, zb, active, n, qx, qy, qx1, qy1, hx, hy, kinds, levels,
              dt, dx, theta, implicit, froude, h_min, g):  # fmt: skip
    """New discharges (``qx1``, ``qy1``) from the old (``qx``, ``qy``), and their flow depths
    (``hx``, ``hy``; 0 where nothing flows), on the faces west and north of row ``i``'s cells,
    its east side and, for the last row, the south side."""
    ny, nx = h.shape
    # x faces of row i: the west side, the interior, the east side
    q, d = 0.0, 0.0
    if active[i, 0]:
        q, d = _side_face(kinds[2], levels[2], h[i, 0], zb[i, 0], n[i, 0], qx[i, 0], qx[i, 1],
                          -1.0, h_min, theta, implicit, froude, dt, dx, g)  # fmt: skip
    qx1[i, 0] = q
    hx[i, 0] = d
    for j in range(1, nx):
        q, d = _interior_face(h[i, j - 1], h[i, j], zb[i, j - 1], zb[i, j], active[i, j - 1],
                              active[i, j], n[i, j - 1], n[i, j], qx[i, j], qx[i, j - 1],
                              qx[i, j + 1], h_min, theta, implicit, froude, dt, dx, g)  # fmt: skip
        qx1[i, j] = q
        hx[i, j] = d
    e = nx - 1
    q, d = 0.0, 0.0
    if active[i, e]:
        q, d = _side_face(kinds[3], levels[3], h[i, e], zb[i, e], n[i, e], qx[i, nx], qx[i, e],
                          1.0, h_min, theta, implicit, froude, dt, dx, g)  # fmt: skip
    qx1[i, nx] = q
    hx[i, nx] = d
    # y faces north of row i: the north side for row 0
    if i == 0:
        for j in range(nx):
            q, d = 0.0, 0.0
            if active[0, j]:
                q, d = _side_face(kinds[0], levels[0], h[0, j], zb[0, j], n[0, j], qy[0, j],
                                  qy[1, j], -1.0, h_min, theta, implicit, froude, dt, dx,
                                  g)  # fmt: skip
            qy1[0, j] = q
            hy[0, j] = d
    else:
        for j in range(nx):
            q, d = _interior_face(h[i - 1, j], h[i, j], zb[i - 1, j], zb[i, j],
                                  active[i - 1, j], active[i, j], n[i - 1, j], n[i, j],
                                  qy[i, j], qy[i - 1, j], qy[i + 1, j], h_min, theta, implicit,
                                  froude, dt, dx, g)  # fmt: skip
            qy1[i, j] = q
            hy[i, j] = d
    # the south side, with the last row
    if i == ny - 1:
        for j in range(nx):
            q, d = 0.0, 0.0
            if active[i, j]:
                q, d = _side_face(kinds[1], levels[1], h[i, j], zb[i, j], n[i, j], qy[ny, j],
                                  qy[i, j], 1.0, h_min, theta, implicit, froude, dt, dx,
                                  g)  # fmt: skip
            qy1[ny, j] = q
            hy[ny, j] = d


@numba.njit(cache=True, inline="always")
def _interior_face(hl, hr, zl, zr, al, ar, nl, nr, q, q_minus, q_plus,
                   h_min, theta, implicit, froude, dt, dx, g):  # fmt: skip
    """The new discharge through the face between two cells (depths ``hl``, ``hr``, beds,
    active flags, Manning) and the flow depth over it; (0, 0) where it does not flow. Computed
    either way and selected, without a branch."""
    eta_l = zl + hl
    eta_r = zr + hr
    hf = max(eta_l, eta_r) - max(zl, zr)
    flows = al & ar & (hf > h_min)
    q = _inertial(q, q_minus, q_plus, eta_r - eta_l, max(hf, h_min), 0.5 * (nl + nr),
                  theta, implicit, froude, dt, dx, g)  # fmt: skip
    return (q, hf) if flows else (0.0, 0.0)


@numba.njit(cache=True, inline="always")
def _factor_row(i, h, qx1, qy1, f, c):
    """Per cell of row ``i``, the factor (≤ 1) its outgoing discharges are scaled by so that
    they take no more than it holds (``c = dt/dx``), into the framed ``f``."""
    nx = h.shape[1]
    for j in range(nx):
        out = (max(qx1[i, j + 1], 0.0) - min(qx1[i, j], 0.0)
               + max(qy1[i + 1, j], 0.0) - min(qy1[i, j], 0.0)) * c  # fmt: skip
        d = h[i, j]
        f[i + 1, j + 1] = d / out if out > d else 1.0


@numba.njit(cache=True, inline="always")
def _limited(q, f_from_west_or_north, f_from_east_or_south):
    """A face's discharge scaled by the factor of the cell it flows out of."""
    return q * (f_from_west_or_north if q > 0.0 else f_from_east_or_south)


@numba.njit(cache=True, inline="always")
def _continuity_row(i, h, active, qx1, qy1, f, qx, qy, hx, hy, speed, h_min, c, rain):
    """Limit the new discharges of row ``i``'s faces by their upstream cell's factor, store
    them in ``qx``, ``qy``, move the water (``c = dt/dx``), add the ``rain`` and give each cell
    its new speed (as ``_speed``); the net unit discharge out through the sides (m²/s, summed
    over the row's side faces). A face's limited discharge is computed by both rows it lies
    between (no row writes what another reads)."""
    ny, nx = h.shape
    # framed factors: this row's cells (r), the rows north (u) and south (s) of it
    r, u, s = i + 1, i, i + 2
    qx[i, 0] = _limited(qx1[i, 0], f[r, 0], f[r, 1])
    for j in range(nx):
        qw = _limited(qx1[i, j], f[r, j], f[r, j + 1])
        qe = _limited(qx1[i, j + 1], f[r, j + 1], f[r, j + 2])
        qn = _limited(qy1[i, j], f[u, j + 1], f[r, j + 1])
        qs = _limited(qy1[i + 1, j], f[r, j + 1], f[s, j + 1])
        d = h[i, j] + c * (qw - qe + qn - qs) + rain
        d = max(d, 0.0) if active[i, j] else h[i, j]
        h[i, j] = d
        speed[i, j] = _cell_speed(qw, qe, qn, qs, hx[i, j] + hx[i, j + 1],
                                  hy[i, j] + hy[i + 1, j]) if d >= h_min else 0.0  # fmt: skip
        qx[i, j + 1] = qe
        qy[i + 1, j] = qs
    lost = qx[i, nx] - qx[i, 0]
    if i == 0:
        for j in range(nx):
            qy[0, j] = _limited(qy1[0, j], f[u, j + 1], f[r, j + 1])
            lost -= qy[0, j]
    if i == ny - 1:
        for j in range(nx):
            lost += qy[ny, j]
    return lost


@numba.njit(parallel=True, cache=True)
def _max_depth(h, active):
    """The deepest water on active cells."""
    ny, nx = h.shape
    rows = np.zeros(ny)
    for i in numba.prange(ny):
        m = 0.0
        for j in range(nx):
            if active[i, j] and h[i, j] > m:
                m = h[i, j]
        rows[i] = m
    return rows.max()


@numba.njit(parallel=True, cache=True, fastmath={"contract", "arcp", "nsz", "reassoc"})
def _speed(h, qx, qy, hx, hy, h_min, out):
    """Cell-centred speed from the face velocities: per axis, the discharge through the cell's
    two faces over the flow depths it ran at (faces that carried nothing have depth 0 and
    discharge 0). Branch-free, so that it vectorises."""
    ny, nx = h.shape
    for i in numba.prange(ny):
        for j in range(nx):
            out[i, j] = _cell_speed(qx[i, j], qx[i, j + 1], qy[i, j], qy[i + 1, j],
                                    hx[i, j] + hx[i, j + 1],
                                    hy[i, j] + hy[i + 1, j]) if h[i, j] >= h_min else 0.0


@numba.njit(cache=True, inline="always")
def _cell_speed(qw, qe, qn, qs, dx_sum, dy_sum):
    """A cell's speed from the discharges through its four faces and, per axis, the sum of the
    flow depths they ran at (0 where neither face carried anything, and then neither did)."""
    # √(u² + v²) with u = a / sx and v = b / sy, over one division: √(a² sy² + b² sx²) / (sx sy)
    sx = dx_sum if dx_sum > 0.0 else 1.0
    sy = dy_sum if dy_sum > 0.0 else 1.0
    a = (qw + qe) * sy
    b = (qn + qs) * sx
    return math.sqrt(a * a + b * b) / (sx * sy)

"""The full shallow-water solver (``swe``): a Godunov-type finite-volume scheme for the 2-D
shallow-water equations on the domain's square cells, for dam breaks, fast and supercritical
flow, bores and moving shorelines.

The scheme (Audusse, Bouchut, Bristeau, Klein & Perthame 2004, "A fast and stable
well-balanced scheme with hydrostatic reconstruction for shallow water flows", SIAM J. Sci.
Comput. 25(6); the second-order form as in FullSWOF, Delestre et al. 2017):

- cell-centred ``h``, ``hu``, ``hv`` (``u`` east along the columns, ``v`` south along the rows);
- second order in space: MUSCL reconstruction with the minmod limiter of ``h``, the water level
  ``eta = z + h`` and the velocities ``u``, ``v`` (the bed at a face is ``eta - h`` there), first
  order next to walls and the grid's sides; second order in time: Heun's two-stage Runge–Kutta
  (the mean of two forward-Euler stages). ``order=1``: no reconstruction, one forward-Euler stage;
- unsplit: the fluxes of all x and y faces of a stage come from the same state;
- the hydrostatic reconstruction at each face (``z* = max(zL, zR)``, ``h* = max(eta - z*, 0)``)
  with the HLL Riemann solver (Toro's two-rarefaction wave-speed estimates, dry-state speeds
  ``u ± 2c``) and the tangential momentum carried upwind (HLLC-like contact): the lake at rest is
  preserved to round-off, dry islands and walls included;
- positivity: depths never go negative whatever the face reconstruction, by the draining-time
  limiter (Bollermann, Chen, Kurganov & Noelle 2013): a cell's outgoing fluxes of a stage are
  scaled down so that it cannot give more water than it holds. A face's flux is the same for
  both its cells, so mass is conserved to round-off;
- Manning friction point-implicit per stage, ``q / (1 + dt g n² |u| / h^(4/3))``: stable on
  thin layers and never reverses the flow;
- wetting and drying: below ``dry`` metres a cell's velocity is zero (its water stays);
- inactive cells (outside, or buildings) are walls: their faces reflect (the mirrored state,
  zero mass flux);
- the grid's sides (``Domain.side_kinds``, ``levels``): ``closed`` a reflecting wall; ``open``
  a free overfall: the exact Riemann solution against a dry bed beyond the side, so nothing
  comes in, supercritical outflow leaves unchanged (zero gradient) and subcritical water
  leaves at critical depth (the outgoing invariant ``u + 2c`` gives ``c_b = (u + 2c) / 3``: a
  broad-crested weir's discharge, ``(8/27) h sqrt(g h)`` per metre from water at rest);
  ``level`` a ghost cell holding the level (depth ``level - bed`` on the edge cell's bed, 0 if
  below it) whose velocity is the edge's when the water flows out (zero gradient) and zero when
  it flows in (a reservoir at rest at that level); the face's flux is then the exact Riemann
  solution (Toro 2001), so a level over a dry edge lets in exactly the dam-break discharge;
- time steps: ``max_dt`` counts the wet cells and the waves the level sides can send in; the
  run loop adds rain and inflows after it, so a step whose Courant number on the water it is
  given exceeds 0.5 (a dry grid's first step, a large inflow) is sub-cycled.

Numba kernels (``parallel=True``, ``prange`` over rows, float64) do all the work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
from numba import prange

from citytwin.flood.domain import SIDES, Domain, G

_CLOSED, _OPEN, _LEVEL, _WALL = 0, 1, 2, 3
_COURANT_MAX = 0.5
"""The Courant number a step may reach on the water it is given before it is sub-cycled."""
_PARALLEL_FROM = 8192
"""Grids of fewer cells run on one thread: a parallel region's start and barrier cost more
than their work (many times more when the cores are shared)."""


@contextmanager
def _threads_for(domain: Domain) -> Iterator[None]:
    """One numba thread for a small grid (restored after), all of them otherwise."""
    threads = numba.get_num_threads()
    if threads == 1 or domain.z.size >= _PARALLEL_FROM:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


# -- point functions ------------------------------------------------------------------------------
@numba.njit(cache=True)
def _minmod(a: float, b: float) -> float:
    """The smaller in magnitude of ``a`` and ``b`` when they have the same sign, else 0
    (branch-free)."""
    return (math.copysign(0.5, a) + math.copysign(0.5, b)) * min(abs(a), abs(b))


@numba.njit(cache=True)
def _hll(hl, ul, vl, hr, ur, vr, g):
    """HLL flux (mass, normal momentum, tangential momentum) between two states given in the
    face's frame (``u`` normal, ``v`` tangential)."""
    if hl <= 0.0 and hr <= 0.0:
        return 0.0, 0.0, 0.0
    cl = math.sqrt(g * hl)
    cr = math.sqrt(g * hr)
    if hl <= 0.0:
        sl = ur - 2.0 * cr
        sr = ur + cr
    elif hr <= 0.0:
        sl = ul - cl
        sr = ul + 2.0 * cl
    else:
        us = 0.5 * (ul + ur) + cl - cr
        cs = 0.5 * (cl + cr) + 0.25 * (ul - ur)
        sl = min(ul - cl, us - cs)
        sr = max(ur + cr, us + cs)
    ql = hl * ul
    qr = hr * ur
    if sl >= 0.0:
        f0 = ql
        f1 = ql * ul + 0.5 * g * hl * hl
    elif sr <= 0.0:
        f0 = qr
        f1 = qr * ur + 0.5 * g * hr * hr
    else:
        inv = 1.0 / (sr - sl)
        f0 = (sr * ql - sl * qr + sl * sr * (hr - hl)) * inv
        f1 = (
            sr * (ql * ul + 0.5 * g * hl * hl)
            - sl * (qr * ur + 0.5 * g * hr * hr)
            + sl * sr * (qr - ql)
        ) * inv
    ft = f0 * vl if f0 > 0.0 else f0 * vr
    return f0, f1, ft


@numba.njit(cache=True)
def _wave_fn(h, hk, ck, g):
    """Toro's ``f_K(h)`` of the exact Riemann solver (rarefaction below ``hk``, shock above)
    and its derivative."""
    if h <= hk:
        c = math.sqrt(g * h)
        return 2.0 * (c - ck), g / c
    gk = math.sqrt(0.5 * g * (h + hk) / (h * hk))
    return (h - hk) * gk, gk - 0.25 * g * (h - hk) / (gk * h * h)


@numba.njit(cache=True)
def _godunov(hl, ul, vl, hr, ur, vr, g):
    """The exact Riemann solution at ``x/t = 0`` (Toro 2001, "Shock-capturing methods for
    free-surface shallow flows", ch. 5, dry beds included) and its flux (mass, normal
    momentum, tangential momentum); used at the level sides, where a ghost cell at rest
    must let in exactly a reservoir's discharge."""
    if hl <= 0.0 and hr <= 0.0:
        return 0.0, 0.0, 0.0
    cl = math.sqrt(g * hl)
    cr = math.sqrt(g * hr)
    h = u = 0.0  # the sampled state (dry unless set)
    if hl <= 0.0:  # dry left: a rarefaction of the right state, its dry front uR - 2cR
        if ur - 2.0 * cr >= 0.0:
            pass
        elif ur + cr <= 0.0:
            h, u = hr, ur
        else:
            c = (2.0 * cr - ur) / 3.0
            h, u = c * c / g, -c
    elif hr <= 0.0 or 2.0 * (cl + cr) <= ur - ul:  # a dry right or a dry middle
        if ul - cl >= 0.0:
            h, u = hl, ul
        elif ul + 2.0 * cl > 0.0:
            c = (ul + 2.0 * cl) / 3.0
            h, u = c * c / g, c
        elif hr > 0.0:  # inside the dry middle or the right rarefaction
            if ur - 2.0 * cr >= 0.0:
                pass
            elif ur + cr <= 0.0:
                h, u = hr, ur
            else:
                c = (2.0 * cr - ur) / 3.0
                h, u = c * c / g, -c
    else:
        hs = (0.5 * (cl + cr) + 0.25 * (ul - ur)) ** 2 / g  # two-rarefaction guess
        hs = max(hs, 1e-12 * max(hl, hr))
        for _ in range(50):
            fl, dl = _wave_fn(hs, hl, cl, g)
            fr, dr = _wave_fn(hs, hr, cr, g)
            step = (fl + fr + ur - ul) / (dl + dr)
            hs_new = max(hs - step, 0.5 * hs)
            done = abs(hs_new - hs) <= 1e-13 * hs
            hs = hs_new
            if done:
                break
        fl, _ = _wave_fn(hs, hl, cl, g)
        fr, _ = _wave_fn(hs, hr, cr, g)
        us = 0.5 * (ul + ur) + 0.5 * (fr - fl)
        cs = math.sqrt(g * hs)
        if us >= 0.0:  # left of the contact: the left wave decides
            if hs > hl:  # a shock
                if ul - cl * math.sqrt(0.5 * (hs + hl) * hs / (hl * hl)) >= 0.0:
                    h, u = hl, ul
                else:
                    h, u = hs, us
            elif ul - cl >= 0.0:
                h, u = hl, ul
            elif us - cs <= 0.0:
                h, u = hs, us
            else:
                c = (ul + 2.0 * cl) / 3.0
                h, u = c * c / g, c
        else:
            if hs > hr:
                if ur + cr * math.sqrt(0.5 * (hs + hr) * hs / (hr * hr)) <= 0.0:
                    h, u = hr, ur
                else:
                    h, u = hs, us
            elif ur + cr <= 0.0:
                h, u = hr, ur
            elif us + cs >= 0.0:
                h, u = hs, us
            else:
                c = (2.0 * cr - ur) / 3.0
                h, u = c * c / g, -c
    fm = h * u
    return fm, fm * u + 0.5 * g * h * h, fm * (vl if fm > 0.0 else vr)


@numba.njit(cache=True)
def _side_flux(h, eta, un, vt, kind, level, g):
    """The flux (mass, normal momentum, tangential momentum) through a side face, in the
    frame of its outward normal, from the inner cell's face state (``un`` outward)."""
    if kind == _OPEN:
        if h <= 0.0:
            return 0.0, 0.0, 0.0
        c = math.sqrt(g * h)
        if un >= c:  # supercritical outflow: everything leaves (zero gradient)
            fm = h * un
            return fm, fm * un + 0.5 * g * h * h, fm * vt
        r = un + 2.0 * c  # the outgoing Riemann invariant fixes the critical state
        if r > 0.0:
            cb = r / 3.0
            hb = cb * cb / g
            fm = hb * cb
            return fm, fm * cb + 0.5 * g * hb * hb, fm * vt
        kind = _WALL  # the flow comes in too fast to leave: nothing passes
    if kind == _LEVEL:
        zf = eta - h
        hg = max(level - zf, 0.0)
        if un > 0.0:  # outflow: zero-gradient velocity
            return _godunov(h, un, vt, hg, un, vt, g)
        return _godunov(h, un, vt, hg, 0.0, 0.0, g)  # inflow: from a reservoir at rest
    if h <= 0.0:
        return 0.0, 0.0, 0.0
    _, fp, _ = _hll(h, un, vt, h, -un, vt, g)  # a wall: the mirrored state
    return 0.0, fp, 0.0


@numba.njit(cache=True)
def _face_flux(hl, el, ul, vl, hr, er, ur, vr, g):
    """Hydrostatic reconstruction at an inner face: the HLL flux of the reconstructed states
    and the pressure corrections ``g/2 (h² - h*²)`` of the left and right cells."""
    zs = max(el - hl, er - hr)
    hls = max(el - zs, 0.0)
    hrs = max(er - zs, 0.0)
    fm, fp, ft = _hll(hls, ul, vl, hrs, ur, vr, g)
    return fm, fp, ft, 0.5 * g * (hl * hl - hls * hls), 0.5 * g * (hr * hr - hrs * hrs)


# -- kernels --------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _add_depth(h, active, depth):
    """Add ``depth`` to the water of every active cell (uniform rain), on all threads."""
    ny, nx = h.shape
    for i in numba.prange(ny):
        for j in range(nx):
            h[i, j] += depth if active[i, j] else 0.0


@numba.njit(parallel=True, cache=True)
def _primitives(h, hu, hv, zb, active, dry, u, v, eta):
    """Velocities (0 below ``dry``) and the water level."""
    ny, nx = h.shape
    for i in prange(ny):
        for j in range(nx):
            d = h[i, j]
            if active[i, j] and d > dry:
                u[i, j] = hu[i, j] / d
                v[i, j] = hv[i, j] / d
            else:
                u[i, j] = 0.0
                v[i, j] = 0.0
            eta[i, j] = zb[i, j] + d


@numba.njit(parallel=True, cache=True)
def _slopes(h, eta, u, v, active, sxh, sxe, sxu, sxv, syh, sye, syu, syv):
    """Minmod-limited differences along x and y (0 next to a wall or a side)."""
    ny, nx = h.shape
    for i in prange(ny):
        for j in range(nx):
            sxh[i, j] = sxe[i, j] = sxu[i, j] = sxv[i, j] = 0.0
            syh[i, j] = sye[i, j] = syu[i, j] = syv[i, j] = 0.0
            if not active[i, j]:
                continue
            if 0 < j < nx - 1 and active[i, j - 1] and active[i, j + 1]:
                sxh[i, j] = _minmod(h[i, j] - h[i, j - 1], h[i, j + 1] - h[i, j])
                sxe[i, j] = _minmod(eta[i, j] - eta[i, j - 1], eta[i, j + 1] - eta[i, j])
                sxu[i, j] = _minmod(u[i, j] - u[i, j - 1], u[i, j + 1] - u[i, j])
                sxv[i, j] = _minmod(v[i, j] - v[i, j - 1], v[i, j + 1] - v[i, j])
            if 0 < i < ny - 1 and active[i - 1, j] and active[i + 1, j]:
                syh[i, j] = _minmod(h[i, j] - h[i - 1, j], h[i + 1, j] - h[i, j])
                sye[i, j] = _minmod(eta[i, j] - eta[i - 1, j], eta[i + 1, j] - eta[i, j])
                syu[i, j] = _minmod(u[i, j] - u[i - 1, j], u[i + 1, j] - u[i, j])
                syv[i, j] = _minmod(v[i, j] - v[i - 1, j], v[i + 1, j] - v[i, j])


@numba.njit(cache=True)
def _x_row(i, h, eta, u, v, sh, se, su, sv, active, kinds, levels, g, fm, fp, ft, cl, cr):
    """The fluxes through the x faces of row ``i`` (face ``k`` west of column ``k``): mass,
    x momentum, y momentum, the left and right cells' pressure corrections."""
    nx = h.shape[1]
    for k in range(nx + 1):
        jl = k - 1
        jr = k
        al = jl >= 0 and active[i, jl]
        ar = jr < nx and active[i, jr]
        a = b = c = d = e = 0.0
        if al and ar:
            a, b, c, d, e = _face_flux(
                h[i, jl] + 0.5 * sh[i, jl],
                eta[i, jl] + 0.5 * se[i, jl],
                u[i, jl] + 0.5 * su[i, jl],
                v[i, jl] + 0.5 * sv[i, jl],
                h[i, jr] - 0.5 * sh[i, jr],
                eta[i, jr] - 0.5 * se[i, jr],
                u[i, jr] - 0.5 * su[i, jr],
                v[i, jr] - 0.5 * sv[i, jr],
                g,
            )
        elif al:  # the east side, or a wall east of the cell
            kind = kinds[3] if jr == nx else _WALL
            a, b, c = _side_flux(
                h[i, jl] + 0.5 * sh[i, jl],
                eta[i, jl] + 0.5 * se[i, jl],
                u[i, jl] + 0.5 * su[i, jl],
                v[i, jl] + 0.5 * sv[i, jl],
                kind,
                levels[3],
                g,
            )
        elif ar:  # the west side, or a wall west of the cell: outward is -x
            kind = kinds[2] if jl < 0 else _WALL
            a, b, c = _side_flux(
                h[i, jr] - 0.5 * sh[i, jr],
                eta[i, jr] - 0.5 * se[i, jr],
                -(u[i, jr] - 0.5 * su[i, jr]),
                v[i, jr] - 0.5 * sv[i, jr],
                kind,
                levels[2],
                g,
            )
            a = -a
            c = -c
        fm[i, k] = a
        fp[i, k] = b
        ft[i, k] = c
        cl[i, k] = d
        cr[i, k] = e


@numba.njit(cache=True)
def _y_row(k, h, eta, u, v, sh, se, su, sv, active, kinds, levels, g, fm, fp, ft, cl, cr):
    """The fluxes through the y faces north of row ``k`` (``k = ny``: the south side): mass,
    y momentum, x momentum, the north and south cells' pressure corrections."""
    ny, nx = h.shape
    il = k - 1
    ir = k
    for j in range(nx):
        al = il >= 0 and active[il, j]
        ar = ir < ny and active[ir, j]
        a = b = c = d = e = 0.0
        if al and ar:
            a, b, c, d, e = _face_flux(
                h[il, j] + 0.5 * sh[il, j],
                eta[il, j] + 0.5 * se[il, j],
                v[il, j] + 0.5 * sv[il, j],
                u[il, j] + 0.5 * su[il, j],
                h[ir, j] - 0.5 * sh[ir, j],
                eta[ir, j] - 0.5 * se[ir, j],
                v[ir, j] - 0.5 * sv[ir, j],
                u[ir, j] - 0.5 * su[ir, j],
                g,
            )
        elif al:  # the south side, or a wall south of the cell
            kind = kinds[1] if ir == ny else _WALL
            a, b, c = _side_flux(
                h[il, j] + 0.5 * sh[il, j],
                eta[il, j] + 0.5 * se[il, j],
                v[il, j] + 0.5 * sv[il, j],
                u[il, j] + 0.5 * su[il, j],
                kind,
                levels[1],
                g,
            )
        elif ar:  # the north side, or a wall north of the cell: outward is -y
            kind = kinds[0] if il < 0 else _WALL
            a, b, c = _side_flux(
                h[ir, j] - 0.5 * sh[ir, j],
                eta[ir, j] - 0.5 * se[ir, j],
                -(v[ir, j] - 0.5 * sv[ir, j]),
                u[ir, j] - 0.5 * su[ir, j],
                kind,
                levels[0],
                g,
            )
            a = -a
            c = -c
        fm[k, j] = a
        fp[k, j] = b
        ft[k, j] = c
        cl[k, j] = d
        cr[k, j] = e


@numba.njit(parallel=True, cache=True)
def _fluxes(h, eta, u, v, sx, sy, active, kinds, levels, g, fx, fy):
    """All face fluxes of a stage: x faces ``(ny, nx + 1)``, y faces ``(ny + 1, nx)``."""
    ny = h.shape[0]
    for k in prange(ny + 1):
        if k < ny:
            _x_row(k, h, eta, u, v, sx[0], sx[1], sx[2], sx[3], active, kinds, levels, g,
                   fx[0], fx[1], fx[2], fx[3], fx[4])  # fmt: skip
        _y_row(k, h, eta, u, v, sy[0], sy[1], sy[2], sy[3], active, kinds, levels, g,
               fy[0], fy[1], fy[2], fy[3], fy[4])  # fmt: skip


@numba.njit(parallel=True, cache=True)
def _drain(h, active, fxm, fym, dt, dx, theta):
    """The draining-time factor of each cell: the share of its outgoing fluxes it can give
    without going dry below zero (1 for most cells)."""
    ny, nx = h.shape
    for i in prange(ny):
        for j in range(nx):
            theta[i, j] = 1.0
            if not active[i, j]:
                continue
            out = (
                max(fxm[i, j + 1], 0.0)
                + max(-fxm[i, j], 0.0)
                + max(fym[i + 1, j], 0.0)
                + max(-fym[i, j], 0.0)
            )
            need = out * dt
            have = h[i, j] * dx
            if need > have:
                theta[i, j] = have / need


@numba.njit(cache=True)
def _upwind(f, theta_minus, theta_plus):
    """The factor of a face's flux ``f``: the draining factor of the cell it leaves."""
    return theta_minus if f > 0.0 else theta_plus


@numba.njit(parallel=True, cache=True)
def _update(
    h, hu, hv, sx, sy, active, zb, n, theta, fx, fy, dt, dx, g, dry, blend, ho, huo, hvo, u, v, eta,
):  # fmt: skip
    """One forward-Euler stage from ``h, hu, hv`` with the fluxes ``fx``, ``fy`` and the
    draining factors ``theta``, then the friction and the dry threshold. ``blend`` false: the
    result goes into ``ho, huo, hvo`` and its velocities and level into ``u, v, eta`` (the next
    stage's); true (Heun's last stage): ``ho, huo, hvo`` become the mean of themselves and it."""
    ny, nx = h.shape
    r = dt / dx
    fxm, fxp, fxt, fxl, fxr = fx
    fym, fyp, fyt, fyl, fyr = fy
    for i in prange(ny):
        for j in range(nx):
            if not active[i, j]:
                continue
            th = theta[i, j]
            te = _upwind(fxm[i, j + 1], th, theta[i, j + 1] if j + 1 < nx else 1.0)
            tw = _upwind(fxm[i, j], theta[i, j - 1] if j > 0 else 1.0, th)
            ts = _upwind(fym[i + 1, j], th, theta[i + 1, j] if i + 1 < ny else 1.0)
            tn = _upwind(fym[i, j], theta[i - 1, j] if i > 0 else 1.0, th)
            d = h[i, j]
            dn = d - r * (te * fxm[i, j + 1] - tw * fxm[i, j] + ts * fym[i + 1, j] - tn * fym[i, j])
            qx = hu[i, j] - r * (
                te * fxp[i, j + 1] + fxl[i, j + 1] - tw * fxp[i, j] - fxr[i, j]
                + ts * fyt[i + 1, j] - tn * fyt[i, j]
                + g * d * (sx[1][i, j] - sx[0][i, j])
            )  # fmt: skip
            qy = hv[i, j] - r * (
                ts * fyp[i + 1, j] + fyl[i + 1, j] - tn * fyp[i, j] - fyr[i, j]
                + te * fxt[i, j + 1] - tw * fxt[i, j]
                + g * d * (sy[1][i, j] - sy[0][i, j])
            )  # fmt: skip
            if dn <= dry:
                dn = max(dn, 0.0)  # round-off below zero
                qx = 0.0
                qy = 0.0
            else:
                nn = n[i, j]
                if nn > 0.0:
                    # dt g n² |u| / h^(4/3) = dt g n² |q| / h^(7/3)
                    k = 1.0 + dt * g * nn * nn * math.sqrt(qx * qx + qy * qy) / (
                        dn * dn * np.cbrt(dn)
                    )
                    qx /= k
                    qy /= k
            if blend:
                dn = 0.5 * (ho[i, j] + dn)
                qx = 0.5 * (huo[i, j] + qx)
                qy = 0.5 * (hvo[i, j] + qy)
                if dn <= dry:
                    qx = 0.0
                    qy = 0.0
            ho[i, j] = dn
            huo[i, j] = qx
            hvo[i, j] = qy
            if not blend:
                if dn > dry:
                    u[i, j] = qx / dn
                    v[i, j] = qy / dn
                else:
                    u[i, j] = 0.0
                    v[i, j] = 0.0
                eta[i, j] = zb[i, j] + dn


@numba.njit(cache=True)
def _side_outflow(fxm, fym, theta, active, dt, dx):
    """The volume (m³) that leaves through the grid's sides in a stage, from the same face
    fluxes and draining factors as the update."""
    ny = fxm.shape[0]
    nx = fym.shape[1]
    out = 0.0
    for i in range(ny):
        f = fxm[i, 0]  # west side: outward is -x
        if f != 0.0:
            out -= f * (theta[i, 0] if f < 0.0 else 1.0)
        f = fxm[i, nx]
        if f != 0.0:
            out += f * (theta[i, nx - 1] if f > 0.0 else 1.0)
    for j in range(nx):
        f = fym[0, j]  # north side: outward is -y
        if f != 0.0:
            out -= f * (theta[0, j] if f < 0.0 else 1.0)
        f = fym[ny, j]
        if f != 0.0:
            out += f * (theta[ny - 1, j] if f > 0.0 else 1.0)
    return out * dt * dx


@numba.njit(parallel=True, cache=True)
def _wave_speed(h, hu, hv, active, dry, g):
    """The largest ``max(|u| + c, |v| + c)`` of any wet cell (per row, then overall)."""
    ny, nx = h.shape
    rows = np.zeros(ny)
    for i in prange(ny):
        m = 0.0
        for j in range(nx):
            d = h[i, j]
            if active[i, j] and d > dry:
                c = math.sqrt(g * d)
                s = max(abs(hu[i, j]), abs(hv[i, j])) / d + c
                if s > m:
                    m = s
        rows[i] = m
    return rows.max()


@numba.njit(cache=True)
def _ghost_speed(h, hu, hv, zb, active, kinds, levels, dry, g):
    """The largest signal speed the level sides' ghost cells can send in: ``2 sqrt(g h_g)``
    onto a dry edge, ``|u| + sqrt(g h_g)`` past a flowing one (0 without level sides)."""
    ny, nx = h.shape
    m = 0.0
    for side in range(4):
        if kinds[side] != _LEVEL:
            continue
        for k in range(nx if side < 2 else ny):
            i = 0 if side == 0 else (ny - 1 if side == 1 else k)
            j = k if side < 2 else (0 if side == 2 else nx - 1)
            hg = levels[side] - zb[i, j]
            if not active[i, j] or not hg > 0.0:
                continue
            c = math.sqrt(g * hg)
            un = 0.0
            if h[i, j] > dry:
                un = abs(hv[i, j] if side < 2 else hu[i, j]) / h[i, j]
            m = max(m, 2.0 * c, un + c)
    return m


@numba.njit(parallel=True, cache=True)
def _speed(h, hu, hv, active, dry, out):
    ny, nx = h.shape
    for i in prange(ny):
        for j in range(nx):
            d = h[i, j]
            if active[i, j] and d > dry:
                out[i, j] = math.sqrt(hu[i, j] ** 2 + hv[i, j] ** 2) / d
            else:
                out[i, j] = 0.0


# -- the solver -----------------------------------------------------------------------------------
class _Work:
    """Scratch arrays for one grid shape."""

    def __init__(self, ny: int, nx: int) -> None:
        def cells() -> np.ndarray:
            return np.zeros((ny, nx))

        self.u, self.v, self.eta, self.theta = cells(), cells(), cells(), cells()
        self.sx = tuple(cells() for _ in range(4))  # h, eta, u, v
        self.sy = tuple(cells() for _ in range(4))
        self.fx = tuple(np.zeros((ny, nx + 1)) for _ in range(5))  # mass, p, t, left, right
        self.fy = tuple(np.zeros((ny + 1, nx)) for _ in range(5))
        self.h1, self.hu1, self.hv1 = cells(), cells(), cells()


class ShallowWater:
    """The well-balanced finite-volume shallow-water solver (see the module's docstring).

    ``cfl`` the Courant number of ``max_dt`` (``dt = cfl dx / max(|u| + c, |v| + c)``; up to
    0.5 for the unsplit 2-D scheme), ``order`` 2 (MUSCL–Heun) or 1 (first order, forward Euler),
    ``dry`` the depth (m) below which a cell's water does not move."""

    name = "swe"

    def __init__(self, cfl: float = 0.45, order: int = 2, dry: float = 1e-5) -> None:
        if not 0.0 < cfl <= 0.5:
            raise ValueError(f"the Courant number must be in (0, 0.5], not {cfl}")
        if order not in (1, 2):
            raise ValueError(f"the order must be 1 or 2, not {order}")
        if not 0.0 < dry < 0.01:
            raise ValueError(f"the dry depth must be in (0, 0.01) m, not {dry}")
        self.cfl = float(cfl)
        self.order = int(order)
        self.dry = float(dry)
        self._work: dict[tuple[int, int], _Work] = {}

    def _scratch(self, shape: tuple[int, int]) -> _Work:
        work = self._work.get(shape)
        if work is None:
            work = self._work[shape] = _Work(*shape)
        return work

    def initial_arrays(self, domain: Domain, h: np.ndarray) -> dict[str, np.ndarray]:
        """Discharges per unit width ``hu`` (east) and ``hv`` (south), m²/s: zero (at rest)."""
        return {"hu": np.zeros(domain.shape), "hv": np.zeros(domain.shape)}

    def max_dt(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        deepest: float | None = None,
    ) -> float:
        """``cfl · dx / max(|u| + c, |v| + c)`` over the wet cells and the waves a level side
        can send in (at the highest level of its series); inf when nothing can move
        (``deepest`` is not needed: the speeds are)."""
        hu, hv = self._arrays(domain, arrays)
        kinds = domain.side_kinds()
        highest = np.full(4, np.nan)
        for k, side in enumerate(SIDES):
            series = domain.boundary(side).level
            if series is not None:
                highest[k] = np.max(series.values)
        with _threads_for(domain):
            s = self._signal_speed(domain, h, hu, hv, kinds, highest)
        return self.cfl * domain.dx / s if s > 0.0 else math.inf

    def _signal_speed(self, domain, h, hu, hv, kinds, levels) -> float:
        s = _wave_speed(h, hu, hv, domain.active, self.dry, G)
        if (kinds == _LEVEL).any():
            s = max(s, _ghost_speed(h, hu, hv, domain.zb, domain.active, kinds, levels,
                                    self.dry, G))  # fmt: skip
        return s

    def speed(
        self,
        domain: Domain,
        h: np.ndarray,
        arrays: dict[str, np.ndarray],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """``sqrt(u² + v²)`` (m/s), 0 where dry; into ``out`` where given."""
        hu, hv = self._arrays(domain, arrays)
        out = np.empty(domain.shape) if out is None else out
        with _threads_for(domain):
            _speed(h, hu, hv, domain.active, self.dry, out)
        return out

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
        """Advance ``h``, ``hu``, ``hv`` by ``dt`` seconds in place; the net volume (m³) that
        left through the grid's sides; the speed at the end into ``speed`` where given. The
        ``rain`` (a depth on every active cell) is added first, as the run loop adds the other
        sources.

        The run loop picks ``dt`` from ``max_dt`` before it adds the sources (rain, inflows),
        so the water it is given may be faster: where ``dt`` would exceed a Courant number of
        0.5 on it (a dry grid's first step, a large inflow), the step is cut into sub-steps of
        the solver's own Courant number."""
        hu, hv = self._arrays(domain, arrays)
        kinds = domain.side_kinds()
        levels = np.ascontiguousarray(levels, dtype=np.float64)
        missing = (kinds == _LEVEL) & ~np.isfinite(levels)
        if missing.any():
            raise ValueError("a 'level' side needs a finite held level (levels per side N,S,W,E)")
        if not dt > 0.0:
            raise ValueError(f"the time step must be > 0 s, not {dt}")
        with _threads_for(domain):
            if rain:
                _add_depth(h, domain.active, rain)
            out = self._step(domain, h, hu, hv, dt, kinds, levels)
        if speed is not None:
            self.speed(domain, h, arrays, out=speed)
        return out

    def _step(self, domain, h, hu, hv, dt, kinds, levels) -> float:
        s = self._signal_speed(domain, h, hu, hv, kinds, levels)
        if s == 0.0:  # nothing wet and nothing coming in: nothing moves
            return 0.0
        if dt * s <= _COURANT_MAX * domain.dx:
            return self._advance(domain, h, hu, hv, dt, kinds, levels)
        out, left = 0.0, dt
        while left > 0.0:
            sub = min(left, self.cfl * domain.dx / s) if s > 0.0 else left
            if left - sub <= 1e-9 * dt:
                sub = left
            out += self._advance(domain, h, hu, hv, sub, kinds, levels)
            left -= sub
            if left > 0.0:
                s = self._signal_speed(domain, h, hu, hv, kinds, levels)
        return out

    def _advance(self, domain, h, hu, hv, dt, kinds, levels) -> float:
        """One step of the scheme (Heun, or forward Euler at first order)."""
        w = self._scratch(domain.shape)
        active = domain.active
        _primitives(h, hu, hv, domain.zb, active, self.dry, w.u, w.v, w.eta)
        if self.order == 1:  # forward Euler, in place
            return self._stage(domain, h, hu, hv, h, hu, hv, dt, kinds, levels, w, False)
        # Heun: U1 = U + dt L(U); U <- (U + U1 + dt L(U1)) / 2
        out = self._stage(domain, h, hu, hv, w.h1, w.hu1, w.hv1, dt, kinds, levels, w, False)
        out += self._stage(domain, w.h1, w.hu1, w.hv1, h, hu, hv, dt, kinds, levels, w, True)
        return 0.5 * out

    def _stage(self, domain, h, hu, hv, ho, huo, hvo, dt, kinds, levels, w, blend) -> float:
        """A forward-Euler stage from ``h, hu, hv`` (whose velocities and level are in the
        scratch arrays) into ``ho, huo, hvo``; the volume that left through the sides."""
        active, dx = domain.active, domain.dx
        if self.order == 2:
            _slopes(h, w.eta, w.u, w.v, active, *w.sx, *w.sy)
        _fluxes(h, w.eta, w.u, w.v, w.sx, w.sy, active, kinds, levels, G, w.fx, w.fy)
        _drain(h, active, w.fx[0], w.fy[0], dt, dx, w.theta)
        out = _side_outflow(w.fx[0], w.fy[0], w.theta, active, dt, dx)
        _update(h, hu, hv, w.sx, w.sy, active, domain.zb, domain.n, w.theta, w.fx, w.fy,
                dt, dx, G, self.dry, blend, ho, huo, hvo, w.u, w.v, w.eta)  # fmt: skip
        return out

    @staticmethod
    def _arrays(domain: Domain, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        try:
            hu, hv = arrays["hu"], arrays["hv"]
        except KeyError as exc:
            raise ValueError(
                f"the swe solver's state needs 'hu' and 'hv' discharges, {exc} is missing"
                " (start from ShallowWater.initial_arrays)"
            ) from None
        if hu.shape != domain.shape or hv.shape != domain.shape:
            raise ValueError(f"'hu' and 'hv' must have the grid's shape {domain.shape}")
        return hu, hv

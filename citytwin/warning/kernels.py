"""Compiled scans (numba) of the warning engine: one pass over readings sorted by series
(a datastream's local row) and time, carrying each series' state from the previous batch.

``NO_TIME`` (the smallest int64) marks "no time"; times are int64 nanoseconds (UTC).
"""

from __future__ import annotations

import numba
import numpy as np

NO_TIME = np.iinfo(np.int64).min


@numba.njit(cache=True)
def scan_levels(
    loc: np.ndarray,
    t: np.ndarray,
    sig: np.ndarray,
    raise_at: np.ndarray,
    hold_at: np.ndarray,
    duration: int,
    level: np.ndarray,
    raw: np.ndarray,
    since: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Warning levels with hysteresis (and a sustain time) along each series.

    ``sig`` is the signal oriented so that higher is worse, ``raise_at`` the ascending level
    values (oriented likewise) and ``hold_at = raise_at - hysteresis``. A series' raw level
    ``L`` moves to ``clip(L, #(raise_at <= s), #(hold_at <= s))``: it rises as soon as a level
    is reached and falls only below the level's hold value. Its emitted level is the highest
    ``k <= L`` held for at least ``duration`` ns (``since[r, k - 1]``: when ``L`` reached ``k``).
    NaN signals change nothing. ``level``, ``raw`` and ``since`` (per series) are updated in
    place; returns the emitted level before and after each reading."""
    m = len(loc)
    n_levels = len(raise_at)
    before = np.empty(m, np.int8)
    after = np.empty(m, np.int8)
    for i in range(m):
        r = loc[i]
        before[i] = level[r]
        s = sig[i]
        if np.isnan(s):
            after[i] = level[r]
            continue
        up = 0
        hold = 0
        for k in range(n_levels):
            if s >= raise_at[k]:
                up += 1
            if s >= hold_at[k]:
                hold += 1
        lv = raw[r]
        if lv < up:
            lv = up
        if lv > hold:
            lv = hold
        raw[r] = lv
        out = 0
        for k in range(n_levels):
            if k < lv:
                if since[r, k] == NO_TIME:
                    since[r, k] = t[i]
                if t[i] - since[r, k] >= duration:
                    out = k + 1
            else:
                since[r, k] = NO_TIME
        level[r] = out
        after[i] = out
    return before, after


@numba.njit(cache=True)
def rates(
    loc: np.ndarray, t: np.ndarray, v: np.ndarray, new: np.ndarray, window: int, per: float
) -> np.ndarray:
    """Rate of change per ``per`` ns at each reading flagged ``new``: against the latest
    earlier reading of its series at least ``window`` ns before it and at most 2 × ``window``
    before it (NaN where there is none). Readings sorted by (series, time)."""
    m = len(loc)
    out = np.full(m, np.nan)
    start = 0
    p = -1
    for i in range(m):
        if i == 0 or loc[i] != loc[i - 1]:
            start = i
            p = i - 1
        while p + 1 < i and t[p + 1] <= t[i] - window:
            p += 1
        if new[i] and p >= start and t[i] - t[p] <= 2 * window:
            out[i] = (v[i] - v[p]) / (t[i] - t[p]) * per
    return out


@numba.njit(cache=True)
def silences(
    loc: np.ndarray, t: np.ndarray, last: np.ndarray, active: np.ndarray, silence: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Silences longer than ``silence`` ns before each reading: a raise at the previous
    reading (``last[r]`` for a series' first) plus ``silence`` and a clear at the reading, or
    only the clear where the series was already silent (``active``, updated in place; the
    clear no earlier than that raise).
    Returns the events' reading index, kind (1 raise, 0 clear), time and gap (ns)."""
    m = len(loc)
    idx = np.empty(2 * m, np.int64)
    kind = np.empty(2 * m, np.int8)
    at = np.empty(2 * m, np.int64)
    gap = np.empty(2 * m, np.int64)
    n = 0
    for i in range(m):
        r = loc[i]
        first = i == 0 or loc[i - 1] != r
        p = last[r] if first else t[i - 1]
        if active[r]:
            # the raise was stamped p + silence: a clear never comes before it, even when the
            # device uploads readings it buffered while it seemed silent
            clear_at = max(t[i], p + silence) if p != NO_TIME else t[i]
            idx[n], kind[n], at[n], gap[n] = i, 0, clear_at, t[i] - p
            n += 1
            active[r] = False
        elif p != NO_TIME and t[i] - p > silence:
            idx[n], kind[n], at[n], gap[n] = i, 1, p + silence, silence
            idx[n + 1], kind[n + 1], at[n + 1], gap[n + 1] = i, 0, t[i], t[i] - p
            n += 2
    return idx[:n], kind[:n], at[:n], gap[:n]


@numba.njit(cache=True)
def combine(
    grp: np.ndarray,
    t: np.ndarray,
    part: np.ndarray,
    delta: np.ndarray,
    counts: np.ndarray,
    active: np.ndarray,
    need_all: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """AND (``need_all``) / OR of conditions per group, over changes sorted by (group, time):
    ``delta`` (+1 / -1) moves ``counts[g, part]`` (members holding the part's condition); after
    all changes of one (group, time) the group holds when every (any) part has a member.
    ``counts`` and ``active`` are updated in place; returns for each change of state the index
    of the last change of its block and the new state."""
    m = len(grp)
    n_parts = counts.shape[1]
    idx = np.empty(m, np.int64)
    state = np.empty(m, np.bool_)
    n = 0
    i = 0
    while i < m:
        g = grp[i]
        j = i
        while j < m and grp[j] == g and t[j] == t[i]:
            counts[g, part[j]] += delta[j]
            j += 1
        on = need_all
        for c in range(n_parts):
            if need_all and counts[g, c] <= 0:
                on = False
            if not need_all and counts[g, c] > 0:
                on = True
        if on != active[g]:
            active[g] = on
            idx[n] = j - 1
            state[n] = on
            n += 1
        i = j
    return idx[:n], state[:n]

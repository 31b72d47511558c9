"""Incidents: alarms that share a place or a network relation, correlated into one incident.

    changes = correlate(alarms, open_incidents, relations, now=now)
    # changes.incidents: opened / updated / closed incidents (INCIDENT_COLUMNS)
    # changes.assignments: alarm_id → incident_id for alarms that joined an incident
    # changes.changes: incident_id, change ('opened' | 'updated' | 'closed'), at

``alarms`` are *every* active alarm (an alarm raised an hour ago may relate to one raised now)
plus those cleared since the last call (and, for titles that count them all, the open
incidents' earlier cleared alarms); ``Relations`` is what the app knows about the
datastreams and networks behind them. Three relations join active alarms:

- **surcharge** (gravity networks: storm, sewer, combined). A *high-water* alarm is a levelled
  alarm on a gauge at a node of the network: ``depth_below_cover`` going below (less
  freeboard) or ``water_level`` going above. Two join when one lies downstream of the other
  along the flow direction, at most ``max_gap_m`` of pipe apart, and no *monitored* node
  between them reads normal: a gauge that is not in alarm says the water is not high there,
  so it breaks the chain; a long stretch without any gauge (more than ``max_gap_m``, about
  the spacing of gauges on a line where one manhole in ten has one) breaks it too. Joined
  alarms on one line, or on branches draining into an alarmed manhole, are one incident whose
  point is the *most upstream* alarmed node: the one from which most of the others are
  reached downstream (ties: the longest reach along the pipes). That point is where the
  surcharge began and stays its point while alarms clear; it moves only to a newly alarmed
  node upstream of it. Its title counts the points (gauged assets) that alarmed in it and,
  once some have cleared, how many are still in alarm ("3 of 5 points still in alarm"); pass
  the incident's cleared alarms along for a full count (a point whose alarm is not passed is
  not counted).
- **DMA** (water supply). Low-pressure alarms of a district metered area and high-inflow
  alarms at its inlets (``flow`` tagged ``dma_inlet``) share the DMA. Low pressure together
  with an inflow rise is a ``suspected_burst`` with candidate valve segments; low pressure at
  several points without it (or inflow rises alone) is a ``place`` incident of the DMA that
  becomes a suspected burst when the inflow alarm comes (a kind only ever goes up).
  *Cascaded DMAs*: a DMA fed through another (``WaterNetwork.fed_from``) takes its water over
  the other's inlets, so a burst downstream raises the inflow of every DMA it is fed through.
  A DMA's own use is its *net* inflow (its inlets less what it passes on), so an inflow rise
  of a DMA is *passed on* — not its own — while a DMA fed through it (downstream, and not
  also feeding it back) has an inflow alarm too, or once it has joined the incident of such a
  DMA (that explanation stays while the downstream alarm clears first). A passed-on rise
  never makes its DMA a suspected burst. It joins the incident of the nearest DMA downstream
  with an inflow alarm as context, and the alarms of its own DMA (the pressure there drops
  as its mains carry the extra water) come along through it; that incident's DMA (zone,
  title, candidates, inlet) stays the one whose own inflow rose: the most downstream. An
  incident's DMA moves only downstream, when the inflow of a DMA fed through it rises.
  Candidates: every valve segment of the DMA scored by a drop-weighted kernel of its network
  distance to the alarmed pressure points, ``sum_i w_i exp(-d_i / kernel_m) / sum_i w_i``,
  with ``w_i`` the relative pressure drop ``(normal - value) / normal`` where the usual
  value before the alarm is known (``Relations.normal``), else the alarm's severity, and
  ``d_i`` the shortest distance along open pipes from the point to the segment's links. A
  score of 1 is a segment at the only point that dropped; of segments that meet at a valve by
  an alarmed node, the one holding the node ranks first. The top ``top_n`` come with their
  links, the valves that isolate them (boundary valves open in normal operation), their
  centre and their distance to the nearest alarmed point. A suspected burst's point is the
  top candidate's centre, its asset the DMA inlet whose inflow rose.
- **place**: every other alarm with a position joins alarms within ``radius_m`` raised within
  ``window`` of it (gas detectors near each other, a river gauge and a rain gauge ...), and,
  whenever raised, those of an open place incident within ``radius_m``.

``no_data`` alarms (a silent sensor) say nothing about the city and never join; alarms in a
network relation never join place incidents. An incident opens with ``min_alarms`` related
alarms, keeps the alarms it has (it never splits; it never merges with another: an alarm
related to two incidents joins the nearer) and closes when all its alarms are cleared.

Deterministic and idempotent: an incident's id is a digest of the alarms it opened with, its
times are the alarms' event times (``now`` only stands in for a missing one), so correlating
the same alarms again changes nothing. Pure: frames, arrays and graphs in, frames out.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

from citytwin.errors import InvalidInput
from citytwin.networks.graph import Network
from citytwin.networks.segments import Segments
from citytwin.networks.trace import BACKWARD, BOTH, FORWARD
from citytwin.warning.alarms import INCIDENT_COLUMNS, typed_frame
from citytwin.warning.rules import LEVELS

INCIDENT_KINDS = ("surcharge", "suspected_burst", "place")
INCIDENT_CHANGES = ("opened", "updated", "closed")
ROLES = ("high_water", "pressure_low", "inflow_high", "place", "none")
"""What an alarm is to the correlation (``alarm_roles``)."""

DEFAULT_DIRECTION = {
    "depth_below_cover": "below",
    "water_level": "above",
    "pressure": "below",
    "flow": "above",
}
"""The direction a rule is taken to watch when ``Relations.directions`` doesn't name it."""
HIGH_WATER = {"depth_below_cover": "below", "water_level": "above"}
"""Gauge properties and the direction in which they mean high water."""
_NETWORK_KINDS = ("threshold", "sustained", "rate_of_change", "anomaly")
_RANK = {level: i for i, level in enumerate(LEVELS)}
_MIN_LENGTH = 1e-3  # m: a link without a length (pump, weir) still orders its ends
_NAT = np.iinfo(np.int64).min
_HOUR = pd.Timedelta("1h")
_TIMES = ("opened_at", "updated_at", "closed_at")
_EMPTY_INCIDENTS = typed_frame("incidents")


@dataclass(frozen=True)
class CorrelationSettings:
    """How near is related. ``radius_m`` and ``window``: place incidents; ``max_gap_m``: pipe
    length between two alarmed gauges of one surcharge; ``kernel_m``: distance scale of a
    pressure drop around a burst; ``top_n`` candidate segments; ``min_alarms`` to open."""

    radius_m: float = 150.0
    window: pd.Timedelta = _HOUR
    max_gap_m: float = 1000.0
    kernel_m: float = 250.0
    top_n: int = 5
    min_alarms: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", pd.Timedelta(self.window))
        for name in ("radius_m", "max_gap_m", "kernel_m"):
            value = float(getattr(self, name))
            if not value > 0:
                raise InvalidInput(f"{name} must be positive, got {value}", source="settings")
        if self.window < pd.Timedelta(0) or self.top_n < 1 or self.min_alarms < 2:
            raise InvalidInput(
                "window must be >= 0, top_n >= 1 and min_alarms >= 2",
                source="settings",
                hint="an incident correlates at least two alarms",
            )


@dataclass(frozen=True, eq=False)
class GravityNetwork:
    """A gravity network for surcharge chains: its graph, the flow direction of every link
    (``citytwin.networks.trace`` codes), the nodes with a level gauge (``monitored``) and the
    links shut in normal operation (``closed``)."""

    graph: Network
    direction: np.ndarray
    monitored: np.ndarray
    closed: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_length(self.direction, self.graph.n_links, "direction", "link")
        _check_length(self.monitored, self.graph.n_nodes, "monitored", "node")
        if self.closed is not None:
            _check_length(self.closed, self.graph.n_links, "closed", "link")

    @cached_property
    def downstream(self) -> sparse.csr_matrix:
        """Directed pipe lengths: entry ``(u, v)`` where water flows from ``u`` to ``v``."""
        g, d = self.graph, np.asarray(self.direction)
        ok = np.ones(g.n_links, bool) if self.closed is None else ~np.asarray(self.closed, bool)
        fwd = ok & ((d == FORWARD) | (d == BOTH))
        bwd = ok & ((d == BACKWARD) | (d == BOTH))
        u, v = g.link_nodes[:, 0], g.link_nodes[:, 1]
        w = _lengths(g)
        return _min_matrix(np.r_[u[fwd], v[bwd]], np.r_[v[fwd], u[bwd]],
                           np.r_[w[fwd], w[bwd]], g.n_nodes)  # fmt: skip

    @cached_property
    def _row_of_entry(self) -> np.ndarray:
        return np.repeat(np.arange(self.graph.n_nodes), np.diff(self.downstream.indptr))

    def passable(self, alarmed: np.ndarray) -> sparse.csr_matrix:
        """``downstream`` without the links leaving monitored nodes that are not ``alarmed``
        (a normal gauge ends a chain: it can be reached, not passed)."""
        barrier = np.asarray(self.monitored, bool).copy()
        barrier[alarmed] = False
        if not barrier.any():
            return self.downstream
        adj = self.downstream.copy()
        adj.data[barrier[self._row_of_entry]] = 0.0
        adj.eliminate_zeros()
        return adj


@dataclass(frozen=True, eq=False)
class WaterNetwork:
    """A pressurised network for burst candidates: its graph, the DMA (zone id, or None) of
    every node, its valve segments (``citytwin.networks.segments.valve_segments``), the valve
    ids aligned with ``segments.valve_link`` and which valves are shut in normal operation
    (DMA boundaries), the links shut in normal operation, and how the DMAs feed each other:
    ``fed_from`` names, per DMA, the DMAs whose water enters it over its inlets (a DMA not
    named is fed from the sources)."""

    graph: Network
    node_zone: np.ndarray
    segments: Segments
    valve_ids: np.ndarray | None = None
    valve_closed: np.ndarray | None = None
    closed: np.ndarray | None = None
    fed_from: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        feeds = {}
        for dma, upstream in dict(self.fed_from).items():
            if isinstance(upstream, str) or not all(isinstance(u, str) for u in upstream):
                raise InvalidInput(
                    f"fed_from[{dma!r}] must list DMA ids, got {upstream!r}",
                    source="relations",
                    hint="e.g. {'DMA-04': ['DMA-02', 'DMA-03']}",
                )
            feeds[str(dma)] = tuple(sorted({u for u in upstream if u != dma}))
        object.__setattr__(self, "fed_from", feeds)
        _check_length(self.node_zone, self.graph.n_nodes, "node_zone", "node")
        _check_length(self.segments.node_segment, self.graph.n_nodes, "segments", "node")
        n_valves = len(self.segments.valve_link)
        if self.valve_ids is not None:
            _check_length(self.valve_ids, n_valves, "valve_ids", "valve")
        if self.valve_closed is not None:
            _check_length(self.valve_closed, n_valves, "valve_closed", "valve")
        if self.closed is not None:
            _check_length(self.closed, self.graph.n_links, "closed", "link")

    @cached_property
    def lengths(self) -> sparse.csr_matrix:
        """Undirected pipe lengths over the open links."""
        g = self.graph
        ok = np.ones(g.n_links, bool) if self.closed is None else ~np.asarray(self.closed, bool)
        u, v, w = g.link_nodes[ok, 0], g.link_nodes[ok, 1], _lengths(g)[ok]
        return _min_matrix(np.r_[u, v], np.r_[v, u], np.r_[w, w], g.n_nodes)

    @cached_property
    def _segment_links(self) -> tuple[np.ndarray, np.ndarray]:
        return _group(self.segments.link_segment, self.segments.n_segments)

    @cached_property
    def _segment_valves(self) -> tuple[np.ndarray, np.ndarray]:
        """Per segment the valves on its boundary that are open in normal operation (once per
        place): closing them isolates it."""
        seg = self.segments
        sides = seg.valve_sides
        v = np.flatnonzero(
            (seg.valve_first == np.arange(len(seg.valve_first))) & (sides[:, 0] != sides[:, 1])
        )
        if self.valve_closed is not None:
            v = v[~np.asarray(self.valve_closed, bool)[v]]
        owner = np.r_[sides[v, 0], sides[v, 1]]
        indptr, at = _group(owner, seg.n_segments)
        return indptr, np.r_[v, v][at]

    @cached_property
    def fed_through(self) -> dict[str, dict[str, int]]:
        """Per DMA the DMAs fed through it and how many DMAs away (1: over one of its own
        outlets): downstream along ``fed_from``, and not also feeding it back (DMAs in a loop
        feed each other: neither passes the other's water on)."""
        below: dict[str, list[str]] = {}
        for dma, upstream in self.fed_from.items():
            for u in upstream:
                below.setdefault(u, []).append(dma)
        reach: dict[str, dict[str, int]] = {}
        for start in below:
            steps, frontier = {start: 0}, [start]
            while frontier:
                nxt = []
                for z in frontier:
                    for d in below.get(z, ()):
                        if d not in steps:
                            steps[d] = steps[z] + 1
                            nxt.append(d)
                frontier = nxt
            del steps[start]
            reach[start] = steps
        return {
            z: {d: k for d, k in sorted(r.items()) if z not in reach.get(d, {})}
            for z, r in reach.items()
        }

    def segment_links(self, s: int) -> np.ndarray:
        """Link indices of segment ``s``."""
        indptr, links = self._segment_links
        return links[indptr[s] : indptr[s + 1]]

    def segment_valves(self, s: int) -> list[str]:
        """Ids of the valves that isolate segment ``s`` (sorted; empty without valve ids)."""
        if self.valve_ids is None:
            return []
        indptr, valves = self._segment_valves
        return sorted(
            {str(i) for i in np.asarray(self.valve_ids)[valves[indptr[s] : indptr[s + 1]]]}
        )

    def zone_segments(self, zone: str) -> np.ndarray:
        """Mask of the segments in ``zone``: with a node in it, or, for segments without
        nodes (a pipe with valves at both ends), with a link end in it."""
        cache = self.__dict__.setdefault("_zone_cache", {})
        if zone not in cache:
            seg = self.segments
            in_zone = np.asarray(self.node_zone == zone, bool)
            mask = np.zeros(seg.n_segments, bool)
            mask[seg.node_segment[in_zone]] = True
            has_nodes = np.bincount(seg.node_segment, minlength=seg.n_segments) > 0
            ends = in_zone[self.graph.link_nodes].any(axis=1)
            mask[seg.link_segment[ends & ~has_nodes[seg.link_segment]]] = True
            cache[zone] = mask
        return cache[zone]


def _empty_streams() -> pd.DataFrame:
    return pd.DataFrame(
        {"observed_property": [], "tags": [], "node": []}, index=pd.Index([], name="datastream_id")
    )


@dataclass(frozen=True, eq=False)
class Relations:
    """What the app knows about the alarms' datastreams and networks.

    ``streams``: indexed by ``datastream_id``: ``observed_property``, ``tags`` (a list or
    comma-separated text), ``node`` (id of the graph node of its network the gauge watches:
    the manhole, the junction, the node next to a meter on a link; None where it watches no
    node). ``gravity`` / ``water``: networks by name (``GravityNetwork`` / ``WaterNetwork``).
    ``directions``: rule id → ``above`` / ``below`` (else ``DEFAULT_DIRECTION`` by property).
    ``normal``: alarm id → the datastream's usual value before the alarm was raised (pressure
    alarms; weighs burst candidates). ``zone_names``: zone id → name for titles."""

    streams: pd.DataFrame = field(default_factory=_empty_streams)
    gravity: Mapping[str, GravityNetwork] = field(default_factory=dict)
    water: Mapping[str, WaterNetwork] = field(default_factory=dict)
    directions: Mapping[str, str] = field(default_factory=dict)
    normal: Mapping[str, float] = field(default_factory=dict)
    zone_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in ("observed_property", "tags", "node") if c not in self.streams]
        if missing:
            raise InvalidInput(
                f"Relations.streams lacks the column(s) {', '.join(missing)}",
                source="relations",
                hint="index by datastream_id with observed_property, tags, node",
            )


@dataclass
class IncidentChanges:
    """What a correlation changed: the incidents opened, updated or closed (their full rows,
    ``INCIDENT_COLUMNS``), the alarms whose incident changed (``alarm_id``, ``incident_id``)
    and one row per incident change (``incident_id``, ``change``, ``at``)."""

    incidents: pd.DataFrame
    assignments: pd.DataFrame
    changes: pd.DataFrame

    @property
    def empty(self) -> bool:
        """Nothing changed."""
        return not (len(self.incidents) or len(self.assignments) or len(self.changes))


# -- the alarms -------------------------------------------------------------------------------
_ALARM_NEEDS = ("alarm_id", "rule_id", "kind", "status", "raised_at")


@dataclass
class _Alarms:
    """The alarms as arrays, in the order (raised_at, alarm_id)."""

    ids: np.ndarray
    rule: np.ndarray
    kind: np.ndarray
    datastream: np.ndarray
    asset: np.ndarray
    network: np.ndarray
    zone: np.ndarray
    severity: np.ndarray
    incident: np.ndarray
    x: np.ndarray
    y: np.ndarray
    value: np.ndarray
    active: np.ndarray
    raised: np.ndarray  # int64 ns
    event: np.ndarray  # int64 ns: the latest of raised, updated, cleared
    cleared: np.ndarray  # int64 ns (_NAT where not cleared)

    def __len__(self) -> int:
        return len(self.ids)


def _prepare_alarms(alarms: pd.DataFrame) -> _Alarms:
    missing = [c for c in _ALARM_NEEDS if c not in alarms]
    if missing:
        raise InvalidInput(
            f"the alarms lack column(s) {', '.join(missing)}",
            source="alarms",
            hint="pass alarm rows (citytwin.warning.alarms.ALARM_COLUMNS)",
        )
    frame = alarms.drop_duplicates("alarm_id", keep="first")
    status = frame["status"].to_numpy(object)
    bad = ~np.isin(status, ["active", "cleared"])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            f"alarm {frame['alarm_id'].iloc[i]} has status {status[i]!r}",
            source="alarms",
            hint="an alarm is 'active' or 'cleared'",
        )
    raised = _ns(frame["raised_at"], "raised_at")
    if (raised == _NAT).any():
        i = int(np.flatnonzero(raised == _NAT)[0])
        raise InvalidInput(f"alarm {frame['alarm_id'].iloc[i]} has no raised_at", source="alarms")
    updated = _ns(frame["updated_at"], "updated_at") if "updated_at" in frame else raised
    none = np.full(len(frame), _NAT, np.int64)
    cleared = _ns(frame["cleared_at"], "cleared_at") if "cleared_at" in frame else none
    ids = frame["alarm_id"].astype(str).to_numpy(object)
    order = np.lexsort((ids, raised))
    n = len(frame)

    def col(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(n, None, object)
        values = frame[name].to_numpy(object)
        return np.array([None if _missing(v) else str(v) for v in values], dtype=object)[order]

    def num(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(n, np.nan)
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(float)[order]

    return _Alarms(
        ids=ids[order],
        rule=col("rule_id"),
        kind=col("kind"),
        datastream=col("datastream_id"),
        asset=col("asset_id"),
        network=col("network"),
        zone=col("zone"),
        severity=col("severity"),
        incident=col("incident_id"),
        x=num("x"),
        y=num("y"),
        value=num("value"),
        active=(status == "active")[order],
        raised=raised[order],
        event=np.maximum.reduce([raised, updated, cleared])[order],
        cleared=cleared[order],
    )


def alarm_roles(alarms: pd.DataFrame, relations: Relations) -> pd.DataFrame:
    """What each alarm is to the correlation: ``alarm_id``, ``role`` (``ROLES``), ``node``
    (the graph node id of a network role, else None)."""
    a = _prepare_alarms(alarms)
    role, node = _roles(a, relations)
    ids = np.full(len(a), None, object)
    for i in np.flatnonzero(node >= 0):
        net = relations.gravity.get(a.network[i]) or relations.water.get(a.network[i])
        ids[i] = net.graph.node_ids[node[i]]
    return pd.DataFrame({"alarm_id": a.ids, "role": role, "node": ids})


def _roles(a: _Alarms, rel: Relations) -> tuple[np.ndarray, np.ndarray]:
    """Role and graph node index (-1: none) of every alarm."""
    n = len(a)
    role = np.full(n, "none", object)
    node = np.full(n, -1, np.int64)
    if n == 0:
        return role, node
    at = rel.streams.index.get_indexer(pd.Index(a.datastream, dtype=object))
    known = at >= 0

    def column(name: str) -> np.ndarray:
        out = np.full(n, None, object)
        out[known] = rel.streams[name].to_numpy(object)[at[known]]
        return out

    prop, tags, node_id = column("observed_property"), column("tags"), column("node")
    node_at = np.full(n, -1, np.int64)  # the stream's node in the alarm's network
    for net, g in (*rel.gravity.items(), *rel.water.items()):
        mine = np.flatnonzero((a.network == net) & known & pd.notna(node_id))
        if len(mine):
            node_at[mine] = g.graph._node_lookup.get_indexer(node_id[mine])
    for i in range(n):
        kind, net, p = a.kind[i], a.network[i], prop[i]
        if kind == "no_data":
            continue
        direction = rel.directions.get(a.rule[i]) or DEFAULT_DIRECTION.get(p)
        levelled = kind in _NETWORK_KINDS
        if levelled and net in rel.gravity and HIGH_WATER.get(p) == direction and node_at[i] >= 0:
            role[i], node[i] = "high_water", node_at[i]
            continue
        if levelled and net in rel.water and a.zone[i] is not None:
            if p == "pressure" and direction == "below":
                role[i], node[i] = "pressure_low", node_at[i]
                continue
            if p == "flow" and direction == "above" and "dma_inlet" in _tag_set(tags[i]):
                role[i] = "inflow_high"
                continue
        if math.isfinite(a.x[i]) and math.isfinite(a.y[i]):
            role[i] = "place"
    return role, node


# -- relations between alarms -----------------------------------------------------------------
@dataclass
class _Chains:
    """Downstream pipe lengths between the alarmed nodes of one gravity network."""

    nodes: np.ndarray  # (k,) graph node indices
    dist: np.ndarray  # (k, k): dist[p, q] from nodes[p] down to nodes[q] (inf: not related)


def _surcharge_edges(a, role, node, rel, settings, edges) -> dict[str, _Chains]:
    chains = {}
    for net, g in rel.gravity.items():
        at = np.flatnonzero(a.active & (role == "high_water") & (a.network == net))
        if not len(at):
            continue
        nodes, first = np.unique(node[at], return_index=True)
        for i, p in zip(at, np.searchsorted(nodes, node[at]), strict=True):
            if i != at[first[p]]:
                edges.append((0.0, int(at[first[p]]), int(i)))  # gauges of one node
        dist = dijkstra(g.passable(nodes), directed=True, indices=nodes, limit=settings.max_gap_m)
        sub = dist[:, nodes]
        np.fill_diagonal(sub, np.inf)
        for p, q in zip(*np.nonzero(np.isfinite(sub)), strict=True):
            edges.append((float(sub[p, q]), int(at[first[p]]), int(at[first[q]])))
        chains[net] = _Chains(nodes, sub)
    return chains


def _dma_edges(a, role, edges) -> None:
    at = np.flatnonzero(a.active & np.isin(role, ["pressure_low", "inflow_high"]))
    head: dict[tuple[str, str], int] = {}
    for i in at:
        key = (a.network[i], a.zone[i])
        if key in head:
            edges.append((0.0, head[key], int(i)))
        else:
            head[key] = int(i)


def _passed_on(a, role, rel, owner, incidents, edges) -> np.ndarray:
    """Which active inflow rises are water passed on to a DMA fed through theirs (module
    note): while such a DMA has an inflow alarm (then an edge, ahead of all others, to the
    first of the nearest one's), or when the alarm is in an incident of such a DMA."""
    passed = np.zeros(len(a), bool)
    at = np.flatnonzero(a.active & (role == "inflow_high"))
    first: dict[tuple[str, str], int] = {}
    for i in at:
        first.setdefault((a.network[i], a.zone[i]), int(i))
    for i in at:
        water = rel.water.get(a.network[i])
        below = water.fed_through.get(a.zone[i]) if water is not None else None
        if not below:
            continue
        rising = [(k, z) for z, k in below.items() if (a.network[i], z) in first]
        if rising:
            passed[i] = True
            edges.append((-1.0, int(i), first[(a.network[i], min(rising)[1])]))
            continue
        held = incidents.get(owner.get(a.ids[i]))
        if held is not None and held["network"] == a.network[i] and held["zone"] in below:
            passed[i] = True
    return passed


def _place_edges(a, role, settings, owned, edges) -> None:
    """Place-role alarms within ``radius_m`` of each other, raised within ``window`` of each
    other unless one of them is in an open incident (``owned``): that one is going on now."""
    at = np.flatnonzero(a.active & (role == "place"))
    if len(at) < 2:
        return
    xy = np.column_stack([a.x[at], a.y[at]])
    pairs = cKDTree(xy).query_pairs(settings.radius_m, output_type="ndarray")
    if not len(pairs):
        return
    i, j = at[pairs[:, 0]], at[pairs[:, 1]]
    close = (np.abs(a.raised[i] - a.raised[j]) <= settings.window.value) | owned[i] | owned[j]
    d = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
    edges.extend(zip(d[close].tolist(), i[close].tolist(), j[close].tolist(), strict=True))


class _Groups:
    """Union-find over alarm positions; a component holds at most one incident."""

    def __init__(self, labels: list[str | None]) -> None:
        self.parent = list(range(len(labels)))
        self.label = labels

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri == rj:
            return
        li, lj = self.label[ri], self.label[rj]
        if li is not None and lj is not None and li != lj:
            return  # two incidents: they stay apart
        if ri > rj:
            ri, rj = rj, ri
        self.parent[rj] = ri
        self.label[ri] = li if li is not None else lj


# -- correlation ------------------------------------------------------------------------------
def correlate(
    alarms: pd.DataFrame,
    incidents: pd.DataFrame | None,
    relations: Relations | None = None,
    *,
    now: Any,
    settings: CorrelationSettings | None = None,
) -> IncidentChanges:
    """Correlate ``alarms`` (every active alarm, plus those cleared since the last call and
    best the open incidents' other cleared alarms; ``ALARM_COLUMNS``, of which ``alarm_id``,
    ``rule_id``, ``kind``, ``status`` and ``raised_at`` are required) with the open
    ``incidents`` (``INCIDENT_COLUMNS``; closed rows are ignored). An alarm of an open
    incident that is not among ``alarms`` counts as cleared (and is left out of the counts in
    titles); a repeated alarm id counts once (its first row). See the module note."""
    settings = settings or CorrelationSettings()
    relations = relations or Relations()
    now_ns = int(_stamp(now, "now").value)
    a = _prepare_alarms(alarms)
    open_ = _open_incidents(incidents)
    position = {aid: i for i, aid in enumerate(a.ids)}

    # who belongs where: the incidents' lists, then alarms naming an open incident
    owner: dict[str, str] = {}
    for rec in open_.values():
        for aid in rec["alarm_ids"]:
            owner.setdefault(aid, rec["incident_id"])
    for i in range(len(a)):
        if a.active[i] and a.incident[i] in open_ and a.ids[i] not in owner:
            owner[a.ids[i]] = a.incident[i]  # listed below with the incident's alarms

    role, node = _roles(a, relations)
    edges: list[tuple[float, int, int]] = []
    chains = _surcharge_edges(a, role, node, relations, settings, edges)
    _dma_edges(a, role, edges)
    passed = _passed_on(a, role, relations, owner, open_, edges)
    owned = np.array([aid in owner for aid in a.ids], dtype=bool)
    _place_edges(a, role, settings, owned, edges)

    groups = _Groups([owner.get(aid) if a.active[i] else None for i, aid in enumerate(a.ids)])
    first: dict[str, int] = {}
    for i in np.flatnonzero(a.active):
        iid = owner.get(a.ids[i])
        if iid is not None:
            groups.union(first.setdefault(iid, int(i)), int(i))
    for _, i, j in sorted(edges):
        groups.union(i, j)
    members: dict[int, list[int]] = {}
    for i in np.flatnonzero(a.active):
        members.setdefault(groups.find(int(i)), []).append(int(i))

    ctx = _Context(a, role, node, passed, relations, settings, chains, position, now_ns)
    rows, changes, assignments = [], [], []
    kept: set[str] = set()
    for root, pos in sorted(members.items()):
        iid = groups.label[root]
        if iid is None:
            if len(pos) < settings.min_alarms:
                continue
            rec, prev = _new_incident(a, pos), None
        else:
            prev = open_[iid]
            rec = {**prev, "alarm_ids": list(prev["alarm_ids"])}
            listed = set(rec["alarm_ids"])
            rec["alarm_ids"] += [a.ids[i] for i in pos if a.ids[i] not in listed]
            kept.add(iid)
        ctx.describe(rec, pos, prev)
        iid = rec["incident_id"]
        if prev is None:
            rows.append(rec)
            changes.append((iid, "opened", rec["opened_at"]))
        elif _differs(rec, prev):
            rec["updated_at"] = max(prev["updated_at"], ctx.event_time(rec))
            rows.append(rec)
            changes.append((iid, "updated", rec["updated_at"]))
        assignments += [(a.ids[i], iid) for i in pos if a.incident[i] != iid]
    for iid, prev in open_.items():
        if iid in kept:
            continue
        rec = {**prev, "status": "closed"}
        cleared = [a.cleared[position[m]] for m in prev["alarm_ids"] if m in position]
        cleared = [t for t in cleared if t != _NAT]
        rec["closed_at"] = rec["updated_at"] = _from_ns(max(cleared) if cleared else now_ns)
        rows.append(rec)
        changes.append((iid, "closed", rec["closed_at"]))

    return IncidentChanges(
        typed_frame("incidents", rows) if rows else _EMPTY_INCIDENTS.copy(),
        pd.DataFrame(assignments, columns=["alarm_id", "incident_id"], dtype=object),
        pd.DataFrame(
            {
                "incident_id": pd.Series([c[0] for c in changes], dtype=object),
                "change": pd.Series([c[1] for c in changes], dtype=object),
                "at": pd.Series([c[2] for c in changes], dtype=pd.DatetimeTZDtype("us", "UTC")),
            }
        ),
    )


def _new_incident(a: _Alarms, pos: list[int]) -> dict[str, Any]:
    ids = [a.ids[i] for i in pos]  # in the order raised
    digest = hashlib.sha1("\x1f".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]
    opened = _from_ns(int(a.raised[pos].max()))
    return {
        "incident_id": f"IN-{digest}",
        "kind": None,
        "status": "open",
        "opened_at": opened,
        "updated_at": opened,
        "closed_at": pd.NaT,
        "alarm_ids": ids,
        "candidates": [],
    }


_COMPARED = ("kind", "title", "status", "severity", "network", "zone", "asset_id")


def _differs(rec: Mapping[str, Any], prev: Mapping[str, Any]) -> bool:
    for c in _COMPARED:
        if _plain(rec.get(c)) != _plain(prev.get(c)):
            return True
    for c in ("x", "y"):
        u, v = _float(rec.get(c)), _float(prev.get(c))
        if not (u == v or (math.isnan(u) and math.isnan(v)) or abs(u - v) < 1e-6):
            return True
    if list(rec["alarm_ids"]) != list(prev["alarm_ids"]):
        return True
    new, old = rec.get("candidates") or [], prev.get("candidates") or []
    return new != old and _plain(new) != _plain(old)


@dataclass
class _Context:
    a: _Alarms
    role: np.ndarray
    node: np.ndarray
    passed: np.ndarray  # inflow rises passed on downstream
    rel: Relations
    settings: CorrelationSettings
    chains: dict[str, _Chains]
    position: dict[str, int]
    now_ns: int

    def event_time(self, rec: Mapping[str, Any]) -> pd.Timestamp:
        """The latest event of the incident's alarms (``now`` where none is known)."""
        t = [self.a.event[self.position[m]] for m in rec["alarm_ids"] if m in self.position]
        t = [v for v in t if v != _NAT]
        return _from_ns(max(t) if t else self.now_ns)

    def describe(self, rec: dict[str, Any], pos: list[int], prev: Mapping | None) -> None:
        """Fill in kind, title, severity, place and candidates from the active alarms
        ``pos`` (and the incident's other alarms for its kind)."""
        a, role = self.a, self.role
        roles = set(role[pos].tolist())
        every = {role[self.position[m]] for m in rec["alarm_ids"] if m in self.position} | roles
        ranks = [_RANK[s] for s in a.severity[pos] if s in _RANK]
        if ranks:
            rec["severity"] = LEVELS[max(ranks)]
        if "high_water" in roles or (prev is not None and prev["kind"] == "surcharge"):
            self._surcharge(rec, [i for i in pos if role[i] == "high_water"] or pos, prev)
        elif every & {"pressure_low", "inflow_high"}:
            self._dma(rec, pos, prev)
        else:
            self._place(rec, pos)

    # -- kinds
    def _surcharge(self, rec: dict[str, Any], pos: list[int], prev: Mapping | None) -> None:
        a = self.a
        net = min(Counter(a.network[pos].tolist()).items(), key=lambda c: (-c[1], str(c[0])))[0]
        pos = [i for i in pos if a.network[i] == net]
        chains = self.chains.get(net)
        reach = np.zeros(len(pos))
        far = np.zeros(len(pos))
        if chains is not None and np.isin(self.node[pos], chains.nodes).all():
            at = np.searchsorted(chains.nodes, self.node[pos])
            closure = chains.dist[np.ix_(at, at)]  # then through alarmed nodes (Floyd)
            for m in range(len(at)):
                np.minimum(closure, closure[:, m : m + 1] + closure[m : m + 1, :], out=closure)
            np.fill_diagonal(closure, np.inf)
            finite = np.isfinite(closure)
            reach = finite.sum(axis=1)
            far = np.where(finite, closure, 0).max(axis=1)
        before = prev["asset_id"] if prev is not None else None
        best = min(
            range(len(pos)),
            key=lambda k: (-reach[k], -far[k], a.asset[pos[k]] != before, k),
        )
        anchor: int | None = pos[best]
        if (
            before is not None
            and a.asset[anchor] != before
            and prev["network"] == net
            and not self._upstream(net, anchor, before)
        ):
            anchor = None  # the surcharge began at the incident's point: it stays there
        every = [self.position[m] for m in rec["alarm_ids"] if m in self.position]
        active = {_point(a, i) for i in pos}
        points = active | {_point(a, i) for i in every if self.role[i] == "high_water"}
        rec.update(kind="surcharge", network=net)
        if anchor is not None:
            rec.update(zone=a.zone[anchor], asset_id=a.asset[anchor], x=a.x[anchor], y=a.y[anchor])
            if not math.isfinite(rec["x"]) and chains is not None and self.node[anchor] >= 0:
                xy = self.rel.gravity[net].graph.node_xy
                if xy is not None:
                    rec["x"], rec["y"] = (float(v) for v in xy[self.node[anchor]])
        rec["title"] = (
            f"surcharge in the {net} network from {rec['asset_id']} "
            f"({_in_alarm(len(active), len(points))})"
        )

    def _upstream(self, net: str, i: int, asset: str) -> bool:
        """Whether alarm ``i``'s node drains (through any pipes) to ``asset``: a node of the
        gravity network ``net``, or the node of a known alarm on that asset."""
        g, a = self.rel.gravity.get(net), self.a
        if g is None or self.node[i] < 0:
            return False
        at = int(g.graph._node_lookup.get_indexer([asset])[0])
        if at < 0:
            known = np.flatnonzero((a.asset == asset) & (a.network == net) & (self.node >= 0))
            if not len(known):
                return False
            at = int(self.node[known[0]])
        dist = dijkstra(g.downstream, directed=True, indices=int(self.node[i]))
        return bool(np.isfinite(dist[at]))

    def _dma(self, rec: dict[str, Any], pos: list[int], prev: Mapping | None) -> None:
        a, role, rel = self.a, self.role, self.rel
        dma = [i for i in pos if role[i] in ("pressure_low", "inflow_high")] or pos
        own = [i for i in dma if role[i] == "inflow_high" and not self.passed[i]]
        net, zone = self._dma_zone(dma, own, prev)
        mine = [i for i in dma if a.network[i] == net and a.zone[i] == zone]
        low = [i for i in mine if role[i] == "pressure_low"]
        rise = [i for i in own if a.network[i] == net and a.zone[i] == zone]
        passed = [i for i in mine if role[i] == "inflow_high" and self.passed[i]]
        moved = prev is not None and (prev["network"], prev["zone"]) != (net, zone)
        burst = bool(low and rise) or (prev is not None and prev["kind"] == "suspected_burst")
        name = rel.zone_names.get(zone) or zone
        rec.update(network=net, zone=zone, kind="suspected_burst" if burst else "place")
        if moved:
            rec["candidates"] = []  # they were another DMA's
        weights = self._drop_weights(low)
        worst = low[int(np.argmax(weights))] if low else None
        inlet = max(rise, key=lambda i: (_RANK.get(a.severity[i], -1), -i)) if rise else None
        if burst:
            rec["title"] = f"suspected burst in {name}"
            if low and net in rel.water:
                rec["candidates"] = _candidates(
                    rel.water[net], zone, self.node[low], weights, self.settings
                )
            top = rec["candidates"][0] if rec["candidates"] else {}
            point = (top["x"], top["y"]) if top.get("x") is not None else None
            if point is None and low:
                point = (a.x[worst], a.y[worst])
            if point is None and inlet is not None and (moved or prev is None):
                point = (a.x[inlet], a.y[inlet])
            anchor = inlet if inlet is not None else worst
        elif low:
            every = [self.position[m] for m in rec["alarm_ids"] if m in self.position]
            active = {_point(a, i) for i in low}
            points = active | {_point(a, i) for i in every if role[i] == "pressure_low"
                               and a.network[i] == net and a.zone[i] == zone}  # fmt: skip
            rec["title"] = f"low pressure in {name} ({_in_alarm(len(active), len(points))})"
            anchor, point = worst, (a.x[worst], a.y[worst])
        elif rise or passed:
            rec["title"] = f"high inflow into {name}"
            anchor = max(rise or passed, key=lambda i: (_RANK.get(a.severity[i], -1), -i))
            point = (a.x[anchor], a.y[anchor])
        else:  # none of its active alarms is one of its DMA's any more: keep what it says
            anchor = point = None
        if anchor is not None and (inlet is not None or not burst):
            rec["asset_id"] = a.asset[anchor]
        if point is not None:
            rec["x"], rec["y"] = float(point[0]), float(point[1])

    def _dma_zone(self, dma: list[int], own: list[int], prev: Mapping | None) -> tuple:
        """The DMA of an incident (network, zone): the one whose own inflow rose; an open
        incident keeps its DMA unless the own inflow of a DMA fed through it rose."""
        a = self.a
        if prev is not None and prev["zone"] is not None:
            here = (prev["network"], prev["zone"])
            water = self.rel.water.get(here[0])
            below = water.fed_through.get(here[1], {}) if water is not None else {}
            down = [(below[a.zone[i]], a.zone[i]) for i in own
                    if a.network[i] == here[0] and a.zone[i] in below]  # fmt: skip
            mine = any((a.network[i], a.zone[i]) == here for i in own)
            return (here[0], min(down)[1]) if down and not mine else here
        if own:
            i = max(own, key=lambda i: (_RANK.get(a.severity[i], -1), -i))
            return a.network[i], a.zone[i]
        return a.network[dma[0]], a.zone[dma[0]]

    def _place(self, rec: dict[str, Any], pos: list[int]) -> None:
        a = self.a
        anchor = max(pos, key=lambda i: (_RANK.get(a.severity[i], -1), -i))
        every = [self.position[m] for m in rec["alarm_ids"] if m in self.position]
        nets = {a.network[i] for i in every}
        rules = sorted({a.rule[i] for i in every if a.rule[i] is not None})
        listed = ", ".join(rules[:3]) + (f" and {len(rules) - 3} more" if len(rules) > 3 else "")
        where = a.asset[anchor] or f"({a.x[anchor]:.0f}, {a.y[anchor]:.0f})"
        rec.update(
            kind="place",
            network=nets.pop() if len(nets) == 1 else None,
            zone=a.zone[anchor],
            asset_id=a.asset[anchor],
            x=a.x[anchor],
            y=a.y[anchor],
            title=f"{len(rec['alarm_ids'])} alarms within {self.settings.radius_m:g} m of "
            f"{where}: {listed}",
        )

    def _drop_weights(self, low: list[int]) -> np.ndarray:
        """Relative pressure drop of each low-pressure alarm (see the module note)."""
        a = self.a
        drop = np.full(len(low), np.nan)
        for k, i in enumerate(low):
            normal = _float(self.rel.normal.get(a.ids[i]))
            if math.isfinite(normal) and normal > 0 and math.isfinite(a.value[i]):
                drop[k] = max((normal - a.value[i]) / normal, 0.0)
        known = np.isfinite(drop)
        if known.any() and drop[known].max() > 0:
            return np.where(known, drop, np.median(drop[known]))
        return np.array([_RANK.get(a.severity[i], 0) + 1.0 for i in low])


def _candidates(
    water: WaterNetwork,
    zone: str,
    nodes: np.ndarray,
    weights: np.ndarray,
    settings: CorrelationSettings,
) -> list[dict[str, Any]]:
    """The valve segments of ``zone`` most likely to hold the burst (module note)."""
    ok = nodes >= 0
    if not ok.any():
        return []
    sources, inverse = np.unique(nodes[ok], return_inverse=True)
    w = np.zeros(len(sources))
    np.maximum.at(w, inverse, weights[ok])  # one point, several alarms: its largest drop
    if not w.sum() > 0:
        w[:] = 1.0
    scale = settings.kernel_m
    dist = dijkstra(water.lengths, directed=False, indices=sources, limit=8 * scale)
    score = (w[:, None] * np.exp(-dist / scale)).sum(axis=0) / w.sum()
    nearest = dist.min(axis=0)
    g, seg = water.graph, water.segments
    ends = g.link_nodes
    k = seg.n_segments
    seg_score, seg_dist, seg_own = np.zeros(k), np.full(k, np.inf), np.zeros(k)
    np.maximum.at(seg_score, seg.link_segment, score[ends].max(axis=1))
    np.minimum.at(seg_dist, seg.link_segment, nearest[ends].min(axis=1))
    # ties (segments meeting at a valve by an alarmed node): the one holding the node first
    np.maximum.at(seg_own, seg.node_segment, score)
    pick = np.flatnonzero(water.zone_segments(zone) & (seg_score > 0))
    pick = pick[np.lexsort((pick, seg_dist[pick], -seg_own[pick], -seg_score[pick]))]
    pick = pick[: settings.top_n]
    out = []
    for s in pick.tolist():
        links = water.segment_links(s)
        centre = (np.nan, np.nan)
        if g.node_xy is not None:
            xy = g.node_xy[ends[links]].reshape(-1, 2)
            xy = xy[np.isfinite(xy).all(axis=1)]
            centre = xy.mean(axis=0) if len(xy) else centre
        out.append(
            {
                "segment": int(s),
                "score": round(float(seg_score[s]), 4),
                "distance_m": round(float(seg_dist[s]), 1),
                "links": [str(i) for i in g.link_ids[links]],
                "valves": water.segment_valves(s),
                "x": round(float(centre[0]), 2) if np.isfinite(centre[0]) else None,
                "y": round(float(centre[1]), 2) if np.isfinite(centre[1]) else None,
            }
        )
    return out


# -- helpers ----------------------------------------------------------------------------------
def _open_incidents(incidents: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """The open incidents as records by id, oldest first."""
    if incidents is None or not len(incidents):
        return {}
    missing = [c for c in ("incident_id", "status", "alarm_ids") if c not in incidents]
    if missing:
        raise InvalidInput(
            f"the incidents lack column(s) {', '.join(missing)}",
            source="incidents",
            hint="pass incident rows (citytwin.warning.alarms.INCIDENT_COLUMNS)",
        )
    frame = incidents[incidents["status"] == "open"]
    n = len(frame)
    columns: dict[str, list] = {}
    for c in INCIDENT_COLUMNS:
        if c not in frame:
            columns[c] = [[] if c in ("alarm_ids", "candidates") else None] * n
        elif c in _TIMES:
            try:
                t = pd.to_datetime(frame[c], utc=True)
            except (TypeError, ValueError):
                raise InvalidInput(f"incident column {c!r} must hold times") from None
            columns[c] = list(t.dt.as_unit("us"))
        elif c == "alarm_ids":
            columns[c] = [[str(m) for m in _listed(v)] for v in frame[c]]
        elif c == "candidates":
            columns[c] = [[dict(x) for x in _listed(v)] for v in frame[c]]
        elif c in ("x", "y"):
            columns[c] = pd.to_numeric(frame[c], errors="coerce").astype(float).tolist()
        else:
            columns[c] = [None if _missing(v) else str(v) for v in frame[c].to_numpy(object)]
    records = [{c: columns[c][k] for c in INCIDENT_COLUMNS} for k in range(n)]
    for rec in records:
        if rec["opened_at"] is None or rec["opened_at"] is pd.NaT:
            raise InvalidInput(
                f"incident {rec['incident_id']} has no opened_at", source="incidents"
            )
        if rec["updated_at"] is None or rec["updated_at"] is pd.NaT:
            rec["updated_at"] = rec["opened_at"]
        if rec["closed_at"] is None:
            rec["closed_at"] = pd.NaT
    records.sort(key=lambda r: (r["opened_at"], r["incident_id"]))
    return {r["incident_id"]: r for r in records}


def _listed(value: Any) -> list:
    if isinstance(value, str):
        value = json.loads(value) if value else []
    return [] if _missing(value) else list(value)


def _check_length(values: Any, n: int, name: str, what: str) -> None:
    if len(values) != n:
        raise InvalidInput(
            f"{name} has {len(values)} values for {n} {what}s",
            source="relations",
            hint=f"give one value per {what} of the graph",
        )


def _lengths(g: Network) -> np.ndarray:
    """Link lengths for distances: the length, else the distance between the ends."""
    w = np.full(g.n_links, np.nan) if g.link_length is None else np.asarray(g.link_length, float)
    if g.node_xy is not None:
        xy = g.node_xy[g.link_nodes]
        w = np.where(np.isfinite(w), w, np.hypot(*(xy[:, 0] - xy[:, 1]).T))
    return np.maximum(np.nan_to_num(w, nan=0.0), _MIN_LENGTH)


def _min_matrix(u: np.ndarray, v: np.ndarray, w: np.ndarray, n: int) -> sparse.csr_matrix:
    """An ``n × n`` CSR matrix of ``w`` at ``(u, v)``; repeated entries keep the smallest."""
    order = np.lexsort((w, v, u))
    u, v, w = u[order], v[order], w[order]
    first = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])][: len(u)]
    return sparse.csr_matrix((w[first], (u[first], v[first])), shape=(n, n))


def _group(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, positions)`` of the positions of each label ``0..n-1``."""
    labels = np.asarray(labels, np.int64)
    order = np.argsort(labels, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(labels, minlength=n), out=indptr[1:])
    return indptr, order


def _tag_set(tags: Any) -> set[str]:
    if _missing(tags):
        return set()
    if isinstance(tags, str):
        return {t.strip() for t in tags.split(",") if t.strip()}
    return {str(t) for t in tags}


def _point(a: _Alarms, i: int) -> str:
    """What alarm ``i`` watches, to count the points of an incident: its asset."""
    return a.asset[i] or a.datastream[i] or a.ids[i]


def _in_alarm(now: int, every: int) -> str:
    """A count of points: "3 points in alarm", "1 of 3 points still in alarm"."""
    noun = "point" if every == 1 else "points"
    return f"{every} {noun} in alarm" if now >= every else f"{now} of {every} {noun} still in alarm"


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _float(v: Any) -> float:
    try:
        return float("nan") if _missing(v) else float(v)
    except (TypeError, ValueError):
        return float("nan")


def _plain(v: Any) -> Any:
    """Numpy scalars and containers as plain Python, for comparing with stored rows."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if _missing(v):
        return None
    if isinstance(v, float):
        return round(v, 6)
    return v


def _stamp(t: Any, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(t)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} {t!r} is not a time", source="correlate") from None
    if ts is pd.NaT:
        raise InvalidInput(f"{what} is missing", source="correlate")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _ns(column: pd.Series, what: str) -> np.ndarray:
    """Times as int64 nanoseconds since the epoch (UTC; naive times are UTC), ``_NAT`` where
    missing."""
    try:
        t = pd.to_datetime(column, utc=True)
    except (TypeError, ValueError):
        raise InvalidInput(f"column {what!r} must hold times", source="alarms") from None
    return pd.DatetimeIndex(t).as_unit("ns").asi8.copy()


def _from_ns(v: int) -> pd.Timestamp:
    return pd.Timestamp(v, unit="ns", tz="UTC").floor("us")

"""Where each utility runs under a street: its offset from the centre line and its depth.

The virtual city is laid to its own clearance rules (``rules()``: GB 50289-2016's values where
they are established, the virtual city's design values elsewhere, ``VIRTUAL_CITY_RULES``; the
clearance engine ``citytwin.networks.clearance`` checks against the same table), and this module
turns them into positions.

**In plan.** The streets form a lattice of straight *street lines* (``street_lines``). Every
network's nodes sit at the street nodes moved by the network's offset on the two lines through
the node (x by the north-south line's, y by the east-west line's), so a line along a street
runs parallel to its centre line and the lines of crossing streets meet at one point. Positive
offsets lie north of east-west streets and east of north-south ones. By street class
(``by_class``): the water main 5 m out (the same in every street) and, under arterials and
secondaries, the telecom duct bank 0.5 m inside the kerb on the positive side; on the negative
side the 10 kV cables under the footway (0.6 m + half a conduit clear of a building standing
1.1 m beyond the kerb, the closest the layout puts one), the gas main its clearance inside
them, and where the CBD's district cooling runs (``cooling_edges``) the chilled-water pair
inside the gas. The sewers take the band left between them (``drainage_band``), placed edge by
edge from the pipes actually laid there (``citytwin.synth.drainage``): the storm sewer at
1.5 m if it fits, else as near the water main as their clearance allows, the foul sewer
``SEWER_GAP`` beside it. A box culvert wider than the band can't keep its clearances; the
drainage plan lists those (``conduits_too_wide``).

**In depth.** Lines cross at every street corner (and services cross the mains), so the
pressure networks are stacked in one vertical order, each at its own cover (``cover_depth``:
ground to the crown of every line of that network as laid, services included), deep enough
below the one above for its largest line plus the vertical clearance: telecom 0.7 m (ducts
0.2 m), power 1.2 (conduits 0.15 m), gas 1.55 (mains up to DN 315), district cooling 2.1
(0.25 m), water 2.5. The gravity sewers lie at least below the water services, which cross them
anywhere (``GRAVITY_COVER``: 2.5 + 0.15 + 0.4 m), and go deeper only where they must: below a
larger water main or a storm sewer they cross (``citytwin.synth.drainage``). Lines of one
network that cross without a joint (a station's pipe across the mains, the cooling return
across the supply) pass over or under each other locally (``citytwin.synth.utilities``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from citytwin.networks.clearance import ClearanceRules, load_clearance_rules
from citytwin.synth.layout import CityLayout, Streets

VIRTUAL_CITY_RULES = (
    Path(__file__).resolve().parents[1] / "networks" / "data" / "clearance_virtual_city.yaml"
)
"""The virtual city's clearance rule file (merged over GB 50289-2016's); ``rules()`` loads it."""

BUILDING_SETBACK = 1.1  # m: every building stands at least this far beyond the kerb
WATER_OFFSET = 5.0  # m, the water main's corridor in every street (under the footway)
SEWER_GAP = 0.2  # m between the storm and the foul sewer walls (no rule sets one)
MARGIN = 0.01  # m kept inside every clearance the layout is computed to
HEATING_HALF_SPACING = 0.18  # m, supply and return either side of the cooling corridor

OUTER = {  # largest outer size (m) of the lines along a street, by network
    "telecom": 0.2,
    "power": 0.15,
    "gas": {"primary": 0.315, "secondary": 0.25, "residential": 0.16},
    "heating": 2 * HEATING_HALF_SPACING + 0.25,  # the pair
}
WATER_SERVICE_OUTER = 0.15  # m, the largest water service pipe (crosses the sewers anywhere)

COVER = {  # m of cover over the crown of every line of the network as laid
    "telecom": 0.7,
    "power": 1.2,
    "gas": 1.55,
    "heating": 2.1,
    "water_supply": 2.5,
}
VERTICAL_ORDER: tuple[str, ...] = (*COVER, "storm", "sewer", "combined")
"""The networks from the shallowest to the deepest (storm, sewer and combined share the gravity
level, from which they fall)."""

GRAVITY = ("storm", "sewer", "combined")
CORRIDORS: dict[str, tuple[float, float]] = {
    # network: (offset from the centre line in a 12 m residential street, m; cover, m)
    net: (0.0, 0.0)
    for net in VERTICAL_ORDER
}  # filled below, once the offsets can be computed
NOMINAL = {"storm": 1.5, "sewer": 0.0, "combined": 0.0}  # m, drainage offsets where there is room


@cache
def rules() -> ClearanceRules:
    """The virtual city's clearance rules: GB 50289-2016's default, ``VIRTUAL_CITY_RULES``
    merged over it."""
    return load_clearance_rules(VIRTUAL_CITY_RULES)


def horizontal(a: str, b: str) -> float:
    """The virtual city's horizontal clearance between classes ``a`` and ``b`` (0 if unset)."""
    rule = rules().lookup(a, b, "horizontal")
    return rule.value if rule is not None else 0.0


def vertical(a: str, b: str) -> float:
    """The virtual city's vertical clearance between classes ``a`` and ``b`` (0 if unset)."""
    rule = rules().lookup(a, b, "vertical")
    return rule.value if rule is not None else 0.0


GRAVITY_COVER = COVER["water_supply"] + WATER_SERVICE_OUTER + vertical("water_supply", "storm")
"""Minimum cover of the gravity sewers: below the water services, which cross them anywhere."""


def cover_depth(network: str) -> float:
    """Depth of cover (ground to the crown) ``network`` is laid at, in m: for the gravity
    networks the minimum, from which they fall (deeper where they pass below a larger water
    main or another sewer)."""
    return GRAVITY_COVER if network in GRAVITY else COVER[network]


# -- in plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreetLines:
    """The straight street lines of the lattice: each edge's line, each node's east-west and
    north-south line (-1: none), and per line its direction, street class and half width."""

    edge_line: np.ndarray  # (m,)
    node_ew: np.ndarray  # (n,)
    node_ns: np.ndarray  # (n,)
    east_west: np.ndarray  # (L,) bool
    street_class: np.ndarray  # (L,) str
    half: np.ndarray  # (L,) m, the narrowest half width along the line

    @property
    def count(self) -> int:
        return len(self.east_west)


def street_lines(streets: Streets) -> StreetLines:
    """Group the (axis-parallel) street edges into straight lines."""
    a, b = streets.nodes[streets.edges[:, 0]], streets.nodes[streets.edges[:, 1]]
    ew = np.abs(b[:, 1] - a[:, 1]) <= np.abs(b[:, 0] - a[:, 0])
    coord = np.round(np.where(ew, a[:, 1], a[:, 0]), 1)
    line, keys = pd.factorize(pd.MultiIndex.from_arrays([ew, coord]))
    count = len(keys)
    n = len(streets.nodes)
    node_ew, node_ns = np.full(n, -1), np.full(n, -1)
    for end in (0, 1):
        node_ew[streets.edges[ew, end]] = line[ew]
        node_ns[streets.edges[~ew, end]] = line[~ew]
    cls = np.empty(count, dtype=object)
    cls[line] = np.asarray(streets.street_class).astype(str)
    half = np.full(count, np.inf)
    np.minimum.at(half, line, np.asarray(streets.width, dtype=float) / 2)
    east_west = np.zeros(count, bool)
    east_west[line] = ew
    return StreetLines(line, node_ew, node_ns, east_west, cls.astype(str), half)


def by_class(network: str, street_class: str, half: float) -> float:
    """Offset (m) of ``network`` in a street of this class and half width: the positions that
    do not depend on the pipes laid (drainage: its offset where there is room)."""
    if network == "water_supply":
        return WATER_OFFSET
    if network == "telecom":
        return half - 0.5
    if network in NOMINAL:
        return NOMINAL[network]
    building = -(half + BUILDING_SETBACK)
    power = building + horizontal("power", "building") + OUTER["power"] / 2
    if network == "power":
        return power
    g = OUTER["gas"][street_class]
    gas = max(
        power + OUTER["power"] / 2 + horizontal("gas", "power") + g / 2,
        building + horizontal("gas", "building") + g / 2,
    )
    if network == "gas":
        return gas
    h = OUTER["heating"] / 2
    if network == "heating":
        return max(
            gas + g / 2 + horizontal("gas", "heating") + h,
            power + OUTER["power"] / 2 + horizontal("heating", "power") + h,
            building + horizontal("heating", "building") + h,
        )
    raise KeyError(network)


def drainage_band(
    street_class: str, half: float, heating: bool, water_outer: float
) -> tuple[float, float]:
    """(left, right) edges (m from the centre line) of the band the gravity sewers may take in
    a street line: clear of the gas, power and (where it runs) cooling lines on the negative
    side, of the water main (``water_outer``: the widest main of the line) on the positive."""
    gas = by_class("gas", street_class, half)
    g = OUTER["gas"][street_class]
    left = max(
        gas + g / 2 + horizontal("sewer", "gas:medium_b|medium_a"),
        by_class("power", street_class, half) + OUTER["power"] / 2 + horizontal("sewer", "power"),
    )
    if heating:
        left = max(
            left,
            by_class("heating", street_class, half)
            + OUTER["heating"] / 2
            + horizontal("sewer", "heating"),
        )
    subtype = "water_supply:d_gt_200" if water_outer > 0.2 + 1e-9 else "water_supply:d_le_200"
    right = WATER_OFFSET - water_outer / 2 - horizontal("storm", subtype)
    return left + MARGIN, right - MARGIN


def line_offsets(lines: StreetLines, network: str) -> np.ndarray:
    """Offsets (m) of ``network`` on every street line, by street class."""
    return np.array(
        [by_class(network, c, h) for c, h in zip(lines.street_class, lines.half, strict=True)]
    )


def corridor_nodes(streets: Streets, network: str, offsets: np.ndarray | None = None) -> np.ndarray:
    """The street nodes moved into ``network``'s corridor, (n, 2): by ``offsets`` per street
    line where given (NaN: by class), else by class. A node on one line only moves by that
    line's offset both ways."""
    lines = street_lines(streets)
    off = line_offsets(lines, network)
    if offsets is not None:
        off = np.where(np.isnan(offsets), off, offsets)
    ew = np.where(lines.node_ew >= 0, off[lines.node_ew], np.nan)
    ns = np.where(lines.node_ns >= 0, off[lines.node_ns], np.nan)
    dx = np.where(np.isnan(ns), ew, ns)
    dy = np.where(np.isnan(ew), ns, ew)
    return streets.nodes + np.column_stack([np.nan_to_num(dx), np.nan_to_num(dy)])


def cooling_edges(layout: CityLayout) -> np.ndarray:
    """Street edges under which the CBD's district cooling runs (bool per edge): those at least
    half inside 18 m around the CBD blocks, bridges excepted."""
    s = layout.streets
    blocks = layout.blocks
    cbd = blocks[blocks["land_use"] == "cbd"].geometry.to_numpy()
    if len(cbd) == 0:
        return np.zeros(len(s.edges), bool)
    zone = shapely.union_all(shapely.buffer(cbd, 18.0))
    lines = s.lines()
    along = shapely.length(shapely.intersection(lines, zone))
    return (along >= 0.5 * shapely.length(lines)) & ~np.asarray(s.bridge, dtype=bool)


CORRIDORS.update(
    {net: (by_class(net, "residential", 6.0), cover_depth(net)) for net in VERTICAL_ORDER}
)

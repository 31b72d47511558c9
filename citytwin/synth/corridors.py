"""Where each utility runs under a street: its offset from the centre line and its depth.

Positions follow common practice for Chinese urban streets (GB 50289, the code for planning
urban utility pipelines): water on one side, gas on the other, sewers at the centre, cables
towards the kerbs. Every network's nodes sit at the street nodes moved diagonally by the
network's offset, so a pipe along any street runs parallel to its centre line at that offset,
and pipes of crossing streets meet at one point. The smallest street is 12 m wide: all offsets
stay within ±6 m, and every building stands at least 1.1 m beyond the kerb. The offsets keep
GB 50289's horizontal clearances (table 4.1.9, outer wall to outer wall) between parallel lines
for the largest pipes of a 4 km² city (storm DN 2000, combined DN 1800, water DN 800, sewer
DN 500, gas DN 315, the cooling pair 2 × 0.25 m 0.36 m apart): from the centre, foul or
combined sewers, storm sewers 1.5 m towards the water main (1 m clear of it), telecom towards
the kerb (1 m clear of water, 1.5 m clear of the buildings); on the other side district cooling
(``heating``, 1.5 m clear of the sewers), gas (1 m clear of cooling) and power cables at the
kerb (1 m clear of gas, 2 m of cooling).

Lines of different networks cross at every street corner (and services cross the mains), so
the networks are stacked in one vertical order (``VERTICAL_ORDER``), each at its own cover
(``cover_depth``: ground to the crown of every line of that network as laid, services
included), deep enough below the one above for the largest line there plus GB 50289's vertical
clearance (table 4.1.14):

====================  =========  ===================================================
network               cover (m)  below
====================  =========  ===================================================
telecom               0.7        duct banks up to 0.2 m
power                 1.2        0.9 + 0.25 m (cables in conduits, 0.15 m)
gas                   1.55       1.35 + 0.15 m (mains up to DN 315)
heating (cooling)     2.1        1.865 + 0.15 m (pipes up to 0.25 m)
water_supply          2.5        2.35 + 0.15 m; mains up to DN 800
storm, sewer,         3.7        2.5 + 0.8 + 0.4 m: gravity crowns stay this deep at
combined                         least and fall from there
====================  =========  ===================================================

Where foul and storm sewers cross, one passes 0.15 m clear of the other, the foul sewer
deepened where they would clash (``citytwin.synth.drainage``).
"""

from __future__ import annotations

import numpy as np

from citytwin.synth.layout import Streets

CORRIDORS: dict[str, tuple[float, float]] = {
    # network: (offset from the centre line in m, cover depth to the crown in m)
    "telecom": (5.5, 0.7),
    "power": (-5.6, 1.2),
    "gas": (-4.3, 1.55),
    "heating": (-2.8, 2.1),
    "water_supply": (4.0, 2.5),
    "storm": (1.5, 3.7),  # gravity sewers go deeper as they fall; this is the minimum cover
    "sewer": (0.0, 3.7),
    "combined": (0.0, 3.7),
}

VERTICAL_ORDER: tuple[str, ...] = tuple(CORRIDORS)
"""The networks from the shallowest to the deepest (storm, sewer and combined share the gravity
level, from which they fall)."""


def corridor_nodes(streets: Streets, network: str) -> np.ndarray:
    """The street nodes moved into ``network``'s corridor, (n, 2)."""
    offset = CORRIDORS[network][0]
    return streets.nodes + np.array([offset, offset])


def cover_depth(network: str) -> float:
    """Depth of cover (ground to the crown) ``network`` is laid at, in m: for the gravity
    networks the minimum, from which they fall."""
    return CORRIDORS[network][1]

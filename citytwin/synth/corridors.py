"""Where each utility runs under a street: its offset from the centre line and its depth.

Positions follow common practice for Chinese urban streets (GB 50289, the code for planning
urban utility pipelines): water on one side, gas on the other, sewers at the centre, cables
towards the kerbs. Every network's nodes sit at the street nodes moved diagonally by the
network's offset, so a pipe along any street runs parallel to its centre line at that offset,
and pipes of crossing streets meet at one point. The smallest street is 12 m wide: all offsets
stay within ±6 m.
"""

from __future__ import annotations

import numpy as np

from citytwin.synth.layout import Streets

CORRIDORS: dict[str, tuple[float, float]] = {
    # network: (offset from the centre line in m, cover depth to the crown in m)
    "water_supply": (3.0, 1.2),
    "gas": (-3.0, 1.0),
    "sewer": (0.0, 2.0),  # gravity sewers go deeper as they fall; this is the minimum cover
    "combined": (0.0, 2.0),
    "storm": (1.5, 1.5),
    "power": (-5.0, 0.8),
    "telecom": (5.0, 0.7),
    "heating": (-1.5, 1.5),
}


def corridor_nodes(streets: Streets, network: str) -> np.ndarray:
    """The street nodes moved into ``network``'s corridor, (n, 2)."""
    offset = CORRIDORS[network][0]
    return streets.nodes + np.array([offset, offset])


def cover_depth(network: str) -> float:
    """Minimum depth of cover (ground to pipe crown) for ``network``, in m."""
    return CORRIDORS[network][1]

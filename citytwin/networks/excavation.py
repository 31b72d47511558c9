"""Excavation check ("call before you dig"): which utility lines a planned dig can reach.

Pure: line geometries and their depths in, a table of hits out. A line is *within reach* when it
passes within ``buffer`` metres of the dig's outline; it is *struck* when, somewhere within
reach, its crown lies less than ``vertical_margin`` below the dig's floor (crown depth ≤ dig
depth + margin). Gravity conduits fall along their length: their crown depth is interpolated
between the two ends, and the shallowest point within reach counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput

TRUNK_MAIN_DIAMETER = 0.5  # m: water mains of DN 500 and above are trunk mains
"""Water supply and drainage lines this wide or wider are flagged as trunk mains."""

HIGH_PRESSURE_GAS = ("high", "sub-high", "high_a", "high_b")
HIGH_VOLTAGE = ("HV", "EHV")


@dataclass(frozen=True)
class Dig:
    """A planned excavation: its outline, depth below ground (m) and safety distances (m)."""

    area: shapely.Geometry
    depth: float
    buffer: float = 1.0  # horizontal: lines this close to the outline are within reach
    vertical_margin: float = 0.5  # lines whose crown is within this below the floor are struck

    def __post_init__(self) -> None:
        if self.area is None or self.area.is_empty or not self.area.is_valid:
            raise InvalidInput(
                "the dig's outline is empty or invalid",
                hint="give a valid polygon (or a line / point with a buffer) in the twin's CRS",
            )
        for name in ("depth", "buffer", "vertical_margin"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise InvalidInput(
                    f"the dig's {name} is {value}", hint="give a non-negative number of metres"
                )
        lineal = ("Point", "LineString", "MultiPoint", "MultiLineString")
        if self.area.geom_type in lineal and self.buffer <= 0:
            raise InvalidInput(
                f"a dig given as a {self.area.geom_type} needs a buffer",
                hint="give --buffer in metres (the width of the trench on either side)",
            )


def crown_depths(
    geoms: np.ndarray,
    depth: np.ndarray,
    crown_from: np.ndarray,
    crown_to: np.ndarray,
    points: np.ndarray,
) -> np.ndarray:
    """Crown depth (ground to the top of the line) of each line ``geoms[i]`` at
    ``points[i]``: ``depth[i]`` where it is known to be constant, otherwise interpolated between
    ``crown_from[i]`` and ``crown_to[i]`` (NaN where not known) by the position along the line."""
    t = shapely.line_locate_point(geoms, points, normalized=True)
    sloped = ~np.isnan(crown_from) & ~np.isnan(crown_to)
    return np.where(sloped, crown_from + t * (crown_to - crown_from), depth)


def excavation_hits(
    geoms: np.ndarray,
    depth: np.ndarray,
    dig: Dig,
    *,
    crown_from: np.ndarray | None = None,
    crown_to: np.ndarray | None = None,
) -> pd.DataFrame:
    """The lines (indices into ``geoms``) within reach of ``dig``: one row each with
    ``index``, ``distance_m`` (horizontal, to the outline; 0 inside), ``crown_depth_m`` (the
    shallowest crown within reach; NaN where the depth is unknown), ``struck`` (True when
    that crown is above the floor plus the margin, or the depth is unknown: an unknown
    depth must be located by hand before digging) and ``location`` (x, y of that point)."""
    geoms = np.asarray(geoms)
    n = len(geoms)
    depth = np.asarray(depth, dtype=float)
    crown_from = np.full(n, np.nan) if crown_from is None else np.asarray(crown_from, float)
    crown_to = np.full(n, np.nan) if crown_to is None else np.asarray(crown_to, float)
    reach = dig.area.buffer(dig.buffer) if dig.buffer > 0 else dig.area
    tree = shapely.STRtree(geoms)
    hit = tree.query(reach, predicate="intersects")
    hit = np.sort(hit)
    columns = ["index", "distance_m", "crown_depth_m", "struck", "location"]
    if not len(hit):
        return pd.DataFrame(columns=columns)
    parts = shapely.intersection(geoms[hit], reach)
    # candidate points: every vertex of the part within reach (depths are linear in between)
    xy, which = shapely.get_coordinates(parts, return_index=True)
    crowns = crown_depths(
        geoms[hit][which],
        depth[hit][which],
        crown_from[hit][which],
        crown_to[hit][which],
        shapely.points(xy),
    )
    frame = pd.DataFrame({"row": which, "crown": crowns, "x": xy[:, 0], "y": xy[:, 1]})
    frame["key"] = frame["crown"].fillna(-np.inf)  # unknown depths count as shallowest
    shallowest = frame.sort_values(["row", "key"]).drop_duplicates("row").set_index("row")
    shallowest = shallowest.reindex(np.arange(len(hit)))
    crown = shallowest["crown"].to_numpy(float)
    return pd.DataFrame(
        {
            "index": hit,
            "distance_m": np.round(shapely.distance(geoms[hit], dig.area), 3),
            "crown_depth_m": np.round(crown, 3),
            "struck": np.isnan(crown) | (crown <= dig.depth + dig.vertical_margin),
            "location": list(zip(shallowest["x"].round(2), shallowest["y"].round(2), strict=True)),
        }
    )


def critical_line(network: str, pressure_class: str | None, diameter: float | None) -> str | None:
    """Why a line is critical to dig near (high-pressure gas, high-voltage power, a trunk
    main), or None."""
    pressure = (pressure_class or "").strip()
    if network == "gas" and pressure.lower() in HIGH_PRESSURE_GAS:
        return "high-pressure gas"
    if network == "power" and pressure.upper() in HIGH_VOLTAGE:
        return "high-voltage power"
    if network in ("water_supply", "sewer", "storm", "combined") and (
        diameter is not None and np.isfinite(diameter) and diameter >= TRUNK_MAIN_DIAMETER
    ):
        return "trunk main"
    return None

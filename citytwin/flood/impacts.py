"""What a flood does: hazard classes, and the buildings, people, roads and facilities it
reaches, from a run's rasters of extremes and the features' geometries (in the grid's CRS).
Pure: arrays and shapely geometries in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

HAZARD_CLASSES = ("none", "low", "moderate", "significant", "extreme")
"""Flood hazard to people (Defra/Environment Agency FD2320, 2006: the rating d·(v + 0.5) + DF
below 0.75 'low: caution', 0.75–1.25 'danger for some', 1.25–2.0 'danger for most', above
2.0 'danger for all')."""
HAZARD_LIMITS = (0.75, 1.25, 2.0)
IMPASSABLE = 0.3
"""Water depth (m) above which a road is impassable to ordinary vehicles."""
BUILDING_FLOODED = 0.15
"""Depth (m) at a building's walls from which water is taken to enter it (a door sill)."""
BASEMENT_AT_RISK = 0.05
"""Depth (m) at the walls from which a basement or underground car park takes water."""


@dataclass(frozen=True)
class Raster:
    """Where a grid lies: the upper-left corner ``x0``, ``y0`` and the cell size ``dx`` (rows
    run south)."""

    x0: float
    y0: float
    dx: float
    shape: tuple[int, int]

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row and column of points ``(n, 2)`` and whether they fall on the grid."""
        col = np.floor((xy[:, 0] - self.x0) / self.dx).astype(np.int64)
        row = np.floor((self.y0 - xy[:, 1]) / self.dx).astype(np.int64)
        inside = (row >= 0) & (row < self.shape[0]) & (col >= 0) & (col < self.shape[1])
        return np.clip(row, 0, self.shape[0] - 1), np.clip(col, 0, self.shape[1] - 1), inside


def hazard_class(max_hazard: np.ndarray, wet: np.ndarray | None = None) -> np.ndarray:
    """Per cell the index into ``HAZARD_CLASSES`` of its worst hazard rating (0 where dry:
    NaN, or not ``wet``)."""
    rating = np.nan_to_num(max_hazard, nan=0.0)
    cls = 1 + np.searchsorted(np.array(HAZARD_LIMITS), rating, side="right")
    dry = ~np.isfinite(max_hazard) | (rating <= 0)
    if wet is not None:
        dry |= ~wet
    return np.where(dry, 0, cls).astype(np.int8)


def line_max(values: np.ndarray, grid: Raster, lines: np.ndarray, step: float) -> np.ndarray:
    """Per line (or ring) the largest finite value of the cells along it (NaN: none)."""
    if not len(lines):
        return np.zeros(0)
    dense = shapely.segmentize(lines, step)
    xy, index = shapely.get_coordinates(dense, return_index=True)
    out = np.full(len(lines), -np.inf)
    if len(xy):
        row, col, inside = grid.cells(xy)
        v = np.where(inside, values[row, col], np.nan)
        ok = np.isfinite(v)
        np.maximum.at(out, index[ok], v[ok])
    return np.where(np.isfinite(out), out, np.nan)


def building_depths(max_depth: np.ndarray, grid: Raster, footprints: np.ndarray) -> np.ndarray:
    """Per building the deepest water (m) along its walls: around the footprint, one cell out
    (the footprint's own cells are walls to the water). NaN off the grid."""
    rings = shapely.boundary(shapely.buffer(footprints, 0.75 * grid.dx, join_style="mitre"))
    return line_max(max_depth, grid, rings, grid.dx / 2)


def point_depths(max_depth: np.ndarray, grid: Raster, points: np.ndarray) -> np.ndarray:
    """The water depth at points (the deepest within a cell of each: facilities stand beside
    the flow, metro entrances in it)."""
    rings = shapely.boundary(shapely.buffer(points, 0.75 * grid.dx, quad_segs=2))
    around = line_max(max_depth, grid, rings, grid.dx / 2)
    xy = shapely.get_coordinates(shapely.centroid(points))
    row, col, inside = grid.cells(xy)
    at = np.where(inside, max_depth[row, col], np.nan)
    return np.fmax(at, around)


def flooded_length(
    max_depth: np.ndarray, grid: Raster, lines: np.ndarray, depth: float = IMPASSABLE
) -> np.ndarray:
    """Per line (a road's centreline) its length (m) under more than ``depth`` of water."""
    if not len(lines):
        return np.zeros(0)
    step = grid.dx / 2
    dense = shapely.segmentize(lines, step)
    xy, index = shapely.get_coordinates(dense, return_index=True)
    out = np.zeros(len(lines))
    if len(xy) < 2:
        return out
    same = index[1:] == index[:-1]
    a, b = xy[:-1][same], xy[1:][same]
    owner = index[:-1][same]
    mid = (a + b) / 2
    seg = np.hypot(*(b - a).T)
    row, col, inside = grid.cells(mid)
    d = np.where(inside, np.nan_to_num(max_depth[row, col], nan=0.0), 0.0)
    np.add.at(out, owner[d > depth], seg[d > depth])
    return out

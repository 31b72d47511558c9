"""The virtual city's layout: terrain, river, streets, blocks, buildings, facilities.

Deterministic from a seed, any size from 1 to 1,000 km², modelled on a Pearl River Delta
district: a meandering river with a low floodplain, gentle urban slopes rising to a few low
hills, depressions and underpasses where water collects; a lattice of arterials and local
streets with bridges over the river; a waterfront CBD of towers, a dense old town, residential
estates, industrial sheds, schools and hospitals. Everything is arrays and frames in one
projected CRS (CGCS2000 / 3-degree Gauss-Kruger CM 114E by default, placed near Guangzhou);
no I/O. The utility networks are laid on this layout by the other ``synth`` modules.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

CRS = "EPSG:4547"  # CGCS2000 / 3-degree Gauss-Kruger CM 114E: Guangzhou's projected grid
ORIGIN = (431_000.0, 2_552_000.0)  # south-west corner: near Tianhe, Guangzhou (virtual city)

LOCAL_SPACING = 150.0  # m between local streets
ARTERIAL_EVERY = 6  # every 6th street line is an arterial (900 m), every 3rd a secondary
STREET_WIDTH = {"primary": 32.0, "secondary": 20.0, "residential": 12.0}
STOREY = {
    "residential": 3.0,
    "commercial": 4.0,
    "office": 4.0,
    "industrial": 8.0,
    "school": 3.6,
    "hospital": 4.2,
    "fire_station": 4.5,  # appliance bays on the ground floor
    "public": 4.0,
}
FLOOR_AREA_PER_RESIDENT = 33.0  # m² (urban China, living space per person, ~2020)
FLOOR_AREA_PER_WORKER = 15.0  # m² of office or commercial floor per day-time worker

CREEK_SPACING = 1200.0  # m between the creeks (河涌) that cross the town to the river
CREEK_REACH = 450.0  # m between a creek's weirs: each reach holds one normal water level
CREEK_DROP = 5.0  # m from a reach's low banks (their 10th percentile) down to its normal level
CREEK_FREEBOARD = 2.0  # m: a reach's normal level stays at least this far below all its banks
CREEK_DEPTH = 1.5  # m of water at the normal level (a flat bed in each reach)
CREEK_MOUTH_LEVEL = 1.0  # m, held at the mouth by its sluice and pumping station (below the river)
CREEK_SETBACK = 8.0  # m of creek-side path between the revetment and the blocks
KERB_SETBACK = 1.2  # m: every footprint stands at least this far inside its block
HILL_FOOT = 8.0  # m above the plain: where its banks rise more, a creek runs in a culvert

IMPERVIOUS = {"cbd": 95.0, "old_town": 90.0, "residential": 70.0, "industrial": 85.0, "park": 15.0}
"""Impervious share (%) of a block by land use (typical values for dense Chinese cities)."""

SOURCE = "citytwin.synth (virtual city)"


@dataclass
class Terrain:
    """A north-up DEM: cell centres at x0 + (col + ½)·cell, y0 − (row + ½)·cell."""

    dem: np.ndarray
    x0: float  # west edge
    y0: float  # north edge
    cell: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        rows, cols = self.dem.shape
        return (self.x0, self.y0 - rows * self.cell, self.x0 + cols * self.cell, self.y0)

    def sample(self, xy: np.ndarray) -> np.ndarray:
        """Ground level at points (bilinear between cell centres, clamped at the edges)."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        c = (xy[:, 0] - self.x0) / self.cell - 0.5
        r = (self.y0 - xy[:, 1]) / self.cell - 0.5
        return ndimage.map_coordinates(self.dem, [r, c], order=1, mode="nearest")


@dataclass
class River:
    """The river: its centre line, water surface polygon, normal water level and bed level."""

    centerline: shapely.LineString
    channel: shapely.Geometry
    width: float
    phase: float  # of the meander: y = 0.42 side + amplitude · sin(2πx / wavelength + phase)
    water_level: float = 1.5  # m, normal level (Pearl River Datum-like, near mean sea level)
    bed_level: float = -4.0


@dataclass
class Streets:
    """The street graph: node coordinates, edges between node indices, and edge attributes."""

    nodes: np.ndarray  # (n, 2)
    edges: np.ndarray  # (m, 2) node indices
    street_class: np.ndarray  # primary / secondary / residential
    width: np.ndarray
    bridge: np.ndarray  # bool
    name: np.ndarray

    def lines(self) -> np.ndarray:
        """Edge geometries (LineStrings)."""
        return shapely.linestrings(
            self.nodes[self.edges].reshape(-1, 2), indices=np.repeat(np.arange(len(self.edges)), 2)
        )


@dataclass
class CityLayout:
    """Everything above ground of a virtual city, before the utilities are laid."""

    seed: int
    area_km2: float
    side: float  # m, the city is a square of this side
    origin: tuple[float, float]
    terrain: Terrain
    river: River
    streets: Streets
    blocks: gpd.GeoDataFrame  # block polygons with land_use
    buildings: gpd.GeoDataFrame  # model frame of layer "buildings" (plus helper column "block")
    facilities: gpd.GeoDataFrame  # model frame of layer "facilities"
    districts: gpd.GeoDataFrame  # model frame of layer "zones", class "district"
    crs: str = CRS
    notes: dict = field(default_factory=dict)
    creeks: gpd.GeoDataFrame = field(default_factory=lambda: _creek_frame([]))
    """The creeks' reaches (``_creeks``): model frame of layer "water_bodies", class "canal",
    plus helper columns."""

    @property
    def extent(self) -> tuple[float, float, float, float]:
        x, y = self.origin
        return (x, y, x + self.side, y + self.side)


def plan_layout(area_km2: float = 4.0, seed: int = 1, *, cell: float | None = None) -> CityLayout:
    """Lay out a virtual city of ``area_km2`` (1–1,000) from ``seed``."""
    if not 0.5 <= area_km2 <= 1000:
        raise ValueError(f"area {area_km2} km² is outside 0.5–1,000 km²")
    rng = np.random.default_rng(seed)
    side = math.sqrt(area_km2) * 1000.0
    cell = cell or _cell_size(side)
    x0, y0 = ORIGIN
    river = _river(side, x0, y0, rng)
    terrain = _terrain(side, x0, y0, cell, river, rng)
    creeks = _creeks(side, x0, y0, river, terrain)  # carved into the terrain
    streets = _streets(side, x0, y0, river, rng, creeks)
    blocks = _blocks(side, x0, y0, streets, river, terrain, rng, creeks)
    buildings = _buildings(blocks, river, rng)
    buildings = _with_people(_public_buildings(buildings, blocks, rng), terrain)
    facilities, buildings = _facilities(buildings, blocks, streets, river, terrain, side, rng)
    districts = _districts(side, x0, y0, buildings)
    return CityLayout(
        seed,
        area_km2,
        side,
        (x0, y0),
        terrain,
        river,
        streets,
        blocks,
        buildings,
        facilities,
        districts,
        creeks=creeks,
    )


def _cell_size(side: float) -> float:
    """2 m cells up to 16 km²; coarser beyond so the DEM stays near 16 M cells."""
    return max(2.0, math.ceil(side / 4000.0))


# -- river and terrain ---------------------------------------------------------------------
def _river_y(x: np.ndarray, side: float, phase: float) -> np.ndarray:
    amp = min(0.08 * side, 600.0)
    wavelength = max(side, 3000.0) * 0.9
    return 0.42 * side + amp * np.sin(2 * np.pi * x / wavelength + phase)


def _plain(dist: np.ndarray) -> np.ndarray:
    """Ground level of the plain at a distance from the river: the floodplain rises 0.3 %,
    the town beyond it 0.6 %."""
    return 2.4 + 0.003 * np.minimum(dist, 1500) + 0.006 * np.maximum(dist - 1500, 0)


def _river(side: float, x0: float, y0: float, rng: np.random.Generator) -> River:
    phase = float(rng.uniform(0, 2 * np.pi))
    xs = np.linspace(-50.0, side + 50.0, 400)
    line = shapely.LineString(np.column_stack([x0 + xs, y0 + _river_y(xs, side, phase)]))
    width = float(np.clip(0.06 * side, 80.0, 400.0))
    channel = line.buffer(width / 2, cap_style="flat")
    return River(line, channel, width, phase)


def _terrain(
    side: float, x0: float, y0: float, cell: float, river: River, rng: np.random.Generator
) -> Terrain:
    n = math.ceil(side / cell)
    xs = (np.arange(n) + 0.5) * cell
    ys = side - (np.arange(n) + 0.5) * cell  # north-up rows
    X, Y = np.meshgrid(xs, ys)
    phase = river.phase
    yr = _river_y(X, side, phase)
    slope = np.gradient(_river_y(xs, side, phase), xs)[None, :]
    dist = np.abs(Y - yr) / np.sqrt(1 + slope**2)  # distance to the river's centre line

    # floodplain rising gently (0.3 %) away from the river, then the town's slopes (0.6 %)
    z = _plain(dist)
    # low hills away from the river
    n_hills = max(2, int(side * side / 1e6 / 6))
    for _ in range(n_hills):
        hx, hy = rng.uniform(0, side, 2)
        if abs(hy - _river_y(np.array([hx]), side, phase)[0]) < min(700, 0.3 * side):
            continue
        sigma = rng.uniform(150, 350)
        z += rng.uniform(12, 45) * np.exp(-((X - hx) ** 2 + (Y - hy) ** 2) / (2 * sigma**2))
    # micro-relief: smooth noise of about half a metre
    noise = ndimage.gaussian_filter(rng.standard_normal(X.shape).astype(np.float32), 40 / cell)
    z += 0.5 * noise / max(float(noise.std()), 1e-9)
    # depressions where water collects
    for _ in range(max(3, int(side * side / 4e6 * 4))):
        dx, dy = rng.uniform(0, side, 2)
        z -= rng.uniform(1.0, 2.0) * np.exp(-((X - dx) ** 2 + (Y - dy) ** 2) / (2 * 35.0**2))
    # the river channel: parabolic bed below the floodplain
    half = river.width / 2
    inside = dist < half
    bed = river.bed_level + (dist / half) ** 2 * (2.2 - river.bed_level)
    z = np.where(inside, np.minimum(z, bed), z)
    return Terrain(z.astype(np.float32), x0, y0 + side, cell)


def _creek_xs(side: float) -> np.ndarray:
    """Where the creeks are meant to run (m east of the west edge): every ``CREEK_SPACING``
    either side of the centre, in the middle of a block column, at least two columns from the
    edges (``_creeks`` moves each a column or two off a hill or the water works)."""
    k = np.arange(-int(side // CREEK_SPACING) - 1, int(side // CREEK_SPACING) + 2)
    xs = np.round((side / 2 + CREEK_SPACING * (k + 0.5)) / LOCAL_SPACING) * LOCAL_SPACING
    return xs[(xs >= 2 * LOCAL_SPACING) & (xs <= side - 2 * LOCAL_SPACING)]


def _creeks(side: float, x0: float, y0: float, river: River, terrain: Terrain) -> gpd.GeoDataFrame:
    """The creeks (河涌) of the town: straight canalised channels with vertical revetments,
    about every ``CREEK_SPACING`` m, from the river on both banks to the city's edge, where the
    storm sewers of the town outfall; each runs down the block column, of the few nearest its
    place, that has the least of its length under hills (there it runs in a culvert). Each
    creek is a chain of reaches between weirs, ``CREEK_REACH`` m long, each holding a flat
    normal water level ``CREEK_DROP`` m below its low banks (and ``CREEK_FREEBOARD`` below
    every bank point), never above the reach upstream; the mouth reach is held at
    ``CREEK_MOUTH_LEVEL`` by its sluice and pumping station. The open reaches are carved into
    ``terrain`` (its DEM changes in place): a flat bed ``CREEK_DEPTH`` below the normal level
    between the walls."""
    t = terrain
    n_rows, n_cols = t.dem.shape
    row_y = t.y0 - (np.arange(n_rows) + 0.5) * t.cell
    works = shapely.get_coordinates(river.centerline)[len(river.centerline.coords) // 12, 0] - x0

    def course(xc: float, sign: int) -> dict | None:
        """The creek down block column ``xc`` on one bank: its rows, banks and rise above the
        plain, from the mouth up."""
        x = x0 + xc
        across = shapely.LineString([(x, y0 - 1.0), (x, y0 + side + 1.0)])
        _, lo, _, hi = shapely.bounds(shapely.intersection(across, river.channel))
        mouth, end = (lo, y0) if sign < 0 else (hi, y0 + side)
        length = abs(end - mouth)
        width = float(np.clip(round(12.0 + 4.0 * length / 1000.0), 15.0, 36.0))
        c0 = math.ceil((x - width / 2 - t.x0) / t.cell - 0.5)
        c1 = math.floor((x + width / 2 - t.x0) / t.cell - 0.5)
        if c0 < 1 or c1 > n_cols - 2:
            return None
        s = sign * (row_y - mouth)  # m from the mouth along the creek
        on = np.flatnonzero((s > 0) & (s < length))
        on = on[np.argsort(s[on])]
        bank = np.minimum(t.dem[on, c0 - 1], t.dem[on, c1 + 1]).astype(float)
        slope = float(np.gradient(_river_y(np.array([xc - 1, xc + 1]), side, river.phase))[0] / 2)
        centre_y = y0 + float(_river_y(np.array([xc]), side, river.phase)[0])
        plain = _plain(np.abs(row_y[on] - centre_y) / math.sqrt(1 + slope**2))
        return {
            "x": x,
            "mouth": mouth,
            "width": width,
            "cols": (c0, c1),
            "s": s,
            "on": on,
            "bank": bank,
            "rise": float((bank - plain).max()) if len(on) else np.inf,
            "rise_at": bank - plain,
            "culverted": int((bank - plain > HILL_FOOT).sum()),
        }

    rows: list[dict] = []
    shifts = LOCAL_SPACING * np.array([0, -1, 1, -2, 2])
    for nominal in _creek_xs(side):
        for sign in (-1, 1):
            options = [
                c
                for xc in nominal + shifts
                if 2 * LOCAL_SPACING <= xc <= side - 2 * LOCAL_SPACING
                and abs(xc - works) >= 200.0
                and (c := course(float(xc), sign)) is not None
            ]
            if not options:
                continue
            # the one with the least of its length under hills, the lowest of those, the nearest
            best = min(options, key=lambda c: (c["culverted"], round(c["rise"])))
            rows += _creek_reaches(best, sign, len({r["creek"] for r in rows}) + 1, t)
    return _creek_frame(rows)


def _creek_reaches(c: dict, sign: int, number: int, t: Terrain) -> list[dict]:
    """A creek's reaches (``_creeks``' course ``c``), carved into the DEM of ``t``; a reach
    whose banks rise more than ``HILL_FOOT`` above the plain runs culverted under the hill."""
    on, bank, s = c["on"], c["bank"], c["s"]
    if not len(on) or s[on[-1]] < 2 * CREEK_REACH / 3:
        return []
    reach_of = np.minimum(
        (s[on] // CREEK_REACH).astype(int), max(1, round(s[on[-1]] / CREEK_REACH)) - 1
    )
    n_reach = int(reach_of.max()) + 1
    level = np.array(
        [
            min(
                float(np.quantile(bank[reach_of == r], 0.1)) - CREEK_DROP,
                float(bank[reach_of == r].min()) - CREEK_FREEBOARD,
            )
            for r in range(n_reach)
        ]
    )
    culvert = np.zeros(n_reach, bool)
    np.logical_or.at(culvert, reach_of, c["rise_at"] > HILL_FOOT)
    culvert[0] = False  # the mouth is open to the river
    level = np.where(culvert, np.inf, level)  # a culvert holds the level of the reach above it
    level = np.minimum.accumulate(level[::-1])[::-1]  # never above the reach upstream
    level = np.where(np.isinf(level), np.nan, level)
    level = pd.Series(level).bfill().ffill().to_numpy()  # culverts at the top: the one below
    level = np.round(np.maximum(level, CREEK_MOUTH_LEVEL), 2)
    bed = np.round(level - CREEK_DEPTH, 2)
    c0, c1 = c["cols"]
    x, width, mouth = c["x"], c["width"], c["mouth"]
    rows = []
    for r in range(n_reach):
        mine = on[reach_of == r]
        if not culvert[r]:
            t.dem[mine, c0 : c1 + 1] = np.minimum(t.dem[mine, c0 : c1 + 1], bed[r])
        s_from = 0.0 if r == 0 else r * CREEK_REACH
        s_to = s[on[-1]] + t.cell / 2 if r == n_reach - 1 else (r + 1) * CREEK_REACH
        ya = mouth + sign * (s_from - (2.0 if r == 0 else 0.0))  # into the river
        yb = mouth + sign * s_to
        rows.append(
            {
                "creek": number,
                "reach": r + 1,
                "x": x,
                "side": sign,
                "y_from": ya,
                "y_to": yb,
                "width": width,
                "water_level": float(level[r]),
                "bed_level": float(bed[r]),
                "culvert": bool(culvert[r]),
                "geometry": shapely.box(x - width / 2, min(ya, yb), x + width / 2, max(ya, yb)),
            }
        )
    return rows


def _creek_frame(rows: list[dict]) -> gpd.GeoDataFrame:
    """Creek reaches as a model frame of layer "water_bodies" (class "canal"), with the helper
    columns creek, reach, x (of the centre line), side (1: north of the river, -1: south),
    y_from (at the downstream end), y_to, width and bed_level."""
    columns = ["creek", "reach", "x", "side", "y_from", "y_to", "width", "bed_level", "culvert"]
    frame = pd.DataFrame(rows, columns=[*columns, "water_level", "geometry"])
    ids = [f"creek-{c}-{r}" for c, r in zip(frame["creek"], frame["reach"], strict=True)]
    last = frame.groupby("creek")["reach"].transform("max") if len(frame) else frame["reach"]
    frame = frame.assign(
        id=ids,
        name=[
            f"Virtual Creek {c}, reach {r}"
            for c, r in zip(frame["creek"], frame["reach"], strict=True)
        ],
        props=[
            {
                "creek": f"Virtual Creek {c}",
                "reach": int(r),
                "width": float(w),
                "bed_level": float(b),
                "outlet": "sluice and pumping station to the river"
                if r == 1
                else f"weir to creek-{c}-{r - 1}",
                "source": "city edge" if r == n else None,
                "culverted": bool(k),
            }
            for c, r, w, b, n, k in zip(
                frame["creek"],
                frame["reach"],
                frame["width"],
                frame["bed_level"],
                last,
                frame["culvert"],
                strict=True,
            )
        ],
        **{"class": "canal"},
    )
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=CRS)


# -- streets -------------------------------------------------------------------------------
def _line_class(k: int) -> str:
    if k % ARTERIAL_EVERY == 0:
        return "primary"
    return "secondary" if k % (ARTERIAL_EVERY // 2) == 0 else "residential"


def _streets(
    side: float,
    x0: float,
    y0: float,
    river: River,
    rng: np.random.Generator,
    creeks: gpd.GeoDataFrame | None = None,
) -> Streets:
    coords = np.arange(LOCAL_SPACING / 2, side, LOCAL_SPACING)
    k = len(coords)
    gx, gy = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")  # node (i, j) -> i * k + j
    nodes = np.column_stack([x0 + coords[gx.ravel()], y0 + coords[gy.ravel()]])
    wet = shapely.contains_xy(river.channel, nodes[:, 0], nodes[:, 1])
    nid = np.arange(k * k).reshape(k, k)

    edges, classes, bridges = [], [], []
    # east-west streets (lines of constant j): never cross the river
    for j in range(k):
        for i in range(k - 1):
            edges.append((nid[i, j], nid[i + 1, j]))
            classes.append(_line_class(j))
            bridges.append(False)
    # north-south streets (lines of constant i): arterials and secondaries bridge the river
    for i in range(k):
        cls = _line_class(i)
        dry = [j for j in range(k) if not wet[nid[i, j]]]
        for a, b in itertools.pairwise(dry):
            crossing = b - a > 1
            if crossing and cls == "residential":
                continue
            edges.append((nid[i, a], nid[i, b]))
            classes.append(cls)
            bridges.append(crossing)
    edges = np.array(edges)
    classes = np.array(classes)
    bridges = np.array(bridges)
    segs = shapely.linestrings(
        nodes[edges].reshape(-1, 2), indices=np.repeat(np.arange(len(edges)), 2)
    )
    keep = bridges | ~shapely.intersects(segs, river.channel)
    if creeks is not None and len(creeks):  # east-west streets bridge the open creeks
        water = shapely.union_all(creeks.geometry.to_numpy()[~creeks["culvert"].to_numpy(bool)])
        bridges = bridges | shapely.intersects(segs, water)
    # superblocks: drop some residential street segments, never cutting the graph apart
    drop = (classes == "residential") & (rng.random(len(edges)) < 0.12)
    keep &= ~drop
    edges, classes, bridges = edges[keep], classes[keep], bridges[keep]
    keep, edges, nodes = _largest_component(edges, nodes)
    classes, bridges = classes[keep], bridges[keep]
    widths = np.array([STREET_WIDTH[c] for c in classes])
    names = np.array(
        [
            _street_name(nodes[a], nodes[b], c, x0, y0)
            for (a, b), c in zip(edges, classes, strict=True)
        ]
    )
    return Streets(nodes, edges, classes, widths, bridges, names)


def _street_name(a: np.ndarray, b: np.ndarray, cls: str, x0: float, y0: float) -> str:
    kind = {"primary": "Avenue", "secondary": "Road", "residential": "Street"}[cls]
    if abs(a[1] - b[1]) < 1e-6:  # east-west
        return f"{int((a[1] - y0) // LOCAL_SPACING) + 1}th {kind} North"
    return f"{int((a[0] - x0) // LOCAL_SPACING) + 1}th {kind} East"


def _largest_component(
    edges: np.ndarray, nodes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges kept (mask), renumbered edges and nodes of the largest connected piece."""
    n = len(nodes)
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    used = np.zeros(n, bool)
    used[edges.ravel()] = True
    counts = np.bincount(labels[used])
    main = np.argmax(counts)
    keep_nodes = used & (labels == main)
    remap = -np.ones(n, int)
    remap[keep_nodes] = np.arange(keep_nodes.sum())
    keep_edges = keep_nodes[edges[:, 0]] & keep_nodes[edges[:, 1]]
    return keep_edges, remap[edges[keep_edges]], nodes[keep_nodes]


# -- blocks and land use -------------------------------------------------------------------
def _blocks(
    side: float,
    x0: float,
    y0: float,
    streets: Streets,
    river: River,
    terrain: Terrain,
    rng: np.random.Generator,
    creeks: gpd.GeoDataFrame | None = None,
) -> gpd.GeoDataFrame:
    coords = np.arange(LOCAL_SPACING / 2, side, LOCAL_SPACING)
    half = np.array([STREET_WIDTH[_line_class(k)] / 2 for k in range(len(coords))])
    i, j = np.meshgrid(np.arange(len(coords) - 1), np.arange(len(coords) - 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    boxes = shapely.box(
        x0 + coords[i] + half[i],
        y0 + coords[j] + half[j],
        x0 + coords[i + 1] - half[i + 1],
        y0 + coords[j + 1] - half[j + 1],
    )
    # waterfront: keep a 20 m promenade between the river and the first buildings
    boxes = shapely.difference(boxes, river.channel.buffer(20.0))
    boxes = np.array([_largest_part(g) for g in boxes], dtype=object)
    if creeks is not None and len(creeks):  # an open creek splits the blocks it runs through
        water = creeks.geometry.to_numpy()[~creeks["culvert"].to_numpy(bool)]
        water = shapely.union_all(water).buffer(CREEK_SETBACK)
        boxes = shapely.get_parts(shapely.difference(boxes, water))
    keep = ~shapely.is_empty(boxes) & (shapely.area(boxes) > 2000)
    boxes = boxes[keep]
    centres = shapely.get_coordinates(shapely.centroid(boxes))
    ground = terrain.sample(centres)
    use = _land_use(centres - np.array([x0, y0]), ground, side, river, rng)
    # a block with only bridges beside it (at a creek's mouth) has no street to serve it: green
    land = streets.lines()[~np.asarray(streets.bridge, dtype=bool)]
    served = shapely.STRtree(land).query(boxes, predicate="dwithin", distance=20.0)[0]
    use[~np.isin(np.arange(len(boxes)), served)] = "park"
    return gpd.GeoDataFrame(
        {"block": np.arange(len(boxes)), "land_use": use, "ground": ground}, geometry=boxes, crs=CRS
    )


def _largest_part(geom: shapely.Geometry) -> shapely.Geometry:
    parts = shapely.get_parts(geom)
    if len(parts) == 0:
        return shapely.Polygon()
    return parts[np.argmax(shapely.area(parts))]


def _land_use(
    rel: np.ndarray, ground: np.ndarray, side: float, river: River, rng: np.random.Generator
) -> np.ndarray:
    """Land use of blocks from their position: CBD on the waterfront at each centre, the old
    town beside it on the north bank, industry downstream by the river, parks on the hills."""
    x, y = rel[:, 0], rel[:, 1]
    yr = _river_y(x, side, river.phase)
    d = np.abs(y - yr)
    centres = np.arange(side / 2 % 6000.0 or side / 2, side, 6000.0)
    if len(centres) == 0:
        centres = np.array([side / 2])
    dc = np.min(np.abs(x[:, None] - centres[None, :]), axis=1)
    use = np.full(len(x), "residential", dtype=object)
    dx = x[:, None] - centres[None, :]
    west_of_centre = np.any((dx > -min(0.38 * side, 1800)) & (dx < -min(0.08 * side, 500)), axis=1)
    use[(x > 0.78 * side) & (d < 0.45 * side) & (d > 0.05 * side)] = "industrial"
    use[west_of_centre & (d < min(0.35 * side, 1500)) & (y > yr)] = "old_town"
    use[(dc < min(0.12 * side, 650)) & (d < min(0.12 * side, 550))] = "cbd"
    use[ground - _plain(d) > 10.0] = "park"  # the hills stay green
    use[(rng.random(len(x)) < 0.05) & (use == "residential")] = "park"
    return use


# -- buildings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    slot: tuple[float, float]  # slot size (x, y)
    size: tuple[tuple[float, float], tuple[float, float]]  # footprint x and y ranges
    floors: tuple[int, int]
    uses: tuple[tuple[str, float], ...]
    keep: float
    years: tuple[int, int]
    basements: tuple[float, int]  # share with basements, most floors


_KINDS = {
    "cbd": _Kind(
        (80, 80),
        ((30, 46), (30, 46)),
        (30, 80),
        (("office", 0.7), ("commercial", 0.3)),
        0.85,
        (2000, 2022),
        (0.9, 4),
    ),
    "old_town": _Kind(
        (17, 17),
        ((11, 15), (11, 15)),
        (3, 8),
        (("residential", 0.8), ("commercial", 0.2)),
        0.88,
        (1950, 1995),
        (0.0, 0),
    ),
    "residential": _Kind(
        (52, 64),
        ((36, 44), (15, 19)),
        (10, 33),
        (("residential", 1.0),),
        0.9,
        (1992, 2021),
        (0.6, 2),
    ),
    "industrial": _Kind(
        (95, 70), ((50, 72), (30, 46)), (1, 2), (("industrial", 1.0),), 0.8, (1985, 2015), (0.0, 0)
    ),
}


def _buildings(
    blocks: gpd.GeoDataFrame, river: River, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    """Footprints on a slot grid in each block, by land use (heights and people come later),
    each at least ``KERB_SETBACK`` inside its block."""
    frames = []
    inner = shapely.buffer(blocks.geometry.to_numpy(), -KERB_SETBACK, join_style="mitre")
    for use, kind in _KINDS.items():
        mine = blocks[blocks["land_use"] == use]
        if len(mine) == 0:
            continue
        cx, cy, owner = [], [], []
        for b, (minx, miny, maxx, maxy) in zip(
            mine["block"], shapely.bounds(mine.geometry.to_numpy()), strict=True
        ):
            nx = max(int((maxx - minx) // kind.slot[0]), 1)
            ny = max(int((maxy - miny) // kind.slot[1]), 1)
            gx = minx + (np.arange(nx) + 0.5) * (maxx - minx) / nx
            gy = miny + (np.arange(ny) + 0.5) * (maxy - miny) / ny
            X, Y = np.meshgrid(gx, gy)
            cx.append(X.ravel())
            cy.append(Y.ravel())
            owner.append(np.full(X.size, b))
        cx, cy, owner = np.concatenate(cx), np.concatenate(cy), np.concatenate(owner)
        n = len(cx)
        w = rng.uniform(*kind.size[0], n)
        h = rng.uniform(*kind.size[1], n)
        foot = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        inside = shapely.contains(inner[owner], foot)
        keep = inside & (rng.random(n) < kind.keep)
        foot, owner, n = foot[keep], owner[keep], int(keep.sum())
        uses = rng.choice([u for u, _ in kind.uses], n, p=[p for _, p in kind.uses])
        floors = rng.integers(kind.floors[0], kind.floors[1] + 1, n)
        has_basement = rng.random(n) < kind.basements[0]
        basements = np.where(has_basement, rng.integers(1, max(kind.basements[1], 1) + 1, n), 0)
        frames.append(
            pd.DataFrame(
                {
                    "geometry": foot,
                    "block": owner,
                    "use": uses,
                    "floors": floors,
                    "basement_floors": basements,
                    "year_built": rng.integers(*kind.years, n),
                    "district_use": use,
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    frame = gpd.GeoDataFrame(df, geometry="geometry", crs=CRS)
    return frame[~frame.intersects(river.channel)].reset_index(drop=True)


def _with_people(frame: gpd.GeoDataFrame, terrain: Terrain) -> gpd.GeoDataFrame:
    """Heights from floors, ground levels from the DEM, residents and day-time population."""
    area = frame.geometry.area.to_numpy()
    floors = frame["floors"].to_numpy()
    storey = frame["use"].map(STOREY).to_numpy()
    floor_area = area * floors
    use = frame["use"].to_numpy()
    residential = np.isin(use, ["residential"])
    workers = np.select(
        [
            np.isin(use, ["office", "commercial"]),
            use == "industrial",
            use == "school",
            use == "hospital",
        ],
        [
            floor_area / FLOOR_AREA_PER_WORKER,
            floor_area / 60.0,
            floor_area / 8.0,
            floor_area / 25.0,
        ],
        0.0,
    )
    centres = shapely.get_coordinates(frame.geometry.centroid.to_numpy())
    frame = frame.assign(
        id=[f"bldg-{i:07d}" for i in range(len(frame))],
        **{"class": "building"},
        height=np.round(floors * storey + np.where(use == "industrial", 0.0, 1.5), 1),
        residents=np.where(
            residential, np.round(floor_area * 0.92 / FLOOR_AREA_PER_RESIDENT), 0
        ).astype(int),
        daytime_population=np.round(workers).astype(int),
        ground_level=np.round(terrain.sample(centres), 2),
        lod="1",
        cim_level=3,
    )
    frame["daytime_population"] += np.round(frame["residents"] * 0.35).astype(int)
    return frame


# -- public buildings and facilities -------------------------------------------------------
def spread_out(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` points spread out over ``points`` (farthest-point sampling)."""
    if len(points) == 0 or n <= 0:
        return np.array([], dtype=int)
    chosen = [int(rng.integers(len(points)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(min(n, len(points)) - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(chosen)


def _public_buildings(
    buildings: gpd.GeoDataFrame, blocks: gpd.GeoDataFrame, rng: np.random.Generator
) -> gpd.GeoDataFrame:
    """Hospitals (one per ~60,000 people) and schools (one per ~9,000) take over housing
    blocks spread over the city."""
    floor_area = buildings.geometry.area * buildings["floors"] * (buildings["use"] == "residential")
    residents = float(floor_area.sum()) * 0.92 / FLOOR_AREA_PER_RESIDENT
    homes = blocks[blocks["land_use"].isin(["residential", "old_town"])]
    n_hosp = max(1, round(residents / 60_000))
    n_school = max(2, round(residents / 9_000))
    picks = spread_out(
        shapely.get_coordinates(homes.geometry.centroid.to_numpy()), n_hosp + n_school, rng
    )
    rows = []
    for rank, k in enumerate(picks):
        use = "hospital" if rank < n_hosp else "school"
        block = homes.iloc[int(k)]
        cx, cy = shapely.get_coordinates(block.geometry.centroid)[0]
        w, h = (90.0, 45.0) if use == "hospital" else (62.0, 24.0)
        foot = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if not block.geometry.contains(foot):
            foot = block.geometry.buffer(-6.0)
        rows.append(
            {
                "geometry": foot,
                "block": int(block["block"]),
                "use": use,
                "floors": int(rng.integers(8, 17)) if use == "hospital" else 5,
                "basement_floors": 1 if use == "hospital" else 0,
                "year_built": int(rng.integers(1985, 2020)),
                "district_use": "public",
            }
        )
    taken = {r["block"] for r in rows}
    kept = buildings[~buildings["block"].isin(taken)]
    out = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
    return gpd.GeoDataFrame(out, geometry="geometry", crs=CRS)


_CRITICAL = ("hospital", "fire_station", "shelter", "elderly_care", "police")


def _facilities(
    buildings: gpd.GeoDataFrame,
    blocks: gpd.GeoDataFrame,
    streets: Streets,
    river: River,
    terrain: Terrain,
    side: float,
    rng: np.random.Generator,
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Hospitals and schools (in their buildings), fire stations (each a building at a street
    corner, added to ``buildings``), shelters, a metro line with stations and underground
    entrances, the water treatment plant, substations and gas regulator stations; and the
    buildings with the fire stations."""
    area_km2 = side * side / 1e6
    rows: list[dict] = []

    def add(cls: str, geom: shapely.Geometry, name: str, **attrs: object) -> None:
        rows.append(
            {
                "id": f"fac-{len(rows) + 1:05d}",
                "class": cls,
                "name": name,
                "critical": cls in _CRITICAL,
                "geometry": geom,
                **attrs,
            }
        )

    for use, cls, per_m2 in (("hospital", "hospital", 60.0), ("school", "school", 8.0)):
        chosen = buildings[buildings["use"] == use]
        for n, (bid, geom, floors) in enumerate(
            zip(chosen["id"], chosen.geometry, chosen["floors"], strict=True), 1
        ):
            capacity = int(geom.area * floors / per_m2)
            add(
                cls,
                geom.representative_point(),
                f"Virtual {cls.title()} {n}",
                capacity=capacity,
                building_id=bid,
            )
            if cls == "school":  # school playgrounds are the neighbourhood's emergency shelters
                add(
                    "shelter",
                    geom.representative_point(),
                    f"Shelter at school {n}",
                    capacity=int(geom.area * 2.0),
                    building_id=bid,
                )
    parks = blocks[blocks["land_use"] == "park"]
    for n, geom in enumerate(
        parks.geometry.iloc[
            spread_out(
                shapely.get_coordinates(parks.geometry.centroid.to_numpy()),
                max(1, round(area_km2)),
                rng,
            )
        ],
        1,
    ):
        add(
            "shelter",
            geom.representative_point(),
            f"Park shelter {n}",
            capacity=int(geom.area / 2.0),
        )

    # services on street corners, spread over the city
    corners = streets.nodes
    for cls, per_km2, label in (
        ("fire_station", 1 / 7, "Fire Station"),
        ("substation", 1 / 3, "Substation"),
        ("gas_regulator_station", 1 / 2, "Gas Regulator Station"),
    ):
        picks = spread_out(corners, max(1, round(area_km2 * per_km2)), rng)
        if cls == "fire_station":
            buildings, housed, renamed = _fire_stations(
                buildings, blocks, corners[picks], terrain, rng
            )
            for r in rows:  # the other buildings' ids, renumbered
                if r.get("building_id") is not None:
                    r["building_id"] = renamed[r["building_id"]]
            for n, (bid, geom) in enumerate(housed, 1):
                add(cls, geom.representative_point(), f"{label} {n}", building_id=bid)
            continue
        for n, k in enumerate(picks, 1):
            x, y = corners[k] + np.array([18.0, 18.0])  # just inside the block at the corner
            add(cls, shapely.box(x - 10, y - 8, x + 10, y + 8), f"{label} {n}")

    # a metro line under the arterial nearest the river on the north bank
    y_axis = np.unique(streets.nodes[:, 1])
    yr = float(np.median(shapely.get_coordinates(river.centerline)[:, 1]))
    north = y_axis[y_axis > yr + river.width]
    if len(north):
        line_y = north[0]
        stops = np.unique(streets.nodes[np.isclose(streets.nodes[:, 1], line_y), 0])
        stops = stops[:: max(1, round(1200 / LOCAL_SPACING))]
        for n, x in enumerate(stops, 1):
            ground = float(terrain.sample(np.array([[x, line_y]]))[0])
            add(
                "metro_station",
                shapely.Point(x, line_y),
                f"Metro Station {n}",
                props={"underground": True, "platform_level": round(ground - 15.0, 2)},
            )
            for side_sign, corner in ((-1, "north-west"), (1, "south-east")):
                add(
                    "metro_entrance",
                    shapely.Point(x + side_sign * 24.0, line_y - side_sign * 22.0),
                    f"Metro Station {n} entrance {corner}",
                    props={
                        "underground": True,
                        "station": f"Metro Station {n}",
                        "entrance_level": round(ground + 0.15, 2),
                    },
                )

    # the water treatment plant upstream (west), beside the river
    rx, ry = shapely.get_coordinates(river.centerline)[
        len(shapely.get_coordinates(river.centerline)) // 12
    ]
    plant = shapely.box(rx - 90, ry + river.width / 2 + 40, rx + 90, ry + river.width / 2 + 170)
    add("water_treatment_plant", plant, "Virtual Water Works", capacity=None)
    frame = gpd.GeoDataFrame(pd.DataFrame(rows), geometry="geometry", crs=CRS)
    return frame, buildings


FIRE_STATION = ((40.0, 24.0), 3, 30)
"""A fire station's footprint (m), storeys and crew: a class-1 urban station (建标 152-2017,
城市消防站建设标准: 2,700-4,000 m² of floor, 30-45 firefighters) of 2,880 m²."""
_SETBACK = 4.0  # m from the block's edge to a fire station, and from it to other buildings


def _fire_stations(
    buildings: gpd.GeoDataFrame,
    blocks: gpd.GeoDataFrame,
    corners: np.ndarray,
    terrain: Terrain,
    rng: np.random.Generator,
) -> tuple[gpd.GeoDataFrame, list[tuple[str, shapely.Geometry]], dict[str, str]]:
    """A fire station building at each street corner, in the corner of a block there (the
    north-eastern first; never a hospital's or a school's block), its appliance bays facing
    the street; the buildings in its way are taken down. Returns the buildings (renumbered),
    the fire stations' building ids and footprints, and the new id of every building kept by
    its old one. Draws only from a child of ``rng``, so the other sites keep their draws."""
    (w, h), floors, crew = FIRE_STATION
    child = rng.spawn(1)[0]
    geoms = blocks.geometry.to_numpy()
    block_ids = blocks["block"].to_numpy()
    public = set(buildings.loc[buildings["district_use"] == "public", "block"])
    taken: list[shapely.Geometry] = []
    rows = []
    for corner in corners:
        order = np.argsort(shapely.distance(geoms, shapely.Point(corner + 25.0)), kind="stable")
        for k in order:
            if block_ids[k] in public:
                continue
            foot = _corner_footprint(geoms[k], corner, w, h)
            if foot is not None and not any(foot.intersects(t) for t in taken):
                break
        else:
            raise RuntimeError("no block has room for a fire station")
        taken.append(foot.buffer(_SETBACK))
        rows.append(
            {
                "geometry": foot,
                "block": int(block_ids[k]),
                "use": "fire_station",
                "floors": floors,
                "basement_floors": 0,
                "year_built": int(child.integers(1985, 2020)),
                "district_use": "public",
            }
        )
    hit, _ = shapely.STRtree(taken).query(buildings.geometry.to_numpy(), predicate="intersects")
    kept = buildings.drop(index=buildings.index[np.unique(hit)])
    frame = gpd.GeoDataFrame(
        pd.concat([kept, pd.DataFrame(rows)], ignore_index=True), geometry="geometry", crs=CRS
    )
    frame = _with_people(frame, terrain)
    station = (frame["use"] == "fire_station").to_numpy()
    frame.loc[station, "daytime_population"] = crew
    renamed = dict(zip(kept["id"], frame["id"].iloc[: len(kept)], strict=True))
    housed = list(zip(frame["id"][station], frame.geometry[station], strict=True))
    return frame, housed, renamed


def _corner_footprint(
    block: shapely.Geometry, corner: np.ndarray, w: float, h: float
) -> shapely.Geometry | None:
    """A ``w`` × ``h`` footprint ``_SETBACK`` inside the corner of ``block`` nearest
    ``corner`` (else ``h`` × ``w``), or None where the block has no room for it there."""
    minx, miny, maxx, maxy = block.bounds
    qx, dx = (minx, 1.0) if abs(corner[0] - minx) <= abs(corner[0] - maxx) else (maxx, -1.0)
    qy, dy = (miny, 1.0) if abs(corner[1] - miny) <= abs(corner[1] - maxy) else (maxy, -1.0)
    for a, b in ((w, h), (h, w)):
        x0, x1 = sorted((qx + dx * _SETBACK, qx + dx * (_SETBACK + a)))
        y0, y1 = sorted((qy + dy * _SETBACK, qy + dy * (_SETBACK + b)))
        foot = shapely.box(x0, y0, x1, y1)
        if block.contains(foot):
            return foot
    return None


def _districts(side: float, x0: float, y0: float, buildings: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Administrative districts: a grid of about 2 km squares, with their population."""
    k = max(1, round(side / 2000.0))
    step = side / k
    cells = [
        shapely.box(x0 + i * step, y0 + j * step, x0 + (i + 1) * step, y0 + (j + 1) * step)
        for j in range(k)
        for i in range(k)
    ]
    frame = gpd.GeoDataFrame(
        {
            "id": [f"district-{n + 1:03d}" for n in range(len(cells))],
            "class": "district",
            "name": [f"District {n + 1}" for n in range(len(cells))],
        },
        geometry=cells,
        crs=CRS,
    )
    centres = buildings.geometry.centroid
    cx = np.clip(((centres.x - x0) // step).astype(int), 0, k - 1)
    cy = np.clip(((centres.y - y0) // step).astype(int), 0, k - 1)
    pop = np.bincount(
        (cy * k + cx).to_numpy(), weights=buildings["residents"].to_numpy(), minlength=k * k
    )
    frame["population"] = pop.astype(int)
    return frame

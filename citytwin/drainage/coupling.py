"""The drains and the streets as one system: SWMM (through pyswmm) runs the pipe network in step
with CityTwin's 2-D surface model, and water moves between them through the inlets.

``SwmmCoupling`` is an ``Exchange`` for ``citytwin.flood.run.simulate``. At each of its syncs
(every ``interval`` seconds) it

1. hands SWMM, as lateral inflow at each inlet's node over the coming SWMM stride, the water that
   *actually* left the surface for that inlet since the last sync (the run loop clips what a
   cell does not hold; the coupling reads back what moved, so nothing is counted twice);
2. advances SWMM one stride (``interval`` seconds, SWMM's own routing steps inside it);
3. works out the exchange discharge of every inlet for the next interval from the surface
   water level at the inlet's cell and the node's head (weir and orifice equations, as in itzï,
   Courty et al. 2017, with the regimes of Rubinato et al. 2017):

   - surface → sewer while the surface stands above the inlet's crest and above the node's head:
     ``min(Cw·P·hs·√(2 g hs), Co·A·√(2 g Δh))`` (``hs`` the water depth over the crest, ``Δh``
     the surface level above the higher of the head and the crest: the free weir while the
     water is shallow and the pipe has room, the orifice once the grate is drowned or the pipe
     backs up), never more than the cell holds;
   - sewer → surface: the water SWMM reports as *flooding* at the node (what arrives once the
     manhole is full: its head at the rim plus ``surcharge_depth``) comes back onto the inlet's
     cell, all of it, over the next interval. While a manhole floods, its grate takes no more
     than the node absorbed over the last stride (lateral inflow less flooding; the limit
     relaxes again, ×1.25 + 1 l/s per stride, once it stops flooding), so water is not sent
     down only to come straight back up.

Why flooding and not an orifice for the way back: SWMM's junctions hold no volume, so a return
discharge taken out of SWMM as a negative lateral inflow can ask for water the node does not
have, which SWMM then makes up (measured: continuity errors of −90 % and worse with a 0.5 m
surcharge allowance and an orifice return); SWMM's flooding is what its own hydraulics cannot
pass, so handing it to the surface is exact. The orifice law still governs the way *in* when
the sewer backs up (``Δh`` above). Coupled nodes get a ponding area of 0 (flooding leaves SWMM
and goes onto the grid, never stored twice) and the ``surcharge_depth`` given (default 0: SWMM
floods at the rim).

Rain falls on the grid, not in SWMM: if the model has subcatchments their rain is switched off
(``IGNORE_RAINFALL YES`` in ``[OPTIONS]``) unless ``keep_runoff=True``. Other SWMM inflows
(dry-weather flow, ``[INFLOWS]``, RDII) keep flowing and are counted in the balance.

The balance (``volume_report``) is exact on the coupling's side: what left the surface equals
what SWMM booked as lateral inflow plus what is still on its way, and SWMM's flooding at coupled
nodes goes to the surface in full; what is left is SWMM's own continuity residual
(``sewer_error``), e.g. while steep conduits are part-full SWMM's link volumes run high, and a
network filling into surcharge can lose or gain a fraction of a percent.

SWMM is one global engine per process (pyswmm): one coupling (or ``run_swmm``) at a time; close
it (``close()`` or a ``with`` block) before the next.
"""

from __future__ import annotations

import math
import re
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
from pyswmm import Links, Nodes, Simulation, SystemStats
from swmm.toolkit import shared_enum, solver

from citytwin.flood.domain import Domain, G

NODE = shared_enum.ObjectType.NODE.value
NEW_HEAD = shared_enum.NodeResult.HEAD.value

FLOW_FACTORS = {"CMS": 1.0, "LPS": 1e-3, "MLD": 1e3 / 86400.0}
"""m³/s per SWMM flow unit (SI models only: heads and lengths must be metres, as the grid)."""
MIN_RATE = 1e-6
"""m³/s: smaller lateral inflows are held back until they add up (SWMM drops flows below its
FLOW_TOL, about 3e-7 m³/s, and the water would be lost)."""
CAP_GROWTH, CAP_STEP = 1.25, 1e-3
"""How fast (per stride: × growth + step, m³/s) a manhole that flooded takes water again."""
CAP_MAX = 100.0
"""m³/s: where the relaxing limit stops (far above what any inlet can take)."""
_SECTION = re.compile(r"^\s*\[([^\]]+)\]")


@dataclass(frozen=True)
class Inlet:
    """Where a SWMM node meets the surface: its ``node`` name, the ``(row, col)`` cell,
    the ``rim`` (ground) elevation in m (None: SWMM's invert + full depth), and the inlet's
    weir ``perimeter`` (m) and orifice ``area`` (m²): by default a 1 m × 1 m grate."""

    node: str
    row: int
    col: int
    rim: float | None = None
    perimeter: float = 4.0
    area: float = 1.0


@dataclass(frozen=True)
class CouplingBalance:
    """The coupled water budget at time ``t`` (s since the coupling's first sync; SWMM's clock,
    which runs one interval ahead of the surface's last sync). Volumes in m³.

    ``drained`` left the surface into inlets, ``returned`` came back onto it (SWMM's flooding at
    coupled nodes), each the net of an inlet over a sync interval; ``recirculated`` went down
    and straight back up within an interval (a manhole that floods while its grate still draws
    water: counted in neither). Water between the two models: ``to_sewer`` (drained, not yet
    booked by SWMM; slightly negative when SWMM booked a little ahead) and ``to_surface``
    (flooded out of SWMM, not yet put on the grid). SWMM's side: ``sewer_initial`` and
    ``sewer_storage`` (node + link volumes), ``outfall`` (left through outfalls),
    ``flood_lost`` (flooding at nodes not coupled to the grid: gone), ``swmm_losses``
    (evaporation, seepage), ``swmm_inflow`` (SWMM's own inflows: dry weather, runoff,
    groundwater, RDII, ``[INFLOWS]``), ``sewer_error`` (SWMM's residual: what it holds and let
    out less what it got) and ``continuity_error`` (SWMM's flow-routing continuity error, %,
    final once closed). ``surface`` is the grid's volume as given by the caller (NaN if not)."""

    t: float
    drained: float
    returned: float
    recirculated: float
    to_sewer: float
    to_surface: float
    sewer_initial: float
    sewer_storage: float
    outfall: float
    flood_lost: float
    swmm_losses: float
    swmm_inflow: float
    sewer_error: float
    continuity_error: float
    surface: float = math.nan

    @property
    def total(self) -> float:
        """What the coupled system holds or let out, less the water SWMM's own sources put in and
        the sewer held at the start: compare with the water put on the surface (rain, inflows)
        less the surface's own losses and side outflow."""
        return (
            self.surface
            + self.sewer_storage
            - self.sewer_initial
            + self.outfall
            + self.flood_lost
            + self.swmm_losses
            + self.to_sewer
            + self.to_surface
            - self.swmm_inflow
        )


class SwmmCoupling:
    """SWMM's drainage network coupled to a surface ``domain`` through ``inlets`` (an
    ``Exchange`` for ``simulate``); see the module's docstring for the exchange.

    ``inp`` is the SWMM INP text (SI units). ``interval``: seconds between syncs (whole seconds,
    SWMM strides by them; SWMM routes with its own steps inside). Keep it near the surface's
    own step (1–2 s on metre grids): an inlet takes at most what its cell holds at a sync, so
    long intervals throttle the inlets (on the test street the deepest water was 4 cm at 1 s,
    28 cm at 10 s). ``weir_coefficient`` and
    ``orifice_coefficient``: discharge coefficients of the inlets. ``surcharge_depth`` (m): how
    far the head of a coupled node may rise above its rim before SWMM floods it (a heavy or
    bolted cover; 0: it floods at the rim).
    ``keep_runoff``: keep SWMM's subcatchment rain (otherwise ``IGNORE_RAINFALL YES``).
    ``duration`` (s): run SWMM at least that long (plus a margin) past its start; by default it
    stops at the INP's end date (which must then be an interval or two past the surface run's).
    """

    def __init__(
        self,
        inp: str,
        domain: Domain,
        inlets: list[Inlet] | tuple[Inlet, ...],
        *,
        interval: float = 1.0,
        weir_coefficient: float = 0.67,
        orifice_coefficient: float = 0.6,
        surcharge_depth: float = 0.0,
        keep_runoff: bool = False,
        duration: float | None = None,
    ) -> None:
        if not (interval >= 1 and float(interval).is_integer()):
            raise ValueError(
                f"the coupling interval must be a whole number of seconds >= 1, not {interval}"
                " (SWMM strides in whole seconds)"
            )
        if not (weir_coefficient > 0 and orifice_coefficient > 0):
            raise ValueError("the weir and orifice coefficients must be > 0")
        if not surcharge_depth >= 0:
            raise ValueError("the surcharge depth must be >= 0 m")
        if not inlets:
            raise ValueError("no inlets: give at least one node placed on the grid")
        self.domain = domain
        self.inlets = tuple(inlets)
        self.interval = float(interval)
        self.cw = float(weir_coefficient)
        self.co = float(orifice_coefficient)
        self.surcharge_depth = float(surcharge_depth)
        ny, nx = domain.shape
        names = [i.node for i in self.inlets]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"nodes coupled twice: {dup}; give each node one inlet")
        for i in self.inlets:
            if not (0 <= i.row < ny and 0 <= i.col < nx):
                raise ValueError(
                    f"inlet of node {i.node!r} at cell ({i.row}, {i.col}) is outside the"
                    f" {ny} x {nx} grid"
                )
            if not domain.active[i.row, i.col]:
                raise ValueError(
                    f"inlet of node {i.node!r} at cell ({i.row}, {i.col}) is on an inactive cell"
                    " (outside the bed or a building): move it to an open cell"
                )
            if not (i.perimeter > 0 and i.area > 0):
                raise ValueError(f"inlet of node {i.node!r}: perimeter and area must be > 0")

        text = inp if keep_runoff else _ignore_rainfall(inp)
        self._fed = _fed_nodes(text, keep_runoff)
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="citytwin-swmm-"))
        path = Path(self._tmp) / "model.inp"
        path.write_text(text)
        self._closed = False
        self._final: CouplingBalance | None = None
        self._continuity = math.nan
        try:
            self._sim = self._stack.enter_context(Simulation(str(path)))
            self._open(duration)
        except BaseException:
            self._stack.close()
            self._closed = True
            raise

    # -- set-up ---------------------------------------------------------------------------------
    def _open(self, duration: float | None) -> None:
        sim = self._sim
        if sim.system_units != "SI" or sim.flow_units not in FLOW_FACTORS:
            raise ValueError(
                f"the SWMM model uses {sim.flow_units} ({sim.system_units}) flow units: the"
                f" coupling needs SI units ({', '.join(FLOW_FACTORS)}), lengths in metres as"
                " the grid's; set FLOW_UNITS in [OPTIONS]"
            )
        self._flow = FLOW_FACTORS[sim.flow_units]
        all_nodes = Nodes(sim)
        ids = [n.nodeid for n in all_nodes]
        self._all_nodes = {i: all_nodes[i] for i in ids}
        self._links = [Links(sim)[link.linkid] for link in Links(sim)]
        rims = []
        for inlet in self.inlets:
            node = self._all_nodes.get(inlet.node)
            if node is None:
                raise ValueError(
                    f"inlet node {inlet.node!r} is not in the SWMM model (its nodes: "
                    f"{', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''})"
                )
            if not (node.is_junction() or node.is_storage()):
                raise ValueError(
                    f"node {inlet.node!r} is an outfall or divider: couple junctions (manholes)"
                    " and storage nodes only"
                )
            if inlet.rim is not None:
                depth = inlet.rim - node.invert_elevation
                if not depth > 0:
                    raise ValueError(
                        f"the rim of node {inlet.node!r} ({inlet.rim:.3f} m) is not above its"
                        f" invert ({node.invert_elevation:.3f} m): check the node's elevations"
                        " against the grid's"
                    )
                node.full_depth = depth
            node.surcharge_depth = self.surcharge_depth
            node.ponding_area = 0.0
            rims.append(node.invert_elevation + node.full_depth)
        # the toolkit's own indices: pyswmm's per-node properties look each id up (and build a
        # dict of every statistic) on each call, most of a sync's time on a city's manholes
        self._index = [solver.project_get_index(NODE, i.node) for i in self.inlets]
        self.rims = np.array(rims)
        if duration is not None:
            # a margin: SWMM stops a stride or two short of an end date set this way
            end = sim.start_time + timedelta(seconds=float(duration) + 10 * self.interval + 60)
            if end > sim.end_time:
                sim.end_time = end
        sim.add_after_end(self._ended)
        sim.step_advance(int(self.interval))
        sim.start()

        n = len(self.inlets)
        self._rows = np.array([i.row for i in self.inlets])
        self._cols = np.array([i.col for i in self.inlets])
        self._perimeter = np.array([i.perimeter for i in self.inlets])
        self._area = np.array([i.area for i in self.inlets])
        self._crest = np.maximum(self.rims, self.domain.zb[self._rows, self._cols])
        # inlets sharing a cell share its water
        cells = self._rows * self.domain.shape[1] + self._cols
        _, self._cell_group, self._cell_count = np.unique(
            cells, return_inverse=True, return_counts=True
        )
        self._to_sewer = np.zeros(n)  # m³ drained, not yet booked by SWMM
        self._to_surface = np.zeros(n)  # m³ flooded out of SWMM, not yet on the grid
        self._flooded = np.zeros(n)  # SWMM's cumulative flooding at each node (m³)
        self._q_in = np.zeros(n)  # m³/s surface -> sewer asked for the current interval
        self._q_flood = np.zeros(n)  # m³/s flood return asked for the current interval
        self._q_cells = np.zeros(self.domain.shape)
        self._cap = np.full(n, np.inf)  # m³/s the most each manhole may take (while flooding)
        self.node_drained = np.zeros(n)  # m³ per inlet, net over each interval, totals
        self.node_returned = np.zeros(n)
        self._recirculated = self._received = 0.0
        self._lateral = np.zeros(n)  # SWMM's cumulative lateral inflow at each node (m³)
        self._exclusive = np.array([i.node not in self._fed for i in self.inlets])
        self._t: float | None = None
        self._next = math.nan
        self._swmm_t = 0.0
        self._initial = self._sewer_storage()

    def _ended(self) -> None:
        self._continuity = float(self._sim.flow_routing_error)

    # -- the exchange ---------------------------------------------------------------------------
    def sync(self, t: float, h: np.ndarray, moved: np.ndarray) -> tuple[float, np.ndarray]:
        """Hand over the water that moved, advance SWMM one interval and return the time of the
        next sync and the exchange discharges (m³/s per cell, + into the surface)."""
        if self._closed:
            raise RuntimeError("the SWMM coupling is closed")
        if self._t is not None:
            if t <= self._t + 1e-9:  # the same sync again (a continued run): nothing new
                return self._next, self._q_cells
            self._account(moved, t - self._t)
        self._advance()
        self._exchange(h)
        self._t = t
        self._next = t + self.interval
        return self._next, self._q_cells

    def _account(self, moved: np.ndarray, elapsed: float) -> None:
        """Split what moved at the inlets' cells over the last ``elapsed`` seconds."""
        back = self._q_flood * elapsed  # put on the grid in full (positive: never clipped)
        self._to_surface -= back
        given = np.zeros(self.domain.shape)
        np.add.at(given, (self._rows, self._cols), back)
        asked = np.zeros(len(self._cell_count))
        np.add.at(asked, self._cell_group, self._q_in * elapsed)
        # drained from each cell: what was given there less the net that moved
        cell_drained = given[self._rows, self._cols] - moved[self._rows, self._cols]
        share = np.where(asked[self._cell_group] > 0,
                         self._q_in * elapsed / np.where(asked > 0, asked, 1.0)[self._cell_group],
                         0.0)  # fmt: skip
        drained = np.clip(cell_drained * share, 0.0, self._q_in * elapsed)
        self._to_sewer += drained
        # what the surface saw: the net of each inlet over the interval (a manhole that floods
        # while its grate still draws water sends that water straight back: recirculated)
        net = back - drained
        self.node_drained += np.maximum(-net, 0.0)
        self.node_returned += np.maximum(net, 0.0)
        self._recirculated += float(np.minimum(back, drained).sum())

    def _advance(self) -> None:
        """Give SWMM the pending water as lateral inflow and advance it one stride."""
        rate = self._to_sewer / self.interval
        rate[rate < MIN_RATE] = 0.0  # (below 0: SWMM booked a little ahead; it is made up)
        for k, index in enumerate(self._index):
            solver.node_set_total_inflow(index, float(rate[k] / self._flow))
        try:
            next(self._sim)
        except StopIteration:
            raise ValueError(
                f"the SWMM model ended at {self._swmm_t:.0f} s, before the surface run: give"
                " SwmmCoupling the run's duration= (or a later END_DATE/END_TIME in the INP)"
            ) from None
        now = (self._sim.current_time - self._sim.start_time).total_seconds()
        step, self._swmm_t = now - self._swmm_t, now
        stats = [solver.node_get_stats(index) for index in self._index]
        lateral = np.array([s.totLatFlow for s in stats])
        flooded = np.array([s.volFlooded for s in stats])
        # what SWMM booked (its routing steps do not split a stride exactly as rate x stride);
        # where the node has inflows of its own, the rate times the stride
        received = np.where(self._exclusive, lateral - self._lateral, rate * step)
        self._lateral = lateral
        self._to_sewer -= received
        self._received += float(received.sum())
        flood = np.maximum(flooded - self._flooded, 0.0)
        self._to_surface += flood
        self._flooded = flooded
        # a flooding manhole takes no more than it absorbed (lateral inflow less flooding);
        # the limit relaxes again while it does not flood
        absorbed = np.maximum(received - flood, 0.0) / max(step, 1e-9)
        relaxed = np.minimum(self._cap * CAP_GROWTH + CAP_STEP, CAP_MAX)
        self._cap = np.where(flood > 0, absorbed, relaxed)

    def _exchange(self, h: np.ndarray) -> None:
        """The discharges of the next interval from the surface level and the nodes' heads."""
        dt = self.interval
        r, c = self._rows, self._cols
        depth = h[r, c]
        eta = self.domain.zb[r, c] + depth
        head = np.array([solver.node_get_result(index, NEW_HEAD) for index in self._index])
        crest = self._crest
        # surface -> sewer: weir while shallow / the pipe has room, orifice once drowned
        hs = np.maximum(eta - crest, 0.0)
        dh = np.maximum(eta - np.maximum(head, crest), 0.0)
        weir = self.cw * self._perimeter * hs * np.sqrt(2 * G * hs)
        orifice = self.co * self._area * np.sqrt(2 * G * dh)
        q_in = np.where((hs > 0) & (dh > 0), np.minimum(weir, orifice), 0.0)
        # no more than the cell holds (shared by the inlets in it)
        cap = depth * self.domain.cell_area / dt
        asked = np.zeros(len(self._cell_count))
        np.add.at(asked, self._cell_group, q_in)
        scale = np.minimum(1.0, cap / np.where(asked > 0, asked, 1.0)[self._cell_group])
        self._q_in = np.minimum(q_in * scale, self._cap)
        # sewer -> surface: what SWMM flooded at the node
        self._q_flood = np.maximum(self._to_surface, 0.0) / dt
        q = np.zeros(self.domain.shape)
        np.add.at(q, (r, c), self._q_flood - self._q_in)
        self._q_cells = q

    # -- figures --------------------------------------------------------------------------------
    def _sewer_storage(self) -> float:
        nodes = sum(n.volume for n in self._all_nodes.values())
        return float(nodes + sum(link.volume for link in self._links))

    def volume_report(self, surface: float | None = None) -> CouplingBalance:
        """The coupled budget now (after ``close()``: at the close); ``surface`` the volume (m³)
        on the grid, e.g. ``result.balance.volume[-1]``."""
        if self._final is not None:
            report = self._final
        elif self._closed:
            raise RuntimeError("the SWMM coupling was closed before its first sync")
        else:
            report = self._report()
        if surface is not None:
            report = CouplingBalance(**{**report.__dict__, "surface": float(surface)})
        return report

    def _report(self) -> CouplingBalance:
        stats = SystemStats(self._sim).routing_stats
        coupled = {i.node for i in self.inlets}
        lost = sum(
            n.statistics["flooding_volume"] for k, n in self._all_nodes.items() if k not in coupled
        )
        flooded_total = lost + float(self._flooded.sum())
        sources = ("dry_weather_inflow", "wet_weather_inflow", "groundwater_inflow", "II_inflow")
        swmm_in = sum(stats[k] for k in (*sources, "external_inflow"))
        swmm_in -= self._received  # the API inflows are SWMM's external inflows
        losses = stats["evaporation_loss"] + stats["seepage_loss"]
        storage = self._sewer_storage()
        got = self._initial + self._received + swmm_in
        error = storage + stats["outflow"] + flooded_total + losses - got
        continuity = self._continuity if math.isfinite(self._continuity) else stats["routing_error"]
        return CouplingBalance(
            t=self._swmm_t,
            drained=float(self.node_drained.sum()),
            returned=float(self.node_returned.sum()),
            recirculated=self._recirculated,
            to_sewer=float(self._to_sewer.sum()),
            to_surface=float(self._to_surface.sum()),
            sewer_initial=self._initial,
            sewer_storage=storage,
            outfall=float(stats["outflow"]),
            flood_lost=float(lost),
            swmm_losses=float(losses),
            swmm_inflow=float(swmm_in),
            sewer_error=float(error),
            continuity_error=float(continuity),
        )

    # -- the end --------------------------------------------------------------------------------
    def close(self) -> None:
        """End SWMM (its report and continuity error are final then) and remove its files; the
        last ``volume_report`` stays readable."""
        if self._closed:
            return
        report = self._report() if self._t is not None else None
        try:
            self._stack.close()
        finally:
            self._closed = True
        if report is not None:
            cont = self._continuity if math.isfinite(self._continuity) else report.continuity_error
            self._final = CouplingBalance(**{**report.__dict__, "continuity_error": cont})

    def __enter__(self) -> SwmmCoupling:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- placing the nodes ----------------------------------------------------------------------
    @classmethod
    def from_coordinates(
        cls,
        inp: str,
        domain: Domain,
        x0: float,
        y0: float,
        *,
        nodes: list[str] | None = None,
        rim: Literal["surface", "swmm"] = "surface",
        perimeter: float = 4.0,
        area: float = 1.0,
        **options: object,
    ) -> SwmmCoupling:
        """Couple the nodes at their ``[COORDINATES]`` on a grid whose upper-left corner is at
        ``(x0, y0)`` (cells ``domain.dx`` wide, rows running south, in the INP's coordinates'
        CRS). ``nodes``: which to couple (default: every junction and storage node on an open
        cell of the grid; one named here that is not gives a ValueError). ``rim``: ``surface``
        puts each rim at its cell's bed (the grid is the ground; SWMM's full depth is set to
        match) or ``swmm`` keeps the INP's (invert + max depth). ``options`` go to the
        constructor."""
        if rim not in ("surface", "swmm"):
            raise ValueError(f"rim must be 'surface' or 'swmm', not {rim!r}")
        sections = _sections(inp)
        coords = {}
        for tokens in sections.get("COORDINATES", []):
            if len(tokens) >= 3:
                coords[tokens[0]] = (float(tokens[1]), float(tokens[2]))
        couplable = [t[0] for s in ("JUNCTIONS", "STORAGE") for t in sections.get(s, [])]
        ny, nx = domain.shape
        wanted = couplable if nodes is None else list(nodes)
        inlets = []
        for name in wanted:
            if name not in couplable:
                raise ValueError(f"node {name!r} is not a junction or storage node of the model")
            if name not in coords:
                if nodes is None:
                    continue
                raise ValueError(f"node {name!r} has no [COORDINATES]: add 'name X Y' for it")
            x, y = coords[name]
            col = math.floor((x - x0) / domain.dx)
            row = math.floor((y0 - y) / domain.dx)
            on_grid = 0 <= row < ny and 0 <= col < nx and bool(domain.active[row, col])
            if not on_grid:
                if nodes is None:
                    continue
                raise ValueError(
                    f"node {name!r} at ({x}, {y}) is not on an open cell of the grid"
                    f" (cell ({row}, {col}) of {ny} x {nx} from ({x0}, {y0}))"
                )
            level = float(domain.z[row, col]) if rim == "surface" else None
            inlets.append(Inlet(name, row, col, level, perimeter, area))
        if not inlets:
            raise ValueError(
                "no junction or storage node of the model lies on an open cell of the grid:"
                " check x0, y0 and the CRS of the INP's coordinates"
            )
        return cls(inp, domain, inlets, **options)  # type: ignore[arg-type]


def _sections(inp: str) -> dict[str, list[list[str]]]:
    """The data rows of each section of an INP text (comments dropped), as tokens."""
    out: dict[str, list[list[str]]] = {}
    current: list[list[str]] | None = None
    for line in inp.splitlines():
        m = _SECTION.match(line)
        if m:
            current = out.setdefault(m.group(1).strip().upper(), [])
            continue
        tokens = line.split(";", 1)[0].split()
        if tokens and current is not None:
            current.append(tokens)
    return out


def _fed_nodes(inp: str, runoff: bool) -> set[str]:
    """The nodes SWMM feeds itself (dry-weather flow, external inflows, RDII; runoff and
    groundwater where they are kept)."""
    sections = _sections(inp)
    fed = {t[0] for s in ("DWF", "INFLOWS", "RDII") for t in sections.get(s, [])}
    if runoff:
        fed |= {t[2] for t in sections.get("SUBCATCHMENTS", []) if len(t) > 2}
        fed |= {t[2] for t in sections.get("GROUNDWATER", []) if len(t) > 2}
    return fed


def _ignore_rainfall(inp: str) -> str:
    """The INP with ``IGNORE_RAINFALL YES`` in its options, if it has subcatchments."""
    if not _sections(inp).get("SUBCATCHMENTS"):
        return inp
    lines = inp.splitlines()
    out: list[str] = []
    section = None
    added = False
    for line in lines:
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip().upper()
            out.append(line)
            if section == "OPTIONS":
                out.append("IGNORE_RAINFALL      YES")
                added = True
            continue
        tokens = line.split(";", 1)[0].split()
        if section == "OPTIONS" and tokens and tokens[0].upper() == "IGNORE_RAINFALL":
            continue
        out.append(line)
    if not added:
        out = ["[OPTIONS]", "IGNORE_RAINFALL      YES", "", *out]
    return "\n".join(out) + "\n"

"""Running SWMM (through pyswmm) on a model's INP text, and what the run says."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyswmm import Nodes, Simulation, SystemStats


@dataclass
class SwmmRun:
    """The figures of a SWMM run that a check needs."""

    runoff_error: float  # %, runoff continuity error
    routing_error: float  # %, flow routing continuity error
    surcharged: list[str]  # nodes that surcharged
    flooded: list[str]  # nodes that flooded
    flood_volume: float  # m³ (SI models), total over all nodes
    nodes: dict[str, dict[str, Any]]  # pyswmm's statistics of every node
    routing: dict[str, float]  # the flow routing totals (inflows, outflow, flooding ...)

    @property
    def continuity_ok(self) -> bool:
        """Both continuity errors within 1 %."""
        return abs(self.runoff_error) <= 1.0 and abs(self.routing_error) <= 1.0


def run_swmm(inp_text: str) -> SwmmRun:
    """Run SWMM to the end on ``inp_text`` and sum up continuity, surcharge and flooding."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.inp"
        path.write_text(inp_text)
        return run_swmm_file(path)


def run_swmm_file(path: str | Path) -> SwmmRun:
    """Run SWMM to the end on the model in ``path`` (its report files go beside it)."""
    errors: dict[str, float] = {}
    with Simulation(str(path)) as sim:

        def finished() -> None:  # the mass balance is complete only once SWMM has ended
            errors["runoff"] = sim.runoff_error
            errors["routing"] = sim.flow_routing_error

        sim.add_after_end(finished)
        for _ in sim:
            pass
        stats = {node.nodeid: node.statistics for node in Nodes(sim)}
        routing = dict(SystemStats(sim).routing_stats)
    surcharged = [n for n, s in stats.items() if s.get("surcharge_duration", 0.0) > 0]
    flooded = [n for n, s in stats.items() if s.get("flooding_volume", 0.0) > 0]
    volume = sum(s.get("flooding_volume", 0.0) for s in stats.values())
    return SwmmRun(errors["runoff"], errors["routing"], surcharged, flooded, volume, stats, routing)

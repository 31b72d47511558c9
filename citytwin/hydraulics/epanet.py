"""Running EPANET (through wntr) on a water network model, in a scratch folder."""

from __future__ import annotations

import tempfile

import pandas as pd
import wntr


def run_epanet(wn: wntr.network.WaterNetworkModel) -> wntr.sim.results.SimulationResults:
    """Run EPANET over the model's duration; its report and output files go to a scratch
    folder that is removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        return wntr.sim.EpanetSimulator(wn).run_sim(file_prefix=f"{tmp}/run")


def flows_at(results: wntr.sim.results.SimulationResults, hour: float) -> pd.Series:
    """Link flow rates (m³/s, positive from start to end node) at the report time nearest to
    ``hour`` hours into the run."""
    flow = results.link["flowrate"]
    at = flow.index.get_indexer([hour * 3600.0], method="nearest")[0]
    return flow.iloc[at]

"""Running EPANET (through wntr) on a water network model, in a scratch folder."""

from __future__ import annotations

import tempfile

import numpy as np
import pandas as pd
import wntr

from citytwin.networks.graph import Network


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


def network_from_wntr(wn: wntr.network.WaterNetworkModel) -> Network:
    """The topology of a wntr model as the network engine takes it: wntr's node and link
    names as ids, node coordinates, pipe lengths (NaN for pumps and valves)."""
    names = wn.link_name_list
    links = [wn.get_link(k) for k in names]
    return Network.from_ids(
        wn.node_name_list,
        names,
        [link.start_node_name for link in links],
        [link.end_node_name for link in links],
        node_xy=np.array([wn.get_node(n).coordinates for n in wn.node_name_list], dtype=float),
        link_length=np.array([getattr(link, "length", np.nan) for link in links], dtype=float),
    )

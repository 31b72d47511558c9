"""EPANET runs through wntr: results, and flows at the report time nearest an hour."""

from __future__ import annotations

import os

import wntr

from citytwin.hydraulics.epanet import flows_at, run_epanet
from tests.conftest import package_data


def test_run_leaves_no_files_and_flows_at_the_nearest_hour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wn = wntr.network.WaterNetworkModel(
        str(package_data("wntr", "library", "networks", "Net3.inp"))
    )
    results = run_epanet(wn)
    assert os.listdir(tmp_path) == []
    flow = results.link["flowrate"]
    step = flow.index[1] - flow.index[0]
    late = flows_at(results, (flow.index[3] + 0.4 * step) / 3600.0)
    assert late.equals(flow.iloc[3])
    assert flows_at(results, 0).equals(flow.iloc[0])

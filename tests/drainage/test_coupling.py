"""The drains and the street as one system: SWMM (pyswmm) coupled to the 2-D surface model.

The street: a 120 m × 80 m grid of 2 m cells (60 × 40), falling 1 % to the east and 2 % from
both sides to a gutter along its middle row, closed on all sides, so every drop of rain either
stays on the surface or goes down one of four 1 m × 1 m inlets (manholes J1–J4, 30 m apart on
the gutter) and through 30 m conduits at 1 % to an outfall east of the grid. Rain: 60 mm/h for
20 min on 9,600 m² = 192 m³; the run lasts 40 min.

The volume balance: rain = what is on the grid + what the sewer holds (less what it held) +
what left through the outfall + water between the two models. The coupling's own bookkeeping is
exact (to round-off); what is left over is SWMM's continuity residual, which the 1 % threshold
is for.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from citytwin.drainage.coupling import Inlet, SwmmCoupling
from citytwin.flood import Domain, Rainfall, simulate

NY, NX, DX = 40, 60, 2.0
X0, Y0 = 0.0, 80.0  # the upper-left corner; rows run south
DURATION = 2400.0
RAIN = Rainfall.uniform([0.0, 1200.0], [60.0, 0.0])
RAIN_M3 = 0.060 / 3600 * 1200 * NY * NX * DX * DX  # 192 m³


def street_inp(diameters: dict[str, float], *, end: str = "00:10:00") -> str:
    """Four manholes on the gutter (row 20), their inverts 1.3 m under the street, conduits C1–C4
    of the given diameters (m) to a free outfall east of the grid."""
    d = {"C1": 0.5, "C2": 0.5, "C3": 0.5, "C4": 0.5} | diameters
    return f"""[TITLE]
a sloping street

[OPTIONS]
FLOW_UNITS           CMS
FLOW_ROUTING         DYNWAVE
START_DATE           01/01/2024
START_TIME           00:00:00
END_DATE             01/01/2024
END_TIME             {end}
REPORT_STEP          00:05:00
ROUTING_STEP         1
VARIABLE_STEP        0.75

[JUNCTIONS]
;name  invert  maxdepth  initdepth  surdepth  aponded
J1     8.43    1.5       0          0         0
J2     8.13    1.5       0          0         0
J3     7.83    1.5       0          0         0
J4     7.53    1.5       0          0         0

[OUTFALLS]
O1     7.23    FREE      NO

[CONDUITS]
;name  from  to  length  roughness  inoffset  outoffset  initflow  maxflow
C1     J1    J2  30      0.013      0         0          0         0
C2     J2    J3  30      0.013      0         0          0         0
C3     J3    J4  30      0.013      0         0          0         0
C4     J4    O1  30      0.013      0         0          0         0

[XSECTIONS]
C1     CIRCULAR  {d["C1"]}  0  0  0  1
C2     CIRCULAR  {d["C2"]}  0  0  0  1
C3     CIRCULAR  {d["C3"]}  0  0  0  1
C4     CIRCULAR  {d["C4"]}  0  0  0  1

[COORDINATES]
J1     27      39
J2     57      39
J3     87      39
J4     117     39
O1     147     39
"""


def street() -> Domain:
    x = X0 + (np.arange(NX) + 0.5) * DX
    y = Y0 - (np.arange(NY) + 0.5) * DX
    xx, yy = np.meshgrid(x, y)
    # 1 % down to the east (level past the last inlet), 2 % cross-fall to the gutter at y = 39
    z = 10.0 - 0.01 * np.minimum(xx, 117.0) + 0.02 * np.abs(yy - 39.0)
    return Domain(z, DX, manning=0.015)


@pytest.fixture(autouse=True)
def one_thread():
    """A 2,400-cell grid: one numba thread (a thread pool's barriers cost more than the work)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def run(inp: str, **options):
    domain = street()
    with SwmmCoupling.from_coordinates(inp, domain, X0, Y0, duration=DURATION, **options) as cp:
        result = simulate(domain, DURATION, solver="inertial", rain=RAIN, exchange=cp)
    report = cp.volume_report(result.balance.volume[-1])
    return cp, result, report


def check_balance(result, report) -> None:
    rain = result.balance.rain[-1]
    assert rain == pytest.approx(RAIN_M3, rel=1e-9)
    # the surface's own books: the exchange it saw is the coupling's net
    assert result.balance.exchange[-1] == pytest.approx(report.returned - report.drained, rel=1e-9)
    assert result.balance.relative_error < 1e-9
    # the coupling loses and makes nothing: only SWMM's residual is left
    assert abs(report.total - report.sewer_error - rain) < 1e-9 * rain
    # the coupled balance closes within 1 % of the rain (SWMM's continuity residual included)
    assert abs(report.total - rain) < 0.01 * rain
    assert abs(report.continuity_error) < 1.0


def test_nodes_are_placed_on_their_cells_with_the_ground_as_rim():
    domain = street()
    with SwmmCoupling.from_coordinates(street_inp({}), domain, X0, Y0) as cp:
        cells = [(i.node, i.row, i.col) for i in cp.inlets]
        assert cells == [("J1", 20, 13), ("J2", 20, 28), ("J3", 20, 43), ("J4", 20, 58)]
        # rim = the bed of the cell (x = 27 m: 10 - 0.27), and SWMM's full depth set to match
        np.testing.assert_allclose(cp.rims, [9.73, 9.43, 9.13, 8.83], atol=1e-9)
        assert cp.inlets[0].rim == pytest.approx(9.73)
    with SwmmCoupling.from_coordinates(street_inp({}), domain, X0, Y0, rim="swmm") as cp:
        np.testing.assert_allclose(cp.rims, [9.93, 9.63, 9.33, 9.03], atol=1e-9)  # inverts + 1.5


def test_bad_placements_and_models_are_refused():
    domain = street()
    with pytest.raises(ValueError, match="not on an open cell"):
        SwmmCoupling.from_coordinates(street_inp({}), domain, X0 + 500, Y0, nodes=["J1"])
    with pytest.raises(ValueError, match="no junction or storage node"):
        SwmmCoupling.from_coordinates(street_inp({}), domain, X0 + 500, Y0)
    with pytest.raises(ValueError, match="not a junction or storage"):
        SwmmCoupling.from_coordinates(street_inp({}), domain, X0, Y0, nodes=["O1"])
    with pytest.raises(ValueError, match="not in the SWMM model"):
        SwmmCoupling(street_inp({}), domain, [Inlet("J9", 20, 13)])
    with pytest.raises(ValueError, match="outside the 40 x 60 grid"):
        SwmmCoupling(street_inp({}), domain, [Inlet("J1", 40, 13)])
    with pytest.raises(ValueError, match="whole number of seconds"):
        SwmmCoupling(street_inp({}), domain, [Inlet("J1", 20, 13)], interval=0.5)
    with pytest.raises(ValueError, match="not above its invert"):
        SwmmCoupling(street_inp({}), domain, [Inlet("J1", 20, 13, rim=8.0)])
    us = street_inp({}).replace("FLOW_UNITS           CMS", "FLOW_UNITS           CFS")
    with pytest.raises(ValueError, match="needs SI units"):
        SwmmCoupling(us, domain, [Inlet("J1", 20, 13)])
    # a model that ends before the surface run says how to fix it
    with SwmmCoupling(street_inp({}, end="00:00:30"), domain, [Inlet("J1", 20, 13)]) as cp:
        h, moved = np.zeros(domain.shape), np.zeros(domain.shape)
        with pytest.raises(ValueError, match="duration="):
            for t in range(60):
                cp.sync(float(t), h, moved)


def test_subcatchment_rain_is_kept_off_unless_asked_for():
    """Rain falls on the grid: a model's own subcatchments get none (IGNORE_RAINFALL), unless
    keep_runoff=True: then their runoff reaches the sewer as SWMM's own inflow."""
    catchment = """
[RAINGAGES]
G1     INTENSITY  1:00  1.0  TIMESERIES  storm

[SUBCATCHMENTS]
S1     G1   J1   1.0   100   100   1.0   0

[SUBAREAS]
S1     0.015  0.1  0  0  100  OUTLET

[INFILTRATION]
S1     3.0  0.5  4  7  0

[TIMESERIES]
storm  0:00  100
"""
    inp = street_inp({}) + catchment
    domain = street()
    h, moved = np.zeros(domain.shape), np.zeros(domain.shape)
    for keep, runs in ((False, False), (True, True)):
        coupling = SwmmCoupling(
            inp, domain, [Inlet("J2", 20, 28)], keep_runoff=keep, interval=4, duration=1200
        )
        with coupling as cp:
            for t in range(0, 1200, 4):
                cp.sync(float(t), h, moved)
            report = cp.volume_report(0.0)
        # 100 mm/h on 1 ha for 20 min is 333 m³ of rain; SWMM's runoff is most of it
        assert (report.swmm_inflow > 100.0) is runs
        assert report.swmm_inflow >= 0.0
        assert report.drained == 0.0 and report.returned == 0.0


def test_the_coupling_books_what_actually_moved_not_what_it_asked_for():
    """The run loop clips an exchange at what a cell holds: the sewer gets what moved."""
    domain = street()
    inlet = Inlet("J1", 20, 13, rim=9.73)  # at the bed (9.73 m), 1.3 m over the invert
    with SwmmCoupling(street_inp({}), domain, [inlet], duration=120) as cp:
        h = np.zeros(domain.shape)
        h[20, 13] = 0.05  # 5 cm over the grate: weir 0.67·4·0.05·√(2g·0.05) = 0.13 m³/s
        _, q = cp.sync(0.0, h, np.zeros(domain.shape))
        asked = -q[20, 13] * 1.0
        assert asked == pytest.approx(0.67 * 4 * 0.05 * np.sqrt(2 * 9.81 * 0.05), rel=1e-9)
        assert np.count_nonzero(q) == 1
        moved = np.zeros(domain.shape)
        moved[20, 13] = -0.4 * asked  # the cell ran dry: only 40 % went
        h[:] = 0.0
        cp.sync(1.0, h, moved)
        assert cp.volume_report().drained == pytest.approx(0.4 * asked, rel=1e-12)
        for t in range(2, 100):
            cp.sync(float(t), h, np.zeros(domain.shape))
        report = cp.volume_report(0.0)
    # SWMM holds (or let out) what it booked: the drained water less what is still pending
    # (negative: SWMM blends a step's lateral inflow with the last one's, so a pulse is booked
    # a little long; the coupling holds back that much of what drains next)
    sewer = report.sewer_storage - report.sewer_initial + report.outfall
    assert abs(report.to_sewer) < 0.6 * report.drained
    assert sewer == pytest.approx(report.drained - report.to_sewer, rel=0.05)


def test_rain_on_the_street_drains_through_the_sewer_to_the_outfall():
    cp, result, report = run(street_inp({}))
    # most of the rain went down the inlets, every inlet took some, and none came back
    assert report.drained > 0.9 * RAIN_M3
    assert np.all(cp.node_drained > 0.05 * RAIN_M3)
    assert report.returned == 0.0
    # and out through the outfall; the sewer is almost empty 20 min after the rain
    assert report.outfall > 0.9 * RAIN_M3
    assert report.sewer_storage < 0.01 * RAIN_M3
    # shallow sheet flow: the inlets keep the street from flooding (max depth < 10 cm)
    assert np.nanmax(result.max_depth) < 0.10
    check_balance(result, report)


def test_undersized_pipes_surcharge_and_water_comes_back_out_of_a_manhole():
    # an 8 cm section between J2 and J4: J1 and J2 take more than it passes, J2 (the lower of
    # the two) fills to its rim and floods onto the street, whose water then runs on to J3, J4
    cp, result, report = run(street_inp({"C2": 0.08, "C3": 0.08}))
    assert report.returned > 0.02 * RAIN_M3
    j2 = [i.node for i in cp.inlets].index("J2")
    assert cp.node_returned[j2] > 0.9 * report.returned
    assert cp.node_returned[j2] > cp.node_drained[j2]  # a net source on the street
    # the water it returned went down J3 and J4 and out
    assert report.outfall > 0.85 * RAIN_M3
    check_balance(result, report)

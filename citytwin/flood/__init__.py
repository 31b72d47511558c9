"""Rainstorm flooding: the surface model (two solvers behind one run loop), rain, losses and
boundaries, and the flood's impacts. A pure engine: arrays in, results out."""

from citytwin.flood.domain import (
    MM_PER_H,
    Boundary,
    ConstantLoss,
    Domain,
    G,
    GreenAmpt,
    Inflow,
    Rainfall,
    Series,
    State,
)
from citytwin.flood.run import MassBalance, Result, initial_state, simulate, solver_for

__all__ = [
    "MM_PER_H",
    "Boundary",
    "ConstantLoss",
    "Domain",
    "G",
    "GreenAmpt",
    "Inflow",
    "MassBalance",
    "Rainfall",
    "Result",
    "Series",
    "State",
    "initial_state",
    "simulate",
    "solver_for",
]

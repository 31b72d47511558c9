"""Utility network analyses: topology, traces, valve segments and burst isolation, clearances.

A pure engine on arrays and sparse graphs (``graph.Network``); ``citytwin.app.networks`` reads
networks from the store and composes the analyses for the CLI and the services.
"""

from citytwin.networks.graph import Network

__all__ = ["Network"]

"""EPANET INP water-supply models through wntr: into the twin and back out again.

Junctions, reservoirs and tanks become ``utility_nodes``; pipes, pumps and valves become
``utility_links`` with their vertices; everything EPANET needs that is not a feature (options,
patterns, curves, controls, sources) is kept in the document ``network/<name>``. Each element's
full wntr description rides along in ``props``, so an export rebuilds a model that solves the
same, with any edits made to the features' typed attributes and geometry applied.
"""

from __future__ import annotations

import contextlib
import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
import wntr
from pyproj import Transformer

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, parse_crs, require_file, to_twin_crs
from citytwin.model import empty_frame
from citytwin.store import Filter, Query, Store

_NODE_CLASS = {"Junction": "junction", "Reservoir": "reservoir", "Tank": "tank"}
_LINK_CLASS = {"Pipe": "pipe", "Pump": "pump", "Valve": "valve"}
_NODE_PROPS_SKIP = ("name", "coordinates")
_LINK_PROPS_SKIP = ("name", "start_node_name", "end_node_name", "vertices")


def read_epanet(
    path: str | Path,
    twin_crs: Any,
    *,
    crs: Any = None,
    id_prefix: str | None = None,
    network_name: str | None = None,
) -> ImportBundle:
    """Read an EPANET INP file. ``crs`` is the CRS of its coordinates (default: the twin's).

    Feature ids are ``id_prefix + EPANET id`` (default prefix: the file stem and a colon);
    the EPANET id stays in ``name``.
    """
    p = require_file(path)
    if crs is not None:  # a wrong CRS is reported before the file is parsed
        parse_crs(crs, source=str(p))
    return epanet_bundle(
        _load_model(p),
        twin_crs,
        source=str(p),
        crs=crs,
        id_prefix=id_prefix,
        network_name=network_name or p.stem,
    )


def epanet_bundle(
    wn: wntr.network.WaterNetworkModel,
    twin_crs: Any,
    *,
    source: str,
    network_name: str,
    crs: Any = None,
    id_prefix: str | None = None,
) -> ImportBundle:
    """An in-memory wntr model as an import bundle (what ``read_epanet`` returns for a file).

    ``source`` names where the model came from; ``crs`` is the CRS of its coordinates
    (default: the twin's); feature ids are ``id_prefix + EPANET id`` (default prefix:
    ``network_name`` and a colon).
    """
    prefix = f"{network_name}:" if id_prefix is None else id_prefix
    src_crs = parse_crs(crs, source=source) if crs is not None else parse_crs(twin_crs)
    model = wn.to_dict()

    nodes = model.pop("nodes")
    links = model.pop("links")
    coords = {}
    node_rows = []
    for n in nodes:
        if n.get("coordinates") is None:
            raise InvalidInput(
                "node has no coordinates",
                source=source,
                feature=n["name"],
                hint="add it to the [COORDINATES] section",
            )
        coords[n["name"]] = tuple(n["coordinates"])
        kind = n["node_type"]
        elevation = n.get("base_head") if kind == "Reservoir" else n.get("elevation")
        node_rows.append(
            {
                "id": prefix + n["name"],
                "class": _NODE_CLASS[kind],
                "network": "water_supply",
                "name": n["name"],
                "elevation": elevation,
                "base_demand": n.get("base_demand") if kind == "Junction" else None,
                "props": {k: v for k, v in n.items() if k not in _NODE_PROPS_SKIP},
            }
        )
    link_rows, link_geoms = [], []
    for link in links:
        a, b = link["start_node_name"], link["end_node_name"]
        points = [coords[a], *map(tuple, link.get("vertices") or []), coords[b]]
        if len(set(points)) < 2:  # a pump or valve drawn with both ends on one spot
            x, y = points[0]
            points = [(x, y), (x + 1e-3, y)]
        link_geoms.append(shapely.LineString(points))
        kind = link["link_type"]
        link_rows.append(
            {
                "id": prefix + link["name"],
                "class": _LINK_CLASS[kind],
                "network": "water_supply",
                "name": link["name"],
                "from_node": prefix + a,
                "to_node": prefix + b,
                "diameter": link.get("diameter"),
                "length": link.get("length"),
                "roughness": link.get("roughness"),
                "valve_type": link.get("valve_type"),
                "initial_status": _status_text(link.get("initial_status")),
                "props": {k: v for k, v in link.items() if k not in _LINK_PROPS_SKIP},
            }
        )

    bundle = ImportBundle(source)
    node_geoms = shapely.points(
        np.array([coords[n["name"]] for n in nodes], dtype=float).reshape(-1, 2)
    )
    for layer_name, rows, geoms in (
        ("utility_nodes", node_rows, node_geoms),
        ("utility_links", link_rows, link_geoms),
    ):
        frame = (
            gpd.GeoDataFrame(rows, geometry=list(geoms), crs=src_crs)
            if rows
            else empty_frame(layer_name, src_crs)
        )
        bundle.add(layer_name, to_twin_crs(frame, twin_crs, source=source))
    bundle.documents[f"network/{network_name}"] = {
        "format": "epanet",
        "network": "water_supply",
        "id_prefix": prefix,
        "crs": src_crs.to_string() if crs is not None else None,
        "model": model,
        # EPANET's answer can hinge on element order (controls switching at the same step)
        "order": {"nodes": [n["name"] for n in nodes], "links": [lk["name"] for lk in links]},
    }
    return bundle


def _status_text(status: Any) -> str | None:
    return None if status is None else str(status).split(".")[-1].lower()


def _load_model(p: Path) -> wntr.network.WaterNetworkModel:
    try:
        return wntr.network.WaterNetworkModel(str(p))
    except Exception as exc:  # wntr raises many kinds: ENSyntaxError, KeyError, ValueError ...
        message, line = _epanet_diagnosis(p)
        raise InvalidInput(
            f"not a valid EPANET model: {message or f'{type(exc).__name__}: {exc}'}",
            source=str(p),
            line=line,
            hint="fix that line (a file cut short shows as undefined patterns, curves or nodes)",
        ) from None


def _epanet_diagnosis(p: Path) -> tuple[str | None, int | None]:
    """EPANET's own first complaint about an input file, and the line it is about."""
    from wntr.epanet.toolkit import ENepanet

    with tempfile.TemporaryDirectory() as tmp:
        en = ENepanet()
        with contextlib.suppress(Exception):  # the report below says what was wrong
            en.ENopen(str(p), f"{tmp}/check.rpt", f"{tmp}/check.bin")
        with contextlib.suppress(Exception):
            en.ENclose()
        report = Path(f"{tmp}/check.rpt").read_text(errors="replace").splitlines()
    for i, text in enumerate(report):
        if re.match(r"\s*Error \d+:", text):
            message = text.strip()
            offending = report[i + 1].strip() if i + 1 < len(report) else ""
            if offending:
                for n, source_line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if source_line.strip() == offending:
                        return message, n
            return message, None
    return None, None


def epanet_model_dict(store: Store, network_key: str) -> dict[str, Any]:
    """The wntr model dictionary of a stored network, rebuilt from its current features."""
    doc = store.get_document(network_key)
    if doc is None or doc.get("format") != "epanet":
        raise InvalidInput(
            f"no EPANET network {network_key!r} in this twin",
            hint=f"networks: {', '.join(store.documents('network/')) or 'none'}",
        )
    prefix = doc["id_prefix"]
    where = [Filter("id", "startswith", prefix), Filter("network", "=", "water_supply")]
    # only what EPANET models: GIS-only features that share the prefix (isolation valves,
    # hydrants, meters, service connections and pipes) stay out of the hydraulic model
    nodes = store.query(
        Query("utility_nodes", classes=list(_NODE_CLASS.values()), where=where, order_by="id")
    )
    links = store.query(
        Query("utility_links", classes=list(_LINK_CLASS.values()), where=where, order_by="id")
    )
    to_source = None
    if doc.get("crs"):
        to_source = Transformer.from_crs(store.meta.crs, doc["crs"], always_xy=True)

    def xy(points: np.ndarray) -> list[list[float]]:
        if to_source is not None:
            xs, ys = to_source.transform(points[:, 0], points[:, 1])
            points = np.column_stack([xs, ys])
        return points.tolist()

    model = copy.deepcopy(doc["model"])
    nodes = _in_source_order(nodes, doc["order"]["nodes"])
    links = _in_source_order(links, doc["order"]["links"])
    model["nodes"] = []
    node_xy = xy(shapely.get_coordinates(nodes.geometry.to_numpy())) if len(nodes) else []
    for row, (x, y) in zip(nodes.itertuples(index=False), node_xy, strict=True):
        element = dict(row.props or {})
        element["name"] = row.name
        element["coordinates"] = [x, y]
        if element.get("node_type") == "Reservoir":
            element["base_head"] = row.elevation
        else:
            element["elevation"] = row.elevation
        if element.get("node_type") == "Junction" and element.get("demand_timeseries_list"):
            first = element["demand_timeseries_list"][0]
            if row.base_demand is not None and not np.isnan(row.base_demand):
                first["base_val"] = row.base_demand
        model["nodes"].append(element)
    model["links"] = []
    for row in links.itertuples(index=False):
        element = dict(row.props or {})
        element["name"] = row.name
        element["start_node_name"] = row.from_node[len(prefix) :]
        element["end_node_name"] = row.to_node[len(prefix) :]
        vertices = shapely.get_coordinates(row.geometry)[1:-1]
        element["vertices"] = xy(vertices) if len(vertices) else []
        for attr in ("diameter", "length", "roughness"):
            value = getattr(row, attr)
            if attr in element and value is not None and not np.isnan(value):
                element[attr] = value
        model["links"].append(element)
    return model


def _in_source_order(frame: gpd.GeoDataFrame, order: list[str]) -> gpd.GeoDataFrame:
    """Rows in the order of the source file; features added since come after, by name."""
    rank = {name: i for i, name in enumerate(order)}
    key = [(rank.get(name, len(rank)), name) for name in frame["name"]]
    return frame.iloc[sorted(range(len(frame)), key=key.__getitem__)]


def write_epanet(store: Store, path: str | Path, *, network_key: str) -> int:
    """Export a stored water network to an EPANET INP file (SI units, as wntr writes)."""
    model = epanet_model_dict(store, network_key)
    wn = wntr.network.from_dict(model)
    wntr.network.write_inpfile(wn, str(path), units="LPS")
    return len(model["nodes"]) + len(model["links"])

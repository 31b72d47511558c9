"""SWMM 5 input files (INP): storm, sewer and combined drainage networks into the twin and back.

Junctions, outfalls, storage units and flow dividers become ``utility_nodes``; conduits, pumps,
orifices, weirs and outlets ``utility_links``; subcatchments ``zones``. Typed attributes are in
metres and m² whatever the file's units; every field of an object's row is kept, as written, in
the feature's ``props``, and every other section (options, rain gauges, time series, curves,
controls, inflows ...) verbatim in the document ``network/<name>``. ``write_swmm`` rebuilds the
file from that document and the current features: unedited values are written back exactly as
read, edited typed attributes and geometry replace them.

The parser is our own (a few lines: ``[SECTION]`` headers, ``;`` comments, quoted tokens), so
that errors name the line. SWMM names are case-insensitive, as in SWMM itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from citytwin.errors import InvalidInput
from citytwin.formats.base import ImportBundle, parse_crs, require_file, to_twin_crs
from citytwin.store import Filter, Query, Store

FT = 0.3048
"""Metres per foot."""
ACRE = 4046.8564224
HECTARE = 10_000.0
US_FLOW_UNITS = ("CFS", "GPM", "MGD")
"""Flow units that make a SWMM file use US units: feet, acres."""
DRAINAGE_NETWORKS = ("storm", "sewer", "combined")

NODE_SECTIONS = {
    "JUNCTIONS": "manhole",
    "OUTFALLS": "outfall",
    "STORAGE": "storage",
    "DIVIDERS": "divider",
}
LINK_SECTIONS = {
    "CONDUITS": "conduit",
    "PUMPS": "pump",
    "ORIFICES": "orifice",
    "WEIRS": "weir",
    "OUTLETS": "outlet",
}
_NODE_SECTION_OF = {v: k for k, v in NODE_SECTIONS.items()}
_LINK_SECTION_OF = {v: k for k, v in LINK_SECTIONS.items()}
_GEOMETRY_SECTIONS = ("COORDINATES", "VERTICES", "POLYGONS")
_LINK_EXTRA_SECTIONS = {"XSECTIONS": "xsection", "LOSSES": "losses"}
_LAYER_OF = {
    **dict.fromkeys((*NODE_SECTIONS, "COORDINATES"), "utility_nodes"),
    **dict.fromkeys((*LINK_SECTIONS, *_LINK_EXTRA_SECTIONS, "VERTICES"), "utility_links"),
    "SUBCATCHMENTS": "zones",
    "POLYGONS": "zones",
}
_FEATURE_SECTIONS = tuple(_LAYER_OF)

# Fields of an object's row after its name. "@x": a typed reference written from the feature
# (from/to node, outlet); "*x": a group of tokens whose length depends on the row; every row
# may end with "extra" tokens, kept as they are.
_LAYOUT: dict[str, tuple[str, ...]] = {
    "JUNCTIONS": ("elevation", "max_depth", "init_depth", "surcharge_depth", "ponded_area"),
    "OUTFALLS": ("elevation", "outfall_type", "*params"),
    "STORAGE": ("elevation", "max_depth", "init_depth", "shape", "*params"),
    "DIVIDERS": (
        "elevation",
        "diverted_link",
        "divider_type",
        "*divider_params",
        "max_depth",
        "init_depth",
        "surcharge_depth",
        "ponded_area",
    ),
    "CONDUITS": (
        "@from",
        "@to",
        "length",
        "roughness",
        "in_offset",
        "out_offset",
        "init_flow",
        "max_flow",
    ),
    "PUMPS": ("@from", "@to", "pump_curve", "pump_status", "startup_depth", "shutoff_depth"),
    "ORIFICES": (
        "@from",
        "@to",
        "orifice_type",
        "offset",
        "discharge_coeff",
        "gated",
        "close_time",
    ),
    "WEIRS": (
        "@from",
        "@to",
        "weir_type",
        "crest_height",
        "discharge_coeff",
        "gated",
        "end_contractions",
        "end_coeff",
        "surcharge",
        "road_width",
        "road_surface",
        "coeff_curve",
    ),
    "OUTLETS": ("@from", "@to", "offset", "outlet_type", "*params"),
    "SUBCATCHMENTS": (
        "rain_gage",
        "@outlet",
        "area",
        "imperviousness",
        "width",
        "slope",
        "curb_length",
        "snow_pack",
    ),
}
_REQUIRED = {  # fields SWMM needs in a row, after the name
    "JUNCTIONS": 1,
    "OUTFALLS": 2,
    "STORAGE": 5,
    "DIVIDERS": 3,
    "CONDUITS": 6,
    "PUMPS": 3,
    "ORIFICES": 5,
    "WEIRS": 5,
    "OUTLETS": 5,
    "SUBCATCHMENTS": 7,
    "XSECTIONS": 2,
    "LOSSES": 3,
    "COORDINATES": 2,
    "VERTICES": 2,
    "POLYGONS": 2,
}
_NUMERIC = {
    "x",
    "y",
    "geom1",
    "elevation",
    "max_depth",
    "init_depth",
    "surcharge_depth",
    "ponded_area",
    "length",
    "roughness",
    "init_flow",
    "max_flow",
    "startup_depth",
    "shutoff_depth",
    "discharge_coeff",
    "close_time",
    "crest_height",
    "area",
    "imperviousness",
    "width",
    "slope",
    "curb_length",
}
_OFFSETS = {"in_offset", "out_offset", "offset"}  # numbers, or "*" (at the node's invert)
_DIVIDER_PARAMS = {"OVERFLOW": 0, "CUTOFF": 1, "TABULAR": 1, "WEIR": 3}
_NO_GEOM1 = {"IRREGULAR", "STREET"}  # cross-sections whose Geom1 is not a size

_TOKEN = re.compile(r'"[^"]*"|[^\s"]+')


@dataclass
class _Row:
    line: int
    tokens: list[str]
    fields: dict[str, Any] = field(default_factory=dict)  # by the section's layout

    @property
    def name(self) -> str:
        return _unquote(self.tokens[0])


@dataclass
class _Section:
    key: str  # unique: the upper-case section name, "#2" ... for a repeated one
    name: str  # upper-case section name
    lines: list[str] = field(default_factory=list)  # raw lines before the first data row
    rows: list[_Row] = field(default_factory=list)  # data rows (feature sections only)
    tail: list[str] = field(default_factory=list)  # raw non-row lines after the first row


@dataclass
class _Units:
    length: float  # metres per file length unit
    area: float  # m² per file area unit
    offsets: str  # DEPTH or ELEVATION


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == tok[-1] == '"' else tok


def _quote(name: str) -> str:
    return f'"{name}"' if not name or re.search(r"\s", name) else name


def _data_part(line: str) -> tuple[str, bool]:
    """The text before a ``;`` comment (outside quotes), and whether a quote is left open."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return line[:i], False
    return line, quoted


# -- reading ------------------------------------------------------------------------------------


def read_swmm(
    path: str | Path,
    twin_crs: Any,
    *,
    crs: Any = None,
    network: str = "storm",
    id_prefix: str | None = None,
) -> ImportBundle:
    """Read a SWMM 5 INP file into nodes, links and subcatchments plus a network document.

    ``crs`` is the CRS of the file's coordinates (SWMM files carry none; default: the twin's).
    ``network`` (storm, sewer or combined) goes on every feature. Feature ids are
    ``id_prefix + SWMM name`` (default prefix: the file stem and a colon); ``name`` keeps the
    SWMM name. The document goes under ``network/<prefix without the colon>``.
    """
    p = require_file(path)
    text, encoding = _read_text(p)
    return swmm_bundle(
        text,
        twin_crs,
        source=str(p),
        id_prefix=f"{p.stem}:" if id_prefix is None else id_prefix,
        crs=crs,
        network=network,
        encoding=encoding,
    )


def swmm_bundle(
    text: str,
    twin_crs: Any,
    *,
    source: str,
    id_prefix: str,
    crs: Any = None,
    network: str = "storm",
    encoding: str = "utf-8",
) -> ImportBundle:
    """The import bundle of SWMM 5 INP ``text`` (what ``read_swmm`` reads from a file).

    ``source`` names the text in provenance and errors; ``encoding`` is the one to write it
    back in. Everything else as in ``read_swmm``.
    """
    if network not in DRAINAGE_NETWORKS:
        raise InvalidInput(
            f"unknown drainage network type {network!r}",
            source=source,
            hint="use storm, sewer or combined",
        )
    prefix = id_prefix
    src_crs = parse_crs(crs, source=source) if crs is not None else parse_crs(twin_crs)
    preamble, sections = _parse(text, source)
    by_name = {s.key: s for s in sections}
    units = _units(by_name.get("OPTIONS"), source)
    reader = _Reader(source, prefix, network, units, by_name)
    reader.check(sections)

    nodes = reader.nodes()
    links = reader.links()
    zones = reader.subcatchments()
    bundle = ImportBundle(source=source)
    for layer_name, rows, geoms in (("utility_nodes", *nodes), ("utility_links", *links)):
        frame = gpd.GeoDataFrame(rows, geometry=geoms, crs=src_crs) if rows else None
        if frame is not None:
            bundle.add(layer_name, to_twin_crs(frame, twin_crs, source=source))
    if zones[0]:
        bundle.add(
            "zones",
            reader.zone_frame(*zones, src_crs, twin_crs, bundle.layers.get("utility_nodes")),
        )

    for layer_name, where in reader.lines.items():  # schema errors name the feature's row
        bundle.locators[layer_name] = lambda exc, where=where: _at_row(exc, where)
    bundle.documents[f"network/{prefix.rstrip(':')}"] = {
        "format": "swmm",
        "network": network,
        "crs": src_crs.to_string() if crs is not None else None,
        "id_prefix": prefix,
        "encoding": encoding,
        "flow_units": "US" if units.length == FT else "SI",
        "link_offsets": units.offsets,
        "preamble": preamble,
        "section_order": [s.key for s in sections],
        "sections": {s.key: s.lines for s in sections},
        "tails": {s.key: s.tail for s in sections if s.tail},
        "order": {s.key: list(dict.fromkeys(r.name for r in s.rows)) for s in sections if s.rows},
    }
    return bundle


def _at_row(exc: InvalidInput, where: dict[str, int]) -> InvalidInput:
    line = where.get(exc.feature or "")
    return InvalidInput(
        exc.message,
        source=exc.source,
        layer=exc.layer,
        feature=exc.feature,
        line=exc.line if line is None else line,
        hint=exc.hint or "correct the value in this row of the SWMM file",
    )


def _read_text(p: Path) -> tuple[str, str]:
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def _parse(text: str, source: str) -> tuple[list[str], list[_Section]]:
    """Lines before the first section, and the sections with their raw lines and data rows."""
    preamble: list[str] = []
    sections: list[_Section] = []
    first: dict[str, _Section] = {}
    current: _Section | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            if "]" not in stripped:
                raise InvalidInput(
                    f"unclosed section header {stripped!r}",
                    source=source,
                    line=number,
                    hint="write section headers as [NAME]",
                )
            name = stripped[1 : stripped.index("]")].strip().upper()
            if name in first and name in _FEATURE_SECTIONS:
                current = first[name]  # a repeated feature section continues the first one
                current.tail.append(line)
                continue
            repeats = sum(s.name == name for s in sections)
            key = f"{name}#{repeats + 1}" if repeats else name
            current = _Section(key, name, [line])
            first.setdefault(name, current)
            sections.append(current)
            continue
        if current is None:
            if stripped and not stripped.startswith(";"):
                raise InvalidInput(
                    "data before the first [SECTION] header",
                    source=source,
                    line=number,
                    hint="is this a SWMM 5 input file?",
                )
            preamble.append(line)
            continue
        if current.name not in _FEATURE_SECTIONS:
            current.lines.append(line)
            continue
        data, open_quote = _data_part(line)
        if open_quote:
            raise InvalidInput(
                "unbalanced double quote",
                source=source,
                line=number,
                hint="the file may be truncated or garbled",
            )
        tokens = _TOKEN.findall(data)
        if not tokens:
            (current.lines if not current.rows else current.tail).append(line)
            continue
        current.rows.append(_Row(number, tokens))
    if not any(s.name in NODE_SECTIONS for s in sections):
        raise InvalidInput(
            "no [JUNCTIONS], [OUTFALLS], [STORAGE] or [DIVIDERS] section",
            source=source,
            hint="is this a SWMM 5 input file?",
        )
    return preamble, sections


def _units(options: _Section | None, source: str) -> _Units:
    values: dict[str, str] = {}
    for line in options.lines[1:] if options else []:
        tokens = _data_part(line)[0].split()
        if len(tokens) >= 2:
            values[tokens[0].upper()] = tokens[1].upper()
    us = values.get("FLOW_UNITS", "CFS") in US_FLOW_UNITS
    offsets = values.get("LINK_OFFSETS", "DEPTH")
    if offsets not in ("DEPTH", "ELEVATION"):
        raise InvalidInput(
            f"unknown LINK_OFFSETS {offsets!r}", source=source, hint="use DEPTH or ELEVATION"
        )
    return _Units(FT if us else 1.0, ACRE if us else HECTARE, offsets)


def _split(section: str, tokens: list[str]) -> dict[str, Any]:
    """The fields of a row (tokens after the name) by the section's layout."""
    out: dict[str, Any] = {}
    rest = list(tokens)
    for name in _LAYOUT[section]:
        if name.startswith("*"):
            if name == "*params":
                count = len(rest)
            else:
                count = _DIVIDER_PARAMS.get(str(out.get("divider_type", "")).upper(), 0)
            out[name[1:]] = rest[:count]
            rest = rest[count:]
        elif not rest:
            break
        elif name.startswith("@"):  # a reference: kept in a typed attribute
            rest.pop(0)
        else:
            out[name] = rest.pop(0)
    if rest:
        out["extra"] = rest
    return out


def _join(section: str, fields: dict[str, Any], refs: dict[str, str]) -> list[str]:
    """Tokens of a row (after the name) from its fields and typed references."""
    out: list[str] = []
    for name in _LAYOUT[section]:
        if name.startswith("@"):
            out.append(_quote(refs[name[1:]]))
        elif name.startswith("*"):
            out.extend(fields.get(name[1:]) or [])
        elif fields.get(name) is not None:
            out.append(str(fields[name]))
        else:
            return out
    return out + list(fields.get("extra") or [])


def _number(tok: str | None) -> float | None:
    if tok is None:
        return None
    try:
        value = float(tok)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class _Reader:
    """Turns the parsed sections into feature rows, checking references as it goes."""

    def __init__(
        self, source: str, prefix: str, network: str, units: _Units, sections: dict[str, _Section]
    ) -> None:
        self.source, self.prefix, self.network, self.units = source, prefix, network, units
        self.sections = sections
        self.node_names: dict[str, str] = {}  # casefolded SWMM name -> name
        self.node_invert: dict[str, float] = {}  # name -> invert in file units
        self.node_xy: dict[str, tuple[float, float]] = {}
        self.sub_names: dict[str, str] = {}
        self.lines: dict[str, dict[str, int]] = {}  # layer -> feature id -> line of its row

    def fail(
        self,
        message: str,
        row: _Row | None,
        layer: str | None = None,
        name: str | None = None,
        hint: str | None = None,
    ) -> InvalidInput:
        return InvalidInput(
            message,
            source=self.source,
            layer=layer,
            feature=self.prefix + name if name is not None else None,
            line=row.line if row else None,
            hint=hint,
        )

    def rows(self, section: str) -> list[_Row]:
        s = self.sections.get(section)
        return s.rows if s else []

    def check(self, sections: list[_Section]) -> None:
        """Every data row complete, and a number wherever one must be; in file order."""
        for s in sections:
            for row in s.rows:
                row.fields = self.fields(s.name, row, _LAYER_OF[s.name])

    def fields(self, section: str, row: _Row, layer: str) -> dict[str, Any]:
        need = _REQUIRED[section]
        if len(row.tokens) - 1 < need:
            raise self.fail(
                f"[{section}] row has {len(row.tokens)} field(s), needs at least {need + 1}",
                row,
                layer,
                row.name,
                "the file may be truncated or garbled; complete the row",
            )
        if section in _GEOMETRY_SECTIONS:
            out = {"x": row.tokens[1], "y": row.tokens[2]}
        elif section == "XSECTIONS" and row.tokens[1].upper() not in _NO_GEOM1:
            out = {"geom1": row.tokens[2]}
        else:
            out = _split(section, row.tokens[1:]) if section in _LAYOUT else {}
        for key, tok in out.items():
            needs_number = key in _NUMERIC or (key in _OFFSETS and tok != "*")
            if needs_number and _number(tok) is None:
                raise self.fail(
                    f"[{section}] {key} {tok!r} is not a number",
                    row,
                    layer,
                    row.name,
                    "write a number there",
                )
        return out

    def points(
        self, section: str, layer: str, known: dict[str, str]
    ) -> dict[str, list[tuple[float, float]]]:
        """Coordinates by object name from a geometry section (rows of unknown objects kept)."""
        out: dict[str, list[tuple[float, float]]] = {}
        s = self.sections.get(section)
        if s is None:
            return out
        for row in s.rows:
            name = known.get(row.name.casefold())
            if name is None:  # e.g. a node SWMM never reads; kept as it is
                s.tail.append(_text_row(row.tokens))
                continue
            out.setdefault(name, []).append((float(row.fields["x"]), float(row.fields["y"])))
        s.rows = [r for r in s.rows if r.name.casefold() in known]
        return out

    def nodes(self) -> tuple[list[dict[str, Any]], list[shapely.Point]]:
        layer, ft = "utility_nodes", self.units.length
        defined: list[tuple[str, _Row, dict[str, Any]]] = []
        for section in NODE_SECTIONS:
            for row in self.rows(section):
                fields = row.fields
                key = row.name.casefold()
                if key in self.node_names:
                    raise self.fail(
                        "duplicate node name",
                        row,
                        layer,
                        row.name,
                        "node names must be unique across all node sections",
                    )
                self.node_names[key] = row.name
                self.lines.setdefault(layer, {})[self.prefix + row.name] = row.line
                self.node_invert[row.name] = float(fields["elevation"])
                defined.append((section, row, fields))
        coords = self.points("COORDINATES", layer, self.node_names)
        records, geoms = [], []
        for section, row, fields in defined:
            if row.name not in coords:
                hint = "add a row for it to [COORDINATES]: name X Y"
                if "COORDINATES" not in self.sections:
                    hint = "the file has no [COORDINATES] section (is it cut short?); " + hint
                raise self.fail("node has no coordinates", row, layer, row.name, hint)
            self.node_xy[row.name] = coords[row.name][-1]
            invert = float(fields["elevation"]) * ft
            max_depth = _number(fields.get("max_depth"))
            depth = max_depth * ft if max_depth and max_depth > 0 else None
            records.append(
                {
                    "id": self.prefix + row.name,
                    "class": NODE_SECTIONS[section],
                    "network": self.network,
                    "name": row.name,
                    "invert_level": invert,
                    "depth": depth,
                    "cover_level": invert + depth if depth else None,
                    "props": {"swmm_section": section, **fields},
                }
            )
            geoms.append(shapely.Point(self.node_xy[row.name]))
        return records, geoms

    def node(self, section: str, row: _Row, tok: str) -> str:
        name = self.node_names.get(_unquote(tok).casefold())
        if name is None:
            raise self.fail(
                f"[{section}] link refers to unknown node {_unquote(tok)!r}",
                row,
                "utility_links",
                row.name,
                "define the node in [JUNCTIONS], [OUTFALLS], [STORAGE] or [DIVIDERS]",
            )
        return name

    def links(self) -> tuple[list[dict[str, Any]], list[shapely.LineString]]:
        layer, ft = "utility_links", self.units.length
        defined: list[tuple[str, _Row, dict[str, Any], str, str]] = []
        link_names: dict[str, str] = {}
        for section in LINK_SECTIONS:
            for row in self.rows(section):
                fields = row.fields
                key = row.name.casefold()
                if key in link_names:
                    raise self.fail(
                        "duplicate link name",
                        row,
                        layer,
                        row.name,
                        "link names must be unique across all link sections",
                    )
                link_names[key] = row.name
                self.lines.setdefault(layer, {})[self.prefix + row.name] = row.line
                a, b = (self.node(section, row, t) for t in row.tokens[1:3])
                defined.append((section, row, fields, a, b))
        extras: dict[str, dict[str, list[str]]] = {}
        for section, prop in _LINK_EXTRA_SECTIONS.items():
            for row in self.rows(section):
                name = link_names.get(row.name.casefold())
                if name is None:
                    raise self.fail(
                        f"[{section}] row for unknown link",
                        row,
                        layer,
                        row.name,
                        "define the link, or delete the row",
                    )
                extras.setdefault(name, {})[prop] = row.tokens[1:]
        vertices = self.points("VERTICES", layer, link_names)
        records, geoms = [], []
        for section, row, fields, a, b in defined:
            extra = extras.get(row.name, {})
            xsection = extra.get("xsection")
            geom1 = None
            if xsection and xsection[0].upper() not in _NO_GEOM1:
                geom1 = float(xsection[1])
            record = {
                "id": self.prefix + row.name,
                "class": LINK_SECTIONS[section],
                "network": self.network,
                "name": row.name,
                "from_node": self.prefix + a,
                "to_node": self.prefix + b,
                "diameter": geom1 * ft if geom1 is not None else None,
                "props": {"swmm_section": section, **fields, **extra},
            }
            if section == "CONDUITS":
                record["length"] = float(fields["length"]) * ft
                record["roughness"] = float(fields["roughness"])
                record["invert_from"] = self.invert(fields["in_offset"], self.node_invert[a]) * ft
                record["invert_to"] = self.invert(fields["out_offset"], self.node_invert[b]) * ft
            records.append(record)
            geoms.append(_line([self.node_xy[a], *vertices.get(row.name, []), self.node_xy[b]]))
        return records, geoms

    def invert(self, offset: str, node_invert: float) -> float:
        """The invert (file units) of a link end with this offset at a node with this invert."""
        return _link_invert(offset, node_invert, self.units.offsets)

    def subcatchments(self) -> tuple[list[dict[str, Any]], dict[str, list[tuple[float, float]]]]:
        layer = "zones"
        defined: list[tuple[_Row, dict[str, Any]]] = []
        for row in self.rows("SUBCATCHMENTS"):
            fields = row.fields
            if row.name.casefold() in self.sub_names:
                raise self.fail(
                    "duplicate subcatchment name",
                    row,
                    layer,
                    row.name,
                    "subcatchment names must be unique",
                )
            self.sub_names[row.name.casefold()] = row.name
            self.lines.setdefault(layer, {})[self.prefix + row.name] = row.line
            defined.append((row, fields))
        records = []
        for row, fields in defined:
            key = _unquote(row.tokens[2]).casefold()
            if key in self.node_names:
                outlet = ("node", self.node_names[key])
            elif key in self.sub_names:
                outlet = ("sub", self.sub_names[key])
            else:
                raise self.fail(
                    f"subcatchment drains to unknown outlet {row.tokens[2]!r}",
                    row,
                    layer,
                    row.name,
                    "name a node or another subcatchment",
                )
            records.append(
                {
                    "id": self.prefix + row.name,
                    "class": "subcatchment",
                    "name": row.name,
                    "network": self.network,
                    "outlet": self.prefix + outlet[1],
                    "area": float(fields["area"]) * self.units.area,
                    "imperviousness": float(fields["imperviousness"]),
                    "props": {"swmm_section": "SUBCATCHMENTS", **fields},
                    "_outlet": outlet,
                    "_line": row.line,
                }
            )
        return records, self.points("POLYGONS", layer, self.sub_names)

    def zone_frame(
        self,
        records: list[dict[str, Any]],
        polygons: dict[str, list[tuple[float, float]]],
        src_crs: CRS,
        twin_crs: Any,
        nodes: gpd.GeoDataFrame | None,
    ) -> gpd.GeoDataFrame:
        """Subcatchments in the twin's CRS; one without a polygon gets a square of its area."""
        drawn, shapes = [], []
        for r in records:
            outline = polygons.get(r["name"], [])
            shape = _outline_polygon(outline)
            if outline:
                r["props"]["outline"] = [list(xy) for xy in outline]
            if shape is None:
                continue
            if shapely.Polygon(outline).is_valid:
                del r["props"]["outline"]
            else:  # a self-intersecting outline, made valid; the outline is kept for export
                r["props"]["geometry_repaired"] = True
            drawn.append(r)
            shapes.append(shape)
        frame = gpd.GeoDataFrame(drawn, geometry=shapes, crs=src_crs)
        frame = to_twin_crs(frame, twin_crs, source=self.source)
        centres: dict[tuple[str, str], shapely.Point] = {
            ("sub", r["name"]): g.centroid for r, g in zip(drawn, frame.geometry, strict=True)
        }
        if nodes is not None:
            centres.update(
                {("node", n): g for n, g in zip(nodes["name"], nodes.geometry, strict=True)}
            )
        by_name = {r["name"]: r for r in records}
        estimated, squares = [], []
        for r in records:
            if ("sub", r["name"]) in centres:
                continue
            seen, outlet = {r["name"]}, r["_outlet"]
            while outlet not in centres:  # drains to another subcatchment without a polygon
                if outlet[1] in seen:
                    raise InvalidInput(
                        "subcatchment has no polygon and no outlet with a location",
                        source=self.source,
                        layer="zones",
                        feature=r["id"],
                        line=r["_line"],
                        hint="add its outline to [Polygons]",
                    )
                seen.add(outlet[1])
                outlet = by_name[outlet[1]]["_outlet"]
            half = max(math.sqrt(r["area"]), 1.0) / 2
            c = centres[outlet]
            squares.append(shapely.box(c.x - half, c.y - half, c.x + half, c.y + half))
            estimated.append({**r, "props": {**r["props"], "geometry_estimated": True}})
        if estimated:
            frame = gpd.GeoDataFrame(
                pd.concat(
                    [frame, gpd.GeoDataFrame(estimated, geometry=squares, crs=frame.crs)],
                    ignore_index=True,
                ),
                crs=frame.crs,
            )
        order = {r["name"]: i for i, r in enumerate(records)}
        frame = frame.iloc[np.argsort([order[n] for n in frame["name"]], kind="stable")]
        return frame.drop(columns=["_outlet", "_line"]).reset_index(drop=True)


def _outline_polygon(points: list[tuple[float, float]]) -> shapely.Geometry | None:
    """The polygon a [Polygons] outline draws, made valid; None if it encloses no area."""
    if len(set(points)) < 3:
        return None
    polygon = shapely.Polygon(points)
    if polygon.is_valid:
        return polygon
    fixed = shapely.make_valid(polygon)
    parts = [g for g in shapely.get_parts(fixed) if g.geom_type in ("Polygon", "MultiPolygon")]
    union = shapely.union_all(parts) if parts else None
    return union if union is not None and not union.is_empty else None


def _link_invert(offset: str, node_invert: float, mode: str) -> float:
    if offset == "*":
        return node_invert
    value = float(offset)
    return max(value, node_invert) if mode == "ELEVATION" else node_invert + value


def _line(points: list[tuple[float, float]]) -> shapely.LineString:
    if len(set(points)) < 2:  # both ends on one spot (a pump or orifice drawn as a dot)
        x, y = points[0]
        points = [(x, y), (x + 1e-3, y)]
    return shapely.LineString(points)


def _text_row(tokens: list[str]) -> str:
    return " ".join(f"{t:<16}" for t in tokens).rstrip()


# -- writing ------------------------------------------------------------------------------------


_HEADERS = {"POLYGONS": "Polygons"}  # how SWMM itself writes this section's header


def write_swmm(store: Store, path: str | Path, *, network_key: str) -> int:
    """Write the SWMM network ``network_key`` (e.g. ``network/alpha``) as an INP file.

    The file is rebuilt from the stored sections and the current nodes, links and
    subcatchments whose ids carry the network's prefix, in the original section order; edits
    to typed attributes and geometry show up, unedited values are written as they were read.
    Returns the number of features written.
    """
    target = str(path)
    doc = store.get_document(network_key)
    if doc is None or doc.get("format") != "swmm":
        known = [
            k
            for k in store.documents("network/")
            if (store.get_document(k) or {}).get("format") == "swmm"
        ]
        raise InvalidInput(
            f"no SWMM network {network_key!r} in the twin",
            source=target,
            hint=f"SWMM networks: {', '.join(known) or 'none'}",
        )
    writer = _Writer(store, doc, target)
    sections = writer.sections()
    lines = list(doc.get("preamble", []))
    order = list(doc["section_order"])
    order += [s for s in sections if s not in order]
    for key in order:
        if key in sections:
            lines += doc["sections"].get(key) or [f"[{_HEADERS.get(key, key)}]"]
            lines += [_text_row(tokens) for tokens in sections[key]]
            lines += doc.get("tails", {}).get(key, [])
            if key not in doc["section_order"]:
                lines.append("")
        elif key not in _FEATURE_SECTIONS:
            lines += doc["sections"][key]
        else:  # a feature section with nothing left in it
            lines += doc["sections"][key] + doc.get("tails", {}).get(key, [])
    Path(path).write_text("\n".join(lines) + "\n", encoding=doc.get("encoding", "utf-8"))
    return writer.count


class _Writer:
    """Rows of the feature sections from the current features of one SWMM network."""

    def __init__(self, store: Store, doc: dict[str, Any], target: str) -> None:
        self.doc, self.target = doc, target
        self.prefix: str = doc["id_prefix"]
        us = doc.get("flow_units") == "US"
        self.length = FT if us else 1.0
        self.area = ACRE if us else HECTARE
        self.offsets = doc.get("link_offsets", "DEPTH")
        crs = doc.get("crs")
        self.decimals = None if not crs else 9 if CRS.from_user_input(crs).is_geographic else 6
        self.rows: dict[str, list[tuple[str, list[str]]]] = {}
        frames = {
            name: self.current(store, name) for name in ("utility_nodes", "utility_links", "zones")
        }
        self.count = sum(len(f) for f in frames.values())
        self.node_invert: dict[str, float] = {}  # written invert, file units
        self.node_original: dict[str, float | None] = {}  # invert as read, file units
        self.write_nodes(frames["utility_nodes"])
        self.write_links(frames["utility_links"])
        self.write_zones(frames["zones"])

    def current(self, store: Store, layer_name: str) -> gpd.GeoDataFrame:
        q = Query(
            layer_name,
            where=[Filter("id", "startswith", self.prefix)],
            classes=["subcatchment"] if layer_name == "zones" else None,
            order_by="id",
        )
        frame = store.query(q)
        frame = frame[frame["id"].str.startswith(self.prefix)]
        crs = self.doc.get("crs")
        if crs and len(frame):
            if frame.crs is None:
                frame = frame.set_crs(store.meta.crs)
            frame = frame.to_crs(crs)
        return frame

    def fail(self, message: str, layer: str, fid: str, hint: str | None = None) -> InvalidInput:
        return InvalidInput(message, source=self.target, layer=layer, feature=fid, hint=hint)

    def needs_params(self, f: dict[str, Any], layer: str, section: str) -> InvalidInput:
        fields = ", ".join(n for n in _LAYOUT[section] if n[0] not in "@*")
        return self.fail(
            f"a new {f['class']} needs its SWMM parameters",
            layer,
            f["id"],
            f"give it props with swmm_section {section} and {fields}",
        )

    def add(self, section: str, name: str, tokens: list[str]) -> None:
        self.rows.setdefault(section, []).append((name, [_quote(name), *tokens]))

    def swmm_name(self, fid: Any, layer: str, owner: str) -> str:
        if not isinstance(fid, str) or not fid.startswith(self.prefix):
            raise self.fail(
                f"refers to {fid!r}, which is not part of this network",
                layer,
                owner,
                f"refer to a feature whose id starts with {self.prefix!r}",
            )
        return fid[len(self.prefix) :]

    def write_nodes(self, frame: gpd.GeoDataFrame) -> None:
        layer = "utility_nodes"
        for f in _records(frame):
            section = _NODE_SECTION_OF.get(f["class"])
            if section is None:
                raise self.fail(
                    f"class {f['class']!r} has no SWMM node section",
                    layer,
                    f["id"],
                    "use manhole, outfall, storage or divider",
                )
            name = f["id"][len(self.prefix) :]
            fields = _own_fields(f, section)
            if not fields and section in ("STORAGE", "DIVIDERS"):
                raise self.needs_params(f, layer, section)
            if f.get("invert_level") is None and fields.get("elevation") is None:
                raise self.fail("node has no invert_level", layer, f["id"], "set invert_level")
            self.node_original[name] = _number(fields.get("elevation"))
            fields["elevation"] = _value(
                fields.get("elevation"), f.get("invert_level"), self.length
            )
            if section == "OUTFALLS":
                fields.setdefault("outfall_type", "FREE")
            else:
                fields["max_depth"] = (
                    _value(fields.get("max_depth"), f.get("depth"), self.length) or "0"
                )
            self.node_invert[name] = float(fields["elevation"])
            self.add(section, name, _join(section, fields, {}))
            x, y = f["geometry"].x, f["geometry"].y
            self.add("COORDINATES", name, [self.coord(x), self.coord(y)])

    def write_links(self, frame: gpd.GeoDataFrame) -> None:
        layer = "utility_links"
        for f in _records(frame):
            section = _LINK_SECTION_OF.get(f["class"])
            if section is None:
                raise self.fail(
                    f"class {f['class']!r} has no SWMM link section",
                    layer,
                    f["id"],
                    "use conduit, pump, orifice, weir or outlet",
                )
            name = f["id"][len(self.prefix) :]
            refs = {
                "from": self.swmm_name(f["from_node"], layer, f["id"]),
                "to": self.swmm_name(f["to_node"], layer, f["id"]),
            }
            for end in refs.values():
                if end not in self.node_invert:
                    raise self.fail(
                        f"link end {end!r} is not a current node of this network",
                        layer,
                        f["id"],
                        "add the node, or reconnect the link",
                    )
            fields = _own_fields(f, section)
            if section == "CONDUITS":
                fields["length"] = _value(fields.get("length"), f.get("length"), self.length)
                fields["roughness"] = _value(fields.get("roughness"), f.get("roughness"), 1.0)
                if fields["length"] is None or fields["roughness"] is None:
                    raise self.fail(
                        "conduit needs a length and a roughness",
                        layer,
                        f["id"],
                        "set length and roughness (Manning n)",
                    )
                for key, attr, end in (
                    ("in_offset", "invert_from", refs["from"]),
                    ("out_offset", "invert_to", refs["to"]),
                ):
                    fields[key] = self.offset(fields.get(key), f.get(attr), end)
            elif not fields:
                raise self.needs_params(f, layer, section)
            self.add(section, name, _join(section, fields, refs))
            xsection = list(f["props"].get("xsection") or [])
            if xsection and xsection[0].upper() not in _NO_GEOM1:
                xsection[1] = _value(xsection[1], f.get("diameter"), self.length)
            elif not xsection and f.get("diameter") is not None:
                xsection = ["CIRCULAR", _fmt(f["diameter"] / self.length), "0", "0", "0", "1"]
            elif not xsection and section == "CONDUITS":
                raise self.fail("conduit has no cross-section", layer, f["id"], "set diameter")
            if xsection:
                self.add("XSECTIONS", name, xsection)
            if f["props"].get("losses"):
                self.add("LOSSES", name, list(f["props"]["losses"]))
            for x, y in list(f["geometry"].coords)[1:-1]:
                self.add("VERTICES", name, [self.coord(x), self.coord(y)])

    def offset(self, original: str | None, invert: float | None, node: str) -> str:
        """The offset token of a conduit end: as read unless the end's invert was edited."""
        if invert is None:
            return original or "0"
        base = self.node_original.get(node)
        if original is not None and base is not None:
            before = _link_invert(original, base, self.offsets) * self.length
            if math.isclose(before, invert, rel_tol=1e-9, abs_tol=1e-9):
                return original
        value = invert / self.length
        return _fmt(value if self.offsets == "ELEVATION" else value - self.node_invert[node])

    def write_zones(self, frame: gpd.GeoDataFrame) -> None:
        layer = "zones"
        for f in _records(frame):
            name = f["id"][len(self.prefix) :]
            fields = _own_fields(f, "SUBCATCHMENTS")
            if f.get("outlet") is None:
                raise self.fail(
                    "subcatchment has no outlet",
                    layer,
                    f["id"],
                    "set outlet to the id of a node or subcatchment",
                )
            refs = {"outlet": self.swmm_name(f["outlet"], layer, f["id"])}
            fields["area"] = _value(fields.get("area"), f.get("area"), self.area)
            fields["imperviousness"] = _value(
                fields.get("imperviousness"), f.get("imperviousness"), 1.0
            )
            if "rain_gage" not in fields:
                raise self.needs_params(f, layer, "SUBCATCHMENTS")
            self.add("SUBCATCHMENTS", name, _join("SUBCATCHMENTS", fields, refs))
            for x, y in self.outline(f):
                self.add("POLYGONS", name, [self.coord(x), self.coord(y)])

    def outline(self, f: dict[str, Any]) -> list[tuple[float, float]]:
        """The [Polygons] points of a subcatchment: as read unless its geometry was edited."""
        props, geom = f["props"], f["geometry"]
        original = [tuple(xy) for xy in props.get("outline") or []]
        if props.get("geometry_estimated"):
            return original
        if props.get("geometry_repaired") and original:
            drawn = _outline_polygon(original)
            if drawn is not None and shapely.equals_exact(
                shapely.normalize(geom), shapely.normalize(drawn), tolerance=1e-6
            ):
                return original
        if geom.geom_type == "MultiPolygon":
            geom = max(geom.geoms, key=lambda g: g.area)
        return list(geom.exterior.coords)

    def coord(self, value: float) -> str:
        """A coordinate as written: exact, or rounded after a round trip through the twin's CRS."""
        return repr(float(value) if self.decimals is None else round(float(value), self.decimals))

    def sections(self) -> dict[str, list[list[str]]]:
        """Rows per section, in the order the file had them, new objects after."""
        out = {}
        order = self.doc.get("order", {})
        for section, rows in self.rows.items():
            rank = {n.casefold(): i for i, n in enumerate(order.get(section, []))}
            ranked = sorted(
                range(len(rows)), key=lambda i: (rank.get(rows[i][0].casefold(), len(rank)), i)
            )
            out[section] = [rows[i][1] for i in ranked]
        return out


def _records(frame: gpd.GeoDataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict("records"):
        rec = {k: (None if _missing(v) else v) for k, v in row.items()}
        rec["props"] = rec.get("props") or {}
        out.append(rec)
    return out


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


def _own_fields(f: dict[str, Any], section: str) -> dict[str, Any]:
    """The row fields kept in a feature's props, if they are of the section it belongs in."""
    props = f["props"]
    if props.get("swmm_section") != section:
        return {}
    return {k: v for k, v in props.items() if k not in ("swmm_section", "geometry_estimated")}


def _value(original: str | None, value: float | None, factor: float) -> str | None:
    """A number's token: as read when the typed value still says the same, else the new one."""
    if value is None:
        return original
    before = _number(original)
    if before is not None and math.isclose(before * factor, value, rel_tol=1e-9, abs_tol=1e-9):
        return original
    return _fmt(value / factor)


def _fmt(value: float) -> str:
    text = f"{value:.10g}"
    return "0" if text == "-0" else text


__all__ = ["DRAINAGE_NETWORKS", "read_swmm", "swmm_bundle", "write_swmm"]

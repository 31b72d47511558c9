"""Clearance check: minimum horizontal and vertical clear distances between utility lines.

Which distances apply is data: a rule table (``ClearanceRules``) shipped as YAML, by default
``data/clearance_gb50289.yaml`` (GB 50289-2016 tables 4.1.9 and 4.1.14, only the values that
could be established; the file says which and from where), with a city's own file merged over
it (``load_clearance_rules(path)``). A rule names two line classes, ``network`` or
``network:subtype`` (subtypes where the standard distinguishes them: water mains by diameter,
gas by pressure class, cables and heating pipes by installation), and gives a horizontal and/or
a vertical minimum, each with its source.

The check (``check_clearances``) is pure: a table of lines in 3D (plan geometry, outer width and
height, depth of cover over the crown at both ends, linear in between: a gravity conduit's crown
falls with its inverts, a pressure line follows the ground) and optionally building footprints
in, a table of violations out. Its scope, from the lines alone (no generator-specific tags):

- **vertical** where two lines cross in plan (lines of the same network too, unless they are
  connected: sharing a node, or one ending on the other), comparing the lower line's crown with
  the upper line's underside at the crossing;
- **horizontal** between stretches of two lines that run roughly parallel (within
  ``max_angle``) side by side for at least ``min_run`` m and do not cross, measured wall to wall
  in plan; not between connected lines of one network (a main and the next piece, a service and
  its main), and not for service connections (lines ending at a ``service_connection`` node:
  GB 50289 plans the public corridors, not the plots);
- **building**: horizontal between lines (not service connections) and building footprints,
  but for a line ending in or at a building (that building's own connection).

``clearance_lines`` builds the line table from the model's ``utility_nodes`` and
``utility_links`` frames (depth, invert levels, node cover levels, diameter, ``outer_diameter``
and SWMM cross-sections in ``props``, pressure class, installation).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from citytwin.errors import InvalidInput, NotFound, yaml_error
from citytwin.model import GRAVITY_NETWORKS, NETWORK_TYPES

BUILDING = "building"
KINDS = ("horizontal", "vertical")
DEFAULT_RULES = "clearance_gb50289.yaml"
CLEARANCE_RULES_DOCUMENT = "rules/clearance"
"""Key of the twin document holding a city's own clearance rules (an override's content)."""
MIN_RUN = 2.0  # m side by side before the horizontal rule applies to two lines
MAX_ANGLE = 10.0  # degrees: lines closer to parallel than this run side by side
_TOL = 1e-6
_TOUCH = 0.05  # m: a line ending this close to another line of its network joins it

VIOLATION_COLUMNS = (
    "kind",
    "id_a",
    "id_b",
    "network_a",
    "network_b",
    "class_a",
    "class_b",
    "required_m",
    "actual_m",
    "x",
    "y",
    "depth",
    "source",
)
"""Columns of ``check_clearances``' result. ``kind``: horizontal, vertical or building (``id_b``
a building then); ``actual_m``: the smallest clear distance found; ``x``, ``y``: where; ``depth``:
below ground, of the middle of the gap (vertical) or of the two lines' axes (horizontal)."""


# -- the rule table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A minimum clear distance (m; ``None``: deliberately unset) and where it comes from."""

    value: float | None
    source: str


@dataclass(frozen=True)
class Subtyping:
    """How a network's lines fall into the subtypes the rules distinguish."""

    by: str | None = None  # line attribute: "diameter", "pressure_class", "installation", ...
    subtypes: dict[str, float | None] = field(default_factory=dict)  # name -> max diameter (m)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ClearanceRules:
    """Minimum clearances between line classes (``network`` or ``network:subtype``), horizontal
    and vertical, keyed by the sorted pair of class names."""

    name: str
    networks: dict[str, Subtyping]
    horizontal: dict[tuple[str, str], Rule]
    vertical: dict[tuple[str, str], Rule]
    files: tuple[str, ...] = ()

    def table(self, kind: str) -> dict[tuple[str, str], Rule]:
        """The rules of one kind, ``horizontal`` or ``vertical``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        return self.horizontal if kind == "horizontal" else self.vertical

    def candidates(self, cls: str) -> list[tuple[str, str | None]]:
        """The (network, subtype) pairs a class may be: a line of unknown subtype may be any
        of its network's subtypes."""
        net, _, sub = cls.partition(":")
        if net not in self.networks:
            raise NotFound(f"no network {net!r} in the clearance rules {self.name}")
        if sub:
            return [(net, s) for s in sub.split("|")]
        return [(net, s) for s in self.networks[net].subtypes] or [(net, None)]

    def lookup(self, a: str, b: str, kind: str) -> Rule | None:
        """The rule between classes ``a`` and ``b``: the most specific entry for each subtype
        either line may be, the strictest of those where a subtype is uncertain; ``None``
        where no value is set."""
        table = self.table(kind)
        best: Rule | None = None
        for (na, sa), (nb, sb) in itertools.product(self.candidates(a), self.candidates(b)):
            rule = None
            for x, y in ((_cls(na, sa), _cls(nb, sb)), (_cls(na, sa), nb), (na, _cls(nb, sb))):
                if (found := table.get(_key(x, y))) is not None:
                    rule = found
                    break
            else:
                rule = table.get(_key(na, nb))
            if (
                rule is not None
                and rule.value is not None
                and (best is None or rule.value > best.value)
            ):
                best = rule
        return best

    def matrix(self, classes: list[str], kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Minimum clearances between every pair of ``classes`` (NaN: none set), the index of
        each one's source in the returned list of sources (-1: none), and that list."""
        k = len(classes)
        values = np.full((k, k), np.nan)
        which = np.full((k, k), -1, dtype=np.int64)
        sources: list[str] = []
        for i, j in itertools.combinations_with_replacement(range(k), 2):
            rule = self.lookup(classes[i], classes[j], kind)
            if rule is not None:
                if rule.source not in sources:
                    sources.append(rule.source)
                values[i, j] = values[j, i] = rule.value
                which[i, j] = which[j, i] = sources.index(rule.source)
        return values, which, sources

    def classify(self, network: str, value: Any) -> str:
        """The class of a line of ``network`` whose subtype attribute is ``value``: a known
        subtype or alias; the bare network where the value tells nothing."""
        spec = self.networks[network]
        if not spec.subtypes or value is None or (isinstance(value, float) and math.isnan(value)):
            return network
        if spec.by == "diameter":
            d = float(value)
            for name, limit in spec.subtypes.items():
                if limit is None or d <= limit + 1e-9:
                    return f"{network}:{name}"
            return network
        text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
        if text in spec.subtypes:
            return f"{network}:{text}"
        if text in spec.aliases:
            return f"{network}:{'|'.join(spec.aliases[text])}"
        return network


def _cls(net: str, sub: str | None) -> str:
    return f"{net}:{sub}" if sub else net


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def load_clearance_rules(
    path: str | Path | None = None, *, base: ClearanceRules | None = None
) -> ClearanceRules:
    """The default rule table (GB 50289-2016, ``data/clearance_gb50289.yaml``), or ``base``,
    with a city's own YAML file at ``path`` merged over it: its rules replace the default's for
    the same pair of classes and kind (``value: null`` switches one off). Raises
    ``InvalidInput`` naming the file and the entry for anything it can't take, ``NotFound`` for
    a missing file."""
    rules = base or default_clearance_rules()
    if path is None:
        return rules
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"clearance rule file {p} does not exist")
    return parse_clearance_rules(read_rule_file(p), source=str(p), base=rules)


def default_clearance_rules() -> ClearanceRules:
    """The default rule table shipped with CityTwin (GB 50289-2016's established values)."""
    text = resources.files("citytwin.networks").joinpath("data", DEFAULT_RULES).read_text("utf-8")
    return parse_clearance_rules(_yaml(text, DEFAULT_RULES), source=DEFAULT_RULES)


def read_rule_file(path: str | Path) -> dict:
    """A rule file's content (parsed YAML, not yet checked: ``parse_clearance_rules`` does)."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"clearance rule file {p} does not exist")
    return _yaml(p.read_text("utf-8"), str(p))


def _yaml(text: str, source: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from None
    if not isinstance(data, dict):
        raise InvalidInput("a clearance rule file must be a mapping", source=source)
    return data


def parse_clearance_rules(
    data: dict, *, source: str = "<rules>", base: ClearanceRules | None = None
) -> ClearanceRules:
    """Rules from a parsed rule file: the base table (with ``networks``) when ``base`` is
    ``None``, else an override merged over ``base``."""
    known = {"name", "title", "networks", "rules", "notes"}
    if unknown := set(data) - known:
        raise InvalidInput(
            f"unknown key {sorted(unknown)[0]!r}",
            source=source,
            hint=f"a rule file has the keys {', '.join(sorted(known))}",
        )
    if base is None:
        networks = _networks(data.get("networks"), source)
        horizontal: dict[tuple[str, str], Rule] = {}
        vertical: dict[tuple[str, str], Rule] = {}
        files: tuple[str, ...] = (source,)
    else:
        if "networks" in data:
            raise InvalidInput(
                "an override file can't redefine the networks and subtypes",
                source=source,
                hint="give only 'rules' (and 'name'); the subtypes are those of the default",
            )
        networks = base.networks
        horizontal, vertical = dict(base.horizontal), dict(base.vertical)
        files = (*base.files, source)
    entries = data.get("rules") or []
    if not isinstance(entries, list):
        raise InvalidInput("'rules' must be a list of entries", source=source)
    for n, entry in enumerate(entries):
        where = f"rules[{n}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where} must be a mapping", source=source)
        if bad := set(entry) - {"between", "horizontal", "vertical", "note"}:
            raise InvalidInput(
                f"{where}: unknown key {sorted(bad)[0]!r}",
                source=source,
                hint="an entry has 'between', 'horizontal' and/or 'vertical' (and 'note')",
            )
        pair = entry.get("between")
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidInput(
                f"{where}: 'between' must name two classes",
                source=source,
                hint="e.g. between: [gas:low, [sewer, storm]]",
            )
        sides = [_classes(side, networks, where, source) for side in pair]
        if not any(k in entry for k in KINDS):
            raise InvalidInput(f"{where}: give 'horizontal' and/or 'vertical'", source=source)
        for kind in KINDS:
            if kind not in entry:
                continue
            rule = _rule(entry[kind], f"{where}.{kind}", source)
            building = BUILDING in {c.partition(":")[0] for side in sides for c in side}
            if kind == "vertical" and building and rule.value is not None:
                raise InvalidInput(
                    f"{where}: a building has horizontal clearances only", source=source
                )
            table = horizontal if kind == "horizontal" else vertical
            for a, b in itertools.product(*sides):
                table[_key(a, b)] = rule
    name = str(data.get("name") or (base.name if base else source))
    if base is not None and data.get("name"):
        name = f"{data['name']} (over {base.name})"
    return ClearanceRules(name, networks, horizontal, vertical, files)


def _networks(spec: Any, source: str) -> dict[str, Subtyping]:
    if not isinstance(spec, dict) or not spec:
        raise InvalidInput("the base rule file needs a 'networks' mapping", source=source)
    allowed = (*NETWORK_TYPES, BUILDING)
    out = {}
    for net, body in spec.items():
        if net not in allowed:
            raise InvalidInput(
                f"networks: unknown network {net!r}",
                source=source,
                hint=f"use one of {', '.join(allowed)}",
            )
        body = body or {}
        subs = body.get("subtypes") or {}
        if isinstance(subs, list):
            subs = {s: {} for s in subs}
        limits = {}
        for s, p in subs.items():
            limit = (p or {}).get("max_diameter")
            if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
                raise InvalidInput(
                    f"networks.{net}.{s}: max_diameter must be a positive number (m)",
                    source=source,
                )
            limits[str(s)] = None if limit is None else float(limit)
        aliases = {}
        for a, targets in (body.get("aliases") or {}).items():
            if bad := [t for t in targets if t not in limits]:
                raise InvalidInput(
                    f"networks.{net}.aliases.{a}: unknown subtype {bad[0]!r}", source=source
                )
            aliases[str(a).lower()] = tuple(targets)
        if subs and not body.get("subtype_by"):
            raise InvalidInput(f"networks.{net}: subtypes need a 'subtype_by'", source=source)
        out[net] = Subtyping(body.get("subtype_by"), limits, aliases)
    for net in NETWORK_TYPES:
        out.setdefault(net, Subtyping())
    out.setdefault(BUILDING, Subtyping())
    return out


def _classes(side: Any, networks: dict[str, Subtyping], where: str, source: str) -> list[str]:
    names = side if isinstance(side, list) else [side]
    out = []
    for name in names:
        if not isinstance(name, str):
            raise InvalidInput(f"{where}: class {name!r} must be a string", source=source)
        net, _, sub = name.partition(":")
        if net not in networks:
            raise InvalidInput(
                f"{where}: unknown network {net!r}",
                source=source,
                hint=f"use one of {', '.join(networks)}",
            )
        if sub and sub not in networks[net].subtypes:
            have = ", ".join(networks[net].subtypes) or "none"
            raise InvalidInput(
                f"{where}: unknown subtype {sub!r} of {net}",
                source=source,
                hint=f"subtypes of {net}: {have}",
            )
        out.append(name)
    return out


def _rule(spec: Any, where: str, source: str) -> Rule:
    if not isinstance(spec, dict) or "value" not in spec:
        raise InvalidInput(
            f"{where} must have a 'value' (m, or null) and a 'source'",
            source=source,
            hint="e.g. {value: 1.0, source: 'GB 50289-2016 table 4.1.9, row .., column ..'}",
        )
    if bad := set(spec) - {"value", "source"}:
        raise InvalidInput(f"{where}: unknown key {sorted(bad)[0]!r}", source=source)
    value = spec["value"]
    src = spec.get("source")
    if not isinstance(src, str) or not src.strip():
        raise InvalidInput(
            f"{where}: every value needs a 'source' (standard, table, row/column)",
            source=source,
        )
    if value is None:
        return Rule(None, src.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{where}: value {value!r} is not a number (m)", source=source)
    if value < 0:
        raise InvalidInput(
            f"{where}: negative clearance {value}", source=source, hint="clearances are ≥ 0 m"
        )
    return Rule(float(value), src.strip())


# -- lines from the model ----------------------------------------------------------------------
def clearance_lines(
    nodes: pd.DataFrame, links: pd.DataFrame, rules: ClearanceRules
) -> pd.DataFrame:
    """The line table ``check_clearances`` takes, from model frames of ``utility_nodes`` and
    ``utility_links`` (any networks together).

    Sizes: ``outer_diameter`` (column or ``props``), else a SWMM cross-section in ``props``
    (``xsection``: boxes are ``geom2 × barrels`` wide and ``geom1`` high), else ``diameter``.
    Cover over the crown: for gravity networks from the inverts (crown = invert + internal
    height) and the end nodes' ``cover_level``; otherwise ``depth``. Links with neither are left
    out. Service connections: links with a ``service_connection`` node at an end. Classes from
    the rules' subtypes (``diameter``, ``pressure_class``, ``installation``: column or
    ``props``)."""
    if not len(links):
        return _empty_lines()
    n = len(links)
    props = links["props"] if "props" in links else pd.Series([None] * n, index=links.index)
    props = [p if isinstance(p, dict) else {} for p in props]

    def column(name: str) -> np.ndarray:
        if name in links:
            return links[name].to_numpy(dtype=object)
        return np.array([p.get(name) for p in props], dtype=object)

    diameter = _numbers(links, "diameter")
    outer = pd.to_numeric(pd.Series(column("outer_diameter")), errors="coerce").to_numpy(float)
    inner_h = diameter.copy()
    sec_w, sec_h = np.full(n, np.nan), np.full(n, np.nan)
    for k, p in enumerate(props):
        xs = p.get("xsection")
        if isinstance(xs, list | tuple) and len(xs) >= 2:
            try:
                g1 = float(xs[1])
                g2 = float(xs[2]) if len(xs) > 2 else 0.0
                barrels = float(xs[5]) if len(xs) > 5 else 1.0
            except (TypeError, ValueError):
                continue
            sec_h[k] = g1
            sec_w[k] = (g2 if str(xs[0]).upper().startswith("RECT") and g2 > 0 else g1) * max(
                barrels, 1.0
            )
    inner_h = np.where(np.isnan(inner_h), sec_h, inner_h)
    width = np.where(np.isnan(outer), np.where(np.isnan(sec_w), diameter, sec_w), outer)
    height = np.where(np.isnan(outer), np.where(np.isnan(sec_h), diameter, sec_h), outer)
    width, height = np.nan_to_num(width), np.nan_to_num(height)

    network = links["network"].to_numpy(object)
    depth = _numbers(links, "depth")
    cover_from, cover_to = depth.copy(), depth.copy()
    if len(nodes) and {"invert_from", "invert_to"} <= set(links.columns):
        level = nodes.drop_duplicates("id").set_index("id")["cover_level"]
        g0 = level.reindex(links["from_node"]).to_numpy(float)
        g1 = level.reindex(links["to_node"]).to_numpy(float)
        c0 = g0 - pd.to_numeric(links["invert_from"], errors="coerce").to_numpy(float) - inner_h
        c1 = g1 - pd.to_numeric(links["invert_to"], errors="coerce").to_numpy(float) - inner_h
        sloped = np.isin(network, GRAVITY_NETWORKS) | np.isnan(depth)
        sloped &= ~np.isnan(c0) & ~np.isnan(c1)
        cover_from = np.where(sloped, c0, cover_from)
        cover_to = np.where(sloped, c1, cover_to)

    service = np.zeros(n, bool)
    if len(nodes) and "class" in nodes:
        svc = set(nodes.loc[nodes["class"] == "service_connection", "id"])
        service = links["from_node"].isin(svc).to_numpy() | links["to_node"].isin(svc).to_numpy()
    sub_values = {}
    for net in set(network):
        spec = rules.networks.get(net)
        if spec is not None and spec.by and spec.by not in sub_values:
            sub_values[spec.by] = diameter if spec.by == "diameter" else column(spec.by)
    cls = np.empty(n, dtype=object)
    for k, net in enumerate(network):
        spec = rules.networks.get(net)
        if spec is None:
            raise InvalidInput(
                f"unknown network {net!r}",
                feature=str(links["id"].iloc[k]),
                hint=f"the clearance rules know {', '.join(rules.networks)}",
            )
        cls[k] = rules.classify(net, sub_values[spec.by][k] if spec.by else None)
    keep = ~np.isnan(cover_from) & ~np.isnan(cover_to) & ~links.geometry.isna().to_numpy()
    out = pd.DataFrame(
        {
            "id": links["id"].astype(str).to_numpy(object),
            "network": network,
            "cls": cls,
            "width": width,
            "height": height,
            "cover_from": cover_from,
            "cover_to": cover_to,
            "from_node": links["from_node"].to_numpy(object),
            "to_node": links["to_node"].to_numpy(object),
            "service": service,
            "geometry": links.geometry.to_numpy(),
        }
    )
    result = out[keep].reset_index(drop=True)
    result.attrs["unchecked"] = out.loc[~keep, "id"].tolist()
    return result


def _numbers(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(float)


def _empty_lines() -> pd.DataFrame:
    cols = ["id", "network", "cls", "width", "height", "cover_from", "cover_to"]
    return pd.DataFrame(columns=[*cols, "from_node", "to_node", "service", "geometry"])


# -- the check ---------------------------------------------------------------------------------
def check_clearances(
    lines: pd.DataFrame,
    rules: ClearanceRules,
    buildings: pd.DataFrame | None = None,
    *,
    min_run: float = MIN_RUN,
    max_angle: float = MAX_ANGLE,
) -> pd.DataFrame:
    """Every clearance violation among ``lines`` (and against ``buildings``: frames with ``id``
    and polygon ``geometry``), one row per pair of features with the worst clear distance
    found (``VIOLATION_COLUMNS``), sorted by kind and ids.

    ``lines`` columns: ``id``, ``network``, ``geometry`` (LineString in a projected CRS, m),
    ``width`` and ``height`` (outer, m), ``cover_from``/``cover_to`` (ground to crown at the
    start and end, m); optional ``cls`` (``network:subtype``; default the network),
    ``from_node``/``to_node`` (connected lines share a node) and ``service`` (service
    connections: vertical rules only)."""
    t = _validate(lines, rules)
    empty = pd.DataFrame(columns=list(VIOLATION_COLUMNS))
    if not len(t["id"]):
        return empty
    classes = sorted(set(t["cls"]))
    code = np.searchsorted(classes, t["cls"])
    rows = [
        _between_lines(
            t,
            code,
            rules.matrix(classes, "horizontal"),
            rules.matrix(classes, "vertical"),
            min_run,
            max_angle,
        )
    ]
    if buildings is not None and len(buildings):
        values, which, sources = rules.matrix([*classes, BUILDING], "horizontal")
        rows.append(
            _against_buildings(t, code, values[:-1, -1], which[:-1, -1], sources, buildings)
        )
    rows = [r for r in rows if len(r)]
    if not rows:
        return empty
    out = pd.concat(rows, ignore_index=True)
    return out.sort_values(["kind", "id_a", "id_b"], kind="stable").reset_index(drop=True)[
        list(VIOLATION_COLUMNS)
    ]


def _validate(lines: pd.DataFrame, rules: ClearanceRules) -> dict[str, np.ndarray]:
    need = ["id", "network", "geometry", "width", "height", "cover_from", "cover_to"]
    if missing := [c for c in need if c not in lines]:
        raise InvalidInput(
            f"the line table lacks column {missing[0]!r}",
            hint="build it with clearance_lines(nodes, links, rules)",
        )
    n = len(lines)
    t: dict[str, np.ndarray] = {
        "id": lines["id"].astype(str).to_numpy(object),
        "network": lines["network"].to_numpy(object),
        "geometry": np.asarray(lines["geometry"].to_numpy(), dtype=object),
    }
    for c in ("width", "height", "cover_from", "cover_to"):
        t[c] = pd.to_numeric(lines[c], errors="coerce").to_numpy(float)
    cls = lines["cls"].to_numpy(object) if "cls" in lines else t["network"].copy()
    for k in range(n):
        net = t["network"][k]
        if net not in rules.networks or net == BUILDING:
            raise InvalidInput(
                f"unknown network {net!r}",
                feature=t["id"][k],
                hint=f"the clearance rules know {', '.join(n for n in rules.networks)}",
            )
        if not isinstance(cls[k], str) or not cls[k]:
            cls[k] = net
    t["cls"] = cls
    bad = ~(np.isfinite(t["width"]) & np.isfinite(t["height"]))
    bad |= (t["width"] < 0) | (t["height"] < 0)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InvalidInput(
            "width and height must be numbers ≥ 0 (m)",
            feature=t["id"][k],
            hint="give the outer size",
        )
    if (~np.isfinite(t["cover_from"]) | ~np.isfinite(t["cover_to"])).any():
        k = int(np.flatnonzero(~np.isfinite(t["cover_from"] + t["cover_to"]))[0])
        raise InvalidInput(
            "cover_from and cover_to must be numbers (m of cover over the crown)",
            feature=t["id"][k],
            hint="leave lines without a known depth out of the check",
        )
    geom_type = shapely.get_type_id(t["geometry"])
    if (geom_type != 1).any():
        k = int(np.flatnonzero(geom_type != 1)[0])
        raise InvalidInput("a line's geometry must be a LineString", feature=t["id"][k])
    for c in ("from_node", "to_node"):
        t[c] = lines[c].to_numpy(object) if c in lines else np.full(n, None, dtype=object)
    t["service"] = (
        lines["service"].fillna(False).to_numpy(bool) if "service" in lines else np.zeros(n, bool)
    )
    return t


def _segments(geoms: np.ndarray) -> dict[str, np.ndarray]:
    """Every straight segment of the lines: its line, ends, and distance along the line."""
    xy, which = shapely.get_coordinates(geoms, return_index=True)
    same = which[1:] == which[:-1]
    start = np.flatnonzero(same)
    p0, p1 = xy[start], xy[start + 1]
    seglen = np.hypot(*(p1 - p0).T)
    line = which[start]
    # distance along the line at each segment's start
    cum = np.zeros(len(start))
    if len(start):
        total = np.cumsum(seglen)
        first = np.r_[True, line[1:] != line[:-1]]
        base = np.maximum.accumulate(np.where(first, np.arange(len(start)), 0))
        cum = total - seglen - (total[base] - seglen[base])
    length = np.zeros(len(geoms))
    np.add.at(length, line, seglen)
    return {"line": line, "p0": p0, "p1": p1, "len": seglen, "s0": cum, "length": length}


def _cover_at(t, seg, k: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Cover over the crown of segment ``k``'s line at points ``xy`` on (or next to) it."""
    line = seg["line"][k]
    d = seg["p1"][k] - seg["p0"][k]
    along = np.einsum("ij,ij->i", xy - seg["p0"][k], d) / np.maximum(seg["len"][k], _TOL)
    s = seg["s0"][k] + np.clip(along, 0.0, seg["len"][k])
    f = s / np.maximum(seg["length"][line], _TOL)
    return t["cover_from"][line] + f * (t["cover_to"][line] - t["cover_from"][line])


def _between_lines(t, code, horizontal, vertical, min_run, max_angle) -> pd.DataFrame:
    h_val, h_which, h_src = horizontal
    v_val, v_which, v_src = vertical
    seg = _segments(t["geometry"])
    if not len(seg["line"]):
        return pd.DataFrame()
    lines = seg["line"]
    geoms = shapely.linestrings(np.stack([seg["p0"], seg["p1"]], axis=1))
    width = t["width"]
    # how far to look from each segment: its half width, the widest line's, its largest rule
    h_reach = np.nanmax(np.vstack([h_val, np.zeros(len(h_val))]), axis=0)
    reach = width[lines] / 2 + width.max() / 2 + h_reach[code[lines]] + 1e-3
    a, b = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=reach)
    la, lb = lines[a], lines[b]
    ca, cb = code[la], code[lb]
    keep = (la < lb) & ~(np.isnan(h_val[ca, cb]) & np.isnan(v_val[ca, cb]))
    a, b, la, lb, ca, cb = a[keep], b[keep], la[keep], lb[keep], ca[keep], cb[keep]
    # lines of one network that are connected: sharing a node, or one ending on the other
    linked = _connected(t, la, lb)
    a, b, la, lb, ca, cb = (x[~linked] for x in (a, b, la, lb, ca, cb))
    cross = shapely.intersects(geoms[a], geoms[b])
    out = []

    # vertical: where the lines cross
    v = np.flatnonzero(cross & ~np.isnan(v_val[ca, cb]))
    if len(v):
        xy, first = shapely.get_coordinates(
            shapely.intersection(geoms[a[v]], geoms[b[v]]), return_index=True
        )
        xy = xy[np.unique(first, return_index=True)[1]]  # the first point of each crossing
        cov_a, cov_b = _cover_at(t, seg, a[v], xy), _cover_at(t, seg, b[v], xy)
        under_a = cov_a + t["height"][la[v]]  # depth of a's underside
        under_b = cov_b + t["height"][lb[v]]
        b_below = cov_b - under_a  # clear distance if b passes below a
        a_below = cov_a - under_b
        clear = np.maximum(a_below, b_below)
        gap = np.where(b_below >= a_below, (under_a + cov_b) / 2, (under_b + cov_a) / 2)
        need = v_val[ca[v], cb[v]]
        bad = clear < need - 1e-9
        src = np.asarray(v_src, dtype=object)[v_which[ca[v], cb[v]]]
        out.append(_rows("vertical", t, la[v], lb[v], need, clear, xy, gap, src).loc[bad])

    # horizontal: stretches side by side, of lines that don't cross, neither a service line
    crossing = pd.MultiIndex.from_arrays([la[cross], lb[cross]])
    h = ~cross & ~np.isnan(h_val[ca, cb]) & ~(t["service"][la] | t["service"][lb])
    h &= ~pd.MultiIndex.from_arrays([la, lb]).isin(crossing)
    h = np.flatnonzero(h)
    if len(h):
        sa, sb = a[h], b[h]
        ua = (seg["p1"][sa] - seg["p0"][sa]) / np.maximum(seg["len"][sa], _TOL)[:, None]
        ub = (seg["p1"][sb] - seg["p0"][sb]) / np.maximum(seg["len"][sb], _TOL)[:, None]
        sine = np.abs(ua[:, 0] * ub[:, 1] - ua[:, 1] * ub[:, 0])
        t0 = np.einsum("ij,ij->i", seg["p0"][sb] - seg["p0"][sa], ua)
        t1 = np.einsum("ij,ij->i", seg["p1"][sb] - seg["p0"][sa], ua)
        run = np.minimum(seg["len"][sa], np.maximum(t0, t1)) - np.maximum(0.0, np.minimum(t0, t1))
        ok = (sine <= math.sin(math.radians(max_angle))) & (run >= min_run - 1e-9)
        h, sa, sb = h[ok], sa[ok], sb[ok]
        clear = shapely.distance(geoms[sa], geoms[sb]) - (width[la[h]] + width[lb[h]]) / 2
        need = h_val[ca[h], cb[h]]
        bad = clear < need - 1e-9
        h, sa, sb, clear, need = h[bad], sa[bad], sb[bad], clear[bad], need[bad]
        if len(h):
            near = shapely.get_coordinates(shapely.shortest_line(geoms[sa], geoms[sb]))
            near = near.reshape(-1, 2, 2)
            axis_a = _cover_at(t, seg, sa, near[:, 0]) + t["height"][la[h]] / 2
            axis_b = _cover_at(t, seg, sb, near[:, 1]) + t["height"][lb[h]] / 2
            src = np.asarray(h_src, dtype=object)[h_which[ca[h], cb[h]]]
            out.append(
                _rows(
                    "horizontal", t, la[h], lb[h], need, clear, near.mean(axis=1),
                    (axis_a + axis_b) / 2, src,
                )
            )  # fmt: skip
    frames = [f for f in out if len(f)]
    return _worst(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()


def _connected(t, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """Pairs of lines of one network that are connected: a shared end node, or an end of one
    within ``_TOUCH`` of the other."""
    same = np.flatnonzero(t["network"][la] == t["network"][lb])
    linked = np.zeros(len(la), bool)
    if not len(same):
        return linked
    i, j = la[same], lb[same]
    ends = {c: pd.Series(t[c]).astype(object) for c in ("from_node", "to_node")}
    shared = np.zeros(len(same), bool)
    for ca_ in ("from_node", "to_node"):
        for cb_ in ("from_node", "to_node"):
            x, y = ends[ca_].to_numpy()[i], ends[cb_].to_numpy()[j]
            shared |= pd.notna(x) & (x == y)
    rest = np.flatnonzero(~shared)
    if len(rest):
        ga, gb = t["geometry"][i[rest]], t["geometry"][j[rest]]
        touch = np.zeros(len(rest), bool)
        for g, other in ((ga, gb), (gb, ga)):
            for end in (0, -1):
                touch |= shapely.distance(shapely.get_point(g, end), other) <= _TOUCH
        shared[rest] = touch
    linked[same] = shared
    return linked


def _rows(kind, t, la, lb, need, clear, xy, depth, source) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "kind": kind,
            "id_a": t["id"][la],
            "id_b": t["id"][lb],
            "network_a": t["network"][la],
            "network_b": t["network"][lb],
            "class_a": t["cls"][la],
            "class_b": t["cls"][lb],
            "required_m": need,
            "actual_m": np.round(clear, 3),
            "x": np.round(xy[:, 0], 2),
            "y": np.round(xy[:, 1], 2),
            "depth": np.round(depth, 2),
            "source": source,
        }
    )


def _worst(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of features and kind: the smallest clear distance."""
    frame = frame.sort_values("actual_m", kind="stable")
    return frame.drop_duplicates(["kind", "id_a", "id_b"]).reset_index(drop=True)


def _against_buildings(t, code, need_by_class, which, sources, buildings) -> pd.DataFrame:
    """Lines (not service connections) closer to a building than their class allows."""
    need_line = need_by_class[code]
    cand = np.flatnonzero(~np.isnan(need_line) & ~t["service"])
    if not len(cand):
        return pd.DataFrame()
    bgeom = np.asarray(buildings.geometry.to_numpy(), dtype=object)
    bid = buildings["id"].astype(str).to_numpy(object)
    geoms = t["geometry"][cand]
    reach = t["width"][cand] / 2 + need_line[cand] + 1e-3
    i, k = shapely.STRtree(bgeom).query(geoms, predicate="dwithin", distance=reach)
    line = cand[i]
    # a line ending in (or at) a building is its connection: no clearance from that one
    enters = np.zeros(len(line), bool)
    for end in (0, -1):
        enters |= shapely.distance(shapely.get_point(t["geometry"][line], end), bgeom[k]) <= _TOUCH
    line, k = line[~enters], k[~enters]
    clear = shapely.distance(t["geometry"][line], bgeom[k]) - t["width"][line] / 2
    need = need_line[line]
    bad = clear < need - 1e-9
    line, k, clear, need = line[bad], k[bad], clear[bad], need[bad]
    if not len(line):
        return pd.DataFrame()
    near = shapely.get_coordinates(shapely.shortest_line(t["geometry"][line], bgeom[k]))
    near = near.reshape(-1, 2, 2)
    seg = _segments(t["geometry"][line])
    # the segment of each line nearest to its building, for the depth there
    on = shapely.linestrings(np.stack([seg["p0"], seg["p1"]], axis=1))
    d = shapely.distance(on, shapely.points(near[seg["line"], 0]))
    order = np.lexsort((d, seg["line"]))
    first = order[np.unique(seg["line"][order], return_index=True)[1]]
    sub = {**t, **{c: t[c][line] for c in ("cover_from", "cover_to")}}
    depth = _cover_at(sub, seg, first, near[:, 0]) + t["height"][line] / 2
    frame = pd.DataFrame(
        {
            "kind": "building",
            "id_a": t["id"][line],
            "id_b": bid[k],
            "network_a": t["network"][line],
            "network_b": BUILDING,
            "class_a": t["cls"][line],
            "class_b": BUILDING,
            "required_m": need,
            "actual_m": np.round(clear, 3),
            "x": np.round(near.mean(axis=1)[:, 0], 2),
            "y": np.round(near.mean(axis=1)[:, 1], 2),
            "depth": np.round(depth, 2),
            "source": np.asarray(sources, dtype=object)[which[code[line]]],
        }
    )
    return _worst(frame)

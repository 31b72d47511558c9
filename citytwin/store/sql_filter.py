"""CQL2 filters for the stores: parsing (pygeofilter) and translation to parameterised SQL.

A filter travels as a pygeofilter syntax tree (backend-neutral): services parse what users send
(``parse``: CQL2 text or CQL2 JSON, OGC 21-065r2), move its geometry literals into the store's
CRS (``map_geometries``) and put it on ``Query.filter``; a backend translates it with
``to_sql``. The translation never pastes a value into the SQL: every literal becomes a ``?``
parameter, and attribute names only ever become the SQL expressions the caller mapped them to,
so a name that is not in the mapping is refused (``InvalidInput`` naming the queryables).

``to_sql`` is shared by every table that filters with CQL2 (feature layers, the SensorThings
tables): give it the mapping of property names to SQL expressions of that table.

What it translates (the rest is ``InvalidInput`` saying what is supported):

- comparisons ``= <> < <= > >=`` (property-property too), ``LIKE`` (``%`` and ``_`` wildcards,
  ``\\`` escapes; ``CASEI``/``ACCENTI`` as ``lower``/``strip_accents``), ``IN``, ``BETWEEN``,
  ``IS NULL``, ``AND``/``OR``/``NOT``, ``INCLUDE``/``EXCLUDE``, arithmetic ``+ - * /``;
- spatial ``S_INTERSECTS S_DISJOINT S_CONTAINS S_WITHIN S_TOUCHES S_CROSSES S_OVERLAPS
  S_EQUALS`` and distance ``DWITHIN``/``BEYOND`` (metres; from the ECQL tree, CQL2 has no
  such operator). With ``bbox_columns`` a literal's bounding box prunes first (columns with
  min/max zone maps or an index), then the exact ``ST_`` test runs;
- temporal ``T_BEFORE T_AFTER T_EQUALS T_DURING T_INTERSECTS T_DISJOINT`` with an instant
  property (timestamp or date) against an instant or an interval (``..`` open ends).
  pygeofilter parses ``T_INTERSECTS`` as ``T_OVERLAPS``; with an instant, overlapping can only
  mean sharing a moment, so both are read as ``T_INTERSECTS``.

Three-valued logic is SQL's (and CQL2's): a comparison with NULL is not true, so ``NOT (a = 1)``
leaves out rows where ``a`` is NULL. ``excluding(node)`` is the condition for rows that do
*not* match (NULL counts as not matching) — what access rules need.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import shapely
from pygeofilter import ast, values

from citytwin.errors import InvalidInput

FILTER_LANGS = ("cql2-text", "cql2-json")
MAX_FILTER_CHARS = 100_000
MAX_DEPTH = 200
"""Deeper trees are refused (nobody writes them; they only exhaust the stack)."""

KINDS = ("string", "number", "integer", "boolean", "timestamp", "date", "geometry")
"""Property types ``to_sql`` checks literals against (``types``)."""
_GROUP = {"integer": "number", "date": "time", "timestamp": "time"}
FUNCTIONS = {"lower": "lower", "casei": "lower", "upper": "upper", "accenti": "strip_accents"}
"""CQL2 functions on strings and their SQL."""
_SPATIAL_SQL = {
    ast.GeometryIntersects: "ST_Intersects",
    ast.GeometryDisjoint: "ST_Intersects",  # negated below
    ast.GeometryContains: "ST_Contains",
    ast.GeometryWithin: "ST_Within",
    ast.GeometryTouches: "ST_Touches",
    ast.GeometryCrosses: "ST_Crosses",
    ast.GeometryOverlaps: "ST_Overlaps",
    ast.GeometryEquals: "ST_Equals",
}
_CONVERSE = {ast.GeometryContains: ast.GeometryWithin, ast.GeometryWithin: ast.GeometryContains}
_COMPARISON_SQL = {
    ast.Equal: "=",
    ast.NotEqual: "<>",
    ast.LessThan: "<",
    ast.LessEqual: "<=",
    ast.GreaterThan: ">",
    ast.GreaterEqual: ">=",
}
_ARITHMETIC_SQL = {ast.Add: "+", ast.Sub: "-", ast.Mul: "*", ast.Div: "/"}
_METRES = {"m", "meter", "meters", "metre", "metres"}


class NotTrue(ast.Not):
    """Rows for which ``sub_node`` is not TRUE (FALSE or NULL): see ``excluding``."""

    def get_template(self) -> str:
        return "NOT COALESCE({}, FALSE)"


def excluding(node: ast.Node) -> ast.Node:
    """The condition for rows that do not match ``node`` — NULL counts as not matching (unlike
    ``NOT``, under which a NULL comparison leaves the row out too)."""
    return NotTrue(node)


def all_of(*nodes: ast.Node | None) -> ast.Node | None:
    """``AND`` of the nodes given (None are skipped; None when none are left)."""
    present = [n for n in nodes if n is not None]
    return ast.And.from_items(*present) if present else None


# -- parsing ----------------------------------------------------------------------------------
def parse(text: str | Mapping[str, Any], lang: str | None = "cql2-text") -> ast.Node:
    """A CQL2 filter (text, or JSON as a string or a parsed object) as a pygeofilter tree;
    ``InvalidInput`` with the reason for anything that is not one."""
    lang = lang or ("cql2-json" if isinstance(text, Mapping) else "cql2-text")
    if lang not in FILTER_LANGS:
        raise InvalidInput(
            f"unknown filter-lang {lang!r}", hint=f"use one of {', '.join(FILTER_LANGS)}"
        )
    if isinstance(text, str) and len(text) > MAX_FILTER_CHARS:
        raise InvalidInput(f"the filter is longer than {MAX_FILTER_CHARS:,} characters")
    try:
        if lang == "cql2-json":
            from pygeofilter.parsers.cql2_json import parse as parse_json

            doc = orjson.loads(text) if isinstance(text, str | bytes) else text
            if not isinstance(doc, Mapping):
                raise InvalidInput(f"the cql2-json filter is {doc!r:.40}, not a condition")
            node = parse_json(_json_to_pygeofilter(doc))
        else:
            if not isinstance(text, str):
                raise TypeError("cql2-text is a string")
            node = _text_parser().parse(text)
    except InvalidInput:
        raise
    except RecursionError:
        raise InvalidInput("the filter is nested too deeply") from None
    except Exception as exc:  # lark, JSON and pygeofilter errors: all mean "not a filter"
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InvalidInput(
            f"can't read the {lang} filter: {reason}",
            hint="e.g. height > 30 AND use = 'residential'"
            if lang == "cql2-text"
            else 'e.g. {"op": ">", "args": [{"property": "height"}, 30]}',
        ) from None
    if not isinstance(node, ast.Node):
        raise InvalidInput(f"the {lang} filter is a value ({node!r}), not a condition")
    properties(node)  # depth check and EWKT refusal
    return node


@lru_cache(maxsize=1)
def _text_parser() -> Any:
    """pygeofilter's CQL2 text grammar with what CQL2 has and it lacks — quotes doubled inside
    strings (``'O''Brien'``), intervals of dates or timestamps with open ends (``'..'``) — and
    without the parser's debug dump of every syntax error."""
    from lark import Lark, v_args
    from pygeofilter.parsers.cql2_text import parser as base

    @v_args(inline=True)
    class Transformer(base.CQLTransformer):
        def SINGLE_QUOTED(self, token: str) -> str:
            return token[1:-1].replace("''", "'")

        def interval(self, start: str, end: str) -> values.Interval:
            return values.Interval(_interval_end(start), _interval_end(end))

    path = Path(base.__file__).with_name("grammar.lark")
    grammar = path.read_text(encoding="utf-8")
    for old, new in (
        ('SINGLE_QUOTED: "\'" /.*?/ "\'"', "SINGLE_QUOTED: /'(?:[^']|'')*'/"),
        (
            '?interval: "INTERVAL" "("  "\'" DATETIME "\'" "," "\'" DATETIME "\'" ")"',
            'interval: "INTERVAL" "(" SINGLE_QUOTED "," SINGLE_QUOTED ")"',
        ),
    ):
        if old not in grammar:
            raise RuntimeError(f"pygeofilter's CQL2 grammar changed: no {old!r} in {path}")
        grammar = grammar.replace(old, new)
    return Lark(
        grammar,
        source_path=str(path),
        parser="lalr",
        debug=False,
        maybe_placeholders=False,
        transformer=Transformer(),
        import_paths=[str(path.parent.parent)],
    )


def _interval_end(text: str) -> dt.date | dt.datetime | None:
    if text == "..":
        return None
    if len(text) == 10:
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text)


def _json_to_pygeofilter(doc: Any, depth: int = 0) -> Any:
    """CQL2 JSON (1.0) in the forms pygeofilter 0.4 reads: ``bbox`` literals as polygons (its
    envelope would take the numbers in another order), three-argument ``between``, and
    ``accenti`` as a function."""
    if depth > MAX_DEPTH:
        raise InvalidInput("the filter is nested too deeply")
    if isinstance(doc, list):
        return [_json_to_pygeofilter(d, depth + 1) for d in doc]
    if not isinstance(doc, dict):
        return doc
    if "bbox" in doc and "coordinates" not in doc:
        return shapely.geometry.mapping(_box(doc["bbox"]))
    out = {k: _json_to_pygeofilter(v, depth + 1) for k, v in doc.items()}
    op, args = out.get("op"), out.get("args")
    if op == "between" and isinstance(args, list) and len(args) == 3:
        out["args"] = [args[0], [args[1], args[2]]]
    elif op == "accenti" and isinstance(args, list):
        return {"function": {"name": "accenti", "arguments": args}}
    return out


def _box(numbers: Any) -> shapely.Geometry:
    try:
        v = [float(x) for x in numbers]
    except (TypeError, ValueError):
        v = []
    if len(v) == 6:
        v = [v[0], v[1], v[3], v[4]]
    if len(v) != 4 or not all(math.isfinite(x) for x in v) or v[0] > v[2] or v[1] > v[3]:
        raise InvalidInput(
            f"a bbox literal needs 4 (or 6) numbers min <= max, not {numbers!r}",
            hint="BBOX(minx, miny, maxx, maxy)",
        )
    return shapely.box(v[0], v[1], v[2], v[3])


# -- walking ----------------------------------------------------------------------------------
def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.Node):
        for value in vars(node).values():
            if isinstance(value, list):
                yield from value
            else:
                yield value
    elif isinstance(node, values.Interval):
        yield node.start
        yield node.end


def properties(node: Any) -> set[str]:
    """The property names a filter refers to (``InvalidInput`` for trees over ``MAX_DEPTH``)."""
    found: set[str] = set()
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput("the filter is nested too deeply", hint=f"at most {MAX_DEPTH}")
        if isinstance(item, ast.Attribute):
            found.add(str(item.name))
        elif isinstance(item, values.Geometry) and "crs" in item.geometry:
            raise InvalidInput(
                "geometry literals don't carry a CRS (SRID=...) in CQL2",
                hint="give the CRS of all geometries in filter-crs",
            )
        stack.extend((c, depth + 1) for c in _children(item))
    return found


def is_geometry_literal(value: Any) -> bool:
    return isinstance(value, shapely.Geometry | values.Geometry | values.Envelope) or (
        isinstance(value, ast.Function) and value.name.lower() == "bbox"
    )


def geometry_of(value: Any) -> shapely.Geometry:
    """A geometry literal of a tree (GeoJSON-like, envelope, ``BBOX(...)`` or already a shapely
    geometry) as a shapely geometry."""
    if isinstance(value, shapely.Geometry):
        return value
    if isinstance(value, values.Envelope):
        return _box([value.x1, value.y1, value.x2, value.y2])
    if isinstance(value, ast.Function):
        if any(not isinstance(a, int | float) or isinstance(a, bool) for a in value.arguments):
            raise InvalidInput("BBOX takes numbers", hint="BBOX(minx, miny, maxx, maxy)")
        return _box(value.arguments)
    try:
        geom = shapely.geometry.shape(value.geometry)
    except Exception as exc:
        raise InvalidInput(f"not a geometry: {exc}") from None
    if not math.isfinite(float(shapely.get_coordinates(geom).sum())):
        raise InvalidInput("a geometry literal has coordinates that are not numbers")
    return geom


def map_geometries(node: Any, fn: Callable[[shapely.Geometry], shapely.Geometry]) -> Any:
    """A copy of the tree with every geometry literal replaced by ``fn(shapely geometry)`` —
    e.g. a transformation from the filter's CRS into the store's."""
    if is_geometry_literal(node):
        return fn(geometry_of(node))
    if isinstance(node, list):
        return [map_geometries(n, fn) for n in node]
    if isinstance(node, ast.Node):
        copy = object.__new__(type(node))
        copy.__dict__.update({k: map_geometries(v, fn) for k, v in vars(node).items()})
        return copy
    return node


Box = tuple[float, float, float, float]


def envelope(node: Any, geometry: str) -> Box | None:
    """A box (minx, miny, maxx, maxy) that the bounding box of every feature matching ``node``
    meets: the bounds of the geometries its spatial predicates hold the property ``geometry``
    to (a distance predicate's grown by its distance), met over AND, joined over OR; None where
    the filter does not bound where the features lie. For estimates: a literal that is not a
    geometry bounds nothing here (translating the filter reports it)."""
    try:
        return _envelope(node, geometry)
    except (InvalidInput, RecursionError, TypeError, ValueError):
        return None


def _envelope(node: Any, geometry: str) -> Box | None:
    if isinstance(node, ast.And | ast.Or):
        a, b = _envelope(node.lhs, geometry), _envelope(node.rhs, geometry)
        if isinstance(node, ast.And):
            return a if b is None else b if a is None else meet(a, b)
        return None if a is None or b is None else _join(a, b)
    grow, lhs, rhs = 0.0, None, None
    if isinstance(node, ast.SpatialComparisonPredicate) and not isinstance(
        node, ast.GeometryDisjoint
    ):
        lhs, rhs = node.lhs, node.rhs
    elif isinstance(node, ast.DistanceWithin) and str(node.units or "m").lower() in _METRES:
        lhs, rhs, grow = node.lhs, node.rhs, float(node.distance)
    elif isinstance(node, ast.BBox):
        lhs, rhs = node.lhs, _box([node.minx, node.miny, node.maxx, node.maxy])
    if is_geometry_literal(lhs):
        lhs, rhs = rhs, lhs
    if not (isinstance(lhs, ast.Attribute) and str(lhs.name) == geometry):
        return None
    if not is_geometry_literal(rhs) or not math.isfinite(grow):
        return None
    x0, y0, x1, y1 = (float(v) for v in shapely.bounds(geometry_of(rhs)))
    return x0 - grow, y0 - grow, x1 + grow, y1 + grow


def meet(a: Box, b: Box) -> Box:
    """The box common to two boxes (empty where ``minx > maxx`` or ``miny > maxy``)."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def _join(a: Box, b: Box) -> Box:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


# -- translation ------------------------------------------------------------------------------
def to_sql(
    node: ast.Node,
    columns: Mapping[str, str | tuple[str, list[Any]]],
    geometry_sql: str | None = None,
    *,
    bbox_columns: tuple[str, str, str, str] | None = None,
    types: Mapping[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """A filter tree as a SQL condition with ``?`` parameters.

    - ``columns``: property name -> SQL expression of the table (e.g. ``{"id": "fid",
      "height": '"height"'}``), or ``(sql, params)`` for an expression with parameters of its
      own (the SensorThings read side computes OData functions so); only these names can be
      used.
    - ``geometry_sql``: the SQL of the geometry as a spatial value (e.g.
      ``"ST_GeomFromWKB(wkb)"``); the property that maps to it is the spatial one. None: the
      table has no geometry (spatial predicates are refused).
    - ``bbox_columns``: SQL of the geometry's minx, miny, maxx, maxy (for pruning).
    - ``types``: property name -> one of ``KINDS``; literals are checked against them (a
      mismatch is ``InvalidInput`` before the database sees it).

    Geometry literals must already be in the table's CRS (``map_geometries``); datetimes are
    passed as naive UTC. Returns ``(sql, params)``."""
    t = _Translator(columns, geometry_sql, bbox_columns, types or {})
    try:
        return t.condition(node), t.params
    except RecursionError:
        raise InvalidInput("the filter is nested too deeply") from None


class _Translator:
    def __init__(
        self,
        columns: Mapping[str, str | tuple[str, list[Any]]],
        geometry_sql: str | None,
        bbox_columns: tuple[str, str, str, str] | None,
        types: Mapping[str, str],
    ) -> None:
        self.columns = dict(columns)
        self.geometry_sql = geometry_sql
        self.bbox = bbox_columns
        self.types = dict(types)
        self.params: list[Any] = []
        self.spatial = {n for n, sql in self.columns.items() if sql == geometry_sql}
        self.spatial |= {n for n, k in self.types.items() if k == "geometry"}

    # conditions
    def condition(self, node: Any) -> str:
        if isinstance(node, NotTrue):
            return f"(NOT COALESCE({self.condition(node.sub_node)}, FALSE))"
        if isinstance(node, ast.Not):
            return f"(NOT {self.condition(node.sub_node)})"
        if isinstance(node, ast.And | ast.Or):
            op = "AND" if isinstance(node, ast.And) else "OR"
            return f"({self.condition(node.lhs)} {op} {self.condition(node.rhs)})"
        if isinstance(node, ast.Include):
            return "FALSE" if node.not_ else "TRUE"
        if isinstance(node, ast.Comparison):
            return self.comparison(node)
        if isinstance(node, ast.Like):
            return self.like(node)
        if isinstance(node, ast.Between):
            lhs, low, high = (self.expr(n) for n in (node.lhs, node.low, node.high))
            self.same_group(lhs, low, high, what="BETWEEN")
            neg = "NOT " if node.not_ else ""
            return f"({lhs[0]} {neg}BETWEEN {low[0]} AND {high[0]})"
        if isinstance(node, ast.In):
            lhs = self.expr(node.lhs)
            if not node.sub_nodes:
                return "TRUE" if node.not_ else "FALSE"
            items = [self.expr(n) for n in node.sub_nodes]
            self.same_group(lhs, *items, what="IN")
            neg = "NOT " if node.not_ else ""
            return f"({lhs[0]} {neg}IN ({', '.join(s for s, _ in items)}))"
        if isinstance(node, ast.IsNull):
            sql, _ = self.expr(node.lhs)
            return f"({sql} IS {'NOT ' if node.not_ else ''}NULL)"
        if isinstance(node, ast.SpatialComparisonPredicate):
            return self.spatial_predicate(type(node), node.lhs, node.rhs)
        if isinstance(node, ast.SpatialDistancePredicate):
            return self.distance(node)
        if isinstance(node, ast.BBox):
            box = _box([node.minx, node.miny, node.maxx, node.maxy])
            return self.spatial_predicate(ast.GeometryIntersects, node.lhs, box)
        if isinstance(node, ast.TemporalPredicate):
            return self.temporal(node)
        if isinstance(node, ast.Attribute | ast.Function) or _is_literal(node):
            sql, kind = self.expr(node)
            if kind not in (None, "boolean"):
                raise InvalidInput(f"{_show(node)} is a {kind}, not a condition")
            return f"({sql} = TRUE)"
        raise InvalidInput(
            f"{type(node).__name__} is not supported in filters here",
            hint="comparisons, LIKE, IN, BETWEEN, IS NULL, AND/OR/NOT, S_* spatial and"
            " T_BEFORE/T_AFTER/T_DURING/T_EQUALS/T_INTERSECTS temporal predicates",
        )

    def comparison(self, node: ast.Comparison) -> str:
        lhs, rhs = self.expr(node.lhs), self.expr(node.rhs)
        if "geometry" in (lhs[1], rhs[1]):
            raise InvalidInput("geometries are compared with S_EQUALS, not =")
        self.same_group(lhs, rhs, what=_COMPARISON_SQL[type(node)])
        return f"({lhs[0]} {_COMPARISON_SQL[type(node)]} {rhs[0]})"

    def like(self, node: ast.Like) -> str:
        lhs, pattern = self.expr(node.lhs), self.expr(node.pattern)
        for side in (lhs, pattern):
            if side[1] not in (None, "string"):
                raise InvalidInput(f"LIKE compares strings, not a {side[1]}")
        op = ("NOT " if node.not_ else "") + ("ILIKE" if node.nocase else "LIKE")
        return f"({lhs[0]} {op} {pattern[0]} ESCAPE '\\')"

    # expressions: (sql, kind)
    def expr(self, node: Any) -> tuple[str, str | None]:
        if isinstance(node, ast.Attribute):
            return self.attribute(str(node.name))
        if isinstance(node, ast.Function):
            return self.function(node)
        if isinstance(node, ast.Arithmetic):
            lhs, rhs = self.expr(node.lhs), self.expr(node.rhs)
            for side in (lhs, rhs):
                if side[1] not in (None, "number", "integer"):
                    raise InvalidInput(f"arithmetic needs numbers, not a {side[1]}")
            return f"({lhs[0]} {_ARITHMETIC_SQL[type(node)]} {rhs[0]})", "number"
        if is_geometry_literal(node):
            return self.geometry_param(geometry_of(node)), "geometry"
        if isinstance(node, values.Interval):
            raise InvalidInput("an interval is only an operand of a T_ predicate")
        if isinstance(node, bool):
            return self.param(node), "boolean"
        if isinstance(node, int):
            return self.param(node if abs(node) < 2**63 else float(node)), "number"
        if isinstance(node, float):
            if not math.isfinite(node):
                raise InvalidInput("numbers in filters must be finite")
            return self.param(node), "number"
        if isinstance(node, str):
            return self.param(node), "string"
        if isinstance(node, dt.datetime):
            return self.param(_naive_utc(node)), "timestamp"
        if isinstance(node, dt.date):
            return self.param(node), "date"
        if isinstance(node, ast.Node):  # a condition where a value belongs
            raise InvalidInput(f"{type(node).__name__} is a condition, not a value")
        raise InvalidInput(f"unsupported value {node!r} in the filter")

    def attribute(self, name: str) -> tuple[str, str | None]:
        if name not in self.columns:
            raise InvalidInput(
                f"unknown property {name!r} in the filter",
                hint=f"queryables: {', '.join(sorted(self.columns))}",
            )
        kind = self.types.get(name)
        if kind is None and name in self.spatial:
            kind = "geometry"
        sql = self.columns[name]
        if isinstance(sql, tuple):  # a computed column with its own parameters
            sql, params = sql
            self.params.extend(params)
        return sql, kind

    def function(self, node: ast.Function) -> tuple[str, str | None]:
        name = node.name.lower()
        if name == "bbox":
            return self.geometry_param(geometry_of(node)), "geometry"
        if name not in FUNCTIONS or len(node.arguments) != 1:
            raise InvalidInput(
                f"unknown function {node.name}({len(node.arguments)} arguments)",
                hint=f"functions: {', '.join(f'{f.upper()}(string)' for f in FUNCTIONS)}",
            )
        sql, kind = self.expr(node.arguments[0])
        if kind not in (None, "string"):
            raise InvalidInput(f"{node.name.upper()} takes a string, not a {kind}")
        return f"{FUNCTIONS[name]}({sql})", "string"

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "?"

    def geometry_param(self, geom: shapely.Geometry) -> str:
        return f"ST_GeomFromWKB({self.param(shapely.to_wkb(geom))})"

    def same_group(self, *sides: tuple[str, str | None], what: str) -> None:
        kinds = {_GROUP.get(k, k) for _, k in sides if k is not None}
        if len(kinds) > 1:
            raise InvalidInput(
                f"{what} of values of different types ({', '.join(sorted(kinds))})",
                hint="compare numbers with numbers, strings with strings, times with"
                " TIMESTAMP('...') or DATE('...')",
            )

    # spatial
    def geometry_operand(self, node: Any) -> str:
        """SQL of a spatial operand."""
        if is_geometry_literal(node):
            return self.geometry_param(geometry_of(node))
        sql, kind = self.expr(node)
        if kind not in (None, "geometry"):
            raise InvalidInput(f"spatial predicates compare geometries, not a {kind}")
        return sql

    def own_geometry(self, node: Any) -> bool:
        """Whether ``node`` is the table's geometry (prunable by the bbox columns)."""
        return (
            isinstance(node, ast.Attribute)
            and self.columns.get(str(node.name)) == self.geometry_sql
        )

    def spatial_predicate(self, op: type, lhs: Any, rhs: Any) -> str:
        if self.geometry_sql is None:
            raise InvalidInput("this table has no geometry to filter on")
        if is_geometry_literal(lhs) and not is_geometry_literal(rhs):
            lhs, rhs, op = rhs, lhs, _CONVERSE.get(op, op)
        if is_geometry_literal(lhs) and is_geometry_literal(rhs):
            a, b = geometry_of(lhs), geometry_of(rhs)
            result = _SHAPELY[op](a, b)
            return "TRUE" if bool(result) else "FALSE"
        prune = ""  # first: its parameters come first in the SQL
        if self.own_geometry(lhs) and self.bbox is not None and is_geometry_literal(rhs):
            prune = self.prune(op, geometry_of(rhs)) + " AND "
        a_sql, b_sql = self.geometry_operand(lhs), self.geometry_operand(rhs)
        exact = f"{_SPATIAL_SQL[op]}({a_sql}, {b_sql})"
        if op is ast.GeometryDisjoint:
            return f"(NOT ({prune}{exact}))"
        return f"({prune}{exact})"

    def prune(self, op: type, geom: shapely.Geometry, grow: float = 0.0) -> str:
        """The bounding-box condition every feature satisfying ``op`` against ``geom`` meets."""
        assert self.bbox is not None
        minx, miny, maxx, maxy = self.bbox
        gx0, gy0, gx1, gy1 = (float(v) for v in shapely.bounds(geom))
        gx0, gy0, gx1, gy1 = gx0 - grow, gy0 - grow, gx1 + grow, gy1 + grow
        if op is ast.GeometryWithin:
            return (
                f"{minx} >= {self.param(gx0)} AND {maxx} <= {self.param(gx1)}"
                f" AND {miny} >= {self.param(gy0)} AND {maxy} <= {self.param(gy1)}"
            )
        if op is ast.GeometryContains:
            return (
                f"{minx} <= {self.param(gx0)} AND {maxx} >= {self.param(gx1)}"
                f" AND {miny} <= {self.param(gy0)} AND {maxy} >= {self.param(gy1)}"
            )
        return (
            f"{minx} <= {self.param(gx1)} AND {maxx} >= {self.param(gx0)}"
            f" AND {miny} <= {self.param(gy1)} AND {maxy} >= {self.param(gy0)}"
        )

    def distance(self, node: ast.SpatialDistancePredicate) -> str:
        if self.geometry_sql is None:
            raise InvalidInput("this table has no geometry to filter on")
        units = str(node.units or "m").lower()
        if units not in _METRES:
            raise InvalidInput(f"distance units {node.units!r}", hint="give distances in metres")
        d = float(node.distance)
        if not math.isfinite(d) or d < 0:
            raise InvalidInput(f"distance {node.distance!r} must be a number >= 0")
        lhs, rhs = node.lhs, node.rhs
        if is_geometry_literal(lhs):
            lhs, rhs = rhs, lhs
        prune = ""
        if self.own_geometry(lhs) and self.bbox is not None and is_geometry_literal(rhs):
            prune = self.prune(ast.GeometryIntersects, geometry_of(rhs), grow=d) + " AND "
        a_sql, b_sql = self.geometry_operand(lhs), self.geometry_operand(rhs)
        within = f"({prune}ST_DWithin({a_sql}, {b_sql}, {self.param(d)}))"
        return within if isinstance(node, ast.DistanceWithin) else f"(NOT {within})"

    # temporal
    def temporal(self, node: ast.TemporalPredicate) -> str:
        lhs, rhs = node.lhs, node.rhs
        if isinstance(lhs, values.Interval) and not isinstance(rhs, values.Interval):
            raise InvalidInput("put the property first: <property> T_... <instant or interval>")
        a, kind = self.expr(lhs)
        if kind not in (None, "timestamp", "date"):
            raise InvalidInput(f"temporal predicates take times, not a {kind}")
        op = type(node)
        if isinstance(rhs, values.Interval):
            start = None if rhs.start is None else self.instant(rhs.start)
            end = None if rhs.end is None else self.instant(rhs.end)
            after_start = f"{a} >= {start}" if start else "TRUE"
            before_end = f"{a} <= {end}" if end else "TRUE"
            if op is ast.TimeBefore:
                return f"({a} < {start})" if start else "FALSE"
            if op is ast.TimeAfter:
                return f"({a} > {end})" if end else "FALSE"
            if op is ast.TimeDuring:
                inside = [f"{a} > {start}" if start else "TRUE", f"{a} < {end}" if end else "TRUE"]
                return f"({' AND '.join(inside)})"
            if op in (ast.TimeOverlaps, ast.TimeOverlappedBy):
                return f"({after_start} AND {before_end})"
            if op is ast.TimeDisjoint:
                return f"(NOT ({after_start} AND {before_end}))"
        else:
            b = self.instant(rhs)
            simple = {
                ast.TimeBefore: "<",
                ast.TimeAfter: ">",
                ast.TimeEquals: "=",
                ast.TimeOverlaps: "=",
                ast.TimeDisjoint: "<>",
            }
            if op in simple:
                return f"({a} {simple[op]} {b})"
        raise InvalidInput(
            f"{op.__name__} needs interval properties; properties here are instants",
            hint="use T_BEFORE, T_AFTER, T_EQUALS, T_DURING, T_INTERSECTS or T_DISJOINT",
        )

    def instant(self, value: Any) -> str:
        if isinstance(value, ast.Attribute):
            sql, kind = self.attribute(str(value.name))
            if kind not in (None, "timestamp", "date"):
                raise InvalidInput(f"{value.name!r} is a {kind}, not a time")
            return sql
        if isinstance(value, dt.datetime):
            return self.param(_naive_utc(value))
        if isinstance(value, dt.date):
            return self.param(value)
        raise InvalidInput(f"{value!r} is not an instant", hint="TIMESTAMP('...') or DATE('...')")


_SHAPELY: dict[type, Callable[[Any, Any], Any]] = {
    ast.GeometryIntersects: shapely.intersects,
    ast.GeometryDisjoint: shapely.disjoint,
    ast.GeometryContains: shapely.contains,
    ast.GeometryWithin: shapely.within,
    ast.GeometryTouches: shapely.touches,
    ast.GeometryCrosses: shapely.crosses,
    ast.GeometryOverlaps: shapely.overlaps,
    ast.GeometryEquals: shapely.equals,
}


def _is_literal(node: Any) -> bool:
    return isinstance(node, bool | int | float | str | dt.date)


def _naive_utc(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def _show(node: Any) -> str:
    return repr(node.name) if isinstance(node, ast.Attribute) else repr(node)

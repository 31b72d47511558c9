"""The OData query language of the SensorThings API 1.1 (§9.3), parsed into backend-neutral form.

- ``parse_filter``: a ``$filter`` expression as a pygeofilter AST (``pygeofilter.ast``):
  ``eq ne gt ge lt le`` (``x eq null``: IS NULL), ``and or not``, parentheses, ``add sub mul div
  mod``, ``in (...)``; string functions (``substringof contains startswith endswith length
  indexof substring tolower toupper trim concat``; a literal needle becomes a LIKE), date
  functions (``year month day hour minute second fractionalseconds date time
  totaloffsetminutes now mindatetime maxdatetime``), ``round floor ceiling``, and geometry
  (``geo.intersects geo.distance geo.length st_equals st_disjoint st_touches st_within
  st_overlaps st_crosses st_intersects st_contains st_relate`` with ``geography'POINT(...)'``
  literals, WGS84 longitude/latitude). Literals: ``'text'`` (``''`` inside), numbers,
  ``true false null``, ISO 8601 datetimes (``2025-06-02T22:00:00Z``), dates, times of day and
  ``duration'PT1H'``. Property paths (``Datastream/Thing/name``, ``properties/network``) become
  ``ast.Attribute`` with ``/``-separated names; ``id`` is spelt ``@iot.id``.
- ``parse_orderby``, ``parse_select``, ``parse_expand`` (nested, options in parentheses
  separated by ``;``), and ``parse_options`` for all of a request's ``$`` options.
- ``parse_path``: a resource path (``Things('a')/Datastreams``) into segments.

Every error is an ``InvalidInput`` (a 400) naming the option, the position and what was
expected.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import shapely
from pygeofilter import ast, values
from pygeofilter.util import RE_ISO_8601, parse_duration

from citytwin.errors import InvalidInput
from citytwin.sensing.entities import MAX_TOP

OPTIONS = ("$filter", "$expand", "$select", "$orderby", "$top", "$skip", "$count")
"""The query options understood."""
MAX_OPTION_CHARS = 100_000

_TOKEN = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<typed>(?i:geography|geometry|duration)'(?:[^']|'')*')"
    r"|(?P<str>'(?:[^']|'')*')"
    r"|(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r"|(?P<date>\d{4}-\d{2}-\d{2})"
    r"|(?P<tod>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)"
    r"|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_@$][\w.@$]*(?:/[A-Za-z_@$][\w.@$]*)*)"
    r"|(?P<op>[(),\-])"
)
_COMPARISONS: dict[str, type[ast.Comparison]] = {
    "eq": ast.Equal,
    "ne": ast.NotEqual,
    "gt": ast.GreaterThan,
    "ge": ast.GreaterEqual,
    "lt": ast.LessThan,
    "le": ast.LessEqual,
}
_ARITHMETIC: dict[str, type[ast.Arithmetic] | None] = {
    "add": ast.Add,
    "sub": ast.Sub,
    "mul": ast.Mul,
    "div": ast.Div,
    "mod": None,  # no pygeofilter node: Function("mod")
}
_KEYWORDS = {"and", "or", "not", "in", "asc", "desc", *_COMPARISONS, *_ARITHMETIC}
_SPATIAL: dict[str, type[ast.SpatialComparisonPredicate]] = {
    "geo.intersects": ast.GeometryIntersects,
    "st_intersects": ast.GeometryIntersects,
    "st_equals": ast.GeometryEquals,
    "st_disjoint": ast.GeometryDisjoint,
    "st_touches": ast.GeometryTouches,
    "st_within": ast.GeometryWithin,
    "st_overlaps": ast.GeometryOverlaps,
    "st_crosses": ast.GeometryCrosses,
    "st_contains": ast.GeometryContains,
}
FUNCTIONS: dict[str, tuple[int, int]] = {
    **{name: (1, 1) for name in ("length", "tolower", "toupper", "trim")},
    **{name: (2, 2) for name in ("substringof", "contains", "startswith", "endswith")},
    "indexof": (2, 2),
    "substring": (2, 3),
    "concat": (2, 2),
    **{
        name: (1, 1)
        for name in ("year", "month", "day", "hour", "minute", "second", "fractionalseconds")
    },
    **{name: (1, 1) for name in ("date", "time", "totaloffsetminutes")},
    "now": (0, 0),
    "mindatetime": (1, 1),
    "maxdatetime": (1, 1),
    **{name: (1, 1) for name in ("round", "floor", "ceiling")},
    "geo.distance": (2, 2),
    "geo.length": (1, 1),
    **{name: (2, 2) for name in _SPATIAL},
    "st_relate": (3, 3),
}
"""Functions of ``$filter`` with their least and most arguments."""
BOOLEAN_FUNCTIONS = ("contains", "startswith", "endswith")
"""Functions (``ast.Function`` names after parsing) whose value is a condition."""
LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


class _Parser:
    """Recursive descent over the tokens of one option's text."""

    def __init__(
        self,
        text: str,
        option: str,
        to_twin: Callable[[shapely.Geometry], shapely.Geometry] | None = None,
    ) -> None:
        self.text = text
        self.option = option
        self.to_twin = to_twin
        self.tokens = self._tokenize(text)
        self.i = 0

    # -- tokens ---------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[_Token]:
        out: list[_Token] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                if text[pos] == "'":
                    self._fail(pos, "a text literal is not closed", "end it with '")
                if text[pos] == "/" and out and out[-1].kind == "datetime":
                    self._fail(
                        pos,
                        "time intervals are not supported here",
                        "compare with instants: phenomenonTime ge A and phenomenonTime lt B",
                    )
                self._fail(pos, f"unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                out.append(_Token(m.lastgroup or "", m.group(), pos))
            pos = m.end()
        out.append(_Token("end", "", len(text)))
        return out

    def _fail(self, pos: int, message: str, hint: str | None = None) -> None:
        near = self.text[max(0, pos - 20) : pos + 20]
        raise InvalidInput(
            f"{self.option}: {message} at position {pos + 1} (near {near!r})",
            hint=hint or "see OGC SensorThings API 1.1, §9.3.3 (query options)",
        )

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.peek()
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        """Whether the next token is one of ``words`` (a keyword); takes it if so."""
        tok = self.peek()
        if tok.kind == "name" and tok.text.lower() in words:
            self.i += 1
            return True
        return False

    def expect(self, text: str) -> _Token:
        tok = self.take()
        if tok.text != text:
            self._fail(tok.pos, f"expected {text!r}, found {tok.text or 'the end'!r}")
        return tok

    def end(self) -> None:
        tok = self.peek()
        if tok.kind != "end":
            self._fail(tok.pos, f"unexpected {tok.text!r} after a complete expression")

    # -- grammar --------------------------------------------------------------------------
    def condition(self) -> ast.Node:
        """A whole condition (``$filter``)."""
        start = self.peek().pos
        node = self.or_()
        self.end()
        self._need_condition(node, start)
        return node

    def or_(self) -> Any:
        node = self.and_()
        while True:
            tok = self.peek()
            if not self.word("or"):
                return node
            rhs = self.and_()
            self._need_condition(node, tok.pos)
            self._need_condition(rhs, tok.pos)
            node = ast.Or(node, rhs)

    def and_(self) -> Any:
        node = self.not_()
        while True:
            tok = self.peek()
            if not self.word("and"):
                return node
            rhs = self.not_()
            self._need_condition(node, tok.pos)
            self._need_condition(rhs, tok.pos)
            node = ast.And(node, rhs)

    def not_(self) -> Any:
        tok = self.peek()
        if self.word("not"):
            node = self.not_()
            self._need_condition(node, tok.pos)
            return ast.Not(node)
        return self.comparison()

    def comparison(self) -> Any:
        lhs = self.additive()
        tok = self.peek()
        if tok.kind == "name" and tok.text.lower() in _COMPARISONS:
            self.take()
            rhs = self.additive()
            return self._compare(tok, lhs, rhs)
        if self.word("in"):
            self.expect("(")
            items = [self.additive()]
            while self.peek().text == ",":
                self.take()
                items.append(self.additive())
            self.expect(")")
            for item in [lhs, *items]:
                if is_condition(item):
                    self._fail(tok.pos, "'in' compares values, not conditions")
            return ast.In(lhs, items, False)
        return lhs

    def _compare(self, tok: _Token, lhs: Any, rhs: Any) -> Any:
        op = tok.text.lower()
        for side, other in ((lhs, rhs), (rhs, lhs)):
            if side is None and not is_condition(other):
                if op not in ("eq", "ne"):
                    self._fail(tok.pos, f"null can only be compared with eq or ne, not {op}")
                return ast.IsNull(other, op == "ne")
            if isinstance(side, bool) and is_condition(other):  # cond eq true
                if op not in ("eq", "ne"):
                    self._fail(tok.pos, f"a condition can't be compared with {op}")
                return other if side == (op == "eq") else ast.Not(other)
        for side in (lhs, rhs):
            if is_condition(side):
                self._fail(tok.pos, f"{op} compares values, not conditions")
        return _COMPARISONS[op](lhs, rhs)

    def additive(self) -> Any:
        node = self.multiplicative()
        while True:
            tok = self.peek()
            if not self.word("add", "sub"):
                return node
            node = self._arith(tok, node, self.multiplicative())

    def multiplicative(self) -> Any:
        node = self.unary()
        while True:
            tok = self.peek()
            if not self.word("mul", "div", "mod"):
                return node
            node = self._arith(tok, node, self.unary())

    def _arith(self, tok: _Token, lhs: Any, rhs: Any) -> Any:
        op = tok.text.lower()
        for side in (lhs, rhs):
            if is_condition(side) or side is None or isinstance(side, str | bool):
                self._fail(tok.pos, f"{op} needs numbers, times or durations on both sides")
        cls = _ARITHMETIC[op]
        return ast.Function("mod", [lhs, rhs]) if cls is None else cls(lhs, rhs)

    def unary(self) -> Any:
        tok = self.peek()
        if tok.text == "-":
            self.take()
            value = self.unary()
            if value is None or isinstance(value, str | bool) or is_condition(value):
                self._fail(tok.pos, "'-' needs a number or a duration")
            if isinstance(value, int | float | dt.timedelta):
                return -value
            return ast.Mul(-1, value)
        return self.primary()

    def primary(self) -> Any:
        tok = self.take()
        kind = tok.kind
        if tok.text == "(":
            node = self.or_()
            self.expect(")")
            return node
        if kind == "str":
            return tok.text[1:-1].replace("''", "'")
        if kind == "num":
            return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)
        if kind == "datetime":
            return self._datetime(tok)
        if kind == "date":
            try:
                return dt.date.fromisoformat(tok.text)
            except ValueError:
                self._fail(tok.pos, f"{tok.text} is not a date")
        if kind == "tod":
            try:
                return dt.time.fromisoformat(tok.text)
            except ValueError:
                self._fail(tok.pos, f"{tok.text} is not a time of day")
        if kind == "typed":
            return self._typed(tok)
        if kind == "name":
            low = tok.text.lower()
            if low in ("true", "false"):
                return low == "true"
            if low == "null":
                return None
            if self.peek().text == "(":
                return self._function(tok)
            if low in _KEYWORDS:
                self._fail(tok.pos, f"expected a value, found the keyword {tok.text!r}")
            return ast.Attribute(property_path(tok.text))
        self._fail(tok.pos, f"expected a value, found {tok.text or 'the end'!r}")

    def _datetime(self, tok: _Token) -> dt.datetime:
        text = tok.text.replace("Z", "+00:00")
        m = re.match(r"(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)", text)
        if m:  # Python takes at most 6 decimals
            text = f"{m.group(1)}.{m.group(2)[:6].ljust(6, '0')}{m.group(3)}"
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            self._fail(tok.pos, f"{tok.text} is not a valid time")
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)

    def _typed(self, tok: _Token) -> Any:
        prefix, _, rest = tok.text.partition("'")
        body = rest[:-1].replace("''", "'")
        if prefix.lower() == "duration":
            m = RE_ISO_8601.match(body)
            if not m or body in ("P", "PT"):
                self._fail(tok.pos, f"{body!r} is not an ISO 8601 duration", "e.g. PT1H, P1D")
            if m.group("years") or m.group("months"):
                self._fail(tok.pos, "durations in months or years are ambiguous", "use days")
            return parse_duration(body)
        srid = re.match(r"\s*SRID=(\d+);", body, re.I)
        if srid:
            if srid.group(1) != "4326":
                self._fail(
                    tok.pos,
                    f"SRID={srid.group(1)}: geometry literals are in WGS84",
                    "give longitude and latitude (SRID=4326), or leave SRID out",
                )
            body = body[srid.end() :]
        try:
            geom = shapely.from_wkt(body)
        except shapely.errors.ShapelyError as exc:
            self._fail(tok.pos, f"{body!r} is not WKT: {exc}")
        if geom is None or geom.is_empty:
            self._fail(tok.pos, "the geometry is empty")
        if self.to_twin is not None:
            geom = self.to_twin(geom)
        return values.Geometry(shapely.geometry.mapping(geom))

    def _function(self, tok: _Token) -> Any:
        name = tok.text.lower()
        if name not in FUNCTIONS:
            self._fail(
                tok.pos,
                f"unknown function {tok.text!r}",
                f"functions: {', '.join(sorted(FUNCTIONS))}",
            )
        self.expect("(")
        args: list[Any] = []
        if self.peek().text != ")":
            args.append(self.or_())
            while self.peek().text == ",":
                self.take()
                args.append(self.or_())
        self.expect(")")
        least, most = FUNCTIONS[name]
        if not least <= len(args) <= most:
            n = str(least) if least == most else f"{least} to {most}"
            self._fail(tok.pos, f"{name} takes {n} argument(s), got {len(args)}")
        for arg in args:
            if is_condition(arg):
                self._fail(tok.pos, f"the arguments of {name} are values, not conditions")
        return _function_node(name, args, lambda msg: self._fail(tok.pos, msg))

    def _need_condition(self, node: Any, pos: int) -> None:
        if not is_condition(node):
            self._fail(
                pos,
                f"{_describe(node)} is not a condition",
                "compare it (eq, ne, gt, ge, lt, le) or use a function such as startswith",
            )


def _function_node(name: str, args: list[Any], fail: Callable[[str], None]) -> Any:
    """The AST of a function call: LIKE for string tests of a literal, spatial predicates,
    ``ast.Function`` for the rest."""
    if name in ("substringof", "contains", "startswith", "endswith"):
        haystack, needle = (args[1], args[0]) if name == "substringof" else (args[0], args[1])
        name = "contains" if name == "substringof" else name
        if isinstance(needle, str):
            esc = _like_escape(needle)
            pattern = {"contains": f"%{esc}%", "startswith": f"{esc}%", "endswith": f"%{esc}"}
            return ast.Like(haystack, pattern[name], False, "%", "_", LIKE_ESCAPE, False)
        return ast.Function(name, [haystack, needle])
    if name in _SPATIAL:
        return _SPATIAL[name](args[0], args[1])
    if name == "st_relate":
        if not isinstance(args[2], str) or not re.fullmatch(r"[012TF*]{9}", args[2]):
            fail("st_relate needs a DE-9IM pattern of 9 characters (012TF*) as its third argument")
        return ast.Relate(args[0], args[1], args[2])
    return ast.Function(name, args)


def _like_escape(text: str) -> str:
    return "".join(LIKE_ESCAPE + c if c in "%_" + LIKE_ESCAPE else c for c in text)


def is_condition(node: Any) -> bool:
    """Whether ``node`` is a condition (true or false) rather than a value."""
    if isinstance(node, ast.Function):
        return node.name in BOOLEAN_FUNCTIONS
    return isinstance(node, ast.Condition | ast.Predicate)


def _describe(node: Any) -> str:
    if isinstance(node, ast.Attribute):
        return f"the property {node.name!r}"
    if isinstance(node, ast.Function):
        return f"the value of {node.name}()"
    if isinstance(node, ast.Node):
        return "an arithmetic expression"
    return f"the literal {node!r}"


def property_path(text: str) -> str:
    """A property path with ``id`` spelt ``@iot.id`` (``Datastream/id`` ->
    ``Datastream/@iot.id``)."""
    return "/".join("@iot.id" if part == "id" else part for part in text.split("/"))


# -- the options ------------------------------------------------------------------------------
def parse_filter(
    text: str,
    to_twin: Callable[[shapely.Geometry], shapely.Geometry] | None = None,
    *,
    option: str = "$filter",
) -> ast.Node:
    """A ``$filter`` as a pygeofilter AST; ``to_twin`` reprojects geometry literals (WGS84)
    into the twin's CRS."""
    if not text.strip():
        raise InvalidInput(f"{option} is empty", hint="give a condition, e.g. name eq 'x'")
    return _Parser(text, option, to_twin).condition()


def parse_orderby(text: str, *, option: str = "$orderby") -> tuple[tuple[Any, bool], ...]:
    """``$orderby``: (expression, descending) pairs; expressions are property paths
    (``ast.Attribute``) or other value expressions."""
    p = _Parser(text, option)
    out: list[tuple[Any, bool]] = []
    while True:
        tok = p.peek()
        expr = p.additive()
        if is_condition(expr) or not isinstance(expr, ast.Node):
            p._fail(tok.pos, "order by a property, e.g. phenomenonTime desc")
        desc = False
        if p.word("desc"):
            desc = True
        else:
            p.word("asc")
        out.append((expr, desc))
        if p.peek().kind == "end":
            return tuple(out)
        p.expect(",")


def parse_select(text: str, *, option: str = "$select") -> tuple[str, ...]:
    """``$select``: property (and navigation property) names, ``id`` as ``@iot.id``."""
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not re.fullmatch(r"[A-Za-z_@][\w.@]*", n):
            raise InvalidInput(
                f"{option}: {n!r} is not a property name",
                hint="list property names separated by commas, e.g. $select=id,name",
            )
    return tuple(dict.fromkeys(property_path(n) for n in names))


@dataclass(frozen=True)
class Expand:
    """One ``$expand`` item: a navigation property and the options applied to what it leads
    to."""

    navigation: str
    options: QueryOptions


@dataclass(frozen=True)
class QueryOptions:
    """The query options of a request (or of an expanded navigation property)."""

    filter: Any = None
    orderby: tuple[tuple[Any, bool], ...] = ()
    select: tuple[str, ...] | None = None
    expand: tuple[Expand, ...] = ()
    top: int | None = None
    skip: int = 0
    count: bool = False
    raw: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def parse_expand(
    text: str,
    to_twin: Callable[[shapely.Geometry], shapely.Geometry] | None = None,
    *,
    option: str = "$expand",
) -> tuple[Expand, ...]:
    """``$expand``: items separated by commas, each a navigation path (``Datastreams`` or
    ``Datastreams/Observations``) with options in parentheses separated by ``;``."""
    merged: dict[str, Expand] = {}
    for item, pos in _split(text, ",", option):
        m = re.fullmatch(r"\s*([A-Za-z]\w*(?:/[A-Za-z]\w*)*)\s*(?:\((.*)\))?\s*", item, re.S)
        if m is None:
            raise InvalidInput(
                f"{option}: {item.strip()!r} (at position {pos + 1}) is not a navigation"
                " property with options",
                hint="e.g. Datastreams($top=1;$orderby=name) or Datastreams/Observations",
            )
        path = m.group(1).split("/")
        where = f"{option}={'/'.join(path)}"
        opts = QueryOptions()
        if m.group(2) is not None:
            params = {}
            for part, _ in _split(m.group(2), ";", where):
                key, eq, value = part.strip().partition("=")
                if not eq:
                    raise InvalidInput(
                        f"{where}: {part.strip()!r} is not an option",
                        hint="write options as $name=value separated by ;",
                    )
                if key in params:
                    raise InvalidInput(f"{where}: {key} is given twice")
                params[key] = value
            opts = parse_options(params, to_twin, where=where)
        for nav in reversed(path[1:]):
            opts = QueryOptions(expand=(Expand(nav, opts),))
        merged[path[0]] = _merge(merged.get(path[0]), Expand(path[0], opts))
    return tuple(merged.values())


def _merge(old: Expand | None, new: Expand) -> Expand:
    """Two items expanding the same navigation property (``Datastreams,
    Datastreams/Observations``): the explicit options, and both nested expansions."""
    if old is None:
        return new
    base = old.options if old.options.raw else new.options
    nested: dict[str, Expand] = {}
    for e in (*old.options.expand, *new.options.expand):
        nested[e.navigation] = _merge(nested.get(e.navigation), e)
    return Expand(new.navigation, replace(base, expand=tuple(nested.values())))


def _split(text: str, sep: str, option: str) -> list[tuple[str, int]]:
    """``text`` cut at ``sep`` outside quotes and parentheses (item, start position)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted  # '' inside a literal toggles twice
        elif quoted:
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise InvalidInput(f"{option}: unbalanced ')' at position {i + 1}")
        elif c == sep and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
    if quoted:
        raise InvalidInput(f"{option}: a text literal is not closed", hint="end it with '")
    if depth:
        raise InvalidInput(f"{option}: a '(' is not closed")
    parts.append((text[start:], start))
    for part, pos in parts:
        if not part.strip():
            raise InvalidInput(f"{option}: an empty item at position {pos + 1}")
    return parts


def parse_options(
    params: Mapping[str, str],
    to_twin: Callable[[shapely.Geometry], shapely.Geometry] | None = None,
    *,
    where: str = "",
) -> QueryOptions:
    """The ``$`` options among ``params`` (others are left alone); ``where`` prefixes the
    option names in errors (for options inside ``$expand``)."""
    try:
        return _parse_options(params, to_twin, where)
    except RecursionError:
        if where:  # reported once, by the outermost options
            raise
        raise InvalidInput("the query options are nested too deeply") from None


def _parse_options(
    params: Mapping[str, str],
    to_twin: Callable[[shapely.Geometry], shapely.Geometry] | None,
    where: str,
) -> QueryOptions:
    raw = tuple((k, v) for k, v in params.items() if k.startswith("$"))
    for k, v in raw:
        if len(v) > MAX_OPTION_CHARS:
            raise InvalidInput(f"{k} is longer than {MAX_OPTION_CHARS:,} characters")
    unknown = [k for k, _ in raw if k not in OPTIONS]
    if unknown:
        raise InvalidInput(
            f"{where + ': ' if where else ''}unknown query option {unknown[0]}",
            hint=f"options: {', '.join(OPTIONS)}",
        )
    opts = dict(raw)

    def name(option: str) -> str:
        return f"{where}({option})" if where else option

    def integer(option: str, default: int | None) -> int | None:
        text = opts.get(option)
        if text is None:
            return default
        if not re.fullmatch(r"\s*\d{1,12}\s*", text):
            raise InvalidInput(
                f"{name(option)}={text!r}: expected a whole number of 0 or more",
                hint=f"e.g. {option}=10",
            )
        return int(text)

    count = opts.get("$count", "false").strip().lower()
    if count not in ("true", "false"):
        raise InvalidInput(f"{name('$count')}={opts['$count']!r}: expected true or false")
    top = integer("$top", None)
    if top is not None and top > MAX_TOP:
        top = MAX_TOP
    return QueryOptions(
        filter=parse_filter(opts["$filter"], to_twin, option=name("$filter"))
        if "$filter" in opts
        else None,
        orderby=parse_orderby(opts["$orderby"], option=name("$orderby"))
        if "$orderby" in opts
        else (),
        select=parse_select(opts["$select"], option=name("$select")) if "$select" in opts else None,
        expand=parse_expand(opts["$expand"], to_twin, option=name("$expand"))
        if "$expand" in opts
        else (),
        top=top,
        skip=integer("$skip", 0) or 0,
        count=count == "true",
        raw=raw,
    )


# -- resource paths ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One segment of a resource path: a name (an entity set, a navigation property, a
    property, ``$value`` or ``$ref``) and the id in parentheses, if any."""

    name: str
    id: str | None = None


def parse_path(path: str) -> list[Segment]:
    """``Things('a')/Datastreams(3)/name`` -> segments. Ids may be quoted (``''`` for a
    quote inside) or bare (numbers)."""
    segments: list[Segment] = []
    for text, pos in _split(path.strip("/"), "/", "the resource path"):
        m = re.fullmatch(r"([A-Za-z$][\w.]*)(?:\((.*)\))?", text, re.S)
        if m is None:
            raise InvalidInput(
                f"{text!r} (at position {pos + 1} of the path) is not an entity set, property"
                " or entity id",
                hint="e.g. /v1.1/Things('id')/Datastreams",
            )
        raw = m.group(2)
        ident = None
        if raw is not None:
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == "'":
                ident = raw[1:-1].replace("''", "'")
            elif raw and "'" not in raw:
                ident = raw
            else:
                raise InvalidInput(
                    f"{text!r}: the id must be a number or quoted ('...'; '' for a quote inside)"
                )
        segments.append(Segment(m.group(1), ident))
    return segments

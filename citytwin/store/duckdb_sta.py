"""The SensorThings API read side of the embedded store: the entity sets of
``citytwin.sensing.entities`` as SQL over the twin's tables, and their filters (pygeofilter
ASTs) as parameterised DuckDB SQL — values are always parameters.

Each entity set is a relation with properties (SQL templates: ``{a}`` is the set's alias,
``{Name}`` the alias of a to-one join, made when a template first needs it): Things and
Locations are the current rows of ``devices``, HistoricalLocations all its rows, Datastreams
the ``datastreams`` table, Observations the ``observations`` table (its Datastream joined by
the integer key), and Sensors, ObservedProperties and FeaturesOfInterest the distinct values
of the datastreams a principal may see. Property paths through to-one navigation
(``Datastream/Thing/name``) are joins; through to-many navigation
(``Datastreams/ObservedProperty/name`` on Things) an EXISTS.

How it stays fast on 1.7 M datastreams and 100 M observations:

- One query per page: the page (filter, order, skip, top + 1) is found first on the narrow
  relation, and the joins only the output needs (an Observation's datastream id, a
  FeatureOfInterest's geometry) are made for the page's rows alone.
- ``$expand`` is one query per level for the whole page: the related entities of all
  parents, paged per parent with a window (``row_number() OVER (PARTITION BY parent)``).
- The latest observation of datastreams (``Observations($top=1;$orderby=phenomenonTime
  desc)``) comes from ``latest_observations``, never from the observations.
- Conditions on ``phenomenonTime`` are plain comparisons with constants on the column, so
  DuckDB's zone maps skip the row groups (time-ordered, see ``store/duckdb.py``) outside the
  range; a Datastream's observations are found by its key, a constant; spatial conditions
  get a bounding-box condition on the Hilbert-ordered ``minx .. maxy`` columns first.
- Counts run the same conditions without the output joins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import shapely
from pygeofilter import ast, values

from citytwin.errors import InvalidInput
from citytwin.model import LAYERS
from citytwin.sensing.entities import (
    ENTITY_SETS,
    EntityPage,
    EntityRequest,
)
from citytwin.sensing.model import OBSERVED_PROPERTIES, OM
from citytwin.store.sql_filter import excluding, to_sql

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How ids with times are written (as ``citytwin.sensing.payloads.observation_ids``)."""
INLINE_VALUES = 256
"""Up to this many link values go into the SQL as a list of parameters (DuckDB pushes the
list into the scan); more go as one array parameter."""
GEO_JSON = "application/geo+json"

STR, NUM, TIME, DATE, TOD, DUR, BOOL, GEOM, JSON, NULL = (
    "text",
    "number",
    "time",
    "date",
    "time of day",
    "duration",
    "boolean",
    "geometry",
    "JSON",
    "null",
)


@dataclass(frozen=True)
class _Prop:
    """A property: its SQL template, its kind and, for geometries, the template of its
    bounding box columns (minx, miny, maxx, maxy)."""

    sql: str
    kind: str
    bbox: tuple[str, str, str, str] | None = None


@dataclass(frozen=True)
class _Join:
    """A to-one join a template can use by name: an entity set (a navigation property:
    its rows the principal may see) or a raw relation with its parameters."""

    on: str  # {a}: the owner's alias, {j}: the joined relation's
    entity_set: str | None = None
    raw: str | None = None
    params: tuple[Any, ...] = ()


@dataclass
class _SetSQL:
    """How one entity set is read."""

    source: str  # a table name or a subquery; {acc}: access condition on datastreams alias d
    where: str  # conditions every row meets
    props: dict[str, _Prop]
    columns: dict[str, str]  # FRAME_COLUMNS -> templates
    unique: tuple[str, ...]  # templates ordering the rows uniquely (after the asked order)
    network: str | None = None  # the network column (access), None: in the source
    joins: dict[str, _Join] = field(default_factory=dict)
    json_props: str | None = None  # JSON text column of further "properties/<key>"


def _geom(prefix: str = "{a}.") -> _Prop:
    return _Prop(
        f"ST_GeomFromWKB({prefix}wkb)",
        GEOM,
        (f"{prefix}minx", f"{prefix}miny", f"{prefix}maxx", f"{prefix}maxy"),
    )


_DEVICE_PROPS = ("class", "feature_id", "network", "model", "status")
_FEATURES = " UNION ALL ".join(
    f"SELECT fid, class, name, '{name}' AS layer, wkb, minx, miny, maxx, maxy FROM {name}"
    " WHERE valid_to IS NULL"
    for name in LAYERS
    if name != "devices"
)
_VOCAB = ", ".join("(?, ?)" for _ in OBSERVED_PROPERTIES)

_SETS: dict[str, _SetSQL] = {
    "Things": _SetSQL(
        source="devices",
        where="{a}.valid_to IS NULL",
        network="{a}.network",
        props={
            "@iot.id": _Prop("{a}.fid", STR),
            "name": _Prop("coalesce({a}.name, {a}.fid)", STR),
            "description": _Prop(
                "replace({a}.class, '_', ' ') || coalesce(' ' || {a}.model, '')", STR
            ),
            **{f"properties/{p}": _Prop("{a}." + p, STR) for p in _DEVICE_PROPS},
        },
        json_props="{a}.props",
        columns={
            "id": "{a}.fid",
            "name": "coalesce({a}.name, {a}.fid)",
            "description": "replace({a}.class, '_', ' ') || coalesce(' ' || {a}.model, '')",
            **{p: "{a}." + p for p in _DEVICE_PROPS},
            "props": "{a}.props",
        },
        unique=("{a}.fid",),
    ),
    "Locations": _SetSQL(
        source="devices",
        where="{a}.valid_to IS NULL",
        network="{a}.network",
        props={
            "@iot.id": _Prop("{a}.fid", STR),
            "name": _Prop("coalesce({a}.name, {a}.fid)", STR),
            "description": _Prop("'location of ' || coalesce({a}.name, {a}.fid)", STR),
            "encodingType": _Prop(f"'{GEO_JSON}'", STR),
            "location": _geom(),
        },
        columns={
            "id": "{a}.fid",
            "name": "coalesce({a}.name, {a}.fid)",
            "description": "'location of ' || coalesce({a}.name, {a}.fid)",
            "network": "{a}.network",
            "geometry": "{a}.wkb",
        },
        unique=("{a}.fid",),
    ),
    "HistoricalLocations": _SetSQL(
        source="devices",
        where="{a}.fid IN (SELECT fid FROM devices WHERE valid_to IS NULL)",
        network="{a}.network",
        props={
            "@iot.id": _Prop(
                f"{{a}}.fid || '@' || strftime({{a}}.valid_from, '{ISO_FORMAT}')", STR
            ),
            "time": _Prop("{a}.valid_from", TIME),
        },
        columns={"thing_id": "{a}.fid", "time": "{a}.valid_from"},
        unique=("{a}.fid", "{a}.valid_from"),
        joins={"Thing": _Join("{j}.fid = {a}.fid", "Things")},
    ),
    "Datastreams": _SetSQL(
        source="datastreams",
        where="TRUE",
        network="{a}.network",
        props={
            "@iot.id": _Prop("{a}.id", STR),
            "name": _Prop("coalesce({a}.name, {a}.id)", STR),
            "description": _Prop("coalesce({a}.description, '')", STR),
            "observationType": _Prop(f"'{OM}' || {{a}}.observation_type", STR),
            "unitOfMeasurement/name": _Prop("{a}.unit_name", STR),
            "unitOfMeasurement/symbol": _Prop("{a}.unit", STR),
            "unitOfMeasurement/definition": _Prop("{a}.unit_definition", STR),
            "observedArea": _Prop(
                "ST_Point(({a}.minx + {a}.maxx) / 2, ({a}.miny + {a}.maxy) / 2)",
                GEOM,
                ("{a}.minx", "{a}.miny", "{a}.maxx", "{a}.maxy"),
            ),
            **{
                f"properties/{p}": _Prop("{a}." + c, STR)
                for p, c in (
                    ("asset_id", "asset_id"),
                    ("network", "network"),
                    ("zone", "zone"),
                    ("group", "group_key"),
                    ("tags", "tags"),
                )
            },
        },
        columns={
            "key": "{a}.key",
            "id": "{a}.id",
            "name": "coalesce({a}.name, {a}.id)",
            "description": "coalesce({a}.description, '')",
            **{
                c: "{a}." + c
                for c in (
                    "thing_id",
                    "sensor_id",
                    "observed_property",
                    "unit",
                    "unit_name",
                    "unit_definition",
                    "observation_type",
                    "asset_id",
                    "network",
                    "zone",
                )
            },
            "group": "{a}.group_key",
            "tags": "{a}.tags",
            "x": "({a}.minx + {a}.maxx) / 2",
            "y": "({a}.miny + {a}.maxy) / 2",
        },
        unique=("{a}.id",),
        joins={
            "Thing": _Join("{j}.fid = {a}.thing_id", "Things"),
            "Sensor": _Join("{j}.id = {a}.sensor_id", "Sensors"),
            "ObservedProperty": _Join("{j}.id = {a}.observed_property", "ObservedProperties"),
        },
    ),
    "Sensors": _SetSQL(
        source="(SELECT d.sensor_id AS id FROM datastreams d WHERE d.sensor_id IS NOT NULL"
        " AND {acc} GROUP BY d.sensor_id)",
        where="TRUE",
        props={
            "@iot.id": _Prop("{a}.id", STR),
            "name": _Prop("replace(regexp_replace({a}.id, '^sensor:', ''), '_', ' ')", STR),
            "description": _Prop("coalesce({_models}.models, {a}.id)", STR),
            "encodingType": _Prop("'text/plain'", STR),
            "metadata": _Prop("coalesce({_models}.models, '')", STR),
        },
        columns={
            "id": "{a}.id",
            "name": "replace(regexp_replace({a}.id, '^sensor:', ''), '_', ' ')",
            "description": "coalesce({_models}.models, {a}.id)",
            "metadata": "coalesce({_models}.models, '')",
        },
        unique=("{a}.id",),
        joins={
            "_models": _Join(
                "{j}.id = {a}.id",
                raw="(SELECT 'sensor:' || class AS id, string_agg(DISTINCT model, '; '"
                " ORDER BY model) AS models FROM devices WHERE valid_to IS NULL GROUP BY class)",
            )
        },
    ),
    "ObservedProperties": _SetSQL(
        source="(SELECT d.observed_property AS id, any_value(d.property_definition) AS"
        " definition FROM datastreams d WHERE {acc} GROUP BY d.observed_property)",
        where="TRUE",
        props={
            "@iot.id": _Prop("{a}.id", STR),
            "name": _Prop("{a}.id", STR),
            "definition": _Prop("{a}.definition", STR),
            "description": _Prop("coalesce({_vocab}.description, '')", STR),
        },
        columns={
            "id": "{a}.id",
            "name": "{a}.id",
            "definition": "{a}.definition",
            "description": "coalesce({_vocab}.description, '')",
        },
        unique=("{a}.id",),
        joins={
            "_vocab": _Join(
                "{j}.id = {a}.id",
                raw=f"(SELECT * FROM (VALUES {_VOCAB}) v(id, description))",
                params=tuple(
                    x for p in OBSERVED_PROPERTIES.values() for x in (p.name, p.description)
                ),
            )
        },
    ),
    "Observations": _SetSQL(
        source="observations",
        where="TRUE",
        network=None,
        props={
            "@iot.id": _Prop(
                f"{{Datastream}}.id || '@' || strftime({{a}}.phenomenon_time, '{ISO_FORMAT}')",
                STR,
            ),
            "phenomenonTime": _Prop("{a}.phenomenon_time", TIME),
            "resultTime": _Prop("{a}.result_time", TIME),
            "result": _Prop("{a}.result", NUM),
            "resultQuality": _Prop("{a}.result_quality", STR),
        },
        columns={
            "key": "{a}.key",
            "datastream_id": "{Datastream}.id",
            "phenomenon_time": "{a}.phenomenon_time",
            "result": "{a}.result",
            "result_time": "{a}.result_time",
            "result_quality": "{a}.result_quality",
            "foi_id": "coalesce({Datastream}.asset_id, {Datastream}.thing_id)",
        },
        unique=("{a}.key",),
        joins={
            "Datastream": _Join("{j}.key = {a}.key", "Datastreams"),
            "FeatureOfInterest": _Join(
                "{j}.id = coalesce({Datastream}.asset_id, {Datastream}.thing_id)",
                "FeaturesOfInterest",
            ),
        },
    ),
    "FeaturesOfInterest": _SetSQL(
        source="(SELECT coalesce(d.asset_id, d.thing_id) AS id, any_value(d.thing_id) AS"
        " thing_id FROM datastreams d WHERE {acc} GROUP BY 1)",
        where="TRUE",
        props={
            "@iot.id": _Prop("{a}.id", STR),
            "name": _Prop("coalesce({_feature}.name, {a}.id)", STR),
            "description": _Prop(
                "coalesce({_feature}.layer || ' ' || {_feature}.class, 'location of '"
                " || {a}.thing_id)",
                STR,
            ),
            "encodingType": _Prop(f"'{GEO_JSON}'", STR),
            "feature": _Prop(
                "ST_GeomFromWKB(coalesce({_feature}.wkb, {_thing}.wkb))",
                GEOM,
                tuple(
                    f"coalesce({{_feature}}.{c}, {{_thing}}.{c})"
                    for c in ("minx", "miny", "maxx", "maxy")
                ),  # type: ignore[arg-type]
            ),
        },
        columns={
            "id": "{a}.id",
            "name": "coalesce({_feature}.name, {a}.id)",
            "description": "coalesce({_feature}.layer || ' ' || {_feature}.class, 'location of '"
            " || {a}.thing_id)",
            "layer": "coalesce({_feature}.layer, 'devices')",
            "geometry": "coalesce({_feature}.wkb, {_thing}.wkb)",
        },
        unique=("{a}.id",),
        joins={
            "_feature": _Join("{j}.fid = {a}.id", raw=f"({_FEATURES})"),
            "_thing": _Join(
                "{j}.fid = {a}.thing_id",
                raw="(SELECT fid, wkb, minx, miny, maxx, maxy FROM devices WHERE valid_to IS NULL)",
            ),
        },
    ),
}

_RELATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("Things", "Locations"): ("{a}.fid", "{a}.fid"),
    ("Things", "HistoricalLocations"): ("{a}.fid", "{a}.fid"),
    ("Things", "Datastreams"): ("{a}.thing_id", "{a}.fid"),
    ("Locations", "Things"): ("{a}.fid", "{a}.fid"),
    ("Locations", "HistoricalLocations"): ("{a}.fid", "{a}.fid"),
    ("HistoricalLocations", "Thing"): ("{a}.fid", "{a}.fid"),
    ("HistoricalLocations", "Locations"): ("{a}.fid", "{a}.fid"),
    ("Datastreams", "Thing"): ("{a}.fid", "{a}.thing_id"),
    ("Datastreams", "Sensor"): ("{a}.id", "{a}.sensor_id"),
    ("Datastreams", "ObservedProperty"): ("{a}.id", "{a}.observed_property"),
    ("Datastreams", "Observations"): ("{a}.key", "{a}.key"),
    ("Sensors", "Datastreams"): ("{a}.sensor_id", "{a}.id"),
    ("ObservedProperties", "Datastreams"): ("{a}.observed_property", "{a}.id"),
    ("Observations", "Datastream"): ("{a}.key", "{a}.key"),
    ("Observations", "FeatureOfInterest"): (
        "{a}.id",
        "coalesce({Datastream}.asset_id, {Datastream}.thing_id)",
    ),
    ("FeaturesOfInterest", "Observations"): (
        "coalesce({Datastream}.asset_id, {Datastream}.thing_id)",
        "{a}.id",
    ),
}
"""(entity set, navigation) -> (the related set's link template, the set's link template):
related rows are those whose link equals the set's."""
_LINK_SORT = {"key": "INTEGER"}


def _access(networks: tuple[str | None, ...] | None, column: str) -> tuple[str, list[Any]]:
    """``column`` among the readable networks (None in them: no network)."""
    if networks is None:
        return "TRUE", []
    names = [n for n in networks if n is not None]
    parts = []
    if names:
        parts.append(f"{column} IN ({', '.join('?' * len(names))})")
    if None in networks:
        parts.append(f"{column} IS NULL")
    return f"({' OR '.join(parts)})" if parts else "FALSE", names


class _Scope:
    """One entity set's relation in a query: its alias, the joins its templates made, and
    the access restriction."""

    def __init__(
        self,
        entity_set: str,
        networks: tuple[str | None, ...] | None,
        aliases: list[int],
        outer: _Scope | None = None,
    ) -> None:
        self.entity_set = entity_set
        self.spec = _SETS[entity_set]
        self.networks = networks
        self.aliases = aliases
        self.outer = outer
        self.alias = self.new_alias()
        self.joins: dict[str, str] = {}
        self.join_sql: list[tuple[str, list[Any]]] = []

    def new_alias(self) -> str:
        self.aliases[0] += 1
        return f"{self.entity_set[0].lower()}{self.aliases[0]}"

    def render(self, template: str, alias: str | None = None) -> str:
        """A template with its aliases filled in (joins made as needed)."""

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            return (alias or self.alias) if name == "a" else self.join(name)

        return re.sub(r"\{(\w+)\}", sub, template)

    def join(self, name: str) -> str:
        if name in self.joins:
            return self.joins[name]
        spec = self.spec.joins[name]
        on = self.render(spec.on.replace("{j}", "\x00"))  # the owner's side first
        alias = self.new_alias()
        on = on.replace("\x00", alias)
        if spec.entity_set is not None:
            source, params = relation(spec.entity_set, self.networks)
            target = _SETS[spec.entity_set]
            conds = [on, target.where.replace("{a}", alias)]
            acc, acc_params = access_condition(spec.entity_set, alias, self.networks)
            conds.append(acc)
            self.join_sql.append(
                (f" LEFT JOIN {source} {alias} ON {' AND '.join(conds)}", params + acc_params)
            )
        else:
            self.join_sql.append((f" LEFT JOIN {spec.raw} {alias} ON {on}", list(spec.params)))
        self.joins[name] = alias
        return alias

    def from_clause(self) -> tuple[str, list[Any]]:
        source, params = relation(self.entity_set, self.networks)
        sql = f"{source} {self.alias}"
        for join_sql, join_params in self.join_sql:
            sql += join_sql
            params += join_params
        return sql, params

    def base_conditions(self) -> tuple[list[str], list[Any]]:
        acc, params = access_condition(self.entity_set, self.alias, self.networks)
        return [self.spec.where.replace("{a}", self.alias), acc], params


def relation(entity_set: str, networks: tuple[str | None, ...] | None) -> tuple[str, list[Any]]:
    """The FROM item of an entity set (derived sets restricted to the readable datastreams)."""
    source = _SETS[entity_set].source
    if "{acc}" not in source:
        return source, []
    acc, params = _access(networks, "d.network")
    return source.replace("{acc}", acc), params


def access_condition(
    entity_set: str, alias: str, networks: tuple[str | None, ...] | None
) -> tuple[str, list[Any]]:
    """The rows of ``entity_set`` (as ``alias``) a principal reading ``networks`` may see."""
    if networks is None:
        return "TRUE", []
    if entity_set == "Observations":
        acc, params = _access(networks, "network")
        return f"{alias}.key IN (SELECT key FROM datastreams WHERE {acc})", params
    column = _SETS[entity_set].network
    if column is None:
        return "TRUE", []  # derived sets: restricted in their source
    return _access(networks, column.replace("{a}", alias))


# -- filters ----------------------------------------------------------------------------------
_NO_LITERAL = object()


@dataclass
class _Value:
    """A compiled value: SQL, parameters, kind; the Python value of a literal; the bounding
    box columns of a geometry property; the path of a property."""

    sql: str
    params: list[Any]
    kind: str
    literal: Any = _NO_LITERAL
    bbox: tuple[str, str, str, str] | None = None
    name: str | None = None  # the property path of a property

    @property
    def is_literal(self) -> bool:
        return self.literal is not _NO_LITERAL


_DATE_PARTS = ("year", "month", "day", "hour", "minute", "second")
_OUTER = "^"  # attribute prefix: resolve in the enclosing scope (inside an EXISTS)
_SQL_KINDS = {
    STR: "string",
    NUM: "number",
    TIME: "timestamp",
    DATE: "date",
    BOOL: "boolean",
    GEOM: "geometry",
}
"""Kinds here -> the kinds ``sql_filter.to_sql`` checks literals against (JSON: unchecked)."""


class _Compiler:
    """A filter (pygeofilter AST) over one scope as SQL: ``sql_filter.to_sql`` translates the
    predicates, with the scope's property paths (joins made) as its columns; what CQL2 does not
    have — OData functions, time arithmetic, JSON properties, to-many navigation — is compiled
    here into computed columns (``(sql, params)``) it takes as they are."""

    def __init__(self, scope: _Scope, where: str = "$filter") -> None:
        self.scope = scope
        self.where = where
        self.columns: dict[str, str | tuple[str, list[Any]]] = {}
        self.types: dict[str, str] = {}
        self.geometry: tuple[str, tuple[str, str, str, str] | None] | None = None

    def fail(self, message: str, hint: str | None = None) -> InvalidInput:
        return InvalidInput(f"{self.where}: {message}", hint=hint)

    # -- conditions -------------------------------------------------------------------------
    def condition(self, node: Any) -> tuple[str, list[Any]]:
        """SQL and parameters of a condition."""
        prepared = self._prepare(node)
        geometry_sql, bbox = self.geometry or (None, None)
        try:
            return to_sql(prepared, self.columns, geometry_sql, bbox_columns=bbox, types=self.types)
        except InvalidInput as exc:
            raise self.fail(exc.message, exc.hint) from None

    def _prepare(self, node: Any) -> Any:
        """The condition with every operand in terms ``to_sql`` reads."""
        if isinstance(node, ast.And | ast.Or):
            return type(node)(self._prepare(node.lhs), self._prepare(node.rhs))
        if isinstance(node, ast.Not):  # OData: not(null eq 'x') is true
            return excluding(self._prepare(node.sub_node))
        many = self._to_many(node)
        if many is not None:
            return self._computed(*self._exists(node, many), BOOL)
        if isinstance(node, ast.Comparison):
            return self._comparison(node)
        if isinstance(node, ast.Like):
            lhs = self.value(node.lhs)
            if lhs.kind not in (STR, JSON):
                raise self.fail(f"{_name(node.lhs)} is a {lhs.kind}, not text: it can't be matched")
            return dataclasses.replace(node, lhs=self._operand(lhs))
        if isinstance(node, ast.IsNull):
            return dataclasses.replace(node, lhs=self._operand(self.value(node.lhs)))
        if isinstance(node, ast.In):
            lhs = self.value(node.lhs)
            items = [self._unify(lhs, self.value(i), node)[1] for i in node.sub_nodes]
            return ast.In(self._operand(lhs), [self._operand(i) for i in items], node.not_)
        if isinstance(node, ast.Between):
            lhs = self.value(node.lhs)
            low, high = (self._unify(lhs, self.value(n), node)[1] for n in (node.low, node.high))
            ops = (self._operand(v) for v in (lhs, low, high))
            return ast.Between(*ops, node.not_)
        if isinstance(node, ast.SpatialComparisonPredicate):
            a, b = self.value(node.lhs), self.value(node.rhs)
            for v, n in ((a, node.lhs), (b, node.rhs)):
                if v.kind != GEOM:
                    raise self.fail(f"{_name(n)} is a {v.kind}, not a geometry")
            return type(node)(self._operand(a), self._operand(b))
        if isinstance(node, ast.Relate):  # not in CQL2 2.0's basic set: computed
            a, b = self.value(node.lhs), self.value(node.rhs)
            sql = f"ST_Relate({a.sql}, {b.sql}, ?)"
            return self._computed(sql, a.params + b.params + [node.pattern], BOOL)
        if isinstance(node, ast.Function) and node.name in ("contains", "startswith", "endswith"):
            a, b = (self._text(self.value(x), node) for x in node.arguments)
            fn = {"contains": "contains", "startswith": "starts_with", "endswith": "ends_with"}
            return self._computed(f"{fn[node.name]}({a.sql}, {b.sql})", a.params + b.params, BOOL)
        if isinstance(node, bool):
            return ast.Include(not node)
        raise self.fail(f"{_name(node)} is not a condition")

    def _comparison(self, node: ast.Comparison) -> Any:
        distance = self._distance(node)
        if distance is not None:
            return distance
        lhs, rhs = self._unify(self.value(node.lhs), self.value(node.rhs), node)
        if GEOM in (lhs.kind, rhs.kind):
            raise self.fail("geometries are compared with geo.intersects, st_equals and the like")
        if isinstance(node, ast.NotEqual):  # OData: null ne 'x' is true
            return excluding(ast.Equal(self._operand(lhs), self._operand(rhs)))
        return type(node)(self._operand(lhs), self._operand(rhs))

    def _distance(self, node: ast.Comparison) -> Any:
        """``geo.distance(p, g) lt d`` as DWITHIN (and ``gt`` as BEYOND): with a geometry
        literal, ``to_sql`` prunes by bounding boxes first."""
        fn, d = node.lhs, node.rhs
        if not (isinstance(fn, ast.Function) and fn.name == "geo.distance"):
            return None
        if isinstance(d, bool) or not isinstance(d, int | float):
            return None
        cls = {
            ast.LessThan: ast.DistanceWithin,
            ast.LessEqual: ast.DistanceWithin,
            ast.GreaterThan: ast.DistanceBeyond,
            ast.GreaterEqual: ast.DistanceBeyond,
        }.get(type(node))
        if cls is None:
            return None
        a, b = (self.value(x) for x in fn.arguments)
        for v, n in ((a, fn.arguments[0]), (b, fn.arguments[1])):
            if v.kind != GEOM:
                raise self.fail(f"geo.distance needs geometries, not {_name(n)} (a {v.kind})")
        return cls(self._operand(a), self._operand(b), float(d), "m")

    def _to_many(self, node: Any) -> str | None:
        """The path prefix of a to-many navigation in the predicate's attributes."""
        for name in _attributes(node):
            if name.startswith(_OUTER):
                continue
            set_name = self.scope.entity_set
            parts = name.split("/")
            for i, part in enumerate(parts[:-1]):
                nav = ENTITY_SETS[set_name].nav(part)
                if nav is None:
                    break
                if nav.many:
                    return "/".join(parts[: i + 1])
                set_name = nav.target
        return None

    def _exists(self, node: Any, prefix: str) -> tuple[str, list[Any]]:
        """A predicate over a to-many navigation: some related entity satisfies it."""
        scope = self.scope
        if "/" in prefix:
            raise self.fail(
                f"{prefix}: a to-many navigation after a to-one one is not supported here",
                "filter from the other end (e.g. on Datastreams rather than through Thing)",
            )
        nav = ENTITY_SETS[scope.entity_set].navigation[prefix]
        target_link, parent_link = _RELATIONS[(scope.entity_set, nav.name)]
        inner = _Scope(nav.target, scope.networks, scope.aliases, outer=scope)
        renamed = _rename(
            node, lambda n: n[len(prefix) + 1 :] if n.startswith(prefix + "/") else _OUTER + n
        )
        cond, cond_params = _Compiler(inner, self.where).condition(renamed)
        link = f"{inner.render(target_link)} = {scope.render(parent_link)}"
        base, base_params = inner.base_conditions()
        source, source_params = inner.from_clause()
        sql = f"EXISTS (SELECT 1 FROM {source} WHERE {' AND '.join([*base, link, cond])})"
        return sql, source_params + base_params + cond_params

    # -- operands ---------------------------------------------------------------------------
    def _operand(self, v: _Value) -> Any:
        """A compiled value as ``to_sql`` takes it: literals as they are, properties and
        computed values as named columns."""
        if v.is_literal and isinstance(v.literal, str | int | float | bool | dt.date):
            return v.literal
        if v.is_literal and isinstance(v.literal, values.Geometry):
            return v.literal
        if v.name is not None and not v.params:
            self.columns[v.name] = v.sql
            if v.kind in _SQL_KINDS:
                self.types[v.name] = _SQL_KINDS[v.kind]
            if v.kind == GEOM and self.geometry is None:
                self.geometry = (v.sql, v.bbox)
            return ast.Attribute(v.name)
        return self._computed(v.sql, v.params, v.kind)

    def _computed(self, sql: str, params: list[Any], kind: str) -> ast.Attribute:
        name = f"__computed_{len(self.columns)}"
        self.columns[name] = (sql, list(params))
        if kind in _SQL_KINDS:
            self.types[name] = _SQL_KINDS[kind]
        return ast.Attribute(name)

    def _unify(self, a: _Value, b: _Value, node: Any) -> tuple[_Value, _Value]:
        """Both sides of a comparison as one kind (the literal or JSON side converted)."""
        if a.is_literal or (a.kind == JSON and not b.is_literal):
            return self._coerce(a, b, node), b
        return a, self._coerce(b, a, node)

    def _coerce(self, v: _Value, other: _Value, node: Any) -> _Value:
        """``v`` as the kind of ``other`` where that is unambiguous (a literal written as
        text for a time, a number for an id, JSON properties as what they are compared
        with); else an error naming both."""
        if v.kind == other.kind or NULL in (v.kind, other.kind):
            return v
        if v.kind == JSON:
            cast = {NUM: "DOUBLE", TIME: "TIMESTAMP", BOOL: "BOOLEAN", DATE: "DATE"}
            if other.kind == STR:
                return v
            if other.kind in cast:
                sql = f"TRY_CAST({v.sql} AS {cast[other.kind]})"
                return dataclasses.replace(v, sql=sql, kind=other.kind, name=None)
        if other.kind == JSON:
            return v
        if v.is_literal:
            lit = v.literal
            if other.kind == TIME and isinstance(lit, str | dt.date):
                return self.literal(_to_time(lit, self))
            if other.kind == STR and isinstance(lit, int | float) and not isinstance(lit, bool):
                return self.literal(str(lit))
            if other.kind == DATE and isinstance(lit, str):
                try:
                    return self.literal(dt.date.fromisoformat(lit))
                except ValueError:
                    pass
        if v.kind == TIME and other.kind == DATE:
            return _Value(f"CAST({v.sql} AS DATE)", v.params, DATE)
        what = v.name or other.name or _name(getattr(node, "lhs", node))
        raise self.fail(
            f"can't compare a {other.kind} with a {v.kind} ({what!r})",
            "compare values of the same kind: text with 'text', numbers with numbers,"
            " times with ISO 8601 times",
        )

    # -- values ---------------------------------------------------------------------------
    def literal(self, value: Any) -> _Value:
        if value is None:
            return _Value("NULL", [], NULL, None)
        if isinstance(value, bool):
            return _Value("?", [value], BOOL, value)
        if isinstance(value, int | float):
            return _Value("?", [value], NUM, value)
        if isinstance(value, str):
            return _Value("?", [value], STR, value)
        if isinstance(value, dt.datetime):
            return _Value("?::TIMESTAMP", [_naive(value)], TIME, value)
        if isinstance(value, dt.date):
            return _Value("?::DATE", [value], DATE, value)
        if isinstance(value, dt.time):
            return _Value("?::TIME", [value], TOD, value)
        if isinstance(value, dt.timedelta):
            return _Value("?::INTERVAL", [value], DUR, value)
        if isinstance(value, values.Geometry):
            wkb = shapely.to_wkb(shapely.geometry.shape(value.geometry))
            return _Value("ST_GeomFromWKB(?)", [wkb], GEOM, value)
        raise self.fail(f"a literal of type {type(value).__name__} is not supported")

    def value(self, node: Any) -> _Value:
        if isinstance(node, ast.Attribute):
            return self.attribute(node.name)
        if isinstance(node, ast.Arithmetic):
            return self._arithmetic(node)
        if isinstance(node, ast.Function):
            return self._function(node)
        if isinstance(node, ast.Node):
            raise self.fail(f"{_name(node)} is a condition where a value is needed")
        return self.literal(node)

    def attribute(self, name: str) -> _Value:
        if name.startswith(_OUTER):
            assert self.scope.outer is not None
            outer = _Compiler(self.scope.outer, self.where)
            return outer.attribute(name[len(_OUTER) :])
        return resolve(self.scope, name, self.where)

    def _arithmetic(self, node: ast.Arithmetic) -> _Value:
        a, b = self.value(node.lhs), self.value(node.rhs)
        op = node.op.value
        kinds = (a.kind, b.kind)
        kind = {
            (NUM, NUM): NUM,
            (TIME, DUR): TIME if op in "+-" else None,
            (DUR, TIME): TIME if op == "+" else None,
            (TIME, TIME): DUR if op == "-" else None,
            (DUR, DUR): DUR if op in "+-" else None,
            (DUR, NUM): DUR if op in "*/" else None,
            (NUM, DUR): DUR if op == "*" else None,
        }.get(kinds)
        if JSON in kinds:
            a, b = (self._coerce(x, _Value("", [], NUM), node) for x in (a, b))
            kind = NUM
        if kind is None:
            raise self.fail(f"can't compute {a.kind} {op} {b.kind}")
        return _Value(f"({a.sql} {op} {b.sql})", a.params + b.params, kind)

    def _text(self, v: _Value, node: Any) -> _Value:
        if v.kind not in (STR, JSON):
            raise self.fail(f"{node.name} needs text, not a {v.kind}")
        return v

    def _function(self, node: ast.Function) -> _Value:
        name = node.name
        args = [self.value(a) for a in node.arguments]
        params = [p for a in args for p in a.params]
        s: list[str] = []

        def need(*kinds: str) -> None:
            for a, k, n in zip(args, kinds, node.arguments, strict=False):
                ok = a.kind == k or (k == STR and a.kind == JSON) or a.kind == NULL
                if a.kind == JSON and k in (TIME, NUM):
                    cast = "TIMESTAMP" if k == TIME else "DOUBLE"
                    a.sql, a.kind = f"TRY_CAST({a.sql} AS {cast})", k
                    ok = True
                if k == STR and a.is_literal and isinstance(a.literal, int | float):
                    a.params, ok = [str(a.literal)], True
                if not ok:
                    raise self.fail(f"{name}() needs a {k}, not {_name(n)} (a {a.kind})")
            s.extend(a.sql for a in args)
            params[:] = [p for a in args for p in a.params]

        if name in ("length", "tolower", "toupper", "trim"):
            need(STR)
            fn = {"length": "length", "tolower": "lower", "toupper": "upper", "trim": "trim"}
            return _Value(f"{fn[name]}({s[0]})", params, NUM if name == "length" else STR)
        if name == "indexof":
            need(STR, STR)
            return _Value(f"(instr({s[0]}, {s[1]}) - 1)", params, NUM)
        if name == "substring":
            need(STR, NUM, NUM)
            rest = f", {s[2]}" if len(s) > 2 else ""
            return _Value(f"substring({s[0]}, {s[1]} + 1{rest})", params, STR)
        if name == "concat":
            need(STR, STR)
            return _Value(f"concat({s[0]}, {s[1]})", params, STR)
        if name in _DATE_PARTS:
            need(TIME)
            return _Value(f"{name}({s[0]})", params, NUM)
        if name == "fractionalseconds":
            need(TIME)
            return _Value(f"((microsecond({s[0]}) % 1000000) / 1e6)", params, NUM)
        if name == "date":
            need(TIME)
            return _Value(f"CAST({s[0]} AS DATE)", params, DATE)
        if name == "time":
            need(TIME)
            return _Value(f"CAST({s[0]} AS TIME)", params, TOD)
        if name == "totaloffsetminutes":
            need(TIME)
            return _Value("0", [], NUM)  # times are stored in UTC
        if name in ("mindatetime", "maxdatetime"):
            need(TIME)
            return args[0]  # instants: the interval is the instant
        if name == "now":
            return _Value("?::TIMESTAMP", [_naive(dt.datetime.now(dt.UTC))], TIME)
        if name in ("round", "floor", "ceiling"):
            need(NUM)
            fn = {"round": "round", "floor": "floor", "ceiling": "ceil"}[name]
            return _Value(f"{fn}({s[0]})", params, NUM)
        if name == "mod":
            need(NUM, NUM)
            return _Value(f"({s[0]} % {s[1]})", params, NUM)
        if name == "geo.distance":
            need(GEOM, GEOM)
            return _Value(f"ST_Distance({s[0]}, {s[1]})", params, NUM)
        if name == "geo.length":
            need(GEOM)
            return _Value(f"ST_Length({s[0]})", params, NUM)
        if name in ("contains", "startswith", "endswith"):
            raise self.fail(f"{name}() is a condition where a value is needed")
        raise self.fail(f"unknown function {name!r}")


def resolve(scope: _Scope, path: str, where: str = "$filter") -> _Value:
    """The SQL of a property path in ``scope`` (to-one navigation joined)."""
    parts = path.split("/")
    owner = "{a}"
    set_name = scope.entity_set
    for i, part in enumerate(parts):
        spec = _SETS[set_name]
        rest = "/".join(parts[i:])
        prop = spec.props.get(rest)
        if prop is not None:
            return _Value(
                _in_join(scope, prop.sql, owner),
                [],
                prop.kind,
                name=path,
                bbox=tuple(_in_join(scope, b, owner) for b in prop.bbox)  # type: ignore[arg-type]
                if prop.bbox
                else None,
            )
        if part == "properties" and spec.json_props is not None and i == len(parts) - 2:
            column = _in_join(scope, spec.json_props, owner)
            key = parts[-1].replace('"', "")
            return _Value(f"json_extract_string({column}, ?)", [f'$."{key}"'], JSON)
        nav = ENTITY_SETS[set_name].nav(part)
        if nav is None or i == len(parts) - 1:
            known = sorted(
                {p.split("/")[0] for p in spec.props} | set(ENTITY_SETS[set_name].navigation)
            )
            what = "navigation property" if nav is not None else "property"
            raise InvalidInput(
                f"{where}: {ENTITY_SETS[set_name].singular} has no {what} {rest!r}"
                if nav is None
                else f"{where}: {path!r} names an entity, not a value",
                hint=f"properties of {ENTITY_SETS[set_name].singular}: {', '.join(known)}"
                if nav is None
                else f"name one of its properties, e.g. {path}/@iot.id",
            )
        if nav.many:
            raise InvalidInput(
                f"{where}: {path!r} leads to many {nav.target}: it can be used in a condition"
                " (true when any of them matches), not as a value here",
            )
        owner = owner[:-1] + "/" + part + "}" if owner != "{a}" else "{" + part + "}"
        set_name = nav.target
    raise InvalidInput(f"{where}: {path!r} is not a property")


def _in_join(scope: _Scope, template: str, owner: str) -> str:
    """A template of a set reached through to-one joins (``owner``: ``{a}``, ``{Datastream}``
    or ``{Datastream/Thing}``) rendered in ``scope``."""
    if owner == "{a}":
        return scope.render(template)
    return _JoinPath(scope, owner[1:-1].split("/")).render(template)


class _JoinPath:
    """The alias of the set at the end of a chain of to-one navigation joins."""

    def __init__(self, scope: _Scope, navs: list[str]) -> None:
        self.scope = scope
        self.navs = navs

    def render(self, template: str) -> str:
        alias = self.alias(self.navs)

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            return alias if name == "a" else self.alias([*self.navs, name])

        return re.sub(r"\{(\w+)\}", sub, template)

    def alias(self, navs: list[str]) -> str:
        """Make (once) the joins along ``navs`` from the scope's set; the last one's alias."""
        key = "/".join(navs)
        if key in self.scope.joins:
            return self.scope.joins[key]
        if len(navs) == 1:
            return self.scope.join(navs[0])
        parent_alias = self.alias(navs[:-1])
        set_name = self.scope.entity_set
        for n in navs[:-1]:
            set_name = _target(set_name, n)
        spec = _SETS[set_name].joins[navs[-1]]
        alias = self.scope.new_alias()
        parent = _JoinPath(self.scope, navs[:-1])
        on = parent.render(spec.on.replace("{j}", "\x00")).replace("\x00", alias)
        assert parent_alias
        if spec.entity_set is not None:
            source, params = relation(spec.entity_set, self.scope.networks)
            acc, acc_params = access_condition(spec.entity_set, alias, self.scope.networks)
            where = _SETS[spec.entity_set].where.replace("{a}", alias)
            self.scope.join_sql.append(
                (f" LEFT JOIN {source} {alias} ON {on} AND {where} AND {acc}", params + acc_params)
            )
        else:
            self.scope.join_sql.append(
                (f" LEFT JOIN {spec.raw} {alias} ON {on}", list(spec.params))
            )
        self.scope.joins[key] = alias
        return alias


def _target(set_name: str, join: str) -> str:
    spec = _SETS[set_name].joins[join]
    if spec.entity_set is None:
        raise KeyError(join)
    return spec.entity_set


def _attributes(node: Any) -> list[str]:
    """The attribute names in a (sub)tree."""
    if isinstance(node, ast.Attribute):
        return [node.name]
    if isinstance(node, ast.Node):
        return [n for sub in node.get_sub_nodes() for n in _attributes(sub)]
    if isinstance(node, list):
        return [n for sub in node for n in _attributes(sub)]
    return []


def _rename(node: Any, fn: Callable[[str], str]) -> Any:
    """A copy of the tree with attribute names mapped by ``fn``."""
    if isinstance(node, ast.Attribute):
        return ast.Attribute(fn(node.name))
    if isinstance(node, ast.Not):
        return ast.Not(_rename(node.sub_node, fn))
    if isinstance(node, list):
        return [_rename(n, fn) for n in node]
    if isinstance(node, ast.Node) and dataclasses.is_dataclass(node):
        changes = {
            f.name: _rename(getattr(node, f.name), fn)
            for f in dataclasses.fields(node)
            if f.init and isinstance(getattr(node, f.name), ast.Node | list)
        }
        return dataclasses.replace(node, **changes)
    return node


def _name(node: Any) -> str:
    if isinstance(node, ast.Attribute):
        return repr(node.name)
    if isinstance(node, ast.Function):
        return f"{node.name}()"
    if isinstance(node, ast.Node):
        return type(node).__name__.lower()
    return repr(node)


def _naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _to_time(value: Any, compiler: _Compiler) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise compiler.fail(
            f"{value!r} is not a time", "write ISO 8601: 2025-06-02T22:00:00Z"
        ) from None
    return ts.to_pydatetime() if ts.tzinfo else ts.tz_localize("UTC").to_pydatetime()


# -- ids --------------------------------------------------------------------------------------
def split_timed_id(ident: str) -> tuple[str, dt.datetime] | None:
    """``<id>@<ISO time>`` (Observations, HistoricalLocations) -> (id, naive UTC time)."""
    head, at, tail = ident.rpartition("@")
    if not at or not head:
        return None
    try:
        ts = pd.Timestamp(tail)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts
    return head, ts.to_pydatetime()


class SensorThingsStoreMixin:
    """``Store.sta_entities`` over the DuckDB layout (mixed into ``DuckDBStore``)."""

    con: duckdb.DuckDBPyConnection
    _lock: Any

    def sta_entities(self, request: EntityRequest) -> EntityPage:
        """See ``Store.sta_entities``."""
        self._require_series()  # type: ignore[attr-defined]
        with self._lock:
            return _Reader(self.con, request).page()


class _Reader:
    """One request's queries."""

    def __init__(self, con: duckdb.DuckDBPyConnection, request: EntityRequest) -> None:
        self.con = con
        self.req = request
        self.aliases = [0]

    def page(self) -> EntityPage:
        req = self.req
        if req.top < 0 or req.skip < 0:
            raise InvalidInput("$top and $skip must not be negative")
        keys = self._latest_keys()
        frame = self._latest(keys) if keys is not None else self._rows()
        count, counts = None, {}
        if req.count:
            count, counts = self._count()
        return EntityPage(frame, count, counts)

    # -- the conditions of the request ------------------------------------------------------
    def _conditions(self, scope: _Scope) -> tuple[list[str], list[Any]]:
        req = self.req
        conds, params = scope.base_conditions()
        if req.ids is not None:
            sql, p = self._ids(scope, req.ids)
            conds.append(sql)
            params += p
        if req.link is not None:
            sql, p = _in_list(self._link_sql(scope), list(req.link.values))
            conds.append(sql)
            params += p
        if req.filter is not None:
            sql, p = _Compiler(scope).condition(req.filter)
            conds.append(sql)
            params += p
        return conds, params

    def _ids(self, scope: _Scope, ids: Sequence[str]) -> tuple[str, list[Any]]:
        a = scope.alias
        if scope.entity_set not in ("Observations", "HistoricalLocations"):
            id_sql = scope.render(_SETS[scope.entity_set].props["@iot.id"].sql)
            return _in_list(id_sql, [str(i) for i in ids])
        parts, params = [], []
        for ident in ids:
            split = split_timed_id(ident)
            if split is None:
                continue
            owner, t = split
            if scope.entity_set == "HistoricalLocations":
                parts.append(f"({a}.fid = ? AND {a}.valid_from = ?)")
                params += [owner, t]
                continue
            key = self.con.execute("SELECT key FROM datastreams WHERE id = ?", [owner]).fetchone()
            if key is not None:  # the key and the time as constants: zone maps prune
                parts.append(f"({a}.key = ? AND {a}.phenomenon_time = ?)")
                params += [key[0], t]
        return (f"({' OR '.join(parts)})" if parts else "FALSE"), params

    def _link_sql(self, scope: _Scope) -> str:
        link = self.req.link
        assert link is not None
        rel = _RELATIONS.get((link.parent, link.navigation))
        nav = ENTITY_SETS[link.parent].nav(link.navigation)
        if rel is None or nav is None or nav.target != scope.entity_set:
            raise InvalidInput(
                f"{link.parent} has no navigation property {link.navigation!r} to"
                f" {scope.entity_set}"
            )
        return scope.render(rel[0])

    def _order(self, scope: _Scope) -> tuple[list[tuple[str, bool]], list[Any]]:
        """The ORDER BY terms (SQL, descending) — the asked order, the set's default, a
        unique tie-break — and their parameters."""
        req = self.req
        defaults = [
            (ast.Attribute(name), desc) for name, desc in ENTITY_SETS[req.entity_set].default_order
        ]
        terms: list[tuple[str, bool]] = []
        params: list[Any] = []
        seen: set[str] = set()
        for expr, desc in [*req.order_by, *defaults]:
            v = _Compiler(scope, "$orderby").value(expr)
            if v.kind == GEOM:
                raise InvalidInput(f"$orderby: {_name(expr)} is a geometry: it has no order")
            if v.sql in seen:
                continue
            seen.add(v.sql)
            terms.append((v.sql, desc))
            params += v.params
        for u in _SETS[req.entity_set].unique:
            sql = scope.render(u)
            if sql not in seen:
                seen.add(sql)
                terms.append((sql, False))
        return terms, params

    # -- rows -------------------------------------------------------------------------------
    def _rows(self) -> pd.DataFrame:
        """The page: found on the set's own relation (and the joins its conditions need),
        then given its output columns."""
        req = self.req
        scope = _Scope(req.entity_set, req.networks, self.aliases)
        conds, where_params = self._conditions(scope)
        order, order_params = self._order(scope)
        per_parent = req.link is not None and req.link.per_parent
        order_sql = ", ".join(f"{sql} {'DESC' if desc else 'ASC'}" for sql, desc in order)
        table = _SETS[req.entity_set].source
        by_row = table.isidentifier()  # a table: the page is row ids, the output reads them
        head = f"{scope.alias}.rowid AS _row" if by_row else f"{scope.alias}.*"
        select = [head, *(f"{sql} AS _o{i}" for i, (sql, _) in enumerate(order))]
        params = list(order_params)  # the sort keys in the select list come first
        tail = f" ORDER BY {order_sql} LIMIT {int(req.top) + 1} OFFSET {int(req.skip)}"
        if req.link is not None:
            select.append(f"{self._link_sql(scope)} AS _link")
        if per_parent:
            select.append(f"row_number() OVER (PARTITION BY _link ORDER BY {order_sql}) AS _rn")
            params += order_params
            tail = f" QUALIFY _rn > {int(req.skip)} AND _rn <= {int(req.skip + req.top + 1)}"
        source, from_params = scope.from_clause()
        page = f"SELECT {', '.join(select)} FROM {source} WHERE {' AND '.join(conds)}{tail}"
        params += from_params + where_params + ([] if per_parent else order_params)
        descending = [desc for _, desc in order]
        return self._output(page, params, descending, per_parent, table if by_row else None)

    def _output(
        self,
        page: str,
        params: list[Any],
        descending: list[bool],
        per_parent: bool,
        table: str | None = None,
    ) -> pd.DataFrame:
        """The frame columns of a page's rows, with the joins only they need. With ``table``,
        the page holds row ids of it (``_row``): only the page's rows are read in full (late
        materialisation: the sort never carries the wide rows)."""
        req = self.req
        out = _Scope(req.entity_set, req.networks, self.aliases)
        a = out.alias
        p = f"{a}_page" if table else a
        cols = [f'{out.render(t)} AS "{c}"' for c, t in _SETS[req.entity_set].columns.items()]
        if req.link is not None:
            cols.append(f"{p}._link")
        joins = "".join(sql for sql, _ in out.join_sql)
        join_params = [v for _, vs in out.join_sql for v in vs]
        if per_parent:
            order_by = f"{p}._link, {p}._rn"
        else:
            order_by = ", ".join(
                f"{p}._o{i} {'DESC' if d else 'ASC'}" for i, d in enumerate(descending)
            )
        source = f"page {a}"
        if table:
            source = f"page {p} JOIN {table} {a} ON {a}.rowid = {p}._row"
        sql = f"WITH page AS ({page}) SELECT {', '.join(cols)} FROM {source}{joins}"
        return self._execute(f"{sql} ORDER BY {order_by}", params + join_params)

    def _execute(self, sql: str, params: list[Any]) -> pd.DataFrame:
        try:
            table = self.con.execute(sql, params).to_arrow_table()
        except (
            duckdb.ConversionException,
            duckdb.OutOfRangeException,
            duckdb.InvalidInputException,
        ) as exc:
            raise InvalidInput(
                f"the query could not be evaluated: {str(exc).splitlines()[0]}",
                hint="check the kinds of the values in $filter and $orderby",
            ) from None
        return table.to_pandas()

    # -- counts -----------------------------------------------------------------------------
    def _count(self) -> tuple[int | None, dict[Any, int]]:
        """The number of entities matching (per parent with a per-parent link), without the
        output's joins."""
        req = self.req
        scope = _Scope(req.entity_set, req.networks, self.aliases)
        conds, where_params = self._conditions(scope)
        where = " AND ".join(conds)
        if req.link is not None and req.link.per_parent:
            link = self._link_sql(scope)
            source, from_params = scope.from_clause()
            frame = self._execute(
                f"SELECT {link} AS _link, count(*) AS n FROM {source} WHERE {where} GROUP BY 1",
                from_params + where_params,
            )
            return None, dict(zip(frame["_link"].tolist(), frame["n"].tolist(), strict=True))
        source, from_params = scope.from_clause()
        frame = self._execute(
            f"SELECT count(*) AS n FROM {source} WHERE {where}", from_params + where_params
        )
        return int(frame["n"].iloc[0]), {}

    # -- the latest observation -------------------------------------------------------------
    def _latest_keys(self) -> list[int] | None:
        """The datastream keys when the request asks for their latest observation:
        Observations of Datastreams, ``$top=1``, by phenomenonTime descending, nothing
        skipped, no filter."""
        req = self.req
        link = req.link
        first = req.order_by[0] if req.order_by else None
        if (
            req.entity_set != "Observations"
            or link is None
            or (link.parent, link.navigation) != ("Datastreams", "Observations")
            or req.top != 1
            or req.skip
            or req.filter is not None
            or req.ids is not None
            or first is None
            or not (isinstance(first[0], ast.Attribute) and first[0].name == "phenomenonTime")
            or not first[1]
            or (not link.per_parent and len(link.values) != 1)
        ):
            return None
        return [int(k) for k in link.values]

    def _latest(self, keys: list[int]) -> pd.DataFrame:
        """From ``latest_observations``: a narrow join, whatever the observations hold."""
        req = self.req
        scope = _Scope("Observations", req.networks, self.aliases)
        a = scope.alias
        keys_sql, keys_params = _in_list(f"{a}.key", keys)
        acc, acc_params = access_condition("Observations", a, req.networks)
        page = (
            f"SELECT {a}.key, {a}.phenomenon_time, {a}.result, {a}.result_time,"
            f" {a}.result_quality, {a}.key AS _link, 1 AS _rn FROM latest_observations {a}"
            f" WHERE {keys_sql} AND {acc} AND {a}.phenomenon_time IS NOT NULL"
        )
        frame = self._output(page, keys_params + acc_params, [], True)
        if not (req.link and req.link.per_parent):
            frame = frame.drop(columns="_link")
        return frame


def _in_list(sql: str, values_: list[Any]) -> tuple[str, list[Any]]:
    """``sql IN values`` (a constant for one value: DuckDB prunes with it)."""
    values_ = [v.item() if isinstance(v, np.generic) else v for v in values_]
    if not values_:
        return "FALSE", []
    if len(values_) == 1:
        return f"{sql} = ?", values_
    if len(values_) <= INLINE_VALUES:
        return f"{sql} IN ({', '.join('?' * len(values_))})", values_
    first = values_[0]
    sql_type = "INTEGER" if isinstance(first, int | np.integer) else "VARCHAR"
    return f"{sql} IN (SELECT unnest(?::{sql_type}[]))", [
        [int(v) if sql_type == "INTEGER" else str(v) for v in values_]
    ]

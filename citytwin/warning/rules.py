"""Early-warning rules as data: the rule schema, loading from YAML / JSON, and validation.

A rule file is a mapping::

    version: 1
    name: virtual city early warning          # optional
    timezone: Asia/Shanghai                   # hour of week for anomaly baselines (default UTC)
    rules:
      - id: manhole-level                     # unique; events and engine state are keyed by it
        kind: threshold                       # see KINDS
        applies_to: {observed_property: depth_below_cover, tags: [manhole]}
        unit: m
        direction: below
        levels: {blue: 1.0, yellow: 0.6, orange: 0.3, red: 0.1}
        hysteresis: 0.05
        message: "{asset_id}: water {value:.2f} m below cover, {level_zh}"

Kinds (``KINDS``):

- ``threshold``: the reading itself against warning levels (blue < yellow < orange < red,
  蓝/黄/橙/红 预警), ``direction`` ``above`` (default) or ``below``. A level is raised when the
  value reaches it and held until the value falls below ``value - hysteresis`` (rises above
  ``value + hysteresis`` for ``below``). ``levels`` may name any of the four (at least one) in
  order of severity; ``value`` with ``level`` is the one-level shorthand.
- ``sustained``: a threshold whose level must hold for ``duration`` before it is raised.
- ``rate_of_change``: the change per ``per`` (``second``, ``minute`` default, ``hour``) between
  a reading and the latest one at least ``window`` before it (no more than 2 × ``window``
  before it: older references are too stale to give a rate), against levels as above.
- ``anomaly``: the robust z-score ``(value - median) / (1.4826 · MAD)`` against the
  same-hour-of-week baseline of the datastream (data handed to the engine, see
  ``citytwin.warning.baseline``); ``levels`` are z magnitudes; ``direction`` ``above`` (high
  values), ``below`` (low values) or ``both`` (default); ``min_mad`` floors the MAD (in the
  reading's unit); ``duration`` (optional), as for ``sustained``: a level is raised only
  once it has held that long (not on one odd reading).
- ``no_data``: a datastream silent for more than ``silence``; ``level`` (default yellow).
- ``composite``: ``op`` ``all`` (AND) or ``any`` (OR) over ``conditions`` (each a one-value
  threshold / sustained / rate_of_change / anomaly with its own ``applies_to``) over the
  datastreams of one group: ``group_by: group`` (default: the catalog's ``group``, a key or a
  list of keys per datastream), ``group_by: asset`` (the catalog's ``asset_id``), or
  ``groups: {key: [datastream ids]}`` given with the rule. A condition holds for a group while
  any of its datastreams in the group holds it. ``level`` (default orange).
- ``predicted``: not readings but a flood forecast's predicted impacts (``engine.
  evaluate_predictions``): the deepest water predicted at the assets of ``applies_to`` against
  ``levels`` (above, in ``unit``: ``m`` default, ``cm`` or ``mm``; ``value`` with ``level``
  as above), and, with ``within`` (a duration), only where flooding is predicted to start
  within that long of the forecast's issue time (its lead time). ``applies_to`` names asset
  kinds (``ASSET_KINDS``: ``building`` (water at its walls), ``basement`` (the same, for
  buildings with storeys below ground: basements and underground car parks), ``road`` (along
  its centreline; 0.3 m makes it impassable), ``facility``, ``critical_facility``), one or a
  list, or is ``{asset_kind: ..., assets: [ids]}`` (``assets`` alone: those assets, whatever
  their kind). Each forecast raises, re-levels or clears the rule's alarm per asset; its
  message may also use ``{lead_min}`` (minutes until the predicted flooding),
  ``{asset_kind}``, ``{asset_name}`` and ``{scenario_id}``.

``applies_to`` selects datastreams by ``observed_property`` (one or a list), optionally narrowed
to ``datastreams`` (ids) and to those with any of ``tags``; a bare property name (or a list of
them) is short for ``{observed_property: ...}``. ``unit`` (optional) is the unit the
rule's values are in; datastreams in another unit of the same quantity are converted
(``UNITS``), others refused. Durations are strings: ``30s``, ``15min``, ``2h``, ``PT10M``.

Every rule has a ``fingerprint`` over what decides its evaluation (not ``name`` or
``message``): the engine keeps a rule's state across a reload while it is unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import string
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from citytwin.errors import InvalidInput, NotFound, yaml_error

LEVELS = ("blue", "yellow", "orange", "red")
LEVEL_ZH = {"blue": "蓝色预警", "yellow": "黄色预警", "orange": "橙色预警", "red": "红色预警"}
_LEVEL_ALIASES = {
    **{name: name for name in LEVELS},
    **{zh[0]: en for en, zh in LEVEL_ZH.items()},  # 蓝 黄 橙 红
    **{zh[:2]: en for en, zh in LEVEL_ZH.items()},  # 蓝色 ...
    **{zh: en for en, zh in LEVEL_ZH.items()},  # 蓝色预警 ...
}
LEVELED_KINDS = ("threshold", "sustained", "rate_of_change", "anomaly")
READING_KINDS = (*LEVELED_KINDS, "no_data", "composite")
"""The kinds evaluated on readings (``engine.evaluate``)."""
KINDS = (*READING_KINDS, "predicted")
ASSET_KINDS = ("building", "basement", "road", "facility", "critical_facility")
"""What a ``predicted`` rule may apply to: the rows of a forecast's impact table."""
DIRECTIONS = ("above", "below")
PER = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
# unit -> (quantity, factor to the quantity's base unit): the conversions the engine makes
UNITS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0),
    "cm": ("length", 0.01),
    "mm": ("length", 0.001),
    "Pa": ("pressure", 1.0),
    "kPa": ("pressure", 1e3),
    "MPa": ("pressure", 1e6),
    "bar": ("pressure", 1e5),
    "mm/h": ("intensity", 1.0),
    "mm/min": ("intensity", 60.0),
    "m3/s": ("flow", 1.0),
    "m3/h": ("flow", 1 / 3600),
    "L/s": ("flow", 1e-3),
    "m3": ("volume", 1.0),
    "L": ("volume", 1e-3),
    "%LEL": ("lel", 1.0),
    "ppm": ("fraction", 1.0),
    "%": ("fraction", 1e4),
}
VIRTUAL_CITY_RULES = "virtual_city_rules.yaml"
_ZERO = pd.Timedelta(0)
# fields an event message may use (``str.format`` placeholders)
MESSAGE_FIELDS = (
    "rule_id",
    "rule_name",
    "event",
    "source",
    "asset_id",
    "datastream_id",
    "level",
    "level_zh",
    "previous_level",
    "value",
    "signal",
    "unit",
    "time",
)
PREDICTED_MESSAGE_FIELDS = ("lead_min", "asset_kind", "asset_name", "scenario_id")
"""The fields a ``predicted`` rule's message may use besides ``MESSAGE_FIELDS``."""

_COMMON = {"id", "kind", "name", "description", "message", "enabled"}
_LEVELED = {"applies_to", "unit", "direction", "levels", "value", "level", "hysteresis"}
_FIELDS = {
    "threshold": _COMMON | _LEVELED,
    "sustained": _COMMON | _LEVELED | {"duration"},
    "rate_of_change": _COMMON | _LEVELED | {"window", "per"},
    "anomaly": (_COMMON | _LEVELED | {"min_mad", "duration"}) - {"unit"},
    "no_data": _COMMON | {"applies_to", "silence", "level"},
    "composite": _COMMON | {"op", "conditions", "group_by", "groups", "level"},
    "predicted": _COMMON | {"applies_to", "unit", "levels", "value", "level", "within"},
}
_PART_FIELDS = {
    kind: (_FIELDS[kind] - _COMMON - {"levels", "level"}) | {"kind", "name"}
    for kind in LEVELED_KINDS
}
_FILE_FIELDS = {"version", "name", "description", "timezone", "rules"}


@dataclass(frozen=True)
class Selector:
    """Which datastreams a rule watches: an observed property (one of several), optionally
    only the listed datastream ids, optionally only those carrying any of ``tags``."""

    observed_property: tuple[str, ...]
    datastreams: tuple[Any, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Condition:
    """A levelled condition over single datastreams: the signal of ``kind`` (the value, its
    rate of change or its robust z-score) against ``levels`` (name, value) in increasing
    severity, with hysteresis; ``duration`` for ``sustained`` (and optionally ``anomaly``),
    ``window`` / ``per`` for ``rate_of_change``, ``min_mad`` for ``anomaly``. ``name`` names a
    composite's part."""

    kind: str
    applies_to: Selector
    levels: tuple[tuple[str, float], ...]
    direction: str = "above"
    hysteresis: float = 0.0
    unit: str | None = None
    duration: pd.Timedelta = _ZERO
    window: pd.Timedelta = _ZERO
    per: float = 60.0
    min_mad: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class Prediction:
    """What a ``predicted`` rule watches in a flood forecast: the assets of ``asset_kind``
    (any of ``ASSET_KINDS``; empty: any kind), only ``assets`` (ids) when given, their
    predicted depth against ``levels`` (name, value in ``unit``) in increasing severity, and
    only flooding predicted to start within ``within`` of the issue time (0: whenever)."""

    asset_kind: tuple[str, ...]
    levels: tuple[tuple[str, float], ...]
    assets: tuple[str, ...] = ()
    unit: str = "m"
    within: pd.Timedelta = _ZERO


@dataclass(frozen=True)
class Rule:
    """One early-warning rule. ``condition`` for the levelled kinds, ``applies_to`` /
    ``silence`` / ``level`` for ``no_data``, ``op`` / ``conditions`` / ``group_by`` /
    ``groups`` / ``level`` for ``composite``, ``prediction`` for ``predicted``.
    ``timezone`` is the rule set's (anomaly)."""

    id: str
    kind: str
    name: str = ""
    description: str = ""
    message: str = ""
    enabled: bool = True
    condition: Condition | None = None
    applies_to: Selector | None = None
    silence: pd.Timedelta = _ZERO
    level: str = "yellow"
    op: str = "all"
    conditions: tuple[Condition, ...] = ()
    group_by: str = "group"
    groups: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    prediction: Prediction | None = None
    timezone: str = "UTC"
    source: str = "<rules>"
    line: int | None = None
    fingerprint: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", _fingerprint(self))

    @property
    def selectors(self) -> tuple[Selector, ...]:
        """The selectors of the rule's datastreams (one per composite part; none for a
        ``predicted`` rule, which watches no datastream)."""
        if self.kind == "predicted":
            return ()
        if self.kind == "composite":
            return tuple(c.applies_to for c in self.conditions)
        return (self.condition.applies_to if self.condition else self.applies_to,)


def _fingerprint(rule: Rule) -> str:
    """A digest of everything that decides the rule's evaluation."""
    skip = {"name", "description", "message", "source", "line", "fingerprint"}
    if rule.kind != "anomaly":
        skip.add("timezone")
    text = repr([(f.name, getattr(rule, f.name)) for f in fields(rule) if f.name not in skip])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RuleSet:
    """A loaded, validated rule file: immutable, so an engine can swap it for a freshly loaded
    one in one assignment."""

    rules: tuple[Rule, ...]
    timezone: str = "UTC"
    name: str = ""
    source: str = "<rules>"

    def __post_init__(self) -> None:
        seen: dict[str, Rule] = {}
        for r in self.rules:
            if r.id in seen:
                raise InvalidInput(
                    f"rule id {r.id!r} is used twice (also at line {seen[r.id].line})",
                    source=r.source,
                    feature=r.id,
                    line=r.line,
                    hint="rule ids must be unique: events and engine state are keyed by them",
                )
            seen[r.id] = r

    def __getitem__(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise NotFound(f"no rule {rule_id!r} in {self.source}; rules: {', '.join(self.ids)}")

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    @property
    def on_readings(self) -> tuple[Rule, ...]:
        """The enabled rules evaluated on readings (``READING_KINDS``)."""
        return tuple(r for r in self.rules if r.enabled and r.kind in READING_KINDS)

    @property
    def predicted(self) -> tuple[Rule, ...]:
        """The enabled ``predicted`` rules (evaluated on flood forecasts)."""
        return tuple(r for r in self.rules if r.enabled and r.kind == "predicted")


# -- loading ---------------------------------------------------------------------------------
def load_rules(path: str | Path) -> RuleSet:
    """The rule file at ``path`` (``.json``, else YAML), validated. ``InvalidInput`` naming
    the file, the rule, the field (and the line, for YAML) for anything it can't take;
    ``NotFound`` for a missing file."""
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"rule file {p} does not exist")
    return parse_rules_text(p.read_text("utf-8"), source=str(p), json_text=p.suffix == ".json")


def virtual_city_rules() -> RuleSet:
    """The example rules for the virtual city (``data/virtual_city_rules.yaml``)."""
    text = resources.files("citytwin.warning").joinpath("data", VIRTUAL_CITY_RULES)
    return parse_rules_text(text.read_text("utf-8"), source=VIRTUAL_CITY_RULES)


def parse_rules_text(text: str, *, source: str = "<rules>", json_text: bool = False) -> RuleSet:
    """Rules from the text of a rule file (YAML, or JSON with ``json_text``)."""
    if json_text:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"not valid JSON: {exc.msg}", source=source, line=exc.lineno
            ) from None
    else:
        data = _yaml(text, source)
    return parse_rules(data, source=source)


def parse_rules(data: Mapping, *, source: str = "<rules>") -> RuleSet:
    """Rules from a parsed rule file (a mapping with ``rules``), validated."""
    if not isinstance(data, Mapping):
        raise InvalidInput("a rule file must be a mapping with 'rules'", source=source)
    _known(data, _FILE_FIELDS, "the rule file", source, None)
    tz = data.get("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(str(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown timezone {tz!r}",
            source=source,
            line=_line(data, "timezone"),
            hint="an IANA name such as Asia/Shanghai or UTC",
        ) from None
    entries = data.get("rules")
    if not isinstance(entries, list):
        raise InvalidInput(
            "'rules' must be a list of rules", source=source, line=_line(data, "rules")
        )
    rules = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InvalidInput(f"rules[{n}] must be a mapping", source=source)
        rules.append(_rule(entry, n, str(tz), source))
    return RuleSet(tuple(rules), timezone=str(tz), name=str(data.get("name", "")), source=source)


class _Map(dict):
    """A YAML mapping that remembers its line and its keys' lines (1-based)."""

    line: int | None = None
    key_lines: dict


def _yaml(text: str, source: str) -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode):
        data = _Map()
        yield data
        data.update(loader.construct_mapping(node))
        data.line = node.start_mark.line + 1
        data.key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source) from None


def _line(m: Mapping, key: str | None = None) -> int | None:
    if key is not None and isinstance(m, _Map) and key in m.key_lines:
        return m.key_lines[key]
    return getattr(m, "line", None)


# -- validation ------------------------------------------------------------------------------
class _Ctx:
    """Where a rule is, to name it in errors."""

    def __init__(self, rule_id: str, entry: Mapping, source: str, prefix: str = "") -> None:
        self.rule_id, self.entry, self.source, self.prefix = rule_id, entry, source, prefix

    def error(self, key: str | None, message: str, hint: str | None = None) -> InvalidInput:
        name = f"{self.prefix}{key}" if key else self.prefix.rstrip(".")
        text = f"field '{name}': {message}" if name else message
        return InvalidInput(
            text,
            source=self.source,
            feature=f"rule {self.rule_id}",
            line=self.line(key),
            hint=hint,
        )

    def line(self, key: str | None) -> int | None:
        """The line of a (dotted) field, else of the nearest mapping above it."""
        m, parts = self.entry, (key or "").split(".")
        for part in parts[:-1]:
            inner = m.get(part) if isinstance(m, Mapping) else None
            if not isinstance(inner, Mapping):
                return _line(m, part)
            m = inner
        return _line(m, parts[-1] or None)

    def part(self, n: int, entry: Mapping) -> _Ctx:
        return _Ctx(self.rule_id, entry, self.source, f"{self.prefix}conditions[{n}].")


def _known(entry: Mapping, allowed: set[str], what: str, source: str, rule_id: str | None):
    if bad := sorted(set(map(str, entry)) - allowed):
        raise InvalidInput(
            f"unknown field {bad[0]!r} in {what}",
            source=source,
            feature=f"rule {rule_id}" if rule_id else None,
            line=_line(entry, bad[0]),
            hint=f"{what} takes {', '.join(sorted(allowed))}",
        )


def _rule(entry: Mapping, n: int, tz: str, source: str) -> Rule:
    rule_id = entry.get("id")
    if not isinstance(rule_id, str | int) or isinstance(rule_id, bool) or str(rule_id) == "":
        raise InvalidInput(
            f"rules[{n}] has no 'id'",
            source=source,
            line=_line(entry),
            hint="give every rule a unique id, e.g. id: manhole-level",
        )
    rule_id = str(rule_id)
    c = _Ctx(rule_id, entry, source)
    kind = entry.get("kind")
    if kind not in KINDS:
        raise c.error(
            "kind",
            f"unknown kind {kind!r}" if kind is not None else "missing",
            hint=f"one of {', '.join(KINDS)}",
        )
    what = f"a {kind} rule"
    _known(entry, _FIELDS[kind], what, source, rule_id)
    common: dict[str, Any] = dict(
        id=rule_id,
        kind=kind,
        name=_str(c, "name", rule_id),
        description=_str(c, "description", ""),
        message=_message(c),
        enabled=_bool(c, "enabled", True),
        timezone=tz,
        source=source,
        line=_line(entry),
    )
    if kind in LEVELED_KINDS:
        return Rule(condition=_condition(c, kind, single=False), **common)
    if kind == "predicted":
        return Rule(prediction=_prediction(c), **common)
    if kind == "no_data":
        return Rule(
            applies_to=_selector(c),
            silence=_duration(c, "silence", required=True),
            level=_level_name(c, "level", "yellow"),
            **common,
        )
    return _composite(c, common)


def _composite(c: _Ctx, common: dict) -> Rule:
    op = c.entry.get("op", "all")
    op = {"and": "all", "or": "any"}.get(str(op).lower(), str(op).lower())
    if op not in ("all", "any"):
        raise c.error("op", f"unknown op {c.entry['op']!r}", hint="all (AND) or any (OR)")
    parts = c.entry.get("conditions")
    if not isinstance(parts, list) or len(parts) < 1:
        raise c.error(
            "conditions",
            "give a list of conditions",
            hint="e.g. [{kind: threshold, applies_to: rain_intensity, value: 30}, ...]",
        )
    conditions = []
    for k, part in enumerate(parts):
        if not isinstance(part, Mapping):
            raise c.error("conditions", f"conditions[{k}] must be a mapping")
        pc = c.part(k, part)
        kind = part.get("kind")
        if kind not in LEVELED_KINDS:
            raise pc.error(
                "kind",
                f"unknown kind {kind!r}" if kind is not None else "missing",
                hint=f"a composite's condition is one of {', '.join(LEVELED_KINDS)}",
            )
        _known(part, _PART_FIELDS[kind], f"conditions[{k}] ({kind})", c.source, c.rule_id)
        conditions.append(replace(_condition(pc, kind, single=True), name=_str(pc, "name", "")))
    names = [p.name or f"#{k}" for k, p in enumerate(conditions)]
    if len(set(names)) < len(names):
        raise c.error("conditions", "two conditions have the same name")
    group_by = c.entry.get("group_by", "group")
    groups: tuple = ()
    if "groups" in c.entry:
        if "group_by" in c.entry:
            raise c.error("groups", "give 'group_by' or 'groups', not both")
        g = c.entry["groups"]
        if not isinstance(g, Mapping) or not g:
            raise c.error("groups", "must map group keys to lists of datastream ids")
        for key, ids in g.items():
            if not isinstance(ids, list) or not ids:
                raise c.error("groups", f"group {key!r} must list datastream ids")
        groups = tuple(sorted((str(k), tuple(v)) for k, v in g.items()))
        group_by = "groups"
    elif group_by not in ("group", "asset"):
        raise c.error(
            "group_by",
            f"unknown grouping {group_by!r}",
            hint="group (the catalog's group), asset (its asset_id), or give 'groups'",
        )
    return Rule(
        op=op,
        conditions=tuple(conditions),
        group_by=group_by,
        groups=groups,
        level=_level_name(c, "level", "orange"),
        **common,
    )


def _condition(c: _Ctx, kind: str, *, single: bool) -> Condition:
    e = c.entry
    directions = (*DIRECTIONS, "both") if kind == "anomaly" else DIRECTIONS
    direction = e.get("direction", "both" if kind == "anomaly" else "above")
    if direction not in directions:
        raise c.error("direction", f"unknown direction {direction!r}", f"one of {directions}")
    levels = _levels(c, kind, direction, single=single)
    hysteresis = _number(c, "hysteresis", 0.0)
    if hysteresis < 0:
        raise c.error("hysteresis", f"must be ≥ 0, got {hysteresis}")
    unit = e.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise c.error("unit", f"must be a string, got {unit!r}")
    extra: dict[str, Any] = {}
    if kind == "sustained":
        extra["duration"] = _duration(c, "duration", required=True)
    if kind == "rate_of_change":
        extra["window"] = _duration(c, "window", required=True)
        per = e.get("per", "minute")
        if per not in PER:
            raise c.error("per", f"unknown {per!r}", hint=f"one of {', '.join(PER)}")
        extra["per"] = PER[per]
    if kind == "anomaly":
        extra["duration"] = _duration(c, "duration", required=False)
        extra["min_mad"] = _number(c, "min_mad", 0.0)
        if extra["min_mad"] < 0:
            raise c.error("min_mad", f"must be ≥ 0, got {extra['min_mad']}")
    return Condition(
        kind=kind,
        applies_to=_selector(c),
        levels=levels,
        direction=direction,
        hysteresis=hysteresis,
        unit=unit,
        **extra,
    )


def _prediction(c: _Ctx) -> Prediction:
    levels = _levels(c, "predicted", "above", single=False)
    if levels[0][1] <= 0:
        raise c.error(
            "levels",
            f"level {levels[0][0]} at {levels[0][1]:g}: a predicted depth must be > 0",
            hint="e.g. levels: {yellow: 0.15, orange: 0.3, red: 0.5}",
        )
    unit = c.entry.get("unit", "m")
    if not isinstance(unit, str) or UNITS.get(unit, ("",))[0] != "length":
        raise c.error("unit", f"{unit!r} is not a unit of depth", hint="m, cm or mm")
    kinds, assets = _assets(c)
    return Prediction(kinds, levels, assets, unit, _duration(c, "within", required=False))


def _assets(c: _Ctx) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A predicted rule's ``applies_to``: (asset kinds, asset ids)."""
    raw = c.entry.get("applies_to")
    example = "e.g. applies_to: basement, or {asset_kind: facility, assets: [fac-00035]}"
    if isinstance(raw, str | list):
        return _asset_kinds(c, "applies_to"), ()
    if not isinstance(raw, Mapping):
        raise c.error("applies_to", "missing" if raw is None else "must be a mapping", hint=example)
    sub = _Ctx(c.rule_id, raw, c.source, f"{c.prefix}applies_to.")
    _known(raw, {"asset_kind", "assets"}, "a predicted rule's applies_to", c.source, c.rule_id)
    if "asset_kind" not in raw and "assets" not in raw:
        raise c.error("applies_to", "give 'asset_kind', 'assets' or both", hint=example)
    kinds = _asset_kinds(sub, "asset_kind") if "asset_kind" in raw else ()
    ids = raw.get("assets", [])
    if (
        not isinstance(ids, list)
        or ("assets" in raw and not ids)
        or not all(isinstance(i, str | int) and not isinstance(i, bool) for i in ids)
    ):
        raise sub.error("assets", "must be a list of asset ids", hint="e.g. [fac-00035, B-12]")
    return kinds, tuple(str(i) for i in ids)


def _asset_kinds(c: _Ctx, key: str) -> tuple[str, ...]:
    kinds = _str_list(c, key, required=True)
    for kind in kinds:
        if kind not in ASSET_KINDS:
            raise c.error(
                key, f"unknown asset kind {kind!r}", hint=f"one of {', '.join(ASSET_KINDS)}"
            )
    return kinds


def _levels(c: _Ctx, kind: str, direction: str, *, single: bool) -> tuple[tuple[str, float], ...]:
    e = c.entry
    if single:
        if "value" not in e:
            raise c.error("value", "missing", hint="a composite's condition takes one 'value'")
        return (("red", _number(c, "value")),)
    if "levels" in e and ("value" in e or "level" in e):
        raise c.error("levels", "give 'levels', or 'value' with 'level', not both")
    if "levels" not in e:
        if "value" not in e:
            raise c.error(
                "levels",
                "missing",
                hint="e.g. levels: {blue: 1.0, yellow: 2.0, orange: 3.0, red: 4.0}, "
                "or value: 2.0 with level: yellow",
            )
        return ((_level_name(c, "level", "yellow"), _number(c, "value")),)
    raw = e["levels"]
    if not isinstance(raw, Mapping) or not raw:
        raise c.error("levels", "must map warning levels to values", f"levels are {LEVELS}")
    given: dict[str, float] = {}
    for key, value in raw.items():
        name = _LEVEL_ALIASES.get(str(key).strip())
        if name is None:
            raise c.error(f"levels.{key}", "unknown warning level", f"levels are {LEVELS}")
        if name in given:
            raise c.error(f"levels.{key}", f"level {name} given twice")
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            raise c.error(
                f"levels.{key}",
                f"level {name} has no value" if value is None else f"not a number: {value!r}",
                hint="give each level its threshold value",
            )
        given[name] = float(value)
    out = tuple((name, given[name]) for name in LEVELS if name in given)
    if kind == "anomaly" and any(v <= 0 for _, v in out):
        raise c.error("levels", "anomaly levels are z-score magnitudes and must be > 0")
    sign = -1.0 if direction == "below" and kind != "anomaly" else 1.0
    for (a, va), (b, vb) in itertools.pairwise(out):
        if not sign * va < sign * vb:
            rel = "<" if sign > 0 else ">"
            raise c.error(
                "levels",
                f"levels out of order: {a} {va:g} then {b} {vb:g}",
                hint=f"for a '{direction}' rule {f' {rel} '.join(LEVELS)} (a more severe "
                f"level is reached {'higher' if sign > 0 else 'lower'})",
            )
    return out


def _selector(c: _Ctx) -> Selector:
    raw = c.entry.get("applies_to")
    if isinstance(raw, str | list):  # shorthand: observed properties
        return Selector(_str_list(c, "applies_to", required=True))
    if not isinstance(raw, Mapping):
        raise c.error(
            "applies_to",
            "missing" if raw is None else "must be a mapping",
            hint="e.g. applies_to: {observed_property: water_level, tags: [river]}",
        )
    sub = _Ctx(c.rule_id, raw, c.source, f"{c.prefix}applies_to.")
    _known(raw, {"observed_property", "datastreams", "tags"}, "applies_to", c.source, c.rule_id)
    props = _str_list(sub, "observed_property", required=True)
    ids = raw.get("datastreams", [])
    if not isinstance(ids, list):
        raise sub.error("datastreams", "must be a list of datastream ids")
    return Selector(props, tuple(ids), _str_list(sub, "tags", required=False))


def _str_list(c: _Ctx, key: str, *, required: bool) -> tuple[str, ...]:
    raw = c.entry.get(key)
    if raw is None:
        if required:
            raise c.error(key, "missing")
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise c.error(key, "must be a string or a list of strings")
    return tuple(items)


def _level_name(c: _Ctx, key: str, default: str) -> str:
    raw = c.entry.get(key, default)
    name = _LEVEL_ALIASES.get(str(raw).strip())
    if name is None:
        raise c.error(key, f"unknown warning level {raw!r}", hint=f"one of {', '.join(LEVELS)}")
    return name


def _number(c: _Ctx, key: str, default: float | None = None) -> float:
    raw = c.entry.get(key, default)
    if raw is None:
        raise c.error(key, "missing")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
        raise c.error(key, f"must be a number, got {raw!r}")
    return float(raw)


def _str(c: _Ctx, key: str, default: str) -> str:
    raw = c.entry.get(key, default)
    if not isinstance(raw, str):
        raise c.error(key, f"must be a string, got {raw!r}")
    return raw


def _bool(c: _Ctx, key: str, default: bool) -> bool:
    raw = c.entry.get(key, default)
    if not isinstance(raw, bool):
        raise c.error(key, f"must be true or false, got {raw!r}")
    return raw


def _duration(c: _Ctx, key: str, *, required: bool) -> pd.Timedelta:
    raw = c.entry.get(key)
    hint = "a duration with its unit: 30s, 15min, 2h or PT10M"
    if raw is None:
        if required:
            raise c.error(key, "missing", hint=hint)
        return pd.Timedelta(0)
    if not isinstance(raw, str):
        raise c.error(key, f"{raw!r} has no unit", hint=hint)
    try:
        value = pd.Timedelta(raw)
    except ValueError:
        raise c.error(key, f"not a duration: {raw!r}", hint=hint) from None
    if value <= pd.Timedelta(0):
        raise c.error(key, f"must be positive, got {raw!r}")
    return value


def _message(c: _Ctx) -> str:
    text = c.entry.get("message", "")
    if not isinstance(text, str):
        raise c.error("message", f"must be a string, got {text!r}")
    allowed = MESSAGE_FIELDS
    if c.entry.get("kind") == "predicted":
        allowed += PREDICTED_MESSAGE_FIELDS
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise c.error("message", f"not a message template: {exc}") from None
    for _, name, _, _ in parsed:
        if name is not None and name.split(".")[0].split("[")[0] not in allowed:
            raise c.error(
                "message",
                f"unknown placeholder {{{name}}}",
                hint=f"a message may use {', '.join('{' + f + '}' for f in allowed)}",
            )
    return text

"""Early warning: rules as data (``rules``) and a pure engine that turns batches of readings
into alarm events (``engine``), with same-hour-of-week baselines for anomaly rules
(``baseline``).

    rules = load_rules("rules.yaml")                    # or virtual_city_rules()
    catalog = Catalog(datastreams)                      # id, observed_property, unit, asset_id...
    engine = Engine(rules, catalog)
    events = engine.evaluate(readings).events           # raise / escalate / deescalate / clear
    engine.reload(load_rules("rules.yaml"))             # unchanged rules keep their state
"""

from citytwin.warning.baseline import Baseline, build_baseline, hour_of_week
from citytwin.warning.engine import (
    DROP_REASONS,
    EVENT_COLUMNS,
    EVENTS,
    Catalog,
    Engine,
    EngineState,
    Evaluation,
    active_conditions,
    coverage,
    evaluate,
)
from citytwin.warning.rules import (
    KINDS,
    LEVEL_ZH,
    LEVELS,
    Condition,
    Rule,
    RuleSet,
    Selector,
    load_rules,
    parse_rules,
    parse_rules_text,
    virtual_city_rules,
)

__all__ = [
    "DROP_REASONS",
    "EVENTS",
    "EVENT_COLUMNS",
    "KINDS",
    "LEVELS",
    "LEVEL_ZH",
    "Baseline",
    "Catalog",
    "Condition",
    "Engine",
    "EngineState",
    "Evaluation",
    "Rule",
    "RuleSet",
    "Selector",
    "active_conditions",
    "build_baseline",
    "coverage",
    "evaluate",
    "hour_of_week",
    "load_rules",
    "parse_rules",
    "parse_rules_text",
    "virtual_city_rules",
]

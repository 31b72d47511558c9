"""Early warning: rules as data (``rules``) and a pure engine that turns batches of readings
into alarm events (``engine``), with same-hour-of-week baselines for anomaly rules
(``baseline``).

    rules = load_rules("rules.yaml")                    # or virtual_city_rules()
    catalog = Catalog(datastreams)                      # id, observed_property, unit, asset_id...
    engine = Engine(rules, catalog)
    events = engine.evaluate(readings).events           # raise / escalate / deescalate / clear
    engine.reload(load_rules("rules.yaml"))             # unchanged rules keep their state

Alarms (``alarms``) are the life of those events: raised, escalated, cleared, acknowledged,
escalated again when nobody answers, notified through webhooks (outbox rows)::

    changes = apply_events(store.alarms_for(events), events, context=store.datastreams())
    store.save_alarms(changes.alarms, changes.log)
"""

from citytwin.warning.alarms import (
    ALARM_COLUMNS,
    ALARM_LOG_COLUMNS,
    CHANGE_COLUMNS,
    CHANGE_EVENTS,
    DELIVERY_COLUMNS,
    INCIDENT_COLUMNS,
    NOTIFY_EVENTS,
    OUTBOX_COLUMNS,
    AlarmChanges,
    EscalationPolicy,
    Webhook,
    acknowledge,
    alarm_json,
    alarm_key,
    apply_events,
    assign,
    clear,
    comment,
    due_escalations,
    empty_alarm_log,
    empty_alarms,
    empty_changes,
    empty_incidents,
    empty_outbox,
    incident_notification_rows,
    notification_rows,
    operator_changes,
    outbox_rows,
    parse_escalation_policy,
    parse_webhooks,
    typed_frame,
)
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
    "ALARM_COLUMNS",
    "ALARM_LOG_COLUMNS",
    "CHANGE_COLUMNS",
    "CHANGE_EVENTS",
    "DELIVERY_COLUMNS",
    "DROP_REASONS",
    "EVENTS",
    "EVENT_COLUMNS",
    "INCIDENT_COLUMNS",
    "KINDS",
    "LEVELS",
    "LEVEL_ZH",
    "NOTIFY_EVENTS",
    "OUTBOX_COLUMNS",
    "AlarmChanges",
    "Baseline",
    "Catalog",
    "Condition",
    "Engine",
    "EngineState",
    "EscalationPolicy",
    "Evaluation",
    "Rule",
    "RuleSet",
    "Selector",
    "Webhook",
    "acknowledge",
    "active_conditions",
    "alarm_json",
    "alarm_key",
    "apply_events",
    "assign",
    "build_baseline",
    "clear",
    "comment",
    "coverage",
    "due_escalations",
    "empty_alarm_log",
    "empty_alarms",
    "empty_changes",
    "empty_incidents",
    "empty_outbox",
    "evaluate",
    "hour_of_week",
    "incident_notification_rows",
    "load_rules",
    "notification_rows",
    "operator_changes",
    "outbox_rows",
    "parse_escalation_policy",
    "parse_rules",
    "parse_rules_text",
    "parse_webhooks",
    "typed_frame",
    "virtual_city_rules",
]

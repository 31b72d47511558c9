"""Live monitoring use cases on a twin: what the store and the network engine tell the pure
warning engines (``citytwin.warning``), and what operators do.

Provisioning (``provision_datastreams``), the twin's rules, anomaly baselines, webhooks and
escalation policy (``twin_rules``, ``anomaly_baseline``, ``keep_webhooks``,
``escalation_policy``), and the operators' ``AlarmDesk`` (acknowledge, clear, assign, comment).

Incident correlation (``IncidentCorrelator``): inside each ingest commit, the alarms the commit
changed, every other active alarm, the cleared alarms of the open incidents and the open
incidents go to ``citytwin.warning.incidents`` with the ``Relations`` it needs: which node of
which network each datastream watches, the gravity networks with their flow directions and
gauged nodes, the water network's valve segments, DMAs and how the DMAs feed each other (from
their inlet meters), the usual pressure before a low-pressure alarm. Networks and datastreams
are read once and kept (the graph is stable); ``refresh()`` drops them after the twin's
networks or datastreams change.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from citytwin.app.networks import NetworkData, load_network, network_valves
from citytwin.errors import InvalidInput, NotFound
from citytwin.model import GRAVITY_NETWORKS
from citytwin.networks.segments import valve_segments
from citytwin.sensing.devices import plan_datastreams
from citytwin.store import Filter, Query, Store
from citytwin.store.base import ProvisionResult
from citytwin.warning.alarms import (
    WEBHOOKS_DOCUMENT,
    EscalationPolicy,
    acknowledge,
    assign,
    clear,
    comment,
    jsonable,
    notification_rows,
    operator_changes,
    parse_escalation_policy,
    parse_webhooks,
    twin_webhooks,
)
from citytwin.warning.baseline import Baseline, build_baseline
from citytwin.warning.engine import Catalog
from citytwin.warning.incidents import (
    HIGH_WATER,
    CorrelationSettings,
    GravityNetwork,
    IncidentChanges,
    Relations,
    WaterNetwork,
    correlate,
)
from citytwin.warning.rules import RuleSet, load_rules, parse_rules_text, virtual_city_rules

WATER_NETWORKS = ("water_supply",)
"""Pressurised networks whose DMAs correlate low pressure with inflow rises."""
WATER_PROPERTIES = ("pressure", "flow")
NORMAL_WINDOW = pd.Timedelta("24h")
"""The usual value before a low-pressure alarm: the mean over this long ..."""
NORMAL_GAP = pd.Timedelta("1h")
"""... ending this long before the alarm was raised (before the drop began)."""


@dataclass
class _Streams:
    """The twin's datastreams as the correlation needs them, indexed by ``datastream_id``:
    ``observed_property``, ``tags``, ``network``, ``asset_id`` and ``node`` (filled for the
    networks loaded so far)."""

    frame: pd.DataFrame
    known: set[str]
    unknown: set[str] = field(default_factory=set)  # ids not found on the last reload


class IncidentCorrelator:
    """Correlates alarms into incidents on a twin (``citytwin.warning.incidents``), keeping
    what it reads of the twin between calls.

        correlator = IncidentCorrelator(store, rules)
        changes = correlator.correlate(changed_alarms, store.incidents(status="open"), now)

    ``rules``: the rule set in force (``set_rules`` after a reload), for the direction each
    rule watches (without it, the usual one per observed property:
    ``incidents.DEFAULT_DIRECTION``) and to read only the active alarms of rules that can
    correlate. ``problems`` lists what could not be read."""

    def __init__(
        self,
        store: Store,
        rules: RuleSet | None = None,
        *,
        settings: CorrelationSettings | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or CorrelationSettings()
        self._directions: dict[str, str] = {}
        self.set_rules(rules)
        self.refresh()

    def set_rules(self, rules: RuleSet | None) -> None:
        """Take a new rule set (after a reload)."""
        every = rules.rules if rules is not None else ()
        self._directions = {r.id: r.condition.direction for r in every if r.condition}
        # the rules whose alarms can correlate (a silent sensor says nothing about the city, a
        # prediction nothing of what is happening): only their active alarms are read, however
        # many meters have gone quiet
        self._correlating = (
            [r.id for r in every if r.kind not in ("no_data", "predicted")] if rules else None
        )

    def refresh(self) -> None:
        """Forget the networks and datastreams read so far (read again on the next call)."""
        # what could not be read (a network, its valves, a usual value): the correlation goes
        # on without it (alarms on a network that can't be read correlate by place)
        self.problems: list[str] = []
        self._streams: _Streams | None = None
        self._data: dict[str, NetworkData | None] = {}
        self._gravity: dict[str, GravityNetwork] = {}
        self._water: dict[str, WaterNetwork] = {}
        self._normal: dict[str, float] = {}
        self._zone_names: dict[str, str] | None = None
        self._cleared: pd.DataFrame | None = None  # cleared alarms of the open incidents
        self._not_found: set[str] = set()  # alarms of open incidents the store doesn't have

    # -- the use case ---------------------------------------------------------------------------
    def correlate(
        self,
        alarms: pd.DataFrame,
        open_incidents: pd.DataFrame | None = None,
        now: Any = None,
    ) -> IncidentChanges:
        """Correlate the ``alarms`` a commit changed (``ALARM_COLUMNS``, not saved yet) with
        every other active alarm of the twin, the cleared alarms of the open incidents and the
        open incidents (read from the store when not given). ``assignments`` may name alarms
        outside ``alarms``: older ones that joined an incident now; save their ``incident_id``
        too."""
        if self._correlating == []:
            active = alarms.iloc[:0]
        else:
            active = self.store.alarms(status="active", rule_id=self._correlating, limit=None)
        if len(alarms):
            active = active[~active["alarm_id"].isin(alarms["alarm_id"])]
            merged = pd.concat([alarms, active], ignore_index=True) if len(active) else alarms
        else:
            merged = active
        if open_incidents is None:
            open_incidents = self.store.incidents(status="open", limit=None)
        earlier = self._cleared_members(merged, open_incidents)
        if len(earlier):
            merged = pd.concat([merged, earlier], ignore_index=True)
        if now is None:
            now = dt.datetime.now(dt.UTC)
        return correlate(
            merged, open_incidents, self.relations(merged), now=now, settings=self.settings
        )

    def relations(self, alarms: pd.DataFrame) -> Relations:
        """What the engine needs to know about ``alarms``: their datastreams and the networks
        they lie on (loaded on first need)."""
        given = alarms["datastream_id"].to_numpy(object) if len(alarms) else []
        ids = list(dict.fromkeys(str(d) for d in given if isinstance(d, str)))
        rows = self._stream_rows(ids)
        kinds = rows["kind_of_network"].to_numpy(object)
        wanted = {
            (n, k) for n, k in zip(rows["network"].to_numpy(object), kinds, strict=True)
            if isinstance(k, str)
        }  # fmt: skip
        loaded = set(self._gravity) | set(self._water) | set(self._data)
        for net, kind in sorted(wanted):
            self._network(net, kind)
        if {n for n, _ in wanted} - loaded:
            rows = self._stream_rows(ids)  # with the nodes of the networks loaded just now
        names = {n for n, _ in wanted}
        return Relations(
            streams=rows[["observed_property", "tags", "node"]],
            gravity={n: g for n, g in self._gravity.items() if n in names},
            water={n: w for n, w in self._water.items() if n in names},
            directions=self._directions,
            normal=self._normals(alarms, rows),
            zone_names=self._zones(),
        )

    def _cleared_members(self, alarms: pd.DataFrame, incidents: pd.DataFrame) -> pd.DataFrame:
        """The cleared alarms of the open ``incidents`` that ``alarms`` lacks (the engine counts
        an incident's points over all its alarms): kept as they pass by cleared, read from the
        store once for those that never did (after a restart)."""
        if len(incidents) and {"incident_id", "status", "alarm_ids"} <= set(incidents.columns):
            open_ = incidents[incidents["status"] == "open"]
        else:  # the engine names what is missing
            open_ = pd.DataFrame({"incident_id": [], "alarm_ids": []})
        listed = {m for ids in open_["alarm_ids"] for m in _alarm_ids(ids)}
        kept = [] if self._cleared is None else [self._cleared]
        passing = alarms[alarms["status"].eq("cleared") & alarms["alarm_id"].isin(listed)]
        if len(passing):
            kept.append(passing)
        missing = listed - set(alarms["alarm_id"]) - self._not_found
        if kept:
            missing -= set(pd.concat(kept)["alarm_id"])
        if missing:
            for iid, ids in zip(open_["incident_id"], open_["alarm_ids"], strict=True):
                if missing.isdisjoint(_alarm_ids(ids)):
                    continue
                rows = self.store.alarms(incident_id=str(iid), status="cleared", limit=None)
                kept.append(rows[rows["alarm_id"].isin(missing)])
            # an alarm of an open incident that is neither active nor cleared with it is not
            # read again (the engine counts it cleared)
            self._not_found = (self._not_found | missing) & listed
        kept = [k for k in kept if len(k)]
        if not kept:
            self._cleared = None
            return alarms.iloc[:0]
        cleared = pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]
        cleared = cleared[cleared["alarm_id"].isin(listed)]
        self._cleared = cleared.drop_duplicates("alarm_id", keep="last").reset_index(drop=True)
        self._not_found -= set(self._cleared["alarm_id"])
        return self._cleared[~self._cleared["alarm_id"].isin(alarms["alarm_id"])]

    # -- datastreams ----------------------------------------------------------------------------
    def _stream_rows(self, ids: Any) -> pd.DataFrame:
        if self._streams is None or (set(ids) - self._streams.known - self._streams.unknown):
            self._load_streams(ids)
        assert self._streams is not None
        return self._streams.frame.reindex(pd.Index(ids, dtype=object, name="datastream_id"))

    def _load_streams(self, ids: Any) -> None:
        ds = self.store.datastreams()
        index = pd.Index(
            ds["datastream_id"].astype(str).to_numpy(object), dtype=object, name="datastream_id"
        )
        columns = {  # plain objects: quicker to pick rows from than Arrow strings
            c: ds[c].to_numpy(object) for c in ("observed_property", "tags", "network", "asset_id")
        }
        columns["node"] = np.full(len(ds), None, object)
        frame = pd.DataFrame(
            {c: pd.Series(v, index=index, dtype=object) for c, v in columns.items()}, index=index
        )
        prop, net = frame["observed_property"], frame["network"]
        kind = np.where(
            net.isin(GRAVITY_NETWORKS) & prop.isin(list(HIGH_WATER)),
            "gravity",
            np.where(net.isin(WATER_NETWORKS) & prop.isin(WATER_PROPERTIES), "water", None),
        )
        frame["kind_of_network"] = pd.Series(kind, index=frame.index, dtype=object)
        known = set(frame.index)
        self._streams = _Streams(frame, known, set(ids) - known)
        # the gauges decide the networks' monitored nodes: build them again
        loaded = [(n, "gravity") for n in self._gravity] + [(n, "water") for n in self._water]
        self._gravity, self._water = {}, {}
        for net, which in loaded:
            self._network(net, which)

    # -- networks -------------------------------------------------------------------------------
    def _network(self, network: str, kind: str) -> None:
        """Load ``network`` once as a gravity or water network for the engine; a twin without
        it gives nothing (its alarms then correlate by place)."""
        if network in self._gravity or network in self._water:
            return
        if network not in self._data:
            try:
                self._data[network] = load_network(self.store, network)
            except (NotFound, InvalidInput) as exc:
                self._data[network] = None
                self.problems.append(f"{network}: {exc}")
        data = self._data[network]
        if data is None:
            return
        assert self._streams is not None
        frame = self._streams.frame
        mine = frame.index[frame["network"].eq(network).to_numpy()]
        nodes = _asset_nodes(data, frame.loc[mine, "asset_id"].to_numpy(object))
        frame.loc[mine, "node"] = nodes
        graph = data.graph
        if kind == "gravity":
            gauged = frame.loc[mine, "kind_of_network"].eq("gravity").to_numpy()
            monitored = graph.node_mask([n for n in nodes[gauged] if n is not None])
            self._gravity[network] = GravityNetwork(
                graph, data.direction(), monitored, data.closed_links
            )
            return
        valves = network_valves(data)
        self.problems += valves.problems
        zones = self.store.query(
            Query("utility_nodes", where=[Filter("network", "=", network)], columns=("zone_id",))
        )
        node_zone = (
            zones.drop_duplicates("id").set_index("id")["zone_id"].reindex(graph.node_ids)
        ).to_numpy(object)
        node_zone = np.array([None if pd.isna(z) else str(z) for z in node_zone], dtype=object)
        try:
            segments = valve_segments(graph, valves.link, valves.node)
        except InvalidInput as exc:
            self.problems.append(f"{network} valves: {exc}")
            self._data[network] = None
            return
        self._water[network] = WaterNetwork(
            graph,
            node_zone,
            segments,
            valve_ids=valves.ids,
            valve_closed=valves.closed,
            closed=data.closed_links,
            fed_from=_fed_from(data, node_zone),
        )

    def _zones(self) -> dict[str, str]:
        if self._zone_names is None:
            zones = self.store.query(Query("zones", columns=("name",)))
            named = zones[zones["name"].notna()]
            self._zone_names = dict(
                zip(named["id"].astype(str), named["name"].astype(str), strict=True)
            )
        return self._zone_names

    # -- usual values ---------------------------------------------------------------------------
    def _normals(self, alarms: pd.DataFrame, rows: pd.DataFrame) -> dict[str, float]:
        """The usual value of each active pressure alarm's datastream before it was raised (the
        mean over ``NORMAL_WINDOW`` ending ``NORMAL_GAP`` before), read once per alarm; NaN
        where there is no history."""
        if not len(alarms):
            return {}
        prop = dict(zip(rows.index, rows["observed_property"].to_numpy(object), strict=True))
        out = {}
        for aid, ds, status, raised in zip(
            alarms["alarm_id"], alarms["datastream_id"], alarms["status"], alarms["raised_at"],
            strict=True,
        ):  # fmt: skip
            if status != "active" or prop.get(ds) != "pressure":
                continue
            if aid not in self._normal:
                end = pd.Timestamp(raised) - NORMAL_GAP
                try:
                    stats = self.store.aggregate(
                        [str(ds)], end - NORMAL_WINDOW, end, "1h", stats=("sum", "count")
                    )
                except (InvalidInput, NotFound) as exc:  # weighs by severity instead
                    self.problems.append(f"usual value of {ds}: {exc}")
                    stats = pd.DataFrame({"sum": [], "count": []})
                count = float(stats["count"].sum()) if len(stats) else 0.0
                self._normal[aid] = float(stats["sum"].sum()) / count if count else math.nan
            out[aid] = self._normal[aid]
        return out


def _alarm_ids(value: Any) -> list[str]:
    """An incident's ``alarm_ids`` as the store gives them (a list, an array or JSON text)."""
    if isinstance(value, str):
        value = json.loads(value) if value else []
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in value]


def _fed_from(data: NetworkData, node_zone: np.ndarray) -> dict[str, tuple[str, ...]]:
    """How the DMAs of a water network feed each other, from their inlet meters: a meter's DMA
    (``props["dma"]``, else its zone) takes the water of the DMA its ``props["from"]`` names
    (``"source"``: none); a meter without ``from`` on a pipe between its DMA and one other
    DMA takes that one's."""
    meters = data.devices[data.devices["class"] == "meter"]
    dmas = {z for z in node_zone if z is not None}
    graph = data.graph
    link = graph._link_lookup.get_indexer(meters["link_id"].to_numpy(object))
    zones = meters["zone_id"] if "zone_id" in meters else pd.Series([None] * len(meters))
    out: dict[str, set[str]] = {}
    for props, zone, k in zip(meters["props"], zones, link, strict=True):
        props = props if isinstance(props, dict) else {}
        dma = props.get("dma") or (zone if isinstance(zone, str) else None)
        if dma not in dmas:
            continue
        if "from" in props:
            upstream = props["from"]
        else:
            ends = {node_zone[n] for n in graph.link_nodes[k]} - {None, dma} if k >= 0 else set()
            upstream = ends.pop() if len(ends) == 1 else None
        if upstream in dmas and upstream != dma:
            out.setdefault(dma, set()).add(upstream)
    return {dma: tuple(sorted(upstream)) for dma, upstream in sorted(out.items())}


def _asset_nodes(data: NetworkData, assets: np.ndarray) -> np.ndarray:
    """The graph node (id) each asset stands at: the node itself; for a device on a link
    (meter, valve, hydrant) the node it is next to (``props["node"]`` where that is an end
    of its link, else the nearer end); None for anything else."""
    graph = data.graph
    out = np.full(len(assets), None, object)
    at = graph._node_lookup.get_indexer(assets)
    out[at >= 0] = graph.node_ids[at[at >= 0]]
    devices = data.devices
    if not len(devices):
        return out
    link = graph._link_lookup.get_indexer(devices["link_id"].to_numpy(object))
    props = [p if isinstance(p, dict) else {} for p in devices["props"]]
    named = graph._node_lookup.get_indexer(np.array([p.get("node") for p in props], object))
    ends = graph.link_nodes[np.maximum(link, 0)]
    xy = shapely.get_coordinates(devices.geometry.to_numpy()).reshape(-1, 2)
    nxy = graph.node_xy
    nearer = np.where(
        np.linalg.norm(nxy[ends[:, 0]] - xy, axis=1)
        <= np.linalg.norm(nxy[ends[:, 1]] - xy, axis=1),
        ends[:, 0],
        ends[:, 1],
    )
    node = np.where((named == ends[:, 0]) | (named == ends[:, 1]), named, nearer)
    node = np.where(link >= 0, node, -1)
    by_device = pd.Series(node, index=devices["id"].astype(str)).groupby(level=0).first()
    found = by_device.reindex(pd.Index(assets, dtype=object)).fillna(-1).to_numpy(np.int64)
    take = (at < 0) & (found >= 0)
    out[take] = graph.node_ids[found[take]]
    return out


# -- provisioning, rules, baselines, webhooks --------------------------------------------------
RULES_DOCUMENT = "rules/warning"
"""A twin's own early-warning rules: ``{"format": "yaml"|"json", "text": ...}``."""
ESCALATION_DOCUMENT = "notify/escalation"
BASELINE_WEEKS = 4


def provision_datastreams(
    store: Store,
    file: str | Path | None = None,
    *,
    progress: Callable[[str | None, int, int | None], None] | None = None,
    chunk: int = 200_000,
) -> ProvisionResult:
    """Provision datastreams from a CSV / Parquet file (``DATASTREAM_COLUMNS``), or, without
    one, a datastream per measured property of every current device of the twin (placed in
    its DMA / catchment / district, tagged for the rules: ``plan_datastreams``)."""
    if file is not None:
        frame = _read_table(Path(file))
    else:
        devices = store.query(Query("devices"))
        if not len(devices):
            raise NotFound(
                "the twin has no devices to provision datastreams for",
                hint="import devices (layer 'devices') or give --file",
            )
        assets = [
            store.query(Query("utility_nodes", columns=["class", "zone_id"])),
            store.query(Query("water_bodies", columns=["class"])),
        ]
        nodes = pd.concat([pd.DataFrame(a.drop(columns="geometry")) for a in assets])
        zones = store.query(Query("zones", columns=["class"]))
        frame = plan_datastreams(devices, assets=nodes, zones=zones)
    parts = [frame.iloc[i : i + chunk] for i in range(0, len(frame), chunk)] or [frame]

    def chunks():
        for k, part in enumerate(parts):
            if progress is not None:
                progress("provisioning datastreams", k * chunk, len(frame))
            yield part

    return store.provision(chunks())


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise NotFound(f"no file {path}")
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raise InvalidInput(f"{path}: give datastreams as CSV or Parquet", source=str(path))


def keep_rules(store: Store, path: str | Path) -> RuleSet:
    """Check a rule file and keep it in the twin (its rules from then on)."""
    path = Path(path)
    rules = load_rules(path)
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    store.put_document(RULES_DOCUMENT, {"format": fmt, "text": path.read_text(), "file": path.name})
    return rules


def twin_rules(store: Store) -> RuleSet | None:
    """The twin's own rules; the virtual city's example rules for a virtual twin without
    any; None for a real twin without rules (readings are stored, nothing is evaluated)."""
    doc = store.get_document(RULES_DOCUMENT)
    if doc is not None:
        source = f"{RULES_DOCUMENT} ({doc.get('file', '')})"
        return parse_rules_text(doc["text"], source=source, json_text=doc.get("format") == "json")
    if store.meta.virtual:
        return virtual_city_rules()
    return None


def anomaly_baseline(
    store: Store, rules: RuleSet, *, until: dt.datetime | None = None, weeks: int = BASELINE_WEEKS
) -> Baseline:
    """The same-hour-of-week baseline of the datastreams the anomaly rules watch, from the
    ``weeks`` of stored readings before ``until`` (default: now). Empty when there is no
    history yet (anomaly rules then stay quiet rather than guess)."""
    watched: set[str] = set()
    catalog = None
    for rule in rules.enabled:
        conds = [c for c in (rule.conditions or (rule.condition,)) if c is not None]
        if not any(c.kind == "anomaly" for c in conds):
            continue
        if catalog is None:
            catalog = Catalog(store.datastreams())
        for sel in rule.selectors:
            watched.update(catalog.id_array[catalog.rows(sel)].tolist())
    empty = pd.DataFrame(columns=["datastream_id", "hour_of_week", "median", "mad"])
    if not watched:
        return Baseline(empty)
    end = until or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    history = store.observations(sorted(watched), end - dt.timedelta(weeks=weeks), end)
    if not len(history):
        return Baseline(empty)
    return build_baseline(history, timezone=rules.timezone)


def keep_webhooks(store: Store, webhooks: list[dict[str, Any]]) -> list[Any]:
    """Add webhooks to the twin's list (one of the same name is replaced); returns the list."""
    doc = store.get_document(WEBHOOKS_DOCUMENT) or {"webhooks": []}
    names = {w["name"] for w in webhooks}
    merged = {"webhooks": [w for w in doc["webhooks"] if w.get("name") not in names] + webhooks}
    hooks = parse_webhooks(merged)  # validates before keeping
    store.put_document(WEBHOOKS_DOCUMENT, merged)
    return hooks


def parse_webhook_options(items: list[str]) -> list[dict[str, Any]]:
    """``NAME=URL=SECRET`` command-line webhooks as webhook entries (all events)."""
    out = []
    for item in items:
        parts = item.split("=", 2)
        if len(parts) != 3 or not all(parts):
            raise InvalidInput(
                f"webhook {item!r} is not NAME=URL=SECRET",
                hint="e.g. --webhook ops=https://ops.example/hooks=s3cret",
            )
        out.append({"name": parts[0], "url": parts[1], "secret": parts[2], "events": ["*"]})
    return out


def escalation_policy(store: Store) -> EscalationPolicy:
    """The twin's escalation policy (document ``notify/escalation``), else the default."""
    doc = store.get_document(ESCALATION_DOCUMENT)
    return parse_escalation_policy(doc) if doc else EscalationPolicy()


# -- operators' desk ---------------------------------------------------------------------------
_ACTIONS = ("acknowledge", "clear", "assign", "comments")


class AlarmDesk:
    """What operators do with alarms and incidents: list, look at, acknowledge, clear, assign,
    comment. Each action is one store transaction (the alarm, its log, the notifications it
    sends); then the dispatcher is woken and the change goes to the event hub."""

    def __init__(
        self,
        store: Store,
        *,
        webhooks: Sequence[Any] | None = None,
        hub: Any = None,
        dispatcher: Any = None,
        clock: Callable[[], dt.datetime] | None = None,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self.webhooks = list(webhooks if webhooks is not None else twin_webhooks(store))
        self.hub = hub
        self.dispatcher = dispatcher
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._owns = owns_store

    @classmethod
    def open(cls, twin: str | Path, *, write: bool = False) -> AlarmDesk:
        """A desk on a twin file (read-only unless ``write``)."""
        from citytwin.store import open_store

        return cls(open_store(twin, read_only=not write), owns_store=True)

    def __enter__(self) -> AlarmDesk:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owns:
            self.store.close()

    def alarms(self, **filters: Any) -> pd.DataFrame:
        """Alarms (``Store.alarms`` filters), newest first."""
        status = filters.get("status")
        if status not in (None, "active", "cleared"):
            raise InvalidInput(f"status {status!r}: use active or cleared")
        return self.store.alarms(**filters)

    def alarm(self, alarm_id: str) -> dict[str, Any]:
        """One alarm (JSON-able) with its ``log``."""
        row = self.store.alarm(alarm_id)
        if row is None:
            raise NotFound(f"no alarm {alarm_id!r}", hint="citytwin alarms list shows them")
        out = jsonable(row)
        out["log"] = jsonable(self.store.alarm_log(alarm_id).to_dict("records"))
        return out

    def incidents(self, **filters: Any) -> pd.DataFrame:
        status = filters.get("status")
        if status not in (None, "open", "closed"):
            raise InvalidInput(f"status {status!r}: use open or closed")
        return self.store.incidents(**filters)

    def incident(self, incident_id: str) -> dict[str, Any]:
        row = self.store.incident(incident_id)
        if row is None:
            raise NotFound(f"no incident {incident_id!r}")
        out = jsonable(row)
        out["alarms"] = jsonable(
            self.store.alarms(incident_id=incident_id, limit=None).to_dict("records")
        )
        return out

    def act(
        self,
        alarm_id: str,
        action: str,
        *,
        by: str,
        to: str | None = None,
        text: str | None = None,
    ) -> dict[str, Any]:
        """``acknowledge`` / ``clear`` / ``assign`` (``to``) / ``comments`` (``text``) an
        alarm as ``by``; returns the alarm as it now is."""
        if action not in _ACTIONS:
            raise InvalidInput(
                f"{action!r} is not something to do with an alarm", hint=", ".join(_ACTIONS)
            )
        now = self.clock()
        with self.store.transaction():
            current = self.store.alarm(alarm_id)
            if current is None:
                raise NotFound(f"no alarm {alarm_id!r}", hint="citytwin alarms list shows them")
            if action == "acknowledge":
                row, entry = acknowledge(current, by, now, text)
            elif action == "clear":
                row, entry = clear(current, by, now, text)
            elif action == "assign":
                if not to:
                    raise InvalidInput("assign to whom?", hint='give "to"')
                row, entry = assign(current, to, by, now)
            else:
                row, entry = comment(current, by, now, text or "")
            changes = operator_changes(row, entry)
            self.store.save_alarms(changes.alarms, changes.log)
            queued = 0
            if self.webhooks and len(changes.changes):
                rows = notification_rows(
                    changes.changes, changes.alarms, self.webhooks, created_at=now
                )
                queued = self.store.enqueue(rows) if len(rows) else 0
        if queued and self.dispatcher is not None:
            self.dispatcher.wake()
        if self.hub is not None and len(changes.changes):
            self.hub.publish_changes(changes.changes, changes.alarms)
        return jsonable(row)

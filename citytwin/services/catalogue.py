"""What a twin publishes: its collections (one per model layer, one per utility network's nodes
and links) with the metadata a catalogue shows — title in English and Chinese, owning
department, update frequency, licence, sensitivity — and the access policy of each.

The defaults come from the model; a twin keeps its own choices in the document
``services/catalogue`` (``{"collections": {<id>: {<field>: value, ...}}, "departments": {...}}``),
which overrides field by field. ``Catalogue.of(store)`` reads both.

Sensitivity levels:

- ``public``: anyone, without credentials.
- ``restricted``: staff of the owning department and of ``departments``; listed in the
  catalogue for everyone (so others can ask for access), data only for those.
- ``confidential``: as restricted, and not even listed for anyone else.

``row_rules`` narrow a collection further: rows matching a rule's CQL2 condition are only for
the rule's departments (e.g. high-pressure gas mains only for the gas utility and emergency
management). ``district_scoped``: a user bound to a district sees only features in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from citytwin.errors import InvalidInput, NotFound
from citytwin.model import LAYERS, NETWORK_TYPES, layer
from citytwin.store.base import Filter, Query, Store

SENSITIVITIES = ("public", "restricted", "confidential")
CATALOGUE_DOCUMENT = "services/catalogue"

DEPARTMENTS: dict[str, dict[str, str]] = {
    "planning": {"name": "Planning and Natural Resources", "name_zh": "规划和自然资源局"},
    "housing": {"name": "Housing and Urban-Rural Development", "name_zh": "住房和城乡建设局"},
    "water": {"name": "Water Authority (supply)", "name_zh": "水务局（供水）"},
    "drainage": {"name": "Water Authority (drainage)", "name_zh": "水务局（排水）"},
    "gas": {"name": "Gas Utility", "name_zh": "燃气集团"},
    "power": {"name": "Power Supply Bureau", "name_zh": "供电局"},
    "heating": {"name": "Heating Utility", "name_zh": "热力公司"},
    "telecom": {"name": "Telecommunications", "name_zh": "通信管理局"},
    "transport": {"name": "Transport Bureau", "name_zh": "交通运输局"},
    "emergency": {"name": "Emergency Management Bureau", "name_zh": "应急管理局"},
    "civil_affairs": {"name": "Civil Affairs Bureau", "name_zh": "民政局"},
}
"""The default departments of a city (a twin may add its own in the catalogue document)."""

NETWORK_OWNERS = {
    "water_supply": "water",
    "sewer": "drainage",
    "storm": "drainage",
    "combined": "drainage",
    "gas": "gas",
    "power": "power",
    "heating": "heating",
    "telecom": "telecom",
}
_NETWORK_ZH = {
    "water_supply": "供水",
    "sewer": "污水",
    "storm": "雨水",
    "combined": "合流",
    "gas": "燃气",
    "power": "电力",
    "heating": "热力",
    "telecom": "通信",
}
_LAYER_ZH = {
    "buildings": "建筑",
    "streets": "道路",
    "water_bodies": "水系",
    "zones": "区划与分区",
    "facilities": "公共与关键设施",
    "devices": "监测设备",
    "city_objects": "其他城市对象",
}
_LAYER_FREQUENCY = {"devices": "daily", "zones": "yearly", "city_objects": "yearly"}


@dataclass(frozen=True)
class RowRule:
    """Rows matching ``where`` (CQL2 text) are only for ``departments``; others don't see them."""

    where: str
    departments: tuple[str, ...]
    reason: str = ""


@dataclass(frozen=True)
class Collection:
    """A published collection: a model layer, optionally narrowed to one network."""

    id: str
    layer: str
    title: str
    title_zh: str
    description: str = ""
    network: str | None = None
    owner: str = "planning"
    sensitivity: str = "public"
    departments: tuple[str, ...] = ()
    row_rules: tuple[RowRule, ...] = ()
    district_scoped: bool = False
    update_frequency: str = "monthly"
    licence: str = "CC-BY-4.0"
    keywords: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sensitivity not in SENSITIVITIES:
            raise InvalidInput(
                f"collection {self.id!r}: unknown sensitivity {self.sensitivity!r}",
                hint=f"use one of {', '.join(SENSITIVITIES)}",
            )
        layer(self.layer)

    @property
    def readers(self) -> frozenset[str]:
        """Departments that may read a restricted or confidential collection."""
        return frozenset((self.owner, *self.departments))

    def query(self, **conditions: Any) -> Query:
        """A store query over this collection (its network filter included)."""
        where = list(conditions.pop("where", ()))
        if self.network is not None:
            where.append(Filter("network", "=", self.network))
        return Query(self.layer, where=where, **conditions)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["row_rules"] = [r.__dict__ for r in self.row_rules]
        return out


def default_collections(store: Store) -> list[Collection]:
    """One collection per non-empty layer; utility layers split by network type."""
    present = {s.layer: s for s in store.summary()}
    out: list[Collection] = []
    for name, lay in LAYERS.items():
        if name.startswith("utility_") or name not in present:
            continue
        out.append(
            Collection(
                id=name,
                layer=name,
                title=name.replace("_", " ").capitalize(),
                title_zh=_LAYER_ZH.get(name, name),
                description=lay.description,
                update_frequency=_LAYER_FREQUENCY.get(name, "monthly"),
                district_scoped=name in ("buildings", "facilities"),
                keywords=(name,),
            )
        )
    for kind, label in (("utility_nodes", "nodes"), ("utility_links", "links")):
        if kind not in present:
            continue
        for network in _networks_in(store, kind):
            out.append(_network_collection(kind, label, network))
    return out


def _network_collection(kind: str, label: str, network: str) -> Collection:
    words = network.replace("_", " ")
    zh = _NETWORK_ZH[network] + ("管点" if label == "nodes" else "管线")
    rules: tuple[RowRule, ...] = ()
    if network == "gas" and label == "links":
        rules = (
            RowRule(
                "pressure_class IN ('high', 'sub_high')",
                ("gas", "emergency"),
                "exact geometry of high-pressure gas mains",
            ),
        )
    return Collection(
        id=f"{network}_{label}",
        layer=kind,
        network=network,
        title=f"{words.capitalize()} network {label}",
        title_zh=zh,
        description=f"{LAYERS[kind].description} ({words} network)",
        owner=NETWORK_OWNERS[network],
        sensitivity="restricted",
        departments=("planning", "emergency", "housing"),
        row_rules=rules,
        update_frequency="weekly",
        licence="restricted: for the departments named",
        keywords=(network, "utility", "underground", label),
    )


def _networks_in(store: Store, kind: str) -> list[str]:
    found = []
    for network in NETWORK_TYPES:
        if store.count(Query(kind, where=[Filter("network", "=", network)], limit=1)):
            found.append(network)
    return found


@dataclass
class Catalogue:
    """A twin's published collections and its departments."""

    collections: dict[str, Collection]
    departments: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEPARTMENTS))

    @classmethod
    def of(cls, store: Store) -> Catalogue:
        """The twin's catalogue: the defaults, overridden by its ``services/catalogue``."""
        base = {c.id: c for c in default_collections(store)}
        doc = store.get_document(CATALOGUE_DOCUMENT) or {}
        for cid, changes in (doc.get("collections") or {}).items():
            base[cid] = _override(base.get(cid), cid, changes)
        departments = dict(DEPARTMENTS)
        departments.update(doc.get("departments") or {})
        return cls(base, departments)

    def __iter__(self) -> Iterator[Collection]:
        return iter(self.collections.values())

    def __len__(self) -> int:
        return len(self.collections)

    def get(self, cid: str) -> Collection:
        """The collection ``cid``; ``NotFound`` naming the collections otherwise."""
        try:
            return self.collections[cid]
        except KeyError:
            raise NotFound(
                f"no collection {cid!r}", hint="GET /collections lists the collections"
            ) from None


def _override(current: Collection | None, cid: str, changes: dict[str, Any]) -> Collection:
    if not isinstance(changes, dict):
        raise InvalidInput(
            f"collection {cid!r}: expected an object of fields", source=CATALOGUE_DOCUMENT
        )
    values = dict(changes)
    if "row_rules" in values:
        values["row_rules"] = tuple(
            RowRule(r["where"], tuple(r["departments"]), r.get("reason", ""))
            for r in values["row_rules"]
        )
    for key in ("departments", "keywords"):
        if key in values:
            values[key] = tuple(values[key])
    known = {f.name for f in fields(Collection)}
    unknown = set(values) - known
    if unknown:
        raise InvalidInput(
            f"collection {cid!r}: unknown fields {', '.join(sorted(unknown))}",
            source=CATALOGUE_DOCUMENT,
            hint=f"fields: {', '.join(sorted(known))}",
        )
    if current is None:
        return Collection(id=cid, **{k: v for k, v in values.items() if k != "id"})
    return replace(current, **{k: v for k, v in values.items() if k != "id"})


def router(ctx: Any) -> Any:
    """The catalogue's routes (being built)."""
    from fastapi import APIRouter

    return APIRouter()

"""The OGC SensorThings API 1.1 entity model as a twin serves it (the read side): entity sets,
their properties and navigation, and the read request a store answers (``EntityRequest``).

How the entity sets map onto the twin (see ``citytwin.sensing.model``):

- **Things** and **Locations**: the current features of the ``devices`` layer; a Thing has one
  Location, with the Thing's id, at the device's point.
- **HistoricalLocations**: the versions of a device (``<thing>@<valid from>``): where it was
  from when.
- **Datastreams**: the store's datastreams.
- **Sensors**: the ``sensor_id`` values of the datastreams (``sensor:<device class>``).
- **ObservedProperties**: the observed properties of the datastreams, by name.
- **Observations**: the stored readings, ``<datastream>@<phenomenon time>`` (as
  ``citytwin.sensing.payloads.observation_ids`` writes them).
- **FeaturesOfInterest**: what a datastream observes: its ``asset_id`` (a model feature: a
  manhole, a DMA inlet, a building), else its Thing's device feature.

Filters and orderings are pygeofilter ASTs (``pygeofilter.ast``) whose attributes are
SensorThings property paths: ``name``, ``@iot.id``, ``properties/network``,
``unitOfMeasurement/symbol``, ``Datastream/Thing/name``, ``Datastreams/ObservedProperty/name``
(any of a Thing's datastreams). Geometries in them are in the twin's CRS, times naive UTC or
timezone-aware. A store answers a request with a frame of ``FRAME_COLUMNS`` per entity set,
which the service writes as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

DEFAULT_TOP = 100
"""Entities per page when a request gives no ``$top``."""
MAX_TOP = 10_000
"""The most entities a page holds."""


@dataclass(frozen=True)
class Navigation:
    """A navigation property: the entity set it leads to, whether to many entities, and the
    column of the parent's frame whose values the related entities are found by."""

    name: str
    target: str
    many: bool
    link: str


@dataclass(frozen=True)
class EntitySet:
    """One entity set: its name, the singular (type name), its own properties (as they appear
    in JSON), its navigation properties, and its default order (property, descending)."""

    name: str
    singular: str
    properties: tuple[str, ...]
    navigation: dict[str, Navigation]
    default_order: tuple[tuple[str, bool], ...] = (("@iot.id", False),)

    def nav(self, name: str) -> Navigation | None:
        return self.navigation.get(name)


def _nav(*items: tuple[str, str, bool, str]) -> dict[str, Navigation]:
    return {name: Navigation(name, target, many, link) for name, target, many, link in items}


_COMMON = ("@iot.id", "@iot.selfLink")
ENTITY_SETS: dict[str, EntitySet] = {
    s.name: s
    for s in (
        EntitySet(
            "Things",
            "Thing",
            (*_COMMON, "name", "description", "properties"),
            _nav(
                ("Locations", "Locations", True, "id"),
                ("HistoricalLocations", "HistoricalLocations", True, "id"),
                ("Datastreams", "Datastreams", True, "id"),
            ),
        ),
        EntitySet(
            "Locations",
            "Location",
            (*_COMMON, "name", "description", "encodingType", "location"),
            _nav(
                ("Things", "Things", True, "id"),
                ("HistoricalLocations", "HistoricalLocations", True, "id"),
            ),
        ),
        EntitySet(
            "HistoricalLocations",
            "HistoricalLocation",
            (*_COMMON, "time"),
            _nav(
                ("Thing", "Things", False, "thing_id"),
                ("Locations", "Locations", True, "thing_id"),
            ),
            (("time", True),),
        ),
        EntitySet(
            "Datastreams",
            "Datastream",
            (
                *_COMMON,
                "name",
                "description",
                "unitOfMeasurement",
                "observationType",
                "observedArea",
                "properties",
            ),
            _nav(
                ("Thing", "Things", False, "thing_id"),
                ("Sensor", "Sensors", False, "sensor_id"),
                ("ObservedProperty", "ObservedProperties", False, "observed_property"),
                ("Observations", "Observations", True, "key"),
            ),
        ),
        EntitySet(
            "Sensors",
            "Sensor",
            (*_COMMON, "name", "description", "encodingType", "metadata"),
            _nav(("Datastreams", "Datastreams", True, "id")),
        ),
        EntitySet(
            "ObservedProperties",
            "ObservedProperty",
            (*_COMMON, "name", "definition", "description"),
            _nav(("Datastreams", "Datastreams", True, "id")),
        ),
        EntitySet(
            "Observations",
            "Observation",
            (*_COMMON, "phenomenonTime", "resultTime", "result", "resultQuality"),
            _nav(
                ("Datastream", "Datastreams", False, "key"),
                ("FeatureOfInterest", "FeaturesOfInterest", False, "foi_id"),
            ),
            (("phenomenonTime", False),),
        ),
        EntitySet(
            "FeaturesOfInterest",
            "FeatureOfInterest",
            (*_COMMON, "name", "description", "encodingType", "feature"),
            _nav(("Observations", "Observations", True, "id")),
        ),
    )
}
"""The entity sets served, by name."""

FRAME_COLUMNS: dict[str, tuple[str, ...]] = {
    "Things": ("id", "name", "description", "class", "feature_id", "network", "model", "status",
               "props"),
    "Locations": ("id", "name", "description", "network", "geometry"),
    "HistoricalLocations": ("thing_id", "time"),
    "Datastreams": ("key", "id", "name", "description", "thing_id", "sensor_id",
                    "observed_property", "unit", "unit_name", "unit_definition",
                    "observation_type", "asset_id", "network", "zone", "group", "tags", "x", "y"),
    "Sensors": ("id", "name", "description", "metadata"),
    "ObservedProperties": ("id", "name", "definition", "description"),
    "Observations": ("key", "datastream_id", "phenomenon_time", "result", "result_time",
                     "result_quality", "foi_id"),
    "FeaturesOfInterest": ("id", "name", "description", "layer", "geometry"),
}  # fmt: skip
"""The columns of a store's answer per entity set (``geometry``: WKB in the twin's CRS;
``props``: the device's extra properties as JSON text; ``key``: the datastream's integer key,
what Observations are found by; times naive UTC)."""


@dataclass(frozen=True)
class Link:
    """Only the entities related to some parents: those reached from entities of ``parent``
    through ``navigation`` whose link column (``Navigation.link``) holds one of ``values``.
    ``per_parent`` (an ``$expand``): top, skip and count apply to each parent's entities,
    and the answer says which parent each entity belongs to."""

    parent: str
    navigation: str
    values: tuple[Any, ...]
    per_parent: bool = False


@dataclass(frozen=True)
class EntityRequest:
    """What to read from one entity set. ``filter``: a pygeofilter AST (None: all);
    ``order_by``: (expression, descending) pairs, pygeofilter nodes (``ast.Attribute`` for a
    property path), before the set's default order; ``ids``: only these entities;
    ``networks``: only entities of these networks (None in it: entities without one) — the
    networks the principal may read; None: no restriction."""

    entity_set: str
    filter: Any = None
    order_by: tuple[tuple[Any, bool], ...] = ()
    top: int = DEFAULT_TOP
    skip: int = 0
    count: bool = False
    ids: tuple[str, ...] | None = None
    link: Link | None = None
    networks: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.entity_set not in ENTITY_SETS:
            raise KeyError(f"unknown entity set {self.entity_set!r}")


@dataclass
class EntityPage:
    """A store's answer: ``frame`` (``FRAME_COLUMNS`` of the set, at most ``top + 1`` rows —
    per parent with a per-parent link — so the caller can tell whether more follow; with a
    link, ``_link`` holds the parent's link value), the total count (with ``count``), and
    with a per-parent link the count per link value."""

    frame: pd.DataFrame
    count: int | None = None
    counts: dict[Any, int] = field(default_factory=dict)

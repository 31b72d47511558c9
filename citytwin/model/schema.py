"""The city information model: layers, feature classes and their typed attributes.

Every layer is a table of features sharing a geometry kind and an explicit attribute schema.
A feature's ``class`` says what it is within the layer (a ``hospital`` in ``facilities``, a
``manhole`` in ``utility_nodes``). Lengths are metres, levels are metres above the vertical
datum, diameters are metres, flows are m³/s.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NETWORK_TYPES = ("water_supply", "sewer", "storm", "combined", "gas", "power", "heating", "telecom")
"""Utility network types; ``sewer`` is foul drainage, ``storm`` surface-water drainage."""

GRAVITY_NETWORKS = ("sewer", "storm", "combined")

STATUSES = ("planned", "under_construction", "in_service", "abandoned")
"""Lifecycle status of a real-world asset."""

CIM_LEVELS = (1, 2, 3, 4, 5, 6, 7)
"""CIM levels of detail (China's CIM standard: 1 = region ... 3 = LoD1 block ... 7 = parts)."""


class AttrType(StrEnum):
    """Types an attribute value can take."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"


@dataclass(frozen=True)
class Attribute:
    """A typed attribute of a layer."""

    name: str
    type: AttrType
    description: str = ""
    unit: str | None = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None

    def coerce(self, value: Any) -> Any:
        """``value`` converted to this attribute's type; ``ValueError`` if it can't be."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if self.required:
                raise ValueError(f"required attribute {self.name!r} is missing")
            return None
        try:
            out = _COERCE[self.type](value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(
                f"attribute {self.name!r} expects {self.type.value}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            raise ValueError(
                f"attribute {self.name!r} must be one of {', '.join(map(str, self.choices))};"
                f" got {out!r}"
            )
        if self.minimum is not None and out < self.minimum:
            raise ValueError(f"attribute {self.name!r} must be >= {self.minimum}; got {out!r}")
        return out


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(v)
        return int(v)
    if isinstance(v, str):
        f = float(v.strip())
        if not f.is_integer():
            raise ValueError(v)
        return int(f)
    return int(v)


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(v)
    out = float(v.strip() if isinstance(v, str) else v)
    if math.isnan(out) or math.isinf(out):
        raise ValueError(v)
    return out


def _to_bool(v: Any) -> bool:
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "true", "yes", "y", "t"):
            return True
        if s in ("0", "false", "no", "n", "f"):
            return False
        raise ValueError(v)
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    if isinstance(v, bool):
        return v
    raise ValueError(v)


def _to_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        return dt.date.fromisoformat(v.strip()[:10])
    raise ValueError(v)


def _to_str(v: Any) -> str:
    if isinstance(v, bytes):
        raise ValueError(v)
    return str(v)


_COERCE = {
    AttrType.STR: _to_str,
    AttrType.INT: _to_int,
    AttrType.FLOAT: _to_float,
    AttrType.BOOL: _to_bool,
    AttrType.DATE: _to_date,
}


@dataclass(frozen=True)
class Layer:
    """A layer of the model: one kind of geometry, a set of classes, a typed attribute schema."""

    name: str
    geometry: str  # "Polygon", "LineString", "Point" (multi-parts allowed) or "Any"
    classes: tuple[str, ...]
    attributes: tuple[Attribute, ...]
    description: str = ""
    open_classes: bool = False  # True: unknown classes are kept (e.g. CityJSON object types)
    _by_name: dict[str, Attribute] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({a.name: a for a in self.attributes})

    def attribute(self, name: str) -> Attribute:
        """The attribute called ``name``; ``KeyError`` with the known names if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"layer {self.name!r} has no attribute {name!r}; known: {', '.join(self._by_name)}"
            ) from None

    def has_attribute(self, name: str) -> bool:
        return name in self._by_name

    def check_class(self, cls: str) -> None:
        """Raise ``ValueError`` if ``cls`` is not a class of this layer."""
        if cls not in self.classes and not self.open_classes:
            raise ValueError(
                f"class {cls!r} is not a class of layer {self.name!r};"
                f" use one of {', '.join(self.classes)}"
            )


def _a(name: str, typ: AttrType, description: str = "", **kw: Any) -> Attribute:
    return Attribute(name, typ, description, **kw)


STR, INT, FLOAT, BOOL = AttrType.STR, AttrType.INT, AttrType.FLOAT, AttrType.BOOL

_NETWORK = _a("network", STR, "utility network type", required=True, choices=NETWORK_TYPES)

LAYERS: dict[str, Layer] = {
    layer.name: layer
    for layer in (
        Layer(
            "buildings",
            "Polygon",
            ("building", "building_part"),
            (
                _a("name", STR),
                _a("height", FLOAT, "height above ground", unit="m", minimum=0),
                _a("height_estimated", BOOL, "height derived from floors, not measured"),
                _a("floors", INT, "storeys above ground", minimum=0),
                _a("basement_floors", INT, "storeys below ground", minimum=0),
                _a("use", STR, "residential, commercial, office, industrial, school, hospital ..."),
                _a("year_built", INT),
                _a("residents", INT, "night-time population", minimum=0),
                _a("daytime_population", INT, minimum=0),
                _a("ground_level", FLOAT, "terrain level at the footprint", unit="m"),
                _a("lod", STR, "level of detail of the geometry (CityGML LoD: 0, 1, 1.2, 2.2 ...)"),
                _a("cim_level", INT, "CIM level of detail", choices=CIM_LEVELS),
                _a("parent_id", STR, "the building a building part belongs to"),
            ),
            "Building footprints with height, use and population; optional 3D geometry.",
        ),
        Layer(
            "streets",
            "LineString",
            ("road", "rail"),
            (
                _a("name", STR),
                _a(
                    "street_class",
                    STR,
                    "motorway, trunk, primary, secondary, tertiary, residential ...",
                ),
                _a("width", FLOAT, "carriageway width", unit="m", minimum=0),
                _a("lanes", INT, minimum=0),
                _a("oneway", BOOL),
                _a("bridge", BOOL),
                _a("tunnel", BOOL),
                _a("surface", STR),
            ),
            "Street and rail centre lines.",
        ),
        Layer(
            "water_bodies",
            "Any",
            ("river", "stream", "canal", "lake", "pond", "reservoir", "sea", "wetland", "water"),
            (_a("name", STR), _a("water_level", FLOAT, "normal water level", unit="m")),
            "Rivers, canals, lakes and the sea.",
        ),
        Layer(
            "zones",
            "Polygon",
            ("district", "catchment", "subcatchment", "dma", "grid_cell", "land_use"),
            (
                _a("name", STR),
                _a("code", STR),
                _a("land_use", STR),
                _a("population", INT, minimum=0),
                _a("imperviousness", FLOAT, "impervious share of area", unit="%", minimum=0),
                _a("area", FLOAT, "area as given by the source", unit="m2", minimum=0),
                _a("outlet", STR, "id of the node the zone drains to"),
                _a("network", STR, "utility network the zone belongs to", choices=NETWORK_TYPES),
            ),
            "Districts, drainage catchments and subcatchments, district metered areas, grid cells.",
        ),
        Layer(
            "facilities",
            "Any",
            (
                "hospital",
                "clinic",
                "school",
                "kindergarten",
                "university",
                "elderly_care",
                "shelter",
                "fire_station",
                "police",
                "metro_station",
                "metro_entrance",
                "rail_station",
                "bus_station",
                "water_treatment_plant",
                "sewage_treatment_plant",
                "pumping_station",
                "substation",
                "power_plant",
                "gas_station",
                "gas_regulator_station",
                "telecom_exchange",
                "government",
                "other",
            ),
            (
                _a("name", STR),
                _a(
                    "capacity",
                    INT,
                    "people (shelters, hospitals: beds, schools: pupils)",
                    minimum=0,
                ),
                _a("operator", STR),
                _a("critical", BOOL, "critical for emergency response"),
                _a("building_id", STR, "building that houses the facility"),
            ),
            "Critical and public facilities.",
        ),
        Layer(
            "utility_nodes",
            "Point",
            (
                "junction",
                "reservoir",
                "tank",
                "valve",
                "hydrant",
                "service_connection",
                "meter",
                "manhole",
                "inlet",
                "outfall",
                "storage",
                "divider",
                "pumping_station",
                "regulator",
                "substation",
                "transformer",
                "chamber",
                "cap",  # end cap or plug closing a line (a dead-ended main)
                "other",
            ),
            (
                _NETWORK,
                _a("name", STR),
                _a("elevation", FLOAT, "node elevation (water: junction head datum)", unit="m"),
                _a("cover_level", FLOAT, "ground / cover level", unit="m"),
                _a("invert_level", FLOAT, "invert level", unit="m"),
                _a("depth", FLOAT, "cover level minus invert level", unit="m", minimum=0),
                _a("base_demand", FLOAT, "base demand", unit="m3/s"),
                _a("building_id", STR, "building served (service connections)"),
                _a("link_id", STR, "the link a valve, meter or fitting sits on"),
                _a("zone_id", STR, "DMA or catchment"),
                _a("owner", STR, "utility that owns and operates it"),
            ),
            "Nodes of the underground utility networks, in 3D (cover and invert levels).",
        ),
        Layer(
            "utility_links",
            "LineString",
            (
                "pipe",
                "pump",
                "valve",
                "conduit",
                "orifice",
                "weir",
                "outlet",
                "cable",
                "service_pipe",
                "duct",
                "other",
            ),
            (
                _NETWORK,
                _a("name", STR),
                _a("from_node", STR, "id of the start node", required=True),
                _a("to_node", STR, "id of the end node", required=True),
                _a("diameter", FLOAT, "internal diameter or height", unit="m", minimum=0),
                _a("length", FLOAT, unit="m", minimum=0),
                _a("material", STR),
                _a("roughness", FLOAT, "Hazen-Williams C, Darcy-Weisbach mm or Manning n"),
                _a("invert_from", FLOAT, "invert level at the start", unit="m"),
                _a("invert_to", FLOAT, "invert level at the end", unit="m"),
                _a("depth", FLOAT, "cover over the crown", unit="m"),
                _a("pressure_class", STR, "gas: low, medium, high; power: LV, MV, HV"),
                _a("valve_type", STR, "valves: PRV, TCV, GPV, isolation ..."),
                _a("initial_status", STR, "open, closed, active"),
                _a("owner", STR, "utility that owns and operates it"),
            ),
            "Pipes, conduits, cables, pumps and valves of the utility networks.",
        ),
        Layer(
            "devices",
            "Point",
            (
                "water_meter",
                "flow_meter",
                "pressure_sensor",
                "level_sensor",
                "rain_gauge",
                "water_quality_sensor",
                "gas_detector",
                "camera",
                "other",
            ),
            (
                _a("name", STR),
                _a("feature_id", STR, "the model feature the device is attached to"),
                _a("network", STR, choices=NETWORK_TYPES),
                _a("model", STR),
            ),
            "Monitoring devices (SensorThings Things), attached to model features.",
        ),
        Layer(
            "city_objects",
            "Any",
            ("road", "land_use", "plant_cover", "water_body", "bridge", "generic", "other"),
            (_a("name", STR), _a("source_type", STR, "the object type in the source format")),
            "Other 3D city objects kept with their source type (CityJSON LandUse, Bridge ...).",
            open_classes=True,
        ),
    )
}

RASTER_KINDS = ("dem", "land_cover", "imperviousness", "other")


def layer(name: str) -> Layer:
    """The layer called ``name``; ``KeyError`` listing the layers if there is none."""
    try:
        return LAYERS[name]
    except KeyError:
        raise KeyError(f"unknown layer {name!r}; layers: {', '.join(LAYERS)}") from None

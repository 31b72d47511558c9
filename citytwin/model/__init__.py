"""The city information model: the vocabulary every part of CityTwin speaks."""

from citytwin.model.features import (
    BASE_COLUMNS,
    Feature,
    empty_frame,
    features_from_frame,
    validate_frame,
)
from citytwin.model.schema import (
    CIM_LEVELS,
    GRAVITY_NETWORKS,
    LAYERS,
    NETWORK_TYPES,
    RASTER_KINDS,
    STATUSES,
    Attribute,
    AttrType,
    Layer,
    layer,
)
from citytwin.model.twin import TwinMeta, check_projected_crs

__all__ = [
    "BASE_COLUMNS",
    "CIM_LEVELS",
    "GRAVITY_NETWORKS",
    "LAYERS",
    "NETWORK_TYPES",
    "RASTER_KINDS",
    "STATUSES",
    "AttrType",
    "Attribute",
    "Feature",
    "Layer",
    "TwinMeta",
    "check_projected_crs",
    "empty_frame",
    "features_from_frame",
    "layer",
    "validate_frame",
]

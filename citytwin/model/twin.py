"""The twin itself: its name, coordinate reference system, extent and labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from pyproj import CRS
from pyproj.exceptions import CRSError

from citytwin.errors import InvalidInput


@dataclass
class TwinMeta:
    """What a twin is: a projected CRS in metres, an extent, and whether it is virtual."""

    name: str
    crs: str  # "EPSG:nnnn" or WKT
    extent: tuple[float, float, float, float] | None = None  # minx, miny, maxx, maxy in the CRS
    virtual: bool = False
    description: str = ""
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def __post_init__(self) -> None:
        self.crs = check_projected_crs(self.crs)
        if self.extent is not None:
            self.extent = tuple(float(v) for v in self.extent)  # type: ignore[assignment]
            minx, miny, maxx, maxy = self.extent
            if not (minx < maxx and miny < maxy):
                raise InvalidInput(
                    f"extent {self.extent} is empty", hint="give minx,miny,maxx,maxy"
                )

    @property
    def pyproj_crs(self) -> CRS:
        return CRS.from_user_input(self.crs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TwinMeta:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def check_projected_crs(crs: Any) -> str:
    """Normalise ``crs`` to "EPSG:n" (or WKT); reject unknown or non-metric CRSs clearly."""
    try:
        c = CRS.from_user_input(crs)
    except CRSError as exc:
        raise InvalidInput(
            f"unknown CRS {crs!r}: {exc}", hint="give an EPSG code such as EPSG:4547"
        ) from None
    if not c.is_projected:
        raise InvalidInput(
            f"CRS {crs!r} ({c.name}) is not projected",
            hint="a twin needs a projected CRS in metres,"
            " e.g. EPSG:4547 (CGCS2000 / 3-degree GK CM 114E)",
        )
    unit = c.axis_info[0].unit_name if c.axis_info else ""
    if unit not in ("metre", "meter"):
        raise InvalidInput(
            f"CRS {crs!r} ({c.name}) has units of {unit!r}", hint="use a CRS in metres"
        )
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()

"""Who may read what: principals, grants per collection, and the request dependency.

Every endpoint family asks the same two questions through this module:

- ``principal(request)`` (a FastAPI dependency): who is asking — anonymous, or a user of a
  department with roles (and maybe a district), from an API key or an OAuth2 bearer token.
  Wrong or expired credentials are a 401 whatever is asked for.
- ``ctx.access.grant(principal, collection)``: may they read this collection, and with what
  narrowing — a ``Grant`` with the CQL2 conditions of the rows they must not see and the
  district they are bound to. Not allowed: 401 for anonymous, 403 for a signed-in user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import shapely
from fastapi import Request

from citytwin.errors import Forbidden, Unauthorized
from citytwin.services.catalogue import Catalogue, Collection

if TYPE_CHECKING:
    from citytwin.store.base import Store

ADMIN = "admin"
"""The role that reads everything and manages departments, users and keys."""


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``user`` None: anonymous."""

    user: str | None = None
    department: str | None = None
    roles: frozenset[str] = frozenset()
    district: str | None = None  # a zone id (class district): row-level scope
    key_id: str | None = None  # the API key or token that authenticated the request

    @property
    def anonymous(self) -> bool:
        return self.user is None

    @property
    def admin(self) -> bool:
        return ADMIN in self.roles


ANONYMOUS = Principal()


@dataclass(frozen=True)
class Grant:
    """Read access to one collection: the rows matching any of ``hidden`` (CQL2 text) are left
    out; with ``district`` set, only features intersecting ``district_geometry`` are in."""

    collection: Collection
    hidden: tuple[str, ...] = ()
    district: str | None = None
    district_geometry: shapely.Geometry | None = None

    @property
    def narrowed(self) -> bool:
        return bool(self.hidden) or self.district_geometry is not None


@dataclass
class AccessControl:
    """Policies of a twin's catalogue applied to principals."""

    catalogue: Catalogue
    store: Store | None = None
    _districts: dict[str, shapely.Geometry] = field(default_factory=dict)

    def can_see(self, principal: Principal, collection: Collection) -> bool:
        """Whether the collection is listed for ``principal`` (its metadata, not its data)."""
        return collection.sensitivity != "confidential" or self._reader(principal, collection)

    def can_read(self, principal: Principal, collection: Collection) -> bool:
        return collection.sensitivity == "public" or self._reader(principal, collection)

    def grant(self, principal: Principal, collection: Collection | str) -> Grant:
        """The grant of ``principal`` on ``collection``; ``Unauthorized`` (anonymous) or
        ``Forbidden`` (signed in) when they may not read it."""
        coll = self.catalogue.get(collection) if isinstance(collection, str) else collection
        if not self.can_read(principal, coll):
            if principal.anonymous:
                raise Unauthorized(
                    f"collection {coll.id!r} is {coll.sensitivity}",
                    hint="send an API key (X-API-Key) or a bearer token (POST /oauth/token)",
                )
            raise Forbidden(
                f"collection {coll.id!r} is {coll.sensitivity}: for the departments"
                f" {', '.join(sorted(coll.readers))}, not {principal.department!r}",
                hint=f"ask the owner ({coll.owner}) for access",
            )
        hidden = tuple(
            rule.where
            for rule in coll.row_rules
            if not principal.admin and principal.department not in rule.departments
        )
        district = principal.district if coll.district_scoped and not principal.admin else None
        geometry = self._district_geometry(district) if district else None
        return Grant(coll, hidden, district, geometry)

    def readable(self, principal: Principal) -> list[Collection]:
        """The collections ``principal`` may read."""
        return [c for c in self.catalogue if self.can_read(principal, c)]

    def _reader(self, principal: Principal, collection: Collection) -> bool:
        return principal.admin or (
            principal.department is not None and principal.department in collection.readers
        )

    def _district_geometry(self, district: str) -> shapely.Geometry:
        if district not in self._districts:
            from citytwin.store.base import Query

            if self.store is None:
                raise Forbidden(f"district {district!r} can't be resolved without the twin")
            frame = self.store.query(Query("zones", ids=[district]))
            if not len(frame):
                # a user bound to a district that does not exist sees nothing, not everything
                self._districts[district] = shapely.Polygon()
            else:
                self._districts[district] = shapely.union_all(frame.geometry.to_numpy())
        return self._districts[district]


def principal(request: Request) -> Principal:
    """The FastAPI dependency: the principal the authentication middleware put on the
    request (anonymous when there is none)."""
    return getattr(request.state, "principal", ANONYMOUS)


def authenticate(request: Request, registry: Any = None) -> Principal:
    """The principal of a request's credentials (``X-API-Key`` header, ``api_key`` query
    parameter or ``Authorization: Bearer``); anonymous when none are given."""
    key = request.headers.get("x-api-key") or request.query_params.get("api_key")
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    if key is None and token is None:
        if auth:
            raise Unauthorized("unsupported Authorization scheme", hint="use Bearer <token>")
        return ANONYMOUS
    if registry is None:
        raise Unauthorized("this service issues no credentials")
    return registry.principal_for(api_key=key, token=token)


def install(app: Any, ctx: Any) -> None:
    """Authenticate every request (the principal goes on ``request.state``)."""
    from citytwin.services.api import _error

    @app.middleware("http")
    async def authenticate_request(request: Request, call_next: Any) -> Any:
        try:
            request.state.principal = authenticate(request, ctx.registry)
        except Unauthorized as exc:
            response = _error(401, exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="citytwin"'
            return response
        return await call_next(request)

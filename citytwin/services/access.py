"""Who may read what, who asked, and how often: principals and grants, the credential registry
(departments, users, API keys, OAuth2 clients and tokens), rate limits and the audit log.

Every endpoint family asks the same two questions through this module:

- ``principal(request)`` (a FastAPI dependency): who is asking — anonymous, or a user of a
  department with roles (and maybe a district), from an API key or an OAuth2 bearer token.
  Wrong or expired credentials are a 401 whatever is asked for.
- ``ctx.access.grant(principal, collection)``: may they read this collection, and with what
  narrowing — a ``Grant`` with the CQL2 conditions of the rows they must not see and the
  district they are bound to. Not allowed: 401 for anonymous, 403 for a signed-in user.

The registry (``Registry``) lives in the twin as store documents, one per record, hashes only:
``access/users/<id>`` (name, department, roles, district, disabled, scrypt password hash),
``access/keys/<key id>`` (owner, sha256 of the key, expiry, revocation, rate limit),
``access/clients/<client id>`` (OAuth2 client credentials bound to a user or to a department's
service account), ``access/revoked_tokens`` (jti -> expiry), ``access/settings`` (default rate
limits, token lifetime) and ``access/signing_key`` (the twin's HS256 secret, made on first
use). Departments are the catalogue's (``services/catalogue``'s ``departments``, over
``catalogue.DEPARTMENTS``). Each change is one store transaction; the registry serves
requests from an in-memory snapshot, reloaded after its own changes and at most every
``refresh_s`` seconds otherwise (so API workers sharing a PostGIS store see another's
revocations within that time; with the embedded store one process holds the twin).

Secrets: API keys (``ct_<10 hex>_<43 chars>``) and client secrets are random 256-bit strings
made here and shown once; a fast sha256 suffices for those. User passwords go through scrypt
(``hashlib.scrypt``, n=2^14, r=8, p=1). Tokens are HS256 JWTs (PyJWT) with ``iss``, ``sub``,
``iat``, ``exp`` (default 1 h) and ``jti``; each request checks the token's user or client
again, so disabling a user or revoking a client ends its tokens at once.

``install(app, ctx)`` adds one pure-ASGI middleware (streaming responses such as ``/events``
pass through untouched) that, for every HTTP request: authenticates (``X-API-Key``, the
``api_key`` query parameter — removed from the query before the endpoints see it — or
``Authorization: Bearer``), answers 401 with ``WWW-Authenticate`` for a bad credential, takes
a token from the caller's bucket (per API key, user, client, or client address when
anonymous; failed sign-ins count against the address) or answers 429 with ``Retry-After``,
and audits the request when its response has ended. It also adds ``POST /oauth/token``,
``POST /oauth/revoke``, ``GET /me`` and (admin role) ``GET /audit``.

Rate limits are token buckets in this process: with several API workers each keeps its own,
so a caller gets up to workers x the limit. Sharing them needs a common counter (Redis
``INCR``/``EXPIRE`` or a Lua token bucket keyed the same way); not built.

The audit log (``AuditLog``) queues entries in memory and a background thread appends them to
the store's hash-chained log at least every second (``flush_s``) and on ``close()``, so a
request never waits for the audit write. Durability window: the entries of about the last
second (more while the store is busy) are lost if the process dies without closing the app;
a clean shutdown writes everything. A failed write is retried with the next batch.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl

import jwt
import shapely
from fastapi import APIRouter, Depends, Request
from pygeofilter import ast
from starlette.datastructures import Headers

from citytwin.errors import Forbidden, InvalidInput, NotFound, RateLimited, Unauthorized
from citytwin.services.catalogue import CATALOGUE_DOCUMENT, DEPARTMENTS, Catalogue, Collection
from citytwin.store import sql_filter
from citytwin.store.base import Query

if TYPE_CHECKING:
    from citytwin.store.base import Store

log = logging.getLogger(__name__)

ADMIN = "admin"
"""The role that reads everything and manages departments, users and keys."""
ROLES = ("viewer", "operator", "admin")
"""Roles a user or client can have: viewer (reads), operator (also acts on alarms), admin."""
KEY_PREFIX = "ct_"
TOKEN_TTL_S = 3600
"""Default lifetime of a bearer token."""
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt cost of password hashes (16 MiB, about 50 ms a check)."""
DEFAULT_LIMITS = {"anonymous": (50.0, 100.0), "signed_in": (100.0, 200.0)}
"""(requests per second, burst) per client address when anonymous, and per user, client or
key (unless the key has its own) when signed in. 0 means no limit."""
REALM = 'Bearer realm="citytwin"'
_DOC = "access/"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_DEPARTMENT_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


# -- principals and grants ---------------------------------------------------------------------
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


def narrow(q: Query, grant: Grant) -> Query:
    """``q`` as ``grant`` allows: rows matching any of its hidden rules left out (a NULL is
    not a match), and only features intersecting its district. The one narrowing every
    service that reads a collection applies (features, tiles, processes, the console)."""
    nodes = [sql_filter.excluding(_rule(text)) for text in grant.hidden]
    changes: dict[str, Any] = {}
    if grant.district_geometry is not None:
        if q.intersects is None:
            changes["intersects"] = grant.district_geometry
        else:
            nodes.append(ast.GeometryIntersects(ast.Attribute("geometry"), grant.district_geometry))
    if nodes:
        changes["filter"] = sql_filter.all_of(q.filter, *nodes)
    return replace(q, **changes) if changes else q


@lru_cache(maxsize=256)
def _rule(text: str) -> ast.Node:
    return sql_filter.parse(text, "cql2-text")


def principal(request: Request) -> Principal:
    """The principal the authentication middleware put on the request (anonymous when there
    is none)."""
    return getattr(request.state, "principal", ANONYMOUS)


async def who_asks(request: Request) -> Principal:
    """``principal`` as a FastAPI dependency: async, so that FastAPI calls it on the event
    loop; a plain function it hands to a worker thread, a second thread hop for every request
    (measured on the items endpoint: about 2 % of its throughput)."""
    return principal(request)


Who = Annotated[Principal, Depends(who_asks)]
"""An endpoint's parameter for who is asking."""


def authenticate(request: Request, registry: Any = None) -> Principal:
    """The principal of a request's credentials (``X-API-Key`` header, ``api_key`` query
    parameter or ``Authorization: Bearer``); anonymous when none are given."""
    key, token = credentials(request.headers, request.query_params.get("api_key"))
    if key is None and token is None:
        return ANONYMOUS
    if registry is None:
        raise Unauthorized("this service issues no credentials")
    return registry.principal_for(api_key=key, token=token)


def credentials(headers: Any, api_key_param: str | None = None) -> tuple[str | None, str | None]:
    """(API key, bearer token) of a request's headers and ``api_key`` query parameter;
    ``Unauthorized`` for an Authorization header of another scheme, or both at once."""
    key = headers.get("x-api-key") or api_key_param
    auth = headers.get("authorization", "")
    token = None
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized(
                f"unsupported Authorization scheme {scheme!r}",
                hint="send 'Authorization: Bearer <token>' (POST /oauth/token) or X-API-Key",
            )
        token = value.strip()
    if key is not None and token is not None:
        raise Unauthorized("send an API key or a bearer token, not both")
    return key, token


# -- records -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    """A person (or a system) that signs in; ``district``: a zone id of class district."""

    id: str
    name: str
    department: str
    roles: tuple[str, ...] = ("viewer",)
    district: str | None = None
    disabled: bool = False
    password: str | None = None  # scrypt hash
    created_at: str | None = None

    def principal(self, key_id: str | None = None) -> Principal:
        return Principal(self.id, self.department, frozenset(self.roles), self.district, key_id)

    def public(self) -> dict[str, Any]:
        """The record without its password hash."""
        out = asdict(self)
        out["has_password"] = out.pop("password") is not None
        return out


@dataclass(frozen=True)
class ApiKey:
    """An API key's record (its secret is not kept, only the sha256 of the whole key)."""

    id: str  # "ct_<10 hex>", the key's visible prefix
    user: str
    hash: str
    name: str | None = None
    created_at: str | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    rate: float | None = None  # requests per second (None: the default for users)
    burst: float | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "hash"}


@dataclass(frozen=True)
class Client:
    """OAuth2 client credentials, bound to a user or (``user`` None) to a department's
    service account with ``roles``."""

    id: str
    hash: str
    user: str | None = None
    department: str | None = None
    roles: tuple[str, ...] = ("viewer",)
    name: str | None = None
    created_at: str | None = None
    revoked_at: str | None = None
    rate: float | None = None
    burst: float | None = None

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "hash"}


@dataclass(frozen=True)
class Issued:
    """A new API key or client: its record and the secret, shown this once."""

    record: ApiKey | Client
    secret: str


@dataclass(frozen=True)
class Identity:
    """An authenticated request's principal and its rate-limit bucket (rate 0: no limit)."""

    principal: Principal
    bucket: str
    rate: float
    burst: float


def hash_password(password: str) -> str:
    """An scrypt hash of ``password`` with a random salt (``scrypt$n$r$p$salt$hash``)."""
    if len(password) < 8:
        raise InvalidInput("the password is shorter than 8 characters", hint="use a longer one")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **SCRYPT)
    cost = f"{SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}"
    return f"scrypt${cost}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches an ``hash_password`` hash (constant time)."""
    if not stored:
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected), maxmem=64 * 2**20,
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class _Snapshot:
    users: dict[str, User]
    keys: dict[str, ApiKey]
    clients: dict[str, Client]
    revoked: dict[str, int]
    settings: dict[str, Any]
    signing_key: bytes | None
    loaded: float


# -- the registry ----------------------------------------------------------------------------------
class Registry:
    """A twin's departments, users, API keys, OAuth2 clients and tokens (see the module
    docstring for where they are kept). ``clock``: the current UTC time (for expiries)."""

    def __init__(
        self,
        store: Store,
        *,
        catalogue: Catalogue | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
        refresh_s: float = 5.0,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.clock = clock
        self.refresh_s = refresh_s
        self.issuer = f"citytwin:{store.meta.name}"
        self._lock = threading.RLock()
        self._refreshing = False
        self._snap = self._load()

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> _Snapshot:
        docs = self.store.get_documents(_DOC)
        kinds: dict[str, dict[str, Any]] = {"users": {}, "keys": {}, "clients": {}}
        for key, body in docs.items():
            kind, _, rid = key[len(_DOC) :].partition("/")
            if kind in kinds and rid:
                kinds[kind][rid] = body
        users = {k: User(**{**v, "roles": tuple(v["roles"])}) for k, v in kinds["users"].items()}
        keys = {k: ApiKey(**v) for k, v in kinds["keys"].items()}
        clients = {
            k: Client(**{**v, "roles": tuple(v["roles"])}) for k, v in kinds["clients"].items()
        }
        secret = (docs.get(_DOC + "signing_key") or {}).get("secret")
        return _Snapshot(
            users,
            keys,
            clients,
            dict(docs.get(_DOC + "revoked_tokens") or {}),
            docs.get(_DOC + "settings") or {},
            base64.b64decode(secret) if secret else None,
            time.monotonic(),
        )

    def refresh(self) -> None:
        """Reload the registry from the store."""
        with self._lock:
            self._snap = self._load()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._snap.loaded > self.refresh_s

    def refresh_if_stale(self) -> None:
        """Reload when the snapshot is older than ``refresh_s`` (one reload at a time)."""
        if not self.stale or self._refreshing:
            return
        self._refreshing = True
        try:
            self.refresh()
        except Exception:  # the store may be closing: keep serving from the snapshot
            log.exception("reloading the credential registry failed")
        finally:
            self._refreshing = False

    def _put(self, docs: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            with self.store.transaction():
                for key, body in docs.items():
                    self.store.put_document(key, body)
            self._snap = self._load()

    # -- departments --------------------------------------------------------------------------
    def departments(self) -> dict[str, dict[str, str]]:
        """Department id -> names (English, Chinese): the defaults and the twin's own."""
        doc = self.store.get_document(CATALOGUE_DOCUMENT) or {}
        return {**DEPARTMENTS, **(doc.get("departments") or {})}

    def add_department(self, did: str, name: str, name_zh: str | None = None) -> dict[str, str]:
        """Add (or rename) a department; kept in the catalogue document."""
        if not _DEPARTMENT_ID.match(did):
            raise InvalidInput(
                f"department id {did!r} is not valid",
                hint="lower-case letters, digits and _, starting with a letter (e.g. parks)",
            )
        if not name.strip():
            raise InvalidInput(f"department {did!r} needs a name")
        record = {"name": name.strip(), "name_zh": (name_zh or "").strip() or name.strip()}
        with self._lock, self.store.transaction():
            doc = self.store.get_document(CATALOGUE_DOCUMENT) or {}
            doc.setdefault("departments", {})[did] = record
            self.store.put_document(CATALOGUE_DOCUMENT, doc)
        if self.catalogue is not None:
            self.catalogue.departments[did] = record
        return record

    def _department(self, did: str | None) -> str:
        known = self.departments()
        if did not in known:
            raise InvalidInput(
                f"unknown department {did!r}",
                hint=f"one of {', '.join(sorted(known))}, or add it (citytwin access department"
                " add)",
            )
        return did

    # -- users --------------------------------------------------------------------------------
    def users(self) -> list[User]:
        return sorted(self._snap.users.values(), key=lambda u: u.id)

    def user(self, uid: str) -> User:
        try:
            return self._snap.users[uid]
        except KeyError:
            raise NotFound(f"no user {uid!r}", hint="citytwin access user list") from None

    def add_user(
        self,
        uid: str,
        name: str,
        department: str,
        *,
        roles: Sequence[str] = ("viewer",),
        district: str | None = None,
        password: str | None = None,
    ) -> User:
        """Add a user (refuses an existing id)."""
        if not _ID.match(uid) or uid.startswith("svc:"):
            raise InvalidInput(
                f"user id {uid!r} is not valid", hint="letters, digits and _.@- (at most 64)"
            )
        if uid in self._snap.users:
            raise InvalidInput(f"user {uid!r} exists already", hint="choose another id")
        user = User(
            uid,
            name.strip() or uid,
            self._department(department),
            _roles(roles),
            self._district(district),
            password=hash_password(password) if password is not None else None,
            created_at=_iso(self.clock()),
        )
        self._put({f"{_DOC}users/{uid}": asdict(user)})
        return user

    def update_user(self, uid: str, **changes: Any) -> User:
        """Change a user's name, department, roles, district or disabled flag."""
        user = self.user(uid)
        allowed = {"name", "department", "roles", "district", "disabled"}
        if set(changes) - allowed:
            raise InvalidInput(f"can't change {', '.join(sorted(set(changes) - allowed))}")
        if "department" in changes:
            changes["department"] = self._department(changes["department"])
        if "roles" in changes:
            changes["roles"] = _roles(changes["roles"])
        if "district" in changes:
            changes["district"] = self._district(changes["district"])
        user = replace(user, **changes)
        self._put({f"{_DOC}users/{uid}": asdict(user)})
        return user

    def disable_user(self, uid: str, disabled: bool = True) -> User:
        """Disable (or enable again) a user: their keys, tokens and clients stop working."""
        return self.update_user(uid, disabled=disabled)

    def set_password(self, uid: str, password: str) -> None:
        user = replace(self.user(uid), password=hash_password(password))
        self._put({f"{_DOC}users/{uid}": asdict(user)})

    def _district(self, district: str | None) -> str | None:
        if district is None:
            return None
        from citytwin.store.base import Query

        if not len(self.store.query(Query("zones", ids=[district], classes=["district"]))):
            raise InvalidInput(
                f"no district zone {district!r} in the twin",
                hint="a zone id of class district (citytwin query --layer zones)",
            )
        return district

    # -- API keys -----------------------------------------------------------------------------
    def keys(self, user: str | None = None) -> list[ApiKey]:
        found = self._snap.keys.values()
        return sorted((k for k in found if user is None or k.user == user), key=lambda k: k.id)

    def issue_key(
        self,
        user: str,
        *,
        name: str | None = None,
        expires: dt.datetime | dt.timedelta | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> Issued:
        """A new API key for ``user``; the secret is in the answer only."""
        owner = self.user(user)
        if owner.disabled:
            raise InvalidInput(f"user {user!r} is disabled", hint="enable them first")
        now = self.clock()
        expires_at = None
        if expires is not None:
            when = now + expires if isinstance(expires, dt.timedelta) else expires
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            if when <= now:
                raise InvalidInput(f"the expiry {when.isoformat()} is not in the future")
            expires_at = _iso(when)
        rate, burst = _limits(rate, burst)
        kid = KEY_PREFIX + secrets.token_hex(5)
        secret = f"{kid}_{secrets.token_urlsafe(32)}"
        key = ApiKey(kid, owner.id, _sha256(secret), name, _iso(now), expires_at, None, rate, burst)
        self._put({f"{_DOC}keys/{kid}": asdict(key)})
        return Issued(key, secret)

    def revoke_key(self, kid: str) -> ApiKey:
        key = self._snap.keys.get(kid)
        if key is None:
            raise NotFound(f"no API key {kid!r}", hint="citytwin access key list")
        key = replace(key, revoked_at=key.revoked_at or _iso(self.clock()))
        self._put({f"{_DOC}keys/{kid}": asdict(key)})
        return key

    # -- OAuth2 clients -----------------------------------------------------------------------
    def clients(self) -> list[Client]:
        return sorted(self._snap.clients.values(), key=lambda c: c.id)

    def add_client(
        self,
        *,
        user: str | None = None,
        department: str | None = None,
        roles: Sequence[str] = ("viewer",),
        name: str | None = None,
        client_id: str | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> Issued:
        """New client credentials for ``user``, or for ``department``'s service account."""
        if (user is None) == (department is None):
            raise InvalidInput("a client is bound to a user or to a department (one of them)")
        cid = client_id or "cl_" + secrets.token_hex(5)
        if not _ID.match(cid):
            raise InvalidInput(f"client id {cid!r} is not valid", hint="letters, digits, _.@-")
        if cid in self._snap.clients:
            raise InvalidInput(f"client {cid!r} exists already")
        if user is not None:
            self.user(user)
            roles = ()
        else:
            department = self._department(department)
            roles = _roles(roles)
        rate, burst = _limits(rate, burst)
        secret = secrets.token_urlsafe(32)
        now = _iso(self.clock())
        client = Client(
            cid, _sha256(secret), user, department, tuple(roles), name, now, None, rate, burst
        )
        self._put({f"{_DOC}clients/{cid}": asdict(client)})
        return Issued(client, secret)

    def revoke_client(self, cid: str) -> Client:
        client = self._snap.clients.get(cid)
        if client is None:
            raise NotFound(f"no client {cid!r}", hint="citytwin access client list")
        client = replace(client, revoked_at=client.revoked_at or _iso(self.clock()))
        self._put({f"{_DOC}clients/{cid}": asdict(client)})
        return client

    # -- settings -----------------------------------------------------------------------------
    def limits(self) -> dict[str, tuple[float, float]]:
        """The default rate limits: ``anonymous`` and ``signed_in`` (rate per s, burst)."""
        saved = self._snap.settings.get("limits") or {}
        return {k: tuple(saved.get(k, v)) for k, v in DEFAULT_LIMITS.items()}  # type: ignore[misc]

    def set_limits(self, **limits: tuple[float, float]) -> dict[str, tuple[float, float]]:
        """Change the default limits (``anonymous=(rate, burst)``, ``signed_in=...``)."""
        unknown = set(limits) - set(DEFAULT_LIMITS)
        if unknown:
            raise InvalidInput(f"unknown limit {', '.join(unknown)}", hint="anonymous, signed_in")
        current = self.limits()
        for k, (rate, burst) in limits.items():
            current[k] = _limits(rate, burst, default=True)  # type: ignore[assignment]
        settings = {**self._snap.settings, "limits": {k: list(v) for k, v in current.items()}}
        self._put({_DOC + "settings": settings})
        return current

    @property
    def token_ttl(self) -> int:
        return int(self._snap.settings.get("token_ttl_s", TOKEN_TTL_S))

    # -- tokens -------------------------------------------------------------------------------
    def _signing_key(self) -> bytes:
        if self._snap.signing_key is None:
            with self._lock:
                if self._snap.signing_key is None:
                    secret = base64.b64encode(secrets.token_bytes(32)).decode()
                    self._put({_DOC + "signing_key": {"secret": secret, "alg": "HS256"}})
        return self._snap.signing_key  # type: ignore[return-value]

    def password_token(self, username: str, password: str) -> dict[str, Any]:
        """The OAuth2 password grant: a token for a user, or ``InvalidInput`` (invalid_grant)."""
        user = self._snap.users.get(username)
        # check a password even for an unknown user, so timing does not tell which it was
        stored = user.password if user is not None and user.password else _DUMMY_HASH
        matches = check_password(password, stored)
        if user is None or not user.password or not matches:
            raise InvalidInput("wrong user name or password")
        if user.disabled:
            raise InvalidInput(f"user {username!r} is disabled")
        return self._token(user.id, None, user.roles)

    def client_token(self, client_id: str, secret: str) -> dict[str, Any]:
        """The OAuth2 client_credentials grant; ``Unauthorized`` (invalid_client) when the
        client is unknown, revoked, its secret wrong or its user disabled."""
        client = self._client(client_id, secret)
        return self._token(client.user or f"svc:{client.id}", client.id, self._roles_of(client))

    def _client(self, client_id: str, secret: str) -> Client:
        client = self._snap.clients.get(client_id)
        if client is None or not hmac.compare_digest(client.hash, _sha256(secret)):
            raise Unauthorized("unknown client or wrong client secret")
        if client.revoked_at:
            raise Unauthorized(f"client {client_id!r} was revoked at {client.revoked_at}")
        if client.user is not None:
            owner = self._snap.users.get(client.user)
            if owner is None or owner.disabled:
                raise Unauthorized(f"the user of client {client_id!r} is disabled")
        return client

    def _roles_of(self, client: Client) -> tuple[str, ...]:
        return self._snap.users[client.user].roles if client.user else client.roles

    def _token(self, sub: str, cid: str | None, roles: Sequence[str]) -> dict[str, Any]:
        now = int(self.clock().timestamp())
        ttl = self.token_ttl
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(12),
        }
        if cid is not None:
            claims["cid"] = cid
        token = jwt.encode(claims, self._signing_key(), algorithm="HS256")
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": " ".join(roles),
        }

    def _claims(self, token: str) -> dict[str, Any]:
        key = self._snap.signing_key
        if key is None:
            raise Unauthorized("this twin has issued no tokens", hint="POST /oauth/token")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                issuer=self.issuer,
                options={
                    "verify_exp": False,  # checked below on the registry's clock
                    "verify_iat": False,
                    "require": ["iss", "sub", "iat", "exp", "jti"],
                },
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(
                f"the bearer token is not valid ({exc})", hint="get a new one: POST /oauth/token"
            ) from None
        if int(claims["exp"]) <= self.clock().timestamp():
            when = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC).isoformat()
            raise Unauthorized(f"the token expired at {when}", hint="POST /oauth/token again")
        if claims["jti"] in self._snap.revoked:
            raise Unauthorized("the token was revoked", hint="POST /oauth/token again")
        return claims

    def revoke_token(self, token: str | None = None, *, jti: str | None = None) -> str | None:
        """Revoke a token (given whole, or its ``jti``); returns the jti, None when the token
        is not one of this twin's (RFC 7009: nothing to do)."""
        exp = int(self.clock().timestamp()) + self.token_ttl
        if token is not None:
            try:
                claims = self._claims(token)
            except Unauthorized:
                return None
            jti, exp = claims["jti"], int(claims["exp"])
        if not jti:
            raise InvalidInput("give the token or its jti")
        now = self.clock().timestamp()
        revoked = {k: v for k, v in self._snap.revoked.items() if v > now}
        revoked[jti] = exp
        self._put({_DOC + "revoked_tokens": revoked})
        return jti

    # -- authentication ------------------------------------------------------------------------
    def identify(self, api_key: str | None = None, token: str | None = None) -> Identity:
        """The principal and rate-limit bucket of a credential; ``Unauthorized`` when it is
        unknown, wrong, expired, revoked or its user disabled."""
        snap = self._snap
        anonymous, signed_in = self.limits().values()
        if api_key is not None:
            kid = api_key[: len(KEY_PREFIX) + 10]
            key = snap.keys.get(kid)
            if key is None or not hmac.compare_digest(key.hash, _sha256(api_key)):
                raise Unauthorized("unknown API key", hint="check the key, or issue a new one")
            if key.revoked_at:
                raise Unauthorized(f"API key {kid} was revoked at {key.revoked_at}")
            if key.expires_at and dt.datetime.fromisoformat(key.expires_at) <= self.clock():
                raise Unauthorized(f"API key {kid} expired at {key.expires_at}")
            user = self._active(key.user)
            rate, burst = signed_in if key.rate is None else (key.rate, key.burst or key.rate)
            return Identity(user.principal(kid), f"key:{kid}", rate, burst)
        if token is not None:
            claims = self._claims(token)
            key_id = f"token:{claims['jti']}"
            cid = claims.get("cid")
            if cid is not None:
                client = snap.clients.get(cid)
                if client is None or client.revoked_at:
                    raise Unauthorized(f"client {cid!r} of this token was revoked")
                if client.user is not None:
                    found = self._active(client.user).principal(key_id)
                else:
                    found = Principal(
                        f"svc:{cid}", client.department, frozenset(client.roles), None, key_id
                    )
                limit = (client.rate, client.burst) if client.rate is not None else signed_in
                return Identity(found, f"client:{cid}", limit[0], limit[1] or limit[0])
            user = self._active(str(claims["sub"]))
            return Identity(user.principal(key_id), f"user:{user.id}", *signed_in)
        return Identity(ANONYMOUS, "", *anonymous)

    def principal_for(self, api_key: str | None = None, token: str | None = None) -> Principal:
        """The principal of an API key or bearer token (``identify`` without the limits)."""
        return self.identify(api_key, token).principal

    def _active(self, uid: str) -> User:
        user = self._snap.users.get(uid)
        if user is None:
            raise Unauthorized(f"user {uid!r} no longer exists")
        if user.disabled:
            raise Unauthorized(f"user {uid!r} is disabled", hint="ask an administrator")
        return user


_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


def _roles(roles: Sequence[str] | str) -> tuple[str, ...]:
    values = [r.strip() for r in (roles.split(",") if isinstance(roles, str) else roles)]
    bad = [r for r in values if r not in ROLES]
    if bad or not values:
        raise InvalidInput(
            f"unknown role {bad[0]!r}" if bad else "give at least one role",
            hint=f"roles: {', '.join(ROLES)}",
        )
    return tuple(dict.fromkeys(values))


def _limits(
    rate: float | None, burst: float | None, default: bool = False
) -> tuple[float | None, float | None]:
    if rate is None:
        if burst is not None:
            raise InvalidInput("a burst needs a rate")
        return (None, None)
    if not (math.isfinite(rate) and rate >= 0) or (burst is not None and not burst >= 1):
        raise InvalidInput(
            f"rate {rate} / burst {burst} are not valid",
            hint="a rate in requests per second (0: no limit) and a burst of at least 1",
        )
    return float(rate), float(burst if burst is not None else max(1.0, 2 * rate))


# -- rate limits ---------------------------------------------------------------------------------
class RateLimiter:
    """Token buckets in this process: each bucket holds up to ``burst`` tokens and refills at
    ``rate`` per second; a request takes one. ``clock``: monotonic seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000):
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: float, burst: float) -> float:
        """0 when the request may go ahead, else the seconds until it would."""
        if rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(bucket, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - last) * rate)
            if tokens >= 1.0:
                self._buckets[bucket] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[bucket] = (tokens, now)
                wait = (1.0 - tokens) / rate
            if len(self._buckets) > self.max_buckets:
                self._forget(now)
        return wait

    def _forget(self, now: float) -> None:
        """Drop the buckets idle for a minute (full again at any sensible rate)."""
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}


# -- the audit log ---------------------------------------------------------------------------------
class AuditLog:
    """Audit entries queued in memory and appended to the store's chain by a background
    thread every ``flush_s`` seconds (sooner when ``batch`` entries wait) and on ``close()``.
    While the store refuses the writes, the entries wait (at most ``max_pending``, the oldest
    dropped beyond and counted in ``dropped``) and the retries back off to a minute."""

    def __init__(
        self, store: Store, *, flush_s: float = 1.0, batch: int = 5000, max_pending: int = 10**6
    ) -> None:
        self.store = store
        self.flush_s = flush_s
        self.batch = batch
        self.max_pending = max_pending
        self.closed = False
        self.written = 0
        self.dropped = 0
        self._failures = 0
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None

    def record(self, entry: dict[str, Any]) -> None:
        """Queue an entry (``AUDIT_COLUMNS`` but seq and hashes); never waits for the store."""
        with self._cond:
            self._pending.append(entry)
            if self._thread is None and not self.closed:
                self._thread = threading.Thread(
                    target=self._run, name="citytwin-audit", daemon=True
                )
                self._thread.start()
            if len(self._pending) >= self.batch:
                self._cond.notify()
        if self.closed:
            self.flush()

    def flush(self) -> int:
        """Write what is queued now; returns how many entries were written."""
        with self._writing:
            with self._cond:
                entries, self._pending = self._pending, []
            if not entries:
                return 0
            try:
                self.store.append_audit(entries)
            except Exception:
                self._failures += 1
                if self._failures == 1:
                    log.exception("writing %d audit entries failed; retrying", len(entries))
                with self._cond:
                    self._pending[:0] = entries
                    excess = len(self._pending) - self.max_pending
                    if excess > 0:
                        del self._pending[:excess]
                        self.dropped += excess
                return 0
            if self._failures:
                log.warning("audit writes work again after %d failures", self._failures)
                self._failures = 0
            self.written += len(entries)
            return len(entries)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self.closed and (self._failures or len(self._pending) < self.batch):
                    self._cond.wait(min(60.0, self.flush_s * 2 ** min(self._failures, 6)))
                if self.closed:
                    return
            self.flush()

    def close(self) -> None:
        """Stop the writer and write everything still queued."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.flush()


_FAMILIES = {
    "collections": "features",
    "search": "search",
    "tiles": "tiles",
    "tileMatrixSets": "tiles",
    "terrain": "tiles",
    "processes": "processes",
    "jobs": "processes",
    "flood": "flood",
    "v1.1": "sensorthings",
    "catalogue": "catalogue",
    "alarms": "monitoring",
    "incidents": "monitoring",
    "events": "monitoring",
    "health": "health",
    "oauth": "access",
    "me": "access",
    "audit": "access",
    "console": "console",
    "api": "api",
    "api.html": "api",
    "conformance": "api",
    "": "api",
}


def service_of(path: str) -> tuple[str, str | None]:
    """(endpoint family, the collection or process id the path names or None) of a path."""
    parts = path.strip("/").split("/")
    family = _FAMILIES.get(parts[0], "other")
    resource = None
    if parts[0] in ("collections", "processes") and len(parts) > 1 and parts[1]:
        resource = parts[1]
        if parts[0] == "collections" and len(parts) > 2 and parts[2] == "tiles":
            family = "tiles"
    return family, resource


# -- the middleware ------------------------------------------------------------------------------
class AccessMiddleware:
    """Authentication, rate limits and audit of every HTTP request (pure ASGI)."""

    def __init__(self, app: Any, ctx: Any, limiter: RateLimiter) -> None:
        self.app = app
        self.ctx = ctx
        self.limiter = limiter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from citytwin.services.api import _error

        started, at = time.perf_counter(), _utc_now()
        registry: Registry = self.ctx.registry
        if registry.stale and not registry._refreshing:
            asyncio.get_running_loop().run_in_executor(None, registry.refresh_if_stale)
        state = scope.setdefault("state", {})
        client = (scope.get("client") or ("",))[0] or ""
        query, api_key = _without_api_key(scope.get("query_string", b""))
        scope["query_string"] = query
        identity, response, presented = None, None, None
        try:
            if scope["path"] in _OAUTH_PATHS and api_key is None:
                identity = registry.identify()  # clients authenticate there (Basic or body)
            else:
                identity = registry.identify(*credentials(Headers(scope=scope), api_key))
        except Unauthorized as exc:
            presented = _presented_key(scope, api_key)
            rate, burst = registry.limits()["anonymous"]
            if self.limiter.take(f"ip:{client}", rate, burst) > 0:
                response = self._limited(f"too many failed sign-ins from {client}", 30.0)
            else:
                response = _error(401, exc)
                response.headers["WWW-Authenticate"] = f'{REALM}, error="invalid_token"'
        if identity is not None:
            state["principal"] = identity.principal
            bucket = identity.bucket or f"ip:{client}"
            wait = self.limiter.take(bucket, identity.rate, identity.burst)
            if wait > 0:
                who = identity.principal.key_id or identity.principal.user or client
                response = self._limited(f"rate limit of {who} reached", wait)
        status = [500]

        async def send_audited(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if response is not None:
                await response(scope, receive, send_audited)
            else:
                await self.app(scope, receive, send_audited)
        finally:
            who = identity.principal if identity is not None else ANONYMOUS
            family, resource = service_of(scope["path"])
            self.ctx.audit.record(
                {
                    "at": at,
                    "user": who.user,
                    "department": who.department,
                    "key_id": who.key_id or presented,
                    "client": client,
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": query.decode("latin-1") or None,
                    "family": family,
                    "resource": resource,
                    "status": status[0],
                    "count": state.get("audit_count"),
                    "duration_ms": (time.perf_counter() - started) * 1000.0,
                }
            )

    @staticmethod
    def _limited(message: str, wait: float) -> Any:
        from citytwin.services.api import _error

        exc = RateLimited(message, retry_after=wait, hint="slow down; retry after the pause")
        response = _error(429, exc)
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response


_OAUTH_PATHS = ("/oauth/token", "/oauth/revoke")


def _presented_key(scope: dict[str, Any], api_key: str | None) -> str | None:
    """The visible id of an API key that was refused (for the audit log), if it has one."""
    key = api_key or Headers(scope=scope).get("x-api-key") or ""
    kid = key[: len(KEY_PREFIX) + 10]
    return kid if re.fullmatch(r"ct_[0-9a-f]{10}", kid) else None


def _without_api_key(query: bytes) -> tuple[bytes, str | None]:
    """The query string without its ``api_key`` parameter, and that parameter's value."""
    if b"api_key=" not in query:
        return query, None
    kept, key = [], None
    for part in query.split(b"&"):
        if part.startswith(b"api_key="):
            key = dict(parse_qsl(part.decode("latin-1"))).get("api_key", "")
        else:
            kept.append(part)
    return b"&".join(kept), key


# -- routes ------------------------------------------------------------------------------------
class _OAuthError(Exception):
    def __init__(self, code: str, description: str, status: int = 400) -> None:
        self.code, self.description, self.status = code, description, status
        super().__init__(description)


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        "grant_type": {"enum": ["password", "client_credentials"]},
                        "username": {"type": "string"},
                        "password": {"type": "string", "format": "password"},
                        "client_id": {"type": "string"},
                        "client_secret": {"type": "string", "format": "password"},
                        "scope": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _routes(ctx: Any) -> APIRouter:
    from citytwin.services.api import ORJSONResponse

    router = APIRouter(tags=["access"])

    async def form(request: Request) -> dict[str, str]:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise _OAuthError(
                "invalid_request", "send the parameters as application/x-www-form-urlencoded"
            )
        try:
            pairs = parse_qsl((await request.body()).decode(), strict_parsing=False)
        except UnicodeDecodeError:
            raise _OAuthError("invalid_request", "the body is not UTF-8") from None
        names = [k for k, _ in pairs]
        repeated = sorted({k for k in names if names.count(k) > 1})
        if repeated:
            raise _OAuthError("invalid_request", f"parameter {repeated[0]!r} given twice")
        return dict(pairs)

    def client_auth(request: Request, params: dict[str, str]) -> tuple[str, str]:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError:
                raise _OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            from urllib.parse import unquote_plus

            return unquote_plus(cid), unquote_plus(secret)
        if "client_id" not in params or "client_secret" not in params:
            raise _OAuthError(
                "invalid_client", "client authentication is missing (Basic, or client_id and"
                " client_secret in the body)", 401,
            )  # fmt: skip
        return params["client_id"], params["client_secret"]

    @router.post(
        "/oauth/token",
        openapi_extra=_TOKEN_FORM,
        summary="OAuth2 token endpoint (password and client_credentials grants)",
    )
    async def token(request: Request) -> Any:
        registry: Registry = ctx.registry
        try:
            params = await form(request)
            grant = params.get("grant_type")
            if not grant:
                raise _OAuthError("invalid_request", "grant_type is missing")
            if grant == "password":
                missing = [p for p in ("username", "password") if not params.get(p)]
                if missing:
                    raise _OAuthError("invalid_request", f"{' and '.join(missing)} missing")
                try:
                    body = await asyncio.to_thread(
                        registry.password_token, params["username"], params["password"]
                    )
                except InvalidInput as exc:
                    raise _OAuthError("invalid_grant", exc.message) from None
            elif grant == "client_credentials":
                cid, secret = client_auth(request, params)
                try:
                    body = await asyncio.to_thread(registry.client_token, cid, secret)
                except Unauthorized as exc:
                    raise _OAuthError("invalid_client", exc.message, 401) from None
            else:
                raise _OAuthError(
                    "unsupported_grant_type",
                    f"grant type {grant!r} is not supported: use password or client_credentials",
                )
        except _OAuthError as exc:
            headers = dict(_NO_STORE)
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="citytwin"'
            return ORJSONResponse(
                {"error": exc.code, "error_description": exc.description},
                status_code=exc.status,
                headers=headers,
            )
        return ORJSONResponse(body, headers=_NO_STORE)

    @router.post("/oauth/revoke", summary="Revoke a bearer token (RFC 7009)")
    async def revoke(request: Request) -> Any:
        try:
            params = await form(request)
        except _OAuthError as exc:
            return ORJSONResponse({"error": exc.code, "error_description": exc.description}, 400)
        if not params.get("token"):
            return ORJSONResponse(
                {"error": "invalid_request", "error_description": "token is missing"}, 400
            )
        await asyncio.to_thread(ctx.registry.revoke_token, params["token"])
        return ORJSONResponse({})

    @router.get("/me", summary="Who the credentials sent belong to")
    async def me(request: Request) -> Any:
        who = principal(request)
        if who.anonymous:
            raise Unauthorized(
                "no credentials were sent", hint="X-API-Key, or a bearer token (POST /oauth/token)"
            )
        registry: Registry = ctx.registry
        user = registry._snap.users.get(who.user or "")
        names = registry.departments().get(who.department or "", {})
        return {
            "user": who.user,
            "name": user.name if user is not None else who.user,
            "department": who.department,
            "department_name": names.get("name"),
            "department_name_zh": names.get("name_zh"),
            "roles": sorted(who.roles),
            "district": who.district,
            "key_id": who.key_id,
        }

    @router.get("/audit", summary="The audit log (admin role)")
    async def audit(
        request: Request,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        user: str | None = None,
        department: str | None = None,
        path: str | None = None,
        limit: int = 100,
    ) -> Any:
        require_admin(principal(request))
        if not 0 <= limit <= 10_000:
            raise InvalidInput(f"limit {limit} is out of range", hint="0 to 10000")
        frame = await asyncio.to_thread(
            ctx.store.audit_entries,
            since=since,
            until=until,
            user=user,
            department=department,
            path_prefix=path,
            limit=limit,
            newest_first=True,
        )
        frame["at"] = frame["at"].map(lambda t: t.isoformat())
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        return ORJSONResponse({"entries": records, "count": len(records)})

    return router


def require_admin(who: Principal) -> None:
    """``Unauthorized`` for anonymous, ``Forbidden`` for a signed-in user without admin."""
    if who.anonymous:
        raise Unauthorized("sign in as an administrator", hint="X-API-Key or a bearer token")
    if not who.admin:
        raise Forbidden(f"{who.user!r} lacks the admin role")


def install(app: Any, ctx: Any) -> None:
    """Authenticate, rate-limit and audit every request, and add the credential routes.
    Sets ``ctx.registry`` and ``ctx.audit`` where they are not set yet; the limiter is
    ``ctx.extras["rate_limiter"]`` when given (e.g. with a test clock)."""
    if ctx.registry is None:
        ctx.registry = Registry(ctx.store, catalogue=ctx.catalogue)
    if ctx.audit is None or getattr(ctx.audit, "closed", False):
        ctx.audit = AuditLog(ctx.store)
    limiter = ctx.extras.get("rate_limiter") or RateLimiter()
    ctx.extras["rate_limiter"] = limiter
    app.add_middleware(AccessMiddleware, ctx=ctx, limiter=limiter)
    app.include_router(_routes(ctx))

"""Credentials, rate limits and the audit log of the data services, on a copy of the virtual
city (with a second district zone): the registry in the twin, API keys and OAuth2 tokens
through the real middleware, 401s for bad credentials on any path, token buckets on an
injected clock, and an audited, hash-chained log of every request."""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import geopandas as gpd
import jwt
import pytest
import shapely
from fastapi import Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from citytwin.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from citytwin.model import validate_frame
from citytwin.services.access import (
    ANONYMOUS,
    AuditLog,
    Principal,
    RateLimiter,
    Registry,
    check_password,
    hash_password,
    service_of,
)
from citytwin.services.api import ServiceContext, create_app
from citytwin.services.catalogue import Catalogue
from citytwin.services.notify import EventHub
from citytwin.store import open_store

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
WEST = shapely.box(431000, 2552000, 432000, 2554000)
"""The second district, district-002: the west half of the city (district-001 is all of it)."""
BAD_PATHS = ["/health", "/collections", "/v1.1/Things", "/me", "/api", "/no/such/path"]


class Clock:
    """A settable clock: UTC datetimes (the registry's) or monotonic seconds (the limiter's)."""

    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds: float) -> None:
        step = dt.timedelta(seconds=seconds) if isinstance(self.t, dt.datetime) else seconds
        self.t += step


@pytest.fixture
def store(virtual_city, tmp_path):
    path = tmp_path / "city.twin"
    shutil.copy(virtual_city, path)
    s = open_store(path)
    west = gpd.GeoDataFrame(
        {"id": ["district-002"], "class": ["district"], "name": ["West 西区"]},
        geometry=[WEST],
        crs=s.meta.crs,
    )
    s.insert("zones", validate_frame("zones", west))
    yield s
    s.close()


@pytest.fixture
def city(store):
    """A service over the twin with a registry and a limiter on test clocks, two users with
    API keys (water viewer, planning admin), the client made lazily by each test."""
    ctx = ServiceContext.of(store)
    clock, ticks = Clock(T0), Clock(1000.0)
    registry = Registry(store, catalogue=ctx.catalogue, clock=clock)
    ctx.registry = registry
    ctx.extras["rate_limiter"] = RateLimiter(clock=ticks)
    registry.add_user("wang", "Wang Fang 王芳", "water", password="s3cret-pass")
    registry.add_user("li", "Li Lei", "planning", roles=["viewer", "admin"])
    wang_key = registry.issue_key("wang", name="gis")
    li_key = registry.issue_key("li")
    app = create_app(ctx)

    @app.get("/probe/count")
    async def probe(request: Request) -> dict:
        request.state.audit_count = 7
        return {"ok": True}

    @app.get("/probe/stream")
    async def stream() -> StreamingResponse:
        async def parts():
            for i in range(3):
                yield f"part {i}\n"

        return StreamingResponse(parts(), media_type="text/plain")

    with TestClient(app) as client:
        yield SimpleNamespace(
            ctx=ctx,
            store=store,
            registry=registry,
            clock=clock,
            ticks=ticks,
            client=client,
            wang=wang_key.secret,
            li=li_key.secret,
            wang_kid=wang_key.record.id,
        )


def _token(client, username="wang", password="s3cret-pass"):
    r = client.post(
        "/oauth/token", data={"grant_type": "password", "username": username, "password": password}
    )
    assert r.status_code == 200, r.text
    return r.json()


def _entries(city):
    city.ctx.audit.flush()
    return city.store.audit_entries(limit=None)


# -- the registry --------------------------------------------------------------------------------
def test_registry_round_trips_through_the_twin(store):
    reg = Registry(store, clock=Clock(T0))
    reg.add_department("parks", "Parks and Greening", "园林绿化局")
    assert Catalogue.of(store).departments["parks"]["name_zh"] == "园林绿化局"
    assert "water" in reg.departments()  # the defaults stay
    reg.add_user("zhao", "Zhao", "parks", roles="viewer,operator", district="district-002")
    issued = reg.issue_key("zhao", name="tablet", expires=dt.timedelta(days=30), rate=5)
    client = reg.add_client(department="emergency", roles=["viewer"], name="flood model")
    reg.set_password("zhao", "long enough")
    reg.disable_user("zhao")

    again = Registry(store, clock=Clock(T0))  # a fresh registry reads the records back
    zhao = again.user("zhao")
    assert (zhao.department, zhao.roles, zhao.district, zhao.disabled) == (
        "parks", ("viewer", "operator"), "district-002", True,
    )  # fmt: skip
    assert check_password("long enough", zhao.password)
    assert not check_password("long enougH", zhao.password)
    (key,) = again.keys("zhao")
    assert key.id == issued.record.id and issued.secret.startswith(key.id + "_")
    assert key.expires_at == (T0 + dt.timedelta(days=30)).isoformat(timespec="seconds")
    assert (key.rate, key.burst, key.name) == (5.0, 10.0, "tablet")
    (cl,) = again.clients()
    assert (cl.department, cl.roles, cl.user) == ("emergency", ("viewer",), None)
    # secrets are shown once and never kept: only their hashes are in the twin
    stored = str(store.get_documents("access/"))
    assert issued.secret not in stored and client.secret not in stored
    assert "long enough" not in stored and "scrypt$" in stored
    again.revoke_key(key.id)
    assert Registry(store).keys()[0].revoked_at == T0.isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add_user("x", "X", "nowhere"), "unknown department 'nowhere'"),
        (lambda r: r.add_user("x", "X", "water", roles=["boss"]), "unknown role 'boss'"),
        (lambda r: r.add_user("x", "X", "water", district="block-1"), "no district zone"),
        (lambda r: r.add_user("a b", "X", "water"), "is not valid"),
        (lambda r: r.add_user("wang", "X", "water"), "exists already"),
        (lambda r: r.add_user("x", "X", "water", password="short"), "shorter than 8"),
        (lambda r: r.issue_key("wang", expires=T0 - dt.timedelta(1)), "not in the future"),
        (lambda r: r.issue_key("wang", rate=-1), "not valid"),
        (lambda r: r.add_client(user="wang", department="water"), "one of them"),
        (lambda r: r.add_department("Bad Id", "X"), "is not valid"),
    ],
)
def test_registry_refuses_bad_input_clearly(store, call, message):
    reg = Registry(store, clock=Clock(T0))
    reg.add_user("wang", "Wang", "water")
    with pytest.raises(InvalidInput, match=message):
        call(reg)
    with pytest.raises(NotFound, match="no user 'nobody'"):
        reg.issue_key("nobody")


def test_password_hashes_are_salted_scrypt():
    a, b = hash_password("the same pw"), hash_password("the same pw")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert check_password("the same pw", a) and check_password("the same pw", b)
    assert not check_password("the same pw", None) and not check_password("x", "garbage")


# -- authentication ------------------------------------------------------------------------------
def test_a_key_and_a_token_map_to_their_principal(city):
    c = city.client
    me = c.get("/me", headers={"X-API-Key": city.wang}).json()
    assert me["user"] == "wang" and me["department"] == "water"
    assert me["department_name_zh"] == "水务局（供水）" and me["roles"] == ["viewer"]
    assert me["key_id"] == city.wang_kid
    assert c.get("/me", params={"api_key": city.li}).json()["roles"] == ["admin", "viewer"]
    body = _token(c)
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "wang" and claims["exp"] - claims["iat"] == 3600
    assert claims["iat"] == int(T0.timestamp())
    me = c.get("/me", headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    assert (me["user"], me["key_id"]) == ("wang", f"token:{claims['jti']}")
    assert city.registry.principal_for(api_key=city.wang) == Principal(
        "wang", "water", frozenset({"viewer"}), None, city.wang_kid
    )
    assert city.registry.principal_for() == ANONYMOUS
    r = c.get("/me")
    assert r.status_code == 401 and "no credentials" in r.json()["error"]


def test_client_credentials_for_a_department_service_account_and_for_a_user(city):
    c = city.client
    svc = city.registry.add_client(department="emergency", roles=["operator"])
    r = c.post("/oauth/token", data={"grant_type": "client_credentials"},
               auth=(svc.record.id, svc.secret))  # fmt: skip
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    me = c.get("/me", headers={"Authorization": "Bearer " + r.json()["access_token"]}).json()
    assert me["user"] == f"svc:{svc.record.id}" and me["department"] == "emergency"
    assert me["roles"] == ["operator"]
    mine = city.registry.add_client(user="wang")
    r = c.post("/oauth/token", data={"grant_type": "client_credentials",
               "client_id": mine.record.id, "client_secret": mine.secret})  # fmt: skip
    me = c.get("/me", headers={"Authorization": "Bearer " + r.json()["access_token"]}).json()
    assert (me["user"], me["department"]) == ("wang", "water")
    # revoking the client ends the tokens issued to it
    token = r.json()["access_token"]
    city.registry.revoke_client(mine.record.id)
    r = c.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "revoked" in r.json()["error"]


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        ({"grant_type": "password", "username": "wang", "password": "wrong-pass"}, None, 400,
         "invalid_grant"),
        ({"grant_type": "password", "username": "nobody", "password": "s3cret-pass"}, None, 400,
         "invalid_grant"),
        ({"grant_type": "password", "username": "wang"}, None, 400, "invalid_request"),
        ({"grant_type": "client_credentials"}, ("cl_nope", "x"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "authorization_code", "code": "x"}, None, 400, "unsupported_grant_type"),
        ({"username": "wang"}, None, 400, "invalid_request"),
    ],
)  # fmt: skip
def test_token_endpoint_errors_follow_rfc_6749(city, data, auth, status, error):
    r = city.client.post("/oauth/token", data=data, auth=auth)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["error_description"]
    assert r.headers["cache-control"] == "no-store"
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic")


def test_token_endpoint_takes_only_form_bodies(city):
    r = city.client.post("/oauth/token", json={"grant_type": "password"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    assert "x-www-form-urlencoded" in r.json()["error_description"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_credentials_are_401_on_any_path(city, path):
    c, reg = city.client, city.registry
    expiring = reg.issue_key("wang", expires=dt.timedelta(hours=1)).secret
    revoked = reg.issue_key("wang")
    reg.revoke_key(revoked.record.id)
    token = _token(c)["access_token"]
    claims = {"sub": "li", "iss": reg.issuer, "iat": 0, "exp": 2**40, "jti": "x"}
    forged = jwt.encode(claims, "not the twin's secret but as long: 32 bytes+", algorithm="HS256")
    assert c.get(path, headers={"X-API-Key": expiring}).status_code != 401
    city.clock.advance(2 * 3600)  # the key and the token (1 h) have expired
    bad = [
        ({"X-API-Key": expiring}, "expired"),
        ({"X-API-Key": revoked.secret}, "revoked"),
        ({"X-API-Key": city.wang[:-1] + "x"}, "unknown API key"),
        ({"X-API-Key": "garbage"}, "unknown API key"),
        ({"Authorization": f"Bearer {token}"}, "expired"),
        ({"Authorization": f"Bearer {forged}"}, "not valid"),
        ({"Authorization": "Bearer not.a.jwt"}, "not valid"),
        ({"Authorization": "Basic d2FuZzp4"}, "unsupported Authorization scheme"),
    ]
    for headers, why in bad:
        r = c.get(path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert why in r.json()["error"]
        assert r.headers["www-authenticate"].startswith('Bearer realm="citytwin"')
    assert c.get(path, params={"api_key": revoked.secret}).status_code == 401


def test_disabled_users_and_revoked_tokens_are_refused(city):
    c = city.client
    token = _token(c)["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert c.get("/me", headers=bearer).status_code == 200
    assert c.post("/oauth/revoke", data={"token": token}).status_code == 200
    r = c.get("/me", headers=bearer)
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    token = _token(c)["access_token"]
    city.registry.disable_user("wang")
    for headers in ({"Authorization": f"Bearer {token}"}, {"X-API-Key": city.wang}):
        r = c.get("/health", headers=headers)
        assert r.status_code == 401 and "disabled" in r.json()["error"]
    r = c.post("/oauth/token", data={"grant_type": "password", "username": "wang",
                                     "password": "s3cret-pass"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    city.registry.disable_user("wang", False)
    assert c.get("/me", headers={"X-API-Key": city.wang}).status_code == 200


def test_the_api_key_query_parameter_is_not_passed_on_nor_logged(city):
    r = city.client.get("/probe/count", params={"api_key": city.wang, "x": "1"})
    assert r.status_code == 200
    last = _entries(city).iloc[-1]
    assert last["query"] == "x=1" and last["user"] == "wang"
    assert city.wang.split("_")[-1] not in str(_entries(city).to_dict())


# -- grants ---------------------------------------------------------------------------------------
def test_a_district_bound_user_gets_the_district_geometry(city):
    reg, access = city.registry, city.ctx.access
    reg.add_user("zhou", "Zhou", "housing", district="district-002")
    who = reg.principal_for(api_key=reg.issue_key("zhou").secret)
    assert who.district == "district-002"
    grant = access.grant(who, "buildings")  # district-scoped
    assert grant.district == "district-002" and grant.district_geometry.equals(WEST)
    assert access.grant(who, "streets").district_geometry is None  # not district-scoped
    admin = reg.principal_for(api_key=city.li)
    assert access.grant(admin, "buildings").district_geometry is None
    # a restricted collection: 403 for a signed-in user of another department, 401 anonymous
    with pytest.raises(Forbidden, match="sewer_links"):
        access.grant(reg.principal_for(api_key=city.wang), "sewer_links")
    with pytest.raises(Unauthorized):
        access.grant(ANONYMOUS, "sewer_links")
    assert not access.grant(reg.principal_for(api_key=city.wang), "water_supply_links").narrowed


# -- rate limits ------------------------------------------------------------------------------
def test_rate_limit_per_key_then_allowed_again_after_refill(city):
    c, reg = city.client, city.registry
    slow = reg.issue_key("wang", rate=0.5, burst=2).secret
    headers = {"X-API-Key": slow}
    assert [c.get("/health", headers=headers).status_code for _ in range(2)] == [200, 200]
    r = c.get("/health", headers=headers)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert "rate limit" in r.json()["error"]
    assert c.get("/health", headers={"X-API-Key": city.wang}).status_code == 200  # own bucket
    city.ticks.advance(1.0)
    assert c.get("/health", headers=headers).status_code == 429
    city.ticks.advance(1.0)  # one token back
    assert c.get("/health", headers=headers).status_code == 200
    assert c.get("/health", headers=headers).status_code == 429
    statuses = _entries(city)["status"].tolist()
    assert statuses.count(429) == 3


def test_anonymous_callers_share_their_address_bucket_and_failed_sign_ins_count(city):
    c = city.client
    city.registry.set_limits(anonymous=(1, 3))
    assert [c.get("/health").status_code for _ in range(4)] == [200, 200, 200, 429]
    city.ticks.advance(1.0)
    assert c.get("/health", headers={"X-API-Key": "garbage"}).status_code == 401
    r = c.get("/health", headers={"X-API-Key": "garbage"})
    assert r.status_code == 429 and "failed sign-ins" in r.json()["error"]
    assert c.get("/health", headers={"X-API-Key": city.wang}).status_code == 200
    city.ticks.advance(3.0)
    assert c.get("/health").status_code == 200


def test_token_bucket_arithmetic():
    ticks = Clock(0.0)
    limiter = RateLimiter(clock=ticks)
    assert [limiter.take("a", 10, 5) for _ in range(5)] == [0.0] * 5
    assert limiter.take("a", 10, 5) == pytest.approx(0.1)
    ticks.advance(0.25)  # 2.5 tokens back
    assert limiter.take("a", 10, 5) == 0.0 and limiter.take("a", 10, 5) == 0.0
    assert limiter.take("a", 10, 5) == pytest.approx(0.05)
    assert limiter.take("b", 0, 0) == 0.0  # no limit


# -- the audit log ---------------------------------------------------------------------------------
def test_every_request_is_audited_with_who_what_and_how_many(city):
    c = city.client
    before = dt.datetime.now(dt.UTC)
    c.get("/probe/count", headers={"X-API-Key": city.wang}, params={"q": "水"})
    c.get("/collections/sewer_links/items", params={"limit": 5})
    c.get("/health", headers={"X-API-Key": "garbage"})
    token = _token(c)["access_token"]
    c.get("/probe/stream", headers={"Authorization": f"Bearer {token}"})
    after = dt.datetime.now(dt.UTC)
    log = _entries(city)
    assert log["seq"].tolist() == list(range(1, len(log) + 1)) and len(log) == 5
    probe, items, bad, oauth, stream = log.to_dict("records")
    assert (probe["user"], probe["department"], probe["key_id"]) == ("wang", "water",
                                                                      city.wang_kid)  # fmt: skip
    assert (probe["method"], probe["path"], probe["status"], probe["count"]) == (
        "GET", "/probe/count", 200, 7,
    )  # fmt: skip
    assert probe["query"] == "q=%E6%B0%B4" and probe["client"] == "testclient"
    assert before <= probe["at"] <= after and probe["duration_ms"] > 0
    assert (items["family"], items["resource"], items["user"]) == ("features", "sewer_links", None)
    assert items["query"] == "limit=5"
    assert bad["status"] == 401 and bad["user"] is None
    assert (oauth["path"], oauth["method"], oauth["status"]) == ("/oauth/token", "POST", 200)
    assert stream["user"] == "wang" and stream["key_id"].startswith("token:")
    assert stream["status"] == 200 and stream["count"] is None
    assert city.store.verify_audit().ok


def test_a_refused_key_is_logged_by_its_visible_id(city):
    city.registry.revoke_key(city.wang_kid)
    assert city.client.get("/health", headers={"X-API-Key": city.wang}).status_code == 401
    last = _entries(city).iloc[-1]
    assert (last["key_id"], last["user"], last["status"]) == (city.wang_kid, None, 401)


def test_the_app_shutdown_writes_what_is_queued(store):
    ctx = ServiceContext.of(store)
    with TestClient(create_app(ctx)) as client:
        for _ in range(5):
            client.get("/health")
        audit = ctx.audit
    assert audit.closed and audit.written == 5
    assert store.audit_entries(limit=None)["path"].tolist() == ["/health"] * 5


def test_the_writer_flushes_in_the_background(store):
    audit = AuditLog(store, flush_s=0.05)
    audit.record({"at": T0, "method": "GET", "path": "/health", "family": "health",
                  "status": 200})  # fmt: skip
    done = threading.Event()
    for _ in range(200):  # up to 10 s on a busy machine; the writer needs ~0.05 s
        if len(store.audit_entries()):
            done.set()
            break
        done.wait(0.05)
    assert done.is_set()
    audit.close()
    assert audit.written == 1


def test_concurrent_readers_are_all_audited_in_one_unbroken_chain(city):
    def get(i):
        key = city.wang if i % 2 else city.li
        return city.client.get("/probe/count", headers={"X-API-Key": key}).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(get, range(160))) == {200}
    log = _entries(city)
    assert len(log) == 160 and log["seq"].is_monotonic_increasing
    assert log["user"].value_counts().to_dict() == {"wang": 80, "li": 80}
    check = city.store.verify_audit()
    assert check.ok and check.entries == 160 and check.tail_seq == 160


def test_tampering_deleting_or_reordering_breaks_the_chain_at_that_seq(city):
    for _ in range(6):
        city.client.get("/probe/count", headers={"X-API-Key": city.wang})
    _entries(city)
    con, store = city.store.con, city.store
    assert store.verify_audit().ok
    con.execute('UPDATE audit_log SET "count" = 70 WHERE seq = 3')
    check = store.verify_audit()
    assert not check.ok and check.broken_seq == 3 and "changed" in check.reason
    con.execute('UPDATE audit_log SET "count" = 7 WHERE seq = 3')
    assert store.verify_audit().ok
    con.execute("UPDATE audit_log SET seq = CASE seq WHEN 4 THEN 5 ELSE 4 END WHERE seq IN (4, 5)")
    assert store.verify_audit().broken_seq == 4
    con.execute("UPDATE audit_log SET seq = CASE seq WHEN 4 THEN 5 ELSE 4 END WHERE seq IN (4, 5)")
    assert store.verify_audit().ok
    con.execute("DELETE FROM audit_log WHERE seq = 2")
    check = store.verify_audit()
    assert check.broken_seq == 2 and "missing" in check.reason


def test_usage_per_service_and_department(city):
    c = city.client
    for _ in range(3):
        c.get("/probe/count", headers={"X-API-Key": city.wang})
    c.get("/probe/count", headers={"X-API-Key": city.li})
    c.get("/health")
    c.get("/health", headers={"X-API-Key": "garbage"})  # 401: not counted
    city.ctx.audit.flush()
    usage = city.store.audit_usage()
    assert list(usage.columns) == ["service", "department", "requests", "features"]
    rows = {(r.service, r.department): (r.requests, r.features) for r in usage.itertuples()}
    assert rows[("other", "water")] == (3, 21) and rows[("other", "planning")] == (1, 7)
    assert rows[("health", None)] == (1, 0) and len(rows) == 3
    later = city.store.audit_usage(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert len(later) == 0


def test_service_of_paths():
    assert service_of("/collections/gas_links/items") == ("features", "gas_links")
    assert service_of("/collections/gas_links/tiles/WebMercatorQuad/1/2/3") == (
        "tiles", "gas_links",
    )  # fmt: skip
    assert service_of("/collections") == ("features", None)
    assert service_of("/processes/trace/execution") == ("processes", "trace")
    assert service_of("/v1.1/Datastreams('x')/Observations") == ("sensorthings", None)
    assert service_of("/catalogue/usage") == ("catalogue", None)
    assert service_of("/") == ("api", None)


def test_the_audit_endpoint_is_for_admins(city):
    c = city.client
    assert c.get("/audit").status_code == 401
    assert c.get("/audit", headers={"X-API-Key": city.wang}).status_code == 403
    city.ctx.audit.flush()
    r = c.get("/audit", headers={"X-API-Key": city.li}, params={"user": "wang", "limit": 5})
    assert r.status_code == 200
    entries = r.json()["entries"]
    assert entries and all(e["user"] == "wang" for e in entries)
    assert entries[0]["path"] == "/audit" and entries[0]["status"] == 403


def test_server_sent_events_pass_through_and_are_audited(store):
    hub = EventHub()
    hub.publish("alarm.raised", {"alarm_id": "AL-1"})
    ctx = ServiceContext.of(store, hub=hub)
    ctx.registry = Registry(store, catalogue=ctx.catalogue)
    ctx.registry.add_user("ops", "Ops", "emergency", roles=["operator"])
    key = ctx.registry.issue_key("ops").secret
    with TestClient(create_app(ctx)) as client:
        assert client.get("/events", headers={"X-API-Key": key + "x"}).status_code == 401
        threading.Timer(0.5, hub.close).start()  # the test client reads until the stream ends
        r = client.get("/events", params={"lastEventId": "0-0"}, headers={"X-API-Key": key})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "retry:" in r.text
    log = store.audit_entries(limit=None)
    assert log["status"].tolist() == [401, 200]
    assert log["user"].tolist()[-1] == "ops" and log["family"].tolist() == ["monitoring"] * 2


def test_basic_auth_is_only_for_the_token_endpoint(city):
    basic = "Basic " + base64.b64encode(b"wang:s3cret-pass").decode()
    assert city.client.get("/health", headers={"Authorization": basic}).status_code == 401
    r = city.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"Authorization": basic}
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_refused_audit_writes_wait_and_are_retried(store, tmp_path):
    path = store.path
    store.close()
    read_only = open_store(path, read_only=True)
    audit = AuditLog(read_only, flush_s=3600, max_pending=3)
    entries = [
        {"at": T0, "method": "GET", "path": f"/health/{i}", "family": "health", "status": 200}
        for i in range(5)
    ]
    for e in entries[:2]:
        audit.record(e)
    assert audit.flush() == 0 and audit.written == 0  # refused: read-only
    for e in entries[2:]:
        audit.record(e)
    assert audit.flush() == 0 and audit.dropped == 2  # the oldest beyond max_pending
    read_only.close()
    with open_store(path) as writable:
        audit.store = writable
        assert audit.flush() == 3
        assert writable.audit_entries()["path"].tolist() == ["/health/2", "/health/3", "/health/4"]
        audit.close()

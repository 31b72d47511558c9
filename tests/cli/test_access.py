"""``citytwin access`` and ``citytwin audit`` on a real twin file, in process: what the
commands print and what they leave in the twin (read back through the registry and store)."""

from __future__ import annotations

import datetime as dt

import pytest

from citytwin.cli import app
from citytwin.errors import Unauthorized
from citytwin.services.access import Registry
from citytwin.store import open_store
from tests.cli.test_commands import run, runner

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def twin(tmp_path):
    path = tmp_path / "city.twin"
    run("init", "-t", path, "--crs", "EPSG:32650", "--name", "city")
    return path


def _registry(twin, write=False):
    store = open_store(twin, read_only=not write)
    return store, Registry(store)


def test_departments_and_users(twin):
    out = run("access", "department", "add", "parks", "-t", twin, "--name", "Parks",
              "--name-zh", "园林绿化局").output  # fmt: skip
    assert "parks: Parks / 园林绿化局" in out
    listed = run("access", "department", "list", "-t", twin).output
    assert "园林绿化局" in listed and "应急管理局" in listed and "12 departments" in listed
    result = runner.invoke(
        app,
        ["access", "user", "add", "zhao", "-t", str(twin), "--department", "parks",
         "--roles", "viewer,operator", "--name", "Zhao Min", "--password"],
        input="a long password\na long password\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "user zhao (Zhao Min): parks, viewer, operator" in result.output
    run("access", "user", "add", "qian", "-t", twin, "--department", "water")
    assert "2 users" in run("access", "user", "list", "-t", twin).output
    assert "1 users" in run("access", "user", "list", "-t", twin, "--department", "water").output
    run("access", "user", "set", "qian", "-t", twin, "--roles", "admin", "--name", "Qian")
    run("access", "user", "disable", "zhao", "-t", twin)
    result = runner.invoke(
        app, ["access", "user", "set-password", "qian", "-t", str(twin)],
        input="another password\nanother password\n",
    )  # fmt: skip
    assert result.exit_code == 0 and "password of qian set" in result.output
    store, reg = _registry(twin, write=True)  # the first token makes the signing key
    with store:
        assert reg.user("zhao").disabled and reg.user("zhao").roles == ("viewer", "operator")
        assert reg.user("qian").roles == ("admin",) and reg.user("qian").name == "Qian"
        assert reg.password_token("qian", "another password")["token_type"] == "Bearer"
        assert "parks" in reg.departments()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["access", "user", "add", "x", "--department", "nowhere"], "unknown department"),
        (["access", "user", "add", "x", "--department", "water", "--roles", "boss"],
         "unknown role 'boss'"),
        (["access", "user", "add", "x", "--department", "water", "--district", "d-1"],
         "no district zone 'd-1'"),
        (["access", "key", "issue", "--user", "nobody"], "no user 'nobody'"),
        (["access", "key", "revoke", "ct_0000000000"], "no API key"),
        (["access", "limits", "--anonymous", "fast"], "write RATE/BURST"),
        (["access", "user", "set", "x"], "nothing to change"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line(twin, args, message):
    result = run(*args, "-t", twin, ok=False)
    assert result.exit_code == 1 and "error:" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_keys_are_shown_once_and_work_until_revoked(twin):
    run("access", "user", "add", "wang", "-t", twin, "--department", "water")
    out = run("access", "key", "issue", "-t", twin, "--user", "wang", "--expires", "30d",
              "--rate", "5", "--name", "gis").output  # fmt: skip
    secret = next(line for line in out.splitlines() if line.startswith("ct_"))
    kid = secret[:13]
    assert "shown this once" in out and "expires at" in out
    listed = run("access", "key", "list", "-t", twin).output
    assert "1 API keys" in listed and secret[14:] not in listed
    store, reg = _registry(twin)
    with store:
        who = reg.principal_for(api_key=secret)
        assert (who.user, who.department, who.key_id) == ("wang", "water", kid)
        (key,) = reg.keys()
        assert (key.rate, key.burst, key.name) == (5.0, 10.0, "gis")
        assert key.expires_at.startswith(str((dt.datetime.now(dt.UTC) + dt.timedelta(30)).date()))
    assert (
        f"API key {kid} of wang revoked" in run("access", "key", "revoke", kid, "-t", twin).output
    )
    store, reg = _registry(twin)
    with store, pytest.raises(Unauthorized, match="revoked"):
        reg.principal_for(api_key=secret)


def test_clients_tokens_and_limits(twin):
    out = run("access", "client", "add", "-t", twin, "--department", "emergency",
              "--roles", "viewer,operator", "--id", "flood-model").output  # fmt: skip
    secret = out.splitlines()[out.splitlines().index(next(
        line for line in out.splitlines() if "shown this once" in line)) + 1]  # fmt: skip
    assert "emergency (viewer, operator)" in out
    assert "1 clients" in run("access", "client", "list", "-t", twin).output
    store, reg = _registry(twin, write=True)
    with store:
        token = reg.client_token("flood-model", secret)["access_token"]
        who = reg.principal_for(token=token)
        assert (who.user, who.department, who.roles) == (
            "svc:flood-model", "emergency", frozenset({"viewer", "operator"}),
        )  # fmt: skip
        jti = who.key_id
    run("access", "token", "revoke", jti, "-t", twin)
    store, reg = _registry(twin)
    with store, pytest.raises(Unauthorized, match="revoked"):
        reg.principal_for(token=token)
    out = run("access", "limits", "-t", twin, "--anonymous", "10/30", "--signed-in", "0").output
    assert "anonymous: 10 requests/s, burst 30" in out and "signed_in: 0 requests/s" in out
    store, reg = _registry(twin)
    with store:
        assert reg.limits() == {"anonymous": (10.0, 30.0), "signed_in": (0.0, 1.0)}
    run("access", "client", "revoke", "flood-model", "-t", twin)
    store, reg = _registry(twin)
    with store, pytest.raises(Unauthorized):
        reg.client_token("flood-model", secret)


def _audited(twin, n=6):
    with open_store(twin) as store:
        store.append_audit(
            [
                {
                    "at": T0 + dt.timedelta(minutes=i),
                    "user": "wang" if i % 2 else "li",
                    "department": "water" if i % 2 else "planning",
                    "method": "GET",
                    "path": "/collections/buildings/items",
                    "family": "features",
                    "resource": "buildings",
                    "status": 200,
                    "count": 10,
                    "duration_ms": 3.0,
                }
                for i in range(n)
            ]
        )


def test_audit_verify_list_usage_and_tail(twin):
    _audited(twin)
    out = run("audit", "verify", "-t", twin).output
    assert "ok: 6 entries" in out
    tail = run("audit", "tail", "-t", twin).output.strip()
    assert tail.startswith("6:") and len(tail) == 66
    assert "ok" in run("audit", "verify", "-t", twin, "--anchor", tail).output
    listed = run("audit", "list", "-t", twin, "--user", "wang").output
    assert "3 audit entries" in listed and "planning" not in listed
    since = run("audit", "list", "-t", twin, "--since", "2026-03-01T08:04Z").output
    assert "2 audit entries" in since
    usage = run("audit", "usage", "-t", twin).output
    assert "buildings" in usage and "30" in usage  # 3 requests of 10 features per department
    bad = run("audit", "verify", "-t", twin, "--anchor", "six:abc", ok=False)
    assert bad.exit_code == 1 and "SEQ:HASH" in bad.output


def test_audit_verify_fails_with_the_broken_seq(twin):
    _audited(twin)
    with open_store(twin) as store:
        store.con.execute('UPDATE audit_log SET "count" = 1000 WHERE seq = 3')
    result = run("audit", "verify", "-t", twin, ok=False)
    assert result.exit_code == 1 and "broken at seq 3" in result.output
    assert "changed" in result.output
    with open_store(twin) as store:
        store.con.execute('UPDATE audit_log SET "count" = 10 WHERE seq = 3')
        store.con.execute("DELETE FROM audit_log WHERE seq = 5")
    result = run("audit", "verify", "-t", twin, ok=False)
    assert result.exit_code == 1 and "broken at seq 5" in result.output

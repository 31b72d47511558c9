"""``citytwin access`` (departments, users, API keys, OAuth2 clients, tokens, rate limits) and
``citytwin audit`` (verify the hash chain, list entries, usage, the tail to keep as an anchor).

They change the twin file directly, so they run while no server holds it (DuckDB lets one
process write a file); secrets are printed once and never kept.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import pandas as pd
import typer
from rich.table import Table

from citytwin.cli.common import TwinOption, cell, console, err_console, open_twin, run
from citytwin.errors import CityTwinError

access_app = typer.Typer(
    help="Departments, users, API keys, OAuth2 clients and rate limits of a twin's services.",
    no_args_is_help=True,
)
audit_app = typer.Typer(
    help="The audit log of a twin's services: verify its hash chain, list, usage.",
    no_args_is_help=True,
)
department_app = typer.Typer(help="Departments (the defaults and the twin's own).")
user_app = typer.Typer(help="Users: add, list, change, disable, set a password.")
key_app = typer.Typer(help="API keys: issue (the key is shown once), list, revoke.")
client_app = typer.Typer(help="OAuth2 client credentials (grant type client_credentials).")
token_app = typer.Typer(help="Bearer tokens.")
for sub, name in (
    (department_app, "department"),
    (user_app, "user"),
    (key_app, "key"),
    (client_app, "client"),
    (token_app, "token"),
):
    sub.info.no_args_is_help = True
    access_app.add_typer(sub, name=name)

RolesOption = Annotated[
    str, typer.Option("--roles", help="Comma-separated: viewer, operator, admin.")
]
RateOption = Annotated[
    float | None,
    typer.Option(help="Requests per second allowed (0: no limit; default: the twin's)."),
]
BurstOption = Annotated[
    float | None, typer.Option(help="Requests allowed at once before the rate applies.")
]


@contextmanager
def _registry(twin: Any, write: bool = True) -> Iterator[Any]:
    from citytwin.services.access import Registry

    store = open_twin(twin, read_only=not write)
    try:
        yield Registry(store)
    finally:
        store.close()


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*(cell(", ".join(v) if isinstance(v, list | tuple) else v) for v in
                        (row.get(c) for c in columns)))  # fmt: skip
    console.print(table)


def _password(confirm: bool = True) -> str:
    return typer.prompt("password", hide_input=True, confirmation_prompt=confirm)


def _secret(what: str, ident: str, secret: str) -> None:
    console.print(f"{what} [bold]{ident}[/] — the secret, shown this once (only a hash is kept):")
    console.print(secret, highlight=False, soft_wrap=True)


# -- departments ----------------------------------------------------------------------------------
@department_app.command("add")
def department_add(
    department: Annotated[str, typer.Argument(help="Its id, e.g. parks.")],
    twin: TwinOption,
    name: Annotated[str, typer.Option(help="Its name in English.")],
    name_zh: Annotated[str | None, typer.Option(help="Its name in Chinese.")] = None,
) -> None:
    """Add a department (or rename one)."""

    def body() -> None:
        with _registry(twin) as reg:
            rec = reg.add_department(department, name, name_zh)
        console.print(f"department {department}: {rec['name']} / {rec['name_zh']}")

    run(body)


@department_app.command("list")
def department_list(twin: TwinOption) -> None:
    """The departments, with how many users each has."""

    def body() -> None:
        with _registry(twin, write=False) as reg:
            deps = reg.departments()
            users = pd.Series([u.department for u in reg.users()], dtype=object)
        counts = users.value_counts().to_dict()
        rows = [{"id": k, **v, "users": counts.get(k, 0)} for k, v in sorted(deps.items())]
        _table(rows, ["id", "name", "name_zh", "users"], f"{len(rows)} departments")

    run(body)


# -- users --------------------------------------------------------------------------------------
@user_app.command("add")
def user_add(
    user: Annotated[str, typer.Argument(help="The user id (what they sign in with).")],
    twin: TwinOption,
    department: Annotated[str, typer.Option(help="Their department's id.")],
    name: Annotated[str | None, typer.Option(help="Their full name.")] = None,
    roles: RolesOption = "viewer",
    district: Annotated[
        str | None, typer.Option(help="A district zone id: they see only features in it.")
    ] = None,
    password: Annotated[
        bool, typer.Option("--password", help="Ask for a password (for the password grant).")
    ] = False,
) -> None:
    """Add a user."""

    def body() -> None:
        secret = _password() if password else None
        with _registry(twin) as reg:
            u = reg.add_user(
                user, name or user, department, roles=roles, district=district, password=secret
            )
        where = f", district {u.district}" if u.district else ""
        console.print(f"user {u.id} ({u.name}): {u.department}, {', '.join(u.roles)}{where}")

    run(body)


@user_app.command("list")
def user_list(
    twin: TwinOption,
    department: Annotated[str | None, typer.Option(help="Only of this department.")] = None,
) -> None:
    """The users."""

    def body() -> None:
        with _registry(twin, write=False) as reg:
            rows = [u.public() for u in reg.users()]
        rows = [r for r in rows if department is None or r["department"] == department]
        cols = ["id", "name", "department", "roles", "district", "disabled", "has_password"]
        _table(rows, cols, f"{len(rows)} users")

    run(body)


@user_app.command("set")
def user_set(
    user: Annotated[str, typer.Argument(help="The user id.")],
    twin: TwinOption,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    department: Annotated[str | None, typer.Option(help="A new department.")] = None,
    roles: Annotated[str | None, typer.Option(help="New roles (comma-separated).")] = None,
    district: Annotated[
        str | None, typer.Option(help="A district zone id; 'none' unbinds them.")
    ] = None,
) -> None:
    """Change a user's name, department, roles or district."""

    def body() -> None:
        changes: dict[str, Any] = {
            k: v
            for k, v in {"name": name, "department": department, "roles": roles}.items()
            if v is not None
        }
        if district is not None:
            changes["district"] = None if district.lower() == "none" else district
        if not changes:
            raise CityTwinError("nothing to change: give --name, --department, --roles or"
                                " --district")  # fmt: skip
        with _registry(twin) as reg:
            u = reg.update_user(user, **changes)
        console.print(f"user {u.id}: {u.department}, {', '.join(u.roles)}, district {u.district}")

    run(body)


@user_app.command("disable")
def user_disable(
    user: Annotated[str, typer.Argument(help="The user id.")], twin: TwinOption
) -> None:
    """Disable a user: their keys, tokens and clients stop working at once."""
    run(lambda: _enable(twin, user, False))


@user_app.command("enable")
def user_enable(
    user: Annotated[str, typer.Argument(help="The user id.")], twin: TwinOption
) -> None:
    """Enable a disabled user again."""
    run(lambda: _enable(twin, user, True))


def _enable(twin: Any, user: str, enabled: bool) -> None:
    with _registry(twin) as reg:
        reg.disable_user(user, not enabled)
    console.print(f"user {user} {'enabled' if enabled else 'disabled'}")


@user_app.command("set-password")
def user_set_password(
    user: Annotated[str, typer.Argument(help="The user id.")], twin: TwinOption
) -> None:
    """Set a user's password (asked for twice, not echoed)."""

    def body() -> None:
        with _registry(twin) as reg:
            reg.user(user)
            reg.set_password(user, _password())
        console.print(f"password of {user} set")

    run(body)


# -- API keys -----------------------------------------------------------------------------------
def _expiry(text: str | None) -> dt.datetime | dt.timedelta | None:
    if text is None:
        return None
    duration = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(d|h|min|s)\s*", text.lower())
    if duration:
        unit = {"d": "days", "h": "hours", "min": "minutes", "s": "seconds"}[duration[2]]
        return dt.timedelta(**{unit: float(duration[1])})
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CityTwinError(
            f"--expires {text!r}: give a duration (90d, 12h) or a date (2026-12-31)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@key_app.command("issue")
def key_issue(
    twin: TwinOption,
    user: Annotated[str, typer.Option(help="The key's owner.")],
    name: Annotated[str | None, typer.Option(help="What it is for (e.g. gis-desktop).")] = None,
    expires: Annotated[
        str | None, typer.Option(help="When it expires: 90d, 12h, 30min, or a date (UTC).")
    ] = None,
    rate: RateOption = None,
    burst: BurstOption = None,
) -> None:
    """Issue an API key; the key is printed this once (send it as X-API-Key)."""

    def body() -> None:
        with _registry(twin) as reg:
            issued = reg.issue_key(user, name=name, expires=_expiry(expires), rate=rate,
                                   burst=burst)  # fmt: skip
        rec = issued.record
        _secret(f"API key of {rec.user}", rec.id, issued.secret)
        if rec.expires_at:
            console.print(f"expires at {rec.expires_at}")

    run(body)


@key_app.command("list")
def key_list(
    twin: TwinOption,
    user: Annotated[str | None, typer.Option(help="Only this user's.")] = None,
) -> None:
    """The API keys (their ids, never the secrets)."""

    def body() -> None:
        with _registry(twin, write=False) as reg:
            rows = [k.public() for k in reg.keys(user)]
        cols = ["id", "user", "name", "created_at", "expires_at", "revoked_at", "rate", "burst"]
        _table(rows, cols, f"{len(rows)} API keys")

    run(body)


@key_app.command("revoke")
def key_revoke(
    key: Annotated[str, typer.Argument(help="The key id (ct_...), or the whole key.")],
    twin: TwinOption,
) -> None:
    """Revoke an API key: it is refused from now on."""

    def body() -> None:
        from citytwin.services.access import KEY_PREFIX

        with _registry(twin) as reg:
            rec = reg.revoke_key(key[: len(KEY_PREFIX) + 10])
        console.print(f"API key {rec.id} of {rec.user} revoked at {rec.revoked_at}")

    run(body)


# -- clients and tokens -------------------------------------------------------------------------
@client_app.command("add")
def client_add(
    twin: TwinOption,
    user: Annotated[str | None, typer.Option(help="Act as this user.")] = None,
    department: Annotated[
        str | None, typer.Option(help="Or: a service account of this department.")
    ] = None,
    roles: Annotated[
        str, typer.Option(help="The service account's roles (comma-separated).")
    ] = "viewer",
    client_id: Annotated[str | None, typer.Option("--id", help="Its id (default: made).")] = None,
    name: Annotated[str | None, typer.Option(help="What it is (e.g. flood-model).")] = None,
    rate: RateOption = None,
    burst: BurstOption = None,
) -> None:
    """Add OAuth2 client credentials; the secret is printed this once."""

    def body() -> None:
        with _registry(twin) as reg:
            issued = reg.add_client(
                user=user, department=department, roles=roles, name=name, client_id=client_id,
                rate=rate, burst=burst,
            )  # fmt: skip
        rec = issued.record
        bound = f"user {rec.user}" if rec.user else f"{rec.department} ({', '.join(rec.roles)})"
        _secret(f"client for {bound}", rec.id, issued.secret)
        console.print("POST /oauth/token with grant_type=client_credentials (Basic auth)")

    run(body)


@client_app.command("list")
def client_list(twin: TwinOption) -> None:
    """The OAuth2 clients."""

    def body() -> None:
        with _registry(twin, write=False) as reg:
            rows = [c.public() for c in reg.clients()]
        cols = ["id", "user", "department", "roles", "name", "created_at", "revoked_at", "rate"]
        _table(rows, cols, f"{len(rows)} clients")

    run(body)


@client_app.command("revoke")
def client_revoke(
    client: Annotated[str, typer.Argument(help="The client id.")], twin: TwinOption
) -> None:
    """Revoke a client: its secret and the tokens issued to it stop working."""

    def body() -> None:
        with _registry(twin) as reg:
            rec = reg.revoke_client(client)
        console.print(f"client {rec.id} revoked at {rec.revoked_at}")

    run(body)


@token_app.command("revoke")
def token_revoke(
    jti: Annotated[str, typer.Argument(help="The token's jti (the audit log's token:<jti>).")],
    twin: TwinOption,
) -> None:
    """Revoke a bearer token by its id."""

    def body() -> None:
        with _registry(twin) as reg:
            reg.revoke_token(jti=jti.removeprefix("token:"))
        console.print(f"token {jti} revoked")

    run(body)


@access_app.command("limits")
def limits(
    twin: TwinOption,
    anonymous: Annotated[
        str | None, typer.Option(help="RATE/BURST per client address without credentials.")
    ] = None,
    signed_in: Annotated[
        str | None, typer.Option(help="RATE/BURST per user, client or key (unless its own).")
    ] = None,
) -> None:
    """Show, or set, the default rate limits (requests per second / burst; 0: none)."""

    def body() -> None:
        changes = {k: _rate(v, k) for k, v in (("anonymous", anonymous),
                                                 ("signed_in", signed_in)) if v}  # fmt: skip
        with _registry(twin, write=bool(changes)) as reg:
            current = reg.set_limits(**changes) if changes else reg.limits()
        for k, (rate, burst) in current.items():
            console.print(f"{k}: {rate:g} requests/s, burst {burst:g}")

    run(body)


def _rate(text: str, what: str) -> tuple[float, float]:
    try:
        rate, _, burst = text.partition("/")
        return float(rate), float(burst) if burst else max(1.0, 2 * float(rate))
    except ValueError:
        raise CityTwinError(
            f"--{what.replace('_', '-')} {text!r}: write RATE/BURST, e.g. 20/40"
        ) from None


# -- audit -------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    twin: TwinOption,
    anchor: Annotated[
        str | None, typer.Option(help="SEQ:HASH saved earlier (audit tail): must still be there.")
    ] = None,
) -> None:
    """Recompute the hash chain; exit code 1 and the first broken seq when it does not hold."""

    def body() -> None:
        mark = None
        if anchor is not None:
            seq, _, digest = anchor.partition(":")
            if not seq.isdigit() or len(digest) != 64:
                raise CityTwinError(f"--anchor {anchor!r}: write SEQ:HASH (from `audit tail`)")
            mark = (int(seq), digest)
        with open_twin(twin, read_only=True) as store:
            check = store.verify_audit(anchor=mark)
        if check.ok:
            console.print(f"[green]ok[/]: {check.entries:,} entries, tail {check.tail_seq}:"
                          f"{check.tail_hash}")  # fmt: skip
            return
        err_console.print(
            f"[bold red]broken at seq {check.broken_seq}[/]: {check.reason}"
            f" ({check.entries:,} entries before it verified)",
            highlight=False,
        )
        raise typer.Exit(1)

    run(body)


@audit_app.command("tail")
def audit_tail(twin: TwinOption) -> None:
    """The chain's last SEQ:HASH — keep it elsewhere to check later (verify --anchor)."""

    def body() -> None:
        with open_twin(twin, read_only=True) as store:
            seq, digest = store.audit_tail()
        console.print(f"{seq}:{digest}", highlight=False)

    run(body)


def _time(text: str | None, what: str) -> pd.Timestamp | None:
    if text is None:
        return None
    try:
        t = pd.Timestamp(text)
    except ValueError:
        raise CityTwinError(f"--{what} {text!r}: write e.g. 2025-06-02T08:00Z") from None
    return t.tz_localize("UTC") if t.tzinfo is None else t


@audit_app.command("list")
def audit_list(
    twin: TwinOption,
    since: Annotated[str | None, typer.Option(help="From this time (UTC unless given).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
    user: Annotated[str | None, typer.Option(help="Of this user.")] = None,
    department: Annotated[str | None, typer.Option(help="Of this department.")] = None,
    path: Annotated[str | None, typer.Option(help="Paths starting with this.")] = None,
    limit: Annotated[int, typer.Option(help="The last this many.")] = 50,
) -> None:
    """Audit entries, oldest of the last LIMIT first."""

    def body() -> None:
        with open_twin(twin, read_only=True) as store:
            frame = store.audit_entries(
                since=_time(since, "since"), until=_time(until, "until"), user=user,
                department=department, path_prefix=path, limit=limit, newest_first=True,
            )  # fmt: skip
        frame = frame.iloc[::-1]
        frame["at"] = frame["at"].dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3]
        cols = ["seq", "at", "user", "department", "key_id", "client", "method", "path",
                "query", "status", "count", "duration_ms"]  # fmt: skip
        _table(frame.to_dict("records"), cols, f"{len(frame):,} audit entries")

    run(body)


@audit_app.command("usage")
def audit_usage(
    twin: TwinOption,
    since: Annotated[str | None, typer.Option(help="From this time.")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
) -> None:
    """Requests answered and features returned per service and department."""

    def body() -> None:
        with open_twin(twin, read_only=True) as store:
            frame = store.audit_usage(_time(since, "since"), _time(until, "until"))
        rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
        for r in rows:
            r["department"] = r["department"] or "(anonymous)"
        _table(rows, ["service", "department", "requests", "features"], "usage")

    run(body)

"""The audit log in the embedded store: appends chained by hash in one transaction, reads with
filters, usage per service and department, and verification that finds the first entry
changed, removed, repeated or moved — on real twin files, tampered through DuckDB itself."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd
import pytest

from citytwin.errors import InvalidInput
from citytwin.store import open_store
from citytwin.store.base import AUDIT_COLUMNS, AUDIT_GENESIS, audit_digest

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def _entry(i: int, **kw) -> dict:
    base = {
        "at": T0 + dt.timedelta(minutes=i),
        "user": "wang" if i % 2 else None,
        "department": "water" if i % 2 else None,
        "key_id": "ct_0123456789" if i % 2 else None,
        "client": "10.0.0.7",
        "method": "GET",
        "path": "/collections/water_supply_links/items" if i % 3 else "/v1.1/Things",
        "query": f"limit={i}",
        "family": "features" if i % 3 else "sensorthings",
        "resource": "water_supply_links" if i % 3 else None,
        "status": 200,
        "count": i if i % 3 else None,
        "duration_ms": 1.5 + i,
    }
    return {**base, **kw}


@pytest.fixture
def store(make_twin):
    return make_twin()


def test_appends_are_chained_and_read_back(store):
    assert store.audit_tail() == (0, AUDIT_GENESIS)
    assert len(store.audit_entries()) == 0 and list(store.audit_entries().columns) == list(
        AUDIT_COLUMNS
    )
    tail = store.append_audit([_entry(i) for i in range(1, 4)])
    tail = store.append_audit(pd.DataFrame([_entry(i) for i in range(4, 7)]))
    log = store.audit_entries(limit=None)
    assert log["seq"].tolist() == [1, 2, 3, 4, 5, 6] and tail == (6, log["hash"].iloc[-1])
    assert store.audit_tail() == tail
    first = log.iloc[0]
    assert first["at"] == T0 + dt.timedelta(minutes=1) and str(log["at"].dt.tz) == "UTC"
    assert (first["user"], first["count"], first["duration_ms"]) == ("wang", 1, 2.5)
    assert pd.isna(log["count"].iloc[2]) and log["user"].iloc[1] is None
    # the chain: each prev_hash is the hash before; each hash is sha256 of prev + the entry
    assert log["prev_hash"].tolist() == [AUDIT_GENESIS, *log["hash"].tolist()[:-1]]
    body = {c: first[c] for c in AUDIT_COLUMNS[:-2]}
    body.update(at="2026-03-01T08:01:00.000000Z", seq=1, status=200, count=1, duration_ms=2.5)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert first["hash"] == hashlib.sha256((AUDIT_GENESIS + text).encode()).hexdigest()
    assert audit_digest(AUDIT_GENESIS, first.to_dict()) == first["hash"]
    check = store.verify_audit()
    assert check.ok and check.entries == 6 and (check.tail_seq, check.tail_hash) == tail


def test_entries_survive_reopening_and_the_chain_goes_on(store, tmp_path):
    path = store.path
    store.append_audit([_entry(1), _entry(2)])
    store.close()
    with open_store(path) as again:
        again.append_audit([_entry(3)])
        assert again.audit_entries(limit=None)["seq"].tolist() == [1, 2, 3]
        assert again.verify_audit().ok
    with open_store(path, read_only=True) as ro:
        assert ro.verify_audit().entries == 3


def test_filters_and_order(store):
    store.append_audit([_entry(i) for i in range(1, 11)])
    q = store.audit_entries
    assert q(user="wang", limit=None)["seq"].tolist() == [1, 3, 5, 7, 9]
    assert q(department="water", limit=2, newest_first=True)["seq"].tolist() == [9, 7]
    assert q(path_prefix="/v1.1/", limit=None)["seq"].tolist() == [3, 6, 9]
    since, until = T0 + dt.timedelta(minutes=4), T0 + dt.timedelta(minutes=6)
    assert q(since=since, until=until)["seq"].tolist() == [4, 5]
    assert q(since="2026-03-01T16:04:00+08:00", limit=1)["seq"].tolist() == [4]
    assert q(seq_from=8)["seq"].tolist() == [8, 9, 10]
    assert q(seq_from=2, seq_to=4)["seq"].tolist() == [2, 3]
    with pytest.raises(InvalidInput, match="not a time"):
        q(since="yesterday-ish")
    with pytest.raises(InvalidInput, match="negative"):
        q(limit=-1)


def test_usage_per_service_and_department(store):
    store.append_audit(
        [
            _entry(1),  # water_supply_links, water, 1 feature
            _entry(2),  # water_supply_links, anonymous, 2
            _entry(5, count=5),  # water_supply_links, water, 5
            _entry(3),  # sensorthings, water, none
            _entry(7, status=403),  # refused: not counted
        ]
    )
    usage = store.audit_usage()
    assert list(usage.columns) == ["service", "department", "requests", "features"]
    assert usage.to_dict("records") == [
        {"service": "water_supply_links", "department": "water", "requests": 2, "features": 6},
        {"service": "sensorthings", "department": "water", "requests": 1, "features": 0},
        {"service": "water_supply_links", "department": None, "requests": 1, "features": 2},
    ]
    recent = store.audit_usage(since=T0 + dt.timedelta(minutes=3))
    assert recent["requests"].sum() == 2  # entries 3 and 5
    assert len(store.audit_usage(until=T0)) == 0


def test_bad_entries_are_refused_and_nothing_is_written(store):
    store.append_audit([_entry(1)])
    with pytest.raises(InvalidInput, match="audit entry 1 lacks status"):
        store.append_audit([_entry(2), {**_entry(3), "status": None}])
    with pytest.raises(InvalidInput, match="not a time"):
        store.append_audit([_entry(2, at="not a time")])
    with pytest.raises(RuntimeError), store.transaction():
        store.append_audit([_entry(2)])
        raise RuntimeError("the caller's transaction fails")
    assert store.audit_entries(limit=None)["seq"].tolist() == [1]
    assert store.audit_tail()[0] == 1 and store.verify_audit().ok


def test_long_texts_are_cut(store):
    store.append_audit([_entry(1, path="/" + "x" * 5000)])
    assert len(store.audit_entries()["path"].iloc[0]) == 2000
    assert store.verify_audit().ok


@pytest.fixture
def chained(store):
    store.append_audit([_entry(i) for i in range(1, 9)])
    assert store.verify_audit().ok
    return store


@pytest.mark.parametrize(
    ("sql", "seq", "why"),
    [
        ("UPDATE audit_log SET status = 404 WHERE seq = 5", 5, "changed"),
        ("UPDATE audit_log SET \"user\" = 'li' WHERE seq = 1", 1, "changed"),
        ('UPDATE audit_log SET "at" = "at" + INTERVAL 1 SECOND WHERE seq = 8', 8, "changed"),
        ("DELETE FROM audit_log WHERE seq = 3", 3, "missing"),
        ("DELETE FROM audit_log WHERE seq >= 7", 7, "missing"),  # the tail tells
        ("UPDATE audit_log SET seq = 11 - seq WHERE seq IN (5, 6)", 5, "prev_hash"),
        ("INSERT INTO audit_log SELECT * FROM audit_log WHERE seq = 4", 4, "twice"),
        ("UPDATE audit_log SET seq = seq + 1 WHERE seq >= 6", 6, "missing"),
        ("UPDATE audit_tail SET seq = 6", 7, "after the recorded tail"),
    ],
)
def test_verify_finds_the_first_broken_entry(chained, sql, seq, why):
    chained.con.execute(sql)
    check = chained.verify_audit()
    assert not check.ok and check.broken_seq == seq and why in check.reason


def test_a_rewritten_chain_is_caught_by_an_anchor(chained):
    anchor = chained.audit_tail()
    chained.con.execute("DELETE FROM audit_log WHERE seq = 8")
    chained.con.execute("DELETE FROM audit_tail")
    seq, digest = chained.con.execute("SELECT seq, hash FROM audit_log WHERE seq = 7").fetchone()
    chained.con.execute("INSERT INTO audit_tail VALUES (?, ?)", [seq, digest])
    assert chained.verify_audit().ok  # a consistent rewrite of the end ...
    check = chained.verify_audit(anchor=anchor)  # ... but not what was saved elsewhere
    assert not check.ok and check.broken_seq == 8 and "anchor" in check.reason
    mid = chained.audit_entries(seq_from=4, limit=1).iloc[0]
    assert chained.verify_audit(anchor=(4, mid["hash"])).ok
    assert chained.verify_audit(anchor=(4, "0" * 64)).broken_seq == 4


def test_verify_pages_through_a_long_log(store):
    store.append_audit([_entry(i % 50) for i in range(2500)])
    assert store.verify_audit(page_size=300).entries == 2500
    store.con.execute("UPDATE audit_log SET query = 'limit=999' WHERE seq = 1801")
    assert store.verify_audit(page_size=300).broken_seq == 1801


def test_get_documents_reads_a_prefix_at_once(store):
    store.put_document("access/users/a", {"id": "a"})
    store.put_document("access/users/b", {"id": "b"})
    store.put_document("accessory", {"x": 1})
    assert store.get_documents("access/users/") == {
        "access/users/a": {"id": "a"}, "access/users/b": {"id": "b"},
    }  # fmt: skip
    assert store.get_documents("nothing/") == {}

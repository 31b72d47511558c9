"""CQL2 filters translated to SQL (citytwin.store.sql_filter) and run by the embedded store,
checked against the same conditions evaluated with pandas and shapely on the same frame —
text and JSON encodings, nulls, spatial and temporal predicates, bad input, injection attempts."""

from __future__ import annotations

import datetime as dt
import unicodedata

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pygeofilter import ast
from pygeofilter.parsers.ecql import parse as parse_ecql

from citytwin.errors import InvalidInput
from citytwin.model import validate_frame
from citytwin.store import Query
from citytwin.store.sql_filter import envelope, excluding, parse, properties, to_sql

T0 = dt.datetime(2020, 1, 1)
N = 400
NAMES = ["Tower A", "tower b", "Twer C", "Café Tower", "Cafe Tower", "50% Plaza", "50X Plaza",
         "a_b", "axb", "Robert'); DROP TABLE buildings;--", "x' OR '1'='1"]  # fmt: skip


def _frame() -> gpd.GeoDataFrame:
    rng = np.random.default_rng(7)
    x, y = rng.uniform(0, 1000, N), rng.uniform(0, 1000, N)
    w = rng.uniform(5, 40, N)
    geoms = shapely.box(x, y, x + w, y + w)
    geoms[:20] = shapely.buffer(shapely.points(x[:20], y[:20]), 12.0)  # some round ones
    names = np.array([NAMES[i % len(NAMES)] if i % 3 else None for i in range(N)], dtype=object)
    height = rng.uniform(3, 120, N).round(1)
    height[::17] = np.nan
    use = rng.choice(np.array(["residential", "office", "school"], dtype=object), N)
    use[::13] = None
    estimated = pd.array(rng.integers(0, 2, N).astype(bool), dtype="boolean")
    estimated[::11] = pd.NA
    frame = gpd.GeoDataFrame(
        {
            "id": [f"b{i}" for i in range(N)],
            "class": np.where(np.arange(N) % 10 == 0, "building_part", "building"),
            "name": names,
            "height": height,
            "height_estimated": estimated,
            "floors": rng.integers(1, 40, N),
            "use": use,
            "year_built": rng.integers(1950, 2024, N),
        },
        geometry=geoms,
        crs="EPSG:32650",
    )
    frame = validate_frame("buildings", frame, source="test", valid_from=T0)
    frame["valid_from"] = [T0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 365, N)]
    return frame


TRUTH = _frame()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from citytwin.model import TwinMeta
    from citytwin.store import create_store

    path = tmp_path_factory.mktemp("sqlfilter") / "f.twin"
    s = create_store(path, TwinMeta("f", "EPSG:32650", (0, 0, 1100, 1100)))
    s.insert("buildings", TRUTH)
    yield s
    s.close()


def ids(store, node) -> set[str]:
    return set(store.query(Query("buildings", filter=node, columns=[]))["id"])


def expect(mask: pd.Series) -> set[str]:
    return set(TRUTH.loc[mask.fillna(False).astype(bool), "id"])


d = TRUTH
g = d.geometry
nm = d.name.astype("string")  # nullable: NA where missing
POLY = shapely.Polygon([(100, 100), (700, 150), (400, 800)])
LINE = shapely.LineString([(0, 500), (1000, 520)])
P = shapely.Point(500, 500)
INSIDE = g.iloc[50].centroid  # a point in building b50 (and maybe in others)
SPECK = INSIDE.buffer(0.5)
strip = np.vectorize(lambda s: unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
                     if isinstance(s, str) else s, otypes=[object])  # fmt: skip
CASES = [
    ("height > 30", d.height > 30),
    ("height >= 30 AND use = 'office'", (d.height >= 30) & (d.use == "office")),
    ("use = 'office' OR floors < 3", (d.use == "office") | (d.floors < 3)),
    ("NOT (height > 30)", d.height.notna() & ~(d.height > 30)),
    ("use <> 'office'", d.use.notna() & (d.use != "office")),
    ("floors BETWEEN 5 AND 10", d.floors.between(5, 10)),
    ("floors NOT BETWEEN 5 AND 10", ~d.floors.between(5, 10)),
    ("use IN ('office', 'school')", d.use.isin(["office", "school"])),
    ("use NOT IN ('office', 'school')", d.use.notna() & ~d.use.isin(["office", "school"])),
    ("name IS NULL", d.name.isna()),
    ("name IS NOT NULL", d.name.notna()),
    ("name LIKE 'T%'", nm.str.startswith("T")),
    ("name LIKE 'T_wer%'", nm.str.match(r"^T.wer")),
    ("CASEI(name) LIKE CASEI('TOWER%')", nm.str.lower().str.startswith("tower")),
    ("ACCENTI(name) = ACCENTI('Café Tower')", pd.Series(strip(d.name)) == "Cafe Tower"),
    ("name LIKE '50\\%%'", nm.str.startswith("50%")),
    ("name LIKE 'a\\_b'", d.name == "a_b"),
    ("name NOT LIKE '%Tower%'", d.name.notna() & ~nm.str.contains("Tower", regex=False)),
    ("height * 2 > floors * 3 + 1", d.height * 2 > d.floors * 3 + 1),
    ("height - floors / 2 <= 20", d.height - d.floors / 2 <= 20),
    ("height > floors", d.height > d.floors),
    ("year_built = floors + 1990", d.year_built == d.floors + 1990),
    ("height_estimated = TRUE", d.height_estimated == True),  # noqa: E712
    ("id IN ('b1', 'b2', 'b399', 'nope')", d.id.isin(["b1", "b2", "b399"])),
    ("class = 'building_part'", d["class"] == "building_part"),
    ("INCLUDE", pd.Series(True, index=d.index)),
    ("EXCLUDE", pd.Series(False, index=d.index)),
    (f"S_INTERSECTS(geometry, {POLY.wkt})", g.intersects(POLY)),
    (f"S_WITHIN(geometry, {POLY.wkt})", g.within(POLY)),
    (f"S_WITHIN({SPECK.wkt}, geometry)", g.contains(SPECK)),
    (f"S_CONTAINS(geometry, {INSIDE.wkt})", g.contains(INSIDE)),
    (f"S_DISJOINT(geometry, {POLY.wkt})", g.disjoint(POLY)),
    (f"S_CROSSES(geometry, {LINE.wkt})", g.crosses(LINE)),
    (f"S_OVERLAPS(geometry, {POLY.wkt})", g.overlaps(POLY)),
    (f"S_TOUCHES(geometry, {g.iloc[40].boundary.wkt})", g.touches(g.iloc[40].boundary)),
    (f"S_EQUALS(geometry, {g.iloc[30].wkt})", g.geom_equals(g.iloc[30])),
    ("S_INTERSECTS(geometry, BBOX(200, 300, 450, 520))",
     g.intersects(shapely.box(200, 300, 450, 520))),
    (f"S_INTERSECTS(geometry, {POLY.wkt}) AND height > 50", g.intersects(POLY) & (d.height > 50)),
    (f"NOT S_INTERSECTS(geometry, {POLY.wkt}) OR use = 'school'",
     ~g.intersects(POLY) | (d.use == "school")),
    ("valid_from > TIMESTAMP('2020-06-01T00:00:00Z')", d.valid_from > pd.Timestamp("2020-06-01")),
    ("valid_from < DATE('2020-03-01')", d.valid_from < pd.Timestamp("2020-03-01")),
    ("valid_from T_BEFORE TIMESTAMP('2020-02-01T08:00:00+08:00')",
     d.valid_from < pd.Timestamp("2020-02-01")),
    ("valid_from T_AFTER TIMESTAMP('2020-11-01T00:00:00Z')",
     d.valid_from > pd.Timestamp("2020-11-01")),
    ("valid_from T_DURING INTERVAL('2020-03-01T00:00:00Z', '2020-04-01T00:00:00Z')",
     (d.valid_from > pd.Timestamp("2020-03-01")) & (d.valid_from < pd.Timestamp("2020-04-01"))),
    ("valid_from T_INTERSECTS INTERVAL('2020-03-01T00:00:00Z', '2020-04-01T00:00:00Z')",
     d.valid_from.between(pd.Timestamp("2020-03-01"), pd.Timestamp("2020-04-01"))),
    ("valid_from T_EQUALS TIMESTAMP('2020-01-01T00:00:00Z')", d.valid_from == pd.Timestamp(T0)),
    ("valid_to IS NULL", pd.Series(True, index=d.index)),
    ("name = 'x'' OR ''1''=''1'", d.name == "x' OR '1'='1"),  # quotes doubled, as CQL2 has them
    ("name IN ('Robert''); DROP TABLE buildings;--', 'a_b')",
     d.name.isin(["Robert'); DROP TABLE buildings;--", "a_b"])),
    ("valid_from T_DURING INTERVAL('2020-03-01', '..')", d.valid_from > pd.Timestamp("2020-03-01")),
    ("valid_from T_INTERSECTS INTERVAL('..', '2020-02-01T00:00:00Z')",
     d.valid_from <= pd.Timestamp("2020-02-01")),
]  # fmt: skip


@pytest.mark.parametrize(("text", "mask"), CASES, ids=[c[0][:60] for c in CASES])
def test_cql2_text_matches_pandas(store, text, mask):
    want = expect(mask)
    assert ids(store, parse(text)) == want
    assert store.count(Query("buildings", filter=parse(text))) == len(want)


JSON_CASES = [
    ({"op": "and", "args": [{"op": ">", "args": [{"property": "height"}, 30]},
                            {"op": "=", "args": [{"property": "use"}, "office"]}]},
     (d.height > 30) & (d.use == "office")),
    ({"op": "between", "args": [{"property": "floors"}, 5, 10]}, d.floors.between(5, 10)),
    ({"op": "in", "args": [{"property": "use"}, ["office", "school"]]},
     d.use.isin(["office", "school"])),
    ({"op": "not", "args": [{"op": "isNull", "args": [{"property": "name"}]}]}, d.name.notna()),
    ({"op": "like", "args": [{"op": "casei", "args": [{"property": "name"}]},
                             {"op": "casei", "args": ["tower%"]}]},
     nm.str.lower().str.startswith("tower")),
    ({"op": "=", "args": [{"op": "accenti", "args": [{"property": "name"}]},
                          {"op": "accenti", "args": ["Café Tower"]}]},
     pd.Series(strip(d.name)) == "Cafe Tower"),
    ({"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [200, 300, 450, 520]}]},
     g.intersects(shapely.box(200, 300, 450, 520))),
    ({"op": "s_within", "args": [{"property": "geometry"}, shapely.geometry.mapping(POLY)]},
     g.within(POLY)),
    ({"op": "t_after", "args": [{"property": "valid_from"}, {"timestamp": "2020-11-01T00:00:00Z"}]},
     d.valid_from > pd.Timestamp("2020-11-01")),
    ({"op": "t_during", "args": [{"property": "valid_from"},
                                 {"interval": ["2020-03-01T00:00:00Z", ".."]}]},
     d.valid_from > pd.Timestamp("2020-03-01")),
    ({"op": ">", "args": [{"op": "*", "args": [{"property": "height"}, 2]},
                          {"property": "floors"}]},
     d.height * 2 > d.floors),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "mask"), JSON_CASES, ids=[str(c[0])[:60] for c in JSON_CASES])
def test_cql2_json_matches_pandas(store, doc, mask):
    assert ids(store, parse(doc, "cql2-json")) == expect(mask)


def test_every_case_selects_some_but_not_all():
    """The cases are informative: most select a proper, non-empty subset."""
    proper = [t for t, m in CASES if 0 < m.fillna(False).astype(bool).sum() < N]
    assert len(proper) >= len(CASES) - 3  # INCLUDE, EXCLUDE, valid_to


def test_distance_within_and_beyond(store):
    near = parse_ecql("DWITHIN(geometry, POINT(500 500), 150, meters)")
    assert ids(store, near) == expect(g.distance(P) <= 150)
    far = ast.DistanceBeyond(ast.Attribute("geometry"), P, 150.0, "m")
    assert ids(store, far) == expect(g.distance(P) > 150)
    with pytest.raises(InvalidInput, match="metres"):
        ids(store, ast.DistanceWithin(ast.Attribute("geometry"), P, 1.0, "feet"))


def test_excluding_keeps_rows_where_the_rule_is_null(store):
    rule = parse("use IN ('office', 'school')")
    assert ids(store, excluding(rule)) == expect(~d.use.isin(["office", "school"]))
    assert ids(store, ast.Not(rule)) == expect(d.use.notna() & ~d.use.isin(["office", "school"]))


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("S_INTERSECTS(geometry, BBOX(0, 10, 20, 30))", (0, 10, 20, 30)),
        ("S_WITHIN(POLYGON((0 0, 4 0, 4 4, 0 4, 0 0)), geometry)", (0, 0, 4, 4)),
        ("ecql:BBOX(geometry, 0, 10, 20, 30) AND height > 3", (0, 10, 20, 30)),
        ("ecql:DWITHIN(geometry, POINT(5 5), 2, meters)", (3, 3, 7, 7)),
        ("S_INTERSECTS(geometry, BBOX(0, 0, 10, 10)) AND S_WITHIN(geometry, BBOX(5, 5, 20, 20))",
         (5, 5, 10, 10)),
        ("S_INTERSECTS(geometry, BBOX(0, 0, 1, 1)) OR S_TOUCHES(geometry, BBOX(5, 5, 6, 6))",
         (0, 0, 6, 6)),
        ("S_INTERSECTS(geometry, BBOX(0, 0, 1, 1)) OR height > 3", None),  # or anywhere
        ("NOT S_INTERSECTS(geometry, BBOX(0, 0, 1, 1))", None),
        ("S_DISJOINT(geometry, BBOX(0, 0, 1, 1))", None),
        ("S_INTERSECTS(other, BBOX(0, 0, 1, 1))", None),  # not the features' geometry
        ("height > 3", None),
    ],
)  # fmt: skip
def test_envelope_bounds_where_matching_features_lie(text, box):
    # ``envelope`` sizes the estimate of how many features a query matches: a box every match's
    # bounding box meets, or None where the filter does not bound them.
    node = parse_ecql(text[5:]) if text.startswith("ecql:") else parse(text)
    assert envelope(node, "geometry") == box


def test_pruning_uses_bbox_columns_and_keeps_parameters_in_order():
    sql, params = to_sql(
        parse(f"height > 3 AND S_WITHIN(geometry, {POLY.wkt}) AND name = 'x'"),
        {"height": "h", "geometry": "G", "name": "n"},
        "G",
        bbox_columns=("x0", "y0", "x1", "y1"),
    )
    assert "x0 >= ?" in sql and "ST_Within(G, ST_GeomFromWKB(?))" in sql
    assert params[0] == 3 and params[-1] == "x"
    assert params[1:5] == list(POLY.bounds[i] for i in (0, 2, 1, 3))
    assert shapely.from_wkb(params[5]).equals(POLY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope > 3", "unknown property 'nope'"),
        ("name > 3", "different types"),
        ("height LIKE 'a%'", "LIKE compares strings"),
        ("use IN ('a', 3)", "different types"),
        ("height = POINT(1 2)", "S_EQUALS"),
        ("valid_from T_BEFORE 3", "not an instant"),
        ("height T_AFTER TIMESTAMP('2020-01-01T00:00:00Z')", "take times"),
        ("valid_from T_MEETS INTERVAL('2020-01-01T00:00:00Z', '2021-01-01T00:00:00Z')",
         "interval properties"),
        ("foo(name) = 'a'", "unknown function"),
        ("S_INTERSECTS(height, POINT(1 2))", "compare geometries"),
        ("name = 'a' AND", "can't read"),
        ("S_INTERSECTS(geometry, SRID=4326;POINT(1 2))", "filter-crs"),
        ("S_INTERSECTS(geometry, BBOX(5, 5, 1, 1))", "min <= max"),
        ("height > 3 OR " * 300 + "height > 3", "nested too deeply"),
        ("NOT " * 400 + "height > 3", "can't read|nested too deeply"),
        ("x" * 200_001, "longer than"),
    ],
)  # fmt: skip
def test_bad_filters_are_invalid_input(text, message):
    from citytwin.store.duckdb import _filter_columns

    columns, geometry, kinds = _filter_columns("buildings")
    with pytest.raises(InvalidInput, match=message):
        to_sql(parse(text), columns, geometry, types=kinds)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "can't read"),
        ('{"op": "=", "args": [{"property": "height"}, null]}', "can't read"),
        ('{"op": "frobnicate", "args": []}', "can't read"),
        ('{"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [1, 2]}]}', "bbox"),
        ('"just a string"', "not a condition"),
        ("[" * 5000 + "]" * 5000, "nested too deeply|can't read"),
    ],
)
def test_bad_json_filters_are_invalid_input(doc, message):
    with pytest.raises(InvalidInput, match=message):
        parse(doc, "cql2-json")


def test_unknown_lang_and_unknown_property_on_the_query(store):
    with pytest.raises(InvalidInput, match="filter-lang"):
        parse("height > 1", "ecql")
    with pytest.raises(InvalidInput, match=r"queryables: .*height"):
        Query("buildings", filter=parse("colour = 'red'"))
    assert properties(parse("height > floors AND S_INTERSECTS(geometry, POINT(1 2))")) == {
        "height", "floors", "geometry"}  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        {"op": "=", "args": [{"property": "name"}, "Robert'); DROP TABLE buildings;--"]},
        {"op": "=", "args": [{"property": "name"}, "x' OR '1'='1"]},
        {"op": "like", "args": [{"property": "name"}, "%' OR 1=1 --"]},
        {"op": "in", "args": [{"property": "name"}, ["x') OR ('1'='1", "a_b"]]},
    ],
)
def test_injection_attempts_stay_data(store, doc):
    node = parse(doc, "cql2-json")
    sql, _ = to_sql(node, {"name": '"name"'})
    assert "DROP" not in sql and "OR '1'" not in sql and "1=1" not in sql
    values = doc["args"][1] if isinstance(doc["args"][1], list) else [doc["args"][1]]
    expected = set(TRUTH.loc[TRUTH.name.isin(values), "id"])
    assert ids(store, node) == expected
    assert store.count(Query("buildings")) == N  # the table is still there, whole


@pytest.mark.parametrize(
    "doc",
    [
        {"op": "=", "args": [{"property": "name; DROP TABLE buildings"}, 1]},
        {"op": "=", "args": [{"property": 'name" OR 1=1 --'}, "a"]},
        {"op": "=", "args": [{"function": {"name": "pg_sleep", "arguments": [1]}}, 1]},
    ],
)
def test_injected_names_are_refused(store, doc):
    with pytest.raises(InvalidInput, match=r"unknown|queryables"):
        ids(store, parse(doc, "cql2-json"))
    assert store.count(Query("buildings")) == N


def test_reads_run_on_cursors_beside_a_writer_and_a_transaction_sees_its_own_writes(store):
    """The store's read path (used by filtered reads): readers on their own cursors see
    committed data and don't wait for a writer's lock; the writer's own reads see its writes."""
    import threading

    fid = "b5"
    before = float(TRUTH.set_index("id").height["b5"])
    q = Query("buildings", ids=[fid], filter=parse("height > 0 OR height IS NULL"))
    inside, outside, done = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def writer() -> None:
        frame = store.query(Query("buildings", ids=[fid]))
        frame["height"] = 999.0
        with store.transaction():
            store.update("buildings", frame, at=dt.datetime(2030, 1, 1))
            seen["writer"] = float(store.query(q)["height"].iloc[0])
            inside.set()
            outside.wait(30)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(30)
    seen["reader during"] = float(store.query(q)["height"].iloc[0])  # the lock is held now
    outside.set()
    assert done.wait(30)
    t.join()
    seen["reader after"] = float(store.query(q)["height"].iloc[0])
    assert seen == {"writer": 999.0, "reader during": before, "reader after": 999.0}

    errors: list[BaseException] = []
    want = expect(d.height > 30) - {fid}

    def reader() -> None:
        try:
            for _ in range(20):
                assert ids(store, parse("height > 30")) - {fid} == want
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors

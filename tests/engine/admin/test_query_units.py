"""Small pieces of the admin API's SQL introspection and state editing, without an engine: Restate's state version,
which tables a query names, the Accept header rule, read-only enforcement and the limits, on a real RocksDB store."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.admin.query import ExtensionRows, QueryError, QueryLimits, accepts_json, referenced, run_query
from engine.partition.state_edit import state_version
from engine.storage import keys
from engine.storage.store import Store

LIMITS = QueryLimits(snapshot_rows=1000, snapshot_bytes=1 << 20, result_rows=100, timeout_s=0.3)


def test_state_version_matches_restate() -> None:
    # The vectors of restate's StateMutationVersion tests (crates/types/src/state_mut.rs).
    assert state_version([(b"name", b"bob")]) == "tDqA04Lj3_qJ-PgNPTecXDGZgpwy6jm2Ni2BYqJIthM"
    assert state_version([(b"b", b"bbb"), (b"a", b"aaa")]) == "RVM17P6x18Wp-JnzQ01BzmqCvhAunTOQI_az6Px3Zyk"
    assert state_version([]) == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_referenced_tables_are_whole_words() -> None:
    names = ["state", "sys_invocation", "sys_journal"]
    assert referenced("SELECT * FROM STATE s JOIN sys_invocation i ON 1", names) == ["state", "sys_invocation"]
    assert referenced("SELECT statement FROM sys_journal_x", names) == []
    assert referenced('select "sys_journal".id from "sys_journal"', names) == ["sys_journal"]


@pytest.mark.parametrize(
    ("accept", "ok"),
    [
        ("", True),
        ("application/json", True),
        ("*/*", True),
        ("application/vnd.apache.arrow.stream, application/json;q=0.5", True),
        ("application/vnd.apache.arrow.stream", False),
        ("text/csv", False),
    ],
)
def test_accept_header(accept: str, ok: bool) -> None:
    assert accepts_json(accept) is ok


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db")
    txn = s.txn()
    for i in range(5):
        txn.put(keys.state("Counter", f"k{i}", b"count"), str(i).encode())
    s.commit(txn)
    return s


def test_state_table_and_extension_table(store: Store) -> None:
    ext = ExtensionRows(name="sys_kafka_lag", columns=(("topic", "TEXT"), ("lag", "INTEGER")), rows=[("t", 3)])
    result = run_query(store, "SELECT service_key, value_utf8 FROM state ORDER BY service_key", [ext], LIMITS)
    assert result.columns == ["service_key", "value_utf8"]
    assert result.rows == [(f"k{i}", str(i)) for i in range(5)]
    assert run_query(store, "SELECT sum(lag) FROM sys_kafka_lag", [ext], LIMITS).rows == [(3,)]


@pytest.mark.parametrize(
    ("sql", "status", "message"),
    [
        ("SELEKT 1", 400, "syntax error"),
        ("SELECT * FROM nope", 400, "no such table: nope"),
        ("DELETE FROM state", 400, "read-only"),
        ("INSERT INTO state (key) VALUES ('x')", 400, "read-only"),
        ("PRAGMA query_only = OFF", 400, "read-only"),
        ("ATTACH DATABASE '/tmp/x.db' AS x", 400, "read-only"),
        ("SELECT 1; DELETE FROM state", 400, "one statement"),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", 400, "longer"),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 101) SELECT x FROM c", 413, "LIMIT"),
    ],
)
def test_refused_queries(store: Store, sql: str, status: int, message: str) -> None:
    with pytest.raises(QueryError) as err:
        run_query(store, sql, [], LIMITS)
    assert err.value.status == status
    assert message in err.value.message


def test_snapshot_limits(store: Store) -> None:
    small = QueryLimits(snapshot_rows=3, snapshot_bytes=1 << 20, result_rows=100, timeout_s=1)
    with pytest.raises(QueryError) as err:
        run_query(store, "SELECT count(*) FROM state", [], small)
    assert err.value.status == 413 and "3 rows" in err.value.message
    # A table the query does not name is not copied.
    assert run_query(store, "SELECT count(*) FROM sys_inbox", [], small).rows == [(0,)]

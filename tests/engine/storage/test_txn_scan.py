"""Txn.scan merges the transaction's writes into a RocksDB range lazily; checked against a dict model."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.storage.store import Store, Txn

_keys = st.binary(min_size=1, max_size=3)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    s = Store(Path(tmp_path_factory.mktemp("txn-scan")) / "db")
    yield s  # type: ignore[misc]
    s.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stored=st.dictionaries(_keys, st.binary(max_size=4), max_size=12),
    ops=st.lists(st.tuples(_keys, st.none() | st.binary(max_size=4)), max_size=12),
    prefix=st.binary(max_size=2),
    upper=st.none() | st.binary(max_size=3),
)
def test_scan_matches_a_model(
    store: Store, stored: dict[bytes, bytes], ops: list[tuple[bytes, bytes | None]], prefix: bytes, upper: bytes | None
) -> None:
    base = store.txn()
    for key, _ in store.scan(b""):
        base.delete(key)
    for key, value in stored.items():
        base.put(key, value)
    store.commit(base)

    txn = Txn(store)
    model = dict(stored)
    for key, value in ops:
        if value is None:
            txn.delete(key)
            model.pop(key, None)
        else:
            txn.put(key, value)
            model[key] = value

    def in_range(k: bytes) -> bool:
        return k.startswith(prefix) if upper is None else prefix <= k < upper

    expected = sorted((k, v) for k, v in model.items() if in_range(k))
    assert list(txn.scan(prefix, upper=upper)) == expected
    # lazy: taking the first row only gives the same first row
    assert list(itertools.islice(txn.scan(prefix, upper=upper), 1)) == expected[:1]


def test_inbox_seq_rows_old_and_new() -> None:
    from engine.storage import keys

    assert keys.parse_inbox_seq(None) == (0, 0)
    assert keys.parse_inbox_seq(keys.u64(7)) == (7, 0)  # written before the head existed
    assert keys.parse_inbox_seq(keys.pack_inbox_seq(9, 4)) == (9, 4)

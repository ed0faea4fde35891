"""Proposing for durability only (Kafka commits offsets then), and the bound on records durable but not applied."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.errors import OverloadedError
from engine.partition.effects import Effect
from engine.partition.partition import Partition
from engine.partition.types import Cleanup
from engine.storage.store import Store
from tests.conftest import make_config


async def test_durable_futures_resolve_before_the_apply_and_the_unapplied_backlog_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config(
        tmp_path / "data",
        num_partitions=1,
        log={"queue_limit": 8},
        storage={"inline_apply_max_records": 0},  # every apply on the partition's thread
    )
    store = Store(tmp_path / "data" / "rocksdb")
    partition = await Partition.open(0, tmp_path / "data", store, config, lambda _p, _e: None)
    gate = threading.Event()
    real_apply = partition.processor.apply_batch

    def held_apply(*args: Any, **kwargs: Any) -> list[Effect]:
        gate.wait(timeout=30)
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(partition.processor, "apply_batch", held_apply)
    runner = asyncio.create_task(partition.run())
    try:
        durable = [partition.propose_durable_nowait(Cleanup(now_ms=i)) for i in range(4)]
        assert await asyncio.gather(*durable) == [1, 2, 3, 4]  # durable although nothing was applied
        assert partition.processor.applied_lsn == 0
        durable[0].cancel()  # the caller's own future: the record stays proposed
        # The first four are in the (held) apply; 8 more wait behind it: the partition refuses a ninth until the
        # apply loop catches up.
        more = [partition.propose_nowait(Cleanup(now_ms=i)) for i in range(8)]
        with pytest.raises(OverloadedError, match="wait to be applied"):
            partition.propose_durable_nowait(Cleanup(now_ms=99))
        gate.set()
        assert await asyncio.gather(*more) == list(range(5, 13))
        assert partition.processor.applied_lsn == 12
        assert await partition.propose_durable_nowait(Cleanup(now_ms=100)) == 13
    finally:
        gate.set()
        await partition.aclose()
        await runner
        await partition.close_log()
        store.close()


async def test_an_encoded_invoke_is_stored_as_given_and_applied_like_the_record(tmp_path: Path) -> None:
    """The Kafka worker sends invokes encoded: the log keeps the bytes (a restart replays them as any record), the
    apply decodes them and the tables end up as for the record itself; bytes that are not an invoke are refused."""
    from engine import codec
    from engine.ids import partition_key_for_key, random_invocation_id
    from engine.partition.types import Dedup, Invoke, RetentionPolicy, ServiceType, Status, Target
    from engine.storage import keys

    def invoke(key: str, seq: int) -> Invoke:
        return Invoke(
            invocation_id=random_invocation_id(partition_key_for_key(key)).to_bytes(),
            target=Target(service="Obj", handler="h", key=key, service_ty=ServiceType.VIRTUAL_OBJECT),
            argument=b"arg",
            headers=(("kafka.offset", str(seq)),),
            retention=RetentionPolicy(completion_ms=0, journal_ms=1000),
            dedup=Dedup(producer="kafka/p", seq=seq),
            now_ms=1_700_000_000_000,
        )

    config = make_config(tmp_path / "data", num_partitions=1, storage={"inline_apply_max_records": 0})
    as_record, as_bytes, again = invoke("a", 1), invoke("b", 2), invoke("b", 2)
    store = Store(tmp_path / "data" / "rocksdb")
    partition = await Partition.open(0, tmp_path / "data", store, config, lambda _p, _e: None)
    runner = asyncio.create_task(partition.run())
    try:
        with pytest.raises(ValueError, match="Invoke"):
            partition.propose_durable_nowait(codec.encode(Cleanup(now_ms=1)))
        await partition.propose_durable_nowait(as_record)
        await partition.propose_durable_nowait(codec.encode(as_bytes))
        await partition.propose_durable_nowait(codec.encode(again))  # the same offset again: dedup drops it
        await partition.propose_nowait(Cleanup(now_ms=2))  # applied: so are the ones before it
        assert [codec.decode(p) for _, p in partition._log.read(1)][:3] == [as_record, as_bytes, again]
        rows = {inv.invocation_id: store.get(keys.status(inv.invocation_id)) for inv in (as_record, as_bytes, again)}
        entry = codec.decode(store.get(keys.journal(as_bytes.invocation_id, 0)))
    finally:
        await partition.aclose()
        await runner
        await partition.close_log()
        store.close()
    first, second, dropped = (codec.decode(rows[i.invocation_id]) if rows[i.invocation_id] else None
                              for i in (as_record, as_bytes, again))  # fmt: skip
    assert first is not None and second is not None and dropped is None
    assert first.status == second.status == Status.INVOKED
    assert second.target == as_bytes.target and second.created_at_ms == as_bytes.now_ms
    assert entry.body  # the input command, built by the apply from the decoded record

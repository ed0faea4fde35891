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

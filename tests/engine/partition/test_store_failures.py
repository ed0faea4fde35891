"""A record that could not be stored (disk full) leaves no hole in an attempt: the partition refuses the attempt's
later records, except the AttemptFailed that ends it, and other attempts and other records are not affected."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from engine.errors import EngineInternalError, LogError
from engine.partition.effects import Effect
from engine.partition.partition import Partition
from engine.partition.types import AppendEntries, AttemptFailed, Cleanup, End, Suspend
from engine.storage.store import Store
from tests.conftest import make_config


async def test_an_attempt_stops_at_its_first_record_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(tmp_path / "data", num_partitions=1)
    store = Store(tmp_path / "data" / "rocksdb")
    effects: list[Effect] = []
    partition = await Partition.open(0, tmp_path / "data", store, config, lambda _p, e: effects.extend(e))
    runner = asyncio.create_task(partition.run())
    inv, other = b"\x01" * 24, b"\x02" * 24
    try:
        real_pwrite = os.pwrite
        full = True

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)
        lost = partition.propose_nowait(AppendEntries(invocation_id=inv, epoch=3, entries=()))
        with pytest.raises(LogError, match="No space left"):
            await lost
        full = False
        # Space is back, but nothing of attempt (inv, 3) may follow the record that was not stored ...
        for record in (
            AppendEntries(invocation_id=inv, epoch=3, entries=()),
            Suspend(invocation_id=inv, epoch=3, waiting_completions=(1,)),
            End(invocation_id=inv, epoch=3),
        ):
            with pytest.raises(LogError, match="an earlier record of this attempt was not stored"):
                partition.propose_nowait(record)
        # ... except the AttemptFailed that ends it; other attempts and other records go through.
        assert await partition.propose_nowait(AttemptFailed(invocation_id=inv, epoch=3, code=503, message="x")) == 1
        assert await partition.propose_nowait(End(invocation_id=inv, epoch=4)) == 2
        assert await partition.propose_nowait(End(invocation_id=other, epoch=3)) == 3
        assert await partition.propose_nowait(Cleanup(now_ms=0)) == 4
        assert partition._attempt_tails == {}  # nothing in flight is remembered
    finally:
        await partition.aclose()
        await runner
        await partition.close_log()
        store.close()


async def test_a_log_that_must_be_reopened_stops_the_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write that cannot be undone leaves the log refusing appends until it is reopened: that does not pass
    by itself (unlike a full disk), so the partition stops with an internal error and the engine exits; a restart
    recovers from the log."""
    config = make_config(tmp_path / "data", num_partitions=1)
    store = Store(tmp_path / "data" / "rocksdb")
    partition = await Partition.open(0, tmp_path / "data", store, config, lambda _p, _e: None)
    runner = asyncio.create_task(partition.run())
    try:
        assert await partition.propose_nowait(Cleanup(now_ms=0)) == 1

        def broken(*args: Any) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        monkeypatch.setattr(os, "ftruncate", broken)
        with pytest.raises(LogError):
            await partition.propose_nowait(Cleanup(now_ms=0))
        with pytest.raises(EngineInternalError, match="its log failed and must be reopened"):
            await asyncio.wait_for(runner, 10)
    finally:
        monkeypatch.undo()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await partition.aclose()
        await partition.close_log()
        store.close()

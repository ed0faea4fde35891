"""SerialWorker: calls run in order on one thread; results and exceptions come back; close finishes the queue."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.worker import SerialWorker


async def test_calls_run_in_order_on_one_thread() -> None:
    worker = SerialWorker("test-worker")
    seen: list[tuple[int, str]] = []

    def job(i: int) -> int:
        time.sleep(0.001 * (5 - i % 5))  # later calls are shorter: order must still hold
        seen.append((i, threading.current_thread().name))
        return i * 2

    try:
        results = await asyncio.gather(*(worker.run(job, i) for i in range(20)))
    finally:
        await asyncio.to_thread(worker.close)
    assert results == [i * 2 for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"test-worker"}


async def test_exceptions_reach_the_caller_and_the_worker_goes_on() -> None:
    worker = SerialWorker("test-worker")

    def boom() -> None:
        raise OSError("disk on fire")

    try:
        with pytest.raises(OSError, match="disk on fire"):
            await worker.run(boom)
        assert await worker.run(lambda: 7) == 7
    finally:
        await asyncio.to_thread(worker.close)
    with pytest.raises(RuntimeError, match="closed"):
        worker.run(lambda: 1)


async def test_close_finishes_queued_calls_and_a_cancelled_caller_is_skipped() -> None:
    worker = SerialWorker("test-worker")
    done: list[int] = []
    gate = threading.Event()
    first = worker.run(gate.wait, 5)
    later = [worker.run(done.append, i) for i in range(3)]
    later[0].cancel()  # its call still runs; only the result is dropped
    gate.set()
    await first
    await asyncio.to_thread(worker.close)
    assert done == [0, 1, 2]
    assert await asyncio.gather(*later[1:]) == [None, None]

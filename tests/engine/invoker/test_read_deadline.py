"""The attempt loop's read deadline: asyncio.timeout() semantics with one lazily re-armed timer per attempt."""

from __future__ import annotations

import asyncio

import pytest

from engine.invoker.invoker import _ReadDeadline


class _Stream:
    """read_chunk() from a queue, like the ASGI transport (cancelling a read loses nothing)."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def read_chunk(self) -> bytes | None:
        return await self.q.get()


async def test_reads_return_chunks_and_a_silent_stream_times_out() -> None:
    stream = _Stream()
    reads = _ReadDeadline()
    stream.q.put_nowait(b"a")
    assert await reads.read(stream, 0.05) == b"a"  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await reads.read(stream, 0.05)  # type: ignore[arg-type]
    assert 0.04 <= loop.time() - started < 1.0
    stream.q.put_nowait(b"b")  # nothing was lost to the timeout: the next read gets what comes next
    assert await reads.read(stream, 0.05) == b"b"  # type: ignore[arg-type]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    reads.close()


async def test_each_read_gets_its_own_deadline_from_one_timer() -> None:
    """Chunks every 30 ms with a 100 ms deadline never time out, though the first timer was armed for 100 ms."""
    stream = _Stream()
    reads = _ReadDeadline()

    async def feed() -> None:
        for i in range(8):
            await asyncio.sleep(0.03)
            stream.q.put_nowait(bytes([i]))

    feeder = asyncio.create_task(feed())
    got = [await reads.read(stream, 0.1) for _ in range(8)]  # type: ignore[arg-type]
    assert got == [bytes([i]) for i in range(8)]
    await feeder
    with pytest.raises(TimeoutError):  # and the re-armed timer still fires for a read that waits too long
        await reads.read(stream, 0.1)  # type: ignore[arg-type]
    reads.close()


async def test_a_longer_deadline_after_a_short_one_is_honoured() -> None:
    stream = _Stream()
    reads = _ReadDeadline()
    stream.q.put_nowait(b"x")
    assert await reads.read(stream, 0.02) == b"x"  # type: ignore[arg-type]  # armed for 20 ms from now
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, stream.q.put_nowait, b"y")
    assert await reads.read(stream, 0.5) == b"y"  # type: ignore[arg-type]  # the early timer re-arms, no timeout
    reads.close()


async def test_interrupt_ends_the_waiting_read_and_every_later_one() -> None:
    stream = _Stream()
    reads = _ReadDeadline()
    asyncio.get_running_loop().call_later(0.02, reads.interrupt)
    with pytest.raises(TimeoutError):
        await reads.read(stream, 30)  # type: ignore[arg-type]
    stream.q.put_nowait(b"late")
    with pytest.raises(TimeoutError):
        await reads.read(stream, 30)  # type: ignore[arg-type]
    reads.close()


async def test_a_real_cancellation_is_not_turned_into_a_timeout() -> None:
    stream = _Stream()

    async def reader() -> None:
        reads = _ReadDeadline()
        try:
            await reads.read(stream, 30)  # type: ignore[arg-type]
        finally:
            reads.close()

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_as_it_times_out_stays_cancelled() -> None:
    """An outside cancel and the deadline's own in the same loop step: the cancel wins, as with asyncio.timeout()."""
    stream = _Stream()
    outcome: list[str] = []
    made: list[_ReadDeadline] = []

    async def reader() -> None:
        reads = _ReadDeadline()
        made.append(reads)
        try:
            await reads.read(stream, 30)  # type: ignore[arg-type]
        except TimeoutError:
            outcome.append("timeout")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    task.cancel()
    made[0].interrupt()  # what the timer does when a read is past its due time
    await asyncio.wait({task})
    assert outcome == ["cancelled"]
    assert task.cancelled()


async def test_a_read_that_swallows_the_deadline_leaves_no_cancel_request_behind() -> None:
    class Stubborn:
        async def read_chunk(self) -> bytes | None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return b"anyway"
            return None

    reads = _ReadDeadline()
    assert await reads.read(Stubborn(), 0.02) == b"anyway"  # type: ignore[arg-type]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # and the task goes on without a CancelledError
    reads.close()

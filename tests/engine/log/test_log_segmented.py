"""SegmentedLog: appends, group commit, segments, recovery, truncation, failures."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import engine.log
from engine.config import FsyncPolicy, LogSection
from engine.errors import CorruptRecordError, LogClosedError, LogError, OverloadedError
from engine.log import Log, LogStatistics, RecordTooLargeError, SegmentedLog
from engine.log.record import FRAME_OVERHEAD

SMALL_SEGMENTS = {"segment_size_bytes": 4096, "max_batch_bytes": 1024, "max_batch_records": 8}


def make_config(**overrides: Any) -> LogSection:
    return LogSection(**{"record_size_limit_bytes": 64 * 1024, **overrides})


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def read_all(log: SegmentedLog, from_lsn: int = 1) -> list[tuple[int, bytes]]:
    return list(log.read(from_lsn))


def payload(i: int, size: int = 100) -> bytes:
    return (f"record-{i}-".encode() * size)[:size]


@pytest.fixture(autouse=True)
async def strict_loop(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Debug mode (catches loop calls from worker threads) and a failure for any callback blocking the loop."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.5  # generous: debug mode itself makes creating many tasks slow
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    slow = [r.getMessage() for r in records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, slow


@pytest.fixture
async def open_log(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Opens logs in tmp_path/log and closes whatever is still open at the end."""
    opened: list[SegmentedLog] = []

    async def _open(**overrides: Any) -> SegmentedLog:
        log = await SegmentedLog.open(tmp_path / "log", make_config(**overrides))
        opened.append(log)
        return log

    yield _open
    for log in opened:
        await log.aclose()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x40]))


# --- public surface -------------------------------------------------------------------------------------


def test_exported_members() -> None:
    assert sorted(engine.log.__all__) == ["Log", "LogStatistics", "RecordTooLargeError", "SegmentedLog"]


def as_log(log: SegmentedLog) -> Log:
    return log  # mypy checks that SegmentedLog satisfies the Log protocol


async def test_segmented_log_is_a_log(open_log: Callable[..., Any]) -> None:
    log = as_log(await open_log())
    assert isinstance(log.statistics(), LogStatistics)


def test_constructor_is_private(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        SegmentedLog(tmp_path, make_config(), None, _token=object())  # type: ignore[arg-type]


# --- appending and reading ------------------------------------------------------------------------------


async def test_empty_log(open_log: Callable[..., Any], tmp_path: Path) -> None:
    log = await open_log()
    assert (log.first_lsn, log.last_lsn) == (1, 0)
    assert read_all(log) == []
    assert [p.name for p in segments(tmp_path / "log")] == ["00000000000000000001.seg"]


async def test_append_and_read_round_trip(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    records = [payload(i, size=i * 7) for i in range(20)]
    lsns = [await log.append(p) for p in records]
    assert lsns == list(range(1, 21))
    assert log.last_lsn == 20
    assert read_all(log) == list(zip(lsns, records, strict=True))
    assert read_all(log, 15) == list(zip(lsns, records, strict=True))[14:]
    assert read_all(log, 21) == []
    assert read_all(log, -5) == read_all(log, 1)


async def test_lsns_are_dense_and_follow_enqueue_order(open_log: Callable[..., Any]) -> None:
    log = await open_log(max_batch_records=5)
    futures = [log.append_nowait(payload(i)) for i in range(12)]
    batch_lsn = await log.append_batch([b"a", b"b", b"c"])
    more = await asyncio.gather(*(log.append(payload(100 + i)) for i in range(10)))
    assert [f.result() for f in futures] == list(range(1, 13))
    assert batch_lsn == 15
    assert more == list(range(16, 26))
    assert [lsn for lsn, _ in read_all(log)] == list(range(1, 26))
    assert [p for lsn, p in read_all(log) if 13 <= lsn <= 15] == [b"a", b"b", b"c"]


async def test_group_commit_batches_concurrent_appends(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    lsns = await asyncio.gather(*(log.append(payload(i)) for i in range(500)))
    assert sorted(lsns) == list(range(1, 501))
    stats = log.statistics()
    assert stats.records == 500
    assert stats.batches < 500
    assert stats.fsyncs == stats.batches
    assert stats.fsyncs < stats.records
    assert stats.bytes_written == 500 * (FRAME_OVERHEAD + 100)
    assert stats.queued == 0


async def test_batches_respect_limits(open_log: Callable[..., Any]) -> None:
    log = await open_log(max_batch_records=10)
    await asyncio.gather(*(log.append(payload(i)) for i in range(100)))
    assert log.statistics().batches >= 10


async def test_append_batch_is_one_write_even_past_the_batch_limits(open_log: Callable[..., Any]) -> None:
    log = await open_log(max_batch_records=2, max_batch_bytes=1024)
    last = await log.append_batch([payload(i, 300) for i in range(10)])
    assert last == 10
    assert log.statistics().batches == 1


async def test_empty_batch_is_rejected(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    with pytest.raises(ValueError):
        await log.append_batch([])


async def test_fsync_policy_none_skips_syncs(open_log: Callable[..., Any]) -> None:
    log = await open_log(fsync=FsyncPolicy.NONE)
    await asyncio.gather(*(log.append(payload(i)) for i in range(50)))
    assert log.statistics().fsyncs == 0
    assert len(read_all(log)) == 50


async def test_bytearray_payloads_are_accepted(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    await log.append(bytearray(b"mutable"))
    assert read_all(log) == [(1, b"mutable")]


async def test_oversized_record_is_rejected(open_log: Callable[..., Any]) -> None:
    log = await open_log(record_size_limit_bytes=1024)
    with pytest.raises(RecordTooLargeError) as caught:
        await log.append(b"x" * 1025)
    assert isinstance(caught.value, LogError) and isinstance(caught.value, ValueError)
    assert (caught.value.size, caught.value.limit) == (1025, 1024)
    with pytest.raises(RecordTooLargeError):
        log.append_nowait(b"x" * 1025)
    with pytest.raises(RecordTooLargeError):
        await log.append_batch([b"ok", b"x" * 1025])
    assert await log.append(b"x" * 1024) == 1
    assert log.last_lsn == 1


async def test_read_during_appends_sees_only_acknowledged_prefixes(open_log: Callable[..., Any]) -> None:
    log = await open_log(**SMALL_SEGMENTS)
    done = asyncio.Event()

    async def writer() -> None:
        for i in range(0, 600, 6):
            await asyncio.gather(*(log.append(payload(i + j)) for j in range(6)))
        done.set()

    task = asyncio.create_task(writer())
    snapshots = 0
    while not done.is_set():
        acknowledged = log.last_lsn
        records = await asyncio.to_thread(read_all, log)
        assert len(records) >= acknowledged
        assert records == [(lsn, payload(lsn - 1)) for lsn in range(1, len(records) + 1)]
        snapshots += 1
    await task
    assert snapshots > 0
    assert len(read_all(log)) == 600


# --- queue limits, cancellation and closing ------------------------------------------------------------


async def test_append_nowait_raises_when_the_queue_is_full(open_log: Callable[..., Any]) -> None:
    log = await open_log(queue_limit=3)
    futures = [log.append_nowait(payload(i)) for i in range(3)]
    assert log.statistics().queued == 3
    with pytest.raises(OverloadedError):
        log.append_nowait(b"one too many")
    assert await asyncio.gather(*futures) == [1, 2, 3]
    assert log.statistics().queued == 0
    assert await log.append_nowait(b"room again") == 4


async def test_append_waits_for_queue_space(open_log: Callable[..., Any]) -> None:
    log = await open_log(queue_limit=4, max_batch_records=2)
    lsns = await asyncio.gather(*(log.append(payload(i)) for i in range(40)))
    assert lsns == list(range(1, 41))
    assert read_all(log) == [(i + 1, payload(i)) for i in range(40)]


async def test_batch_larger_than_the_queue_gets_in_alone(open_log: Callable[..., Any]) -> None:
    log = await open_log(queue_limit=2)
    assert await log.append_batch([payload(i) for i in range(5)]) == 5


async def test_cancelled_append_is_left_out(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    first = log.append_nowait(b"first")
    cancelled = log.append_nowait(b"cancelled")
    third = log.append_nowait(b"third")
    cancelled.cancel()
    assert (await first, await third) == (1, 2)
    assert read_all(log) == [(1, b"first"), (2, b"third")]
    assert log.statistics().queued == 0


async def test_aclose_drains_queued_appends(open_log: Callable[..., Any], tmp_path: Path) -> None:
    log = await open_log()
    futures = [log.append_nowait(payload(i)) for i in range(50)]
    await log.aclose()
    assert [f.result() for f in futures] == list(range(1, 51))
    reopened = await open_log()
    assert reopened.last_lsn == 50


async def test_append_after_aclose_raises(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    await log.append(b"x")
    await log.aclose()
    await log.aclose()  # idempotent
    with pytest.raises(LogClosedError):
        await log.append(b"y")
    with pytest.raises(LogClosedError):
        await log.append_batch([b"y"])
    with pytest.raises(LogClosedError):
        log.append_nowait(b"y")
    with pytest.raises(LogClosedError):
        await log.truncate_prefix(1)
    assert read_all(log) == [(1, b"x")]  # the files are still readable


async def test_directory_is_locked_while_open(open_log: Callable[..., Any]) -> None:
    await open_log()
    with pytest.raises(LogError, match="already open"):
        await open_log()


# --- segments, reopening, truncation --------------------------------------------------------------------


async def test_reopen_continues_lsns(open_log: Callable[..., Any]) -> None:
    log = await open_log()
    await log.append_batch([b"a", b"b"])
    await log.aclose()
    log = await open_log()
    assert (log.first_lsn, log.last_lsn) == (1, 2)
    assert await log.append(b"c") == 3
    assert read_all(log) == [(1, b"a"), (2, b"b"), (3, b"c")]


async def test_segments_roll(open_log: Callable[..., Any], tmp_path: Path) -> None:
    log = await open_log(**SMALL_SEGMENTS)
    for i in range(0, 200, 4):
        await log.append_batch([payload(i + j) for j in range(4)])
    files = segments(tmp_path / "log")
    assert len(files) > 3
    assert log.statistics().segments == len(files)
    assert all(f.stat().st_size <= 4096 for f in files)
    assert files[0].name == "00000000000000000001.seg"
    expected = [(i + 1, payload(i)) for i in range(200)]
    assert read_all(log) == expected
    assert read_all(log, 123) == expected[122:]
    await log.aclose()
    log = await open_log(**SMALL_SEGMENTS)
    assert read_all(log) == expected
    assert await log.append(b"next") == 201


async def test_truncate_prefix_deletes_whole_segments_only(open_log: Callable[..., Any], tmp_path: Path) -> None:
    log = await open_log(**SMALL_SEGMENTS)
    for i in range(0, 200, 4):
        await log.append_batch([payload(i + j) for j in range(4)])
    names = [p.name for p in segments(tmp_path / "log")]
    firsts = [int(name.removesuffix(".seg")) for name in names]

    await log.truncate_prefix(firsts[2] - 2)  # the second segment still holds lsn firsts[2] - 1
    assert log.first_lsn == firsts[1]
    assert [p.name for p in segments(tmp_path / "log")] == names[1:]

    await log.truncate_prefix(firsts[3] - 1)
    assert log.first_lsn == firsts[3]
    assert read_all(log) == [(i + 1, payload(i)) for i in range(firsts[3] - 1, 200)]
    assert read_all(log, 1)[0][0] == firsts[3]

    await log.truncate_prefix(10_000)  # everything: the active segment stays
    assert log.statistics().segments == 1
    assert log.first_lsn == firsts[-1]
    assert log.last_lsn == 200
    await log.aclose()

    log = await open_log(**SMALL_SEGMENTS)
    assert (log.first_lsn, log.last_lsn) == (firsts[-1], 200)
    assert await log.append(b"after") == 201


async def test_numbering_survives_when_everything_before_is_deleted(
    open_log: Callable[..., Any], tmp_path: Path
) -> None:
    log = await open_log(**SMALL_SEGMENTS)
    await log.append_batch([payload(i, 1000) for i in range(3)])
    await log.append_batch([payload(i, 1000) for i in range(3)])  # rolls: the second segment starts at 4
    await log.truncate_prefix(6)
    await log.aclose()
    (segment,) = segments(tmp_path / "log")
    segment.write_bytes(b"")  # the last segment lost everything, but its name keeps the numbering
    log = await open_log(**SMALL_SEGMENTS)
    assert (log.first_lsn, log.last_lsn) == (4, 3)
    assert await log.append(b"x") == 4


async def test_read_of_a_segment_truncated_meanwhile_raises(open_log: Callable[..., Any]) -> None:
    log = await open_log(**SMALL_SEGMENTS)
    for i in range(0, 120, 4):
        await log.append_batch([payload(i + j) for j in range(4)])
    iterator = log.read(1)
    await log.truncate_prefix(100)
    with pytest.raises(LogError, match="truncated away"):
        list(iterator)


# --- recovery -------------------------------------------------------------------------------------------


async def fill(open_log: Callable[..., Any], count: int, **overrides: Any) -> None:
    log = await open_log(**overrides)
    for i in range(count):
        await log.append(payload(i))
    await log.aclose()


async def test_torn_tail_is_cut_and_appending_continues(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 5)
    (segment,) = segments(tmp_path / "log")
    os.truncate(segment, segment.stat().st_size - 30)  # mid-payload of record 5
    log = await open_log()
    assert log.last_lsn == 4
    assert segment.stat().st_size == 4 * (FRAME_OVERHEAD + 100)
    assert await log.append(b"new five") == 5
    assert read_all(log)[-2:] == [(4, payload(3)), (5, b"new five")]


async def test_torn_header_is_cut(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 3)
    (segment,) = segments(tmp_path / "log")
    with open(segment, "ab") as file:
        file.write(b"\x07\x00\x00")
    log = await open_log()
    assert log.last_lsn == 3


async def test_garbage_tail_is_cut(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 3)
    (segment,) = segments(tmp_path / "log")
    with open(segment, "ab") as file:
        file.write(os.urandom(500))
    log = await open_log()
    assert log.last_lsn == 3
    assert segment.stat().st_size == 3 * (FRAME_OVERHEAD + 100)


async def test_zeroed_tail_is_cut(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 3)
    (segment,) = segments(tmp_path / "log")
    with open(segment, "ab") as file:
        file.write(bytes(4096))  # what a crash can leave after a file-size update
    log = await open_log()
    assert log.last_lsn == 3


async def test_bit_flip_in_the_last_record_is_cut(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 5)
    (segment,) = segments(tmp_path / "log")
    flip_byte(segment, segment.stat().st_size - 50)
    log = await open_log()
    assert log.last_lsn == 4
    assert await log.append(b"x") == 5


async def test_bit_flip_before_the_tail_raises(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 5)
    (segment,) = segments(tmp_path / "log")
    frame = FRAME_OVERHEAD + 100
    for offset in (frame + 50, frame + 2):  # record 2's payload, then (after repair) its length field
        flip_byte(segment, offset)
        with pytest.raises(CorruptRecordError) as caught:
            await open_log()
        assert caught.value.segment == segment.name
        assert caught.value.offset == frame
        flip_byte(segment, offset)
    log = await open_log()  # the lock was released by the failed opens
    assert log.last_lsn == 5


async def test_bit_flip_in_a_middle_segment_raises(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 100, **SMALL_SEGMENTS)
    files = segments(tmp_path / "log")
    assert len(files) >= 3
    flip_byte(files[1], 2 * (FRAME_OVERHEAD + 100) + 60)
    with pytest.raises(CorruptRecordError) as caught:
        await open_log(**SMALL_SEGMENTS)
    assert caught.value.segment == files[1].name
    assert caught.value.offset == 2 * (FRAME_OVERHEAD + 100)


async def test_torn_tail_of_a_middle_segment_raises(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 100, **SMALL_SEGMENTS)
    files = segments(tmp_path / "log")
    os.truncate(files[1], files[1].stat().st_size - 10)
    with pytest.raises(CorruptRecordError):
        await open_log(**SMALL_SEGMENTS)


async def test_missing_middle_segment_raises(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 100, **SMALL_SEGMENTS)
    files = segments(tmp_path / "log")
    files[1].unlink()
    with pytest.raises(CorruptRecordError, match="starts at"):
        await open_log(**SMALL_SEGMENTS)


async def test_empty_trailing_segment_is_fine(open_log: Callable[..., Any], tmp_path: Path) -> None:
    await fill(open_log, 100, **SMALL_SEGMENTS)
    files = segments(tmp_path / "log")
    files[-1].write_bytes(b"")
    log = await open_log(**SMALL_SEGMENTS)
    first_of_last = int(files[-1].name.removesuffix(".seg"))
    assert log.last_lsn == first_of_last - 1
    assert await log.append(b"x") == first_of_last


async def test_corruption_found_while_reading_raises(open_log: Callable[..., Any], tmp_path: Path) -> None:
    log = await open_log()
    for i in range(5):
        await log.append(payload(i))
    (segment,) = segments(tmp_path / "log")
    flip_byte(segment, FRAME_OVERHEAD + 10)
    with pytest.raises(CorruptRecordError):
        read_all(log)


# --- write failures -------------------------------------------------------------------------------------


async def test_enospc_fails_the_batch_and_leaves_the_log_usable(
    open_log: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await open_log()
    await log.append_batch([payload(0), payload(1)])
    (segment,) = segments(tmp_path / "log")
    good_size = segment.stat().st_size
    real_pwrite = os.pwrite
    calls = 0

    def half_then_enospc(fd: int, data: Any, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half_then_enospc)
    futures = [log.append_nowait(payload(i)) for i in range(2, 6)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, LogError) for r in results)
    assert all(isinstance(r.__cause__, OSError) for r in results if isinstance(r, BaseException))
    assert segment.stat().st_size == good_size
    assert log.last_lsn == 2

    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert await log.append(b"space is back") == 3
    await log.aclose()
    log = await open_log()
    assert read_all(log) == [(1, payload(0)), (2, payload(1)), (3, b"space is back")]


async def test_a_failed_write_fails_the_records_queued_behind_it(
    open_log: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One record per batch: without the barrier the records behind the failed one would be written (the next pwrite
    # works) and the log would hold record 2's successors without record 2.
    log = await open_log(max_batch_records=1)
    await log.append(payload(0))
    real_pwrite = os.pwrite
    calls = 0

    def enospc_once(fd: int, data: Any, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", enospc_once)
    futures = [log.append_nowait(payload(i)) for i in range(1, 5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, LogError) and "No space left" in str(r) for r in results), results
    assert calls == 1 and log.last_lsn == 1
    # The writer carries on: the next append is stored, right after the last acknowledged record.
    assert await log.append(b"later") == 2
    assert read_all(log) == [(1, payload(0)), (2, b"later")]


async def test_failed_rollback_fails_the_log(open_log: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    log = await open_log()
    await log.append(b"durable")

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    monkeypatch.setattr(os, "ftruncate", broken)
    with pytest.raises(LogError):
        await log.append(b"lost")
    with pytest.raises(LogError, match="must be reopened"):
        await log.append(b"refused")
    await log.aclose()
    monkeypatch.undo()
    log = await open_log()
    # The unacknowledged record may or may not be there; the acknowledged one is.
    assert read_all(log)[0] == (1, b"durable")
    assert log.last_lsn in (1, 2)

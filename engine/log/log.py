"""The segmented append-only log: one writer task, group commit, recovery, prefix truncation.

Design
======

Appenders never touch files. :meth:`SegmentedLog.append` (and friends) put an entry on a bounded queue and
await its future; a single writer task takes as many queued entries as fit in one batch
(``max_batch_records``, ``max_batch_bytes``), numbers their records, frames them into one buffer, and in a
worker thread writes the buffer with one ``pwrite`` and makes it durable with one ``fdatasync``. Only then are
the futures resolved.
While that thread is busy, new appends pile up and become the next batch: that is group commit, and the busier
the log the bigger the batches.

Invariants, and why they hold:

* **LSNs are dense and follow enqueue order.** LSNs are assigned by the writer when it forms a batch, from the
  queue head, never at enqueue time. A failed batch therefore leaves no hole: its LSNs are handed out again.
* **Durable before acknowledged.** A future resolves only after the write (and, with ``FsyncPolicy.FSYNC``,
  the fdatasync) that covers its record returned.
* **Only the tail can be torn.** A batch is written only after the previous one was synced, and a segment is
  synced before the log rolls to the next one, so recovery only ever needs to cut the end of the last segment.
* **A failed write leaves no trace.** The segment is truncated back to where the batch started before the next
  batch is written; if even that fails, the log refuses further appends (state unknown) until reopened.
* **Nothing is stored after a record that was refused.** A failed write also fails every entry queued behind it
  (later records may build on the failed ones, and the log cannot tell), then the writer carries on: a full disk
  fails appends while it lasts, and appends succeed again once there is room, without reopening the log.
* **Readers see only acknowledged records.** :meth:`SegmentedLog.read` takes an immutable :class:`_View`
  (segments and last acknowledged LSN), replaced atomically by the event loop, and never reads past it.

Threads: the event loop owns the queue, counters and the view. File descriptors are used only in worker
threads, serialised by ``_io_lock`` (one batch at a time, and closing waits for an in-flight batch).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import final

from engine.config import FsyncPolicy, LogSection
from engine.errors import CorruptRecordError, LogClosedError, LogError, OverloadedError
from engine.log.api import LogStatistics
from engine.log.record import RecordTooLargeError, encode_batch, frame_size
from engine.log.segment import (
    SegmentRef,
    create_segment,
    fsync_directory,
    list_segments,
    read_segment,
    recover_segment,
)
from engine.metrics import Histogram
from engine.worker import SerialWorker

__all__ = ["SegmentedLog"]

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "LOCK"


@dataclass(slots=True, eq=False)
class _Entry:
    """One append call: its records are written in one batch with consecutive LSNs."""

    payloads: Sequence[bytes]
    nbytes: int
    future: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class _View:
    """What readers may see. Replaced, never mutated, so a reader in another thread gets a consistent pair."""

    segments: tuple[SegmentRef, ...]
    last_lsn: int


@dataclass(slots=True)
class _ActiveSegment:
    """The segment being appended to. Used only in worker threads holding ``_io_lock``."""

    ref: SegmentRef
    fd: int
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Recovered:
    lock_fd: int
    segments: tuple[SegmentRef, ...]
    active: _ActiveSegment
    last_lsn: int


_PRIVATE = object()


@final
class SegmentedLog:
    """An append-only log of records in segment files, with group commit. Create it with :meth:`open`.

    LSNs start at 1, are dense, and keep counting across restarts and prefix truncation.
    """

    @classmethod
    async def open(cls, directory: Path, config: LogSection) -> SegmentedLog:
        """Open (or create) the log in ``directory`` and start its writer.

        Recovery checks every record. A torn or corrupt tail of the last segment is cut; damage anywhere else
        means acknowledged records were lost and raises. Blocking file work runs in a worker thread.

        Args:
            directory: The log's own directory; created if missing. One open log per directory (a lock file
                enforces it).
            config: Limits, batching and fsync policy.

        Returns:
            The open log; the caller must :meth:`aclose` it.

        Raises:
            CorruptRecordError: A bad record somewhere other than the tail of the last segment, or a gap
                between segments.
            LogError: The directory is already open, or it cannot be read or written.
        """
        directory = Path(directory)
        try:
            recovered = await asyncio.to_thread(_recover, directory)
        except OSError as exc:
            raise LogError(f"cannot open log in {directory}: {exc}") from exc
        log = cls(directory, config, recovered, _token=_PRIVATE)
        logger.info(
            "opened log %s: segments=%d first_lsn=%d last_lsn=%d fsync=%s",
            directory,
            len(recovered.segments),
            log.first_lsn,
            log.last_lsn,
            config.fsync.value,
        )
        return log

    def __init__(self, directory: Path, config: LogSection, recovered: _Recovered, *, _token: object) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use `await SegmentedLog.open(directory, config)`")
        self._directory = directory
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._fsync = config.fsync == FsyncPolicy.FSYNC
        self._lock_fd = recovered.lock_fd
        self._active = recovered.active
        self._view = _View(recovered.segments, recovered.last_lsn)
        self._io_lock = threading.Lock()
        self._files_closed = False
        # Admitted entries (counted in _queued) and entries waiting for queue space (not counted), FIFO both.
        self._pending: collections.deque[_Entry] = collections.deque()
        self._waiting: collections.deque[_Entry] = collections.deque()
        self._queued = 0
        self._in_flight: list[_Entry] = []  # the batch being written
        self._wakeup = asyncio.Event()
        self._closing = False
        self._failure: BaseException | None = None  # set when the files are in an unknown state
        self._truncate_lock = asyncio.Lock()
        self._batches = 0
        self._records = 0
        self._fsyncs = 0
        self._bytes_written = 0
        self._append_seconds = Histogram()  # observed by the writer task
        self._fsync_seconds = Histogram()  # observed in the worker thread, under _io_lock
        self._worker = SerialWorker(f"log-writer {directory.name}")
        self._writer_task = asyncio.create_task(self._run_writer(), name=f"log-writer {directory}")

    # ------------------------------------------------------------------------------------------------------
    # Reading state
    # ------------------------------------------------------------------------------------------------------

    @property
    def last_lsn(self) -> int:
        """LSN of the last acknowledged record; 0 if the log never held one."""
        return self._view.last_lsn

    @property
    def first_lsn(self) -> int:
        """First LSN still stored (after prefix truncation); ``last_lsn + 1`` if the log is empty."""
        return self._view.segments[0].first_lsn

    @property
    def failure(self) -> BaseException | None:
        """Why the log refuses every append until it is reopened (a failed write could not be undone), or None."""
        return self._failure

    def statistics(self) -> LogStatistics:
        """A snapshot of the counters."""
        view = self._view
        return LogStatistics(
            last_lsn=view.last_lsn,
            first_lsn=view.segments[0].first_lsn,
            segments=len(view.segments),
            queued=self._queued,
            batches=self._batches,
            records=self._records,
            fsyncs=self._fsyncs,
            bytes_written=self._bytes_written,
            append_seconds=self._append_seconds.snapshot(),
            fsync_seconds=self._fsync_seconds.snapshot(),
        )

    def read(self, from_lsn: int) -> Iterator[tuple[int, bytes]]:
        """Iterate over the acknowledged records with ``lsn >= from_lsn``, in LSN order.

        Blocking: run it in a thread (``asyncio.to_thread``). It may run while appends continue; it sees the
        records acknowledged when ``read`` was called, and no later ones. Records before :attr:`first_lsn` are
        gone, so iteration starts at ``max(from_lsn, first_lsn)``.

        Args:
            from_lsn: The first LSN wanted.

        Yields:
            ``(lsn, payload)`` pairs.

        Raises:
            CorruptRecordError: A record fails its checks.
            LogError: A segment was truncated away while it was being read.
        """
        return _read_view(self._view, from_lsn)

    # ------------------------------------------------------------------------------------------------------
    # Appending
    # ------------------------------------------------------------------------------------------------------

    async def append(self, payload: bytes) -> int:
        """Append one record and wait until it is durable (per the fsync policy).

        Waits for queue space when ``queue_limit`` records are queued.

        Args:
            payload: The record's bytes, at most ``record_size_limit_bytes``.

        Returns:
            The record's LSN.

        Raises:
            RecordTooLargeError: The payload is over the limit (nothing was appended).
            LogClosedError: The log is closing or closed.
            LogError: The write failed; the record was not appended.
        """
        return await self._submit((payload,))

    async def append_batch(self, payloads: Sequence[bytes]) -> int:
        """Append records as one batch (one write, one fsync) and wait until they are durable.

        The records get consecutive LSNs; either all of them are acknowledged or none.

        Args:
            payloads: The records, at least one, each at most ``record_size_limit_bytes``.

        Returns:
            The LSN of the last record.

        Raises:
            ValueError: ``payloads`` is empty.
            RecordTooLargeError: A payload is over the limit (nothing was appended).
            LogClosedError: The log is closing or closed.
            LogError: The write failed; no record was appended.
        """
        if not payloads:
            raise ValueError("append_batch needs at least one payload")
        return await self._submit(tuple(payloads))

    def append_nowait(self, payload: bytes) -> asyncio.Future[int]:
        """Enqueue one record without waiting.

        Records enqueued earlier get lower LSNs. Cancelling the future before the record is written keeps it
        out of the log.

        Args:
            payload: The record's bytes, at most ``record_size_limit_bytes``.

        Returns:
            A future resolving with the record's LSN once it is durable, or failing with ``LogError``.

        Raises:
            OverloadedError: ``queue_limit`` records are already queued.
            RecordTooLargeError: The payload is over the limit.
            LogClosedError: The log is closing or closed.
        """
        entry = self._make_entry((payload,))
        if self._waiting or not self._has_room(1):
            raise OverloadedError(f"log queue is full ({self._queued} of {self._config.queue_limit} records)")
        self._admit(entry)
        return entry.future

    async def _submit(self, payloads: Sequence[bytes]) -> int:
        entry = self._make_entry(payloads)
        if not self._waiting and self._has_room(len(payloads)):
            self._admit(entry)
        else:
            self._waiting.append(entry)
        # Cancelling this await cancels the future: the writer skips the entry if it has not taken it yet.
        return await entry.future

    def _make_entry(self, payloads: Sequence[bytes]) -> _Entry:
        self._check_open()
        limit = self._config.record_size_limit_bytes
        nbytes = 0
        checked = []
        for payload in payloads:
            if len(payload) > limit:
                raise RecordTooLargeError(len(payload), limit)
            if type(payload) is not bytes:
                payload = bytes(payload)  # the crc32c extension wants immutable bytes
            checked.append(payload)
            nbytes += frame_size(payload)
        return _Entry(checked, nbytes, self._loop.create_future())

    def _check_open(self) -> None:
        if self._failure is not None:
            raise LogError(f"log {self._directory} failed and must be reopened: {self._failure}")
        if self._closing:
            raise LogClosedError(f"log {self._directory} is closed")

    def _has_room(self, records: int) -> bool:
        # An entry larger than the whole queue still gets in, alone, so append_batch cannot deadlock.
        return self._queued == 0 or self._queued + records <= self._config.queue_limit

    def _admit(self, entry: _Entry) -> None:
        self._queued += len(entry.payloads)
        self._pending.append(entry)
        self._wakeup.set()

    def _release(self, records: int) -> None:
        self._queued -= records
        while self._waiting:
            entry = self._waiting[0]
            if entry.future.done():  # cancelled while waiting
                self._waiting.popleft()
            elif self._has_room(len(entry.payloads)):
                self._waiting.popleft()
                self._admit(entry)
            else:
                break

    # ------------------------------------------------------------------------------------------------------
    # The writer
    # ------------------------------------------------------------------------------------------------------

    async def _run_writer(self) -> None:
        try:
            while self._failure is None:
                if not self._pending:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._write_next_batch()
            self._fail_queued(lambda: LogError(f"log {self._directory} failed: {self._failure}"))
        except asyncio.CancelledError:
            self._closing = True
            self._fail_queued(lambda: LogClosedError(f"log {self._directory} writer was cancelled"))
            raise
        except Exception as exc:
            logger.exception("log writer for %s failed", self._directory)
            self._failure = exc
            message = f"log {self._directory} failed: {exc}"
            self._fail_queued(lambda: LogError(message))

    def _take_batch(self) -> list[_Entry]:
        max_records = self._config.max_batch_records
        max_bytes = self._config.max_batch_bytes
        batch: list[_Entry] = []
        records = nbytes = 0
        while self._pending:
            entry = self._pending[0]
            if entry.future.done():  # cancelled before it was written: leave it out
                self._pending.popleft()
                self._release(len(entry.payloads))
                continue
            count = len(entry.payloads)
            if batch and (records + count > max_records or nbytes + entry.nbytes > max_bytes):
                break
            self._pending.popleft()
            batch.append(entry)
            records += count
            nbytes += entry.nbytes
        return batch

    async def _write_next_batch(self) -> None:
        batch = self._in_flight = self._take_batch()
        if not batch:
            return
        first_lsn = self._view.last_lsn + 1
        payloads = [payload for entry in batch for payload in entry.payloads]
        try:
            started = time.monotonic()
            nbytes, fsyncs = await self._worker.run(self._write_sync, first_lsn, payloads)
            self._append_seconds.observe(time.monotonic() - started)
        except OSError as exc:
            self._sync_view(self._view.last_lsn)
            logger.error(
                "log %s: writing records %d..%d failed (%d more queued records fail with them): %s",
                self._directory,
                first_lsn,
                first_lsn + len(payloads) - 1,
                self._queued - len(payloads),
                exc,
            )
            message = f"appending to log {self._directory} failed: {exc}"
            cause = exc

            def error() -> LogError:
                failed = LogError(message)
                failed.__cause__ = cause
                return failed

            self._fail_queued(error)
            return
        self._sync_view(first_lsn + len(payloads) - 1)
        self._batches += 1
        self._records += len(payloads)
        self._fsyncs += fsyncs
        self._bytes_written += nbytes
        lsn = first_lsn - 1
        for entry in batch:
            lsn += len(entry.payloads)
            if not entry.future.done():
                entry.future.set_result(lsn)
        self._in_flight = []
        self._release(len(payloads))

    def _sync_view(self, last_lsn: int) -> None:
        # A roll may have happened in the thread, even when the write after it failed.
        segments = self._view.segments
        active = self._active.ref
        if segments[-1] != active:
            segments = (*segments, active)
        self._view = _View(segments, last_lsn)

    def _fail_queued(self, make_error: Callable[[], BaseException]) -> None:
        entries = [*self._in_flight, *self._pending, *self._waiting]
        self._in_flight = []
        self._pending.clear()
        self._waiting.clear()
        self._queued = 0
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(make_error())

    # --- worker-thread side -------------------------------------------------------------------------------

    def _write_sync(self, first_lsn: int, payloads: list[bytes]) -> tuple[int, int]:
        """Write one batch (rolling first if the segment is full); return (bytes written, data syncs)."""
        with self._io_lock:
            if self._files_closed:
                raise LogClosedError(f"log {self._directory} is closed")
            buffer = encode_batch(first_lsn, payloads)
            fsyncs = 0
            active = self._active
            if active.size > 0 and active.size + len(buffer) > self._config.segment_size_bytes:
                fsyncs += self._roll(first_lsn)
                active = self._active
            start = active.size
            try:
                _pwrite_all(active.fd, buffer, start)
                if self._fsync:
                    synced = time.monotonic()
                    os.fdatasync(active.fd)
                    self._fsync_seconds.observe(time.monotonic() - synced)
                    fsyncs += 1
            except OSError:
                self._rollback(active, start)
                raise
            active.size = start + len(buffer)
            return len(buffer), fsyncs

    def _roll(self, first_lsn: int) -> int:
        old = self._active
        fsyncs = 0
        if not self._fsync:
            # Without per-batch syncs, sync on roll anyway: only the last segment may ever be torn.
            os.fdatasync(old.fd)
            fsyncs = 1
        ref, fd = create_segment(self._directory, first_lsn)
        self._active = _ActiveSegment(ref=ref, fd=fd, size=0)
        os.close(old.fd)
        logger.debug("log %s rolled to segment %s", self._directory, ref.name)
        return fsyncs

    def _rollback(self, active: _ActiveSegment, start: int) -> None:
        try:
            os.ftruncate(active.fd, start)
            os.fdatasync(active.fd)
        except OSError as exc:
            logger.error("log %s: cannot truncate %s back to %d: %s", self._directory, active.ref.name, start, exc)
            self._failure = exc

    def _close_files(self) -> None:
        with self._io_lock:
            if self._files_closed:
                return
            self._files_closed = True
            try:
                if self._failure is None:
                    os.fdatasync(self._active.fd)
            finally:
                os.close(self._active.fd)
                os.close(self._lock_fd)

    # ------------------------------------------------------------------------------------------------------
    # Truncation and shutdown
    # ------------------------------------------------------------------------------------------------------

    async def truncate_prefix(self, up_to_lsn: int) -> None:
        """Delete the segments whose records all have ``lsn <= up_to_lsn``.

        Call it once the state derived from those records is durable elsewhere. The active (last) segment is
        never deleted, so :attr:`first_lsn` may stay at or below ``up_to_lsn``.

        Args:
            up_to_lsn: The highest LSN that may be dropped.

        Raises:
            LogClosedError: The log is closed.
            LogError: A segment file could not be deleted. The log stays usable; files left behind are
                found again (and may be truncated) after the next open.
        """
        async with self._truncate_lock:
            if self._files_closed:
                raise LogClosedError(f"log {self._directory} is closed")
            segments = self._view.segments
            count = 0
            while count < len(segments) - 1 and segments[count + 1].first_lsn - 1 <= up_to_lsn:
                count += 1
            if count == 0:
                return
            doomed = segments[:count]
            # Hide them from new readers first; a reader that already opened one keeps reading it.
            self._view = replace(self._view, segments=self._view.segments[count:])
            try:
                await asyncio.to_thread(_delete_segments, self._directory, doomed)
            except OSError as exc:
                raise LogError(f"log {self._directory}: deleting truncated segments failed: {exc}") from exc
            logger.debug(
                "log %s: truncated %d segments up to lsn %d, first_lsn now %d",
                self._directory,
                count,
                up_to_lsn,
                self.first_lsn,
            )

    async def aclose(self) -> None:
        """Stop accepting appends, finish the queued ones, sync and close the files.

        Appends queued before the call complete normally; later appends raise :class:`LogClosedError`.
        Cancelling ``aclose`` abandons the queue (queued appends fail with ``LogClosedError``) but still
        closes the files. Calling it again is a no-op.

        Raises:
            LogError: The final sync failed.
        """
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait([self._writer_task])
        except asyncio.CancelledError:
            self._writer_task.cancel()
            raise
        finally:
            await asyncio.to_thread(self._worker.close)
            if not self._files_closed:
                try:
                    await asyncio.to_thread(self._close_files)
                except OSError as exc:
                    raise LogError(f"closing log {self._directory} failed: {exc}") from exc
                logger.info("closed log %s at lsn %d", self._directory, self.last_lsn)


def _pwrite_all(fd: int, buffer: bytes, offset: int) -> None:
    view = memoryview(buffer)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _recover(directory: Path) -> _Recovered:
    if not directory.is_dir():
        directory.mkdir(parents=True)
        fsync_directory(directory.parent)
    lock_fd = os.open(directory / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LogError(f"log directory {directory} is already open") from exc
        refs = list_segments(directory)
        if not refs:
            ref, fd = create_segment(directory, 1)
            return _Recovered(
                lock_fd=lock_fd, segments=(ref,), active=_ActiveSegment(ref=ref, fd=fd, size=0), last_lsn=0
            )
        for index, ref in enumerate(refs[:-1]):
            segment = recover_segment(ref, last=False)
            following = refs[index + 1]
            if segment.next_lsn != following.first_lsn:
                raise CorruptRecordError(
                    f"segment {ref.name} ends at record {segment.next_lsn - 1} but the next segment, "
                    f"{following.name}, starts at {following.first_lsn}",
                    segment=ref.name,
                    offset=segment.size,
                )
        last = recover_segment(refs[-1], last=True)
        fd = os.open(last.ref.path, os.O_WRONLY | os.O_CLOEXEC)
        return _Recovered(
            lock_fd=lock_fd,
            segments=tuple(refs),
            active=_ActiveSegment(ref=last.ref, fd=fd, size=last.size),
            last_lsn=last.next_lsn - 1,
        )
    except BaseException:
        os.close(lock_fd)
        raise


def _delete_segments(directory: Path, segments: Sequence[SegmentRef]) -> None:
    # Oldest first: a crash half-way leaves a contiguous run of segments.
    for ref in segments:
        ref.path.unlink(missing_ok=True)
    fsync_directory(directory)


def _read_view(view: _View, from_lsn: int) -> Iterator[tuple[int, bytes]]:
    segments = view.segments
    start = max(from_lsn, segments[0].first_lsn)
    for index, ref in enumerate(segments):
        end = view.last_lsn
        if index + 1 < len(segments):
            end = min(end, segments[index + 1].first_lsn - 1)
        if end < start or end < ref.first_lsn:
            continue
        yield from read_segment(ref, from_lsn=start, to_lsn=end)

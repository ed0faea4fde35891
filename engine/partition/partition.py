"""One partition: its log, its processor thread, and the loop that applies durable records in LSN order.

``propose_nowait`` encodes a record and hands it to the log writer (group commit). Records are applied strictly in
enqueue order == LSN order: the apply loop awaits each record's durability future in FIFO order, then applies every
record that is already durable in one batch on the partition's thread, then dispatches the effects.

A record that could not be stored (disk full) is simply not in the log. The records of one attempt build on each
other (journal entries, then its outcome), so once one of them failed the partition refuses the attempt's later
ones, except the ``AttemptFailed`` that ends it: the journal never gets a hole. If RocksDB runs out of space the
apply loop waits for it to resume (it does so by itself when space returns) instead of stopping the engine, and
meanwhile new records are refused with ``OverloadedError`` (HTTP 503 + Retry-After, Kafka partitions paused).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine import codec
from engine.config import EngineConfig
from engine.errors import (
    CorruptRecordError,
    EngineInternalError,
    LogError,
    OverloadedError,
    StorageError,
    StorageFullError,
)
from engine.log import SegmentedLog
from engine.log.api import LogStatistics
from engine.partition.effects import Effect
from engine.partition.processor import PartitionProcessor
from engine.partition.types import AppendEntries, AttemptFailed, End, Invoke, Record, Suspend
from engine.storage.store import Store

logger = logging.getLogger(__name__)

EffectSink = Callable[[int, list[Effect]], None]


# A replay at least this long is announced before it starts (progress follows every log.recovery_progress_interval).
_ANNOUNCE_REPLAY_RECORDS = 10_000
_INVOKE_HEAD = codec.header_of(Invoke)

# While RocksDB is out of disk space, an apply is retried after this long (doubling up to the maximum).
_APPLY_RETRY_S = 0.05
_APPLY_RETRY_MAX_S = 1.0

AttemptKey = tuple[bytes, int]


def _attempt_key(record: Record | bytes) -> AttemptKey | None:
    if isinstance(record, AppendEntries | Suspend | End | AttemptFailed):
        return record.invocation_id, record.epoch
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionStatistics:
    partition_id: int
    applied_lsn: int
    pending: int
    batches: int
    records: int
    # invocations this partition completed since start (recovery replay included), by result
    completed_ok: int
    completed_failed: int


class Partition:
    def __init__(
        self,
        partition_id: int,
        log: SegmentedLog,
        store: Store,
        config: EngineConfig,
        on_effects: EffectSink,
    ) -> None:
        self.id = partition_id
        self._log = log
        self._store = store
        self._config = config
        self._on_effects = on_effects
        self.processor = PartitionProcessor(partition_id, store, config)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"partition-{partition_id}")
        # A record, or its encoded bytes (decoded by the apply, off the loop: records built by the Kafka worker).
        self._pending: collections.deque[tuple[asyncio.Future[int], Record | bytes, asyncio.Future[int]]] = (
            collections.deque()
        )
        self._wakeup = asyncio.Event()
        self._closed = False
        self._batches = 0
        self._records = 0
        self._since_truncate = 0
        self._truncation: asyncio.Task[None] | None = None  # a background flush + log truncation
        # The durability future of the last record proposed for each attempt still in flight (see the module doc).
        self._attempt_tails: dict[AttemptKey, asyncio.Future[int]] = {}
        self._storage_full: StorageFullError | None = None  # set while applying waits for RocksDB to have room

    @classmethod
    async def open(
        cls, partition_id: int, data_dir: Path, store: Store, config: EngineConfig, on_effects: EffectSink
    ) -> Partition:
        log = await SegmentedLog.open(data_dir / "log" / f"p{partition_id}", config.log)
        return cls(partition_id, log, store, config, on_effects)

    async def recover(self) -> list[Effect]:
        """Replay the log tail past ``applied_lsn`` (effects of replayed records are dropped: callers of the
        previous process are gone) and return the effects recomputed from the tables."""
        loop = asyncio.get_running_loop()
        self._check_log_covers_tables()
        start = self.processor.applied_lsn + 1
        total = max(0, self._log.last_lsn - max(start, self._log.first_lsn) + 1)
        interval = self._config.log.recovery_progress_interval.total_seconds()
        if total >= _ANNOUNCE_REPLAY_RECORDS:
            logger.info("recovering partition %d: replaying %d log records", self.id, total)

        def replay() -> int:
            batch: list[tuple[int, Record]] = []
            count = 0
            next_report = time.monotonic() + interval
            for lsn, payload in self._log.read(start):
                batch.append((lsn, codec.decode(payload)))
                if len(batch) >= 512:
                    self.processor.apply_batch(batch)
                    count += len(batch)
                    batch = []
                    now = time.monotonic()
                    if now >= next_report:
                        next_report = now + interval
                        logger.info(
                            "recovering partition %d: %d/%d records (%d%%)",
                            self.id,
                            count,
                            total,
                            count * 100 // max(total, 1),
                        )
            if batch:
                self.processor.apply_batch(batch)
                count += len(batch)
            return count

        replayed = await loop.run_in_executor(self._executor, replay)
        if replayed:
            logger.info("partition %d: replayed %d log records up to lsn %d", self.id, replayed, self._log.last_lsn)
        return await loop.run_in_executor(self._executor, self.processor.recovery_effects)

    def _check_log_covers_tables(self) -> None:
        """The log must hold every record past the tables' ``applied_lsn``: the tables come back as of a flush, and
        the log is truncated only below a flush. A gap means acknowledged records are gone: refuse to start rather
        than run on (and reuse their LSNs)."""
        applied, first, last = self.processor.applied_lsn, self._log.first_lsn, self._log.last_lsn
        if applied > last:
            raise CorruptRecordError(
                f"partition {self.id}: the tables have applied the log up to record {applied} but the log ends at "
                f"record {last}: acknowledged records are missing from the end of the log (a damaged last record, "
                "or log files from elsewhere)"
            )
        if applied + 1 < first:
            raise CorruptRecordError(
                f"partition {self.id}: the tables have applied the log up to record {applied} but the log starts at "
                f"record {first}: records {applied + 1}..{first - 1} were truncated away, so the RocksDB directory "
                "is older than the log (restored from an old copy?)"
            )

    def propose_nowait(self, record: Record) -> asyncio.Future[int]:
        """Append ``record``; the returned future resolves with its LSN once it is durable AND applied.

        Raises OverloadedError when the log's queue is full, or when ``log.queue_limit`` records are durable but not
        yet applied (the apply loop is behind).
        """
        return self._propose(record)[1]

    def propose_durable_nowait(self, record: Record | bytes) -> asyncio.Future[int]:
        """As :meth:`propose_nowait`, but the future resolves once the record is durable in the log, before it is
        applied. For producers that only need durability (a Kafka offset may be committed then: after a crash the
        record is replayed from the log). The future is the caller's own: cancelling it changes nothing.

        ``record`` may be an ``Invoke`` already encoded (``codec.encode``), as the Kafka worker process sends them:
        the log stores the bytes as they are and the apply decodes them, so the event loop's cost per record is
        the append alone."""
        if type(record) is bytes and not record.startswith(_INVOKE_HEAD):
            raise ValueError("encoded records proposed here must be Invoke records")
        durable, _ = self._propose(record)
        mine: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        durable.add_done_callback(functools.partial(_copy_outcome, mine))
        return mine

    def _propose(self, record: Record | bytes) -> tuple[asyncio.Future[int], asyncio.Future[int]]:
        if self._closed:
            raise LogError("partition is shutting down")
        if self._storage_full is not None:
            raise OverloadedError(f"partition {self.id} cannot apply records, RocksDB is out of disk space")
        if len(self._pending) >= self._config.log.queue_limit:
            raise OverloadedError(
                f"partition {self.id}: {len(self._pending)} records wait to be applied (log.queue_limit)"
            )
        attempt = _attempt_key(record)
        if attempt is not None:
            tail = self._attempt_tails.get(attempt)
            # A failed future is failed at once (the log fails everything queued behind a failed write, too), so
            # nothing of this attempt can reach the log after the record that did not.
            failed = tail is not None and tail.done() and not tail.cancelled() and tail.exception() is not None
            if failed and not isinstance(record, AttemptFailed):
                assert tail is not None
                raise LogError(f"an earlier record of this attempt was not stored: {tail.exception()}")
        durable = self._log.append_nowait(record if type(record) is bytes else codec.encode(record))
        if attempt is not None:
            self._attempt_tails[attempt] = durable
        applied: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((durable, record, applied))
        self._wakeup.set()
        return durable, applied

    async def propose(self, record: Record) -> int:
        return await self.propose_nowait(record)

    async def run(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            durable, _, _ = self._pending[0]
            try:
                await asyncio.shield(durable)
            except LogError:
                if self._log.failure is not None:
                    # Unlike a full disk, this does not pass: only reopening the log (a restart) recovers it.
                    message = f"partition {self.id}: its log failed and must be reopened, restart the engine"
                    for _, _, applied in self._pending:
                        if not applied.done():
                            applied.set_exception(LogError(f"{message}: {self._log.failure}"))
                    self._pending.clear()
                    raise EngineInternalError(f"{message}: {self._log.failure}") from None
            batch: list[tuple[int, Record | bytes]] = []
            waiters: list[tuple[asyncio.Future[int], int]] = []
            while self._pending and self._pending[0][0].done():
                fut, record, applied = self._pending.popleft()
                exc = fut.exception()
                if exc is not None:
                    if not applied.done():
                        applied.set_exception(exc)
                    continue
                attempt = _attempt_key(record)
                if attempt is not None and self._attempt_tails.get(attempt) is fut:
                    del self._attempt_tails[attempt]
                lsn = fut.result()
                batch.append((lsn, record))
                waiters.append((applied, lsn))
            if not batch:
                continue
            try:
                effects = None
                if len(batch) <= self._config.storage.inline_apply_max_records:
                    # Small batches on the loop: a thread hop per batch costs more than the apply itself.
                    with contextlib.suppress(StorageError):
                        effects = self.processor.apply_batch(batch, no_slowdown=True)
                if effects is None:
                    effects = await self._apply_waiting_for_space(batch)
            except Exception as exc:
                # The log holds these records; the tables do not. Continuing would apply later records on top
                # of a state that misses these, so stop the engine (restart replays them).
                raise EngineInternalError(f"partition {self.id}: apply failed at lsn {batch[0][0]}") from exc
            self._batches += 1
            self._records += len(batch)
            for applied, lsn in waiters:
                if not applied.done():
                    applied.set_result(lsn)
            if effects:
                self._on_effects(self.id, effects)
            self._since_truncate += len(batch)
            if self._since_truncate >= self._config.storage.truncate_every_records and (
                self._truncation is None or self._truncation.done()
            ):
                self._since_truncate = 0
                # In the background: applying goes on while RocksDB flushes (a flush takes tens of milliseconds
                # or more, and every caller would wait that long). Records applied meanwhile may or may not be
                # in the flush; the log is truncated only below what was applied when it started.
                self._truncation = asyncio.create_task(self._truncate(self.processor.applied_lsn))

    async def _apply_waiting_for_space(self, batch: list[tuple[int, Record | bytes]]) -> list[Effect]:
        """Apply on the partition's thread; while RocksDB is out of disk space, wait for it to resume and retry
        (``apply_batch`` changes nothing unless its write succeeds)."""
        loop = asyncio.get_running_loop()
        delay = _APPLY_RETRY_S
        waiting_since = 0.0
        while True:
            try:
                effects = await loop.run_in_executor(self._executor, self.processor.apply_batch, batch)
            except StorageFullError as exc:
                if not waiting_since:
                    waiting_since = time.monotonic()
                    self._storage_full = exc
                    logger.error(
                        "partition %d: RocksDB is out of disk space; applying stops (new records are refused, the "
                        "log keeps the others) until RocksDB resumes, by itself within seconds once the disk has "
                        "room for a memtable (write_buffer_size, 64 MiB by default): %s",
                        self.id,
                        exc,
                    )
                self._fail_lost_pending()
                await asyncio.sleep(delay)
                delay = min(delay * 2, _APPLY_RETRY_MAX_S)
                continue
            self._storage_full = None
            if waiting_since:
                logger.warning(
                    "partition %d: RocksDB has room again; applying resumed after %.1fs",
                    self.id,
                    time.monotonic() - waiting_since,
                )
            return effects

    def _fail_lost_pending(self) -> None:
        # Records queued behind the blocked batch that the log did not store are answered now, not when the apply
        # loop gets to them.
        for durable, _, applied in self._pending:
            if durable.done() and not durable.cancelled() and not applied.done():
                exc = durable.exception()
                if exc is not None:
                    applied.set_exception(exc)

    async def _truncate(self, upto: int) -> None:
        """Flush RocksDB (on a thread of its own, not the partition's: applies on that thread go on meanwhile), then
        drop the log's records up to ``upto``, which the flush made durable in the tables."""
        try:
            await asyncio.to_thread(self._store.flush)
            await self._log.truncate_prefix(upto)
        except StorageError as exc:
            # The log keeps the records the tables may lose; truncation is tried again at the next interval. A full
            # disk passes by itself (a warning); any other flush failure is an error.
            level = logging.WARNING if isinstance(exc, StorageFullError) else logging.ERROR
            logger.log(level, "partition %d: flushing RocksDB failed, the log is not truncated: %s", self.id, exc)
        except LogError as exc:
            logger.warning("partition %d: truncating the log failed: %s", self.id, exc)

    async def aclose(self) -> None:
        """Stop taking records; callers wait for the run loop to drain before closing storage."""
        self._closed = True
        self._wakeup.set()

    async def close_log(self) -> None:
        if self._truncation is not None:
            await asyncio.wait([self._truncation])
        await self._log.aclose()
        self._executor.shutdown(wait=True)

    def statistics(self) -> PartitionStatistics:
        return PartitionStatistics(
            partition_id=self.id,
            applied_lsn=self.processor.applied_lsn,
            pending=len(self._pending),
            batches=self._batches,
            records=self._records,
            completed_ok=self.processor.completed_ok,
            completed_failed=self.processor.completed_failed,
        )

    def log_statistics(self) -> LogStatistics:
        return self._log.statistics()


def _copy_outcome(target: asyncio.Future[int], source: asyncio.Future[int]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


__all__ = ["OverloadedError", "Partition", "PartitionStatistics"]

"""What the engine sees of a partition log, whatever stores it.

The local :class:`~engine.log.log.SegmentedLog` implements :class:`Log`; a Kafka-backed log (one topic partition
per engine partition) will implement it too, so nothing above the log may assume local segment files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.metrics import HistogramSnapshot

__all__ = ["Log", "LogStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogStatistics:
    """A snapshot of a log's counters.

    Attributes:
        last_lsn: LSN of the last acknowledged record (0 if none was ever appended).
        first_lsn: First LSN still stored (``last_lsn + 1`` when the log is empty).
        segments: Segment files, the active one included.
        queued: Records accepted but not yet acknowledged (queued or being written).
        batches: Batches written since open.
        records: Records written since open.
        fsyncs: Data syncs of segment files since open.
        bytes_written: Bytes written to segment files since open, framing included.
        append_seconds: Per written batch (group commit): the time to write it and make it durable.
        fsync_seconds: Per data sync of a batch (``fsync`` policy only).
    """

    last_lsn: int
    first_lsn: int
    segments: int
    queued: int
    batches: int
    records: int
    fsyncs: int
    bytes_written: int
    append_seconds: HistogramSnapshot
    fsync_seconds: HistogramSnapshot


class Log(Protocol):
    """What the engine needs from a partition log; the local :class:`SegmentedLog` and, later, a Kafka-backed
    log implement it."""

    @property
    def last_lsn(self) -> int:
        """LSN of the last acknowledged record, 0 if empty."""
        ...

    @property
    def first_lsn(self) -> int:
        """First LSN still stored, ``last_lsn + 1`` if empty."""
        ...

    async def append(self, payload: bytes) -> int:
        """Append one record; return its LSN once it is durable."""
        ...

    async def append_batch(self, payloads: Sequence[bytes]) -> int:
        """Append records atomically as one batch; return the LSN of the last."""
        ...

    def append_nowait(self, payload: bytes) -> asyncio.Future[int]:
        """Enqueue one record or raise ``OverloadedError``; the future resolves with its LSN once durable."""
        ...

    def read(self, from_lsn: int) -> Iterator[tuple[int, bytes]]:
        """Iterate over acknowledged records with ``lsn >= from_lsn`` (blocking: run it in a thread)."""
        ...

    async def truncate_prefix(self, up_to_lsn: int) -> None:
        """Allow dropping records with ``lsn <= up_to_lsn``."""
        ...

    async def aclose(self) -> None:
        """Finish queued appends and release the log."""
        ...

    def statistics(self) -> LogStatistics:
        """Counters for tests and metrics."""
        ...

"""Delivers a partition's outbox to the partitions that own each record's invocation, in sequence order.

The outbox row is written atomically with the record that produced it; delivery proposes
``OutboxDelivery(source, seq, record)`` to the target (which drops sequences it has seen), and once delivered the
source is told to ``TruncateOutbox``. After a crash, ``recovery_effects`` re-sends every row still in the outbox.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import LogError, OverloadedError
from engine.partition.effects import SendOutbox
from engine.partition.types import OutboxDelivery, Record, TruncateOutbox

logger = logging.getLogger(__name__)

Propose = Callable[[bytes | None, int | None, Record], "asyncio.Future[int]"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShufflerStatistics:
    partition_id: int
    queued: int  # outbox rows waiting to be delivered
    last_sent: int  # the last outbox sequence delivered durably


class Shuffler:
    """One per source partition. ``propose(invocation_id, partition, record)`` routes by invocation id, or to
    ``partition`` when the id is None."""

    def __init__(self, partition_id: int, propose: Propose) -> None:
        self.partition_id = partition_id
        self._propose = propose
        self._queue: collections.deque[SendOutbox] = collections.deque()
        self._wakeup = asyncio.Event()
        self._last_sent = 0

    def statistics(self) -> ShufflerStatistics:
        return ShufflerStatistics(partition_id=self.partition_id, queued=len(self._queue), last_sent=self._last_sent)

    def send(self, effect: SendOutbox) -> None:
        if effect.seq <= self._last_sent:
            return
        self._queue.append(effect)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[asyncio.Future[int]] = []
            taken: list[SendOutbox] = []
            last = 0
            while self._queue and len(batch) < 256:
                effect = self._queue.popleft()
                if effect.seq <= self._last_sent:
                    continue
                taken.append(effect)
                record = OutboxDelivery(source=self.partition_id, seq=effect.seq, record=effect.record)
                try:
                    batch.append(await self._enqueue(effect.record.invocation_id, None, record))
                except LogError as exc:  # the target is shutting down or its log failed: try again later
                    logger.warning("outbox %d: cannot deliver %d now: %s", self.partition_id, effect.seq, exc)
                    break
                last = effect.seq
            if len(batch) < len(taken):
                self._queue.extendleft(reversed(taken[len(batch) :]))
            if not batch:
                await asyncio.sleep(0.05)
                continue
            try:
                await asyncio.gather(*batch)
            except LogError as exc:
                # Some were not durable at their target: send the whole batch again (targets drop duplicates).
                logger.warning("outbox %d: a delivery was not stored (%s); retrying", self.partition_id, exc)
                self._queue.extendleft(reversed(taken))
                await asyncio.sleep(0.05)
                continue
            self._last_sent = max(self._last_sent, last)
            try:
                await self._enqueue(None, self.partition_id, TruncateOutbox(seq=last))
            except LogError:
                pass  # truncation is an optimisation; recovery resends and targets dedup

    async def _enqueue(self, invocation_id: bytes | None, partition: int | None, record: Record) -> asyncio.Future[int]:
        while True:
            try:
                return self._propose(invocation_id, partition, record)
            except OverloadedError:
                await asyncio.sleep(0.005)

"""Dead-letter topics: records that cannot be decoded, and records whose invocation failed terminally, are
produced to the subscription's ``capstan.dlq.topic`` with the error in their headers.

Terminal failures arrive as durable EXTERNAL rows of the engine (``ExternalDelivery``); a row is acknowledged
(``AckExternal``) only after the broker acknowledged the produce, so a crash in between produces it again
(at-least-once into the DLQ).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer

from ingress_kafka.client_config import client_kwargs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    cluster: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class DeadLetterSender:
    """One producer per cluster, started on first use. ``properties_of(cluster)`` gives the cluster's current
    properties (None when the cluster was deleted: the letter waits)."""

    def __init__(self, properties_of: Callable[[str], dict[str, str] | None]) -> None:
        self._properties_of = properties_of
        self._producers: dict[str, tuple[tuple[Any, ...], AIOKafkaProducer]] = {}
        self._lock = asyncio.Lock()
        self.sent = 0

    async def send(self, letter: DeadLetter) -> None:
        producer = await self._producer(letter.cluster)
        await producer.send_and_wait(letter.topic, value=letter.value, key=letter.key, headers=list(letter.headers))
        self.sent += 1

    async def _producer(self, cluster: str) -> AIOKafkaProducer:
        props = self._properties_of(cluster)
        if props is None:
            raise LookupError(f"kafka cluster {cluster} does not exist (any more)")
        fingerprint = tuple(sorted(props.items()))
        async with self._lock:
            current = self._producers.get(cluster)
            if current is not None and current[0] == fingerprint:
                return current[1]
            if current is not None:
                await current[1].stop()
            producer = AIOKafkaProducer(acks="all", **client_kwargs(props, consumer=False))
            await producer.start()
            self._producers[cluster] = (fingerprint, producer)
            return producer

    async def aclose(self) -> None:
        for _, producer in self._producers.values():
            try:
                await producer.stop()
            except Exception:  # closing is best effort
                logger.debug("closing a DLQ producer failed", exc_info=True)
        self._producers.clear()


class RetryingQueue:
    """Runs ``handle`` for each queued item in order, retrying an item with back-off until it succeeds."""

    def __init__(self, handle: Callable[[Any], Any], *, name: str) -> None:
        self._handle = handle
        self._items: collections.deque[Any] = collections.deque()
        self._wakeup = asyncio.Event()
        self._name = name

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        backoff = 0.2
        while True:
            if not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._items[0]
            try:
                await self._handle(item)
            except Exception as exc:
                logger.warning("%s: %s; retrying in %.1fs", self._name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.2
            self._items.popleft()


def error_headers(
    *, stage: str, code: int, message: str, subscription: str, topic: str, partition: int, offset: int,
    original: Sequence[tuple[str, bytes]] = (), invocation_id: str | None = None,
) -> tuple[tuple[str, bytes], ...]:  # fmt: skip
    out = [
        ("capstan.error.stage", stage.encode()),
        ("capstan.error.code", str(code).encode()),
        ("capstan.error.message", message.encode()),
        ("capstan.subscription.id", subscription.encode()),
        ("kafka.topic", topic.encode()),
        ("kafka.partition", str(partition).encode()),
        ("kafka.offset", str(offset).encode()),
    ]
    if invocation_id is not None:
        out.append(("capstan.invocation.id", invocation_id.encode()))
    out.extend(original)
    return tuple(out)

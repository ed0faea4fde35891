"""Runs exactly one consumer per subscription, matching what is stored.

After every change (and at start) the reconciler compares the wanted set of (subscription, cluster properties)
with the running consumers: it starts the missing ones, stops the removed ones and restarts the changed ones. A
consumer that crashes is restarted with exponential back-off (200 ms doubling, capped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from subscriptions.models import KafkaCluster, Subscription
from subscriptions.registry import SubscriptionRegistry

logger = logging.getLogger(__name__)


class Consumer(Protocol):
    async def run(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


ConsumerFactory = Callable[[Subscription, KafkaCluster], Consumer]


@dataclass(slots=True)
class _Running:
    fingerprint: tuple[Any, ...]
    consumer: Consumer | None
    task: asyncio.Task[None]
    last_error: str | None = None


class Reconciler:
    def __init__(
        self, registry: SubscriptionRegistry, factory: ConsumerFactory, *, max_backoff_s: float = 10.0
    ) -> None:
        self._registry = registry
        self._factory = factory
        self._max_backoff = max_backoff_s
        self._running: dict[str, _Running] = {}
        self._closed = False

    def reconcile(self) -> None:
        if self._closed:
            return
        wanted: dict[str, tuple[Subscription, KafkaCluster]] = {}
        for sub in self._registry.subscriptions.values():
            cluster = self._registry.clusters.get(sub.cluster)
            if cluster is not None:
                wanted[sub.id] = (sub, cluster)
        for sid in list(self._running):
            if sid not in wanted or self._running[sid].fingerprint != _fingerprint(*wanted[sid]):
                running = self._running.pop(sid)
                running.task.cancel()
                logger.info("subscription %s: consumer stopped", sid)
        for sid, (sub, cluster) in wanted.items():
            if sid not in self._running:
                self._start(sub, cluster)

    def _start(self, sub: Subscription, cluster: KafkaCluster) -> None:
        holder = _Running(fingerprint=_fingerprint(sub, cluster), consumer=None, task=None)  # type: ignore[arg-type]
        holder.task = asyncio.create_task(self._supervise(sub, cluster, holder), name=f"subscription-{sub.id}")
        self._running[sub.id] = holder
        logger.info("subscription %s: consumer started for %s -> %s", sub.id, sub.source, sub.sink)

    async def _supervise(self, sub: Subscription, cluster: KafkaCluster, holder: _Running) -> None:
        backoff = 0.2
        while True:
            holder.consumer = self._factory(sub, cluster)
            try:
                await holder.consumer.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A consumer in the Kafka worker process fails with its exception's name as ``kind``.
                holder.last_error = f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}"
                logger.warning("subscription %s: consumer failed (%s); restarting in %.1fs", sub.id, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def status(self, sid: str) -> dict[str, Any] | None:
        running = self._running.get(sid)
        if running is None:
            return None
        out: dict[str, Any] = running.consumer.status() if running.consumer is not None else {}
        if running.last_error is not None:
            out["last_error"] = out.get("last_error") or running.last_error
        return out

    def consumer(self, sid: str) -> Consumer | None:
        running = self._running.get(sid)
        return None if running is None else running.consumer

    async def aclose(self) -> None:
        self._closed = True
        tasks = [r.task for r in self._running.values()]
        self._running.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


def _fingerprint(sub: Subscription, cluster: KafkaCluster) -> tuple[Any, ...]:
    return (
        sub.topic,
        sub.service,
        sub.handler,
        tuple(sorted(sub.options.items())),
        sub.generation,
        sub.replay_from,
        tuple(sorted(cluster.properties.items())),
    )

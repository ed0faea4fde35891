"""Wires Kafka subscriptions into a running engine (loaded by name from ``EngineConfig.extensions``).

Control plane (``subscriptions``): the registry of clusters and subscriptions (rows stored through the engine),
their admin routes, and the reconciler that runs one consumer per subscription. Data plane (this package): the
consumers, record decoding, and the dead-letter sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.config import IngressKafkaSection, InvocationSection
from engine.errors import LogError, OverloadedError
from engine.extensions import IntrospectionTable
from engine.ids import InvocationId
from engine.metrics import MetricFamily
from engine.partition.effects import ExternalDelivery
from engine.partition.types import AckExternal, Invoke, PutMetadata
from engine.schema import Service
from ingress_kafka.consumer import SubscriptionConsumer
from ingress_kafka.dlq import DeadLetter, DeadLetterSender, RetryingQueue, error_headers
from ingress_kafka.formats import parse_format_options
from ingress_kafka.metrics import SubscriptionCounters, kafka_metric_families
from ingress_kafka.process import KafkaWorker, RemoteConsumer, propose_invokes
from ingress_kafka.schema_registry import SchemaRegistries, SchemaRegistryClient
from subscriptions.admin import SubscriptionsAdmin
from subscriptions.models import KafkaCluster, Subscription, decode_context, redact_properties
from subscriptions.reconciler import Reconciler
from subscriptions.registry import CLUSTER_PREFIX, SUBSCRIPTION_PREFIX, SubscriptionRegistry

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

DLQ_ROUTE = "kafka-dlq/"


class KafkaExtension:
    """The extension, and the host of consumers that run inside the engine process (``ConsumerHost``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.kafka_config: IngressKafkaSection = engine.config.ingress_kafka
        self.invocation_config: InvocationSection = engine.config.invocation
        self.registry = SubscriptionRegistry()
        self.reconciler = Reconciler(
            self.registry,
            self._make_consumer,
            max_backoff_s=engine.config.ingress_kafka.restart_max_backoff.total_seconds(),
        )
        self.admin = SubscriptionsAdmin(
            engine, self.registry, validate_options=_validate_options, status=self.reconciler.status
        )
        self.dead_letters = DeadLetterSender(self._cluster_properties)
        self._failures = RetryingQueue(self._send_failure, name="kafka dead-letter queue")
        self._tasks: list[asyncio.Task[None]] = []
        self._registries = SchemaRegistries()
        self._counters: dict[str, SubscriptionCounters] = {}
        # Consumers run in a worker process of their own unless ingress_kafka.worker_process is false.
        self.worker = KafkaWorker(engine) if engine.config.ingress_kafka.worker_process else None

    # ------------------------------------------------------------------------------------------- Extension

    def add_admin_routes(self, app: web.Application, prefixes: tuple[str, ...]) -> None:
        self.admin.add_routes(app, prefixes)

    async def start(self) -> None:
        for prefix in (CLUSTER_PREFIX, SUBSCRIPTION_PREFIX):
            for key, value in await self.engine.metadata_rows(prefix):
                self.registry.apply(key, value)
        self._tasks.append(asyncio.create_task(self._failures.run(), name="kafka-dlq"))
        if self.worker is not None:
            # Started with the engine (its imports overlap the engine's own start-up), so that a new subscription
            # does not wait half a second for a Python interpreter to import aiokafka.
            self._tasks.append(asyncio.create_task(self._prestart_worker(self.worker), name="kafka-worker-start"))
        self.reconciler.reconcile()
        if self.registry.subscriptions:
            logger.info("kafka: %d subscription(s) loaded", len(self.registry.subscriptions))

    def on_metadata(self, key: str, value: bytes | None) -> None:
        if self.registry.apply(key, value):
            self.reconciler.reconcile()

    def on_external(self, delivery: ExternalDelivery) -> bool:
        if not delivery.route.startswith(DLQ_ROUTE):
            return False
        self._failures.put(delivery)
        return True

    def introspection_tables(self) -> Sequence[IntrospectionTable]:
        return (
            IntrospectionTable(name="sys_subscription", columns=SUBSCRIPTION_COLUMNS, rows=self._subscription_rows),
            IntrospectionTable(name="sys_kafka_lag", columns=LAG_COLUMNS, rows=self._lag_rows),
        )

    def metric_families(self) -> Iterable[MetricFamily]:
        return kafka_metric_families(self.registry, self.reconciler, self._counters)

    async def aclose(self) -> None:
        await self.reconciler.aclose()
        if self.worker is not None:
            await self.worker.aclose()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.dead_letters.aclose()
        await self._registries.aclose()

    # ------------------------------------------------------------------------------------------- helpers

    async def _prestart_worker(self, worker: KafkaWorker) -> None:
        try:
            await worker.ensure_started()
        except Exception as exc:  # the consumers' own start reports it (and retries)
            logger.debug("kafka: worker process not started ahead (%s)", exc)

    def _make_consumer(self, sub: Subscription, cluster: KafkaCluster) -> SubscriptionConsumer | RemoteConsumer:
        if self.worker is not None:
            return RemoteConsumer(self.engine, self.worker, sub, cluster, self.counters)
        return SubscriptionConsumer(self, sub, cluster)

    # ------------------------------------------------------------------------------------------- ConsumerHost

    def service(self, name: str) -> Service | None:
        return self.engine.registry.service(name)

    def overloaded(self) -> bool:
        return self.engine.invoker.overloaded()

    async def submit(self, sub: Subscription, invokes: list[Invoke]) -> asyncio.Future[list[int]]:
        return await propose_invokes(self.engine, invokes)

    async def put_subscription(self, sub: Subscription) -> None:
        await self.engine.propose_metadata([PutMetadata(key=SUBSCRIPTION_PREFIX + sub.id, value=sub.to_row())])

    def count(self, sub: Subscription, *, ingested: int = 0, dead_lettered: int = 0) -> None:
        counters = self.counters(sub.id)
        counters.ingested += ingested
        counters.dead_lettered += dead_lettered

    def _cluster_properties(self, name: str) -> dict[str, str] | None:
        cluster = self.registry.clusters.get(name)
        return None if cluster is None else cluster.properties

    def schema_registry(self, sub: Subscription) -> SchemaRegistryClient | None:
        return self._registries.for_options(sub.options)

    def counters(self, subscription_id: str) -> SubscriptionCounters:
        """The subscription's counters for metrics (kept across consumer restarts)."""
        counters = self._counters.get(subscription_id)
        if counters is None:
            counters = self._counters[subscription_id] = SubscriptionCounters()
        return counters

    def status(self, subscription_id: str) -> dict[str, Any] | None:
        return self.reconciler.status(subscription_id)

    def _subscription_rows(self) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for sub in sorted(self.registry.subscriptions.values(), key=lambda s: s.id):
            st = self.reconciler.status(sub.id) or {}
            rows.append(
                (
                    sub.id, sub.source, sub.sink, sub.cluster, sub.topic, sub.service, sub.handler,
                    json.dumps(redact_properties(sub.options), sort_keys=True), sub.group_id, sub.generation,
                    sub.created_at or None,
                    bool(st.get("running")), int(st.get("ingested", 0)), int(st.get("dead_lettered", 0)),
                    bool(st.get("paused")), st.get("last_error"), sub.replay_pending,
                )
            )  # fmt: skip
        return rows

    def _lag_rows(self) -> list[tuple[Any, ...]]:
        """What the running consumers know: assigned partitions with position, committed offset and high water."""
        rows: list[tuple[Any, ...]] = []
        for sub in sorted(self.registry.subscriptions.values(), key=lambda s: s.id):
            st = self.reconciler.status(sub.id) or {}
            for p in st.get("partitions") or ():
                rows.append(
                    (
                        sub.id, sub.group_id, sub.topic, p.get("partition"), p.get("position"), p.get("committed"),
                        p.get("end_offset"), p.get("lag"),
                    )
                )  # fmt: skip
        return rows

    async def _send_failure(self, delivery: ExternalDelivery) -> None:
        ctx = decode_context(delivery.context)
        failure = delivery.failure
        await self.dead_letters.send(
            DeadLetter(
                cluster=str(ctx["cluster"]),
                topic=str(ctx["dlq"]),
                key=ctx.get("key"),
                value=ctx.get("value"),
                headers=error_headers(
                    stage="invocation",
                    code=failure.code,
                    message=failure.message,
                    subscription=str(ctx["subscription"]),
                    topic=str(ctx["topic"]),
                    partition=int(ctx["partition"]),
                    offset=int(ctx["offset"]),
                    original=tuple((str(n), bytes(v)) for n, v in ctx.get("headers") or ()),
                    invocation_id=str(InvocationId.from_bytes(delivery.invocation_id)),
                ),
            )
        )
        try:
            await self.engine.partitions[delivery.partition].propose(AckExternal(key=delivery.key))
        except (OverloadedError, LogError) as exc:
            logger.debug("ack of a dead letter not stored (%s); it may be produced again after a restart", exc)
        self.counters(str(ctx["subscription"])).dead_lettered += 1
        consumer = self.reconciler.consumer(str(ctx["subscription"]))
        if isinstance(consumer, SubscriptionConsumer | RemoteConsumer):
            consumer.dead_lettered += 1


SUBSCRIPTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT"), ("source", "TEXT"), ("sink", "TEXT"), ("cluster", "TEXT"), ("topic", "TEXT"),
    ("service_name", "TEXT"), ("handler_name", "TEXT"), ("options", "TEXT"), ("group_id", "TEXT"),
    ("generation", "INTEGER"), ("created_at", "TEXT"), ("running", "BOOLEAN"), ("ingested", "INTEGER"),
    ("dead_lettered", "INTEGER"), ("paused", "BOOLEAN"), ("last_error", "TEXT"), ("replaying", "BOOLEAN"),
)  # fmt: skip
LAG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("subscription_id", "TEXT"), ("group_id", "TEXT"), ("topic", "TEXT"), ("partition", "INTEGER"),
    ("position", "INTEGER"), ("committed_offset", "INTEGER"), ("end_offset", "INTEGER"), ("lag", "INTEGER"),
)  # fmt: skip


def _validate_options(options: Any) -> None:
    parse_format_options(options)

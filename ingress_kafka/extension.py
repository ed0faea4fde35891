"""Wires Kafka subscriptions into a running engine (loaded by name from ``EngineConfig.extensions``).

Control plane (``subscriptions``): the registry of clusters and subscriptions (rows stored through the engine),
their admin routes, and the reconciler that runs one consumer per subscription. Data plane (this package): the
consumers, record decoding, and the dead-letter sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from engine.errors import LogError, OverloadedError
from engine.ids import InvocationId
from engine.partition.effects import ExternalDelivery
from engine.partition.types import AckExternal
from ingress_kafka.consumer import SubscriptionConsumer
from ingress_kafka.dlq import DeadLetter, DeadLetterSender, RetryingQueue, error_headers
from ingress_kafka.formats import parse_format_options
from ingress_kafka.schema_registry import SchemaRegistryClient
from subscriptions.admin import SubscriptionsAdmin
from subscriptions.models import KafkaCluster, Subscription, decode_context
from subscriptions.reconciler import Reconciler
from subscriptions.registry import CLUSTER_PREFIX, SUBSCRIPTION_PREFIX, SubscriptionRegistry

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

DLQ_ROUTE = "kafka-dlq/"


class KafkaExtension:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
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
        self._session: aiohttp.ClientSession | None = None
        self._registries: dict[str, SchemaRegistryClient] = {}

    # ------------------------------------------------------------------------------------------- Extension

    def add_admin_routes(self, app: web.Application, prefixes: tuple[str, ...]) -> None:
        self.admin.add_routes(app, prefixes)

    async def start(self) -> None:
        for prefix in (CLUSTER_PREFIX, SUBSCRIPTION_PREFIX):
            for key, value in await self.engine.metadata_rows(prefix):
                self.registry.apply(key, value)
        self._tasks.append(asyncio.create_task(self._failures.run(), name="kafka-dlq"))
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

    async def aclose(self) -> None:
        await self.reconciler.aclose()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.dead_letters.aclose()
        for client in self._registries.values():
            await client.aclose()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------------------------------- helpers

    def _make_consumer(self, sub: Subscription, cluster: KafkaCluster) -> SubscriptionConsumer:
        return SubscriptionConsumer(self, sub, cluster)

    def _cluster_properties(self, name: str) -> dict[str, str] | None:
        cluster = self.registry.clusters.get(name)
        return None if cluster is None else cluster.properties

    def schema_registry(self, sub: Subscription) -> SchemaRegistryClient | None:
        url = sub.options.get("capstan.schema.registry.url")
        if not url:
            return None
        client = self._registries.get(url)
        if client is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            client = SchemaRegistryClient(url, session=self._session)
            self._registries[url] = client
        return client

    def status(self, subscription_id: str) -> dict[str, Any] | None:
        return self.reconciler.status(subscription_id)

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
        consumer = self.reconciler.consumer(str(ctx["subscription"]))
        if isinstance(consumer, SubscriptionConsumer):
            consumer.dead_lettered += 1


def _validate_options(options: Any) -> None:
    parse_format_options(options)

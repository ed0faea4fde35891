"""What the Kafka extension adds to ``GET /metrics``: consumer lag, records ingested, dead letters.

Counters live on the extension per subscription id (a consumer restarted after a failure keeps counting where its
predecessor stopped); lag comes from the running consumers (the partition's high water mark from the last fetch
minus the offset this process committed or found committed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.metrics import MetricFamily
from subscriptions.reconciler import Reconciler
from subscriptions.registry import SubscriptionRegistry

__all__ = ["SubscriptionCounters", "kafka_metric_families"]


@dataclass(slots=True)
class SubscriptionCounters:
    """Since the engine started, per subscription."""

    ingested: int = 0  # records that became durable invocations
    dead_lettered: int = 0  # records produced to the dead-letter topic (undecodable, or failed terminally)


def kafka_metric_families(
    registry: SubscriptionRegistry, reconciler: Reconciler, counters: Mapping[str, SubscriptionCounters]
) -> Iterable[MetricFamily]:
    lag: list[tuple[tuple[str, ...], float]] = []
    running: list[tuple[tuple[str, ...], float]] = []
    paused: list[tuple[tuple[str, ...], float]] = []
    ingested: list[tuple[tuple[str, ...], float]] = []
    dead: list[tuple[tuple[str, ...], float]] = []
    for sid in sorted(registry.subscriptions):
        sub = registry.subscriptions[sid]
        status = reconciler.status(sid) or {}
        for p in status.get("partitions") or ():
            if p.get("lag") is not None:
                lag.append(((sid, sub.topic, str(p["partition"])), float(p["lag"])))
        running.append(((sid,), 1.0 if status.get("running") else 0.0))
        paused.append(((sid,), 1.0 if status.get("paused") else 0.0))
        c = counters.get(sid) or SubscriptionCounters()
        ingested.append(((sid,), float(c.ingested)))
        dead.append(((sid,), float(c.dead_lettered)))
    return (
        MetricFamily(
            name="capstan_kafka_consumer_lag",
            kind="gauge",
            help="Records in the topic partition not yet committed by the subscription (high water - committed)",
            labels=("subscription", "topic", "partition"),
            samples=tuple(lag),
        ),
        MetricFamily(
            name="capstan_kafka_subscription_running",
            kind="gauge",
            help="1 while the subscription's consumer is running",
            labels=("subscription",),
            samples=tuple(running),
        ),
        MetricFamily(
            name="capstan_kafka_subscription_paused",
            kind="gauge",
            help="1 while the subscription's partitions are paused by backpressure (the invoker is backlogged)",
            labels=("subscription",),
            samples=tuple(paused),
        ),
        MetricFamily(
            name="capstan_kafka_records_ingested",
            kind="counter",
            help="Kafka records turned into durable invocations",
            labels=("subscription",),
            samples=tuple(ingested),
        ),
        MetricFamily(
            name="capstan_kafka_dead_letters",
            kind="counter",
            help="Records produced to the subscription's dead-letter topic (undecodable or failed terminally)",
            labels=("subscription",),
            samples=tuple(dead),
        ),
    )

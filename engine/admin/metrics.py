"""``GET /metrics`` on the admin port: Prometheus text exposition (``text/plain; version=0.0.4``).

Nothing is registered ahead of time and hot paths never touch ``prometheus_client``: each scrape reads the
components' ``statistics()`` snapshots (plain ints and :class:`~engine.metrics.Histogram` buckets), counts
invocations per status from the tables (on a worker thread), asks each extension for its families, and renders
them all with ``prometheus_client``'s exposition code. Metric names are listed in the README ("Metrics").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from engine import codec
from engine.admin.introspection import STATUS_NAME
from engine.metrics import HistogramSnapshot, MetricFamily
from engine.partition.types import InvocationStatus, Status
from engine.storage import keys
from engine.storage.store import Store

if TYPE_CHECKING:
    from engine.server import Engine

__all__ = ["collect", "count_invocations", "metrics_handler"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def metrics_handler(engine: Engine) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = generate_latest(_Families(await collect(engine)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    return handle


class _Families:
    """The ``Collector`` shape ``generate_latest`` renders: families collected once per scrape."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def count_invocations(store: Store) -> dict[str, int]:
    """Invocations per status (Restate's names: pending, scheduled, running, suspended, backing-off, paused,
    completed). Blocking: reads every active invocation's status row, and counts the completed ones still retained.
    """
    counts = dict.fromkeys(STATUS_NAME.values(), 0)
    for key, _ in store.scan(keys.ACTIVE):
        raw = store.get(keys.status(key[len(keys.ACTIVE) :]))
        if raw is None:
            continue
        st: InvocationStatus = codec.decode(raw)
        name = STATUS_NAME.get(Status(st.status))
        if name is not None:
            counts[name] += 1
    counts["completed"] = sum(1 for _ in store.scan(keys.RETENTION))
    return counts


async def collect(engine: Engine) -> list[Metric]:
    """Every family, from one look at the running engine."""
    by_status = await asyncio.to_thread(count_invocations, engine.store)
    families: list[Metric] = []
    add = families.append

    # -- invocations
    g = GaugeMetricFamily(
        "capstan_invocations",
        "Invocations by status, from the partitions' tables (completed: still retained)",
        labels=["status"],
    )
    for status, n in by_status.items():
        g.add_metric([status], n)
    add(g)
    parts = [p.statistics() for p in engine.partitions]
    c = CounterMetricFamily(
        "capstan_invocations_completed",
        "Invocations completed since start, by result (failure: a terminal error, kill or cancel)",
        labels=["result"],
    )
    c.add_metric(["success"], sum(s.completed_ok for s in parts))
    c.add_metric(["failure"], sum(s.completed_failed for s in parts))
    add(c)

    # -- invoker
    inv = engine.invoker.statistics()
    add(CounterMetricFamily("capstan_invoker_attempts_started", "Attempts started", value=inv.attempts_started))
    add(
        CounterMetricFamily(
            "capstan_invoker_attempts_failed",
            "Attempts that failed (error message, transport failure, timeout); retried per the retry policy",
            value=inv.attempts_failed,
        )
    )
    add(_histogram("capstan_invoker_attempt_duration_seconds", "Duration of one attempt", {(): inv.attempt_seconds}))
    add(GaugeMetricFamily("capstan_invoker_running_attempts", "Attempts holding a concurrency slot", value=inv.running))
    add(
        GaugeMetricFamily(
            "capstan_invoker_backlog",
            "Attempts waiting for a concurrency slot (over invoker.queue_limit: ingress answers 503, Kafka pauses)",
            value=inv.waiting,
        )
    )
    limit = engine.config.invoker.concurrency_limit
    add(GaugeMetricFamily("capstan_invoker_concurrency_limit", "invoker.concurrency_limit", value=limit))

    # -- log and partitions
    logs = [(str(p.id), p.log_statistics()) for p in engine.partitions]
    add(
        _histogram(
            "capstan_log_append_duration_seconds",
            "Writing one batch of records (group commit) and making it durable",
            {(pid,): s.append_seconds for pid, s in logs},
            label="partition",
        )
    )
    add(
        _histogram(
            "capstan_log_fsync_duration_seconds",
            "One fdatasync of a log segment (fsync policy 'fsync')",
            {(pid,): s.fsync_seconds for pid, s in logs},
            label="partition",
        )
    )
    for name, doc, kind, values in (
        ("capstan_log_records", "Records appended", "counter", [s.records for _, s in logs]),
        ("capstan_log_batches", "Batches written (group commits)", "counter", [s.batches for _, s in logs]),
        ("capstan_log_fsyncs", "Data syncs of segment files", "counter", [s.fsyncs for _, s in logs]),
        ("capstan_log_written_bytes", "Bytes written, framing included", "counter", [s.bytes_written for _, s in logs]),
        ("capstan_log_queue_records", "Records accepted, not yet durable (log writer queue)", "gauge",
         [s.queued for _, s in logs]),
        ("capstan_log_last_lsn", "LSN of the last durable record", "gauge", [s.last_lsn for _, s in logs]),
        ("capstan_partition_applied_lsn", "LSN of the last record applied to the tables", "gauge",
         [s.applied_lsn for s in parts]),
        ("capstan_partition_pending_records", "Records proposed, not yet applied", "gauge",
         [s.pending for s in parts]),
        ("capstan_shuffler_queue", "Outbox rows waiting for delivery to another partition", "gauge",
         [s.statistics().queued for s in engine.shufflers]),
    ):  # fmt: skip
        family = _per_partition(name, doc, kind)
        for pid, value in enumerate(values):
            family.add_metric([str(pid)], value)
        add(family)

    # -- ingress and timers
    if engine.ingress_statistics is not None:
        ingress = engine.ingress_statistics()
        add(GaugeMetricFamily("capstan_ingress_in_flight_requests", "HTTP ingress requests", value=ingress.in_flight))
        add(
            GaugeMetricFamily(
                "capstan_ingress_concurrency_limit", "ingress_http.concurrent_requests_limit", value=ingress.limit
            )
        )
    timers = engine.timers.statistics()
    add(GaugeMetricFamily("capstan_timers_armed", "Durable timers waiting to fire", value=timers.armed))
    add(CounterMetricFamily("capstan_timers_fired", "Timers fired since start", value=timers.fired))

    # -- extensions (Kafka subscriptions: lag, dead letters)
    for extension in engine.extensions:
        families.extend(_convert(f) for f in extension.metric_families())
    return families


def _per_partition(name: str, doc: str, kind: str) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=["partition"])
    return GaugeMetricFamily(name, doc, labels=["partition"])


def _histogram(
    name: str, doc: str, series: dict[tuple[str, ...], HistogramSnapshot], *, label: str | None = None
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label] if label else None)
    for labels, snap in series.items():
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip((*snap.bounds, float("inf")), snap.counts, strict=True):
            cumulative += n
            buckets.append((_le(bound), cumulative))
        family.add_metric(list(labels), buckets, sum_value=snap.sum)
    return family


def _le(bound: float) -> str:
    # Prometheus' spelling of bucket bounds ("+Inf", "0.005", "1.0"), as prometheus_client writes them.
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _convert(family: MetricFamily) -> Metric:
    out: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        out = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
    else:
        out = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
    for values, value in family.samples:
        out.add_metric(list(values), value)
    return out

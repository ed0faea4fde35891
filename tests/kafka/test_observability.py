"""Kafka subscriptions in GET /metrics (lag per partition, records ingested, dead letters) and a record's W3C
``traceparent`` header continued by the invocation it becomes (real broker, in-process SDK apps)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from engine.tracing import parse_traceparent
from tests.conftest import EngineFactory
from tests.engine.test_metrics import scrape, total
from tests.kafka.helpers import call, kafka_engine, subscribe, until

pytestmark = pytest.mark.timeout(90)

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_lag_goes_to_zero_and_dead_letters_are_counted(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    good = [(f"k{i}", json.dumps({"id": i}), (), i % 2) for i in range(8)]
    undecodable = [("b0", "not json {", (), 0), ("b1", "[1, 2", (), 1)]  # dead-lettered by the consumer
    failing = [(f"f{i}", json.dumps({"id": 100 + i, "fail": True}), (), i) for i in range(2)]  # fail terminally
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await produce(topic, good + undecodable + failing)
        sid = await subscribe(
            http, engine, topic, "Judge/check", **{"capstan.value.format": "json", "capstan.dlq.topic": dlq}
        )

        async def metrics() -> dict[str, Any]:
            _, m = await scrape(http, engine)
            return m

        def settled(m: dict[str, Any]) -> bool:
            return (
                total(m, "capstan_kafka_dead_letters_total", subscription=sid) == len(undecodable) + len(failing)
                and len(m.get("capstan_kafka_consumer_lag", [])) == 2
                and total(m, "capstan_kafka_consumer_lag", subscription=sid) == 0
            )

        m = await until(metrics, settled, within=60, what="lag 0 and every poisoned record dead-lettered")
        lag = {labels["partition"]: v for labels, v in m["capstan_kafka_consumer_lag"]}
        assert lag == {"0": 0, "1": 0}
        assert {labels["topic"] for labels, _ in m["capstan_kafka_consumer_lag"]} == {topic}
        assert total(m, "capstan_kafka_records_ingested_total", subscription=sid) == len(good) + len(failing)
        assert total(m, "capstan_kafka_subscription_running", subscription=sid) == 1
        assert total(m, "capstan_kafka_subscription_paused", subscription=sid) == 0
        # Dead letters for terminal failures are sent after the invocation failed.
        assert total(m, "capstan_invocations_completed_total", result="failure") == len(failing)
        # Each good record's invocation completes, and so does the KafkaCounter call it makes.
        await until(
            metrics,
            lambda m: total(m, "capstan_invocations_completed_total", result="success") == 2 * len(good),
            within=30,
            what="every good record handled",
        )


async def test_a_records_traceparent_is_continued(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=1)
    records = [("traced", '"one"', [("traceparent", CALLER)]), ("traced", '"two"', [])]
    async with kafka_engine(engine_factory, http, kafka_bootstrap, app="tests.services.tracing_app:app") as engine:
        await produce(topic, records)
        await subscribe(http, engine, topic, "TraceLog/record")
        seen = await until(
            lambda: call(http, engine, "/TraceLog/traced/seen"), lambda s: len(s) == 2, within=30, what="both seen"
        )
    with_header, without = seen
    assert with_header["input"] == CALLER  # the record's own headers reach the handler
    attempt = parse_traceparent(with_header["attempt"])
    assert attempt is not None and attempt.trace_id == CALLER[3:35] and attempt.span_id != CALLER[36:52]
    fresh = parse_traceparent(without["attempt"])
    assert without["input"] == "" and fresh is not None and fresh.trace_id != attempt.trace_id

"""Kafka subscriptions in the admin API's SQL introspection: ``sys_subscription`` and ``sys_kafka_lag`` (consumer
lag per subscription partition), and ``sys_invocation.invoked_by = 'subscription'`` (real broker, in-process SDK
app)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import EngineFactory
from tests.kafka.helpers import admin, kafka_engine, subscribe, until

pytestmark = pytest.mark.timeout(90)


async def test_subscription_tables(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    await produce(topic, [(f"k{i % 3}", str(i), (), i % 2) for i in range(6)])
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")

        async def query(sql: str) -> list[dict[str, Any]]:
            status, body = await admin(http, engine, "POST", "/query", {"query": sql})
            assert status == 200, body
            return list(body["rows"])

        lag = await until(
            lambda: query("SELECT * FROM sys_kafka_lag ORDER BY partition"),
            lambda rows: len(rows) == 2 and all(r["lag"] == 0 for r in rows),
            within=60,
            what="both partitions consumed",
        )
        assert [(r["subscription_id"], r["topic"], r["partition"]) for r in lag] == [(sid, topic, 0), (sid, topic, 1)]
        assert [(r["committed_offset"], r["end_offset"]) for r in lag] == [(3, 3), (3, 3)]

        subs = await query(
            "SELECT id, source, sink, service_name, handler_name, running, ingested FROM sys_subscription"
        )
        assert subs == [
            {
                "id": sid,
                "source": f"kafka://local/{topic}",
                "sink": "service://KafkaCounter/record",
                "service_name": "KafkaCounter",
                "handler_name": "record",
                "running": True,
                "ingested": 6,
            }
        ]
        by = await query(
            "SELECT invoked_by, invoked_by_subscription_id AS sub, count(*) AS n FROM sys_invocation "
            "WHERE target_service_name = 'KafkaCounter' GROUP BY 1, 2"
        )
        assert by == [{"invoked_by": "subscription", "sub": sid, "n": 6}]
        joined = await query(
            "SELECT s.sink, sum(l.lag) AS lag FROM sys_subscription s JOIN sys_kafka_lag l ON l.subscription_id = s.id "
            "GROUP BY s.sink"
        )
        assert joined == [{"sink": "service://KafkaCounter/record", "lag": 0}]

"""Kafka subscriptions end to end: a real broker, the official Python SDK in-process, an in-process engine."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import EngineFactory
from tests.kafka.helpers import admin, counter_states, kafka_engine, subscribe, until
from tests.kafka.test_exactly_once import make_records


async def _produce_counter_events(produce: Any, topic: str, n: int, keys: int, seed: int = 1) -> dict[str, int]:
    """n records with keys k0..k{keys-1}; each record's value is its key's next sequence number."""
    records, expected = make_records(n, keys, seed)
    await produce(topic, records)
    return expected


def _assert_exact_and_ordered(states: dict[str, dict[str, Any]], expected: dict[str, int]) -> None:
    for key, n in expected.items():
        st = states[key]
        assert st["count"] == n, (key, st["count"], n)
        assert st["seqs"] == list(range(n)), f"{key}: per-key order broken or duplicates: {st['seqs'][:20]}"


async def test_keyed_records_exactly_once_in_order(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=4)
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        expected = await _produce_counter_events(produce, topic, 2000, 50)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")
        keys = sorted(expected)

        async def total() -> int:
            return sum(s["count"] for s in (await counter_states(http, engine, keys)).values())

        await until(total, lambda t: t >= 2000, within=120, what="2000 records ingested")
        _assert_exact_and_ordered(await counter_states(http, engine, keys), expected)
        status, sub = await admin(http, engine, "GET", f"/subscriptions/{sid}")
        assert status == 200
        assert sub["status"]["ingested"] == 2000
        assert sum(p["lag"] for p in sub["status"]["partitions"]) == 0

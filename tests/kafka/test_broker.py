"""The test broker itself: metadata, keyed records with headers through a consumer group with manual commits, and
durability of records and committed offsets across a graceful restart and a kill -9 (same ports, same data)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka.broker import KafkaBroker

DRAIN_TIMEOUT_S = 30.0


def consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )


async def drain(c: AIOKafkaConsumer, count: int) -> list[Any]:
    """Exactly ``count`` records (fails on fewer within the timeout, or on more in one poll)."""
    records: list[Any] = []
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        while len(records) < count:
            batches = await c.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    assert len(records) == count
    return records


async def committed(c: AIOKafkaConsumer, topic: str, partitions: int) -> dict[int, int | None]:
    return {p: await c.committed(TopicPartition(topic, p)) for p in range(partitions)}


def keyed_records(start: int, count: int) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    return [
        (f"key-{i % 10}", json.dumps({"seq": i}), [("seq", str(i).encode()), ("blob", b"\x00\xff"), ("empty", b"")])
        for i in range(start, start + count)
    ]


def as_tuple(record: Any) -> tuple[Any, ...]:
    return (
        record.partition,
        record.offset,
        record.key.decode(),
        record.value.decode(),
        [(name, value) for name, value in record.headers],
    )


def require_own_broker(broker: KafkaBroker | None) -> KafkaBroker:
    if broker is None:
        pytest.skip("the Kafka cluster is external (KAFKA_BOOTSTRAP_SERVERS or testcontainers): cannot restart it")
    return broker


async def test_broker_answers_metadata(kafka_bootstrap: str, kafka_broker: KafkaBroker | None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert cluster["brokers"], cluster
    if kafka_broker is not None:
        assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", kafka_broker.port)]
        assert kafka_bootstrap == kafka_broker.bootstrap_servers == f"127.0.0.1:{kafka_broker.port}"


async def test_records_and_commits_survive_restart(
    kafka_bootstrap: str, kafka_broker: KafkaBroker | None, topic_factory, produce
) -> None:
    broker = require_own_broker(kafka_broker)
    topic = await topic_factory(partitions=4)
    sent = keyed_records(0, 100)
    positions = await produce(topic, sent)
    assert len(set(positions)) == 100

    group = f"g-{uuid.uuid4().hex[:8]}"
    live = consumer(kafka_bootstrap, topic, group)  # stays subscribed across the restart, as an ingestor would
    await live.start()
    try:
        received = await drain(live, 100)
        await live.commit()
        before = await committed(live, topic, 4)

        # Every record came back intact, each key stayed on one partition, and the commits match what was read.
        by_position = {(r.partition, r.offset): r for r in received}
        assert set(by_position) == set(positions)
        for (key, value, headers), position in zip(sent, positions, strict=True):
            assert as_tuple(by_position[position])[2:] == (key, value, headers)
        assert all(len({r.partition for r in received if r.key == k}) == 1 for k in {r.key for r in received})
        per_partition = Counter(r.partition for r in received)
        assert before == {p: per_partition[p] for p in range(4)}
        assert len(per_partition) > 1  # 10 keys over 4 partitions

        old_pid, address = broker.pid, broker.bootstrap_servers
        await asyncio.to_thread(broker.restart)
        assert broker.pid != old_pid and broker.is_running()
        assert broker.bootstrap_servers == address

        # The open consumer reconnects and gets only what is produced after the restart.
        more = await produce(topic, keyed_records(100, 10))
        after_restart = await drain(live, 10)
        assert {(r.partition, r.offset) for r in after_restart} == set(more)
        await live.commit()
    finally:
        await live.stop()

    # A new member of the group resumes from the committed offsets: nothing left to read.
    resumed = consumer(kafka_bootstrap, topic, group)
    await resumed.start()
    try:
        expected = {p: per_partition[p] + Counter(p_ for p_, _ in more)[p] for p in range(4)}
        assert await committed(resumed, topic, 4) == expected
        assert await resumed.getmany(timeout_ms=1000) == {}
    finally:
        await resumed.stop()

    # A new group replays all 110 records from the restarted broker's log.
    fresh = consumer(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    await fresh.start()
    try:
        replayed = {(r.partition, r.offset): as_tuple(r) for r in await drain(fresh, 110)}
    finally:
        await fresh.stop()
    assert {pos: as_tuple(r) for pos, r in by_position.items()}.items() <= replayed.items()


async def test_kill_and_restart(kafka_bootstrap: str, kafka_broker: KafkaBroker | None, topic_factory, produce) -> None:
    broker = require_own_broker(kafka_broker)
    topic = await topic_factory(partitions=2)
    positions = await produce(topic, keyed_records(0, 50))
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = consumer(kafka_bootstrap, topic, group)
    await c.start()
    try:
        await drain(c, 50)
        await c.commit()
        before = await committed(c, topic, 2)
    finally:
        await c.stop()

    # SIGKILL: no controlled shutdown; acked records and commits are in the page cache, so they survive.
    await asyncio.to_thread(broker.kill)
    assert not broker.is_running()
    await asyncio.to_thread(broker.start)
    more = await produce(topic, keyed_records(50, 5))

    c = consumer(kafka_bootstrap, topic, group)
    await c.start()
    try:
        assert await committed(c, topic, 2) == before
        assert {(r.partition, r.offset) for r in await drain(c, 5)} == set(more)
    finally:
        await c.stop()

    # And once more through restart(hard=True).
    await asyncio.to_thread(broker.restart, hard=True)
    fresh = consumer(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex[:8]}")
    await fresh.start()
    try:
        assert {(r.partition, r.offset) for r in await drain(fresh, 55)} == set(positions) | set(more)
    finally:
        await fresh.stop()

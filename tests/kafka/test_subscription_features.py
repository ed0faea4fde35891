"""Kafka subscription features end to end (real broker, official Python SDK in-process, in-process engine): what a
handler sees of a record, the admin API's validation, dead-letter topics (JSON and Avro, inline schema and schema
registry), a poison record without a DLQ, binary keys, per-partition ordering for plain services, backpressure,
a broker restart mid-ingestion, and a subscription deleted and re-created on the same consumer group."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import fastavro
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from engine.server import Engine
from tests.conftest import EngineFactory
from tests.kafka.broker import KafkaBroker
from tests.kafka.helpers import admin, call, counter_states, kafka_engine, subscribe, until

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------


async def sub_status(http: aiohttp.ClientSession, engine: Engine, sid: str) -> dict[str, Any]:
    status, body = await admin(http, engine, "GET", f"/subscriptions/{sid}")
    assert status == 200, body
    return dict(body.get("status") or {})


async def read_topic(
    bootstrap: str, topic: str, count: int, *, within: float = 30.0, settle: float = 1.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the earliest offset: waits for ``count`` of them, then ``settle`` seconds more
    so that extra records (duplicates) are seen too."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(records) < count and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        settle_until = loop.time() + settle
        while loop.time() < settle_until:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def header_map(record: ConsumerRecord) -> dict[str, str]:
    return {name: (value or b"").decode("utf-8", errors="replace") for name, value in record.headers}


def unpadded_b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def counter(http: aiohttp.ClientSession, engine: Engine, key: str) -> dict[str, Any]:
    result: dict[str, Any] = await call(http, engine, f"/KafkaCounter/{key}/state")
    return result


def keyed_events(
    n: int, keys: int, *, seed: int, start: dict[str, int] | None = None
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """n records over keys k0..k{keys-1}; a record's value is its key's next sequence number (continuing ``start``)."""
    rng = random.Random(seed)
    next_seq = dict(start or {})
    records = []
    for _ in range(n):
        key = f"k{rng.randrange(keys)}"
        seq = next_seq.get(key, 0)
        next_seq[key] = seq + 1
        records.append((key, str(seq)))
    return records, next_seq


def assert_exact_and_ordered(states: dict[str, dict[str, Any]], expected: dict[str, int]) -> None:
    wrong = {k: (states[k]["count"], n) for k, n in expected.items() if states[k]["count"] != n}
    assert not wrong, f"wrong counts (got, want): {list(wrong.items())[:10]}"
    for key, n in expected.items():
        assert states[key]["seqs"] == list(range(n)), f"{key}: order broken or duplicates: {states[key]['seqs'][:30]}"


async def read_counters(http: aiohttp.ClientSession, engine: Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    """KafkaCounter states, a few reads at a time. A read the ingress sheds (503 while the invoker backlog is full,
    which the reads themselves add to) is tried again."""
    sem = asyncio.Semaphore(2)

    async def one(key: str) -> tuple[str, dict[str, Any]]:
        async with sem:
            while True:
                async with http.post(f"{engine.ingress_url}/KafkaCounter/{key}/state") as resp:
                    if resp.status != 503:
                        assert resp.status == 200, (key, resp.status, await resp.text())
                        return key, await resp.json()
                await asyncio.sleep(0.05)

    return dict(await asyncio.gather(*(one(k) for k in keys)))


async def wait_total(
    http: aiohttp.ClientSession, engine: Engine, expected: dict[str, int], *, within: float = 60.0
) -> dict[str, dict[str, Any]]:
    keys = sorted(expected)
    want = sum(expected.values())

    async def probe() -> dict[str, dict[str, Any]]:
        return await read_counters(http, engine, keys)

    states: dict[str, dict[str, Any]] = await until(
        probe,
        lambda st: sum(s["count"] for s in st.values()) >= want,
        within=within,
        what=f"{want} records counted",
    )
    return states


EVENT_SCHEMA = {
    "type": "record",
    "name": "Event",
    "namespace": "capstan.test",
    "fields": [{"name": "id", "type": "int"}, {"name": "name", "type": "string"}],
}


def avro_body(datum: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(EVENT_SCHEMA), datum)
    return out.getvalue()


def confluent(schema_id: int, datum: dict[str, Any]) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + avro_body(datum)


@pytest.fixture
async def schema_registry() -> AsyncIterator[str]:
    """A tiny Confluent-compatible registry on 127.0.0.1: schema id 1 is EVENT_SCHEMA, every other id is unknown."""

    async def by_id(request: web.Request) -> web.Response:
        if request.match_info["id"] == "1":
            return web.json_response({"schema": json.dumps(EVENT_SCHEMA)})
        return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)

    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", by_id)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------------------------------------------
# 1. What a handler sees
# --------------------------------------------------------------------------------------------------------------


async def test_handler_sees_value_headers_and_key(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=3)
    timestamp = 1_700_000_000_123
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        [(partition, offset)] = await produce(
            topic, [("insp", json.dumps({"a": 1}), [("trace", "t1"), ("bin", "x")], None, timestamp)]
        )
        sid = await subscribe(http, engine, topic, "Inspector/capture")
        seen = await until(
            lambda: call(http, engine, "/Inspector/insp/seen"), lambda s: len(s) >= 1, within=30, what="capture"
        )
        assert len(seen) == 1, seen
        first = seen[0]
        assert first["body"] == {"a": 1}
        assert first["key"] == "insp"
        headers = first["headers"]
        assert headers["kafka.topic"] == topic
        assert headers["kafka.partition"] == str(partition)
        assert headers["kafka.offset"] == str(offset)
        assert headers["kafka.timestamp"] == str(timestamp)
        assert headers["kafka.key"] == unpadded_b64(b"insp") == "aW5zcA"
        assert headers["restate.subscription.id"] == sid
        assert headers["trace"] == "t1"
        assert headers["bin"] == "x"


# --------------------------------------------------------------------------------------------------------------
# 2. Admin API
# --------------------------------------------------------------------------------------------------------------


async def test_admin_validation_and_idempotency(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any
) -> None:
    topic = await topic_factory(partitions=1)
    source = f"kafka://local/{topic}"
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:

        async def create(body: dict[str, Any]) -> tuple[int, Any]:
            return await admin(http, engine, "POST", "/subscriptions", body)

        sink = "service://KafkaCounter/record"
        bad: dict[str, tuple[dict[str, Any], str]] = {
            "unknown cluster": ({"source": f"kafka://nope/{topic}", "sink": sink}, "nope"),
            "unknown service": ({"source": source, "sink": "service://Nope/record"}, "Nope"),
            "unknown handler": ({"source": source, "sink": "service://KafkaCounter/nope"}, "nope"),
            "bad source scheme": ({"source": f"http://local/{topic}", "sink": sink}, "kafka://"),
            "bad sink scheme": ({"source": source, "sink": "http://KafkaCounter/record"}, "service://"),
            "unknown capstan option": (
                {"source": source, "sink": sink, "options": {"capstan.dlq.topik": "x"}},
                "capstan.dlq.topik",
            ),
            "bad value format": (
                {"source": source, "sink": sink, "options": {"capstan.value.format": "xml"}},
                "capstan.value.format",
            ),
            "bad ordering": ({"source": source, "sink": sink, "options": {"capstan.ordering": "key"}}, "ordering"),
            "avro without schema": (
                {"source": source, "sink": sink, "options": {"capstan.value.format": "avro"}},
                "capstan.schema.registry.url",
            ),
            "extra field": ({"source": source, "sink": sink, "nope": 1}, "nope"),
        }
        for what, (body, mentions) in bad.items():
            status, answer = await create(body)
            assert status == 400, (what, status, answer)
            assert mentions in answer["message"], (what, answer)

        body = {"source": source, "sink": sink, "options": {"auto.offset.reset": "earliest"}}
        status, first = await create(body)
        assert status == 201, first
        status, again = await create(body)
        assert status == 200, again
        assert again["id"] == first["id"]
        status, other = await create({**body, "options": {"auto.offset.reset": "latest"}})
        assert status == 201 and other["id"] != first["id"], other
        status, judge = await create({"source": source, "sink": "service://Judge/check"})
        assert status == 201, judge

        status, listed = await admin(http, engine, "GET", "/subscriptions?sink=" + sink)
        assert status == 200
        assert sorted(s["id"] for s in listed["subscriptions"]) == sorted([first["id"], other["id"]])
        status, listed = await admin(http, engine, "GET", "/subscriptions")
        assert len(listed["subscriptions"]) == 3
        status, one = await admin(http, engine, "GET", f"/subscriptions/{first['id']}")
        assert status == 200 and one["source"] == source and one["sink"] == sink and "status" in one

        status, _ = await admin(http, engine, "DELETE", f"/subscriptions/{other['id']}")
        assert status == 202
        status, gone = await admin(http, engine, "GET", f"/subscriptions/{other['id']}")
        assert status == 404, gone
        status, _ = await admin(http, engine, "DELETE", f"/subscriptions/{other['id']}")
        assert status == 404

        # Clusters.
        status, answer = await admin(http, engine, "POST", "/kafka-clusters", {"name": "c", "properties": {}})
        assert status == 400 and "bootstrap.servers" in answer["message"], answer
        status, answer = await admin(
            http, engine, "POST", "/kafka-clusters", {"name": "bad name!", "properties": {"bootstrap.servers": "h:1"}}
        )
        assert status == 400, answer
        local = {"bootstrap.servers": kafka_bootstrap}
        status, answer = await admin(
            http, engine, "POST", "/kafka-clusters", {"name": "local", "properties": {"bootstrap.servers": "other:1"}}
        )
        assert status == 409, answer
        status, answer = await admin(http, engine, "POST", "/kafka-clusters", {"name": "local", "properties": local})
        assert status == 200 and answer["properties"] == local, answer

        secret = {
            "bootstrap.servers": "127.0.0.1:1",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "me",
            "sasl.password": "hunter2",
        }
        status, answer = await admin(http, engine, "POST", "/kafka-clusters", {"name": "sec", "properties": secret})
        assert status == 201, answer
        assert answer["properties"]["sasl.password"] == "***"
        status, got = await admin(http, engine, "GET", "/kafka-clusters/sec")
        assert status == 200
        assert got["properties"] == {**secret, "sasl.password": "***"}
        assert got["subscriptions"] == []
        status, listed = await admin(http, engine, "GET", "/kafka-clusters")
        assert [c["name"] for c in listed["clusters"]] == ["local", "sec"]
        assert "hunter2" not in json.dumps(listed)

        patched = {"bootstrap.servers": "127.0.0.1:2", "client.id": "capstan"}
        status, answer = await admin(http, engine, "PATCH", "/kafka-clusters/sec", {"properties": patched})
        assert status == 200 and answer["properties"] == patched, answer
        status, got = await admin(http, engine, "GET", "/kafka-clusters/sec")
        assert got["properties"] == patched
        status, answer = await admin(http, engine, "PATCH", "/kafka-clusters/sec", {"properties": {"a": "b"}})
        assert status == 400, answer
        status, answer = await admin(http, engine, "PATCH", "/kafka-clusters/nope", {"properties": patched})
        assert status == 404, answer

        status, got = await admin(http, engine, "GET", "/kafka-clusters/local")
        assert sorted(s["id"] for s in got["subscriptions"]) == sorted([first["id"], judge["id"]])
        status, answer = await admin(http, engine, "DELETE", "/kafka-clusters/local")
        assert status == 409 and first["id"] in answer["message"], answer
        status, _ = await admin(http, engine, "DELETE", "/kafka-clusters/sec")
        assert status == 202
        status, _ = await admin(http, engine, "GET", "/kafka-clusters/sec")
        assert status == 404


# --------------------------------------------------------------------------------------------------------------
# 3. Dead-letter topics
# --------------------------------------------------------------------------------------------------------------


async def test_poison_records_go_to_the_dead_letter_topic(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    good = [(None, json.dumps({"id": i})) for i in range(1, 21)]
    bad_json = b'{"id": 50, oops'
    rejected = json.dumps({"id": 99, "fail": True}).encode()
    records = [
        *good[:10],
        (None, bad_json, [("origin", "bad-json")], 0),
        *good[10:15],
        (None, rejected, [("origin", "rejected")], 1),
        *good[15:],
    ]
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        placed = await produce(topic, records)
        bad_at, rejected_at = placed[10], placed[16]
        sid = await subscribe(
            http, engine, topic, "Judge/check", **{"capstan.value.format": "json", "capstan.dlq.topic": dlq}
        )
        state = await until(
            lambda: counter(http, engine, "judged"), lambda s: s["count"] >= len(good), within=30, what="judged"
        )
        letters = await read_topic(kafka_bootstrap, dlq, 2, settle=2.0)
        state = await counter(http, engine, "judged")
        assert state["count"] == len(good)
        assert sorted(state["seqs"]) == list(range(1, 21))

        assert len(letters) == 2, [header_map(r) for r in letters]
        by_stage = {header_map(r)["capstan.error.stage"]: r for r in letters}
        assert set(by_stage) == {"decode-value", "invocation"}

        decode = by_stage["decode-value"]
        h = header_map(decode)
        assert decode.value == bad_json and decode.key is None
        assert h["capstan.error.code"] == "400"
        assert "not valid JSON" in h["capstan.error.message"]
        assert h["capstan.subscription.id"] == sid
        assert (h["kafka.topic"], h["kafka.partition"], h["kafka.offset"]) == (topic, *map(str, bad_at))
        assert h["origin"] == "bad-json"
        assert "capstan.invocation.id" not in h
        names = [n for n, _ in decode.headers]
        assert names.index("origin") > names.index("kafka.offset"), "original headers come after Capstan's"

        failed = by_stage["invocation"]
        h = header_map(failed)
        assert failed.value == rejected
        assert h["capstan.error.code"] == "422"
        assert "rejected" in h["capstan.error.message"]
        assert h["capstan.subscription.id"] == sid
        assert (h["kafka.topic"], h["kafka.partition"], h["kafka.offset"]) == (topic, *map(str, rejected_at))
        assert h["capstan.invocation.id"].startswith("inv_")
        assert h["origin"] == "rejected"

        status = await until(
            lambda: sub_status(http, engine, sid), lambda s: s.get("dead_lettered") == 2, within=10, what="status"
        )
        assert status["ingested"] == len(good) + 1  # the rejected record became an invocation
        assert status["last_error"] is None


async def test_avro_values_with_an_inline_schema(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=1)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    valid = confluent(42, {"id": 1, "name": "one"})
    bad_magic = b"\x01" + valid[1:]
    truncated = valid[:-2]
    records = [
        ("a", valid),
        ("a", bad_magic),
        ("a", confluent(7, {"id": 2, "name": "two"})),  # the frame's id is not looked up with an inline schema
        ("b", truncated),
        ("b", confluent(42, {"id": 3, "name": "thr\u00e9e"})),
    ]
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        placed = await produce(topic, records)
        options = {
            "capstan.value.format": "avro",
            "capstan.value.schema": json.dumps(EVENT_SCHEMA),
            "capstan.dlq.topic": dlq,
        }
        sid = await subscribe(http, engine, topic, "Inspector/capture", **options)
        seen_b = await until(
            lambda: call(http, engine, "/Inspector/b/seen"), lambda s: len(s) >= 1, within=30, what="b captured"
        )
        seen_a = await call(http, engine, "/Inspector/a/seen")
        assert [s["body"] for s in seen_a] == [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
        assert [s["body"] for s in seen_b] == [{"id": 3, "name": "thr\u00e9e"}]

        letters = await read_topic(kafka_bootstrap, dlq, 2)
        assert len(letters) == 2
        letters.sort(key=lambda r: int(header_map(r)["kafka.offset"]))
        assert [r.value for r in letters] == [bad_magic, truncated]
        assert [r.key for r in letters] == [b"a", b"b"]
        magic, short = (header_map(r) for r in letters)
        assert magic["capstan.error.stage"] == short["capstan.error.stage"] == "decode-value"
        assert magic["capstan.error.code"] == short["capstan.error.code"] == "400"
        assert "magic byte" in magic["capstan.error.message"]
        assert "truncated" in short["capstan.error.message"]
        assert [magic["kafka.offset"], short["kafka.offset"]] == [str(placed[1][1]), str(placed[3][1])]
        status = await sub_status(http, engine, sid)
        assert status["dead_lettered"] == 2 and status["ingested"] == 3


async def test_avro_values_with_a_schema_registry(
    engine_factory: EngineFactory,
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    topic_factory: Any,
    produce: Any,
    schema_registry: str,
) -> None:
    topic = await topic_factory(partitions=1)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    unknown = confluent(7, {"id": 7, "name": "seven"})
    records = [
        ("r", confluent(1, {"id": 1, "name": "one"})),
        ("r", unknown),
        ("r", confluent(1, {"id": 2, "name": "two"})),
    ]
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        placed = await produce(topic, records)
        options = {
            "capstan.value.format": "avro",
            "capstan.schema.registry.url": schema_registry,
            "capstan.dlq.topic": dlq,
        }
        sid = await subscribe(http, engine, topic, "Inspector/capture", **options)
        seen = await until(
            lambda: call(http, engine, "/Inspector/r/seen"), lambda s: len(s) >= 2, within=30, what="captured"
        )
        assert [s["body"] for s in seen] == [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
        [letter] = await read_topic(kafka_bootstrap, dlq, 1)
        h = header_map(letter)
        assert letter.value == unknown
        assert h["capstan.error.stage"] == "decode-value"
        assert h["capstan.error.code"] == "400"
        assert "schema id 7" in h["capstan.error.message"]
        assert h["kafka.offset"] == str(placed[1][1])
        status = await sub_status(http, engine, sid)
        assert status["dead_lettered"] == 1 and status["ingested"] == 2


# --------------------------------------------------------------------------------------------------------------
# 4. A poison record without a DLQ
# --------------------------------------------------------------------------------------------------------------


async def test_poison_without_dlq_blocks_and_loses_nothing(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=1)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    before, after = 5, 7
    records = [
        *[("blk", str(i)) for i in range(before)],
        ("blk", b"{not json"),
        *[("blk", str(i)) for i in range(before, before + after)],
    ]
    group = f"capstan-test-{uuid.uuid4().hex[:8]}"
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        placed = await produce(topic, records)
        poison_offset = placed[before][1]
        options = {"capstan.value.format": "json", "group.id": group}
        sid = await subscribe(http, engine, topic, "KafkaCounter/record", **options)
        status = await until(
            lambda: sub_status(http, engine, sid),
            lambda s: f"offset {poison_offset}" in (s.get("last_error") or ""),
            within=30,
            what="last_error names the poison record",
        )
        assert "capstan.dlq.topic" in status["last_error"], status
        assert "not valid JSON" in status["last_error"], status

        # Blocked: the records before the poison one are counted once (the consumer restarts and re-reads them:
        # dedup), the ones after it are not processed; the error stays visible while the consumer retries.
        errors = []
        for _ in range(100):  # across several consumer restarts (back-off 0.2 s, 0.4 s, ...)
            errors.append((await sub_status(http, engine, sid)).get("last_error"))
            await asyncio.sleep(0.03)
        state = await counter(http, engine, "blk")
        assert state == {"count": before, "seqs": list(range(before))}
        assert all(e and f"offset {poison_offset}" in e for e in errors), errors
        status = await sub_status(http, engine, sid)
        [part] = status["partitions"] or [{"committed": None}]
        assert (part["committed"] or 0) <= poison_offset, status  # never committed past the poison record

        # The operator deletes the subscription and re-creates it on the same group with a DLQ: the poison record
        # moves aside and the rest follows, none of the first ones twice.
        status_code, _ = await admin(http, engine, "DELETE", f"/subscriptions/{sid}")
        assert status_code == 202
        sid2 = await subscribe(http, engine, topic, "KafkaCounter/record", **options, **{"capstan.dlq.topic": dlq})
        assert sid2 != sid
        state = await until(
            lambda: counter(http, engine, "blk"), lambda s: s["count"] >= before + after, within=30, what="resumed"
        )
        [letter] = await read_topic(kafka_bootstrap, dlq, 1)
        assert header_map(letter)["kafka.offset"] == str(poison_offset)
        state = await counter(http, engine, "blk")
        assert state == {"count": before + after, "seqs": list(range(before + after))}


# --------------------------------------------------------------------------------------------------------------
# 5. Binary keys
# --------------------------------------------------------------------------------------------------------------


async def test_binary_keys(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    k1, k2 = b"\xff\x00\x01", b"\xfb\xff"
    records = [(k1, "0"), (k2, "0"), (k1, "1"), (b"plain", "0")]
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await produce(topic, records)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record", **{"capstan.dlq.topic": dlq})
        await subscribe(http, engine, topic, "KafkaCounter/record", **{"capstan.key.format": "base64"})
        await subscribe(http, engine, topic, "KafkaCounter/record", **{"capstan.key.format": "hex"})

        assert unpadded_b64(k1) == "_wAB" and unpadded_b64(k2) == "-_8"
        expected = {
            "plain": [0],
            "_wAB": [0, 1],
            "-_8": [0],
            "cGxhaW4": [0],
            "ff0001": [0, 1],
            "fbff": [0],
            "706c61696e": [0],
        }
        await wait_total(http, engine, {k: len(v) for k, v in expected.items()}, within=30)
        letters = await read_topic(kafka_bootstrap, dlq, 3)
        states = await counter_states(http, engine, sorted(expected))
        assert {k: s["seqs"] for k, s in states.items()} == expected

        assert sorted(r.key for r in letters) == sorted([k1, k1, k2])
        for letter in letters:
            h = header_map(letter)
            assert h["capstan.error.stage"] == "decode-key"
            assert h["capstan.error.code"] == "400"
            assert "UTF-8" in h["capstan.error.message"]
            assert h["capstan.subscription.id"] == sid
        assert (await sub_status(http, engine, sid))["dead_lettered"] == 3


# --------------------------------------------------------------------------------------------------------------
# 6. Ordering for plain services
# --------------------------------------------------------------------------------------------------------------


async def test_ordered_delivery_for_plain_services(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    per_partition = 100
    ordered_topic = await topic_factory(partitions=2)
    unordered_topic = await topic_factory(partitions=2)
    records = [(None, json.dumps({"seq": i}), (), p) for p in (0, 1) for i in range(per_partition)]
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await produce(ordered_topic, records)
        await subscribe(http, engine, ordered_topic, "Relay/forward", **{"capstan.ordering": "partition"})
        expected = {"partition-0": per_partition, "partition-1": per_partition}
        states = await wait_total(http, engine, expected, within=40)
        for key in expected:
            assert states[key]["seqs"] == list(range(per_partition)), (key, states[key]["seqs"])

        # Without the option the records are all processed exactly once, in whatever order the handler finishes.
        await produce(unordered_topic, records)
        await subscribe(http, engine, unordered_topic, "Relay/forward")
        states = await wait_total(http, engine, {k: 2 * per_partition for k in expected}, within=40)
        for key in expected:
            assert states[key]["count"] == 2 * per_partition
            assert sorted(states[key]["seqs"][per_partition:]) == list(range(per_partition)), key


# --------------------------------------------------------------------------------------------------------------
# 7. Backpressure
# --------------------------------------------------------------------------------------------------------------


async def test_backpressure_pauses_partitions(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    # The consumer checks for room before each poll's records, so the backlog shows between polls: small polls
    # make several, and one poll in flight at a time lets each see what its predecessors left (16 in flight would
    # have all 500 records in the log before the first is applied).
    async with kafka_engine(
        engine_factory,
        http,
        kafka_bootstrap,
        invoker={"concurrency_limit": 2, "queue_limit": 4},
        ingress_kafka={"max_poll_records": 50, "inflight_batches": 1},
    ) as engine:
        records, expected = keyed_events(500, 40, seed=7)
        await produce(topic, records)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")
        states = await wait_total(http, engine, expected, within=60)
        assert_exact_and_ordered(states, expected)
        status = await sub_status(http, engine, sid)
        assert status["paused_times"] > 0, status
        assert status["ingested"] == 500
        status = await until(
            lambda: sub_status(http, engine, sid), lambda s: not s["paused"], within=10, what="resumed"
        )
        assert sum(p["lag"] for p in status["partitions"]) == 0


# --------------------------------------------------------------------------------------------------------------
# 8. Broker restart
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_broker_restart_mid_ingestion(
    engine_factory: EngineFactory,
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    kafka_broker: KafkaBroker | None,
    topic_factory: Any,
    produce: Any,
) -> None:
    if kafka_broker is None:
        pytest.skip("the Kafka cluster is not run by this harness: it cannot be restarted")
    topic = await topic_factory(partitions=4)
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        first, expected = keyed_events(3000, 50, seed=11)
        await produce(topic, first)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")
        await until(
            lambda: sub_status(http, engine, sid),
            lambda s: s.get("ingested", 0) >= 500,
            within=60,
            what="500 records ingested",
        )
        await asyncio.to_thread(kafka_broker.restart)
        second, expected = keyed_events(1000, 50, seed=12, start=expected)
        await produce(topic, second)
        states = await wait_total(http, engine, expected, within=90)
        assert_exact_and_ordered(states, expected)


# --------------------------------------------------------------------------------------------------------------
# 9. Delete and re-create on the same consumer group
# --------------------------------------------------------------------------------------------------------------


async def test_subscription_deleted_and_recreated(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=3)
    group = f"capstan-test-{uuid.uuid4().hex[:8]}"
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        first, expected = keyed_events(500, 20, seed=21)
        await produce(topic, first)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record", **{"group.id": group})
        await wait_total(http, engine, expected, within=30)
        await until(
            lambda: sub_status(http, engine, sid),
            lambda s: s["partitions"] and sum(p["lag"] for p in s["partitions"]) == 0,
            within=15,
            what="offsets committed",
        )
        status_code, _ = await admin(http, engine, "DELETE", f"/subscriptions/{sid}")
        assert status_code == 202

        second, expected = keyed_events(300, 20, seed=22, start=expected)
        await produce(topic, second)
        await asyncio.sleep(1.0)
        assert sum(s["count"] for s in (await counter_states(http, engine, sorted(expected))).values()) == 500

        sid2 = await subscribe(http, engine, topic, "KafkaCounter/record", **{"group.id": group})
        assert sid2 != sid
        states = await wait_total(http, engine, expected, within=30)
        await asyncio.sleep(1.0)  # room for duplicates to show up
        states = await counter_states(http, engine, sorted(expected))
        assert_exact_and_ordered(states, expected)
        status = await until(
            lambda: sub_status(http, engine, sid2),
            lambda s: s["partitions"] and sum(p["lag"] for p in s["partitions"]) == 0,
            within=15,
            what="offsets committed",
        )
        # Resumed from the group's committed offsets: only the new records were read and proposed.
        assert status["ingested"] == 300, status


# --------------------------------------------------------------------------------------------------------------
# 10. A subscription deleted while its consumer is still joining the group
# --------------------------------------------------------------------------------------------------------------

# A consumer in a group that signals once it owns partitions, then waits to be killed (-9: no LeaveGroup).
_GROUP_MEMBER = """
import asyncio, sys
from aiokafka import AIOKafkaConsumer

async def main(bootstrap, topic, group):
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, session_timeout_ms=6000,
                         heartbeat_interval_ms=500, enable_auto_commit=False)
    await c.start()
    while not c.assignment():
        await c.getmany(timeout_ms=100)
    print("assigned", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


async def group_members(bootstrap: str, group: str) -> list[str]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        [response] = await client.describe_consumer_groups([group])
    finally:
        await client.close()
    [(_error, _group, _state, _protocol_type, _protocol, members, *_)] = response.groups
    return [str(member[0]) for member in members]


@pytest.mark.timeout(60)
async def test_subscription_deleted_while_joining_leaves_no_consumer_behind(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=1)
    group = f"capstan-test-{uuid.uuid4().hex[:8]}"
    records, expected = keyed_events(20, 4, seed=31)
    # A member that dies without leaving holds the group's next rebalance until its session times out (6 s): a
    # consumer that joins meanwhile is stuck in AIOKafkaConsumer.start() (which waits for the assignment).
    member = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _GROUP_MEMBER, kafka_bootstrap, topic, group, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert member.stdout is not None
        line = await asyncio.wait_for(member.stdout.readline(), 30)
        assert line.strip() == b"assigned", line
    finally:
        member.kill()
        await member.wait()
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await produce(topic, records)
        sid = await subscribe(http, engine, topic, "KafkaCounter/record", **{"group.id": group})
        await asyncio.sleep(1.0)
        status = await sub_status(http, engine, sid)
        assert status["running"] and status["partitions"] == [], status  # joining
        status_code, _ = await admin(http, engine, "DELETE", f"/subscriptions/{sid}")
        assert status_code == 202

        # Once the dead member's session expired, the group must be empty: the deleted subscription's consumer
        # was stopped, not left running (and heartbeating) in the background.
        await asyncio.sleep(7.0)
        members = await until(
            lambda: group_members(kafka_bootstrap, group), lambda m: m == [], within=10, what="the group empties"
        )
        assert members == []

        # And the group is free for the subscription that replaces it.
        await subscribe(http, engine, topic, "KafkaCounter/record", **{"group.id": group})
        states = await wait_total(http, engine, expected, within=20)
        assert_exact_and_ordered(states, expected)

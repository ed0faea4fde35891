"""Chaos: a real ``capstan serve`` is SIGKILLed at random moments (20 times in the default suite, 100 in the ``slow``
variant) while a mixed workload runs against it (calls, durable sleeps, awakeables resolved over HTTP, workflows,
``ctx.run`` side effects; see :mod:`tests.e2e.chaos`) and records are ingested from a Kafka topic. Every seventh
fault also SIGKILLs the SDK deployment (restarted on the same port), and the broker is SIGKILLed and restarted once
mid-ingestion (the dedicated broker-restart test is ``test_broker_restart_mid_ingestion`` in
``test_subscription_features.py``).

The schedule (kill moments, operation mix) comes from a seed, printed at the start and in every failure:
``CHAOS_SEED=<n> pytest tests/kafka/test_chaos.py`` replays it (the interleaving with the processes still varies).

After the last restart: every acknowledged operation took effect exactly once (the model in tests/e2e/chaos.py),
every ``ctx.run`` side effect passes checks (a)-(d) there, each Kafka record was applied once and in per-key offset
order (checked against the topic's content read back from the broker), and no invocation is left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.e2e.chaos import CHAOS_APP, Fault, Workload, check_effects, unfinished_invocations
from tests.e2e.procs import CapstanProcess
from tests.kafka.broker import KafkaBroker
from tests.services.fixtures import DeploymentProcess, start_deployment

pytestmark = pytest.mark.e2e

KAFKA_KEYS = 16
TOPIC_PARTITIONS = 4
WORKERS = 6
ENGINE_ENV = {
    # fast retries: attempts that hit a dead deployment come back quickly
    "CAPSTAN__INVOKER__RETRY_POLICY__INITIAL_INTERVAL": "50ms",
    "CAPSTAN__INVOKER__RETRY_POLICY__MAX_INTERVAL": "1s",
    # small segments and frequent flush + truncation, so kills also land around segment rolls and truncations
    "CAPSTAN__LOG__SEGMENT_SIZE_BYTES": str(256 * 1024),
    "CAPSTAN__STORAGE__TRUNCATE_EVERY_RECORDS": "300",
    "CAPSTAN__INGRESS_KAFKA__RESTART_MAX_BACKOFF": "2s",
}


async def _admin(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def _produce_forever(bootstrap: str, topic: str, stop: asyncio.Event, rng: random.Random) -> int:
    """Keyed records (value = the key's next sequence number) in small bursts until ``stop``; returns how many sends
    were acknowledged. The truth for the check is read back from the topic, so a send that failed while the broker
    was down (it may or may not have been stored) needs no bookkeeping."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, request_timeout_ms=10_000
    )
    await producer.start()
    next_seq: dict[str, int] = defaultdict(int)
    sent = 0
    try:
        while not stop.is_set():
            futures = []
            for _ in range(20):
                key = f"kk{rng.randrange(KAFKA_KEYS)}"
                futures.append(await producer.send(topic, key=key.encode(), value=str(next_seq[key]).encode()))
                next_seq[key] += 1
            results = await asyncio.gather(*futures, return_exceptions=True)
            sent += sum(1 for r in results if not isinstance(r, BaseException))
            await asyncio.sleep(0.3)
    finally:
        await producer.stop()
    return sent


async def _topic_content(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Every record of the topic, per key in offset order (a key lives in one partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        content: dict[str, list[int]] = defaultdict(list)
        while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    content[record.key.decode()].append(int(record.value))
        return dict(content)
    finally:
        await consumer.stop()


async def _kafka_states(workload: Workload, keys: list[str]) -> dict[str, list[int]]:
    states = {}
    for key in keys:
        _, state, _ = await workload.request("POST", f"/ChaosKafka/{key}/state")
        states[key] = state["seqs"]
    return states


@contextlib.asynccontextmanager
async def _seed_in_failures(seed: int) -> AsyncIterator[None]:
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"[CHAOS_SEED={seed}] {exc}") from exc


@pytest.mark.parametrize(
    "kills", [pytest.param(20, id="20-kills"), pytest.param(100, id="100-kills", marks=pytest.mark.slow)]
)
@pytest.mark.timeout(1800)  # measured: about 2 minutes for 20 kills, 7 for 100
async def test_chaos_kills_lose_and_duplicate_nothing(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_broker: KafkaBroker | None,
    topic_factory: Any,
    kills: int,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    print(f"chaos: CHAOS_SEED={seed}")
    rng = random.Random(seed)
    started = time.monotonic()
    effects_file = tmp_path / "effects.jsonl"
    dep_env = {"CHAOS_EFFECTS_FILE": str(effects_file)}
    topic = await topic_factory(partitions=TOPIC_PARTITIONS)
    deployment: DeploymentProcess = await asyncio.to_thread(start_deployment, CHAOS_APP, env=dep_env)
    server = CapstanProcess(tmp_path / "data", env=ENGINE_ENV)
    faults: list[Fault] = []
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    try:
        await asyncio.to_thread(server.start)
        connector = aiohttp.TCPConnector(force_close=True, limit=64)
        async with aiohttp.ClientSession(connector=connector) as http, _seed_in_failures(seed):
            admin = server.admin_url
            await _admin(http, admin + "/deployments", {"uri": deployment.url})
            await _admin(
                http, admin + "/kafka-clusters", {"name": "local", "properties": {"bootstrap.servers": kafka_bootstrap}}
            )
            await _admin(
                http,
                admin + "/subscriptions",
                {
                    "source": f"kafka://local/{topic}",
                    "sink": "service://ChaosKafka/record",
                    "options": {"auto.offset.reset": "earliest"},
                },
            )
            workload = Workload(http, lambda: server.ingress_url, seed, step_sleep_ms=50)
            producer = asyncio.create_task(_produce_forever(kafka_bootstrap, topic, stop, random.Random(seed + 1)))
            tasks = [producer, *(asyncio.create_task(workload.worker(w, stop)) for w in range(WORKERS))]

            for k in range(1, kills + 1):
                await asyncio.sleep(rng.uniform(0.3, 3.0))
                for task in tasks:
                    if task.done():
                        task.result()  # a worker's assertion surfaces now, with the seed
                fault = Fault("engine", time.monotonic())
                server.kill()  # SIGKILL: requests in flight, attempts running, batches half-written
                faults.append(fault)
                if k % 7 == 0:
                    dep_fault = Fault("deployment", time.monotonic())
                    deployment.kill()
                    faults.append(dep_fault)
                    deployment = await asyncio.to_thread(
                        start_deployment, CHAOS_APP, port=deployment.port, env=dep_env, log_path=deployment.log_path
                    )
                    dep_fault.restarted_at = time.monotonic()
                if k == kills // 2 and kafka_broker is not None:
                    broker_fault = Fault("broker", time.monotonic())
                    faults.append(broker_fault)
                    await asyncio.to_thread(kafka_broker.restart, hard=True)
                    broker_fault.restarted_at = time.monotonic()
                fault.restarted_at = time.monotonic()
                await asyncio.to_thread(server.start)

            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 240)
            chaos_s = time.monotonic() - started

            # Kafka: every record of the topic applied once, in per-key offset order
            expected = await _topic_content(kafka_bootstrap, topic)
            keys = sorted(expected)
            deadline = time.monotonic() + 180
            while True:
                states = await _kafka_states(workload, keys)
                if all(len(states[k]) >= len(expected[k]) for k in keys) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1.0)
            wrong = {k: (len(states[k]), len(expected[k])) for k in keys if states[k] != expected[k]}
            assert not wrong, (
                f"Kafka keys with wrong records (got, want): {wrong}; e.g. {keys[:1]} {states[keys[0]][:20]}"
            )

            await workload.verify_state()
            effects = check_effects(effects_file, workload.model.journaled, faults)
            deadline = time.monotonic() + 60
            while rows := await unfinished_invocations(http, server.admin_url):
                assert time.monotonic() < deadline, f"invocations left unfinished: {rows}"
                await asyncio.sleep(0.5)

            # and once more after a last kill
            server.kill()
            await asyncio.to_thread(server.start)
            await workload.verify_state()

            summary = {
                "seed": seed,
                "engine_kills": sum(f.kind == "engine" for f in faults) + 1,
                "deployment_kills": sum(f.kind == "deployment" for f in faults),
                "broker_restarts": sum(f.kind == "broker" for f in faults),
                "operations": dict(workload.model.done),
                "requests_retried": workload.model.retries,
                "kafka_records": sum(len(v) for v in expected.values()),
                "effects": effects,
                "lost": 0,
                "duplicated": 0,
                "chaos_seconds": round(chaos_s, 1),
                "total_seconds": round(time.monotonic() - started, 1),
            }
            print("chaos summary: " + json.dumps(summary))
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.stop()
        deployment.stop()

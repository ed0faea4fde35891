"""The issue's acceptance tests: 50,000 keyed records over 4 partitions and 1,000 keys into a counter object that
appends each record's sequence number to per-key state — exact counts and strictly increasing per-key order —
in-process, and again while a real `capstan serve` is SIGKILLed twice mid-ingestion."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import EngineFactory
from tests.e2e.procs import CapstanProcess
from tests.kafka.helpers import kafka_engine, subscribe

N_RECORDS = 50_000
N_KEYS = 1_000


def make_records(n: int, keys: int, seed: int) -> tuple[list[tuple[str, str]], dict[str, int]]:
    rng = random.Random(seed)
    next_seq: dict[str, int] = {}
    records = []
    for _ in range(n):
        key = f"k{rng.randrange(keys)}"
        seq = next_seq.get(key, 0)
        next_seq[key] = seq + 1
        records.append((key, str(seq)))
    return records, next_seq


async def read_states(http: aiohttp.ClientSession, ingress: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    sem = asyncio.Semaphore(32)

    async def one(key: str) -> tuple[str, dict[str, Any]]:
        async with sem, http.post(f"{ingress}/KafkaCounter/{key}/state") as resp:
            assert resp.status == 200, await resp.text()
            return key, await resp.json()

    return dict(await asyncio.gather(*(one(k) for k in keys)))


async def ingested(http: aiohttp.ClientSession, admin_url: str, sid: str) -> int:
    try:
        async with http.get(f"{admin_url}/subscriptions/{sid}") as resp:
            body = await resp.json()
    except aiohttp.ClientError:
        return -1
    status = body.get("status") or {}
    return int(sum(p.get("committed") or 0 for p in status.get("partitions", [])))


async def wait_all_counted(
    http: aiohttp.ClientSession, ingress: str, expected: dict[str, int], *, within: float
) -> dict[str, dict[str, Any]]:
    keys = sorted(expected)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        states = await read_states(http, ingress, keys)
        total = sum(s["count"] for s in states.values())
        if total >= sum(expected.values()) or asyncio.get_running_loop().time() > deadline:
            return states
        await asyncio.sleep(1.0)


def assert_exact_and_ordered(states: dict[str, dict[str, Any]], expected: dict[str, int]) -> None:
    wrong = {k: (states[k]["count"], n) for k, n in expected.items() if states[k]["count"] != n}
    assert not wrong, f"{len(wrong)} keys with wrong counts (got, want), e.g. {list(wrong.items())[:5]}"
    for key, n in expected.items():
        assert states[key]["seqs"] == list(range(n)), f"{key}: order broken: {states[key]['seqs'][:30]}"


@pytest.mark.timeout(900)
async def test_50k_records_exact_and_ordered(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=4)
    records, expected = make_records(N_RECORDS, N_KEYS, seed=11)
    await produce(topic, records)
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await subscribe(http, engine, topic, "KafkaCounter/record")
        states = await wait_all_counted(http, engine.ingress_url, expected, within=780)
        assert_exact_and_ordered(states, expected)


@pytest.mark.timeout(1200)
async def test_50k_records_survive_two_sigkills(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=4)
    records, expected = make_records(N_RECORDS, N_KEYS, seed=12)
    await produce(topic, records)
    server = CapstanProcess(tmp_path / "data", extra_args=["--app", "tests.services.kafka_app:app"])
    server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(
                server.admin_url + "/kafka-clusters",
                json={"name": "local", "properties": {"bootstrap.servers": kafka_bootstrap}},
            ) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(
                server.admin_url + "/subscriptions",
                json={
                    "source": f"kafka://local/{topic}",
                    "sink": "service://KafkaCounter/record",
                    "options": {"auto.offset.reset": "earliest"},
                },
            ) as resp:
                assert resp.status == 201, await resp.text()
                sid = (await resp.json())["id"]
            for kill_at in (N_RECORDS // 5, N_RECORDS // 2):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 400
                while await ingested(http, server.admin_url, sid) < kill_at:
                    assert loop.time() < deadline, "ingestion too slow before the kill"
                    await asyncio.sleep(0.2)
                server.kill()  # SIGKILL mid-ingestion: invocations running, offsets not all committed
                server.start()
            states = await wait_all_counted(http, server.ingress_url, expected, within=800)
            assert_exact_and_ordered(states, expected)
    finally:
        server.stop()

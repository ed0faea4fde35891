"""Replay: a topic replayed from earliest into a fresh engine gives the same state; replaying a subscription in
place (the admin endpoint and `capstan subscriptions replay`) processes every record again."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import EngineFactory, make_config
from tests.e2e.procs import REPO_ROOT
from tests.kafka.helpers import admin, counter_states, kafka_engine, subscribe, until
from tests.kafka.test_exactly_once import make_records


async def test_replay_into_a_fresh_engine_gives_the_same_state(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any,
    produce: Any, tmp_path: Path,
) -> None:  # fmt: skip
    topic = await topic_factory(partitions=4)
    records, expected = make_records(1500, 40, seed=3)
    await produce(topic, records)
    keys = sorted(expected)

    async def states_of(engine: Any) -> dict[str, Any]:
        async def total() -> int:
            return sum(s["count"] for s in (await counter_states(http, engine, keys)).values())

        await until(total, lambda t: t >= 1500, within=90, what="all records ingested")
        return await counter_states(http, engine, keys)

    async with kafka_engine(engine_factory, http, kafka_bootstrap) as first:
        await subscribe(http, first, topic, "KafkaCounter/record")
        original = await states_of(first)
    # a second engine on its own data dir, its own subscription (a new consumer group) from earliest
    from engine.server import Engine

    fresh = await Engine.open(make_config(tmp_path / "fresh", app="tests.services.kafka_app:app"))
    try:
        status, body = await admin(
            http,
            fresh,
            "POST",
            "/kafka-clusters",
            {"name": "local", "properties": {"bootstrap.servers": kafka_bootstrap}},
        )
        assert status == 201, body
        await subscribe(http, fresh, topic, "KafkaCounter/record")
        assert await states_of(fresh) == original
    finally:
        await fresh.aclose()


async def test_replay_in_place_processes_every_record_again(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    records, expected = make_records(400, 10, seed=4)
    await produce(topic, records)
    keys = sorted(expected)
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")

        async def total() -> int:
            return sum(s["count"] for s in (await counter_states(http, engine, keys)).values())

        await until(total, lambda t: t >= 400, within=60, what="first pass")
        # the CLI asks for the replay and shows progress until the subscription has caught up
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "subscriptions", "replay", sid, "--from", "earliest",
            "--admin-url", engine.admin_url, cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        assert "replaying" in err.decode() and sid in out.decode()
        await until(total, lambda t: t >= 800, within=60, what="replayed pass")
        states = await counter_states(http, engine, keys)
        for key, n in expected.items():
            assert states[key]["seqs"] == list(range(n)) * 2, key
        # replay from a timestamp in the future: nothing to reprocess
        future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).isoformat()
        status, body = await admin(http, engine, "POST", f"/subscriptions/{sid}/replay", {"from": future})
        assert status == 202, body
        status, body = await admin(http, engine, "POST", f"/subscriptions/{sid}/replay", {"from": "yesterday"})
        assert status == 400 and "ISO-8601" in body["message"]
        await asyncio.sleep(2)
        assert await total() == 800

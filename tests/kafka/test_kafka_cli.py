"""``capstan kafka-clusters ...`` and ``capstan subscriptions ...`` as subprocesses (``python -m engine``) against an
in-process engine with the Kafka test services and a real broker."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from engine.server import Engine
from tests.conftest import EngineFactory
from tests.kafka.helpers import admin, call, kafka_engine, until

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def capstan(*args: str, admin_url: str | None = None) -> Run:
    """Run the CLI in a subprocess; the event loop keeps serving the in-process engine meanwhile."""
    argv = [sys.executable, "-m", "engine", *args]
    if admin_url is not None:
        argv += ["--admin-url", admin_url]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def ok(engine: Engine, *args: str) -> Run:
    run = await capstan(*args, admin_url=engine.admin_url)
    assert run.code == 0, (args, run)
    return run


async def test_kafka_cli(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        # Clusters.
        run = await ok(engine, "kafka-clusters", "create", "c2", f"bootstrap.servers={kafka_bootstrap}")
        assert "c2" in run.out and kafka_bootstrap in run.out
        run = await ok(engine, "kafka-clusters", "list")
        lines = run.out.splitlines()
        assert lines[0].split() == ["NAME", "BOOTSTRAP", "SERVERS"]
        assert [line.split() for line in lines[1:]] == [["c2", kafka_bootstrap], ["local", kafka_bootstrap]]
        run = await ok(engine, "kafka-clusters", "describe", "c2", "--json")
        assert json.loads(run.out) == {
            "name": "c2",
            "properties": {"bootstrap.servers": kafka_bootstrap},
            "subscriptions": [],
        }
        run = await ok(engine, "kc", "create", "c3", "bootstrap.servers=127.0.0.1:1", "sasl.password=hunter2")
        assert "hunter2" not in run.out and "***" in run.out
        run = await ok(engine, "kafka-clusters", "describe", "c3")
        assert "sasl.password = ***" in run.out and "hunter2" not in run.out
        await ok(engine, "kafka-clusters", "delete", "c3")
        status, _ = await admin(http, engine, "GET", "/kafka-clusters/c3")
        assert status == 404

        # Subscriptions.
        records = [(f"cli{i % 3}", str(i // 3)) for i in range(12)]
        await produce(topic, records)
        run = await ok(
            engine,
            "subscriptions",
            "create",
            f"kafka://c2/{topic}",
            "service://KafkaCounter/record",
            "auto.offset.reset=earliest",
        )
        assert run.out.startswith("Subscription sub_"), run.out
        sid = run.out.split()[1].rstrip(":")
        assert f"kafka://c2/{topic} -> service://KafkaCounter/record" in run.out

        run = await ok(engine, "subscriptions", "list", "--json")
        listed = json.loads(run.out)["subscriptions"]
        assert [(s["id"], s["source"], s["sink"]) for s in listed] == [
            (sid, f"kafka://c2/{topic}", "service://KafkaCounter/record")
        ]
        assert listed[0]["options"] == {"auto.offset.reset": "earliest"}
        run = await ok(engine, "sub", "ls", "--sink", "service://Judge/check")
        assert "No subscriptions." in run.out
        run = await ok(engine, "sub", "ls")
        assert sid in run.out

        async def counted() -> int:
            states = [await call(http, engine, f"/KafkaCounter/cli{k}/state") for k in range(3)]
            return sum(s["count"] for s in states)

        await until(counted, lambda n: n >= 12, within=30, what="12 records counted")

        async def described() -> Run:
            return await ok(engine, "subscriptions", "describe", sid)

        run = await until(described, lambda r: "LAG" in r.out and "ingested 12" in r.out, within=15, what="lag")
        out = run.out
        assert "Id:" in out and sid in out and f"kafka://c2/{topic}" in out
        assert "auto.offset.reset = earliest" in out
        table = out[out.index("PARTITION") :].splitlines()
        assert table[0].split() == ["PARTITION", "COMMITTED", "END", "LAG"]
        rows = [line.split() for line in table[1:3]]
        assert [r[0] for r in rows] == ["0", "1"]
        assert all(r[3] == "0" and r[1] == r[2] for r in rows), out
        assert sum(int(r[2]) for r in rows) == 12
        assert "dead-lettered 0" in out

        run = await ok(engine, "kc", "describe", "c2")
        assert sid in run.out

        # Replay: every record is invoked again.
        run = await ok(engine, "subscriptions", "replay", sid, "--from", "earliest", "--no-wait", "--json")
        assert json.loads(run.out) == {"id": sid, "from": "earliest", "generation": 1}
        await until(counted, lambda n: n >= 24, within=30, what="24 records counted after the replay")
        await asyncio.sleep(0.5)
        assert await counted() == 24
        states = [await call(http, engine, f"/KafkaCounter/cli{k}/state") for k in range(3)]
        assert all(s["seqs"] == [0, 1, 2, 3] * 2 for s in states), states
        run = await ok(engine, "subscriptions", "replay", sid, "--from", "2020-01-01T00:00:00Z", "--no-wait")
        assert f"Replay of {sid} requested from 2020-01-01T00:00:00+00:00 (generation 2)" in run.out, run

        # Errors: usage (2) and API errors (1, with the server's message).
        run = await capstan("subscriptions", "create", admin_url=engine.admin_url)
        assert run.code == 2, run
        assert "usage" in run.err
        run = await capstan("kafka-clusters", "create", "c4", "not-a-pair", admin_url=engine.admin_url)
        assert run.code == 2 and "expected NAME=VALUE" in run.err, run
        run = await capstan("subscriptions", "replay", sid, "--wait-timeout", "x", admin_url=engine.admin_url)
        assert run.code == 2, run
        run = await capstan("subscriptions", "describe", "sub_nope", admin_url=engine.admin_url)
        assert run.code == 1, run
        assert "404" in run.err and "subscription sub_nope not found" in run.err, run
        run = await capstan(
            "subscriptions", "create", "kafka://nope/t", "service://KafkaCounter/record", admin_url=engine.admin_url
        )
        assert run.code == 1 and "400" in run.err and "kafka cluster nope does not exist" in run.err, run
        run = await capstan("kafka-clusters", "delete", "c2", admin_url=engine.admin_url)
        assert run.code == 1 and "409" in run.err and sid in run.err, run
        run = await capstan(
            "subscriptions", "replay", sid, "--from", "yesterday", "--no-wait", admin_url=engine.admin_url
        )
        assert run.code == 1 and "400" in run.err, run

        # Delete.
        run = await ok(engine, "subscriptions", "delete", sid)
        assert "Done." in run.out
        status, _ = await admin(http, engine, "GET", f"/subscriptions/{sid}")
        assert status == 404
        run = await capstan("subscriptions", "delete", sid, admin_url=engine.admin_url)
        assert run.code == 1 and "404" in run.err, run
        await ok(engine, "kafka-clusters", "delete", "c2")
        run = await ok(engine, "kafka-clusters", "list")
        assert "c2" not in run.out and "local" in run.out

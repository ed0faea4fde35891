"""The Kafka worker process (``ingress_kafka.worker``): consumers run there by default; killing it loses and
duplicates nothing; it stops with the engine, and dies with an engine that is SIGKILLed; the in-process mode
(``ingress_kafka.worker_process = false``) still works."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.server import Engine
from ingress_kafka.extension import KafkaExtension
from ingress_kafka.process import RemoteConsumer
from tests.conftest import EngineFactory
from tests.e2e.procs import CapstanProcess
from tests.kafka.helpers import kafka_engine, subscribe
from tests.kafka.test_exactly_once import assert_exact_and_ordered, ingested, make_records, wait_all_counted


def _extension(engine: Engine) -> KafkaExtension:
    found = [e for e in engine.extensions if isinstance(e, KafkaExtension)]
    assert len(found) == 1
    return found[0]


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (a reparented child whose reaper is not ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def _until_gone(pid: int, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not _gone(pid):
        assert loop.time() < deadline, f"process {pid} still runs"
        await asyncio.sleep(0.05)


def _workers_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"ingress_kafka.worker" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
async def test_worker_killed_mid_ingestion_loses_and_duplicates_nothing(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=4)
    records, expected = make_records(10_000, 200, seed=21)
    await produce(topic, records)
    async with kafka_engine(
        engine_factory, http, kafka_bootstrap, ingress_kafka={"restart_max_backoff": "500ms"}
    ) as engine:
        ext = _extension(engine)
        assert ext.worker is not None
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while await ingested(http, engine.admin_url, sid) < 2_000:
            assert loop.time() < deadline, "ingestion too slow before the kill"
            await asyncio.sleep(0.05)
        assert isinstance(ext.reconciler.consumer(sid), RemoteConsumer)
        first = ext.worker.pid
        assert first is not None and not _gone(first)
        os.kill(first, signal.SIGKILL)  # mid-ingestion: batches sent and not answered, offsets not all committed
        states = await wait_all_counted(http, engine.ingress_url, expected, within=240)
        assert_exact_and_ordered(states, expected)
        assert ext.worker.starts >= 2 and ext.worker.pid != first
        status = ext.reconciler.status(sid) or {}
        assert status.get("running") is True, status
        second = ext.worker.pid
        assert second is not None and not _gone(second)
    await _until_gone(second, within=5)  # stopped with the engine, by its PID


@pytest.mark.timeout(120)
async def test_consumers_run_in_the_engine_when_the_worker_process_is_off(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, kafka_bootstrap: str, topic_factory: Any, produce: Any
) -> None:
    topic = await topic_factory(partitions=2)
    records, expected = make_records(1_000, 20, seed=22)
    await produce(topic, records)
    async with kafka_engine(engine_factory, http, kafka_bootstrap, ingress_kafka={"worker_process": False}) as engine:
        ext = _extension(engine)
        assert ext.worker is None
        sid = await subscribe(http, engine, topic, "KafkaCounter/record")
        states = await wait_all_counted(http, engine.ingress_url, expected, within=90)
        assert not isinstance(ext.reconciler.consumer(sid), RemoteConsumer)
        assert_exact_and_ordered(states, expected)
        assert _workers_of(os.getpid()) == []


@pytest.mark.timeout(120)
async def test_a_sigkilled_engine_takes_its_worker_along(tmp_path: Path, kafka_bootstrap: str) -> None:
    server = CapstanProcess(tmp_path / "data", extra_args=["--app", "tests.services.kafka_app:app"])
    server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                server.admin_url + "/kafka-clusters",
                json={"name": "local", "properties": {"bootstrap.servers": kafka_bootstrap}},
            ) as resp:
                assert resp.status == 201, await resp.text()
        assert server.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not (workers := _workers_of(server.proc.pid)):  # started with the engine
            assert loop.time() < deadline, f"no worker process started:\n{server.logs()}"
            await asyncio.sleep(0.05)
        assert len(workers) == 1
        server.kill()
        await _until_gone(workers[0], within=10)
    finally:
        server.stop()

"""A pytest plugin for integration tests of services fed by Kafka: an engine on a temp dir plus a broker,
recorded events produced to topics, "wait until the engine is idle", then assertions on state and outputs.

Enable it in your root ``conftest.py``::

    pytest_plugins = ["ingress_kafka.testing"]

and write tests like::

    async def test_orders(capstan):                                    # pytest-asyncio (auto mode)
        async with capstan.engine(app="my_service:app") as h:          # in-process SDK app, temp data dir
            topic = await h.create_topic(partitions=4)
            await h.subscribe(topic, "Orders/add", **{"auto.offset.reset": "earliest"})
            await h.produce_recorded(topic, "tests/recordings/orders.jsonl")
            await h.wait_idle()
            assert await h.state("Orders", "customer-1") == {"total": 42}
            assert await h.call("/Orders/customer-1/total") == 42

The broker: ``KAFKA_BOOTSTRAP_SERVERS`` if set; otherwise, in a Capstan checkout, the Maven-jar Apache Kafka
broker of ``scripts/kafka_broker.py`` (started once per session). Recorded events are JSON lines
``{"key": "...", "value": <JSON or string>, "headers": {"name": "value"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine import codec
from engine.config import EngineConfig, load_config
from engine.server import Engine
from engine.storage import keys

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


class Harness:
    """One engine under test, its HTTP session and the broker it reads from."""

    def __init__(self, engine: Engine, http: aiohttp.ClientSession, bootstrap: str) -> None:
        self.engine = engine
        self.http = http
        self.bootstrap = bootstrap
        self._produced: dict[tuple[str, int], int] = {}
        self._subscriptions: list[str] = []
        self._topics: list[str] = []

    # ------------------------------------------------------------------------------------------- Kafka side

    async def create_topic(self, *, partitions: int = 1, name: str | None = None) -> str:
        topic = name or f"capstan-{uuid.uuid4().hex[:12]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()
        self._topics.append(topic)
        return topic

    async def produce(self, topic: str, events: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """Produce events ``{"key", "value", "headers"}`` (value: bytes, str, or anything JSON-encodable)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            futures = []
            for event in events:
                futures.append(
                    await producer.send(
                        topic,
                        key=_bytes(event.get("key")),
                        value=_bytes(event.get("value")),
                        headers=[(k, _bytes(v) or b"") for k, v in (event.get("headers") or {}).items()],
                    )
                )
            metas = [await f for f in futures]
        finally:
            await producer.stop()
        out = []
        for meta in metas:
            key = (topic, meta.partition)
            self._produced[key] = max(self._produced.get(key, -1), meta.offset)
            out.append((meta.partition, meta.offset))
        return out

    async def produce_recorded(self, topic: str, path: str | os.PathLike[str]) -> list[tuple[int, int]]:
        """Produce the JSON-lines recording at ``path``."""
        text = await asyncio.to_thread(Path(path).read_text)
        lines = text.splitlines()
        return await self.produce(topic, [json.loads(line) for line in lines if line.strip()])

    # ------------------------------------------------------------------------------------------- engine side

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        token = self.engine.config.admin.auth_token  # an engine started with admin auth gets the token
        headers = {"authorization": f"Bearer {token.get_secret_value()}"} if token is not None else None
        async with self.http.request(method, self.engine.admin_url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise AssertionError(f"admin {method} {path}: {resp.status} {text}")
            return json.loads(text) if text else None

    async def register(self, url: str) -> Any:
        return await self.admin("POST", "/deployments", {"uri": url})

    async def subscribe(self, topic: str, sink: str, **options: str) -> str:
        """Subscribe ``sink`` (``Service/handler``) to ``topic`` on this harness' broker."""
        body = await self.admin(
            "POST",
            "/subscriptions",
            {"source": f"kafka://capstan-test/{topic}", "sink": f"service://{sink}", "options": options},
        )
        self._subscriptions.append(body["id"])
        return str(body["id"])

    async def call(self, path: str, body: Any = None, *, expect: int = 200) -> Any:
        async with self.http.post(
            self.engine.ingress_url + path,
            data=None if body is None else json.dumps(body),
            headers={"content-type": "application/json"} if body is not None else {},
        ) as resp:
            text = await resp.text()
            assert resp.status == expect, (path, resp.status, text)
            try:
                return json.loads(text) if text else None
            except ValueError:
                return text

    async def state(self, service: str, key: str) -> dict[str, Any]:
        """The K/V state of one object key, values JSON-decoded where they are JSON."""
        prefix = keys.object_prefix(keys.STATE, service, key)
        rows = await asyncio.to_thread(lambda: list(self.engine.store.scan(prefix)))
        out: dict[str, Any] = {}
        for k, v in rows:
            name = k[len(prefix) :].decode()
            try:
                out[name] = json.loads(v)
            except ValueError:
                out[name] = v
        return out

    async def wait_idle(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - a test helper's plain deadline
        """Until every produced record is ingested by every subscription and no invocation is unfinished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if await self._ingested_all() and self.engine.idle_partitions():
                if await self.engine.active_invocations() == 0:
                    return
            if loop.time() > deadline:
                raise TimeoutError(f"the engine did not become idle within {timeout:g}s")
            await asyncio.sleep(0.05)

    async def _ingested_all(self) -> bool:
        for sid in self._subscriptions:
            sub = await self.admin("GET", f"/subscriptions/{sid}")
            topic = sub["source"].rsplit("/", 1)[1]
            committed = {
                p["partition"]: p.get("committed") or 0 for p in (sub.get("status") or {}).get("partitions", [])
            }
            for (t, partition), last in self._produced.items():
                if t == topic and committed.get(partition, 0) <= last:
                    return False
        return True

    def invocation_status(self, invocation_id: bytes) -> Any:
        raw = self.engine.store.get(keys.status(invocation_id))
        return None if raw is None else codec.decode(raw)


class CapstanFactory:
    """The ``capstan`` fixture: ``async with capstan.engine(app=...) as harness``."""

    def __init__(self, bootstrap: str, tmp_path: Path) -> None:
        self.bootstrap = bootstrap
        self.tmp_path = tmp_path

    @contextlib.asynccontextmanager
    async def engine(self, *, app: str | None = None, **overrides: Any) -> AsyncIterator[Harness]:
        data = Path(tempfile.mkdtemp(dir=self.tmp_path, prefix="capstan-"))
        settings: dict[str, Any] = {
            "data_dir": str(data),
            "ingress_http": {"address": "127.0.0.1:0"},
            "admin": {"address": "127.0.0.1:0"},
            **overrides,
        }
        if app is not None:
            settings["app"] = app
        config: EngineConfig = load_config(environ={}, overrides=settings)
        engine = await Engine.open(config)
        try:
            async with aiohttp.ClientSession() as http:
                harness = Harness(engine, http, self.bootstrap)
                await harness.admin(
                    "POST",
                    "/kafka-clusters",
                    {"name": "capstan-test", "properties": {"bootstrap.servers": self.bootstrap}},
                )
                yield harness
        finally:
            await engine.aclose()


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def _repo_broker() -> Any:
    """The Maven-jar broker implementation of a Capstan checkout, or None."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "kafka_broker.py"
    if not script.exists():
        return None
    module = sys.modules.get("capstan_kafka_broker")
    if module is None:
        spec = importlib.util.spec_from_file_location("capstan_kafka_broker", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["capstan_kafka_broker"] = module
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def capstan_kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the broker the ``capstan`` fixture uses."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    impl = _repo_broker()
    if impl is None:
        pytest.skip(f"no Kafka broker: set {BOOTSTRAP_ENV}")
    impl.fetch_jars()
    broker = impl.KafkaBroker(tmp_path_factory.mktemp("capstan-kafka"))
    broker.start()
    try:
        yield str(broker.bootstrap_servers)
    finally:
        broker.stop()


@pytest.fixture
def capstan(capstan_kafka_bootstrap: str, tmp_path: Path) -> CapstanFactory:
    return CapstanFactory(capstan_kafka_bootstrap, tmp_path)

"""Kafka fixtures: one real broker per test session, a fresh topic per test, and a producer helper.

Where the broker comes from, in order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: that cluster (``kafka_broker`` is then ``None``: tests cannot restart it).
2. ``testcontainers`` importable and a Docker engine answering: a throwaway container (``kafka_broker`` ``None``).
3. Otherwise: Apache Kafka from Maven Central jars (``tests/kafka/broker.py``), on 127.0.0.1 with free ports and
   its data under pytest's temporary directory; the jars are fetched with mvn on first use.

When none can be provided the Kafka tests skip, except with ``REQUIRE_KAFKA=1`` or ``CI=true``, where they fail.
Every test under ``tests/kafka/`` gets the ``kafka`` marker (``-m "not kafka"`` deselects them).

Fixtures: ``kafka_bootstrap`` (str), ``kafka_broker`` (``KafkaBroker | None``), ``topic_factory`` and ``produce``.
A test that stops or kills the session broker need not bring it back: the next test finds it running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from tests.kafka.broker import (
    BrokerStartError,
    FetchError,
    KafkaBroker,
    count_brokers,
    ensure_jars,
    external_bootstrap,
    java_executable,
)

logger = logging.getLogger(__name__)

KAFKA_TESTS_DIR = Path(__file__).resolve().parent
TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:7.6.0"
TOPIC_READY_TIMEOUT_S = 30.0
TOPIC_DELETE_TIMEOUT_S = 15.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest's collection hook sees every item of the session: mark only ours.
    for item in items:
        if Path(item.path).is_relative_to(KAFKA_TESTS_DIR):
            item.add_marker(pytest.mark.kafka)


def kafka_required() -> bool:
    """``REQUIRE_KAFKA=1`` or ``CI=true``: a missing broker is a failure, not a skip."""
    truthy = ("1", "true", "yes")
    return os.environ.get("REQUIRE_KAFKA", "").lower() in truthy or os.environ.get("CI", "").lower() in truthy


def _unavailable(reason: str) -> NoReturn:
    if kafka_required():
        pytest.fail(f"a Kafka broker is required (REQUIRE_KAFKA=1 or CI=true) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


@dataclass(frozen=True)
class KafkaService:
    bootstrap_servers: str
    broker: Any  # KafkaBroker | None: only a broker we run ourselves can be restarted
    source: str  # "external", "testcontainers" or "maven"


# The session's own broker, for the revive fixture below (which must not create one).
_session_broker: list[Any] = []


def _testcontainers_kafka(stack: contextlib.ExitStack) -> str | None:
    """Best effort: a testcontainers Kafka when the package is installed and a Docker engine answers."""
    try:
        import docker  # type: ignore[import-not-found]
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        docker.from_env(timeout=5).ping()
    except Exception as exc:
        logger.debug("testcontainers installed but no Docker engine answers (%s): using the Maven-jar broker", exc)
        return None
    try:
        container = stack.enter_context(KafkaContainer(TESTCONTAINERS_IMAGE).with_kraft())
        return str(container.get_bootstrap_server())
    except Exception:
        logger.warning("testcontainers Kafka did not start: using the Maven-jar broker", exc_info=True)
        return None


@pytest.fixture(scope="session")
def _kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaService]:
    external = external_bootstrap()
    if external is not None:
        try:
            brokers = count_brokers(external, wait_s=30.0)
        except Exception as exc:
            _unavailable(f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer: {exc!r}")
        logger.info("using the external Kafka cluster at %s (%d brokers)", external, brokers)
        yield KafkaService(external, None, "external")
        return
    with contextlib.ExitStack() as stack:
        container_bootstrap = _testcontainers_kafka(stack)
        if container_bootstrap is not None:
            yield KafkaService(container_bootstrap, None, "testcontainers")
            return
        try:
            java_executable()
            lib = ensure_jars()
        except FetchError as exc:  # also ToolMissingError (mvn or java not on PATH)
            _unavailable(str(exc))
        broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), lib=lib)
        try:
            broker.start()
        except BrokerStartError as exc:
            _unavailable(str(exc))
        logger.info(
            "Kafka broker (Maven jars) at %s, PID %s, log %s", broker.bootstrap_servers, broker.pid, broker.log_path
        )
        _session_broker.append(broker)
        try:
            yield KafkaService(broker.bootstrap_servers, broker, "maven")
        finally:
            _session_broker.clear()
            broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: KafkaService) -> str:
    """``host:port`` of the session's Kafka cluster."""
    return _kafka_service.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_broker(_kafka_service: KafkaService) -> KafkaBroker | None:
    """The session broker when this harness runs it (restart/kill/stop it); ``None`` for an external cluster."""
    return _kafka_service.broker


def _revive_session_broker() -> None:
    for broker in _session_broker:
        if not broker.is_running():
            logger.info("the test left the Kafka broker down: starting it again")
            broker.start()


@pytest.fixture(autouse=True)
def _revive_kafka_broker() -> Iterator[None]:
    """After each test: start the session broker again if the test left it stopped or killed."""
    yield
    _revive_session_broker()


# --------------------------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------------------------

TopicFactory = Callable[..., Awaitable[str]]


async def wait_for_topic(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    """Until the broker's metadata shows ``topic`` with ``partitions`` partitions, each with a leader."""
    deadline = asyncio.get_running_loop().time() + TOPIC_READY_TIMEOUT_S
    while True:
        described = await admin.describe_topics([topic])
        info = described[0] if described else {}
        parts = info.get("partitions", [])
        if info.get("error_code") == 0 and len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT_S}s: {info}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """``name = await topic_factory(partitions=4)``: a new uniquely named topic (replication 1), ready to use.

    ``prefix=`` sets the name's start, ``config={"retention.ms": "..."}`` topic configs. The topics are deleted
    after the test (best effort: a broker the test left down only costs a logged warning).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30_000)
    await admin.start()
    created: list[str] = []

    async def create(partitions: int = 1, *, prefix: str = "capstan-test", config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        response = await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        for error in response.topic_errors:
            if error[1]:
                raise for_code(error[1])(f"could not create topic {error[0]}: {error[2:]}")
        created.append(name)
        await wait_for_topic(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        try:
            # Torn down before the autouse revive: bring a broker the test left down back first.
            await asyncio.to_thread(_revive_session_broker)
            if created:
                await asyncio.wait_for(admin.delete_topics(created), TOPIC_DELETE_TIMEOUT_S)
        except Exception as exc:
            logger.warning("could not delete test topics %s: %r", created, exc)
        finally:
            await admin.close()


# --------------------------------------------------------------------------------------------------------------
# Producing
# --------------------------------------------------------------------------------------------------------------

Bytesish = bytes | str | None


class Record(NamedTuple):
    """What ``produce`` sends. Plain tuples ``(key, value)`` or ``(key, value, headers)`` work as well."""

    key: Bytesish
    value: Bytesish
    headers: Sequence[tuple[str, bytes | str]] = ()
    partition: int | None = None
    timestamp_ms: int | None = None


Produce = Callable[..., Awaitable[list[tuple[int, int]]]]


def _to_bytes(value: Bytesish) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


@pytest.fixture
async def produce(kafka_bootstrap: str) -> AsyncIterator[Produce]:
    """``await produce(topic, records)`` sends records (acks=all) and returns ``[(partition, offset), ...]`` in
    input order. A record is a ``Record`` or a tuple ``(key, value[, headers[, partition[, timestamp_ms]]])``;
    keys, values and header values may be ``str`` (sent as UTF-8), ``bytes`` or ``None`` (key/value only). Keyed
    records go to the Java client's partition for the key (murmur2), like any Kafka producer's."""
    producer: AIOKafkaProducer | None = None

    async def send(topic: str, records: Iterable[Record | tuple[Any, ...]]) -> list[tuple[int, int]]:
        nonlocal producer
        if producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", request_timeout_ms=30_000)
            await producer.start()
        futures = []
        for raw in records:
            record = raw if isinstance(raw, Record) else Record(*raw)
            headers = [(name, _to_bytes(value)) for name, value in record.headers]
            futures.append(
                await producer.send(
                    topic,
                    value=_to_bytes(record.value),
                    key=_to_bytes(record.key),
                    headers=headers,
                    partition=record.partition,
                    timestamp_ms=record.timestamp_ms,
                )
            )
        metadata = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metadata]

    try:
        yield send
    finally:
        if producer is not None:
            await producer.stop()


@pytest.fixture(scope="session")
def capstan_kafka_bootstrap(kafka_bootstrap: str) -> str:
    """The ``ingress_kafka.testing`` plugin uses this session's broker."""
    return kafka_bootstrap

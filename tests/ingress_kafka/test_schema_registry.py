"""The schema registry client against a small in-process registry.

The server below stands in for Confluent Schema Registry's REST endpoint ``GET /schemas/ids/{id}`` (answers shaped
as Confluent's: ``{"schema": "<schema JSON as a string>", "schemaType"?: ...}`` and, for an unknown id, HTTP 404 with
``{"error_code": 40403, ...}``). The real registry is a Java service that is not on Maven Central or PyPI, so it
cannot run here.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import fastavro
import pytest
from aiohttp import web

from ingress_kafka.formats import FormatOptions, PoisonRecordError, RecordDecoder
from ingress_kafka.schema_registry import (
    SchemaRegistryClient,
    SchemaRegistryUnavailableError,
    UnknownSchemaError,
    UnsupportedSchemaError,
)

USER_SCHEMA = {"type": "record", "name": "User", "fields": [{"name": "name", "type": "string"}]}


@dataclass
class Registry:
    """State of the stand-in registry: what it serves and what it was asked."""

    url: str = ""
    schemas: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> answer body
    requests: Counter[int] = field(default_factory=Counter)
    authorization: list[str | None] = field(default_factory=list)
    status: int | None = None  # answer every request with this status instead
    gate: asyncio.Event | None = None  # hold answers until set
    delay: float = 0.0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, schema_id: int, schema: Any, **extra: Any) -> None:
        self.schemas[schema_id] = {"schema": json.dumps(schema), **extra}


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    state = Registry()

    async def schema_by_id(request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        state.requests[schema_id] += 1
        state.authorization.append(request.headers.get("Authorization"))
        state.started.set()
        if state.gate is not None:
            await state.gate.wait()
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.status is not None:
            return web.json_response({"error_code": 50001, "message": "Error in the backend"}, status=state.status)
        body = state.schemas.get(schema_id)
        if body is None:
            return web.json_response({"error_code": 40403, "message": f"Schema {schema_id} not found"}, status=404)
        return web.json_response(body, content_type="application/vnd.schemaregistry.v1+json")

    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", schema_by_id)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        if state.gate is not None:
            state.gate.set()
        await runner.cleanup()


@pytest.fixture
async def client(registry: Registry) -> AsyncIterator[SchemaRegistryClient]:
    c = SchemaRegistryClient(registry.url, timeout=5)
    try:
        yield c
    finally:
        await c.aclose()


async def test_fetch_then_cache(registry: Registry, client: SchemaRegistryClient) -> None:
    registry.add(1, USER_SCHEMA)
    first = await client.schema(1)
    assert fastavro.schemaless_reader(io.BytesIO(b"\x06bob"), first, None) == {"name": "bob"}
    assert registry.requests[1] == 1
    assert await client.schema(1) is first
    assert registry.requests[1] == 1  # the second call made no request
    stats = client.statistics()
    assert (stats.cached_schemas, stats.cache_hits, stats.fetches, stats.fetches_in_flight) == (1, 1, 1, 0)


async def test_schema_type_avro_and_trailing_slash(registry: Registry) -> None:
    registry.add(2, "string", schemaType="AVRO")
    c = SchemaRegistryClient(registry.url + "/")
    try:
        assert await c.schema(2) == "string"
    finally:
        await c.aclose()


async def test_concurrent_fetches_of_one_id_share_a_request(registry: Registry, client: SchemaRegistryClient) -> None:
    registry.add(3, USER_SCHEMA)
    registry.gate = asyncio.Event()
    waiters = [asyncio.create_task(client.schema(3)) for _ in range(20)]
    await asyncio.wait_for(registry.started.wait(), 5)
    await asyncio.sleep(0.05)  # let every waiter reach the shared fetch
    assert client.statistics().fetches_in_flight == 1
    waiters[0].cancel()  # one impatient caller does not cancel the fetch for the others
    registry.gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert all(r is results[0] for r in results)
    assert registry.requests[3] == 1
    assert waiters[0].cancelled()
    assert client.statistics().fetches == 1


async def test_unknown_id_is_poison_and_not_cached(registry: Registry, client: SchemaRegistryClient) -> None:
    with pytest.raises(UnknownSchemaError, match=f"schema id 404 is not registered .* at {registry.url}") as info:
        await client.schema(404)
    assert isinstance(info.value, PoisonRecordError)
    assert info.value.retriable is False
    assert info.value.schema_id == 404
    registry.add(404, "string")  # registered later (a lagging replica): the next record decodes
    assert await client.schema(404) == "string"
    assert registry.requests[404] == 2


async def test_concurrent_waiters_each_get_their_own_error(registry: Registry, client: SchemaRegistryClient) -> None:
    registry.gate = asyncio.Event()
    waiters = [asyncio.create_task(client.schema(9)) for _ in range(3)]
    await asyncio.wait_for(registry.started.wait(), 5)
    await asyncio.sleep(0.05)
    registry.gate.set()
    errors = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(e, UnknownSchemaError) for e in errors)
    assert len({id(e) for e in errors}) == 3  # the decoder sets .stage on its own error
    assert registry.requests[9] == 1


@pytest.mark.parametrize("status", [500, 503, 401])
async def test_server_errors_are_retriable_not_poison(
    registry: Registry, client: SchemaRegistryClient, status: int
) -> None:
    registry.add(5, "string")
    registry.status = status
    with pytest.raises(SchemaRegistryUnavailableError, match=f"HTTP {status}") as info:
        await client.schema(5)
    assert not isinstance(info.value, PoisonRecordError)
    assert info.value.retriable is True
    assert info.value.status == status and info.value.schema_id == 5
    registry.status = None  # the registry recovers: nothing negative was cached
    assert await client.schema(5) == "string"


async def test_connection_refused_is_retriable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    c = SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout=5)
    try:
        with pytest.raises(SchemaRegistryUnavailableError, match="gave no usable answer for schema id 1") as info:
            await c.schema(1)
        assert info.value.status is None
        assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    finally:
        await c.aclose()


async def test_timeout_is_retriable(registry: Registry) -> None:
    registry.add(1, "string")
    registry.delay = 2.0
    c = SchemaRegistryClient(registry.url, timeout=0.1)
    try:
        with pytest.raises(SchemaRegistryUnavailableError, match="Timeout"):
            await c.schema(1)
    finally:
        await c.aclose()


async def test_a_url_that_is_not_a_registry_is_not_poison(registry: Registry) -> None:
    registry.add(1, "string")
    c = SchemaRegistryClient(registry.url + "/wrong-prefix")  # aiohttp answers 404 without error code 40403
    try:
        with pytest.raises(SchemaRegistryUnavailableError, match="probably not a schema registry"):
            await c.schema(1)
    finally:
        await c.aclose()


async def test_cache_is_bounded_lru(registry: Registry) -> None:
    for i in range(1, 5):
        registry.add(i, {"type": "fixed", "name": f"F{i}", "size": i})
    c = SchemaRegistryClient(registry.url, cache_limit=2)
    try:
        await c.schema(1)
        await c.schema(2)
        await c.schema(1)  # 1 is now the most recently used
        await c.schema(3)  # evicts 2
        stats = c.statistics()
        assert (stats.cached_schemas, stats.cache_limit, stats.evictions) == (2, 2, 1)
        await c.schema(1)
        assert registry.requests[1] == 1  # still cached
        await c.schema(2)
        assert registry.requests[2] == 2  # was evicted, fetched again
        await c.schema(4)
        assert c.statistics().cached_schemas == 2
    finally:
        await c.aclose()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"schema": '{"type": "record", "name": "P"}', "schemaType": "PROTOBUF"}, "PROTOBUF schema; only AVRO"),
        ({"schema": "{}", "schemaType": "JSON"}, "JSON schema; only AVRO"),
        (
            {"schema": '"other.Type"', "references": [{"name": "other.Type", "subject": "s", "version": 1}]},
            "schema references are not supported",
        ),
        ({"schema": '{"type": "nope"}'}, "not a valid Avro schema"),
        ({"schema": "{not json"}, "not a valid Avro schema"),
    ],
)
async def test_schemas_capstan_cannot_use_are_poison(
    registry: Registry, client: SchemaRegistryClient, answer: dict[str, Any], message: str
) -> None:
    registry.schemas[6] = answer
    with pytest.raises(UnsupportedSchemaError, match=message) as info:
        await client.schema(6)
    assert isinstance(info.value, PoisonRecordError) and info.value.schema_id == 6


@pytest.mark.parametrize("answer", [{"id": 1}, {"schema": {"type": "string"}}, []])
async def test_malformed_answers_are_retriable(registry: Registry, client: SchemaRegistryClient, answer: Any) -> None:
    registry.schemas[7] = answer
    with pytest.raises(SchemaRegistryUnavailableError, match="no 'schema' string"):
        await client.schema(7)


async def test_credentials_in_the_url_are_sent_and_never_shown(registry: Registry) -> None:
    host = registry.url.removeprefix("http://")
    c = SchemaRegistryClient(f"http://key:s3cret@{host}")
    try:
        assert c.url == registry.url
        with pytest.raises(UnknownSchemaError) as info:
            await c.schema(1)
        assert "s3cret" not in str(info.value)
        assert registry.authorization == ["Basic a2V5OnMzY3JldA=="]  # base64("key:s3cret")
    finally:
        await c.aclose()


async def test_aclose_stops_fetches_and_leaves_a_given_session_open(registry: Registry) -> None:
    registry.add(1, "string")
    registry.gate = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        c = SchemaRegistryClient(registry.url, session=session)
        waiter = asyncio.create_task(c.schema(1))
        await asyncio.wait_for(registry.started.wait(), 5)
        await c.aclose()
        # The caller was not cancelled, so it gets a retriable error rather than a stray CancelledError.
        with pytest.raises(SchemaRegistryUnavailableError, match="is closed"):
            await waiter
        with pytest.raises(SchemaRegistryUnavailableError, match="is closed"):
            await c.schema(1)
        await c.aclose()  # idempotent
        assert not session.closed
        assert c.statistics().fetches_in_flight == 0


async def test_own_session_is_closed(registry: Registry) -> None:
    registry.add(1, "string")
    c = SchemaRegistryClient(registry.url)
    await c.schema(1)
    session = c._session
    assert session is not None
    await c.aclose()
    assert session.closed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "registry:8081"}, r"http\(s\) with a host"),
        ({"url": "http://r", "timeout": 0}, "timeout must be positive"),
        ({"url": "http://r", "cache_limit": 0}, "cache_limit must be at least 1"),
    ],
)
def test_constructor_checks(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchemaRegistryClient(**kwargs)


async def test_decoder_with_the_real_client(registry: Registry, client: SchemaRegistryClient) -> None:
    registry.add(10, USER_SCHEMA)
    registry.add(11, "string")
    options = FormatOptions(key_format="avro", value_format="avro", schema_registry_url=registry.url)
    decoder = RecordDecoder(options, client)
    key = b"\x00" + (11).to_bytes(4, "big") + b"\x06k-1"
    value = b"\x00" + (10).to_bytes(4, "big") + b"\x06bob"
    assert await decoder.decode_key(key) == "k-1"
    assert await decoder.decode_value(value) == b'{"name":"bob"}'
    assert await decoder.decode_value(value) == b'{"name":"bob"}'
    assert registry.requests == Counter({10: 1, 11: 1})
    with pytest.raises(UnknownSchemaError) as info:
        await decoder.decode_key(b"\x00" + (12).to_bytes(4, "big") + b"\x02")
    assert info.value.stage == "key"

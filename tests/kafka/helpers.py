"""Helpers for subscription tests: an engine with the Kafka test services, admin calls, waiting for counts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from engine.server import Engine
from tests.conftest import EngineFactory

KAFKA_APP = "tests.services.kafka_app:app"


@contextlib.asynccontextmanager
async def kafka_engine(
    factory: EngineFactory, http: aiohttp.ClientSession, bootstrap: str, **overrides: Any
) -> AsyncIterator[Engine]:
    """An in-process engine with the Kafka test services mounted and a cluster named ``local``."""
    overrides.setdefault("app", KAFKA_APP)
    async with factory(**overrides) as engine:
        status, body = await admin(
            http, engine, "POST", "/kafka-clusters", {"name": "local", "properties": {"bootstrap.servers": bootstrap}}
        )
        assert status in (200, 201), body
        yield engine


async def admin(
    http: aiohttp.ClientSession, engine: Engine, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, engine.admin_url + path, json=body) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def subscribe(http: aiohttp.ClientSession, engine: Engine, topic: str, sink: str, **options: str) -> str:
    options.setdefault("auto.offset.reset", "earliest")
    status, body = await admin(
        http,
        engine,
        "POST",
        "/subscriptions",
        {"source": f"kafka://local/{topic}", "sink": f"service://{sink}", "options": options},
    )
    assert status in (200, 201), body
    return str(body["id"])


async def call(http: aiohttp.ClientSession, engine: Engine, path: str, body: Any = None) -> Any:
    async with http.post(
        engine.ingress_url + path,
        data=None if body is None else json.dumps(body),
        headers={"content-type": "application/json"} if body is not None else {},
    ) as resp:
        text = await resp.text()
        assert resp.status == 200, (path, resp.status, text)
        return json.loads(text) if text else None


async def until(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], *, within: float = 60.0, what: str = ""
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while True:
        last = await probe()
        if done(last):
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what or 'condition'} not reached in {within}s; last: {last!r}")
        await asyncio.sleep(0.1)


async def counter_states(http: aiohttp.ClientSession, engine: Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    async def one(key: str) -> tuple[str, dict[str, Any]]:
        return key, await call(http, engine, f"/KafkaCounter/{key}/state")

    return dict(await asyncio.gather(*(one(k) for k in keys)))

"""Fixtures and HTTP helpers for the tests of timers, calls, awakeables, workflows, attach and cancellation.

They use the second SDK app, :mod:`tests.services.app3`; each test module starts it under hypercorn with a
module-scoped ``deployment3`` fixture (``running_deployment(APP3_SPEC)``).

``engine3(engine_factory, mode, deployment3, http)`` is ``engine_with_services`` for app3: in ``asgi`` mode the
engine mounts ``tests.services.app3:app`` in process (and only that app); in ``http`` mode it registers the
hypercorn deployment of app3 over the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from engine.server import Engine
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess

APP3_SPEC = "tests.services.app3:app"

# Sentinel for "no request body" (``None`` would be sent as the JSON body ``null``).
NO_BODY: Any = object()


async def register(http: aiohttp.ClientSession, admin_url: str, uri: str) -> None:
    async with http.post(admin_url + "/deployments", json={"uri": uri}) as resp:
        assert resp.status in (200, 201), await resp.text()


@contextlib.asynccontextmanager
async def engine3(
    factory: EngineFactory,
    mode: str,
    deployment: DeploymentProcess,
    http: aiohttp.ClientSession,
    **overrides: Any,
) -> AsyncIterator[Engine]:
    """An engine with app3's services registered over ``mode`` (``http`` or ``asgi``)."""
    if mode == "asgi":
        overrides.setdefault("app", APP3_SPEC)
    async with factory(**overrides) as engine:
        if mode == "http":
            await register(http, engine.admin_url, deployment.url)
        yield engine


Reply = tuple[int, Any, dict[str, str]]


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = NO_BODY,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    wait_s: float = 15.0,
) -> Reply:
    """``(status, decoded JSON body or text or None if empty, headers)``. ``body`` is sent as JSON; ``data`` raw."""
    hdrs = dict(headers or {})
    payload: bytes | None = data
    if body is not NO_BODY:
        payload = json.dumps(body).encode()
        hdrs.setdefault("content-type", "application/json")
    async with http.request(
        method, url, data=payload, headers=hdrs, timeout=aiohttp.ClientTimeout(total=wait_s)
    ) as resp:
        text = await resp.text()
        decoded: Any
        try:
            decoded = json.loads(text) if text else None
        except json.JSONDecodeError:
            decoded = text
        return resp.status, decoded, dict(resp.headers)


async def post(http: aiohttp.ClientSession, url: str, body: Any = NO_BODY, **kw: Any) -> Reply:
    return await request(http, "POST", url, body, **kw)


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> Reply:
    return await request(http, "GET", url, **kw)


async def patch(http: aiohttp.ClientSession, url: str, **kw: Any) -> Reply:
    return await request(http, "PATCH", url, **kw)


async def send(http: aiohttp.ClientSession, url: str, body: Any = NO_BODY, *, idem: str | None = None) -> str:
    """One-way send (``url`` ends in ``/send``); asserts 202 and returns the invocation id."""
    headers = {"idempotency-key": idem} if idem is not None else None
    status, reply, hdrs = await post(http, url, body, headers=headers)
    assert status == 202, (status, reply)
    assert isinstance(reply, dict) and reply["invocationId"] == hdrs["x-restate-id"], reply
    return str(reply["invocationId"])


async def eventually(
    probe: Callable[[], Awaitable[Any]],
    predicate: Callable[[Any], bool],
    *,
    within: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``probe()`` until ``predicate(result)`` holds, for at most ``within`` seconds; returns the last result."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = await probe()
        if predicate(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached in {within}s; last value: {last!r}")
        await asyncio.sleep(interval)


async def counter(http: aiohttp.ClientSession, ingress: str, key: str) -> int:
    """``Counter2/<key>/get``."""
    status, value, _ = await post(http, f"{ingress}/Counter2/{key}/get")
    assert status == 200, (status, value)
    return int(value)


async def box(http: aiohttp.ClientSession, ingress: str, key: str) -> list[str]:
    """``WaiterBox/<key>/ids``: the strings put there so far (awakeable ids, child invocation ids)."""
    status, value, _ = await post(http, f"{ingress}/WaiterBox/{key}/ids")
    assert status == 200, (status, value)
    return list(value or [])


async def box_items(http: aiohttp.ClientSession, ingress: str, key: str, n: int, within: float = 10.0) -> list[str]:
    """Wait until ``WaiterBox/<key>`` holds ``n`` items and return them."""
    items = await eventually(
        lambda: box(http, ingress, key), lambda v: len(v) >= n, within=within, what=f"{n} item(s) in box {key}"
    )
    return list(items)

"""Durable timers and service-to-service calls end to end (official Python SDK, app3), over both transports:
ctx.sleep, calls, one-way and delayed sends (from code and from the ingress ``?delay=``), per-key ordering of calls
and sends, idempotency keys on calls, terminal failures crossing a call; a timer that came due while
``capstan serve`` was SIGKILLed fires right after restart."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from engine import codec
from engine.ids import InvocationId
from engine.partition.types import Status
from engine.server import Engine
from engine.storage import keys
from tests.conftest import EngineFactory
from tests.e2e.procs import CapstanProcess
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import (
    APP3_SPEC,
    counter,
    engine3,
    eventually,
    get,
    post,
    register,
    send,
)


def invocation_status(engine: Engine, inv: str) -> Status | None:
    raw = engine.store.get(keys.status(InvocationId.parse(inv).to_bytes()))
    return None if raw is None else Status(codec.decode(raw).status)


async def test_sleep_takes_at_least_its_duration(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        t0 = time.monotonic()
        status, body, headers = await post(http, engine.ingress_url + "/Sleeper/nap", 300)
        elapsed = time.monotonic() - t0
        assert (status, body) == (200, "rested")
        InvocationId.parse(headers["x-restate-id"])
        assert elapsed >= 0.3, f"a 300 ms sleep returned after {elapsed:.3f}s"
        assert elapsed < 5.0


async def test_long_sleep_is_suspended(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    # in-process (full duplex) the SDK keeps the stream open until the engine asks it to suspend
    overrides = {"invoker": {"inactivity_timeout": "200ms"}}
    async with engine3(engine_factory, mode, deployment3, http, **overrides) as engine:
        inv = await send(http, engine.ingress_url + "/Sleeper/long/send")

        async def status_now() -> Status | None:
            return invocation_status(engine, inv)

        await eventually(
            status_now,
            lambda s: s == Status.SUSPENDED,
            within=5,
            what="Sleeper/long suspended",
        )
        status, body, _ = await get(http, f"{engine.ingress_url}/restate/output/{inv}")
        assert status == 470, (status, body)
        assert isinstance(body, dict) and body["code"] == 470


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["http", "asgi"])
async def test_timer_due_while_down_fires_after_restart(
    tmp_path: Path, deployment3: DeploymentProcess, transport: str
) -> None:
    extra = ["--app", APP3_SPEC] if transport == "asgi" else []
    server = CapstanProcess(tmp_path / "data", extra_args=extra)
    server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            if transport == "http":
                await register(http, server.admin_url, deployment3.url)
            t0 = time.monotonic()
            # an idempotency key keeps the result for attach, however early the nap completes after restart
            inv = await send(http, server.ingress_url + "/Sleeper/nap/send", 1000, idem="nap-crash")
            await asyncio.sleep(0.3)  # the SleepCommand is journaled
            server.kill()
            await asyncio.sleep(1.0)  # the timer comes due while the engine is down
            server.start()
            t1 = time.monotonic()
            status, body, _ = await get(http, f"{server.ingress_url}/restate/attach/{inv}", wait_s=10)
            done = time.monotonic()
            assert (status, body) == (200, "rested"), server.logs()
            assert done - t0 >= 1.0
            assert done - t1 < 1.0, f"an overdue timer took {done - t1:.2f}s to fire after restart"
    finally:
        server.stop()


async def test_call_and_send(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        assert (await post(http, url + "/Caller/call_add", "cs"))[:2] == (200, 1)
        assert (await post(http, url + "/Caller/call_add", "cs"))[:2] == (200, 2)
        status, child, _ = await post(http, url + "/Caller/send_add", "cs")
        assert status == 200
        InvocationId.parse(child)  # the one-way child's id, from CallInvocationIdCompletion
        await eventually(lambda: counter(http, url, "cs"), lambda v: v == 3, what="the sent add")
        assert await counter(http, url, "cs") == 3


async def test_terminal_failure_crosses_a_call(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        status, body, headers = await post(http, engine.ingress_url + "/Caller/call_boom", 418)
        assert status == 418
        assert body == {"code": 418, "message": "boom", "source": "invocation"}
        assert headers["x-restate-error-source"] == "invocation"


async def test_delayed_send_from_code(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        t0 = time.monotonic()
        status, child, _ = await post(http, url + "/Caller/send_delayed", "ds")
        assert status == 200
        InvocationId.parse(child)
        assert time.monotonic() - t0 < 1.0, "the caller waited for its delayed send"
        assert await counter(http, url, "ds") == 0
        await eventually(lambda: counter(http, url, "ds"), lambda v: v == 1, within=5, what="the delayed add")
        assert time.monotonic() - t0 >= 1.0, "a send delayed by 1 s ran early"


async def test_delayed_send_from_ingress(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        t0 = time.monotonic()
        before = datetime.now(UTC)
        status, body, headers = await post(http, url + "/Counter2/di/add/send?delay=1s", 5)
        assert status == 202, body
        assert isinstance(body, dict)
        assert body["status"] == "Accepted"
        assert body["invocationId"] == headers["x-restate-id"]
        execution_time = datetime.fromisoformat(body["executionTime"])
        assert execution_time.tzinfo is not None
        lead = (execution_time - before).total_seconds()
        assert 0.8 <= lead <= 3.0, f"executionTime {body['executionTime']} is {lead:.2f}s after the request"
        # scheduled, not running yet
        status, out, _ = await get(http, f"{url}/restate/output/{body['invocationId']}")
        assert status == 470, (status, out)
        assert await counter(http, url, "di") == 0
        await eventually(lambda: counter(http, url, "di"), lambda v: v == 5, within=5, what="the delayed add")
        assert time.monotonic() - t0 >= 1.0, "a send delayed by 1 s ran early"


async def test_delay_rules(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        status, body, _ = await post(http, url + "/Counter2/dr/add?delay=1s", 1)
        assert status == 400
        assert body["code"] == 400 and body["source"] == "ingress"
        assert body["message"] == "cannot use the delay query parameter with calls"
        status, body, _ = await post(http, url + "/Counter2/dr/add/send?delay=soon", 1)
        assert status == 400 and body["source"] == "ingress", body
        # the versioned form, a duration in milliseconds
        status, body, _ = await post(http, url + "/restate/send/Counter2/dr/add?delay=200ms", 1)
        assert status == 202 and "executionTime" in body, body
        await eventually(lambda: counter(http, url, "dr"), lambda v: v == 1, within=5, what="the delayed add")


async def test_calls_and_sends_to_one_key_keep_issue_order(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        assert (await post(http, url + "/Caller/ordered", "ord"))[0] == 200

        async def seen() -> list[int]:
            return list((await post(http, url + "/Counter2/ord/seen"))[1])

        await eventually(seen, lambda v: len(v) >= 10, what="10 appends")
        assert await seen() == list(range(10))


async def test_idempotency_key_on_calls(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        assert (await post(http, url + "/Caller/call_with_key", "ik"))[:2] == (200, [1, 1])
        assert await counter(http, url, "ik") == 1
        # another caller invocation using the same key on the same target gets the stored result
        assert (await post(http, url + "/Caller/call_with_key", "ik"))[:2] == (200, [1, 1])
        assert await counter(http, url, "ik") == 1

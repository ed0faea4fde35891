"""Invocations end to end: a real engine, the official Python SDK as the deployment, over both transports
(HTTP/1.1 request-response via hypercorn, and in-process full-duplex ASGI)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from engine.ids import InvocationId
from tests.conftest import EngineFactory, engine_with_services
from tests.services.fixtures import DeploymentProcess

JSON = {"content-type": "application/json"}


async def call(
    http: aiohttp.ClientSession, url: str, body: object = None, **headers: str
) -> tuple[int, object, dict[str, str]]:
    data = None if body is None else json.dumps(body)
    hdrs = dict(JSON) if body is not None else {}
    hdrs.update(headers)
    async with http.post(url, data=data, headers=hdrs) as resp:
        text = await resp.text()
        try:
            payload: object = json.loads(text) if text else None
        except json.JSONDecodeError:
            payload = text
        return resp.status, payload, dict(resp.headers)


async def test_greeter(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        status, body, headers = await call(http, engine.ingress_url + "/Greeter/greet", "world")
        assert (status, body) == (200, "Hello world!")
        assert headers["Content-Type"].startswith("application/json")
        InvocationId.parse(headers["x-restate-id"])


async def test_counter_object(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        base = engine.ingress_url + "/Counter/c1"
        assert (await call(http, base + "/add", 5))[:2] == (200, 5)
        assert (await call(http, base + "/add", 3))[:2] == (200, 8)
        assert (await call(http, base + "/get"))[:2] == (200, 8)
        assert (await call(http, engine.ingress_url + "/Counter/other/get"))[:2] == (200, 0)
        assert (await call(http, base + "/reset"))[0] == 200
        assert (await call(http, base + "/get"))[:2] == (200, 0)
        # ids of one key share the partition key (the first 16 characters)
        ids = [(await call(http, base + "/add", 1))[2]["x-restate-id"] for _ in range(2)]
        assert ids[0][:16] == ids[1][:16]


async def test_three_steps(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        before = engine.invoker.statistics().attempts_started
        status, body, _ = await call(http, engine.ingress_url + "/Steps/three", "x")
        assert (status, body) == (200, "x-1-2-3")
        attempts = engine.invoker.statistics().attempts_started - before
        # request-response: one attempt per awaited ctx.run (+1); full duplex: one attempt in all
        assert attempts == (4 if mode == "http" else 1)
        assert (await call(http, engine.ingress_url + "/Steps/nine", "y"))[:2] == (200, "y-1-2-3-4-5-6-7-8-9")


async def test_terminal_error_keeps_its_code(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        before = engine.invoker.statistics().attempts_started
        status, body, headers = await call(http, engine.ingress_url + "/Boom/teapot")
        assert status == 418
        assert body == {"code": 418, "message": "I'm a teapot", "source": "invocation"}
        assert headers["x-restate-error-source"] == "invocation"
        assert engine.invoker.statistics().attempts_started - before == 1  # terminal: never retried


async def test_retry_until_success(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        status, body, _ = await call(http, engine.ingress_url + "/Flaky/fail_twice", f"retry-{mode}")
        assert status == 200
        assert body == "ok after 3 attempts"


async def test_retries_exhausted_pause(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    overrides = {"invoker": {"retry_policy": {"initial_interval": "10ms", "max_attempts": 3}}}
    async with engine_with_services(engine_factory, "http", deployment, http, **overrides) as engine:
        async with http.post(engine.ingress_url + "/Flaky/always_fails/send") as resp:
            assert resp.status == 202
            inv = (await resp.json())["invocationId"]
        from engine import codec
        from engine.partition.types import Status
        from engine.storage import keys

        raw_id = InvocationId.parse(inv).to_bytes()
        for _ in range(200):
            st = codec.decode(engine.store.get(keys.status(raw_id)))
            if st.status == Status.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert st.status == Status.PAUSED
        assert st.retry_count == 3
        assert st.last_failure is not None and "always" in st.last_failure.message


async def test_state_set_and_clear(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        base = engine.ingress_url + "/StateOps/s1"
        assert (await call(http, base + "/set", {"a": "1", "b": "2", "c": "3"}))[0] == 200
        assert (await call(http, base + "/get_all"))[:2] == (200, {"a": "1", "b": "2", "c": "3"})
        assert (await call(http, base + "/clear", "b"))[0] == 200
        assert (await call(http, base + "/get_all"))[:2] == (200, {"a": "1", "c": "3"})
        assert (await call(http, base + "/clear_all"))[0] == 200
        assert (await call(http, base + "/get_all"))[:2] == (200, {})


async def test_send_returns_202(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        status, body, headers = await call(http, engine.ingress_url + "/Counter/s1/add/send", 4)
        assert status == 202
        assert isinstance(body, dict) and body["status"] == "Accepted"
        assert body["invocationId"] == headers["x-restate-id"]
        for _ in range(200):
            if (await call(http, engine.ingress_url + "/Counter/s1/get"))[1] == 4:
                break
            await asyncio.sleep(0.01)
        assert (await call(http, engine.ingress_url + "/Counter/s1/get"))[1] == 4


async def test_idempotency_key(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        url = engine.ingress_url + "/Counter/idem/add"
        first = await call(http, url, 10, **{"idempotency-key": "k-1"})
        second = await call(http, url, 10, **{"idempotency-key": "k-1"})
        assert first[:2] == second[:2] == (200, 10)
        assert first[2]["x-restate-id"] == second[2]["x-restate-id"]
        # concurrent duplicates attach to one execution
        results = await asyncio.gather(*[call(http, url, 1, **{"idempotency-key": "k-2"}) for _ in range(5)])
        assert {r[1] for r in results} == {11}
        assert len({r[2]["x-restate-id"] for r in results}) == 1
        # a different body with the same key still gets the first result
        assert (await call(http, url, 999, **{"idempotency-key": "k-2"}))[1] == 11
        assert (await call(http, engine.ingress_url + "/Counter/idem/get"))[1] == 11
        status, body, _ = await call(http, url + "/send", 5, **{"idempotency-key": "k-2"})
        assert status == 202 and isinstance(body, dict) and body["status"] == "PreviouslyAccepted"


async def test_exclusive_handlers_run_in_arrival_order(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        url = engine.ingress_url + "/Counter/order/add_logged/send"
        for i in range(30):  # sequential sends: each is durable (and ordered) before the next one is made
            assert (await call(http, url, i))[0] == 202
        for _ in range(500):
            if (await call(http, engine.ingress_url + "/Counter/order/get"))[1] == sum(range(30)):
                break
            await asyncio.sleep(0.02)
        from engine.storage import keys

        raw = engine.store.get(keys.state("Counter", "order", b"log"))
        assert raw is not None and json.loads(raw) == list(range(30))


async def test_state_survives_restart(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        assert (await call(http, engine.ingress_url + "/Counter/keep/add", 7))[1] == 7
    async with engine_factory(**({"app": "tests.services.app:app"} if mode == "asgi" else {})) as engine:
        assert (await call(http, engine.ingress_url + "/Counter/keep/get"))[:2] == (200, 7)
        assert (await call(http, engine.ingress_url + "/Counter/keep/add", 1))[1] == 8


async def test_shared_handlers_do_not_wait_for_the_lock(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        base = engine.ingress_url + "/Counter/shared"
        assert (await call(http, base + "/add", 1))[1] == 1
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(call(http, base + "/add_slow", 10))
        await asyncio.sleep(0.1)  # add_slow holds the lock now
        t0 = loop.time()
        status, value, _ = await call(http, base + "/get")
        shared_latency = loop.time() - t0
        exclusive = asyncio.create_task(call(http, base + "/add", 100))
        assert status == 200
        assert shared_latency < 0.3, "a shared handler waited for the exclusive lock"
        assert value in (1, 11)  # reads committed state only: before add_slow's journal is applied, or after
        assert (await slow)[1] == 11
        assert (await exclusive)[1] == 111  # the exclusive call queued behind add_slow


async def test_log_is_truncated_once_state_is_durable(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    overrides = {
        "storage": {"truncate_every_records": 5},
        "log": {"segment_size_bytes": 4096},
        "num_partitions": 1,
    }
    async with engine_with_services(engine_factory, "asgi", deployment, http, **overrides) as engine:
        for i in range(60):
            assert (await call(http, engine.ingress_url + "/Counter/trunc/add", 1))[1] == i + 1
        stats = engine.partitions[0]._log.statistics()
        assert stats.first_lsn > 1, "old segments were not deleted"
        assert stats.segments < stats.last_lsn // 5
    async with engine_factory(app="tests.services.app:app", **overrides) as engine:
        assert (await call(http, engine.ingress_url + "/Counter/trunc/get"))[1] == 60
        assert (await call(http, engine.ingress_url + "/Counter/trunc/add", 1))[1] == 61

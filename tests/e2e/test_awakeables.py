"""Awakeables end to end (official Python SDK, app3), over both transports: resolve and reject over the ingress
(``POST /restate/awakeables/{id}/resolve|reject`` -> 202), resolve and reject from code (CompleteAwakeable),
malformed ids (400), ids of invocations the engine does not know (404), and a second completion of one awakeable
(never applied: the handler sees the first value)."""

from __future__ import annotations

import asyncio

import aiohttp

from engine.ids import awakeable_id, random_invocation_id
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import (
    box_items,
    counter,
    engine3,
    post,
)


async def test_resolve_over_http(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        waiting = asyncio.create_task(post(http, url + "/Waiter/a1/wait"))
        [aid] = await box_items(http, url, "a1", 1)
        assert aid.startswith("sign_1"), aid
        assert not waiting.done()
        status, body, _ = await post(http, f"{url}/restate/awakeables/{aid}/resolve", "hello")
        assert status == 202, body
        assert body is None  # empty body
        status, value, _ = await asyncio.wait_for(waiting, 10)
        assert (status, value) == (200, "got hello")
        assert await counter(http, url, "waited-a1") == 1


async def test_reject_over_http(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        waiting = asyncio.create_task(post(http, url + "/Waiter/r1/wait"))
        [aid] = await box_items(http, url, "r1", 1)
        status, body, _ = await post(
            http, f"{url}/restate/awakeables/{aid}/reject", data=b"nope", headers={"content-type": "text/plain"}
        )
        assert status == 202, body
        # the body becomes a failure {500, "nope"}; the handler's await raises TerminalError, uncaught
        status, body, headers = await asyncio.wait_for(waiting, 10)
        assert status == 500
        assert body == {"code": 500, "message": "nope", "source": "invocation"}
        assert headers["x-restate-error-source"] == "invocation"
        assert await counter(http, url, "waited-r1") == 0


async def test_resolve_and_reject_from_code(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        waiting = asyncio.create_task(post(http, url + "/Waiter/c1/wait"))
        [aid] = await box_items(http, url, "c1", 1)
        assert (await post(http, url + "/Resolver/resolve", {"id": aid, "value": "from code"}))[0] == 200
        assert (await asyncio.wait_for(waiting, 10))[:2] == (200, "got from code")

        waiting = asyncio.create_task(post(http, url + "/Waiter/c2/wait"))
        [aid] = await box_items(http, url, "c2", 1)
        reply = await post(http, url + "/Resolver/reject", {"id": aid, "message": "no way", "code": 418})
        assert reply[0] == 200, reply
        status, body, _ = await asyncio.wait_for(waiting, 10)
        assert status == 418
        assert body == {"code": 418, "message": "no way", "source": "invocation"}


async def test_bad_and_unknown_awakeable_ids(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        for bad in ("nonsense", "sign_1", "sign_1!!!!", "sign_1AQIDBAUGBwgJ", "inv_1abc"):
            for op in ("resolve", "reject"):
                status, body, _ = await post(http, f"{url}/restate/awakeables/{bad}/{op}", "x")
                assert status == 400, (bad, op, status, body)
                assert body["code"] == 400 and body["source"] == "ingress", body
        unknown = awakeable_id(random_invocation_id(), 17)
        for op in ("resolve", "reject"):
            status, body, _ = await post(http, f"{url}/restate/awakeables/{unknown}/{op}", "x")
            assert status == 404, (op, status, body)
            assert body["code"] == 404 and body["source"] == "ingress", body
        # the awakeable of a completed (non-idempotent, so forgotten) invocation
        waiting = asyncio.create_task(post(http, url + "/Waiter/b1/wait"))
        [aid] = await box_items(http, url, "b1", 1)
        assert (await post(http, f"{url}/restate/awakeables/{aid}/resolve", "once"))[0] == 202
        assert (await asyncio.wait_for(waiting, 10))[:2] == (200, "got once")
        status, body, _ = await post(http, f"{url}/restate/awakeables/{aid}/resolve", "twice")
        assert status == 404, (status, body)
        # wrong method
        async with http.get(f"{url}/restate/awakeables/{aid}/resolve") as resp:
            assert resp.status == 405


async def test_second_completion_is_not_applied(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        waiting = asyncio.create_task(post(http, url + "/Waiter/d1/wait_twice"))
        first, second = await box_items(http, url, "d1", 2)
        assert first != second
        assert (await post(http, f"{url}/restate/awakeables/{first}/resolve", "a"))[0] == 202
        # the invocation still runs (it awaits ``second``): the duplicate reaches it, and must not be applied.
        # Restate answers 202 (fire and forget); 409 is accepted too.
        status, body, _ = await post(http, f"{url}/restate/awakeables/{first}/resolve", "b")
        assert status in (202, 409), (status, body)
        status, body, _ = await post(http, url + "/Resolver/resolve", {"id": first, "value": "c"})
        assert status == 200, body  # CompleteAwakeable from code is fire and forget too
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert (await post(http, f"{url}/restate/awakeables/{second}/resolve", "z"))[0] == 202
        assert (await asyncio.wait_for(waiting, 10))[:2] == (200, "a|z")

        waiting = asyncio.create_task(post(http, url + "/Waiter/d2/wait_twice"))
        first, second = await box_items(http, url, "d2", 2)
        assert (await post(http, f"{url}/restate/awakeables/{first}/resolve", "x"))[0] == 202
        assert (await post(http, f"{url}/restate/awakeables/{first}/reject", data=b"no"))[0] in (202, 409)
        assert (await post(http, f"{url}/restate/awakeables/{second}/resolve", "y"))[0] == 202
        assert (await asyncio.wait_for(waiting, 10))[:2] == (200, "x|y")

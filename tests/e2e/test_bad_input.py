"""Bad input gets a clear error and loses nothing: malformed requests at the ingress and admin API, and
deployments that are down, return garbage frames, or hang."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from engine import codec
from engine.ids import InvocationId
from engine.partition.types import InvocationStatus, Status
from engine.storage import keys
from tests.conftest import EngineFactory, engine_with_services
from tests.services.fixtures import DeploymentProcess


async def _status(engine: object, inv: str) -> InvocationStatus:
    raw = engine.store.get(keys.status(InvocationId.parse(inv).to_bytes()))  # type: ignore[attr-defined]
    assert raw is not None
    return codec.decode(raw)  # type: ignore[no-any-return]


async def _wait_failure(engine: object, inv: str, predicate: object) -> InvocationStatus:
    for _ in range(300):
        st = await _status(engine, inv)
        if st.last_failure is not None and predicate(st):  # type: ignore[operator]
            return st
        await asyncio.sleep(0.02)
    raise AssertionError(f"no matching failure recorded: {st}")


async def test_malformed_requests(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    overrides = {"ingress_http": {"request_size_limit_bytes": 1024}}
    async with engine_with_services(engine_factory, "http", deployment, http, **overrides) as engine:
        base = engine.ingress_url
        cases: list[tuple[str, str, dict[str, str], bytes, int, str]] = [
            ("POST", "/Greeter", {}, b"", 400, "bad path"),
            ("POST", "/Greeter/greet/extra/more", {}, b"", 400, "bad path"),
            ("POST", "/Counter/add", {}, b"", 400, "bad path"),
            ("POST", "/Nope/greet", {}, b"", 404, "service 'Nope' not found"),
            ("POST", "/Greeter/nope", {}, b"", 404, "handler 'nope' was not found"),
            ("PUT", "/Greeter/greet", {}, b"", 405, "not allowed"),
            ("POST", "/Greeter/greet", {"content-type": "application/json"}, b"x" * 2048, 413, "exceeds"),
            ("POST", "/Greeter/greet", {"content-type": "text/plain"}, b"hi", 400, "input validation"),
            (
                "POST",
                "/Greeter/greet",
                {"content-type": "application/json", "idempotency-key": "a b"},
                b'"x"',
                400,
                "idempotency-key",
            ),
            ("POST", "/Greeter/greet?delay=10s", {"content-type": "application/json"}, b'"x"', 400, "delay"),
            ("POST", "/Greeter/greet/%ZZ", {}, b"", 400, "bad path"),
        ]
        for method, path, headers, body, status, needle in cases:
            async with http.request(method, base + path, headers=headers, data=body) as resp:
                text = await resp.text()
                assert resp.status == status, (path, resp.status, text)
                payload = json.loads(text)
                assert needle in payload["message"], (path, payload)
                assert payload["code"] == status
                assert resp.headers["content-type"].startswith("application/json")
        # nothing broke
        async with http.post(base + "/Greeter/greet", json="ok") as resp:
            assert resp.status == 200 and await resp.json() == "Hello ok!"


async def test_admin_rejects_bad_deployments(engine_factory: EngineFactory, http: aiohttp.ClientSession) -> None:
    async with engine_factory() as engine:
        admin = engine.admin_url
        for body, status, needle in [
            ({"uri": "http://127.0.0.1:1"}, 502, "unreachable"),
            ({"uri": "ftp://x"}, 400, "invalid uri"),
            ({"nope": 1}, 400, "invalid request body"),
        ]:
            async with http.post(admin + "/deployments", json=body) as resp:
                assert resp.status == status, await resp.text()
                assert needle in (await resp.json())["message"]
        async with http.post(admin + "/deployments", data=b"{not json") as resp:
            assert resp.status == 400
        async with http.get(admin + "/deployments/dp_nope") as resp:
            assert resp.status == 404
        async with http.get(admin + "/services/Nope") as resp:
            assert resp.status == 404
        async with http.get(admin + "/health") as resp:
            assert resp.status == 200


@pytest.fixture
async def fake_deployment(deployment: DeploymentProcess, http: aiohttp.ClientSession) -> AsyncIterator[dict[str, str]]:
    """A deployment that serves the real manifest but answers invocations with garbage or not at all."""
    async with http.get(
        deployment.url + "/discover", headers={"accept": "application/vnd.restate.endpointmanifest.v4+json"}
    ) as resp:
        manifest = await resp.read()
        manifest_type = resp.headers["content-type"]
    hang = asyncio.Event()

    async def discover(request: web.Request) -> web.Response:
        return web.Response(body=manifest, headers={"content-type": manifest_type})

    async def invoke(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.match_info["handler"] == "greet":
            ctype = request.headers["content-type"]
            return web.Response(body=b"\x00\x09\xff\xff\xff\xff\xff\xffgarbage", headers={"content-type": ctype})
        await hang.wait()
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/discover", discover)
    app.router.add_post("/invoke/{service}/{handler}", invoke)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield {"url": f"http://127.0.0.1:{port}"}
    finally:
        hang.set()
        await runner.cleanup()


async def test_garbage_and_hanging_deployments(
    engine_factory: EngineFactory, fake_deployment: dict[str, str], http: aiohttp.ClientSession
) -> None:
    overrides = {"invoker": {"abort_timeout": "300ms", "inactivity_timeout": "300ms"}}
    async with engine_factory(**overrides) as engine:
        async with http.post(engine.admin_url + "/deployments", json={"uri": fake_deployment["url"]}) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(engine.ingress_url + "/Greeter/greet/send", json="x") as resp:
            assert resp.status == 202
            garbage = (await resp.json())["invocationId"]
        async with http.post(engine.ingress_url + "/Slow/hang/send") as resp:
            assert resp.status == 202
            hanging = (await resp.json())["invocationId"]
        st = await _wait_failure(engine, garbage, lambda s: s.retry_count >= 2)
        assert st.last_failure is not None and st.last_failure.code == 571
        assert "frame" in st.last_failure.message
        st = await _wait_failure(engine, hanging, lambda s: True)
        assert st.last_failure is not None and st.last_failure.code == 504
        assert st.status in (Status.BACKING_OFF, Status.INVOKED)
        async with http.get(engine.admin_url + "/health") as resp:
            assert resp.status == 200


async def test_overload_is_shed_with_retry_after(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    # one concurrent ingress request at most: a second one while the first waits gets 429
    overrides = {"ingress_http": {"concurrent_requests_limit": 1}}
    async with engine_with_services(engine_factory, "http", deployment, http, **overrides) as engine:
        slow = asyncio.create_task(http.post(engine.ingress_url + "/Counter/busy/add_slow", json=1))
        await asyncio.sleep(0.1)
        async with http.post(engine.ingress_url + "/Counter/busy/get") as resp:
            assert resp.status == 429
            assert resp.headers["retry-after"]
            assert (await resp.json())["message"] == "too many concurrent requests"
        resp = await slow
        assert resp.status == 200 and await resp.json() == 1
        resp.release()
    # invoker backlog: one attempt at a time, at most one waiting; more new work is shed with 503
    overrides = {"invoker": {"concurrency_limit": 1, "queue_limit": 1}}
    async with engine_with_services(engine_factory, "http", deployment, http, **overrides) as engine:
        statuses = []
        for i in range(6):
            async with http.post(engine.ingress_url + f"/Counter/b{i}/add_slow/send", json=1) as resp:
                statuses.append(resp.status)
                if resp.status == 503:
                    assert resp.headers["retry-after"]
        assert statuses[:2] == [202, 202] and 503 in statuses
        accepted = statuses.count(202)
        for _ in range(200):  # nothing accepted is lost: every accepted send completes
            done = 0
            for i in range(6):
                async with http.post(engine.ingress_url + f"/Counter/b{i}/get") as resp:
                    done += (await resp.json()) == 1
            if done == accepted:
                break
            await asyncio.sleep(0.05)
        assert done == accepted

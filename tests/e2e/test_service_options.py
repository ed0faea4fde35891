"""Options the SDK declares in its manifest (retry policy, idempotency retention, lazy state, private ingress),
protocol V5, re-registration with force, and a deployment that goes down and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from engine import codec
from engine.ids import InvocationId
from engine.partition.types import InvocationStatus, Status
from engine.storage import keys
from tests.conftest import EngineFactory, engine_with_services
from tests.e2e.test_invocations import call
from tests.services.fixtures import DeploymentProcess, start_deployment


def _status(engine: object, inv: str) -> InvocationStatus | None:
    raw = engine.store.get(keys.status(InvocationId.parse(inv).to_bytes()))  # type: ignore[attr-defined]
    return None if raw is None else codec.decode(raw)  # type: ignore[no-any-return]


async def test_protocol_v5(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(
        engine_factory, mode, deployment, http, invoker={"max_protocol_version": 5}
    ) as engine:
        assert (await call(http, engine.ingress_url + "/Greeter/greet", "v5"))[:2] == (200, "Hello v5!")
        assert (await call(http, engine.ingress_url + "/Steps/three", "a"))[:2] == (200, "a-1-2-3")
        assert (await call(http, engine.ingress_url + "/Counter/v5/add", 2))[:2] == (200, 2)


async def test_lazy_state(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        base = engine.ingress_url + "/LazyStore/l1"
        assert (await call(http, base + "/set", {"a": "1", "b": "2", "c": "3"}))[0] == 200
        assert (await call(http, base + "/take", "a"))[:2] == (200, "1")
        assert (await call(http, base + "/take", "zz"))[:2] == (200, None)
        assert (await call(http, base + "/keys"))[:2] == (200, ["b", "c"])


async def test_retry_policy_from_the_manifest(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    # the engine default is 70 attempts; the service says 2 then pause, the handler says 4 then kill
    async with engine_with_services(engine_factory, "http", deployment, http) as engine:
        inv = (await call(http, engine.ingress_url + "/Limited/always_fails/send"))[1]["invocationId"]  # type: ignore[index]
        for _ in range(300):
            st = _status(engine, inv)
            if st is not None and st.status == Status.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert st is not None and st.status == Status.PAUSED and st.retry_count == 2
        status, body, _ = await call(http, engine.ingress_url + "/Limited/killed_after_four")
        assert status == 500
        assert "fails on purpose" in body["message"]  # type: ignore[index]


async def test_idempotency_retention_expires(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    overrides = {"invocation": {"cleanup_interval": "100ms"}}
    async with engine_with_services(engine_factory, "http", deployment, http, **overrides) as engine:
        url = engine.ingress_url + "/ShortMemory/m1/bump"
        first = await call(http, url, **{"idempotency-key": "once"})
        assert first[:2] == (200, 1)
        assert (await call(http, url, **{"idempotency-key": "once"}))[:2] == (200, 1)
        await asyncio.sleep(1.5)  # the service declares idempotency_retention = 1 s
        assert _status(engine, first[2]["x-restate-id"]) is None
        again = await call(http, url, **{"idempotency-key": "once"})
        assert again[:2] == (200, 2)  # forgotten, so it runs again


async def test_private_service_rejected_by_ingress(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_with_services(engine_factory, "http", deployment, http) as engine:
        status, body, _ = await call(http, engine.ingress_url + "/Hidden/secret")
        assert status == 400 and body["message"] == "the invoked service is not public"  # type: ignore[index]


async def test_register_again_and_force(
    engine_factory: EngineFactory, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        ids = []
        for body, expected in [
            ({"uri": deployment.url}, 201),
            ({"uri": deployment.url}, 200),
            ({"uri": deployment.url + "/"}, 200),
            ({"uri": deployment.url, "force": True}, 200),
        ]:
            async with http.post(engine.admin_url + "/deployments", json=body) as resp:
                assert resp.status == expected, await resp.text()
                ids.append((await resp.json())["id"])
        assert len(set(ids)) == 1
        async with http.get(engine.admin_url + "/deployments") as resp:
            assert len((await resp.json())["deployments"]) == 1


async def test_deployment_down_then_back(
    engine_factory: EngineFactory, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    dep = start_deployment()
    port = dep.port
    try:
        async with engine_factory() as engine:
            async with http.post(engine.admin_url + "/deployments", json={"uri": dep.url}) as resp:
                assert resp.status == 201
            dep.kill()
            failed_before = engine.invoker.statistics().attempts_failed
            pending = asyncio.create_task(call(http, engine.ingress_url + "/Greeter/greet", "again"))
            await asyncio.sleep(0.5)  # attempts fail (connection refused) and are retried
            assert not pending.done()
            assert engine.invoker.statistics().attempts_failed - failed_before >= 2
            dep = start_deployment(port=port)
            status, body, _ = await asyncio.wait_for(pending, 20)
            assert (status, body) == (200, "Hello again!")
    finally:
        dep.stop()

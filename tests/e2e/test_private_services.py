"""Private services: ``PATCH /services/{name}`` with ``{"public": false}`` (Restate's admin API) makes ingress answer
400 ``the invoked service is not public`` while calls from other handlers keep working; the SDK's
``ingress_private=True`` is covered by tests/e2e/test_service_options.py."""

from __future__ import annotations

import aiohttp

from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import engine3, patch, post, request

NOT_PUBLIC = "the invoked service is not public"


async def test_patch_public_false_hides_a_service_from_ingress_only(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        ingress, admin = engine.ingress_url, engine.admin_url
        assert (await post(http, f"{ingress}/Counter2/p/add", 1))[:2] == (200, 1)

        status, body, _ = await patch(http, f"{admin}/services/Counter2", body={"public": False})
        assert status == 200 and body["public"] is False, body
        assert all(h["public"] is False for h in body["handlers"]), body
        assert (await request(http, "GET", f"{admin}/v3/services/Counter2"))[1]["public"] is False
        for path, payload in (("/Counter2/p/add", 1), ("/Counter2/p/add/send", 1), ("/Counter2/p/get", None)):
            status, body, _ = await post(http, ingress + path, payload)
            assert (status, body["message"]) == (400, NOT_PUBLIC), (path, status, body)
        # service-to-service calls still reach it
        assert (await post(http, f"{ingress}/Caller/call_add", "p"))[:2] == (200, 2)
        status, body, _ = await post(
            http, f"{admin}/query", {"query": "SELECT public FROM sys_service WHERE name = 'Counter2'"}
        )
        assert body["rows"] == [{"public": False}], body

        status, body, _ = await patch(http, f"{admin}/services/Counter2", body={"public": True})
        assert status == 200 and body["public"] is True
        assert (await post(http, f"{ingress}/Counter2/p/add", 1))[:2] == (200, 3)


async def test_patch_service_errors(
    engine_factory: EngineFactory, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, "http", deployment3, http) as engine:
        admin = engine.admin_url
        status, body, _ = await patch(http, f"{admin}/services/Nope", body={"public": False})
        assert status == 404, body
        status, body, _ = await patch(http, f"{admin}/services/Counter2", body={"public": "no"})
        assert status == 400, body
        status, body, _ = await patch(http, f"{admin}/services/Counter2", body={"journal_retention": "1h"})
        assert status == 400 and "journal_retention" in body["message"], body
        status, body, _ = await patch(http, f"{admin}/services/Counter2", body={})
        assert status == 200 and body["public"] is True

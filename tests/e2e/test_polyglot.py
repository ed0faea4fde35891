"""Services written with the other official SDKs, registered with a real engine over HTTP/1.1 request-response:

- TypeScript (``tests/sdk_ts``, npm ``@restatedev/restate-sdk``): ``RoleUpdate``, a saga that applies one
  permission per ``ctx.run`` and, on a ``TerminalError``, runs its compensations in reverse and rethrows.
- Go (``tests/sdk_go``, ``github.com/restatedev/sdk-go``): the signup flow, a ``User`` virtual object and a
  ``Signup`` service that calls ``User/create``, then blocks on an awakeable the test resolves over the ingress.

Locally a missing ``node``/``go`` skips these tests; with ``CI=true`` it fails them, as does a failed build.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import EngineFactory
from tests.services import polyglot
from tests.services.fixtures import DeploymentProcess

pytestmark = pytest.mark.e2e

JSON = {"content-type": "application/json"}
POLL_TIMEOUT_S = 20.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _start(part: polyglot.Part) -> DeploymentProcess:
    reason = polyglot.missing_toolchain(part)
    if reason is not None:
        if _in_ci():
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    return polyglot.start_ts_deployment() if part == "ts" else polyglot.start_go_deployment()


@pytest.fixture(scope="module")
def ts_deployment() -> Iterator[DeploymentProcess]:
    dep = _start("ts")
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def go_deployment() -> Iterator[DeploymentProcess]:
    dep = _start("go")
    try:
        yield dep
    finally:
        dep.stop()


async def call(http: aiohttp.ClientSession, url: str, body: object = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body)
    async with http.post(url, data=data, headers=JSON if body is not None else {}) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return resp.status, text


async def register(http: aiohttp.ClientSession, admin_url: str, dep: DeploymentProcess) -> dict[str, object]:
    async with http.post(admin_url + "/deployments", json={"uri": dep.url}) as resp:
        assert resp.status in (200, 201), f"{await resp.text()}\ndeployment log:\n{dep.logs()}"
        body: dict[str, object] = await resp.json()
        return body


def service_names(registration: dict[str, object]) -> set[str]:
    services = registration["services"]
    assert isinstance(services, list)
    return {s["name"] for s in services}


async def poll_user(http: aiohttp.ClientSession, url: str, until: str, dep: DeploymentProcess) -> dict[str, object]:
    """``GET`` the Go ``User/<id>/get`` until the user has a truthy ``until`` field."""
    deadline = asyncio.get_running_loop().time() + POLL_TIMEOUT_S
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        status, last = await call(http, url)
        if status == 200 and isinstance(last, dict) and last.get(until):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"user never had {until!r} in {POLL_TIMEOUT_S}s; last: {last!r}\nlog:\n{dep.logs()}")


# --- TypeScript: role-update saga -------------------------------------------------------------------------------


async def test_ts_saga_applies_every_step(
    engine_factory: EngineFactory, ts_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        assert "RoleUpdate" in service_names(await register(http, engine.admin_url, ts_deployment))
        base = engine.ingress_url + "/RoleUpdate"
        request = {"userId": "ada", "role": "admin", "permissions": ["read", "write", "delete"]}
        status, body = await call(http, base + "/update", request)
        assert (status, body) == (200, {"userId": "ada", "role": "admin", "applied": ["read", "write", "delete"]})
        assert await call(http, base + "/permissions", {"userId": "ada"}) == (200, ["read", "write", "delete"])
        # each side effect ran once although every ctx.run ended a request-response attempt (replays skip them)
        history = ["grant read", "grant write", "grant delete"]
        assert await call(http, base + "/history", {"userId": "ada"}) == (200, history)


async def test_ts_saga_compensates_on_terminal_error(
    engine_factory: EngineFactory, ts_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        await register(http, engine.admin_url, ts_deployment)
        base = engine.ingress_url + "/RoleUpdate"
        request = {"userId": "bob", "role": "auditor", "permissions": ["read", "write", "delete"], "failAt": 2}
        status, body = await call(http, base + "/update", request)
        assert status == 422, body
        assert isinstance(body, dict)
        assert body["code"] == 422
        assert body["message"] == "cannot apply delete for role auditor"
        assert await call(http, base + "/permissions", {"userId": "bob"}) == (200, [])
        # undone in reverse order, the failed step's (idempotent) undo first
        history = ["grant read", "grant write", "revoke delete", "revoke write", "revoke read"]
        assert await call(http, base + "/history", {"userId": "bob"}) == (200, history)

        # failing at the first step: nothing was granted
        status, body = await call(http, base + "/update", {**request, "userId": "carol", "failAt": 0})
        assert status == 422, body
        assert await call(http, base + "/permissions", {"userId": "carol"}) == (200, [])


# --- Go: signup with an awakeable -------------------------------------------------------------------------------


async def test_go_user_object(
    engine_factory: EngineFactory, go_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        assert service_names(await register(http, engine.admin_url, go_deployment)) == {"User", "Signup"}
        base = engine.ingress_url + "/User/grace"
        assert await call(http, base + "/get") == (200, None)
        user = {"name": "Grace", "email": "grace@example.com", "active": False}
        assert await call(http, base + "/create", {"name": "Grace", "email": "grace@example.com"}) == (200, user)
        assert await call(http, base + "/get") == (200, user)
        status, body = await call(http, base + "/create", {"name": "Grace", "email": "other@example.com"})
        assert status == 409, body
        assert isinstance(body, dict) and body["message"] == "user grace already exists"
        assert await call(http, base + "/get") == (200, user)


async def test_go_signup_awaits_awakeable(
    engine_factory: EngineFactory, go_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        await register(http, engine.admin_url, go_deployment)
        signup = {"userId": "linus", "name": "Linus", "email": "linus@example.com"}
        status, body = await call(http, engine.ingress_url + "/Signup/signup/send", signup)
        assert status == 202, body
        assert isinstance(body, dict) and body["invocationId"].startswith("inv_")

        # Signup called User/create, then published its awakeable's id on the user and is blocked on it
        user_url = engine.ingress_url + "/User/linus/get"
        pending = await poll_user(http, user_url, "pendingConfirmation", go_deployment)
        assert pending["active"] is False
        awakeable_id = pending["pendingConfirmation"]
        assert isinstance(awakeable_id, str) and awakeable_id.startswith("sign_")

        status, body = await call(http, f"{engine.ingress_url}/restate/awakeables/{awakeable_id}/resolve", "code-42")
        assert status == 202, body

        user = await poll_user(http, user_url, "active", go_deployment)
        assert user == {"name": "Linus", "email": "linus@example.com", "active": True, "confirmationCode": "code-42"}


async def test_go_signup_of_existing_user_fails_with_409(
    engine_factory: EngineFactory, go_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine_factory() as engine:
        await register(http, engine.admin_url, go_deployment)
        status, _ = await call(http, engine.ingress_url + "/User/ken/create", {"name": "Ken", "email": "k@example.com"})
        assert status == 200
        # the terminal error of the User/create call propagates through Signup to the ingress caller
        signup = {"userId": "ken", "name": "Ken", "email": "ken@example.com"}
        status, body = await call(http, engine.ingress_url + "/Signup/signup", signup)
        assert status == 409, body
        assert isinstance(body, dict) and body["message"] == "user ken already exists"

"""Attach / output / lookup over the ingress, and the admin invocation operations (cancel, kill, purge, pause,
resume), end to end with the official Python SDK (app3), over both transports.

Ingress errors carry ``{"code", "message", "source"}``; admin errors ``{"message"}``. A cancelled invocation
completes with the SDK's ``409 "cancelled"`` (or the engine's 409 when it never ran), a killed one with
``409 "killed"``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from engine.ids import random_invocation_id
from tests.conftest import EngineFactory
from tests.services import app3
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import (
    box_items,
    counter,
    engine3,
    eventually,
    get,
    patch,
    post,
    send,
)

CANCELLED = {"code": 409, "message": "cancelled", "source": "invocation"}
KILLED = {"code": 409, "message": "killed", "source": "invocation"}
OPERATIONS = ("cancel", "kill", "purge", "pause", "resume")


def idempotent_target(service: str, handler: str, idem: str, key: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"target": "idempotentInvocation", "service": service, "handler": handler}
    if key is not None:
        target["key"] = key
    target["idempotencyKey"] = idem
    return target


def is_admin_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("message"), str) and bool(body["message"])


async def admin(http: aiohttp.ClientSession, admin_url: str, inv: str, op: str) -> tuple[int, Any]:
    status, body, _ = await patch(http, f"{admin_url}/invocations/{inv}/{op}")
    return status, body


# --------------------------------------------------------------------------------------------------------------
# attach / output / lookup
# --------------------------------------------------------------------------------------------------------------


async def test_attach_output_lookup_by_id_and_idempotency_key(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        # a plain service invocation with an idempotency key
        target = idempotent_target("Sleeper", "nap", "n1")
        looked_up = await post(http, url + "/restate/lookup", target)
        assert looked_up[0] == 200, looked_up
        inv = await send(http, url + "/Sleeper/nap/send", 600, idem="n1")
        assert looked_up[1] == {"invocationId": inv}  # computed, before or after the invocation exists
        for probe in (
            get(http, f"{url}/restate/output/{inv}"),
            get(http, f"{url}/restate/invocation/{inv}/output"),
            get(http, f"{url}/restate/invocation/Sleeper/nap/n1/output"),
            post(http, url + "/restate/output", target),
            post(http, url + "/restate/output", {"target": "invocation", "invocationId": inv}),
        ):
            status, body, _ = await probe
            assert status == 470, (status, body)
            assert body["code"] == 470, body
        attaches = [
            asyncio.create_task(get(http, f"{url}/restate/attach/{inv}")),
            asyncio.create_task(get(http, f"{url}/restate/invocation/{inv}/attach")),
            asyncio.create_task(get(http, f"{url}/restate/invocation/Sleeper/nap/n1/attach")),
            asyncio.create_task(post(http, url + "/restate/attach", target)),
            asyncio.create_task(post(http, url + "/restate/attach", {"target": "invocation", "invocationId": inv})),
        ]
        for reply in await asyncio.wait_for(asyncio.gather(*attaches), 10):
            assert reply[:2] == (200, "rested")
        for probe in (
            get(http, f"{url}/restate/output/{inv}"),
            get(http, f"{url}/restate/invocation/{inv}/output"),
            get(http, f"{url}/restate/invocation/Sleeper/nap/n1/output"),
            post(http, url + "/restate/output", target),
            get(http, f"{url}/restate/attach/{inv}"),  # completed: answers at once
        ):
            assert (await probe)[:2] == (200, "rested")

        # a virtual object handler with an idempotency key: the key segment is part of the address
        status, value, headers = await post(http, url + "/Counter2/ak/add", 2, headers={"idempotency-key": "k1"})
        assert (status, value) == (200, 2)
        inv = headers["x-restate-id"]
        target = idempotent_target("Counter2", "add", "k1", key="ak")
        assert (await post(http, url + "/restate/lookup", target))[:2] == (200, {"invocationId": inv})
        assert (await get(http, f"{url}/restate/invocation/Counter2/ak/add/k1/output"))[:2] == (200, 2)
        assert (await get(http, f"{url}/restate/invocation/Counter2/ak/add/k1/attach"))[:2] == (200, 2)
        assert (await post(http, url + "/restate/output", target))[:2] == (200, 2)
        assert (await post(http, url + "/restate/attach", target))[:2] == (200, 2)
        assert (await get(http, f"{url}/restate/output/{inv}"))[:2] == (200, 2)

        # attach to a running invocation without idempotency key
        inv = await send(http, url + "/Sleeper/nap/send", 300)
        assert (await get(http, f"{url}/restate/attach/{inv}", wait_s=10))[:2] == (200, "rested")


async def test_attach_output_unknown_and_malformed(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        unknown = str(random_invocation_id())
        for probe in (
            get(http, f"{url}/restate/attach/{unknown}"),
            get(http, f"{url}/restate/output/{unknown}"),
            get(http, f"{url}/restate/invocation/{unknown}/attach"),
            get(http, f"{url}/restate/invocation/{unknown}/output"),
            post(http, url + "/restate/attach", {"target": "invocation", "invocationId": unknown}),
            post(http, url + "/restate/output", {"target": "invocation", "invocationId": unknown}),
            get(http, f"{url}/restate/invocation/Sleeper/nap/never/output"),
            get(http, f"{url}/restate/invocation/Counter2/k/add/never/attach"),
            post(http, url + "/restate/output", idempotent_target("Sleeper", "nap", "never")),
            get(http, f"{url}/restate/workflow/Flow/never/output"),
            get(http, f"{url}/restate/workflow/Flow/never/attach"),
        ):
            status, body, _ = await probe
            assert status == 404, (status, body)
            assert body["code"] == 404 and body["source"] == "ingress", body
        for probe in (
            get(http, f"{url}/restate/attach/inv_nope"),
            get(http, f"{url}/restate/output/not-an-id"),
            get(http, f"{url}/restate/invocation/inv_1xyz/attach"),
        ):
            status, body, _ = await probe
            assert status == 400, (status, body)
            assert body["code"] == 400 and body["source"] == "ingress", body


# --------------------------------------------------------------------------------------------------------------
# cancel
# --------------------------------------------------------------------------------------------------------------


async def test_cancel_sleeping_saga_runs_its_compensation(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        inv = await send(http, url + "/Saga/book/send", "s1", idem="saga-s1")
        await eventually(lambda: counter(http, url, "reserved-s1"), lambda v: v == 1, what="reserved")
        attach = asyncio.create_task(get(http, f"{url}/restate/attach/{inv}"))
        await asyncio.sleep(0.1)
        assert not attach.done()
        status, body = await admin(http, admin_url, inv, "cancel")
        assert status == 202, (status, body)
        status, body, _ = await asyncio.wait_for(attach, 10)
        assert (status, body) == (409, CANCELLED)
        assert await counter(http, url, "saga-s1") == 1  # the compensation ran, once
        if mode == "asgi" and engine.invoker_processes is None:  # the ctx.run steps ran in this process
            assert app3.RESERVED.count("s1") >= 1 and app3.RELEASED.count("s1") >= 1
        # completed now: the failure is stored (idempotency key), cancel is a conflict
        assert (await get(http, f"{url}/restate/output/{inv}"))[:2] == (409, CANCELLED)
        status, body = await admin(http, admin_url, inv, "cancel")
        assert status == 409 and is_admin_error(body), (status, body)
        await asyncio.sleep(0.2)
        assert await counter(http, url, "saga-s1") == 1


async def test_cancel_inboxed_and_scheduled(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        # inboxed: waits for the key's lock, held by Counter2/q/hold for 1 s
        hold = await send(http, url + "/Counter2/q/hold/send", 1000, idem="q-hold")
        inboxed = await send(http, url + "/Counter2/q/add/send", 1, idem="q-add")
        status, body = await admin(http, admin_url, inboxed, "cancel")
        assert status == 200, (status, body)
        status, body, _ = await get(http, f"{url}/restate/attach/{inboxed}")
        assert status == 409 and body["code"] == 409 and "cancel" in body["message"].lower(), body
        assert (await get(http, f"{url}/restate/attach/{hold}", wait_s=10))[:2] == (200, "released")
        assert await counter(http, url, "q") == 0  # the cancelled add never ran
        assert (await post(http, url + "/Counter2/q/add", 1))[:2] == (200, 1)  # the inbox moves on

        # scheduled: a delayed send that is not due yet
        t0 = time.monotonic()
        scheduled = await send(http, url + "/Counter2/q2/add/send?delay=10s", 1, idem="q2-add")
        status, body = await admin(http, admin_url, scheduled, "cancel")
        assert status == 200, (status, body)
        status, body, _ = await get(http, f"{url}/restate/attach/{scheduled}", wait_s=5)
        assert status == 409 and "cancel" in body["message"].lower(), body
        assert time.monotonic() - t0 < 5
        assert await counter(http, url, "q2") == 0


async def test_cancel_propagates_to_child_calls(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        parent = await send(http, url + "/Caller/call_long/send", "cl")
        [child] = await box_items(http, url, "cl", 1)
        assert child != parent
        attach_parent = asyncio.create_task(get(http, f"{url}/restate/attach/{parent}"))
        attach_child = asyncio.create_task(get(http, f"{url}/restate/attach/{child}"))
        await asyncio.sleep(0.1)
        status, body = await admin(http, admin_url, parent, "cancel")
        assert status == 202, (status, body)
        assert (await asyncio.wait_for(attach_parent, 10))[:2] == (409, CANCELLED)
        # the SDK sends the cancel signal to the child call it is waiting on
        assert (await asyncio.wait_for(attach_child, 10))[:2] == (409, CANCELLED)


async def test_operations_on_completed_and_unknown_invocations(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        status, _, headers = await post(http, url + "/Counter2/done/add", 1, headers={"idempotency-key": "dk"})
        assert status == 200
        done = headers["x-restate-id"]
        for op in ("cancel", "kill", "pause", "resume"):
            status, body = await admin(http, admin_url, done, op)
            assert status == 409 and is_admin_error(body), (op, status, body)
        assert (await get(http, f"{url}/restate/output/{done}"))[:2] == (200, 1)  # untouched
        unknown = str(random_invocation_id())
        for op in OPERATIONS:
            status, body = await admin(http, admin_url, unknown, op)
            assert status == 404 and is_admin_error(body), (op, status, body)


# --------------------------------------------------------------------------------------------------------------
# kill
# --------------------------------------------------------------------------------------------------------------


async def test_kill_runs_no_compensation_and_kills_children(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        inv = await send(http, url + "/Saga/book/send", "k1", idem="saga-k1")
        await eventually(lambda: counter(http, url, "reserved-k1"), lambda v: v == 1, what="reserved")
        attach = asyncio.create_task(get(http, f"{url}/restate/attach/{inv}"))
        await asyncio.sleep(0.1)
        status, body = await admin(http, admin_url, inv, "kill")
        assert status == 200, (status, body)
        assert (await asyncio.wait_for(attach, 10))[:2] == (409, KILLED)
        assert (await get(http, f"{url}/restate/output/{inv}"))[:2] == (409, KILLED)
        await asyncio.sleep(0.3)
        assert await counter(http, url, "saga-k1") == 0  # no user code ran after the kill
        if mode == "asgi":
            assert "k1" not in app3.RELEASED
        status, body = await admin(http, admin_url, inv, "kill")
        assert status == 409 and is_admin_error(body), (status, body)

        # a call chain: the engine kills the child recorded in the parent's journal
        parent = await send(http, url + "/Caller/call_long/send", "kl")
        [child] = await box_items(http, url, "kl", 1)
        attach_parent = asyncio.create_task(get(http, f"{url}/restate/attach/{parent}"))
        attach_child = asyncio.create_task(get(http, f"{url}/restate/attach/{child}"))
        await asyncio.sleep(0.1)
        status, body = await admin(http, admin_url, parent, "kill")
        assert status == 200, (status, body)
        assert (await asyncio.wait_for(attach_parent, 10))[:2] == (409, KILLED)
        assert (await asyncio.wait_for(attach_child, 10))[:2] == (409, KILLED)


# --------------------------------------------------------------------------------------------------------------
# purge
# --------------------------------------------------------------------------------------------------------------


async def test_purge(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        # not completed: 409
        running = await send(http, url + "/Sleeper/long/send", idem="pl")
        status, body = await admin(http, admin_url, running, "purge")
        assert status == 409 and is_admin_error(body), (status, body)
        assert (await get(http, f"{url}/restate/output/{running}"))[0] == 470  # untouched
        assert (await admin(http, admin_url, running, "kill"))[0] == 200
        assert (await get(http, f"{url}/restate/attach/{running}"))[:2] == (409, KILLED)

        # completed: 200, then it is gone and its idempotency key is free again
        status, value, headers = await post(http, url + "/Counter2/pg/add", 1, headers={"idempotency-key": "pk"})
        assert (status, value) == (200, 1)
        done = headers["x-restate-id"]
        assert (await get(http, f"{url}/restate/output/{done}"))[:2] == (200, 1)
        status, body = await admin(http, admin_url, done, "purge")
        assert status == 200, (status, body)
        assert (await get(http, f"{url}/restate/output/{done}"))[0] == 404
        assert (await get(http, f"{url}/restate/attach/{done}"))[0] == 404
        assert (await get(http, f"{url}/restate/invocation/Counter2/pg/add/pk/output"))[0] == 404
        status, value, headers = await post(http, url + "/Counter2/pg/add", 1, headers={"idempotency-key": "pk"})
        assert (status, value) == (200, 2), "the purged idempotency key did not execute again"
        assert headers["x-restate-id"] == done  # same deterministic id

        # the killed one is completed now: it can be purged too
        assert (await admin(http, admin_url, running, "purge"))[0] == 200
        assert (await get(http, f"{url}/restate/output/{running}"))[0] == 404


# --------------------------------------------------------------------------------------------------------------
# pause / resume
# --------------------------------------------------------------------------------------------------------------


async def test_pause_and_resume(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url, admin_url = engine.ingress_url, engine.admin_url
        t0 = time.monotonic()
        inv = await send(http, url + "/Sleeper/nap/send", 800, idem="pz")
        await asyncio.sleep(0.2)  # sleeping on its timer now
        status, body = await admin(http, admin_url, inv, "pause")
        assert status == 202, (status, body)
        await eventually(lambda: admin(http, admin_url, inv, "pause"), lambda r: r[0] == 200, within=5, what="paused")
        # the timer comes due while paused: nothing runs until resumed
        await asyncio.sleep(max(0.0, t0 + 1.3 - time.monotonic()))
        status, body, _ = await get(http, f"{url}/restate/output/{inv}")
        assert status == 470, (status, body)
        status, body = await admin(http, admin_url, inv, "resume")
        assert status == 200, (status, body)
        assert (await get(http, f"{url}/restate/attach/{inv}", wait_s=10))[:2] == (200, "rested")
        for op in ("pause", "resume"):
            status, body = await admin(http, admin_url, inv, op)
            assert status == 409 and is_admin_error(body), (op, status, body)

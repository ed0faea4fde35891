"""Workflows end to end (official Python SDK, app3 ``Flow``), over both transports: ``run`` executes once per
workflow id (a second call 409, a second send 202 PreviouslyAccepted with the same id), shared handlers during and
after ``run``, durable promises (peek, resolve, reject, completed twice -> 409), attach/output/lookup of a
workflow."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import (
    counter,
    engine3,
    eventually,
    get,
    post,
)


def workflow_target(wf_id: str) -> dict[str, str]:
    return {"target": "workflow", "workflowName": "Flow", "workflowKey": wf_id}


async def test_run_executes_once_per_id(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        status, first, headers = await post(http, url + "/Flow/w1/run/send", "x")
        assert status == 202, first
        assert first["status"] == "Accepted"
        inv = first["invocationId"]
        assert headers["x-restate-id"] == inv
        # the workflow id is the identity: lookup computes the same invocation id
        assert (await post(http, url + "/restate/lookup", workflow_target("w1")))[:2] == (200, {"invocationId": inv})

        status, again, headers = await post(http, url + "/Flow/w1/run/send", "y")
        assert status == 202
        assert again["status"] == "PreviouslyAccepted"
        assert again["invocationId"] == inv and headers["x-restate-id"] == inv

        status, body, _ = await post(http, url + "/Flow/w1/run", "z")
        assert status == 409
        assert body["code"] == 409 and body["message"] == "the workflow method was already invoked", body

        await eventually(
            lambda: post(http, url + "/Flow/w1/status"), lambda r: r[:2] == (200, "waiting"), what="run waiting"
        )
        assert (await post(http, url + "/Flow/w1/signal", "v"))[0] == 200
        assert (await get(http, f"{url}/restate/workflow/Flow/w1/attach"))[:2] == (200, "x:v")
        assert await counter(http, url, "flow-w1") == 1

        # after completion: still once
        status, body, _ = await post(http, url + "/Flow/w1/run", "z")
        assert status == 409 and body["message"] == "the workflow method was already invoked", body
        status, again, _ = await post(http, url + "/Flow/w1/run/send", "z")
        assert status == 202 and again == {"invocationId": inv, "status": "PreviouslyAccepted"}
        await asyncio.sleep(0.2)
        assert await counter(http, url, "flow-w1") == 1
        # a workflow run does not take an idempotency key
        status, body, _ = await post(http, url + "/Flow/w9/run", "x", headers={"idempotency-key": "k"})
        assert status == 400, body
        # a different id is a different workflow
        running = asyncio.create_task(post(http, url + "/Flow/w2/run", "other"))
        await eventually(
            lambda: post(http, url + "/Flow/w2/status"), lambda r: r[:2] == (200, "waiting"), what="w2 waiting"
        )
        assert (await post(http, url + "/Flow/w2/signal", "ok"))[0] == 200
        assert (await asyncio.wait_for(running, 10))[:2] == (200, "other:ok")


async def test_shared_handlers_during_and_after_run(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        # shared handlers work before run ever started: no state, no promise value
        assert (await post(http, url + "/Flow/s1/status"))[:2] == (200, None)
        assert (await post(http, url + "/Flow/s1/peek"))[:2] == (200, None)

        running = asyncio.create_task(post(http, url + "/Flow/s1/run", "in"))
        await eventually(
            lambda: post(http, url + "/Flow/s1/status"), lambda r: r[:2] == (200, "waiting"), what="run waiting"
        )
        assert (await post(http, url + "/Flow/s1/peek"))[:2] == (200, None)
        assert not running.done()
        assert (await post(http, url + "/Flow/s1/signal", "go"))[:2] == (200, None)
        assert (await asyncio.wait_for(running, 10))[:2] == (200, "in:go")
        # after run: state and promise stay readable
        assert (await post(http, url + "/Flow/s1/status"))[:2] == (200, "done")
        assert (await post(http, url + "/Flow/s1/peek"))[:2] == (200, "go")


async def test_promise_completed_twice_is_a_conflict(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        # completed twice from two invocations: the second completer fails with 409 (uncaught in the handler)
        running = asyncio.create_task(post(http, url + "/Flow/p1/run", "r"))
        assert (await post(http, url + "/Flow/p1/signal", "first"))[0] == 200
        status, body, _ = await post(http, url + "/Flow/p1/signal", "second")
        assert status == 409
        assert body == {"code": 409, "message": "promise was already completed", "source": "invocation"}
        status, body, _ = await post(http, url + "/Flow/p1/fail", "too late")
        assert status == 409, body
        assert (await asyncio.wait_for(running, 10))[:2] == (200, "r:first")
        assert (await post(http, url + "/Flow/p1/peek"))[:2] == (200, "first")

        # completed twice in one invocation: the handler catches the 409; a promise resolved before run started
        # is there when run asks for it
        assert (await post(http, url + "/Flow/p2/signal_twice", "early"))[:2] == (200, 409)
        assert (await post(http, url + "/Flow/p2/run", "late"))[:2] == (200, "late:early")


async def test_rejected_promise_fails_the_run(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        inv = (await post(http, url + "/Flow/f1/run/send", "x"))[1]["invocationId"]
        assert (await post(http, url + "/Flow/f1/fail", "rejected"))[0] == 200
        status, body, _ = await get(http, f"{url}/restate/workflow/Flow/f1/attach")
        assert status == 500
        assert body == {"code": 500, "message": "rejected", "source": "invocation"}
        # the failure is the workflow's stored outcome
        assert (await get(http, f"{url}/restate/attach/{inv}"))[0] == 500
        assert (await post(http, url + "/restate/output", workflow_target("f1")))[0] == 500
        assert (await post(http, url + "/Flow/f1/run", "x"))[0] == 409


async def test_attach_and_output_of_a_workflow(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        # never started: unknown
        assert (await get(http, f"{url}/restate/workflow/Flow/o1/output"))[0] == 404
        assert (await post(http, url + "/restate/output", workflow_target("o1")))[0] == 404

        inv = (await post(http, url + "/Flow/o1/run/send", "x"))[1]["invocationId"]
        await eventually(
            lambda: post(http, url + "/Flow/o1/status"), lambda r: r[:2] == (200, "waiting"), what="run waiting"
        )
        for probe in (
            get(http, f"{url}/restate/workflow/Flow/o1/output"),
            post(http, url + "/restate/output", workflow_target("o1")),
            get(http, f"{url}/restate/output/{inv}"),
            get(http, f"{url}/restate/invocation/{inv}/output"),
        ):
            status, body, _ = await probe
            assert status == 470, (status, body)
            assert body["code"] == 470, body
        attaches = [
            asyncio.create_task(get(http, f"{url}/restate/workflow/Flow/o1/attach")),
            asyncio.create_task(post(http, url + "/restate/attach", workflow_target("o1"))),
            asyncio.create_task(get(http, f"{url}/restate/attach/{inv}")),
            asyncio.create_task(get(http, f"{url}/restate/invocation/{inv}/attach")),
            asyncio.create_task(post(http, url + "/restate/attach", {"target": "invocation", "invocationId": inv})),
        ]
        await asyncio.sleep(0.2)
        assert not any(t.done() for t in attaches)
        assert (await post(http, url + "/Flow/o1/signal", "v"))[0] == 200
        for status, body, _ in await asyncio.wait_for(asyncio.gather(*attaches), 10):
            assert (status, body) == (200, "x:v")
        for probe in (
            get(http, f"{url}/restate/workflow/Flow/o1/output"),
            post(http, url + "/restate/output", workflow_target("o1")),
            get(http, f"{url}/restate/output/{inv}"),
            get(http, f"{url}/restate/workflow/Flow/o1/attach"),
        ):
            assert (await probe)[:2] == (200, "x:v")


async def test_workflow_retention_then_cleanup(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """ShortFlow declares workflow_retention = 1 s: after it, the run's result, state and promises are gone and
    the same workflow id runs again."""
    overrides = {"invocation": {"cleanup_interval": "100ms"}}
    async with engine3(engine_factory, mode, deployment3, http, **overrides) as engine:
        url = engine.ingress_url
        assert (await post(http, url + "/ShortFlow/s1/run", "a"))[:2] == (200, "a")
        assert (await post(http, url + "/ShortFlow/s1/get"))[:2] == (200, "a")
        assert (await post(http, url + "/ShortFlow/s1/run", "b"))[0] == 409
        await asyncio.sleep(1.5)
        assert (await post(http, url + "/ShortFlow/s1/get"))[:2] == (200, None)
        assert (await get(http, url + "/restate/workflow/ShortFlow/s1/output"))[0] == 404
        assert (await post(http, url + "/ShortFlow/s1/run", "b"))[:2] == (200, "b")


async def test_attach_invocation_command(
    engine_factory: EngineFactory, mode: str, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """ctx.attach_invocation (AttachInvocationCommand) waits for another invocation's result, across
    partitions, and a missing target fails the attacher with 404."""
    async with engine3(engine_factory, mode, deployment3, http) as engine:
        url = engine.ingress_url
        status, sent, _ = await post(http, url + "/Flow/att/run/send", "q")
        assert status == 202
        waiting = asyncio.create_task(post(http, url + "/Attacher/attach", sent["invocationId"]))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (await post(http, url + "/Flow/att/signal", "go"))[0] == 200
        assert (await asyncio.wait_for(waiting, 10))[:2] == (200, "q:go")
        unknown = "inv_1" + "0" * 33
        status, body, _ = await post(http, url + "/Attacher/attach", unknown)
        assert status == 404, body

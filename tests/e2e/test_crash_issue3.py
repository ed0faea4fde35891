"""Crash test for suspended work: ``capstan serve`` is SIGKILLed while invocations sleep on a durable timer, wait
on an awakeable, wait on a child call, and wait on a workflow promise. After restart each completes exactly once:
the effects are counted in ``Counter2`` state (engine state, not process memory), and stay at 1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.procs import CapstanProcess
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import (
    APP3_SPEC,
    box_items,
    counter,
    eventually,
    get,
    post,
    register,
    send,
)

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["http", "asgi"])
async def test_waiting_invocations_complete_once_after_sigkill(
    tmp_path: Path, deployment3: DeploymentProcess, transport: str
) -> None:
    extra = ["--app", APP3_SPEC] if transport == "asgi" else []
    server = CapstanProcess(tmp_path / "data", extra_args=extra)
    server.start()
    try:
        # force_close: pooled keep-alive connections to the killed process must not be reused after restart
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            url = server.ingress_url
            if transport == "http":
                await register(http, server.admin_url, deployment3.url)
            # idempotency keys keep each result for attach, whenever it completes
            sleeping = await send(http, url + "/Sleeper/nap_count/send", {"ms": 1500, "key": "slept"}, idem="c1")
            awaiting = await send(http, url + "/Waiter/cw/wait/send", idem="c2")
            calling = await send(http, url + "/Caller/call_nap_count/send", "cc", idem="c3")
            flow = await send(http, url + "/Flow/cf/run/send", "x")
            # everyone is waiting: the awakeable id is published, the workflow set its stage
            [awakeable] = await box_items(http, url, "cw", 1)
            await eventually(
                lambda: post(http, url + "/Flow/cf/status"), lambda r: r[:2] == (200, "waiting"), what="run waiting"
            )
            await asyncio.sleep(0.3)  # the sleep and the child call are journaled
            for key in ("slept", "waited-cw", "child-cc", "parent-cc", "flow-cf"):
                assert await counter(http, url, key) == 0, key

            server.kill()
            await asyncio.sleep(0.5)
            server.start()

            assert (await post(http, f"{url}/restate/awakeables/{awakeable}/resolve", "late"))[0] == 202
            assert (await post(http, url + "/Flow/cf/signal", "go"))[0] == 200
            results = await asyncio.wait_for(
                asyncio.gather(*(get(http, f"{url}/restate/attach/{inv}") for inv in (sleeping, awaiting, calling))),
                20,
            )
            assert [r[:2] for r in results] == [(200, "rested"), (200, "got late"), (200, "rested")], server.logs()
            assert (await get(http, f"{url}/restate/workflow/Flow/cf/attach", wait_s=20))[:2] == (200, "x:go")
            assert (await get(http, f"{url}/restate/attach/{flow}"))[:2] == (200, "x:go")

            expected = {"slept": 1, "waited-cw": 1, "child-cc": 1, "parent-cc": 1, "flow-cf": 1}
            assert {key: await counter(http, url, key) for key in expected} == expected
            await asyncio.sleep(0.5)  # nothing runs a second time
            assert {key: await counter(http, url, key) for key in expected} == expected

            # and once more across a clean restart
            server.stop()
            server.start()
            assert {key: await counter(http, url, key) for key in expected} == expected
            assert (await get(http, f"{url}/restate/attach/{calling}"))[:2] == (200, "rested")
    finally:
        server.stop()

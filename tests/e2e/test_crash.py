"""Crash test: ``capstan serve`` is SIGKILLed while counter increments with idempotency keys are in flight.

After restart: every request answered 200 was applied exactly once (retrying it returns the same stored result),
unanswered requests retried with the same key are applied at most once, and the final counts match exactly.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.procs import CapstanProcess
from tests.services.fixtures import DeploymentProcess

pytestmark = pytest.mark.e2e

KEYS = 8
REQUESTS = 600


async def _register(http: aiohttp.ClientSession, admin: str, uri: str) -> None:
    async with http.post(admin + "/deployments", json={"uri": uri}) as resp:
        assert resp.status in (200, 201), await resp.text()


async def _add(http: aiohttp.ClientSession, base: str, key: str, req: str) -> int | None:
    try:
        async with http.post(
            f"{base}/Counter/{key}/add",
            data="1",
            headers={"content-type": "application/json", "idempotency-key": req},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            if resp.status == 200:
                return int(await resp.text())
            return None
    except (aiohttp.ClientError, TimeoutError):
        return None


@pytest.mark.timeout(240)
async def test_sigkill_under_load_loses_and_duplicates_nothing(tmp_path: Path, deployment: DeploymentProcess) -> None:
    rng = random.Random(7)
    requests = [(f"k{rng.randrange(KEYS)}", f"req-{i}") for i in range(REQUESTS)]
    answered: dict[str, int] = {}
    server = CapstanProcess(tmp_path / "data")
    server.start()
    try:
        async with aiohttp.ClientSession() as http:
            await _register(http, server.admin_url, deployment.url)
            queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
            for r in requests:
                queue.put_nowait(r)

            async def worker() -> None:
                while not queue.empty():
                    key, req = queue.get_nowait()
                    value = await _add(http, server.ingress_url, key, req)
                    if value is not None:
                        answered[req] = value

            workers = [asyncio.create_task(worker()) for _ in range(16)]
            while len(answered) < REQUESTS // 3:
                await asyncio.sleep(0.01)
            server.kill()  # mid-load: requests are in flight
            await asyncio.gather(*workers)
            assert 0 < len(answered) < REQUESTS

            server.start()
            # answered requests were applied exactly once: the same key returns the same stored result
            for key, req in requests:
                if req in answered:
                    again = await _add(http, server.ingress_url, key, req)
                    assert again == answered[req], f"{req} answered {answered[req]} before the crash, {again} after"
            # unanswered ones can be retried with the same key without double counting
            for key, req in requests:
                if req not in answered:
                    for _ in range(50):
                        value = await _add(http, server.ingress_url, key, req)
                        if value is not None:
                            answered[req] = value
                            break
                        await asyncio.sleep(0.1)
                    assert req in answered, f"{req} never answered after restart"
            expected = {f"k{i}": 0 for i in range(KEYS)}
            for key, _ in requests:
                expected[key] += 1
            for key, count in expected.items():
                async with http.post(f"{server.ingress_url}/Counter/{key}/get") as resp:
                    assert resp.status == 200
                    assert int(await resp.text()) == count, f"{key}: expected {count}"
            # every answer per key is distinct: no increment was applied twice
            by_key: dict[str, list[int]] = {}
            for key, req in requests:
                by_key.setdefault(key, []).append(answered[req])
            for key, values in by_key.items():
                assert sorted(values) == list(range(1, expected[key] + 1)), key
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["http", "asgi"])
async def test_running_invocations_resume_after_sigkill(
    tmp_path: Path, deployment: DeploymentProcess, transport: str
) -> None:
    """Invocations caught mid-attempt by a SIGKILL are resumed at restart and complete exactly once."""
    extra = ["--app", "tests.services.app:app"] if transport == "asgi" else []
    server = CapstanProcess(tmp_path / "data", extra_args=extra)
    server.start()
    try:
        # force_close: pooled keep-alive connections to the killed process must not be reused after restart
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            if transport == "http":
                await _register(http, server.admin_url, deployment.url)
            for i in range(5):  # each holds its key's lock for 0.5 s inside a ctx.run
                async with http.post(
                    f"{server.ingress_url}/Counter/resume{i}/add_slow/send",
                    data="1",
                    headers={"content-type": "application/json"},
                ) as resp:
                    assert resp.status == 202
            await asyncio.sleep(0.2)
            server.kill()
            server.start()
            for i in range(5):
                for _ in range(100):
                    async with http.post(f"{server.ingress_url}/Counter/resume{i}/get") as resp:
                        value = int(await resp.text())
                    if value:
                        break
                    await asyncio.sleep(0.05)
                assert value == 1
                # the key's lock was released: an exclusive call goes through
                async with http.post(
                    f"{server.ingress_url}/Counter/resume{i}/add",
                    data="1",
                    headers={"content-type": "application/json"},
                ) as resp:
                    assert resp.status == 200 and int(await resp.text()) == 2
    finally:
        server.stop()

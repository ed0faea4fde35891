"""Far beyond capacity: the engine sheds load and loses nothing.

Tiny limits (32 concurrent ingress requests, 2 attempts at a time with 2 waiting, a log queue of 16 records; then
only the log queue) and a burst of 64 (128) concurrent clients sending 400 ``Counter.add_logged`` requests (half
calls, half sends), each with its own idempotency key and a unique value. Shed requests must be 429 (ingress
concurrency) or 503 (invoker backlog or log queue full), with ``Retry-After`` and a JSON ``message``; everything
answered 200/202 is applied exactly once; after the burst, retrying the shed requests with the same keys succeeds;
at the end every key's state equals the model (each value in its log exactly once, the count their sum).

Kafka's side of backpressure (partitions paused while the invoker is backlogged, resumed after, nothing lost) is
``tests/kafka/test_subscription_features.py::test_backpressure_pauses_partitions``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any

import aiohttp
import pytest

from tests.conftest import APP_SPEC, EngineFactory

REQUESTS = 400
KEYS = 8
# (limits, concurrent clients, what must have been shed). The log queue must hold at least the 12 metadata records
# the in-process app registers at start-up.
CASES = {
    "ingress and invoker": (
        {
            "ingress_http": {"concurrent_requests_limit": 32},
            "invoker": {"concurrency_limit": 2, "queue_limit": 2},
            "log": {"queue_limit": 16},
        },
        64,
        ["429 too many concurrent requests", "503 the engine is overloaded"],
    ),
    "log queue": (
        {"ingress_http": {"concurrent_requests_limit": 256}, "log": {"queue_limit": 16}},
        128,
        ["503 the engine is overloaded"],  # the invoker's limits are the defaults here: only the log is full
    ),
}


def _request(i: int) -> tuple[str, dict[str, str], bytes]:
    """Request ``i``: object key ``k{i % KEYS}``, value ``i + 1``, a call when even and a send when odd."""
    suffix = "" if i % 2 == 0 else "/send"
    headers = {"content-type": "application/json", "idempotency-key": f"req-{i}"}
    return f"/Counter/k{i % KEYS}/add_logged{suffix}", headers, json.dumps(i + 1).encode()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
async def test_overload_is_shed_and_nothing_is_lost(
    engine_factory: EngineFactory, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    limits, clients, expected = CASES[case]
    statuses: collections.Counter[int] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    accepted: set[int] = set()
    shed: list[int] = []
    async with (
        engine_factory(app=APP_SPEC, **limits) as engine,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=clients), timeout=aiohttp.ClientTimeout(total=60)
        ) as http,
    ):
        base = engine.ingress_url
        todo: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            todo.put_nowait(i)

        async def client() -> None:
            while not todo.empty():
                i = todo.get_nowait()
                path, headers, body = _request(i)
                async with http.post(base + path, headers=headers, data=body) as resp:
                    statuses[resp.status] += 1
                    payload: Any = await resp.json()
                    if resp.status in (200, 202):
                        accepted.add(i)
                        continue
                    assert resp.status in (429, 503), (resp.status, payload)
                    assert int(resp.headers["retry-after"]) >= 1, dict(resp.headers)
                    assert isinstance(payload["message"], str) and payload["message"], payload
                    reasons[f"{resp.status} {payload['message']}"] += 1
                    shed.append(i)

        # the burst
        await asyncio.gather(*(client() for _ in range(clients)))
        assert len(accepted) + len(shed) == REQUESTS
        for reason in expected:  # the limit under test was hit
            assert any(r.startswith(reason) for r in reasons), (reason, reasons)
        burst = dict(statuses)

        # the shed ones again, same idempotency keys, a few at a time as a polite client would (Retry-After is 1 s;
        # a short back-off keeps the test fast)
        pending = sorted(shed)
        rounds = 0
        while pending:
            rounds += 1
            assert rounds < 200, f"still shed after {rounds} rounds: {len(pending)}"
            retry_now, pending = pending[:4], pending[4:]
            for i in retry_now:
                path, headers, body = _request(i)
                async with http.post(base + path, headers=headers, data=body) as resp:
                    if resp.status in (200, 202):
                        accepted.add(i)
                    else:
                        assert resp.status in (429, 503), await resp.text()
                        pending.append(i)
            await asyncio.sleep(0.02)
        assert accepted == set(range(REQUESTS))

        # every invocation finished: attaching by idempotency key answers its result
        for i in range(REQUESTS):
            path = f"/restate/invocation/Counter/k{i % KEYS}/add_logged/req-{i}/attach"
            for _ in range(100):
                async with http.get(base + path) as resp:
                    if resp.status == 200:
                        break
                    assert resp.status in (429, 503), await resp.text()
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"request {i} did not complete")

        # the model: each key's log holds each of its values exactly once, the count is their sum
        query = {"query": "SELECT service_key, key, value_utf8 FROM state WHERE service_name = 'Counter'"}
        async with http.post(engine.admin_url + "/query", json=query) as resp:
            assert resp.status == 200, await resp.text()
            rows = (await resp.json())["rows"]
        state = {(r["service_key"], r["key"]): json.loads(r["value_utf8"]) for r in rows}
        for k in range(KEYS):
            values = [i + 1 for i in range(REQUESTS) if i % KEYS == k]
            assert sorted(state[(f"k{k}", "log")]) == values, f"k{k}: not exactly once"
            assert state[(f"k{k}", "count")] == sum(values)
        async with http.get(engine.admin_url + "/health") as resp:
            assert resp.status == 200
    logging.getLogger(__name__).info(
        "overload burst (%s): %s %s; shed retried in %d rounds", case, burst, dict(reasons), rounds
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

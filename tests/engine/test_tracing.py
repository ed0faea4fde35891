"""W3C traceparent: every attempt of an invocation carries the invocation's trace id and a span id of its own; the
caller's trace (ingress header, calling handler) is continued, otherwise a new trace is started per invocation."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from engine.server import Engine
from engine.tracing import attempt_traceparent, child_traceparent, find_traceparent, parse_traceparent, trace_id
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess, start_deployment

TRACING_APP = "tests.services.tracing_app:app"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
def tracing_deployment() -> Iterator[DeploymentProcess]:
    dep = start_deployment(TRACING_APP)
    try:
        yield dep
    finally:
        dep.stop()


@contextlib.asynccontextmanager
async def traced_engine(
    factory: EngineFactory, mode: str, request: pytest.FixtureRequest, http: aiohttp.ClientSession
) -> AsyncIterator[Engine]:
    if mode == "asgi":
        async with factory(app=TRACING_APP) as engine:
            yield engine
        return
    dep: DeploymentProcess = request.getfixturevalue("tracing_deployment")
    async with factory() as engine:
        async with http.post(engine.admin_url + "/deployments", json={"uri": dep.url}) as resp:
            assert resp.status in (200, 201), await resp.text()
        yield engine


async def call(http: aiohttp.ClientSession, engine: Engine, path: str, body: Any, **headers: str) -> Any:
    async with http.post(engine.ingress_url + path, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def parts(traceparent: str) -> tuple[str, str, str]:
    ctx = parse_traceparent(traceparent)
    assert ctx is not None, traceparent
    return ctx


async def test_attempts_share_the_trace_and_get_new_spans(
    engine_factory: EngineFactory, mode: str, request: pytest.FixtureRequest, http: aiohttp.ClientSession
) -> None:
    async with traced_engine(engine_factory, mode, request, http) as engine:
        # No caller context: a new trace per invocation, the same for all of its attempts.
        one = await call(http, engine, "/Traced/echo", f"a-{uuid.uuid4().hex}")
        two = await call(http, engine, "/Traced/echo", f"b-{uuid.uuid4().hex}")
        # The caller's context: its trace id on every attempt, under spans of our own.
        given = await call(http, engine, "/Traced/echo", f"c-{uuid.uuid4().hex}", traceparent=CALLER)
        # An invalid header is ignored (W3C): a new trace.
        bad = await call(http, engine, "/Traced/echo", f"d-{uuid.uuid4().hex}", traceparent="00-" + "0" * 32 + "-x")

    for answer in (one, two, bad):
        first, last = parts(answer["first"]), parts(answer["last"])
        assert first.trace_id == last.trace_id  # the first attempt and a later one
        assert first.span_id != last.span_id
        assert first.flags == "01"
    assert parts(one["first"]).trace_id != parts(two["first"]).trace_id
    assert one["input"] == ""
    for tp in (given["first"], given["last"]):
        assert parts(tp).trace_id == CALLER_TRACE
        assert parts(tp).span_id != "b7ad6b7169203331"
    assert parts(given["first"]).span_id != parts(given["last"]).span_id
    assert given["input"] == CALLER  # the request's own headers reach the handler unchanged, as with Restate


async def test_calls_continue_the_callers_trace(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, request: pytest.FixtureRequest
) -> None:
    async with traced_engine(engine_factory, "asgi", request, http) as engine:
        given = await call(http, engine, "/Traced/call_child", f"e-{uuid.uuid4().hex}", traceparent=CALLER)
        fresh = await call(http, engine, "/Traced/call_child", f"f-{uuid.uuid4().hex}")

    assert parts(given["parent"]).trace_id == CALLER_TRACE
    assert parts(given["child"]["first"]).trace_id == CALLER_TRACE
    assert parts(given["child"]["last"]).trace_id == CALLER_TRACE
    parent_trace = parts(fresh["parent"]).trace_id
    assert parent_trace != CALLER_TRACE
    assert parts(fresh["child"]["first"]).trace_id == parent_trace
    assert parts(fresh["child"]["last"]).trace_id == parent_trace


def test_traceparent_parsing_follows_w3c() -> None:
    assert parse_traceparent(CALLER) == (CALLER_TRACE, "b7ad6b7169203331", "01")
    assert parse_traceparent(" " + CALLER + " ") is not None
    for bad in (
        None,
        "",
        CALLER.upper(),  # hex must be lower case
        "ff" + CALLER[2:],  # version ff is invalid
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id
        f"00-{CALLER_TRACE}-{'0' * 16}-01",  # all-zero span id
        CALLER + "-extra",  # version 00 has exactly four fields
        CALLER[:-1],
    ):
        assert parse_traceparent(bad) is None, bad
    assert parse_traceparent("01" + CALLER[2:] + "-future") == (CALLER_TRACE, "b7ad6b7169203331", "01")
    assert find_traceparent([("x-a", "1"), ("TraceParent", CALLER)]) == CALLER
    assert find_traceparent([("traceparent", "junk")]) == ""


def test_derived_traces_are_stable_per_invocation() -> None:
    inv, seed = bytes(range(24)), 42
    # Without a caller context the trace id is a function of what is stored with the invocation.
    assert trace_id("", inv, seed) == trace_id("", inv, seed) != trace_id("", inv, seed + 1)
    a, b = parts(attempt_traceparent("", inv, seed)), parts(attempt_traceparent("", inv, seed))
    assert a.trace_id == b.trace_id == trace_id("", inv, seed) and a.span_id != b.span_id
    assert trace_id(CALLER, inv, seed) == CALLER_TRACE
    # A child's caller context is deterministic (the processor computes it while applying a record) ...
    assert child_traceparent("", inv, seed, ()) == child_traceparent("", inv, seed, ())
    assert parts(child_traceparent(CALLER, inv, seed, ())).trace_id == CALLER_TRACE
    # ... unless the SDK put its own on the call.
    own = "00-11111111111111111111111111111111-2222222222222222-00"
    assert child_traceparent(CALLER, inv, seed, [("traceparent", own)]) == own

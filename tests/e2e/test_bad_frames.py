"""A deployment that breaks the service protocol: malformed, truncated, oversized and out-of-order frames.

The fake deployment serves a real SDK's manifest (so registration is the real thing) and answers each attempt from a
script; once the script is used up it forwards attempts to the real SDK deployment (hypercorn, restate-sdk). For
every misbehaviour: the attempt fails with a clear message that the admin API shows (``GET /invocations/{id}``:
``last_failure``), the invocation is retried, the engine stays healthy and logs no error, and when the deployment
behaves again the invocation completes with the real handler's result. Nothing the fake sent is left in the journal
to trip up the real SDK on replay.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.invoker.protocol import messages
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import MessageType, encode_frame
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess

Answer = bytes | Callable[[web.Request], Awaitable[web.StreamResponse]]
MESSAGE_LIMIT = 64 * 1024  # invoker.message_size_limit_bytes in these tests


class ScriptedDeployment:
    """Answers attempts from ``script`` (frames as bytes, or a handler); then forwards them to the real SDK."""

    def __init__(self, real: DeploymentProcess, session: aiohttp.ClientSession) -> None:
        self.real = real
        self.session = session
        self.script: collections.deque[Answer] = collections.deque()
        self.attempts = 0
        self.forwarded = 0
        self.gate = asyncio.Event()  # forwarded attempts wait for it
        self.gate.set()
        self.url = ""

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.attempts += 1
        if self.script:
            answer = self.script.popleft()
            if isinstance(answer, bytes):
                return web.Response(body=answer, headers={"content-type": request.headers["content-type"]})
            return await answer(request)
        self.forwarded += 1
        await self.gate.wait()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.post(self.real.url + request.path, data=body, headers=headers) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "x-restate-server")}
            return web.Response(status=resp.status, body=data, headers=out)


@pytest.fixture
async def scripted(deployment: DeploymentProcess) -> AsyncIterator[ScriptedDeployment]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            deployment.url + "/discover", headers={"accept": "application/vnd.restate.endpointmanifest.v4+json"}
        ) as resp:
            manifest, manifest_type = await resp.read(), resp.headers["content-type"]
        fake = ScriptedDeployment(deployment, session)

        async def discover(request: web.Request) -> web.Response:
            return web.Response(body=manifest, headers={"content-type": manifest_type})

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/discover", discover)
        app.router.add_post("/invoke/{service}/{handler}", fake.invoke)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        fake.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:
            yield fake
        finally:
            fake.gate.set()
            await runner.cleanup()


def _frame(ty: int, msg: Any = b"") -> bytes:
    return encode_frame(ty, msg if isinstance(msg, bytes) else msg.SerializeToString())


OUTPUT_FAKE = _frame(MessageType.OUTPUT_COMMAND, pb.OutputCommandMessage(value=pb.Value(content=b'"fake"')))
END = _frame(MessageType.END)


async def _wrong_content_type(request: web.Request) -> web.StreamResponse:
    return web.Response(body=END, headers={"content-type": "application/json"})


async def _cut_connection(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": request.headers["content-type"]})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(OUTPUT_FAKE[:5])
    assert request.transport is not None
    request.transport.close()  # mid-frame, mid-body: no terminating chunk
    return resp


# name -> (one attempt's answer, expected failure code, a needle of the failure message)
BAD_ATTEMPTS: dict[str, tuple[Answer, int, str]] = {
    "notification from the SDK": (
        _frame(MessageType.SLEEP_COMPLETION, messages.notification(completion_id=1, void=True)),
        571,
        "unexpected message type 0x800c",
    ),
    "server-only control message": (_frame(MessageType.START, b""), 571, "unexpected message type 0x0000"),
    "unknown control type": (struct.pack(">HHI", 0x0009, 0, 0), 571, "unknown control message type 0x0009"),
    "huge length prefix": (struct.pack(">HHI", 0x0401, 0, 0xFFFF_FFFF) + b"xx", 571, "exceeds the limit"),
    "oversized frame": (_frame(MessageType.OUTPUT_COMMAND, b"\x00" * (MESSAGE_LIMIT + 1)), 571, "exceeds the limit"),
    "truncated frame": (OUTPUT_FAKE[:-3], 500, "closed the stream without End"),
    "no frames at all": (b"", 500, "closed the stream without End"),
    "connection cut mid-frame": (_cut_connection, 503, "connection failed"),
    "wrong content-type": (_wrong_content_type, 415, "content-type"),
    "malformed command body": (_frame(MessageType.SET_STATE_COMMAND, b"\x0a\xff"), 571, "malformed SetState"),
    "unknown command type": (_frame(0x0415, b"\x08\x01") + END, 571, "no schema for message type 0x0415"),
    "output without a result": (_frame(MessageType.OUTPUT_COMMAND, b"") + END, 571, "without value or failure"),
    "run proposal before its command, without a result": (
        _frame(MessageType.PROPOSE_RUN_COMPLETION, b"\x08\x07"),
        571,
        "ProposeRunCompletionMessage without value or failure",
    ),
    "suspension waiting on nothing": (_frame(MessageType.SUSPENSION), 571, "suspended without waiting on anything"),
    "malformed suspension": (_frame(MessageType.SUSPENSION, b"\x0a\xff"), 571, "bad SuspensionMessage"),
    "malformed error message": (_frame(MessageType.ERROR, b"\x12\xff"), 571, "bad ErrorMessage"),
    "state command on a stateless service": (
        _frame(MessageType.SET_STATE_COMMAND, pb.SetStateCommandMessage(key=b"k", value=pb.Value(content=b"1"))),
        400,
        "has no state",
    ),
    "call to an unknown service": (
        _frame(
            MessageType.CALL_COMMAND,
            pb.CallCommandMessage(
                service_name="Nope", handler_name="h", invocation_id_notification_idx=1, result_completion_id=2
            ),
        ),
        404,
        "service 'Nope' not found",
    ),
    "error message with a retry delay": (
        _frame(MessageType.ERROR, pb.ErrorMessage(code=503, message="sdk says later", next_retry_delay=10)),
        503,
        "sdk says later",
    ),
}


async def _describe(http: aiohttp.ClientSession, admin: str, inv: str) -> dict[str, Any]:
    async with http.get(f"{admin}/invocations/{inv}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]


async def _until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not await predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def _healthy(http: aiohttp.ClientSession, engine: Any) -> None:
    async with http.get(engine.admin_url + "/health") as resp:
        assert resp.status == 200
    async with http.post(engine.ingress_url + "/restate/health") as resp:
        assert resp.status == 200


OVERRIDES = {"invoker": {"message_size_limit_bytes": MESSAGE_LIMIT, "abort_timeout": "10s"}}


async def test_bad_attempts_fail_clearly_and_are_retried(
    engine_factory: EngineFactory,
    scripted: ScriptedDeployment,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with engine_factory(**OVERRIDES) as engine:
        async with http.post(engine.admin_url + "/deployments", json={"uri": scripted.url}) as resp:
            assert resp.status == 201, await resp.text()
        for case, (name, (answer, code, needle)) in enumerate(BAD_ATTEMPTS.items()):
            scripted.gate.clear()
            scripted.script.extend([answer, answer])  # two bad attempts in a row, then the real SDK
            forwarded = scripted.forwarded
            async with http.post(
                engine.ingress_url + "/Greeter/greet/send", json=name, headers={"idempotency-key": f"case-{case}"}
            ) as resp:
                assert resp.status == 202, await resp.text()
                inv = (await resp.json())["invocationId"]

            async def retried(forwarded: int = forwarded) -> bool:
                return scripted.forwarded > forwarded

            await _until(retried, f"{name}: the attempt after the bad ones")
            row = (await _describe(http, engine.admin_url, inv))["invocation"]
            assert row["retry_count"] == 2, (name, row)
            assert row["last_failure_error_code"] == code, (name, row)
            assert needle in row["last_failure"], (name, row)
            await _healthy(http, engine)
            scripted.gate.set()
            async with http.get(f"{engine.ingress_url}/restate/invocation/{inv}/attach") as resp:
                assert resp.status == 200, (name, await resp.text())
                assert await resp.json() == f"Hello {name}!"
            detail = await _describe(http, engine.admin_url, inv)
            assert [e["entry_type"] for e in detail["journal"]] == ["Command: Input", "Command: Output"], name
        assert _errors(caplog) == []


async def test_end_and_garbage_after_it(
    engine_factory: EngineFactory,
    scripted: ScriptedDeployment,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """End closes the attempt: bytes after it are not read (Restate only drains and warns). End without an Output
    command completes the invocation with a clear failure, as Restate does."""
    async with engine_factory(**OVERRIDES) as engine:
        async with http.post(engine.admin_url + "/deployments", json={"uri": scripted.url}) as resp:
            assert resp.status == 201, await resp.text()
        scripted.script.append(OUTPUT_FAKE + END + b"\xff" * 100 + struct.pack(">HHI", 0x0009, 0, 0xFFFF_FFFF))
        async with http.post(engine.ingress_url + "/Greeter/greet", json="x") as resp:
            assert resp.status == 200 and await resp.json() == "fake"
        scripted.script.append(END)
        async with http.post(engine.ingress_url + "/Greeter/greet", json="x") as resp:
            assert resp.status == 500
            assert (await resp.json())["message"] == "the handler ended without an output"
        await _healthy(http, engine)
        assert _errors(caplog) == []


# --- hypothesis: arbitrary frame sequences as one attempt -----------------------------------------------------

any_type = st.sampled_from([t.value for t in MessageType]) | st.integers(0, 0xFFFF)
random_frames = st.builds(
    lambda ty, flags, body: struct.pack(">HHI", ty, flags, len(body)) + body,
    any_type,
    st.integers(0, 0xFFFF),
    st.binary(max_size=40),
)
pieces = st.one_of(
    random_frames,
    st.binary(min_size=1, max_size=24),  # garbage
    st.builds(lambda ty, n: struct.pack(">HHI", ty, 0, n), any_type, st.integers(0, 0xFFFF_FFFF)),  # header only
    st.sampled_from([OUTPUT_FAKE, END, _frame(MessageType.SUSPENSION, b"\x08\x01")]),
)
attempt_bodies = st.builds(
    lambda ps, cut: b"".join(ps)[: cut if cut is not None else None],
    st.lists(pieces, min_size=1, max_size=6),
    st.none() | st.integers(0, 200),
)


@pytest.fixture
async def fuzz_engine(
    engine_factory: EngineFactory, scripted: ScriptedDeployment, http: aiohttp.ClientSession
) -> AsyncIterator[Any]:
    async with engine_factory(**OVERRIDES) as engine:
        async with http.post(engine.admin_url + "/deployments", json={"uri": scripted.url}) as resp:
            assert resp.status == 201, await resp.text()
        yield engine


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=attempt_bodies)
async def test_arbitrary_frames_never_hurt_the_engine(
    fuzz_engine: Any,
    scripted: ScriptedDeployment,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
) -> None:
    caplog.clear()
    engine = fuzz_engine
    scripted.gate.clear()
    scripted.script.clear()
    scripted.script.append(body)
    forwarded = scripted.forwarded
    async with http.post(engine.ingress_url + "/Greeter/greet/send", json="x") as resp:
        assert resp.status == 202, await resp.text()
        inv = (await resp.json())["invocationId"]
    outcome: dict[str, Any] = {}

    async def settled() -> bool:
        row = (await _describe(http, engine.admin_url, inv))["invocation"]
        outcome.update(row)
        return scripted.forwarded > forwarded or row["status"] in ("completed", "suspended")

    await _until(settled, "the attempt to be retried, completed or suspended")
    if scripted.forwarded > forwarded:  # failed and retried: with a clear message
        assert outcome["retry_count"] >= 1 and outcome["last_failure"], outcome
        assert isinstance(outcome["last_failure_error_code"], int)
    await _healthy(http, engine)
    scripted.gate.set()
    if outcome["status"] != "suspended":
        types = [e["entry_type"] for e in (await _describe(http, engine.admin_url, inv))["journal"]]
        if types == ["Command: Input"]:
            # nothing the fake sent was kept: the real SDK completes the invocation (a kept command may legitimately
            # differ from what the real handler does: that is a journal mismatch, retried, and is killed below)
            async def completed() -> bool:
                return (await _describe(http, engine.admin_url, inv))["invocation"]["status"] == "completed"

            await _until(completed, "completion once the deployment behaves")
    async with http.patch(f"{engine.admin_url}/invocations/{inv}/kill") as resp:
        assert resp.status in (200, 202, 409), await resp.text()
    assert _errors(caplog) == []

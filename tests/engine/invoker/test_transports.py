"""Transports against the real restate-sdk app (tests/engine/invoker/sdk_app.py): in-process ASGI and hypercorn
over HTTP/1.1. Frames are built and read with struct here, and compared byte for byte with the transcripts."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.config import InvokerSection
from engine.errors import ConfigError, DeploymentError, EngineInternalError
from engine.invoker.discovery import ProtocolMode, ServiceType
from engine.invoker.transport import AttemptRequest, AttemptStream, Transport
from engine.invoker.transport_asgi import AsgiTransport, load_asgi_app
from engine.invoker.transport_http import HttpTransport, open_http_session

REPO = Path(__file__).resolve().parents[3]
APP_SPEC = "tests.engine.invoker.sdk_app:app"
GOLDEN = REPO / "tests" / "golden"

V6 = "application/vnd.restate.invocation.v6"

# message types (service-protocol.md §3)
END = 0x0003
SUSPENSION = 0x0001
ERROR = 0x0002
PROPOSE_RUN = 0x0005
OUTPUT = 0x0401
RUN_CMD = 0x0411
RUN_COMPLETION = 0x8011

HEADER = struct.Struct(">HHI")


# --- frames (inline: engine.invoker.protocol is tested on its own) ------------------------------------------


def frame(ty: int, body: bytes) -> bytes:
    return HEADER.pack(ty, 0, len(body)) + body


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(body: bytes) -> dict[int, Any]:
    """Protobuf fields of a message (varint and length-delimited only; last one wins)."""
    out: dict[int, Any] = {}
    pos = 0
    while pos < len(body):
        key, pos = read_varint(body, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = read_varint(body, pos)
        elif wire == 2:
            length, pos = read_varint(body, pos)
            out[number] = body[pos : pos + length]
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def run_completion_for(proposal: bytes) -> bytes:
    """ProposeRunCompletion{1: id, 14: bytes} -> RunCompletionNotification{1: id, 5: Value{1: bytes}}."""
    proposed = fields(proposal)
    value = b"\x0a" + varint(len(proposed[14])) + proposed[14]
    return frame(RUN_COMPLETION, b"\x08" + varint(proposed[1]) + b"\x2a" + varint(len(value)) + value)


class FrameReader:
    def __init__(self, stream: AttemptStream) -> None:
        self._chunks = stream.chunks().__aiter__()
        self._buffer = b""
        self.ended = False

    async def next(self) -> tuple[int, bytes] | None:
        while True:
            if len(self._buffer) >= HEADER.size:
                ty, _flags, length = HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= HEADER.size + length:
                    body = self._buffer[HEADER.size : HEADER.size + length]
                    self._buffer = self._buffer[HEADER.size + length :]
                    return ty, body
            try:
                self._buffer += await self._chunks.__anext__()
            except StopAsyncIteration:
                assert self._buffer == b"", "response ended inside a frame"
                self.ended = True
                return None

    async def all(self) -> list[tuple[int, bytes]]:
        frames = []
        while (item := await self.next()) is not None:
            frames.append(item)
        return frames


# --- transcripts -------------------------------------------------------------------------------------------


def transcript_attempt(name: str, invocation: int = 0, attempt: int = 0) -> dict[str, Any]:
    document = json.loads((GOLDEN / f"{name}.json").read_text())
    return document["invocations"][invocation]["attempts"][attempt]  # type: ignore[no-any-return]


def recorded(attempt: dict[str, Any], direction: str) -> list[tuple[int, bytes]]:
    return [(int(f["type"], 16), bytes.fromhex(f["body_hex"])) for f in attempt[direction]["frames"]]


def request_for(attempt: dict[str, Any], *, content_type: str | None = None) -> AttemptRequest:
    _, _, service, handler = attempt["request"]["path"].split("/")
    skip = {"host", "transfer-encoding"}
    headers = [(n, v) for n, v in attempt["request"]["headers"] if n not in skip]
    if content_type is not None:
        headers = [(n, content_type if n in ("content-type", "accept") else v) for n, v in headers]
    return AttemptRequest(service=service, handler=handler, headers=tuple(headers))


def initial_body(attempt: dict[str, Any], count: int = 2) -> bytes:
    """Start + Input: the first ``count`` frames the server sent."""
    return b"".join(frame(ty, body) for ty, body in recorded(attempt, "to_sdk")[:count])


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
async def asgi() -> AsyncIterator[AsgiTransport]:
    transport = AsgiTransport(load_asgi_app(APP_SPEC, app_dir=REPO), label="sdk_app")
    yield transport
    await transport.aclose()
    assert transport.statistics().open_attempts == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def hypercorn_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("hypercorn") / "hypercorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", APP_SPEC, "--bind", f"127.0.0.1:{port}"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hypercorn did not start (exit {proc.poll()}), see {log.name}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    http = open_http_session(InvokerSection())
    yield http
    await http.close()


@pytest.fixture
async def http(hypercorn_url: str, session: aiohttp.ClientSession) -> AsyncIterator[HttpTransport]:
    transport = HttpTransport(hypercorn_url, session=session, additional_headers={}, connect_timeout=2.0)
    yield transport
    await transport.aclose()


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --- protocol conformance of both transports ---------------------------------------------------------------


def test_transports_satisfy_the_protocol():
    def check(_: Transport) -> None: ...

    # a static check (mypy on this file) as much as a runtime one
    check(AsgiTransport(load_asgi_app(APP_SPEC, app_dir=REPO)))
    assert AsgiTransport.duplex is True
    assert HttpTransport.duplex is False


# --- in-process ASGI ---------------------------------------------------------------------------------------


async def test_asgi_discovery_is_bidi(asgi: AsgiTransport):
    discovered = await asgi.discover()
    manifest = discovered.manifest
    assert manifest.protocol_mode is ProtocolMode.BIDI_STREAM
    assert (manifest.min_protocol_version, manifest.max_protocol_version) == (5, 7)
    assert {s.name: s.ty for s in manifest.services} == {
        "Greeter": ServiceType.SERVICE,
        "Steps": ServiceType.SERVICE,
        "Counter": ServiceType.VIRTUAL_OBJECT,
    }
    assert discovered.sdk_version is not None and discovered.sdk_version.startswith("restate-sdk-python/")
    assert discovered.content_type == "application/vnd.restate.endpointmanifest.v4+json"


@pytest.mark.parametrize("keep_open", [False, True])
async def test_asgi_greeter(asgi: AsgiTransport, keep_open: bool):
    attempt = transcript_attempt("bidi-greeter")
    async with asyncio.timeout(10):
        stream = await asgi.start_attempt(request_for(attempt), initial_body(attempt), keep_open=keep_open)
        try:
            assert stream.status == 200
            assert stream.headers["content-type"] == V6
            assert stream.headers["x-restate-server"].startswith("restate-sdk-python/")
            assert stream.duplex is keep_open
            reader = FrameReader(stream)
            frames = []
            while (item := await reader.next()) is not None:
                frames.append(item)
                if item[0] == END:
                    await stream.end_request()  # the SDK ends its response only after our body ended
            assert frames == recorded(attempt, "from_sdk")
            assert fields(frames[0][1])[14] == b'\x0a\x0e"Hello world!"'
        finally:
            await stream.aclose()


async def test_asgi_counter_replays_transcript_bytes(asgi: AsgiTransport):
    """Virtual object with eager state: every attempt of the recording, replayed, gives the same bytes."""
    document = json.loads((GOLDEN / "bidi-counter.json").read_text())
    async with asyncio.timeout(10):
        for invocation in document["invocations"]:
            [attempt] = invocation["attempts"]
            body = b"".join(frame(ty, b) for ty, b in recorded(attempt, "to_sdk"))
            stream = await asgi.start_attempt(request_for(attempt), body, keep_open=False)
            try:
                assert await FrameReader(stream).all() == recorded(attempt, "from_sdk")
            finally:
                await stream.aclose()


async def test_asgi_full_duplex_steps_in_one_attempt(asgi: AsgiTransport):
    attempt = transcript_attempt("bidi-steps-three")
    sent = [initial_body(attempt)]
    async with asyncio.timeout(10):
        stream = await asgi.start_attempt(request_for(attempt), sent[0], keep_open=True)
        try:
            assert stream.status == 200 and stream.duplex
            reader = FrameReader(stream)
            received: list[tuple[int, bytes]] = []
            while True:
                item = await reader.next()
                assert item is not None, "response ended before End"
                received.append(item)
                ty, body = item
                if ty == PROPOSE_RUN:
                    completion = run_completion_for(body)
                    sent.append(completion)
                    await stream.write(completion)
                elif ty in (END, SUSPENSION, ERROR):
                    break
            await stream.end_request()
            await stream.end_request()  # idempotent
            with pytest.raises(EngineInternalError):
                await stream.write(b"late")
            assert await reader.next() is None and reader.ended
        finally:
            await stream.aclose()
    assert [ty for ty, _ in received] == [RUN_CMD, PROPOSE_RUN] * 3 + [OUTPUT, END]
    # byte for byte what restate-server and the SDK exchanged in the recording (one attempt)
    assert received == recorded(attempt, "from_sdk")
    assert b"".join(sent) == b"".join(frame(ty, body) for ty, body in recorded(attempt, "to_sdk"))


async def test_asgi_request_response_steps_suspends(asgi: AsgiTransport):
    attempt = transcript_attempt("rr-steps-three")
    async with asyncio.timeout(10):
        stream = await asgi.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
        try:
            assert await FrameReader(stream).all() == recorded(attempt, "from_sdk")
        finally:
            await stream.aclose()
    with pytest.raises(EngineInternalError):
        await stream.write(b"x")  # not duplex


@pytest.mark.parametrize("target", [("Greeter", "nope"), ("Nope", "greet")])
@pytest.mark.parametrize("keep_open", [False, True])
async def test_asgi_unknown_target_is_404(asgi: AsgiTransport, target: tuple[str, str], keep_open: bool):
    attempt = transcript_attempt("bidi-greeter")
    request = AttemptRequest(service=target[0], handler=target[1], headers=request_for(attempt).headers)
    async with asyncio.timeout(5):
        stream = await asgi.start_attempt(request, initial_body(attempt), keep_open=keep_open)
        try:
            assert stream.status == 404
            # the transport ended the body itself, so the SDK's 404 completes even with keep_open
            assert await FrameReader(stream).all() == []
        finally:
            await stream.aclose()


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("application/vnd.restate.invocation.v9", "unsupported protocol version"),
        ("application/vnd.restate.invocation.v4", "Unsupported protocol version V4"),
        ("application/json", "unrecognized content-type"),
    ],
)
@pytest.mark.parametrize("keep_open", [False, True])
async def test_asgi_unsupported_version_raises(asgi: AsgiTransport, content_type: str, fragment: str, keep_open: bool):
    attempt = transcript_attempt("bidi-greeter")
    request = request_for(attempt, content_type=content_type)
    async with asyncio.timeout(5):
        with pytest.raises(DeploymentError) as info:
            await asgi.start_attempt(request, initial_body(attempt), keep_open=keep_open)
    assert fragment in str(info.value)
    assert "(415)" in str(info.value)
    assert asgi.statistics().open_attempts == 0
    await _settle()
    assert _other_tasks() == set()


async def test_asgi_aclose_while_the_handler_waits(asgi: AsgiTransport):
    attempt = transcript_attempt("bidi-steps-three")
    async with asyncio.timeout(10):
        stream = await asgi.start_attempt(request_for(attempt), initial_body(attempt), keep_open=True)
        reader = FrameReader(stream)
        assert (await reader.next() or (0,))[0] == RUN_CMD
        assert (await reader.next() or (0,))[0] == PROPOSE_RUN
        # the handler now waits for the run completion, forever: close the attempt instead
        assert asgi.statistics().open_attempts == 1
        await stream.aclose()
        await stream.aclose()  # idempotent
    assert asgi.statistics().open_attempts == 0
    await _settle()
    assert _other_tasks() == set()
    with pytest.raises(DeploymentError):
        await reader.next()  # the stream is over
    with pytest.raises(DeploymentError):
        await stream.write(b"x")
    await stream.end_request()  # no-op after close


async def test_asgi_aclose_wakes_a_blocked_reader(asgi: AsgiTransport):
    attempt = transcript_attempt("bidi-steps-three")
    async with asyncio.timeout(10):
        stream = await asgi.start_attempt(request_for(attempt), initial_body(attempt), keep_open=True)
        reader = FrameReader(stream)

        async def read_all() -> list[tuple[int, bytes]]:
            return await reader.all()

        task = asyncio.create_task(read_all())
        while asgi.statistics().open_attempts and not task.done():
            await asyncio.sleep(0.01)
            if len(reader._buffer) == 0 and stream.status == 200:
                break
        await asyncio.sleep(0.05)  # the reader is now blocked waiting for the handler
        await asgi.aclose()  # closes every open attempt
        with pytest.raises(DeploymentError, match="closed"):
            await task
    await _settle()
    assert _other_tasks() == set()
    with pytest.raises(DeploymentError, match="closed"):
        await asgi.start_attempt(request_for(attempt), initial_body(attempt), keep_open=True)


async def test_asgi_cancelled_start_does_not_leak(asgi: AsgiTransport):
    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    transport = AsgiTransport(slow_app)
    attempt = transcript_attempt("bidi-greeter")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await transport.start_attempt(request_for(attempt), b"", keep_open=True)
    assert transport.statistics().open_attempts == 0
    await _settle()
    assert _other_tasks() == set()


async def test_asgi_app_failing_mid_response_is_an_attempt_failure():
    async def broken_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", V6.encode())]})
        await send({"type": "http.response.body", "body": b"\x00\x03", "more_body": True})
        raise ValueError("kaputt")

    transport = AsgiTransport(broken_app)
    stream = await transport.start_attempt(AttemptRequest(service="S", handler="h", headers=()), b"", keep_open=True)
    try:
        with pytest.raises(DeploymentError, match="kaputt"):
            async for _ in stream.chunks():
                pass
        with pytest.raises(DeploymentError, match="ended the attempt"):
            await stream.write(b"more")
    finally:
        await transport.aclose()


async def test_asgi_scope_is_full_asgi3():
    seen: list[dict[str, Any]] = []

    async def echo_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"X-Echo", b"1")]})
        while True:
            event = await receive()
            await send({"type": "http.response.body", "body": event["body"], "more_body": True})
            if not event.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        assert (await receive())["type"] == "http.disconnect"  # after the response, as ASGI says

    transport = AsgiTransport(echo_app, root_path="/mount/")
    request = AttemptRequest(service="Svc", handler="h", headers=(("Content-Type", V6), ("x-a", "b")))
    async with asyncio.timeout(5):
        stream = await transport.start_attempt(request, b"one", keep_open=True)
        try:
            assert stream.headers == {"x-echo": "1"}
            await stream.write(b"two")
            await stream.end_request()
            assert b"".join([c async for c in stream.chunks()]) == b"onetwo"
            assert [c async for c in stream.chunks()] == []  # ended stays ended
            await _settle()
            assert stream._task.done()  # the app saw http.disconnect after its response and returned
        finally:
            await stream.aclose()
    [scope] = seen
    assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
    assert scope["method"] == "POST" and scope["scheme"] == "http"
    assert scope["path"] == "/mount/invoke/Svc/h" and scope["raw_path"] == b"/mount/invoke/Svc/h"
    assert scope["root_path"] == "/mount" and scope["query_string"] == b""
    assert scope["headers"] == [(b"content-type", V6.encode()), (b"x-a", b"b")]
    assert isinstance(scope["client"], tuple) and isinstance(scope["server"], tuple)
    await transport.aclose()


async def test_asgi_discovery_errors():
    async def text_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": b"<html>", "more_body": False})

    with pytest.raises(DeploymentError, match="expected an endpoint manifest"):
        await AsgiTransport(text_app).discover()

    async def hanging_app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()

    transport = AsgiTransport(hanging_app, discovery_timeout=0.1)
    with pytest.raises(DeploymentError, match="did not answer") as info:
        await transport.discover()
    assert info.value.status == 502
    assert transport.statistics().open_attempts == 0


def test_load_asgi_app_errors():
    assert callable(load_asgi_app(APP_SPEC, app_dir=REPO))
    with pytest.raises(ConfigError, match="expected 'module:attribute'"):
        load_asgi_app("tests.engine.invoker.sdk_app")
    with pytest.raises(ConfigError, match="cannot import module"):
        load_asgi_app("no_such_module_capstan_xyz:app")
    with pytest.raises(ConfigError, match="has no attribute"):
        load_asgi_app("tests.engine.invoker.sdk_app:nope", app_dir=REPO)
    with pytest.raises(ConfigError, match="not an ASGI app"):
        load_asgi_app("tests.engine.invoker.sdk_app:greeter", app_dir=REPO)  # a restate.Service


# --- HTTP/1.1 (hypercorn) ----------------------------------------------------------------------------------


async def test_http_discovery_is_request_response(http: HttpTransport):
    discovered = await http.discover()
    assert discovered.manifest.protocol_mode is ProtocolMode.REQUEST_RESPONSE
    assert {s.name for s in discovered.manifest.services} == {"Greeter", "Steps", "Counter"}
    assert discovered.sdk_version is not None and discovered.sdk_version.startswith("restate-sdk-python/")


async def test_http_greeter(http: HttpTransport):
    attempt = transcript_attempt("rr-greeter")
    async with asyncio.timeout(10):
        stream = await http.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
        try:
            assert stream.status == 200 and stream.headers["content-type"] == V6
            assert stream.duplex is False
            await stream.end_request()  # no-op
            assert await FrameReader(stream).all() == recorded(attempt, "from_sdk")
        finally:
            await stream.aclose()
        with pytest.raises(EngineInternalError):
            await stream.write(b"x")


async def test_http_steps_suspends_after_each_run(http: HttpTransport):
    attempt = transcript_attempt("rr-steps-three")
    async with asyncio.timeout(10):
        stream = await http.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
        try:
            frames = await FrameReader(stream).all()
        finally:
            await stream.aclose()
    assert [ty for ty, _ in frames] == [RUN_CMD, PROPOSE_RUN, SUSPENSION]
    assert frames == recorded(attempt, "from_sdk")


async def test_http_keep_alive_reuses_connections(http: HttpTransport, session: aiohttp.ClientSession):
    attempt = transcript_attempt("rr-greeter")
    for _ in range(5):
        stream = await http.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
        try:
            await FrameReader(stream).all()
        finally:
            await stream.aclose()
    connector = session.connector
    assert connector is not None
    # one idle keep-alive connection back in the pool
    assert sum(len(conns) for conns in connector._conns.values()) == 1


@pytest.mark.parametrize("transcript", ["rr-greeter", "rr-steps-three"])
async def test_http_keep_alive_when_the_reader_stops_at_the_outcome_frame(
    http: HttpTransport, session: aiohttp.ClientSession, transcript: str
):
    # The invoker stops reading at End/Suspension; the response's final empty chunk may still be on its way.
    # Closing must drain it and keep the connection, not reconnect for every attempt.
    attempt = transcript_attempt(transcript)
    for _ in range(8):
        stream = await http.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
        try:
            reader = FrameReader(stream)
            while (frame := await reader.next()) is not None and frame[0] not in (END, SUSPENSION):
                pass
            assert frame is not None
        finally:
            await stream.aclose()
    connector = session.connector
    assert connector is not None
    assert sum(len(conns) for conns in connector._conns.values()) == 1


async def test_http_unknown_handler_is_404(http: HttpTransport):
    attempt = transcript_attempt("rr-greeter")
    request = AttemptRequest(service="Greeter", handler="nope", headers=request_for(attempt).headers)
    stream = await http.start_attempt(request, initial_body(attempt), keep_open=False)
    try:
        assert stream.status == 404
        assert await FrameReader(stream).all() == []
    finally:
        await stream.aclose()


async def test_http_keep_open_is_a_bug(http: HttpTransport):
    attempt = transcript_attempt("rr-greeter")
    with pytest.raises(EngineInternalError):
        await http.start_attempt(request_for(attempt), initial_body(attempt), keep_open=True)


async def test_http_unreachable(session: aiohttp.ClientSession):
    url = f"http://127.0.0.1:{_free_port()}"
    transport = HttpTransport(url, session=session, additional_headers={}, connect_timeout=1.0)
    attempt = transcript_attempt("rr-greeter")
    started = time.monotonic()
    with pytest.raises(DeploymentError, match="unreachable") as info:
        await transport.discover()
    assert info.value.status == 502 and url in str(info.value)
    with pytest.raises(DeploymentError, match="unreachable"):
        await transport.start_attempt(request_for(attempt), initial_body(attempt), keep_open=False)
    assert time.monotonic() - started < 2


@pytest.fixture
async def bad_server() -> AsyncIterator[str]:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(
            body=os.urandom(64) + b"\xff", content_type="application/vnd.restate.endpointmanifest.v4+json"
        )

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response(
            {"headers": dict(request.headers)},
            content_type="application/vnd.restate.endpointmanifest.v4+json",
        )

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError

    app = web.Application()
    app.router.add_get("/garbage/discover", garbage)
    app.router.add_get("/html/discover", html)
    app.router.add_get("/fail/discover", fail)
    app.router.add_get("/echo/discover", echo_headers)
    app.router.add_get("/hang/discover", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/garbage", 400, "not valid JSON"),
        ("/html", 400, "expected an endpoint manifest"),
        ("/fail", 502, "status 500"),
        ("/missing", 400, "wrong path"),
        ("/echo", 400, "without protocolMode"),
    ],
)
async def test_http_discovery_of_a_bad_deployment(
    bad_server: str, session: aiohttp.ClientSession, path: str, status: int, fragment: str
):
    transport = HttpTransport(bad_server + path, session=session, additional_headers={}, connect_timeout=1.0)
    with pytest.raises(DeploymentError, match=fragment) as info:
        await transport.discover()
    assert info.value.status == status


async def test_http_discovery_headers_and_timeout(bad_server: str, session: aiohttp.ClientSession):
    # the request carries Restate's accept list and the registration's additional headers
    async with session.get(bad_server + "/echo/discover") as response:
        assert response.status == 200
    transport = HttpTransport(
        bad_server + "/echo/",
        session=session,
        additional_headers={"X-Token": "secret", "x-restate-cluster-name": "capstan"},
        connect_timeout=1.0,
    )
    with pytest.raises(DeploymentError, match="without protocolMode") as info:
        await transport.discover()
    assert info.value.status == 400

    seen: dict[str, str] = {}

    async def capture(request: web.Request) -> web.Response:
        seen.update({name.lower(): value for name, value in request.headers.items()})
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/discover", capture)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        transport = HttpTransport(
            f"http://127.0.0.1:{port}",
            session=session,
            additional_headers={"X-Token": "secret"},
            connect_timeout=1.0,
        )
        with pytest.raises(DeploymentError, match="wrong path"):
            await transport.discover()
    finally:
        await runner.cleanup()
    assert seen["accept"].startswith("application/vnd.restate.endpointmanifest.v1+json, ")
    assert seen["x-token"] == "secret"
    assert "user-agent" not in seen

    slow = HttpTransport(
        bad_server + "/hang", session=session, additional_headers={}, connect_timeout=1.0, discovery_timeout=0.2
    )
    with pytest.raises(DeploymentError, match="unreachable") as info:
        await slow.discover()
    assert info.value.status == 502

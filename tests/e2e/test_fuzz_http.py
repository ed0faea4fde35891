"""Hypothesis against a live engine's ingress and admin API: any method, path, headers, ids and body.

Every answer must be an expected status (500 only as a handler's own terminal failure, ``source: invocation``), every
error a JSON body with a ``message``, and after every example the engine is healthy (both ``/health`` routes answer)
and has logged no error. Truncated bodies (a ``content-length`` larger than what is sent) and malformed HTTP get an
error answer or a closed connection, never a hang. The SDK services run in-process (``capstan serve --app``); only
handlers that finish on any input are targeted, so every call returns.

Example counts: ``INGRESS_EXAMPLES`` + ``ADMIN_EXAMPLES`` + ``RAW_EXAMPLES`` (see the settings below); CI runs them
derandomized (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from engine.ids import InvocationId, awakeable_id
from engine.server import Engine
from tests.conftest import APP_SPEC, EngineFactory

INGRESS_EXAMPLES = 300
ADMIN_EXAMPLES = 250
RAW_EXAMPLES = 150
REQUEST_LIMIT = 4096  # ingress_http.request_size_limit_bytes of the engine under test
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Statuses the ingress may answer. 500 only as a handler's terminal failure (checked below); 503 never here (no
# overload in these tests); 418 is Boom.teapot's terminal error.
INGRESS_STATUSES = {200, 202, 400, 404, 405, 409, 413, 418, 470, 500}
ADMIN_STATUSES = {200, 201, 202, 400, 404, 405, 406, 409, 413, 501, 502}

# Handlers that return on any input (no retry loop, no sleep), so a call always answers.
SAFE_TARGETS = ["Greeter/greet", "Counter/{key}/get", "Counter/{key}/reset", "Steps/one", "Boom/teapot",
                "Hidden/secret"]  # fmt: skip
# Handlers a random name must never hit: they sleep, hang or retry forever, or hold a key's lock meanwhile.
UNSAFE_NAMES = {"add", "add_slow", "add_logged", "hang", "always_fails", "fail_twice", "killed_after_four", "bump",
                "set", "clear", "clear_all", "take", "three", "nine"}  # fmt: skip

any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=16)
raw_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%/"), max_size=16)
odd_segments = st.sampled_from(["..", ".", "%", "%Z", "%ZZ", "%2e%2e", "%2F", "%00", "%ff%fe", "%25", "~", "'", ";"])
segments = st.one_of(
    any_text.map(lambda s: urllib.parse.quote(s, safe="")),
    raw_ascii,
    odd_segments,
    st.integers(200, 3000).map(lambda n: "k" * n),  # long, but within aiohttp's 8 KiB request line
).filter(lambda s: s not in UNSAFE_NAMES)
services = st.sampled_from(["Greeter", "Counter", "Steps", "Boom", "Hidden", "Nope", "restate"]) | segments
handlers = st.sampled_from(["greet", "get", "reset", "one", "teapot", "secret", "send"]) | segments


def _inv_id(raw: bytes) -> str:
    return str(InvocationId.from_bytes(raw))


def _mangle(draw: st.DrawFn, text: str) -> str:
    how = draw(st.sampled_from(["drop", "flip", "cut", "pad", "case"]))
    i = draw(st.integers(0, max(0, len(text) - 1)))
    if how == "drop":
        return text[:i] + text[i + 1 :]
    if how == "flip":
        return text[:i] + draw(st.sampled_from("A0_-=+/z")) + text[i + 1 :]
    if how == "cut":
        return text[:i]
    if how == "pad":
        return text + draw(st.sampled_from(["=", "==", "A", "\u00e9"]))
    return text.swapcase()


# Ids of invocations that exist are only known at run time; strategies must not depend on that state, so they draw a
# placeholder that _resolve() replaces with the i-th id seen (or an unknown one while none was seen).
_SEEN_ID = re.compile(r"zzSEENzz(\d+)zz")
_SEEN_AWAKEABLE = re.compile(r"zzAWKzz(\d+)zz(\d+)zz")
_UNKNOWN_ID = "inv_1" + "0" * 33


def _resolve(text: str, seen: list[str]) -> str:
    def pick(i: str) -> str:
        return seen[int(i) % len(seen)] if seen else _UNKNOWN_ID

    text = _SEEN_AWAKEABLE.sub(lambda m: awakeable_id(InvocationId.parse(pick(m[1])), int(m[2])), text)
    return _SEEN_ID.sub(lambda m: pick(m[1]), text)


@st.composite
def invocation_ids(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["unknown", "mangled", "text", "seen", "seen"]))
    if kind == "seen":
        return f"zzSEENzz{draw(st.integers(0, 49))}zz"
    valid = _inv_id(draw(st.binary(min_size=24, max_size=24)))
    if kind == "mangled":
        return _mangle(draw, valid)
    if kind == "text":
        return draw(any_text | st.sampled_from(["inv_", "inv_1", "inv_1" + "z" * 33]))
    return valid


@st.composite
def awakeable_ids(draw: st.DrawFn) -> str:
    index = draw(st.integers(0, 2**32 - 1) | st.integers(0, 3))
    kind = draw(st.sampled_from(["seen", "valid", "mangled", "legacy", "text"]))
    if kind == "seen":
        return f"zzAWKzz{draw(st.integers(0, 49))}zz{index}zz"
    valid = awakeable_id(InvocationId.from_bytes(draw(st.binary(min_size=24, max_size=24))), index)
    if kind == "mangled":
        return _mangle(draw, valid)
    if kind == "legacy":
        return "prom_1" + valid[len("sign_1") :]
    if kind == "text":
        return draw(any_text)
    return valid


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


@st.composite
def ingress_paths(draw: st.DrawFn) -> tuple[str, bool]:
    """A path (raw, already encoded) and whether it may carry a ``delay`` (then no idempotency key: a delayed
    idempotent invocation could be attached to, and attach waits until it ran)."""
    kind = draw(st.sampled_from(["safe", "safe", "safe", "shape", "restate-call", "awakeable", "attach", "by-key",
                                 "workflow", "random"]))  # fmt: skip
    key = draw(segments)
    if kind == "safe":
        path = "/" + draw(st.sampled_from(SAFE_TARGETS)).format(key=key)
        return path + draw(st.sampled_from(["", "", "/send"])), True
    if kind == "shape":
        parts = draw(st.lists(st.one_of(services, handlers), min_size=1, max_size=6))
        return "/" + "/".join(parts), True
    if kind == "restate-call":
        target = draw(st.sampled_from(SAFE_TARGETS)).format(key=key)
        return f"/restate/{draw(st.sampled_from(['call', 'send', 'cal']))}/{target}", True
    if kind == "awakeable":
        op = draw(st.sampled_from(["resolve", "reject", "complete", ""]))
        prefix = draw(st.sampled_from(["awakeables", "a", "awakeable"]))
        return f"/restate/{prefix}/{_quote(draw(awakeable_ids()))}/{op}", False
    if kind == "attach":
        inv = _quote(draw(invocation_ids()))
        return draw(st.sampled_from([f"/restate/attach/{inv}", f"/restate/output/{inv}",
                                     f"/restate/invocation/{inv}/attach", f"/restate/invocation/{inv}/output",
                                     f"/restate/invocation/{inv}/nope"])), False  # fmt: skip
    if kind == "by-key":
        svc, handler = draw(
            st.sampled_from([("Greeter", "greet"), ("Counter", "get"), ("Nope", "x")]) | st.tuples(services, handlers)
        )
        middle = f"{svc}/{key}/{handler}" if draw(st.booleans()) else f"{svc}/{handler}"
        return f"/restate/invocation/{middle}/{draw(segments)}/{draw(st.sampled_from(['attach', 'output']))}", False
    if kind == "workflow":
        return f"/restate/workflow/{draw(services)}/{key}/{draw(st.sampled_from(['attach', 'output', 'x']))}", False
    return "/" + "/".join(draw(st.lists(segments, max_size=9))), True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)
bodies = st.one_of(
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=512),
    st.integers(REQUEST_LIMIT + 1, 3 * REQUEST_LIMIT).map(lambda n: b"7" * n),  # too large: 413
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
header_names = st.sampled_from(["idempotency-key", "content-type", "accept", "x-restate-id", "x-restate-target",
                                "traceparent", "tracestate", "x-restate-ingress-path", "idempotency-expires",
                                "authorization", "x-custom"]) | st.from_regex(r"\A[a-z][a-z0-9-]{0,15}\Z")  # fmt: skip
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "", "*/*",
                                 "application/octet-stream", "application/vnd.restate.invocation.v6"])  # fmt: skip
delays = st.sampled_from(["100ms", "PT0.2S", "0s", "1e3s", "99999999999999999999d", "PT99999999999999999999H",
                          "-5s", "5 light-years", "", "1" * 400 + "ms"]) | any_text  # fmt: skip
methods = st.sampled_from(["POST", "POST", "POST", "GET", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


@st.composite
def ingress_requests(draw: st.DrawFn) -> dict[str, Any]:
    path, may_delay = draw(ingress_paths())
    headers: dict[str, str] = {}
    if draw(st.integers(0, 2)) > 0:  # mostly what a client would send, so that requests get past validation
        method = draw(st.sampled_from(["POST", "POST", "GET"]))
        body = b"" if "/Counter/" in path else draw(st.sampled_from(["json", "json", "json", "other"]))
        if body == "json":
            body = json.dumps(draw(json_values)).encode()
        elif body == "other":
            body = draw(bodies)
        if body:
            headers["content-type"] = "application/json"
        if draw(st.integers(0, 3)) == 0:
            headers["idempotency-key"] = draw(st.from_regex(r"\A[!-~]{1,12}\Z") | header_values)
        return {"method": method, "path": path, "headers": headers, "body": body}
    if draw(st.booleans()):
        headers["content-type"] = draw(content_types | header_values)
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=3)):
        headers[name] = value
    query = ""
    if may_delay and draw(st.integers(0, 4)) == 0:
        query = "?" + draw(st.sampled_from(["delay", "DELAY", "Delay"])) + "=" + _quote(draw(delays))
        headers.pop("idempotency-key", None)
    elif draw(st.integers(0, 6)) == 0:
        query = "?" + _quote(draw(any_text)) + "=" + _quote(draw(any_text))
    return {"method": draw(methods), "path": path + query, "headers": headers, "body": draw(bodies)}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def _assert_healthy(http: aiohttp.ClientSession, engine: Engine) -> None:
    async with http.get(engine.admin_url + "/health") as resp:
        assert resp.status == 200
    async with http.get(engine.ingress_url + "/restate/health") as resp:
        assert resp.status == 200


async def _send(
    http: aiohttp.ClientSession, base: str, request: dict[str, Any], seen: list[str]
) -> tuple[int, dict[str, str], bytes]:
    url = URL(base + _resolve(request["path"], seen), encoded=True)
    async with http.request(request["method"], url, headers=request["headers"], data=request["body"]) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def _error_message(status: int, headers: dict[str, str], body: bytes, method: str) -> dict[str, Any]:
    """The JSON error body (``{}`` for HEAD, which has none)."""
    if method == "HEAD":
        return {}
    assert headers.get("Content-Type", "").startswith("application/json"), (status, headers, body[:200])
    payload = json.loads(body)
    assert isinstance(payload.get("message"), str) and payload["message"], payload
    return payload  # type: ignore[no-any-return]


@pytest.fixture
async def fuzz_engine(engine_factory: EngineFactory) -> AsyncIterator[Engine]:
    overrides = {
        "app": APP_SPEC,
        "ingress_http": {"request_size_limit_bytes": REQUEST_LIMIT},
        "admin": {"query_timeout": "1s"},
    }
    INGRESS_SEEN.clear()  # ids of another test's engine mean nothing to this one
    ADMIN_SEEN.clear()
    async with engine_factory(**overrides) as engine:
        yield engine


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)  # a hang fails the example
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        yield session


INGRESS_SEEN: list[str] = []  # invocation ids the ingress answered with (attach, output, awakeables reuse them)


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=INGRESS_EXAMPLES)
@given(data=st.data())
async def test_fuzz_ingress(
    fuzz_engine: Engine, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    caplog.clear()
    request = data.draw(ingress_requests(), label="request")
    status, headers, body = await _send(client, fuzz_engine.ingress_url, request, INGRESS_SEEN)
    event(f"status {status}")
    assert status in INGRESS_STATUSES, (status, body[:300])
    if status >= 400:
        payload = _error_message(status, headers, body, request["method"])
        if payload:
            assert payload["code"] == status, payload
            assert payload["source"] in ("ingress", "invocation"), payload
            if status == 500:
                assert payload["source"] == "invocation", payload  # a handler's terminal failure, nothing else
    inv = headers.get("x-restate-id")
    if inv and "delay" not in request["path"].lower() and len(INGRESS_SEEN) < 50:
        INGRESS_SEEN.append(inv)
    await _assert_healthy(client, fuzz_engine)
    assert _errors(caplog) == []


# --- admin API --------------------------------------------------------------------------------------------------

ADMIN_SEEN: list[str] = []
field_names = st.sampled_from([
    "uri", "force", "breaking", "dry_run", "use_http_11", "additional_headers", "query", "object_key", "new_state",
    "set", "clear", "clear_all", "version", "metadata",
])  # fmt: skip


@st.composite
def admin_bodies(draw: st.DrawFn, own_urls: list[str]) -> bytes:
    kind = draw(st.sampled_from(["object", "object", "json", "bytes", "empty", "huge"]))
    if kind == "object":
        obj: dict[str, Any] = {}
        for name in draw(st.lists(field_names, max_size=5)):
            if name == "uri":
                obj[name] = draw(
                    st.sampled_from(["http://127.0.0.1:1", "ftp://x", "asgi://nope", "", *own_urls]) | any_text
                )
            elif name == "query":
                obj[name] = draw(st.sampled_from([
                    "SELECT * FROM sys_invocation", "SELECT count(*) FROM state", "PRAGMA table_info(state)",
                    "ATTACH DATABASE '/tmp/x' AS x", "DELETE FROM state", "SELECT * FROM nope",
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c",
                    "SELECT zeroblob(1000000000)", "SELECT * FROM sys_journal, sys_journal, sys_journal",
                ]) | any_text | json_values)  # fmt: skip
            elif name == "object_key":
                obj[name] = draw(any_text | json_values)
            elif name in ("new_state", "set"):
                obj[name] = draw(st.dictionaries(any_text, any_text | st.lists(st.integers(-5, 300), max_size=4)
                                                 | json_values, max_size=3))  # fmt: skip
            else:
                obj[name] = draw(json_values)
        return json.dumps(obj).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    if kind == "huge":
        return b"{" + b" " * (4 * 1024 * 1024 + 10) + b"}"  # over the admin API's 4 MiB client_max_size
    return b""


@st.composite
def admin_requests(draw: st.DrawFn, own_urls: list[str]) -> dict[str, Any]:
    prefix = draw(st.sampled_from(["", "", "/v2", "/v3", "/v4", "/v1", "/v9"]))
    name = draw(st.sampled_from(["Greeter", "Counter", "Nope"]) | segments)
    inv = _quote(draw(invocation_ids()))
    op = draw(st.sampled_from(["cancel", "kill", "purge", "pause", "resume", "restart"]) | segments)
    mode = draw(st.sampled_from(["cancel", "kill", "purge", "x"]))
    path, natural = draw(st.sampled_from([
        ("/deployments", "POST"), ("/deployments", "GET"), (f"/deployments/{draw(segments)}", "GET"),
        (f"/deployments/{draw(segments)}?force=true", "DELETE"), ("/services", "GET"), (f"/services/{name}", "GET"),
        (f"/services/{name}/handlers", "GET"), (f"/services/{name}/state", "POST"),
        (f"/services/{name}/state", "PATCH"), (f"/invocations/{inv}", "GET"), (f"/invocations/{inv}/{op}", "PATCH"),
        (f"/invocations/{inv}?mode={mode}", "DELETE"), ("/query", "POST"), ("/health", "GET"), ("/openapi", "GET"),
        ("/version", "GET"), ("/metrics", "GET"), ("/" + "/".join(draw(st.lists(segments, max_size=5))), "GET"),
    ]))  # fmt: skip
    method = natural if draw(st.integers(0, 3)) > 0 else draw(methods)
    return {
        "method": method,
        "path": prefix + path,
        "headers": draw(st.dictionaries(header_names, header_values, max_size=2)),
        "body": draw(admin_bodies(own_urls)) if method in ("POST", "PATCH", "PUT") else draw(st.just(b"") | bodies),
    }


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=ADMIN_EXAMPLES)
@given(data=st.data())
async def test_fuzz_admin(
    fuzz_engine: Engine, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, data: st.DataObject
) -> None:
    caplog.clear()
    if not ADMIN_SEEN:  # a few real invocations to manage, in every state the fuzzer can reach
        for i in range(3):
            async with client.post(f"{fuzz_engine.ingress_url}/Counter/k{i}/reset/send") as resp:
                ADMIN_SEEN.append((await resp.json())["invocationId"])
    request = data.draw(admin_requests([fuzz_engine.admin_url, fuzz_engine.ingress_url]), label="request")
    if "/deployments/" in request["path"] and request["method"] == "DELETE":
        request["method"] = "GET"  # removing the (only) deployment would turn the rest of the run into 404s
    status, headers, body = await _send(client, fuzz_engine.admin_url, request, ADMIN_SEEN)
    event(f"status {status}")
    assert status in ADMIN_STATUSES, (status, body[:300])
    if status >= 400:
        _error_message(status, headers, body, request["method"])
    await _assert_healthy(client, fuzz_engine)
    assert _errors(caplog) == []


# --- raw HTTP: truncated bodies and malformed requests ------------------------------------------------------------

raw_requests = st.one_of(
    # a content-length larger than the body, then the client stops writing (half-close) or just goes away
    st.builds(
        lambda path, sent, missing: (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                     f"content-length: {len(sent) + missing}\r\n\r\n").encode() + sent,
        st.sampled_from(["/Greeter/greet", "/Counter/k/get", "/restate/awakeables/x/resolve", "/restate/attach",
                         "/Nope/x", "/Greeter/greet/send"]),
        st.binary(max_size=64),
        st.integers(1, 10_000_000),
    ),
    # chunked bodies cut short or malformed
    st.builds(
        lambda path, chunk: (f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                             "content-type: application/json\r\n\r\n").encode() + chunk,
        st.sampled_from(["/Greeter/greet", "/Greeter/greet/send"]),
        st.sampled_from([b"5\r\n\"abc\"", b"zz\r\n", b"ffffffffffffffff\r\nx", b"3\r\n\"x\"\r\n", b"0\r\n"]),
    ),
    # garbage request lines and headers
    st.binary(min_size=1, max_size=200).map(lambda b: b + b"\r\n\r\n"),
    st.builds(
        lambda line, hdr: line + b"\r\n" + hdr + b"\r\n\r\n",
        st.sampled_from([b"POST /Greeter/greet HTTP/1.1", b"GET / HTTP/9.9", b"POST /Greeter/greet HTTP/1.1 x",
                         b"\x00\x01 / HTTP/1.1", b"POST " + b"/k" * 5000 + b" HTTP/1.1"]),
        st.sampled_from([b"host: x", b"host: x\r\ncontent-length: -1", b"host: x\r\ncontent-length: 1, 2",
                         b"host: x\r\ncontent-length: 99999999999999999999999", b"bad header line",
                         b"host: x\r\nx-long: " + b"v" * 20000, b"host: x\r\ncontent-length: 2\r\nx: \x00"]),
    ),
)  # fmt: skip


async def _raw_exchange(port: int, payload: bytes, half_close: bool) -> bytes:
    """Send ``payload`` and read until the server closes or 0.5 s pass without a byte (it waits for the rest of a
    body that never comes: the client gives up and closes); return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        if half_close:
            writer.write_eof()
        received = b""
        while True:
            try:
                async with asyncio.timeout(0.5):
                    chunk = await reader.read(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


@pytest.mark.timeout(900)
@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(payload=raw_requests, half_close=st.booleans(), target=st.sampled_from(["ingress", "admin"]))
async def test_fuzz_raw_http(
    fuzz_engine: Engine,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    payload: bytes,
    half_close: bool,
    target: str,
) -> None:
    caplog.clear()
    url = URL(fuzz_engine.ingress_url if target == "ingress" else fuzz_engine.admin_url)
    assert url.port is not None
    received = await _raw_exchange(url.port, payload, half_close)
    if received:
        status_line = received.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), received[:200]
        status = int(status_line.split()[1])
        event(f"status {status}")
        # a truncated or malformed request is refused (400-class, 5xx never), or answered if it was complete
        assert status < 500 or (status == 500 and b'"source": "invocation"' in received), received[:300]
    else:
        event("closed without an answer")
    await _assert_healthy(client, fuzz_engine)
    assert _errors(caplog) == []

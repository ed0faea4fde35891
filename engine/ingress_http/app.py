"""HTTP ingress (default 127.0.0.1:8080): Restate-compatible invocation routes.

``/{Service}/{handler}``, ``/{Object}/{key}/{handler}``, the ``/send`` variants, the versioned
``/restate/call|send/...`` forms, ``idempotency-key`` and ``/restate/health``. A call waits for the invocation's
result; a send answers 202 once the invocation is durable. Errors use Restate's JSON envelope.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from engine.errors import LogError, OverloadedError
from engine.ids import (
    InvocationId,
    idempotent_invocation_id,
    partition_key_for_key,
    random_invocation_id,
)
from engine.ingress_http.errors import error_response, failure_response
from engine.partition.effects import SendAccepted
from engine.partition.types import (
    HandlerType,
    Invoke,
    Result,
    RetentionPolicy,
    ServiceType,
    Sink,
    Target,
)
from engine.schema import Handler, Service

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

_DROPPED_HEADERS = frozenset({"connection", "host", "idempotency-key", "idempotency-expires"})
RETRY_AFTER_SECONDS = "1"


def build_ingress_app(engine: Engine) -> web.Application:
    app = web.Application(client_max_size=engine.config.ingress_http.request_size_limit_bytes + 1)
    ingress = _Ingress(engine)
    app.router.add_route("*", "/{tail:.*}", ingress.handle)
    return app


class _Ingress:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cfg = engine.config.ingress_http
        self._in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._in_flight >= self.cfg.concurrent_requests_limit:
            return error_response(429, "too many concurrent requests", headers={"retry-after": RETRY_AFTER_SECONDS})
        self._in_flight += 1
        try:
            return await self._route(request)
        finally:
            self._in_flight -= 1

    async def _route(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        if raw.count("/") < 2 and raw not in ("/",) and not raw.startswith("/restate"):
            return error_response(400, f"bad path {raw!r}: expected /Service/handler or /Object/key/handler")
        try:
            parts = [urllib.parse.unquote(p, errors="strict") for p in raw.strip("/").split("/")]
        except UnicodeDecodeError:
            return error_response(400, "bad path: invalid percent-encoding")
        if not parts or parts == [""]:
            return error_response(404, "not found")
        if parts[0] == "restate":
            if parts[1:] == ["health"]:
                return web.json_response({"services": sorted(self.engine.registry.services)})
            if len(parts) >= 3 and parts[1] in ("call", "send"):
                return await self._invoke(request, parts[2:], send=parts[1] == "send")
            return error_response(404, f"unknown route {raw}")
        if raw.count("/") > 7:
            return error_response(400, f"bad path {raw!r}: too many segments")
        send = False
        if parts[-1] == "send" and len(parts) >= 3:
            service = self.engine.registry.service(parts[0])
            expected = 3 if service is not None and service.keyed else 2
            if len(parts) == expected + 1:
                send = True
                parts = parts[:-1]
        return await self._invoke(request, parts, send=send)

    async def _invoke(self, request: web.Request, parts: list[str], *, send: bool) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return error_response(405, f"method {request.method} not allowed; use POST or GET")
        name = parts[0]
        service = self.engine.registry.service(name)
        if service is None:
            return error_response(
                404, f"service '{name}' not found, make sure to register the service before calling it."
            )
        expected = 3 if service.keyed else 2
        if len(parts) != expected:
            shape = f"/{name}/<key>/<handler>" if service.keyed else f"/{name}/<handler>"
            return error_response(400, f"bad path: service {name} is called as {shape}[/send]")
        key = parts[1] if service.keyed else None
        handler = service.handlers.get(parts[-1])
        if handler is None:
            return error_response(
                404,
                f"the service '{name}' exists, but the handler '{parts[-1]}' was not found, check the handler name.",
            )
        if not handler.public:
            return error_response(400, "the invoked service is not public")
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None:
            if not idempotency_key or not all(0x21 <= ord(c) <= 0x7E for c in idempotency_key):
                return error_response(400, "bad idempotency-key header: expected visible ASCII characters")
            if handler.ty == HandlerType.WORKFLOW:
                return error_response(
                    400, "cannot use the idempotency key with workflow handlers; the workflow id is the key"
                )
        if "delay" in {k.lower() for k in request.query}:
            if not send:
                return error_response(400, "cannot use the delay query parameter with calls")
            return error_response(400, "delayed sends are not supported yet")
        headers = [("x-restate-ingress-path", request.rel_url.raw_path_qs)]
        for k, v in request.headers.items():
            lk = k.lower()
            if lk in _DROPPED_HEADERS:
                continue
            if not v.isascii():
                return error_response(400, f"header {k!r} has a non-ASCII value")
            headers.append((lk, v))
        limit = self.cfg.request_size_limit_bytes
        if request.content_length is not None and request.content_length > limit:
            return error_response(413, f"request body exceeds the limit of {limit} bytes")
        try:
            body = await request.content.read(limit + 1) if request.can_read_body else b""
            if len(body) > limit:
                return error_response(413, f"request body exceeds the limit of {limit} bytes")
            while request.can_read_body and not request.content.at_eof():
                more = await request.content.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
                if len(body) > limit:
                    return error_response(413, f"request body exceeds the limit of {limit} bytes")
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body exceeds the limit of {limit} bytes")
        problem = _validate_input(handler, request.headers.get("content-type"), body)
        if problem is not None:
            return error_response(400, f"input validation error: {problem}")
        return await self._submit(service, handler, key, body, tuple(headers), idempotency_key, send)

    async def _submit(
        self,
        service: Service,
        handler: Handler,
        key: str | None,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        idempotency_key: str | None,
        send: bool,
    ) -> web.StreamResponse:
        engine = self.engine
        if idempotency_key is not None:
            inv = idempotent_invocation_id(service.name, key, handler.name, idempotency_key)
        elif key is not None:
            inv = random_invocation_id(partition_key_for_key(key))
        else:
            inv = random_invocation_id()
        cfg = engine.config.invocation
        journal_ms = service.option_ms(handler.name, "journal_retention_ms")
        if journal_ms is None:
            journal_ms = int(cfg.default_journal_retention.total_seconds() * 1000)
        completion_ms = 0
        if idempotency_key is not None:
            completion_ms = service.option_ms(handler.name, "idempotency_retention_ms") or int(
                cfg.default_idempotency_retention.total_seconds() * 1000
            )
            # Restate: an idempotent invocation's journal is kept no longer than its completion.
            journal_ms = min(journal_ms, completion_ms)
        token = uuid.uuid4().hex
        waiter = engine.register_waiter(token)
        record = Invoke(
            invocation_id=inv.to_bytes(),
            target=Target(
                service=service.name,
                handler=handler.name,
                key=key,
                service_ty=service.ty,
                handler_ty=handler.ty if service.ty != ServiceType.SERVICE else HandlerType.EXCLUSIVE,
            ),
            argument=body,
            headers=headers,
            idempotency_key=idempotency_key,
            sink=Sink(token=token),
            one_way=send,
            deployment_id=service.deployment_id,
            retention=RetentionPolicy(completion_ms=completion_ms, journal_ms=journal_ms),
            now_ms=engine.now_ms(),
            random_seed=int.from_bytes(uuid.uuid4().bytes[:8], "little"),
        )
        id_header = {"x-restate-id": str(inv)}
        try:
            try:
                if engine.invoker.overloaded():
                    raise OverloadedError("the invoker's queue is full")
                applied = engine.propose(record)
            except OverloadedError:
                return error_response(
                    503, "the engine is overloaded, retry later", headers={"retry-after": RETRY_AFTER_SECONDS}
                )
            try:
                await applied
            except LogError as exc:
                logger.warning("invoke of %s not durable: %s", inv, exc)
                return error_response(
                    503,
                    f"the invocation could not be stored: {exc}",
                    headers={"retry-after": RETRY_AFTER_SECONDS},
                )
            outcome = await waiter
        finally:
            engine.drop_waiter(token)
        return _respond(inv, handler, outcome, id_header, idempotency_key is not None)


def _respond(
    inv: InvocationId,
    handler: Handler,
    outcome: Result | SendAccepted,
    headers: dict[str, str],
    idempotent: bool,
) -> web.StreamResponse:
    if isinstance(outcome, SendAccepted):
        return web.Response(
            status=202,
            body=json.dumps(
                {
                    "invocationId": str(inv),
                    "status": "PreviouslyAccepted" if outcome.previously else "Accepted",
                }
            ).encode(),
            content_type="application/json",
            headers=headers,
        )
    if outcome.failure is not None:
        return failure_response(outcome.failure, headers=headers)
    value = outcome.value or b""
    out = handler.output or {}
    ctype = out.get("contentType", "application/json")
    resp = web.Response(status=200, body=value, headers=headers)
    if value or out.get("setContentTypeIfEmpty"):
        if ctype:
            resp.headers["content-type"] = ctype
    return resp


def _media_matches(pattern: str, actual: str) -> bool:
    pattern = pattern.split(";")[0].strip().lower()
    actual = actual.split(";")[0].strip().lower()
    if pattern in ("*/*", ""):
        return True
    ptype, _, psub = pattern.partition("/")
    atype, _, asub = actual.partition("/")
    return ptype == atype and (psub == "*" or psub == asub)


def _validate_input(handler: Handler, content_type: str | None, body: bytes) -> str | None:
    spec = handler.input
    if spec is None:
        return None
    if not spec:  # `{}`: the handler takes no input
        if body:
            return "the handler takes no input, but the request has a body"
        return None
    required = bool(spec.get("required", False))
    pattern = spec.get("contentType")
    if not body and content_type is None:
        return "the handler requires an input body" if required else None
    if pattern is not None:
        if content_type is None:
            return f"missing content-type, expected {pattern}"
        if not _media_matches(pattern, content_type):
            return f"content-type {content_type!r} does not match {pattern!r}"
    if spec.get("jsonSchema") is not None and not body and required:
        return "the handler requires a non-empty body"
    return None

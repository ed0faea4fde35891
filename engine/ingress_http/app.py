"""HTTP ingress (default 127.0.0.1:8080): Restate-compatible invocation routes.

``/{Service}/{handler}``, ``/{Object}/{key}/{handler}``, the ``/send`` variants, the versioned
``/restate/call|send/...`` forms, ``idempotency-key`` and ``/restate/health``. A call waits for the invocation's
result; a send answers 202 once the invocation is durable. Errors use Restate's JSON envelope.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from engine.errors import LogError, OverloadedError
from engine.http_errors import json_http_errors, quiet_client_protocol_errors
from engine.ids import (
    InvocationId,
    idempotent_invocation_id,
    parse_awakeable_id,
    partition_key_for_key,
    random_invocation_id,
    workflow_invocation_id,
)
from engine.ingress_http.durations import parse_delay_ms
from engine.ingress_http.errors import error_response, failure_response
from engine.invoker.protocol import messages
from engine.invoker.protocol.framing import MessageType
from engine.partition.effects import NotReady, Outcome, SendAccepted
from engine.partition.types import (
    AppendNotification,
    AttachSink,
    HandlerType,
    Invoke,
    JournalEntry,
    Result,
    ServiceType,
    Sink,
    Target,
)
from engine.schema import Handler, Service, retention_policy
from engine.tracing import find_traceparent

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

_DROPPED_HEADERS = frozenset({"connection", "host", "idempotency-key", "idempotency-expires"})
RETRY_AFTER_SECONDS = "1"


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressStatistics:
    in_flight: int  # requests being handled (calls wait for their invocation's result)
    limit: int  # ingress_http.concurrent_requests_limit (429 beyond)


# The app's statistics function, for the server's metrics.
INGRESS_STATISTICS: web.AppKey[Callable[[], IngressStatistics]] = web.AppKey("capstan_ingress_statistics")


def build_ingress_app(engine: Engine) -> web.Application:
    quiet_client_protocol_errors()  # unparsable requests: aiohttp's 400, logged at DEBUG
    app = web.Application(
        client_max_size=engine.config.ingress_http.request_size_limit_bytes + 1,
        middlewares=[json_http_errors(_render_error)],  # e.g. a body over client_max_size: 413 in our envelope
    )
    ingress = _Ingress(engine)
    app.router.add_route("*", "/{tail:.*}", ingress.handle)
    app[INGRESS_STATISTICS] = ingress.statistics
    return app


def _render_error(status: int, message: str, headers: Mapping[str, str]) -> web.Response:
    return error_response(status, message, headers=headers)


class _Ingress:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cfg = engine.config.ingress_http
        self._in_flight = 0

    def statistics(self) -> IngressStatistics:
        return IngressStatistics(in_flight=self._in_flight, limit=self.cfg.concurrent_requests_limit)

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
            return await self._restate_route(request, parts[1:], raw)
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

    async def _restate_route(self, request: web.Request, parts: list[str], raw: str) -> web.StreamResponse:
        n = len(parts)
        head = parts[0] if parts else ""
        if parts == ["health"]:
            return web.json_response({"services": sorted(self.engine.registry.services)})
        if n >= 2 and head in ("call", "send"):
            return await self._invoke(request, parts[1:], send=head == "send")
        if head in ("awakeables", "a") and n == 3 and parts[2] in ("resolve", "reject"):
            return await self._complete_awakeable(request, parts[1], parts[2] == "resolve")
        if head in ("attach", "output") and n == 2:
            return await self._attach_by_id(request, parts[1], peek=head == "output")
        if head in ("attach", "output", "lookup") and n == 1:
            return await self._by_target(request, head)
        if head == "invocation" and n == 3 and parts[2] in ("attach", "output"):
            return await self._attach_by_id(request, parts[1], peek=parts[2] == "output")
        if head == "invocation" and n in (5, 6) and parts[-1] in ("attach", "output"):
            svc = self.engine.registry.service(parts[1])
            if svc is None:
                return error_response(404, f"service '{parts[1]}' not found")
            key = parts[2] if n == 6 else None
            if (key is not None) != svc.keyed:
                return error_response(400, f"bad path: the key segment is required iff {svc.name} is keyed")
            inv = idempotent_invocation_id(svc.name, key, parts[-3], parts[-2])
            return await self._attach(request, inv, peek=parts[-1] == "output")
        if head == "workflow" and n == 4 and parts[3] in ("attach", "output"):
            return await self._attach(request, workflow_invocation_id(parts[1], parts[2]), peek=parts[3] == "output")
        return error_response(404, f"unknown route {raw}")

    # ------------------------------------------------------------------------------------------------------
    # Attach / output / lookup
    # ------------------------------------------------------------------------------------------------------

    async def _attach_by_id(self, request: web.Request, text: str, *, peek: bool) -> web.StreamResponse:
        try:
            inv = InvocationId.parse(text)
        except ValueError as exc:
            return error_response(400, f"bad invocation id: {exc}")
        return await self._attach(request, inv, peek=peek)

    async def _by_target(self, request: web.Request, op: str) -> web.StreamResponse:
        if request.method != "POST":
            return error_response(405, f"use POST for /restate/{op}")
        try:
            body = json.loads(await request.read() or b"null")
            inv = _target_id(body)
        except (ValueError, KeyError, TypeError) as exc:
            return error_response(400, f"bad target: {exc}")
        if op == "lookup":
            return web.json_response({"invocationId": str(inv)})
        return await self._attach(request, inv, peek=op == "output")

    async def _attach(self, request: web.Request, inv: InvocationId, *, peek: bool) -> web.StreamResponse:
        if request.method not in ("GET", "POST"):
            return error_response(405, f"method {request.method} not allowed")
        try:
            outcome = await self.engine.propose_and_wait(
                lambda token: self.engine.propose_routed(
                    AttachSink(invocation_id=inv.to_bytes(), sink=Sink(token=token), peek=peek)
                )
            )
        except (OverloadedError, LogError) as exc:
            return error_response(503, f"try again: {exc}", headers={"retry-after": RETRY_AFTER_SECONDS})
        if isinstance(outcome, Outcome):
            return error_response(outcome.status, outcome.message or "invocation not found")
        if isinstance(outcome, NotReady):
            return error_response(470, "the invocation exists but has not completed yet")
        handler = await self._handler_of(inv)
        return _respond(inv, handler, outcome, {"x-restate-id": str(inv)})

    async def _handler_of(self, inv: InvocationId) -> Handler | None:
        from engine import codec
        from engine.storage import keys

        raw = await asyncio.to_thread(self.engine.store.get, keys.status(inv.to_bytes()))
        if raw is None:
            return None
        target = codec.decode(raw).target
        service = self.engine.registry.service(target.service)
        return None if service is None else service.handlers.get(target.handler)

    # ------------------------------------------------------------------------------------------------------
    # Awakeables
    # ------------------------------------------------------------------------------------------------------

    async def _complete_awakeable(self, request: web.Request, awakeable: str, resolve: bool) -> web.StreamResponse:
        if request.method != "POST":
            return error_response(405, "use POST to complete an awakeable")
        try:
            inv, index, legacy = parse_awakeable_id(awakeable)
        except ValueError as exc:
            return error_response(400, f"bad awakeable id: {exc}")
        if legacy:
            return error_response(400, "legacy prom_1 awakeable ids are not supported")
        body = await request.read()
        if len(body) > self.cfg.request_size_limit_bytes:
            return error_response(413, f"request body exceeds the limit of {self.cfg.request_size_limit_bytes} bytes")
        note = (
            messages.notification(signal_id=index, value=body)
            if resolve
            else messages.notification(signal_id=index, failure=(500, body.decode("utf-8", errors="replace")))
        )
        try:
            outcome = await self.engine.propose_and_wait(
                lambda token: self.engine.propose_routed(
                    AppendNotification(
                        invocation_id=inv.to_bytes(),
                        entry=JournalEntry(ty=MessageType.SIGNAL_NOTIFICATION, body=note),
                        signal_id=index,
                        token=token,
                    )
                )
            )
        except (OverloadedError, LogError) as exc:
            return error_response(503, f"try again: {exc}", headers={"retry-after": RETRY_AFTER_SECONDS})
        if isinstance(outcome, Outcome) and outcome.status != 202:
            return error_response(outcome.status, outcome.message)
        return web.Response(status=202)

    # ------------------------------------------------------------------------------------------------------
    # Invocations
    # ------------------------------------------------------------------------------------------------------

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
        delay_ms = 0
        delays = [v for k, v in request.query.items() if k.lower() == "delay"]
        if delays:
            if not send:
                return error_response(400, "cannot use the delay query parameter with calls")
            try:
                delay_ms = parse_delay_ms(delays[0])
            except ValueError as exc:
                return error_response(400, str(exc))
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
        return await self._submit(service, handler, key, body, tuple(headers), idempotency_key, send, delay_ms)

    async def _submit(
        self,
        service: Service,
        handler: Handler,
        key: str | None,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        idempotency_key: str | None,
        send: bool,
        delay_ms: int,
    ) -> web.StreamResponse:
        engine = self.engine
        if handler.ty == HandlerType.WORKFLOW and key is not None:
            inv = workflow_invocation_id(service.name, key)
        elif idempotency_key is not None:
            inv = idempotent_invocation_id(service.name, key, handler.name, idempotency_key)
        elif key is not None:
            inv = random_invocation_id(partition_key_for_key(key))
        else:
            inv = random_invocation_id()
        retention = retention_policy(
            service=service,
            handler=handler.name,
            idempotent=idempotency_key is not None,
            defaults=engine.config.invocation,
        )
        now = engine.now_ms()
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
            retention=retention,
            execution_time_ms=now + delay_ms if delay_ms > 0 else 0,
            now_ms=now,
            random_seed=int.from_bytes(uuid.uuid4().bytes[:8], "little"),
            traceparent=find_traceparent(headers),
        )
        id_header = {"x-restate-id": str(inv)}
        try:
            try:
                if engine.invoker.overloaded():
                    raise OverloadedError("the invoker's queue is full")
                applied = engine.propose(record)
            except OverloadedError as exc:
                return error_response(
                    503, f"the engine is overloaded, retry later: {exc}", headers={"retry-after": RETRY_AFTER_SECONDS}
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
        if isinstance(outcome, SendAccepted) and delay_ms > 0 and not outcome.previously:
            return _accepted(inv, outcome, id_header, execution_time_ms=now + delay_ms)
        return _respond(inv, handler, outcome, id_header)


def _accepted(
    inv: InvocationId, outcome: SendAccepted, headers: dict[str, str], *, execution_time_ms: int = 0
) -> web.StreamResponse:
    body: dict[str, str] = {
        "invocationId": str(inv),
        "status": "PreviouslyAccepted" if outcome.previously else "Accepted",
    }
    if execution_time_ms:
        when = datetime.datetime.fromtimestamp(execution_time_ms / 1000, datetime.UTC)
        body["executionTime"] = when.isoformat().replace("+00:00", "Z")
    return web.Response(status=202, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _respond(
    inv: InvocationId,
    handler: Handler | None,
    outcome: Result | SendAccepted | Outcome | NotReady,
    headers: dict[str, str],
) -> web.StreamResponse:
    if isinstance(outcome, SendAccepted):
        return _accepted(inv, outcome, headers)
    if isinstance(outcome, Outcome):
        return error_response(outcome.status, outcome.message, headers=headers)
    if isinstance(outcome, NotReady):
        return error_response(470, "the invocation exists but has not completed yet", headers=headers)
    if outcome.failure is not None:
        return failure_response(outcome.failure, headers=headers)
    value = outcome.value or b""
    out = (handler.output if handler is not None else None) or {"contentType": "application/json"}
    ctype = out.get("contentType", "application/json")
    resp = web.Response(status=200, body=value, headers=headers)
    if value or out.get("setContentTypeIfEmpty"):
        if ctype:
            resp.headers["content-type"] = ctype
    return resp


def _target_id(body: object) -> InvocationId:
    """The invocation id a ``{"target": ...}`` body of /restate/attach|output|lookup names."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object with a 'target' field")
    kind = body.get("target")
    if kind == "invocation":
        return InvocationId.parse(str(body["invocationId"]))
    if kind == "workflow":
        return workflow_invocation_id(str(body["workflowName"]), str(body["workflowKey"]))
    if kind == "idempotentInvocation":
        key = body.get("key")
        return idempotent_invocation_id(
            str(body["service"]), None if key is None else str(key), str(body["handler"]), str(body["idempotencyKey"])
        )
    raise ValueError("target must be 'invocation', 'workflow' or 'idempotentInvocation'")


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

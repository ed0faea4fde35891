"""The SDK's ASGI app called in-process: full-duplex attempts with no socket (see inprocess-asgi.md).

Each attempt runs ``app(scope, receive, send)`` as its own task, owned by the :class:`AsgiAttemptStream` and
cancelled by its :meth:`~AsgiAttemptStream.aclose`. Request events flow through a bounded queue (``receive``
is the queue's ``get``), response body chunks through another (``send`` blocks when the reader lags).

What decides BIDI vs request-response is only when the body ends: with ``keep_open=True`` the SDK runs the
handler while the invoker keeps pushing notifications (:meth:`~AsgiAttemptStream.write`); once the invoker
ends the body (:meth:`~AsgiAttemptStream.end_request`) the SDK finishes or suspends. After the body ended,
``receive`` blocks until the attempt is closed: answering ``http.disconnect`` early would make the SDK end
the attempt silently, with no terminal message.

SDK behaviours handled here (restate-sdk 1.3.0):

- an unsupported protocol version makes the app *raise* (``VMException (415) ...``) before any response event:
  :meth:`AsgiTransport.start_attempt` raises :class:`DeploymentError` with that message;
- 404 / 401 answers wait for the request body to end: the transport ends it after any non-200 start;
- lifespan is not implemented by the SDK: no lifespan events are sent;
- the app's first call installs a SIGTERM handler on the running loop (replacing one set earlier): register
  engine shutdown with ``restate.server.install_shutdown_hook`` or after the first call (discovery at
  start-up).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, final
from urllib.parse import quote

from engine.errors import ConfigError, DeploymentError, EngineInternalError
from engine.invoker.discovery import DISCOVERY_ACCEPT, DiscoveryResponse, parse_discovery
from engine.invoker.identity import RequestSigner
from engine.invoker.transport import AttemptRequest

__all__ = [
    "DEFAULT_ASGI_QUEUE_LIMIT",
    "AsgiApp",
    "AsgiAttemptStream",
    "AsgiTransport",
    "AsgiTransportStatistics",
    "load_asgi_app",
]

logger = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

DEFAULT_ASGI_QUEUE_LIMIT: Final = 64  # request events / response chunks buffered per attempt
DEFAULT_DISCOVERY_TIMEOUT: Final = 30.0  # seconds
_DISCONNECT_GRACE: Final = 0.25  # seconds for the app to return after http.disconnect, before cancelling it
_CLOSE_GRACE: Final = 5.0  # seconds to wait for the app task after cancelling it

# Response-queue items: a body chunk, None = the response ended, DeploymentError = the attempt failed.
_BodyItem = bytes | DeploymentError | None
# Start result: (status, headers) or the error that ended the attempt before the response started.
_StartItem = tuple[int, Mapping[str, str]] | DeploymentError


@final
class AsgiAttemptStream:
    """One in-process exchange with the app. Made by :class:`AsgiTransport`; always :meth:`aclose` it."""

    def __init__(
        self,
        *,
        app: AsgiApp,
        scope: MutableMapping[str, Any],
        body: bytes,
        keep_open: bool,
        queue_limit: int,
        label: str,
        registry: set[AsgiAttemptStream],
    ) -> None:
        self.duplex = keep_open
        self.status = 0
        self.headers: Mapping[str, str] = MappingProxyType({})
        self._label = label
        self._registry = registry
        self._request_q: asyncio.Queue[Message] = asyncio.Queue(maxsize=queue_limit)
        self._body_q: asyncio.Queue[_BodyItem] = asyncio.Queue(maxsize=queue_limit)
        self._start: asyncio.Future[_StartItem] = asyncio.get_running_loop().create_future()
        self._request_ended = not keep_open
        self._response_ended = False
        self._eof_seen = False
        self._disconnected = False
        self._closed = False
        self._request_q.put_nowait({"type": "http.request", "body": body, "more_body": keep_open})
        self._task = asyncio.create_task(self._run(app, scope), name=f"asgi {label}")

    # -- the app side --------------------------------------------------------------------------------

    async def _run(self, app: AsgiApp, scope: MutableMapping[str, Any]) -> None:
        failure: Exception | None = None
        try:
            await app(scope, self._request_q.get, self._send)
        except asyncio.CancelledError:
            self._resolve_start(DeploymentError(f"{self._label}: attempt closed before the response started"))
            raise
        except Exception as exc:
            failure = exc
            logger.debug("%s: app raised %r", self._label, exc)
        if self._closed:
            return  # aclose() settles the start and the reader
        if not self._start.done():
            reason = f"failed before responding: {failure}" if failure else "returned without a response"
            self._resolve_start(DeploymentError(f"{self._label}: deployment app {reason}", status=500))
        elif not self._response_ended:
            self._response_ended = True
            reason = f"failed mid-response: {failure!r}" if failure else "returned without ending the response"
            await self._body_q.put(DeploymentError(f"{self._label}: deployment app {reason}", status=500))

    def _resolve_start(self, item: _StartItem) -> None:
        if not self._start.done():
            self._start.set_result(item)

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self._closed:
                return  # nobody is waiting any more
            if self._start.done():
                raise RuntimeError("ASGI protocol: http.response.start sent twice")
            headers = {
                bytes(name).decode("utf-8", "replace").lower(): bytes(value).decode("utf-8", "replace")
                for name, value in message.get("headers", ())
            }
            self._resolve_start((int(message["status"]), headers))
        elif kind == "http.response.body":
            if self._response_ended or not (self._start.done() or self._closed):
                raise RuntimeError("ASGI protocol: http.response.body outside of a response")
            more_body = bool(message.get("more_body", False))
            if not more_body:
                self._response_ended = True
            if self._closed:
                return  # nobody reads: drop (a full queue would block the app's own cleanup)
            body = message.get("body", b"")
            if body:
                await self._body_q.put(bytes(body))
            if not more_body:
                await self._body_q.put(None)
                if self._request_ended:
                    # ASGI: once the response is complete, receive() answers http.disconnect.
                    self._disconnect()
        # http.response.trailers and extensions: ignored

    # -- the invoker side ----------------------------------------------------------------------------

    async def _started(self) -> None:
        result = await self._start
        if isinstance(result, DeploymentError):
            raise result
        self.status, headers = result
        self.headers = MappingProxyType(dict(headers))

    async def _push(self, message: Message) -> None:
        try:
            self._request_q.put_nowait(message)
            return
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self._request_q.put(message))
        try:
            await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if not put.done() or put.cancelled():
            raise DeploymentError(f"{self._label}: the deployment ended the attempt", status=500)

    async def write(self, data: bytes) -> None:
        if not self.duplex:
            raise EngineInternalError("write() on an attempt started with keep_open=False")
        if self._closed:
            raise DeploymentError(f"{self._label}: attempt closed", status=500)
        if self._request_ended:
            raise EngineInternalError("write() after end_request()")
        if self._task.done():
            raise DeploymentError(f"{self._label}: the deployment ended the attempt", status=500)
        await self._push({"type": "http.request", "body": data, "more_body": True})

    async def end_request(self) -> None:
        if self._request_ended:
            return
        self._request_ended = True
        if self._closed or self._task.done():
            return
        await self._push({"type": "http.request", "body": b"", "more_body": False})

    async def read_chunk(self) -> bytes | None:
        if self._eof_seen:
            return None
        item = await self._body_q.get()  # Queue.get leaves the item queued when cancelled: safe to cancel
        if item is None:
            self._eof_seen = True
            return None
        if isinstance(item, DeploymentError):
            self._eof_seen = True
            raise item
        return item

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.read_chunk()) is not None:
            yield chunk

    def _disconnect(self) -> None:
        """Queue ``http.disconnect`` once, dropping unread request events if the queue is full."""
        if self._disconnected:
            return
        self._disconnected = True
        if self._request_q.full():
            while not self._request_q.empty():
                self._request_q.get_nowait()
        self._request_q.put_nowait({"type": "http.disconnect"})

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._registry.discard(self)
        task = self._task
        try:
            if not task.done():
                # The SDK treats a disconnect as "the runtime went away": a waiting handler stops at once
                # (DisconnectedException) and the app returns without a terminal message. Cancelling alone is
                # not enough: the SDK swallows CancelledError in the handler, then waits for the body to end.
                self._request_ended = True
                self._disconnect()
                await asyncio.wait({task}, timeout=_DISCONNECT_GRACE)
            if not task.done():
                # User code that does not await the SDK (a long ctx.run action, a blocking await).
                task.cancel()
                await asyncio.wait({task}, timeout=_CLOSE_GRACE)
                if not task.done():
                    logger.warning("%s: ASGI app ignored cancellation for %.0f s", self._label, _CLOSE_GRACE)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._resolve_start(DeploymentError(f"{self._label}: attempt closed before the response started"))
            if not self._eof_seen:
                # Wake a reader blocked in read_chunk() (in another task): the attempt is over.
                while not self._body_q.empty():
                    self._body_q.get_nowait()
                self._body_q.put_nowait(DeploymentError(f"{self._label}: attempt closed", status=500))
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("%s: app task ended with %r", self._label, task.exception())


@dataclass(frozen=True, slots=True, kw_only=True)
class AsgiTransportStatistics:
    open_attempts: int
    queue_limit: int


@final
class AsgiTransport:
    """A deployment that is an ASGI app in this process (e.g. ``restate.app([...])``)."""

    duplex = True

    def __init__(
        self,
        app: AsgiApp,
        *,
        root_path: str = "",
        queue_limit: int = DEFAULT_ASGI_QUEUE_LIMIT,
        discovery_timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        label: str = "in-process app",
        signer: RequestSigner | None = None,
    ) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be >= 1")
        self._app = app
        self._root_path = root_path.rstrip("/")
        self._queue_limit = queue_limit
        self._discovery_timeout = discovery_timeout
        self.label = label
        # Request identity (engine.invoker.identity): in-process requests are signed like HTTP ones, so an app
        # configured with identity keys behaves the same mounted or served.
        self._signer = signer
        self._streams: set[AsgiAttemptStream] = set()
        self._closed = False

    def statistics(self) -> AsgiTransportStatistics:
        return AsgiTransportStatistics(open_attempts=len(self._streams), queue_limit=self._queue_limit)

    def _scope(
        self, *, method: str, path: str, headers: tuple[tuple[str, str], ...], http_version: str
    ) -> dict[str, Any]:
        full_path = self._root_path + path
        if self._signer is not None:
            headers = (*headers, *self._signer.headers(path))  # the audience is the path below the root path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": http_version,
            "method": method,
            "scheme": "http",
            "path": full_path,
            "raw_path": quote(full_path).encode("ascii"),
            "query_string": b"",
            "root_path": self._root_path,
            "headers": [(name.lower().encode("utf-8"), value.encode("utf-8")) for name, value in headers],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", None),
            "extensions": {},
        }

    async def _open(
        self,
        *,
        method: str,
        path: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        keep_open: bool,
        http_version: str,
        label: str,
    ) -> AsgiAttemptStream:
        if self._closed:
            raise DeploymentError(f"{self.label}: transport is closed", status=502)
        stream = AsgiAttemptStream(
            app=self._app,
            scope=self._scope(method=method, path=path, headers=headers, http_version=http_version),
            body=body,
            keep_open=keep_open,
            queue_limit=self._queue_limit,
            label=label,
            registry=self._streams,
        )
        self._streams.add(stream)
        try:
            await stream._started()
            if stream.status != 200:
                # 404 / 401 answers wait for the request body to end before ending the response.
                await stream.end_request()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def start_attempt(self, request: AttemptRequest, body: bytes, *, keep_open: bool) -> AsgiAttemptStream:
        # The SDK uses the path segments verbatim (no URL-decoding); names are validated at discovery.
        return await self._open(
            method="POST",
            path=f"/invoke/{request.service}/{request.handler}",
            headers=request.headers,
            body=body,
            keep_open=keep_open,
            # The SDK ignores http_version on /invoke; "2" matches what the exchange really is (a stream).
            http_version="2",
            label=f"{self.label} {request.service}/{request.handler}",
        )

    async def discover(self) -> DiscoveryResponse:
        status, headers, body = await self.fetch_discovery()
        return parse_discovery(status, headers, body, source=self.label)

    async def fetch_discovery(self) -> tuple[int, dict[str, str], bytes]:
        """``GET /discover`` as answered (status, headers, body), not yet validated (an invoker process fetches
        it; the engine validates it)."""
        try:
            async with asyncio.timeout(self._discovery_timeout):
                stream = await self._open(
                    method="GET",
                    path="/discover",
                    headers=(("accept", DISCOVERY_ACCEPT),),
                    body=b"",
                    keep_open=False,
                    # The SDK reads http_version on /discover only:
                    # "1.1" -> REQUEST_RESPONSE, else BIDI_STREAM.
                    http_version="2",
                    label=f"{self.label} discover",
                )
                try:
                    body = b"".join([chunk async for chunk in stream.chunks()])
                finally:
                    await stream.aclose()
        except TimeoutError as exc:
            raise DeploymentError(
                f"{self.label}: discovery did not answer within {self._discovery_timeout:g} s", status=502
            ) from exc
        return stream.status, dict(stream.headers), body

    async def aclose(self) -> None:
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()


def load_asgi_app(spec: str, *, app_dir: str | os.PathLike[str] | None = None) -> AsgiApp:
    """Import an ASGI app given as ``"module:attribute"`` (``attribute`` may be dotted), like uvicorn.

    ``app_dir`` (e.g. the working directory) is put first on ``sys.path`` if it is not there yet, so a
    project's module is found when ``capstan`` runs as an installed script. Raises :class:`ConfigError`.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"app {spec!r}: expected 'module:attribute', e.g. 'my_service.main:app'")
    if app_dir is not None:
        directory = os.fspath(app_dir)
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"app {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"app {spec!r}: importing module {module_name!r} raised {exc!r}") from exc
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(f"app {spec!r}: module {module_name!r} has no attribute {attr_path!r}") from exc
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else getattr(obj, "__call__", None)  # noqa: B004
    if call is None or not inspect.iscoroutinefunction(call):
        raise ConfigError(
            f"app {spec!r}: {type(obj).__name__} is not an ASGI app (expected e.g. restate.app([my_service]))"
        )
    app: AsgiApp = obj
    return app

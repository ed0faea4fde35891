"""aiohttp's own HTTP errors as the JSON error bodies of the ingress and the admin API.

aiohttp answers some requests before (or instead of) our handlers: no matching route (404), a method the route does
not take (405), a body over the app's ``client_max_size`` (413). Its bodies are plain text; clients of both APIs
expect JSON with a ``message``. The middleware re-renders them with the API's own error function.

A client that goes away (or half-closes) before sending the whole body it announced makes the body read raise
``ConnectionResetError``: that is the client's doing, not an engine error, so it is answered with a 400 (which
usually cannot be delivered any more) and logged at DEBUG instead of aiohttp's "Error handling request" traceback.
Other exceptions are left alone (aiohttp logs them as errors and answers 500: a bug to see, not to hide).

Requests aiohttp cannot even parse (a bad request line, header or chunk size) never reach a handler: aiohttp answers
400 itself and logs an ERROR with a traceback for each. :func:`quiet_client_protocol_errors` demotes those records to
DEBUG, so a client sending garbage cannot fill the engine's error log; errors raised by our handlers stay ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

logger = logging.getLogger(__name__)

ErrorRenderer = Callable[[int, str, Mapping[str, str]], web.Response]

_KEPT_HEADERS = frozenset({"allow", "retry-after"})


def json_http_errors(render: ErrorRenderer) -> Middleware:
    """A middleware that answers aiohttp's HTTP errors (status >= 400) with ``render(status, message, headers)``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
            return render(exc.status, _message(request, exc), headers)
        except ConnectionResetError as exc:  # the request body was cut short (aiohttp: "Connection lost")
            logger.debug("%s %s: the client closed the connection mid-request: %s", request.method, request.path, exc)
            return render(400, "the connection closed before the request body was complete", {})

    return middleware


def _message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no route for {request.method} {request.path}"
    if exc.status == 405:
        allowed = exc.headers.get("allow", "")
        return f"method {request.method} not allowed on {request.path}" + (f" (allowed: {allowed})" if allowed else "")
    if exc.status == 413:
        return f"request body too large: {exc.text}"
    return exc.text or exc.reason


class _ClientProtocolErrorsAtDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_QUIET = _ClientProtocolErrorsAtDebug()


def quiet_client_protocol_errors() -> None:
    """Log aiohttp's "Error handling request" for unparsable requests at DEBUG (idempotent)."""
    server_logger = logging.getLogger("aiohttp.server")
    if _QUIET not in server_logger.filters:
        server_logger.addFilter(_QUIET)

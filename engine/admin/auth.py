"""Bearer-token authentication for the admin API (``admin.auth_token`` / ``admin.auth_token_file``).

When a token is configured, every admin route (deployments, services, invocations, state, ``/query``,
``/metrics``, ``/openapi``, the Kafka routes of extensions, and unknown paths) answers 401 unless the request
carries ``Authorization: Bearer <token>``. Open without a token: ``/health`` (under every version prefix), because
load balancers and readiness probes call it without credentials and it says nothing but ``{"status": "ok"}``; and
the web UI's static files (``engine.admin.ui.UI_PATHS``), which hold no data: a browser cannot attach a token to a
page load, and the page's own API calls carry the token the user pastes.

401 answers are Restate-shaped JSON (``{"message": ...}``) with ``WWW-Authenticate: Bearer realm="capstan-admin"``
(plus ``error="invalid_token"`` when a token was sent but is wrong, RFC 6750). Tokens are compared in constant
time (:func:`hmac.compare_digest`) and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["REALM", "bearer_auth_middleware"]

logger = logging.getLogger(__name__)

REALM = "capstan-admin"


def _unauthorized(message: str, *, invalid: bool) -> web.Response:
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if invalid else "")
    return web.json_response({"message": message}, status=401, headers={"WWW-Authenticate": challenge})


def bearer_auth_middleware(token: str, *, open_paths: Iterable[str]) -> Middleware:
    """An aiohttp middleware that admits requests to ``open_paths`` and requests bearing ``token``."""
    expected = token.encode("utf-8")
    unauthenticated = frozenset(open_paths)

    @web.middleware
    async def require_bearer_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in unauthenticated:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            logger.debug("admin API: %s %s without a bearer token", request.method, request.path)
            return _unauthorized(
                "this admin API needs 'Authorization: Bearer <token>' (admin.auth_token; the CLI reads --token or "
                "$CAPSTAN_ADMIN_TOKEN)",
                invalid=False,
            )
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), expected):
            logger.debug("admin API: %s %s with a wrong bearer token", request.method, request.path)
            return _unauthorized("invalid bearer token", invalid=True)
        return await handler(request)

    return require_bearer_token

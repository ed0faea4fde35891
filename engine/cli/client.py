"""A small async client for Capstan's admin API (the Restate admin API shapes, default port 9070).

Used by the ``capstan`` CLI; importing this module imports aiohttp, so the CLI imports it lazily. Responses are
returned as decoded JSON (``dict``), unvalidated: the CLI prints them and must keep working when the server adds
fields.

Errors: :class:`AdminUnreachableError` when no HTTP answer came back (connection refused, DNS, timeout) and
:class:`AdminHTTPError` for any non-2xx answer, carrying the status and the body's ``message``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from engine.errors import EngineError

DEFAULT_TIMEOUT_S = 30.0

Json = dict[str, Any]


class AdminClientError(EngineError):
    """A call to the admin API failed."""


class AdminUnreachableError(AdminClientError):
    """No HTTP response: nothing listens at the URL, the name does not resolve, or the request timed out."""

    retriable = True

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the admin API at {url}: {reason}")
        self.url = url
        self.reason = reason


class AdminHTTPError(AdminClientError):
    """The admin API answered with a non-2xx status. ``message`` is the body's ``message`` field (or its text)."""

    def __init__(self, method: str, url: str, status: int, reason: str, message: str, body: Any) -> None:
        summary = f"{method} {url} -> {status} {reason}".rstrip()
        super().__init__(f"{summary}: {message}" if message else summary)
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body


def _segment(value: str) -> str:
    # Deployment ids and service names go into one path segment each.
    return quote(value, safe="")


class AdminClient:
    """Async client for the admin API at ``base_url`` (e.g. ``http://127.0.0.1:9070``).

    Use as ``async with AdminClient(url) as admin: ...`` or call :meth:`aclose` when done. ``token`` is sent as
    ``Authorization: Bearer <token>`` (for an engine with ``admin.auth_token`` set).
    """

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT_S, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"accept": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------------------------------------------------
    # Deployments
    # ---------------------------------------------------------------------------------------------------------

    async def register_deployment(
        self,
        uri: str,
        *,
        force: bool = False,
        use_http_11: bool = False,
        additional_headers: Mapping[str, str] | None = None,
    ) -> Json:
        """``POST /deployments``: discover the endpoint at ``uri`` and register its services.

        Returns ``{id, services: [ServiceMetadata], ...}``.
        """
        body: Json = {
            "uri": uri,
            "force": force,
            "use_http_11": use_http_11,
            "additional_headers": dict(additional_headers or {}),
        }
        return await self._json("POST", "/deployments", body=body)

    async def list_deployments(self) -> Json:
        """``GET /deployments``: ``{deployments: [{id, uri, protocol_type, services: [{name, revision}], ...}]}``."""
        return await self._json("GET", "/deployments")

    async def describe_deployment(self, deployment_id: str) -> Json:
        """``GET /deployments/{id}``: the deployment with its full service metadata."""
        return await self._json("GET", f"/deployments/{_segment(deployment_id)}")

    async def remove_deployment(self, deployment_id: str, *, force: bool = False) -> Json:
        """``DELETE /deployments/{id}?force=...``. The server answers 202 (and, like Restate, may refuse without
        ``force``). Returns the response body, ``{}`` when empty."""
        params = {"force": "true" if force else "false"}
        return await self._json("DELETE", f"/deployments/{_segment(deployment_id)}", params=params)

    # ---------------------------------------------------------------------------------------------------------
    # Services
    # ---------------------------------------------------------------------------------------------------------

    async def list_services(self) -> Json:
        """``GET /services``: ``{services: [ServiceMetadata]}``."""
        return await self._json("GET", "/services")

    async def describe_service(self, name: str) -> Json:
        """``GET /services/{name}``: one ``ServiceMetadata``."""
        return await self._json("GET", f"/services/{_segment(name)}")

    async def request(
        self, method: str, path: str, *, body: Json | None = None, params: Mapping[str, str] | None = None
    ) -> Json:
        """Any admin API call (``path`` starts with ``/``); the decoded JSON object, ``{}`` when empty."""
        return await self._json(method, path, body=body, params=params)

    # ---------------------------------------------------------------------------------------------------------
    # Transport
    # ---------------------------------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # trust_env=False: an http_proxy variable must not capture calls to a local admin port.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        return self._session

    async def _json(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Json:
        """Send one request; return the decoded JSON object (``{}`` for an empty body)."""
        url = f"{self.base_url}{path}"
        session = self._get_session()
        try:
            async with session.request(method, url, json=body, params=params, headers=self._headers) as resp:
                text = await resp.text()
                status, reason = resp.status, resp.reason or ""
        except TimeoutError as exc:
            raise AdminUnreachableError(self.base_url, "request timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise AdminUnreachableError(self.base_url, str(exc.os_error) or str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise AdminUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

        decoded: Any = None
        if text.strip():
            try:
                decoded = json.loads(text)
            except ValueError:
                decoded = None
        if not 200 <= status < 300:
            message = ""
            if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
                message = decoded["message"]
            elif text.strip():
                message = text.strip()
            raise AdminHTTPError(method, url, status, reason, message, decoded if decoded is not None else text)
        if decoded is None:
            if text.strip():
                raise AdminHTTPError(method, url, status, reason, "response is not JSON", text)
            return {}
        if not isinstance(decoded, dict):
            return {"value": decoded}
        return decoded

"""A remote deployment over HTTP/1.1 (aiohttp): request-response attempts and discovery.

aiohttp speaks HTTP/1.1 only, so every attempt is REQUEST_RESPONSE whatever the manifest's ``protocolMode``
says: the whole body (Start + journal) is sent with a ``content-length``, then the response is streamed. The
SDK suspends at its first await it cannot satisfy from the journal (one attempt per awaited ``ctx.run``,
sleep, call).

One :class:`aiohttp.ClientSession` (see :func:`open_http_session`) is shared by every deployment; its
connector is the connection pool. The owner of the session (the invoker / server) closes it, not the
transports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Final, final
from urllib.parse import quote

import aiohttp

from engine.config import InvokerSection
from engine.errors import DeploymentError, EngineInternalError
from engine.invoker.discovery import DISCOVERY_ACCEPT, DiscoveryResponse, parse_discovery
from engine.invoker.identity import RequestSigner
from engine.invoker.transport import AttemptRequest

__all__ = ["DEFAULT_DISCOVERY_TIMEOUT", "HttpAttemptStream", "HttpTransport", "open_http_session"]

logger = logging.getLogger(__name__)

DEFAULT_DISCOVERY_TIMEOUT: Final = 30.0  # seconds for a whole GET /discover
# Headers aiohttp would add on its own; user code sees attempt headers, so keep them to what Restate sends.
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept-Encoding")


def open_http_session(config: InvokerSection) -> aiohttp.ClientSession:
    """The shared connection pool towards HTTP deployments. Call inside the running loop; close it on
    shutdown.

    At most ``config.concurrency_limit`` connections (one per running attempt). Only connecting is timed here
    (``config.connect_timeout``): the invoker enforces the inactivity and abort timeouts with
    ``asyncio.timeout``.
    """
    connector = aiohttp.TCPConnector(limit=config.concurrency_limit, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout.total_seconds())
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # deployments get no cookies back; skips cookie filtering per request
    )


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@final
class HttpAttemptStream:
    """One HTTP/1.1 attempt whose request body was sent in full (:meth:`HttpTransport.start_attempt`)."""

    duplex = False

    def __init__(self, response: aiohttp.ClientResponse, url: str, on_close: set[HttpAttemptStream]) -> None:
        self._response = response
        self._url = url
        self._registry = on_close
        self._closed = False
        self.status: int = response.status
        self.headers: Mapping[str, str] = MappingProxyType(_lower_headers(response.headers))

    async def write(self, data: bytes) -> None:
        raise EngineInternalError("an HTTP/1.1 request-response attempt cannot write after the start")

    async def end_request(self) -> None:
        return  # the body ended with start_attempt

    async def read_chunk(self) -> bytes | None:
        if self._closed:
            return None
        try:
            # readany() keeps unread data in the stream's buffer when cancelled: safe to cancel.
            chunk = await self._response.content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise DeploymentError(f"deployment at {self._url} broke the response stream: {exc!r}", status=502) from exc
        return chunk or None  # b"" = end of the body

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.read_chunk()) is not None:
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._registry.discard(self)
        if not self._response.content.at_eof():
            await self._drain()
        if self._response.content.at_eof():
            self._response.release()  # back to the pool (keep-alive)
        else:
            self._response.close()  # unread body: drop the connection

    async def _drain(self) -> None:
        """Read what is left of the response (usually just the final empty chunk, which arrives after the End or
        Suspension frame the invoker stopped at) so the connection can go back to the pool: a closed connection
        means a reconnect for the next attempt, and hypercorn's set-up for it."""
        content = self._response.content
        left = _DRAIN_LIMIT_BYTES
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                while left > 0 and not content.at_eof():
                    chunk = await content.readany()
                    if not chunk:
                        break
                    left -= len(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return


# After the outcome frame: how much more of a response we read to keep its connection (else it is closed).
_DRAIN_LIMIT_BYTES: Final = 64 * 1024
_DRAIN_TIMEOUT_S: Final = 1.0


@final
class HttpTransport:
    """A deployment reached at ``base_url`` (``http://host:port[/prefix]``)."""

    duplex = False

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession,
        additional_headers: Mapping[str, str] | None = None,
        connect_timeout: float,
        use_http_11: bool = True,
        discovery_timeout: float = DEFAULT_DISCOVERY_TIMEOUT,
        signer: RequestSigner | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Request identity (engine.invoker.identity): the JWT's audience is the path below the deployment's URI.
        self._signer = signer
        # aiohttp has no h2c: a deployment registered without use_http_11 is still driven over HTTP/1.1
        # (request-response). The flag is kept so the admin API can show what was registered.
        self.use_http_11 = use_http_11
        self._session = session
        self._additional_headers = dict(additional_headers or {})
        self._connect_timeout = connect_timeout
        self._discovery_timeout = discovery_timeout
        self._streams: set[HttpAttemptStream] = set()
        self._closed = False

    def _headers(self, extra: Mapping[str, str] | tuple[tuple[str, str], ...], path: str) -> dict[str, str]:
        headers = {name.lower(): value for name, value in self._additional_headers.items()}
        items = extra.items() if isinstance(extra, Mapping) else extra
        for name, value in items:
            headers[name.lower()] = value
        if self._signer is not None:
            headers.update(self._signer.headers(path))
        return headers

    def _unreachable(self, url: str, exc: BaseException) -> DeploymentError:
        return DeploymentError(f"deployment at {url} is unreachable: {exc!r}", status=502)

    async def start_attempt(self, request: AttemptRequest, body: bytes, *, keep_open: bool) -> HttpAttemptStream:
        if keep_open:
            raise EngineInternalError("HTTP/1.1 deployments are request-response: keep_open must be False")
        if self._closed:
            raise DeploymentError(f"transport for {self.base_url} is closed", status=502)
        url = f"{self.base_url}/invoke/{quote(request.service, safe='')}/{quote(request.handler, safe='')}"
        path = f"/invoke/{request.service}/{request.handler}"
        try:
            response = await self._session.post(  # the session's timeout: connecting only (see open_http_session)
                url,
                data=body,
                headers=self._headers(request.headers, path),
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(url, exc) from exc
        stream = HttpAttemptStream(response, url, self._streams)
        self._streams.add(stream)
        return stream

    async def discover(self) -> DiscoveryResponse:
        url = f"{self.base_url}/discover"
        timeout = aiohttp.ClientTimeout(total=self._discovery_timeout, sock_connect=self._connect_timeout)
        try:
            async with self._session.get(
                url,
                headers=self._headers({"accept": DISCOVERY_ACCEPT}, "/discover"),
                timeout=timeout,
                allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
            ) as response:
                body = await response.read()
                status = response.status
                headers = _lower_headers(response.headers)
        except (aiohttp.ClientError, OSError) as exc:
            # OSError covers TimeoutError from aiohttp's own timers (a caller's asyncio.timeout cancels).
            raise self._unreachable(url, exc) from exc
        return parse_discovery(status, headers, body, source=self.base_url)

    async def aclose(self) -> None:
        self._closed = True
        streams = list(self._streams)
        for stream in streams:
            await stream.aclose()
        if streams:
            logger.debug("closed %d open attempt(s) towards %s", len(streams), self.base_url)

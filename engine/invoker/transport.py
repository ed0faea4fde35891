"""The seam between the invoker and a deployment: one attempt = one streamed request/response exchange.

Two implementations:

- :class:`engine.invoker.transport_http.HttpTransport`: a remote deployment over HTTP/1.1 with aiohttp.
  Request-response only: the request body (Start + journal) is sent whole, then the response is streamed
  (``duplex = False``); the SDK suspends at its first await it cannot satisfy from the journal.
- :class:`engine.invoker.transport_asgi.AsgiTransport`: the SDK's ASGI app called in-process. Full duplex
  (``duplex = True``): with ``keep_open=True`` the invoker keeps pushing notifications with
  :meth:`AttemptStream.write` and ends the body when the SDK sent End/Suspension/Error or when it gives up
  waiting.

The invoker owns the framing (``engine.invoker.protocol``); transports move bytes and map transport failures
to :class:`engine.errors.DeploymentError` (a failed attempt, retried by the invoker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from engine.invoker.discovery import DiscoveryResponse

__all__ = ["AttemptRequest", "AttemptStream", "Transport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRequest:
    """What to invoke. Built by the invoker.

    ``headers`` are sent as given (names lower-case): ``content-type`` and ``accept`` =
    ``application/vnd.restate.invocation.vN``, ``x-restate-invocation-id``, ``x-restate-service-key`` (already
    URL-encoded, keyed targets only), ... The transport adds the deployment's ``additional_headers``.
    """

    service: str
    handler: str
    headers: tuple[tuple[str, str], ...]


class AttemptStream(Protocol):
    """One running attempt. Always :meth:`aclose` it (``try/finally``), whatever happened."""

    @property
    def status(self) -> int:
        """HTTP status of the response."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Response headers, names lower-case."""
        ...

    @property
    def duplex(self) -> bool:
        """True if :meth:`write` may be called after the start (in-process ASGI with ``keep_open=True``)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send more request body. Raises ``EngineInternalError`` if the stream is not duplex or the body
        ended, ``DeploymentError`` if the deployment already finished the attempt."""
        ...

    async def end_request(self) -> None:
        """Close the request body (idempotent). The SDK then finishes (End) or suspends, and ends its
        response."""
        ...

    async def read_chunk(self) -> bytes | None:
        """The next response body chunk, or None once the response ended (chunk boundaries are arbitrary;
        reassemble frames). Raises ``DeploymentError`` if the deployment fails or the connection breaks
        mid-response. Safe to cancel: a cancelled read loses nothing, the next one returns what it would have."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """:meth:`read_chunk` until the response ends, as an async iterator (not safe to cancel mid-way)."""
        ...

    async def aclose(self) -> None:
        """Release everything: cancel the app task / release or drop the connection. Idempotent."""
        ...


class Transport(Protocol):
    """How the invoker reaches one deployment."""

    @property
    def duplex(self) -> bool:
        """True if :meth:`start_attempt` accepts ``keep_open=True`` (the deployment can run BIDI_STREAM)."""
        ...

    async def start_attempt(self, request: AttemptRequest, body: bytes, *, keep_open: bool) -> AttemptStream:
        """Send Start + journal ``body``.

        ``keep_open=False``: the request body is exactly ``body`` and ends (REQUEST_RESPONSE).
        ``keep_open=True`` (duplex transports only): the body stays open for :meth:`AttemptStream.write`.
        Returns once the response headers arrived; non-200 statuses are returned, not raised (the invoker
        checks status and content-type). Connection errors / timeouts raise ``DeploymentError`` (a failed
        attempt).
        """
        ...

    async def discover(self) -> DiscoveryResponse:
        """``GET /discover`` and validate the manifest (:func:`engine.invoker.discovery.parse_discovery`)."""
        ...

    async def aclose(self) -> None:
        """Close every attempt stream still open. Idempotent."""
        ...

"""A small client for Confluent Schema Registry's REST API: Avro writer schemas by id.

Only ``GET /schemas/ids/{id}`` is used; Redpanda, Karapace and Apicurio (ccompat) serve the same endpoint. Parsed
schemas live in a bounded LRU cache (a schema id never changes meaning), and concurrent lookups of one id share a
single request.

Failures are split by what retrying can do:

- :class:`UnknownSchemaError` and :class:`UnsupportedSchemaError` are :class:`~ingress_kafka.formats.PoisonRecordError`:
  the record names a schema that does not exist or that Capstan cannot read, and it never will.
- :class:`SchemaRegistryUnavailableError` is retriable: the registry is down, slow, refused us or answered nonsense.
  The consumer pauses and tries the same record again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, final

import aiohttp
import fastavro
import yarl

from engine.errors import IngressError
from ingress_kafka.formats import ParsedSchema, PoisonRecordError, Stage

__all__ = [
    "DEFAULT_CACHE_LIMIT",
    "DEFAULT_TIMEOUT",
    "SchemaRegistryClient",
    "SchemaRegistryStatistics",
    "SchemaRegistryUnavailableError",
    "UnknownSchemaError",
    "UnsupportedSchemaError",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds for one registry request, connect to last byte."""
DEFAULT_CACHE_LIMIT = 1000
"""Parsed schemas kept; a topic rarely has more than a handful of writer schemas."""

_SCHEMA_NOT_FOUND = 40403  # Confluent's error_code for an unknown schema id
_ACCEPT = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
_BODY_SNIPPET = 200


class UnknownSchemaError(PoisonRecordError):
    """The registry does not know the schema id a record names (HTTP 404, error code 40403).

    Attributes:
        schema_id: The id from the record's Confluent header.
        registry_url: The registry asked, without credentials.
    """

    def __init__(self, schema_id: int, *, registry_url: str, stage: Stage = "value") -> None:
        super().__init__(
            f"schema id {schema_id} is not registered in the schema registry at {registry_url}", stage=stage
        )
        self.schema_id = schema_id
        self.registry_url = registry_url


class UnsupportedSchemaError(PoisonRecordError):
    """The registry holds the schema, but Capstan cannot decode with it (not Avro, uses references, does not parse).

    Attributes:
        schema_id: The id from the record's Confluent header.
    """

    def __init__(self, schema_id: int, detail: str, *, stage: Stage = "value") -> None:
        super().__init__(f"schema id {schema_id} cannot be used: {detail}", stage=stage)
        self.schema_id = schema_id


class SchemaRegistryUnavailableError(IngressError):
    """The registry could not give an answer now: connection failure, timeout, 5xx, auth failure, malformed reply.

    Retriable: the record is fine, pause and try it again.

    Attributes:
        schema_id: The id being looked up.
        registry_url: The registry asked, without credentials.
        status: The HTTP status, or ``None`` when no response arrived.
    """

    retriable: ClassVar[bool] = True

    def __init__(self, message: str, *, schema_id: int, registry_url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.schema_id = schema_id
        self.registry_url = registry_url
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaRegistryStatistics:
    """A snapshot of the client's cache and requests."""

    cached_schemas: int
    cache_limit: int
    cache_hits: int
    fetches: int
    """Requests started (concurrent lookups of one id count once)."""
    fetches_in_flight: int
    evictions: int


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why a fetch failed. Every waiter raises its own exception from it, so none shares a mutable error."""

    kind: Literal["unknown", "unsupported", "unavailable"]
    detail: str
    status: int | None = None
    cause: BaseException | None = None


@final
class SchemaRegistryClient:
    """Fetches and caches Avro writer schemas from a Confluent-compatible schema registry.

    Credentials may be given in the URL (``https://key:secret@host``, HTTP basic auth) or through ``session``.

    Args:
        url: The registry's base URL.
        session: A session to use instead of one owned by the client (then :meth:`aclose` leaves it open).
        timeout: Seconds allowed for one request.
        cache_limit: How many parsed schemas to keep, least recently used dropped first.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cache_limit: int = DEFAULT_CACHE_LIMIT,
    ) -> None:
        base = yarl.URL(url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"schema registry URL must be http(s) with a host, not {url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if cache_limit < 1:
            raise ValueError(f"cache_limit must be at least 1, not {cache_limit}")
        self._base = base
        self._display_url = str(base.with_user(None))
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache_limit = cache_limit
        self._cache: OrderedDict[int, ParsedSchema] = OrderedDict()
        # One task per id being fetched; the client owns them and cancels them in aclose().
        self._in_flight: dict[int, asyncio.Task[ParsedSchema | _Failure]] = {}
        self._closed = False
        self._hits = 0
        self._fetches = 0
        self._evictions = 0

    @property
    def url(self) -> str:
        """The registry's base URL, without credentials."""
        return self._display_url

    async def schema(self, schema_id: int) -> ParsedSchema:
        """The parsed writer schema registered under ``schema_id``.

        Raises:
            UnknownSchemaError: The registry does not know the id (poison).
            UnsupportedSchemaError: The schema is not Avro, has references, or does not parse (poison).
            SchemaRegistryUnavailableError: No usable answer now (retriable).
                Also raised once :meth:`aclose` has run (shutdown), including to callers waiting on a fetch.
        """
        if self._closed:
            raise self._closed_error(schema_id)
        cached = self._cache.get(schema_id)
        if cached is not None:
            self._cache.move_to_end(schema_id)
            self._hits += 1
            return cached
        task = self._in_flight.get(schema_id)
        if task is None:
            self._fetches += 1
            task = asyncio.create_task(self._fetch(schema_id), name=f"schema-registry-fetch-{schema_id}")
            self._in_flight[schema_id] = task
            task.add_done_callback(functools.partial(self._forget, schema_id))
        try:
            # Shielded: a cancelled caller must not cancel the fetch the other callers are waiting on.
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and self._closed and current is not None and not current.cancelling():
                # aclose() stopped the fetch; this caller was not cancelled and must not see a CancelledError.
                raise self._closed_error(schema_id) from None
            raise
        if isinstance(outcome, _Failure):
            raise self._error(schema_id, outcome) from outcome.cause
        return outcome

    def statistics(self) -> SchemaRegistryStatistics:
        return SchemaRegistryStatistics(
            cached_schemas=len(self._cache),
            cache_limit=self._cache_limit,
            cache_hits=self._hits,
            fetches=self._fetches,
            fetches_in_flight=len(self._in_flight),
            evictions=self._evictions,
        )

    async def aclose(self) -> None:
        """Cancel fetches in flight and close the session the client opened. Idempotent."""
        self._closed = True
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ------------------------------------------------------------------------------------------------------------

    def _forget(self, schema_id: int, task: asyncio.Task[ParsedSchema | _Failure]) -> None:
        if self._in_flight.get(schema_id) is task:
            del self._in_flight[schema_id]

    def _closed_error(self, schema_id: int) -> SchemaRegistryUnavailableError:
        return SchemaRegistryUnavailableError(
            f"schema registry client for {self._display_url} is closed",
            schema_id=schema_id,
            registry_url=self._display_url,
        )

    def _error(self, schema_id: int, failure: _Failure) -> Exception:
        match failure.kind:
            case "unknown":
                return UnknownSchemaError(schema_id, registry_url=self._display_url)
            case "unsupported":
                return UnsupportedSchemaError(schema_id, failure.detail)
            case "unavailable":
                return SchemaRegistryUnavailableError(
                    f"schema registry at {self._display_url} gave no usable answer for schema id {schema_id}: "
                    f"{failure.detail}",
                    schema_id=schema_id,
                    registry_url=self._display_url,
                    status=failure.status,
                )

    def _session_for_fetch(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily: aiohttp wants a running loop, and a client that is never asked needs no session.
            self._session = aiohttp.ClientSession()
        return self._session

    async def _fetch(self, schema_id: int) -> ParsedSchema | _Failure:
        url = self._base / "schemas" / "ids" / str(schema_id)
        try:
            async with self._session_for_fetch().get(url, headers=_ACCEPT, timeout=self._timeout) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's timeouts are both
            logger.debug("schema registry request for id %d failed: %r", schema_id, exc)
            return _Failure("unavailable", f"{type(exc).__name__}: {exc}", cause=exc)
        logger.debug("schema registry answered %d for schema id %d", status, schema_id)
        if status == 404:
            if _error_code(body) == _SCHEMA_NOT_FOUND:
                return _Failure("unknown", "not found", status=status)
            # Confluent answers an unknown route with error_code 404, a proxy with HTML: the URL is wrong, which
            # must not turn every record into poison.
            return _Failure(
                "unavailable",
                f"HTTP 404 without error code {_SCHEMA_NOT_FOUND}, so the URL is probably not a schema registry: "
                f"{_snippet(body)}",
                status=status,
            )
        if status != 200:
            return _Failure("unavailable", f"HTTP {status}: {_snippet(body)}", status=status)
        try:
            payload: Any = json.loads(body)
        except ValueError:
            return _Failure("unavailable", f"answer is not JSON: {_snippet(body)}", status=status)
        if not isinstance(payload, dict) or not isinstance(payload.get("schema"), str):
            return _Failure("unavailable", f"answer has no 'schema' string: {_snippet(body)}", status=status)
        schema_type = payload.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            return _Failure("unsupported", f"it is a {schema_type} schema; only AVRO is supported", status=status)
        if payload.get("references"):
            return _Failure("unsupported", "schema references are not supported", status=status)
        try:
            parsed: ParsedSchema = fastavro.parse_schema(json.loads(payload["schema"]))
        except Exception as exc:  # JSON errors and fastavro's several parse exceptions
            return _Failure("unsupported", f"not a valid Avro schema: {type(exc).__name__}: {exc}", cause=exc)
        self._store(schema_id, parsed)
        return parsed

    def _store(self, schema_id: int, parsed: ParsedSchema) -> None:
        self._cache[schema_id] = parsed
        self._cache.move_to_end(schema_id)
        while len(self._cache) > self._cache_limit:
            self._cache.popitem(last=False)
            self._evictions += 1


def _error_code(body: bytes) -> object:
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None
    return payload.get("error_code") if isinstance(payload, dict) else None


def _snippet(body: bytes) -> str:
    text = body[:_BODY_SNIPPET].decode("utf-8", "replace")
    return repr(text + ("..." if len(body) > _BODY_SNIPPET else ""))


@final
class SchemaRegistries:
    """The subscriptions' registry clients, one per URL, sharing one session (closed by :meth:`aclose`)."""

    def __init__(self) -> None:
        self._clients: dict[str, SchemaRegistryClient] = {}
        self._session: aiohttp.ClientSession | None = None

    def for_options(self, options: Mapping[str, str]) -> SchemaRegistryClient | None:
        """The client for a subscription's ``capstan.schema.registry.url`` option, if it has one."""
        url = options.get("capstan.schema.registry.url")
        if not url:
            return None
        client = self._clients.get(url)
        if client is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            client = self._clients[url] = SchemaRegistryClient(url, session=self._session)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        if self._session is not None:
            await self._session.close()

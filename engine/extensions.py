"""The seam through which the server runs components that live outside ``engine/`` (Kafka subscriptions).

``engine`` never imports them: ``EngineConfig.extensions`` names them as ``module:attribute`` and the server imports
them at start-up. An extension is built with the running :class:`~engine.server.Engine`, adds its admin routes,
is told about metadata changes and about failures routed to its external sinks, can add tables to the admin API's
SQL introspection (``POST /query``) and metrics to ``GET /metrics``, and is closed before the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from engine.errors import ConfigError
from engine.metrics import MetricFamily
from engine.partition.effects import ExternalDelivery

if TYPE_CHECKING:
    from engine.server import Engine


@dataclass(frozen=True, slots=True, kw_only=True)
class IntrospectionTable:
    """A table an extension adds to ``POST /query``.

    Attributes:
        name: the SQL table name (e.g. ``sys_kafka_lag``).
        columns: ``(name, SQL type)`` pairs; types are SQLite's (``TEXT``, ``INTEGER``, ``REAL``, ``BLOB``,
            ``BOOLEAN`` answered as true/false).
        rows: called on the event loop for each query that names the table; returns tuples in column order.
            It must return quickly (it reads the extension's in-memory state).
    """

    name: str
    columns: tuple[tuple[str, str], ...]
    rows: Callable[[], list[tuple[Any, ...]]]


class Extension(Protocol):
    """What the server calls. Every method but ``aclose`` must return quickly (spawn tasks in ``start``)."""

    def add_admin_routes(self, app: web.Application, prefixes: tuple[str, ...]) -> None: ...

    async def start(self) -> None: ...

    def on_metadata(self, key: str, value: bytes | None) -> None:
        """A metadata row changed (applied and durable). Keys are ``<kind>/<name>``."""
        ...

    def on_external(self, delivery: ExternalDelivery) -> bool:
        """A terminal failure for one of this extension's sinks; True if the route is this extension's."""
        ...

    def introspection_tables(self) -> Sequence[IntrospectionTable]:
        """Tables this extension adds to the admin API's SQL introspection."""
        ...

    def metric_families(self) -> Iterable[MetricFamily]:
        """Counters and gauges this extension adds to ``GET /metrics`` (called on the event loop per scrape, from
        in-memory state)."""
        ...

    async def aclose(self) -> None: ...


class ExtensionFactory(Protocol):
    def __call__(self, engine: Engine) -> Extension: ...


def load_extension(spec: str, engine: Engine) -> Extension:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"extension {spec!r}: expected 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"extension {spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory: Any = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"extension {spec!r}: {module_name!r} has no attribute {attr!r}")
    extension: Extension = factory(engine)
    return extension

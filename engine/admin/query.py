"""SQL introspection on the admin port: ``POST /query`` (and ``GET /invocations/{id}``, read from the same tables).

Each query runs on a worker thread against a private in-memory SQLite database (the standard library's
``sqlite3``): the tables the query names are copied into it from ONE consistent snapshot of RocksDB (see
:meth:`engine.storage.store.Store.snapshot`), plus the tables extensions add (``sys_subscription``,
``sys_kafka_lag``), read on the event loop. A table is copied when its name appears in the query text as a word.

Read-only and bounded:

* the statement is compiled first against empty tables with an authorizer that allows only reads (SELECT / WITH /
  VALUES; any write, PRAGMA, ATTACH... is refused) and the connection is ``query_only`` before it runs;
* ``admin.query_snapshot_rows_limit`` / ``query_snapshot_bytes_limit`` bound what one query copies (413),
  ``query_result_rows_limit`` what it answers (413: add a LIMIT), ``query_timeout`` how long SQLite may run (400),
  ``query_concurrency_limit`` how many run at once (429 + Retry-After);
* bad SQL answers 400 with SQLite's message.

Answers are JSON whatever the Accept header asks for, except that an Accept header which excludes JSON (e.g. only
``application/vnd.apache.arrow.stream``, Restate's other format) gets 406: ``{"columns": [...], "rows": [{...}]}``
(BLOBs as hex strings, booleans as true/false).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.admin.introspection import ENGINE_TABLES, Budget, Columns, SnapshotTooLargeError, invocation_detail
from engine.errors import EngineError
from engine.extensions import IntrospectionTable
from engine.ids import InvocationId
from engine.storage.store import Store

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

sqlite3.register_converter("BOOLEAN", lambda raw: raw not in (b"0", b""))

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
_PROGRESS_EVERY = 10_000  # SQLite VM instructions between two deadline checks


class QueryError(EngineError):
    """A query the admin API refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryLimits:
    snapshot_rows: int
    snapshot_bytes: int
    result_rows: int
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtensionRows:
    """An extension table's shape and the rows read on the event loop for this query."""

    name: str
    columns: Columns
    rows: list[tuple[Any, ...]]


def referenced(query: str, names: Sequence[str]) -> list[str]:
    """The table names that occur in ``query`` as words (case-insensitive)."""
    return [n for n in names if re.search(rf"(?<![\w$]){re.escape(n)}(?![\w$])", query, re.IGNORECASE)]


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


def _create(conn: sqlite3.Connection, name: str, columns: Columns) -> None:
    cols = ", ".join(f'"{c}" {ty}' for c, ty in columns)
    conn.execute(f'CREATE TABLE "{name}" ({cols})')


def _sql_error(exc: sqlite3.Error) -> QueryError:
    text = str(exc)
    if "not authorized" in text:
        return QueryError(400, "only read-only queries (SELECT, WITH ... SELECT, VALUES) are allowed")
    return QueryError(400, f"invalid query: {text}")


def run_query(store: Store, query: str, extension_rows: Sequence[ExtensionRows], limits: QueryLimits) -> QueryResult:
    """Compile, fill and run one query (blocking: call it on a worker thread)."""
    tables = {t.name: t for t in ENGINE_TABLES}
    wanted = set(referenced(query, [*tables, *(e.name for e in extension_rows)]))
    conn = sqlite3.connect(":memory:", detect_types=sqlite3.PARSE_DECLTYPES)
    try:
        for t in ENGINE_TABLES:
            _create(conn, t.name, t.columns)
        for ext in extension_rows:
            if ext.name not in tables:
                _create(conn, ext.name, ext.columns)
        # 1. Compile against the empty tables: bad SQL and writes are refused before anything is copied.
        conn.set_authorizer(_authorize)
        try:
            conn.execute("EXPLAIN " + query).close()
        except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
            raise QueryError(400, f"invalid query: {exc}") from exc
        except sqlite3.Error as exc:
            raise _sql_error(exc) from exc
        conn.set_authorizer(None)
        # 2. Copy the named tables out of one snapshot.
        budget = Budget(rows=limits.snapshot_rows, bytes=limits.snapshot_bytes)
        engine_wanted = [t for t in ENGINE_TABLES if t.name in wanted]
        if engine_wanted:
            snap = store.snapshot()
            try:
                for t in engine_wanted:
                    _fill(conn, t.name, t.columns, ([row.get(c) for c, _ in t.columns] for row in t.load(snap, budget)))
            finally:
                snap.close()
        for ext in extension_rows:
            if ext.name in wanted and ext.name not in tables:
                for _ in ext.rows:
                    budget.take(ext.name, 0)
                _fill(conn, ext.name, ext.columns, ext.rows)
        # 3. Run it read-only, with a deadline.
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize)
        deadline = time.monotonic() + limits.timeout_s
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, _PROGRESS_EVERY)
        try:
            cursor = conn.execute(query)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(limits.result_rows + 1)
        except sqlite3.OperationalError as exc:
            if time.monotonic() > deadline and "interrupt" in str(exc):
                raise QueryError(
                    400, f"the query ran longer than {limits.timeout_s:g}s (admin.query_timeout) and was stopped"
                ) from exc
            raise _sql_error(exc) from exc
        except sqlite3.Error as exc:
            raise _sql_error(exc) from exc
        if len(rows) > limits.result_rows:
            raise QueryError(
                413,
                f"the query answers more than {limits.result_rows} rows (admin.query_result_rows_limit); "
                "add a LIMIT or a narrower WHERE",
            )
        return QueryResult(columns=columns, rows=rows)
    except SnapshotTooLargeError as exc:
        raise QueryError(413, str(exc)) from exc
    finally:
        conn.close()


def _fill(conn: sqlite3.Connection, name: str, columns: Columns, rows: Any) -> None:
    marks = ", ".join("?" for _ in columns)
    conn.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)


def json_value(value: Any) -> Any:
    """A SQLite value in a JSON answer: BLOBs as hex strings."""
    if isinstance(value, bytes):
        return value.hex()
    return value


def accepts_json(accept: str) -> bool:
    """True unless the Accept header lists media types and none of them is JSON (or a wildcard for it)."""
    if not accept.strip():
        return True
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("application/json", "application/*", "*/*", ""):
            return True
    return False


# ------------------------------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------------------------------


class QueryRoutes:
    """``POST /query`` and ``GET /invocations/{id}``. Owns the worker threads of running queries: the admin app's
    cleanup waits for them before the engine closes RocksDB."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        cfg = engine.config.admin
        self.limits = QueryLimits(
            snapshot_rows=cfg.query_snapshot_rows_limit,
            snapshot_bytes=cfg.query_snapshot_bytes_limit,
            result_rows=cfg.query_result_rows_limit,
            timeout_s=cfg.query_timeout.total_seconds(),
        )
        self._concurrency = cfg.query_concurrency_limit
        self._running: set[asyncio.Future[Any]] = set()

    def add_routes(self, app: web.Application, prefixes: Sequence[str]) -> None:
        for prefix in prefixes:
            app.router.add_post(f"{prefix}/query", self.query)
            app.router.add_get(f"{prefix}/invocations/{{id}}", self.describe_invocation)
        app.on_cleanup.append(self._wait_for_threads)

    async def query(self, request: web.Request) -> web.Response:
        if not accepts_json(request.headers.get("accept", "")):
            return _error(406, "POST /query answers application/json only (Arrow IPC is not supported)")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'expected a JSON body {"query": "SELECT ..."}')
        sql = body.get("query") if isinstance(body, dict) else None
        if not isinstance(sql, str) or not sql.strip():
            return _error(400, 'expected a JSON body {"query": "SELECT ..."}')
        if len(self._running) >= self._concurrency:
            resp = _error(429, f"{self._concurrency} queries are running already; retry shortly")
            resp.headers["retry-after"] = "1"
            return resp
        extension_rows = self._extension_rows(sql)
        try:
            result = await self._in_thread(run_query, self.engine.store, sql, extension_rows, self.limits)
        except QueryError as exc:
            return _error(exc.status, exc.message)
        rows = [{c: json_value(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]
        return web.json_response({"columns": result.columns, "rows": rows})

    async def describe_invocation(self, request: web.Request) -> web.Response:
        """One invocation's ``sys_invocation`` row and its journal (``sys_journal`` rows without ``raw``)."""
        try:
            inv = InvocationId.parse(request.match_info["id"])
        except ValueError as exc:
            return _error(400, f"bad invocation id: {exc}")
        store = self.engine.store

        def read() -> dict[str, Any] | None:
            snap = store.snapshot()
            try:
                return invocation_detail(snap, inv.to_bytes())
            finally:
                snap.close()

        detail = await self._in_thread(read)
        if detail is None:
            return _error(404, f"invocation {inv} not found (unknown, or completed and past its retention)")
        return web.json_response(detail)

    def _extension_rows(self, sql: str) -> list[ExtensionRows]:
        tables: list[IntrospectionTable] = []
        for extension in self.engine.extensions:
            tables.extend(extension.introspection_tables())
        named = set(referenced(sql, [t.name for t in tables]))
        # Every extension table exists in the database (so a query compiles); only the named ones are filled.
        return [ExtensionRows(name=t.name, columns=t.columns, rows=t.rows() if t.name in named else []) for t in tables]

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        return await asyncio.shield(fut)

    async def _wait_for_threads(self, app: web.Application) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)

"""The SDK service that ``benchmarks/kafka_side_by_side.py`` feeds from Kafka, served by hypercorn for both engines.

- ``KafkaSink/<key>/take(event)``: a virtual object (per-key ordering); one state read and one state write. The
  event is the record's JSON value ``{"run": <topic>, "i": <sequence>, "ts": <producer wall clock, ms>}``. The first
  time the handler sees a record it notes ``now - ts`` (produce-to-handler latency); when its body finishes it
  counts the record as completed. Both are kept per ``run`` in this process (a retry or replay of the same record
  is not counted twice).
- ``KafkaSink/<key>/count()``: the key's counter, for the exactly-once check after a run.
- ``Noop.echo``: from ``benchmarks/bench_app.py``, so ``side_by_side.RunningEngine.wait_invocable`` works.

``GET /_bench/stats?run=<topic>`` (answered by a thin ASGI wrapper in front of the SDK app, never by an engine)
returns ``{"seen", "completed", "first_seen_at", "last_completed_at"}`` (wall-clock seconds); add ``&latencies=1``
for ``"latencies": [[i, ms], ...]``. hypercorn runs it with ``workers = 0``: one process, so module state is enough.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import restate
from restate import ObjectContext, ObjectSharedContext

from benchmarks.bench_app import noop

STATS_PATH = "/_bench/stats"


@dataclass(slots=True)
class _RunStats:
    latency_ms: dict[int, float] = field(default_factory=dict)  # first execution only
    completed: set[int] = field(default_factory=set)
    first_seen_at: float | None = None
    last_completed_at: float | None = None


_runs: dict[str, _RunStats] = {}

sink = restate.VirtualObject("KafkaSink")


@sink.handler()
async def take(ctx: ObjectContext, event: dict[str, Any]) -> None:
    now = time.time()
    stats = _runs.setdefault(str(event["run"]), _RunStats())
    i = int(event["i"])
    if i not in stats.latency_ms:
        stats.latency_ms[i] = now * 1000 - float(event["ts"])
        if stats.first_seen_at is None:
            stats.first_seen_at = now
    n = await ctx.get("n", type_hint=int) or 0
    ctx.set("n", n + 1)
    if i not in stats.completed:
        stats.completed.add(i)
        stats.last_completed_at = time.time()


@sink.handler(kind="shared")
async def count(ctx: ObjectSharedContext) -> int:
    return await ctx.get("n", type_hint=int) or 0


sdk_app = restate.app(services=[noop, sink])


def _stats(run: str, *, latencies: bool) -> dict[str, Any]:
    stats = _runs.get(run, _RunStats())
    out: dict[str, Any] = {
        "seen": len(stats.latency_ms),
        "completed": len(stats.completed),
        "first_seen_at": stats.first_seen_at,
        "last_completed_at": stats.last_completed_at,
    }
    if latencies:
        out["latencies"] = [[i, round(ms, 3)] for i, ms in stats.latency_ms.items()]
    return out


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == STATS_PATH:
        query = parse_qs(scope.get("query_string", b"").decode())
        body = json.dumps(_stats(query.get("run", [""])[0], latencies="latencies" in query)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await sdk_app(scope, receive, send)

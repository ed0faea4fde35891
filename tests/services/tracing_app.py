"""SDK services that show what trace context each attempt receives (official restate-sdk).

The ``traceparent`` of an attempt is an HTTP header of that attempt (``ctx.request().attempt_headers``); the
ingress request's or Kafka record's own headers are the invocation's input headers (``ctx.request().headers``).

- ``Traced.echo(key)``: journals the first attempt's ``traceparent`` in a ``ctx.run``, fails its first pass through
  the handler (a retried error), and answers ``{"first", "last", "input"}`` from a later attempt.
- ``Traced.call_child(key)``: calls ``echo`` and answers the child's answer with this attempt's ``traceparent``.
- ``TraceLog/<key>/record(body)``: keeps each Kafka record's input and attempt ``traceparent`` (``seen`` reads them).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import restate
from restate import Context, ObjectContext, ObjectSharedContext

traced = restate.Service("Traced")

# Passes through ``echo`` per key, in this process (the in-process app shares it with the test).
PASSES: defaultdict[str, int] = defaultdict(int)


def _same(value: str) -> str:
    return value


def _attempt_traceparent(ctx: Context | ObjectContext) -> str:
    return str(ctx.request().attempt_headers.get("traceparent", ""))


@traced.handler()
async def echo(ctx: Context, key: str) -> dict[str, str]:
    first = await ctx.run_typed("first", _same, restate.RunOptions(), _attempt_traceparent(ctx))
    PASSES[key] += 1
    if PASSES[key] == 1:
        raise RuntimeError(f"first pass for {key} fails on purpose")
    return {
        "first": first,
        "last": _attempt_traceparent(ctx),
        "input": str(ctx.request().headers.get("traceparent", "")),
    }


@traced.handler()
async def call_child(ctx: Context, key: str) -> dict[str, Any]:
    child = await ctx.service_call(echo, arg=key)
    return {"parent": _attempt_traceparent(ctx), "child": child}


trace_log = restate.VirtualObject("TraceLog")


@trace_log.handler()
async def record(ctx: ObjectContext, body: Any) -> None:
    seen: list[dict[str, str]] = (await ctx.get("seen", type_hint=list[dict[str, str]])) or []
    seen.append({"input": str(ctx.request().headers.get("traceparent", "")), "attempt": _attempt_traceparent(ctx)})
    ctx.set("seen", seen)


@trace_log.handler(kind="shared")
async def seen(ctx: ObjectSharedContext) -> list[dict[str, str]]:
    return (await ctx.get("seen", type_hint=list[dict[str, str]])) or []


app = restate.app(services=[traced, trace_log])

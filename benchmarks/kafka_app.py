"""The benchmark's SDK service: Sink/<key>/take(event) records produce-to-handler latency per key."""

from __future__ import annotations

import time
from typing import Any

import restate
from restate import ObjectContext, ObjectSharedContext

sink = restate.VirtualObject("BenchSink")


@sink.handler()
async def take(ctx: ObjectContext, event: dict[str, Any]) -> None:
    # Wall-clock latency is what the benchmark measures; on a replay the stored value is kept.
    latency = await ctx.run_typed("latency", lambda: time.time() * 1000 - float(event["ts"]))
    lat: list[float] = (await ctx.get("lat", type_hint=list[float])) or []
    lat.append(latency)
    ctx.set("lat", lat)


@sink.handler(kind="shared")
async def latencies(ctx: ObjectSharedContext) -> list[float]:
    return (await ctx.get("lat", type_hint=list[float])) or []


app = restate.app(services=[sink])

"""SDK services that Kafka subscriptions invoke in the tests (official restate-sdk)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import restate
from restate import Context, ObjectContext, ObjectSharedContext, TerminalError

# KafkaCounter/<key>/record(seq): counts records per key and keeps their sequence numbers in arrival order.
kafka_counter = restate.VirtualObject("KafkaCounter")


@kafka_counter.handler()
async def record(ctx: ObjectContext, seq: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    seqs: list[int] = (await ctx.get("seqs", type_hint=list[int])) or []
    seqs.append(seq)
    ctx.set("seqs", seqs)
    ctx.set("count", count + 1)
    return count + 1


@kafka_counter.handler(kind="shared")
async def state(ctx: ObjectSharedContext) -> dict[str, Any]:
    return {
        "count": (await ctx.get("count", type_hint=int)) or 0,
        "seqs": (await ctx.get("seqs", type_hint=list[int])) or [],
    }


# Inspector/<key>/capture(body): keeps what a handler sees of a Kafka record (headers, body, key).
inspector = restate.VirtualObject("Inspector")


@inspector.handler()
async def capture(ctx: ObjectContext, body: Any) -> None:
    seen: list[dict[str, Any]] = (await ctx.get("seen", type_hint=list[dict[str, Any]])) or []
    seen.append({"headers": dict(ctx.request().headers), "body": body, "key": ctx.key()})
    ctx.set("seen", seen)


@inspector.handler(kind="shared")
async def seen(ctx: ObjectSharedContext) -> list[dict[str, Any]]:
    return (await ctx.get("seen", type_hint=list[dict[str, Any]])) or []


# Judge.check(event): a plain service whose invocation fails terminally when the event says so.
judge = restate.Service("Judge")


@judge.handler()
async def check(ctx: Context, event: dict[str, Any]) -> str:
    if event.get("fail"):
        raise TerminalError(f"event {event.get('id')} rejected", status_code=422)
    await ctx.object_call(record, key="judged", arg=int(event.get("id", 0)))
    return "ok"


# Relay.forward(event): a plain service that takes a random short time, then records (partition, seq) on
# Seen/<partition>. With capstan.ordering=partition the records of one partition arrive in offset order.
relay = restate.Service("Relay")


async def _jitter() -> None:
    await asyncio.sleep(random.random() * 0.01)


@relay.handler()
async def forward(ctx: Context, event: dict[str, Any]) -> None:
    await ctx.run_typed("jitter", _jitter)
    partition = ctx.request().headers.get("kafka.partition", "?")
    await ctx.object_call(record, key=f"partition-{partition}", arg=int(event["seq"]))


SERVICES = [kafka_counter, inspector, judge, relay]
app = restate.app(services=SERVICES)

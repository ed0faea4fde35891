"""SDK services for the chaos tests (official restate-sdk 1.3): a mixed workload whose every effect can be checked
against a model after any number of SIGKILLs of the engine, of this deployment, or of the Kafka broker.

Serve it with ``python -m hypercorn tests.services.chaos_app:app`` (see :mod:`tests.services.fixtures`), with
``CHAOS_EFFECTS_FILE`` naming the file that ``ctx.run`` side effects are appended to.

- ``ChaosCounter`` (virtual object): ``add(n) -> int``, shared ``get``. Idempotency-keyed calls from the tests, and
  every other service here, count their effects on it (state in the engine, not in this process).
- ``Effects`` (service): ``steps({"n", "sleep_ms"?}) -> [nonce, ...]``: ``n`` sequential ``ctx.run`` steps. Each
  execution of a step appends one JSON line ``{"inv", "step", "nonce", "t", "pid"}`` to ``CHAOS_EFFECTS_FILE``
  (``t`` = ``time.monotonic()``, one clock for every process of the machine), waits ``sleep_ms`` (a kill landing
  there cuts the step between its effect and its journaling) and returns its fresh nonce; the handler returns the
  nonces the journal kept. So the file says how often each step ran, and the result which run was journaled.
- ``ChaosSleeper`` (service): ``nap({"ms", "key"})``: a durable sleep, then ``ChaosCounter/<key>/add(1)``.
- ``ChaosBox`` (virtual object): ``put(s)``, shared ``ids()``: where ``ChaosWaiter`` publishes awakeable ids.
- ``ChaosWaiter`` (virtual object): ``wait()``: an awakeable (id put in ``ChaosBox/<key>``), then
  ``ChaosCounter/awk-<key>/add(1)``; returns ``"got <value>"``.
- ``ChaosFlow`` (workflow): ``run(x)``: one effect step (as ``Effects``, step 0), ``ChaosCounter/flow-<id>/add(1)``,
  returns ``"<x>:<the step's journaled nonce>"``.
- ``ChaosKafka`` (virtual object): ``record(seq)`` appends the Kafka record's sequence number to ``seqs`` (arrival
  order); shared ``state`` -> ``{"count", "seqs"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import restate
from restate import Context, ObjectContext, ObjectSharedContext, WorkflowContext

EFFECTS_ENV = "CHAOS_EFFECTS_FILE"


def record_effect(invocation_id: str, step: int) -> str:
    """The side effect of one step execution: one line appended to the effects file; returns a fresh nonce."""
    nonce = uuid.uuid4().hex
    path = os.environ.get(EFFECTS_ENV)
    if path:
        line = json.dumps(
            {"inv": invocation_id, "step": step, "nonce": nonce, "t": time.monotonic(), "pid": os.getpid()}
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())  # one write with O_APPEND: lines never interleave
        finally:
            os.close(fd)
    return nonce


# --------------------------------------------------------------------------------------------------------------
# ChaosCounter
# --------------------------------------------------------------------------------------------------------------

chaos_counter = restate.VirtualObject("ChaosCounter")


@chaos_counter.handler(name="add")
async def counter_add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += n
    ctx.set("count", count)
    return count


@chaos_counter.handler(name="get", kind="shared")
async def counter_get(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


# --------------------------------------------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------------------------------------------

effects = restate.Service("Effects")


@effects.handler(name="steps")
async def effects_steps(ctx: Context, req: dict[str, Any]) -> list[str]:
    inv = ctx.request().id
    pause = int(req.get("sleep_ms", 0)) / 1000

    async def step(index: int) -> str:
        nonce = record_effect(inv, index)
        if pause:
            # between the side effect and its journaling: a kill landing here makes the step run again
            await asyncio.sleep(pause)
        return nonce

    nonces = []
    for index in range(int(req["n"])):
        nonces.append(await ctx.run_typed(f"step-{index}", step, restate.RunOptions(), index))
    return nonces


# --------------------------------------------------------------------------------------------------------------
# ChaosSleeper, ChaosBox, ChaosWaiter
# --------------------------------------------------------------------------------------------------------------

chaos_sleeper = restate.Service("ChaosSleeper")


@chaos_sleeper.handler(name="nap")
async def sleeper_nap(ctx: Context, req: dict[str, Any]) -> str:
    await ctx.sleep(timedelta(milliseconds=int(req["ms"])))
    await ctx.object_call(counter_add, key=str(req["key"]), arg=1)
    return "rested"


chaos_box = restate.VirtualObject("ChaosBox")


@chaos_box.handler(name="put")
async def box_put(ctx: ObjectContext, item: str) -> None:
    items: list[str] = (await ctx.get("ids", type_hint=list[str])) or []
    items.append(item)
    ctx.set("ids", items)


@chaos_box.handler(name="ids", kind="shared")
async def box_ids(ctx: ObjectSharedContext) -> list[str]:
    return (await ctx.get("ids", type_hint=list[str])) or []


chaos_waiter = restate.VirtualObject("ChaosWaiter")


@chaos_waiter.handler(name="wait")
async def waiter_wait(ctx: ObjectContext) -> str:
    awakeable_id, future = ctx.awakeable(type_hint=str)
    ctx.object_send(box_put, key=ctx.key(), arg=awakeable_id)
    value = await future
    await ctx.object_call(counter_add, key=f"awk-{ctx.key()}", arg=1)
    return f"got {value}"


# --------------------------------------------------------------------------------------------------------------
# ChaosFlow
# --------------------------------------------------------------------------------------------------------------

chaos_flow = restate.Workflow("ChaosFlow")


@chaos_flow.main(name="run")
async def flow_run(ctx: WorkflowContext, x: str) -> str:
    inv = ctx.request().id

    async def step() -> str:
        return record_effect(inv, 0)

    nonce = await ctx.run_typed("step-0", step, restate.RunOptions())
    await ctx.object_call(counter_add, key=f"flow-{ctx.key()}", arg=1)
    return f"{x}:{nonce}"


# --------------------------------------------------------------------------------------------------------------
# ChaosKafka
# --------------------------------------------------------------------------------------------------------------

chaos_kafka = restate.VirtualObject("ChaosKafka")


@chaos_kafka.handler(name="record")
async def kafka_record(ctx: ObjectContext, seq: int) -> None:
    seqs: list[int] = (await ctx.get("seqs", type_hint=list[int])) or []
    seqs.append(seq)
    ctx.set("seqs", seqs)


@chaos_kafka.handler(name="state", kind="shared")
async def kafka_state(ctx: ObjectSharedContext) -> dict[str, Any]:
    seqs: list[int] = (await ctx.get("seqs", type_hint=list[int])) or []
    return {"count": len(seqs), "seqs": seqs}


SERVICES: list[restate.Service | restate.VirtualObject | restate.Workflow] = [
    chaos_counter, effects, chaos_sleeper, chaos_box, chaos_waiter, chaos_flow, chaos_kafka,
]  # fmt: skip

app = restate.app(services=SERVICES)

"""The second SDK deployment of the test suite (official Restate Python SDK, restate-sdk 1.3): timers,
service-to-service calls, awakeables, workflows, sagas. Independent of :mod:`tests.services.app` (no service name is
shared), so either app can be served or mounted on its own.

Serve it with ``python -m hypercorn tests.services.app3:app`` (see :mod:`tests.services.fixtures3`).

- ``Sleeper`` (service): durable timers. ``nap(ms)`` -> ``"rested"``; ``long()`` sleeps one hour;
  ``nap_count({"ms", "key"})`` naps, then adds 1 to ``Counter2/<key>`` (an effect the crash tests count).
- ``Counter2`` (virtual object): ``add(n) -> int``, ``append(i)`` to the ``seen`` list, shared ``get``/``seen``,
  ``hold(ms)`` (keeps the key's lock by sleeping), ``boom(code)`` (TerminalError with that code).
- ``Caller`` (service): calls, one-way sends, delayed sends, ordering, idempotency keys on calls, call chains.
- ``WaiterBox`` (virtual object): a mailbox of strings: ``put(s)``, shared ``ids()``. Handlers publish awakeable ids
  and child invocation ids there so that tests can read them through the ingress.
- ``Waiter`` (virtual object): ``wait()`` awaits an awakeable (id published to ``WaiterBox/<key>``), then adds 1 to
  ``Counter2/waited-<key>``; ``wait_twice()`` awaits two awakeables.
- ``Resolver`` (service): completes awakeables from code (``CompleteAwakeable`` commands).
- ``Flow`` (workflow): ``run(x)`` awaits the durable promise ``p``; shared ``signal``, ``signal_twice``, ``fail``,
  ``peek``, ``status``.
- ``Saga`` (service): ``book(x)`` reserves, sleeps one hour, and compensates when cancelled.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import restate
from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    TerminalError,
    WorkflowContext,
    WorkflowSharedContext,
)

# --------------------------------------------------------------------------------------------------------------
# Counter2
# --------------------------------------------------------------------------------------------------------------

counter2 = restate.VirtualObject("Counter2")


@counter2.handler(name="add")
async def counter2_add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += n
    ctx.set("count", count)
    return count


@counter2.handler(name="append")
async def counter2_append(ctx: ObjectContext, i: int) -> None:
    seen: list[int] = (await ctx.get("seen", type_hint=list[int])) or []
    seen.append(i)
    ctx.set("seen", seen)


@counter2.handler(name="get", kind="shared")
async def counter2_get(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


@counter2.handler(name="seen", kind="shared")
async def counter2_seen(ctx: ObjectSharedContext) -> list[int]:
    return (await ctx.get("seen", type_hint=list[int])) or []


@counter2.handler(name="hold")
async def counter2_hold(ctx: ObjectContext, ms: int) -> str:
    """Holds the key's lock for ``ms`` milliseconds (a durable sleep inside an exclusive handler)."""
    await ctx.sleep(timedelta(milliseconds=ms))
    return "released"


@counter2.handler(name="boom")
async def counter2_boom(ctx: ObjectContext, code: int) -> None:
    raise TerminalError("boom", status_code=code)


# --------------------------------------------------------------------------------------------------------------
# WaiterBox
# --------------------------------------------------------------------------------------------------------------

waiter_box = restate.VirtualObject("WaiterBox")


@waiter_box.handler(name="put")
async def box_put(ctx: ObjectContext, item: str) -> None:
    items: list[str] = (await ctx.get("ids", type_hint=list[str])) or []
    items.append(item)
    ctx.set("ids", items)


@waiter_box.handler(name="ids", kind="shared")
async def box_ids(ctx: ObjectSharedContext) -> list[str]:
    return (await ctx.get("ids", type_hint=list[str])) or []


# --------------------------------------------------------------------------------------------------------------
# Sleeper
# --------------------------------------------------------------------------------------------------------------

sleeper = restate.Service("Sleeper")


@sleeper.handler(name="nap")
async def sleeper_nap(ctx: Context, ms: int) -> str:
    await ctx.sleep(timedelta(milliseconds=ms))
    return "rested"


@sleeper.handler(name="long")
async def sleeper_long(ctx: Context) -> str:
    await ctx.sleep(timedelta(hours=1))
    return "woke up"


@sleeper.handler(name="nap_count")
async def sleeper_nap_count(ctx: Context, req: dict[str, Any]) -> str:
    """``{"ms": int, "key": str}``: naps, then adds 1 to ``Counter2/<key>``."""
    await ctx.sleep(timedelta(milliseconds=int(req["ms"])))
    await ctx.object_call(counter2_add, key=str(req["key"]), arg=1)
    return "rested"


# --------------------------------------------------------------------------------------------------------------
# Caller
# --------------------------------------------------------------------------------------------------------------

caller = restate.Service("Caller")


@caller.handler()
async def call_add(ctx: Context, key: str) -> int:
    """Calls ``Counter2/<key>/add(1)`` and returns its result."""
    return await ctx.object_call(counter2_add, key=key, arg=1)


@caller.handler()
async def send_add(ctx: Context, key: str) -> str:
    """One-way send of ``Counter2/<key>/add(1)``; returns the child's invocation id."""
    handle = ctx.object_send(counter2_add, key=key, arg=1)
    return await handle.invocation_id()


@caller.handler()
async def send_delayed(ctx: Context, key: str) -> str:
    """One-way send of ``Counter2/<key>/add(1)`` due in one second; returns the child's invocation id."""
    handle = ctx.object_send(counter2_add, key=key, arg=1, send_delay=timedelta(seconds=1))
    return await handle.invocation_id()


@caller.handler()
async def ordered(ctx: Context, key: str) -> None:
    """Issues ``Counter2/<key>/append(i)`` for i = 0..9, alternating one-way send (even i) and call (odd i), all
    before awaiting any of the calls: the engine must enqueue them on the key in issue order."""
    calls = []
    for i in range(10):
        if i % 2 == 0:
            ctx.object_send(counter2_append, key=key, arg=i)
        else:
            calls.append(ctx.object_call(counter2_append, key=key, arg=i))
    for call in calls:
        await call


@caller.handler()
async def call_long(ctx: Context, key: str) -> str:
    """Calls ``Sleeper/long`` (one hour), publishes the child's id to ``WaiterBox/<key>``, awaits the child."""
    child = ctx.service_call(sleeper_long, arg=None)
    ctx.object_send(box_put, key=key, arg=await child.invocation_id())
    return await child


@caller.handler()
async def call_with_key(ctx: Context, key: str) -> list[int]:
    """Calls ``Counter2/<key>/add(1)`` twice with the same idempotency key: the second is deduplicated."""
    first = await ctx.object_call(counter2_add, key=key, arg=1, idempotency_key=f"idem-{key}")
    second = await ctx.object_call(counter2_add, key=key, arg=1, idempotency_key=f"idem-{key}")
    return [first, second]


@caller.handler()
async def call_boom(ctx: Context, code: int) -> None:
    """Calls ``Counter2/boom/boom(code)``; the child's TerminalError propagates (uncaught)."""
    await ctx.object_call(counter2_boom, key="boom", arg=code)


@caller.handler()
async def call_nap_count(ctx: Context, key: str) -> str:
    """Calls ``Sleeper/nap_count`` (1.5 s, counting on ``Counter2/child-<key>``), then adds 1 to
    ``Counter2/parent-<key>``."""
    result = await ctx.service_call(sleeper_nap_count, arg={"ms": 1500, "key": f"child-{key}"})
    await ctx.object_call(counter2_add, key=f"parent-{key}", arg=1)
    return result


# --------------------------------------------------------------------------------------------------------------
# Waiter, Resolver
# --------------------------------------------------------------------------------------------------------------

waiter = restate.VirtualObject("Waiter")


@waiter.handler()
async def wait(ctx: ObjectContext) -> str:
    """Awaits an awakeable whose id is put in ``WaiterBox/<key>``; then adds 1 to ``Counter2/waited-<key>``.
    A rejection propagates (uncaught TerminalError: the invocation fails with the rejection's code)."""
    awakeable_id, future = ctx.awakeable(type_hint=str)
    ctx.object_send(box_put, key=ctx.key(), arg=awakeable_id)
    value = await future
    await ctx.object_call(counter2_add, key=f"waited-{ctx.key()}", arg=1)
    return f"got {value}"


@waiter.handler()
async def wait_twice(ctx: ObjectContext) -> str:
    """Two awakeables, ids put in ``WaiterBox/<key>`` in order; returns ``"<first>|<second>"``."""
    first_id, first = ctx.awakeable(type_hint=str)
    second_id, second = ctx.awakeable(type_hint=str)
    ctx.object_send(box_put, key=ctx.key(), arg=first_id)
    ctx.object_send(box_put, key=ctx.key(), arg=second_id)
    a = await first
    b = await second
    return f"{a}|{b}"


resolver = restate.Service("Resolver")


@resolver.handler(name="resolve")
async def resolver_resolve(ctx: Context, req: dict[str, str]) -> None:
    """``{"id", "value"}``: resolve an awakeable from code."""
    ctx.resolve_awakeable(req["id"], req["value"])


@resolver.handler(name="reject")
async def resolver_reject(ctx: Context, req: dict[str, Any]) -> None:
    """``{"id", "message", "code"?}``: reject an awakeable from code."""
    ctx.reject_awakeable(str(req["id"]), str(req["message"]), int(req.get("code", 500)))


# --------------------------------------------------------------------------------------------------------------
# Flow (workflow)
# --------------------------------------------------------------------------------------------------------------

flow = restate.Workflow("Flow")


@flow.main(name="run")
async def flow_run(ctx: WorkflowContext, x: str) -> str:
    """Sets ``stage`` to ``waiting``, awaits promise ``p``, sets ``stage`` to ``done``, adds 1 to
    ``Counter2/flow-<id>`` and returns ``"<x>:<value>"``. A rejected promise fails the run (uncaught)."""
    ctx.set("stage", "waiting")
    value = await ctx.promise("p", type_hint=str).value()
    ctx.set("stage", "done")
    await ctx.object_call(counter2_add, key=f"flow-{ctx.key()}", arg=1)
    return f"{x}:{value}"


@flow.handler(name="signal")
async def flow_signal(ctx: WorkflowSharedContext, v: str) -> None:
    """Resolves ``p`` (a second completion fails with the engine's 409, uncaught)."""
    await ctx.promise("p", type_hint=str).resolve(v)


@flow.handler(name="signal_twice")
async def flow_signal_twice(ctx: WorkflowSharedContext, v: str) -> int:
    """Resolves ``p`` with ``v``, then again; returns the status code of the second completion's failure (0 if none)."""
    promise = ctx.promise("p", type_hint=str)
    await promise.resolve(v)
    try:
        await promise.resolve(v + "-again")
    except TerminalError as exc:
        return exc.status_code
    return 0


@flow.handler(name="fail")
async def flow_fail(ctx: WorkflowSharedContext, message: str) -> None:
    """Rejects ``p`` (code 500)."""
    await ctx.promise("p", type_hint=str).reject(message)


@flow.handler(name="peek")
async def flow_peek(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.promise("p", type_hint=str).peek()


@flow.handler(name="status")
async def flow_status(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.get("stage", type_hint=str)


# --------------------------------------------------------------------------------------------------------------
# Saga
# --------------------------------------------------------------------------------------------------------------

saga = restate.Service("Saga")

# Side effects of Saga's ctx.run steps, local to the process that runs the handlers (only meaningful in process).
RESERVED: list[str] = []
RELEASED: list[str] = []


def _reserve(x: str) -> None:
    RESERVED.append(x)


def _release(x: str) -> None:
    RELEASED.append(x)


@saga.handler()
async def book(ctx: Context, x: str) -> str:
    """Reserve (ctx.run), announce it on ``Counter2/reserved-<x>``, sleep one hour. On a TerminalError (how a
    cancellation arrives: 409 "cancelled") compensate: release (ctx.run) and add 1 to ``Counter2/saga-<x>``, then
    re-raise. A kill runs no compensation."""
    await ctx.run_typed("reserve", _reserve, restate.RunOptions(), x)
    ctx.object_send(counter2_add, key=f"reserved-{x}", arg=1)
    try:
        await ctx.sleep(timedelta(hours=1))
    except TerminalError:
        await ctx.run_typed("release", _release, restate.RunOptions(), x)
        await ctx.object_call(counter2_add, key=f"saga-{x}", arg=1)
        raise
    return f"booked {x}"


# --------------------------------------------------------------------------------------------------------------
# ShortFlow: a workflow whose completion is retained for 1 s only (state and promises go with it)
# Attacher: the AttachInvocation command from code
# --------------------------------------------------------------------------------------------------------------

short_flow = restate.Workflow("ShortFlow")


@short_flow.main(name="run", workflow_retention=timedelta(seconds=1))
async def short_run(ctx: WorkflowContext, x: str) -> str:
    ctx.set("v", x)
    return x


@short_flow.handler(name="get")
async def short_get(ctx: WorkflowSharedContext) -> str | None:
    return await ctx.get("v", type_hint=str)


attacher = restate.Service("Attacher")


@attacher.handler(name="attach")
async def attach(ctx: Context, invocation_id: str) -> str:
    return await ctx.attach_invocation(invocation_id, type_hint=str)


SERVICES: list[restate.Service | restate.VirtualObject | restate.Workflow] = [
    counter2, waiter_box, sleeper, caller, waiter, resolver, flow, saga, short_flow, attacher,
]  # fmt: skip
SERVICE_NAMES = [
    "Counter2", "WaiterBox", "Sleeper", "Caller", "Waiter", "Resolver", "Flow", "Saga", "ShortFlow", "Attacher",
]  # fmt: skip

app = restate.app(services=SERVICES)

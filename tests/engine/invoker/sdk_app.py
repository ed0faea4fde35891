"""A tiny restate-sdk deployment for the transport and discovery tests.

Served in-process (``AsgiTransport``) and by hypercorn over HTTP/1.1
(``python -m hypercorn tests.engine.invoker.sdk_app:app``). Same services and behaviour as the
transcripts' deployment, so the recorded bytes (``tests/golden``) replay here.
"""

from __future__ import annotations

import restate

greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: restate.Context, name: str) -> str:
    return f"Hello {name}!"


steps = restate.Service("Steps")


async def _append(acc: str, n: int) -> str:
    return f"{acc}-{n}"


@steps.handler()
async def three(ctx: restate.Context, value: str) -> str:
    value = await ctx.run_typed("one", _append, restate.RunOptions(), acc=value, n=1)
    value = await ctx.run_typed("two", _append, restate.RunOptions(), acc=value, n=2)
    value = await ctx.run_typed("three", _append, restate.RunOptions(), acc=value, n=3)
    return value


counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: restate.ObjectContext, delta: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += delta
    ctx.set("count", count)
    return count


@counter.handler(kind="shared")
async def get(ctx: restate.ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


app = restate.app([greeter, steps, counter])

"""The SDK service that ``benchmarks/side_by_side.py`` drives, written with the official Restate Python SDK.

The same module is served by hypercorn for both engines (``python -m hypercorn benchmarks.bench_app:app``) and is
mounted in-process for Capstan's ASGI row (``capstan serve --app benchmarks.bench_app:app``).

- ``Noop.echo(x) -> x``: the cost of one invocation with an empty journal.
- ``Counter.add(n)``: a virtual object; one state read and one state write per call (the load spreads over keys).
- ``Steps.one/three/nine(x)``: 1, 3 or 9 sequential ``ctx.run_typed`` steps, each journaled before the next.
"""

from __future__ import annotations

import restate
from restate import Context, ObjectContext

noop = restate.Service("Noop")


@noop.handler()
async def echo(ctx: Context, x: str) -> str:
    return x


counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += n
    ctx.set("count", count)
    return count


steps = restate.Service("Steps")


def _next_step(previous: str, index: int) -> str:
    return f"{previous}-{index}"


async def _run_steps(ctx: Context, x: str, count: int) -> str:
    value = x
    for index in range(1, count + 1):
        value = await ctx.run_typed(f"step-{index}", _next_step, restate.RunOptions(), value, index)
    return value


@steps.handler()
async def one(ctx: Context, x: str) -> str:
    return await _run_steps(ctx, x, 1)


@steps.handler()
async def three(ctx: Context, x: str) -> str:
    return await _run_steps(ctx, x, 3)


@steps.handler()
async def nine(ctx: Context, x: str) -> str:
    return await _run_steps(ctx, x, 9)


app = restate.app(services=[noop, counter, steps])

"""SDK deployments used by the test suite, written with the official Restate Python SDK (restate-sdk 1.3).

Serve it with ``python -m hypercorn tests.services.app:app`` (see :mod:`tests.services.fixtures`) and register
the URL with Capstan. Each service pins one engine behaviour:

- ``Greeter``: a plain request/response call (``greet``).
- ``Counter``: virtual-object state and the exclusive/shared split; ``add_logged`` keeps the order in which
  exclusive calls ran in the ``log`` state list.
- ``Steps``: 1, 3 or 9 sequential ``ctx.run`` steps (journal length and replay).
- ``Boom``: a ``TerminalError`` with a custom status code (final, never retried).
- ``Flaky``: plain exceptions (retried); ``fail_twice`` succeeds on the third attempt.
- ``StateOps``: set / clear / clear_all / state_keys.
- ``Slow``: a ``ctx.run`` that never finishes (attempt timeouts, cancellation, kill).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta

import restate
from restate import Context, ObjectContext, ObjectSharedContext, TerminalError

# --------------------------------------------------------------------------------------------------------------
# Greeter
# --------------------------------------------------------------------------------------------------------------

greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


# --------------------------------------------------------------------------------------------------------------
# Counter
# --------------------------------------------------------------------------------------------------------------

counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += n
    ctx.set("count", count)
    return count


@counter.handler()
async def add_logged(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int)) or 0
    count += n
    ctx.set("count", count)
    log: list[int] = (await ctx.get("log", type_hint=list[int])) or []
    log.append(n)
    ctx.set("log", log)
    return count


@counter.handler()
async def reset(ctx: ObjectContext) -> None:
    ctx.clear("count")


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    return (await ctx.get("count", type_hint=int)) or 0


async def _pause() -> None:
    await asyncio.sleep(0.5)


@counter.handler()
async def add_slow(ctx: ObjectContext, n: int) -> int:
    """Adds, then holds the key's lock for 0.5 s inside a ctx.run (shared handlers must not wait for it)."""
    count = (await ctx.get("count", type_hint=int)) or 0
    ctx.set("count", count + n)
    await ctx.run_typed("pause", _pause)
    return count + n


# --------------------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------------------

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
    """``x`` -> ``x-1``."""
    return await _run_steps(ctx, x, 1)


@steps.handler()
async def three(ctx: Context, x: str) -> str:
    """``x`` -> ``x-1-2-3``."""
    return await _run_steps(ctx, x, 3)


@steps.handler()
async def nine(ctx: Context, x: str) -> str:
    """``x`` -> ``x-1-2-...-9``."""
    return await _run_steps(ctx, x, 9)


# --------------------------------------------------------------------------------------------------------------
# Boom
# --------------------------------------------------------------------------------------------------------------

boom = restate.Service("Boom")


@boom.handler()
async def teapot(ctx: Context) -> None:
    raise TerminalError("I'm a teapot", status_code=418)


# --------------------------------------------------------------------------------------------------------------
# Flaky
# --------------------------------------------------------------------------------------------------------------

flaky = restate.Service("Flaky")

# Attempts per ``key``, local to this deployment process (which lives as long as the test using it).
ATTEMPTS: defaultdict[str, int] = defaultdict(int)


class FlakyError(Exception):
    """A plain (retriable) failure."""


@flaky.handler()
async def fail_twice(ctx: Context, key: str) -> str:
    """Fails on the first two attempts for ``key``; answers ``"ok after 3 attempts"`` on the third."""
    ATTEMPTS[key] += 1
    attempt = ATTEMPTS[key]
    if attempt <= 2:
        raise FlakyError(f"attempt {attempt} for {key} fails on purpose")
    return f"ok after {attempt} attempts"


@flaky.handler()
async def always_fails(ctx: Context) -> None:
    raise ValueError("always fails")


# --------------------------------------------------------------------------------------------------------------
# StateOps
# --------------------------------------------------------------------------------------------------------------

state_ops = restate.VirtualObject("StateOps")


@state_ops.handler(name="set")
async def set_(ctx: ObjectContext, kv: dict[str, str]) -> None:
    for key, value in kv.items():
        ctx.set(key, value)


@state_ops.handler(name="clear")
async def clear(ctx: ObjectContext, name: str) -> None:
    ctx.clear(name)


@state_ops.handler(name="clear_all")
async def clear_all(ctx: ObjectContext) -> None:
    ctx.clear_all()


@state_ops.handler(kind="shared")
async def get_all(ctx: ObjectSharedContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in sorted(await ctx.state_keys()):
        value = await ctx.get(key, type_hint=str)
        if value is not None:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# Slow
# --------------------------------------------------------------------------------------------------------------

slow = restate.Service("Slow")


async def _sleep_forever() -> None:
    await asyncio.sleep(3600)


@slow.handler()
async def hang(ctx: Context) -> None:
    await ctx.run_typed("hang", _sleep_forever)


# --------------------------------------------------------------------------------------------------------------
# Service options declared in the manifest: retry policy, idempotency retention, lazy state, private ingress
# --------------------------------------------------------------------------------------------------------------

limited = restate.Service(
    "Limited",
    invocation_retry_policy=restate.InvocationRetryPolicy(
        initial_interval=timedelta(milliseconds=10), max_attempts=2, on_max_attempts="pause"
    ),
)


@limited.handler(name="always_fails")
async def limited_always_fails(ctx: Context) -> None:
    raise ValueError("Limited.always_fails fails on purpose")


@limited.handler(invocation_retry_policy=restate.InvocationRetryPolicy(max_attempts=4, on_max_attempts="kill"))
async def killed_after_four(ctx: Context) -> None:
    raise ValueError("Limited.killed_after_four fails on purpose")


short_memory = restate.VirtualObject("ShortMemory", idempotency_retention=timedelta(seconds=1))


@short_memory.handler()
async def bump(ctx: ObjectContext) -> int:
    count = ((await ctx.get("count", type_hint=int)) or 0) + 1
    ctx.set("count", count)
    return count


lazy = restate.VirtualObject("LazyStore", enable_lazy_state=True)


@lazy.handler(name="set")
async def lazy_set(ctx: ObjectContext, kv: dict[str, str]) -> None:
    for k, v in kv.items():
        ctx.set(k, v)


@lazy.handler()
async def take(ctx: ObjectContext, name: str) -> str | None:
    """Lazy get, then clear: reads go to the engine (GetLazyState + notification)."""
    value = await ctx.get(name, type_hint=str)
    ctx.clear(name)
    return value


@lazy.handler(kind="shared")
async def keys(ctx: ObjectSharedContext) -> list[str]:
    return sorted(await ctx.state_keys())


hidden = restate.Service("Hidden", ingress_private=True)


@hidden.handler()
async def secret(ctx: Context) -> str:
    return "only callable from other services"


SERVICES: list[restate.Service | restate.VirtualObject] = [
    greeter, counter, steps, boom, flaky, state_ops, slow, limited, short_memory, lazy, hidden,
]  # fmt: skip
SERVICE_NAMES = [
    "Greeter", "Counter", "Steps", "Boom", "Flaky", "StateOps", "Slow", "Limited", "ShortMemory", "LazyStore", "Hidden",
]  # fmt: skip

app = restate.app(services=SERVICES)

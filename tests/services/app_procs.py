"""An app for the invoker-process tests (``invoker.processes``): where a handler runs, and a handler that blocks
its process's event loop.

- ``Where.pid()``: the PID of the process running the handler.
- ``Where.block(seconds)``: ``time.sleep`` in the handler itself, not in ``ctx.run``: the event loop of the process
  that runs it stops for that long; then its PID.
- ``Where.nap(ms)``: a durable sleep, then the PID of the process that ran the attempt that woke up.
- ``Steps`` from :mod:`tests.services.app`.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import restate
from restate import Context

from tests.services.app import steps

where = restate.Service("Where")


@where.handler()
async def pid(ctx: Context) -> int:
    return os.getpid()


@where.handler()
async def block(ctx: Context, seconds: float) -> int:
    time.sleep(seconds)  # on purpose: a handler that blocks the event loop it runs on
    return os.getpid()


@where.handler()
async def nap(ctx: Context, ms: int) -> int:
    await ctx.sleep(timedelta(milliseconds=ms))
    return os.getpid()


app = restate.app(services=[where, steps])

"""The SDK service that ``benchmarks/side_by_side.py`` drives, written with the official Restate Python SDK.

The same module is served by hypercorn for both engines (``python -m hypercorn benchmarks.bench_app:app``) and is
mounted in-process for Capstan's ASGI row (``capstan serve --app benchmarks.bench_app:app``).

- ``Noop.echo(x) -> x``: the cost of one invocation with an empty journal.
- ``Counter.add(n)``: a virtual object; one state read and one state write per call (the load spreads over keys).
- ``Steps.one/three/nine(x)``: 1, 3 or 9 sequential ``ctx.run_typed`` steps, each journaled before the next.
"""

from __future__ import annotations

import restate
from restate import Context

from tests.services.app import counter, steps

noop = restate.Service("Noop")


@noop.handler()
async def echo(ctx: Context, x: str) -> str:
    return x


# Counter.add and Steps.one/three/nine are the test suite's own services (tests/services/app.py), so the
# benchmark measures exactly what the tests check.
app = restate.app(services=[noop, counter, steps])

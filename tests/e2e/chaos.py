"""A mixed workload for chaos tests, and the model it is checked against (services: :mod:`tests.services.chaos_app`).

Every operation is retried with the same identity (idempotency key, workflow id, awakeable id) until the engine
acknowledges it, through any number of engine restarts, so the model knows exactly what must have happened once:

- ``counter``: ``ChaosCounter/<key>/add(1)`` with an idempotency key. Per key the acknowledged answers must be
  exactly ``1..N`` (each key counted once, none twice) and the final count ``N``.
- ``steps``: ``Effects/steps`` (3 ``ctx.run`` steps) with an idempotency key; the result is the journaled nonces.
- ``nap``: ``ChaosSleeper/nap`` (a durable sleep of up to ``nap_max_ms``) with an idempotency key; afterwards
  ``ChaosCounter/nap-<i>`` must be exactly 1.
- ``awakeable``: ``ChaosWaiter/w<i>/wait`` sent (202), its awakeable resolved over HTTP (202, or 409/404 when an
  earlier resolve whose answer was lost had been stored), then attached: ``"got v<i>"``; ``ChaosCounter/awk-w<i>``
  must be 1 and ``ChaosBox/w<i>`` must hold exactly one id (the one-way send ran once).
- ``workflow``: ``ChaosFlow/f<i>/run`` sent twice (the second is ``PreviouslyAccepted``), then attached;
  ``ChaosCounter/flow-f<i>`` must be 1.

Side effects (:func:`check_effects`): every ``ctx.run`` execution is a line in the effects file, with a fresh nonce
and the time it ran. What the model can honestly assert about them:

(a) the execution whose result the journal kept ran exactly once;
(b) nothing ran a step again after its result was journaled (every other execution ran earlier);
(c) every execution whose result was not journaled is explained by a fault: it ran before some kill's restart
    (plus :data:`GRACE_S` for requests still in flight to a dying engine) and the journaled one after that kill;
(d) no effect belongs to an invocation the workload does not know (a duplicate invocation for one idempotency key
    or workflow id would show up here).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHAOS_APP = "tests.services.chaos_app:app"
COUNTER_KEYS = 8
STEPS = 3
OP_DEADLINE_S = 180.0

# An execution counts as "before restart k" up to this long after the restart began: a request the dying engine
# sent just before its SIGKILL can still be read by the deployment a moment later, and a restarted engine needs
# well over a second before it starts any attempt.
GRACE_S = 0.8

_RETRY_STATUSES = (429, 502, 503, 504)
_NO_BODY: Any = object()


@dataclass
class Fault:
    """One injected fault: what was killed, when (``time.monotonic()``), and when its restart began."""

    kind: str  # "engine", "deployment", "broker"
    killed_at: float
    restarted_at: float = float("inf")


@dataclass
class Model:
    """What the engine acknowledged, per operation kind."""

    counters: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    journaled: dict[tuple[str, int], str] = field(default_factory=dict)  # (invocation id, step) -> nonce
    naps: list[str] = field(default_factory=list)
    awakeables: list[str] = field(default_factory=list)  # waiter keys
    flows: list[str] = field(default_factory=list)  # workflow ids
    done: Counter[str] = field(default_factory=Counter)  # acknowledged operations by kind
    retries: int = 0  # requests that failed (engine down, 503) and were sent again


class Workload:
    """Drives the operations above against ``base_url()`` (a callable: the URL may not change, but reading it late
    keeps the workload independent of process objects)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: Callable[[], str],
        seed: int,
        *,
        nap_max_ms: int = 2000,
        step_sleep_ms: int = 0,
        weights: dict[str, int] | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url
        self.seed = seed
        self.nap_max_ms = nap_max_ms
        self.step_sleep_ms = step_sleep_ms
        self.weights = weights or {"counter": 4, "steps": 2, "nap": 2, "awakeable": 1, "workflow": 1}
        self.model = Model()
        self._ids = itertools.count()

    # --- driving ----------------------------------------------------------------------------------------------

    async def worker(self, index: int, stop: asyncio.Event) -> None:
        """Run random operations one after the other until ``stop`` is set (the current one is finished)."""
        rng = random.Random(self.seed * 1000 + index)
        kinds = list(self.weights)
        weights = [self.weights[k] for k in kinds]
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            await self.run_op(kind, next(self._ids), rng)

    async def run_op(self, kind: str, i: int, rng: random.Random) -> None:
        match kind:
            case "counter":
                await self.counter(f"c{rng.randrange(COUNTER_KEYS)}", f"cnt-{i}")
            case "steps":
                await self.steps(f"eff-{i}")
            case "nap":
                await self.nap(i, rng.randrange(50, self.nap_max_ms))
            case "awakeable":
                await self.awakeable(i)
            case "workflow":
                await self.workflow(i)
            case _:
                raise ValueError(kind)
        self.model.done[kind] += 1

    async def request(
        self,
        method: str,
        path: str,
        body: Any = _NO_BODY,
        *,
        idem: str | None = None,
        accept: tuple[int, ...] = (200,),
        wait_s: float = 15.0,
    ) -> tuple[int, Any, dict[str, str]]:
        """Send until the answer's status is in ``accept``; connection errors, timeouts and 429/5xx are retried."""
        headers = {"idempotency-key": idem} if idem is not None else {}
        data = None
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        deadline = time.monotonic() + OP_DEADLINE_S
        delay = 0.05
        last = ""
        while time.monotonic() < deadline:
            try:
                async with self.http.request(
                    method,
                    self.base_url() + path,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=wait_s),
                ) as resp:
                    text = await resp.text()
                    if resp.status in accept:
                        return resp.status, (json.loads(text) if text else None), dict(resp.headers)
                    last = f"{resp.status} {text[:300]}"
                    if resp.status not in _RETRY_STATUSES:
                        raise AssertionError(f"{method} {path}: unexpected answer {last}")
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                last = repr(exc)
            self.model.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise AssertionError(f"{method} {path} not acknowledged within {OP_DEADLINE_S:.0f}s; last: {last}")

    async def counter(self, key: str, idem: str) -> None:
        _, value, _ = await self.request("POST", f"/ChaosCounter/{key}/add", 1, idem=idem)
        self.model.counters[key].append(int(value))

    async def steps(self, idem: str, *, pad: str = "") -> None:
        body: dict[str, Any] = {"n": STEPS, "sleep_ms": self.step_sleep_ms}
        if pad:
            body["pad"] = pad  # ignored by the handler: makes the invocation's input (and its log record) big
        _, nonces, headers = await self.request("POST", "/Effects/steps", body, idem=idem, wait_s=30)
        inv = headers["x-restate-id"]
        assert len(nonces) == STEPS, nonces
        for step, nonce in enumerate(nonces):
            self.model.journaled[(inv, step)] = nonce

    async def nap(self, i: int, ms: int) -> None:
        key = f"nap-{i}"
        _, value, _ = await self.request("POST", "/ChaosSleeper/nap", {"ms": ms, "key": key}, idem=key, wait_s=30)
        assert value == "rested", value
        self.model.naps.append(key)

    async def awakeable(self, i: int) -> None:
        key = f"w{i}"
        _, sent, _ = await self.request("POST", f"/ChaosWaiter/{key}/wait/send", idem=f"awk-{i}", accept=(202,))
        inv = sent["invocationId"]
        deadline = time.monotonic() + OP_DEADLINE_S
        while True:
            _, ids, _ = await self.request("POST", f"/ChaosBox/{key}/ids")
            if ids:
                break
            assert time.monotonic() < deadline, f"{key}: the awakeable id was never published"
            await asyncio.sleep(0.05)
        # 409 / 404: an earlier resolve of ours was stored but its answer lost (nobody else resolves it)
        await self.request("POST", f"/restate/awakeables/{ids[0]}/resolve", f"v{i}", accept=(202, 404, 409))
        _, value, _ = await self.request("GET", f"/restate/attach/{inv}", wait_s=30)
        assert value == f"got v{i}", (key, value)
        self.model.awakeables.append(key)

    async def workflow(self, i: int) -> None:
        wid = f"f{i}"
        for _ in range(2):  # the second send is answered 202 "PreviouslyAccepted": run is once per id
            await self.request("POST", f"/ChaosFlow/{wid}/run/send", f"x{i}", accept=(202,))
        _, value, headers = await self.request("GET", f"/restate/workflow/ChaosFlow/{wid}/attach", wait_s=30)
        x, _, nonce = str(value).partition(":")
        assert x == f"x{i}" and nonce, value
        self.model.journaled[(headers["x-restate-id"], 0)] = nonce
        self.model.flows.append(wid)

    # --- checking -----------------------------------------------------------------------------------------

    async def counter_value(self, key: str) -> int:
        _, value, _ = await self.request("POST", f"/ChaosCounter/{key}/get")
        return int(value)

    async def verify_state(self) -> None:
        """Every acknowledged operation took effect exactly once (engine state; see the module doc)."""
        model = self.model
        for key, answers in model.counters.items():
            assert sorted(answers) == list(range(1, len(answers) + 1)), f"{key}: answers {sorted(answers)}"
            assert await self.counter_value(key) == len(answers), key
        once = [*model.naps, *(f"awk-{k}" for k in model.awakeables), *(f"flow-{w}" for w in model.flows)]
        values = await asyncio.gather(*(self.counter_value(key) for key in once))
        wrong = {key: v for key, v in zip(once, values, strict=True) if v != 1}
        assert not wrong, f"effects not applied exactly once: {wrong}"
        for key in model.awakeables:
            _, ids, _ = await self.request("POST", f"/ChaosBox/{key}/ids")
            assert len(ids) == 1, (key, ids)


def check_effects(path: Path, journaled: dict[tuple[str, int], str], faults: list[Fault]) -> dict[str, int]:
    """Check (a)-(d) of the module doc on the effects file; returns counts for the report."""
    runs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        entry = json.loads(line)
        runs[(entry["inv"], entry["step"])].append(entry)
    problems = []
    unknown = sorted(set(runs) - set(journaled))
    if unknown:
        problems.append(f"(d) effects of invocations the workload never saw: {unknown[:5]}")
    again = 0
    for (inv, step), nonce in journaled.items():
        chosen = [e for e in runs.get((inv, step), []) if e["nonce"] == nonce]
        if len(chosen) != 1:
            problems.append(f"(a) {inv} step {step}: the journaled execution ran {len(chosen)} times")
            continue
        kept = chosen[0]
        for other in runs[(inv, step)]:
            if other is kept:
                continue
            again += 1
            if other["t"] > kept["t"]:
                problems.append(f"(b) {inv} step {step} ran again after its result was journaled: {other}")
            elif not any(other["t"] < f.restarted_at + GRACE_S and kept["t"] > f.killed_at for f in faults):
                problems.append(f"(c) {inv} step {step} ran twice with no fault in between: {other} then {kept}")
    assert not problems, "\n".join(problems[:20])
    return {"executions": len(lines), "steps": len(journaled), "re_executed": again}


async def unfinished_invocations(http: aiohttp.ClientSession, admin_url: str) -> list[dict[str, Any]]:
    """Invocations that have not completed, by status (``POST /query`` on the admin API)."""
    query = "SELECT status, target, count(*) AS n FROM sys_invocation WHERE status != 'completed' GROUP BY 1, 2"
    async with http.post(admin_url + "/query", json={"query": query}) as resp:
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["rows"])

"""Attempts in invoker processes (``invoker.processes = N``): the handlers of an app mounted with ``--app`` run in
child processes, not in the engine; the engine stays responsive while a handler blocks its process; a big journal
(read on a thread) keeps its notifications in order; an app that cannot be mounted stops the start-up with a clear
error; an invoker process killed with SIGKILL stops the engine (exit code 1) and the restart finishes what ran.

The whole suite also runs this way with ``CAPSTAN_TEST_INVOKER_PROCESSES=N`` (``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from engine.errors import ConfigError, DeploymentError, OverloadedError
from engine.invoker.child import _MAX_UNANSWERED, InvokerChild
from engine.invoker.process import InvokerProcesses
from engine.server import Engine
from tests.conftest import EngineFactory, make_config
from tests.e2e.procs import CapstanProcess
from tests.services.app import _next_step
from tests.services.fixtures3 import eventually, get, post, send

APP = "tests.services.app_procs:app"


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def expected_steps(x: str, count: int) -> str:
    for i in range(1, count + 1):
        x = _next_step(x, i)
    return x


async def test_handlers_run_in_the_invoker_processes(
    engine_factory: EngineFactory, http: aiohttp.ClientSession
) -> None:
    async with engine_factory(app=APP, invoker={"processes": 2}) as engine:
        assert engine.invoker_processes is not None
        pids = set(engine.invoker_processes.pids)
        assert len(pids) == 2 and pids <= children_of(os.getpid())
        url = engine.ingress_url
        seen: set[int] = set()
        for _ in range(24):  # invocation ids are random: both processes get some
            status, body, _ = await post(http, url + "/Where/pid")
            assert status == 200, body
            seen.add(body)
        assert seen == pids  # never the engine's own process
        # full duplex in the child: three steps, journaled by the engine
        status, body, _ = await post(http, url + "/Steps/three", "x")
        assert (status, body) == (200, expected_steps("x", 3))
        # a durable sleep: the attempt suspends, the engine's timer fires, a new attempt resumes in the same process
        status, body, _ = await post(http, url + "/Where/nap", 50)
        assert status == 200 and body in pids
        # statistics come from the processes
        stats = await eventually(
            lambda: asyncio.sleep(0, engine.invoker.statistics()),
            lambda s: s.attempts_started >= 26 and s.running == 0,  # duplex: one attempt per call
            what="attempt statistics from the invoker processes",
        )
        assert stats.attempt_seconds.count >= 26
        status, metrics, _ = await get(http, engine.admin_url + "/metrics")
        assert status == 200 and "capstan_invoker_attempts_started" in metrics
        # discovery goes to the first process
        found = await asyncio.wait_for(engine.invoker_processes.discover(APP), 10)
        assert {s.name for s in found.manifest.services} == {"Where", "Steps"}


async def test_a_big_journal_is_read_on_a_thread_and_keeps_its_order(
    engine_factory: EngineFactory, http: aiohttp.ClientSession
) -> None:
    """An input over the inline read budget (16 KiB) makes the engine read the attempt's inputs on a thread; the
    notifications of its steps (three run completions) still reach the process after the start, in order."""
    async with engine_factory(app=APP, invoker={"processes": 1}) as engine:
        big = "y" * 40_000
        for _ in range(3):
            status, body, _ = await post(http, engine.ingress_url + "/Steps/three", big)
            assert (status, body) == (200, expected_steps(big, 3))


async def test_the_engine_stays_responsive_while_a_handler_blocks(
    engine_factory: EngineFactory, http: aiohttp.ClientSession
) -> None:
    """``time.sleep`` in a handler stops only its invoker process's event loop: the engine still answers health
    checks and accepts new invocations meanwhile (in-process, it would stop the whole engine)."""
    async with engine_factory(app=APP, invoker={"processes": 2}) as engine:
        blocked = asyncio.create_task(post(http, engine.ingress_url + "/Where/block", 3.0))
        await asyncio.sleep(0.5)  # the handler is blocking now
        assert not blocked.done()
        started = time.monotonic()
        status, _, _ = await get(http, engine.admin_url + "/health")
        assert status == 200
        inv = await send(http, engine.ingress_url + "/Steps/one/send", "z")
        assert inv.startswith("inv_")
        assert time.monotonic() - started < 1.0, "the engine waited for the blocked handler"
        assert not blocked.done()
        status, body, _ = await blocked
        assert status == 200 and body in engine.invoker_processes.pids  # type: ignore[union-attr]


async def test_an_app_that_cannot_be_mounted_stops_the_start(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", app="tests.services.no_such_module:app", invoker={"processes": 1})
    with pytest.raises(ConfigError, match=re.escape("cannot import module 'tests.services.no_such_module'")):
        await Engine.open(config)


async def test_a_process_proposes_at_most_max_unanswered_records() -> None:
    """Bounded: past ``_MAX_UNANSWERED`` proposals without an answer the process's invoker is told "overloaded"
    (it retries, as when the partition's queue is full in the engine), and an answer makes room again."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    try:
        child = InvokerChild(reader, writer)
        from engine.partition.types import End

        record = End(invocation_id=bytes(24), epoch=1, now_ms=0)
        futures = [child._propose(bytes(24), record) for _ in range(_MAX_UNANSWERED)]
        with pytest.raises(OverloadedError):
            child._propose(bytes(24), record)
        child._dispatch(None, None, ("applied", 1, 7, None))  # type: ignore[arg-type]
        assert futures[0].result() == 7
        child._propose(bytes(24), record)  # room again
    finally:
        writer.close()
        theirs.close()


async def test_discoveries_at_the_same_time_each_keep_their_answer() -> None:
    """Two discoveries in flight: the first one ending must not drop the second one's pending answer."""
    sent: list[tuple[object, ...]] = []
    child = SimpleNamespace(discoveries={}, link=SimpleNamespace(send=sent.append))
    processes = InvokerProcesses(SimpleNamespace(), 1)  # type: ignore[arg-type]
    processes._children = [child]  # type: ignore[list-item]
    first = asyncio.create_task(processes.discover("a:app"))
    second = asyncio.create_task(processes.discover("a:app"))
    await asyncio.sleep(0)
    assert [m[1] for m in sent] == [1, 2]
    child.discoveries[1].set_result((500, {}, b"boom"))
    with pytest.raises(DeploymentError):
        await first
    assert 2 in child.discoveries  # still waiting for its answer
    child.discoveries[2].set_result((500, {}, b"boom"))
    with pytest.raises(DeploymentError):
        await second
    assert child.discoveries == {}


def test_sigkill_of_an_invoker_process_stops_the_engine_and_the_restart_finishes(tmp_path: Path) -> None:
    engine = CapstanProcess(tmp_path / "data", extra_args=["--app", APP, "--invoker-processes", "2"])
    engine.start()
    try:

        async def start_naps() -> list[str]:
            async with aiohttp.ClientSession() as http:
                return [await send(http, engine.ingress_url + "/Where/nap/send", 1500) for _ in range(6)]

        invocations = asyncio.run(start_naps())
        assert engine.proc is not None
        workers = [p for p in children_of(engine.proc.pid) if "engine.invoker.child" in cmdline(p)]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert engine.proc.wait(15) == 1, engine.logs()
        assert "invoker process" in engine.logs() and "stopping the engine" in engine.logs()
        deadline = time.monotonic() + 10
        while any(cmdline(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any("engine.invoker.child" in cmdline(p) for p in workers), "an invoker process outlived the engine"

        engine.start()

        async def outputs() -> list[tuple[int, object]]:
            async with aiohttp.ClientSession() as http:
                replies = [
                    await post(
                        http, engine.ingress_url + "/restate/attach", {"target": "invocation", "invocationId": inv}
                    )
                    for inv in invocations
                ]
                return [(status, body) for status, body, _ in replies]

        answers = asyncio.run(outputs())
        assert all(status == 200 and isinstance(body, int) for status, body in answers), answers
    finally:
        engine.stop()


def test_invoker_processes_ignore_sigterm_and_stop_with_the_engine(tmp_path: Path) -> None:
    """A service manager's SIGTERM reaches every process of the group: the invoker processes ignore it (the engine
    stops them in order), so the engine's own SIGTERM still ends in a clean stop, exit code 0."""
    engine = CapstanProcess(tmp_path / "data", extra_args=["--app", APP, "--invoker-processes", "2"])
    engine.start()
    try:
        assert engine.proc is not None
        workers = [p for p in children_of(engine.proc.pid) if "engine.invoker.child" in cmdline(p)]
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker, signal.SIGTERM)

        async def call() -> tuple[int, object]:
            async with aiohttp.ClientSession() as http:
                status, body, _ = await post(http, engine.ingress_url + "/Where/pid")
                return status, body

        assert asyncio.run(call()) in {(200, p) for p in workers}
        assert engine.stop() == 0, engine.logs()
        assert not any("engine.invoker.child" in cmdline(p) for p in workers)
    finally:
        engine.stop()

"""The engine's side of the invoker processes (``invoker.processes = N``, see :mod:`engine.invoker.child`).

:class:`InvokerProcesses` stands where the in-process :class:`~engine.invoker.invoker.Invoker` stands (same effects
in, same statistics out). An invocation's attempts all run in one process, chosen by its id. What it keeps in
order:

- a start goes out with the attempt's inputs, read from the tables when the effect is dispatched, i.e. right after
  the records that caused it were applied; notifications applied later follow it on the same link, so the process
  sees the journal as read plus everything after it (duplicates are dropped by index, as in-process). Inputs too
  big to read on the event loop are read on a thread, and until they are sent, the invocation's later messages
  wait here in order;
- a process's proposals are proposed in the order they came (a full log makes them wait, and retried, they keep
  their order), and each is answered once applied or refused;
- a process that dies is fatal: the engine stops (exit code 1) and its restart resumes every invocation from its
  journal, as after a crash.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from engine import codec
from engine.errors import ConfigError, DeploymentError, LogError, OverloadedError
from engine.invoker.discovery import DiscoveryResponse, parse_discovery
from engine.invoker.invoker import (
    INLINE_LOAD_BUDGET_BYTES,
    AttemptInput,
    InvokerStatistics,
    TooBigInline,
    load_attempt_input,
)
from engine.invoker.transport import AttemptRequest, AttemptStream
from engine.ipc import BatchedLink, read_frame, spawn_child
from engine.metrics import HistogramSnapshot
from engine.partition.effects import Notify, StartAttempt
from engine.partition.types import Record
from engine.storage import keys

if TYPE_CHECKING:
    from engine.server import Engine

__all__ = ["InvokerProcesses", "RemoteAppDiscovery"]

logger = logging.getLogger(__name__)

_RETRY_S: Final = 0.005  # a full log: propose a process's next record again this much later
_STOP_TIMEOUT_S: Final = 10.0
_NO_STATISTICS = InvokerStatistics(
    running=0,
    waiting=0,
    attempts_started=0,
    attempts_failed=0,
    attempt_seconds=HistogramSnapshot(bounds=(), counts=(0,), sum=0.0),
)


@dataclass(eq=False)
class _Child:
    index: int
    proc: asyncio.subprocess.Process
    link: BatchedLink
    reader: asyncio.StreamReader
    # Proposals not proposed yet (the log was full): (seq, invocation id, record), in arrival order.
    backlog: collections.deque[tuple[int, bytes, Record]] = field(default_factory=collections.deque)
    retry: asyncio.TimerHandle | None = None
    # Invocations whose inputs are being read on a thread: their messages since, in order.
    held: dict[bytes, list[tuple[Any, ...]]] = field(default_factory=dict)
    stats: InvokerStatistics = _NO_STATISTICS  # as the process last reported them
    # Starts sent, and how many of them the process had taken when it reported ``stats``: the others wait too (an
    # in-process invoker counts an attempt as waiting the moment it is started; backpressure must not lag).
    starts_sent: int = 0
    starts_taken: int = 0
    discoveries: dict[int, asyncio.Future[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    reading: asyncio.Task[None] | None = None


class InvokerProcesses:
    def __init__(self, engine: Engine, count: int) -> None:
        self._engine = engine
        self._count = count
        self._children: list[_Child] = []
        self._closing = False
        self._requests = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]

    async def start(self, app_specs: list[str]) -> None:
        """Start the processes; raises ``ConfigError`` if one cannot mount an app (what it said)."""
        engine = self._engine
        metadata = await asyncio.to_thread(lambda: list(engine.store.scan(keys.METADATA)))
        rows = [(k[len(keys.METADATA) :].decode(), v) for k, v in metadata]
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        # invoker.concurrency_limit is the engine's: each process gets its share (invocations spread evenly by id).
        share = engine.config.invoker.model_copy(
            update={"concurrency_limit": -(-engine.config.invoker.concurrency_limit // self._count)}
        )
        config = engine.config.model_copy(update={"invoker": share})
        for index in range(self._count):
            proc, reader, writer = await spawn_child(
                "engine.invoker.child", "--index", str(index), "--log-level", level
            )
            child = _Child(index=index, proc=proc, link=BatchedLink(writer), reader=reader)
            self._children.append(child)
            child.link.send(("hello", config, rows, app_specs))
        for child in self._children:
            try:
                first = await read_frame(child.reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise ConfigError(f"invoker process {child.index} exited at start-up ({type(exc).__name__})") from exc
            for message in first:  # "ready" or "failed", maybe the first statistics with it
                if message[0] == "failed":
                    raise ConfigError(message[1])
                if message[0] == "stats":
                    _, child.stats, child.starts_taken = message
            child.reading = asyncio.create_task(self._read(child), name=f"invoker-process-{child.index}")
        logger.info("invoker: %d processes started (pids %s)", self._count, ", ".join(map(str, self.pids)))

    # ------------------------------------------------------------------------------------------------------
    # Effects (the Invoker's interface)
    # ------------------------------------------------------------------------------------------------------

    def _child_of(self, inv: bytes) -> _Child:
        return self._children[inv[-1] % len(self._children)]  # the uuid's last byte: random, or a hash

    def start_attempt(self, effect: StartAttempt) -> None:
        if self._closing:
            return
        child = self._child_of(effect.invocation_id)
        child.starts_sent += 1  # every start reaches the process, with its inputs or with None
        self._send(child, effect.invocation_id, ("start", effect))

    def notify(self, effect: Notify) -> None:
        inv = effect.invocation_id
        entry = effect.entry
        self._send(self._child_of(inv), inv, ("notify", inv, effect.epoch, effect.index, entry.ty, entry.body))

    def abort(self, invocation_id: bytes) -> None:
        self._send(self._child_of(invocation_id), invocation_id, ("abort", invocation_id))

    def on_metadata(self, key: str, value: bytes | None) -> None:
        for child in self._children:
            child.link.send(("meta", key, value))

    def _send(self, child: _Child, inv: bytes, message: tuple[Any, ...]) -> None:
        held = child.held.get(inv)
        if held is not None:
            held.append(message)
            return
        if message[0] != "start":
            child.link.send(message)
            return
        effect: StartAttempt = message[1]
        engine = self._engine
        try:
            loaded = load_attempt_input(engine.store, engine.registry, engine.config, inv, INLINE_LOAD_BUDGET_BYTES)
        except TooBigInline:
            child.held[inv] = [message]
            task = asyncio.create_task(self._release(child, inv))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        child.link.send(_start_message(effect, loaded))

    async def _release(self, child: _Child, inv: bytes) -> None:
        """Send ``inv``'s held messages in order, reading each start's inputs on a thread."""
        engine = self._engine
        held = child.held[inv]
        try:
            while held:
                message = held.pop(0)
                if message[0] == "start":
                    try:
                        loaded = await asyncio.to_thread(
                            load_attempt_input, engine.store, engine.registry, engine.config, inv
                        )
                    except Exception:
                        # As an attempt task that crashed in-process: logged, the invocation waits for a restart
                        # (the process is sent the start without inputs, and skips it).
                        logger.exception("invoker: reading the inputs of an attempt failed")
                        loaded = None
                    message = _start_message(message[1], loaded)
                child.link.send(message)
        finally:
            del child.held[inv]

    def overloaded(self) -> bool:
        return self._waiting() > self._engine.config.invoker.queue_limit

    def _waiting(self) -> int:
        return sum(c.stats.waiting + c.starts_sent - c.starts_taken for c in self._children)

    def statistics(self) -> InvokerStatistics:
        stats = [c.stats for c in self._children]
        histograms = [s.attempt_seconds for s in stats if s.attempt_seconds.bounds]
        if histograms:
            counts = [sum(column) for column in zip(*(h.counts for h in histograms), strict=True)]
            seconds = HistogramSnapshot(
                bounds=histograms[0].bounds, counts=tuple(counts), sum=sum(h.sum for h in histograms)
            )
        else:
            seconds = _NO_STATISTICS.attempt_seconds
        return InvokerStatistics(
            running=sum(s.running for s in stats),
            waiting=self._waiting(),
            attempts_started=sum(s.attempts_started for s in stats),
            attempts_failed=sum(s.attempts_failed for s in stats),
            attempt_seconds=seconds,
        )

    async def discover(self, spec: str) -> DiscoveryResponse:
        """An in-process app's manifest, as the first invoker process (which mounts it) fetches it."""
        if not self._children:
            raise DeploymentError("the invoker processes are not running", status=503)
        child = self._children[0]
        self._requests += 1
        request = self._requests  # this call's: others may run meanwhile
        fut: asyncio.Future[tuple[int, dict[str, str], bytes]] = asyncio.get_running_loop().create_future()
        child.discoveries[request] = fut
        child.link.send(("discover", request, spec))
        try:
            status, headers, body = await fut
        finally:
            child.discoveries.pop(request, None)
        return parse_discovery(status, headers, body, source=f"in-process app {spec}")

    async def aclose(self) -> None:
        """Stop the processes: end of file first (they cancel their attempts), then SIGKILL by PID."""
        self._closing = True
        for child in self._children:
            if child.retry is not None:
                child.retry.cancel()
            child.link.close()
        for child in self._children:
            try:
                await asyncio.wait_for(child.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning("invoker process %d (pid %d) did not stop; killing it", child.index, child.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
            if child.reading is not None:
                child.reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reading
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------------------------------------------
    # From the processes
    # ------------------------------------------------------------------------------------------------------

    async def _read(self, child: _Child) -> None:
        why = "closed its end"
        try:
            while True:
                for message in await read_frame(child.reader):
                    kind = message[0]
                    if kind == "propose":
                        _, seq, inv, encoded = message
                        child.backlog.append((seq, inv, codec.decode(encoded)))
                        if child.retry is None:
                            self._drain(child)
                    elif kind == "stats":
                        _, child.stats, child.starts_taken = message
                    elif kind == "discovered":
                        _, request, answer, error = message
                        fut = child.discoveries.get(request)
                        if fut is not None and not fut.done():
                            if error is None:
                                fut.set_result(answer)
                            else:
                                fut.set_exception(DeploymentError(error[0], status=error[1]))
                    else:
                        raise ConnectionError(f"unknown message {kind!r}")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            why = f"closed its end ({exc})"
        finally:
            for fut in child.discoveries.values():
                if not fut.done():
                    fut.set_exception(DeploymentError(f"invoker process {child.index} {why}", status=503))
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.proc.wait(), 1.0)
                logger.critical(
                    "invoker process %d (pid %d) %s, exit status %s; stopping the engine (a restart resumes every "
                    "invocation from its journal)",
                    child.index,
                    child.proc.pid,
                    why,
                    child.proc.returncode,
                )
                self._engine.fatal.set()

    def _drain(self, child: _Child) -> None:
        """Propose the process's waiting records in order; a full log retries the rest ``_RETRY_S`` later."""
        child.retry = None
        backlog = child.backlog
        propose = self._engine.propose_to
        while backlog:
            seq, inv, record = backlog[0]
            try:
                applied = propose(inv, record)
            except OverloadedError:
                if not self._closing:
                    child.retry = asyncio.get_running_loop().call_later(_RETRY_S, self._drain, child)
                return
            except LogError as exc:
                backlog.popleft()
                child.link.send(("applied", seq, 0, str(exc)))
                continue
            backlog.popleft()
            applied.add_done_callback(functools.partial(_answer, child.link, seq))


def _answer(link: BatchedLink, seq: int, applied: asyncio.Future[int]) -> None:
    if applied.cancelled():
        link.send(("applied", seq, 0, "the engine is shutting down"))
    elif (exc := applied.exception()) is not None:
        link.send(("applied", seq, 0, str(exc)))
    else:
        link.send(("applied", seq, applied.result(), None))


def _start_message(effect: StartAttempt, loaded: AttemptInput | None) -> tuple[Any, ...]:
    raw = None if loaded is None else (loaded.status, loaded.journal, loaded.state, loaded.partial_state)
    return ("start", effect.invocation_id, effect.epoch, effect.delay_ms, raw)


class RemoteAppDiscovery:
    """The transport the engine makes for an ``asgi://`` deployment when the apps are mounted in the invoker
    processes: discovery only (attempts run there)."""

    duplex = True

    def __init__(self, processes: InvokerProcesses, spec: str) -> None:
        self._processes = processes
        self._spec = spec

    async def discover(self) -> DiscoveryResponse:
        return await self._processes.discover(self._spec)

    async def start_attempt(self, request: AttemptRequest, body: bytes, *, keep_open: bool) -> AttemptStream:
        raise DeploymentError(f"in-process app {self._spec}: attempts run in the invoker processes", status=500)

    async def aclose(self) -> None:
        return None

"""The engine's side of the Kafka worker process (``ingress_kafka.worker``): starting it, and one
``RemoteConsumer`` per subscription that the reconciler runs in place of an in-process consumer.

A ``RemoteConsumer`` asks the worker to run the subscription's consumer and serves it: each batch of encoded
invoke records is proposed in order as it came (the log stores the bytes; the partition decodes them when it
applies them, so the event loop's share per record is little more than the append), and answered once durable.
It reports the worker's status of the consumer, adds to the subscription's counters, and fails (so the reconciler
restarts it with back-off) when the consumer failed in the worker or the worker died; the next start starts a new
worker.

Bounds: a consumer has at most ``ingress_kafka.inflight_batches`` batches unanswered (its own queue), and the
engine holds at most ``_INBOX`` messages per run; the socket's buffers hold the rest, and a full one makes the
worker wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.errors import LogError, OverloadedError
from engine.ipc import child_log_level, read_frame, spawn_child, write_frame
from engine.partition.types import Invoke, PutMetadata
from engine.schema import Service
from ingress_kafka.consumer import KafkaIngestError, idle_status
from ingress_kafka.metrics import SubscriptionCounters
from subscriptions.models import KafkaCluster, Subscription
from subscriptions.registry import SUBSCRIPTION_PREFIX

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

_INBOX = 64
_STOP_TIMEOUT_S = 10.0


async def propose_invokes(
    engine: Engine, invokes: list[Invoke] | list[tuple[bytes, bytes]]
) -> asyncio.Future[list[int]]:
    """Propose ``invokes`` (records, or (invocation id, encoded record) pairs) in order, waiting (never dropping)
    while the engine refuses new records for room; the returned future resolves once all are durable in the log.
    A log that fails raises ``KafkaIngestError``."""
    interval = engine.config.ingress_kafka.backpressure_check_interval.total_seconds()
    durable: list[asyncio.Future[int]] = []
    for invoke in invokes:
        while True:
            try:
                if isinstance(invoke, Invoke):
                    durable.append(engine.propose_durable(invoke))
                else:
                    durable.append(engine.propose_encoded_durable(*invoke))
                break
            except OverloadedError:
                await asyncio.sleep(interval)
            except LogError as exc:
                for fut in durable:  # already queued: they still become durable, nobody waits for them
                    fut.add_done_callback(_consume_outcome)
                raise KafkaIngestError(f"the engine refused the record: {exc}") from exc
    return asyncio.gather(*durable)


def _consume_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class WorkerFailedError(Exception):
    """The consumer failed in the worker (``kind`` names its exception there), or the worker died."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class KafkaWorker:
    """The child process, started on first need and again after it died; stopped (by PID) with the engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runs: dict[int, RemoteConsumer] = {}
        self._run_ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._overloaded = False
        self._sent_services: dict[str, Service | None] = {}
        self._closed = False
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def ensure_started(self) -> None:
        async with self._lock:
            if self._closed:
                raise WorkerFailedError("EngineClosing", "the engine is shutting down")
            if self.alive():
                return
            await self._reap()
            proc, reader, writer = await spawn_child("ingress_kafka.worker", "--log-level", child_log_level())
            self._proc, self._writer = proc, writer
            self._sent_services.clear()
            self.starts += 1
            cfg = self._engine.config
            write_frame(writer, ("hello", cfg.ingress_kafka, cfg.invocation))
            write_frame(writer, ("overloaded", self._overloaded))
            self._tasks = [
                asyncio.create_task(self._read(reader, proc), name="kafka-worker-read"),
                asyncio.create_task(self._watch(writer), name="kafka-worker-watch"),
            ]
            logger.info("kafka: worker process %d started", proc.pid)

    def send(self, message: tuple[Any, ...]) -> None:
        if self.alive():
            assert self._writer is not None
            write_frame(self._writer, message)

    def attach(self, consumer: RemoteConsumer) -> int:
        run = next(self._run_ids)
        self._runs[run] = consumer
        self.send_service(consumer.sub.service)
        return run

    def detach(self, run: int) -> None:
        if self._runs.pop(run, None) is not None:
            self.send(("stop", run))

    def send_service(self, name: str) -> None:
        service = self._engine.registry.service(name)
        if name not in self._sent_services or self._sent_services[name] is not service:
            self._sent_services[name] = service
            self.send(("service", name, service))

    async def _read(self, reader: asyncio.StreamReader, proc: asyncio.subprocess.Process) -> None:
        why = "the Kafka worker process closed its end"
        try:
            while True:
                message = await read_frame(reader)
                consumer = self._runs.get(message[1])
                if consumer is not None:
                    await consumer.deliver(message)
                elif message[0] == "batch":  # its run was stopped: nobody commits these, drop them
                    self.answer(message[2], "the consumer run was stopped")
                elif message[0] == "put_subscription":
                    self.send(("reply", message[2], "the consumer run was stopped"))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            why = f"the Kafka worker process closed its end ({type(exc).__name__})"
        finally:
            if self._writer is not None and self._proc is proc:
                self._writer.close()  # not alive any more: the next start starts a new process
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
            for consumer in list(self._runs.values()):
                consumer.worker_exited(f"{why}; exit status {proc.returncode}")

    def answer(self, request: int, error: str | None) -> None:
        """Answer a batch (durable, or why not); the answer also says whether the engine has room now, so the
        worker's next batch sees the backlog its predecessors made. What the worker was told last is remembered
        (``_watch`` tells it of the next change: a paused worker sends no batch to be answered)."""
        self._overloaded = self._engine.invoker.overloaded()
        self.send(("durable", request, error, self._overloaded))

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        """Keep the worker told: whether the engine has room, and the sinks' current schemas."""
        interval = self._engine.config.ingress_kafka.backpressure_check_interval.total_seconds()
        while not writer.is_closing():
            overloaded = self._engine.invoker.overloaded()
            if overloaded != self._overloaded:
                self._overloaded = overloaded
                self.send(("overloaded", overloaded))
            for name in {c.sub.service for c in self._runs.values()}:
                self.send_service(name)
            await asyncio.sleep(interval)

    async def _reap(self) -> None:
        """Stop the current process (if any): end of file first, then SIGKILL by its PID."""
        proc, writer = self._proc, self._writer
        self._proc = self._writer = None
        if writer is not None:
            writer.close()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning("kafka: worker process %d did not stop; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            await self._reap()


class RemoteConsumer:
    """The reconciler's consumer for a subscription whose records the worker process reads (``Consumer``)."""

    def __init__(
        self,
        engine: Engine,
        worker: KafkaWorker,
        sub: Subscription,
        cluster: KafkaCluster,
        counters: Callable[[str], SubscriptionCounters],
    ) -> None:
        self._engine = engine
        self._worker = worker
        self.sub = sub
        self.cluster = cluster
        self._counters = counters
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=_INBOX)
        self._status: dict[str, Any] | None = None
        self.dead_lettered = 0  # invocations that failed terminally and were dead-lettered by the engine

    async def run(self) -> None:
        await self._worker.ensure_started()
        run = self._worker.attach(self)
        try:
            self._worker.send(("start", run, self.sub, self.cluster))
            while True:
                message = await self._inbox.get()
                kind = message[0]
                if kind == "batch":
                    await self._append(message[2], message[3])
                elif kind == "status":
                    self._status = message[2]
                elif kind == "count":
                    counters = self._counters(self.sub.id)
                    counters.ingested += message[2]
                    counters.dead_lettered += message[3]
                elif kind == "put_subscription":
                    await self._put_subscription(message[2], message[3])
                elif kind == "failed":
                    self._status = message[4]
                    raise WorkerFailedError(message[2], message[3])
                elif kind == "ended":
                    return
                elif kind == "exited":
                    raise WorkerFailedError("KafkaWorkerExited", message[1])
                else:
                    raise WorkerFailedError("ProtocolError", f"unknown message {kind!r} from the Kafka worker")
        finally:
            self._worker.detach(run)

    async def deliver(self, message: tuple[Any, ...]) -> None:
        await self._inbox.put(message)

    def worker_exited(self, why: str) -> None:
        if self._inbox.full():  # nobody will commit what a dead worker sent: the news that it died comes first
            while not self._inbox.empty():
                self._inbox.get_nowait()
        self._inbox.put_nowait(("exited", why))

    async def _append(self, request: int, encoded: list[tuple[bytes, bytes]]) -> None:
        try:
            durable = await propose_invokes(self._engine, encoded)
        except ValueError as exc:  # not an encoded Invoke
            raise WorkerFailedError("ProtocolError", f"the Kafka worker sent a bad record: {exc}") from exc
        except KafkaIngestError as exc:
            self._worker.answer(request, str(exc))
            return
        worker = self._worker

        def answer(fut: asyncio.Future[list[int]]) -> None:
            if fut.cancelled():
                error: str | None = "the records were not stored (cancelled)"
            elif fut.exception() is not None:
                error = f"the log did not store the records: {fut.exception()}"
            else:
                error = None
            worker.answer(request, error)

        durable.add_done_callback(answer)

    async def _put_subscription(self, request: int, row: bytes) -> None:
        sub = Subscription.from_row(row)
        error: str | None = None
        if sub.id != self.sub.id:
            error = f"run of {self.sub.id} cannot store {sub.id}"
        else:
            try:
                await self._engine.propose_metadata([PutMetadata(key=SUBSCRIPTION_PREFIX + sub.id, value=row)])
                self.sub = sub
            except (OverloadedError, LogError) as exc:
                error = str(exc)
        self._worker.send(("reply", request, error))

    def status(self) -> dict[str, Any]:
        status = dict(self._status) if self._status is not None else idle_status(self.sub)
        status["dead_lettered"] = int(status.get("dead_lettered", 0)) + self.dead_lettered
        return status

"""The Kafka worker process: the subscriptions' consumers, next to the engine, on a core of their own.

The engine process is one Python interpreter, bound by one core; fetching records, decoding them and building
and encoding their invoke records took about a third of its time under Kafka load, next to applying records and
running attempts. Here the same ``SubscriptionConsumer`` code runs in a child process (``ingress_kafka.process``
starts it): per polled batch it sends the encoded invoke records to the engine, which appends them to its log as
they are (no second encoding) and answers once they are durable; only then are the offsets committed. Everything
durable stays in the engine (invariant 1: no offset commit before the log's fsync); the worker holds nothing that
a crash of either process could lose, and the engine's dedup (producer id, offset) drops what a restarted
consumer reads again.

The two processes talk over a socket pair with length-prefixed pickle frames (both ends are this code, of the
same version, started together: nothing else can write to the socket). Engine → worker: ``hello`` (config),
``start``/``stop`` (a consumer run, numbered by the engine), ``service`` (the sink's schema, again whenever it
changes), ``overloaded`` (pause or resume: when it changes, and with every ``durable``), ``durable`` and ``reply``
(answers). Worker → engine: ``batch``, ``status`` (when it changed, at most every 200 ms), ``count``,
``put_subscription``, ``failed``/``ended``.

The worker exits when the engine closes its end (or dies: end of file, and the kernel's parent-death signal).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from engine import codec
from engine.config import IngressKafkaSection, InvocationSection
from engine.ipc import die_with_parent, read_frame, serve_child, write_frame
from engine.partition.types import Invoke
from engine.schema import Service
from ingress_kafka.consumer import KafkaIngestError, SubscriptionConsumer
from ingress_kafka.dlq import DeadLetterSender
from subscriptions.models import KafkaCluster, Subscription

if TYPE_CHECKING:
    from ingress_kafka.schema_registry import SchemaRegistries, SchemaRegistryClient

logger = logging.getLogger(__name__)

STATUS_INTERVAL_S = 0.2


class WorkerHost:
    """What the worker's consumers share: the link to the engine, what it told us, dead letters, registries."""

    def __init__(self, writer: asyncio.StreamWriter, kafka: IngressKafkaSection, invocation: InvocationSection) -> None:
        self._writer = writer
        self.kafka_config = kafka
        self.invocation_config = invocation
        self.clusters: dict[str, dict[str, str]] = {}
        self.dead_letters = DeadLetterSender(self.clusters.get)
        self.services: dict[str, Service | None] = {}
        self.is_overloaded = False
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0
        self._registries: SchemaRegistries | None = None  # with aiohttp, imported once a subscription needs one

    def send(self, message: tuple[Any, ...]) -> None:
        if not self._writer.is_closing():
            write_frame(self._writer, message)

    def _request(self) -> tuple[int, asyncio.Future[Any]]:
        self._next += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = fut
        return self._next, fut

    def answer(self, request: int, error: str | None) -> None:
        fut = self._waiting.pop(request, None)
        if fut is None or fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(KafkaIngestError(error))

    def fail_all(self, why: str) -> None:
        for request in list(self._waiting):
            self.answer(request, why)

    async def submit(self, run: int, invokes: list[Invoke]) -> asyncio.Future[Any]:
        encoded = [(invoke.invocation_id, codec.encode(invoke)) for invoke in invokes]
        request, fut = self._request()
        self.send(("batch", run, request, encoded))
        await self._writer.drain()
        return fut

    async def put_subscription(self, run: int, sub: Subscription) -> None:
        request, fut = self._request()
        self.send(("put_subscription", run, request, sub.to_row()))
        await fut

    def schema_registry(self, sub: Subscription) -> SchemaRegistryClient | None:
        if self._registries is None:
            if not sub.options.get("capstan.schema.registry.url"):
                return None
            from ingress_kafka.schema_registry import SchemaRegistries  # imports aiohttp: ~0.3 s

            self._registries = SchemaRegistries()
        return self._registries.for_options(sub.options)

    async def aclose(self) -> None:
        self.fail_all("the Kafka worker is stopping")
        await self.dead_letters.aclose()
        if self._registries is not None:
            await self._registries.aclose()


class RunHost:
    """``ConsumerHost`` for one consumer run in the worker (the engine numbers runs; messages name them)."""

    def __init__(self, shared: WorkerHost, run: int) -> None:
        self._shared = shared
        self._run = run
        self.kafka_config = shared.kafka_config
        self.invocation_config = shared.invocation_config
        self.dead_letters = shared.dead_letters

    def service(self, name: str) -> Service | None:
        return self._shared.services.get(name)

    def overloaded(self) -> bool:
        return self._shared.is_overloaded

    async def submit(self, sub: Subscription, invokes: list[Invoke]) -> asyncio.Future[Any]:
        return await self._shared.submit(self._run, invokes)

    async def put_subscription(self, sub: Subscription) -> None:
        await self._shared.put_subscription(self._run, sub)

    def schema_registry(self, sub: Subscription) -> SchemaRegistryClient | None:
        return self._shared.schema_registry(sub)

    def count(self, sub: Subscription, *, ingested: int = 0, dead_lettered: int = 0) -> None:
        if ingested or dead_lettered:
            self._shared.send(("count", self._run, ingested, dead_lettered))


class Worker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._host: WorkerHost | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}  # run -> its consumer task
        self._by_sub: dict[str, int] = {}  # subscription id -> its current run
        self._consumers: dict[int, SubscriptionConsumer] = {}
        self._reported: dict[int, dict[str, Any]] = {}

    async def serve(self) -> None:
        reporter: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    message = await read_frame(self._reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the engine closed its end or died
                kind = message[0]
                if kind == "hello":
                    self._host = WorkerHost(self._writer, message[1], message[2])
                    reporter = asyncio.create_task(self._report_status())
                elif kind == "start":
                    self._start(message[1], message[2], message[3])
                elif kind == "stop":
                    task = self._tasks.get(message[1])
                    if task is not None:
                        task.cancel()
                elif kind == "service":
                    self._need_host().services[message[1]] = message[2]
                elif kind == "overloaded":
                    self._need_host().is_overloaded = bool(message[1])
                elif kind == "durable":
                    host = self._need_host()
                    host.is_overloaded = bool(message[3])
                    host.answer(message[1], message[2])
                elif kind == "reply":
                    self._need_host().answer(message[1], message[2])
                else:
                    raise ConnectionError(f"unknown message {kind!r}")
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            if self._host is not None:
                await self._host.aclose()

    def _need_host(self) -> WorkerHost:
        if self._host is None:
            raise ConnectionError("a message before hello")
        return self._host

    def _start(self, run: int, sub: Subscription, cluster: KafkaCluster) -> None:
        host = self._need_host()
        host.clusters[cluster.name] = dict(cluster.properties)
        previous = self._tasks.get(self._by_sub.get(sub.id, -1))
        self._by_sub[sub.id] = run
        self._tasks[run] = asyncio.create_task(self._run(host, run, sub, cluster, previous), name=f"sub-{sub.id}")

    async def _run(
        self,
        host: WorkerHost,
        run: int,
        sub: Subscription,
        cluster: KafkaCluster,
        previous: asyncio.Task[None] | None,
    ) -> None:
        try:
            if previous is not None:  # the same subscription's earlier run: let it leave the group first
                previous.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await previous
            consumer = SubscriptionConsumer(RunHost(host, run), sub, cluster)
            self._consumers[run] = consumer
            try:
                await consumer.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                host.send(("failed", run, type(exc).__name__, str(exc), consumer.status()))
            else:
                host.send(("ended", run))
        finally:
            self._consumers.pop(run, None)
            self._reported.pop(run, None)
            self._tasks.pop(run, None)
            if self._by_sub.get(sub.id) == run:
                del self._by_sub[sub.id]

    async def _report_status(self) -> None:
        host = self._need_host()
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            for run, consumer in list(self._consumers.items()):
                status = consumer.status()
                if self._reported.get(run) != status:
                    self._reported[run] = status
                    host.send(("status", run, status))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ingress_kafka.worker", description=__doc__.split("\n")[0])
    parser.add_argument("fd", type=int, help="this end of the socket pair the engine opened")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s [kafka-worker] %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_child(args.fd, lambda reader, writer: Worker(reader, writer).serve()))


if __name__ == "__main__":
    main()

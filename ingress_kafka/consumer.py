"""One subscription's consumer: Kafka records → durable invoke records, exactly once, in order per key.

Per fetched batch, for each partition in offset order: decode the key and value, build an ``Invoke`` whose dedup
tag is (producer = hash(subscription, group, topic, partition, generation), sequence = offset), hand the batch to
the host, which proposes each invoke to the engine partition that owns the target (object key → partition), and
once every invoke of the batch is durable in the log, commit the offsets (the partition applies them right after;
a crash in between replays them from the log). A record redelivered after a crash or a rebalance carries the same
tag and the engine drops it, so each record becomes at most one invocation; offsets move only after durability, so
none is lost.

The host (``ConsumerHost``) is the Kafka extension itself when consumers run inside the engine process, or the
link to the engine when they run in the Kafka worker process (``ingress_kafka.worker``): the consumer is the same
code in both.

Ordering: records of one Kafka partition are proposed in offset order, and records with the same key go to the
same engine partition and object key, whose FIFO inbox runs them in that order. A plain-service sink with
``capstan.ordering=partition`` gets the same treatment with the Kafka partition as the ordering key.

Backpressure: while the engine's invoker backlog is full (or its log queue refuses records) the assigned
partitions are paused, and resumed when there is room again.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from engine.config import IngressKafkaSection, InvocationSection
from engine.ids import InvocationId, partition_key_for_key, workflow_invocation_id
from engine.partition.types import Dedup, HandlerType, Invoke, RetentionPolicy, Sink, Target
from engine.schema import Service, retention_policy
from engine.tracing import find_traceparent
from ingress_kafka.client_config import client_kwargs
from ingress_kafka.dlq import DeadLetter, DeadLetterSender, error_headers
from ingress_kafka.formats import PoisonRecordError, RecordDecoder, parse_format_options
from subscriptions.models import KafkaCluster, Subscription, encode_context

if TYPE_CHECKING:  # aiohttp, which the client needs, is imported by the worker process only once it is used
    from ingress_kafka.schema_registry import SchemaRegistryClient

logger = logging.getLogger(__name__)


class SinkUnavailableError(Exception):
    """The sink service/handler is not registered (any more): retry later, never drop the record."""


class StuckRecordError(Exception):
    """A poison record and no dead-letter topic: the partition stops here until an operator acts."""


def producer_id(sub: Subscription, topic: str, partition: int) -> str:
    # The group (the subscription id unless group.id is set) identifies the stream of offsets: a subscription
    # deleted and re-created with the same group.id resumes its dedup sequence instead of starting a new one.
    raw = f"{sub.group_id}\x00{topic}\x00{partition}\x00{sub.generation}".encode()
    return "kafka/" + hashlib.sha256(raw).hexdigest()[:32]


class ConsumerHost(Protocol):
    """What a consumer needs from the engine: the sink's schema, room, durability, and its metadata rows."""

    kafka_config: IngressKafkaSection
    invocation_config: InvocationSection
    dead_letters: DeadLetterSender

    def service(self, name: str) -> Service | None: ...

    def overloaded(self) -> bool:
        """The engine has no room for new invocations now: pause the partitions and ask again later."""
        ...

    async def submit(self, sub: Subscription, invokes: list[Invoke]) -> Awaitable[object]:
        """Propose ``invokes`` in order (returns once they are in the log's queue, so the next batch follows them);
        the awaitable completes once all are durable, or raises ``KafkaIngestError``."""
        ...

    async def put_subscription(self, sub: Subscription) -> None:
        """Store the subscription's row (the consumer records that a replay has moved its offsets)."""
        ...

    def schema_registry(self, sub: Subscription) -> SchemaRegistryClient | None: ...

    def count(self, sub: Subscription, *, ingested: int = 0, dead_lettered: int = 0) -> None:
        """Add to the subscription's counters for metrics."""
        ...


@dataclass(frozen=True, slots=True)
class _Inflight:
    durable: Awaitable[object] | None
    count: int
    offsets: dict[TopicPartition, int]


def idle_status(sub: Subscription) -> dict[str, Any]:
    """The status of a subscription whose consumer is not running (yet)."""
    return {
        "running": False,
        "group_id": sub.group_id,
        "partitions": [],
        "ingested": 0,
        "dead_lettered": 0,
        "paused": False,
        "paused_times": 0,
        "last_error": None,
        "replaying": sub.replay_pending,
    }


class SubscriptionConsumer:
    def __init__(self, host: ConsumerHost, sub: Subscription, cluster: KafkaCluster) -> None:
        self._host = host
        self.sub = sub
        self.cluster = cluster
        self._decoder = RecordDecoder(parse_format_options(sub.options), host.schema_registry(sub))
        self._cfg = host.kafka_config
        self._consumer: AIOKafkaConsumer | None = None
        self.ingested = 0
        self.dead_lettered = 0
        self.paused_times = 0
        self.paused = False
        self.last_error: str | None = None
        self._committed: dict[int, int] = {}
        self._position: dict[int, int] = {}
        self._producer_ids: dict[TopicPartition, tuple[tuple[str, int], str]] = {}
        self._retention_cache: tuple[Service, RetentionPolicy] | None = None

    # ----------------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        sub = self.sub
        reset = sub.options.get("auto.offset.reset", self.cluster.properties.get("auto.offset.reset", "latest"))
        props = {**self.cluster.properties, **sub.options}
        kwargs = client_kwargs(props, consumer=True)
        kwargs["auto_offset_reset"] = reset
        consumer = AIOKafkaConsumer(
            group_id=sub.group_id,
            enable_auto_commit=False,
            max_poll_records=self._cfg.max_poll_records,
            **kwargs,
        )
        consumer.subscribe([sub.topic])
        self._consumer = consumer
        try:
            await consumer.start()  # inside the try: cancelled while joining the group, it must still be stopped
            if sub.replay_pending:
                await self._seek_for_replay(consumer)
            # Fetching and committing overlap: a batch's offsets are committed (in order) by the committer once its
            # invocations are durable, while this loop proposes the next batches (at most inflight_batches ahead).
            inflight: asyncio.Queue[_Inflight] = asyncio.Queue(maxsize=self._cfg.inflight_batches)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._commit_in_order(consumer, inflight))
                    while True:
                        batch = await consumer.getmany(timeout_ms=500)
                        await self._learn_committed(consumer)
                        if batch:
                            await inflight.put(await self._ingest(consumer, batch))
            except ExceptionGroup as group_error:  # the committer failed: report its error, not the group
                raise group_error.exceptions[0] from None
        finally:
            self._consumer = None
            await consumer.stop()

    async def _ingest(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> _Inflight:
        """Propose the batch's invocations (in record order); the returned awaitable completes once they are
        durable."""
        await self._wait_for_room(consumer)
        service = self._host.service(self.sub.service)
        if service is None or self.sub.handler not in service.handlers:
            raise SinkUnavailableError(f"sink {self.sub.sink} is not registered")
        invokes: list[Invoke] = []
        offsets: dict[TopicPartition, int] = {}
        try:
            for tp, records in batch.items():
                for record in records:
                    invoke = await self._to_invocation(service, tp, record)
                    if invoke is not None:
                        invokes.append(invoke)
                    offsets[tp] = record.offset + 1
                    self._position[tp.partition] = record.offset + 1
        except StuckRecordError:
            if invokes:  # the records before the stuck one still run (a restarted consumer reads them again: dedup)
                await (await self._host.submit(self.sub, invokes))
            raise
        durable = await self._host.submit(self.sub, invokes) if invokes else None
        return _Inflight(durable=durable, count=len(invokes), offsets=offsets)

    async def _commit_in_order(self, consumer: AIOKafkaConsumer, inflight: asyncio.Queue[_Inflight]) -> None:
        while True:
            batch = await inflight.get()
            await self._commit(consumer, batch)

    async def _commit(self, consumer: AIOKafkaConsumer, batch: _Inflight) -> None:
        offsets = batch.offsets
        if batch.durable is not None:
            # Durable in the log: now the offsets may move (after a crash the log replays the invokes, and a
            # record read again carries the same dedup tag). Waiting for the apply as well would tie the commit
            # rate to the apply rate of the whole partition.
            await batch.durable
        self.ingested += batch.count
        self._host.count(self.sub, ingested=batch.count)
        try:
            await consumer.commit({tp: off for tp, off in offsets.items()})
            for tp, off in offsets.items():
                self._committed[tp.partition] = off
        except CommitFailedError as exc:
            # A rebalance took the partitions: the next owner re-reads them and the engine drops the duplicates.
            logger.info(
                "subscription %s: commit after rebalance failed (%s); duplicates will be dropped", self.sub.id, exc
            )

    async def _learn_committed(self, consumer: AIOKafkaConsumer) -> None:
        """Committed offsets of newly assigned partitions (for lag) before this process committed any."""
        for tp in consumer.assignment():
            if tp.partition not in self._committed:
                committed = await consumer.committed(tp)
                self._committed[tp.partition] = committed if committed is not None else 0

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        if not self._host.overloaded():
            return
        assigned = list(consumer.assignment())
        consumer.pause(*assigned)
        self.paused = True
        self.paused_times += 1
        logger.debug("subscription %s: engine busy, partitions paused", self.sub.id)
        interval = self._cfg.backpressure_check_interval.total_seconds()
        try:
            while self._host.overloaded():  # noqa: ASYNC110 - polling the backlog is the point
                await asyncio.sleep(interval)
        finally:
            consumer.resume(*assigned)
            self.paused = False

    async def _to_invocation(self, service: Service, tp: TopicPartition, record: ConsumerRecord) -> Invoke | None:
        sub = self.sub
        handler = service.handlers[sub.handler]
        try:
            key = await self._decoder.decode_key(record.key) if record.key is not None else None
            if service.keyed and key is None:
                raise PoisonRecordError(
                    "the record has no key, but the sink is keyed (virtual object/workflow)", stage="key"
                )
            body = await self._decoder.decode_value(record.value)
        except PoisonRecordError as exc:
            await self._dead_letter(tp, record, stage=exc.stage, code=400, message=exc.reason)
            return None
        producer = self._producer_ids.get(tp)
        if producer is None or producer[0] != (sub.group_id, sub.generation):
            producer = ((sub.group_id, sub.generation), producer_id(sub, tp.topic, tp.partition))
            self._producer_ids[tp] = producer
        producer_name = producer[1]
        digest = hashlib.sha256(producer_name.encode() + record.offset.to_bytes(8, "big")).digest()
        ordering_key: str | None = None
        target_key: str | None = None
        if service.keyed:
            assert key is not None
            target_key = key
            if handler.ty == HandlerType.WORKFLOW:
                inv = workflow_invocation_id(service.name, key)
            else:
                inv = InvocationId(partition_key=partition_key_for_key(key), uuid=digest[:16])
        elif sub.ordered:
            ordering_key = f"{sub.id}/{tp.topic}/{tp.partition}"
            inv = InvocationId(partition_key=partition_key_for_key(ordering_key), uuid=digest[:16])
        else:
            inv = InvocationId(partition_key=int.from_bytes(digest[16:24], "big"), uuid=digest[:16])
        headers = [
            ("kafka.offset", str(record.offset)),
            ("kafka.topic", tp.topic),
            ("kafka.partition", str(tp.partition)),
        ]
        if record.timestamp is not None and record.timestamp >= 0:
            headers.append(("kafka.timestamp", str(record.timestamp)))
        if record.key is not None:
            headers.append(("kafka.key", base64.urlsafe_b64encode(record.key).decode().rstrip("=")))
        headers.append(("restate.subscription.id", sub.id))
        for name, value in record.headers or ():
            headers.append((name, (value or b"").decode("utf-8", errors="replace")))
        sink: Sink | None = None
        if sub.dlq_topic is not None:
            sink = Sink(
                external=f"kafka-dlq/{sub.id}",
                context=encode_context(
                    {
                        "cluster": self.cluster.name,
                        "dlq": sub.dlq_topic,
                        "subscription": sub.id,
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "offset": record.offset,
                        "key": record.key,
                        "value": record.value,
                        "headers": [[n, v or b""] for n, v in record.headers or ()],
                    }
                ),
            )
        now = int(time.time() * 1000)
        return Invoke(
            invocation_id=inv.to_bytes(),
            target=Target(
                service=service.name,
                handler=handler.name,
                key=target_key,
                service_ty=service.ty,
                handler_ty=handler.ty if service.keyed else HandlerType.EXCLUSIVE,
                ordering_key=ordering_key,
            ),
            argument=body,
            headers=tuple(headers),
            sink=sink,
            deployment_id=service.deployment_id,
            retention=self._retention(service),
            dedup=Dedup(producer=producer_name, seq=record.offset),
            now_ms=now,
            random_seed=int.from_bytes(digest[24:32], "little"),
            traceparent=find_traceparent(headers),  # a record's own W3C trace context, if it carries one
        )

    def _retention(self, service: Service) -> RetentionPolicy:
        """The sink's retention policy, computed once per registration of the service (a record at a time adds up)."""
        cached = self._retention_cache
        if cached is None or cached[0] is not service:
            policy = retention_policy(
                service=service, handler=self.sub.handler, idempotent=False, defaults=self._host.invocation_config
            )
            cached = self._retention_cache = (service, policy)
        return cached[1]

    async def _dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord, *, stage: str, code: int, message: str
    ) -> None:
        sub = self.sub
        if sub.dlq_topic is None:
            self.last_error = (
                f"partition {tp.partition} offset {record.offset}: {message}; set capstan.dlq.topic to move such "
                "records aside"
            )
            raise StuckRecordError(self.last_error)
        original = tuple((n, v or b"") for n, v in record.headers or ())
        await self._host.dead_letters.send(
            DeadLetter(
                cluster=self.cluster.name,
                topic=sub.dlq_topic,
                key=record.key,
                value=record.value,
                headers=error_headers(
                    stage=f"decode-{stage}",
                    code=code,
                    message=message,
                    subscription=sub.id,
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    original=original,
                ),
            )
        )
        self.dead_lettered += 1
        self._host.count(sub, dead_lettered=1)

    async def _seek_for_replay(self, consumer: AIOKafkaConsumer) -> None:
        sub = self.sub
        assert sub.replay_from is not None
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=200)  # records fetched before the seek are not processed
        assigned = sorted(consumer.assignment(), key=lambda t: t.partition)
        if sub.replay_from == "earliest":
            await consumer.seek_to_beginning(*assigned)
        else:
            when = datetime.datetime.fromisoformat(sub.replay_from)
            ms = int(when.timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: ms for tp in assigned})
            ends = await consumer.end_offsets(assigned)
            for tp in assigned:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        positions = {tp: await consumer.position(tp) for tp in assigned}
        await consumer.commit(positions)
        for tp, offset in positions.items():
            self._committed[tp.partition] = offset
            self._position[tp.partition] = offset
        done = replace(sub, replayed_generation=sub.generation)
        await self._host.put_subscription(done)
        self.sub = done
        logger.info("subscription %s: replaying from %s", sub.id, sub.replay_from)

    # ----------------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        consumer = self._consumer
        partitions: list[dict[str, Any]] = []
        if consumer is not None:
            for tp in sorted(consumer.assignment(), key=lambda t: t.partition):
                high = consumer.highwater(tp)
                committed = self._committed.get(tp.partition)
                position = self._position.get(tp.partition, committed)
                lag = None if high is None else max(0, high - (committed if committed is not None else 0))
                partitions.append(
                    {
                        "partition": tp.partition,
                        "position": position,
                        "committed": committed,
                        "end_offset": high,
                        "lag": lag,
                    }
                )
        return {
            **idle_status(self.sub),  # the same fields, in the same order, as a consumer not running yet
            "running": consumer is not None,
            "partitions": partitions,
            "ingested": self.ingested,
            "dead_lettered": self.dead_lettered,
            "paused": self.paused,
            "paused_times": self.paused_times,
            "last_error": self.last_error,
        }


class KafkaIngestError(KafkaError):  # type: ignore[misc]
    """The engine could not take a record (its log failed): the consumer restarts and re-reads it."""

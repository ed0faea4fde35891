"""The partition's data model: log records (what happened) and table rows (what is).

Records are appended to a partition log and applied by :mod:`engine.partition.processor`; rows are stored in
RocksDB by :mod:`engine.storage.store`. Both are frozen dataclasses encoded with :mod:`engine.codec` under stable
tags (never reuse a tag; add new fields at the end with a default).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.codec import RowCache, register

Headers = tuple[tuple[str, str], ...]


class ServiceType(enum.IntEnum):
    SERVICE = 0
    VIRTUAL_OBJECT = 1
    WORKFLOW = 2


class HandlerType(enum.IntEnum):
    EXCLUSIVE = 0
    SHARED = 1
    WORKFLOW = 2


class Status(enum.IntEnum):
    SCHEDULED = 0
    INBOXED = 1
    INVOKED = 2
    SUSPENDED = 3
    BACKING_OFF = 4
    PAUSED = 5
    COMPLETED = 6


@register(1)
@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    service: str
    handler: str
    key: str | None = None
    service_ty: int = ServiceType.SERVICE
    handler_ty: int = HandlerType.EXCLUSIVE
    # Serialises invocations of a plain service that share it (Kafka "ordered per partition" delivery), through
    # the same lock and FIFO inbox as an object key. Never sent to the SDK.
    ordering_key: str | None = None

    @property
    def keyed(self) -> bool:
        return self.service_ty != ServiceType.SERVICE

    @property
    def exclusive(self) -> bool:
        """Takes the per-key lock: exclusive object handlers, workflow ``run``, ordered service deliveries."""
        if self.ordering_key is not None:
            return True
        return self.keyed and self.handler_ty != HandlerType.SHARED

    @property
    def lock_key(self) -> str | None:
        """The key whose lock and inbox this invocation uses (None: no lock)."""
        if self.ordering_key is not None:
            return "\x00ordered/" + self.ordering_key
        return self.key

    def display(self) -> str:
        if self.key is None:
            return f"{self.service}/{self.handler}"
        return f"{self.service}/{self.key}/{self.handler}"


@register(2)
@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    code: int
    message: str
    metadata: tuple[tuple[str, str], ...] = ()


@register(3)
@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """An invocation's outcome: ``value`` bytes on success, else ``failure``."""

    value: bytes | None = None
    failure: Failure | None = None


@register(4)
@dataclass(frozen=True, slots=True, kw_only=True)
class Sink:
    """Who gets the result. ``token``: an in-memory waiter of this process (an HTTP caller); tokens of a
    previous process are simply never resolved. ``parent``: a calling invocation, answered with a
    notification on ``completion_id`` (protocol CallCompletion)."""

    token: str | None = None
    parent: bytes | None = None
    completion_id: int = 0
    # the notification type the parent gets: CallCompletion (0x800D) or AttachInvocationCompletion (0x8012)
    notification_ty: int = 0x800D
    # an extension's durable sink (e.g. "kafka-dlq/<subscription>"), told about terminal failures only; ``context``
    # is the extension's own bytes (e.g. the original Kafka record)
    external: str | None = None
    context: bytes = b""


@register(5)
@dataclass(frozen=True, slots=True, kw_only=True)
class Dedup:
    producer: str
    seq: int


@register(6)
@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    completion_ms: int
    journal_ms: int


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------


@register(100)
@dataclass(frozen=True, slots=True, kw_only=True)
class Invoke:
    invocation_id: bytes
    target: Target
    argument: bytes
    headers: Headers = ()
    idempotency_key: str | None = None
    sink: Sink | None = None
    one_way: bool = False
    deployment_id: str = ""
    retention: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(completion_ms=0, journal_ms=0))
    dedup: Dedup | None = None
    execution_time_ms: int = 0
    now_ms: int = 0
    random_seed: int = 0
    # the invocation whose Call / OneWayCall command created this one (None: ingress or a subscription)
    caller: bytes | None = None
    # the caller's W3C trace context (a valid ``traceparent`` value) or "": see engine.tracing
    traceparent: str = ""


@register(101)
@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    """A frame of the service protocol as the SDK sent it (type id + protobuf body)."""

    ty: int
    body: bytes


@register(102)
@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries:
    """Commands (and run proposals, type 0x0005) an attempt sent, in order."""

    invocation_id: bytes
    epoch: int
    entries: tuple[JournalEntry, ...]
    now_ms: int = 0


@register(103)
@dataclass(frozen=True, slots=True, kw_only=True)
class Suspend:
    invocation_id: bytes
    epoch: int
    waiting_completions: tuple[int, ...] = ()
    waiting_signals: tuple[int, ...] = ()
    waiting_named_signals: tuple[str, ...] = ()
    now_ms: int = 0


@register(104)
@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed:
    invocation_id: bytes
    epoch: int
    code: int
    message: str
    next_retry_delay_ms: int | None = None
    related_command_index: int | None = None
    related_command_name: str | None = None
    now_ms: int = 0
    # True when the failure is the deployment's own fault in a way retrying cannot fix (e.g. unknown handler 404)
    # still retried per policy, recorded for operators.
    stacktrace: str = ""


@register(105)
@dataclass(frozen=True, slots=True, kw_only=True)
class End:
    invocation_id: bytes
    epoch: int
    now_ms: int = 0


@register(106)
@dataclass(frozen=True, slots=True, kw_only=True)
class Cleanup:
    """Forget completed invocations whose retention ended at or before ``now_ms``."""

    now_ms: int


@register(107)
@dataclass(frozen=True, slots=True, kw_only=True)
class PutMetadata:
    """Admin metadata (deployments, services): ``value`` None deletes ``key``. Applied by partition 0 only."""

    key: str
    value: bytes | None


@register(108)
@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeAttempt:
    """A retry back-off ran out (or an operator resumed): start the next attempt for ``epoch``."""

    invocation_id: bytes
    epoch: int


@register(109)
@dataclass(frozen=True, slots=True, kw_only=True)
class AppendNotification:
    """Append a notification to ``invocation_id``'s journal (a call's result, an awakeable or other signal).

    ``token``: an in-memory waiter to answer with the outcome (202 / 404 unknown / 409 already completed)."""

    invocation_id: bytes
    entry: JournalEntry
    completion_id: int | None = None
    signal_id: int | None = None
    signal_name: str | None = None
    token: str | None = None


@register(110)
@dataclass(frozen=True, slots=True, kw_only=True)
class AttachSink:
    """Deliver ``invocation_id``'s result to ``sink`` when it completes (at once if it already has).
    ``peek``: answer now with the output or "not ready" (GetInvocationOutput / ingress output)."""

    invocation_id: bytes
    sink: Sink
    peek: bool = False


@register(111)
@dataclass(frozen=True, slots=True, kw_only=True)
class FireTimer:
    key: bytes


class Op(enum.IntEnum):
    CANCEL = 0
    KILL = 1
    PURGE = 2
    PAUSE = 3
    RESUME = 4


@register(112)
@dataclass(frozen=True, slots=True, kw_only=True)
class ManageInvocation:
    """An operator's (or a parent's) cancel / kill / purge / pause / resume."""

    invocation_id: bytes
    op: int
    token: str | None = None
    now_ms: int = 0


@register(113)
@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxDelivery:
    """A record another partition emitted for this one: applied at most once per (source, seq)."""

    source: int
    seq: int
    record: Invoke | AppendNotification | AttachSink | ManageInvocation


@register(114)
@dataclass(frozen=True, slots=True, kw_only=True)
class TruncateOutbox:
    """Outbox rows up to ``seq`` were delivered (durably) to their partitions."""

    seq: int


@register(115)
@dataclass(frozen=True, slots=True, kw_only=True)
class AckExternal:
    """An extension handled EXTERNAL row ``key`` (e.g. produced it to a dead-letter topic)."""

    key: bytes


@register(116)
@dataclass(frozen=True, slots=True, kw_only=True)
class EditState:
    """An operator's change to the state of one virtual object / workflow key (admin API), applied by the
    partition owning the key. Refused while an invocation holds the key's lock (one writer per key) and, when
    ``version`` is given, unless it matches the current state's version (Restate's optimistic concurrency)."""

    service: str
    key: str
    replace_all: bool = False
    set: tuple[tuple[bytes, bytes], ...] = ()
    clear: tuple[bytes, ...] = ()
    version: str | None = None
    token: str | None = None


Record = (
    Invoke
    | AppendEntries
    | Suspend
    | AttemptFailed
    | End
    | Cleanup
    | PutMetadata
    | ResumeAttempt
    | AppendNotification
    | AttachSink
    | FireTimer
    | ManageInvocation
    | OutboxDelivery
    | TruncateOutbox
    | AckExternal
    | EditState
)
Routed = Invoke | AppendNotification | AttachSink | ManageInvocation


# --------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------


@register(200)
@dataclass(frozen=True, slots=True, kw_only=True)
class InvocationStatus:
    invocation_id: bytes
    target: Target
    status: int
    deployment_id: str = ""
    idempotency_key: str | None = None
    sinks: tuple[Sink, ...] = ()
    # Attempt fencing: records from attempt ``epoch`` only; bumped whenever a new attempt is scheduled.
    epoch: int = 0
    journal_length: int = 0
    # Index of the last OutputCommand in the journal (-1: none yet).
    output_index: int = -1
    retry_count: int = 0
    retry_count_since_last_entry: int = 0
    last_entry_at_ms: int = 0
    waiting_completions: tuple[int, ...] = ()
    waiting_signals: tuple[int, ...] = ()
    waiting_named_signals: tuple[str, ...] = ()
    completed_ids: tuple[int, ...] = ()
    signal_ids: tuple[int, ...] = ()
    result: Result | None = None
    created_at_ms: int = 0
    modified_at_ms: int = 0
    completed_at_ms: int = 0
    expires_at_ms: int = 0
    retention: RetentionPolicy = field(default_factory=lambda: RetentionPolicy(completion_ms=0, journal_ms=0))
    random_seed: int = 0
    last_failure: Failure | None = None
    next_retry_at_ms: int = 0
    inbox_seq: int = 0
    # child invocations started by Call commands (killed with their parent)
    children: tuple[bytes, ...] = ()
    execution_time_ms: int = 0
    one_way: bool = False
    # the invocation that called or sent this one (None: ingress or a subscription)
    invoked_by: bytes | None = None
    # the caller's trace context, from Invoke.traceparent ("" = a trace of its own; see engine.tracing)
    traceparent: str = ""


# Status rows as the processor wrote them, so the next reader (the processor itself, the invoker) skips the decode.
STATUS_ROWS = RowCache(4096)

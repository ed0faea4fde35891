"""What applying a record asks the rest of the engine to do. Effects are never the source of truth: after a
crash the processor recomputes the ones that matter (attempts to start) from its tables."""

from __future__ import annotations

from dataclasses import dataclass

from engine.partition.types import Failure, JournalEntry, Result, Routed


@dataclass(frozen=True, slots=True, kw_only=True)
class StartAttempt:
    invocation_id: bytes
    epoch: int
    delay_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Notify:
    """A notification became durable in ``invocation_id``'s journal; push it to an open attempt of ``epoch``."""

    invocation_id: bytes
    epoch: int
    index: int
    entry: JournalEntry


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAccepted:
    invocation_id: bytes
    previously: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The answer to a management request or a signal: an HTTP status and a message."""

    status: int
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotReady:
    """An output peek of an invocation that has not completed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Answer an in-memory waiter (an HTTP caller) of this process."""

    token: str
    invocation_id: bytes
    result: Result | SendAccepted | Outcome | NotReady


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOutbox:
    """Deliver outbox row ``seq`` of ``partition`` to the partition owning ``record``'s invocation."""

    partition: int
    seq: int
    record: Routed


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleTimer:
    wake_ms: int
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortAttempt:
    """Stop a running attempt now (kill, pause): its records would be dropped anyway (stale epoch)."""

    invocation_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataChanged:
    key: str
    value: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalDelivery:
    """Tell an extension's sink (``route``) that an invocation failed terminally; when handled, the extension
    proposes ``AckExternal(key)`` to ``partition``. Re-sent after a crash until acknowledged."""

    partition: int
    key: bytes
    route: str
    context: bytes
    invocation_id: bytes
    failure: Failure


Effect = StartAttempt | Notify | Reply | MetadataChanged | SendOutbox | ScheduleTimer | AbortAttempt | ExternalDelivery

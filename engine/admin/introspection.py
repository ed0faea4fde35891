"""The engine's tables as rows shaped like Restate's SQL introspection (reference ``ingress-admin-kafka.md`` §5.2).

Everything here is synchronous and reads a :class:`~engine.storage.store.Snapshot` (one consistent view of every
table); callers run it on a worker thread. The same row builders serve ``POST /query`` (copied into SQLite, see
:mod:`engine.admin.query`) and ``GET /invocations/{id}``.

Value conventions: timestamps are UTC ISO-8601 text with milliseconds (``2026-01-02T03:04:05.678Z``, the format of
SQLite's ``strftime('%Y-%m-%dT%H:%M:%fZ', ...)``, so they compare as text); durations are integer milliseconds;
booleans are true/false; binary values are BLOBs (hex strings in JSON answers) with a ``*_utf8`` text twin where
Restate has one.
"""

from __future__ import annotations

import base64
import datetime
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from engine import codec
from engine.errors import EngineError
from engine.ids import InvocationId
from engine.invoker.protocol import messages
from engine.invoker.protocol.framing import MessageType, is_command
from engine.partition.types import (
    HandlerType,
    InvocationStatus,
    JournalEntry,
    Result,
    ServiceType,
    Status,
)
from engine.schema import Deployment, service_from_row
from engine.storage import keys
from engine.storage.store import Snapshot

_U32 = struct.Struct(">I")

STATUS_NAME = {
    Status.SCHEDULED: "scheduled",
    Status.INBOXED: "pending",
    Status.INVOKED: "running",
    Status.SUSPENDED: "suspended",
    Status.BACKING_OFF: "backing-off",
    Status.PAUSED: "paused",
    Status.COMPLETED: "completed",
}
SERVICE_TY_SQL = {
    ServiceType.SERVICE: "service",
    ServiceType.VIRTUAL_OBJECT: "virtual_object",
    ServiceType.WORKFLOW: "workflow",
}

# ------------------------------------------------------------------------------------------------------------------
# Table shapes: (column, SQLite type). BOOLEAN columns are answered as true/false.
# ------------------------------------------------------------------------------------------------------------------

Columns = tuple[tuple[str, str], ...]

INVOCATION_COLUMNS: Columns = (
    ("id", "TEXT"), ("target", "TEXT"), ("target_service_name", "TEXT"),
    ("target_service_key", "TEXT"), ("target_handler_name", "TEXT"), ("target_service_ty", "TEXT"),
    ("target_handler_ty", "TEXT"), ("idempotency_key", "TEXT"), ("invoked_by", "TEXT"),
    ("invoked_by_service_name", "TEXT"), ("invoked_by_id", "TEXT"), ("invoked_by_target", "TEXT"),
    ("invoked_by_subscription_id", "TEXT"), ("pinned_deployment_id", "TEXT"), ("last_attempt_deployment_id", "TEXT"),
    ("journal_size", "INTEGER"), ("created_at", "TEXT"),
    ("modified_at", "TEXT"), ("scheduled_start_at", "TEXT"), ("completed_at", "TEXT"),
    ("completion_retention", "INTEGER"), ("journal_retention", "INTEGER"), ("expires_at", "TEXT"),
    ("status", "TEXT"), ("completion_result", "TEXT"), ("completion_failure", "TEXT"), ("retry_count", "INTEGER"),
    ("next_retry_at", "TEXT"), ("last_failure", "TEXT"), ("last_failure_error_code", "INTEGER"),
    ("suspended_waiting_completions", "TEXT"), ("suspended_waiting_signals", "TEXT"),
)  # fmt: skip
JOURNAL_COLUMNS: Columns = (
    ("id", "TEXT"), ("index", "INTEGER"), ("entry_type", "TEXT"), ("name", "TEXT"),
    ("completed", "BOOLEAN"), ("invoked_id", "TEXT"), ("invoked_target", "TEXT"), ("sleep_wakeup_at", "TEXT"),
    ("promise_name", "TEXT"), ("value", "TEXT"), ("entry_json", "TEXT"), ("raw", "BLOB"), ("raw_length", "INTEGER"),
)  # fmt: skip
STATE_COLUMNS: Columns = (
    ("service_name", "TEXT"), ("service_key", "TEXT"), ("key", "TEXT"),
    ("key_length", "INTEGER"), ("value_utf8", "TEXT"), ("value", "BLOB"), ("value_length", "INTEGER"),
)  # fmt: skip
INBOX_COLUMNS: Columns = (
    ("service_name", "TEXT"), ("service_key", "TEXT"), ("id", "TEXT"),
    ("sequence_number", "INTEGER"), ("created_at", "TEXT"),
)  # fmt: skip
KEYED_STATUS_COLUMNS: Columns = (
    ("service_name", "TEXT"), ("service_key", "TEXT"), ("invocation_id", "TEXT"),
)  # fmt: skip
PROMISE_COLUMNS: Columns = (
    ("service_name", "TEXT"), ("service_key", "TEXT"), ("key", "TEXT"),
    ("completed", "BOOLEAN"), ("completion_success_value", "BLOB"), ("completion_success_value_utf8", "TEXT"),
    ("completion_failure", "TEXT"),
)  # fmt: skip
SERVICE_COLUMNS: Columns = (
    ("name", "TEXT"), ("revision", "INTEGER"), ("public", "BOOLEAN"), ("ty", "TEXT"), ("deployment_id", "TEXT"),
    ("handlers", "TEXT"), ("idempotency_retention", "INTEGER"), ("journal_retention", "INTEGER"),
    ("workflow_completion_retention", "INTEGER"), ("inactivity_timeout", "INTEGER"), ("abort_timeout", "INTEGER"),
)  # fmt: skip
DEPLOYMENT_COLUMNS: Columns = (
    ("id", "TEXT"), ("ty", "TEXT"), ("endpoint", "TEXT"), ("created_at", "TEXT"), ("protocol_type", "TEXT"),
    ("min_service_protocol_version", "INTEGER"), ("max_service_protocol_version", "INTEGER"),
    ("sdk_version", "TEXT"), ("services", "TEXT"),
)  # fmt: skip


class SnapshotTooLargeError(EngineError):
    """The tables a query names hold more rows or bytes than the configured limits."""


@dataclass(slots=True, kw_only=True)
class Budget:
    """How much one query may copy out of the snapshot; :meth:`take` raises once it is spent."""

    rows: int
    bytes: int
    used_rows: int = 0
    used_bytes: int = 0

    def take(self, table: str, size: int) -> None:
        self.used_rows += 1
        self.used_bytes += size
        if self.used_rows > self.rows:
            raise SnapshotTooLargeError(
                f"the tables this query reads hold more than {self.rows} rows (while reading {table}); "
                "query fewer tables or raise admin.query_snapshot_rows_limit"
            )
        if self.used_bytes > self.bytes:
            raise SnapshotTooLargeError(
                f"the tables this query reads hold more than {self.bytes} bytes (while reading {table}); "
                "query fewer tables or raise admin.query_snapshot_bytes_limit"
            )


Row = dict[str, Any]
Loader = Callable[[Snapshot, Budget], Iterator[Row]]


# ------------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------------


def timestamp(ms: int | None) -> str | None:
    """``2026-01-02T03:04:05.678Z`` (None for 0 / unset)."""
    if not ms:
        return None
    when = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _iso_timestamp(text: str) -> str:
    """A stored ISO-8601 time (e.g. ``...+00:00``) in the format of :func:`timestamp`."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return timestamp(int(when.timestamp() * 1000)) or text


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _split_object_key(key: bytes, table_len: int) -> tuple[str, str, bytes]:
    """``(service, object key, rest)`` of a row keyed by ``keys.object_prefix``."""
    pos = table_len
    (n,) = _U32.unpack_from(key, pos)
    service = key[pos + 4 : pos + 4 + n].decode()
    pos += 4 + n
    (m,) = _U32.unpack_from(key, pos)
    object_key = key[pos + 4 : pos + 4 + m].decode()
    return service, object_key, key[pos + 4 + m :]


def _failure_text(code: int, message: str) -> str:
    return f"[{code}] {message}"


def _target_of(service: str, key: str | None, handler: str) -> str:
    return f"{service}/{handler}" if key is None else f"{service}/{key}/{handler}"


# ------------------------------------------------------------------------------------------------------------------
# sys_invocation
# ------------------------------------------------------------------------------------------------------------------


def invocation_row(st: InvocationStatus, *, input_headers: dict[str, str], caller: InvocationStatus | None) -> Row:
    """One ``sys_invocation`` row. ``input_headers``: the headers of journal entry 0 (Input); ``caller``: the status
    of the invocation that called or sent this one, when it still exists."""
    t = st.target
    inv = InvocationId.from_bytes(st.invocation_id)
    subscription = input_headers.get("restate.subscription.id")
    invoked_by = "service" if st.invoked_by is not None else "subscription" if subscription else "ingress"
    result = st.result
    failure = result.failure if result is not None else None
    return {
        "id": str(inv),
        "target": t.display(),
        "target_service_name": t.service,
        "target_service_key": t.key,
        "target_handler_name": t.handler,
        "target_service_ty": SERVICE_TY_SQL.get(ServiceType(t.service_ty), str(t.service_ty)),
        "target_handler_ty": (
            {HandlerType.EXCLUSIVE: "exclusive", HandlerType.SHARED: "shared", HandlerType.WORKFLOW: "workflow"}[
                HandlerType(t.handler_ty)
            ]
            if t.keyed
            else None
        ),
        "idempotency_key": st.idempotency_key,
        "invoked_by": invoked_by,
        "invoked_by_service_name": caller.target.service if caller is not None else None,
        "invoked_by_id": str(InvocationId.from_bytes(st.invoked_by)) if st.invoked_by is not None else None,
        "invoked_by_target": caller.target.display() if caller is not None else None,
        "invoked_by_subscription_id": subscription if st.invoked_by is None else None,
        "pinned_deployment_id": st.deployment_id or None,
        "last_attempt_deployment_id": st.deployment_id or None,
        "journal_size": st.journal_length,
        "created_at": timestamp(st.created_at_ms),
        "modified_at": timestamp(st.modified_at_ms),
        "scheduled_start_at": timestamp(st.execution_time_ms),
        "completed_at": timestamp(st.completed_at_ms),
        "completion_retention": st.retention.completion_ms,
        "journal_retention": st.retention.journal_ms,
        "expires_at": timestamp(st.expires_at_ms) if st.status == Status.COMPLETED else None,
        "status": STATUS_NAME.get(Status(st.status), str(st.status)),
        "completion_result": (None if result is None else "failure" if failure is not None else "success"),
        "completion_failure": _failure_text(failure.code, failure.message) if failure is not None else None,
        "retry_count": st.retry_count,
        "next_retry_at": timestamp(st.next_retry_at_ms) if st.status == Status.BACKING_OFF else None,
        "last_failure": st.last_failure.message if st.last_failure is not None else None,
        "last_failure_error_code": st.last_failure.code if st.last_failure is not None else None,
        "suspended_waiting_completions": (
            json.dumps(list(st.waiting_completions)) if st.status == Status.SUSPENDED else None
        ),
        "suspended_waiting_signals": (json.dumps(list(st.waiting_signals)) if st.status == Status.SUSPENDED else None),
    }


def input_headers(snap: Snapshot, invocation_id: bytes) -> dict[str, str]:
    """The headers of an invocation's Input command (entry 0); empty once the journal is gone."""
    raw = snap.get(keys.journal(invocation_id, 0))
    if raw is None:
        return {}
    entry: JournalEntry = codec.decode(raw)
    if entry.ty != MessageType.INPUT_COMMAND:
        return {}
    try:
        msg: Any = messages.decode(entry.ty, entry.body)
    except EngineError:
        return {}
    return {str(h.key): str(h.value) for h in msg.headers}


def load_invocations(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    statuses: dict[bytes, InvocationStatus] = {}
    for key, raw in snap.scan(keys.STATUS):
        budget.take("sys_invocation", len(raw))
        statuses[key[len(keys.STATUS) :]] = codec.decode(raw)
    # Point reads after the scan: the snapshot reads through one iterator.
    for inv, st in statuses.items():
        caller = statuses.get(st.invoked_by) if st.invoked_by is not None else None
        yield invocation_row(st, input_headers=input_headers(snap, inv), caller=caller)


# ------------------------------------------------------------------------------------------------------------------
# sys_journal
# ------------------------------------------------------------------------------------------------------------------

_ENTRY_NAMES: dict[int, str] = {
    t.value: "".join(part.capitalize() for part in t.name.removesuffix("_COMMAND").removesuffix("_COMPLETION")
                     .removesuffix("_NOTIFICATION").split("_"))
    for t in MessageType
}  # fmt: skip


def entry_type_name(ty: int) -> str:
    """``Command: Run``, ``Notification: Run``, ``Notification: Signal``, ``Command: Call``, ..."""
    name = _ENTRY_NAMES.get(ty, f"0x{ty:04X}")
    return f"Command: {name}" if is_command(ty) else f"Notification: {name}"


def _bytes_json(raw: bytes) -> Any:
    text = _utf8(raw)
    return text if text is not None else {"base64": base64.b64encode(raw).decode("ascii")}


def message_json(msg: Message) -> dict[str, Any]:
    """A protobuf message as JSON, bytes as UTF-8 text when they are (else ``{"base64": ...}``)."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            out[fd.name] = [_field_json(fd.type, v) for v in value]
        else:
            out[fd.name] = _field_json(fd.type, value)
    return out


def _field_json(ty: int, value: Any) -> Any:
    if isinstance(value, Message):
        return message_json(value)
    if isinstance(value, bytes):
        return _bytes_json(value)
    return value


def _payload(msg: Any) -> str | None:
    """The value an entry carries, as text: Input/Output/notification values, call parameters, promise
    completions, set state values; a failure as ``[code] message``."""
    for fd, value in msg.ListFields():
        if fd.name in ("value", "completion_value") and isinstance(value, Message):
            content = getattr(value, "content", None)
            if isinstance(content, bytes):
                return _utf8(content) if _utf8(content) is not None else "0x" + content.hex()
        if fd.name == "parameter" and isinstance(value, bytes):
            return _utf8(value) if _utf8(value) is not None else "0x" + value.hex()
        if fd.name in ("failure", "completion_failure") and isinstance(value, Message):
            return _failure_text(int(getattr(value, "code", 0)), str(getattr(value, "message", "")))
    return None


def journal_rows(invocation_id: bytes, entries: list[tuple[int, JournalEntry]], *, raw: bool = True) -> list[Row]:
    """``sys_journal`` rows of one invocation (``entries``: ``(index, entry)`` in index order)."""
    inv = InvocationId.from_bytes(invocation_id)
    decoded: list[tuple[int, JournalEntry, Any]] = []
    completed: set[int] = set()
    child_ids: dict[int, str] = {}
    for index, entry in entries:
        try:
            msg: Any = messages.decode(entry.ty, entry.body)
        except EngineError:
            msg = None
        decoded.append((index, entry, msg))
        if msg is not None and not is_command(entry.ty):
            cid = getattr(msg, "completion_id", None)
            if isinstance(cid, int):
                completed.add(cid)
                if entry.ty == MessageType.CALL_INVOCATION_ID_COMPLETION:
                    child_ids[cid] = str(msg.invocation_id)
    rows: list[Row] = []
    for index, entry, msg in decoded:
        row: Row = {
            "id": str(inv),
            "index": index,
            "entry_type": entry_type_name(entry.ty),
            "name": None,
            "completed": None,
            "invoked_id": None,
            "invoked_target": None,
            "sleep_wakeup_at": None,
            "promise_name": None,
            "value": None,
            "entry_json": None,
            "raw_length": len(entry.body),
        }
        if raw:
            row["raw"] = entry.body
        if msg is not None:
            fields = {fd.name: v for fd, v in msg.ListFields()}
            if is_command(entry.ty):
                name = fields.get("entry_name" if entry.ty == MessageType.SEND_SIGNAL_COMMAND else "name")
                row["name"] = name or None
                if "result_completion_id" in fields:
                    row["completed"] = fields["result_completion_id"] in completed
            if entry.ty in (MessageType.CALL_COMMAND, MessageType.ONE_WAY_CALL_COMMAND):
                row["invoked_id"] = child_ids.get(int(msg.invocation_id_notification_idx))
                row["invoked_target"] = _target_of(
                    str(msg.service_name), str(msg.key) if msg.key else None, str(msg.handler_name)
                )
            if entry.ty == MessageType.SLEEP_COMMAND:
                row["sleep_wakeup_at"] = timestamp(int(msg.wake_up_time))
            if entry.ty in (
                MessageType.GET_PROMISE_COMMAND,
                MessageType.PEEK_PROMISE_COMMAND,
                MessageType.COMPLETE_PROMISE_COMMAND,
            ):
                row["promise_name"] = str(msg.key)
            row["value"] = _payload(msg)
            row["entry_json"] = json.dumps(message_json(msg), separators=(",", ":"))
        rows.append(row)
    return rows


def load_journal(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    current: bytes | None = None
    entries: list[tuple[int, JournalEntry]] = []
    for key, raw in snap.scan(keys.JOURNAL):
        budget.take("sys_journal", len(raw))
        inv = key[len(keys.JOURNAL) : len(keys.JOURNAL) + 24]
        if inv != current:
            if current is not None:
                yield from journal_rows(current, entries)
            current, entries = inv, []
        entries.append((int(_U32.unpack_from(key, len(keys.JOURNAL) + 24)[0]), codec.decode(raw)))
    if current is not None:
        yield from journal_rows(current, entries)


def invocation_detail(snap: Snapshot, invocation_id: bytes) -> dict[str, Any] | None:
    """``GET /invocations/{id}``: ``{"invocation": sys_invocation row, "journal": [sys_journal rows]}``."""
    raw = snap.get(keys.status(invocation_id))
    if raw is None:
        return None
    st: InvocationStatus = codec.decode(raw)
    caller_raw = snap.get(keys.status(st.invoked_by)) if st.invoked_by is not None else None
    caller: InvocationStatus | None = codec.decode(caller_raw) if caller_raw is not None else None
    headers = input_headers(snap, invocation_id)
    prefix = keys.journal_prefix(invocation_id)
    entries = [(int(_U32.unpack_from(k, len(prefix))[0]), codec.decode(v)) for k, v in snap.scan(prefix)]
    return {
        "invocation": invocation_row(st, input_headers=headers, caller=caller),
        "journal": journal_rows(invocation_id, entries, raw=False),
    }


# ------------------------------------------------------------------------------------------------------------------
# state, sys_inbox, sys_keyed_service_status, sys_promise
# ------------------------------------------------------------------------------------------------------------------


def load_state(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    for key, value in snap.scan(keys.STATE):
        budget.take("state", len(value))
        service, object_key, name = _split_object_key(key, len(keys.STATE))
        yield {
            "service_name": service,
            "service_key": object_key,
            "key": _utf8(name) if _utf8(name) is not None else "0x" + name.hex(),
            "key_length": len(name),
            "value_utf8": _utf8(value),
            "value": value,
            "value_length": len(value),
        }


def load_inbox(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    pending: list[tuple[str, str, int, bytes]] = []
    for key, inv in snap.scan(keys.INBOX):
        budget.take("sys_inbox", len(inv))
        service, object_key, rest = _split_object_key(key, len(keys.INBOX))
        pending.append((service, object_key, keys.parse_u64(rest), inv))
    for service, object_key, seq, inv in pending:
        raw = snap.get(keys.status(inv))
        st: InvocationStatus | None = codec.decode(raw) if raw is not None else None
        if st is None or st.status != Status.INBOXED:
            continue  # a stale entry: cancelled or killed while waiting (dropped when the key is released)
        yield {
            "service_name": service,
            "service_key": object_key,
            "id": str(InvocationId.from_bytes(inv)),
            "sequence_number": seq,
            "created_at": timestamp(st.created_at_ms),
        }


def load_keyed_status(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    for key, inv in snap.scan(keys.LOCK):
        budget.take("sys_keyed_service_status", len(inv))
        service, object_key, _ = _split_object_key(key, len(keys.LOCK))
        yield {
            "service_name": service,
            "service_key": object_key,
            "invocation_id": str(InvocationId.from_bytes(inv)),
        }


def load_promises(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    completed: dict[tuple[str, str, str], Result] = {}
    for key, raw in snap.scan(keys.PROMISE):
        budget.take("sys_promise", len(raw))
        service, object_key, raw_name = _split_object_key(key, len(keys.PROMISE))
        completed[(service, object_key, raw_name.decode())] = codec.decode(raw)
    waiting: set[tuple[str, str, str]] = set()
    for key, _ in snap.scan(keys.PROMISE_WAITER):
        budget.take("sys_promise", 0)
        service, object_key, rest = _split_object_key(key, len(keys.PROMISE_WAITER))
        (n,) = _U32.unpack_from(rest, 0)
        waiting.add((service, object_key, rest[4 : 4 + n].decode()))
    for ident in sorted(set(completed) | waiting):
        service, object_key, name = ident
        result = completed.get(ident)
        value = result.value if result is not None and result.failure is None else None
        failure = result.failure if result is not None else None
        yield {
            "service_name": service,
            "service_key": object_key,
            "key": name,
            "completed": result is not None,
            "completion_success_value": value,
            "completion_success_value_utf8": _utf8(value) if value is not None else None,
            "completion_failure": _failure_text(failure.code, failure.message) if failure is not None else None,
        }


# ------------------------------------------------------------------------------------------------------------------
# sys_service, sys_deployment (metadata rows, read from the same snapshot)
# ------------------------------------------------------------------------------------------------------------------


def load_services(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    prefix = keys.metadata("service/")
    for _, raw in snap.scan(prefix):
        budget.take("sys_service", len(raw))
        svc = service_from_row(raw)
        yield {
            "name": svc.name,
            "revision": svc.revision,
            "public": svc.public,
            "ty": SERVICE_TY_SQL.get(svc.ty, str(svc.ty)),
            "deployment_id": svc.deployment_id,
            "handlers": json.dumps(sorted(svc.handlers)),
            "idempotency_retention": svc.idempotency_retention_ms,
            "journal_retention": svc.journal_retention_ms,
            "workflow_completion_retention": svc.workflow_completion_retention_ms,
            "inactivity_timeout": svc.inactivity_timeout_ms,
            "abort_timeout": svc.abort_timeout_ms,
        }


def load_deployments(snap: Snapshot, budget: Budget) -> Iterator[Row]:
    for _, raw in snap.scan(keys.metadata("deployment/")):
        budget.take("sys_deployment", len(raw))
        dep = Deployment.from_json(raw)
        yield {
            "id": dep.id,
            "ty": "in-process" if dep.kind == "asgi" else dep.kind,
            "endpoint": dep.uri,
            "created_at": _iso_timestamp(dep.created_at),
            "protocol_type": "BidiStream" if dep.kind == "asgi" else "RequestResponse",
            "min_service_protocol_version": dep.min_protocol_version,
            "max_service_protocol_version": dep.max_protocol_version,
            "sdk_version": dep.sdk_version,
            "services": json.dumps(sorted(dep.services)),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineTable:
    name: str
    columns: Columns
    load: Loader = field(repr=False)


ENGINE_TABLES: tuple[EngineTable, ...] = (
    EngineTable(name="sys_invocation", columns=INVOCATION_COLUMNS, load=load_invocations),
    EngineTable(name="sys_journal", columns=JOURNAL_COLUMNS, load=load_journal),
    EngineTable(name="state", columns=STATE_COLUMNS, load=load_state),
    EngineTable(name="sys_inbox", columns=INBOX_COLUMNS, load=load_inbox),
    EngineTable(name="sys_keyed_service_status", columns=KEYED_STATUS_COLUMNS, load=load_keyed_status),
    EngineTable(name="sys_promise", columns=PROMISE_COLUMNS, load=load_promises),
    EngineTable(name="sys_service", columns=SERVICE_COLUMNS, load=load_services),
    EngineTable(name="sys_deployment", columns=DEPLOYMENT_COLUMNS, load=load_deployments),
)

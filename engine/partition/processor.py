"""The partition state machine: applies durable log records to the RocksDB tables, deterministically.

Design notes (read before changing anything here):

* ``apply_batch`` runs on the partition's own thread. It takes records that are already durable in the log, in
  LSN order, and writes all their table changes plus ``applied_lsn`` in ONE WriteBatch. Restart = replay the log
  from ``applied_lsn + 1``; a record is never applied twice because ``applied_lsn`` moves in the same batch.
* Apply depends only on the record and the tables: wall-clock time comes in the record (``now_ms``) and ids of
  child invocations are derived from the parent's id and the command's journal index. Effects (start an attempt,
  answer a caller, push a notification, arm a timer) are returned and dispatched after the commit; they are never
  the source of truth and ``recovery_effects`` recomputes the ones that matter after a crash.
* Attempt fencing: every record an attempt produces carries the attempt's ``epoch``; a record whose epoch is not
  the invocation's current one is dropped (it comes from an attempt the engine already gave up on).
* Single writer per key: an exclusive target holds ``LOCK[service, key]`` from start to completion; later
  invocations wait in ``INBOX[service, key, seq]`` and start in sequence order when the lock is released.
* Records for another partition's invocations (a child call, a call's result, a signal, an attach) go through
  this partition's OUTBOX in the same WriteBatch; the engine delivers them in sequence order and the target
  drops sequences it has already seen (``DEDUP``), so each is applied exactly once. Records for this partition
  are applied inline, in the same batch.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, assert_never

from engine import codec
from engine.codec import register
from engine.config import EngineConfig
from engine.errors import ProtocolError
from engine.frozen import replace
from engine.ids import (
    InvocationId,
    idempotent_invocation_id,
    parse_awakeable_id,
    partition_for,
    partition_key_for_key,
    workflow_invocation_id,
)
from engine.invoker.protocol import messages
from engine.invoker.protocol.framing import MessageType, is_command
from engine.logcontext import log_extra
from engine.partition.effects import (
    AbortAttempt,
    Effect,
    ExternalDelivery,
    MetadataChanged,
    Notify,
    NotReady,
    Outcome,
    Reply,
    ScheduleTimer,
    SendAccepted,
    SendOutbox,
    StartAttempt,
)
from engine.partition.state_edit import apply_edit_state
from engine.partition.types import (
    STATUS_ROWS,
    AckExternal,
    AppendEntries,
    AppendNotification,
    AttachSink,
    AttemptFailed,
    Cleanup,
    EditState,
    End,
    Failure,
    FireTimer,
    HandlerType,
    InvocationStatus,
    Invoke,
    JournalEntry,
    ManageInvocation,
    Op,
    OutboxDelivery,
    PutMetadata,
    Record,
    Result,
    ResumeAttempt,
    Routed,
    ServiceType,
    Sink,
    Status,
    Suspend,
    Target,
    TruncateOutbox,
)
from engine.schema import Service, retention_policy, service_from_row
from engine.storage import keys
from engine.storage.store import Store, Txn
from engine.tracing import child_traceparent

logger = logging.getLogger(__name__)

CANCEL_SIGNAL = 1
_U32 = struct.Struct(">I")

KILLED = Failure(code=409, message="killed")
CANCELED = Failure(code=409, message="canceled")


class _Rejected(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PartitionProcessor:
    """Applies records of one partition. Not thread-safe: one thread calls it."""

    def __init__(self, partition_id: int, store: Store, config: EngineConfig) -> None:
        self.partition_id = partition_id
        self.store = store
        self.config = config
        self.applied_lsn = store.applied_lsn(partition_id)
        # Invocations completed by this partition since start, by result (metrics), counted once a batch commits.
        self.completed_ok = 0
        self.completed_failed = 0
        self._batch_ok = 0
        self._batch_failed = 0

    # ==========================================================================================================
    # Entry points
    # ==========================================================================================================

    def apply_batch(self, records: Sequence[tuple[int, Record | bytes]], *, no_slowdown: bool = False) -> list[Effect]:
        """Apply durable records (LSN order) in one WriteBatch; return the effects to dispatch after it. A record
        may come as its encoded bytes (as the log stores it), decoded here.

        Nothing but the tables and ``applied_lsn`` changes, and only when the write succeeds: after a StorageError
        the same batch can be applied again (``no_slowdown``: fail rather than wait in a RocksDB write stall)."""
        txn = self.store.txn()
        effects: list[Effect] = []
        last = self.applied_lsn
        self._batch_ok = self._batch_failed = 0
        for lsn, record in records:
            if lsn <= last:
                raise AssertionError(f"partition {self.partition_id}: lsn {lsn} after {last}")
            self._apply(txn, codec.decode(record) if isinstance(record, bytes) else record, effects)
            last = lsn
        self.store.commit(txn, partition=self.partition_id, lsn=last, no_slowdown=no_slowdown)
        self.applied_lsn = last
        self.completed_ok += self._batch_ok
        self.completed_failed += self._batch_failed
        return effects

    def recovery_effects(self) -> list[Effect]:
        """After restart: attempts to (re)start, timers to arm and outbox rows to deliver for this partition."""
        effects: list[Effect] = []
        for key, _ in self.store.scan(keys.ACTIVE):
            inv = key[len(keys.ACTIVE) :]
            if not self._owns(inv):
                continue
            raw = self.store.get(keys.status(inv))
            if raw is None:
                continue
            st: InvocationStatus = codec.decode(raw)
            if st.status in (Status.INVOKED, Status.BACKING_OFF):
                effects.append(StartAttempt(invocation_id=inv, epoch=st.epoch))
        for key, _ in self.store.scan(keys.TIMER):
            wake, inv, _ = keys.parse_timer(key)
            if self._owns(inv):
                effects.append(ScheduleTimer(wake_ms=wake, key=key))
        for key, raw in self.store.scan(keys.outbox_prefix(self.partition_id)):
            seq = keys.parse_u64(key[-8:])
            effects.append(SendOutbox(partition=self.partition_id, seq=seq, record=codec.decode(raw)))
        for key, raw in self.store.scan(keys.external_prefix(self.partition_id)):
            row: _ExternalRow = codec.decode(raw)
            effects.append(
                ExternalDelivery(
                    partition=self.partition_id,
                    key=key,
                    route=row.route,
                    context=row.context,
                    invocation_id=row.invocation_id,
                    failure=row.failure,
                )
            )
        return effects

    def _owns(self, invocation_id: bytes) -> bool:
        pk = InvocationId.from_bytes(invocation_id).partition_key
        return partition_for(pk, self.config.num_partitions) == self.partition_id

    def _apply(self, txn: Txn, record: Record, effects: list[Effect]) -> None:
        match record:
            case Invoke():
                self._apply_invoke(txn, record, effects)
            case AppendEntries():
                self._apply_append_entries(txn, record, effects)
            case Suspend():
                self._apply_suspend(txn, record, effects)
            case AttemptFailed():
                self._apply_attempt_failed(txn, record, effects)
            case End():
                self._apply_end(txn, record, effects)
            case ResumeAttempt():
                self._apply_resume_attempt(txn, record, effects)
            case Cleanup():
                self._apply_cleanup(txn, record, effects)
            case PutMetadata():
                self._apply_put_metadata(txn, record, effects)
            case AppendNotification():
                self._apply_append_notification(txn, record, effects)
            case AttachSink():
                self._apply_attach_sink(txn, record, effects)
            case FireTimer():
                self._apply_fire_timer(txn, record, effects)
            case ManageInvocation():
                self._apply_manage_invocation(txn, record, effects)
            case OutboxDelivery():
                self._apply_outbox_delivery(txn, record, effects)
            case TruncateOutbox():
                self._apply_truncate_outbox(txn, record, effects)
            case AckExternal():
                self._apply_ack_external(txn, record, effects)
            case EditState():
                self._apply_edit_state(txn, record, effects)
            case _:
                assert_never(record)

    def _emit(self, txn: Txn, record: Routed, effects: list[Effect]) -> None:
        """Apply ``record`` here if this partition owns its invocation, else put it in the outbox."""
        if self._owns(record.invocation_id):
            self._apply(txn, record, effects)
            return
        seq_key = keys.outbox_seq(self.partition_id)
        raw = txn.get(seq_key)
        seq = 1 if raw is None else keys.parse_u64(raw) + 1
        txn.put(seq_key, keys.u64(seq))
        txn.put(keys.outbox(self.partition_id, seq), codec.encode(record))
        effects.append(SendOutbox(partition=self.partition_id, seq=seq, record=record))

    # ==========================================================================================================
    # Invocations: creation, start, completion
    # ==========================================================================================================

    def _apply_invoke(self, txn: Txn, r: Invoke, effects: list[Effect]) -> None:
        if r.dedup is not None:
            dedup_key = keys.dedup(self.partition_id, r.dedup.producer)
            raw = txn.get(dedup_key)
            if raw is not None and r.dedup.seq <= keys.parse_u64(raw):
                return
            txn.put(dedup_key, keys.u64(r.dedup.seq))
        existing = _load(txn, r.invocation_id)
        if existing is not None:
            self._attach_duplicate(txn, existing, r, effects)
            return
        st = InvocationStatus(
            invocation_id=r.invocation_id,
            target=r.target,
            status=Status.INVOKED,
            deployment_id=r.deployment_id,
            idempotency_key=r.idempotency_key,
            sinks=(r.sink,) if r.sink is not None and not r.one_way else (),
            created_at_ms=r.now_ms,
            modified_at_ms=r.now_ms,
            last_entry_at_ms=r.now_ms,
            retention=r.retention,
            random_seed=r.random_seed,
            execution_time_ms=r.execution_time_ms,
            one_way=r.one_way,
            invoked_by=r.caller,
            traceparent=r.traceparent,
            journal_length=1,  # the input command, written here (what _append_journal does, without a copy)
        )
        input_entry = JournalEntry(ty=MessageType.INPUT_COMMAND, body=messages.input_command(r.argument, r.headers))
        txn.put(keys.journal(r.invocation_id, 0), codec.encode(input_entry))
        if r.one_way and r.sink is not None and r.sink.token is not None:
            effects.append(
                Reply(
                    token=r.sink.token,
                    invocation_id=r.invocation_id,
                    result=SendAccepted(invocation_id=r.invocation_id, previously=False),
                )
            )
        txn.put(keys.active(r.invocation_id), b"")
        if r.execution_time_ms > r.now_ms:
            timer = keys.timer(r.execution_time_ms, r.invocation_id, keys.TIMER_START)
            txn.put(timer, b"")
            _save(txn, replace(st, status=Status.SCHEDULED))
            effects.append(ScheduleTimer(wake_ms=r.execution_time_ms, key=timer))
            return
        self._start_or_enqueue(txn, st, r.now_ms, effects)

    def _start_or_enqueue(self, txn: Txn, st: InvocationStatus, now_ms: int, effects: list[Effect]) -> None:
        target = st.target
        if target.exclusive:
            lk = target.lock_key
            assert lk is not None
            lock_key = keys.lock(target.service, lk)
            if txn.get(lock_key) is not None:
                seq_key = keys.inbox_seq(target.service, lk)
                seq, head = keys.parse_inbox_seq(txn.get(seq_key))
                txn.put(seq_key, keys.pack_inbox_seq(seq + 1, head))
                txn.put(keys.inbox(target.service, lk, seq), st.invocation_id)
                _save(txn, replace(st, status=Status.INBOXED, inbox_seq=seq, modified_at_ms=now_ms))
                return
            txn.put(lock_key, st.invocation_id)
        st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1, modified_at_ms=now_ms)
        _save(txn, st)
        effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))

    def _attach_duplicate(self, txn: Txn, st: InvocationStatus, r: Invoke, effects: list[Effect]) -> None:
        """Same invocation id again (idempotency key, workflow id): never a second execution."""
        sink = r.sink
        if sink is None:
            return
        if r.one_way:
            if sink.token is not None:
                effects.append(
                    Reply(
                        token=sink.token,
                        invocation_id=st.invocation_id,
                        result=SendAccepted(invocation_id=st.invocation_id, previously=True),
                    )
                )
            return
        if st.target.handler_ty == HandlerType.WORKFLOW and st.target.service_ty == ServiceType.WORKFLOW:
            conflict = Result(failure=Failure(code=409, message="the workflow method was already invoked"))
            self._deliver(txn, st.invocation_id, sink, conflict, effects)
            return
        if st.status == Status.COMPLETED and st.result is not None:
            self._deliver(txn, st.invocation_id, sink, st.result, effects)
            return
        _save(txn, replace(st, sinks=(*st.sinks, sink)))

    def _deliver(
        self, txn: Txn, invocation_id: bytes, sink: Sink, result: Result | None, effects: list[Effect]
    ) -> None:
        """Give ``result`` (None: not completed yet, for output peeks) to a waiting caller or parent invocation."""
        if sink.token is not None:
            effects.append(
                Reply(token=sink.token, invocation_id=invocation_id, result=NotReady() if result is None else result)
            )
            return
        if sink.external is not None:
            if result is not None and result.failure is not None:
                self._external(txn, invocation_id, sink, result.failure, effects)
            return
        if sink.parent is None:
            return
        cid = sink.completion_id
        if result is None:
            body = messages.notification(completion_id=cid, void=True)
        elif result.failure is not None:
            f = result.failure
            body = messages.notification(
                completion_id=cid, failure=(f.code, f.message), failure_metadata=list(f.metadata)
            )
        else:
            body = messages.notification(completion_id=cid, value=result.value or b"")
        self._emit(
            txn,
            AppendNotification(
                invocation_id=sink.parent,
                entry=JournalEntry(ty=sink.notification_ty, body=body),
                completion_id=cid,
            ),
            effects,
        )

    def _external(self, txn: Txn, invocation_id: bytes, sink: Sink, failure: Failure, effects: list[Effect]) -> None:
        """Keep a durable EXTERNAL row for an extension's sink until it acknowledges it (AckExternal)."""
        assert sink.external is not None
        seq_key = keys.external_seq(self.partition_id)
        raw = txn.get(seq_key)
        seq = 1 if raw is None else keys.parse_u64(raw) + 1
        txn.put(seq_key, keys.u64(seq))
        row = keys.external(self.partition_id, seq)
        delivery = ExternalDelivery(
            partition=self.partition_id,
            key=row,
            route=sink.external,
            context=sink.context,
            invocation_id=invocation_id,
            failure=failure,
        )
        txn.put(
            row,
            codec.encode(
                _ExternalRow(route=sink.external, context=sink.context, invocation_id=invocation_id, failure=failure)
            ),
        )
        effects.append(delivery)

    def _apply_ack_external(self, txn: Txn, r: AckExternal, effects: list[Effect]) -> None:
        txn.delete(r.key)

    def _apply_edit_state(self, txn: Txn, r: EditState, effects: list[Effect]) -> None:
        outcome = apply_edit_state(txn, r)
        if r.token is not None:
            effects.append(Reply(token=r.token, invocation_id=b"", result=outcome))

    def _complete(self, txn: Txn, st: InvocationStatus, result: Result, now_ms: int, effects: list[Effect]) -> None:
        retention_ms = max(st.retention.completion_ms, st.retention.journal_ms)
        expires = now_ms + retention_ms
        if result.failure is None:
            self._batch_ok += 1
        else:
            self._batch_failed += 1
        txn.delete(keys.active(st.invocation_id))
        done = replace(
            st,
            status=Status.COMPLETED,
            result=result,
            sinks=(),
            completed_at_ms=now_ms,
            modified_at_ms=now_ms,
            expires_at_ms=expires,
            waiting_completions=(),
            waiting_signals=(),
            waiting_named_signals=(),
        )
        if retention_ms <= 0:
            _delete_invocation(txn, st)
        else:
            _save(txn, done)
            txn.put(keys.retention(expires, st.invocation_id), b"")
        lk = st.target.lock_key
        if st.target.exclusive and lk is not None:
            self._release_lock(txn, st.target.service, lk, st.invocation_id, now_ms, effects)
        for sink in st.sinks:
            self._deliver(txn, st.invocation_id, sink, result, effects)

    def _release_lock(
        self, txn: Txn, service: str, key: str, holder: bytes, now_ms: int, effects: list[Effect]
    ) -> None:
        lock_key = keys.lock(service, key)
        if txn.get(lock_key) != holder:
            return
        txn.delete(lock_key)
        seq_key = keys.inbox_seq(service, key)
        next_seq, head = keys.parse_inbox_seq(txn.get(seq_key))
        if head >= next_seq:
            return  # empty inbox
        # Common case: the head row is there (nothing was taken out of the middle of the inbox): one point read. The
        # range scan behind it (lazy: it runs only if the head row is missing or stale) costs more, and its cost grows
        # with the batch's pending writes.
        prefix = keys.object_prefix(keys.INBOX, service, key)
        head_key = keys.inbox(service, key, head)
        head_row = txn.get(head_key)
        first = [(head_key, head_row)] if head_row is not None else []
        rest_from = keys.inbox(service, key, head + 1 if head_row is not None else head)
        rows = itertools.chain(first, txn.scan(rest_from, upper=keys.inbox(service, key, next_seq)))
        for inbox_key, inv in rows:
            txn.delete(inbox_key)
            head = keys.parse_u64(inbox_key[len(prefix) :]) + 1
            nxt = _load(txn, inv)
            if nxt is None or nxt.status != Status.INBOXED:
                continue
            txn.put(seq_key, keys.pack_inbox_seq(next_seq, head))
            self._start_or_enqueue(txn, nxt, now_ms, effects)
            return
        txn.put(seq_key, keys.pack_inbox_seq(next_seq, next_seq))

    # ==========================================================================================================
    # Attempts
    # ==========================================================================================================

    def _apply_append_entries(self, txn: Txn, r: AppendEntries, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.epoch != r.epoch or st.status == Status.COMPLETED:
            return
        for entry in r.entries:
            before = st
            try:
                if entry.ty == MessageType.PROPOSE_RUN_COMPLETION:
                    st = self._on_run_proposal(txn, st, entry, r.now_ms, effects)
                elif is_command(entry.ty):
                    msg = _decode_command(entry)  # before the append: a malformed command is never journaled
                    index = st.journal_length
                    st = _append_journal(txn, st, entry, r.now_ms)
                    st = self._on_command(txn, st, index, entry, msg, r.now_ms, effects)
                else:
                    logger.warning(
                        "invocation %s sent message type 0x%04x as a journal entry; ignored",
                        InvocationId.from_bytes(r.invocation_id),
                        entry.ty,
                    )
            except _Rejected as rejected:
                # The refused entry is not kept (only its journal row was written before the refusal): the next
                # attempt's SDK sends the command again, instead of replaying one the engine never carried out and
                # waiting forever for its completion.
                for index in range(before.journal_length, st.journal_length):
                    txn.delete(keys.journal(st.invocation_id, index))
                st = before
                _save(txn, replace(st, modified_at_ms=r.now_ms))
                effects.append(AbortAttempt(invocation_id=st.invocation_id))
                self._apply_attempt_failed(
                    txn,
                    AttemptFailed(
                        invocation_id=st.invocation_id,
                        epoch=st.epoch,
                        code=rejected.code,
                        message=rejected.message,
                        now_ms=r.now_ms,
                    ),
                    effects,
                )
                return
            if st.status == Status.COMPLETED:
                return  # e.g. cancelled or killed by one of its own commands
        _save(txn, replace(st, modified_at_ms=r.now_ms))

    def _on_run_proposal(
        self, txn: Txn, st: InvocationStatus, entry: JournalEntry, now_ms: int, effects: list[Effect]
    ) -> InvocationStatus:
        try:
            completion_id, body = messages.run_completion_from_proposal(entry.body)
        except ProtocolError as exc:
            raise _Rejected(571, f"bad message from the deployment: {exc}") from exc
        if completion_id in st.completed_ids:
            return st  # a proposal from a replay that raced its own completion: the first one wins
        return self._notify(txn, st, MessageType.RUN_COMPLETION, body, now_ms, effects, completion_id=completion_id)

    def _apply_suspend(self, txn: Txn, r: Suspend, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.epoch != r.epoch or st.status == Status.COMPLETED:
            return
        ready = any(c in st.completed_ids for c in r.waiting_completions) or any(
            s in st.signal_ids for s in r.waiting_signals
        )
        if ready:
            st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1, modified_at_ms=r.now_ms)
            _save(txn, st)
            effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))
            return
        if not (r.waiting_completions or r.waiting_signals or r.waiting_named_signals):
            self._apply_attempt_failed(
                txn,
                AttemptFailed(
                    invocation_id=r.invocation_id,
                    epoch=r.epoch,
                    code=571,
                    message="the SDK suspended without waiting on anything",
                    now_ms=r.now_ms,
                ),
                effects,
            )
            return
        _save(
            txn,
            replace(
                st,
                status=Status.SUSPENDED,
                waiting_completions=r.waiting_completions,
                waiting_signals=r.waiting_signals,
                waiting_named_signals=r.waiting_named_signals,
                modified_at_ms=r.now_ms,
            ),
        )

    def _apply_attempt_failed(self, txn: Txn, r: AttemptFailed, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.epoch != r.epoch or st.status == Status.COMPLETED:
            return
        policy = self._retry_policy(txn, st.target.service, st.target.handler)
        retry_count = st.retry_count + 1
        failure = Failure(code=r.code, message=r.message)
        st = replace(
            st,
            retry_count=retry_count,
            retry_count_since_last_entry=st.retry_count_since_last_entry + 1,
            last_failure=failure,
            modified_at_ms=r.now_ms,
        )
        if policy.max_attempts is not None and retry_count >= policy.max_attempts:
            inv = InvocationId.from_bytes(st.invocation_id)
            if policy.on_max_attempts == "kill":
                logger.warning(
                    "invocation %s killed after %d attempts: %s", inv, retry_count, r.message, extra=log_extra(inv)
                )
                self._kill(txn, st, failure, r.now_ms, effects)
            else:
                logger.warning(
                    "invocation %s paused after %d attempts: %s", inv, retry_count, r.message, extra=log_extra(inv)
                )
                _save(txn, replace(st, status=Status.PAUSED, epoch=st.epoch + 1))
            return
        if r.next_retry_delay_ms is not None:
            delay_ms = r.next_retry_delay_ms
        else:
            delay_ms = policy.delay_ms(retry_count)
        st = replace(st, status=Status.BACKING_OFF, epoch=st.epoch + 1, next_retry_at_ms=r.now_ms + delay_ms)
        _save(txn, st)
        effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch, delay_ms=delay_ms))

    def _apply_end(self, txn: Txn, r: End, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.epoch != r.epoch or st.status == Status.COMPLETED:
            return
        result: Result
        raw = txn.get(keys.journal(st.invocation_id, st.output_index)) if st.output_index >= 0 else None
        if raw is None:
            result = Result(failure=Failure(code=500, message="the handler ended without an output"))
        else:
            entry: JournalEntry = codec.decode(raw)
            value, failure = messages.decode_output(entry.body)
            if failure is not None:
                code, message, metadata = failure
                result = Result(failure=Failure(code=code, message=message, metadata=tuple(metadata)))
            else:
                result = Result(value=value or b"")
        self._complete(txn, st, result, r.now_ms, effects)

    def _apply_resume_attempt(self, txn: Txn, r: ResumeAttempt, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.status not in (Status.PAUSED, Status.BACKING_OFF):
            return
        st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1, retry_count=0)
        _save(txn, st)
        effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))

    # ==========================================================================================================
    # Commands
    # ==========================================================================================================

    def _on_command(
        self,
        txn: Txn,
        st: InvocationStatus,
        index: int,
        entry: JournalEntry,
        msg: Any,
        now_ms: int,
        effects: list[Effect],
    ) -> InvocationStatus:
        ty = entry.ty
        if ty == MessageType.OUTPUT_COMMAND:
            return replace(st, output_index=index)
        if ty in (
            MessageType.INPUT_COMMAND,
            MessageType.GET_EAGER_STATE_COMMAND,
            MessageType.GET_EAGER_STATE_KEYS_COMMAND,
            MessageType.RUN_COMMAND,
        ):
            return st
        if ty in _STATE_COMMANDS:
            return self._on_state_command(txn, st, ty, msg, now_ms, effects)
        if ty == MessageType.SLEEP_COMMAND:
            cid = int(msg.result_completion_id)
            timer = keys.timer(int(msg.wake_up_time), st.invocation_id, cid)
            txn.put(timer, b"")
            effects.append(ScheduleTimer(wake_ms=int(msg.wake_up_time), key=timer))
            return st
        if ty in (MessageType.CALL_COMMAND, MessageType.ONE_WAY_CALL_COMMAND):
            return self._on_call(txn, st, index, ty, msg, now_ms, effects)
        if ty in (MessageType.SEND_SIGNAL_COMMAND, MessageType.COMPLETE_AWAKEABLE_COMMAND):
            return self._on_signal_command(txn, st, ty, msg, now_ms, effects)
        if ty in (MessageType.ATTACH_INVOCATION_COMMAND, MessageType.GET_INVOCATION_OUTPUT_COMMAND):
            target = self._attach_target(txn, msg)
            attach = ty == MessageType.ATTACH_INVOCATION_COMMAND
            sink = Sink(
                parent=st.invocation_id,
                completion_id=int(msg.result_completion_id),
                notification_ty=(
                    MessageType.ATTACH_INVOCATION_COMPLETION if attach else MessageType.GET_INVOCATION_OUTPUT_COMPLETION
                ),
            )
            _save(txn, st)
            self._emit(txn, AttachSink(invocation_id=target, sink=sink, peek=not attach), effects)
            return _reload(txn, st)
        if ty in (
            MessageType.GET_PROMISE_COMMAND,
            MessageType.PEEK_PROMISE_COMMAND,
            MessageType.COMPLETE_PROMISE_COMMAND,
        ):
            return self._on_promise_command(txn, st, ty, msg, now_ms, effects)
        raise _Rejected(571, f"command type 0x{ty:04x} is not supported by this engine")

    def _on_state_command(
        self, txn: Txn, st: InvocationStatus, ty: int, msg: Any, now_ms: int, effects: list[Effect]
    ) -> InvocationStatus:
        target = st.target
        if not target.keyed or target.key is None:
            raise _Rejected(400, f"service {target.service} has no state (it is not a virtual object or workflow)")
        service, key = target.service, target.key
        if ty == MessageType.SET_STATE_COMMAND:
            txn.put(keys.state(service, key, bytes(msg.key)), bytes(msg.value.content))
        elif ty == MessageType.CLEAR_STATE_COMMAND:
            txn.delete(keys.state(service, key, bytes(msg.key)))
        elif ty == MessageType.CLEAR_ALL_STATE_COMMAND:
            for k, _ in list(txn.scan(keys.object_prefix(keys.STATE, service, key))):
                txn.delete(k)
        elif ty == MessageType.GET_LAZY_STATE_COMMAND:
            cid = int(msg.result_completion_id)
            value = txn.get(keys.state(service, key, bytes(msg.key)))
            body = (
                messages.notification(completion_id=cid, void=True)
                if value is None
                else messages.notification(completion_id=cid, value=value)
            )
            return self._notify(
                txn, st, MessageType.GET_LAZY_STATE_COMPLETION, body, now_ms, effects, completion_id=cid
            )
        else:  # GET_LAZY_STATE_KEYS
            cid = int(msg.result_completion_id)
            prefix = keys.object_prefix(keys.STATE, service, key)
            names = [k[len(prefix) :] for k, _ in txn.scan(prefix)]
            body = messages.notification(completion_id=cid, state_keys=names)
            return self._notify(
                txn, st, MessageType.GET_LAZY_STATE_KEYS_COMPLETION, body, now_ms, effects, completion_id=cid
            )
        return st

    def _on_call(
        self,
        txn: Txn,
        st: InvocationStatus,
        index: int,
        ty: int,
        msg: Any,
        now_ms: int,
        effects: list[Effect],
    ) -> InvocationStatus:
        call = ty == MessageType.CALL_COMMAND
        service = self._service(txn, str(msg.service_name))
        if service is None:
            raise _Rejected(404, f"service '{msg.service_name}' not found")
        handler = service.handlers.get(str(msg.handler_name))
        if handler is None:
            raise _Rejected(404, f"the service '{service.name}' has no handler '{msg.handler_name}'")
        key: str | None = str(msg.key) if service.keyed else None
        if service.keyed and not key:
            raise _Rejected(400, f"calling {service.name}/{handler.name} needs an object key")
        idempotency_key = str(msg.idempotency_key) if msg.HasField("idempotency_key") else None
        if handler.ty == HandlerType.WORKFLOW and key is not None:
            child = workflow_invocation_id(service.name, key)
        elif idempotency_key is not None:
            child = idempotent_invocation_id(service.name, key, handler.name, idempotency_key)
        else:
            digest = hashlib.sha256(st.invocation_id + _U32.pack(index)).digest()
            pk = partition_key_for_key(key) if key is not None else int.from_bytes(digest[16:24], "big")
            child = InvocationId(partition_key=pk, uuid=digest[:16])
        invoke = Invoke(
            invocation_id=child.to_bytes(),
            target=Target(
                service=service.name,
                handler=handler.name,
                key=key,
                service_ty=service.ty,
                handler_ty=handler.ty if service.keyed else HandlerType.EXCLUSIVE,
            ),
            argument=bytes(msg.parameter),
            headers=tuple((h.key, h.value) for h in msg.headers),
            idempotency_key=idempotency_key,
            sink=(Sink(parent=st.invocation_id, completion_id=int(msg.result_completion_id)) if call else None),
            one_way=not call,
            deployment_id=service.deployment_id,
            retention=retention_policy(
                service=service,
                handler=handler.name,
                idempotent=idempotency_key is not None,
                defaults=self.config.invocation,
            ),
            execution_time_ms=0 if call else int(msg.invoke_time),
            now_ms=now_ms,
            random_seed=int.from_bytes(hashlib.sha256(child.to_bytes()).digest()[:8], "little"),
            caller=st.invocation_id,
            traceparent=child_traceparent(
                st.traceparent, st.invocation_id, st.random_seed, ((h.key, h.value) for h in msg.headers)
            ),
        )
        if call:
            st = replace(st, children=(*st.children, child.to_bytes()))
        _save(txn, st)
        self._emit(txn, invoke, effects)
        st = _reload(txn, st)
        id_cid = int(msg.invocation_id_notification_idx)
        body = messages.notification(completion_id=id_cid, invocation_id=str(child))
        return self._notify(
            txn, st, MessageType.CALL_INVOCATION_ID_COMPLETION, body, now_ms, effects, completion_id=id_cid
        )

    def _on_signal_command(
        self, txn: Txn, st: InvocationStatus, ty: int, msg: Any, now_ms: int, effects: list[Effect]
    ) -> InvocationStatus:
        if ty == MessageType.SEND_SIGNAL_COMMAND:
            try:
                target = InvocationId.parse(str(msg.target_invocation_id)).to_bytes()
            except ValueError as exc:
                raise _Rejected(400, f"SendSignal: {exc}") from exc
            which = msg.WhichOneof("signal_id")
            if which is None:
                raise _Rejected(400, "SendSignal: neither a signal index nor a signal name")
            if which == "idx" and int(msg.idx) == CANCEL_SIGNAL:
                _save(txn, st)
                self._emit(txn, ManageInvocation(invocation_id=target, op=Op.CANCEL, now_ms=now_ms), effects)
                return _reload(txn, st)
            signal_id = int(msg.idx) if which == "idx" else None
            signal_name = str(msg.name) if which == "name" else None
            result = msg.WhichOneof("result")
            value = bytes(msg.value.content) if result == "value" else None
            failure = (int(msg.failure.code), str(msg.failure.message)) if result == "failure" else None
        else:
            try:
                parsed, signal_id, legacy = parse_awakeable_id(str(msg.awakeable_id))
            except ValueError as exc:
                raise _Rejected(400, f"CompleteAwakeable: {exc}") from exc
            if legacy:
                raise _Rejected(400, "legacy prom_1 awakeable ids (protocol <= V3 journals) are not supported")
            target = parsed.to_bytes()
            signal_name = None
            result = msg.WhichOneof("result")
            value = bytes(msg.value.content) if result == "value" else None
            failure = (int(msg.failure.code), str(msg.failure.message)) if result == "failure" else None
        body = messages.notification(
            signal_id=signal_id,
            signal_name=signal_name,
            void=value is None and failure is None,
            value=value,
            failure=failure,
        )
        _save(txn, st)
        self._emit(
            txn,
            AppendNotification(
                invocation_id=target,
                entry=JournalEntry(ty=MessageType.SIGNAL_NOTIFICATION, body=body),
                signal_id=signal_id,
                signal_name=signal_name,
            ),
            effects,
        )
        return _reload(txn, st)

    def _attach_target(self, txn: Txn, msg: Any) -> bytes:
        which = msg.WhichOneof("target")
        try:
            if which == "invocation_id":
                return InvocationId.parse(str(msg.invocation_id)).to_bytes()
            if which == "workflow_target":
                t = msg.workflow_target
                return workflow_invocation_id(str(t.workflow_name), str(t.workflow_key)).to_bytes()
            if which == "idempotent_request_target":
                t = msg.idempotent_request_target
                key = str(t.service_key) if t.HasField("service_key") else None
                return idempotent_invocation_id(
                    str(t.service_name), key, str(t.handler_name), str(t.idempotency_key)
                ).to_bytes()
        except ValueError as exc:
            raise _Rejected(400, f"bad attach target: {exc}") from exc
        raise _Rejected(400, "attach without a target")

    def _on_promise_command(
        self, txn: Txn, st: InvocationStatus, ty: int, msg: Any, now_ms: int, effects: list[Effect]
    ) -> InvocationStatus:
        target = st.target
        if target.service_ty != ServiceType.WORKFLOW or target.key is None:
            raise _Rejected(400, "durable promises exist only in workflows")
        name = str(msg.key)
        cid = int(msg.result_completion_id)
        promise_key = keys.promise(target.service, target.key, name)
        raw = txn.get(promise_key)
        stored: Result | None = None if raw is None else codec.decode(raw)
        if ty == MessageType.PEEK_PROMISE_COMMAND:
            body = _result_notification(cid, stored, void_if_none=True)
            return self._notify(txn, st, MessageType.PEEK_PROMISE_COMPLETION, body, now_ms, effects, completion_id=cid)
        if ty == MessageType.GET_PROMISE_COMMAND:
            if stored is not None:
                body = _result_notification(cid, stored)
                return self._notify(
                    txn, st, MessageType.GET_PROMISE_COMPLETION, body, now_ms, effects, completion_id=cid
                )
            txn.put(keys.promise_waiter(target.service, target.key, name, st.invocation_id, cid), b"")
            return st
        # COMPLETE_PROMISE
        if stored is not None:
            body = messages.notification(completion_id=cid, failure=(409, "promise was already completed"))
            return self._notify(
                txn, st, MessageType.COMPLETE_PROMISE_COMPLETION, body, now_ms, effects, completion_id=cid
            )
        which = msg.WhichOneof("completion")
        if which == "completion_failure":
            f = msg.completion_failure
            completed = Result(failure=Failure(code=int(f.code), message=str(f.message)))
        else:
            completed = Result(value=bytes(msg.completion_value.content))
        txn.put(promise_key, codec.encode(completed))
        body = messages.notification(completion_id=cid, void=True)
        st = self._notify(txn, st, MessageType.COMPLETE_PROMISE_COMPLETION, body, now_ms, effects, completion_id=cid)
        prefix = keys.promise_waiters(target.service, target.key, name)
        _save(txn, st)
        for waiter_key, _ in list(txn.scan(prefix)):
            txn.delete(waiter_key)
            rest = waiter_key[len(prefix) :]
            waiter, waiter_cid = rest[:24], int(_U32.unpack(rest[24:28])[0])
            self._emit(
                txn,
                AppendNotification(
                    invocation_id=waiter,
                    entry=JournalEntry(
                        ty=MessageType.GET_PROMISE_COMPLETION, body=_result_notification(waiter_cid, completed)
                    ),
                    completion_id=waiter_cid,
                ),
                effects,
            )
        return _reload(txn, st)

    # ==========================================================================================================
    # Notifications, attach, timers
    # ==========================================================================================================

    def _notify(
        self,
        txn: Txn,
        st: InvocationStatus,
        ty: int,
        body: bytes,
        now_ms: int,
        effects: list[Effect],
        *,
        completion_id: int | None = None,
        signal_id: int | None = None,
    ) -> InvocationStatus:
        """Append a notification; push it to the open attempt, or resume a suspension waiting for it."""
        entry = JournalEntry(ty=ty, body=body)
        index = st.journal_length
        st = _append_journal(txn, st, entry, now_ms)
        if completion_id is not None:
            st = replace(st, completed_ids=(*st.completed_ids, completion_id))
        if signal_id is not None:
            st = replace(st, signal_ids=(*st.signal_ids, signal_id))
        if st.status == Status.SUSPENDED:
            if (completion_id is not None and completion_id in st.waiting_completions) or (
                signal_id is not None and signal_id in st.waiting_signals
            ):
                st = replace(
                    st,
                    status=Status.INVOKED,
                    epoch=st.epoch + 1,
                    waiting_completions=(),
                    waiting_signals=(),
                    waiting_named_signals=(),
                )
                effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))
        elif st.status == Status.INVOKED:
            effects.append(Notify(invocation_id=st.invocation_id, epoch=st.epoch, index=index, entry=entry))
        return st

    def _apply_append_notification(self, txn: Txn, r: AppendNotification, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.status == Status.COMPLETED:
            if r.token is not None:
                effects.append(
                    Reply(
                        token=r.token,
                        invocation_id=r.invocation_id,
                        result=Outcome(status=404, message="the invocation does not exist or has completed"),
                    )
                )
            return
        if r.signal_id is not None and r.signal_id in st.signal_ids:
            if r.token is not None:
                effects.append(
                    Reply(
                        token=r.token,
                        invocation_id=r.invocation_id,
                        result=Outcome(status=409, message="the awakeable was already completed"),
                    )
                )
            return
        if r.completion_id is not None and r.completion_id in st.completed_ids:
            return  # a redelivered result
        st = self._notify(
            txn,
            st,
            r.entry.ty,
            r.entry.body,
            st.modified_at_ms,
            effects,
            completion_id=r.completion_id,
            signal_id=r.signal_id,
        )
        _save(txn, st)
        if r.token is not None:
            effects.append(Reply(token=r.token, invocation_id=r.invocation_id, result=Outcome(status=202)))

    def _apply_attach_sink(self, txn: Txn, r: AttachSink, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None:
            missing = Result(failure=Failure(code=404, message="invocation not found"))
            if r.sink.token is not None:
                effects.append(
                    Reply(token=r.sink.token, invocation_id=r.invocation_id, result=Outcome(status=404, message=""))
                )
            else:
                self._deliver(txn, r.invocation_id, r.sink, missing, effects)
            return
        if st.status == Status.COMPLETED and st.result is not None:
            self._deliver(txn, r.invocation_id, r.sink, st.result, effects)
            return
        if r.peek:
            self._deliver(txn, r.invocation_id, r.sink, None, effects)
            return
        _save(txn, replace(st, sinks=(*st.sinks, r.sink)))

    def _apply_fire_timer(self, txn: Txn, r: FireTimer, effects: list[Effect]) -> None:
        if txn.get(r.key) is None:
            return  # already fired
        txn.delete(r.key)
        wake, inv, cid = keys.parse_timer(r.key)
        st = _load(txn, inv)
        if st is None or st.status == Status.COMPLETED:
            return
        if cid == keys.TIMER_START:
            if st.status == Status.SCHEDULED:
                self._start_or_enqueue(txn, st, wake, effects)
            return
        body = messages.notification(completion_id=cid, void=True)
        st = self._notify(txn, st, MessageType.SLEEP_COMPLETION, body, wake, effects, completion_id=cid)
        _save(txn, st)

    # ==========================================================================================================
    # Management: cancel, kill, purge, pause, resume
    # ==========================================================================================================

    def _apply_manage_invocation(self, txn: Txn, r: ManageInvocation, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        outcome = self._manage(txn, st, r, effects)
        if r.token is not None:
            effects.append(Reply(token=r.token, invocation_id=r.invocation_id, result=outcome))

    def _manage(self, txn: Txn, st: InvocationStatus | None, r: ManageInvocation, effects: list[Effect]) -> Outcome:
        if st is None:
            return Outcome(status=404, message="invocation not found")
        op = r.op
        now = r.now_ms
        if op == Op.PURGE:
            if st.status != Status.COMPLETED:
                return Outcome(status=409, message="only completed invocations can be purged")
            txn.delete(keys.retention(st.expires_at_ms, st.invocation_id))
            self._forget(txn, st)
            return Outcome(status=200)
        if st.status == Status.COMPLETED:
            return Outcome(status=409, message="the invocation has already completed")
        if op == Op.CANCEL:
            if st.status in (Status.INBOXED, Status.SCHEDULED):
                self._remove_pending(txn, st)
                self._complete(txn, st, Result(failure=CANCELED), now, effects)
                return Outcome(status=200)
            if CANCEL_SIGNAL in st.signal_ids:
                return Outcome(status=202, message="cancellation already requested")
            body = messages.notification(signal_id=CANCEL_SIGNAL, void=True)
            st = self._notify(txn, st, MessageType.SIGNAL_NOTIFICATION, body, now, effects, signal_id=CANCEL_SIGNAL)
            if st.status in (Status.PAUSED, Status.BACKING_OFF):
                st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1)
                effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))
            _save(txn, st)
            return Outcome(status=202)
        if op == Op.KILL:
            self._remove_pending(txn, st)
            self._kill(txn, st, KILLED, now, effects)
            return Outcome(status=200)
        if op == Op.PAUSE:
            if st.status == Status.PAUSED:
                return Outcome(status=200, message="already paused")
            if st.status in (Status.INBOXED, Status.SCHEDULED):
                return Outcome(status=409, message="the invocation is not running")
            effects.append(AbortAttempt(invocation_id=st.invocation_id))
            _save(txn, replace(st, status=Status.PAUSED, epoch=st.epoch + 1, modified_at_ms=now))
            return Outcome(status=202)
        if op == Op.RESUME:
            if st.status in (Status.PAUSED, Status.BACKING_OFF, Status.SUSPENDED):
                st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1, retry_count=0, modified_at_ms=now)
                _save(txn, st)
                effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))
            return Outcome(status=200)
        return Outcome(status=400, message=f"unknown operation {op}")

    def _kill(self, txn: Txn, st: InvocationStatus, failure: Failure, now_ms: int, effects: list[Effect]) -> None:
        effects.append(AbortAttempt(invocation_id=st.invocation_id))
        children = st.children
        self._complete(txn, st, Result(failure=failure), now_ms, effects)
        for child in children:
            self._emit(txn, ManageInvocation(invocation_id=child, op=Op.KILL, now_ms=now_ms), effects)

    def _remove_pending(self, txn: Txn, st: InvocationStatus) -> None:
        """Take an inboxed / scheduled invocation out of its queue (it never held the lock)."""
        lk = st.target.lock_key
        if st.status == Status.INBOXED and lk is not None:
            txn.delete(keys.inbox(st.target.service, lk, st.inbox_seq))
        if st.status == Status.SCHEDULED:
            txn.delete(keys.timer(st.execution_time_ms, st.invocation_id, keys.TIMER_START))

    # ==========================================================================================================
    # Retention, metadata, outbox
    # ==========================================================================================================

    def _apply_cleanup(self, txn: Txn, r: Cleanup, effects: list[Effect]) -> None:
        for key, _ in list(txn.scan(keys.RETENTION, upper=keys.retention_upto(r.now_ms))):
            inv = key[len(keys.RETENTION) + 8 :]
            if not self._owns(inv):
                continue
            txn.delete(key)
            st = _load(txn, inv)
            if st is not None and st.status == Status.COMPLETED and st.expires_at_ms <= r.now_ms:
                self._forget(txn, st)

    def _forget(self, txn: Txn, st: InvocationStatus) -> None:
        """Delete a completed invocation; a workflow's ``run`` takes the workflow's state and promises along."""
        _delete_invocation(txn, st)
        t = st.target
        if t.service_ty == ServiceType.WORKFLOW and t.handler_ty == HandlerType.WORKFLOW and t.key is not None:
            for table in (keys.STATE, keys.PROMISE, keys.PROMISE_WAITER):
                for k, _ in list(txn.scan(keys.object_prefix(table, t.service, t.key))):
                    txn.delete(k)

    def _apply_put_metadata(self, txn: Txn, r: PutMetadata, effects: list[Effect]) -> None:
        if r.value is None:
            txn.delete(keys.metadata(r.key))
        else:
            txn.put(keys.metadata(r.key), r.value)
        effects.append(MetadataChanged(key=r.key, value=r.value))

    def _apply_outbox_delivery(self, txn: Txn, r: OutboxDelivery, effects: list[Effect]) -> None:
        producer = keys.dedup(self.partition_id, f"outbox/{r.source}")
        raw = txn.get(producer)
        if raw is not None and r.seq <= keys.parse_u64(raw):
            return
        txn.put(producer, keys.u64(r.seq))
        self._apply(txn, r.record, effects)

    def _apply_truncate_outbox(self, txn: Txn, r: TruncateOutbox, effects: list[Effect]) -> None:
        prefix = keys.outbox_prefix(self.partition_id)
        for k, _ in list(txn.scan(prefix, upper=keys.outbox(self.partition_id, r.seq + 1))):
            txn.delete(k)

    # ==========================================================================================================
    # Helpers
    # ==========================================================================================================

    def _service(self, txn: Txn, name: str) -> Service | None:
        raw = txn.get(keys.metadata(f"service/{name}"))
        return None if raw is None else service_from_row(raw)

    def _retry_policy(self, txn: Txn, service: str, handler: str) -> _RetryPolicy:
        base = self.config.invoker.retry_policy
        values: dict[str, Any] = {
            "initial_ms": base.initial_interval.total_seconds() * 1000,
            "factor": base.exponentiation_factor,
            "max_ms": base.max_interval.total_seconds() * 1000,
            "max_attempts": base.max_attempts,
            "on_max_attempts": base.on_max_attempts,
        }
        raw = txn.get(keys.metadata(f"service/{service}"))
        if raw is not None:
            # Per-service then per-handler overrides from the deployment's manifest (retryPolicy* fields).
            svc = json.loads(raw)
            overrides: dict[str, Any] = dict(svc.get("retry_policy") or {})
            overrides.update((svc.get("handler_retry_policy") or {}).get(handler) or {})
            for name, value in overrides.items():
                if value is not None and name in values:
                    values[name] = value
        return _RetryPolicy(**values)


_STATE_COMMANDS = frozenset(
    {
        MessageType.SET_STATE_COMMAND,
        MessageType.CLEAR_STATE_COMMAND,
        MessageType.CLEAR_ALL_STATE_COMMAND,
        MessageType.GET_LAZY_STATE_COMMAND,
        MessageType.GET_LAZY_STATE_KEYS_COMMAND,
    }
)


@register(250)
@dataclass(frozen=True, slots=True, kw_only=True)
class _ExternalRow:
    route: str
    context: bytes
    invocation_id: bytes
    failure: Failure


@dataclass(frozen=True, slots=True, kw_only=True)
class _RetryPolicy:
    initial_ms: float
    factor: float
    max_ms: float
    max_attempts: int | None
    on_max_attempts: str

    def delay_ms(self, retry_count: int) -> int:
        return int(min(self.initial_ms * self.factor ** (retry_count - 1), self.max_ms))


def _result_notification(cid: int, result: Result | None, *, void_if_none: bool = False) -> bytes:
    if result is None:
        assert void_if_none
        return messages.notification(completion_id=cid, void=True)
    if result.failure is not None:
        f = result.failure
        return messages.notification(completion_id=cid, failure=(f.code, f.message), failure_metadata=list(f.metadata))
    return messages.notification(completion_id=cid, value=result.value or b"")


def _load(txn: Txn, invocation_id: bytes) -> InvocationStatus | None:
    raw = txn.get(keys.status(invocation_id))
    return None if raw is None else STATUS_ROWS.decode(raw)


def _reload(txn: Txn, st: InvocationStatus) -> InvocationStatus:
    """The row after an inline apply that may have changed it (e.g. an invocation resolving its own awakeable)."""
    fresh = _load(txn, st.invocation_id)
    assert fresh is not None
    return fresh


def _save(txn: Txn, st: InvocationStatus) -> None:
    txn.put(keys.status(st.invocation_id), STATUS_ROWS.encode(st))


def _decode_command(entry: JournalEntry) -> Any:
    """The command's message, or ``_Rejected(571)`` when the deployment sent a body that is not valid for its type
    (or a command type this engine has no schema for). Checked before the append: a journaled entry is replayed to
    the SDK on every later attempt, and End reads the Output command back."""
    try:
        msg: Any = messages.decode(entry.ty, entry.body)
    except ProtocolError as exc:
        raise _Rejected(571, f"bad command from the deployment: {exc}") from exc
    if entry.ty == MessageType.OUTPUT_COMMAND and msg.WhichOneof("result") is None:
        raise _Rejected(571, "bad command from the deployment: OutputCommandMessage without value or failure")
    return msg


def _append_journal(txn: Txn, st: InvocationStatus, entry: JournalEntry, now_ms: int) -> InvocationStatus:
    txn.put(keys.journal(st.invocation_id, st.journal_length), codec.encode(entry))
    return replace(st, journal_length=st.journal_length + 1, last_entry_at_ms=now_ms, retry_count_since_last_entry=0)


def _delete_invocation(txn: Txn, st: InvocationStatus) -> None:
    txn.delete(keys.status(st.invocation_id))
    txn.delete(keys.active(st.invocation_id))
    for index in range(st.journal_length):
        txn.delete(keys.journal(st.invocation_id, index))

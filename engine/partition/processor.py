"""The partition state machine: applies durable log records to the RocksDB tables, deterministically.

Design notes (read before changing anything here):

* ``apply_batch`` runs on the partition's own thread. It takes records that are already durable in the log, in
  LSN order, and writes all their table changes plus ``applied_lsn`` in ONE WriteBatch. Restart = replay the log
  from ``applied_lsn + 1``; a record is never applied twice because ``applied_lsn`` moves in the same batch.
* Apply depends only on the record and the tables: wall-clock time comes in the record (``now_ms``) and random
  values are chosen by the proposer. Effects (start an attempt, answer a caller, push a notification) are returned
  to the caller and dispatched after the commit; they are never the source of truth.
* Attempt fencing: every record an attempt produces carries the attempt's ``epoch``; a record whose epoch is not
  the invocation's current one is dropped (it comes from an attempt the engine already gave up on).
* Single writer per key: an exclusive target holds ``LOCK[service, key]`` from start to completion; later
  invocations wait in ``INBOX[service, key, seq]`` and start in sequence order when the lock is released.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any, assert_never

from engine import codec
from engine.config import EngineConfig
from engine.ids import InvocationId, partition_for
from engine.invoker.protocol import messages
from engine.invoker.protocol.framing import MessageType, is_command
from engine.partition.effects import (
    Effect,
    MetadataChanged,
    Notify,
    Reply,
    SendAccepted,
    StartAttempt,
)
from engine.partition.types import (
    AppendEntries,
    AttemptFailed,
    Cleanup,
    End,
    Failure,
    InvocationStatus,
    Invoke,
    JournalEntry,
    PutMetadata,
    Record,
    Result,
    ResumeAttempt,
    Status,
    Suspend,
)
from engine.storage import keys
from engine.storage.store import Store, Txn

logger = logging.getLogger(__name__)

CANCEL_SIGNAL = 1


class PartitionProcessor:
    """Applies records of one partition. Not thread-safe: one thread calls it."""

    def __init__(self, partition_id: int, store: Store, config: EngineConfig) -> None:
        self.partition_id = partition_id
        self.store = store
        self.config = config
        self.applied_lsn = store.applied_lsn(partition_id)

    # ------------------------------------------------------------------------------------------------------
    # Entry points
    # ------------------------------------------------------------------------------------------------------

    def apply_batch(self, records: list[tuple[int, Record]]) -> list[Effect]:
        """Apply durable records (LSN order) in one WriteBatch; return the effects to dispatch after it."""
        txn = self.store.txn()
        effects: list[Effect] = []
        last = self.applied_lsn
        for lsn, record in records:
            if lsn <= last:
                raise AssertionError(f"partition {self.partition_id}: lsn {lsn} after {last}")
            self._apply(txn, record, effects)
            last = lsn
        self.store.commit(txn, partition=self.partition_id, lsn=last)
        self.applied_lsn = last
        return effects

    def recovery_effects(self) -> list[Effect]:
        """After restart: attempts to (re)start for the invocations this partition owns."""
        effects: list[Effect] = []
        n = self.config.num_partitions
        for key, _ in self.store.scan(keys.ACTIVE):
            inv = key[len(keys.ACTIVE) :]
            if partition_for(InvocationId.from_bytes(inv).partition_key, n) != self.partition_id:
                continue
            raw = self.store.get(keys.status(inv))
            if raw is None:
                continue
            st: InvocationStatus = codec.decode(raw)
            if st.status in (Status.INVOKED, Status.BACKING_OFF):
                effects.append(StartAttempt(invocation_id=inv, epoch=st.epoch))
        return effects

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
            case _:
                assert_never(record)

    # ------------------------------------------------------------------------------------------------------
    # Records
    # ------------------------------------------------------------------------------------------------------

    def _apply_invoke(self, txn: Txn, r: Invoke, effects: list[Effect]) -> None:
        if r.dedup is not None:
            raw = txn.get(keys.dedup(r.dedup.producer))
            if raw is not None and r.dedup.seq <= keys.parse_u64(raw):
                return
            txn.put(keys.dedup(r.dedup.producer), keys.u64(r.dedup.seq))
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
        )
        st = _append_journal(
            txn,
            st,
            JournalEntry(ty=MessageType.INPUT_COMMAND, body=messages.input_command(r.argument, r.headers)),
            r.now_ms,
        )
        if r.one_way and r.sink is not None and r.sink.token is not None:
            effects.append(
                Reply(
                    token=r.sink.token,
                    invocation_id=r.invocation_id,
                    result=SendAccepted(invocation_id=r.invocation_id, previously=False),
                )
            )
        txn.put(keys.active(r.invocation_id), b"")
        target = r.target
        if target.exclusive:
            assert target.key is not None
            lock_key = keys.lock(target.service, target.key)
            if txn.get(lock_key) is not None:
                seq_key = keys.inbox_seq(target.service, target.key)
                raw_seq = txn.get(seq_key)
                seq = 0 if raw_seq is None else keys.parse_u64(raw_seq)
                txn.put(seq_key, keys.u64(seq + 1))
                txn.put(keys.inbox(target.service, target.key, seq), r.invocation_id)
                _save(txn, replace(st, status=Status.INBOXED, inbox_seq=seq))
                return
            txn.put(lock_key, r.invocation_id)
        st = replace(st, epoch=1)
        _save(txn, st)
        effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))

    def _attach_duplicate(self, txn: Txn, st: InvocationStatus, r: Invoke, effects: list[Effect]) -> None:
        """Same invocation id again (idempotency key): never a second execution."""
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
        if st.status == Status.COMPLETED and st.result is not None:
            if sink.token is not None:
                effects.append(Reply(token=sink.token, invocation_id=st.invocation_id, result=st.result))
            return
        _save(txn, replace(st, sinks=(*st.sinks, sink)))

    def _apply_append_entries(self, txn: Txn, r: AppendEntries, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.epoch != r.epoch or st.status == Status.COMPLETED:
            return
        for entry in r.entries:
            if entry.ty == MessageType.PROPOSE_RUN_COMPLETION:
                st = self._on_run_proposal(txn, st, entry, r.now_ms, effects)
            elif is_command(entry.ty):
                index = st.journal_length
                st = _append_journal(txn, st, entry, r.now_ms)
                st = self._on_command(txn, st, index, entry, r.now_ms, effects)
            else:
                logger.warning(
                    "invocation %s sent message type 0x%04x as a journal entry; ignored",
                    InvocationId.from_bytes(r.invocation_id),
                    entry.ty,
                )
        _save(txn, replace(st, modified_at_ms=r.now_ms))

    def _on_run_proposal(
        self, txn: Txn, st: InvocationStatus, entry: JournalEntry, now_ms: int, effects: list[Effect]
    ) -> InvocationStatus:
        completion_id, body = messages.run_completion_from_proposal(entry.body)
        if completion_id in st.completed_ids:
            return st  # a proposal from a replay that raced its own completion: the first one wins
        return self._notify(
            txn, st, MessageType.RUN_COMPLETION, body, now_ms, effects, completion_id=completion_id
        )

    def _on_command(
        self,
        txn: Txn,
        st: InvocationStatus,
        index: int,
        entry: JournalEntry,
        now_ms: int,
        effects: list[Effect],
    ) -> InvocationStatus:
        ty = entry.ty
        target = st.target
        if ty == MessageType.OUTPUT_COMMAND:
            return replace(st, output_index=index)
        if ty in (
            MessageType.INPUT_COMMAND,
            MessageType.GET_EAGER_STATE_COMMAND,
            MessageType.GET_EAGER_STATE_KEYS_COMMAND,
            MessageType.RUN_COMMAND,
        ):
            return st
        if ty in (
            MessageType.SET_STATE_COMMAND,
            MessageType.CLEAR_STATE_COMMAND,
            MessageType.CLEAR_ALL_STATE_COMMAND,
            MessageType.GET_LAZY_STATE_COMMAND,
            MessageType.GET_LAZY_STATE_KEYS_COMMAND,
        ):
            if not target.keyed or target.key is None:
                logger.warning("state command from unkeyed service %s ignored", target.service)
                return st
            msg = messages.decode(ty, entry.body)
            service, key = target.service, target.key
            if ty == MessageType.SET_STATE_COMMAND:
                txn.put(keys.state(service, key, bytes(msg.key)), bytes(msg.value.content))  # type: ignore[attr-defined]
            elif ty == MessageType.CLEAR_STATE_COMMAND:
                txn.delete(keys.state(service, key, bytes(msg.key)))  # type: ignore[attr-defined]
            elif ty == MessageType.CLEAR_ALL_STATE_COMMAND:
                for k, _ in list(txn.scan(keys.object_prefix(keys.STATE, service, key))):
                    txn.delete(k)
            elif ty == MessageType.GET_LAZY_STATE_COMMAND:
                cid = int(msg.result_completion_id)  # type: ignore[attr-defined]
                value = txn.get(keys.state(service, key, bytes(msg.key)))  # type: ignore[attr-defined]
                body = (
                    messages.notification(completion_id=cid, void=True)
                    if value is None
                    else messages.notification(completion_id=cid, value=value)
                )
                return self._notify(
                    txn, st, MessageType.GET_LAZY_STATE_COMPLETION, body, now_ms, effects, completion_id=cid
                )
            else:  # GET_LAZY_STATE_KEYS
                cid = int(msg.result_completion_id)  # type: ignore[attr-defined]
                prefix = keys.object_prefix(keys.STATE, service, key)
                names = [k[len(prefix) :] for k, _ in txn.scan(prefix)]
                body = messages.notification(completion_id=cid, state_keys=names)
                return self._notify(
                    txn,
                    st,
                    MessageType.GET_LAZY_STATE_KEYS_COMPLETION,
                    body,
                    now_ms,
                    effects,
                    completion_id=cid,
                )
            return st
        logger.warning(
            "invocation %s: command 0x%04x is not supported yet; stored in the journal",
            InvocationId.from_bytes(st.invocation_id),
            ty,
        )
        return st

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
        else:
            effects.append(Notify(invocation_id=st.invocation_id, epoch=st.epoch, index=index, entry=entry))
        return st

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
        max_attempts = policy.max_attempts
        if max_attempts is not None and retry_count >= max_attempts:
            if policy.on_max_attempts == "kill":
                logger.warning(
                    "invocation %s killed after %d attempts: %s",
                    InvocationId.from_bytes(st.invocation_id),
                    retry_count,
                    r.message,
                )
                self._complete(txn, st, Result(failure=failure), r.now_ms, effects)
            else:
                logger.warning(
                    "invocation %s paused after %d attempts: %s",
                    InvocationId.from_bytes(st.invocation_id),
                    retry_count,
                    r.message,
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

    def _complete(
        self, txn: Txn, st: InvocationStatus, result: Result, now_ms: int, effects: list[Effect]
    ) -> None:
        for sink in st.sinks:
            if sink.token is not None:
                effects.append(Reply(token=sink.token, invocation_id=st.invocation_id, result=result))
        retention_ms = max(st.retention.completion_ms, st.retention.journal_ms)
        expires = now_ms + retention_ms
        txn.delete(keys.active(st.invocation_id))
        if retention_ms <= 0:
            _delete_invocation(txn, st)
        else:
            _save(
                txn,
                replace(
                    st,
                    status=Status.COMPLETED,
                    result=result,
                    sinks=(),
                    completed_at_ms=now_ms,
                    modified_at_ms=now_ms,
                    expires_at_ms=expires,
                ),
            )
            txn.put(keys.retention(expires, st.invocation_id), b"")
        if st.target.exclusive and st.target.key is not None:
            self._release_lock(txn, st.target.service, st.target.key, st.invocation_id, now_ms, effects)

    def _release_lock(
        self, txn: Txn, service: str, key: str, holder: bytes, now_ms: int, effects: list[Effect]
    ) -> None:
        lock_key = keys.lock(service, key)
        if txn.get(lock_key) != holder:
            return
        for inbox_key, inv in txn.scan(keys.object_prefix(keys.INBOX, service, key)):
            txn.delete(inbox_key)
            nxt = _load(txn, inv)
            if nxt is None or nxt.status != Status.INBOXED:
                continue
            txn.put(lock_key, inv)
            nxt = replace(nxt, status=Status.INVOKED, epoch=nxt.epoch + 1, modified_at_ms=now_ms)
            _save(txn, nxt)
            effects.append(StartAttempt(invocation_id=inv, epoch=nxt.epoch))
            return
        txn.delete(lock_key)

    def _apply_resume_attempt(self, txn: Txn, r: ResumeAttempt, effects: list[Effect]) -> None:
        st = _load(txn, r.invocation_id)
        if st is None or st.status not in (Status.PAUSED, Status.BACKING_OFF):
            return
        st = replace(st, status=Status.INVOKED, epoch=st.epoch + 1, retry_count=0)
        _save(txn, st)
        effects.append(StartAttempt(invocation_id=st.invocation_id, epoch=st.epoch))

    def _apply_cleanup(self, txn: Txn, r: Cleanup, effects: list[Effect]) -> None:
        n = self.config.num_partitions
        for key, _ in list(txn.scan(keys.RETENTION, upper=keys.retention_upto(r.now_ms))):
            inv = key[len(keys.RETENTION) + 8 :]
            if partition_for(InvocationId.from_bytes(inv).partition_key, n) != self.partition_id:
                continue
            txn.delete(key)
            st = _load(txn, inv)
            if st is not None and st.status == Status.COMPLETED and st.expires_at_ms <= r.now_ms:
                _delete_invocation(txn, st)

    def _apply_put_metadata(self, txn: Txn, r: PutMetadata, effects: list[Effect]) -> None:
        if r.value is None:
            txn.delete(keys.metadata(r.key))
        else:
            txn.put(keys.metadata(r.key), r.value)
        effects.append(MetadataChanged(key=r.key, value=r.value))

    # ------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------

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


@dataclass(frozen=True, slots=True, kw_only=True)
class _RetryPolicy:
    initial_ms: float
    factor: float
    max_ms: float
    max_attempts: int | None
    on_max_attempts: str

    def delay_ms(self, retry_count: int) -> int:
        return int(min(self.initial_ms * self.factor ** (retry_count - 1), self.max_ms))


def _load(txn: Txn, invocation_id: bytes) -> InvocationStatus | None:
    raw = txn.get(keys.status(invocation_id))
    return None if raw is None else codec.decode(raw)


def _save(txn: Txn, st: InvocationStatus) -> None:
    txn.put(keys.status(st.invocation_id), codec.encode(st))


def _append_journal(txn: Txn, st: InvocationStatus, entry: JournalEntry, now_ms: int) -> InvocationStatus:
    txn.put(keys.journal(st.invocation_id, st.journal_length), codec.encode(entry))
    return replace(
        st, journal_length=st.journal_length + 1, last_entry_at_ms=now_ms, retry_count_since_last_entry=0
    )


def _delete_invocation(txn: Txn, st: InvocationStatus) -> None:
    txn.delete(keys.status(st.invocation_id))
    for index in range(st.journal_length):
        txn.delete(keys.journal(st.invocation_id, index))

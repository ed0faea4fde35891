"""The partition processor against a dict model (hypothesis), on real RocksDB.

Random interleavings of invocations on a few object keys, each writing and clearing state through journaled
commands, then ending. Checked after every step: the state table equals the model; at most one exclusive
invocation per key holds the lock and the rest wait in FIFO order; applying the same records in a fresh store
(replay after a crash) gives byte-identical tables.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import codec
from engine.config import load_config
from engine.ids import partition_key_for_key, random_invocation_id
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import MessageType
from engine.partition.effects import StartAttempt
from engine.partition.processor import PartitionProcessor
from engine.partition.types import (
    AppendEntries,
    End,
    HandlerType,
    InvocationStatus,
    Invoke,
    JournalEntry,
    Record,
    RetentionPolicy,
    ServiceType,
    Status,
    Target,
)
from engine.storage import keys
from engine.storage.store import Store

OBJECT_KEYS = ["a", "b", "c"]
NAMES = [b"x", b"y", b"z"]


def _set(name: bytes, value: bytes) -> JournalEntry:
    return JournalEntry(
        ty=MessageType.SET_STATE_COMMAND,
        body=pb.SetStateCommandMessage(key=name, value=pb.Value(content=value)).SerializeToString(),
    )


def _clear(name: bytes) -> JournalEntry:
    return JournalEntry(
        ty=MessageType.CLEAR_STATE_COMMAND, body=pb.ClearStateCommandMessage(key=name).SerializeToString()
    )


def _clear_all() -> JournalEntry:
    return JournalEntry(
        ty=MessageType.CLEAR_ALL_STATE_COMMAND, body=pb.ClearAllStateCommandMessage().SerializeToString()
    )


def _output(value: bytes) -> JournalEntry:
    return JournalEntry(
        ty=MessageType.OUTPUT_COMMAND, body=pb.OutputCommandMessage(value=pb.Value(content=value)).SerializeToString()
    )


def _dump(store: Store) -> dict[bytes, bytes]:
    return {k: v for k, v in store.scan(b"\x01") if not k.startswith(keys.APPLIED_LSN)} | dict(store.scan(b"\x02"))


class ProcessorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="capstan-proc-"))
        self.config = load_config(environ={}, overrides={"data_dir": str(self.dir), "num_partitions": 1})
        self.store = Store(self.dir / "db")
        self.proc = PartitionProcessor(0, self.store, self.config)
        self.lsn = 0
        self.records: list[tuple[int, Record]] = []
        self.model: dict[str, dict[bytes, bytes]] = {k: {} for k in OBJECT_KEYS}
        self.running: dict[str, tuple[bytes, int] | None] = {k: None for k in OBJECT_KEYS}
        self.queued: dict[str, list[bytes]] = {k: [] for k in OBJECT_KEYS}
        self.key_of: dict[bytes, str] = {}

    def teardown(self) -> None:
        self.store.close()

    def _apply(self, record: Record) -> list[object]:
        self.lsn += 1
        self.records.append((self.lsn, record))
        effects = self.proc.apply_batch([(self.lsn, record)])
        for e in effects:
            if isinstance(e, StartAttempt):
                inv = e.invocation_id
                key = self.key_of[inv]
                if inv in self.queued[key]:
                    assert self.queued[key][0] == inv, "inbox must start invocations in FIFO order"
                    self.queued[key].pop(0)
                self.running[key] = (inv, e.epoch)
        return effects

    @initialize()
    def init(self) -> None:
        pass

    @rule(key=st.sampled_from(OBJECT_KEYS))
    def invoke(self, key: str) -> None:
        inv = random_invocation_id(partition_key_for_key(key)).to_bytes()
        self.key_of[inv] = key
        busy = self.running[key] is not None
        if busy:
            self.queued[key].append(inv)
        self._apply(
            Invoke(
                invocation_id=inv,
                target=Target(
                    service="Obj",
                    handler="h",
                    key=key,
                    service_ty=ServiceType.VIRTUAL_OBJECT,
                    handler_ty=HandlerType.EXCLUSIVE,
                ),
                argument=b"",
                retention=RetentionPolicy(completion_ms=0, journal_ms=60_000),
                now_ms=1,
            )
        )

    @rule(
        key=st.sampled_from(OBJECT_KEYS),
        ops=st.lists(
            st.tuples(st.sampled_from(["set", "clear", "all"]), st.sampled_from(NAMES), st.binary(max_size=4)),
            max_size=4,
        ),
    )
    def write(self, key: str, ops: list[tuple[str, bytes, bytes]]) -> None:
        running = self.running[key]
        if running is None:
            return
        inv, epoch = running
        entries = []
        for op, name, value in ops:
            if op == "set":
                entries.append(_set(name, value))
                self.model[key][name] = value
            elif op == "clear":
                entries.append(_clear(name))
                self.model[key].pop(name, None)
            else:
                entries.append(_clear_all())
                self.model[key].clear()
        self._apply(AppendEntries(invocation_id=inv, epoch=epoch, entries=tuple(entries), now_ms=2))

    @rule(key=st.sampled_from(OBJECT_KEYS), stale=st.booleans())
    def end(self, key: str, stale: bool) -> None:
        running = self.running[key]
        if running is None:
            return
        inv, epoch = running
        if stale:  # a record of an older attempt: must be ignored entirely
            self._apply(AppendEntries(invocation_id=inv, epoch=epoch - 1, entries=(_set(b"x", b"stale"),), now_ms=3))
            return
        self._apply(AppendEntries(invocation_id=inv, epoch=epoch, entries=(_output(b"ok"),), now_ms=3))
        self.running[key] = None
        self._apply(End(invocation_id=inv, epoch=epoch, now_ms=4))

    @invariant()
    def state_matches_model(self) -> None:
        for key in OBJECT_KEYS:
            prefix = keys.object_prefix(keys.STATE, "Obj", key)
            actual = {k[len(prefix) :]: v for k, v in self.store.scan(prefix)}
            assert actual == self.model[key]

    @invariant()
    def one_lock_holder_per_key(self) -> None:
        for key in OBJECT_KEYS:
            holder = self.store.get(keys.lock("Obj", key))
            running = self.running[key]
            assert (holder is None) == (running is None)
            if running is not None:
                assert holder == running[0]
                status: InvocationStatus = codec.decode(self.store.get(keys.status(holder)))
                assert status.status == Status.INVOKED
            inbox = [v for _, v in self.store.scan(keys.object_prefix(keys.INBOX, "Obj", key))]
            assert inbox == self.queued[key]

    @invariant()
    def replay_is_deterministic(self) -> None:
        if len(self.records) % 7 != 0 or not self.records:
            return
        other_dir = Path(tempfile.mkdtemp(prefix="capstan-replay-"))
        other = Store(other_dir / "db")
        try:
            replica = PartitionProcessor(0, other, self.config)
            # replay in uneven batches, as recovery does
            for i in range(0, len(self.records), 3):
                replica.apply_batch(self.records[i : i + 3])
            assert _dump(other) == _dump(self.store)
            assert other.applied_lsn(0) == self.lsn
        finally:
            other.close()


ProcessorMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestProcessorModel = ProcessorMachine.TestCase

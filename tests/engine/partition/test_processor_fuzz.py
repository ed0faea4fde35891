"""What a deployment sends ends up in log records the partition processor applies. A misbehaving (or hostile)
deployment must never make apply raise: a raise there stops the engine, and since the record is already in the log,
every restart would replay it and stop again. Hypothesis drives one invocation with arbitrary SDK output (well-formed
commands with arbitrary fields, truncated and corrupted bodies, unknown types, suspensions, errors, End) and checks
after every record: apply did not raise, the status row decodes, and every journaled entry parses (a malformed
command is refused before it reaches the journal, so later attempts do not replay it)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine import codec
from engine.config import load_config
from engine.ids import InvocationId, awakeable_id, partition_key_for_key, random_invocation_id
from engine.invoker.protocol import messages
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import MessageType, is_command
from engine.partition.effects import AbortAttempt, StartAttempt
from engine.partition.processor import PartitionProcessor
from engine.partition.types import (
    AppendEntries,
    AttemptFailed,
    End,
    HandlerType,
    InvocationStatus,
    Invoke,
    JournalEntry,
    PutMetadata,
    Record,
    RetentionPolicy,
    ServiceType,
    Status,
    Suspend,
    Target,
)
from engine.schema import SchemaRegistry, registration_records
from engine.storage import keys
from engine.storage.store import Store

MANIFEST = {
    "minProtocolVersion": 5,
    "maxProtocolVersion": 6,
    "services": [
        {"name": "Obj", "ty": "VIRTUAL_OBJECT", "handlers": [{"name": "h"}, {"name": "g", "ty": "SHARED"}]},
        {"name": "Svc", "ty": "SERVICE", "handlers": [{"name": "h"}]},
        {"name": "Flow", "ty": "WORKFLOW", "handlers": [{"name": "run"}, {"name": "get"}]},
    ],
}

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small_id = st.integers(0, 6) | u32
inv_ids = st.builds(lambda b: str(InvocationId.from_bytes(b)), st.binary(min_size=24, max_size=24))
id_text = inv_ids | text | st.sampled_from(["inv_", "inv_1", "sign_1", "sign_1AAAA", "prom_1x"])


def _value(content: bytes) -> pb.Value:
    return pb.Value(content=content)


def _failure(code: int, message: str) -> pb.Failure:
    return pb.Failure(code=code, message=message)


results = st.one_of(
    st.builds(lambda v: {"value": _value(v)}, st.binary(max_size=8)),
    st.builds(lambda c, m: {"failure": _failure(c, m)}, u32, text),
    st.just({}),
)


def _command(ty: int, cls: Any, **fields: Any) -> JournalEntry:
    return JournalEntry(ty=ty, body=cls(**fields).SerializeToString())


@st.composite
def well_formed(draw: st.DrawFn) -> JournalEntry:
    """A command (or run proposal) that parses, with arbitrary field values."""
    kind = draw(st.integers(0, 15))
    cid = draw(small_id)
    if kind == 0:
        return _command(
            MessageType.SET_STATE_COMMAND,
            pb.SetStateCommandMessage,
            key=draw(st.binary(max_size=8)),
            value=_value(draw(st.binary(max_size=8))),
        )
    if kind == 1:
        return _command(MessageType.CLEAR_STATE_COMMAND, pb.ClearStateCommandMessage, key=draw(st.binary(max_size=8)))
    if kind == 2:
        return _command(MessageType.CLEAR_ALL_STATE_COMMAND, pb.ClearAllStateCommandMessage)
    if kind == 3:
        return _command(
            MessageType.GET_LAZY_STATE_COMMAND,
            pb.GetLazyStateCommandMessage,
            key=draw(st.binary(max_size=8)),
            result_completion_id=cid,
        )
    if kind == 4:
        return _command(
            MessageType.GET_LAZY_STATE_KEYS_COMMAND, pb.GetLazyStateKeysCommandMessage, result_completion_id=cid
        )
    if kind == 5:
        return _command(
            MessageType.SLEEP_COMMAND, pb.SleepCommandMessage, wake_up_time=draw(u64), result_completion_id=cid
        )
    if kind in (6, 7):
        fields: dict[str, Any] = {
            "service_name": draw(st.sampled_from(["Obj", "Svc", "Flow", "Nope"]) | text),
            "handler_name": draw(st.sampled_from(["h", "g", "run", "get"]) | text),
            "key": draw(text),
            "parameter": draw(st.binary(max_size=8)),
            "invocation_id_notification_idx": draw(small_id),
            "headers": [pb.Header(key=k, value=v) for k, v in draw(st.lists(st.tuples(text, text), max_size=2))],
        }
        if draw(st.booleans()):
            fields["idempotency_key"] = draw(text)
        if kind == 6:
            return _command(MessageType.CALL_COMMAND, pb.CallCommandMessage, result_completion_id=cid, **fields)
        return _command(MessageType.ONE_WAY_CALL_COMMAND, pb.OneWayCallCommandMessage, invoke_time=draw(u64), **fields)
    if kind == 8:
        signal = draw(st.sampled_from([{"idx": draw(small_id)}, {"name": draw(text)}, {}]))
        result = draw(st.one_of(results, st.just({"void": pb.Void()})))
        return _command(
            MessageType.SEND_SIGNAL_COMMAND,
            pb.SendSignalCommandMessage,
            target_invocation_id=draw(id_text),
            **signal,
            **result,
        )
    if kind == 9:
        target = draw(inv_ids)
        some_awakeable = awakeable_id(InvocationId.parse(target), draw(small_id))
        return _command(
            MessageType.COMPLETE_AWAKEABLE_COMMAND,
            pb.CompleteAwakeableCommandMessage,
            awakeable_id=draw(st.just(some_awakeable) | id_text),
            **draw(results),
        )
    if kind == 10:
        return _command(MessageType.RUN_COMMAND, pb.RunCommandMessage, result_completion_id=cid, name=draw(text))
    if kind == 11:
        proposal = draw(
            st.one_of(
                st.builds(lambda v: {"value": v}, st.binary(max_size=8)),
                st.builds(lambda c, m: {"failure": _failure(c, m)}, u32, text),
                st.just({}),
            )
        )
        return _command(
            MessageType.PROPOSE_RUN_COMPLETION, pb.ProposeRunCompletionMessage, result_completion_id=cid, **proposal
        )
    if kind == 12:
        ty, cls = draw(
            st.sampled_from(
                [
                    (MessageType.ATTACH_INVOCATION_COMMAND, pb.AttachInvocationCommandMessage),
                    (MessageType.GET_INVOCATION_OUTPUT_COMMAND, pb.GetInvocationOutputCommandMessage),
                ]
            )
        )
        target = draw(
            st.one_of(
                st.builds(lambda i: {"invocation_id": i}, id_text),
                st.builds(
                    lambda n, k: {"workflow_target": pb.WorkflowTarget(workflow_name=n, workflow_key=k)}, text, text
                ),
                st.builds(
                    lambda n, h, k: {
                        "idempotent_request_target": pb.IdempotentRequestTarget(
                            service_name=n, handler_name=h, idempotency_key=k
                        )
                    },
                    text,
                    text,
                    text,
                ),
                st.just({}),
            )
        )
        return _command(ty, cls, result_completion_id=cid, **target)
    if kind == 13:
        ty, cls = draw(
            st.sampled_from(
                [
                    (MessageType.GET_PROMISE_COMMAND, pb.GetPromiseCommandMessage),
                    (MessageType.PEEK_PROMISE_COMMAND, pb.PeekPromiseCommandMessage),
                ]
            )
        )
        return _command(ty, cls, key=draw(text), result_completion_id=cid)
    if kind == 14:
        completion = draw(
            st.one_of(
                st.builds(lambda v: {"completion_value": _value(v)}, st.binary(max_size=8)),
                st.builds(lambda c, m: {"completion_failure": _failure(c, m)}, u32, text),
                st.just({}),
            )
        )
        return _command(
            MessageType.COMPLETE_PROMISE_COMMAND,
            pb.CompletePromiseCommandMessage,
            key=draw(text),
            result_completion_id=cid,
            **completion,
        )
    return _command(MessageType.OUTPUT_COMMAND, pb.OutputCommandMessage, **draw(results))


@st.composite
def sdk_entries(draw: st.DrawFn) -> JournalEntry:
    entry = draw(well_formed())
    how = draw(st.sampled_from(["as is", "as is", "truncated", "corrupted", "random", "other type"]))
    if how == "truncated" and entry.body:
        return JournalEntry(ty=entry.ty, body=entry.body[: draw(st.integers(0, len(entry.body) - 1))])
    if how == "corrupted" and entry.body:
        at = draw(st.integers(0, len(entry.body) - 1))
        body = entry.body[:at] + bytes([entry.body[at] ^ draw(st.integers(1, 255))]) + entry.body[at + 1 :]
        return JournalEntry(ty=entry.ty, body=body)
    if how == "random":
        return JournalEntry(
            ty=draw(st.integers(0x0400, 0x7FFF) | st.sampled_from([0x0005])), body=draw(st.binary(max_size=24))
        )
    if how == "other type":  # a body valid for one type under another type's id
        return JournalEntry(ty=draw(st.sampled_from([t.value for t in MessageType if is_command(t)])), body=entry.body)
    return entry


# One step of the attempt: what the invoker proposes on the deployment's behalf (``stale``: an old epoch).
steps = st.one_of(
    st.builds(lambda es, stale: ("append", es, stale), st.lists(sdk_entries(), min_size=1, max_size=4), st.booleans()),
    st.builds(
        lambda c, s, n: ("suspend", c, s, n),
        st.lists(small_id, max_size=3),
        st.lists(small_id, max_size=2),
        st.lists(text, max_size=1),
    ),
    st.builds(lambda c, d: ("failed", c, d), u32, st.none() | u64),
    st.just(("end",)),
)


def _check_journal(store: Store, inv: bytes) -> None:
    raw = store.get(keys.status(inv))
    if raw is None:
        return
    status: InvocationStatus = codec.decode(raw)
    rows = list(store.scan(keys.journal_prefix(inv)))
    # the journal is exactly entries 0..journal_length-1: nothing refused was left behind
    assert [k for k, _ in rows] == [keys.journal(inv, i) for i in range(status.journal_length)]
    for _, value in rows:
        entry: JournalEntry = codec.decode(value)
        messages.decode(entry.ty, entry.body)  # raises ProtocolError if something malformed got journaled
    Status(status.status)  # a known status


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    target=st.sampled_from([("Obj", "h", "k"), ("Svc", "h", None), ("Flow", "run", "wf")]),
    script=st.lists(steps, min_size=1, max_size=12),
)
# Found by this test: a SendSignal naming neither a signal index nor a name made the apply raise.
@example(
    target=("Obj", "h", "k"),
    script=[("append", [JournalEntry(ty=MessageType.SEND_SIGNAL_COMMAND, body=b"\n&inv_1" + b"0" * 37)], False)],
)
def test_no_deployment_output_makes_apply_raise(target: tuple[str, str, str | None], script: list[Any]) -> None:
    service, handler, key = target
    data = Path(tempfile.mkdtemp(prefix="capstan-fuzz-"))
    config = load_config(environ={}, overrides={"data_dir": str(data), "num_partitions": 1})
    store = Store(data / "db")
    try:
        proc = PartitionProcessor(0, store, config)
        lsn = 0

        def apply(record: Record) -> list[object]:
            nonlocal lsn
            lsn += 1
            return list(proc.apply_batch([(lsn, record)]))

        _, rows = registration_records(
            registry=SchemaRegistry(),
            deployment_id="dp_fuzz",
            uri="http://127.0.0.1:1",
            kind="http",
            manifest=MANIFEST,
            protocol_mode="REQUEST_RESPONSE",
            sdk_version=None,
            additional_headers={},
            use_http_11=True,
        )
        for k, v in rows:
            apply(PutMetadata(key=k, value=v))
        pk = partition_key_for_key(key) if key is not None else None
        inv = random_invocation_id(pk).to_bytes()
        keyed = key is not None
        effects = apply(
            Invoke(
                invocation_id=inv,
                target=Target(
                    service=service,
                    handler=handler,
                    key=key,
                    service_ty={
                        "Obj": ServiceType.VIRTUAL_OBJECT,
                        "Svc": ServiceType.SERVICE,
                        "Flow": ServiceType.WORKFLOW,
                    }[service],
                    handler_ty=HandlerType.WORKFLOW if service == "Flow" else HandlerType.EXCLUSIVE,
                ),
                argument=b"",
                retention=RetentionPolicy(completion_ms=60_000 if keyed else 0, journal_ms=60_000),
                deployment_id="dp_fuzz",
                now_ms=1,
            )
        )
        epoch = next(e.epoch for e in effects if isinstance(e, StartAttempt))
        for step in script:
            now = 10 + lsn
            record: Record
            if step[0] == "append":
                record = AppendEntries(invocation_id=inv, epoch=epoch - step[2], entries=tuple(step[1]), now_ms=now)
            elif step[0] == "suspend":
                record = Suspend(
                    invocation_id=inv,
                    epoch=epoch,
                    waiting_completions=tuple(step[1]),
                    waiting_signals=tuple(step[2]),
                    waiting_named_signals=tuple(step[3]),
                    now_ms=now,
                )
            elif step[0] == "failed":
                record = AttemptFailed(
                    invocation_id=inv,
                    epoch=epoch,
                    code=step[1],
                    message="boom",
                    next_retry_delay_ms=step[2],
                    now_ms=now,
                )
            else:
                record = End(invocation_id=inv, epoch=epoch, now_ms=now)
            restarted = False
            for effect in apply(record):
                if isinstance(effect, StartAttempt) and effect.invocation_id == inv:
                    epoch, restarted = effect.epoch, True
                assert not isinstance(effect, AbortAttempt) or effect.invocation_id == inv
            _check_journal(store, inv)
            if step[0] != "append" and not restarted:
                break  # the attempt ended (suspended, completed, paused): the deployment has nothing more to say
    finally:
        store.close()

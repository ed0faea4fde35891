"""Build and inspect service-protocol messages (``service-protocol.md`` §3).

Everything here works on raw protobuf bytes, which is what the journal stores and replays verbatim. Builders
return the protobuf *body* unless they say they return a whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

from engine.errors import ProtocolError
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import MessageType, encode_frame

__all__ = [
    "MESSAGE_CLASSES",
    "FailureTuple",
    "command_completion_ids",
    "decode",
    "decode_output",
    "input_command",
    "notification",
    "parse",
    "run_completion_from_proposal",
    "start_message",
]

FailureTuple = tuple[int, str, list[tuple[str, str]]]
"""``(code, message, metadata)`` of a ``Failure``."""

M = TypeVar("M", bound=Message)

MESSAGE_CLASSES: Final[dict[int, type[Message]]] = {
    MessageType.START: pb.StartMessage,
    MessageType.SUSPENSION: pb.SuspensionMessage,
    MessageType.ERROR: pb.ErrorMessage,
    MessageType.END: pb.EndMessage,
    MessageType.COMMAND_ACK: pb.CommandAckMessage,
    MessageType.PROPOSE_RUN_COMPLETION: pb.ProposeRunCompletionMessage,
    MessageType.AWAITING_ON: pb.AwaitingOnMessage,
    MessageType.PROPOSE_RUN_COMPLETION_ACK: pb.ProposeRunCompletionAckMessage,
    MessageType.INPUT_COMMAND: pb.InputCommandMessage,
    MessageType.OUTPUT_COMMAND: pb.OutputCommandMessage,
    MessageType.GET_LAZY_STATE_COMMAND: pb.GetLazyStateCommandMessage,
    MessageType.SET_STATE_COMMAND: pb.SetStateCommandMessage,
    MessageType.CLEAR_STATE_COMMAND: pb.ClearStateCommandMessage,
    MessageType.CLEAR_ALL_STATE_COMMAND: pb.ClearAllStateCommandMessage,
    MessageType.GET_LAZY_STATE_KEYS_COMMAND: pb.GetLazyStateKeysCommandMessage,
    MessageType.GET_EAGER_STATE_COMMAND: pb.GetEagerStateCommandMessage,
    MessageType.GET_EAGER_STATE_KEYS_COMMAND: pb.GetEagerStateKeysCommandMessage,
    MessageType.GET_PROMISE_COMMAND: pb.GetPromiseCommandMessage,
    MessageType.PEEK_PROMISE_COMMAND: pb.PeekPromiseCommandMessage,
    MessageType.COMPLETE_PROMISE_COMMAND: pb.CompletePromiseCommandMessage,
    MessageType.SLEEP_COMMAND: pb.SleepCommandMessage,
    MessageType.CALL_COMMAND: pb.CallCommandMessage,
    MessageType.ONE_WAY_CALL_COMMAND: pb.OneWayCallCommandMessage,
    MessageType.SEND_SIGNAL_COMMAND: pb.SendSignalCommandMessage,
    MessageType.RUN_COMMAND: pb.RunCommandMessage,
    MessageType.ATTACH_INVOCATION_COMMAND: pb.AttachInvocationCommandMessage,
    MessageType.GET_INVOCATION_OUTPUT_COMMAND: pb.GetInvocationOutputCommandMessage,
    MessageType.COMPLETE_AWAKEABLE_COMMAND: pb.CompleteAwakeableCommandMessage,
    MessageType.GET_LAZY_STATE_COMPLETION: pb.GetLazyStateCompletionNotificationMessage,
    MessageType.GET_LAZY_STATE_KEYS_COMPLETION: pb.GetLazyStateKeysCompletionNotificationMessage,
    MessageType.GET_PROMISE_COMPLETION: pb.GetPromiseCompletionNotificationMessage,
    MessageType.PEEK_PROMISE_COMPLETION: pb.PeekPromiseCompletionNotificationMessage,
    MessageType.COMPLETE_PROMISE_COMPLETION: pb.CompletePromiseCompletionNotificationMessage,
    MessageType.SLEEP_COMPLETION: pb.SleepCompletionNotificationMessage,
    MessageType.CALL_COMPLETION: pb.CallCompletionNotificationMessage,
    MessageType.CALL_INVOCATION_ID_COMPLETION: pb.CallInvocationIdCompletionNotificationMessage,
    MessageType.RUN_COMPLETION: pb.RunCompletionNotificationMessage,
    MessageType.ATTACH_INVOCATION_COMPLETION: pb.AttachInvocationCompletionNotificationMessage,
    MessageType.GET_INVOCATION_OUTPUT_COMPLETION: pb.GetInvocationOutputCompletionNotificationMessage,
    MessageType.SIGNAL_NOTIFICATION: pb.SignalNotificationMessage,
}

# Commands with exactly one completion id in field 11 (result_completion_id).
_SINGLE_COMPLETION_COMMANDS: Final = frozenset(
    {
        MessageType.GET_LAZY_STATE_COMMAND,
        MessageType.GET_LAZY_STATE_KEYS_COMMAND,
        MessageType.GET_PROMISE_COMMAND,
        MessageType.PEEK_PROMISE_COMMAND,
        MessageType.COMPLETE_PROMISE_COMMAND,
        MessageType.SLEEP_COMMAND,
        MessageType.RUN_COMMAND,
        MessageType.ATTACH_INVOCATION_COMMAND,
        MessageType.GET_INVOCATION_OUTPUT_COMMAND,
    }
)


def parse(cls: type[M], body: bytes) -> M:
    """Parse ``body`` as ``cls``; :class:`ProtocolError` if it is not valid protobuf for it."""
    msg = cls()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise ProtocolError(f"malformed {cls.DESCRIPTOR.name}: {exc}") from exc
    return msg


def decode(msg_type: int, body: bytes) -> Message:
    """Parse a frame body by its type id. Custom entries and unknown ids raise :class:`ProtocolError`."""
    cls = MESSAGE_CLASSES.get(msg_type)
    if cls is None:
        raise ProtocolError(f"no schema for message type 0x{msg_type:04X}")
    return parse(cls, body)


def start_message(
    *,
    raw_id: bytes,
    debug_id: str,
    known_entries: int,
    state: Sequence[tuple[bytes, bytes]] | None,
    partial_state: bool,
    key: str,
    retry_count: int,
    duration_since_last_stored_entry_ms: int,
    random_seed: int,
    version: int,
) -> bytes:
    """The whole ``StartMessage`` frame (header included). ``random_seed`` is only sent from V6 on."""
    if known_entries < 1:
        raise ValueError("known_entries must be >= 1 (journal entry 0 is the InputCommand)")
    msg = pb.StartMessage(
        id=raw_id,
        debug_id=debug_id,
        known_entries=known_entries,
        partial_state=partial_state,
        key=key,
        retry_count_since_last_stored_entry=retry_count,
        duration_since_last_stored_entry=duration_since_last_stored_entry_ms,
    )
    if state:
        msg.state_map.extend(pb.StartMessage.StateEntry(key=k, value=v) for k, v in state)
    if version >= 6:
        msg.random_seed = random_seed
    return encode_frame(MessageType.START, msg.SerializeToString())


def input_command(value: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """Body of the ``InputCommandMessage`` that opens every journal (``value`` always present).

    Encoded by hand (it is built for every invocation, a Kafka record's with several headers): the same bytes as
    ``pb.InputCommandMessage(headers=[pb.Header(key=k, value=v) ...], value=pb.Value(content=value))
    .SerializeToString()`` — fields in number order, empty strings left out, ``value`` always present (a test
    compares the two on random input)."""
    out = bytearray()
    for k, v in headers:
        kb = k.encode()
        vb = v.encode()
        header = bytearray()
        if kb:
            header += b"\x0a" + _varint(len(kb)) + kb  # Header.key = 1
        if vb:
            header += b"\x12" + _varint(len(vb)) + vb  # Header.value = 2
        out += b"\x0a" + _varint(len(header)) + header  # headers = 1
    content = b"\x0a" + _varint(len(value)) + value if value else b""  # Value.content = 1
    out += b"\x72" + _varint(len(content)) + content  # value = 14
    return bytes(out)


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = tuple(bytes([i]) for i in range(0x80))


def _failure(code: int, message: str, metadata: Sequence[tuple[str, str]]) -> pb.Failure:
    return pb.Failure(code=code, message=message, metadata=[pb.FailureMetadata(key=k, value=v) for k, v in metadata])


def _failure_tuple(f: pb.Failure) -> FailureTuple:
    return (f.code, f.message, [(m.key, m.value) for m in f.metadata])


def notification(
    *,
    completion_id: int | None = None,
    signal_id: int | None = None,
    signal_name: str | None = None,
    void: bool = False,
    value: bytes | None = None,
    failure: tuple[int, str] | None = None,
    failure_metadata: Sequence[tuple[str, str]] = (),
    invocation_id: str | None = None,
    state_keys: Sequence[bytes] | None = None,
) -> bytes:
    """Body of a notification (any ``0x8000-0xFBFF`` type): exactly one id and exactly one result.

    ``void`` is written explicitly (tag + zero length), as the SDKs require.
    """
    ids = sum(x is not None for x in (completion_id, signal_id, signal_name))
    if ids != 1:
        raise ValueError("a notification needs exactly one of completion_id, signal_id, signal_name")
    results = int(void) + sum(x is not None for x in (value, failure, invocation_id, state_keys))
    if results != 1:
        raise ValueError("a notification needs exactly one of void, value, failure, invocation_id, state_keys")
    if failure_metadata and failure is None:
        raise ValueError("failure_metadata given without failure")
    msg = pb.NotificationTemplate()
    if completion_id is not None:
        msg.completion_id = completion_id
    elif signal_id is not None:
        msg.signal_id = signal_id
    elif signal_name is not None:
        msg.signal_name = signal_name
    if void:
        msg.void.SetInParent()
    elif value is not None:
        msg.value.content = value
        msg.value.SetInParent()
    elif failure is not None:
        msg.failure.CopyFrom(_failure(failure[0], failure[1], failure_metadata))
    elif invocation_id is not None:
        msg.invocation_id = invocation_id
    elif state_keys is not None:
        msg.state_keys.keys.extend(state_keys)
        msg.state_keys.SetInParent()
    return msg.SerializeToString()


def run_completion_from_proposal(body: bytes) -> tuple[int, bytes]:
    """``ProposeRunCompletionMessage`` body → ``(completion_id, RunCompletionNotification body)``.

    The proposal carries the value as raw bytes (field 14); the notification wraps it in ``Value``.
    """
    prop = parse(pb.ProposeRunCompletionMessage, body)
    which = prop.WhichOneof("result")
    if which == "value":
        out = notification(completion_id=prop.result_completion_id, value=prop.value)
    elif which == "failure":
        f = prop.failure
        out = notification(
            completion_id=prop.result_completion_id,
            failure=(f.code, f.message),
            failure_metadata=[(m.key, m.value) for m in f.metadata],
        )
    else:
        raise ProtocolError("ProposeRunCompletionMessage without value or failure")
    return prop.result_completion_id, out


def decode_output(body: bytes) -> tuple[bytes | None, FailureTuple | None]:
    """``OutputCommandMessage`` body → ``(value, None)`` or ``(None, (code, message, metadata))``."""
    out = parse(pb.OutputCommandMessage, body)
    which = out.WhichOneof("result")
    if which == "value":
        return out.value.content, None
    if which == "failure":
        return None, _failure_tuple(out.failure)
    raise ProtocolError("OutputCommandMessage without value or failure")


def command_completion_ids(msg_type: int, body: bytes) -> list[int]:
    """Completion ids a command allocates (the notifications the server owes it), in allocation order.

    Call → ``[invocation_id_notification_idx, result_completion_id]``; OneWayCall →
    ``[invocation_id_notification_idx]``; other completable commands → ``[result_completion_id]``;
    non-completable commands → ``[]``.
    """
    if msg_type == MessageType.CALL_COMMAND:
        call = parse(pb.CallCommandMessage, body)
        return [call.invocation_id_notification_idx, call.result_completion_id]
    if msg_type == MessageType.ONE_WAY_CALL_COMMAND:
        send = parse(pb.OneWayCallCommandMessage, body)
        return [send.invocation_id_notification_idx]
    if msg_type in _SINGLE_COMPLETION_COMMANDS:
        # Every single-completion command has result_completion_id = 11; parse any of them.
        return [parse(pb.RunCommandMessage, body).result_completion_id]
    return []

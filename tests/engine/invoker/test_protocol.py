from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ProtocolError
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import (
    REQUESTED_ACK_FLAG,
    Frame,
    FrameDecoder,
    MessageType,
    choose_protocol_version,
    content_type,
    encode_frame,
    is_command,
    is_control,
    is_custom_entry,
    is_notification,
)
from engine.invoker.protocol.messages import (
    MESSAGE_CLASSES,
    command_completion_ids,
    decode,
    decode_output,
    input_command,
    notification,
    run_completion_from_proposal,
    start_message,
)

MiB = 1 << 20

# Frame types a peer may legally send: known control types, commands, notifications, custom entries.
frame_types = st.one_of(
    st.sampled_from([t.value for t in MessageType if t < 0x0400]),
    st.integers(0x0400, 0xFFFF),
)
frames = st.builds(
    Frame,
    type=frame_types,
    flags=st.sampled_from([0, REQUESTED_ACK_FLAG]) | st.integers(0, 0xFFFF),
    body=st.binary(max_size=300),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[prev:p])
        prev = p
    return chunks


# --- framing --------------------------------------------------------------------------------------


def test_reference_byte_examples():
    # service-protocol.md §2
    assert encode_frame(MessageType.END, b"") == bytes.fromhex("0003000000000000")
    sleep_done = notification(completion_id=2, void=True)
    assert sleep_done == bytes.fromhex("08022200")
    assert encode_frame(MessageType.SLEEP_COMPLETION, sleep_done) == bytes.fromhex(
        "800c000000000004 08022200"
    )
    assert (
        encode_frame(0x0400, b"x", flags=REQUESTED_ACK_FLAG) == struct.pack(">HHI", 0x0400, 0x8000, 1) + b"x"
    )
    # transcripts README §5.17: the cancel signal
    cancel = encode_frame(MessageType.SIGNAL_NOTIFICATION, notification(signal_id=1, void=True))
    assert cancel == bytes.fromhex("fbff000000000004 10012200")


@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_frames_round_trip_with_any_chunking(fs: list[Frame], cuts: list[int]):
    wire = b"".join(f.encode() for f in fs)
    decoder = FrameDecoder(max_message_bytes=1024)
    out: list[Frame] = []
    for chunk in _split(wire, cuts):
        out.extend(decoder.feed(chunk))
    assert out == fs
    assert decoder.buffered == 0


def test_byte_by_byte_and_buffered():
    wire = encode_frame(0x0401, b"abc") + encode_frame(MessageType.END, b"")
    decoder = FrameDecoder(max_message_bytes=16)
    got: list[Frame] = []
    for i, b in enumerate(wire):
        got.extend(decoder.feed(bytes([b])))
        if i < 10:  # inside the first 11-byte frame
            assert decoder.buffered == i + 1
    assert got == [Frame(0x0401, 0, b"abc"), Frame(MessageType.END, 0, b"")]
    assert decoder.buffered == 0
    assert decoder.feed(b"") == []
    assert decoder.feed(wire[:5]) == [] and decoder.buffered == 5


def test_oversize_rejected_from_header_alone():
    decoder = FrameDecoder(max_message_bytes=10)
    assert decoder.feed(encode_frame(0x0401, b"x" * 10)) == [Frame(0x0401, 0, b"x" * 10)]  # == max is fine
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">HHI", 0x0401, 0, 11))  # no body yet: rejected on the header
    with pytest.raises(ProtocolError):  # the decoder stays failed
        decoder.feed(encode_frame(MessageType.END, b""))


def test_oversize_default_limit_shape():
    decoder = FrameDecoder(max_message_bytes=32 * MiB)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">HHI", 0x0401, 0, 32 * MiB + 1))


@pytest.mark.parametrize("t", [0x0008, 0x0100, 0x03FF])
def test_unknown_control_type_rejected(t: int):
    with pytest.raises(ProtocolError, match="unknown control"):
        FrameDecoder(max_message_bytes=MiB).feed(encode_frame(t, b""))


@pytest.mark.parametrize("t", [0x0415, 0x7FFF, 0x8020, 0xFC00, 0xFFFF])
def test_unknown_non_control_types_pass_framing(t: int):
    assert FrameDecoder(max_message_bytes=MiB).feed(encode_frame(t, b"\x01")) == [Frame(t, 0, b"\x01")]


def test_frames_before_a_bad_one_in_same_chunk_come_first():
    decoder = FrameDecoder(max_message_bytes=MiB)
    end = Frame(MessageType.END, 0, b"")
    assert decoder.feed(end.encode() + encode_frame(0x0009, b"") + end.encode()) == [end]
    with pytest.raises(ProtocolError, match="unknown control"):
        decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.feed(end.encode())


def test_type_ranges():
    assert is_control(0) and is_control(0x03FF) and not is_control(0x0400)
    assert is_command(0x0400) and is_command(0x7FFF) and not is_command(0x8000) and not is_command(3)
    assert is_notification(0x8000) and is_notification(0xFBFF) and not is_notification(0xFC00)
    assert is_custom_entry(0xFC00) and is_custom_entry(0xFFFF) and not is_custom_entry(0xFBFF)
    for t in MessageType:
        assert sum([is_control(t), is_command(t), is_notification(t), is_custom_entry(t)]) == 1


def test_content_type_and_version_choice():
    assert content_type(6) == "application/vnd.restate.invocation.v6"
    assert choose_protocol_version(5, 7) == 6
    assert choose_protocol_version(5, 5) == 5
    assert choose_protocol_version(1, 9) == 6
    assert choose_protocol_version(1, 4) is None
    assert choose_protocol_version(7, 8) is None
    assert choose_protocol_version(7, 8, server_max=7) == 7
    assert choose_protocol_version(5, 7, server_max=5) == 5
    assert choose_protocol_version(6, 5) is None


# --- messages -------------------------------------------------------------------------------------


def test_every_known_type_has_a_schema():
    assert set(MESSAGE_CLASSES) == {t.value for t in MessageType}


def test_awakeable_suspension_example_packed_and_unpacked():
    # transcripts README §5.9: 00 01 00 00 00 00 00 04 + 12 02 11 01
    [frame] = FrameDecoder(max_message_bytes=MiB).feed(bytes.fromhex("0001000000000004 12021101"))
    packed = decode(frame.type, frame.body)
    assert isinstance(packed, pb.SuspensionMessage)
    assert list(packed.waiting_signals) == [17, 1]
    assert list(packed.waiting_completions) == []
    unpacked = decode(MessageType.SUSPENSION, bytes.fromhex("1011 1001 0802"))
    assert isinstance(unpacked, pb.SuspensionMessage)
    assert list(unpacked.waiting_signals) == [17, 1]
    assert list(unpacked.waiting_completions) == [2]


def test_run_proposal_becomes_wrapped_notification():
    # transcripts README §5.11
    proposal = bytes.fromhex("0801 7205") + b'"x-1"'
    cid, body = run_completion_from_proposal(proposal)
    assert cid == 1
    assert body == bytes.fromhex("0801 2a07 0a05") + b'"x-1"'
    failing = pb.ProposeRunCompletionMessage(
        result_completion_id=3,
        failure=pb.Failure(code=500, message="boom", metadata=[pb.FailureMetadata(key="k", value="v")]),
    ).SerializeToString()
    cid, body = run_completion_from_proposal(failing)
    parsed = decode(MessageType.RUN_COMPLETION, body)
    assert isinstance(parsed, pb.RunCompletionNotificationMessage)
    assert cid == 3 and parsed.completion_id == 3
    assert (parsed.failure.code, parsed.failure.message) == (500, "boom")
    assert [(m.key, m.value) for m in parsed.failure.metadata] == [("k", "v")]
    with pytest.raises(ProtocolError):
        run_completion_from_proposal(bytes.fromhex("0801"))


def test_notification_results_are_present_on_the_wire():
    assert notification(completion_id=1, value=b"") == bytes.fromhex("0801 2a00")
    assert notification(signal_id=17, value=b'"hello"') == bytes.fromhex("1011 2a09 0a07") + b'"hello"'
    assert notification(signal_name="go", void=True) == bytes.fromhex("1a02") + b"go" + bytes.fromhex("2200")
    assert notification(completion_id=2, state_keys=[]) == bytes.fromhex("0802 8a0100")
    assert notification(completion_id=2, state_keys=[b"a", b"b"]) == bytes.fromhex(
        "0802 8a0106 0a0161 0a0162"
    )
    inv = "inv_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF9"
    assert notification(completion_id=1, invocation_id=inv) == bytes.fromhex("0801 8201 26") + inv.encode()
    body = notification(completion_id=1, failure=(409, "promise was already completed"))
    parsed = decode(MessageType.COMPLETE_PROMISE_COMPLETION, body)
    assert isinstance(parsed, pb.CompletePromiseCompletionNotificationMessage)
    assert parsed.failure.code == 409
    # completion id 0 is still present (oneof presence)
    assert notification(completion_id=0, void=True) == bytes.fromhex("0800 2200")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"void": True},
        {"completion_id": 1},
        {"completion_id": 1, "signal_id": 2, "void": True},
        {"completion_id": 1, "void": True, "value": b"x"},
        {"completion_id": 1, "value": b"x", "failure_metadata": [("a", "b")]},
    ],
)
def test_notification_needs_one_id_and_one_result(kwargs: dict[str, object]):
    with pytest.raises(ValueError):
        notification(**kwargs)  # type: ignore[arg-type]


def test_start_message_versions():
    common = dict(
        raw_id=bytes(range(24)),
        debug_id="inv_1x",
        known_entries=1,
        state=[(b"a", b"1"), (b"b", b"")],
        partial_state=False,
        key="k",
        retry_count=2,
        duration_since_last_stored_entry_ms=537,
        random_seed=99,
    )
    v6 = start_message(**common, version=6)  # type: ignore[arg-type]
    v5 = start_message(**common, version=5)  # type: ignore[arg-type]
    [f6] = FrameDecoder(max_message_bytes=MiB).feed(v6)
    [f5] = FrameDecoder(max_message_bytes=MiB).feed(v5)
    m6, m5 = decode(f6.type, f6.body), decode(f5.type, f5.body)
    assert isinstance(m6, pb.StartMessage) and isinstance(m5, pb.StartMessage)
    assert f6.type == MessageType.START
    assert m6.random_seed == 99
    assert f6.body == f5.body + bytes.fromhex("4863")  # V5 omits field 9 entirely
    assert [(e.key, e.value) for e in m6.state_map] == [(b"a", b"1"), (b"b", b"")]
    assert m6.retry_count_since_last_stored_entry == 2
    assert m6.duration_since_last_stored_entry == 537
    assert not m6.partial_state and m6.key == "k" and m6.known_entries == 1
    with pytest.raises(ValueError):
        start_message(**{**common, "known_entries": 0}, version=6)  # type: ignore[arg-type]


def test_input_command():
    body = input_command(b"", [("x-restate-ingress-path", "/G/greet"), ("a", "b")])
    msg = decode(MessageType.INPUT_COMMAND, body)
    assert isinstance(msg, pb.InputCommandMessage)
    assert msg.HasField("value") and msg.value.content == b""
    assert [(h.key, h.value) for h in msg.headers] == [("x-restate-ingress-path", "/G/greet"), ("a", "b")]
    assert body.endswith(bytes.fromhex("7200"))


@given(
    value=st.binary(max_size=300),
    headers=st.lists(st.tuples(st.text(max_size=150), st.text(max_size=200)), max_size=6),
)
def test_input_command_is_the_protobuf_encoding(value: bytes, headers: list[tuple[str, str]]) -> None:
    # The hand-written encoder must give the protobuf library's bytes exactly (lengths past one varint byte too).
    expected = pb.InputCommandMessage(
        headers=[pb.Header(key=k, value=v) for k, v in headers], value=pb.Value(content=value)
    ).SerializeToString()
    assert input_command(value, headers) == expected


def test_decode_output():
    assert decode_output(bytes.fromhex("7200")) == (b"", None)
    assert decode_output(bytes.fromhex("7203 0a0135")) == (b"5", None)
    teapot = pb.OutputCommandMessage(failure=pb.Failure(code=418, message="I'm a teapot")).SerializeToString()
    assert decode_output(teapot) == (None, (418, "I'm a teapot", []))
    meta = pb.OutputCommandMessage(
        failure=pb.Failure(
            code=422,
            message="m",
            metadata=[pb.FailureMetadata(key="field", value="name"), pb.FailureMetadata(key="r", value="x")],
        )
    ).SerializeToString()
    assert decode_output(meta) == (None, (422, "m", [("field", "name"), ("r", "x")]))
    with pytest.raises(ProtocolError):
        decode_output(b"")


def test_command_completion_ids():
    call = pb.CallCommandMessage(
        service_name="Counter", handler_name="add", invocation_id_notification_idx=2, result_completion_id=3
    ).SerializeToString()
    assert command_completion_ids(MessageType.CALL_COMMAND, call) == [2, 3]
    send = pb.OneWayCallCommandMessage(service_name="C", invocation_id_notification_idx=1).SerializeToString()
    assert command_completion_ids(MessageType.ONE_WAY_CALL_COMMAND, send) == [1]
    sleep = pb.SleepCommandMessage(wake_up_time=1, result_completion_id=4, name="n").SerializeToString()
    assert command_completion_ids(MessageType.SLEEP_COMMAND, sleep) == [4]
    promise = pb.CompletePromiseCommandMessage(
        key="p", completion_value=pb.Value(content=b"x"), result_completion_id=1
    ).SerializeToString()
    assert command_completion_ids(MessageType.COMPLETE_PROMISE_COMMAND, promise) == [1]
    attach = pb.AttachInvocationCommandMessage(
        workflow_target=pb.WorkflowTarget(workflow_name="Flow", workflow_key="wf1"), result_completion_id=5
    ).SerializeToString()
    assert command_completion_ids(MessageType.ATTACH_INVOCATION_COMMAND, attach) == [5]
    set_state = pb.SetStateCommandMessage(key=b"k", value=pb.Value(content=b"v")).SerializeToString()
    assert command_completion_ids(MessageType.SET_STATE_COMMAND, set_state) == []
    assert command_completion_ids(MessageType.OUTPUT_COMMAND, bytes.fromhex("7200")) == []


def test_decode_errors():
    with pytest.raises(ProtocolError, match="no schema"):
        decode(0xFC00, b"")
    with pytest.raises(ProtocolError, match="no schema"):
        decode(0x0415, b"")
    with pytest.raises(ProtocolError, match="malformed"):
        decode(MessageType.START, b"\x0a\xff")  # truncated length-delimited field
    with pytest.raises(ProtocolError):
        decode(MessageType.START, b"\x12\x02\xff\xfe")  # debug_id is not UTF-8


def test_unknown_fields_are_kept_and_ignored():
    body = bytes.fromhex("5801") + bytes.fromhex("a00601")  # result_completion_id 1 + unknown field 100
    msg = decode(MessageType.RUN_COMMAND, body)
    assert isinstance(msg, pb.RunCommandMessage)
    assert msg.result_completion_id == 1
    assert msg.SerializeToString() == body


def test_optional_presence_round_trips():
    call = pb.CallCommandMessage(service_name="S", handler_name="h", idempotency_key="")
    body = call.SerializeToString()
    back = decode(MessageType.CALL_COMMAND, body)
    assert isinstance(back, pb.CallCommandMessage)
    assert back.HasField("idempotency_key")
    assert not decode(MessageType.CALL_COMMAND, b"").HasField("idempotency_key")
    err = decode(MessageType.ERROR, bytes.fromhex("0864 2000"))
    assert isinstance(err, pb.ErrorMessage)
    assert err.HasField("related_command_index") and err.related_command_index == 0
    assert not err.HasField("next_retry_delay")

"""Fuzzing the service-protocol decoder: whatever bytes a deployment sends, the frame decoder and the message
parsers either return something or raise ProtocolError, never another exception, and never wait for (or buffer)
more than one frame's worth of bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ProtocolError
from engine.invoker.protocol.framing import HEADER_SIZE, Frame, FrameDecoder, MessageType, encode_frame
from engine.invoker.protocol.messages import (
    MESSAGE_CLASSES,
    command_completion_ids,
    decode,
    decode_output,
    run_completion_from_proposal,
)

LIMIT = 4096
FUZZ = settings(max_examples=300, deadline=None)

# Valid frames (known control types, commands, notifications, custom entries) with bodies within the limit.
valid_frames = st.builds(
    Frame,
    type=st.one_of(st.sampled_from([t.value for t in MessageType if t < 0x0400]), st.integers(0x0400, 0xFFFF)),
    flags=st.integers(0, 0xFFFF),
    body=st.binary(max_size=64),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Frame], ProtocolError | None]:
    """Feed every chunk, then ``b""`` (the end of the stream surfaces an error found after the last frames)."""
    frames: list[Frame] = []
    for chunk in [*chunks, b""]:
        try:
            frames.extend(decoder.feed(chunk))
        except ProtocolError as exc:
            return frames, exc
        # never more than one incomplete frame (header + a body within the limit) is held
        assert decoder.buffered < HEADER_SIZE + LIMIT
    return frames, None


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=16))
def test_random_bytes_give_frames_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_message_bytes=LIMIT)
    frames, error = _feed_all(decoder, _chunks(data, cuts))
    # how the bytes were chunked changes nothing: the same frames, then the same error (or none)
    whole, whole_error = _feed_all(FrameDecoder(max_message_bytes=LIMIT), [data])
    assert frames == whole
    assert str(error) == str(whole_error)
    if error is None:
        # what came out is exactly a prefix of the input, re-encoded byte for byte
        consumed = b"".join(f.encode() for f in frames)
        assert data.startswith(consumed)
        assert decoder.buffered == len(data) - len(consumed)
    else:
        with pytest.raises(ProtocolError):  # a failed decoder stays failed
            decoder.feed(encode_frame(MessageType.END, b""))


@FUZZ
@given(st.lists(valid_frames, min_size=1, max_size=8), st.data())
def test_truncated_stream_returns_the_whole_frames_and_waits(fs: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(f.encode() for f in fs)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    decoder = FrameDecoder(max_message_bytes=LIMIT)
    frames, error = _feed_all(decoder, _chunks(wire[:cut], data.draw(st.lists(st.integers(0, 600), max_size=6))))
    assert error is None
    assert frames == fs[: len(frames)]
    assert len(frames) < len(fs)
    assert decoder.buffered == cut - sum(HEADER_SIZE + len(f.body) for f in frames)


@FUZZ
@given(
    st.lists(valid_frames, max_size=4),
    st.integers(0, 0xFFFF),
    st.integers(LIMIT + 1, 0xFFFF_FFFF),
    st.binary(max_size=32),
)
def test_oversized_length_prefix_is_refused_from_the_header(
    before: list[Frame], ty: int, length: int, tail: bytes
) -> None:
    wire = b"".join(f.encode() for f in before) + struct.pack(">HHI", ty, 0, length) + tail
    decoder = FrameDecoder(max_message_bytes=LIMIT)
    frames, error = _feed_all(decoder, [wire])
    assert frames == before
    assert error is not None and "exceeds the limit" in str(error)
    assert decoder.buffered == 0  # nothing of the announced body is waited for or kept


@FUZZ
@given(st.integers(0x0000, 0x03FF).filter(lambda t: t not in {m.value for m in MessageType}), st.binary(max_size=16))
def test_unknown_control_types_are_refused(ty: int, body: bytes) -> None:
    with pytest.raises(ProtocolError, match="unknown control"):
        FrameDecoder(max_message_bytes=LIMIT).feed(encode_frame(ty, body))


@FUZZ
@given(st.sampled_from(sorted(MESSAGE_CLASSES)) | st.integers(0, 0xFFFF), st.binary(max_size=256))
def test_message_parsers_raise_only_protocol_error(ty: int, body: bytes) -> None:
    for parse in (
        lambda: decode(ty, body),
        lambda: command_completion_ids(ty, body),
        lambda: run_completion_from_proposal(body),
        lambda: decode_output(body),
    ):
        try:
            parse()
        except ProtocolError:
            pass

"""Record framing: round trips and the checks that catch torn or damaged frames."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from engine.log.record import (
    FRAME_OVERHEAD,
    BadFrame,
    FrameReader,
    encode_batch,
    encode_frame,
    find_frame,
    valid_frame_at,
)

lsns = st.integers(min_value=1, max_value=2**63)
payload_lists = st.lists(st.binary(max_size=200), max_size=10)


def read_all(data: bytes, first_lsn: int) -> tuple[list[tuple[int, bytes | None]], BadFrame | None]:
    reader = FrameReader(io.BytesIO(data), size=len(data), next_lsn=first_lsn)
    records: list[tuple[int, bytes | None]] = []
    while True:
        result = reader.next()
        if result is None:
            return records, None
        if isinstance(result, BadFrame):
            return records, result
        records.append(result)


@given(first_lsn=lsns, payloads=payload_lists)
def test_batch_round_trips(first_lsn: int, payloads: list[bytes]) -> None:
    data = encode_batch(first_lsn, payloads)
    assert len(data) == sum(FRAME_OVERHEAD + len(p) for p in payloads)
    assert data == b"".join(encode_frame(first_lsn + i, p) for i, p in enumerate(payloads))
    records, bad = read_all(data, first_lsn)
    assert bad is None
    assert records == [(first_lsn + i, p) for i, p in enumerate(payloads)]


@given(payloads=st.lists(st.binary(max_size=100), min_size=1, max_size=5), data=st.data())
def test_truncation_anywhere_yields_a_prefix(payloads: list[bytes], data: st.DataObject) -> None:
    encoded = encode_batch(1, payloads)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    records, bad = read_all(encoded[:cut], 1)
    complete = 0
    end = 0
    for payload in payloads:
        end += FRAME_OVERHEAD + len(payload)
        if end <= cut:
            complete += 1
    assert records == [(i + 1, p) for i, p in enumerate(payloads[:complete])]
    # A cut exactly at a frame boundary is a clean end; anywhere else the partial frame is reported.
    assert (bad is None) == (cut == sum(FRAME_OVERHEAD + len(p) for p in payloads[:complete]))


@given(payloads=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=5), data=st.data())
def test_any_bit_flip_is_detected(payloads: list[bytes], data: st.DataObject) -> None:
    encoded = bytearray(encode_batch(7, payloads))
    bit = data.draw(st.integers(min_value=0, max_value=len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    records, bad = read_all(bytes(encoded), 7)
    assert bad is not None or len(records) < len(payloads)
    assert records == [(7 + i, p) for i, p in enumerate(payloads[: len(records)])]


def test_frame_at_the_wrong_lsn_is_rejected() -> None:
    frame = encode_frame(5, b"payload")
    records, bad = read_all(frame, 6)
    assert records == []
    assert bad is not None and "lsn 5" in bad.reason


def test_length_past_the_end_does_not_allocate() -> None:
    frame = bytearray(encode_frame(1, b"abc"))
    frame[0:4] = (2**32 - 1).to_bytes(4, "little")
    records, bad = read_all(bytes(frame), 1)
    assert records == []
    assert bad is not None and "runs past the end" in bad.reason


def test_skipping_payloads_still_tracks_lsns() -> None:
    data = encode_batch(1, [b"a" * 10, b"b" * 20, b"c"])
    reader = FrameReader(io.BytesIO(data), size=len(data), next_lsn=1)
    assert reader.next(verify=False) == (1, None)
    assert reader.next(verify=False) == (2, None)
    assert reader.next() == (3, b"c")
    assert reader.next() is None


def test_find_frame_resynchronises_after_damage() -> None:
    first = bytearray(encode_frame(1, b"x" * 30))
    first[0] ^= 0xFF  # damage the length field: the next frame can't be found by walking
    second = encode_frame(2, b"y" * 10)
    data = bytes(first) + second
    assert find_frame(data, 2) == len(first)
    assert valid_frame_at(data, len(first), 2)
    assert not valid_frame_at(data, len(first), 3)
    assert find_frame(data, 3) == -1

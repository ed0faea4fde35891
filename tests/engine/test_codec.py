"""The engine's durable codec: round trips, and a fixed byte vector so a faster encoder can never change the format
of data already on disk."""

from __future__ import annotations

import dataclasses
import enum
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import codec
from engine.partition.types import AppendEntries, JournalEntry, Status

# Encoded by the first (isinstance-chain) implementation; every later encoder must produce the same bytes.
GOLDEN_VALUE = (
    AppendEntries(
        invocation_id=bytes(range(24)),
        epoch=3,
        entries=(JournalEntry(ty=0x400, body=b"\x01\x02"),),
        now_ms=1700000000000,
    ),
    Status.INVOKED,
    {"k": [None, True, 2**70, -5, 1.25, "é"]},
)
GOLDEN_HEX = (
    "08030000000a66000000040000000618000000000102030405060708090a0b0c0d0e0f101112131415161703030000000000000008"
    "010000000a650000000200000003000400000000000006020000000102030068e5cf8b010000030200000000000000090100000007"
    "010000006b08060000000002040900000000000000000000004003fbffffffffffffff05000000000000f43f0702000000c3a9"
)


def test_golden_bytes() -> None:
    assert codec.encode(GOLDEN_VALUE).hex() == GOLDEN_HEX
    decoded = codec.decode(bytes.fromhex(GOLDEN_HEX))
    assert decoded[0] == GOLDEN_VALUE[0]
    assert decoded[1] == int(Status.INVOKED)
    assert decoded[2] == {"k": (None, True, 2**70, -5, 1.25, "é")}


class _Color(enum.Enum):
    RED = "red"


class _Int(int):
    pass


def test_subclasses_and_enums_encode_as_their_base_values() -> None:
    assert codec.encode(_Color.RED) == codec.encode("red")
    assert codec.encode(_Color.RED) == codec.encode("red")  # second time through the cached dispatch
    assert codec.encode(_Int(7)) == codec.encode(7)
    assert codec.encode(bytearray(b"ab")) == codec.encode(b"ab")
    assert codec.encode(memoryview(b"ab")) == codec.encode(b"ab")


def test_unknown_types_are_refused() -> None:
    with pytest.raises(TypeError, match="cannot encode object"):
        codec.encode(object())
    with pytest.raises(TypeError, match="cannot encode set"):
        codec.encode({1})


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary() | st.text()
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner).map(tuple) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(_values)
def test_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


@given(st.binary(min_size=24, max_size=24), st.integers(0, 2**32), st.lists(st.binary(max_size=40), max_size=5))
def test_records_round_trip(inv: bytes, epoch: int, bodies: list[bytes]) -> None:
    record = AppendEntries(
        invocation_id=inv, epoch=epoch, entries=tuple(JournalEntry(ty=0x0C00, body=b) for b in bodies)
    )
    assert codec.decode(codec.encode(record)) == record


def test_row_cache_returns_what_was_encoded_and_stays_bounded() -> None:
    cache = codec.RowCache(limit=2)
    value = GOLDEN_VALUE[0]
    raw = cache.encode(value)
    assert raw == codec.encode(value)
    assert cache.decode(raw) is value  # no decode: the value the processor wrote
    other = AppendEntries(invocation_id=bytes(24), epoch=1, entries=())
    cache.decode(cache.encode(other))
    cache.encode(AppendEntries(invocation_id=bytes(24), epoch=2, entries=()))  # over the limit: starts over
    assert cache.decode(raw) == value
    assert cache.decode(raw) is not value


def test_row_cache_verify_catches_values_that_do_not_round_trip() -> None:
    cache = codec.RowCache(limit=8)
    cache.verify = True
    with pytest.raises(AssertionError, match="round trip"):
        cache.encode(AppendEntries(invocation_id=bytes(24), epoch=1, entries=[]))  # type: ignore[arg-type]


def _reference(v: object) -> bytes:
    """The format, written the slow obvious way (an isinstance chain), to pin the generated per-class encoders."""
    if v is None:
        return bytes([codec.T_NONE])
    if isinstance(v, enum.Enum):
        return _reference(v.value)
    if isinstance(v, bool):
        return bytes([codec.T_TRUE if v else codec.T_FALSE])
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return bytes([codec.T_INT]) + v.to_bytes(8, "little", signed=True)
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return bytes([codec.T_BIGINT]) + len(raw).to_bytes(4, "little") + raw
    if isinstance(v, float):
        return bytes([codec.T_FLOAT]) + struct.pack("<d", v)
    if isinstance(v, bytes | bytearray):
        return bytes([codec.T_BYTES]) + len(v).to_bytes(4, "little") + v
    if isinstance(v, str):
        raw = v.encode()
        return bytes([codec.T_STR]) + len(raw).to_bytes(4, "little") + raw
    if isinstance(v, tuple | list):
        return bytes([codec.T_LIST]) + len(v).to_bytes(4, "little") + b"".join(_reference(i) for i in v)
    if isinstance(v, dict):
        body = b"".join(_reference(k) + _reference(i) for k, i in v.items())
        return bytes([codec.T_DICT]) + len(v).to_bytes(4, "little") + body
    assert dataclasses.is_dataclass(v) and not isinstance(v, type)
    names = [f.name for f in dataclasses.fields(v)]
    head = bytes([codec.T_DC]) + codec._tag_of[type(v)].to_bytes(4, "little") + len(names).to_bytes(4, "little")
    return head + b"".join(_reference(getattr(v, n)) for n in names)


# Any value in any field: the generated encoders inline str/int/None/bytes/bool and must fall back for the rest.
_field_values = _values | st.sampled_from(list(Status)) | st.integers(-(2**70), 2**70) | st.binary().map(bytearray)


@given(_field_values, _field_values, st.lists(_field_values, max_size=3))
def test_generated_encoders_write_the_reference_format(a: object, b: object, more: list[object]) -> None:
    value = (
        AppendEntries(invocation_id=a, epoch=b, entries=tuple(JournalEntry(ty=x, body=b) for x in more)),  # type: ignore[arg-type]
        [a, (b, a), Status.INVOKED],
    )
    assert codec.encode(value) == _reference(value)


class _Perm(enum.Flag):
    R = 1
    W = 2


def test_enum_values_not_listed_as_members_encode_as_their_value() -> None:
    assert codec.encode(_Perm.R) == codec.encode(1)  # fills the per-class table
    assert codec.encode(_Perm.R | _Perm.W) == codec.encode(3)  # a combination is not in the table


def _decode_field_by_field(raw: bytes) -> object:
    """The generic decoder alone (every dataclass through ``__init__``), to pin the generated per-class decoders."""
    saved = dict(codec._decoders)
    try:
        for tag, cls in codec._by_tag.items():
            codec._decoders[tag] = lambda m, pos, n, cls=cls: codec._dec_fields(cls, m, pos, n)
        return codec.decode(raw)
    finally:
        codec._decoders.clear()
        codec._decoders.update(saved)


@given(_field_values, _field_values, st.lists(_field_values, max_size=3))
def test_generated_decoders_read_what_field_by_field_reads(a: object, b: object, more: list[object]) -> None:
    value = (
        AppendEntries(invocation_id=a, epoch=b, entries=tuple(JournalEntry(ty=x, body=b) for x in more)),  # type: ignore[arg-type]
        [a, (b, (a, more)), Status.INVOKED],
    )
    raw = codec.encode(value)
    fast = codec.decode(raw)
    assert fast == _decode_field_by_field(raw)
    assert codec.encode(fast) == raw
    record = fast[0]
    assert type(record) is AppendEntries and type(record.entries) is tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.epoch = 1  # type: ignore[misc]  # filled slot by slot, still frozen


@codec.register(9_990_001)
@dataclasses.dataclass(frozen=True, slots=True)
class _Old:
    a: int
    b: str = "b-default"


@codec.register(9_990_002)
@dataclasses.dataclass(frozen=True)
class _Checked:  # no slots and a __post_init__: built through __init__, which runs it
    a: int

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("negative")


def _row(tag: int, *fields: bytes) -> bytes:
    return bytes([codec.T_DC]) + tag.to_bytes(4, "little") + len(fields).to_bytes(4, "little") + b"".join(fields)


def test_decoders_fill_missing_trailing_fields_with_defaults_and_skip_unknown_ones() -> None:
    assert codec.decode(_row(9_990_001, codec.encode(7))) == _Old(a=7)
    assert codec.decode(_row(9_990_001, codec.encode(7), codec.encode("x"), codec.encode(b"new"))) == _Old(7, "x")
    assert codec.decode(codec.encode(_Checked(a=3))) == _Checked(a=3)
    with pytest.raises(ValueError, match="negative"):
        codec.decode(_row(9_990_002, codec.encode(-1)))
    with pytest.raises(ValueError, match="unknown record tag"):
        codec.decode(_row(9_990_999))

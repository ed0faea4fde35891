"""A small, safe, deterministic binary codec for the engine's own durable data (log records, table rows).

Values are tagged: None, bool, int (signed 64-bit, or arbitrary size as bytes), float, bytes, str, tuple/list,
dict with str keys, enums (stored as their value) and registered frozen dataclasses (stored as a tag + their
fields in declaration order). Decoding rebuilds the same dataclasses. Nothing in the data can make this run code
(each registered class's encoder is generated once, from its field names), and the format does not depend on the
Python version (unlike pickle or marshal).

Adding a field at the END of a dataclass with a default keeps old rows readable (missing trailing fields take the
default); removing or reordering fields is a breaking change.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable
from typing import Any, TypeVar

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_TAG_I64 = struct.Struct("<Bq")
_TAG_U32 = struct.Struct("<BI")

T_NONE, T_FALSE, T_TRUE, T_INT, T_BIGINT, T_FLOAT, T_BYTES, T_STR, T_LIST, T_DICT, T_DC = range(11)

_by_tag: dict[int, type[Any]] = {}
_tag_of: dict[type[Any], int] = {}
_fields_of: dict[type[Any], tuple[str, ...]] = {}

C = TypeVar("C")


def register(tag: int) -> Any:
    """Class decorator: make a frozen dataclass encodable under a stable numeric ``tag``."""

    def deco(cls: type[C]) -> type[C]:
        if tag in _by_tag and _by_tag[tag] is not cls:
            raise RuntimeError(f"codec tag {tag} used by {_by_tag[tag]!r} and {cls!r}")
        _by_tag[tag] = cls
        _tag_of[cls] = tag
        _fields_of[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        # The class's encoder and decoder are generated on first use (compiling them all at import took ~0.1 s of
        # every process's start-up).
        return cls

    return deco


def header_of(cls: type[Any]) -> bytes:
    """The bytes every encoded instance of the registered dataclass ``cls`` starts with (type and class tag)."""
    return bytes([T_DC]) + _U32.pack(_tag_of[cls])


def encode(value: Any) -> bytes:
    out = bytearray()
    _enc(value, out)
    return bytes(out)


# Encoding dispatches on the exact type through this table (one dict lookup instead of an isinstance chain: the
# codec runs several times per invocation on the hot path). Subclasses, enums and big ints take the slow path.
_Encoder = Callable[[Any, bytearray], None]
_encoders: dict[type[Any], _Encoder] = {}


def _enc(v: Any, out: bytearray) -> None:
    fn = _encoders.get(type(v))
    if fn is not None:
        fn(v, out)
    else:
        _enc_slow(v, out)


def _enc_none(v: Any, out: bytearray) -> None:
    out.append(T_NONE)


def _enc_bool(v: bool, out: bytearray) -> None:
    out.append(T_TRUE if v else T_FALSE)


def _enc_int(v: int, out: bytearray) -> None:
    if -(2**63) <= v < 2**63:
        out += _TAG_I64.pack(T_INT, v)
    else:
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        out += _TAG_U32.pack(T_BIGINT, len(raw))
        out += raw


def _enc_bytes(v: bytes | bytearray | memoryview, out: bytearray) -> None:
    out += _TAG_U32.pack(T_BYTES, len(v))
    out += v


def _enc_str(v: str, out: bytearray) -> None:
    raw = v.encode()
    out += _TAG_U32.pack(T_STR, len(raw))
    out += raw


def _enc_float(v: float, out: bytearray) -> None:
    out.append(T_FLOAT)
    out += _F64.pack(v)


def _enc_list(v: tuple[Any, ...] | list[Any], out: bytearray) -> None:
    out += _TAG_U32.pack(T_LIST, len(v))
    for item in v:
        t = type(item)
        if t is str:  # headers are tuples of (str, str) pairs: inline the common case
            raw = item.encode()
            out += _TAG_U32.pack(T_STR, len(raw))
            out += raw
        elif t is tuple:
            _enc_list(item, out)
        else:
            _enc(item, out)


def _enc_dict(v: dict[Any, Any], out: bytearray) -> None:
    out += _TAG_U32.pack(T_DICT, len(v))
    for k, item in v.items():
        _enc(k, out)
        _enc(item, out)


def _dataclass_encoder(cls: type[Any], tag: int, names: tuple[str, ...]) -> _Encoder:
    """An encoder written for ``cls``: one straight-line function with the common scalar types inlined per field.

    Same bytes as encoding field by field through :func:`_enc` (the golden test pins them); the generic dispatch,
    a function call per field, was most of the cost of encoding a wide status row.
    """
    lines = [f"def enc_{cls.__name__}(v, out):", "    out += header"]
    for name in names:
        if not name.isidentifier():  # dataclass field names always are; keep generated code honest anyway
            raise RuntimeError(f"cannot generate an encoder for field {name!r} of {cls!r}")
        lines += [
            f"    x = v.{name}",
            "    t = type(x)",
            "    if t is str:",
            "        r = x.encode()",
            "        out += pack_tu32(T_STR, len(r))",
            "        out += r",
            "    elif t is int and LO <= x < HI:",
            "        out += pack_ti64(T_INT, x)",
            "    elif x is None:",
            "        out.append(T_NONE)",
            "    elif t is bytes:",
            "        out += pack_tu32(T_BYTES, len(x))",
            "        out += x",
            "    elif t is bool:",
            "        out.append(T_TRUE if x else T_FALSE)",
            "    else:",
            "        fn = encoders.get(t)",
            "        if fn is None:",
            "            enc_slow(x, out)",
            "        else:",
            "            fn(x, out)",
        ]
    namespace: dict[str, Any] = {
        "header": bytes([T_DC]) + _U32.pack(tag) + _U32.pack(len(names)),
        "pack_tu32": _TAG_U32.pack,
        "pack_ti64": _TAG_I64.pack,
        "encoders": _encoders,
        "enc_slow": _enc_slow,
        "LO": -(2**63),
        "HI": 2**63,
        "T_STR": T_STR,
        "T_INT": T_INT,
        "T_NONE": T_NONE,
        "T_BYTES": T_BYTES,
        "T_TRUE": T_TRUE,
        "T_FALSE": T_FALSE,
    }
    exec(compile("\n".join(lines), f"<codec encoder for {cls.__qualname__}>", "exec"), namespace)
    fn: _Encoder = namespace[f"enc_{cls.__name__}"]
    return fn


_encoders.update(
    {
        type(None): _enc_none,
        bool: _enc_bool,
        int: _enc_int,
        bytes: _enc_bytes,
        bytearray: _enc_bytes,
        memoryview: _enc_bytes,
        str: _enc_str,
        float: _enc_float,
        tuple: _enc_list,
        list: _enc_list,
        dict: _enc_dict,
    }
)


def _enum_encoder(cls: type[enum.Enum]) -> _Encoder:
    """Enum classes are few and small: each member's bytes are computed once (those of its value)."""
    table = {member: encode(member.value) for member in cls}

    def enc(v: Any, out: bytearray) -> None:
        raw = table.get(v)
        if raw is None:  # not a listed member (a combination of Flag members, say): encode its value
            _enc(v.value, out)
        else:
            out += raw

    return enc


def _enc_slow(v: Any, out: bytearray) -> None:
    cls = type(v)
    tag = _tag_of.get(cls)
    if tag is not None:
        fn = _encoders[cls] = _dataclass_encoder(cls, tag, _fields_of[cls])
        fn(v, out)
    elif isinstance(v, enum.Enum):
        _encoders[type(v)] = _enum_encoder(type(v))  # dispatch this enum class directly from now on
        _enc(v, out)
    elif isinstance(v, bool):
        _enc_bool(v, out)
    elif isinstance(v, int):
        _enc_int(v, out)
    elif isinstance(v, bytes | bytearray | memoryview):
        _enc_bytes(v, out)
    elif isinstance(v, str):
        _enc_str(v, out)
    elif isinstance(v, float):
        _enc_float(v, out)
    elif isinstance(v, tuple | list):
        _enc_list(v, out)
    elif isinstance(v, dict):
        _enc_dict(v, out)
    else:
        raise TypeError(f"cannot encode {type(v).__name__}")


def decode(data: bytes) -> Any:
    value, pos = _dec(bytes(data), 0)
    if pos != len(data):
        raise ValueError(f"trailing bytes after value ({len(data) - pos})")
    return value


def _dec(m: bytes, pos: int) -> tuple[Any, int]:
    t = m[pos]
    pos += 1
    if t == T_NONE:
        return None, pos
    if t == T_TRUE:
        return True, pos
    if t == T_FALSE:
        return False, pos
    if t == T_INT:
        return _I64.unpack_from(m, pos)[0], pos + 8
    if t == T_BYTES:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        return bytes(m[pos : pos + n]), pos + n
    if t == T_STR:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        return m[pos : pos + n].decode(), pos + n
    if t == T_LIST:
        return _dec_list(m, pos)
    if t == T_DICT:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        d: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _dec(m, pos)
            d[k], pos = _dec(m, pos)
        return d, pos
    if t == T_DC:
        tag, n = _TAG_N.unpack_from(m, pos)
        dec = _decoders.get(tag)
        if dec is None:
            cls = _by_tag.get(tag)
            if cls is None:
                raise ValueError(f"unknown record tag {tag}")
            dec = _decoders[tag] = _dataclass_decoder(cls, _fields_of[cls])
        return dec(m, pos + 8, n)
    if t == T_FLOAT:
        return _F64.unpack_from(m, pos)[0], pos + 8
    if t == T_BIGINT:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        return int.from_bytes(m[pos : pos + n], "little", signed=True), pos + n
    raise ValueError(f"bad type tag {t} at {pos - 1}")


def _dec_list(m: bytes, pos: int) -> tuple[tuple[Any, ...], int]:
    """A list's items, from just after its type tag (strings and nested lists, as in headers, inlined)."""
    (n,) = _U32.unpack_from(m, pos)
    pos += 4
    items: list[Any] = []
    append = items.append
    for _ in range(n):
        t = m[pos]
        if t == T_STR:
            k = pos + 5 + _U32.unpack_from(m, pos + 1)[0]
            append(m[pos + 5 : k].decode())
            pos = k
        elif t == T_LIST:
            item, pos = _dec_list(m, pos + 1)
            append(item)
        else:
            item, pos = _dec(m, pos)
            append(item)
    return tuple(items), pos


def _dec_fields(cls: type[Any], m: bytes, pos: int, n: int) -> tuple[Any, int]:
    """A dataclass's ``n`` encoded fields, field by field: missing trailing fields take their defaults, unknown
    trailing fields (written by a newer version) are skipped."""
    names = _fields_of[cls]
    kwargs: dict[str, Any] = {}
    for i in range(n):
        value, pos = _dec(m, pos)
        if i < len(names):
            kwargs[names[i]] = value
    return cls(**kwargs), pos


_Decoder = Callable[[bytes, int, int], tuple[Any, int]]
_decoders: dict[int, _Decoder] = {}
_TAG_N = struct.Struct("<II")


def _dataclass_decoder(cls: type[Any], names: tuple[str, ...]) -> _Decoder:
    """A decoder written for ``cls``, the mirror of :func:`_dataclass_encoder`: common scalar types inlined per
    field, and the instance's slots filled directly (a frozen ``__init__`` costs one ``object.__setattr__`` per
    field). Rows with another field count, and classes whose slots cannot be filled faithfully (no ``__slots__``,
    a ``__post_init__``, ``init=False`` fields), take :func:`_dec_fields`, which builds through ``__init__``."""
    fields = dataclasses.fields(cls)
    slots = getattr(cls, "__slots__", None)
    direct = (
        slots is not None
        and not hasattr(cls, "__post_init__")
        and all(f.init for f in fields)
        and set(names) == set(slots)
    )
    lines = [f"def dec_{cls.__name__}(m, pos, n):", f"    if n != {len(names)}:", "        return slow(cls, m, pos, n)"]
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise RuntimeError(f"cannot generate a decoder for field {name!r} of {cls!r}")
        x = f"f{i}"
        lines += [
            "    t = m[pos]",
            "    if t == T_STR:",
            "        k = pos + 5 + u32(m, pos + 1)[0]",
            f"        {x} = m[pos + 5 : k].decode()",
            "        pos = k",
            "    elif t == T_INT:",
            f"        {x} = i64(m, pos + 1)[0]",
            "        pos += 9",
            "    elif t == T_NONE:",
            f"        {x} = None",
            "        pos += 1",
            "    elif t == T_BYTES:",
            "        k = pos + 5 + u32(m, pos + 1)[0]",
            f"        {x} = bytes(m[pos + 5 : k])",
            "        pos = k",
            "    elif t == T_LIST:",
            f"        {x}, pos = dec_list(m, pos + 1)",
            "    else:",
            f"        {x}, pos = dec(m, pos)",
        ]
    if direct:
        lines.append("    o = new(cls)")
        lines += [f"    set_{name}(o, f{i})" for i, name in enumerate(names)]
        lines.append("    return o, pos")
    else:
        args = ", ".join(f"{name}=f{i}" for i, name in enumerate(names))
        lines.append(f"    return cls({args}), pos")
    namespace: dict[str, Any] = {
        "cls": cls,
        "slow": _dec_fields,
        "dec": _dec,
        "dec_list": _dec_list,
        "new": object.__new__,
        "u32": _U32.unpack_from,
        "i64": _I64.unpack_from,
        "T_STR": T_STR,
        "T_INT": T_INT,
        "T_NONE": T_NONE,
        "T_BYTES": T_BYTES,
        "T_LIST": T_LIST,
    }
    if direct:
        for name in names:
            namespace[f"set_{name}"] = getattr(cls, name).__set__  # the slot's member descriptor
    exec(compile("\n".join(lines), f"<codec decoder for {cls.__qualname__}>", "exec"), namespace)
    fn: _Decoder = namespace[f"dec_{cls.__name__}"]
    return fn


class RowCache:
    """A bounded map from encoded rows to the immutable values they decode to.

    A status row is encoded by the partition processor and decoded again moments later (the next record of the
    same invocation, the invoker loading an attempt); decoding a wide frozen dataclass is the costly half. Only
    for values that decode to an equal value (tuples, not lists, in their fields). Plain dict operations, so the
    partition thread and the event loop may share one; when full it starts over.
    """

    verify = False  # tests set this: every cached value is checked against a real decode

    def __init__(self, limit: int) -> None:
        self._rows: dict[bytes, Any] = {}
        self._limit = limit

    def encode(self, value: Any) -> bytes:
        raw = encode(value)
        if self.verify and decode(raw) != value:
            raise AssertionError(f"{type(value).__name__} does not survive a round trip: {value!r}")
        self._remember(raw, value)
        return raw

    def decode(self, raw: bytes) -> Any:
        value = self._rows.get(raw)
        if value is None:
            value = decode(raw)
            self._remember(raw, value)
        return value

    def _remember(self, raw: bytes, value: Any) -> None:
        if len(self._rows) >= self._limit:
            self._rows.clear()
        self._rows[raw] = value

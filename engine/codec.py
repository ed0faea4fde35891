"""A small, safe, deterministic binary codec for the engine's own durable data (log records, table rows).

Values are tagged: None, bool, int (signed 64-bit, or arbitrary size as bytes), float, bytes, str, tuple/list,
dict with str keys, enums (stored as their value) and registered frozen dataclasses (stored as a tag + their
fields in declaration order). Decoding rebuilds the same dataclasses. Nothing here can execute code, and the format
does not depend on the Python version (unlike pickle or marshal).

Adding a field at the END of a dataclass with a default keeps old rows readable (missing trailing fields take the
default); removing or reordering fields is a breaking change.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Any, TypeVar

_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")

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
        return cls

    return deco


def encode(value: Any) -> bytes:
    out = bytearray()
    _enc(value, out)
    return bytes(out)


def _enc(v: Any, out: bytearray) -> None:
    if v is None:
        out.append(T_NONE)
    elif v is True:
        out.append(T_TRUE)
    elif v is False:
        out.append(T_FALSE)
    elif isinstance(v, enum.Enum):
        _enc(v.value, out)
    elif isinstance(v, int):
        if -(2**63) <= v < 2**63:
            out.append(T_INT)
            out += _I64.pack(v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            out.append(T_BIGINT)
            out += _U32.pack(len(raw))
            out += raw
    elif isinstance(v, bytes | bytearray | memoryview):
        out.append(T_BYTES)
        out += _U32.pack(len(v))
        out += v
    elif isinstance(v, str):
        raw = v.encode()
        out.append(T_STR)
        out += _U32.pack(len(raw))
        out += raw
    elif isinstance(v, float):
        out.append(T_FLOAT)
        out += _F64.pack(v)
    elif isinstance(v, tuple | list):
        out.append(T_LIST)
        out += _U32.pack(len(v))
        for item in v:
            _enc(item, out)
    elif isinstance(v, dict):
        out.append(T_DICT)
        out += _U32.pack(len(v))
        for k, item in v.items():
            _enc(k, out)
            _enc(item, out)
    else:
        tag = _tag_of.get(type(v))
        if tag is None:
            raise TypeError(f"cannot encode {type(v).__name__}")
        names = _fields_of[type(v)]
        out.append(T_DC)
        out += _U32.pack(tag)
        out += _U32.pack(len(names))
        for name in names:
            _enc(getattr(v, name), out)


def decode(data: bytes) -> Any:
    value, pos = _dec(memoryview(data), 0)
    if pos != len(data):
        raise ValueError(f"trailing bytes after value ({len(data) - pos})")
    return value


def _dec(m: memoryview, pos: int) -> tuple[Any, int]:
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
        return str(m[pos : pos + n], "utf-8"), pos + n
    if t == T_LIST:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = _dec(m, pos)
            items.append(item)
        return tuple(items), pos
    if t == T_DICT:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        d: dict[Any, Any] = {}
        for _ in range(n):
            k, pos = _dec(m, pos)
            d[k], pos = _dec(m, pos)
        return d, pos
    if t == T_DC:
        tag, n = struct.unpack_from("<II", m, pos)
        pos += 8
        cls = _by_tag.get(tag)
        if cls is None:
            raise ValueError(f"unknown record tag {tag}")
        names = _fields_of[cls]
        kwargs: dict[str, Any] = {}
        for i in range(n):
            value, pos = _dec(m, pos)
            if i < len(names):
                kwargs[names[i]] = value
        return cls(**kwargs), pos
    if t == T_FLOAT:
        return _F64.unpack_from(m, pos)[0], pos + 8
    if t == T_BIGINT:
        (n,) = _U32.unpack_from(m, pos)
        pos += 4
        return int.from_bytes(m[pos : pos + n], "little", signed=True), pos + n
    raise ValueError(f"bad type tag {t} at {pos - 1}")

"""Identifiers shared with Restate: invocation ids, partition keys, awakeable ids, deployment ids.

Wire facts (``service-protocol.md`` §6):

* A raw invocation id is 24 bytes: the partition key as u64 big-endian, then a 16-byte uuid (u128 big-endian).
* Its string form is ``"inv_1"`` + 11 base62 chars + 22 base62 chars. Restate byte-swaps the integers before
  base62-encoding them, so the number encoded is the raw big-endian bytes *read as little-endian*.
* Keyed targets hash the key with XXH3-64 (seed 0) over ``key_utf8 + b"\\xff"`` (the ``0xFF`` is Rust's
  ``str`` hash terminator).
* Awakeable ids are ``"sign_1"`` + base64url (no padding) of ``raw_id (24) + signal index (u32 BE)``.

This module is pure and cheap to import (hashlib, secrets, xxhash).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import NewType

import xxhash

__all__ = [
    "AWAKEABLE_PREFIX",
    "INVOCATION_ID_PREFIX",
    "LEGACY_AWAKEABLE_PREFIX",
    "InvocationId",
    "PartitionKey",
    "awakeable_id",
    "idempotent_invocation_id",
    "new_deployment_id",
    "parse_awakeable_id",
    "partition_for",
    "partition_key_for_key",
    "random_invocation_id",
    "workflow_invocation_id",
]

PartitionKey = NewType("PartitionKey", int)
"""A u64 that decides which partition owns an invocation or an object key."""

INVOCATION_ID_PREFIX = "inv_"
AWAKEABLE_PREFIX = "sign_1"
LEGACY_AWAKEABLE_PREFIX = "prom_1"
_DEPLOYMENT_ID_PREFIX = "dp_"
_ID_VERSION = "1"

_U64_MAX = (1 << 64) - 1
_U128_MAX = (1 << 128) - 1
_PK_CHARS = 11  # ceil(64 / log2(62))
_UUID_CHARS = 22  # ceil(128 / log2(62))
_RAW_LEN = 24
_UUID_LEN = 16
_STR_LEN = len(INVOCATION_ID_PREFIX) + 1 + _PK_CHARS + _UUID_CHARS  # 38

_B62_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_B62_INDEX = {c: i for i, c in enumerate(_B62_ALPHABET)}
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def _b62_encode(n: int, width: int) -> str:
    digits: list[str] = []
    while n:
        n, rem = divmod(n, 62)
        digits.append(_B62_ALPHABET[rem])
    if len(digits) > width:
        raise ValueError(f"value does not fit in {width} base62 digits")
    return "".join(reversed(digits)).rjust(width, "0")


def _b62_decode(s: str, what: str) -> int:
    n = 0
    for c in s:
        d = _B62_INDEX.get(c)
        if d is None:
            raise ValueError(f"invalid base62 character {c!r} in {what}")
        n = n * 62 + d
    return n


@functools.lru_cache(maxsize=8192)
def _invocation_id_str(partition_key: int, uuid: bytes) -> str:
    # Cached: one invocation's id is formatted several times (ingress header, attempt headers, logs).
    # Restate's byte-order trap: the big-endian bytes are read back as little-endian integers.
    pk = int.from_bytes(partition_key.to_bytes(8, "big"), "little")
    uuid_le = int.from_bytes(uuid, "little")
    return INVOCATION_ID_PREFIX + _ID_VERSION + _b62_encode(pk, _PK_CHARS) + _b62_encode(uuid_le, _UUID_CHARS)


@dataclass(frozen=True, slots=True)
class InvocationId:
    """A Restate invocation id: a u64 partition key and a 16-byte uuid."""

    partition_key: int
    uuid: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.partition_key <= _U64_MAX:
            raise ValueError(f"partition key out of u64 range: {self.partition_key}")
        if len(self.uuid) != _UUID_LEN:
            raise ValueError(f"invocation uuid must be {_UUID_LEN} bytes, got {len(self.uuid)}")

    def to_bytes(self) -> bytes:
        """The 24 raw bytes carried in ``StartMessage.id`` and inside awakeable ids."""
        return self.partition_key.to_bytes(8, "big") + self.uuid

    @classmethod
    def from_bytes(cls, raw: bytes) -> InvocationId:
        if len(raw) != _RAW_LEN:
            raise ValueError(f"raw invocation id must be {_RAW_LEN} bytes, got {len(raw)}")
        return cls(partition_key=int.from_bytes(raw[0:8], "big"), uuid=bytes(raw[8:24]))

    def __str__(self) -> str:
        return _invocation_id_str(self.partition_key, self.uuid)

    def __repr__(self) -> str:
        return f"InvocationId({self})"

    @classmethod
    def parse(cls, s: str) -> InvocationId:
        """Parse the ``inv_1…`` string form; raises ``ValueError`` with the reason on malformed input."""
        if not s.startswith(INVOCATION_ID_PREFIX):
            raise ValueError(f"invocation id must start with {INVOCATION_ID_PREFIX!r}: {s!r}")
        if len(s) != _STR_LEN:
            raise ValueError(f"invocation id must be {_STR_LEN} characters, got {len(s)}: {s!r}")
        body = s[len(INVOCATION_ID_PREFIX) :]
        if body[0] != _ID_VERSION:
            raise ValueError(f"unsupported invocation id version {body[0]!r}: {s!r}")
        pk_le = _b62_decode(body[1 : 1 + _PK_CHARS], "invocation id")
        uuid_le = _b62_decode(body[1 + _PK_CHARS :], "invocation id")
        if pk_le > _U64_MAX:
            raise ValueError(f"invocation id partition key overflows u64: {s!r}")
        if uuid_le > _U128_MAX:
            raise ValueError(f"invocation id uuid overflows u128: {s!r}")
        raw_pk = pk_le.to_bytes(8, "little")
        return cls(partition_key=int.from_bytes(raw_pk, "big"), uuid=uuid_le.to_bytes(_UUID_LEN, "little"))


def _xxh3_terminated(s: str) -> PartitionKey:
    return PartitionKey(xxhash.xxh3_64_intdigest(s.encode("utf-8") + b"\xff"))


def partition_key_for_key(key: str) -> PartitionKey:
    """Partition key of a virtual-object / workflow key: ``XXH3_64(key_utf8 || 0xFF)``, seed 0."""
    return _xxh3_terminated(key)


def _sha_uuid(*parts: str) -> bytes:
    return hashlib.sha256(",".join(parts).encode("utf-8")).digest()[:_UUID_LEN]


def workflow_invocation_id(service: str, key: str) -> InvocationId:
    """Deterministic id of a workflow's ``run`` invocation (same in every attempt and every server)."""
    return InvocationId(partition_key=partition_key_for_key(key), uuid=_sha_uuid("wf", service, key))


def idempotent_invocation_id(service: str, key: str | None, handler: str, idempotency_key: str) -> InvocationId:
    """Deterministic id of a request carrying an idempotency key.

    Keyed targets (``key`` not None) take the partition key from the object key, unkeyed ones from the
    idempotency key. The uuid is ``SHA-256("ik," service ["," key] "," handler "," idempotency_key)[:16]``.
    """
    parts = ["ik", service]
    if key is not None:
        parts.append(key)
        pk = partition_key_for_key(key)
    else:
        pk = _xxh3_terminated(idempotency_key)
    parts += [handler, idempotency_key]
    return InvocationId(partition_key=pk, uuid=_sha_uuid(*parts))


def _ulid_bytes() -> bytes:
    """128-bit ULID: 48-bit unix-ms timestamp, then 80 random bits (big-endian)."""
    ms = time.time_ns() // 1_000_000
    return (ms & ((1 << 48) - 1)).to_bytes(6, "big") + secrets.token_bytes(10)


def random_invocation_id(partition_key: int | None = None) -> InvocationId:
    """A fresh id with a ULID uuid; a random partition key unless one is given."""
    pk = secrets.randbits(64) if partition_key is None else partition_key
    return InvocationId(partition_key=pk, uuid=_ulid_bytes())


def partition_for(partition_key: int, num_partitions: int) -> int:
    """Index of the partition owning ``partition_key`` when the u64 space is split in equal ranges."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    if not 0 <= partition_key <= _U64_MAX:
        raise ValueError(f"partition key out of u64 range: {partition_key}")
    return (partition_key * num_partitions) >> 64


def awakeable_id(invocation_id: InvocationId, signal_index: int) -> str:
    """The ``sign_1…`` id the SDK hands out for the awakeable backed by unnamed signal ``signal_index``."""
    if not 0 <= signal_index <= 0xFFFF_FFFF:
        raise ValueError(f"signal index out of u32 range: {signal_index}")
    raw = invocation_id.to_bytes() + signal_index.to_bytes(4, "big")
    return AWAKEABLE_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_awakeable_id(s: str) -> tuple[InvocationId, int, bool]:
    """Parse ``sign_1…`` (or legacy ``prom_1…``) into ``(invocation id, index, is_legacy_prom)``.

    For ``sign_1`` the index is a signal index; for ``prom_1`` it is a journal entry index (protocol ≤ V3).
    Base64 padding is optional.
    """
    if s.startswith(AWAKEABLE_PREFIX):
        legacy = False
    elif s.startswith(LEGACY_AWAKEABLE_PREFIX):
        legacy = True
    else:
        raise ValueError(f"awakeable id must start with {AWAKEABLE_PREFIX!r} or {LEGACY_AWAKEABLE_PREFIX!r}: {s!r}")
    body = s[len(AWAKEABLE_PREFIX) :]
    payload = body.rstrip("=")
    padding = -len(payload) % 4
    if len(body) - len(payload) not in (0, padding) or not _B64URL_RE.fullmatch(payload):
        raise ValueError(f"awakeable id is not unpadded or padded base64url: {s!r}")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * padding)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"awakeable id is not base64url: {s!r}") from exc
    if len(raw) != _RAW_LEN + 4:
        raise ValueError(f"awakeable id must decode to {_RAW_LEN + 4} bytes, got {len(raw)}: {s!r}")
    return InvocationId.from_bytes(raw[:_RAW_LEN]), int.from_bytes(raw[_RAW_LEN:], "big"), legacy


def new_deployment_id() -> str:
    """A fresh ``dp_1…`` deployment id: base62 of a 128-bit ULID with Restate's byte swap (26 chars)."""
    return _DEPLOYMENT_ID_PREFIX + _ID_VERSION + _b62_encode(int.from_bytes(_ulid_bytes(), "little"), _UUID_CHARS)

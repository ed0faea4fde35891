"""Key encodings of the RocksDB tables. One keyspace, one leading byte per table.

Variable-length parts are length-prefixed so that no key is a prefix of another table row by accident, and so that
all rows of one object key (state, inbox) are contiguous and can be range-scanned.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

APPLIED_LSN = b"\x00L"
METADATA = b"\x00M"
STATUS = b"\x01"
JOURNAL = b"\x02"
STATE = b"\x03"
LOCK = b"\x04"
INBOX = b"\x05"
DEDUP = b"\x06"
RETENTION = b"\x07"
ACTIVE = b"\x08"
INBOX_SEQ = b"\x09"


def _lp(s: str) -> bytes:
    raw = s.encode()
    return _U32.pack(len(raw)) + raw


def applied_lsn(partition: int) -> bytes:
    return APPLIED_LSN + _U16.pack(partition)


def metadata(name: str) -> bytes:
    return METADATA + name.encode()


def status(invocation_id: bytes) -> bytes:
    return STATUS + invocation_id


def journal_prefix(invocation_id: bytes) -> bytes:
    return JOURNAL + invocation_id


def journal(invocation_id: bytes, index: int) -> bytes:
    return JOURNAL + invocation_id + _U32.pack(index)


def object_prefix(table: bytes, service: str, key: str) -> bytes:
    return table + _lp(service) + _lp(key)


def state(service: str, key: str, name: bytes) -> bytes:
    return object_prefix(STATE, service, key) + name


def lock(service: str, key: str) -> bytes:
    return object_prefix(LOCK, service, key)


def inbox(service: str, key: str, seq: int) -> bytes:
    return object_prefix(INBOX, service, key) + _U64.pack(seq)


def inbox_seq(service: str, key: str) -> bytes:
    """The row with the key's next inbox sequence number and its head: the lowest sequence that may still be in
    the inbox (everything below was taken out). Scans start at the head so that they do not walk the tombstones of
    a busy key's consumed rows."""
    return object_prefix(INBOX_SEQ, service, key)


def pack_inbox_seq(next_seq: int, head: int) -> bytes:
    return _U64.pack(next_seq) + _U64.pack(head)


def parse_inbox_seq(raw: bytes | None) -> tuple[int, int]:
    """``(next_seq, head)``; rows written before the head existed hold only ``next_seq`` (head 0)."""
    if raw is None:
        return 0, 0
    if len(raw) == 8:
        return _U64.unpack(raw)[0], 0
    next_seq, head = struct.unpack(">QQ", raw)
    return next_seq, head


def dedup(partition: int, producer: str) -> bytes:
    """Last sequence applied from ``producer`` by ``partition``: each partition sees its own subsequence of a
    producer's records (e.g. the offsets of one Kafka partition whose keys map to several engine partitions)."""
    return DEDUP + _U16.pack(partition) + producer.encode()


def retention(expires_at_ms: int, invocation_id: bytes) -> bytes:
    return RETENTION + _U64.pack(max(0, expires_at_ms)) + invocation_id


def retention_upto(now_ms: int) -> bytes:
    return RETENTION + _U64.pack(max(0, now_ms) + 1)


def active(invocation_id: bytes) -> bytes:
    return ACTIVE + invocation_id


def u64(value: int) -> bytes:
    return _U64.pack(value)


def parse_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


# --- timers, outbox, promises ---------------------------------------------------------------------------------

TIMER = b"\x0a"
OUTBOX = b"\x0b"
OUTBOX_SEQ = b"\x00O"
PROMISE = b"\x0c"
PROMISE_WAITER = b"\x0d"

_U64_MAX = 2**64 - 1
TIMER_START = 0xFFFFFFFF  # completion id slot of a timer that starts a scheduled (delayed) invocation
_U32S = struct.Struct(">I")


def timer(wake_ms: int, invocation_id: bytes, completion_id: int) -> bytes:
    # Clamped to u64: a wake-up time past 2^64-1 ms (a huge delay on top of now) is "never" either way.
    return TIMER + _U64.pack(min(max(0, wake_ms), _U64_MAX)) + invocation_id + _U32S.pack(completion_id)


def parse_timer(key: bytes) -> tuple[int, bytes, int]:
    wake = int(_U64.unpack_from(key, 1)[0])
    inv = key[9:33]
    cid = int(_U32S.unpack_from(key, 33)[0])
    return wake, inv, cid


def outbox(partition: int, seq: int) -> bytes:
    return OUTBOX + _U16.pack(partition) + _U64.pack(seq)


def outbox_prefix(partition: int) -> bytes:
    return OUTBOX + _U16.pack(partition)


def outbox_seq(partition: int) -> bytes:
    return OUTBOX_SEQ + _U16.pack(partition)


def promise(service: str, key: str, name: str) -> bytes:
    return object_prefix(PROMISE, service, key) + name.encode()


def promise_waiters(service: str, key: str, name: str) -> bytes:
    return object_prefix(PROMISE_WAITER, service, key) + _lp(name)


def promise_waiter(service: str, key: str, name: str, invocation_id: bytes, completion_id: int) -> bytes:
    return promise_waiters(service, key, name) + invocation_id + _U32S.pack(completion_id)


EXTERNAL = b"\x0e"
EXTERNAL_SEQ = b"\x00E"


def external(partition: int, seq: int) -> bytes:
    return EXTERNAL + _U16.pack(partition) + _U64.pack(seq)


def external_prefix(partition: int) -> bytes:
    return EXTERNAL + _U16.pack(partition)


def external_seq(partition: int) -> bytes:
    return EXTERNAL_SEQ + _U16.pack(partition)

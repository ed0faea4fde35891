"""Record framing: how one log record sits in a segment file.

A frame is a 16-byte header followed by the payload::

    offset  size  field
    0       4     payload length (u32, little endian)
    4       4     crc32c over (lsn u64, length u32, payload)
    8       8     lsn (u64, little endian)
    16      n     payload

The checksum covers the LSN and the length as well as the payload, so a frame that is intact but sits at
the wrong place (stale bytes from an earlier life of the file, a frame copied by a buggy tool) fails the check
just like a flipped bit does. A torn write shows up as a short header, a length running past the end of the
file, or a bad checksum.

:class:`FrameReader` walks frames in a file; it is shared by recovery and by readers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import google_crc32c

from engine.errors import LogError

__all__ = [
    "FRAME_OVERHEAD",
    "BadFrame",
    "FrameReader",
    "RecordTooLargeError",
    "checksum",
    "encode_batch",
    "encode_frame",
    "find_frame",
    "frame_size",
    "valid_frame_at",
]

_HEADER = struct.Struct("<IIQ")  # payload length, crc32c, lsn
_CRC_PREFIX = struct.Struct("<QI")  # lsn, payload length: covered by the checksum

#: Bytes a frame adds to its payload.
FRAME_OVERHEAD = _HEADER.size


class RecordTooLargeError(LogError, ValueError):
    """A payload is larger than ``config.log.record_size_limit_bytes``; nothing was appended.

    Attributes:
        size: The payload's size in bytes.
        limit: The configured limit.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"log record of {size} bytes exceeds record_size_limit_bytes={limit}")
        self.size = size
        self.limit = limit


def checksum(lsn: int, payload: bytes) -> int:
    """The crc32c a frame with this LSN and payload must carry."""
    return int(google_crc32c.extend(google_crc32c.value(_CRC_PREFIX.pack(lsn, len(payload))), payload))


def frame_size(payload: bytes) -> int:
    """Bytes the framed payload takes in a segment."""
    return FRAME_OVERHEAD + len(payload)


def encode_frame(lsn: int, payload: bytes) -> bytes:
    """Frame one record.

    Args:
        lsn: The record's log sequence number (>= 1).
        payload: The record's bytes.

    Returns:
        Header and payload, ready to be written.
    """
    return _HEADER.pack(len(payload), checksum(lsn, payload), lsn) + payload


def encode_batch(first_lsn: int, payloads: Sequence[bytes]) -> bytes:
    """Frame consecutive records, numbered from ``first_lsn``, into one buffer (one write)."""
    parts: list[bytes] = []
    lsn = first_lsn
    for payload in payloads:
        parts.append(_HEADER.pack(len(payload), checksum(lsn, payload), lsn))
        parts.append(payload)
        lsn += 1
    return b"".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class BadFrame:
    """Where and why a frame failed its checks."""

    offset: int
    reason: str


class FrameReader:
    """Reads consecutive frames from a file, checking each one.

    The reader never allocates more than the file holds: a length running past ``size`` is a torn (or
    corrupt) frame, not a request for gigabytes.

    Args:
        file: A binary file positioned at ``offset``.
        size: The file's size in bytes; bytes past it are ignored.
        next_lsn: The LSN the frame at ``offset`` must carry.
        offset: Where the first frame starts.
    """

    __slots__ = ("_file", "_size", "next_lsn", "offset")

    def __init__(self, file: BinaryIO, *, size: int, next_lsn: int, offset: int = 0) -> None:
        self._file = file
        self._size = size
        self.next_lsn = next_lsn
        self.offset = offset

    def next(self, *, verify: bool = True) -> tuple[int, bytes | None] | BadFrame | None:
        """Read the next frame.

        Args:
            verify: When false, skip over the payload without reading it (used to seek forward to an LSN);
                the length and LSN are still checked.

        Returns:
            ``(lsn, payload)`` (payload ``None`` when not verified), ``None`` at a clean end of file, or a
            :class:`BadFrame` describing the first bad frame (the reader then stays before it).
        """
        start = self.offset
        remaining = self._size - start
        if remaining <= 0:
            return None
        if remaining < FRAME_OVERHEAD:
            return BadFrame(offset=start, reason=f"truncated header ({remaining} of {FRAME_OVERHEAD} bytes)")
        header = self._file.read(FRAME_OVERHEAD)
        if len(header) < FRAME_OVERHEAD:
            return BadFrame(offset=start, reason="file shrank while reading a header")
        length, crc, lsn = _HEADER.unpack(header)
        if lsn != self.next_lsn:
            self._file.seek(start)
            return BadFrame(offset=start, reason=f"lsn {lsn} where {self.next_lsn} was expected")
        if length > remaining - FRAME_OVERHEAD:
            self._file.seek(start)
            return BadFrame(
                offset=start, reason=f"length {length} runs past the end ({remaining - FRAME_OVERHEAD} left)"
            )
        payload: bytes | None
        if verify:
            payload = self._file.read(length)
            if len(payload) < length or checksum(lsn, payload) != crc:
                self._file.seek(start)
                return BadFrame(offset=start, reason="checksum mismatch")
        else:
            payload = None
            self._file.seek(length, 1)
        self.offset = start + FRAME_OVERHEAD + length
        self.next_lsn = lsn + 1
        return lsn, payload


def valid_frame_at(data: bytes, position: int, lsn: int) -> bool:
    """Whether ``data[position:]`` starts with an intact frame carrying ``lsn``."""
    if position < 0 or position + FRAME_OVERHEAD > len(data):
        return False
    length, crc, found = _HEADER.unpack_from(data, position)
    end = position + FRAME_OVERHEAD + length
    if found != lsn or end > len(data):
        return False
    return checksum(lsn, data[position + FRAME_OVERHEAD : end]) == int(crc)


def find_frame(data: bytes, lsn: int, start: int = 0) -> int:
    """Offset of the first intact frame carrying ``lsn`` at or after ``start`` in ``data``, or -1.

    Searches for the LSN's bytes and checks each candidate, so it can resynchronise after a frame whose length
    field is damaged.
    """
    needle = struct.pack("<Q", lsn)
    lsn_field = 8  # offset of the lsn inside the header
    position = data.find(needle, start + lsn_field)
    while position != -1:
        if valid_frame_at(data, position - lsn_field, lsn):
            return position - lsn_field
        position = data.find(needle, position + 1)
    return -1

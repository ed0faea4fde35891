"""Segment files: naming, creation, recovery and reading.

A log directory holds files named after the LSN of their first record, zero-padded so that names sort like
numbers (``00000000000000000001.seg``). Records inside a segment are consecutive, and each segment starts
right after the previous one ends, so the names alone say which segment holds an LSN. The name of the last
segment also carries the numbering across restarts when every record before it has been truncated away.

Everything here is blocking file work: callers on the event loop run it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CorruptRecordError, LogError
from engine.log.record import BadFrame, FrameReader, find_frame

__all__ = [
    "SEGMENT_SUFFIX",
    "RecoveredSegment",
    "SegmentRef",
    "create_segment",
    "fsync_directory",
    "list_segments",
    "read_segment",
    "recover_segment",
    "segment_name",
]

logger = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
_NAME_RE = re.compile(r"^(\d{20})\.seg$")


def segment_name(first_lsn: int) -> str:
    """File name of the segment whose first record has ``first_lsn``."""
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentRef:
    """A segment file and the LSN its first record has (or will have, while it is empty)."""

    first_lsn: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveredSegment:
    """A segment after recovery: the LSN its next record gets and its size in bytes."""

    ref: SegmentRef
    next_lsn: int
    size: int


def list_segments(directory: Path) -> list[SegmentRef]:
    """The segment files in ``directory``, oldest first. Other files are ignored."""
    refs = []
    for entry in os.scandir(directory):
        match = _NAME_RE.match(entry.name)
        if match and entry.is_file():
            refs.append(SegmentRef(first_lsn=int(match.group(1)), path=Path(entry.path)))
    refs.sort(key=lambda ref: ref.first_lsn)
    return refs


def fsync_directory(directory: Path) -> None:
    """Make file creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: Path, first_lsn: int) -> tuple[SegmentRef, int]:
    """Create an empty segment and make its directory entry durable.

    Returns:
        The segment and a write-only file descriptor the caller owns.
    """
    path = directory / segment_name(first_lsn)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fsync_directory(directory)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    logger.debug("created segment %s", path)
    return SegmentRef(first_lsn=first_lsn, path=path), fd


def recover_segment(ref: SegmentRef, *, last: bool) -> RecoveredSegment:
    """Check every frame of a segment; in the last segment, cut a torn tail.

    A bad frame ends the last segment (a write that was torn by a crash never got acknowledged, because
    appenders are answered only after the write and its fsync returned), unless an intact frame with a later
    LSN follows it: then the damage is inside records that had been written completely, and cutting there
    would silently drop acknowledged records.

    Caveat: a power loss can leave the pages of the single in-flight batch on disk in any order, so a torn
    unacknowledged batch can, rarely, look like damage followed by an intact record. That is reported too (the
    error names the offset); it needs an operator to cut the segment at that offset, never silent loss.

    Args:
        ref: The segment.
        last: Whether it is the newest segment (the only one a crash can leave torn).

    Returns:
        The segment's next LSN and size after recovery.

    Raises:
        CorruptRecordError: A bad frame in a segment other than the last, or one followed by intact frames.
    """
    with open(ref.path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        reader = FrameReader(file, size=size, next_lsn=ref.first_lsn)
        while True:
            result = reader.next()
            if result is None:
                return RecoveredSegment(ref=ref, next_lsn=reader.next_lsn, size=size)
            if isinstance(result, BadFrame):
                bad = result
                break
        if not last:
            raise CorruptRecordError(
                f"segment {ref.name}: {bad.reason} at offset {bad.offset} (record {reader.next_lsn})",
                segment=ref.name,
                offset=bad.offset,
            )
        file.seek(bad.offset)
        rest = file.read()
    # Resynchronise by searching for the next LSN's bytes: also finds frames after a damaged length field.
    following = find_frame(rest, reader.next_lsn + 1)
    if following != -1:
        raise CorruptRecordError(
            f"segment {ref.name}: {bad.reason} at offset {bad.offset} (record {reader.next_lsn}), but record "
            f"{reader.next_lsn + 1} at offset {bad.offset + following} is intact; refusing to cut "
            "acknowledged records",
            segment=ref.name,
            offset=bad.offset,
        )
    with open(ref.path, "r+b") as file:
        file.truncate(bad.offset)
        os.fsync(file.fileno())
    logger.warning(
        "cut the torn tail of segment %s at offset %d (%s): %d bytes dropped, next lsn %d",
        ref.name,
        bad.offset,
        bad.reason,
        size - bad.offset,
        reader.next_lsn,
    )
    return RecoveredSegment(ref=ref, next_lsn=reader.next_lsn, size=bad.offset)


def read_segment(ref: SegmentRef, *, from_lsn: int, to_lsn: int) -> Iterator[tuple[int, bytes]]:
    """Yield the records of one segment with ``from_lsn <= lsn <= to_lsn``, checking each.

    Records before ``from_lsn`` are skipped without reading their payloads.

    Raises:
        CorruptRecordError: A bad frame, or the segment ends before ``to_lsn``.
        LogError: The segment was deleted (prefix truncation) before it could be opened.
    """
    try:
        file = open(ref.path, "rb")
    except FileNotFoundError as exc:
        raise LogError(f"segment {ref.name} was truncated away while reading") from exc
    with file:
        size = os.fstat(file.fileno()).st_size
        reader = FrameReader(file, size=size, next_lsn=ref.first_lsn)
        while reader.next_lsn <= to_lsn:
            result = reader.next(verify=reader.next_lsn >= from_lsn)
            if result is None:
                raise CorruptRecordError(
                    f"segment {ref.name} ends at record {reader.next_lsn - 1}, expected it to hold {to_lsn}",
                    segment=ref.name,
                    offset=reader.offset,
                )
            if isinstance(result, BadFrame):
                raise CorruptRecordError(
                    f"segment {ref.name}: {result.reason} at offset {result.offset}",
                    segment=ref.name,
                    offset=result.offset,
                )
            lsn, payload = result
            if payload is not None:
                yield lsn, payload

"""Capstan's exception tree.

Everything the engine raises on purpose derives from :class:`EngineError`::

    EngineError
    ├── LogError
    │   ├── CorruptRecordError
    │   └── LogClosedError
    ├── StorageError
    │   └── StorageFullError (the disk is full; RocksDB resumes by itself once there is room)
    ├── InvocationError
    │   ├── NonDeterminismError
    │   └── InvocationNotFoundError
    ├── ProtocolError            (bad frames / messages from a deployment)
    ├── DeploymentError          (discovery failed, bad manifest, unreachable)
    ├── IngressError
    │   ├── OverloadedError
    │   └── BadRequestError
    └── ConfigError

Policy lives on the class: ``retriable`` says whether retrying the same operation may succeed, ``code`` is a
stable identifier used in API error bodies. Broken internal invariants raise :class:`EngineInternalError`
(never retried). Engine control signals derive from ``BaseException`` so ``except Exception`` cannot swallow them.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.StrEnum):
    INTERNAL = "CAP0000"
    LOG = "CAP0100"
    CORRUPT_RECORD = "CAP0101"
    LOG_CLOSED = "CAP0102"
    STORAGE = "CAP0200"
    INVOCATION = "CAP0300"
    NON_DETERMINISM = "CAP0301"
    INVOCATION_NOT_FOUND = "CAP0302"
    PROTOCOL = "CAP0400"
    DEPLOYMENT = "CAP0500"
    INGRESS = "CAP0600"
    OVERLOADED = "CAP0601"
    BAD_REQUEST = "CAP0602"
    CONFIG = "CAP0700"


class EngineError(Exception):
    """Root of every error Capstan raises on purpose."""

    retriable: ClassVar[bool] = False
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


class LogError(EngineError):
    code = ErrorCode.LOG


class CorruptRecordError(LogError):
    """A record failed its length or crc32c check somewhere other than the tail."""

    code = ErrorCode.CORRUPT_RECORD

    def __init__(self, message: str, *, segment: str = "", offset: int = -1) -> None:
        super().__init__(message)
        self.segment = segment
        self.offset = offset


class LogClosedError(LogError):
    code = ErrorCode.LOG_CLOSED


class StorageError(EngineError):
    code = ErrorCode.STORAGE
    retriable = True


class StorageFullError(StorageError):
    """RocksDB could not write for lack of disk space (ENOSPC).

    Its writes then fail until RocksDB has resumed, which it does by itself (its SstFileManager polls every few
    seconds) once the free space on the disk is at least one memtable (``write_buffer_size``, 64 MiB by default).
    Nothing is lost meanwhile: the partition log holds every record the tables miss.
    """


class InvocationError(EngineError):
    code = ErrorCode.INVOCATION


class NonDeterminismError(InvocationError):
    code = ErrorCode.NON_DETERMINISM

    def __init__(self, invocation_id: str, entry_index: int, expected: str, recorded: str) -> None:
        super().__init__(
            f"invocation {invocation_id}: journal entry {entry_index} was {recorded!r} but the code produced "
            f"{expected!r}; deploy code compatible with the running invocations"
        )
        self.invocation_id = invocation_id
        self.entry_index = entry_index
        self.expected = expected
        self.recorded = recorded


class InvocationNotFoundError(InvocationError):
    code = ErrorCode.INVOCATION_NOT_FOUND


class ProtocolError(EngineError):
    """A deployment sent bytes that break the service protocol. The attempt fails and is retried."""

    code = ErrorCode.PROTOCOL
    retriable = True


class DeploymentError(EngineError):
    code = ErrorCode.DEPLOYMENT

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class IngressError(EngineError):
    code = ErrorCode.INGRESS


class OverloadedError(IngressError):
    """A bounded queue is full. Callers answer 429/503 with Retry-After or pause their source."""

    code = ErrorCode.OVERLOADED
    retriable = True


class BadRequestError(IngressError):
    code = ErrorCode.BAD_REQUEST


class ConfigError(EngineError):
    code = ErrorCode.CONFIG


class EngineInternalError(Exception):
    """A broken invariant: crash, never retry."""


class EngineShutdown(BaseException):
    """Raised into tasks to stop them during an ordered shutdown."""

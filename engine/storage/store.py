"""RocksDB through rocksdict: the engine's tables, and the one place where rocksdb errors are translated.

All writes of one apply step go through a :class:`Txn`: reads see the transaction's own writes, and
:meth:`Store.commit` writes everything, together with the partition's ``applied_lsn``, in ONE ``WriteBatch``.
Calls here block; the partition processor runs them on its own thread (never on the event loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from engine.errors import StorageError, StorageFullError
from engine.storage import keys

logger = logging.getLogger(__name__)

_DELETED = object()


class Store:
    """The engine's RocksDB database (one per data dir, shared by all partitions)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.increase_parallelism(2)
        try:
            self._db = Rdict(str(path), options=opts)
        except Exception as exc:  # rocksdict raises plain Exception subclasses
            raise StorageError(f"cannot open RocksDB at {path}: {exc}") from exc
        self._write_opts = WriteOptions()
        # Partition apply steps skip RocksDB's write-ahead log: the partition's own log is the WAL. After a crash
        # the tables come back as of the last memtable flush, with that flush's applied_lsn, and the partition
        # replays its log from there; the log is truncated only below what a flush made durable (Partition._truncate).
        self._apply_opts = WriteOptions()
        self._apply_opts.disable_wal = True  # type: ignore[method-assign,assignment]  # property, stub says method
        self._inline_opts = WriteOptions()
        self._inline_opts.disable_wal = True  # type: ignore[method-assign,assignment]  # property, stub says method
        self._inline_opts.no_slowdown = True  # fail instead of sleeping in a write stall (caller retries on a thread)
        self._sync_opts = WriteOptions()
        self._sync_opts.sync = True

    def get(self, key: bytes) -> bytes | None:
        try:
            value = self._db.get(key)
        except Exception as exc:
            raise StorageError(f"rocksdb get failed: {exc}") from exc
        return value if value is None else bytes(value)

    def scan(self, prefix: bytes, *, upper: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix`` (or, with ``upper``, lies in ``[prefix, upper)``), in key order."""
        ropts = ReadOptions()
        end = upper if upper is not None else _prefix_end(prefix)
        if end is not None:
            ropts.set_iterate_upper_bound(end)
        it = self._db.iter(ropts)
        it.seek(prefix)
        while it.valid():
            key = bytes(it.key())
            if upper is None and not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    def txn(self) -> Txn:
        return Txn(self)

    def commit(
        self,
        txn: Txn,
        *,
        partition: int | None = None,
        lsn: int | None = None,
        sync: bool = False,
        no_slowdown: bool = False,
    ) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, value in txn.writes.items():
            if value is _DELETED:
                wb.delete(key)
            else:
                wb.put(key, value)
        opts = self._sync_opts if sync else self._write_opts
        if partition is not None and lsn is not None:
            wb.put(keys.applied_lsn(partition), keys.u64(lsn))
            if not sync:
                opts = self._inline_opts if no_slowdown else self._apply_opts
        try:
            self._db.write(wb, opts)
        except Exception as exc:
            raise _translate("rocksdb write failed", exc) from exc
        txn.writes.clear()

    def applied_lsn(self, partition: int) -> int:
        raw = self.get(keys.applied_lsn(partition))
        return 0 if raw is None else keys.parse_u64(raw)

    def flush(self) -> None:
        """Make everything written so far durable in SST files (before truncating the log below it)."""
        try:
            self._db.flush(True)
        except Exception as exc:
            raise _translate("rocksdb flush failed", exc) from exc

    def close(self) -> None:
        try:
            self._db.flush(True)
        except Exception as exc:
            # Nothing is lost: the partitions replay their logs from the applied_lsn of the last good flush.
            logger.warning("rocksdb: the final flush failed (%s); the next start replays the log tail", exc)
        try:
            self._db.close()
        except Exception as exc:
            raise _translate("rocksdb close failed", exc) from exc

    def snapshot(self) -> Snapshot:
        """A consistent read-only view of every table as of now (for introspection; blocking, use a thread)."""
        try:
            return Snapshot(self._db.iter(ReadOptions()))
        except Exception as exc:
            raise StorageError(f"rocksdb iterator failed: {exc}") from exc


class Snapshot:
    """Reads through ONE RocksDB iterator: its implicit snapshot covers the whole keyspace, so every table read
    through it is seen as of the same moment (rocksdict's own ``Snapshot.iter`` does not honour the snapshot).
    Reads are sequential (one iterator); not thread-safe."""

    __slots__ = ("_it",)

    def __init__(self, iterator: Any) -> None:
        self._it = iterator

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix``, in key order. Do not interleave two scans."""
        it = self._it
        try:
            it.seek(prefix)
            while it.valid():
                key = bytes(it.key())
                if not key.startswith(prefix):
                    return
                yield key, bytes(it.value())
                it.next()
        except Exception as exc:
            raise StorageError(f"rocksdb scan failed: {exc}") from exc

    def get(self, key: bytes) -> bytes | None:
        it = self._it
        try:
            it.seek(key)
            if it.valid() and bytes(it.key()) == key:
                return bytes(it.value())
        except Exception as exc:
            raise StorageError(f"rocksdb read failed: {exc}") from exc
        return None

    def close(self) -> None:
        self._it = None


def _translate(what: str, exc: Exception) -> StorageError:
    # rocksdict raises plain Exceptions carrying RocksDB's status text, e.g. "IO error: No space left on device:
    # While appending to file: .../000008.sst: No space left on device".
    message = f"{what}: {exc}"
    if "No space left on device" in str(exc):
        return StorageFullError(message)
    return StorageError(message)


def _prefix_end(prefix: bytes) -> bytes | None:
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return None


class Txn:
    """Buffered writes over a :class:`Store` with read-your-writes."""

    __slots__ = ("store", "writes")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writes: dict[bytes, Any] = {}

    def get(self, key: bytes) -> bytes | None:
        value = self.writes.get(key)
        if value is _DELETED:
            return None
        if value is not None:
            return value  # type: ignore[no-any-return]
        return self.store.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = _DELETED

    def scan(self, prefix: bytes, *, upper: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Merged view of the store and this transaction's writes, in key order. Lazy: a caller that stops after
        the first row reads one row from RocksDB, not the whole range."""

        def in_range(k: bytes) -> bool:
            if upper is None:
                return k.startswith(prefix)
            return prefix <= k < upper

        pending = sorted((k, v) for k, v in self.writes.items() if in_range(k))
        i = 0
        for k, v in self.store.scan(prefix, upper=upper):
            while i < len(pending) and pending[i][0] <= k:
                pk, pv = pending[i]
                i += 1
                if pv is not _DELETED:
                    yield pk, pv
                if pk == k:
                    break
            else:
                yield k, v
                continue
            # the transaction's own write for k was yielded (or k is deleted) instead of the stored value
        for pk, pv in pending[i:]:
            if pv is not _DELETED:
                yield pk, pv

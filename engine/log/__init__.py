"""The segmented append-only log: framing (length + crc32c), group commit, fsync policy, torn-tail recovery
and prefix truncation.

Import from here; the submodules are internal::

    log = await SegmentedLog.open(data_dir / "log" / "p0", config.log)
    lsn = await log.append(b"record")
    await log.aclose()
"""

from engine.log.api import Log, LogStatistics
from engine.log.log import SegmentedLog
from engine.log.record import RecordTooLargeError

__all__ = ["Log", "LogStatistics", "RecordTooLargeError", "SegmentedLog"]

"""Start-up on a data dir whose log tail was never applied reports replay progress at a bounded rate."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from engine import codec
from engine.log import SegmentedLog
from engine.partition.types import Cleanup
from engine.server import Engine
from tests.conftest import make_config

RECORDS = 30_000
PROGRESS = re.compile(r"recovering partition 0: (\d+)/(\d+) records \((\d+)%\)")


async def test_recovery_logs_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    config = make_config(data, num_partitions=1, log={"recovery_progress_interval": "5ms"})
    # A durable log tail the tables never applied: what a crash right after a burst of appends leaves behind.
    log = await SegmentedLog.open(data / "log" / "p0", config.log)
    payload = codec.encode(Cleanup(now_ms=0))
    for _ in range(RECORDS // 1000):
        await log.append_batch([payload] * 1000)
    await log.aclose()

    caplog.set_level(logging.INFO, logger="engine.partition.partition")
    engine = await Engine.open(config)
    try:
        assert engine.partitions[0].statistics().applied_lsn == RECORDS
    finally:
        await engine.aclose()

    lines = [r.getMessage() for r in caplog.records if r.name == "engine.partition.partition"]
    assert lines[0] == f"recovering partition 0: replaying {RECORDS} log records"
    assert lines[-1] == f"partition 0: replayed {RECORDS} log records up to lsn {RECORDS}"
    progress = [m for m in map(PROGRESS.fullmatch, lines) if m is not None]
    assert len(progress) >= 2, lines
    done = [int(m[1]) for m in progress]
    assert done == sorted(set(done)) and 0 < done[0] and done[-1] <= RECORDS
    for m in progress:
        assert int(m[2]) == RECORDS
        assert int(m[3]) == int(m[1]) * 100 // RECORDS
    # Bounded: at most one line per applied batch of 512 records, never one per record.
    assert len(progress) <= RECORDS // 512

"""Append throughput and fsync batching of the segmented log.

C concurrent appenders each append their share of N records of S bytes into a fresh log in a temporary
directory (or --dir), then the script prints one JSON object::

    python benchmarks/log_append.py --records 100000 --size 256 --concurrency 256
    {"records": 100000, "size": 256, "concurrency": 256, "fsync": "fsync", "seconds": ...,
     "records_per_s": ..., "mb_per_s": ..., "fsyncs": ..., "batches": ..., "mean_batch": ...}

Not part of the pytest run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.config import FsyncPolicy, LogSection
from engine.log import SegmentedLog


async def run(directory: Path, *, records: int, size: int, concurrency: int, config: LogSection) -> dict[str, Any]:
    log = await SegmentedLog.open(directory, config)
    payload = b"x" * size
    shares = [records // concurrency + (1 if i < records % concurrency else 0) for i in range(concurrency)]

    async def appender(count: int) -> None:
        for _ in range(count):
            await log.append(payload)

    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for count in shares:
                group.create_task(appender(count))
        elapsed = time.perf_counter() - started
        stats = log.statistics()
    finally:
        await log.aclose()
    assert stats.last_lsn == records, stats
    return {
        "records": records,
        "size": size,
        "concurrency": concurrency,
        "fsync": config.fsync.value,
        "seconds": round(elapsed, 4),
        "records_per_s": round(records / elapsed, 1),
        "mb_per_s": round(stats.bytes_written / elapsed / 1e6, 2),
        "fsyncs": stats.fsyncs,
        "batches": stats.batches,
        "mean_batch": round(stats.records / max(stats.batches, 1), 2),
        "segments": stats.segments,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", "-n", type=int, default=50_000, help="records to append in total")
    parser.add_argument("--size", "-s", type=int, default=256, help="payload bytes per record")
    parser.add_argument("--concurrency", "-c", type=int, default=128, help="concurrent appenders")
    parser.add_argument("--fsync", choices=[p.value for p in FsyncPolicy], default=FsyncPolicy.FSYNC.value)
    parser.add_argument("--max-batch-records", type=int, default=LogSection().max_batch_records)
    parser.add_argument("--segment-size-bytes", type=int, default=LogSection().segment_size_bytes)
    parser.add_argument("--dir", type=Path, default=None, help="log directory (default: a fresh temp dir)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()

    config = LogSection(
        fsync=FsyncPolicy(args.fsync),
        max_batch_records=args.max_batch_records,
        segment_size_bytes=args.segment_size_bytes,
        queue_limit=max(LogSection().queue_limit, args.concurrency),
        record_size_limit_bytes=max(LogSection().record_size_limit_bytes, args.size),
    )

    def go(directory: Path) -> dict[str, Any]:
        coroutine = run(directory, records=args.records, size=args.size, concurrency=args.concurrency, config=config)
        if args.uvloop:
            import uvloop

            return uvloop.run(coroutine)
        return asyncio.run(coroutine)

    if args.dir is not None:
        result = go(args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="capstan-bench-log-") as tmp:
            result = go(Path(tmp) / "log")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Faults beyond a plain SIGKILL, each against a real ``capstan serve`` and a real SDK deployment (tests/e2e/chaos.py):

- a torn and a bit-flipped log tail (a batch that was being written when the engine died): recovery cuts it and
  nothing acknowledged is lost;
- damage to records the log had acknowledged: the engine refuses to start with an error naming the place, rather
  than lose them silently (inside the log: the record after the damaged one is intact; at its end: the tables were
  flushed past it);
- a RocksDB directory restored from a copy taken before the last flush: the partition replays the log from the
  copy's ``applied_lsn`` and reaches the same state; a copy older than the truncated log is refused;
- the SDK deployment SIGKILLed mid-attempt and restarted on the same port: every invocation completes exactly once.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from engine.log.record import FrameReader, encode_frame
from engine.log.segment import list_segments
from tests.e2e.chaos import CHAOS_APP, Fault, Workload, check_effects, unfinished_invocations
from tests.e2e.procs import CapstanProcess
from tests.services.fixtures import DeploymentProcess, start_deployment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAST_RETRIES = {
    "CAPSTAN__INVOKER__RETRY_POLICY__INITIAL_INTERVAL": "50ms",
    "CAPSTAN__INVOKER__RETRY_POLICY__MAX_INTERVAL": "1s",
}


@pytest.fixture
def effects_file(tmp_path: Path) -> Path:
    return tmp_path / "effects.jsonl"


@pytest.fixture
def chaos_deployment(effects_file: Path) -> Iterator[DeploymentProcess]:
    dep = start_deployment(CHAOS_APP, env={"CHAOS_EFFECTS_FILE": str(effects_file)})
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # force_close: pooled keep-alive connections to a killed process must not be reused after its restart
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def register(http: aiohttp.ClientSession, server: CapstanProcess, dep: DeploymentProcess) -> None:
    async with http.post(server.admin_url + "/deployments", json={"uri": dep.url}) as resp:
        assert resp.status in (200, 201), await resp.text()


async def run_ops(workload: Workload, count: int, kinds: tuple[str, ...] = ("counter",), seed: int = 1) -> None:
    """``count`` operations, eight at a time, each acknowledged before this returns."""
    rng = random.Random(seed)
    ids = iter(range(seed * 100_000, seed * 100_000 + count))
    sem = asyncio.Semaphore(8)

    async def one(kind: str, i: int) -> None:
        async with sem:
            await workload.run_op(kind, i, rng)

    await asyncio.gather(*(one(rng.choice(kinds), next(ids)) for _ in range(count)))


def log_dir(server: CapstanProcess) -> Path:
    return server.data_dir / "log" / "p0"


def last_frame(segment: Path, first_lsn: int) -> tuple[int, int, bytes]:
    """``(lsn, offset, payload)`` of the segment's last record."""
    with open(segment, "rb") as file:
        reader = FrameReader(file, size=segment.stat().st_size, next_lsn=first_lsn)
        found: tuple[int, int, bytes] | None = None
        while True:
            offset = reader.offset
            result = reader.next()
            if result is None:
                break
            assert isinstance(result, tuple), result
            lsn, payload = result
            assert payload is not None
            found = (lsn, offset, payload)
    assert found is not None, f"{segment} holds no record"
    return found


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x10]))


def start_fails(server: CapstanProcess) -> str:
    """Start the engine, expect it to exit at once, and return its log."""
    with pytest.raises(RuntimeError, match="capstan exited") as caught:
        server.start()
    return str(caught.value)


# --------------------------------------------------------------------------------------------------------------
# The log's tail
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn", "bit-flip"])
async def test_a_damaged_unacknowledged_tail_is_cut(
    tmp_path: Path, effects_file: Path, chaos_deployment: DeploymentProcess, http: aiohttp.ClientSession, damage: str
) -> None:
    """SIGKILL mid-load, then the tail a crash mid-write leaves: part of the next batch's frame (torn), or all of it
    with a bit flipped (a page written with garbage). That record was never acknowledged: recovery cuts it, and every
    acknowledged operation is still there exactly once."""
    server = CapstanProcess(tmp_path / "data", extra_args=["--partitions", "1"], env=FAST_RETRIES)
    server.start()
    try:
        await register(http, server, chaos_deployment)
        workload = Workload(http, lambda: server.ingress_url, seed=3)
        await run_ops(workload, 150, ("counter", "steps"))
        in_flight = asyncio.create_task(run_ops(workload, 40, ("counter", "steps"), seed=2))
        await asyncio.sleep(0.2)
        kill = Fault("engine", time.monotonic())
        server.kill()

        segment = list_segments(log_dir(server))[-1]
        lsn, _, payload = last_frame(segment.path, segment.first_lsn)
        frame = bytearray(encode_frame(lsn + 1, payload))  # a real record's bytes, as the next batch would have them
        if damage == "torn":
            frame = frame[: len(frame) // 2]
        else:
            frame[len(frame) - 3] ^= 0x01
        size = segment.path.stat().st_size
        with open(segment.path, "ab") as file:
            file.write(frame)

        kill.restarted_at = time.monotonic()
        server.start()
        assert f"cut the torn tail of segment {segment.name} at offset {size}" in server.logs()
        await in_flight  # retried with the same idempotency keys until answered
        await workload.verify_state()
        check_effects(effects_file, workload.model.journaled, [kill])
        await run_ops(workload, 20, seed=4)  # and the log takes new records after the cut
        await workload.verify_state()
    finally:
        server.stop()


async def test_a_bit_flip_inside_the_log_stops_the_engine_with_a_clear_error(
    tmp_path: Path, chaos_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """A flipped bit in an acknowledged record that has intact records after it cannot be a torn write: the engine
    refuses to start and names the segment and offset (cutting there would drop acknowledged records). Repaired,
    it starts and nothing is lost."""
    server = CapstanProcess(tmp_path / "data", extra_args=["--partitions", "1"], env=FAST_RETRIES)
    server.start()
    try:
        await register(http, server, chaos_deployment)
        workload = Workload(http, lambda: server.ingress_url, seed=5)
        await run_ops(workload, 150)
        server.kill()
        segment = list_segments(log_dir(server))[-1]
        size = segment.path.stat().st_size
        offset = size // 2
        flip_byte(segment.path, offset)
        log = start_fails(server)
        assert f"segment {segment.name}: " in log and "refusing to cut acknowledged records" in log, log
        assert segment.path.stat().st_size == size  # nothing was cut
        flip_byte(segment.path, offset)
        server.start()
        await workload.verify_state()
    finally:
        server.stop()


async def test_a_damaged_last_record_is_refused_when_the_tables_are_ahead(
    tmp_path: Path, chaos_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """After a clean stop the tables are flushed up to the log's last record. If that record is then damaged (cut
    short here), the log alone would take it for a torn write and cut it; the partition sees that the tables have
    applied past the log's end and refuses to start (records lost, and their LSNs would be reused)."""
    server = CapstanProcess(tmp_path / "data", extra_args=["--partitions", "1"], env=FAST_RETRIES)
    server.start()
    try:
        await register(http, server, chaos_deployment)
        workload = Workload(http, lambda: server.ingress_url, seed=6)
        await run_ops(workload, 100)
        assert server.stop() == 0
        segment = list_segments(log_dir(server))[-1]
        original = segment.path.read_bytes()
        lsn, offset, _ = last_frame(segment.path, segment.first_lsn)
        segment.path.write_bytes(original[: offset + 10])
        log = start_fails(server)
        assert f"applied the log up to record {lsn} but the log ends at record {lsn - 1}" in log, log
        segment.path.write_bytes(original)
        server.start()
        await workload.verify_state()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------
# RocksDB restored from an older copy
# --------------------------------------------------------------------------------------------------------------


async def test_rocksdb_restored_without_its_last_flush_replays_to_the_same_state(
    tmp_path: Path, effects_file: Path, chaos_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """Copy the RocksDB directory after a flush (a clean stop), keep running, SIGKILL, put the old copy back: the
    partitions replay the log from the copy's applied_lsn (the log is not truncated past it) and every acknowledged
    operation is there exactly once, with no ``ctx.run`` step run again."""
    env = {**FAST_RETRIES, "CAPSTAN__STORAGE__TRUNCATE_EVERY_RECORDS": "1000000000"}
    server = CapstanProcess(tmp_path / "data", env=env)
    rocksdb, copy = server.data_dir / "rocksdb", tmp_path / "rocksdb-copy"
    server.start()
    try:
        await register(http, server, chaos_deployment)
        workload = Workload(http, lambda: server.ingress_url, seed=7)
        await run_ops(workload, 100, ("counter", "steps", "workflow"))
        assert server.stop() == 0  # flushes the tables
        shutil.copytree(rocksdb, copy)
        server.start()
        await run_ops(workload, 150, ("counter", "steps", "workflow", "nap"), seed=2)
        kill = Fault("engine", time.monotonic())
        server.kill()
        shutil.rmtree(rocksdb)
        shutil.copytree(copy, rocksdb)
        kill.restarted_at = time.monotonic()
        server.start()
        assert "replayed" in server.logs()
        await workload.verify_state()
        check_effects(effects_file, workload.model.journaled, [kill])
        assert await unfinished_invocations(http, server.admin_url) == []
    finally:
        server.stop()


async def test_rocksdb_older_than_the_truncated_log_is_refused(
    tmp_path: Path, chaos_deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    """The log is truncated below what the tables flushed; a RocksDB copy older than that truncation would skip
    records silently, so the engine refuses it with an error saying so, and starts again with the current tables."""
    env = {
        **FAST_RETRIES,
        "CAPSTAN__STORAGE__TRUNCATE_EVERY_RECORDS": "20",
        "CAPSTAN__LOG__SEGMENT_SIZE_BYTES": "8192",
    }
    server = CapstanProcess(tmp_path / "data", extra_args=["--partitions", "1"], env=env)
    rocksdb, old, current = server.data_dir / "rocksdb", tmp_path / "rocksdb-old", tmp_path / "rocksdb-current"
    server.start()
    try:
        await register(http, server, chaos_deployment)
        workload = Workload(http, lambda: server.ingress_url, seed=8)
        await run_ops(workload, 30)
        assert server.stop() == 0
        shutil.copytree(rocksdb, old)
        server.start()
        await run_ops(workload, 200, seed=2)
        assert server.stop() == 0
        shutil.move(rocksdb, current)
        shutil.copytree(old, rocksdb)
        log = start_fails(server)
        assert "were truncated away, so the RocksDB directory is older than the log" in log, log
        shutil.rmtree(rocksdb)
        shutil.move(current, rocksdb)
        server.start()
        await workload.verify_state()
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------------------
# The SDK deployment killed mid-attempt
# --------------------------------------------------------------------------------------------------------------


async def test_deployment_killed_mid_attempt_every_invocation_completes_once(
    tmp_path: Path, effects_file: Path, http: aiohttp.ClientSession
) -> None:
    """SIGKILL the hypercorn deployment five times while attempts run (each ``ctx.run`` step takes 150 ms, so kills
    land inside steps), restarting it on the same port: every invocation completes exactly once, and a step ran
    again only when a kill cut its attempt before the result was journaled."""
    dep_env = {"CHAOS_EFFECTS_FILE": str(effects_file)}
    dep = start_deployment(CHAOS_APP, env=dep_env)
    server = CapstanProcess(tmp_path / "data", env=FAST_RETRIES)
    faults: list[Fault] = []
    rng = random.Random(9)
    stop = asyncio.Event()
    try:
        server.start()
        await register(http, server, dep)
        weights = {"steps": 3, "counter": 1, "nap": 1, "workflow": 1}
        workload = Workload(http, lambda: server.ingress_url, seed=9, step_sleep_ms=150, weights=weights)
        workers = [asyncio.create_task(workload.worker(w, stop)) for w in range(6)]
        for _ in range(5):
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            fault = Fault("deployment", time.monotonic())
            dep.kill()
            faults.append(fault)
            fault.restarted_at = time.monotonic()
            dep = await asyncio.to_thread(
                start_deployment, CHAOS_APP, port=dep.port, env=dep_env, log_path=dep.log_path
            )
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 120)
        await workload.verify_state()
        effects = check_effects(effects_file, workload.model.journaled, faults)
        assert workload.model.done["steps"] > 0, workload.model.done
        print(f"deployment kills: {len(faults)}, operations {dict(workload.model.done)}, effects {effects}")
        assert await unfinished_invocations(http, server.admin_url) == []
    finally:
        stop.set()
        server.stop()
        dep.stop()

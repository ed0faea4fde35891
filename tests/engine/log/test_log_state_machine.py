"""SegmentedLog against a list model: append, read, reopen, crash mid-write, truncate.

The model is the list of acknowledged payloads (``model[lsn - 1]``). A crash is simulated by closing the log and
then leaving part of an unacknowledged batch (plus optional garbage) at the end of the last segment, as a write
torn by power loss would. After recovery the log must hold every acknowledged record, plus the complete frames
of the torn batch and nothing else.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.config import LogSection
from engine.log import SegmentedLog
from engine.log.record import FRAME_OVERHEAD, encode_batch

T = TypeVar("T")

CONFIG = LogSection(
    segment_size_bytes=4096,
    max_batch_records=4,
    max_batch_bytes=1024,
    queue_limit=16,
    record_size_limit_bytes=1024,
)

# Large payloads often enough that 4 KiB segments roll within a run.
payloads = st.one_of(st.binary(max_size=40), st.binary(min_size=300, max_size=1000))
payload_lists = st.lists(payloads, min_size=1, max_size=8)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="capstan-log-"))
        self.model: list[bytes] = []
        self.log: SegmentedLog | None = self.run(SegmentedLog.open(self.directory, CONFIG))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @property
    def open_log(self) -> SegmentedLog:
        assert self.log is not None
        return self.log

    def reopen(self) -> None:
        self.run(self.open_log.aclose())
        self.log = None
        self.log = self.run(SegmentedLog.open(self.directory, CONFIG))

    def teardown(self) -> None:
        try:
            if self.log is not None:
                self.run(self.log.aclose())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- rules ---------------------------------------------------------------------------------------------

    @rule(batch=payload_lists)
    def append_concurrently(self, batch: list[bytes]) -> None:
        async def go() -> list[int]:
            return await asyncio.gather(*(self.open_log.append(p) for p in batch))

        lsns = self.run(go())
        assert lsns == list(range(len(self.model) + 1, len(self.model) + len(batch) + 1))
        self.model.extend(batch)

    @rule(batch=payload_lists)
    def append_batch(self, batch: list[bytes]) -> None:
        last = self.run(self.open_log.append_batch(batch))
        assert last == len(self.model) + len(batch)
        self.model.extend(batch)

    @rule(batch=payload_lists)
    def append_nowait(self, batch: list[bytes]) -> None:
        async def go() -> list[int]:
            futures = [self.open_log.append_nowait(p) for p in batch]
            return list(await asyncio.gather(*futures))

        assert self.run(go()) == list(range(len(self.model) + 1, len(self.model) + len(batch) + 1))
        self.model.extend(batch)

    @rule()
    def reopen_cleanly(self) -> None:
        self.reopen()

    @rule(torn=st.lists(payloads, max_size=6), garbage=st.binary(max_size=40), data=st.data())
    def crash_at_a_random_byte(self, torn: list[bytes], garbage: bytes, data: st.DataObject) -> None:
        self.run(self.open_log.aclose())
        self.log = None
        frames = encode_batch(len(self.model) + 1, torn)
        cut = data.draw(st.integers(min_value=0, max_value=len(frames)), label="cut")
        last_segment = max(self.directory.glob("*.seg"))
        with open(last_segment, "ab") as file:
            file.write(frames[:cut] + garbage)
        self.log = self.run(SegmentedLog.open(self.directory, CONFIG))

        complete = 0
        end = 0
        for payload in torn:
            end += FRAME_OVERHEAD + len(payload)
            if end > cut:
                break
            complete += 1
        # Every acknowledged record survived; of the torn batch exactly its complete frames did.
        assert self.open_log.last_lsn == len(self.model) + complete
        self.model.extend(torn[:complete])

    @rule(data=st.data())
    def truncate_prefix(self, data: st.DataObject) -> None:
        up_to = data.draw(st.integers(min_value=0, max_value=len(self.model) + 2), label="up_to")
        before = self.open_log.first_lsn
        self.run(self.open_log.truncate_prefix(up_to))
        first = self.open_log.first_lsn
        assert before <= first <= max(before, up_to + 1)
        # Nothing deletable is left: every segment but the last holds a record after up_to.
        firsts = sorted(int(p.name.removesuffix(".seg")) for p in self.directory.glob("*.seg"))
        assert firsts[0] == first
        assert all(following - 1 > up_to for following in firsts[1:])

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read_from(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(min_value=0, max_value=len(self.model) + 2), label="from_lsn")
        first = max(start, self.open_log.first_lsn)
        expected = [(lsn, self.model[lsn - 1]) for lsn in range(first, len(self.model) + 1)]
        assert list(self.open_log.read(start)) == expected

    # --- invariants ----------------------------------------------------------------------------------------

    @invariant()
    def log_matches_model(self) -> None:
        if self.log is None:
            return
        log = self.log
        assert log.last_lsn == len(self.model)
        first = log.first_lsn
        assert 1 <= first <= len(self.model) + 1
        expected = [(lsn, self.model[lsn - 1]) for lsn in range(first, len(self.model) + 1)]
        assert list(log.read(first)) == expected
        stats = log.statistics()
        assert stats.queued == 0
        assert stats.segments == len(list(self.directory.glob("*.seg")))


LogMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLogMachine = LogMachine.TestCase

"""The Clock seam: real time in the engine, a fake clock in tests that jumps to the next deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, deadline_ms: int) -> None: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def sleep_until(self, deadline_ms: int) -> None:
        delay = deadline_ms - self.now_ms()
        if delay > 0:
            await asyncio.sleep(delay / 1000)


class FakeClock:
    """Time moves only when a test calls :meth:`advance` (or :meth:`autojump`)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms
        self._changed = asyncio.Event()

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms
        self._changed.set()

    async def sleep_until(self, deadline_ms: int) -> None:
        while self._now < deadline_ms:
            self._changed.clear()
            await self._changed.wait()

"""Durable timers: a heap of the next deadlines, rebuilt from the TIMER table at start-up.

The table is the truth (a row per armed timer, written atomically with the command that armed it); this service
only remembers when to propose ``FireTimer`` for each row. A timer that came due while the engine was down fires
right after start. Firing twice is harmless: the processor ignores a FireTimer whose row is gone.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass

from engine.timers.clock import Clock

logger = logging.getLogger(__name__)

Fire = Callable[[bytes], bool]  # propose FireTimer(key); False if it could not be enqueued now (overload)


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerStatistics:
    armed: int
    fired: int


class TimerService:
    def __init__(self, clock: Clock, fire: Fire, *, retry_ms: int = 10) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[tuple[int, bytes]] = []
        self._keys: set[bytes] = set()
        self._wakeup = asyncio.Event()
        self._fired = 0
        self._retry_ms = retry_ms

    def schedule(self, wake_ms: int, key: bytes) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        heapq.heappush(self._heap, (wake_ms, key))
        self._wakeup.set()

    def statistics(self) -> TimerStatistics:
        return TimerStatistics(armed=len(self._heap), fired=self._fired)

    async def run(self) -> None:
        while True:
            if not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wake_ms, key = self._heap[0]
            if wake_ms > self._clock.now_ms():
                self._wakeup.clear()
                sleeper = asyncio.create_task(self._clock.sleep_until(wake_ms))
                waker = asyncio.create_task(self._wakeup.wait())
                try:
                    await asyncio.wait([sleeper, waker], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    waker.cancel()
                continue
            if not self._fire(key):
                await asyncio.sleep(self._retry_ms / 1000)
                continue
            heapq.heappop(self._heap)
            self._keys.discard(key)
            self._fired += 1

"""A component-owned thread for blocking calls that come one after another (the log writer's write + fsync).

``asyncio.to_thread`` costs a context copy and ``ThreadPoolExecutor.submit``, whose idle-thread check goes through
``threading.Semaphore`` (pure Python, a Condition and a Lock) on every call; with one call per log batch that was
~5% of the engine's time under load. Here a call is one ``SimpleQueue.put`` (C) and one ``call_soon_threadsafe``
back. Calls run strictly in submission order.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class SerialWorker:
    """One daemon thread running submitted calls in order; ``close()`` finishes queued calls, then joins."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on the worker thread; the future gets its result or exception."""
        if self._closed:
            raise RuntimeError("worker is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def close(self) -> None:
        """Blocking: stop after the queued calls (call it from a thread or at shutdown)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:
                _deliver(loop, future, None, exc)  # re-raised in the awaiting task
                if not isinstance(exc, Exception):
                    raise
            else:
                _deliver(loop, future, result, None)


def _deliver(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    def settle() -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass

"""The link between the engine and its child processes (the Kafka worker, the invoker processes).

A socket pair with length-prefixed pickle frames. Both ends are this code, of the same version, started together by
the engine (the child gets its end as an inherited file descriptor): nothing else can write to the socket, so
unpickling is safe. A child exits when the engine closes its end, and the kernel kills it when the engine dies
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of the engine leaves no child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import pickle
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "MAX_FRAME",
    "BatchedLink",
    "child_log_level",
    "die_with_parent",
    "open_child_end",
    "read_frame",
    "serve_child",
    "spawn_child",
    "write_frame",
]

# The reader's sanity bound (the length prefix allows 4 GiB): a Kafka batch, an attempt's inputs (its journal)
# are bounded by the engine's own size limits; a BatchedLink splits a frame of many messages that would exceed it.
MAX_FRAME = 1024 * 1024 * 1024
_LEN = 4


def write_frame(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    _write_pickled(writer, pickle.dumps(message, protocol=5))


def _write_pickled(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(len(data).to_bytes(_LEN, "big") + data)


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; ``asyncio.IncompleteReadError`` at the end of the stream."""
    size = int.from_bytes(await reader.readexactly(_LEN), "big")
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes is over the limit of {MAX_FRAME}")
    message = pickle.loads(await reader.readexactly(size))  # our own peer process, see the module docstring
    if not isinstance(message, tuple) or not message:
        raise ConnectionError(f"malformed message {type(message).__name__}")
    return message


async def spawn_child(
    module: str, *args: str
) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``python -m module <fd> args...`` with its end of a new socket pair; return it and our end."""
    parent, child = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, str(child.fileno()), *args,
            pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    reader, writer = await asyncio.open_connection(sock=parent, limit=2**20)
    return proc, reader, writer


async def open_child_end(fd: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The child's side of :func:`spawn_child`: its inherited end of the socket pair as streams."""
    return await asyncio.open_connection(sock=socket.socket(fileno=fd), limit=2**20)


async def serve_child(
    fd: int, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> None:
    """A child's main coroutine: ``serve`` its end of the link (:func:`open_child_end`), then close it."""
    reader, writer = await open_child_end(fd)
    try:
        await serve(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the engine dies (Linux; elsewhere end of file on the socket does it), and
    ignore SIGINT and SIGTERM: a Ctrl-C, or a service manager's SIGTERM, reaches the whole process group, and the
    engine stops its children itself, in order (an SDK app mounted in a child may still install its own SIGTERM
    handler on the child's loop: it only asks running handlers to wind down)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def child_log_level() -> str:
    """The engine's log level for a child, but not below INFO (aiokafka at DEBUG logs every fetch)."""
    return logging.getLevelName(max(logging.INFO, logging.getLogger().getEffectiveLevel()))


class BatchedLink:
    """Sends messages over a link as frames of many: the messages sent in one turn of the event loop go out as one
    frame (one pickle, one write) at the end of it. Read them with ``for message in await read_frame(reader)``."""

    def __init__(self, writer: asyncio.StreamWriter, before_flush: Callable[[], None] | None = None) -> None:
        self._writer = writer
        self._outbox: list[tuple[Any, ...]] = []
        self._loop = asyncio.get_running_loop()
        self._before_flush = before_flush  # may send() a last message into the frame being flushed

    def send(self, message: tuple[Any, ...]) -> None:
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        if self._before_flush is not None and self._outbox:
            self._before_flush()
        messages, self._outbox = self._outbox, []
        if messages and not self._writer.is_closing():
            self._write(tuple(messages))

    def _write(self, messages: tuple[tuple[Any, ...], ...]) -> None:
        data = pickle.dumps(messages, protocol=5)
        if len(data) > MAX_FRAME and len(messages) > 1:  # too big together: in two frames, in order
            half = len(messages) // 2
            self._write(messages[:half])
            self._write(messages[half:])
            return
        _write_pickled(self._writer, data)

    def close(self) -> None:
        self._flush()
        self._writer.close()

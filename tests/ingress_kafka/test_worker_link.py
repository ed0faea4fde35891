"""The engine's end of the link to the Kafka worker process, driven over a real socket pair with a stand-in for the
worker: framing limits, the backpressure flag (never left stale), and answers for runs that were stopped."""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.ipc import MAX_FRAME, read_frame, write_frame
from ingress_kafka.process import KafkaWorker
from tests.conftest import make_config


class _Invoker:
    def __init__(self) -> None:
        self.busy = False

    def overloaded(self) -> bool:
        return self.busy


class _Proc:
    pid = 0
    returncode = 0

    async def wait(self) -> int:
        return 0


@contextlib.asynccontextmanager
async def _linked(tmp_path: Path) -> AsyncIterator[tuple[KafkaWorker, _Invoker, asyncio.StreamReader, Any]]:
    """A KafkaWorker whose process end is ours: (link, invoker, what the engine sent, our writer)."""
    invoker = _Invoker()
    engine: Any = SimpleNamespace(
        config=make_config(tmp_path / "data", ingress_kafka={"backpressure_check_interval": "10ms"}),
        invoker=invoker,
        registry=SimpleNamespace(service=lambda name: None),
    )
    link = KafkaWorker(engine)
    ours, theirs = socket.socketpair()
    engine_reader, engine_writer = await asyncio.open_connection(sock=theirs)
    our_reader, our_writer = await asyncio.open_connection(sock=ours)
    link._writer = engine_writer
    proc: Any = _Proc()
    link._tasks = [
        asyncio.create_task(link._read(engine_reader, proc)),
        asyncio.create_task(link._watch(engine_writer)),
    ]
    try:
        yield link, invoker, our_reader, our_writer
    finally:
        our_writer.close()
        engine_writer.close()
        for task in link._tasks:
            task.cancel()
        await asyncio.gather(*link._tasks, return_exceptions=True)


async def test_the_overloaded_flag_the_worker_holds_is_always_the_engines_latest(tmp_path: Path) -> None:
    async with _linked(tmp_path) as (link, invoker, from_engine, _):
        invoker.busy = True
        link.answer(7, None)  # a batch's answer carries the flag: the worker pauses before its next batch
        assert await asyncio.wait_for(read_frame(from_engine), 5) == ("durable", 7, None, True)
        invoker.busy = False  # the paused worker sends nothing more: only the watcher can resume it
        assert await asyncio.wait_for(read_frame(from_engine), 5) == ("overloaded", False)


async def test_batches_and_requests_of_a_stopped_run_are_answered(tmp_path: Path) -> None:
    async with _linked(tmp_path) as (_link, _invoker, from_engine, to_engine):
        write_frame(to_engine, ("batch", 99, 5, [(b"id", b"record")]))
        write_frame(to_engine, ("put_subscription", 99, 6, b"{}"))
        write_frame(to_engine, ("status", 99, {"running": True}))  # nobody to tell: dropped
        assert await asyncio.wait_for(read_frame(from_engine), 5) == (
            "durable", 5, "the consumer run was stopped", False
        )  # fmt: skip
        assert await asyncio.wait_for(read_frame(from_engine), 5) == ("reply", 6, "the consumer run was stopped")


async def test_frames_over_the_limit_or_not_a_message_end_the_link() -> None:
    ours, theirs = socket.socketpair()
    reader, their_writer = await asyncio.open_connection(sock=theirs)  # both writers kept: one collected closes
    _, writer = await asyncio.open_connection(sock=ours)
    try:
        writer.write((MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(ConnectionError, match="over the limit"):
            await read_frame(reader)
        data = pickle.dumps(["not", "a", "tuple"])
        writer.write(len(data).to_bytes(4, "big") + data)
        with pytest.raises(ConnectionError, match="malformed"):
            await read_frame(reader)
        writer.close()
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader)
    finally:
        writer.close()
        their_writer.close()

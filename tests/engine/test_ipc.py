"""The child-process link: batched frames keep the messages' order, and a batch too big for one frame goes out as
several frames, in order, each within the reader's bound."""

from __future__ import annotations

import asyncio
import socket

import pytest

from engine import ipc


async def test_batched_link_sends_a_turns_messages_as_one_frame_in_order() -> None:
    ours, theirs = socket.socketpair()
    reader, their_writer = await asyncio.open_connection(sock=theirs)
    _, writer = await asyncio.open_connection(sock=ours)  # keep their_writer: collected, it closes the socket
    flushed: list[int] = []
    link = ipc.BatchedLink(writer, before_flush=lambda: flushed.append(1))
    for i in range(5):
        link.send(("m", i))
    await asyncio.sleep(0)  # the flush runs at the end of this turn of the loop
    assert await ipc.read_frame(reader) == tuple(("m", i) for i in range(5))
    assert flushed == [1]
    link.close()
    their_writer.close()


async def test_a_batch_over_the_frame_bound_is_split_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipc, "MAX_FRAME", 4096)
    ours, theirs = socket.socketpair()
    reader, their_writer = await asyncio.open_connection(sock=theirs)
    _, writer = await asyncio.open_connection(sock=ours)  # keep their_writer: collected, it closes the socket
    link = ipc.BatchedLink(writer)
    for i in range(40):
        link.send(("blob", i, bytes([i]) * 500))  # distinct objects: pickle would share one
    await asyncio.sleep(0)
    got: list[int] = []
    frames = 0
    while len(got) < 40:
        frame = await ipc.read_frame(reader)  # each within the (patched) bound, or read_frame raises
        frames += 1
        got.extend(message[1] for message in frame)
    assert got == list(range(40)) and frames > 1
    link.close()
    their_writer.close()

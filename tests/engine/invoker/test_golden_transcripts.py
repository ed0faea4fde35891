"""Golden vectors: real restate-server 1.7.12 <-> restate-sdk-python 1.3.0 traffic (tests/golden/*.json).

The JSON layout is described in tests/golden/README.md (a copy of the reference transcripts README). For
every attempt, the server->SDK body (``to_sdk``) and the SDK->server body (``from_sdk``) are rebuilt from the
recorded frames, split again with our FrameDecoder, parsed with our schema and re-encoded. All 503 frames
re-encode byte-identically with upb, so the assertions are byte equality, not only semantic equality.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from engine.ids import (
    InvocationId,
    awakeable_id,
    parse_awakeable_id,
    partition_key_for_key,
    workflow_invocation_id,
)
from engine.invoker.protocol import protocol_pb2 as pb
from engine.invoker.protocol.framing import (
    Frame,
    FrameDecoder,
    MessageType,
    content_type,
    is_command,
    is_notification,
)
from engine.invoker.protocol.messages import (
    command_completion_ids,
    decode,
    decode_output,
    input_command,
    notification,
    parse,
    run_completion_from_proposal,
    start_message,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
SCENARIO_FILES = sorted(p for p in GOLDEN.glob("*.json") if p.name != "discover.json")
MAX_MESSAGE_BYTES = 32 << 20


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _attempts() -> Iterator[Any]:
    for path in SCENARIO_FILES:
        doc = _load(path)
        for inv in doc["invocations"]:
            for att in inv["attempts"]:
                yield pytest.param(
                    doc["mode"],
                    inv,
                    att,
                    id=f"{path.stem}:{inv['service']}/{inv['handler']}#{att['attempt']}",
                )


def _wire(direction: dict[str, Any]) -> bytes:
    return b"".join(
        bytes.fromhex(f["header_hex"]) + bytes.fromhex(f["body_hex"]) for f in direction["frames"]
    )


def _split(direction: dict[str, Any]) -> list[Frame]:
    wire = _wire(direction)
    assert len(wire) == direction["total_bytes"]
    assert "trailing_undecoded_bytes" not in direction
    decoder = FrameDecoder(MAX_MESSAGE_BYTES)
    # Feed in the recorded chunk sizes, which split frames in arbitrary places.
    frames: list[Frame] = []
    pos = 0
    for chunk in direction["chunks"]:
        frames.extend(decoder.feed(wire[pos : pos + chunk["bytes"]]))
        pos += chunk["bytes"]
    assert pos == len(wire)
    assert decoder.buffered == 0
    return frames


def _header(headers: list[list[str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def test_golden_files_present():
    assert len(SCENARIO_FILES) == 40
    assert (GOLDEN / "discover.json").exists()


@pytest.mark.parametrize(("mode", "inv", "att"), list(_attempts()))
def test_attempt_frames(mode: str, inv: dict[str, Any], att: dict[str, Any]):
    to_sdk = _split(att["to_sdk"])
    from_sdk = _split(att["from_sdk"])
    for direction, frames in (("to_sdk", to_sdk), ("from_sdk", from_sdk)):
        recorded = att[direction]["frames"]
        assert [(f.type, f.flags) for f in frames] == [
            (int(r["type"], 16), int(r["flags"], 16)) for r in recorded
        ]
        for frame in frames:
            assert frame.flags == 0  # V6: no REQUESTED_ACK, not even on run proposals
            msg = decode(frame.type, frame.body)
            assert type(msg).__name__ == next(r["name"] for r in recorded if int(r["type"], 16) == frame.type)
            assert msg.SerializeToString() == frame.body, (
                f"{type(msg).__name__} does not re-encode identically"
            )
            if is_notification(frame.type):
                generic = parse(pb.NotificationTemplate, frame.body)
                assert generic.WhichOneof("id") is not None and generic.WhichOneof("result") is not None
                assert generic.SerializeToString() == frame.body

    # Headers and content type.
    req_headers = att["request"]["headers"]
    assert _header(req_headers, "content-type") == content_type(6)
    assert _header(att["response"]["headers"], "content-type") == content_type(6)
    assert _header(req_headers, "x-restate-invocation-id") == inv["invocation_id"]

    # StartMessage: ids, known_entries, and that our builder reproduces it byte for byte.
    assert to_sdk[0].type == MessageType.START
    assert all(f.type != MessageType.START for f in to_sdk[1:])
    start = parse(pb.StartMessage, to_sdk[0].body)
    iid = InvocationId.from_bytes(start.id)
    assert start.debug_id == str(iid) == inv["invocation_id"]
    assert InvocationId.parse(start.debug_id).to_bytes() == start.id
    if inv.get("key_header") is not None:
        key = unquote(inv["key_header"])
        assert start.key == key
        assert iid.partition_key == partition_key_for_key(key)
    else:
        assert start.key == ""
    replayed = to_sdk[1 : 1 + start.known_entries]
    pushed = to_sdk[1 + start.known_entries :]
    assert len(replayed) == start.known_entries >= 1
    if mode == "REQUEST_RESPONSE":
        assert pushed == []
    assert all(is_notification(f.type) for f in pushed)  # BIDI: only notifications after the replay prefix
    assert replayed[0].type == MessageType.INPUT_COMMAND
    rebuilt = start_message(
        raw_id=start.id,
        debug_id=start.debug_id,
        known_entries=start.known_entries,
        state=[(e.key, e.value) for e in start.state_map],
        partial_state=start.partial_state,
        key=start.key,
        retry_count=start.retry_count_since_last_stored_entry,
        duration_since_last_stored_entry_ms=start.duration_since_last_stored_entry,
        random_seed=start.random_seed,
        version=6,
    )
    assert rebuilt == to_sdk[0].encode()

    # InputCommand as the server builds it.
    inp = parse(pb.InputCommandMessage, replayed[0].body)
    assert input_command(inp.value.content, [(h.key, h.value) for h in inp.headers]) == replayed[0].body

    # Server notifications as our builder makes them.
    for frame in to_sdk[1:]:
        if is_notification(frame.type):
            assert _rebuild_notification(frame.body) == frame.body

    # SDK side: exactly one terminal frame, last.
    terminal = {MessageType.END, MessageType.SUSPENSION, MessageType.ERROR}
    assert from_sdk and from_sdk[-1].type in terminal
    assert all(f.type not in terminal for f in from_sdk[:-1])
    assert type(decode(from_sdk[-1].type, b"")).__name__ == att["ended_with"]
    if from_sdk[-1].type == MessageType.SUSPENSION:
        susp = parse(pb.SuspensionMessage, from_sdk[-1].body)
        assert 1 in susp.waiting_signals  # the cancel signal is always awaited
        assert not susp.HasField("awaiting_on")  # V6 shape
    if from_sdk[-1].type == MessageType.END:
        outputs = [f for f in from_sdk if f.type == MessageType.OUTPUT_COMMAND]
        assert len(outputs) == 1
        value, failure = decode_output(outputs[0].body)
        assert (value is None) != (failure is None)


def _rebuild_notification(body: bytes) -> bytes:
    t = parse(pb.NotificationTemplate, body)
    id_kw: dict[str, Any] = {str(t.WhichOneof("id")): getattr(t, str(t.WhichOneof("id")))}
    which = t.WhichOneof("result")
    if which == "void":
        return notification(**id_kw, void=True)
    if which == "value":
        return notification(**id_kw, value=t.value.content)
    if which == "failure":
        meta = [(m.key, m.value) for m in t.failure.metadata]
        return notification(**id_kw, failure=(t.failure.code, t.failure.message), failure_metadata=meta)
    if which == "invocation_id":
        return notification(**id_kw, invocation_id=t.invocation_id)
    assert which == "state_keys"
    return notification(**id_kw, state_keys=list(t.state_keys.keys))


def _invocations() -> Iterator[Any]:
    for path in SCENARIO_FILES:
        doc = _load(path)
        for inv in doc["invocations"]:
            yield pytest.param(inv, id=f"{path.stem}:{inv['service']}/{inv['handler']}")


@pytest.mark.parametrize("inv", list(_invocations()))
def test_invocation_journal_consistency(inv: dict[str, Any]):
    """Across the attempts of one invocation: replay is byte-exact and every notification answers an id."""
    sent_commands: list[tuple[int, bytes]] = []  # commands the SDK wrote, in order
    allocated: set[int] = set()
    run_completions: set[bytes] = set()
    proposals: list[bytes] = []
    seeds: set[int] = set()
    for att in inv["attempts"]:
        to_sdk, from_sdk = _split(att["to_sdk"]), _split(att["from_sdk"])
        start = parse(pb.StartMessage, to_sdk[0].body)
        seeds.add(start.random_seed)
        replayed_commands = [(f.type, f.body) for f in to_sdk[1:] if is_command(f.type)]
        # Entry 0 is the server's InputCommand; the rest must be the SDK's bytes, verbatim and in order.
        assert replayed_commands[1:] == sent_commands[: len(replayed_commands) - 1]
        for f in to_sdk[1:]:
            if is_command(f.type):
                allocated.update(command_completion_ids(f.type, f.body))
        for f in from_sdk:
            if is_command(f.type):  # the SDK only writes commands beyond the replayed prefix
                sent_commands.append((f.type, f.body))
                allocated.update(command_completion_ids(f.type, f.body))
            elif f.type == MessageType.PROPOSE_RUN_COMPLETION:
                proposals.append(f.body)
        for f in to_sdk[1:]:
            if not is_notification(f.type):
                continue
            t = parse(pb.NotificationTemplate, f.body)
            if t.WhichOneof("id") == "completion_id":
                assert t.completion_id in allocated, (
                    f"notification for unknown completion id {t.completion_id}"
                )
            if f.type == MessageType.RUN_COMPLETION:
                run_completions.add(f.body)
    assert len(seeds) == 1  # random_seed is stable across attempts
    for body in proposals:
        _, expected = run_completion_from_proposal(body)
        # In BIDI the server echoes it in the same attempt; in RR it shows up in the next attempt's replay.
        # A proposal whose attempt ended the invocation may never be echoed.
        if run_completions:
            assert expected in run_completions


def test_deterministic_ids_from_transcripts():
    for mode in ("rr", "bidi"):
        doc = _load(GOLDEN / f"{mode}-workflow-promise.json")
        run = next(i for i in doc["invocations"] if i["handler"] == "run")
        assert run["invocation_id"] == str(workflow_invocation_id("Flow", "wf1"))
        assert run["invocation_id"] == "inv_1j2qHrZ52MQW7r4U2yCm78TUYPkEskWpA6"
        counter = _load(GOLDEN / f"{mode}-counter.json")
        for inv in counter["invocations"]:
            assert inv["invocation_id"].startswith("inv_1cttqfy89hGI")


@pytest.mark.parametrize("mode", ["rr", "bidi"])
def test_awakeable_ids_from_transcripts(mode: str):
    doc = _load(GOLDEN / f"{mode}-awakeable.json")
    aid = doc["notes"]["awakeable_id"]
    [inv] = doc["invocations"]
    start_frame = _split(inv["attempts"][0]["to_sdk"])[0]
    start = parse(pb.StartMessage, start_frame.body)
    iid, idx, legacy = parse_awakeable_id(aid)
    assert (iid.to_bytes(), idx, legacy) == (start.id, 17, False)
    assert awakeable_id(iid, 17) == aid
    # The resolution arrives as SignalNotification{idx 17, value}.
    signals = [
        parse(pb.SignalNotificationMessage, f.body)
        for att in inv["attempts"]
        for f in _split(att["to_sdk"])
        if f.type == MessageType.SIGNAL_NOTIFICATION
    ]
    assert signals and all(s.idx == 17 and s.HasField("value") for s in signals)

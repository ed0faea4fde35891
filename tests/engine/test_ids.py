from __future__ import annotations

import base64
import hashlib
import re
import time

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from engine.ids import (
    InvocationId,
    awakeable_id,
    idempotent_invocation_id,
    new_deployment_id,
    parse_awakeable_id,
    partition_for,
    partition_key_for_key,
    random_invocation_id,
    workflow_invocation_id,
)

U64 = (1 << 64) - 1

invocation_ids = st.builds(
    InvocationId,
    partition_key=st.integers(0, U64),
    uuid=st.binary(min_size=16, max_size=16),
)

# --- service-protocol.md §6.1 ---------------------------------------------------------------------


REF_RAW = bytes.fromhex("eb506a8864c148ef cb7c0fcb0e323339cf6ac78ef0cccd3c")
REF_STR = "inv_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF9"
NAIVE_BIG_ENDIAN_STR = "inv_1kczr6PnQFAz6bY8BhfZiwnr3RhqFGkXCY"


def test_reference_raw_to_string():
    iid = InvocationId.from_bytes(REF_RAW)
    assert iid.partition_key == 0xEB506A8864C148EF
    assert iid.uuid == REF_RAW[8:]
    assert str(iid) == REF_STR
    assert str(iid) != NAIVE_BIG_ENDIAN_STR
    assert len(str(iid)) == 38


def test_reference_string_to_raw():
    assert InvocationId.parse(REF_STR).to_bytes() == REF_RAW


def test_zero_and_max_ids_are_padded():
    zero = InvocationId(partition_key=0, uuid=bytes(16))
    assert str(zero) == "inv_1" + "0" * 33
    assert InvocationId.parse(str(zero)) == zero
    top = InvocationId(partition_key=U64, uuid=b"\xff" * 16)
    assert len(str(top)) == 38
    assert InvocationId.parse(str(top)) == top


@given(invocation_ids)
def test_invocation_id_round_trips(iid: InvocationId):
    raw = iid.to_bytes()
    assert len(raw) == 24
    assert InvocationId.from_bytes(raw) == iid
    s = str(iid)
    assert len(s) == 38 and s.startswith("inv_1")
    assert InvocationId.parse(s) == iid


@given(st.integers(0, U64), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_same_partition_key_same_prefix(pk: int, u1: bytes, u2: bytes):
    a, b = InvocationId(partition_key=pk, uuid=u1), InvocationId(partition_key=pk, uuid=u2)
    assert str(a)[:16] == str(b)[:16]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "inv_",
        "xyz_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF9",
        "inv_2kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF9",  # unknown version
        "inv_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF",  # too short
        "inv_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfF99",  # too long
        "inv_1kxHETqCnSw-1QJACLPSQgTm1ue0CrHfF9",  # bad char
        "inv_1kxHETqCnSwH1QJACLPSQgTm1ue0CrHfé",  # non-ascii
        "inv_1ZZZZZZZZZZZ1QJACLPSQgTm1ue0CrHfF9",  # pk overflows u64
        "inv_1kxHETqCnSwHZZZZZZZZZZZZZZZZZZZZZZ",  # uuid overflows u128
    ],
)
def test_malformed_invocation_ids_rejected(bad: str):
    with pytest.raises(ValueError):
        InvocationId.parse(bad)


@pytest.mark.parametrize("n", [0, 23, 25])
def test_from_bytes_length_checked(n: int):
    with pytest.raises(ValueError, match="24 bytes"):
        InvocationId.from_bytes(bytes(n))


def test_constructor_validates():
    with pytest.raises(ValueError):
        InvocationId(partition_key=-1, uuid=bytes(16))
    with pytest.raises(ValueError):
        InvocationId(partition_key=1 << 64, uuid=bytes(16))
    with pytest.raises(ValueError):
        InvocationId(partition_key=1, uuid=bytes(15))


# --- §6.2: deterministic ids (values observed in tests/golden transcripts) ------------------------


def test_partition_key_is_xxh3_with_terminator():
    assert partition_key_for_key("c1") == xxhash.xxh3_64_intdigest(b"c1\xff")


def test_keyed_prefixes_match_transcripts():
    def prefix(key: str) -> str:
        return str(InvocationId(partition_key=partition_key_for_key(key), uuid=bytes(16)))[:16]

    assert prefix("c1") == "inv_1cttqfy89hGI"
    assert prefix("s1") == "inv_1a1mlWikgvPI"
    assert prefix("wf1") == "inv_1j2qHrZ52MQW"


def test_workflow_run_id_matches_transcript():
    iid = workflow_invocation_id("Flow", "wf1")
    assert str(iid) == "inv_1j2qHrZ52MQW7r4U2yCm78TUYPkEskWpA6"
    assert iid.uuid == hashlib.sha256(b"wf,Flow,wf1").digest()[:16]


def test_idempotent_ids():
    keyed = idempotent_invocation_id("Counter", "c1", "add", "idem-1")
    assert keyed.partition_key == partition_key_for_key("c1")
    assert keyed.uuid == hashlib.sha256(b"ik,Counter,c1,add,idem-1").digest()[:16]
    unkeyed = idempotent_invocation_id("Greeter", None, "greet", "idem-1")
    assert unkeyed.partition_key == xxhash.xxh3_64_intdigest(b"idem-1\xff")
    assert unkeyed.uuid == hashlib.sha256(b"ik,Greeter,greet,idem-1").digest()[:16]
    # An empty key is still a key (and differs from no key).
    assert idempotent_invocation_id("Greeter", "", "greet", "idem-1") != unkeyed
    assert idempotent_invocation_id("Counter", "c1", "add", "idem-1") == keyed


def test_random_invocation_id_is_ulid_like():
    before = time.time_ns() // 1_000_000
    iid = random_invocation_id()
    after = time.time_ns() // 1_000_000
    assert before <= int.from_bytes(iid.uuid[:6], "big") <= after
    assert random_invocation_id() != iid
    assert random_invocation_id(partition_key=42).partition_key == 42


def test_new_deployment_id_shape():
    dp = new_deployment_id()
    assert re.fullmatch(r"dp_1[0-9a-zA-Z]{22}", dp)
    assert new_deployment_id() != dp
    # Same byte swap as invocation ids: read back little-endian, it starts with a recent ms timestamp.
    n = 0
    for c in dp[4:]:
        n = n * 62 + "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".index(c)
    ms = int.from_bytes(n.to_bytes(16, "little")[:6], "big")
    assert abs(ms - time.time_ns() // 1_000_000) < 60_000


# --- partition_for --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 24, 64, 1000])
def test_partition_for_bounds(n: int):
    assert partition_for(0, n) == 0
    assert partition_for(U64, n) == n - 1
    # Range boundaries: partition i starts at ceil(i * 2^64 / n).
    for i in range(1, min(n, 50)):
        start = -((-i << 64) // n)
        assert partition_for(start, n) == i
        assert partition_for(start - 1, n) == i - 1


@given(st.integers(0, U64), st.integers(0, U64), st.integers(1, 4096))
def test_partition_for_is_monotonic_and_in_range(a: int, b: int, n: int):
    lo, hi = min(a, b), max(a, b)
    assert 0 <= partition_for(lo, n) <= partition_for(hi, n) < n


def test_partition_for_rejects_bad_input():
    with pytest.raises(ValueError):
        partition_for(0, 0)
    with pytest.raises(ValueError):
        partition_for(1 << 64, 4)
    with pytest.raises(ValueError):
        partition_for(-1, 4)


# --- §6.3 awakeable ids ---------------------------------------------------------------------------


def test_reference_awakeable_id():
    iid = InvocationId.from_bytes(bytes(range(1, 25)))
    aid = awakeable_id(iid, 17)
    assert aid == "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAEQ"
    assert len(aid) == 44
    assert parse_awakeable_id(aid) == (iid, 17, False)


@given(invocation_ids, st.integers(0, 0xFFFF_FFFF))
def test_awakeable_id_round_trips(iid: InvocationId, idx: int):
    aid = awakeable_id(iid, idx)
    assert aid.startswith("sign_1") and len(aid) == 44
    assert parse_awakeable_id(aid) == (iid, idx, False)
    assert parse_awakeable_id(aid + "==") == (iid, idx, False)  # padding optional
    legacy = "prom_1" + aid[len("sign_1") :]
    assert parse_awakeable_id(legacy) == (iid, idx, True)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sign_",
        "sign_2AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAEQ",
        "awk_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAEQ",
        "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAA",  # too short
        "sign_1" + _b64(bytes(29)),  # too long
        "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAE+",  # standard alphabet, not url-safe
        "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAE!",
        "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAEQ=====",  # too much padding
        "sign_1AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYAAAAEQé",
    ],
)
def test_malformed_awakeable_ids_rejected(bad: str):
    with pytest.raises(ValueError):
        parse_awakeable_id(bad)


def test_awakeable_index_range():
    iid = InvocationId(partition_key=1, uuid=bytes(16))
    with pytest.raises(ValueError):
        awakeable_id(iid, -1)
    with pytest.raises(ValueError):
        awakeable_id(iid, 1 << 32)

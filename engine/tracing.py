"""W3C trace context (``traceparent``) for invocations and their attempts.

The service protocol's ``StartMessage`` has no trace fields, so, as restate-server does, the trace context travels
as the ``traceparent`` HTTP header of every attempt (on the HTTP request to a deployment, and in the ASGI scope's
headers in-process). The SDK (or the user's OpenTelemetry instrumentation) reads it from the attempt headers
(``ctx.request().attempt_headers`` in the Python SDK).

Where an invocation's trace comes from:

* The caller's context, when there is a valid one: the ingress request's ``traceparent`` header, a Kafka record's
  ``traceparent`` header, or, for a call or send from a handler, the calling invocation's trace (a
  ``traceparent`` the SDK put on the call's headers wins). It is stored with the invocation
  (``Invoke.traceparent`` → ``InvocationStatus.traceparent``), so every attempt continues the caller's trace.
* Otherwise a new trace: its id is derived from the invocation id and random seed, both stored with the
  invocation, so every attempt (also after a restart) carries the same trace id without another stored field.
  New traces are marked sampled (flags ``01``): Capstan records no spans itself, and a parent-based sampler in
  the SDK would otherwise drop the handler's spans.

Each attempt gets a new span id: ``00-<trace id>-<random span id>-<flags>``. Invalid headers are ignored (W3C:
a receiver that cannot parse ``traceparent`` starts a new trace).

Standard library only, and cheap: at most one hash per attempt.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "TRACEPARENT",
    "TraceContext",
    "attempt_traceparent",
    "child_traceparent",
    "find_traceparent",
    "parse_traceparent",
    "trace_id",
]

TRACEPARENT: Final = "traceparent"
SAMPLED: Final = "01"

# version-traceid-parentid-flags; a future version (not 00) may append "-..." fields, which are ignored.
_FORMAT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


class TraceContext(NamedTuple):
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits (the W3C "parent-id")
    flags: str  # 2 lowercase hex digits

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context in a ``traceparent`` header value, or None if it is missing or invalid."""
    if not value:
        return None
    m = _FORMAT.match(value.strip())
    if m is None:
        return None
    version, trace, span, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return TraceContext(trace, span, flags)


def find_traceparent(headers: Iterable[tuple[str, str]]) -> str:
    """The valid ``traceparent`` among ``headers`` (names compared case-insensitively), normalised; else ``""``."""
    for name, value in headers:
        if name.lower() == TRACEPARENT:
            ctx = parse_traceparent(value)
            return "" if ctx is None else ctx.header()
    return ""


def _derived(invocation_id: bytes, random_seed: int) -> bytes:
    # 16 bytes of trace id, then 8 bytes of the invocation's own span id (the parent of the calls it makes).
    seed = (random_seed & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    return hashlib.blake2b(invocation_id + seed, digest_size=24, person=b"capstan-trace").digest()


def _invocation_context(traceparent: str, invocation_id: bytes, random_seed: int) -> TraceContext:
    """The invocation's own span in its trace."""
    derived = _derived(invocation_id, random_seed)
    caller = parse_traceparent(traceparent)
    if caller is not None:
        return TraceContext(caller.trace_id, derived[16:].hex(), caller.flags)
    return TraceContext(derived[:16].hex(), derived[16:].hex(), SAMPLED)


def trace_id(traceparent: str, invocation_id: bytes, random_seed: int) -> str:
    """The invocation's trace id (what introspection shows), from the fields stored with it."""
    return _invocation_context(traceparent, invocation_id, random_seed).trace_id


def attempt_traceparent(traceparent: str, invocation_id: bytes, random_seed: int) -> str:
    """The ``traceparent`` header for one attempt: the invocation's trace, a new span id.

    ``traceparent`` is what was stored with the invocation: ``""`` or a value normalised by
    :func:`find_traceparent` / :func:`child_traceparent` (``00-<32 hex>-<16 hex>-<2 hex>``), so it is sliced, not
    parsed again, on every attempt.
    """
    if len(traceparent) == 55:
        prefix, flags = traceparent[:36], traceparent[53:]
    else:
        prefix, flags = f"00-{_derived(invocation_id, random_seed)[:16].hex()}-", SAMPLED
    return f"{prefix}{random.getrandbits(64) or 1:016x}-{flags}"


def child_traceparent(
    traceparent: str, invocation_id: bytes, random_seed: int, call_headers: Iterable[tuple[str, str]]
) -> str:
    """The caller context of an invocation started by a handler's call or send.

    Deterministic (the partition processor calls it while applying a record): the SDK's own ``traceparent`` on the
    call if it set one, else the calling invocation's trace with the invocation's derived span id as parent.
    """
    own = find_traceparent(call_headers)
    if own:
        return own
    return _invocation_context(traceparent, invocation_id, random_seed).header()

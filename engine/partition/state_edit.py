"""Operators' state edits (``EditState`` records from the admin API), applied by the partition owning the key.

One writer per key: an edit is refused with 409 while an invocation holds the key's lock (an exclusive handler or a
workflow's ``run`` is running, suspended, backing off or paused; invocations waiting in the inbox only wait while
the lock is held). Restate instead queues the mutation in the key's inbox; refusing keeps the inbox a queue of
invocations only and tells the operator at once that the edit did not happen. Shared handlers never take the lock:
one running during an edit keeps the state it was started with.

``version`` is Restate's optimistic-concurrency token: base64url (no padding) of SHA-256 over the state sorted by
key, each entry as ``u64be(index) 0x01 key 0x02 value 0x03``. An edit that carries a version is applied only if
the state still has that version (409 otherwise), so read-modify-write from a client loses no update.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from engine.ids import InvocationId
from engine.partition.effects import Outcome
from engine.partition.types import EditState
from engine.storage import keys
from engine.storage.store import Txn


def state_version(entries: Iterable[tuple[bytes, bytes]]) -> str:
    """The version of a key's state (its entries as ``(name, value)``, any order)."""
    digest = hashlib.sha256()
    for index, (name, value) in enumerate(sorted(entries)):
        digest.update(index.to_bytes(8, "big"))
        digest.update(b"\x01")
        digest.update(name)
        digest.update(b"\x02")
        digest.update(value)
        digest.update(b"\x03")
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def apply_edit_state(txn: Txn, r: EditState) -> Outcome:
    """Apply ``r`` inside the partition's write batch, or refuse it; the outcome answers the admin request."""
    holder = txn.get(keys.lock(r.service, r.key))
    if holder is not None:
        return Outcome(
            status=409,
            message=f"{r.service}/{r.key} is locked by invocation {InvocationId.from_bytes(holder)}; its state can "
            "be edited once no exclusive invocation holds the key (cancel or kill it, or retry later)",
        )
    prefix = keys.object_prefix(keys.STATE, r.service, r.key)
    current = [(k[len(prefix) :], v) for k, v in txn.scan(prefix)]
    if r.version is not None and r.version != state_version(current):
        return Outcome(
            status=409,
            message=f"the state of {r.service}/{r.key} changed since version {r.version}; read it again and retry",
        )
    if r.replace_all:
        for name, _ in current:
            txn.delete(keys.state(r.service, r.key, name))
    for name in r.clear:
        txn.delete(keys.state(r.service, r.key, name))
    for name, value in r.set:
        txn.put(keys.state(r.service, r.key, name), value)
    return Outcome(status=200)

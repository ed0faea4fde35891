"""The invoker: runs attempts of invocations against deployments.

Per attempt: read the invocation's status, journal and (keyed targets) eager state from storage; send
``StartMessage`` + the journal; read the SDK's frames; propose what it sent (commands and run proposals as
``AppendEntries``, then exactly one outcome: ``End``, ``Suspend`` or ``AttemptFailed``) to the owning partition.
The partition decides everything else (notifications, retries, resumption) and calls back with effects.

Two transports behind one interface. Over HTTP/1.1 the request body ends after the journal (REQUEST_RESPONSE: the
SDK suspends at its first unsatisfied await). In-process ASGI keeps the body open and pushes each notification as
soon as it is durable (full duplex: a multi-step handler finishes in one attempt); after ``inactivity_timeout``
without a message from the SDK the body is closed, asking the SDK to suspend.

Invariants:
* Only records of the attempt's ``epoch`` are applied (the processor drops others), so a stale attempt can never
  change an invocation that moved on.
* A notification is pushed to the SDK only after the partition applied it (durable before acknowledged).
* A record of the attempt that could not be stored (disk full) ends the attempt: the partition refuses its later
  records, and the invoker stores an ``AttemptFailed`` instead, retrying until it is stored, so the invocation is
  retried (from its journal as stored) once the log has room again, without a restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from engine import codec
from engine.config import EngineConfig
from engine.errors import DeploymentError, EngineError, LogError, OverloadedError, ProtocolError
from engine.ids import InvocationId
from engine.invoker.protocol import messages
from engine.invoker.protocol.framing import (
    FrameDecoder,
    MessageType,
    choose_protocol_version,
    content_type,
    encode_frame,
    is_command,
)
from engine.invoker.transport import AttemptRequest, AttemptStream, Transport
from engine.logcontext import current_invocation
from engine.metrics import Histogram, HistogramSnapshot
from engine.partition.effects import Notify, StartAttempt
from engine.partition.types import (
    STATUS_ROWS,
    AppendEntries,
    AttemptFailed,
    End,
    InvocationStatus,
    JournalEntry,
    Record,
    Status,
    Suspend,
)
from engine.schema import Deployment, SchemaRegistry
from engine.storage import keys
from engine.storage.store import Store
from engine.tracing import TRACEPARENT, attempt_traceparent

logger = logging.getLogger(__name__)

Propose = Callable[[bytes, Record], "asyncio.Future[int]"]
TransportFor = Callable[[Deployment], Transport]


@dataclass(frozen=True, slots=True, kw_only=True)
class InvokerStatistics:
    running: int
    waiting: int
    attempts_started: int
    attempts_failed: int
    # wall time of each attempt, from sending the start to the SDK's End/Suspension/Error (or the failure)
    attempt_seconds: HistogramSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class _Loaded:
    status: InvocationStatus
    journal: list[JournalEntry]
    state: list[tuple[bytes, bytes]] | None
    partial_state: bool


@dataclass(frozen=True, slots=True)
class AttemptInput:
    """An attempt's inputs as stored (rows undecoded): the status row, the journal rows in order, and the eager state
    (``None``: lazy state or not keyed). Read where the tables are; decoded where the attempt runs (the invoker
    processes get them so: :mod:`engine.invoker.process`)."""

    status: bytes
    journal: list[bytes]
    state: list[tuple[bytes, bytes]] | None
    partial_state: bool
    decoded_status: InvocationStatus | None = None  # the status row decoded already (where it was read)

    def decode(self) -> _Loaded:
        return _Loaded(
            status=self.decoded_status or STATUS_ROWS.decode(self.status),
            journal=[codec.decode(row) for row in self.journal],
            state=self.state,
            partial_state=self.partial_state,
        )


class TooBigInline(Exception):
    """:func:`load_attempt_input` read more than its inline budget: read it again on a thread."""


def load_attempt_input(
    store: Store, registry: SchemaRegistry, config: EngineConfig, inv: bytes, inline_budget: int | None = None
) -> AttemptInput | None:
    """Status, journal and eager state of ``inv`` (``None`` if it has no status row). With ``inline_budget`` (bytes)
    it is being called on the event loop: it raises :class:`TooBigInline` once it has read more than that, and the
    caller repeats the load on a thread."""
    raw = store.get(keys.status(inv))
    if raw is None:
        return None
    read = len(raw)
    journal: list[bytes] = []
    for _, v in store.scan(keys.journal_prefix(inv)):
        read += len(v)
        if inline_budget is not None and read > inline_budget:
            raise TooBigInline
        journal.append(v)
    state: list[tuple[bytes, bytes]] | None = None
    partial = True
    status: InvocationStatus = STATUS_ROWS.decode(raw)
    target = status.target
    if target.keyed and target.key is not None:
        service = registry.service(target.service)
        lazy = service is not None and service.enable_lazy_state
        limit = config.invoker.eager_state_size_limit_bytes
        if not lazy and limit > 0:
            prefix = keys.object_prefix(keys.STATE, target.service, target.key)
            state = []
            size = 0
            partial = False
            for k, v in store.scan(prefix):
                size += len(k) + len(v)
                if size > limit:
                    partial = True
                    break
                if inline_budget is not None and read + size > inline_budget:
                    raise TooBigInline
                state.append((k[len(prefix) :], v))
    return AttemptInput(raw, journal, state, partial, status)


async def read_attempt_input(
    store: Store, registry: SchemaRegistry, config: EngineConfig, inv: bytes
) -> AttemptInput | None:
    """:func:`load_attempt_input`: small inputs on the event loop, larger ones on a thread."""
    try:
        return load_attempt_input(store, registry, config, inv, INLINE_LOAD_BUDGET_BYTES)
    except TooBigInline:
        return await asyncio.to_thread(load_attempt_input, store, registry, config, inv)


class _Attempt:
    """Bookkeeping of one running attempt: notifications to push, in journal order."""

    __slots__ = ("epoch", "journal_length", "loaded", "notifications", "reads", "started_at", "store_error")

    def __init__(self, epoch: int, loaded: AttemptInput | None = None) -> None:
        self.epoch = epoch
        self.loaded = loaded  # the inputs read when the attempt was started (invoker processes), else read later
        self.journal_length = -1  # unknown until the journal was read
        # Not size-limited: it holds at most the notifications of this one invocation's journal that arrive while
        # the attempt runs (each was durable first), and the attempt drains it as fast as the SDK reads.
        self.notifications: asyncio.Queue[Notify] = asyncio.Queue()
        self.reads: _ReadDeadline | None = None  # the attempt loop's reads from the deployment
        self.store_error: LogError | None = None  # one of its records could not be stored
        self.started_at = 0.0  # monotonic; 0 once its duration was observed

    def on_stored(self, applied: asyncio.Future[int]) -> None:
        """Done callback of the attempt's journal records: a record that was not stored ends the attempt now (an
        SDK waiting for a completion of it would otherwise wait until the inactivity timeout)."""
        if applied.cancelled() or self.store_error is not None:
            return
        exc = applied.exception()
        if isinstance(exc, LogError):
            self.store_error = exc
            if self.reads is not None:
                self.reads.interrupt()  # a read waiting now ends; the loop checks store_error after each read


class _AttemptOutcome(Exception):
    """Ends an attempt with ``record``; ``proposed`` is its application future when it was proposed already."""

    def __init__(self, record: Record, proposed: asyncio.Future[int] | None = None) -> None:
        self.record = record
        self.proposed = proposed


class Invoker:
    """Runs the attempts. In the engine process it reads their inputs from ``store`` when they start; in an invoker
    process (``store=None``) every start comes with its inputs, read by the engine when it sent the start."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store | None,
        registry: SchemaRegistry,
        propose: Propose,
        transport_for: TransportFor,
        on_attempt_done: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._on_attempt_done = on_attempt_done  # statistics() changed: an attempt task ended
        self._store = store
        self._registry = registry
        self._propose = propose
        self._transport_for = transport_for
        self._semaphore = asyncio.Semaphore(config.invoker.concurrency_limit)
        self._tasks: dict[bytes, asyncio.Task[None]] = {}
        self._attempts: dict[bytes, _Attempt] = {}
        # Started with their inputs but not running yet (a delay, the concurrency limit, the previous attempt still
        # finishing): the notifications that become durable meanwhile are queued for them already, since their
        # inputs were read before those.
        self._early: dict[bytes, _Attempt] = {}
        self._started = 0
        self._failed = 0
        self._attempt_seconds = Histogram()
        self._closing = False

    # ------------------------------------------------------------------------------------------------------
    # Effects
    # ------------------------------------------------------------------------------------------------------

    def start_attempt(self, effect: StartAttempt, loaded: AttemptInput | None = None) -> None:
        """Start an attempt; ``loaded``: its inputs, read when the effect was applied (else read when it runs)."""
        if self._closing:
            return
        inv = effect.invocation_id
        previous = self._tasks.get(inv)
        attempt = _Attempt(effect.epoch, loaded)
        if loaded is not None:
            self._early[inv] = attempt
        task = asyncio.create_task(
            self._run(effect, previous, attempt), name=f"attempt-{InvocationId.from_bytes(inv)}-{effect.epoch}"
        )
        self._tasks[inv] = task
        task.add_done_callback(functools.partial(self._task_done, inv))

    def _task_done(self, inv: bytes, task: asyncio.Task[None]) -> None:
        if self._tasks.get(inv) is task:
            del self._tasks[inv]
        if self._on_attempt_done is not None:
            self._on_attempt_done()
        if not task.cancelled() and task.exception() is not None:
            logger.error("attempt task crashed", exc_info=task.exception())

    def abort(self, invocation_id: bytes) -> None:
        """Stop the invocation's running attempt now (kill, pause, a rejected command)."""
        task = self._tasks.get(invocation_id)
        if task is not None and not task.done():
            task.cancel()

    def notify(self, effect: Notify) -> None:
        for attempts in (self._attempts, self._early):  # running, else started early and not running yet
            attempt = attempts.get(effect.invocation_id)
            if attempt is not None and attempt.epoch == effect.epoch:
                attempt.notifications.put_nowait(effect)
                return

    def overloaded(self) -> bool:
        """More attempts wait for a concurrency slot than ``invoker.queue_limit``: new work should be shed
        (ingress answers 503 + Retry-After; Kafka pauses partitions) until the backlog drains."""
        return len(self._tasks) - len(self._attempts) > self._config.invoker.queue_limit

    def statistics(self) -> InvokerStatistics:
        return InvokerStatistics(
            running=len(self._attempts),
            waiting=len(self._tasks) - len(self._attempts),
            attempts_started=self._started,
            attempts_failed=self._failed,
            attempt_seconds=self._attempt_seconds.snapshot(),
        )

    async def aclose(self) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------------------------
    # One attempt
    # ------------------------------------------------------------------------------------------------------

    async def _run(self, effect: StartAttempt, previous: asyncio.Task[None] | None, attempt: _Attempt) -> None:
        inv = effect.invocation_id
        try:
            if previous is not None and not previous.done():
                # The previous attempt is finishing (its outcome record was applied before it returned).
                await asyncio.wait([previous])
            if effect.delay_ms > 0:
                await asyncio.sleep(effect.delay_ms / 1000)
            async with self._semaphore:
                self._attempts[inv] = attempt
                try:
                    await self._attempt(inv, attempt)
                finally:
                    if self._attempts.get(inv) is attempt:
                        del self._attempts[inv]
        finally:
            if self._early.get(inv) is attempt:
                del self._early[inv]

    async def _attempt(self, inv: bytes, attempt: _Attempt) -> None:
        raw = attempt.loaded
        attempt.loaded = None
        if raw is None:
            assert self._store is not None, "an invoker process gets every attempt's inputs with its start"
            raw = await read_attempt_input(self._store, self._registry, self._config, inv)
        if raw is None:
            return
        loaded = raw.decode()
        st = loaded.status
        if st.epoch != attempt.epoch or st.status not in (Status.INVOKED, Status.BACKING_OFF):
            return
        attempt.journal_length = len(loaded.journal)
        invocation_id = InvocationId.from_bytes(inv)
        current_invocation.set(invocation_id)  # this attempt's task only: its log lines carry the id
        self._started += 1
        records: list[Record] = []
        proposed: list[asyncio.Future[int]] = []
        attempt.started_at = time.monotonic()
        try:
            records = await self._drive(invocation_id, attempt, loaded)
        except _AttemptOutcome as outcome:
            if outcome.proposed is not None:
                proposed.append(outcome.proposed)
            else:
                records = [outcome.record]
        except LogError as exc:
            records = [self._fail(inv, attempt.epoch, 503, f"a journal entry could not be stored: {exc}").record]
        finally:
            self._observe(attempt)
            if records or proposed:
                await self._propose_all(inv, attempt.epoch, records, proposed)

    def _observe(self, attempt: _Attempt) -> None:
        if attempt.started_at:
            self._attempt_seconds.observe(time.monotonic() - attempt.started_at)
            attempt.started_at = 0.0

    def _fail(self, inv: bytes, epoch: int, code: int, message: str, **extra: Any) -> _AttemptOutcome:
        self._failed += 1
        logger.debug("attempt %s/%d failed: %s %s", InvocationId.from_bytes(inv), epoch, code, message)
        return _AttemptOutcome(
            AttemptFailed(invocation_id=inv, epoch=epoch, code=code, message=message, now_ms=_now_ms(), **extra)
        )

    async def _drive(self, invocation_id: InvocationId, attempt: _Attempt, loaded: _Loaded) -> list[Record]:
        st = loaded.status
        inv = st.invocation_id
        epoch = attempt.epoch
        deployment = self._deployment_for(st)
        if deployment is None:
            raise self._fail(inv, epoch, 503, f"no deployment registered for service {st.target.service}")
        version = choose_protocol_version(
            deployment.min_protocol_version,
            deployment.max_protocol_version,
            self._config.invoker.max_protocol_version,
        )
        if version is None:
            raise self._fail(inv, epoch, 400, f"deployment {deployment.id} supports no protocol version we speak")
        ctype = content_type(version)
        transport = self._transport_for(deployment)
        duplex = transport.duplex
        headers: list[tuple[str, str]] = [
            ("content-type", ctype),
            ("accept", ctype),
            ("x-restate-invocation-id", str(invocation_id)),
            (TRACEPARENT, attempt_traceparent(st.traceparent, inv, st.random_seed)),
        ]
        if st.target.key is not None:
            headers.append(("x-restate-service-key", urllib.parse.quote(st.target.key, safe="")))
        now = _now_ms()
        body = bytearray(
            messages.start_message(
                raw_id=inv,
                debug_id=str(invocation_id),
                known_entries=len(loaded.journal),
                state=loaded.state,
                partial_state=loaded.partial_state,
                key=st.target.key or "",
                retry_count=st.retry_count_since_last_entry,
                duration_since_last_stored_entry_ms=max(0, now - st.last_entry_at_ms),
                random_seed=st.random_seed,
                version=version,
            )
        )
        for entry in loaded.journal:
            body += encode_frame(entry.ty, entry.body)
        service = self._registry.service(st.target.service)
        inactivity = self._config.invoker.inactivity_timeout.total_seconds()
        abort = self._config.invoker.abort_timeout.total_seconds()
        if service is not None:
            declared = service.option_ms(st.target.handler, "inactivity_timeout_ms")
            if declared is not None:
                inactivity = declared / 1000
            declared = service.option_ms(st.target.handler, "abort_timeout_ms")
            if declared is not None:
                abort = declared / 1000

        request = AttemptRequest(service=st.target.service, handler=st.target.handler, headers=tuple(headers))
        stream: AttemptStream | None = None
        entries: list[JournalEntry] = []
        pusher: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(abort):
                    stream = await transport.start_attempt(request, bytes(body), keep_open=duplex)
            except TimeoutError:
                raise self._fail(inv, epoch, 504, "timed out waiting for the deployment's response headers") from None
            except (DeploymentError, ProtocolError) as exc:
                raise self._fail(inv, epoch, 503, str(exc)) from exc
            if stream.status != 200:
                raise self._fail(inv, epoch, stream.status, _status_message(stream.status))
            got = stream.headers.get("content-type", "")
            if got.split(";")[0].strip() != ctype:
                raise self._fail(inv, epoch, 415, f"the deployment answered content-type {got!r}, expected {ctype!r}")
            if stream.duplex:
                pusher = asyncio.create_task(self._push_notifications(stream, attempt))
            decoder = FrameDecoder(self._config.invoker.message_size_limit_bytes)
            reads = attempt.reads = _ReadDeadline()
            request_open = stream.duplex
            deadline = inactivity if request_open else abort
            while True:
                try:
                    item = await reads.read(stream, deadline)
                    if attempt.store_error is not None:
                        raise attempt.store_error
                    if item is None:
                        raise StopAsyncIteration
                    chunk = item
                except StopAsyncIteration:
                    if entries:
                        await self._flush(inv, epoch, entries)
                    try:
                        decoder.feed(b"")  # a bad frame right after the last good ones in the final chunk
                    except ProtocolError as exc:
                        raise self._fail(inv, epoch, 571, f"bad frame from the deployment: {exc}") from exc
                    raise self._fail(
                        inv, epoch, 500, "the deployment closed the stream without End, Suspension or Error"
                    ) from None
                except TimeoutError:
                    if attempt.store_error is not None:  # interrupted: a record of this attempt was not stored
                        raise attempt.store_error from None
                    if request_open:
                        # Ask the SDK to suspend; give it the abort timeout to do so.
                        request_open = False
                        deadline = abort
                        await stream.end_request()
                        continue
                    if entries:
                        await self._flush(inv, epoch, entries)
                    raise self._fail(
                        inv, epoch, 504, f"the attempt made no progress for {deadline:g}s (abort timeout)"
                    ) from None
                except (DeploymentError, ProtocolError, aiohttp.ClientError, OSError) as exc:
                    if entries:
                        await self._flush(inv, epoch, entries)
                    raise self._fail(inv, epoch, 503, f"the deployment connection failed: {exc}") from exc
                try:
                    frames = decoder.feed(chunk)
                except ProtocolError as exc:
                    if entries:
                        await self._flush(inv, epoch, entries)
                    raise self._fail(inv, epoch, 571, f"bad frame from the deployment: {exc}") from exc
                for frame in frames:
                    outcome = self._on_frame(inv, epoch, frame.type, frame.body, entries)
                    if outcome is not None:
                        if entries:
                            await self._flush(inv, epoch, entries)
                        # Proposed now, so that its write and fsync overlap with closing the stream below (which
                        # reads the rest of the response: the final chunk after End or Suspension).
                        self._observe(attempt)  # before the outcome leaves (an invoker process's stats go with it)
                        raise _AttemptOutcome(outcome, await self._propose_in_order(inv, outcome))
                if entries and stream.duplex:
                    await self._flush(inv, epoch, entries)
        finally:
            if pusher is not None:
                pusher.cancel()
            if attempt.reads is not None:
                attempt.reads.close()
                attempt.reads = None
            if stream is not None:
                try:
                    await stream.end_request()
                except EngineError:
                    pass
                await stream.aclose()

    def _on_frame(self, inv: bytes, epoch: int, ty: int, body: bytes, entries: list[JournalEntry]) -> Record | None:
        now = _now_ms()
        if is_command(ty) or ty == MessageType.PROPOSE_RUN_COMPLETION:
            entries.append(JournalEntry(ty=ty, body=body))
            return None
        if ty == MessageType.END:
            return End(invocation_id=inv, epoch=epoch, now_ms=now)
        if ty == MessageType.SUSPENSION:
            try:
                msg: Any = messages.decode(ty, body)
            except ProtocolError as exc:
                raise self._fail(inv, epoch, 571, f"bad SuspensionMessage: {exc}") from exc
            return Suspend(
                invocation_id=inv,
                epoch=epoch,
                waiting_completions=tuple(int(x) for x in msg.waiting_completions),
                waiting_signals=tuple(int(x) for x in msg.waiting_signals),
                waiting_named_signals=tuple(str(x) for x in msg.waiting_named_signals),
                now_ms=now,
            )
        if ty == MessageType.ERROR:
            try:
                err: Any = messages.decode(ty, body)
            except ProtocolError as exc:
                raise self._fail(inv, epoch, 571, f"bad ErrorMessage: {exc}") from exc
            self._failed += 1
            logger.debug(
                "attempt %s/%d: ErrorMessage %d %s",
                InvocationId.from_bytes(inv),
                epoch,
                err.code,
                err.message,
            )
            return AttemptFailed(
                invocation_id=inv,
                epoch=epoch,
                code=int(err.code),
                message=str(err.message),
                stacktrace=str(err.stacktrace),
                next_retry_delay_ms=int(err.next_retry_delay) if err.HasField("next_retry_delay") else None,
                related_command_index=(
                    int(err.related_command_index) if err.HasField("related_command_index") else None
                ),
                related_command_name=(str(err.related_command_name) if err.HasField("related_command_name") else None),
                now_ms=now,
            )
        if ty == MessageType.AWAITING_ON:
            return None
        raise self._fail(inv, epoch, 571, f"unexpected message type 0x{ty:04x} from the deployment")

    async def _flush(self, inv: bytes, epoch: int, entries: list[JournalEntry]) -> None:
        record = AppendEntries(invocation_id=inv, epoch=epoch, entries=tuple(entries), now_ms=_now_ms())
        entries.clear()
        applied = await self._propose_in_order(inv, record)
        attempt = self._attempts.get(inv)
        if attempt is not None and attempt.epoch == epoch:
            applied.add_done_callback(attempt.on_stored)

    async def _propose_in_order(self, inv: bytes, record: Record) -> asyncio.Future[int]:
        """Enqueue ``record`` behind everything this attempt proposed before (a full log makes the attempt wait
        here, which is its backpressure). Returns the future of its application."""
        while True:
            try:
                return self._propose(inv, record)
            except OverloadedError:
                await asyncio.sleep(0.005)

    async def _propose_all(
        self, inv: bytes, epoch: int, records: Iterable[Record], proposed: Iterable[asyncio.Future[int]] = ()
    ) -> None:
        """Propose ``records`` (after the ones already ``proposed``) and wait until all of them are applied."""
        try:
            futures = [*proposed] + [await self._propose_in_order(inv, r) for r in records]
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            return
        except LogError as exc:
            error = exc
        # Not stored (e.g. the disk is full): nothing of this attempt after the failed record was stored either (the
        # partition refuses it). End the attempt with an AttemptFailed, retried until it is stored, so that the
        # invocation backs off and runs again once the log has room.
        failed = AttemptFailed(
            invocation_id=inv,
            epoch=epoch,
            code=503,
            message=f"the attempt's records could not be stored: {error}",
            now_ms=_now_ms(),
        )
        logger.warning("attempt %s/%d: records not stored: %s", InvocationId.from_bytes(inv), epoch, error)
        delay = _STORE_RETRY_S
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await (await self._propose_in_order(inv, failed))
                return
            except LogError as exc:
                logger.debug("attempt %s/%d: still not stored: %s", InvocationId.from_bytes(inv), epoch, exc)
                delay = min(delay * 2, _STORE_RETRY_MAX_S)

    async def _push_notifications(self, stream: AttemptStream, attempt: _Attempt) -> None:
        while True:
            note = await attempt.notifications.get()
            if note.index < attempt.journal_length:
                continue  # already part of the journal this attempt started with
            try:
                await stream.write(encode_frame(note.entry.ty, note.entry.body))
            except EngineError:
                return

    # ------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------

    def _deployment_for(self, st: InvocationStatus) -> Deployment | None:
        if st.deployment_id:
            dep = self._registry.deployments.get(st.deployment_id)
            if dep is not None:
                return dep
        service = self._registry.service(st.target.service)
        if service is None:
            return None
        return self._registry.deployments.get(service.deployment_id)


# An attempt's inputs are read on the event loop when they are this small (a status row, a short journal, a few
# state entries: tens of microseconds from the memtable or block cache); larger ones are read on a thread.
INLINE_LOAD_BUDGET_BYTES = 16 * 1024


# Storing the AttemptFailed that ends an attempt whose records were not stored: first retry, and the longest wait.
_STORE_RETRY_S = 0.1
_STORE_RETRY_MAX_S = 5.0


class _ReadDeadline:
    """Deadlines for an attempt loop's reads, with one timer handle per attempt instead of one per read.

    ``asyncio.timeout()`` around each read armed and cancelled a timer per response chunk (measured ~7 µs with
    uvloop; a duplex attempt reads a chunk per journal entry). Here a read only notes when it must end; the one
    handle, armed at the earliest due time, re-arms itself when it finds that a later read moved the due time,
    and cancels the reading task only when a read is still waiting past its due time, which :meth:`read` turns
    into ``TimeoutError`` exactly as ``asyncio.timeout()`` does (the reads are safe to cancel: nothing is lost).
    :meth:`interrupt` ends a waiting read, and every later one, at once (the caller then checks why).
    """

    __slots__ = ("_cancelling", "_due", "_expired", "_handle", "_interrupted", "_loop", "_task")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._due: float | None = None  # set while a read waits
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._interrupted = False
        self._cancelling = 0

    async def read(self, stream: AttemptStream, seconds: float) -> bytes | None:
        """``stream.read_chunk()``, or ``TimeoutError`` if nothing came within ``seconds`` or it was interrupted."""
        if self._interrupted:
            raise TimeoutError
        due = self._loop.time() + seconds
        self._due = due
        if self._handle is None:
            self._handle = self._loop.call_at(due, self._check)
        self._cancelling = self._task.cancelling()
        try:
            return await stream.read_chunk()
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if self._task.uncancel() <= self._cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._due = None
            if self._expired:  # expired, but the read ended otherwise (it swallowed the cancel): take ours back
                self._expired = False
                self._task.uncancel()

    def interrupt(self) -> None:
        """A read waiting now, and every later one, raises ``TimeoutError``."""
        self._interrupted = True
        if self._due is not None and not self._expired:
            self._expire()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        due = self._due
        if due is None or self._expired or self._interrupted:
            return  # no read waits (or it is ending already); the next one arms a handle again
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._expire()

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()


def _status_message(status: int) -> str:
    if status in (502, 504):
        return f"the deployment is unavailable (HTTP {status})"
    if status in (429, 503):
        return f"the deployment is overloaded (HTTP {status})"
    if status == 404:
        return "the deployment does not know this service or handler (HTTP 404)"
    if status == 415:
        return "the deployment rejected the negotiated protocol version (HTTP 415)"
    if status == 413:
        return "the deployment rejected the request as too large (HTTP 413)"
    if status in (401, 403):
        return (
            f"the deployment rejected the request (HTTP {status}): does it require request identity "
            "(invoker.request_identity_private_key_pem_file, the SDK's identity_keys)?"
        )
    return f"the deployment answered HTTP {status}"


def _now_ms() -> int:
    return int(time.time() * 1000)

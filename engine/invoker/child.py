"""An invoker process: runs attempts (and, for in-process apps, the SDK and the user's handlers) on a core of its own.

The engine process is one Python interpreter, bound by one core. Running an attempt (framing, the transport, and in
the in-process ASGI mode the SDK and the user's code) was about 60% of its time when Steps.three ran in-process;
applying records, the log and the HTTP ingress the rest. With ``invoker.processes = N`` the engine starts N of
these (``engine.invoker.process``); each runs the same :class:`~engine.invoker.invoker.Invoker` for the invocations
routed to it, with its own transports (its own HTTP connections, its own copy of each mounted app).

Nothing durable lives here. The engine reads an attempt's inputs (status, journal, eager state) when it applies
the record that starts it and sends them with the start; every record the attempt produces goes back to the engine,
which appends it to the partition's log and answers once it is applied; notifications come as they become durable.
So a crash of this process loses nothing the engine acknowledged: the engine treats it as fatal (it stops, exit
code 1, like a failed partition) and its restart resumes every invocation from its journal.

Messages, engine → here: ``hello`` (config, metadata rows, app specs), ``start``, ``notify``, ``abort``, ``meta``
(a metadata row changed), ``applied`` (a proposal's answer), ``discover`` (an in-process app's manifest). Here →
engine: ``ready`` or ``failed``, ``propose``, ``stats``, ``discovered``. Frames carry many messages
(:class:`engine.ipc.BatchedLink`); ``stats`` ride along with any frame they changed before, and go out alone at most
``_STATS_INTERVAL_S`` after a change otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any, Final

from engine import codec, logcontext
from engine.config import EngineConfig
from engine.errors import ConfigError, DeploymentError, LogError, OverloadedError
from engine.invoker.identity import RequestSigner
from engine.invoker.invoker import AttemptInput, Invoker, InvokerStatistics
from engine.invoker.transport_asgi import AsgiTransport, load_asgi_app
from engine.invoker.transports import ASGI_SCHEME, Transports
from engine.ipc import BatchedLink, die_with_parent, read_frame, serve_child
from engine.partition.effects import Notify, StartAttempt
from engine.partition.types import JournalEntry, Record
from engine.schema import SchemaRegistry

logger = logging.getLogger(__name__)

# Proposals sent and not answered yet; beyond it the invoker is told "overloaded" and retries (as when the
# partition's queue is full in the engine process), so this process never queues more than this for the engine.
_MAX_UNANSWERED: Final = 4096
_STATS_INTERVAL_S: Final = 0.05


class InvokerChild:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        # Statistics ride along with every frame they changed before (the engine's backpressure reads them).
        self._link = BatchedLink(writer, before_flush=self._report_if_changed)
        self._reported: tuple[InvokerStatistics, int] | None = None
        self._starts_taken = 0  # start messages dispatched (the engine counts the ones not taken yet as waiting)
        self._registry = SchemaRegistry()
        self._answers: dict[int, asyncio.Future[int]] = {}
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._invoker: Invoker | None = None

    async def serve(self) -> None:
        hello = (await read_frame(self._reader))[0]  # the first frame holds the hello alone
        try:
            invoker, transports = self._setup(*hello[1:])
        except ConfigError as exc:
            self._link.send(("failed", str(exc)))
            self._link.close()
            return
        self._invoker = invoker
        self._link.send(("ready",))
        stats = asyncio.create_task(self._report_stats())
        try:
            while True:
                try:
                    frame = await read_frame(self._reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the engine closed its end: stop
                for message in frame:
                    self._dispatch(invoker, transports, message)
                self._report_if_changed()  # starts make attempts wait: tell the engine now
        finally:
            stats.cancel()
            await invoker.aclose()
            for task in list(self._tasks):
                task.cancel()
            await transports.aclose()
            for fut in self._answers.values():
                if not fut.done():
                    fut.set_exception(LogError("the engine closed the invoker process"))

    def _setup(
        self, config: EngineConfig, metadata: list[tuple[str, bytes]], app_specs: list[str]
    ) -> tuple[Invoker, Transports]:
        for key, value in metadata:
            self._registry.apply(key, value)
        pem_file = config.invoker.request_identity_private_key_pem_file
        signer = RequestSigner.from_pem_file(pem_file) if pem_file is not None else None
        transports = Transports(config.invoker, signer)
        for spec in app_specs:
            transports.asgi_apps[spec] = load_asgi_app(spec, app_dir=".")
        invoker = Invoker(
            config, None, self._registry, self._propose, transports.for_deployment, self._report_if_changed
        )
        return invoker, transports

    def _dispatch(self, invoker: Invoker, transports: Transports, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "start":
            self._starts_taken += 1
            _, inv, epoch, delay_ms, raw = message
            if raw is not None:  # None: the invocation was gone when the engine read its inputs
                effect = StartAttempt(invocation_id=inv, epoch=epoch, delay_ms=delay_ms)
                invoker.start_attempt(effect, AttemptInput(*raw))
        elif kind == "notify":
            _, inv, epoch, index, ty, body = message
            invoker.notify(
                Notify(invocation_id=inv, epoch=epoch, index=index, entry=JournalEntry(ty=ty, body=body))
            )
        elif kind == "applied":
            _, seq, lsn, error = message
            fut = self._answers.pop(seq, None)
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(lsn)
                else:
                    fut.set_exception(LogError(error))
        elif kind == "abort":
            invoker.abort(message[1])
        elif kind == "meta":
            _, key, value = message
            self._registry.apply(key, value)
            transports.on_metadata(key)
        elif kind == "discover":
            task = asyncio.create_task(self._discover(transports, message[1], message[2]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            logger.error("unknown message %r from the engine", kind)

    def _propose(self, inv: bytes, record: Record) -> asyncio.Future[int]:
        if len(self._answers) >= _MAX_UNANSWERED:
            raise OverloadedError(f"{len(self._answers)} records of this invoker process wait for the engine")
        self._seq += 1
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._answers[self._seq] = fut
        self._link.send(("propose", self._seq, inv, codec.encode(record)))
        return fut

    async def _discover(self, transports: Transports, request: int, spec: str) -> None:
        try:
            transport = transports.make("asgi", ASGI_SCHEME + spec, {}, False)
            assert isinstance(transport, AsgiTransport)
            try:
                status, headers, body = await transport.fetch_discovery()
            finally:
                await transport.aclose()
        except DeploymentError as exc:
            self._link.send(("discovered", request, None, (str(exc), exc.status)))
            return
        self._link.send(("discovered", request, (status, headers, body), None))

    def _report_if_changed(self) -> None:
        if self._invoker is None:
            return
        current = (self._invoker.statistics(), self._starts_taken)
        if current != self._reported:
            self._reported = current
            self._link.send(("stats", *current))

    async def _report_stats(self) -> None:
        """For changes that send nothing else (an attempt that ended, one that got its concurrency slot)."""
        while True:
            await asyncio.sleep(_STATS_INTERVAL_S)
            self._report_if_changed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.invoker.child", description=__doc__.split("\n")[0])
    parser.add_argument("fd", type=int, help="this end of the socket pair the engine opened")
    parser.add_argument("--index", type=int, default=0, help="which of the engine's invoker processes this is")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(logcontext.InvocationLogFilter())
    tagged = logcontext.LOG_FORMAT.replace("%(name)s", f"[invoker-{args.index}] %(name)s")
    handler.setFormatter(logging.Formatter(tagged))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(args.log_level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    runner(serve_child(args.fd, lambda reader, writer: InvokerChild(reader, writer).serve()))


if __name__ == "__main__":
    main()

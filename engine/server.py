"""The server: wires storage, partitions, invoker, ingress and admin together, and owns their lifecycle.

Start-up order: open RocksDB → open each partition's log and replay its tail → load the schema registry →
dispatch the recovered effects (resume running invocations) → mount in-process apps → start HTTP listeners.

Shutdown order (an ordered method, not a cancel): stop HTTP intake → stop the invoker (attempts are abandoned;
their invocations resume after restart) → let partitions drain what is already proposed → close logs (fsync) →
close RocksDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from engine.config import EngineConfig, split_address
from engine.errors import ConfigError, DeploymentError, LogError, OverloadedError
from engine.extensions import Extension, load_extension
from engine.ids import InvocationId, partition_for
from engine.invoker.identity import RequestSigner
from engine.invoker.invoker import Invoker, InvokerStatistics
from engine.invoker.process import InvokerProcesses, RemoteAppDiscovery
from engine.invoker.transport import Transport
from engine.invoker.transport_asgi import load_asgi_app
from engine.invoker.transports import ASGI_SCHEME, Transports
from engine.partition.effects import (
    AbortAttempt,
    Effect,
    ExternalDelivery,
    MetadataChanged,
    Notify,
    NotReady,
    Outcome,
    Reply,
    ScheduleTimer,
    SendAccepted,
    SendOutbox,
    StartAttempt,
)
from engine.partition.partition import Partition
from engine.partition.shuffler import Shuffler
from engine.partition.types import Cleanup, FireTimer, Invoke, PutMetadata, Record, Result, Routed
from engine.schema import SchemaRegistry
from engine.storage import keys
from engine.storage.store import Store
from engine.timers.clock import Clock, SystemClock
from engine.timers.service import TimerService

if TYPE_CHECKING:
    from engine.ingress_http.app import IngressStatistics

logger = logging.getLogger(__name__)

__all__ = ["ASGI_SCHEME", "Engine", "InvokerLike", "run", "serve"]
# A timer whose FireTimer record could not be stored fires again this much later.
_TIMER_RETRY_MS = 500


class InvokerLike(Protocol):
    """What runs the attempts: the in-process :class:`Invoker`, or :class:`InvokerProcesses`."""

    def start_attempt(self, effect: StartAttempt) -> None: ...
    def notify(self, effect: Notify) -> None: ...
    def abort(self, invocation_id: bytes) -> None: ...
    def overloaded(self) -> bool: ...
    def statistics(self) -> InvokerStatistics: ...
    async def aclose(self) -> None: ...


class Engine:
    """A running Capstan node. Build with :meth:`open`, stop with :meth:`aclose`."""

    def __init__(self, config: EngineConfig, store: Store, clock: Clock | None = None) -> None:
        self.config = config
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.timers = TimerService(self.clock, self._fire_timer)
        self.shufflers: list[Shuffler] = []
        self.registry = SchemaRegistry()
        self.partitions: list[Partition] = []
        # Specs ("module:attribute") of the apps mounted in-process (`capstan serve --app`): in this process, or in
        # each invoker process when invoker.processes > 0.
        self.app_specs: tuple[str, ...] = (config.app,) if config.app else ()
        self._waiters: dict[str, asyncio.Future[Result | SendAccepted | Outcome | NotReady]] = {}
        self.transports = Transports(config.invoker)
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self.invoker_processes: InvokerProcesses | None = None
        self.invoker: InvokerLike = Invoker(
            config, store, self.registry, self.propose_to, self.transports.for_deployment
        )
        self.ingress_url = ""
        # Signs every request to a deployment when invoker.request_identity_private_key_pem_file is set.
        self.request_signer: RequestSigner | None = None
        self.admin_url = ""
        self.extensions: list[Extension] = []
        self.ingress_statistics: Callable[[], IngressStatistics] | None = None  # set once ingress is built
        # Set when a partition stops on an internal error: `serve` then shuts the engine down (exit code 1).
        self.fatal = asyncio.Event()

    # ------------------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: EngineConfig) -> Engine:
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(Store, data_dir / "rocksdb")
        engine = cls(config, store)
        try:
            await engine._start()
        except BaseException:
            await engine.aclose()
            raise
        return engine

    async def _start(self) -> None:
        config = self.config
        await asyncio.to_thread(self._check_partition_count)
        pem_file = config.invoker.request_identity_private_key_pem_file
        if pem_file is not None:
            self.request_signer = await asyncio.to_thread(RequestSigner.from_pem_file, pem_file)
            # The public half, in the form the SDKs take (identity_keys=[...]); the private key is never logged.
            logger.info(
                "request identity: signing requests to deployments; SDK identity key %s (from %s)",
                self.request_signer.key_id,
                pem_file,
            )
        self.transports.signer = self.request_signer
        if config.invoker.processes == 0:
            for spec in self.app_specs:
                self.transports.asgi_apps[spec] = load_asgi_app(spec, app_dir=".")
        for pid in range(config.num_partitions):
            self.partitions.append(await Partition.open(pid, config.data_dir, self.store, config, self._on_effects))
        recovered: list[tuple[int, list[Effect]]] = []
        for p in self.partitions:
            recovered.append((p.id, await p.recover()))
        for key, value in await asyncio.to_thread(lambda: list(self.store.scan(keys.METADATA))):
            self.registry.apply(key[len(keys.METADATA) :].decode(), value)
        if config.invoker.processes > 0:
            self.invoker_processes = InvokerProcesses(self, config.invoker.processes)
            self.invoker = self.invoker_processes
            await self.invoker_processes.start(list(self.app_specs))
        for p in self.partitions:
            self._tasks.append(asyncio.create_task(self._run_partition(p), name=f"partition-{p.id}"))
            shuffler = Shuffler(p.id, self._route)
            self.shufflers.append(shuffler)
            self._tasks.append(asyncio.create_task(shuffler.run(), name=f"shuffler-{p.id}"))
        self._tasks.append(asyncio.create_task(self.timers.run(), name="timers"))
        self._tasks.append(asyncio.create_task(self._cleanup_loop(), name="retention-cleanup"))
        for pid, effects in recovered:
            if effects:
                logger.info("partition %d: resuming %d invocations", pid, len(effects))
                self._on_effects(pid, effects)
        for spec in self.app_specs:
            await self._register_asgi_app(spec)
        from engine.admin.app import ADMIN_PREFIXES, build_admin_app
        from engine.ingress_http.app import INGRESS_STATISTICS, build_ingress_app

        for spec in config.extensions:
            self.extensions.append(load_extension(spec, self))
        admin_app = build_admin_app(self)
        for extension in self.extensions:
            extension.add_admin_routes(admin_app, ADMIN_PREFIXES)
        for extension in self.extensions:
            await extension.start()
        ingress_app = build_ingress_app(self)
        self.ingress_statistics = ingress_app[INGRESS_STATISTICS]
        self.ingress_url = await self._listen(ingress_app, config.ingress_http.address)
        self.admin_url = await self._listen(admin_app, config.admin.address)
        if config.admin.auth_token is None and not _is_loopback(split_address(config.admin.address)[0]):
            logger.warning(
                "the admin API listens on %s without authentication; set admin.auth_token", config.admin.address
            )
        logger.info("capstan ready: ingress %s, admin %s, data %s", self.ingress_url, self.admin_url, config.data_dir)

    def _check_partition_count(self) -> None:
        """Invocation ids map to partitions by their key hash, so a data dir keeps the partition count it was
        created with: refuse to start with another one rather than route invocations to the wrong log."""
        key = keys.metadata("engine/num_partitions")
        raw = self.store.get(key)
        wanted = self.config.num_partitions
        if raw is None:
            txn = self.store.txn()
            txn.put(key, str(wanted).encode())
            self.store.commit(txn, sync=True)
            return
        if int(raw) != wanted:
            raise ConfigError(
                f"the data dir {self.config.data_dir} was created with {int(raw)} partitions; start it with "
                f"--partitions {int(raw)} (num_partitions = {int(raw)}), not {wanted}"
            )

    async def _run_partition(self, p: Partition) -> None:
        try:
            await p.run()
        except Exception:
            logger.critical("partition %d stopped on an internal error; stopping the engine", p.id, exc_info=True)
            self.fatal.set()
            raise

    async def _listen(self, app: web.Application, address: str) -> str:
        host, port = split_address(address)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        return f"http://{host}:{bound_port}"

    async def _register_asgi_app(self, spec: str) -> None:
        """Mount an in-process app: discover it and register it as deployment ``asgi://spec`` (idempotent)."""
        uri = ASGI_SCHEME + spec
        transport = self.make_transport("asgi", uri, {}, False)
        try:
            discovered = await transport.discover()
        except DeploymentError as exc:
            raise ConfigError(f"in-process app {spec}: discovery failed: {exc}") from exc
        manifest = discovered.manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
        existing = self.registry.deployment_by_uri(uri)
        if existing is not None and existing.manifest == manifest:
            return
        from engine.ids import new_deployment_id
        from engine.schema import registration_records

        dep, rows = registration_records(
            registry=self.registry,
            deployment_id=existing.id if existing is not None else new_deployment_id(),
            uri=uri,
            kind="asgi",
            manifest=manifest,
            protocol_mode=discovered.manifest.protocol_mode.value,
            sdk_version=discovered.sdk_version,
            additional_headers={},
            use_http_11=False,
        )
        records = [PutMetadata(key=k, value=v) for k, v in rows]
        await self.propose_metadata(records)
        logger.info("mounted in-process app %s as deployment %s", spec, dep.id)

    async def _cleanup_loop(self) -> None:
        interval = self.config.invocation.cleanup_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            for p in self.partitions:
                try:
                    await p.propose(Cleanup(now_ms=self.now_ms()))
                except Exception as exc:
                    logger.warning("retention cleanup of partition %d failed: %s", p.id, exc)

    async def aclose(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for extension in reversed(self.extensions):
            try:
                await extension.aclose()
            except Exception:
                logger.exception("closing an extension failed")
        self.extensions.clear()
        await self.invoker.aclose()
        for p in self.partitions:
            await p.aclose()
        grace = self.config.graceful_shutdown_timeout.total_seconds()
        partition_tasks = [t for t in self._tasks if t.get_name().startswith("partition-")]
        other = [t for t in self._tasks if t not in partition_tasks]
        for t in other:
            t.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*partition_tasks, return_exceptions=True)
        for t in partition_tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in self.partitions:
            await p.close_log()
        await self.transports.aclose()
        await asyncio.to_thread(self.store.close)
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------------------------------------------
    # Used by ingress / admin / invoker
    # ------------------------------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.clock.now_ms()

    def partition_of(self, invocation_id: bytes) -> Partition:
        pk = InvocationId.from_bytes(invocation_id).partition_key
        return self.partitions[partition_for(pk, len(self.partitions))]

    def propose(self, record: Invoke) -> asyncio.Future[int]:
        return self.partition_of(record.invocation_id).propose_nowait(record)

    def propose_durable(self, record: Invoke) -> asyncio.Future[int]:
        """As :meth:`propose`, but resolves once the record is durable in the log (it may not be applied yet)."""
        return self.partition_of(record.invocation_id).propose_durable_nowait(record)

    def propose_encoded_durable(self, invocation_id: bytes, encoded: bytes) -> asyncio.Future[int]:
        """As :meth:`propose_durable`, for an ``Invoke`` of ``invocation_id`` already encoded (``codec.encode``):
        the partition decodes it when it applies it (the Kafka worker process sends them so)."""
        return self.partition_of(invocation_id).propose_durable_nowait(encoded)

    def propose_to(self, invocation_id: bytes, record: Record) -> asyncio.Future[int]:
        return self.partition_of(invocation_id).propose_nowait(record)

    async def metadata_rows(self, prefix: str) -> list[tuple[str, bytes]]:
        """Stored metadata rows whose key starts with ``prefix`` (e.g. ``"subscription/"``)."""
        rows = await asyncio.to_thread(lambda: list(self.store.scan(keys.metadata(prefix))))
        return [(k[len(keys.METADATA) :].decode(), v) for k, v in rows]

    async def active_invocations(self) -> int:
        """How many invocations have not completed (running, suspended, waiting, scheduled, paused)."""
        return await asyncio.to_thread(lambda: sum(1 for _ in self.store.scan(keys.ACTIVE)))

    def idle_partitions(self) -> bool:
        """No proposed record is waiting to be applied."""
        return all(p.statistics().pending == 0 for p in self.partitions)

    def propose_routed(self, record: Routed) -> asyncio.Future[int]:
        """Propose a record to the partition that owns its invocation (ingress and admin use this)."""
        return self.partition_of(record.invocation_id).propose_nowait(record)

    def _route(self, invocation_id: bytes | None, partition: int | None, record: Record) -> asyncio.Future[int]:
        if invocation_id is not None:
            return self.propose_to(invocation_id, record)
        assert partition is not None
        return self.partitions[partition].propose_nowait(record)

    def _fire_timer(self, key: bytes) -> bool:
        try:
            applied = self.propose_to(key[9:33], FireTimer(key=key))
        except OverloadedError:
            return False
        except LogError:
            return False
        applied.add_done_callback(lambda fut: self._timer_fired(key, fut))
        return True

    def _timer_fired(self, key: bytes, applied: asyncio.Future[int]) -> None:
        if applied.cancelled() or applied.exception() is None:
            return
        # The FireTimer was not stored (e.g. the disk is full): arm the timer again; firing twice is harmless.
        logger.debug("timer could not fire (%s); retrying in %d ms", applied.exception(), _TIMER_RETRY_MS)
        self.timers.schedule(self.now_ms() + _TIMER_RETRY_MS, key)

    async def propose_metadata(self, records: Sequence[PutMetadata]) -> None:
        p0 = self.partitions[0]
        futures = [p0.propose_nowait(r) for r in records]
        await asyncio.gather(*futures)

    def register_waiter(self, token: str) -> asyncio.Future[Result | SendAccepted | Outcome | NotReady]:
        fut: asyncio.Future[Result | SendAccepted | Outcome | NotReady] = asyncio.get_running_loop().create_future()
        self._waiters[token] = fut
        return fut

    def drop_waiter(self, token: str) -> None:
        self._waiters.pop(token, None)

    async def propose_and_wait(
        self, propose: Callable[[str], Awaitable[int]]
    ) -> Result | SendAccepted | Outcome | NotReady:
        """Propose a record that answers through a sink token (``propose(token)`` proposes it) and wait for the
        answer. Raises what proposing raises (OverloadedError, LogError)."""
        token = uuid.uuid4().hex
        waiter = self.register_waiter(token)
        try:
            await propose(token)
            return await waiter
        finally:
            self.drop_waiter(token)

    def make_transport(self, kind: str, uri: str, additional_headers: dict[str, str], use_http_11: bool) -> Transport:
        if kind == "asgi" and self.invoker_processes is not None:
            spec = uri[len(ASGI_SCHEME) :]
            if spec not in self.app_specs:
                raise DeploymentError(f"in-process app {spec!r} is not mounted in this engine", status=400)
            return RemoteAppDiscovery(self.invoker_processes, spec)
        return self.transports.make(kind, uri, additional_headers, use_http_11)

    def _on_effects(self, partition_id: int, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case StartAttempt():
                    self.invoker.start_attempt(effect)
                case Notify():
                    self.invoker.notify(effect)
                case Reply():
                    fut = self._waiters.get(effect.token)
                    if fut is not None and not fut.done():
                        fut.set_result(effect.result)
                case SendOutbox():
                    self.shufflers[effect.partition].send(effect)
                case ScheduleTimer():
                    self.timers.schedule(effect.wake_ms, effect.key)
                case AbortAttempt():
                    self.invoker.abort(effect.invocation_id)
                case ExternalDelivery():
                    if not any(ext.on_external(effect) for ext in self.extensions):
                        logger.warning("no extension handles sink %s; the failure stays stored", effect.route)
                case MetadataChanged():
                    self.registry.apply(effect.key, effect.value)
                    if self.invoker_processes is not None:
                        self.invoker_processes.on_metadata(effect.key, effect.value)
                    for extension in self.extensions:
                        extension.on_metadata(effect.key, effect.value)
                    self.transports.on_metadata(effect.key)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(config: EngineConfig, *, ready: Any = None) -> int:
    """Run until SIGTERM/SIGINT (or a fatal partition error); return the exit code."""
    engine = await Engine.open(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(engine)
    # Everything allocated so far (modules, classes, the engine's long-lived objects) lives until shutdown: keep it
    # out of the cyclic collector's generations, so that full collections under load walk only what load allocates.
    gc.collect()
    gc.freeze()
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(engine.fatal.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    code = 1 if engine.fatal.is_set() else 0
    logger.info("shutting down")
    await engine.aclose()
    return code


def run(config: EngineConfig) -> int:
    """Entry point of ``capstan serve``."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    try:
        return int(runner(serve(config)))
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2

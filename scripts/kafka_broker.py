#!/usr/bin/env python3
"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) run from Maven Central jars: no
Docker, no tarball. The test harness (``tests/kafka``) and developers use it; ``docker-compose.yml`` is the
containerised equivalent.

Command line (run it with any Python >= 3.11; ``start`` uses aiokafka for its readiness probe when importable)::

    scripts/kafka_broker.py fetch [--optional] [--force]    # copy the jars into the cache once (needs mvn)
    scripts/kafka_broker.py start --data-dir DIR [--port N]  # format DIR (first time) and run in the foreground

``fetch`` runs ``mvn -q -B -f kafka/pom.xml maven-dependency-plugin:3.8.1:copy-dependencies`` into
``<repo>/.cache/kafka/<version>/lib`` (``$CAPSTAN_KAFKA_CACHE/<version>/lib`` when that is set) and writes a marker
file after success, so later calls return at once. ``--optional`` turns a missing ``mvn`` into a warning, except
with ``CI=true``. ``start`` listens on 127.0.0.1 only (port 9092 unless ``--port``; 0 picks a free one), prints the
bootstrap address once the broker answers metadata, and stops the broker (SIGTERM by PID) on Ctrl-C or SIGTERM.
Re-running ``start`` on the same directory reuses its data and its ports (they are kept in ``DIR/server.properties``).

Importable API (``tests/kafka/broker.py`` re-exports it)::

    lib = fetch_jars()                       # idempotent; FetchError carries mvn's output
    broker = KafkaBroker(work_dir)           # free 127.0.0.1 ports; data in work_dir/data
    broker.start()                           # format (first start only), spawn, wait until 1 broker answers
    broker.bootstrap_servers                 # "127.0.0.1:<port>"
    broker.restart(); broker.kill(); broker.stop(); broker.logs()

The blocking calls wait for the JVM (seconds); from async code use ``await asyncio.to_thread(broker.restart)``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
import zipfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_CONF_DIR = REPO_ROOT / "kafka"
POM = KAFKA_CONF_DIR / "pom.xml"
LOG4J2_CONFIG = KAFKA_CONF_DIR / "log4j2.properties"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
CACHE_ENV = "CAPSTAN_KAFKA_CACHE"
FETCH_MARKER = ".capstan-fetch-complete"
FETCH_TIMEOUT_S = 900.0

HOST = "127.0.0.1"
DEFAULT_CLI_PORT = 9092
HEAP = "512m"
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 30.0
BIND_ATTEMPTS = 3
STARTED_LINE = "Kafka Server started"

T = TypeVar("T")


class FetchError(RuntimeError):
    """The jars could not be fetched: mvn is missing or failed (the message ends with its output)."""


class ToolMissingError(FetchError):
    """``mvn`` or ``java`` is not on PATH."""


class BrokerStartError(RuntimeError):
    """The broker exited or did not answer in time; the message ends with the tail of its log."""


# --------------------------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------------------------


def kafka_version() -> str:
    """The Kafka version pinned in ``kafka/pom.xml`` (the single source of truth)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", POM.read_text())
    if match is None:
        raise FetchError(f"no <kafka.version> property in {POM}")
    return match.group(1)


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".cache" / "kafka"


def lib_dir() -> Path:
    """Where ``fetch_jars`` puts the jars: ``<cache root>/<kafka version>/lib``."""
    return cache_root() / kafka_version() / "lib"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_present(lib: Path | None = None) -> bool:
    """True when a completed fetch of the current ``kafka/pom.xml`` is in ``lib``."""
    marker = (lib or lib_dir()) / FETCH_MARKER
    try:
        return marker.read_text().strip() == _pom_digest()
    except FileNotFoundError:
        return False


def _check_main_classes(lib: Path) -> None:
    """``kafka.Kafka`` and ``kafka.tools.StorageTool`` live in kafka_2.13 up to 4.1; later releases may move them."""
    jars = sorted(lib.glob("kafka_2.13-*.jar"))
    if not jars:
        raise FetchError(f"no kafka_2.13-*.jar in {lib}")
    with zipfile.ZipFile(jars[0]) as jar:
        names = set(jar.namelist())
    for cls in ("kafka/Kafka.class", "kafka/tools/StorageTool.class"):
        if cls not in names:
            raise FetchError(f"{jars[0].name} has no {cls}: this Kafka version moved it, update the harness")


def fetch_jars(*, force: bool = False) -> Path:
    """Copy the broker's runtime jars into ``lib_dir()`` with Maven, once. Returns the directory.

    Safe to call every time: a marker written after a successful fetch (holding the POM's digest) makes later
    calls return immediately. The copy goes to a temporary sibling that is renamed into place, so an interrupted
    fetch never looks complete.
    """
    lib = lib_dir()
    if not force and jars_present(lib):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ToolMissingError("mvn not found on PATH (needed once to fetch the Kafka broker jars from Maven Central)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    partial = lib.parent / f"lib.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    try:
        try:
            result = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=FETCH_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode(errors="replace")
            raise FetchError(
                f"mvn did not finish in {FETCH_TIMEOUT_S:.0f}s: {' '.join(cmd)}\n{output[-4000:]}"
            ) from None
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise FetchError(f"mvn exited with {result.returncode}: {' '.join(cmd)}\n{output[-4000:]}")
        _check_main_classes(partial)
        (partial / FETCH_MARKER).write_text(_pom_digest() + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        partial.rename(lib)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return lib


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ToolMissingError("java not found on PATH (the Kafka 4.x broker needs JDK 17 or newer)")
    return java


# --------------------------------------------------------------------------------------------------------------
# Broker process
# --------------------------------------------------------------------------------------------------------------


def free_ports(count: int, *, exclude: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct free ports, none in ``exclude`` (every socket stays bound until all are picked)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            s = stack.enter_context(contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
            if port not in exclude:
                ports.append(port)
        return ports


def port_is_free(port: int) -> bool:
    """No one listens on 127.0.0.1:``port`` (SO_REUSEADDR: TIME_WAIT leftovers of a stopped broker do not count)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def random_cluster_id() -> str:
    """What ``kafka-storage.sh random-uuid`` prints (URL-safe base64, no padding), without starting a JVM."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka's Uuid.randomUuid() rejects these: they read as CLI options
            return text


def render_server_properties(*, broker_port: int, controller_port: int, data_dir: Path) -> str:
    """One node, both roles, loopback only; internal topics sized for a single broker and fast first joins."""
    return f"""\
# Written by scripts/kafka_broker.py: a single-node KRaft broker for tests and development (127.0.0.1 only).
process.roles=broker,controller
node.id=1
# Static quorum: the voter set lives here, not in the metadata log, so the data dir is formatted without
# --standalone and no controller endpoint is baked into the data.
controller.quorum.voters=1@{HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{broker_port},CONTROLLER://{HOST}:{controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
# A single broker: every replication factor and min ISR is 1.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Defaults of 50 partitions make the first group join / first transaction create 50 partitions.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
# The default 3 s is added to every first join of a consumer group.
group.initial.rebalance.delay.ms=0
num.partitions=1
auto.create.topics.enable=true
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
# After a kill -9 the restarted controller keeps the dead incarnation's registration until its session expires,
# and the new broker waits that long to register ("caught up"): 3 s instead of the default 9 s.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
# The log cleaner allocates this at startup (default 128 MB): keep it small for a 512 MB heap.
log.cleaner.dedupe.buffer.size=16777216
"""


_PORT_LINES = re.compile(r"^listeners=PLAINTEXT://[^:]+:(\d+),CONTROLLER://[^:]+:(\d+)$", re.MULTILINE)


def _ports_from_config(path: Path) -> tuple[int, int] | None:
    try:
        match = _PORT_LINES.search(path.read_text())
    except FileNotFoundError:
        return None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when called on a thread that runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _count_brokers(bootstrap_servers: str, wait_s: float) -> int:
    """Brokers in a metadata response from ``bootstrap_servers`` (raises when it does not answer)."""
    from aiokafka import AIOKafkaClient  # the venv has it; ``fetch`` must work without it

    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(wait_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), wait_s)
        return len(client.cluster.brokers())
    finally:
        await client.close()


def count_brokers(bootstrap_servers: str, wait_s: float = 5.0) -> int:
    """Blocking ``_count_brokers``; raises when the cluster does not answer."""
    return _run_coroutine(lambda: _count_brokers(bootstrap_servers, wait_s))


def _aiokafka_available() -> bool:
    try:
        import aiokafka  # noqa: F401
    except ImportError:
        return False
    return True


class KafkaBroker:
    """One broker JVM on 127.0.0.1 whose data lives in ``work_dir``.

    ``work_dir`` holds ``server.properties``, ``data/`` (the KRaft log dir), ``tmp/`` (``java.io.tmpdir``: the
    compression codecs unpack native libraries there) and ``broker.log`` (stdout and stderr of every start, each
    preceded by a marker line). Ports are picked once (or given) and kept: ``restart()`` comes back on the same
    address with the same data, and a new ``KafkaBroker`` on an existing ``work_dir`` reuses its ports.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int = 0,
        controller_port: int = 0,
        lib: Path | None = None,
        heap: str = HEAP,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.config_path = self.work_dir / "server.properties"
        self.data_dir = self.work_dir / "data"
        self.tmp_dir = self.work_dir / "tmp"
        self.log_path = self.work_dir / "broker.log"
        self.lib = lib
        self.heap = heap
        self.ready_timeout = ready_timeout
        previous = _ports_from_config(self.config_path)
        self.port = port or (previous[0] if previous else 0)
        self.controller_port = controller_port or (previous[1] if previous else 0)
        # Ports we pick ourselves are picked again when another process grabs one before the JVM binds it.
        self._pick_port = not self.port
        self._pick_controller_port = not self.controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._starts = 0

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if not self.port:
            raise RuntimeError("the broker has no port yet: call start() first")
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The JVM's PID while one was started (also after it exited, until the next start)."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def logs(self, *, tail: int = 8000, current: bool = False) -> str:
        """The last ``tail`` characters of ``broker.log`` (with ``current``: only the output of the latest start)."""
        try:
            with open(self.log_path, "rb") as f:
                if current:
                    f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-tail:]

    def is_formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Format the data dir on first use, spawn the JVM and wait until a metadata request sees 1 broker."""
        if self.is_running():
            raise RuntimeError(f"the broker is already running (PID {self.pid})")
        if self.lib is None:
            self.lib = fetch_jars()
        picking = self._starts == 0 and (self._pick_port or self._pick_controller_port)
        attempts = BIND_ATTEMPTS if picking else 1
        for attempt in range(1, attempts + 1):
            self._pick_missing_ports()
            busy = [port for port in (self.port, self.controller_port) if not port_is_free(port)]
            if busy:
                # Checked up front: the readiness probe would otherwise talk to whoever holds the port.
                if attempt < attempts:
                    self._forget_picked_ports()
                    continue
                raise BrokerStartError(f"127.0.0.1 port(s) {busy} already in use (another broker on {self.work_dir}?)")
            self._write_config()
            if not self.is_formatted():
                self._format()
            self._spawn()
            try:
                self._wait_ready()
                return
            except BrokerStartError:
                if attempt < attempts and "Address already in use" in self.logs(current=True):
                    self._forget_picked_ports()
                    continue
                raise

    def stop(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM by PID (controlled shutdown), SIGKILL after ``timeout``. Returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID: no shutdown code runs (acked records survive: they are in the page cache)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM; SIGKILL with ``hard``) and start again on the same ports and data dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------------------

    def _pick_missing_ports(self) -> None:
        if not self.port and not self.controller_port:
            self.port, self.controller_port = free_ports(2)
        elif not self.port:
            self.port = free_ports(1, exclude=(self.controller_port,))[0]
        elif not self.controller_port:
            self.controller_port = free_ports(1, exclude=(self.port,))[0]

    def _forget_picked_ports(self) -> None:
        if self._pick_port:
            self.port = 0
        if self._pick_controller_port:
            self.controller_port = 0

    def _write_config(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        text = render_server_properties(
            broker_port=self.port, controller_port=self.controller_port, data_dir=self.data_dir
        )
        self.config_path.write_text(text)

    def _java(self, *args: str, heap: str) -> list[str]:
        assert self.lib is not None
        return [
            java_executable(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Djava.io.tmpdir={self.tmp_dir}",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.work_dir}",
            "-cp",
            str(self.lib / "*"),  # the JVM expands the wildcard itself
            *args,
        ]

    def _format(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        cmd = self._java(
            "kafka.tools.StorageTool", "format", "-t", random_cluster_id(), "-c", str(self.config_path), heap="256m"
        )
        result = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False
        )
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")
            raise BrokerStartError(f"kafka.tools.StorageTool format exited with {result.returncode}:\n{output[-4000:]}")

    def _spawn(self) -> None:
        self._starts += 1
        cmd = self._java("kafka.Kafka", str(self.config_path), heap=self.heap)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n===== start #{self._starts} at {stamp}: {self.bootstrap_servers} =====\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop the JVM by its PID
            )

    def _ready(self) -> bool:
        # An accepting port first: cheap, and spares aiokafka's connection-error logs while the JVM boots.
        try:
            socket.create_connection((HOST, self.port), timeout=1).close()
        except OSError:
            return False
        if _aiokafka_available():
            try:
                return count_brokers(self.bootstrap_servers, wait_s=5.0) == 1
            except Exception:  # timed out, or not yet a full member: retry
                return False
        # Without aiokafka: the lifecycle line that kafka/log4j2.properties keeps.
        return STARTED_LINE in self.logs(current=True, tail=1_000_000)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not self.is_running():
                raise BrokerStartError(
                    f"the Kafka broker exited with {self.returncode} during startup "
                    f"(log: {self.log_path}):\n{self.logs(current=True)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"the Kafka broker did not answer metadata within {self.ready_timeout:.0f}s "
                    f"(log: {self.log_path}):\n{self.logs(current=True)}"
                )
            time.sleep(0.2)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _cmd_fetch(args: argparse.Namespace) -> int:
    try:
        if jars_present() and not args.force:
            print(f"kafka_broker: Kafka {kafka_version()} jars up to date in {lib_dir()}", file=sys.stderr)
            return 0
        print(f"kafka_broker: fetching Kafka {kafka_version()} jars into {lib_dir()} (mvn)", file=sys.stderr)
        started = time.monotonic()
        lib = fetch_jars(force=args.force)
    except ToolMissingError as exc:
        if args.optional and not _ci():
            print(f"kafka_broker: warning: {exc}; the Kafka tests will skip", file=sys.stderr)
            return 0
        print(f"kafka_broker: error: {exc}", file=sys.stderr)
        return 1
    except FetchError as exc:
        print(f"kafka_broker: error: {exc}", file=sys.stderr)
        return 1
    print(f"kafka_broker: fetched in {time.monotonic() - started:.1f}s: {lib}", file=sys.stderr)
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    port = args.port
    if port is None:
        previous = _ports_from_config(args.data_dir / "server.properties")
        port = previous[0] if previous else DEFAULT_CLI_PORT
    broker = KafkaBroker(args.data_dir, port=port)

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        raise SystemExit(0 if signum == signal.SIGINT else 128 + signum)

    # Also SIGINT: a shell starts background jobs with it ignored, and the JVM is in its own session.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        reused = broker.is_formatted()
        broker.start()
        print(
            f"kafka_broker: Kafka {kafka_version()} up (PID {broker.pid}, {'existing' if reused else 'new'} data in "
            f"{broker.data_dir}, log {broker.log_path}); Ctrl-C stops it",
            file=sys.stderr,
        )
        print(broker.bootstrap_servers, flush=True)
        while broker.is_running():
            time.sleep(0.5)
        print(f"kafka_broker: the broker exited with {broker.returncode}:\n{broker.logs()}", file=sys.stderr)
        return 1
    except (FetchError, BrokerStartError) as exc:
        print(f"kafka_broker: error: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka_broker.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="copy the broker jars from Maven Central into the cache (once)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the cache is complete")
    fetch.add_argument(
        "--optional", action="store_true", help="a missing mvn is a warning, not an error (unless CI=true)"
    )
    fetch.set_defaults(handler=_cmd_fetch)
    start = commands.add_parser("start", help="run a single-node broker in the foreground on 127.0.0.1")
    start.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help="work dir (formatted on first use)")
    start.add_argument(
        "--port",
        type=int,
        metavar="N",
        help=f"PLAINTEXT port (default: the one DIR used last time, else {DEFAULT_CLI_PORT}; 0: a free port)",
    )
    start.set_defaults(handler=_cmd_start)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

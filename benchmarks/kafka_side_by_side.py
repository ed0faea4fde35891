"""Kafka ingest side by side: Capstan and restate-server consume the same topic shape from the same broker into the
same SDK service, alternately, in one run.

    .venv/bin/python benchmarks/kafka_side_by_side.py --quick      # smoke: 2,000 records, 50 keys, 1 round (~1 min)
    nice -n 10 .venv/bin/python benchmarks/kafka_side_by_side.py --records 20000 --partitions 4 --keys 200 --rounds 2

One Kafka broker (the Maven-jar Apache Kafka of ``scripts/kafka_broker.py``) lives for the whole run; each engine run
gets a fresh engine (fresh data dir), a fresh topic and a fresh consumer group; with ``--rounds`` the engine order
alternates from round to round. Both engines get the same admin calls
(``POST /kafka-clusters``, ``POST /subscriptions`` with an explicit ``group.id``) and drive the same hypercorn-served
service (``benchmarks/kafka_sink_app.py``, registered with ``use_http_11``) whose handler is
``KafkaSink/<key>/take``: a virtual object, one state get + set.

Per engine run:

1. **Throughput (pre-filled topic).** ``--records`` records (keys ``k0..k{keys-1}`` round-robin) are produced before
   the subscription exists; the clock starts when ``POST /subscriptions`` is sent. *Durable* = the subscription's
   consumer group has committed offsets up to the end of every partition (both engines commit only after the
   invocations are durable: Capstan after its log append is fsynced and applied, restate-server after the Bifrost
   append; restate commits stored offsets on librdkafka's auto-commit timer, so its subscription gets
   ``auto.commit.interval.ms=100`` instead of the 5 s default). *Completed* = the service has seen every record's
   handler body finish. records/s = records / (that time - subscription time); start-up is subscription to first
   handler execution (group join, first fetch), included in both rates (the JSON also has both rates from the first
   handler execution, and ``progress``: committed and completed counts about once a second).
2. **Latency (steady producer).** With the subscription caught up, ``--rate`` records/s are produced for
   ``--latency-seconds``; each record carries its send time and the handler notes ``now - ts`` on its first
   execution. p50/p99 are over those records only (phase 1 latencies are queueing behind the backlog).
3. **Exactly once.** The sum of the per-key counters (read through the engine's ingress) must equal all records
   produced.

CPU ms/record (``/proc/<pid>/stat`` utime + stime, all threads) covers phase 1 for the engine, the hypercorn service
and the broker JVM. Needs root for the loopback-only network namespace (restate-server checks for releases at
start-up), as ``side_by_side.py``; ``--no-netns`` skips it. Writes ``benchmarks/results/kafka-<timestamp>.json`` and
``.md`` and prints the markdown table. Not part of pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from benchmarks import restate_server
from benchmarks.kafka_sink_app import STATS_PATH
from benchmarks.side_by_side import (
    CLK_TCK,
    DEFAULT_CACHE,
    NETNS_ENV,
    RESULTS_DIR,
    RunningEngine,
    _fmt,
    cpu_ticks,
    exit_cleanly_on_sigterm,
    percentile,
    reexec_in_netns,
)
from ingress_kafka.testing import _repo_broker
from tests.services.fixtures import DeploymentProcess, start_deployment

APP_SPEC = "benchmarks.kafka_sink_app:app"
ENGINES = ("capstan", "restate")
CLUSTER = "bench"
SINK = "service://KafkaSink/take"
POLL_S = 0.1


# ----------------------------------------------------------------------------------------------------------------
# One engine run
# ----------------------------------------------------------------------------------------------------------------


class Run:
    """One engine, one topic, one consumer group: the three phases of the module docstring."""

    def __init__(
        self, engine: RunningEngine, service: DeploymentProcess, *, bootstrap: str, broker_pid: int | None, tag: str
    ) -> None:
        self.engine = engine
        self.service = service
        self.bootstrap = bootstrap
        self.broker_pid = broker_pid
        self.topic = f"kbench-{tag}-{uuid.uuid4().hex[:8]}"
        self.group = f"{self.topic}-group"
        self.out: dict[str, Any] = {"topic": self.topic}  # filled as the phases go (kept if one fails)
        self.http: aiohttp.ClientSession
        self.admin: AIOKafkaAdminClient

    async def measure(self, args: argparse.Namespace) -> None:
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()
        try:
            async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=60)) as http:
                self.http = http
                await self._measure(args, self.out)
        finally:
            await self.admin.close()

    async def _measure(self, args: argparse.Namespace, out: dict[str, Any]) -> None:
        n = args.records
        await self.admin.create_topics([NewTopic(self.topic, num_partitions=args.partitions, replication_factor=1)])
        t0 = time.perf_counter()
        await self._produce(range(n), keys=args.keys, rate=None)
        out["prefill_s"] = round(time.perf_counter() - t0, 2)
        await self._post("/kafka-clusters", {"name": CLUSTER, "properties": {"bootstrap.servers": self.bootstrap}})
        options = {"group.id": self.group, "auto.offset.reset": "earliest"}
        if self.engine.kind == "restate":
            options["auto.commit.interval.ms"] = "100"  # see the module docstring

        # -- phase 1: drain the pre-filled topic
        pids = {"engine": self.engine.pid, "service": self.service.pid, "broker": self.broker_pid}
        cpu0 = {name: cpu_ticks(pid) for name, pid in pids.items()}
        t_sub = time.time()
        sub = await self._post(
            "/subscriptions", {"source": f"kafka://{CLUSTER}/{self.topic}", "sink": SINK, "options": options}
        )
        t_durable = t_completed = None
        stats: dict[str, Any] = {}
        progress: list[tuple[float, int, int]] = out.setdefault("progress", [])
        deadline = time.monotonic() + args.timeout
        while t_durable is None or t_completed is None:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"phase 1 not done after {args.timeout:.0f}s: committed {await self._committed()}, service {stats}"
                )
            await asyncio.sleep(POLL_S)
            now = time.time()
            committed = await self._committed()
            if t_durable is None and committed >= n:
                t_durable = now
            stats = await self._stats()
            if t_completed is None and stats["completed"] >= n:
                t_completed = stats["last_completed_at"]
            if now - t_sub >= len(progress):  # about once a second: (s, committed, completed), to spot slow-downs
                progress.append((round(now - t_sub, 1), committed, stats["completed"]))
        cpu1 = {name: cpu_ticks(pid) for name, pid in pids.items()}
        if self.engine.kind == "capstan":  # its consumer's own counters (backpressure pauses), for the record
            async with self.http.get(f"{self.engine.admin_url}/subscriptions/{sub['id']}") as resp:
                status = (await resp.json()).get("status") or {}
            out["capstan_consumer"] = {k: status.get(k) for k in ("ingested", "paused_times")}
        for name in pids:
            c0, c1 = cpu0[name], cpu1[name]
            out[f"{name}_cpu_ms_per_record"] = (
                None if c0 is None or c1 is None else round((c1 - c0) * 1000 / CLK_TCK / n, 3)
            )
        out["startup_s"] = round(stats["first_seen_at"] - t_sub, 3)
        out["durable_s"] = round(t_durable - t_sub, 3)
        out["completed_s"] = round(t_completed - t_sub, 3)
        out["records_per_s_durable"] = round(n / (t_durable - t_sub), 1)
        out["records_per_s_completed"] = round(n / (t_completed - t_sub), 1)
        # The same, with the clock started at the first handler execution instead (start-up excluded).
        out["records_per_s_durable_after_startup"] = round(n / max(1e-3, t_durable - stats["first_seen_at"]), 1)
        out["records_per_s_completed_after_startup"] = round(n / (t_completed - stats["first_seen_at"]), 1)
        backlog = sorted(ms for i, ms in await self._latencies() if i < n)
        out["backlog_latency_ms"] = {"p50": _round(percentile(backlog, 0.5)), "max": _round(backlog[-1])}

        # -- phase 2: steady producer at --rate
        m = max(1, round(args.rate * args.latency_seconds))
        await self._produce(range(n, n + m), keys=args.keys, rate=args.rate)
        deadline = time.monotonic() + args.latency_seconds + 120
        while (await self._stats())["completed"] < n + m:
            if time.monotonic() > deadline:
                raise TimeoutError(f"phase 2: {n + m} records not completed within 120 s after the last produce")
            await asyncio.sleep(POLL_S)
        steady = sorted(ms for i, ms in await self._latencies() if i >= n)
        out["latency"] = {
            "rate": args.rate,
            "records": m,
            "p50_ms": _round(percentile(steady, 0.5)),
            "p90_ms": _round(percentile(steady, 0.9)),
            "p99_ms": _round(percentile(steady, 0.99)),
            "max_ms": _round(steady[-1]),
        }

        # -- phase 3: every record counted exactly once in the object state
        out["counter_sum"] = await self._counter_sum(args.keys, expected=n + m)
        out["exactly_once"] = out["counter_sum"] == n + m

    async def _produce(self, seq: range, *, keys: int, rate: float | None) -> None:
        # Pre-fill: batched (linger) for speed. Steady: no linger, each record leaves at its scheduled time.
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0 if rate else 20)
        await producer.start()
        try:
            futures = []
            start = time.perf_counter()
            for k, i in enumerate(seq):
                if rate:
                    delay = start + k / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                value = json.dumps({"run": self.topic, "i": i, "ts": time.time() * 1000}).encode()
                futures.append(await producer.send(self.topic, key=f"k{i % keys}".encode(), value=value))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def _committed(self) -> int:
        try:
            offsets = await self.admin.list_consumer_group_offsets(self.group)
        except KafkaError as exc:  # e.g. the group coordinator of a fresh broker still loading
            if not exc.retriable:
                raise
            return 0
        return sum(max(0, meta.offset) for tp, meta in offsets.items() if tp.topic == self.topic)

    async def _stats(self) -> dict[str, Any]:
        async with self.http.get(f"{self.service.url}{STATS_PATH}", params={"run": self.topic}) as resp:
            return dict(await resp.json())

    async def _latencies(self) -> list[tuple[int, float]]:
        params = {"run": self.topic, "latencies": "1"}
        async with self.http.get(f"{self.service.url}{STATS_PATH}", params=params) as resp:
            return [(int(i), float(ms)) for i, ms in (await resp.json())["latencies"]]

    async def _counter_sum(self, keys: int, *, expected: int) -> int:
        # The last completions may still be committing: read again for a few seconds before giving up.
        total = -1
        for _ in range(20):
            total = 0
            for k in range(keys):
                async with self.http.post(
                    f"{self.engine.ingress_url}/KafkaSink/k{k}/count", skip_auto_headers=["Content-Type"]
                ) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"KafkaSink/k{k}/count: {resp.status} {text}")
                    total += int(text)
            if total == expected:
                break
            await asyncio.sleep(0.5)
        return total

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(self.engine.admin_url + path, json=body) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise RuntimeError(f"POST {path}: {resp.status} {text}")
            return json.loads(text) if text else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _ratio(row: dict[str, Any], base: dict[str, Any] | None, path: tuple[str, ...]) -> str:
    if base is None or row is base or "failed" in row or "failed" in base:
        return "-"
    a: Any = row
    b: Any = base
    for key in path:
        a, b = a.get(key) if a else None, b.get(key) if b else None
    return f"{a / b:.2f}x" if a is not None and b else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | engine | records | partitions | keys | start-up s | rec/s durable | rec/s completed "
        "| latency rate/s | p50 ms | p99 ms | engine CPU ms/rec | service CPU ms/rec | broker CPU ms/rec "
        "| exactly once | durable vs restate | completed vs restate | p50 vs restate | p99 vs restate |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    bases = {r["round"]: r for r in rows if r["engine"] == "restate"}
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['round']} | {r['engine']} | failed: {r['failed'][:200]} |")
            continue
        base = bases.get(r["round"])
        lat = r["latency"]
        cells = [
            r["round"],
            r["engine"],
            r["records"],
            r["partitions"],
            r["keys"],
            r["startup_s"],
            r["records_per_s_durable"],
            r["records_per_s_completed"],
            lat["rate"],
            lat["p50_ms"],
            lat["p99_ms"],
            r["engine_cpu_ms_per_record"],
            r["service_cpu_ms_per_record"],
            r["broker_cpu_ms_per_record"],
            "yes" if r["exactly_once"] else f"no ({r['counter_sum']})",
            _ratio(r, base, ("records_per_s_durable",)),
            _ratio(r, base, ("records_per_s_completed",)),
            _ratio(r, base, ("latency", "p50_ms")),
            _ratio(r, base, ("latency", "p99_ms")),
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=None, help="pre-filled records per run (default 20000)")
    p.add_argument("--partitions", type=int, default=4, help="Kafka partitions of each topic")
    p.add_argument("--keys", type=int, default=None, help="distinct record keys = virtual objects (default 200)")
    p.add_argument("--rate", type=float, default=None, help="records/s of the latency phase (default 100)")
    p.add_argument("--latency-seconds", type=float, default=None, help="length of the latency phase (default 20)")
    p.add_argument("--rounds", type=int, default=1, help="engine runs per engine; the order alternates by round")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma separated, from {','.join(ENGINES)}")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for phase 1 of one run")
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 records, 50 keys, 50 rec/s for 5 s")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where npm installs restate-server")
    p.add_argument("--data-root", type=Path, default=None, help="parent of data dirs and the broker (default: /tmp)")
    p.add_argument("--no-netns", action="store_true", help="do not re-exec inside a loopback-only netns")
    args = p.parse_args(argv)
    defaults = (2000, 50, 50.0, 5.0) if args.quick else (20000, 200, 100.0, 20.0)
    for name, value in zip(("records", "keys", "rate", "latency_seconds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.engines = [e for e in args.engines.split(",") if e]
    for e in args.engines:
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}")
    return args


def start_broker(work: Path) -> Any:
    impl = _repo_broker()
    impl.fetch_jars()
    broker = impl.KafkaBroker(work / "kafka")
    broker.start()
    return broker


async def warm_up_broker(bootstrap: str) -> None:
    """One consumer group's first commit on a fresh broker creates ``__consumer_offsets`` (50 partitions), which
    takes a second or more: done here, so that the first engine measured does not pay for it."""
    topic = f"kbench-warmup-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{topic}-group", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while not await consumer.getmany(timeout_ms=1000):
            pass
        await consumer.commit()
    finally:
        await consumer.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    binary: Path | None = None
    if "restate" in args.engines:
        binary = restate_server.ensure_installed(args.cache_dir)  # npm needs the network: before the namespace
    if not args.no_netns and os.environ.get(NETNS_ENV) != "1":
        reexec_in_netns(argv, Path(__file__))

    data_root = Path(tempfile.mkdtemp(prefix="capstan-kbench-", dir=args.data_root))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    load_before = os.getloadavg()
    services: dict[str, DeploymentProcess] = {}
    rows: list[dict[str, Any]] = []
    broker = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = start_broker(data_root)
            bootstrap = broker.bootstrap_servers
        asyncio.run(warm_up_broker(bootstrap))
        for kind in args.engines:
            services[kind] = start_deployment(APP_SPEC, log_path=data_root / f"service-{kind}.log")
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(args.engines)
            for kind in args.engines[shift:] + args.engines[:shift]:
                row: dict[str, Any] = {
                    "round": rnd,
                    "engine": kind,
                    "records": args.records,
                    "partitions": args.partitions,
                    "keys": args.keys,
                }
                engine = run = None
                try:
                    engine = RunningEngine(kind, data_root, binary=binary, service=services[kind])
                    engine.wait_invocable()
                    run = Run(
                        engine,
                        services[kind],
                        bootstrap=bootstrap,
                        broker_pid=broker and broker.pid,
                        tag=f"{kind}{rnd}",
                    )
                    asyncio.run(run.measure(args))
                except Exception as exc:  # one broken engine must not lose the other rows
                    row["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
                    if engine is not None:
                        row["engine_log_tail"] = engine.logs()[-2000:]
                finally:
                    if run is not None:
                        row.update(run.out)
                    if engine is not None:
                        engine.stop()
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        for service in services.values():
            service.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(data_root, ignore_errors=True)

    rows.sort(key=lambda r: (r["round"], args.engines.index(r["engine"])))
    summary = _summary(rows, args.engines)
    meta = {
        "timestamp": stamp,
        "scenario": "kafka_side_by_side",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "restate_server_version": restate_server.VERSION if binary else None,
        "netns": os.environ.get(NETNS_ENV) == "1",
        "loadavg_before_after": [load_before, os.getloadavg()],  # other work on the machine skews every number
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    table = markdown(rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"kafka-{stamp}.json").write_text(json.dumps({**meta, "summary": summary, "runs": rows}, indent=2))
    (RESULTS_DIR / f"kafka-{stamp}.md").write_text(table)
    print(table)
    print(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS_DIR / f'kafka-{stamp}.json'} and .md", file=sys.stderr)
    return 0 if not any("failed" in r for r in rows) else 1


def _summary(rows: list[dict[str, Any]], engines: list[str]) -> dict[str, Any]:
    """Median over rounds per engine, and Capstan/restate ratios of the medians."""
    out: dict[str, Any] = {}
    for kind in engines:
        ok = [r for r in rows if r["engine"] == kind and "failed" not in r]
        if not ok:
            continue
        out[kind] = {
            "runs": len(ok),
            "records_per_s_durable": statistics.median(r["records_per_s_durable"] for r in ok),
            "records_per_s_completed": statistics.median(r["records_per_s_completed"] for r in ok),
            "p50_ms": statistics.median(r["latency"]["p50_ms"] for r in ok),
            "p99_ms": statistics.median(r["latency"]["p99_ms"] for r in ok),
            "engine_cpu_ms_per_record": statistics.median(r["engine_cpu_ms_per_record"] for r in ok),
        }
    if "capstan" in out and "restate" in out:
        c, r = out["capstan"], out["restate"]
        out["capstan_vs_restate"] = {k: round(c[k] / r[k], 2) for k in c if k != "runs" and r[k]}
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Capstan and restate-server side by side: same SDK service, same load generator, same run, alternating.

    .venv/bin/python benchmarks/side_by_side.py --quick          # smoke: 2 s cells, c=1,8, noop + steps3
    .venv/bin/python benchmarks/side_by_side.py                  # all workloads, c=1,8,32,128, 10 s cells

Engines (``--engines``):

- ``capstan``: ``python -m engine serve`` (fsync on, its default), the SDK service behind hypercorn, registered
  with ``use_http_11=true`` (HTTP/1.1 request-response).
- ``restate``: restate-server 1.7.12 from npm (default durability), the same hypercorn service, registered with
  ``use_http_11=true``.
- ``restate-h2``: the same restate-server and hypercorn service, registered without ``use_http_11``: HTTP/2 with
  prior knowledge, full duplex (bidi) streams, restate-server's best mode for this service.
- ``capstan-asgi``: ``capstan serve --app benchmarks.bench_app:app`` (the service mounted in-process; its CPU is
  inside the engine's). Its ratio column compares it with the better of the two restate rows.
- ``capstan-asgi-procs`` (only when named in ``--engines``): the same with ``--invoker-processes 2``, the attempts
  and the app in two child processes (their CPU counts as the engine's).

Every cell (workload x concurrency) starts each engine fresh with a fresh data dir, one engine at a time, in an
order that rotates from cell to cell; one hypercorn service per HTTP engine lives for the whole run. A cell is
``--warmup`` seconds of load (discarded), then ``--duration`` seconds measured: N aiohttp workers in this process
send requests back to back. CPU ms per request comes from utime+stime in ``/proc/<pid>/stat`` of the engine and of
the hypercorn process over the measured window; the load generator's own CPU (this process) is reported too,
since it takes its share of the same cores.

restate-server checks for new releases at start-up, so the script re-executes itself inside a network namespace
that has only loopback (``unshare -n``, needs root) after installing restate-server with npm; Capstan, the services
and the load generator all run in that namespace too. ``--no-netns`` skips that.

Writes ``benchmarks/results/<timestamp>.json`` and ``.md`` and prints the markdown table. Not part of pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp

from benchmarks import restate_server
from tests.e2e.procs import CapstanProcess, free_port
from tests.services.fixtures import DeploymentProcess, start_deployment

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "restate-server"
APP_SPEC = "benchmarks.bench_app:app"
NETNS_ENV = "CAPSTAN_BENCH_NETNS"
CLK_TCK = os.sysconf("SC_CLK_TCK")
COUNTER_KEYS = 1000

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    path: str  # "{key}" is replaced per request
    body: bytes


WORKLOADS = {
    "noop": Workload(name="noop", path="/Noop/echo", body=b'"x"'),
    "counter": Workload(name="counter", path="/Counter/{key}/add", body=b"1"),
    "steps1": Workload(name="steps1", path="/Steps/one", body=b'"x"'),
    "steps3": Workload(name="steps3", path="/Steps/three", body=b'"x"'),
    "steps9": Workload(name="steps9", path="/Steps/nine", body=b'"x"'),
}
ENGINES = ("capstan", "restate", "restate-h2", "capstan-asgi")
# Not in the default set: capstan-asgi with the attempts and the app in two invoker processes.
EXTRA_ENGINES = ("capstan-asgi-procs",)
ASGI_KINDS = ("capstan-asgi", "capstan-asgi-procs")
RESTATE_KINDS = ("restate", "restate-h2")


# ----------------------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------------------


def cpu_ticks(pid: int | None) -> int | None:
    """CPU time (utime + stime, all threads) of the process and of its live child processes (Capstan's Kafka
    worker is a child of the engine: its CPU is the engine's)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        # Field 2 (comm) may contain spaces; everything after the last ')' is space separated from field 3.
        fields = f.read().rsplit(")", 1)[1].split()
    total = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    for child in child_pids(pid):
        try:
            total += cpu_ticks(child) or 0
        except FileNotFoundError:  # ended meanwhile
            pass
    return total


def child_pids(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
    return found


def post_json(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with _OPENER.open(req, timeout=30) as resp:
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST {url}: {resp.status} {resp.read()!r}")


class RunningEngine:
    """One engine process for one cell: ``ingress_url``, ``pid`` and ``stop()``."""

    def __init__(self, kind: str, data_root: Path, *, binary: Path | None, service: DeploymentProcess | None) -> None:
        self.kind = kind
        self.service = service
        self._capstan: CapstanProcess | None = None
        self._restate: restate_server.RestateServer | None = None
        data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=data_root))
        if kind in RESTATE_KINDS:
            assert binary is not None and service is not None
            self._restate = restate_server.RestateServer(
                binary, data_dir, ingress_port=free_port(), admin_port=free_port(), fabric_port=free_port()
            )
            self._restate.start()
            self._restate.register(service.url, use_http_11=kind == "restate")
            self.ingress_url = self._restate.ingress_url
            self.admin_url = self._restate.admin_url
            self.pid = self._restate.pid
        else:
            # the product default (one partition per process); the test helper would otherwise start four
            extra = ["--partitions", "1", *(["--app", APP_SPEC] if kind in ASGI_KINDS else [])]
            if kind == "capstan-asgi-procs":
                extra += ["--invoker-processes", "2"]
            self._capstan = CapstanProcess(data_dir, extra_args=extra)
            self._capstan.start()
            if kind == "capstan":
                assert service is not None
                post_json(f"{self._capstan.admin_url}/deployments", {"uri": service.url, "use_http_11": True})
            self.ingress_url = self._capstan.ingress_url
            self.admin_url = self._capstan.admin_url
            assert self._capstan.proc is not None
            self.pid = self._capstan.proc.pid
        self._data_dir = data_dir

    def wait_invocable(self, timeout: float = 60.0) -> None:
        """Until ``Noop.echo`` answers 200 (restate-server may still be bringing partitions up after /health)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"{self.ingress_url}/Noop/echo", data=b'"ready"', headers={"content-type": "application/json"}
                )
                with _OPENER.open(req, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind}: Noop.echo not answering after {timeout:.0f}s: {last}\n{self.logs()}")

    def logs(self) -> str:
        if self._restate is not None:
            return self._restate.logs()
        assert self._capstan is not None
        return self._capstan.logs()

    def stop(self) -> None:
        if self._restate is not None:
            self._restate.stop()
        if self._capstan is not None:
            self._capstan.stop()
            with contextlib.suppress(FileNotFoundError):
                self._capstan.log_path.unlink()
        shutil.rmtree(self._data_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Load generator
# ----------------------------------------------------------------------------------------------------------------


async def drive(
    base_url: str,
    workload: Workload,
    *,
    concurrency: int,
    seconds: float,
    record: bool,
    keys: int = COUNTER_KEYS,
    max_requests: int | None = None,
) -> tuple[list[float], int, list[str], float]:
    """``concurrency`` workers send requests back to back for ``seconds`` (or until ``max_requests`` were sent);
    returns latencies (s), errors, up to 5 distinct error samples, and the elapsed wall time. Request ``i``
    (from 1) goes to key ``k{i % keys}``."""
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    seq = 0
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    stop_at = started + seconds

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:

        async def worker() -> None:
            nonlocal seq, errors
            while time.perf_counter() < stop_at and (max_requests is None or seq < max_requests):
                seq += 1
                url = base_url + workload.path.format(key=f"k{seq % keys}")
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=workload.body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                        problem = "" if ok else f"HTTP {resp.status}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    ok, problem = False, repr(exc)[:200]
                if not record:
                    continue
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                    if len(samples) < 5 and problem not in samples:
                        samples.append(problem)

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return latencies, errors, samples, time.perf_counter() - started


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure_cell(
    engine: RunningEngine, workload: Workload, *, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    asyncio.run(drive(engine.ingress_url, workload, concurrency=concurrency, seconds=warmup, record=False))
    service_pid = engine.service.pid if engine.service is not None else None
    engine_cpu0, service_cpu0 = cpu_ticks(engine.pid), cpu_ticks(service_pid)
    client_cpu0 = time.process_time()  # this process only: the load generator shares the cores with the engines
    latencies, errors, samples, elapsed = asyncio.run(
        drive(engine.ingress_url, workload, concurrency=concurrency, seconds=duration, record=True)
    )
    client_cpu1 = time.process_time()
    engine_cpu1, service_cpu1 = cpu_ticks(engine.pid), cpu_ticks(service_pid)
    latencies.sort()
    ok = len(latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    def cpu_per_req(t0: int | None, t1: int | None) -> float | None:
        if t0 is None or t1 is None or ok == 0:
            return None
        return round((t1 - t0) * 1000 / CLK_TCK / ok, 3)

    return {
        "requests_ok": ok,
        "errors": errors,
        "error_samples": samples,
        "seconds": round(elapsed, 3),
        "throughput": round(ok / elapsed, 1),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p90_ms": ms(percentile(latencies, 0.90)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "engine_cpu_ms_per_req": cpu_per_req(engine_cpu0, engine_cpu1),
        "service_cpu_ms_per_req": cpu_per_req(service_cpu0, service_cpu1),
        "client_cpu_ms_per_req": round((client_cpu1 - client_cpu0) * 1000 / ok, 3) if ok else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def markdown(results: list[dict[str, Any]]) -> str:
    by_cell = {(r["workload"], r["concurrency"], r["engine"]): r for r in results}
    lines = [
        "| workload | c | engine | req/s | p50 ms | p90 ms | p99 ms | errors | engine CPU ms/req | service CPU ms/req "
        "| client CPU ms/req | req/s vs restate | p99 vs restate |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = by_cell.get((r["workload"], r["concurrency"], "restate"))
        if r["engine"] in ASGI_KINDS:  # against restate's best mode
            bases = [by_cell.get((r["workload"], r["concurrency"], kind)) for kind in RESTATE_KINDS]
            measured = [b for b in bases if b is not None and b.get("throughput")]
            base = max(measured, key=lambda b: b["throughput"]) if measured else None
        thr_ratio = p99_ratio = None
        if base is not None and r["engine"] not in RESTATE_KINDS and "throughput" in r and "throughput" in base:
            if base["throughput"]:
                thr_ratio = round(r["throughput"] / base["throughput"], 2)
            if base.get("p99_ms") and r.get("p99_ms") is not None:
                p99_ratio = round(r["p99_ms"] / base["p99_ms"], 2)
        if "failed" in r:
            lines.append(f"| {r['workload']} | {r['concurrency']} | {r['engine']} | failed: {r['failed'][:80]} |")
            continue
        cells = [
            r["workload"],
            r["concurrency"],
            r["engine"],
            r["throughput"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["errors"],
            r["engine_cpu_ms_per_req"],
            r["service_cpu_ms_per_req"] if r["engine"] not in ASGI_KINDS else "(in engine)",
            r.get("client_cpu_ms_per_req"),
            f"{thr_ratio:.2f}x" if thr_ratio is not None else "-",
            f"{p99_ratio:.2f}x" if p99_ratio is not None else "-",
        ]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default=None, help=f"comma separated, from {','.join(WORKLOADS)} (default: all)")
    p.add_argument("--concurrency", default=None, help="comma separated worker counts (default: 1,8,32,128)")
    p.add_argument("--duration", type=float, default=None, help="measured seconds per cell (default: 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded seconds of load before each measurement")
    p.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma separated, from {','.join(ENGINES + EXTRA_ENGINES)}"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: duration 2, concurrency 1,8, noop,steps3 (flags given win)"
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where npm installs restate-server")
    p.add_argument("--data-root", type=Path, default=None, help="parent of the engines' data dirs (default: /tmp)")
    p.add_argument("--no-netns", action="store_true", help="do not re-exec inside a loopback-only netns")
    args = p.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 2.0 if quick else 10.0
    if args.concurrency is None:
        args.concurrency = "1,8" if quick else "1,8,32,128"
    if args.workloads is None:
        args.workloads = "noop,steps3" if quick else ",".join(WORKLOADS)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.engines = [e for e in args.engines.split(",") if e]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    for e in args.engines:
        if e not in ENGINES + EXTRA_ENGINES:
            p.error(f"unknown engine {e!r}")
    return args


def reexec_in_netns(argv: list[str], script_path: Path = Path(__file__)) -> None:
    """Replace this process with ``script_path`` (default: this script) inside a new network namespace where only
    ``lo`` is up."""
    env = {**os.environ, NETNS_ENV: "1"}
    script = 'ip link set lo up && exec "$0" "$@"'
    cmd = ["unshare", "-n", "sh", "-c", script, sys.executable, str(script_path.resolve()), *argv]
    sys.stdout.flush()
    os.execvpe("unshare", cmd, env)


def exit_cleanly_on_sigterm() -> None:
    """``kill <pid>`` of a benchmark runs its ``finally`` blocks, which stop the engines and services it started
    (the default SIGTERM action ends the interpreter at once and leaves them running)."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    binary: Path | None = None
    if any(kind in args.engines for kind in RESTATE_KINDS):
        # npm needs the network: install before entering the namespace.
        binary = restate_server.ensure_installed(args.cache_dir)
    if not args.no_netns and os.environ.get(NETNS_ENV) != "1":
        reexec_in_netns(argv)

    data_root = Path(tempfile.mkdtemp(prefix="capstan-bench-", dir=args.data_root))
    services: dict[str, DeploymentProcess] = {}
    results: list[dict[str, Any]] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    try:
        for kind in ("capstan", *RESTATE_KINDS):
            if kind in args.engines:
                services[kind] = start_deployment(APP_SPEC, log_path=data_root / f"service-{kind}.log")
        cell = 0
        for workload_name in args.workloads:
            workload = WORKLOADS[workload_name]
            for concurrency in args.concurrency:
                # Rotate the order so no engine always runs first (page cache, CPU frequency, disk state).
                order = args.engines[cell % len(args.engines) :] + args.engines[: cell % len(args.engines)]
                cell += 1
                for kind in order:
                    row: dict[str, Any] = {"workload": workload_name, "concurrency": concurrency, "engine": kind}
                    engine = None
                    try:
                        engine = RunningEngine(kind, data_root, binary=binary, service=services.get(kind))
                        engine.wait_invocable()
                        row.update(
                            measure_cell(
                                engine, workload, concurrency=concurrency, warmup=args.warmup, duration=args.duration
                            )
                        )
                    except Exception as exc:  # one broken engine must not lose the other rows
                        row["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
                    finally:
                        if engine is not None:
                            engine.stop()
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    results.append(row)
    finally:
        for service in services.values():
            service.stop()
        shutil.rmtree(data_root, ignore_errors=True)

    # Sort for the table: workload, concurrency, then engines in the order given.
    results.sort(key=lambda r: (args.workloads.index(r["workload"]), r["concurrency"], args.engines.index(r["engine"])))
    meta = {
        "timestamp": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "restate_server_version": restate_server.VERSION if binary else None,
        "netns": os.environ.get(NETNS_ENV) == "1",
        "args": {
            "workloads": args.workloads,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "warmup": args.warmup,
            "engines": args.engines,
        },
        "lifecycle": "engine fresh per cell (fresh data dir), one at a time; one hypercorn service per HTTP engine",
    }
    table = markdown(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    (RESULTS_DIR / f"{stamp}.md").write_text(table)
    print(table)
    print(f"wrote {RESULTS_DIR / (stamp + '.json')} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

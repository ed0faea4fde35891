"""Capstan's memory: RSS over a long run, and RSS with state for a million virtual-object keys.

    .venv/bin/python benchmarks/memory.py --quick                 # smoke: 20 s soak, 20,000 keys (~1 min)
    nice -n 10 .venv/bin/python benchmarks/memory.py              # 300 s soak at c=32, then 1,000,000 keys
    .venv/bin/python benchmarks/memory.py --parts soak --mode asgi --soak-seconds 120

Two parts (``--parts``, default both), each on a fresh engine with a fresh data dir:

- ``soak``: ``Counter.add`` over 1,000 keys at concurrency ``--concurrency`` (32) for ``--soak-seconds`` (300),
  the engine's RSS (``VmRSS`` in ``/proc/<pid>/status``, its child process, the Kafka worker, included) sampled
  every ``--sample-interval`` seconds. After ``--warmup-seconds`` (60) the first and the last ``--window-seconds``
  (60) of samples are averaged; the target is last / first <= 1.2 (RSS flat within 20%).
- ``keys``: ``Counter.add`` once for each of ``--keys`` (1,000,000) distinct keys ``k0..k{N-1}`` (so each key gets
  one state entry, written by a real invocation through the engine), ``--fill-concurrency`` (64) request-response
  calls in flight; then RSS and the data dir's size on disk, and RSS again after ``--idle-seconds`` (60) without
  load. The target is RSS < 2 GiB.

``--mode http`` (default) is ``capstan serve`` with the SDK service (``benchmarks/bench_app.py``) behind hypercorn,
registered with ``use_http_11=true``, as in ``side_by_side.py``; ``--mode asgi`` mounts it in-process
(``capstan serve --app benchmarks.bench_app:app``), so the engine's RSS then includes the SDK. ``--fill-mode``
picks the mode of the ``keys`` part separately (default asgi: no socket hop, the fastest honest path). The engine
runs with its defaults (one partition, fsync on).

Prints JSON and writes ``benchmarks/results/memory-<timestamp>.json`` (git-ignored). Not part of pytest.
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
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.side_by_side import (
    APP_SPEC,
    RESULTS_DIR,
    WORKLOADS,
    RunningEngine,
    child_pids,
    cpu_ticks,
    drive,
    exit_cleanly_on_sigterm,
)
from tests.services.fixtures import DeploymentProcess, start_deployment

GiB = 1024**3
RSS_GROWTH_LIMIT = 1.2
RSS_KEYS_LIMIT_BYTES = 2 * GiB
COUNTER = WORKLOADS["counter"]
ENGINE_KIND = {"http": "capstan", "asgi": "capstan-asgi"}


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of ``pid`` and its live child processes (Capstan's Kafka worker is the
    engine's child), in bytes (``/proc/<pid>/status`` reports kB)."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "RssFile"}
    out: dict[str, int] = dict.fromkeys(wanted, 0)
    for one in (pid, *child_pids(pid)):
        try:
            with open(f"/proc/{one}/status") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name in wanted:
                        out[name] += int(rest.split()[0]) * 1024
        except FileNotFoundError:
            if one == pid:
                raise
    return out


def dir_size(path: Path) -> dict[str, int]:
    """Bytes on disk (allocated blocks) and apparent bytes of everything under ``path``."""
    on_disk = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except FileNotFoundError:  # RocksDB compaction removes files while we walk
                continue
            on_disk += st.st_blocks * 512
            apparent += st.st_size
    return {"on_disk_bytes": on_disk, "apparent_bytes": apparent}


def engine_data_dir(data_root: Path, kind: str) -> Path:
    """The one data dir ``RunningEngine`` made under ``data_root`` (``mkdtemp(prefix=f"{kind}-")``)."""
    (found,) = [p for p in data_root.iterdir() if p.is_dir() and p.name.startswith(f"{kind}-")]
    return found


def spot_check_counts(ingress_url: str, keys: int, *, samples: int = 100) -> dict[str, int]:
    """``Counter.get`` on ``samples`` keys spread over ``k0..k{keys-1}``: each must answer 1 (one ``add`` each)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    good = 0
    for i in range(samples):
        req = urllib.request.Request(f"{ingress_url}/Counter/k{i * keys // samples}/get", data=b"", method="POST")
        with opener.open(req, timeout=30) as resp:
            good += json.loads(resp.read()) == 1
    return {"checked": samples, "equal_to_1": good}


def rocksdb_properties(path: Path) -> dict[str, int | None]:
    """A few size properties of the engine's RocksDB, read through a read-only handle opened beside it (it sees
    the SST files, not the engine's memtable or cache): how big the tables are and how much memory their index and
    filter blocks take outside the block cache (``estimate-table-readers-mem``)."""
    from rocksdict import AccessType, Options, Rdict

    names = ("estimate-table-readers-mem", "total-sst-files-size", "estimate-num-keys")
    try:  # a diagnostic: never lose the measured numbers over it (e.g. a compaction removing files meanwhile)
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception as exc:
        print(f"cannot open {path} read-only: {exc}", file=sys.stderr)
        return dict.fromkeys(names)
    try:
        return {name: db.property_int_value(f"rocksdb.{name}") for name in names}
    finally:
        db.close()


class RssSampler:
    """Samples the engine's memory every ``interval`` seconds while a load runs in the same event loop."""

    def __init__(self, pid: int, *, interval: float, label: str, data_dir: Path | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.label = label
        self.data_dir = data_dir
        self.samples: list[dict[str, float]] = []
        self._t0 = time.monotonic()

    def sample(self) -> dict[str, float]:
        row: dict[str, float] = {"t": round(time.monotonic() - self._t0, 1), **proc_memory(self.pid)}
        self.samples.append(row)
        return row

    async def run(self) -> None:
        while True:
            row = self.sample()
            extra = ""
            if self.data_dir is not None:
                extra = f" data dir {dir_size(self.data_dir)['on_disk_bytes'] / 2**20:.0f} MiB"
            print(f"[{self.label}] t={row['t']:.0f}s rss {row['VmRSS'] / 2**20:.1f} MiB{extra}", file=sys.stderr)
            await asyncio.sleep(self.interval)


async def _with_sampler(sampler: RssSampler, load: Any) -> Any:
    task = asyncio.create_task(sampler.run())
    try:
        return await load
    finally:
        task.cancel()
        sampler.sample()


def mib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def _mean(rows: list[dict[str, float]]) -> float | None:
    return statistics.fmean(r["VmRSS"] for r in rows) if rows else None


def summarize_soak(samples: list[dict[str, float]], *, warmup: float, window: float, seconds: float) -> dict[str, Any]:
    """RSS after the warm-up: min/max, the mean of the first and the last ``window`` seconds, and their ratio."""
    steady = [r for r in samples if r["t"] >= warmup]
    first = [r for r in steady if r["t"] < warmup + window]
    last = [r for r in steady if r["t"] >= seconds - window]
    first_mean, last_mean = _mean(first), _mean(last)
    growth = round(last_mean / first_mean, 3) if first_mean and last_mean else None
    peak = max((r["VmRSS"] for r in steady), default=None)
    return {
        "samples_after_warmup": len(steady),
        "rss_min_mib": mib(min((r["VmRSS"] for r in steady), default=None)),
        "rss_max_mib": mib(peak),
        "rss_first_window_mean_mib": mib(first_mean),
        "rss_last_window_mean_mib": mib(last_mean),
        "growth_ratio": growth,
        "max_over_first_ratio": round(peak / first_mean, 3) if peak and first_mean else None,
        "pass": growth is not None and growth <= RSS_GROWTH_LIMIT,
    }


# ----------------------------------------------------------------------------------------------------------------
# The two parts
# ----------------------------------------------------------------------------------------------------------------


def start_engine(mode: str, data_root: Path, services: dict[str, DeploymentProcess], *, log_dir: Path) -> RunningEngine:
    service = None
    if mode == "http":
        if "http" not in services:
            services["http"] = start_deployment(APP_SPEC, log_path=log_dir / "service.log")
        service = services["http"]
    engine = RunningEngine(ENGINE_KIND[mode], data_root, binary=None, service=service)
    try:
        engine.wait_invocable()
    except BaseException:
        engine.stop()
        raise
    return engine


def run_soak(args: argparse.Namespace, services: dict[str, DeploymentProcess], log_dir: Path) -> dict[str, Any]:
    data_root = Path(tempfile.mkdtemp(prefix="soak-", dir=log_dir))
    engine = start_engine(args.mode, data_root, services, log_dir=log_dir)
    try:
        sampler = RssSampler(engine.pid, interval=args.sample_interval, label="soak")
        rss_start = proc_memory(engine.pid)
        cpu0 = cpu_ticks(engine.pid)
        latencies, errors, error_samples, elapsed = asyncio.run(
            _with_sampler(
                sampler,
                drive(
                    engine.ingress_url, COUNTER, concurrency=args.concurrency, seconds=args.soak_seconds, record=True
                ),
            )
        )
        cpu1 = cpu_ticks(engine.pid)
        service_rss = proc_memory(engine.service.pid)["VmRSS"] if engine.service is not None else None
        data = dir_size(engine_data_dir(data_root, engine.kind))
    finally:
        engine.stop()
        shutil.rmtree(data_root, ignore_errors=True)
    summary = summarize_soak(sampler.samples, warmup=args.warmup_seconds, window=args.window_seconds, seconds=elapsed)
    ok = len(latencies)
    return {
        "mode": args.mode,
        "workload": "Counter.add over 1,000 keys",
        "concurrency": args.concurrency,
        "seconds": round(elapsed, 1),
        "requests_ok": ok,
        "errors": errors,
        "error_samples": error_samples,
        "throughput": round(ok / elapsed, 1),
        "engine_cpu_s": round((cpu1 - cpu0) / os.sysconf("SC_CLK_TCK"), 1) if cpu0 is not None and cpu1 else None,
        "rss_at_start_mib": mib(rss_start["VmRSS"]),
        **summary,
        "rss_hwm_mib": mib(sampler.samples[-1]["VmHWM"]),
        "service_rss_at_end_mib": mib(service_rss),
        "data_dir_on_disk_mib": mib(data["on_disk_bytes"]),
        "samples": [{"t": r["t"], "rss_mib": mib(r["VmRSS"]), "anon_mib": mib(r["RssAnon"])} for r in sampler.samples],
    }


def run_keys(args: argparse.Namespace, services: dict[str, DeploymentProcess], log_dir: Path) -> dict[str, Any]:
    data_root = Path(tempfile.mkdtemp(prefix="keys-", dir=log_dir))
    engine = start_engine(args.fill_mode, data_root, services, log_dir=log_dir)
    try:
        data_dir = engine_data_dir(data_root, engine.kind)
        rss_start = proc_memory(engine.pid)
        sampler = RssSampler(engine.pid, interval=args.fill_sample_interval, label="keys", data_dir=data_dir)
        latencies, errors, error_samples, elapsed = asyncio.run(
            _with_sampler(
                sampler,
                drive(
                    engine.ingress_url,
                    COUNTER,
                    concurrency=args.fill_concurrency,
                    seconds=float("inf"),
                    record=True,
                    keys=args.keys,
                    max_requests=args.keys,
                ),
            )
        )
        after_fill = proc_memory(engine.pid)
        data_after_fill = dir_size(data_dir)
        time.sleep(args.idle_seconds)
        after_idle = proc_memory(engine.pid)
        data_after_idle = dir_size(data_dir)
        tables = rocksdb_properties(data_dir / "rocksdb")
        state_check = spot_check_counts(engine.ingress_url, args.keys)
        peak = max(r["VmRSS"] for r in sampler.samples)
    finally:
        engine.stop()
        shutil.rmtree(data_root, ignore_errors=True)
    ok = len(latencies)
    worst = max(after_fill["VmRSS"], after_idle["VmRSS"], peak)
    return {
        "mode": args.fill_mode,
        "keys": args.keys,
        "fill_concurrency": args.fill_concurrency,
        "fill_seconds": round(elapsed, 1),
        "requests_ok": ok,
        "errors": errors,
        "error_samples": error_samples,
        "fill_throughput": round(ok / elapsed, 1),
        "rss_at_start_mib": mib(rss_start["VmRSS"]),
        "rss_peak_during_fill_mib": mib(peak),
        "rss_after_fill_mib": mib(after_fill["VmRSS"]),
        "rss_anon_after_fill_mib": mib(after_fill["RssAnon"]),
        "idle_seconds": args.idle_seconds,
        "rss_after_idle_mib": mib(after_idle["VmRSS"]),
        "rss_anon_after_idle_mib": mib(after_idle["RssAnon"]),
        "rss_hwm_mib": mib(after_idle["VmHWM"]),
        "data_dir_after_fill_mib": mib(data_after_fill["on_disk_bytes"]),
        "data_dir_after_idle_mib": mib(data_after_idle["on_disk_bytes"]),
        "rocksdb_sst_mib": mib(tables["total-sst-files-size"]),
        "rocksdb_table_readers_mib": mib(tables["estimate-table-readers-mem"]),
        "rocksdb_estimated_keys": tables["estimate-num-keys"],
        "state_spot_check": state_check,
        "pass": errors == 0 and worst < RSS_KEYS_LIMIT_BYTES,
        "samples": [{"t": r["t"], "rss_mib": mib(r["VmRSS"]), "anon_mib": mib(r["RssAnon"])} for r in sampler.samples],
    }


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="soak,keys", help="comma separated, from soak,keys")
    p.add_argument("--mode", choices=("http", "asgi"), default="http", help="soak: hypercorn service or in-process")
    p.add_argument("--fill-mode", choices=("http", "asgi"), default="asgi", help="keys part: same choice")
    p.add_argument("--soak-seconds", type=float, default=None, help="soak length (default 300, --quick 20)")
    p.add_argument("--concurrency", type=int, default=32, help="soak workers")
    p.add_argument("--warmup-seconds", type=float, default=None, help="soak samples ignored (default 60, quick 5)")
    p.add_argument("--window-seconds", type=float, default=None, help="first/last window (default 60, quick 5)")
    p.add_argument("--sample-interval", type=float, default=None, help="soak RSS sampling (default 5, quick 1)")
    p.add_argument("--keys", type=int, default=None, help="distinct keys to fill (default 1000000, --quick 20000)")
    p.add_argument("--fill-concurrency", type=int, default=64, help="calls in flight while filling")
    p.add_argument("--fill-sample-interval", type=float, default=None, help="keys RSS sampling (default 30, quick 2)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle wait after the fill (default 60, quick 5)")
    p.add_argument("--quick", action="store_true", help="smoke run (flags given win)")
    p.add_argument("--data-root", type=Path, default=None, help="parent of the data dirs (default: /tmp)")
    args = p.parse_args(argv)
    defaults = {
        "soak_seconds": (300.0, 20.0),
        "warmup_seconds": (60.0, 5.0),
        "window_seconds": (60.0, 5.0),
        "sample_interval": (5.0, 1.0),
        "keys": (1_000_000, 20_000),
        "fill_sample_interval": (30.0, 2.0),
        "idle_seconds": (60.0, 5.0),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.parts = [part for part in args.parts.split(",") if part]
    for part in args.parts:
        if part not in ("soak", "keys"):
            p.error(f"unknown part {part!r}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_dir = Path(tempfile.mkdtemp(prefix="capstan-memory-", dir=args.data_root))
    services: dict[str, DeploymentProcess] = {}
    report: dict[str, Any] = {
        "timestamp": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "args": {k: v for k, v in vars(args).items() if k != "data_root"},
    }
    try:
        for part, run in (("soak", run_soak), ("keys", run_keys)):
            if part not in args.parts:
                continue
            try:
                report[part] = run(args, services, log_dir)
            except Exception as exc:  # one failed part must not lose the other
                report[part] = {"failed": f"{type(exc).__name__}: {exc}"[:2000]}
            summary = {k: v for k, v in report[part].items() if k != "samples"}
            print(json.dumps({part: summary}), file=sys.stderr, flush=True)
    finally:
        for service in services.values():
            service.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"memory-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if all(report.get(p, {}).get("pass") for p in args.parts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

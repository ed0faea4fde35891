"""Soak: Capstan at 80% of its peak throughput for minutes; engine RSS and per-window p99 must stay flat.

    nice -n 10 .venv/bin/python benchmarks/soak.py                    # 10 min (the acceptance run)
    .venv/bin/python benchmarks/soak.py --minutes 2 --warmup 20 --compare 20 --window 10   # smoke (~3 min)
    .venv/bin/python benchmarks/soak.py --mode asgi --workload steps3 --minutes 30

1. Start ``capstan serve`` (its defaults: one partition, fsync on) with the SDK service behind hypercorn registered
   with ``use_http_11`` (``--mode http``, as ``side_by_side.py``'s ``capstan`` engine), or mounted in-process
   (``--mode asgi``).
2. Peak: closed loop at ``--peak-concurrency`` (64) workers, ``--peak-seconds`` (20) measured after a 5 s warm-up
   (``side_by_side.drive``): successful requests per second. With ``--peak-mode sustained`` (the default) that is
   only the start: then open-loop steps of ``--ramp-step-seconds`` (15) at 0.5, 0.6, ... 1.0 x the closed-loop
   figure, until a step is not sustained (fewer than 98% of its requests answered within the step, an error, or a
   p99 over ``--step-p99-limit``, 1 s); peak = the highest rate answered in a sustained step. A closed loop of 64
   workers batches more per log write and apply than arrivals spread in time do, so it overstates what the engine
   sustains under the soak's own arrival pattern (2026-12-06: 657-758 req/s closed, 525 sustained; at 0.8 x 758 the
   queue grew for most of the run). ``--peak-mode closed`` soaks at a fraction of the closed-loop figure.
3. Soak: open loop at ``--load`` (0.8) x peak for ``--minutes`` (10): request ``i`` is due at ``start + i / rate``
   whether or not earlier ones were answered, and its latency counts from when it was due (no coordinated omission).
   The client keeps ``--connections`` (the peak's concurrency) connections, as in the peak measurement: requests
   due while all are busy wait in the client. At most ``--max-in-flight`` (2048) requests are outstanding; a request
   that would exceed it is counted as an error ("client backlog"), not sent. Every ``--window`` (20) seconds: the
   window's throughput, errors, p50/p99 (of the requests answered in it), the engine's RSS (``VmRSS``) and CPU (and
   the service's RSS, in http mode).
4. Flatness, after ``--warmup`` (60) seconds: the first ``--compare`` (60) seconds against the last ``--compare``
   seconds: RSS (mean of the samples) and p99 (over all requests answered in the span) each within
   ``--tolerance`` (20%). Exit status 1 if either is not flat, or more than ``--max-error-rate`` (0.1%) of requests
   failed.

The load generator runs in this process, on the same machine: at high rates it competes with the engine for CPU
(the peak is measured with the same generator, so 80% of it is 80% of what this setup can do). Writes
``benchmarks/results/soak-<timestamp>.json`` (and the engine's and the service's logs next to it) and prints a
markdown table. Not part of pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import aiohttp

from benchmarks.side_by_side import (
    APP_SPEC,
    CLK_TCK,
    COUNTER_KEYS,
    RESULTS_DIR,
    WORKLOADS,
    RunningEngine,
    Workload,
    cpu_ticks,
    drive,
    exit_cleanly_on_sigterm,
    percentile,
)
from tests.services.fixtures import DeploymentProcess, start_deployment

ENGINE_KIND = {"http": "capstan", "asgi": "capstan-asgi"}
PEAK_WARMUP_S = 5.0
DRAIN_TIMEOUT_S = 60.0


def rss_bytes(pid: int | None) -> int | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


# ----------------------------------------------------------------------------------------------------------------
# Open-loop load
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Window:
    index: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, problem: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3 and problem not in self.error_samples:
            self.error_samples.append(problem)


@dataclass
class Sample:
    t: float
    engine_rss: int | None
    engine_cpu_ticks: int | None
    service_rss: int | None
    service_cpu_ticks: int | None


async def open_loop(
    base_url: str,
    workload: Workload,
    *,
    rate: float,
    seconds: float,
    window_s: float,
    connections: int,
    max_in_flight: int,
    engine_pid: int | None,
    service_pid: int | None,
    progress: bool,
) -> tuple[list[Window], list[Sample], float]:
    """Requests due at ``i / rate`` for ``seconds``; returns the windows (by completion time), the resource samples
    (one per window boundary, plus one at the start) and the elapsed time."""
    windows: dict[int, Window] = {}
    samples: list[Sample] = []
    headers = {"content-type": "application/json"}
    # At most ``connections`` requests are on the wire, as in the peak measurement; the others wait for a connection
    # in the client (their latency counts from when they were due).
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    start = time.perf_counter()

    def window_at(t: float) -> Window:
        index = int((t - start) // window_s)
        w = windows.get(index)
        if w is None:
            w = windows[index] = Window(index)
        return w

    def sample() -> None:
        samples.append(
            Sample(
                t=time.perf_counter() - start,
                engine_rss=rss_bytes(engine_pid),
                engine_cpu_ticks=cpu_ticks(engine_pid),
                service_rss=rss_bytes(service_pid),
                service_cpu_ticks=cpu_ticks(service_pid),
            )
        )

    async def sampler() -> None:
        n = 1
        while True:
            await asyncio.sleep(max(0.0, start + n * window_s - time.perf_counter()))
            sample()
            if progress:
                w = windows.get(n - 1)
                s = samples[-1]
                p99 = percentile(sorted(w.latencies), 0.99) if w else None
                print(
                    f"[{s.t:6.0f}s] ok={len(w.latencies) if w else 0} errors={w.errors if w else 0} "
                    f"p99={(p99 or 0) * 1000:.1f}ms engine_rss={(s.engine_rss or 0) / 2**20:.1f}MiB",
                    file=sys.stderr,
                    flush=True,
                )
            n += 1

    in_flight = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:

        async def one(url: str, due: float) -> None:
            nonlocal in_flight
            try:
                async with session.post(url, data=workload.body, headers=headers) as resp:
                    await resp.read()
                    problem = "" if resp.status == 200 else f"HTTP {resp.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problem = repr(exc)[:200]
            finally:
                in_flight -= 1
            done = time.perf_counter()
            w = window_at(done)
            if problem:
                w.error(problem)
            else:
                w.latencies.append(done - due)

        sample()
        sampler_task = asyncio.create_task(sampler())
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        try:
            while True:
                now = time.perf_counter()
                if now - start >= seconds:
                    break
                due = start + i / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                i += 1
                if in_flight >= max_in_flight:
                    window_at(now).error("client backlog: max in-flight requests reached")
                    continue
                in_flight += 1
                url = base_url + workload.path.format(key=f"k{i % COUNTER_KEYS}")
                task = asyncio.create_task(one(url, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        finally:
            sampler_task.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(sampler_task, *tasks, return_exceptions=True)
        sample()
    elapsed = time.perf_counter() - start
    return [windows[k] for k in sorted(windows)], samples, elapsed


async def load(
    engine: RunningEngine,
    service: DeploymentProcess | None,
    workload: Workload,
    args: argparse.Namespace,
    *,
    rate: float,
    seconds: float,
    window_s: float,
    progress: bool = False,
) -> tuple[list[Window], list[Sample], float]:
    """:func:`open_loop` against the engine with the client settings of the command line."""
    return await open_loop(
        engine.ingress_url,
        workload,
        rate=rate,
        seconds=seconds,
        window_s=window_s,
        connections=args.connections or args.peak_concurrency,
        max_in_flight=args.max_in_flight,
        engine_pid=engine.pid,
        service_pid=service.pid if service is not None else None,
        progress=progress,
    )


async def ramp(
    engine: RunningEngine,
    service: DeploymentProcess | None,
    workload: Workload,
    closed_peak: float,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Open-loop steps at rising fractions of the closed-loop peak, until one is not sustained (answered < 98% of
    what was due in the step, any error, or p99 over ``--step-p99-limit``: the queue grew during the step)."""
    steps: list[dict[str, Any]] = []
    fraction = args.ramp_start
    while fraction <= 1.0 + 1e-9:
        offered = closed_peak * fraction
        windows, _, _ = await load(
            engine,
            service,
            workload,
            args,
            rate=offered,
            seconds=args.ramp_step_seconds,
            window_s=args.ramp_step_seconds,
        )
        latencies = sorted(x for w in windows for x in w.latencies)  # every request due in the step
        errors = sum(w.errors for w in windows)
        # answered within the step (the rest were drained after it: the queue grew)
        achieved = sum(len(w.latencies) for w in windows if w.index == 0) / args.ramp_step_seconds
        p99 = percentile(latencies, 0.99)
        ok = errors == 0 and achieved >= 0.98 * offered and p99 is not None and p99 <= args.step_p99_limit
        steps.append({"fraction": round(fraction, 2), "offered": round(offered, 1), "achieved": round(achieved, 1),
                      "errors": errors, "p50_ms": _ms(percentile(latencies, 0.5)), "p99_ms": _ms(p99),
                      "sustained": ok})  # fmt: skip
        print(f"ramp: {offered:.0f} req/s offered, {achieved:.0f} answered, p99 {(p99 or 0) * 1000:.0f} ms"
              f"{'' if ok else ': not sustained'}", file=sys.stderr, flush=True)  # fmt: skip
        if not ok:
            break
        fraction += args.ramp_step
    return steps


# ----------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def window_rows(windows: list[Window], samples: list[Sample], window_s: float) -> list[dict[str, Any]]:
    rows = []
    for w in windows:
        t_end = (w.index + 1) * window_s
        lat = sorted(w.latencies)
        # the sample taken at this window's end, and the one at its start (CPU delta)
        end = min(samples, key=lambda s: abs(s.t - t_end))
        begin = min(samples, key=lambda s: abs(s.t - w.index * window_s))
        cpu = None
        if end.engine_cpu_ticks is not None and begin.engine_cpu_ticks is not None and end.t > begin.t:
            cpu = round((end.engine_cpu_ticks - begin.engine_cpu_ticks) / CLK_TCK / (end.t - begin.t) * 100, 1)
        rows.append(
            {
                "t_end_s": round(t_end, 1),
                "ok": len(lat),
                "errors": w.errors,
                "throughput": round(len(lat) / window_s, 1),
                "p50_ms": _ms(percentile(lat, 0.50)),
                "p99_ms": _ms(percentile(lat, 0.99)),
                "engine_rss_mib": _mib(end.engine_rss),
                "engine_cpu_pct": cpu,
                # engine CPU per answered request: flat while the engine does the same work per request, even when
                # other processes take CPU from it (then throughput and p99 move, this does not)
                "engine_cpu_ms_per_req": round(cpu * 10 * window_s / len(lat), 3) if cpu is not None and lat else None,
                "service_rss_mib": _mib(end.service_rss),
                "error_samples": w.error_samples,
            }
        )
    return rows


def compare(
    windows: list[Window], samples: list[Sample], *, window_s: float, warmup: float, span: float, seconds: float,
    tolerance: float,
) -> dict[str, Any]:  # fmt: skip
    """First ``span`` seconds after the warm-up against the last ``span`` seconds of the run."""

    def latencies(lo: float, hi: float) -> list[float]:
        out: list[float] = []
        for w in windows:
            if lo <= w.index * window_s and (w.index + 1) * window_s <= hi + 1e-9:
                out.extend(w.latencies)
        return sorted(out)

    def rss_mean(lo: float, hi: float) -> float | None:
        values = [s.engine_rss for s in samples if lo <= s.t <= hi + 1e-9 and s.engine_rss is not None]
        return sum(values) / len(values) if values else None

    first_lo, first_hi = warmup, warmup + span
    last_lo, last_hi = seconds - span, seconds
    p99_first, p99_last = percentile(latencies(first_lo, first_hi), 0.99), percentile(latencies(last_lo, last_hi), 0.99)
    rss_first, rss_last = rss_mean(first_lo, first_hi), rss_mean(last_lo, last_hi)
    rss_ratio = round(rss_last / rss_first, 3) if rss_first and rss_last else None
    p99_ratio = round(p99_last / p99_first, 3) if p99_first and p99_last else None

    def window_p99_median(lo: float, hi: float) -> float | None:
        """Median of the spans' per-window p99s: less sensitive to one noisy window (informational)."""
        p99s = sorted(
            p
            for w in windows
            if lo <= w.index * window_s and (w.index + 1) * window_s <= hi + 1e-9
            for p in [percentile(sorted(w.latencies), 0.99)]
            if p is not None
        )
        return p99s[len(p99s) // 2] if p99s else None

    return {
        "first_span_s": [first_lo, first_hi],
        "last_span_s": [last_lo, last_hi],
        "rss_first_mib": _mib(rss_first),
        "rss_last_mib": _mib(rss_last),
        "rss_ratio": rss_ratio,
        "rss_flat": rss_ratio is not None and rss_ratio <= 1 + tolerance,
        "p99_first_ms": _ms(p99_first),
        "p99_last_ms": _ms(p99_last),
        "p99_ratio": p99_ratio,
        "p99_flat": p99_ratio is not None and p99_ratio <= 1 + tolerance,
        "window_p99_median_first_ms": _ms(window_p99_median(first_lo, first_hi)),
        "window_p99_median_last_ms": _ms(window_p99_median(last_lo, last_hi)),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| t (s) | ok | errors | req/s | p50 ms | p99 ms | engine RSS MiB | engine CPU % | engine CPU ms/req "
        "| service RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["t_end_s"], r["ok"], r["errors"], r["throughput"], r["p50_ms"], r["p99_ms"], r["engine_rss_mib"],
                 r["engine_cpu_pct"], r["engine_cpu_ms_per_req"], r["service_rss_mib"]]  # fmt: skip
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the open-loop soak (default 10)")
    p.add_argument("--mode", choices=sorted(ENGINE_KIND), default="http", help="service over HTTP/1.1 or in-process")
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="counter", help="see side_by_side.py")
    p.add_argument("--load", type=float, default=0.8, help="fraction of the peak to soak at (default 0.8)")
    p.add_argument("--rate", type=float, default=None, help="requests/s to soak at; skips the peak measurement")
    p.add_argument(
        "--peak-mode",
        choices=("sustained", "closed"),
        default="sustained",
        help="peak = the highest open-loop rate sustained in a ramp (default), or the closed loop's throughput",
    )
    p.add_argument("--ramp-start", type=float, default=0.5, help="first ramp step, as a fraction of the closed peak")
    p.add_argument("--ramp-step", type=float, default=0.1, help="ramp increment (fraction of the closed peak)")
    p.add_argument("--ramp-step-seconds", type=float, default=15.0)
    p.add_argument("--step-p99-limit", type=float, default=1.0, help="seconds; a step over it is not sustained")
    p.add_argument("--peak-concurrency", type=int, default=64)
    p.add_argument("--peak-seconds", type=float, default=20.0)
    p.add_argument("--window", type=float, default=20.0, help="seconds per sample window (default 20)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the flatness comparison starts")
    p.add_argument("--compare", type=float, default=60.0, help="length of the first and last span compared")
    p.add_argument("--tolerance", type=float, default=0.2, help="allowed growth of RSS and p99 (default 0.2)")
    p.add_argument("--max-error-rate", type=float, default=0.001)
    p.add_argument("--connections", type=int, default=None, help="client connections (default: --peak-concurrency)")
    p.add_argument("--max-in-flight", type=int, default=2048, help="requests outstanding in the client at most")
    p.add_argument("--data-root", type=Path, default=None, help="parent of the engine's data dir (default: /tmp)")
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    if args.warmup + 2 * args.compare > seconds:
        p.error("--minutes must cover --warmup plus two --compare spans")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    workload = WORKLOADS[args.workload]
    seconds = args.minutes * 60
    data_root = Path(tempfile.mkdtemp(prefix="capstan-soak-", dir=args.data_root))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    service: DeploymentProcess | None = None
    engine: RunningEngine | None = None
    try:
        if args.mode == "http":
            service = start_deployment(APP_SPEC, log_path=data_root / "service.log")
        engine = RunningEngine(ENGINE_KIND[args.mode], data_root, binary=None, service=service)
        engine.wait_invocable()
        peak = None
        if args.rate is None:
            print(f"peak: closed loop, {args.peak_concurrency} workers, {args.peak_seconds:g} s", file=sys.stderr)
            asyncio.run(
                drive(engine.ingress_url, workload, concurrency=args.peak_concurrency, seconds=PEAK_WARMUP_S,
                      record=False)
            )  # fmt: skip
            latencies, errors, _, elapsed = asyncio.run(
                drive(engine.ingress_url, workload, concurrency=args.peak_concurrency, seconds=args.peak_seconds,
                      record=True)
            )  # fmt: skip
            peak = {"throughput": round(len(latencies) / elapsed, 1), "errors": errors,
                    "p99_ms": _ms(percentile(sorted(latencies), 0.99))}  # fmt: skip
            rate = peak["throughput"] * args.load
            if args.peak_mode == "sustained":
                peak["closed_loop_throughput"] = peak["throughput"]
                peak["ramp"] = asyncio.run(ramp(engine, service, workload, peak["throughput"], args))
                sustained = [step["achieved"] for step in peak["ramp"] if step["sustained"]]
                if not sustained:
                    print(
                        "no open-loop step was sustained: the soak rate falls back to the closed loop's",
                        file=sys.stderr,
                    )
                else:
                    peak["throughput"] = max(sustained)
                    rate = peak["throughput"] * args.load
        else:
            rate = args.rate
        print(f"soak: open loop at {rate:.1f} req/s for {seconds:g} s", file=sys.stderr, flush=True)
        windows, samples, elapsed = asyncio.run(
            load(engine, service, workload, args, rate=rate, seconds=seconds, window_s=args.window, progress=True)
        )
    finally:
        logs = RESULTS_DIR / f"soak-{stamp}-logs"
        logs.mkdir(parents=True, exist_ok=True)
        capstan = getattr(engine, "_capstan", None)  # RunningEngine deletes its log when it stops: keep a copy
        if capstan is not None and capstan.log_path.exists():
            shutil.copy(capstan.log_path, logs / "engine.log")
        if (data_root / "service.log").exists():
            shutil.copy(data_root / "service.log", logs / "service.log")
        if engine is not None:
            engine.stop()
        if service is not None:
            service.stop()
        shutil.rmtree(data_root, ignore_errors=True)

    rows = window_rows(windows, samples, args.window)
    ok = sum(r["ok"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    flatness = compare(
        windows, samples, window_s=args.window, warmup=args.warmup, span=args.compare, seconds=seconds,
        tolerance=args.tolerance,
    )  # fmt: skip
    error_rate = errors / max(1, ok + errors)
    passed = flatness["rss_flat"] and flatness["p99_flat"] and error_rate <= args.max_error_rate
    summary = {
        "timestamp": stamp,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peak": peak,
        "target_rate": round(rate, 1),
        "achieved_rate": round(ok / elapsed, 1),
        "requests_ok": ok,
        "errors": errors,
        "error_rate": round(error_rate, 6),
        "flatness": flatness,
        "pass": passed,
    }
    table = markdown(rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"soak-{stamp}.json"
    out.write_text(json.dumps({**summary, "windows": rows}, indent=2) + "\n")
    print(table)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""GET /metrics on the admin port after a scripted workload, read with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import Histogram
from engine.server import Engine
from tests.conftest import EngineFactory, engine_with_services
from tests.services.fixtures import DeploymentProcess

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(http: aiohttp.ClientSession, engine: Engine) -> tuple[str, Samples]:
    async with http.get(engine.admin_url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
        ctype = resp.headers["content-type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return ctype, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly ``labels``."""
    [v] = [v for lab, v in samples[name] if lab == labels]
    return v


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels`` (e.g. over partitions)."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


async def post(http: aiohttp.ClientSession, engine: Engine, path: str, body: Any = None) -> int:
    async with http.post(engine.ingress_url + path, json=body) as resp:
        await resp.read()
        return resp.status


async def test_metrics_count_what_ran(
    engine_factory: EngineFactory, mode: str, deployment: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    greetings = 6
    async with engine_with_services(engine_factory, mode, deployment, http) as engine:
        for i in range(greetings):
            assert await post(http, engine, "/Greeter/greet", f"n{i}") == 200
        assert await post(http, engine, "/Flaky/fail_twice", f"metrics-{uuid.uuid4().hex}") == 200  # 3 attempts
        assert await post(http, engine, "/Boom/teapot") == 418  # a terminal failure

        ctype, m = await scrape(http, engine)
        # With invoker processes (CAPSTAN_TEST_INVOKER_PROCESSES), an attempt lets go of its slot just after the
        # engine answered the caller; the gauge shows it at the next scrape. In-process the first scrape has it.
        for _ in range(100):
            if value(m, "capstan_invoker_running_attempts") == 0:
                break
            await asyncio.sleep(0.01)
            ctype, m = await scrape(http, engine)

    assert ctype.startswith("text/plain; version=0.0.4")
    # invocations: counters since start, and the gauge from the tables (completed ones are retained 24 h)
    assert value(m, "capstan_invocations_completed_total", result="success") == greetings + 1
    assert value(m, "capstan_invocations_completed_total", result="failure") == 1
    assert value(m, "capstan_invocations", status="completed") == greetings + 2
    for status in ("pending", "scheduled", "running", "suspended", "backing-off", "paused"):
        assert value(m, "capstan_invocations", status=status) == 0, status
    # attempts: one per greeting and for the teapot, three for Flaky; every attempt is in the histogram
    started = value(m, "capstan_invoker_attempts_started_total")
    assert started >= greetings + 4
    assert value(m, "capstan_invoker_attempts_failed_total") >= 2
    assert value(m, "capstan_invoker_attempt_duration_seconds_count") == started
    assert value(m, "capstan_invoker_attempt_duration_seconds_bucket", le="+Inf") == started
    assert value(m, "capstan_invoker_attempt_duration_seconds_sum") > 0
    assert value(m, "capstan_invoker_running_attempts") == 0
    assert value(m, "capstan_invoker_backlog") == 0
    # the log: every invocation appended records in group-committed, fsynced batches
    batches = total(m, "capstan_log_batches_total")
    assert total(m, "capstan_log_records_total") >= greetings + 2
    assert batches > 0
    assert total(m, "capstan_log_append_duration_seconds_count") == batches
    assert total(m, "capstan_log_fsync_duration_seconds_count") > 0
    assert total(m, "capstan_log_fsyncs_total") >= total(m, "capstan_log_fsync_duration_seconds_count")
    assert len(m["capstan_log_queue_records"]) == engine.config.num_partitions
    # queue depths are back to zero once the workload is done
    assert total(m, "capstan_log_queue_records") == 0
    assert total(m, "capstan_partition_pending_records") == 0
    assert total(m, "capstan_shuffler_queue") == 0
    assert value(m, "capstan_ingress_in_flight_requests") == 0
    # the Kafka extension's families are there (no subscription: no samples)
    assert "capstan_kafka_dead_letters_total" not in m


def test_histogram_buckets_are_prometheus_le() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.1, 0.5, 1.0, 2.0, 0.05):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (2, 2, 1)  # <= 0.1, (0.1, 1.0], > 1.0
    assert snap.count == 5
    assert snap.sum == pytest.approx(3.65)

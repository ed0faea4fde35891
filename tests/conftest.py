"""Shared fixtures: a real SDK deployment (hypercorn, official restate-sdk) and engines on temp dirs.

Everything binds 127.0.0.1 only, and every process started here is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import settings

from engine.codec import RowCache
from engine.config import EngineConfig, load_config
from engine.server import Engine
from tests.services.fixtures import DeploymentProcess, start_deployment

# The plugin users enable for Kafka integration tests (documented in the README); tests/kafka uses it too.
pytest_plugins = ["ingress_kafka.testing"]

# Every row the engine's decode caches hold must equal a fresh decode of its bytes (engine/codec.py RowCache).
RowCache.verify = True

# Hypothesis: in CI (CI=true) every run tries the same examples (derandomized, no example database), so a red run
# reproduces; locally examples are random and failures are remembered in .hypothesis/. HYPOTHESIS_PROFILE overrides.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))

APP_SPEC = "tests.services.app:app"


@pytest.fixture(scope="session")
def deployment() -> Iterator[DeploymentProcess]:
    """The SDK test services behind hypercorn (HTTP/1.1), shared by the session."""
    dep = start_deployment(APP_SPEC)
    try:
        yield dep
    finally:
        dep.stop()


def make_config(data_dir: Path, **overrides: Any) -> EngineConfig:
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        # more than one partition, so cross-partition paths (outbox, per-partition dedup) are always exercised
        "num_partitions": 4,
        "ingress_http": {"address": "127.0.0.1:0"},
        "admin": {"address": "127.0.0.1:0"},
        "invoker": {"retry_policy": {"initial_interval": "20ms", "max_interval": "200ms"}},
    }
    # CAPSTAN_TEST_INVOKER_PROCESSES=N runs every engine of the suite with its attempts in N invoker processes.
    processes = os.environ.get("CAPSTAN_TEST_INVOKER_PROCESSES")
    if processes:
        base["invoker"]["processes"] = int(processes)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_config(environ={}, overrides=base)


EngineFactory = Callable[..., contextlib.AbstractAsyncContextManager[Engine]]


@pytest.fixture
def engine_factory(tmp_path: Path) -> EngineFactory:
    """``async with engine_factory(**overrides) as engine``: an engine on ``tmp_path/data``; reopening with the
    same factory reuses the data dir (restart)."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Engine]:
        engine = await Engine.open(make_config(tmp_path / "data", **overrides))
        try:
            yield engine
        finally:
            await engine.aclose()

    return factory


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["http", "asgi"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a test over both transports: HTTP/1.1 request-response and in-process full-duplex ASGI."""
    return str(request.param)


@contextlib.asynccontextmanager
async def engine_with_services(
    factory: EngineFactory,
    mode: str,
    deployment: DeploymentProcess,
    http: aiohttp.ClientSession,
    **overrides: Any,
) -> AsyncIterator[Engine]:
    """An engine with the test services registered over ``mode``."""
    if mode == "asgi":
        overrides.setdefault("app", APP_SPEC)
    async with factory(**overrides) as engine:
        if mode == "http":
            async with http.post(engine.admin_url + "/deployments", json={"uri": deployment.url}) as resp:
                assert resp.status in (200, 201), await resp.text()
        yield engine

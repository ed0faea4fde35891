"""Log records about an invocation carry its id (``invocation_id``), and ``capstan serve``'s format shows it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from engine.logcontext import LOG_FORMAT, InvocationLogFilter
from tests.conftest import APP_SPEC, EngineFactory


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(InvocationLogFilter())  # as engine.cli.main.configure_logging does

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[_Collect]:
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_log_records_about_an_invocation_carry_its_id(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, collected: _Collect
) -> None:
    # the attempts in this process (not in invoker processes), where the test collects log records
    async with engine_factory(app=APP_SPEC, invoker={"processes": 0}) as engine:
        async with http.post(engine.ingress_url + "/Flaky/fail_twice", json=f"log-{uuid.uuid4().hex}") as resp:
            assert resp.status == 200
            flaky = resp.headers["x-restate-id"]
        async with http.post(engine.ingress_url + "/Limited/killed_after_four") as resp:
            assert resp.status == 500  # killed after its 4th attempt: the last failure
            killed = resp.headers["x-restate-id"]

    def about(inv: str) -> list[logging.LogRecord]:
        return [r for r in collected.records if r.invocation_id == inv]  # type: ignore[attr-defined]

    # The invoker's lines about the failed attempts, and the SDK's own log line from inside the in-process app.
    flaky_lines = about(flaky)
    assert sum(1 for r in flaky_lines if r.name == "engine.invoker.invoker" and "ErrorMessage" in r.getMessage()) == 2
    assert any(r.name.startswith("restate") for r in flaky_lines), [r.name for r in flaky_lines]
    # A line from the partition processor (outside any attempt: passed with extra=).
    assert any(r.name == "engine.partition.processor" and "killed after 4" in r.getMessage() for r in about(killed))
    # Every invoker line logged during an attempt names the invocation: none is left untagged.
    for r in collected.records:
        if r.name == "engine.invoker.invoker" and r.getMessage().startswith("attempt "):
            assert r.invocation_id in (flaky, killed), r.getMessage()  # type: ignore[attr-defined]
    # Lines not about an invocation have none.
    [ready] = [r for r in collected.records if r.getMessage().startswith("capstan ready")]
    assert ready.invocation_id == ""  # type: ignore[attr-defined]

    fmt = logging.Formatter(LOG_FORMAT)
    line = fmt.format(next(r for r in flaky_lines if r.name == "engine.invoker.invoker"))
    assert f"DEBUG engine.invoker.invoker [{flaky}] attempt {flaky}/" in line
    assert fmt.format(ready).endswith(f" INFO engine.server {ready.getMessage()}")  # unchanged without an id

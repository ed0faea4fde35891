"""The web UI's subscriptions page (``/ui/#/subscriptions``) against a real broker: a subscription with a dead-letter
topic, records that are handled, undecodable and terminally failing, then headless Chromium (Debian's, driven by
playwright) reads the ingested and dead-lettered counts, the lag and each partition's offsets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import EngineFactory
from tests.e2e.browser import VIEWPORT, UiPage, chromium_or_skip, open_browser
from tests.kafka.helpers import admin, kafka_engine, subscribe, until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_subscriptions_page(
    engine_factory: EngineFactory,
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    topic_factory: Any,
    produce: Any,
    tmp_path: Path,
) -> None:
    chromium = chromium_or_skip()
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1, prefix="capstan-dlq")
    good = [(f"k{i}", json.dumps({"id": i}), (), i % 2) for i in range(4)]
    undecodable = [("b0", "not json {", (), 0)]  # dead-lettered by the consumer
    failing = [("f0", json.dumps({"id": 100, "fail": True}), (), 1)]  # dead-lettered after the invocation fails
    async with kafka_engine(engine_factory, http, kafka_bootstrap) as engine:
        await produce(topic, good + undecodable + failing)
        sid = await subscribe(
            http, engine, topic, "Judge/check", **{"capstan.value.format": "json", "capstan.dlq.topic": dlq}
        )

        async def query(sql: str) -> list[dict[str, Any]]:
            status, body = await admin(http, engine, "POST", "/query", {"query": sql})
            assert status == 200, body
            return list(body["rows"])

        await until(
            lambda: query(
                "SELECT s.dead_lettered, s.ingested, l.partition, l.lag, l.end_offset FROM sys_subscription s "
                "JOIN sys_kafka_lag l ON l.subscription_id = s.id"
            ),
            lambda rows: len(rows) == 2 and all(r["lag"] == 0 and r["dead_lettered"] == 2 for r in rows),
            within=60,
            what="both partitions consumed and both poisoned records dead-lettered",
        )

        async with open_browser(chromium) as browser:
            ui = UiPage(await browser.new_page(viewport=VIEWPORT), engine.admin_url)
            await ui.load("#/subscriptions")
            card = ui.page.locator(f"article[data-subscription={sid}]")
            assert await card.get_attribute("data-subscription") == sid
            text = await card.inner_text()
            assert f"kafka://local/{topic}" in text and "service://Judge/check" in text
            assert f"capstan.dlq.topic = {dlq}" in text
            assert await card.locator("[data-status]").first.get_attribute("data-status") == "running"
            stats = {
                name: await card.locator(f"[data-stat={name}]").inner_text()
                for name in ("ingested", "dead-lettered", "lag")
            }
            assert stats == {"ingested": str(len(good) + len(failing)), "dead-lettered": "2", "lag": "0"}
            partitions = await card.locator("table.partitions tbody tr").evaluate_all(
                "rows => rows.map(r => Array.from(r.cells, c => c.innerText))"
            )
            # topic, partition, position, committed, end offset, lag: 3 records in each partition
            assert [p[:2] for p in partitions] == [[topic, "0"], [topic, "1"]]
            assert [p[3:] for p in partitions] == [["3", "3", "0"], ["3", "3", "0"]]
            assert "local" in await ui.text("#clusters-table") and kafka_bootstrap in await ui.text("#clusters-table")
            await ui.shot(tmp_path / "subscriptions.png")

            # The sink links to the subscription's invocations: one per handled record, the failed one included.
            await ui.page.click(f"article[data-subscription={sid}] a[href*='service=Judge']")
            await ui.rendered()
            rows = await ui.page.locator("#invocations-table tbody tr").count()
            assert rows == len(good) + len(failing)
            assert ui.errors == []

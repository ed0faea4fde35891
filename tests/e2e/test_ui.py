"""The web UI (``GET /ui/``) end to end: a real engine with both SDK test apps behind hypercorn (HTTP/1.1
request-response, so awaiting handlers suspend), a scripted workload, then headless Chromium (Debian's, driven by
playwright) reads every key page, clicks cancel / kill / purge, and screenshots are checked.

The workload:

- ``Counter2/a``: ``add(5)`` and ``append(7)`` completed (state ``count = 5``, ``seen = [7]``);
- ``Steps/three("x")`` completed with three ``ctx.run`` steps in its journal;
- ``Counter2/b/boom(418)`` completed with a terminal failure;
- ``Flaky/fail_twice("k1")`` completed after two failed attempts;
- ``Waiter/w/wait`` suspended on an awakeable (holds the key), a second one pending in the key's inbox;
- ``Sleeper/long`` suspended on a one-hour timer;
- ``Flaky/always_fails`` backing off after two failed attempts (the engine's retry policy here waits 20 ms, 1.2 s,
  then a minute, so the test sees it backing off, never between two attempts);
- ``Limited/always_fails`` paused after its two attempts (its service's retry policy);
- ``StateOps/html`` holding markup as a value (must show as text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.ids import random_invocation_id
from tests.conftest import EngineFactory
from tests.e2e.browser import VIEWPORT, UiPage, chromium_or_skip, open_browser
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import eventually, get, post, register, request, send

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RETRY_POLICY = {"initial_interval": "20ms", "exponentiation_factor": 60, "max_interval": "60s"}
MARKUP = '<b>bold</b><img src=x onerror="window.__xss = 1">'


async def rows(http: aiohttp.ClientSession, admin: str, sql: str) -> list[dict[str, Any]]:
    status, body, _ = await post(http, f"{admin}/query", {"query": sql})
    assert status == 200, body
    return list(body["rows"])


async def status_of(http: aiohttp.ClientSession, admin: str, inv: str) -> dict[str, Any] | None:
    found = await rows(
        http,
        admin,
        f"SELECT status, completion_result, completion_failure, retry_count FROM sys_invocation WHERE id = '{inv}'",
    )
    return found[0] if found else None


async def wait_for(http: aiohttp.ClientSession, admin: str, inv: str, check: Any, what: str) -> dict[str, Any]:
    found: dict[str, Any] = await eventually(
        lambda: status_of(http, admin, inv), lambda r: r is not None and check(r), within=15, what=what
    )
    return found


async def workload(http: aiohttp.ClientSession, ingress: str, admin: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for name, path, body in (
        ("add", "/Counter2/a/add", 5),
        ("append", "/Counter2/a/append", 7),
        ("steps", "/Steps/three", "x"),
        ("boom", "/Counter2/b/boom", 418),
        ("fail_twice", "/Flaky/fail_twice", "k1"),
        ("html", "/StateOps/html/set", {"snippet": MARKUP}),
    ):
        status, _, headers = await post(http, ingress + path, body)
        assert status in (200, 418), (path, status)
        ids[name] = headers["x-restate-id"]
    ids["waiter"] = await send(http, f"{ingress}/Waiter/w/wait/send")
    await wait_for(http, admin, ids["waiter"], lambda r: r["status"] == "suspended", "waiter suspended")
    ids["queued"] = await send(http, f"{ingress}/Waiter/w/wait/send")
    ids["sleeper"] = await send(http, f"{ingress}/Sleeper/long/send")
    ids["flaky"] = await send(http, f"{ingress}/Flaky/always_fails/send")
    ids["paused"] = await send(http, f"{ingress}/Limited/always_fails/send")
    await wait_for(http, admin, ids["sleeper"], lambda r: r["status"] == "suspended", "sleeper suspended")
    await wait_for(http, admin, ids["paused"], lambda r: r["status"] == "paused", "limited paused")
    await wait_for(
        http, admin, ids["flaky"], lambda r: r["status"] == "backing-off" and r["retry_count"] == 2, "flaky retrying"
    )
    return ids


async def test_ui_end_to_end(
    engine_factory: EngineFactory,
    deployment: DeploymentProcess,
    deployment3: DeploymentProcess,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    chromium = chromium_or_skip()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with engine_factory(invoker={"retry_policy": RETRY_POLICY}) as engine:
        admin = engine.admin_url
        for dep in (deployment, deployment3):
            await register(http, admin, dep.url)
        ids = await workload(http, engine.ingress_url, admin)

        # The files: /ui redirects to /ui/; only the known assets are served, with a strict CSP.
        status, _, headers = await request(http, "GET", f"{admin}/ui", headers={}, wait_s=5)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, _, headers = await get(http, f"{admin}/ui/app.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert (await get(http, f"{admin}/ui/..%2Fpyproject.toml"))[0] == 404
        assert (await get(http, f"{admin}/ui/__init__.py"))[0] == 404

        async with open_browser(chromium) as browser:
            ui = UiPage(await browser.new_page(viewport=VIEWPORT), admin)

            # -- services and handlers (the default page)
            await ui.load()
            assert ui.page.url.endswith("/ui/")
            assert await ui.text("#page-title") == "Services"
            counter2 = ui.page.locator("article[data-service=Counter2]")
            assert "VirtualObject" in await counter2.inner_text()
            handlers = await counter2.locator("tr[data-handler]").evaluate_all(
                "rows => rows.map(r => r.dataset.handler)"
            )
            assert handlers == ["add", "append", "get", "seen", "hold", "boom"]
            assert "Shared" in await counter2.locator("tr[data-handler=get]").inner_text()
            flaky = await ui.page.locator("article[data-service=Flaky]").inner_text()
            assert "backing-off" in flaky and "completed" in flaky
            overview = await ui.text("#services-table")
            assert "Counter2" in overview and "Sleeper" in overview and "WaiterBox" in overview
            await ui.shot(shots / "services.png")

            # -- deployments
            await ui.go("#/deployments")
            text = await ui.text()
            for dep in (deployment, deployment3):
                assert dep.url in text
            assert "restate-sdk-python" in text and "Counter2" in text and "Flaky" in text

            # -- invocations, all of them, then filtered
            await ui.go("#/invocations")
            listed = await ui.page.locator("#invocations-table tbody tr").evaluate_all(
                "rows => Object.fromEntries(rows.map(r => [r.dataset.invocationId, r.dataset.status]))"
            )
            expected = {
                "steps": "completed", "boom": "completed", "waiter": "suspended", "queued": "pending",
                "sleeper": "suspended", "flaky": "backing-off", "fail_twice": "completed", "paused": "paused",
            }  # fmt: skip
            for name, status in expected.items():
                assert listed[ids[name]] == status, (name, listed)
            row = await ui.page.inner_text(f"tr[data-invocation-id={ids['boom']}]")
            assert "completed (failure)" in row and "[418] boom" in row
            row = await ui.page.inner_text(f"tr[data-invocation-id={ids['flaky']}]")
            assert "ValueError('always fails')" in row
            await ui.shot(shots / "invocations.png")
            await ui.page.select_option("#filter-status", "suspended")
            await ui.after("#invocation-filters button[type=submit]")
            assert "status=suspended" in ui.page.url
            shown = await ui.page.locator("#invocations-table tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.invocationId)"
            )
            assert sorted(shown) == sorted([ids["waiter"], ids["sleeper"]])
            await ui.go("#/invocations?service=Waiter&status=pending")
            shown = await ui.page.locator("#invocations-table tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.invocationId)"
            )
            assert shown == [ids["queued"]]

            # -- one invocation: the journal timeline, entry by entry
            await ui.after(f"a[href='#/invocations/{ids['queued']}']")  # marks the page loading, then clicks
            assert "Waiting in the inbox of Waiter/w" in await ui.text("#invocation-status")
            await ui.go(f"#/invocations/{ids['steps']}")
            entries = ui.page.locator("#journal li[data-index]")
            types = await entries.evaluate_all("items => items.map(i => i.dataset.type)")
            assert types == ["Command: Input"] + ["Command: Run", "Notification: Run"] * 3 + ["Command: Output"]
            run = await ui.page.inner_text("#journal li[data-index='3']")
            assert "Run" in run and '"step-2"' in run and "completed" in run
            assert '"x-1-2"' in await ui.page.inner_text("#journal li[data-index='4']")
            assert "completes #3" in await ui.page.inner_text("#journal li[data-index='4']")
            assert '"x-1-2-3"' in await ui.page.inner_text("#journal li[data-index='7']")
            assert "Completed successfully" in await ui.text("#invocation-status")
            assert await ui.page.is_disabled("#action-cancel") and await ui.page.is_enabled("#action-purge")

            await ui.go(f"#/invocations/{ids['fail_twice']}")
            timeline = await ui.text("#journal")
            assert "2 failed attempts" in timeline and "FlakyError('attempt 2 for k1 fails on purpose')" in timeline

            await ui.go(f"#/invocations/{ids['flaky']}")
            status_text = await ui.text("#invocation-status")
            assert "backing-off" in status_text and "failed attempts" in status_text
            assert "[500] ValueError('always fails')" in status_text
            assert "failed attempts" in await ui.text("#journal li[data-event=attempts]")
            assert "next attempt at" in await ui.text("#journal li[data-event=retry]")
            await ui.shot(shots / "invocation-retrying.png")

            await ui.go(f"#/invocations/{ids['paused']}")
            status_text = await ui.text("#invocation-status")
            assert "Paused after 2 failed attempts" in status_text
            assert "Limited.always_fails fails on purpose" in status_text
            assert await ui.page.is_enabled("#action-resume") and await ui.page.is_disabled("#action-pause")

            await ui.go(f"#/invocations/{ids['sleeper']}")
            assert "Suspended, waiting for Sleep #1" in await ui.text("#invocation-status")
            sleep = await ui.page.inner_text("#journal li[data-index='1']")
            assert "Sleep" in sleep and "until" in sleep and "awaiting completion" in sleep
            await ui.shot(shots / "invocation-suspended.png")

            await ui.go(f"#/invocations/{ids['waiter']}")
            assert "awakeable" in await ui.text("#invocation-status")
            call = await ui.page.inner_text("#journal li[data-index='1']")
            assert "OneWayCall" in call and "WaiterBox/w/put" in call

            # -- state of an object key
            await ui.go("#/state/Counter2/a")
            entries = await ui.page.locator("#state-entries tbody tr").evaluate_all(
                "rows => rows.map(r => [r.dataset.stateKey, r.cells[1].innerText.replace(/\\s+/g, '')])"
            )
            assert entries == [["count", "5"], ["seen", "[7]"]]
            assert "nobody" in await ui.text(".fields")
            await ui.shot(shots / "state.png")
            await ui.go("#/state/Waiter/w")
            holders = await ui.text(".fields")
            assert ids["waiter"] in holders and ids["queued"] in holders
            await ui.go("#/state/StateOps/html")
            cell = ui.page.locator("#state-entries tr[data-state-key=snippet] td").nth(1)
            assert await cell.inner_text() == json.dumps(MARKUP)  # the stored JSON, shown as text ...
            assert await cell.locator("b, img").count() == 0  # ... never parsed as markup
            assert await ui.page.evaluate("() => window.__xss") is None

            # -- subscriptions: none on this engine (the Kafka extension is loaded, no cluster)
            await ui.go("#/subscriptions")
            assert "No subscriptions." in await ui.text()
            assert "No Kafka clusters." in await ui.text()
            await ui.shot(shots / "subscriptions.png", min_colors=32)

            # -- errors from the admin API become a banner
            unknown = str(random_invocation_id())
            await ui.go(f"#/invocations/{unknown}", expect="error")
            text = await ui.banner()
            assert "The admin API answered 404 Not Found" in text and unknown in text
            await ui.shot(shots / "error.png", min_colors=32)
            await ui.go("#/nowhere", expect="error")
            assert "No page at #/nowhere" in await ui.banner()

            # -- actions: cancel the sleeper, kill the retrying one, purge a completed one
            await ui.go(f"#/invocations/{ids['sleeper']}")
            await ui.page.click("#action-cancel")
            assert "Cancel this invocation?" in await ui.text("#action-confirm")
            await ui.after("#action-confirm-go")
            assert "Cancel: done" in await ui.banner()
            row = await wait_for(http, admin, ids["sleeper"], lambda r: r["status"] == "completed", "cancelled")
            assert row["completion_result"] == "failure" and "cancel" in row["completion_failure"].lower()
            await ui.after("button.refresh")
            assert "Completed with a failure" in await ui.text("#invocation-status")
            assert "cancellation" in await ui.text("#journal")  # the cancel signal's notification

            await ui.go(f"#/invocations/{ids['flaky']}")
            await ui.page.click("#action-kill")
            await ui.after("#action-confirm-go")
            row = await wait_for(http, admin, ids["flaky"], lambda r: r["status"] == "completed", "killed")
            assert row["completion_result"] == "failure" and "kill" in row["completion_failure"].lower()

            await ui.go(f"#/invocations/{ids['boom']}")
            await ui.page.click("#action-purge")
            await ui.after("#action-confirm-go")
            assert "#/invocations" in ui.page.url and "Purge: done" in await ui.banner()
            assert await ui.page.locator(f"tr[data-invocation-id={ids['boom']}]").count() == 0
            assert (await get(http, f"{admin}/invocations/{ids['boom']}"))[0] == 404

            # -- a refused action shows the API's answer (kill of an invocation that completed meanwhile)
            await ui.go(f"#/invocations/{ids['queued']}")
            status, body, _ = await request(http, "PATCH", f"{admin}/invocations/{ids['queued']}/kill")
            assert status == 200, body
            await ui.page.click("#action-cancel")
            await ui.page.click("#action-confirm-go")
            await ui.page.wait_for_selector("#banner.banner-error")
            assert "409 Conflict" in await ui.banner() and "already completed" in await ui.banner()

            assert ui.errors == []


async def test_ui_with_an_admin_token(engine_factory: EngineFactory, tmp_path: Path) -> None:
    """With ``admin.auth_token`` set, the page itself loads without a token, the API's 401 is a banner that says
    what to do, and the token pasted in the header goes to every API call (``Authorization: Bearer``), for this tab
    only (sessionStorage)."""
    chromium = chromium_or_skip()
    token = "ui-test-token-0123"
    async with engine_factory(admin={"auth_token": token}) as engine, open_browser(chromium) as browser:
        ui = UiPage(await browser.new_page(viewport=VIEWPORT), engine.admin_url)
        await ui.load("#/services", expect="error")
        text = await ui.banner()
        assert "401 Unauthorized" in text and "paste the admin token" in text

        await ui.page.fill("#token-input", token)
        async with ui.page.expect_request(lambda r: r.url.endswith("/services")) as sent:
            await ui.after("#token-form button[type=submit]")
        assert (await sent.value).headers.get("authorization") == f"Bearer {token}"
        assert "No services yet" in await ui.text()
        assert "Admin token saved" in await ui.banner()
        await ui.go("#/invocations")
        assert "No invocations match." in await ui.text()
        await ui.shot(tmp_path / "token.png", min_colors=32)

        other = UiPage(await browser.new_page(viewport=VIEWPORT), engine.admin_url)  # a new tab: no token
        await other.load("#/services", expect="error")
        assert "401" in await other.banner()

        await ui.page.fill("#token-input", "wrong")
        await ui.after("#token-form button[type=submit]", expect="error")
        assert "invalid bearer token" in await ui.banner()
        assert ui.errors == [] and other.errors == []

"""SQL introspection (``POST /query``), ``GET /invocations/{id}`` and state editing (``/services/{name}/state``)
against an engine that ran a scripted workload with the official Python SDK (app3 behind hypercorn, HTTP/1.1
request-response, so awaiting handlers suspend):

- ``Counter2/a/add(5)`` completed, state ``count = 5``;
- ``Waiter/w/wait`` suspended on an awakeable (holds the key's lock), after a one-way send to ``WaiterBox/w/put``;
- a second ``Waiter/w/wait`` waiting in the key's inbox;
- ``Sleeper/long`` suspended on a one-hour durable timer.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp

from engine.ids import random_invocation_id
from engine.partition.state_edit import state_version
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess
from tests.services.fixtures3 import APP3_SPEC, counter, engine3, eventually, post, request, send

QUERY_LIMITS = {"admin": {"query_timeout": "300ms"}}


async def query(http: aiohttp.ClientSession, admin_url: str, sql: str, **headers: str) -> tuple[int, Any]:
    status, body, _ = await post(http, f"{admin_url}/query", {"query": sql}, headers=headers or None)
    return status, body


async def rows(http: aiohttp.ClientSession, admin_url: str, sql: str) -> list[dict[str, Any]]:
    status, body = await query(http, admin_url, sql)
    assert status == 200, (status, body)
    assert list(body) == ["columns", "rows"]
    return list(body["rows"])


async def status_of(http: aiohttp.ClientSession, admin_url: str, inv: str) -> str | None:
    found = await rows(http, admin_url, f"SELECT status FROM sys_invocation WHERE id = '{inv}'")
    return str(found[0]["status"]) if found else None


async def workload(http: aiohttp.ClientSession, ingress: str, admin_url: str) -> dict[str, str]:
    status, value, _ = await post(http, f"{ingress}/Counter2/a/add", 5)
    assert (status, value) == (200, 5)
    waiter = await send(http, f"{ingress}/Waiter/w/wait/send")
    await eventually(lambda: status_of(http, admin_url, waiter), lambda s: s == "suspended", what="waiter suspended")
    queued = await send(http, f"{ingress}/Waiter/w/wait/send")
    sleeper = await send(http, f"{ingress}/Sleeper/long/send")
    await eventually(lambda: status_of(http, admin_url, sleeper), lambda s: s == "suspended", what="sleeper suspended")
    return {"waiter": waiter, "queued": queued, "sleeper": sleeper}


async def test_sql_over_a_workload(
    engine_factory: EngineFactory, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, "http", deployment3, http, **QUERY_LIMITS) as engine:
        admin = engine.admin_url
        started = time.time()
        ids = await workload(http, engine.ingress_url, admin)

        # sys_invocation: one row per invocation, Restate's status names, who invoked it
        inv = {
            r["target"]: r
            for r in await rows(
                http,
                admin,
                "SELECT id, target, target_service_name, target_service_key, target_handler_name, "
                "target_service_ty, status, completion_result, invoked_by, invoked_by_id, invoked_by_target, "
                "journal_size, created_at, retry_count FROM sys_invocation WHERE status != 'pending'",
            )
        }
        assert set(inv) == {"Counter2/a/add", "Waiter/w/wait", "WaiterBox/w/put", "Sleeper/long"}
        assert inv["Counter2/a/add"]["status"] == "completed"
        assert inv["Counter2/a/add"]["completion_result"] == "success"
        assert inv["Counter2/a/add"]["target_service_ty"] == "virtual_object"
        assert inv["Counter2/a/add"]["invoked_by"] == "ingress"
        assert inv["Waiter/w/wait"]["id"] == ids["waiter"]
        assert inv["Waiter/w/wait"]["status"] == "suspended"
        assert inv["Sleeper/long"]["status"] == "suspended"
        assert inv["Sleeper/long"]["target_service_key"] is None
        put = inv["WaiterBox/w/put"]
        assert (put["invoked_by"], put["invoked_by_id"], put["invoked_by_target"]) == (
            "service",
            ids["waiter"],
            "Waiter/w/wait",
        )
        created = datetime.fromisoformat(inv["Sleeper/long"]["created_at"])  # 2026-01-02T03:04:05.678Z
        assert abs(created.timestamp() - started) < 60
        recent = await rows(
            http,
            admin,
            "SELECT count(*) AS n FROM sys_invocation "
            "WHERE created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-60 seconds')",
        )
        assert recent == [{"n": 5}]

        # sys_inbox / sys_keyed_service_status: the second waiter queues behind the lock holder
        assert await rows(http, admin, "SELECT service_name, service_key, id, sequence_number FROM sys_inbox") == [
            {"service_name": "Waiter", "service_key": "w", "id": ids["queued"], "sequence_number": 0}
        ]
        assert await rows(http, admin, "SELECT * FROM sys_keyed_service_status WHERE service_name = 'Waiter'") == [
            {"service_name": "Waiter", "service_key": "w", "invocation_id": ids["waiter"]}
        ]
        joined = await rows(
            http,
            admin,
            "SELECT i.id, v.status, v.target FROM sys_inbox i JOIN sys_invocation v ON v.id = i.id",
        )
        assert joined == [{"id": ids["queued"], "status": "pending", "target": "Waiter/w/wait"}]

        # sys_journal of the suspended invocations, entry by entry
        sleeper_journal = await rows(
            http,
            admin,
            'SELECT "index", entry_type, completed, sleep_wakeup_at FROM sys_journal '
            f"WHERE id = '{ids['sleeper']}' ORDER BY \"index\"",
        )
        assert [(e["index"], e["entry_type"]) for e in sleeper_journal] == [
            (0, "Command: Input"),
            (1, "Command: Sleep"),
        ]
        assert sleeper_journal[1]["completed"] is False
        wake = sleeper_journal[1]["sleep_wakeup_at"]
        assert wake > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started + 3500))
        waiter_journal = await rows(
            http,
            admin,
            "SELECT entry_type, invoked_target, invoked_id, entry_json FROM sys_journal "
            f"WHERE id = '{ids['waiter']}' ORDER BY \"index\"",
        )
        types = [e["entry_type"] for e in waiter_journal]
        assert types[:2] == ["Command: Input", "Command: OneWayCall"], types
        call = waiter_journal[1]
        assert (call["invoked_target"], call["invoked_id"]) == ("WaiterBox/w/put", put["id"])
        assert '"handler_name":"put"' in call["entry_json"]
        add_journal = await rows(
            http,
            admin,
            "SELECT j.entry_type, j.value FROM sys_journal j JOIN sys_invocation i ON i.id = j.id "
            "WHERE i.target = 'Counter2/a/add' ORDER BY j.\"index\"",
        )
        assert add_journal[0] == {"entry_type": "Command: Input", "value": "5"}
        assert add_journal[-1] == {"entry_type": "Command: Output", "value": "5"}
        assert {"entry_type": "Command: SetState", "value": "5"} in add_journal

        # state: values as text and as bytes (hex in JSON)
        state = await rows(http, admin, "SELECT * FROM state WHERE service_name = 'Counter2'")
        assert state == [
            {
                "service_name": "Counter2",
                "service_key": "a",
                "key": "count",
                "key_length": 5,
                "value_utf8": "5",
                "value": "35",
                "value_length": 1,
            }
        ]
        box = await rows(http, admin, "SELECT value_utf8 FROM state WHERE service_name = 'WaiterBox'")
        assert len(box) == 1 and "sign_1" in box[0]["value_utf8"]

        # schema tables and the Kafka extension's tables (empty: no subscriptions)
        services = await rows(http, admin, "SELECT name, ty, revision, public FROM sys_service ORDER BY name")
        assert {"name": "Waiter", "ty": "virtual_object", "revision": 1, "public": True} in services
        assert {"name": "Flow", "ty": "workflow", "revision": 1, "public": True} in services
        deployments = await rows(http, admin, "SELECT id, ty, endpoint FROM sys_deployment")
        assert len(deployments) == 1 and deployments[0]["endpoint"] == deployment3.url
        assert deployments[0]["ty"] == "http"
        assert await rows(http, admin, "SELECT * FROM sys_subscription") == []
        status, body = await query(http, admin, "SELECT * FROM sys_kafka_lag")
        assert status == 200 and body["rows"] == [] and "lag" in body["columns"]

        # GET /invocations/{id}: the row and the journal
        status, detail, _ = await request(http, "GET", f"{admin}/invocations/{ids['sleeper']}")
        assert status == 200, detail
        assert detail["invocation"]["status"] == "suspended"
        assert [e["entry_type"] for e in detail["journal"]] == ["Command: Input", "Command: Sleep"]
        assert "raw" not in detail["journal"][0]
        status, _, _ = await request(http, "GET", f"{admin}/invocations/{random_invocation_id()}")
        assert status == 404
        status, _, _ = await request(http, "GET", f"{admin}/invocations/nope")
        assert status == 400

        # errors: bad SQL, writes, several statements, a runaway query, too many rows, Accept
        for sql, code, fragment in [
            ("SELEC id FROM sys_invocation", 400, "syntax error"),
            ("SELECT nope FROM sys_invocation", 400, "no such column: nope"),
            ("DELETE FROM sys_invocation", 400, "read-only"),
            ("UPDATE state SET value_utf8 = 'x'", 400, "read-only"),
            ("SELECT 1; SELECT 2", 400, "one statement"),
            ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c", 400, "0.3s"),
            ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10001) SELECT x FROM c", 413, ""),
        ]:
            status, body = await query(http, admin, sql)
            assert status == code and fragment in body["message"], (sql, status, body)
        status, body, _ = await post(http, f"{admin}/query", {"sql": "SELECT 1"})
        assert status == 400 and "query" in body["message"]
        status, body = await query(http, admin, "SELECT 1 AS one", accept="application/vnd.apache.arrow.stream")
        assert status == 406
        status, body = await query(http, admin, "SELECT 1 AS one", accept="*/*")
        assert (status, body["rows"]) == (200, [{"one": 1}])
        status, body = await query(http, admin, "SELECT 2 AS two FROM state LIMIT 1")
        assert status == 200  # the /v2.. prefixes serve it too:
        status, body, _ = await post(http, f"{admin}/v3/query", {"query": "SELECT 3 AS three"})
        assert (status, body["rows"]) == (200, [{"three": 3}])


async def test_state_editing_through_the_log(
    engine_factory: EngineFactory, deployment3: DeploymentProcess, http: aiohttp.ClientSession
) -> None:
    async with engine3(engine_factory, "http", deployment3, http) as engine:
        admin, ingress = engine.admin_url, engine.ingress_url
        ids = await workload(http, ingress, admin)
        url = f"{admin}/services/Counter2/state"

        status, body, _ = await request(http, "PATCH", url, {"object_key": "a", "set": {"count": "7", "note": '"x"'}})
        assert (status, body) == (200, {}), body
        assert await counter(http, ingress, "a") == 7  # the handler reads the edited state
        status, body, _ = await request(http, "PATCH", url, {"object_key": "a", "clear": ["note"]})
        assert status == 200, body

        # Optimistic concurrency with Restate's version of the state the client read.
        status, body, _ = await post(http, url, {"object_key": "a", "new_state": {"count": "1"}, "version": "stale"})
        assert status == 409 and "changed since version" in body["message"]
        version = state_version([(b"count", b"7")])
        status, body, _ = await post(
            http, url, {"object_key": "a", "new_state": {"count": [52, 50], "seen": "[1]"}, "version": version}
        )
        assert status == 202, body
        state = await rows(http, admin, "SELECT key, value_utf8 FROM state WHERE service_key = 'a' ORDER BY key")
        assert state == [{"key": "count", "value_utf8": "42"}, {"key": "seen", "value_utf8": "[1]"}]

        # One writer per key: refused while an invocation holds the key's lock.
        status, body, _ = await request(
            http, "PATCH", f"{admin}/services/Waiter/state", {"object_key": "w", "set": {"x": "1"}}
        )
        assert status == 409 and ids["waiter"] in body["message"]
        status, body, _ = await request(
            http, "PATCH", f"{admin}/services/Waiter/state", {"object_key": "free", "set": {"x": "1"}}
        )
        assert status == 200, body

        for target, payload, code in [
            ("Nope", {"object_key": "a", "set": {"x": "1"}}, 404),
            ("Sleeper", {"object_key": "a", "set": {"x": "1"}}, 400),
            ("Counter2", {"object_key": "a"}, 400),
            ("Counter2", {"object_key": "a", "set": {"x": [256]}}, 400),
            ("Counter2", {"set": {"x": "1"}}, 400),
        ]:
            status, body, _ = await request(http, "PATCH", f"{admin}/services/{target}/state", payload)
            assert status == code, (target, payload, status, body)

    # Durable: the edits were log records; they are in the tables after a restart.
    async with engine_factory() as engine:
        state = await rows(http, engine.admin_url, "SELECT service_key, key, value_utf8 FROM state "
                           "WHERE service_name IN ('Counter2', 'Waiter') ORDER BY service_key, key")  # fmt: skip
        assert state == [
            {"service_key": "a", "key": "count", "value_utf8": "42"},
            {"service_key": "a", "key": "seen", "value_utf8": "[1]"},
            {"service_key": "free", "key": "x", "value_utf8": "1"},
        ]


async def test_snapshot_and_concurrency_limits(engine_factory: EngineFactory, http: aiohttp.ClientSession) -> None:
    limits = {"query_snapshot_rows_limit": 3, "query_concurrency_limit": 1, "query_timeout": "1s"}
    async with engine_factory(app=APP3_SPEC, admin=limits) as engine:
        admin = engine.admin_url
        status, body = await query(http, admin, "SELECT count(*) AS n FROM sys_service")  # app3 has 10 services
        assert status == 413 and "3 rows" in body["message"]
        assert await rows(http, admin, "SELECT count(*) AS n FROM sys_deployment") == [{"n": 1}]

        runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
        first = asyncio.create_task(query(http, admin, runaway))
        await asyncio.sleep(0.2)
        status, body, headers = await post(http, f"{admin}/query", {"query": "SELECT 1"})
        assert status == 429 and headers.get("Retry-After") == "1", body
        assert (await first)[0] == 400
        assert await rows(http, admin, "SELECT 1 AS one") == [{"one": 1}]

"""``capstan invocations|kv|sql`` against a live ``capstan serve`` process and a real SDK deployment (app3 behind
hypercorn, HTTP/1.1 request-response, so awaiting handlers suspend)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import CapstanProcess
from tests.e2e.test_cli_live import capstan
from tests.services.fixtures import DeploymentProcess

pytestmark = pytest.mark.e2e


def ingress(server: CapstanProcess, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.ingress_url + path, data=data or b"", method="POST")
    if data is not None:
        req.add_header("content-type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        text = resp.read().decode()
        return resp.status, json.loads(text) if text else None


def sql_rows(admin: list[str], query: str) -> list[dict[str, Any]]:
    out = capstan("sql", query, "--json", *admin)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout)["rows"])


def wait_status(admin: list[str], inv: str, wanted: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        found = sql_rows(admin, f"SELECT status FROM sys_invocation WHERE id = '{inv}'")
        if found and found[0]["status"] == wanted:
            return
        assert time.monotonic() < deadline, f"{inv} not {wanted}: {found}"
        time.sleep(0.1)


def test_operate_a_live_engine(tmp_path: Path, deployment3: DeploymentProcess) -> None:
    server = CapstanProcess(tmp_path / "data")
    server.start()
    try:
        admin = ["--admin-url", server.admin_url]
        registered = capstan("deployments", "register", deployment3.url, *admin)
        assert registered.returncode == 0, registered.stderr

        assert ingress(server, "/Counter2/a/add", 5) == (200, 5)
        waiter = ingress(server, "/Waiter/w/wait/send")[1]["invocationId"]
        wait_status(admin, waiter, "suspended")
        queued = ingress(server, "/Waiter/w/wait/send")[1]["invocationId"]
        sleeper = ingress(server, "/Sleeper/long/send")[1]["invocationId"]
        wait_status(admin, sleeper, "suspended")

        # sql: a table by default, the JSON answer with --json
        out = capstan("sql", "SELECT target, status FROM sys_invocation ORDER BY target", *admin)
        assert out.returncode == 0, out.stderr
        lines = [line.split() for line in out.stdout.splitlines()]
        assert lines[0] == ["target", "status"]
        assert ["Sleeper/long", "suspended"] in lines and ["Waiter/w/wait", "pending"] in lines
        assert lines[-1] == ["(5", "rows)"]
        bad = capstan("sql", "SELECT * FROM nowhere", *admin)
        assert bad.returncode == 1 and "400" in bad.stderr and "no such table: nowhere" in bad.stderr

        # invocations list: not completed by default, filters, --json
        out = capstan("invocations", "list", *admin)
        assert out.returncode == 0, out.stderr
        assert {waiter, queued, sleeper} <= set(out.stdout.split())
        assert "Counter2/a/add" not in out.stdout
        listed = json.loads(capstan("invocations", "list", "--all", "--json", *admin).stdout)["rows"]
        assert len(listed) == 5
        by_key = json.loads(capstan("invocations", "ls", "--service", "Waiter", "--key", "w", "--json", *admin).stdout)
        assert {r["id"]: r["status"] for r in by_key["rows"]} == {waiter: "suspended", queued: "pending"}
        suspended = capstan("invocations", "list", "--status", "suspended,paused", "--oldest-first", *admin)
        ids = [line.split()[0] for line in suspended.stdout.splitlines()[1:]]
        assert ids == [waiter, sleeper]
        assert "No invocations" in capstan("invocations", "list", "--all", "--older-than", "1h", *admin).stdout
        recent = json.loads(capstan("invocations", "list", "--all", "--newer-than", "1h", "--json", *admin).stdout)
        assert len(recent["rows"]) == 5

        # invocations describe: status and the journal entry by entry
        out = capstan("invocations", "describe", sleeper, *admin)
        assert out.returncode == 0, out.stderr
        assert "Sleeper/long" in out.stdout and "suspended" in out.stdout
        assert "Journal (2 entries):" in out.stdout
        assert "Command: Sleep" in out.stdout and "until 20" in out.stdout
        out = capstan("invocations", "describe", waiter, *admin)
        assert "Command: OneWayCall" in out.stdout and "-> WaiterBox/w/put" in out.stdout
        detail = json.loads(capstan("invocations", "get", waiter, "--json", *admin).stdout)
        assert detail["invocation"]["id"] == waiter
        done = json.loads(capstan("invocations", "list", "--service", "Counter2", "--all", "--json", *admin).stdout)
        added = capstan("invocations", "describe", done["rows"][0]["id"], *admin).stdout
        assert "completed (success)" in added and "Command: SetState" in added and "key count = 5" in added

        # kv: read, set, refuse while the key is locked, clear
        out = capstan("kv", "get", "Counter2", "a", *admin)
        assert out.stdout.split() == ["KEY", "VALUE", "count", "5"]
        assert capstan("kv", "get", "Counter2", "a", "count", *admin).stdout == "5\n"
        missing = capstan("kv", "get", "Counter2", "a", "nope", *admin)
        assert missing.returncode == 1 and "no state entry 'nope'" in missing.stderr
        out = capstan("kv", "set", "Counter2", "a", "count", "41", *admin)
        assert out.returncode == 0, out.stderr
        assert ingress(server, "/Counter2/a/add", 1) == (200, 42)
        out = capstan("kv", "set", "Counter2", "a", "label", "plain text", "--raw", *admin)
        assert out.returncode == 0, out.stderr
        assert capstan("kv", "get", "Counter2", "a", "label", *admin).stdout == "plain text\n"
        locked = capstan("kv", "set", "Waiter", "w", "x", "1", *admin)
        assert locked.returncode == 1 and "409" in locked.stderr and waiter in locked.stderr
        assert capstan("kv", "clear", "Counter2", "a", "label", *admin).returncode == 0
        assert json.loads(capstan("kv", "get", "Counter2", "a", "--json", *admin).stdout)["rows"] == [
            {"key": "count", "value_utf8": "42", "value": "3432"}
        ]
        assert capstan("kv", "clear", "Counter2", "a", *admin).returncode == 0
        assert "No state for Counter2/a." in capstan("kv", "get", "Counter2", "a", *admin).stdout
        stateless = capstan("kv", "set", "Sleeper", "a", "x", "1", *admin)
        assert stateless.returncode == 1 and "has no state" in stateless.stderr

        # invocations pause / resume / cancel / kill / purge
        out = capstan("invocations", "pause", sleeper, *admin)
        assert out.returncode == 0 and f"Paused {sleeper}" in out.stdout, out.stderr
        wait_status(admin, sleeper, "paused")
        assert capstan("invocations", "resume", sleeper, *admin).returncode == 0
        wait_status(admin, sleeper, "suspended")
        out = capstan("invocations", "cancel", queued, *admin)  # inboxed: cancelled at once
        assert out.returncode == 0, out.stderr
        out = capstan("invocations", "cancel", "--kill", waiter, *admin)
        assert out.returncode == 0 and f"Killed {waiter}" in out.stdout, out.stderr
        finished = {r["id"]: r for r in sql_rows(admin, "SELECT id, status, completion_failure FROM sys_invocation")}
        assert finished[queued]["completion_failure"] == "[409] canceled"
        assert finished[waiter]["completion_failure"] == "[409] killed"
        out = capstan("invocations", "purge", queued, waiter, *admin)
        assert out.returncode == 0, out.stderr
        gone = capstan("invocations", "describe", waiter, *admin)
        assert gone.returncode == 1 and "404" in gone.stderr
        running = capstan("invocations", "purge", sleeper, *admin)
        assert running.returncode == 1 and "409" in running.stderr
        assert capstan("invocations", "kill", sleeper, *admin).returncode == 0
    finally:
        assert server.stop() == 0, server.logs()

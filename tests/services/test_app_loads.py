"""The SDK test deployment starts under hypercorn, answers discovery with every service, and stops cleanly."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.services.fixtures import running_deployment, start_deployment

EXPECTED = {
    "Greeter": ("SERVICE", {"greet"}),
    "Counter": ("VIRTUAL_OBJECT", {"add", "add_logged", "add_slow", "reset", "get"}),
    "Steps": ("SERVICE", {"one", "three", "nine"}),
    "Boom": ("SERVICE", {"teapot"}),
    "Flaky": ("SERVICE", {"fail_twice", "always_fails"}),
    "StateOps": ("VIRTUAL_OBJECT", {"set", "clear", "clear_all", "get_all"}),
    "Slow": ("SERVICE", {"hang"}),
    "Limited": ("SERVICE", {"always_fails", "killed_after_four"}),
    "ShortMemory": ("VIRTUAL_OBJECT", {"bump"}),
    "LazyStore": ("VIRTUAL_OBJECT", {"set", "take", "keys"}),
    "Hidden": ("SERVICE", {"secret"}),
}

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_discover_lists_all_services() -> None:
    dep = start_deployment()
    try:
        assert dep.url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(
            f"{dep.url}/discover", headers={"accept": "application/vnd.restate.endpointmanifest.v4+json"}
        )
        with _OPENER.open(req, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/vnd.restate.endpointmanifest.v4+json"
            manifest = json.loads(resp.read())
    finally:
        dep.stop()

    # HTTP/1.1 discovery advertises the request/response protocol.
    assert manifest["protocolMode"] == "REQUEST_RESPONSE"
    services = {s["name"]: s for s in manifest["services"]}
    assert set(services) == set(EXPECTED)
    for name, (ty, handlers) in EXPECTED.items():
        assert services[name]["ty"] == ty
        assert {h["name"] for h in services[name]["handlers"]} == handlers
    counter_handlers = {h["name"]: h for h in services["Counter"]["handlers"]}
    assert counter_handlers["get"]["ty"] == "SHARED"
    assert counter_handlers["add"]["ty"] == "EXCLUSIVE"

    assert not dep.is_running()
    assert not _pid_alive(dep.pid)
    assert not dep.log_path.exists()


def test_kill_and_restart_on_same_port() -> None:
    with running_deployment() as first:
        port = first.port
        first.kill()
        assert not _pid_alive(first.pid)
        with running_deployment(port=port) as second:
            assert second.url == first.url
            with _OPENER.open(f"{second.url}/health", timeout=5) as resp:
                assert resp.status == 200
    assert not second.is_running()


def test_bad_app_spec_fails_fast() -> None:
    from tests.services.fixtures import DeploymentStartError

    with pytest.raises(DeploymentStartError, match="exited"):
        start_deployment("tests.services.no_such_module:app", timeout=20)

"""Admin API bearer-token auth (``admin.auth_token``), against a real engine on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from engine.config import load_config
from engine.errors import ConfigError
from ingress_kafka.testing import Harness
from tests.conftest import EngineFactory

TOKEN = "s3cr3t-admin-token"
AUTH = {"admin": {"auth_token": TOKEN}}

# One request per kind of admin route, including the Kafka extension's and an unknown path.
GUARDED = [
    ("GET", "/deployments", None),
    ("GET", "/v2/deployments", None),
    ("GET", "/services", None),
    ("PATCH", "/services/Nope", {"public": False}),
    ("GET", "/openapi", None),
    ("GET", "/version", None),
    ("GET", "/metrics", None),
    ("POST", "/query", {"query": "SELECT 1 AS one"}),
    ("GET", "/kafka-clusters", None),
    ("GET", "/subscriptions", None),
    ("PATCH", "/invocations/inv_1/cancel", None),
    ("GET", "/no/such/route", None),
]


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_every_route_but_health_needs_the_token(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with engine_factory(**AUTH) as engine:
            base = engine.admin_url
            for method, path, body in GUARDED:
                status, headers, text = await _call(http, method, base + path, body)
                assert status == 401, (path, status, text)
                assert headers["WWW-Authenticate"] == 'Bearer realm="capstan-admin"'
                assert "Authorization: Bearer" in text and headers["Content-Type"].startswith("application/json")
                for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer"):
                    status, headers, text = await _call(http, method, base + path, body, {"Authorization": wrong})
                    assert status == 401, (path, wrong, status)
                    assert headers["WWW-Authenticate"].startswith('Bearer realm="capstan-admin"')
                status, _, text = await _call(http, method, base + path, body, {"Authorization": f"Bearer {TOKEN}"})
                assert status != 401, (path, text)
            status, headers, text = await _call(http, "GET", base + "/services", None, {"Authorization": "Bearer x"})
            assert '{"message": "invalid bearer token"}' == text
            assert headers["WWW-Authenticate"] == 'Bearer realm="capstan-admin", error="invalid_token"'
            ok = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive (RFC 7235)
            assert (await _call(http, "GET", base + "/deployments", None, ok))[0] == 200
            assert (await _call(http, "POST", base + "/query", {"query": "SELECT 1 AS one"}, ok))[0] == 200
            assert (await _call(http, "GET", base + "/metrics", None, ok))[0] == 200
            # probes need no token, nor do the web UI's static files (its API calls do)
            for path in ("/health", "/v2/health", "/v4/health", "/ui/", "/ui/app.js"):
                assert (await _call(http, "GET", base + path, None))[0] == 200, path
            assert (await _call(http, "GET", base + "/ui/secret.txt", None))[0] == 401
            # the ingress is not the admin API: no token there
            async with http.post(engine.ingress_url + "/Nope/x") as resp:
                assert resp.status == 404
    assert TOKEN not in caplog.text


async def test_no_token_configured_means_open(engine_factory: EngineFactory, http: aiohttp.ClientSession) -> None:
    async with engine_factory() as engine:
        assert (await _call(http, "GET", engine.admin_url + "/deployments", None))[0] == 200


async def test_kafka_test_harness_sends_the_token(engine_factory: EngineFactory, http: aiohttp.ClientSession) -> None:
    async with engine_factory(**AUTH) as engine:
        harness = Harness(engine, http, "127.0.0.1:1")
        assert await harness.admin("GET", "/kafka-clusters") == {"clusters": []}


def test_token_sources(tmp_path: Path) -> None:
    env = load_config(environ={"CAPSTAN__ADMIN__AUTH_TOKEN": TOKEN})
    assert env.admin.auth_token is not None and env.admin.auth_token.get_secret_value() == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    from_file = load_config(environ={"CAPSTAN__ADMIN__AUTH_TOKEN_FILE": str(token_file)})
    assert from_file.admin.auth_token is not None and from_file.admin.auth_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(from_file) and TOKEN not in str(from_file.admin)
    with pytest.raises(ConfigError, match="not both"):
        load_config(environ={}, overrides={"admin": {"auth_token": TOKEN, "auth_token_file": str(token_file)}})
    with pytest.raises(ConfigError, match=r"cannot read admin\.auth_token_file"):
        load_config(environ={}, overrides={"admin": {"auth_token_file": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match="visible ASCII"):
        load_config(environ={}, overrides={"admin": {"auth_token": "has space"}})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="visible ASCII"):
        load_config(environ={}, overrides={"admin": {"auth_token_file": str(empty)}})


def test_config_errors_never_echo_values() -> None:
    """A token under a misspelled key is an error; the message names the key, never the value."""
    with pytest.raises(ConfigError) as info:
        load_config(environ={"CAPSTAN__ADMIN__AUTH_TOKN": TOKEN})
    assert "auth_tokn" in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={"admin": {"auth_token": f"{TOKEN} x"}})
    assert TOKEN not in str(info.value)

"""Request signing towards deployments (``invoker.request_identity_private_key_pem_file``) against the official
Python SDK configured with ``identity_keys`` (tests/services/signed_app.py), over HTTP (hypercorn) and in-process.

The SDK answers 401 to unsigned requests: registration fails without signing, an invocation's attempts fail (and
are retried) when the engine runs without its key, and everything works with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.errors import ConfigError
from engine.invoker.identity import public_key_id
from tests.conftest import EngineFactory
from tests.services.fixtures import DeploymentProcess, running_deployment
from tests.services.fixtures3 import eventually, post, send
from tests.services.signed_app import IDENTITY_KEY_ENV

SIGNED_APP = "tests.services.signed_app:app"
SIGNED_APP_IN_PROCESS = "tests.services.signed_app:from_env.app"


class Identity:
    def __init__(self, directory: Path) -> None:
        key = Ed25519PrivateKey.generate()
        self.pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.path = directory / "identity.pem"
        self.path.write_bytes(self.pem)
        self.key_id = public_key_id(key.public_key())
        # The base64 body of the PEM: what must never appear in a log.
        self.secret = b"".join(self.pem.splitlines()[1:-1]).decode()

    @property
    def signing(self) -> dict[str, Any]:
        return {"invoker": {"request_identity_private_key_pem_file": str(self.path)}}


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    return Identity(tmp_path)


@pytest.fixture
def signed_deployment(identity: Identity) -> Iterator[DeploymentProcess]:
    with running_deployment(SIGNED_APP, env={IDENTITY_KEY_ENV: identity.key_id}) as dep:
        yield dep


async def _rows(http: aiohttp.ClientSession, admin_url: str, sql: str) -> list[dict[str, Any]]:
    status, body, _ = await post(http, f"{admin_url}/query", {"query": sql})
    assert status == 200, body
    return list(body["rows"])


async def test_http_deployment_requires_signed_requests(
    engine_factory: EngineFactory,
    identity: Identity,
    signed_deployment: DeploymentProcess,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = signed_deployment.url
    async with engine_factory() as engine:  # no key: the SDK rejects discovery
        status, body, _ = await post(http, f"{engine.admin_url}/deployments", {"uri": url})
        assert status == 400 and "answered 401" in body["message"], body

    with caplog.at_level(logging.DEBUG):
        async with engine_factory(**identity.signing) as engine:
            assert engine.request_signer is not None and engine.request_signer.key_id == identity.key_id
            status, body, _ = await post(http, f"{engine.admin_url}/deployments", {"uri": url})
            assert status == 201, body
            assert (await post(http, f"{engine.ingress_url}/Greeter/greet", "signed"))[:2] == (200, "Hello signed!")
            # request-response over HTTP/1.1: one attempt per step, each one signed
            assert (await post(http, f"{engine.ingress_url}/Steps/three", "x"))[:2] == (200, "x-1-2-3")
            # a deployment registered with a path prefix: the audience stays /discover, /invoke/... (as the SDK
            # checks the path below its mount point)
            status, body, _ = await post(
                http, f"{engine.admin_url}/deployments", {"uri": url + "/prefix", "force": True}
            )
            assert status == 201, body
            assert (await post(http, f"{engine.ingress_url}/Counter/k/add", 2))[:2] == (200, 2)
    assert identity.key_id in caplog.text  # the public key is printed at start-up
    assert identity.secret not in caplog.text

    # The same data without the key: attempts are answered 401 and retried (backing off) ...
    async with engine_factory() as engine:
        inv = await send(http, f"{engine.ingress_url}/Counter/k/add/send", 3)
        found = await eventually(
            lambda: _rows(http, engine.admin_url, f"SELECT * FROM sys_invocation WHERE id = '{inv}'"),
            lambda r: bool(r) and r[0]["retry_count"] >= 2,
            what="attempts rejected and retried",
        )
        assert "401" in found[0]["last_failure"] and "request identity" in found[0]["last_failure"], found
        assert found[0]["status"] in ("backing-off", "running"), found
    # ... and complete once the engine signs again.
    async with engine_factory(**identity.signing) as engine:
        await eventually(
            lambda: post(http, f"{engine.ingress_url}/Counter/k/get"),
            lambda reply: reply[:2] == (200, 5),
            what="the retried invocation completed",
        )


async def test_in_process_app_requires_signed_requests(
    engine_factory: EngineFactory,
    identity: Identity,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(IDENTITY_KEY_ENV, identity.key_id)
    with pytest.raises(ConfigError, match="answered 401"):
        async with engine_factory(app=SIGNED_APP_IN_PROCESS):
            pass
    async with engine_factory(app=SIGNED_APP_IN_PROCESS, **identity.signing) as engine:
        assert (await post(http, f"{engine.ingress_url}/Greeter/greet", "asgi"))[:2] == (200, "Hello asgi!")
        replies = await asyncio.gather(*(post(http, f"{engine.ingress_url}/Steps/three", str(i)) for i in range(3)))
        assert [r[:2] for r in replies] == [(200, f"{i}-1-2-3") for i in range(3)]


async def test_bad_key_file_stops_start_up(engine_factory: EngineFactory, tmp_path: Path) -> None:
    missing = {"invoker": {"request_identity_private_key_pem_file": str(tmp_path / "nope.pem")}}
    with pytest.raises(ConfigError, match="cannot read the request identity key"):
        async with engine_factory(**missing):
            pass

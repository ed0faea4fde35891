"""Secrets in Kafka cluster properties and subscription options never leave the engine: not in any admin API answer
(``/kafka-clusters``, ``/subscriptions``, ``/query`` ``sys_subscription``, ``/metrics``), not in CLI output, not in
the engine's logs. Neither do the admin token and the request identity key.

No broker is needed: the cluster points at a closed port, so its consumer fails and retries (and logs about it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subscriptions.models import REDACTED, is_secret_property, redact_properties
from tests.conftest import EngineFactory

TOKEN = "admin-t0ken-value"
SECRETS = {
    "sasl.password": "pw-sasl-1",
    "ssl.key.password": "pw-sslkey-2",
    "ssl.keystore.password": "pw-keystore-3",
    "sasl.oauthbearer.client.secret": "pw-oauth-4",
    "sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required password="pw-jaas-5";',
    "ssl.key.pem": "pw-pem-6",
    "custom.api.key": "pw-apikey-7",
    "my.access.token": "pw-token-8",
}
SECRET_VALUES = ["pw-sasl-1", "pw-sslkey-2", "pw-keystore-3", "pw-oauth-4", "pw-jaas-5", "pw-pem-6", "pw-apikey-7",
                 "pw-token-8", "pw-sub-9", "pw-registry-10"]  # fmt: skip
PLAIN = {
    "bootstrap.servers": "127.0.0.1:1",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "alice",
}


def test_what_counts_as_a_secret() -> None:
    for name in [*SECRETS, "SASL.PASSWORD", "ssl.keystore.location", "sasl.kerberos.keytab", "sasl.oauthbearer.config"]:
        assert is_secret_property(name), name
    for name in [*PLAIN, "group.id", "auto.offset.reset", "capstan.key.format", "capstan.key.schema",
                 "capstan.value.schema", "capstan.dlq.topic", "ssl.certificate.pem", "ssl.ca.location"]:  # fmt: skip
        assert not is_secret_property(name), name
    shown = redact_properties({"capstan.schema.registry.url": "https://bob:pw@registry:8081/x", "a": "b"})
    assert shown == {"a": "b", "capstan.schema.registry.url": f"https://bob:{REDACTED}@registry:8081/x"}


async def _cli(admin_url: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", *args, "--admin-url", admin_url, "--token", TOKEN,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (args, out, err)
    return out.decode() + err.decode()


async def test_no_secret_in_answers_cli_output_or_logs(
    engine_factory: EngineFactory, http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "identity.pem").write_bytes(pem)
    pem_body = b"".join(pem.splitlines()[1:-1]).decode()
    overrides: dict[str, Any] = {
        "app": "tests.services.app:app",
        "admin": {"auth_token": TOKEN},
        "invoker": {"request_identity_private_key_pem_file": str(tmp_path / "identity.pem")},
        "ingress_kafka": {"restart_max_backoff": "200ms"},
    }
    answers: list[str] = []
    headers = {"authorization": f"Bearer {TOKEN}"}

    async def admin(method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with http.request(method, engine.admin_url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            assert resp.status == expect, (method, path, resp.status, text)
            answers.append(text)
            return json.loads(text) if text and resp.content_type == "application/json" else text

    with caplog.at_level(logging.DEBUG):
        async with engine_factory(**overrides) as engine:
            cluster = await admin("POST", "/kafka-clusters", {"name": "sec", "properties": {**PLAIN, **SECRETS}}, 201)
            assert cluster["properties"] == {**PLAIN, **dict.fromkeys(SECRETS, REDACTED)}
            await admin("POST", "/kafka-clusters", {"name": "sec", "properties": {**PLAIN, **SECRETS}})  # same again
            options = {
                "sasl.password": "pw-sub-9",
                "capstan.schema.registry.url": "http://reg:pw-registry-10@127.0.0.1:1",
                "capstan.value.format": "avro",
                "auto.offset.reset": "earliest",
            }
            body = {"source": "kafka://sec/orders", "sink": "service://Counter/add", "options": options}
            sub = await admin("POST", "/subscriptions", body, 201)
            assert sub["options"]["sasl.password"] == REDACTED
            assert sub["options"]["capstan.schema.registry.url"] == f"http://reg:{REDACTED}@127.0.0.1:1"
            assert sub["options"]["capstan.value.format"] == "avro"
            await admin("POST", "/subscriptions", body)  # idempotent: the existing one, redacted
            # let the consumer try to connect, fail and log about it
            for _ in range(100):
                got = await admin("GET", f"/subscriptions/{sub['id']}")
                if (got.get("status") or {}).get("last_error"):
                    break
                await asyncio.sleep(0.05)
            assert got["status"]["last_error"], got  # the consumer ran with these properties and failed
            await admin("GET", "/kafka-clusters")
            await admin("GET", "/kafka-clusters/sec")
            await admin("GET", "/subscriptions")
            await admin("GET", "/v4/subscriptions")
            rows = await admin("POST", "/query", {"query": "SELECT * FROM sys_subscription"})
            assert json.loads(rows["rows"][0]["options"])["sasl.password"] == REDACTED
            await admin("GET", "/metrics")
            await admin("PATCH", "/kafka-clusters/sec", {"properties": {**PLAIN, **SECRETS, "client.id": "x"}})
            outputs = [
                await _cli(engine.admin_url, "kafka-clusters", "describe", "sec"),
                await _cli(engine.admin_url, "kafka-clusters", "list", "--json"),
                await _cli(engine.admin_url, "subscriptions", "describe", sub["id"]),
                await _cli(engine.admin_url, "subscriptions", "list", "--json"),
                await _cli(engine.admin_url, "sql", "SELECT options FROM sys_subscription"),
            ]
            assert "sasl.password = ***" in outputs[0]
    everything = "\n".join([*answers, *outputs, caplog.text])
    for value in [*SECRET_VALUES, TOKEN, pem_body]:
        assert value not in everything, value

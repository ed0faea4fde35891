"""The `capstan` CLI against a live `capstan serve` whose admin API needs a bearer token (CAPSTAN__ADMIN__AUTH_TOKEN),
and request signing configured by environment: the public key is printed at start-up, the secrets never are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.invoker.identity import public_key_id
from tests.e2e.procs import REPO_ROOT, CapstanProcess

pytestmark = pytest.mark.e2e

TOKEN = "cli-test-token-5f2a"


def capstan(*args: str, token_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN")}
    if token_env is not None:
        env["CAPSTAN_ADMIN_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def test_cli_with_and_without_the_admin_token(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "identity.pem").write_bytes(pem)
    server = CapstanProcess(
        tmp_path / "data",
        env={
            "CAPSTAN__ADMIN__AUTH_TOKEN": TOKEN,
            "CAPSTAN__INVOKER__REQUEST_IDENTITY_PRIVATE_KEY_PEM_FILE": str(tmp_path / "identity.pem"),
        },
    )
    server.start()  # waits on /health, which needs no token
    try:
        admin = ["--admin-url", server.admin_url]
        missing = capstan("services", "list", *admin)
        assert missing.returncode == 1
        assert "401 Unauthorized" in missing.stderr and "Authorization: Bearer" in missing.stderr, missing.stderr
        wrong = capstan("services", "list", *admin, "--token", "nope")
        assert wrong.returncode == 1 and "invalid bearer token" in wrong.stderr, wrong.stderr
        wrong_env = capstan("sql", "SELECT 1 AS one", *admin, token_env="nope")
        assert wrong_env.returncode == 1 and "401" in wrong_env.stderr

        by_flag = capstan("services", "list", *admin, "--token", TOKEN, "--json")
        assert by_flag.returncode == 0, by_flag.stderr
        assert json.loads(by_flag.stdout) == {"services": []}
        by_env = capstan("sql", "SELECT 1 AS one", *admin, "--json", token_env=TOKEN)
        assert by_env.returncode == 0, by_env.stderr
        assert json.loads(by_env.stdout)["rows"] == [{"one": 1}]
        flag_wins = capstan("deployments", "list", *admin, "--token", TOKEN, token_env="nope")
        assert flag_wins.returncode == 0, flag_wins.stderr
        listed = capstan("kafka-clusters", "list", *admin, token_env=TOKEN)
        assert listed.returncode == 0 and "No Kafka clusters." in listed.stdout

        with pytest.raises(urllib.error.HTTPError) as scrape:
            urllib.request.urlopen(server.admin_url + "/metrics", timeout=5)  # Prometheus needs the token too
        assert scrape.value.code == 401
        assert scrape.value.headers["WWW-Authenticate"] == 'Bearer realm="capstan-admin"'
        scrape.value.close()
    finally:
        assert server.stop() == 0
    logs = server.log_path.read_text(errors="replace")
    assert public_key_id(key.public_key()) in logs  # printed at start-up for the SDKs' identity_keys
    assert TOKEN not in logs
    assert b"".join(pem.splitlines()[1:-1]).decode() not in logs

"""The `capstan` CLI against a live `capstan serve` process (started from a TOML config) and a real deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.procs import REPO_ROOT, CapstanProcess
from tests.services.fixtures import DeploymentProcess

pytestmark = pytest.mark.e2e


def capstan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_against_live_engine(tmp_path: Path, deployment: DeploymentProcess) -> None:
    server = CapstanProcess(tmp_path / "data")
    config = tmp_path / "capstan.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "from-toml"}"\nnum_partitions = 2\n[log]\nfsync = "fsync"\n'
        '[invoker.retry_policy]\ninitial_interval = "50ms"\n'
    )
    # --data-dir on the command line overrides the file's data_dir; the rest comes from the file
    server.extra_args = ["--config", str(config)]
    server.start()
    try:
        admin = ["--admin-url", server.admin_url]
        out = capstan("deployments", "register", deployment.url, *admin)
        assert out.returncode == 0, out.stderr
        assert "dp_" in out.stdout and "Counter" in out.stdout
        again = capstan("deployments", "register", deployment.url, *admin, "--json")
        assert again.returncode == 0, again.stderr
        dep_id = json.loads(again.stdout)["id"]
        assert dep_id in out.stdout  # registering the same URI again is idempotent

        listed = capstan("deployments", "list", *admin, "--json")
        assert listed.returncode == 0
        assert [d["id"] for d in json.loads(listed.stdout)["deployments"]] == [dep_id]
        services = capstan("services", "list", *admin)
        assert services.returncode == 0
        for name in ("Greeter", "Counter", "Steps"):
            assert name in services.stdout
        described = capstan("services", "describe", "Counter", *admin, "--json")
        assert json.loads(described.stdout)["ty"] == "VirtualObject"
        missing = capstan("services", "describe", "Nope", *admin)
        assert missing.returncode == 1 and "404" in missing.stderr

        assert (tmp_path / "data" / "rocksdb").is_dir()
        assert not (tmp_path / "from-toml").exists()
        assert len(list((tmp_path / "data" / "log").iterdir())) == 2  # num_partitions from the TOML file

        no_force = capstan("deployments", "remove", dep_id, *admin)
        assert no_force.returncode == 1 and "501" in no_force.stderr
        removed = capstan("deployments", "remove", dep_id, "--force", *admin)
        assert removed.returncode == 0, removed.stderr
        assert json.loads(capstan("services", "list", *admin, "--json").stdout)["services"] == []
    finally:
        assert server.stop() == 0, server.logs()


def test_cli_reports_unreachable_admin() -> None:
    out = capstan("services", "list", "--admin-url", "http://127.0.0.1:1")
    assert out.returncode == 1
    assert "cannot reach the admin API" in out.stderr


def test_serve_rejects_a_taken_port(tmp_path: Path) -> None:
    first = CapstanProcess(tmp_path / "a")
    first.start()
    try:
        out = subprocess.run(
            [
                sys.executable, "-m", "engine", "serve", "--data-dir", str(tmp_path / "b"),
                "--ingress-address", f"127.0.0.1:{first.ingress_port}", "--admin-address", "127.0.0.1:0",
            ],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2
        assert "cannot listen on" in out.stderr
    finally:
        first.stop()


def test_serve_refuses_a_different_partition_count(tmp_path: Path) -> None:
    server = CapstanProcess(tmp_path / "data", extra_args=["--partitions", "2"])
    server.start()
    server.stop()
    out = subprocess.run(
        [
            sys.executable, "-m", "engine", "serve", "--data-dir", str(tmp_path / "data"), "--partitions", "3",
            "--ingress-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "created with 2 partitions" in out.stderr

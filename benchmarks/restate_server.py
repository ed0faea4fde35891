"""Install and run the reference restate-server for ``benchmarks/side_by_side.py``.

``ensure_installed(cache_dir)`` runs ``npm install --prefix <cache_dir> @restatedev/restate-server@<VERSION>`` once
(it needs the network, so call it before entering the loopback-only namespace) and returns the path of the native
binary from the platform package (``@restatedev/restate-server-<os>-<arch>/bin/restate-server``). We start that
binary directly, not the ``node_modules/.bin`` node launcher, so the PID we hold (for CPU accounting and for
stopping) is the server itself.

``RestateServer`` writes a config with ``bind-ip = "127.0.0.1"`` and ``disable-telemetry = true`` (key names as
printed by ``restate-server --dump-config`` of 1.7.12), explicit loopback ports, a fresh ``base-dir``, and nothing
else: durability settings stay at their defaults (RocksDB WAL fsync on, ``rocksdb-disable-wal-fsync = false``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

VERSION = "1.7.12"
PACKAGE = "@restatedev/restate-server"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _platform_package() -> str:
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    return f"{PACKAGE}-{platform.system().lower()}-{arch}"


def binary_path(cache_dir: Path) -> Path:
    return cache_dir / "node_modules" / _platform_package() / "bin" / "restate-server"


def ensure_installed(cache_dir: Path) -> Path:
    """Install restate-server ``VERSION`` into ``cache_dir`` unless it is there already; return the binary."""
    binary = binary_path(cache_dir)
    if binary.exists() and installed_version(binary) == VERSION:
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    # --ignore-scripts: the wrapper package's only install script is a usage-reporting (scarf) postinstall.
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
            str(cache_dir),
            f"{PACKAGE}@{VERSION}",
        ],
        check=True,
    )
    if not binary.exists():
        raise RuntimeError(f"npm install finished but {binary} does not exist")
    return binary


def installed_version(binary: Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.split()
    return parts[-1] if parts else None


class RestateServer:
    """One restate-server process on 127.0.0.1 with a fresh base dir (removed by ``stop()``)."""

    def __init__(self, binary: Path, base_dir: Path, *, ingress_port: int, admin_port: int, fabric_port: int) -> None:
        self.binary = binary
        self.base_dir = base_dir
        self.ingress_port = ingress_port
        self.admin_port = admin_port
        self.fabric_port = fabric_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base_dir.with_suffix(".log")

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        config = self.base_dir / "restate.toml"
        config.write_text(
            "\n".join(
                [
                    f'base-dir = "{self.base_dir}"',
                    'node-name = "bench"',
                    'bind-ip = "127.0.0.1"',
                    f"bind-port = {self.fabric_port}",
                    "disable-telemetry = true",
                    "",
                    "[ingress]",
                    f'bind-address = "127.0.0.1:{self.ingress_port}"',
                    "",
                    "[admin]",
                    f'bind-address = "127.0.0.1:{self.admin_port}"',
                    "",
                ]
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config-file", str(config), "--no-logo"],
                cwd=self.base_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"restate-server exited with {self.proc.returncode}:\n{self.logs()}")
            if _ok(f"{self.admin_url}/health") and _ok(f"{self.ingress_url}/restate/health"):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"restate-server not healthy after {timeout:.0f}s:\n{self.logs()}")

    def register(self, uri: str, *, use_http_11: bool = True) -> None:
        """Register the deployment: in HTTP/1.1 request-response mode (``use_http_11``), as Capstan uses it, or
        (``use_http_11=False``) over HTTP/2 with prior knowledge, where restate-server streams both ways."""
        body = json.dumps({"uri": uri, "use_http_11": use_http_11, "force": True}).encode()
        req = urllib.request.Request(
            f"{self.admin_url}/deployments", data=body, headers={"content-type": "application/json"}, method="POST"
        )
        with _OPENER.open(req, timeout=30) as resp:
            if resp.status not in (200, 201):
                raise RuntimeError(f"registration failed: {resp.status} {resp.read()!r}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False

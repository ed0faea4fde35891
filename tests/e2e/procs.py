"""A real ``capstan serve`` process for end-to-end tests: started on 127.0.0.1, stopped (or SIGKILLed) by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CapstanProcess:
    def __init__(
        self, data_dir: Path, *, extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.ingress_port = free_port()
        self.admin_port = free_port()
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"capstan-{data_dir.name}.log"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--ingress-address",
            f"127.0.0.1:{self.ingress_port}",
            "--admin-address",
            f"127.0.0.1:{self.admin_port}",
            # four partitions, as the in-process tests: cross-partition paths run under kill -9 too
            *(["--partitions", "4"] if not {"--partitions", "--config"} & set(self.extra_args) else []),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN__")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"capstan exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.admin_url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"capstan did not become healthy in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return int(self.proc.returncode or 0)

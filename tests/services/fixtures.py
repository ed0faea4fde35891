"""Start SDK test deployments as real processes.

Plain functions and a context manager (pytest fixtures build on them)::

    with running_deployment() as dep:          # tests.services.app:app on a free port
        register(dep.url)
        ...
    # or
    dep = start_deployment("tests.services.app:app")
    try: ...
    finally: dep.stop()

The deployment is ``python -m hypercorn <spec> --config tests/services/hypercorn.toml --bind 127.0.0.1:<port>``
with the repository root as working directory. Port 0 (the default) lets the kernel pick a free port; the real one
is read from hypercorn's "Running on http://..." line, so there is no probe-then-bind race. Pass ``port=`` to
restart a deployment at the URL it had (after ``kill()``), as chaos tests need.

These helpers block (subprocess, sockets); from async tests call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
HYPERCORN_CONFIG = Path(__file__).resolve().with_name("hypercorn.toml")
DEFAULT_APP = "tests.services.app:app"
STARTUP_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0

_RUNNING_ON = re.compile(r"Running on http://(?P<host>[^\s]+):(?P<port>\d+)")


class DeploymentStartError(RuntimeError):
    """The deployment process died or did not become healthy in time; the message ends with its log."""


class DeploymentProcess:
    """A running SDK deployment. ``url`` is what you register with the engine (no trailing slash)."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, *, owns_log: bool, log_offset: int = 0) -> None:
        self._proc = proc
        self.log_path = log_path
        # Where this process's output starts in ``log_path`` (a reused log is appended to).
        self._log_offset = log_offset
        self._owns_log = owns_log
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def returncode(self) -> int | None:
        """``None`` while the process runs."""
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def logs(self) -> str:
        """Everything this process wrote to stdout and stderr so far."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_GRACE_S) -> int:
        """SIGINT, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code. Idempotent.

        SIGINT, not SIGTERM: the SDK's ASGI app takes over SIGTERM (``restate.server.install_shutdown_hook``) to
        let in-flight invocations wind down, and hypercorn then never sees it, so SIGTERM alone leaves the
        server running. Use ``terminate()`` to send SIGTERM on purpose.
        """
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGINT)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self._proc.wait()
        self._cleanup_log()
        return code

    def terminate(self) -> None:
        """Send SIGTERM: the SDK releases in-flight invocations; the process keeps serving (see ``stop()``)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL (crash the deployment mid-invocation). Returns the exit code. The log is kept for ``logs()``;
        call ``stop()`` afterwards to remove it."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
        return self._proc.wait()

    def _cleanup_log(self) -> None:
        if self._owns_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def __enter__(self) -> DeploymentProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DeploymentProcess pid={self.pid} url={self.url} running={self.is_running()}>"


def start_deployment(
    app_spec: str = DEFAULT_APP,
    *,
    port: int = 0,
    log_path: Path | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> DeploymentProcess:
    """Start ``app_spec`` (``module:attribute`` of an ASGI app) under hypercorn and wait until ``GET /health``
    answers 200.

    Args:
        app_spec: the SDK app, importable from the repository root.
        port: 0 for a free port, or a fixed one (e.g. to come back at the same URL after a kill).
        log_path: where stdout and stderr go; by default a temporary file removed by ``stop()``.
        timeout: seconds to wait for the health check.
        env: extra environment variables for the process.

    Raises:
        DeploymentStartError: the process exited or was not healthy within ``timeout`` (it is killed).
    """
    owns_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="capstan-deployment-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    cmd = [
        sys.executable,
        "-m",
        "hypercorn",
        app_spec,
        "--config",
        str(HYPERCORN_CONFIG),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "ab") as log_file:
        log_offset = log_file.tell()
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env
        )
    dep = DeploymentProcess(proc, log_path, owns_log=owns_log, log_offset=log_offset)
    try:
        _wait_ready(dep, timeout)
    except BaseException:
        dep.kill()
        dep.stop()
        raise
    return dep


@contextlib.contextmanager
def running_deployment(
    app_spec: str = DEFAULT_APP,
    *,
    port: int = 0,
    log_path: Path | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> Iterator[DeploymentProcess]:
    """``start_deployment`` as a context manager; stops (and reaps) the process on exit."""
    dep = start_deployment(app_spec, port=port, log_path=log_path, timeout=timeout, env=env)
    try:
        yield dep
    finally:
        dep.stop()


def _wait_ready(dep: DeploymentProcess, timeout: float) -> None:
    wait_serving(dep, timeout, listening=_RUNNING_ON, probe=_healthy, what="become healthy")


def wait_serving(
    dep: DeploymentProcess,
    timeout: float,
    *,
    listening: re.Pattern[str],
    probe: Callable[[str], bool],
    what: str,
) -> None:
    """Wait until ``dep`` printed the line ``listening`` matches (to learn a port chosen by the OS, with groups
    ``host`` and ``port``) and ``probe(url)`` is true; raise DeploymentStartError with its log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not dep.is_running():
            raise DeploymentStartError(
                f"deployment exited with code {dep.returncode} before it could {what}; log:\n{dep.logs()}"
            )
        if dep.port == 0:
            match = listening.search(dep.logs())
            if match:
                dep.host = match.group("host").strip("[]")
                dep.port = int(match.group("port"))
        if dep.port != 0 and probe(dep.url):
            return
        time.sleep(0.05)
    raise DeploymentStartError(f"deployment did not {what} after {timeout:.0f}s; log:\n{dep.logs()}")


# No proxy: an http_proxy variable in the environment must not capture requests to 127.0.0.1.
LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with LOCAL_OPENER.open(f"{url}/health", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False

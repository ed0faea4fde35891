"""Start the polyglot test deployments: services written with the official TypeScript and Go SDKs.

::

    dep = start_ts_deployment()     # tests/sdk_ts: RoleUpdate (a saga compensating on TerminalError)
    dep = start_go_deployment()     # tests/sdk_go: User (virtual object) + Signup (awaits an awakeable)
    try:
        register(dep.url)
        ...
    finally:
        dep.stop()

Both are built by ``scripts/setup_polyglot`` (``npm ci`` + ``tsc`` into ``tests/sdk_ts/dist``, ``go build`` into
``tests/sdk_go/bin``); ``start_*`` runs it first (it returns at once when everything is up to date), under a file
lock so concurrent test processes do not race ``npm ci``. ``missing_toolchain()`` says whether ``node``/``go`` is
on PATH at all, so a test can decide between skipping and failing before anything is built.

Each deployment serves HTTP/1.1 on 127.0.0.1 and answers discovery with protocolMode REQUEST_RESPONSE. The
process is started with port 0 (or ``port=``) and prints ``listening on http://127.0.0.1:<port>``; the real port is
read from that line, then ``GET /discover`` must answer 200. The returned ``DeploymentProcess`` (the same class the
Python SDK deployment uses) has ``url``, ``pid``, ``logs()``, ``kill()`` and ``stop()``; ``stop()`` sends SIGINT,
which both services handle by shutting down, and SIGKILLs after 5 s.

These helpers block (subprocess, sockets); from async tests call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from engine.invoker.discovery import DISCOVERY_ACCEPT
from tests.services.fixtures import LOCAL_OPENER, DeploymentProcess, DeploymentStartError, wait_serving

__all__ = [
    "GO_BINARY",
    "GO_DIR",
    "TS_DIR",
    "TS_ENTRY",
    "DeploymentProcess",
    "DeploymentStartError",
    "PolyglotBuildError",
    "build",
    "missing_toolchain",
    "start_go_deployment",
    "start_ts_deployment",
]

Part = Literal["ts", "go"]

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_polyglot"
TS_DIR = REPO_ROOT / "tests" / "sdk_ts"
TS_ENTRY = TS_DIR / "dist" / "main.js"
GO_DIR = REPO_ROOT / "tests" / "sdk_go"
GO_BINARY = GO_DIR / "bin" / "sdk-go-services"

STARTUP_TIMEOUT_S = 20.0
BUILD_TIMEOUT_S = 600.0

_LISTENING = re.compile(r"listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
_TOOLCHAINS: dict[Part, tuple[str, ...]] = {"ts": ("node", "npm"), "go": ("go",)}
_built: set[Part] = set()


class PolyglotBuildError(RuntimeError):
    """``scripts/setup_polyglot`` failed; the message ends with its output."""


def missing_toolchain(part: Part) -> str | None:
    """Why ``part`` cannot be built here (a tool missing from PATH), or ``None`` when it can."""
    missing = [tool for tool in _TOOLCHAINS[part] if shutil.which(tool) is None]
    if not missing:
        return None
    language = "TypeScript" if part == "ts" else "Go"
    return f"{' and '.join(missing)} not found on PATH: the {language} SDK services cannot be built"


def build(part: Part) -> None:
    """Run ``scripts/setup_polyglot <part>`` once per process (a no-op when the artifacts are up to date).

    Raises:
        PolyglotBuildError: the script failed (including a missing toolchain: the script runs with CI=true so it
            cannot skip silently; call ``missing_toolchain()`` first to skip instead).
    """
    if part in _built:
        return
    lock_name = "capstan-setup-polyglot-" + hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12] + ".lock"
    with open(Path(tempfile.gettempdir()) / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result = subprocess.run(
                [str(SETUP_SCRIPT), part],
                cwd=REPO_ROOT,
                env={**os.environ, "CI": "true"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")
        raise PolyglotBuildError(f"scripts/setup_polyglot {part} exited with {result.returncode}:\n{output}")
    _built.add(part)


def start_ts_deployment(
    *, port: int = 0, timeout: float = STARTUP_TIMEOUT_S, env: dict[str, str] | None = None
) -> DeploymentProcess:
    """Build (if needed) and start the TypeScript SDK services (``node tests/sdk_ts/dist/main.js <port>``).

    Raises:
        PolyglotBuildError: the build failed.
        DeploymentStartError: the process exited or did not answer discovery within ``timeout`` (it is killed).
    """
    build("ts")
    node = shutil.which("node") or "node"
    return _start([node, str(TS_ENTRY), str(port)], cwd=TS_DIR, timeout=timeout, env=env)


def start_go_deployment(
    *, port: int = 0, timeout: float = STARTUP_TIMEOUT_S, env: dict[str, str] | None = None
) -> DeploymentProcess:
    """Build (if needed) and start the Go SDK services (``tests/sdk_go/bin/sdk-go-services <port>``).

    Raises:
        PolyglotBuildError: the build failed.
        DeploymentStartError: the process exited or did not answer discovery within ``timeout`` (it is killed).
    """
    build("go")
    return _start([str(GO_BINARY), str(port)], cwd=GO_DIR, timeout=timeout, env=env)


def _start(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None) -> DeploymentProcess:
    fd, name = tempfile.mkstemp(prefix="capstan-polyglot-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PORT", None)  # the port is the first argument; a stray PORT must not override it
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env
        )
    dep = DeploymentProcess(proc, log_path, owns_log=True)
    try:
        _wait_ready(dep, timeout)
    except BaseException:
        dep.kill()
        dep.stop()
        raise
    return dep


def _wait_ready(dep: DeploymentProcess, timeout: float) -> None:
    wait_serving(dep, timeout, listening=_LISTENING, probe=_discovers, what="answer discovery")


def _discovers(url: str) -> bool:
    request = urllib.request.Request(f"{url}/discover", headers={"accept": DISCOVERY_ACCEPT})
    try:
        with LOCAL_OPENER.open(request, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False

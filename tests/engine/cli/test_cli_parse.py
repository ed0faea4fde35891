"""Pin the ``capstan`` command-line surface: commands, flags, exit codes and error messages.

Everything runs ``python -m engine ...`` in a subprocess, as a user would. Client commands are pointed at a fake
admin API (aiohttp on 127.0.0.1:0) serving canned Restate-shaped answers; tests against a live engine are in
tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

REPO_ROOT = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN")}
    env.update(extra)
    return env


def capstan(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO_ROOT,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def acapstan(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``capstan`` without blocking the loop (the fake admin API runs on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        *args,
        cwd=REPO_ROOT,
        env=env if env is not None else _env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ----------------------------------------------------------------------------------------------------------------
# --help
# ----------------------------------------------------------------------------------------------------------------

HELP_CASES: list[tuple[list[str], list[str]]] = [
    ([], ["serve", "deployments", "services", "--version"]),
    (
        ["serve"],
        [
            "--config",
            "--data-dir",
            "--ingress-address",
            "--admin-address",
            "--fsync",
            "--partitions",
            "--app",
            "--log-level",
        ],
    ),
    (["deployments"], ["register", "list", "describe", "remove"]),
    (["deployments", "register"], ["URI", "--force", "--use-http1.1", "--header", "--admin-url", "--json"]),
    (["deployments", "list"], ["--admin-url", "--json"]),
    (["deployments", "describe"], ["ID", "--admin-url", "--json"]),
    (["deployments", "remove"], ["ID", "--force", "--admin-url", "--json"]),
    (["services"], ["list", "describe"]),
    (["services", "list"], ["--admin-url", "--json"]),
    (["services", "describe"], ["NAME", "--admin-url", "--json"]),
    (["invocations"], ["list", "describe", "cancel", "kill", "purge", "pause", "resume"]),
    (
        ["invocations", "list"],
        ["--service", "--key", "--handler", "--status", "--all", "--older-than", "--newer-than", "--limit", "--json"],
    ),
    (["invocations", "describe"], ["ID", "--admin-url", "--json"]),
    (["invocations", "cancel"], ["ID", "--kill"]),
    (["kv"], ["get", "set", "clear"]),
    (["kv", "set"], ["SERVICE", "KEY", "NAME", "VALUE", "--raw", "--version"]),
    (["kv", "clear"], ["SERVICE", "KEY", "NAME", "--version"]),
    (["sql"], ["QUERY", "--json", "--admin-url"]),
]


@pytest.mark.parametrize(("args", "expected"), HELP_CASES, ids=lambda v: " ".join(v) if v else "capstan")
def test_help(args: list[str], expected: list[str]) -> None:
    result = capstan(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: capstan")
    for word in expected:
        assert word in result.stdout, f"{word!r} missing from 'capstan {' '.join(args)} --help'"


def test_aliases() -> None:
    for args in (["dp", "ls"], ["deployments", "rm"], ["svc", "get"], ["deployments", "add"]):
        result = capstan(*args, "--help")
        assert result.returncode == 0, (args, result.stderr)


def test_version() -> None:
    result = capstan("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("capstan ")


def test_parser_does_not_import_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from engine.cli.main import build_parser\n"
        "build_parser().parse_args(['deployments', 'list'])\n"
        "heavy = sorted(m for m in ('aiohttp', 'pydantic', 'rocksdict', 'engine.server', 'engine.config')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == ""


# ----------------------------------------------------------------------------------------------------------------
# Bad arguments: argparse answers with usage and exit code 2
# ----------------------------------------------------------------------------------------------------------------

BAD_ARGS: list[tuple[list[str], str]] = [
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["deployments"], "required"),
    (["services", "nope"], "invalid choice"),
    (["deployments", "register"], "URI"),
    (["deployments", "describe"], "ID"),
    (["deployments", "register", "http://x", "--header", "no-equals-sign"], "NAME=VALUE"),
    (["deployments", "list", "--admin-url", "ftp://host"], "http"),
    (["deployments", "list", "--timeout", "0"], "positive"),
    (["serve", "--fsync", "sometimes"], "invalid choice"),
    (["serve", "--partitions", "0"], "positive integer"),
    (["serve", "--partitions", "four"], "positive integer"),
    (["serve", "--ingress-address", "8080"], "HOST:PORT"),
    (["serve", "--admin-address", "localhost:port"], "HOST:PORT"),
    (["serve", "--app", "no_colon"], "MODULE:ATTRIBUTE"),
    (["serve", "--log-level", "chatty"], "DEBUG"),
    (["serve", "--no-such-flag"], "unrecognized arguments"),
    (["invocations"], "required"),
    (["invocations", "describe"], "ID"),
    (["invocations", "describe", "not-an-id"], "invocation id"),
    (["invocations", "kill"], "ID"),
    (["invocations", "cancel", "inv_1abcdefgh", "inv_x"], "invocation id"),
    (["invocations", "list", "--status", "sleeping"], "suspended"),
    (["invocations", "list", "--older-than", "soon"], "duration"),
    (["invocations", "list", "--limit", "0"], "positive"),
    (["kv", "get", "Counter"], "KEY"),
    (["kv", "set", "Counter", "k", "count"], "VALUE"),
    (["kv", "set", "Counter", "k", "count", "not json"], "--raw"),
    (["sql"], "QUERY"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = capstan(*args)
    assert result.returncode == 2, result
    assert "usage: capstan" in result.stderr
    assert message in result.stderr


def test_bad_admin_url_in_env_exits_2() -> None:
    result = capstan("services", "list", env=_env(CAPSTAN_ADMIN_URL="localhost:9070"))
    assert result.returncode == 2
    assert "CAPSTAN_ADMIN_URL" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# serve: configuration errors exit 2 before anything starts
# ----------------------------------------------------------------------------------------------------------------


def test_serve_malformed_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "capstan.toml"
    config.write_text("[invoker\nqueue_limit = 3\n")
    result = capstan("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result
    assert result.stderr.startswith("capstan: error: ")
    assert "not valid TOML" in result.stderr
    assert str(config) in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_invalid_config_value_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "capstan.toml"
    config.write_text("[invoker]\nqueue_limit = -1\nno_such_field = 1\n")
    result = capstan("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result
    assert "capstan: error: invalid configuration" in result.stderr
    assert "queue_limit" in result.stderr


def test_serve_missing_config_exits_2(tmp_path: Path) -> None:
    result = capstan("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "capstan: error: config file not found" in result.stderr


def test_serve_bad_env_override_exits_2(tmp_path: Path) -> None:
    result = capstan("serve", "--data-dir", str(tmp_path / "data"), env=_env(CAPSTAN__INVOKER__QUEUE_LIMIT="lots"))
    assert result.returncode == 2
    assert "capstan: error: invalid configuration" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Client commands: unreachable admin API
# ----------------------------------------------------------------------------------------------------------------

UNREACHABLE = "http://127.0.0.1:1"


@pytest.mark.parametrize(
    "args",
    [
        ["deployments", "list"],
        ["deployments", "register", "http://127.0.0.1:9080"],
        ["deployments", "describe", "dp_1"],
        ["deployments", "remove", "dp_1", "--force"],
        ["services", "list", "--json"],
        ["services", "describe", "Greeter"],
        ["invocations", "list"],
        ["invocations", "describe", "inv_1abcdefgh"],
        ["invocations", "cancel", "inv_1abcdefgh"],
        ["kv", "get", "Counter", "k"],
        ["kv", "set", "Counter", "k", "count", "5"],
        ["kv", "clear", "Counter", "k"],
        ["sql", "SELECT 1"],
    ],
    ids=" ".join,
)
def test_unreachable_admin_exits_1(args: list[str]) -> None:
    result = capstan(*args, "--admin-url", UNREACHABLE)
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"capstan: error: cannot reach the admin API at {UNREACHABLE}: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_admin_url_from_environment() -> None:
    result = capstan("services", "list", env=_env(CAPSTAN_ADMIN_URL=UNREACHABLE + "/"))
    assert result.returncode == 1
    assert f"cannot reach the admin API at {UNREACHABLE}:" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Client commands against a fake admin API
# ----------------------------------------------------------------------------------------------------------------

GREETER = {
    "name": "Greeter",
    "ty": "Service",
    "revision": 1,
    "public": True,
    "deployment_id": "dp_one",
    # Restate's shape: a map from handler name to metadata.
    "handlers": {"greet": {"name": "greet", "ty": None, "input_description": 'one of ["none", "value"]'}},
}
COUNTER = {
    "name": "Counter",
    "ty": "VirtualObject",
    "revision": 2,
    "public": True,
    "deployment_id": "dp_one",
    # Also accepted: a list.
    "handlers": [
        {
            "name": "add",
            "ty": "Exclusive",
            # Capstan's admin API sends the manifest's payload description JSON-encoded.
            "input_description": json.dumps(
                {"contentType": "application/json", "jsonSchema": {"type": "integer"}, "required": False}
            ),
            "output_description": json.dumps({"setContentTypeIfEmpty": False}),
        },
        {"name": "get", "ty": "Shared"},
    ],
}
DEPLOYMENT = {
    "id": "dp_one",
    "uri": "http://127.0.0.1:9080",
    "protocol_type": "RequestResponse",
    "http_version": "HTTP/1.1",
    "created_at": "2026-01-01T00:00:00Z",
    "min_protocol_version": 5,
    "max_protocol_version": 6,
    "additional_headers": {},
    "services": [{"name": "Greeter", "revision": 1}, {"name": "Counter", "revision": 2}],
}


class FakeAdmin:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.raw_path, body))
        match request.method, request.path:
            case "POST", "/deployments":
                return web.json_response({"id": "dp_one", "services": [GREETER, COUNTER]}, status=201)
            case "GET", "/deployments":
                return web.json_response({"deployments": [DEPLOYMENT]})
            case "GET", "/deployments/dp_one":
                return web.json_response({**DEPLOYMENT, "services": [GREETER, COUNTER]})
            case "DELETE", "/deployments/dp_one":
                if request.query.get("force") != "true":
                    return web.json_response({"message": "graceful deletion is not supported"}, status=501)
                return web.Response(status=202)
            case "GET", "/services":
                return web.json_response({"services": [GREETER, COUNTER]})
            case "GET", "/services/Counter":
                return web.json_response(COUNTER)
            case "GET", "/services/Bro ken":
                return web.Response(status=500, text="not json at all")
        return web.json_response({"message": f"{request.path} not found", "restate_code": "META0000"}, status=404)


@pytest.fixture
async def fake_admin() -> AsyncIterator[tuple[str, FakeAdmin]]:
    fake = FakeAdmin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", fake
    finally:
        await runner.cleanup()


async def test_register(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, fake = fake_admin
    code, out, err = await acapstan(
        "deployments", "register", "http://127.0.0.1:9080", "--force", "--use-http1.1",
        "--header", "authorization=Bearer x", "--header", "x-team=a=b", "--admin-url", url,
    )  # fmt: skip
    assert code == 0, err
    assert fake.requests == [
        (
            "POST",
            "/deployments",
            {
                "uri": "http://127.0.0.1:9080",
                "force": True,
                "use_http_11": True,
                "additional_headers": {"authorization": "Bearer x", "x-team": "a=b"},
            },
        )
    ]
    assert "dp_one" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["Counter", "(VirtualObject,", "revision", "2)"] in lines
    assert ["add", "Exclusive"] in lines
    assert ["get", "Shared"] in lines
    assert ["greet", "-"] in lines


async def test_register_defaults(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, fake = fake_admin
    code, _, err = await acapstan("deployments", "register", "http://h:1", "--admin-url", url)
    assert code == 0, err
    assert fake.requests[0][2] == {"uri": "http://h:1", "force": False, "use_http_11": False, "additional_headers": {}}


async def test_deployments_list_and_json(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, _ = fake_admin
    code, out, err = await acapstan("deployments", "list", "--admin-url", url)
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["ID", "URI", "PROTOCOL", "SERVICES", "CREATED"]
    assert row.split() == [
        "dp_one",
        "http://127.0.0.1:9080",
        "RequestResponse",
        "Counter@2,",
        "Greeter@1",
        "2026-01-01T00:00:00Z",
    ]

    code, out, _ = await acapstan("deployments", "list", "--json", "--admin-url", url)
    assert code == 0
    assert json.loads(out) == {"deployments": [DEPLOYMENT]}


async def test_deployments_describe(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, _ = fake_admin
    code, out, err = await acapstan("deployments", "describe", "dp_one", "--admin-url", url)
    assert code == 0, err
    assert "RequestResponse" in out
    assert "5..6" in out
    assert "Greeter (Service, revision 1)" in out


async def test_deployments_remove(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, fake = fake_admin
    code, out, err = await acapstan("deployments", "remove", "dp_one", "--force", "--admin-url", url)
    assert code == 0, err
    assert fake.requests[-1][:2] == ("DELETE", "/deployments/dp_one?force=true")
    assert "Removed deployment dp_one" in out

    code, out, err = await acapstan("deployments", "remove", "dp_one", "--json", "--force", "--admin-url", url)
    assert code == 0, err
    assert json.loads(out) == {}

    code, out, err = await acapstan("deployments", "remove", "dp_one", "--admin-url", url)
    assert code == 1
    assert fake.requests[-1][:2] == ("DELETE", "/deployments/dp_one?force=false")
    assert err == "capstan: error: the admin API answered 501 Not Implemented: graceful deletion is not supported\n"


async def test_services_list(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, _ = fake_admin
    code, out, err = await acapstan("services", "list", "--admin-url", url)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "TYPE", "REVISION", "HANDLERS", "DEPLOYMENT", "PUBLIC"]
    assert rows[1] == ["Counter", "VirtualObject", "2", "add,", "get", "dp_one", "yes"]
    assert rows[2] == ["Greeter", "Service", "1", "greet", "dp_one", "yes"]


async def test_services_describe(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, _ = fake_admin
    code, out, err = await acapstan("services", "describe", "Counter", "--admin-url", url)
    assert code == 0, err
    assert "VirtualObject" in out
    rows = [line.split() for line in out.splitlines()]
    assert ["add", "Exclusive", "application/json", "integer", "(optional)", "none"] in rows
    assert ["get", "Shared", "-", "-"] in rows

    code, out, _ = await acapstan("services", "describe", "Counter", "--json", "--admin-url", url)
    assert json.loads(out) == COUNTER


async def test_http_errors_exit_1(fake_admin: tuple[str, FakeAdmin]) -> None:
    url, fake = fake_admin
    code, out, err = await acapstan("services", "describe", "Nope", "--admin-url", url)
    assert code == 1
    assert out == ""
    assert err == "capstan: error: the admin API answered 404 Not Found: /services/Nope not found\n"

    # Names are one path segment; a non-JSON error body is shown as text.
    code, _, err = await acapstan("services", "describe", "Bro ken", "--admin-url", url)
    assert code == 1
    assert fake.requests[-1][1] == "/services/Bro%20ken"
    assert err == "capstan: error: the admin API answered 500 Internal Server Error: not json at all\n"

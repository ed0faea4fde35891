"""The ``capstan`` command line: ``capstan serve`` runs the engine; the other commands talk to a running engine
through its admin API.

This module is imported on every invocation, so it stays cheap: argparse and the standard library only. The
engine (``engine.server``, RocksDB), pydantic (``engine.config``) and aiohttp (``engine.cli.client``) are imported
inside the command functions. It is also the only place besides :func:`engine.config.load_config` that reads
``os.environ`` (for ``CAPSTAN_ADMIN_URL`` and ``CAPSTAN_ADMIN_TOKEN``).

Exit codes: 0 success, 1 the command failed (admin API unreachable or answering an error, engine crash),
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine import logcontext
from engine.cli import kafka_parsers, operate_parsers
from engine.cli.argtypes import int_at_least

logger = logging.getLogger(__name__)

PROG = "capstan"
ADMIN_URL_ENV = "CAPSTAN_ADMIN_URL"
ADMIN_TOKEN_ENV = "CAPSTAN_ADMIN_TOKEN"
DEFAULT_ADMIN_URL = "http://127.0.0.1:9070"
DEFAULT_TIMEOUT_S = 30.0
# Lines about an invocation name it after the logger: "... DEBUG engine.invoker.invoker [inv_1a2b...] attempt ..."
LOG_FORMAT = logcontext.LOG_FORMAT
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# ----------------------------------------------------------------------------------------------------------------
# Argument types (raise ArgumentTypeError -> argparse prints usage and exits 2)
# ----------------------------------------------------------------------------------------------------------------


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


_positive_int = int_at_least(1)
_non_negative_int = int_at_least(0)


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def _app_spec(value: str) -> str:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(f"expected MODULE:ATTRIBUTE (e.g. my_services:app), got {value!r}")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _header(value: str) -> tuple[str, str]:
    name, sep, header_value = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name.strip(), header_value


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


# ----------------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole ``capstan`` command tree. Pinned by ``tests/engine/cli/test_cli_parse.py``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Capstan: a durable-execution engine for services written with the Restate SDKs.",
        epilog="Run 'capstan COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    _add_serve(commands)

    # Options shared by every client command.
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--admin-url",
        type=_http_url,
        default=None,
        metavar="URL",
        help=f"admin API of the engine (default: ${ADMIN_URL_ENV}, else {DEFAULT_ADMIN_URL})",
    )
    client.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help=f"bearer token for an admin API with admin.auth_token set (default: ${ADMIN_TOKEN_ENV}); prefer the "
        "variable, a flag is visible to other users in the process list",
    )
    client.add_argument("--json", action="store_true", help="print the raw JSON answer of the admin API")
    client.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up on the admin API after this long (default: {DEFAULT_TIMEOUT_S:g})",
    )

    _add_deployments(commands, client)
    _add_services(commands, client)
    operate_parsers.add_parsers(commands, client)
    kafka_parsers.add_parsers(commands, client, _header)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the engine (ingress, admin API, invoker, log)",
        description="Run the engine in the foreground until SIGINT or SIGTERM. Settings come from, lowest "
        "precedence first: defaults, --config FILE, CAPSTAN__<SECTION>__<FIELD> environment variables, then the "
        "flags below.",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    serve.add_argument("--data-dir", type=Path, metavar="DIR", help="where the log and the RocksDB tables live")
    serve.add_argument("--ingress-address", type=_address, metavar="HOST:PORT", help="HTTP ingress listen address")
    serve.add_argument("--admin-address", type=_address, metavar="HOST:PORT", help="admin API listen address")
    serve.add_argument(
        "--fsync",
        choices=("fsync", "none"),
        help="'fsync': acknowledge log appends after fsync (default); 'none': rely on the OS page cache",
    )
    serve.add_argument("--partitions", type=_positive_int, metavar="N", help="number of partitions")
    serve.add_argument(
        "--invoker-processes",
        type=_non_negative_int,
        metavar="N",
        help="run attempts (and the --app handlers) in N child processes; 0: in the engine process",
    )
    serve.add_argument(
        "--app",
        type=_app_spec,
        metavar="MODULE:APP",
        help="mount this SDK ASGI app in-process and register it at start-up",
    )
    serve.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: INFO)",
    )
    serve.set_defaults(handler=_cmd_serve)


def _add_deployments(commands: Any, client: argparse.ArgumentParser) -> None:
    deployments = commands.add_parser(
        "deployments",
        aliases=["dp"],
        help="register, list, describe and remove deployments",
        description="Manage deployments: SDK endpoints whose services the engine invokes.",
    )
    actions = deployments.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)

    register = actions.add_parser(
        "register",
        aliases=["add"],
        parents=[client],
        help="discover a deployment and register its services",
        description="Call URI/discover and register the services it lists (POST /deployments).",
    )
    register.add_argument("uri", metavar="URI", help="base URL of the SDK endpoint, e.g. http://localhost:9080")
    register.add_argument(
        "--force",
        action="store_true",
        help="replace a deployment registered at the same URI, even with incompatible changes",
    )
    register.add_argument(
        "--use-http1.1",
        dest="use_http_11",
        action="store_true",
        help="talk HTTP/1.1 (request/response protocol) to the deployment",
    )
    register.add_argument(
        "--header",
        type=_header,
        action="append",
        metavar="NAME=VALUE",
        help="extra header sent with every request to the deployment (repeatable)",
    )
    register.set_defaults(client_command=("deployments", "register"))

    listing = actions.add_parser(
        "list", aliases=["ls"], parents=[client], help="list deployments", description="GET /deployments"
    )
    listing.set_defaults(client_command=("deployments", "list"))

    describe = actions.add_parser(
        "describe",
        aliases=["get"],
        parents=[client],
        help="show one deployment and its services",
        description="GET /deployments/{ID}",
    )
    describe.add_argument("id", metavar="ID", help="deployment id (dp_...)")
    describe.set_defaults(client_command=("deployments", "describe"))

    remove = actions.add_parser(
        "remove",
        aliases=["rm"],
        parents=[client],
        help="remove a deployment",
        description="DELETE /deployments/{ID}. In-flight invocations pinned to the deployment can no longer "
        "make progress; the server refuses the removal without --force.",
    )
    remove.add_argument("id", metavar="ID", help="deployment id (dp_...)")
    remove.add_argument("--force", action="store_true", help="remove it even if invocations may still need it")
    remove.set_defaults(client_command=("deployments", "remove"))


def _add_services(commands: Any, client: argparse.ArgumentParser) -> None:
    services = commands.add_parser(
        "services",
        aliases=["svc"],
        help="list and describe registered services",
        description="Inspect the services registered through deployments.",
    )
    actions = services.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)

    listing = actions.add_parser(
        "list", aliases=["ls"], parents=[client], help="list services", description="GET /services"
    )
    listing.set_defaults(client_command=("services", "list"))

    describe = actions.add_parser(
        "describe",
        aliases=["get"],
        parents=[client],
        help="show one service and its handlers",
        description="GET /services/{NAME}",
    )
    describe.add_argument("name", metavar="NAME", help="service name")
    describe.set_defaults(client_command=("services", "describe"))


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config tree fragment set by ``serve`` flags (they win over the file and the environment)."""
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = str(args.data_dir)
    if args.partitions is not None:
        overrides["num_partitions"] = args.partitions
    if args.invoker_processes is not None:
        overrides["invoker"] = {"processes": args.invoker_processes}
    if args.app is not None:
        overrides["app"] = args.app
    if args.fsync is not None:
        overrides["log"] = {"fsync": args.fsync}
    if args.ingress_address is not None:
        overrides["ingress_http"] = {"address": args.ingress_address}
    if args.admin_address is not None:
        overrides["admin"] = {"address": args.admin_address}
    return overrides


def configure_logging(level: str) -> None:
    """Install the process's only log handler (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(logcontext.InvocationLogFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _cmd_serve(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.errors import ConfigError

    configure_logging(args.log_level)
    try:
        config = load_config(args.config, overrides=_serve_overrides(args))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)

    # engine.server imports RocksDB and aiohttp: only ``serve`` pays for it.
    from engine.server import run

    try:
        return run(config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except Exception:
        logger.exception("capstan serve stopped on an unexpected error")
        return EXIT_FAILURE


def _cmd_client(args: argparse.Namespace) -> int:
    if args.client_command[0] in ("kafka-clusters", "subscriptions"):
        from engine.cli import kafka_commands

        return kafka_commands.run(args)
    if args.client_command[0] in ("invocations", "kv", "sql"):
        from engine.cli import operate_commands

        return operate_commands.run(args)
    from engine.cli import admin_commands

    return admin_commands.run(args)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capstan")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the ``capstan`` console script and of ``python -m engine``. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "check", None) is not None:
        args.check(args)  # checks across arguments; exits 2 with the usage like argparse
    env = os.environ if environ is None else environ
    if getattr(args, "client_command", None) is not None:
        if args.admin_url is None:
            from_env = env.get(ADMIN_URL_ENV)
            try:
                args.admin_url = _http_url(from_env) if from_env else DEFAULT_ADMIN_URL
            except argparse.ArgumentTypeError as exc:
                parser.error(f"${ADMIN_URL_ENV}: {exc}")
        if args.token is None:
            args.token = env.get(ADMIN_TOKEN_ENV) or None
        return _cmd_client(args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())

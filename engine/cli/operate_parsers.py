"""Argument parsers of ``capstan invocations``, ``capstan kv`` and ``capstan sql`` (standard library only: the CLI's
parser is built on every start)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from engine.cli.argtypes import int_at_least

# Restate's invocation statuses (SQL ``sys_invocation.status``); Capstan never reports ``ready``.
STATUSES = ("pending", "scheduled", "ready", "running", "backing-off", "suspended", "paused", "completed")
OPERATIONS = ("cancel", "kill", "purge", "pause", "resume")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def duration_s(value: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``1d`` (a bare number is seconds) → seconds."""
    match = _DURATION.match(value)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 5m, 2h or 1d, got {value!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def invocation_id(value: str) -> str:
    if not value.startswith("inv_") or len(value) < 10:
        raise argparse.ArgumentTypeError(f"expected an invocation id (inv_1...), got {value!r}")
    return value


def statuses(value: str) -> list[str]:
    """``suspended`` or ``pending,backing-off`` → the list, each a known status."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in STATUSES]
    if not items or bad:
        raise argparse.ArgumentTypeError(
            f"expected one or more of {', '.join(STATUSES)} (comma-separated), got {value!r}"
        )
    return items


_positive = int_at_least(1)


def add_parsers(commands: Any, client: argparse.ArgumentParser) -> None:
    _add_invocations(commands, client)
    _add_kv(commands, client)
    sql = commands.add_parser(
        "sql",
        parents=[client],
        help="run a SQL query over the engine's tables",
        description="POST /query: a read-only SQL query (SQLite dialect) over sys_invocation, sys_journal, state, "
        "sys_inbox, sys_keyed_service_status, sys_promise, sys_service, sys_deployment, sys_subscription and "
        "sys_kafka_lag. Prints a table, or the JSON answer with --json.",
    )
    sql.add_argument("query", metavar="QUERY", help='e.g. "SELECT id, status FROM sys_invocation LIMIT 10"')
    sql.set_defaults(client_command=("sql", "run"))


def _add_invocations(commands: Any, client: argparse.ArgumentParser) -> None:
    invocations = commands.add_parser(
        "invocations",
        aliases=["inv"],
        help="list, describe, cancel, kill, purge, pause and resume invocations",
        description="Inspect and manage invocations.",
    )
    actions = invocations.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)

    listing = actions.add_parser(
        "list",
        aliases=["ls"],
        parents=[client],
        help="list invocations (newest first; completed ones only with --all or --status)",
        description="Query sys_invocation through POST /query.",
    )
    listing.add_argument("--service", metavar="NAME", help="only invocations of this service")
    listing.add_argument("--key", metavar="KEY", help="only invocations of this virtual object / workflow key")
    listing.add_argument("--handler", metavar="NAME", help="only invocations of this handler")
    listing.add_argument(
        "--status",
        type=statuses,
        metavar="STATUS[,STATUS...]",
        help=f"only these statuses: {', '.join(STATUSES)}",
    )
    listing.add_argument("--all", action="store_true", help="include completed invocations")
    listing.add_argument(
        "--older-than", type=duration_s, metavar="DURATION", help="only invocations created longer ago (e.g. 10m)"
    )
    listing.add_argument(
        "--newer-than", type=duration_s, metavar="DURATION", help="only invocations created more recently (e.g. 1h)"
    )
    listing.add_argument("--oldest-first", action="store_true", help="sort by creation time, oldest first")
    listing.add_argument("--limit", type=_positive, default=100, metavar="N", help="at most N rows (default: 100)")
    listing.set_defaults(client_command=("invocations", "list"))

    describe = actions.add_parser(
        "describe",
        aliases=["get"],
        parents=[client],
        help="status, attempts, last failure and the journal of one invocation",
        description="GET /invocations/{ID}: the invocation's sys_invocation row and its journal, entry by entry.",
    )
    describe.add_argument("id", type=invocation_id, metavar="ID", help="invocation id (inv_...)")
    describe.set_defaults(client_command=("invocations", "describe"))

    helps = {
        "cancel": "cancel: the handler sees a cancellation at its next await and may compensate",
        "kill": "kill: stop at once, no compensation (children are killed too)",
        "purge": "purge a completed invocation (frees its idempotency key / workflow id)",
        "pause": "pause a running, suspended or backing-off invocation",
        "resume": "resume a paused, suspended or backing-off invocation now",
    }
    for op in OPERATIONS:
        sub = actions.add_parser(
            op, parents=[client], help=helps[op], description=f"PATCH /invocations/{{ID}}/{op}, for each ID."
        )
        sub.add_argument("ids", nargs="+", type=invocation_id, metavar="ID", help="invocation id (inv_...)")
        if op == "cancel":
            sub.add_argument("--kill", action="store_true", help="kill instead of cancelling")
        sub.set_defaults(client_command=("invocations", op))


def _add_kv(commands: Any, client: argparse.ArgumentParser) -> None:
    kv = commands.add_parser(
        "kv",
        aliases=["state"],
        help="read and edit the state of virtual objects and workflows",
        description="Read state through POST /query (table state); change it through PATCH /services/{NAME}/state, "
        "applied through the key's partition log. Edits are refused (409) while an invocation holds the key.",
    )
    actions = kv.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)

    get = actions.add_parser("get", parents=[client], help="show a key's state, or one value")
    get.add_argument("service", metavar="SERVICE", help="virtual object or workflow name")
    get.add_argument("key", metavar="KEY", help="object key (workflow id)")
    get.add_argument("name", nargs="?", metavar="NAME", help="one state entry: print its value only")
    get.set_defaults(client_command=("kv", "get"))

    set_ = actions.add_parser(
        "set",
        parents=[client],
        help="set one state entry",
        description="Set state entry NAME of SERVICE/KEY to VALUE. VALUE is JSON (what the SDK's default serde "
        "reads: 5, '\"text\"', '{\"a\": 1}'); --raw stores the text as given.",
    )
    set_.add_argument("service", metavar="SERVICE", help="virtual object or workflow name")
    set_.add_argument("key", metavar="KEY", help="object key (workflow id)")
    set_.add_argument("name", metavar="NAME", help="state entry name")
    set_.add_argument("value", metavar="VALUE", help="the new value (JSON unless --raw)")
    set_.add_argument("--raw", action="store_true", help="store VALUE's text as is, without checking it is JSON")
    set_.add_argument("--version", metavar="VERSION", help="apply only if the state still has this version")
    set_.set_defaults(client_command=("kv", "set"), check=lambda args: _check_json(set_, args))

    clear = actions.add_parser("clear", parents=[client], help="clear one state entry, or all of a key's state")
    clear.add_argument("service", metavar="SERVICE", help="virtual object or workflow name")
    clear.add_argument("key", metavar="KEY", help="object key (workflow id)")
    clear.add_argument("name", nargs="?", metavar="NAME", help="the entry to clear (default: all entries)")
    clear.add_argument("--version", metavar="VERSION", help="apply only if the state still has this version")
    clear.set_defaults(client_command=("kv", "clear"))


def _check_json(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Post-parse check of ``kv set`` (argparse exits 2 with the usage on failure)."""
    if args.raw:
        return
    try:
        json.loads(args.value)
    except ValueError:
        parser.error(
            f"VALUE {args.value!r} is not JSON (a string needs quotes: '\"{args.value}\"'); use --raw to store "
            "the text as is"
        )

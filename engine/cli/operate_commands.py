"""``capstan invocations ...``, ``capstan kv ...`` and ``capstan sql``: operating a running engine over the admin
API. Listings and state reads go through ``POST /query`` (SQL over the engine's tables), ``invocations describe``
through ``GET /invocations/{id}``, management through ``PATCH /invocations/{id}/{op}`` and state edits through
``PATCH /services/{name}/state``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO
from urllib.parse import quote

from engine.cli import render
from engine.cli.admin_commands import Call, Render, _execute
from engine.cli.client import AdminClient, AdminHTTPError, Json

CELL_WIDTH = 60


def run(args: argparse.Namespace) -> int:
    call, show = _COMMANDS[args.client_command](args)
    return _execute(args, call, show)


def sql_literal(value: str) -> str:
    """A SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _seg(value: str) -> str:
    return quote(value, safe="")


async def _query(admin: AdminClient, sql: str) -> Json:
    return await admin.request("POST", "/query", body={"query": sql})


# ----------------------------------------------------------------------------------------------------------------
# sql
# ----------------------------------------------------------------------------------------------------------------


def _sql(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await _query(admin, args.query)

    def show(data: Json, out: TextIO) -> None:
        rows = render.as_list(data.get("rows"))
        columns = data.get("columns")
        if not isinstance(columns, list):
            columns = list(rows[0]) if rows else []
        if columns:
            render.table([str(c) for c in columns], [[r.get(c) for c in columns] for r in rows], out)
        print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})", file=out)

    return call, show


# ----------------------------------------------------------------------------------------------------------------
# invocations
# ----------------------------------------------------------------------------------------------------------------

LIST_COLUMNS = (
    "id", "target", "status", "created_at", "modified_at", "retry_count", "last_failure", "invoked_by",
    "completion_result",
)  # fmt: skip


def list_query(args: argparse.Namespace) -> str:
    """The ``sys_invocation`` query behind ``invocations list``."""
    where: list[str] = []
    if args.service:
        where.append(f"target_service_name = {sql_literal(args.service)}")
    if args.key:
        where.append(f"target_service_key = {sql_literal(args.key)}")
    if args.handler:
        where.append(f"target_handler_name = {sql_literal(args.handler)}")
    if args.status:
        where.append(f"status IN ({', '.join(sql_literal(s) for s in args.status)})")
    elif not args.all:
        where.append("status != 'completed'")
    if args.older_than is not None:
        where.append(f"created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{args.older_than:.3f} seconds')")
    if args.newer_than is not None:
        where.append(f"created_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{args.newer_than:.3f} seconds')")
    sql = f"SELECT {', '.join(LIST_COLUMNS)} FROM sys_invocation"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = "ASC" if args.oldest_first else "DESC"
    return sql + f" ORDER BY created_at {order}, id LIMIT {int(args.limit)}"


def _invocations_list(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await _query(admin, list_query(args))

    def show(data: Json, out: TextIO) -> None:
        rows = render.as_list(data.get("rows"))
        if not rows:
            hidden = "" if args.all or args.status else " (completed ones are hidden: --all shows them)"
            print(f"No invocations{hidden}.", file=out)
            return
        render.table(
            ("ID", "TARGET", "STATUS", "CREATED", "RETRIES", "LAST FAILURE"),
            [
                (
                    r.get("id"), r.get("target"), _status(r), r.get("created_at"), r.get("retry_count"),
                    render.clip(r.get("last_failure"), CELL_WIDTH),
                )
                for r in rows
            ],
            out,
        )  # fmt: skip
        if len(rows) >= args.limit:
            print(f"(first {args.limit}; --limit shows more)", file=out)

    return call, show


def _status(row: Any) -> str:
    status = render.text(row.get("status"))
    if status == "completed" and row.get("completion_result"):
        return f"completed ({row['completion_result']})"
    return status


def _invocations_describe(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.request("GET", f"/invocations/{_seg(args.id)}")

    def show(data: Json, out: TextIO) -> None:
        inv = data.get("invocation") or {}
        failure = inv.get("last_failure")
        code = inv.get("last_failure_error_code")
        invoked_by = inv.get("invoked_by")
        by = inv.get("invoked_by_id") or inv.get("invoked_by_subscription_id")
        pairs: list[tuple[str, Any]] = [
            ("ID", inv.get("id")),
            ("Target", inv.get("target")),
            ("Status", _status(inv)),
            ("Invoked by", f"{invoked_by} {by}" if by else invoked_by),
            ("Idempotency key", inv.get("idempotency_key")),
            ("Deployment", inv.get("pinned_deployment_id")),
            ("Created", inv.get("created_at")),
            ("Modified", inv.get("modified_at")),
            ("Scheduled for", inv.get("scheduled_start_at")),
            ("Completed", inv.get("completed_at")),
            ("Failed attempts", inv.get("retry_count")),
            ("Next retry", inv.get("next_retry_at")),
            ("Last failure", f"[{code}] {failure}" if failure else None),
            ("Result", inv.get("completion_failure")),
        ]
        render.fields([(label, value) for label, value in pairs if value is not None and value != ""], out)
        journal = render.as_list(data.get("journal"))
        print(f"Journal ({len(journal)} entr{'y' if len(journal) == 1 else 'ies'}):", file=out)
        if journal:
            render.table(
                ("#", "ENTRY", "NAME", "COMPLETED", "DETAIL"),
                [
                    (e.get("index"), e.get("entry_type"), e.get("name"), e.get("completed"),
                     render.clip(entry_detail(e), CELL_WIDTH))
                    for e in journal
                ],
                out,
                indent="  ",
            )  # fmt: skip

    return call, show


def entry_detail(entry: Any) -> str | None:
    """One journal entry in a few words: its target, state key, promise, wake-up time, and value."""
    parts: list[str] = []
    if entry.get("invoked_target"):
        target = f"-> {entry['invoked_target']}"
        if entry.get("invoked_id"):
            target += f" ({entry['invoked_id']})"
        parts.append(target)
    if entry.get("sleep_wakeup_at"):
        parts.append(f"until {entry['sleep_wakeup_at']}")
    if entry.get("promise_name"):
        parts.append(f"promise {entry['promise_name']}")
    decoded: Any = {}
    try:
        decoded = json.loads(entry.get("entry_json") or "{}")
    except ValueError:
        decoded = {}
    if isinstance(decoded, dict):
        key = decoded.get("key")  # state commands; calls and promises are described above
        if isinstance(key, str) and not entry.get("promise_name") and not entry.get("invoked_target"):
            parts.append(f"key {key}")
        if decoded.get("invocation_id") and not entry.get("invoked_target"):
            parts.append(str(decoded["invocation_id"]))
        if "void" in decoded and entry.get("value") is None:
            parts.append("(void)")
    if entry.get("value"):
        parts.append(f"= {entry['value']}")
    return " ".join(parts) or None


def _invocations_manage(op: str) -> Callable[[argparse.Namespace], tuple[Call, Render]]:
    def build(args: argparse.Namespace) -> tuple[Call, Render]:
        operation = "kill" if op == "cancel" and args.kill else op

        async def call(admin: AdminClient) -> Json:
            done: list[str] = []
            for inv in args.ids:
                await admin.request("PATCH", f"/invocations/{_seg(inv)}/{operation}")
                done.append(inv)
            return {"operation": operation, "ids": done}

        def show(data: Json, out: TextIO) -> None:
            verb = {
                "cancel": "Cancellation requested for",
                "kill": "Killed",
                "purge": "Purged",
                "pause": "Paused",
                "resume": "Resumed",
            }[operation]
            for inv in data.get("ids") or ():
                print(f"{verb} {inv}", file=out)

        return call, show

    return build


# ----------------------------------------------------------------------------------------------------------------
# kv
# ----------------------------------------------------------------------------------------------------------------


def state_query(service: str, key: str, name: str | None) -> str:
    sql = (
        "SELECT key, value_utf8, value FROM state "
        f"WHERE service_name = {sql_literal(service)} AND service_key = {sql_literal(key)}"
    )
    if name is not None:
        sql += f" AND key = {sql_literal(name)}"
    return sql + " ORDER BY key"


def _value_text(row: Any) -> str:
    text = row.get("value_utf8")
    return str(text) if text is not None else "0x" + str(row.get("value") or "")


def _kv_get(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        data = await _query(admin, state_query(args.service, args.key, args.name))
        if args.name is not None and not render.as_list(data.get("rows")):
            # 404 like the rest of the admin API; _execute prints it and exits 1.
            raise AdminHTTPError("GET", "state", 404, "Not Found", f"{args.service}/{args.key} has no state "
                                 f"entry {args.name!r}", None)  # fmt: skip
        return data

    def show(data: Json, out: TextIO) -> None:
        rows = render.as_list(data.get("rows"))
        if args.name is not None:
            print(_value_text(rows[0]), file=out)
            return
        if not rows:
            print(f"No state for {args.service}/{args.key}.", file=out)
            return
        render.table(("KEY", "VALUE"), [(r.get("key"), _value_text(r)) for r in rows], out)

    return call, show


def _kv_set(args: argparse.Namespace) -> tuple[Call, Render]:
    body: Json = {"object_key": args.key, "set": {args.name: args.value}}
    if args.version:
        body["version"] = args.version

    async def call(admin: AdminClient) -> Json:
        await admin.request("PATCH", f"/services/{_seg(args.service)}/state", body=body)
        return {"service": args.service, "key": args.key, "set": {args.name: args.value}}

    def show(data: Json, out: TextIO) -> None:
        print(f"Set {args.service}/{args.key} {args.name} = {args.value}", file=out)

    return call, show


def _kv_clear(args: argparse.Namespace) -> tuple[Call, Render]:
    body: Json = {"object_key": args.key}
    if args.name is None:
        body["clear_all"] = True
    else:
        body["clear"] = [args.name]
    if args.version:
        body["version"] = args.version

    async def call(admin: AdminClient) -> Json:
        await admin.request("PATCH", f"/services/{_seg(args.service)}/state", body=body)
        return {"service": args.service, "key": args.key, "cleared": [args.name] if args.name else "all"}

    def show(data: Json, out: TextIO) -> None:
        what = f"{args.name} of " if args.name else "all state of "
        print(f"Cleared {what}{args.service}/{args.key}", file=out)

    return call, show


_COMMANDS: dict[tuple[str, str], Callable[[argparse.Namespace], tuple[Call, Render]]] = {
    ("sql", "run"): _sql,
    ("invocations", "list"): _invocations_list,
    ("invocations", "describe"): _invocations_describe,
    **{("invocations", op): _invocations_manage(op) for op in ("cancel", "kill", "purge", "pause", "resume")},
    ("kv", "get"): _kv_get,
    ("kv", "set"): _kv_set,
    ("kv", "clear"): _kv_clear,
}

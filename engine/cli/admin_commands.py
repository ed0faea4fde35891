"""The client commands of ``capstan`` (``deployments ...``, ``services ...``): one admin API call each, printed as
a table or, with ``--json``, as the raw JSON answer.

Imports aiohttp (through :mod:`engine.cli.client`), so :mod:`engine.cli.main` imports this module only when a
client command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from engine.cli import render
from engine.cli.client import AdminClient, AdminHTTPError, AdminUnreachableError, Json

Call = Callable[[AdminClient], Awaitable[Json]]
Render = Callable[[Json, TextIO], None]


def run(args: argparse.Namespace) -> int:
    """Run the client command selected in ``args.client_command`` (e.g. ``("deployments", "list")``).

    Returns the exit code: 0, or 1 when the admin API is unreachable or answers with an error.
    """
    call, show = _COMMANDS[args.client_command](args)
    return _execute(args, call, show)


def _execute(args: argparse.Namespace, call: Call, show: Render) -> int:
    async def go() -> Json:
        async with AdminClient(args.admin_url, timeout=args.timeout, token=args.token) as admin:
            return await call(admin)

    try:
        data = asyncio.run(go())
    except AdminUnreachableError as exc:
        print(f"capstan: error: {exc}", file=sys.stderr)
        return 1
    except AdminHTTPError as exc:
        detail = f": {exc.message}" if exc.message else ""
        print(f"capstan: error: the admin API answered {exc.status} {exc.reason}{detail}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        show(data, sys.stdout)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# deployments
# ----------------------------------------------------------------------------------------------------------------


def _deployments_register(args: argparse.Namespace) -> tuple[Call, Render]:
    headers = dict(args.header or [])

    async def call(admin: AdminClient) -> Json:
        return await admin.register_deployment(
            args.uri, force=args.force, use_http_11=args.use_http_11, additional_headers=headers
        )

    def show(data: Json, out: TextIO) -> None:
        print(f"Registered deployment {render.text(data.get('id'))} ({args.uri})", file=out)
        services = render.as_list(data.get("services"))
        if services:
            print("Services:", file=out)
            for service in sorted(services, key=lambda s: str(s.get("name"))):
                render.service_block(service, out)

    return call, show


def _deployments_list(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.list_deployments()

    def show(data: Json, out: TextIO) -> None:
        deployments = render.as_list(data.get("deployments"))
        if not deployments:
            print("No deployments registered.", file=out)
            return
        rows = [
            (
                d.get("id"),
                d.get("uri", d.get("arn")),
                d.get("protocol_type"),
                render.service_revisions(d.get("services")),
                d.get("created_at"),
            )
            for d in sorted(deployments, key=lambda d: str(d.get("created_at", "")))
        ]
        render.table(("ID", "URI", "PROTOCOL", "SERVICES", "CREATED"), rows, out)

    return call, show


def _deployments_describe(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.describe_deployment(args.id)

    def show(data: Json, out: TextIO) -> None:
        versions = (data.get("min_protocol_version"), data.get("max_protocol_version"))
        headers = data.get("additional_headers")
        render.fields(
            [
                ("ID", data.get("id")),
                ("URI", data.get("uri", data.get("arn"))),
                ("Protocol", data.get("protocol_type")),
                ("HTTP version", data.get("http_version")),
                ("Protocol versions", None if versions == (None, None) else f"{versions[0]}..{versions[1]}"),
                ("SDK", data.get("sdk_version")),
                ("Created", data.get("created_at")),
                (
                    "Headers",
                    ", ".join(f"{k}={v}" for k, v in sorted(headers.items())) if isinstance(headers, dict) else None,
                ),
            ],
            out,
        )
        services = render.as_list(data.get("services"))
        print("Services:" if services else "Services: -", file=out)
        for service in sorted(services, key=lambda s: str(s.get("name"))):
            render.service_block(service, out)

    return call, show


def _deployments_remove(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.remove_deployment(args.id, force=args.force)

    def show(data: Json, out: TextIO) -> None:
        print(f"Removed deployment {args.id}", file=out)

    return call, show


# ----------------------------------------------------------------------------------------------------------------
# services
# ----------------------------------------------------------------------------------------------------------------


def _services_list(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.list_services()

    def show(data: Json, out: TextIO) -> None:
        services = render.as_list(data.get("services"))
        if not services:
            print("No services registered.", file=out)
            return
        rows = [
            (
                s.get("name"),
                s.get("ty"),
                s.get("revision"),
                ", ".join(sorted(str(h.get("name")) for h in render.handlers(s))),
                s.get("deployment_id"),
                s.get("public"),
            )
            for s in sorted(services, key=lambda s: str(s.get("name")))
        ]
        render.table(("NAME", "TYPE", "REVISION", "HANDLERS", "DEPLOYMENT", "PUBLIC"), rows, out)

    return call, show


def _services_describe(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        return await admin.describe_service(args.name)

    def show(data: Json, out: TextIO) -> None:
        pairs: list[tuple[str, Any]] = [
            ("Name", data.get("name")),
            ("Type", data.get("ty")),
            ("Revision", data.get("revision")),
            ("Deployment", data.get("deployment_id")),
            ("Public", data.get("public")),
        ]
        optional = [
            ("Documentation", "documentation"),
            ("Idempotency retention", "idempotency_retention"),
            ("Workflow retention", "workflow_completion_retention"),
            ("Journal retention", "journal_retention"),
            ("Inactivity timeout", "inactivity_timeout"),
            ("Abort timeout", "abort_timeout"),
        ]
        pairs.extend((label, data[key]) for label, key in optional if data.get(key) is not None)
        render.fields(pairs, out)
        rows = [
            (
                h.get("name"),
                render.handler_type(h),
                render.payload(h.get("input_description", h.get("input"))),
                render.payload(h.get("output_description", h.get("output"))),
            )
            for h in sorted(render.handlers(data), key=lambda h: str(h.get("name")))
        ]
        print("Handlers:" if rows else "Handlers: -", file=out)
        if rows:
            render.table(("NAME", "TYPE", "INPUT", "OUTPUT"), rows, out, indent="  ")

    return call, show


_COMMANDS: dict[tuple[str, str], Callable[[argparse.Namespace], tuple[Call, Render]]] = {
    ("deployments", "register"): _deployments_register,
    ("deployments", "list"): _deployments_list,
    ("deployments", "describe"): _deployments_describe,
    ("deployments", "remove"): _deployments_remove,
    ("services", "list"): _services_list,
    ("services", "describe"): _services_describe,
}

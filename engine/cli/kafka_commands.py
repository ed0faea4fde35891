"""``capstan kafka-clusters ...`` and ``capstan subscriptions ...``: the Kafka control plane over the admin API."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TextIO

from engine.cli import render
from engine.cli.admin_commands import Call, Render, _execute
from engine.cli.client import AdminClient, Json


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _pairs(values: list[tuple[str, str]] | None) -> dict[str, str]:
    return dict(values or [])


def run(args: argparse.Namespace) -> int:
    call, show = _COMMANDS[args.client_command](args)
    return _execute(args, call, show)


def _simple(method: str, path: Callable[[argparse.Namespace], str], body: Callable[[argparse.Namespace], Json | None],
            show: Render) -> Callable[[argparse.Namespace], tuple[Call, Render]]:  # fmt: skip
    def build(args: argparse.Namespace) -> tuple[Call, Render]:
        async def call(admin: AdminClient) -> Json:
            return await admin.request(method, path(args), body=body(args))

        return call, show

    return build


def _show_cluster(data: Json, out: TextIO) -> None:
    render.fields([("Name", data.get("name"))], out)
    for k, v in sorted((data.get("properties") or {}).items()):
        print(f"  {k} = {v}", file=out)
    subs = render.as_list(data.get("subscriptions"))
    if subs:
        print("Subscriptions:", file=out)
        for s in subs:
            print(f"  {s.get('id')}  {s.get('source')} -> {s.get('sink')}", file=out)


def _show_clusters(data: Json, out: TextIO) -> None:
    clusters = render.as_list(data.get("clusters"))
    if not clusters:
        print("No Kafka clusters.", file=out)
        return
    rows = [(c.get("name"), (c.get("properties") or {}).get("bootstrap.servers", "")) for c in clusters]
    render.table(("NAME", "BOOTSTRAP SERVERS"), rows, out)


def _show_subscription(data: Json, out: TextIO) -> None:
    render.fields(
        [("Id", data.get("id")), ("Source", data.get("source")), ("Sink", data.get("sink")),
         ("Generation", data.get("generation"))],
        out,
    )  # fmt: skip
    for k, v in sorted((data.get("options") or {}).items()):
        print(f"  {k} = {v}", file=out)
    status = data.get("status") or {}
    parts = render.as_list(status.get("partitions"))
    if parts:
        rows = [(p.get("partition"), p.get("committed"), p.get("end_offset"), p.get("lag")) for p in parts]
        render.table(("PARTITION", "COMMITTED", "END", "LAG"), rows, out, indent="  ")
    if status:
        print(
            f"ingested {status.get('ingested', 0)}, dead-lettered {status.get('dead_lettered', 0)}"
            + (f", last error: {status['last_error']}" if status.get("last_error") else ""),
            file=out,
        )


def _show_subscriptions(data: Json, out: TextIO) -> None:
    subs = render.as_list(data.get("subscriptions"))
    if not subs:
        print("No subscriptions.", file=out)
        return
    render.table(("ID", "SOURCE", "SINK"), [(s.get("id"), s.get("source"), s.get("sink")) for s in subs], out)


def _show_done(data: Json, out: TextIO) -> None:
    print("Done.", file=out)


def _show_created_subscription(data: Json, out: TextIO) -> None:
    print(f"Subscription {data.get('id')}: {data.get('source')} -> {data.get('sink')}", file=out)


def _subscriptions_list(args: argparse.Namespace) -> tuple[Call, Render]:
    params = {k: v for k, v in (("sink", args.sink), ("source", args.source)) if v}

    async def call(admin: AdminClient) -> Json:
        return await admin.request("GET", "/subscriptions", params=params)

    return call, _show_subscriptions


def _subscriptions_replay(args: argparse.Namespace) -> tuple[Call, Render]:
    async def call(admin: AdminClient) -> Json:
        started = await admin.request("POST", f"/subscriptions/{_seg(args.id)}/replay", body={"from": args.start})
        if args.no_wait:
            return started
        deadline = time.monotonic() + args.wait_timeout
        generation = started.get("generation")
        last = ""
        while True:
            sub = await admin.request("GET", f"/subscriptions/{_seg(args.id)}")
            status = sub.get("status") or {}
            parts = render.as_list(status.get("partitions"))
            lag = sum(int(p.get("lag") or 0) for p in parts)
            line = f"replaying {args.id}: ingested {status.get('ingested', 0)}, lag {lag}"
            if line != last and not args.json:
                print(line, file=sys.stderr)
                last = line
            caught_up = parts and not status.get("replaying") and sub.get("generation") == generation and lag == 0
            if caught_up:
                return sub
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay of {args.id} did not catch up within {args.wait_timeout:g}s")
            await asyncio.sleep(0.5)

    def show(data: Json, out: TextIO) -> None:
        if args.no_wait:
            print(
                f"Replay of {args.id} requested from {data.get('from')} (generation {data.get('generation')})", file=out
            )
        else:
            _show_subscription(data, out)

    return call, show


_COMMANDS: dict[tuple[str, str], Callable[[argparse.Namespace], tuple[Call, Render]]] = {
    ("kafka-clusters", "create"): _simple(
        "POST",
        lambda a: "/kafka-clusters",
        lambda a: {"name": a.name, "properties": _pairs(a.properties)},
        _show_cluster,
    ),
    ("kafka-clusters", "list"): _simple("GET", lambda a: "/kafka-clusters", lambda a: None, _show_clusters),
    ("kafka-clusters", "describe"): _simple(
        "GET", lambda a: f"/kafka-clusters/{_seg(a.name)}", lambda a: None, _show_cluster
    ),
    ("kafka-clusters", "patch"): _simple(
        "PATCH",
        lambda a: f"/kafka-clusters/{_seg(a.name)}",
        lambda a: {"properties": _pairs(a.properties)},
        _show_cluster,
    ),
    ("kafka-clusters", "delete"): _simple(
        "DELETE", lambda a: f"/kafka-clusters/{_seg(a.name)}", lambda a: None, _show_done
    ),
    ("subscriptions", "create"): _simple(
        "POST",
        lambda a: "/subscriptions",
        lambda a: {"source": a.source, "sink": a.sink, "options": _pairs(a.options)},
        _show_created_subscription,
    ),
    ("subscriptions", "list"): _subscriptions_list,
    ("subscriptions", "describe"): _simple(
        "GET", lambda a: f"/subscriptions/{_seg(a.id)}", lambda a: None, _show_subscription
    ),
    ("subscriptions", "delete"): _simple(
        "DELETE", lambda a: f"/subscriptions/{_seg(a.id)}", lambda a: None, _show_done
    ),
    ("subscriptions", "replay"): _subscriptions_replay,
}

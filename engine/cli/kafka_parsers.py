"""Argument parsers of ``capstan kafka-clusters`` and ``capstan subscriptions`` (no heavy imports: the CLI's
parser is built on every start)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parsers(commands: Any, client: argparse.ArgumentParser, pair: Callable[[str], tuple[str, str]]) -> None:
    clusters = commands.add_parser(
        "kafka-clusters",
        aliases=["kc"],
        help="create, list, describe, change and delete Kafka clusters",
        description="Kafka clusters: named sets of Kafka client properties (bootstrap.servers, security, ...).",
    )
    actions = clusters.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)
    create = actions.add_parser("create", parents=[client], help="create a cluster", description="POST /kafka-clusters")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "properties", nargs="+", type=pair, metavar="KEY=VALUE", help="e.g. bootstrap.servers=host:9092"
    )
    create.set_defaults(client_command=("kafka-clusters", "create"))
    listing = actions.add_parser("list", aliases=["ls"], parents=[client], help="list clusters (secrets redacted)")
    listing.set_defaults(client_command=("kafka-clusters", "list"))
    describe = actions.add_parser(
        "describe", aliases=["get"], parents=[client], help="one cluster and its subscriptions"
    )
    describe.add_argument("name", metavar="NAME")
    describe.set_defaults(client_command=("kafka-clusters", "describe"))
    patch = actions.add_parser("patch", parents=[client], help="replace a cluster's properties (consumers restart)")
    patch.add_argument("name", metavar="NAME")
    patch.add_argument("properties", nargs="+", type=pair, metavar="KEY=VALUE")
    patch.set_defaults(client_command=("kafka-clusters", "patch"))
    delete = actions.add_parser(
        "delete", aliases=["rm"], parents=[client], help="delete a cluster with no subscriptions"
    )
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(client_command=("kafka-clusters", "delete"))

    subs = commands.add_parser(
        "subscriptions",
        aliases=["sub"],
        help="create, list, describe, delete and replay Kafka subscriptions",
        description="Subscriptions map kafka://CLUSTER/TOPIC onto service://SERVICE/HANDLER.",
    )
    actions = subs.add_subparsers(title="commands", dest="action", metavar="COMMAND", required=True)
    create = actions.add_parser(
        "create", parents=[client], help="create a subscription", description="POST /subscriptions"
    )
    create.add_argument("source", metavar="SOURCE", help="kafka://CLUSTER/TOPIC")
    create.add_argument("sink", metavar="SINK", help="service://SERVICE/HANDLER")
    create.add_argument(
        "options", nargs="*", type=pair, metavar="KEY=VALUE",
        help="consumer properties (auto.offset.reset=earliest, group.id=...) and capstan.* options",
    )  # fmt: skip
    create.set_defaults(client_command=("subscriptions", "create"))
    listing = actions.add_parser("list", aliases=["ls"], parents=[client], help="list subscriptions")
    listing.add_argument("--sink", metavar="SINK")
    listing.add_argument("--source", metavar="SOURCE")
    listing.set_defaults(client_command=("subscriptions", "list"))
    describe = actions.add_parser("describe", aliases=["get"], parents=[client], help="one subscription with its lag")
    describe.add_argument("id", metavar="ID")
    describe.set_defaults(client_command=("subscriptions", "describe"))
    delete = actions.add_parser("delete", aliases=["rm"], parents=[client], help="delete a subscription")
    delete.add_argument("id", metavar="ID")
    delete.set_defaults(client_command=("subscriptions", "delete"))
    replay = actions.add_parser(
        "replay",
        parents=[client],
        help="reprocess a subscription's topic, showing progress",
        description="Reprocess the topic from the earliest offset or from a timestamp: every record is invoked "
        "again. Shows progress until the subscription has caught up (or --no-wait).",
    )
    replay.add_argument("id", metavar="ID")
    replay.add_argument("--from", dest="start", default="earliest", metavar="earliest|ISO-TIMESTAMP")
    replay.add_argument("--no-wait", action="store_true", help="return once the replay is requested")
    replay.add_argument("--wait-timeout", type=float, default=600.0, metavar="SECONDS")
    replay.set_defaults(client_command=("subscriptions", "replay"))

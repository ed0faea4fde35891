"""Admin API routes for Kafka clusters and subscriptions (Restate's shapes, reference §2.6), plus replay.

Changes are stored through the engine (``PutMetadata`` on partition 0's log) before they are acknowledged; the
reconciler reacts to the applied change.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from engine.errors import LogError, OverloadedError
from engine.partition.types import PutMetadata
from subscriptions.models import (
    CAPSTAN_OPTIONS,
    KafkaCluster,
    KafkaClusterPatch,
    KafkaClusterRequest,
    ReplayRequest,
    Subscription,
    SubscriptionRequest,
    new_subscription_id,
    parse_sink,
    parse_source,
)
from subscriptions.registry import CLUSTER_PREFIX, SUBSCRIPTION_PREFIX, SubscriptionRegistry

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

OptionsValidator = Callable[[Mapping[str, str]], None]  # raises ValueError with a message fit for a 400
StatusProvider = Callable[[str], "dict[str, Any] | None"]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


class SubscriptionsAdmin:
    def __init__(
        self,
        engine: Engine,
        registry: SubscriptionRegistry,
        *,
        validate_options: OptionsValidator,
        status: StatusProvider,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.validate_options = validate_options
        self.status = status

    def add_routes(self, app: web.Application, prefixes: tuple[str, ...]) -> None:
        for p in prefixes:
            r = app.router
            r.add_post(f"{p}/kafka-clusters", self.create_cluster)
            r.add_get(f"{p}/kafka-clusters", self.list_clusters)
            r.add_get(f"{p}/kafka-clusters/{{name}}", self.get_cluster)
            r.add_patch(f"{p}/kafka-clusters/{{name}}", self.patch_cluster)
            r.add_delete(f"{p}/kafka-clusters/{{name}}", self.delete_cluster)
            r.add_post(f"{p}/subscriptions", self.create_subscription)
            r.add_get(f"{p}/subscriptions", self.list_subscriptions)
            r.add_get(f"{p}/subscriptions/{{id}}", self.get_subscription)
            r.add_delete(f"{p}/subscriptions/{{id}}", self.delete_subscription)
            r.add_post(f"{p}/subscriptions/{{id}}/replay", self.replay_subscription)

    async def _store(self, rows: list[tuple[str, bytes | None]]) -> web.Response | None:
        try:
            await self.engine.propose_metadata([PutMetadata(key=k, value=v) for k, v in rows])
        except (OverloadedError, LogError) as exc:
            return _error(503, f"could not store the change: {exc}")
        return None

    # ------------------------------------------------------------------------------------------- clusters

    async def create_cluster(self, request: web.Request) -> web.Response:
        try:
            body = KafkaClusterRequest.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        existing = self.registry.clusters.get(body.name)
        if existing is not None:
            if existing.properties == body.properties:
                return web.json_response(existing.redacted(), status=200)
            return _error(409, f"kafka cluster {body.name} exists with other properties; use PATCH to change them")
        cluster = KafkaCluster(name=body.name, properties=body.properties)
        failed = await self._store([(CLUSTER_PREFIX + cluster.name, cluster.to_row())])
        if failed is not None:
            return failed
        resp = web.json_response(cluster.redacted(), status=201)
        resp.headers["location"] = f"kafka-clusters/{cluster.name}"
        return resp

    async def list_clusters(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"clusters": [c.redacted() for c in sorted(self.registry.clusters.values(), key=lambda c: c.name)]}
        )

    async def get_cluster(self, request: web.Request) -> web.Response:
        cluster = self.registry.clusters.get(request.match_info["name"])
        if cluster is None:
            return _error(404, f"kafka cluster {request.match_info['name']} not found")
        out = cluster.redacted()
        out["subscriptions"] = [s.to_json() for s in self.registry.of_cluster(cluster.name)]
        return web.json_response(out)

    async def patch_cluster(self, request: web.Request) -> web.Response:
        cluster = self.registry.clusters.get(request.match_info["name"])
        if cluster is None:
            return _error(404, f"kafka cluster {request.match_info['name']} not found")
        try:
            body = KafkaClusterPatch.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        updated = KafkaCluster(name=cluster.name, properties=body.properties)
        failed = await self._store([(CLUSTER_PREFIX + cluster.name, updated.to_row())])
        return failed or web.json_response(updated.redacted())

    async def delete_cluster(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.registry.clusters:
            return _error(404, f"kafka cluster {name} not found")
        users = self.registry.of_cluster(name)
        if users:
            return _error(
                409,
                f"kafka cluster {name} is used by subscriptions {', '.join(s.id for s in users)}; delete them first",
            )
        failed = await self._store([(CLUSTER_PREFIX + name, None)])
        return failed or web.Response(status=202)

    # ------------------------------------------------------------------------------------------- subscriptions

    async def create_subscription(self, request: web.Request) -> web.Response:
        try:
            body = SubscriptionRequest.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        try:
            cluster_name, topic = parse_source(body.source)
            service_name, handler_name = parse_sink(body.sink)
        except ValueError as exc:
            return _error(400, str(exc))
        if cluster_name not in self.registry.clusters:
            return _error(400, f"kafka cluster {cluster_name} does not exist; create it with POST /kafka-clusters")
        service = self.engine.registry.service(service_name)
        if service is None:
            return _error(400, f"sink service {service_name} is not registered")
        if handler_name not in service.handlers:
            return _error(400, f"sink service {service_name} has no handler {handler_name}")
        unknown = sorted(k for k in body.options if k.startswith("capstan.") and k not in CAPSTAN_OPTIONS)
        if unknown:
            return _error(400, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(CAPSTAN_OPTIONS))}")
        if body.options.get("capstan.ordering", "partition") != "partition":
            return _error(400, "capstan.ordering: the only ordering is 'partition'")
        if body.options.get("auto.offset.reset", "latest") not in ("earliest", "latest"):
            return _error(400, "auto.offset.reset must be earliest or latest")
        try:
            self.validate_options(body.options)
        except ValueError as exc:
            return _error(400, f"invalid options: {exc}")
        existing = self.registry.find(
            cluster=cluster_name, topic=topic, service=service_name, handler=handler_name, options=body.options
        )
        if existing is not None:
            return web.json_response(existing.to_json(), status=200)
        sub = Subscription(
            id=new_subscription_id(),
            cluster=cluster_name,
            topic=topic,
            service=service_name,
            handler=handler_name,
            options=dict(body.options),
            created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        )
        failed = await self._store([(SUBSCRIPTION_PREFIX + sub.id, sub.to_row())])
        if failed is not None:
            return failed
        logger.info("subscription %s created: %s -> %s", sub.id, sub.source, sub.sink)
        resp = web.json_response(sub.to_json(), status=201)
        resp.headers["location"] = f"subscriptions/{sub.id}"
        return resp

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        subs = sorted(self.registry.subscriptions.values(), key=lambda s: s.created_at)
        if "sink" in request.query:
            subs = [s for s in subs if s.sink == request.query["sink"]]
        if "source" in request.query:
            subs = [s for s in subs if s.source == request.query["source"]]
        return web.json_response({"subscriptions": [s.to_json() for s in subs]})

    async def get_subscription(self, request: web.Request) -> web.Response:
        sub = self.registry.subscriptions.get(request.match_info["id"])
        if sub is None:
            return _error(404, f"subscription {request.match_info['id']} not found")
        out = sub.to_json()
        out["status"] = self.status(sub.id)
        return web.json_response(out)

    async def delete_subscription(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in self.registry.subscriptions:
            return _error(404, f"subscription {sid} not found")
        failed = await self._store([(SUBSCRIPTION_PREFIX + sid, None)])
        if failed is None:
            logger.info("subscription %s deleted", sid)
        return failed or web.Response(status=202)

    async def replay_subscription(self, request: web.Request) -> web.Response:
        """Reprocess the topic from ``earliest`` or a timestamp: records are invoked again (new dedup ids)."""
        sub = self.registry.subscriptions.get(request.match_info["id"])
        if sub is None:
            return _error(404, f"subscription {request.match_info['id']} not found")
        try:
            raw = await request.read()
            body = ReplayRequest.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        start = body.from_
        if start != "earliest":
            try:
                when = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
            except ValueError:
                return _error(400, f"from: expected 'earliest' or an ISO-8601 timestamp, got {start!r}")
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            start = when.isoformat()
        updated = sub.with_replay(start)
        failed = await self._store([(SUBSCRIPTION_PREFIX + sub.id, updated.to_row())])
        if failed is not None:
            return failed
        logger.info("subscription %s: replay from %s (generation %d)", sub.id, start, updated.generation)
        return web.json_response({"id": sub.id, "from": start, "generation": updated.generation}, status=202)


__all__ = ["SubscriptionsAdmin"]

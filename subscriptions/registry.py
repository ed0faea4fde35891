"""In-memory view of the stored clusters and subscriptions (rows ``kafka-cluster/<name>``, ``subscription/<id>``),
updated from the engine's metadata changes."""

from __future__ import annotations

from subscriptions.models import KafkaCluster, Subscription

CLUSTER_PREFIX = "kafka-cluster/"
SUBSCRIPTION_PREFIX = "subscription/"


class SubscriptionRegistry:
    def __init__(self) -> None:
        self.clusters: dict[str, KafkaCluster] = {}
        self.subscriptions: dict[str, Subscription] = {}

    def apply(self, key: str, value: bytes | None) -> bool:
        """Apply one metadata change; True if it concerned clusters or subscriptions."""
        if key.startswith(CLUSTER_PREFIX):
            name = key[len(CLUSTER_PREFIX) :]
            if value is None:
                self.clusters.pop(name, None)
            else:
                self.clusters[name] = KafkaCluster.from_row(value)
            return True
        if key.startswith(SUBSCRIPTION_PREFIX):
            sid = key[len(SUBSCRIPTION_PREFIX) :]
            if value is None:
                self.subscriptions.pop(sid, None)
            else:
                self.subscriptions[sid] = Subscription.from_row(value)
            return True
        return False

    def find(
        self, *, cluster: str, topic: str, service: str, handler: str, options: dict[str, str]
    ) -> Subscription | None:
        """An existing subscription with the same source, sink and options (creation is idempotent)."""
        for sub in self.subscriptions.values():
            if (sub.cluster, sub.topic, sub.service, sub.handler, sub.options) == (
                cluster,
                topic,
                service,
                handler,
                options,
            ):
                return sub
        return None

    def of_cluster(self, name: str) -> list[Subscription]:
        return [s for s in self.subscriptions.values() if s.cluster == name]

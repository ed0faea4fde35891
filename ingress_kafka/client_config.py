"""librdkafka-style properties (what Restate users put in a cluster or subscription) → aiokafka arguments."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

_COMMON = {
    "client.id": ("client_id", str),
    "security.protocol": ("security_protocol", str),
    "sasl.mechanism": ("sasl_mechanism", str),
    "sasl.mechanisms": ("sasl_mechanism", str),
    "sasl.username": ("sasl_plain_username", str),
    "sasl.password": ("sasl_plain_password", str),
    "request.timeout.ms": ("request_timeout_ms", int),
    "metadata.max.age.ms": ("metadata_max_age_ms", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
}
_CONSUMER = {
    "session.timeout.ms": ("session_timeout_ms", int),
    "heartbeat.interval.ms": ("heartbeat_interval_ms", int),
    "max.poll.interval.ms": ("max_poll_interval_ms", int),
    "fetch.max.bytes": ("fetch_max_bytes", int),
    "fetch.min.bytes": ("fetch_min_bytes", int),
    "fetch.wait.max.ms": ("fetch_max_wait_ms", int),
    "max.partition.fetch.bytes": ("max_partition_fetch_bytes", int),
    "isolation.level": ("isolation_level", str),
    "auto.offset.reset": ("auto_offset_reset", str),
}
# Handled by Capstan itself, never passed to the client.
_OWN = {"bootstrap.servers", "metadata.broker.list", "group.id", "enable.auto.commit", "enable.auto.offset.store"}


def bootstrap_servers(properties: Mapping[str, str]) -> str:
    return properties.get("bootstrap.servers") or properties.get("metadata.broker.list") or ""


def client_kwargs(properties: Mapping[str, str], *, consumer: bool) -> dict[str, Any]:
    """aiokafka keyword arguments; unknown properties are ignored with one warning each (as a librdkafka
    property aiokafka has no equivalent for)."""
    table = {**_COMMON, **(_CONSUMER if consumer else {})}
    out: dict[str, Any] = {"bootstrap_servers": bootstrap_servers(properties)}
    for name, value in properties.items():
        if name in _OWN or name.startswith("capstan."):
            continue
        mapped = table.get(name)
        if mapped is None:
            if consumer or name not in _CONSUMER:
                logger.warning("Kafka property %s is not supported by the Kafka client and is ignored", name)
            continue
        arg, conv = mapped
        out[arg] = conv(value)
    return out

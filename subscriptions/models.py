"""Kafka clusters and subscriptions: pydantic at the API edge, frozen dataclasses inside, JSON rows when stored.

A cluster is a named set of Kafka client properties (librdkafka names, as in Restate: ``bootstrap.servers``,
``security.protocol``, ``sasl.*``). A subscription maps ``kafka://<cluster>/<topic>`` onto
``service://<Service>/<handler>`` with options: Kafka consumer properties (``group.id``, ``auto.offset.reset``) and
Capstan's own ``capstan.*`` options (key and value formats, dead-letter topic, ordering).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLUSTER_NAME = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62}[a-zA-Z0-9])?$")
# Words that mark a property as a secret (librdkafka: sasl.password, ssl.key.password, ssl.keystore.password,
# sasl.oauthbearer.client.secret, sasl.jaas.config, sasl.oauthbearer.config, ...). "key" counts as a word of the
# name or the start or end of one (ssl.key.pem, ssl.keystore.location, sasl.kerberos.keytab, api.key).
SECRET_WORDS = ("password", "secret", "token", "jaas", "credential", "oauthbearer.config", "user.info", "private")
REDACTED = "***"
_NAME_WORDS = re.compile(r"[._\-]")
# scheme://user:password@host -> scheme://user:***@host (schema registry URLs may carry basic-auth credentials)
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:@/\s]*):[^@/\s]*@")

# Capstan options a subscription may carry (everything else is a Kafka consumer property).
DLQ_TOPIC = "capstan.dlq.topic"
ORDERING = "capstan.ordering"  # "partition": plain-service sinks get one invocation at a time per Kafka partition
CAPSTAN_OPTIONS = frozenset(
    {
        DLQ_TOPIC,
        ORDERING,
        "capstan.key.format",
        "capstan.value.format",
        "capstan.schema.registry.url",
        "capstan.value.schema",
        "capstan.key.schema",
        "capstan.value.wire.format",
        "capstan.key.wire.format",
    }
)


class KafkaClusterRequest(BaseModel):
    """``POST /kafka-clusters`` body."""

    model_config = ConfigDict(extra="forbid")

    name: str
    properties: dict[str, str]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLUSTER_NAME.match(value):
            raise ValueError("a cluster name is hostname-like: letters, digits, '.', '-' (at most 64 characters)")
        return value

    @field_validator("properties")
    @classmethod
    def _bootstrap(cls, value: dict[str, str]) -> dict[str, str]:
        if not (value.get("bootstrap.servers") or value.get("metadata.broker.list")):
            raise ValueError("properties must contain bootstrap.servers (or metadata.broker.list)")
        return value


class KafkaClusterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    properties: dict[str, str]

    _bootstrap = field_validator("properties")(KafkaClusterRequest._bootstrap.__func__)  # type: ignore[attr-defined]


class SubscriptionRequest(BaseModel):
    """``POST /subscriptions`` body."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="kafka://<cluster>/<topic>")
    sink: str = Field(description="service://<Service>/<handler>")
    options: dict[str, str] = Field(default_factory=dict)


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "earliest" or an ISO-8601 timestamp (records at or after it)
    from_: str = Field("earliest", alias="from")


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaCluster:
    name: str
    properties: dict[str, str]

    def to_row(self) -> bytes:
        return json.dumps({"name": self.name, "properties": self.properties}, sort_keys=True).encode()

    @classmethod
    def from_row(cls, raw: bytes) -> KafkaCluster:
        d = json.loads(raw)
        return cls(name=d["name"], properties=dict(d["properties"]))

    def redacted(self) -> dict[str, Any]:
        """What the admin API shows: secret properties as ``***``."""
        return {"name": self.name, "properties": redact_properties(self.properties)}


def is_secret_property(name: str) -> bool:
    """Whether a cluster property or subscription option holds a secret (its value is never shown)."""
    lowered = name.lower()
    if lowered in CAPSTAN_OPTIONS:  # capstan.key.format and friends name formats, not keys
        return False
    if any(word in lowered for word in SECRET_WORDS):
        return True
    return any(part.startswith("key") or part.endswith("key") for part in _NAME_WORDS.split(lowered))


def redact_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """Properties (sorted by name) with secret values replaced by ``***`` and passwords in URLs hidden; this is
    the only form in which cluster properties and subscription options leave the engine (admin API, SQL, logs)."""
    return {
        k: REDACTED if is_secret_property(k) else _URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", v)
        for k, v in sorted(properties.items())
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    id: str
    cluster: str
    topic: str
    service: str
    handler: str
    options: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    # Replay: a replay bumps ``generation`` (new dedup producer ids, so records are processed again) and records
    # where to start; ``replayed_generation`` is set once the consumer has moved its offsets there.
    generation: int = 0
    replay_from: str | None = None
    replayed_generation: int = 0

    @property
    def source(self) -> str:
        return f"kafka://{self.cluster}/{self.topic}"

    @property
    def sink(self) -> str:
        return f"service://{self.service}/{self.handler}"

    @property
    def group_id(self) -> str:
        return self.options.get("group.id") or self.id

    @property
    def dlq_topic(self) -> str | None:
        return self.options.get(DLQ_TOPIC) or None

    @property
    def ordered(self) -> bool:
        return self.options.get(ORDERING) == "partition"

    @property
    def replay_pending(self) -> bool:
        return self.replay_from is not None and self.replayed_generation < self.generation

    def with_replay(self, start: str) -> Subscription:
        return replace(self, generation=self.generation + 1, replay_from=start)

    def to_row(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "cluster": self.cluster,
                "topic": self.topic,
                "service": self.service,
                "handler": self.handler,
                "options": self.options,
                "created_at": self.created_at,
                "generation": self.generation,
                "replay_from": self.replay_from,
                "replayed_generation": self.replayed_generation,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_row(cls, raw: bytes) -> Subscription:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            cluster=d["cluster"],
            topic=d["topic"],
            service=d["service"],
            handler=d["handler"],
            options=dict(d.get("options") or {}),
            created_at=d.get("created_at", ""),
            generation=int(d.get("generation", 0)),
            replay_from=d.get("replay_from"),
            replayed_generation=int(d.get("replayed_generation", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "sink": self.sink,
            "options": redact_properties(self.options),
            "created_at": self.created_at,
            "generation": self.generation,
        }


_B62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def new_subscription_id() -> str:
    """``sub_1`` + 22 base62 characters (a random 128-bit number)."""
    n = int.from_bytes(secrets.token_bytes(16), "big")
    out = []
    for _ in range(22):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "sub_1" + "".join(reversed(out))


def parse_source(source: str) -> tuple[str, str]:
    match = re.fullmatch(r"kafka://([^/]+)/([^/]+)", source)
    if not match:
        raise ValueError(f"source {source!r}: expected kafka://<cluster>/<topic>")
    topic = match.group(2)
    if not re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", topic):
        raise ValueError(f"source {source!r}: {topic!r} is not a valid Kafka topic name")
    return match.group(1), topic


def parse_sink(sink: str) -> tuple[str, str]:
    match = re.fullmatch(r"service://([^/]+)/([^/]+)", sink)
    if not match:
        raise ValueError(f"sink {sink!r}: expected service://<Service>/<handler>")
    return match.group(1), match.group(2)


def encode_context(data: dict[str, Any]) -> bytes:
    """The DLQ context stored with an invocation: JSON with bytes as base64."""

    def conv(v: Any) -> Any:
        if isinstance(v, bytes):
            return {"b64": base64.b64encode(v).decode()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return json.dumps({k: conv(v) for k, v in data.items()}).encode()


def decode_context(raw: bytes) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, dict) and set(v) == {"b64"}:
            return base64.b64decode(v["b64"])
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in json.loads(raw).items()}

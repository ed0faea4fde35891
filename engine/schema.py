"""The schema registry: registered deployments and the services they expose.

Durable form: metadata rows (``deployment/<id>``, ``service/<name>``) written through partition 0's log as
``PutMetadata`` records, so registration is durable before it is acknowledged and replays like everything else.
In memory: :class:`SchemaRegistry`, rebuilt from the rows at start-up and updated by ``MetadataChanged`` effects.
Rows are JSON (they are read by operators' tools too); everything here is plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from engine.config import InvocationSection
from engine.partition.types import HandlerType, RetentionPolicy, ServiceType

SERVICE_TY = {
    "SERVICE": ServiceType.SERVICE,
    "VIRTUAL_OBJECT": ServiceType.VIRTUAL_OBJECT,
    "WORKFLOW": ServiceType.WORKFLOW,
}
HANDLER_TY = {
    "EXCLUSIVE": HandlerType.EXCLUSIVE,
    "SHARED": HandlerType.SHARED,
    "WORKFLOW": HandlerType.WORKFLOW,
}
SERVICE_TY_NAME = {
    ServiceType.SERVICE: "Service",
    ServiceType.VIRTUAL_OBJECT: "VirtualObject",
    ServiceType.WORKFLOW: "Workflow",
}
HANDLER_TY_NAME = {
    HandlerType.EXCLUSIVE: "Exclusive",
    HandlerType.SHARED: "Shared",
    HandlerType.WORKFLOW: "Workflow",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Handler:
    name: str
    ty: HandlerType
    input: dict[str, Any]
    output: dict[str, Any]
    public: bool
    documentation: str | None = None
    # Handler-level options of the manifest; None: the service's value applies.
    idempotency_retention_ms: int | None = None
    journal_retention_ms: int | None = None
    workflow_completion_retention_ms: int | None = None
    inactivity_timeout_ms: int | None = None
    abort_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    ty: ServiceType
    handlers: dict[str, Handler]
    deployment_id: str
    revision: int
    public: bool
    idempotency_retention_ms: int | None
    journal_retention_ms: int | None
    workflow_completion_retention_ms: int | None
    inactivity_timeout_ms: int | None
    abort_timeout_ms: int | None
    enable_lazy_state: bool
    documentation: str | None
    metadata: dict[str, str]
    retry_policy: dict[str, Any]
    handler_retry_policy: dict[str, dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @property
    def keyed(self) -> bool:
        return self.ty != ServiceType.SERVICE

    def option_ms(self, handler: str, name: str) -> int | None:
        """A handler's option (e.g. ``idempotency_retention_ms``), falling back to the service's."""
        h = self.handlers.get(handler)
        value: int | None = getattr(h, name) if h is not None else None
        return value if value is not None else getattr(self, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    id: str
    uri: str
    kind: str  # "http" or "asgi"
    protocol_mode: str
    min_protocol_version: int
    max_protocol_version: int
    sdk_version: str | None
    additional_headers: dict[str, str]
    use_http_11: bool
    created_at: str
    services: tuple[str, ...]
    manifest: dict[str, Any] = field(repr=False)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "id": self.id,
                "uri": self.uri,
                "kind": self.kind,
                "protocol_mode": self.protocol_mode,
                "min_protocol_version": self.min_protocol_version,
                "max_protocol_version": self.max_protocol_version,
                "sdk_version": self.sdk_version,
                "additional_headers": self.additional_headers,
                "use_http_11": self.use_http_11,
                "created_at": self.created_at,
                "services": list(self.services),
                "manifest": self.manifest,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Deployment:
        d = json.loads(raw)
        return cls(
            id=d["id"],
            uri=d["uri"],
            kind=d["kind"],
            protocol_mode=d["protocol_mode"],
            min_protocol_version=d["min_protocol_version"],
            max_protocol_version=d["max_protocol_version"],
            sdk_version=d.get("sdk_version"),
            additional_headers=d.get("additional_headers") or {},
            use_http_11=bool(d.get("use_http_11")),
            created_at=d["created_at"],
            services=tuple(d.get("services") or ()),
            manifest=d.get("manifest") or {},
        )


def _retry_policy(opts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if opts.get("retryPolicyInitialInterval") is not None:
        out["initial_ms"] = opts["retryPolicyInitialInterval"]
    if opts.get("retryPolicyMaxInterval") is not None:
        out["max_ms"] = opts["retryPolicyMaxInterval"]
    if opts.get("retryPolicyMaxAttempts") is not None:
        out["max_attempts"] = opts["retryPolicyMaxAttempts"]
    if opts.get("retryPolicyExponentiationFactor") is not None:
        out["factor"] = opts["retryPolicyExponentiationFactor"]
    if opts.get("retryPolicyOnMaxAttempts") is not None:
        out["on_max_attempts"] = str(opts["retryPolicyOnMaxAttempts"]).lower()
    return out


def service_row(
    manifest_service: dict[str, Any], *, deployment_id: str, revision: int, public: bool | None = None
) -> bytes:
    """The metadata row for one service of a manifest (camelCase manifest JSON in, our row out)."""
    return json.dumps(
        {
            "manifest": manifest_service,
            "deployment_id": deployment_id,
            "revision": revision,
            "public": (not manifest_service.get("ingressPrivate", False)) if public is None else public,
            "retry_policy": _retry_policy(manifest_service),
            "handler_retry_policy": {
                h["name"]: _retry_policy(h) for h in manifest_service.get("handlers", []) if _retry_policy(h)
            },
        },
        sort_keys=True,
    ).encode()


def service_from_row(raw: bytes) -> Service:
    row = json.loads(raw)
    m = row["manifest"]
    sty = SERVICE_TY[m["ty"]]
    handlers: dict[str, Handler] = {}
    for h in m.get("handlers", []):
        declared = h.get("ty")
        if declared is not None:
            hty = HANDLER_TY[declared]
        elif sty == ServiceType.VIRTUAL_OBJECT:
            hty = HandlerType.EXCLUSIVE
        elif sty == ServiceType.WORKFLOW:
            hty = HandlerType.SHARED if h["name"] != "run" else HandlerType.WORKFLOW
        else:
            hty = HandlerType.EXCLUSIVE
        handlers[h["name"]] = Handler(
            name=h["name"],
            ty=hty,
            input=h.get("input") or {},
            output=h.get("output") or {},
            public=row["public"] and not h.get("ingressPrivate", False),
            documentation=h.get("documentation"),
            idempotency_retention_ms=h.get("idempotencyRetention"),
            journal_retention_ms=h.get("journalRetention"),
            workflow_completion_retention_ms=h.get("workflowCompletionRetention"),
            inactivity_timeout_ms=h.get("inactivityTimeout"),
            abort_timeout_ms=h.get("abortTimeout"),
        )
    return Service(
        name=m["name"],
        ty=sty,
        handlers=handlers,
        deployment_id=row["deployment_id"],
        revision=row["revision"],
        public=row["public"],
        idempotency_retention_ms=m.get("idempotencyRetention"),
        journal_retention_ms=m.get("journalRetention"),
        workflow_completion_retention_ms=m.get("workflowCompletionRetention"),
        inactivity_timeout_ms=m.get("inactivityTimeout"),
        abort_timeout_ms=m.get("abortTimeout"),
        enable_lazy_state=bool(m.get("enableLazyState", False)),
        documentation=m.get("documentation"),
        metadata=m.get("metadata") or {},
        retry_policy=row.get("retry_policy") or {},
        handler_retry_policy=row.get("handler_retry_policy") or {},
        raw=row,
    )


class SchemaRegistry:
    """In-memory view of the metadata rows. Mutated only on the event loop (effects of applied records)."""

    def __init__(self) -> None:
        self.deployments: dict[str, Deployment] = {}
        self.services: dict[str, Service] = {}

    def apply(self, key: str, value: bytes | None) -> None:
        kind, _, name = key.partition("/")
        if kind == "deployment":
            if value is None:
                self.deployments.pop(name, None)
            else:
                self.deployments[name] = Deployment.from_json(value)
        elif kind == "service":
            if value is None:
                self.services.pop(name, None)
            else:
                self.services[name] = service_from_row(value)

    def deployment_by_uri(self, uri: str) -> Deployment | None:
        for d in self.deployments.values():
            if d.uri == uri:
                return d
        return None

    def service(self, name: str) -> Service | None:
        return self.services.get(name)


def registration_records(
    *,
    registry: SchemaRegistry,
    deployment_id: str,
    uri: str,
    kind: str,
    manifest: dict[str, Any],
    protocol_mode: str,
    sdk_version: str | None,
    additional_headers: dict[str, str],
    use_http_11: bool,
) -> tuple[Deployment, list[tuple[str, bytes]]]:
    """The deployment row plus one row per service it exposes (each service's revision bumped), as
    ``(metadata key, value)`` pairs to store together."""
    import datetime

    dep = Deployment(
        id=deployment_id,
        uri=uri,
        kind=kind,
        protocol_mode=protocol_mode,
        min_protocol_version=int(manifest["minProtocolVersion"]),
        max_protocol_version=int(manifest["maxProtocolVersion"]),
        sdk_version=sdk_version,
        additional_headers=additional_headers,
        use_http_11=use_http_11,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(),
        services=tuple(s["name"] for s in manifest.get("services", [])),
        manifest=manifest,
    )
    rows = [(f"deployment/{dep.id}", dep.to_json())]
    for svc in manifest.get("services", []):
        current = registry.service(svc["name"])
        revision = 1 if current is None else current.revision + 1
        rows.append((f"service/{svc['name']}", service_row(svc, deployment_id=dep.id, revision=revision)))
    return dep, rows


def retention_policy(
    *, service: Service, handler: str, idempotent: bool, defaults: InvocationSection
) -> RetentionPolicy:
    """Restate's rule: a workflow ``run`` or an idempotent invocation keeps its completion for the workflow /
    idempotency retention and its journal no longer than that; otherwise both follow the journal retention.
    The service's (or handler's) manifest options override the engine's ``[invocation]`` defaults."""
    default_journal_ms = _ms(defaults.default_journal_retention)
    default_idempotency_ms = _ms(defaults.default_idempotency_retention)
    default_workflow_ms = _ms(defaults.default_workflow_completion_retention)
    journal = service.option_ms(handler, "journal_retention_ms")
    journal_ms = default_journal_ms if journal is None else journal
    h = service.handlers.get(handler)
    if h is not None and h.ty == HandlerType.WORKFLOW:
        completion = service.option_ms(handler, "workflow_completion_retention_ms")
        completion_ms = default_workflow_ms if completion is None else completion
        return RetentionPolicy(completion_ms=completion_ms, journal_ms=min(journal_ms, completion_ms))
    if idempotent:
        completion = service.option_ms(handler, "idempotency_retention_ms")
        completion_ms = default_idempotency_ms if completion is None else completion
        return RetentionPolicy(completion_ms=completion_ms, journal_ms=min(journal_ms, completion_ms))
    return RetentionPolicy(completion_ms=0, journal_ms=journal_ms)


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)

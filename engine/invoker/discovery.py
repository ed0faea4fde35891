"""Deployment discovery: the endpoint manifest an SDK serves on ``GET /discover`` (service-protocol.md §5).

:func:`parse_discovery` validates one discovery response the way Restate does (§5.3) and turns every problem
into a :class:`~engine.errors.DeploymentError` whose ``status`` the admin API answers with:

- ``400``: the deployment answered, but it is not something we can register (404 "wrong path", 401/403
  identity check, no common manifest or protocol version, not a manifest, invalid manifest);
- ``502``: the deployment is unreachable (raised by the transports) or failed (5xx, 408, 429).

The manifest models are pydantic (an edge): attribute names are snake_case, JSON names camelCase; durations
are ``timedelta`` (milliseconds on the wire). Unknown fields are ignored, so newer SDKs still register.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from engine.errors import DeploymentError

__all__ = [
    "DISCOVERY_ACCEPT",
    "HANDLER_NAME_PATTERN",
    "MANIFEST_CONTENT_TYPES",
    "MAX_PROTOCOL_VERSION",
    "MIN_PROTOCOL_VERSION",
    "SERVICE_NAME_PATTERN",
    "DiscoveryResponse",
    "EndpointManifest",
    "HandlerManifest",
    "HandlerType",
    "InputPayload",
    "OutputPayload",
    "ProtocolMode",
    "ServiceManifest",
    "ServiceType",
    "negotiate_protocol_version",
    "parse_discovery",
]

# Service protocol versions Capstan speaks (V5 = baseline, V6 adds random_seed and Failure.metadata).
MIN_PROTOCOL_VERSION = 5
MAX_PROTOCOL_VERSION = 6

MANIFEST_CONTENT_TYPES: tuple[str, ...] = tuple(
    f"application/vnd.restate.endpointmanifest.v{n}+json" for n in range(1, 5)
)
# Exactly what Restate 1.7 sends (comma + space, ascending). Not offering v5 keeps Python's
# ``eagerStateKeysWhitelist`` (outside Restate's schema) out of the manifest.
DISCOVERY_ACCEPT = ", ".join(MANIFEST_CONTENT_TYPES)

SERVICE_NAME_PATTERN = r"^([a-zA-Z]|_[a-zA-Z0-9])[a-zA-Z0-9._-]*$"
HANDLER_NAME_PATTERN = r"^([a-zA-Z]|_[a-zA-Z0-9])[a-zA-Z0-9_]*$"

_I32_MAX = 2**31 - 1
_BODY_EXCERPT_CHARS = 300


def _millis_to_timedelta(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a duration in milliseconds (a number)")
    if value < 0:
        raise ValueError("a duration must not be negative")
    return timedelta(milliseconds=value)


def _timedelta_to_millis(value: timedelta) -> int:
    return value // timedelta(milliseconds=1)


Millis = Annotated[
    timedelta,
    BeforeValidator(_millis_to_timedelta),
    PlainSerializer(_timedelta_to_millis, return_type=int),
]


class ProtocolMode(enum.StrEnum):
    BIDI_STREAM = "BIDI_STREAM"
    REQUEST_RESPONSE = "REQUEST_RESPONSE"


class ServiceType(enum.StrEnum):
    SERVICE = "SERVICE"
    VIRTUAL_OBJECT = "VIRTUAL_OBJECT"
    WORKFLOW = "WORKFLOW"


class HandlerType(enum.StrEnum):
    EXCLUSIVE = "EXCLUSIVE"
    SHARED = "SHARED"
    WORKFLOW = "WORKFLOW"


class _Manifest(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class InputPayload(_Manifest):
    """``{}`` means "no input"; an absent ``input`` means the default (``*/*``, not required)."""

    required: bool | None = None
    content_type: str | None = None
    json_schema: Any = None


class OutputPayload(_Manifest):
    content_type: str | None = None
    set_content_type_if_empty: bool | None = None
    json_schema: Any = None


class _Options(_Manifest):
    """Options a service and its handlers both declare (manifest v2-v4). ``None`` = not set."""

    documentation: str | None = None
    metadata: dict[str, str] | None = None
    inactivity_timeout: Millis | None = None
    abort_timeout: Millis | None = None
    journal_retention: Millis | None = None
    idempotency_retention: Millis | None = None
    enable_lazy_state: bool | None = None
    ingress_private: bool | None = None
    retry_policy_initial_interval: Millis | None = None
    retry_policy_max_interval: Millis | None = None
    retry_policy_max_attempts: int | None = Field(None, ge=1)
    retry_policy_exponentiation_factor: float | None = Field(None, ge=1.0)
    retry_policy_on_max_attempts: Literal["PAUSE", "KILL"] | None = None


class HandlerManifest(_Options):
    name: str = Field(pattern=HANDLER_NAME_PATTERN)
    # Unset: EXCLUSIVE in a virtual object, WORKFLOW in a workflow, nothing in a service
    # (see ServiceManifest.handler_type).
    ty: HandlerType | None = None
    input: InputPayload | None = None
    output: OutputPayload | None = None
    workflow_completion_retention: Millis | None = None


class ServiceManifest(_Options):
    name: str = Field(pattern=SERVICE_NAME_PATTERN)
    ty: ServiceType
    handlers: tuple[HandlerManifest, ...]

    @model_validator(mode="after")
    def _check_handlers(self) -> ServiceManifest:
        seen: set[str] = set()
        for handler in self.handlers:
            if handler.name in seen:
                raise ValueError(f"service {self.name}: handler {handler.name!r} declared twice")
            seen.add(handler.name)
            if handler.ty is HandlerType.WORKFLOW and self.ty is not ServiceType.WORKFLOW:
                raise ValueError(
                    f"service {self.name}: handler {handler.name!r} has ty WORKFLOW but the service is {self.ty}"
                )
        return self

    def handler(self, name: str) -> HandlerManifest | None:
        for handler in self.handlers:
            if handler.name == name:
                return handler
        return None

    def handler_type(self, handler: HandlerManifest) -> HandlerType | None:
        """The effective handler type: the declared ``ty`` or the default for this service type."""
        if handler.ty is not None:
            return handler.ty
        if self.ty is ServiceType.VIRTUAL_OBJECT:
            return HandlerType.EXCLUSIVE
        if self.ty is ServiceType.WORKFLOW:
            return HandlerType.WORKFLOW
        return None


class EndpointManifest(_Manifest):
    protocol_mode: ProtocolMode
    min_protocol_version: int = Field(ge=1, le=_I32_MAX)
    max_protocol_version: int = Field(ge=1, le=_I32_MAX)
    services: tuple[ServiceManifest, ...]
    lambda_compression: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EndpointManifest:
        if self.min_protocol_version > self.max_protocol_version:
            raise ValueError(
                f"minProtocolVersion {self.min_protocol_version} > maxProtocolVersion {self.max_protocol_version}"
            )
        seen: set[str] = set()
        for service in self.services:
            if service.name in seen:
                raise ValueError(f"service {service.name!r} declared twice")
            seen.add(service.name)
        return self

    def service(self, name: str) -> ServiceManifest | None:
        for service in self.services:
            if service.name == name:
                return service
        return None


def negotiate_protocol_version(manifest: EndpointManifest, *, max_version: int = MAX_PROTOCOL_VERSION) -> int:
    """The version to put in ``content-type`` (Restate: ``min(deployment max, ours)``). The manifest passed
    :func:`parse_discovery`, so the ranges overlap."""
    version = min(manifest.max_protocol_version, max_version)
    if version < max(manifest.min_protocol_version, MIN_PROTOCOL_VERSION):
        raise DeploymentError(
            f"unsupported service protocol versions: the deployment supports "
            f"[{manifest.min_protocol_version}, {manifest.max_protocol_version}], "
            f"Capstan [{MIN_PROTOCOL_VERSION}, {max_version}]"
        )
    return version


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryResponse:
    manifest: EndpointManifest
    sdk_version: str | None  # x-restate-server, e.g. "restate-sdk-python/1.3.0"
    content_type: str  # application/vnd.restate.endpointmanifest.vN+json

    @property
    def manifest_version(self) -> int:
        return MANIFEST_CONTENT_TYPES.index(self.content_type) + 1


def _excerpt(body: bytes) -> str:
    text = body[: _BODY_EXCERPT_CHARS * 4].decode("utf-8", errors="replace").strip()
    if len(text) > _BODY_EXCERPT_CHARS:
        text = text[:_BODY_EXCERPT_CHARS] + "..."
    return text


def _status_error(status: int, body: bytes, source: str) -> DeploymentError:
    detail = _excerpt(body)
    suffix = f": {detail}" if detail else ""
    if status == 404:
        return DeploymentError(
            f"discovery at {source} answered 404 Not Found: wrong path? Register the SDK endpoint's base URL "
            f"(Capstan calls <url>/discover and <url>/invoke/...){suffix}",
            status=400,
        )
    if status in (401, 403):
        return DeploymentError(
            f"discovery at {source} answered {status}: the deployment rejected the request "
            f"(request identity / signing keys?){suffix}",
            status=400,
        )
    if status == 415:
        return DeploymentError(
            f"discovery at {source} answered 415: the deployment supports none of the manifest versions "
            f"Capstan accepts (v1-v4){suffix}",
            status=400,
        )
    if status in (408, 429) or status >= 500:
        return DeploymentError(f"discovery at {source} failed with status {status}{suffix}", status=502)
    return DeploymentError(f"discovery at {source} answered unexpected status {status}{suffix}", status=400)


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        loc = ".".join(str(part) for part in error["loc"]) or "manifest"
        parts.append(f"{loc}: {error['msg']}")
    if exc.error_count() > 5:
        parts.append(f"... {exc.error_count() - 5} more")
    return "; ".join(parts)


def parse_discovery(
    status: int, headers: Mapping[str, str], body: bytes, *, source: str = "the deployment"
) -> DiscoveryResponse:
    """Validate a ``GET /discover`` response (§5.3). ``headers`` have lower-case names; ``source`` names the
    deployment in error messages (its URL). Raises :class:`DeploymentError`."""
    if not 200 <= status < 300:
        raise _status_error(status, body, source)

    raw_content_type = headers.get("content-type", "")
    content_type = raw_content_type.split(";", 1)[0].strip().lower()
    if content_type not in MANIFEST_CONTENT_TYPES:
        raise DeploymentError(
            f"discovery at {source} answered content-type {raw_content_type or '<none>'!r}, expected an "
            f"endpoint manifest (application/vnd.restate.endpointmanifest.v1..v4+json); "
            f"is this a Restate SDK endpoint?",
            status=400,
        )

    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeploymentError(f"discovery at {source} answered a manifest that is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DeploymentError(f"discovery at {source} answered a manifest that is not a JSON object")
    if "protocolMode" not in document:
        raise DeploymentError(
            f"discovery at {source} answered a manifest without protocolMode "
            f"(SDKs older than the v1 manifest are not supported)"
        )
    try:
        manifest = EndpointManifest.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise DeploymentError(
            f"discovery at {source} answered an invalid manifest: {_describe_validation(exc)}"
        ) from exc

    if manifest.max_protocol_version < MIN_PROTOCOL_VERSION or manifest.min_protocol_version > MAX_PROTOCOL_VERSION:
        raise DeploymentError(
            f"unsupported service protocol versions: the deployment at {source} supports "
            f"[{manifest.min_protocol_version}, {manifest.max_protocol_version}], Capstan supports "
            f"[{MIN_PROTOCOL_VERSION}, {MAX_PROTOCOL_VERSION}]; upgrade or downgrade the SDK"
        )
    return DiscoveryResponse(
        manifest=manifest,
        sdk_version=headers.get("x-restate-server"),
        content_type=content_type,
    )

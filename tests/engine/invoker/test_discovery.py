"""Manifest models and the §5.3 validation of discovery responses (no network: see test_transports.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.errors import DeploymentError
from engine.invoker.discovery import (
    DISCOVERY_ACCEPT,
    MANIFEST_CONTENT_TYPES,
    EndpointManifest,
    HandlerType,
    ProtocolMode,
    ServiceType,
    negotiate_protocol_version,
    parse_discovery,
)

_HERE = Path(__file__).resolve()
GOLDEN = _HERE.parents[2] / "golden"

V4 = "application/vnd.restate.endpointmanifest.v4+json"
HEADERS = {"content-type": V4, "x-restate-server": "restate-sdk-python/1.3.0"}


def _manifest(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "protocolMode": "BIDI_STREAM",
        "minProtocolVersion": 5,
        "maxProtocolVersion": 7,
        "services": [
            {
                "name": "Greeter",
                "ty": "SERVICE",
                "handlers": [{"name": "greet", "input": {}, "output": {"contentType": "application/json"}}],
            }
        ],
    }
    document.update(overrides)
    return document


def _parse(document: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return parse_discovery(status, HEADERS if headers is None else headers, body, source="http://dep:9080")


def test_accept_header_matches_restate():
    assert DISCOVERY_ACCEPT == (
        "application/vnd.restate.endpointmanifest.v1+json, application/vnd.restate.endpointmanifest.v2+json, "
        "application/vnd.restate.endpointmanifest.v3+json, application/vnd.restate.endpointmanifest.v4+json"
    )
    golden = json.loads((GOLDEN / "discover.json").read_text())
    for exchange in golden["exchanges"]:
        sent = dict(exchange["sdk_side"]["request"]["headers"])
        assert sent["accept"] == DISCOVERY_ACCEPT


@pytest.mark.parametrize("mode", ["REQUEST_RESPONSE", "BIDI_STREAM"])
def test_recorded_manifests_parse(mode: str):
    golden = json.loads((GOLDEN / "discover.json").read_text())
    [exchange] = [e for e in golden["exchanges"] if e["mode"] == mode]
    response = exchange["sdk_side"]["response"]
    headers = {name.lower(): value for name, value in response["headers"]}
    parsed = parse_discovery(response["status"], headers, response["body_text"].encode())

    assert parsed.sdk_version == "restate-sdk-python/1.3.0"
    assert parsed.content_type == V4
    assert parsed.manifest_version == 4
    manifest = parsed.manifest
    assert manifest.protocol_mode is ProtocolMode(mode)
    assert (manifest.min_protocol_version, manifest.max_protocol_version) == (5, 7)
    assert negotiate_protocol_version(manifest) == 6
    assert negotiate_protocol_version(manifest, max_version=5) == 5

    counter = manifest.service("Counter")
    assert counter is not None and counter.ty is ServiceType.VIRTUAL_OBJECT
    add, get = counter.handler("add"), counter.handler("get")
    assert add is not None and get is not None
    assert counter.handler_type(add) is HandlerType.EXCLUSIVE
    assert counter.handler_type(get) is HandlerType.SHARED
    assert get.input is not None and get.input.content_type is None  # {} = no input
    greeter = manifest.service("Greeter")
    assert greeter is not None
    greet = greeter.handler("greet")
    assert greet is not None and greeter.handler_type(greet) is None
    assert greet.input is not None and greet.input.json_schema == {"type": "string"}
    flow = manifest.service("Flow")
    assert flow is not None and flow.ty is ServiceType.WORKFLOW
    run = flow.handler("run")
    assert run is not None and flow.handler_type(run) is HandlerType.WORKFLOW
    lazy = manifest.service("LazyStore")
    assert lazy is not None and lazy.enable_lazy_state is True
    idle = manifest.service("Idle")
    assert idle is not None and idle.inactivity_timeout == timedelta(seconds=2)
    assert manifest.service("Nope") is None


def test_options_durations_and_unknown_fields():
    handler = {
        "name": "run",
        "ty": "WORKFLOW",
        "workflowCompletionRetention": 86_400_000,
        "retryPolicyMaxAttempts": 3,
        "retryPolicyOnMaxAttempts": "KILL",
        "futureHandlerOption": {"x": 1},
    }
    service = {
        "name": "Flow",
        "ty": "WORKFLOW",
        "handlers": [handler],
        "abortTimeout": 1500,
        "retryPolicyInitialInterval": 100,
        "retryPolicyExponentiationFactor": 1.5,
        "metadata": {"team": "a"},
        "documentation": "docs",
        "eagerStateKeysWhitelist": ["a"],  # manifest v5 (Python only): ignored
    }
    manifest = _parse(_manifest(services=[service], somethingNew=True)).manifest
    [flow] = manifest.services
    assert flow.abort_timeout == timedelta(milliseconds=1500)
    assert flow.retry_policy_initial_interval == timedelta(milliseconds=100)
    assert flow.retry_policy_exponentiation_factor == 1.5
    assert flow.metadata == {"team": "a"}
    [run] = flow.handlers
    assert run.workflow_completion_retention == timedelta(days=1)
    assert run.retry_policy_max_attempts == 3 and run.retry_policy_on_max_attempts == "KILL"
    # round trip to the wire names and milliseconds (for the admin API)
    dumped = manifest.model_dump(mode="json", exclude_none=True)
    assert dumped["protocolMode"] == "BIDI_STREAM"
    assert dumped["services"][0]["abortTimeout"] == 1500
    assert dumped["services"][0]["handlers"][0]["workflowCompletionRetention"] == 86_400_000
    assert EndpointManifest.model_validate(dumped) == manifest


@pytest.mark.parametrize(
    ("status", "expected_status", "fragment"),
    [
        (404, 400, "wrong path"),
        (401, 400, "rejected"),
        (415, 400, "manifest versions"),
        (500, 502, "status 500"),
        (503, 502, "status 503"),
        (429, 502, "status 429"),
        (302, 400, "unexpected status 302"),
    ],
)
def test_non_2xx(status: int, expected_status: int, fragment: str):
    with pytest.raises(DeploymentError) as info:
        parse_discovery(status, {"content-type": "text/plain"}, b"boom", source="http://dep:9080")
    assert info.value.status == expected_status
    assert fragment in str(info.value)
    assert "http://dep:9080" in str(info.value)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/html", "application/json", "application/vnd.restate.endpointmanifest.v5+json"],
)
def test_content_type_must_be_a_manifest(content_type: str | None):
    headers = {} if content_type is None else {"content-type": content_type}
    with pytest.raises(DeploymentError, match="expected an endpoint manifest"):
        _parse(_manifest(), headers=headers)


def test_content_type_parameters_and_case_are_tolerated():
    for content_type in MANIFEST_CONTENT_TYPES:
        parsed = _parse(_manifest(), headers={"content-type": content_type.upper() + "; charset=utf-8"})
        assert parsed.content_type == content_type
        assert parsed.sdk_version is None


@pytest.mark.parametrize("body", [b"", b"\xff\xfe garbage", b"{not json", b'{"protocolMode": '])
def test_invalid_json(body: bytes):
    with pytest.raises(DeploymentError, match="not valid JSON"):
        _parse(body)


def test_not_an_object():
    with pytest.raises(DeploymentError, match="not a JSON object"):
        _parse([1, 2])


def test_protocol_mode_required():
    document = _manifest()
    del document["protocolMode"]
    with pytest.raises(DeploymentError, match="without protocolMode"):
        _parse(document)
    with pytest.raises(DeploymentError, match="protocolMode"):
        _parse(_manifest(protocolMode="SOMETIMES"))


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (_manifest(minProtocolVersion=7, maxProtocolVersion=5), "minProtocolVersion 7 > maxProtocolVersion 5"),
        (_manifest(maxProtocolVersion=2**31), "maxProtocolVersion"),
        (_manifest(minProtocolVersion=0), "minProtocolVersion"),
        (_manifest(services=None), "services"),
        (_manifest(services=[{"name": "1bad", "ty": "SERVICE", "handlers": []}]), "services.0.name"),
        (_manifest(services=[{"name": "_", "ty": "SERVICE", "handlers": []}]), "services.0.name"),
        (_manifest(services=[{"name": "Ok", "ty": "ACTOR", "handlers": []}]), "services.0.ty"),
        (
            _manifest(services=[{"name": "Ok", "ty": "SERVICE", "handlers": [{"name": "a.b"}]}]),
            "services.0.handlers.0.name",
        ),
        (
            _manifest(services=[{"name": "Ok", "ty": "SERVICE", "handlers": [{"name": "a"}, {"name": "a"}]}]),
            "declared twice",
        ),
        (
            _manifest(services=[{"name": "Ok", "ty": "SERVICE", "handlers": [{"name": "a", "ty": "WORKFLOW"}]}]),
            "ty WORKFLOW",
        ),
        (
            _manifest(services=[{"name": "S", "ty": "SERVICE", "handlers": []}] * 2),
            "declared twice",
        ),
        (
            _manifest(services=[{"name": "S", "ty": "SERVICE", "handlers": [], "inactivityTimeout": "1m"}]),
            "milliseconds",
        ),
        (
            _manifest(services=[{"name": "S", "ty": "SERVICE", "handlers": [], "abortTimeout": -1}]),
            "negative",
        ),
    ],
)
def test_invalid_manifest(document: dict[str, Any], fragment: str):
    with pytest.raises(DeploymentError, match="invalid manifest") as info:
        _parse(document)
    assert fragment in str(info.value)
    assert info.value.status == 400


def test_valid_names():
    services = [
        {"name": "a", "ty": "SERVICE", "handlers": [{"name": "_1"}]},
        {"name": "_x.y-z", "ty": "VIRTUAL_OBJECT", "handlers": [{"name": "Handler_2", "ty": "SHARED"}]},
        {"name": "my.pkg.Svc", "ty": "WORKFLOW", "handlers": [{"name": "run", "ty": "WORKFLOW"}]},
    ]
    manifest = _parse(_manifest(services=services)).manifest
    assert [s.name for s in manifest.services] == ["a", "_x.y-z", "my.pkg.Svc"]


@pytest.mark.parametrize(("low", "high"), [(1, 4), (7, 9), (1, 1)])
def test_unsupported_protocol_versions(low: int, high: int):
    with pytest.raises(DeploymentError, match="unsupported service protocol versions") as info:
        _parse(_manifest(minProtocolVersion=low, maxProtocolVersion=high))
    assert f"[{low}, {high}]" in str(info.value)
    assert "[5, 6]" in str(info.value)


@pytest.mark.parametrize(("low", "high", "chosen"), [(1, 5, 5), (5, 5, 5), (6, 6, 6), (6, 9, 6), (1, 100, 6)])
def test_overlapping_versions(low: int, high: int, chosen: int):
    manifest = _parse(_manifest(minProtocolVersion=low, maxProtocolVersion=high)).manifest
    assert negotiate_protocol_version(manifest) == chosen


def test_request_response_manifest_is_recorded():
    parsed = _parse(_manifest(protocolMode="REQUEST_RESPONSE"))
    assert parsed.manifest.protocol_mode is ProtocolMode.REQUEST_RESPONSE

"""The admin API's OpenAPI 3.1 document (served at ``GET /openapi``; pinned by a test)."""

from __future__ import annotations

from typing import Any

from engine import __version__


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return out


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Capstan admin API",
        "version": __version__,
        "description": "Register deployments (SDK endpoints) and inspect services. Served on 127.0.0.1:9070 by "
        "default; every route is also available under /v2, /v3 and /v4.",
    },
    "paths": {
        "/deployments": {
            "post": {
                "operationId": "create_deployment",
                "summary": "Register a deployment: discover its services via GET {uri}/discover",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/RegisterDeploymentRequest"}}
                    },
                },
                "responses": {
                    "201": _ok("Registered", "Deployment"),
                    "200": _ok("Already registered with the same manifest, or overwritten with force", "Deployment"),
                    "400": _error("Bad request body, bad uri, or the endpoint is not a valid deployment"),
                    "409": _error(
                        "Same uri registered with a different manifest (use force), or a service type change"
                    ),
                    "502": _error("The deployment is unreachable or failed during discovery"),
                    "503": _error("The registration could not be stored"),
                },
            },
            "get": {
                "operationId": "list_deployments",
                "summary": "List deployments",
                "responses": {"200": _ok("Deployments", "DeploymentList")},
            },
        },
        "/deployments/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "get_deployment",
                "summary": "Deployment with its services",
                "responses": {"200": _ok("Deployment", "Deployment"), "404": _error("Unknown deployment")},
            },
            "delete": {
                "operationId": "delete_deployment",
                "summary": "Remove a deployment and the services it provides (requires force=true)",
                "parameters": [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {
                    "202": {"description": "Removed"},
                    "404": _error("Unknown deployment"),
                    "501": _error("Graceful removal (without force) is not implemented"),
                },
            },
        },
        "/services": {
            "get": {
                "operationId": "list_services",
                "summary": "List services",
                "responses": {"200": _ok("Services", "ServiceList")},
            }
        },
        "/services/{name}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "get_service",
                "summary": "Service metadata with its handlers",
                "responses": {"200": _ok("Service", "Service"), "404": _error("Unknown service")},
            },
            "patch": {
                "operationId": "modify_service",
                "summary": "Change a service's settings: public (false: ingress answers 400, calls still work)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"public": {"type": "boolean"}}}
                        }
                    },
                },
                "responses": {
                    "200": _ok("Updated service", "Service"),
                    "400": _error("Bad body"),
                    "404": _error("Unknown service"),
                },
            },
        },
        "/services/{name}/handlers": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "list_service_handlers",
                "summary": "Handlers of a service",
                "responses": {"200": {"description": "Handlers"}, "404": _error("Unknown service")},
            },
        },
        "/invocations/{id}/{operation}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "operation",
                    "in": "path",
                    "required": True,
                    "schema": {"enum": ["cancel", "kill", "purge", "pause", "resume"]},
                },
            ],
            "patch": {
                "operationId": "manage_invocation",
                "summary": "cancel (graceful, compensations run), kill (immediate), purge (a completed one), pause, "
                "resume",
                "responses": {
                    "200": {"description": "Done"},
                    "202": {"description": "Accepted: a cancel signal was sent / the attempt is being paused"},
                    "400": _error("Bad invocation id"),
                    "404": _error("Unknown invocation"),
                    "409": _error("Wrong state (e.g. already completed, or purge of a running invocation)"),
                },
            },
        },
        "/invocations/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "describe_invocation",
                "summary": "The invocation's sys_invocation row and its journal (sys_journal rows without raw)",
                "responses": {
                    "200": {"description": '{"invocation": {...}, "journal": [{...}]}'},
                    "400": _error("Bad invocation id"),
                    "404": _error("Unknown invocation (or completed and past its retention)"),
                },
            },
            "delete": {
                "operationId": "delete_invocation",
                "deprecated": True,
                "summary": "mode=cancel|kill|purge",
                "parameters": [{"name": "mode", "in": "query", "schema": {"enum": ["cancel", "kill", "purge"]}}],
                "responses": {"202": {"description": "Accepted"}, "404": _error("Unknown invocation")},
            },
        },
        "/services/{name}/state": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "post": {
                "operationId": "modify_service_state",
                "summary": "Replace the whole state of one key (Restate); values are strings (UTF-8) or byte arrays",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ReplaceState"}}},
                },
                "responses": {
                    "202": {"description": "Applied"},
                    "400": _error("Bad body, or the service has no state"),
                    "404": _error("Unknown service"),
                    "409": _error("An invocation holds the key's lock, or the state no longer has `version`"),
                },
            },
            "patch": {
                "operationId": "patch_service_state",
                "summary": "Set and clear entries of one key's state (Capstan)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PatchState"}}},
                },
                "responses": {
                    "200": {"description": "Applied"},
                    "400": _error("Bad body, or the service has no state"),
                    "404": _error("Unknown service"),
                    "409": _error("An invocation holds the key's lock, or the state no longer has `version`"),
                },
            },
        },
        "/query": {
            "post": {
                "operationId": "query",
                "summary": "Read-only SQL (SQLite dialect) over sys_invocation, sys_journal, state, sys_inbox, "
                "sys_keyed_service_status, sys_promise, sys_service, sys_deployment, sys_subscription, sys_kafka_lag",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["query"],
                                "properties": {"query": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": '{"columns": [...], "rows": [{column: value}]} (BLOBs as hex)'},
                    "400": _error("Bad SQL (SQLite's message), a statement that is not read-only, or a timeout"),
                    "406": _error("The Accept header excludes application/json"),
                    "413": _error("The query reads or answers more rows/bytes than the configured limits"),
                    "429": _error("Too many queries at once (Retry-After)"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "200 when ready",
                "responses": {"200": {"description": "Ready"}},
            }
        },
        "/version": {
            "get": {
                "operationId": "version",
                "summary": "Engine and admin API versions",
                "responses": {"200": {"description": "Versions"}},
            }
        },
        "/openapi": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI"}},
            }
        },
    },
    "components": {
        # Only enforced when admin.auth_token is set; /health never needs it (engine/admin/auth.py).
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"message": {"type": "string"}},
                "required": ["message"],
            },
            "RegisterDeploymentRequest": {
                "type": "object",
                "additionalProperties": False,
                "required": ["uri"],
                "properties": {
                    "uri": {
                        "type": "string",
                        "description": "http(s)://... of an SDK endpoint, or asgi://module:app",
                    },
                    "additional_headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "use_http_11": {"type": "boolean"},
                    "breaking": {"type": "boolean"},
                    "force": {"type": "boolean"},
                    "dry_run": {"type": "boolean"},
                },
            },
            "Deployment": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "uri": {"type": "string"},
                    "protocol_type": {"enum": ["RequestResponse", "BidiStream"]},
                    "http_version": {"type": "string"},
                    "additional_headers": {"type": "object"},
                    "created_at": {"type": "string"},
                    "min_protocol_version": {"type": "integer"},
                    "max_protocol_version": {"type": "integer"},
                    "sdk_version": {"type": ["string", "null"]},
                    "services": {"type": "array"},
                },
            },
            "DeploymentList": {
                "type": "object",
                "properties": {"deployments": {"type": "array", "items": {"$ref": "#/components/schemas/Deployment"}}},
            },
            "Service": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "ty": {"enum": ["Service", "VirtualObject", "Workflow"]},
                    "handlers": {"type": "array"},
                    "deployment_id": {"type": "string"},
                    "revision": {"type": "integer"},
                    "public": {"type": "boolean"},
                    "idempotency_retention": {"type": ["string", "null"]},
                    "journal_retention": {"type": ["string", "null"]},
                    "inactivity_timeout": {"type": ["string", "null"]},
                    "abort_timeout": {"type": ["string", "null"]},
                },
            },
            "ReplaceState": {
                "type": "object",
                "required": ["object_key", "new_state"],
                "properties": {
                    "object_key": {"type": "string"},
                    "new_state": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/StateValue"},
                    },
                    "version": {"type": "string"},
                },
            },
            "PatchState": {
                "type": "object",
                "required": ["object_key"],
                "properties": {
                    "object_key": {"type": "string"},
                    "set": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/StateValue"}},
                    "clear": {"type": "array", "items": {"type": "string"}},
                    "clear_all": {"type": "boolean"},
                    "version": {"type": "string"},
                },
            },
            "StateValue": {
                "oneOf": [
                    {"type": "string", "description": "stored as its UTF-8 bytes"},
                    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
                ]
            },
            "ServiceList": {
                "type": "object",
                "properties": {"services": {"type": "array", "items": {"$ref": "#/components/schemas/Service"}}},
            },
        },
    },
}

"""Admin API (default 127.0.0.1:9070): deployments (with discovery), services, invocations, state, SQL
introspection (:mod:`engine.admin.query`, :mod:`engine.admin.state`), health, OpenAPI.

Shapes follow Restate's admin API (reference ingress-admin-kafka.md §2). Routes are also served under the ``/v2``,
``/v3`` and ``/v4`` prefixes. Errors: ``{"message": "..."}`` with 400/404/409/501/502/503.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from engine.errors import DeploymentError, LogError, OverloadedError
from engine.http_errors import json_http_errors, quiet_client_protocol_errors
from engine.ids import InvocationId, new_deployment_id
from engine.invoker.transport import Transport
from engine.partition.effects import Outcome
from engine.partition.types import ManageInvocation, Op, PutMetadata
from engine.schema import HANDLER_TY_NAME, SERVICE_TY_NAME, Deployment, Service, registration_records

if TYPE_CHECKING:
    from engine.server import Engine

logger = logging.getLogger(__name__)

ASGI_SCHEME = "asgi://"


class RegisterDeploymentRequest(BaseModel):
    """``POST /deployments`` body (HTTP deployments; ``asgi://module:app`` for an in-process app)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1)
    additional_headers: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    use_http_11: bool = False
    breaking: bool = False
    force: bool | None = None
    dry_run: bool = False


class PatchServiceRequest(BaseModel):
    """``PATCH /services/{name}`` body. Only ``public`` is supported so far (Restate also takes retention and
    timeout overrides)."""

    model_config = ConfigDict(extra="forbid")

    public: StrictBool | None = None


ADMIN_PREFIXES = ("", "/v2", "/v3", "/v4")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _render_error(status: int, message: str, headers: Mapping[str, str]) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def build_admin_app(engine: Engine) -> web.Application:
    api = _Admin(engine)

    middlewares: list[Middleware] = [json_http_errors(_render_error)]  # aiohttp's 404/405/413 as JSON too
    quiet_client_protocol_errors()  # unparsable requests: aiohttp's 400, logged at DEBUG
    token = engine.config.admin.auth_token
    if token is not None:  # bearer auth on every route but /health and the UI's files (engine/admin/auth.py)
        from engine.admin.auth import bearer_auth_middleware
        from engine.admin.ui import UI_PATHS

        # The UI's static files hold no data (a browser cannot send a token for a page load; its API calls do).
        open_paths = [*(f"{prefix}/health" for prefix in ADMIN_PREFIXES), *UI_PATHS]
        middlewares.append(bearer_auth_middleware(token.get_secret_value(), open_paths=open_paths))
    app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=middlewares)
    for prefix in ADMIN_PREFIXES:
        r = app.router
        r.add_post(f"{prefix}/deployments", api.register_deployment)
        r.add_get(f"{prefix}/deployments", api.list_deployments)
        r.add_get(f"{prefix}/deployments/{{id}}", api.get_deployment)
        r.add_delete(f"{prefix}/deployments/{{id}}", api.delete_deployment)
        r.add_get(f"{prefix}/services", api.list_services)
        r.add_get(f"{prefix}/services/{{name}}", api.get_service)
        r.add_patch(f"{prefix}/services/{{name}}", api.patch_service)
        r.add_get(f"{prefix}/services/{{name}}/handlers", api.list_handlers)
        r.add_patch(f"{prefix}/invocations/{{id}}/{{op}}", api.manage_invocation)
        r.add_delete(f"{prefix}/invocations/{{id}}", api.delete_invocation)
        r.add_get(f"{prefix}/health", api.health)
        r.add_get(f"{prefix}/openapi", api.openapi)
        r.add_get(f"{prefix}/version", api.version)
    # Operating: SQL introspection (POST /query, GET /invocations/{id}) and state editing (/services/{name}/state).
    from engine.admin.query import QueryRoutes
    from engine.admin.state import StateRoutes

    QueryRoutes(engine).add_routes(app, ADMIN_PREFIXES)
    StateRoutes(engine).add_routes(app, ADMIN_PREFIXES)
    # Prometheus scrapes /metrics (unversioned, like every exporter).
    from engine.admin.metrics import metrics_handler

    app.router.add_get("/metrics", metrics_handler(engine))
    # The web UI (GET /ui/): static files that call the routes above (engine/admin/ui/).
    from engine.admin.ui import add_ui_routes

    add_ui_routes(app)
    return app


class _Admin:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def version(self, request: web.Request) -> web.Response:
        from engine import __version__

        return web.json_response(
            {
                "version": __version__,
                "min_admin_api_version": 2,
                "max_admin_api_version": 4,
                "ingress_endpoint": f"http://{self.engine.config.ingress_http.address}/",
            }
        )

    async def openapi(self, request: web.Request) -> web.Response:
        from engine.admin.openapi import OPENAPI

        return web.json_response(OPENAPI)

    # ---------------------------------------------------------------------------------------- deployments

    async def register_deployment(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = RegisterDeploymentRequest.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        engine = self.engine
        uri = body.uri.rstrip("/")
        if uri.startswith(ASGI_SCHEME):
            kind = "asgi"
            if uri[len(ASGI_SCHEME) :] not in engine.app_specs:
                return _error(
                    400,
                    f"no in-process app {uri[len(ASGI_SCHEME) :]!r} is mounted; start with `capstan serve --app`",
                )
        elif uri.startswith(("http://", "https://")):
            kind = "http"
        else:
            return _error(400, f"invalid uri {body.uri!r}: expected http://, https:// or asgi://")
        existing = engine.registry.deployment_by_uri(uri)
        try:
            transport = engine.make_transport(kind, uri, body.additional_headers or {}, body.use_http_11)
            try:
                discovered = await transport.discover()
            finally:
                await _close_transport(transport)
        except DeploymentError as exc:
            return _error(exc.status if exc.status >= 400 else 400, str(exc))
        manifest = discovered.manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
        services = [s["name"] for s in manifest.get("services", [])]
        force = bool(body.force)
        if existing is not None:
            if existing.manifest == manifest and existing.additional_headers == (body.additional_headers or {}):
                return web.json_response(_deployment_json(existing, engine), status=200)
            if not force:
                return _error(
                    409,
                    f"a deployment with uri {uri} already exists ({existing.id}) with a different manifest; "
                    "use force to overwrite it",
                )
        for svc in manifest.get("services", []):
            current = engine.registry.service(svc["name"])
            if (
                current is not None
                and SERVICE_TY_NAME[current.ty] != _ty_name(svc["ty"])
                and not (force or body.breaking)
            ):
                return _error(
                    409,
                    f"service {svc['name']} changes type from {SERVICE_TY_NAME[current.ty]} to "
                    f"{_ty_name(svc['ty'])}; register with breaking or force to allow it",
                )
        dep, rows = registration_records(
            registry=engine.registry,
            deployment_id=existing.id if existing is not None else new_deployment_id(),
            uri=uri,
            kind=kind,
            manifest=manifest,
            protocol_mode=discovered.manifest.protocol_mode.value,
            sdk_version=discovered.sdk_version,
            additional_headers=body.additional_headers or {},
            use_http_11=body.use_http_11,
        )
        if body.dry_run:
            return web.json_response(_deployment_json(dep, engine, pending=manifest), status=200)
        records = [PutMetadata(key=k, value=v) for k, v in rows]
        try:
            await engine.propose_metadata(records)
        except (OverloadedError, LogError) as exc:
            return _error(503, f"could not store the deployment: {exc}")
        stored = engine.registry.deployments[dep.id]
        status = 200 if existing is not None else 201
        resp = web.json_response(_deployment_json(stored, engine), status=status)
        resp.headers["location"] = f"deployments/{dep.id}"
        logger.info("registered deployment %s at %s with services %s", dep.id, uri, ", ".join(services))
        return resp

    async def list_deployments(self, request: web.Request) -> web.Response:
        engine = self.engine
        return web.json_response(
            {"deployments": [_deployment_summary(d, engine) for d in engine.registry.deployments.values()]}
        )

    async def get_deployment(self, request: web.Request) -> web.Response:
        dep = self.engine.registry.deployments.get(request.match_info["id"])
        if dep is None:
            return _error(404, f"deployment {request.match_info['id']} not found")
        return web.json_response(_deployment_json(dep, self.engine))

    async def delete_deployment(self, request: web.Request) -> web.Response:
        engine = self.engine
        dep_id = request.match_info["id"]
        dep = engine.registry.deployments.get(dep_id)
        if dep is None:
            return _error(404, f"deployment {dep_id} not found")
        if request.query.get("force", "false").lower() != "true":
            return _error(
                501,
                "graceful deployment deletion is not implemented; use force=true (in-flight invocations of its "
                "services will fail until the services are registered again)",
            )
        records = [PutMetadata(key=f"deployment/{dep_id}", value=None)]
        for name, svc in engine.registry.services.items():
            if svc.deployment_id == dep_id:
                records.append(PutMetadata(key=f"service/{name}", value=None))
        try:
            await engine.propose_metadata(records)
        except (OverloadedError, LogError) as exc:
            return _error(503, f"could not remove the deployment: {exc}")
        logger.info("removed deployment %s", dep_id)
        return web.Response(status=202)

    # ---------------------------------------------------------------------------------------- invocations

    async def manage_invocation(self, request: web.Request) -> web.Response:
        op = _OPS.get(request.match_info["op"])
        if op is None:
            return _error(404, f"unknown invocation operation {request.match_info['op']!r}")
        return await self._manage(request.match_info["id"], op)

    async def delete_invocation(self, request: web.Request) -> web.Response:
        """Deprecated combined endpoint: ``DELETE /invocations/{id}?mode=cancel|kill|purge`` (202)."""
        mode = request.query.get("mode", "cancel")
        op = _OPS.get(mode)
        if op is None or mode not in ("cancel", "kill", "purge"):
            return _error(400, f"bad mode {mode!r}: expected cancel, kill or purge")
        resp = await self._manage(request.match_info["id"], op)
        return web.Response(status=202) if resp.status < 300 else resp

    async def _manage(self, text: str, op: Op) -> web.Response:
        try:
            inv = InvocationId.parse(text)
        except ValueError as exc:
            return _error(400, f"bad invocation id: {exc}")
        engine = self.engine
        try:
            outcome = await engine.propose_and_wait(
                lambda token: engine.propose_routed(
                    ManageInvocation(invocation_id=inv.to_bytes(), op=op, token=token, now_ms=engine.now_ms())
                )
            )
        except (OverloadedError, LogError) as exc:
            return _error(503, f"try again: {exc}")
        assert isinstance(outcome, Outcome)
        if outcome.status >= 400:
            return _error(outcome.status, outcome.message)
        return web.Response(status=outcome.status)

    # ---------------------------------------------------------------------------------------- services

    async def list_services(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"services": [_service_json(s) for s in sorted(self.engine.registry.services.values(), key=_name)]}
        )

    async def get_service(self, request: web.Request) -> web.Response:
        svc = self.engine.registry.service(request.match_info["name"])
        if svc is None:
            return _error(404, f"service {request.match_info['name']} not found")
        return web.json_response(_service_json(svc))

    async def patch_service(self, request: web.Request) -> web.Response:
        """``{"public": false}`` makes the service private: ingress answers 400, calls from handlers still work.
        Stored like a registration (a new ``service/<name>`` row); the next registration of the service takes
        ``public`` from its manifest (``ingressPrivate``) again."""
        svc = self.engine.registry.service(request.match_info["name"])
        if svc is None:
            return _error(404, f"service {request.match_info['name']} not found")
        try:
            body = PatchServiceRequest.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid request body: {_describe(exc)}")
        if body.public is not None and body.public != svc.public:
            row = json.dumps({**svc.raw, "public": body.public}, sort_keys=True).encode()
            try:
                await self.engine.propose_metadata([PutMetadata(key=f"service/{svc.name}", value=row)])
            except (OverloadedError, LogError) as exc:
                return _error(503, f"could not store the change: {exc}")
            logger.info("service %s: public set to %s", svc.name, body.public)
        updated = self.engine.registry.service(svc.name)
        assert updated is not None
        return web.json_response(_service_json(updated))

    async def list_handlers(self, request: web.Request) -> web.Response:
        svc = self.engine.registry.service(request.match_info["name"])
        if svc is None:
            return _error(404, f"service {request.match_info['name']} not found")
        return web.json_response({"handlers": _service_json(svc)["handlers"]})


_OPS = {"cancel": Op.CANCEL, "kill": Op.KILL, "purge": Op.PURGE, "pause": Op.PAUSE, "resume": Op.RESUME}


def _name(s: Service) -> str:
    return s.name


def _ty_name(manifest_ty: str) -> str:
    return {"SERVICE": "Service", "VIRTUAL_OBJECT": "VirtualObject", "WORKFLOW": "Workflow"}[manifest_ty]


async def _close_transport(transport: Transport) -> None:
    await transport.aclose()


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def _ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    seconds = ms / 1000
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _service_json(svc: Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "ty": SERVICE_TY_NAME[svc.ty],
        "handlers": [
            {
                "name": h.name,
                "ty": HANDLER_TY_NAME[h.ty] if svc.keyed else None,
                "input_description": json.dumps(h.input) if h.input else "none",
                "output_description": json.dumps(h.output) if h.output else "none",
                "input_json_schema": h.input.get("jsonSchema"),
                "output_json_schema": h.output.get("jsonSchema"),
                "public": h.public,
                "documentation": h.documentation,
            }
            for h in svc.handlers.values()
        ],
        "documentation": svc.documentation,
        "metadata": svc.metadata,
        "deployment_id": svc.deployment_id,
        "revision": svc.revision,
        "public": svc.public,
        "idempotency_retention": _ms(svc.idempotency_retention_ms),
        "workflow_completion_retention": _ms(svc.workflow_completion_retention_ms),
        "journal_retention": _ms(svc.journal_retention_ms),
        "inactivity_timeout": _ms(svc.inactivity_timeout_ms),
        "abort_timeout": _ms(svc.abort_timeout_ms),
        "enable_lazy_state": svc.enable_lazy_state,
        "retry_policy": svc.retry_policy or None,
    }


def _deployment_summary(dep: Deployment, engine: Engine) -> dict[str, Any]:
    return {
        "id": dep.id,
        "uri": dep.uri,
        "protocol_type": "BidiStream" if dep.kind == "asgi" else "RequestResponse",
        "http_version": "in-process" if dep.kind == "asgi" else "HTTP/1.1",
        "additional_headers": dep.additional_headers,
        "created_at": dep.created_at,
        "min_protocol_version": dep.min_protocol_version,
        "max_protocol_version": dep.max_protocol_version,
        "sdk_version": dep.sdk_version,
        "services": [
            {"name": name, "revision": engine.registry.services[name].revision}
            for name in dep.services
            if name in engine.registry.services
        ],
    }


def _deployment_json(dep: Deployment, engine: Engine, *, pending: dict[str, Any] | None = None) -> dict[str, Any]:
    out = _deployment_summary(dep, engine)
    if pending is not None:
        out["services"] = pending.get("services", [])
    else:
        out["services"] = [
            _service_json(engine.registry.services[name]) for name in dep.services if name in engine.registry.services
        ]
    return out

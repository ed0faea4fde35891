"""The transports to the registered deployments, for whichever process runs the attempts (the engine, or each
invoker process): one shared aiohttp session for HTTP deployments, the mounted ASGI apps, request signing."""

from __future__ import annotations

import asyncio

import aiohttp

from engine.config import InvokerSection
from engine.errors import DeploymentError
from engine.invoker.identity import RequestSigner
from engine.invoker.transport import Transport
from engine.invoker.transport_asgi import AsgiApp, AsgiTransport
from engine.invoker.transport_http import HttpTransport, open_http_session
from engine.schema import Deployment

__all__ = ["ASGI_SCHEME", "Transports"]

ASGI_SCHEME = "asgi://"


class Transports:
    """Makes a deployment's transport on first use and drops it when the deployment changes."""

    def __init__(self, config: InvokerSection, signer: RequestSigner | None = None) -> None:
        self._config = config
        self.signer = signer
        self.asgi_apps: dict[str, AsgiApp] = {}  # spec ("module:attribute") -> app mounted in this process
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, Transport] = {}

    def make(self, kind: str, uri: str, additional_headers: dict[str, str], use_http_11: bool) -> Transport:
        if kind == "asgi":
            spec = uri[len(ASGI_SCHEME) :]
            app = self.asgi_apps.get(spec)
            if app is None:
                raise DeploymentError(f"in-process app {spec!r} is not mounted in this process", status=400)
            return AsgiTransport(app, label=f"in-process app {spec}", signer=self.signer)
        if self._session is None:
            self._session = open_http_session(self._config)
        return HttpTransport(
            uri,
            session=self._session,
            additional_headers=additional_headers,
            connect_timeout=self._config.connect_timeout.total_seconds(),
            use_http_11=use_http_11,
            signer=self.signer,
        )

    def for_deployment(self, deployment: Deployment) -> Transport:
        transport = self._cache.get(deployment.id)
        if transport is None:
            dep = deployment
            transport = self.make(dep.kind, dep.uri, dep.additional_headers, dep.use_http_11)
            self._cache[deployment.id] = transport
        return transport

    def on_metadata(self, key: str) -> None:
        """A metadata row changed: a changed or removed deployment gets a new transport on next use."""
        kind, _, name = key.partition("/")
        if kind == "deployment":
            stale = self._cache.pop(name, None)
            if stale is not None:
                asyncio.get_running_loop().create_task(stale.aclose())

    async def aclose(self) -> None:
        for transport in self._cache.values():
            await transport.aclose()
        self._cache.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

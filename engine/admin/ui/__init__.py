"""The admin API's web UI: ``GET /ui/`` serves one HTML page, one JavaScript module and one stylesheet.

There is no build step and no server-side rendering: the page talks to the same admin API as the CLI (``POST
/query``, ``GET /invocations/{id}``, ``GET /services``, ``GET /deployments``, ``GET /subscriptions`` and the
``PATCH /invocations/{id}/{op}`` actions), with relative URLs, so it also works behind a reverse proxy that mounts
the admin port under a path prefix. The files ship as package data beside this module and are served as they are
(``web.FileResponse`` reads them off the event loop); only the names in :data:`ASSETS` are served.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent

# name -> content type. Nothing else under /ui/ is served (no directory listing, no path traversal).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}

# Every path the UI serves. They need no admin token (the files hold no data): a browser cannot attach one to the
# page load, and the page's own API calls carry the token the user pastes.
UI_PATHS = ("/ui", "/ui/", *(f"/ui/{name}" for name in ASSETS))

# The page loads only its own files and talks only to its own origin; nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_ui_routes(app: web.Application) -> None:
    """``GET /ui`` (redirects to ``/ui/``), ``GET /ui/`` (the page) and ``GET /ui/{asset}``."""
    app.router.add_get("/ui", _redirect)
    app.router.add_get("/ui/", _index)
    app.router.add_get("/ui/{asset}", _asset)


async def _redirect(request: web.Request) -> web.StreamResponse:
    # Relative, so that a proxy's path prefix is kept: /prefix/ui -> /prefix/ui/.
    raise web.HTTPPermanentRedirect("ui/")


async def _index(request: web.Request) -> web.StreamResponse:
    return _file("index.html")


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["asset"]
    if name not in ASSETS:
        return web.json_response({"message": f"no UI asset {name!r}"}, status=404)
    return _file(name)


def _file(name: str) -> web.FileResponse:
    headers = {"Content-Type": ASSETS[name], **SECURITY_HEADERS}
    return web.FileResponse(UI_DIR / name, headers=headers)

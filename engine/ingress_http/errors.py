"""Our errors to HTTP: Restate's JSON error envelope (reference ingress-admin-kafka.md §1.3)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from engine.partition.types import Failure


def error_response(
    status: int,
    message: str,
    *,
    source: str = "ingress",
    headers: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"code": status, "message": message}
    if metadata:
        body["metadata"] = dict(sorted(metadata.items()))
    body["source"] = source
    out = {"x-restate-error-source": source}
    if headers:
        out.update(headers)
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=out)


def failure_response(failure: Failure, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """A handler's terminal failure: the HTTP status is the failure code (invalid codes become 500)."""
    status = failure.code if 100 <= failure.code <= 599 else 500
    return error_response(
        status, failure.message, source="invocation", headers=headers, metadata=dict(failure.metadata)
    )

"""Editing the state of virtual objects and workflows from the admin API.

* ``POST /services/{service}/state`` — Restate's endpoint: ``{"object_key", "new_state": {name: value}, "version"?}``
  replaces the whole state of one key. 202 once applied.
* ``PATCH /services/{service}/state`` — Capstan's partial edit: ``{"object_key", "set": {name: value}?,
  "clear": [name]?, "clear_all": bool?, "version"?}``. 200 once applied.

A value is a JSON string (stored as its UTF-8 bytes: send the JSON text the SDK's serde expects, e.g. ``"5"`` or
``"{\\"a\\": 1}"``) or an array of byte values 0-255 (Restate's generated clients send bytes that way).

The edit is an ``EditState`` record proposed to the log of the partition that owns the key and applied by its
processor (durable before the answer, replayed after a crash). One writer per key: while an invocation holds the
key's lock the edit is refused with 409 (see :mod:`engine.partition.state_edit`); with ``version`` (the value of
Restate's state version for the state the client read) a concurrent change is refused with 409 too.
404: unknown service; 400: a service without state, or a bad body.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import LogError, OverloadedError
from engine.ids import partition_for, partition_key_for_key
from engine.partition.effects import Outcome
from engine.partition.types import EditState

if TYPE_CHECKING:
    from engine.server import Engine

StateValue = str | list[int]


class ReplaceStateRequest(BaseModel):
    """``POST /services/{service}/state`` (Restate)."""

    model_config = ConfigDict(extra="forbid")

    object_key: str
    new_state: dict[str, StateValue]
    version: str | None = None


class PatchStateRequest(BaseModel):
    """``PATCH /services/{service}/state`` (Capstan)."""

    model_config = ConfigDict(extra="forbid")

    object_key: str
    set: dict[str, StateValue] = Field(default_factory=dict)
    clear: list[str] = Field(default_factory=list)
    clear_all: bool = False
    version: str | None = None


def _value(name: str, value: StateValue) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if any(not 0 <= b <= 255 for b in value):
        raise ValueError(f"state value {name!r}: byte values must be 0..255")
    return bytes(value)


class StateRoutes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_routes(self, app: web.Application, prefixes: Sequence[str]) -> None:
        for prefix in prefixes:
            app.router.add_post(f"{prefix}/services/{{name}}/state", self.replace_state)
            app.router.add_patch(f"{prefix}/services/{{name}}/state", self.patch_state)

    async def replace_state(self, request: web.Request) -> web.Response:
        try:
            body = ReplaceStateRequest.model_validate_json(await request.read() or b"{}")
            entries = tuple((k.encode(), _value(k, v)) for k, v in sorted(body.new_state.items()))
        except (ValidationError, ValueError) as exc:
            return _error(400, f"invalid request body: {exc}")
        record = EditState(
            service=request.match_info["name"],
            key=body.object_key,
            replace_all=True,
            set=entries,
            version=body.version,
        )
        return await self._edit(record, ok_status=202)

    async def patch_state(self, request: web.Request) -> web.Response:
        try:
            body = PatchStateRequest.model_validate_json(await request.read() or b"{}")
            entries = tuple((k.encode(), _value(k, v)) for k, v in sorted(body.set.items()))
        except (ValidationError, ValueError) as exc:
            return _error(400, f"invalid request body: {exc}")
        if not (entries or body.clear or body.clear_all):
            return _error(400, "nothing to change: give set, clear or clear_all")
        record = EditState(
            service=request.match_info["name"],
            key=body.object_key,
            replace_all=body.clear_all,
            set=entries,
            clear=tuple(name.encode() for name in body.clear),
            version=body.version,
        )
        return await self._edit(record, ok_status=200)

    async def _edit(self, record: EditState, *, ok_status: int) -> web.Response:
        engine = self.engine
        service = engine.registry.service(record.service)
        if service is None:
            return _error(404, f"service {record.service} not found")
        if not service.keyed:
            return _error(400, f"service {record.service} has no state (it is not a virtual object or workflow)")
        partition = engine.partitions[partition_for(partition_key_for_key(record.key), len(engine.partitions))]
        try:
            outcome = await engine.propose_and_wait(
                lambda token: partition.propose_nowait(dataclasses.replace(record, token=token))
            )
        except (OverloadedError, LogError) as exc:
            return _error(503, f"try again: {exc}")
        assert isinstance(outcome, Outcome)
        if outcome.status >= 400:
            return _error(outcome.status, outcome.message)
        return web.json_response({}, status=ok_status)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)

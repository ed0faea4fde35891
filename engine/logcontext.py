"""Log lines about an invocation carry its id, without passing it to every call.

The invoker sets :data:`current_invocation` at the start of each attempt (its own task, so the value stays with
that attempt and with the tasks it starts: the in-process ASGI app, whose SDK logs are tagged too). Code that logs
about an invocation outside an attempt (e.g. the partition processor) may pass ``extra=log_extra(id)``.

:class:`InvocationLogFilter`, installed on a handler, adds ``record.invocation_id`` (``"inv_…"`` or ``""``) and
``record.invocation`` (``" [inv_…]"`` or ``""``, for format strings such as :data:`LOG_FORMAT`). Only the filter
turns the id into text, so tagging costs nothing for records that are not emitted.

Standard library only: the CLI imports it.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Final

__all__ = ["LOG_FORMAT", "InvocationLogFilter", "current_invocation", "log_extra"]

# An InvocationId (or its "inv_…" text); None outside an attempt. str() is taken only when a record is emitted.
current_invocation: ContextVar[object | None] = ContextVar("capstan_current_invocation", default=None)

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s%(invocation)s %(message)s"


def log_extra(invocation_id: object) -> dict[str, object]:
    """``extra=`` for a log call about ``invocation_id`` made outside its attempt."""
    return {"invocation_id": invocation_id}


class InvocationLogFilter(logging.Filter):
    """Adds ``invocation_id`` and ``invocation`` to every record passing through the handler it is added to."""

    def filter(self, record: logging.LogRecord) -> bool:
        inv = getattr(record, "invocation_id", None)
        if inv is None:
            inv = current_invocation.get()
        text = "" if inv is None else str(inv)
        record.invocation_id = text
        record.invocation = f" [{text}]" if text else ""
        return True

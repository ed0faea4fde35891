"""Human-readable output for the admin commands: plain aligned tables and ``key: value`` blocks.

Everything here takes decoded JSON from the admin API and is tolerant of missing or extra fields, and of handlers
given either as a list (``[{name, ty, ...}]``) or as a map (``{name: {ty, ...}}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

MISSING = "-"


def text(value: Any) -> str:
    """One table cell: ``-`` for absent values, yes/no for booleans, compact JSON for containers."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def clip(value: Any, width: int) -> str:
    """``text(value)`` cut to ``width`` characters (``...`` marks the cut); newlines become spaces."""
    cell = text(value).replace("\n", " ")
    return cell if len(cell) <= width else cell[: width - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, *, indent: str = "") -> None:
    """Print ``rows`` under ``headers`` with columns padded to their widest cell."""
    cells = [[text(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        print(f"{indent}{line}".rstrip(), file=out)


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO, *, indent: str = "") -> None:
    """Print ``label: value`` lines with the values aligned."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    for label, value in pairs:
        print(f"{indent}{(label + ':').ljust(width)} {text(value)}", file=out)


def as_list(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in ``value`` when it is a list; nothing otherwise."""
    if isinstance(value, list):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def handlers(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A service's handlers as ``[{name, ...}]``, whether the API gave a list or a ``{name: metadata}`` map."""
    raw = service.get("handlers")
    out: list[dict[str, Any]] = []
    if isinstance(raw, Mapping):
        for name, meta in raw.items():
            out.append({**(meta if isinstance(meta, Mapping) else {}), "name": name})
    elif isinstance(raw, list):
        for item in raw:
            out.append(dict(item) if isinstance(item, Mapping) else {"name": str(item)})
    return out


def handler_type(handler: Mapping[str, Any]) -> str:
    # Restate calls it ``ty`` (Exclusive / Shared / Workflow, absent for plain services); manifests say ``type``.
    return text(handler.get("ty", handler.get("type")))


def payload(description: Any) -> str:
    """A handler's input or output in one short cell.

    Restate gives a sentence (``input_description``), shown as is. A manifest-style object (``{contentType,
    jsonSchema, required}``, also JSON-encoded in a string) becomes ``application/json integer``,
    ``application/json integer (optional)`` or ``none``.
    """
    if isinstance(description, str) and description.lstrip().startswith("{"):
        try:
            description = json.loads(description)
        except ValueError:
            pass
    if not isinstance(description, Mapping):
        return text(description)
    content_type = description.get("contentType")
    if not content_type:
        return "none"
    out = str(content_type)
    schema = description.get("jsonSchema")
    if isinstance(schema, Mapping) and schema.get("type"):
        out += f" {schema['type']}"
    if description.get("required") is False:
        out += " (optional)"
    return out


def service_block(service: Mapping[str, Any], out: TextIO, *, indent: str = "  ") -> None:
    """``Name (Type, revision N)`` then one line per handler with its type."""
    name = text(service.get("name"))
    details = [text(service.get("ty"))]
    if service.get("revision") is not None:
        details.append(f"revision {service['revision']}")
    print(f"{indent}{name} ({', '.join(details)})", file=out)
    rows = [(h.get("name"), handler_type(h)) for h in sorted(handlers(service), key=lambda h: str(h.get("name")))]
    if rows:
        width = max(len(text(n)) for n, _ in rows)
        for handler_name, ty in rows:
            print(f"{indent}  {text(handler_name).ljust(width)}  {ty}".rstrip(), file=out)


def service_revisions(services: Any) -> str:
    """``Counter@1, Greeter@2`` from a deployment's ``services`` list."""
    items = []
    for service in as_list(services):
        name = text(service.get("name"))
        revision = service.get("revision")
        items.append(name if revision is None else f"{name}@{revision}")
    return ", ".join(sorted(items)) or MISSING

"""How a Kafka record's key and value become an invocation's object key and body.

Restate hands the raw value bytes to the handler and insists on a UTF-8 key for keyed sinks, so a topic written with
Confluent's Avro serializers is stuck on its first record (restatedev/restate#4682). A subscription picks other
formats with its ``capstan.*`` options (see :func:`parse_format_options`):

- key: ``utf8`` (Restate's behaviour), ``base64`` (URL-safe, unpadded), ``hex``, ``avro`` or ``json``. Avro and JSON
  keys become canonical JSON text, except that a key whose JSON form is a string is used without the quotes.
- value: ``raw`` (Restate's behaviour), ``json`` (checked, then passed through unchanged) or ``avro`` (decoded and
  handed over as UTF-8 JSON).

Avro comes in the Confluent wire format (magic byte 0x00, a big-endian int32 schema id, then the Avro binary body)
with the writer schema from a schema registry or given inline, or as a plain Avro body with an inline schema.

A record that cannot be decoded raises :class:`PoisonRecordError`: retrying it can never succeed. A registry that
cannot be reached raises :class:`~ingress_kafka.schema_registry.SchemaRegistryUnavailableError`, which is retriable.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import difflib
import io
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, assert_never, cast, final, get_args

import fastavro
import yarl

from engine.errors import EngineInternalError, IngressError
from subscriptions.models import CAPSTAN_OPTIONS

__all__ = [
    "FORMAT_OPTION_KEYS",
    "OPTION_KEY_FORMAT",
    "OPTION_KEY_SCHEMA",
    "OPTION_KEY_WIRE_FORMAT",
    "OPTION_PREFIX",
    "OPTION_SCHEMA_REGISTRY_URL",
    "OPTION_VALUE_FORMAT",
    "OPTION_VALUE_SCHEMA",
    "OPTION_VALUE_WIRE_FORMAT",
    "AvroSchema",
    "FormatOptions",
    "KeyFormat",
    "ParsedSchema",
    "PoisonRecordError",
    "RecordDecoder",
    "SchemaSource",
    "Stage",
    "ValueFormat",
    "WireFormat",
    "parse_format_options",
]

Stage = Literal["key", "value"]
KeyFormat = Literal["utf8", "base64", "hex", "avro", "json"]
ValueFormat = Literal["raw", "json", "avro"]
WireFormat = Literal["confluent", "plain"]

AvroSchema = dict[str, Any] | list[Any] | str
"""An Avro schema in its JSON form: a record/enum/... object, a union list, or a primitive type name."""

ParsedSchema = dict[Any, Any] | list[Any] | str
"""A schema after ``fastavro.parse_schema``, ready for ``fastavro.schemaless_reader``."""

OPTION_PREFIX = "capstan."
OPTION_KEY_FORMAT = "capstan.key.format"
OPTION_VALUE_FORMAT = "capstan.value.format"
OPTION_SCHEMA_REGISTRY_URL = "capstan.schema.registry.url"
OPTION_VALUE_SCHEMA = "capstan.value.schema"
OPTION_KEY_SCHEMA = "capstan.key.schema"
OPTION_VALUE_WIRE_FORMAT = "capstan.value.wire.format"
OPTION_KEY_WIRE_FORMAT = "capstan.key.wire.format"
FORMAT_OPTION_KEYS = frozenset(
    {
        OPTION_KEY_FORMAT,
        OPTION_VALUE_FORMAT,
        OPTION_SCHEMA_REGISTRY_URL,
        OPTION_VALUE_SCHEMA,
        OPTION_KEY_SCHEMA,
        OPTION_VALUE_WIRE_FORMAT,
        OPTION_KEY_WIRE_FORMAT,
    }
)

_CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER_BYTES = 5


class PoisonRecordError(IngressError):
    """A record that can never become an invocation: its key or value does not decode in the configured format.

    Not retriable: the same bytes fail the same way every time. The consumer decides what to do with the record
    (stop, skip, dead-letter); the fields say which half of the record failed and why.

    Attributes:
        reason: What is wrong with the bytes, for people (also ``str(error)``).
        stage: ``"key"`` or ``"value"``.
    """

    def __init__(self, reason: str, *, stage: Stage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage: Stage = stage


class SchemaSource(Protocol):
    """Where writer schemas for Confluent-framed Avro come from: a :class:`SchemaRegistryClient` or a test fake.

    ``schema`` raises a :class:`PoisonRecordError` when the id can never resolve (the registry does not know it) and
    a retriable error when the registry cannot answer now.
    """

    async def schema(self, schema_id: int) -> ParsedSchema: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FormatOptions:
    """How a subscription turns record keys and values into object keys and bodies.

    Construction checks the combination, so a decoder never meets options it cannot honour: Avro needs a schema
    source (an inline schema, or a registry URL for the Confluent wire format), inline schemas must parse, and
    schemas and wire formats are only accepted for the halves whose format is ``avro``.

    Attributes:
        key_format: How the record key becomes the object key.
        value_format: How the record value becomes the request body.
        schema_registry_url: Base URL of a Confluent-compatible schema registry.
        value_schema: Inline Avro schema for values; used instead of the registry when set, and required for
            ``value_wire_format="plain"``.
        key_schema: Inline Avro schema for keys, as ``value_schema``.
        value_wire_format: ``confluent`` (5-byte header with a schema id) or ``plain`` (Avro body only).
        key_wire_format: As ``value_wire_format``, for keys.
    """

    key_format: KeyFormat = "utf8"
    value_format: ValueFormat = "raw"
    schema_registry_url: str | None = None
    # Left out of the hash so the options stay hashable; equal options still hash equal.
    value_schema: AvroSchema | None = field(default=None, hash=False)
    key_schema: AvroSchema | None = field(default=None, hash=False)
    value_wire_format: WireFormat = "confluent"
    key_wire_format: WireFormat = "confluent"

    def __post_init__(self) -> None:
        _check_choice(OPTION_KEY_FORMAT, self.key_format, get_args(KeyFormat))
        _check_choice(OPTION_VALUE_FORMAT, self.value_format, get_args(ValueFormat))
        _check_choice(OPTION_KEY_WIRE_FORMAT, self.key_wire_format, get_args(WireFormat))
        _check_choice(OPTION_VALUE_WIRE_FORMAT, self.value_wire_format, get_args(WireFormat))
        if self.schema_registry_url is not None:
            _check_registry_url(self.schema_registry_url)
        self._check_avro_half("key", self.key_format == "avro", self.key_schema, self.key_wire_format)
        self._check_avro_half("value", self.value_format == "avro", self.value_schema, self.value_wire_format)

    def _check_avro_half(self, stage: Stage, is_avro: bool, schema: AvroSchema | None, wire: WireFormat) -> None:
        fmt_option = OPTION_KEY_FORMAT if stage == "key" else OPTION_VALUE_FORMAT
        schema_option = OPTION_KEY_SCHEMA if stage == "key" else OPTION_VALUE_SCHEMA
        wire_option = OPTION_KEY_WIRE_FORMAT if stage == "key" else OPTION_VALUE_WIRE_FORMAT
        if not is_avro:
            if schema is not None:
                raise ValueError(f"{schema_option} is set but {fmt_option} is not avro; the schema would be unused")
            if wire != "confluent":
                raise ValueError(f"{wire_option}={wire} only applies when {fmt_option}=avro")
            return
        if schema is not None:
            _parse_avro_schema(schema, schema_option)
        elif wire == "plain":
            raise ValueError(
                f"{wire_option}=plain carries no schema id, so {schema_option} (the writer schema) is required"
            )
        elif self.schema_registry_url is None:
            raise ValueError(
                f"{fmt_option}=avro in the Confluent wire format needs {OPTION_SCHEMA_REGISTRY_URL} "
                f"or an inline {schema_option}"
            )

    @property
    def needs_registry(self) -> bool:
        """Whether decoding looks schemas up by id (Confluent-framed Avro without an inline schema)."""
        return (self.key_format == "avro" and self.key_schema is None and self.key_wire_format == "confluent") or (
            self.value_format == "avro" and self.value_schema is None and self.value_wire_format == "confluent"
        )


def parse_format_options(options: Mapping[str, str]) -> FormatOptions:
    """Read the format entries of a subscription's string options.

    Kafka consumer properties (``auto.offset.reset``, ``group.id``) and the ``capstan.*`` options other parts of
    Capstan read (``subscriptions.models.CAPSTAN_OPTIONS``: dead-letter topic, ordering) are ignored.

    Raises:
        ValueError: An unknown ``capstan.*`` key, a value outside its choices, schema text that is not JSON or not
            a valid Avro schema, or a combination the decoder cannot honour.
    """
    known = FORMAT_OPTION_KEYS | CAPSTAN_OPTIONS
    for key in options:
        if key.startswith(OPTION_PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown subscription option {key!r}{hint} (Capstan's options are {', '.join(sorted(known))})"
            )
    return FormatOptions(
        key_format=cast(KeyFormat, options.get(OPTION_KEY_FORMAT, "utf8")),
        value_format=cast(ValueFormat, options.get(OPTION_VALUE_FORMAT, "raw")),
        schema_registry_url=options.get(OPTION_SCHEMA_REGISTRY_URL),
        value_schema=_schema_option(options, OPTION_VALUE_SCHEMA),
        key_schema=_schema_option(options, OPTION_KEY_SCHEMA),
        value_wire_format=cast(WireFormat, options.get(OPTION_VALUE_WIRE_FORMAT, "confluent")),
        key_wire_format=cast(WireFormat, options.get(OPTION_KEY_WIRE_FORMAT, "confluent")),
    )


@final
class RecordDecoder:
    """Decodes one subscription's record keys and values; cheap to call once per record.

    Args:
        options: The subscription's formats.
        registry: Where Confluent-framed Avro looks up writer schemas (it should cache them by id, as
            :class:`~ingress_kafka.schema_registry.SchemaRegistryClient` does). Required when
            ``options.needs_registry``.

    Raises:
        ValueError: ``options`` need a registry and none was given.
    """

    def __init__(self, options: FormatOptions, registry: SchemaSource | None) -> None:
        if options.needs_registry and registry is None:
            raise ValueError(
                "these formats read Confluent-framed Avro without an inline schema, so the decoder needs a "
                f"schema registry client for {options.schema_registry_url}"
            )
        self._options = options
        self._registry = registry
        self._key_schema = _parse_optional(options.key_schema, OPTION_KEY_SCHEMA)
        self._value_schema = _parse_optional(options.value_schema, OPTION_VALUE_SCHEMA)

    @property
    def options(self) -> FormatOptions:
        return self._options

    async def decode_key(self, key: bytes | None) -> str | None:
        """The object key (or workflow id) for a record key; ``None`` when the record has no key.

        Raises:
            PoisonRecordError: The key does not decode in ``key_format`` (``stage == "key"``).
            SchemaRegistryUnavailableError: The registry could not be asked; retry later.
        """
        if key is None:
            return None
        fmt = self._options.key_format
        match fmt:
            case "utf8":
                try:
                    return key.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PoisonRecordError(
                        f"key is not valid UTF-8 ({exc.reason} at byte offset {exc.start}); keyed handlers need a "
                        f"text key, so set {OPTION_KEY_FORMAT} to base64, hex, avro or json",
                        stage="key",
                    ) from exc
            case "base64":
                return base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
            case "hex":
                return key.hex()
            case "avro":
                return _key_text(await self._read_avro(key, "key"))
            case "json":
                return _key_text(_parse_json(key, "key"))
            case _:
                assert_never(fmt)

    async def decode_value(self, value: bytes | None) -> bytes:
        """The request body for a record value; a null value (tombstone) gives an empty body.

        Raises:
            PoisonRecordError: The value does not decode in ``value_format`` (``stage == "value"``).
            SchemaRegistryUnavailableError: The registry could not be asked; retry later.
        """
        if value is None:
            return b""
        fmt = self._options.value_format
        match fmt:
            case "raw":
                return value
            case "json":
                _parse_json(value, "value")
                return value
            case "avro":
                return _render_json(await self._read_avro(value, "value"), canonical=False).encode("utf-8")
            case _:
                assert_never(fmt)

    async def _read_avro(self, data: bytes, stage: Stage) -> object:
        if stage == "key":
            inline, wire, schema_option = self._key_schema, self._options.key_wire_format, OPTION_KEY_SCHEMA
        else:
            inline, wire, schema_option = self._value_schema, self._options.value_wire_format, OPTION_VALUE_SCHEMA
        if wire == "plain":
            if inline is None:
                raise EngineInternalError("FormatOptions let plain Avro through without a schema")
            return _decode_avro_body(data, inline, stage=stage, source=f"the inline {schema_option}")
        if len(data) < _CONFLUENT_HEADER_BYTES:
            raise PoisonRecordError(
                f"{stage} is {len(data)} bytes, shorter than the 5-byte Confluent wire-format header "
                "(magic byte 0x00 and a 4-byte schema id)",
                stage=stage,
            )
        if data[0] != _CONFLUENT_MAGIC:
            raise PoisonRecordError(
                f"{stage} starts with byte 0x{data[0]:02x}, not the Confluent wire-format magic byte 0x00; "
                f"it was not written by a Confluent serializer (plain Avro needs {schema_option} and wire format "
                "plain)",
                stage=stage,
            )
        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_BYTES], "big", signed=True)
        if inline is not None:
            # An inline schema stands in for the registry: the frame's id is not looked up.
            source = f"the inline {schema_option} (frame schema id {schema_id})"
            return _decode_avro_body(data[_CONFLUENT_HEADER_BYTES:], inline, stage=stage, source=source)
        if schema_id < 0:
            raise PoisonRecordError(f"{stage} names schema id {schema_id}; ids are never negative", stage=stage)
        schema = await self._registry_schema(schema_id, stage)
        source = f"writer schema id {schema_id} from the schema registry"
        return _decode_avro_body(data[_CONFLUENT_HEADER_BYTES:], schema, stage=stage, source=source)

    async def _registry_schema(self, schema_id: int, stage: Stage) -> ParsedSchema:
        if self._registry is None:
            raise EngineInternalError("RecordDecoder was built without the registry its options need")
        try:
            return await self._registry.schema(schema_id)
        except PoisonRecordError as exc:
            # The registry serves keys and values alike and cannot know which one asked; each call raises a fresh
            # error, so setting the stage here touches no other caller's exception.
            exc.stage = stage
            raise


# ----------------------------------------------------------------------------------------------------------------
# Options


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, not {value!r}")


def _check_registry_url(url: str) -> None:
    try:
        parsed = yarl.URL(url)
    except ValueError as exc:
        raise ValueError(f"{OPTION_SCHEMA_REGISTRY_URL} is not a URL: {url!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{OPTION_SCHEMA_REGISTRY_URL} must be an http(s) URL with a host, not {url!r}")


def _schema_option(options: Mapping[str, str], option: str) -> AvroSchema | None:
    text = options.get(option)
    if text is None:
        return None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{option} is not JSON: {exc}") from exc
    if not isinstance(schema, dict | list | str):
        raise ValueError(f"{option} must be a JSON object, array or string naming an Avro schema, not {text!r}")
    return cast(AvroSchema, schema)


def _parse_avro_schema(schema: AvroSchema, option: str) -> ParsedSchema:
    try:
        return fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises SchemaParseException, UnknownType, ValueError, TypeError, KeyError
        raise ValueError(f"{option} is not a valid Avro schema: {type(exc).__name__}: {exc}") from exc


def _parse_optional(schema: AvroSchema | None, option: str) -> ParsedSchema | None:
    return None if schema is None else _parse_avro_schema(schema, option)


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def _decode_avro_body(body: bytes, schema: ParsedSchema, *, stage: Stage, source: str) -> object:
    # Known limit: an array whose items encode to zero bytes (null, fixed(0), records of those) lets a few bytes
    # declare billions of items; fastavro then spins. Schemas like that are rare enough not to reimplement the reader.
    stream = io.BytesIO(body)
    try:
        datum: object = fastavro.schemaless_reader(stream, schema, None)
    except EOFError as exc:
        raise PoisonRecordError(f"{stage} Avro body is truncated for {source}", stage=stage) from exc
    except Exception as exc:  # bad union index, invalid UTF-8 in a string, out-of-range dates, ...
        raise PoisonRecordError(
            f"{stage} Avro body does not decode with {source}: {type(exc).__name__}: {exc}", stage=stage
        ) from exc
    trailing = len(body) - stream.tell()
    if trailing:
        raise PoisonRecordError(
            f"{stage} Avro body has {trailing} bytes left after the datum decoded with {source}; "
            "it was written with a different schema",
            stage=stage,
        )
    return datum


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _parse_json(data: bytes, stage: Stage) -> object:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonRecordError(
            f"{stage} is not valid JSON: not UTF-8 ({exc.reason} at byte offset {exc.start})", stage=stage
        ) from exc
    try:
        parsed: object = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is an over-long integer
        raise PoisonRecordError(f"{stage} is not valid JSON: {exc}", stage=stage) from exc
    return parsed


def _key_text(datum: object) -> str:
    text = _render_json(datum, canonical=True)
    if text.startswith('"'):
        # Strings, enum symbols, uuids, timestamps: the key is the text itself, not a quoted JSON literal.
        return cast(str, json.loads(text))
    return text


def _render_json(datum: object, *, canonical: bool) -> str:
    """JSON text for a decoded datum; ``canonical`` sorts object keys (record fields keep schema order otherwise)."""
    try:
        return _dumps(datum, canonical=canonical)
    except ValueError:
        # allow_nan=False met a NaN or infinity, which JSON cannot spell; use protobuf's JSON mapping strings.
        return _dumps(_replace_non_finite(datum), canonical=canonical)


def _dumps(datum: object, *, canonical: bool) -> str:
    return json.dumps(
        datum,
        default=_json_default,
        allow_nan=False,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=canonical,
    )


def _json_default(value: object) -> object:
    """JSON for the Python types fastavro's logical-type readers and bytes/fixed produce."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return format(value, "f")  # never scientific notation: "0.0000000001", not "1E-10"
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise EngineInternalError(f"fastavro produced a {type(value).__name__}, which has no JSON rendering here")


def _replace_non_finite(datum: object) -> object:
    if isinstance(datum, float) and not math.isfinite(datum):
        return "NaN" if math.isnan(datum) else ("Infinity" if datum > 0 else "-Infinity")
    if isinstance(datum, dict):
        return {k: _replace_non_finite(v) for k, v in datum.items()}
    if isinstance(datum, list):
        return [_replace_non_finite(v) for v in datum]
    return datum

"""Record keys and values to object keys and bodies: every format, Avro in both wire formats, and poison records."""

from __future__ import annotations

import base64
import datetime
import decimal
import io
import json
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress_kafka.formats import (
    FORMAT_OPTION_KEYS,
    AvroSchema,
    FormatOptions,
    ParsedSchema,
    PoisonRecordError,
    RecordDecoder,
    parse_format_options,
)
from ingress_kafka.schema_registry import SchemaRegistryUnavailableError, UnknownSchemaError
from subscriptions.models import CAPSTAN_OPTIONS

T = TypeVar("T")

NON_UTF8_KEYS = [b"\xff", b"\xc3\x28", b"abc\x80def", b"\xed\xa0\x80"]  # lone byte, bad continuation, surrogate


def resolve(coro: Coroutine[Any, Any, T]) -> T:
    """Run a decoder call that must finish without awaiting anything (no registry involved)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the decoder suspended, but this format needs no I/O")


def avro_body(schema: AvroSchema, datum: object) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return out.getvalue()


def confluent(schema_id: int, schema: AvroSchema, datum: object) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + avro_body(schema, datum)


class FakeRegistry:
    """A SchemaSource holding parsed schemas by id; counts lookups."""

    def __init__(self, schemas: dict[int, AvroSchema]) -> None:
        self.schemas = {i: fastavro.parse_schema(s) for i, s in schemas.items()}
        self.asked: list[int] = []
        self.unavailable = False

    async def schema(self, schema_id: int) -> ParsedSchema:
        self.asked.append(schema_id)
        if self.unavailable:
            raise SchemaRegistryUnavailableError("down", schema_id=schema_id, registry_url="fake")
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise UnknownSchemaError(schema_id, registry_url="fake") from None


# ---------------------------------------------------------------------------------------------------------------
# Keys: utf8, base64, hex


async def test_utf8_key_is_the_text() -> None:
    decoder = RecordDecoder(FormatOptions(), None)
    assert await decoder.decode_key("grüße/1".encode()) == "grüße/1"
    assert await decoder.decode_key(b"") == ""
    assert await decoder.decode_key(None) is None


@pytest.mark.parametrize("key", NON_UTF8_KEYS)
async def test_non_utf8_key_is_poison_with_utf8(key: bytes) -> None:
    decoder = RecordDecoder(FormatOptions(key_format="utf8"), None)
    with pytest.raises(PoisonRecordError, match="key is not valid UTF-8") as info:
        await decoder.decode_key(key)
    assert info.value.stage == "key"
    assert "capstan.key.format" in info.value.reason  # tells the user the way out
    assert info.value.retriable is False


@pytest.mark.parametrize("key", NON_UTF8_KEYS)
async def test_non_utf8_key_is_fine_as_base64_and_hex(key: bytes) -> None:
    b64 = await RecordDecoder(FormatOptions(key_format="base64"), None).decode_key(key)
    hexed = await RecordDecoder(FormatOptions(key_format="hex"), None).decode_key(key)
    assert b64 == base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert hexed == key.hex()


async def test_base64_and_hex_known_values() -> None:
    key = b"\xfb\xff\xfe"  # standard base64 would be "+//+"
    assert await RecordDecoder(FormatOptions(key_format="base64"), None).decode_key(key) == "-__-"
    assert await RecordDecoder(FormatOptions(key_format="base64"), None).decode_key(b"a") == "YQ"  # no padding
    assert await RecordDecoder(FormatOptions(key_format="hex"), None).decode_key(b"\xab\x01") == "ab01"
    assert await RecordDecoder(FormatOptions(key_format="hex"), None).decode_key(None) is None


@given(key=st.binary(max_size=300))
def test_base64_key_round_trips(key: bytes) -> None:
    text = resolve(RecordDecoder(FormatOptions(key_format="base64"), None).decode_key(key))
    assert text is not None
    assert "=" not in text and "+" not in text and "/" not in text
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == key


@given(key=st.binary(max_size=300))
def test_hex_key_round_trips(key: bytes) -> None:
    text = resolve(RecordDecoder(FormatOptions(key_format="hex"), None).decode_key(key))
    assert text is not None
    assert text == text.lower() and len(text) == 2 * len(key)
    assert bytes.fromhex(text) == key


@given(key=st.text(max_size=100))
def test_utf8_key_round_trips(key: str) -> None:
    assert resolve(RecordDecoder(FormatOptions(), None).decode_key(key.encode())) == key


# ---------------------------------------------------------------------------------------------------------------
# Keys: json and avro


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"b": 1, "a": [1, 2, {"z": null, "y": true}]}', '{"a":[1,2,{"y":true,"z":null}],"b":1}'),
        (b' "order-17" ', "order-17"),  # a JSON string is the key itself, unquoted
        (b'"\\u00e9t\\u00e9"', "été"),
        (b"42", "42"),
        (b"1.5e3", "1500.0"),
        (b"[]", "[]"),
        (b"null", "null"),
    ],
)
async def test_json_key_is_canonical_text(raw: bytes, expected: str) -> None:
    assert await RecordDecoder(FormatOptions(key_format="json"), None).decode_key(raw) == expected


@pytest.mark.parametrize("raw", [b"{", b"", b"abc", b"NaN", b"[Infinity]", b"\xff", b'{"a":1} x'])
async def test_invalid_json_key_is_poison(raw: bytes) -> None:
    with pytest.raises(PoisonRecordError, match="key is not valid JSON") as info:
        await RecordDecoder(FormatOptions(key_format="json"), None).decode_key(raw)
    assert info.value.stage == "key"


KEY_RECORD: AvroSchema = {
    "type": "record",
    "name": "OrderKey",
    "fields": [{"name": "tenant", "type": "string"}, {"name": "id", "type": "long"}],
}


async def test_avro_string_key_in_confluent_framing_is_the_plain_string() -> None:
    options = FormatOptions(key_format="avro", key_schema="string")
    decoder = RecordDecoder(options, None)
    assert await decoder.decode_key(confluent(3, "string", "user-1")) == "user-1"
    assert await decoder.decode_key(confluent(3, "string", "")) == ""
    assert await decoder.decode_key(None) is None


async def test_avro_record_key_is_canonical_json() -> None:
    decoder = RecordDecoder(FormatOptions(key_format="avro", key_schema=KEY_RECORD), None)
    key = confluent(9, KEY_RECORD, {"tenant": "acme", "id": 7})
    # Sorted keys, no spaces: the same record always gives the same object key.
    assert await decoder.decode_key(key) == '{"id":7,"tenant":"acme"}'


@pytest.mark.parametrize(
    ("schema", "datum", "expected"),
    [
        ("long", 42, "42"),
        ({"type": "string", "logicalType": "uuid"}, uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}, "GREEN", "GREEN"),
        (["null", "string"], "k", "k"),
        ({"type": "array", "items": "int"}, [3, 1], "[3,1]"),
    ],
)
async def test_avro_scalar_keys(schema: AvroSchema, datum: object, expected: str) -> None:
    decoder = RecordDecoder(FormatOptions(key_format="avro", key_schema=schema), None)
    assert await decoder.decode_key(confluent(1, schema, datum)) == expected


async def test_avro_key_from_the_registry() -> None:
    registry = FakeRegistry({5: KEY_RECORD})
    decoder = RecordDecoder(FormatOptions(key_format="avro", schema_registry_url="http://registry:8081"), registry)
    assert await decoder.decode_key(confluent(5, KEY_RECORD, {"tenant": "t", "id": 1})) == '{"id":1,"tenant":"t"}'
    assert registry.asked == [5]


async def test_plain_avro_key() -> None:
    decoder = RecordDecoder(FormatOptions(key_format="avro", key_schema="string", key_wire_format="plain"), None)
    assert await decoder.decode_key(avro_body("string", "héllo")) == "héllo"


# ---------------------------------------------------------------------------------------------------------------
# Values: raw and json


@given(value=st.binary(max_size=500))
def test_raw_value_passes_unchanged(value: bytes) -> None:
    assert resolve(RecordDecoder(FormatOptions(), None).decode_value(value)) == value


@pytest.mark.parametrize("fmt", ["raw", "json", "avro"])
async def test_null_value_is_an_empty_body(fmt: Any) -> None:
    options = FormatOptions(value_format=fmt, value_schema="string" if fmt == "avro" else None)
    assert await RecordDecoder(options, None).decode_value(None) == b""


async def test_json_value_is_checked_and_passed_through_unchanged() -> None:
    decoder = RecordDecoder(FormatOptions(value_format="json"), None)
    for value in [b'{ "b" : 1,\n "a": [1.50, "\\u00e9"] }', b"17", b'"s"', '{"é": 1}'.encode()]:
        assert await decoder.decode_value(value) == value  # bytes for bytes, whitespace and order kept


@pytest.mark.parametrize(
    "value",
    [b"", b"{", b"{'a': 1}", b"[1,]", b"NaN", b'{"x": -Infinity}', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"1 2"],
)
async def test_invalid_json_value_is_poison(value: bytes) -> None:
    with pytest.raises(PoisonRecordError, match="value is not valid JSON") as info:
        await RecordDecoder(FormatOptions(value_format="json"), None).decode_value(value)
    assert info.value.stage == "value"


async def test_deeply_nested_json_is_poison_not_a_crash() -> None:
    with pytest.raises(PoisonRecordError, match="not valid JSON"):
        await RecordDecoder(FormatOptions(value_format="json"), None).decode_value(b"[" * 200_000)


# ---------------------------------------------------------------------------------------------------------------
# Values: avro

ORDER_SCHEMA: AvroSchema = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [{"name": "name", "type": "string"}, {"name": "vip", "type": "boolean"}],
            },
        },
        {"name": "lines", "type": {"type": "array", "items": {"type": "map", "values": "int"}}},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "blob", "type": "bytes"},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {
            "name": "tiny",
            "type": {
                "type": "fixed",
                "name": "Tiny",
                "size": 8,
                "logicalType": "decimal",
                "precision": 18,
                "scale": 10,
            },
        },
        {"name": "created", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "updated", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["NEW", "PAID"]}},
        {"name": "ratio", "type": "double"},
        {"name": "again", "type": "Customer"},  # a named type used a second time
    ],
}

UTC = datetime.UTC
ORDER = {
    "id": 12345678901,
    "customer": {"name": "Zoë", "vip": True},
    "lines": [{"qty": 2, "sku": 7}, {}],
    "tags": {"b": ["x"], "a": []},
    "note": None,
    "blob": b"\x00\xff\xfe",
    "digest": b"\xde\xad\xbe\xef",
    "price": decimal.Decimal("1234.50"),
    "tiny": decimal.Decimal("0.0000000001"),
    "created": datetime.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC),
    "updated": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    "local": datetime.datetime(2024, 5, 6, 7, 8, 9, 500000),
    "day": datetime.date(2024, 2, 29),
    "at": datetime.time(23, 59, 58, 1000),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "state": "PAID",
    "ratio": 0.25,
    "again": {"name": "x", "vip": False},
}
ORDER_JSON = {
    "id": 12345678901,
    "customer": {"name": "Zoë", "vip": True},
    "lines": [{"qty": 2, "sku": 7}, {}],
    "tags": {"b": ["x"], "a": []},
    "note": None,
    "blob": base64.b64encode(b"\x00\xff\xfe").decode(),
    "digest": base64.b64encode(b"\xde\xad\xbe\xef").decode(),
    "price": "1234.50",
    "tiny": "0.0000000001",
    "created": "2024-05-06T07:08:09.123000+00:00",
    "updated": "2024-05-06T07:08:09.123456+00:00",
    "local": "2024-05-06T07:08:09.500000",
    "day": "2024-02-29",
    "at": "23:59:58.001000",
    "ref": "12345678-1234-5678-1234-567812345678",
    "state": "PAID",
    "ratio": 0.25,
    "again": {"name": "x", "vip": False},
}


async def test_avro_value_in_confluent_framing_with_an_inline_schema_renders_json() -> None:
    decoder = RecordDecoder(FormatOptions(value_format="avro", value_schema=ORDER_SCHEMA), None)
    body = await decoder.decode_value(confluent(77, ORDER_SCHEMA, ORDER))
    assert json.loads(body) == ORDER_JSON
    assert list(json.loads(body)) == list(ORDER_JSON)  # fields in schema order
    assert "Zoë".encode() in body  # UTF-8, not \u escapes


async def test_avro_value_from_the_registry() -> None:
    registry = FakeRegistry({77: ORDER_SCHEMA})
    options = FormatOptions(value_format="avro", schema_registry_url="http://registry:8081")
    decoder = RecordDecoder(options, registry)
    assert json.loads(await decoder.decode_value(confluent(77, ORDER_SCHEMA, ORDER))) == ORDER_JSON
    assert registry.asked == [77]


async def test_inline_schema_is_used_instead_of_the_registry() -> None:
    registry = FakeRegistry({})
    options = FormatOptions(value_format="avro", value_schema="string", schema_registry_url="http://r:8081")
    decoder = RecordDecoder(options, registry)
    assert await decoder.decode_value(confluent(12345, "string", "hi")) == b'"hi"'
    assert registry.asked == []


async def test_plain_avro_value() -> None:
    options = FormatOptions(value_format="avro", value_schema=ORDER_SCHEMA, value_wire_format="plain")
    body = await RecordDecoder(options, None).decode_value(avro_body(ORDER_SCHEMA, ORDER))
    assert json.loads(body) == ORDER_JSON


async def test_avro_non_finite_doubles_become_strings() -> None:
    schema: AvroSchema = {"type": "array", "items": "double"}
    decoder = RecordDecoder(FormatOptions(value_format="avro", value_schema=schema), None)
    body = await decoder.decode_value(confluent(1, schema, [1.5, float("nan"), float("inf"), float("-inf")]))
    assert body == b'[1.5,"NaN","Infinity","-Infinity"]'  # valid JSON: protobuf's JSON mapping strings


AVRO_VALUE = FormatOptions(value_format="avro", value_schema=ORDER_SCHEMA)


async def test_bad_magic_byte_is_poison() -> None:
    value = b"\x01" + confluent(77, ORDER_SCHEMA, ORDER)[1:]
    with pytest.raises(PoisonRecordError, match="byte 0x01, not the Confluent wire-format magic byte") as info:
        await RecordDecoder(AVRO_VALUE, None).decode_value(value)
    assert info.value.stage == "value"
    with pytest.raises(PoisonRecordError, match="byte 0x7b"):
        await RecordDecoder(AVRO_VALUE, None).decode_value(b'{"json": "instead"}')


@pytest.mark.parametrize("value", [b"", b"\x00", b"\x00\x00\x00\x00"])
async def test_value_shorter_than_the_header_is_poison(value: bytes) -> None:
    with pytest.raises(PoisonRecordError, match=f"value is {len(value)} bytes, shorter than the 5-byte"):
        await RecordDecoder(AVRO_VALUE, None).decode_value(value)


async def test_truncated_avro_body_is_poison() -> None:
    value = confluent(77, ORDER_SCHEMA, ORDER)
    decoder = RecordDecoder(AVRO_VALUE, None)
    for cut in range(5, len(value)):
        with pytest.raises(PoisonRecordError, match="value Avro body") as info:
            await decoder.decode_value(value[:cut])
        assert info.value.stage == "value"
    with pytest.raises(PoisonRecordError, match=r"truncated for the inline capstan\.value\.schema"):
        await decoder.decode_value(value[:-3])


async def test_avro_body_with_trailing_bytes_is_poison() -> None:
    with pytest.raises(PoisonRecordError, match="2 bytes left after the datum"):
        await RecordDecoder(AVRO_VALUE, None).decode_value(confluent(77, ORDER_SCHEMA, ORDER) + b"\x00\x00")


async def test_avro_body_that_does_not_decode_is_poison() -> None:
    schema: AvroSchema = ["null", "string"]
    decoder = RecordDecoder(FormatOptions(value_format="avro", value_schema=schema), None)
    with pytest.raises(PoisonRecordError, match=r"does not decode with the inline capstan\.value\.schema"):
        await decoder.decode_value(b"\x00\x00\x00\x00\x01" + b"\x08")  # union branch 4 of 2
    with pytest.raises(PoisonRecordError, match="does not decode"):
        await decoder.decode_value(b"\x00\x00\x00\x00\x01" + b"\x02\x04\xff\xfe")  # a string that is not UTF-8


async def test_unknown_schema_id_is_poison_for_the_right_stage() -> None:
    registry = FakeRegistry({1: "string"})
    options = FormatOptions(key_format="avro", value_format="avro", schema_registry_url="http://r:8081")
    decoder = RecordDecoder(options, registry)
    with pytest.raises(UnknownSchemaError, match="schema id 99 is not registered") as info:
        await decoder.decode_value(confluent(99, "string", "x"))
    assert info.value.stage == "value" and info.value.schema_id == 99
    with pytest.raises(UnknownSchemaError) as key_info:
        await decoder.decode_key(confluent(98, "string", "x"))
    assert key_info.value.stage == "key"
    assert isinstance(key_info.value, PoisonRecordError)


async def test_negative_schema_id_is_poison_without_a_lookup() -> None:
    registry = FakeRegistry({})
    decoder = RecordDecoder(FormatOptions(value_format="avro", schema_registry_url="http://r:8081"), registry)
    with pytest.raises(PoisonRecordError, match="schema id -1"):
        await decoder.decode_value(b"\x00\xff\xff\xff\xff\x02")
    assert registry.asked == []


async def test_registry_outage_is_not_poison() -> None:
    registry = FakeRegistry({1: "string"})
    registry.unavailable = True
    decoder = RecordDecoder(FormatOptions(value_format="avro", schema_registry_url="http://r:8081"), registry)
    with pytest.raises(SchemaRegistryUnavailableError) as info:
        await decoder.decode_value(confluent(1, "string", "x"))
    assert not isinstance(info.value, PoisonRecordError)
    assert info.value.retriable is True


async def test_plain_avro_with_the_wrong_schema_is_poison() -> None:
    options = FormatOptions(value_format="avro", value_schema="long", value_wire_format="plain")
    with pytest.raises(PoisonRecordError, match="bytes left after the datum"):
        await RecordDecoder(options, None).decode_value(avro_body("string", "hello"))


# ---------------------------------------------------------------------------------------------------------------
# Options


def test_empty_options_are_restate_behaviour() -> None:
    assert parse_format_options({}) == FormatOptions(key_format="utf8", value_format="raw")


def test_kafka_properties_and_other_capstan_options_are_ignored() -> None:
    options = {"auto.offset.reset": "earliest", "group.id": "g", "capstan.dlq.topic": "dlq", "capstan.ordering": "p"}
    assert parse_format_options(options) == FormatOptions()


def test_every_format_option_is_read() -> None:
    schema = {"type": "record", "name": "K", "fields": [{"name": "a", "type": "int"}]}
    options = parse_format_options(
        {
            "capstan.key.format": "avro",
            "capstan.value.format": "avro",
            "capstan.schema.registry.url": "https://user:pw@registry.example:8081",
            "capstan.key.schema": json.dumps(schema),
            "capstan.key.wire.format": "plain",
            "capstan.value.wire.format": "confluent",
        }
    )
    assert options == FormatOptions(
        key_format="avro",
        value_format="avro",
        schema_registry_url="https://user:pw@registry.example:8081",
        key_schema=schema,
        key_wire_format="plain",
    )
    assert options.needs_registry  # the value has no inline schema
    assert parse_format_options({"capstan.value.format": "avro", "capstan.value.schema": '"string"'}) == (
        FormatOptions(value_format="avro", value_schema="string")
    )
    hash(options)  # usable as a dict key despite the schema dicts


def test_format_option_keys_are_known_to_the_admin_api() -> None:
    assert FORMAT_OPTION_KEYS <= CAPSTAN_OPTIONS


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"capstan.value.fromat": "json"}, "unknown subscription option 'capstan.value.fromat'; did you mean "),
        ({"capstan.nope": "1"}, "unknown subscription option 'capstan.nope'"),
        ({"capstan.key.format": "latin1"}, "capstan.key.format must be one of utf8, base64, hex, avro, json"),
        ({"capstan.value.format": "protobuf"}, "capstan.value.format must be one of raw, json, avro"),
        ({"capstan.value.format": "avro", "capstan.value.wire.format": "x"}, "capstan.value.wire.format must be"),
        ({"capstan.value.format": "avro"}, "needs capstan.schema.registry.url or an inline capstan.value.schema"),
        ({"capstan.key.format": "avro"}, "needs capstan.schema.registry.url or an inline capstan.key.schema"),
        (
            {
                "capstan.value.format": "avro",
                "capstan.value.wire.format": "plain",
                "capstan.schema.registry.url": "http://r",
            },
            "capstan.value.wire.format=plain carries no schema id, so capstan.value.schema",
        ),
        ({"capstan.value.format": "avro", "capstan.value.schema": "{not json"}, "capstan.value.schema is not JSON"),
        ({"capstan.value.format": "avro", "capstan.value.schema": "42"}, "must be a JSON object, array or string"),
        (
            {"capstan.value.format": "avro", "capstan.value.schema": '{"type": "nope"}'},
            "capstan.value.schema is not a valid Avro schema",
        ),
        (
            {
                "capstan.key.format": "avro",
                "capstan.key.schema": '{"type": "record", "name": "R", "fields": [{"name": "a", "type": "Missing"}]}',
            },
            "capstan.key.schema is not a valid Avro schema",
        ),
        ({"capstan.key.format": "avro", "capstan.key.schema": '"strin"'}, "capstan.key.schema is not a valid Avro"),
        ({"capstan.value.format": "json", "capstan.value.schema": '"string"'}, "schema would be unused"),
        ({"capstan.key.wire.format": "plain"}, "only applies when capstan.key.format=avro"),
        ({"capstan.value.format": "avro", "capstan.schema.registry.url": "registry:8081"}, "http(s) URL with a host"),
        ({"capstan.value.format": "avro", "capstan.schema.registry.url": "ftp://r"}, "http(s) URL with a host"),
    ],
)
def test_bad_options_raise_value_error(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_format_options(options)
    assert message in str(info.value)


def test_decoder_needs_a_registry_when_the_options_do() -> None:
    with pytest.raises(ValueError, match="needs a schema registry client"):
        RecordDecoder(FormatOptions(value_format="avro", schema_registry_url="http://r:8081"), None)
    RecordDecoder(FormatOptions(value_format="avro", value_schema="string"), None)  # inline: no registry needed


def test_inline_schema_is_not_modified() -> None:
    schema = json.loads(json.dumps(ORDER_SCHEMA))
    RecordDecoder(FormatOptions(value_format="avro", value_schema=schema), None)
    assert schema == ORDER_SCHEMA

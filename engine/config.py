"""Engine configuration: one pydantic tree, loaded once from TOML + environment, then frozen.

Sources, lowest precedence first: defaults below, a TOML file (``capstan serve --config``), environment variables
``CAPSTAN__<SECTION>__<FIELD>`` (e.g. ``CAPSTAN__INVOKER__QUEUE_LIMIT=512``), then CLI flags. Only
:func:`load_config` reads ``os.environ``; every other module receives the frozen :class:`EngineConfig`.

Durations are ``timedelta`` (TOML accepts seconds as numbers or strings such as ``"500ms"``, ``"60s"``, ``"24h"``);
byte sizes are ints named ``*_bytes``.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from engine.errors import ConfigError

MiB = 1024 * 1024

DEFAULT_DATA_DIR = Path("capstan-data")
DEFAULT_INGRESS_ADDRESS = "127.0.0.1:8080"
DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9070"
DEFAULT_SEGMENT_SIZE_BYTES = 64 * MiB
DEFAULT_REQUEST_SIZE_LIMIT_BYTES = 32 * MiB
DEFAULT_MESSAGE_SIZE_LIMIT_BYTES = 32 * MiB

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> timedelta:
    """Parse ``500ms``, ``60s``, ``5m``, ``24h``, ``1d`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"not a duration: {value!r} (examples: 500ms, 60s, 5m, 24h)")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FsyncPolicy(enum.StrEnum):
    """``fsync``: every batch is fsynced before its appenders are answered (group commit). ``none``: rely on the
    OS page cache (a machine crash may lose acknowledged records; a process crash does not)."""

    FSYNC = "fsync"
    NONE = "none"


class LogSection(_Section):
    fsync: FsyncPolicy = FsyncPolicy.FSYNC
    segment_size_bytes: int = Field(DEFAULT_SEGMENT_SIZE_BYTES, ge=4096)
    max_batch_records: int = Field(1024, ge=1)
    max_batch_bytes: int = Field(4 * MiB, ge=1024)
    queue_limit: int = Field(16384, ge=1)
    record_size_limit_bytes: int = Field(DEFAULT_MESSAGE_SIZE_LIMIT_BYTES, ge=1024)
    # While a partition replays its log tail at start-up, progress is logged at most this often.
    recovery_progress_interval: timedelta = timedelta(seconds=2)

    _durations = field_validator("recovery_progress_interval", mode="before")(parse_duration)


class StorageSection(_Section):
    # How many applied records may pile up before the log prefix they cover is truncated.
    truncate_every_records: int = Field(10000, ge=1)
    # Batches of at most this many durable records are applied on the event loop (memtable writes without
    # RocksDB's WAL, which never stall: a write that would is retried on the partition's thread); larger batches,
    # and every batch when 0, go to the partition's thread.
    inline_apply_max_records: int = Field(64, ge=0)


class RetryPolicySection(_Section):
    initial_interval: timedelta = timedelta(milliseconds=500)
    exponentiation_factor: float = Field(2.0, ge=1.0)
    max_interval: timedelta = timedelta(seconds=60)
    max_attempts: int | None = Field(70, ge=1)  # None = unlimited
    on_max_attempts: str = Field("pause", pattern="^(pause|kill)$")

    _durations = field_validator("initial_interval", "max_interval", mode="before")(parse_duration)


class InvokerSection(_Section):
    concurrency_limit: int = Field(1000, ge=1)
    queue_limit: int = Field(10000, ge=1)
    inactivity_timeout: timedelta = timedelta(seconds=60)
    abort_timeout: timedelta = timedelta(minutes=10)
    connect_timeout: timedelta = timedelta(seconds=10)
    message_size_limit_bytes: int = Field(DEFAULT_MESSAGE_SIZE_LIMIT_BYTES, ge=1024)
    eager_state_size_limit_bytes: int = Field(DEFAULT_MESSAGE_SIZE_LIMIT_BYTES, ge=0)
    max_protocol_version: int = Field(6, ge=5, le=6)
    retry_policy: RetryPolicySection = RetryPolicySection()
    # Request identity (restate-server's option of the same name): an Ed25519 private key in PKCS#8 PEM. When set,
    # every request to a deployment is signed (x-restate-signature-scheme: v1 + x-restate-jwt-v1), and the public
    # key is logged at start-up as ``publickeyv1_...`` for the SDKs' identity_keys. See engine/invoker/identity.py.
    request_identity_private_key_pem_file: Path | None = None
    # Attempts (and the apps mounted with --app, with the user's handlers) run in this many child processes, each
    # on a core of its own, instead of in the engine process (0). See engine/invoker/child.py.
    processes: int = Field(0, ge=0, le=64)

    _durations = field_validator("inactivity_timeout", "abort_timeout", "connect_timeout", mode="before")(
        parse_duration
    )


class TimersSection(_Section):
    pass


class IngressHttpSection(_Section):
    address: str = DEFAULT_INGRESS_ADDRESS
    request_size_limit_bytes: int = Field(DEFAULT_REQUEST_SIZE_LIMIT_BYTES, ge=1)
    concurrent_requests_limit: int = Field(10000, ge=1)


class AdminSection(_Section):
    address: str = DEFAULT_ADMIN_ADDRESS
    # Bearer-token auth: when set, every admin route but /health needs ``Authorization: Bearer <token>`` (401
    # otherwise). Give the token itself (e.g. CAPSTAN__ADMIN__AUTH_TOKEN) or a file holding it (read once at
    # start-up, surrounding whitespace stripped). Never printed: SecretStr shows '**********'.
    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None
    # POST /query: each query copies the tables it names from a snapshot into an in-memory SQLite database.
    query_snapshot_rows_limit: int = Field(200_000, ge=1)  # rows copied per query (413 beyond)
    query_snapshot_bytes_limit: int = Field(256 * MiB, ge=1024)  # bytes of values copied per query (413 beyond)
    query_result_rows_limit: int = Field(10_000, ge=1)  # rows answered (413 beyond: add a LIMIT)
    query_timeout: timedelta = timedelta(seconds=10)  # SQL execution time (400 beyond)
    query_concurrency_limit: int = Field(2, ge=1)  # queries at once (429 + Retry-After beyond)

    _durations = field_validator("query_timeout", mode="before")(parse_duration)

    @model_validator(mode="before")
    @classmethod
    def _read_token_file(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not data.get("auth_token_file"):
            return data
        if data.get("auth_token"):
            raise ValueError("set admin.auth_token or admin.auth_token_file, not both")
        path = Path(data["auth_token_file"])
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read admin.auth_token_file {path}: {exc.strerror or exc}") from None
        return {**data, "auth_token": token}

    @field_validator("auth_token")
    @classmethod
    def _token_chars(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not (
            value.get_secret_value() and all(0x21 <= ord(c) <= 0x7E for c in value.get_secret_value())
        ):
            raise ValueError("the admin auth token must be non-empty visible ASCII (no spaces)")
        return value


class IngressKafkaSection(_Section):
    # How long a partition stays paused before the consumer checks again whether the engine has room.
    backpressure_check_interval: timedelta = timedelta(milliseconds=50)
    # Records fetched per poll (per consumer); bounded so one poll's invocations fit the log queue.
    max_poll_records: int = Field(500, ge=1)
    # Polled batches whose invocations are proposed but not yet durable (and so not committed) per consumer: the
    # consumer fetches the next batch while the log makes the previous ones durable. 16 keeps the Kafka worker
    # process busy across its round trips to the engine (4 took ~1.5x as long to make 20,000 records durable).
    inflight_batches: int = Field(16, ge=1)
    # A subscription's consumer that crashes is restarted with exponential back-off up to this.
    restart_max_backoff: timedelta = timedelta(seconds=10)
    # Run the consumers in a child process (fetching, decoding and building invoke records on another core; the
    # engine appends and applies them); false runs them in the engine process.
    worker_process: bool = True

    _durations = field_validator("backpressure_check_interval", "restart_max_backoff", mode="before")(parse_duration)


class InvocationSection(_Section):
    default_idempotency_retention: timedelta = timedelta(hours=24)
    default_journal_retention: timedelta = timedelta(hours=24)
    default_workflow_completion_retention: timedelta = timedelta(hours=24)
    cleanup_interval: timedelta = timedelta(minutes=1)

    _durations = field_validator(
        "default_idempotency_retention",
        "default_journal_retention",
        "default_workflow_completion_retention",
        "cleanup_interval",
        mode="before",
    )(parse_duration)


class EngineConfig(_Section):
    data_dir: Path = DEFAULT_DATA_DIR
    # One partition per process is fastest on CPython (more only add threads and hops competing for the GIL);
    # more partitions pay off once they are spread over processes. Tests run with 4 to cover cross-partition paths.
    num_partitions: int = Field(1, ge=1, le=1024)
    graceful_shutdown_timeout: timedelta = timedelta(seconds=10)
    # ``module:app`` of an SDK ASGI app to mount in-process (registered at start-up).
    app: str | None = None
    # Components outside engine/ that the server loads by name (the Kafka subscriptions control and data plane).
    extensions: tuple[str, ...] = ("ingress_kafka.extension:KafkaExtension",)
    log: LogSection = LogSection()
    storage: StorageSection = StorageSection()
    invoker: InvokerSection = InvokerSection()
    timers: TimersSection = TimersSection()
    ingress_http: IngressHttpSection = IngressHttpSection()
    ingress_kafka: IngressKafkaSection = IngressKafkaSection()
    admin: AdminSection = AdminSection()
    invocation: InvocationSection = InvocationSection()

    _durations = field_validator("graceful_shutdown_timeout", mode="before")(parse_duration)


ENV_PREFIX = "CAPSTAN__"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_tree(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path:
            node[path[-1]] = value
    return tree


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EngineConfig:
    """Build the frozen config from a TOML file, ``CAPSTAN__*`` variables and explicit overrides."""
    import os

    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_tree(os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    # TOML uses dashes like restate.toml; the model uses underscores.
    data = _normalize_keys(data)
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        # Without the input values: a misplaced secret (admin.auth_token) must not end up in a log or a terminal.
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def _normalize_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).replace("-", "_"): _normalize_keys(v) for k, v in data.items()}
    return data


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"bad listen address {address!r}; expected HOST:PORT")
    return host.strip("[]"), int(port)

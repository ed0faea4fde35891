"""The Kafka broker for tests: a real single-node Apache Kafka (KRaft) from Maven Central jars, or an external one.

The implementation is ``scripts/kafka_broker.py`` (also a command line for developers); this module loads it and
re-exports its API::

    lib = ensure_jars()                       # fetch the jars once (mvn); FetchError carries mvn's output
    broker = KafkaBroker(tmp_dir)             # 127.0.0.1, free ports, data in tmp_dir/data
    broker.start()                            # format on first start; returns when a metadata request sees 1 broker
    broker.bootstrap_servers                  # "127.0.0.1:<port>"
    broker.restart()                          # SIGTERM, then start again: same ports, same data
    broker.restart(hard=True)                 # the same after SIGKILL
    broker.kill(); broker.stop(); broker.pid; broker.logs()

All of these block (the JVM takes seconds): from async tests call them as ``await asyncio.to_thread(broker.restart)``
so the event loop (and an in-process engine on it) keeps running while the broker is down.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka_broker.py"
_MODULE_NAME = "capstan_kafka_broker"


def _load_script():  # type: ignore[no-untyped-def]
    module = sys.modules.get(_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module  # before exec: the module's classes refer to it by name
        spec.loader.exec_module(module)
    return module


_impl = _load_script()

KafkaBroker = _impl.KafkaBroker
FetchError = _impl.FetchError
ToolMissingError = _impl.ToolMissingError
BrokerStartError = _impl.BrokerStartError
count_brokers = _impl.count_brokers
java_executable = _impl.java_executable
kafka_version = _impl.kafka_version

EXTERNAL_ENV = "KAFKA_BOOTSTRAP_SERVERS"


def ensure_jars() -> Path:
    """The directory with the broker jars, fetched with mvn on first use (idempotent; raises ``FetchError``)."""
    return Path(_impl.fetch_jars())


def external_bootstrap() -> str | None:
    """``$KAFKA_BOOTSTRAP_SERVERS`` when set: the tests then use that broker and start none."""
    value = os.environ.get(EXTERNAL_ENV, "").strip()
    return value or None

"""Kafka ingest benchmark: records/s from a topic to durable invocations and to completed handler invocations,
and produce-to-handler latency (p50/p99). Prints JSON.

    .venv/bin/python benchmarks/kafka_ingest.py --records 20000 --partitions 4 --keys 200

Starts its own broker (Maven-jar Apache Kafka, as the tests) unless KAFKA_BOOTSTRAP_SERVERS is set, and an
in-process engine with the benchmark's SDK app mounted (full duplex). The side-by-side run against restate-server
belongs to benchmarks/README (issue 5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.config import load_config
from engine.server import Engine
from ingress_kafka.testing import _repo_broker


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    work = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    if not bootstrap:
        impl = _repo_broker()
        impl.fetch_jars()
        broker = impl.KafkaBroker(work / "kafka")
        await asyncio.to_thread(broker.start)
        bootstrap = broker.bootstrap_servers
    try:
        topic = f"bench-{int(time.time())}"
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])
        await admin.close()
        config = load_config(
            environ={},
            overrides={
                "data_dir": str(work / "data"),
                "app": "benchmarks.kafka_app:app",
                "ingress_http": {"address": "127.0.0.1:0"},
                "admin": {"address": "127.0.0.1:0"},
            },
        )
        engine = await Engine.open(config)
        try:
            async with aiohttp.ClientSession() as http:
                await _post(
                    http,
                    engine.admin_url + "/kafka-clusters",
                    {"name": "b", "properties": {"bootstrap.servers": bootstrap}},
                )
                sub = await _post(
                    http,
                    engine.admin_url + "/subscriptions",
                    {
                        "source": f"kafka://b/{topic}",
                        "sink": "service://BenchSink/take",
                        "options": {"auto.offset.reset": "earliest"},
                    },
                )
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
                await producer.start()
                t0 = time.perf_counter()
                futures = []
                for i in range(args.records):
                    event = {"ts": time.time() * 1000, "i": i}
                    futures.append(
                        await producer.send(topic, key=f"k{i % args.keys}".encode(), value=json.dumps(event).encode())
                    )
                await asyncio.gather(*futures)
                produced_s = time.perf_counter() - t0
                await producer.stop()
                # durable: committed offsets (committed only after the invoke records are durable and applied)
                while True:
                    async with http.get(f"{engine.admin_url}/subscriptions/{sub['id']}") as resp:
                        status = (await resp.json())["status"] or {}
                    committed = sum(p.get("committed") or 0 for p in status.get("partitions", []))
                    if committed >= args.records:
                        break
                    await asyncio.sleep(0.05)
                durable_s = time.perf_counter() - t0
                while await engine.active_invocations() > 0:
                    await asyncio.sleep(0.05)
                completed_s = time.perf_counter() - t0
                lat: list[float] = []
                for k in range(args.keys):
                    async with http.post(f"{engine.ingress_url}/BenchSink/k{k}/latencies") as resp:
                        lat.extend(await resp.json())
        finally:
            await engine.aclose()
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.stop)
    lat.sort()
    return {
        "scenario": "kafka_ingest",
        "engine": "capstan",
        "records": args.records,
        "partitions": args.partitions,
        "keys": args.keys,
        "produce_s": round(produced_s, 3),
        "records_per_s_durable": round(args.records / durable_s, 1),
        "records_per_s_completed": round(args.records / completed_s, 1),
        "produce_to_handler_ms": {
            "p50": round(statistics.median(lat), 1) if lat else None,
            "p99": round(lat[int(len(lat) * 0.99) - 1], 1) if lat else None,
            "n": len(lat),
        },
    }


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with http.post(url, json=body) as resp:
        text = await resp.text()
        if resp.status >= 300:
            raise SystemExit(f"{url}: {resp.status} {text}")
        return json.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--keys", type=int, default=200)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()

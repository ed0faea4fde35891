"""The README's example of the `ingress_kafka.testing` pytest plugin: an engine on a temp dir plus a broker,
recorded events produced to a topic, wait until idle, assert state and outputs."""

from __future__ import annotations

from pathlib import Path

from ingress_kafka.testing import CapstanFactory

RECORDING = Path(__file__).parent / "recordings" / "counter_events.jsonl"


async def test_counter_from_recorded_events(capstan: CapstanFactory) -> None:
    async with capstan.engine(app="tests.services.kafka_app:app") as h:
        topic = await h.create_topic(partitions=2)
        await h.subscribe(topic, "KafkaCounter/record", **{"auto.offset.reset": "earliest"})
        await h.produce_recorded(topic, RECORDING)
        await h.wait_idle()
        assert await h.state("KafkaCounter", "alice") == {"count": 3, "seqs": [0, 1, 2]}
        assert await h.state("KafkaCounter", "bob") == {"count": 2, "seqs": [0, 1]}
        assert await h.call("/KafkaCounter/carol/state") == {"count": 1, "seqs": [0]}
        # more events later: wait_idle waits for exactly these to be processed
        await h.produce(topic, [{"key": "carol", "value": 1}])
        await h.wait_idle()
        assert (await h.state("KafkaCounter", "carol"))["seqs"] == [0, 1]

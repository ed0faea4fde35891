"""Each partition keeps its own last-seen sequence per producer: one producer's records (e.g. the offsets of a
Kafka partition, or one partition's outbox) are split over several engine partitions, each seeing a subsequence."""

from __future__ import annotations

from pathlib import Path

from engine.config import load_config
from engine.ids import partition_for, partition_key_for_key, random_invocation_id
from engine.partition.processor import PartitionProcessor
from engine.partition.types import Dedup, Invoke, RetentionPolicy, ServiceType, Target
from engine.storage import keys
from engine.storage.store import Store


def _invoke(key: str, seq: int) -> Invoke:
    return Invoke(
        invocation_id=random_invocation_id(partition_key_for_key(key)).to_bytes(),
        target=Target(service="Obj", handler="h", key=key, service_ty=ServiceType.VIRTUAL_OBJECT),
        argument=b"",
        retention=RetentionPolicy(completion_ms=0, journal_ms=1000),
        dedup=Dedup(producer="p", seq=seq),
    )


def test_dedup_is_per_partition(tmp_path: Path) -> None:
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path), "num_partitions": 4})
    store = Store(tmp_path / "db")
    try:
        procs = [PartitionProcessor(p, store, config) for p in range(4)]
        keys_by_partition: dict[int, str] = {}
        i = 0
        while len(keys_by_partition) < 2:
            key = f"k{i}"
            keys_by_partition.setdefault(partition_for(partition_key_for_key(key), 4), key)
            i += 1
        (pa, ka), (pb, kb) = sorted(keys_by_partition.items())
        lsn = {pa: 0, pb: 0}

        def apply(p: int, record: Invoke) -> None:
            lsn[p] += 1
            procs[p].apply_batch([(lsn[p], record)])

        first, second, again = _invoke(ka, 5), _invoke(kb, 3), _invoke(ka, 5)
        apply(pa, first)  # offset 5 -> partition A
        apply(pb, second)  # offset 3 -> partition B: a lower sequence, but B has not seen this producer
        apply(pa, again)  # a redelivery of offset 5 to A: dropped
        assert store.get(keys.status(first.invocation_id)) is not None
        assert store.get(keys.status(second.invocation_id)) is not None
        assert store.get(keys.status(again.invocation_id)) is None
    finally:
        store.close()

"""Hot-path instruments: a lock-free histogram for latencies (counters are plain ``int`` attributes).

Components own their instruments and expose them through ``statistics()`` snapshots; ``engine.admin.metrics``
turns the snapshots into Prometheus families only when ``GET /metrics`` is scraped. So the cost on a hot path is
one ``bisect`` and two additions per observation: no lock, no label lookup, no allocation.

Standard library only (imported by the log, the invoker and the partitions; ``prometheus_client`` is imported by
the admin app alone).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["LATENCY_BUCKETS", "Histogram", "HistogramSnapshot", "MetricFamily"]

# Upper bounds in seconds, from 100 µs (an fdatasync on a fast disk) to a minute (a slow handler attempt).
LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramSnapshot:
    """A histogram's state at one moment.

    Attributes:
        bounds: The buckets' upper bounds, ascending (the ``+Inf`` bucket is implicit).
        counts: Observations per bucket, NOT cumulative; one more than ``bounds`` (the last is ``+Inf``).
        sum: The sum of all observed values.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


class Histogram:
    """Counts observations into fixed buckets.

    Single writer: observe from one thread at a time (the event loop, or a component's own worker thread). A
    snapshot taken from another thread may miss an observation in flight, which a scrape tolerates; there is no
    lock so that the writer never waits.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' "le" (less than or equal) bucket.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(bounds=self._bounds, counts=tuple(self._counts), sum=self._sum)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricFamily:
    """A counter or gauge that an extension adds to ``GET /metrics`` (see ``Extension.metric_families``).

    Attributes:
        name: The metric name, e.g. ``capstan_kafka_consumer_lag``; a counter's name without ``_total`` (the
            exposition adds it).
        kind: ``"counter"`` or ``"gauge"``.
        help: One line for ``# HELP``.
        labels: Label names.
        samples: ``(label values, value)`` pairs, label values in ``labels`` order.
    """

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()

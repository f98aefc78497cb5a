"""Prometheus metrics of the sync engine (served at /metrics).

Counters and histograms are per process; the queue-depth gauge is read from the database at
scrape time so every process reports the same truth.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)

SYNC_LAG = Histogram(
    "sync_lag_seconds", "Time from a change committed in Neo4j to its vector being written",
    ["priority"], buckets=LAG_BUCKETS,
)
SYNC_ERRORS = Counter("sync_errors_total", "Failed sync attempts", ["kind"])
EVENTS_APPLIED = Counter("sync_events_applied_total", "Sync events finished by a worker", ["outcome"])
EMBEDDED_CHUNKS = Counter("sync_embedded_chunks_total", "Texts embedded by the model")
CONSISTENCY_VIOLATIONS = Counter(
    "consistency_violations_total", "Drift found by reconciliation", ["kind"],
)
SAGAS = Counter("sync_sagas_total", "Dual-write sagas by outcome", ["outcome"])


class QueueDepthCollector(Collector):
    def collect(self):
        from sync.queue import depth_by_priority

        gauge = GaugeMetricFamily("sync_queue_depth", "Queued and in-flight sync events",
                                  labels=["priority"])
        try:
            depth = depth_by_priority()
        except Exception:  # noqa: BLE001 — a scrape must not fail because the database is busy
            log.exception("could not read the queue depth for /metrics")
            SYNC_ERRORS.labels("metrics").inc()
            return
        for priority, count in depth.items():
            gauge.add_metric([priority], count)
        yield gauge


_registered = False


def register_collectors() -> None:
    global _registered
    if not _registered:
        REGISTRY.register(QueueDepthCollector())
        _registered = True

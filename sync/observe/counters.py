"""The engine's counters and lag histogram, counted where the work happens (the one part of
observation the engine imports; everything here is a leaf: settings, prometheus_client, and the
enums of sync.models that name some of the label values).

Counts are kept in prometheus-client's multiprocess mode: every process writes its values to
memory-mapped files in PROMETHEUS_MULTIPROC_DIR (set by settings before this module is imported)
and a scrape (sync.observe.metrics) sums the files of all processes, the dead ones' included —
counts of work done cannot be re-read from the database (errors leave no row) and a histogram
keeps its buckets.

Every label value a counter is known to take is listed here once (ERROR_KINDS, APPLY_OUTCOMES,
DRIFT_KINDS, SAGA_OUTCOMES, PRIORITIES: the call sites name these, and tests/test_faults_metrics.py
holds them to it) and set up at zero when this module is imported, so each family is exposed with
all its series from the first scrape: a series that appeared only with the first error would leave
dashboards with "no data" and make `absent()` and `increase()` rules misjudge it.

The directory must be emptied when the application starts (bin/run does), as the library
requires: a stale file of a previous run would add its counts to the new run's. Each process
leaves its files behind when it exits (django-q2 recycles workers), so the observer folds the
files of exited processes into one archive per type every five minutes (`fold_dead_processes`).
All processes writing here must share one PID namespace (one machine, or containers with a
shared `pid:`); with workers on other machines, scrape each machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from sync.models import Priority, SagaLog

if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and values.ValueClass.__name__ == "MutexValue":
    raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: its counters "
                       "would stay in this process; import Django settings first")

LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)

SYNC_LAG = Histogram(
    "sync_lag_seconds", "Time from a change committed in Neo4j to its vector being written (streaming changes)",
    ["priority"], buckets=LAG_BUCKETS,
)
# A backfill's entities (sync.backfill) are timed apart: a bulk load's wait is not a change's lag.
BACKFILL_LAG = Histogram(
    "sync_backfill_lag_seconds", "Time from a backfilled entity's graph version to its vector being written",
    buckets=LAG_BUCKETS,
)
SYNC_ERRORS = Counter("sync_errors_total", "Failed sync attempts", ["kind"])
EVENTS_APPLIED = Counter("sync_events_applied_total", "Sync events finished by a worker", ["outcome"])
EMBEDDED_CHUNKS = Counter("sync_embedded_chunks_total", "Texts embedded by the model")
CONSISTENCY_VIOLATIONS = Counter(
    "consistency_violations_total", "Drift found by reconciliation", ["kind"],
)
SAGAS = Counter("sync_sagas_total", "Dual-write sagas by outcome", ["outcome"])

PRIORITIES = tuple(Priority.labels)  # "high", "medium", "low"
ERROR_KINDS = (
    "store",  # a batch failed as a whole: a store unreachable, rate limited, refusing (sync.apply)
    "bug",  # a batch failed on something else: the model, a bug (sync.apply)
    "retryable", "permanent",  # an entity's own write failed, to be retried or dead-lettered (sync.apply)
    "dual_write",  # the vector write of a dual-write saga failed (sync.writes)
    "two_phase",  # the vector write after a two-phase commit failed; queued for retry (sync.writes)
    "capture",  # a change-capture poll failed (sync.capture)
    "database",  # the database failed a batch or a worker's claim; the worker went on (sync.apply, sync.worker)
    "observe",  # an observer check failed (sync.observe.observer)
    "metrics",  # a /metrics scrape could not read the database (sync.observe.metrics)
    "kafka",  # a Kafka consumer's batch or offset commit failed; redelivered (sync.transport.consumer)
)
APPLY_OUTCOMES = ("upserted", "metadata_only", "unchanged", "deleted", "excluded", "stale", "fenced")
DRIFT_KINDS = ("missing_vector", "orphan_vector", "stale_vector", "vector_ahead", "content_drift", "policy_violation")
SAGA_OUTCOMES = tuple(status for status in SagaLog.Status.values if status != SagaLog.Status.STARTED)

for _counter, _values in ((SYNC_LAG, PRIORITIES), (SYNC_ERRORS, ERROR_KINDS), (EVENTS_APPLIED, APPLY_OUTCOMES),
                          (CONSISTENCY_VIOLATIONS, DRIFT_KINDS), (SAGAS, SAGA_OUTCOMES)):
    for _value in _values:
        _counter.labels(_value)  # at zero, in this process's file: the series exists from now on


def multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(settings.PROMETHEUS_MULTIPROC_DIR))
    return registry


@contextlib.contextmanager
def files_locked(*, shared: bool):
    """Scrapes (shared) never read the directory while dead processes' files are folded (exclusive)."""
    with open(settings.PROMETHEUS_MULTIPROC_DIR / ".fold.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fold_dead_processes() -> int:
    """Fold the counter and histogram files of processes that have exited into one archive file
    per type, so the directory (and a scrape's work) stays bounded however often django-q2
    recycles its workers. Values are per-process increments, so folding is a sum; the library's
    own file format (MmapedDict) is used to write the archive. Returns the files folded."""
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    folded = 0
    with files_locked(shared=False):
        dead: dict[str, list[str]] = {}
        for path in directory.glob("*.db"):
            kind, _, pid = path.stem.partition("_")
            if kind in ("counter", "histogram") and pid.isdigit() and not _alive(int(pid)):
                dead.setdefault(kind, []).append(str(path))
        for kind, paths in dead.items():
            totals: dict[str, float] = {}
            for path in paths:
                for key, value, _, _ in MmapedDict.read_all_values_from_file(path):
                    totals[key] = totals.get(key, 0.0) + value
            archive = MmapedDict(str(directory / f"{kind}_archive.db"))
            try:
                for key, value in totals.items():
                    before, _ = archive.read_value(key)
                    archive.write_value(key, before + value, time.time())
            finally:
                archive.close()
            for path in paths:
                os.unlink(path)
            folded += len(paths)
    return folded


def counter_totals() -> dict:
    """The counters samples take differences of, summed over every process: errors by kind,
    embedded chunks, events applied by outcome."""
    totals = {"errors": {}, "embedded": 0.0, "applied": {}}
    with files_locked(shared=True):
        families = list(multiprocess_registry().collect())
    for family in families:
        for sample in family.samples:
            if sample.name == "sync_errors_total":
                totals["errors"][sample.labels["kind"]] = sample.value
            elif sample.name == "sync_embedded_chunks_total":
                totals["embedded"] = sample.value
            elif sample.name == "sync_events_applied_total":
                totals["applied"][sample.labels["outcome"]] = sample.value
    return totals

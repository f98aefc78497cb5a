"""The worker loop: claim a batch, apply it, repeat.

Batches flush at SYNC_BATCH_SIZE events or once the oldest ready event has waited
SYNC_FLUSH_INTERVAL seconds, whichever comes first — except HIGH priority work (CISA KEV), which
is applied as soon as it is seen, since it must reach search within seconds.

Embedding costs about 50 ms an entity on a CPU; everything else costs about as much per store
call as per entity. So a batch aims at about SYNC_BATCH_SIZE entities to embed: while the work
turns out cheap (metadata-only updates, deletes) the next claim grows fourfold, up to
SYNC_MAX_BATCH_SIZE, and it shrinks back as soon as embedding returns. Should a large claim meet
more embedding than that, the surplus events go back to the queue untouched (`embed_limit`).

A database failure (SQLite locked past its busy timeout, PostgreSQL restarting) does not end the
loop: it is logged and counted (`sync_errors_total{kind="database"}`), and the loop tries again
with a growing pause, on a new connection if the old one broke.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Min
from django.utils import timezone

from sync import queue
from sync.apply import ApplyCounts, apply_events
from sync.models import Priority, SyncEvent
from sync.observe.counters import SYNC_ERRORS

log = logging.getLogger(__name__)


def lower_cpu_priority() -> int:
    """Lower this process's CPU priority to SYNC_WORKER_NICE (never raise it); returns the
    niceness it now has. The embedding workers call it at start, and their children inherit it:
    on a machine shared with the web server, a page or a search then waits for no embedding batch,
    while the workers still take every idle cycle."""
    current = os.nice(0)
    wanted = settings.SYNC_WORKER_NICE
    if wanted > current:
        try:
            current = os.nice(wanted - current)
        except OSError as exc:  # a sandbox may refuse; the workers run as they are
            log.warning("could not lower the workers' CPU priority to nice %d: %s", wanted, exc)
    return current


@dataclass
class ReadyWork:
    count: int
    has_high: bool
    oldest_age: float


def ready_work(limit: int) -> ReadyWork:
    now = timezone.now()
    ready = SyncEvent.objects.filter(queue._claimable(now))
    count = ready[:limit].count()
    if not count:
        return ReadyWork(0, False, 0.0)
    has_high = ready.filter(priority=Priority.HIGH, backfill__isnull=True).exists()  # a backfill's HIGH waits its turn
    oldest = ready.aggregate(oldest=Min("created_at"))["oldest"]
    return ReadyWork(count, has_high, (now - oldest).total_seconds() if oldest else 0.0)


def should_flush(work: ReadyWork, batch_size: int, flush_interval: float) -> bool:
    return bool(work.count) and (
        work.count >= batch_size or work.has_high or work.oldest_age >= flush_interval)


def high_only(work: ReadyWork, batch_size: int, flush_interval: float) -> bool:
    """Flushing only because HIGH work is ready: take just that, so a KEV entry does not wait
    while a half-full batch of lower-priority work is embedded with it."""
    return work.has_high and work.count < batch_size and work.oldest_age < flush_interval


GROWTH = 4  # a batch that embedded little makes the next one up to this many times larger
DATABASE_PAUSE_MAX = 5.0  # seconds between tries while the database fails


def next_batch_size(current: int, counts: ApplyCounts, claimed: int, base: int, largest: int) -> int:
    """The next claim's size: about `base` entities to embed, growing at most GROWTH-fold a batch."""
    if counts.retried or counts.dead:
        return base  # a store in trouble: nothing suggests the work is cheap
    embedded = counts.upserted + counts.deferred
    if not embedded:
        return min(largest, current * GROWTH) if claimed >= current else current
    return max(base, min(largest, current * GROWTH, base * claimed // embedded))


def apply_urgent(name: str, *, max_seconds: float = 5.0) -> ApplyCounts:
    """Apply the ready HIGH priority events now, in this process.

    The change poller calls this after every poll: a CISA KEV change then reaches the vector store
    about a second after its commit, whatever the drain workers are busy embedding. Bounded in
    time so that polling goes on; what is left is claimed by the drain workers (HIGH first).
    """
    size = settings.SYNC_BATCH_SIZE
    total = ApplyCounts()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        batch = queue.claim_batch(name, size, max_priority=Priority.HIGH)
        if not batch:
            break
        total.add(apply_events(batch, embed_limit=size))
        if len(batch) < size:
            break
    return total


def drain(*, max_seconds: float | None = None, idle_exit: float | None = 0.0, flush: bool = False,
          batch_size: int | None = None, max_batch_size: int | None = None,
          flush_interval: float | None = None, poll: float = 0.2,
          worker: str | None = None, stop=lambda: False) -> ApplyCounts:
    """Claim and apply batches.

    `flush=True` waits for a full batch or the flush interval (HIGH never waits); `flush=False`
    applies whatever is ready. Returns after `max_seconds`, once nothing has been ready for
    `idle_exit` seconds (None: never), or when `stop()` says so.
    """
    size = batch_size or settings.SYNC_BATCH_SIZE
    largest = max(size, max_batch_size or settings.SYNC_MAX_BATCH_SIZE)
    claim = size
    interval = settings.SYNC_FLUSH_INTERVAL if flush_interval is None else flush_interval
    name = worker or queue.worker_name()
    total = ApplyCounts()
    deadline = time.monotonic() + max_seconds if max_seconds else None
    idle_since = time.monotonic()
    failures = 0  # database failures in a row
    while not stop() and (deadline is None or time.monotonic() < deadline):
        try:
            work = ready_work(size)
            if work.count and (not flush or should_flush(work, size, interval)):
                urgent = flush and high_only(work, size, interval)
                if urgent:
                    batch = queue.claim_batch(name, size, max_priority=Priority.HIGH)
                else:
                    batch = queue.claim_batch(name, claim)
                if batch:
                    counts = apply_events(batch, embed_limit=size)
                    total.add(counts)
                    if not urgent:
                        claim = next_batch_size(claim, counts, len(batch), size, largest)
                    log.info("applied %d events in %.2fs: %s", len(batch), counts.seconds, counts)
                    idle_since = time.monotonic()
                    failures = 0
                    close_old_connections()
                    continue
        except queue.DATABASE_UNAVAILABLE as exc:
            # SQLite locked past its busy timeout, PostgreSQL restarting: nothing was claimed, or
            # the batch went back to the queue (sync.apply). The worker goes on, on a new
            # connection if this one broke, rather than ending with its queue half applied.
            failures += 1
            pause = min(poll * 2 ** failures, DATABASE_PAUSE_MAX)
            SYNC_ERRORS.labels("database").inc()
            log.warning("drain: the database failed (%s: %s); trying again in %.1fs", type(exc).__name__,
                        exc, pause)
            queue.reconnect_if_broken()
            time.sleep(pause)
            continue
        failures = 0
        if not work.count and idle_exit is not None and time.monotonic() - idle_since >= idle_exit:
            break
        time.sleep(poll)
    return total

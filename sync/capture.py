"""Change capture: find writes in Neo4j (ours and other tools') by polling on the change cursor.

Each poll re-reads an overlap window (CAPTURE_OVERLAP_SECONDS) before the cursor, because a
transaction stamps `updated_at` when it runs but becomes visible only when it commits: a slow
transaction can appear behind a cursor that has already moved past its timestamp. Re-reading
is cheap — enqueue coalesces, and changes already synced at that version are skipped — and
bounded: the window never reaches further back than the overlap before the last complete poll
began (`read_through`). That is Neo4j's clock, which stamps `updated_at` on our writes and, through
the APOC trigger, on other tools' writes; a tool that stamps `updated_at` itself (no APOC) with a
clock behind Neo4j's by more than the overlap can be missed here, and is found by reconciliation.

Only one poller reads at a time, whatever the number of worker processes: the poller holds a
lease on the cursor row, taken and renewed with conditional updates. The cursor advances only
after the events of a page are stored.

Tombstones stay in the graph after capture reads them: a node re-created under the same key
continues its version from the tombstone, so versions never go backwards across a delete (a
re-creation whose version restarted at 1 would look older than the pending delete and be dropped
as stale, leaving the deleted text searchable). `purge_tombstones` removes those whose delete is
applied and older than TOMBSTONE_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F, Q
from django.utils import timezone

from sync import ids, queue
from sync.models import ChangeCursor, Priority, SyncEvent, SyncRecord, for_entities
from sync.observe.counters import SYNC_ERRORS
from sync.policy import synced_labels
from sync.stores import graph_store
from sync.stores.base import Change, StoreError

log = logging.getLogger(__name__)

CURSOR = "neo4j"


@dataclass
class CaptureResult:
    polled: bool = False  # False when another poller holds the lease
    changes: int = 0
    enqueued: int = 0
    skipped: int = 0  # already synced at that version (re-read in the overlap window)
    pages: int = 0
    urgent: int = 0  # of those enqueued, HIGH priority work (`run` then polls faster for a while)


def take_lease(owner: str, seconds: float) -> bool:
    ChangeCursor.objects.get_or_create(name=CURSOR)
    now = timezone.now()
    taken = ChangeCursor.objects.filter(name=CURSOR).filter(
        Q(lease_owner="") | Q(lease_owner=owner) | Q(lease_expires_at__lt=now) | Q(lease_expires_at=None)
    ).update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=seconds))
    return taken == 1


def release_lease(owner: str) -> None:
    ChangeCursor.objects.filter(name=CURSOR, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


def poll_once(owner: str, *, page_size: int | None = None, overlap: float | None = None,
              max_pages: int = 1000, lease_seconds: float = 60,
              between_pages=lambda after: None) -> CaptureResult:
    """Read every change since the cursor (minus the overlap) and enqueue it.

    `between_pages(after)` runs after each full page while more are to be read, with the position
    read up to (`run` looks ahead for HIGH priority changes there: see `look_ahead`)."""
    result = CaptureResult()
    if not take_lease(owner, lease_seconds):
        return result
    result.polled = True
    renewed = time.monotonic()  # when the lease was last renewed
    size = page_size or settings.CAPTURE_PAGE_SIZE
    window = timedelta(seconds=settings.CAPTURE_OVERLAP_SECONDS if overlap is None else overlap)
    graph = graph_store()
    labels = synced_labels()
    cursor = ChangeCursor.objects.get(name=CURSOR)
    since = _since(cursor, window)
    # Published changes are remembered for as long as the whole window reaches (not a fast poll's).
    _forget_published(_since(cursor, timedelta(seconds=settings.CAPTURE_OVERLAP_SECONDS)))
    after = None if since is None else (since, "")
    complete = False
    try:
        started = graph.server_time()
        for _ in range(max_pages):
            changes = graph.changes_since(labels, after, size, entities=False)
            if not changes:
                complete = True
                break
            result.pages += 1
            result.changes += len(changes)
            enqueued, skipped, urgent = _enqueue(changes)
            result.enqueued += enqueued
            result.skipped += skipped
            result.urgent += urgent
            last = changes[-1]
            after = (last.updated_at, f"{last.label}:{last.uid}")
            # A page re-read in the overlap window moves nothing: the cursor row is written only
            # when a page moves it, or to renew a lease half spent (a write waits for SQLite's lock
            # while a worker commits a batch, and re-reading a bulk write took four such waits).
            moves = cursor.updated_at is None or last.updated_at > cursor.updated_at
            if moves or time.monotonic() - renewed > lease_seconds / 2:
                with transaction.atomic():
                    moved = ChangeCursor.objects.filter(name=CURSOR, lease_owner=owner).update(
                        updated_at=_later(cursor.updated_at, last.updated_at),
                        polled_at=timezone.now(), lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds),
                        last_error="",
                    )
                if not moved:
                    log.warning("change capture lost its lease mid-poll; stopping")
                    break
                renewed = time.monotonic()
            cursor.updated_at = _later(cursor.updated_at, last.updated_at)
            if len(changes) < size:
                complete = True
                break
            between_pages(after)
        done = {"read_through": started, "last_error": ""} if complete else {}
        ChangeCursor.objects.filter(name=CURSOR, lease_owner=owner).update(
            polled_at=timezone.now(), changes_seen=F("changes_seen") + result.enqueued, **done)
    except Exception as exc:
        ChangeCursor.objects.filter(name=CURSOR).update(last_error=f"{type(exc).__name__}: {exc}"[:5000])
        raise
    return result


def look_ahead(after: tuple, *, page_size: int | None = None) -> CaptureResult:
    """Enqueue the HIGH priority changes stamped after `after`, ahead of the poll in progress.

    A poll reads changes in stamp order, so a KEV changed just after a bulk write (a feed import,
    a backfill's 2,000 reports) waited until the poll had read and queued the whole bulk: seconds
    on a busy machine, seen by bench/lag.py as HIGH lag of 3-11 s right after its backlog was
    written. Reading the HIGH labels alone from where the poll has got to takes one small indexed
    query; the poll re-reads these changes when it gets there and skips them (pending or synced).
    The cursor does not move here."""
    result = CaptureResult(polled=True)
    labels = [label for label in synced_labels() if queue.priority_of(label) == Priority.HIGH]
    if not labels:
        return result
    changes = graph_store().changes_since(labels, after, page_size or settings.CAPTURE_PAGE_SIZE, entities=False)
    result.changes = len(changes)
    result.enqueued, result.skipped, result.urgent = _enqueue(changes)
    return result


def _later(a, b):
    return b if a is None or b > a else a


def _since(cursor: ChangeCursor, window: timedelta):
    """Where the next poll starts reading (Neo4j's clock; None: from the beginning)."""
    if not cursor.updated_at:
        return None
    since = cursor.updated_at - window
    if cursor.read_through:
        # Every change stamped more than the overlap before the last complete poll began
        # had committed by then, and that poll read them all: no need to read them again
        # (after a bulk import, every poll would otherwise re-read its last ten seconds).
        since = max(since, cursor.read_through - window)
    return since


def unread(changes: list[Change]) -> set[tuple[str, str]]:
    """The keys among these changes (each key's latest, as the graph has it now) that capture is
    still to queue: its next poll reads them (stamped at or after where it starts: after the
    cursor, or in the overlap window it re-reads) and our records do not show them handled at
    their version, nor does a pending event cover them. Such a change is on its way, not drift.

    Empty while capture is not polling (never polled, or not for HEARTBEAT_MAX_AGE: the
    heartbeat alert's limit): nothing is then on its way, and reconciliation is the safety net.
    """
    cursor = ChangeCursor.objects.filter(name=CURSOR).first()
    if cursor is None or cursor.polled_at is None \
            or timezone.now() - cursor.polled_at > timedelta(seconds=settings.HEARTBEAT_MAX_AGE):
        return set()
    since = _since(cursor, timedelta(seconds=settings.CAPTURE_OVERLAP_SECONDS))
    # A node whose updated_at is not a DATETIME is invisible to capture, a key it cannot sync is
    # skipped: neither is ever on its way.
    coming = [c for c in _syncable(changes, quiet=True)
              if c.updated_at is not None and (since is None or c.updated_at >= since)]
    return {(c.label, c.uid) for c in _not_handled(coming)} if coming else set()


def _syncable(changes: list[Change], *, quiet: bool = False) -> list[Change]:
    """The changes whose keys can be synced (capture logs those it skips)."""
    found = []
    for change in changes:
        try:
            ids.check_syncable_key(change.label, change.uid)
        except ValueError as exc:
            if not quiet:
                log.warning("change capture skips %s:%.80s: %s", change.label, change.uid, exc)
            continue
        found.append(change)
    return found


def _not_handled(changes: list[Change]) -> list[Change]:
    """The changes neither synced at their version nor covered by a pending event."""
    known = _sync_state(changes)
    pending = _pending_versions(changes)
    found = []
    for change in changes:
        key = (change.label, change.uid)
        status, version = known.get(key, ("", -1))
        # Versions only grow, across deletes too: a change at or below the version our record
        # handled (re-read in the overlap window) is done.
        settled = (SyncRecord.Status.DELETED,) if change.deleted else SETTLED_LIVE
        done = status in settled and version >= change.version
        # An event created at or after this version reads the graph after this change committed
        # (apply always reads current state), so it covers the change: the overlap window's
        # re-reads must not queue a second apply of an entity that is in flight.
        if not done and pending.get(key, -1) < change.version:
            found.append(change)
    return found


# SYNC_TRANSPORT=kafka: what this process has published, (label, uid) -> (version, change time).
# With the outbox a published change is a queued row until it is applied, and `_not_handled`
# sees it; on Kafka nothing marks it until a consumer claims it, so without this every poll
# published again each change of its overlap window not yet applied (29 events a change, seen by
# bench/transport.py). A new poller (another process) publishes its first window again: harmless,
# the consumer's version guard makes a duplicate a no-op.
_published: dict[tuple[str, str], tuple[int, object]] = {}


def _forget_published(since) -> None:
    """Forget what was published of changes older than where polls now start reading (all of it
    when they start from the beginning: a new cursor, a new graph)."""
    if since is None:
        _published.clear()
        return
    for key in [k for k, (_, at) in _published.items() if at is None or at < since]:
        del _published[key]


def _enqueue(changes: list[Change]) -> tuple[int, int, int]:
    """Enqueue the changes that are neither synced at their version nor already pending; returns
    (enqueued, skipped, of those enqueued the HIGH priority ones)."""
    work = []
    candidates = _not_handled(_syncable(changes))
    if settings.SYNC_TRANSPORT == "kafka":
        candidates = [c for c in candidates if _published.get((c.label, c.uid), (-1, None))[0] < (c.version or 0)]
    for change in candidates:
        work.append(queue.Work(
            label=change.label, uid=change.uid,
            operation=SyncEvent.Operation.DELETE if change.deleted else SyncEvent.Operation.UPSERT,
            version=change.version, priority=queue.priority_of(change.label),
            changed_at=change.updated_at, source="capture",
        ))
    if work:
        queue.enqueue_many(work)  # on Kafka: returns once the broker has acknowledged every event
        if settings.SYNC_TRANSPORT == "kafka":
            _published.update({(c.label, c.uid): (c.version or 0, c.updated_at) for c in candidates})
    return len(work), len(changes) - len(work), sum(w.priority == Priority.HIGH for w in work)


# Record statuses meaning "the vectors are as the graph was at the handled version".
SETTLED_LIVE = (SyncRecord.Status.IN_SYNC, SyncRecord.Status.CONFLICT, SyncRecord.Status.EXCLUDED)


def _keys(changes: list[Change]) -> list[tuple[str, str]]:
    return [(change.label, change.uid) for change in changes]


def _sync_state(changes: list[Change]) -> dict[tuple[str, str], tuple[str, int]]:
    """(status, version handled) per entity from our records, read in one query per label."""
    found: dict[tuple[str, str], tuple[str, int]] = {}
    for records in for_entities(SyncRecord.objects.all(), _keys(changes)):
        rows = records.values_list("label", "uid", "status", "vector_version", "graph_version")
        for label, uid, status, vector_version, graph_version in rows:
            in_sync = status in (SyncRecord.Status.IN_SYNC, SyncRecord.Status.CONFLICT)
            handled = vector_version if in_sync else graph_version
            found[(label, uid)] = (status, handled or 0)
    return found


def _pending_versions(changes: list[Change]) -> dict[tuple[str, str], int]:
    """The newest version a queued or in-flight event already carries, per entity."""
    found: dict[tuple[str, str], int] = {}
    pending = SyncEvent.objects.filter(status__in=[SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT])
    for events in for_entities(pending, _keys(changes)):
        for label, uid, version in events.values_list("label", "uid", "version"):
            found[(label, uid)] = max(found.get((label, uid), -1), version or -1)
    return found


def purge_tombstones(retention: timedelta | None = None, page: int = 1000) -> int:
    """Delete the graph's tombstones older than the retention whose delete our records show as
    applied (status deleted at that version or later). Returns how many went."""
    keep = retention if retention is not None else timedelta(days=settings.TOMBSTONE_RETENTION_DAYS)
    graph = graph_store()
    labels = synced_labels()
    before = graph.server_time() - keep
    purged = 0
    while True:
        old = graph.old_tombstones(labels, before, page)
        if not old:
            return purged
        known = _sync_state(old)
        applied = [c for c in old if known.get((c.label, c.uid), ("", -1))[0] == SyncRecord.Status.DELETED
                   and known[(c.label, c.uid)][1] >= c.version]
        if applied:
            purged += graph.purge_tombstones(applied)
        if len(old) < page or not applied:
            return purged  # the rest wait for their deletes to be applied


FAST_OVERLAP_SECONDS = 1.0  # what the fast polls re-read before the cursor (see `run`)


def _after(after_poll, result: CaptureResult) -> None:
    try:
        after_poll(result)
    except Exception:  # noqa: BLE001 — polling must go on; what failed is logged and counted
        SYNC_ERRORS.labels("capture").inc()
        log.exception("change capture: the work after a poll failed; polling goes on")


def run(owner: str, *, seconds: float, interval: float | None = None,
        after_poll=lambda result: None, stop=lambda: False) -> CaptureResult:
    """Poll every `interval` seconds for `seconds` (or until `stop()`), then hand the lease over.

    While HIGH priority labels change (a poll found HIGH work within the last
    CAPTURE_FAST_SECONDS), polls come every CAPTURE_FAST_INTERVAL instead: the poll interval is
    most of a HIGH change's lag (half of it on average), and HIGH changes tend to come in runs (a
    feed's delta, an analyst's edits). A quiet graph costs one poll per `interval`. Only one poll
    per `interval` re-reads the whole overlap window; the fast ones between re-read the last
    FAST_OVERLAP_SECONDS, enough for a transaction that commits a moment after its stamp, while
    one that takes longer is still found within `interval`.

    A run that does not hold the lease keeps trying at every interval: scheduled runs overlap on
    purpose, so that when one ends the next takes over within an interval. `after_poll(result)`
    runs after each poll this run made (it holds the lease then), and in the middle of a long poll
    once `look_ahead` has queued HIGH work.
    """
    total = CaptureResult()
    pause = settings.CAPTURE_INTERVAL if interval is None else interval
    fast = min(pause, settings.CAPTURE_FAST_INTERVAL)
    fast_until = 0.0  # monotonic time until which polls come every `fast` seconds
    whole_window_at = 0.0  # monotonic time from which a poll re-reads the whole overlap window
    looked_at = time.monotonic()  # when HIGH work was last looked for (a poll, or a look ahead)

    def between_pages(after) -> None:
        """A long poll (a bulk write to read) looks ahead for HIGH work every `fast` seconds and
        hands what it queued to `after_poll` at once, instead of when the whole bulk is queued."""
        nonlocal looked_at, fast_until
        if time.monotonic() - looked_at < fast:
            return
        looked_at = time.monotonic()
        try:
            ahead = look_ahead(after)
        except (StoreError, DatabaseError) as exc:  # the poll goes on; it reads these changes anyway
            SYNC_ERRORS.labels("capture").inc()
            log.warning("change capture could not look ahead for HIGH priority changes: %s", exc)
            return
        total.enqueued += ahead.enqueued
        if ahead.urgent:
            total.urgent += ahead.urgent
            fast_until = time.monotonic() + settings.CAPTURE_FAST_SECONDS
            _after(after_poll, ahead)

    deadline = time.monotonic() + seconds
    try:
        while not stop():
            started = time.monotonic()
            whole = started >= whole_window_at
            try:
                result = poll_once(owner, overlap=None if whole else min(FAST_OVERLAP_SECONDS,
                                                                         settings.CAPTURE_OVERLAP_SECONDS),
                                   between_pages=between_pages)
                looked_at = time.monotonic()
            except (StoreError, DatabaseError) as exc:
                # Neo4j unreachable, SQLite busy, ...: recorded on the cursor when it can be
                # (last_error, shown by sync_status); the next poll retries.
                SYNC_ERRORS.labels("capture").inc()
                log.warning("change capture poll failed, retrying in %.1fs: %s", pause, exc)
                result = CaptureResult()
            if result.polled:
                _after(after_poll, result)
            for name in ("changes", "enqueued", "skipped", "pages", "urgent"):
                setattr(total, name, getattr(total, name) + getattr(result, name))
            total.polled = total.polled or result.polled
            if result.urgent:
                fast_until = time.monotonic() + settings.CAPTURE_FAST_SECONDS
            if whole and result.polled:
                whole_window_at = started + pause
            wait = max(0.0, started + (fast if time.monotonic() < fast_until else pause) - time.monotonic())
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(wait)
    finally:
        release_lease(owner)
    return total

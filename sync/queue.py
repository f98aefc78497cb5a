"""The durable priority queue (outbox) of sync events.

- Enqueue coalesces: one queued event per entity; the newest version, the highest priority and
  the earliest change time win, so a burst of 50 updates to one node costs one embedding.
- Claims take a batch by priority (HIGH first) with a share reserved for the oldest events, so
  LOW still progresses under constant HIGH load. On PostgreSQL rows are locked with
  `FOR UPDATE SKIP LOCKED`; on SQLite the IMMEDIATE write transaction serializes claims. Either
  way the claim is a conditional update whose count is checked.
- A claim is a lease: an in-flight event whose lease expired (its worker crashed) is claimed again.
- Failures back off exponentially with jitter; after SYNC_MAX_ATTEMPTS an event is dead.
- A batch cut short by a timeout is handed back without an attempt counted (the batch may simply
  have been too big), but each of its events counts the interruption: an event interrupted once
  is claimed alone from then on, so that a poison entity (one whose apply never ends in time)
  stalls no other, and after SYNC_MAX_INTERRUPTIONS it is a dead letter saying so instead of
  cycling for ever.
- A backfill's work (sync.backfill) waits behind the streaming changes: claims take streaming
  events first and a backfill's with what is left of the batch (besides the aged share every
  event has), and the HIGH-only claims never take them. A streaming change to an entity whose
  backfill work is still queued takes that event out of the backfill, measured from its own
  change. Lanes count a backfill's events apart from the streaming depth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, Min, OuterRef, Q
from django.dispatch import Signal
from django.utils import timezone

from sync.models import (
    AuditEntry,
    Backfill,
    ChangeCursor,
    Priority,
    SyncEvent,
    SyncRecord,
    WorkerLease,
    for_entities,
    with_ids,
)
from sync.transport import kafka as kafka_transport

log = logging.getLogger(__name__)

Status = SyncEvent.Status
Operation = SyncEvent.Operation
STARVATION_SHARE = 0.25  # of each batch, for the oldest events whatever their priority
# Sent once an enqueue that stored work has committed; the task runner connects "start a drain"
# (sync.tasks.on_work_enqueued), so nothing on the write path imports the task runner.
work_enqueued = Signal()
CLAIMED_FIELDS = ("id", "label", "uid", "operation", "version", "priority", "status", "source", "attempts",
                  "interruptions", "claim_token", "changed_at", "backfill")
# The backfill that work stored in this context belongs to (`backfill_scope`; sync.backfill.tracking).
_backfill_scope: ContextVar[int | None] = ContextVar("backfill_scope", default=None)


def worker_name(pid: int | None = None) -> str:
    """Who holds a claim: this host and process (or process `pid` of this host)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def free_leases_of(worker: str) -> int:
    """Whatever a worker process known to be dead held is free now, not when its leases run out:
    its batch (claimable at once, the attempt it cost still counted: a batch that kills its
    worker every time is buried by `_bury_lost_leases`), its drain slot and the change cursor.
    The cluster's sentinel calls this for a worker it saw killed. Returns the events freed."""
    now = timezone.now()
    freed = 0
    if len(worker) <= 40:  # a claim token names at most 40 characters of its worker
        freed = SyncEvent.objects.filter(status=Status.IN_FLIGHT, claim_token__startswith=f"{worker}:",
                                         lease_expires_at__gt=now).update(lease_expires_at=now)
    WorkerLease.objects.filter(owner=worker).update(owner="", expires_at=None)
    ChangeCursor.objects.filter(lease_owner=worker).update(lease_owner="", lease_expires_at=None)
    return freed


@dataclass(frozen=True)
class Work:
    """A request to bring one entity's vectors in line with the graph."""

    label: str
    uid: str
    operation: str = Operation.UPSERT
    version: int | None = None
    priority: int = Priority.MEDIUM
    changed_at: datetime | None = None
    source: str = "capture"
    backfill: int | None = None  # the bulk load it belongs to (sync.backfill); None: a streaming change
    # The property names the change set or removed, where the producer knows them (a write path);
    # None: not known (a change found by capture). Carried by Kafka's change events (`changed`).
    changed: tuple[str, ...] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.label, self.uid)


@dataclass
class EnqueueResult:
    created: int = 0
    coalesced: int = 0

    @property
    def total(self) -> int:
        return self.created + self.coalesced


def _fold(current: Work, newer: Work) -> Work:
    """Two requests for one entity become one: newest version, highest priority, earliest change.

    A streaming change folded with a backfill's work is a streaming change (the entity leaves the
    backfill), timed from its own change: the bulk load's time is not its lag. Two backfills' work
    stays with the one it was queued for (`current`)."""
    take_newer = (newer.version or 0) >= (current.version or 0)
    if (current.backfill is None) == (newer.backfill is None):
        backfill, times = current.backfill, (current.changed_at, newer.changed_at)
    else:
        backfill, times = None, ((current if current.backfill is None else newer).changed_at,)
    changed = [t for t in times if t is not None]
    return Work(
        label=current.label, uid=current.uid,
        operation=newer.operation if take_newer else current.operation,
        version=max(current.version or 0, newer.version or 0) or None,
        priority=min(current.priority, newer.priority),
        changed_at=min(changed) if changed else None,
        source=newer.source if take_newer else current.source,
        backfill=backfill,
        changed=None if current.changed is None or newer.changed is None
        else tuple(sorted({*current.changed, *newer.changed})),
    )


def _fold_noting(current: Work, newer: Work, left: dict[tuple[str, str, int], str]) -> Work:
    """`_fold`, noting in `left` the backfill work the fold took out of its backfill (its source)."""
    merged = _fold(current, newer)
    for work in (current, newer):
        if work.backfill is not None and work.backfill != merged.backfill:
            left[(*work.key, work.backfill)] = work.source
    return merged


@contextlib.contextmanager
def backfill_scope(backfill_id: int):
    """Work stored in the body (enqueued, or claimed by a dual-write) that names no backfill
    belongs to this one: how a bulk load marks work made deep in a write path it does not own."""
    token = _backfill_scope.set(backfill_id)
    try:
        yield
    finally:
        _backfill_scope.reset(token)


def _scoped(work: Work) -> Work:
    scope = _backfill_scope.get()
    return replace(work, backfill=scope) if scope is not None and work.backfill is None else work


def _handed_over(counts: dict[int, int]) -> None:
    """Count entities handed to backfills (`Backfill.enqueued`), in the enqueue's transaction."""
    for backfill, n in counts.items():
        Backfill.objects.filter(pk=backfill).update(enqueued=F("enqueued") + n)


def priority_of(label: str) -> Priority:
    """The queue priority the sync policy gives a label."""
    from sync.policy import policy_for

    return policy_for(label).priority


def enqueue(work: Work) -> EnqueueResult:
    return enqueue_many([work])


def enqueue_many(items: Iterable[Work]) -> EnqueueResult:
    """Store work durably, coalescing with queued events for the same entities."""
    folded: dict[tuple[str, str], Work] = {}
    arrivals = 0
    for work in items:
        arrivals += 1
        work = _scoped(work)
        folded[work.key] = _fold(folded[work.key], work) if work.key in folded else work
    if not folded:
        return EnqueueResult()
    if settings.SYNC_TRANSPORT == "kafka":
        return _publish(folded, arrivals)
    for attempt in range(5):
        try:
            with transaction.atomic():
                result = _enqueue_folded(folded)
                transaction.on_commit(lambda r=result: work_enqueued.send(sender=EnqueueResult, result=r))
            result.coalesced += arrivals - len(folded)
            return result
        except IntegrityError:
            # Another process inserted a queued event for one of these entities between our read
            # and our insert; the next round sees it and coalesces into it.
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _publish(folded: dict[tuple[str, str], Work], arrivals: int) -> EnqueueResult:
    """SYNC_TRANSPORT=kafka: the work goes to Kafka (acknowledged by the broker when this returns,
    else RetryableStoreError) and a consumer group applies it (sync.transport.consumer); records
    say `pending` until then, as with the outbox. Work handed to a backfill is counted as handed
    over once the broker has it (the consumer, which claims it, does not count it again)."""
    kafka_transport.publish(folded.values())
    with transaction.atomic():
        _handed_over(Counter(work.backfill for work in folded.values() if work.backfill is not None))
        _mark_pending(list(folded))
    return EnqueueResult(created=len(folded), coalesced=arrivals - len(folded))


def _enqueue_folded(folded: dict[tuple[str, str], Work]) -> EnqueueResult:
    result = EnqueueResult()
    existing = {ev.key: ev for ev in _queued_events(list(folded))}
    changed: list[SyncEvent] = []
    new: list[SyncEvent] = []
    handed: dict[int, int] = {}  # backfill -> entities given to it by this call
    moved = False  # an event left its backfill
    now = timezone.now()
    for key, work in folded.items():
        event = existing.get(key)
        if work.backfill is not None and (event is None or event.backfill_id != work.backfill):
            handed[work.backfill] = handed.get(work.backfill, 0) + 1
        if event is None:
            new.append(SyncEvent(
                label=work.label, uid=work.uid, operation=work.operation, version=work.version,
                priority=work.priority, source=work.source, changed_at=work.changed_at,
                next_attempt_at=now, created_at=now, backfill_id=work.backfill,
            ))
            continue
        merged = _fold(Work(event.label, event.uid, event.operation, event.version, event.priority,
                            event.changed_at, event.source, event.backfill_id), work)
        event.operation, event.version, event.priority = merged.operation, merged.version, merged.priority
        event.changed_at, event.source = merged.changed_at, merged.source
        moved = moved or event.backfill_id != merged.backfill
        event.backfill_id = merged.backfill
        event.coalesced += 1
        # New work is worth trying now even if the event was backing off after a failure.
        event.next_attempt_at = min(event.next_attempt_at, now)
        changed.append(event)
    if changed:
        SyncEvent.objects.bulk_update(
            changed, ["operation", "version", "priority", "changed_at", "source", "coalesced",
                      "next_attempt_at", *(["backfill"] if moved else [])], batch_size=500)
        result.coalesced += len(changed)
    if new:
        SyncEvent.objects.bulk_create(new, batch_size=500)
        result.created += len(new)
    _handed_over(handed)
    _mark_pending(list(folded))
    return result


def _mark_pending(keys: Sequence[tuple[str, str]]) -> None:
    """Records of entities with work queued say so (`pending`) until the work is applied. Only
    records whose vectors are complete change: a `failed` record keeps telling apply that its
    chunks must be listed, and `deleted`/`excluded` ones that nothing is stored."""
    settled = [SyncRecord.Status.IN_SYNC, SyncRecord.Status.CONFLICT]
    for records in for_entities(SyncRecord.objects.filter(status__in=settled), keys):
        records.update(status=SyncRecord.Status.PENDING)


def _queued_events(keys: Sequence[tuple[str, str]]) -> list[SyncEvent]:
    events = [event for rows in for_entities(SyncEvent.objects.filter(status=Status.QUEUED), keys)
              for event in rows]
    for event in events:
        event.key = (event.label, event.uid)
    return events


def _claimable(now: datetime) -> Q:
    return (Q(status=Status.QUEUED, next_attempt_at__lte=now)
            | Q(status=Status.IN_FLIGHT, lease_expires_at__lt=now))


def _locked(queryset):
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True)
    return queryset


# The database could not be reached, or was busy past its timeout (SQLite locked, PostgreSQL
# restarting): a later try may work. Data errors (IntegrityError, ...) are not among them.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


def reconnect_if_broken() -> None:
    """After a database error, outside a transaction: drop this thread's connection if it no longer
    works (PostgreSQL restarted), so that the next query opens a new one. Django checks that only
    between requests; a worker loop or a batch's lease keeper must ask."""
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def claim_batch(worker: str, limit: int, *, visibility_timeout: float | None = None,
                starvation_seconds: float | None = None, max_priority: int | None = None) -> list[SyncEvent]:
    """Lease up to `limit` ready events to `worker`; returns only the events this call won.

    `max_priority=Priority.HIGH` claims HIGH streaming events only (and no aged share).
    """
    timeout = visibility_timeout if visibility_timeout is not None else settings.SYNC_VISIBILITY_TIMEOUT
    starvation = starvation_seconds if starvation_seconds is not None else settings.SYNC_STARVATION_SECONDS
    token = f"{worker[:40]}:{uuid.uuid4().hex[:16]}"
    now = timezone.now()
    with transaction.atomic():
        _bury_lost_leases(now)
        # One entity is applied by one worker at a time: an event whose entity has a live lease
        # elsewhere waits, so two workers never race on its vectors and record.
        busy = SyncEvent.objects.filter(label=OuterRef("label"), uid=OuterRef("uid"),
                                        status=Status.IN_FLIGHT, lease_expires_at__gte=now)
        ready = SyncEvent.objects.filter(_claimable(now)).exclude(Exists(busy))
        if max_priority is not None:
            # The urgent claims are the streaming changes': a backfill's HIGH work never holds them.
            ready = ready.filter(priority__lte=max_priority, backfill__isnull=True)
        aged_slots = max(1, int(limit * STARVATION_SHARE)) if max_priority is None else 0
        aged = list(_locked(ready.filter(created_at__lte=now - timedelta(seconds=starvation))
                            .order_by("created_at", "id").values_list("id", "interruptions"))[:aged_slots]) \
            if aged_slots else []
        # Streaming changes by priority, then backfills' work with what is left of the batch: no
        # change waits behind a bulk load (whose oldest events still move on in the aged share).
        taken = [i for i, _ in aged]
        order = ("priority", "next_attempt_at", "id")
        rest = list(_locked(ready.filter(backfill__isnull=True).exclude(id__in=taken).order_by(*order)
                            .values_list("id", "interruptions"))[:limit - len(aged)])
        if max_priority is None and len(aged) + len(rest) < limit:
            rest += list(_locked(ready.filter(backfill__isnull=False).exclude(id__in=taken).order_by(*order)
                                 .values_list("id", "interruptions"))[:limit - len(aged) - len(rest)])
        # An event a timeout cut short before is claimed alone: if it is what stalls its batches,
        # it stalls no other event, and its own interruptions count towards its dead letter.
        suspect = next((i for i, interrupted in aged + rest if interrupted), None)
        ids = [suspect] if suspect is not None else [i for i, _ in aged + rest]
        if not ids:
            return []
        won = with_ids(SyncEvent.objects.filter(_claimable(now)), ids).update(
            status=Status.IN_FLIGHT, claim_token=token, lease_expires_at=now + timedelta(seconds=timeout),
            attempts=F("attempts") + 1,
        )
    if won < len(ids):
        log.debug("claim %s won %d of %d events; another worker took the rest", token, won, len(ids))
    # What applying needs: a worker claims up to SYNC_MAX_BATCH_SIZE events at a time, and SQLite
    # parses every datetime column of every row read (other fields load on first access).
    return list(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT).order_by("priority", "id")
                .only(*CLAIMED_FIELDS))


class EntityBusy(Exception):
    """Another worker is applying this entity right now."""


def claim_entity(work: Work, worker: str, *, wait: float = 10.0, poll: float = 0.05) -> SyncEvent:
    """An event for one entity, created in flight and leased to `worker` at once.

    The dual-write path applies an entity inside the caller's request; as an event it keeps the
    rules every worker keeps: one applier per entity (a worker holding the entity is waited for,
    up to `wait` seconds, then EntityBusy), and every write after the claim fenced by its token.
    """
    deadline = time.monotonic() + wait
    token = f"{worker[:40]}:{uuid.uuid4().hex[:16]}"
    work = _scoped(work)
    while True:
        now = timezone.now()
        with transaction.atomic():
            busy = SyncEvent.objects.filter(label=work.label, uid=work.uid, status=Status.IN_FLIGHT,
                                            lease_expires_at__gte=now).exists()
            if not busy:
                if work.backfill is not None:
                    _handed_over({work.backfill: 1})
                return SyncEvent.objects.create(
                    label=work.label, uid=work.uid, operation=work.operation, version=work.version,
                    priority=work.priority, status=Status.IN_FLIGHT, source=work.source, attempts=1,
                    claim_token=token, changed_at=work.changed_at, created_at=now, next_attempt_at=now,
                    lease_expires_at=now + timedelta(seconds=settings.SYNC_VISIBILITY_TIMEOUT),
                    backfill_id=work.backfill)
        if time.monotonic() >= deadline:
            raise EntityBusy(f"{work.label}:{work.uid} is being applied by another worker; try again shortly")
        time.sleep(poll)


def claim_works(works: Iterable[Work], worker: str, *, take_over: str = "", handing_over: bool = True,
                wait: float = 10.0, poll: float = 0.05) -> list[SyncEvent]:
    """Events for these entities (one per entity, the works folded), created in flight and leased
    to `worker` at once: how the Kafka consumer claims a polled batch (sync.transport.consumer).

    Queued events of the same entities are folded in and retired (`superseded`). An in-flight
    event whose claim token starts with `take_over` is another consumer's of the group: Kafka's
    partition assignment, not the lease, says who applies an entity now, so it is retired too and
    its holder's fence (`hold`, `held`) drops its results. An entity held by anyone else (a
    dual-write) is waited for, up to `wait` seconds, then EntityBusy.

    Work of a backfill is handed over to it here (`Backfill.enqueued`), unless `handing_over` is
    False: the consumer's was when it was published (`_publish`). A backfill's work that a
    streaming change of the same batch takes over leaves its backfill as a finished
    `superseded` event of it: on Kafka that is how its backfill learns the entity's work is done.
    """
    folded: dict[tuple[str, str], Work] = {}
    left: dict[tuple[str, str, int], str] = {}  # (label, uid, backfill) a streaming change took over
    for work in works:
        work = _scoped(work)
        folded[work.key] = _fold_noting(folded[work.key], work, left) if work.key in folded else work
    if not folded:
        return []
    token = f"{worker[:40]}:{uuid.uuid4().hex[:16]}"
    deadline = time.monotonic() + wait
    while True:
        now = timezone.now()
        with transaction.atomic():
            active = [event for rows in for_entities(
                SyncEvent.objects.filter(status__in=[Status.QUEUED, Status.IN_FLIGHT]), list(folded))
                for event in rows]
            busy = [e for e in active if e.status == Status.IN_FLIGHT and e.lease_expires_at is not None
                    and e.lease_expires_at >= now and not (take_over and e.claim_token.startswith(take_over))]
            if not busy:
                owned = {(e.label, e.uid, e.backfill_id) for e in active}
                handed = Counter(work.backfill for (label, uid), work in folded.items()
                                 if handing_over and work.backfill is not None
                                 and (label, uid, work.backfill) not in owned)
                claimed = dict(folded)
                for event in active:
                    key = (event.label, event.uid)
                    claimed[key] = _fold_noting(Work(event.label, event.uid, event.operation, event.version,
                                                     event.priority, event.changed_at, event.source,
                                                     event.backfill_id), claimed[key], left)
                if active:
                    with_ids(SyncEvent.objects.filter(status__in=[Status.QUEUED, Status.IN_FLIGHT]),
                             [e.id for e in active]).update(status=Status.DONE, outcome="superseded",
                                                            finished_at=now, lease_expires_at=None)
                expires = now + timedelta(seconds=settings.SYNC_VISIBILITY_TIMEOUT)
                SyncEvent.objects.bulk_create([SyncEvent(
                    label=w.label, uid=w.uid, operation=w.operation, version=w.version, priority=w.priority,
                    status=Status.IN_FLIGHT, source=w.source, attempts=1, claim_token=token,
                    changed_at=w.changed_at, created_at=now, next_attempt_at=now, lease_expires_at=expires,
                    backfill_id=w.backfill,
                ) for w in claimed.values()], batch_size=500)
                # (An active event keeps its own backfill: it is retired above as that one's.)
                SyncEvent.objects.bulk_create([SyncEvent(
                    label=label, uid=uid, status=Status.DONE, outcome="superseded", source=source,
                    created_at=now, next_attempt_at=now, finished_at=now, backfill_id=backfill,
                ) for (label, uid, backfill), source in sorted(left.items()) if (label, uid, backfill) not in owned],
                    batch_size=500)
                _handed_over(handed)
                break
        if time.monotonic() >= deadline:
            raise EntityBusy(f"{busy[0].label}:{busy[0].uid} is being applied by another worker; try again shortly")
        time.sleep(poll)
    return list(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT).order_by("priority", "id")
                .only(*CLAIMED_FIELDS))


def reclaim(ids: Iterable[int], worker: str) -> list[SyncEvent]:
    """Claim these queued events again, an attempt counted (the Kafka consumer retrying its own
    batch's failures in place, after their backoff). Returns the events this call won."""
    token = f"{worker[:40]}:{uuid.uuid4().hex[:16]}"
    now = timezone.now()
    with transaction.atomic():
        with_ids(SyncEvent.objects.filter(status=Status.QUEUED), list(ids)).update(
            status=Status.IN_FLIGHT, claim_token=token, attempts=F("attempts") + 1,
            lease_expires_at=now + timedelta(seconds=settings.SYNC_VISIBILITY_TIMEOUT))
    return list(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT).order_by("priority", "id")
                .only(*CLAIMED_FIELDS))


def _by_token(events: Sequence[SyncEvent], size: int = 500):
    """(token, ids) chunks of claimed events: the IN lists the fenced updates are written with."""
    grouped: dict[str, list[int]] = {}
    for event in events:
        grouped.setdefault(event.claim_token, []).append(event.id)
    for token, ids in grouped.items():
        for start in range(0, len(ids), size):
            yield token, ids[start:start + size]


def hold(events: Sequence[SyncEvent], seconds: float | None = None) -> set[int]:
    """The fence before a worker writes: renew the lease of the claimed events that are still
    ours and return their ids. An event missing from the answer was claimed by another worker
    after our lease ran out: nothing may be written for it."""
    timeout = seconds if seconds is not None else settings.SYNC_VISIBILITY_TIMEOUT
    held: set[int] = set()
    with transaction.atomic():
        expires = timezone.now() + timedelta(seconds=timeout)
        for token, ids in _by_token(events):
            mine = with_ids(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT), ids)
            if mine.update(lease_expires_at=expires):
                held.update(mine.values_list("id", flat=True))
    return held


def held(events: Sequence[SyncEvent]) -> set[int]:
    """Ids of the claimed events still ours, locked until the surrounding transaction ends (call it
    inside one, before writing records and acks: a worker that lost its lease writes neither)."""
    found: set[int] = set()
    for token, ids in _by_token(events):
        mine = with_ids(_locked(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT)), ids)
        found.update(mine.values_list("id", flat=True))
    return found


def _bury_lost_leases(now: datetime) -> None:
    """An event whose worker died on it every attempt is poison: dead-letter it, don't loop."""
    SyncEvent.objects.filter(
        status=Status.IN_FLIGHT, lease_expires_at__lt=now, attempts__gte=settings.SYNC_MAX_ATTEMPTS,
    ).update(status=Status.DEAD, finished_at=now, lease_expires_at=None, failed_at=now,
             last_error="the worker holding this event stopped before finishing it, on every attempt")


def extend_lease(events: Sequence[SyncEvent], seconds: float | None = None) -> int:
    """Renew the lease of claimed events still ours (a long batch's heartbeat); returns how many."""
    timeout = seconds if seconds is not None else settings.SYNC_VISIBILITY_TIMEOUT
    expires = timezone.now() + timedelta(seconds=timeout)
    return sum(with_ids(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT), ids)
               .update(lease_expires_at=expires) for token, ids in _by_token(events))


def ack(events: Sequence[SyncEvent], outcome: str, lags: dict[int, float] | None = None) -> int:
    """Mark claimed events done, with the lag each brought to an end (`lags`: event id -> seconds).
    Returns how many were still ours (a lost lease is not acked)."""
    done = 0
    now = timezone.now()
    lags = lags or {}
    for token, ids in _by_token(events):
        mine = with_ids(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT), ids)
        done += mine.update(status=Status.DONE, finished_at=now, outcome=outcome, lease_expires_at=None,
                            last_error="", lag_seconds=None)
    _record_lags([(lags[e.id], e.id, e.claim_token) for e in events if e.id in lags])
    if done < len(events):
        log.warning("acked %d of %d events: the rest lost their lease to another worker",
                    done, len(events))
    return done


def _record_lags(rows: list[tuple[float, int, str]]) -> None:
    """Each acked event's lag, (lag, id, claim token) a row: one statement prepared once and run
    per row (an UPDATE with a CASE of one WHEN per event cost Django longer to compile than the
    rest of a metadata-only batch). Only events this claim has just marked done are touched."""
    if not rows:
        return
    field = SyncEvent._meta.get_field
    quote = connection.ops.quote_name
    sql = (f"UPDATE {quote(SyncEvent._meta.db_table)} SET {quote(field('lag_seconds').column)} = %s "
           f"WHERE {quote(field('id').column)} = %s AND {quote(field('claim_token').column)} = %s "
           f"AND {quote(field('status').column)} = %s")
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(*row, Status.DONE) for row in rows])


def backoff_delay(attempts: int, retry_after: float | None = None) -> float:
    """Exponential backoff with equal jitter, never shorter than the store's Retry-After."""
    ceiling = min(settings.SYNC_BACKOFF_MAX, settings.SYNC_BACKOFF_BASE * (2 ** max(attempts - 1, 0)))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def fail(event: SyncEvent, error: str, *, permanent: bool = False,
         retry_after: float | None = None) -> str:
    """Record a failed attempt: back off and requeue, or dead-letter. Returns the new status."""
    now = timezone.now()
    mine = SyncEvent.objects.filter(id=event.id, claim_token=event.claim_token, status=Status.IN_FLIGHT)
    if permanent or event.attempts >= settings.SYNC_MAX_ATTEMPTS:
        mine.update(status=Status.DEAD, finished_at=now, lease_expires_at=None, last_error=error[:5000],
                    failed_at=now)
        return Status.DEAD
    retry_at = now + timedelta(seconds=backoff_delay(event.attempts, retry_after))
    try:
        with transaction.atomic():
            updated = mine.update(status=Status.QUEUED, next_attempt_at=retry_at, lease_expires_at=None,
                                  last_error=error[:5000], failed_at=now)
    except IntegrityError:
        # A newer change to this entity is already queued: that event covers this one.
        mine.update(status=Status.DONE, finished_at=now, outcome="superseded", lease_expires_at=None,
                    last_error=error[:5000], failed_at=now)
        _fold_into_queued(event)
        return Status.DONE
    return Status.QUEUED if updated else event.status


def release(events: Sequence[SyncEvent], *, timed_out: bool = False) -> int:
    """Hand claimed events back to the queue untouched: not a failure, so no attempt is counted
    and there is no backoff. Returns how many were still ours. One transaction for the batch.

    `timed_out`: a timeout cut their batch short. Each event counts the interruption (and is
    claimed alone from then on); one interrupted SYNC_MAX_INTERRUPTIONS times is a dead letter."""
    if not events:
        return 0
    try:
        with transaction.atomic():
            return _release(events, timed_out)
    except IntegrityError:
        # A newer change was queued for one of these entities after we looked (PostgreSQL runs
        # enqueues beside us): release them one at a time so each finds its own way.
        return sum(_release_one(event, timed_out) for event in events)


def interrupted_error(times: int) -> str:
    """A dead letter's reason when timeouts cut its batches short `times` times."""
    return (f"interrupted by timeouts {times} times (SYNC_MAX_INTERRUPTIONS): applying this entity never "
            "finished within the task's time limit, so it is not tried again until someone retries it")


def _bury_interrupted(mine, now: datetime) -> int:
    """Dead-letter the events of `mine` (claimed, in flight) whose interruption now is their last."""
    limit = settings.SYNC_MAX_INTERRUPTIONS
    return mine.filter(interruptions__gte=limit - 1).update(
        status=Status.DEAD, attempts=F("attempts") - 1, interruptions=F("interruptions") + 1, finished_at=now,
        lease_expires_at=None, failed_at=now, last_error=interrupted_error(limit))


def _release(events: Sequence[SyncEvent], timed_out: bool = False) -> int:
    now = timezone.now()
    still = held(events)
    ours = {e.id: e for e in events if e.id in still}
    if not ours:
        return 0
    keys = {(e.label, e.uid) for e in ours.values()}
    queued = {(label, uid) for rows in for_entities(SyncEvent.objects.filter(status=Status.QUEUED), keys)
              for label, uid in rows.values_list("label", "uid")}
    covered = [e for e in ours.values() if (e.label, e.uid) in queued]
    back = [e for e in ours.values() if (e.label, e.uid) not in queued]
    counted = {"interruptions": F("interruptions") + 1} if timed_out else {}
    for token, ids in _by_token(back):
        mine = with_ids(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT), ids)
        if timed_out:
            _bury_interrupted(mine, now)
        mine.update(status=Status.QUEUED, attempts=F("attempts") - 1, lease_expires_at=None, claim_token="",
                    next_attempt_at=now, **counted)
    for token, ids in _by_token(covered):
        # A newer change to these entities is queued: that event covers this one.
        with_ids(SyncEvent.objects.filter(claim_token=token, status=Status.IN_FLIGHT), ids).update(
            status=Status.DONE, finished_at=now, outcome="superseded", lease_expires_at=None)
    for event in covered:
        _fold_into_queued(event, interrupted=timed_out)
    return len(ours)


def _release_one(event: SyncEvent, timed_out: bool = False) -> int:
    now = timezone.now()
    mine = SyncEvent.objects.filter(id=event.id, claim_token=event.claim_token, status=Status.IN_FLIGHT)
    try:
        with transaction.atomic():
            if timed_out and _bury_interrupted(mine, now):
                return 1
            counted = {"interruptions": F("interruptions") + 1} if timed_out else {}
            return mine.update(status=Status.QUEUED, attempts=F("attempts") - 1, lease_expires_at=None,
                               claim_token="", next_attempt_at=now, **counted)
    except IntegrityError:
        released = mine.update(status=Status.DONE, finished_at=now, outcome="superseded", lease_expires_at=None)
        _fold_into_queued(event, interrupted=timed_out)
        return released


def _fold_into_queued(event: SyncEvent, *, interrupted: bool = False) -> None:
    """Carry a retired event's urgency (priority, first change time) into the queued one, and
    the timeouts that cut it short (`interrupted`: one more just now)."""
    queued = SyncEvent.objects.filter(status=Status.QUEUED, label=event.label, uid=event.uid)
    if event.backfill_id is None:
        # A streaming change takes backfill work out of its backfill, timed from its own change.
        queued.filter(backfill__isnull=False).update(backfill=None, changed_at=event.changed_at)
    queued.filter(priority__gt=event.priority).update(priority=event.priority)
    cuts = event.interruptions + (1 if interrupted else 0)
    if cuts:
        queued.filter(interruptions__lt=cuts).update(interruptions=cuts)
    if event.changed_at:
        # (A backfill's change time never becomes a streaming change's.)
        timed = queued if event.backfill_id is None else queued.filter(backfill__isnull=False)
        timed.filter(changed_at__gt=event.changed_at).update(changed_at=event.changed_at)
    queued.update(next_attempt_at=timezone.now())


def retry_dead(ids: Iterable[int], actor) -> int:
    """Put dead letters back in the queue (merged into a queued event for the same entity); with
    SYNC_TRANSPORT=kafka, publish them again (`_republish_dead`)."""
    if settings.SYNC_TRANSPORT == "kafka":
        return _republish_dead(ids, actor)
    retried = 0
    now = timezone.now()
    with transaction.atomic():
        for event in SyncEvent.objects.select_for_update().filter(id__in=list(ids), status=Status.DEAD):
            before = {"status": event.status, "attempts": event.attempts, "last_error": event.last_error}
            event.interruptions = 0  # someone chose to try again: past timeouts do not count against it
            if SyncEvent.objects.filter(status=Status.QUEUED, label=event.label, uid=event.uid).exists():
                _fold_into_queued(event)
                event.status, event.outcome = Status.DONE, "retried_into_queued"
                event.finished_at = now
            else:
                event.status, event.attempts, event.next_attempt_at = Status.QUEUED, 0, now
                event.outcome, event.claim_token, event.finished_at = "", "", None
                event.source = "retry"
            event.resolved_by = actor if getattr(actor, "pk", None) else None
            event.save()
            AuditEntry.record(actor, "dead_letter.retry", f"{event.label}:{event.uid}", before=before,
                              after={"status": event.status, "event": event.id})
            retried += 1
    return retried


def _republish_dead(ids: Iterable[int], actor) -> int:
    """SYNC_TRANSPORT=kafka: each dead letter's message goes back to its change topic as the
    dead-letter topic holds it (its headers say which topic, and that it is a retry); one the topic
    no longer holds (retention) is published anew from its row. Once the broker acknowledged them
    (RetryableStoreError otherwise, and nothing changes), each row is done (`republished`) and
    audited as a retry. Publishing comes first and outside the transaction: a dead letter two
    people retry at once is published twice, which the consumer's version guard makes harmless."""
    events = list(SyncEvent.objects.filter(id__in=list(ids), status=Status.DEAD))
    if not events:
        return 0
    held = kafka_transport.read_dead([e.dlq_position for e in events if e.dlq_position])
    topics = set(kafka_transport.change_topics())
    sending, fresh, target = [], [], {}
    for event in events:
        message = held.get(event.dlq_position)
        if message is not None:
            topic = message.origin if message.origin in topics else kafka_transport.topic_for(event.priority)
            sending.append((topic, message.key, message.value, [("retry-of", event.dlq_position.encode())]))
        elif event.label == kafka_transport.UNREADABLE:
            log.warning("dead letter %d is gone from the dead-letter topic (%s) and names no entity: "
                        "nothing to retry", event.id, event.dlq_position)
            continue
        else:
            topic = kafka_transport.topic_for(event.priority)
            fresh.append(Work(event.label, event.uid, event.operation, event.version, event.priority,
                              event.changed_at, "retry"))
        target[event.id] = topic
    kafka_transport.republish(sending)
    kafka_transport.publish(fresh)
    retried = 0
    now = timezone.now()
    with transaction.atomic():
        for event in events:
            if event.id not in target:
                continue
            done = SyncEvent.objects.filter(id=event.id, status=Status.DEAD).update(
                status=Status.DONE, outcome="republished", finished_at=now,
                resolved_by=actor if getattr(actor, "pk", None) else None)
            if not done:
                continue  # someone else retried or discarded it meanwhile
            AuditEntry.record(actor, "dead_letter.retry", f"{event.label}:{event.uid}",
                              before={"status": event.status, "attempts": event.attempts,
                                      "last_error": event.last_error},
                              after={"status": Status.DONE, "event": event.id, "republished_to": target[event.id]})
            retried += 1
        _mark_pending([(e.label, e.uid) for e in events if e.id in target and e.label != kafka_transport.UNREADABLE])
    return retried


def discard_dead(ids: Iterable[int], actor, note: str = "") -> int:
    """Drop dead letters on purpose; the entity stays out of sync until it changes or is resynced."""
    discarded = 0
    now = timezone.now()
    with transaction.atomic():
        for event in SyncEvent.objects.select_for_update().filter(id__in=list(ids), status=Status.DEAD):
            AuditEntry.record(actor, "dead_letter.discard", f"{event.label}:{event.uid}",
                              before={"status": event.status, "last_error": event.last_error},
                              after={"status": Status.DONE, "outcome": "discarded"}, note=note)
            event.status, event.outcome, event.finished_at = Status.DONE, "discarded", now
            event.resolved_by = actor if getattr(actor, "pk", None) else None
            event.save(update_fields=["status", "outcome", "finished_at", "resolved_by"])
            discarded += 1
    return discarded


@dataclass
class Lane:
    """One priority's share of the queue: the streaming changes waiting in it, and since when.
    Backfills' events are counted apart (`backfill`): they wait behind these, and a backfill's
    progress has its own reading (sync.backfill)."""

    priority: str  # "high", "medium", "low"
    queued: int = 0
    backing_off: int = 0  # queued but waiting for their retry time after a failure
    in_flight: int = 0
    oldest_created: datetime | None = None
    oldest_change: datetime | None = None  # the earliest unsynced graph change waiting
    backfill: int = 0  # backfills' events of this priority, queued or in flight
    # SYNC_TRANSPORT=kafka: the consumer group's lag on each partition of this priority's topic
    # (kafka.PartitionLag), or why the broker could not tell (then only in-flight work is counted).
    partitions: list = field(default_factory=list)
    lag_error: str = ""
    backfill_partitions: list = field(default_factory=list)  # the backfill topic's (the LOW lane holds them)

    @property
    def depth(self) -> int:
        return self.queued + self.in_flight

    @property
    def lag(self) -> int:
        """SYNC_TRANSPORT=kafka: messages of this priority not yet committed by the consumer group."""
        return sum(p.lag for p in self.partitions)


def lanes(now: datetime | None = None) -> dict[str, Lane]:
    """The queue's depth per priority (streaming events queued + in flight; backfills' apart), HIGH
    first: one aggregate query on the claim index, whatever the queue's size. Every reading of the depth (the Queue page, the
    observer's readings, /metrics, `sync_status`) comes from here.

    SYNC_TRANSPORT=kafka: the depth is the consumer group's lag on the priority's topic (committed
    offset vs high watermark, `kafka.lag`); of it, `in_flight` are the events consumers are
    applying now (their offsets are committed after the vector write), `queued` the rest, of
    which `backing_off` are the entities a consumer retries in place after a failure."""
    now = now or timezone.now()
    by_priority = {p.label: Lane(p.label) for p in Priority}
    rows = (SyncEvent.objects.filter(status__in=[Status.QUEUED, Status.IN_FLIGHT])
            .values("priority", "status", "backfill")
            .annotate(n=Count("id"), later=Count("id", filter=Q(next_attempt_at__gt=now)),
                      created=Min("created_at"), changed=Min("changed_at")).order_by())
    for row in rows:
        lane = by_priority[Priority(row["priority"]).label]
        if row["backfill"] is not None:
            lane.backfill += row["n"]
            continue
        if row["status"] == Status.QUEUED:
            lane.queued, lane.backing_off = row["n"], row["later"]
        else:
            lane.in_flight = row["n"]
        lane.oldest_created = _earliest(lane.oldest_created, row["created"])
        lane.oldest_change = _earliest(lane.oldest_change, row["changed"])
    if settings.SYNC_TRANSPORT == "kafka":
        _read_lag(by_priority)
    return by_priority


def _read_lag(by_priority: dict[str, Lane]) -> None:
    try:
        partitions = kafka_transport.lag_reading()
    except kafka_transport.LagUnknown as exc:
        for lane in by_priority.values():
            lane.lag_error = str(exc)
        return
    topics = {kafka_transport.topic_for(p): p.label for p in Priority}
    lowest = by_priority[Priority.LOW.label]
    # The backfill topic holds every priority's backfill work, behind all of them: its lag is
    # counted apart from the streaming depth. Of it, what consumers hold (in flight, or retried in
    # place) is counted in its priority's lane already; the rest in the lowest lane.
    held = sum(lane.backfill for lane in by_priority.values())
    for partition in partitions:
        if partition.topic not in topics:
            lowest.backfill_partitions.append(partition)
            continue
        lane = by_priority[topics[partition.topic]]
        lane.partitions.append(partition)
        lane.oldest_created = _earliest(lane.oldest_created, partition.published_at)
        lane.oldest_change = _earliest(lane.oldest_change, partition.changed_at or partition.published_at)
    lowest.backfill += max(sum(p.lag for p in lowest.backfill_partitions) - held, 0)
    for lane in by_priority.values():
        # Events a consumer retries in place are queued rows, and their messages uncommitted: of the lag.
        lane.queued = max(lane.lag - lane.in_flight, 0)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None or (b is not None and b < a) else a


def purge_finished(older_than: timedelta) -> int:
    """Done events are history, kept a while for the dashboard; dead letters stay until handled."""
    cutoff = timezone.now() - older_than
    deleted, _ = SyncEvent.objects.filter(status=Status.DONE, finished_at__lt=cutoff).delete()
    return deleted

"""Apply a claimed batch of sync events: make each entity's vectors match its current graph state.

An event only says "look at this entity"; what gets written is always read from Neo4j at apply
time, so a late or repeated event cannot write old content. Two workers never race on one entity:
a claim is a lease, renewed by a thread while the batch runs, and every write after the claim is
fenced by it — the vector writes go ahead only for events still ours (`queue.hold`, right before
writing), and records and acks are written in one transaction only for events still ours
(`queue.held`). A worker that lost its lease (it stalled past the visibility timeout and another
worker took the events) drops its results and counts them as `fenced`; should its vectors have
reached the store before it noticed, the entity is queued again so the current holder's state
wins. The version guard still refuses to replace a vector built from a newer graph version with
an older one (Pinecone has no conditional write, so the guard is ours).

Per batch: one graph read per label, two vector metadata fetches, one embedding call, one upsert,
one delete, bulk record updates. Content whose hash is unchanged and that the configured model
embedded is not embedded again: only its metadata is rewritten (or nothing, when that is
unchanged too). A batch embeds at most `embed_limit` entities and `chunk_limit` chunks, so a run
fits its task timeout; the rest goes back to the queue untouched.

Interrupted (django-q2's timeout, a SIGTERM turned into `StopRequested`, Ctrl-C): the batch's
unfinished events are released without an attempt counted, and the interruption goes on. A
timeout — a `SystemExit`: django-q2's `TimeoutException` is one, and so is gunicorn's worker
timeout — also counts an interruption on each event (`queue.release`), so that an entity whose
apply never ends in time becomes a dead letter after SYNC_MAX_INTERRUPTIONS instead of cycling; a
stop asked for by a person (SIGTERM, Ctrl-C) is nobody's fault and counts nothing. A batch whose
records or acks the database refused (locked past its busy timeout, restarting) is released the
same way, as soon as the database answers again (within RELEASE_PATIENCE), and the error goes on
to the worker loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from sync import ids, queue, shutdown
from sync.embedding import get_embedder, model_id
from sync.models import Conflict, Priority, SyncEvent, SyncRecord, for_entities
from sync.observe.counters import BACKFILL_LAG, EMBEDDED_CHUNKS, EVENTS_APPLIED, SYNC_ERRORS, SYNC_LAG
from sync.policy import ELLIPSIS, build_document, uid_withheld
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, Metadata, RetryableStoreError, StoreError, VectorRecord

log = logging.getLogger(__name__)

RecordStatus = SyncRecord.Status
# Records that know every chunk the last write left (their chunk_count is the truth).
KNOWN_CHUNKS = (RecordStatus.IN_SYNC, RecordStatus.PENDING, RecordStatus.CONFLICT)
# Outcomes that put something of the graph into the index (or took it out).
WRITING = ("upserted", "metadata_only", "deleted")
# How long a batch the database failed keeps trying to hand its events back (_release_interrupted).
RELEASE_PATIENCE = 30.0
WITHHELD_UID = "never synced: its uid holds an e-mail address or phone number, which a vector id would carry"


@dataclass
class ApplyCounts:
    upserted: int = 0  # entities whose vectors were (re)embedded and written
    metadata_only: int = 0  # content unchanged: metadata rewritten, no embedding
    unchanged: int = 0  # nothing to write
    deleted: int = 0  # entities gone from the graph: vectors removed
    excluded: int = 0  # never-synced: vectors removed if any
    stale: int = 0  # dropped by the version guard
    retried: int = 0  # failed transiently, back in the queue
    dead: int = 0  # failed for good, in the dead-letter queue
    deferred: int = 0  # needed embedding beyond the batch's limits: handed back to the queue
    fenced: int = 0  # another worker holds the events now (our lease ran out): results dropped
    embedded_chunks: int = 0
    vectors_written: int = 0
    vectors_deleted: int = 0
    seconds: float = 0.0

    def add(self, other: ApplyCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def events(self) -> int:
        """Entities finished or failed here; deferred ones are back in the queue and fenced ones
        another worker's, each counted where it is finished."""
        return (self.upserted + self.metadata_only + self.unchanged + self.deleted + self.excluded
                + self.stale + self.retried + self.dead)


@dataclass
class _Plan:
    """What to do for one entity of the batch."""

    key: tuple[str, str]
    events: list[SyncEvent]
    entity: Entity | None = None
    document: object | None = None  # sync.policy.Document
    action: str = "upsert"  # upsert | delete | exclude
    record_status: str | None = None  # our record's status before this apply (None: no record)
    vector_version: int | None = None  # our record's vector version before this apply
    previous_ids: set[str] = field(default_factory=set)
    list_store: bool = False  # list the entity's ids in the store instead of trusting the record
    probe: bool = False  # no record knows the chunks: look for the ids any text would have
    to_write: list = field(default_factory=list)  # chunks to embed and upsert
    to_update: dict = field(default_factory=dict)  # vector id -> new metadata
    to_delete: set = field(default_factory=set)  # vector ids
    wrote: bool = False  # something reached the vector store
    outcome: str = ""
    error: str = ""
    note: str = ""  # why an entity was excluded, when its label is synced (its record's last_error)
    cause: BaseException | None = None  # what failed the whole batch, when something did
    embedded: dict = field(default_factory=dict)  # chunk text -> its vector, computed already (two-phase)
    permanent: bool = False
    retry_after: float | None = None

    @property
    def priority(self) -> int:
        return min((e.priority for e in self.events), default=Priority.HIGH)

    @property
    def graph_version(self) -> int | None:
        """The graph version this apply settles: the node's, or for a delete its tombstone's."""
        if self.entity is not None:
            return self.entity.version
        return max((e.version for e in self.events if e.version is not None), default=None)


def apply_events(events: Sequence[SyncEvent], *, embed_limit: int | None = None,
                 chunk_limit: int | None = None) -> ApplyCounts:
    """Apply a claimed batch. At most `embed_limit` entities (None: all) and `chunk_limit` chunks
    (default SYNC_MAX_BATCH_CHUNKS) are embedded; events of entities beyond them are handed back to
    the queue untouched, so a large batch claimed in the expectation of cheap (metadata-only) work
    cannot turn into minutes of embedding."""
    try:
        stoppable = True  # noqa: F841 — sync.shutdown.MARK: a stop may interrupt from here on
        shutdown.stop_if_requested()
        started = time.monotonic()
        counts = ApplyCounts()
        if not events:
            return counts
        plans: dict[tuple[str, str], _Plan] = {}
        for event in events:
            key = (event.label, event.uid)
            plans.setdefault(key, _Plan(key=key, events=[])).events.append(event)
        limit = settings.SYNC_MAX_BATCH_CHUNKS if chunk_limit is None else chunk_limit
        with _LeaseKeeper(events):
            for part in _urgent_first(plans):
                left = None if embed_limit is None else max(embed_limit - counts.upserted, 0)
                _apply(part, counts, embed_limit=left, chunk_limit=limit, read_graph=True)
        stoppable = False  # noqa: F841 — applied: a stop from here on is only recorded
    except BaseException as exc:
        _release_interrupted(events, timed_out=isinstance(exc, SystemExit),
                             database_failed=isinstance(exc, queue.DATABASE_UNAVAILABLE))
        raise
    counts.seconds = time.monotonic() - started
    return counts


def apply_now(entity: Entity, *, worker: str | None = None, embedded: Mapping[str, Any] | None = None) -> str:
    """Bring one entity's vectors in line right now (the dual-write path); raises on failure.

    The entity is claimed like queued work (an in-flight event of its own, waiting for a worker
    that holds the entity), so the one-applier-per-entity rule and the fencing hold here too. A
    failure leaves the event queued for retry, like any failed apply, and raises. Returns the
    outcome (upserted, metadata_only, unchanged, excluded, stale). `embedded` (chunk text ->
    vector) are vectors the caller computed already (the two-phase write's prepare): they are
    written as they are instead of being embedded again.
    """
    event = queue.claim_entity(queue.Work(
        label=entity.label, uid=entity.uid, version=entity.version, priority=queue.priority_of(entity.label),
        changed_at=entity.updated_at, source="write"), worker or queue.worker_name())
    plans = {entity.key: _Plan(key=entity.key, events=[event], entity=entity, embedded=dict(embedded or {}))}
    _apply_claimed(plans, [event])
    outcome = _outcome_now(plans[entity.key])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def apply_now_many(entities: Sequence[Entity], *, worker: str | None = None) -> dict[tuple[str, str], str | Exception]:
    """`apply_now` for many entities at once (the batched dual-write of a feed import): one claim,
    one embedding call, one vector write for the batch, and for each entity what `apply_now` would
    have returned (its outcome) or raised (the exception, returned in its place). An entity
    another worker holds is waited for, then EntityBusy raises for the whole batch (nothing
    claimed); an interruption releases the batch and goes on, as in `apply_now`."""
    if not entities:
        return {}
    works = [queue.Work(label=e.label, uid=e.uid, version=e.version, priority=queue.priority_of(e.label),
                        changed_at=e.updated_at, source="write") for e in entities]
    events = {(e.label, e.uid): e for e in queue.claim_works(works, worker or queue.worker_name())}
    plans = {e.key: _Plan(key=e.key, events=[events[e.key]], entity=e) for e in entities}
    _apply_claimed(plans, list(events.values()))
    return {key: _outcome_now(plan) for key, plan in plans.items()}


def _apply_claimed(plans: dict[tuple[str, str], _Plan], events: list[SyncEvent]) -> None:
    counts = ApplyCounts()
    try:
        _apply(plans, counts, embed_limit=None, chunk_limit=None, read_graph=False)
    except BaseException as exc:
        _release_interrupted(events, timed_out=isinstance(exc, SystemExit),
                             database_failed=isinstance(exc, queue.DATABASE_UNAVAILABLE))
        raise


def _outcome_now(plan: _Plan) -> str | Exception:
    """An applied-now plan's outcome, or the exception that says why it failed."""
    entity = plan.entity
    if plan.cause is not None and not isinstance(plan.cause, StoreError):
        return plan.cause  # the model, the database or a bug: the caller sees what it was
    if plan.error:
        if plan.permanent:
            return ValueError(plan.error)
        return RetryableStoreError(plan.error, plan.retry_after)
    if plan.outcome == "fenced":
        return RetryableStoreError(f"{entity.label}:{entity.uid}: another worker took over the entity "
                                   "while it was being written")
    return plan.outcome


def _apply(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts, *, embed_limit: int | None,
           chunk_limit: int | None, read_graph: bool) -> None:
    for plan in plans.values():
        try:
            ids.check_syncable_key(*plan.key)
        except ValueError as exc:  # no vector can ever exist for it: fail it alone, for good
            plan.outcome, plan.error, plan.permanent = "invalid", f"not a syncable entity key: {exc}", True
            continue
        if uid_withheld(plan.key[1]):
            # Never synced, and no vector id is ever made of it (reconciliation's full run deletes
            # any vector an older version left under such an id).
            plan.outcome, plan.note = "excluded", WITHHELD_UID
    valid = {key: plan for key, plan in plans.items() if not plan.error and not plan.outcome}
    try:
        _run(valid, counts, embed_limit, chunk_limit, read_graph)
    except Exception as exc:  # noqa: BLE001 — whatever broke, the batch's events must not stay in flight
        # A store failed as a whole (unreachable, rate limited, ...), the database (locked,
        # restarting), the model would not load, or a bug: the batch retries with backoff
        # (idempotent writes make redoing the entities that got through safe), and goes dead after
        # SYNC_MAX_ATTEMPTS with the error.
        for plan in valid.values():
            if plan.error or plan.outcome in ("deferred", "fenced"):
                continue  # failed on its own, never tried, or another worker's now
            plan.error, plan.cause = f"{type(exc).__name__}: {exc}", exc
            plan.permanent = isinstance(exc, StoreError) and not exc.retryable
            plan.retry_after = getattr(exc, "retry_after", None)
        kind = ("store" if isinstance(exc, StoreError)
                else "database" if isinstance(exc, queue.DATABASE_UNAVAILABLE) else "bug")
        SYNC_ERRORS.labels(kind).inc()
        if kind == "bug":
            log.exception("batch of %d entities failed unexpectedly", len(plans))
        else:
            log.warning("batch of %d entities failed: %s", len(plans), exc)
            if kind == "database":
                queue.reconnect_if_broken()  # PostgreSQL restarted: record the failure on a new connection
    _finish(plans, counts)


def _urgent_first(plans: dict[tuple[str, str], _Plan]) -> list[dict[tuple[str, str], _Plan]]:
    """The batch in the order it is applied: its HIGH streaming entities first, on their own, then
    the rest. A worker claims HIGH work first and fills the batch with lower work; applied
    together, a KEV waited for the whole batch's embedding (4.6 s behind 100 LOW reports, seen by
    bench/lag.py when a drain worker claimed one before the change poller could)."""
    urgent = {key: plan for key, plan in plans.items()
              if plan.priority == Priority.HIGH and all(e.backfill_id is None for e in plan.events)}
    if not urgent or len(urgent) == len(plans):
        return [plans]
    return [urgent, {key: plan for key, plan in plans.items() if key not in urgent}]


def _release_interrupted(events: Sequence[SyncEvent], *, timed_out: bool = False,
                         database_failed: bool = False) -> None:
    """The batch was interrupted: hand back what is still ours, no attempt counted (an interruption
    counted when a timeout did it). A second signal (django-q2's timeout and the sentinel's
    SIGTERM often arrive together) waits until the release is done, or it would cut it short.

    When the database itself failed the batch (`database_failed`: SQLite locked past its busy
    timeout, PostgreSQL restarting), the release is tried again until the database answers, for
    up to RELEASE_PATIENCE seconds: the events are then free at once, not when their leases expire
    (SYNC_VISIBILITY_TIMEOUT, minutes)."""
    give_up = time.monotonic() + (RELEASE_PATIENCE if database_failed else 0.0)
    pause = 0.2
    while True:
        blocked = _block_signals()
        try:
            released = queue.release(events, timed_out=timed_out)
        except Exception as exc:  # noqa: BLE001 — the interruption goes on; the leases expire instead
            if time.monotonic() + pause > give_up:
                log.exception("an interrupted batch could not hand back its %d events; they return when "
                              "their lease expires", len(events))
                return
            log.warning("could not hand back a batch of %d events yet (%s); trying again in %.1fs",
                        len(events), exc, pause)
        else:
            log.warning("batch interrupted: %d events handed back to the queue", released)
            return
        finally:
            if blocked is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        queue.reconnect_if_broken()
        time.sleep(pause)
        pause = min(2 * pause, 5.0)


def _block_signals():
    """Block the stopping signals in this thread; returns the mask to restore (None: unchanged)."""
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGALRM})
    except (AttributeError, ValueError, OSError):
        return None


class _LeaseKeeper:
    """Renews a batch's leases from a thread while the batch runs, however long one step takes."""

    def __init__(self, events: Sequence[SyncEvent]):
        self.events = list(events)
        self.every = max(0.2, settings.SYNC_VISIBILITY_TIMEOUT / 3)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._done.wait(self.every):
                try:
                    renewed = queue.extend_lease(self.events)
                except Exception as exc:  # noqa: BLE001 — the lease outlives a few failed renewals
                    log.warning("could not renew the lease of a batch of %d events: %s", len(self.events), exc)
                    try:  # PostgreSQL restarted: the next renewal reconnects
                        queue.reconnect_if_broken()
                    except Exception as closing:  # noqa: BLE001 — a broken connection may fail to close
                        log.warning("could not drop the lease keeper's broken connection: %s", closing)
                    continue
                if renewed < len(self.events):
                    log.warning("%d of %d events of this batch are no longer ours (lease expired); "
                                "their results will be dropped", len(self.events) - renewed, len(self.events))
                if not renewed:
                    # Nothing left to keep: every lease expired, or the batch was handed back by
                    # an interruption that landed where `__exit__` could not run (at its very
                    # start). Either way a keeper renewing nothing would live as long as its process.
                    return
        finally:
            connections.close_all()  # this thread's own connection


def _run(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts, embed_limit: int | None = None,
         chunk_limit: int | None = None, read_graph: bool = False) -> None:
    # The graph, our records, then the stored vectors, one after the other. Either order of the
    # graph and vector reads is safe: what is written is the graph state read, and the version
    # guard compares it with what was fetched. (They were read side by side in two threads; on
    # two cores with Neo4j beside the worker, the GIL made that slower: metadata-only rounds
    # went from 1,307 to 1,774 entities/s once read in turn, medians of alternated rounds.)
    if read_graph:
        _read_graph(plans)
    records = _records(plans)
    for key, plan in plans.items():
        status, chunk_count, vector_version = records.get(key, (None, 0, None))
        plan.record_status, plan.vector_version = status, vector_version
        # Only a record whose last write completed knows every chunk written. A failed one may
        # have left part of a write behind, and reconciliation's repairs look for strays: list
        # the store. Without a record (or after a delete), look for the ids any text would have.
        plan.list_store = status == RecordStatus.FAILED or any(e.source == "reconcile" for e in plan.events)
        plan.probe = status not in KNOWN_CHUNKS and not plan.list_store
        if status in KNOWN_CHUNKS:
            plan.previous_ids = _recorded_ids(key, chunk_count)
    existing = _fetch_existing(plans)
    _build_documents(plans, existing)
    existing.update(_fetch_new_chunks(plans, existing))
    _decide(plans, existing, embed_limit, chunk_limit)
    _write(plans, counts)


def _records(plans: dict[tuple[str, str], _Plan]) -> dict[tuple[str, str], tuple[str, int, int | None]]:
    """(status, chunk count, vector version) of each entity's sync record."""
    return {(label, uid): (status, chunk_count, vector_version)
            for rows in for_entities(SyncRecord.objects.all(), plans)
            for label, uid, status, chunk_count, vector_version
            in rows.values_list("label", "uid", "status", "chunk_count", "vector_version")}


def _recorded_ids(key: tuple[str, str], chunk_count: int) -> set[str]:
    label, uid = key
    # Whether the last write had one chunk (no suffix) or several, these ids cover it.
    return {ids.vector_id(label, uid)} | {ids.vector_id(label, uid, n) for n in range(max(chunk_count, 1))}


def _read_graph(plans: dict[tuple[str, str], _Plan]) -> None:
    entities = graph_store().get_entities(list(plans))
    for key, plan in plans.items():
        plan.entity = entities.get(key)


def _build_documents(plans: dict[tuple[str, str], _Plan], existing: dict[str, Metadata]) -> None:
    for plan in plans.values():
        if plan.outcome:
            continue
        if plan.entity is None:
            plan.action = "delete"
            continue
        try:
            plan.document = build_document(plan.entity, stored_snippets=_stored_snippets(plan, existing))
        except ValueError as exc:
            plan.outcome, plan.error, plan.permanent = "invalid", f"cannot build the document: {exc}", True
            continue
        if plan.document is None:
            plan.action = "exclude"


def _fetch_existing(plans: dict[tuple[str, str], _Plan]) -> dict[str, Metadata]:
    """The stored vectors' metadata for every entity in the batch: the ids its record knows, all
    its ids in the store (listed), or — for entities no record describes, such as a first sync —
    the ids any text would have, asked for in one fetch for the whole batch, and then the further
    chunks a stored first chunk declares. Values are never needed: what is written is built from
    the graph."""
    store = vector_store()
    wanted: set[str] = set()
    probed: list[_Plan] = []
    for plan in plans.values():
        if plan.outcome:
            continue
        if plan.list_store:
            prefix = ids.entity_prefix(*plan.key)
            plan.previous_ids |= {vid for vid in store.list_ids(prefix) if ids.belongs_to_entity(vid, *plan.key)}
        elif plan.probe:
            plan.previous_ids |= {ids.vector_id(*plan.key), ids.vector_id(*plan.key, 0)}
            probed.append(plan)
        wanted |= plan.previous_ids
    found = store.fetch_metadata(sorted(wanted)) if wanted else {}
    further: set[str] = set()
    for plan in probed:
        first = found.get(ids.vector_id(*plan.key, 0))
        declared = _whole(first.get("chunks")) if first else None
        if declared and declared > 1:
            more = {ids.vector_id(*plan.key, n) for n in range(1, min(declared, MAX_PROBED_CHUNKS))}
            plan.previous_ids |= more
            further |= more
    if further:
        found.update(store.fetch_metadata(sorted(further)))
    return found


MAX_PROBED_CHUNKS = 10_000  # a declared chunk count beyond this is nonsense metadata, not a text


def _fetch_new_chunks(plans: dict[tuple[str, str], _Plan], existing: dict[str, Metadata]) -> dict[str, Metadata]:
    """Chunk ids a longer text now needs beyond those already looked at: one of them may have
    been written meanwhile by a newer dual-write, which the version guard must see. (A listed
    entity's ids are all known already.)"""
    wanted: set[str] = set()
    for plan in plans.values():
        if plan.outcome or plan.document is None or plan.list_store:
            continue
        wanted |= {chunk.vector_id for chunk in plan.document.chunks} - plan.previous_ids
    return vector_store().fetch_metadata(sorted(wanted)) if wanted else {}


def _stored_snippets(plan: _Plan, existing: dict[str, Metadata]):
    """For build_document: the stored chunks' snippets when they hold the text with this content
    hash, split by this model's tokenizer — every chunk present under the ids such a text gets,
    none extra, each snippet found in the text — else None."""
    present = [(vid, existing[vid]) for vid in plan.previous_ids if vid in existing]
    model = model_id()

    def snippets(digest: str, text: str) -> list[str] | None:
        count = len(present)
        if not count:
            return None
        by_chunk: dict[int, str] = {}
        for vid, meta in present:
            chunk, snippet = _whole(meta.get("chunk")), meta.get("text")
            if (meta.get("content_hash") != digest or meta.get("model") != model
                    or _whole(meta.get("chunks")) != count or chunk is None or not isinstance(snippet, str)
                    or vid != ids.vector_id(*plan.key, None if count == 1 else chunk)):
                return None
            by_chunk[chunk] = snippet
        if sorted(by_chunk) != list(range(count)):
            return None
        # The content hash ignores whitespace; the chunks do not (they prefer to end at paragraph
        # and line breaks). Each snippet must still be found in the text, in order.
        position = 0
        for n in range(count):
            found = text.find(by_chunk[n].removesuffix(ELLIPSIS), position)
            if found < 0:
                return None
            position = found + 1
        return [by_chunk[n] for n in range(count)]

    return snippets


def _decide(plans, existing, embed_limit: int | None = None, chunk_limit: int | None = None) -> None:
    """For each entity: the texts to embed, metadata to rewrite and ids to delete."""
    model = model_id()
    embedding = chunks = 0
    for plan in plans.values():
        if plan.outcome:
            continue
        present = {vid: existing[vid] for vid in plan.previous_ids if vid in existing}
        if plan.action in ("delete", "exclude"):
            plan.to_delete |= present.keys()
            plan.outcome = "deleted" if plan.action == "delete" else "excluded"
            continue
        document = plan.document
        new_ids = {chunk.vector_id for chunk in document.chunks}
        present |= {vid: existing[vid] for vid in new_ids if vid in existing}
        stored_version = max((_version(r) for r in present.values()), default=0)
        if stored_version > document.version:
            plan.outcome = "stale"  # a newer graph version is already in the store
            continue
        # Same text embedded by the same model: the vectors stand, only metadata may change.
        same_content = bool(new_ids) and all(
            vid in present and present[vid].get("content_hash") == document.content_hash
            and present[vid].get("model") == model for vid in new_ids)
        if new_ids and not same_content:
            size = len(document.chunks)
            if ((embed_limit is not None and embedding >= embed_limit)
                    or (chunk_limit is not None and chunks and chunks + size > chunk_limit)):
                plan.outcome = "deferred"
                continue
            embedding += 1
            chunks += size
        # Surplus chunks of a text that shrank (or went from one chunk to several).
        plan.to_delete |= present.keys() - new_ids
        if same_content:
            plan.to_update = {c.vector_id: c.metadata for c in document.chunks if present[c.vector_id] != c.metadata}
            plan.outcome = "metadata_only" if plan.to_update else "unchanged"
        else:
            plan.to_write = list(document.chunks)
            plan.outcome = "upserted"


def _whole(value) -> int | None:
    """A stored whole number (Pinecone hands numbers back as floats), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():  # also NaN and infinities
        return None
    return int(value)


def _version(metadata: Metadata) -> int:
    try:
        return int(metadata.get("version") or 0)
    except (TypeError, ValueError):
        return 0


def _write(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts) -> None:
    active = [p for p in plans.values() if not p.error and (p.to_write or p.to_update or p.to_delete)]
    if not active:
        return
    writing = [(plan, chunk) for plan in active for chunk in plan.to_write]
    values = None
    if writing:
        values = _embed(writing, counts)
    # The fence: embedding may have taken long enough for our lease to run out and another worker
    # to take the events (and write a newer version). Only what is still ours is written.
    ours = queue.hold([event for plan in active for event in plan.events])
    for plan in active:
        if not all(event.id in ours for event in plan.events):
            plan.outcome = "fenced"
    live = [p for p in active if p.outcome != "fenced"]
    store = vector_store()
    owner = {vid: plan for plan in live for vid in (*(c.vector_id for c in plan.to_write), *plan.to_update)}
    records = [VectorRecord(chunk.vector_id, vector.tolist(), chunk.metadata)
               for (plan, chunk), vector in zip(writing, values if values is not None else [], strict=True)
               if plan.outcome != "fenced"]
    if records:
        _mark_written(live, lambda p: p.to_write)
        result = store.upsert(records)
        counts.vectors_written += result.written
        _record_failures(result, owner)
    updates = {vid: meta for plan in live for vid, meta in plan.to_update.items()}
    if updates:
        _mark_written(live, lambda p: p.to_update)
        result = store.update_metadata(updates)
        counts.vectors_written += result.written
        _record_failures(result, owner)
    doomed = {vid for plan in live for vid in plan.to_delete}
    if doomed:
        _mark_written(live, lambda p: p.to_delete)
        counts.vectors_deleted += store.delete(sorted(doomed))


def _embed(writing: list, counts: ApplyCounts) -> list:
    """The vector of each (plan, chunk) to write: those a caller computed already (`_Plan.embedded`,
    same text), the others embedded in one call."""
    missing = [chunk.text for plan, chunk in writing if chunk.text not in plan.embedded]
    encoded = iter(get_embedder().encode(missing)) if missing else iter(())
    counts.embedded_chunks += len(missing)
    EMBEDDED_CHUNKS.inc(len(missing))
    return [plan.embedded[chunk.text] if chunk.text in plan.embedded else next(encoded)
            for plan, chunk in writing]


def _mark_written(plans: list[_Plan], part) -> None:
    for plan in plans:
        if part(plan):
            plan.wrote = True


def _record_failures(result, owner) -> None:
    for vid, error in result.failed.items():
        plan = owner.get(vid)
        if plan is None or plan.error:
            continue
        plan.error = f"vector {vid} refused: {error}"
        plan.permanent = vid not in result.retryable


def _finish(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts) -> None:
    now = timezone.now()
    neo4j_now = now + timedelta(seconds=_clock_offset())
    deferred = [e for p in plans.values() if p.outcome == "deferred" and not p.error for e in p.events]
    settling = [p for p in plans.values() if not (p.outcome == "deferred" and not p.error)]
    conflicted = _open_conflicts([p.key for p in settling if p.outcome in ("upserted", "metadata_only", "unchanged")])
    done: dict[str, list[SyncEvent]] = {}
    lags: dict[int, float] = {}
    records: list[SyncRecord] = []
    failed: list[_Plan] = []
    fenced: list[_Plan] = []
    with transaction.atomic():
        # Records and acks only for events still ours, locked until this commits: a worker that
        # lost its lease must not overwrite what the worker that took over wrote.
        ours = queue.held([e for p in settling for e in p.events])
        for plan in settling:
            if plan.outcome == "fenced" or not all(e.id in ours for e in plan.events):
                plan.outcome = "fenced"
                fenced.append(plan)
                continue
            if plan.error:
                # The record is saved before the event is requeued: once requeued, another worker
                # may claim it at once, and its newer record must not be overwritten by this failure.
                failed.append(plan)
                records.append(_record(plan, RecordStatus.FAILED, now, error=plan.error))
                continue
            done.setdefault(plan.outcome, []).extend(plan.events)
            if plan.outcome == "stale":
                continue  # the newer write owns the record
            records.append(_record(plan, _status_after(plan, conflicted), now, error=plan.note))
            lag = _lag(plan, neo4j_now)
            if lag is not None:
                lags.update(dict.fromkeys((e.id for e in plan.events), lag))
        _save_records(records)
        for outcome, events in done.items():
            queue.ack(events, outcome, lags)
    for outcome, events in done.items():
        keys = {(e.label, e.uid) for e in events}
        setattr(counts, outcome, getattr(counts, outcome) + len(keys))
        EVENTS_APPLIED.labels(outcome).inc(len(keys))
    for plan in plans.values():
        if plan.events and plan.events[0].id in lags:
            if any(e.backfill_id is None for e in plan.events):
                SYNC_LAG.labels(Priority(plan.priority).label).observe(lags[plan.events[0].id])
            else:
                BACKFILL_LAG.observe(lags[plan.events[0].id])
    _settle_pending([key for key, plan in plans.items() if plan.outcome == "stale"])
    queue.release(deferred)
    counts.deferred += len({(e.label, e.uid) for e in deferred})
    for plan in failed:
        SYNC_ERRORS.labels("permanent" if plan.permanent else "retryable").inc()
        for event in plan.events:
            if queue.fail(event, plan.error, permanent=plan.permanent,
                          retry_after=plan.retry_after) == SyncEvent.Status.DEAD:
                counts.dead += 1
            else:
                counts.retried += 1
    _after_fencing(fenced, counts)


def _after_fencing(fenced: list[_Plan], counts: ApplyCounts) -> None:
    if not fenced:
        return
    counts.fenced += len(fenced)
    EVENTS_APPLIED.labels("fenced").inc(len(fenced))
    log.warning("%d entities of this batch were taken over by another worker after our lease ran out; "
                "their results were dropped", len(fenced))
    # Vectors that reached the store before we noticed may be older than the other worker's:
    # apply the entity once more, from the graph as it is then.
    repair = [queue.Work(label=p.key[0], uid=p.key[1], priority=p.priority, source="fenced")
              for p in fenced if p.wrote]
    if repair:
        queue.enqueue_many(repair)


def _clock_offset() -> float:
    try:
        return graph_store().clock_offset()
    except Exception as exc:  # noqa: BLE001 — lag is then measured on this host's clock
        log.warning("could not read Neo4j's clock, measuring lag on this host's: %s", exc)
        return 0.0


def _lag(plan: _Plan, neo4j_now) -> float | None:
    """Seconds from the first unsynced change to now (Neo4j's clock), for an apply that brought a
    graph version the index did not have; None for work that changed nothing (a resync of
    unchanged data must not report the data's age as lag)."""
    if plan.outcome not in WRITING:
        return None  # unchanged: the index had this version already
    if plan.outcome == "deleted":
        brought = plan.record_status not in (None, RecordStatus.DELETED, RecordStatus.EXCLUDED)
    else:
        version = plan.graph_version
        brought = version is not None and (plan.vector_version is None or version > plan.vector_version)
    if not brought:
        return None
    changes = [e.changed_at for e in plan.events if e.changed_at is not None]
    if plan.entity is not None:
        changes.append(plan.entity.updated_at)
    if not changes:
        return None
    return max((neo4j_now - min(changes)).total_seconds(), 0.0)


def _settle_pending(keys: list[tuple[str, str]]) -> None:
    """A stale event writes no record (the newer write owns it), yet enqueuing it marked the record
    pending: with no work left for the entity, the record is settled again."""
    if not keys:
        return
    active = SyncEvent.objects.filter(status__in=[SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT])
    busy = {(label, uid) for rows in for_entities(active, keys) for label, uid in rows.values_list("label", "uid")}
    idle = [key for key in keys if key not in busy]
    conflicted = _open_conflicts(idle)
    for records in for_entities(SyncRecord.objects.filter(status=RecordStatus.PENDING), idle):
        records.exclude(uid__in=[uid for _, uid in conflicted]).update(status=RecordStatus.IN_SYNC)
        records.filter(uid__in=[uid for _, uid in conflicted]).update(status=RecordStatus.CONFLICT)


def _open_conflicts(keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    if not keys:
        return set()
    return {(label, uid) for rows in for_entities(Conflict.objects.filter(status=Conflict.Status.OPEN), keys)
            for label, uid in rows.values_list("label", "uid")}


def _status_after(plan: _Plan, conflicted: set[tuple[str, str]]) -> str:
    if plan.outcome == "deleted":
        return RecordStatus.DELETED
    if plan.outcome == "excluded":
        return RecordStatus.EXCLUDED
    return RecordStatus.CONFLICT if plan.key in conflicted else RecordStatus.IN_SYNC


def _record(plan: _Plan, status: str, now, error: str = "") -> SyncRecord:
    label, uid = plan.key
    entity, document = plan.entity, plan.document
    synced = status != RecordStatus.FAILED
    return SyncRecord(
        label=label, uid=uid,
        graph_version=plan.graph_version,
        vector_version=document.version if (document is not None and synced) else None,
        content_hash=document.content_hash if document is not None else "",
        chunk_count=len(document.chunks) if document is not None else 0,
        status=status,
        changed_at=entity.updated_at if entity else None,
        synced_at=now if synced else None,
        last_error=error[:5000],
    )


def _save_records(records: list[SyncRecord]) -> None:
    # A failure must not erase what we know was written before: keep vector fields as they are.
    SyncRecord.upsert([r for r in records if r.status != RecordStatus.FAILED], RECORD_FIELDS)
    SyncRecord.upsert([r for r in records if r.status == RecordStatus.FAILED], FAILED_RECORD_FIELDS)


RECORD_FIELDS = ("graph_version", "vector_version", "content_hash", "chunk_count", "status", "changed_at",
                 "synced_at", "last_error")
FAILED_RECORD_FIELDS = ("graph_version", "status", "changed_at", "last_error")

"""Apply a claimed batch of sync events: make each entity's vectors match its current graph state.

An event only says "look at this entity"; what gets written is always read from Neo4j at apply
time, so a late or repeated event cannot write old content. What can still go wrong is two
workers racing on one entity: the version guard refuses to replace a vector built from a newer
graph version with an older one (Pinecone has no conditional write, so the guard is ours).

Per batch: one graph read per label, one vector fetch, one embedding call, one upsert, one
delete, bulk record updates. Content whose hash is unchanged is not embedded again: only its
metadata is rewritten (or nothing, when that is unchanged too).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

from sync import ids, queue
from sync.embedding import get_embedder
from sync.models import Priority, SyncEvent, SyncRecord, for_entities
from sync.observe.metrics import EMBEDDED_CHUNKS, EVENTS_APPLIED, SYNC_ERRORS, SYNC_LAG
from sync.policy import ELLIPSIS, MAX_UID_CHARS, build_document
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity, Metadata, RetryableStoreError, StoreError, VectorRecord

log = logging.getLogger(__name__)

RecordStatus = SyncRecord.Status


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
    deferred: int = 0  # needed embedding beyond the batch's embed_limit: handed back to the queue
    embedded_chunks: int = 0
    vectors_written: int = 0
    vectors_deleted: int = 0
    seconds: float = 0.0

    def add(self, other: ApplyCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def events(self) -> int:
        """Events finished or failed; deferred ones are back in the queue and counted when applied."""
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
    previous_ids: set[str] = field(default_factory=set)
    list_store: bool = False  # list the entity's ids in the store instead of trusting the record
    outcome: str = ""
    error: str = ""
    permanent: bool = False
    retry_after: float | None = None

    @property
    def priority(self) -> int:
        return min((e.priority for e in self.events), default=Priority.HIGH)


def apply_events(events: Sequence[SyncEvent], *, embed_limit: int | None = None) -> ApplyCounts:
    """Apply a claimed batch. At most `embed_limit` entities are embedded (None: all); events of
    entities beyond it are handed back to the queue untouched, so a large batch claimed in the
    expectation of cheap (metadata-only) work cannot turn into minutes of embedding."""
    started = time.monotonic()
    counts = ApplyCounts()
    if not events:
        return counts
    plans: dict[tuple[str, str], _Plan] = {}
    for event in events:
        key = (event.label, event.uid)
        plans.setdefault(key, _Plan(key=key, events=[])).events.append(event)
    for plan in plans.values():
        try:
            check_key(*plan.key)
        except ValueError as exc:  # no vector can ever exist for it: fail it alone, for good
            plan.outcome, plan.error, plan.permanent = "invalid", f"not a syncable entity key: {exc}", True
    valid = {key: plan for key, plan in plans.items() if not plan.error}
    try:
        _run(valid, counts, embed_limit, read_graph=True)
    except Exception as exc:  # noqa: BLE001 — whatever broke, the batch's events must not stay in flight
        # A store failed as a whole (unreachable, rate limited, ...), or a bug: the batch retries
        # with backoff (idempotent writes make redoing the entities that got through safe), and
        # goes dead after SYNC_MAX_ATTEMPTS with the error.
        for plan in valid.values():
            if plan.error or plan.outcome == "deferred":
                continue  # failed on its own (e.g. a document that cannot be built), or never tried
            plan.error = f"{type(exc).__name__}: {exc}"
            plan.permanent = isinstance(exc, StoreError) and not exc.retryable
            plan.retry_after = getattr(exc, "retry_after", None)
        SYNC_ERRORS.labels("store" if isinstance(exc, StoreError) else "bug").inc()
        if isinstance(exc, StoreError):
            log.warning("batch of %d events failed: %s", len(events), exc)
        else:
            log.exception("batch of %d events failed unexpectedly", len(events))
    _finish(plans, counts)
    counts.seconds = time.monotonic() - started
    return counts


def check_key(label: str, uid: str) -> None:
    """ValueError for an entity key that can never have a vector (or a sync record)."""
    ids.vector_id(label, uid)
    if len(uid) > MAX_UID_CHARS:
        raise ValueError(f"uid longer than {MAX_UID_CHARS} characters")


def apply_now(entity: Entity) -> str:
    """Bring one entity's vectors in line right now (the dual-write path); raises on failure.

    Returns the outcome (upserted, metadata_only, unchanged, excluded, stale).
    """
    plans = {entity.key: _Plan(key=entity.key, events=[], entity=entity)}
    counts = ApplyCounts()
    _run(plans, counts)
    plan = plans[entity.key]
    if plan.error:
        if plan.permanent:
            raise ValueError(plan.error)
        raise RetryableStoreError(plan.error, plan.retry_after)
    if plan.outcome != "stale":  # the newer write owns the record
        _save_records([_record(plan, _status_after(plan), timezone.now())])
    return plan.outcome


def _run(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts, embed_limit: int | None = None,
         read_graph: bool = False) -> None:
    # The graph is read in a thread while our records and the stored vectors are read here: both
    # stores answer without holding the GIL. Either order of the two reads is safe: what is
    # written is the graph state read, and the version guard compares it with what was fetched.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-read") as pool:
        reading = pool.submit(_read_graph, plans) if read_graph else None
        records = _records(plans)
        for key, plan in plans.items():
            status, chunk_count = records.get(key, (None, 0))
            plan.previous_ids = _recorded_ids(key, chunk_count)
            # Only an in_sync record knows every chunk written; otherwise (failed part-way, or no
            # record) ask the store, so chunks of an older, longer text cannot be left behind.
            plan.list_store = status != RecordStatus.IN_SYNC
        existing = _fetch_existing(plans)
        if reading is not None:
            reading.result()
    _build_documents(plans, existing)
    existing.update(_fetch_new_chunks(plans, existing))
    _write(_decide(plans, existing, embed_limit), counts)


def _records(plans: dict[tuple[str, str], _Plan]) -> dict[tuple[str, str], tuple[str, int]]:
    """(status, chunk count) of each entity's sync record."""
    return {(label, uid): (status, chunk_count)
            for rows in for_entities(SyncRecord.objects.all(), plans)
            for label, uid, status, chunk_count in rows.values_list("label", "uid", "status", "chunk_count")}


def _recorded_ids(key: tuple[str, str], chunk_count: int) -> set[str]:
    label, uid = key
    try:
        base = ids.vector_id(label, uid)
    except ValueError:
        return set()
    # Whether the last write had one chunk (no suffix) or several, these ids cover it.
    return {base} | {ids.vector_id(label, uid, n) for n in range(max(chunk_count, 1))}


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
    """The stored vectors' metadata for every entity in the batch: the ids its record knows, or
    all its ids in the store. Values are never needed: what is written is built from the graph."""
    wanted: set[str] = set()
    store = vector_store()
    for plan in plans.values():
        if plan.outcome:
            continue
        if plan.list_store:
            prefix = ids.entity_prefix(*plan.key)
            plan.previous_ids |= {vid for vid in store.list_ids(prefix) if ids.belongs_to_entity(vid, *plan.key)}
        wanted |= plan.previous_ids
    return store.fetch_metadata(sorted(wanted)) if wanted else {}


def _fetch_new_chunks(plans: dict[tuple[str, str], _Plan], existing: dict[str, Metadata]) -> dict[str, Metadata]:
    """Chunk ids a longer text now needs beyond those the record knew of: one of them may have
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
    hash — every chunk present under the ids such a text gets, none extra, each snippet found in
    the text — else None."""
    present = [(vid, existing[vid]) for vid in plan.previous_ids if vid in existing]

    def snippets(digest: str, text: str) -> list[str] | None:
        count = len(present)
        if not count:
            return None
        by_chunk: dict[int, str] = {}
        for vid, meta in present:
            chunk, snippet = _whole(meta.get("chunk")), meta.get("text")
            if (meta.get("content_hash") != digest or _whole(meta.get("chunks")) != count
                    or chunk is None or not isinstance(snippet, str)
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


@dataclass
class _Work:
    to_write: list = field(default_factory=list)  # (plan, chunk) pairs to embed and upsert
    to_update: dict = field(default_factory=dict)  # vector id -> new metadata
    to_delete: set = field(default_factory=set)  # vector ids
    owner: dict = field(default_factory=dict)  # vector id -> plan, for per-record failures


def _decide(plans, existing, embed_limit: int | None = None) -> _Work:
    """Split the batch into texts to embed, metadata to rewrite and ids to delete."""
    work = _Work()
    embedding = 0
    for plan in plans.values():
        if plan.outcome:
            continue
        present = {vid: existing[vid] for vid in plan.previous_ids if vid in existing}
        if plan.action in ("delete", "exclude"):
            work.to_delete |= present.keys()
            plan.outcome = "deleted" if plan.action == "delete" else "excluded"
            continue
        document = plan.document
        new_ids = {chunk.vector_id for chunk in document.chunks}
        present |= {vid: existing[vid] for vid in new_ids if vid in existing}
        stored_version = max((_version(r) for r in present.values()), default=0)
        if stored_version > document.version:
            plan.outcome = "stale"  # a newer graph version is already in the store
            continue
        same_content = bool(new_ids) and all(
            vid in present and present[vid].get("content_hash") == document.content_hash
            for vid in new_ids)
        if new_ids and not same_content:
            if embed_limit is not None and embedding >= embed_limit:
                plan.outcome = "deferred"
                continue
            embedding += 1
        # Surplus chunks of a text that shrank (or went from one chunk to several).
        work.to_delete |= present.keys() - new_ids
        if same_content:
            changed = {c.vector_id: c.metadata for c in document.chunks if present[c.vector_id] != c.metadata}
            work.to_update.update(changed)
            plan.outcome = "metadata_only" if changed else "unchanged"
        else:
            work.to_write.extend((plan, chunk) for chunk in document.chunks)
            plan.outcome = "upserted"
        work.owner.update(dict.fromkeys(new_ids, plan))
    return work


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


def _write(work: _Work, counts: ApplyCounts) -> None:
    store = vector_store()
    if work.to_write:
        values = get_embedder().encode([chunk.text for _, chunk in work.to_write])
        counts.embedded_chunks += len(work.to_write)
        EMBEDDED_CHUNKS.inc(len(work.to_write))
        records = [VectorRecord(chunk.vector_id, vector.tolist(), chunk.metadata)
                   for (_, chunk), vector in zip(work.to_write, values, strict=True)]
        result = store.upsert(records)
        counts.vectors_written += result.written
        _record_failures(result, work.owner)
    if work.to_update:
        result = store.update_metadata(work.to_update)
        counts.vectors_written += result.written
        _record_failures(result, work.owner)
    if work.to_delete:
        counts.vectors_deleted += store.delete(sorted(work.to_delete))


def _record_failures(result, owner) -> None:
    for vid, error in result.failed.items():
        plan = owner.get(vid)
        if plan is None or plan.error:
            continue
        plan.error = f"vector {vid} refused: {error}"
        plan.permanent = vid not in result.retryable


def _finish(plans: dict[tuple[str, str], _Plan], counts: ApplyCounts) -> None:
    now = timezone.now()
    done: dict[str, list[SyncEvent]] = {}
    records: list[SyncRecord] = []
    failed: list[_Plan] = []
    deferred: list[SyncEvent] = []
    lags: dict[int, list[float]] = defaultdict(list)
    for plan in plans.values():
        if plan.outcome == "deferred" and not plan.error:
            deferred.extend(plan.events)
            counts.deferred += 1
            continue
        if plan.error:
            # The record is saved before the event is requeued: once requeued, another worker may
            # claim it at once, and its newer record must not be overwritten by this failure.
            failed.append(plan)
            SYNC_ERRORS.labels("permanent" if plan.permanent else "retryable").inc()
            records.append(_record(plan, RecordStatus.FAILED, now, error=plan.error))
            continue
        done.setdefault(plan.outcome, []).extend(plan.events)
        setattr(counts, plan.outcome, getattr(counts, plan.outcome) + 1)
        if plan.outcome == "stale":
            continue  # the newer write owns the record
        records.append(_record(plan, _status_after(plan), now))
        if plan.outcome in ("upserted", "metadata_only", "deleted", "unchanged"):
            changed_at = min((e.changed_at for e in plan.events if e.changed_at), default=None)
            if changed_at:
                lags[plan.priority].append(max((now - changed_at).total_seconds(), 0))
    for outcome, events in done.items():
        EVENTS_APPLIED.labels(outcome).inc(len({(e.label, e.uid) for e in events}))
    for priority, seconds in lags.items():
        histogram = SYNC_LAG.labels(Priority(priority).label)
        for value in seconds:
            histogram.observe(value)
    with transaction.atomic():
        _save_records(records)
        for outcome, events in done.items():
            queue.ack(events, outcome)
    queue.release(deferred)
    for plan in failed:
        for event in plan.events:
            if queue.fail(event, plan.error, permanent=plan.permanent,
                          retry_after=plan.retry_after) == SyncEvent.Status.DEAD:
                counts.dead += 1
            else:
                counts.retried += 1


def _status_after(plan: _Plan) -> str:
    return {"deleted": RecordStatus.DELETED, "excluded": RecordStatus.EXCLUDED}.get(
        plan.outcome, RecordStatus.IN_SYNC)


def _record(plan: _Plan, status: str, now, error: str = "") -> SyncRecord:
    label, uid = plan.key
    entity, document = plan.entity, plan.document
    synced = status != RecordStatus.FAILED
    return SyncRecord(
        label=label, uid=uid,
        graph_version=entity.version if entity else None,
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

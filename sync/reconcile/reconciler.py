"""Reconciliation: compare the graph, the vector store and our sync records; repair what is safe.

The sync record is never trusted alone. A full run reads everything in bounded pages, so its
memory stays flat however large the index (8 bytes per entity and per vector, nothing more):

1. The graph pass: each synced label in uid pages (the next page read while this one is
   compared). For a page, the vectors its entities' texts have are fetched by id (≤1000 a request,
   metadata only; which ids, our records suggest, and what the store answers confirms or
   corrects) and compared with the entities.
   The hashes of the vector ids looked at, and of the uids seen, are kept.
2. Our records of each label: a record (older than the run) whose uid the graph pass did not
   see is checked against the graph once more, then marked deleted.
3. The vector pass: every id in the store, listed in pages. Ids the graph pass did not look at
   are fetched: vectors of never-synced labels, orphans (no entity), and stray chunks beyond an
   entity's text (found only here).

An incremental run does steps 1's fetch and compare for the entities changed in a recent window.

Drift and what is done about it (REPAIR):

| drift            | meaning                                                  | repair                  |
|------------------|----------------------------------------------------------|-------------------------|
| missing_vector   | an entity with text has no vector                        | enqueue a resync        |
| orphan_vector    | a vector whose entity does not exist (deleted)           | delete the vector       |
| stale_vector     | vector version < graph version                           | enqueue a resync        |
| vector_ahead     | vector version > graph version                           | open a conflict (never automatic) |
| content_drift    | same version, different content hash, metadata, chunks or embedding model | enqueue a resync |
| policy_violation | a never-synced label, a field outside the allow-list, or contact details (in the vector id or any metadata value), in the store | delete at once (and resync a synced entity) |

An entity whose uid holds contact details (`sync.policy.uid_withheld`) is never synced: no vector
id is made of its uid here either (its vectors, should an older version have written any, are
found by the vector pass, which sees contact details in their ids, and deleted).

A resync the reconciliation asks for lists the entity's ids in the store when applied, so stray
chunks go too. Findings are acted upon in batches of ACT_EVERY as they come: no repair holds the
database's write lock for long, and a run never holds every finding at once.

The vector store is read before the graph (the vector pass's orphans are confirmed against the
graph again before anything is deleted): a vector written after its snapshot cannot be taken for
an orphan. Entities with queued or in-flight events are work in progress, not drift; so is a
change capture has not queued yet (a write after its cursor, or a late commit in its overlap
window: `sync.capture.unread`). A missing, stale or orphan vector is confirmed against the graph,
our events and capture's cursor as they are when it is acted upon; what a change on its way
explains is counted apart (`ReconcileRun.in_flight`, shown with the run), neither drift nor repaired.

A run ends `succeeded` or `failed` — also when it is interrupted (django-q2's timeout, SIGTERM);
a run whose process was killed outright is marked failed by `fail_abandoned`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from array import array
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sync import backfill, capture, ids, queue, shutdown
from sync.conflicts import records as conflicts
from sync.embedding import model_id
from sync.models import Backfill, Conflict, ReconcileRun, SyncEvent, SyncRecord, for_entities
from sync.observe.counters import CONSISTENCY_VIOLATIONS, DRIFT_KINDS
from sync.policy import (
    ENGINE_KEYS,
    SNIPPET_MAX_CHARS,
    allowed_metadata,
    has_contact_details,
    policy_for,
    synced_labels,
    text_and_hash,
    uid_withheld,
)
from sync.stores import graph_store, vector_store
from sync.stores.base import Change, Entity

log = logging.getLogger(__name__)

KINDS = DRIFT_KINDS  # named once, with the counter they label
REPAIR = {
    "missing_vector": "resync",
    "orphan_vector": "delete",
    "stale_vector": "resync",
    "vector_ahead": "conflict",
    "content_drift": "resync",
    "policy_violation": "delete",
}
FETCH_BATCH = 1000
GRAPH_PAGE = 2000
ACT_EVERY = 1000  # findings acted upon (repairs committed) at a time
REPAIR_BATCH = 500  # events enqueued per transaction
PROGRESS_SECONDS = 2.0
MAX_CHUNKS = 10_000  # a declared chunk count beyond this is broken metadata, not a text
SAMPLES_PER_KIND = 5
# Metadata fields are compared only below this size: above it, build_document shrinks them to fit
# Pinecone's 40 KB limit and a field-by-field comparison would report drift that is not there.
COMPARABLE_METADATA_BYTES = 30_000
ABANDONED_AFTER = timedelta(minutes=10)  # a running run that saved no progress for this long died
# Drift that a change on its way (an event pending, or a change capture is still to queue) explains.
IN_FLIGHT_KINDS = ("missing_vector", "stale_vector", "orphan_vector")


class StoredEntity:
    """What the vector store holds for one entity: its chunks' ids and the metadata that matters.
    (A plain class with slots: reconciliation makes one per entity.)"""

    __slots__ = ("ids", "versions", "hashes", "models", "chunks_declared", "fields")

    def __init__(self, fields: dict[str, Any] | None = None):
        self.ids: list[str] = []
        self.versions: set[int] = set()
        self.hashes: set[str] = set()
        self.models: set[str] = set()
        self.chunks_declared: set[int] = set()
        self.fields = fields  # allow-listed metadata of the first chunk seen

    def add(self, vid: str, metadata: dict) -> None:
        self.ids.append(vid)
        self.versions.add(_int(metadata.get("version")))
        self.hashes.add(str(metadata.get("content_hash", "")))
        self.models.add(str(metadata.get("model") or ""))
        self.chunks_declared.add(_int(metadata.get("chunks"), 1))

    @property
    def version(self) -> int:
        return max(self.versions, default=0)


@dataclass
class Finding:
    kind: str
    label: str
    uid: str
    detail: str
    vector_ids: list[str] = field(default_factory=list)
    graph_version: int | None = None
    vector_version: int | None = None
    other: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    """What the engine would write for one entity now, built from the graph by the policy."""

    text: str
    content_hash: str
    metadata: dict[str, Any]
    metadata_error: str  # why the metadata cannot be built ("" when it can)
    snippet: str | None  # the text snippet a one-chunk text travels with (None: longer, or chunked)

    @classmethod
    def of(cls, policy, entity: Entity) -> Expected:
        text, digest = text_and_hash(policy, entity.properties)
        try:
            metadata, error = allowed_metadata(policy, entity.properties), ""
        except ValueError as exc:
            metadata, error = {}, str(exc)
        snippet = text if len(text) <= SNIPPET_MAX_CHARS else None  # longer: its chunks' snippets are searched
        return cls(text, digest, metadata, error, snippet)


_ABSENT = object()


@functools.lru_cache(maxsize=256)
def _stored_keys(policy) -> frozenset[str]:
    """The metadata keys a vector of the label may carry."""
    return frozenset(policy.metadata_fields) | frozenset(ENGINE_KEYS)


class Reconciler:
    def __init__(self, run: ReconcileRun):
        self.run = run
        self.graph = graph_store()
        self.vectors = vector_store()
        self.model = model_id()
        self.findings: list[Finding] = []  # found, not acted upon yet
        self.drift: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()  # findings a change on its way explains: not drift
        self.samples: dict[str, list] = defaultdict(list)
        self.models: Counter[str] = Counter()
        self.labels: dict[str, Counter[str]] = defaultdict(Counter)  # label -> entities checked, drift found
        self.records_repaired = 0
        self.repairs_queued = 0
        self.backfill: Backfill | None = None  # once the repairs pass BACKFILL_MIN_ENTITIES
        self.expected: dict[tuple[str, str], Expected] = {}  # of the entities being checked
        self._saved = time.monotonic()

    # --- reading the vector store ----------------------------------------------------------
    def fetch(self, vector_ids) -> dict[str, dict]:
        found = _fetch_metadata(self.vectors, vector_ids)
        self.run.vectors_checked += len(found)
        return found

    def fetch_entities(self, keys, first: FirstIds | None = None,
                       ) -> tuple[dict[tuple[str, str], StoredEntity], list[str], set]:
        """What the store holds for these entities, asked by id. Our records say which ids the
        last write left (a hint only: what is asked is then checked): one chunk `Label:uid`, or
        `#0..#n-1`; without a record both first ids. An entity found under neither shape asked
        for is asked again under the other, and a stored first chunk's declared count is followed,
        so nothing the store holds under the text's ids goes unseen. `first`: both first ids of
        every entity, asked already (by the full pass's reading thread). Returns (by entity, ids
        fetched, entities with a policy violation)."""
        if first is not None:
            firsts, metadata = first.ids, dict(first.found)
            asked = {vid for pair in firsts.values() for vid in pair}
            self.run.vectors_checked += len(metadata)
        else:
            firsts = {key: ids.first_vector_ids(*key) for key in keys}
            hints = _chunk_counts(keys)
            asked = set()
            for key in keys:
                count = hints.get(key, 0)
                asked |= ({firsts[key][0]} if count == 1 else
                          {ids.vector_id(*key, n) for n in range(count)} if count > 1 else
                          set(firsts[key]))
            metadata = self.fetch(asked)
        for _ in range(2):
            further: set[str] = set()
            for key in keys:
                base, first_id = firsts[key]
                if base not in metadata and first_id not in metadata:
                    further |= {base, first_id} - asked
                leading = metadata.get(first_id)
                if leading:
                    declared = min(_int(leading.get("chunks"), 1), MAX_CHUNKS)
                    further |= {ids.vector_id(*key, n) for n in range(1, declared)} - asked
            if not further:
                break
            asked |= further
            metadata.update(self.fetch(further))
        owners = {vid: key for key, pair in firsts.items() for vid in pair}
        stored, violated = self.classify(metadata, owners)
        return stored, list(metadata), violated

    def classify(self, metadata: dict[str, dict], owners: dict[str, tuple[str, str]] | None = None,
                 ) -> tuple[dict[tuple[str, str], StoredEntity], set]:
        """Group fetched vectors by entity; policy violations are reported here. `owners`: the
        entity each first id was asked for (its id says so; no need to parse it again)."""
        stored: dict[tuple[str, str], StoredEntity] = {}
        violated: set[tuple[str, str]] = set()
        owners = owners or {}
        for vid, meta in metadata.items():
            self._classify_vector(vid, meta, owners.get(vid) or _identity(vid, meta), stored, violated)
        return stored, violated

    def _classify_vector(self, vid: str, metadata: dict, owner: tuple[str | None, str | None],
                         stored: dict, violated: set) -> None:
        label, uid = owner
        policy = policy_for(label) if label else None
        self.models[str(metadata.get("model") or "unknown")] += 1
        if policy is None or not policy.synced:
            self.found(Finding("policy_violation", label or "?", uid or vid,
                               f"label {label or '?'} is never synced", [vid]))
            return
        allowed = _stored_keys(policy)
        extra = [] if allowed.issuperset(metadata) else sorted(set(metadata) - allowed)
        fields = {k: metadata[k] for k in policy.metadata_fields if k in metadata}
        holder = "" if extra else self._holds_contact_details((label, uid), vid, metadata)
        if extra or holder:
            detail = ("fields outside the allow-list: " + ", ".join(extra) if extra
                      else f"an e-mail address or phone number in {holder}")
            self.found(Finding("policy_violation", label, uid, detail, [vid], other={"fields": extra}))
            violated.add((label, uid))
            return
        entity = stored.get((label, uid))
        if entity is None:
            entity = stored[(label, uid)] = StoredEntity(fields)
        entity.add(vid, metadata)

    def _holds_contact_details(self, key: tuple[str, str], vid: str, metadata: dict[str, Any]) -> str:
        """Where a stored vector holds an e-mail address or phone number: "the vector id" (its uid,
        decoded), "metadata NAME", or "" when nowhere. Every metadata value is looked at, the
        engine's own keys too, except a value equal to what the engine writes for the entity now
        (an allow-listed field, the text snippet: redacted when built; its label, its uid: the
        id's, looked at already; this model's name)."""
        if uid_withheld(key[1]) or has_contact_details(unquote(vid)):
            return "the vector id"
        expected = self.expected.get(key)
        written = {**(expected.metadata if expected else {}), "label": key[0], "uid": key[1], "model": self.model}
        for name, value in metadata.items():
            clean = (expected is not None and value == expected.snippet) if name == "text" \
                else written.get(name, _ABSENT) == value
            if not clean and has_contact_details(value):
                return f"metadata {name}"
        return ""

    # --- comparing one entity ----------------------------------------------------------------
    def compare(self, entity: Entity | None, key: tuple[str, str], stored: StoredEntity | None) -> None:
        label, uid = key
        if entity is None:
            if stored and stored.ids:
                self.found(Finding("orphan_vector", label, uid, "no such entity in the graph",
                                   list(stored.ids), vector_version=stored.version))
            return
        self.run.entities_checked += 1
        self.labels[label]["checked"] += 1
        if uid_withheld(uid):
            return  # never synced; a vector it has is a policy violation, found where it is classified
        policy = policy_for(label)
        expected = self.expected.get(key) or Expected.of(policy, entity)
        text = expected.text
        if not stored or not stored.ids:
            if text:
                self.found(Finding("missing_vector", label, uid, "the entity has no vector",
                                   graph_version=entity.version))
            return
        found = dict(vector_ids=list(stored.ids), graph_version=entity.version, vector_version=stored.version)
        if stored.version < entity.version:
            self.found(Finding("stale_vector", label, uid, f"vector v{stored.version} < graph v{entity.version}",
                               **found))
        elif stored.version > entity.version:
            self.found(Finding("vector_ahead", label, uid, f"vector v{stored.version} > graph v{entity.version}",
                               **found, other={"version": stored.version, "content_hash": sorted(stored.hashes)}))
        else:
            problem = self._content_problem(expected, stored)
            if problem:
                self.found(Finding("content_drift", label, uid, problem, **found))

    def _content_problem(self, expected: Expected, stored: StoredEntity) -> str:
        if not expected.text:
            return "the entity has no text but the store holds vectors for it"
        if stored.hashes != {expected.content_hash}:
            return "content hash differs from the graph's text"
        if len(stored.versions) > 1 or stored.chunks_declared != {len(stored.ids)}:
            return f"chunks disagree ({len(stored.ids)} stored, {sorted(stored.chunks_declared)} declared)"
        if stored.models != {self.model}:
            others = ", ".join(sorted(m or "an unrecorded model" for m in stored.models - {self.model}))
            return f"embedded by {others}, not by {self.model}"
        if expected.metadata_error:
            return f"metadata cannot be built: {expected.metadata_error}"
        metadata = expected.metadata
        if len(repr(metadata)) < COMPARABLE_METADATA_BYTES and metadata != (stored.fields or {}):
            changed = sorted(k for k in set(metadata) | set(stored.fields or {})
                             if metadata.get(k) != (stored.fields or {}).get(k))
            return "metadata differs: " + ", ".join(changed)
        return ""

    def surplus(self, key: tuple[str, str], stored: StoredEntity, entity: Entity) -> None:
        """Vectors of a live entity that its text's chunk ids do not account for."""
        self.found(Finding("content_drift", *key, f"{len(stored.ids)} stray vector(s) beyond the text's chunks",
                           list(stored.ids), graph_version=entity.version, vector_version=stored.version))

    # --- acting on findings --------------------------------------------------------------------
    def found(self, finding: Finding) -> None:
        self.findings.append(finding)
        if len(self.findings) >= ACT_EVERY:
            self.act()

    def act(self) -> None:
        """Count, sample and repair the findings gathered so far, in bounded transactions."""
        findings, self.findings = self._confirm(self.findings), []
        resync: list[queue.Work] = []
        doomed: list[str] = []
        for finding in findings:
            self.drift[finding.kind] += 1
            self.labels[finding.label]["drift"] += 1
            CONSISTENCY_VIOLATIONS.labels(finding.kind).inc()
            if len(self.samples[finding.kind]) < SAMPLES_PER_KIND:
                self.samples[finding.kind].append({"label": finding.label, "uid": finding.uid,
                                                   "detail": finding.detail})
            if finding.kind == "vector_ahead":
                log.error("consistency error: %s:%s %s", finding.label, finding.uid, finding.detail)
            if self.run.dry_run:
                continue
            action = REPAIR[finding.kind]
            if action == "delete":
                doomed.extend(finding.vector_ids)
                if finding.kind == "policy_violation" and policy_for(finding.label).synced \
                        and not uid_withheld(finding.uid):
                    resync.append(self._work(finding))  # rebuild the clean vector
                self.repaired[finding.kind] += 1
            elif action == "resync":
                resync.append(self._work(finding))
                self.repaired[finding.kind] += 1
            else:
                self._open_conflict(finding)
        doomed = sorted(set(doomed))
        for start in range(0, len(doomed), FETCH_BATCH):
            self.vectors.delete(doomed[start:start + FETCH_BATCH])
        self._queue_repairs(resync)

    def _queue_repairs(self, resync: list[queue.Work]) -> None:
        """Repairs past BACKFILL_MIN_ENTITIES in one run are a bulk load: from then on a backfill,
        which takes the run's repairs queued before along (sync.backfill), so that they wait behind
        the streaming changes and stay out of their lag."""
        if not resync:
            return
        self.repairs_queued += len(resync)
        if self.backfill is None and self.repairs_queued >= settings.BACKFILL_MIN_ENTITIES:
            self.backfill = backfill.start(
                Backfill.Kind.REPAIR, scope=f"{self.run.mode} reconciliation #{self.run.pk}",
                reason=f"its repairs passed {settings.BACKFILL_MIN_ENTITIES} entities (BACKFILL_MIN_ENTITIES)",
                actor=self.run.triggered_by or self.run.trigger, total=self.repairs_queued)
            backfill.adopt(self.backfill, SyncEvent.objects.filter(source="reconcile", created_at__gte=self.run.started_at))
        for start in range(0, len(resync), REPAIR_BATCH):
            batch = resync[start:start + REPAIR_BATCH]
            if self.backfill is not None:
                batch = [dataclasses.replace(work, backfill=self.backfill.pk) for work in batch]
            queue.enqueue_many(batch)

    def _confirm(self, findings: list[Finding]) -> list[Finding]:
        """Findings a write landing between the graph read and the store read would make, checked
        against the graph as it is now: an orphan is deleted only if the graph still has no such
        entity, a vector ahead of the graph is an error only if the graph is still behind it.
        A missing, stale or orphan vector that a change on its way explains (an event pending now,
        or the key's latest change one capture is still to queue) is in flight, not drift."""
        keys = sorted({(f.label, f.uid) for f in findings if f.kind in (*IN_FLIGHT_KINDS, "vector_ahead")})
        if not keys:
            return findings
        now = self.graph.get_entities(keys)
        waiting = sorted({(f.label, f.uid) for f in findings if f.kind in IN_FLIGHT_KINDS})
        on_the_way = _in_flight(self.graph, waiting, now) if waiting else set()

        def holds(f: Finding) -> bool:
            entity = now.get((f.label, f.uid))
            if f.kind in IN_FLIGHT_KINDS and (f.label, f.uid) in on_the_way:
                self.in_flight[f.kind] += 1
                return False
            if f.kind == "orphan_vector":
                return entity is None
            if f.kind == "vector_ahead":
                return entity is None or entity.version < (f.vector_version or 0)
            return True

        return [f for f in findings if holds(f)]

    def _work(self, finding: Finding) -> queue.Work:
        return queue.Work(label=finding.label, uid=finding.uid, version=finding.graph_version,
                          priority=queue.priority_of(finding.label), source="reconcile")

    def _open_conflict(self, finding: Finding) -> None:
        conflicts.open_conflict(
            Conflict.Kind.VECTOR_AHEAD, finding.label, finding.uid, graph_version=finding.graph_version,
            graph_side={"version": finding.graph_version}, other_side=finding.other, run=self.run,
            explanation=f"{finding.detail}: the vector store holds a version the graph never had "
                        "(or lost); the graph is the source of truth, so keeping the graph rebuilds the vector",
        )
        self.run.conflicts_opened += 1

    def finish(self) -> None:
        self.act()
        if self.backfill is not None:
            backfill.loaded(self.backfill)
        self.run.drift = {k: self.drift[k] for k in KINDS if self.drift[k]}
        self.run.repaired = {k: self.repaired[k] for k in KINDS if self.repaired[k]}
        if self.records_repaired:
            self.run.repaired["records"] = self.records_repaired
        self.run.samples = [{"kind": k, **s} for k, items in self.samples.items() for s in items]
        self.run.embedding_models = dict(self.models)
        self.run.labels = {label: {"checked": c["checked"], "drift": c["drift"]}
                           for label, c in sorted(self.labels.items())}
        self.run.in_flight = {k: self.in_flight[k] for k in KINDS if self.in_flight[k]}
        if self.in_flight:
            log.info("%s reconciliation: %s not counted as drift: changes on their way (pending events, "
                     "or not queued by change capture yet)", self.run.mode,
                     ", ".join(f"{kind} {n}" for kind, n in sorted(self.in_flight.items())))

    # --- progress --------------------------------------------------------------------------------
    def progress(self, done: int) -> None:
        self.run.progress_done += done
        if time.monotonic() - self._saved >= PROGRESS_SECONDS:
            self.save_progress()

    def save_progress(self) -> None:
        self._saved = time.monotonic()
        ReconcileRun.objects.filter(pk=self.run.pk).update(
            progress_done=self.run.progress_done, progress_total=self.run.progress_total,
            entities_checked=self.run.entities_checked, vectors_checked=self.run.vectors_checked,
            records_checked=self.run.records_checked, updated_at=timezone.now())

    # --- one page of entities ----------------------------------------------------------------------
    def check_entities(self, entities: dict[tuple[str, str], Entity | None], examined: array | None = None,
                       first: FirstIds | None = None) -> None:
        """Fetch what the store holds for these entities and compare (graph pass and incremental)."""
        keys = sorted(entities)
        # Queued or in flight: work in progress. Withheld: never synced, no vector id made of them.
        skipped = _pending_keys(keys) | {key for key in keys if uid_withheld(key[1])}
        self.expected = {key: Expected.of(policy_for(key[0]), entity) for key, entity in entities.items()
                         if entity is not None and key not in skipped}
        stored, fetched, violated = self.fetch_entities([k for k in keys if k not in skipped], first)
        if examined is not None:
            examined.extend(hash(vid) for vid in fetched)
        for key in keys:
            if key in skipped or key in violated:
                continue  # queued, in flight, withheld, or being rebuilt after a violation: not drift of its own
            self.compare(entities[key], key, stored.get(key))
        self.expected = {}

    # --- records ---------------------------------------------------------------------------------
    def check_records(self, label: str, seen: np.ndarray) -> None:
        """Our records must not claim entities that are gone.

        Only records older than this run count, and the graph is asked again: an entity created
        during the label scan is not among the uids seen yet is very much alive.
        """
        rows = (SyncRecord.objects.filter(label=label, updated_at__lt=self.run.started_at)
                .exclude(status=SyncRecord.Status.DELETED).values_list("uid", flat=True))
        candidates: list[str] = []
        for uid in rows.iterator(chunk_size=5000):
            self.run.records_checked += 1
            if not _member(seen, hash(uid)):
                candidates.append(uid)
                if len(candidates) >= REPAIR_BATCH:
                    self._vanished(label, candidates)
                    candidates = []
        self._vanished(label, candidates)

    def _vanished(self, label: str, uids: list[str]) -> None:
        if not uids:
            return
        alive = self.graph.get_entities([(label, uid) for uid in uids])
        gone = [uid for uid in uids if (label, uid) not in alive]
        if gone and not self.run.dry_run:
            SyncRecord.objects.filter(label=label, uid__in=gone).update(status=SyncRecord.Status.DELETED,
                                                                         last_error="")
            self.records_repaired += len(gone)


# --- starting and running ----------------------------------------------------------------------

def start(mode: str, *, dry_run: bool = False, trigger: str = ReconcileRun.Trigger.UI, user=None,
          window: timedelta | None = None) -> ReconcileRun:
    """A queued run, handed to the task cluster (sync.tasks.run_reconciliation) once committed."""
    if mode not in ReconcileRun.Mode.values:
        raise ValueError(f"mode must be one of {', '.join(ReconcileRun.Mode.values)}")
    run = ReconcileRun.objects.create(mode=mode, status=ReconcileRun.Status.QUEUED, dry_run=dry_run,
                                      trigger=trigger, triggered_by=user, window_start=_window_start(mode, window))

    def hand_over() -> None:
        from django_q.tasks import async_task

        async_task("sync.tasks.run_reconciliation", run.pk, group="reconcile",
                   q_options={"timeout": settings.Q_CLUSTER["timeout"]})

    transaction.on_commit(hand_over)
    return run


def full(*, dry_run: bool = False, trigger: str = ReconcileRun.Trigger.COMMAND, user=None) -> ReconcileRun:
    """Run a full reconciliation in the foreground."""
    return execute(ReconcileRun.objects.create(mode=ReconcileRun.Mode.FULL, dry_run=dry_run, trigger=trigger,
                                               triggered_by=user, status=ReconcileRun.Status.QUEUED))


def incremental(*, window: timedelta | None = None, dry_run: bool = False,
                trigger: str = ReconcileRun.Trigger.COMMAND, user=None) -> ReconcileRun:
    """Run an incremental reconciliation (entities changed in the window) in the foreground."""
    mode = ReconcileRun.Mode.INCREMENTAL
    return execute(ReconcileRun.objects.create(mode=mode, dry_run=dry_run, trigger=trigger, triggered_by=user,
                                               window_start=_window_start(mode, window),
                                               status=ReconcileRun.Status.QUEUED))


def execute(run: ReconcileRun) -> ReconcileRun:
    """Run a queued run to its end (once: a second call for the same run does nothing).

    Whatever interrupts it, wherever (django-q2's timeout, SIGTERM, Ctrl-C — the claim
    included), the run ends failed or, if it was never claimed, stays queued: never running."""
    started = time.monotonic()
    now = timezone.now()
    reconciler = None
    mine = False
    try:
        stoppable = True  # noqa: F841 — sync.shutdown.MARK: a stop may interrupt from here on
        shutdown.stop_if_requested()
        mine = bool(ReconcileRun.objects.filter(pk=run.pk, status=ReconcileRun.Status.QUEUED).update(
            status=ReconcileRun.Status.RUNNING, started_at=now, updated_at=now))
        if not mine:
            run.refresh_from_db()
            return run
        run.status, run.started_at = ReconcileRun.Status.RUNNING, now
        reconciler = Reconciler(run)
        (_full if run.mode == ReconcileRun.Mode.FULL else _incremental)(reconciler)
        reconciler.finish()
        run.status = ReconcileRun.Status.SUCCEEDED
        stoppable = False  # noqa: F841 — done: a stop from here on is only recorded, the end is saved
    except BaseException as exc:
        # Interrupted in the claim itself, the claim may have gone through all the same.
        mine = mine or ReconcileRun.objects.filter(pk=run.pk, status=ReconcileRun.Status.RUNNING,
                                                   started_at=now).exists()
        if mine:
            run.status, run.started_at = ReconcileRun.Status.FAILED, now
            run.error = (f"{type(exc).__name__}: {exc}"[:5000] if str(exc)
                         else f"interrupted ({type(exc).__name__})")
            if reconciler is not None:
                _keep_counts(reconciler)
                if reconciler.backfill is not None and reconciler.backfill.loaded_at is None:
                    backfill.loaded(reconciler.backfill, total=0)  # what it did queue
            log.exception("%s reconciliation failed", run.mode)
        raise
    finally:
        if mine:
            run.finished_at = timezone.now()
            run.duration = time.monotonic() - started
            run.save()
    return run


def _keep_counts(reconciler: Reconciler) -> None:
    """A failed run still shows what it found and did before it stopped."""
    try:
        reconciler.findings = []  # not acted upon: the next run finds them again
        reconciler.finish()
    except Exception:  # noqa: BLE001 — the run is failing already; its counts are a courtesy
        log.exception("could not record the counts of a failed reconciliation")


def fail_abandoned() -> int:
    """Mark failed the runs whose process died (no progress saved for ABANDONED_AFTER) and the
    queued runs the cluster never started. Returns how many."""
    now = timezone.now()
    stuck = ReconcileRun.objects.filter(status=ReconcileRun.Status.RUNNING, updated_at__lt=now - ABANDONED_AFTER)
    died = stuck.update(status=ReconcileRun.Status.FAILED, finished_at=now, updated_at=now,
                        error="the process running this reconciliation stopped before it finished")
    never = ReconcileRun.objects.filter(
        status=ReconcileRun.Status.QUEUED,  # started_at is when it was queued, until it starts
        started_at__lt=now - timedelta(seconds=settings.Q_CLUSTER["retry"]) - ABANDONED_AFTER,
    ).update(status=ReconcileRun.Status.FAILED, finished_at=now, updated_at=now,
             error="the task cluster never started this reconciliation (are the workers running?)")
    return died + never


def _window_start(mode: str, window: timedelta | None):
    if mode != ReconcileRun.Mode.INCREMENTAL:
        return None
    return timezone.now() - (window or timedelta(minutes=settings.RECONCILE_WINDOW_MINUTES))


def _full(r: Reconciler) -> None:
    labels = synced_labels()
    r.run.progress_total = sum(r.graph.count_label(label) for label in labels) + r.vectors.stats().total
    r.save_progress()
    examined = array("q")  # hashes of the vector ids the graph pass looked at
    for label in labels:
        seen = array("q")  # hashes of this label's uids
        for page, first in _label_pages(r.graph, r.vectors, label):
            seen.extend(hash(entity.uid) for entity in page)
            r.check_entities({entity.key: entity for entity in page}, examined, first)
            r.progress(len(page))
        r.check_records(label, np.sort(np.frombuffer(seen, dtype=np.int64)))
    looked_at = np.sort(np.frombuffer(examined, dtype=np.int64))
    del examined
    listing = r.vectors.list_ids("")
    while page := list(itertools.islice(listing, FETCH_BATCH)):
        r.progress(len(page))
        known = _members(looked_at, np.fromiter((hash(vid) for vid in page), dtype=np.int64, count=len(page)))
        unexplained = [vid for vid, seen in zip(page, known, strict=True) if not seen]
        if unexplained:
            _strays(r, unexplained)


@dataclass
class FirstIds:
    """Both first ids (`Label:uid`, `Label:uid#0`) of a page's entities, and what the store holds of them."""
    ids: dict[tuple[str, str], tuple[str, str]]
    found: dict[str, dict]


def _read_page(graph, vectors, label: str, after: str | None) -> tuple[list[Entity], FirstIds]:
    page = graph.scan_label(label, after, GRAPH_PAGE)
    firsts = {entity.key: ids.first_vector_ids(label, entity.uid) for entity in page if not uid_withheld(entity.uid)}
    return page, FirstIds(firsts, _fetch_metadata(vectors, {vid for pair in firsts.values() for vid in pair}))


def _fetch_metadata(vectors, vector_ids) -> dict[str, dict]:
    """The metadata the store holds under these ids, asked FETCH_BATCH at a time in id order."""
    wanted = sorted(vector_ids)
    found: dict[str, dict] = {}
    for start in range(0, len(wanted), FETCH_BATCH):
        found.update(vectors.fetch_metadata(wanted[start:start + FETCH_BATCH]))
    return found


def _label_pages(graph, vectors, label: str):
    """The label's entities in uid pages with what the store holds under their first ids, the
    next page (graph, then store) read in a thread while this one is compared: Neo4j, LanceDB
    and Pinecone answer without holding the GIL. The store is read after the graph, as when
    the comparison read it itself; a write landing in between is confirmed away (`_confirm`)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph-scan") as pool:
        coming = pool.submit(_read_page, graph, vectors, label, None)
        while coming is not None:
            page, first = coming.result()
            coming = pool.submit(_read_page, graph, vectors, label, page[-1].uid) \
                if len(page) == GRAPH_PAGE else None
            if page:
                yield page, first


def _strays(r: Reconciler, vector_ids: list[str]) -> None:
    """Vectors the graph pass did not look at: never-synced labels, orphans, stray chunks."""
    stored, violated = r.classify(r.fetch(vector_ids))
    keys = sorted(stored)
    if not keys:
        return
    pending = _pending_keys(keys)
    alive = r.graph.get_entities(keys)
    for key in keys:
        if key in pending or key in violated:
            continue
        entity = alive.get(key)
        if entity is None:
            r.compare(None, key, stored[key])
        else:
            r.surplus(key, stored[key], entity)


def _incremental(r: Reconciler) -> None:
    labels = synced_labels()
    keys: set[tuple[str, str]] = set()
    after = (r.run.window_start, "")
    while True:
        changes = r.graph.changes_since(labels, after, GRAPH_PAGE, entities=False)
        keys |= {(c.label, c.uid) for c in changes}
        if len(changes) < GRAPH_PAGE:
            break
        after = (changes[-1].updated_at, f"{changes[-1].label}:{changes[-1].uid}")
    keys |= set(SyncRecord.objects.filter(updated_at__gte=r.run.window_start).values_list("label", "uid"))
    ordered = sorted(k for k in keys if policy_for(k[0]).synced)
    r.run.progress_total = len(ordered)
    # Vectors first, then the graph (as in a full run): a write landing in between makes the graph
    # look newer (repaired by a resync), never the vector look ahead of it. Stray chunks beyond
    # a text are found by the full run, which lists every id.
    for start in range(0, len(ordered), GRAPH_PAGE):
        page = ordered[start:start + GRAPH_PAGE]
        pending = _pending_keys(page)
        stored, _, violated = r.fetch_entities([k for k in page if k not in pending and not uid_withheld(k[1])])
        entities = r.graph.get_entities(page)
        for key in page:
            if key not in pending and key not in violated:
                r.compare(entities.get(key), key, stored.get(key))
        r.progress(len(page))


def _chunk_counts(keys) -> dict[tuple[str, str], int]:
    """Chunks the last write left, per our records (of entities whose vectors should exist)."""
    live = SyncRecord.objects.exclude(status__in=[SyncRecord.Status.DELETED, SyncRecord.Status.EXCLUDED])
    return {(label, uid): count for rows in for_entities(live, keys)
            for label, uid, count in rows.values_list("label", "uid", "chunk_count")}


def _in_flight(graph, keys, alive: dict[tuple[str, str], Entity]) -> set[tuple[str, str]]:
    """The keys a change on its way will bring in line: an event queued or in flight, or the
    key's latest change in the graph (the live entity, else its tombstone) still to be queued
    by change capture."""
    gone = [key for key in keys if key not in alive]
    latest = [Change(e.label, e.uid, e.version, e.updated_at, entity=e) for key in keys if (e := alive.get(key))]
    latest += list(graph.tombstones(gone).values()) if gone else []
    return _pending_keys(keys) | capture.unread(latest)


def _pending_keys(keys) -> set[tuple[str, str]]:
    pending = SyncEvent.objects.filter(status__in=[SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT])
    return {(label, uid) for rows in for_entities(pending, keys) for label, uid in rows.values_list("label", "uid")}


def _member(sorted_hashes: np.ndarray, value: int) -> bool:
    index = int(np.searchsorted(sorted_hashes, value))
    return index < len(sorted_hashes) and int(sorted_hashes[index]) == value


def _members(sorted_hashes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_hashes` (a bool array)."""
    if not len(sorted_hashes):
        return np.zeros(len(values), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_hashes, values), len(sorted_hashes) - 1)
    return sorted_hashes[index] == values


def _identity(vid: str, metadata: dict) -> tuple[str | None, str | None]:
    """Who a vector belongs to: its id says so, except for shortened ids (uid in the metadata)."""
    try:
        label, uid, _ = ids.parse_vector_id(vid)
    except ValueError:
        label, uid = None, None
    if uid is None and isinstance(metadata.get("uid"), str):
        uid = metadata["uid"]
    if label is None and isinstance(metadata.get("label"), str):
        label = metadata["label"]
    return label, uid


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default

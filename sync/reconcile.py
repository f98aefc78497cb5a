"""Reconciliation: compare the graph, the vector store and our sync records; repair what is safe.

The sync record is never trusted alone. A full run pages through every vector id (listed by
prefix, metadata fetched in batches of ≤1000), then through every synced label in Neo4j (by
uid), then through our records — no per-entity round trips. An incremental run does the same
for the entities changed in a recent window.

Drift and what is done about it (REPAIR):

| drift            | meaning                                                  | repair                  |
|------------------|----------------------------------------------------------|-------------------------|
| missing_vector   | an entity with text has no vector                        | enqueue a resync        |
| orphan_vector    | a vector whose entity does not exist (deleted)           | delete the vector       |
| stale_vector     | vector version < graph version                           | enqueue a resync        |
| vector_ahead     | vector version > graph version                           | open a conflict (never automatic) |
| content_drift    | same version, different content hash or metadata         | enqueue a resync        |
| policy_violation | a never-synced label, or a field outside the allow-list, in the store | delete at once (and resync a synced entity) |

The vector store is read before the graph: a vector written after its snapshot cannot be taken
for an orphan, and orphans are checked against the graph once more before they are deleted.
Entities with queued or in-flight events are work in progress, not drift.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from sync import conflicts, ids, queue
from sync.embedding import content_hash
from sync.models import Conflict, ReconcileRun, SyncEvent, SyncRecord, for_entities
from sync.observe.metrics import CONSISTENCY_VIOLATIONS
from sync.policy import (
    ENGINE_KEYS,
    allowed_metadata,
    build_text,
    has_contact_details,
    policy_for,
    synced_labels,
)
from sync.stores import graph_store, vector_store
from sync.stores.base import Entity

log = logging.getLogger(__name__)

KINDS = ("missing_vector", "orphan_vector", "stale_vector", "vector_ahead", "content_drift", "policy_violation")
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
SAMPLES_PER_KIND = 5
# Metadata fields are compared only below this size: above it, build_document shrinks them to fit
# Pinecone's 40 KB limit and a field-by-field comparison would report drift that is not there.
COMPARABLE_METADATA_BYTES = 30_000


@dataclass
class StoredEntity:
    """What the vector store holds for one entity: its chunks' ids and the metadata that matters."""

    ids: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    chunks_declared: set[int] = field(default_factory=set)
    fields: dict[str, Any] | None = None  # allow-listed metadata of the first chunk seen

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


class Reconciler:
    def __init__(self, run: ReconcileRun):
        self.run = run
        self.graph = graph_store()
        self.vectors = vector_store()
        self.findings: list[Finding] = []
        self.pending = _pending_keys()
        self.violated: set[tuple[str, str]] = set()  # already reported (and rebuilt) as violations
        self.records_repaired = 0

    # --- reading the vector store ----------------------------------------------------------
    def scan_vectors(self, vector_ids: list[str]) -> dict[tuple[str, str], StoredEntity]:
        """Fetch metadata in batches; policy violations are found here, the rest grouped by entity."""
        stored: dict[tuple[str, str], StoredEntity] = defaultdict(StoredEntity)
        for start in range(0, len(vector_ids), FETCH_BATCH):
            batch = self.vectors.fetch_metadata(vector_ids[start:start + FETCH_BATCH])
            self.run.vectors_checked += len(batch)
            for vid, metadata in batch.items():
                self._classify_vector(vid, metadata, stored)
        return stored

    def _classify_vector(self, vid: str, metadata: dict, stored: dict) -> None:
        label, uid = _identity(vid, metadata)
        policy = policy_for(label) if label else None
        if policy is None or not policy.synced:
            self.findings.append(Finding("policy_violation", label or "?", uid or vid,
                                         f"label {label or '?'} is never synced", [vid]))
            return
        extra = sorted(set(metadata) - set(policy.metadata_fields) - set(ENGINE_KEYS))
        private = any(has_contact_details(v) for k, v in metadata.items() if k == "text" or k not in ENGINE_KEYS)
        if extra or private:
            detail = ("fields outside the allow-list: " + ", ".join(extra) if extra
                      else "an e-mail address or phone number in the metadata")
            self.findings.append(Finding("policy_violation", label, uid, detail, [vid], other={"fields": extra}))
            self.violated.add((label, uid))
            return
        entity = stored[(label, uid)]
        entity.ids.append(vid)
        entity.versions.add(_int(metadata.get("version")))
        entity.hashes.add(str(metadata.get("content_hash", "")))
        entity.chunks_declared.add(_int(metadata.get("chunks"), 1))
        if entity.fields is None:
            entity.fields = {k: metadata[k] for k in policy.metadata_fields if k in metadata}

    # --- comparing one entity ----------------------------------------------------------------
    def compare(self, entity: Entity | None, key: tuple[str, str], stored: StoredEntity | None) -> None:
        label, uid = key
        if key in self.pending or key in self.violated:
            return  # queued, in flight, or being rebuilt after a violation: not drift of its own
        if entity is None:
            if stored and stored.ids:
                self.findings.append(Finding("orphan_vector", label, uid, "no such entity in the graph",
                                             list(stored.ids), vector_version=stored.version))
            return
        self.run.entities_checked += 1
        policy = policy_for(label)
        text = build_text(policy, entity.properties)
        if not stored or not stored.ids:
            if text:
                self.findings.append(Finding("missing_vector", label, uid, "the entity has no vector",
                                             graph_version=entity.version))
            return
        found = dict(vector_ids=list(stored.ids), graph_version=entity.version, vector_version=stored.version)
        if stored.version < entity.version:
            self.findings.append(Finding("stale_vector", label, uid,
                                         f"vector v{stored.version} < graph v{entity.version}", **found))
        elif stored.version > entity.version:
            self.findings.append(Finding("vector_ahead", label, uid,
                                         f"vector v{stored.version} > graph v{entity.version}", **found,
                                         other={"version": stored.version, "content_hash": sorted(stored.hashes)}))
        else:
            problem = self._content_problem(policy, entity, text, stored)
            if problem:
                self.findings.append(Finding("content_drift", label, uid, problem, **found))

    def _content_problem(self, policy, entity: Entity, text: str, stored: StoredEntity) -> str:
        if not text:
            return "the entity has no text but the store holds vectors for it"
        if stored.hashes != {content_hash(text)}:
            return "content hash differs from the graph's text"
        if len(stored.versions) > 1 or stored.chunks_declared != {len(stored.ids)}:
            return f"chunks disagree ({len(stored.ids)} stored, {sorted(stored.chunks_declared)} declared)"
        try:
            expected = allowed_metadata(policy, entity.properties)
        except ValueError as exc:
            return f"metadata cannot be built: {exc}"
        if len(repr(expected)) < COMPARABLE_METADATA_BYTES and expected != (stored.fields or {}):
            changed = sorted(k for k in set(expected) | set(stored.fields or {})
                             if expected.get(k) != (stored.fields or {}).get(k))
            return "metadata differs: " + ", ".join(changed)
        return ""

    # --- acting on findings --------------------------------------------------------------------
    def act(self) -> None:
        self._confirm_orphans()
        drift: dict[str, int] = dict.fromkeys(KINDS, 0)
        repaired: dict[str, int] = dict.fromkeys(KINDS, 0)
        samples: dict[str, list] = defaultdict(list)
        resync: list[queue.Work] = []
        doomed: list[str] = []
        for finding in self.findings:
            drift[finding.kind] += 1
            CONSISTENCY_VIOLATIONS.labels(finding.kind).inc()
            if len(samples[finding.kind]) < SAMPLES_PER_KIND:
                samples[finding.kind].append({"label": finding.label, "uid": finding.uid,
                                              "detail": finding.detail})
            if finding.kind == "vector_ahead":
                log.error("consistency error: %s:%s %s", finding.label, finding.uid, finding.detail)
            if self.run.dry_run:
                continue
            action = REPAIR[finding.kind]
            if action == "delete":
                doomed.extend(finding.vector_ids)
                if finding.kind == "policy_violation" and policy_for(finding.label).synced:
                    resync.append(self._work(finding))  # rebuild the clean vector
                repaired[finding.kind] += 1
            elif action == "resync":
                resync.append(self._work(finding))
                repaired[finding.kind] += 1
            else:
                self._open_conflict(finding)
        if doomed:
            self.vectors.delete(sorted(set(doomed)))
        if resync:
            queue.enqueue_many(resync)
        self.run.drift = {k: v for k, v in drift.items() if v}
        self.run.repaired = {k: v for k, v in repaired.items() if v}
        if self.records_repaired:
            self.run.repaired["records"] = self.records_repaired
        self.run.samples = [{"kind": k, **s} for k, items in samples.items() for s in items]

    def _confirm_orphans(self) -> None:
        """An orphan is deleted only if the graph still has no such entity right now."""
        keys = [(f.label, f.uid) for f in self.findings if f.kind == "orphan_vector"]
        if not keys:
            return
        alive = set(self.graph.get_entities(keys))
        self.findings = [f for f in self.findings
                         if not (f.kind == "orphan_vector" and (f.label, f.uid) in alive)]

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

    # --- records ---------------------------------------------------------------------------------
    def check_records(self, label: str, graph_uids: set[str]) -> None:
        """Our records must not claim entities that are gone.

        Only records older than this run count, and the graph is asked again: an entity created
        during the label scan is not in `graph_uids` yet is very much alive.
        """
        gone = (SyncRecord.objects.filter(label=label, updated_at__lt=self.run.started_at)
                .exclude(status=SyncRecord.Status.DELETED).values_list("uid", flat=True))
        vanished = [uid for uid in gone.iterator(chunk_size=5000) if uid not in graph_uids]
        if vanished:
            alive = self.graph.get_entities([(label, uid) for uid in vanished])
            vanished = [uid for uid in vanished if (label, uid) not in alive]
        self.run.records_checked += SyncRecord.objects.filter(label=label).count()
        if vanished and not self.run.dry_run:
            for start in range(0, len(vanished), 500):
                SyncRecord.objects.filter(label=label, uid__in=vanished[start:start + 500]).update(
                    status=SyncRecord.Status.DELETED, last_error="")
            self.records_repaired += len(vanished)


def full(*, dry_run: bool = False, trigger: str = ReconcileRun.Trigger.COMMAND, user=None) -> ReconcileRun:
    run = ReconcileRun.objects.create(mode=ReconcileRun.Mode.FULL, dry_run=dry_run, trigger=trigger,
                                      triggered_by=user)
    return _execute(run, _full)


def incremental(*, window: timedelta | None = None, dry_run: bool = False,
                trigger: str = ReconcileRun.Trigger.COMMAND, user=None) -> ReconcileRun:
    span = window or timedelta(minutes=settings.RECONCILE_WINDOW_MINUTES)
    run = ReconcileRun.objects.create(mode=ReconcileRun.Mode.INCREMENTAL, dry_run=dry_run, trigger=trigger,
                                      triggered_by=user, window_start=timezone.now() - span)
    return _execute(run, _incremental)


def _execute(run: ReconcileRun, body) -> ReconcileRun:
    started = time.monotonic()
    try:
        reconciler = Reconciler(run)
        body(reconciler)
        reconciler.act()
        run.status = ReconcileRun.Status.SUCCEEDED
    except Exception as exc:
        run.status = ReconcileRun.Status.FAILED
        run.error = f"{type(exc).__name__}: {exc}"[:5000]
        log.exception("%s reconciliation failed", run.mode)
        raise
    finally:
        run.finished_at = timezone.now()
        run.duration = time.monotonic() - started
        run.save()
    return run


def _full(r: Reconciler) -> None:
    labels = synced_labels()
    # Every id in the store, by label prefix and then the rest (never-synced labels, strays).
    all_ids = list(r.vectors.list_ids(""))
    stored = r.scan_vectors(all_ids)
    del all_ids
    for label in labels:
        uids: set[str] = set()
        after = None
        while True:
            page = r.graph.scan_label(label, after, GRAPH_PAGE)
            if not page:
                break
            for entity in page:
                uids.add(entity.uid)
                r.compare(entity, entity.key, stored.pop(entity.key, None))
            after = page[-1].uid
        r.check_records(label, uids)
    for key, rest in stored.items():  # vectors no graph entity claimed
        r.compare(None, key, rest)


def _incremental(r: Reconciler) -> None:
    labels = synced_labels()
    keys: set[tuple[str, str]] = set()
    after = (r.run.window_start, "")
    while True:
        changes = r.graph.changes_since(labels, after, GRAPH_PAGE)
        keys |= {(c.label, c.uid) for c in changes}
        if len(changes) < GRAPH_PAGE:
            break
        after = (changes[-1].updated_at, f"{changes[-1].label}:{changes[-1].uid}")
    keys |= set(SyncRecord.objects.filter(updated_at__gte=r.run.window_start).values_list("label", "uid"))
    keys = {k for k in keys if policy_for(k[0]).synced}
    candidate_ids: set[str] = set()
    chunk_counts = _chunk_counts(keys)
    for key in keys:
        # The ids our records know of, fetched in batches (no per-entity listing); chunks beyond
        # them are found by the full run, which lists every id.
        count = max(chunk_counts.get(key, 1), 1)
        candidate_ids |= {ids.vector_id(*key)} | {ids.vector_id(*key, n) for n in range(count)}
    # Vectors first, then the graph (as in a full run): a write landing in between makes the graph
    # look newer (repaired by a resync), never the vector look ahead of it.
    stored = r.scan_vectors(sorted(candidate_ids))
    entities = r.graph.get_entities(sorted(keys))
    for key in keys:
        r.compare(entities.get(key), key, stored.pop(key, None))


def _chunk_counts(keys: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {(label, uid): n for records in for_entities(SyncRecord.objects.all(), keys)
            for label, uid, n in records.values_list("label", "uid", "chunk_count")}


def _pending_keys() -> set[tuple[str, str]]:
    return set(SyncEvent.objects.filter(status__in=[SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT])
               .values_list("label", "uid"))


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

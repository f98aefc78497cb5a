"""The check every fault case ends with: the vector index equals the graph, nothing is lost.

Read from the live stores, not from our sync records (which are what a fault may have left
wrong): every synced entity in the graph has exactly the vectors its current version's document
has (the same ids, that version, that content hash), no vector is left without its entity, no
work is still queued or in flight, and every failure left a visible trace (a dead letter is
reported, not hidden). `bench/soak.py` ends with the same check.

No event lost, none applied twice in effect: every change the graph holds (each live entity's
version, each tombstone's) has an event that finished (done or dead) at that version or later (an
event without a version reads whatever is current, so it covers any), and our sync record says
what the index holds (in sync at the graph's version; `deleted` for a tombstone). A case names the
traces its failures must have left (`visible`: a dead letter, an alert, a saga's end, a failed
attempt recorded on the event), and the check finds each.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

PAGE = 2000


@dataclass
class Comparison:
    entities: int = 0
    vectors: int = 0
    missing: list[str] = field(default_factory=list)  # vector ids the graph needs, absent
    orphans: list[str] = field(default_factory=list)  # vector ids without an entity
    wrong: list[str] = field(default_factory=list)  # present, but of another version or text
    unfinished: dict[str, int] = field(default_factory=dict)  # events queued / in flight
    dead: int = 0
    lost: list[str] = field(default_factory=list)  # changes no finished event covers
    unrecorded: list[str] = field(default_factory=list)  # sync records that disagree with the graph

    @property
    def equal(self) -> bool:
        return not (self.missing or self.orphans or self.wrong or self.unfinished or self.lost or self.unrecorded)

    def __str__(self) -> str:
        return (f"{self.entities} entities, {self.vectors} vectors: {len(self.missing)} missing "
                f"{self.missing[:5]}, {len(self.orphans)} orphans {self.orphans[:5]}, {len(self.wrong)} wrong "
                f"{self.wrong[:5]}, unfinished events {self.unfinished}, dead letters {self.dead}, "
                f"{len(self.lost)} changes without a finished event {self.lost[:5]}, {len(self.unrecorded)} "
                f"records not at the graph's version {self.unrecorded[:5]}")


def compare(graph, vectors) -> Comparison:
    """Graph vs vector index vs queue, as they are now."""
    from sync.models import SyncEvent
    from sync.policy import build_document, synced_labels

    result = Comparison()
    expected: dict[str, tuple[int, str]] = {}
    for label in synced_labels():
        after = None
        while True:
            page = graph.scan_label(label, after, PAGE)
            for entity in page:
                result.entities += 1
                document = build_document(entity)
                for chunk in document.chunks:
                    expected[chunk.vector_id] = (entity.version, document.content_hash)
            if len(page) < PAGE:
                break
            after = page[-1].uid
    stored_ids = list(vectors.list_ids(""))
    result.vectors = len(stored_ids)
    duplicates = [vid for vid, n in Counter(stored_ids).items() if n > 1]
    stored: dict = {}
    for start in range(0, len(stored_ids), 1000):
        stored.update(vectors.fetch_metadata(stored_ids[start:start + 1000]))
    result.missing = sorted(expected.keys() - stored.keys())
    result.orphans = sorted(stored.keys() - expected.keys())
    for vid in sorted(expected.keys() & stored.keys()):
        version, digest = expected[vid]
        meta = stored[vid]
        if int(meta.get("version") or 0) != version or meta.get("content_hash") != digest:
            result.wrong.append(f"{vid} (v{meta.get('version')} in the index, v{version} in the graph)")
    result.wrong += [f"{vid} (listed twice)" for vid in duplicates]
    statuses = Counter(SyncEvent.objects.values_list("status", flat=True))
    result.unfinished = {s: statuses[s] for s in (SyncEvent.Status.QUEUED, SyncEvent.Status.IN_FLIGHT) if statuses[s]}
    result.dead = statuses[SyncEvent.Status.DEAD]
    _check_events_and_records(graph, result)
    return result


def _check_events_and_records(graph, result: Comparison) -> None:
    """Every change (live version or tombstone) covered by a finished event; every record at the
    graph's version."""
    from sync.models import SyncEvent, SyncRecord
    from sync.policy import synced_labels

    finished: dict[tuple[str, str], float] = {}  # newest version a finished event carried
    rows = SyncEvent.objects.filter(status__in=[SyncEvent.Status.DONE, SyncEvent.Status.DEAD])
    for label, uid, version in rows.values_list("label", "uid", "version").iterator(chunk_size=PAGE):
        seen = float("inf") if version is None else version
        finished[(label, uid)] = max(finished.get((label, uid), -1), seen)
    records = {(r.label, r.uid): r for r in SyncRecord.objects.all().iterator(chunk_size=PAGE)}
    settled = (SyncRecord.Status.IN_SYNC, SyncRecord.Status.CONFLICT)
    after = None
    while True:
        changes = graph.changes_since(synced_labels(), after, PAGE)
        for change in changes:
            key, name = (change.label, change.uid), f"{change.label}:{change.uid}"
            record = records.get(key)
            # An event applies the graph as it is then, not as it was queued: one queued at v5 that
            # read v6 wrote v6 (its record says so), and capture then skips v6 as synced already.
            applied = record.vector_version if record is not None and record.vector_version is not None else -1
            if max(finished.get(key, -1), applied) < change.version:
                result.lost.append(f"{name} v{change.version}")
            if change.deleted:
                if record is not None and record.status != SyncRecord.Status.DELETED:
                    result.unrecorded.append(f"{name} deleted in the graph, {record.status} in its record")
            elif record is None or record.status not in settled or record.vector_version != change.version:
                result.unrecorded.append(f"{name} v{change.version} in the graph, " + (
                    "no record" if record is None else f"{record.status} at v{record.vector_version} in its record"))
        if len(changes) < PAGE:
            return
        last = changes[-1]
        after = (last.updated_at, f"{last.label}:{last.uid}")


class Trace(Protocol):
    """What a failure must have left where people look (dead letters, alerts, saga and event
    history); `found()` says whether it is there."""

    def found(self) -> bool: ...


@dataclass(frozen=True)
class DeadLetter:
    """The entity's work went to the dead letters (and is still there, or was retried from there)."""

    label: str
    uid: str

    def found(self) -> bool:
        from sync.models import AuditEntry, SyncEvent

        return (SyncEvent.objects.filter(label=self.label, uid=self.uid, status=SyncEvent.Status.DEAD).exists()
                or AuditEntry.objects.filter(action="dead_letter.retry", target=f"{self.label}:{self.uid}").exists())


@dataclass(frozen=True)
class AlertOpened:
    """An alert of this rule was opened (it may have resolved since)."""

    rule: str

    def found(self) -> bool:
        from sync.observe.models import Alert

        return Alert.objects.filter(rule=self.rule).exists()


@dataclass(frozen=True)
class SagaEnded:
    """A dual-write saga of the entity ended so (`compensated`, `compensation_failed`, ...)."""

    label: str
    uid: str
    status: str

    def found(self) -> bool:
        from sync.models import SagaLog

        return SagaLog.objects.filter(label=self.label, uid=self.uid, status=self.status).exists()


@dataclass(frozen=True)
class FailedAttempt:
    """An attempt at the entity's work failed and its event says so (`failed_at`, which stays once
    a later attempt succeeds; the error text itself is the case's to check while it is there)."""

    label: str
    uid: str

    def found(self) -> bool:
        from sync.models import SyncEvent

        return SyncEvent.objects.filter(label=self.label, uid=self.uid, failed_at__isnull=False).exists()


@dataclass(frozen=True)
class ErrorCounted:
    """`sync_errors_total{kind}` grew past `before` (its value when the fault began), summed over
    every process that counts into PROMETHEUS_MULTIPROC_DIR."""

    kind: str
    before: float

    def found(self) -> bool:
        from sync.observe.counters import counter_totals

        return counter_totals()["errors"].get(self.kind, 0) > self.before


def assert_index_matches_graph(graph, vectors, *, dead_letters: int = 0, visible=()) -> Comparison:
    """The end of every fault case: equal stores, nothing waiting, no change without a finished
    event, records at the graph's versions, exactly the dead letters expected, and every trace in
    `visible` found."""
    result = compare(graph, vectors)
    assert result.equal and result.dead == dead_letters, str(result)
    hidden = [trace for trace in visible if not trace.found()]
    assert not hidden, f"failures that left no trace: {hidden}"
    return result

"""Resync: enqueue entities again, whatever our records say (used by commands, the UI and repair).

People resync one entity, a label or everything. Before it runs, `preview` says how many
entities that is, how many will need embedding (never embedded, failed, or the graph moved since)
and how many are likely metadata-only (the worker compares content hashes and skips the model for
unchanged text), how long the embedding should take at the fastest rate measured lately, and which
priority lane the work uses. `start` then enqueues — LOW unless the person picks otherwise, HIGH
only for a handful of entities so that HIGH work is never starved — at most RESYNC_PER_MINUTE
times a minute per person, audited; large scopes are handed to the task cluster. A label or full
resync is a backfill (sync.backfill): behind the streaming changes, out of their lag, with its
progress on the overview and the Queue page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, Q
from django.utils import timezone

from sync import backfill, ids, queue
from sync.models import AuditEntry, Backfill, Priority, SyncRecord
from sync.observe.samples import embed_rate
from sync.policy import synced_labels
from sync.stores import graph_store
from sync.stores.base import StoreError

ENTITY, LABEL, ALL = "entity", "label", "all"
SCOPES = (ENTITY, LABEL, ALL)
HIGH_MAX = 100  # the most entities a resync may put in the HIGH lane
INLINE_MAX = 2_000  # larger scopes are enqueued by a task, not in the web request
RATE_WINDOW = timedelta(minutes=1)


class NotResynced(Exception):
    """Why a resync was not previewed or started, in words for the person who asked."""


class RateLimited(NotResynced):
    """This person started RESYNC_PER_MINUTE resyncs in the last minute."""


@dataclass(frozen=True)
class Scope:
    kind: str
    label: str = ""
    uid: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SCOPES:
            raise NotResynced(f"scope must be one of {', '.join(SCOPES)}")
        if self.kind in (ENTITY, LABEL) and self.label not in synced_labels():
            raise NotResynced(f"{self.label[:64]!r} is not a label the policy syncs")
        if self.kind == ENTITY and not self.uid:
            raise NotResynced("an entity resync needs the entity's uid")

    @property
    def labels(self) -> list[str]:
        return list(synced_labels()) if self.kind == ALL else [self.label]

    @property
    def target(self) -> str:
        return {ENTITY: ids.entity_key(self.label, self.uid), LABEL: self.label, ALL: "all"}[self.kind]

    def describe(self) -> str:
        return {ENTITY: f"{self.label} {self.uid}", LABEL: f"every {self.label}",
                ALL: "every synced entity"}[self.kind]

    def command_args(self, priority: str) -> list[str]:
        """`manage.py resync` arguments doing the same."""
        what = {ENTITY: ["--entity", self.target], LABEL: ["--label", self.label], ALL: ["--all"]}[self.kind]
        return ["resync", *what, "--priority", priority]


@dataclass(frozen=True)
class Preview:
    scope: Scope
    entities: int
    embed: int  # never embedded, failed, or the graph moved since the vector was written
    metadata_only: int  # text unchanged as far as our records know
    chunks_per_entity: float
    rate: float | None  # chunks embedded per second, the fastest measured lately
    priorities: tuple[str, ...]  # the lanes this resync may use
    default_priority: str

    @property
    def seconds(self) -> float | None:
        if not self.embed:
            return 0.0
        return self.embed * self.chunks_per_entity / self.rate if self.rate else None

    @property
    def confirm_word(self) -> str:
        """What the person types to confirm: the label, or "everything" for all."""
        return {ENTITY: "", LABEL: self.scope.label if self.entities > INLINE_MAX else "",
                ALL: "everything"}[self.scope.kind]


def scope_from(data) -> Scope:
    return Scope(kind=data.get("scope", "").strip(), label=data.get("label", "").strip()[:64],
                 uid=data.get("uid", "")[:1024])


def _needing_embedding() -> Q:
    return (Q(vector_version=None) | Q(content_hash="") | Q(status__in=[SyncRecord.Status.FAILED])
            | Q(graph_version__gt=F("vector_version")))


def preview(scope: Scope) -> Preview:
    """What a resync of `scope` would do; NotResynced when the graph cannot be counted."""
    records = SyncRecord.objects.filter(label__in=scope.labels)
    if scope.kind == ENTITY:
        records = records.filter(uid=scope.uid)
        try:
            found = graph_store().get_entities([(scope.label, scope.uid)])
        except (StoreError, ValueError) as exc:
            raise NotResynced(f"cannot read the entity from Neo4j: {exc}") from exc
        if not found:
            raise NotResynced(f"the graph holds no {scope.label} {scope.uid!r}")
        entities = 1
    else:
        try:
            entities = sum(graph_store().count_label(label) for label in scope.labels)
        except StoreError as exc:
            raise NotResynced(f"cannot count the entities in Neo4j: {exc}") from exc
    counts = records.aggregate(known=Count("id"), embed=Count("id", filter=_needing_embedding()),
                               chunks=Count("id", filter=Q(chunk_count__gt=1)))
    unknown = max(entities - counts["known"], 0)  # in the graph, never recorded: never embedded
    embed = min(counts["embed"] + unknown, entities)
    chunks = 1.0 + (counts["chunks"] / counts["known"] if counts["known"] else 0.0)  # a rough mean
    lanes = tuple(p.label for p in Priority if p != Priority.HIGH or entities <= HIGH_MAX)
    default = Priority.LOW.label
    return Preview(scope, entities, embed, entities - embed, chunks, embed_rate(), lanes, default)


def check_rate(actor) -> None:
    """NotResynced when this person has started RESYNC_PER_MINUTE resyncs in the last minute."""
    limit = settings.RESYNC_PER_MINUTE
    if not limit or not getattr(actor, "pk", None):
        return
    since = timezone.now() - RATE_WINDOW
    recent = AuditEntry.objects.filter(actor=actor, action="resync", at__gt=since).count()
    if recent >= limit:
        raise RateLimited(f"you started {recent} resyncs in the last minute (the limit is {limit}); "
                          "wait a minute, or resync the whole label at once")


def start(scope: Scope, *, actor, priority: str = "low", note: str = "", background: bool = True) -> dict:
    """Enqueue the scope's entities in the chosen lane; returns what was done (audited). More than
    INLINE_MAX entities go to the task cluster when `background` (the web request does not wait)."""
    if priority not in Priority.labels:
        raise NotResynced(f"priority must be one of {', '.join(Priority.labels)}")
    shown = preview(scope)
    if priority not in shown.priorities:
        raise NotResynced(f"HIGH is for at most {HIGH_MAX} entities, so HIGH work is never starved; "
                          f"this resync covers {shown.entities}: choose MEDIUM or LOW")
    check_rate(actor)
    lane = Priority.from_label(priority)
    summary = {"scope": scope.kind, "entities": shown.entities, "embed": shown.embed, "priority": priority}
    if scope.kind == ENTITY:
        resync_entity(scope.label, scope.uid, actor=actor, priority=lane, note=note)
        return {**summary, "queued": 1, "background": False}
    if background and shown.entities > INLINE_MAX:
        from django_q.tasks import async_task

        # Audited when asked for (entries are written once): the count is the preview's.
        load = _backfill(scope.labels, scope.target, actor, note, expected=shown.entities)
        entry = AuditEntry.record(actor, "resync", scope.target, after={**summary, "background": True,
                                                                        "backfill": load.pk}, note=note)
        async_task("sync.tasks.resync_labels", scope.labels, int(lane), entry.pk, load.pk, group="resync",
                   q_options={"timeout": 3600})
        return {**summary, "queued": 0, "background": True, "audit": entry.pk, "backfill": load.pk}
    counts = resync_labels(scope.labels, actor=actor, priority=lane, note=note, target=scope.target,
                           expected=shown.entities)
    return {**summary, "queued": sum(counts.values()), "background": False}


def resync_entity(label: str, uid: str, *, actor, priority: int | None = None, note: str = "") -> None:
    lane = queue.priority_of(label) if priority is None else priority
    queue.enqueue(queue.Work(label=label, uid=uid, priority=lane, source="resync"))
    AuditEntry.record(actor, "resync", f"{label}:{uid}", after={"queued": 1, "priority": Priority(lane).label},
                      note=note)


def _backfill(labels: list[str], target: str | None, actor, note: str, expected: int = 0) -> Backfill:
    scope = "every synced label" if target == "all" else ", ".join(labels)
    return backfill.start(Backfill.Kind.RESYNC, scope=scope, reason=f"resync of {scope}" + (f": {note}" if note else ""),
                          actor=actor, total=expected)


def resync_labels(labels: list[str], *, actor, priority: int | None = None, note: str = "",
                  target: str | None = None, entry: AuditEntry | None = None, backfill_id: int | None = None,
                  expected: int = 0) -> dict[str, int]:
    """Enqueue every entity of these labels as one backfill (paged in uid order, one graph read a
    page; sync.backfill.enqueue_labels).

    Audited once per label — or once for the whole request (`target`); a background resync
    (`entry`: the audit entry it was started with; `backfill_id`: the backfill recorded then) is
    audited already. `expected`: the entities the preview counted."""
    load = (Backfill.objects.get(pk=backfill_id) if backfill_id is not None
            else _backfill(labels, target, actor, note, expected))
    counts = backfill.enqueue_labels(load, labels, priority=priority, source="resync")
    if target is None and entry is None:
        for label in labels:
            lane = queue.priority_of(label) if priority is None else priority
            AuditEntry.record(actor, "resync", label, after={"queued": counts[label], "priority": Priority(lane).label,
                                                             "backfill": load.pk}, note=note)
    if target is not None:
        AuditEntry.record(actor, "resync", target, after={"queued": sum(counts.values()), "labels": counts,
                                                          "priority": "policy" if priority is None else Priority(priority).label,
                                                          "backfill": load.pk},
                          note=note)
    return counts

"""What the sync engine records: per-entity sync records, the durable event queue (outbox), the
change cursor, saga logs of dual-writes, the audit trail of human actions, and the tokens of the
ingest API (bound to the sources they may claim).

None of these is trusted alone: reconciliation checks them against both live stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import connection, models
from django.db.models import Q
from django.db.models.functions import Substr
from django.utils import timezone

from nightingale.tokens import BearerToken


def _in_list(queryset, field: str, values: Sequence):
    """`queryset` restricted to `field IN values`, the list written into the SQL directly: Django
    compiles an IN list value by value through the field (about 10 µs a value), and the workers
    ask for thousands of rows a batch."""
    meta = queryset.model._meta
    quote = connection.ops.quote_name
    column = f"{quote(meta.db_table)}.{quote(meta.get_field(field).column)}"
    return queryset.extra(where=[f"{column} IN ({', '.join(['%s'] * len(values))})"], params=list(values))


def with_ids(queryset, ids: Sequence[int]):
    """`queryset` restricted to these primary keys."""
    return _in_list(queryset, "id", [int(i) for i in ids]) if ids else queryset.none()


def for_entities(queryset, keys, size: int = 500):
    """`queryset` restricted to the (label, uid) keys: one query per label and `size` uids, so a
    batch of thousands of entities never builds one oversized IN clause."""
    by_label: dict[str, list[str]] = {}
    for label, uid in keys:
        by_label.setdefault(label, []).append(uid)
    for label, uids in by_label.items():
        for start in range(0, len(uids), size):
            yield _in_list(queryset.filter(label=label), "uid", uids[start:start + size])


class Priority(models.IntegerChoices):
    """How urgent work is: the sync policy gives each label one, the queue stores it (0/1/2: lower
    sorts first, so workers claim HIGH before MEDIUM before LOW). Whatever people and programs
    read or type says its `label` ("high"/"medium"/"low"): the API's JSON, the FRESHNESS_TARGETS
    keys, `--priority`, the metrics' priority label, the pages."""

    HIGH = 0, "high"
    MEDIUM = 1, "medium"
    LOW = 2, "low"

    @classmethod
    def from_label(cls, label: str) -> Priority:
        """The member named "high", "medium" or "low" (from a flag, a form or the API)."""
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(f"priority must be one of {', '.join(cls.labels)}, got {label[:40]!r}")


class SyncRecord(models.Model):
    """Our record of one entity: which graph version we know and which vector version we wrote."""

    class Status(models.TextChoices):
        IN_SYNC = "in_sync"
        PENDING = "pending"  # work for the entity is queued or in flight
        FAILED = "failed"
        CONFLICT = "conflict"  # vectors follow the graph, but a conflict on the entity is open
        EXCLUDED = "excluded"
        DELETED = "deleted"

    label = models.CharField(max_length=64)
    uid = models.CharField(max_length=1024)
    graph_version = models.BigIntegerField(null=True, blank=True)
    vector_version = models.BigIntegerField(null=True, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    changed_at = models.DateTimeField(null=True, blank=True)  # graph updated_at of graph_version
    synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["label", "uid"], name="sync_record_entity")]
        indexes = [
            models.Index(fields=["status", "label"], name="sync_record_status"),
            models.Index(fields=["-synced_at"], name="sync_record_synced"),
        ]

    def __str__(self) -> str:
        return f"{self.label}:{self.uid} ({self.status})"

    @classmethod
    def upsert(cls, records: Sequence[SyncRecord], fields: Sequence[str]) -> int:
        """Insert the records, or update `fields` (and updated_at) of those that exist by (label, uid).

        One statement prepared once and run per row: the workers write a record for every event,
        and bulk_create(update_conflicts=True) spends longer compiling SQL per value than the
        database spends writing the rows.
        """
        if not records:
            return 0
        now = timezone.now()
        columns = [f for f in cls._meta.concrete_fields if not f.primary_key]
        updated = [cls._meta.get_field(name).column for name in (*fields, "updated_at")]
        quote = connection.ops.quote_name
        sql = (f"INSERT INTO {quote(cls._meta.db_table)} ({', '.join(quote(f.column) for f in columns)}) "
               f"VALUES ({', '.join(['%s'] * len(columns))}) "
               f"ON CONFLICT ({quote('label')}, {quote('uid')}) DO UPDATE SET "
               + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updated))
        dates = {f.attname for f in columns if isinstance(f, models.DateTimeField)}
        rows = []
        for record in records:
            record.updated_at = now
            rows.append([connection.ops.adapt_datetimefield_value(getattr(record, f.attname))
                         if f.attname in dates else getattr(record, f.attname) for f in columns])
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        return len(rows)


class Backfill(models.Model):
    """A bulk load of entities into the vector index, tracked as a phase apart from the streaming
    changes (as a CDC tool's snapshot is apart from its stream): the first start's initial sync,
    a demo load, a whole-catalogue feed import, a label or full resync, a reconciliation's repairs
    past BACKFILL_MIN_ENTITIES. Its work is ordinary sync events marked with it; its progress is
    read from them (sync.backfill), never counted by the workers."""

    class Kind(models.TextChoices):
        INITIAL_SYNC = "initial_sync", "Initial sync"
        LOAD = "load", "Bulk load"
        IMPORT = "import", "Feed import"
        RESYNC = "resync", "Resync"
        REPAIR = "repair", "Reconciliation repairs"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    scope = models.CharField(max_length=200, blank=True)  # what it covers, in words: "every synced label"
    reason = models.TextField(blank=True)  # why it runs, in words
    actor_name = models.CharField(max_length=150, blank=True)  # who started it: a user, "command", "system"
    total = models.PositiveBigIntegerField(default=0)  # entities it covers (an estimate until loaded)
    enqueued = models.PositiveBigIntegerField(default=0)  # entities handed to the queue so far
    started_at = models.DateTimeField(default=timezone.now)
    loaded_at = models.DateTimeField(null=True, blank=True)  # every entity handed over (the producer is done)
    finished_at = models.DateTimeField(null=True, blank=True)  # loaded, and none of its work left waiting

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.scope or 'entities'}"


class SyncEvent(models.Model):
    """A durable unit of queued work for one entity. `dead` is the dead-letter queue."""

    class Operation(models.TextChoices):
        UPSERT = "upsert"
        DELETE = "delete"

    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_FLIGHT = "in_flight"
        DONE = "done"
        DEAD = "dead"

    label = models.CharField(max_length=64)
    uid = models.CharField(max_length=1024)
    operation = models.CharField(max_length=8, choices=Operation.choices, default=Operation.UPSERT)
    version = models.BigIntegerField(null=True, blank=True)  # newest graph version seen
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.MEDIUM)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    source = models.CharField(max_length=32, default="capture")  # capture, write, resync, reconcile, retry
    attempts = models.PositiveIntegerField(default=0)
    # Batches it was in that a timeout cut short (not counted as attempts): once it has been in
    # one it is applied alone, and after SYNC_MAX_INTERRUPTIONS it is a dead letter (sync.queue).
    interruptions = models.PositiveIntegerField(default=0)
    coalesced = models.PositiveIntegerField(default=0)  # later changes folded into this event
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claim_token = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)  # earliest unsynced graph change
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=32, blank=True)  # upserted, deleted, unchanged, stale, ...
    # Change-to-vector lag on Neo4j's clock, for an apply that brought a graph change to the index;
    # null for work that changed nothing there (a resync of unchanged data, a stale or fenced event).
    lag_seconds = models.FloatField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)  # when the attempt that left last_error failed
    resolved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")
    # SYNC_TRANSPORT=kafka: where this dead letter's message lies in the dead-letter topic
    # (`topic:partition@offset`), which a retry re-publishes; empty for the outbox's.
    dlq_position = models.CharField(max_length=300, blank=True)
    # The bulk load this work belongs to; null for a streaming change. Claimed after streaming
    # work and kept out of the streaming lag, depth and freshness (sync.backfill).
    backfill = models.ForeignKey(Backfill, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="events", db_index=False)

    class Meta:
        constraints = [
            # Coalescing: at most one queued event per entity (an in-flight one may exist beside it).
            models.UniqueConstraint(fields=["label", "uid"], condition=Q(status="queued"),
                                    name="sync_event_one_queued_per_entity"),
        ]
        indexes = [
            models.Index(fields=["status", "priority", "next_attempt_at"], name="sync_event_claim"),
            models.Index(fields=["status", "created_at"], name="sync_event_age"),
            models.Index(fields=["status", "lease_expires_at"], name="sync_event_lease"),
            models.Index(fields=["label", "uid"], name="sync_event_entity"),
            models.Index(fields=["status", "-finished_at"], name="sync_event_finished"),
            # A backfill's progress (waiting, failed, finished lately, last progress) in one scan
            # of its own entries; streaming events are not in it, so they cost it nothing.
            models.Index(fields=["backfill", "status", "finished_at"], condition=Q(backfill__isnull=False),
                         name="sync_event_backfill"),
        ]

    def __str__(self) -> str:
        return f"{self.operation} {self.label}:{self.uid} v{self.version} ({self.status})"


class ChangeCursor(models.Model):
    """How far change capture has read Neo4j, and which poller holds the lease to read further."""

    name = models.CharField(max_length=64, unique=True, default="neo4j")
    updated_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    polled_at = models.DateTimeField(null=True, blank=True)
    # Neo4j's time when the last poll that read every page began: what was committed by then is read.
    read_through = models.DateTimeField(null=True, blank=True)
    changes_seen = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.updated_at}"


class WorkerLease(models.Model):
    """A named slot one process holds at a time: the drain tasks' SYNC_DRAIN_WORKERS slots.

    Taken, renewed and released with conditional updates whose count is checked; a slot whose
    holder died frees itself when its lease expires.
    """

    name = models.CharField(max_length=64, unique=True)
    owner = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name}: {self.owner or 'free'}"

    @classmethod
    def take(cls, names: Sequence[str], owner: str, seconds: float) -> str | None:
        """The first of `names` that is free (or expired) and now `owner`'s, else None."""
        now = timezone.now()
        for name in names:
            cls.objects.get_or_create(name=name)
            free = Q(owner="") | Q(owner=owner) | Q(expires_at__lt=now) | Q(expires_at=None)
            if cls.objects.filter(free, name=name).update(owner=owner, expires_at=now + timedelta(seconds=seconds)):
                return name
        return None

    @classmethod
    def renew(cls, name: str, owner: str, seconds: float) -> bool:
        """False when the lease is no longer `owner`'s (it expired and another process took it)."""
        return bool(cls.objects.filter(name=name, owner=owner).update(
            expires_at=timezone.now() + timedelta(seconds=seconds)))

    @classmethod
    def release(cls, name: str, owner: str) -> None:
        cls.objects.filter(name=name, owner=owner).update(owner="", expires_at=None)


class SagaLog(models.Model):
    """One synchronous dual-write: its steps and how it ended."""

    class Status(models.TextChoices):
        STARTED = "started"
        ABORTED = "aborted"  # the graph refused the write: nothing to undo
        COMMITTED = "committed"
        DEFERRED = "deferred"  # graph kept, vector left to the queue (policy says so)
        COMPENSATED = "compensated"
        COMPENSATION_FAILED = "compensation_failed"

    label = models.CharField(max_length=64)
    uid = models.CharField(max_length=1024)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.STARTED)
    previous_version = models.BigIntegerField(null=True, blank=True)
    new_version = models.BigIntegerField(null=True, blank=True)
    steps = models.JSONField(default=list)
    error = models.TextField(blank=True)
    actor = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "-started_at"], name="saga_status"),
            models.Index(fields=["label", "uid"], name="saga_entity"),
        ]

    def __str__(self) -> str:
        return f"saga {self.label}:{self.uid} {self.status}"

    def step(self, name: str, ok: bool, detail: str = "") -> None:
        self.steps.append({"step": name, "ok": ok, "detail": detail[:2000],
                           "at": timezone.now().isoformat()})


class ImmutableAuditEntry(Exception):
    """Someone tried to change or delete an audit entry."""


TARGET_PREFIX = 200


class TargetHead(models.Func):
    """An audit target's first TARGET_PREFIX characters, the expression of the audit_target_prefix
    index, with the numbers written into the SQL: a database uses an index on an expression only
    for the same SQL text, and Substr's bound parameters are not (SQLite scanned all 200,000)."""

    template = f"SUBSTR(%(expressions)s, 1, {TARGET_PREFIX})"
    output_field = models.CharField()


class AuditEntry(models.Model):
    """Who did what to which entity or record, with the state before and after."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                              on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)  # kept if the user is deleted
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=1200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [
            models.Index(fields=["action", "-at"], name="audit_action"),
            # The audit page's keyset pages (newest first) and its user filter. (Not the target:
            # 1,200 characters can outgrow a PostgreSQL b-tree entry.)
            models.Index(fields=["-at", "-id"], name="audit_page"),
            models.Index(fields=["actor_name", "-at"], name="audit_actor"),
            # An entity's analyst actions (its timeline): the target's first characters, which fit
            # any b-tree entry; `for_target` matches on them, then on the whole target.
            models.Index(Substr("target", 1, TARGET_PREFIX), name="audit_target_prefix"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action} {self.target}"

    def save(self, *args, **kwargs):
        """Written once: an entry that exists already is never saved again (sync.audit)."""
        if not self._state.adding:
            raise ImmutableAuditEntry(f"audit entry #{self.pk} cannot be changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableAuditEntry(f"audit entry #{self.pk} cannot be deleted")

    @classmethod
    def record(cls, actor, action: str, target: str = "", *, before=None, after=None,
               note: str = "") -> AuditEntry:
        user = actor if getattr(actor, "pk", None) else None
        name = actor.get_username() if user else (actor if isinstance(actor, str) else "system")
        return cls.objects.create(actor=user, actor_name=name, action=action, target=target,
                                  before=before, after=after, note=note)

    @classmethod
    def for_target(cls, *targets: str):
        """The entries naming exactly these targets, found through the target-prefix index."""
        prefix = TargetHead("target")  # the index's own SQL text (Substr's bound numbers miss it)
        wanted = Q()
        for target in targets:
            wanted |= Q(target_prefix=target[:TARGET_PREFIX], target=target)
        return cls.objects.annotate(target_prefix=prefix).filter(wanted)


class ReconcileRun(models.Model):
    """One comparison of graph, vector store and sync records, with what it found and did."""

    class Mode(models.TextChoices):
        INCREMENTAL = "incremental"
        FULL = "full"

    class Status(models.TextChoices):
        QUEUED = "queued"  # handed to the task cluster, not started yet
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        COMMAND = "command"
        UI = "ui"
        TEST = "test"

    mode = models.CharField(max_length=16, choices=Mode.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.COMMAND)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    dry_run = models.BooleanField(default=False)
    window_start = models.DateTimeField(null=True, blank=True)  # incremental: changes since
    started_at = models.DateTimeField(default=timezone.now)  # when queued, until the run starts
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)  # last progress saved: a dead run stops moving
    duration = models.FloatField(null=True, blank=True)  # seconds
    entities_checked = models.PositiveIntegerField(default=0)
    vectors_checked = models.PositiveIntegerField(default=0)
    records_checked = models.PositiveIntegerField(default=0)
    drift = models.JSONField(default=dict)  # kind -> count found
    repaired = models.JSONField(default=dict)  # kind -> count repaired
    # kind -> findings a change on its way explains (queued, in flight, or not queued by change
    # capture yet): not drift, and not repaired
    in_flight = models.JSONField(default=dict)
    conflicts_opened = models.PositiveIntegerField(default=0)
    samples = models.JSONField(default=list)  # a few findings per kind, for the UI
    # Live progress, saved every few seconds while the run goes: entities and vectors looked at,
    # of about how many (the graph's and the store's counts when the run began).
    progress_done = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(null=True, blank=True)
    embedding_models = models.JSONField(default=dict)  # embedding model -> vectors checked that it made
    labels = models.JSONField(default=dict)  # label -> {"checked": entities compared, "drift": findings}
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["mode", "-started_at"], name="reconcile_mode")]

    def __str__(self) -> str:
        return f"{self.mode} reconciliation {self.started_at:%Y-%m-%d %H:%M} ({self.status})"

    @property
    def drift_total(self) -> int:
        return sum(self.drift.values())

    def match_scores(self) -> dict[str, float | None]:
        """Per label, the share of checked entities without drift (None: none checked)."""
        return {label: (max(c.get("checked", 0) - c.get("drift", 0), 0) / c["checked"] if c.get("checked") else None)
                for label, c in self.labels.items()}


class Conflict(models.Model):
    """Something a rule could not settle, or that the policy sends to a human."""

    class Kind(models.TextChoices):
        THREAT_INTEL = "threat_intel"
        THREAT_SEVERITY = "threat_severity"
        PROSPECT_METADATA = "prospect_metadata"
        VULNERABILITY_SCORE = "vulnerability_score"
        VECTOR_AHEAD = "vector_ahead"  # store divergence that is not safe to auto-repair

    class Status(models.TextChoices):
        OPEN = "open"
        AUTO_RESOLVED = "auto_resolved"
        RESOLVED = "resolved"
        DISMISSED = "dismissed"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    label = models.CharField(max_length=64)
    uid = models.CharField(max_length=1024)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    graph_version = models.BigIntegerField(null=True, blank=True)  # the version both sides were read at
    graph_side = models.JSONField(default=dict)  # field -> value in Neo4j
    other_side = models.JSONField(default=dict)  # field -> incoming value / vector store value
    sources = models.JSONField(default=dict)  # {"graph": {...source, confidence, at}, "other": {...}}
    proposal = models.JSONField(default=dict)  # field -> proposed value
    rule = models.CharField(max_length=64, blank=True)
    explanation = models.TextField(blank=True)
    resolution = models.CharField(max_length=16, blank=True)  # graph, other, merged, fields
    resolved_values = models.JSONField(null=True, blank=True)
    resolver = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                 on_delete=models.SET_NULL, related_name="+")
    note = models.TextField(blank=True)
    reconcile_run = models.ForeignKey(ReconcileRun, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="conflicts")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["label", "uid", "kind"], condition=Q(status="open"),
                                    name="conflict_one_open_per_entity_kind"),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="conflict_status"),
            models.Index(fields=["label", "uid"], name="conflict_entity"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.label}:{self.uid} ({self.status})"

    @property
    def fields(self) -> list[str]:
        return sorted(set(self.graph_side) | set(self.other_side))


class IngestToken(BearerToken):
    """A bearer token for the ingest API (`POST /api/v1/entities`), bound to the `source` values
    it may claim and the labels it may write (sync.ingest.tokens): the conflict rules trust a
    write's source, so it is the token's, never the caller's word. Only a SHA-256 digest of the
    token is stored: the token itself is shown once, when it is made (`manage.py ingest_token create`)."""

    sources = models.JSONField(default=list)  # the exact `source` values it may send
    labels = models.JSONField(default=list)  # the labels it may write

    def __str__(self) -> str:
        return f"{self.prefix}… {self.name}"

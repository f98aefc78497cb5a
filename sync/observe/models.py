"""What observation records: metric samples and their rollups, heartbeats, alerts and their deliveries."""

from __future__ import annotations

import orjson
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class OrjsonField(models.TextField):
    """JSON in a text column, read with orjson: a 30-day chart reads thousands of samples, and
    Django's JSONField decodes each one with the standard library's slower parser."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else orjson.loads(value)

    def to_python(self, value):
        return orjson.loads(value) if isinstance(value, str | bytes) else value

    def get_prep_value(self, value):
        return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class MetricSample(models.Model):
    """The sync engine's numbers over one interval ending at `at` (see sync.observe.samples)."""

    class Resolution(models.TextChoices):
        RAW = "raw"  # one SAMPLE_INTERVAL (15 s by default), kept SAMPLE_RAW_HOURS
        FIVE_MINUTES = "5m"  # a rollup of the raw samples of five minutes, kept SAMPLE_ROLLUP_DAYS
        HOUR = "1h"  # a rollup of the five-minute samples of an hour, kept SAMPLE_ROLLUP_DAYS (long charts)

    resolution = models.CharField(max_length=4, choices=Resolution.choices)
    at = models.DateTimeField()
    seconds = models.FloatField()  # the length of the interval the counts cover
    data = OrjsonField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["resolution", "at"], name="metric_sample_at")]

    def __str__(self) -> str:
        return f"{self.resolution} sample at {self.at:%Y-%m-%d %H:%M:%S}"


class Heartbeat(models.Model):
    """A process saying it is alive: the observer loop that runs beside change capture."""

    name = models.CharField(max_length=64, unique=True)
    at = models.DateTimeField()
    owner = models.CharField(max_length=128, blank=True)
    detail = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"{self.name} at {self.at:%H:%M:%S} ({self.owner})"

    @classmethod
    def beat(cls, name: str, owner: str, **detail) -> None:
        cls.objects.update_or_create(name=name, defaults={"at": timezone.now(), "owner": owner[:128],
                                                          "detail": detail})


# What each alert rule is called, by its key: a stored alert shows its title, and the rules
# themselves (sync.observe.alerting) judge readings, which the models must not import.
ALERT_TITLES = {
    "lag": "Sync lag above threshold",
    "queue_depth": "Queue depth above threshold",
    "dead_letters": "Dead letters waiting",
    "freshness_high": "HIGH freshness target breached",
    "freshness_medium": "MEDIUM freshness target breached",
    "freshness_low": "LOW freshness target breached",
    "reconciliation_failed": "Reconciliation failed",
    "reconciliation_overdue": "Reconciliation overdue",
    "compensation_failed": "Saga compensation failed",
    "graph_unreachable": "Neo4j unreachable",
    "vector_store_unreachable": "Vector store unreachable",
    "workers_heartbeat": "Workers not heartbeating",
    "search_canary": "Search canary missed",
    "backfill_stalled": "Backfill stalled",
}


class Alert(models.Model):
    """One breach of one rule, from the check that found it to the check that saw it clear."""

    class Severity(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    rule = models.CharField(max_length=64)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    summary = models.TextField()  # the latest reading, in words
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)  # the last check that found it holding
    clear_since = models.DateTimeField(null=True, blank=True)  # held no more since (not yet resolved)
    resolved_at = models.DateTimeField(null=True, blank=True)
    flaps = models.PositiveIntegerField(default=0)  # cleared and returned while still open
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                        on_delete=models.SET_NULL, related_name="+")
    acknowledged_name = models.CharField(max_length=150, blank=True)  # kept if the user is deleted

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(fields=["rule"], condition=Q(status="open"), name="alert_one_open_per_rule"),
        ]
        indexes = [models.Index(fields=["status", "-opened_at"], name="alert_status")]

    def __str__(self) -> str:
        return f"{self.severity} {self.rule} ({self.status})"

    @property
    def is_critical(self) -> bool:
        return self.severity == self.Severity.CRITICAL

    @property
    def title(self) -> str:
        return ALERT_TITLES.get(self.rule, self.rule)


class AlertDelivery(models.Model):
    """One notification of an alert opening or resolving, to one channel, with its attempts."""

    class Event(models.TextChoices):
        OPENED = "opened"
        RESOLVED = "resolved"

    class Channel(models.TextChoices):
        WEBHOOK = "webhook"
        EMAIL = "email"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"  # out of attempts

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16, choices=Event.choices)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alert_delivery_due")]

    def __str__(self) -> str:
        return f"{self.channel} {self.event} of alert {self.alert_id} ({self.status})"


class CanaryCheck(models.Model):
    """One search-canary probe: a recently synced HIGH entity searched for by its own text, and
    whether the index returned it in the top k (sync.search.canary)."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    label = models.CharField(max_length=64)
    uid = models.CharField(max_length=1024)
    version = models.BigIntegerField(null=True, blank=True)  # the graph version searched for
    top_k = models.PositiveSmallIntegerField()
    found = models.BooleanField(default=False)
    rank = models.PositiveSmallIntegerField(null=True, blank=True)  # 1 = best; None when missed
    score = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)  # why the probe could not search (a store did not answer)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"canary {self.label}:{self.uid} {'found' if self.found else 'missed'} at {self.at:%H:%M}"

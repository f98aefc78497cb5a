"""Reconciliation runs as people start and follow them: start on a user's behalf (rate-limited
per user, audited), read progress, resync what a run found.

The run itself is sync.reconcile.reconciler's: `start` queues it for the task cluster, which executes it
and saves progress every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sync.models import AuditEntry, ReconcileRun
from sync.policy import policy_for
from sync.reconcile import reconciler as reconcile
from sync.resync import resync_entity

ACTIVE = (ReconcileRun.Status.QUEUED, ReconcileRun.Status.RUNNING)


class NotStarted(Exception):
    """Why a run was not started, in words for the person who asked."""

    def __init__(self, message: str, run: ReconcileRun | None = None):
        super().__init__(message)
        self.run = run


def start_for(user, mode: str, *, dry_run: bool, trigger: str = ReconcileRun.Trigger.UI) -> ReconcileRun:
    """Queue a run for `user`. Refused while another run is queued or running (one at a time is
    what a 2-core machine can afford; the ongoing one is named), and when the same user started
    one less than RECONCILE_START_INTERVAL seconds ago."""
    if mode not in ReconcileRun.Mode.values:
        raise NotStarted(f"mode must be one of {', '.join(ReconcileRun.Mode.values)}")
    now = timezone.now()
    with transaction.atomic():
        ongoing = ReconcileRun.objects.filter(status__in=ACTIVE).order_by("started_at").first()
        if ongoing is not None:
            raise NotStarted(f"reconciliation #{ongoing.pk} ({ongoing.mode}) is {ongoing.status}; "
                             "watch it finish, then start another", ongoing)
        interval = settings.RECONCILE_START_INTERVAL
        if getattr(user, "pk", None) and interval:
            last = (ReconcileRun.objects.filter(triggered_by=user, started_at__gt=now - timedelta(seconds=interval))
                    .order_by("-started_at").first())
            if last is not None:
                wait = interval - (now - last.started_at).total_seconds()
                raise NotStarted(f"you started reconciliation #{last.pk} less than {interval:g} s ago; "
                                 f"try again in {max(wait, 1):.0f} s", last)
        run = reconcile.start(mode, dry_run=dry_run, trigger=trigger, user=user if getattr(user, "pk", None) else None)
        AuditEntry.record(user, "reconcile.start", f"reconcile:{run.pk}",
                          after={"mode": mode, "dry_run": dry_run, "trigger": trigger})
    return run


@dataclass(frozen=True)
class RunProgress:
    """How far one reconciliation run has got, as its page polls it."""

    status: str
    done: int
    total: int | None
    updated_at: object

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def progress(run: ReconcileRun) -> RunProgress:
    return RunProgress(run.status, run.progress_done, run.progress_total, run.updated_at)


def samples_by_kind(run: ReconcileRun) -> dict[str, list[dict]]:
    """The run's sample findings, by drift kind in reconcile.KINDS order."""
    grouped: dict[str, list[dict]] = {kind: [] for kind in reconcile.KINDS}
    for sample in run.samples or []:
        grouped.setdefault(sample.get("kind", "?"), []).append(sample)
    return {kind: items for kind, items in grouped.items() if items}


RESYNCABLE = ("missing_vector", "stale_vector", "content_drift", "policy_violation")


def resync_samples(run: ReconcileRun, kind: str, actor) -> int:
    """Enqueue a resync of the entities sampled for one drift kind (audited per entity). Orphans
    have no entity to resync and vector-ahead findings are conflicts for an analyst."""
    if kind not in RESYNCABLE:
        raise NotStarted(f"{kind} findings cannot be resynced"
                         + (": the entity no longer exists" if kind == "orphan_vector" else ": resolve the conflict"))

    keys = {(s["label"], s["uid"]) for s in run.samples or [] if s.get("kind") == kind}
    keys = [key for key in sorted(keys) if policy_for(key[0]).synced]
    for label, uid in keys:
        resync_entity(label, uid, actor=actor)
    return len(keys)

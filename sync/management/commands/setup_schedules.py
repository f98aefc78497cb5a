"""Create or update the django-q2 schedules (idempotent: keyed by name)."""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone
from django_q.models import Schedule

SCHEDULES = [
    # name, task, schedule type, minutes between runs (MINUTES only), first run after (minutes)
    ("sync: capture changes", "sync.tasks.capture_changes", Schedule.MINUTES, 1, 0),
    ("sync: drain queue", "sync.tasks.drain_queue", Schedule.MINUTES, 1, 0),
    ("sync: compact vector store", "sync.tasks.compact_vectors", Schedule.HOURLY, None, 60),
    ("sync: purge finished events", "sync.tasks.purge_finished_events", Schedule.DAILY, None, 60),
    ("sync: purge applied tombstones", "sync.tasks.purge_tombstones", Schedule.DAILY, None, 90),
    ("sync: end abandoned sagas and runs", "sync.tasks.upkeep", Schedule.MINUTES, 5, 5),
    ("search: canary", "sync.tasks.search_canary", Schedule.MINUTES, settings.SEARCH_CANARY_MINUTES,
     settings.SEARCH_CANARY_MINUTES),
    # Reconciliation waits one interval before its first run, so a fresh system's initial sync
    # is not reported as drift.
    ("reconcile: incremental", "sync.tasks.reconcile_incremental", Schedule.MINUTES,
     settings.RECONCILE_INCREMENTAL_MINUTES, settings.RECONCILE_INCREMENTAL_MINUTES),
    ("reconcile: full", "sync.tasks.reconcile_full", Schedule.MINUTES,
     settings.RECONCILE_FULL_HOURS * 60, settings.RECONCILE_FULL_HOURS * 60),
]


class Command(BaseCommand):
    help = "Create or update the periodic sync tasks (capture, drain, compaction, purge, reconciliation)."

    def handle(self, *args, **options):
        for name, func, schedule_type, minutes, first_after in SCHEDULES:
            defaults = {"func": func, "schedule_type": schedule_type, "repeats": -1, "minutes": minutes}
            schedule, created = Schedule.objects.update_or_create(name=name, defaults=defaults)
            if created:
                # Only on creation: a restart must not push back a run that is already due.
                schedule.next_run = timezone.now() + timedelta(minutes=first_after)
                schedule.save(update_fields=["next_run"])
            self.stdout.write(f"{'created' if created else 'updated'}: {name} -> {func}")

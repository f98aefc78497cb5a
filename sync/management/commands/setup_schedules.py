"""Create or update the django-q2 schedules (idempotent: keyed by name)."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django_q.models import Schedule

SCHEDULES = [
    # name, task, schedule type, minutes, kwargs
    ("sync: capture changes", "sync.tasks.capture_changes", Schedule.MINUTES, 1),
    ("sync: drain queue", "sync.tasks.drain_queue", Schedule.MINUTES, 1),
    ("sync: compact vector store", "sync.tasks.compact_vectors", Schedule.HOURLY, None),
    ("sync: purge finished events", "sync.tasks.purge_finished_events", Schedule.DAILY, None),
    ("reconcile: incremental", "sync.tasks.reconcile_incremental", Schedule.MINUTES,
     settings.RECONCILE_INCREMENTAL_MINUTES),
]


class Command(BaseCommand):
    help = "Create or update the periodic sync tasks (change capture, drain, compaction, purge)."

    def handle(self, *args, **options):
        for name, func, schedule_type, minutes in SCHEDULES:
            defaults = {"func": func, "schedule_type": schedule_type, "repeats": -1}
            if minutes:
                defaults["minutes"] = minutes
            _, created = Schedule.objects.update_or_create(name=name, defaults=defaults)
            self.stdout.write(f"{'created' if created else 'updated'}: {name} -> {func}")
        # Full reconciliation every RECONCILE_FULL_HOURS hours.
        _, created = Schedule.objects.update_or_create(
            name="reconcile: full",
            defaults={"func": "sync.tasks.reconcile_full", "schedule_type": Schedule.MINUTES,
                      "minutes": settings.RECONCILE_FULL_HOURS * 60, "repeats": -1},
        )
        self.stdout.write(f"{'created' if created else 'updated'}: reconcile: full -> sync.tasks.reconcile_full")

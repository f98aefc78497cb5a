"""Compare graph, vector store and sync records; repair safe drift, open conflicts for the rest."""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import ACT_ON_SYNC
from sync.management.cli import acting_user
from sync.models import ReconcileRun
from sync.reconcile import reconciler as reconcile
from sync.reconcile import runs


class Command(BaseCommand):
    help = "Run an incremental (default) or full reconciliation; --dry-run only reports."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--incremental", action="store_true", help="entities changed in the window (default)")
        mode.add_argument("--full", action="store_true", help="every synced label and every vector id")
        parser.add_argument("--dry-run", action="store_true", help="report drift, repair nothing")
        parser.add_argument("--window-minutes", type=int, default=None)
        parser.add_argument("--queue", action="store_true",
                            help="hand the run to the task cluster as the Reconciliation page does (one at a "
                                 "time, rate-limited per user, audited as reconcile.start) and return")
        parser.add_argument("--user", default="", help="with --queue: the user the run and the audit trail name")

    def handle(self, *args, full, dry_run, window_minutes, queue, user, **options):
        if window_minutes is not None and window_minutes < 1:
            raise CommandError("--window-minutes must be at least 1")
        if queue:
            self._queue("full" if full else "incremental", dry_run, user)
            return
        if user:
            raise CommandError("--user goes with --queue (a run in this process is the command's own)")
        if full:
            run = reconcile.full(dry_run=dry_run)
        else:
            from datetime import timedelta

            window = timedelta(minutes=window_minutes) if window_minutes else None
            run = reconcile.incremental(window=window, dry_run=dry_run)
        found = ", ".join(f"{k} {v}" for k, v in sorted(run.drift.items())) or "none"
        repaired = ", ".join(f"{k} {v}" for k, v in sorted(run.repaired.items())) or "nothing"
        self.stdout.write(
            f"{run.mode} reconciliation #{run.pk} {run.status} in {run.duration:.2f}s"
            f"{' (dry run)' if run.dry_run else ''}: checked {run.entities_checked} entities, "
            f"{run.vectors_checked} vectors, {run.records_checked} records")
        self.stdout.write(f"drift: {found}")
        if run.in_flight:
            on_the_way = ", ".join(f"{k} {v}" for k, v in sorted(run.in_flight.items()))
            self.stdout.write(f"not drift, changes on their way: {on_the_way}")
        self.stdout.write(f"repaired: {repaired}; conflicts opened: {run.conflicts_opened}")

    def _queue(self, mode: str, dry_run: bool, username: str) -> None:
        try:
            run = runs.start_for(acting_user(username, needs=ACT_ON_SYNC), mode, dry_run=dry_run, trigger=ReconcileRun.Trigger.COMMAND)
        except runs.NotStarted as exc:
            raise CommandError(f"not started: {exc}") from None
        self.stdout.write(f"queued {mode} reconciliation #{run.pk}{' (dry run)' if dry_run else ''}; "
                          "the task cluster runs it (manage.py workers)")

"""Alerts from a shell: list the open ones, acknowledge one (audited as --user), as the Alerts
page does."""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import ACT_ON_SYNC
from sync.management.cli import acting_user
from sync.observe import alerting


class Command(BaseCommand):
    help = "List open alerts, or acknowledge one as a user (audited)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("list", "acknowledge"))
        parser.add_argument("alert", nargs="?", type=int, help="the alert's number (acknowledge)")
        parser.add_argument("--user", default="", help="the user the audit trail names (default: 'command')")
        parser.add_argument("--note", default="")

    def handle(self, *args, action, alert, user, note, **options):
        if action == "list":
            for row in alerting.open_alerts():
                seen = f"acknowledged by {row.acknowledged_name}" if row.acknowledged_at else "not acknowledged"
                self.stdout.write(f"#{row.pk:<5} {row.severity:<8} {row.rule:<22} {seen:<28} {row.summary}")
            return
        if alert is None:
            raise CommandError("say which alert: manage.py alerts acknowledge NUMBER (see: manage.py alerts list)")
        try:
            acknowledged = alerting.acknowledge(alert, acting_user(user, needs=ACT_ON_SYNC), note=note[:1000])
        except alerting.NotAcknowledgeable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"acknowledged alert #{acknowledged.pk} ({acknowledged.rule}) as {acknowledged.acknowledged_name}")

"""List open conflicts."""

from django.core.management.base import BaseCommand

from sync.models import Conflict


class Command(BaseCommand):
    help = "List open conflicts with their proposal."

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="include resolved and dismissed ones")
        parser.add_argument("--limit", type=int, default=50)

    def handle(self, *args, all, limit, **options):
        conflicts = Conflict.objects.all() if all else Conflict.objects.filter(status=Conflict.Status.OPEN)
        total = conflicts.count()
        for c in conflicts.order_by("-created_at")[:limit]:
            self.stdout.write(
                f"#{c.pk} {c.status} {c.kind} {c.label}:{c.uid} v{c.graph_version} rule={c.rule or '-'} "
                f"graph={c.graph_side} other={c.other_side} proposal={c.proposal or '-'}")
        self.stdout.write(f"{total} {'conflicts' if all else 'open conflicts'}")

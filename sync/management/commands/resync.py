"""Enqueue entities for a fresh sync: one entity, a label, or everything. Never embeds itself."""

from django.core.management.base import BaseCommand, CommandError

from nightingale.permissions import ACT_ON_SYNC
from sync import ids, resync
from sync.management.cli import acting_user
from sync.models import Priority


class Command(BaseCommand):
    help = ("Enqueue a resync of one entity (Label:uid), of a label, or of every synced label, in a "
            "priority lane (LOW unless told; HIGH only for a few entities). Prints the preview first.")

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--entity", help="Label:uid")
        target.add_argument("--label", action="append", help="a label (repeatable)")
        target.add_argument("--all", action="store_true", help="every synced label")
        parser.add_argument("--priority", choices=Priority.labels, default=Priority.LOW.label)
        parser.add_argument("--user", default="", help="the user the audit trail names (an analyst or admin; "
                                                        "default: 'command')")

    def handle(self, *args, entity, label, all, priority, user, **options):
        actor = acting_user(user, needs=ACT_ON_SYNC)
        if entity:
            try:
                name, uid = ids.parse_entity_key(entity)
            except ValueError:
                raise CommandError("--entity takes Label:uid, e.g. ThreatActor:apt29") from None
            scopes = [resync.Scope(resync.ENTITY, name, uid)]
        elif all:
            scopes = [resync.Scope(resync.ALL)]
        else:
            scopes = [resync.Scope(resync.LABEL, name) for name in label]
        try:
            for scope in scopes:
                shown = resync.preview(scope)
                self.stdout.write(f"{scope.describe()}: {shown.entities} entities, {shown.embed} to embed, "
                                  f"{shown.metadata_only} metadata-only, {priority.upper()} lane")
                done = resync.start(scope, actor=actor, priority=priority, background=False)
                self.stdout.write(f"queued {done['queued']} {scope.target}")
        except resync.NotResynced as exc:
            raise CommandError(str(exc)) from exc

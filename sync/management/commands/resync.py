"""Enqueue entities for a fresh sync: one entity, a label, or everything. Never embeds itself."""

from django.core.management.base import BaseCommand, CommandError

from sync.policy import synced_labels
from sync.resync import resync_entity, resync_labels


class Command(BaseCommand):
    help = "Enqueue a resync of one entity (Label:uid), of labels, or of every synced label."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--entity", help="Label:uid")
        target.add_argument("--label", action="append", help="a label (repeatable)")
        target.add_argument("--all", action="store_true", help="every synced label")

    def handle(self, *args, entity, label, all, **options):
        if entity:
            name, sep, uid = entity.partition(":")
            if not sep or not uid:
                raise CommandError("--entity takes Label:uid, e.g. ThreatActor:apt29")
            resync_entity(name, uid, actor="command")
            self.stdout.write(f"queued {name}:{uid}")
            return
        labels = synced_labels() if all else label
        unknown = set(labels) - set(synced_labels())
        if unknown:
            raise CommandError(f"not synced by the policy: {', '.join(sorted(unknown))}")
        for name, count in resync_labels(labels, actor="command").items():
            self.stdout.write(f"queued {count} {name}")

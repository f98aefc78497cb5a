"""Prepare Neo4j for syncing: constraints and indexes per synced label, and the APOC triggers."""

from django.core.management.base import BaseCommand

from sync.policy import synced_labels
from sync.stores import graph_store


class Command(BaseCommand):
    help = "Create uid constraints and updated_at indexes; install APOC triggers when APOC is present."

    def handle(self, *args, **options):
        graph = graph_store()
        labels = synced_labels()
        graph.ensure_schema(labels)
        self.stdout.write(f"schema ready for {len(labels)} labels: {', '.join(labels)}")
        if graph.install_triggers(labels):
            graph.wait_for_triggers()
            self.stdout.write("APOC triggers installed: foreign writes are stamped, deletes leave tombstones")
        else:
            self.stdout.write(self.style.WARNING(
                "APOC is not available: foreign writes without version/updated_at are found by "
                "reconciliation, and deletes by other tools as orphan vectors"))

"""Load the demo graph: real MISP-galaxy threat intelligence around 67 generated prospects.

`--if-empty` makes it safe to run on every start (bin/run, compose): a graph that already has
prospects is left alone, so versions are not bumped and nothing is re-queued for sync.
"""

import time

from django.core.management.base import BaseCommand, CommandError

from sync.demo.activity import first_conflicts
from sync.demo.graph import DemoLoadError, load_demo
from sync.models import Conflict
from sync.policy import synced_labels
from sync.stores import graph_store
from sync.stores.base import StoreError


class Command(BaseCommand):
    help = "Load the Nightingale demo graph into Neo4j (bulk, ~3,000 nodes and ~17,000 relationships)."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true",
                            help="do nothing when the graph already has Prospect nodes")
        parser.add_argument("--no-conflicts", action="store_true",
                            help="skip the first disputes (sync.demo.activity.first_conflicts)")

    def handle(self, *args, **options):
        graph = graph_store()
        started = time.monotonic()
        try:
            graph.ensure_schema(synced_labels())
            counts = load_demo(graph, only_if_empty=options["if_empty"])
            if not counts:
                existing = graph.count_label("Prospect")
                self.stdout.write(f"demo: the graph already has {existing} prospects; nothing loaded")
                return
        except (StoreError, DemoLoadError) as exc:
            raise CommandError(f"demo: the graph store failed: {exc}") from exc
        elapsed = time.monotonic() - started
        self.stdout.write(f"demo: loaded in {elapsed:.1f} s")
        width = max(len(name) for name in counts)
        for name, count in counts.items():
            self.stdout.write(f"  {name:<{width}}  {count:>6}")
        if not options["no_conflicts"]:
            self._first_conflicts()

    def _first_conflicts(self) -> None:
        done = first_conflicts(say=lambda line: None)
        for error in done.errors:
            self.stderr.write(f"demo: {error}")
        open_ = Conflict.objects.filter(status=Conflict.Status.OPEN).count()
        settled = Conflict.objects.filter(status=Conflict.Status.AUTO_RESOLVED).count()
        self.stdout.write(f"demo: {done.disputes} disagreements between sources: {settled} settled by the "
                          f"rules, {open_} open for an analyst (/conflicts/)")

"""Load the demo graph: real MISP-galaxy threat intelligence around 67 generated prospects.

`--if-empty` makes it safe to run on every start (bin/run, compose): a graph that already has
prospects is left alone, so versions are not bumped and nothing is re-queued for sync.

What was loaded is queued for the vector index as one backfill (sync.backfill): the "initial sync"
when nothing was ever synced (a first start), a "bulk load" after that. It is claimed behind the
streaming changes and shown as its own progress — "initial sync: n of N, about m minutes left" —
rather than as a breach of the freshness targets. `--no-backfill` leaves the new nodes to change
capture instead (each then a streaming change, as any other tool's write).
"""

import time

from django.core.management.base import BaseCommand, CommandError

from sync import backfill
from sync.demo.activity import first_conflicts
from sync.demo.graph import DEMO_LABELS, DemoLoadError, load_demo
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
        parser.add_argument("--no-backfill", action="store_true",
                            help="do not queue what was loaded as a backfill: change capture then finds it")

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
        if not options["no_backfill"]:
            self._backfill(counts, first_start=options["if_empty"])
        if not options["no_conflicts"]:
            self._first_conflicts()

    def _backfill(self, counts: dict[str, int], *, first_start: bool) -> None:
        synced = set(synced_labels())
        labels = [label for label in DEMO_LABELS if label in synced]
        kind = backfill.first_kind()
        reason = ("first start: the demo graph was loaded into an empty Neo4j" if first_start
                  else "the demo graph was loaded (manage.py load_demo)")
        load = backfill.start(kind, scope="the demo graph", reason=reason, actor="load_demo",
                              total=sum(counts.get(label, 0) for label in labels))
        try:
            queued = sum(backfill.enqueue_labels(load, labels).values())
        except StoreError as exc:
            raise CommandError(f"demo: the graph store failed while queueing the {load.get_kind_display().lower()}: "
                               f"{exc}") from exc
        self.stdout.write(f"demo: {queued} entities queued for the vector index as the "
                          f"{load.get_kind_display().lower()} (backfill #{load.pk}; progress on the overview)")

    def _first_conflicts(self) -> None:
        done = first_conflicts(say=lambda line: None)
        for error in done.errors:
            self.stderr.write(f"demo: {error}")
        # Each staged pair is two writes, and the first often disagrees with the graph's own value
        # as well: the disagreements are what the writes recorded, each settled or open.
        self.stdout.write(f"demo: {done.settled + done.left_open} disagreements between sources "
                          f"({done.disputes} pairs staged): {done.settled} settled by the rules, "
                          f"{done.left_open} open for an analyst (/conflicts/)")

"""Import a CISA Known Exploited Vulnerabilities feed (the catalogue's JSON) into the graph.

Entries go through the sync engine's write path like any other write: the conflict rules settle
disagreements with other sources (or hold a value back for an analyst), KEV entries are
dual-written to the vector index (or queued for the workers with `--queue`) and Vulnerability
nodes queued — `--batch` entries at a time (one graph transaction per label, one embedding call and
one vector write a batch), each entry committed or compensated on its own and reported. Exit status is non-zero only when the file itself is unusable (unreadable, not JSON, no
`vulnerabilities` list) or the graph store fails; malformed entries are listed with their
position and skipped while the rest are imported.

A feed of BACKFILL_MIN_ENTITIES entries or more (the whole catalogue, not a day's delta) is a
backfill (sync.backfill): its work waits behind the streaming changes and its progress and lag are
shown apart from theirs.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from sync import backfill
from sync.ingest.kev import (
    KEV_BATCH,
    MAX_FEED_BYTES,
    KevFeedError,
    import_kev_feed,
    parse_kev_feed,
    write_through_sync_many,
)
from sync.models import Backfill
from sync.policy import synced_labels
from sync.stores import graph_store
from sync.stores.base import StoreError


class Command(BaseCommand):
    help = "Import a CISA KEV JSON feed: KEV and Vulnerability nodes, linked (KEV)-[:LISTS]->(Vulnerability)."

    def add_arguments(self, parser):
        parser.add_argument("file", help="path of the feed, e.g. known_exploited_vulnerabilities.json")
        parser.add_argument("--queue", action="store_true",
                            help="queue KEV vectors for the workers instead of writing each in the call "
                                 "(faster for a first import of the whole catalogue)")
        parser.add_argument("--batch", type=int, default=KEV_BATCH,
                            help=f"entries written and embedded together (default {KEV_BATCH})")

    def handle(self, *args, **options):
        path = Path(options["file"])
        try:
            size = path.stat().st_size
            if size > MAX_FEED_BYTES:
                raise CommandError(f"{path}: {size} bytes is more than a KEV feed can be ({MAX_FEED_BYTES})")
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
        graph = graph_store()
        try:
            graph.ensure_schema(synced_labels())
            defer = options["queue"]
            if options["batch"] < 1:
                raise CommandError(f"--batch must be at least 1, got {options['batch']}")

            def write_many(label, items, *, source, confidence=None):
                return write_through_sync_many(label, items, source=source, confidence=confidence,
                                               defer_vectors=defer)

            entries = len(parse_kev_feed(data).entries)
            entities = entries * len({"KEV", "Vulnerability"} & set(synced_labels()))
            with backfill.if_bulk(entries, Backfill.Kind.IMPORT, scope=f"{path.name}: {entries} entries",
                                  reason="a CISA KEV catalogue import (manage.py import_kev)", actor="import_kev",
                                  total=entities):
                report = import_kev_feed(data, graph=graph, write_many=write_many, batch=options["batch"])
        except KevFeedError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        except StoreError as exc:
            raise CommandError(f"{path}: the graph store failed, import incomplete (re-run is safe): {exc}") from exc
        self.stdout.write(report.summary())
        for warning in report.warnings:
            self.stdout.write(f"warning: {warning}")
        for error in report.errors:
            self.stderr.write(f"skipped {error}")

"""Demo activity by hand: foreign edits, new KEV entries, deletes and re-creates, disagreeing sources."""

import os
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sync.demo.activity import Activity


class Command(BaseCommand):
    help = ("Make the demo graph live: foreign Cypher edits at --rate a minute, a new KEV entry every few "
            "minutes, now and then a delete and re-create and two sources disagreeing (what bin/run starts "
            "unless DEMO_ACTIVITY=off). Ctrl-C stops after the current step, re-creating what it deleted.")

    def add_arguments(self, parser):
        parser.add_argument("--rate", type=float, default=None,
                            help=f"foreign edits a minute (default DEMO_ACTIVITY_RATE, {settings.DEMO_ACTIVITY_RATE:g})")
        parser.add_argument("--kev-every", type=float, default=180.0, help="seconds between new KEV entries")
        parser.add_argument("--delete-every", type=float, default=120.0, help="seconds between delete/re-creates")
        parser.add_argument("--dispute-every", type=float, default=90.0, help="seconds between disagreements")
        parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--exit-with-parent", action="store_true",
                            help="stop when the process that started this one ends (bin/run uses it)")

    def handle(self, *args, rate, kev_every, delete_every, dispute_every, seconds, seed, exit_with_parent,
               **options):
        rate = settings.DEMO_ACTIVITY_RATE if rate is None else rate
        if rate < 0 or min(kev_every, delete_every, dispute_every) <= 0:
            raise CommandError("--rate must be at least 0 and the --*-every intervals more than 0 seconds")
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        activity = Activity(rate=rate, kev_every=kev_every, delete_every=delete_every, dispute_every=dispute_every,
                            seed=seed, say=lambda line: self.stdout.write(f"simulate: {line}"))
        self.stdout.write(f"simulate: {rate:g} foreign edits a minute, a KEV every {kev_every:g} s "
                          "(Ctrl-C stops)")
        parent = os.getppid()
        orphaned = (lambda: os.getppid() != parent) if exit_with_parent else (lambda: False)
        counts = activity.run(seconds=seconds, stop=lambda: bool(stopping) or orphaned())
        self.stdout.write(
            f"simulate: {counts.text_edits} text edits, {counts.metadata_edits} metadata edits, {counts.kevs} KEVs, "
            f"{counts.deletes} deletes ({counts.recreates} re-created), {counts.disputes} disagreements, "
            f"{len(counts.errors)} errors")

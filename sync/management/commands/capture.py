"""Run change capture in the foreground."""

import signal

from django.core.management.base import BaseCommand

from sync import tasks, worker


class Command(BaseCommand):
    help = ("Poll Neo4j for changes and enqueue them, applying HIGH priority work at once "
            "(what the scheduled capture task does); Ctrl-C stops after the current poll.")

    def add_arguments(self, parser):
        parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")

    def handle(self, *args, seconds, **options):
        worker.lower_cpu_priority()  # it embeds HIGH work: a worker like the cluster's
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        result = tasks.capture_changes(seconds=seconds or float("inf"), stop=lambda: bool(stopping))
        urgent = result["urgent"]
        self.stdout.write(
            f"changes: {result['changes']} in {result['pages']} pages, enqueued {result['enqueued']}, "
            f"skipped {result['skipped']}; "
            f"HIGH priority applied here: {urgent['upserted'] + urgent['metadata_only'] + urgent['unchanged']} "
            f"written, {urgent['deleted']} deleted, {urgent['retried'] + urgent['dead']} failed"
        )

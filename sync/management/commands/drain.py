"""Run the worker loop in the foreground."""

import signal

from django.core.management.base import BaseCommand

from sync import worker


class Command(BaseCommand):
    help = "Apply queued sync events in the foreground (Ctrl-C stops after the current batch)."

    def add_arguments(self, parser):
        parser.add_argument("--until-empty", action="store_true",
                            help="apply what is ready without waiting for full batches, then exit")
        parser.add_argument("--idle-exit", type=float, default=None,
                            help="with --until-empty: wait this many seconds for more work first")
        parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args, until_empty, idle_exit, seconds, batch_size, **options):
        worker.lower_cpu_priority()
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        counts = worker.drain(
            max_seconds=seconds, batch_size=batch_size, flush=not until_empty,
            idle_exit=(idle_exit or 0.0) if until_empty else None, stop=lambda: bool(stopping),
        )
        self.stdout.write(
            f"events: {counts.events} (upserted {counts.upserted}, metadata-only {counts.metadata_only}, "
            f"unchanged {counts.unchanged}, deleted {counts.deleted}, excluded {counts.excluded}, "
            f"stale {counts.stale}, retried {counts.retried}, dead {counts.dead}, handed back {counts.deferred}); "
            f"embedded chunks {counts.embedded_chunks}, vectors written {counts.vectors_written}, "
            f"deleted {counts.vectors_deleted}"
        )

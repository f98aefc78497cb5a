"""Run the django-q2 cluster (the workers) in the foreground, stopping cleanly on SIGTERM."""

from django.conf import settings
from django.core.management.base import BaseCommand

from sync.cluster import CleanCluster


class Command(BaseCommand):
    help = ("Start the django-q2 cluster (like qcluster), which stops within 30 s on SIGTERM to its process "
            "or its whole process group, handing in-flight batches back to the queue.")

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 — django-q2 signs tasks with it: fail here, not in a worker
        cluster = CleanCluster()
        cluster.start()
        # The main process returns here; multiprocessing's exit handler then waits for the
        # sentinel, and CleanCluster.sig_handler stops it on SIGTERM or Ctrl-C.

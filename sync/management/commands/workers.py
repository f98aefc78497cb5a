"""Run the django-q2 cluster (the workers) in the foreground, stopping cleanly on SIGTERM."""

import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from sync.cluster import CleanCluster
from sync.stores import import_clients
from sync.worker import lower_cpu_priority


class Command(BaseCommand):
    help = ("Start the django-q2 cluster (like qcluster), which stops within 30 s on SIGTERM to its process "
            "or its whole process group, handing in-flight batches back to the queue.")

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 — django-q2 signs tasks with it: fail here, not in a worker
        lower_cpu_priority()  # every process of the cluster (and the consumer) inherits it
        # The cluster's processes are forked from this one and inherit the stores' client
        # libraries: LanceDB's import alone takes 1.5-2 s, which the first batch of every worker
        # (a KEV applied at once after a restart among them) would otherwise wait for.
        import_clients()
        # SYNC_TRANSPORT=kafka: a consumer of the group (manage.py consume) beside the cluster, whose
        # capture publishes the changes; it gets the same SIGTERM (bin/serve signals the group).
        consume = None
        if settings.SYNC_TRANSPORT == "kafka":
            consume = subprocess.Popen([sys.executable, str(settings.BASE_DIR / "manage.py"), "consume"])
        try:
            # Runs until stopped (CleanCluster.sig_handler, on SIGTERM or Ctrl-C), starting its
            # processes again when one of them dies; exits 1 when that keeps happening.
            status = CleanCluster().run()
        finally:
            if consume is not None:
                if consume.poll() is None:
                    consume.terminate()  # hands its batch back uncommitted and leaves the group
                try:
                    consume.wait(30)
                except subprocess.TimeoutExpired:
                    consume.kill()
        if status:
            raise SystemExit(status)

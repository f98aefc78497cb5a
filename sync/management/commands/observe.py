"""Run the observer in the foreground: samples, alert checks and notifications."""

import json
import os
import signal
import socket

from django.core.management.base import BaseCommand

from sync.observe import observer


class Command(BaseCommand):
    help = ("Record a metric sample, judge the alert rules and send due notifications every SAMPLE_INTERVAL "
            "(what runs beside the scheduled change capture); Ctrl-C stops after the current check.")

    def add_arguments(self, parser):
        parser.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
        parser.add_argument("--once", action="store_true", help="one check now, printed as JSON")

    def handle(self, *args, seconds, once, **options):
        owner = f"{socket.gethostname()}:{os.getpid()}:observe-command"
        if once:
            result = observer.tick(owner)
            self.stdout.write(json.dumps({"at": result.at.isoformat(), "sampled": result.sampled,
                                          "opened": result.opened, "resolved": result.resolved,
                                          "deliveries": result.deliveries, "errors": result.errors}))
            return
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        ticks = observer.run(owner, seconds=seconds, stop=lambda: bool(stopping))
        self.stdout.write(f"observer: {ticks} checks")

"""Print the in-app alert rules as a Prometheus rule file (YAML)."""

import yaml
from django.core.management.base import BaseCommand

from sync.observe.alerting import prometheus_rules

HEADER = """\
# Prometheus alerting rules matching Nightingale Sync's in-app rules (sync/observe/alerting.py),
# on the metrics /metrics exports. Printed by `manage.py observe_rules` with the thresholds of
# the environment; this copy has the defaults. tests/test_observe_alerts.py keeps it in step.
"""


class Command(BaseCommand):
    help = "Print the in-app alert rules as a Prometheus rule file, with the configured thresholds."

    def handle(self, *args, **options):
        self.stdout.write(HEADER + yaml.safe_dump(prometheus_rules(), sort_keys=False, width=120), ending="")

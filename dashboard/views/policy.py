"""The sync policy, read-only: per label whether it syncs, its priority, write mode, embedded
text fields, metadata allow-list and freshness target, and what never leaves the graph.
Everything comes from sync.policy and the settings (sync.policy.summary)."""

from django.shortcuts import render

from dashboard.access import viewer_required
from sync.policy import summary as policy_summary


@viewer_required
def index(request):
    rows = policy_summary.labels()
    return render(request, "dashboard/policy.html", {
        "synced": [row for row in rows if row.synced], "never": [row for row in rows if not row.synced],
        "never_sent": policy_summary.never_sent(), "write_modes": policy_summary.write_modes(),
    })

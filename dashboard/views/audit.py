"""The audit log: every analyst action, rule decision, role change and refused request, newest
first, filtered by user, action, target and time, exported as CSV. Read-only: there is no way to
change or delete an entry here (sync.audit)."""

from django.contrib.auth import get_user_model
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard.access import viewer_required
from dashboard.forms import BadRequest, audit_filter
from sync import audit


def _bad(exc):
    return HttpResponseBadRequest(f"{exc}\n", content_type="text/plain; charset=utf-8")


@viewer_required
def index(request):
    try:
        where = audit_filter(request.GET)
        before = audit.Cursor.parse(request.GET.get("before", ""), "before")
        after = audit.Cursor.parse(request.GET.get("after", ""), "after")
    except (BadRequest, audit.BadAuditFilter) as exc:
        return _bad(exc)
    found = audit.page(where, before=before, after=after)
    users = list(get_user_model().objects.order_by("username").values_list("username", flat=True)[:500])
    return render(request, "dashboard/audit.html", {
        "page": found, "where": where, "actions": audit.ACTIONS, "action_names": audit.known_actions(),
        "users": [*users, "command", "rules", "system"], "first_page": before is None and after is None,
    })


@viewer_required
def export(request):
    """Every entry the filter matches, as CSV streamed from the database in chunks."""
    try:
        where = audit_filter(request.GET)
    except BadRequest as exc:
        return _bad(exc)
    response = StreamingHttpResponse(audit.csv_rows(where), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{audit.export_name(where, timezone.now())}"'
    return response

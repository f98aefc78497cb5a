"""Alerts: what is open now (also the banner on every page), the history, and acknowledging."""

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render

from dashboard import equivalents
from dashboard.access import ANALYST, analyst_action, has_role, viewer_required
from sync.observe import alerting
from sync.observe.models import Alert
from sync.observe.units import duration

STATUSES = ("open", "resolved", "all")
SEVERITIES = ("all", "critical", "warning")


def can_acknowledge(user) -> bool:
    """Analysts and admins (dashboard.access)."""
    return has_role(user, ANALYST)


@viewer_required
def index(request):
    status = request.GET.get("status") if request.GET.get("status") in STATUSES else "open"
    severity = request.GET.get("severity") if request.GET.get("severity") in SEVERITIES else "all"
    alerts = Alert.objects.order_by("-opened_at", "-id").prefetch_related("deliveries")
    if status != "all":
        alerts = alerts.filter(status=status)
    if severity != "all":
        alerts = alerts.filter(severity=severity)
    page = Paginator(alerts, 50).get_page(request.GET.get("page"))
    waiting = next((a for a in page.object_list if a.status == Alert.Status.OPEN and not a.acknowledged_at), None)
    return render(request, "dashboard/alerts.html", {
        **_equivalent(waiting, request.user),
        "page": page, "status": status, "severity": severity, "statuses": STATUSES, "severities": SEVERITIES,
        "rules": alerting.rule_table(), "channels": alerting.channel_summary(),
        "can_acknowledge": can_acknowledge(request.user), "resolve_after": duration(settings.ALERT_RESOLVE_AFTER),
    })


def _equivalent(alert: Alert | None, user) -> dict:
    """Acknowledging the first waiting alert without the UI (the same for any other number)."""
    if alert is None or not can_acknowledge(user):
        return {}
    return {"waiting": alert, "command": equivalents.manage("alerts", "acknowledge", str(alert.pk), user=user),
            "curl": equivalents.curl(f"/api/v1/alerts/{alert.pk}/acknowledge", {"note": ""})}


@analyst_action
def acknowledge(request, pk: int):
    try:
        alert = alerting.acknowledge(pk, request.user, note=request.POST.get("note", "")[:1000])
    except alerting.NotAcknowledgeable as exc:
        messages.error(request, f"Not acknowledged: {exc}.")
    else:
        messages.success(request, f"Acknowledged alert #{alert.pk} ({alert.rule}); it resolves itself once its "
                                  "condition clears.")
    return redirect(request.POST.get("next") if request.POST.get("next", "").startswith("/alerts/") else "alerts")


@viewer_required
def banner(request):
    """The open-alerts banner, polled on every page: 204 while it has not changed."""
    alerts = alerting.open_alerts()
    version = alerting.banner_version(alerts)
    if request.GET.get("v") == version:
        return HttpResponse(status=204)
    return render(request, "partials/alert_banner.html", {"open_alerts": alerts, "alert_banner_version": version,
                                                          "resolve_after": duration(settings.ALERT_RESOLVE_AFTER)})

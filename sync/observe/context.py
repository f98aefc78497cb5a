"""Template context for every page: the open alerts of the banner (one query)."""

from django.conf import settings

from sync.observe import alerting
from sync.observe.units import duration


def open_alerts(request):
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    alerts = alerting.open_alerts()
    return {"open_alerts": alerts, "alert_banner_version": alerting.banner_version(alerts),
            "open_alert_count": len(alerts), "resolve_after": duration(settings.ALERT_RESOLVE_AFTER)}

"""Alert notifications: a Slack-compatible webhook and/or e-mail (Django's mail backend).

Each notification is an AlertDelivery row, created with the alert's change in one transaction,
sent by `deliver_due` (the observer calls it every check), retried with exponential backoff
(ALERT_DELIVERY_BACKOFF doubling, at most an hour) and marked failed after
ALERT_DELIVERY_ATTEMPTS — every attempt's error is kept on the row and shown on the Alerts page.
The webhook URL is a secret (Slack puts the token in it): it never appears on a page or in a
recorded error.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F, Q
from django.utils import timezone

from sync.observe.models import Alert, AlertDelivery

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # a sender that died mid-send leaves the delivery due again after this
MAX_BACKOFF = 3600.0
COLOURS = {Alert.Severity.CRITICAL: "#c62828", Alert.Severity.WARNING: "#b26a00", "resolved": "#2e7d32"}


class DeliveryError(Exception):
    pass


def backoff(attempts: int) -> float:
    return min(MAX_BACKOFF, settings.ALERT_DELIVERY_BACKOFF * 2 ** max(attempts - 1, 0))


def deliver_due(now: datetime | None = None, limit: int = 50) -> dict[str, int]:
    """Send the deliveries that are due; returns counts by what became of them."""
    now = now or timezone.now()
    counts = {"sent": 0, "retrying": 0, "failed": 0}
    due = (AlertDelivery.objects.filter(Q(status=AlertDelivery.Status.PENDING, next_attempt_at__lte=now)
                                        | Q(status=AlertDelivery.Status.SENDING, lease_expires_at__lt=now))
           .order_by("created_at", "id").values_list("id", flat=True)[:limit])
    for delivery_id in list(due):
        claimed = AlertDelivery.objects.filter(
            Q(status=AlertDelivery.Status.PENDING) | Q(status=AlertDelivery.Status.SENDING, lease_expires_at__lt=now),
            pk=delivery_id,
        ).update(status=AlertDelivery.Status.SENDING, lease_expires_at=timezone.now() + LEASE,
                 attempts=F("attempts") + 1)
        if not claimed:
            continue  # another sender took it
        delivery = AlertDelivery.objects.select_related("alert").get(pk=delivery_id)
        counts[_attempt(delivery)] += 1
    return counts


def _attempt(delivery: AlertDelivery) -> str:
    try:
        if delivery.channel == AlertDelivery.Channel.WEBHOOK:
            post_webhook(settings.ALERT_WEBHOOK_URL, webhook_payload(delivery.alert, delivery.event))
        else:
            subject, body = email_message(delivery.alert, delivery.event)
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, settings.ALERT_EMAIL_TO, fail_silently=False)
    except Exception as exc:  # noqa: BLE001 — every failure is kept on the delivery and retried
        error = f"{type(exc).__name__}: {exc}".replace(settings.ALERT_WEBHOOK_URL or "\0", "<webhook URL>")[:2000]
        if delivery.attempts >= settings.ALERT_DELIVERY_ATTEMPTS:
            AlertDelivery.objects.filter(pk=delivery.pk).update(
                status=AlertDelivery.Status.FAILED, last_error=error, lease_expires_at=None)
            log.error("alert delivery %s gave up after %d attempts: %s", delivery, delivery.attempts, error)
            return "failed"
        AlertDelivery.objects.filter(pk=delivery.pk).update(
            status=AlertDelivery.Status.PENDING, last_error=error, lease_expires_at=None,
            next_attempt_at=timezone.now() + timedelta(seconds=backoff(delivery.attempts)))
        log.warning("alert delivery %s failed (attempt %d), retrying: %s", delivery, delivery.attempts, error)
        return "retrying"
    AlertDelivery.objects.filter(pk=delivery.pk).update(
        status=AlertDelivery.Status.SENT, sent_at=timezone.now(), lease_expires_at=None)
    return "sent"


def post_webhook(url: str, payload: dict) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "nightingale-sync-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=settings.ALERT_WEBHOOK_TIMEOUT) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"the webhook answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"the webhook could not be reached: {exc.reason}") from None


def _title(alert: Alert, event: str) -> str:
    title = alert.title
    if event == AlertDelivery.Event.RESOLVED:
        return f"Resolved: {title}"
    return f"{alert.severity.upper()}: {title}"


def _link() -> str:
    return f"{settings.DASHBOARD_URL.rstrip('/')}/alerts/" if settings.DASHBOARD_URL else ""


def webhook_payload(alert: Alert, event: str) -> dict:
    """Slack's incoming-webhook format (`text` plus one attachment); Mattermost, Rocket.Chat and
    Teams' Slack-compatible endpoints read the same. `alert` carries the fields for other receivers."""
    resolved = event == AlertDelivery.Event.RESOLVED
    when = alert.resolved_at if resolved and alert.resolved_at else alert.opened_at
    attachment = {
        "color": COLOURS["resolved" if resolved else alert.severity],
        "title": _title(alert, event),
        "text": alert.summary,
        "fields": [{"title": "Rule", "value": alert.rule, "short": True},
                   {"title": "Severity", "value": alert.severity, "short": True},
                   {"title": "Opened", "value": f"{alert.opened_at:%Y-%m-%d %H:%M:%S} UTC", "short": True}],
        "ts": int(when.timestamp()),
    }
    if _link():
        attachment["title_link"] = _link()
    return {
        "text": f"{_title(alert, event)} — {alert.summary}",
        "attachments": [attachment],
        "alert": {"id": alert.pk, "rule": alert.rule, "severity": alert.severity, "event": event,
                  "status": alert.status, "summary": alert.summary, "value": alert.value,
                  "threshold": alert.threshold, "opened_at": alert.opened_at.isoformat(),
                  "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None},
    }


def email_message(alert: Alert, event: str) -> tuple[str, str]:
    lines = [alert.summary, "", f"Rule: {alert.rule}", f"Severity: {alert.severity}",
             f"Opened: {alert.opened_at:%Y-%m-%d %H:%M:%S} UTC"]
    if alert.resolved_at:
        lines.append(f"Resolved: {alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC")
    if _link():
        lines += ["", _link()]
    return f"[Nightingale Sync] {_title(alert, event)}", "\n".join(lines) + "\n"

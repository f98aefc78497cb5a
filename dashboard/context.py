"""Template context every page needs: the navigation with its badges, the open alerts of the banner
(sync.observe.context), the user's role."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import NoReverseMatch, reverse

from dashboard.access import ANALYST, has_role, role_of
from sync.models import Conflict, SyncEvent
from sync.observe import context as observed


@dataclass(frozen=True)
class Item:
    title: str
    url_name: str  # the page's URL name; pages that do not exist (yet) are left out of the nav
    badge: str = ""  # which count it shows: conflicts, dead_letters, alerts
    section: str = ""  # URL names starting with this belong to the page (e.g. "queue")


# UI.md's order. Adding a page to the navigation is giving its URL this name.
NAVIGATION = (
    Item("Overview", "home", section="overview"),
    Item("Entities", "entities", section="entit"),
    Item("Conflicts", "conflicts", badge="conflicts", section="conflict"),
    Item("Queue", "queue", badge="dead_letters", section="queue"),
    Item("Reconciliation", "reconciliation", section="reconcil"),
    Item("Search", "search", section="search"),
    Item("Alerts", "alerts", badge="alerts", section="alert"),
    Item("Audit", "audit", section="audit"),
    Item("Policy", "policy", section="policy"),
)
BADGE_WORDS = {"conflicts": "open conflicts", "dead_letters": "dead letters", "alerts": "open alerts"}


def _links(current: str) -> list[dict]:
    links = []
    for item in NAVIGATION:
        try:
            url = reverse(item.url_name)
        except NoReverseMatch:
            continue
        here = current == item.url_name or bool(item.section and current.startswith(item.section))
        links.append({"title": item.title, "url": url, "badge": item.badge, "current": here})
    return links


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or role_of(user) is None:
        return {}
    match = getattr(request, "resolver_match", None)
    links = _links(match.url_name or "" if match else "")
    banner = observed.open_alerts(request)  # open_alerts, open_alert_count, the banner's version
    counts = {
        "conflicts": Conflict.objects.filter(status=Conflict.Status.OPEN).count(),
        "dead_letters": SyncEvent.objects.filter(status=SyncEvent.Status.DEAD).count(),
        "alerts": banner["open_alert_count"],
    }
    for link in links:
        if link["badge"]:
            link["count"] = counts[link["badge"]]
            link["count_words"] = BADGE_WORDS[link["badge"]]
    return {**banner, "nav_links": links, "role": role_of(user), "can_act": has_role(user, ANALYST)}

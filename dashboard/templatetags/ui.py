"""The dashboard's visual vocabulary as template tags: status badges (a word and a shape, never
colour alone), relative times that carry the absolute one, durations, sortable table headers.

Everything here escapes what it is given (format_html): values come from the graph and are
hostile until proven otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode

register = template.Library()

# UI.md: in_sync = green ✓, pending/queued = blue ○, stale/warning = amber ▲,
# failed/dead/critical = red ✕, conflict = purple ◆, excluded = grey —.
TONES = {
    "ok": ("✓", ("in_sync", "ok", "succeeded", "done", "sent", "resolved", "applied", "met", "answers",
                 "retried", "auto_resolved")),
    "info": ("○", ("pending", "queued", "running", "in_flight", "sending", "open_info")),
    "warning": ("▲", ("stale", "warning", "breached", "dry_run", "acknowledged", "late")),
    "critical": ("✕", ("failed", "dead", "critical", "unreachable", "error", "compensation_failed")),
    "conflict": ("◆", ("conflict", "open_conflict", "vector_ahead")),
    "muted": ("—", ("excluded", "deleted", "discarded", "dismissed", "superseded", "none")),
}
TONE_OF = {word: (tone, icon) for tone, (icon, words) in TONES.items() for word in words}


def tone_of(state: str) -> tuple[str, str]:
    return TONE_OF.get(str(state), ("info", "○"))


@register.simple_tag
def status(state, word: str = ""):
    """`{% status record.status %}` → ✓ in sync; `word` overrides the text shown."""
    tone, icon = tone_of(state)
    text = word or str(state).replace("_", " ")
    return format_html('<span class="status status-{}"><span class="status-icon" aria-hidden="true">{}</span> {}</span>',
                       tone, icon, text)


def ago(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    if seconds < 45:
        text = f"{seconds:.0f} s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 129600:
        text = f"{seconds / 3600:.0f} h"
    else:
        text = f"{seconds / 86400:.0f} d"
    return f"in {text}" if future else f"{text} ago"


@register.filter
def reltime(value: datetime | None, now: datetime | None = None):
    """`{{ event.created_at|reltime }}` → <time datetime="…" title="2026-12-01 23:40:05 UTC">3 min ago</time>."""
    if not value:
        return "—"
    now = now or timezone.now()
    absolute = timezone.localtime(value, UTC) if timezone.is_aware(value) else value
    return format_html('<time datetime="{}" title="{} UTC">{}</time>', absolute.isoformat(timespec="seconds"),
                       absolute.strftime("%Y-%m-%d %H:%M:%S"), ago(now - value))


@register.filter
def is_moment(value) -> bool:
    """True for a point in time (a graph node's `updated_at`): shown by `reltime`, never as
    Python's str() with its microseconds. Only a zoned one: a LocalDateTime property has no zone
    to place it in, and is shown as it is."""
    return isinstance(value, datetime) and timezone.is_aware(value)


@register.filter
def seconds(value) -> str:
    """A duration in seconds, in the unit a reader wants: 850 ms, 12.4 s, 7 min, 3.2 h, 2.0 d."""
    if value is None or value == "":
        return "—"
    value = float(value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


@register.simple_tag(takes_context=True)
def sortable(context, key: str, title: str, sort_param: str = "sort"):
    """A table header that sorts by `key` ("-key": descending on the first click), the other
    direction on the next; the sort lives in the query string beside the page's filters (and
    sends the reader back to the first page)."""
    request = context["request"]
    current = request.GET.get(sort_param, context.get("default_sort", ""))
    field = key.lstrip("-")
    params = request.GET.copy()
    params.pop("page", None)
    if current == field:
        params[sort_param], aria, arrow = f"-{field}", "ascending", " ▲"
    elif current == f"-{field}":
        params[sort_param], aria, arrow = field, "descending", " ▼"
    else:
        params[sort_param], aria, arrow = key, "none", ""
    return format_html('<th scope="col" aria-sort="{}"><a href="?{}">{}<span aria-hidden="true">{}</span></a></th>',
                       aria, urlencode(sorted(params.lists()), doseq=True), title, arrow)


@register.filter
def percent(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{float(value) * 100:.{int(digits)}f} %"
